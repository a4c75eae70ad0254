/* dispatcher: the worker's event loop. Edge-triggered epoll over listeners, clients and upstream
 * connections; between passes it refreshes the clock, fires timers, writes its heartbeat and adopts
 * a newly published configuration generation. */
#include "worker/wk.h"

#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/dsp.h"
#include "common/log.h"
#include "shm/shm.h"
#include "shm/shm_snap.h"
#include "worker/wk_alog.h"
#include "worker/wk_auth.h"
#include "worker/wk_fauth.h"
#include "worker/wk_internal.h"
#include "worker/wk_tls.h"

struct wk_worker wk;

static volatile sig_atomic_t sig_term, sig_int, sig_usr1;
static int retiring; /* WK_CTL_RETIRE: stopping, but open connections are not cut */

static void on_signal(int sig)
{
    if (sig == SIGTERM || sig == SIGQUIT) {
        sig_term = 1;
    } else if (sig == SIGINT) {
        sig_int = 1;
    } else if (sig == SIGUSR1) {
        sig_usr1 = 1;
    }
}

/* ---- buffers: per-size free lists ----------------------------------------------------------- */
#define BUF_FREE_MAX 256

static struct {
    uint32_t size;
    uint32_t n;
    char *items[BUF_FREE_MAX];
} buf_free[4]; /* client buffers, upstream request heads, upstream input, HTTP/2 request bodies */

int wk_buf_get(struct wk_buf *b, uint32_t size)
{
    if (b->data != NULL) {
        return 0;
    }
    for (int i = 0; i < (int)DSP_ARRAY_SIZE(buf_free); i++) {
        if (buf_free[i].size == size && buf_free[i].n > 0) {
            b->data = buf_free[i].items[--buf_free[i].n];
            goto done;
        }
    }
    b->data = malloc(size);
    if (b->data == NULL) {
        return -1;
    }
done:
    b->cap = size;
    b->start = b->end = 0;
    return 0;
}

void wk_buf_put(struct wk_buf *b)
{
    if (b->data == NULL) {
        return;
    }
    for (int i = 0; i < (int)DSP_ARRAY_SIZE(buf_free); i++) {
        if (buf_free[i].size == 0) {
            buf_free[i].size = b->cap;
        }
        if (buf_free[i].size == b->cap) {
            if (buf_free[i].n < BUF_FREE_MAX) {
                buf_free[i].items[buf_free[i].n++] = b->data;
                b->data = NULL;
            }
            break;
        }
    }
    free(b->data);
    b->data = NULL;
    b->cap = b->start = b->end = 0;
}

/* ---- deferred frees --------------------------------------------------------------------------
 * Closing a client also closes its upstream, and either may still have an event further down the
 * batch epoll_wait returned: their memory lives until the batch is done. */
static void **dead;
static size_t ndead, dead_cap;

void wk_free_later(struct wk_ev *e)
{
    /* (bit 0 of the pointer, free in any struct: it came from wk.client_slab) */
    void *tagged = (void *)((uintptr_t)e | (e->kind == WK_EV_CLIENT));

    e->kind = 0;
    if (ndead == dead_cap) {
        size_t cap = dead_cap ? dead_cap * 2 : 64;
        void **n = realloc(dead, cap * sizeof(*n));

        if (n == NULL) {
            /* Out of memory: leak it rather than risk a use after free. */
            return;
        }
        dead = n;
        dead_cap = cap;
    }
    dead[ndead++] = tagged;
}

static void free_dead(void)
{
    for (size_t i = 0; i < ndead; i++) {
        uintptr_t p = (uintptr_t)dead[i];

        if (p & 1) {
            dsp_slab_free(&wk.client_slab, (void *)(p & ~(uintptr_t)1));
        } else {
            free(dead[i]);
        }
    }
    ndead = 0;
}

/* ---- timers --------------------------------------------------------------------------------- */
#define TQ_MAX 32

static struct {
    uint32_t ms;
    struct wk_timer head; /* sentinel of a circular list */
} tq[TQ_MAX];
static uint32_t ntq;

