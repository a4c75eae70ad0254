/* dispatcher: recording and summing request statistics (see shm_stats.h). */
#include "shm/shm_stats.h"

#include <math.h>
#include <string.h>

const uint32_t shm_stats_prom_le_ms[SHM_PROM_BUCKETS - 1] = {5,   10,   25,   50,   100,  250,
                                                             500, 1000, 2500, 5000, 10000};

#define RATE_TAG_MASK 0xffffffff00000000ull
#define RATE_WINDOW_S 60u

_Static_assert(SHM_RATE_SLOTS > RATE_WINDOW_S, "the ring must hold a whole window");

unsigned shm_stats_bucket(uint64_t ms)
{
    unsigned e, idx;

    if (ms < 8) {
        return (unsigned)ms;
    }
    e = 63u - (unsigned)__builtin_clzll(ms); /* 3.. */
    idx = 8u + (e - 3u) * 8u + (unsigned)((ms >> (e - 3u)) & 7u);
    return idx < SHM_HIST_BUCKETS ? idx : SHM_HIST_BUCKETS - 1;
}

uint64_t shm_stats_bucket_lo(unsigned idx)
{
    unsigned e, sub;

    if (idx < 8) {
        return idx;
    }
    e = 3u + (idx - 8u) / 8u;
    sub = (idx - 8u) % 8u;
    return (uint64_t)(8u + sub) << (e - 3u);
}

uint64_t shm_stats_bucket_width(unsigned idx)
{
    if (idx < 8) {
        return 1;
    }
    return (uint64_t)1 << ((idx - 8u) / 8u);
}

static unsigned prom_bucket(uint64_t ms)
{
    for (unsigned i = 0; i < SHM_PROM_BUCKETS - 1; i++) {
        if (ms <= shm_stats_prom_le_ms[i]) {
            return i;
        }
    }
    return SHM_PROM_BUCKETS - 1;
}

