/* dispatcher: libFuzzer target for the strict chunked-body decoder (worker/wk_chunk.c), which
 * decides where a client's (or a backend's) chunked body ends: any disagreement with the peer
 * behind us is request smuggling, so this target checks the decoder against itself and against
 * an independent reference.
 *
 * Input: byte 0 seeds how the body is cut into reads (1-byte reads, random sizes, one read),
 * byte 1 picks the trailer limit; the rest is the body as it arrives.
 * Invariants beyond "no crash":
 * - the result (done at offset k / error at offset e with its reason / more needed), the decoded
 *   length and the decoded bytes do not depend on how the input was cut into reads;
 * - no byte of an unchecked line is committed: <pend> never exceeds what was consumed, and is 0
 *   when the body is done;
 * - differential: a second, independent decoder written from RFC 9112's grammar (below) agrees
 *   on every body the worker's decoder accepts (same end, same data), and the worker's decoder
 *   refuses no body the reference accepts, except for its size limits;
 * - re-encoding the decoded data (random chunk sizes, extensions, trailers) decodes back to the
 *   same bytes and ends exactly at the re-encoded length, whatever follows it. */
#include <stdint.h>
#include <string.h>

#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_chunk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXIN 65536

/* ---- the reference: RFC 9112 7.1, written independently, whole buffer at once -------------- */
static int ref_tchar(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int ref_hex(uint8_t c)
{
    return (c >= '0' && c <= '9')   ? c - '0'
           : (c >= 'a' && c <= 'f') ? c - 'a' + 10
           : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                    : -1;
}

static int ref_text(uint8_t c) /* VCHAR / obs-text / SP / HTAB */
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* Returns 1 (done: the body is p[0, *end), data in out[0, *olen)), 0 (incomplete), -1 (invalid).
 * <*maxline> gets the longest size line and <*trailers> the trailer section's length, so that a
 * refusal by the decoder's limits can be told from a disagreement. */
static int ref_parse(const uint8_t *p, size_t n, size_t *end, uint8_t *out, size_t *olen,
                     size_t *maxline, size_t *trailers, int *digits_max)
{
    size_t i = 0;

#define NEED(k)                                                                                    \
    do {                                                                                           \
        if (i + (k) > n)                                                                           \
            return 0;                                                                              \
    } while (0)
#define BWS()                                                                                      \
    do {                                                                                           \
        while (i < n && (p[i] == ' ' || p[i] == '\t'))                                             \
            i++;                                                                                   \
    } while (0)

    *olen = 0;
    *maxline = 0;
    *trailers = 0;
    *digits_max = 0;
    for (;;) {
        size_t line0 = i, d0 = i;
        uint64_t sz = 0;

        while (i < n && ref_hex(p[i]) >= 0) {
            if (i - d0 < 16) {
                sz = (sz << 4) | (uint64_t)ref_hex(p[i]);
            }
            i++;
        }
        NEED(1);
        if (i == d0) {
            return -1;
        }
        if ((int)(i - d0) > *digits_max) {
            *digits_max = (int)(i - d0);
        }
        /* *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] ) */
        for (;;) {
            size_t save = i;
            BWS();
            NEED(1);
            if (p[i] != ';') {
                i = save;
                break;
            }
            i++;
            BWS();
            NEED(1);
            if (!ref_tchar(p[i])) {
                return -1;
            }
            while (i < n && ref_tchar(p[i])) {
                i++;
            }
            save = i;
            BWS();
            NEED(1);
            if (p[i] != '=') {
                i = save;
                continue;
            }
            i++;
            BWS();
            NEED(1);
            if (p[i] == '"') {
                i++;
                for (;;) {
                    NEED(1);
                    if (p[i] == '"') {
                        i++;
                        break;
                    }
                    if (p[i] == '\\') {
                        NEED(2);
                        if (!ref_text(p[i + 1])) {
                            return -1;
                        }
                        i += 2;
                        continue;
                    }
                    if (!ref_text(p[i])) {
                        return -1;
                    }
                    i++;
                }
            } else if (ref_tchar(p[i])) {
                while (i < n && ref_tchar(p[i])) {
                    i++;
                }
            } else {
                return -1;
            }
        }
        NEED(1);
        if (p[i] != '\r') {
            return -1;
        }
        NEED(2);
        if (p[i + 1] != '\n') {
            return -1;
        }
        i += 2;
        if (i - line0 > *maxline) {
            *maxline = i - line0;
        }
        if (i - d0 > 0 && sz == 0) {
            break; /* last-chunk */
        }
        if (sz > n - i) {
            return 0;
        }
        memcpy(out + *olen, p + i, (size_t)sz);
        *olen += (size_t)sz;
        i += (size_t)sz;
        NEED(1);
        if (p[i] != '\r') {
            return -1;
        }
        NEED(2);
        if (p[i + 1] != '\n') {
            return -1;
        }
        i += 2;
    }
    /* trailer-section CRLF; trailer = field-name ":" OWS field-value OWS CRLF */
    {
        size_t t0 = i;
        for (;;) {
            NEED(1);
            if (p[i] == '\r') {
                NEED(2);
                if (p[i + 1] != '\n') {
                    return -1;
                }
                i += 2;
                *trailers = i - t0;
                *end = i;
                return 1;
            }
            if (!ref_tchar(p[i])) {
                return -1;
            }
            while (i < n && ref_tchar(p[i])) {
                i++;
            }
            NEED(1);
            if (p[i] != ':') {
                return -1;
            }
            i++;
            for (;;) {
                NEED(1);
                if (p[i] == '\r') {
                    break;
                }
                if (!ref_text(p[i])) {
                    return -1;
                }
                i++;
            }
            NEED(2);
            if (p[i + 1] != '\n') {
                return -1;
            }
            i += 2;
            *trailers = i - t0;
        }
    }
#undef NEED
#undef BWS
}

/* ---- the decoder, fed in pieces -------------------------------------------------------------- */
struct run {
    int r;     /* WK_CHUNK_DONE / _ERROR / _MORE */
    size_t at; /* absolute offset: end of the body, or where the error is */
    uint64_t total;
    size_t olen;
    const char *err;
};

static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)rng_state;
}

