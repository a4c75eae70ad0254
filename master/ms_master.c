/* dispatcher: master process control. Signal handlers only set flags; the loop waits in
 * epoll_pwait with those signals unblocked (the fd-capable form of sigsuspend), then acts on the
 * flags: reap and respawn workers, reload, stop, retire old generations. */
#include "master/ms_master.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
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
#include "common/fs.h"
#include "common/log.h"
#include "common/net.h"
#include "master/ms_admin.h"
#include "master/ms_config.h"
#include "master/ms_health.h"
#include "master/ms_loop.h"
#include "master/ms_preflight.h"
#include "master/ms_rt.h"
#include "shm/shm.h"
#include "shm/shm_snap.h"
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
/* A socket bound to <l>'s address; listening when <do_listen>. A reload binds without listening
 * (a bound socket joins the SO_REUSEPORT group only once it listens), so that a reload that is
 * not published closes sockets no connection was ever queued on. */
static int bind_one(const struct ms_listener *l, int do_listen)
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
        int err = errno;
        log_errno(LOG_ERROR, err, "bind() to %s failed", l->address);
        close(fd);
        errno = err; /* a reload names it in its refusal */
        return -1;
    }
    if (do_listen && listen(fd, 4096) == -1) {
        log_errno(LOG_ERROR, errno, "listen() on %s failed", l->address);
        close(fd);
        return -1;
    }
    return fd;
}

static int same_address(const struct ms_lsn *a, const struct ms_listener *b)
{
    return a->sslen == b->sslen && memcmp(&a->ss, &b->ss, a->sslen) == 0;
}

static void lsn_init(struct ms_lsn *n, const struct ms_listener *l, uint32_t idx)
{
    memset(n, 0, sizeof(*n));
    n->address = dsp_xstrdup(l->address);
    n->ss = l->ss;
    n->sslen = l->sslen;
    n->tls = l->tls != 0;
    n->proxy_protocol = l->proxy_protocol != 0;
    n->idx = idx;
}

static void lsn_free(struct ms_lsn *set, int n, int close_fds)
{
    for (int i = 0; i < n; i++) {
        for (int j = 0; close_fds && j < set[i].nsock; j++) {
            if (set[i].fds[j] != -1) {
                close(set[i].fds[j]);
            }
        }
        free(set[i].fds);
        free(set[i].address);
    }
    free(set);
}

/* Bind sockets [from, to) of <n>. Returns 0, or -1 (logged) with the ones it bound closed. */
static int lsn_bind(struct ms_lsn *n, const struct ms_listener *l, int from, int to, int do_listen)
{
    n->fds = dsp_xrealloc(n->fds, (size_t)to * sizeof(int));
    for (int j = from; j < to; j++) {
        n->fds[j] = bind_one(l, do_listen);
        if (n->fds[j] == -1) {
            while (--j >= from) {
                close(n->fds[j]);
            }
            return -1;
        }
    }
    n->nsock = to;
    return 0;
}

int ms_bind_all(void)
{
    ms.nlsn = (int)ms.cfg->nlisteners;
    ms.lsn = dsp_xcalloc((size_t)ms.nlsn + 1, sizeof(*ms.lsn));
    for (int l = 0; l < ms.nlsn; l++) {
        lsn_init(&ms.lsn[l], &ms.cfg->listeners[l], (uint32_t)l);
        ms.lsn[l].id = ++ms.next_lid;
        if (lsn_bind(&ms.lsn[l], &ms.cfg->listeners[l], 0, ms.nworkers, 1) != 0) {
            return -1;
        }
    }
    ms.nactive = ms.nworkers;
    for (int i = 0; i < (int)SHM_MAX_WORKERS; i++) {
        ms.active[i] = i;
        ms.w[i].ctl_fd = -1;
    }
    return 0;
}

static void close_listeners(void)
{
    for (int l = 0; l < ms.nlsn; l++) {
        for (int j = 0; j < ms.lsn[l].nsock; j++) {
            if (ms.lsn[l].fds[j] != -1) {
                close(ms.lsn[l].fds[j]);
                ms.lsn[l].fds[j] = -1;
            }
        }
    }
}

