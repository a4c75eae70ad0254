/* dispatcher: balancing schedules, consistent-hash tables and the backend state rules (see
 * shm_lb.h). */
#include "shm/shm_lb.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* ---- smooth weighted round-robin ---------------------------------------------------------- */
static uint32_t gcd32(uint32_t a, uint32_t b)
{
    while (b != 0) {
        uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Divide <rw> by the gcd of its entries; returns the new sum. */
static uint64_t reduce(uint32_t *rw, uint32_t n)
{
    uint32_t g = 0;
    uint64_t sum = 0;

    for (uint32_t i = 0; i < n; i++) {
        g = gcd32(g, rw[i]);
    }
    for (uint32_t i = 0; i < n; i++) {
        rw[i] /= g;
        sum += rw[i];
    }
    return sum;
}

uint32_t shm_lb_swrr_weights(const uint32_t *w, uint32_t n, uint32_t *rw)
{
    uint64_t sum;

    if (n == 0) {
        return 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        rw[i] = w[i] ? w[i] : 1;
    }
    sum = reduce(rw, n);
    if (sum > SHM_LB_SWRR_MAX && sum > n) {
        /* Too long a period: keep the proportions as well as SHM_LB_SWRR_MAX slots allow. */
        uint64_t target = n > SHM_LB_SWRR_MAX ? n : SHM_LB_SWRR_MAX;
        for (uint32_t i = 0; i < n; i++) {
            uint64_t v = (uint64_t)rw[i] * target / sum;
            rw[i] = v ? (uint32_t)v : 1;
        }
        sum = reduce(rw, n);
    }
    return (uint32_t)sum;
}

static int by_weight(const void *a, const void *b, void *arg)
{
    const uint32_t *w = arg;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

    if (w[x] != w[y]) {
        return w[x] < w[y] ? -1 : 1;
    }
    return x < y ? -1 : (x > y);
}

/* nginx's algorithm adds each weight to its backend's current weight, picks the largest (first
 * on ties) and subtracts the total from it: after step t, backend i's current weight is
 * (t + 1) * w_i - W * c_i, c_i being how often it was picked. Within a group of equal weights the
 * largest is therefore the least picked (lowest position on ties), so each group simply rotates
 * through its members, and a step only compares one head per distinct weight. */
int shm_lb_swrr_build(const uint32_t *rw, uint32_t n, uint32_t *sched, uint32_t len)
{
    struct group {
        uint64_t w;
        uint32_t first; /* into order[] */
        uint32_t size;
        uint32_t pos; /* next member to pick, relative to first */
        uint64_t picks;
    };
    struct group *g;
    uint32_t *order;
    uint32_t ng = 0;

    if (n == 0 || len == 0) {
        return 0;
    }
    order = malloc(n * sizeof(*order));
    g = malloc(n * sizeof(*g));
    if (order == NULL || g == NULL) {
        free(order);
        free(g);
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        order[i] = i;
    }
    qsort_r(order, n, sizeof(*order), by_weight, (void *)rw);
    for (uint32_t i = 0; i < n; i++) {
        if (ng == 0 || g[ng - 1].w != rw[order[i]]) {
            g[ng].w = rw[order[i]];
            g[ng].first = i;
            g[ng].size = 0;
            g[ng].pos = 0;
            g[ng].picks = 0;
            ng++;
        }
        g[ng - 1].size++;
    }
    for (uint32_t t = 0; t < len; t++) {
        uint32_t best = 0, best_head = 0;
        int64_t best_key = 0;

        for (uint32_t k = 0; k < ng; k++) {
            int64_t key = (int64_t)((t + 1) * g[k].w) -
                          (int64_t)len * (int64_t)(g[k].picks / g[k].size);
            uint32_t head = order[g[k].first + g[k].pos];
            if (k == 0 || key > best_key || (key == best_key && head < best_head)) {
                best = k;
                best_key = key;
                best_head = head;
            }
        }
        sched[t] = best_head;
        g[best].picks++;
        g[best].pos = g[best].pos + 1 == g[best].size ? 0 : g[best].pos + 1;
    }
    free(order);
    free(g);
    return 0;
}

/* ---- Maglev ---------------------------------------------------------------------------------- */
static uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

uint64_t shm_lb_hash(const void *p, size_t len, uint64_t seed)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull ^ fmix64(seed + 0x9e3779b97f4a7c15ull);

    for (size_t i = 0; i < len; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return fmix64(h ^ len);
}

uint64_t shm_lb_client_hash(int family, const uint8_t *ip)
{
    return shm_lb_hash(ip, family == AF_INET6 ? 16 : 4, (uint64_t)family);
}

uint32_t shm_lb_maglev_size(uint32_t n)
{
    /* Few and far apart: every backend's slots depend on m, so a size change moves almost all
     * clients. One size serves up to 655 backends. */
    static const uint32_t primes[] = {65521, 262139, 1048573};
    uint64_t want = (uint64_t)n * 100;

    for (size_t i = 0; i < sizeof(primes) / sizeof(primes[0]); i++) {
        if (primes[i] >= want) {
            return primes[i];
        }
    }
    return primes[sizeof(primes) / sizeof(primes[0]) - 1];
}

struct perm {
    uint64_t key;
    uint64_t offset;
    uint64_t skip;
    uint64_t next;
    uint32_t pos;
    uint32_t w;
    uint32_t credit;
};

static int by_key(const void *a, const void *b)
{
    const struct perm *x = a, *y = b;

    if (x->key != y->key) {
        return x->key < y->key ? -1 : 1;
    }
    return x->pos < y->pos ? -1 : (x->pos > y->pos);
}

int shm_lb_maglev_build(const uint64_t *keys, const uint32_t *w, uint32_t n, uint32_t *table,
                        uint32_t m)
{
    struct perm *pm;
    uint32_t wmax = 1, filled = 0;

    if (n == 0 || m < 2) {
        return 0;
    }
    pm = malloc(n * sizeof(*pm));
    if (pm == NULL) {
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        pm[i].key = keys[i];
        pm[i].pos = i;
        pm[i].offset = keys[i] % m;
        pm[i].skip = fmix64(keys[i] ^ 0x5bd1e9955bd1e995ull) % (m - 1) + 1;
        pm[i].next = 0;
        pm[i].w = w[i] ? w[i] : 1;
        pm[i].credit = 0;
        if (pm[i].w > wmax) {
            wmax = pm[i].w;
        }
    }
    /* Turns are taken in key order, so that the table does not depend on the order of the
     * backend list either. */
    qsort(pm, n, sizeof(*pm), by_key);
    for (uint32_t s = 0; s < m; s++) {
        table[s] = UINT32_MAX;
    }
    /* Each round every backend earns its weight and claims one slot per wmax earned. m is prime
     * and 0 < skip < m, so a permutation visits every slot: a free one is always found. */
    for (;;) {
        for (uint32_t i = 0; i < n; i++) {
            uint64_t c;
            pm[i].credit += pm[i].w;
            if (pm[i].credit < wmax) {
                continue;
            }
            pm[i].credit -= wmax;
            do {
                c = (pm[i].offset + pm[i].next * pm[i].skip) % m;
                pm[i].next++;
            } while (table[c] != UINT32_MAX);
            table[c] = pm[i].pos;
            if (++filled == m) {
                free(pm);
                return 0;
            }
        }
    }
}

/* ---- backend state ------------------------------------------------------------------------- */
void shm_lb_policy_of(const struct shm_service *svc, struct shm_lb_policy *p)
{
    p->health_enabled = svc->health_enabled;
    p->cb_enabled = svc->cb_enabled;
    p->cb_failures = svc->cb_failures ? svc->cb_failures : 1;
    p->cb_open_ms = svc->cb_open_ms;
    p->cb_count_5xx = svc->cb_enabled && svc->cb_count_5xx;
    p->retry_ms = SHM_LB_RETRY_MS;
    p->lease_ms = svc->connect_timeout_ms + svc->response_timeout_ms + 1000;
    p->passive_failures = svc->passive_failures ? svc->passive_failures : 1;
    p->max_ejection_percent = svc->max_ejection_percent <= 100 ? svc->max_ejection_percent : 100;
}

#define LD(p)    __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define ST(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static int retry_due(struct shm_rt_backend *rb, const struct shm_lb_policy *p, uint64_t now)
{
    return !p->health_enabled && LD(&rb->down_since_ms) + p->retry_ms <= now;
}

static int open_over(struct shm_rt_backend *rb, const struct shm_lb_policy *p, uint64_t now)
{
    return LD(&rb->circuit_opened_ms) + p->cb_open_ms <= now;
}

/* Does the state of <rb> keep it from any request, probe or not? */
static int shut(struct shm_rt_backend *rb, const struct shm_lb_policy *p, uint64_t now, int *why)
{
    uint32_t st = LD(&rb->state);
    uint32_t cs = p->cb_enabled ? LD(&rb->circuit) : SHM_CIRCUIT_CLOSED;

    if (st == SHM_BE_DISABLED) {
        *why = SHM_LB_WHY_DISABLED;
        return 1;
    }
    if (LD(&rb->circuit_forced)) {
        /* Tripped by hand: open whatever the breaker says, and it never half-opens. */
        *why = SHM_LB_WHY_OPEN;
        return 1;
    }
    if (st == SHM_BE_DOWN && !retry_due(rb, p, now)) {
        *why = SHM_LB_WHY_DOWN;
        return 1;
    }
    if (cs == SHM_CIRCUIT_OPEN && !open_over(rb, p, now)) {
        *why = SHM_LB_WHY_OPEN;
        return 1;
    }
    return 0;
}

int shm_lb_admit(struct shm_rt_backend *rb, const struct shm_lb_policy *p, uint64_t now, int take,
                 int *why)
{
    uint32_t st, cs;
    uint64_t lease;
    int dummy;

    if (why == NULL) {
        why = &dummy;
    }
    if (shut(rb, p, now, why)) {
        return SHM_LB_NO;
    }
    st = LD(&rb->state);
    cs = p->cb_enabled ? LD(&rb->circuit) : SHM_CIRCUIT_CLOSED;
    if (st == SHM_BE_UP && cs == SHM_CIRCUIT_CLOSED) {
        return SHM_LB_YES;
    }
    /* A trial: a passive-down backend whose retry interval is over, or an open circuit whose
     * open_ms is over (or a half-open one whose probe lease expired). */
    *why = cs != SHM_CIRCUIT_CLOSED ? SHM_LB_WHY_OPEN : SHM_LB_WHY_DOWN;
    lease = LD(&rb->probe_until_ms);
    if (lease > now) {
        return SHM_LB_NO;
    }
    if (!take) {
        return SHM_LB_PROBE;
    }
    if (!__atomic_compare_exchange_n(&rb->probe_until_ms, &lease, now + p->lease_ms, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        return SHM_LB_NO;
    }
    /* Won the lease. The previous probe may have ended between our reads and the swap (and
     * re-opened the circuit or restarted the down interval, or closed it): look again. */
    if (shut(rb, p, now, why)) {
        ST(&rb->probe_until_ms, 0);
        return SHM_LB_NO;
    }
    st = LD(&rb->state);
    if (p->cb_enabled) {
        uint32_t open = SHM_CIRCUIT_OPEN;
        __atomic_compare_exchange_n(&rb->circuit, &open, SHM_CIRCUIT_HALFOPEN, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE);
        cs = LD(&rb->circuit);
    }
    if (st == SHM_BE_UP && cs == SHM_CIRCUIT_CLOSED) {
        ST(&rb->probe_until_ms, 0);
        return SHM_LB_YES;
    }
    return SHM_LB_PROBE;
}

unsigned shm_lb_outcome(struct shm_rt_backend *rb, const struct shm_lb_policy *p, int outcome,
                        int probe, uint64_t now)
{
    unsigned t = 0;
    int failed = outcome == SHM_LB_FAIL_5XX || outcome == SHM_LB_FAIL ||
                 outcome == SHM_LB_FAIL_CONN || outcome == SHM_LB_FAIL_REFUSED;
    int passive = outcome == SHM_LB_FAIL_CONN || outcome == SHM_LB_FAIL_REFUSED;
    int answered = outcome == SHM_LB_OK || outcome == SHM_LB_FAIL_5XX;
    uint32_t cf = 0;

    if (outcome == SHM_LB_NEUTRAL) {
        if (probe) {
            ST(&rb->probe_until_ms, 0);
        }
        return 0;
    }
    if (failed) {
        cf = __atomic_add_fetch(&rb->consecutive_failures, 1, __ATOMIC_ACQ_REL);
    } else if (LD(&rb->consecutive_failures) != 0) {
        ST(&rb->consecutive_failures, 0);
    }

    /* Passive health. Only connect failures and resets count; an HTTP answer (even a 5xx)
     * proves the backend reachable and starts the count again; timeouts and bad responses
     * leave it alone. */
    if (answered && LD(&rb->passive_failures) != 0) {
        ST(&rb->passive_failures, 0);
    }
    if (passive) {
        uint32_t st = LD(&rb->state);
        if (st == SHM_BE_UP) {
            uint32_t add = outcome == SHM_LB_FAIL_REFUSED ? p->passive_failures : 1;
            uint32_t old = LD(&rb->passive_failures), nv;
            /* Saturating add: the count only needs to reach the threshold. */
            do {
                nv = old >= p->passive_failures ? old : old + add;
            } while (nv != old && !__atomic_compare_exchange_n(&rb->passive_failures, &old, nv, 0,
                                                               __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
            if (nv >= p->passive_failures) {
                t |= SHM_LB_T_EJECT | (old < p->passive_failures ? SHM_LB_T_EJECT_FIRST : 0u);
            }
        } else if (probe && st == SHM_BE_DOWN) {
            /* A failed trial: the retry interval starts again. */
            ST(&rb->down_since_ms, now);
        }
    } else if (probe && answered && !p->health_enabled) {
        /* The trial got an HTTP answer, even a 5xx: the backend is reachable again. */
        uint32_t down = SHM_BE_DOWN;
        if (__atomic_compare_exchange_n(&rb->state, &down, SHM_BE_UP, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            ST(&rb->ejected, 0);
            t |= SHM_LB_T_UP;
        }
    } else if (probe && failed && LD(&rb->state) == SHM_BE_DOWN) {
        ST(&rb->down_since_ms, now);
    }

    /* Circuit breaker. Outcomes of requests that were already in flight when it opened move
     * nothing: only the probe decides while it is not closed. */
    if (p->cb_enabled) {
        uint32_t cs = LD(&rb->circuit);
        if (probe && cs != SHM_CIRCUIT_CLOSED) {
            if (failed) {
                ST(&rb->circuit_opened_ms, now);
                ST(&rb->circuit, SHM_CIRCUIT_OPEN);
                t |= SHM_LB_T_OPEN;
            } else {
                ST(&rb->circuit, SHM_CIRCUIT_CLOSED);
                t |= SHM_LB_T_CLOSE;
            }
        } else if (failed && cs == SHM_CIRCUIT_CLOSED && cf >= p->cb_failures) {
            uint32_t closed = SHM_CIRCUIT_CLOSED;
            ST(&rb->circuit_opened_ms, now);
            if (__atomic_compare_exchange_n(&rb->circuit, &closed, SHM_CIRCUIT_OPEN, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                t |= SHM_LB_T_OPEN;
            }
        }
    } else if (!failed && LD(&rb->circuit) != SHM_CIRCUIT_CLOSED) {
        /* Left over from a configuration that had a breaker. */
        ST(&rb->circuit, SHM_CIRCUIT_CLOSED);
    }
    /* Released last: a worker that wins the lease next must see the circuit as we left it. */
    if (probe) {
        ST(&rb->probe_until_ms, 0);
    }
    return t;
}

int shm_lb_may_eject(uint32_t n, uint32_t ejected, uint32_t others_up, uint32_t max_percent)
{
    return others_up >= 1 && ((uint64_t)ejected + 1) * 100 <= (uint64_t)max_percent * n;
}

unsigned shm_lb_eject(struct shm_rt_backend *slots, struct shm_rt_service *rs,
                      const struct shm_backend *bes, uint32_t n, uint32_t pos,
                      const struct shm_lb_policy *p, uint64_t now, int *why)
{
    struct shm_rt_backend *rb = &slots[bes[pos].rt_slot];
    uint64_t lease = LD(&rs->eject_lease_ms);
    uint32_t ejected = 0, others_up = 0, up = SHM_BE_UP;
    unsigned t = 0;

    if (LD(&rb->state) != SHM_BE_UP || LD(&rb->passive_failures) < p->passive_failures) {
        *why = SHM_LB_KEEP_GONE;
        return 0;
    }
    if (lease > now ||
        !__atomic_compare_exchange_n(&rs->eject_lease_ms, &lease, now + SHM_LB_EJECT_LEASE_MS, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        *why = SHM_LB_KEEP_BUSY;
        return 0;
    }
    /* Under the lease every earlier ejection of this service is complete and visible. Whatever
     * else moves meanwhile (checks, trials, the operator) only brings backends back, or is the
     * active health checks' own judgement. */
    if (LD(&rb->state) != SHM_BE_UP || LD(&rb->passive_failures) < p->passive_failures) {
        *why = SHM_LB_KEEP_GONE;
        goto out;
    }
    for (uint32_t j = 0; j < n; j++) {
        struct shm_rt_backend *o = &slots[bes[j].rt_slot];
        uint32_t st = LD(&o->state);
        if (st == SHM_BE_DOWN && LD(&o->ejected)) {
            ejected++;
        } else if (j != pos && st == SHM_BE_UP && !LD(&o->circuit_forced) &&
                   !(p->cb_enabled && LD(&o->circuit) == SHM_CIRCUIT_OPEN)) {
            others_up++;
        }
    }
    if (!shm_lb_may_eject(n, ejected, others_up, p->max_ejection_percent)) {
        *why = others_up == 0 ? SHM_LB_KEEP_LAST : SHM_LB_KEEP_CAP;
        goto out;
    }
    /* down_since and the flag are written before the state, so whoever sees DOWN sees when
     * and why; `rise` fresh successes are needed to come back. */
    ST(&rb->ejected, 1);
    ST(&rb->health_successes, 0);
    ST(&rb->down_since_ms, now);
    ST(&rb->passive_failures, 0);
    if (__atomic_compare_exchange_n(&rb->state, &up, SHM_BE_DOWN, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        t = SHM_LB_T_DOWN;
    } else {
        *why = SHM_LB_KEEP_GONE;
    }
out:
    ST(&rs->eject_lease_ms, 0);
    return t;
}

unsigned shm_lb_health_result(struct shm_rt_backend *rb, int ok, uint32_t status, uint32_t fall,
                              uint32_t rise, uint64_t now)
{
    unsigned t = 0;
    uint32_t st = LD(&rb->state);

    ST(&rb->health_status, status);
    ST(&rb->health_checked_ms, now);
    if (ok) {
        uint32_t s;
        ST(&rb->health_failures, 0);
        s = __atomic_add_fetch(&rb->health_successes, 1, __ATOMIC_ACQ_REL);
        if (st == SHM_BE_DOWN && (s >= rise || LD(&rb->down_since_ms) == 0)) {
            uint32_t down = SHM_BE_DOWN;
            if (__atomic_compare_exchange_n(&rb->state, &down, SHM_BE_UP, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                ST(&rb->ejected, 0);
                ST(&rb->passive_failures, 0);
                t |= SHM_LB_T_UP;
            }
        }
    } else {
        uint32_t f;
        ST(&rb->health_successes, 0);
        f = __atomic_add_fetch(&rb->health_failures, 1, __ATOMIC_ACQ_REL);
        if (st == SHM_BE_UP && f >= fall) {
            uint32_t up = SHM_BE_UP;
            ST(&rb->down_since_ms, now);
            if (__atomic_compare_exchange_n(&rb->state, &up, SHM_BE_DOWN, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                ST(&rb->ejected, 0); /* the checks' verdict, not a passive ejection */
                t |= SHM_LB_T_DOWN;
            }
        }
    }
    return t;
}
