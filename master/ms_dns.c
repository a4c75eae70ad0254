/* dispatcher: resolving backend names with c-ares on the master's loop (see ms_dns.h).
 *
 * One entry per distinct name the configuration uses, kept sorted by name. An entry holds the
 * last good address set (sorted, so two answers compare with one memcmp), when it is due again,
 * and the last failure. Entries follow the served configuration: each publish adds the names
 * that appeared (queried at once) and drops those no longer used (an entry with a query in
 * flight is freed by its callback). An answer that changes a set marks the configuration dirty;
 * the next tick publishes one generation for every change of that pass. */
#include "master/ms_dns.h"

#include <ares.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>

#include "admin/adm_buf.h"
#include "common/dsp.h"
#include "common/log.h"
#include "common/net.h"
#include "master/ms_config.h"
#include "master/ms_loop.h"
#include "master/ms_master.h"

#define DNS_TRIES          2  /* attempts per server before a query fails */
#define DNS_MAX_SOCKS      64 /* sockets c-ares may hold open at once (one per server and family) */
#define DNS_MIN_DUE        100  /* ms: never re-query a name faster than the master's tick */
#define DNS_MAX_ADDRS      256  /* addresses of one name used as backends (the first, sorted) */
#define DNS_PUBLISH_GAP_MS 1000 /* at most one generation a second for DNS changes */
#define DNS_LOG(fn, ...)                                                                           \
    do {                                                                                           \
        if (!dns.quiet) {                                                                          \
            fn(__VA_ARGS__);                                                                       \
        }                                                                                          \
    } while (0)
#define RESOLV_CONF     "/etc/resolv.conf"
#define RESOLV_CHECK_MS 5000 /* how often its change is looked for */

enum dname_state { DNAME_NEW, DNAME_OK, DNAME_FAILED };

struct dname {
    char *name;
    struct sockaddr_storage *addrs; /* last good set, port 0, sorted */
    size_t naddrs;
    enum dname_state state;
    int inflight;
    int dead;                /* dropped from the table while a query was in flight */
    int capped;              /* its answer had more than DNS_MAX_ADDRS addresses */
    unsigned failures;       /* consecutive */
    unsigned mark;           /* sync pass that last saw it used */
    uint64_t next_ms;        /* monotonic: when it is due again */
    uint64_t max_ms;         /* resolve_ms of the services that use it (smallest) */
    uint64_t ttl_ms;         /* the interval the last good answer gave */
    uint64_t ok_at, fail_at; /* wall clock seconds, 0 = never */
    char err[96];
};

static struct {
    int lib;         /* ares_library_init() done */
    ares_channel ch; /* the loop's channel, NULL until ms_dns_start() */
    char *servers;   /* its settings */
    int timeout_ms;
    struct dname **v;
    size_t n, cap;
    unsigned pass;
    int dirty;                        /* an address set changed since the last publish */
    uint64_t retry_publish_ms;        /* no DNS publish before then */
    uint64_t publish_backoff_ms;      /* after failed publishes */
    const struct ms_config *last_cfg; /* the configuration object of the last publish */
    struct stat resolv;               /* /etc/resolv.conf when the channel read it */
    uint64_t resolv_check_ms;         /* next look at it */
    struct {
        int fd;
        uint32_t ev;
    } socks[DNS_MAX_SOCKS];
    int nsocks;
    int quiet; /* ms_dns_resolve_all(): its errors are the answer; the start logs a summary */
} dns;

/* ---- entries -------------------------------------------------------------------------------- */
static int name_cmp(const void *key, const void *elem)
{
    return strcmp((const char *)key, (*(struct dname *const *)elem)->name);
}

static struct dname *find(const char *name, size_t *pos)
{
    size_t lo = 0, hi = dns.n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = name_cmp(name, &dns.v[mid]);

        if (c == 0) {
            *pos = mid;
            return dns.v[mid];
        }
        if (c < 0) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    *pos = lo;
    return NULL;
}

static void dname_free(struct dname *d)
{
    free(d->name);
    free(d->addrs);
    free(d);
}

size_t ms_dns_addrs(const char *name, const struct sockaddr_storage **addrs)
{
    size_t pos;
    struct dname *d = name != NULL ? find(name, &pos) : NULL;

    *addrs = d != NULL ? d->addrs : NULL;
    return d != NULL ? d->naddrs : 0;
}

