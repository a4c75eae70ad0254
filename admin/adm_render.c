/* dispatcher: admin answers rendered from shared state (see adm_render.h). Counters are read with
 * relaxed atomic loads: an answer is a consistent-enough picture, never a torn value. */
#include "admin/adm_render.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin/adm_buf.h"
#include "shm/shm_mw.h"
#include "shm/shm_snap.h"
#include "shm/shm_stats.h"

/* A worker that has not adopted a reload after this long is serving a stale snapshot. */
#define STALE_GRACE_S 2

#define LD(p) __atomic_load_n((p), __ATOMIC_RELAXED)

static const char *balance_name(uint32_t b)
{
    switch (b) {
    case SHM_BALANCE_LEASTCONN:
        return "least-conn";
    case SHM_BALANCE_IPHASH:
        return "ip-hash";
    default:
        return "round-robin";
    }
}

static const char *protocol_name(uint32_t p)
{
    switch (p) {
    case SHM_PROTO_H2:
        return "h2";
    case SHM_PROTO_GRPC:
        return "grpc";
    default:
        return "http1";
    }
}

static const char *state_name(uint32_t s)
{
    switch (s) {
    case SHM_BE_UP:
        return "up";
    case SHM_BE_DOWN:
        return "down";
    case SHM_BE_DISABLED:
        return "disabled";
    default:
        return "unknown";
    }
}

static const char *circuit_name(uint32_t c)
{
    switch (c) {
    case SHM_CIRCUIT_CLOSED:
        return "closed";
    case SHM_CIRCUIT_OPEN:
        return "open";
    case SHM_CIRCUIT_HALFOPEN:
        return "half-open";
    default:
        return "unknown";
    }
}

/* The circuit as shown: a circuit tripped by hand is open whatever the breaker's own state. */
static uint32_t circuit_of(const struct shm_rt_backend *r)
{
    return LD(&r->circuit_forced) ? SHM_CIRCUIT_OPEN : LD(&r->circuit);
}

static const char *source_name(uint32_t src)
{
    if ((src & SHM_SOURCE_FILE) && (src & SHM_SOURCE_REDIS)) {
        return "file+redis";
    }
    if (src & SHM_SOURCE_REDIS) {
        return "redis";
    }
    return "file";
}

static unsigned nshards(const struct adm_view *v)
{
    /* Shards of workers retired since still hold their counts. */
    return shm_stats_nshards(v->slots_ever > v->nworkers ? v->slots_ever : v->nworkers);
}

static unsigned configured(const struct adm_view *v)
{
    return v->configured != 0 ? v->configured : v->nworkers;
}

static unsigned slots_ever(const struct adm_view *v)
{
    unsigned n = v->slots_ever > v->nworkers ? v->slots_ever : v->nworkers;
    return n < SHM_MAX_WORKERS ? n : SHM_MAX_WORKERS;
}

/* Requests by client protocol and HTTP/2 abuse by kind, summed over every worker slot used. */
struct proto_sums {
    uint64_t http1, h2;
    uint64_t abuse[SHM_H2_ABUSE_KINDS];
};

static void proto_sums(const struct adm_view *v, struct proto_sums *p)
{
    uint64_t all = 0;

    memset(p, 0, sizeof(*p));
    for (unsigned i = 0; i < slots_ever(v); i++) {
        all += LD(&v->ctl->workers[i].requests);
        p->h2 += LD(&v->ctl->h2[i].requests);
        for (unsigned k = 0; k < SHM_H2_ABUSE_KINDS; k++) {
            p->abuse[k] += LD(&v->ctl->h2[i].abuse[k]);
        }
    }
    p->http1 = all > p->h2 ? all - p->h2 : 0;
}

static uint64_t uptime_s(const struct adm_view *v)
{
    return v->now_s > v->started_at ? v->now_s - v->started_at : 0;
}

/* Requests per second over the last minute (or the uptime, when shorter). */
static double rate(const struct adm_view *v, const struct shm_stats_sum *s)
{
    uint64_t win = uptime_s(v);

    if (win > 60) {
        win = 60;
    }
    if (win < 1) {
        win = 1;
    }
    return (double)s->last_minute / (double)win;
}

static void add_latency(struct adm_buf *b, const struct shm_stats_sum *s)
{
    adm_buf_adds(b, "{\"p50\":");
    adm_buf_f1(b, shm_stats_percentile(s, 0.50));
    adm_buf_adds(b, ",\"p95\":");
    adm_buf_f1(b, shm_stats_percentile(s, 0.95));
    adm_buf_adds(b, ",\"p99\":");
    adm_buf_f1(b, shm_stats_percentile(s, 0.99));
    adm_buf_adds(b, "}");
}

static void add_classes(struct adm_buf *b, const struct shm_stats_sum *s)
{
    adm_buf_addf(b,
                 "{\"1xx\":%llu,\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,\"5xx\":%llu,"
                 "\"other\":%llu}",
                 (unsigned long long)s->classes[1], (unsigned long long)s->classes[2],
                 (unsigned long long)s->classes[3], (unsigned long long)s->classes[4],
                 (unsigned long long)s->classes[5], (unsigned long long)s->classes[0]);
}

static void sum_merge(struct shm_stats_sum *into, const struct shm_stats_sum *s)
{
    into->count += s->count;
    into->sum_ms += s->sum_ms;
    into->last_minute += s->last_minute;
    for (unsigned i = 0; i < 6; i++) {
        into->classes[i] += s->classes[i];
    }
    for (unsigned i = 0; i < SHM_PROM_BUCKETS; i++) {
        into->prom[i] += s->prom[i];
    }
    for (unsigned i = 0; i < SHM_HIST_BUCKETS; i++) {
        into->hist[i] += s->hist[i];
    }
}

void adm_render_error(struct adm_buf *b, const char *msg)
{
    adm_buf_adds(b, "{\"ok\":false,\"error\":");
    adm_buf_jstrz(b, msg);
    adm_buf_adds(b, "}");
}

/* ---- health --------------------------------------------------------------------------------- */
static int backend_available(const struct adm_view *v, const struct shm_backend *be)
{
    const struct shm_rt_backend *r = &v->rt->backends[be->rt_slot];

    return LD(&r->state) == SHM_BE_UP && circuit_of(r) != SHM_CIRCUIT_OPEN;
}

