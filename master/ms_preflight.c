/* dispatcher: host checks behind `-t` (see ms_preflight.h). Each check mirrors what the start
 * does with the path: the error log, the access log, the pid file and the admin socket get
 * their missing folders created. */
#include "master/ms_preflight.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <libconfig.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/dsp.h"
#include "common/fs.h"
#include "master/ms_config.h"

struct out {
    char *text;
    size_t len;
    int errors;
};

__attribute__((format(printf, 5, 6))) static void
say(struct out *o, const struct ms_config *cfg, const char *key, int error, const char *fmt, ...)
{
    const config_setting_t *s = cfg->source ? config_lookup(cfg->source, key) : NULL;
    const char *file = ms_config_file_of(cfg, s ? config_setting_source_file(s) : NULL);
    char msg[PATH_MAX + 512], where[PATH_MAX + 32];
    va_list ap;
    size_t n;

    if (s != NULL && config_setting_source_line(s) > 0) {
        snprintf(where, sizeof(where), "%s:%u", file, config_setting_source_line(s));
    } else {
        snprintf(where, sizeof(where), "%s", file); /* not written: the file as a whole */
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    n = strlen(where) + strlen(msg) + 16;
    o->text = dsp_xrealloc(o->text, o->len + n);
    o->len += (size_t)snprintf(o->text + o->len, n, "%s%s: %s%s", o->len ? "\n" : "", where,
                               error ? "" : "warning: ", msg);
    o->errors += error;
}

/* Why a file at <path> cannot be created or written by this process, or NULL. With <mkdirs>,
 * missing folders are fine when the nearest existing one is a writable folder (the start
 * creates them). */
static const char *path_problem(const char *path, int mkdirs, char *why, size_t n)
{
    char dir[PATH_MAX];
    struct stat st;
    char *slash;

    if (strlen(path) >= sizeof(dir)) {
        return "path too long";
    }
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            snprintf(why, n, "%s is a directory", path);
            return why;
        }
        if (access(path, W_OK) != 0) {
            snprintf(why, n, "cannot write %s: %s", path, strerror(errno));
            return why;
        }
        return NULL;
    }
    memcpy(dir, path, strlen(path) + 1);
    for (;;) {
        slash = strrchr(dir, '/');
        if (slash == NULL) {
            return NULL; /* resolved paths are absolute; nothing to say about others */
        }
        *slash = '\0';
        if (dir[0] == '\0') {
            return NULL; /* "/" */
        }
        if (stat(dir, &st) == 0) {
            break;
        }
        if (errno == ENOTDIR) {
            continue; /* the component in the way is named further up */
        }
        if (errno != ENOENT) {
            snprintf(why, n, "cannot reach folder %s: %s", dir, strerror(errno));
            return why;
        }
        if (!mkdirs) {
            snprintf(why, n, "folder %s does not exist", dir);
            return why;
        }
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(why, n, "%s is not a directory", dir);
        return why;
    }
    if (access(dir, W_OK | X_OK) != 0) {
        snprintf(why, n, "cannot create files in folder %s: %s", dir, strerror(errno));
        return why;
    }
    return NULL;
}

/* The pid a pid file names when it is a running process, else 0. */
static pid_t pid_in_file(const char *path)
{
    char buf[32] = "";
    FILE *f = fopen(path, "re");
    long pid = 0;

    if (f != NULL) {
        if (fgets(buf, sizeof(buf), f) != NULL) {
            pid = strtol(buf, NULL, 10);
        }
        fclose(f);
    }
    return pid > 0 && pid <= INT_MAX && kill((pid_t)pid, 0) == 0 ? (pid_t)pid : 0;
}

