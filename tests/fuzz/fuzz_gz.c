/* dispatcher: libFuzzer target for the compress middleware's pure parts (worker/wk_gz.c): the
 * Accept-Encoding negotiation a client drives, the media type, Vary and ETag helpers a backend
 * drives, and the streaming encoder fed in pieces of any size with flushes at any point.
 *
 * Input: byte 0 picks the coding (bit 0: gzip or brotli), the level (bits 1-3) and whether the
 * encoder's output window is tiny (bit 4); byte 1 splits the rest: the first part is an
 * Accept-Encoding value (and a Content-Type, a pattern, a Vary and an ETag, cut from it), the
 * rest is a body compressed in pieces whose sizes and flushes come from its own bytes.
 * Invariants beyond "no crash":
 * - the chosen coding is one of the allowed ones and has a weight above 0 (its own, or "*"'s);
 *   with nothing allowed, none; every weight kept is -1 or 0..1000;
 * - "*" matches every Content-Type; outputs of the Vary and ETag helpers stay within their
 *   buffer, a rewritten ETag is weak, Vary then names Accept-Encoding (or "*");
 * - after every completed flush everything given so far decodes back (zlib inflate, brotli's
 *   decoder), and the finished stream decodes to exactly the body. */
#include <brotli/decode.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_gz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXBODY 16384
#define ZCAP    (MAXBODY * 24 + 4096) /* (a flush after every byte costs some 10 bytes) */

static size_t decode(unsigned enc, const uint8_t *z, size_t zn, uint8_t *out, size_t cap,
                     int partial)
{
    if (enc == WK_GZ_GZIP) {
        z_stream s;
        int r;
        memset(&s, 0, sizeof(s));
        FUZZ_CHECK(inflateInit2(&s, 31) == Z_OK);
        s.next_in = (Bytef *)(uintptr_t)z;
        s.avail_in = (uInt)zn;
        s.next_out = out;
        s.avail_out = (uInt)cap;
        r = inflate(&s, Z_SYNC_FLUSH);
        inflateEnd(&s);
        FUZZ_CHECK(r == Z_STREAM_END || (partial && (r == Z_OK || r == Z_BUF_ERROR)));
        FUZZ_CHECK(partial || s.avail_in == 0);
        return cap - s.avail_out;
    } else {
        BrotliDecoderState *d = BrotliDecoderCreateInstance(NULL, NULL, NULL);
        const uint8_t *ip = z;
        uint8_t *op = out;
        size_t il = zn, ol = cap;
        BrotliDecoderResult r = BrotliDecoderDecompressStream(d, &il, &ip, &ol, &op, NULL);
        BrotliDecoderDestroyInstance(d);
        FUZZ_CHECK(r == BROTLI_DECODER_RESULT_SUCCESS ||
                   (partial && r == BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT));
        return cap - ol;
    }
}

static void negotiate(const uint8_t *p, size_t n)
{
    struct wk_ae a;

    wk_ae_init(&a);
    wk_ae_scan(&a, (const char *)p, n);
    for (int i = 0; i < 4; i++) {
        FUZZ_CHECK(a.q[i] >= -1 && a.q[i] <= 1000);
    }
    for (unsigned allowed = 0; allowed <= WK_GZ_ALL; allowed += 2) {
        unsigned enc = wk_ae_choose(&a, allowed);
        if (enc != WK_GZ_NONE) {
            int which = enc == WK_GZ_BR ? WK_AE_BR : WK_AE_GZIP;
            int q = a.q[which] >= 0 ? a.q[which] : a.q[WK_AE_STAR];
            FUZZ_CHECK(allowed & (1u << enc));
            FUZZ_CHECK(q > 0);
        }
    }
    FUZZ_CHECK(wk_ae_choose(&a, 0) == WK_GZ_NONE);
}

static void head_helpers(const uint8_t *p, size_t n)
{
    char out[300];
    size_t half = n / 2, k;

    FUZZ_CHECK(wk_gz_type_match("*", 1, (const char *)p, n));
    (void)wk_gz_type_match((const char *)p, half, (const char *)p + half, n - half);
    k = wk_gz_vary((const char *)p, n, out, sizeof(out));
    FUZZ_CHECK(k <= sizeof(out));
    if (k > 0 && n > 0 && !(k == n && memcmp(out, p, n) == 0)) {
        /* changed: Accept-Encoding went at its end */
        FUZZ_CHECK(k >= 15 && strncasecmp(out + k - 15, "Accept-Encoding", 15) == 0);
    }
    k = wk_gz_etag((const char *)p, n, out, sizeof(out));
    FUZZ_CHECK(k <= sizeof(out));
    FUZZ_CHECK(k == 0 || (out[0] == 'W' && out[1] == '/'));
}

static void round_trip(unsigned enc, int level, int tiny, const uint8_t *body, size_t n)
{
    static uint8_t z[ZCAP], back[MAXBODY + 16];
    struct wk_gz *g = wk_gz_new(enc, level, n % 3 == 0 ? UINT64_MAX : n);
    size_t off = 0, zn = 0, win = tiny ? 16 : 4096;
    int r;

    FUZZ_CHECK(g != NULL);
    while (off < n) {
        /* the next piece's size and whether a flush follows, from the body itself */
        size_t take = 1 + body[off] % 997, done = 0, used, made;
        int op = body[off] & 0x80 ? WK_GZ_FLUSH : WK_GZ_RUN;
        if (take > n - off) {
            take = n - off;
        }
        do {
            FUZZ_CHECK(zn + win <= ZCAP);
            r = wk_gz_step(g, (const char *)body + off + done, take - done, &used, (char *)z + zn,
                           win, &made, op);
            FUZZ_CHECK(r >= 0 && used <= take - done && made <= win);
            done += used;
            zn += made;
        } while (done < take || (op == WK_GZ_FLUSH && r != 1) || made == win);
        off += take;
        if (op == WK_GZ_FLUSH) {
            FUZZ_CHECK(!wk_gz_dirty(g));
            FUZZ_CHECK(decode(enc, z, zn, back, sizeof(back), 1) == off);
            FUZZ_CHECK(memcmp(back, body, off) == 0);
        }
    }
    do {
        size_t used, made;
        FUZZ_CHECK(zn + win <= ZCAP);
        r = wk_gz_step(g, NULL, 0, &used, (char *)z + zn, win, &made, WK_GZ_FINISH);
        FUZZ_CHECK(r >= 0);
        zn += made;
    } while (r != 1);
    FUZZ_CHECK(wk_gz_done(g));
    FUZZ_CHECK(decode(enc, z, zn, back, sizeof(back), 0) == n);
    FUZZ_CHECK(memcmp(back, body, n) == 0);
    wk_gz_free(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned enc;
    int level;
    size_t split;

    if (size < 2) {
        return 0;
    }
    enc = (data[0] & 1) ? WK_GZ_BR : WK_GZ_GZIP;
    level = (data[0] >> 1) & 7; /* gzip 1..8 below; brotli 0..7 */
    if (enc == WK_GZ_GZIP) {
        level += 1;
    }
    split = data[1] < size - 2 ? data[1] : size - 2;
    negotiate(data + 2, split);
    head_helpers(data + 2, split);
    if (size - 2 - split <= MAXBODY) {
        round_trip(enc, level, (data[0] & 0x10) != 0, data + 2 + split, size - 2 - split);
    }
    return 0;
}
