/* dispatcher: dispatcher-master command line: config check, start-up order (parse, bind,
 * daemonize, publish, pid file, fork) and exit codes from SPEC "Programs". */
#include "master/ms_master.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <malloc.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin/adm.h"
#include "common/dsp.h"
#include "common/fs.h"
#include "common/log.h"
#include "master/ms_compile.h"
#include "master/ms_dns.h"
#include "master/ms_config.h"
#include "master/ms_preflight.h"
#include "master/ms_redis.h"
#include "master/ms_rl.h"
#include "master/ms_rt.h"
#include "master/ms_tls.h"
#include "shm/shm.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: dispatcher-master [-c FILE] [-t] [-D] [-p PIDFILE] [-V] [-h]\n"
                 "  -c FILE     configuration file (default ./dispatcher.conf, then\n"
                 "              /etc/dispatcher/dispatcher.conf)\n"
                 "  -t          check the configuration and exit\n"
                 "  -D          run in the background (daemon)\n"
                 "  -p PIDFILE  write the master pid here (overrides pid_file)\n"
                 "  -V          print the version and exit\n"
                 "  -h          print this help and exit\n");
}

static const char *default_config(void)
{
    if (access("dispatcher.conf", F_OK) == 0) {
        return "dispatcher.conf";
    }
    return "/etc/dispatcher/dispatcher.conf";
}

/* A pid file naming a live dispatcher: refuse to start a second one on its ports (SO_REUSEPORT
 * would let both bind). One left by a dead master is simply overwritten. */
static int pid_file_in_use(const char *path)
{
    char buf[32];
    ssize_t n;
    long pid;
    int fd;

    if (path == NULL || (fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)) == -1) {
        return 0;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    pid = strtol(buf, NULL, 10);
    if (pid <= 0 || pid > INT_MAX || pid == (long)getpid() || !fs_pid_is_ours((int)pid)) {
        return 0;
    }
    log_error("pid file %s names a running dispatcher (pid %ld): not starting another", path, pid);
    return 1;
}

/* The pid file is locked (flock) for the master's whole life: two masters started at once on
 * the same pid file cannot both pass the checks before binding. The lock is taken before
 * anything else is touched; a refused master leaves the file, the admin socket and the shared
 * memory of the one holding it alone. Returns the locked descriptor, or -1 (said on stderr). */
static int lock_pid_file(const char *path)
{
    char err[512];

    /* A fresh checkout has no run/ yet: create the folder rather than fail. */
    if (fs_mkdir_parents(path, err, sizeof(err)) != 0) {
        fprintf(stderr, "cannot use pid file %s: %s\n", path, err);
        return -1;
    }
    for (int tries = 0; tries < 10; tries++) {
        struct stat st = {0}, now = {0};
        /* Non-blocking and not through a symlink: a FIFO or a link planted there cannot stall
         * or redirect the master; anything but a regular file is refused. */
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW,
                      0644);

        if (fd == -1) {
            fprintf(stderr, "cannot open pid file %s: %s\n", path, strerror(errno));
            return -1;
        }
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            fprintf(stderr, "cannot use pid file %s: not a regular file\n", path);
            close(fd);
            return -1;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            char buf[32] = "";
            ssize_t n = errno == EWOULDBLOCK ? pread(fd, buf, sizeof(buf) - 1, 0) : -1;
            long pid = n > 0 ? (buf[n] = '\0', strtol(buf, NULL, 10)) : 0;

            if (n < 0 && errno != EWOULDBLOCK) {
                fprintf(stderr, "cannot lock pid file %s: %s\n", path, strerror(errno));
            } else if (pid > 0) {
                fprintf(stderr,
                        "pid file %s is locked by a running dispatcher (pid %ld): not "
                        "starting another\n",
                        path, pid);
            } else {
                fprintf(stderr,
                        "pid file %s is locked by a dispatcher that is starting: not "
                        "starting another\n",
                        path);
            }
            close(fd);
            return -1;
        }
        /* The holder may have removed the file between our open and our lock: then we hold a
         * lock nobody else can see. Start again on the file the path names now. */
        if (stat(path, &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino) {
            return fd;
        }
        close(fd);
    }
    fprintf(stderr, "cannot lock pid file %s: it keeps being replaced\n", path);
    return -1;
}

static int write_pid_file(int fd, const char *path)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());

    if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n) {
        log_errno(LOG_ERROR, errno, "cannot write pid file %s", path);
        return -1;
    }
    return 0;
}

