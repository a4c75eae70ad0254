/* dispatcher: the rate_limit middleware on the master's side: its configuration (the type's
 * parse and compile functions), the bucket table's set-up, and the fleet scope's reconciliation
 * with Redis (see the top of ms_rl.c). Master only. */
#ifndef DSP_MS_RL_H
#define DSP_MS_RL_H

#include <stddef.h>
#include <stdint.h>

/* A middleware's stable id in the bucket table: a hash of its name (the worker computes the
 * same, so buckets follow a middleware across reloads). */
uint64_t ms_rl_id(const char *name, size_t len);

/* Size the bucket table (limits.rate_limit_keys of the first configuration), draw its seed and
 * register the reconciliation tick. Master, after the runtime segment exists and before the
 * first fork. Returns 0 or -1 (logged). */
int ms_rl_start(void);

#endif