static uint32_t tq_find(uint32_t ms)
{
    for (uint32_t i = 0; i < ntq; i++) {
        if (tq[i].ms == ms) {
            return i;
        }
    }
    if (ntq == TQ_MAX) {
        /* So many distinct durations is unusual: share the nearest queue's order anyway, with a
         * deadline that may fire a little out of order (timers are re-checked on expiry). */
        return ntq - 1;
    }
    tq[ntq].ms = ms;
    tq[ntq].head.next = tq[ntq].head.prev = &tq[ntq].head;
    return ntq++;
}

void wk_timer_disarm(struct wk_timer *t)
{
    if (t->queue == 0) {
        return;
    }
    t->prev->next = t->next;
    t->next->prev = t->prev;
    t->prev = t->next = NULL;
    t->queue = 0;
}

void wk_timer_arm(struct wk_timer *t, uint32_t ms)
{
    uint32_t q;

    wk_timer_disarm(t);
    q = tq_find(ms);
    t->deadline = wk.now + ms;
    t->queue = q + 1;
    t->prev = tq[q].head.prev;
    t->next = &tq[q].head;
    tq[q].head.prev->next = t;
    tq[q].head.prev = t;
}

static int timers_next_ms(void)
{
    uint64_t best = UINT64_MAX;

    for (uint32_t i = 0; i < ntq; i++) {
        if (tq[i].head.next != &tq[i].head && tq[i].head.next->deadline < best) {
            best = tq[i].head.next->deadline;
        }
    }
    if (best == UINT64_MAX) {
        return 1000;
    }
    if (best <= wk.now) {
        return 0;
    }
    return best - wk.now > 1000 ? 1000 : (int)(best - wk.now);
}

static void timers_run(void)
{
    for (uint32_t i = 0; i < ntq; i++) {
        while (tq[i].head.next != &tq[i].head && tq[i].head.next->deadline <= wk.now) {
            struct wk_timer *t = tq[i].head.next;
            wk_timer_disarm(t);
            if (t->owner->kind == WK_EV_UPSTREAM) {
                wk_upstream_timeout((struct wk_upstream *)(void *)t->owner);
            } else if (t->owner->kind == WK_EV_CLIENT) {
                wk_client_timeout((struct wk_client *)(void *)t->owner);
            } else if (t->owner->kind == WK_EV_H2STREAM) {
                wk_h2_stream_timeout((struct wk_h2_stream *)(void *)t->owner);
            } else if (t->owner->kind == WK_EV_FAUTH) {
                wk_fauth_timeout((struct wk_fauth_conn *)(void *)t->owner);
            } else if (t->owner->kind == WK_EV_H2UP) {
                wk_h2up_timeout((struct wk_h2up_conn *)(void *)t->owner);
            }
        }
    }
}

/* ---- generations ---------------------------------------------------------------------------- */
static void publish_gen_usage(void)
{
    uint64_t oldest = wk.cur ? wk.cur->gen : 0;

    for (struct wk_gen *g = wk.gens; g != NULL; g = g->next) {
        if (g->gen < oldest) {
            oldest = g->gen;
        }
    }
    __atomic_store_n(&wk.me->gen_oldest, oldest, __ATOMIC_RELEASE);
    __atomic_store_n(&wk.me->gen_current, wk.cur ? wk.cur->gen : 0, __ATOMIC_RELEASE);
}

void wk_gen_ref(struct wk_gen *g)
{
    g->refs++;
}

