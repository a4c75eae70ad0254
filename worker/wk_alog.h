/* dispatcher: the worker's access log: one line per request (JSON or combined), buffered per
 * worker and written as whole lines with O_APPEND, flushed at least every second. Writing never
 * stalls or kills the worker: a failure is reported once in the error log and lines are dropped
 * until the file works again. */
#ifndef DSP_WK_ALOG_H
#define DSP_WK_ALOG_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* What a request's line needs from its head, captured when the head is parsed (the head bytes
 * do not outlive the request's streaming). Strings are truncated to bounded lengths. */
struct wk_alog_req {
    uint16_t host_len;
    uint16_t method_len;
    uint16_t path_len;
    uint16_t ua_len;
    uint16_t ref_len;
    uint8_t http_major;
    uint8_t http_minor;
    char data[]; /* host, method, path, user agent, referer (no NULs) */
};

/* One line's fields. NULL strings are absent ("-" / null). */
struct wk_alog_entry {
    const char *client_ip;
    const struct wk_alog_req *req; /* may be NULL (request never parsed: 408, 431) */
    unsigned status;
    uint64_t duration_ms;
    uint64_t bytes_sent;
    const char *reqid;
    size_t reqid_len;
    const char *service;
    size_t service_len;
    const char *backend;
    size_t backend_len;
    const char *middleware; /* the middleware that answered the request, or NULL */
    size_t middleware_len;
    const char *reason; /* why the response was cut ("stream_idle_timeout", ...); NULL when it
                           ended normally */
    time_t wall_s;
    unsigned wall_ms;
};

#define WK_ALOG_JSON     0u
#define WK_ALOG_COMBINED 1u

/* Is access logging on for the current generation? Cheap; call per request. */
int wk_alog_enabled(void);
/* Capture the head fields (heap; NULL when logging is off or out of memory). */
struct wk_alog_req *wk_alog_capture(const char *host, size_t host_len, const char *method,
                                    size_t method_len, const char *path, size_t path_len,
                                    const char *ua, size_t ua_len, const char *ref, size_t ref_len,
                                    unsigned http_major, unsigned http_minor);
/* Queue the line for <e>. */
void wk_alog_write(const struct wk_alog_entry *e);

/* Each loop pass: adopt a changed access-log setting, flush what waited a second, retry a
 * file that could not be opened. */
void wk_alog_tick(uint64_t now_ms);
/* Are lines waiting to be written? (The loop then wakes up often enough to flush in time.) */
int wk_alog_pending(void);
/* SIGUSR1: flush, close and reopen the file (log rotation). */
void wk_alog_reopen(void);
/* Write out everything buffered (worker exit). */
void wk_alog_flush(void);

/* Format <e> as one line ending in '\n' into <buf> (pure; unit-tested). Returns its length, or
 * 0 when it does not fit in <cap>. */
size_t wk_alog_format(char *buf, size_t cap, unsigned format, const struct wk_alog_entry *e);

#endif
