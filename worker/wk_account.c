/* dispatcher: what the exchange records about a request: its id, the access log's fields and
 * line, and the statistics in shared memory (per worker shard, per service and backend). */
#include "worker/wk_internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dsp.h"
#include "common/net.h"
#include "common/log.h"
#include "shm/shm_snap.h"
#include "shm/shm_stats.h"
#include "worker/wk_alog.h"

/* ---- access log and statistics -------------------------------------------------------------- */
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

/* Keep what the access log needs from the head at <base> [0, hlen) (parsed into <hd>). The
 * host logged is <ahost> when given (an absolute-form authority, which is what was routed on),
 * else the Host header. */
static void capture_alog(struct wk_xchg *x, const struct wk_head *hd, const char *base, size_t hlen,
                         const char *ahost, size_t ahlen)
{
    const struct wk_hdr *host, *ua, *ref;
    const char *sp;

    free(x->tx->areq);
    x->tx->areq = NULL;
    if (!wk_alog_enabled()) {
        return;
    }
    host = head_find(hd, "host", 4);
    ua = head_find(hd, "user-agent", 10);
    ref = head_find(hd, "referer", 7);
    sp = memchr(base, ' ', DSP_MIN(hlen, 64));
    /* The method as written: the parser may have stopped before it knew one. */
    x->tx->areq = wk_alog_capture(ahost  ? ahost
                                  : host ? host->value
                                         : NULL,
                                  ahost  ? ahlen
                                  : host ? host->vlen
                                         : 0,
                                  base, sp ? (size_t)(sp - base) : 0, hd->url, hd->url_len,
                                  ua ? ua->value : NULL, ua ? ua->vlen : 0, ref ? ref->value : NULL,
                                  ref ? ref->vlen : 0, x->vmajor, x->vminor);
}

static uint64_t request_ms(const struct wk_xchg *x)
{
    return x->tx->started_ms && wk.now >= x->tx->started_ms ? wk.now - x->tx->started_ms : 0;
}

/* Statistics of a request whose response is complete, once: <how> 1 = proxied, 0 = generated.
 * Called just before the write that hands the client the response's last bytes, so that whoever
 * got the response and then reads the counters finds it counted. Relaxed atomic adds into this
 * worker's shard. */
void wk_xchg_tally(struct wk_xchg *x, int how)
{
    const struct shm_service *svc = x->at.service != SHM_NONE ? wk_xsvc(x) : NULL;
    const struct shm_backend *be = svc != NULL && x->at.tries > 0 ? wk_xbe(x) : NULL;
    uint64_t dur = request_ms(x);

    if (x->tflags & WK_T_TALLIED) {
        return;
    }
    x->tflags |= WK_T_TALLIED;
    if (x->at.gen != NULL) {
        __atomic_fetch_add(&wk.me->requests, 1, __ATOMIC_RELAXED);
        if (x->vmajor == 2) {
            __atomic_fetch_add(&wk.ctl->h2[wk.slot].requests, 1, __ATOMIC_RELAXED);
        }
    }
    if (svc == NULL) {
        return;
    }
    if (how == 1 && be != NULL) {
        __atomic_fetch_add(&wk.rt->backends[be->rt_slot].requests, 1, __ATOMIC_RELAXED);
        if (x->status >= 500) {
            __atomic_fetch_add(&wk.rt->services[svc->rt_slot].errors, 1, __ATOMIC_RELAXED);
        }
    }
    shm_stats_record(wk.rt, (unsigned)wk.slot, svc->rt_slot,
                     how == 1 && be != NULL ? be->rt_slot : SHM_NONE, x->status, dur, wk.now);
}

/* The access log's name of a SHM_CUT_* reason. */
static const char *cut_name(unsigned cut)
{
    switch (cut) {
    case SHM_CUT_STREAM_IDLE:
        return "stream_idle_timeout";
    case SHM_CUT_SEND_TIMEOUT:
        return "send_timeout";
    case SHM_CUT_CLIENT_CLOSED:
        return "client_closed";
    case SHM_CUT_BACKEND_CLOSED:
        return "backend_closed";
    case SHM_CUT_BACKEND_INVALID:
        return "backend_invalid";
    case SHM_CUT_TUNNEL_IDLE:
        return "tunnel_idle_timeout";
    case SHM_CUT_REQUEST_ERROR:
        return "request_error";
    case SHM_CUT_INTERNAL:
        return "internal_error";
    case SHM_CUT_SHUTDOWN:
        return "shutdown";
    case SHM_CUT_DEADLINE:
        return "grpc_deadline";
    default:
        return NULL;
    }
}

/* A response whose head was relayed did not reach its end: count it by reason, and say so in
 * the error log (a client that leaves is routine: debug only). */
static void report_cut(const struct wk_xchg *x, unsigned cut)
{
    const struct shm_service *svc = x->at.service != SHM_NONE ? wk_xsvc(x) : NULL;
    const char *sname = svc != NULL ? shm_s(x->at.gen->snap, svc->name) : "-";
    const char *baddr = svc != NULL && x->at.tries > 0 ? shm_s(x->at.gen->snap, wk_xbe(x)->address)
                                                       : "-";
    int level = cut == SHM_CUT_CLIENT_CLOSED || cut == SHM_CUT_SHUTDOWN ? LOG_DEBUG
                : cut == SHM_CUT_SEND_TIMEOUT                           ? LOG_INFO
                                                                        : LOG_WARN;

    if (cut >= 1 && cut <= SHM_CUT_COUNTED) {
        __atomic_fetch_add(&wk.ctl->responses_cut[cut - 1], 1, __ATOMIC_RELAXED);
    }
    if (level > log_level) {
        return;
    }
    if (cut == SHM_CUT_STREAM_IDLE) {
        log_msg(level,
                "service %s, backend %s: response cut after %llu bytes: no data for "
                "stream_idle_timeout_ms (%u ms) (request %.*s)",
                sname, baddr, (unsigned long long)x->tx->bytes_sent,
                svc != NULL ? svc->stream_idle_timeout_ms : 0, (int)x->tx->reqid_len, x->tx->reqid);
    } else {
        log_msg(level, "service %s, backend %s: response cut after %llu bytes: %s (request %.*s)",
                sname, baddr, (unsigned long long)x->tx->bytes_sent, cut_name(cut),
                (int)x->tx->reqid_len, x->tx->reqid);
    }
}

