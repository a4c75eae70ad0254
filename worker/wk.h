/* dispatcher: the worker process entry point, called by the master in a freshly forked child. */
#ifndef DSP_WK_H
#define DSP_WK_H

#include <sys/types.h>

struct shm_ctl;
struct shm_rt;

struct wk_init {
    int slot;        /* worker slot index */
    int *listen_fds; /* this slot's listening sockets, in config listener order */
    int nlisten;
    struct shm_ctl *ctl;
    struct shm_rt *rt;
    uid_t uid; /* drop to this uid/gid when != (uid_t)-1 and running as root */
    gid_t gid;
};

/* Run the worker until it is told to stop. Never returns: exits 0 on a clean stop, 1 when it
 * cannot start (e.g. the snapshot cannot be mapped). */
void wk_main(const struct wk_init *init) __attribute__((noreturn));

#endif
