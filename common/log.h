/* dispatcher: the error log. One line per event, with time, level and pid; safe to call from any
 * role. Access logging is separate (worker side). */
#ifndef DSP_LOG_H
#define DSP_LOG_H

#include <stdarg.h>

#define LOG_ERROR 0
#define LOG_WARN  1
#define LOG_INFO  2
#define LOG_DEBUG 3

extern int log_level;

/* Open (or reopen, on SIGUSR1) the error log. <path> is "stderr" (or NULL), a file path, or
 * "syslog:FACILITY:SOCKET" (FACILITY 0..23, e.g. 3 for daemon; SOCKET the syslog daemon's
 * datagram socket, usually /dev/log). Returns 0, or -1 with errno set (the previous destination
 * stays in use). */
int log_open(const char *path);
/* Set the role tag printed on each line ("master", "worker 1", ...). <tag> is copied. */
void log_set_tag(const char *tag);
/* Parse a level name (debug|info|warn|error); returns the level or -1. */
int log_level_parse(const char *name);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like log_msg with ": strerror(err)" appended. */
void log_errno(int level, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* One log line at <level> per non-empty line of <text> (NULL is fine). */
void log_lines(int level, const char *text);

/* Keep a copy of every warning logged from now on (even below log_level), e.g. to report what
 * one reload warned about to the operator who asked for it. log_capture_end() stops and returns
 * the heap text (each message on a line of its own, without time stamp; NULL if none). */
void log_capture_start(void);
char *log_capture_end(void);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)                                                                              \
    do {                                                                                           \
        if (log_level >= LOG_INFO) {                                                               \
            log_msg(LOG_INFO, __VA_ARGS__);                                                        \
        }                                                                                          \
    } while (0)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_level >= LOG_DEBUG) {                                                              \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
        }                                                                                          \
    } while (0)

#endif
