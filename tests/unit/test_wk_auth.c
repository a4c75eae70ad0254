/* Unit tests: basic_auth's credential cache and the hashing thread (worker/wk_auth.c). */
#include "tests/unit/unit.h"

#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "worker/wk_auth.h"
#include "worker/wk_internal.h"

#define BCRYPT "$2y$04$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha."    /* "secret" */
#define SHA256 "$5$KYFQ4Pyh8Oz0Sv7k$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX." /* "pw" */

static void test_cache(void)
{
    uint8_t t[8][16];

    memset(t, 0, sizeof(t));
    for (int i = 0; i < 8; i++) {
        /* the same set (the first two bytes choose it), different tags */
        t[i][0] = 7;
        t[i][15] = (uint8_t)(i + 1);
    }
    CU_ASSERT(!wk_auth_cache_has(t[0]));
    wk_auth_cache_put(t[0]);
    CU_ASSERT(wk_auth_cache_has(t[0]));
    CU_ASSERT(!wk_auth_cache_has(t[1]));
    for (int i = 1; i < WK_AUTH_CACHE_WAYS; i++) {
        wk_auth_cache_put(t[i]);
    }
    /* t[0] is used again: t[1] is now the least recently used and goes first */
    CU_ASSERT(wk_auth_cache_has(t[0]));
    wk_auth_cache_put(t[WK_AUTH_CACHE_WAYS]);
    CU_ASSERT(!wk_auth_cache_has(t[1]));
    CU_ASSERT(wk_auth_cache_has(t[0]));
    CU_ASSERT(wk_auth_cache_has(t[WK_AUTH_CACHE_WAYS]));
    /* a flood of distinct tags never grows it past its size, and the set stays WAYS deep */
    for (int i = 0; i < 8; i++) {
        wk_auth_cache_put(t[i]);
    }
    {
        int n = 0;
        for (int i = 0; i < 8; i++) {
            n += wk_auth_cache_has(t[i]);
        }
        CU_ASSERT_EQUAL(n, WK_AUTH_CACHE_WAYS);
    }
}

struct waiter {
    struct wk_auth_wait w;
    int called, ok;
};

static void on_done(struct wk_auth_wait *w, int ok)
{
    struct waiter *x = (struct waiter *)(void *)w;

    x->called++;
    x->ok = ok;
}

/* Run the event loop's side until <n> waiters were called (bounded: 10 s). */
static void pump(struct waiter *ws, int nw, int want)
{
    for (int round = 0; round < 1000; round++) {
        struct epoll_event ev;
        int called = 0;
        for (int i = 0; i < nw; i++) {
            called += ws[i].called;
        }
        if (called >= want) {
            return;
        }
        if (epoll_wait(wk.epfd, &ev, 1, 10) == 1) {
            wk_auth_event();
        }
    }
}

static int check(const char *user, const char *pass, const char *hash, struct waiter *w)
{
    memset(w, 0, sizeof(*w));
    w->w.done = on_done;
    return wk_auth_check(user, strlen(user), pass, strlen(pass), hash, hash ? strlen(hash) : 0,
                         BCRYPT, strlen(BCRYPT), &w->w);
}

static void test_check(void)
{
    struct waiter w[WK_AUTH_MAX_JOBS + 8];
    uint64_t hashes;
    int busy = 0;

    if (wk.epfd <= 0) {
        wk.epfd = epoll_create1(EPOLL_CLOEXEC);
    }
    CU_ASSERT_FATAL(wk.epfd > 0);
    /* a miss is queued; the same credentials in flight share the hash */
    hashes = wk_auth_stats()->hashes;
    CU_ASSERT_EQUAL(check("alice", "secret", BCRYPT, &w[0]), WK_AUTH_WAIT);
    CU_ASSERT_EQUAL(check("alice", "secret", BCRYPT, &w[1]), WK_AUTH_WAIT);
    CU_ASSERT_EQUAL(check("alice", "wrong", BCRYPT, &w[2]), WK_AUTH_WAIT);
    CU_ASSERT_EQUAL(check("nobody", "secret", NULL, &w[3]), WK_AUTH_WAIT); /* unknown user */
    CU_ASSERT_EQUAL(check("bob", "pw", SHA256, &w[4]), WK_AUTH_WAIT);
    CU_ASSERT_EQUAL(check("bob", "pw", SHA256, &w[5]), WK_AUTH_WAIT);
    wk_auth_cancel(&w[5].w); /* the request went away */
    CU_ASSERT_EQUAL(wk_auth_stats()->hashes - hashes, 4);
    pump(w, 6, 5);
    CU_ASSERT(w[0].called == 1 && w[0].ok == 1);
    CU_ASSERT(w[1].called == 1 && w[1].ok == 1);
    CU_ASSERT(w[2].called == 1 && w[2].ok == 0);
    CU_ASSERT(w[3].called == 1 && w[3].ok == 0);
    CU_ASSERT(w[4].called == 1 && w[4].ok == 1);
    CU_ASSERT(w[5].called == 0);
    /* verified credentials are cached; failures are not */
    CU_ASSERT_EQUAL(check("alice", "secret", BCRYPT, &w[0]), WK_AUTH_OK);
    CU_ASSERT_EQUAL(check("bob", "pw", SHA256, &w[0]), WK_AUTH_OK);
    CU_ASSERT_EQUAL(check("alice", "secret", SHA256, &w[0]), WK_AUTH_WAIT); /* another hash */
    pump(w, 1, 1);
    CU_ASSERT(w[0].called == 1 && w[0].ok == 0);
    CU_ASSERT_EQUAL(check("alice", "wrong", BCRYPT, &w[0]), WK_AUTH_WAIT);
    pump(w, 1, 1);
    /* the queue is bounded */
    for (int i = 0; i < WK_AUTH_MAX_JOBS + 8; i++) {
        char pw[16];
        snprintf(pw, sizeof(pw), "guess%d", i);
        if (check("alice", pw, BCRYPT, &w[i]) == WK_AUTH_BUSY) {
            busy++;
        }
    }
    CU_ASSERT(busy >= 8);
    pump(w, WK_AUTH_MAX_JOBS + 8, WK_AUTH_MAX_JOBS + 8 - busy);
    for (int i = 0; i < WK_AUTH_MAX_JOBS + 8; i++) {
        CU_ASSERT(w[i].ok == 0);
    }
    CU_ASSERT_EQUAL(check("alice", "guess", BCRYPT, &w[0]), WK_AUTH_WAIT); /* room again */
    pump(w, 1, 1);
}

UNIT_SUITE(wk_auth, {"cache", test_cache}, {"check", test_check})