static int lsn_fd(uint32_t lid, uint32_t sock)
{
    for (int l = 0; l < ms.nlsn; l++) {
        if (ms.lsn[l].id == lid) {
            return sock < (uint32_t)ms.lsn[l].nsock ? ms.lsn[l].fds[sock] : -1;
        }
    }
    return -1;
}

/* <n>'s address as the snapshot's listener table has it (ms_compile.c). */
static void lsn_addr(const struct ms_lsn *n, uint16_t *family, uint16_t *port, uint8_t ip[16])
{
    memset(ip, 0, 16);
    *family = n->ss.ss_family;
    *port = 0;
    if (n->ss.ss_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, &n->ss, sizeof(sin));
        *port = ntohs(sin.sin_port);
        memcpy(ip, &sin.sin_addr, 4);
    } else if (n->ss.ss_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, &n->ss, sizeof(sin6));
        *port = ntohs(sin6.sin6_port);
        memcpy(ip, &sin6.sin6_addr, 16);
    }
}

/* ---- which worker serves which socket ------------------------------------------------------- */
static int active_pos(int slot)
{
    for (int p = 0; p < ms.nactive; p++) {
        if (ms.active[p] == slot) {
            return p;
        }
    }
    return -1;
}

/* The sockets the worker in <slot> should accept on (fd filled in), into <*out> (heap).
 * Returns the count. */
static int desired(int slot, struct wk_listen **out)
{
    int p = active_pos(slot), n = 0, cap = 0;
    struct wk_listen *v = NULL;

    for (int l = 0; p >= 0 && l < ms.nlsn; l++) {
        for (int j = p; j < ms.lsn[l].nsock; j += ms.nactive) {
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                v = dsp_xrealloc(v, (size_t)cap * sizeof(*v));
            }
            if (ms.lsn[l].fds[j] == -1) {
                continue; /* its listen() failed at a reload (logged) */
            }
            v[n].fd = ms.lsn[l].fds[j];
            v[n].lid = ms.lsn[l].id;
            v[n].sock = (uint32_t)j;
            v[n].idx = ms.lsn[l].idx;
            v[n].tls = ms.lsn[l].tls;
            v[n].proxy_protocol = ms.lsn[l].proxy_protocol;
            lsn_addr(&ms.lsn[l], &v[n].family, &v[n].port, v[n].ip);
            n++;
        }
    }
    *out = v;
    return n;
}

/* ---- control channel ------------------------------------------------------------------------ */
static void ctl_reset(struct ms_worker *w)
{
    if (w->ctl_fd != -1) {
        close(w->ctl_fd);
        w->ctl_fd = -1;
    }
    free(w->held);
    w->held = NULL;
    w->nheld = w->held_cap = 0;
    w->npend = 0;
}

static void ctl_queue(struct ms_worker *w, uint32_t op, const struct wk_listen *s)
{
    struct wk_ctl_msg *m;

    if (w->npend == w->pend_cap) {
        w->pend_cap = w->pend_cap ? w->pend_cap * 2 : 16;
        w->pend = dsp_xrealloc(w->pend, (size_t)w->pend_cap * sizeof(*w->pend));
    }
    m = &w->pend[w->npend++];
    memset(m, 0, sizeof(*m));
    m->op = op;
    m->lid = s->lid;
    m->sock = s->sock;
    m->idx = s->idx;
    m->tls = s->tls;
    m->proxy_protocol = s->proxy_protocol;
    m->family = s->family;
    m->port = s->port;
    memcpy(m->ip, s->ip, sizeof(m->ip));
}

/* Send what is queued for <slot> as far as its channel takes it. A full channel (a worker busy
 * for a long while) keeps the rest for the next pass of the master loop. */