void wk_gen_unref(struct wk_gen *g)
{
    if (--g->refs > 0) {
        return;
    }
    for (struct wk_gen **pp = &wk.gens; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    wk_tls_gen_free(g->tls);
    shm_snap_unmap(g->snap, g->size);
    free(g);
    publish_gen_usage();
}

static void lsn_reindex_all(void);

/* Adopt the published generation if it is newer. Returns 0, or -1 if none could be mapped. */
static int adopt_generation(void)
{
    uint64_t gen = shm_ctl_gen(wk.ctl);
    const struct shm_snap_hdr *h;
    struct wk_gen *g;
    size_t size;

    if (wk.cur != NULL && wk.cur->gen == gen) {
        return 0;
    }
    h = shm_snap_map(wk.ctl->master_pid, gen, &size);
    if (h == NULL) {
        /* The master retires a generation only once every worker has moved past it, so a
         * vanished one means a newer one is already published: the next pass picks it up. */
        static uint64_t reported;
        if (wk.cur == NULL || (errno != ENOENT && reported != gen)) {
            /* ENOENT is the normal race with a newer publish; anything else (a segment that
             * fails its checks, EMFILE) would leave this worker on old routes: say so once. */
            log_errno(LOG_ERROR, errno, "cannot map configuration generation %llu",
                      (unsigned long long)gen);
            reported = gen;
        }
        return wk.cur ? 0 : -1;
    }
    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        shm_snap_unmap(h, size);
        return wk.cur ? 0 : -1;
    }
    g->snap = h;
    g->size = size;
    g->gen = gen;
    g->refs = 1;
    /* Certificates and backend TLS settings travel with the generation: build (or share, when
     * unchanged) the SSL contexts before anything can be accepted under it. */
    g->tls = wk_tls_gen_new(h, wk.cur != NULL ? wk.cur->tls : NULL);
    g->next = wk.gens;
    wk.gens = g;
    if (wk.cur != NULL) {
        struct wk_gen *old = wk.cur;
        wk.cur = g;
        wk_gen_unref(old);
    } else {
        wk.cur = g;
    }
    publish_gen_usage();
    lsn_reindex_all();
    log_debug("serving configuration generation %llu", (unsigned long long)gen);
    return 0;
}

/* ---- accepting ------------------------------------------------------------------------------
 * Out of file descriptors (or socket memory), accept4() fails while the connection stays queued:
 * retrying at once would only spin. Accepting pauses for ACCEPT_BACKOFF_MS instead, then every
 * listener is drained again (the listeners are edge-triggered, so no event is lost by the wait);
 * one log line per episode, which ends when the backlogs are drained. */
#define ACCEPT_BACKOFF_MS 100
#define ACCEPT_SHED_MAX   32 /* idle keep-alive clients closed per failed attempt */

/* Watch the listeners for new connections, or stop watching them while accepting is paused. */
static void listeners_watch(int on)
{
    if (wk.listeners_off == !on) {
        return;
    }
    wk.listeners_off = !on;
    for (int i = 0; i < wk.nlisten; i++) {
        struct epoll_event ev = {.events = on ? EPOLLIN | EPOLLET : 0};
        ev.data.ptr = wk.listeners[i];
        (void)epoll_ctl(wk.epfd, EPOLL_CTL_MOD, wk.listeners[i]->fd, &ev);
    }
}

static void ctl_read(void);

static void do_accept(struct wk_listener *l)
{
    static uint64_t seq_seen;
    uint64_t seq = __atomic_load_n(&wk.ctl->listeners_seq, __ATOMIC_ACQUIRE);

    if (seq != seq_seen) {
        /* The master changed listeners (and answered the reload) before this connection may
         * have arrived: apply what it sent first, so that it gets the new options. */
        seq_seen = seq;
        ctl_read();
        if (l->ev.kind != WK_EV_LISTENER || l->fd == -1) {
            return; /* closed by what was read */
        }
    }
    for (int got = 0;; got++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd == -1) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return;
            }
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) {
                continue;
            }
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                int err = errno;
                size_t shed = 0;
                if (got == 0) {
                    /* Nothing freed since the last try: make room for what waits in the
                     * backlog, as nginx does, with idle keep-alive connections (their clients
                     * reconnect) and pooled upstreams (a cache); then wait a little. */
                    shed = wk_shed_idle(ACCEPT_SHED_MAX);
                }
                if (!wk.accept_starved) {
                    log_errno(LOG_ERROR, err,
                              "accept4() failed with %llu connections open; closed %zu idle "
                              "connections, pausing accepts until descriptors free up",
                              (unsigned long long)wk.nclients, shed);
                    wk.accept_starved = 1;
                    wk.starved_since = wk.now;
                }
                /* After progress, try again right after the next pass of events (which may
                 * close what was just accepted); after none, back off. */
                wk.accept_resume_ms = wk.now + (got > 0 ? 0 : ACCEPT_BACKOFF_MS);
                listeners_watch(0); /* no wake-up per queued connection meanwhile */
                return;
            }
            log_errno(LOG_ERROR, errno, "accept4() failed");
            return;
        }
        wk_client_accept(fd, (struct sockaddr *)&ss, l);
    }
}

