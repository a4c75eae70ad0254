/* dispatcher: gRPC semantics as pure functions (see wk_grpc.h). */
#include "worker/wk_grpc.h"

#include <string.h>
#include <strings.h>

#include "worker/wk_internal.h"

int wk_grpc_ctype(const char *v, size_t n)
{
    static const char g[] = "application/grpc";
    const size_t gl = sizeof(g) - 1;

    if (n < gl || strncasecmp(v, g, gl) != 0) {
        return 0;
    }
    return n == gl || v[gl] == '+' || v[gl] == ';';
}

int wk_grpc_timeout(const char *v, size_t n, uint64_t *ms)
{
    uint64_t val = 0, r;

    if (n < 2 || n > 9) {
        return -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9') {
            return -1;
        }
        val = val * 10 + (uint64_t)(v[i] - '0');
    }
    /* (8 digits at most: below 10^8, so no product below overflows) */
    switch (v[n - 1]) {
    case 'H':
        r = val * 3600000;
        break;
    case 'M':
        r = val * 60000;
        break;
    case 'S':
        r = val * 1000;
        break;
    case 'm':
        r = val;
        break;
    case 'u':
        r = (val + 999) / 1000;
        break;
    case 'n':
        r = (val + 999999) / 1000000;
        break;
    default:
        return -1;
    }
    *ms = r > WK_GRPC_TIMEOUT_MAX_MS ? WK_GRPC_TIMEOUT_MAX_MS : r;
    return 0;
}

int wk_grpc_head_timeout(const struct wk_head *hd, uint64_t *ms)
{
    for (uint32_t i = 0; i < hd->n; i++) {
        if (wk_hdr_is(&hd->h[i], "grpc-timeout", 12)) {
            return wk_grpc_timeout(hd->h[i].value, hd->h[i].vlen, ms) == 0 ? 1 : -1;
        }
    }
    return 0;
}

/* The JSON string value of key <key> (a quoted name, e.g. "\"error\"") at the top of <body>, its
 * raw (still escaped) bytes in [*s, *s + *len). 1 when found. Our bodies are flat objects we
 * wrote ourselves; a body that is no such object simply has no value. */
static int json_value(const char *body, size_t blen, const char *key, const char **s, size_t *len)
{
    size_t kl = strlen(key);

    if (blen == 0 || body[0] != '{') {
        return 0;
    }
    for (size_t i = 1; i + kl + 2 <= blen; i++) {
        size_t j;
        if (memcmp(body + i, key, kl) != 0 || body[i + kl] != ':' || body[i + kl + 1] != '"') {
            continue;
        }
        j = i + kl + 2;
        *s = body + j;
        while (j < blen && body[j] != '"') {
            j += body[j] == '\\' ? 2 : 1;
        }
        if (j >= blen) {
            return 0;
        }
        *len = (size_t)(body + j - *s);
        return 1;
    }
    return 0;
}

unsigned wk_grpc_code(unsigned status, const char *body, size_t blen)
{
    const char *e;
    size_t el;

    if (status >= 200 && status < 300) {
        return WK_GRPC_OK;
    }
    switch (status) {
    case 400:
    case 500:
        return WK_GRPC_INTERNAL;
    case 401:
        return WK_GRPC_UNAUTHENTICATED;
    case 403:
        return WK_GRPC_PERMISSION_DENIED;
    case 404:
        /* A known service with no backends is a service that is not there now, not a method
         * that does not exist: a client may retry it. */
        if (json_value(body, blen, "\"error\"", &e, &el) && el == 20 &&
            memcmp(e, "Service not deployed", 20) == 0) {
            return WK_GRPC_UNAVAILABLE;
        }
        return WK_GRPC_UNIMPLEMENTED;
    case 405:
    case 501:
        return WK_GRPC_UNIMPLEMENTED;
    case 408:
    case 504:
        return WK_GRPC_DEADLINE_EXCEEDED;
    case 413:
    case 429:
    case 431:
        return WK_GRPC_RESOURCE_EXHAUSTED;
    case 502:
    case 503:
        return WK_GRPC_UNAVAILABLE;
    default:
        return WK_GRPC_UNKNOWN;
    }
}

