/* dispatcher: the admin socket and admin HTTP servers inside the master (see adm.h). Every byte
 * from a client is hostile: input is bounded per connection, answers are queued and written as
 * the peer reads them (a slow reader stops its own input, never the master), connections are
 * capped in number and time. All callbacks run on the master loop, one at a time. */
#include "admin/adm.h"

#include <errno.h>
#include <fcntl.h>
#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "admin/adm_buf.h"
#include "admin/adm_cmd.h"
#include "admin/adm_render.h"
#include "common/dsp.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/net.h"

/* Admin clients at once (the master loop holds 1024 fds). Each listener has its own slots, so
 * the admin HTTP port, which anyone on an allowed address can reach, can never crowd out the
 * operator on the admin socket. */
#define UNIX_CONNS    128
#define HTTP_CONNS    128
#define MAX_CONNS     (UNIX_CONNS + HTTP_CONNS)
#define UNIX_IN_CAP   16384 /* pending command bytes */
#define HTTP_HEAD_MAX 8192
#define OUT_HIGH      (1024 * 1024) /* stop reading commands while this much is unsent */
#define UNIX_IDLE_MS  60000         /* at most; limits.idle_timeout_ms when lower */
#define HTTP_LIMIT_MS 10000         /* a whole HTTP exchange */
#define HTTP_HEAD_MS  10000         /* at most; limits.header_timeout_ms when lower */
#define LINGER_MS     2000
#define ALOG_CHECK_MS 1000

struct adm_conn {
    int fd;
    int http;        /* admin HTTP (else the line protocol) */
    int eof;         /* the peer sent everything it will send */
    int discard;     /* skipping the rest of an over-long line */
    int answered;    /* HTTP: the response is queued; close once sent */
    int lingering;   /* HTTP: write side shut, draining input until EOF */
    uint32_t events; /* what the loop watches */
    uint64_t start_ms;
    uint64_t last_ms; /* last byte read or written */
    uint64_t line_ms; /* socket: when the command line pending in <in> began */
    size_t inlen;
    size_t out_off; /* bytes of out already sent */
    struct adm_buf out;
    char *in; /* UNIX_IN_CAP or HTTP_HEAD_MAX + 1 bytes */
};

_Static_assert(UNIX_IN_CAP > ADM_LINE_MAX + 1, "a whole command line and its newline fit");

static struct {
    int unix_fd;
    int http_fd;
    char *sock_path; /* what we bound, to unlink at exit */
    char *http_addr; /* admin.http as bound */
    pid_t master_pid;
    struct adm_conn *conns[MAX_CONNS];
    uint64_t alog_checked_ms;
    int alog_warned;
    struct adm_host host;
} adm = {.unix_fd = -1, .http_fd = -1};

static void conn_close(struct adm_conn *c);

/* The live settings, asked of the master each time (they change with every publish). */
static struct adm_settings settings(void)
{
    struct adm_settings st;

    memset(&st, 0, sizeof(st));
    adm.host.settings(&st, adm.host.ctx);
    return st;
}

/* ---- connections ---------------------------------------------------------------------------- */
static void set_events(struct adm_conn *c)
{
    uint32_t want = 0;
    size_t pending = c->out.len - c->out_off;

    if (c->http) {
        if (!c->answered || c->lingering) {
            want |= EPOLLIN;
        }
    } else if (!c->eof && c->inlen < UNIX_IN_CAP && pending < OUT_HIGH) {
        want |= EPOLLIN;
    }
    if (pending > 0) {
        want |= EPOLLOUT;
    }
    if (want != c->events) {
        c->events = want;
        adm.host.rewatch(c->fd, want, adm.host.ctx);
    }
}

static void queue_line_answer(struct adm_conn *c, const char *line, size_t n)
{
    adm_cmd_exec(&c->out, line, n, &adm.host.cmd);
    adm_buf_add(&c->out, "\n", 1);
}

