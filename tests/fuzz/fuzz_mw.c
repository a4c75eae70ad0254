/* dispatcher: libFuzzer target for the small parsers of outside input the middlewares, splits and
 * gRPC added: the first input byte picks one (its value modulo 8), the rest is its input.
 *
 *   0  an htpasswd users file (common/htpasswd.c htp_parse, htp_scheme)
 *   1  an Authorization value, Basic credentials (htp_basic_decode)
 *   2  a Cookie value, the dsp_split cookie reader (worker/wk_split.c wk_cookie_next)
 *   3  Accept-Encoding negotiation and the compress response checks (worker/wk_gz.c: wk_ae_*,
 *      wk_gz_type_match, wk_gz_vary, wk_gz_etag)
 *   4  gRPC values (worker/wk_grpc.c): grpc-timeout, content-type, the grpc-message of a JSON
 *      error body, the status mapping
 *   5  an HTTP/1 trailer section as it goes to an HTTP/2 client (wk_trailer_split, wk_trailer_ok,
 *      wk_h2_fields_new) and back to an HTTP/1 backend (wk_h2_last_chunk)
 *   6  an ip_allow CIDR (common/net.c net_cidr_parse, net_cidr_match)
 *   7  as 2, 3 and 4 on the same bytes (cheap inputs reaching all three)
 * (fuzz_gz covers the same negotiation with the streaming encoder; 3 adds the checks of a weight
 * list scanned whole or cut at a comma, and of what a media type pattern matched.)
 *
 * Invariants beyond "no crash, no leak": every output points inside its input; the htpasswd
 * table is sorted, unique, its hashes of an accepted scheme, and every content line is a user or
 * an error; Basic credentials re-encode to the base64 they came from, and credentials the worker
 * accepts always decode back; the cookie pairs are those of an independent count; Accept-Encoding
 * gives the same weights scanned whole or split at a comma, and a coding the client accepts; the
 * grpc-timeout equals an independent computation; a grpc-message is escaped, NUL-terminated and
 * shorter than its buffer (and a shorter buffer gives a prefix); trailers keep only allowed names
 * and clean values; a CIDR matches its own address (as IPv4-mapped IPv6 too) and its prefix is
 * within its family's bits. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "common/htpasswd.h"
#include "common/net.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_grpc.h"
#include "worker/wk_gz.h"
#include "worker/wk_h2msg.h"
#include "worker/wk_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int inside(const char *base, size_t n, const char *p, size_t len)
{
    return p >= base && p + len <= base + n;
}

/* ---- 0: htpasswd ------------------------------------------------------------------------------
 */
struct htp_count {
    unsigned errs, last_line, lines;
};

static void htp_err_count(void *ctx, unsigned line, const char *msg)
{
    struct htp_count *c = ctx;

    FUZZ_CHECK(msg != NULL && msg[0] != '\0');
    FUZZ_CHECK(line >= 1 && line <= c->lines);
    c->errs++;
}

