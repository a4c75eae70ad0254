/* Unit tests: a connection's state and flags as text (worker/wk_debug.c). */
#include "tests/unit/unit.h"

#include <arpa/inet.h>
#include <string.h>

#include "worker/wk_internal.h"

static void test_idle(void)
{
    struct wk_client c;
    char buf[512];
    size_t n;

    memset(&c, 0, sizeof(c));
    xp_init(&c.xp, 7);
    c.state = WK_CS_IDLE;
    c.flags = WK_C_F_WRITABLE | WK_C_F_STARTED;
    c.peer.family = AF_INET;
    inet_pton(AF_INET, "127.0.0.9", c.peer.ip);
    c.peer.port = 4242;
    n = wk_client_describe(&c, buf, sizeof(buf));
    CU_ASSERT_EQUAL(n, strlen(buf));
    CU_ASSERT_STRING_EQUAL(buf,
                           "client 127.0.0.9:4242 fd=7 plain state=IDLE flags=WRITABLE|STARTED "
                           "in=0/0 out=0/0");
}

static void test_proxy(void)
{
    struct wk_client c;
    struct wk_upstream u;
    struct wk_gen g;
    char buf[512];

    memset(&c, 0, sizeof(c));
    memset(&u, 0, sizeof(u));
    memset(&g, 0, sizeof(g));
    xp_init(&c.xp, 9);
    xp_init(&u.xp, 11);
    c.state = WK_CS_PROXY;
    c.flags = 0;
    c.peer.family = AF_INET6;
    inet_pton(AF_INET6, "::1", c.peer.ip);
    c.peer.port = 1;
    c.x.at.gen = &g;
    c.x.at.service = 2;
    c.x.at.backend = 1;
    c.x.at.tries = 1;
    c.x.tflags = WK_T_REQ_DONE | WK_T_UP_WRITTEN | 0x08000000u;
    c.x.status = 0;
    c.x.send_off = 10;
    c.x.parsed_off = 20;
    c.x.up = &u;
    u.flags = WK_UP_F_REUSED | WK_UP_F_READABLE;
    wk_client_describe(&c, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "client ::1:1 fd=9 plain state=PROXY flags=- in=0/0 out=0/0 "
                                "tflags=REQ_DONE|UP_WRITTEN|0x8000000 status=0 service=2 "
                                "backend=1 tries=1 sent=10/20 up=[fd=11 plain "
                                "flags=READABLE|REUSED]");
}

static void test_cut(void)
{
    struct wk_client c;
    char buf[40];
    size_t n;

    memset(&c, 0, sizeof(c));
    xp_init(&c.xp, 3);
    c.state = 200; /* not a state: shown as such, never read out of bounds */
    c.peer.family = AF_INET;
    n = wk_client_describe(&c, buf, sizeof(buf));
    CU_ASSERT_EQUAL(n, sizeof(buf) - 1);
    CU_ASSERT_EQUAL(strlen(buf), sizeof(buf) - 1);
    CU_ASSERT(strcmp(buf + n - 3, "...") == 0);
    CU_ASSERT_STRING_EQUAL(wk_client_state_name(200), "?");
    CU_ASSERT_STRING_EQUAL(wk_client_state_name(WK_CS_LINGER), "LINGER");
}

UNIT_SUITE(wk_debug, {"idle", test_idle}, {"proxy", test_proxy}, {"cut", test_cut})