int adm_healthy(const struct adm_view *v, char *why, size_t whylen)
{
    const struct shm_snap_hdr *s = v->snap;
    const struct shm_service *svcs = shm_services(s);
    const struct shm_backend *bes = shm_backends(s);
    uint64_t gen = LD(&v->ctl->gen);

    for (unsigned i = 0; i < v->nworkers && i < SHM_MAX_WORKERS; i++) {
        const struct shm_worker_slot *w = &v->ctl->workers[i];
        uint64_t cur = LD(&w->gen_current);

        if (v->retiring[i]) {
            continue; /* finishing its connections (or gone) after `workers` was lowered */
        }
        if (LD(&w->pid) == 0) {
            snprintf(why, whylen, "worker %u is not running (restarting)", i);
            return 0;
        }
        if (cur == 0) {
            snprintf(why, whylen, "worker %u is starting", i);
            return 0;
        }
        if (cur != gen && v->now_s > v->loaded_at + STALE_GRACE_S) {
            snprintf(why, whylen, "worker %u serves generation %llu, not %llu", i,
                     (unsigned long long)cur, (unsigned long long)gen);
            return 0;
        }
    }
    for (uint32_t i = 0; i < s->nservices; i++) {
        uint32_t up = 0;

        /* A service without backends is "known but not deployed", not a failure. */
        if (svcs[i].nbackends == 0) {
            continue;
        }
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            up += (uint32_t)backend_available(v, &bes[svcs[i].backends_first + j]);
        }
        if (up == 0) {
            snprintf(why, whylen, "service %s has no backend up", shm_s(s, svcs[i].name));
            return 0;
        }
    }
    return 1;
}

void adm_render_health(struct adm_buf *b, const struct adm_view *v)
{
    char why[512] = "";
    unsigned alive = 0;
    unsigned long long restarts = 0;
    int ok = adm_healthy(v, why, sizeof(why));

    for (unsigned i = 0; i < slots_ever(v); i++) {
        alive += i < v->nworkers && !v->retiring[i] && LD(&v->ctl->workers[i].pid) != 0;
        restarts += LD(&v->ctl->workers[i].restarts);
    }
    adm_buf_addf(b, "{\"ok\":true,\"status\":\"%s\",", ok ? "healthy" : "degraded");
    if (!ok) {
        adm_buf_adds(b, "\"reason\":");
        adm_buf_jstrz(b, why);
        adm_buf_adds(b, ",");
    }
    adm_buf_addf(b, "\"uptime_s\":%llu,\"memory_mb\":", (unsigned long long)uptime_s(v));
    adm_buf_f1(b, v->memory_mb < 0 ? 0.0 : v->memory_mb);
    adm_buf_addf(b,
                 ",\"workers\":{\"configured\":%u,\"alive\":%u,\"restarts\":%llu},"
                 "\"instances\":%u,\"config\":{\"generation\":%llu,\"loaded_at\":%llu,"
                 "\"source\":\"%s\",\"path\":",
                 configured(v), alive, restarts, v->snap->nservices,
                 (unsigned long long)v->snap->gen, (unsigned long long)v->loaded_at,
                 source_name(v->snap->source));
    adm_buf_jstr(b, shm_s(v->snap, v->snap->config_path), v->snap->config_path.len);
    if (v->redis_state != NULL) {
        adm_buf_adds(b, ",\"redis\":");
        adm_buf_jstrz(b, v->redis_state);
        if (v->redis_master != NULL) {
            adm_buf_adds(b, ",\"redis_master\":");
            adm_buf_jstrz(b, v->redis_master);
        }
        if (v->redis_has_version) {
            adm_buf_addf(b, ",\"redis_version\":%lld", v->redis_version);
        }
        if (v->redis_problem != NULL) {
            adm_buf_adds(b, ",\"redis_problem\":");
            adm_buf_jstrz(b, v->redis_problem);
        }
    }
    adm_buf_addf(b, "},\"rate_limit\":\"%s\"}", shm_rl_mode_name(LD(&v->rt->rl.mode)));
}

/* ---- instances ------------------------------------------------------------------------------ */
static const struct shm_snap_hdr *sort_snap; /* qsort has no context argument */

/* A (service, route) pair: every route once for its service, and a split route once more for
 * each other service of its split, so that each service lists the hosts that can reach it. */
struct svc_route {
    uint32_t service;
    uint32_t route;
};

static int cmp_route_by_service_host(const void *a, const void *b)
{
    const struct shm_route *rt = shm_routes(sort_snap);
    const struct svc_route *pa = a, *pb = b;
    const struct shm_route *x = &rt[pa->route];
    const struct shm_route *y = &rt[pb->route];
    int c;

    if (pa->service != pb->service) {
        return pa->service < pb->service ? -1 : 1;
    }
    c = strcmp(shm_s(sort_snap, x->host), shm_s(sort_snap, y->host));
    if (c != 0) {
        return c;
    }
    return x->order < y->order ? -1 : x->order > y->order;
}

/* The (service, route) pairs of snapshot <s>, sorted, into a heap array of <*n>; NULL on OOM. */
static struct svc_route *service_routes(const struct shm_snap_hdr *s, uint32_t *n)
{
    const struct shm_route *rts = shm_routes(s);
    struct svc_route *o = malloc(((size_t)s->nroutes + s->nsplits + 1) * sizeof(*o));

    *n = 0;
    if (o == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < s->nroutes; i++) {
        const struct shm_split *sp = shm_route_split(s, &rts[i]);
        o[(*n)++] = (struct svc_route){rts[i].service, i};
        for (uint32_t k = 0; k < rts[i].nsplit; k++) {
            if (sp[k].service != rts[i].service) {
                o[(*n)++] = (struct svc_route){sp[k].service, i};
            }
        }
    }
    sort_snap = s;
    qsort(o, *n, sizeof(*o), cmp_route_by_service_host);
    return o;
}

static void add_backend(struct adm_buf *b, const struct adm_view *v, const struct shm_backend *be)
{
    const struct shm_rt_backend *r = &v->rt->backends[be->rt_slot];
    struct shm_stats_sum st;
    int64_t active = LD(&r->active);

    shm_stats_sum_backend(v->rt, nshards(v), be->rt_slot, v->now_ms, &st);
    adm_buf_adds(b, "{\"address\":");
    adm_buf_jstr(b, shm_s(v->snap, be->address), be->address.len);
    adm_buf_addf(b,
                 ",\"weight\":%u,\"state\":\"%s\",\"circuit\":\"%s\",\"circuit_manual\":%s,"
                 "\"active_connections\":%lld,"
                 "\"requests\":%llu,\"errors\":%llu,\"consecutive_failures\":%u,"
                 "\"passive_failures\":%u,\"ejected\":%s,\"tls_verify_failures\":%llu,"
                 "\"rps\":%.2f,\"latency_ms\":",
                 be->weight, state_name(LD(&r->state)), circuit_name(circuit_of(r)),
                 LD(&r->circuit_forced) ? "true" : "false", (long long)(active < 0 ? 0 : active),
                 (unsigned long long)LD(&r->requests), (unsigned long long)LD(&r->errors),
                 LD(&r->consecutive_failures), LD(&r->passive_failures),
                 LD(&r->state) == SHM_BE_DOWN && LD(&r->ejected) ? "true" : "false",
                 (unsigned long long)LD(&r->tls_verify_failures), rate(v, &st));
    add_latency(b, &st);
    adm_buf_adds(b, "}");
}

