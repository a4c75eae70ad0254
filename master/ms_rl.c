/* dispatcher: the rate_limit middleware, master side.
 *
 * Configuration: `type = "rate_limit"; average = N; burst = B; period_s = P; key = "client_ip" |
 * "host" | "header:NAME"; scope = "host" | "fleet";` compiles into a struct shm_mw_rate_limit.
 *
 * Fleet scope: workers count the tokens they take from a fleet bucket (shm_rl_slot.used). Every
 * master tick (at most every 100 ms) this module walks the table, collects those counts and sends
 * ONE command to Redis for all the active fleet buckets: a script that adds each bucket's count
 * to its key `dispatcher:{environment}:rl:{middleware}:{key}` (INCRBY, with an expiry) and answers
 * the fleet's totals. What the fleet used beyond this dispatcher's own count since the last
 * answer is charged to the local bucket (shm_rl_charge), so every dispatcher's bucket reflects the
 * whole fleet's use, one period late: a fleet of N overshoots by what the other N - 1 admit in
 * one period at most. A bucket that was not reconciled for a while (idle here, or Redis was away)
 * takes its first answer as the new baseline. While Redis is unreachable (or an answer fails or
 * takes longer than a second) the buckets count this host only: `show health` says
 * "rate_limit":"host-fallback" and /metrics dispatcher_rate_limit_fleet_fallback 1. */
#include "master/ms_rl.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/rds.h"
#include "master/ms_config.h"
#include "master/ms_loop.h"
#include "master/ms_master.h"
#include "master/ms_mw.h"
#include "master/ms_redis.h"
#include "shm/shm_rl.h"

#define SYNC_EVERY_MS  50   /* every master tick (they come at least every 100 ms) */
#define SYNC_LATE_MS   1000 /* an answer this late: fall back to host scope */
#define ACTIVE_MS      2000 /* a bucket used here this recently keeps being reconciled */
#define STALE_MS       1000 /* not reconciled for this long: the next answer is a baseline */
#define KEY_TTL_MS     "60000"
#define MAX_BATCH      4096u
#define REDIS_NAME_MAX 512

/* ---- configuration ------------------------------------------------------------------------ */

static const char *const rl_keys[] = {"average", "burst", "period_s", "key", "scope", NULL};

struct rl_conf {
    struct shm_mw_rate_limit p;
    char *header; /* key = "header:NAME": NAME in lower case */
};

static int tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static void rl_parse_key(struct ms_mw_src *s, struct rl_conf *c)
{
    const char *v = NULL;
    int r = s->ops->str(s, "key", &v);

    c->p.key = SHM_RL_KEY_CLIENT_IP;
    if (r != 1 || strcmp(v, "client_ip") == 0) {
        return;
    }
    if (strcmp(v, "host") == 0) {
        c->p.key = SHM_RL_KEY_HOST;
        return;
    }
    if (strncmp(v, "header:", 7) == 0 && v[7] != '\0' && strlen(v + 7) <= 64) {
        size_t n = strlen(v + 7);
        int ok = 1;

        for (size_t i = 0; i < n; i++) {
            ok &= tchar((unsigned char)v[7 + i]) && v[7 + i] != '_';
        }
        if (ok) {
            c->p.key = SHM_RL_KEY_HEADER;
            c->header = dsp_xstrdup(v + 7);
            for (char *p = c->header; *p; p++) {
                *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
            }
            return;
        }
    }
    ms_mw_err(s, "key",
              "must be \"client_ip\", \"host\" or \"header:NAME\" (a field name of at most 64 "
              "characters, no underscore), not \"%.80s\"",
              v);
}

