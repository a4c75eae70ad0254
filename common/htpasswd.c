/* dispatcher: htpasswd files and HTTP Basic credentials (see htpasswd.h). */
#include "common/htpasswd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/siphash.h"

/* ---- hash schemes -----------------------------------------------------------------------------
 */
static int crypt64(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '/';
}

static int all_crypt64(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!crypt64((unsigned char)p[i])) {
            return 0;
        }
    }
    return 1;
}

/* "$2y$10$" + 22 salt + 31 hash characters. */
static int bcrypt_ok(const char *h, size_t n, const char **why)
{
    unsigned cost;

    if (n != 60 || h[3] != '$' || h[6] != '$' || h[4] < '0' || h[4] > '9' || h[5] < '0' ||
        h[5] > '9' || !all_crypt64(h + 7, 53)) {
        *why = "malformed bcrypt hash (expected $2y$CC$ and 53 characters)";
        return HTP_NONE;
    }
    cost = (unsigned)(h[4] - '0') * 10u + (unsigned)(h[5] - '0');
    if (cost < 4 || cost > 17) {
        *why = "bcrypt cost outside 04..17 (what htpasswd -B -C allows)";
        return HTP_NONE;
    }
    return HTP_BCRYPT;
}

/* "$6$" ["rounds=N$"] salt(1..16) "$" hash (86 for $6$, 43 for $5$). */
static int shacrypt_ok(const char *h, size_t n, int scheme, const char **why)
{
    size_t i = 3, s, hl = scheme == HTP_SHA512 ? 86 : 43;
    const char *bad = scheme == HTP_SHA512 ? "malformed sha512-crypt ($6$) hash"
                                           : "malformed sha256-crypt ($5$) hash";

    if (n > 10 && memcmp(h + 3, "rounds=", 7) == 0) {
        unsigned long r = 0;
        size_t d = 0;
        for (i = 10; i < n && h[i] >= '0' && h[i] <= '9' && d < 9; i++, d++) {
            r = r * 10 + (unsigned long)(h[i] - '0');
        }
        if (d == 0 || i >= n || h[i] != '$' || h[10] == '0') {
            *why = bad;
            return HTP_NONE;
        }
        if (r < 1000 || r > 10000000) {
            *why = "sha-crypt rounds outside 1000..10000000";
            return HTP_NONE;
        }
        i++;
    }
    for (s = i; i < n && h[i] != '$'; i++) {
        if (!crypt64((unsigned char)h[i])) {
            *why = bad;
            return HTP_NONE;
        }
    }
    if (i == s || i - s > 16 || i >= n || n - i - 1 != hl || !all_crypt64(h + i + 1, hl)) {
        *why = bad;
        return HTP_NONE;
    }
    return scheme;
}

int htp_scheme(const char *h, size_t n, const char **why)
{
    *why = NULL;
    if (n > HTP_HASH_MAX) {
        *why = "hash too long";
        return HTP_NONE;
    }
    if (n >= 4 && h[0] == '$' && h[1] == '2' && (h[2] == 'y' || h[2] == 'b' || h[2] == 'a')) {
        return bcrypt_ok(h, n, why);
    }
    if (n >= 3 && h[0] == '$' && h[1] == '6' && h[2] == '$') {
        return shacrypt_ok(h, n, HTP_SHA512, why);
    }
    if (n >= 3 && h[0] == '$' && h[1] == '5' && h[2] == '$') {
        return shacrypt_ok(h, n, HTP_SHA256, why);
    }
    if (n >= 6 && memcmp(h, "$apr1$", 6) == 0) {
        *why = "MD5 ($apr1$) hashes are not supported: use bcrypt (htpasswd -B), sha512-crypt "
               "(htpasswd -5) or sha256-crypt (htpasswd -2)";
    } else if (n >= 3 && memcmp(h, "$1$", 3) == 0) {
        *why = "MD5-crypt ($1$) hashes are not supported: use bcrypt (htpasswd -B)";
    } else if (n >= 5 && memcmp(h, "{SHA}", 5) == 0) {
        *why = "SHA-1 ({SHA}) hashes are not supported: use bcrypt (htpasswd -B)";
    } else if (n == 13 && all_crypt64(h, n)) {
        *why = "crypt DES hashes are not supported: use bcrypt (htpasswd -B)";
    } else if (n >= 1 && h[0] == '$') {
        *why = "unsupported hash scheme: use bcrypt ($2y$), sha512-crypt ($6$) or "
               "sha256-crypt ($5$)";
    } else {
        *why = "not a supported hash (a plain-text password?): use bcrypt (htpasswd -B)";
    }
    return HTP_NONE;
}