static void fz_htpasswd(const char *t, size_t n)
{
    struct htp_count cnt = {0, 0, 0};
    struct htp_user *u = NULL;
    unsigned content = 0;
    long k;

    /* Lines with content (not empty, not a comment), counted independently. */
    for (size_t off = 0; off < n;) {
        const char *nl = memchr(t + off, '\n', n - off);
        size_t len = nl != NULL ? (size_t)(nl - (t + off)) : n - off;
        size_t l = len > 0 && t[off + len - 1] == '\r' ? len - 1 : len;
        cnt.lines++;
        content += l > 0 && t[off] != '#';
        off += len + (nl != NULL);
    }
    k = htp_parse(t, n, &u, htp_err_count, &cnt);
    FUZZ_CHECK(k >= 0 && u != NULL);
    FUZZ_CHECK((unsigned long)k + cnt.errs == content);
    for (long i = 0; i < k; i++) {
        const char *why = NULL;
        FUZZ_CHECK(inside(t, n, u[i].user, u[i].ulen) && inside(t, n, u[i].hash, u[i].hlen));
        FUZZ_CHECK(u[i].ulen >= 1 && u[i].ulen <= HTP_USER_MAX && u[i].hlen <= HTP_HASH_MAX);
        FUZZ_CHECK(memchr(u[i].user, ':', u[i].ulen) == NULL);
        FUZZ_CHECK(u[i].hash == u[i].user + u[i].ulen + 1 && u[i].user[u[i].ulen] == ':');
        FUZZ_CHECK(wk_value_ok(u[i].user, u[i].ulen) && memchr(u[i].user, '\t', u[i].ulen) == NULL);
        FUZZ_CHECK(u[i].line >= 1 && u[i].line <= cnt.lines);
        FUZZ_CHECK(u[i].scheme != HTP_NONE &&
                   htp_scheme(u[i].hash, u[i].hlen, &why) == (int)u[i].scheme && why == NULL);
        FUZZ_CHECK(i == 0 || htp_user_cmp(u[i - 1].user, u[i - 1].ulen, u[i].user, u[i].ulen) < 0);
    }
    free(u);
    {
        /* The scheme check on the whole input as one hash string. */
        const char *why = NULL;
        int sc = htp_scheme(t, n, &why);
        FUZZ_CHECK(sc == HTP_NONE ? why != NULL
                                  : (why == NULL && n <= HTP_HASH_MAX && t[0] == '$'));
    }
}

/* ---- 1: Basic credentials ---------------------------------------------------------------------
 */
static size_t b64_encode(const uint8_t *p, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i;

    for (i = 0; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
        out[o++] = a[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = a[v >> 18];
        out[o++] = a[(v >> 12) & 63];
        out[o++] = a[(v >> 6) & 63];
    }
    return o;
}

#define BASIC_CAP (HTP_USER_MAX + HTP_PASS_MAX + 8) /* the worker's buffer (wk_auth.c) */

static void fz_basic(const char *v, size_t n)
{
    char buf[BASIC_CAP], enc[4 * BASIC_CAP / 3 + 8];
    const char *user, *pass;
    size_t ulen, plen;

    if (n > 4096) {
        return;
    }
    if (htp_basic_decode(v, n, buf, sizeof(buf), &user, &ulen, &pass, &plen) == 0) {
        size_t s = 5, e = n, el;
        FUZZ_CHECK(user == buf && ulen >= 1 && ulen <= HTP_USER_MAX && plen <= HTP_PASS_MAX);
        FUZZ_CHECK(pass == user + ulen + 1 && buf[ulen] == ':');
        FUZZ_CHECK(memchr(user, ':', ulen) == NULL);
        FUZZ_CHECK(wk_value_ok(buf, ulen + 1 + plen) && memchr(buf, '\t', ulen + 1 + plen) == NULL);
        FUZZ_CHECK(strncasecmp(v, "basic", 5) == 0);
        /* The base64 part, re-encoded from what was decoded, is what came (padding aside). */
        while (s < e && (v[s] == ' ' || v[s] == '\t')) {
            s++;
        }
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) {
            e--;
        }
        while (e > s && v[e - 1] == '=') {
            e--;
        }
        el = b64_encode((const uint8_t *)buf, ulen + 1 + plen, enc);
        FUZZ_CHECK(el == e - s && memcmp(enc, v + s, el) == 0);
    }
    /* The input as "user:password": when the worker would take it, it decodes back. */
    {
        const char *colon = memchr(v, ':', n);
        char hdr[16 + sizeof(enc)];
        size_t hl;
        if (colon == NULL || colon == v || (size_t)(colon - v) > HTP_USER_MAX ||
            n - (size_t)(colon - v) - 1 > HTP_PASS_MAX || !wk_value_ok(v, n) ||
            memchr(v, '\t', n) != NULL) {
            return;
        }
        memcpy(hdr, n % 2 ? "Basic " : "bAsIc\t ", n % 2 ? 6 : 7);
        hl = (n % 2 ? 6 : 7) + b64_encode((const uint8_t *)v, n, hdr + (n % 2 ? 6 : 7));
        while (n % 3 == 1 && hl % 4 != (n % 2 ? 2 : 3)) {
            hdr[hl++] = '='; /* (padded sometimes) */
        }
        FUZZ_CHECK(htp_basic_decode(hdr, hl, buf, sizeof(buf), &user, &ulen, &pass, &plen) == 0);
        FUZZ_CHECK(ulen == (size_t)(colon - v) && memcmp(user, v, ulen) == 0);
        FUZZ_CHECK(plen == n - ulen - 1 && memcmp(pass, colon + 1, plen) == 0);
    }
}