/* mode 0: one read; 1: one byte per read; 2: random read sizes. */
static void feed(const uint8_t *p, size_t n, int mode, uint32_t trailer_max, uint8_t *out,
                 struct run *res)
{
    struct wk_chunk ch;
    size_t off = 0;

    wk_chunk_init(&ch, trailer_max);
    res->olen = 0;
    res->err = NULL;
    for (;;) {
        size_t avail = n - off, piece, used = 0, dlen = 0, poff = 0;
        int r = WK_CHUNK_MORE;

        piece = mode == 0 ? avail : mode == 1 ? (avail ? 1 : 0) : (avail ? 1 + rnd() % avail : 0);
        if (mode == 2 && piece > 64 && (rnd() & 1)) {
            piece = 1 + rnd() % 64;
        }
        /* A read is consumed in steps: DATA returns after each data span. */
        for (;;) {
            r = wk_chunk_parse(&ch, (const char *)p + off + poff, piece - poff, &used, &dlen);
            FUZZ_CHECK(used <= piece - poff);
            if (r == WK_CHUNK_DATA) {
                FUZZ_CHECK(dlen > 0 && dlen <= used);
                memcpy(out + res->olen, p + off + poff + used - dlen, dlen);
                res->olen += dlen;
            } else {
                FUZZ_CHECK(dlen == 0);
            }
            poff += used;
            /* Never more pending than consumed (in this read and earlier ones); after an
             * error nothing more is forwarded anyway. */
            FUZZ_CHECK(r == WK_CHUNK_ERROR || ch.pend <= off + poff);
            if (r != WK_CHUNK_DATA || poff == piece) {
                break;
            }
        }
        off += poff;
        if (r == WK_CHUNK_ERROR) {
            FUZZ_CHECK(ch.err != NULL);
            res->r = r;
            res->at = off;
            res->err = ch.err;
            /* It stays in error. */
            FUZZ_CHECK(wk_chunk_parse(&ch, "0\r\n\r\n", 5, &used, NULL) == WK_CHUNK_ERROR);
            return;
        }
        if (r == WK_CHUNK_DONE) {
            FUZZ_CHECK(ch.pend == 0);
            res->r = r;
            res->at = off;
            res->total = ch.total;
            FUZZ_CHECK(wk_chunk_parse(&ch, "x", 1, &used, NULL) == WK_CHUNK_DONE && used == 0);
            return;
        }
        FUZZ_CHECK(poff == piece); /* MORE (or DATA up to the end of the read): all consumed */
        if (off == n) {
            res->r = WK_CHUNK_MORE;
            res->at = n;
            res->total = ch.total;
            return;
        }
    }
}