static void accept_all(void)
{
    wk.accept_resume_ms = 0;
    for (int i = 0; i < wk.nlisten && wk.accept_resume_ms == 0; i++) {
        do_accept(wk.listeners[i]);
    }
    if (wk.accept_resume_ms == 0) {
        listeners_watch(1); /* (re-arming reports what is queued: nothing is missed) */
        if (wk.accept_starved) {
            /* Every queued connection taken: the episode is over. */
            wk.accept_starved = 0;
            log_info("descriptors available again after %llu ms: accepting",
                     (unsigned long long)(wk.now - wk.starved_since));
        }
    }
}

/* ---- the listener set: what the master hands over (worker/wk.h) -----------------------------
 * Each entry is allocated on its own, so that the array may move while an epoll batch still
 * names entries; a closed one is freed once the batch is done (wk_free_later). */
static int lsn_cap;
static int ctl_fd = -1;
static struct wk_ev ctl_ev = {.kind = 0xff};

static struct wk_listener *lsn_find(uint32_t lid, uint32_t sock)
{
    for (int i = 0; i < wk.nlisten; i++) {
        if (wk.listeners[i]->lid == lid && wk.listeners[i]->sock == sock) {
            return wk.listeners[i];
        }
    }
    return NULL;
}

static void lsn_close(struct wk_listener *l)
{
    for (int i = 0; i < wk.nlisten; i++) {
        if (wk.listeners[i] == l) {
            wk.listeners[i] = wk.listeners[--wk.nlisten];
            break;
        }
    }
    epoll_ctl(wk.epfd, EPOLL_CTL_DEL, l->fd, NULL);
    close(l->fd);
    l->fd = -1;
    wk_free_later(&l->ev);
}

static void close_listeners(void)
{
    while (wk.nlisten > 0) {
        lsn_close(wk.listeners[0]);
    }
}

/* Start accepting on <fd>. Returns the entry, or NULL (logged; <fd> closed). */
/* Its position in the current generation's listener table (HTTP/2 and the like look options
 * up there by c->listener): found by address, so that it always matches the generation that
 * new connections are served with. 255 (no entry) for a listener being drained away. */
static void lsn_reindex(struct wk_listener *l)
{
    const struct shm_snap_hdr *s = wk.cur != NULL ? wk.cur->snap : NULL;

    l->idx = 255;
    for (uint32_t k = 0; s != NULL && k < s->nlisteners; k++) {
        const struct shm_listener *e = &shm_listeners(s)[k];
        if (e->family == l->family && e->port == l->port &&
            memcmp(e->ip, l->ip, e->family == AF_INET6 ? 16 : 4) == 0) {
            l->idx = k;
            return;
        }
    }
}

static void lsn_reindex_all(void)
{
    for (int i = 0; i < wk.nlisten; i++) {
        lsn_reindex(wk.listeners[i]);
    }
}

static struct wk_listener *lsn_add(int fd, const struct wk_listen *li)
{
    uint32_t idx = li->idx;
    struct epoll_event ev = {.events = wk.listeners_off ? 0 : EPOLLIN | EPOLLET};
    struct wk_listener *l;

