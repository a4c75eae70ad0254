/* Unit tests for balancing, health and the circuit breaker: the smooth weighted round-robin
 * schedule (against a straightforward nginx implementation), Maglev balance and the ~1/N
 * movement property, and the backend state machines driven by a fake clock. */
#include "tests/unit/unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "shm/shm.h"
#include "shm/shm_lb.h"
#include "shm/shm_snap.h"
#include "shm/shm_state.h"
#include "worker/wk_internal.h"

/* ---- smooth weighted round-robin ------------------------------------------------------------ */

/* nginx's ngx_http_upstream_get_peer(), literally. */
static void naive_swrr(const uint32_t *w, uint32_t n, uint32_t *out, uint32_t len)
{
    int64_t *cur = calloc(n, sizeof(*cur));
    int64_t total = 0;

    for (uint32_t i = 0; i < n; i++) {
        total += w[i];
    }
    for (uint32_t t = 0; t < len; t++) {
        uint32_t best = 0;
        for (uint32_t i = 0; i < n; i++) {
            cur[i] += w[i];
            if (i == 0 || cur[i] > cur[best]) {
                best = i;
            }
        }
        cur[best] -= total;
        out[t] = best;
    }
    free(cur);
}

static uint32_t build(const uint32_t *w, uint32_t n, uint32_t **sched, uint32_t *rw)
{
    uint32_t len = shm_lb_swrr_weights(w, n, rw);

    *sched = malloc(len * sizeof(**sched));
    CU_ASSERT_FATAL(*sched != NULL);
    CU_ASSERT_EQUAL(shm_lb_swrr_build(rw, n, *sched, len), 0);
    return len;
}

static void test_swrr_sequence(void)
{
    static const uint32_t w1[] = {5, 1, 1};
    static const uint32_t e1[] = {0, 0, 1, 0, 2, 0, 0}; /* a a b a c a a */
    static const uint32_t w2[] = {1, 1, 1};
    static const uint32_t w3[] = {10, 5, 5}; /* gcd 5: {2, 1, 1} */
    static const uint32_t e3[] = {0, 1, 2, 0};
    static const uint32_t w4[] = {1, 0, 3}; /* 0 counts as 1 */
    uint32_t rw[3], *s;
    uint32_t len;

    len = build(w1, 3, &s, rw);
    CU_ASSERT_EQUAL_FATAL(len, 7);
    CU_ASSERT(memcmp(s, e1, sizeof(e1)) == 0);
    free(s);

    len = build(w2, 3, &s, rw);
    CU_ASSERT_EQUAL_FATAL(len, 3);
    CU_ASSERT(s[0] == 0 && s[1] == 1 && s[2] == 2);
    free(s);

    len = build(w3, 3, &s, rw);
    CU_ASSERT_EQUAL_FATAL(len, 4);
    CU_ASSERT(memcmp(s, e3, sizeof(e3)) == 0);
    free(s);

    len = build(w4, 3, &s, rw);
    CU_ASSERT_EQUAL_FATAL(len, 5);
    CU_ASSERT(rw[1] == 1);
    free(s);
}

/* The grouped algorithm is nginx's, step for step, whatever the weights. */
static void test_swrr_matches_nginx(void)
{
    uint64_t x = 88172645463325252ull;

    for (int round = 0; round < 200; round++) {
        uint32_t n = 1 + (uint32_t)(round % 13);
        uint32_t w[13], rw[13], *s, *ref, len;

        for (uint32_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            /* Small weights with repeats (grouping matters), sometimes large ones. */
            w[i] = round % 3 == 0 ? (uint32_t)(x % 1000) + 1 : (uint32_t)(x % 4) + 1;
        }
        len = build(w, n, &s, rw);
        ref = malloc(len * sizeof(*ref));
        naive_swrr(rw, n, ref, len);
        CU_ASSERT(memcmp(s, ref, len * sizeof(*s)) == 0);
        free(ref);
        free(s);
    }
}

/* Largest gap, over every window of the repeating schedule, between how often backend <i> is
 * picked and its share: a measure of bursts. */
static double discrepancy(const uint32_t *s, uint32_t len, const uint32_t *w, uint32_t n)
{
    double worst = 0, total = 0;

    for (uint32_t i = 0; i < n; i++) {
        total += w[i];
    }
    for (uint32_t i = 0; i < n; i++) {
        for (uint32_t start = 0; start < len; start++) {
            double c = 0;
            for (uint32_t k = 1; k <= len; k++) {
                double d;
                c += s[(start + k - 1) % len] == i;
                d = c - k * w[i] / total;
                d = d < 0 ? -d : d;
                worst = d > worst ? d : worst;
            }
        }
    }
    return worst;
}

/* Each period gives every backend exactly its weight, without bursts: {5,1,1} runs the heavy
 * one at most twice in a period (a a b a c a a, where plain weighted round-robin sends five in a
 * row), and {4,3,2,1} never strays 1.5 picks from the shares in any window (plain: 2.4). */
static void test_swrr_smooth(void)
{
    static const uint32_t w[] = {5, 1, 1};
    static const uint32_t w2[] = {4, 3, 2, 1};
    static const uint32_t plain[] = {0, 0, 0, 0, 1, 1, 1, 2, 2, 3};
    uint32_t rw[4], *s, count[3] = {0, 0, 0}, run = 0, maxrun = 0, prev = UINT32_MAX;
    uint32_t len = build(w, 3, &s, rw);

    for (uint32_t t = 0; t < 10 * len; t++) {
        uint32_t j = s[t % len];
        count[j]++;
        run = j == prev ? run + 1 : 1;
        prev = j;
        if (t < len) {
            maxrun = run > maxrun ? run : maxrun;
        }
    }
    CU_ASSERT_EQUAL(count[0], 50);
    CU_ASSERT_EQUAL(count[1], 10);
    CU_ASSERT_EQUAL(count[2], 10);
    CU_ASSERT_EQUAL(maxrun, 2);
    free(s);

    len = build(w2, 4, &s, rw);
    CU_ASSERT_EQUAL_FATAL(len, 10);
    CU_ASSERT(discrepancy(s, len, w2, 4) < 1.5);
    CU_ASSERT(discrepancy(plain, 10, w2, 4) > 2.0);
    free(s);
}