int ms_preflight(const struct ms_config *cfg, const char *pid_file, int daemon, int host,
                 char **out)
{
    struct out o = {0};
    char why[PATH_MAX + 128];
    struct stat st;

    if (!host) {
        goto warnings;
    }
    if (cfg->user != NULL && getpwnam(cfg->user) == NULL) {
        say(&o, cfg, "user", 1, "unknown user \"%s\"", cfg->user);
    }
    if (cfg->group != NULL && getgrnam(cfg->group) == NULL) {
        say(&o, cfg, "group", 1, "unknown group \"%s\"", cfg->group);
    }
    if (cfg->log.error != NULL && strncmp(cfg->log.error, "syslog:", 7) == 0) {
        const char *sock = strchr(cfg->log.error + 7, ':') + 1;
        const char *key = cfg->source && config_lookup(cfg->source, "log.syslog_socket")
                              ? "log.syslog_socket"
                              : "log.error";
        if (stat(sock, &st) != 0) {
            say(&o, cfg, key, 1, "log.error = \"syslog\": cannot reach %s: %s", sock,
                strerror(errno));
        } else if (!S_ISSOCK(st.st_mode)) {
            say(&o, cfg, key, 1, "log.error = \"syslog\": %s is %s, not a syslog socket", sock,
                fs_type_name((unsigned)st.st_mode));
        }
    } else if (cfg->log.error != NULL && strcmp(cfg->log.error, "stderr") != 0 &&
               path_problem(cfg->log.error, 1, why, sizeof(why)) != NULL) {
        say(&o, cfg, "log.error", 1, "log.error: %s", why);
    }
    if (cfg->log.access != NULL && path_problem(cfg->log.access, 1, why, sizeof(why)) != NULL) {
        say(&o, cfg, "log.access", 1, "log.access: %s", why);
    }
    if (pid_file != NULL) {
        const char *key = cfg->pid_file && strcmp(cfg->pid_file, pid_file) == 0 ? "pid_file" : "-p";
        if (lstat(pid_file, &st) == 0 && !S_ISREG(st.st_mode)) {
            say(&o, cfg, key, 1, "pid file %s is %s, not a regular file", pid_file,
                fs_type_name((unsigned)st.st_mode));
        } else if (path_problem(pid_file, 1, why, sizeof(why)) != NULL) {
            say(&o, cfg, key, 1, "pid file: %s", why);
        } else if (strrchr(pid_file, '/') != NULL) {
            /* The file is created and, at stop, removed: its folder must be writable. */
            char dir[PATH_MAX];
            snprintf(dir, sizeof(dir), "%.*s", (int)(strrchr(pid_file, '/') - pid_file), pid_file);
            if (dir[0] != '\0' && stat(dir, &st) == 0 && access(dir, W_OK | X_OK) != 0) {
                say(&o, cfg, key, 1, "pid file: cannot create files in folder %s: %s", dir,
                    strerror(errno));
            }
        }
    }
    if (cfg->admin.socket != NULL) {
        if (lstat(cfg->admin.socket, &st) == 0) {
            if (!S_ISSOCK(st.st_mode)) {
                say(&o, cfg, "admin.socket", 1, "admin.socket %s is %s, not a socket",
                    cfg->admin.socket, fs_type_name((unsigned)st.st_mode));
            }
        } else if (path_problem(cfg->admin.socket, 1, why, sizeof(why)) != NULL) {
            say(&o, cfg, "admin.socket", 1, "admin.socket: %s", why);
        }
    }
    {
        pid_t running = pid_file != NULL ? pid_in_file(pid_file) : 0;
        for (size_t i = 0; i < cfg->nlisteners; i++) {
            const struct ms_listener *l = &cfg->listeners[i];
            char key[64];
            snprintf(key, sizeof(key), "listeners.[%zu].address", i);
            if (ms_listen_taken((const struct sockaddr *)&l->ss, l->sslen, running, cfg->path, why,
                                sizeof(why))) {
                say(&o, cfg, key, 1, "listener %s: address already in use: %s", l->address, why);
            }
        }
    }
warnings:
    if (daemon && (cfg->log.error == NULL || strcmp(cfg->log.error, "stderr") == 0)) {
        say(&o, cfg, "log.error", 0,
            "log.error is \"stderr\" and -D detaches from the terminal: every error after "
            "start-up will be lost; set log.error to a file");
    }
    *out = o.text;
    return o.errors;
}

/* ---- listening addresses held by other processes -------------------------------------------- */
#define MAX_INODES  64
#define MAX_HOLDERS 16

