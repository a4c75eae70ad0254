/* dispatcher: the master process: binds listeners, publishes configuration generations, forks and
 * respawns workers, and turns signals into reloads and stops. */
#ifndef DSP_MS_MASTER_H
#define DSP_MS_MASTER_H

#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "shm/shm_types.h"

struct ms_config;
struct ms_rt_reg;

#define MS_EXIT_OK     0
#define MS_EXIT_CONFIG 1
#define MS_EXIT_START  2

struct wk_ctl_msg;
struct wk_listen;

struct ms_worker {
    pid_t pid; /* 0 when not running */
    uint64_t started_ms;
    uint64_t respawn_at_ms; /* when to fork it again (0 = not scheduled) */
    uint32_t quick_deaths;  /* consecutive deaths within a second of start: backoff */
    int retiring;           /* left over by a smaller `workers`: draining, not respawned */
    int ctl_fd;             /* the master's end of its control channel, or -1 */
    struct wk_listen *held; /* the sockets it was given (fd unused here) */
    int nheld, held_cap;
    struct wk_ctl_msg *pend; /* control messages not sent yet (its channel was full) */
    int npend, pend_cap;
};

/* A bound listener: one SO_REUSEPORT socket per worker at the time it was bound, or more
 * (never fewer while it stays: closing one would drop its accept queue). Socket j is served by
 * the worker at position j % nactive of the active list. */
struct ms_lsn {
    uint32_t id; /* stable while the address stays bound (the workers' name for it) */
    char *address;
    struct sockaddr_storage ss;
    socklen_t sslen;
    uint8_t tls, proxy_protocol;
    uint32_t idx; /* position in ms.cfg->listeners */
    int nsock;
    int *fds;
};

struct ms_master {
    char *conf_path; /* absolute */
    struct ms_config *cfg;
    struct shm_ctl *ctl;
    struct shm_rt *rt;
    struct ms_rt_reg *reg;
    uint64_t gen;         /* last published generation */
    uint64_t oldest_kept; /* generations below this are unlinked */
    void *snap;           /* private copy of the current snapshot */
    size_t snap_size;
    int nworkers; /* worker slots in use: the active ones and those still retiring */
    int nactive;  /* the configured count: slots active[0..nactive) serve the listeners */
    int active[SHM_MAX_WORKERS];
    int slots_ever;     /* highest slot ever used + 1 (its shm counters still count) */
    struct ms_lsn *lsn; /* the bound listeners */
    int nlsn;
    uint32_t next_lid;
    uid_t uid; /* workers' user, (uid_t)-1 = unchanged */
    gid_t gid;
    int pid_fd;   /* the pid file, locked for the master's life (workers close it), or -1 */
    int stopping; /* 1 graceful, 2 fast */
    uint64_t stop_deadline;
    struct ms_worker w[SHM_MAX_WORKERS];
};

extern struct ms_master ms;

/* Bind every listener once per worker slot (SO_REUSEPORT). On failure prints "address: error"
 * to the log and returns -1. */
int ms_bind_all(void);

/* A reload's listeners and worker count (called by ms_commit()). Prepare: bind what <ncfg> adds
 * (or the extra sockets more workers need) without touching what serves; on failure, -1 with the
 * reasons appended to <*errs>. <*changes> (heap, may stay NULL) receives one line per change
 * ("listener 127.0.0.1:8081 added"). Then exactly one of apply (after the new generation is
 * published: hand sockets to the workers, close removed listeners, start or retire workers) or
 * abort (close what prepare bound). */
/* 1 when worker <slot> is not one of the configured workers (retiring after a smaller
 * `workers`, or gone), for the admin views. */
int ms_slot_retired(int slot);

int ms_listeners_prepare(const struct ms_config *ncfg, char **errs, char **changes);
void ms_listeners_apply(void);
void ms_listeners_abort(void);

/* Compile ms.cfg and publish it as the next generation. Returns 0 or -1 (logged). At start for
 * the first generation; every later change goes through ms_commit() (master/ms_commit.c). */
int ms_publish(void);

/* Re-read the config file (SIGHUP, the admin socket's `reload`) and commit it: on success it is
 * published, on failure every error is logged and the old generation keeps serving. Returns 0
 * or -1; <errs> (optional) receives the heap error text on failure, <changes> (optional) what
 * changed in listeners and workers on success (heap lines, NULL when nothing did). */
int ms_reload(char **errs, char **changes);

/* For -t: when <pid_file> names a running dispatcher, what reloading it with <cfg> would change
 * in listeners and workers, compared with its latest generation, in <*out> (heap lines in the
 * reload's words, NULL when nothing). Returns its pid, or 0 (none, or it cannot be read). */
int ms_reload_preview(const struct ms_config *cfg, const char *pid_file, char **out);

/* Fork the workers and run the master loop until stopped. Returns the exit code. */
int ms_run(void);

#endif
