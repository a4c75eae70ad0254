/* dispatcher: the exchange (see wk_internal.h): one request from its parsed head to the end of
 * its response, whatever the client's protocol. Routing and the generated error bodies; the
 * backend attempts (pick, connect or reuse a pooled connection, retry where the rules allow);
 * the upstream side in HTTP/1 (request head and body out, response head and body in, framing
 * checked by the codec, wk_h1.h); the attempt's outcome for the balancer (statistics and the
 * access log: wk_account.c). The client side serves it through x->ops. */
#include "worker/wk_internal.h"
#include "worker/wk_grpc.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/net.h"
#include "common/str.h"
#include "shm/shm_route.h"
#include "shm/shm_snap.h"
#include "worker/wk_tls.h"

#define UPSTREAM_BUF_SIZE (32 * 1024)
#define WK_MAX_INTERIM    8 /* 1xx responses before the final one, per attempt */

static void record_outcome(struct wk_xchg *x);

static struct wk_txn *txn_free_list; /* transactions not in use (never freed) */

/* ---- small helpers ------------------------------------------------------------------------- */
static const struct shm_snap_hdr *xsnap(const struct wk_xchg *x)
{
    return x->at.gen ? x->at.gen->snap : wk.cur->snap;
}

static void backend_active_dec(struct wk_xchg *x)
{
    if (x->tflags & WK_T_COUNTED) {
        __atomic_fetch_sub(&wk.rt->backends[wk_xbe(x)->rt_slot].active, 1, __ATOMIC_RELAXED);
        x->tflags &= ~WK_T_COUNTED;
    }
}

void wk_xchg_detach(struct wk_xchg *x)
{
    if (x->at.flags & WK_AT_PROBE) {
        wk_lb_abort(&x->at);
    }
    if (x->up != NULL) {
        backend_active_dec(x);
        wk_upstream_close(x->up); /* (not pooled: x->up->x is set) */
        x->up = NULL;
    }
    if (x->h2s != NULL) {
        backend_active_dec(x);
        wk_h2up_detach(x);
    }
}

int wk_xchg_begin(struct wk_xchg *x)
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
    x->tx = t;
    x->at.gen = wk.cur;
    wk_gen_ref(x->at.gen);
    x->at.service = SHM_NONE;
    x->at.flags = 0;
    x->at.tries = 0;
    x->at.tried = 0;
    x->tflags = 0;
    x->status = 0;
    t->started_ms = wk.now;
    return 0;
}

static void txn_end(struct wk_xchg *x)
{
    struct wk_txn *t = x->tx;

    if (t == NULL) {
        return;
    }
    if (t->mw.list != 0 || t->mw.xh != NULL) {
        wk_mw_end(x); /* (before the head goes: a cancelled hook may look at it) */
    }
    wk_buf_put(&t->uin);
    wk_buf_put(&t->uout);
    if (t->gzb != NULL) {
        wk_mwgz_drop(t);
    }
    free(t->areq);
    x->tx = NULL;
    t->next_free = txn_free_list;
    txn_free_list = t;
}

void wk_xchg_end(struct wk_xchg *x)
{
    wk_xchg_detach(x);
    txn_end(x);
    if (x->at.gen != NULL) {
        wk_gen_unref(x->at.gen);
        x->at.gen = NULL;
    }
}

/* ---- generated responses --------------------------------------------------------------------- */
void wk_xchg_accept(struct wk_xchg *x, const struct wk_head *hd)
{
    struct wk_accept a;

    /* Nothing to choose without pages: the common case costs one load. */
    if (x->at.gen == NULL || x->at.gen->snap->nerror_pages == 0) {
        return;
    }
    memset(&a, 0, sizeof(a));
    for (uint32_t i = 0; i < hd->n; i++) {
        if (wk_hdr_is(&hd->h[i], "accept", 6)) {
            wk_accept_scan(&a, hd->h[i].value, hd->h[i].vlen);
        }
    }
    if (wk_accept_html(&a)) {
        x->tflags |= WK_T_HTML;
    }
}

/* Do generated bodies of this request name backend addresses (errors.expose_backend)? */
static int expose_backend(const struct wk_xchg *x)
{
    return (xsnap(x)->errors_flags & SHM_ERRORS_EXPOSE_BACKEND) != 0;
}

int wk_xchg_reply_as(struct wk_xchg *x, unsigned status, const char *ctype, const char *body,
                     size_t blen, int close_it)
{
    const char *json = body;
    size_t jlen = blen;
    int r;

    if (ctype != NULL) {
        json = NULL; /* as given: no page, no JSON */
    } else if ((ctype = "application/json", x->tflags & WK_T_HTML) && x->at.gen != NULL) {
        const struct shm_snap_hdr *s = x->at.gen->snap;
        const struct shm_error_page *pg = shm_error_pages(s);

        for (uint32_t i = 0; i < s->nerror_pages; i++) {
            if (pg[i].status == status) {
                body = shm_s(s, pg[i].body);
                blen = pg[i].body.len;
                ctype = "text/html";
                break;
            }
        }
    }
    if (x->tflags & WK_T_RESP_HEAD) {
        /* Part of a proxied response is already queued or sent: the only honest signal left
         * is to cut the connection. */
        wk_xchg_cut(x, SHM_CUT_REQUEST_ERROR);
        x->ops->close(x);
        return -1;
    }
    wk_xchg_mw_fields(x);
    wk_xchg_detach(x);
    r = x->ops->reply(x, status, ctype, body, blen, close_it);
    if (r == 1 && json != NULL && body != json) {
        /* No room for the page (interim responses still queued, say): the JSON body then. */
        r = x->ops->reply(x, status, "application/json", json, jlen, close_it);
    }
    if (r == 1) {
        x->ops->close(x);
        return -1;
    }
    if (r != 0) {
        return -1;
    }
    x->status = (uint16_t)status;
    x->tflags |= WK_T_REPLIED;
    if (status >= 500 && x->at.gen != NULL && x->at.service != SHM_NONE) {
        __atomic_fetch_add(&wk.rt->services[wk_xsvc(x)->rt_slot].errors, 1, __ATOMIC_RELAXED);
    }
    return 0;
}