/* A period longer than SHM_LB_SWRR_MAX is scaled down, keeping the proportions. */
static void test_swrr_scaled(void)
{
    uint32_t n = 200, w[200], rw[200], *s, len;
    uint32_t *count = calloc(n, sizeof(*count));
    uint64_t sum = 0;

    for (uint32_t i = 0; i < n; i++) {
        w[i] = 1 + (i * 37) % 1000; /* gcd 1, sum about 100000 */
        sum += w[i];
    }
    CU_ASSERT(sum > SHM_LB_SWRR_MAX);
    len = build(w, n, &s, rw);
    CU_ASSERT(len <= SHM_LB_SWRR_MAX + n);
    CU_ASSERT(len >= SHM_LB_SWRR_MAX - n);
    for (uint32_t t = 0; t < len; t++) {
        count[s[t]]++;
    }
    for (uint32_t i = 0; i < n; i++) {
        double want = (double)w[i] * len / (double)sum;
        CU_ASSERT(count[i] >= want * 0.97 - 1 && count[i] <= want * 1.03 + 1);
    }
    free(count);
    free(s);
}

/* ---- Maglev ---------------------------------------------------------------------------------- */
static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void keys_for(uint64_t *keys, const uint32_t *ids, uint32_t n)
{
    char addr[64];

    for (uint32_t i = 0; i < n; i++) {
        int len = snprintf(addr, sizeof(addr), "10.0.%u.%u:8080", ids[i] / 250, ids[i] % 250);
        keys[i] = shm_lb_hash(addr, (size_t)len, 0);
    }
}

/* The backend id each of <nclients> clients lands on, with backends <ids>[0, n). */
static void map_clients(const uint32_t *ids, uint32_t n, const uint32_t *w, uint32_t *out,
                        uint32_t nclients)
{
    uint64_t keys[64];
    uint32_t m = shm_lb_maglev_size(n);
    uint32_t *table = malloc(m * sizeof(*table));
    uint64_t x = 0x2545F4914F6CDD1Dull;

    CU_ASSERT_FATAL(table != NULL && n <= 64);
    keys_for(keys, ids, n);
    CU_ASSERT_EQUAL(shm_lb_maglev_build(keys, w, n, table, m), 0);
    for (uint32_t c = 0; c < nclients; c++) {
        uint8_t ip[16];
        uint32_t v = (uint32_t)rng_next(&x);
        memcpy(ip, &v, 4);
        out[c] = ids[table[shm_lb_client_hash(AF_INET, ip) % m]];
    }
    free(table);
}

static void test_maglev_even(void)
{
    static const uint32_t ids[] = {0, 1, 2, 3, 4};
    static const uint32_t w1[] = {1, 1, 1, 1, 1};
    static const uint32_t w2[] = {2, 1, 1, 0, 0};
    enum { N = 100000 };
    uint32_t *who = malloc(N * sizeof(*who));
    uint32_t count[5] = {0}, slots[5] = {0};
    uint64_t keys[5];
    uint32_t m = shm_lb_maglev_size(5), *table = malloc(m * sizeof(*table));

    CU_ASSERT(m >= 500);
    /* Table slots: equal weights differ by at most one slot. */
    keys_for(keys, ids, 5);
    CU_ASSERT_EQUAL(shm_lb_maglev_build(keys, w1, 5, table, m), 0);
    for (uint32_t s = 0; s < m; s++) {
        CU_ASSERT_FATAL(table[s] < 5);
        slots[table[s]]++;
    }
    for (int i = 0; i < 5; i++) {
        CU_ASSERT(slots[i] == m / 5 || slots[i] == m / 5 + 1);
    }
    /* Clients: within 10% of even. */
    map_clients(ids, 5, w1, who, N);
    for (int c = 0; c < N; c++) {
        count[who[c]]++;
    }
    for (int i = 0; i < 5; i++) {
        CU_ASSERT(count[i] > N / 5 * 0.9 && count[i] < N / 5 * 1.1);
    }
    /* Weights: 2:1:1:1:1. */
    memset(count, 0, sizeof(count));
    map_clients(ids, 5, w2, who, N);
    for (int c = 0; c < N; c++) {
        count[who[c]]++;
    }
    CU_ASSERT(count[0] > N / 3 * 0.9 && count[0] < N / 3 * 1.1);
    for (int i = 1; i < 5; i++) {
        CU_ASSERT(count[i] > N / 6 * 0.9 && count[i] < N / 6 * 1.1);
    }
    free(table);
    free(who);
}

/* Removing one of N backends moves about 1/N of the clients (its own, and few others); so does
 * adding one. Order of the backend list does not matter. */