/* Run the complete command lines waiting in c->in, as long as the answers are being read. */
static void unix_process(struct adm_conn *c)
{
    while (c->out.len - c->out_off < OUT_HIGH) {
        char *nl = memchr(c->in, '\n', c->inlen);
        size_t used;

        if (c->discard) {
            if (nl == NULL) {
                c->inlen = 0;
                return;
            }
            c->discard = 0;
        } else if (nl != NULL) {
            queue_line_answer(c, c->in, (size_t)(nl - c->in));
        } else if (c->inlen > ADM_LINE_MAX) {
            /* Answer now, not at the newline that may never come, then skip to it. */
            adm_render_error(&c->out, ADM_LINE_TOO_LONG);
            adm_buf_add(&c->out, "\n", 1);
            c->discard = 1;
            c->inlen = 0;
            continue;
        } else {
            if (c->eof && c->inlen > 0) {
                /* A last command without its newline. */
                queue_line_answer(c, c->in, c->inlen);
                c->inlen = 0;
            }
            return;
        }
        used = (size_t)(nl - c->in) + 1;
        memmove(c->in, c->in + used, c->inlen - used);
        c->inlen -= used;
        c->line_ms = c->last_ms;
    }
}

/* Returns -1 when the connection was closed. */
static int conn_write(struct adm_conn *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return 0;
            }
            if (errno == EINTR) {
                continue;
            }
            conn_close(c);
            return -1;
        }
        c->out_off += (size_t)n;
        c->last_ms = dsp_now_ms();
    }
    adm_buf_reset(&c->out);
    c->out_off = 0;
    return 0;
}

/* ---- admin HTTP ----------------------------------------------------------------------------- */
struct http_req {
    const char *url;
    size_t url_len;
    int done;
    int origin;  /* an Origin header came: a browser, maybe on some other site's behalf */
    int in_name; /* the header-name callback's bytes so far match "origin" */
    size_t name_len;
};

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_req *r = p->data;

    if (r->url == NULL) {
        r->url = at;
    }
    r->url_len += len;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    static const char origin[] = "origin";
    struct http_req *r = p->data;

    if (r->name_len == 0) {
        r->in_name = 1;
    }
    for (size_t i = 0; i < len; i++, r->name_len++) {
        if (r->name_len >= sizeof(origin) - 1 || (at[i] | 0x20) != origin[r->name_len]) {
            r->in_name = 0;
        }
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_req *r = p->data;

    (void)at;
    (void)len;
    if (r->name_len > 0) {
        r->origin |= r->in_name && r->name_len == 6;
        r->name_len = 0;
        r->in_name = 0;
    }
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct http_req *r = p->data;

    r->done = 1;
    http_parser_pause(p, 1);
    return 1; /* no body expected */
}

static const http_parser_settings http_settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
};

static void http_respond(struct adm_conn *c, unsigned status, const char *reason, const char *ctype,
                         const struct adm_buf *body, int head_only, const char *extra)
{
    adm_buf_addf(&c->out,
                 "HTTP/1.1 %u %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-store\r\nConnection: close\r\n%s\r\n",
                 status, reason, ctype, body->len, extra ? extra : "");
    if (!head_only) {
        adm_buf_add(&c->out, body->p ? body->p : "", body->len);
    }
    c->answered = 1;
}

static void http_error(struct adm_conn *c, unsigned status, const char *reason, const char *msg,
                       const char *extra)
{
    struct adm_buf body = {0};

    adm_render_error(&body, msg);
    adm_buf_add(&body, "\n", 1);
    http_respond(c, status, reason, "application/json", &body, 0, extra);
    adm_buf_dispose(&body);
}

/* Query parameter <key> of <q>[0, qlen) ("a=1&b=2", no '?'), percent- and '+'-decoded into
 * <out>. Returns 0, or -1 when absent, too long, or not printable ASCII once decoded. */
static int query_param(const char *q, size_t qlen, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key), i = 0;

    while (i < qlen) {
        size_t end = i;
        while (end < qlen && q[end] != '&') {
            end++;
        }
        if (end - i > kl && memcmp(q + i, key, kl) == 0 && q[i + kl] == '=') {
            size_t o = 0;
            for (size_t k = i + kl + 1; k < end; k++) {
                int ch = (unsigned char)q[k];
                if (ch == '%') {
                    static const char hex[] = "0123456789abcdef";
                    const char *h1, *h2;
                    if (k + 2 >= end || q[k + 1] == '\0' || q[k + 2] == '\0') {
                        return -1;
                    }
                    h1 = strchr(hex, q[k + 1] | 0x20);
                    h2 = strchr(hex, q[k + 2] | 0x20);
                    if (h1 == NULL || h2 == NULL) {
                        return -1;
                    }
                    ch = (int)((h1 - hex) << 4 | (h2 - hex));
                    k += 2;
                } else if (ch == '+') {
                    ch = ' ';
                }
                if (ch <= 0x20 || ch >= 0x7f || o + 1 >= outlen) {
                    return -1;
                }
                out[o++] = (char)ch;
            }
            out[o] = '\0';
            return o > 0 ? 0 : -1;
        }
        i = end + 1;
    }
    return -1;
}