void adm_render_instances(struct adm_buf *b, const struct adm_view *v)
{
    const struct shm_snap_hdr *s = v->snap;
    const struct shm_service *svcs = shm_services(s);
    const struct shm_backend *bes = shm_backends(s);
    const struct shm_route *rts = shm_routes(s);
    struct svc_route *order;
    uint32_t ri = 0, norder;

    /* Hosts per service: one sorted pass over the routes instead of a scan per service. */
    order = service_routes(s, &norder);
    if (order == NULL) {
        b->overflow = 1;
        return;
    }
    adm_buf_adds(b, "{\"ok\":true,\"instances\":[");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        const struct shm_service *sv = &svcs[i];
        const struct shm_rt_service *r = &v->rt->services[sv->rt_slot];
        struct shm_stats_sum st;
        const char *prev = NULL;
        int first = 1;

        shm_stats_sum_service(v->rt, nshards(v), sv->rt_slot, v->now_ms, &st);
        adm_buf_adds(b, i ? ",{\"name\":" : "{\"name\":");
        adm_buf_jstr(b, shm_s(s, sv->name), sv->name.len);
        adm_buf_adds(b, ",\"hosts\":[");
        while (ri < norder && order[ri].service < i) {
            ri++;
        }
        for (; ri < norder && order[ri].service == i; ri++) {
            const char *h = shm_s(s, rts[order[ri].route].host);
            if (prev != NULL && strcmp(prev, h) == 0) {
                continue;
            }
            if (!first) {
                adm_buf_adds(b, ",");
            }
            adm_buf_jstr(b, h, rts[order[ri].route].host.len);
            prev = h;
            first = 0;
        }
        adm_buf_addf(b,
                     "],\"balance\":\"%s\",\"protocol\":\"%s\",\"requests\":%llu,"
                     "\"errors\":%llu,\"rps\":%.2f,\"status\":",
                     balance_name(sv->balance), protocol_name(sv->protocol),
                     (unsigned long long)st.count, (unsigned long long)LD(&r->errors),
                     rate(v, &st));
        add_classes(b, &st);
        adm_buf_adds(b, ",\"latency_ms\":");
        add_latency(b, &st);
        if (v->service_extra != NULL) {
            v->service_extra(b, i, v->extra_arg);
        }
        adm_buf_adds(b, ",\"backends\":[");
        for (uint32_t j = 0; j < sv->nbackends; j++) {
            if (j > 0) {
                adm_buf_adds(b, ",");
            }
            add_backend(b, v, &bes[sv->backends_first + j]);
        }
        adm_buf_adds(b, "]}");
    }
    adm_buf_adds(b, "]}");
    free(order);
}

/* ---- routes --------------------------------------------------------------------------------- */
/* ,"middlewares":["a","b"]: the route's chain, in order. */
static void add_route_mws(struct adm_buf *b, const struct shm_snap_hdr *s,
                          const struct shm_route *r)
{
    uint32_t n;
    const uint32_t *ids = shm_mw_route_list(s, r->mw_list, &n);

    adm_buf_adds(b, ",\"middlewares\":[");
    for (uint32_t k = 0; k < n; k++) {
        const struct shm_mw *m = &shm_mws(s)[ids[k]];
        adm_buf_adds(b, k ? "," : "");
        adm_buf_jstr(b, shm_mw_s(s, m->name), m->name.len);
    }
    adm_buf_adds(b, "]");
}

/* ,"middlewares":[{"name","type","answered","passed"}]: every middleware's counters. */
static void add_mw_stats(struct adm_buf *b, const struct adm_view *v)
{
    const struct shm_snap_hdr *s = v->snap;
    uint32_t n = shm_mw_count(s);

    adm_buf_adds(b, ",\"middlewares\":[");
    for (uint32_t i = 0; i < n && !b->overflow; i++) {
        const struct shm_mw *m = &shm_mws(s)[i];
        const struct shm_rt_mw *c = m->rt_slot < SHM_RT_MAX_MIDDLEWARES ? &v->rt->mws[m->rt_slot]
                                                                        : NULL;
        adm_buf_adds(b, i ? ",{\"name\":" : "{\"name\":");
        adm_buf_jstr(b, shm_mw_s(s, m->name), m->name.len);
        adm_buf_addf(b, ",\"type\":\"%s\",\"answered\":%llu,\"passed\":%llu}",
                     shm_mw_type_name(m->type),
                     (unsigned long long)(c != NULL ? LD(&c->answered) : 0),
                     (unsigned long long)(c != NULL ? LD(&c->passed) : 0));
    }
    adm_buf_adds(b, "]");
}

void adm_render_routes(struct adm_buf *b, const struct adm_view *v)
{
    const struct shm_snap_hdr *s = v->snap;
    const struct shm_route *rts = shm_routes(s);
    const struct shm_service *svcs = shm_services(s);

    adm_buf_adds(b, "{\"ok\":true,\"routes\":[");
    for (uint32_t i = 0; i < s->nroutes && !b->overflow; i++) {
        const struct shm_route *r = &rts[i];
        int first = 1;

        adm_buf_adds(b, i ? ",{\"host\":" : "{\"host\":");
        adm_buf_jstr(b, shm_s(s, r->host), r->host.len);
        adm_buf_adds(b, ",\"path\":");
        adm_buf_jstr(b, shm_s(s, r->path), r->path.len);
        adm_buf_adds(b, ",\"methods\":[");
        for (unsigned m = 0; m < 64; m++) {
            if (r->methods & (1ull << m)) {
                adm_buf_addf(b, "%s\"%s\"", first ? "" : ",", http_method_str((enum http_method)m));
                first = 0;
            }
        }
        adm_buf_addf(b, "],\"priority\":%d,\"source\":\"%s\",\"service\":", (int)r->priority,
                     r->source == SHM_SOURCE_REDIS ? "redis" : "file");
        if (r->nsplit > 0) {
            /* A split: "service" is null, the services and weights are in "split". */
            const struct shm_split *sp = shm_route_split(s, r);
            adm_buf_adds(b, "null,\"split\":[");
            for (uint32_t k = 0; k < r->nsplit; k++) {
                adm_buf_adds(b, k ? ",{\"service\":" : "{\"service\":");
                adm_buf_jstr(b, shm_s(s, svcs[sp[k].service].name), svcs[sp[k].service].name.len);
                adm_buf_addf(b, ",\"weight\":%u}", sp[k].weight);
            }
            adm_buf_addf(b, "],\"sticky\":%s",
                         (r->split_flags & SHM_SPLIT_STICKY) ? "true" : "false");
        } else if (r->service < s->nservices) {
            adm_buf_jstr(b, shm_s(s, svcs[r->service].name), svcs[r->service].name.len);
        } else {
            adm_buf_adds(b, "null");
        }
        add_route_mws(b, s, r);
        adm_buf_adds(b, "}");
    }
    adm_buf_adds(b, "]}");
}