static void test_maglev_movement(void)
{
    enum { N = 100000 };
    static const uint32_t ten[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    static const uint32_t nine[] = {0, 1, 2, 3, 5, 6, 7, 8, 9};          /* 4 removed */
    static const uint32_t eleven[] = {10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0}; /* 10 added, reversed */
    static const uint32_t w[11] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    uint32_t *a = malloc(N * sizeof(*a)), *b = malloc(N * sizeof(*b));
    uint32_t moved = 0, lost = 0, moved_other = 0;

    map_clients(ten, 10, w, a, N);
    map_clients(nine, 9, w, b, N);
    for (int c = 0; c < N; c++) {
        lost += a[c] == 4;
        moved += a[c] != b[c];
        moved_other += a[c] != 4 && a[c] != b[c];
        CU_ASSERT(b[c] != 4);
    }
    printf("\n    remove 1 of 10: %.2f%% moved (%.2f%% were on it)", 100.0 * moved / N,
           100.0 * lost / N);
    CU_ASSERT(moved >= lost);
    CU_ASSERT((double)moved / N < 0.10 * 1.5);
    CU_ASSERT((double)moved_other / N < 0.02);

    map_clients(eleven, 11, w, b, N);
    moved = 0;
    for (int c = 0; c < N; c++) {
        moved += a[c] != b[c];
    }
    printf("; add 1 to 10: %.2f%% moved\n   ", 100.0 * moved / N);
    CU_ASSERT((double)moved / N > 1.0 / 11 * 0.8);
    CU_ASSERT((double)moved / N < 1.0 / 11 * 1.5);
    free(a);
    free(b);
}

/* ---- backend state machines ------------------------------------------------------------------ */
static struct shm_lb_policy cb_policy(void)
{
    struct shm_lb_policy p;

    memset(&p, 0, sizeof(p));
    p.cb_enabled = 1;
    p.cb_failures = 3;
    p.cb_open_ms = 1000;
    p.retry_ms = 10000;
    p.lease_ms = 5000;
    p.passive_failures = 3;
    p.max_ejection_percent = 50;
    return p;
}

static void test_circuit_breaker(void)
{
    struct shm_rt_backend rb;
    struct shm_lb_policy p = cb_policy();
    uint64_t now = 100000;
    int why = 0;

    memset(&rb, 0, sizeof(rb));
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now, 1, &why), SHM_LB_YES);
    /* A success in between starts the count again. */
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_5XX, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_OK, 0, now), 0);
    CU_ASSERT_EQUAL(rb.consecutive_failures, 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL, 0, now), 0);
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_CLOSED);
    /* The third consecutive failure opens it. */
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL, 0, now), SHM_LB_T_OPEN);
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_OPEN);
    CU_ASSERT_EQUAL(rb.consecutive_failures, 3);
    CU_ASSERT_EQUAL(rb.state, SHM_BE_UP); /* a 5xx or reset says nothing about reachability */
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now, 1, &why), SHM_LB_NO);
    CU_ASSERT_EQUAL(why, SHM_LB_WHY_OPEN);
    /* Late outcomes of requests already in flight move nothing. */
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_OK, 0, now + 10), 0);
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_OPEN);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now + 999, 1, &why), SHM_LB_NO);

    /* open_ms later: a dry run writes nothing, then exactly one caller wins the probe. */
    now += 1000;
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now, 0, &why), SHM_LB_PROBE);
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_OPEN);
    CU_ASSERT_EQUAL(rb.probe_until_ms, 0);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now, 1, &why), SHM_LB_PROBE);
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_HALFOPEN);
    for (int i = 0; i < 10; i++) {
        CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now + (uint64_t)i * 100, 1, &why), SHM_LB_NO);
        CU_ASSERT_EQUAL(why, SHM_LB_WHY_OPEN);
    }
    /* The probe fails: open again, for another open_ms from now. */
    now += 50;
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_5XX, 1, now), SHM_LB_T_OPEN);
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_OPEN);
    CU_ASSERT_EQUAL(rb.circuit_opened_ms, now);
    CU_ASSERT_EQUAL(rb.probe_until_ms, 0);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now + 999, 1, &why), SHM_LB_NO);

    /* The next probe succeeds: closed, counters cleared, everyone admitted. */
    now += 1000;
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now, 1, &why), SHM_LB_PROBE);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now, 1, &why), SHM_LB_NO);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_OK, 1, now + 5), SHM_LB_T_CLOSE);
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_CLOSED);
    CU_ASSERT_EQUAL(rb.consecutive_failures, 0);
    CU_ASSERT_EQUAL(rb.probe_until_ms, 0);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now + 5, 1, &why), SHM_LB_YES);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now + 5, 1, &why), SHM_LB_YES);
}

/* A probe that never reports (its worker was killed) blocks probing only until its lease ends;
 * an inconclusive one hands the lease back at once. */
static void test_circuit_probe_lease(void)
{
    struct shm_rt_backend rb;
    struct shm_lb_policy p = cb_policy();
    uint64_t now = 5000;
    int why;

    memset(&rb, 0, sizeof(rb));
    for (int i = 0; i < 3; i++) {
        shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now);
    }
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_OPEN);
    CU_ASSERT_EQUAL(rb.state, SHM_BE_UP); /* due for ejection, but nobody asked */
    now += 1000;
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now, 1, &why), SHM_LB_PROBE);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now + 4999, 1, &why), SHM_LB_NO);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now + 5000, 1, &why), SHM_LB_PROBE);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_NEUTRAL, 1, now + 5001), 0);
    CU_ASSERT_EQUAL(rb.circuit, SHM_CIRCUIT_HALFOPEN);
    CU_ASSERT_EQUAL(shm_lb_admit(&rb, &p, now + 5002, 1, &why), SHM_LB_PROBE);
    /* An operator reset closes it whatever is in flight. */
    {
        struct shm_rt *rt = shm_rt_create();
        CU_ASSERT_PTR_NOT_NULL_FATAL(rt);
        rt->backends[7] = rb;
        shm_state_reset_circuit(rt, 7);
        CU_ASSERT_EQUAL(rt->backends[7].circuit, SHM_CIRCUIT_CLOSED);
        CU_ASSERT_EQUAL(rt->backends[7].consecutive_failures, 0);
        CU_ASSERT_EQUAL(rt->backends[7].probe_until_ms, 0);
        CU_ASSERT_EQUAL(shm_lb_admit(&rt->backends[7], &p, now + 5003, 1, &why), SHM_LB_YES);
        munmap(rt, sizeof(*rt));
    }
}

/* A circuit tripped by hand: no request, no probe, past open_ms, with or without a breaker, and
 * whatever a probe already in flight reports; reset closes it. */
static void test_circuit_tripped(void)
{
    struct shm_lb_policy p = cb_policy(), nocb;
    struct shm_rt *rt = shm_rt_create();
    struct shm_rt_backend *rb;
    uint64_t now = 5000;
    int why = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(rt);
    memset(&nocb, 0, sizeof(nocb));
    nocb.retry_ms = 10000;
    nocb.lease_ms = 3000;
    nocb.passive_failures = 3;
    rb = &rt->backends[3];
    /* Open by failures, probe won, then tripped while the probe is in flight. */
    for (int i = 0; i < 3; i++) {
        shm_lb_outcome(rb, &p, SHM_LB_FAIL_CONN, 0, now);
    }
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &p, now + 1000, 1, &why), SHM_LB_PROBE);
    shm_state_trip_circuit(rt, 3);
    CU_ASSERT_EQUAL(shm_lb_outcome(rb, &p, SHM_LB_OK, 1, now + 1001) & SHM_LB_T_CLOSE,
                    SHM_LB_T_CLOSE); /* the breaker closes its own state... */
    for (uint64_t t = now; t < now + 100000000; t += 999983) {
        why = 0;
        CU_ASSERT_EQUAL(shm_lb_admit(rb, &p, t, 1, &why), SHM_LB_NO); /* ...the trip holds */
        CU_ASSERT_EQUAL(why, SHM_LB_WHY_OPEN);
        CU_ASSERT_EQUAL(shm_lb_admit(rb, &nocb, t, 1, &why), SHM_LB_NO);
        CU_ASSERT_EQUAL(shm_lb_admit(rb, &p, t, 0, &why), SHM_LB_NO);
    }
    shm_lb_outcome(rb, &nocb, SHM_LB_OK, 0, now + 2000); /* clears a leftover breaker state */
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &nocb, now + 2001, 1, &why), SHM_LB_NO);
    shm_state_reset_circuit(rt, 3);
    CU_ASSERT_EQUAL(rb->circuit_forced, 0);
    CU_ASSERT_EQUAL(rb->circuit, SHM_CIRCUIT_CLOSED);
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &p, now + 2002, 1, &why), SHM_LB_YES);
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &nocb, now + 2002, 1, &why), SHM_LB_YES);
    munmap(rt, sizeof(*rt));
}