static void *rl_parse(struct ms_mw_src *s)
{
    struct rl_conf *c = dsp_xcalloc(1, sizeof(*c));
    const char *v = NULL;
    long average = 0, burst = 1, period = 1;

    if (s->ops->num(s, "average", 1, SHM_RL_MAX_AVERAGE, &average) == 0) {
        ms_mw_err(s, NULL, "average is required (tokens per period_s)");
    }
    s->ops->num(s, "burst", 1, SHM_RL_MAX_BURST, &burst);
    s->ops->num(s, "period_s", 1, 3600, &period);
    rl_parse_key(s, c);
    if (s->ops->str(s, "scope", &v) == 1) {
        if (strcmp(v, "fleet") == 0) {
            c->p.scope = SHM_RL_SCOPE_FLEET;
        } else if (strcmp(v, "host") != 0) {
            ms_mw_err(s, "scope", "must be \"host\" or \"fleet\", not \"%.80s\"", v);
        }
    }
    if (average < 1) {
        average = 1;
    }
    c->p.average = (uint32_t)average;
    c->p.period_s = (uint32_t)period;
    c->p.burst = (uint64_t)burst;
    c->p.interval_us = (uint64_t)period * 1000000u / (uint64_t)average;
    if (c->p.interval_us == 0) {
        c->p.interval_us = 1;
    }
    return c;
}

static uint32_t rl_compile(const void *params, struct ms_mw_blob *b, uint32_t *len)
{
    const struct rl_conf *c = params;
    struct shm_mw_rate_limit p = c->p;

    if (c->header != NULL) {
        struct shm_str h = ms_mw_put_str(b, c->header, strlen(c->header));
        p.header_off = h.off;
        p.header_len = h.len;
    }
    *len = sizeof(p);
    return ms_mw_put(b, &p, sizeof(p));
}

static void rl_free(void *params)
{
    struct rl_conf *c = params;

    if (c != NULL) {
        free(c->header);
        free(c);
    }
}

const struct ms_mw_type ms_mw_rate_limit = {"rate_limit", SHM_MW_RATE_LIMIT, rl_keys,
                                            rl_parse,     rl_compile,        rl_free};

/* ---- fleet reconciliation ------------------------------------------------------------------ */

/* A fleet-scope middleware of the current snapshot. */
struct fmw {
    uint64_t id;
    uint64_t interval_us, burst;
    char *name;
};

/* What this master remembers of one table way (indexed like the table). */
struct way {
    uint64_t tag, check;
    uint64_t total;     /* the fleet's total as last answered */
    uint64_t synced_ms; /* when (0: never: the next answer is a baseline) */
    uint64_t active_ms; /* last time tokens were taken here */
    uint8_t inc;
};

struct item {
    uint32_t idx;
    uint32_t fmw;  /* index in R.fmws when sent */
    uint64_t id;   /* that middleware's id: a reload meanwhile may have moved it */
    uint64_t sent; /* our own tokens in this batch */
};

struct batch {
    int abandoned; /* timed out: the reply, if it ever comes, is dropped */
    size_t n;
    struct item *items;
};

static struct {
    int started;
    long keys_at_start;
    int warned_keys;
    struct fmw *fmws;
    size_t nfmw;
    int any_rl; /* the snapshot has a rate_limit middleware */
    int no_redis_warned;
    struct way *ways;
    uint32_t nways;
    uint32_t cursor; /* where the next walk starts when a batch fills up */
    struct batch *inflight;
    uint64_t sent_at, next_at;
    int fallback;
    char why[256];
} R;

uint64_t ms_rl_id(const char *name, size_t len)
{
    return shm_rl_mw_id(name, len);
}

static struct shm_rl *table(void)
{
    return &ms.rt->rl;
}

static void set_mode(void)
{
    uint32_t mode = !R.any_rl     ? SHM_RL_MODE_OFF
                    : R.nfmw == 0 ? SHM_RL_MODE_HOST
                    : R.fallback  ? SHM_RL_MODE_FALLBACK
                                  : SHM_RL_MODE_FLEET;

    __atomic_store_n(&table()->mode, mode, __ATOMIC_RELAXED);
}

static void fall_back(const char *why)
{
    __atomic_add_fetch(&table()->fleet_failures, 1, __ATOMIC_RELAXED);
    if (!R.fallback || strcmp(why, R.why) != 0) {
        log_warn("rate_limit: fleet scope falls back to this host's counts: %s", why);
    }
    if (!R.fallback) {
        /* Whatever comes next is a fresh start for every bucket. */
        for (uint32_t i = 0; R.ways != NULL && i < R.nways; i++) {
            R.ways[i].synced_ms = 0;
        }
    }
    R.fallback = 1;
    snprintf(R.why, sizeof(R.why), "%s", why);
    set_mode();
}