static void ctl_flush(int slot)
{
    struct ms_worker *w = &ms.w[slot];
    int i = 0;

    while (i < w->npend && w->ctl_fd != -1) {
        const struct wk_ctl_msg *m = &w->pend[i];
        union {
            struct cmsghdr h;
            char b[CMSG_SPACE(sizeof(int))];
        } cb;
        struct iovec iov = {.iov_base = (void *)m, .iov_len = sizeof(*m)};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        int fd = -1;
        ssize_t rc;

        if (m->op == WK_CTL_ADD) {
            fd = lsn_fd(m->lid, m->sock);
            if (fd == -1) {
                i++; /* removed since: nothing to hand over */
                continue;
            }
            memset(&cb, 0, sizeof(cb));
            mh.msg_control = cb.b;
            mh.msg_controllen = sizeof(cb.b);
            CMSG_FIRSTHDR(&mh)->cmsg_level = SOL_SOCKET;
            CMSG_FIRSTHDR(&mh)->cmsg_type = SCM_RIGHTS;
            CMSG_FIRSTHDR(&mh)->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(CMSG_FIRSTHDR(&mh)), &fd, sizeof(int));
        }
        rc = sendmsg(w->ctl_fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (rc == -1 && errno == EINTR) {
            continue;
        }
        if (rc == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        if (rc == -1) {
            /* The worker is gone (its reaping resets the channel) or the channel broke: a
             * worker that missed a change is restarted so that it serves the current set. */
            int err = errno;
            log_errno(LOG_ERROR, err, "control channel of worker %d failed", slot);
            if (w->pid != 0 && err != EPIPE && err != ECONNRESET) {
                kill(w->pid, SIGTERM);
            }
            i = w->npend;
            break;
        }
        i++;
    }
    if (i > 0 && i < w->npend) {
        memmove(w->pend, w->pend + i, (size_t)(w->npend - i) * sizeof(*w->pend));
    }
    w->npend -= i;
}

static int held_has(const struct wk_listen *v, int n, const struct wk_listen *s)
{
    for (int i = 0; i < n; i++) {
        if (v[i].lid == s->lid && v[i].sock == s->sock) {
            return i;
        }
    }
    return -1;
}

static int lsn_by_id(const struct ms_lsn *set, int n, uint32_t lid)
{
    for (int l = 0; l < n; l++) {
        if (set[l].id == lid) {
            return l;
        }
    }
    return -1;
}

/* Bring the running worker in <slot> to its desired set: new sockets first, then what it hands
 * over (or drains, for a removed listener). */
static void sync_worker(int slot)
{
    struct ms_worker *w = &ms.w[slot];
    struct wk_listen *d;
    int nd;

    if (w->pid == 0 || w->retiring) {
        return;
    }
    nd = desired(slot, &d);
    for (int i = 0; i < nd; i++) {
        int h = held_has(w->held, w->nheld, &d[i]);
        if (h < 0) {
            ctl_queue(w, WK_CTL_ADD, &d[i]);
        } else if (w->held[h].tls != d[i].tls || w->held[h].proxy_protocol != d[i].proxy_protocol ||
                   w->held[h].idx != d[i].idx) {
            ctl_queue(w, WK_CTL_SET, &d[i]);
        }
    }
    for (int i = 0; i < w->nheld; i++) {
        if (held_has(d, nd, &w->held[i]) < 0) {
            ctl_queue(w, lsn_by_id(ms.lsn, ms.nlsn, w->held[i].lid) < 0 ? WK_CTL_DRAIN : WK_CTL_DEL,
                      &w->held[i]);
        }
    }
    free(w->held);
    w->held = d;
    w->nheld = w->held_cap = nd;
    ctl_flush(slot);
}

int ms_slot_retired(int slot)
{
    return active_pos(slot) < 0;
}

static void update_span(void)
{
    int span = 0;

    for (int i = 0; i < (int)SHM_MAX_WORKERS; i++) {
        if (ms.w[i].pid != 0 || active_pos(i) >= 0 ||
            (ms.w[i].respawn_at_ms != 0 && !ms.w[i].retiring)) {
            span = i + 1;
        }
    }
    ms.nworkers = span;
    if (span > ms.slots_ever) {
        ms.slots_ever = span;
    }
    if (ms.ctl != NULL) {
        __atomic_store_n(&ms.ctl->nworkers, (uint32_t)span, __ATOMIC_RELEASE);
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
    struct ms_worker *w = &ms.w[slot];
    struct wk_listen *d;
    int nd, sv[2];
    pid_t pid;

    ctl_reset(w);
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1) {
        log_errno(LOG_ERROR, errno, "socketpair() for worker %d failed", slot);
        w->respawn_at_ms = dsp_now_ms() + 1000;
        return;
    }
    nd = desired(slot, &d);
    __atomic_store_n(&ws->gen_oldest, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&ws->gen_current, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&ws->connections, 0, __ATOMIC_RELAXED);
    pid = fork();
    if (pid == -1) {
        log_errno(LOG_ERROR, errno, "fork() for worker %d failed", slot);
        close(sv[0]);
        close(sv[1]);
        free(d);
        w->respawn_at_ms = dsp_now_ms() + 1000;
        return;
    }
    if (pid == 0) {
        struct wk_init init;
        struct sigaction sa;

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        sigaction(SIGHUP, &sa, NULL);
        sigaction(SIGCHLD, &sa, NULL);
        /* Only its own sockets and channel: a socket it kept would outlive the master's close
         * of a removed listener, and another worker's channel is not its to read. */
        for (int l = 0; l < ms.nlsn; l++) {
            for (int j = 0; j < ms.lsn[l].nsock; j++) {
                int mine = 0;
                for (int i = 0; i < nd; i++) {
                    mine |= d[i].fd == ms.lsn[l].fds[j];
                }
                if (!mine && ms.lsn[l].fds[j] != -1) {
                    close(ms.lsn[l].fds[j]);
                }
            }
        }
        for (int i = 0; i < (int)SHM_MAX_WORKERS; i++) {
            if (ms.w[i].ctl_fd != -1) {
                close(ms.w[i].ctl_fd);
            }
        }
        close(sv[0]);
        shm_snap_drop_mark(); /* the master's, not to outlive the generation in this worker */
        ms_loop_child_cleanup();
        if (ms.pid_fd != -1) {
            close(ms.pid_fd); /* the lock is the master's: a new one may start once it is gone */
        }
        memset(&init, 0, sizeof(init));
        init.slot = slot;
        init.listen = d;
        init.nlisten = nd;
        init.ctl_fd = sv[1];
        init.ctl = ms.ctl;
        init.rt = ms.rt;
        init.uid = ms.uid;
        init.gid = ms.gid;
        wk_main(&init);
    }
    close(sv[1]);
    w->ctl_fd = sv[0];
    w->held = d;
    w->nheld = w->held_cap = nd;
    w->pid = pid;
    w->started_ms = dsp_now_ms();
    w->respawn_at_ms = 0;
    __atomic_store_n(&ws->pid, pid, __ATOMIC_RELEASE);
    __atomic_store_n(&ws->started_ms, w->started_ms, __ATOMIC_RELAXED);
    update_span();
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
        ctl_reset(&ms.w[slot]);
        if (ms.w[slot].retiring) {
            /* Left over by a smaller `workers`: done with its connections. */
            ms.w[slot].retiring = 0;
            ms.w[slot].respawn_at_ms = 0;
            update_span();
            log_info("worker %d (pid %d) retired", slot, (int)pid);
            continue;
        }
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

/* ---- reload: listeners and the worker count ------------------------------------------------- */
static struct {
    int ready;
    struct ms_lsn *lsn; /* the set to serve after apply, in ncfg order */
    int nlsn;
    int *kept_from;  /* [nlsn]: index in ms.lsn, or -1 when bound by prepare */
    int *kept_nsock; /* [nlsn]: sockets it had (the rest were bound by prepare) */
    int nactive;
} plan;

static void plan_free(int close_new)
{
    for (int i = 0; i < plan.nlsn && close_new; i++) {
        int from = plan.kept_from[i] >= 0 ? plan.kept_nsock[i] : 0;
        for (int j = from; j < plan.lsn[i].nsock; j++) {
            close(plan.lsn[i].fds[j]);
        }
    }
    lsn_free(plan.lsn, plan.nlsn, 0);
    free(plan.kept_from);
    free(plan.kept_nsock);
    memset(&plan, 0, sizeof(plan));
}

static void addf(char **text, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(char **text, const char *fmt, ...)
{
    size_t old = *text ? strlen(*text) : 0;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    *text = dsp_xrealloc(*text, old + (size_t)n + 2);
    va_start(ap, fmt);
    vsnprintf(*text + old, (size_t)n + 1, fmt, ap);
    va_end(ap);
    (*text)[old + (size_t)n] = '\n';
    (*text)[old + (size_t)n + 1] = '\0';
}

static int slots_in_use(void)
{
    int n = 0;

    for (int i = 0; i < (int)SHM_MAX_WORKERS; i++) {
        n += active_pos(i) >= 0 || ms.w[i].pid != 0;
    }
    return n;
}

int ms_listeners_prepare(const struct ms_config *ncfg, char **errs, char **changes)
{
    int nact = ncfg->workers, grow;

    plan_free(1);
    if (nact < 1 || nact > (int)SHM_MAX_WORKERS) {
        nact = ms.nactive;
    }
    grow = nact > ms.nactive ? nact - ms.nactive : 0;
    if (grow > 0 && slots_in_use() + grow > (int)SHM_MAX_WORKERS) {
        addf(errs,
             "%s: workers = %d: %d workers of an earlier reduction are still finishing "
             "their connections; retry when they are done",
             ncfg->path, nact, slots_in_use() - ms.nactive);
        return -1;
    }
    plan.nactive = nact;
    plan.nlsn = (int)ncfg->nlisteners;
    plan.lsn = dsp_xcalloc((size_t)plan.nlsn + 1, sizeof(*plan.lsn));
    plan.kept_from = dsp_xcalloc((size_t)plan.nlsn + 1, sizeof(int));
    plan.kept_nsock = dsp_xcalloc((size_t)plan.nlsn + 1, sizeof(int));
    for (int i = 0; i < plan.nlsn; i++) {
        const struct ms_listener *l = &ncfg->listeners[i];
        struct ms_lsn *n = &plan.lsn[i];
        int from = -1;

        for (int o = 0; o < ms.nlsn; o++) {
            if (same_address(&ms.lsn[o], l)) {
                from = o;
                break;
            }
        }
        lsn_init(n, l, (uint32_t)i);
        plan.kept_from[i] = from;
        if (from >= 0) {
            const struct ms_lsn *o = &ms.lsn[from];
            n->id = o->id;
            n->nsock = o->nsock;
            n->fds = dsp_xcalloc((size_t)o->nsock + 1, sizeof(int));
            memcpy(n->fds, o->fds, (size_t)o->nsock * sizeof(int));
            plan.kept_nsock[i] = o->nsock;
            if (o->tls != n->tls) {
                addf(changes, "listener %s: tls %s", l->address, n->tls ? "on" : "off");
            }
            if (o->proxy_protocol != n->proxy_protocol) {
                addf(changes, "listener %s: proxy_protocol %s", l->address,
                     n->proxy_protocol ? "on" : "off");
            }
        } else {
            char why[256];

            n->id = 0; /* numbered at apply: an aborted plan uses no id */
            /* As at start: SO_REUSEPORT would let it bind beside another process's listener
             * and take part of its traffic. Our workers' sockets (a listener re-added while
             * they still drain it) do not count. */
            if (ms_listen_taken((const struct sockaddr *)&l->ss, l->sslen, getpid(), NULL, why,
                                sizeof(why))) {
                addf(errs, "%s:%d: cannot bind listener %s: address already in use: %s", ncfg->path,
                     l->line, l->address, why);
                plan_free(1);
                return -1;
            }
            addf(changes, "listener %s added", l->address);
        }
        if (n->nsock < nact && lsn_bind(n, l, n->nsock, nact, 0) != 0) {
            addf(errs, "%s:%d: cannot bind listener %s: %s", ncfg->path, l->line, l->address,
                 strerror(errno));
            plan_free(1);
            return -1;
        }
    }
    for (int o = 0; o < ms.nlsn; o++) {
        int kept = 0;
        for (int i = 0; i < plan.nlsn; i++) {
            kept |= plan.kept_from[i] == o;
        }
        if (!kept) {
            addf(changes, "listener %s removed", ms.lsn[o].address);
        }
    }
    if (nact != ms.nactive) {
        addf(changes, "workers %d -> %d", ms.nactive, nact);
    }
    plan.ready = 1;
    return 0;
}

void ms_listeners_abort(void)
{
    plan_free(1);
}

void ms_listeners_apply(void)
{
    struct ms_lsn *old = ms.lsn;
    int nold = ms.nlsn, was = ms.nactive, spawned[SHM_MAX_WORKERS], nspawn = 0;
    int retired[SHM_MAX_WORKERS], nretire = 0;

    if (!plan.ready) {
        return;
    }
    for (int i = 0; i < plan.nlsn; i++) {
        if (plan.lsn[i].id == 0) {
            plan.lsn[i].id = ++ms.next_lid;
        }
    }
    /* What prepare bound starts listening now, published: it joins the SO_REUSEPORT groups. */
    for (int i = 0; i < plan.nlsn; i++) {
        int from = plan.kept_from[i] >= 0 ? plan.kept_nsock[i] : 0;
        for (int j = from; j < plan.lsn[i].nsock; j++) {
            if (listen(plan.lsn[i].fds[j], 4096) == -1) {
                log_errno(LOG_ERROR, errno, "listen() on %s failed", plan.lsn[i].address);
                close(plan.lsn[i].fds[j]);
                plan.lsn[i].fds[j] = -1;
            }
        }
    }
    ms.lsn = plan.lsn;
    ms.nlsn = plan.nlsn;
    plan.lsn = NULL;
    plan.nlsn = 0;
    /* The worker count: retire the last active slots, or take the lowest free ones. */
    if (plan.nactive < was) {
        for (int p = plan.nactive; p < was; p++) {
            struct ms_worker *w = &ms.w[ms.active[p]];
            w->respawn_at_ms = 0;
            w->retiring = w->pid != 0;
            if (w->retiring) {
                retired[nretire++] = ms.active[p];
            }
        }
        ms.nactive = plan.nactive;
    } else {
        for (int slot = 0; slot < (int)SHM_MAX_WORKERS && ms.nactive < plan.nactive; slot++) {
            if (ms.w[slot].pid == 0 && active_pos(slot) < 0) {
                ms.w[slot].retiring = 0;
                ms.w[slot].quick_deaths = 0;
                ms.active[ms.nactive++] = slot;
                spawned[nspawn++] = slot;
            }
        }
    }
    /* Running workers first get what they serve from now on: the master holds every socket,
     * so a hand-over loses nothing of an accept queue. */
    for (int p = 0; p < ms.nactive; p++) {
        int slot = ms.active[p], fresh = 0;
        for (int k = 0; k < nspawn; k++) {
            fresh |= spawned[k] == slot;
        }
        if (!fresh) {
            sync_worker(slot);
        }
    }
    for (int k = 0; k < nretire; k++) {
        int i = retired[k];
        struct ms_worker *w = &ms.w[i];

        /* What it held of removed listeners it drains; the rest was handed over above. Then
         * it stops like on SIGQUIT: no more accepts, open connections finish. */
        for (int h = 0; h < w->nheld; h++) {
            if (lsn_by_id(ms.lsn, ms.nlsn, w->held[h].lid) < 0) {
                ctl_queue(w, WK_CTL_DRAIN, &w->held[h]);
            }
        }
        ctl_queue(w, WK_CTL_RETIRE, &(struct wk_listen){.fd = -1});
        ctl_flush(i);
        free(w->held);
        w->held = NULL;
        w->nheld = w->held_cap = 0;
        if (w->ctl_fd == -1) {
            kill(w->pid, SIGTERM);
        }
        log_info("worker %d (pid %d) retiring: finishing its connections", i, (int)w->pid);
    }
    /* Removed listeners: the workers were told to drain them; the master's reference goes. */
    for (int o = 0; o < nold; o++) {
        int kept = 0;
        for (int i = 0; i < ms.nlsn; i++) {
            kept |= plan.kept_from[i] == o;
        }
        if (kept) {
            free(old[o].fds);
            free(old[o].address);
            old[o].fds = NULL;
            old[o].nsock = 0;
            old[o].address = NULL;
        }
    }
    lsn_free(old, nold, 1);
    free(plan.kept_from);
    free(plan.kept_nsock);
    memset(&plan, 0, sizeof(plan));
    for (int k = 0; k < nspawn; k++) {
        spawn(spawned[k]);
    }
    update_span();
    /* A worker reads what was sent before its next accept: a connection made after the
     * reload's answer gets the new options. */
    __atomic_add_fetch(&ms.ctl->listeners_seq, 1, __ATOMIC_RELEASE);
}

/* ---- -t: what a reload would change ---------------------------------------------------------- */
static int same_shm_address(const struct shm_listener *a, const struct ms_listener *b)
{
    if (a->family != b->ss.ss_family) {
        return 0;
    }
    if (b->ss.ss_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, &b->ss, sizeof(sin));
        return a->port == ntohs(sin.sin_port) && memcmp(a->ip, &sin.sin_addr, 4) == 0;
    }
    if (b->ss.ss_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, &b->ss, sizeof(sin6));
        return a->port == ntohs(sin6.sin6_port) && memcmp(a->ip, &sin6.sin6_addr, 16) == 0;
    }
    return 0;
}

int ms_reload_preview(const struct ms_config *cfg, const char *pid_file, char **out)
{
    char buf[32] = "";
    unsigned long long gen = 0;
    const struct shm_snap_hdr *h;
    const struct shm_listener *ls;
    struct dirent *de;
    size_t size;
    long pid = 0;
    ssize_t n;
    DIR *d;
    int fd;

    *out = NULL;
    if (pid_file == NULL ||
        (fd = open(pid_file, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)) == -1) {
        return 0;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    pid = n > 0 ? strtol(buf, NULL, 10) : 0;
    if (pid <= 0 || pid > INT_MAX || pid == (long)getpid() || !fs_pid_is_ours((int)pid) ||
        (d = opendir("/dev/shm")) == NULL) {
        return 0;
    }
    /* Its latest generation is the one with the highest number. */
    while ((de = readdir(d)) != NULL) {
        int p;
        unsigned long long g;
        if (sscanf(de->d_name, "dsp.%d.%llu", &p, &g) == 2 && p == (int)pid && g > gen) {
            gen = g;
        }
    }
    closedir(d);
    if (gen == 0 || (h = shm_snap_map((int)pid, gen, &size)) == NULL) {
        return 0;
    }
    ls = shm_listeners(h);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct ms_listener *l = &cfg->listeners[i];
        uint32_t k = 0;

        while (k < h->nlisteners && !same_shm_address(&ls[k], l)) {
            k++;
        }
        if (k == h->nlisteners) {
            addf(out, "listener %s added", l->address);
            continue;
        }
        if (ls[k].tls != (l->tls != 0)) {
            addf(out, "listener %s: tls %s", l->address, l->tls ? "on" : "off");
        }
        if (ls[k].proxy_protocol != (l->proxy_protocol != 0)) {
            addf(out, "listener %s: proxy_protocol %s", l->address,
                 l->proxy_protocol ? "on" : "off");
        }
    }
    for (uint32_t k = 0; k < h->nlisteners; k++) {
        size_t i = 0;
        while (i < cfg->nlisteners && !same_shm_address(&ls[k], &cfg->listeners[i])) {
            i++;
        }
        if (i == cfg->nlisteners) {
            addf(out, "listener %.*s removed", (int)ls[k].address.len, shm_s(h, ls[k].address));
        }
    }
    if (h->workers != 0 && h->workers != (uint32_t)cfg->workers) {
        addf(out, "workers %u -> %d", (unsigned)h->workers, cfg->workers);
    }
    shm_snap_unmap(h, size);
    return (int)pid;
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
             ms.nworkers, ms.nlsn, (unsigned long long)ms.gen);

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
            ms_reload(NULL, NULL);
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
            if (ms.w[i].pid == 0 && ms.w[i].respawn_at_ms != 0 && now >= ms.w[i].respawn_at_ms &&
                active_pos(i) >= 0) {
                spawn(i);
            }
            if (ms.w[i].npend > 0) {
                ctl_flush(i);
            }
        }
        retire_generations();
        ms_loop_run_ticks(now);
    }
    for (uint64_t g = ms.oldest_kept; g <= ms.gen && g != 0; g++) {
        shm_snap_unlink(ms.ctl->master_pid, g);
    }
    for (int i = 0; i < (int)SHM_MAX_WORKERS; i++) {
        ctl_reset(&ms.w[i]);
        free(ms.w[i].pend);
        ms.w[i].pend = NULL;
    }
    plan_free(1);
    lsn_free(ms.lsn, ms.nlsn, 1);
    ms.lsn = NULL;
    ms.nlsn = 0;
    log_info("stopped");
    return MS_EXIT_OK;
}
