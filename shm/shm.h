/* dispatcher: shared-memory segments. The master creates the control and runtime segments before
 * forking and publishes each config generation as a named POSIX shm object; workers and admin
 * readers map generations read-only. */
#ifndef DSP_SHM_H
#define DSP_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shm/shm_types.h"

/* Create the anonymous shared control segment (master, before fork). NULL on failure (logged). */
struct shm_ctl *shm_ctl_create(int master_pid);
/* Create the anonymous shared runtime segment (master, before fork). NULL on failure (logged). */
struct shm_rt *shm_rt_create(void);

/* Write "/dsp.<master_pid>.<gen>" into <buf>. */
void shm_snap_name(char *buf, size_t buflen, int master_pid, uint64_t gen);

/* Master: copy <size> bytes of snapshot <snap> (generation <gen>) into a fresh named segment
 * readable by <uid> (-1 = keep owner), then publish it with a release store of <gen> into
 * <ctl>->gen. Returns 0, or -1 (logged; nothing published). */
int shm_snap_publish(struct shm_ctl *ctl, const void *snap, size_t size, uint64_t gen, uid_t uid,
                     gid_t gid);

/* Master: remove generation <gen>'s name (mappings that still exist stay valid). */
void shm_snap_unlink(int master_pid, uint64_t gen);
/* In a worker just forked from the master: unmap the page of a generation the master keeps
 * mapped as its sign of life (shm_snap_publish()), which would otherwise pin that generation. */
void shm_snap_drop_mark(void);

/* Workers/admin: map generation <gen> read-only and check it. Returns the header and its size in
 * <*size>, or NULL with errno set (ENOENT when the generation was already retired). */
const struct shm_snap_hdr *shm_snap_map(int master_pid, uint64_t gen, size_t *size);
/* Unmap a segment from shm_snap_map(). */
void shm_snap_unmap(const struct shm_snap_hdr *h, size_t size);

/* The generation currently published (acquire load). */
static inline uint64_t shm_ctl_gen(const struct shm_ctl *ctl)
{
    return __atomic_load_n(&ctl->gen, __ATOMIC_ACQUIRE);
}

/* Remove leftover segments of dead masters from /dev/shm (master start-up). */
void shm_sweep_stale(void);
/* Remove every snapshot of master <master_pid> (its workers, once it died: mapped ones stay
 * readable to whoever maps them). */
void shm_unlink_all_of(int master_pid);

#endif
