/* dispatcher: the proxy state machine of one client connection and the upstream connection that
 * serves its current request. Requests are handled one at a time per connection (pipelined
 * requests wait in the input buffer), bodies stream both ways through bounded buffers: request
 * bytes are forwarded raw once the parser has accepted them, response bytes likewise (or decoded
 * in place for HTTP/1.0 clients of a chunked response). */
#include "worker/wk_internal.h"

#include <errno.h>
#include <limits.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/net.h"
#include "common/str.h"
#include "common/tls.h"
#include "shm/shm_route.h"
#include "shm/shm_snap.h"
#include "shm/shm_stats.h"
#include "worker/wk_alog.h"
#include "worker/wk_pp.h"
#include "worker/wk_tls.h"

#define POOL_MAX_IDLE     64
#define POOL_IDLE_MS      30000
#define LINGER_MS         2000
#define UPSTREAM_BUF_SIZE (32 * 1024)
#define WK_MAX_INTERIM    8 /* 1xx responses before the final one, per attempt */

/* ---- small helpers ------------------------------------------------------------------------- */
static const struct shm_snap_hdr *csnap(const struct wk_client *c)
{
    return c->at.gen ? c->at.gen->snap : wk.cur->snap;
}

static const struct shm_service *csvc(const struct wk_client *c)
{
    return &shm_services(c->at.gen->snap)[c->at.service];
}

static const struct shm_backend *cbe(const struct wk_client *c)
{
    return &shm_backends(c->at.gen->snap)[csvc(c)->backends_first + c->at.backend];
}

static uint32_t client_buf_size(void)
{
    uint64_t lim = wk.cur->snap->limits.max_header_bytes;
    uint64_t sz = (lim + 4096 + 4095) & ~(uint64_t)4095;

    return (uint32_t)(sz < 16384 ? 16384 : sz);
}

static void ip_to_ss(uint8_t family, const uint8_t *ip, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    ss->ss_family = family;
    if (family == AF_INET) {
        memcpy(&((struct sockaddr_in *)ss)->sin_addr, ip, 4);
    } else {
        memcpy(&((struct sockaddr_in6 *)ss)->sin6_addr, ip, 16);
    }
}

static void ip_str(uint8_t family, const uint8_t *ip, char *buf, size_t len)
{
    struct sockaddr_storage ss;

    ip_to_ss(family, ip, &ss);
    net_ip_str((struct sockaddr *)&ss, buf, len);
}

static void peer_ip(const struct wk_client *c, char *buf, size_t len)
{
    ip_str(c->peer_family, c->peer_ip, buf, len);
}

/* ---- access log and statistics -------------------------------------------------------------- */
static const struct wk_hdr *head_find(const struct wk_head *hd, const char *name, size_t nlen)
{
    for (uint32_t i = 0; i < hd->n; i++) {
        if (wk_hdr_is(&hd->h[i], name, nlen)) {
            return &hd->h[i];
        }
    }
    return NULL;
}

/* Keep what the access log needs from the head in c->in at [0, hlen) (parsed into <hd>). The
 * host logged is <ahost> when given (an absolute-form authority, which is what was routed on),
 * else the Host header. */
static void capture_alog(struct wk_client *c, const struct wk_head *hd, const char *base,
                         size_t hlen, const char *ahost, size_t ahlen)
{
    const struct wk_hdr *host, *ua, *ref;
    const char *sp;

    free(c->tx->areq);
    c->tx->areq = NULL;
    if (!wk_alog_enabled()) {
        return;
    }
    host = head_find(hd, "host", 4);
    ua = head_find(hd, "user-agent", 10);
    ref = head_find(hd, "referer", 7);
    sp = memchr(base, ' ', DSP_MIN(hlen, 64));
    /* The method as written: the parser may have stopped before it knew one. */
    c->tx->areq = wk_alog_capture(ahost ? ahost : host ? host->value : NULL,
                              ahost ? ahlen : host ? host->vlen : 0, base,
                              sp ? (size_t)(sp - base) : 0, hd->url, hd->url_len,
                              ua ? ua->value : NULL, ua ? ua->vlen : 0, ref ? ref->value : NULL,
                              ref ? ref->vlen : 0, c->vmajor, c->vminor);
}

static uint64_t request_ms(const struct wk_client *c)
{
    return c->tx->started_ms && wk.now >= c->tx->started_ms ? wk.now - c->tx->started_ms : 0;
}

/* Statistics of a request whose response is complete, once: <how> 1 = proxied, 0 = generated.
 * Called just before the write that hands the client the response's last bytes, so that whoever
 * got the response and then reads the counters finds it counted. Relaxed atomic adds into this
 * worker's shard. */
static void request_tally(struct wk_client *c, int how)
{
    const struct shm_service *svc = c->at.service != SHM_NONE ? csvc(c) : NULL;
    const struct shm_backend *be = svc != NULL && c->at.tries > 0 ? cbe(c) : NULL;
    uint64_t dur = request_ms(c);

    if (c->tflags & WK_T_TALLIED) {
        return;
    }
    c->tflags |= WK_T_TALLIED;
    if (c->at.gen != NULL) {
        __atomic_fetch_add(&wk.me->requests, 1, __ATOMIC_RELAXED);
    }
    if (svc == NULL) {
        return;
    }
    if (how == 1 && be != NULL) {
        __atomic_fetch_add(&wk.rt->backends[be->rt_slot].requests, 1, __ATOMIC_RELAXED);
        if (c->status >= 500) {
            __atomic_fetch_add(&wk.rt->services[svc->rt_slot].errors, 1, __ATOMIC_RELAXED);
        }
    }
    shm_stats_record(wk.rt, (unsigned)wk.slot, svc->rt_slot,
                     how == 1 && be != NULL ? be->rt_slot : SHM_NONE, c->status, dur, wk.now);
}

/* A request is over: <how> 1 = proxied response complete, 0 = generated response sent, -1 =
 * the connection closed before its end (logged only, not counted). The log line goes to the
 * worker's buffer. */
static void request_done(struct wk_client *c, int how)
{
    const struct shm_snap_hdr *s = c->at.gen->snap;
    const struct shm_service *svc = c->at.service != SHM_NONE ? csvc(c) : NULL;
    const struct shm_backend *be = svc != NULL && c->at.tries > 0 ? cbe(c) : NULL;
    struct wk_alog_entry e;
    struct timespec ts;
    char ip[64];

    if (how >= 0) {
        request_tally(c, how);
    }
    if (c->tflags & WK_T_LOGGED) {
        return;
    }
    c->tflags |= WK_T_LOGGED;
    if (!wk_alog_enabled()) {
        return;
    }
    if (c->at.client_family != 0) {
        ip_str(c->at.client_family, c->at.client_ip, ip, sizeof(ip));
    } else {
        peer_ip(c, ip, sizeof(ip));
    }
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    memset(&e, 0, sizeof(e));
    e.client_ip = ip;
    e.req = c->tx->areq;
    /* 499: the client went away before it got an answer (the nginx convention). */
    e.status = how < 0 && (c->status == 0 || c->tx->bytes_sent == 0) ? 499 : c->status;
    e.duration_ms = request_ms(c);
    e.bytes_sent = c->tx->bytes_sent;
    e.reqid = c->tx->reqid;
    e.reqid_len = c->tx->reqid_len;
    if (svc != NULL) {
        e.service = shm_s(s, svc->name);
        e.service_len = svc->name.len;
    }
    if (be != NULL) {
        e.backend = shm_s(s, be->address);
        e.backend_len = be->address.len;
    }
    e.wall_s = ts.tv_sec;
    e.wall_ms = (unsigned)(ts.tv_nsec / 1000000);
    wk_alog_write(&e);
}

static int ip_trusted(const struct wk_client *c, uint8_t family, const uint8_t *ip)
{
    const struct shm_snap_hdr *s = csnap(c);
    const struct shm_cidr *t = shm_trusted(s);
    struct sockaddr_storage ss;

    if (s->ntrusted == 0) {
        return 0;
    }
    ip_to_ss(family, ip, &ss);
    for (uint32_t i = 0; i < s->ntrusted; i++) {
        struct net_cidr nc;
        nc.family = t[i].family;
        nc.prefix = t[i].prefix;
        memcpy(nc.addr, t[i].addr, 16);
        if (net_cidr_match(&nc, (struct sockaddr *)&ss)) {
            return 1;
        }
    }
    return 0;
}

static int peer_trusted(const struct wk_client *c)
{
    return ip_trusted(c, c->peer_family, c->peer_ip);
}

/* The request's client: for a trusted peer, the right-most X-Forwarded-For entry that is not
 * itself a trusted proxy (entries to its left could be forged by the client). */
static void resolve_client(struct wk_client *c, const struct wk_head *hd)
{
    c->at.client_family = c->peer_family;
    memcpy(c->at.client_ip, c->peer_ip, 16);
    if (!peer_trusted(c)) {
        return;
    }
    for (int i = (int)hd->n - 1; i >= 0; i--) {
        const struct wk_hdr *h = &hd->h[i];
        size_t end;
        if (!wk_hdr_is(h, "x-forwarded-for", 15)) {
            continue;
        }
        end = h->vlen;
        while (end > 0) {
            size_t st = end, a, b;
            char tmp[64];
            uint8_t ip[16];
            int fam = 0;
            while (st > 0 && h->value[st - 1] != ',') {
                st--;
            }
            a = st;
            b = end;
            while (a < b && (h->value[a] == ' ' || h->value[a] == '\t')) {
                a++;
            }
            while (b > a && (h->value[b - 1] == ' ' || h->value[b - 1] == '\t')) {
                b--;
            }
            end = st > 0 ? st - 1 : 0;
            if (b - a == 0 || b - a >= sizeof(tmp)) {
                return; /* garbage: stop trusting the chain here */
            }
            memcpy(tmp, h->value + a, b - a);
            tmp[b - a] = '\0';
            memset(ip, 0, sizeof(ip));
            if (inet_pton(AF_INET, tmp, ip) == 1) {
                fam = AF_INET;
            } else if (inet_pton(AF_INET6, tmp, ip) == 1) {
                fam = AF_INET6;
            } else {
                return;
            }
            c->at.client_family = (uint8_t)fam;
            memcpy(c->at.client_ip, ip, 16);
            if (!ip_trusted(c, (uint8_t)fam, ip)) {
                return;
            }
            if (st == 0) {
                break;
            }
        }
    }
}

/* limits.min_body_rate: a request body gets BODY_GRACE_MS, then must keep up the rate on
 * average, never banking more than BODY_WINDOW_MS of credit; checked every BODY_TICK_MS. */
#define BODY_GRACE_MS  5000
#define BODY_WINDOW_MS 5000
#define BODY_TICK_MS   1000

static int body_rate_on(const struct wk_client *c)
{
    return c->at.gen != NULL && c->at.gen->snap->limits.min_body_rate > 0;
}

/* Is the request body being read from the client (and not held up by a connect)? */
static int body_phase(const struct wk_client *c)
{
    return c->state == WK_CS_PROXY && !(c->tflags & (WK_T_REQ_DONE | WK_T_TUNNEL)) &&
           !(c->up != NULL && (c->up->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS)));
}

/* <n> request body bytes were read: move the body's due time on by n / min_body_rate. */
static void body_credit(struct wk_client *c, size_t n)
{
    uint64_t due = c->tx->body_due_ms + (uint64_t)n * 1000 / c->at.gen->snap->limits.min_body_rate;
    uint64_t cap = wk.now + BODY_WINDOW_MS;

    if (due > cap) {
        due = cap > c->tx->body_due_ms ? cap : c->tx->body_due_ms;
    }
    c->tx->body_due_ms = due;
}