struct holder_set {
    unsigned long inode[MAX_INODES];
    int ours[MAX_INODES]; /* held by this process (or <also_ours>) */
    size_t n;
};

/* Parse a /proc/net/tcp{,6} address word: 8 (IPv4) or 32 (IPv6) hex digits, each group of 8
 * the native-endian 32-bit word as the kernel printed it. */
static int parse_proc_addr(const char *hex, size_t len, uint32_t *words)
{
    char part[9];

    if (len != 8 && len != 32) {
        return -1;
    }
    for (size_t w = 0; w < len / 8; w++) {
        char *end;
        memcpy(part, hex + w * 8, 8);
        part[8] = '\0';
        words[w] = (uint32_t)strtoul(part, &end, 16);
        if (*end != '\0') {
            return -1;
        }
    }
    return 0;
}

/* Add to <hs> the inodes of listening sockets in /proc/net/<file> on <port> whose address
 * overlaps: <want> (1 or 4 words; all zero = any address) or, for an IPv4 <want> read against
 * tcp6, the IPv4-mapped form and "::". Returns 0, or -1 when the file cannot be read. */
static int scan_proc_net(const char *file, int v6file, int v6want, const uint32_t *want,
                         uint16_t port, struct holder_set *hs)
{
    char path[64], line[512];
    FILE *f;
    int first = 1;

    snprintf(path, sizeof(path), "/proc/net/%s", file);
    if ((f = fopen(path, "re")) == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL && hs->n < MAX_INODES) {
        char *tok[12], *save = NULL, *colon;
        int nt = 0;
        uint32_t a[4] = {0};
        unsigned long lport, inode;
        int any, match;

        if (first) {
            first = 0; /* the header */
            continue;
        }
        for (char *t = strtok_r(line, " \t\n", &save); t != NULL && nt < 12;
             t = strtok_r(NULL, " \t\n", &save)) {
            tok[nt++] = t;
        }
        if (nt < 10 || strcmp(tok[3], "0A") != 0 || (colon = strchr(tok[1], ':')) == NULL) {
            continue; /* not a listening socket */
        }
        lport = strtoul(colon + 1, NULL, 16);
        inode = strtoul(tok[9], NULL, 10);
        if (lport != port || inode == 0 ||
            parse_proc_addr(tok[1], (size_t)(colon - tok[1]), a) != 0) {
            continue;
        }
        if (!v6file) {
            any = a[0] == 0;
            match = any || want[0] == 0 || a[0] == want[0];
        } else if (v6want) {
            any = !a[0] && !a[1] && !a[2] && !a[3];
            match = any || (!want[0] && !want[1] && !want[2] && !want[3]) ||
                    memcmp(a, want, 16) == 0;
        } else {
            /* An IPv4 address against a dual-stack IPv6 socket: "::" or ::ffff:a.b.c.d. */
            struct in6_addr m;
            memcpy(&m, a, 16);
            any = IN6_IS_ADDR_UNSPECIFIED(&m);
            match = any || (IN6_IS_ADDR_V4MAPPED(&m) && (want[0] == 0 || a[3] == want[0]));
        }
        if (match) {
            size_t k;
            for (k = 0; k < hs->n && hs->inode[k] != inode; k++) {
            }
            if (k == hs->n) {
                hs->inode[hs->n++] = inode;
            }
        }
    }
    fclose(f);
    return 0;
}

/* The socket inode an fd link names ("socket:[123]"), or 0. */
static unsigned long link_inode(int dirfd, const char *name)
{
    char target[64];
    ssize_t r = readlinkat(dirfd, name, target, sizeof(target) - 1);

    if (r <= 8 || memcmp(target, "socket:[", 8) != 0) {
        return 0;
    }
    target[r] = '\0';
    return strtoul(target + 8, NULL, 10);
}

/* Call <fn> for each fd of process <pid> that is one of the inodes of <hs>. */
static void each_held(const char *pid, struct holder_set *hs,
                      void (*fn)(struct holder_set *, size_t, void *), void *arg)
{
    char path[64];
    DIR *d;
    struct dirent *de;

    snprintf(path, sizeof(path), "/proc/%s/fd", pid);
    if ((d = opendir(path)) == NULL) {
        return;
    }
    while ((de = readdir(d)) != NULL) {
        unsigned long ino = de->d_name[0] != '.' ? link_inode(dirfd(d), de->d_name) : 0;
        for (size_t k = 0; ino != 0 && k < hs->n; k++) {
            if (hs->inode[k] == ino) {
                fn(hs, k, arg);
            }
        }
    }
    closedir(d);
}