/* ---- workers -------------------------------------------------------------------------------- */
void adm_render_workers(struct adm_buf *b, const struct adm_view *v)
{
    unsigned alive = 0, retiring = 0; /* (alive: of the configured workers) */

    for (unsigned i = 0; i < v->nworkers && i < SHM_MAX_WORKERS; i++) {
        if (LD(&v->ctl->workers[i].pid) != 0 && v->retiring[i]) {
            retiring++;
        } else if (LD(&v->ctl->workers[i].pid) != 0) {
            alive++;
        }
    }
    adm_buf_addf(b,
                 "{\"ok\":true,\"configured\":%u,\"alive\":%u,\"retiring\":%u,"
                 "\"generation\":%llu,\"workers\":[",
                 configured(v), alive, retiring, (unsigned long long)LD(&v->ctl->gen));
    for (unsigned i = 0; i < v->nworkers && i < SHM_MAX_WORKERS; i++) {
        const struct shm_worker_slot *w = &v->ctl->workers[i];
        int32_t pid = LD(&w->pid);
        uint64_t started = LD(&w->started_ms);
        uint64_t hb = LD(&w->heartbeat_ms);

        adm_buf_addf(b,
                     "%s{\"slot\":%u,\"pid\":%d,\"alive\":%s,\"restarts\":%u,\"uptime_s\":%llu,"
                     "\"heartbeat_age_ms\":%llu,\"generation\":%llu,\"oldest_generation\":%llu,"
                     "\"connections\":%llu,\"requests\":%llu,\"retiring\":%s}",
                     i ? "," : "", i, (int)pid, pid ? "true" : "false", LD(&w->restarts),
                     (unsigned long long)(pid && v->now_ms > started ? (v->now_ms - started) / 1000
                                                                     : 0),
                     (unsigned long long)(pid && hb && v->now_ms > hb ? v->now_ms - hb : 0),
                     (unsigned long long)LD(&w->gen_current),
                     (unsigned long long)LD(&w->gen_oldest),
                     (unsigned long long)LD(&w->connections), (unsigned long long)LD(&w->requests),
                     v->retiring[i] ? "true" : "false");
    }
    adm_buf_adds(b, "]}");
}

/* ---- stats ---------------------------------------------------------------------------------- */
void adm_render_stats(struct adm_buf *b, const struct adm_view *v)
{
    const struct shm_snap_hdr *s = v->snap;
    const struct shm_service *svcs = shm_services(s);
    const struct shm_backend *bes = shm_backends(s);
    struct shm_stats_sum total, st;
    unsigned long long errors = 0, conns = 0, tls_verify = 0;
    long long active = 0;

    shm_stats_sum_init(&total);
    for (uint32_t i = 0; i < s->nservices; i++) {
        shm_stats_sum_service(v->rt, nshards(v), svcs[i].rt_slot, v->now_ms, &st);
        sum_merge(&total, &st);
        errors += LD(&v->rt->services[svcs[i].rt_slot].errors);
    }
    for (uint32_t i = 0; i < s->nbackends; i++) {
        int64_t a = LD(&v->rt->backends[bes[i].rt_slot].active);
        active += a > 0 ? a : 0;
        tls_verify += LD(&v->rt->backends[bes[i].rt_slot].tls_verify_failures);
    }
    for (unsigned i = 0; i < v->nworkers && i < SHM_MAX_WORKERS; i++) {
        conns += LD(&v->ctl->workers[i].connections);
    }
    adm_buf_addf(b,
                 "{\"ok\":true,\"uptime_s\":%llu,\"generation\":%llu,\"reload_failures\":%llu,"
                 "\"client_connections\":%llu,\"active_connections\":%lld,\"requests\":%llu,"
                 "\"errors\":%llu,\"tls_verify_failures\":%llu,\"rps\":%.2f,\"status\":",
                 (unsigned long long)uptime_s(v), (unsigned long long)s->gen,
                 (unsigned long long)LD(&v->ctl->reload_failures), conns, active,
                 (unsigned long long)total.count, errors, tls_verify, rate(v, &total));
    add_classes(b, &total);
    {
        struct proto_sums ps;
        proto_sums(v, &ps);
        adm_buf_addf(b, ",\"requests_by_proto\":{\"http1\":%llu,\"h2\":%llu},\"h2_abuse\":{",
                     (unsigned long long)ps.http1, (unsigned long long)ps.h2);
        for (unsigned k = 0; k < SHM_H2_ABUSE_KINDS; k++) {
            adm_buf_addf(b, "%s\"%s\":%llu", k ? "," : "", shm_h2_abuse_name(k),
                         (unsigned long long)ps.abuse[k]);
        }
        adm_buf_adds(b, "}");
    }
    adm_buf_adds(b, ",\"latency_ms\":");
    add_latency(b, &total);
    add_mw_stats(b, v);
    adm_buf_adds(b, ",\"services\":[");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        shm_stats_sum_service(v->rt, nshards(v), svcs[i].rt_slot, v->now_ms, &st);
        adm_buf_adds(b, i ? ",{\"name\":" : "{\"name\":");
        adm_buf_jstr(b, shm_s(s, svcs[i].name), svcs[i].name.len);
        unsigned long long tv = 0;
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            tv += LD(&v->rt->backends[bes[svcs[i].backends_first + j].rt_slot].tls_verify_failures);
        }
        adm_buf_addf(b,
                     ",\"requests\":%llu,\"errors\":%llu,\"tls_verify_failures\":%llu,"
                     "\"rps\":%.2f,\"status\":",
                     (unsigned long long)st.count,
                     (unsigned long long)LD(&v->rt->services[svcs[i].rt_slot].errors), tv,
                     rate(v, &st));
        add_classes(b, &st);
        adm_buf_adds(b, ",\"latency_ms\":");
        add_latency(b, &st);
        adm_buf_adds(b, "}");
    }
    adm_buf_adds(b, "]}");
}