static void set_timer(struct wk_client *c)
{
    const struct shm_snap_hdr *s = csnap(c);
    uint32_t ms;

    if (c->tflags & (WK_T_SEND_WAIT | WK_T_RATE_TICK)) {
        if (c->state == WK_CS_PROXY && (c->tflags & WK_T_SEND_WAIT) &&
            !(c->flags & WK_C_F_WRITABLE)) {
            return; /* the client still does not drain: its send timeout runs on */
        }
        if ((c->tflags & WK_T_RATE_TICK) && body_phase(c)) {
            c->tx->progress_ms = wk.now; /* the tick is armed: it checks the rate */
            return;
        }
        c->tflags &= ~(WK_T_SEND_WAIT | WK_T_RATE_TICK);
    }
    switch (c->state) {
    case WK_CS_IDLE:
        ms = (c->flags & WK_C_F_STARTED) ? s->limits.idle_timeout_ms : s->limits.header_timeout_ms;
        break;
    case WK_CS_HEAD:
    case WK_CS_PPHDR:
    case WK_CS_TLS:
        ms = s->limits.header_timeout_ms;
        break;
    case WK_CS_PROXY:
        if (c->tflags & WK_T_TUNNEL) {
            ms = s->limits.tunnel_idle_timeout_ms;
        } else if (c->up != NULL && (c->up->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS))) {
            ms = csvc(c)->connect_timeout_ms;
        } else if (!(c->tflags & WK_T_REQ_DONE)) {
            ms = DSP_MAX(s->limits.idle_timeout_ms, csvc(c)->response_timeout_ms);
            if (body_rate_on(c) && body_phase(c)) {
                /* Not re-armed per byte: the tick judges the rate, and the progress time. */
                c->tx->progress_ms = wk.now;
                if (c->tx->body_due_ms == 0) {
                    c->tx->body_due_ms = wk.now + BODY_GRACE_MS;
                }
                c->tflags |= WK_T_RATE_TICK;
                ms = BODY_TICK_MS;
            }
        } else {
            ms = csvc(c)->response_timeout_ms;
        }
        break;
    case WK_CS_LINGER:
        ms = LINGER_MS;
        break;
    case WK_CS_REPLY:
        ms = s->limits.send_timeout_ms;
        break;
    default:
        ms = s->limits.idle_timeout_ms;
        break;
    }
    wk_timer_arm(&c->timer, ms ? ms : 1);
}

/* ---- upstream pool ---------------------------------------------------------------------------- */
static void pool_remove(struct wk_upstream *u)
{
    struct wk_pool *p = &wk.pools[u->be_slot];

    if (u->pprev != NULL) {
        u->pprev->pnext = u->pnext;
    } else if (p->head == u) {
        p->head = u->pnext;
    } else {
        return; /* not pooled */
    }
    if (u->pnext != NULL) {
        u->pnext->pprev = u->pprev;
    }
    u->pnext = u->pprev = NULL;
    p->count--;
}

static void upstream_close(struct wk_upstream *u)
{
    if (u->client == NULL) {
        pool_remove(u);
    }
    wk_timer_disarm(&u->timer);
    xp_close(&u->xp, 1);
    wk_free_later(&u->ev);
}

/* Is anything (bytes, EOF, an error) waiting on an upstream connection between two exchanges?
 * One non-blocking look at the socket. Whatever it is, it answers no request of ours: such a
 * connection is never reused. TLS backends may send session tickets after an exchange: those
 * are consumed and do not count. */
static int upstream_pending(struct wk_upstream *u)
{
    return !xp_idle_ok(&u->xp);
}

/* Park an upstream whose exchange ended exactly at a message boundary (finish() checked that
 * nothing is buffered past it and that the socket is empty). From here on any input closes it
 * (wk_upstream_event); upstream_connect() looks again before a reuse. */
static void pool_put(struct wk_upstream *u)
{
    struct wk_pool *p = &wk.pools[u->be_slot];

    /* Bytes a TLS backend sent beyond its response would be read as the next response. */
    if (p->count >= POOL_MAX_IDLE || wk.stopping || xp_pending(&u->xp)) {
        upstream_close(u);
        return;
    }
    u->pass = wk.pass;
    u->flags &= (uint8_t)~WK_UP_F_REUSED;
    u->client = NULL;
    u->pprev = NULL;
    u->pnext = p->head;
    if (p->head != NULL) {
        p->head->pprev = u;
    }
    p->head = u;
    p->count++;
    wk_timer_arm(&u->timer, POOL_IDLE_MS);
}

void wk_upstream_timeout(struct wk_upstream *u)
{
    if (u->client == NULL) {
        upstream_close(u);
    }
}

/* ---- client lifetime ------------------------------------------------------------------------ */
static void backend_active_dec(struct wk_client *c)
{
    if (c->tflags & WK_T_COUNTED) {
        __atomic_fetch_sub(&wk.rt->backends[cbe(c)->rt_slot].active, 1, __ATOMIC_RELAXED);
        c->tflags &= ~WK_T_COUNTED;
    }
}

/* Drop the upstream of the current attempt without reusing it. */
static void detach_upstream(struct wk_client *c)
{
    if (c->at.flags & WK_AT_PROBE) {
        wk_lb_abort(&c->at);
    }
    if (c->up != NULL) {
        backend_active_dec(c);
        c->up->client = c; /* not pooled: upstream_close must not touch the pool lists */
        upstream_close(c->up);
        c->up = NULL;
    }
}

static struct wk_txn *txn_free_list;

/* Start a request's lifetime: reference the current generation and take a transaction. Returns
 * 0, or -1 when out of memory (the caller closes the client). */
static int txn_begin(struct wk_client *c)
{
    struct wk_txn *t = txn_free_list;

    if (t != NULL) {
        txn_free_list = t->next_free;
    } else {
        t = malloc(sizeof(*t));
        if (t == NULL) {
            return -1;
        }
    }
    memset(t, 0, sizeof(*t));
    c->tx = t;
    c->at.gen = wk.cur;
    wk_gen_ref(c->at.gen);
    return 0;
}

static void txn_end(struct wk_client *c)
{
    struct wk_txn *t = c->tx;

    if (t == NULL) {
        return;
    }
    wk_buf_put(&t->uin);
    wk_buf_put(&t->uout);
    free(t->areq);
    c->tx = NULL;
    t->next_free = txn_free_list;
    txn_free_list = t;
}

static void end_transaction(struct wk_client *c)
{
    detach_upstream(c);
    txn_end(c);
    if (c->at.gen != NULL) {
        wk_gen_unref(c->at.gen);
        c->at.gen = NULL;
    }
}

void wk_client_close(struct wk_client *c)
{
    if (c->at.gen != NULL && (c->state == WK_CS_PROXY || c->state == WK_CS_REPLY)) {
        request_done(c, -1);
    }
    end_transaction(c);
    wk_timer_disarm(&c->timer);
    xp_close(&c->xp, 1);
    wk_buf_put(&c->in);
    wk_buf_put(&c->out);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        wk.clients = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    wk.nclients--;
    wk_free_later(&c->ev);
}

void wk_close_idle_clients(void)
{
    struct wk_client *c = wk.clients;

    while (c != NULL) {
        struct wk_client *next = c->next;
        if ((c->state == WK_CS_IDLE || c->state == WK_CS_TLS) &&
            (c->in.data == NULL || c->in.start == c->in.end)) {
            wk_client_close(c);
        }
        c = next;
    }
}

size_t wk_shed_idle(size_t max_clients)
{
    const struct shm_snap_hdr *s = wk.cur->snap;
    struct wk_client *c = wk.clients;
    size_t n = 0;

    for (uint32_t i = 0; i < s->nbackends; i++) {
        struct wk_pool *p = &wk.pools[shm_backends(s)[i].rt_slot];
        while (p->head != NULL) {
            upstream_close(p->head); /* (unlinks it from the pool) */
            n++;
        }
    }
    while (c != NULL && max_clients > 0) {
        struct wk_client *next = c->next;
        if (c->state == WK_CS_IDLE && (c->flags & WK_C_F_STARTED) &&
            (c->in.data == NULL || c->in.start == c->in.end)) {
            wk_client_close(c);
            max_clients--;
            n++;
        }
        c = next;
    }
    return n;
}

