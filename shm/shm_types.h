/* dispatcher: the ABI shared between the master, the workers and admin readers. No pointers and no
 * functions here: every reference is an offset or an index, every field fixed-width, padding
 * written down, and each block ends in a reserved tail so fields can be added without moving
 * others. Shared mutable fields are accessed with __atomic builtins only. */
#ifndef DSP_SHM_TYPES_H
#define DSP_SHM_TYPES_H

#include <stdint.h>

#include "shm/shm_rl.h"

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
    uint64_t max_body_bytes; /* 0 = unlimited */
    uint32_t header_timeout_ms;
    uint32_t idle_timeout_ms;
    uint32_t shutdown_timeout_ms;
    uint32_t tunnel_idle_timeout_ms;
    uint32_t min_body_rate;    /* request body bytes/s after a grace (wk_conn.c); 0 = off */
    uint32_t send_timeout_ms;  /* a client that drains nothing of its response for this long
                                  is closed */
    uint32_t h2_max_streams;   /* concurrent streams per HTTP/2 client connection */
    uint32_t h2_stream_window; /* HTTP/2 flow-control window per stream: what the worker buffers
                                  per stream in each direction */
    uint32_t reserved[4];
};

struct shm_listener {
    uint16_t family;
    uint16_t port;
    uint8_t ip[16];
    uint8_t tls;
    uint8_t proxy_protocol;
    uint8_t http2; /* HTTP/2 offered to clients */
    uint8_t pad[1];
    struct shm_str address;
    struct shm_str client_ca_pem; /* TLS: CAs that client certificates must chain to; "": none */
    uint32_t client_verify;       /* SHM_CLIENT_VERIFY_* (with client_ca_pem) */
    struct shm_str health_uri;    /* "" = none: else answered like admin GET /health */
};

#define SHM_CLIENT_VERIFY_OFF      0u
#define SHM_CLIENT_VERIFY_OPTIONAL 1u /* a certificate is asked for; one presented must verify */
#define SHM_CLIENT_VERIFY_REQUIRED 2u /* no valid certificate, no handshake */

struct shm_cidr {
    uint8_t family; /* AF_INET / AF_INET6 */
    uint8_t prefix;
    uint8_t addr[16];
    uint8_t pad[2];
};

#define SHM_BALANCE_RR        0u
#define SHM_BALANCE_LEASTCONN 1u
#define SHM_BALANCE_IPHASH    2u

struct shm_service {
    struct shm_str name;
    uint32_t backends_first; /* index into the backend table */
    uint32_t nbackends;
    uint32_t balance; /* SHM_BALANCE_* */
    uint32_t rt_slot; /* index into shm_rt.services, assigned at publish */
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
    /* passive health (rules in shm/shm_lb.h) */
    uint32_t passive_failures;     /* consecutive connect failures/resets that eject, >= 1 */
    uint32_t max_ejection_percent; /* at most this share of the backends ejected at once */
    uint32_t nroutes;              /* routes pointing at this service (for 404 hints) */
    uint32_t source;               /* SHM_SOURCE_FILE or SHM_SOURCE_REDIS: where it was defined */
    uint32_t tls;                  /* SHM_SVC_TLS_* bits: TLS to the backends */
    struct shm_str tls_sni;        /* server name sent and verified; "": none, the IP is verified */
    struct shm_str tls_ca_pem;     /* CA bundle; "" = the system store */
    struct shm_str tls_client_cert_pem; /* mTLS: the chain presented to backends; "" = none */
    struct shm_str tls_client_key_pem;  /* its key, PKCS#8 (the segment is mode 0600) */
    uint32_t stream_idle_timeout_ms;    /* gap allowed inside a response body once its head is
                                           relayed (the config's default: response_timeout_ms) */
    uint32_t protocol;                  /* SHM_PROTO_*: how the backends are spoken to */
    uint32_t reserved_proto;            /* (alignment) */
};

#define SHM_PROTO_HTTP1 0u /* HTTP/1.1 with keep-alive pools (default) */
#define SHM_PROTO_H2    1u /* HTTP/2: prior knowledge, or ALPN h2 with tls */
#define SHM_PROTO_GRPC  2u /* HTTP/2, errors the dispatcher produces are gRPC answers */

