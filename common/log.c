/* dispatcher: error log writer. Lines are formatted into a stack buffer and written with a single
 * write(2) on an O_APPEND fd, so lines from several processes never interleave. */
#include "common/log.h"

#include "common/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

int log_level = LOG_INFO;
static int log_fd = 2;
static char log_tag[32] = "master";
/* log.error = "syslog": log_fd is a datagram socket connected to syslog_addr. */
static int syslog_pri = -1; /* facility * 8, or -1 when logging to a file or stderr */
static struct sockaddr_un syslog_addr;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

/* log_capture_start(): warnings are also kept here (message text only, one per line), whatever
 * log_level says, until log_capture_end(). */
#define CAPTURE_MAX (64 * 1024)
static int capture_on;
static char *capture_buf;
static size_t capture_len;

static void capture(const char *msg, size_t len)
{
    char *p;

    if (capture_len + len + 2 > CAPTURE_MAX) {
        return; /* bounded: a flood of warnings keeps the first ones */
    }
    if ((p = realloc(capture_buf, capture_len + len + 2)) == NULL) {
        return;
    }
    capture_buf = p;
    memcpy(capture_buf + capture_len, msg, len);
    capture_len += len;
    capture_buf[capture_len++] = '\n';
    capture_buf[capture_len] = '\0';
}

void log_capture_start(void)
{
    free(capture_buf);
    capture_buf = NULL;
    capture_len = 0;
    capture_on = 1;
}

char *log_capture_end(void)
{
    char *out = capture_buf;

    capture_on = 0;
    capture_buf = NULL;
    capture_len = 0;
    return out;
}

/* "syslog:FACILITY:SOCKET" (FACILITY a number 0..23): a datagram socket to the syslog daemon. */
static int open_syslog(const char *spec)
{
    const char *sock = strchr(spec + 7, ':');
    char *end;
    long fac = strtol(spec + 7, &end, 10);
    int fd;

    if (sock == NULL || end != sock || fac < 0 || fac > 23 ||
        strlen(sock + 1) >= sizeof(syslog_addr.sun_path)) {
        errno = EINVAL;
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd == -1) {
        return -1;
    }
    memset(&syslog_addr, 0, sizeof(syslog_addr));
    syslog_addr.sun_family = AF_UNIX;
    memcpy(syslog_addr.sun_path, sock + 1, strlen(sock + 1) + 1);
    if (connect(fd, (struct sockaddr *)&syslog_addr, sizeof(syslog_addr)) == -1) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (log_fd > 2) {
        close(log_fd);
    }
    log_fd = fd;
    syslog_pri = (int)fac * 8;
    return 0;
}

int log_open(const char *path)
{
    int fd;

    if (path != NULL && strncmp(path, "syslog:", 7) == 0) {
        return open_syslog(path);
    }
    if (path == NULL || strcmp(path, "stderr") == 0) {
        if (log_fd > 2) {
            close(log_fd);
        }
        log_fd = 2;
        syslog_pri = -1;
        return 0;
    }
    /* Non-blocking: a FIFO without a reader is an error (ENXIO) instead of a master stuck in
     * open(); with a reader, a full pipe drops lines rather than stalling the master. */
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0644);
    if (fd == -1 && errno == ENOENT) {
        /* Like the access log, pid file and admin socket: missing folders are created (a
         * fresh checkout has no logs/, a fresh host no /var/log/dispatcher). */
        char err[256];
        if (fs_mkdir_parents(path, err, sizeof(err)) != 0) {
            return -1;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0644);
    }
    if (fd == -1) {
        return -1;
    }
    if (log_fd > 2) {
        close(log_fd);
    }
    log_fd = fd;
    syslog_pri = -1;
    return 0;
}

/* One datagram "<PRI>Mmm dd hh:mm:ss dispatcher[PID]: [level] tag: message" (RFC 3164, as the
 * C library's syslog() sends it). A syslog daemon that restarted is reconnected once; a full or
 * absent one drops the line rather than stall the process. */
