/* Unit tests for shm/shm_rl: the bucket arithmetic (GCRA in integers), the fleet debit, the
 * bucketed table (one bucket per key, eviction of the fullest buckets first, a flood of keys
 * bounded by the table), lock leases, and exactness across forked processes taking tokens from
 * one bucket at once. */
#include "tests/unit/unit.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm/shm.h"
#include "shm/shm_rl.h"

static struct shm_rl *rl_get(void)
{
    static struct shm_rt *rt;
    static const uint64_t seed[2] = {0x0123456789abcdefull, 0xfedcba9876543210ull};

    if (rt == NULL) {
        rt = shm_rt_create();
    }
    /* Fresh for each test: only the groups in use were touched. */
    memset(rt->rl.groups, 0, sizeof(rt->rl.groups[0]) * rt->rl.ngroups);
    memset(&rt->rl, 0, offsetof(struct shm_rl, groups));
    shm_rl_init(&rt->rl, 1024, seed);
    return &rt->rl;
}

static struct shm_mw_rate_limit params(uint64_t id, uint32_t average, uint64_t burst)
{
    struct shm_mw_rate_limit p;

    memset(&p, 0, sizeof(p));
    p.id = id;
    p.average = average;
    p.period_s = 1;
    p.interval_us = 1000000ull / average;
    p.burst = burst;
    return p;
}

static void test_gcra(void)
{
    struct shm_rl_verdict v;
    uint64_t now = 5000000000ull, tat = 0; /* us */
    const uint64_t T = 100000;             /* 10 per second */

    /* A full bucket of 5: five go through, counting down; the sixth waits one interval. */
    for (uint64_t i = 0; i < 5; i++) {
        tat = shm_rl_gcra(tat, now, T, 5, &v);
        CU_ASSERT_TRUE(v.allowed);
        CU_ASSERT_EQUAL(v.limit, 5);
        CU_ASSERT_EQUAL(v.remaining, 4 - i);
        CU_ASSERT_EQUAL(v.reset_s, 1); /* (i + 1) * 100 ms to refill, rounded up */
    }
    CU_ASSERT_EQUAL(tat, now + 5 * T);
    CU_ASSERT_EQUAL(shm_rl_gcra(tat, now, T, 5, &v), tat);
    CU_ASSERT_FALSE(v.allowed);
    CU_ASSERT_EQUAL(v.remaining, 0);
    CU_ASSERT_EQUAL(v.retry_after_s, 1);
    /* One interval later exactly one more. */
    tat = shm_rl_gcra(tat, now + T, T, 5, &v);
    CU_ASSERT_TRUE(v.allowed);
    CU_ASSERT_EQUAL(v.remaining, 0);
    shm_rl_gcra(tat, now + T, T, 5, &v);
    CU_ASSERT_FALSE(v.allowed);
    /* Idle long enough: full again, never more than burst. */
    tat = shm_rl_gcra(tat, now + 100 * T, T, 5, &v);
    CU_ASSERT_TRUE(v.allowed);
    CU_ASSERT_EQUAL(v.remaining, 4);
    /* A slow bucket: one per minute, burst 1: Retry-After counts the whole wait. */
    tat = shm_rl_gcra(0, now, 60000000, 1, &v);
    CU_ASSERT_TRUE(v.allowed);
    CU_ASSERT_EQUAL(v.reset_s, 60);
    shm_rl_gcra(tat, now + 1500000, 60000000, 1, &v);
    CU_ASSERT_FALSE(v.allowed);
    CU_ASSERT_EQUAL(v.retry_after_s, 59); /* 58.5 s rounded up */
    /* Over a long run the rate is exact: 10/s for 100 s with burst 5 lets 1005 through. */
    {
        uint64_t n = 0;
        tat = 0;
        for (uint64_t t = now; t <= now + 100000000; t += 1000) {
            tat = shm_rl_gcra(tat, t, T, 5, &v);
            n += v.allowed;
        }
        CU_ASSERT_EQUAL(n, 1005);
    }
}

static void test_debit(void)
{
    const uint64_t now = 7000000000ull, T = 100000;

    /* Tokens used elsewhere push the arrival time from now (a full bucket) or from the debt. */
    CU_ASSERT_EQUAL(shm_rl_debit(0, now, T, 5, 3), now + 3 * T);
    CU_ASSERT_EQUAL(shm_rl_debit(now + T, now, T, 5, 2), now + 3 * T);
    CU_ASSERT_EQUAL(shm_rl_debit(now, now, T, 5, 0), now);
    /* Capped at burst + 60 s of debt, whatever the count (no overflow either). */
    CU_ASSERT_EQUAL(shm_rl_debit(0, now, T, 5, UINT64_MAX / 2), now + 5 * T + 60000000);
    CU_ASSERT_EQUAL(shm_rl_debit(0, now, 3600000000ull, 1000000, UINT64_MAX),
                    now + 1000000ull * 3600000000ull + 60000000);
}

