/* dispatcher: response compression without a connection (see wk_gz.h): Accept-Encoding
 * negotiation, the checks of a response's fields, and the streaming gzip/brotli encoder. */
#include "worker/wk_gz.h"

#include <brotli/encode.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- Accept-Encoding ------------------------------------------------------------------------ */
static int lower(int ch)
{
    return ch >= 'A' && ch <= 'Z' ? ch + 32 : ch;
}

static int ieq(const char *a, size_t n, const char *b)
{
    size_t i;

    for (i = 0; i < n && b[i] != '\0'; i++) {
        if (lower((unsigned char)a[i]) != b[i]) {
            return 0;
        }
    }
    return i == n && b[i] == '\0';
}

static int ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

void wk_ae_init(struct wk_ae *a)
{
    for (size_t i = 0; i < sizeof(a->q) / sizeof(a->q[0]); i++) {
        a->q[i] = -1;
    }
}

/* An RFC 9110 qvalue: "0" ["." 0*3DIGIT] / "1" ["." 0*3"0"], in thousandths; -1 if invalid. */
static int qvalue(const char *p, size_t n)
{
    int q, scale = 100;

    if (n == 0 || (p[0] != '0' && p[0] != '1') || (n > 1 && p[1] != '.') || n > 5) {
        return -1;
    }
    q = (p[0] - '0') * 1000;
    for (size_t i = 2; i < n; i++, scale /= 10) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }
        q += (p[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

/* The weight of one element's parameters <p>[0, n) (";q=0.5;x=y"): 1000 without q, -1 when
 * malformed. */
static int element_q(const char *p, size_t n)
{
    int q = 1000;
    size_t i = 0;

    while (i < n) {
        size_t s, e;
        if (p[i] != ';') {
            return -1;
        }
        i++;
        while (i < n && ows(p[i])) {
            i++;
        }
        s = i;
        while (i < n && p[i] != ';') {
            i++;
        }
        e = i;
        while (e > s && ows(p[e - 1])) {
            e--;
        }
        if (e - s >= 2 && lower((unsigned char)p[s]) == 'q' && p[s + 1] == '=') {
            q = qvalue(p + s + 2, e - s - 2);
            if (q < 0) {
                return -1;
            }
        }
    }
    return q;
}

static int is_tchar(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

void wk_ae_scan(struct wk_ae *a, const char *v, size_t n)
{
    size_t i = 0;

    while (i < n) {
        size_t ts, te, es;
        int q, which;

        while (i < n && (ows(v[i]) || v[i] == ',')) {
            i++;
        }
        ts = i;
        while (i < n && is_tchar(v[i])) {
            i++;
        }
        te = i;
        while (i < n && ows(v[i])) {
            i++;
        }
        es = i;
        while (i < n && v[i] != ',') {
            i++;
        }
        if (te == ts) {
            continue; /* no coding name: skipped */
        }
        {
            size_t e = i;
            while (e > es && ows(v[e - 1])) {
                e--;
            }
            q = element_q(v + es, e - es);
        }
        if (q < 0) {
            continue;
        }
        if (ieq(v + ts, te - ts, "gzip") || ieq(v + ts, te - ts, "x-gzip")) {
            which = WK_AE_GZIP;
        } else if (ieq(v + ts, te - ts, "br")) {
            which = WK_AE_BR;
        } else if (te - ts == 1 && v[ts] == '*') {
            which = WK_AE_STAR;
        } else if (ieq(v + ts, te - ts, "identity")) {
            which = WK_AE_IDENTITY;
        } else {
            continue;
        }
        if (a->q[which] < 0) {
            a->q[which] = (int16_t)q;
        }
    }
}

unsigned wk_ae_choose(const struct wk_ae *a, unsigned allowed)
{
    int qg = a->q[WK_AE_GZIP] >= 0 ? a->q[WK_AE_GZIP] : a->q[WK_AE_STAR];
    int qb = a->q[WK_AE_BR] >= 0 ? a->q[WK_AE_BR] : a->q[WK_AE_STAR];
    unsigned enc = WK_GZ_NONE;
    int best = 0;

    if (!(allowed & (1u << WK_GZ_GZIP))) {
        qg = -1;
    }
    if (!(allowed & (1u << WK_GZ_BR))) {
        qb = -1;
    }
    if (qb > 0 && qb >= qg) {
        enc = WK_GZ_BR;
        best = qb;
    } else if (qg > 0) {
        enc = WK_GZ_GZIP;
        best = qg;
    }
    /* A client that names identity and weighs it above every coding it accepts prefers the
     * body as it is. (Identity not named does not compete.) */
    if (enc != WK_GZ_NONE && a->q[WK_AE_IDENTITY] > best) {
        return WK_GZ_NONE;
    }
    return enc;
}

/* ---- the response -----------------------------------------------------------------------------
 */
int wk_gz_type_match(const char *pat, size_t plen, const char *ct, size_t clen)
{
    size_t s = 0, e;

    while (s < clen && ows(ct[s])) {
        s++;
    }
    e = s;
    while (e < clen && ct[e] != ';' && !ows(ct[e])) {
        e++;
    }
    if ((plen == 1 && pat[0] == '*') || (plen == 3 && memcmp(pat, "*/*", 3) == 0)) {
        return 1; /* (a response without a type too, as nginx's gzip_types *) */
    }
    if (e == s) {
        return 0; /* no media type at all */
    }
    if (plen >= 2 && pat[plen - 2] == '/' && pat[plen - 1] == '*') {
        /* "text/ *": the type and its slash, and some subtype after it */
        if (e - s <= plen - 1) {
            return 0;
        }
        for (size_t i = 0; i < plen - 1; i++) {
            if (lower((unsigned char)ct[s + i]) != lower((unsigned char)pat[i])) {
                return 0;
            }
        }
        return 1;
    }
    if (e - s != plen) {
        return 0;
    }
    for (size_t i = 0; i < plen; i++) {
        if (lower((unsigned char)ct[s + i]) != lower((unsigned char)pat[i])) {
            return 0;
        }
    }
    return 1;
}

/* Does the comma-separated list <v> have the element <tok> (case-insensitive, OWS around)? */
static int list_has(const char *v, size_t n, const char *tok)
{
    size_t i = 0;

    while (i < n) {
        size_t s, e;
        while (i < n && (ows(v[i]) || v[i] == ',')) {
            i++;
        }
        s = i;
        while (i < n && v[i] != ',') {
            i++;
        }
        e = i;
        while (e > s && ows(v[e - 1])) {
            e--;
        }
        if (e > s && ieq(v + s, e - s, tok)) {
            return 1;
        }
    }
    return 0;
}

size_t wk_gz_vary(const char *v, size_t vlen, char *out, size_t cap)
{
    static const char ae[] = "Accept-Encoding";
    size_t n;

    if (v == NULL || vlen == 0) {
        if (cap < sizeof(ae) - 1) {
            return 0;
        }
        memcpy(out, ae, sizeof(ae) - 1);
        return sizeof(ae) - 1;
    }
    if (list_has(v, vlen, "accept-encoding") || list_has(v, vlen, "*")) {
        if (cap < vlen) {
            return 0;
        }
        memcpy(out, v, vlen);
        return vlen;
    }
    n = vlen + 2 + sizeof(ae) - 1;
    if (cap < n) {
        return 0;
    }
    memcpy(out, v, vlen);
    memcpy(out + vlen, ", ", 2);
    memcpy(out + vlen + 2, ae, sizeof(ae) - 1);
    return n;
}

size_t wk_gz_etag(const char *v, size_t vlen, char *out, size_t cap)
{
    size_t add = vlen >= 2 && v[0] == 'W' && v[1] == '/' ? 0 : 2;

    if (cap < vlen + add) {
        return 0;
    }
    memcpy(out, "W/", add);
    memcpy(out + add, v, vlen);
    return vlen + add;
}

const char *wk_gz_name(unsigned enc)
{
    return enc == WK_GZ_BR ? "br" : enc == WK_GZ_GZIP ? "gzip" : "identity";
}

/* ---- the encoder ------------------------------------------------------------------------------
 */
struct wk_gz {
    unsigned enc;
    uint8_t busy;  /* WK_GZ_FLUSH or WK_GZ_FINISH in progress (no new input until it is done) */
    uint8_t dirty; /* input taken since the last completed flush */
    uint8_t done;  /* FINISH complete */
    z_stream zs;
    BrotliEncoderState *br;
};

/* The smallest window (log2) that holds <size> bytes, within [lo, hi]. */
static int fit_bits(uint64_t size, int lo, int hi)
{
    int b = lo;

    while (b < hi && size > (1ull << b)) {
        b++;
    }
    return b;
}

/* zlib's window and hash for a body of <size_hint> bytes (see wk_gz_new()). */
static void gzip_params(uint64_t size_hint, int *wbits, int *memlevel)
{
    *wbits = fit_bits(size_hint, 9, 15);
    *memlevel = 8 - (15 - *wbits) > 1 ? 8 - (15 - *wbits) : 1;
}

struct wk_gz *wk_gz_new(unsigned enc, int level, uint64_t size_hint)
{
    struct wk_gz *z = calloc(1, sizeof(*z));

    if (z == NULL) {
        return NULL;
    }
    z->enc = enc;
    if (enc == WK_GZ_GZIP) {
        /* 32 KiB window and memLevel 8 (~256 KiB in all) by default; a body known to be small
         * gets a window just over its size and a hash table shrunk with it. */
        int wbits, memlevel;
        gzip_params(size_hint, &wbits, &memlevel);
        if (level < 1 || level > 9) {
            level = WK_GZ_LEVEL_DEFAULT;
        }
        if (deflateInit2(&z->zs, level, Z_DEFLATED, wbits + 16, memlevel, Z_DEFAULT_STRATEGY) !=
            Z_OK) {
            free(z);
            return NULL;
        }
        return z;
    }
    z->br = BrotliEncoderCreateInstance(NULL, NULL, NULL);
    if (z->br == NULL) {
        free(z);
        return NULL;
    }
    if (level < 0 || level > 11) {
        level = WK_GZ_BRQ_DEFAULT;
    }
    BrotliEncoderSetParameter(z->br, BROTLI_PARAM_QUALITY, (uint32_t)level);
    /* A 256 KiB window at most (brotli's default is 4 MiB), less for a small body. */
    BrotliEncoderSetParameter(z->br, BROTLI_PARAM_LGWIN, (uint32_t)fit_bits(size_hint, 10, 18));
    if (size_hint != UINT64_MAX) {
        BrotliEncoderSetParameter(z->br, BROTLI_PARAM_SIZE_HINT,
                                  (uint32_t)(size_hint < (1u << 30) ? size_hint : (1u << 30)));
    }
    return z;
}

size_t wk_gz_cost(unsigned enc, int level, uint64_t size_hint)
{
    if (enc == WK_GZ_GZIP) {
        int wbits, memlevel;
        gzip_params(size_hint, &wbits, &memlevel);
        /* zlib's own formula, plus its state */
        return ((size_t)1 << (wbits + 2)) + ((size_t)1 << (memlevel + 9)) + 8192;
    }
    /* Measured at quality 4 (no flushes): 1.75 MiB with a 64 KiB window, 2.9 MiB with 256 KiB;
     * higher qualities keep more (hash chains, then the zopfli-like search of 10 and 11). */
    {
        size_t base = ((size_t)6 << fit_bits(size_hint, 10, 18)) + ((size_t)1300 << 10);
        return level <= 4 ? base : level <= 9 ? base * 2 : base * 6;
    }
}

void wk_gz_free(struct wk_gz *z)
{
    if (z == NULL) {
        return;
    }
    if (z->enc == WK_GZ_GZIP) {
        deflateEnd(&z->zs);
    } else {
        BrotliEncoderDestroyInstance(z->br);
    }
    free(z);
}

int wk_gz_dirty(const struct wk_gz *z)
{
    return z->dirty;
}

int wk_gz_done(const struct wk_gz *z)
{
    return z->done;
}

/* One zlib call: 1 when <op> completed, 0 when it needs another call, -1 on error. */
static int zlib_call(struct wk_gz *z, int op)
{
    int flush = op == WK_GZ_FINISH ? Z_FINISH : op == WK_GZ_FLUSH ? Z_SYNC_FLUSH : Z_NO_FLUSH;
    int r = deflate(&z->zs, flush);

    if (r == Z_STREAM_END) {
        return 1;
    }
    if (r != Z_OK && r != Z_BUF_ERROR) {
        return -1;
    }
    /* A sync flush is complete when it left room in the output; Z_BUF_ERROR with room means
     * there was nothing left to do. */
    return op == WK_GZ_FLUSH && z->zs.avail_out > 0 ? 1 : 0;
}

/* One brotli call, likewise. */
static int brotli_call(struct wk_gz *z, int op, const uint8_t **in, size_t *inlen, uint8_t **out,
                       size_t *cap)
{
    BrotliEncoderOperation bop = op == WK_GZ_FINISH  ? BROTLI_OPERATION_FINISH
                                 : op == WK_GZ_FLUSH ? BROTLI_OPERATION_FLUSH
                                                     : BROTLI_OPERATION_PROCESS;

    if (!BrotliEncoderCompressStream(z->br, bop, inlen, in, cap, out, NULL)) {
        return -1;
    }
    if (op == WK_GZ_FINISH) {
        return BrotliEncoderIsFinished(z->br) ? 1 : 0;
    }
    if (op == WK_GZ_FLUSH) {
        return *inlen == 0 && !BrotliEncoderHasMoreOutput(z->br) ? 1 : 0;
    }
    return 0;
}

static int gz_call(struct wk_gz *z, int op, const char *in, size_t inlen, size_t *used, char *out,
                   size_t cap, size_t *made)
{
    int r;

    if (z->enc == WK_GZ_GZIP) {
        z->zs.next_in = (Bytef *)(uintptr_t)in;
        z->zs.avail_in = (uInt)(inlen > 0x40000000u ? 0x40000000u : inlen);
        z->zs.next_out = (Bytef *)out;
        z->zs.avail_out = (uInt)(cap > 0x40000000u ? 0x40000000u : cap);
        r = zlib_call(z, op);
        *used = (size_t)((const char *)z->zs.next_in - in);
        *made = (size_t)((char *)z->zs.next_out - out);
    } else {
        const uint8_t *ip = (const uint8_t *)in;
        uint8_t *op8 = (uint8_t *)out;
        size_t il = inlen, ol = cap;
        r = brotli_call(z, op, &ip, &il, &op8, &ol);
        *used = inlen - il;
        *made = cap - ol;
    }
    return r;
}

int wk_gz_step(struct wk_gz *z, const char *in, size_t inlen, size_t *used, char *out, size_t cap,
               size_t *made, int op)
{
    size_t u = 0, m = 0;
    int r;

    *used = *made = 0;
    if (z->done) {
        return 1;
    }
    if (z->busy != WK_GZ_RUN) {
        op = z->busy; /* finish what was started, on no new input */
        inlen = 0;
    } else if (inlen > 0) {
        /* Input first, as plain processing; a flush or finish starts once all of it is in. */
        r = gz_call(z, WK_GZ_RUN, in, inlen, &u, out, cap, &m);
        if (r < 0) {
            return -1;
        }
        *used = u;
        *made = m;
        if (u > 0) {
            z->dirty = 1;
        }
        if (op == WK_GZ_RUN || u < inlen || m == cap) {
            return 0;
        }
        out += m;
        cap -= m;
    }
    if (op == WK_GZ_RUN) {
        /* Output the coder had pending from before (its buffer was full). */
        r = gz_call(z, WK_GZ_RUN, NULL, 0, &u, out, cap, &m);
        *made += m;
        return r < 0 ? -1 : 0;
    }
    if (cap < 16) {
        return 0; /* (a sync flush wants room for its marker: zlib's advice is over 6 bytes) */
    }
    z->busy = (uint8_t)op;
    r = gz_call(z, op, NULL, 0, &u, out, cap, &m);
    *made += m;
    if (r < 0) {
        return -1;
    }
    if (r == 1) {
        z->busy = WK_GZ_RUN;
        z->dirty = 0;
        if (op == WK_GZ_FINISH) {
            z->done = 1;
        }
    }
    return r;
}