    if (wk.nlisten == lsn_cap) {
        int cap = lsn_cap ? lsn_cap * 2 : 8;
        struct wk_listener **n = realloc(wk.listeners, (size_t)cap * sizeof(*n));

        if (n == NULL) {
            log_error("out of memory for listener %u: not accepting on it", (unsigned)idx);
            close(fd);
            return NULL;
        }
        wk.listeners = n;
        lsn_cap = cap;
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        log_error("out of memory for listener %u: not accepting on it", (unsigned)idx);
        close(fd);
        return NULL;
    }
    l->ev.kind = WK_EV_LISTENER;
    l->fd = fd;
    l->lid = li->lid;
    l->sock = li->sock;
    l->tls = li->tls != 0;
    l->proxy_protocol = li->proxy_protocol != 0;
    l->family = li->family;
    l->port = li->port;
    memcpy(l->ip, li->ip, sizeof(l->ip));
    lsn_reindex(l);
    ev.data.ptr = l;
    if (epoll_ctl(wk.epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
        log_errno(LOG_ERROR, errno, "epoll_ctl(ADD listener %u) failed", (unsigned)idx);
        close(fd);
        free(l);
        return NULL;
    }
    wk.listeners[wk.nlisten++] = l;
    return l;
}

static void ctl_apply(const struct wk_ctl_msg *m, int fd)
{
    struct wk_listener *l = lsn_find(m->lid, m->sock);

    switch (m->op) {
    case WK_CTL_ADD:
        if (fd == -1) {
            log_error("control message without its socket (listener %u)", (unsigned)m->idx);
            return;
        }
        if (wk.stopping) {
            close(fd);
            return;
        }
        if (l != NULL) {
            lsn_close(l); /* the same socket again: keep one copy */
        }
        {
            struct wk_listen li = {.lid = m->lid,
                                   .sock = m->sock,
                                   .idx = m->idx,
                                   .tls = m->tls,
                                   .proxy_protocol = m->proxy_protocol,
                                   .family = m->family,
                                   .port = m->port};
            memcpy(li.ip, m->ip, sizeof(li.ip));
            l = lsn_add(fd, &li);
        }
        if (l != NULL && wk.accept_resume_ms == 0) {
            do_accept(l); /* what queued before it was ours */
        }
        log_debug("accepting on listener %u (socket %u.%u)", (unsigned)m->idx, (unsigned)m->lid,
                  (unsigned)m->sock);
        return;
    case WK_CTL_DEL:
    case WK_CTL_DRAIN:
        if (l == NULL) {
            break;
        }
        if (m->op == WK_CTL_DRAIN && !wk.stopping) {
            /* Nobody else will take what waits in this queue: serve it. */
            do_accept(l);
        }
        lsn_close(l);
        break;
    case WK_CTL_RETIRE:
        if (!wk.stopping) {
            /* Unlike a stop, no idle connection is closed now: a client may be sending on
             * it at this very moment (or have connected and not yet sent). Each gets its
             * next answer with Connection: close, or ends at its own timeout. */
            retiring = 1;
            wk.stopping = 1;
            wk.stop_deadline = wk.now + wk.cur->snap->limits.shutdown_timeout_ms;
            close_listeners();
            log_info("retiring: %llu connections to finish", (unsigned long long)wk.nclients);
        }
        break;
    case WK_CTL_SET:
        if (l != NULL) {
            l->tls = m->tls != 0;
            l->proxy_protocol = m->proxy_protocol != 0;
        }
        break;
    default:
        log_error("unknown control message %u from the master", (unsigned)m->op);
        break;
    }
    if (fd != -1) {
        close(fd);
    }
}

/* Read every pending control message. */
static void ctl_read(void)
{
    static int reading; /* (an ADD accepts at once, and an accept may look here first) */

    if (reading) {
        return;
    }
    reading = 1;
    while (ctl_fd != -1) {
        struct wk_ctl_msg m;
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int) * 4)];
        } cb;
        struct iovec iov = {.iov_base = &m, .iov_len = sizeof(m)};
        struct msghdr mh = {.msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = cb.b,
                            .msg_controllen = sizeof(cb.b)};
        ssize_t n = recvmsg(ctl_fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        int fd = -1;

        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                log_errno(LOG_ERROR, errno, "reading the master's control channel failed");
                n = 0;
            } else {
                break;
            }
        }
        if (n == 0) {
            /* The master is gone (its death signal stops this worker). */
            epoll_ctl(wk.epfd, EPOLL_CTL_DEL, ctl_fd, NULL);
            close(ctl_fd);
            ctl_fd = -1;
            break;
        }
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < k; i++) {
                    int got;
                    memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                    if (fd == -1) {
                        fd = got;
                    } else {
                        close(got);
                    }
                }
            }
        }
        if ((size_t)n != sizeof(m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
            log_error("malformed control message from the master (%zd bytes)", n);
            if (fd != -1) {
                close(fd);
            }
            continue;
        }
        ctl_apply(&m, fd);
    }
    reading = 0;
}

