/* dispatcher: backend runtime-state control (see shm_state.h). */
#include "shm/shm_state.h"

#include <string.h>

#include "shm/shm_snap.h"

int shm_state_backend_slot(const struct shm_snap_hdr *s, const char *service, const char *address,
                           uint32_t *rt_slot, const char **what)
{
    const struct shm_service *svcs = shm_services(s);
    const struct shm_backend *bes = shm_backends(s);

    for (uint32_t i = 0; i < s->nservices; i++) {
        if (strcmp(shm_s(s, svcs[i].name), service) != 0) {
            continue;
        }
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            const struct shm_backend *b = &bes[svcs[i].backends_first + j];
            if (strcmp(shm_s(s, b->address), address) == 0) {
                *rt_slot = b->rt_slot;
                return 0;
            }
        }
        *what = "backend";
        return -1;
    }
    *what = "service";
    return -1;
}

void shm_state_disable(struct shm_rt *rt, uint32_t rt_slot)
{
    __atomic_store_n(&rt->backends[rt_slot].state, SHM_BE_DISABLED, __ATOMIC_RELEASE);
}

void shm_state_enable(struct shm_rt *rt, uint32_t rt_slot)
{
    struct shm_rt_backend *rb = &rt->backends[rt_slot];
    uint32_t disabled = SHM_BE_DISABLED;

    /* Only a disabled backend: one that is down stays down until health says otherwise. The
     * check counters restart so the next checks judge it afresh (`fall` failures to go down). */
    if (__atomic_compare_exchange_n(&rb->state, &disabled, SHM_BE_UP, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&rb->health_failures, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&rb->health_successes, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&rb->passive_failures, 0, __ATOMIC_RELAXED);
    }
}

void shm_state_reset_circuit(struct shm_rt *rt, uint32_t rt_slot)
{
    struct shm_rt_backend *rb = &rt->backends[rt_slot];

    __atomic_store_n(&rb->consecutive_failures, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&rb->circuit, SHM_CIRCUIT_CLOSED, __ATOMIC_RELEASE);
    __atomic_store_n(&rb->circuit_forced, 0, __ATOMIC_RELEASE);
    /* A probe still in flight reports to a closed circuit, which it leaves closed on success. */
    __atomic_store_n(&rb->probe_until_ms, 0, __ATOMIC_RELEASE);
}

void shm_state_trip_circuit(struct shm_rt *rt, uint32_t rt_slot)
{
    /* A flag beside the breaker's state: the breaker's own transitions (a probe that ends, a
     * failure count that opens it) can never close or half-open a circuit tripped by hand. */
    __atomic_store_n(&rt->backends[rt_slot].circuit_forced, 1, __ATOMIC_RELEASE);
}