/* A service of <n> backends whose runtime slots are slots[0, n), all up. */
struct fake_svc {
    struct shm_rt_backend slots[8];
    struct shm_rt_service rs;
    struct shm_backend bes[8];
    uint32_t n;
    struct shm_lb_policy p;
};

static void fake_svc_init(struct fake_svc *f, uint32_t n, uint32_t passive, uint32_t pct)
{
    memset(f, 0, sizeof(*f));
    f->n = n;
    for (uint32_t i = 0; i < n; i++) {
        f->bes[i].rt_slot = i;
    }
    f->p.retry_ms = 10000;
    f->p.lease_ms = 3000;
    f->p.passive_failures = passive;
    f->p.max_ejection_percent = pct;
}

/* What a worker does with an attempt's outcome: record it, and eject when it is due. */
static unsigned fake_result(struct fake_svc *f, uint32_t pos, int outcome, int probe, uint64_t now,
                            int *why)
{
    unsigned t = shm_lb_outcome(&f->slots[pos], &f->p, outcome, probe, now);

    *why = 0;
    if (t & SHM_LB_T_EJECT) {
        t |= shm_lb_eject(f->slots, &f->rs, f->bes, f->n, pos, &f->p, now, why);
    }
    return t & ~(SHM_LB_T_EJECT | SHM_LB_T_EJECT_FIRST);
}

static void test_passive_count(void)
{
    struct shm_rt_backend rb;
    struct shm_lb_policy p;
    uint64_t now = 1000;

    memset(&p, 0, sizeof(p));
    p.passive_failures = 3;
    memset(&rb, 0, sizeof(rb));
    /* Resets and connect timeouts count one each; the third asks for the ejection. */
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now), 0);
    /* Timeouts and bad responses neither count nor start the count again. */
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_NEUTRAL, 0, now), 0);
    CU_ASSERT_EQUAL(rb.passive_failures, 2);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now),
                    SHM_LB_T_EJECT | SHM_LB_T_EJECT_FIRST);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now), SHM_LB_T_EJECT);
    CU_ASSERT_EQUAL(rb.passive_failures, 3); /* saturates */
    CU_ASSERT_EQUAL(rb.state, SHM_BE_UP);    /* only shm_lb_eject() takes it out */
    /* Any HTTP answer, even a 5xx, starts the count again. */
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_5XX, 0, now), 0);
    CU_ASSERT_EQUAL(rb.passive_failures, 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_OK, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now), 0);
    /* A refused connect is the full count at once. */
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_OK, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_REFUSED, 0, now),
                    SHM_LB_T_EJECT | SHM_LB_T_EJECT_FIRST);
    /* passive_failures = 1: one reset is enough. */
    p.passive_failures = 1;
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_OK, 0, now), 0);
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_CONN, 0, now),
                    SHM_LB_T_EJECT | SHM_LB_T_EJECT_FIRST);
    /* Passive failures of a backend that is out count nothing. */
    p.passive_failures = 3;
    memset(&rb, 0, sizeof(rb));
    rb.state = SHM_BE_DISABLED;
    CU_ASSERT_EQUAL(shm_lb_outcome(&rb, &p, SHM_LB_FAIL_REFUSED, 0, now), 0);
    CU_ASSERT_EQUAL(rb.passive_failures, 0);
    CU_ASSERT_EQUAL(rb.state, SHM_BE_DISABLED);
}

/* Without a cap in the way: down, retried after the interval, back on an answered trial. */
static void test_passive_health(void)
{
    struct fake_svc f;
    struct shm_rt_backend *rb;
    uint64_t now = 1000000;
    int why;

    fake_svc_init(&f, 2, 3, 50);
    rb = &f.slots[0];
    rb->health_successes = 2;
    /* A connect refusal takes it down at once; the circuit breaker is off. */
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_REFUSED, 0, now, &why), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_DOWN);
    CU_ASSERT_EQUAL(rb->ejected, 1);
    CU_ASSERT_EQUAL(rb->down_since_ms, now);
    CU_ASSERT_EQUAL(rb->health_successes, 0);
    CU_ASSERT_EQUAL(rb->passive_failures, 0);
    CU_ASSERT_EQUAL(rb->circuit, SHM_CIRCUIT_CLOSED);
    CU_ASSERT_EQUAL(f.rs.eject_lease_ms, 0); /* handed back */
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &f.p, now + 9999, 1, &why), SHM_LB_NO);
    CU_ASSERT_EQUAL(why, SHM_LB_WHY_DOWN);
    /* Without active checks: one trial after the retry interval; it fails, wait again. */
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &f.p, now + 10000, 1, &why), SHM_LB_PROBE);
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &f.p, now + 10000, 1, &why), SHM_LB_NO);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_CONN, 1, now + 10010, &why), 0);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_DOWN);
    CU_ASSERT_EQUAL(rb->down_since_ms, now + 10010);
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &f.p, now + 20009, 1, &why), SHM_LB_NO);
    /* The next trial is answered (a 5xx still proves it reachable): up. */
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &f.p, now + 20010, 1, &why), SHM_LB_PROBE);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_5XX, 1, now + 20020, &why), SHM_LB_T_UP);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_UP);
    CU_ASSERT_EQUAL(rb->ejected, 0);
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &f.p, now + 20020, 1, &why), SHM_LB_YES);

    /* Resets: three in a row take it out, two do not. */
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_CONN, 0, now + 20030, &why), 0);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_CONN, 0, now + 20030, &why), 0);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_UP);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_CONN, 0, now + 20030, &why), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_DOWN);

    /* With active checks, only they bring it back: no trials, however long it waits. */
    f.p.health_enabled = 1;
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &f.p, now + 90000, 1, &why), SHM_LB_NO);
    CU_ASSERT_EQUAL(why, SHM_LB_WHY_DOWN);
    CU_ASSERT_EQUAL(shm_lb_health_result(rb, 1, 200, 1, 1, now + 90000), SHM_LB_T_UP);
    CU_ASSERT_EQUAL(rb->ejected, 0);

    /* Nothing overrides "disabled". */
    rb->state = SHM_BE_DISABLED;
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_REFUSED, 0, now, &why), 0);
    CU_ASSERT_EQUAL(shm_lb_admit(rb, &f.p, now + 90000, 1, &why), SHM_LB_NO);
    CU_ASSERT_EQUAL(why, SHM_LB_WHY_DISABLED);
    CU_ASSERT_EQUAL(shm_lb_health_result(rb, 1, 200, 1, 1, now), 0);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_DISABLED);
    /* A stale keep-alive connection proves nothing either way. */
    rb->state = SHM_BE_UP;
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_NEUTRAL, 0, now, &why), 0);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_UP);
}

