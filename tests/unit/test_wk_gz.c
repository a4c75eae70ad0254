/* Unit tests for the compress middleware's pure parts: Accept-Encoding negotiation with q-values,
 * media type patterns, Vary and ETag edits, and the streaming encoder decoded back byte for byte
 * (gzip with zlib's inflate, brotli with libbrotlidec), fed at once or in small pieces, with
 * flushes that make everything taken so far decodable. */
#include "tests/unit/unit.h"

#include <brotli/decode.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "worker/wk_gz.h"

#define S(x) x, sizeof(x) - 1

static unsigned choose(const char *v, unsigned allowed)
{
    struct wk_ae a;

    wk_ae_init(&a);
    if (v != NULL) {
        wk_ae_scan(&a, v, strlen(v));
    }
    return wk_ae_choose(&a, allowed);
}

static void test_negotiate(void)
{
    CU_ASSERT_EQUAL(choose(NULL, WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose("", WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose("gzip", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("x-gzip", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("GZip", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("br", WK_GZ_ALL), WK_GZ_BR);
    /* br wins a tie, loses to a higher gzip */
    CU_ASSERT_EQUAL(choose("gzip, deflate, br", WK_GZ_ALL), WK_GZ_BR);
    CU_ASSERT_EQUAL(choose("gzip;q=1.0, br;q=0.8", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("gzip;q=0.5 , br ; q=0.9", WK_GZ_ALL), WK_GZ_BR);
    /* q=0 excludes */
    CU_ASSERT_EQUAL(choose("br;q=0, gzip", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("gzip;q=0", WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose("gzip;q=0.000", WK_GZ_ALL), WK_GZ_NONE);
    /* the allowed set */
    CU_ASSERT_EQUAL(choose("br, gzip", 1u << WK_GZ_GZIP), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("br", 1u << WK_GZ_GZIP), WK_GZ_NONE);
    /* "*" covers what is not named */
    CU_ASSERT_EQUAL(choose("*", WK_GZ_ALL), WK_GZ_BR);
    CU_ASSERT_EQUAL(choose("*", 1u << WK_GZ_GZIP), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("br;q=0, *", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("*;q=0", WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose("gzip, *;q=0", WK_GZ_ALL), WK_GZ_GZIP);
    /* identity named and preferred */
    CU_ASSERT_EQUAL(choose("identity", WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose("identity, gzip;q=0.5", WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose("identity;q=0.5, gzip", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("identity, gzip", WK_GZ_ALL), WK_GZ_GZIP);
    /* malformed weights: the element is skipped, the rest stands */
    CU_ASSERT_EQUAL(choose("br;q=2, gzip", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("br;q=0.1234, gzip;q=0.1", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("br;q=abc", WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose("br;q=", WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose(",,, ,gzip,,", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("gzipx, brotli, compress", WK_GZ_ALL), WK_GZ_NONE);
    CU_ASSERT_EQUAL(choose("gzip;level=9;q=0.3", WK_GZ_ALL), WK_GZ_GZIP);
    CU_ASSERT_EQUAL(choose("\"gzip\"", WK_GZ_ALL), WK_GZ_NONE);
    /* the first weight of a coding named twice holds */
    CU_ASSERT_EQUAL(choose("br;q=0, br", WK_GZ_ALL), WK_GZ_NONE);
}

static void test_negotiate_two_fields(void)
{
    struct wk_ae a;

    wk_ae_init(&a);
    wk_ae_scan(&a, S("gzip;q=0.4"));
    wk_ae_scan(&a, S("br;q=0.6"));
    CU_ASSERT_EQUAL(wk_ae_choose(&a, WK_GZ_ALL), WK_GZ_BR);
    CU_ASSERT_EQUAL(wk_ae_choose(&a, 1u << WK_GZ_GZIP), WK_GZ_GZIP);
}

static void test_type_match(void)
{
    CU_ASSERT(wk_gz_type_match(S("text/*"), S("text/html; charset=utf-8")));
    CU_ASSERT(wk_gz_type_match(S("text/*"), S("TEXT/Plain")));
    CU_ASSERT(!wk_gz_type_match(S("text/*"), S("text/")));
    CU_ASSERT(!wk_gz_type_match(S("text/*"), S("textual/x")));
    CU_ASSERT(wk_gz_type_match(S("application/json"), S("application/json")));
    CU_ASSERT(wk_gz_type_match(S("application/json"), S(" application/json ;charset=utf-8")));
    CU_ASSERT(!wk_gz_type_match(S("application/json"), S("application/jsonx")));
    CU_ASSERT(!wk_gz_type_match(S("application/json"), S("application/js")));
    CU_ASSERT(!wk_gz_type_match(S("image/svg+xml"), S("image/png")));
    CU_ASSERT(wk_gz_type_match(S("*"), S("image/png")));
    CU_ASSERT(wk_gz_type_match(S("*/*"), S("a/b")));
    CU_ASSERT(wk_gz_type_match(S("*"), S("  ;x=y")));
    CU_ASSERT(wk_gz_type_match(S("*/*"), S("")));
    CU_ASSERT(!wk_gz_type_match(S("text/*"), S("")));
    CU_ASSERT(!wk_gz_type_match(S("text/html"), S("")));
}

static void test_vary_etag(void)
{
    char out[128];
    size_t n;

    n = wk_gz_vary(NULL, 0, out, sizeof(out));
    CU_ASSERT(n == 15 && memcmp(out, "Accept-Encoding", 15) == 0);
    n = wk_gz_vary(S("Origin"), out, sizeof(out));
    CU_ASSERT(n == 23 && memcmp(out, "Origin, Accept-Encoding", 23) == 0);
    n = wk_gz_vary(S("Origin, accept-encoding"), out, sizeof(out));
    CU_ASSERT(n == 23 && memcmp(out, "Origin, accept-encoding", 23) == 0);
    n = wk_gz_vary(S("*"), out, sizeof(out));
    CU_ASSERT(n == 1 && out[0] == '*');
    CU_ASSERT_EQUAL(wk_gz_vary(S("Origin"), out, 10), 0);
    n = wk_gz_etag(S("\"abc\""), out, sizeof(out));
    CU_ASSERT(n == 7 && memcmp(out, "W/\"abc\"", 7) == 0);
    n = wk_gz_etag(S("W/\"abc\""), out, sizeof(out));
    CU_ASSERT(n == 7 && memcmp(out, "W/\"abc\"", 7) == 0);
    CU_ASSERT_EQUAL(wk_gz_etag(S("\"abc\""), out, 3), 0);
}

/* Some compressible, somewhat varied text. */
static char *sample(size_t n)
{
    char *p = malloc(n);
    uint32_t x = 12345;

    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (x >> 16) % 7 == 0 ? (char)('a' + (x >> 20) % 26)
                                  : "{\"key\": \"value\"},\n"[i % 18];
    }
    return p;
}

/* Decode <z>[0, zn) with coding <enc> into <out>; its length, or (size_t)-1. <partial>: the
 * stream need not be finished (a flushed prefix). */
static size_t decode(unsigned enc, const char *z, size_t zn, char *out, size_t cap, int partial)
{
    if (enc == WK_GZ_GZIP) {
        z_stream s;
        int r;
        memset(&s, 0, sizeof(s));
        if (inflateInit2(&s, 31) != Z_OK) {
            return (size_t)-1;
        }
        s.next_in = (Bytef *)(uintptr_t)z;
        s.avail_in = (uInt)zn;
        s.next_out = (Bytef *)out;
        s.avail_out = (uInt)cap;
        r = inflate(&s, Z_SYNC_FLUSH);
        inflateEnd(&s);
        if (r != Z_STREAM_END && !(partial && (r == Z_OK || r == Z_BUF_ERROR))) {
            return (size_t)-1;
        }
        if (!partial && s.avail_in != 0) {
            return (size_t)-1;
        }
        return cap - s.avail_out;
    } else {
        BrotliDecoderState *d = BrotliDecoderCreateInstance(NULL, NULL, NULL);
        const uint8_t *ip = (const uint8_t *)z;
        uint8_t *op = (uint8_t *)out;
        size_t il = zn, ol = cap;
        BrotliDecoderResult r = BrotliDecoderDecompressStream(d, &il, &ip, &ol, &op, NULL);
        BrotliDecoderDestroyInstance(d);
        if (r != BROTLI_DECODER_RESULT_SUCCESS &&
            !(partial && r == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT)) {
            return (size_t)-1;
        }
        return cap - ol;
    }
}

/* Compress <in> in pieces of <piece> into an output window of <win> bytes at a time, flushing
 * after each piece when <flush>; every flush makes all input so far decodable. */
static void round_trip(unsigned enc, int level, size_t n, size_t piece, size_t win, int flush,
                       uint64_t hint)
{
    char *in = sample(n), *z = malloc(n + 65536), *back = malloc(n + 16);
    size_t off = 0, zn = 0, got;
    struct wk_gz *g = wk_gz_new(enc, level, hint);
    int r = 0, guard = 0;

    CU_ASSERT_FATAL(g != NULL);
    while (off < n) {
        size_t take = n - off < piece ? n - off : piece, used, made;
        size_t done = 0;
        do {
            r = wk_gz_step(g, in + off + done, take - done, &used, z + zn, win, &made,
                           flush ? WK_GZ_FLUSH : WK_GZ_RUN);
            CU_ASSERT_FATAL(r >= 0);
            done += used;
            zn += made;
            CU_ASSERT_FATAL(++guard < 10000000);
        } while (done < take || (flush && r != 1) || made == win);
        off += take;
        if (flush) {
            CU_ASSERT(!wk_gz_dirty(g));
            got = decode(enc, z, zn, back, n + 16, 1);
            CU_ASSERT_EQUAL(got, off);
            CU_ASSERT(got == off && memcmp(back, in, off) == 0);
        }
    }
    do {
        size_t used, made;
        r = wk_gz_step(g, NULL, 0, &used, z + zn, win, &made, WK_GZ_FINISH);
        CU_ASSERT_FATAL(r >= 0);
        zn += made;
        CU_ASSERT_FATAL(++guard < 10000000);
    } while (r != 1);
    CU_ASSERT(wk_gz_done(g));
    got = decode(enc, z, zn, back, n + 16, 0);
    CU_ASSERT_EQUAL(got, n);
    CU_ASSERT(got == n && memcmp(back, in, n) == 0);
    if (n > 4096) {
        CU_ASSERT(zn < n / 2); /* it did compress */
    }
    wk_gz_free(g);
    free(in);
    free(z);
    free(back);
}

static void test_gzip_round_trip(void)
{
    round_trip(WK_GZ_GZIP, 6, 300000, 300000, 1 << 20, 0, UINT64_MAX);
    round_trip(WK_GZ_GZIP, 1, 100000, 4096, 64, 0, UINT64_MAX);
    round_trip(WK_GZ_GZIP, 9, 50000, 777, 17, 1, UINT64_MAX);
    round_trip(WK_GZ_GZIP, 6, 1000, 1000, 4096, 0, 1000);
    round_trip(WK_GZ_GZIP, 6, 0, 1, 4096, 0, 0);
    round_trip(WK_GZ_GZIP, 6, 1, 1, 16, 1, 1);
}

static void test_brotli_round_trip(void)
{
    round_trip(WK_GZ_BR, 4, 300000, 300000, 1 << 20, 0, UINT64_MAX);
    round_trip(WK_GZ_BR, 5, 100000, 4096, 64, 0, UINT64_MAX);
    round_trip(WK_GZ_BR, 4, 50000, 777, 17, 1, UINT64_MAX);
    round_trip(WK_GZ_BR, 11, 20000, 20000, 4096, 0, 20000);
    round_trip(WK_GZ_BR, 4, 0, 1, 4096, 0, 0);
    round_trip(WK_GZ_BR, 4, 1, 1, 16, 1, 1);
}

/* The budget's estimates: a small body's gzip costs less than an unknown one's, brotli more. */
static void test_cost(void)
{
    size_t g = wk_gz_cost(WK_GZ_GZIP, 6, UINT64_MAX), b = wk_gz_cost(WK_GZ_BR, 4, UINT64_MAX);

    CU_ASSERT(g > 256 * 1024 && g < 300 * 1024);
    CU_ASSERT(wk_gz_cost(WK_GZ_GZIP, 6, 2000) < g / 8);
    CU_ASSERT(b > 2 * 1024 * 1024 && b < 4 * 1024 * 1024);
    CU_ASSERT(wk_gz_cost(WK_GZ_BR, 11, UINT64_MAX) > b);
}

/* A flush with nothing new taken adds nothing the decoder minds, and a stream that ends right
 * after a flush is still whole. */
static void test_idle_flush(void)
{
    for (unsigned enc = WK_GZ_GZIP; enc <= WK_GZ_BR; enc++) {
        struct wk_gz *g = wk_gz_new(enc, 4, UINT64_MAX);
        char z[512], back[64];
        size_t used, made, zn = 0;
        int r;

        r = wk_gz_step(g, S("data: hello\n\n"), &used, z, sizeof(z), &made, WK_GZ_FLUSH);
        CU_ASSERT(r == 1 && used == 13);
        zn += made;
        CU_ASSERT_EQUAL(decode(enc, z, zn, back, sizeof(back), 1), 13);
        r = wk_gz_step(g, NULL, 0, &used, z + zn, sizeof(z) - zn, &made, WK_GZ_FLUSH);
        CU_ASSERT_EQUAL(r, 1);
        zn += made;
        r = wk_gz_step(g, NULL, 0, &used, z + zn, sizeof(z) - zn, &made, WK_GZ_FINISH);
        CU_ASSERT_EQUAL(r, 1);
        zn += made;
        CU_ASSERT_EQUAL(decode(enc, z, zn, back, sizeof(back), 0), 13);
        CU_ASSERT(memcmp(back, "data: hello\n\n", 13) == 0);
        wk_gz_free(g);
    }
}

UNIT_SUITE(wk_gz, {"negotiate", test_negotiate},
           {"negotiate_two_fields", test_negotiate_two_fields}, {"type_match", test_type_match},
           {"vary_etag", test_vary_etag}, {"gzip_round_trip", test_gzip_round_trip},
           {"brotli_round_trip", test_brotli_round_trip}, {"idle_flush", test_idle_flush},
           {"cost", test_cost})