/* ---- 2: Cookie ------------------------------------------------------------------------------ */
static int ws(char c)
{
    return c == ' ' || c == '\t';
}

static void fz_cookie(const char *v, size_t n)
{
    size_t pos = 0, last = 0, pairs = 0, expect = 0, rounds = 0;
    const char *name, *val;
    size_t nlen, vlen;

    /* Independently: the ';'-separated parts with an '=' once trimmed. */
    for (size_t s = 0; s <= n;) {
        const char *semi = memchr(v + s, ';', n - s);
        size_t e = semi != NULL ? (size_t)(semi - v) : n, a = s, b = e;
        while (a < b && ws(v[a])) {
            a++;
        }
        while (b > a && ws(v[b - 1])) {
            b--;
        }
        expect += memchr(v + a, '=', b - a) != NULL;
        if (semi == NULL) {
            break;
        }
        s = e + 1;
    }
    while (wk_cookie_next(v, n, &pos, &name, &nlen, &val, &vlen)) {
        FUZZ_CHECK(++rounds <= n);
        FUZZ_CHECK(pos > last && pos <= n);
        FUZZ_CHECK(inside(v, n, name, nlen) && inside(v, n, val, vlen));
        FUZZ_CHECK(name >= v + last && val + vlen <= v + pos && name + nlen < val);
        FUZZ_CHECK(memchr(name, ';', nlen) == NULL && memchr(val, ';', vlen) == NULL);
        FUZZ_CHECK(memchr(name, '=', nlen) == NULL);
        FUZZ_CHECK(!ws(name[0]) && (nlen == 0 || !ws(name[nlen - 1])));
        FUZZ_CHECK(vlen == 0 || (!ws(val[0]) || val[-1] == '"'));
        last = pos;
        pairs++;
    }
    FUZZ_CHECK(pos == n);
    FUZZ_CHECK(pairs == expect);
}