static void test_may_eject(void)
{
    /* n, already ejected, others up, percent */
    CU_ASSERT_FALSE(shm_lb_may_eject(1, 0, 0, 100)); /* never the last one */
    CU_ASSERT_FALSE(shm_lb_may_eject(1, 0, 0, 50));
    CU_ASSERT_TRUE(shm_lb_may_eject(2, 0, 1, 50));
    CU_ASSERT_FALSE(shm_lb_may_eject(2, 1, 1, 50));
    CU_ASSERT_FALSE(shm_lb_may_eject(2, 0, 1, 49));
    CU_ASSERT_FALSE(shm_lb_may_eject(2, 0, 0, 100));
    CU_ASSERT_TRUE(shm_lb_may_eject(3, 0, 2, 50));
    CU_ASSERT_FALSE(shm_lb_may_eject(3, 1, 1, 50)); /* 2 of 3 > 50% */
    CU_ASSERT_TRUE(shm_lb_may_eject(4, 1, 2, 50));
    CU_ASSERT_FALSE(shm_lb_may_eject(4, 2, 1, 50));
    CU_ASSERT_TRUE(shm_lb_may_eject(4, 2, 1, 75));
    CU_ASSERT_FALSE(shm_lb_may_eject(4, 0, 3, 0)); /* 0: passive ejection off */
    CU_ASSERT_TRUE(shm_lb_may_eject(10, 8, 1, 100));
    CU_ASSERT_FALSE(shm_lb_may_eject(10, 9, 0, 100));
    CU_ASSERT_TRUE(shm_lb_may_eject(4000000000u, 0, 1, 100)); /* no overflow */
}

static void test_ejection_cap(void)
{
    struct fake_svc f;
    uint64_t now = 50000;
    int why;

    /* The only backend, reset by one client again and again: never ejected. */
    fake_svc_init(&f, 1, 3, 100);
    for (int i = 0; i < 20; i++) {
        CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_CONN, 0, now, &why), 0);
    }
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_LAST);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_REFUSED, 0, now, &why), 0);
    CU_ASSERT_EQUAL(f.slots[0].state, SHM_BE_UP);
    CU_ASSERT_EQUAL(shm_lb_admit(&f.slots[0], &f.p, now, 1, &why), SHM_LB_YES);

    /* 4 backends, 3 dead, 50%: two ejected, the third kept; the live one is never touched. */
    fake_svc_init(&f, 4, 3, 50);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_REFUSED, 0, now, &why), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(fake_result(&f, 1, SHM_LB_FAIL_REFUSED, 0, now, &why), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(fake_result(&f, 2, SHM_LB_FAIL_REFUSED, 0, now, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_CAP);
    CU_ASSERT_EQUAL(f.slots[2].state, SHM_BE_UP);
    CU_ASSERT_EQUAL(f.slots[2].passive_failures, 3); /* still due: asks again next time */
    CU_ASSERT_EQUAL(fake_result(&f, 2, SHM_LB_FAIL_CONN, 0, now, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_CAP);
    /* Backend 0 answers its trial: back, so backend 2 may go on its next failure. */
    CU_ASSERT_EQUAL(shm_lb_admit(&f.slots[0], &f.p, now + 10000, 1, &why), SHM_LB_PROBE);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_OK, 1, now + 10000, &why), SHM_LB_T_UP);
    CU_ASSERT_EQUAL(fake_result(&f, 2, SHM_LB_FAIL_CONN, 0, now + 10001, &why), SHM_LB_T_DOWN);

    /* 100%: everything but the last healthy one. */
    fake_svc_init(&f, 4, 1, 100);
    for (uint32_t i = 0; i < 3; i++) {
        CU_ASSERT_EQUAL(fake_result(&f, i, SHM_LB_FAIL_CONN, 0, now, &why), SHM_LB_T_DOWN);
    }
    CU_ASSERT_EQUAL(fake_result(&f, 3, SHM_LB_FAIL_CONN, 0, now, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_LAST);

    /* Backends out for other reasons (checks, the operator, an open circuit) are not "up" but
     * do not use the ejection budget either. */
    fake_svc_init(&f, 4, 1, 100);
    f.p.cb_enabled = 1;
    f.p.cb_failures = 100;
    f.slots[0].state = SHM_BE_DOWN; /* active checks */
    f.slots[1].state = SHM_BE_DISABLED;
    f.slots[2].circuit = SHM_CIRCUIT_OPEN;
    CU_ASSERT_EQUAL(fake_result(&f, 3, SHM_LB_FAIL_CONN, 0, now, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_LAST);
    f.slots[2].circuit = SHM_CIRCUIT_CLOSED;
    CU_ASSERT_EQUAL(fake_result(&f, 3, SHM_LB_FAIL_CONN, 0, now, &why), SHM_LB_T_DOWN);
    /* ... and an ejected backend later failing its checks stops counting as ejected. */
    fake_svc_init(&f, 4, 1, 50);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_CONN, 0, now, &why), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(fake_result(&f, 1, SHM_LB_FAIL_CONN, 0, now, &why), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(fake_result(&f, 2, SHM_LB_FAIL_CONN, 0, now, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_CAP);
    CU_ASSERT_EQUAL(shm_lb_health_result(&f.slots[0], 1, 200, 1, 1, now), SHM_LB_T_UP);
    CU_ASSERT_EQUAL(shm_lb_health_result(&f.slots[0], 0, 0, 1, 1, now), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(f.slots[0].ejected, 0);
    /* 0 down by its checks, 1 ejected: 2 fits in the budget again, 3 is the last one up. */
    CU_ASSERT_EQUAL(fake_result(&f, 2, SHM_LB_FAIL_CONN, 0, now, &why), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(fake_result(&f, 3, SHM_LB_FAIL_CONN, 0, now, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_LAST);

    /* max_ejection_percent = 0: passive ejection off. */
    fake_svc_init(&f, 4, 1, 0);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_REFUSED, 0, now, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_CAP);
}

/* Ejections of one service are decided one at a time: a held lease defers (until it expires,
 * for a worker killed while holding it), and an answer in between cancels. */
static void test_ejection_lease(void)
{
    struct fake_svc f;
    uint64_t now = 7000;
    int why;

    fake_svc_init(&f, 2, 3, 50);
    f.rs.eject_lease_ms = now + 1;
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_REFUSED, 0, now, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_BUSY);
    CU_ASSERT_EQUAL(f.slots[0].state, SHM_BE_UP);
    CU_ASSERT_EQUAL(f.rs.eject_lease_ms, now + 1);
    CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_CONN, 0, now + 1, &why), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(f.rs.eject_lease_ms, 0);
    /* Already out, or answered in between: nothing to do. */
    CU_ASSERT_EQUAL(shm_lb_eject(f.slots, &f.rs, f.bes, f.n, 0, &f.p, now + 2, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_GONE);
    CU_ASSERT_EQUAL(shm_lb_eject(f.slots, &f.rs, f.bes, f.n, 1, &f.p, now + 2, &why), 0);
    CU_ASSERT_EQUAL(why, SHM_LB_KEEP_GONE);
    CU_ASSERT_EQUAL(f.rs.eject_lease_ms, 0);
}

static void test_active_health(void)
{
    struct shm_rt_backend rb;
    uint64_t now = 1000;

    memset(&rb, 0, sizeof(rb));
    /* fall = 2, rise = 3 */
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 0, 500, 2, 3, now), 0);
    CU_ASSERT_EQUAL(rb.state, SHM_BE_UP);
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 1, 200, 2, 3, now), 0);
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 0, 0, 2, 3, now), 0);
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 0, 0, 2, 3, now + 1), SHM_LB_T_DOWN);
    CU_ASSERT_EQUAL(rb.state, SHM_BE_DOWN);
    CU_ASSERT_EQUAL(rb.down_since_ms, now + 1);
    CU_ASSERT_EQUAL(rb.health_status, 0);
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 1, 200, 2, 3, now), 0);
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 1, 204, 2, 3, now), 0);
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 1, 301, 2, 3, now + 2), SHM_LB_T_UP);
    CU_ASSERT_EQUAL(rb.state, SHM_BE_UP);
    CU_ASSERT_EQUAL(rb.health_status, 301);
    CU_ASSERT_EQUAL(rb.health_checked_ms, now + 2);

    /* health.start = "down": never marked down, so the first passed check brings it up. */
    memset(&rb, 0, sizeof(rb));
    rb.state = SHM_BE_DOWN;
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 0, 0, 2, 3, now), 0);
    CU_ASSERT_EQUAL(shm_lb_health_result(&rb, 1, 200, 2, 3, now), SHM_LB_T_UP);

    /* A passive down needs `rise` fresh successes, whatever came before. */
    memset(&rb, 0, sizeof(rb));
    {
        struct shm_lb_policy p;
        memset(&p, 0, sizeof(p));
        p.health_enabled = 1;
        struct fake_svc f;
        int why;
        fake_svc_init(&f, 2, 3, 50);
        f.p.health_enabled = 1;
        shm_lb_health_result(&f.slots[0], 1, 200, 2, 3, now);
        shm_lb_health_result(&f.slots[0], 1, 200, 2, 3, now);
        CU_ASSERT_EQUAL(fake_result(&f, 0, SHM_LB_FAIL_REFUSED, 0, now, &why), SHM_LB_T_DOWN);
        CU_ASSERT_EQUAL(shm_lb_health_result(&f.slots[0], 1, 200, 2, 3, now), 0);
        CU_ASSERT_EQUAL(shm_lb_health_result(&f.slots[0], 1, 200, 2, 3, now), 0);
        CU_ASSERT_EQUAL(shm_lb_health_result(&f.slots[0], 1, 200, 2, 3, now), SHM_LB_T_UP);
        (void)p;
    }
}