/* POST /api/v1/dispatcher/{backend/disable,backend/enable,circuit/reset,circuit/trip}
 * ?service=S&address=A: the admin socket's backend actions. A request with an Origin header is
 * refused: a browser page elsewhere must not be able to drive them (a plain form POST carries
 * one; curl and scripts do not). */
static void http_post(struct adm_conn *c, const struct http_req *r, const char *path, const char *q,
                      size_t qlen)
{
    static const struct {
        const char *path;
        int verb;
    } acts[] = {
        {"/api/v1/dispatcher/backend/disable", ADM_VERB_DISABLE},
        {"/api/v1/dispatcher/backend/enable", ADM_VERB_ENABLE},
        {"/api/v1/dispatcher/circuit/reset", ADM_VERB_RESET},
        {"/api/v1/dispatcher/circuit/trip", ADM_VERB_TRIP},
    };
    char svc[256], addr[512];
    struct adm_buf body = {0};
    int ok;

    for (size_t i = 0; i < sizeof(acts) / sizeof(acts[0]); i++) {
        if (strcmp(path, acts[i].path) != 0) {
            continue;
        }
        if (r->origin) {
            http_error(c, 403, "Forbidden", "cross-origin requests are refused", NULL);
            return;
        }
        if (query_param(q, qlen, "service", svc, sizeof(svc)) != 0 ||
            query_param(q, qlen, "address", addr, sizeof(addr)) != 0) {
            http_error(c, 400, "Bad Request",
                       "usage: POST ...?service=SERVICE&address=ADDRESS (percent-encoded)", NULL);
            return;
        }
        adm_cmd_backend(&body, acts[i].verb, svc, addr, &adm.host.cmd);
        ok = body.len > 10 && strncmp(body.p, "{\"ok\":true", 10) == 0;
        adm_buf_add(&body, "\n", 1);
        http_respond(c, ok ? 200 : 404, ok ? "OK" : "Not Found", "application/json", &body, 0,
                     NULL);
        adm_buf_dispose(&body);
        return;
    }
    http_error(c, 405, "Method Not Allowed", "only GET and HEAD are served here",
               "Allow: GET, HEAD\r\n");
}