#define SHM_SVC_TLS_ON     1u /* connect to the backends with TLS */
#define SHM_SVC_TLS_VERIFY 2u /* verify their certificate chain and name */

struct shm_backend {
    struct shm_str address; /* "127.0.0.1:9101" */
    uint32_t service;       /* index into the service table */
    uint32_t weight;
    uint32_t rt_slot; /* index into shm_rt.backends, assigned at publish */
    uint16_t family;  /* AF_INET / AF_INET6 */
    uint16_t port;    /* host byte order */
    uint8_t ip[16];   /* network byte order; IPv4 in the first 4 bytes */
    uint32_t reserved[4];
};

#define SHM_HOST_ANY      0u /* "*" */
#define SHM_HOST_WILDCARD 1u /* "*.suffix" */
#define SHM_HOST_EXACT    2u

struct shm_route {
    struct shm_str host; /* as configured, lower case */
    struct shm_str path; /* prefix, default "/" */
    uint64_t methods;    /* bit (1 << enum http_method); 0 = all */
    int32_t priority;
    uint32_t service;     /* index into the service table (a split: its first entry's) */
    uint32_t split_first; /* a weighted split: its first entry in the split table */
    uint16_t nsplit;      /* its entries; 0 = no split, the request goes to <service> */
    uint16_t split_flags; /* SHM_SPLIT_* */
    uint32_t order;       /* position in the config: the last tie-breaker */
    uint32_t host_kind;   /* SHM_HOST_* */
    uint32_t source;      /* SHM_SOURCE_FILE or SHM_SOURCE_REDIS: where it was defined */
    uint32_t mw_list;     /* its middlewares (shm/shm_mw.h): offset in the region, 0 = none */
};

#define SHM_SPLIT_STICKY 1u          /* the choice is kept for a client by the dsp_split cookie */
#define SHM_SPLIT_COOKIE "dsp_split" /* its name; the value names the service */
#define SHM_SPLIT_COOKIE_ATTRS                                                                     \
    "; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax" /* what the Set-Cookie adds */

/* One service of a route's weighted split (split = ( { service; weight; }, ... )). */
struct shm_split {
    uint32_t service;      /* index into the service table */
    uint32_t weight;       /* 0 = takes no new clients */
    struct shm_str cookie; /* "dsp_split=NAME; Path=/; ..." as set on a response (sticky) */
};

/* The route index (built by master/ms_compile.c, read by shm/shm_route.c). Opaque to everyone
 * else; its tables live inside the snapshot at the offsets below. */
struct shm_ridx {
    uint32_t off[12];   /* table offsets, meaning defined in shm/shm_route.c */
    uint32_t count[12]; /* table element counts */
};

struct shm_snap_hdr {
    uint32_t magic;     /* SHM_SNAP_MAGIC */
    uint32_t version;   /* SHM_SNAP_VERSION */
    uint64_t gen;       /* generation number, 1.. */
    uint64_t size;      /* bytes in the whole segment */
    uint64_t loaded_at; /* unix seconds */
    uint32_t source;    /* SHM_SOURCE_* bits: REDIS when the namespace was merged in */
    uint32_t pad0;
    struct shm_limits limits;
    struct shm_str config_path;
    struct shm_str self_signed_cn;
    uint32_t listeners_off, nlisteners;
    uint32_t trusted_off, ntrusted;
    uint32_t services_off, nservices;
    uint32_t backends_off, nbackends;
    uint32_t routes_off, nroutes;
    uint32_t certs_off, ncerts; /* struct shm_cert table */
    uint32_t strings_off, strings_len;
    struct shm_ridx ridx;
    struct shm_str access_log; /* absolute path; len 0 = access logging off */
    uint32_t access_format;    /* SHM_ACCESS_* */
    uint32_t pad1;
    uint32_t cert_names_off; /* struct shm_str table: the host names of the certificates */
    uint32_t ncert_names;
    uint32_t tls_min_version; /* 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3) */
    uint32_t pad2;
    uint32_t errors_flags;    /* SHM_ERRORS_*: what generated error bodies show */
    uint32_t error_pages_off; /* struct shm_error_page table (errors.pages) */
    uint32_t nerror_pages;
    uint32_t workers; /* the configured worker count (what `-t` compares with) */
    uint32_t mw_off;  /* the middleware region (shm/shm_mw.h); mw_len 0 = no middlewares */
    uint32_t mw_len;
    uint32_t splits_off; /* struct shm_split table (routes' weighted splits) */
    uint32_t nsplits;
    uint32_t reserved[16];
};