static void mark_ours(struct holder_set *hs, size_t k, void *arg)
{
    (void)arg;
    hs->ours[k] = 1;
}

struct others {
    pid_t pid[MAX_HOLDERS];
    size_t n;
    pid_t cur;
};

static void add_other(struct holder_set *hs, size_t k, void *arg)
{
    struct others *o = arg;

    if (!hs->ours[k] && (o->n == 0 || o->pid[o->n - 1] != o->cur) && o->n < MAX_HOLDERS) {
        o->pid[o->n++] = o->cur;
    }
}

static pid_t parent_of(pid_t pid)
{
    char path[64], buf[512], *p;
    FILE *f;
    long pp = 0;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    if ((f = fopen(path, "re")) == NULL) {
        return 0;
    }
    if (fgets(buf, sizeof(buf), f) != NULL && (p = strrchr(buf, ')')) != NULL) {
        sscanf(p + 1, " %*c %ld", &pp);
    }
    fclose(f);
    return (pid_t)pp;
}

static void comm_of(pid_t pid, char *out, size_t n)
{
    char path[64];
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
    out[0] = '\0';
    if ((f = fopen(path, "re")) != NULL) {
        if (fgets(out, (int)n, f) != NULL) {
            out[strcspn(out, "\n")] = '\0';
        }
        fclose(f);
    }
    for (char *p = out; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *p = '?';
        }
    }
}

/* Whether <pid> is a dispatcher running on the configuration file <conf> (its -c argument, or
 * the default it would pick, resolved in its own working folder). */
static int runs_config(pid_t pid, const char *conf)
{
    char path[64], buf[4096], cwd[PATH_MAX], file[2 * PATH_MAX + 2], mine[PATH_MAX],
        theirs[PATH_MAX], comm[64];
    const char *arg = NULL;
    ssize_t r;
    size_t len;
    FILE *f;

    comm_of(pid, comm, sizeof(comm));
    if (conf == NULL || strncmp(comm, "dispatcher", 10) != 0 || realpath(conf, mine) == NULL) {
        return 0;
    }
    snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
    if ((f = fopen(path, "re")) == NULL) {
        return 0;
    }
    len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = '\0';
    /* Arguments are NUL-separated: "-c FILE" or "-cFILE", the last one wins (getopt). */
    for (size_t i = strlen(buf) + 1; i < len; i += strlen(buf + i) + 1) {
        if (strcmp(buf + i, "--") == 0) {
            break;
        }
        if (strcmp(buf + i, "-c") == 0 && i + 3 <= len) {
            i += 3;
            arg = buf + i;
        } else if (strncmp(buf + i, "-c", 2) == 0) {
            arg = buf + i + 2;
        }
    }
    snprintf(path, sizeof(path), "/proc/%d/cwd", (int)pid);
    if ((r = readlink(path, cwd, sizeof(cwd) - 1)) <= 0) {
        return 0;
    }
    cwd[r] = '\0';
    if (arg == NULL) {
        snprintf(file, sizeof(file), "%s/dispatcher.conf", cwd);
        if (access(file, F_OK) != 0) {
            snprintf(file, sizeof(file), "/etc/dispatcher/dispatcher.conf");
        }
    } else if (arg[0] == '/') {
        snprintf(file, sizeof(file), "%s", arg);
    } else {
        snprintf(file, sizeof(file), "%s/%s", cwd, arg);
    }
    return realpath(file, theirs) != NULL && strcmp(mine, theirs) == 0;
}