int ms_dns_pending(const char *name)
{
    size_t pos;
    struct dname *d = find(name, &pos);

    return d == NULL || d->state == DNAME_NEW;
}

/* ---- answers -------------------------------------------------------------------------------- */
static int addr_cmp(const void *a, const void *b)
{
    const struct sockaddr_storage *x = a, *y = b;

    if (x->ss_family != y->ss_family) {
        return x->ss_family < y->ss_family ? -1 : 1;
    }
    if (x->ss_family == AF_INET) {
        return memcmp(&((const struct sockaddr_in *)a)->sin_addr,
                      &((const struct sockaddr_in *)b)->sin_addr, 4);
    }
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, 16);
}

static void addr_list(char *buf, size_t len, const struct sockaddr_storage *a, size_t n)
{
    size_t off = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < n && off + 50 < len; i++) {
        char ip[64];

        net_ip_str((const struct sockaddr *)&a[i], ip, sizeof(ip));
        off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? ", " : "", ip);
    }
    if (off + 50 >= len && n > 0) {
        snprintf(buf + off, len - off, ", ...");
    }
}

static uint64_t clamp_ms(uint64_t v, uint64_t lo, uint64_t hi)
{
    if (lo < DNS_MIN_DUE) {
        lo = DNS_MIN_DUE;
    }
    if (hi < lo) {
        hi = lo;
    }
    return v < lo ? lo : v > hi ? hi : v;
}

static uint64_t min_ttl_ms(void)
{
    return ms.cfg != NULL ? (uint64_t)ms.cfg->dns.min_ttl_ms : 1000;
}

static void answered(struct dname *d, struct sockaddr_storage *a, size_t n, uint64_t ttl_ms)
{
    uint64_t now = dsp_now_ms();
    size_t k = 0;

    qsort(a, n, sizeof(*a), addr_cmp);
    for (size_t i = 0; i < n; i++) {
        if (k == 0 || addr_cmp(&a[k - 1], &a[i]) != 0) {
            a[k++] = a[i];
        }
    }
    if (k > DNS_MAX_ADDRS) {
        if (!d->capped) {
            DNS_LOG(log_warn, "backend name %s resolves to %zu addresses: using the first %d",
                    d->name, k, DNS_MAX_ADDRS);
        }
        d->capped = 1;
        k = DNS_MAX_ADDRS;
    } else {
        d->capped = 0;
    }
    if (k != d->naddrs || memcmp(a, d->addrs, k * sizeof(*a)) != 0) {
        char list[512];

        addr_list(list, sizeof(list), a, k);
        DNS_LOG(log_info, "backend name %s resolves to %zu address%s: %s%s", d->name, k,
                k == 1 ? "" : "es", list, d->naddrs > 0 ? " (changed)" : "");
        free(d->addrs);
        d->addrs = a;
        d->naddrs = k;
        dns.dirty = 1;
    } else {
        free(a);
        if (d->state == DNAME_FAILED) {
            DNS_LOG(log_info, "backend name %s resolves again (same %zu address%s)", d->name, k,
                    k == 1 ? "" : "es");
        }
    }
    d->state = DNAME_OK;
    d->failures = 0;
    d->err[0] = '\0';
    d->ok_at = dsp_wall_s();
    d->ttl_ms = clamp_ms(ttl_ms, min_ttl_ms(), d->max_ms);
    d->next_ms = now + d->ttl_ms;
}

static void failed(struct dname *d, const char *why)
{
    uint64_t now = dsp_now_ms();
    uint64_t base = min_ttl_ms() > 1000 ? min_ttl_ms() : 1000;
    unsigned sh = d->failures < 5 ? d->failures : 5;

    if (d->state != DNAME_FAILED || strcmp(d->err, why) != 0) {
        if (d->naddrs > 0) {
            DNS_LOG(log_warn,
                    "backend name %s: resolution failed (%s); keeping its last %zu address%s",
                    d->name, why, d->naddrs, d->naddrs == 1 ? "" : "es");
        } else {
            DNS_LOG(log_error,
                    "backend name %s does not resolve (%s): no backend for it until it does",
                    d->name, why);
        }
    }
    snprintf(d->err, sizeof(d->err), "%s", why);
    if (d->state == DNAME_NEW) {
        dns.dirty = 1; /* publish without what ms_compile() kept while it was pending */
    }
    d->state = DNAME_FAILED;
    d->failures++;
    d->fail_at = dsp_wall_s();
    /* Retry sooner than a good answer would be refreshed, backing off up to resolve_ms. */
    d->next_ms = now + clamp_ms(base << sh, min_ttl_ms(), d->max_ms);
}

