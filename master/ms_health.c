/* dispatcher: active health checks (see ms_health.h). Each backend of a service with a health
 * block gets a non-blocking "GET path HTTP/1.1" every interval_ms; only the status line is read.
 * The checks share one epoll set of their own, which sits in the master loop as a single fd, so
 * their number does not eat into the loop's fd table. */
#include "master/ms_health.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/net.h"
#include "common/tls.h"
#include "common/xport.h"
#include "master/ms_h2hc.h"
#include "master/ms_loop.h"
#include "master/ms_master.h"
#include "shm/shm_lb.h"
#include "shm/shm_snap.h"

#define HC_MAX_INFLIGHT 256 /* checks running at once; due ones beyond wait for the next tick */
#define HC_BUF          256 /* enough for any status line */

#define HC_IDLE       0
#define HC_CONNECTING 1
#define HC_SENDING    2
#define HC_READING    3
#define HC_HANDSHAKE  4 /* TLS services: between connect and sending */

struct hc {
    uint32_t rt_slot;
    uint32_t mark;   /* publish pass that last found it configured */
    struct xport x;  /* the check's connection; x.fd is -1 between checks */
    uint32_t events; /* what it waits for in the checker's epoll set */
    int phase;       /* HC_* */
    uint64_t started_ms;
    uint64_t deadline_ms;
    uint64_t next_ms; /* when the next check starts */
    uint32_t interval_ms, timeout_ms, fall, rise;
    struct sockaddr_storage ss;
    socklen_t sslen;
    char *service; /* names, for log lines */
    char *address;
    char *path;
    char *req; /* the request of the check in flight */
    size_t reqlen, sent;
    char buf[HC_BUF];
    size_t got;
    /* Services with tls = true are checked over TLS, verified as their traffic is. */
    uint32_t tls_flags;         /* shm_service.tls */
    struct ssl_ctx_st *tls_ctx; /* rebuilt when the flags or the CA change */
    char *tls_ca;               /* the CA PEM it was built from ("" = system store) */
    char *tls_sni;              /* NULL: none (the address is verified) */
    char *tls_cert;             /* mTLS: the client certificate and key it was built with ("") */
    char *tls_key;
    uint8_t ip[16];
    size_t iplen;
    uint32_t proto;     /* shm_service.protocol: h2 and grpc services are checked in HTTP/2 */
    struct ms_h2hc *h2; /* the HTTP/2 check in flight */
};

static struct {
    int epfd;
    struct hc **t;
    size_t n, cap;
    uint32_t *by_slot; /* runtime slot -> index in t + 1 */
    uint32_t mark;
    uint32_t inflight;
} hc = {.epfd = -1};

static void hc_free(struct hc *h)
{
    tls_ctx_free(h->tls_ctx);
    free(h->tls_ca);
    free(h->tls_sni);
    free(h->tls_cert);
    if (h->tls_key != NULL) {
        explicit_bzero(h->tls_key, strlen(h->tls_key));
        free(h->tls_key);
    }
    free(h->service);
    free(h->address);
    free(h->path);
    free(h->req);
    free(h);
}

static void replace(char **dst, const char *src)
{
    if (*dst == NULL || strcmp(*dst, src) != 0) {
        free(*dst);
        *dst = dsp_xstrdup(src);
    }
}

/* End the check in flight (if any) without recording a result. */
static void hc_abort(struct hc *h)
{
    if (h->x.fd != -1) {
        /* Deregister before closing: a worker forked meanwhile shares the socket, and epoll
         * forgets a registration only when every descriptor of the file is closed. */
        epoll_ctl(hc.epfd, EPOLL_CTL_DEL, h->x.fd, NULL);
        hc.inflight--;
    }
    xp_close(&h->x, 0); /* a check ends without close_notify */
    free(h->req);
    h->req = NULL;
    ms_h2hc_free(h->h2);
    h->h2 = NULL;
    h->phase = HC_IDLE;
}

static void hc_done(struct hc *h, int ok, uint32_t status, const char *reason, uint64_t now)
{
    unsigned t;

    hc_abort(h);
    t = shm_lb_health_result(&ms.rt->backends[h->rt_slot], ok, status, h->fall, h->rise, now);
    if (t & SHM_LB_T_DOWN) {
        log_warn("backend %s of service %s is down: health check %s failed (%s)", h->address,
                 h->service, h->path, reason);
    } else if (t & SHM_LB_T_UP) {
        log_info("backend %s of service %s is up: health check %s passed", h->address, h->service,
                 h->path);
    } else {
        log_debug("health check %s of backend %s (service %s): %s", h->path, h->address, h->service,
                  ok ? "ok" : reason);
    }
    h->next_ms = h->started_ms + h->interval_ms > now ? h->started_ms + h->interval_ms : now;
}

