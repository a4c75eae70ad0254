/* dispatcher: the worker process entry point, called by the master in a freshly forked child, and
 * the master -> worker control messages. */
#ifndef DSP_WK_H
#define DSP_WK_H

#include <stdint.h>
#include <sys/types.h>

struct shm_ctl;
struct shm_rt;

/* Control messages, master -> worker, one per SOCK_SEQPACKET datagram on the worker's channel
 * (a socketpair made at fork). Listening sockets are addressed by (lid, sock): the listener's id,
 * stable as long as the master keeps that address bound, and which of its SO_REUSEPORT sockets.
 * The master holds a reference to every listening socket it hands out, so a worker closing its
 * copy never drops what waits in the accept queue; only the master's close of a removed
 * listener does. */
#define WK_CTL_ADD   1u /* accept on the socket attached (SCM_RIGHTS) with these options */
#define WK_CTL_DEL   2u /* stop accepting on it: another worker takes it over */
#define WK_CTL_DRAIN 3u /* its listener is removed: accept what is queued, then close it */
#define WK_CTL_SET   4u /* new options for a socket it holds (apply to new connections) */
#define WK_CTL_RETIRE                                                                              \
    5u /* a smaller `workers`: stop accepting, let every open connection end                       \
        * on its own (next response with Connection: close, or its idle                            \
        * timeout) within shutdown_timeout_ms, then exit */

struct wk_ctl_msg {
    uint32_t op;
    uint32_t lid;
    uint32_t sock;
    uint32_t idx; /* the listener's position in the configuration */
    uint8_t tls;
    uint8_t proxy_protocol;
    uint16_t family; /* its address, to find it in each generation's listener table */
    uint16_t port;
    uint8_t pad[2];
    uint8_t ip[16];
};

/* A listening socket given to a worker at fork. */
struct wk_listen {
    int fd;
    uint32_t lid, sock, idx;
    uint8_t tls, proxy_protocol;
    uint16_t family, port;
    uint8_t ip[16];
};

struct wk_init {
    int slot;                       /* worker slot index */
    const struct wk_listen *listen; /* this slot's listening sockets */
    int nlisten;
    int ctl_fd; /* this worker's end of the control channel (-1: none) */
    struct shm_ctl *ctl;
    struct shm_rt *rt;
    uid_t uid; /* drop to this uid/gid when != (uid_t)-1 and running as root */
    gid_t gid;
};

/* Run the worker until it is told to stop. Never returns: exits 0 on a clean stop, 1 when it
 * cannot start (e.g. the snapshot cannot be mapped). */
void wk_main(const struct wk_init *init) __attribute__((noreturn));

#endif