/* ---- certs ---------------------------------------------------------------------------------- */
void adm_render_certs(struct adm_buf *b, const struct adm_view *v)
{
    const struct shm_snap_hdr *s = v->snap;
    const struct shm_cert *certs = shm_certs(s);
    const struct shm_str *names = shm_cert_names(s);

    adm_buf_adds(b, "{\"ok\":true,\"certs\":[");
    for (uint32_t i = 0; i < s->ncerts && !b->overflow; i++) {
        const struct shm_cert *c = &certs[i];
        long long days = ((long long)c->not_after - (long long)v->now_s) / 86400;
        char date[32] = "";
        time_t na = (time_t)c->not_after;
        struct tm tm;

        if (gmtime_r(&na, &tm) == NULL ||
            strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
            date[0] = '\0';
        }

        adm_buf_adds(b, i ? ",{\"subject\":" : "{\"subject\":");
        adm_buf_jstr(b, shm_s(s, c->subject), c->subject.len);
        adm_buf_adds(b, ",\"names\":[");
        for (uint32_t k = 0; k < c->nnames && (uint64_t)c->names_first + k < s->ncert_names; k++) {
            const struct shm_str *n = &names[c->names_first + k];
            if (k > 0) {
                adm_buf_adds(b, ",");
            }
            adm_buf_jstr(b, shm_s(s, *n), n->len);
        }
        adm_buf_adds(b, "],\"path\":");
        adm_buf_jstr(b, shm_s(s, c->path), c->path.len);
        adm_buf_addf(b,
                     ",\"not_after\":%llu,\"not_after_date\":\"%s\",\"days_left\":%lld,"
                     "\"default\":%s,\"self_signed\":%s,\"expired\":%s,\"source\":\"%s\","
                     "\"ocsp_stapled\":%s}",
                     (unsigned long long)c->not_after, date, days,
                     (c->flags & SHM_CERT_F_DEFAULT) ? "true" : "false",
                     (c->flags & SHM_CERT_F_SELF_SIGNED) ? "true" : "false",
                     (c->flags & SHM_CERT_F_EXPIRED) || (uint64_t)v->now_s > c->not_after ? "true"
                                                                                          : "false",
                     c->source == SHM_SOURCE_REDIS ? "redis" : "file",
                     c->ocsp.len > 0 ? "true" : "false");
    }
    adm_buf_adds(b, "]}");
}

/* ---- Prometheus ------------------------------------------------------------------------------ */
/* A label value: backslash, double quote and line feed escaped (exposition format 0.0.4). */
static void prom_label(struct adm_buf *b, const char *s, size_t n)
{
    adm_buf_adds(b, "\"");
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\') {
            adm_buf_adds(b, "\\\\");
        } else if (s[i] == '"') {
            adm_buf_adds(b, "\\\"");
        } else if (s[i] == '\n') {
            adm_buf_adds(b, "\\n");
        } else {
            adm_buf_add(b, &s[i], 1);
        }
    }
    adm_buf_adds(b, "\"");
}