/* ---- 3: Accept-Encoding and the response checks ---------------------------------------------- */
static void fz_ae(const char *v, size_t n)
{
    struct wk_ae a, b;
    const char *comma;
    char out[1024];
    size_t ol;

    wk_ae_init(&a);
    wk_ae_scan(&a, v, n);
    for (int i = 0; i < 4; i++) {
        FUZZ_CHECK(a.q[i] >= -1 && a.q[i] <= 1000);
    }
    for (unsigned allowed = 0; allowed <= WK_GZ_ALL; allowed++) {
        unsigned enc = wk_ae_choose(&a, allowed);
        if (enc != WK_GZ_NONE) {
            int q = a.q[enc == WK_GZ_BR ? WK_AE_BR : WK_AE_GZIP];
            FUZZ_CHECK(allowed & (1u << enc));
            if (q < 0) {
                q = a.q[WK_AE_STAR];
            }
            FUZZ_CHECK(q > 0 && q >= a.q[WK_AE_IDENTITY]);
        }
    }
    FUZZ_CHECK(wk_ae_choose(&a, 0) == WK_GZ_NONE);
    /* Scanned in two parts cut at a comma: the same weights (the first listing wins). */
    comma = memchr(v, ',', n);
    if (comma != NULL) {
        wk_ae_init(&b);
        wk_ae_scan(&b, v, (size_t)(comma - v));
        wk_ae_scan(&b, comma + 1, n - (size_t)(comma - v) - 1);
        FUZZ_CHECK(memcmp(&a, &b, sizeof(a)) == 0);
    }
    /* The input as a pattern and a Content-Type, cut at its first NUL or in the middle. */
    {
        const char *z = memchr(v, '\0', n);
        size_t pl = z != NULL ? (size_t)(z - v) : n / 2;
        const char *ct = v + pl + (z != NULL), *mt;
        size_t cl = n - pl - (z != NULL), ms = 0, me;
        int m = wk_gz_type_match(v, pl, ct, cl);
        while (ms < cl && ws(ct[ms])) {
            ms++;
        }
        for (me = ms; me < cl && ct[me] != ';' && !ws(ct[me]); me++) {
        }
        mt = ct + ms;
        /* ("*" takes a response without a type too, as nginx's gzip_types *) */
        FUZZ_CHECK(wk_gz_type_match("*", 1, ct, cl) && wk_gz_type_match("*/*", 3, ct, cl));
        FUZZ_CHECK(!m || me > ms || (pl == 1 && v[0] == '*') || (pl == 3 && !memcmp(v, "*/*", 3)));
        if (m && !(pl == 1 && v[0] == '*') && !(pl == 3 && memcmp(v, "*/*", 3) == 0)) {
            if (pl >= 2 && v[pl - 2] == '/' && v[pl - 1] == '*') {
                FUZZ_CHECK(me - ms > pl - 1 && strncasecmp(mt, v, pl - 1) == 0);
            } else {
                FUZZ_CHECK(me - ms == pl && strncasecmp(mt, v, pl) == 0);
            }
        }
        /* the media type itself always matches */
        FUZZ_CHECK(me == ms || wk_gz_type_match(mt, me - ms, ct, cl));
    }
    ol = wk_gz_vary(n > 0 ? v : NULL, n, out, sizeof(out));
    if (n == 0) {
        FUZZ_CHECK(ol == 15 && memcmp(out, "Accept-Encoding", 15) == 0);
    } else if (ol > 0) {
        FUZZ_CHECK(ol >= n && ol <= sizeof(out) && memcmp(out, v, n) == 0);
        FUZZ_CHECK(ol == n || (ol == n + 17 && memcmp(out + n, ", Accept-Encoding", 17) == 0));
    } else {
        FUZZ_CHECK(n + 17 > sizeof(out));
    }
    ol = wk_gz_etag(v, n, out, sizeof(out));
    if (ol > 0) {
        FUZZ_CHECK(ol <= sizeof(out) && memcmp(out, "W/", 2) == 0);
        FUZZ_CHECK(memcmp(out + ol - n, v, n) == 0);
    } else {
        FUZZ_CHECK(n + (n >= 2 && v[0] == 'W' && v[1] == '/' ? 0 : 2) > sizeof(out));
    }
}

/* ---- 4: gRPC values ----------------------------------------------------------------------------
 */