int ms_listen_taken(const struct sockaddr *sa, socklen_t salen, pid_t also_ours, const char *conf,
                    char *why, size_t n)
{
    struct holder_set hs = {0};
    struct others o = {0};
    uint32_t want[4] = {0};
    uint16_t port;
    int one = 1, fd, e, v6 = sa->sa_family == AF_INET6, foreign = 0, read_any;
    DIR *d;
    struct dirent *de;

    if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) {
        return 0;
    }
    /* The kernel's own verdict, without SO_REUSEPORT: only a listening socket (or a bound one
     * without SO_REUSEADDR) on an overlapping address refuses this bind. */
    if ((fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1) {
        return 0;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (v6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    e = bind(fd, sa, salen) == 0 ? 0 : errno;
    close(fd);
    if (e != EADDRINUSE) {
        return 0; /* free, or another problem the real bind reports with its errno */
    }
    if (v6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        memcpy(want, &s6->sin6_addr, 16);
        port = ntohs(s6->sin6_port);
        read_any = scan_proc_net("tcp6", 1, 1, want, port, &hs) == 0;
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        want[0] = s4->sin_addr.s_addr;
        port = ntohs(s4->sin_port);
        read_any = scan_proc_net("tcp", 0, 0, want, port, &hs) == 0;
        read_any |= scan_proc_net("tcp6", 1, 0, want, port, &hs) == 0;
    }
    if (!read_any) {
        return 0; /* no /proc/net: cannot tell ours from theirs; the bind decides */
    }
    each_held("self", &hs, mark_ours, NULL);
    /* The other holders, and whether every listening socket found is ours. */
    for (size_t k = 0; k < hs.n; k++) {
        foreign |= !hs.ours[k];
    }
    if (hs.n > 0 && !foreign) {
        return 0; /* our own listeners (kept over a reload) */
    }
    if ((d = opendir("/proc")) != NULL) {
        while ((de = readdir(d)) != NULL) {
            char *end;
            long pid = strtol(de->d_name, &end, 10);
            if (*end != '\0' || pid <= 0 || pid == (long)getpid()) {
                continue;
            }
            o.cur = (pid_t)pid;
            each_held(de->d_name, &hs, add_other, &o);
        }
        closedir(d);
    }
    /* Our own workers hold our listeners too (a reload that binds a listener anew while they
     * still serve the old socket): theirs are ours. */
    {
        size_t kept = 0;
        for (size_t i = 0; i < o.n; i++) {
            if (parent_of(o.pid[i]) != getpid()) {
                o.pid[kept++] = o.pid[i];
            }
        }
        if (o.n > 0 && kept == 0) {
            return 0;
        }
        o.n = kept;
    }
    if (also_ours > 0 || conf != NULL) {
        /* -t beside the running master of this configuration: its sockets (held by it and by
         * its workers) are the ones a reload keeps. It is the process the pid file names (or
         * its child), or a dispatcher started on the same configuration file. */
        size_t theirs = 0;
        for (size_t i = 0; i < o.n; i++) {
            theirs += (also_ours > 0 &&
                       (o.pid[i] == also_ours || parent_of(o.pid[i]) == also_ours)) ||
                      runs_config(o.pid[i], conf);
        }
        if (o.n > 0 && theirs == o.n) {
            return 0;
        }
        if (o.n == 0 && kill(also_ours, 0) == 0) {
            return 0; /* the holders are hidden from us; the running master is the likely one */
        }
    }
    if (o.n == 0) {
        snprintf(why, n, "another process listens there (not found in /proc)");
        return 1;
    }
    /* Name the top of the holders' tree (a master rather than its workers). */
    pid_t top = o.pid[0];
    for (size_t i = 0; i < o.n; i++) {
        pid_t pp = parent_of(o.pid[i]);
        int child = 0;
        for (size_t j = 0; j < o.n; j++) {
            child |= o.pid[j] == pp;
        }
        if (!child) {
            top = o.pid[i];
            break;
        }
    }
    char comm[64];
    comm_of(top, comm, sizeof(comm));
    if (o.n > 1) {
        snprintf(why, n, "pid %d (%s) and %zu other process%s listen there", (int)top,
                 comm[0] ? comm : "?", o.n - 1, o.n > 2 ? "es" : "");
    } else {
        snprintf(why, n, "pid %d (%s) listens there", (int)top, comm[0] ? comm : "?");
    }
    return 1;
}
