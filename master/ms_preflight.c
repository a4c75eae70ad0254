/* dispatcher: host checks behind `-t` (see ms_preflight.h). Each check mirrors what the start
 * does with the path: the error log is opened in an existing folder; the access log, the pid
 * file and the admin socket get their missing folders created. */
#include "master/ms_preflight.h"

#include <errno.h>
#include <grp.h>
#include <libconfig.h>
#include <limits.h>
#include <pwd.h>
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
               path_problem(cfg->log.error, 0, why, sizeof(why)) != NULL) {
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
warnings:
    if (daemon && (cfg->log.error == NULL || strcmp(cfg->log.error, "stderr") == 0)) {
        say(&o, cfg, "log.error", 0,
            "log.error is \"stderr\" and -D detaches from the terminal: every error after "
            "start-up will be lost; set log.error to a file");
    }
    *out = o.text;
    return o.errors;
}