static void drop_privileges(const struct wk_init *init)
{
    if (init->uid == (uid_t)-1 || geteuid() != 0) {
        return;
    }
    if (setgroups(0, NULL) == -1 || setgid(init->gid) == -1 || setuid(init->uid) == -1) {
        log_errno(LOG_ERROR, errno, "cannot drop privileges to uid %d", (int)init->uid);
        exit(1);
    }
    /* Dropping uid clears the dumpable flag; keep core dumps and /proc readable for the master. */
    prctl(PR_SET_DUMPABLE, 1);
}

/* Worker start-up: signals, privileges, randomness, TLS, the first generation, the epoll set
 * with the listening sockets and the control channel. Exits on failure. */
static void worker_setup(const struct wk_init *init)
{
    struct sigaction sa;
    char tag[32];

    memset(&wk, 0, sizeof(wk));
    dsp_slab_init(&wk.client_slab, sizeof(struct wk_client));
    wk.slot = init->slot;
    wk.ctl = init->ctl;
    wk.rt = init->rt;
    wk.me = &init->ctl->workers[init->slot];
    snprintf(tag, sizeof(tag), "worker %d", init->slot);
    log_set_tag(tag);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGCHLD, &sa, NULL);
    {
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
    }

    drop_privileges(init);
    /* The master's death must not leave orphan workers serving a stale config: SIGTERM stops
     * accepting (the port is free for a new master) and drains within shutdown_timeout_ms.
     * Set after the uid change, which clears it; getppid() closes the race with a master
     * that died before. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != wk.ctl->master_pid) {
        exit(0);
    }

    if (getrandom(wk.rng, sizeof(wk.rng), 0) != (ssize_t)sizeof(wk.rng)) {
        wk.rng[0] = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;
        wk.rng[1] = dsp_now_ms() ^ 0xdeadbeefcafef00dull;
    }
    wk.rng[0] |= 1;

    wk.now = dsp_now_ms();
    if (wk_tls_init() != 0 || adopt_generation() != 0) {
        exit(1);
    }
    wk.pools = calloc(SHM_RT_MAX_BACKENDS, sizeof(struct wk_pool));
    wk.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (wk.pools == NULL || wk.epfd == -1) {
        log_errno(LOG_ERROR, errno, "worker start-up failed");
        exit(1);
    }
    for (int i = 0; i < init->nlisten; i++) {
        const struct wk_listen *li = &init->listen[i];
        if (lsn_add(li->fd, li) == NULL) {
            exit(1);
        }
    }
    ctl_fd = init->ctl_fd;
    if (ctl_fd != -1) {
        struct epoll_event ev = {.events = EPOLLIN};
        ev.data.ptr = &ctl_ev;
        if (epoll_ctl(wk.epfd, EPOLL_CTL_ADD, ctl_fd, &ev) == -1) {
            log_errno(LOG_ERROR, errno, "epoll_ctl(ADD control channel) failed");
            exit(1);
        }
    }
    __atomic_store_n(&wk.me->heartbeat_ms, wk.now, __ATOMIC_RELAXED);
    log_debug("worker started");
    /* Connections may already be queued from before a respawn: an edge may never come. */
    accept_all();
}

/* Hand each event of a batch to its owner. */
static void dispatch(struct epoll_event *evs, int n)
{
    for (int i = 0; i < n; i++) {
        struct wk_ev *e = evs[i].data.ptr;
        if (e == &ctl_ev) {
            ctl_read();
            continue;
        }
        switch (e->kind) {
        case WK_EV_LISTENER:
            if (!wk.stopping && wk.accept_resume_ms == 0) {
                do_accept((struct wk_listener *)(void *)e);
            }
            break;
        case WK_EV_CLIENT:
            wk_client_event((struct wk_client *)(void *)e, evs[i].events);
            break;
        case WK_EV_UPSTREAM:
            wk_upstream_event((struct wk_upstream *)(void *)e, evs[i].events);
            break;
        case WK_EV_AUTH:
            wk_auth_event();
            break;
        case WK_EV_FAUTH:
            wk_fauth_event((struct wk_fauth_conn *)(void *)e, evs[i].events);
            break;
        case WK_EV_H2UP:
            wk_h2up_event((struct wk_h2up_conn *)(void *)e, evs[i].events);
            break;
        default:
            break;
        }
    }
}

