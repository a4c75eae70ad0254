/* dispatcher: header helpers of the proxy path that need no connection state (hop-by-hop rules,
 * request ids, reason phrases); kept apart so the unit tests can reach them. */
#include "worker/wk_internal.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

int wk_hdr_is(const struct wk_hdr *h, const char *name, size_t nlen)
{
    return h->nlen == nlen && strncasecmp(h->name, name, nlen) == 0;
}

static int tok_char(char ch)
{
    return ch != ',' && ch != ' ' && ch != '\t';
}

int wk_hdr_has_token(const char *v, size_t vlen, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0;

    while (i < vlen) {
        size_t s;
        while (i < vlen && !tok_char(v[i])) {
            i++;
        }
        s = i;
        while (i < vlen && tok_char(v[i])) {
            i++;
        }
        if (i - s == tlen && strncasecmp(v + s, token, tlen) == 0) {
            return 1;
        }
    }
    return 0;
}

/* clang-format off */
static const struct {
    const char *name;
    size_t len;
} hop_names[] = {
    {"connection", 10}, {"keep-alive", 10}, {"proxy-connection", 16}, {"te", 2},
    {"trailer", 7},     {"transfer-encoding", 17}, {"upgrade", 7},
};
/* clang-format on */

int wk_hdr_hop(const struct wk_head *head, const char *name, size_t nlen)
{
    for (size_t i = 0; i < sizeof(hop_names) / sizeof(hop_names[0]); i++) {
        if (nlen == hop_names[i].len && strncasecmp(name, hop_names[i].name, nlen) == 0) {
            return 1;
        }
    }
    /* Names listed in Connection are hop-by-hop too; "close" and "keep-alive" never name a real
     * header worth keeping anyway. */
    for (uint32_t i = 0; i < head->n; i++) {
        const struct wk_hdr *h = &head->h[i];
        if (wk_hdr_is(h, "connection", 10)) {
            size_t j = 0;
            while (j < h->vlen) {
                size_t s;
                while (j < h->vlen && !tok_char(h->value[j])) {
                    j++;
                }
                s = j;
                while (j < h->vlen && tok_char(h->value[j])) {
                    j++;
                }
                if (j - s == nlen && strncasecmp(h->value + s, name, nlen) == 0) {
                    return 1;
                }
            }
        }
    }
    return 0;
}

int wk_reqid_sane(const char *v, size_t vlen)
{
    if (vlen == 0 || vlen > WK_REQID_MAX) {
        return 0;
    }
    for (size_t i = 0; i < vlen; i++) {
        char ch = v[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == ':' || ch == '+' || ch == '/' || ch == '=' ||
              ch == '-')) {
            return 0;
        }
    }
    return 1;
}

static uint64_t xorshift128p(uint64_t s[2])
{
    uint64_t x = s[0];
    uint64_t const y = s[1];

    s[0] = y;
    x ^= x << 23;
    s[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
    return s[1] + y;
}

uint64_t wk_rand(uint64_t rng[2])
{
    return xorshift128p(rng);
}

void wk_reqid_new(uint64_t rng[2], char *out)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = xorshift128p(rng), b = xorshift128p(rng);

    for (int i = 0; i < 16; i++) {
        out[i] = hex[(a >> (i * 4)) & 15];
        out[16 + i] = hex[(b >> (i * 4)) & 15];
    }
    out[32] = '\0';
}

void wk_head_reset(struct wk_head *h)
{
    h->url = NULL;
    h->url_len = 0;
    h->n = 0;
    h->too_many = 0;
    h->folded = 0;
    h->in_value = 0;
}

const char *wk_reason(unsigned status)
{
    /* clang-format off */
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 429: return "Too Many Requests";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
    /* clang-format on */
}

/* RFC 7230 tchar. */
static int is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) {
        return 1;
    }
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

int wk_token_ok(const char *s, size_t n)
{
    if (n == 0) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!is_tchar((unsigned char)s[i])) {
            return 0;
        }
    }
    return 1;
}

int wk_value_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            return 0;
        }
    }
    return 1;
}