int wk_xchg_error(struct wk_xchg *x, unsigned status, const char *error, const char *msg,
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
    return wk_xchg_reply(x, status, body, sb.len, close_it);
}

static int reply_not_found(struct wk_xchg *x, const char *host, size_t hlen, const char *path,
                           size_t plen)
{
    static char body[8192];
    const struct shm_snap_hdr *s = xsnap(x);
    const struct shm_service *svcs = shm_services(s);
    struct str_buf sb;

    str_init(&sb, body, sizeof(body) - 64);
    str_adds(&sb, "{\"error\":\"Service not found\",\"message\":\"No service for ");
    str_add_json(&sb, host, DSP_MIN(hlen, 256));
    str_add_json(&sb, path, DSP_MIN(plen, 512));
    if (!(s->errors_flags & SHM_ERRORS_LIST_SERVICES)) {
        str_adds(&sb, "\"}");
        return wk_xchg_reply(x, 404, body, sb.len, 0);
    }
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
    return wk_xchg_reply(x, 404, body, sb.len, 0);
}

/* ---- the request ----------------------------------------------------------------------------- */
/* Build the upstream request head into x->tx->uout: <host> is the validated Host (or the
 * absolute-form authority) that was routed on, <target> the origin-form target (<slash>: a "/"
 * goes before it). Returns 0 or -1 (no memory / too large). */
static int build_upstream_head(struct wk_xchg *x, const struct wk_head *hd, const char *host,
                               size_t hlen, const char *target, size_t tlen, int slash,
                               uint64_t clen)
{
    char ip[64], rip[64];
    struct wk_h1_fwd f;
    size_t n;

    if (wk_buf_get(&x->tx->uout,
                   wk_head_buf_size(x->at.gen->snap) + 4096 +
                       (x->peer->cert_subject != NULL ? strlen(x->peer->cert_subject) + 32 : 0)) !=
        0) {
        return -1;
    }
    x->tx->uout.start = x->tx->uout.end = 0;
    wk_ip_str(x->peer->family, x->peer->ip, ip, sizeof(ip));
    if (x->at.client_family == x->peer->family && memcmp(x->at.client_ip, x->peer->ip, 16) == 0) {
        memcpy(rip, ip, sizeof(rip)); /* (most requests: no trusted proxy in front) */
    } else {
        wk_ip_str(x->at.client_family, x->at.client_ip, rip, sizeof(rip));
    }
    f.method = x->method;
    f.target = target;
    f.tlen = tlen;
    f.slash = slash;
    f.host = host;
    f.hostlen = hlen;
    f.dflt_host = hlen > 0 ? NULL : shm_s(x->at.gen->snap, wk_xsvc(x)->name);
    f.peer_ip = ip;
    f.real_ip = rip;
    f.cert_subject = x->peer->cert_subject;
    f.reqid = x->tx->reqid;
    f.reqid_len = x->tx->reqid_len;
    f.clen = clen;
    f.trusted = (uint8_t)wk_xchg_peer_trusted(x);
    f.https = x->peer->https;
    f.upgrade = (x->tflags & WK_T_UPGRADE) != 0;
    f.chunked = x->tx->req_chunked;
    n = wk_h1_write_request(x->tx->uout.data, x->tx->uout.cap, hd, &f);
    if (n == 0) {
        return -1;
    }
    x->tx->uout.end = (uint32_t)n;
    return 0;
}

/* ---- the request's way in -------------------------------------------------------------------- */
/* listeners[].health_uri: is <rq> a GET or HEAD of exactly that path (the query aside)? */
static int health_probe(const struct shm_snap_hdr *s, uint32_t listener, const struct wk_h1_req *rq)
{
    const struct shm_str *u;

    if (listener >= s->nlisteners || shm_listeners(s)[listener].health_uri.len == 0) {
        return 0;
    }
    u = &shm_listeners(s)[listener].health_uri;
    return rq->pathlen == u->len && memcmp(rq->path, shm_s(s, *u), u->len) == 0 &&
           ((rq->flags & WK_H1_HEAD) || strcmp(wk_h1_method_str(rq->method), "GET") == 0);
}

int wk_xchg_health(struct wk_xchg *x, uint32_t listener, const struct wk_h1_req *rq)
{
    uint32_t h;
    const char *status;
    char body[64];
    int ok, n;

    if (!health_probe(x->at.gen->snap, listener, rq)) {
        return 0;
    }
    /* Answered as admin GET /health does, from the state the master publishes (one load:
     * nothing is judged per probe). */
    h = __atomic_load_n(&wk.ctl->health, __ATOMIC_ACQUIRE);
    status = wk.stopping                ? "draining"
             : h == SHM_HEALTH_SERVING  ? "serving"
             : h == SHM_HEALTH_DEGRADED ? "degraded"
             : h == SHM_HEALTH_DRAINING ? "draining"
                                        : "starting";
    ok = strcmp(status, "serving") == 0;
    n = snprintf(body, sizeof(body), "{\"ok\":%s,\"status\":\"%s\"}\n", ok ? "true" : "false",
                 status);
    return wk_xchg_reply(x, ok ? 200 : 503, body, (size_t)n, 0) < 0 ? -1 : 1;
}

