/* dispatcher: the meaning of struct shm_ridx, i.e. the route index tables inside a snapshot, and
 * the hashes that its builder (master/ms_compile.c), its reader (shm/shm_route.c) and its checker
 * (shm/shm_snap.c) must agree on. Pointer-free like the rest of the snapshot: offsets from the
 * segment start and table indexes only.
 *
 * Routes are grouped by host key: one group per distinct exact host, one per distinct wildcard
 * suffix ("*.a.com" -> "a.com") and one for "*". Exact and wildcard groups sit in one open
 * addressing hash keyed by (kind, key). Each group lists its distinct path lengths, longest first,
 * and a second hash maps (group, path) to a path entry whose slice of the route list holds that
 * group+path's routes sorted by (priority desc, order asc), minus routes that can never win
 * because earlier entries already accept all of their methods. A lookup probes the request host's
 * exact key, each of its suffixes at a '.', and the "*" group; in each group it probes the path
 * prefixes of the listed lengths. Nothing depends on the number of routes. */
#ifndef DSP_SHM_RIDX_H
#define DSP_SHM_RIDX_H

#include <stddef.h>
#include <stdint.h>

#include "shm/shm_types.h"

/* Slots of shm_ridx.off[] / count[]; slots from SHM_RIDX_NTABLES on are unused (count 0). */
#define SHM_RIDX_META          0 /* struct shm_ridx_meta, count 1 */
#define SHM_RIDX_GROUPS        1 /* struct shm_ridx_group */
#define SHM_RIDX_GROUP_BUCKETS 2 /* uint32_t group index or SHM_NONE; count is a power of two */
#define SHM_RIDX_PLENS         3 /* uint32_t path lengths, per group slice, descending */
#define SHM_RIDX_PATHS         4 /* struct shm_ridx_path */
#define SHM_RIDX_PATH_BUCKETS  5 /* uint32_t path entry index or SHM_NONE; power of two */
#define SHM_RIDX_LIST          6 /* uint32_t route index, per path entry slice */
#define SHM_RIDX_NTABLES       7

struct shm_ridx_meta {
    uint32_t any_group; /* the "*" group, or SHM_NONE */
    uint32_t reserved[7];
};

struct shm_ridx_group {
    uint32_t key_off; /* exact host, or the suffix after "*." (inside the string blob) */
    uint32_t key_len;
    uint32_t hash;        /* shm_ridx_host_hash(), also picks the bucket */
    uint32_t kind;        /* SHM_HOST_* */
    int32_t max_prio;     /* highest priority of the group's routes, for pruning */
    uint32_t plens_first; /* slice of the SHM_RIDX_PLENS table */
    uint32_t nplens;
    uint32_t pad;
};

struct shm_ridx_path {
    uint32_t group;
    uint32_t hash;    /* shm_ridx_path_hash(), also picks the bucket */
    uint32_t key_off; /* the path bytes (inside the string blob) */
    uint32_t key_len;
    uint32_t list_first; /* slice of the SHM_RIDX_LIST table */
    uint32_t nlist;
};

_Static_assert(sizeof(struct shm_ridx_meta) == 32, "shm_ridx_meta layout");
_Static_assert(sizeof(struct shm_ridx_group) == 32, "shm_ridx_group layout");
_Static_assert(sizeof(struct shm_ridx_path) == 24, "shm_ridx_path layout");

#define SHM_RIDX_FNV_BASIS 2166136261u
#define SHM_RIDX_FNV_PRIME 16777619u

static inline uint32_t shm_ridx_fnv_step(uint32_t h, unsigned char c)
{
    return (h ^ c) * SHM_RIDX_FNV_PRIME;
}

/* FNV-1a is weak in its low bits, which pick the bucket; murmur3's finaliser spreads them. */
static inline uint32_t shm_ridx_fmix(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* Host keys are hashed from their last byte to their first, so that one right-to-left pass over
 * a request host yields the hash of every suffix it has to try. */
static inline uint32_t shm_ridx_rfnv(const char *s, size_t len)
{
    uint32_t h = SHM_RIDX_FNV_BASIS;

    while (len-- > 0) {
        h = shm_ridx_fnv_step(h, (unsigned char)s[len]);
    }
    return h;
}

static inline uint32_t shm_ridx_fnv(const char *s, size_t len)
{
    uint32_t h = SHM_RIDX_FNV_BASIS;

    for (size_t i = 0; i < len; i++) {
        h = shm_ridx_fnv_step(h, (unsigned char)s[i]);
    }
    return h;
}

/* <rfnv> is shm_ridx_rfnv() of the key, <kind> SHM_HOST_EXACT or SHM_HOST_WILDCARD. */
static inline uint32_t shm_ridx_host_hash(uint32_t rfnv, uint32_t kind)
{
    return shm_ridx_fmix(rfnv ^ ((kind + 1u) * 0x9e3779b9u));
}

/* <fnv> is shm_ridx_fnv() of the path bytes, <group> the group index. */
static inline uint32_t shm_ridx_path_hash(uint32_t fnv, uint32_t group)
{
    return shm_ridx_fmix(fnv + (group + 1u) * 0x9e3779b9u);
}

/* Element size of each route-index table: the one definition shared by the compiler (which lays
 * the tables out) and the snapshot checker (which bounds them). */
extern const size_t shm_ridx_elsz[SHM_RIDX_NTABLES];

#endif
