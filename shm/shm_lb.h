/* dispatcher: the pure parts of balancing, health and the circuit breaker: the schedules and
 * tables derived from a service's backends, and the rules that move a backend's shared runtime
 * state. Nothing here reads a clock or does I/O (callers pass "now"), so the unit tests drive it
 * with a fake clock; every access to a runtime slot is atomic, so any number of processes may
 * apply these rules to the same slot at once. */
#ifndef DSP_SHM_LB_H
#define DSP_SHM_LB_H

#include <stddef.h>
#include <stdint.h>

#include "shm/shm_types.h"

/* ---- smooth weighted round-robin --------------------------------------------------------------
 * Workers do not share current weights (that would need a lock that a killed worker could hold
 * forever). Instead every worker derives the same schedule from a generation: one period of
 * nginx's smooth weighted round-robin sequence. A shared atomic ticket counter per service
 * (shm_rt_service.rr_cursor) indexes it, so consecutive requests, whichever worker takes them,
 * walk the one smooth sequence: weights {5,1,1} give a a b a c a a, never a burst of five. */

/* Longest schedule: weights are reduced by their gcd, and scaled down proportionally (each kept
 * >= 1) when their sum is still longer than this. */
#define SHM_LB_SWRR_MAX 65536u

/* Reduce the weights <w>[0, n) (0 counts as 1) into <rw>[0, n). Returns the schedule length, the
 * sum of <rw> (at least n). */
uint32_t shm_lb_swrr_weights(const uint32_t *w, uint32_t n, uint32_t *rw);

/* Fill <sched>[0, len) with one period of the smooth weighted round-robin sequence for the
 * reduced weights <rw>[0, n), <len> being their sum: sched[t] is the backend position chosen at
 * step t, exactly as nginx's algorithm chooses (ties to the lower position). Costs O(len * number
 * of distinct weights). Returns 0, or -1 when out of memory. */
int shm_lb_swrr_build(const uint32_t *rw, uint32_t n, uint32_t *sched, uint32_t len);

/* ---- consistent hashing (Maglev) --------------------------------------------------------------
 * A lookup table of m (prime) slots filled by the backends taking turns along per-backend
 * permutations seeded by a hash of their address, so the table depends only on the set of
 * backends (and weights), not on their order or on the generation: a reload that keeps them keeps
 * every client where it was, and adding or removing one of N moves about 1/N of clients. */

/* 64-bit hash of <len> bytes with <seed> (FNV-1a, then a murmur3 finalizer for avalanche). */
uint64_t shm_lb_hash(const void *p, size_t len, uint64_t seed);
/* Hash of a client address: <family> AF_INET (4 bytes of <ip>) or AF_INET6 (16 bytes). */
uint64_t shm_lb_client_hash(int family, const uint8_t *ip);
/* Table size for <n> backends: a prime of at least 100 slots per backend, from a short list
 * (65521 up to 655 backends) because changing it remaps nearly every client. */
uint32_t shm_lb_maglev_size(uint32_t n);
/* Fill <table>[0, m) with backend positions. <keys>[i] is shm_lb_hash() of backend i's address,
 * <w>[i] its weight (0 counts as 1): a backend of weight w takes w slots for every wmax the
 * heaviest takes. Returns 0, or -1 when out of memory. */
int shm_lb_maglev_build(const uint64_t *keys, const uint32_t *w, uint32_t n, uint32_t *table,
                        uint32_t m);

/* ---- backend state ------------------------------------------------------------------------------
 * Two independent machines per backend, both in struct shm_rt_backend:
 *
 *   state:    UP --`fall` failed checks--> DOWN
 *             UP --passive ejection (below), if the service's cap allows--> DOWN (ejected)
 *             DOWN --`rise` passed checks (1 if never marked down: health.start = "down")--> UP
 *             DOWN --(no health block) retry_ms after down_since, one trial request answers--> UP
 *             any --disable--> DISABLED --enable--> UP          (health never leaves DISABLED)
 *
 *   circuit:  CLOSED --`failures` consecutive failed requests--> OPEN
 *             OPEN --open_ms elapsed, one request wins the probe lease--> HALFOPEN
 *             HALFOPEN --the probe succeeds--> CLOSED        HALFOPEN --it fails--> OPEN (again)
 *             any --`trip circuit`--> forced open (circuit_forced: no request and no probe,
 *             with or without a circuit_breaker block) --`reset circuit`--> CLOSED
 *
 * Passive ejection: `passive_failures` consecutive connect failures or resets on fresh
 * connections (a refused connect counts as all of them at once; any HTTP answer starts the count
 * again) make a backend due for ejection. It is ejected only while that leaves at most
 * `max_ejection_percent` of the service's backends ejected and at least one other backend of the
 * service up: a client that makes a backend reset (or every backend dying at once) can never take
 * a whole service out by passive health alone. Ejections of one service are decided one at a
 * time, under a short lease in the service's runtime slot, so two workers ejecting two backends
 * at the same moment cannot both take "the other one" out.
 *
 * A trial request (passive retry or circuit probe) holds the probe lease (probe_until_ms) won by
 * compare-and-swap, so exactly one is in flight across all workers. The lease expires by itself
 * after lease_ms, so a worker killed in the middle of a probe, or a probe whose client went away,
 * blocks probing for a while, never forever. */