uint64_t htp_cost_us(const char *h, size_t n)
{
    const char *why;
    int s = htp_scheme(h, n, &why);
    uint64_t rounds = 5000;

    if (s == HTP_BCRYPT) {
        return (uint64_t)112 << ((unsigned)(h[4] - '0') * 10u + (unsigned)(h[5] - '0'));
    }
    if (s == HTP_NONE) {
        return 0;
    }
    if (n > 10 && memcmp(h + 3, "rounds=", 7) == 0) {
        rounds = strtoull(h + 10, NULL, 10);
    }
    return rounds * (s == HTP_SHA512 ? 95 : 68) / 100;
}

/* ---- the file ---------------------------------------------------------------------------------
 */
int htp_user_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);

    if (c != 0) {
        return c;
    }
    return alen < blen ? -1 : alen > blen;
}

static int user_sort(const void *pa, const void *pb)
{
    const struct htp_user *a = pa, *b = pb;
    int c = htp_user_cmp(a->user, a->ulen, b->user, b->ulen);

    return c != 0 ? c : (a->line > b->line) - (a->line < b->line);
}

static int printable(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch < 0x20 || ch == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* One line <p>[0, n) (its LF and a CR before it removed): 1 with *u filled, 0 when skipped
 * (empty, comment), -1 when bad (reported). */
static int parse_line(const char *p, size_t n, unsigned line, struct htp_user *u, htp_err_fn err,
                      void *ctx)
{
    const char *colon, *why;
    char msg[256];

    if (n == 0 || p[0] == '#') {
        return 0;
    }
    colon = memchr(p, ':', n);
    if (colon == NULL) {
        err(ctx, line, "not a \"user:hash\" line");
        return -1;
    }
    u->user = p;
    u->ulen = (uint32_t)(colon - p);
    u->hash = colon + 1;
    u->hlen = (uint32_t)(n - u->ulen - 1);
    u->line = line;
    if (u->ulen == 0 || u->ulen > HTP_USER_MAX || !printable(p, u->ulen)) {
        err(ctx, line,
            u->ulen == 0 ? "empty user name" : "user name too long or with control characters");
        return -1;
    }
    u->scheme = (uint32_t)htp_scheme(u->hash, u->hlen, &why);
    if (u->scheme == HTP_NONE) {
        snprintf(msg, sizeof(msg), "user \"%.*s\": %s", (int)(u->ulen > 64 ? 64 : u->ulen), u->user,
                 why);
        err(ctx, line, msg);
        return -1;
    }
    return 1;
}

long htp_parse(const char *t, size_t n, struct htp_user **out, htp_err_fn err, void *ctx)
{
    size_t cap = 16, cnt = 0, k = 0;
    struct htp_user *v = malloc(cap * sizeof(*v));
    unsigned line = 0;

    *out = NULL;
    if (v == NULL) {
        return -1;
    }
    for (size_t off = 0; off < n;) {
        const char *p = t + off, *nl = memchr(p, '\n', n - off);
        size_t len = nl ? (size_t)(nl - p) : n - off;

        off += len + (nl != NULL);
        line++;
        if (len > 0 && p[len - 1] == '\r') {
            len--;
        }
        if (cnt == cap) {
            struct htp_user *nv = realloc(v, 2 * cap * sizeof(*v));
            if (nv == NULL) {
                free(v);
                return -1;
            }
            v = nv;
            cap *= 2;
        }
        if (parse_line(p, len, line, &v[cnt], err, ctx) == 1) {
            cnt++;
        }
    }
    qsort(v, cnt, sizeof(*v), user_sort);
    /* A user given twice: the later line is the error (the table keeps the first). */
    for (size_t i = 0; i < cnt; i++) {
        if (k > 0 && htp_user_cmp(v[k - 1].user, v[k - 1].ulen, v[i].user, v[i].ulen) == 0) {
            char msg[256];
            snprintf(msg, sizeof(msg), "user \"%.*s\" is already given on line %u",
                     (int)(v[i].ulen > 64 ? 64 : v[i].ulen), v[i].user, v[k - 1].line);
            err(ctx, v[i].line, msg);
            continue;
        }
        v[k++] = v[i];
    }
    *out = v;
    return (long)k;
}

/* ---- Basic credentials ------------------------------------------------------------------------
 */
static int b64val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') {
        return ch - 'A';
    }
    if (ch >= 'a' && ch <= 'z') {
        return ch - 'a' + 26;
    }
    if (ch >= '0' && ch <= '9') {
        return ch - '0' + 52;
    }
    return ch == '+' ? 62 : ch == '/' ? 63 : -1;
}