unsigned wk_grpc_cut_code(unsigned cut, const char **msg)
{
    switch (cut) {
    case SHM_CUT_BACKEND_CLOSED:
        *msg = "The backend closed the stream";
        return WK_GRPC_UNAVAILABLE;
    case SHM_CUT_BACKEND_INVALID:
        *msg = "The backend sent an invalid response";
        return WK_GRPC_INTERNAL;
    case SHM_CUT_STREAM_IDLE:
        *msg = "The backend sent nothing for stream_idle_timeout_ms";
        return WK_GRPC_DEADLINE_EXCEEDED;
    case SHM_CUT_DEADLINE:
        *msg = "Deadline exceeded";
        return WK_GRPC_DEADLINE_EXCEEDED;
    default:
        *msg = NULL;
        return 0;
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Append byte <b> percent-encoded as grpc-message wants it. 0, or -1 when it does not fit. */
static int pct_add(char *out, size_t cap, size_t *at, unsigned char b)
{
    static const char hex[] = "0123456789ABCDEF";

    if (b >= 0x20 && b <= 0x7e && b != '%') {
        if (*at + 1 >= cap) {
            return -1;
        }
        out[(*at)++] = (char)b;
        return 0;
    }
    if (*at + 3 >= cap) {
        return -1;
    }
    out[(*at)++] = '%';
    out[(*at)++] = hex[b >> 4];
    out[(*at)++] = hex[b & 15];
    return 0;
}

/* One JSON escape at <s>[0, n) (after the backslash): the bytes it stands for into <b> (UTF-8
 * for \u beyond 0xFF: our own writer escapes single bytes as \u00XX), how many in *bn; returns
 * the escape's length, or 0 when it is not one. */
static size_t json_unescape(const char *s, size_t n, unsigned char b[3], size_t *bn)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *f;
    unsigned u = 0;

    if (n == 0) {
        return 0;
    }
    f = strchr(from, s[0]);
    if (f != NULL && s[0] != '\0') {
        b[0] = (unsigned char)to[f - from];
        *bn = 1;
        return 1;
    }
    if (s[0] != 'u' || n < 5) {
        return 0;
    }
    for (int i = 1; i <= 4; i++) {
        int h = hexval(s[i]);
        if (h < 0) {
            return 0;
        }
        u = u << 4 | (unsigned)h;
    }
    if (u < 0x100) {
        b[0] = (unsigned char)u;
        *bn = 1;
    } else if (u < 0x800) {
        b[0] = (unsigned char)(0xc0 | u >> 6);
        b[1] = (unsigned char)(0x80 | (u & 0x3f));
        *bn = 2;
    } else {
        b[0] = (unsigned char)(0xe0 | u >> 12);
        b[1] = (unsigned char)(0x80 | ((u >> 6) & 0x3f));
        b[2] = (unsigned char)(0x80 | (u & 0x3f));
        *bn = 3;
    }
    return 5;
}

size_t wk_grpc_message(unsigned status, const char *body, size_t blen, char *out, size_t cap)
{
    const char *m;
    size_t ml, at = 0;

    if (cap == 0) {
        return 0;
    }
    if (!json_value(body, blen, "\"message\"", &m, &ml) || ml == 0) {
        m = wk_reason(status);
        ml = strlen(m);
        for (size_t i = 0; i < ml && pct_add(out, cap, &at, (unsigned char)m[i]) == 0; i++) {
        }
        out[at] = '\0';
        return at;
    }
    for (size_t i = 0; i < ml;) {
        unsigned char b[3];
        size_t bn = 1, el = 0, save = at;
        int fit = 1;
        if (m[i] == '\\') {
            el = json_unescape(m + i + 1, ml - i - 1, b, &bn);
        }
        if (el == 0) {
            b[0] = (unsigned char)m[i];
            bn = 1;
        }
        for (size_t k = 0; k < bn && fit; k++) {
            fit = pct_add(out, cap, &at, b[k]) == 0;
        }
        if (!fit) {
            at = save; /* (never half a character) */
            break;
        }
        i += el ? el + 1 : 1;
    }
    out[at] = '\0';
    return at;
}

int wk_trailer_ok(const char *name, size_t n)
{
    static const char *const no[] = {"connection",
                                     "keep-alive",
                                     "proxy-connection",
                                     "te",
                                     "trailer",
                                     "transfer-encoding",
                                     "upgrade",
                                     "host",
                                     "content-length",
                                     "http2-settings",
                                     NULL};

    if (!wk_token_ok(name, n)) {
        return 0; /* (a pseudo-header's ':' is no token character) */
    }
    for (int i = 0; no[i] != NULL; i++) {
        if (strlen(no[i]) == n && strncasecmp(no[i], name, n) == 0) {
            return 0;
        }
    }
    return 1;
}

static int ows(char c)
{
    return c == ' ' || c == '\t';
}

uint32_t wk_trailer_split(const char *p, size_t n, struct wk_hdr *out, uint32_t max)
{
    uint32_t k = 0;
    size_t i = 0;

    while (i < n) {
        const char *line = p + i, *nl = memchr(line, '\n', n - i), *colon;
        size_t ll = nl != NULL ? (size_t)(nl - line) : n - i, vs, ve;

        i += ll + 1;
        if (ll > 0 && line[ll - 1] == '\r') {
            ll--;
        }
        colon = memchr(line, ':', ll);
        if (colon == NULL) {
            continue; /* (the final empty line) */
        }
        vs = (size_t)(colon - line) + 1;
        ve = ll;
        while (vs < ve && ows(line[vs])) {
            vs++;
        }
        while (ve > vs && ows(line[ve - 1])) {
            ve--;
        }
        if (k < max && wk_trailer_ok(line, (size_t)(colon - line)) &&
            wk_value_ok(line + vs, ve - vs)) {
            out[k].name = line;
            out[k].nlen = (uint32_t)(colon - line);
            out[k].value = line + vs;
            out[k].vlen = (uint32_t)(ve - vs);
            k++;
        }
    }
    return k;
}
