/* dispatcher: request statistics in the runtime segment: per service and per backend latency
 * histograms, status classes and a per-second request ring, recorded lock-free by workers into
 * their own shard and summed by readers (admin socket, admin HTTP). Layout in shm/shm_types.h. */
#ifndef DSP_SHM_STATS_H
#define DSP_SHM_STATS_H

#include <stdint.h>

#include "shm/shm_types.h"

/* Upper bounds (ms, inclusive) of the Prometheus buckets; the last bucket is +Inf. */
extern const uint32_t shm_stats_prom_le_ms[SHM_PROM_BUCKETS - 1];

/* Histogram bucket of a duration of <ms> milliseconds: 0..7 exactly, then 8 buckets per power
 * of two (so a bucket is at most 12.5% of its values wide), the last one open-ended. */
unsigned shm_stats_bucket(uint64_t ms);
/* Smallest value of bucket <idx>, and how many integer values it holds. */
uint64_t shm_stats_bucket_lo(unsigned idx);
uint64_t shm_stats_bucket_width(unsigned idx);

/* Workers: record one request of service runtime slot <svc_slot> served by backend runtime slot
 * <be_slot> (either may be SHM_NONE: not recorded) into shard <shard> (any value; taken modulo
 * SHM_STATS_SHARDS): HTTP <status> (0 when none was sent), <dur_ms>, at monotonic <now_ms>.
 * Relaxed atomics only: no lock and no syscall. */
void shm_stats_record(struct shm_rt *rt, unsigned shard, uint32_t svc_slot, uint32_t be_slot,
                      unsigned status, uint64_t dur_ms, uint64_t now_ms);
/* Record into one cell (what shm_stats_record does for each of its two cells). */
void shm_stats_cell_record(struct shm_stats_cell *c, unsigned status, uint64_t dur_ms,
                           uint64_t now_ms);

/* A reader's sum over shards. */
struct shm_stats_sum {
    uint64_t count;
    uint64_t sum_ms;
    uint64_t classes[6];             /* [0] none/other, [1..5] 1xx..5xx */
    uint64_t prom[SHM_PROM_BUCKETS]; /* per bucket, not cumulative */
    uint64_t hist[SHM_HIST_BUCKETS];
    uint64_t last_minute; /* requests in the 60 s up to now */
};

/* Zero <out>, then add cell <c> (requests of the last minute counted against <now_ms>). */
void shm_stats_sum_init(struct shm_stats_sum *out);
void shm_stats_sum_add(struct shm_stats_sum *out, const struct shm_stats_cell *c, uint64_t now_ms);
/* Sum service (or backend) runtime slot <slot> over the first <nshards> shards (the number of
 * worker slots, capped at SHM_STATS_SHARDS). Slots beyond SHM_STATS_MAX_* read as zero. */
void shm_stats_sum_service(const struct shm_rt *rt, unsigned nshards, uint32_t slot,
                           uint64_t now_ms, struct shm_stats_sum *out);
void shm_stats_sum_backend(const struct shm_rt *rt, unsigned nshards, uint32_t slot,
                           uint64_t now_ms, struct shm_stats_sum *out);
/* Shards readers visit for <nworkers> worker slots. */
unsigned shm_stats_nshards(unsigned nworkers);

/* The <q> quantile (0 < q <= 1) of <s>'s histogram in ms, interpolated inside its bucket; 0
 * when nothing was recorded. */
double shm_stats_percentile(const struct shm_stats_sum *s, double q);

/* Master: zero a recycled slot's cells before a new id uses it (cells that never recorded
 * anything are left untouched, so their pages stay uncommitted). */
void shm_stats_clear_service(struct shm_rt *rt, uint32_t slot);
void shm_stats_clear_backend(struct shm_rt *rt, uint32_t slot);

#endif