static void http_handle(struct adm_conn *c, size_t headlen)
{
    static const char api[] = "/api/v1/dispatcher/";
    http_parser p;
    struct http_req r = {0};
    struct adm_buf body = {0};
    char path[256];
    size_t plen;
    int head_only;
    const char *q;

    http_parser_init(&p, HTTP_REQUEST);
    p.data = &r;
    http_parser_execute(&p, &http_settings, c->in, headlen);
    if (!r.done || (HTTP_PARSER_ERRNO(&p) != HPE_OK && HTTP_PARSER_ERRNO(&p) != HPE_PAUSED)) {
        http_error(c, 400, "Bad Request", "malformed request", NULL);
        return;
    }
    if (p.method != HTTP_GET && p.method != HTTP_HEAD && p.method != HTTP_POST) {
        http_error(c, 405, "Method Not Allowed", "only GET, HEAD and POST are served",
                   "Allow: GET, HEAD, POST\r\n");
        return;
    }
    head_only = p.method == HTTP_HEAD;
    q = memchr(r.url, '?', r.url_len);
    plen = q ? (size_t)(q - r.url) : r.url_len;
    if (plen == 0 || plen >= sizeof(path)) {
        http_error(c, 404, "Not Found", "no such resource", NULL);
        return;
    }
    memcpy(path, r.url, plen);
    path[plen] = '\0';
    if (p.method == HTTP_POST) {
        http_post(c, &r, path, q ? q + 1 : "", q ? r.url_len - plen - 1 : 0);
        return;
    }
    if (strcmp(path, "/health") == 0) {
        /* For load balancers and probes: 200 while serving, 503 degraded or draining. */
        struct adm_view v;
        char why[512] = "";
        const char *status = "serving";
        if (adm.host.draining(adm.host.ctx)) {
            status = "draining";
        } else if (adm.host.cmd.view(&v, adm.host.cmd.arg) != 0) {
            status = "starting";
        } else if (!adm_healthy(&v, why, sizeof(why))) {
            status = "degraded";
        }
        adm_buf_addf(&body, "{\"ok\":%s,\"status\":\"%s\"",
                     strcmp(status, "serving") == 0 ? "true" : "false", status);
        if (why[0] != '\0') {
            adm_buf_adds(&body, ",\"reason\":");
            adm_buf_jstrz(&body, why);
        }
        adm_buf_adds(&body, "}\n");
        if (strcmp(status, "serving") == 0) {
            http_respond(c, 200, "OK", "application/json", &body, head_only, NULL);
        } else {
            http_respond(c, 503, "Service Unavailable", "application/json", &body, head_only, NULL);
        }
    } else if (strcmp(path, "/metrics") == 0) {
        struct adm_view v;
        if (adm.host.cmd.view(&v, adm.host.cmd.arg) != 0) {
            http_error(c, 503, "Service Unavailable", "no configuration is published yet", NULL);
            return;
        }
        adm_render_metrics(&body, &v);
        if (body.overflow) {
            adm_buf_dispose(&body);
            http_error(c, 500, "Internal Server Error", "answer too large", NULL);
            return;
        }
        http_respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", &body, head_only,
                     NULL);
    } else if (strncmp(path, api, sizeof(api) - 1) == 0 &&
               adm_cmd_api(&body, path + sizeof(api) - 1, &adm.host.cmd) == 0) {
        int ok = body.len > 6 && strncmp(body.p, "{\"ok\":true", 10) == 0;
        adm_buf_add(&body, "\n", 1);
        http_respond(c, ok ? 200 : 503, ok ? "OK" : "Service Unavailable", "application/json",
                     &body, head_only, NULL);
    } else {
        http_error(c, 404, "Not Found",
                   "no such resource; see /api/v1/dispatcher/{health,"
                   "instances,routes,workers,stats,certs,fleet}, /health and /metrics",
                   NULL);
    }
    adm_buf_dispose(&body);
}

static size_t find_head_end(const char *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] == '\n' && p[i + 1] == '\n') {
            return i + 2;
        }
        if (p[i] == '\n' && i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
            return i + 3;
        }
    }
    return 0;
}

/* ---- reading -------------------------------------------------------------------------------- */
/* Returns -1 when the connection was closed. */
static int conn_read(struct adm_conn *c)
{
    char sink[4096];
    size_t cap = c->http ? HTTP_HEAD_MAX : UNIX_IN_CAP;
    char *dst;
    size_t room;
    ssize_t n;

    if (c->lingering || (c->http && c->answered)) {
        dst = sink;
        room = sizeof(sink);
    } else {
        dst = c->in + c->inlen;
        room = cap - c->inlen;
        if (room == 0) {
            return 0;
        }
    }
    n = recv(c->fd, dst, room, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return 0;
        }
        conn_close(c);
        return -1;
    }
    c->last_ms = dsp_now_ms();
    if (n == 0) {
        c->eof = 1;
        if (c->lingering || (c->http && !c->answered)) {
            conn_close(c);
            return -1;
        }
        return 0;
    }
    if (dst == sink) {
        return 0;
    }
    if (c->inlen == 0) {
        c->line_ms = c->last_ms;
    }
    c->inlen += (size_t)n;
    if (c->http) {
        size_t hl = find_head_end(c->in, c->inlen);
        if (hl > 0) {
            http_handle(c, hl);
        } else if (c->inlen >= HTTP_HEAD_MAX) {
            http_error(c, 431, "Request Header Fields Too Large", "request head too large", NULL);
        }
    }
    return 0;
}

