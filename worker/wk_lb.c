/* dispatcher: which backend serves the next attempt, and what an attempt's outcome does to the
 * shared runtime state. Everything here reads and writes the runtime segment with atomics so all
 * workers see one truth. */
#include "worker/wk_internal.h"

#include <stdio.h>

#include "shm/shm_snap.h"

int wk_lb_pick(struct wk_client *c, char *why, size_t whylen)
{
    const struct shm_service *svc = wk_client_service(c);
    const struct shm_backend *bes = shm_backends(c->gen->snap) + svc->backends_first;
    uint32_t n = svc->nbackends;
    uint32_t tw = svc->total_weight ? svc->total_weight : n;
    uint64_t cur = __atomic_fetch_add(&wk.rt->services[svc->rt_slot].rr_cursor, 1,
                                      __ATOMIC_RELAXED);
    uint64_t pos = cur % tw;
    uint32_t start = 0;

    for (uint32_t i = 0; i < n; i++) {
        uint32_t w = svc->total_weight ? bes[i].weight : 1;
        if (pos < w) {
            start = i;
            break;
        }
        pos -= w;
    }
    for (uint32_t k = 0; k < n; k++) {
        uint32_t j = (start + k) % n;
        uint32_t st = __atomic_load_n(&wk.rt->backends[bes[j].rt_slot].state, __ATOMIC_RELAXED);
        if (j < 64 && (c->tried & (1ull << j))) {
            continue;
        }
        if (st != SHM_BE_UP) {
            continue;
        }
        return (int)j;
    }
    snprintf(why, whylen, "No healthy backend for service %s", shm_s(c->gen->snap, svc->name));
    return -1;
}

int wk_lb_can_retry(struct wk_client *c)
{
    const struct shm_service *svc = wk_client_service(c);

    for (uint32_t j = 0; j < svc->nbackends && j < 64; j++) {
        if (!(c->tried & (1ull << j))) {
            return 1;
        }
    }
    return 0;
}

void wk_lb_result(struct wk_client *c, int fail, unsigned status)
{
    const struct shm_service *svc = wk_client_service(c);
    const struct shm_backend *be = &shm_backends(c->gen->snap)[svc->backends_first + c->backend];

    (void)status;
    if (fail != 0) {
        __atomic_fetch_add(&wk.rt->backends[be->rt_slot].errors, 1, __ATOMIC_RELAXED);
    }
}
