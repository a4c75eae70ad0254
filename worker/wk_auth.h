/* dispatcher: basic_auth's password checks in the worker, off the event loop.
 *
 * A check first looks in the worker's cache of verified credentials: a set-associative table of
 * SipHash-128 tags (keyed with a per-worker random key) of user, password and the stored hash,
 * so a password is never kept, a changed users file (another hash) never matches an old entry,
 * and a hit costs one short hash and a few compares. A miss queues the check for the worker's
 * hashing thread (crypt_r, niced, started on first use); the thread posts the result on an
 * eventfd in the worker's epoll and the waiting requests resume on the event loop. Checks of the
 * same credentials in flight share one hash. The queue is bounded (WK_AUTH_MAX_JOBS): beyond it
 * a check answers WK_AUTH_BUSY at once. */
#ifndef DSP_WK_AUTH_H
#define DSP_WK_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define WK_AUTH_MAX_JOBS   64  /* hashes queued or running per worker */
#define WK_AUTH_CACHE_SETS 512 /* cache: sets of WK_AUTH_CACHE_WAYS entries */
#define WK_AUTH_CACHE_WAYS 4

/* Results of wk_auth_check(). */
#define WK_AUTH_FAIL 0 /* wrong password (never returned at once: failures are hashed) */
#define WK_AUTH_OK   1 /* verified (cached) */
#define WK_AUTH_WAIT 2 /* queued: w->done runs later on the event loop */
#define WK_AUTH_BUSY 3 /* too many checks in progress (or out of memory): answer 503 */

struct wk_auth_job;
struct wk_mw_hooks;

/* A request waiting for a check; owned by the caller, who must call wk_auth_cancel() if it goes
 * away before done() runs. */
struct wk_auth_wait {
    struct wk_auth_wait *next;
    struct wk_auth_job *job; /* the job waited on (NULL: not waiting) */
    void (*done)(struct wk_auth_wait *w, int ok);
};

/* Check <pass> of <user> against the stored crypt <hash> (all non-NUL-terminated). <hash> NULL:
 * the user is unknown; <dummy> (another user's hash of the file) is hashed then so that the
 * answer takes as long as for a known user, and the result is a failure. */
int wk_auth_check(const char *user, size_t ulen, const char *pass, size_t plen, const char *hash,
                  size_t hlen, const char *dummy, size_t dlen, struct wk_auth_wait *w);
/* The two halves of wk_auth_check(), for a caller that allocates its waiter only on a miss:
 * 1 when (user, password, hash) is cached as verified; else 0 with its tag in <tag>. */
int wk_auth_cached(const char *user, size_t ulen, const char *pass, size_t plen, const char *hash,
                   size_t hlen, uint8_t tag[16]);
/* Queue the hash of <pass> against <hash> (<unknown>: a stand-in for an unknown user, always a
 * failure): WK_AUTH_WAIT, WK_AUTH_BUSY or WK_AUTH_FAIL. */
int wk_auth_queue(const uint8_t tag[16], const char *pass, size_t plen, const char *hash,
                  size_t hlen, int unknown, struct wk_auth_wait *w);
/* Stop waiting (the request went away). */
void wk_auth_cancel(struct wk_auth_wait *w);
/* The eventfd's event: run the callbacks of finished checks. */
void wk_auth_event(void);

/* The basic_auth middleware's hooks (worker/wk_mw.c's table). */
extern const struct wk_mw_hooks wk_mw_basic_auth_hooks;

/* Counters, for tests and statistics. */
struct wk_auth_stats {
    uint64_t hits, misses, hashes, busy, shared;
};
const struct wk_auth_stats *wk_auth_stats(void);

/* The cache alone (unit tests): does it hold <tag>; put <tag> in. */
int wk_auth_cache_has(const uint8_t tag[16]);
void wk_auth_cache_put(const uint8_t tag[16]);

#endif