static void hc_fail_errno(struct hc *h, int err, uint64_t now)
{
    char reason[128];

    snprintf(reason, sizeof(reason), "%s", strerror(err));
    hc_done(h, 0, 0, reason, now);
}

/* A complete status line (or EOF) is in h->buf: judge it. */
static void hc_judge(struct hc *h, uint64_t now)
{
    const char *b = h->buf;
    uint32_t status = 0;
    char reason[64];

    if (h->got >= 12 && memcmp(b, "HTTP/1.", 7) == 0 && b[8] == ' ' && b[9] >= '1' && b[9] <= '5' &&
        b[10] >= '0' && b[10] <= '9' && b[11] >= '0' && b[11] <= '9') {
        status = (uint32_t)((b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0'));
    }
    if (status == 0) {
        hc_done(h, 0, 0, h->got ? "not an HTTP response" : "closed without a response", now);
        return;
    }
    snprintf(reason, sizeof(reason), "status %u", status);
    hc_done(h, status >= 200 && status < 400, status, reason, now);
}

/* Wait for <events> (level-triggered) from now on. Returns 0, or -1 after failing the check. */
static int hc_watch(struct hc *h, uint32_t events, uint64_t now)
{
    struct epoll_event ev = {.events = events, .data.ptr = h};

    if (h->events == events) {
        return 0;
    }
    if (epoll_ctl(hc.epfd, EPOLL_CTL_MOD, h->x.fd, &ev) == -1) {
        hc_fail_errno(h, errno, now);
        return -1;
    }
    h->events = events;
    return 0;
}

/* The transport returned <r> < 1: wait for the direction it wants, or fail the check. */
static void hc_blocked(struct hc *h, ssize_t r, uint64_t now)
{
    if (r == XP_WANT_READ || r == XP_WANT_WRITE) {
        hc_watch(h, r == XP_WANT_WRITE ? EPOLLOUT : EPOLLIN, now);
    } else {
        hc_done(h, 0, 0, xp_error(), now);
    }
}

static void hc_step(struct hc *h, uint32_t events, uint64_t now)
{
    char why[256];
    ssize_t n;

    if (h->phase == HC_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            return;
        }
        if (getsockopt(h->x.fd, SOL_SOCKET, SO_ERROR, &err, &sl) == -1) {
            err = errno;
        }
        if (err != 0) {
            hc_fail_errno(h, err, now);
            return;
        }
        h->phase = h->tls_ctx != NULL ? HC_HANDSHAKE : HC_SENDING;
    }
    if (h->phase == HC_HANDSHAKE) {
        if (!xp_is_tls(&h->x)) {
            struct ssl_st *s = tls_client_conn(h->tls_ctx, h->x.fd, h->tls_sni,
                                               (h->tls_flags & SHM_SVC_TLS_VERIFY) != 0, h->ip,
                                               h->iplen, why, sizeof(why));
            if (s == NULL) {
                hc_done(h, 0, 0, why, now);
                return;
            }
            if (h->proto != SHM_PROTO_HTTP1) {
                static const unsigned char alpn[] = "\x02h2";
                SSL_set_alpn_protos(s, alpn, sizeof(alpn) - 1);
            }
            xp_start_tls(&h->x, s);
        }
        n = xp_handshake(&h->x);
        if (n != 1) {
            if (n != XP_WANT_READ && n != XP_WANT_WRITE &&
                SSL_get_verify_result(h->x.ssl) != X509_V_OK) {
                /* Counted like the workers' handshakes (show instances, /metrics). */
                __atomic_fetch_add(&ms.rt->backends[h->rt_slot].tls_verify_failures, 1,
                                   __ATOMIC_RELAXED);
            }
            hc_blocked(h, n, now);
            return;
        }
        if (h->proto != SHM_PROTO_HTTP1) {
            const unsigned char *p = NULL;
            unsigned plen = 0;
            SSL_get0_alpn_selected(h->x.ssl, &p, &plen);
            if (plen != 2 || memcmp(p, "h2", 2) != 0) {
                hc_done(h, 0, 0, "the backend did not select ALPN h2", now);
                return;
            }
        }
        if (hc_watch(h, EPOLLOUT, now) != 0) {
            return;
        }
        h->phase = HC_SENDING;
    }
    if (h->phase == HC_SENDING) {
        n = xp_write(&h->x, h->req + h->sent, h->reqlen - h->sent, 0);
        if (n < 0) {
            hc_blocked(h, n, now);
            return;
        }
        h->sent += (size_t)n;
        if (h->sent < h->reqlen) {
            return;
        }
        if (hc_watch(h, EPOLLIN, now) != 0) {
            return;
        }
        h->phase = HC_READING;
        return;
    }
    /* Reading: until a line ends or the buffer is full. TLS may hold records it read ahead, for
     * which the socket will not report readable again: read those now. */
    while (h->phase == HC_READING && h->h2 != NULL) {
        char in[4096];
        int st;
        n = xp_read(&h->x, in, sizeof(in));
        if (n < 0) {
            hc_blocked(h, n, now);
            return;
        }
        st = n == 0 ? -1 : ms_h2hc_feed(h->h2, (const uint8_t *)in, (size_t)n);
        if (st != 0) {
            if (st > 0) {
                snprintf(why, sizeof(why), "status %d", st);
            } else {
                snprintf(why, sizeof(why), "no HTTP/2 answer");
            }
            hc_done(h, st >= 200 && st<400, st> 0 ? (uint32_t)st : 0, why, now);
            return;
        }
        if (!xp_pending(&h->x)) {
            return;
        }
    }
    while (h->phase == HC_READING) {
        n = xp_read(&h->x, h->buf + h->got, sizeof(h->buf) - 1 - h->got);
        if (n < 0) {
            hc_blocked(h, n, now);
            return;
        }
        h->got += (size_t)n;
        h->buf[h->got] = '\0';
        if (n == 0 || memchr(h->buf, '\n', h->got) != NULL || h->got == sizeof(h->buf) - 1) {
            hc_judge(h, now);
            return;
        }
        if (!xp_pending(&h->x)) {
            return;
        }
    }
}

static void hc_start(struct hc *h, uint64_t now)
{
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = h};
    const char *host;
    int len, fd;

    h->started_ms = now;
    h->deadline_ms = now + h->timeout_ms;
    h->got = 0;
    h->sent = 0;
    if ((h->tls_flags & SHM_SVC_TLS_ON) && h->tls_ctx == NULL) {
        h->next_ms = now + h->interval_ms; /* logged when the context failed to build */
        return;
    }
    /* A unix socket has no host:port to name: its TLS name, else localhost. */
    host = h->ss.ss_family != AF_UNIX ? h->address : h->tls_sni != NULL ? h->tls_sni : "localhost";
    len = snprintf(NULL, 0,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: dispatcher-health/%s\r\n"
                   "Accept: */*\r\nConnection: close\r\n\r\n",
                   h->path, host, DSP_VERSION);
    h->req = dsp_xmalloc((size_t)len + 1);
    snprintf(h->req, (size_t)len + 1,
             "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: dispatcher-health/%s\r\n"
             "Accept: */*\r\nConnection: close\r\n\r\n",
             h->path, host, DSP_VERSION);
    h->reqlen = (size_t)len;
    if (h->proto != SHM_PROTO_HTTP1) {
        /* HTTP/2 (prior knowledge, or ALPN h2 with TLS): the same GET as a stream. */
        free(h->req);
        h->req = NULL;
        ms_h2hc_free(h->h2);
        h->h2 = NULL;
        h->h2 = ms_h2hc_new(h->path, host, h->tls_ctx != NULL, &h->req, &h->reqlen);
        if (h->h2 == NULL) {
            h->next_ms = now + h->interval_ms;
            return;
        }
    }
    fd = socket(h->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        /* Our shortage, not the backend's: try again later without a verdict. */
        log_errno(LOG_ERROR, errno, "socket() for the health check of %s failed", h->address);
        free(h->req);
        h->req = NULL;
        ms_h2hc_free(h->h2);
        h->h2 = NULL;
        h->next_ms = now + h->interval_ms;
        return;
    }
    xp_init(&h->x, fd);
    h->events = EPOLLOUT;
    hc.inflight++;
    if (connect(fd, (struct sockaddr *)&h->ss, h->sslen) == 0) {
        h->phase = h->tls_ctx != NULL ? HC_HANDSHAKE : HC_SENDING;
    } else if (errno == EINPROGRESS) {
        h->phase = HC_CONNECTING;
    } else {
        int err = errno;
        xp_close(&h->x, 0);
        hc.inflight--;
        hc_fail_errno(h, err, now);
        return;
    }
    if (epoll_ctl(hc.epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
        log_errno(LOG_ERROR, errno, "epoll_ctl(ADD) for the health check of %s failed", h->address);
        xp_close(&h->x, 0);
        hc.inflight--;
        free(h->req);
        h->req = NULL;
        ms_h2hc_free(h->h2);
        h->h2 = NULL;
        h->phase = HC_IDLE;
        h->next_ms = now + h->interval_ms;
    }
}

static void on_tick(uint64_t now, void *arg)
{
    (void)arg;
    for (size_t i = 0; i < hc.n; i++) {
        struct hc *h = hc.t[i];
        if (h->x.fd != -1 && now >= h->deadline_ms) {
            char reason[64];
            snprintf(reason, sizeof(reason), "no answer within %u ms", h->timeout_ms);
            hc_done(h, 0, 0, reason, now);
        }
        if (h->x.fd == -1 && now >= h->next_ms && hc.inflight < HC_MAX_INFLIGHT) {
            hc_start(h, now);
        }
    }
}

static void on_events(int fd, uint32_t events, void *arg)
{
    struct epoll_event ev[64];
    int n;

    (void)fd;
    (void)events;
    (void)arg;
    do {
        uint64_t now = dsp_now_ms();
        n = epoll_wait(hc.epfd, ev, 64, 0);
        for (int i = 0; i < n; i++) {
            hc_step(ev[i].data.ptr, ev[i].events, now);
        }
    } while (n == 64);
}

/* The TLS settings of <svc> for check <h> of backend <b>. */
static void hc_set_tls(struct hc *h, const struct shm_snap_hdr *s, const struct shm_service *svc,
                       const struct shm_backend *b)
{
    const char *ca = shm_s(s, svc->tls_ca_pem);
    const char *cert = shm_s(s, svc->tls_client_cert_pem);
    const char *key = shm_s(s, svc->tls_client_key_pem);
    char err[256];

    free(h->tls_sni);
    h->tls_sni = svc->tls_sni.len > 0 ? dsp_xstrdup(shm_s(s, svc->tls_sni)) : NULL;
    memcpy(h->ip, b->ip, sizeof(h->ip));
    h->iplen = b->family == AF_INET6 ? 16 : 4;
    if (!(svc->tls & SHM_SVC_TLS_ON)) {
        tls_ctx_free(h->tls_ctx);
        h->tls_ctx = NULL;
        h->tls_flags = 0;
        return;
    }
    if (h->tls_ctx != NULL && h->tls_flags == svc->tls && h->tls_ca != NULL &&
        strcmp(h->tls_ca, ca) == 0 && strcmp(h->tls_cert, cert) == 0 &&
        strcmp(h->tls_key, key) == 0) {
        return;
    }
    /* A check in flight keeps the old context alive through its SSL. */
    tls_ctx_free(h->tls_ctx);
    h->tls_flags = svc->tls;
    replace(&h->tls_ca, ca);
    replace(&h->tls_cert, cert);
    if (h->tls_key != NULL) {
        explicit_bzero(h->tls_key, strlen(h->tls_key));
        free(h->tls_key);
    }
    h->tls_key = dsp_xstrdup(key);
    h->tls_ctx = tls_client_ctx_new((svc->tls & SHM_SVC_TLS_VERIFY) != 0, ca, svc->tls_ca_pem.len,
                                    err, sizeof(err));
    if (h->tls_ctx != NULL && svc->tls_client_cert_pem.len > 0 &&
        tls_ctx_use_pem(h->tls_ctx, cert, svc->tls_client_cert_pem.len, key,
                        svc->tls_client_key_pem.len, err, sizeof(err)) != 0) {
        tls_ctx_free(h->tls_ctx);
        h->tls_ctx = NULL;
    }
    if (h->tls_ctx == NULL) {
        log_error("health checks of backend %s (service %s): no TLS: %s", shm_s(s, b->address),
                  shm_s(s, svc->name), err);
    }
}

/* Follow the configuration: add new targets (checked at once), update kept ones (their counters
 * live in the runtime slot and carry over), drop those no longer configured. */
static void on_publish(void *arg)
{
    const struct shm_snap_hdr *s = ms.snap;
    const struct shm_service *svcs = shm_services(s);
    const struct shm_backend *bes = shm_backends(s);
    uint64_t now = dsp_now_ms();
    size_t w = 0;

    (void)arg;
    hc.mark++;
    for (uint32_t i = 0; i < s->nservices; i++) {
        const struct shm_service *svc = &svcs[i];
        if (!svc->health_enabled) {
            continue;
        }
        for (uint32_t j = 0; j < svc->nbackends; j++) {
            const struct shm_backend *b = &bes[svc->backends_first + j];
            uint32_t idx = hc.by_slot[b->rt_slot];
            struct hc *h = idx ? hc.t[idx - 1] : NULL;

            if (h == NULL) {
                h = dsp_xcalloc(1, sizeof(*h));
                xp_init(&h->x, -1);
                h->rt_slot = b->rt_slot;
                h->next_ms = now;
                if (hc.n == hc.cap) {
                    hc.cap = hc.cap ? hc.cap * 2 : 16;
                    hc.t = dsp_xrealloc(hc.t, hc.cap * sizeof(*hc.t));
                }
                hc.t[hc.n++] = h;
                hc.by_slot[b->rt_slot] = (uint32_t)hc.n;
            }
            h->mark = hc.mark;
            h->interval_ms = svc->health_interval_ms ? svc->health_interval_ms : 1;
            h->timeout_ms = svc->health_timeout_ms ? svc->health_timeout_ms : 1;
            h->fall = svc->health_fall;
            h->rise = svc->health_rise;
            h->proto = svc->protocol;
            replace(&h->service, shm_s(s, svc->name));
            replace(&h->address, shm_s(s, b->address));
            replace(&h->path, shm_s(s, svc->health_path));
            hc_set_tls(h, s, svc, b);
            memset(&h->ss, 0, sizeof(h->ss));
            if (b->family == AF_UNIX) {
                const char *path = shm_s(s, b->address) + NET_UNIX_PREFIX_LEN;

                if (net_unix_addr(path, strlen(path), (struct sockaddr_un *)&h->ss, &h->sslen) !=
                    0) {
                    h->sslen = 0; /* cannot happen: the config checked it */
                }
            } else if (b->family == AF_INET6) {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&h->ss;
                s6->sin6_family = AF_INET6;
                s6->sin6_port = htons(b->port);
                memcpy(&s6->sin6_addr, b->ip, 16);
                h->sslen = sizeof(*s6);
            } else {
                struct sockaddr_in *s4 = (struct sockaddr_in *)&h->ss;
                s4->sin_family = AF_INET;
                s4->sin_port = htons(b->port);
                memcpy(&s4->sin_addr, b->ip, 4);
                h->sslen = sizeof(*s4);
            }
            if (h->next_ms > now + h->interval_ms) {
                h->next_ms = now + h->interval_ms; /* the interval got shorter */
            }
        }
    }
    for (size_t i = 0; i < hc.n; i++) {
        struct hc *h = hc.t[i];
        hc.by_slot[h->rt_slot] = 0;
        if (h->mark != hc.mark) {
            hc_abort(h);
            hc_free(h);
            continue;
        }
        hc.t[w++] = h;
    }
    hc.n = w;
    for (size_t i = 0; i < hc.n; i++) {
        hc.by_slot[hc.t[i]->rt_slot] = (uint32_t)i + 1;
    }
}

/* In every child the master forks (workers): drop the checker's descriptors, or a check
 * connection the master closes would stay open in the child for as long as it lives. */
static void on_fork_child(void)
{
    for (size_t i = 0; i < hc.n; i++) {
        /* Only the descriptor: the SSL (if any) is the master's to free. */
        if (hc.t[i]->x.fd != -1) {
            close(hc.t[i]->x.fd);
            hc.t[i]->x.fd = -1;
        }
    }
    if (hc.epfd != -1) {
        close(hc.epfd);
        hc.epfd = -1;
    }
}

int ms_health_init(void)
{
    hc.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (hc.epfd == -1) {
        log_errno(LOG_ERROR, errno, "epoll_create1() for health checks failed");
        return -1;
    }
    hc.by_slot = dsp_xcalloc(SHM_RT_MAX_BACKENDS, sizeof(*hc.by_slot));
    if (pthread_atfork(NULL, NULL, on_fork_child) != 0) {
        log_error("pthread_atfork() for the health checker failed");
        return -1;
    }
    if (ms_loop_add(hc.epfd, EPOLLIN, on_events, NULL) != 0 || ms_loop_tick(on_tick, NULL) != 0 ||
        ms_loop_on_publish(on_publish, NULL) != 0) {
        log_error("cannot register the health checker with the master loop");
        return -1;
    }
    on_publish(NULL);
    return 0;
}