void shm_stats_cell_record(struct shm_stats_cell *c, unsigned status, uint64_t dur_ms,
                           uint64_t now_ms)
{
    unsigned cls = status >= 100 && status < 600 ? status / 100 : 0;
    uint64_t sec = now_ms / 1000;
    uint64_t tag = (sec + 1) << 32;
    uint64_t *slot = &c->rate[sec % SHM_RATE_SLOTS];
    uint64_t w = __atomic_load_n(slot, __ATOMIC_RELAXED);

    __atomic_fetch_add(&c->count, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->sum_ms, dur_ms, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->classes[cls], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->prom[prom_bucket(dur_ms)], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&c->hist[shm_stats_bucket(dur_ms)], 1, __ATOMIC_RELAXED);
    /* The slot of a second holds its own tag; the first request of a new second restarts the
     * count. A CAS because two workers may share a shard (more workers than shards). */
    for (;;) {
        uint64_t nw = (w & RATE_TAG_MASK) == tag ? w + 1 : (tag | 1u);
        if (__atomic_compare_exchange_n(slot, &w, nw, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
            break;
        }
    }
}

void shm_stats_record(struct shm_rt *rt, unsigned shard, uint32_t svc_slot, uint32_t be_slot,
                      unsigned status, uint64_t dur_ms, uint64_t now_ms)
{
    shard %= SHM_STATS_SHARDS;
    if (svc_slot < SHM_STATS_MAX_SERVICES) {
        if (!__atomic_load_n(&rt->services[svc_slot].stats_used, __ATOMIC_RELAXED)) {
            __atomic_store_n(&rt->services[svc_slot].stats_used, 1, __ATOMIC_RELAXED);
        }
        shm_stats_cell_record(&rt->svc_stats[shard][svc_slot], status, dur_ms, now_ms);
    }
    if (be_slot < SHM_STATS_MAX_BACKENDS) {
        if (!__atomic_load_n(&rt->backends[be_slot].stats_used, __ATOMIC_RELAXED)) {
            __atomic_store_n(&rt->backends[be_slot].stats_used, 1, __ATOMIC_RELAXED);
        }
        shm_stats_cell_record(&rt->be_stats[shard][be_slot], status, dur_ms, now_ms);
    }
}

void shm_stats_sum_init(struct shm_stats_sum *out)
{
    memset(out, 0, sizeof(*out));
}

void shm_stats_sum_add(struct shm_stats_sum *out, const struct shm_stats_cell *c, uint64_t now_ms)
{
    uint64_t now_s = now_ms / 1000;

    out->count += __atomic_load_n(&c->count, __ATOMIC_RELAXED);
    out->sum_ms += __atomic_load_n(&c->sum_ms, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < 6; i++) {
        out->classes[i] += __atomic_load_n(&c->classes[i], __ATOMIC_RELAXED);
    }
    for (unsigned i = 0; i < SHM_PROM_BUCKETS; i++) {
        out->prom[i] += __atomic_load_n(&c->prom[i], __ATOMIC_RELAXED);
    }
    for (unsigned i = 0; i < SHM_HIST_BUCKETS; i++) {
        out->hist[i] += __atomic_load_n(&c->hist[i], __ATOMIC_RELAXED);
    }
    for (unsigned i = 0; i < SHM_RATE_SLOTS; i++) {
        uint64_t w = __atomic_load_n(&c->rate[i], __ATOMIC_RELAXED);
        uint64_t sec;

        if (w == 0) {
            continue;
        }
        sec = (w >> 32) - 1;
        if (sec <= now_s && now_s - sec < RATE_WINDOW_S) {
            out->last_minute += w & 0xffffffffu;
        }
    }
}

unsigned shm_stats_nshards(unsigned nworkers)
{
    if (nworkers == 0) {
        return 1;
    }
    return nworkers < SHM_STATS_SHARDS ? nworkers : SHM_STATS_SHARDS;
}

void shm_stats_sum_service(const struct shm_rt *rt, unsigned nshards, uint32_t slot,
                           uint64_t now_ms, struct shm_stats_sum *out)
{
    shm_stats_sum_init(out);
    if (slot >= SHM_STATS_MAX_SERVICES) {
        return;
    }
    for (unsigned s = 0; s < nshards && s < SHM_STATS_SHARDS; s++) {
        shm_stats_sum_add(out, &rt->svc_stats[s][slot], now_ms);
    }
}

void shm_stats_sum_backend(const struct shm_rt *rt, unsigned nshards, uint32_t slot,
                           uint64_t now_ms, struct shm_stats_sum *out)
{
    shm_stats_sum_init(out);
    if (slot >= SHM_STATS_MAX_BACKENDS) {
        return;
    }
    for (unsigned s = 0; s < nshards && s < SHM_STATS_SHARDS; s++) {
        shm_stats_sum_add(out, &rt->be_stats[s][slot], now_ms);
    }
}

double shm_stats_percentile(const struct shm_stats_sum *s, double q)
{
    uint64_t total = 0, rank, cum = 0;

    for (unsigned i = 0; i < SHM_HIST_BUCKETS; i++) {
        total += s->hist[i];
    }
    if (total == 0) {
        return 0.0;
    }
    if (q <= 0.0) {
        q = 0.0;
    }
    rank = (uint64_t)ceil(q * (double)total);
    if (rank < 1) {
        rank = 1;
    }
    if (rank > total) {
        rank = total;
    }
    for (unsigned i = 0; i < SHM_HIST_BUCKETS; i++) {
        uint64_t n = s->hist[i];

        if (n == 0) {
            continue;
        }
        if (cum + n >= rank) {
            /* Values are whole milliseconds: bucket i holds lo .. lo + width - 1. */
            double lo = (double)shm_stats_bucket_lo(i);
            double span = (double)(shm_stats_bucket_width(i) - 1);
            return lo + span * (double)(rank - cum) / (double)n;
        }
        cum += n;
    }
    return (double)shm_stats_bucket_lo(SHM_HIST_BUCKETS - 1);
}

static void clear_cells(struct shm_stats_cell *shard0, size_t stride_cells)
{
    for (unsigned s = 0; s < SHM_STATS_SHARDS; s++) {
        struct shm_stats_cell *c = shard0 + (size_t)s * stride_cells;

        if (__atomic_load_n(&c->count, __ATOMIC_RELAXED) != 0) {
            memset(c, 0, sizeof(*c));
        }
    }
}

void shm_stats_clear_service(struct shm_rt *rt, uint32_t slot)
{
    if (slot >= SHM_STATS_MAX_SERVICES || !rt->services[slot].stats_used) {
        return;
    }
    clear_cells(&rt->svc_stats[0][slot], SHM_STATS_MAX_SERVICES);
    rt->services[slot].stats_used = 0;
}

void shm_stats_clear_backend(struct shm_rt *rt, uint32_t slot)
{
    if (slot >= SHM_STATS_MAX_BACKENDS || !rt->backends[slot].stats_used) {
        return;
    }
    clear_cells(&rt->be_stats[0][slot], SHM_STATS_MAX_BACKENDS);
    rt->backends[slot].stats_used = 0;
}
