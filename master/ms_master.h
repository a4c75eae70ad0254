/* dispatcher: the master process: binds listeners, publishes configuration generations, forks and
 * respawns workers, and turns signals into reloads and stops. */
#ifndef DSP_MS_MASTER_H
#define DSP_MS_MASTER_H

#include <stdint.h>
#include <sys/types.h>

#include "shm/shm_types.h"

struct ms_config;
struct ms_rt_reg;

#define MS_EXIT_OK     0
#define MS_EXIT_CONFIG 1
#define MS_EXIT_START  2

struct ms_worker {
    pid_t pid; /* 0 when not running */
    uint64_t started_ms;
    uint64_t respawn_at_ms; /* when to fork it again (0 = not scheduled) */
    uint32_t quick_deaths;  /* consecutive deaths within a second of start: backoff */
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
    int nworkers;
    int nlisten;
    int *fds;  /* [slot * nlisten + listener] */
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

/* Compile ms.cfg and publish it as the next generation. Returns 0 or -1 (logged). At start for
 * the first generation; every later change goes through ms_commit() (master/ms_commit.c). */
int ms_publish(void);

/* Re-read the config file (SIGHUP, the admin socket's `reload`) and commit it: on success it is
 * published, on failure every error is logged and the old generation keeps serving. Returns 0
 * or -1; <errs> (optional) receives the heap error text on failure. */
int ms_reload(char **errs);

/* Fork the workers and run the master loop until stopped. Returns the exit code. */
int ms_run(void);

#endif
