/* dispatcher: basic_auth's password checks off the event loop (see wk_auth.h). */
#include "worker/wk_auth.h"

#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/htpasswd.h"
#include "common/dsp.h"
#include "common/log.h"
#include "shm/shm_mw_auth.h"
#include "worker/wk_internal.h"
#include "worker/wk_mw.h"

/* One hash to compute. The hashing thread reads pass and setting and writes ok; the event loop
 * alone touches the rest. */
struct wk_auth_job {
    struct wk_auth_job *next;          /* the thread's todo and done lists (under mu) */
    struct wk_auth_job *inext, *iprev; /* the event loop's list of jobs in flight */
    struct wk_auth_wait *waiters;
    uint8_t tag[16];
    uint8_t dummy; /* an unknown user's stand-in hash: the answer is a failure */
    uint8_t ok;
    char pass[HTP_PASS_MAX + 1];
    char setting[HTP_HASH_MAX + 1];
};

struct wk_auth_entry {
    uint8_t tag[16];
    uint64_t used; /* last hit (a tick): the least recently used way is replaced; 0 = empty */
};

/* The worker's state (wk.auth), made on first use. */
struct wk_authw {
    struct wk_ev ev; /* the eventfd's epoll owner */
    int efd;
    uint8_t key[16];
    uint64_t tick;
    struct wk_auth_entry cache[WK_AUTH_CACHE_SETS][WK_AUTH_CACHE_WAYS];
    struct wk_auth_job *inflight; /* queued or running (event loop's list) */
    unsigned njobs;
    struct wk_auth_stats st;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct wk_auth_job *todo, **todo_tail; /* under mu */
    struct wk_auth_job *done;              /* under mu */
    int thread_started;
};

static struct wk_authw *state(void)
{
    struct wk_authw *a = wk.auth;

    if (a != NULL) {
        return a;
    }
    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        return NULL;
    }
    if (getrandom(a->key, sizeof(a->key), 0) != (ssize_t)sizeof(a->key)) {
        free(a);
        return NULL;
    }
    a->ev.kind = WK_EV_AUTH;
    a->efd = -1;
    a->todo_tail = &a->todo;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    wk.auth = a;
    return a;
}

/* ---- the cache --------------------------------------------------------------------------------
 */
static int tag_eq(const uint8_t *a, const uint8_t *b)
{
    uint64_t a0, a1, b0, b1;

    memcpy(&a0, a, 8);
    memcpy(&a1, a + 8, 8);
    memcpy(&b0, b, 8);
    memcpy(&b1, b + 8, 8);
    return ((a0 ^ b0) | (a1 ^ b1)) == 0;
}

static struct wk_auth_entry *cache_set(struct wk_authw *a, const uint8_t tag[16])
{
    return a->cache[(tag[0] | (unsigned)tag[1] << 8) % WK_AUTH_CACHE_SETS];
}

int wk_auth_cache_has(const uint8_t tag[16])
{
    struct wk_authw *a = state();
    struct wk_auth_entry *set;

    if (a == NULL) {
        return 0;
    }
    set = cache_set(a, tag);
    for (int i = 0; i < WK_AUTH_CACHE_WAYS; i++) {
        if (set[i].used != 0 && tag_eq(set[i].tag, tag)) {
            set[i].used = ++a->tick;
            return 1;
        }
    }
    return 0;
}

void wk_auth_cache_put(const uint8_t tag[16])
{
    struct wk_authw *a = state();
    struct wk_auth_entry *set, *victim;

    if (a == NULL) {
        return;
    }
    set = cache_set(a, tag);
    victim = &set[0];
    for (int i = 0; i < WK_AUTH_CACHE_WAYS; i++) {
        if (set[i].used != 0 && tag_eq(set[i].tag, tag)) {
            set[i].used = ++a->tick;
            return;
        }
        if (set[i].used < victim->used) {
            victim = &set[i];
        }
    }
    memcpy(victim->tag, tag, 16);
    victim->used = ++a->tick;
}

/* ---- the hashing thread -----------------------------------------------------------------------
 */