#define SHM_ERRORS_EXPOSE_BACKEND 1u /* 502/503/504 messages name the backend's address */
#define SHM_ERRORS_LIST_SERVICES  2u /* the no-route 404 lists available_services */

/* An operator's page for a generated status, served to clients that prefer text/html. */
struct shm_error_page {
    uint32_t status; /* 400..599, at most one page each */
    uint32_t pad;
    struct shm_str body; /* the file's bytes (no NUL among them) */
};

/* A certificate to serve, with the names SNI selects it by (exact names first, then "*.parent"
 * wildcards; a wildcard covers one label). Configured certificates come in config order, then the
 * self-signed one the master generated, which is also the default for unknown or absent SNI. */
#define SHM_CERT_F_DEFAULT     1u /* served when SNI names no certificate */
#define SHM_CERT_F_SELF_SIGNED 2u /* generated by the master at start-up, in memory only */
#define SHM_CERT_F_EXPIRED     4u /* not_after had passed when the config was loaded */

struct shm_cert {
    struct shm_str cert_pem; /* leaf then chain, PEM */
    struct shm_str key_pem;  /* PKCS#8 PEM. The segment is mode 0600, owned by the workers */
    struct shm_str subject;  /* RFC 2253 one-liner */
    struct shm_str path;     /* certificate file; "" when generated or not from a file */
    uint32_t names_first;    /* first of its names in the cert name table */
    uint32_t nnames;
    uint64_t not_after;  /* unix seconds */
    uint32_t flags;      /* SHM_CERT_F_* */
    uint32_t line;       /* config line of the entry; 0 when generated */
    uint32_t source;     /* SHM_SOURCE_FILE or SHM_SOURCE_REDIS (cert:{id}) */
    struct shm_str ocsp; /* DER OCSP response stapled as is (binary, <len> bytes); len 0: none */
    uint32_t reserved[1];
};

#define SHM_ACCESS_JSON     0u
#define SHM_ACCESS_COMBINED 1u

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
    uint64_t requests; /* completed requests */
    uint64_t errors;   /* failed requests (connect, reset, timeout, bad response) */
    int64_t active;    /* connections currently carrying a request, all workers */
    uint32_t state;    /* SHM_BE_* */
    uint32_t circuit;  /* SHM_CIRCUIT_* */
    uint32_t consecutive_failures;
    uint32_t in_use; /* 1 while some generation names this slot (master writes) */
    uint64_t circuit_opened_ms;
    uint64_t free0; /* unused (latency is in the stats cells): kept so that the
                       fields after it do not move */
    /* Balancing, health and circuit breaker (rules in shm/shm_lb.h). Times are CLOCK_MONOTONIC
     * ms, one clock for every process of the host. */
    uint64_t down_since_ms;       /* when it was last marked down; 0 = never (health.start down) */
    uint64_t probe_until_ms;      /* trial-request lease: while > now, the one probe request of a
                                     half-open circuit or of a passive-down retry is in flight */
    uint64_t health_checked_ms;   /* end of the last active check (master writes) */
    uint32_t health_successes;    /* consecutive passed active checks (master; a passive down
                                     zeroes it so that `rise` fresh successes are needed) */
    uint32_t health_failures;     /* consecutive failed active checks (master writes) */
    uint32_t health_status;       /* last check: HTTP status, 0 = no response */
    uint32_t ejected;             /* 1 when passive health took it out; counts only while DOWN */
    uint32_t passive_failures;    /* consecutive connect failures and resets (passive health) */
    uint32_t circuit_forced;      /* 1: circuit opened by hand (`trip circuit`): no request, no
                                     probe, until `reset circuit` clears it */
    uint64_t tls_verify_failures; /* TLS handshakes that failed verifying its certificate */
    uint32_t stats_used;          /* set by the first shm_stats_record() into this slot */
    uint32_t pad_stats;
} __attribute__((aligned(64)));