static void on_conn(int fd, uint32_t events, void *arg)
{
    struct adm_conn *c = arg;

    (void)fd;
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (conn_read(c) != 0) {
            return;
        }
    }
    if (!c->http) {
        unix_process(c);
    }
    if (conn_write(c) != 0) {
        return;
    }
    if (!c->http) {
        /* Writing made room: answer what waited, and write that too. */
        unix_process(c);
        if (c->out.len > c->out_off && conn_write(c) != 0) {
            return;
        }
        if (c->eof && c->out.len == c->out_off && c->inlen == 0) {
            conn_close(c);
            return;
        }
    } else if (c->answered && c->out.len == c->out_off && !c->lingering) {
        /* Response out: half-close and drain so our close never turns into a reset that
         * could destroy the response in flight. */
        if (c->eof) {
            conn_close(c);
            return;
        }
        shutdown(c->fd, SHUT_WR);
        c->lingering = 1;
        c->last_ms = dsp_now_ms();
    }
    if ((events & (EPOLLHUP | EPOLLERR)) && c->out.len > c->out_off) {
        conn_close(c);
        return;
    }
    set_events(c);
}

static void conn_close(struct adm_conn *c)
{
    for (int i = 0; i < MAX_CONNS; i++) {
        if (adm.conns[i] == c) {
            adm.conns[i] = NULL;
        }
    }
    adm.host.unwatch(c->fd, adm.host.ctx);
    close(c->fd);
    adm_buf_dispose(&c->out);
    free(c->in);
    free(c);
}

static void refuse(int fd, const char *msg, int line_protocol)
{
    struct adm_buf b = {0};

    if (line_protocol) {
        adm_render_error(&b, msg);
        adm_buf_add(&b, "\n", 1);
    } else {
        adm_buf_adds(&b, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n");
    }
    if (b.p != NULL && send(fd, b.p, b.len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* best effort: the peer is being turned away anyway */
    }
    adm_buf_dispose(&b);
    close(fd);
}

/* admin.http_allow, when set, lists the only clients served (loopback ones included). */
static int http_allowed(const struct sockaddr_storage *peer)
{
    struct adm_settings st = settings();

    if (st.nhttp_allow == 0) {
        return 1;
    }
    for (size_t i = 0; i < st.nhttp_allow; i++) {
        if (net_cidr_match(&st.http_allow[i], (const struct sockaddr *)peer)) {
            return 1;
        }
    }
    return 0;
}

static void refuse_forbidden(int fd)
{
    static const char body[] = "{\"ok\":false,\"error\":\"client not in admin.http_allow\"}\n";
    char r[256];
    int n = snprintf(r, sizeof(r),
                     "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     sizeof(body) - 1, body);

    if (send(fd, r, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* best effort: the peer is being turned away anyway */
    }
    close(fd);
}

/* Is <c> doing nothing that closing it would lose: no partial command or request, nothing
 * unsent? */
static int conn_idle(const struct adm_conn *c)
{
    if (c->http) {
        return !c->answered; /* still waiting for a request head */
    }
    return c->inlen == 0 && c->out.len == c->out_off;
}

/* A slot of the socket's (or the HTTP port's) own range. When all are taken, the connection idle
 * for longest gives way: a new client (the operator's dispatcherctl, a scraper) always gets in,
 * and idle connections cannot lock it out. -1 when every one is busy. */
static int free_slot(int http)
{
    int lo = http ? UNIX_CONNS : 0, hi = http ? MAX_CONNS : UNIX_CONNS;
    struct adm_conn *victim = NULL;
    int vslot = -1;

    for (int i = lo; i < hi; i++) {
        struct adm_conn *c = adm.conns[i];
        if (c == NULL) {
            return i;
        }
        if (conn_idle(c) && (victim == NULL || c->last_ms < victim->last_ms)) {
            victim = c;
            vslot = i;
        }
    }
    if (victim != NULL) {
        conn_close(victim);
    }
    return vslot;
}

static void on_accept(int lfd, uint32_t events, void *arg)
{
    int http = arg != NULL;

    (void)events;
    for (int k = 0; k < 16; k++) {
        struct adm_conn *c;
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int slot;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd == -1) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                errno != ECONNABORTED) {
                log_errno(LOG_WARN, errno, "admin accept4() failed");
            }
            return;
        }
        if (!http) {
            struct ucred cr;
            socklen_t sl = sizeof(cr);
            if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &sl) == -1) {
                log_errno(LOG_WARN, errno, "admin socket: getsockopt(SO_PEERCRED) failed");
                close(fd);
                continue;
            }
            if (cr.uid != 0 && cr.uid != geteuid()) {
                log_warn("admin socket: refused a client with uid %d (pid %d)", (int)cr.uid,
                         (int)cr.pid);
                refuse(fd, "permission denied", 1);
                continue;
            }
        }
        if (http && !http_allowed(&peer)) {
            refuse_forbidden(fd);
            continue;
        }
        slot = free_slot(http);
        if (slot < 0) {
            refuse(fd, "too many admin connections", !http);
            continue;
        }
        c = calloc(1, sizeof(*c));
        if (c != NULL) {
            c->in = malloc(http ? HTTP_HEAD_MAX + 1 : UNIX_IN_CAP);
        }
        if (c == NULL || c->in == NULL) {
            free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->http = http;
        c->events = EPOLLIN;
        c->start_ms = c->last_ms = dsp_now_ms();
        if (adm.host.watch(fd, EPOLLIN, on_conn, c, adm.host.ctx) != 0) {
            free(c->in);
            free(c);
            refuse(fd, "too many admin connections", !http);
            continue;
        }
        adm.conns[slot] = c;
    }
}