static void send_syslog(int level, const char *msg, size_t len)
{
    static const int severity[] = {3, 4, 6, 7}; /* err, warning, info, debug */
    char line[2300];
    time_t now = time(NULL);
    struct tm tm;
    size_t n;
    int r;

    localtime_r(&now, &tm);
    r = snprintf(line, sizeof(line), "<%d>", syslog_pri + severity[level]);
    n = r > 0 ? (size_t)r : 0;
    n += strftime(line + n, sizeof(line) - n, "%b %e %H:%M:%S ", &tm);
    r = snprintf(line + n, sizeof(line) - n, "dispatcher[%d]: %.*s", (int)getpid(), (int)len, msg);
    if (r > 0) {
        n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
    }
    if (send(log_fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL) == -1 &&
        (errno == ECONNREFUSED || errno == ENOTCONN)) {
        if (connect(log_fd, (struct sockaddr *)&syslog_addr, sizeof(syslog_addr)) == 0) {
            (void)send(log_fd, line, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
    }
}

void log_set_tag(const char *tag)
{
    snprintf(log_tag, sizeof(log_tag), "%s", tag);
}

int log_level_parse(const char *name)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            return (int)i;
        }
    }
    return -1;
}

__attribute__((format(printf, 3, 0))) static void do_log(int level, int err, const char *fmt,
                                                         va_list ap)
{
    char line[2048];
    struct timeval tv;
    struct tm tm;
    size_t n, msg_at;
    int r;
    int saved = errno;

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
    r = snprintf(line + n, sizeof(line) - n, ".%03dZ [%s] %s %d: ", (int)(tv.tv_usec / 1000),
                 level_names[level < 0 ? 0 : (level > 3 ? 3 : level)], log_tag, (int)getpid());
    if (r > 0) {
        n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
    }
    msg_at = n;
    r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    if (r > 0) {
        n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
    }
    if (err != 0 && n < sizeof(line) - 1) {
        r = snprintf(line + n, sizeof(line) - n, ": %s", strerror(err));
        if (r > 0) {
            n += (size_t)r < sizeof(line) - n ? (size_t)r : sizeof(line) - n - 1;
        }
    }
    if (n >= sizeof(line) - 1) {
        n = sizeof(line) - 2;
    }
    if (capture_on && level == LOG_WARN) {
        capture(line + msg_at, n - msg_at);
    }
    if (level > log_level) {
        errno = saved;
        return; /* only wanted by the capture */
    }
    if (syslog_pri >= 0) {
        /* The daemon stamps time and host; the level and role stay in the text. */
        char *body = strchr(line, '[');
        level = level < 0 ? 0 : (level > 3 ? 3 : level);
        send_syslog(level, body, n - (size_t)(body - line));
        errno = saved;
        return;
    }
    line[n++] = '\n';
    /* A failed log write has nowhere to be reported; ignore it. */
    if (write(log_fd, line, n) < 0) {
        /* nothing */
    }
    errno = saved;
}

void log_msg(int level, const char *fmt, ...)
{
    va_list ap;

    if (level > log_level && !(capture_on && level == LOG_WARN)) {
        return;
    }
    va_start(ap, fmt);
    do_log(level, 0, fmt, ap);
    va_end(ap);
}

void log_errno(int level, int err, const char *fmt, ...)
{
    va_list ap;

    if (level > log_level && !(capture_on && level == LOG_WARN)) {
        return;
    }
    va_start(ap, fmt);
    do_log(level, err, fmt, ap);
    va_end(ap);
}

void log_lines(int level, const char *text)
{
    const char *p = text;

    while (p != NULL && *p != '\0') {
        const char *nl = strchr(p, '\n');
        int n = nl != NULL ? (int)(nl - p) : (int)strlen(p);

        if (n > 0) {
            log_msg(level, "%.*s", n, p);
        }
        p = nl != NULL ? nl + 1 : NULL;
    }
}
