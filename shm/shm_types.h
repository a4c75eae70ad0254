/* dispatcher: the ABI shared between the master, the workers and admin readers. No pointers and no
 * functions here: every reference is an offset or an index, every field fixed-width, padding
 * written down, and each block ends in a reserved tail so fields can be added without moving
 * others. Shared mutable fields are accessed with __atomic builtins only. */
#ifndef DSP_SHM_TYPES_H
#define DSP_SHM_TYPES_H

#include <stdint.h>

#define SHM_NONE UINT32_MAX

/* ------------------------------------------------------------------------------------------
 * Snapshot segment: one immutable segment per config generation, named "/dsp.<masterpid>.<gen>"
 * (POSIX shm). Built by the master off to the side, then published by a release store of its
 * generation number into shm_ctl.gen. Layout: shm_snap_hdr, then the tables at the offsets it
 * names (each 8-byte aligned), then the string blob.
 * ------------------------------------------------------------------------------------------ */
#define SHM_SNAP_MAGIC   0x53505344u /* "DSPS" */
#define SHM_SNAP_VERSION 1u

/* A string in the blob: <off> from the segment start, <len> bytes, followed by a NUL. */
struct shm_str {
    uint32_t off;
    uint32_t len;
};

struct shm_limits {
    uint64_t max_connections;
    uint64_t max_header_bytes;
    uint64_t max_body_bytes;     /* 0 = unlimited */
    uint32_t header_timeout_ms;
    uint32_t idle_timeout_ms;
    uint32_t shutdown_timeout_ms;
    uint32_t tunnel_idle_timeout_ms;
    uint32_t reserved[8];
};

struct shm_listener {
    uint16_t family;
    uint16_t port;
    uint8_t ip[16];
    uint8_t tls;
    uint8_t proxy_protocol;
    uint8_t pad[2];
    struct shm_str address;
    uint32_t reserved[4];
};

struct shm_cidr {
    uint8_t family;   /* AF_INET / AF_INET6 */
    uint8_t prefix;
    uint8_t addr[16];
    uint8_t pad[2];
};

#define SHM_BALANCE_RR        0u
#define SHM_BALANCE_LEASTCONN 1u
#define SHM_BALANCE_IPHASH    2u

struct shm_service {
    struct shm_str name;
    uint32_t backends_first;     /* index into the backend table */
    uint32_t nbackends;
    uint32_t balance;            /* SHM_BALANCE_* */
    uint32_t rt_slot;            /* index into shm_rt.services, assigned at publish */
    uint32_t retries;
    uint32_t connect_timeout_ms;
    uint32_t response_timeout_ms;
    uint32_t total_weight;
    /* health */
    uint32_t health_enabled;
    uint32_t health_interval_ms;
    uint32_t health_timeout_ms;
    uint32_t health_fall;
    uint32_t health_rise;
    uint32_t health_start_down;
    struct shm_str health_path;
    /* circuit breaker */
    uint32_t cb_enabled;
    uint32_t cb_failures;
    uint32_t cb_open_ms;
    uint32_t cb_count_5xx;
    uint32_t nroutes;            /* routes pointing at this service (for 404 hints) */
    uint32_t reserved[7];
};

struct shm_backend {
    struct shm_str address;      /* "127.0.0.1:9101" */
    uint32_t service;            /* index into the service table */
    uint32_t weight;
    uint32_t rt_slot;            /* index into shm_rt.backends, assigned at publish */
    uint16_t family;             /* AF_INET / AF_INET6 */
    uint16_t port;               /* host byte order */
    uint8_t ip[16];              /* network byte order; IPv4 in the first 4 bytes */
    uint32_t reserved[4];
};

#define SHM_HOST_ANY      0u /* "*" */
#define SHM_HOST_WILDCARD 1u /* "*.suffix" */
#define SHM_HOST_EXACT    2u

struct shm_route {
    struct shm_str host;         /* as configured, lower case */
    struct shm_str path;         /* prefix, default "/" */
    uint64_t methods;            /* bit (1 << enum http_method); 0 = all */
    int32_t priority;
    uint32_t service;            /* index into the service table */
    uint32_t order;              /* position in the config: the last tie-breaker */
    uint32_t host_kind;          /* SHM_HOST_* */
    uint32_t reserved[2];
};

/* The route index (built by master/ms_compile.c, read by shm/shm_route.c). Opaque to everyone
 * else; its tables live inside the snapshot at the offsets below. */
struct shm_ridx {
    uint32_t off[12];            /* table offsets, meaning defined in shm/shm_route.c */
    uint32_t count[12];          /* table element counts */
};

