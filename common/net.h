/* dispatcher: socket-address helpers shared by the config parser, the master and the workers.
 * Leaf module: callers own every buffer. */
#ifndef DSP_NET_H
#define DSP_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Parse "IPv4:port", "[IPv6]:port", "*:port" or "localhost:port" into <ss>/<len>.
 * Port must be 1..65535 (0 allowed when <allow_port0>). Returns 0, or -1 with a reason in <err>. */
int net_parse_addr(const char *s, int allow_port0, struct sockaddr_storage *ss, socklen_t *len,
                   char *err, size_t errlen);

/* Format <sa> as "1.2.3.4:80" or "[::1]:80" into <buf>. Returns <buf>. */
char *net_addr_str(const struct sockaddr *sa, char *buf, size_t buflen);
/* Format only the IP of <sa> ("1.2.3.4", "::1"; v4-mapped v6 shown as v4). Returns <buf>. */
char *net_ip_str(const struct sockaddr *sa, char *buf, size_t buflen);

/* A CIDR block; all-zero is "0.0.0.0/0 of family 0", which matches nothing. */
struct net_cidr {
    uint8_t family; /* AF_INET or AF_INET6 */
    uint8_t prefix; /* bits */
    uint8_t addr[16];
};

/* Parse "10.0.0.0/8", "::1/128" or a bare address (full-length prefix). Returns 0 or -1. */
int net_cidr_parse(const char *s, struct net_cidr *out, char *err, size_t errlen);
/* Does <sa> fall in <c>? v4-mapped IPv6 addresses match IPv4 blocks. */
int net_cidr_match(const struct net_cidr *c, const struct sockaddr *sa);

int net_set_nonblock(int fd);

/* Unix-socket backends are written "unix:/abs/path" (NET_UNIX_PREFIX, then the path). */
#define NET_UNIX_PREFIX     "unix:"
#define NET_UNIX_PREFIX_LEN 5
/* The socket address of absolute path <path> (<len> bytes, no NUL inside) into <sun>/<sl>.
 * Returns 0, or -1 when it is not absolute or does not fit sun_path. */
int net_unix_addr(const char *path, size_t len, struct sockaddr_un *sun, socklen_t *sl);

#endif