static void *hash_main(void *arg)
{
    struct wk_authw *a = arg;
    struct crypt_data *cd = malloc(sizeof(*cd));

    /* The event loop keeps its priority over the hashing. */
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
    for (;;) {
        struct wk_auth_job *j;
        const char *r = NULL;
        uint64_t one = 1;

        pthread_mutex_lock(&a->mu);
        while (a->todo == NULL) {
            pthread_cond_wait(&a->cv, &a->mu);
        }
        j = a->todo;
        a->todo = j->next;
        if (a->todo == NULL) {
            a->todo_tail = &a->todo;
        }
        pthread_mutex_unlock(&a->mu);

        if (cd != NULL) {
            memset(cd, 0, sizeof(*cd));
            r = crypt_r(j->pass, j->setting, cd);
        }
        j->ok = r != NULL && !j->dummy && strlen(r) == strlen(j->setting) &&
                htp_ct_equal(r, j->setting, strlen(r));
        explicit_bzero(j->pass, sizeof(j->pass));
        if (cd != NULL) {
            explicit_bzero(cd, sizeof(*cd));
        }

        pthread_mutex_lock(&a->mu);
        j->next = a->done;
        a->done = j;
        pthread_mutex_unlock(&a->mu);
        while (write(a->efd, &one, sizeof(one)) == -1 && errno == EINTR) {
        }
    }
    return NULL;
}

static int start_thread(struct wk_authw *a)
{
    struct epoll_event ev = {.events = EPOLLIN};
    sigset_t all, old;
    pthread_attr_t at;
    pthread_t th;
    int r;

    a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->efd == -1) {
        log_errno(LOG_ERROR, errno, "basic_auth: eventfd() failed");
        return -1;
    }
    ev.data.ptr = &a->ev;
    if (epoll_ctl(wk.epfd, EPOLL_CTL_ADD, a->efd, &ev) == -1) {
        log_errno(LOG_ERROR, errno, "basic_auth: epoll_ctl(ADD eventfd) failed");
        close(a->efd);
        a->efd = -1;
        return -1;
    }
    /* Signals stay with the event loop's thread. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    r = pthread_create(&th, &at, hash_main, a);
    pthread_attr_destroy(&at);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        log_errno(LOG_ERROR, r, "basic_auth: cannot start the hashing thread");
        epoll_ctl(wk.epfd, EPOLL_CTL_DEL, a->efd, NULL);
        close(a->efd);
        a->efd = -1;
        return -1;
    }
    a->thread_started = 1;
    return 0;
}

/* ---- checks -----------------------------------------------------------------------------------
 */
/* The cache tag of (user, password, stored hash): NUL-separated (none of them holds a NUL). */
static void make_tag(const struct wk_authw *a, const char *user, size_t ulen, const char *pass,
                     size_t plen, const char *hash, size_t hlen, uint8_t tag[16])
{
    char buf[HTP_USER_MAX + HTP_PASS_MAX + HTP_HASH_MAX + 3];
    size_t n = 0;

    memcpy(buf, user, ulen);
    n += ulen;
    buf[n++] = 0;
    memcpy(buf + n, pass, plen);
    n += plen;
    buf[n++] = 0;
    memcpy(buf + n, hash, hlen);
    n += hlen;
    htp_siphash128(a->key, buf, n, tag);
    explicit_bzero(buf, n);
}

int wk_auth_cached(const char *user, size_t ulen, const char *pass, size_t plen, const char *hash,
                   size_t hlen, uint8_t tag[16])
{
    struct wk_authw *a = state();

    if (a == NULL || ulen > HTP_USER_MAX || plen > HTP_PASS_MAX || hlen > HTP_HASH_MAX) {
        return 0;
    }
    make_tag(a, user, ulen, pass, plen, hash, hlen, tag);
    if (wk_auth_cache_has(tag)) {
        a->st.hits++;
        return 1;
    }
    return 0;
}

int wk_auth_queue(const uint8_t tag[16], const char *pass, size_t plen, const char *hash,
                  size_t hlen, int unknown, struct wk_auth_wait *w)
{
    struct wk_authw *a = state();
    struct wk_auth_job *j;

    w->job = NULL;
    if (a == NULL) {
        return WK_AUTH_BUSY;
    }
    if (plen > HTP_PASS_MAX || hash == NULL || hlen > HTP_HASH_MAX) {
        return WK_AUTH_FAIL;
    }
    a->st.misses++;
    /* The same credentials already being hashed: wait for that one. */
    for (j = a->inflight; j != NULL; j = j->inext) {
        if (tag_eq(j->tag, tag) && j->dummy == unknown) {
            a->st.shared++;
            goto attach;
        }
    }
    if (a->njobs >= WK_AUTH_MAX_JOBS || (!a->thread_started && start_thread(a) != 0) ||
        (j = calloc(1, sizeof(*j))) == NULL) {
        a->st.busy++;
        return WK_AUTH_BUSY;
    }
    memcpy(j->tag, tag, 16);
    j->dummy = (uint8_t)(unknown != 0);
    memcpy(j->pass, pass, plen);
    memcpy(j->setting, hash, hlen);
    a->njobs++;
    a->st.hashes++;
    j->inext = a->inflight;
    if (a->inflight != NULL) {
        a->inflight->iprev = j;
    }
    a->inflight = j;
    pthread_mutex_lock(&a->mu);
    *a->todo_tail = j;
    a->todo_tail = &j->next;
    pthread_mutex_unlock(&a->mu);
    pthread_cond_signal(&a->cv);
attach:
    w->next = j->waiters;
    j->waiters = w;
    w->job = j;
    return WK_AUTH_WAIT;
}