static void prom_head(struct adm_buf *b, const char *name, const char *type, const char *help)
{
    adm_buf_addf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void prom_svc(struct adm_buf *b, const struct shm_snap_hdr *s, const struct shm_service *sv)
{
    adm_buf_adds(b, "service=");
    prom_label(b, shm_s(s, sv->name), sv->name.len);
}

static void prom_be(struct adm_buf *b, const struct shm_snap_hdr *s, const struct shm_service *sv,
                    const struct shm_backend *be)
{
    prom_svc(b, s, sv);
    adm_buf_adds(b, ",backend=");
    prom_label(b, shm_s(s, be->address), be->address.len);
}

/* The rate limiter's bucket table (shm/shm_rl.h), and its fleet reconciliation. */
static void render_rl_metrics(struct adm_buf *b, const struct adm_view *v)
{
    const struct shm_rl *rl = &v->rt->rl;
    const struct shm_snap_hdr *s = v->snap;
    uint32_t mode = LD(&rl->mode);

    prom_head(b, "dispatcher_rate_limit_keys", "gauge",
              "Keys with a bucket in the rate_limit table (all middlewares, all workers).");
    adm_buf_addf(b, "dispatcher_rate_limit_keys %llu\n", (unsigned long long)LD(&rl->keys));
    prom_head(b, "dispatcher_rate_limit_capacity", "gauge",
              "Buckets the rate_limit table holds (limits.rate_limit_keys, rounded up).");
    adm_buf_addf(b, "dispatcher_rate_limit_capacity %llu\n",
                 (unsigned long long)rl->ngroups * SHM_RL_WAYS);
    prom_head(b, "dispatcher_rate_limit_evictions_total", "counter",
              "Buckets not yet full given to another key because the table was full there.");
    adm_buf_addf(b, "dispatcher_rate_limit_evictions_total %llu\n",
                 (unsigned long long)LD(&rl->evictions));
    prom_head(b, "dispatcher_rate_limit_contended_total", "counter",
              "Requests let through unlimited because a bucket group stayed locked (a worker "
              "stopped while claiming): expected to stay 0.");
    adm_buf_addf(b, "dispatcher_rate_limit_contended_total %llu\n",
                 (unsigned long long)LD(&rl->contended));
    prom_head(b, "dispatcher_rate_limit_fleet_fallback", "gauge",
              "1 while fleet-scope rate limits count on this host only (Redis unreachable).");
    adm_buf_addf(b, "dispatcher_rate_limit_fleet_fallback %d\n", mode == SHM_RL_MODE_FALLBACK);
    prom_head(b, "dispatcher_rate_limit_fleet_syncs_total", "counter",
              "Fleet-scope reconciliations with Redis, by result.");
    adm_buf_addf(b,
                 "dispatcher_rate_limit_fleet_syncs_total{result=\"ok\"} %llu\n"
                 "dispatcher_rate_limit_fleet_syncs_total{result=\"failed\"} %llu\n",
                 (unsigned long long)LD(&rl->fleet_syncs),
                 (unsigned long long)LD(&rl->fleet_failures));
    if (mode == SHM_RL_MODE_OFF) {
        return;
    }
    prom_head(b, "dispatcher_rate_limit_middleware_keys_total", "counter",
              "Buckets given to new keys of each rate_limit middleware, and (evicted) those that "
              "took the place of a bucket not yet full.");
    for (uint32_t i = 0; i < shm_mw_count(s) && !b->overflow; i++) {
        const struct shm_mw *m = &shm_mws(s)[i];
        const uint64_t *tc = v->rt->mws[m->rt_slot % SHM_RT_MAX_MIDDLEWARES].type_counters;

        if (m->type != SHM_MW_RATE_LIMIT) {
            continue;
        }
        for (int k = 0; k < 2; k++) {
            adm_buf_adds(b, "dispatcher_rate_limit_middleware_keys_total{middleware=");
            prom_label(b, shm_mw_s(s, m->name), m->name.len);
            adm_buf_addf(b, ",result=\"%s\"} %llu\n", k ? "evicted" : "new",
                         (unsigned long long)LD(&tc[k ? SHM_RL_TC_EVICTIONS : SHM_RL_TC_KEYS]));
        }
    }
}

/* basic_auth and forward_auth: their outcomes per middleware (shm/shm_mw_auth.h counters). */
static void render_auth_metrics(struct adm_buf *b, const struct adm_view *v)
{
    static const char *const ba[4] = {"cached", "hashed", "rejected", "busy"};
    static const char *const fa[3] = {"allowed", "denied", "failed"};
    const struct shm_snap_hdr *s = v->snap;

    for (int t = 0; t < 2; t++) {
        uint32_t type = t ? SHM_MW_FORWARD_AUTH : SHM_MW_BASIC_AUTH;
        int headed = 0;
        for (uint32_t i = 0; i < shm_mw_count(s) && !b->overflow; i++) {
            const struct shm_mw *m = &shm_mws(s)[i];
            const uint64_t *tc = v->rt->mws[m->rt_slot % SHM_RT_MAX_MIDDLEWARES].type_counters;
            if (m->type != type) {
                continue;
            }
            if (!headed) {
                headed = 1;
                prom_head(b, t ? "dispatcher_forward_auth_total" : "dispatcher_basic_auth_total",
                          "counter",
                          t ? "forward_auth decisions: the auth service allowed (2xx), denied (its "
                              "answer returned), or failed (503)."
                            : "basic_auth checks: verified from the cache or by hashing, rejected "
                              "(401), or refused while too many checks waited (503).");
            }
            for (int k = 0; k < (t ? 3 : 4); k++) {
                adm_buf_adds(b, t ? "dispatcher_forward_auth_total{middleware="
                                  : "dispatcher_basic_auth_total{middleware=");
                prom_label(b, shm_mw_s(s, m->name), m->name.len);
                adm_buf_addf(b, ",result=\"%s\"} %llu\n", t ? fa[k] : ba[k],
                             (unsigned long long)LD(&tc[k]));
            }
        }
    }
}

/* compress: responses compressed per coding, and body bytes in and out (shm/shm_mw.h). */
static void render_compress_metrics(struct adm_buf *b, const struct adm_view *v)
{
    const struct shm_snap_hdr *s = v->snap;
    int headed = 0;

    for (int k = 0; k < 2; k++) {
        for (uint32_t i = 0; i < shm_mw_count(s) && !b->overflow; i++) {
            const struct shm_mw *m = &shm_mws(s)[i];
            const uint64_t *tc = v->rt->mws[m->rt_slot % SHM_RT_MAX_MIDDLEWARES].type_counters;
            if (m->type != SHM_MW_COMPRESS) {
                continue;
            }
            if (headed <= k) {
                headed = k + 1;
                prom_head(b, k ? "dispatcher_compress_bytes_total" : "dispatcher_compress_total",
                          "counter",
                          k ? "Body bytes into the compress middleware's encoders and out of them."
                            : "Responses the compress middleware compressed, by coding.");
            }
            for (int j = 0; j < 2; j++) {
                adm_buf_adds(b, k ? "dispatcher_compress_bytes_total{middleware="
                                  : "dispatcher_compress_total{middleware=");
                prom_label(b, shm_mw_s(s, m->name), m->name.len);
                adm_buf_addf(b, k ? ",direction=\"%s\"} %llu\n" : ",encoding=\"%s\"} %llu\n",
                             k ? (j ? "out" : "in") : (j ? "br" : "gzip"),
                             (unsigned long long)LD(
                                 &tc[k ? (j ? SHM_MW_GZ_C_OUT : SHM_MW_GZ_C_IN)
                                       : (j ? SHM_MW_GZ_C_BR : SHM_MW_GZ_C_GZIP)]));
            }
        }
    }
}

void adm_render_metrics(struct adm_buf *b, const struct adm_view *v)
{
    static const char *const classes[6] = {"other", "1xx", "2xx", "3xx", "4xx", "5xx"};
    const struct shm_snap_hdr *s = v->snap;
    const struct shm_service *svcs = shm_services(s);
    const struct shm_backend *bes = shm_backends(s);
    struct shm_stats_sum *sums;
    unsigned long long conns = 0, restarts = 0;
    unsigned alive = 0;

    sums = calloc(s->nservices ? s->nservices : 1, sizeof(*sums));
    if (sums == NULL) {
        b->overflow = 1;
        return;
    }
    for (uint32_t i = 0; i < s->nservices; i++) {
        shm_stats_sum_service(v->rt, nshards(v), svcs[i].rt_slot, v->now_ms, &sums[i]);
    }

    prom_head(b, "dispatcher_requests_total", "counter",
              "Requests answered, by service and status class.");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        for (unsigned c = 1; c < 6; c++) {
            adm_buf_adds(b, "dispatcher_requests_total{");
            prom_svc(b, s, &svcs[i]);
            adm_buf_addf(b, ",code=\"%s\"} %llu\n", classes[c],
                         (unsigned long long)sums[i].classes[c]);
        }
        if (sums[i].classes[0] != 0) {
            adm_buf_adds(b, "dispatcher_requests_total{");
            prom_svc(b, s, &svcs[i]);
            adm_buf_addf(b, ",code=\"other\"} %llu\n", (unsigned long long)sums[i].classes[0]);
        }
    }

    prom_head(b, "dispatcher_request_errors_total", "counter",
              "Requests of a service that failed (5xx answered or backend failure).");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        adm_buf_adds(b, "dispatcher_request_errors_total{");
        prom_svc(b, s, &svcs[i]);
        adm_buf_addf(b, "} %llu\n",
                     (unsigned long long)LD(&v->rt->services[svcs[i].rt_slot].errors));
    }

    prom_head(b, "dispatcher_request_duration_seconds", "histogram",
              "Time from a request's head to the end of its response, by service.");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        unsigned long long cum = 0;

        for (unsigned k = 0; k < SHM_PROM_BUCKETS; k++) {
            cum += sums[i].prom[k];
            adm_buf_adds(b, "dispatcher_request_duration_seconds_bucket{");
            prom_svc(b, s, &svcs[i]);
            if (k < SHM_PROM_BUCKETS - 1) {
                adm_buf_addf(b, ",le=\"%g\"} %llu\n", shm_stats_prom_le_ms[k] / 1000.0, cum);
            } else {
                adm_buf_addf(b, ",le=\"+Inf\"} %llu\n", cum);
            }
        }
        adm_buf_adds(b, "dispatcher_request_duration_seconds_sum{");
        prom_svc(b, s, &svcs[i]);
        adm_buf_addf(b, "} %.3f\n", (double)sums[i].sum_ms / 1000.0);
        adm_buf_adds(b, "dispatcher_request_duration_seconds_count{");
        prom_svc(b, s, &svcs[i]);
        adm_buf_addf(b, "} %llu\n", cum);
    }

    for (unsigned i = 0; i < slots_ever(v); i++) {
        conns += i < v->nworkers ? LD(&v->ctl->workers[i].connections) : 0;
        restarts += LD(&v->ctl->workers[i].restarts);
        alive += i < v->nworkers && !v->retiring[i] && LD(&v->ctl->workers[i].pid) != 0;
    }
    prom_head(b, "dispatcher_active_connections", "gauge", "Open client connections.");
    adm_buf_addf(b, "dispatcher_active_connections %llu\n", conns);

    prom_head(b, "dispatcher_backend_up", "gauge",
              "1 when the backend is up, 0 when down or disabled.");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            const struct shm_backend *be = &bes[svcs[i].backends_first + j];
            adm_buf_adds(b, "dispatcher_backend_up{");
            prom_be(b, s, &svcs[i], be);
            adm_buf_addf(b, "} %d\n", LD(&v->rt->backends[be->rt_slot].state) == SHM_BE_UP);
        }
    }
    prom_head(b, "dispatcher_backend_state", "gauge",
              "Backend state: 1 for the state it is in (up, down or disabled).");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            const struct shm_backend *be = &bes[svcs[i].backends_first + j];
            uint32_t st = LD(&v->rt->backends[be->rt_slot].state);
            for (uint32_t k = SHM_BE_UP; k <= SHM_BE_DISABLED; k++) {
                adm_buf_adds(b, "dispatcher_backend_state{");
                prom_be(b, s, &svcs[i], be);
                adm_buf_addf(b, ",state=\"%s\"} %d\n", state_name(k), st == k);
            }
        }
    }
    prom_head(b, "dispatcher_backend_circuit_state", "gauge",
              "Circuit breaker: 0 closed, 1 open, 2 half-open.");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            const struct shm_backend *be = &bes[svcs[i].backends_first + j];
            adm_buf_adds(b, "dispatcher_backend_circuit_state{");
            prom_be(b, s, &svcs[i], be);
            adm_buf_addf(b, "} %u\n", circuit_of(&v->rt->backends[be->rt_slot]));
        }
    }
    prom_head(b, "dispatcher_backend_active_connections", "gauge",
              "Backend connections carrying a request, all workers.");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            const struct shm_backend *be = &bes[svcs[i].backends_first + j];
            int64_t a = LD(&v->rt->backends[be->rt_slot].active);
            adm_buf_adds(b, "dispatcher_backend_active_connections{");
            prom_be(b, s, &svcs[i], be);
            adm_buf_addf(b, "} %lld\n", (long long)(a > 0 ? a : 0));
        }
    }
    prom_head(b, "dispatcher_backend_requests_total", "counter", "Requests a backend answered.");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            const struct shm_backend *be = &bes[svcs[i].backends_first + j];
            adm_buf_adds(b, "dispatcher_backend_requests_total{");
            prom_be(b, s, &svcs[i], be);
            adm_buf_addf(b, "} %llu\n",
                         (unsigned long long)LD(&v->rt->backends[be->rt_slot].requests));
        }
    }
    prom_head(b, "dispatcher_backend_errors_total", "counter",
              "Failed attempts on a backend (connect, reset, timeout, bad response).");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            const struct shm_backend *be = &bes[svcs[i].backends_first + j];
            adm_buf_adds(b, "dispatcher_backend_errors_total{");
            prom_be(b, s, &svcs[i], be);
            adm_buf_addf(b, "} %llu\n",
                         (unsigned long long)LD(&v->rt->backends[be->rt_slot].errors));
        }
    }
    prom_head(b, "dispatcher_backend_tls_verify_failures_total", "counter",
              "TLS handshakes with a backend that failed verifying its certificate.");
    for (uint32_t i = 0; i < s->nservices && !b->overflow; i++) {
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            const struct shm_backend *be = &bes[svcs[i].backends_first + j];
            adm_buf_adds(b, "dispatcher_backend_tls_verify_failures_total{");
            prom_be(b, s, &svcs[i], be);
            adm_buf_addf(b, "} %llu\n",
                         (unsigned long long)LD(&v->rt->backends[be->rt_slot].tls_verify_failures));
        }
    }

    prom_head(b, "dispatcher_workers", "gauge", "Configured worker processes.");
    adm_buf_addf(b, "dispatcher_workers %u\n", configured(v));
    prom_head(b, "dispatcher_workers_alive", "gauge", "Worker processes running.");
    adm_buf_addf(b, "dispatcher_workers_alive %u\n", alive);
    prom_head(b, "dispatcher_worker_restarts_total", "counter",
              "Worker processes respawned after they died.");
    adm_buf_addf(b, "dispatcher_worker_restarts_total %llu\n", restarts);
    prom_head(b, "dispatcher_config_generation", "gauge", "Configuration generation served.");
    adm_buf_addf(b, "dispatcher_config_generation %llu\n", (unsigned long long)s->gen);
    prom_head(b, "dispatcher_config_loaded_timestamp_seconds", "gauge",
              "When the current configuration was loaded (unix time).");
    adm_buf_addf(b, "dispatcher_config_loaded_timestamp_seconds %llu\n",
                 (unsigned long long)v->loaded_at);
    prom_head(b, "dispatcher_config_reload_failures_total", "counter",
              "Reloads rejected because the configuration was invalid.");
    adm_buf_addf(b, "dispatcher_config_reload_failures_total %llu\n",
                 (unsigned long long)LD(&v->ctl->reload_failures));
    if (v->fleet != NULL) {
        size_t flagged = 0;
        char flags[64];

        for (size_t i = 0; i < v->fleet->n; i++) {
            flagged += adm_fleet_flags(v->fleet, &v->fleet->nodes[i], v->now_s, flags,
                                       sizeof(flags)) > 0;
        }
        prom_head(b, "dispatcher_fleet_nodes", "gauge",
                  "Dispatchers of this Redis environment that report (show fleet).");
        adm_buf_addf(b, "dispatcher_fleet_nodes %zu\n", v->fleet->n);
        prom_head(b, "dispatcher_fleet_nodes_flagged", "gauge",
                  "Of those, the ones that refused a change, serve an older version or went "
                  "silent.");
        adm_buf_addf(b, "dispatcher_fleet_nodes_flagged %zu\n", flagged);
    }
    prom_head(b, "dispatcher_tls_handshakes_total", "counter",
              "TLS handshakes with clients on TLS listeners, by outcome.");
    adm_buf_addf(b,
                 "dispatcher_tls_handshakes_total{result=\"full\"} %llu\n"
                 "dispatcher_tls_handshakes_total{result=\"resumed\"} %llu\n"
                 "dispatcher_tls_handshakes_total{result=\"failed\"} %llu\n",
                 (unsigned long long)LD(&v->ctl->tls_handshakes[SHM_TLS_HS_FULL]),
                 (unsigned long long)LD(&v->ctl->tls_handshakes[SHM_TLS_HS_RESUMED]),
                 (unsigned long long)LD(&v->ctl->tls_handshakes[SHM_TLS_HS_FAILED]));
    {
        struct proto_sums ps;
        proto_sums(v, &ps);
        prom_head(b, "dispatcher_requests_by_proto_total", "counter",
                  "Requests handled, by client protocol (http1: HTTP/1.x, h2: HTTP/2).");
        adm_buf_addf(b,
                     "dispatcher_requests_by_proto_total{proto=\"http1\"} %llu\n"
                     "dispatcher_requests_by_proto_total{proto=\"h2\"} %llu\n",
                     (unsigned long long)ps.http1, (unsigned long long)ps.h2);
        prom_head(b, "dispatcher_h2_abuse_total", "counter",
                  "HTTP/2 client abuse stopped, by kind (floods: connections sent GOAWAY; "
                  "refused_stream, zero_window: streams reset).");
        for (unsigned k = 0; k < SHM_H2_ABUSE_KINDS; k++) {
            adm_buf_addf(b, "dispatcher_h2_abuse_total{kind=\"%s\"} %llu\n", shm_h2_abuse_name(k),
                         (unsigned long long)ps.abuse[k]);
        }
    }
    if (shm_mw_count(v->snap) > 0) {
        const struct shm_snap_hdr *ms = v->snap;
        prom_head(b, "dispatcher_middleware_total", "counter",
                  "Requests through each middleware: answered by it, or passed on.");
        for (uint32_t i = 0; i < shm_mw_count(ms) && !b->overflow; i++) {
            const struct shm_mw *m = &shm_mws(ms)[i];
            const struct shm_rt_mw *c = &v->rt->mws[m->rt_slot % SHM_RT_MAX_MIDDLEWARES];
            for (int k = 0; k < 2; k++) {
                adm_buf_adds(b, "dispatcher_middleware_total{middleware=");
                prom_label(b, shm_mw_s(ms, m->name), m->name.len);
                adm_buf_addf(b, ",type=\"%s\",result=\"%s\"} %llu\n", shm_mw_type_name(m->type),
                             k ? "passed" : "answered",
                             (unsigned long long)LD(k ? &c->passed : &c->answered));
            }
        }
    }
    prom_head(b, "dispatcher_responses_cut_total", "counter",
              "Proxied responses cut after their head was relayed, by reason.");
    {
        static const char *const why[SHM_CUT_COUNTED] = {"stream_idle_timeout", "send_timeout",
                                                         "client_closed", "backend_closed",
                                                         "backend_invalid"};
        for (unsigned i = 0; i < SHM_CUT_COUNTED; i++) {
            adm_buf_addf(b, "dispatcher_responses_cut_total{reason=\"%s\"} %llu\n", why[i],
                         (unsigned long long)LD(&v->ctl->responses_cut[i]));
        }
    }
    render_rl_metrics(b, v);
    render_auth_metrics(b, v);
    render_compress_metrics(b, v);
    prom_head(b, "dispatcher_uptime_seconds", "gauge", "Seconds since the master started.");
    adm_buf_addf(b, "dispatcher_uptime_seconds %llu\n", (unsigned long long)uptime_s(v));
    if (v->metrics_extra != NULL) {
        v->metrics_extra(b, v->extra_arg);
    }
    free(sums);
}