/* An address a backend can be: not unspecified (0.0.0.0/8, ::, which connect to this host),
 * broadcast or multicast, whatever a DNS server answers. */
static int usable(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        uint32_t a = ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr);

        return (a >> 24) != 0 && (a >> 28) != 0xe && a != 0xffffffffu;
    }
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)ss)->sin6_addr;

    return !IN6_IS_ADDR_UNSPECIFIED(a6) && !IN6_IS_ADDR_MULTICAST(a6);
}

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    size_t unusable = 0;
    struct dname *d = arg;
    struct sockaddr_storage *a = NULL;
    size_t n = 0, cap = 0;
    int64_t ttl = -1;

    (void)timeouts;
    d->inflight = 0;
    if (d->dead) {
        dname_free(d);
        ares_freeaddrinfo(res);
        return;
    }
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
        d->next_ms = dsp_now_ms(); /* the channel was replaced: ask the new one */
        ares_freeaddrinfo(res);
        return;
    }
    for (struct ares_addrinfo_node *nd = res != NULL ? res->nodes : NULL;
         status == ARES_SUCCESS && nd != NULL; nd = nd->ai_next) {
        struct sockaddr_storage ss;

        memset(&ss, 0, sizeof(ss));
        if (nd->ai_family == AF_INET && nd->ai_addrlen >= sizeof(struct sockaddr_in)) {
            struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;

            s4->sin_family = AF_INET;
            s4->sin_addr = ((const struct sockaddr_in *)(const void *)nd->ai_addr)->sin_addr;
        } else if (nd->ai_family == AF_INET6 && nd->ai_addrlen >= sizeof(struct sockaddr_in6)) {
            struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;

            s6->sin6_family = AF_INET6;
            s6->sin6_addr = ((const struct sockaddr_in6 *)(const void *)nd->ai_addr)->sin6_addr;
        } else {
            continue;
        }
        if (!usable(&ss)) {
            unusable++;
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 4;
            a = dsp_xrealloc(a, cap * sizeof(*a));
        }
        a[n++] = ss;
        if (ttl < 0 || nd->ai_ttl < ttl) {
            ttl = nd->ai_ttl < 0 ? 0 : nd->ai_ttl;
        }
    }
    ares_freeaddrinfo(res);
    if (n > 0) {
        answered(d, a, n, (uint64_t)ttl * 1000u);
        return;
    }
    free(a);
    failed(d, unusable > 0 ? "no usable address (unspecified, broadcast or multicast only)"
              : status == ARES_SUCCESS || status == ARES_ENODATA ? "no address for the name"
              : status == ARES_ENOTFOUND                         ? "no such name"
              : status == ARES_ETIMEOUT                          ? "no answer from the DNS servers"
                                                                 : ares_strerror(status));
}

static void query(ares_channel ch, struct dname *d)
{
    struct ares_addrinfo_hints h;

    memset(&h, 0, sizeof(h));
    h.ai_family = AF_UNSPEC;
    h.ai_flags = ARES_AI_NOSORT;
    d->inflight = 1; /* before the call: a hosts-file answer comes back inside it */
    ares_getaddrinfo(ch, d->name, NULL, &h, on_answer, d);
}

/* ---- following the configuration ------------------------------------------------------------ */
/* Make the table hold exactly the names <cfg> uses, with their resolve_ms bounds. New names are
 * queried at once on <ch> (when given). */