/* After a pass: signals (stop, log reopen) and the end of a graceful stop. */
static void after_pass(void)
{
    if (sig_int) {
        wk_alog_flush();
        exit(0);
    }
    if (sig_usr1) {
        sig_usr1 = 0;
        wk_alog_reopen();
    }
    if (sig_term && retiring) {
        retiring = 0; /* a stop while retiring: now as any stop */
        wk_close_idle_clients();
    }
    if (sig_term && !wk.stopping) {
        if (getppid() != wk.ctl->master_pid) {
            shm_unlink_all_of(wk.ctl->master_pid); /* the master died: nobody else will */
        }
        wk.stopping = 1;
        wk.stop_deadline = wk.now + wk.cur->snap->limits.shutdown_timeout_ms;
        close_listeners();
        wk_close_idle_clients();
    }
    if (wk.stopping) {
        if (!retiring) {
            wk_close_idle_clients();
        }
        if (wk.nclients == 0 || wk.now >= wk.stop_deadline) {
            if (wk.nclients != 0) {
                log_warn("shutdown timeout (limits.shutdown_timeout_ms = %u) reached: "
                         "closing %llu connection(s) still open",
                         wk.cur->snap->limits.shutdown_timeout_ms, (unsigned long long)wk.nclients);
                wk_close_all_clients(SHM_CUT_SHUTDOWN); /* their requests logged as cut */
            }
            wk_alog_flush();
            exit(0);
        }
    }
}

/* The HTTP/2 connections (client side, then backends) that had news in the batch run once: the
 * client sides' streams may give the backends' connections frames and the other way round. */
static void run_due(void)
{
    for (int i = 0; i < 64; i++) {
        wk_h2_run_due();
        if (!wk_h2up_run_due()) {
            break;
        }
    }
}

void wk_main(const struct wk_init *init)
{
    struct epoll_event evs[1024];

    worker_setup(init);
    for (;;) {
        int timeout = timers_next_ms();
        int n;

        if (wk.accept_resume_ms != 0 && !wk.stopping) {
            int wait = wk.accept_resume_ms > wk.now ? (int)(wk.accept_resume_ms - wk.now) : 0;
            timeout = DSP_MIN(timeout, wait);
        }
        if (wk.h2_due != NULL || wk.h2up_due != NULL) {
            timeout = 0; /* (run_due() stopped short) */
        }
        if (wk_alog_pending() && timeout > 100) {
            timeout = 100;
        }
        if (wk.h2_slept != 0 && timeout > 1000) {
            timeout = 1000;
        }
        free_dead(); /* nothing of the previous batch is pending any more */
        n = epoll_wait(wk.epfd, evs, (int)DSP_ARRAY_SIZE(evs), timeout);
        if (n == -1 && errno != EINTR) {
            log_errno(LOG_ERROR, errno, "epoll_wait() failed");
            exit(1);
        }
        wk.now = dsp_now_ms();
        /* The upstream pool tells bytes that arrived before a reuse from the answer (wk_conn.c). */
        wk.pass++;
        wk.batch_full = n == (int)DSP_ARRAY_SIZE(evs);
        /* Before the events too: an idle worker wakes up for the request that follows a publish
         * (reload, Redis event), and that request must already see the new generation. */
        adopt_generation();
        dispatch(evs, n);
        run_due();
        if (wk.accept_resume_ms != 0 && wk.now >= wk.accept_resume_ms && !wk.stopping) {
            accept_all();
        }
        timers_run();
        run_due();
        wk_h2_trim();
        __atomic_store_n(&wk.me->heartbeat_ms, wk.now, __ATOMIC_RELAXED);
        __atomic_store_n(&wk.me->connections, wk.nclients, __ATOMIC_RELAXED);
        adopt_generation();
        wk_alog_tick(wk.now);

        after_pass();
    }
}
