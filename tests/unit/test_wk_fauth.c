/* Unit tests: forward_auth's sub-request head (worker/wk_fauth.c). */
#include "tests/unit/unit.h"

#include <string.h>
#include <sys/socket.h>

#include "worker/wk_fauth.h"

static void test_head(void)
{
    static const char up[] = "POST /app/x?y=1 HTTP/1.1\r\n"
                             "Host: shop.example\r\n"
                             "Authorization: Bearer abc\r\n"
                             "Cookie: s=1\r\n"
                             "X-Forwarded-Uri: /spoofed\r\n"
                             "X-Forwarded-Method: PUT\r\n"
                             "Content-Length: 5\r\n"
                             "Transfer-Encoding: chunked\r\n"
                             "Connection: upgrade\r\n"
                             "Upgrade: websocket\r\n"
                             "Expect: 100-continue\r\n"
                             "X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n"
                             "X-Forwarded-Proto: https\r\n"
                             "X-Forwarded-Host: shop.example\r\n"
                             "X-Real-IP: 127.0.0.1\r\n"
                             "X-Request-ID: r1\r\n"
                             "\r\n";
    static const char want[] = "GET /verify HTTP/1.1\r\n"
                               "Host: 127.0.0.1:9200\r\n"
                               "X-Forwarded-Method: POST\r\n"
                               "X-Forwarded-Uri: /app/x?y=1\r\n"
                               "Authorization: Bearer abc\r\n"
                               "Cookie: s=1\r\n"
                               "X-Forwarded-For: 10.0.0.1, 127.0.0.1\r\n"
                               "X-Forwarded-Proto: https\r\n"
                               "X-Forwarded-Host: shop.example\r\n"
                               "X-Request-ID: r1\r\n"
                               "\r\n";
    struct wk_fauth_target t = {.addr = "127.0.0.1:9200", .alen = 14, .family = AF_INET};
    char out[1024];
    size_t n = wk_fauth_head(out, sizeof(out), &t, "/verify", 7, up, sizeof(up) - 1);

    CU_ASSERT_EQUAL(n, sizeof(want) - 1);
    CU_ASSERT(n == sizeof(want) - 1 && memcmp(out, want, n) == 0);
    /* too small a buffer, a broken head */
    CU_ASSERT_EQUAL(wk_fauth_head(out, 40, &t, "/verify", 7, up, sizeof(up) - 1), 0);
    CU_ASSERT_EQUAL(wk_fauth_head(out, sizeof(out), &t, "/verify", 7, "GET /\r\n\r\n", 9), 0);
    CU_ASSERT_EQUAL(wk_fauth_head(out, sizeof(out), &t, "/verify", 7, "GET / HTTP/1.1\r\nA\r\n",
                                  19),
                    0);
    /* a unix socket: Host localhost */
    t.addr = "unix:/run/a.sock";
    t.alen = strlen(t.addr);
    t.family = AF_UNIX;
    n = wk_fauth_head(out, sizeof(out), &t, "/", 1, "GET / HTTP/1.1\r\n\r\n", 18);
    CU_ASSERT(n > 0 && memmem(out, n, "\r\nHost: localhost\r\n", 19) != NULL);
}

UNIT_SUITE(wk_fauth, {"head", test_head})