struct shm_rt_service {
    uint64_t free0; /* unused (request counts are in the stats cells): kept so that
                       the fields after it do not move */
    uint64_t errors;
    uint64_t rr_cursor; /* shared round-robin position */
    uint32_t in_use;
    uint32_t stats_used;     /* set by the first shm_stats_record() into this slot */
    uint64_t free1;          /* unused (latency is in the stats cells): kept likewise */
    uint64_t eject_lease_ms; /* passive ejections of this service are decided one at a time:
                                while > now some worker is deciding (expires by itself) */
    uint64_t reserved[9];
} __attribute__((aligned(64)));

/* Per middleware counters (keyed by its name), added to by workers with relaxed atomics. */
#define SHM_RT_MAX_MIDDLEWARES 4096u

struct shm_rt_mw {
    uint64_t answered; /* requests it answered itself */
    uint64_t passed;   /* requests it let through */
    uint32_t in_use;   /* 1 while some generation names this slot (master writes) */
    uint32_t pad;
    uint64_t type_counters[4]; /* for the type's own use (what its metrics say) */
    uint64_t reserved[1];
} __attribute__((aligned(64)));

/* Request statistics (written by workers, summed by admin readers; see shm/shm_stats.h). Each
 * worker records into the shard of its slot (slot % SHM_STATS_SHARDS) with relaxed atomic adds:
 * no lock, no syscall, and no cache line shared with another worker while there are at most
 * SHM_STATS_SHARDS workers (beyond that two workers share a shard, still correct). Readers only
 * visit the shards of existing worker slots, because reading an untouched page of the mapping
 * commits it. Runtime slots at or above SHM_STATS_MAX_* are not recorded: 2 KiB per shard per
 * entry would make the (unreserved, but virtual) mapping huge. */
#define SHM_STATS_SHARDS       16u
#define SHM_STATS_MAX_SERVICES 16384u
#define SHM_STATS_MAX_BACKENDS 16384u
#define SHM_HIST_BUCKETS       160u /* log-linear ms buckets: 0..7 exact, then 8 per octave */
#define SHM_PROM_BUCKETS       12u  /* Prometheus default buckets 5 ms .. 10 s, then +Inf */
#define SHM_RATE_SLOTS         64u  /* per-second ring: at least one minute of history */

struct shm_stats_cell {
    uint64_t count;                  /* requests recorded */
    uint64_t sum_ms;                 /* sum of their durations */
    uint64_t classes[6];             /* by status: [0] none/other, [1..5] 1xx..5xx */
    uint64_t prom[SHM_PROM_BUCKETS]; /* per Prometheus bucket, not cumulative */
    uint64_t hist[SHM_HIST_BUCKETS]; /* latency histogram, see shm_stats_bucket() */
    uint64_t rate[SHM_RATE_SLOTS];   /* [sec % 64] = (sec + 1) << 32 | requests in that second */
    uint64_t reserved[12];
} __attribute__((aligned(64)));

struct shm_rt {
    uint32_t magic;
    uint32_t version;
    uint64_t reserved[8]; /* the tables' sizes are SHM_RT_MAX_SERVICES/BACKENDS */
    struct shm_rt_service services[SHM_RT_MAX_SERVICES];
    struct shm_rt_backend backends[SHM_RT_MAX_BACKENDS];
    /* Added at the end (the segment is created by the master at start, so it can grow). */
    struct shm_stats_cell svc_stats[SHM_STATS_SHARDS][SHM_STATS_MAX_SERVICES];
    struct shm_stats_cell be_stats[SHM_STATS_SHARDS][SHM_STATS_MAX_BACKENDS];
    struct shm_rt_mw mws[SHM_RT_MAX_MIDDLEWARES];
    /* The rate limiter's buckets (shm/shm_rl.h): after the rest, touched only where used. */
    struct shm_rl rl;
};

/* ------------------------------------------------------------------------------------------
 * Control segment: the published generation and one slot per worker (heartbeat, pid, which
 * generations it still holds). Anonymous MAP_SHARED, created before the first fork.
 * ------------------------------------------------------------------------------------------ */
#define SHM_CTL_MAGIC   0x43545344u /* "DSTC" */
#define SHM_CTL_VERSION 1u
#define SHM_MAX_WORKERS 256u