static int resolve_user(const struct ms_config *cfg)
{
    ms.uid = (uid_t)-1;
    ms.gid = (gid_t)-1;
    if (cfg->user == NULL) {
        return 0;
    }
    if (geteuid() != 0) {
        log_warn("user = \"%s\" ignored: not started as root", cfg->user);
        return 0;
    }
    struct passwd *pw = getpwnam(cfg->user);
    if (pw == NULL) {
        fprintf(stderr, "%s: unknown user \"%s\"\n", cfg->path, cfg->user);
        return -1;
    }
    ms.uid = pw->pw_uid;
    ms.gid = pw->pw_gid;
    if (cfg->group != NULL) {
        struct group *gr = getgrnam(cfg->group);
        if (gr == NULL) {
            fprintf(stderr, "%s: unknown group \"%s\"\n", cfg->path, cfg->group);
            return -1;
        }
        ms.gid = gr->gr_gid;
    }
    return 0;
}

/* Detach from the terminal. The parent exits 0 once the child exists; bind errors were already
 * reported in the foreground, which is what init scripts need to see. */
static void daemonize(void)
{
    pid_t pid = fork();
    int fd;

    if (pid == -1) {
        log_errno(LOG_ERROR, errno, "fork() failed");
        exit(MS_EXIT_START);
    }
    if (pid > 0) {
        _exit(0);
    }
    setsid();
    fd = open("/dev/null", O_RDWR);
    if (fd != -1) {
        dup2(fd, 0);
        dup2(fd, 1);
        if (ms.cfg->log.error == NULL || strcmp(ms.cfg->log.error, "stderr") == 0) {
            dup2(fd, 2);
        }
        if (fd > 2) {
            close(fd);
        }
    }
}

static int start(const char *conf, int daemon_mode, const char *pid_path);

