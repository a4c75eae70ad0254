/* Unit and fuzz-style tests of the PROXY protocol parser: valid v1/v2 headers, every truncation
 * (must ask for more or refuse, never misparse), oversized, wrong signatures and random bytes. */
#include "tests/unit/unit.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "worker/wk_pp.h"

static void test_v1_valid(void)
{
    const char *h = "PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\nGET / HTTP/1.1\r\n";
    struct wk_pp_addr a;
    uint8_t ip[4];
    int n = wk_pp_parse((const uint8_t *)h, strlen(h), &a);

    CU_ASSERT_EQUAL(n, (int)strlen("PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\n"));
    CU_ASSERT_EQUAL(a.family, AF_INET);
    inet_pton(AF_INET, "192.168.0.1", ip);
    CU_ASSERT(memcmp(a.src, ip, 4) == 0);
    CU_ASSERT_EQUAL(a.src_port, 56324);
    CU_ASSERT_EQUAL(a.dst_port, 443);

    h = "PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
    CU_ASSERT_EQUAL(wk_pp_parse((const uint8_t *)h, strlen(h), &a), (int)strlen(h));
    CU_ASSERT_EQUAL(a.family, AF_INET6);
    CU_ASSERT_EQUAL(a.dst_port, 65535);

    h = "PROXY UNKNOWN\r\n";
    CU_ASSERT_EQUAL(wk_pp_parse((const uint8_t *)h, strlen(h), &a), (int)strlen(h));
    CU_ASSERT_EQUAL(a.family, 0);
    h = "PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
    CU_ASSERT_EQUAL(wk_pp_parse((const uint8_t *)h, strlen(h), &a), (int)strlen(h));
    CU_ASSERT_EQUAL(a.family, 0);
}

static void test_v1_invalid(void)
{
    static const char *bad[] = {
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        "PROXY TCP4 ::1 ::1 1 2\r\n",
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "PROXY \r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    };
    struct wk_pp_addr a;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(wk_pp_parse((const uint8_t *)bad[i], strlen(bad[i]), &a), -1);
    }
    {
        /* No CRLF within the 107-byte limit. */
        char longl[200];
        memset(longl, 'A', sizeof(longl));
        memcpy(longl, "PROXY TCP4 ", 11);
        CU_ASSERT_EQUAL(wk_pp_parse((const uint8_t *)longl, sizeof(longl), &a), -1);
        CU_ASSERT_EQUAL(wk_pp_parse((const uint8_t *)longl, 50, &a), 0);
    }
}

static size_t make_v2(uint8_t *b, uint8_t cmd, uint8_t fam, size_t alen)
{
    static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
    memcpy(b, sig, 12);
    b[12] = (uint8_t)(0x20 | cmd);
    b[13] = fam;
    b[14] = (uint8_t)(alen >> 8);
    b[15] = (uint8_t)alen;
    for (size_t i = 0; i < alen; i++) {
        b[16 + i] = (uint8_t)(i + 1);
    }
    return 16 + alen;
}

static void test_v2(void)
{
    uint8_t b[8192];
    struct wk_pp_addr a;
    size_t n;

    n = make_v2(b, 1, 0x11, 12 + 20); /* with 20 bytes of TLVs */
    CU_ASSERT_EQUAL(wk_pp_parse(b, n + 5, &a), (int)n);
    CU_ASSERT_EQUAL(a.family, AF_INET);
    CU_ASSERT_EQUAL(a.src[0], 1);
    CU_ASSERT_EQUAL(a.src_port, (9 << 8) | 10);
    n = make_v2(b, 1, 0x21, 36);
    CU_ASSERT_EQUAL(wk_pp_parse(b, n, &a), (int)n);
    CU_ASSERT_EQUAL(a.family, AF_INET6);
    n = make_v2(b, 0, 0x00, 0); /* LOCAL */
    CU_ASSERT_EQUAL(wk_pp_parse(b, n, &a), (int)n);
    CU_ASSERT_EQUAL(a.family, 0);
    n = make_v2(b, 1, 0x11, 8); /* too short for TCP4 */
    CU_ASSERT_EQUAL(wk_pp_parse(b, n, &a), -1);
    n = make_v2(b, 2, 0x11, 12); /* bad command */
    CU_ASSERT_EQUAL(wk_pp_parse(b, n, &a), -1);
    n = make_v2(b, 1, 0x41, 12); /* bad family */
    CU_ASSERT_EQUAL(wk_pp_parse(b, n, &a), -1);
    n = make_v2(b, 1, 0x11, 5000); /* oversized */
    CU_ASSERT_EQUAL(wk_pp_parse(b, 16, &a), -1);
    b[12] = 0x11; /* version 1 in a v2 header */
    CU_ASSERT_EQUAL(wk_pp_parse(b, n, &a), -1);
}

/* Every prefix of a valid header asks for more; never a positive answer early. */
static void test_truncations(void)
{
    uint8_t b[256];
    const char *v1 = "PROXY TCP6 2001:db8::1 2001:db8::2 1234 80\r\n";
    struct wk_pp_addr a;
    size_t n = make_v2(b, 1, 0x21, 36 + 7);

    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_EQUAL(wk_pp_parse(b, i, &a), 0);
    }
    for (size_t i = 0; i < strlen(v1); i++) {
        CU_ASSERT_EQUAL(wk_pp_parse((const uint8_t *)v1, i, &a), 0);
    }
}

static void test_random(void)
{
    uint8_t b[512];
    struct wk_pp_addr a;
    unsigned seed = 12345;

    for (int iter = 0; iter < 200000; iter++) {
        size_t len = (size_t)(rand_r(&seed) % sizeof(b));
        int r;
        for (size_t i = 0; i < len; i++) {
            b[i] = (uint8_t)rand_r(&seed);
        }
        /* Half the cases start with a valid signature so the deeper code is reached. */
        if (iter % 4 == 1 && len >= 16) {
            make_v2(b, (uint8_t)(rand_r(&seed) % 3), (uint8_t)rand_r(&seed), len - 16);
        } else if (iter % 4 == 2 && len >= 6) {
            memcpy(b, "PROXY ", 6);
        }
        r = wk_pp_parse(b, len, &a);
        CU_ASSERT(r >= -1 && r <= (int)len);
    }
}

UNIT_SUITE(wk_pp, {"v1_valid", test_v1_valid}, {"v1_invalid", test_v1_invalid}, {"v2", test_v2},
           {"truncations", test_truncations}, {"random", test_random})
