/* dispatcher: the worker's access log (see wk_alog.h). Lines collect in one per-worker buffer
 * and go out in a single write(2) of whole lines on an O_APPEND descriptor, so lines of several
 * workers never interleave. The file is a regular file: writes do not wait for a reader, and a
 * failing write (full disk, file removed from under a read-only mount) only costs the lines. */
#include "worker/wk_alog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/str.h"
#include "shm/shm_snap.h"
#include "shm/shm_types.h"
#include "worker/wk_internal.h"

#define BUF_SIZE       (64 * 1024)
#define LINE_MAX_BYTES (16 * 1024) /* the longest line the capped fields can make */
#define FLUSH_MS       900         /* plus at most one 100 ms loop pass: within a second */
#define RETRY_MS       1000        /* reopen a file that could not be opened */
#define QUIET_MS       3000        /* a rotation may take this long to recreate the file */

#define CAP_HOST   255
#define CAP_METHOD 32
#define CAP_PATH   2048
#define CAP_UA     512
#define CAP_REF    512

static struct {
    int enabled;
    int fd; /* -1 while closed */
    unsigned format;
    uint64_t gen; /* generation whose setting is applied */
    char path[PATH_MAX];
    char *buf;
    size_t len;
    uint64_t nlines;   /* lines in buf */
    uint64_t first_ms; /* when buf went from empty to non-empty */
    uint64_t open_tried_ms;
    uint64_t fail_since_ms; /* opening has failed since then (0 = it works) */
    int open_reported;
    int write_failing;
    uint64_t dropped;
} al = {.fd = -1};

static char line[LINE_MAX_BYTES];

/* ---- formatting ----------------------------------------------------------------------------- */
static void field(const struct wk_alog_req *r, int which, const char **p, size_t *n)
{
    const char *d;

    if (r == NULL) {
        *p = "";
        *n = 0;
        return;
    }
    d = r->data;
    *p = d;
    *n = r->host_len;
    if (which == 0) {
        return;
    }
    d += r->host_len;
    *p = d;
    *n = r->method_len;
    if (which == 1) {
        return;
    }
    d += r->method_len;
    *p = d;
    *n = r->path_len;
    if (which == 2) {
        return;
    }
    d += r->path_len;
    *p = d;
    *n = r->ua_len;
    if (which == 3) {
        return;
    }
    d += r->ua_len;
    *p = d;
    *n = r->ref_len;
}

static void json_field(struct str_buf *sb, const char *name, const char *p, size_t n, int null_ok)
{
    str_adds(sb, ",\"");
    str_adds(sb, name);
    str_adds(sb, "\":");
    if (p == NULL && null_ok) {
        str_adds(sb, "null");
    } else {
        str_add_jstr(sb, p ? p : "", p ? n : 0);
    }
}

/* Combined-format string: quotes, backslashes and non-printable bytes as \xHH (as nginx). */
static void clf_str(struct str_buf *sb, const char *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";

    if (p == NULL || n == 0) {
        str_adds(sb, "-");
        return;
    }
    for (size_t i = 0; i < n && !sb->overflow; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f) {
            char esc[4] = {'\\', 'x', hex[ch >> 4], hex[ch & 15]};
            str_add(sb, esc, 4);
        } else {
            str_add(sb, (const char *)&p[i], 1);
        }
    }
}

