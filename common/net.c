/* dispatcher: address parsing and formatting without name resolution (config files name IPs). */
#include "common/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_port(const char *p, int allow0, uint16_t *port)
{
    char *end;
    long v;

    if (*p == '\0' || *p < '0' || *p > '9') {
        return -1;
    }
    errno = 0;
    v = strtol(p, &end, 10);
    if (errno != 0 || *end != '\0' || v > 65535 || (v == 0 && !allow0)) {
        return -1;
    }
    *port = (uint16_t)v;
    return 0;
}

int net_parse_addr(const char *s, int allow_port0, struct sockaddr_storage *ss, socklen_t *len,
                   char *err, size_t errlen)
{
    char host[128];
    const char *colon;
    const char *portp;
    size_t hlen;
    uint16_t port;

    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':') {
            snprintf(err, errlen, "bad address \"%s\": expected [IPv6]:port", s);
            return -1;
        }
        hlen = (size_t)(rb - s - 1);
        if (hlen >= sizeof(host)) {
            snprintf(err, errlen, "bad address \"%s\"", s);
            return -1;
        }
        memcpy(host, s + 1, hlen);
        host[hlen] = '\0';
        portp = rb + 2;
        if (parse_port(portp, allow_port0, &port) != 0) {
            snprintf(err, errlen, "bad port in address \"%s\"", s);
            return -1;
        }
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1) {
            snprintf(err, errlen, "bad IPv6 address \"%s\"", host);
            return -1;
        }
        *len = sizeof(*s6);
        return 0;
    }
    colon = strrchr(s, ':');
    if (colon == NULL) {
        snprintf(err, errlen, "bad address \"%s\": expected host:port", s);
        return -1;
    }
    hlen = (size_t)(colon - s);
    if (hlen >= sizeof(host)) {
        snprintf(err, errlen, "bad address \"%s\"", s);
        return -1;
    }
    memcpy(host, s, hlen);
    host[hlen] = '\0';
    if (parse_port(colon + 1, allow_port0, &port) != 0) {
        snprintf(err, errlen, "bad port in address \"%s\"", s);
        return -1;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    if (strcmp(host, "*") == 0 || hlen == 0) {
        s4->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (strcmp(host, "localhost") == 0) {
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
        snprintf(err, errlen, "bad IPv4 address \"%s\" (names are not resolved; use an IP)", host);
        return -1;
    }
    *len = sizeof(*s4);
    return 0;
}

/* IPv4 dotted quad without inet_ntop's sprintf: this runs twice per proxied request. */
static void ip4_str(const uint8_t *a, char *buf, size_t buflen)
{
    char tmp[16];
    size_t n = 0;

    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100) {
            tmp[n++] = (char)('0' + v / 100);
        }
        if (v >= 10) {
            tmp[n++] = (char)('0' + v / 10 % 10);
        }
        tmp[n++] = (char)('0' + v % 10);
        tmp[n++] = i < 3 ? '.' : '\0';
    }
    if (buflen >= n) {
        memcpy(buf, tmp, n);
    } else if (buflen > 0) {
        buf[0] = '\0';
    }
}

char *net_ip_str(const struct sockaddr *sa, char *buf, size_t buflen)
{
    if (sa->sa_family == AF_INET) {
        ip4_str((const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr, buf, buflen);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            ip4_str(&a->s6_addr[12], buf, buflen);
        } else {
            inet_ntop(AF_INET6, a, buf, (socklen_t)buflen);
        }
    } else if (buflen > 0) {
        snprintf(buf, buflen, "unknown");
    }
    return buf;
}

char *net_addr_str(const struct sockaddr *sa, char *buf, size_t buflen)
{
    char ip[INET6_ADDRSTRLEN];

    net_ip_str(sa, ip, sizeof(ip));
    if (sa->sa_family == AF_INET) {
        snprintf(buf, buflen, "%s:%u", ip, ntohs(((const struct sockaddr_in *)sa)->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        snprintf(buf, buflen, "[%s]:%u", ip, ntohs(((const struct sockaddr_in6 *)sa)->sin6_port));
    } else {
        snprintf(buf, buflen, "unknown");
    }
    return buf;
}

int net_cidr_parse(const char *s, struct net_cidr *out, char *err, size_t errlen)
{
    char ip[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    int maxbits;
    long bits;

    memset(out, 0, sizeof(*out));
    if (n == 0 || n >= sizeof(ip)) {
        snprintf(err, errlen, "bad CIDR \"%s\"", s);
        return -1;
    }
    memcpy(ip, s, n);
    ip[n] = '\0';
    if (inet_pton(AF_INET, ip, out->addr) == 1) {
        out->family = AF_INET;
        maxbits = 32;
    } else if (inet_pton(AF_INET6, ip, out->addr) == 1) {
        out->family = AF_INET6;
        maxbits = 128;
    } else {
        snprintf(err, errlen, "bad CIDR \"%s\": not an IP address", s);
        return -1;
    }
    bits = maxbits;
    if (slash != NULL) {
        char *end;
        errno = 0;
        bits = strtol(slash + 1, &end, 10);
        if (errno != 0 || *end != '\0' || end == slash + 1 || bits < 0 || bits > maxbits) {
            snprintf(err, errlen, "bad CIDR \"%s\": prefix must be 0..%d", s, maxbits);
            return -1;
        }
    }
    if (out->family == AF_INET6 && memcmp(out->addr, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
        /* ::ffff:a.b.c.d/N: clients come as a.b.c.d (mapped ones too), so the block is the IPv4
         * one, or it would never match anything. */
        if (bits < 96) {
            snprintf(err, errlen,
                     "bad CIDR \"%s\": an IPv4-mapped block needs a prefix of 96 or more "
                     "(or write it in IPv4)",
                     s);
            return -1;
        }
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
        out->family = AF_INET;
        bits -= 96;
    }
    out->prefix = (uint8_t)bits;
    return 0;
}

static int prefix_eq(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned bytes = bits / 8, rem = bits % 8;

    if (memcmp(a, b, bytes) != 0) {
        return 0;
    }
    if (rem != 0) {
        uint8_t mask = (uint8_t)(0xff << (8 - rem));
        return (a[bytes] & mask) == (b[bytes] & mask);
    }
    return 1;
}

int net_cidr_match(const struct net_cidr *c, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
        return c->family == AF_INET && prefix_eq(a, c->addr, c->prefix);
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6)) {
            return c->family == AF_INET && prefix_eq(&a6->s6_addr[12], c->addr, c->prefix);
        }
        return c->family == AF_INET6 && prefix_eq(a6->s6_addr, c->addr, c->prefix);
    }
    return 0;
}

int net_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1) {
        return -1;
    }
    return 0;
}

int net_unix_addr(const char *path, size_t len, struct sockaddr_un *sun, socklen_t *sl)
{
    if (len == 0 || path[0] != '/' || len >= sizeof(sun->sun_path) || memchr(path, '\0', len)) {
        return -1;
    }
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    memcpy(sun->sun_path, path, len);
    *sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    return 0;
}
