/* dispatcher: fleet configuration from Redis (SPEC "Redis"). The master reads the namespace
 * `dispatcher:{environment}:` at start, after every message on `dispatcher:{environment}:events`
 * and every redis.resync_ms, merges it with the file config (master/ms_redis_ns.h) and publishes
 * a generation when it changed. It runs inside the master's loop on hiredis's async API, with
 * its own connect/command timeouts, and never blocks that loop for longer than a connect; workers
 * never talk to Redis. While Redis is unreachable the last good data keeps serving. */
#ifndef DSP_MS_REDIS_H
#define DSP_MS_REDIS_H

#include <stddef.h>
#include <stdint.h>

struct adm_fleet;
struct ms_config;

/* Start following Redis (master, once, after the shm segments exist and before the first
 * ms_publish()). When ms.cfg enables Redis, one bounded synchronous read of the namespace (at
 * most redis.connect_timeout_ms + redis.command_timeout_ms) is merged into ms.cfg, so that the
 * first generation already serves it; when Redis is unreachable or its data is invalid the
 * master starts from the file alone and keeps retrying in the background. Registers the loop
 * tick that does the rest. Returns 0 (Redis trouble is not a start-up failure). */
int ms_redis_start(void);

/* Merge the last good Redis data into <ncfg>, a freshly loaded file config that a reload is about
 * to publish (called by ms_reload). Nothing is merged when Redis is disabled in <ncfg>, or when
 * its environment differs from the data's (the new namespace is read right after the reload).
 * Returns 0, or -1 when the Redis data does not validate against the new file: <*errs> (heap)
 * then holds one "redis KEY: message" line per problem and the reload must be refused. */
int ms_redis_merge_into(struct ms_config *ncfg, char **errs);

/* For other master modules (the rate limiter's fleet reconciliation, master/ms_rl.c): is the
 * command connection up, and send one command on it. <fn> gets the reply (NULL when the link
 * dropped before it came; it is called exactly once). Returns 0 when sent, -1 when the link is
 * not up or the command could not be queued (<fn> is then never called). */
struct redisAsyncContext;
typedef void ms_redis_reply_fn(struct redisAsyncContext *ac, void *reply, void *priv);
int ms_redis_up(void);
int ms_redis_command(ms_redis_reply_fn *fn, void *priv, int argc, const char **argv,
                     const size_t *argvlen);

/* Close the connections and free what the module holds (master exit). */
void ms_redis_stop(void);

/* For `show health` and the admin API (master only; strings are static, valid until the next
 * loop pass):
 *  - ms_redis_state(): "disabled", "connecting", "connected", or "error: <why>" (the last
 *    failure while it is not connected: refused, timed out, AUTH failed, ...).
 *  - ms_redis_in_generation(): 1 when the current config (ms.cfg, hence the published
 *    generation; also SHM_SOURCE_REDIS in the snapshot header) includes the Redis namespace,
 *    i.e. the config source is "file+redis"; 0 for "file".
 *  - ms_redis_synced_at(): unix seconds of the last complete read of the namespace that was
 *    valid (0 = never).
 *  - ms_redis_rejected(): while the namespace in Redis is not served, why and what is served
 *    instead: it is invalid ("redis dispatcher:production:route:api: unknown service 'x';
 *    serving the last good Redis data (version 7)"), or has no `version` key (a Redis that
 *    restarted without its data); else NULL.
 *  - ms_redis_version(): 1 and the `version` of the Redis data in the current config, or 0.
 *  - ms_redis_namespace(): "dispatcher:{environment}:" being followed, or NULL when disabled. */
const char *ms_redis_state(void);
int ms_redis_in_generation(void);
uint64_t ms_redis_synced_at(void);
const char *ms_redis_rejected(void);
int ms_redis_version(long long *version);
const char *ms_redis_namespace(void);
/* With Sentinel, the master followed: "NAME at HOST:PORT" (as the sentinels last named it) or
 * "NAME (not known yet)"; NULL without Sentinel. */
const char *ms_redis_master(void);

/* The fleet of this environment as last read from Redis (the node:{node_name} reports, see
 * SPEC "Redis"), for `show fleet`; NULL when Redis is disabled. Valid until the next call or the
 * next loop pass. */
const struct adm_fleet *ms_redis_fleet(void);

/* How the last reload of the file went, for this node's report: NULL when it was applied, else
 * the error text (its first line is reported, with status "rejected", until a reload succeeds). */
void ms_redis_file_outcome(const char *errs);

#endif