static void fz_grpc(const char *v, size_t n, uint8_t sel)
{
    uint64_t ms = 0;
    char out[256], small[256];
    size_t ol, sl, cap;
    unsigned status = 100 + (unsigned)sel * 2 + (n > 0 ? (uint8_t)v[0] % 2 : 0);

    /* grpc-timeout: 1-8 digits and a unit; the value rounded up to a millisecond. */
    {
        int ok = n >= 2 && n <= 9 && strchr("HMSmun", v[n - 1]) != NULL && v[n - 1] != '\0';
        unsigned __int128 val = 0, ns;
        for (size_t i = 0; ok && i + 1 < n; i++) {
            ok = v[i] >= '0' && v[i] <= '9';
            val = val * 10 + (unsigned)(v[i] - '0');
        }
        if (wk_grpc_timeout(v, n, &ms) == 0) {
            FUZZ_CHECK(ok);
            switch (v[n - 1]) {
            case 'H':
                ns = val * 3600000000000ull;
                break;
            case 'M':
                ns = val * 60000000000ull;
                break;
            case 'S':
                ns = val * 1000000000ull;
                break;
            case 'm':
                ns = val * 1000000ull;
                break;
            case 'u':
                ns = val * 1000ull;
                break;
            default:
                ns = val;
            }
            ns = (ns + 999999) / 1000000;
            FUZZ_CHECK(ms == (ns > WK_GRPC_TIMEOUT_MAX_MS ? WK_GRPC_TIMEOUT_MAX_MS : (uint64_t)ns));
            FUZZ_CHECK((ms == 0) == (val == 0));
        } else {
            FUZZ_CHECK(!ok);
        }
    }
    FUZZ_CHECK(wk_grpc_ctype(v, n) == (n >= 16 && strncasecmp(v, "application/grpc", 16) == 0 &&
                                       (n == 16 || v[16] == '+' || v[16] == ';')));
    (void)wk_grpc_code(status, v, n);
    FUZZ_CHECK(wk_grpc_code(404, v, n) == WK_GRPC_UNIMPLEMENTED ||
               wk_grpc_code(404, v, n) == WK_GRPC_UNAVAILABLE);
    /* grpc-message: escaped, NUL-terminated, within the buffer; a smaller buffer, a prefix. */
    ol = wk_grpc_message(status, v, n, out, sizeof(out));
    FUZZ_CHECK(ol < sizeof(out) && out[ol] == '\0' && strlen(out) == ol);
    for (size_t i = 0; i < ol; i++) {
        unsigned char ch = (unsigned char)out[i];
        FUZZ_CHECK(ch >= 0x20 && ch <= 0x7e);
        if (ch == '%') {
            FUZZ_CHECK(i + 2 < ol);
            FUZZ_CHECK(strchr("0123456789ABCDEF", out[i + 1]) != NULL && out[i + 1] != '\0');
            FUZZ_CHECK(strchr("0123456789ABCDEF", out[i + 2]) != NULL && out[i + 2] != '\0');
            i += 2;
        }
    }
    cap = (size_t)sel % sizeof(small);
    sl = wk_grpc_message(status, v, n, small, cap);
    if (cap == 0) {
        FUZZ_CHECK(sl == 0);
    } else {
        FUZZ_CHECK(sl < cap && small[sl] == '\0' && sl <= ol && memcmp(small, out, sl) == 0);
    }
}

/* ---- 5: trailers -------------------------------------------------------------------------------
 */
