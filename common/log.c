/* dispatcher: error log writer. Lines are formatted into a stack buffer and written with a single
 * write(2) on an O_APPEND fd, so lines from several processes never interleave. */
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int log_level = LOG_INFO;
static int log_fd = 2;
static char log_tag[32] = "master";

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int log_open(const char *path)
{
    int fd;

    if (path == NULL || strcmp(path, "stderr") == 0) {
        if (log_fd > 2) {
            close(log_fd);
        }
        log_fd = 2;
        return 0;
    }
    /* Non-blocking: a FIFO without a reader is an error (ENXIO) instead of a master stuck in
     * open(); with a reader, a full pipe drops lines rather than stalling the master. */
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0644);
    if (fd == -1) {
        return -1;
    }
    if (log_fd > 2) {
        close(log_fd);
    }
    log_fd = fd;
    return 0;
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
    size_t n;
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

    if (level > log_level) {
        return;
    }
    va_start(ap, fmt);
    do_log(level, 0, fmt, ap);
    va_end(ap);
}

void log_errno(int level, int err, const char *fmt, ...)
{
    va_list ap;

    if (level > log_level) {
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