static int take(struct shm_rl *rl, const struct shm_mw_rate_limit *p, const char *key,
                uint64_t now_ms, struct shm_rl_verdict *v)
{
    shm_rl_take(rl, p, SHM_RL_KEY_HEADER, key, strlen(key), now_ms, v);
    return v->allowed;
}

static void test_table_keys(void)
{
    struct shm_rl *rl = rl_get();
    struct shm_mw_rate_limit a = params(1, 10, 3), b = params(2, 10, 3);
    struct shm_rl_verdict v;
    const uint64_t now = 1000000;
    int n = 0;

    CU_ASSERT_EQUAL(rl->ngroups, 256); /* 1024 keys: 147 groups, rounded up */
    for (int i = 0; i < 10; i++) {
        n += take(rl, &a, "alice", now, &v);
        CU_ASSERT_EQUAL(v.claimed, i == 0); /* a new bucket the first time only */
        CU_ASSERT_EQUAL(v.evicted, 0);
    }
    CU_ASSERT_EQUAL(n, 3);
    /* Another key, another middleware with the same key, the empty key: their own buckets. */
    CU_ASSERT_TRUE(take(rl, &a, "bob", now, &v));
    CU_ASSERT_EQUAL(v.remaining, 2);
    CU_ASSERT_TRUE(take(rl, &b, "alice", now, &v));
    CU_ASSERT_TRUE(take(rl, &a, "", now, &v));
    CU_ASSERT_EQUAL(rl->keys, 4);
    CU_ASSERT_EQUAL(rl->evictions, 0);
    /* 100 ms later alice has one token again. */
    CU_ASSERT_TRUE(take(rl, &a, "alice", now + 100, &v));
    CU_ASSERT_FALSE(take(rl, &a, "alice", now + 100, &v));
    CU_ASSERT_EQUAL(v.retry_after_s, 1);
}

static void test_table_flood(void)
{
    struct shm_rl *rl = rl_get();
    struct shm_mw_rate_limit p = params(9, 1, 2);
    struct shm_rl_verdict v;
    const uint64_t now = 2000000;
    uint64_t evicted = 0;
    char key[32];

    /* An exhausted client... */
    take(rl, &p, "hot", now, &v);
    take(rl, &p, "hot", now, &v);
    CU_ASSERT_FALSE(take(rl, &p, "hot", now, &v));
    /* ...behind a flood of 200,000 new keys, each taking a token: the table stays at its size,
     * the flood recycles its own slots (counted), and the hot bucket, the emptiest of its
     * group, is never the one given away: it is still empty afterwards. */
    for (int i = 0; i < 200000; i++) {
        snprintf(key, sizeof(key), "flood-%d", i);
        CU_ASSERT_TRUE_FATAL(take(rl, &p, key, now, &v));
        CU_ASSERT_TRUE_FATAL(v.claimed);
        evicted += v.evicted;
    }
    CU_ASSERT_EQUAL(evicted, rl->evictions);
    CU_ASSERT_TRUE(rl->keys <= (uint64_t)rl->ngroups * SHM_RL_WAYS);
    CU_ASSERT_EQUAL(rl->keys, (uint64_t)rl->ngroups * SHM_RL_WAYS);
    CU_ASSERT_TRUE(rl->evictions >= 200000 - (uint64_t)rl->ngroups * SHM_RL_WAYS);
    CU_ASSERT_FALSE(take(rl, &p, "hot", now, &v));
    CU_ASSERT_EQUAL(rl->contended, 0);
    /* Full buckets are given away without counting: new keys a minute later (a few per
     * group, so that none needs a way another of them holds). */
    {
        uint64_t ev = rl->evictions;
        for (int i = 0; i < 200; i++) {
            snprintf(key, sizeof(key), "later-%d", i);
            take(rl, &p, key, now + 60000, &v);
        }
        CU_ASSERT_EQUAL(rl->evictions, ev);
    }
}

static void test_lock_lease(void)
{
    struct shm_rl *rl = rl_get();
    struct shm_mw_rate_limit p = params(3, 10, 1);
    struct shm_rl_verdict v;
    const uint64_t now = 3000000;

    /* Every group locked by a holder that died long ago: the lease ran out, keys are claimed. */
    for (uint32_t g = 0; g < rl->ngroups; g++) {
        rl->groups[g].lock = now - 1000;
    }
    CU_ASSERT_TRUE(take(rl, &p, "k1", now, &v));
    CU_ASSERT_FALSE(take(rl, &p, "k1", now, &v));
    /* Locked by a live holder: a new key passes (counted), a known key is still limited. */
    for (uint32_t g = 0; g < rl->ngroups; g++) {
        rl->groups[g].lock = now + 1000;
    }
    CU_ASSERT_TRUE(take(rl, &p, "k2", now, &v));
    CU_ASSERT_EQUAL(rl->contended, 1);
    CU_ASSERT_FALSE(take(rl, &p, "k1", now, &v));
    for (uint32_t g = 0; g < rl->ngroups; g++) {
        rl->groups[g].lock = 0;
    }
}