static uint8_t out0[MAXIN], out1[MAXIN], outr[MAXIN], enc[4 * MAXIN + 4096], out2[4 * MAXIN];

static size_t reencode(const uint8_t *d, size_t n, uint8_t *e)
{
    static const char *const exts[] = {"", ";a", ";a=b", " ; q=\"x\\\"y\"", ";n=1;m", "\t;z"};
    size_t o = 0, i = 0;

    while (i < n) {
        size_t k = 1 + rnd() % (n - i < 300 ? n - i : 300);
        const char *x = exts[rnd() % 6];
        o += (size_t)sprintf((char *)e + o, "%s%zx%s\r\n", (rnd() & 3) == 0 ? "00" : "", k, x);
        memcpy(e + o, d + i, k);
        o += k;
        e[o++] = '\r';
        e[o++] = '\n';
        i += k;
    }
    o += (size_t)sprintf((char *)e + o, "0%s\r\n%s\r\n", (rnd() & 1) ? ";last" : "",
                         (rnd() & 1) ? "X-T: v \t\r\nY:\r\n" : "");
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p;
    size_t n, rend = 0, rolen = 0, maxline, trailers;
    uint32_t tmax;
    struct run a, b, c;
    int ref, digits;

    if (size < 2 || size - 2 > MAXIN) {
        return 0;
    }
    rng_state = 0x9e3779b97f4a7c15ull ^ ((uint64_t)data[0] << 32) ^ size;
    tmax = (data[1] & 3) == 0 ? 0 : (data[1] & 3) == 1 ? 16 : (uint32_t)data[1] * 4;
    p = data + 2;
    n = size - 2;

    feed(p, n, 0, tmax, out0, &a);
    feed(p, n, (data[0] & 1) ? 1 : 2, tmax, out1, &b);
    /* Independent of how the bytes were cut into reads. */
    FUZZ_CHECK(a.r == b.r);
    FUZZ_CHECK(a.at == b.at);
    FUZZ_CHECK(a.olen == b.olen && memcmp(out0, out1, a.olen) == 0);
    FUZZ_CHECK(a.err == b.err || (a.err && b.err && strcmp(a.err, b.err) == 0));
    if (a.r == WK_CHUNK_DONE) {
        FUZZ_CHECK(a.total == a.olen && b.total == b.olen);
        FUZZ_CHECK(wk_chunk_check((const char *)p, n, tmax, NULL) == (long)a.at);
    }

    ref = ref_parse(p, n, &rend, outr, &rolen, &maxline, &trailers, &digits);
    if (a.r == WK_CHUNK_DONE) {
        /* Whatever the decoder accepts, RFC 9112 reads the same way. */
        if (ref != 1 || rend != a.at || rolen != a.olen || memcmp(outr, out0, rolen) != 0) {
            fprintf(stderr, "decoder done at %zu (%zu bytes), reference %d at %zu (%zu bytes)\n",
                    a.at, a.olen, ref, rend, rolen);
            abort();
        }
    } else if (ref == 1 && a.r == WK_CHUNK_ERROR) {
        /* Refusing a valid body is only allowed for the size limits. */
        if (!(maxline > WK_CHUNK_LINE_MAX || digits > WK_CHUNK_DIGITS_MAX ||
              trailers > (tmax ? tmax : WK_CHUNK_LINE_MAX))) {
            fprintf(stderr, "decoder refused a valid body (%s at %zu)\n", a.err, a.at);
            abort();
        }
    } else if (ref == 1) {
        FUZZ_CHECK(a.r == WK_CHUNK_DONE); /* MORE on a complete valid body */
    }

    /* Re-encoded, the decoded bytes come back, and the body ends where it ends. */
    if (a.r == WK_CHUNK_DONE || a.r == WK_CHUNK_MORE) {
        size_t elen = reencode(out0, a.olen, enc), tail = rnd() % 8;
        memcpy(enc + elen, "0\r\n\r\nGET", tail);
        feed(enc, elen + tail, 2, 0, out2, &c);
        FUZZ_CHECK(c.r == WK_CHUNK_DONE && c.at == elen);
        FUZZ_CHECK(c.olen == a.olen && memcmp(out2, out0, a.olen) == 0);
    }
    return 0;
}
