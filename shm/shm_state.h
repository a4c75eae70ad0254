/* dispatcher: operator control of backend runtime state (disable/enable, circuit reset/trip),
 * shared by the admin socket and the health checker. Writes go to the runtime segment with atomics;
 * any role holding a snapshot and the runtime segment may call these. */
#ifndef DSP_SHM_STATE_H
#define DSP_SHM_STATE_H

#include <stdint.h>

#include "shm/shm_types.h"

/* Find backend <address> ("127.0.0.1:9101", as shown by show instances) of service <service> in
 * snapshot <s>. Returns 0 with its runtime slot in <*rt_slot>, or -1 when there is no such
 * service (<*what> = "service") or backend (<*what> = "backend"). */
int shm_state_backend_slot(const struct shm_snap_hdr *s, const char *service, const char *address,
                           uint32_t *rt_slot, const char **what);

/* Take a backend out of rotation (state "disabled") until enabled again. */
void shm_state_disable(struct shm_rt *rt, uint32_t rt_slot);
/* Put a disabled backend back: state "up", with its health-check counters cleared (checks may
 * mark it down again). A backend that is not disabled is left as it is. */
void shm_state_enable(struct shm_rt *rt, uint32_t rt_slot);
/* Close a backend's circuit (also one tripped by hand), clear its consecutive failures and any
 * probe lease. */
void shm_state_reset_circuit(struct shm_rt *rt, uint32_t rt_slot);
/* Open a backend's circuit by hand: no request and no probe reach it until reset_circuit, with or
 * without a circuit breaker configured, whatever open_ms says. Kept across reloads while the
 * backend exists (its runtime slot does) and across worker restarts. */
void shm_state_trip_circuit(struct shm_rt *rt, uint32_t rt_slot);

#endif
