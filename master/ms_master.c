/* dispatcher: master process control. Signal handlers only set flags; the loop waits in
 * epoll_pwait with those signals unblocked (the fd-capable form of sigsuspend), then acts on the
 * flags: reap and respawn workers, reload, stop, retire old generations. */
#include "master/ms_master.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/net.h"
#include "master/ms_admin.h"
#include "master/ms_config.h"
#include "master/ms_health.h"
#include "master/ms_loop.h"
#include "master/ms_rt.h"
#include "shm/shm.h"
#include "worker/wk.h"

struct ms_master ms;

static volatile sig_atomic_t sig_hup, sig_term, sig_int, sig_chld, sig_usr1;

static void on_signal(int sig)
{
    switch (sig) {
    case SIGHUP:
        sig_hup = 1;
        break;
    case SIGTERM:
    case SIGQUIT:
        sig_term = 1;
        break;
    case SIGINT:
        sig_int = 1;
        break;
    case SIGCHLD:
        sig_chld = 1;
        break;
    case SIGUSR1:
        sig_usr1 = 1;
        break;
    default:
        break;
    }
}

/* ---- listeners ------------------------------------------------------------------------------ */
static int bind_one(const struct ms_listener *l)
{
    int one = 1;
    int fd = socket(l->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd == -1) {
        log_errno(LOG_ERROR, errno, "socket() for %s failed", l->address);
        return -1;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1) {
        log_errno(LOG_ERROR, errno, "setsockopt(SO_REUSEPORT) on %s failed", l->address);
        close(fd);
        return -1;
    }
    if (l->ss.ss_family == AF_INET6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    /* Accepted sockets inherit it: one syscall per listener instead of one per connection. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&l->ss, l->sslen) == -1) {
        log_errno(LOG_ERROR, errno, "bind() to %s failed", l->address);
        close(fd);
        return -1;
    }
    if (listen(fd, 4096) == -1) {
        log_errno(LOG_ERROR, errno, "listen() on %s failed", l->address);
        close(fd);
        return -1;
    }
    return fd;
}

int ms_bind_all(void)
{
    ms.nlisten = (int)ms.cfg->nlisteners;
    ms.fds = dsp_xcalloc((size_t)ms.nworkers * (size_t)ms.nlisten, sizeof(int));
    for (int s = 0; s < ms.nworkers; s++) {
        for (int l = 0; l < ms.nlisten; l++) {
            int fd = bind_one(&ms.cfg->listeners[l]);
            if (fd == -1) {
                return -1;
            }
            ms.fds[s * ms.nlisten + l] = fd;
        }
    }
    return 0;
}

static void close_listeners(void)
{
    if (ms.fds == NULL) {
        return;
    }
    for (int i = 0; i < ms.nworkers * ms.nlisten; i++) {
        if (ms.fds[i] != -1) {
            close(ms.fds[i]);
            ms.fds[i] = -1;
        }
    }
}

/* ---- generations ---------------------------------------------------------------------------- */
/* Unlink generations no live worker still holds, and recycle their runtime slots. */
static void retire_generations(void)
{
    uint64_t oldest = ms.gen;

    for (int i = 0; i < ms.nworkers; i++) {
        uint64_t g;
        if (ms.w[i].pid == 0) {
            continue;
        }
        g = __atomic_load_n(&ms.ctl->workers[i].gen_oldest, __ATOMIC_ACQUIRE);
        if (g == 0) {
            /* Just forked and not yet serving: it will map the current generation. But it may
             * have read an older number a moment ago; keep one step back to be safe. */
            g = __atomic_load_n(&ms.ctl->workers[i].gen_current, __ATOMIC_ACQUIRE);
            if (g == 0) {
                g = ms.oldest_kept;
            }
        }
        if (g < oldest) {
            oldest = g;
        }
    }
    while (ms.oldest_kept < oldest) {
        shm_snap_unlink(ms.ctl->master_pid, ms.oldest_kept);
        ms.oldest_kept++;
    }
    ms_rt_release(ms.reg, ms.rt, oldest);
}

/* ---- workers -------------------------------------------------------------------------------- */
static void spawn(int slot)
{
    struct shm_worker_slot *ws = &ms.ctl->workers[slot];
    pid_t pid;

    __atomic_store_n(&ws->gen_oldest, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&ws->gen_current, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&ws->connections, 0, __ATOMIC_RELAXED);
    pid = fork();
    if (pid == -1) {
        log_errno(LOG_ERROR, errno, "fork() for worker %d failed", slot);
        ms.w[slot].respawn_at_ms = dsp_now_ms() + 1000;
        return;
    }
    if (pid == 0) {
        struct wk_init init;
        struct sigaction sa;
        sigset_t none;

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        sigaction(SIGHUP, &sa, NULL);
        sigaction(SIGCHLD, &sa, NULL);
        sigemptyset(&none);
        for (int i = 0; i < ms.nworkers * ms.nlisten; i++) {
            if (i / ms.nlisten != slot && ms.fds[i] != -1) {
                close(ms.fds[i]);
            }
        }
        ms_loop_child_cleanup();
        if (ms.pid_fd != -1) {
            close(ms.pid_fd); /* the lock is the master's: a new one may start once it is gone */
        }
        memset(&init, 0, sizeof(init));
        init.slot = slot;
        init.listen_fds = &ms.fds[slot * ms.nlisten];
        init.nlisten = ms.nlisten;
        init.ctl = ms.ctl;
        init.rt = ms.rt;
        init.uid = ms.uid;
        init.gid = ms.gid;
        wk_main(&init);
    }
    ms.w[slot].pid = pid;
    ms.w[slot].started_ms = dsp_now_ms();
    ms.w[slot].respawn_at_ms = 0;
    __atomic_store_n(&ws->pid, pid, __ATOMIC_RELEASE);
    __atomic_store_n(&ws->started_ms, ms.w[slot].started_ms, __ATOMIC_RELAXED);
    log_info("worker %d started (pid %d)", slot, (int)pid);
}

static void reap(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        int slot = -1;
        uint64_t now = dsp_now_ms();

        if (pid <= 0) {
            return;
        }
        for (int i = 0; i < ms.nworkers; i++) {
            if (ms.w[i].pid == pid) {
                slot = i;
                break;
            }
        }
        if (slot < 0) {
            continue;
        }
        ms.w[slot].pid = 0;
        __atomic_store_n(&ms.ctl->workers[slot].pid, 0, __ATOMIC_RELEASE);
        if (ms.stopping) {
            continue;
        }
        if (WIFSIGNALED(status)) {
            log_error("worker %d (pid %d) killed by signal %d (exit %d); respawning", slot,
                      (int)pid, WTERMSIG(status), 128 + WTERMSIG(status));
        } else {
            log_error("worker %d (pid %d) exited with status %d; respawning", slot, (int)pid,
                      WEXITSTATUS(status));
        }
        __atomic_fetch_add(&ms.ctl->workers[slot].restarts, 1, __ATOMIC_RELAXED);
        if (now - ms.w[slot].started_ms < 1000) {
            /* Dying right after start: something is wrong; do not spin. */
            uint32_t n = ms.w[slot].quick_deaths < 7 ? ms.w[slot].quick_deaths : 7;
            ms.w[slot].respawn_at_ms = now + (100ull << n);
            ms.w[slot].quick_deaths++;
        } else {
            ms.w[slot].quick_deaths = 0;
            ms.w[slot].respawn_at_ms = now;
        }
    }
}

static int workers_alive(void)
{
    int n = 0;

    for (int i = 0; i < ms.nworkers; i++) {
        n += ms.w[i].pid != 0;
    }
    return n;
}

static void signal_workers(int sig)
{
    for (int i = 0; i < ms.nworkers; i++) {
        if (ms.w[i].pid != 0) {
            kill(ms.w[i].pid, sig);
        }
    }
}

int ms_run(void)
{
    struct sigaction sa;
    sigset_t block, waitmask;
    int epfd;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    sigemptyset(&block);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGCHLD);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGHUP);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGQUIT);
    sigdelset(&waitmask, SIGINT);
    sigdelset(&waitmask, SIGCHLD);
    sigdelset(&waitmask, SIGUSR1);

    epfd = ms_loop_fd();
    if (epfd == -1) {
        return MS_EXIT_START;
    }
    if (ms_health_init() != 0) {
        return MS_EXIT_START;
    }
    ms.ctl->nworkers = (uint32_t)ms.nworkers;
    if (ms_admin_start() != 0) {
        return MS_EXIT_START;
    }
    for (int i = 0; i < ms.nworkers; i++) {
        spawn(i);
    }
    log_info("dispatcher %s started: %d workers, %d listeners, generation %llu", DSP_VERSION,
             ms.nworkers, ms.nlisten, (unsigned long long)ms.gen);

    for (;;) {
        struct epoll_event ev[16];
        uint64_t now;
        int n = epoll_pwait(epfd, ev, 16, 100, &waitmask);

        if (n == -1 && errno != EINTR) {
            log_errno(LOG_ERROR, errno, "epoll_pwait() failed");
        }
        for (int i = 0; i < n; i++) {
            ms_loop_dispatch(ev[i].data.ptr, ev[i].events);
        }
        now = dsp_now_ms();
        /* Stops first: a Ctrl-C reaches the workers too (one process group), and their exit
         * in the same pass is part of the stop, not a crash to respawn. */
        if (sig_int && ms.stopping != 2) {
            sig_int = 0;
            log_info("fast stop requested");
            ms.stopping = 2;
            ms.stop_deadline = now + 1000;
            close_listeners();
            signal_workers(SIGINT);
        }
        if (sig_term && !ms.stopping) {
            sig_term = 0;
            log_info("graceful stop requested");
            ms.stopping = 1;
            ms.stop_deadline = now + (uint64_t)ms.cfg->limits.shutdown_timeout_ms + 2000;
            close_listeners();
            signal_workers(SIGTERM);
        }
        if (sig_chld) {
            sig_chld = 0;
            reap();
        }
        if (ms.stopping) {
            if (workers_alive() == 0) {
                break;
            }
            if (now >= ms.stop_deadline) {
                log_warn("workers still running after the shutdown timeout; killing them");
                signal_workers(SIGKILL);
                ms.stop_deadline = now + 1000;
            }
            continue;
        }
        if (sig_hup) {
            sig_hup = 0;
            log_info("reloading configuration from %s", ms.conf_path);
            ms_reload(NULL);
        }
        if (sig_usr1) {
            sig_usr1 = 0;
            if (log_open(ms.cfg->log.error) != 0) {
                log_errno(LOG_ERROR, errno, "cannot reopen error log %s", ms.cfg->log.error);
            } else {
                log_info("SIGUSR1: error log reopened; the workers reopen the access log");
            }
            signal_workers(SIGUSR1);
        }
        for (int i = 0; i < ms.nworkers; i++) {
            if (ms.w[i].pid == 0 && ms.w[i].respawn_at_ms != 0 && now >= ms.w[i].respawn_at_ms) {
                spawn(i);
            }
        }
        retire_generations();
        ms_loop_run_ticks(now);
    }
    for (uint64_t g = ms.oldest_kept; g <= ms.gen && g != 0; g++) {
        shm_snap_unlink(ms.ctl->master_pid, g);
    }
    log_info("stopped");
    return MS_EXIT_OK;
}
