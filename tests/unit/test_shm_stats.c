/* Unit tests for shm/shm_stats: bucket mapping, percentiles, Prometheus buckets, the per-second
 * rate ring, shard sums, clearing recycled slots, and concurrent recording from forked workers
 * (no lost increments without any lock). */
#include "tests/unit/unit.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"
#include "shm/shm_stats.h"

static struct shm_rt *rt_get(void)
{
    static struct shm_rt *rt;

    if (rt == NULL) {
        rt = shm_rt_create();
    }
    return rt;
}

static void test_buckets(void)
{
    /* Every value lands in a bucket that holds it, buckets are contiguous and increasing. */
    for (uint64_t v = 0; v < 300000; v++) {
        unsigned b = shm_stats_bucket(v);
        uint64_t lo = shm_stats_bucket_lo(b), w = shm_stats_bucket_width(b);
        CU_ASSERT_FATAL(b < SHM_HIST_BUCKETS);
        CU_ASSERT_FATAL(v >= lo && v < lo + w);
        /* At most 12.5% wide relative to its lower bound (exact below 16). */
        CU_ASSERT_FATAL(v < 16 ? w == 1 : w * 8 <= lo);
    }
    for (unsigned b = 0; b + 1 < SHM_HIST_BUCKETS; b++) {
        CU_ASSERT_EQUAL(shm_stats_bucket_lo(b) + shm_stats_bucket_width(b),
                        shm_stats_bucket_lo(b + 1));
    }
    CU_ASSERT_EQUAL(shm_stats_bucket(UINT64_MAX), SHM_HIST_BUCKETS - 1);
    CU_ASSERT_EQUAL(shm_stats_bucket(1ull << 40), SHM_HIST_BUCKETS - 1);
    CU_ASSERT_EQUAL(shm_stats_bucket(7), 7);
    CU_ASSERT_EQUAL(shm_stats_bucket(8), 8);
    CU_ASSERT_EQUAL(shm_stats_bucket(100), shm_stats_bucket(96));
}

static void test_percentiles(void)
{
    struct shm_stats_cell *c = calloc(1, sizeof(*c));
    struct shm_stats_sum s;
    double p50, p99;

    /* 99 fast requests and one slow one. */
    for (int i = 0; i < 99; i++) {
        shm_stats_cell_record(c, 200, 3, 5000);
    }
    shm_stats_cell_record(c, 503, 100, 5000);
    shm_stats_sum_init(&s);
    shm_stats_sum_add(&s, c, 5000);
    CU_ASSERT_EQUAL(s.count, 100);
    CU_ASSERT_EQUAL(s.sum_ms, 99 * 3 + 100);
    CU_ASSERT_EQUAL(s.classes[2], 99);
    CU_ASSERT_EQUAL(s.classes[5], 1);
    CU_ASSERT_DOUBLE_EQUAL(shm_stats_percentile(&s, 0.50), 3.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(shm_stats_percentile(&s, 0.99), 3.0, 1e-9);
    p99 = shm_stats_percentile(&s, 1.0);
    CU_ASSERT(p99 >= 100.0 && p99 <= 103.0);

    /* All at 100 ms: every percentile inside 100's bucket [96, 103]. */
    memset(c, 0, sizeof(*c));
    for (int i = 0; i < 1000; i++) {
        shm_stats_cell_record(c, 200, 100 + (uint64_t)(i % 3), 5000);
    }
    shm_stats_sum_init(&s);
    shm_stats_sum_add(&s, c, 5000);
    p50 = shm_stats_percentile(&s, 0.5);
    p99 = shm_stats_percentile(&s, 0.99);
    CU_ASSERT(p50 >= 96.0 && p50 <= 103.0);
    CU_ASSERT(p99 >= 100.0 && p99 <= 103.0);
    CU_ASSERT(p50 <= p99);

    /* A spread: percentiles within 12.5% of the exact order statistic. */
    memset(c, 0, sizeof(*c));
    for (uint64_t v = 1; v <= 10000; v++) {
        shm_stats_cell_record(c, 200, v, 5000);
    }
    shm_stats_sum_init(&s);
    shm_stats_sum_add(&s, c, 5000);
    CU_ASSERT(fabs(shm_stats_percentile(&s, 0.50) - 5000) <= 5000 * 0.125);
    CU_ASSERT(fabs(shm_stats_percentile(&s, 0.95) - 9500) <= 9500 * 0.125);
    CU_ASSERT(fabs(shm_stats_percentile(&s, 0.99) - 9900) <= 9900 * 0.125);

    shm_stats_sum_init(&s);
    CU_ASSERT_DOUBLE_EQUAL(shm_stats_percentile(&s, 0.99), 0.0, 1e-9);
    free(c);
}

static void test_prom_buckets(void)
{
    struct shm_stats_cell *c = calloc(1, sizeof(*c));
    static const uint64_t v[] = {0, 5, 6, 10, 11, 100, 101, 10000, 10001, 99999};
    static const unsigned want[] = {0, 0, 1, 1, 2, 4, 5, 10, 11, 11};

    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint64_t before = c->prom[want[i]];
        shm_stats_cell_record(c, 200, v[i], 0);
        CU_ASSERT_EQUAL(c->prom[want[i]], before + 1);
    }
    free(c);
}

