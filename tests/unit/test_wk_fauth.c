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

/* Feed <p> in reads of <piece> bytes, then the end of the stream when <eof>: the outcome. */
static int feed(const char *p, size_t piece, int eof, struct wk_fauth_conn *c,
                struct wk_fauth_res *r)
{
    size_t n = strlen(p), off = 0;
    int rc = 0;

    while (rc == 0 && off < n) {
        size_t k = n - off < piece ? n - off : piece;
        rc = wk_fauth_parser_feed(c, p + off, k, r);
        off += k;
    }
    if (rc == 0 && eof) {
        rc = wk_fauth_parser_feed(c, NULL, 0, r);
    }
    return rc;
}

static void test_answer(void)
{
    static const struct {
        const char *in;
        int eof, rc;
        unsigned status;
        const char *body;
    } cases[] = {
        {"HTTP/1.1 200 OK\r\nX-User: a\r\nContent-Length: 2\r\n\r\nok", 0, 1, 200, "ok"},
        {"HTTP/1.1 401 No\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n", 0,
         1, 401, "abcd"},
        {"HTTP/1.0 302 Found\r\nLocation: /login\r\n\r\nby close", 1, 1, 302, "by close"},
        {"HTTP/1.1 403 No\r\nContent-Length: 9\r\n\r\ncut", 1, -1, 0, NULL},
        {"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ncut", 0, 0, 0, NULL},
        {"HTTP/1.1 200 OK\r\nX-Us", 0, 0, 0, NULL},
        /* An auth service that closes in the middle of its head: a failure, not a wait for
         * more that never comes (the worker read the closed socket again and again). */
        {"HTTP/1.1 200 OK\r\nX-Us", 1, -1, 0, NULL},
        {"SSH-2.0-OpenSSH_9.0\r\n", 1, -1, 0, NULL},
        {"HTTP/1.1 100 Continue\r\n\r\n", 0, -1, 0, NULL},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (size_t piece = 1; piece <= 64; piece += 63) {
            struct wk_fauth_conn *c = wk_fauth_parser_new();
            struct wk_fauth_res r;
            int rc;
            CU_ASSERT_PTR_NOT_NULL_FATAL(c);
            rc = feed(cases[i].in, piece, cases[i].eof, c, &r);
            CU_ASSERT_EQUAL(rc, cases[i].rc);
            if (rc == 1) {
                CU_ASSERT_EQUAL(r.status, cases[i].status);
                CU_ASSERT_EQUAL(r.blen, strlen(cases[i].body));
                CU_ASSERT(r.blen == strlen(cases[i].body) &&
                          memcmp(r.body, cases[i].body, r.blen) == 0);
            } else if (rc < 0) {
                CU_ASSERT(r.fail && r.why != NULL);
            }
            wk_fauth_parser_free(c);
        }
    }
}

UNIT_SUITE(wk_fauth, {"head", test_head}, {"answer", test_answer})