static void sync_names(const struct ms_config *cfg, ares_channel ch)
{
    uint64_t now = dsp_now_ms();
    size_t k = 0;

    dns.pass++;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const struct ms_service *s = &cfg->services[i];
        uint64_t bound = (uint64_t)(s->resolve_ms > 0 ? s->resolve_ms : cfg->dns.resolve_ms);

        for (size_t j = 0; j < s->nbackends; j++) {
            const char *name = s->backends[j].name;
            struct dname *d;
            size_t pos;

            if (name == NULL) {
                continue;
            }
            d = find(name, &pos);
            if (d == NULL) {
                d = dsp_xcalloc(1, sizeof(*d));
                d->name = dsp_xstrdup(name);
                if (dns.n == dns.cap) {
                    dns.cap = dns.cap ? dns.cap * 2 : 8;
                    dns.v = dsp_xrealloc(dns.v, dns.cap * sizeof(*dns.v));
                }
                memmove(&dns.v[pos + 1], &dns.v[pos], (dns.n - pos) * sizeof(*dns.v));
                dns.v[pos] = d;
                dns.n++;
            }
            if (d->mark != dns.pass || bound < d->max_ms) {
                d->max_ms = bound;
            }
            d->mark = dns.pass;
        }
    }
    for (size_t i = 0; i < dns.n; i++) {
        struct dname *d = dns.v[i];

        if (d->mark != dns.pass) {
            if (d->inflight) {
                d->dead = 1;
            } else {
                dname_free(d);
            }
            continue;
        }
        dns.v[k++] = d;
        if (d->next_ms > now + d->max_ms) {
            d->next_ms = now + d->max_ms; /* resolve_ms was lowered */
        }
        if (ch != NULL && !d->inflight && d->state == DNAME_NEW) {
            query(ch, d);
        }
    }
    dns.n = k;
}

static int channel_new(ares_channel *ch, const struct ms_config *cfg, int with_loop);

/* Replace the loop's channel with one built from <cfg> (queries in flight come back cancelled
 * and are asked again on the new one). */
static void channel_replace(const struct ms_config *cfg)
{
    ares_channel nch;

    if (channel_new(&nch, cfg, 1) == 0) {
        ares_channel old = dns.ch;

        dns.ch = nch;
        ares_destroy(old);
    }
}

static void on_publish(void *arg)
{
    const struct ms_config *cfg = ms.cfg;

    (void)arg;
    if (dns.ch != NULL && (dns.timeout_ms != cfg->dns.timeout_ms ||
                           (dns.servers == NULL) != (cfg->dns.servers == NULL) ||
                           (dns.servers != NULL && strcmp(dns.servers, cfg->dns.servers) != 0))) {
        channel_replace(cfg);
    }
    /* A reload of the file (a new configuration object; Redis and DNS changes keep the object)
     * asks every name again at once, as an operator expects of a reload. */
    if (dns.last_cfg != NULL && dns.last_cfg != cfg) {
        for (size_t i = 0; i < dns.n; i++) {
            dns.v[i]->next_ms = 0;
        }
    }
    dns.last_cfg = cfg;
    sync_names(cfg, dns.ch);
}

/* ---- the channel on the master loop ---------------------------------------------------------- */
static void on_fd(int fd, uint32_t events, void *arg)
{
    (void)arg;
    ares_process_fd(dns.ch, events & (EPOLLIN | EPOLLERR | EPOLLHUP) ? fd : ARES_SOCKET_BAD,
                    events & EPOLLOUT ? fd : ARES_SOCKET_BAD);
}

static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    uint32_t ev = (readable ? EPOLLIN : 0u) | (writable ? EPOLLOUT : 0u);
    int i;

    (void)data;
    for (i = 0; i < dns.nsocks && dns.socks[i].fd != fd; i++) {
    }
    if (ev == 0) {
        if (i < dns.nsocks) {
            ms_loop_del(fd);
            dns.socks[i] = dns.socks[--dns.nsocks];
        }
        return;
    }
    if (i < dns.nsocks) {
        if (dns.socks[i].ev != ev && ms_loop_mod(fd, ev) == 0) {
            dns.socks[i].ev = ev;
        }
        return;
    }
    if (dns.nsocks == DNS_MAX_SOCKS || ms_loop_add(fd, ev, on_fd, NULL) != 0) {
        log_error("dns: cannot watch resolver socket %d", (int)fd);
        return; /* its queries time out (ticks process timeouts) and are retried */
    }
    dns.socks[dns.nsocks].fd = fd;
    dns.socks[dns.nsocks].ev = ev;
    dns.nsocks++;
}