struct shm_snap_hdr {
    uint32_t magic;              /* SHM_SNAP_MAGIC */
    uint32_t version;            /* SHM_SNAP_VERSION */
    uint64_t gen;                /* generation number, 1.. */
    uint64_t size;               /* bytes in the whole segment */
    uint64_t loaded_at;          /* unix seconds */
    uint32_t source;             /* SHM_SOURCE_* bits */
    uint32_t pad0;
    struct shm_limits limits;
    struct shm_str config_path;
    struct shm_str self_signed_cn;
    uint32_t listeners_off, nlisteners;
    uint32_t trusted_off, ntrusted;
    uint32_t services_off, nservices;
    uint32_t backends_off, nbackends;
    uint32_t routes_off, nroutes;
    uint32_t certs_off, ncerts;  /* reserved for TLS: PEM pairs */
    uint32_t strings_off, strings_len;
    struct shm_ridx ridx;
    uint32_t reserved[32];
};

#define SHM_SOURCE_FILE  1u
#define SHM_SOURCE_REDIS 2u

/* ------------------------------------------------------------------------------------------
 * Runtime segment: mutable state that outlives workers and reloads. Created by the master before
 * the first fork (anonymous MAP_SHARED, so every child inherits it). Slots are keyed by stable ids
 * (service name; service name + backend address) that the master maps to slot indexes when it
 * publishes a generation; a slot keeps its counters for as long as some generation names it.
 * ------------------------------------------------------------------------------------------ */
#define SHM_RT_MAGIC        0x54525344u /* "DSRT" */
#define SHM_RT_VERSION      1u
#define SHM_RT_MAX_SERVICES 65536u
#define SHM_RT_MAX_BACKENDS 65536u

#define SHM_BE_UP       0u
#define SHM_BE_DOWN     1u
#define SHM_BE_DISABLED 2u

#define SHM_CIRCUIT_CLOSED   0u
#define SHM_CIRCUIT_OPEN     1u
#define SHM_CIRCUIT_HALFOPEN 2u

struct shm_rt_backend {
    uint64_t requests;           /* completed requests */
    uint64_t errors;             /* failed requests (connect, reset, timeout, bad response) */
    int64_t active;              /* connections currently carrying a request, all workers */
    uint32_t state;              /* SHM_BE_* */
    uint32_t circuit;            /* SHM_CIRCUIT_* */
    uint32_t consecutive_failures;
    uint32_t in_use;             /* 1 while some generation names this slot (master writes) */
    uint64_t circuit_opened_ms;
    uint64_t latency_sum_us;
    uint64_t reserved[8];
} __attribute__((aligned(64)));

struct shm_rt_service {
    uint64_t requests;
    uint64_t errors;
    uint64_t rr_cursor;          /* shared round-robin position */
    uint32_t in_use;
    uint32_t pad0;
    uint64_t latency_sum_us;
    uint64_t reserved[10];
} __attribute__((aligned(64)));

struct shm_rt {
    uint32_t magic;
    uint32_t version;
    uint32_t nservices_cap;
    uint32_t nbackends_cap;
    uint64_t reserved[7];
    struct shm_rt_service services[SHM_RT_MAX_SERVICES];
    struct shm_rt_backend backends[SHM_RT_MAX_BACKENDS];
};

/* ------------------------------------------------------------------------------------------
 * Control segment: the published generation and one slot per worker (heartbeat, pid, which
 * generations it still holds). Anonymous MAP_SHARED, created before the first fork.
 * ------------------------------------------------------------------------------------------ */
#define SHM_CTL_MAGIC   0x43545344u /* "DSTC" */
#define SHM_CTL_VERSION 1u
#define SHM_MAX_WORKERS 256u

struct shm_worker_slot {
    int32_t pid;                 /* written by the master at fork, 0 when empty */
    uint32_t restarts;           /* master writes */
    uint64_t started_ms;
    uint64_t heartbeat_ms;       /* worker writes each loop pass (monotonic ms) */
    uint64_t gen_current;        /* generation the worker serves new requests from */
    uint64_t gen_oldest;         /* oldest generation still referenced by in-flight requests */
    uint64_t connections;        /* open client connections */
    uint64_t requests;           /* requests handled */
    uint64_t reserved[1];
} __attribute__((aligned(64)));

struct shm_ctl {
    uint32_t magic;
    uint32_t version;
    uint64_t gen;                /* published generation: release store by master, acquire load */
    int32_t master_pid;
    uint32_t nworkers;
    uint64_t started_at;         /* unix seconds */
    uint64_t reload_failures;
    uint64_t reserved[11];
    struct shm_worker_slot workers[SHM_MAX_WORKERS];
};

_Static_assert(sizeof(struct shm_str) == 8, "shm_str layout");
_Static_assert(sizeof(struct shm_service) % 8 == 0, "shm_service alignment");
_Static_assert(sizeof(struct shm_backend) % 8 == 0, "shm_backend alignment");
_Static_assert(sizeof(struct shm_route) % 8 == 0, "shm_route alignment");
_Static_assert(sizeof(struct shm_listener) % 4 == 0, "shm_listener alignment");
_Static_assert(sizeof(struct shm_rt_backend) == 128, "shm_rt_backend is two cache lines");
_Static_assert(sizeof(struct shm_rt_service) == 128, "shm_rt_service is two cache lines");
_Static_assert(sizeof(struct shm_worker_slot) == 64, "worker slot is one cache line");

#endif
