/* dispatcher: PROXY protocol parser. Every length is checked before it is used; any deviation
 * from the grammar is -1 (the caller closes), never a guess. */
#include "worker/wk_pp.h"

#include <arpa/inet.h>
#include <string.h>
#include <sys/socket.h>

static const uint8_t v2sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                  0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static int parse_port(const char *s, size_t n, uint16_t *port)
{
    unsigned v = 0;

    if (n == 0 || n > 5 || (n > 1 && s[0] == '0')) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535) {
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

static int parse_ip(int family, const char *s, size_t n, uint8_t *out)
{
    char tmp[64];

    if (n == 0 || n >= sizeof(tmp)) {
        return -1;
    }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return inet_pton(family, tmp, out) == 1 ? 0 : -1;
}

static int parse_v1(const uint8_t *buf, size_t len, struct wk_pp_addr *out)
{
    const char *p = (const char *)buf;
    const char *f[6];
    size_t fl[6];
    size_t lim = len < WK_PP_MAX_V1 ? len : WK_PP_MAX_V1;
    size_t end = 0, i, nf = 0, s;
    int family;

    for (i = 0; i < lim; i++) {
        if (p[i] == '\r' && i + 1 < lim && p[i + 1] == '\n') {
            end = i;
            break;
        }
        if (p[i] == '\0' || p[i] == '\n' || (p[i] == '\r' && i + 1 < lim)) {
            return -1;
        }
    }
    if (end == 0) {
        return len >= WK_PP_MAX_V1 ? -1 : 0;
    }
    /* "PROXY" SP proto [SP src SP dst SP sport SP dport] CRLF, single spaces only */
    s = 6;
    if (end < 6 || memcmp(p, "PROXY ", 6) != 0) {
        return -1;
    }
    for (i = 6; i <= end && nf < 6; i++) {
        if (i == end || p[i] == ' ') {
            if (i == s) {
                return -1;
            }
            f[nf] = p + s;
            fl[nf] = i - s;
            nf++;
            s = i + 1;
        }
    }
    if (i <= end) {
        /* more fields than the grammar allows, unless the protocol is UNKNOWN */
        if (!(fl[0] == 7 && memcmp(f[0], "UNKNOWN", 7) == 0)) {
            return -1;
        }
    }
    memset(out, 0, sizeof(*out));
    if (fl[0] == 7 && memcmp(f[0], "UNKNOWN", 7) == 0) {
        return (int)end + 2;
    }
    if (fl[0] == 4 && memcmp(f[0], "TCP4", 4) == 0) {
        family = AF_INET;
    } else if (fl[0] == 4 && memcmp(f[0], "TCP6", 4) == 0) {
        family = AF_INET6;
    } else {
        return -1;
    }
    if (nf != 5 || parse_ip(family, f[1], fl[1], out->src) != 0 ||
        parse_ip(family, f[2], fl[2], out->dst) != 0 ||
        parse_port(f[3], fl[3], &out->src_port) != 0 ||
        parse_port(f[4], fl[4], &out->dst_port) != 0) {
        return -1;
    }
    out->family = family;
    return (int)end + 2;
}

static int parse_v2(const uint8_t *buf, size_t len, struct wk_pp_addr *out)
{
    size_t total, alen;
    uint8_t ver = buf[12] >> 4, cmd = buf[12] & 0x0f, fam = buf[13];

    alen = ((size_t)buf[14] << 8) | buf[15];
    total = 16 + alen;
    if (ver != 2 || cmd > 1 || total > WK_PP_MAX_V2) {
        return -1;
    }
    if (len < total) {
        return 0;
    }
    memset(out, 0, sizeof(*out));
    if (cmd == 0) {
        return (int)total; /* LOCAL: health check from the balancer itself; keep the peer */
    }
    switch (fam) {
    case 0x11: /* TCP over IPv4 */
        if (alen < 12) {
            return -1;
        }
        out->family = AF_INET;
        memcpy(out->src, buf + 16, 4);
        memcpy(out->dst, buf + 20, 4);
        out->src_port = (uint16_t)((buf[24] << 8) | buf[25]);
        out->dst_port = (uint16_t)((buf[26] << 8) | buf[27]);
        break;
    case 0x21: /* TCP over IPv6 */
        if (alen < 36) {
            return -1;
        }
        out->family = AF_INET6;
        memcpy(out->src, buf + 16, 16);
        memcpy(out->dst, buf + 32, 16);
        out->src_port = (uint16_t)((buf[48] << 8) | buf[49]);
        out->dst_port = (uint16_t)((buf[50] << 8) | buf[51]);
        break;
    case 0x00: /* UNSPEC */
    case 0x12: /* UDP and UNIX families carry nothing we can use for an HTTP client */
    case 0x22:
    case 0x31:
    case 0x32:
        break;
    default:
        return -1;
    }
    /* TLVs follow the addresses up to <total>: skipped, their bounds need no walk because we
     * never read them. */
    return (int)total;
}

int wk_pp_parse(const uint8_t *buf, size_t len, struct wk_pp_addr *out)
{
    size_t n;

    if (len == 0) {
        return 0;
    }
    n = len < 12 ? len : 12;
    if (memcmp(buf, v2sig, n) == 0) {
        return len < 16 ? 0 : parse_v2(buf, len, out);
    }
    n = len < 6 ? len : 6;
    if (memcmp(buf, "PROXY ", n) == 0) {
        return parse_v1(buf, len, out);
    }
    return -1;
}