static int channel_new(ares_channel *ch, const struct ms_config *cfg, int with_loop)
{
    struct ares_options o;
    int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES, rc;

    if (!dns.lib) {
        if ((rc = ares_library_init(ARES_LIB_INIT_ALL)) != ARES_SUCCESS) {
            log_error("dns: c-ares: %s", ares_strerror(rc));
            return -1;
        }
        dns.lib = 1;
    }
    memset(&o, 0, sizeof(o));
    o.timeout = cfg->dns.timeout_ms;
    o.tries = DNS_TRIES;
    if (with_loop) {
        o.sock_state_cb = sock_state;
        mask |= ARES_OPT_SOCK_STATE_CB;
    }
    if ((rc = ares_init_options(ch, &o, mask)) != ARES_SUCCESS) {
        log_error("dns: cannot set up the resolver: %s", ares_strerror(rc));
        return -1;
    }
    if (cfg->dns.servers != NULL &&
        (rc = ares_set_servers_ports_csv(*ch, cfg->dns.servers)) != ARES_SUCCESS) {
        log_error("dns: servers %s: %s", cfg->dns.servers, ares_strerror(rc));
        ares_destroy(*ch);
        return -1;
    }
    if (with_loop) {
        if (stat(RESOLV_CONF, &dns.resolv) != 0) {
            memset(&dns.resolv, 0, sizeof(dns.resolv));
        }
        free(dns.servers);
        dns.servers = cfg->dns.servers != NULL ? dsp_xstrdup(cfg->dns.servers) : NULL;
        dns.timeout_ms = cfg->dns.timeout_ms;
    }
    return 0;
}

static void on_tick(uint64_t now_ms, void *arg)
{
    (void)arg;
    if (dns.ch == NULL) {
        return;
    }
    if (now_ms >= dns.resolv_check_ms) {
        struct stat st;

        /* A container's resolv.conf may be rewritten (new servers, search domains). */
        dns.resolv_check_ms = now_ms + RESOLV_CHECK_MS;
        if (stat(RESOLV_CONF, &st) != 0) {
            memset(&st, 0, sizeof(st));
        }
        if (st.st_ino != dns.resolv.st_ino || st.st_size != dns.resolv.st_size ||
            st.st_mtim.tv_sec != dns.resolv.st_mtim.tv_sec ||
            st.st_mtim.tv_nsec != dns.resolv.st_mtim.tv_nsec) {
            log_info("dns: %s changed; resolving with its new settings", RESOLV_CONF);
            channel_replace(ms.cfg);
        }
    }
    ares_process_fd(dns.ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD); /* timeouts */
    for (size_t i = 0; i < dns.n; i++) {
        if (!dns.v[i]->inflight && dns.v[i]->next_ms <= now_ms) {
            query(dns.ch, dns.v[i]);
        }
    }
    /* One generation for every change of a pass, and at most one a second however many names
     * change at different times (each costs a compile, a shm object and a switch per worker). A
     * publish that fails (runtime segment full) is retried with a backoff, not every tick. */
    if (dns.dirty && !ms.stopping && now_ms >= dns.retry_publish_ms) {
        dns.dirty = 0;
        if (ms_publish() != 0) {
            dns.dirty = 1;
            dns.publish_backoff_ms = dns.publish_backoff_ms == 0       ? DNS_PUBLISH_GAP_MS
                                     : dns.publish_backoff_ms >= 30000 ? 30000
                                                                       : dns.publish_backoff_ms * 2;
            dns.retry_publish_ms = now_ms + dns.publish_backoff_ms;
            return;
        }
        dns.publish_backoff_ms = 0;
        dns.retry_publish_ms = now_ms + DNS_PUBLISH_GAP_MS;
        log_info("backend addresses changed: generation %llu", (unsigned long long)ms.gen);
    }
}

int ms_dns_start(void)
{
    if (channel_new(&dns.ch, ms.cfg, 1) != 0) {
        dns.ch = NULL;
        return -1;
    }
    if (ms_loop_tick(on_tick, NULL) != 0 || ms_loop_on_publish(on_publish, NULL) != 0) {
        log_error("dns: master loop tables full");
        return -1;
    }
    /* What the start resolved (quietly, before the error log was open). */
    for (size_t i = 0; i < dns.n; i++) {
        char list[512];

        addr_list(list, sizeof(list), dns.v[i]->addrs, dns.v[i]->naddrs);
        log_info("backend name %s resolves to %zu address%s: %s", dns.v[i]->name, dns.v[i]->naddrs,
                 dns.v[i]->naddrs == 1 ? "" : "es", list);
    }
    sync_names(ms.cfg, dns.ch);
    return 0;
}