/* Standard base64 of <s>[0, n), padding optional: the length decoded into <out>, or -1. */
static long b64_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0, pad = 0;
    uint32_t acc = 0;
    unsigned bits = 0;

    while (n > 0 && s[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if ((pad > 0 && (n + pad) % 4 != 0) || n % 4 == 1) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        int d = b64val((unsigned char)s[i]);
        if (d < 0) {
            return -1;
        }
        acc = (acc << 6) | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap) {
                return -1;
            }
            out[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    /* Leftover bits must be zero (a canonical encoding). */
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        return -1;
    }
    return (long)o;
}

int htp_basic_decode(const char *v, size_t n, char *buf, size_t cap, const char **user,
                     size_t *ulen, const char **pass, size_t *plen)
{
    size_t i = 5;
    long dl;
    const char *colon;

    if (n < 6 || strncasecmp(v, "basic", 5) != 0 || (v[5] != ' ' && v[5] != '\t')) {
        return -1;
    }
    while (i < n && (v[i] == ' ' || v[i] == '\t')) {
        i++;
    }
    while (n > i && (v[n - 1] == ' ' || v[n - 1] == '\t')) {
        n--;
    }
    if (i == n || n - i > 4 * ((cap + 2) / 3) + 4) {
        return -1;
    }
    dl = b64_decode(v + i, n - i, buf, cap);
    if (dl <= 0 || !printable(buf, (size_t)dl)) {
        return -1;
    }
    colon = memchr(buf, ':', (size_t)dl);
    if (colon == NULL || colon == buf || (size_t)(colon - buf) > HTP_USER_MAX ||
        (size_t)dl - (size_t)(colon - buf) - 1 > HTP_PASS_MAX) {
        return -1;
    }
    *user = buf;
    *ulen = (size_t)(colon - buf);
    *pass = colon + 1;
    *plen = (size_t)dl - *ulen - 1;
    return 0;
}

/* ---- SipHash-2-4, 128-bit output --------------------------------------------------------------
 */
#define SIPROUND DSP_SIPROUND(v0, v1, v2, v3)

static uint64_t le64(const uint8_t *p)
{
    uint64_t r = 0;

    for (int i = 7; i >= 0; i--) {
        r = (r << 8) | p[i];
    }
    return r;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

void htp_siphash128(const uint8_t key[16], const void *data, size_t n, uint8_t out[16])
{
    const uint8_t *p = data;
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    uint64_t b = (uint64_t)n << 56;
    size_t i, left = n & 7;

    v1 ^= 0xee;
    for (i = 0; i + 8 <= n; i += 8) {
        uint64_t m = le64(p + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; j < left; j++) {
        b |= (uint64_t)p[i + j] << (8 * j);
    }
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xee;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    put_le64(out, v0 ^ v1 ^ v2 ^ v3);
    v1 ^= 0xdd;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    put_le64(out + 8, v0 ^ v1 ^ v2 ^ v3);
}

int htp_ct_equal(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;

    for (size_t i = 0; i < n; i++) {
        d |= (uint8_t)(x[i] ^ y[i]);
    }
    return d == 0;
}