/* The current snapshot's fleet middlewares (after each publish). */
static void on_published(void *arg)
{
    const struct shm_snap_hdr *s = ms.snap;
    uint32_t n = s != NULL ? shm_mw_count(s) : 0;

    (void)arg;
    for (size_t i = 0; i < R.nfmw; i++) {
        free(R.fmws[i].name);
    }
    free(R.fmws);
    R.fmws = NULL;
    R.nfmw = 0;
    R.any_rl = 0;
    if (ms.cfg != NULL && ms.cfg->limits.rate_limit_keys != R.keys_at_start && !R.warned_keys) {
        log_warn("limits.rate_limit_keys changed: the rate_limit table keeps %ld keys until a "
                 "restart",
                 R.keys_at_start);
        R.warned_keys = 1;
    }
    for (uint32_t i = 0; i < n; i++) {
        const struct shm_mw *m = &shm_mws(s)[i];
        const struct shm_mw_rate_limit *p;

        if (m->type != SHM_MW_RATE_LIMIT || m->params_len < sizeof(*p)) {
            continue;
        }
        R.any_rl = 1;
        p = shm_mw_params(s, m);
        if (p->scope != SHM_RL_SCOPE_FLEET) {
            continue;
        }
        R.fmws = dsp_xrealloc(R.fmws, (R.nfmw + 1) * sizeof(*R.fmws));
        R.fmws[R.nfmw].id = shm_rl_mw_id(shm_mw_s(s, m->name), m->name.len);
        R.fmws[R.nfmw].interval_us = p->interval_us;
        R.fmws[R.nfmw].burst = p->burst;
        R.fmws[R.nfmw].name = dsp_xstrdup(shm_mw_s(s, m->name));
        R.nfmw++;
    }
    if (R.nfmw > 0 && ms.cfg != NULL && !ms.cfg->redis.enabled && !R.no_redis_warned) {
        log_warn("rate_limit: scope \"fleet\" without a redis block counts on this host only");
        R.no_redis_warned = 1;
    }
    set_mode();
}

static int fmw_of(uint64_t id)
{
    for (size_t i = 0; i < R.nfmw; i++) {
        if (R.fmws[i].id == id) {
            return (int)i;
        }
    }
    return -1;
}

/* The Redis key of way <idx> (middleware <f>) into <buf>; its length. */
static size_t redis_name(char *buf, size_t n, const struct fmw *f, uint32_t idx)
{
    const struct shm_rl *rl = table();
    const struct shm_rl_slot *s = &rl->slots[idx];
    const uint8_t *k = rl->keybytes[idx].b;
    int w = snprintf(buf, n, "%srl:%s:", ms_redis_namespace(), f->name);
    size_t len = (size_t)w;
    uint16_t klen = __atomic_load_n(&s->key_len, __ATOMIC_RELAXED);

    if (w < 0 || (size_t)w >= n - 80) {
        return 0;
    }
    if (__atomic_load_n(&s->key_kind, __ATOMIC_RELAXED) == SHM_RL_KEY_CLIENT_IP &&
        (klen == 4 || klen == 16)) {
        inet_ntop(klen == 4 ? AF_INET : AF_INET6, k, buf + len, (socklen_t)(n - len));
        return len + strlen(buf + len);
    }
    if (klen <= SHM_RL_KEY_BYTES) {
        if (len + klen > n) {
            return 0;
        }
        memcpy(buf + len, k, klen);
        return len + klen;
    }
    buf[len++] = '#';
    for (unsigned i = 0; i < 16; i++) {
        len += (size_t)snprintf(buf + len, n - len, "%02x", k[SHM_RL_KEY_PREFIX + i]);
    }
    return len;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct batch *b = priv;
    redisReply *r = reply;
    struct shm_rl *rl = table();
    uint64_t now = dsp_now_ms();
    char what[300];

    (void)ac;
    if (b->abandoned || R.inflight != b) {
        goto out;
    }
    R.inflight = NULL;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != b->n) {
        snprintf(what, sizeof(what), "reconciling: %s",
                 r == NULL ? "the connection was lost" : rds_reply_what(r, what + 100, 200));
        fall_back(what);
        goto out;
    }
    for (size_t i = 0; i < b->n; i++) {
        const struct item *it = &b->items[i];
        struct way *w = &R.ways[it->idx];
        const struct fmw *f;
        uint64_t total, remote;

        if (r->element[i]->type != REDIS_REPLY_INTEGER || r->element[i]->integer < 0 ||
            it->fmw >= R.nfmw || R.fmws[it->fmw].id != it->id) {
            continue;
        }
        total = (uint64_t)r->element[i]->integer;
        f = &R.fmws[it->fmw];
        if (w->synced_ms != 0 && now - w->synced_ms <= STALE_MS && total >= w->total + it->sent) {
            remote = total - w->total - it->sent;
            if (remote > 0) {
                shm_rl_charge(rl, it->idx, w->inc, f->interval_us, f->burst, remote, now);
            }
        }
        w->total = total;
        w->synced_ms = now;
    }
    __atomic_add_fetch(&rl->fleet_syncs, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&rl->fleet_last_ms, now, __ATOMIC_RELAXED);
    if (R.fallback) {
        log_info("rate_limit: fleet scope reconciled with Redis again");
    }
    R.fallback = 0;
    set_mode();