void ms_dns_stop(void)
{
    if (dns.ch != NULL) {
        ares_destroy(dns.ch);
        dns.ch = NULL;
    }
    for (size_t i = 0; i < dns.n; i++) {
        dname_free(dns.v[i]);
    }
    free(dns.v);
    free(dns.servers);
    dns.v = NULL;
    dns.servers = NULL;
    dns.n = dns.cap = 0;
    if (dns.lib) {
        ares_library_cleanup();
        dns.lib = 0;
    }
}

/* ---- start and -t --------------------------------------------------------------------------- */
static int any_inflight(void)
{
    for (size_t i = 0; i < dns.n; i++) {
        if (dns.v[i]->inflight) {
            return 1;
        }
    }
    return 0;
}

int ms_dns_resolve_all(const struct ms_config *cfg, char **errs)
{
    ares_channel ch;
    uint64_t deadline;
    char *out = NULL;
    size_t outlen = 0;

    sync_names(cfg, NULL);
    if (dns.n == 0) {
        return 0;
    }
    if (channel_new(&ch, cfg, 0) != 0) {
        *errs = dsp_xstrdup("cannot set up the DNS resolver (see the error log)");
        return -1;
    }
    dns.quiet = 1;
    for (size_t i = 0; i < dns.n; i++) {
        query(ch, dns.v[i]);
    }
    /* Every try of every query, plus a margin: c-ares doubles the timeout per round. */
    deadline = dsp_now_ms() + (uint64_t)cfg->dns.timeout_ms * (2u * DNS_TRIES) + 1000u;
    while (any_inflight() && dsp_now_ms() < deadline) {
        ares_socket_t socks[ARES_GETSOCK_MAXNUM];
        struct pollfd pfd[ARES_GETSOCK_MAXNUM];
        struct timeval maxtv = {0, 100000}, tv, *tvp;
        /* The bits as unsigned: c-ares' own ARES_GETSOCK_WRITABLE shifts 1 into an int's sign
         * bit for the last socket. */
        unsigned bits = (unsigned)ares_getsock(ch, socks, ARES_GETSOCK_MAXNUM);
        int np = 0, r;

        for (int i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
            short ev = (short)(((bits >> i) & 1u ? POLLIN : 0) |
                               ((bits >> (i + ARES_GETSOCK_MAXNUM)) & 1u ? POLLOUT : 0));
            if (ev != 0) {
                pfd[np].fd = socks[i];
                pfd[np].events = ev;
                pfd[np].revents = 0;
                np++;
            }
        }
        tvp = ares_timeout(ch, &maxtv, &tv);
        r = poll(pfd, (nfds_t)np, (int)(tvp->tv_sec * 1000 + tvp->tv_usec / 1000) + 1);
        if (r < 0 && errno != EINTR) {
            break;
        }
        if (r <= 0) {
            ares_process_fd(ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
            continue;
        }
        for (int i = 0; i < np; i++) {
            if (pfd[i].revents != 0) {
                ares_process_fd(ch,
                                pfd[i].revents & (POLLIN | POLLERR | POLLHUP) ? pfd[i].fd
                                                                              : ARES_SOCKET_BAD,
                                pfd[i].revents & POLLOUT ? pfd[i].fd : ARES_SOCKET_BAD);
            }
        }
    }
    ares_destroy(ch); /* what is still in flight is cancelled: due again at once on the loop */
    dns.dirty = 0;
    dns.quiet = 0;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const struct ms_service *s = &cfg->services[i];

        for (size_t j = 0; j < s->nbackends; j++) {
            const struct ms_backend *b = &s->backends[j];
            const struct sockaddr_storage *a;
            struct dname *d;
            size_t pos;
            char line[512];
            int len;

            if (b->name == NULL || ms_dns_addrs(b->name, &a) > 0) {
                continue;
            }
            d = find(b->name, &pos);
            len = snprintf(line, sizeof(line),
                           "%s:%d: service \"%s\": backend %s does not resolve: %s\n", cfg->path,
                           b->line, s->name != NULL ? s->name : "?", b->address,
                           d != NULL && d->err[0] ? d->err : "no answer from the DNS servers");
            if (len <= 0) {
                continue;
            }
            len = len < (int)sizeof(line) ? len : (int)sizeof(line) - 1;
            out = dsp_xrealloc(out, outlen + (size_t)len + 1);
            memcpy(out + outlen, line, (size_t)len + 1);
            outlen += (size_t)len;
        }
    }
    if (out == NULL) {
        return 0;
    }
    out[outlen - 1] = '\0'; /* no trailing newline, like the parser's messages */
    *errs = out;
    return -1;
}