int wk_xchg_route(struct wk_xchg *x, const struct wk_h1_req *rq, const char *nhost, size_t nhlen)
{
    const struct shm_snap_hdr *s = x->at.gen->snap;
    const struct shm_service *svc;
    uint32_t ridx;

    wk_xchg_resolve_client(x, &rq->hd);
    ridx = shm_route_match(s, nhost, nhlen, rq->path, rq->pathlen, (int)x->method);
    if (ridx == SHM_NONE) {
        return reply_not_found(x, nhost, nhlen, rq->path, rq->pathlen) == 0 ? 1 : -1;
    }
    wk_route_service(x, &shm_routes(s)[ridx], &rq->hd);
    x->tx->mw.list = shm_routes(s)[ridx].mw_list;
    svc = wk_xsvc(x);
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
        return wk_xchg_reply(x, 404, body, sb.len, 0) == 0 ? 1 : -1;
    }
    if (s->limits.max_body_bytes > 0 && rq->clen != ULLONG_MAX &&
        rq->clen > s->limits.max_body_bytes) {
        return wk_xchg_error(x, 413, "Payload too large",
                             "Request body exceeds limits.max_body_bytes", 1) == 0
                   ? 1
                   : -1;
    }
    return 0;
}

int wk_xchg_build(struct wk_xchg *x, const struct wk_h1_req *rq)
{
    if (build_upstream_head(x, &rq->hd, rq->host, rq->host ? rq->hostlen : 0, rq->target, rq->tlen,
                            rq->slash, rq->clen) != 0) {
        return wk_xchg_error(x, 431, "Request header fields too large",
                             "Request head too large to forward", 1) == 0
                   ? 1
                   : -1;
    }
    if (wk_xsvc(x)->protocol != SHM_PROTO_HTTP1) {
        x->tx->te_trailers = (uint8_t)wk_h2up_te_trailers(&rq->hd);
    }
    return 0;
}

int wk_xchg_forward(struct wk_xchg *x, const struct wk_h1_req *rq)
{
    return x->tx->mw.list == 0 ? wk_xchg_build(x, rq) : wk_mw_forward(x, rq);
}