void wk_client_accept(int fd, const struct sockaddr *sa, uint32_t listener)
{
    const struct shm_snap_hdr *s = wk.cur->snap;
    struct epoll_event ev;
    struct wk_client *c;
    uint64_t total = 0;

    /* Other workers' counts are at most one loop pass old; ours is live. */
    for (uint32_t i = 0; i < wk.ctl->nworkers && i < SHM_MAX_WORKERS; i++) {
        if ((int)i != wk.slot) {
            total += __atomic_load_n(&wk.ctl->workers[i].connections, __ATOMIC_RELAXED);
        }
    }
    total += wk.nclients;
    if (s->limits.max_connections > 0 && total >= s->limits.max_connections) {
        static const char busy[] =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            "Content-Length: 77\r\nConnection: close\r\n\r\n"
            "{\"error\":\"Service unavailable\",\"message\":\"Too many connections, retry later\"}";
        _Static_assert(sizeof("{\"error\":\"Service unavailable\",\"message\":\"Too many "
                              "connections, retry later\"}") -
                               1 ==
                           77,
                       "busy body length");
        /* Best effort: the socket is fresh, its send buffer empty. A TLS client would only see
         * garbage: it just gets the close. */
        if ((listener >= s->nlisteners || !shm_listeners(s)[listener].tls) &&
            send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
            /* nothing to do */
        }
        close(fd);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->ev.kind = WK_EV_CLIENT;
    c->timer.owner = &c->ev;
    xp_init(&c->xp, fd);
    c->listener = (uint8_t)listener;
    c->flags = WK_C_F_WRITABLE;
    if (listener < s->nlisteners && shm_listeners(s)[listener].tls) {
        struct ssl_st *ssl = wk_tls_server_new(fd);
        if (ssl == NULL) {
            close(fd);
            free(c);
            return;
        }
        c->flags |= WK_C_F_TLS;
        xp_start_tls(&c->xp, ssl);
    }
    c->peer_family = (uint8_t)sa->sa_family;
    if (sa->sa_family == AF_INET) {
        memcpy(c->peer_ip, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        c->peer_port = ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(c->peer_ip, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        c->peer_port = ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
    }
    c->at.client_family = c->peer_family;
    memcpy(c->at.client_ip, c->peer_ip, 16);
    /* TCP_NODELAY is inherited from the listening socket (set by the master). */
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    if (epoll_ctl(wk.epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
        static uint64_t logged_ms; /* (out of memory or watches: once a second, not per client) */
        if (logged_ms == 0 || wk.now - logged_ms >= 1000) {
            logged_ms = wk.now;
            log_errno(LOG_ERROR, errno, "epoll_ctl(ADD client) failed");
        }
        xp_close(&c->xp, 0);
        free(c);
        return;
    }
    c->next = wk.clients;
    if (wk.clients != NULL) {
        wk.clients->prev = c;
    }
    wk.clients = c;
    wk.nclients++;
    c->state = WK_CS_IDLE;
    if (listener < s->nlisteners && shm_listeners(s)[listener].proxy_protocol) {
        c->state = WK_CS_PPHDR;
    } else if (xp_is_tls(&c->xp)) {
        c->state = WK_CS_TLS;
    }
    set_timer(c);
}

/* ---- generated responses -------------------------------------------------------------------- */
#define F_CLOSE 1

/* Queue a complete generated response (<status>, JSON <body>) for the client, dropping any
 * upstream. Returns 0, or -1 when the client had to be closed instead (it is freed). */
static int reply(struct wk_client *c, unsigned status, const char *body, size_t blen, int close_it)
{
    struct str_buf sb;

    if (c->tflags & WK_T_RESP_HEAD) {
        /* Part of a proxied response is already queued or sent: the only honest signal left
         * is to cut the connection. */
        wk_client_close(c);
        return -1;
    }
    detach_upstream(c);
    if (!(c->tflags & WK_T_REQ_DONE)) {
        close_it = 1; /* the rest of the request body cannot be told apart from a next request */
    }
    if (wk.stopping || (c->flags & WK_C_F_CLOSE)) {
        close_it = 1;
    }
    if (wk_buf_get(&c->out, client_buf_size()) != 0) {
        wk_client_close(c);
        return -1;
    }
    str_init(&sb, c->out.data + c->out.end, c->out.cap - c->out.end);
    str_addf(&sb, "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
             status, wk_reason(status), blen);
    if (c->tx != NULL && c->tx->reqid_len > 0) {
        str_adds(&sb, "X-Request-ID: ");
        str_add(&sb, c->tx->reqid, c->tx->reqid_len);
        str_adds(&sb, "\r\n");
    }
    if (close_it) {
        str_adds(&sb, "Connection: close\r\n");
    }
    str_adds(&sb, "\r\n");
    str_add(&sb, body, blen);
    if (sb.overflow) {
        wk_client_close(c);
        return -1;
    }
    c->out.end += (uint32_t)sb.len;
    c->status = (uint16_t)status;
    if (close_it) {
        c->flags |= WK_C_F_CLOSE;
    }
    if (status >= 500 && c->at.gen != NULL && c->at.service != SHM_NONE) {
        __atomic_fetch_add(&wk.rt->services[csvc(c)->rt_slot].errors, 1, __ATOMIC_RELAXED);
    }
    c->state = WK_CS_REPLY;
    set_timer(c);
    return 0;
}

static int reply_error(struct wk_client *c, unsigned status, const char *error, const char *msg,
                       int close_it)
{
    char body[1024];
    struct str_buf sb;

    str_init(&sb, body, sizeof(body));
    str_adds(&sb, "{\"error\":");
    str_add_jstr(&sb, error, strlen(error));
    str_adds(&sb, ",\"message\":");
    str_add_jstr(&sb, msg, strlen(msg));
    str_adds(&sb, "}");
    return reply(c, status, body, sb.len, close_it);
}

static int reply_not_found(struct wk_client *c, const char *host, size_t hlen, const char *path,
                           size_t plen)
{
    static char body[8192];
    const struct shm_snap_hdr *s = csnap(c);
    const struct shm_service *svcs = shm_services(s);
    struct str_buf sb;

    str_init(&sb, body, sizeof(body) - 64);
    str_adds(&sb, "{\"error\":\"Service not found\",\"message\":\"No service for ");
    str_add_json(&sb, host, DSP_MIN(hlen, 256));
    str_add_json(&sb, path, DSP_MIN(plen, 512));
    str_adds(&sb, "\",\"available_services\":[");
    for (uint32_t i = 0; i < s->nservices; i++) {
        size_t before = sb.len;
        if (i > 0) {
            str_adds(&sb, ",");
        }
        str_add_jstr(&sb, shm_s(s, svcs[i].name), svcs[i].name.len);
        if (sb.overflow) {
            /* Thousands of services: list what fits. */
            sb.overflow = 0;
            sb.len = before;
            break;
        }
    }
    sb.cap = sizeof(body);
    str_adds(&sb, "]}");
    return reply(c, 404, body, sb.len, 0);
}

/* ---- request parsing ------------------------------------------------------------------------ */
/* Build the upstream request head into c->tx->uout: <host> is the validated Host (or the
 * absolute-form authority) that was routed on, <target> the origin-form target (<slash>: a "/"
 * goes before it). Returns 0 or -1 (no memory / too large). */
static int build_upstream_head(struct wk_client *c, const struct wk_head *hd, const char *host,
                               size_t hlen, const char *target, size_t tlen, int slash,
                               uint64_t clen)
{
    char ip[64], rip[64];
    struct wk_h1_fwd f;
    size_t n;

    if (wk_buf_get(&c->tx->uout, client_buf_size() + 4096) != 0) {
        return -1;
    }
    c->tx->uout.start = c->tx->uout.end = 0;
    peer_ip(c, ip, sizeof(ip));
    ip_str(c->at.client_family, c->at.client_ip, rip, sizeof(rip));
    f.method = c->method;
    f.target = target;
    f.tlen = tlen;
    f.slash = slash;
    f.host = host;
    f.hostlen = hlen;
    f.dflt_host = hlen > 0 ? NULL : shm_s(c->at.gen->snap, csvc(c)->name);
    f.peer_ip = ip;
    f.real_ip = rip;
    f.reqid = c->tx->reqid;
    f.reqid_len = c->tx->reqid_len;
    f.clen = clen;
    f.trusted = (uint8_t)peer_trusted(c);
    f.https = (c->flags & WK_C_F_TLS) != 0;
    f.upgrade = (c->tflags & WK_T_UPGRADE) != 0;
    f.chunked = c->tx->req_chunked;
    n = wk_h1_write_request(c->tx->uout.data, c->tx->uout.cap, hd, &f);
    if (n == 0) {
        return -1;
    }
    c->tx->uout.end = (uint32_t)n;
    return 0;
}

static int upstream_start(struct wk_client *c);

/* Check whatever request body bytes are buffered. Only validated bytes become forwardable
 * (c->parsed_off): a chunk-size line or trailer line goes upstream only once it is complete and
 * valid; the bytes of an unfinished one (c->tx->rqc.pend) wait after parsed_off. Returns 0 to go
 * on proxying, 1 when the client was answered with an error (state REPLY), -1 when it was
 * closed. */
static int parse_body(struct wk_client *c)
{
    uint64_t maxb = c->at.gen->snap->limits.max_body_bytes;

    if (c->tflags & WK_T_REQ_DONE) {
        return 0;
    }
    if (c->tx->req_chunked) {
        uint32_t scan = c->parsed_off + c->tx->rqc.pend;
        while (scan < c->in.end) {
            size_t used;
            int r = wk_h1_chunk_parse(&c->tx->rqc, c->in.data + scan, c->in.end - scan, &used, NULL);
            if (r == WK_CHUNK_ERROR) {
                char msg[160];
                snprintf(msg, sizeof(msg), "Invalid chunked request body: %s", c->tx->rqc.err);
                return reply_error(c, 400, "Bad request", msg, F_CLOSE) == 0 ? 1 : -1;
            }
            scan += (uint32_t)used;
            c->parsed_off = scan - c->tx->rqc.pend;
            if (r == WK_CHUNK_DONE) {
                c->tflags |= WK_T_REQ_DONE;
                break;
            }
        }
        c->tx->body_bytes = c->tx->rqc.total; /* announced sizes count at once */
    } else {
        uint64_t take = c->in.end - c->parsed_off;
        if (take > c->tx->req_left) {
            take = c->tx->req_left;
        }
        c->parsed_off += (uint32_t)take;
        c->tx->req_left -= take;
        c->tx->body_bytes += take;
        if (c->tx->req_left == 0) {
            c->tflags |= WK_T_REQ_DONE;
        }
    }
    if (maxb > 0 && c->tx->body_bytes > maxb) {
        return reply_error(c, 413, "Payload too large",
                           "Request body exceeds limits.max_body_bytes", F_CLOSE) == 0
                   ? 1
                   : -1;
    }
    return 0;
}

/* A complete head sits in c->in at [start, start + hlen). Parse, check (RFC 9112 framing, Host),
 * route, and start proxying. */
static int process_head(struct wk_client *c, size_t hlen)
{
    const struct shm_snap_hdr *s;
    const char *base = c->in.data + c->in.start;
    const char *host;
    size_t hostlen;
    char nhost[256];
    size_t nhlen;
    unsigned st;
    uint32_t ridx;
    const struct shm_route *rt;
    const struct shm_service *svc;
    uint64_t clen;
    struct wk_h1_req rq; /* this head: pointers into c->in, alive for this call only */
    const struct wk_head *hd = &rq.hd;

    if (txn_begin(c) != 0) {
        wk_client_close(c);
        return -1;
    }
    s = c->at.gen->snap;
    c->at.service = SHM_NONE;
    c->tflags = 0;
    c->at.flags = 0;
    c->at.tries = 0;
    c->at.tried = 0;
    c->tx->body_bytes = 0;
    c->status = 0;
    c->tx->reqid_len = 0;
    c->tx->started_ms = wk.now;
    c->flags |= WK_C_F_STARTED;

    st = wk_h1_parse_request(base, hlen, &rq);
    c->method = (uint8_t)rq.method;
    c->vmajor = rq.major;
    c->vminor = rq.minor;
    if (rq.flags & WK_H1_DONE) {
        c->tflags |= WK_T_REQ_DONE;
    }
    /* Keep the client's request id if it is sane, for the error bodies too. */
    for (uint32_t i = 0; i < hd->n; i++) {
        if (wk_hdr_is(&hd->h[i], "x-request-id", 12) &&
            wk_reqid_sane(hd->h[i].value, hd->h[i].vlen)) {
            memcpy(c->tx->reqid, hd->h[i].value, hd->h[i].vlen);
            c->tx->reqid_len = (uint8_t)hd->h[i].vlen;
        }
    }
    if (c->tx->reqid_len == 0) {
        wk_reqid_new(wk.rng, c->tx->reqid);
        c->tx->reqid_len = 32;
    }
    /* The host logged is the one routed on: an absolute-form authority before the Host. */
    capture_alog(c, hd, base, hlen, rq.abs_host, rq.abs_hostlen);
    if (st != 0) {
        return reply_error(c, st,
                           st == 431   ? "Request header fields too large"
                           : st == 405 ? "Method not allowed"
                                       : "Bad request",
                           rq.err, F_CLOSE);
    }
    host = rq.host;
    hostlen = rq.hostlen;
    clen = rq.clen;
    nhlen = host ? shm_host_normalize(host, hostlen, nhost, sizeof(nhost)) : 0;
    if (host != NULL && nhlen == 0) {
        return reply_error(c, 400, "Bad request", "Invalid Host header", F_CLOSE);
    }
    if (rq.flags & WK_H1_CONTINUE) {
        c->tflags |= WK_T_CONTINUE;
    }
    if (!(rq.flags & WK_H1_KEEPALIVE)) {
        c->flags |= WK_C_F_CLOSE;
    }
    if (rq.flags & WK_H1_HEAD) {
        c->tflags |= WK_T_HEAD_REQ;
    }
    if (rq.flags & WK_H1_UPGRADE) {
        c->tflags |= WK_T_UPGRADE;
    }
    resolve_client(c, hd);
    if (rq.flags & WK_H1_IDEMPOTENT) {
        c->tflags |= WK_T_IDEMPOTENT;
    }
    /* The body's framing, decided here from the checked headers. */
    c->tx->req_chunked = rq.chunked;
    c->tx->req_left = 0;
    if (c->tx->req_chunked) {
        wk_h1_chunk_init(&c->tx->rqc, (uint32_t)s->limits.max_header_bytes);
    } else if (clen != ULLONG_MAX) {
        c->tx->req_left = clen;
    }
    if (!c->tx->req_chunked && c->tx->req_left == 0) {
        c->tflags |= WK_T_REQ_DONE;
    }
    c->body_off = c->parsed_off = c->send_off = c->in.start + (uint32_t)hlen;
    c->state = WK_CS_PROXY;

    ridx = shm_route_match(s, nhost, nhlen, rq.path, rq.pathlen, (int)c->method);
    if (ridx == SHM_NONE) {
        return reply_not_found(c, nhost, nhlen, rq.path, rq.pathlen);
    }
    rt = &shm_routes(s)[ridx];
    c->at.service = rt->service;
    svc = csvc(c);
    if (svc->nbackends == 0) {
        char body[1024];
        struct str_buf sb;
        const char *name = shm_s(s, svc->name);
        str_init(&sb, body, sizeof(body));
        str_adds(&sb, "{\"error\":\"Service not deployed\",\"message\":\"Service ");
        str_add_json(&sb, name, svc->name.len);
        str_adds(&sb, " has no backends\",\"hint\":\"Add backends to service ");
        str_add_json(&sb, name, svc->name.len);
        str_adds(&sb, " in the configuration (or in Redis) and reload\"}");
        return reply(c, 404, body, sb.len, 0);
    }
    if (s->limits.max_body_bytes > 0 && clen != ULLONG_MAX && clen > s->limits.max_body_bytes) {
        return reply_error(c, 413, "Payload too large",
                           "Request body exceeds limits.max_body_bytes", F_CLOSE);
    }
    /* Any body bytes that came with the head are checked before a backend sees anything. */
    {
        int r = parse_body(c);
        if (r != 0) {
            return r < 0 ? -1 : 0;
        }
    }
    if (build_upstream_head(c, hd, host, host ? hostlen : 0, rq.target, rq.tlen, rq.slash, clen) != 0) {
        return reply_error(c, 431, "Request header fields too large",
                           "Request head too large to forward", F_CLOSE);
    }
    if ((c->tflags & WK_T_CONTINUE) && !(c->tflags & WK_T_REQ_DONE) && c->vminor >= 1) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (wk_buf_get(&c->out, client_buf_size()) != 0) {
            wk_client_close(c);
            return -1;
        }
        memcpy(c->out.data + c->out.end, cont, sizeof(cont) - 1);
        c->out.end += sizeof(cont) - 1;
    }
    c->tx->body_due_ms = wk.now + BODY_GRACE_MS;
    return upstream_start(c);
}

/* ---- upstream attempts ---------------------------------------------------------------------- */
static int upstream_connect(struct wk_client *c)
{
    const struct shm_backend *be = cbe(c);
    struct wk_pool *p = &wk.pools[be->rt_slot];
    struct wk_upstream *u;
    struct sockaddr_storage ss;
    socklen_t sl;
    struct epoll_event ev;
    int one = 1;

    while (p->head != NULL) {
        u = p->head;
        if (u->pass == wk.pass && !wk.batch_full) {
            /* Rather one pooled before this batch, which needs no look at its socket (below). */
            struct wk_upstream *o = u->pnext;
            for (int i = 0; o != NULL && i < 8; i++, o = o->pnext) {
                if (o->pass != wk.pass) {
                    u = o;
                    break;
                }
            }
        }
        pool_remove(u);
        wk_timer_disarm(&u->timer);
        if (xp_is_tls(&u->xp) != ((csvc(c)->tls & SHM_SVC_TLS_ON) != 0)) {
            upstream_close(u); /* pooled before a reload switched TLS on or off */
            continue;
        }
        /* Input on an idle pooled connection closes it when its event is handled. Pooled
         * before the last epoll_wait(), anything that arrived since it was put back has its
         * event in this batch (handled already, or caught by wk_upstream_event() as older than
         * the reuse); pooled during this batch, or with events left over in the kernel, only
         * a look at the socket can tell. A request that must never be sent twice always gets
         * that look: a close already waiting there would otherwise cost it a 502. */
        if (u->pass == wk.pass || wk.batch_full || !(c->tflags & WK_T_IDEMPOTENT)) {
            if (upstream_pending(u)) {
                upstream_close(u);
                continue;
            }
            /* Seen empty now: an event of this batch may announce bytes that were read before
             * the connection was pooled, and is no sign of anything stale. */
            u->pass = 0;
        } else {
            u->pass = wk.pass;
        }
        u->client = c;
        u->flags |= WK_UP_F_REUSED;
        c->up = u;
        return 0;
    }
    u = calloc(1, sizeof(*u));
    if (u == NULL) {
        return -1;
    }
    u->ev.kind = WK_EV_UPSTREAM;
    u->timer.owner = &u->ev;
    u->be_slot = be->rt_slot;
    u->client = c;
    memset(&ss, 0, sizeof(ss));
    if (be->family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(be->port);
        memcpy(&s6->sin6_addr, be->ip, 16);
        sl = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(be->port);
        memcpy(&s4->sin_addr, be->ip, 4);
        sl = sizeof(*s4);
    }
    xp_init(&u->xp, socket(be->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (u->xp.fd == -1) {
        /* Out of descriptors, every request would say so: once a second is enough (the
         * client gets its 503 at once either way). */
        static uint64_t logged_ms;
        if (logged_ms == 0 || wk.now - logged_ms >= 1000) {
            logged_ms = wk.now;
            log_errno(LOG_ERROR, errno, "socket() for backend %s failed",
                      shm_s(c->at.gen->snap, be->address));
        }
        free(u);
        return -1;
    }
    setsockopt(u->xp.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = u;
    if (epoll_ctl(wk.epfd, EPOLL_CTL_ADD, u->xp.fd, &ev) == -1) {
        log_errno(LOG_ERROR, errno, "epoll_ctl(ADD upstream) failed");
        xp_close(&u->xp, 0);
        free(u);
        return -1;
    }
    c->up = u;
    if (csvc(c)->tls & SHM_SVC_TLS_ON) {
        struct ssl_st *ssl = wk_tls_client_new(u->xp.fd, c->at.gen->tls, c->at.service, be);
        if (ssl == NULL) {
            log_error("TLS to backend %s: %s", shm_s(c->at.gen->snap, be->address), wk_tls_error());
            return 1;
        }
        xp_start_tls(&u->xp, ssl);
        u->flags |= WK_UP_F_TLSHS; /* the handshake starts once connect() completes */
    }
    if (connect(u->xp.fd, (struct sockaddr *)&ss, sl) == -1) {
        if (errno != EINPROGRESS) {
            return 1; /* refused at once (loopback): a connect failure */
        }
        u->flags |= WK_UP_F_CONNECTING;
    } else {
        u->flags |= WK_UP_F_WRITABLE;
    }
    return 0;
}

static int upstream_failed(struct wk_client *c, int why);

/* Choose a backend and connect (or reuse). Returns 0, or -1 if the client was answered/closed. */
static int upstream_start(struct wk_client *c)
{
    for (;;) {
        char why[256];
        int b = wk_lb_pick(&c->at, why, sizeof(why));
        int r;

        if (b < 0) {
            return reply_error(c, 503, "Service unavailable", why, 0);
        }
        c->at.backend = (uint32_t)b;
        if (b < 64) {
            c->at.tried |= 1ull << b;
        }
        c->at.tries++;
        c->tflags &= ~(WK_T_UP_WRITTEN | WK_T_RESP_BYTES | WK_T_RESP_WAIT | WK_T_EARLY);
        c->tx->ninterim = 0;
        c->tx->interim_bytes = 0;
        c->send_off = c->body_off;
        c->tx->uout.start = 0;
        r = upstream_connect(c);
        if (r < 0) {
            return reply_error(c, 503, "Service unavailable", "Out of resources", 0);
        }
        __atomic_fetch_add(&wk.rt->backends[cbe(c)->rt_slot].active, 1, __ATOMIC_RELAXED);
        c->tflags |= WK_T_COUNTED;
        if (r == 1) {
            if (upstream_failed(c, WK_FAIL_CONNECT) != 0) {
                return -1;
            }
            return 0; /* upstream_failed started the next attempt */
        }
        set_timer(c);
        return 0;
    }
}

/* The current attempt failed. Retry where the rules allow, else answer 502/504. Returns 0 when
 * a new attempt is running, -1 when the client was answered or closed. */
static int upstream_failed(struct wk_client *c, int why)
{
    const struct shm_service *svc = csvc(c);
    const struct shm_backend *be = cbe(c);
    int reused = c->up != NULL && (c->up->flags & WK_UP_F_REUSED);
    int lb_why = why;
    int can_retry = 0;
    char msg[256];

    if (why == WK_FAIL_RESET && reused) {
        lb_why = WK_FAIL_STALE;
    } else if (why == WK_FAIL_RESET && c->up != NULL) {
        /* An RST leaves the socket CLOSED, a FIN leaves it in CLOSE_WAIT: only the former says
         * the backend died or aborted, which passive health acts on at once. */
        struct tcp_info ti;
        socklen_t tl = sizeof(ti);
        if (getsockopt(c->up->xp.fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
            ti.tcpi_state == TCP_CLOSE) {
            lb_why = WK_FAIL_ABORT;
        }
    }
    wk_lb_result(&c->at, lb_why, 0);
    detach_upstream(c);
    /* Only while the client has seen nothing and the request can still be replayed whole. */
    if (!(c->tflags & (WK_T_RESP_BYTES | WK_T_CLIENT_SENT | WK_T_RESP_HEAD | WK_T_BODY_LOST))) {
        if (!(c->tflags & WK_T_UP_WRITTEN)) {
            /* Nothing reached the backend (refused, connect timeout, a pooled connection dead at
             * the first write): any method may go elsewhere. */
            can_retry = reused ? 2 : 1;
        } else if (why == WK_FAIL_RESET && (c->tflags & WK_T_IDEMPOTENT)) {
            /* The backend may have acted on it: idempotent methods only. A reused keep-alive
             * connection that the backend closed while idle gets a retry that does not count. */
            can_retry = reused ? 2 : 1;
        }
        /* Anything else may have been acted on, and a non-idempotent request is never sent
         * twice, not even after a keep-alive race. */
    }
    if (can_retry == 2) {
        c->at.tried &= c->at.backend < 64 ? ~(1ull << c->at.backend) : ~0ull;
        c->at.tries--;
    }
    if (can_retry && c->at.tries <= svc->retries && c->at.tries < 64 && wk_lb_can_retry(&c->at)) {
        return upstream_start(c);
    }
    switch (why) {
    case WK_FAIL_CONNECT:
        snprintf(msg, sizeof(msg), "Backend %s refused the connection", shm_s(c->at.gen->snap, be->address));
        return reply_error(c, 502, "Bad gateway", msg, 0);
    case WK_FAIL_CTIMEOUT:
        snprintf(msg, sizeof(msg), "Connecting to backend %s timed out", shm_s(c->at.gen->snap, be->address));
        return reply_error(c, 504, "Gateway timeout", msg, 0);
    case WK_FAIL_RTIMEOUT:
        snprintf(msg, sizeof(msg), "Backend %s did not answer within %u ms",
                 shm_s(c->at.gen->snap, be->address), svc->response_timeout_ms);
        return reply_error(c, 504, "Gateway timeout", msg, 0);
    case WK_FAIL_RESET:
        snprintf(msg, sizeof(msg), "Backend %s closed the connection without a response",
                 shm_s(c->at.gen->snap, be->address));
        return reply_error(c, 502, "Bad gateway", msg, 0);
    default:
        snprintf(msg, sizeof(msg), "Backend %s sent an invalid response",
                 shm_s(c->at.gen->snap, be->address));
        return reply_error(c, 502, "Bad gateway", msg, 0);
    }
}

/* ---- response parsing ----------------------------------------------------------------------- */
static int resp_bodyless(const struct wk_client *c, unsigned status)
{
    return wk_h1_bodyless((c->tflags & WK_T_HEAD_REQ) != 0, status);
}

/* Build the client response head for the parsed upstream head. Returns 0 or -1. */
static int build_client_head(struct wk_client *c, const struct wk_h1_resp *rs)
{
    unsigned status = rs->status;
    size_t n;
    int chunked = rs->chunked;
    int client10 = c->vmajor == 1 && c->vminor == 0;
    int close_it = (c->flags & WK_C_F_CLOSE) || !(c->tflags & WK_T_REQ_DONE) || wk.stopping;
    int bodyless = resp_bodyless(c, status);
    /* 204 (and 1xx) must not carry framing headers at all; HEAD and 304 may keep the
     * Content-Length of the body they do not have. */
    int no_framing = status == 204 || status < 200;

    if (status == 101) {
        close_it = 0;
    }

    if (!bodyless) {
        if (chunked && client10) {
            c->tflags |= WK_T_DECHUNK;
            close_it = 1;
        } else if (!chunked && !rs->has_clen) {
            close_it = 1; /* delimited by EOF */
        }
    }
    if (close_it) {
        c->flags |= WK_C_F_CLOSE;
    }
    if (wk_buf_get(&c->out, client_buf_size()) != 0) {
        return -1;
    }
    n = wk_h1_write_response(c->out.data + c->out.end, c->out.cap - c->out.end, rs,
                             chunked && !(c->tflags & WK_T_DECHUNK) &&
                                 !(bodyless && (no_framing || client10)),
                             c->tx->reqid, c->tx->reqid_len,
                             status == 101 ? WK_H1_CONN_UPGRADE
                             : close_it    ? WK_H1_CONN_CLOSE
                             : client10    ? WK_H1_CONN_KEEPALIVE
                                           : WK_H1_CONN_NONE);
    if (n == 0) {
        return -1;
    }
    c->out.end += (uint32_t)n;
    c->status = (uint16_t)status;
    return 0;
}

/* Forward an interim 1xx response (other than 100, which we answer ourselves) to a 1.1 client. */
static int forward_interim(struct wk_client *c, unsigned status, const char *head, size_t hlen)
{
    if (status == 100 || c->vminor == 0) {
        return 0;
    }
    if (wk_buf_get(&c->out, client_buf_size()) != 0 || hlen > c->out.cap - c->out.end) {
        return -1;
    }
    memcpy(c->out.data + c->out.end, head, hlen);
    c->out.end += (uint32_t)hlen;
    return 0;
}

/* Consume what the upstream sent. Returns 0, or -1 if the client was answered or closed. */
static int parse_response(struct wk_client *c)
{
    struct wk_h1_resp rs; /* the response head, for this call only */

    if (c->tflags & WK_T_TUNNEL) {
        c->tx->rready_off = c->tx->rparsed_off = c->tx->uin.end;
        return 0;
    }
    while (!(c->tflags & WK_T_RESP_HEAD)) {
        const char *base = c->tx->uin.data + c->tx->uin.start;
        size_t avail = c->tx->uin.end - c->tx->uin.start;
        size_t hlen;

        if (avail == 0) {
            return 0;
        }
        hlen = wk_h1_head_end(base, avail, 0);
        if (hlen == 0) {
            if (avail >= c->tx->uin.cap) {
                return upstream_failed(c, WK_FAIL_BAD); /* a head larger than the buffer */
            }
            return 0;
        }
        c->tflags &= ~WK_T_RESP_DONE;
        if (wk_h1_parse_response(&c->tx->rs, base, hlen, (c->tflags & WK_T_HEAD_REQ) != 0,
                                 &rs) != 0) {
            return upstream_failed(c, WK_FAIL_BAD);
        }
        if (rs.status == 101 && (c->tflags & WK_T_UPGRADE)) {
            /* Switching protocols: from here on both directions are opaque bytes. */
            if (build_client_head(c, &rs) != 0) {
                return upstream_failed(c, WK_FAIL_BAD);
            }
            /* (The tokenizer calls a 101 a complete message; the tunnel ends only with a
             * close.) */
            c->tflags |= WK_T_RESP_HEAD | WK_T_TUNNEL;
            c->tx->rsend_off = c->tx->uin.start + (uint32_t)hlen;
            c->tx->rready_off = c->tx->rparsed_off = c->tx->uin.end;
            c->send_off = c->parsed_off; /* nothing of the request is left unsent */
            c->parsed_off = c->in.end;   /* bytes after the upgrade request are tunnel data */
            set_timer(c);
            return 0;
        }
        if (rs.status < 200) {
            if (rs.status == 101) {
                /* A switch of protocols nobody asked for is a protocol error. */
                return upstream_failed(c, WK_FAIL_BAD);
            }
            /* Interim responses are bounded in number and size: a backend that trickles them
             * without end holds nothing for long. */
            c->tx->interim_bytes += (uint32_t)hlen;
            if (++c->tx->ninterim > WK_MAX_INTERIM || c->tx->interim_bytes > UPSTREAM_BUF_SIZE) {
                return upstream_failed(c, WK_FAIL_BAD);
            }
            if (forward_interim(c, rs.status, base, hlen) != 0) {
                return upstream_failed(c, WK_FAIL_BAD);
            }
            /* The tokenizer completed a message, but the response is still to come: the final
             * head may be a while (103 Early Hints), and must not find the exchange over. */
            c->tx->uin.start += (uint32_t)hlen;
            continue;
        }
        if (c->tx->rs.done) {
            c->tflags |= WK_T_RESP_DONE;
        }
        c->tx->rhead_at = c->out.end;
        if (build_client_head(c, &rs) != 0) {
            return upstream_failed(c, WK_FAIL_BAD);
        }
        if (!(c->tflags & WK_T_REQ_DONE) || c->send_off != c->parsed_off ||
            c->tx->uout.start != c->tx->uout.end) {
            /* The backend answered before it had the whole request (an early 413, say): what
             * it makes of the rest cannot be known, so the connection is never reused. */
            c->tflags |= WK_T_EARLY;
        }
        c->tflags |= WK_T_RESP_HEAD;
        c->tx->rparsed_off = c->tx->rsend_off = c->tx->rready_off = c->tx->uin.start + (uint32_t)hlen;
        /* A chunked body goes through the strict decoder, not http-parser: only validated
         * bytes are relayed (or decoded for HTTP/1.0 clients). */
        c->tx->resp_chunked = !(c->tflags & WK_T_RESP_DONE) && rs.chunked;
        if (c->tx->resp_chunked) {
            /* (A trailer line must fit the upstream buffer with room to spare.) */
            wk_h1_chunk_init(&c->tx->rsc, (uint32_t)DSP_MIN(c->at.gen->snap->limits.max_header_bytes,
                                                         UPSTREAM_BUF_SIZE / 2));
        }
    }
    if (c->tx->resp_chunked && !(c->tflags & WK_T_RESP_DONE)) {
        uint32_t scan = c->tx->rparsed_off + c->tx->rsc.pend;
        while (scan < c->tx->uin.end) {
            size_t used, dl;
            int r = wk_h1_chunk_parse(&c->tx->rsc, c->tx->uin.data + scan, c->tx->uin.end - scan,
                                   &used, &dl);
            if (r == WK_CHUNK_ERROR) {
                log_warn("backend %s sent an invalid chunked body: %s",
                         shm_s(c->at.gen->snap, cbe(c)->address), c->tx->rsc.err);
                if (!(c->tflags & WK_T_CLIENT_SENT)) {
                    /* Nothing of it reached the client yet: take the queued head back and
                     * answer 502 instead. */
                    c->out.end = c->tx->rhead_at;
                    c->tflags &= ~(WK_T_RESP_HEAD | WK_T_DECHUNK);
                    return upstream_failed(c, WK_FAIL_BAD);
                }
                wk_client_close(c);
                return -1;
            }
            if (r == WK_CHUNK_DATA && (c->tflags & WK_T_DECHUNK)) {
                /* Decoded bytes never overtake the raw ones, so decoding in place is safe. */
                memmove(c->tx->uin.data + c->tx->rready_off,
                        c->tx->uin.data + scan + used - dl, dl);
                c->tx->rready_off += (uint32_t)dl;
            }
            scan += (uint32_t)used;
            c->tx->rparsed_off = scan - c->tx->rsc.pend;
            if (!(c->tflags & WK_T_DECHUNK)) {
                c->tx->rready_off = c->tx->rparsed_off;
            }
            if (r == WK_CHUNK_DONE) {
                c->tflags |= WK_T_RESP_DONE;
                break;
            }
        }
    } else if (!(c->tflags & WK_T_RESP_DONE) && c->tx->rparsed_off < c->tx->uin.end) {
        long n = wk_h1_body(&c->tx->rs, c->tx->uin.data + c->tx->rparsed_off,
                            c->tx->uin.end - c->tx->rparsed_off);
        if (c->tx->rs.done) {
            c->tflags |= WK_T_RESP_DONE;
        }
        if (n < 0) {
            /* Garbage in the middle of a response we already started relaying. */
            wk_client_close(c);
            return -1;
        }
        c->tx->rparsed_off += (uint32_t)n;
        if (!(c->tflags & WK_T_DECHUNK)) {
            c->tx->rready_off = c->tx->rparsed_off;
        }
    }
    return 0;
}

/* ---- I/O steps: each returns 1 on progress, 0 when blocked, -1 when the client is gone ------ */
static int client_read(struct wk_client *c)
{
    ssize_t n;

    /* OpenSSL may hold bytes the socket no longer announces: read ahead by a handshake step
     * that ran on a write edge. Edge-triggered epoll reports readiness as of when the event is
     * fetched, so once such bytes left the socket no read edge will come for them. */
    if (!(c->flags & WK_C_F_READABLE) && xp_pending(&c->xp)) {
        c->flags |= WK_C_F_READABLE;
    }
    if (!(c->flags & WK_C_F_READABLE) || (c->flags & WK_C_F_EOF)) {
        return 0;
    }
    if (c->in.data == NULL && wk_buf_get(&c->in, client_buf_size()) != 0) {
        wk_client_close(c);
        return -1;
    }
    if (c->in.end == c->in.cap) {
        if (c->state == WK_CS_PROXY && (!(c->tflags & WK_T_REQ_DONE) || (c->tflags & WK_T_TUNNEL)) &&
            c->send_off > c->in.start) {
            /* Streaming a body: drop what the upstream already has. */
            uint32_t shift = c->send_off;
            if (c->send_off > c->body_off) {
                c->tflags |= WK_T_BODY_LOST;
            }
            memmove(c->in.data, c->in.data + shift, c->in.end - shift);
            c->in.end -= shift;
            c->parsed_off -= shift;
            c->send_off = 0;
            c->in.start = 0;
            c->body_off = c->body_off > shift ? c->body_off - shift : 0;
        } else if ((c->state == WK_CS_IDLE || c->state == WK_CS_HEAD) && c->in.start > 0) {
            memmove(c->in.data, c->in.data + c->in.start, c->in.end - c->in.start);
            c->in.end -= c->in.start;
            c->in.start = 0;
        }
        if (c->in.end == c->in.cap) {
            if (c->state == WK_CS_PROXY) {
                c->tflags |= WK_T_BODY_STALL; /* we hold the body back, not the client */
            }
            return 0;
        }
    }
    n = xp_read(&c->xp, c->in.data + c->in.end, c->in.cap - c->in.end);
    if (n == XP_WANT_READ) {
        c->flags &= ~WK_C_F_READABLE;
        if (c->state == WK_CS_IDLE || c->state == WK_CS_HEAD) {
            xp_ticket_now(&c->xp); /* (a request in progress: its response takes it) */
        }
        return 0;
    }
    if (n == XP_WANT_WRITE) {
        c->flags &= ~WK_C_F_WRITABLE; /* retried on the write edge; READABLE stays set */
        return 0;
    }
    if (n == XP_ERR) {
        wk_client_close(c);
        return -1;
    }
    /* Edge-triggered: a read that emptied the socket means new bytes bring a new edge, so the
     * read that would only say "again" is skipped. Not when a FIN is already pending: it came
     * with this edge and no other will announce it. */
    if (n > 0 && !(c->flags & WK_C_F_RDHUP) && xp_drained(&c->xp)) {
        c->flags &= ~WK_C_F_READABLE;
    }
    if (n > 0) {
        c->in.end += (uint32_t)n;
        if (c->state == WK_CS_PROXY && !(c->tflags & WK_T_REQ_DONE) && body_rate_on(c)) {
            body_credit(c, (size_t)n);
        }
        return 1;
    }
    c->flags |= WK_C_F_EOF;
    return 1;
}

/* Does what client_write() is about to offer end the response, on a connection that closes
 * after it? (Flags that never clear within a transaction; a close decided only by an
 * unfinished request body is left out, as that body may still complete.) */
static int ends_and_closes(const struct wk_client *c)
{
    if (!((c->flags & (WK_C_F_CLOSE | WK_C_F_HUP)) || wk.stopping)) {
        return 0;
    }
    return c->state == WK_CS_REPLY ||
           (c->state == WK_CS_PROXY && (c->tflags & WK_T_RESP_DONE) &&
            !(c->tflags & WK_T_TUNNEL));
}

/* The client's socket is full with more to send: from now on it has limits.send_timeout_ms to
 * take something, whatever the backend does meanwhile (the backend is not read while our buffer
 * for this client is full, so memory stays bounded). */
static void send_blocked(struct wk_client *c)
{
    if (c->state == WK_CS_PROXY && !(c->tflags & WK_T_SEND_WAIT)) {
        c->tflags = (c->tflags & ~WK_T_RATE_TICK) | WK_T_SEND_WAIT;
        wk_timer_arm(&c->timer, csnap(c)->limits.send_timeout_ms);
    }
}

static int client_write(struct wk_client *c)
{
    struct iovec iov[2];
    int niov = 0;
    ssize_t n;
    size_t first = 0;

    if (c->out.end > c->out.start) {
        iov[niov].iov_base = c->out.data + c->out.start;
        iov[niov].iov_len = first = c->out.end - c->out.start;
        niov++;
    }
    if ((c->tflags & WK_T_RESP_HEAD) && c->tx->rready_off > c->tx->rsend_off && c->state == WK_CS_PROXY) {
        iov[niov].iov_base = c->tx->uin.data + c->tx->rsend_off;
        iov[niov].iov_len = c->tx->rready_off - c->tx->rsend_off;
        niov++;
    }
    if (niov == 0 || !(c->flags & WK_C_F_WRITABLE)) {
        return 0;
    }
    if (c->tx != NULL && !(c->tflags & WK_T_TALLIED)) {
        /* What is offered now ends the response: count it before the client can see it. */
        if (c->state == WK_CS_REPLY && c->at.gen != NULL) {
            request_tally(c, 0);
        } else if (c->state == WK_CS_PROXY && (c->tflags & WK_T_RESP_DONE) &&
                   !(c->tflags & WK_T_TUNNEL)) {
            request_tally(c, 1);
        }
    }
    /* The last bytes before a close are corked: the FIN (and close_notify) join them. */
    n = xp_writev(&c->xp, iov, niov, ends_and_closes(c));
    if (n == XP_WANT_WRITE) {
        c->flags &= ~WK_C_F_WRITABLE;
        send_blocked(c);
        return 0;
    }
    if (n == XP_WANT_READ) {
        return 0; /* retried on the next edge */
    }
    if (n < 0) {
        wk_client_close(c);
        return -1;
    }
    c->tflags &= ~WK_T_SEND_WAIT; /* it drains: the caller's set_timer() re-arms as usual */
    if (c->tflags & WK_T_RESP_HEAD) {
        c->tflags |= WK_T_CLIENT_SENT;
    }
    if (c->tx != NULL) {
        c->tx->bytes_sent += (uint64_t)n;
    }
    if ((size_t)n <= first) {
        c->out.start += (uint32_t)n;
    } else {
        c->out.start = c->out.end;
        c->tx->rsend_off += (uint32_t)((size_t)n - first);
    }
    if (c->out.start == c->out.end) {
        c->out.start = c->out.end = 0;
    }
    return 1;
}

/* TLS to a backend: the handshake after connect() (under the connect timeout). Returns 1 on
 * progress (done, or a new attempt started after a failure), 0 when blocked, -1 when the client
 * was answered or closed. Done only counts as progress so that the caller's loop comes back to
 * write the request: the write edge may already have been used up. */
static int upstream_handshake(struct wk_client *c)
{
    struct wk_upstream *u = c->up;
    int r;

    if (!(u->flags & (WK_UP_F_READABLE | WK_UP_F_WRITABLE))) {
        return 0;
    }
    r = xp_handshake(&u->xp);
    if (r == 1) {
        u->flags &= ~WK_UP_F_TLSHS;
        set_timer(c);
        return 1;
    }
    if (r == XP_WANT_READ) {
        u->flags &= ~WK_UP_F_READABLE;
        return 0;
    }
    if (r == XP_WANT_WRITE) {
        u->flags &= ~WK_UP_F_WRITABLE;
        return 0;
    }
    wk_tls_forget(u->xp.ssl);
    log_warn("TLS handshake with backend %s failed: %s", shm_s(c->at.gen->snap, cbe(c)->address),
             xp_error());
    /* Nothing of the request reached the backend: as retryable as a refused connection. */
    return upstream_failed(c, WK_FAIL_CONNECT) == 0 ? 1 : -1;
}

static int upstream_write(struct wk_client *c)
{
    struct wk_upstream *u = c->up;
    struct iovec iov[2];
    int niov = 0;
    ssize_t n;
    size_t first = 0;

    if (u != NULL && (u->flags & WK_UP_F_TLSHS) && !(u->flags & WK_UP_F_CONNECTING)) {
        return upstream_handshake(c);
    }
    if (u == NULL || (u->flags & WK_UP_F_CONNECTING) || !(u->flags & WK_UP_F_WRITABLE)) {
        return 0;
    }
    if (u->flags & WK_UP_F_WERR) {
        /* The backend is gone for writing but answered first (an early 413): the rest of the
         * request has nowhere to go. Consumed and dropped while that answer is relayed; the
         * client connection closes after it. */
        if (c->parsed_off > c->send_off || c->tx->uout.end > c->tx->uout.start) {
            c->tflags |= WK_T_BODY_LOST;
        }
        c->tx->uout.start = c->tx->uout.end;
        c->send_off = c->parsed_off;
        return 0;
    }
    if (c->tx->uout.end > c->tx->uout.start) {
        iov[niov].iov_base = c->tx->uout.data + c->tx->uout.start;
        iov[niov].iov_len = first = c->tx->uout.end - c->tx->uout.start;
        niov++;
    }
    if (c->parsed_off > c->send_off) {
        iov[niov].iov_base = c->in.data + c->send_off;
        iov[niov].iov_len = c->parsed_off - c->send_off;
        niov++;
    }
    if (niov == 0) {
        return 0;
    }
    n = xp_writev(&u->xp, iov, niov, 0);
    if (n == XP_WANT_WRITE) {
        u->flags &= ~WK_UP_F_WRITABLE;
        return 0;
    }
    if (n == XP_WANT_READ) {
        return 0;
    }
    if (n < 0) {
        /* Reset or closed (EPIPE, ECONNRESET): a backend that rejects an upload answers and
         * closes without reading the body. What it sent before is still in the socket: read
         * it (upstream_read() fails the attempt if there is nothing). */
        u->flags |= WK_UP_F_WERR | WK_UP_F_READABLE | WK_UP_F_HUP;
        return 1;
    }
    c->tflags |= WK_T_UP_WRITTEN;
    if (!xp_is_tls(&u->xp) && (size_t)n < first + (niov > 1 ? iov[1].iov_len : 0)) {
        /* Short write: the socket buffer is full. (Not so for TLS, which writes a record at a
         * time.) */
        u->flags &= ~WK_UP_F_WRITABLE;
    }
    if ((size_t)n <= first) {
        c->tx->uout.start += (uint32_t)n;
    } else {
        c->tx->uout.start = c->tx->uout.end;
        c->send_off += (uint32_t)((size_t)n - first);
    }
    return 1;
}

static void record_outcome(struct wk_client *c);

/* Make room in c->tx->uin by dropping bytes already sent to the client. */
static void uin_compact(struct wk_client *c)
{
    uint32_t keep_ready = c->tx->rready_off - c->tx->rsend_off;
    uint32_t raw = c->tx->uin.end - c->tx->rparsed_off;

    if (!(c->tflags & WK_T_RESP_HEAD)) {
        if (c->tx->uin.start > 0) {
            memmove(c->tx->uin.data, c->tx->uin.data + c->tx->uin.start, c->tx->uin.end - c->tx->uin.start);
            c->tx->uin.end -= c->tx->uin.start;
            c->tx->uin.start = 0;
        }
        return;
    }
    if (c->tx->rsend_off == 0 && c->tx->rready_off == c->tx->rparsed_off) {
        return;
    }
    memmove(c->tx->uin.data, c->tx->uin.data + c->tx->rsend_off, keep_ready);
    memmove(c->tx->uin.data + keep_ready, c->tx->uin.data + c->tx->rparsed_off, raw);
    c->tx->uin.start = 0;
    c->tx->rsend_off = 0;
    c->tx->rready_off = keep_ready;
    c->tx->rparsed_off = keep_ready;
    c->tx->uin.end = keep_ready + raw;
}

static int upstream_read(struct wk_client *c)
{
    struct wk_upstream *u = c->up;
    ssize_t n;

    if (u != NULL && (u->flags & WK_UP_F_TLSHS) && !(u->flags & WK_UP_F_CONNECTING)) {
        return upstream_handshake(c);
    }
    if (u != NULL && !(u->flags & (WK_UP_F_READABLE | WK_UP_F_CONNECTING)) &&
        xp_pending(&u->xp)) {
        u->flags |= WK_UP_F_READABLE; /* read ahead on a write edge: see client_read() */
    }
    if (u == NULL || (u->flags & WK_UP_F_CONNECTING) || !(u->flags & WK_UP_F_READABLE)) {
        return 0;
    }
    if ((c->tflags & (WK_T_RESP_DONE | WK_T_TUNNEL)) == WK_T_RESP_DONE) {
        /* The response is complete: anything more answers nothing. Left in the socket, where
         * finish() sees it (READABLE stays set) and keeps the connection out of the pool. */
        return 0;
    }
    if (c->tx->uin.data == NULL) {
        if (wk_buf_get(&c->tx->uin, UPSTREAM_BUF_SIZE) != 0) {
            wk_client_close(c);
            return -1;
        }
    }
    if ((c->tflags & WK_T_RESP_HEAD) && c->tx->rsend_off == c->tx->rready_off &&
        c->tx->rparsed_off == c->tx->uin.end) {
        c->tx->uin.start = c->tx->uin.end = c->tx->rsend_off = c->tx->rready_off = c->tx->rparsed_off = 0;
    }
    if (c->tx->uin.end == c->tx->uin.cap) {
        uin_compact(c);
        if (c->tx->uin.end == c->tx->uin.cap) {
            return 0;
        }
    }
    n = xp_read(&u->xp, c->tx->uin.data + c->tx->uin.end, c->tx->uin.cap - c->tx->uin.end);
    if (n > 0) {
        /* Edge-triggered: a read that drained the socket means new data brings a new edge, so
         * skip the read that would only say "again" (xp_drained() knows for TLS too). Not when
         * epoll reported the peer's FIN or an error: it came with this edge and no other will
         * announce it. */
        if (xp_drained(&u->xp) && !(u->flags & WK_UP_F_HUP)) {
            u->flags &= ~WK_UP_F_READABLE;
        }
        c->tx->uin.end += (uint32_t)n;
        c->tflags |= WK_T_RESP_BYTES;
        return 1;
    }
    if (n == XP_WANT_WRITE) {
        u->flags &= ~WK_UP_F_WRITABLE;
        return 0;
    }
    if (n == XP_WANT_READ) {
        u->flags &= ~WK_UP_F_READABLE;
        if (!(u->flags & WK_UP_F_WERR)) {
            return 0;
        }
        n = 0; /* a failed write ended the connection: nothing more will come */
    }
    /* EOF or reset from the backend. */
    if (c->tflags & WK_T_TUNNEL) {
        u->flags &= ~WK_UP_F_READABLE;
        c->tflags |= WK_T_UP_EOF;
        return 1;
    }
    if (!(c->tflags & WK_T_RESP_HEAD)) {
        if (c->tx->uin.end > c->tx->uin.start) {
            return upstream_failed(c, WK_FAIL_BAD) == 0 ? 1 : -1;
        }
        return upstream_failed(c, WK_FAIL_RESET) == 0 ? 1 : -1;
    }
    if (!(c->tflags & WK_T_RESP_DONE)) {
        if (n == 0) {
            /* An EOF-delimited body ends here; any other framing was cut short. */
            wk_h1_body_eof(&c->tx->rs);
            if (c->tx->rs.done) {
                c->tflags |= WK_T_RESP_DONE;
            }
        }
        if (!(c->tflags & WK_T_RESP_DONE)) {
            if (c->tflags & WK_T_EARLY) {
                /* An early answer to a request it did not wait for (an upload rejected with
                 * 413), cut by the backend's reset: the backend answered, it did not fail. */
                record_outcome(c);
            }
            wk_client_close(c);
            return -1;
        }
    }
    c->up->flags &= ~WK_UP_F_READABLE;
    c->up->flags |= WK_UP_F_HUP;
    return 1;
}

/* Tell balancing/health/circuit state how the attempt went, once. */
static void record_outcome(struct wk_client *c)
{
    if (!(c->tflags & WK_T_LB_DONE)) {
        c->tflags |= WK_T_LB_DONE;
        wk_lb_result(&c->at, 0, c->status);
    }
}

/* The response is out: account, recycle the upstream, and go on with the next request. */
static int finish(struct wk_client *c)
{
    struct wk_upstream *u = c->up;
    int reusable;

    record_outcome(c);
    request_done(c, 1);
    /* Reused only at an exact message boundary with nothing pending (SPEC, Proxying): the
     * request went out whole before the answer began, the response ended where the parser
     * stopped, nothing past it is buffered, and the socket holds nothing either. A read that
     * came back short emptied the socket (any later byte brings an event that closes the idle
     * connection); otherwise one look tells. */
    reusable = u != NULL && !(u->flags & (WK_UP_F_HUP | WK_UP_F_WERR)) &&
               (c->tflags & (WK_T_TUNNEL | WK_T_EARLY | WK_T_RESP_DONE | WK_T_REQ_DONE)) ==
                   (WK_T_RESP_DONE | WK_T_REQ_DONE) &&
               wk_h1_keep_alive(&c->tx->rs) && c->send_off == c->parsed_off &&
               c->tx->uout.start == c->tx->uout.end && c->tx->rparsed_off == c->tx->uin.end;
    if (reusable && (u->flags & WK_UP_F_READABLE)) {
        reusable = !upstream_pending(u);
        u->flags &= (uint8_t)~WK_UP_F_READABLE;
    }
    if (reusable) {
        backend_active_dec(c);
        c->up = NULL;
        pool_put(u);
    }
    return 0;
}

/* Back to waiting for the next request on a kept-alive connection, or close. Returns -1 if the
 * client was closed. */
static int next_request(struct wk_client *c)
{
    int close_it = (c->flags & (WK_C_F_CLOSE | WK_C_F_HUP)) || wk.stopping ||
                   !(c->tflags & WK_T_REQ_DONE);

    end_transaction(c);
    if (close_it) {
        if (c->in.data != NULL && c->in.end > c->parsed_off && !(c->flags & WK_C_F_HUP)) {
            /* Unread input would turn our close into a reset that can destroy the response on
             * its way: shut down writing and drain for a moment instead. */
            xp_shutdown(&c->xp);
            c->state = WK_CS_LINGER;
            set_timer(c);
            return 0;
        }
        if (!(c->flags & WK_C_F_HUP) && !(c->tflags & WK_T_REQ_DONE)) {
            xp_shutdown(&c->xp);
            c->state = WK_CS_LINGER;
            set_timer(c);
            return 0;
        }
        wk_client_close(c);
        return -1;
    }
    c->in.start = c->parsed_off;
    c->tflags = 0;
    c->at.flags = 0;
    c->at.service = SHM_NONE;
    c->status = 0;
    wk_buf_put(&c->out);
    if (c->in.start == c->in.end) {
        wk_buf_put(&c->in);
    }
    c->state = WK_CS_IDLE;
    set_timer(c);
    return 0;
}

/* One pass of an upgraded connection: bytes both ways until either side closes, then close
 * both once what the closing side sent has been delivered. Returns 1, 0 or -1 (closed). */
static int tunnel_step(struct wk_client *c)
{
    int progress = 0, r;

    r = client_read(c);
    if (r < 0) {
        return -1;
    }
    progress |= r;
    if (c->in.data != NULL) {
        c->parsed_off = c->in.end;
    }
    r = upstream_write(c);
    if (r < 0) {
        return -1;
    }
    progress |= r;
    if (c->state != WK_CS_PROXY || c->up == NULL) {
        return 1;
    }
    r = upstream_read(c);
    if (r < 0) {
        return -1;
    }
    progress |= r;
    if (c->tx->uin.data != NULL) {
        c->tx->rready_off = c->tx->rparsed_off = c->tx->uin.end;
    }
    r = client_write(c);
    if (r < 0) {
        return -1;
    }
    progress |= r;
    if (((c->tflags & WK_T_UP_EOF) && c->out.start == c->out.end &&
         c->tx->rsend_off == c->tx->rready_off) ||
        ((c->flags & (WK_C_F_EOF | WK_C_F_HUP)) && c->send_off == c->parsed_off)) {
        finish(c);
        wk_client_close(c);
        return -1;
    }
    if (progress) {
        set_timer(c);
    }
    return progress;
}

/* PROXY protocol header: peeked, so that on TLS listeners the ClientHello behind it stays in the
 * socket for OpenSSL; consumed only once complete. Returns 1, 0 or -1 (closed). */
static int read_proxy_header(struct wk_client *c)
{
    uint8_t buf[WK_PP_MAX_V2];
    struct wk_pp_addr pa;
    ssize_t n;
    int len;

    if (!(c->flags & WK_C_F_READABLE)) {
        return 0;
    }
    n = recv(c->xp.fd, buf, sizeof(buf), MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c->flags &= ~WK_C_F_READABLE;
        return 0;
    }
    if (n <= 0) {
        wk_client_close(c);
        return -1;
    }
    len = wk_pp_parse(buf, (size_t)n, &pa);
    if (len < 0) {
        log_debug("malformed PROXY protocol header: closing");
        wk_client_close(c);
        return -1;
    }
    if (len == 0) {
        /* Incomplete: wait for the rest (the peek leaves the bytes queued, so only a new edge
         * can tell us more arrived). */
        c->flags &= ~WK_C_F_READABLE;
        return 0;
    }
    if (recv(c->xp.fd, buf, (size_t)len, 0) != len) {
        wk_client_close(c);
        return -1;
    }
    if (pa.family == AF_INET || pa.family == AF_INET6) {
        c->peer_family = (uint8_t)pa.family;
        memset(c->peer_ip, 0, sizeof(c->peer_ip));
        memcpy(c->peer_ip, pa.src, pa.family == AF_INET ? 4 : 16);
        c->peer_port = pa.src_port;
        c->at.client_family = c->peer_family;
        memcpy(c->at.client_ip, c->peer_ip, 16);
    }
    /* The header timeout armed at accept runs on: the PROXY header, TLS handshake and first
     * request head share it (re-arming here would let a trickled PROXY header double it). */
    c->state = xp_is_tls(&c->xp) ? WK_CS_TLS : WK_CS_IDLE;
    return 1;
}

/* TLS listeners: the handshake, still under the header timeout armed at accept (or after the
 * PROXY header). Returns 1 on progress, 0 when blocked, -1 when the client was closed. */
static int client_handshake(struct wk_client *c)
{
    int r;

    if (!(c->flags & (WK_C_F_READABLE | WK_C_F_WRITABLE))) {
        return 0;
    }
    r = xp_handshake(&c->xp);
    if (r == 1) {
        __atomic_fetch_add(&wk.ctl->tls_handshakes[wk_tls_resumed(c->xp.ssl) ? SHM_TLS_HS_RESUMED
                                                                          : SHM_TLS_HS_FULL],
                           1, __ATOMIC_RELAXED);
        c->state = WK_CS_IDLE;
        return 1;
    }
    if (r == XP_WANT_READ) {
        c->flags &= ~WK_C_F_READABLE;
        return 0;
    }
    if (r == XP_WANT_WRITE) {
        c->flags &= ~WK_C_F_WRITABLE;
        return 0;
    }
    __atomic_fetch_add(&wk.ctl->tls_handshakes[SHM_TLS_HS_FAILED], 1, __ATOMIC_RELAXED);
    log_debug("TLS handshake failed: %s", xp_error());
    wk_client_close(c);
    return -1;
}

static int step_parse_body(struct wk_client *c)
{
    return parse_body(c) < 0 ? -1 : 0;
}

static int step_parse_response(struct wk_client *c)
{
    if (c->tx->uin.data != NULL && parse_response(c) != 0) {
        return -1;
    }
    /* The backend's part is over once its response is complete: count it now, before the last
     * bytes reach the client, whose next request may otherwise meet the old circuit state on
     * another worker. */
    if (c->state == WK_CS_PROXY && (c->tflags & WK_T_RESP_DONE)) {
        record_outcome(c);
    }
    return 0;
}

/* The request/response pump, in order. Each returns 1 on progress, 0 when blocked, -1 when the
 * client is gone; any of them may also end the transaction (an error reply), which ends the pass. */
static int (*const proxy_steps[])(struct wk_client *) = {
    step_parse_body, upstream_write, upstream_read, step_parse_response, client_write,
};

/* One pass of a proxied request. Returns 1, 0 or -1 (the client was closed). */
static int proxy_step(struct wk_client *c)
{
    int progress = 0, r;

    if (!(c->tflags & WK_T_REQ_DONE) || (c->in.data && c->in.end < c->in.cap)) {
        r = client_read(c);
        if (r < 0) {
            return -1;
        }
        progress |= r;
    }
    if ((c->flags & WK_C_F_HUP) ||
        ((c->flags & WK_C_F_EOF) && !(c->tflags & WK_T_REQ_DONE))) {
        /* The client gave up mid-request (or the socket failed): nothing can be answered. */
        wk_client_close(c);
        return -1;
    }
    if (c->flags & WK_C_F_EOF) {
        c->flags |= WK_C_F_CLOSE;
    }
    for (size_t i = 0; i < DSP_ARRAY_SIZE(proxy_steps); i++) {
        r = proxy_steps[i](c);
        if (r < 0) {
            return -1;
        }
        progress |= r;
        if (c->state != WK_CS_PROXY) {
            return 1;
        }
    }
    if ((c->tflags & WK_T_RESP_DONE) && c->out.start == c->out.end &&
        c->tx->rsend_off == c->tx->rready_off) {
        finish(c);
        return next_request(c) != 0 ? -1 : 1;
    }
    if (progress) {
        struct wk_upstream *u = c->up;
        if (u != NULL && !(u->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS)) &&
            (c->tflags & (WK_T_REQ_DONE | WK_T_RESP_HEAD)) == WK_T_REQ_DONE &&
            c->send_off == c->parsed_off && c->tx->uout.start == c->tx->uout.end) {
            /* The request is out and the final response head awaited: response_timeout_ms
             * counts from here, once; 1xx trickling in (or client bytes) do not extend it.
             * (Only a client that stopped reading forwarded 1xx re-arms it, once it drains:
             * the send timeout had the timer meanwhile.) */
            if ((c->tflags & WK_T_RESP_WAIT) && c->timer.queue != 0 &&
                c->timer.deadline == c->tx->resp_due_ms) {
                return progress;
            }
            set_timer(c);
            if (c->timer.queue != 0 &&
                c->timer.deadline == wk.now + csvc(c)->response_timeout_ms) {
                c->tflags |= WK_T_RESP_WAIT;
                c->tx->resp_due_ms = c->timer.deadline;
            }
            return progress;
        }
        set_timer(c);
    }
    return progress;
}

/* Drive the connection as far as it can go without blocking. */
static void run(struct wk_client *c)
{
    for (int guard = 0; guard < 10000; guard++) {
        int progress = 0;
        int r;

        switch (c->state) {
        case WK_CS_IDLE:
        case WK_CS_HEAD: {
            size_t hlen, avail;
            r = client_read(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            if (c->in.data != NULL) {
                while (c->in.start < c->in.end &&
                       (c->in.data[c->in.start] == '\r' || c->in.data[c->in.start] == '\n')) {
                    c->in.start++;
                }
            }
            avail = c->in.data ? c->in.end - c->in.start : 0;
            if (avail == 0) {
                if (c->flags & (WK_C_F_EOF | WK_C_F_HUP)) {
                    wk_client_close(c);
                    return;
                }
                if (c->state == WK_CS_HEAD) {
                    c->state = WK_CS_IDLE;
                }
                break;
            }
            if (c->state == WK_CS_IDLE) {
                c->state = WK_CS_HEAD;
                if (c->flags & WK_C_F_STARTED) {
                    set_timer(c);
                }
            }
            hlen = wk_h1_head_end(c->in.data + c->in.start, avail, 0);
            if (hlen == 0 || hlen > csnap(c)->limits.max_header_bytes) {
                if (avail >= csnap(c)->limits.max_header_bytes || hlen != 0) {
                    if (txn_begin(c) != 0) {
                        wk_client_close(c);
                        return;
                    }
                    c->at.service = SHM_NONE;
                    c->tx->reqid_len = 0;
                    if (reply_error(c, 431, "Request header fields too large",
                                    "Request head exceeds limits.max_header_bytes",
                                    F_CLOSE) != 0) {
                        return;
                    }
                    progress = 1;
                    break;
                }
                if (c->flags & (WK_C_F_EOF | WK_C_F_HUP)) {
                    wk_client_close(c);
                    return;
                }
                break;
            }
            if (process_head(c, hlen) < 0) {
                return;
            }
            progress = 1;
            break;
        }
        case WK_CS_PROXY:
            r = (c->tflags & WK_T_TUNNEL) ? tunnel_step(c) : proxy_step(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        case WK_CS_REPLY:
            r = client_write(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            if (c->out.start == c->out.end) {
                request_done(c, 0);
                if (next_request(c) != 0) {
                    return;
                }
                progress = 1;
            }
            break;
        case WK_CS_TLS:
            r = client_handshake(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        case WK_CS_PPHDR:
            r = read_proxy_header(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        case WK_CS_LINGER: {
            char sink[4096];
            ssize_t n;
            if (!(c->flags & WK_C_F_READABLE)) {
                break;
            }
            n = recv(c->xp.fd, sink, sizeof(sink), 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                wk_client_close(c);
                return;
            }
            if (n < 0) {
                c->flags &= ~WK_C_F_READABLE;
            } else {
                progress = 1;
            }
            break;
        }
        default:
            break;
        }
        if (!progress) {
            return;
        }
    }
}

void wk_client_event(struct wk_client *c, uint32_t events)
{
    if (events & EPOLLIN) {
        c->flags |= WK_C_F_READABLE;
    }
    if (events & EPOLLOUT) {
        c->flags |= WK_C_F_WRITABLE;
    }
    if (events & EPOLLRDHUP) {
        c->flags |= WK_C_F_READABLE | WK_C_F_RDHUP; /* read the EOF */
    }
    if (events & (EPOLLERR | EPOLLHUP)) {
        c->flags |= WK_C_F_READABLE | WK_C_F_WRITABLE;
    }
    run(c);
}

void wk_upstream_event(struct wk_upstream *u, uint32_t events)
{
    struct wk_client *c = u->client;

    if (c == NULL) {
        /* Idle in the pool: input means the backend closed it or sent something unasked. A
         * write edge (ACKs freeing send space) is harmless. */
        if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) &&
            !(xp_is_tls(&u->xp) && !(events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP)) &&
              xp_idle_ok(&u->xp))) {
            /* (A TLS backend may still send session tickets after the exchange: those are
             * consumed above and leave the connection reusable.) */
            upstream_close(u);
        } else {
            u->flags |= WK_UP_F_WRITABLE;
        }
        return;
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) && (u->flags & WK_UP_F_REUSED) &&
        u->pass == wk.pass && !(c->tflags & WK_T_RESP_BYTES)) {
        /* Taken from the pool unchecked while this batch was being handled, having entered
         * it in an earlier one: whatever this event announces reached the idle connection
         * before our request, the tail of the backend's previous exchange (extra bytes, a
         * close), never an answer. The connection goes; the request is retried where the
         * rules allow, as after a keep-alive race. */
        if (upstream_failed(c, WK_FAIL_RESET) != 0) {
            return;
        }
        run(c);
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        u->flags |= WK_UP_F_READABLE;
    }
    if (events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        u->flags |= WK_UP_F_HUP; /* whatever follows, this connection is not reused */
    }
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        u->flags |= WK_UP_F_WRITABLE;
    }
    if (u->flags & WK_UP_F_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            return;
        }
        if (getsockopt(u->xp.fd, SOL_SOCKET, SO_ERROR, &err, &sl) == -1) {
            err = errno;
        }
        if (err != 0) {
            if (upstream_failed(c, WK_FAIL_CONNECT) != 0) {
                return;
            }
            run(c);
            return;
        }
        u->flags &= ~WK_UP_F_CONNECTING;
        set_timer(c);
    }
    run(c);
}

void wk_client_timeout(struct wk_client *c)
{
    switch (c->state) {
    case WK_CS_IDLE:
        wk_client_close(c);
        return;
    case WK_CS_HEAD:
        if (txn_begin(c) != 0) {
            wk_client_close(c);
            return;
        }
        c->at.service = SHM_NONE;
        c->tx->reqid_len = 0;
        if (reply_error(c, 408, "Request timeout",
                        "Request headers not received within limits.header_timeout_ms",
                        F_CLOSE) != 0) {
            return;
        }
        break;
    case WK_CS_PPHDR:
        wk_client_close(c);
        return;
    case WK_CS_PROXY:
        if (c->tflags & WK_T_SEND_WAIT) {
            c->tflags &= ~WK_T_SEND_WAIT;
            if (!(c->flags & WK_C_F_WRITABLE)) {
                char ip[64];
                peer_ip(c, ip, sizeof(ip));
                log_debug("client %s read nothing for limits.send_timeout_ms: closing", ip);
                if (c->tflags & WK_T_TUNNEL) {
                    finish(c);
                }
                wk_client_close(c); /* and with it the upstream */
                return;
            }
            set_timer(c);
            break;
        }
        if (c->tflags & WK_T_RATE_TICK) {
            c->tflags &= ~WK_T_RATE_TICK;
            if (!body_phase(c)) {
                set_timer(c); /* the phase changed without a re-arm */
                break;
            }
            if ((c->tflags & WK_T_BODY_STALL) || (c->in.data && c->in.end == c->in.cap)) {
                /* The body waited for us, not for the client: its window starts again. */
                c->tflags &= ~WK_T_BODY_STALL;
                c->tx->body_due_ms = DSP_MAX(c->tx->body_due_ms, wk.now + BODY_WINDOW_MS);
            }
            if (wk.now >= c->tx->body_due_ms) {
                /* Too slow to be worth a backend connection: 408 while nothing of the
                 * response went out (the upstream is closed, never pooled), else a close. */
                if (reply_error(c, 408, "Request timeout",
                                "Request body slower than limits.min_body_rate", F_CLOSE) != 0) {
                    return;
                }
                break;
            }
            if (wk.now - c->tx->progress_ms <
                DSP_MAX(csnap(c)->limits.idle_timeout_ms, csvc(c)->response_timeout_ms)) {
                c->tflags |= WK_T_RATE_TICK;
                wk_timer_arm(&c->timer, BODY_TICK_MS);
                return;
            }
            /* No progress either way for that long: as without a rate, below. */
        }
        if (c->tflags & WK_T_TUNNEL) {
            finish(c);
            wk_client_close(c);
            return;
        }
        if (c->up != NULL && (c->up->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS))) {
            if (upstream_failed(c, WK_FAIL_CTIMEOUT) != 0) {
                return;
            }
        } else if (!(c->tflags & WK_T_REQ_DONE) && !(c->tflags & WK_T_RESP_BYTES)) {
            if (reply_error(c, 408, "Request timeout", "Request body not received in time",
                            F_CLOSE) != 0) {
                return;
            }
        } else if (!(c->tflags & WK_T_RESP_HEAD)) {
            if (upstream_failed(c, WK_FAIL_RTIMEOUT) != 0) {
                return;
            }
        } else {
            wk_client_close(c);
            return;
        }
        break;
    case WK_CS_TLS: /* a handshake that did not finish in time failed */
        __atomic_fetch_add(&wk.ctl->tls_handshakes[SHM_TLS_HS_FAILED], 1, __ATOMIC_RELAXED);
        wk_client_close(c);
        return;
    default:
        wk_client_close(c);
        return;
    }
    run(c);
}