int wk_auth_check(const char *user, size_t ulen, const char *pass, size_t plen, const char *hash,
                  size_t hlen, const char *dummy, size_t dlen, struct wk_auth_wait *w)
{
    uint8_t tag[16];
    int unknown = hash == NULL;

    w->job = NULL;
    if (unknown) {
        hash = dummy;
        hlen = dlen;
    }
    if (hash == NULL || ulen > HTP_USER_MAX || plen > HTP_PASS_MAX || hlen > HTP_HASH_MAX) {
        return WK_AUTH_FAIL;
    }
    if (wk_auth_cached(user, ulen, pass, plen, hash, hlen, tag)) {
        if (!unknown) {
            return WK_AUTH_OK;
        }
    }
    return wk_auth_queue(tag, pass, plen, hash, hlen, unknown, w);
}

void wk_auth_cancel(struct wk_auth_wait *w)
{
    struct wk_auth_wait **pp;

    if (w->job == NULL) {
        return;
    }
    for (pp = &w->job->waiters; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    w->job = NULL;
    w->next = NULL;
}

void wk_auth_event(void)
{
    struct wk_authw *a = wk.auth;
    struct wk_auth_job *done, *j;
    uint64_t v;

    if (a == NULL) {
        return;
    }
    while (read(a->efd, &v, sizeof(v)) == -1 && errno == EINTR) {
    }
    pthread_mutex_lock(&a->mu);
    done = a->done;
    a->done = NULL;
    pthread_mutex_unlock(&a->mu);
    while ((j = done) != NULL) {
        struct wk_auth_wait *w;
        done = j->next;
        if (j->iprev != NULL) {
            j->iprev->inext = j->inext;
        } else {
            a->inflight = j->inext;
        }
        if (j->inext != NULL) {
            j->inext->iprev = j->iprev;
        }
        a->njobs--;
        if (j->ok) {
            wk_auth_cache_put(j->tag);
        }
        /* A callback may cancel another waiter of the same job: take them one at a time. */
        while ((w = j->waiters) != NULL) {
            j->waiters = w->next;
            w->next = NULL;
            w->job = NULL;
            w->done(w, j->ok);
        }
        free(j);
    }
}

const struct wk_auth_stats *wk_auth_stats(void)
{
    static const struct wk_auth_stats none;

    return wk.auth != NULL ? &wk.auth->st : &none;
}

/* ---- the basic_auth middleware (worker/wk_mw.c's hook table) ----------------------------------
 */
struct basic_wait {
    struct wk_auth_wait w; /* first: the callback gets it */
    uint32_t rt_slot;      /* the middleware's counters */
    struct wk_xchg *x;
    const struct shm_snap_hdr *s;
    const struct shm_mw_basic_auth *p;
};

static void ba_count(uint32_t rt_slot, int k)
{
    if (rt_slot < SHM_RT_MAX_MIDDLEWARES) {
        __atomic_fetch_add(&wk.rt->mws[rt_slot].type_counters[k], 1, __ATOMIC_RELAXED);
    }
}

/* The users table, NULL when the block does not fit its region (never from a sane master). */
static const struct shm_mw_htuser *users_of(const struct shm_snap_hdr *s,
                                            const struct shm_mw_basic_auth *p)
{
    uint64_t size = shm_mw_region(s)->size;

    if (p->nusers == 0 || p->users_off % 8 != 0 || p->users_off > size ||
        (uint64_t)p->nusers * sizeof(struct shm_mw_htuser) > size - p->users_off) {
        return NULL;
    }
    return (const struct shm_mw_htuser *)(const void *)(shm_mw_base(s) + p->users_off);
}

static const struct shm_mw_htuser *find_user(const struct shm_snap_hdr *s,
                                             const struct shm_mw_htuser *t, uint32_t n,
                                             const char *user, size_t ulen)
{
    uint32_t lo = 0, hi = n;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = htp_user_cmp(shm_mw_s(s, t[mid].user), t[mid].user.len, user, ulen);
        if (c == 0) {
            return &t[mid];
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

/* 401 with the realm's challenge. */
static int challenge(struct wk_xchg *x, const struct shm_snap_hdr *s,
                     const struct shm_mw_basic_auth *p, uint32_t rt_slot, const char *msg)
{
    char v[256];
    int n = snprintf(v, sizeof(v), "Basic realm=\"%.*s\"", (int)DSP_MIN(p->realm.len, 200u),
                     shm_mw_s(s, p->realm));

    ba_count(rt_slot, SHM_BA_TC_REJECTED);
    wk_mw_hdr(x, "WWW-Authenticate", v, (size_t)n);
    return wk_mw_error(x, 401, "Unauthorized", msg);
}

/* Verified: the credentials stay here (the backend never sees them). */
static int granted(struct wk_xchg *x)
{
    wk_mw_req_remove(x, "authorization");
    return WK_MW_PASS;
}

static void basic_done(struct wk_auth_wait *w, int ok)
{
    struct basic_wait *bw = (struct basic_wait *)(void *)w;
    struct wk_xchg *x = bw->x;
    const struct shm_snap_hdr *s = bw->s;
    const struct shm_mw_basic_auth *p = bw->p;
    uint32_t rt_slot = bw->rt_slot;

    x->tx->mw.wait = NULL;
    free(bw);
    if (ok) {
        ba_count(rt_slot, SHM_BA_TC_HASHED);
        wk_mw_resume(x, granted(x));
    } else if (challenge(x, s, p, rt_slot, "Invalid credentials") == WK_MW_DONE) {
        wk_mw_resume(x, WK_MW_DONE);
    }
}

static int basic_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_basic_auth *p = c->params;
    const struct shm_mw_htuser *t = users_of(c->s, p), *u, *d;
    char buf[HTP_USER_MAX + HTP_PASS_MAX + 8];
    const char *v, *user, *pass, *hash;
    size_t vlen, ulen, plen, hlen;
    struct basic_wait *bw;
    uint8_t tag[16];
    int r, hit;

    if (t == NULL) {
        return wk_mw_error(x, 503, "Service unavailable", "Authentication is misconfigured");
    }
    if (!wk_mw_req_get(x, "authorization", &v, &vlen)) {
        return challenge(x, c->s, p, c->m->rt_slot, "Authentication required");
    }
    if (htp_basic_decode(v, vlen, buf, sizeof(buf), &user, &ulen, &pass, &plen) != 0) {
        explicit_bzero(buf, sizeof(buf));
        return challenge(x, c->s, p, c->m->rt_slot, "Malformed credentials");
    }
    /* An unknown user is hashed against the file's most expensive hash (and always fails),
     * so that the answer never comes sooner than for a known one. */
    u = find_user(c->s, t, p->nusers, user, ulen);
    d = &t[p->dummy < p->nusers ? p->dummy : 0];
    hash = shm_mw_s(c->s, (u != NULL ? u : d)->hash);
    hlen = (u != NULL ? u : d)->hash.len;
    hit = wk_auth_cached(user, ulen, pass, plen, hash, hlen, tag) && u != NULL;
    if (hit) {
        explicit_bzero(buf, sizeof(buf));
        ba_count(c->m->rt_slot, SHM_BA_TC_CACHED);
        return granted(x);
    }
    bw = malloc(sizeof(*bw));
    r = WK_AUTH_BUSY;
    if (bw != NULL) {
        bw->w.done = basic_done;
        bw->rt_slot = c->m->rt_slot;
        bw->x = x;
        bw->s = c->s;
        bw->p = p;
        r = wk_auth_queue(tag, pass, plen, hash, hlen, u == NULL, &bw->w);
    }
    explicit_bzero(buf, sizeof(buf));
    if (r == WK_AUTH_WAIT) {
        x->tx->mw.wait = bw;
        return WK_MW_WAIT;
    }
    free(bw);
    if (r == WK_AUTH_BUSY) {
        ba_count(c->m->rt_slot, SHM_BA_TC_BUSY);
        wk_mw_hdr(x, "Retry-After", "1", 1);
        return wk_mw_error(x, 503, "Service unavailable", "Too many password checks in progress");
    }
    return challenge(x, c->s, p, c->m->rt_slot, "Invalid credentials");
}

static void basic_cancel(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    struct basic_wait *bw = x->tx->mw.wait;

    (void)c;
    if (bw != NULL) {
        wk_auth_cancel(&bw->w);
        free(bw);
        x->tx->mw.wait = NULL;
    }
}

const struct wk_mw_hooks wk_mw_basic_auth_hooks = {
    .request = basic_request,
    .cancel = basic_cancel,
};