/* ---- show fleet ----------------------------------------------------------------------------- */

int adm_fleet_flags(const struct adm_fleet *f, const struct adm_fleet_node *nd, uint64_t now_s,
                    char *buf, size_t n)
{
    const char *flags[3];
    int k = 0;
    size_t len = 0;

    if (strcmp(nd->status, "ok") != 0) {
        flags[k++] = "rejected";
    }
    if (f->version >= 0 && nd->version < f->version) {
        flags[k++] = "behind";
    }
    if (nd->updated_at < 0 || (long long)now_s - nd->updated_at > ADM_FLEET_SILENT_S) {
        flags[k++] = "silent";
    }
    if (n > 0) {
        buf[0] = '\0';
    }
    for (int i = 0; i < k && len < n; i++) {
        int w = snprintf(buf + len, n - len, "%s%s", i ? "," : "", flags[i]);
        if (w < 0) {
            break;
        }
        len += (size_t)w;
    }
    return k;
}

static void fleet_num(struct adm_buf *b, const char *key, long long v)
{
    if (v < 0) {
        adm_buf_addf(b, ",\"%s\":null", key);
    } else {
        adm_buf_addf(b, ",\"%s\":%lld", key, v);
    }
}

void adm_render_fleet(struct adm_buf *b, const struct adm_view *v)
{
    const struct adm_fleet *f = v->fleet;
    size_t flagged = 0;
    char flags[64];

    if (f == NULL) {
        adm_render_error(b, "no fleet: Redis is not configured (each dispatcher reports what it "
                            "applied through Redis)");
        return;
    }
    for (size_t i = 0; i < f->n; i++) {
        flagged += adm_fleet_flags(f, &f->nodes[i], v->now_s, flags, sizeof(flags)) > 0;
    }
    adm_buf_adds(b, "{\"ok\":true,\"environment\":");
    adm_buf_jstrz(b, f->environment);
    adm_buf_adds(b, ",\"node\":");
    adm_buf_jstrz(b, f->self);
    if (v->redis_state != NULL) {
        adm_buf_adds(b, ",\"redis\":");
        adm_buf_jstrz(b, v->redis_state);
    }
    fleet_num(b, "version", f->version);
    adm_buf_addf(b, ",\"read_at\":%llu,\"nodes_count\":%zu,\"flagged\":%zu,\"nodes\":[",
                 (unsigned long long)f->read_at, f->n, flagged);
    for (size_t i = 0; i < f->n && !b->overflow; i++) {
        const struct adm_fleet_node *nd = &f->nodes[i];

        adm_fleet_flags(f, nd, v->now_s, flags, sizeof(flags));
        adm_buf_adds(b, i ? ",{\"name\":" : "{\"name\":");
        adm_buf_jstrz(b, nd->name);
        adm_buf_adds(b, ",\"status\":");
        adm_buf_jstrz(b, nd->status);
        adm_buf_adds(b, ",\"flags\":");
        adm_buf_jstrz(b, flags);
        fleet_num(b, "version", nd->version);
        fleet_num(b, "generation", nd->generation);
        fleet_num(b, "applied_at", nd->applied_at);
        adm_buf_adds(b, ",\"source_digest\":");
        adm_buf_jstrz(b, nd->source_digest);
        adm_buf_adds(b, ",\"error\":");
        adm_buf_jstrz(b, nd->error);
        fleet_num(b, "updated_at", nd->updated_at);
        fleet_num(b, "pid", nd->pid);
        adm_buf_addf(b, ",\"self\":%s}", strcmp(nd->name, f->self) == 0 ? "true" : "false");
    }
    adm_buf_adds(b, "]}");
}