/* A request is over: <how> 1 = proxied response complete, 0 = generated response sent, -1 =
 * the connection closed before its end (logged only, not counted). The log line goes to the
 * worker's buffer. */
void wk_xchg_log(struct wk_xchg *x, int how)
{
    const struct shm_snap_hdr *s = x->at.gen->snap;
    const struct shm_service *svc = x->at.service != SHM_NONE ? wk_xsvc(x) : NULL;
    const struct shm_backend *be = svc != NULL && x->at.tries > 0 ? wk_xbe(x) : NULL;
    struct wk_alog_entry e;
    struct timespec ts;
    char ip[64];
    unsigned cut;

    if (how >= 0) {
        wk_xchg_tally(x, how);
    }
    if (x->tflags & WK_T_LOGGED) {
        return;
    }
    x->tflags |= WK_T_LOGGED;
    cut = x->tx->cut;
    if (how < 0 && cut == SHM_CUT_NONE) {
        cut = SHM_CUT_CLIENT_CLOSED;
    }
    if (how < 0 && (x->tflags & (WK_T_RESP_HEAD | WK_T_TUNNEL | WK_T_REPLIED)) == WK_T_RESP_HEAD) {
        report_cut(x, cut);
    }
    if (!wk_alog_enabled()) {
        return;
    }
    if (x->at.client_family != 0) {
        wk_ip_str(x->at.client_family, x->at.client_ip, ip, sizeof(ip));
    } else {
        wk_ip_str(x->peer->family, x->peer->ip, ip, sizeof(ip));
    }
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    memset(&e, 0, sizeof(e));
    e.client_ip = ip;
    e.req = x->tx->areq;
    /* 499: the client went away before it got an answer (the nginx convention). */
    e.status = how < 0 && (x->status == 0 || x->tx->bytes_sent == 0) ? 499 : x->status;
    e.duration_ms = request_ms(x);
    e.bytes_sent = x->tx->bytes_sent;
    e.reqid = x->tx->reqid;
    e.reqid_len = x->tx->reqid_len;
    if (svc != NULL) {
        e.service = shm_s(s, svc->name);
        e.service_len = svc->name.len;
    }
    if (be != NULL) {
        e.backend = shm_s(s, be->address);
        e.backend_len = be->address.len;
    }
    e.reason = cut_name(cut);
    e.middleware = wk_mw_answered(x, &e.middleware_len);
    e.wall_s = ts.tv_sec;
    e.wall_ms = (unsigned)(ts.tv_nsec / 1000000);
    wk_alog_write(&e);
}

void wk_xchg_identify(struct wk_xchg *x, const struct wk_head *hd, const char *base, size_t hlen,
                      const char *abs_host, size_t abs_hostlen)
{
    /* Keep the client's request id if it is sane, for the error bodies too. */
    for (uint32_t i = 0; i < hd->n; i++) {
        if (wk_hdr_is(&hd->h[i], "x-request-id", 12) &&
            wk_reqid_sane(hd->h[i].value, hd->h[i].vlen)) {
            memcpy(x->tx->reqid, hd->h[i].value, hd->h[i].vlen);
            x->tx->reqid_len = (uint8_t)hd->h[i].vlen;
        }
    }
    if (x->tx->reqid_len == 0) {
        wk_reqid_new(wk.rng, x->tx->reqid);
        x->tx->reqid_len = 32;
    }
    wk_xchg_accept(x, hd);
    /* The host logged is the one routed on: an absolute-form authority before the Host. */
    capture_alog(x, hd, base, hlen, abs_host, abs_hostlen);
}

/* ---- who the client is ----------------------------------------------------------------------- */
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

void wk_ip_str(uint8_t family, const uint8_t *ip, char *buf, size_t len)
{
    struct sockaddr_storage ss;

    ip_to_ss(family, ip, &ss);
    net_ip_str((struct sockaddr *)&ss, buf, len);
}

static int ip_trusted(const struct wk_xchg *x, uint8_t family, const uint8_t *ip)
{
    const struct shm_snap_hdr *s = x->at.gen ? x->at.gen->snap : wk.cur->snap;
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

int wk_xchg_peer_trusted(const struct wk_xchg *x)
{
    return ip_trusted(x, x->peer->family, x->peer->ip);
}

/* The request's client: for a trusted peer, the right-most X-Forwarded-For entry that is not
 * itself a trusted proxy (entries to its left could be forged by the client). */
void wk_xchg_resolve_client(struct wk_xchg *x, const struct wk_head *hd)
{
    x->at.client_family = x->peer->family;
    memcpy(x->at.client_ip, x->peer->ip, 16);
    if (!wk_xchg_peer_trusted(x)) {
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
            x->at.client_family = (uint8_t)fam;
            memcpy(x->at.client_ip, ip, 16);
            if (!ip_trusted(x, (uint8_t)fam, ip)) {
                return;
            }
            if (st == 0) {
                break;
            }
        }
    }
}

/* ---- the exchange's lifetime ---------------------------------------------------------------- */
