/* dispatcher: the rate limiter's token buckets in shared memory (middleware type rate_limit).
 *
 * One table for every rate_limit middleware, a region at the end of the runtime segment (so it
 * outlives worker crashes and reloads), sized at start by limits.rate_limit_keys. It is a
 * bucketed hash table: a key hashes (SipHash-1-3, 128-bit, seeded with a secret the master draws
 * at start, so a client cannot aim keys at one bucket) to one group of SHM_RL_WAYS slots whose
 * tags share one cache line. A lookup reads that line, then the slot: one hash, one probe of at
 * most SHM_RL_WAYS tags, one compare-and-swap. A key that is not there takes a free way of its
 * group, or the way whose bucket is the closest to full (a full bucket is the same as none, so
 * losing it loses nothing; any other is counted as an eviction). A flood of new keys therefore
 * never fills the table nor lengthens a lookup: it only recycles slots in the groups it hashes
 * to. Claiming a way takes the group's short lock (a lease that expires, so a worker killed while
 * holding it cannot wedge the group); consuming a token never does.
 *
 * Each bucket is a GCRA state (the "theoretical arrival time" form of a token bucket, which
 * packs into one word): average tokens per period refill it, burst is its size. Times are
 * CLOCK_MONOTONIC microseconds (one clock for every process of the host). The word also carries
 * an incarnation that changes whenever its way is given to another key, so a worker that found
 * the key just before the way was recycled cannot spend the new key's tokens.
 *
 * Fleet scope: workers also count the tokens they took (slot.used); the master (master/ms_rl.c)
 * collects them, reconciles with Redis and charges what the other dispatchers consumed to the
 * same bucket (shm_rl_charge), so a bucket here reflects the fleet's use within one period. */
#ifndef DSP_SHM_RL_H
#define DSP_SHM_RL_H

#include <stddef.h>
#include <stdint.h>

#define SHM_RL_WAYS        7u
#define SHM_RL_MAX_GROUPS  (1u << 17) /* 917,504 keys at most */
#define SHM_RL_MIN_KEYS    1024u
#define SHM_RL_MAX_KEYS    (SHM_RL_MAX_GROUPS * SHM_RL_WAYS)
#define SHM_RL_KEY_BYTES   60u /* key bytes kept for the fleet's Redis key names */
#define SHM_RL_MAX_AVERAGE 1000000u
#define SHM_RL_MAX_BURST   1000000u

/* The rate_limit parameter block in the snapshot's middleware region. */
#define SHM_RL_KEY_CLIENT_IP 0u
#define SHM_RL_KEY_HOST      1u
#define SHM_RL_KEY_HEADER    2u

#define SHM_RL_SCOPE_HOST  0u
#define SHM_RL_SCOPE_FLEET 1u

struct shm_mw_rate_limit {
    uint64_t id;          /* stable id: a hash of the middleware's name (kept across reloads) */
    uint64_t interval_us; /* one token every interval_us (period / average), >= 1 */
    uint64_t burst;       /* bucket size, >= 1 */
    uint32_t average;     /* as configured (tokens per period) */
    uint32_t period_s;
    uint32_t key;        /* SHM_RL_KEY_* */
    uint32_t scope;      /* SHM_RL_SCOPE_* */
    uint32_t header_off; /* SHM_RL_KEY_HEADER: the header name (region-relative string, lower */
    uint32_t header_len; /* case), else 0 */
    uint32_t reserved[4];
};

/* One group: its claim lock and the tags of its ways (0 = free). One cache line. */
struct shm_rl_group {
    uint64_t lock; /* 0 = free, else the holder's lease end (monotonic ms) */
    uint64_t tag[SHM_RL_WAYS];
};

/* One way's bucket. */
struct shm_rl_slot {
    uint64_t check;   /* the other half of the key's hash */
    uint64_t state;   /* incarnation (8 bits) << 56 | theoretical arrival time (us, 56 bits) */
    uint64_t mw;      /* shm_mw_rate_limit.id of its middleware */
    uint32_t used;    /* fleet scope: tokens taken here since the master last collected them */
    uint16_t key_len; /* bytes of the key in shm_rl_key (fleet scope; at most SHM_RL_KEY_BYTES) */
    uint8_t key_kind; /* SHM_RL_KEY_* */
    uint8_t fleet;    /* 1: a fleet-scope bucket */
};

struct shm_rl_key {
    uint8_t b[64];
};

/* shm_rl.mode, what `show health` says of the rate limits (the master writes). */
#define SHM_RL_MODE_OFF      0u /* no rate_limit middleware */
#define SHM_RL_MODE_HOST     1u /* host scope only */
#define SHM_RL_MODE_FLEET    2u /* fleet scope, reconciled with Redis */
#define SHM_RL_MODE_FALLBACK 3u /* fleet scope, but Redis is unreachable: counting on this host */

static inline const char *shm_rl_mode_name(uint32_t mode)
{
    return mode == SHM_RL_MODE_HOST       ? "host"
           : mode == SHM_RL_MODE_FLEET    ? "fleet"
           : mode == SHM_RL_MODE_FALLBACK ? "host-fallback"
                                          : "off";
}