/* How long a backend marked down by passive health stays out when the service has no active
 * checks, before one trial request is let through. */
#define SHM_LB_RETRY_MS 10000u

struct shm_lb_policy {
    uint32_t health_enabled; /* active checks bring DOWN backends back (no passive trials) */
    uint32_t cb_enabled;
    uint32_t cb_failures;
    uint32_t cb_open_ms;
    uint32_t cb_count_5xx;
    uint32_t retry_ms;             /* passive-down retry interval without active checks */
    uint32_t lease_ms;             /* probe lease: a probe should be over by then */
    uint32_t passive_failures;     /* consecutive passive failures that make a backend due */
    uint32_t max_ejection_percent; /* cap on the share of backends ejected at once */
};

/* Defaults of the service keys passive_failures and max_ejection_percent. */
#define SHM_LB_PASSIVE_FAILURES     3u
#define SHM_LB_MAX_EJECTION_PERCENT 50u
/* How long one worker may hold a service's ejection lease (it holds it for a few loads and
 * stores; the expiry only matters when it was killed in between). */
#define SHM_LB_EJECT_LEASE_MS 1000u

/* The policy of service <svc>. */
void shm_lb_policy_of(const struct shm_service *svc, struct shm_lb_policy *p);

/* shm_lb_admit() answers */
#define SHM_LB_NO    0 /* not now (reason in *why) */
#define SHM_LB_YES   1 /* a normal request */
#define SHM_LB_PROBE 2 /* the trial request (lease taken when asked to) */

/* reasons for SHM_LB_NO */
#define SHM_LB_WHY_DISABLED 1
#define SHM_LB_WHY_DOWN     2
#define SHM_LB_WHY_OPEN     3 /* circuit open, or half-open with its probe in flight */

/* May backend <rb> take a request at <now>? With <take> set, an answer of SHM_LB_PROBE means the
 * caller won the probe lease and must report the attempt with shm_lb_outcome(probe = 1); without
 * it, nothing is written (a dry run for "is any backend left?"). */
int shm_lb_admit(struct shm_rt_backend *rb, const struct shm_lb_policy *p, uint64_t now, int take,
                 int *why);

/* attempt outcomes for shm_lb_outcome() */
#define SHM_LB_OK           0 /* an HTTP response that is not a failure */
#define SHM_LB_FAIL_5XX     1 /* a 5xx response counted by the breaker (circuit_breaker.count_5xx) */
#define SHM_LB_FAIL         2 /* EOF, response timeout, unparsable response: breaker only */
#define SHM_LB_FAIL_CONN    3 /* connect timed out, reset on a fresh connection: passive+breaker */
#define SHM_LB_NEUTRAL      4 /* proves nothing about the backend (a stale keep-alive connection) */
#define SHM_LB_FAIL_REFUSED 5 /* connect refused or unreachable: the full passive count at once */

/* transitions reported by shm_lb_outcome() and shm_lb_health_result() (for logging) */
#define SHM_LB_T_DOWN  0x1u
#define SHM_LB_T_UP    0x2u
#define SHM_LB_T_OPEN  0x4u
#define SHM_LB_T_CLOSE 0x8u
/* ... and by shm_lb_outcome() only: the backend is up with `passive_failures` consecutive passive
 * failures, the caller should ask shm_lb_eject(); FIRST when this call reached the count. */
#define SHM_LB_T_EJECT       0x10u
#define SHM_LB_T_EJECT_FIRST 0x20u

/* Record the outcome of one attempt on <rb>; <probe> when it held the probe lease (which is then
 * released). Returns the SHM_LB_T_* transitions this call made. */
unsigned shm_lb_outcome(struct shm_rt_backend *rb, const struct shm_lb_policy *p, int outcome,
                        int probe, uint64_t now);

/* reasons shm_lb_eject() keeps a due backend in rotation */
#define SHM_LB_KEEP_GONE 1 /* nothing to do: it is no longer up, or was answered meanwhile */
#define SHM_LB_KEEP_BUSY 2 /* another worker decides an ejection: the next failure asks again */
#define SHM_LB_KEEP_CAP  3 /* max_ejection_percent of the backends are ejected already */
#define SHM_LB_KEEP_LAST 4 /* no other backend of the service is up */

/* May one more backend be ejected from a service of <n> backends, <ejected> of them ejected
 * already and <others_up> others up, under a cap of <max_percent>? */
int shm_lb_may_eject(uint32_t n, uint32_t ejected, uint32_t others_up, uint32_t max_percent);

/* Passive ejection of the backend at position <pos> of a service whose <n> backends are
 * <bes>[0, n) (their runtime slots index <slots>), <rs> the service's runtime slot. Returns
 * SHM_LB_T_DOWN when this call took it out, else 0 with a SHM_LB_KEEP_* reason in *why. */
unsigned shm_lb_eject(struct shm_rt_backend *slots, struct shm_rt_service *rs,
                      const struct shm_backend *bes, uint32_t n, uint32_t pos,
                      const struct shm_lb_policy *p, uint64_t now, int *why);

/* Record one active health check of <rb> (master): <ok> for a 2xx/3xx, <status> the HTTP status
 * or 0. Returns the SHM_LB_T_* transitions made. */
unsigned shm_lb_health_result(struct shm_rt_backend *rb, int ok, uint32_t status, uint32_t fall,
                              uint32_t rise, uint64_t now);

#endif