out:
    free(b->items);
    free(b);
}

/* Way <idx> as this master knew it, or forgotten when it went to another key. */
static struct way *way_of(uint32_t idx, uint64_t tag, uint64_t check, uint8_t inc)
{
    struct way *w = &R.ways[idx];

    if (w->tag != tag || w->check != check || w->inc != inc) {
        memset(w, 0, sizeof(*w));
        w->tag = tag;
        w->check = check;
        w->inc = inc;
    }
    return w;
}

/* Walk the table: the active fleet buckets with their new counts, into <b>. */
static void collect(struct batch *b, uint64_t now, int drop)
{
    struct shm_rl *rl = table();
    uint32_t nways = rl->ngroups * SHM_RL_WAYS, start = R.cursor % nways;

    b->items = dsp_xmalloc(sizeof(*b->items) * DSP_MIN(nways, MAX_BATCH));
    for (uint32_t k = 0; k < nways; k++) {
        uint32_t idx = (start + k) % nways;
        const struct shm_rl_group *g = &rl->groups[idx / SHM_RL_WAYS];
        struct shm_rl_slot *s = &rl->slots[idx];
        uint64_t tag = __atomic_load_n(&g->tag[idx % SHM_RL_WAYS], __ATOMIC_ACQUIRE), st;
        struct way *w;
        uint32_t used;
        int f;

        if (tag == 0 || !__atomic_load_n(&s->fleet, __ATOMIC_ACQUIRE) ||
            (f = fmw_of(__atomic_load_n(&s->mw, __ATOMIC_RELAXED))) < 0) {
            continue;
        }
        if (b->n == MAX_BATCH) {
            R.cursor = idx; /* the rest next time */
            return;
        }
        st = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);
        w = way_of(idx, tag, __atomic_load_n(&s->check, __ATOMIC_RELAXED), shm_rl_inc(st));
        used = __atomic_exchange_n(&s->used, 0, __ATOMIC_RELAXED);
        if (used > 0) {
            w->active_ms = now;
        }
        if (drop) {
            continue; /* Redis is away: these tokens stay this host's */
        }
        if (used == 0 && shm_rl_tat(st) <= now * 1000 && now - w->active_ms > ACTIVE_MS) {
            continue;
        }
        b->items[b->n].idx = idx;
        b->items[b->n].fmw = (uint32_t)f;
        b->items[b->n].id = R.fmws[f].id;
        b->items[b->n].sent = used;
        b->n++;
    }
}

static const char script[] = "local out = {}\n"
                             "for i = 1, #KEYS do\n"
                             "  out[i] = redis.call('INCRBY', KEYS[i], ARGV[i + 1])\n"
                             "  redis.call('PEXPIRE', KEYS[i], ARGV[1])\n"
                             "end\n"
                             "return out\n";

