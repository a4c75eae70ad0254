/* dispatcher: a client connection's lifetime around its HTTP/1 exchanges (wk_conn.c): accept
 * (with the max_connections answer), the PROXY protocol header, the TLS handshake, close, and
 * the closing of idle connections on a graceful stop or when descriptors run out. */
#include "worker/wk_internal.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "shm/shm_snap.h"
#include "worker/wk_pp.h"
#include "worker/wk_tls.h"

void wk_client_close(struct wk_client *c)
{
    if (c->x.at.gen != NULL && (c->state == WK_CS_PROXY || c->state == WK_CS_REPLY)) {
        wk_client_debug(c, "closing during a request");
        wk_xchg_log(&c->x, -1);
    }
    wk_xchg_end(&c->x);
    wk_h2_free(c);
    wk_timer_disarm(&c->timer);
    xp_close(&c->xp, 1);
    free(c->peer.cert_subject);
    c->peer.cert_subject = NULL;
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
        if (c->state == WK_CS_H2) {
            /* Idle or not, a GOAWAY first (once): no new streams, and the step closes the
             * connection as soon as no stream is left and the GOAWAY went out. */
            if (c->h2 == NULL) {
                wk_client_close(c);
            } else {
                wk_client_run(c);
            }
        } else if ((c->state == WK_CS_IDLE || c->state == WK_CS_TLS) &&
                   (c->in.data == NULL || c->in.start == c->in.end)) {
            wk_client_close(c);
        }
        c = next;
    }
}

void wk_close_all_clients(unsigned why)
{
    while (wk.clients != NULL) {
        struct wk_client *c = wk.clients;
        wk_xchg_cut(&c->x, why);
        wk_client_close(c); /* (unlinks it) */
    }
}

size_t wk_shed_idle(size_t max_clients)
{
    struct wk_client *c = wk.clients;
    size_t n = wk_pool_shed();

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

void wk_client_accept(int fd, const struct sockaddr *sa, const struct wk_listener *l)
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
        if (!l->tls && send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
            /* nothing to do */
        }
        close(fd);
        return;
    }
    c = dsp_slab_calloc(&wk.client_slab);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->ev.kind = WK_EV_CLIENT;
    c->timer.owner = &c->ev;
    xp_init(&c->xp, fd);
    c->listener = (uint8_t)l->idx;
    c->flags = WK_C_F_WRITABLE;
    if (l->tls) {
        struct ssl_st *ssl = wk_tls_server_new(fd, l->idx);
        if (ssl == NULL) {
            close(fd);
            dsp_slab_free(&wk.client_slab, c);
            return;
        }
        c->peer.https = 1;
        xp_start_tls(&c->xp, ssl);
    }
    c->peer.family = (uint8_t)sa->sa_family;
    if (sa->sa_family == AF_INET) {
        memcpy(c->peer.ip, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
        c->peer.port = ntohs(((const struct sockaddr_in *)(const void *)sa)->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(c->peer.ip, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
        c->peer.port = ntohs(((const struct sockaddr_in6 *)(const void *)sa)->sin6_port);
    }
    c->x.at.client_family = c->peer.family;
    memcpy(c->x.at.client_ip, c->peer.ip, 16);
    c->x.ops = &wk_h1_ops;
    c->x.peer = &c->peer;
    c->x.rq = &c->in;
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
        dsp_slab_free(&wk.client_slab, c);
        return;
    }
    c->next = wk.clients;
    if (wk.clients != NULL) {
        wk.clients->prev = c;
    }
    wk.clients = c;
    wk.nclients++;
    c->state = WK_CS_IDLE;
    if (l->proxy_protocol) {
        c->state = WK_CS_PPHDR;
    } else if (xp_is_tls(&c->xp)) {
        c->state = WK_CS_TLS;
    }
    wk_client_rearm(c);
}

/* PROXY protocol header: peeked, so that on TLS listeners the ClientHello behind it stays in the
 * socket for OpenSSL; consumed only once complete. Returns 1, 0 or -1 (closed). */
int wk_client_pphdr(struct wk_client *c)
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
        c->peer.family = (uint8_t)pa.family;
        memset(c->peer.ip, 0, sizeof(c->peer.ip));
        memcpy(c->peer.ip, pa.src, pa.family == AF_INET ? 4 : 16);
        c->peer.port = pa.src_port;
        c->x.at.client_family = c->peer.family;
        memcpy(c->x.at.client_ip, c->peer.ip, 16);
    }
    /* The header timeout armed at accept runs on: the PROXY header, TLS handshake and first
     * request head share it (re-arming here would let a trickled PROXY header double it). */
    c->state = xp_is_tls(&c->xp) ? WK_CS_TLS : WK_CS_IDLE;
    return 1;
}

/* TLS listeners: the handshake, still under the header timeout armed at accept (or after the
 * PROXY header). Returns 1 on progress, 0 when blocked, -1 when the client was closed. */
int wk_client_handshake(struct wk_client *c)
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
        /* A listener with client_ca verified a certificate: its subject goes upstream. */
        c->peer.cert_subject = wk_tls_client_subject(c->xp.ssl);
        c->state = WK_CS_IDLE;
        if (wk_tls_alpn_h2(c->xp.ssl) && wk_h2_start(c, NULL, 0) != 0) {
            wk_client_close(c);
            return -1;
        }
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