int main(int argc, char **argv)
{
    const char *conf = NULL, *pid_arg = NULL;
    char *pid_path = NULL;
    int check = 0, daemon_mode = 0, opt, rc;
    char *errs = NULL;
    char abspath[PATH_MAX];

    /* A fixed threshold for mmap()ed blocks (glibc's default value, but no longer raised after
     * each free). libconfig grows a list 16 entries at a time; once glibc has raised the
     * threshold, a 100,000-route list lives in the heap and every growth copies it, which made
     * each reload of a large file slower than the first. mmap()ed blocks grow with mremap(). */
    (void)mallopt(M_MMAP_THRESHOLD, 128 * 1024);

    while ((opt = getopt(argc, argv, "c:tDp:Vh")) != -1) {
        switch (opt) {
        case 'c':
            conf = optarg;
            break;
        case 't':
            check = 1;
            break;
        case 'D':
            daemon_mode = 1;
            break;
        case 'p':
            pid_arg = optarg;
            break;
        case 'V':
            printf("dispatcher-master %s\n", DSP_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return MS_EXIT_CONFIG;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return MS_EXIT_CONFIG;
    }
    if (conf == NULL) {
        conf = default_config();
    }
    if (ms_config_load(conf, 1, &ms.cfg, &errs) != 0 || ms_tls_prepare(ms.cfg, &errs) != 0) {
        fprintf(stderr, "%s\n", errs);
        free(errs);
        ms_config_free(ms.cfg);
        ms_tls_cleanup();
        return MS_EXIT_CONFIG;
    }
    /* -t: what the start would fail on; both: -D with the error log on stderr. */
    if (ms_preflight(ms.cfg, pid_arg != NULL ? pid_arg : ms.cfg->pid_file, daemon_mode, check,
                     &errs) > 0) {
        fprintf(stderr, "%s\n", errs);
        free(errs);
        ms_config_free(ms.cfg);
        ms_tls_cleanup();
        return MS_EXIT_CONFIG;
    }
    if (errs != NULL) {
        fprintf(stderr, "%s\n", errs);
        free(errs);
        errs = NULL;
    }
    /* Backend names resolve before anything is served (as HAProxy's default init-addr does):
     * a name with no address at all is a configuration error, for -t as for the start. */
    if (ms_dns_resolve_all(ms.cfg, &errs) != 0) {
        fprintf(stderr, "%s\n", errs);
        free(errs);
        ms_dns_stop();
        ms_config_free(ms.cfg);
        ms_tls_cleanup();
        return MS_EXIT_CONFIG;
    }
    ms_config_drop_source(ms.cfg); /* nothing waits at start; workers need not inherit it */
    if (check) {
        size_t size;
        void *snap = ms_compile(ms.cfg, 1, &size);
        explicit_bzero(snap, size);
        free(snap);
        ms_tls_cleanup();
        ms_dns_stop();
        printf("%s: ok\n", conf);
        {
            /* Beside a running master: what a reload would change in listeners and workers. */
            char *changes = NULL;
            int running = ms_reload_preview(ms.cfg, pid_arg != NULL ? pid_arg : ms.cfg->pid_file,
                                            &changes);
            for (char *p = changes, *nl; p != NULL && *p != '\0'; p = nl + 1) {
                nl = strchr(p, '\n');
                *nl = '\0';
                printf("%s: a reload of pid %d would apply: %s\n", conf, running, p);
            }
            free(changes);
        }
        ms_config_free(ms.cfg);
        return 0;
    }
    ms.conf_path = dsp_xstrdup(realpath(conf, abspath) ? abspath : conf);
    ms.pid_fd = -1;
    if (pid_arg != NULL) {
        pid_path = dsp_xstrdup(pid_arg);
    } else if (ms.cfg->pid_file != NULL) {
        pid_path = dsp_xstrdup(ms.cfg->pid_file);
    }
    /* First of all: a master refused here has touched nothing of the one holding the lock. */
    if (pid_path != NULL && (ms.pid_fd = lock_pid_file(pid_path)) == -1) {
        free(pid_path);
        return MS_EXIT_START;
    }
    rc = start(conf, daemon_mode, pid_path);
    if (ms.pid_fd != -1 && rc != -1) {
        unlink(pid_path); /* still ours: we hold its lock */
    }
    free(pid_path);
    return rc == -1 ? MS_EXIT_START : rc;
}

/* Everything after the pid file is locked. Returns the exit code, -1 when the pid file is not
 * ours to remove (it names another live dispatcher). */
static int start(const char *conf, int daemon_mode, const char *pid_path)
{
    int rc;

    log_level = ms.cfg->log.level;
    if (log_open(ms.cfg->log.error) != 0) {
        fprintf(stderr, "%s: cannot open error log %s: %s\n", conf, ms.cfg->log.error,
                strerror(errno));
        return MS_EXIT_START;
    }
    if (resolve_user(ms.cfg) != 0) {
        return MS_EXIT_CONFIG;
    }
    ms.nworkers = ms.cfg->workers;
    if (pid_file_in_use(pid_path)) {
        return -1;
    }
    if (adm_socket_in_use(ms.cfg->admin.socket)) {
        return MS_EXIT_START;
    }
    /* SO_REUSEPORT would let us bind beside another process's listener and take half its
     * traffic: refuse, naming it. */
    for (size_t i = 0; i < ms.cfg->nlisteners; i++) {
        const struct ms_listener *l = &ms.cfg->listeners[i];
        char why[256];
        if (ms_listen_taken((const struct sockaddr *)&l->ss, l->sslen, 0, NULL, why, sizeof(why))) {
            log_error("bind() to %s failed: Address already in use: %s", l->address, why);
            return MS_EXIT_START;
        }
    }
    if (ms_bind_all() != 0) {
        return MS_EXIT_START;
    }
    if (daemon_mode) {
        daemonize();
    }
    shm_sweep_stale();
    ms.ctl = shm_ctl_create((int)getpid());
    ms.rt = shm_rt_create();
    ms.reg = ms_rt_reg_new();
    if (ms.ctl == NULL || ms.rt == NULL) {
        return MS_EXIT_START;
    }
    ms.ctl->started_at = dsp_wall_s();
    /* Before the first fork and the first publish: the rate limiter's table and its tick. */
    if (ms_rl_start() != 0) {
        return MS_EXIT_START;
    }
    /* Before the first fork: every worker must find a ticket key from its first handshake. */
    if (ms_tls_tickets_start(ms.ctl) != 0) {
        return MS_EXIT_START;
    }
    ms_redis_start();
    if (ms_dns_start() != 0) {
        return MS_EXIT_START;
    }
    if (ms_publish() != 0) {
        return MS_EXIT_START;
    }
    if (pid_path != NULL && write_pid_file(ms.pid_fd, pid_path) != 0) {
        return MS_EXIT_START;
    }
    rc = ms_run();
    free(ms.conf_path);
    if (ms.snap != NULL) {
        explicit_bzero(ms.snap, ms.snap_size);
    }
    free(ms.snap);
    ms_rt_reg_free(ms.reg);
    ms_redis_stop();
    ms_dns_stop();
    ms_config_free(ms.cfg);
    ms_tls_cleanup();
    return rc;
}