size_t wk_alog_format(char *buf, size_t cap, unsigned format, const struct wk_alog_entry *e)
{
    static const char *const mon[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct str_buf sb;
    struct tm tm;
    const char *host, *method, *path, *ua, *ref;
    size_t hl, ml, pl, ul, rl;

    field(e->req, 0, &host, &hl);
    field(e->req, 1, &method, &ml);
    field(e->req, 2, &path, &pl);
    field(e->req, 3, &ua, &ul);
    field(e->req, 4, &ref, &rl);
    gmtime_r(&e->wall_s, &tm);
    str_init(&sb, buf, cap);
    if (format == WK_ALOG_COMBINED) {
        str_adds(&sb, e->client_ip ? e->client_ip : "-");
        str_addf(&sb, " - - [%02d/%s/%04d:%02d:%02d:%02d +0000] \"", tm.tm_mday,
                 mon[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        if (e->req != NULL) {
            clf_str(&sb, method, ml);
            str_adds(&sb, " ");
            clf_str(&sb, path, pl);
            str_addf(&sb, " HTTP/%u.%u", e->req->http_major, e->req->http_minor);
        } else {
            str_adds(&sb, "-");
        }
        str_addf(&sb, "\" %u %llu \"", e->status, (unsigned long long)e->bytes_sent);
        clf_str(&sb, ref, rl);
        str_adds(&sb, "\" \"");
        clf_str(&sb, ua, ul);
        str_adds(&sb, "\" \"");
        clf_str(&sb, host, hl);
        str_addf(&sb, "\" %llu \"", (unsigned long long)e->duration_ms);
        clf_str(&sb, e->reqid, e->reqid_len);
        str_adds(&sb, "\" \"");
        clf_str(&sb, e->service, e->service_len);
        str_adds(&sb, "\" \"");
        clf_str(&sb, e->backend, e->backend_len);
        if (e->reason != NULL) {
            /* Only on the line of a cut response: complete ones keep the usual fields. */
            str_adds(&sb, "\" \"");
            clf_str(&sb, e->reason, strlen(e->reason));
        }
        if (e->middleware != NULL) {
            /* Only on the line of a request a middleware answered. */
            str_adds(&sb, "\" \"middleware=");
            clf_str(&sb, e->middleware, e->middleware_len);
        }
        str_adds(&sb, "\"\n");
    } else {
        str_addf(&sb, "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03uZ\"", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, e->wall_ms % 1000);
        json_field(&sb, "client_ip", e->client_ip ? e->client_ip : "",
                   e->client_ip ? strlen(e->client_ip) : 0, 0);
        json_field(&sb, "host", host, hl, 0);
        json_field(&sb, "method", method, ml, 0);
        json_field(&sb, "path", path, pl, 0);
        if (e->req != NULL) {
            str_addf(&sb, ",\"proto\":\"HTTP/%u.%u\"", e->req->http_major, e->req->http_minor);
        }
        str_addf(&sb, ",\"status\":%u,\"duration_ms\":%llu,\"bytes_sent\":%llu", e->status,
                 (unsigned long long)e->duration_ms, (unsigned long long)e->bytes_sent);
        json_field(&sb, "user_agent", ua, ul, 0);
        json_field(&sb, "referer", ref, rl, 0);
        json_field(&sb, "request_id", e->reqid, e->reqid_len, 0);
        json_field(&sb, "service", e->service, e->service_len, 1);
        json_field(&sb, "backend", e->backend, e->backend_len, 1);
        if (e->reason != NULL) {
            json_field(&sb, "reason", e->reason, strlen(e->reason), 0);
        }
        if (e->middleware != NULL) {
            json_field(&sb, "middleware", e->middleware, e->middleware_len, 0);
        }
        str_adds(&sb, "}\n");
    }
    return sb.overflow ? 0 : sb.len;
}

/* ---- the file ------------------------------------------------------------------------------- */
static void open_file(uint64_t now)
{
    al.open_tried_ms = now;
    al.fd = open(al.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
    if (al.fd != -1) {
        if (al.open_reported) {
            log_info("access log %s opened again", al.path);
        }
        al.fail_since_ms = 0;
        al.open_reported = 0;
        return;
    }
    if (al.fail_since_ms == 0) {
        al.fail_since_ms = now ? now : 1;
    }
    /* Right after a rotation the new file may not exist yet for an unprivileged worker (the
     * master or logrotate creates it): complain only when it lasts. */
    if (!al.open_reported && now - al.fail_since_ms >= QUIET_MS) {
        log_errno(LOG_ERROR, errno, "cannot open access log %s; dropping lines until it works",
                  al.path);
        al.open_reported = 1;
    }
}

static void close_file(void)
{
    if (al.fd != -1) {
        close(al.fd);
        al.fd = -1;
    }
}

static void drop_buffer(void)
{
    al.dropped += al.nlines;
    al.len = 0;
    al.nlines = 0;
}

static void flush(uint64_t now)
{
    size_t off = 0;

    if (al.len == 0) {
        return;
    }
    if (al.fd == -1) {
        if (now - al.open_tried_ms >= RETRY_MS) {
            open_file(now);
        }
        if (al.fd == -1) {
            /* Keep the lines for a while (a rotation in progress); not forever. */
            if (al.fail_since_ms != 0 && now - al.fail_since_ms >= QUIET_MS) {
                drop_buffer();
            }
            return;
        }
    }
    while (off < al.len) {
        ssize_t n = write(al.fd, al.buf + off, al.len - off);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (!al.write_failing) {
            log_errno(LOG_ERROR, n < 0 ? errno : ENOSPC,
                      "access log %s: write failed; dropping lines until it works", al.path);
            al.write_failing = 1;
        }
        drop_buffer();
        return;
    }
    if (al.write_failing) {
        log_info("access log %s: writing again (%llu lines dropped)", al.path,
                 (unsigned long long)al.dropped);
        al.write_failing = 0;
        al.dropped = 0;
    }
    al.len = 0;
    al.nlines = 0;
}

/* Adopt the access-log setting of the generation now served. */
static void apply_config(void)
{
    const struct shm_snap_hdr *s;

    if (wk.cur == NULL || wk.cur->gen == al.gen) {
        return;
    }
    al.gen = wk.cur->gen;
    s = wk.cur->snap;
    if (s->access_log.len == 0 || s->access_log.len >= sizeof(al.path)) {
        if (al.enabled) {
            flush(wk.now);
            close_file();
        }
        al.enabled = 0;
        return;
    }
    al.format = s->access_format == SHM_ACCESS_COMBINED ? WK_ALOG_COMBINED : WK_ALOG_JSON;
    if (al.enabled && strcmp(al.path, shm_s(s, s->access_log)) == 0) {
        return;
    }
    if (al.buf == NULL) {
        al.buf = malloc(BUF_SIZE);
        if (al.buf == NULL) {
            return;
        }
    }
    flush(wk.now);
    close_file();
    memcpy(al.path, shm_s(s, s->access_log), s->access_log.len + 1);
    al.enabled = 1;
    al.fail_since_ms = 0;
    al.open_reported = 0;
    open_file(wk.now);
}

int wk_alog_enabled(void)
{
    apply_config();
    return al.enabled;
}

struct wk_alog_req *wk_alog_capture(const char *host, size_t host_len, const char *method,
                                    size_t method_len, const char *path, size_t path_len,
                                    const char *ua, size_t ua_len, const char *ref, size_t ref_len,
                                    unsigned http_major, unsigned http_minor)
{
    struct wk_alog_req *r;
    char *d;

    if (!wk_alog_enabled()) {
        return NULL;
    }
    host_len = host ? DSP_MIN(host_len, CAP_HOST) : 0;
    method_len = method ? DSP_MIN(method_len, CAP_METHOD) : 0;
    path_len = path ? DSP_MIN(path_len, CAP_PATH) : 0;
    ua_len = ua ? DSP_MIN(ua_len, CAP_UA) : 0;
    ref_len = ref ? DSP_MIN(ref_len, CAP_REF) : 0;
    r = malloc(sizeof(*r) + host_len + method_len + path_len + ua_len + ref_len);
    if (r == NULL) {
        return NULL;
    }
    r->host_len = (uint16_t)host_len;
    r->method_len = (uint16_t)method_len;
    r->path_len = (uint16_t)path_len;
    r->ua_len = (uint16_t)ua_len;
    r->ref_len = (uint16_t)ref_len;
    r->http_major = (uint8_t)(http_major > 9 ? 9 : http_major);
    r->http_minor = (uint8_t)(http_minor > 9 ? 9 : http_minor);
    d = r->data;
    if (host_len) {
        memcpy(d, host, host_len);
    }
    d += host_len;
    if (method_len) {
        memcpy(d, method, method_len);
    }
    d += method_len;
    if (path_len) {
        memcpy(d, path, path_len);
    }
    d += path_len;
    if (ua_len) {
        memcpy(d, ua, ua_len);
    }
    d += ua_len;
    if (ref_len) {
        memcpy(d, ref, ref_len);
    }
    return r;
}

void wk_alog_write(const struct wk_alog_entry *e)
{
    size_t n;

    if (!wk_alog_enabled() || al.buf == NULL) {
        return;
    }
    n = wk_alog_format(line, sizeof(line), al.format, e);
    if (n == 0) {
        return;
    }
    if (al.len + n > BUF_SIZE) {
        flush(wk.now);
        if (al.len + n > BUF_SIZE) {
            al.dropped++;
            return;
        }
    }
    if (al.len == 0) {
        al.first_ms = wk.now;
    }
    memcpy(al.buf + al.len, line, n);
    al.len += n;
    al.nlines++;
}

int wk_alog_pending(void)
{
    return al.len > 0;
}

void wk_alog_tick(uint64_t now_ms)
{
    apply_config();
    if (al.len > 0 && now_ms - al.first_ms >= FLUSH_MS) {
        flush(now_ms);
    }
}

void wk_alog_reopen(void)
{
    if (!al.enabled) {
        return;
    }
    flush(wk.now);
    close_file();
    al.fail_since_ms = 0;
    open_file(wk.now);
}

void wk_alog_flush(void)
{
    if (al.enabled) {
        flush(wk.now);
    }
}
