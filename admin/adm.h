/* dispatcher: the admin servers run by the master: the Unix-socket line protocol (admin.socket)
 * and the HTTP API with Prometheus metrics (admin.http), both on the master's event loop. Also
 * prepares the paths the workers write (access log folder and file).
 *
 * The admin server owns nothing of the live configuration and knows nothing of the master's
 * internals: everything it reads or does goes through the host table the master hands to
 * adm_init() (master/ms_admin.c fills it). */
#ifndef DSP_ADM_H
#define DSP_ADM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "admin/adm_cmd.h"

struct net_cidr;

/* What the admin server needs of the configuration being served. Pointers stay valid until the
 * next publish: the server asks again each time it needs them. */
struct adm_settings {
    const char *socket;                     /* admin.socket (absolute), or NULL */
    int socket_mode;                        /* admin.mode */
    const char *http;                       /* admin.http as written, or NULL */
    const struct sockaddr_storage *http_ss; /* admin.http resolved */
    socklen_t http_sslen;
    const struct net_cidr *http_allow; /* admin.http_allow: the only clients, when set */
    size_t nhttp_allow;
    const char *access_log;     /* log.access (absolute), or NULL for "off" */
    uint64_t header_timeout_ms; /* limits.header_timeout_ms */
    uint64_t idle_timeout_ms;   /* limits.idle_timeout_ms */
    uid_t uid;                  /* the workers' user, (uid_t)-1 = unchanged */
    gid_t gid;
};

/* Called with the epoll <events> of a watched <fd>. */
typedef void (*adm_fd_cb)(int fd, uint32_t events, void *arg);

/* The master as the admin server sees it. */
struct adm_host {
    struct adm_ops cmd; /* state and actions behind the commands and the API (adm_cmd.h) */
    void (*settings)(struct adm_settings *s, void *ctx);
    /* Is the master stopping (the workers draining)? */
    int (*draining)(void *ctx);
    /* The master's event loop (level-triggered epoll events): 0 or -1 (logged). */
    int (*watch)(int fd, uint32_t events, adm_fd_cb cb, void *arg, void *ctx);
    int (*rewatch)(int fd, uint32_t events, void *ctx);
    void (*unwatch)(int fd, void *ctx);
    void *ctx;
};

/* Master, in ms_run() before the workers are forked: create missing folders, bind the admin
 * socket (refusing one a live process still serves) and the admin HTTP listener, and watch
 * them through <host> (copied). Returns 0, or -1 after logging why (the master exits 2). */
int adm_init(const struct adm_host *host);
/* The master calls these: about every 100 ms with the monotonic time, and after every publish
 * of a new generation. */
void adm_tick(uint64_t now_ms);
void adm_config_changed(void);
/* Does a live process serve the admin socket at <path>? (Logs why when it does.) Checked before
 * the listeners are bound too: a second master must not take a single connection of the live
 * one's ports (SO_REUSEPORT would let it) before it finds out and exits. */
int adm_socket_in_use(const char *path);

#endif