struct shm_worker_slot {
    int32_t pid;       /* written by the master at fork, 0 when empty */
    uint32_t restarts; /* master writes */
    uint64_t started_ms;
    uint64_t heartbeat_ms; /* worker writes each loop pass (monotonic ms) */
    uint64_t gen_current;  /* generation the worker serves new requests from */
    uint64_t gen_oldest;   /* oldest generation still referenced by in-flight requests */
    uint64_t connections;  /* open client connections */
    uint64_t requests;     /* requests handled */
    uint64_t reserved[1];
} __attribute__((aligned(64)));

/* Session ticket keys, shared by all workers so that a ticket issued by one is accepted by every
 * other. The master is the only writer: it fills a slot and moves `current` under a seqlock (seq
 * odd while writing; readers copy, then retry if seq moved). A key encrypts until enc_until and is
 * accepted until dec_until (monotonic seconds, CLOCK_MONOTONIC is system-wide); the master zeroes
 * a slot once dec_until has passed. Words only, so readers can copy with relaxed atomic loads. */
#define SHM_TKEY_SLOTS 4u

struct shm_tkey {
    uint64_t name[2]; /* 16-byte key name carried in the ticket */
    uint64_t aes[4];  /* AES-256-CBC key */
    uint64_t hmac[4]; /* HMAC-SHA256 key */
    uint64_t enc_until;
    uint64_t dec_until; /* 0 = empty slot */
};

struct shm_tkeys {
    uint64_t seq;
    uint64_t current; /* slot that encrypts new tickets */
    struct shm_tkey keys[SHM_TKEY_SLOTS];
    uint64_t reserved[4];
};

/* shm_ctl.health (0 until the master's first tick). */
#define SHM_HEALTH_STARTING 0u
#define SHM_HEALTH_SERVING  1u
#define SHM_HEALTH_DEGRADED 2u
#define SHM_HEALTH_DRAINING 3u

/* Why a response ended before its end (the access log's "reason"; shm_ctl.responses_cut counts
 * reasons 1..SHM_CUT_COUNTED for responses whose head had been relayed). */
#define SHM_CUT_NONE            0u
#define SHM_CUT_STREAM_IDLE     1u /* no body byte from the backend for stream_idle_timeout_ms */
#define SHM_CUT_SEND_TIMEOUT    2u /* the client read nothing for limits.send_timeout_ms */
#define SHM_CUT_CLIENT_CLOSED   3u /* the client closed or reset its connection */
#define SHM_CUT_BACKEND_CLOSED  4u /* the backend closed or reset mid-body */
#define SHM_CUT_BACKEND_INVALID 5u /* the backend's body framing went wrong mid-body */
#define SHM_CUT_COUNTED         5u
#define SHM_CUT_TUNNEL_IDLE     6u /* a tunnel idle for limits.tunnel_idle_timeout_ms */
#define SHM_CUT_INTERNAL        7u /* out of memory */
#define SHM_CUT_REQUEST_ERROR                                                                      \
    8u /* the request went wrong (body too slow, too large, bad                                    \
          chunk) after the response had started */
#define SHM_CUT_SHUTDOWN                                                                           \
    9u /* still open when the graceful stop's shutdown_timeout_ms ran                              \
          out */

#define SHM_CUT_DEADLINE 10u /* a gRPC call's deadline (grpc-timeout) passed mid-response */

/* shm_ctl.tls_handshakes: handshakes on TLS listeners by outcome. */
#define SHM_TLS_HS_FULL    0u
#define SHM_TLS_HS_RESUMED 1u
#define SHM_TLS_HS_FAILED  2u

/* shm_ctl.h2[slot].abuse: HTTP/2 client misbehaviour the worker stopped, by kind. Floods and
 * bombs count once per connection (it is sent GOAWAY ENHANCE_YOUR_CALM and closed); refused
 * streams and zero-window stalls count per stream (it is reset). */
