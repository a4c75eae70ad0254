/* dispatcher: maps stable ids (service name, service + backend address) to runtime-segment slots,
 * so that counters and health survive reloads for entries that still exist. Master only. */
#ifndef DSP_MS_RT_H
#define DSP_MS_RT_H

#include <stdint.h>

struct shm_rt;
struct shm_snap_hdr;
struct ms_rt_reg;

struct ms_rt_reg *ms_rt_reg_new(void);
void ms_rt_reg_free(struct ms_rt_reg *reg);

/* Fill every rt_slot of the (still private, writable) snapshot <snap> of generation <gen>:
 * existing ids keep their slot, new ids get a zeroed slot (state per health.start). Ids that
 * <snap> no longer names are retired: their slots are recycled by ms_rt_release() once no live
 * generation older than <gen> remains. Returns 0, or -1 when the segment is full (logged). */
int ms_rt_assign(struct ms_rt_reg *reg, struct shm_rt *rt, struct shm_snap_hdr *snap, uint64_t gen);

/* Recycle slots retired by a generation <= <oldest_live_gen>. */
void ms_rt_release(struct ms_rt_reg *reg, struct shm_rt *rt, uint64_t oldest_live_gen);

#endif