static void test_manual_control(void)
{
    struct shm_rt *rt = shm_rt_create();
    struct shm_rt_backend *rb;

    CU_ASSERT_PTR_NOT_NULL_FATAL(rt);
    rb = &rt->backends[3];
    shm_state_disable(rt, 3);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_DISABLED);
    shm_lb_health_result(rb, 0, 0, 1, 1, 10);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_DISABLED);
    shm_state_enable(rt, 3);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_UP);
    CU_ASSERT_EQUAL(rb->health_failures, 0);
    /* "enable" of a backend that is down leaves it to the health checks. */
    rb->state = SHM_BE_DOWN;
    shm_state_enable(rt, 3);
    CU_ASSERT_EQUAL(rb->state, SHM_BE_DOWN);
    munmap(rt, sizeof(*rt));
}

static void test_policy(void)
{
    struct shm_service svc;
    struct shm_lb_policy p;

    memset(&svc, 0, sizeof(svc));
    svc.cb_count_5xx = 1; /* meaningless without a breaker */
    svc.connect_timeout_ms = 2000;
    svc.response_timeout_ms = 30000;
    shm_lb_policy_of(&svc, &p);
    CU_ASSERT_EQUAL(p.cb_count_5xx, 0);
    CU_ASSERT_EQUAL(p.lease_ms, 33000);
    CU_ASSERT_EQUAL(p.retry_ms, SHM_LB_RETRY_MS);
    svc.cb_enabled = 1;
    svc.cb_failures = 5;
    svc.cb_open_ms = 30000;
    svc.health_enabled = 1;
    shm_lb_policy_of(&svc, &p);
    CU_ASSERT(p.cb_count_5xx && p.cb_enabled && p.health_enabled);
    CU_ASSERT_EQUAL(p.cb_failures, 5);
    CU_ASSERT_EQUAL(p.cb_open_ms, 30000);
    CU_ASSERT_EQUAL(p.max_ejection_percent, 0);
    CU_ASSERT_EQUAL(p.passive_failures, 1); /* never 0: a count of 0 would never reset */
    svc.passive_failures = 3;
    svc.max_ejection_percent = 50;
    shm_lb_policy_of(&svc, &p);
    CU_ASSERT_EQUAL(p.passive_failures, 3);
    CU_ASSERT_EQUAL(p.max_ejection_percent, 50);
}

/* ---- the balancer on the per-attempt struct (worker/wk_lb.c) --------------------------------
 * A hand-built snapshot of one service, a private runtime segment and a generation: what a
 * worker has when it picks, with no connection anywhere. */
#define LBT_NOW 1000000u

struct lbt_snap {
    struct shm_snap_hdr h;
    struct shm_service svc;
    struct shm_backend bes[8];
    char strs[256];
};

struct lbt {
    struct lbt_snap snap;
    struct wk_gen gen;
    struct shm_rt *rt;
};

static uint64_t lbt_gens = 1000; /* each fixture its own generation: wk_lb caches per number */