int wk_request_line_ok(const char *p, size_t n)
{
    size_t i = 0, m, t;

    /* method SP request-target SP HTTP/d.d, with an optional CR before the LF already cut */
    if (n > 0 && p[n - 1] == '\r') {
        n--;
    }
    while (i < n && p[i] != ' ') {
        i++;
    }
    m = i;
    if (!wk_token_ok(p, m) || i >= n) {
        return 0;
    }
    i++;
    t = i;
    while (i < n && p[i] != ' ') {
        if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] == 0x7f) {
            return 0;
        }
        i++;
    }
    if (i == t || i >= n) {
        return 0;
    }
    i++;
    return n - i == 8 && memcmp(p + i, "HTTP/", 5) == 0 && p[i + 5] >= '0' && p[i + 5] <= '9' &&
           p[i + 6] == '.' && p[i + 7] >= '0' && p[i + 7] <= '9';
}

int wk_head_tiled(const char *p, size_t n, const struct wk_head *hd)
{
    const char *nl = memchr(p, '\n', n);
    size_t pos;

    if (nl == NULL || nl == p || nl[-1] != '\r') {
        return 0;
    }
    pos = (size_t)(nl - p) + 1;
    for (uint32_t i = 0; i < hd->n; i++) {
        const struct wk_hdr *h = &hd->h[i];
        if (h->name != p + pos) {
            return 0;
        }
        pos += h->nlen;
        if (pos >= n || p[pos] != ':') {
            return 0;
        }
        pos++;
        while (pos < n && (p[pos] == ' ' || p[pos] == '\t')) {
            pos++;
        }
        if (h->vlen > 0) {
            if (h->value != p + pos) {
                return 0;
            }
            pos += h->vlen;
            while (pos < n && (p[pos] == ' ' || p[pos] == '\t')) {
                pos++;
            }
        }
        if (pos + 1 >= n || p[pos] != '\r' || p[pos + 1] != '\n') {
            return 0;
        }
        pos += 2;
    }
    return pos + 2 == n && p[pos] == '\r' && p[pos + 1] == '\n';
}

static int hexd(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f');
}

/* reg-name characters: unreserved and the sub-delims that no DNS name uses as a separator in a
 * header (' ( ) , ; are left out: they quote, list or parameterise values downstream). '%' starts
 * a pct-encoded triplet (checked apart). A constant table: Host is checked on every request. */
/* clang-format off */
static const unsigned char regname_tab[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1, ['~'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1, ['*'] = 1,
    ['+'] = 1, ['='] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};
/* clang-format on */

int wk_host_ok(const char *v, size_t n)
{
    size_t i = 0;

    if (n == 0 || n > 1024) {
        return 0;
    }
    if (v[0] == '[') {
        char tmp[64];
        unsigned char a6[16];
        const char *rb = memchr(v, ']', n);
        size_t alen;
        if (rb == NULL) {
            return 0;
        }
        alen = (size_t)(rb - v) - 1;
        if (alen < 2 || alen >= sizeof(tmp)) {
            return 0;
        }
        for (size_t k = 1; k <= alen; k++) {
            unsigned char ch = (unsigned char)v[k];
            if (!(hexd(ch) || ch == ':' || ch == '.')) {
                return 0; /* (no zone ids, no IPvFuture) */
            }
        }
        memcpy(tmp, v + 1, alen);
        tmp[alen] = '\0';
        if (inet_pton(AF_INET6, tmp, a6) != 1) {
            return 0;
        }
        i = alen + 2;
    } else {
        while (i < n && regname_tab[(unsigned char)v[i]]) {
            i++;
        }
        while (i < n && v[i] != ':') {
            unsigned char ch = (unsigned char)v[i];
            if (ch == '%') {
                if (i + 2 >= n || !hexd((unsigned char)v[i + 1]) ||
                    !hexd((unsigned char)v[i + 2])) {
                    return 0;
                }
                i += 3;
                continue;
            }
            if (!regname_tab[ch]) {
                return 0;
            }
            i++;
        }
        if (i == 0) {
            return 0;
        }
    }
    if (i == n) {
        return 1;
    }
    if (v[i] != ':') {
        return 0;
    }
    {
        size_t d = n - i - 1;
        unsigned port = 0;
        if (d == 0 || d > 5) {
            return 0;
        }
        for (size_t k = i + 1; k < n; k++) {
            if (v[k] < '0' || v[k] > '9') {
                return 0;
            }
            port = port * 10 + (unsigned)(v[k] - '0');
        }
        return port <= 65535;
    }
}

int wk_content_length(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;

    if (n == 0 || n > 18) {
        return 0; /* up to 10^18 - 1: no overflow, and more than any real body */
    }
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') {
            return 0;
        }
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    *out = x;
    return 1;
}