static void fz_trailers(const char *p, size_t n, uint8_t sel)
{
    struct wk_hdr f[WK_MAX_HEADERS];
    uint32_t max = sel % 2 ? WK_MAX_HEADERS : (uint32_t)sel % 8, k;
    char out[4096];
    size_t ol, want = 5;
    struct wk_h2_fields *tf;

    k = wk_trailer_split(p, n, f, max);
    FUZZ_CHECK(k <= max);
    for (uint32_t i = 0; i < k; i++) {
        FUZZ_CHECK(inside(p, n, f[i].name, f[i].nlen) && inside(p, n, f[i].value, f[i].vlen));
        FUZZ_CHECK(wk_trailer_ok(f[i].name, f[i].nlen) && wk_token_ok(f[i].name, f[i].nlen));
        FUZZ_CHECK(wk_value_ok(f[i].value, f[i].vlen));
        FUZZ_CHECK(f[i].vlen == 0 || (!ws(f[i].value[0]) && !ws(f[i].value[f[i].vlen - 1])));
        FUZZ_CHECK(f[i].name[f[i].nlen] == ':');
        FUZZ_CHECK(i == 0 || f[i].name > f[i - 1].value);
        want += f[i].nlen + 2 + f[i].vlen + 2;
    }
    ol = wk_h2_last_chunk(out, sizeof(out), f, k);
    if (ol > 0) {
        FUZZ_CHECK(ol == want && memcmp(out, "0\r\n", 3) == 0 &&
                   memcmp(out + ol - 2, "\r\n", 2) == 0);
        /* ... which the strict chunked decoder takes as a whole body. */
        {
            struct wk_chunk ch;
            size_t used = 0, dl = 0;
            wk_h1_chunk_init(&ch, 0);
            FUZZ_CHECK(wk_h1_chunk_parse(&ch, out, ol, &used, &dl) == WK_CHUNK_DONE && used == ol);
        }
    } else {
        FUZZ_CHECK(want > sizeof(out));
    }
    tf = wk_h2_fields_new(f, k);
    FUZZ_CHECK(tf != NULL && tf->n == k);
    for (size_t i = 0; i < tf->n; i++) {
        FUZZ_CHECK(tf->nv[i].namelen == f[i].nlen && tf->nv[i].valuelen == f[i].vlen);
        FUZZ_CHECK(strncasecmp((const char *)tf->nv[i].name, f[i].name, f[i].nlen) == 0);
        for (size_t j = 0; j < tf->nv[i].namelen; j++) {
            FUZZ_CHECK(tf->nv[i].name[j] < 'A' || tf->nv[i].name[j] > 'Z');
        }
        FUZZ_CHECK(memcmp(tf->nv[i].value, f[i].value, f[i].vlen) == 0);
    }
    free(tf);
    /* The split's own name check agrees with the token rule and the excluded names. */
    {
        size_t nl = n < 40 ? n : 40;
        int ok = wk_trailer_ok(p, nl);
        FUZZ_CHECK(!ok || (wk_token_ok(p, nl) && !(nl == 4 && strncasecmp(p, "host", 4) == 0) &&
                           !(nl == 14 && strncasecmp(p, "content-length", 14) == 0) &&
                           !(nl == 17 && strncasecmp(p, "transfer-encoding", 17) == 0)));
    }
}

/* ---- 6: CIDR ----------------------------------------------------------------------------------
 */
static void fz_cidr(const char *v, size_t n)
{
    char s[128], err[256];
    struct net_cidr c;
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;

    if (n >= sizeof(s)) {
        return;
    }
    memcpy(s, v, n);
    s[n] = '\0';
    err[0] = '\0';
    if (net_cidr_parse(s, &c, err, sizeof(err)) != 0) {
        FUZZ_CHECK(err[0] != '\0');
        return;
    }
    FUZZ_CHECK(c.family == AF_INET || c.family == AF_INET6);
    FUZZ_CHECK(c.prefix <= (c.family == AF_INET ? 32 : 128));
    memset(&a6, 0, sizeof(a6));
    a6.sin6_family = AF_INET6;
    if (c.family == AF_INET) {
        memset(&a4, 0, sizeof(a4));
        a4.sin_family = AF_INET;
        memcpy(&a4.sin_addr, c.addr, 4);
        FUZZ_CHECK(net_cidr_match(&c, (const struct sockaddr *)&a4));
        a6.sin6_addr.s6_addr[10] = a6.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&a6.sin6_addr.s6_addr[12], c.addr, 4);
    } else {
        memcpy(&a6.sin6_addr, c.addr, 16);
    }
    FUZZ_CHECK(net_cidr_match(&c, (const struct sockaddr *)&a6));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data + 1;
    size_t n = size > 0 ? size - 1 : 0;
    uint8_t sel = size > 1 ? data[1] : 0;

    if (size == 0 || size > 16384) {
        return 0;
    }
    switch (data[0] % 8) {
    case 0:
        fz_htpasswd(p, n);
        break;
    case 1:
        fz_basic(p, n);
        break;
    case 2:
        fz_cookie(p, n);
        break;
    case 3:
        fz_ae(p, n);
        break;
    case 4:
        fz_grpc(p, n, sel);
        break;
    case 5:
        fz_trailers(p, n, sel);
        break;
    case 6:
        fz_cidr(p, n);
        break;
    default:
        fz_cookie(p, n);
        fz_ae(p, n);
        fz_grpc(p, n, sel);
        break;
    }
    return 0;
}