static void test_rate_window(void)
{
    struct shm_stats_cell *c = calloc(1, sizeof(*c));
    struct shm_stats_sum s;

    /* 10 requests a second for 100 seconds. */
    for (uint64_t sec = 1000; sec < 1100; sec++) {
        for (int i = 0; i < 10; i++) {
            shm_stats_cell_record(c, 200, 1, sec * 1000 + (uint64_t)i * 50);
        }
    }
    shm_stats_sum_init(&s);
    shm_stats_sum_add(&s, c, 1099 * 1000 + 999);
    CU_ASSERT_EQUAL(s.last_minute, 600);
    CU_ASSERT_EQUAL(s.count, 1000);
    /* Ten idle seconds later only 50 seconds of traffic remain in the window. */
    shm_stats_sum_init(&s);
    shm_stats_sum_add(&s, c, 1109 * 1000);
    CU_ASSERT_EQUAL(s.last_minute, 500);
    /* After more than the ring's length nothing is counted, even though slots are reused. */
    shm_stats_sum_init(&s);
    shm_stats_sum_add(&s, c, 1300 * 1000);
    CU_ASSERT_EQUAL(s.last_minute, 0);
    free(c);
}

static void test_shards_and_clear(void)
{
    struct shm_rt *rt = rt_get();
    struct shm_stats_sum s;

    CU_ASSERT_FATAL(rt != NULL);
    for (unsigned w = 0; w < 20; w++) {
        shm_stats_record(rt, w, 7, 9, 200, 10, 1000);
    }
    shm_stats_record(rt, 0, SHM_NONE, 9, 500, 10, 1000);
    shm_stats_record(rt, 0, 7, SHM_NONE, 404, 10, 1000);
    /* Slots past the stats capacity are ignored, not written out of bounds. */
    shm_stats_record(rt, 0, SHM_STATS_MAX_SERVICES, SHM_STATS_MAX_BACKENDS, 200, 1, 1000);
    shm_stats_sum_service(rt, shm_stats_nshards(20), 7, 1000, &s);
    CU_ASSERT_EQUAL(s.count, 21);
    CU_ASSERT_EQUAL(s.classes[4], 1);
    shm_stats_sum_backend(rt, shm_stats_nshards(20), 9, 1000, &s);
    CU_ASSERT_EQUAL(s.count, 21);
    CU_ASSERT_EQUAL(s.classes[5], 1);
    /* Only the shards of existing worker slots are read. */
    shm_stats_sum_service(rt, shm_stats_nshards(2), 7, 1000, &s);
    CU_ASSERT_EQUAL(s.count, 2 + 2 + 1); /* workers 0, 1, 16, 17 and the 404 */
    shm_stats_sum_service(rt, 1, SHM_STATS_MAX_SERVICES, 1000, &s);
    CU_ASSERT_EQUAL(s.count, 0);
    CU_ASSERT_EQUAL(rt->services[7].stats_used, 1);

    shm_stats_clear_service(rt, 7);
    shm_stats_clear_backend(rt, 9);
    shm_stats_sum_service(rt, SHM_STATS_SHARDS, 7, 1000, &s);
    CU_ASSERT_EQUAL(s.count, 0);
    CU_ASSERT_EQUAL(s.last_minute, 0);
    shm_stats_sum_backend(rt, SHM_STATS_SHARDS, 9, 1000, &s);
    CU_ASSERT_EQUAL(s.count, 0);
    CU_ASSERT_EQUAL(rt->services[7].stats_used, 0);
}

/* Four processes (two sharing a shard) hammer one service: nothing is lost. */
static void test_fork_concurrent(void)
{
    struct shm_rt *rt = rt_get();
    struct shm_stats_sum s;
    const int per = 20000;
    pid_t pids[4];

    for (int w = 0; w < 4; w++) {
        pids[w] = fork();
        CU_ASSERT_FATAL(pids[w] >= 0);
        if (pids[w] == 0) {
            for (int i = 0; i < per; i++) {
                /* Workers 0 and 16 share shard 0. */
                shm_stats_record(rt, w == 3 ? 16u : (unsigned)w, 11, 12, 200, (uint64_t)(i % 50),
                                 777000);
            }
            _exit(0);
        }
    }
    for (int w = 0; w < 4; w++) {
        int st;
        waitpid(pids[w], &st, 0);
        CU_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    shm_stats_sum_service(rt, SHM_STATS_SHARDS, 11, 777000, &s);
    CU_ASSERT_EQUAL(s.count, 4ull * per);
    CU_ASSERT_EQUAL(s.classes[2], 4ull * per);
    CU_ASSERT_EQUAL(s.last_minute, 4ull * per);
    {
        uint64_t h = 0, p = 0;
        for (unsigned i = 0; i < SHM_HIST_BUCKETS; i++) {
            h += s.hist[i];
        }
        for (unsigned i = 0; i < SHM_PROM_BUCKETS; i++) {
            p += s.prom[i];
        }
        CU_ASSERT_EQUAL(h, 4ull * per);
        CU_ASSERT_EQUAL(p, 4ull * per);
    }
}

static void test_layout(void)
{
    CU_ASSERT_EQUAL(sizeof(struct shm_stats_cell), 2048);
    CU_ASSERT_EQUAL(offsetof(struct shm_rt, svc_stats) % 64, 0);
    CU_ASSERT_EQUAL(offsetof(struct shm_rt, be_stats) % 64, 0);
    CU_ASSERT_EQUAL(shm_stats_nshards(0), 1);
    CU_ASSERT_EQUAL(shm_stats_nshards(3), 3);
    CU_ASSERT_EQUAL(shm_stats_nshards(300), SHM_STATS_SHARDS);
}

UNIT_SUITE(shm_stats, {"layout", test_layout}, {"buckets", test_buckets},
           {"percentiles", test_percentiles}, {"prom_buckets", test_prom_buckets},
           {"rate_window", test_rate_window}, {"shards_and_clear", test_shards_and_clear},
           {"fork_concurrent", test_fork_concurrent})