struct shm_rl {
    uint32_t ngroups;     /* power of two, set once by the master before the first fork */
    uint32_t mode;        /* SHM_RL_MODE_* */
    uint64_t seed[2];     /* SipHash key */
    uint64_t keys;        /* ways in use */
    uint64_t evictions;   /* buckets not yet full given to another key */
    uint64_t contended;   /* requests let through because a group stayed locked (never expected) */
    uint64_t fleet_syncs; /* reconciliations with Redis that succeeded */
    uint64_t fleet_failures; /* that failed (error, timeout, link down) */
    uint64_t fleet_last_ms;  /* monotonic ms of the last success */
    uint64_t reserved[6];
    struct shm_rl_group groups[SHM_RL_MAX_GROUPS];
    struct shm_rl_slot slots[SHM_RL_MAX_GROUPS * SHM_RL_WAYS];
    struct shm_rl_key keybytes[SHM_RL_MAX_GROUPS * SHM_RL_WAYS];
};

_Static_assert(sizeof(struct shm_rl_group) == 64, "a group is one cache line");
_Static_assert(sizeof(struct shm_rl_slot) == 32, "a slot is half a cache line");
_Static_assert(sizeof(struct shm_mw_rate_limit) % 8 == 0, "rate_limit block alignment");

/* shm_rt_mw.type_counters of a rate_limit middleware: the buckets its keys were given, and of
 * those the ones that took the way of a bucket not yet full (evictions it caused). */
#define SHM_RL_TC_KEYS      0u
#define SHM_RL_TC_EVICTIONS 1u

/* The outcome of taking a token. */
struct shm_rl_verdict {
    int allowed;
    uint64_t limit;         /* the bucket size (RateLimit-Limit) */
    uint64_t remaining;     /* whole tokens left after this request (RateLimit-Remaining) */
    uint64_t reset_s;       /* seconds until the bucket is full again (RateLimit-Reset) */
    uint64_t retry_after_s; /* denied: seconds until a token is there (Retry-After), >= 1 */
    uint8_t claimed;        /* shm_rl_take(): the key got a new bucket */
    uint8_t evicted;        /* ...taking the way of a bucket that was not full */
};

/* ---- the bucket arithmetic (pure; unit-tested) ------------------------------------------- */

/* Take one token from the bucket whose theoretical arrival time is <tat> at <now_us>, with one
 * token every <interval_us> and room for <burst>. Fills <v>; returns the new arrival time
 * (unchanged when denied). */
uint64_t shm_rl_gcra(uint64_t tat, uint64_t now_us, uint64_t interval_us, uint64_t burst,
                     struct shm_rl_verdict *v);

/* Charge <tokens> consumed elsewhere (fleet) to a bucket: its new arrival time. The debt is
 * capped at burst + 60 s worth so that no count can push a bucket out of reach for long. */
uint64_t shm_rl_debit(uint64_t tat, uint64_t now_us, uint64_t interval_us, uint64_t burst,
                      uint64_t tokens);

/* ---- the table ---------------------------------------------------------------------------- */

/* The group count for a wanted number of keys (rounded up to a power of two). */
uint32_t shm_rl_groups_for(uint64_t keys);

/* Master, before the first fork: size the table and draw its seed. */
void shm_rl_init(struct shm_rl *rl, uint64_t keys, const uint64_t seed[2]);

/* A middleware's stable id: a hash of its name (FNV-1a), so its buckets follow it across
 * reloads. Workers and the master compute the same. */
static inline uint64_t shm_rl_mw_id(const char *name, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)name[i]) * 0x100000001b3ull;
    }
    return h | 1;
}

/* Key bytes kept of a longer key: its first SHM_RL_KEY_PREFIX bytes, then 16 bytes of an
 * unseeded hash of all of it (the same on every dispatcher, for the fleet's Redis names). */
#define SHM_RL_KEY_PREFIX (SHM_RL_KEY_BYTES - 16u)

/* SipHash-1-3 with a 128-bit result of <mw> followed by the <len> bytes of <key>. */
void shm_rl_hash(const uint64_t seed[2], uint64_t mw, const void *key, size_t len, uint64_t out[2]);

/* Take a token for <key> from middleware <p>'s bucket at <now_ms>. Lock-free unless the key has
 * no bucket yet. Fills <v> (a table too contended to claim a way lets the request through with
 * a full bucket's figures). <fleet>: count the token for the master's reconciliation. */
void shm_rl_take(struct shm_rl *rl, const struct shm_mw_rate_limit *p, uint8_t key_kind,
                 const void *key, size_t len, uint64_t now_ms, struct shm_rl_verdict *v);

/* Master: charge <tokens> to the bucket at way <idx> if it still holds incarnation <inc> of the
 * key it held; returns 0, or -1 when the way went to another key. */
int shm_rl_charge(struct shm_rl *rl, uint32_t idx, uint8_t inc, uint64_t interval_us,
                  uint64_t burst, uint64_t tokens, uint64_t now_ms);

static inline uint8_t shm_rl_inc(uint64_t state)
{
    return (uint8_t)(state >> 56);
}

static inline uint64_t shm_rl_tat(uint64_t state)
{
    return state & ((1ull << 56) - 1);
}

#endif