#define SHM_H2_RAPID_RESET    0u /* streams reset (by the client or for its errors) too fast */
#define SHM_H2_CONTINUATION   1u /* more CONTINUATION frames in a header block than allowed */
#define SHM_H2_HPACK_BOMB     2u /* a header block decompressing far beyond max_header_bytes */
#define SHM_H2_SETTINGS_FLOOD 3u
#define SHM_H2_PING_FLOOD     4u
#define SHM_H2_EMPTY_DATA     5u /* zero-length DATA frames without END_STREAM */
#define SHM_H2_PRIORITY_FLOOD 6u
#define SHM_H2_ACK_FLOOD      7u /* frames to acknowledge piling up unread (nghttp2's limit) */
#define SHM_H2_ZERO_WINDOW    8u /* a response stalled on a closed window for send_timeout_ms */
#define SHM_H2_REFUSED_STREAM 9u /* a stream beyond SETTINGS_MAX_CONCURRENT_STREAMS */
#define SHM_H2_ABUSE_KINDS    10u

/* The metrics' name of a SHM_H2_* kind. */
static inline const char *shm_h2_abuse_name(unsigned kind)
{
    static const char *const names[SHM_H2_ABUSE_KINDS] = {"rapid_reset",    "continuation_flood",
                                                          "hpack_bomb",     "settings_flood",
                                                          "ping_flood",     "empty_data",
                                                          "priority_flood", "ack_flood",
                                                          "zero_window",    "refused_stream"};
    return kind < SHM_H2_ABUSE_KINDS ? names[kind] : "unknown";
}

/* Per worker slot HTTP/2 counters (one worker writes, relaxed atomics; readers sum). */
struct shm_worker_h2 {
    uint64_t requests; /* requests that came over HTTP/2 (also in shm_worker_slot.requests) */
    uint64_t abuse[SHM_H2_ABUSE_KINDS];
    uint64_t reserved[5];
} __attribute__((aligned(64)));

struct shm_ctl {
    uint32_t magic;
    uint32_t version;
    uint64_t gen; /* published generation: release store by master, acquire load */
    int32_t master_pid;
    uint32_t nworkers;
    uint64_t started_at; /* unix seconds */
    uint64_t reload_failures;
    uint64_t tls_handshakes[3]; /* SHM_TLS_HS_*: client TLS handshakes, added to by workers */
    uint64_t listeners_seq;     /* master bumps (release) once it has sent listener changes to
                                   the workers' control channels: a worker reads them before
                                   its next accept */
    uint32_t health;            /* SHM_HEALTH_*: what admin GET /health would say, published by
                                   the master each tick; workers answer health_uri from it */
    uint32_t pad0;
    uint64_t responses_cut[SHM_CUT_COUNTED]; /* started responses cut, by SHM_CUT_* reason - 1
                                                (workers add) */
    uint64_t reserved[1];
    struct shm_worker_slot workers[SHM_MAX_WORKERS];
    /* Added at the end (anonymous segment created by the master at start, so it can grow). */
    struct shm_tkeys tkeys;
    struct shm_worker_h2 h2[SHM_MAX_WORKERS];
};

_Static_assert(sizeof(struct shm_str) == 8, "shm_str layout");
_Static_assert(sizeof(struct shm_service) % 8 == 0, "shm_service alignment");
_Static_assert(sizeof(struct shm_backend) % 8 == 0, "shm_backend alignment");
_Static_assert(sizeof(struct shm_route) % 8 == 0, "shm_route alignment");
_Static_assert(sizeof(struct shm_split) % 8 == 0, "shm_split alignment");
_Static_assert(sizeof(struct shm_cert) % 8 == 0, "shm_cert alignment");
_Static_assert(sizeof(struct shm_error_page) % 8 == 0, "shm_error_page alignment");
_Static_assert(sizeof(struct shm_tkey) == 96, "ticket key is 12 words");
_Static_assert(sizeof(struct shm_listener) % 4 == 0, "shm_listener alignment");
_Static_assert(sizeof(struct shm_rt_backend) == 128, "shm_rt_backend is two cache lines");
_Static_assert(sizeof(struct shm_rt_mw) == 64, "shm_rt_mw is one cache line");
_Static_assert(sizeof(struct shm_rt_service) == 128, "shm_rt_service is two cache lines");
_Static_assert(sizeof(struct shm_worker_slot) == 64, "worker slot is one cache line");
_Static_assert(sizeof(struct shm_worker_h2) == 128, "worker h2 counters are two cache lines");
_Static_assert(sizeof(struct shm_stats_cell) == 2048, "stats cell is 32 cache lines");
_Static_assert(sizeof(struct shm_snap_hdr) % 8 == 0, "snapshot header alignment");

#endif