/* ---- upstream attempts ---------------------------------------------------------------------- */
static int upstream_connect(struct wk_xchg *x)
{
    const struct shm_backend *be = wk_xbe(x);
    struct wk_upstream *u;
    struct sockaddr_storage ss;
    socklen_t sl;
    struct epoll_event ev;
    int one = 1;

    if (wk_xsvc(x)->protocol != SHM_PROTO_HTTP1) {
        return wk_h2up_attach(x); /* a stream on a pooled HTTP/2 connection (wk_h2up.c) */
    }
    u = wk_pool_take(be->rt_slot, (wk_xsvc(x)->tls & SHM_SVC_TLS_ON) != 0,
                     !(x->tflags & WK_T_IDEMPOTENT));
    if (u != NULL) {
        u->x = x;
        x->up = u;
        return 0;
    }
    u = calloc(1, sizeof(*u));
    if (u == NULL) {
        return -1;
    }
    u->ev.kind = WK_EV_UPSTREAM;
    u->timer.owner = &u->ev;
    u->be_slot = be->rt_slot;
    u->x = x;
    if (wk_backend_addr(x->at.gen->snap, be, &ss, &sl) != 0) {
        free(u);
        return -1;
    }
    xp_init(&u->xp, socket(be->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (u->xp.fd == -1) {
        /* Out of descriptors, every request would say so: once a second is enough (the
         * client gets its 503 at once either way). */
        static uint64_t logged_ms;
        if (logged_ms == 0 || wk.now - logged_ms >= 1000) {
            logged_ms = wk.now;
            log_errno(LOG_ERROR, errno, "socket() for backend %s failed",
                      shm_s(x->at.gen->snap, be->address));
        }
        free(u);
        return -1;
    }
    if (be->family != AF_UNIX) {
        setsockopt(u->xp.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = u;
    if (epoll_ctl(wk.epfd, EPOLL_CTL_ADD, u->xp.fd, &ev) == -1) {
        log_errno(LOG_ERROR, errno, "epoll_ctl(ADD upstream) failed");
        xp_close(&u->xp, 0);
        free(u);
        return -1;
    }
    x->up = u;
    if (wk_xsvc(x)->tls & SHM_SVC_TLS_ON) {
        struct ssl_st *ssl = wk_tls_client_new(u->xp.fd, x->at.gen->tls, x->at.service, be);
        if (ssl == NULL) {
            log_error("TLS to backend %s: %s", shm_s(x->at.gen->snap, be->address), wk_tls_error());
            return 1;
        }
        xp_start_tls(&u->xp, ssl);
        u->flags |= WK_UP_F_TLSHS; /* the handshake starts once connect() completes */
    }
    if (connect(u->xp.fd, (struct sockaddr *)&ss, sl) == -1) {
        /* A unix socket never connects in the background: EAGAIN is a full backlog, ENOENT
         * a socket not created yet; like a refusal, both are connect failures. */
        if (errno != EINPROGRESS) {
            return 1; /* refused at once (loopback): a connect failure */
        }
        u->flags |= WK_UP_F_CONNECTING;
    } else {
        u->flags |= WK_UP_F_WRITABLE;
    }
    return 0;
}

/* Choose a backend and connect (or reuse). Returns 0, or -1 if the client was answered/closed. */
int wk_xchg_start(struct wk_xchg *x)
{
    for (;;) {
        char why[256];
        int b = wk_lb_pick(&x->at, why, sizeof(why));
        int r;

        if (b < 0) {
            return wk_xchg_error(x, 503, "Service unavailable", why, 0);
        }
        x->at.backend = (uint32_t)b;
        if (b < 64) {
            x->at.tried |= 1ull << b;
        }
        x->at.tries++;
        x->tflags &= ~(WK_T_UP_WRITTEN | WK_T_RESP_BYTES | WK_T_RESP_WAIT | WK_T_EARLY);
        x->tx->ninterim = 0;
        x->tx->interim_bytes = 0;
        x->send_off = x->body_off;
        x->tx->uout.start = 0;
        r = upstream_connect(x);
        if (r < 0) {
            return wk_xchg_error(x, 503, "Service unavailable", "Out of resources", 0);
        }
        __atomic_fetch_add(&wk.rt->backends[wk_xbe(x)->rt_slot].active, 1, __ATOMIC_RELAXED);
        x->tflags |= WK_T_COUNTED;
        if (r == 1) {
            if (wk_xchg_failed(x, WK_FAIL_CONNECT) != 0) {
                return -1;
            }
            return 0; /* upstream_failed started the next attempt */
        }
        x->ops->rearm(x);
        return 0;
    }
}

/* The current attempt failed. Retry where the rules allow, else answer 502/504. Returns 0 when
 * a new attempt is running, -1 when the client was answered or closed. */
int wk_xchg_failed(struct wk_xchg *x, int why)
{
    const struct shm_service *svc = wk_xsvc(x);
    const struct shm_backend *be = wk_xbe(x);
    int reused = (x->up != NULL && (x->up->flags & WK_UP_F_REUSED)) || wk_h2up_stale(x);
    int lb_why = why;
    int can_retry = 0;
    int stale = why == WK_FAIL_RESET && reused;
    int retry;
    char msg[400], who[300], Who[300];

    if (why == WK_FAIL_RESET && x->up != NULL && be->family != AF_UNIX) {
        /* An RST leaves the socket CLOSED, a FIN leaves it in CLOSE_WAIT: only the former says
         * the backend died or aborted, which passive health acts on at once. */
        struct tcp_info ti;
        socklen_t tl = sizeof(ti);
        if (getsockopt(x->up->xp.fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
            ti.tcpi_state == TCP_CLOSE) {
            lb_why = WK_FAIL_ABORT;
        }
    }
    /* Only while the client has seen nothing and the request can still be replayed whole. */
    if (!(x->tflags & (WK_T_RESP_BYTES | WK_T_CLIENT_SENT | WK_T_RESP_HEAD | WK_T_BODY_LOST))) {
        if (!(x->tflags & WK_T_UP_WRITTEN)) {
            /* Nothing reached the backend (refused, connect timeout, a pooled connection dead at
             * the first write): any method may go elsewhere. */
            can_retry = reused ? 2 : 1;
        } else if (why == WK_FAIL_RESET && (x->tflags & WK_T_IDEMPOTENT)) {
            /* The backend may have acted on it: idempotent methods only. A reused keep-alive
             * connection that the backend closed while idle gets a retry that does not count. */
            can_retry = reused ? 2 : 1;
        }
        /* Anything else may have been acted on, and a non-idempotent request is never sent
         * twice, not even after a keep-alive race. */
    }
    if (can_retry == 2) {
        x->at.tried &= x->at.backend < 64 ? ~(1ull << x->at.backend) : ~0ull;
        x->at.tries--;
    }
    retry = can_retry && x->at.tries <= svc->retries && x->at.tries < 64;
    if (stale && retry) {
        /* Most likely a keep-alive race (the backend closed the idle connection as the request
         * went out): it proves nothing about the backend, as long as the request is retried. */
        wk_lb_result(&x->at, WK_FAIL_STALE, 0);
        wk_xchg_detach(x);
        if (wk_lb_can_retry(&x->at)) {
            return wk_xchg_start(x);
        }
        /* No backend is left for the retry: the failure reaches the client as a 502 and counts
         * against the backend like any other (the probe lease, if it held one, is back). */
        wk_lb_result(&x->at, lb_why, 0);
    } else {
        /* A stale connection's failure that ends as the client's 502 counts too: errors,
         * passive health and the circuit breaker see it like a fresh connection's. */
        wk_lb_result(&x->at, lb_why, 0);
        wk_xchg_detach(x);
        if (retry && wk_lb_can_retry(&x->at)) {
            return wk_xchg_start(x);
        }
    }
    /* The client hears what went wrong, not where (errors.expose_backend names the address). */
    if (expose_backend(x)) {
        snprintf(who, sizeof(who), "backend %s", shm_s(x->at.gen->snap, be->address));
    } else {
        snprintf(who, sizeof(who), "the backend");
    }
    memcpy(Who, who, sizeof(who));
    Who[0] = (char)toupper((unsigned char)Who[0]);
    switch (why) {
    case WK_FAIL_CONNECT:
        snprintf(msg, sizeof(msg), "%s refused the connection", Who);
        return wk_xchg_error(x, 502, "Bad gateway", msg, 0);
    case WK_FAIL_TLS:
        snprintf(msg, sizeof(msg), "TLS handshake with %s failed", who);
        return wk_xchg_error(x, 502, "Bad gateway", msg, 0);
    case WK_FAIL_TLSVERIFY:
        snprintf(msg, sizeof(msg),
                 "TLS verification failed: the certificate of %s was not accepted", who);
        return wk_xchg_error(x, 502, "Bad gateway", msg, 0);
    case WK_FAIL_CTIMEOUT:
        snprintf(msg, sizeof(msg), "Connecting to %s timed out", who);
        return wk_xchg_error(x, 504, "Gateway timeout", msg, 0);
    case WK_FAIL_RTIMEOUT:
        snprintf(msg, sizeof(msg), "%s did not answer within %u ms", Who, svc->response_timeout_ms);
        return wk_xchg_error(x, 504, "Gateway timeout", msg, 0);
    case WK_FAIL_RESET:
        snprintf(msg, sizeof(msg), "%s closed the connection without a response", Who);
        return wk_xchg_error(x, 502, "Bad gateway", msg, 0);
    default:
        snprintf(msg, sizeof(msg), "%s sent an invalid response", Who);
        return wk_xchg_error(x, 502, "Bad gateway", msg, 0);
    }
}

/* The final response head <rs>: through the route's response hooks, which may re-frame the
 * client's copy (compress), to the client side. 0, or -1 (the attempt fails as a bad response);
 * rs->chunked is the backend's framing again afterwards. */
static int relay_head(struct wk_xchg *x, struct wk_h1_resp *rs)
{
    uint8_t up_chunked = rs->chunked;

    wk_split_cookie_out(x, rs);
    if ((x->tx->mw.list != 0 && wk_mw_response(x, rs) != 0) || x->ops->resp_head(x, rs) != 0) {
        if (x->tx->gzb != NULL) {
            wk_mwgz_drop(x->tx);
        }
        return -1;
    }
    if (x->tx->gzb != NULL) {
        wk_mwgz_framed(x, up_chunked);
    }
    rs->chunked = up_chunked;
    return 0;
}

int wk_xchg_relay_head(struct wk_xchg *x, struct wk_h1_resp *rs)
{
    return relay_head(x, rs); /* (the HTTP/1 path keeps its inlined copy) */
}

/* Parse the response head (after any 1xx) from the upstream's bytes and hand it to the client
 * side. Returns 0 (done, or more bytes needed: WK_T_RESP_HEAD tells), or what wk_xchg_failed()
 * returns. */
static int parse_response_head(struct wk_xchg *x)
{
    struct wk_h1_resp rs; /* the response head, for this call only */

    while (!(x->tflags & WK_T_RESP_HEAD)) {
        const char *base = x->tx->uin.data + x->tx->uin.start;
        size_t avail = x->tx->uin.end - x->tx->uin.start;
        size_t hlen;

        if (avail == 0) {
            return 0;
        }
        hlen = wk_h1_head_end(base, avail, 0);
        if (hlen == 0) {
            if (avail >= x->tx->uin.cap) {
                return wk_xchg_failed(x, WK_FAIL_BAD); /* a head larger than the buffer */
            }
            return 0;
        }
        x->tflags &= ~WK_T_RESP_DONE;
        if (wk_h1_parse_response(&x->tx->rs, base, hlen, (x->tflags & WK_T_HEAD_REQ) != 0, &rs) !=
            0) {
            return wk_xchg_failed(x, WK_FAIL_BAD);
        }
        if (rs.status == 101 && (x->tflags & WK_T_UPGRADE)) {
            /* Switching protocols: from here on both directions are opaque bytes. */
            if (x->ops->resp_head(x, &rs) != 0) {
                return wk_xchg_failed(x, WK_FAIL_BAD);
            }
            /* (The tokenizer calls a 101 a complete message; the tunnel ends only with a
             * close.) */
            x->tflags |= WK_T_RESP_HEAD | WK_T_TUNNEL;
            x->tx->rsend_off = x->tx->uin.start + (uint32_t)hlen;
            x->tx->rready_off = x->tx->rparsed_off = x->tx->uin.end;
            x->send_off = x->parsed_off; /* nothing of the request is left unsent */
            x->parsed_off = x->rq->end;  /* bytes after the upgrade request are tunnel data */
            x->ops->rearm(x);
            return 0;
        }
        if (rs.status < 200) {
            if (rs.status == 101) {
                /* A switch of protocols nobody asked for is a protocol error. */
                return wk_xchg_failed(x, WK_FAIL_BAD);
            }
            /* Interim responses are bounded in number and size: a backend that trickles them
             * without end holds nothing for long. */
            x->tx->interim_bytes += (uint32_t)hlen;
            if (++x->tx->ninterim > WK_MAX_INTERIM || x->tx->interim_bytes > UPSTREAM_BUF_SIZE) {
                return wk_xchg_failed(x, WK_FAIL_BAD);
            }
            if (x->ops->interim(x, &rs, base, hlen) != 0) {
                return wk_xchg_failed(x, WK_FAIL_BAD);
            }
            /* The tokenizer completed a message, but the response is still to come: the final
             * head may be a while (103 Early Hints), and must not find the exchange over. */
            x->tx->uin.start += (uint32_t)hlen;
            continue;
        }
        if (x->tx->rs.done) {
            x->tflags |= WK_T_RESP_DONE;
        }
        if (relay_head(x, &rs) != 0) {
            return wk_xchg_failed(x, WK_FAIL_BAD);
        }
        if (!(x->tflags & WK_T_REQ_DONE) || x->send_off != x->parsed_off ||
            x->tx->uout.start != x->tx->uout.end) {
            /* The backend answered before it had the whole request (an early 413, say): what
             * it makes of the rest cannot be known, so the connection is never reused. */
            x->tflags |= WK_T_EARLY;
        }
        x->tflags |= WK_T_RESP_HEAD;
        x->tx->rparsed_off = x->tx->rsend_off = x->tx->rready_off = x->tx->uin.start +
                                                                    (uint32_t)hlen;
        /* A chunked body goes through the strict decoder, not http-parser: only validated
         * bytes are relayed (or decoded for HTTP/1.0 clients). */
        x->tx->resp_chunked = !(x->tflags & WK_T_RESP_DONE) && rs.chunked;
        if (x->tx->resp_chunked) {
            /* (A trailer line must fit the upstream buffer with room to spare.) */
            wk_h1_chunk_init(&x->tx->rsc,
                             (uint32_t)DSP_MIN(x->at.gen->snap->limits.max_header_bytes,
                                               UPSTREAM_BUF_SIZE / 2));
        }
    }
    return 0;
}

/* A chunked body decoded for the client ended at <end> in uin with a trailer section (its
 * rsc.line bytes before <end>, kept there by uin_compact()): the fields go to the client side. */
static int resp_trailers(struct wk_xchg *x, uint32_t end)
{
    struct wk_hdr f[WK_MAX_HEADERS];
    uint32_t n = wk_trailer_split(x->tx->uin.data + end - x->tx->rsc.line, x->tx->rsc.line, f,
                                  WK_MAX_HEADERS);

    return n > 0 ? x->ops->trailers(x, f, n) : 0;
}

/* Consume what the upstream sent: the head, then body bytes up to where they are checked (and,
 * for a client that wants them decoded, decoded in place). Returns 0, or -1 if the client was
 * closed. */
static int parse_response(struct wk_xchg *x)
{
    if (x->tflags & WK_T_TUNNEL) {
        x->tx->rready_off = x->tx->rparsed_off = x->tx->uin.end;
        return 0;
    }
    if (!(x->tflags & WK_T_RESP_HEAD)) {
        int r = parse_response_head(x);
        if (r != 0 || !(x->tflags & WK_T_RESP_HEAD)) {
            return r;
        }
    }
    if (x->tx->resp_chunked && !(x->tflags & WK_T_RESP_DONE)) {
        uint32_t scan = x->tx->rparsed_off + x->tx->rsc.pend;
        while (scan < x->tx->uin.end) {
            size_t used, dl;
            int r = wk_h1_chunk_parse(&x->tx->rsc, x->tx->uin.data + scan, x->tx->uin.end - scan,
                                      &used, &dl);
            if (r == WK_CHUNK_ERROR) {
                log_warn("backend %s sent an invalid chunked body: %s",
                         shm_s(x->at.gen->snap, wk_xbe(x)->address), x->tx->rsc.err);
                if (!(x->tflags & WK_T_CLIENT_SENT)) {
                    /* Nothing of it reached the client yet: take the queued head back and
                     * answer 502 instead. */
                    x->ops->unhead(x);
                    x->tflags &= ~(WK_T_RESP_HEAD | WK_T_DECHUNK);
                    if (x->tx->gzb != NULL) {
                        wk_mwgz_drop(x->tx);
                    }
                    return wk_xchg_failed(x, WK_FAIL_BAD);
                }
                wk_xchg_cut(x, SHM_CUT_BACKEND_INVALID);
                x->ops->close(x);
                return -1;
            }
            if (r == WK_CHUNK_DATA && (x->tflags & WK_T_DECHUNK)) {
                /* Decoded bytes never overtake the raw ones, so decoding in place is safe. */
                memmove(x->tx->uin.data + x->tx->rready_off, x->tx->uin.data + scan + used - dl,
                        dl);
                x->tx->rready_off += (uint32_t)dl;
            }
            scan += (uint32_t)used;
            x->tx->rparsed_off = scan - x->tx->rsc.pend;
            if (!(x->tflags & WK_T_DECHUNK)) {
                x->tx->rready_off = x->tx->rparsed_off;
            }
            if (r == WK_CHUNK_DONE) {
                if ((x->tflags & WK_T_DECHUNK) && x->tx->rsc.line > 2 &&
                    resp_trailers(x, scan) != 0) {
                    return -1;
                }
                x->tflags |= WK_T_RESP_DONE;
                break;
            }
        }
    } else if (!(x->tflags & WK_T_RESP_DONE) && x->tx->rparsed_off < x->tx->uin.end) {
        long n = wk_h1_body(&x->tx->rs, x->tx->uin.data + x->tx->rparsed_off,
                            x->tx->uin.end - x->tx->rparsed_off);
        if (x->tx->rs.done) {
            x->tflags |= WK_T_RESP_DONE;
        }
        if (n < 0) {
            /* Garbage in the middle of a response we already started relaying. */
            wk_xchg_cut(x, SHM_CUT_BACKEND_INVALID);
            x->ops->close(x);
            return -1;
        }
        x->tx->rparsed_off += (uint32_t)n;
        if (!(x->tflags & WK_T_DECHUNK)) {
            x->tx->rready_off = x->tx->rparsed_off;
        }
    }
    return 0;
}

/* TLS to a backend: the handshake after connect() (under the connect timeout). Returns 1 on
 * progress (done, or a new attempt started after a failure), 0 when blocked, -1 when the client
 * was answered or closed. Done only counts as progress so that the caller's loop comes back to
 * write the request: the write edge may already have been used up. */
static int upstream_handshake(struct wk_xchg *x)
{
    struct wk_upstream *u = x->up;
    int r;

    if (!(u->flags & (WK_UP_F_READABLE | WK_UP_F_WRITABLE))) {
        return 0;
    }
    r = xp_handshake(&u->xp);
    if (r == 1) {
        u->flags &= ~WK_UP_F_TLSHS;
        x->ops->rearm(x);
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
    /* Nothing of the request reached the backend: as retryable as a refused connection, and
     * counted as fully (wk_lb.c); a certificate that fails verification is said as such, to
     * the client, in the log and in the backend's tls_verify_failures. */
    if (wk_tls_verify_failed(u->xp.ssl)) {
        __atomic_fetch_add(&wk.rt->backends[wk_xbe(x)->rt_slot].tls_verify_failures, 1,
                           __ATOMIC_RELAXED);
        log_warn("TLS verification of backend %s of service %s failed: %s",
                 shm_s(x->at.gen->snap, wk_xbe(x)->address),
                 shm_s(x->at.gen->snap, wk_xsvc(x)->name), xp_error());
        return wk_xchg_failed(x, WK_FAIL_TLSVERIFY) == 0 ? 1 : -1;
    }
    log_warn("TLS handshake with backend %s failed: %s", shm_s(x->at.gen->snap, wk_xbe(x)->address),
             xp_error());
    return wk_xchg_failed(x, WK_FAIL_TLS) == 0 ? 1 : -1;
}

int wk_xchg_send(struct wk_xchg *x)
{
    struct wk_upstream *u = x->up;
    struct iovec iov[2];
    int niov = 0;
    ssize_t n;
    size_t first = 0;

    if (x->h2s != NULL) {
        return wk_h2up_send(x);
    }
    if (u != NULL && (u->flags & WK_UP_F_TLSHS) && !(u->flags & WK_UP_F_CONNECTING)) {
        return upstream_handshake(x);
    }
    if (u == NULL || (u->flags & WK_UP_F_CONNECTING) || !(u->flags & WK_UP_F_WRITABLE)) {
        return 0;
    }
    if (u->flags & WK_UP_F_WERR) {
        /* The backend is gone for writing but answered first (an early 413): the rest of the
         * request has nowhere to go. Consumed and dropped while that answer is relayed; the
         * client connection closes after it. */
        if (x->parsed_off > x->send_off || x->tx->uout.end > x->tx->uout.start) {
            x->tflags |= WK_T_BODY_LOST;
        }
        x->tx->uout.start = x->tx->uout.end;
        x->send_off = x->parsed_off;
        return 0;
    }
    if (x->tx->uout.end > x->tx->uout.start) {
        iov[niov].iov_base = x->tx->uout.data + x->tx->uout.start;
        iov[niov].iov_len = first = x->tx->uout.end - x->tx->uout.start;
        niov++;
    }
    if (x->parsed_off > x->send_off) {
        iov[niov].iov_base = x->rq->data + x->send_off;
        iov[niov].iov_len = x->parsed_off - x->send_off;
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
    x->tflags |= WK_T_UP_WRITTEN;
    if (!xp_is_tls(&u->xp) && (size_t)n < first + (niov > 1 ? iov[1].iov_len : 0)) {
        /* Short write: the socket buffer is full. (Not so for TLS, which writes a record at a
         * time.) */
        u->flags &= ~WK_UP_F_WRITABLE;
    }
    if ((size_t)n <= first) {
        x->tx->uout.start += (uint32_t)n;
    } else {
        x->tx->uout.start = x->tx->uout.end;
        x->send_off += (uint32_t)((size_t)n - first);
    }
    return 1;
}

/* Trailer bytes of a chunked body decoded for the client, parsed and kept before rparsed_off
 * until the section ends (resp_trailers()). */
static uint32_t trailer_kept(const struct wk_xchg *x)
{
    return (x->tflags & WK_T_DECHUNK) && x->tx->resp_chunked ? wk_chunk_trailer_bytes(&x->tx->rsc)
                                                             : 0;
}

/* Make room in x->tx->uin by dropping bytes already sent to the client. */
static void uin_compact(struct wk_xchg *x)
{
    uint32_t keep_ready = x->tx->rready_off - x->tx->rsend_off;
    /* A chunked body decoded for the client keeps the trailer lines it parsed (until the end
     * of the section hands them over as fields, resp_trailers()). */
    uint32_t tr = trailer_kept(x);
    uint32_t raw = x->tx->uin.end - x->tx->rparsed_off + tr;

    if (!(x->tflags & WK_T_RESP_HEAD)) {
        if (x->tx->uin.start > 0) {
            memmove(x->tx->uin.data, x->tx->uin.data + x->tx->uin.start,
                    x->tx->uin.end - x->tx->uin.start);
            x->tx->uin.end -= x->tx->uin.start;
            x->tx->uin.start = 0;
        }
        return;
    }
    if (x->tx->rsend_off == 0 && x->tx->rready_off == x->tx->rparsed_off - tr) {
        return;
    }
    memmove(x->tx->uin.data, x->tx->uin.data + x->tx->rsend_off, keep_ready);
    memmove(x->tx->uin.data + keep_ready, x->tx->uin.data + x->tx->rparsed_off - tr, raw);
    x->tx->uin.start = 0;
    x->tx->rsend_off = 0;
    x->tx->rready_off = keep_ready;
    x->tx->rparsed_off = keep_ready + tr;
    x->tx->uin.end = keep_ready + raw;
}

int wk_xchg_recv(struct wk_xchg *x)
{
    struct wk_upstream *u = x->up;
    ssize_t n;

    if (x->h2s != NULL) {
        return wk_h2up_recv(x);
    }
    if (u != NULL && (u->flags & WK_UP_F_TLSHS) && !(u->flags & WK_UP_F_CONNECTING)) {
        return upstream_handshake(x);
    }
    if (u != NULL && !(u->flags & (WK_UP_F_READABLE | WK_UP_F_CONNECTING)) && xp_pending(&u->xp)) {
        u->flags |= WK_UP_F_READABLE; /* read ahead on a write edge: see client_read() */
    }
    if (u == NULL || (u->flags & WK_UP_F_CONNECTING) || !(u->flags & WK_UP_F_READABLE)) {
        return 0;
    }
    if ((x->tflags & (WK_T_RESP_DONE | WK_T_TUNNEL)) == WK_T_RESP_DONE) {
        /* The response is complete: anything more answers nothing. Left in the socket, where
         * finish() sees it (READABLE stays set) and keeps the connection out of the pool. */
        return 0;
    }
    if (x->tx->uin.data == NULL) {
        if (wk_buf_get(&x->tx->uin, UPSTREAM_BUF_SIZE) != 0) {
            wk_xchg_cut(x, SHM_CUT_INTERNAL);
            x->ops->close(x);
            return -1;
        }
    }
    if ((x->tflags & WK_T_RESP_HEAD) && x->tx->rsend_off == x->tx->rready_off &&
        x->tx->rparsed_off == x->tx->uin.end && trailer_kept(x) == 0) {
        x->tx->uin.start = x->tx->uin.end = x->tx->rsend_off = x->tx->rready_off =
            x->tx->rparsed_off = 0;
    }
    if (x->tx->uin.end == x->tx->uin.cap) {
        uin_compact(x);
        if (x->tx->uin.end == x->tx->uin.cap) {
            return 0;
        }
    }
    n = xp_read(&u->xp, x->tx->uin.data + x->tx->uin.end, x->tx->uin.cap - x->tx->uin.end);
    if (n > 0) {
        /* Edge-triggered: a read that drained the socket means new data brings a new edge, so
         * skip the read that would only say "again" (xp_drained() knows for TLS too). Not when
         * epoll reported the peer's FIN or an error: it came with this edge and no other will
         * announce it. */
        if (xp_drained(&u->xp) && !(u->flags & WK_UP_F_HUP)) {
            u->flags &= ~WK_UP_F_READABLE;
        }
        x->tx->uin.end += (uint32_t)n;
        x->tflags |= WK_T_RESP_BYTES;
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
    if (x->tflags & WK_T_TUNNEL) {
        u->flags &= ~WK_UP_F_READABLE;
        x->tflags |= WK_T_UP_EOF;
        return 1;
    }
    if (!(x->tflags & WK_T_RESP_HEAD)) {
        if (x->tx->uin.end > x->tx->uin.start) {
            return wk_xchg_failed(x, WK_FAIL_BAD) == 0 ? 1 : -1;
        }
        return wk_xchg_failed(x, WK_FAIL_RESET) == 0 ? 1 : -1;
    }
    if (!(x->tflags & WK_T_RESP_DONE)) {
        if (n == 0) {
            /* An EOF-delimited body ends here; any other framing was cut short. */
            wk_h1_body_eof(&x->tx->rs);
            if (x->tx->rs.done) {
                x->tflags |= WK_T_RESP_DONE;
            }
        }
        if (!(x->tflags & WK_T_RESP_DONE)) {
            if (x->tflags & WK_T_EARLY) {
                /* An early answer to a request it did not wait for (an upload rejected with
                 * 413), cut by the backend's reset: the backend answered, it did not fail. */
                record_outcome(x);
            }
            wk_xchg_cut(x, SHM_CUT_BACKEND_CLOSED);
            x->ops->close(x);
            return -1;
        }
    }
    x->up->flags &= ~WK_UP_F_READABLE;
    x->up->flags |= WK_UP_F_HUP;
    return 1;
}

/* Tell balancing/health/circuit state how the attempt went, once. */
static void record_outcome(struct wk_xchg *x)
{
    if (!(x->tflags & WK_T_LB_DONE)) {
        x->tflags |= WK_T_LB_DONE;
        wk_lb_result(&x->at, 0, x->status);
    }
}

int wk_xchg_finish(struct wk_xchg *x)
{
    struct wk_upstream *u = x->up;
    int reusable;

    record_outcome(x);
    wk_xchg_log(x, 1);
    /* Reused only at an exact message boundary with nothing pending (SPEC, Proxying): the
     * request went out whole before the answer began, the response ended where the parser
     * stopped, nothing past it is buffered, and the socket holds nothing either. A read that
     * came back short emptied the socket (any later byte brings an event that closes the idle
     * connection); otherwise one look tells. */
    reusable = u != NULL && !(u->flags & (WK_UP_F_HUP | WK_UP_F_WERR)) &&
               (x->tflags & (WK_T_TUNNEL | WK_T_EARLY | WK_T_RESP_DONE | WK_T_REQ_DONE)) ==
                   (WK_T_RESP_DONE | WK_T_REQ_DONE) &&
               wk_h1_keep_alive(&x->tx->rs) && x->send_off == x->parsed_off &&
               x->tx->uout.start == x->tx->uout.end && x->tx->rparsed_off == x->tx->uin.end;
    if (reusable && (u->flags & WK_UP_F_READABLE)) {
        reusable = !wk_upstream_pending(u);
        u->flags &= (uint8_t)~WK_UP_F_READABLE;
    }
    if (reusable) {
        backend_active_dec(x);
        x->up = NULL;
        wk_pool_put(u);
    }
    return 0;
}

int wk_xchg_parse(struct wk_xchg *x)
{
    if (x->h2s == NULL && x->tx->uin.data != NULL && parse_response(x) != 0) {
        return -1;
    }
    if (x->tx->gzb != NULL && (x->tflags & WK_T_RESP_HEAD) && wk_mwgz_pump(x) != 0) {
        return -1;
    }
    /* The backend's part is over once its response is complete: count it now, before the last
     * bytes reach the client, whose next request may otherwise meet the old circuit state, or
     * a backend still counted busy by least-conn, on another worker. */
    if ((x->tflags & (WK_T_RESP_DONE | WK_T_REPLIED)) == WK_T_RESP_DONE) {
        record_outcome(x);
        backend_active_dec(x);
    }
    return 0;
}

int wk_xchg_expired(struct wk_xchg *x)
{
    if (x->tx != NULL && (x->tx->mw.flags & WK_MW_F_WAIT)) {
        return wk_mw_expired(x);
    }
    if (x->tflags & WK_T_TUNNEL) {
        wk_xchg_cut(x, SHM_CUT_TUNNEL_IDLE);
        wk_xchg_finish(x);
        x->ops->close(x);
        return -1;
    }
    if (x->up != NULL && (x->up->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS))) {
        return wk_xchg_failed(x, WK_FAIL_CTIMEOUT);
    }
    if (!(x->tflags & (WK_T_REQ_DONE | WK_T_RESP_BYTES))) {
        return wk_xchg_error(x, 408, "Request timeout", "Request body not received in time", 1);
    }
    if (!(x->tflags & WK_T_RESP_HEAD)) {
        return wk_xchg_failed(x, WK_FAIL_RTIMEOUT);
    }
    /* The head was relayed and the body stalled for stream_idle_timeout_ms (the client side
     * re-arms its timer on every step of progress): cut, and say why. */
    wk_xchg_cut(x, SHM_CUT_STREAM_IDLE);
    x->ops->close(x);
    return -1;
}

void wk_upstream_event(struct wk_upstream *u, uint32_t events)
{
    struct wk_xchg *x = u->x;

    if (x == NULL) {
        wk_pool_event(u, events);
        return;
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) && (u->flags & WK_UP_F_REUSED) &&
        u->pass == wk.pass && !(x->tflags & WK_T_RESP_BYTES)) {
        /* Taken from the pool unchecked while this batch was being handled, having entered
         * it in an earlier one: whatever this event announces reached the idle connection
         * before our request, the tail of the backend's previous exchange (extra bytes, a
         * close), never an answer. The connection goes; the request is retried where the
         * rules allow, as after a keep-alive race. */
        if (wk_xchg_failed(x, WK_FAIL_RESET) != 0) {
            return;
        }
        x->ops->wake(x);
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
            if (wk_xchg_failed(x, WK_FAIL_CONNECT) != 0) {
                return;
            }
            x->ops->wake(x);
            return;
        }
        u->flags &= ~WK_UP_F_CONNECTING;
        x->ops->rearm(x);
    }
    x->ops->wake(x);
}