int wk_te_chunked_only(const char *v, size_t n, int *seen)
{
    size_t i = 0;

    /* A comma-separated list: every element must be "chunked", and only one in all the
     * Transfer-Encoding lines of a message (<seen> carries the count across lines). */
    for (;;) {
        size_t s;
        while (i < n && (v[i] == ' ' || v[i] == '\t')) {
            i++;
        }
        s = i;
        while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t') {
            i++;
        }
        if (i - s != 7 || strncasecmp(v + s, "chunked", 7) != 0) {
            return 0;
        }
        if (++*seen > 1) {
            return 0;
        }
        while (i < n && (v[i] == ' ' || v[i] == '\t')) {
            i++;
        }
        if (i == n) {
            return 1;
        }
        if (v[i] != ',') {
            return 0;
        }
        i++;
    }
}

/* ---- Accept: does the client prefer an HTML page to JSON? ------------------------------------ */
/* A q-value ("1", "0.8", "1.000"; RFC 9110 12.4.2) in thousandths, or -1. */
static int accept_q(const char *v, size_t n)
{
    int q = 0, scale = 100;
    size_t i;

    if (n == 0 || (v[0] != '0' && v[0] != '1')) {
        return -1;
    }
    q = (v[0] - '0') * 1000;
    if (n == 1) {
        return q;
    }
    if (v[1] != '.' || n > 5) {
        return -1;
    }
    for (i = 2; i < n; i++, scale /= 10) {
        if (v[i] < '0' || v[i] > '9' || (v[0] == '1' && v[i] != '0')) {
            return -1;
        }
        q += (v[i] - '0') * scale;
    }
    return q;
}

/* How specifically the media range <r>[0, n) covers <type>/<sub> (3 exact, 2 "type/ *", 1 "* / *"),
 * or 0 when it does not. */
static int accept_match(const char *r, size_t n, const char *type, const char *sub)
{
    size_t tl = strlen(type), sl = strlen(sub);

    if (n == 3 && memcmp(r, "*/*", 3) == 0) {
        return 1;
    }
    if (n < tl + 2 || strncasecmp(r, type, tl) != 0 || r[tl] != '/') {
        return 0;
    }
    if (n == tl + 2 && r[tl + 1] == '*') {
        return 2;
    }
    return n == tl + 1 + sl && strncasecmp(r + tl + 1, sub, sl) == 0 ? 3 : 0;
}

static void accept_take(struct wk_accept *a, int i, int spec, int q)
{
    if (spec > a->spec[i]) {
        a->spec[i] = (int8_t)spec;
        a->q[i] = (int16_t)q;
    } else if (spec == a->spec[i] && spec > 0 && q > a->q[i]) {
        a->q[i] = (int16_t)q;
    }
}

void wk_accept_scan(struct wk_accept *a, const char *v, size_t n)
{
    size_t i = 0;

    while (i < n) {
        size_t rs, re, end;
        int q = 1000, spec;

        end = i;
        while (end < n && v[end] != ',') {
            end++;
        }
        rs = i;
        while (rs < end && (v[rs] == ' ' || v[rs] == '\t')) {
            rs++;
        }
        re = rs;
        while (re < end && v[re] != ';' && v[re] != ' ' && v[re] != '\t') {
            re++;
        }
        /* Parameters: only q matters (the last one given; a bad one drops the element). */
        for (size_t p = re; p < end;) {
            size_t ps, pe;
            while (p < end && (v[p] == ';' || v[p] == ' ' || v[p] == '\t')) {
                p++;
            }
            ps = p;
            while (p < end && v[p] != ';') {
                p++;
            }
            pe = p;
            while (pe > ps && (v[pe - 1] == ' ' || v[pe - 1] == '\t')) {
                pe--;
            }
            if (pe - ps >= 2 && (v[ps] == 'q' || v[ps] == 'Q') && v[ps + 1] == '=') {
                q = accept_q(v + ps + 2, pe - ps - 2);
            }
        }
        if (q >= 0 && re > rs) {
            if ((spec = accept_match(v + rs, re - rs, "text", "html")) > 0) {
                accept_take(a, 0, spec, q);
            }
            if ((spec = accept_match(v + rs, re - rs, "application", "json")) > 0) {
                accept_take(a, 1, spec, q);
            }
        }
        i = end + 1;
    }
}

int wk_accept_html(const struct wk_accept *a)
{
    /* Not said at all: JSON, the default. A tie (curl's "* / *") also keeps JSON. */
    return a->spec[0] > 0 && a->q[0] > 0 && (a->spec[1] == 0 || a->q[0] > a->q[1]);
}