static struct shm_str lbt_str(struct lbt *t, uint32_t *used, const char *str)
{
    struct shm_str r;
    size_t n = strlen(str);

    CU_ASSERT_FATAL(*used + n + 1 <= sizeof(t->snap.strs));
    memcpy(t->snap.strs + *used, str, n + 1);
    r.off = (uint32_t)(offsetof(struct lbt_snap, strs) + *used);
    r.len = (uint32_t)n;
    *used += (uint32_t)n + 1;
    return r;
}

static void lbt_init(struct lbt *t, uint32_t balance, const uint32_t *w, uint32_t n)
{
    uint32_t used = 0;
    char addr[32];

    memset(t, 0, sizeof(*t));
    t->rt = mmap(NULL, sizeof(*t->rt), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CU_ASSERT_FATAL(t->rt != MAP_FAILED);
    t->snap.h.services_off = (uint32_t)offsetof(struct lbt_snap, svc);
    t->snap.h.nservices = 1;
    t->snap.h.backends_off = (uint32_t)offsetof(struct lbt_snap, bes);
    t->snap.h.nbackends = n;
    t->snap.svc.name = lbt_str(t, &used, "web");
    t->snap.svc.nbackends = n;
    t->snap.svc.balance = balance;
    t->snap.svc.rt_slot = 3;
    t->snap.svc.retries = 1;
    t->snap.svc.connect_timeout_ms = 2000;
    t->snap.svc.response_timeout_ms = 30000;
    t->snap.svc.passive_failures = 3;
    t->snap.svc.max_ejection_percent = 50;
    for (uint32_t i = 0; i < n; i++) {
        snprintf(addr, sizeof(addr), "127.0.0.1:%u", 9000 + i);
        t->snap.bes[i].address = lbt_str(t, &used, addr);
        t->snap.bes[i].weight = w[i];
        t->snap.bes[i].rt_slot = 10 + i;
    }
    t->gen.snap = &t->snap.h;
    t->gen.gen = ++lbt_gens;
    t->snap.h.gen = t->gen.gen;
    wk.rt = t->rt;
    wk.now = LBT_NOW;
}

static void lbt_free(struct lbt *t)
{
    munmap(t->rt, sizeof(*t->rt));
    wk.rt = NULL;
    wk.now = 0;
}

static struct shm_rt_backend *lbt_rb(struct lbt *t, uint32_t pos)
{
    return &t->rt->backends[10 + pos];
}

/* A fresh request's attempt state, as wk_conn.c sets it up after routing. */
static void lbt_attempt(struct lbt *t, struct wk_attempt *a)
{
    memset(a, 0, sizeof(*a));
    a->gen = &t->gen;
    a->service = 0;
    a->client_family = AF_INET;
    a->client_ip[0] = 192;
    a->client_ip[1] = 0;
    a->client_ip[2] = 2;
    a->client_ip[3] = 7;
}

/* Pick for <a> and record the choice the way wk_conn.c does. */
static int lbt_pick(struct wk_attempt *a, char *why, size_t whylen)
{
    int b = wk_lb_pick(a, why, whylen);

    if (b >= 0) {
        a->backend = (uint32_t)b;
        a->tried |= 1ull << b;
        a->tries++;
    }
    return b;
}

static void test_attempt_rr_weights(void)
{
    static const uint32_t w[3] = {3, 1, 2};
    uint32_t rw[3], *sched = NULL, len, count[3] = {0, 0, 0};
    struct wk_attempt a;
    struct lbt t;
    char why[128];

    lbt_init(&t, SHM_BALANCE_RR, w, 3);
    len = build(w, 3, &sched, rw);
    /* One request after another: each takes the next slot of the smooth weighted schedule. */
    for (uint32_t k = 0; k < 10 * len; k++) {
        lbt_attempt(&t, &a);
        int b = lbt_pick(&a, why, sizeof(why));
        CU_ASSERT_FATAL(b >= 0 && b < 3);
        CU_ASSERT_EQUAL((uint32_t)b, sched[k % len]);
        CU_ASSERT_EQUAL(a.flags & WK_AT_PROBE, 0);
        count[b]++;
        wk_lb_result(&a, 0, 200);
    }
    CU_ASSERT_EQUAL(count[0], 30);
    CU_ASSERT_EQUAL(count[1], 10);
    CU_ASSERT_EQUAL(count[2], 20);
    /* Retries of one request never repeat a backend, then run out. */
    lbt_attempt(&t, &a);
    for (int k = 0; k < 3; k++) {
        int b = lbt_pick(&a, why, sizeof(why));
        CU_ASSERT(b >= 0);
        CU_ASSERT_EQUAL(wk_lb_can_retry(&a), k < 2);
    }
    CU_ASSERT_EQUAL(a.tried, 7);
    CU_ASSERT_EQUAL(a.tries, 3);
    CU_ASSERT_EQUAL(lbt_pick(&a, why, sizeof(why)), -1);
    CU_ASSERT_STRING_EQUAL(why, "No healthy backend for service web");
    free(sched);
    lbt_free(&t);
}

static void test_attempt_skips(void)
{
    static const uint32_t w[4] = {1, 1, 1, 1};
    struct wk_attempt a;
    struct lbt t;
    char why[128];

    lbt_init(&t, SHM_BALANCE_RR, w, 4);
    t.snap.svc.health_enabled = 1; /* down stays down: no passive retry */
    t.snap.svc.cb_enabled = 1;
    t.snap.svc.cb_failures = 3;
    t.snap.svc.cb_open_ms = 10000;
    lbt_rb(&t, 1)->state = SHM_BE_DOWN;
    lbt_rb(&t, 1)->down_since_ms = LBT_NOW - 1;
    lbt_rb(&t, 2)->state = SHM_BE_DISABLED;
    lbt_rb(&t, 3)->circuit = SHM_CIRCUIT_OPEN;
    lbt_rb(&t, 3)->circuit_opened_ms = LBT_NOW - 1;
    for (int k = 0; k < 12; k++) {
        lbt_attempt(&t, &a);
        CU_ASSERT_EQUAL(lbt_pick(&a, why, sizeof(why)), 0);
        CU_ASSERT_EQUAL(wk_lb_can_retry(&a), 0);
        CU_ASSERT_EQUAL(lbt_pick(&a, why, sizeof(why)), -1);
        /* The address only with errors.expose_backend. */
        CU_ASSERT_STRING_EQUAL(why, "Circuit open for 1 backend of service web");
        t.snap.h.errors_flags = SHM_ERRORS_EXPOSE_BACKEND;
        CU_ASSERT_EQUAL(lbt_pick(&a, why, sizeof(why)), -1);
        CU_ASSERT_STRING_EQUAL(why, "Circuit open for backend 127.0.0.1:9003 of service web");
        t.snap.h.errors_flags = 0;
        wk_lb_result(&a, 0, 200);
    }
    /* The one usable backend already tried by this request: none left. */
    lbt_attempt(&t, &a);
    a.tried = 1;
    CU_ASSERT_EQUAL(wk_lb_can_retry(&a), 0);
    CU_ASSERT_EQUAL(wk_lb_pick(&a, why, sizeof(why)), -1);
    /* A failed attempt is counted against its backend. */
    lbt_attempt(&t, &a);
    CU_ASSERT_EQUAL(lbt_pick(&a, why, sizeof(why)), 0);
    wk_lb_result(&a, WK_FAIL_CONNECT, 0);
    CU_ASSERT_EQUAL(lbt_rb(&t, 0)->errors, 1);
    CU_ASSERT_EQUAL(lbt_rb(&t, 0)->passive_failures, 3); /* a refusal counts in full */
    /* ip-hash: one client stays on its backend; its retry goes elsewhere. */
    t.snap.svc.balance = SHM_BALANCE_IPHASH;
    t.gen.gen = ++lbt_gens;
    lbt_rb(&t, 1)->state = SHM_BE_UP;
    lbt_rb(&t, 2)->state = SHM_BE_UP;
    lbt_rb(&t, 3)->circuit = SHM_CIRCUIT_CLOSED;
    {
        int first = -1;
        for (int k = 0; k < 8; k++) {
            lbt_attempt(&t, &a);
            int b = lbt_pick(&a, why, sizeof(why));
            CU_ASSERT(b >= 0);
            first = first < 0 ? b : first;
            CU_ASSERT_EQUAL(b, first);
            int b2 = lbt_pick(&a, why, sizeof(why));
            CU_ASSERT(b2 >= 0 && b2 != b);
        }
    }
    lbt_free(&t);
}

static void test_attempt_probe_lease(void)
{
    static const uint32_t w[1] = {1};
    struct wk_attempt a, b, c;
    struct lbt t;
    char why[128];

    lbt_init(&t, SHM_BALANCE_RR, w, 1);
    t.snap.svc.cb_enabled = 1;
    t.snap.svc.cb_failures = 3;
    t.snap.svc.cb_open_ms = 10000;
    lbt_rb(&t, 0)->circuit = SHM_CIRCUIT_OPEN;
    lbt_rb(&t, 0)->circuit_opened_ms = LBT_NOW - 10001; /* open time over: half-open */
    /* The first request takes the one trial; the next finds the backend out meanwhile. */
    lbt_attempt(&t, &a);
    CU_ASSERT_EQUAL(lbt_pick(&a, why, sizeof(why)), 0);
    CU_ASSERT(a.flags & WK_AT_PROBE);
    lbt_attempt(&t, &b);
    CU_ASSERT_EQUAL(wk_lb_can_retry(&b), 0);
    CU_ASSERT_EQUAL(lbt_pick(&b, why, sizeof(why)), -1);
    CU_ASSERT_EQUAL(b.flags & WK_AT_PROBE, 0);
    /* Its client went away: the lease is handed back at once, for the next request. */
    wk_lb_abort(&a);
    CU_ASSERT_EQUAL(a.flags & WK_AT_PROBE, 0);
    CU_ASSERT_EQUAL(lbt_rb(&t, 0)->probe_until_ms, 0);
    wk_lb_abort(&a); /* no lease: nothing happens */
    lbt_attempt(&t, &b);
    CU_ASSERT_EQUAL(lbt_pick(&b, why, sizeof(why)), 0);
    CU_ASSERT(b.flags & WK_AT_PROBE);
    /* The trial answered: the circuit closes and requests flow normally. */
    wk_lb_result(&b, 0, 200);
    CU_ASSERT_EQUAL(b.flags & WK_AT_PROBE, 0);
    CU_ASSERT_EQUAL(lbt_rb(&t, 0)->circuit, SHM_CIRCUIT_CLOSED);
    for (int k = 0; k < 3; k++) {
        lbt_attempt(&t, &c);
        CU_ASSERT_EQUAL(lbt_pick(&c, why, sizeof(why)), 0);
        CU_ASSERT_EQUAL(c.flags & WK_AT_PROBE, 0);
        wk_lb_result(&c, 0, 200);
    }
    /* Three failures open it again; a failed trial keeps it open. */
    for (int k = 0; k < 3; k++) {
        lbt_attempt(&t, &c);
        CU_ASSERT_EQUAL(lbt_pick(&c, why, sizeof(why)), 0);
        wk_lb_result(&c, WK_FAIL_RTIMEOUT, 0);
    }
    CU_ASSERT_EQUAL(lbt_rb(&t, 0)->circuit, SHM_CIRCUIT_OPEN);
    lbt_attempt(&t, &c);
    CU_ASSERT_EQUAL(lbt_pick(&c, why, sizeof(why)), -1);
    CU_ASSERT_STRING_EQUAL(why, "Circuit open for 1 backend of service web");
    wk.now = LBT_NOW + 10001;
    CU_ASSERT_EQUAL(lbt_pick(&c, why, sizeof(why)), 0);
    CU_ASSERT(c.flags & WK_AT_PROBE);
    wk_lb_result(&c, WK_FAIL_CONNECT, 0);
    CU_ASSERT_EQUAL(lbt_rb(&t, 0)->circuit, SHM_CIRCUIT_OPEN);
    lbt_free(&t);
}

UNIT_SUITE(wk_lb, {"swrr_sequence", test_swrr_sequence},
           {"swrr_matches_nginx", test_swrr_matches_nginx}, {"swrr_smooth", test_swrr_smooth},
           {"swrr_scaled", test_swrr_scaled}, {"maglev_even", test_maglev_even},
           {"maglev_movement", test_maglev_movement}, {"circuit_breaker", test_circuit_breaker},
           {"circuit_probe_lease", test_circuit_probe_lease},
           {"circuit_tripped", test_circuit_tripped}, {"passive_count", test_passive_count},
           {"passive_health", test_passive_health}, {"may_eject", test_may_eject},
           {"ejection_cap", test_ejection_cap}, {"ejection_lease", test_ejection_lease},
           {"active_health", test_active_health}, {"manual_control", test_manual_control},
           {"policy", test_policy}, {"attempt_rr_weights", test_attempt_rr_weights},
           {"attempt_skips", test_attempt_skips}, {"attempt_probe_lease", test_attempt_probe_lease})