/* ---- show instances ------------------------------------------------------------------------- */
static const char *status_of(const struct dname *d)
{
    if (d == NULL || d->state == DNAME_NEW) {
        return "pending";
    }
    if (d->state == DNAME_OK) {
        return "ok";
    }
    return d->naddrs > 0 ? "failed" : "unresolved";
}

void ms_dns_render_service(struct adm_buf *b, uint32_t svc, const void *arg)
{
    const struct ms_service *s;
    int first = 1;

    (void)arg;
    if (ms.cfg == NULL || svc >= ms.cfg->nservices) {
        return;
    }
    s = &ms.cfg->services[svc];
    for (size_t j = 0; j < s->nbackends; j++) {
        const struct ms_backend *be = &s->backends[j];
        struct dname *d;
        size_t pos;

        if (be->name == NULL) {
            continue;
        }
        d = find(be->name, &pos);
        adm_buf_adds(b, first ? ",\"resolve\":[{\"name\":" : ",{\"name\":");
        first = 0;
        adm_buf_jstrz(b, be->address);
        adm_buf_addf(b, ",\"status\":\"%s\",\"addresses\":[", status_of(d));
        for (size_t k = 0; d != NULL && k < d->naddrs; k++) {
            struct sockaddr_storage ss = d->addrs[k];
            char buf[80];

            if (ss.ss_family == AF_INET) {
                ((struct sockaddr_in *)&ss)->sin_port = htons(be->port);
            } else {
                ((struct sockaddr_in6 *)&ss)->sin6_port = htons(be->port);
            }
            adm_buf_adds(b, k ? "," : "");
            adm_buf_jstrz(b, net_addr_str((const struct sockaddr *)&ss, buf, sizeof(buf)));
        }
        adm_buf_addf(b, "],\"ttl_ms\":%llu,\"failures\":%u,\"resolved_at\":%llu,\"error\":",
                     (unsigned long long)(d != NULL ? d->ttl_ms : 0), d != NULL ? d->failures : 0u,
                     (unsigned long long)(d != NULL ? d->ok_at : 0));
        if (d != NULL && d->state == DNAME_FAILED) {
            adm_buf_jstrz(b, d->err);
            adm_buf_addf(b, ",\"failed_at\":%llu}", (unsigned long long)d->fail_at);
        } else {
            adm_buf_adds(b, "null}");
        }
    }
    if (!first) {
        adm_buf_adds(b, "]");
    }
}

/* ---- metrics -------------------------------------------------------------------------------- */
static void metric_family(struct adm_buf *b, int addresses)
{
    const struct ms_config *cfg = ms.cfg;

    for (size_t i = 0; i < cfg->nservices; i++) {
        const struct ms_service *s = &cfg->services[i];

        for (size_t j = 0; j < s->nbackends; j++) {
            const struct ms_backend *be = &s->backends[j];
            struct dname *d;
            size_t pos;

            if (be->name == NULL) {
                continue;
            }
            d = find(be->name, &pos);
            /* Service names are [A-Za-z0-9_.-], backend names [a-z0-9._-]: no escaping. */
            adm_buf_addf(b, "dispatcher_backend_name_%s{service=\"%s\",name=\"%s\"} %zu\n",
                         addresses ? "addresses" : "resolved", s->name ? s->name : "", be->address,
                         addresses ? (d != NULL ? d->naddrs : 0)
                                   : (size_t)(d != NULL && d->state == DNAME_OK));
        }
    }
}

void ms_dns_render_metrics(struct adm_buf *b, const void *arg)
{
    (void)arg;
    if (ms.cfg == NULL || dns.n == 0) {
        return;
    }
    adm_buf_adds(b, "# HELP dispatcher_backend_name_resolved Whether the last resolution of a "
                    "backend name answered (0: failed or pending; its last good addresses "
                    "serve).\n# TYPE dispatcher_backend_name_resolved gauge\n");
    metric_family(b, 0);
    adm_buf_adds(b, "# HELP dispatcher_backend_name_addresses Addresses a backend name serves "
                    "on.\n# TYPE dispatcher_backend_name_addresses gauge\n");
    metric_family(b, 1);
}