/* ---- periodic work -------------------------------------------------------------------------- */
static int alog_prepare_path(const struct adm_settings *st, int at_start);

void adm_tick(uint64_t now)
{
    struct adm_settings st = settings();
    uint64_t head_ms = DSP_MIN(st.header_timeout_ms, (uint64_t)HTTP_HEAD_MS);
    uint64_t idle_ms = DSP_MIN(st.idle_timeout_ms, (uint64_t)UNIX_IDLE_MS);

    for (int i = 0; i < MAX_CONNS; i++) {
        struct adm_conn *c = adm.conns[i];
        if (c == NULL) {
            continue;
        }
        if (c->http && !c->answered && now - c->start_ms > head_ms) {
            /* No complete request head in time: 408 and close (a slowloris holds no slot). */
            http_error(c, 408, "Request Timeout", "request head not received in time", NULL);
            if (conn_write(c) == 0) {
                conn_close(c);
            }
            continue;
        }
        /* Socket: idle (nothing read or written) too long, or a command line trickled in
         * slower than a request head may be: a slow client holds no slot either. */
        if ((c->lingering && now - c->last_ms > LINGER_MS) ||
            (c->http && now - c->start_ms > HTTP_LIMIT_MS) ||
            (!c->http && now - c->last_ms > idle_ms) ||
            (!c->http && c->inlen > 0 && !c->discard && now - c->line_ms > head_ms)) {
            conn_close(c);
        }
    }
    /* Unprivileged workers cannot create the access log in a root-owned folder: after a
     * rotation that did not recreate it, do it for them. */
    if (st.uid != (uid_t)-1 && now - adm.alog_checked_ms >= ALOG_CHECK_MS) {
        adm.alog_checked_ms = now;
        alog_prepare_path(&st, 0);
    }
}

/* ---- paths the workers write ---------------------------------------------------------------- */
/* Make sure the access log's folder exists and the file exists, owned by the workers' user.
 * At start a failure is fatal (returns -1); later it is reported once. */
static int alog_prepare_path(const struct adm_settings *set, int at_start)
{
    const char *path = set->access_log;
    char err[512];
    struct stat st;
    int fd;

    if (path == NULL) {
        return 0;
    }
    if (!at_start && stat(path, &st) == 0) {
        return 0;
    }
    if (fs_mkdir_parents(path, err, sizeof(err)) != 0) {
        if (at_start || !adm.alog_warned) {
            log_error("access log %s: %s", path, err);
            adm.alog_warned = 1;
        }
        return -1;
    }
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK, 0644);
    if (fd == -1) {
        if (at_start || !adm.alog_warned) {
            log_errno(LOG_ERROR, errno, "cannot open access log %s", path);
            adm.alog_warned = 1;
        }
        return -1;
    }
    if (set->uid != (uid_t)-1 && fchown(fd, set->uid, set->gid) == -1) {
        log_errno(LOG_WARN, errno, "fchown(%s) for the workers' user failed", path);
    }
    close(fd);
    adm.alog_warned = 0;
    return 0;
}

static int same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

void adm_config_changed(void)
{
    struct adm_settings st = settings();

    alog_prepare_path(&st, 0);
    /* Like listeners, the admin endpoints are bound once; say so instead of pretending. */
    if (!same_str(st.socket, adm.sock_path) || !same_str(st.http, adm.http_addr)) {
        log_warn("admin socket/http changes take effect at the next restart");
    }
}

