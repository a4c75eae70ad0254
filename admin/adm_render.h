/* dispatcher: the admin answers as JSON (show health/instances/routes/workers/stats/certs) and
 * the Prometheus text exposition, rendered from a snapshot plus the runtime and control
 * segments. Pure functions of an adm_view, so the unit tests can feed them made-up state. */
#ifndef DSP_ADM_RENDER_H
#define DSP_ADM_RENDER_H

#include <stddef.h>
#include <stdint.h>

#include "shm/shm_types.h"

struct adm_buf;

/* One dispatcher of the fleet as its node:{node_name} hash in Redis says (show fleet). Strings
 * are as read (any bytes: rendered escaped; "" when missing); numbers are -1 when missing or not
 * a plain integer. */
struct adm_fleet_node {
    const char *name;
    const char *status; /* "ok" or "rejected" as written */
    const char *error;
    const char *source_digest;
    long long version;    /* the Redis namespace version it serves, -1: none */
    long long generation; /* its own generation counter (not comparable across nodes) */
    long long applied_at; /* unix seconds its generation was published */
    long long updated_at; /* unix seconds of its last report (refreshed every 20 s) */
    long long pid;
};

/* The fleet of this dispatcher's Redis environment, as last read from Redis. */
struct adm_fleet {
    const char *environment;
    const char *self;  /* this dispatcher's node_name */
    uint64_t read_at;  /* unix seconds of the last complete read, 0 = not read yet */
    long long version; /* the namespace's `version` key at that read, -1 = none */
    const struct adm_fleet_node *nodes; /* sorted by name */
    size_t n;
};

/* A node that has not reported for this long is flagged "silent" (its key expires at 60 s). */
#define ADM_FLEET_SILENT_S 45

/* Why <nd> is flagged, comma-separated into <buf> ("" when it is fine): "rejected" (its status is
 * not ok: it refused the namespace in Redis), "behind" (it serves an older version than the
 * namespace's), "silent" (no report for ADM_FLEET_SILENT_S). Returns the number of flags. */
int adm_fleet_flags(const struct adm_fleet *f, const struct adm_fleet_node *nd, uint64_t now_s,
                    char *buf, size_t n);

/* Everything an answer is computed from. The master fills it for each request. */
struct adm_view {
    const struct shm_snap_hdr *snap; /* current generation */
    const struct shm_rt *rt;
    const struct shm_ctl *ctl;
    unsigned nworkers;                       /* worker slots in use (configured, or retiring) */
    unsigned configured;                     /* the configured count (0: nworkers) */
    unsigned slots_ever;                     /* slots ever used: per-slot counters (0: nworkers) */
    unsigned char retiring[SHM_MAX_WORKERS]; /* 1: not a configured slot (a smaller `workers`
                                                left it: draining, or gone) */
    uint64_t now_ms;                         /* monotonic (same clock as the workers' stats) */
    uint64_t now_s;                          /* wall clock */
    uint64_t started_at;                     /* wall clock, master start */
    uint64_t loaded_at;                      /* wall clock, current generation */
    double memory_mb;                        /* RSS of the master and its workers; < 0 = unknown */
    const char *redis_state;   /* "connected", "error: ...", ...; NULL without Redis */
    const char *redis_problem; /* why the namespace in Redis is not served, or NULL */
    const char *redis_master;  /* with Sentinel: "NAME at HOST:PORT" followed, or NULL */
    int redis_has_version;     /* the config holds Redis data of version redis_version */
    long long redis_version;
    /* Appends extra members (",\"key\":...") to service <svc> of `show instances` (the master's
     * backend-name resolution), or NULL. */
    void (*service_extra)(struct adm_buf *b, uint32_t svc, const void *arg);
    /* Appends more Prometheus families after the built-in ones, or NULL. */
    void (*metrics_extra)(struct adm_buf *b, const void *arg);
    const void *extra_arg;
    const struct adm_fleet *fleet; /* NULL without Redis */
};

/* Each appends one JSON object, starting {"ok":true, ... and without a newline. */
void adm_render_health(struct adm_buf *b, const struct adm_view *v);
void adm_render_instances(struct adm_buf *b, const struct adm_view *v);
void adm_render_routes(struct adm_buf *b, const struct adm_view *v);
void adm_render_workers(struct adm_buf *b, const struct adm_view *v);
void adm_render_stats(struct adm_buf *b, const struct adm_view *v);
void adm_render_certs(struct adm_buf *b, const struct adm_view *v);
/* {"ok":true,"environment":..,"node":..,"redis":..,"version":..,"read_at":..,"flagged":N,
 *  "nodes":[{"name","status","flags","version","generation","applied_at","source_digest",
 *  "error","updated_at","pid","self"}]}, or an error without Redis. */
void adm_render_fleet(struct adm_buf *b, const struct adm_view *v);
/* Prometheus text format 0.0.4. */
void adm_render_metrics(struct adm_buf *b, const struct adm_view *v);

/* {"ok":false,"error":"<msg>"} */
void adm_render_error(struct adm_buf *b, const char *msg);

/* Is the dispatcher healthy (every worker alive and on the current generation, every service
 * with backends has one up)? When not, the first reason is written to <why>. */
int adm_healthy(const struct adm_view *v, char *why, size_t whylen);

#endif