static void test_charge(void)
{
    struct shm_rl *rl = rl_get();
    struct shm_mw_rate_limit p = params(4, 10, 5);
    struct shm_rl_verdict v;
    const uint64_t now = 4000000;
    uint32_t idx = UINT32_MAX;

    p.scope = SHM_RL_SCOPE_FLEET;
    CU_ASSERT_TRUE(take(rl, &p, "fleet-key", now, &v));
    for (uint32_t i = 0; i < rl->ngroups * SHM_RL_WAYS; i++) {
        if (rl->groups[i / SHM_RL_WAYS].tag[i % SHM_RL_WAYS] != 0) {
            idx = i;
        }
    }
    CU_ASSERT_FATAL(idx != UINT32_MAX);
    CU_ASSERT_EQUAL(rl->slots[idx].used, 1);
    CU_ASSERT_EQUAL(rl->slots[idx].fleet, 1);
    CU_ASSERT_EQUAL(rl->slots[idx].key_len, 9);
    CU_ASSERT_EQUAL(memcmp(rl->keybytes[idx].b, "fleet-key", 9), 0);
    /* Three tokens used on other dispatchers: one left of five. */
    CU_ASSERT_EQUAL(shm_rl_charge(rl, idx, shm_rl_inc(rl->slots[idx].state), p.interval_us, p.burst,
                                  3, now),
                    0);
    CU_ASSERT_TRUE(take(rl, &p, "fleet-key", now, &v));
    CU_ASSERT_EQUAL(v.remaining, 0);
    CU_ASSERT_FALSE(take(rl, &p, "fleet-key", now, &v));
    /* A host-scope bucket whose middleware becomes fleet-scope (a reload): its next token
     * keeps the key for the master and counts. */
    {
        struct shm_mw_rate_limit h = params(6, 10, 5);
        uint32_t j = UINT32_MAX;

        CU_ASSERT_TRUE(take(rl, &h, "was-host", now, &v));
        for (uint32_t i = 0; i < rl->ngroups * SHM_RL_WAYS; i++) {
            if (rl->groups[i / SHM_RL_WAYS].tag[i % SHM_RL_WAYS] != 0 && rl->slots[i].mw == 6) {
                j = i;
            }
        }
        CU_ASSERT_FATAL(j != UINT32_MAX);
        CU_ASSERT_EQUAL(rl->slots[j].fleet, 0);
        CU_ASSERT_EQUAL(rl->slots[j].used, 0);
        h.scope = SHM_RL_SCOPE_FLEET;
        CU_ASSERT_TRUE(take(rl, &h, "was-host", now, &v));
        CU_ASSERT_EQUAL(v.remaining, 3); /* the same bucket */
        CU_ASSERT_EQUAL(rl->slots[j].fleet, 1);
        CU_ASSERT_EQUAL(rl->slots[j].used, 1);
        CU_ASSERT_EQUAL(rl->slots[j].key_len, 8);
        CU_ASSERT_EQUAL(memcmp(rl->keybytes[j].b, "was-host", 8), 0);
    }
    /* A stale incarnation (the way went to another key) charges nothing. */
    CU_ASSERT_EQUAL(shm_rl_charge(rl, idx, (uint8_t)(shm_rl_inc(rl->slots[idx].state) + 1),
                                  p.interval_us, p.burst, 3, now),
                    -1);
}

static void test_processes(void)
{
    struct shm_rl *rl = rl_get();
    struct shm_mw_rate_limit p = params(5, 1, 5000);
    struct shm_rl_verdict v;
    const uint64_t now = 5000000;
    enum { KIDS = 4, EACH = 4000 };
    pid_t pids[KIDS];

    /* Four processes race on one bucket of 5000 (and on claiming it): exactly 5000 pass,
     * which the bucket's arrival time tells (each token moved it by one interval). */
    for (int k = 0; k < KIDS; k++) {
        pids[k] = fork();
        if (pids[k] == 0) {
            for (int i = 0; i < EACH; i++) {
                shm_rl_take(rl, &p, SHM_RL_KEY_HEADER, "shared", 6, now, &v);
            }
            _exit(0);
        }
    }
    for (int k = 0; k < KIDS; k++) {
        int st;
        waitpid(pids[k], &st, 0);
        CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    /* 16,000 attempts on 5,000 tokens at one instant: the bucket is empty and nothing more
     * passes, and exactly 5000 were taken (its arrival time moved 5000 intervals). */
    CU_ASSERT_FALSE(take(rl, &p, "shared", now, &v));
    CU_ASSERT_EQUAL(rl->keys, 1);
    for (uint32_t i = 0; i < rl->ngroups * SHM_RL_WAYS; i++) {
        if (rl->groups[i / SHM_RL_WAYS].tag[i % SHM_RL_WAYS] != 0) {
            CU_ASSERT_EQUAL(shm_rl_tat(rl->slots[i].state), now * 1000 + 5000 * p.interval_us);
        }
    }
}

UNIT_SUITE(shm_rl, {"gcra", test_gcra}, {"debit", test_debit}, {"table_keys", test_table_keys},
           {"table_flood", test_table_flood}, {"lock_lease", test_lock_lease},
           {"charge", test_charge}, {"processes", test_processes})