/* ---- start-up ------------------------------------------------------------------------------- */
int adm_socket_in_use(const char *path)
{
    struct sockaddr_un sa;
    struct stat st;
    int probe;

    if (path == NULL || strlen(path) >= sizeof(sa.sun_path) || lstat(path, &st) != 0 ||
        !S_ISSOCK(st.st_mode)) {
        return 0;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    /* A socket file left by a dead master is stale (connect refused); one that answers, or is
     * too busy to (EAGAIN: never wait on it), belongs to a live process. */
    probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (probe != -1 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == -1 &&
        (errno == ECONNREFUSED || errno == ENOENT)) {
        close(probe);
        return 0;
    }
    if (probe != -1) {
        close(probe);
    }
    log_error("admin socket %s is in use by another process (is a dispatcher already running?)",
              path);
    return 1;
}

static int bind_unix(const char *path, int mode)
{
    struct sockaddr_un sa;
    struct stat st;
    char err[512];
    mode_t old;
    int fd;

    if (fs_mkdir_parents(path, err, sizeof(err)) != 0) {
        log_error("admin socket %s: %s", path, err);
        return -1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        log_error("admin socket %s: path too long", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        log_errno(LOG_ERROR, errno, "socket(AF_UNIX) for the admin socket failed");
        return -1;
    }
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            log_error("admin socket %s: a file that is not a socket is in the way", path);
            close(fd);
            return -1;
        }
        if (adm_socket_in_use(path)) {
            close(fd);
            return -1;
        }
        unlink(path);
    }
    old = umask((mode_t)(0777 & ~mode));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
        int e = errno;
        umask(old);
        log_errno(LOG_ERROR, e, "bind() to admin socket %s failed", path);
        close(fd);
        return -1;
    }
    umask(old);
    if (chmod(path, (mode_t)mode) == -1) {
        log_errno(LOG_WARN, errno, "chmod(%s, %04o) failed", path, mode);
    }
    if (listen(fd, 64) == -1) {
        log_errno(LOG_ERROR, errno, "listen() on admin socket %s failed", path);
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

static int bind_http(const struct adm_settings *st)
{
    int one = 1;
    int fd = socket(st->http_ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd == -1) {
        log_errno(LOG_ERROR, errno, "socket() for admin.http %s failed", st->http);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)st->http_ss, st->http_sslen) == -1) {
        log_errno(LOG_ERROR, errno, "bind() to admin.http %s failed", st->http);
        close(fd);
        return -1;
    }
    if (listen(fd, 64) == -1) {
        log_errno(LOG_ERROR, errno, "listen() on admin.http %s failed", st->http);
        close(fd);
        return -1;
    }
    return fd;
}

/* Workers are forked from the master (which closes every fd of the master loop in them, see
 * ms_loop_child_cleanup()) and exit through exit(): only the master removes the socket file. */
static void at_exit(void)
{
    if (adm.sock_path != NULL && getpid() == adm.master_pid) {
        unlink(adm.sock_path);
    }
}

int adm_init(const struct adm_host *host)
{
    struct adm_settings st;

    adm.host = *host;
    adm.master_pid = getpid();
    st = settings();
    if (alog_prepare_path(&st, 1) != 0) {
        return -1;
    }
    if (st.socket != NULL) {
        adm.unix_fd = bind_unix(st.socket, st.socket_mode);
        if (adm.unix_fd == -1) {
            return -1;
        }
        adm.sock_path = dsp_xstrdup(st.socket);
        atexit(at_exit);
        if (adm.host.watch(adm.unix_fd, EPOLLIN, on_accept, NULL, adm.host.ctx) != 0) {
            return -1;
        }
        log_info("admin socket on %s", st.socket);
    }
    if (st.http != NULL) {
        adm.http_fd = bind_http(&st);
        if (adm.http_fd == -1) {
            return -1;
        }
        /* Any non-NULL arg marks the HTTP listener. */
        if (adm.host.watch(adm.http_fd, EPOLLIN, on_accept, &adm, adm.host.ctx) != 0) {
            return -1;
        }
        adm.http_addr = dsp_xstrdup(st.http);
        log_info("admin HTTP on %s", st.http);
    }
    return 0;
}
