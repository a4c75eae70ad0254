/* dispatcher: compiles a validated ms_config into a pointer-free snapshot (shm/shm_types.h),
 * including the route index read by shm/shm_route.c. Master only. */
#ifndef DSP_MS_COMPILE_H
#define DSP_MS_COMPILE_H

#include <stddef.h>
#include <stdint.h>

struct ms_config;

/* Build the snapshot bytes for <cfg> as generation <gen>. Returns a heap buffer (caller frees)
 * of <*size> bytes, 8-byte aligned, whose rt_slot fields are SHM_NONE (the publisher assigns
 * them). Aborts on OOM (master code). Must handle 100,000 routes in well under 100 ms. */
void *ms_compile(const struct ms_config *cfg, uint64_t gen, size_t *size);

#endif
