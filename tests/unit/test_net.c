/* Unit tests for common/net: address parsing and formatting, CIDR matching. */
#include "tests/unit/unit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "common/net.h"

static const char *fmt4(const char *ip)
{
    static char out[64];
    struct sockaddr_in s4;

    memset(&s4, 0, sizeof(s4));
    s4.sin_family = AF_INET;
    inet_pton(AF_INET, ip, &s4.sin_addr);
    return net_ip_str((struct sockaddr *)&s4, out, sizeof(out));
}

static void test_ip_str(void)
{
    static const char *ips[] = {"0.0.0.0",    "255.255.255.255", "10.0.0.1",
                                "100.20.3.4", "1.10.100.199",    "127.0.0.1"};
    struct sockaddr_in6 s6;
    char out[64], small[4];

    for (size_t i = 0; i < sizeof(ips) / sizeof(ips[0]); i++) {
        CU_ASSERT_STRING_EQUAL(fmt4(ips[i]), ips[i]);
    }
    memset(&s6, 0, sizeof(s6));
    s6.sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:192.0.2.33", &s6.sin6_addr);
    CU_ASSERT_STRING_EQUAL(net_ip_str((struct sockaddr *)&s6, out, sizeof(out)), "192.0.2.33");
    inet_pton(AF_INET6, "2001:db8::1", &s6.sin6_addr);
    CU_ASSERT_STRING_EQUAL(net_ip_str((struct sockaddr *)&s6, out, sizeof(out)), "2001:db8::1");
    /* Too small a buffer gives an empty string, never an overflow. */
    {
        struct sockaddr_in s4;
        memset(&s4, 0, sizeof(s4));
        s4.sin_family = AF_INET;
        inet_pton(AF_INET, "10.0.0.1", &s4.sin_addr);
        CU_ASSERT_STRING_EQUAL(net_ip_str((struct sockaddr *)&s4, small, sizeof(small)), "");
    }
}

static void test_parse_addr(void)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char err[128], out[64];

    CU_ASSERT_EQUAL(net_parse_addr("127.0.0.1:8080", 0, &ss, &len, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(net_addr_str((struct sockaddr *)&ss, out, sizeof(out)),
                           "127.0.0.1:8080");
    CU_ASSERT_EQUAL(net_parse_addr("[::1]:443", 0, &ss, &len, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(net_addr_str((struct sockaddr *)&ss, out, sizeof(out)), "[::1]:443");
    CU_ASSERT_EQUAL(net_parse_addr("1.2.3.4:0", 0, &ss, &len, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(net_parse_addr("1.2.3.4:65536", 0, &ss, &len, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(net_parse_addr("example.com:80", 0, &ss, &len, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(net_parse_addr("[::1]80", 0, &ss, &len, err, sizeof(err)), -1);
}

static void test_cidr(void)
{
    struct net_cidr c;
    struct sockaddr_in s4;
    char err[128];

    memset(&s4, 0, sizeof(s4));
    s4.sin_family = AF_INET;
    CU_ASSERT_EQUAL(net_cidr_parse("10.0.0.0/8", &c, err, sizeof(err)), 0);
    inet_pton(AF_INET, "10.200.1.1", &s4.sin_addr);
    CU_ASSERT(net_cidr_match(&c, (struct sockaddr *)&s4));
    inet_pton(AF_INET, "11.0.0.1", &s4.sin_addr);
    CU_ASSERT(!net_cidr_match(&c, (struct sockaddr *)&s4));
    CU_ASSERT_EQUAL(net_cidr_parse("10.0.0.0/33", &c, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(net_cidr_parse("nope/8", &c, err, sizeof(err)), -1);
    /* An IPv4-mapped block is the IPv4 one (clients, mapped or not, are compared as IPv4): it
     * used to be kept as IPv6 and never match. */
    CU_ASSERT_EQUAL(net_cidr_parse("::ffff:10.0.0.0/104", &c, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(c.family, AF_INET);
    CU_ASSERT_EQUAL(c.prefix, 8);
    inet_pton(AF_INET, "10.200.1.1", &s4.sin_addr);
    CU_ASSERT(net_cidr_match(&c, (struct sockaddr *)&s4));
    {
        struct sockaddr_in6 s6;
        memset(&s6, 0, sizeof(s6));
        s6.sin6_family = AF_INET6;
        inet_pton(AF_INET6, "::ffff:10.1.2.3", &s6.sin6_addr);
        CU_ASSERT(net_cidr_match(&c, (struct sockaddr *)&s6));
    }
    CU_ASSERT_EQUAL(net_cidr_parse("::ffff:1.2.3.4", &c, err, sizeof(err)), 0);
    CU_ASSERT(c.family == AF_INET && c.prefix == 32 && c.addr[0] == 1 && c.addr[3] == 4);
    CU_ASSERT_EQUAL(net_cidr_parse("::ffff:1.2.3.4/95", &c, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "IPv4-mapped"));
    CU_ASSERT_EQUAL(net_cidr_parse("fd00::/8", &c, err, sizeof(err)), 0);
    CU_ASSERT(c.family == AF_INET6 && c.prefix == 8);
}

UNIT_SUITE(net, {"ip_str", test_ip_str}, {"parse_addr", test_parse_addr}, {"cidr", test_cidr})