/* Send <b> as one EVAL. 0, or -1 (nothing sent). */
static int send_batch(struct batch *b)
{
    size_t argc = 4 + 2 * b->n;
    const char **argv = dsp_xmalloc(argc * sizeof(*argv));
    size_t *lens = dsp_xmalloc(argc * sizeof(*lens));
    char *names = dsp_xmalloc(b->n * REDIS_NAME_MAX), *counts = dsp_xmalloc(b->n * 24 + 1);
    char nkeys[24];
    size_t a = 0, kept = 0;
    int rc;

    snprintf(nkeys, sizeof(nkeys), "%zu", b->n);
    argv[a] = "EVAL", lens[a++] = 4;
    argv[a] = script, lens[a++] = sizeof(script) - 1;
    argv[a] = nkeys, lens[a++] = 0;
    for (size_t i = 0; i < b->n; i++) {
        size_t n = redis_name(names + i * REDIS_NAME_MAX, REDIS_NAME_MAX, &R.fmws[b->items[i].fmw],
                              b->items[i].idx);
        if (n == 0) {
            continue;
        }
        b->items[kept] = b->items[i];
        argv[a] = names + i * REDIS_NAME_MAX, lens[a++] = n;
        kept++;
    }
    b->n = kept;
    snprintf(nkeys, sizeof(nkeys), "%zu", b->n);
    lens[2] = strlen(nkeys);
    argv[a] = KEY_TTL_MS, lens[a++] = strlen(KEY_TTL_MS);
    for (size_t i = 0; i < b->n; i++) {
        char *c = counts + i * 24;
        snprintf(c, 24, "%llu", (unsigned long long)b->items[i].sent);
        argv[a] = c, lens[a++] = strlen(c);
    }
    rc = ms_redis_command(on_reply, b, (int)a, argv, lens);
    free(argv);
    free(lens);
    free(names);
    free(counts);
    return rc;
}

static void on_tick(uint64_t now, void *arg)
{
    struct batch *b;
    uint32_t nways = table()->ngroups * SHM_RL_WAYS;

    (void)arg;
    if (R.nfmw == 0) {
        return;
    }
    if (R.ways == NULL) {
        R.ways = dsp_xcalloc(nways, sizeof(*R.ways));
        R.nways = nways;
    }
    if (R.inflight != NULL) {
        if (now - R.sent_at <= SYNC_LATE_MS) {
            return;
        }
        R.inflight->abandoned = 1;
        R.inflight = NULL;
        fall_back("Redis did not answer within 1 s");
    }
    if (now < R.next_at) {
        return;
    }
    R.next_at = now + SYNC_EVERY_MS;
    b = dsp_xcalloc(1, sizeof(*b));
    if (!ms.cfg->redis.enabled || !ms_redis_up()) {
        collect(b, now, 1);
        if (!R.fallback || ms.cfg->redis.enabled) {
            fall_back(ms.cfg->redis.enabled ? "Redis is not connected" : "no redis block");
        }
        free(b->items);
        free(b);
        return;
    }
    collect(b, now, 0);
    if (b->n == 0) {
        free(b->items);
        free(b);
        if (R.fallback) {
            /* Nothing to reconcile: reachable again is enough to say so. */
            R.fallback = 0;
            log_info("rate_limit: Redis is back; fleet scope reconciles again");
            set_mode();
        }
        return;
    }
    if (send_batch(b) != 0) {
        free(b->items);
        free(b);
        fall_back("cannot send to Redis");
        return;
    }
    R.inflight = b;
    R.sent_at = now;
}

int ms_rl_start(void)
{
    uint64_t seed[2];

    if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed)) {
        log_error("rate_limit: getrandom() failed: no seed for the bucket table");
        return -1;
    }
    R.keys_at_start = ms.cfg->limits.rate_limit_keys;
    shm_rl_init(table(), (uint64_t)R.keys_at_start, seed);
    if (!R.started) {
        if (ms_loop_tick(on_tick, NULL) != 0 || ms_loop_on_publish(on_published, NULL) != 0) {
            log_error("rate_limit: cannot register with the master loop");
            return -1;
        }
        R.started = 1;
    }
    return 0;
}
