/* dispatcher: the rate limiter's shared bucket table (see shm_rl.h). */
#include "shm/shm_rl.h"

#include <sched.h>
#include <string.h>

#include "common/siphash.h"

#define US_PER_S   1000000ull
#define LEASE_MS   50u /* a group's claim lock expires after this (a killed holder) */
#define LOCK_SPINS 64u /* busy tries for a group's lock, then... */
#define LOCK_YIELDS                                                                                \
    4096u /* ...tries that give the CPU away (a holder preempted mid-claim runs)                   \
           */
#define MAX_DEBT_US (60ull * US_PER_S)
#define TAT_MASK    ((1ull << 56) - 1)

/* ---- SipHash-1-3, 128-bit output ---------------------------------------------------------- */

#define SIPROUND DSP_SIPROUND(v0, v1, v2, v3)

void shm_rl_hash(const uint64_t seed[2], uint64_t mw, const void *key, size_t len, uint64_t out[2])
{
    const unsigned char *p = key;
    uint64_t v0 = 0x736f6d6570736575ull ^ seed[0];
    uint64_t v1 = 0x646f72616e646f6dull ^ seed[1] ^ 0xee;
    uint64_t v2 = 0x6c7967656e657261ull ^ seed[0];
    uint64_t v3 = 0x7465646279746573ull ^ seed[1];
    uint64_t m, b = (uint64_t)(len + 8) << 56;
    size_t i;

    /* The middleware's id is the first block, then the key. */
    v3 ^= mw;
    SIPROUND;
    v0 ^= mw;
    for (i = 0; i + 8 <= len; i += 8) {
        memcpy(&m, p + i, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; i + j < len; j++) {
        b |= (uint64_t)p[i + j] << (8 * j);
    }
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xee;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    out[0] = v0 ^ v1 ^ v2 ^ v3;
    v1 ^= 0xdd;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    out[1] = v0 ^ v1 ^ v2 ^ v3;
}

/* ---- bucket arithmetic -------------------------------------------------------------------- */

static uint64_t ceil_s(uint64_t us)
{
    return (us + US_PER_S - 1) / US_PER_S;
}

uint64_t shm_rl_gcra(uint64_t tat, uint64_t now_us, uint64_t interval_us, uint64_t burst,
                     struct shm_rl_verdict *v)
{
    uint64_t base = tat > now_us ? tat : now_us;
    uint64_t next = base + interval_us;
    uint64_t window = burst * interval_us; /* a full bucket's worth of time */

    v->limit = burst;
    if (next - now_us > window) {
        uint64_t wait = next - now_us - window;

        v->allowed = 0;
        v->remaining = 0;
        v->retry_after_s = wait < US_PER_S ? 1 : ceil_s(wait);
        v->reset_s = ceil_s(base - now_us);
        return tat;
    }
    v->allowed = 1;
    v->remaining = (window - (next - now_us)) / interval_us;
    v->reset_s = ceil_s(next - now_us);
    v->retry_after_s = 0;
    return next;
}

uint64_t shm_rl_debit(uint64_t tat, uint64_t now_us, uint64_t interval_us, uint64_t burst,
                      uint64_t tokens)
{
    uint64_t base = tat > now_us ? tat : now_us;
    uint64_t cap = now_us + burst * interval_us + MAX_DEBT_US;

    if (base >= cap) {
        return base;
    }
    if (tokens > (cap - base) / interval_us) {
        return cap;
    }
    return base + tokens * interval_us;
}

/* ---- the table ---------------------------------------------------------------------------- */

uint32_t shm_rl_groups_for(uint64_t keys)
{
    uint64_t want = (keys + SHM_RL_WAYS - 1) / SHM_RL_WAYS;
    uint32_t n = 1;

    while (n < want && n < SHM_RL_MAX_GROUPS) {
        n <<= 1;
    }
    return n;
}

void shm_rl_init(struct shm_rl *rl, uint64_t keys, const uint64_t seed[2])
{
    rl->ngroups = shm_rl_groups_for(keys);
    rl->seed[0] = seed[0];
    rl->seed[1] = seed[1];
}

/* Way <w> of group <gi> holds (tag, check)? Reads it like a seqlock: the tag, the slot, then
 * the tag again, so that a way being given to another key meanwhile is not taken for ours. */
static int way_is(const struct shm_rl *rl, uint32_t gi, unsigned w, uint64_t tag, uint64_t check,
                  uint64_t *state)
{
    const struct shm_rl_group *g = &rl->groups[gi];
    const struct shm_rl_slot *s = &rl->slots[(size_t)gi * SHM_RL_WAYS + w];
    uint64_t c;

    if (__atomic_load_n(&g->tag[w], __ATOMIC_ACQUIRE) != tag) {
        return 0;
    }
    c = __atomic_load_n(&s->check, __ATOMIC_RELAXED);
    *state = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return c == check && __atomic_load_n(&g->tag[w], __ATOMIC_RELAXED) == tag;
}

static int find(const struct shm_rl *rl, uint32_t gi, uint64_t tag, uint64_t check, uint64_t *state)
{
    for (unsigned w = 0; w < SHM_RL_WAYS; w++) {
        if (way_is(rl, gi, w, tag, check, state)) {
            return (int)w;
        }
    }
    return -1;
}

static int group_lock(struct shm_rl_group *g, uint64_t now_ms)
{
    for (unsigned i = 0; i < LOCK_SPINS + LOCK_YIELDS; i++) {
        uint64_t cur = __atomic_load_n(&g->lock, __ATOMIC_RELAXED);

        /* Free, or the lease of a holder that died ran out. */
        if ((cur == 0 || cur < now_ms) &&
            __atomic_compare_exchange_n(&g->lock, &cur, now_ms + LEASE_MS, 0, __ATOMIC_ACQUIRE,
                                        __ATOMIC_RELAXED)) {
            return 0;
        }
        if (i >= LOCK_SPINS) {
            /* The holder was preempted between two stores (a loaded machine): let it finish
             * rather than pass a request unlimited. A holder that died has its lease run out
             * for the next requests (their clocks move on). */
            sched_yield();
            continue;
        }
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    return -1;
}

/* The way to give a new key: a free one, else the one whose bucket is the closest to full. */
static unsigned victim(const struct shm_rl *rl, uint32_t gi, uint64_t *old_tat)
{
    const struct shm_rl_group *g = &rl->groups[gi];
    unsigned best = 0;
    uint64_t best_tat = UINT64_MAX;

    for (unsigned w = 0; w < SHM_RL_WAYS; w++) {
        uint64_t t;

        if (__atomic_load_n(&g->tag[w], __ATOMIC_RELAXED) == 0) {
            *old_tat = 0;
            return w | 0x100u;
        }
        t = shm_rl_tat(
            __atomic_load_n(&rl->slots[(size_t)gi * SHM_RL_WAYS + w].state, __ATOMIC_RELAXED));
        if (t < best_tat) {
            best_tat = t;
            best = w;
        }
    }
    *old_tat = best_tat;
    return best;
}

struct claim {
    uint64_t tag, check;
    const struct shm_mw_rate_limit *p;
    uint8_t kind;
    const void *key;
    size_t len;
};

/* Way <idx> counts for the fleet: keep its key for the master's Redis names, then say so (the
 * master reads the bytes only once it sees the flag). On a claim, or the first take after a
 * reload made a host-scope middleware fleet-scope. */
static void keep_key(struct shm_rl *rl, size_t idx, const struct claim *k)
{
    struct shm_rl_slot *s = &rl->slots[idx];
    uint16_t len;

    if (k->len <= SHM_RL_KEY_BYTES) {
        memcpy(rl->keybytes[idx].b, k->key, k->len);
        len = (uint16_t)k->len;
    } else {
        static const uint64_t zero[2] = {0, 0};
        uint64_t h[2];

        shm_rl_hash(zero, 0, k->key, k->len, h);
        memcpy(rl->keybytes[idx].b, k->key, SHM_RL_KEY_PREFIX);
        memcpy(rl->keybytes[idx].b + SHM_RL_KEY_PREFIX, h, 16);
        len = SHM_RL_KEY_BYTES + 1; /* the master names it by the hash */
    }
    __atomic_store_n(&s->key_kind, k->kind, __ATOMIC_RELAXED);
    __atomic_store_n(&s->key_len, len, __ATOMIC_RELAXED);
    __atomic_store_n(&s->fleet, 1, __ATOMIC_RELEASE);
}

/* Give a way of group <gi> to the key (under the group's lock). Returns the way, or -1 when the
 * lock could not be had. */
static int claim(struct shm_rl *rl, uint32_t gi, const struct claim *k, uint64_t now_ms,
                 uint64_t *state, struct shm_rl_verdict *v)
{
    struct shm_rl_group *g = &rl->groups[gi];
    struct shm_rl_slot *s;
    uint64_t old_tat, st;
    unsigned w;
    int found;
    size_t idx;

    if (group_lock(g, now_ms) != 0) {
        return -1;
    }
    found = find(rl, gi, k->tag, k->check, state); /* claimed meanwhile by another worker */
    if (found >= 0) {
        __atomic_store_n(&g->lock, 0, __ATOMIC_RELEASE);
        return found;
    }
    w = victim(rl, gi, &old_tat);
    if (w & 0x100u) {
        w &= 0xffu;
        __atomic_add_fetch(&rl->keys, 1, __ATOMIC_RELAXED);
    } else if (old_tat > now_ms * 1000) {
        __atomic_add_fetch(&rl->evictions, 1, __ATOMIC_RELAXED);
        v->evicted = 1;
    }
    v->claimed = 1;
    idx = (size_t)gi * SHM_RL_WAYS + w;
    s = &rl->slots[idx];
    st = __atomic_load_n(&s->state, __ATOMIC_RELAXED);
    /* Unpublish, rewrite, publish: a reader that saw the old tag sees the change (way_is()). */
    __atomic_store_n(&g->tag[w], 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(&s->check, k->check, __ATOMIC_RELAXED);
    __atomic_store_n(&s->mw, k->p->id, __ATOMIC_RELAXED);
    __atomic_store_n(&s->used, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&s->fleet, 0, __ATOMIC_RELAXED);
    if (k->p->scope == SHM_RL_SCOPE_FLEET) {
        keep_key(rl, idx, k);
    }
    st = ((uint64_t)(uint8_t)(shm_rl_inc(st) + 1) << 56); /* a full bucket */
    __atomic_store_n(&s->state, st, __ATOMIC_RELAXED);
    __atomic_store_n(&g->tag[w], k->tag, __ATOMIC_RELEASE);
    __atomic_store_n(&g->lock, 0, __ATOMIC_RELEASE);
    *state = st;
    return (int)w;
}

void shm_rl_take(struct shm_rl *rl, const struct shm_mw_rate_limit *p, uint8_t key_kind,
                 const void *key, size_t len, uint64_t now_ms, struct shm_rl_verdict *v)
{
    uint64_t h[2], now_us = now_ms * 1000;
    struct claim k;
    uint32_t gi;

    shm_rl_hash(rl->seed, p->id, key, len, h);
    gi = (uint32_t)(h[0] >> 32) & (rl->ngroups - 1);
    k.tag = h[1] | 1;
    k.check = h[0];
    k.p = p;
    k.kind = key_kind;
    k.key = key;
    k.len = len;
    v->claimed = 0;
    v->evicted = 0;
    for (int attempt = 0; attempt < 8; attempt++) {
        uint64_t state;
        int w = find(rl, gi, k.tag, k.check, &state);
        struct shm_rl_slot *s;

        if (w < 0 && (w = claim(rl, gi, &k, now_ms, &state, v)) < 0) {
            break;
        }
        s = &rl->slots[(size_t)gi * SHM_RL_WAYS + (unsigned)w];
        for (;;) {
            uint64_t tat = shm_rl_gcra(shm_rl_tat(state), now_us, p->interval_us, p->burst, v);
            uint64_t inc = state & ~TAT_MASK;
            uint64_t seen = state;

            if (!v->allowed) {
                return;
            }
            if (__atomic_compare_exchange_n(&s->state, &state, inc | (tat & TAT_MASK), 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                if (p->scope == SHM_RL_SCOPE_FLEET) {
                    __atomic_add_fetch(&s->used, 1, __ATOMIC_RELAXED);
                    if (!__atomic_load_n(&s->fleet, __ATOMIC_RELAXED)) {
                        keep_key(rl, (size_t)gi * SHM_RL_WAYS + (unsigned)w, &k);
                    }
                }
                return;
            }
            if ((state & ~TAT_MASK) != (seen & ~TAT_MASK)) {
                break; /* the way went to another key: look again */
            }
        }
    }
    /* Never expected: the group's lock stayed taken. Let the request through. */
    __atomic_add_fetch(&rl->contended, 1, __ATOMIC_RELAXED);
    v->allowed = 1;
    v->limit = p->burst;
    v->remaining = p->burst - 1;
    v->reset_s = 0;
    v->retry_after_s = 0;
}

int shm_rl_charge(struct shm_rl *rl, uint32_t idx, uint8_t inc, uint64_t interval_us,
                  uint64_t burst, uint64_t tokens, uint64_t now_ms)
{
    struct shm_rl_slot *s = &rl->slots[idx];
    uint64_t state = __atomic_load_n(&s->state, __ATOMIC_ACQUIRE);

    for (;;) {
        uint64_t tat;

        if (shm_rl_inc(state) != inc) {
            return -1;
        }
        tat = shm_rl_debit(shm_rl_tat(state), now_ms * 1000, interval_us, burst, tokens);
        if (__atomic_compare_exchange_n(&s->state, &state, (state & ~TAT_MASK) | (tat & TAT_MASK),
                                        0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            return 0;
        }
    }
}
