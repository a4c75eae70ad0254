/* dispatcher: the HTTP/1.1 origin server the integration tests proxy to. One thread per
 * connection with blocking sockets: simple to reason about, and /sleep or /sse never hold up
 * other clients. Every body is streamed, so multi-GiB uploads and downloads cost no memory.
 *
 * Usage: dsp-testbackend -l ADDR:PORT [-n NAME]
 * Port 0 binds an ephemeral port; the bound port is printed as "PORT <n>" on the first line of
 * stdout. SIGTERM or SIGINT stops it with exit status 0.
 *
 * Endpoints (any method unless noted; every response carries "X-Backend: NAME"):
 *   /echo... and unknown paths  200, JSON: backend, method, path (full target), version,
 *                               headers [[name,value],...] in order, body_bytes, body_crc32,
 *                               body_sum, body (only when at most 64 KiB)
 *   /health                     200 "ok"
 *   /sleep?ms=N                 200 after N ms
 *   /bytes?n=N                  N bytes with Content-Length, byte i = (i * 7) % 251
 *   /chunked?n=N&chunk=K        the same bytes in chunked encoding, chunks of K bytes
 *   /upload                     JSON {"bytes":N,"sum":S,"crc32":C} for the request body
 *   /close-early                closes without answering once the head is read
 *   /garbage                    sends bytes that are not HTTP, then closes
 *   /status?code=N              answers status N (204 and 304 without body)
 *   /conn-close                 200 with "Connection: close", then closes
 *   /hop                        200 carrying hop-by-hop response headers
 *   /sse?n=N&ms=M               text/event-stream, chunked, N events M ms apart
 *   /expect                     JSON telling whether "100 Continue" was sent before the body
 *   /interim?code=N&ms=M        an interim response N (1xx, default 103, with a Link header),
 *                               then after M ms (default 100) 200 JSON {"interim":N}
 *   /stats                      JSON {"requests","connections","accepted","health"}
 *   /control?fail=N&health=N&delay=MS
 *                               changes how every other endpoint (not /stats, /control) behaves
 *                               from now on; each parameter is optional: fail=N answers status N
 *                               instead (0 = normal), health=N makes /health alone answer N
 *                               (0 = follow fail), delay=MS waits MS before each answer. Answers
 *                               JSON {"fail","health","delay"} with the settings now in force
 *   /reset-after-body           reads the whole request, then resets the connection (RST)
 * "sum" is the 64-bit sum of the byte values; "crc32" is zlib's crc32 (Python: zlib.crc32).
 * "Expect: 100-continue" is honoured on every endpoint. Counters: "requests" counts every request
 * except /stats and /health ("health" counts those); "accepted" counts accepted TCP connections;
 * "connections" counts the connections that carried at least one request other than /stats, so
 * that tests polling /stats do not disturb it. /control counts nowhere. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define TB_HEAD_MAX    65536 /* request head limit; larger heads get 431 */
#define TB_MAX_HEADERS 256
#define TB_ECHO_BODY   65536 /* /echo returns the body itself up to this size */
#define TB_IOBUF       65536
#define TB_PATTERN_LEN (251 * 256) /* whole periods of the (i * 7) % 251 pattern */

static const char *tb_name = "backend";
static atomic_ullong tb_requests;
static atomic_ullong tb_health;
static atomic_int tb_fail_code; /* /control: fail=, health=, delay= */
static atomic_int tb_health_code;
static atomic_llong tb_delay_ms;
static atomic_ullong tb_connections;
static atomic_ullong tb_accepted;
static volatile sig_atomic_t tb_stop;
static unsigned char tb_pattern[TB_PATTERN_LEN];
static uint32_t tb_crc_table[256];

/* Buffered reader over a blocking socket. buf[start..end) holds unread bytes; bytes left over
 * after one request stay for the next, which is what makes pipelining work. */
struct tb_conn {
    int fd;
    char *buf;
    size_t start, end;
};

struct tb_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct tb_req {
    char method[32];
    char target[8192];
    char version[16];
    int minor; /* HTTP/1.<minor> */
    struct tb_header headers[TB_MAX_HEADERS];
    size_t nheaders;
    int chunked;
    long long content_length; /* -1 when absent */
    int conn_close;           /* "Connection: close" */
    int conn_keepalive;       /* "Connection: keep-alive" */
    int expect_continue;
    int head;        /* method is HEAD */
    char *head_copy; /* the head bytes the header pointers point into */
};

struct tb_body {
    unsigned long long bytes;
    unsigned long long sum;
    uint32_t crc;
    char *keep; /* first TB_ECHO_BODY bytes when non-NULL */
    size_t kept;
};

/* A growable string for JSON replies. Aborts on OOM: this is a test tool. */
struct tb_str {
    char *p;
    size_t len, cap;
};

static void str_reserve(struct tb_str *s, size_t more)
{
    size_t ncap;

    if (s->len + more + 1 <= s->cap) {
        return;
    }
    ncap = s->cap ? s->cap : 1024;
    while (ncap < s->len + more + 1) {
        ncap *= 2;
    }
    s->p = realloc(s->p, ncap);
    if (s->p == NULL) {
        abort();
    }
    s->cap = ncap;
}

static void str_add(struct tb_str *s, const char *p, size_t n)
{
    str_reserve(s, n);
    memcpy(s->p + s->len, p, n);
    s->len += n;
    s->p[s->len] = '\0';
}

__attribute__((format(printf, 2, 3))) static void str_printf(struct tb_str *s, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        abort();
    }
    str_reserve(s, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(s->p + s->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    s->len += (size_t)n;
}

/* Bytes outside printable ASCII become \u00XX, so any header bytes give valid JSON. */
static void str_json(struct tb_str *s, const char *p, size_t n)
{
    size_t i;

    str_add(s, "\"", 1);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            str_add(s, esc, 2);
        } else if (c < 0x20 || c >= 0x7f) {
            str_printf(s, "\\u%04x", c);
        } else {
            str_add(s, (const char *)&c, 1);
        }
    }
    str_add(s, "\"", 1);
}

static void crc_init(void)
{
    uint32_t c;
    unsigned i, k;

    for (i = 0; i < 256; i++) {
        c = i;
        for (k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        tb_crc_table[i] = c;
    }
    for (i = 0; i < TB_PATTERN_LEN; i++) {
        tb_pattern[i] = (unsigned char)((i * 7u) % 251u);
    }
}

static void body_feed(struct tb_body *b, const char *p, size_t n)
{
    uint32_t crc = ~b->crc;
    unsigned long long sum = 0;
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        sum += c;
        crc = tb_crc_table[(crc ^ c) & 0xff] ^ (crc >> 8);
    }
    b->crc = ~crc;
    b->sum += sum;
    b->bytes += n;
    if (b->keep != NULL && b->kept < TB_ECHO_BODY) {
        size_t take = n < TB_ECHO_BODY - b->kept ? n : TB_ECHO_BODY - b->kept;
        memcpy(b->keep + b->kept, p, take);
        b->kept += take;
    }
}

/* ---- socket I/O ------------------------------------------------------------------------- */

static int write_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    ssize_t w;

    while (n > 0) {
        w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_str(int fd, const char *s)
{
    return write_all(fd, s, strlen(s));
}

/* Read more bytes into the buffer, compacting it first. Returns bytes read, 0 on EOF, -1 on
 * error or when the buffer is full. */
static ssize_t conn_fill(struct tb_conn *c)
{
    ssize_t r;

    if (c->start > 0) {
        memmove(c->buf, c->buf + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (c->end >= TB_IOBUF) {
        return -1;
    }
    do {
        r = recv(c->fd, c->buf + c->end, TB_IOBUF - c->end, 0);
    } while (r < 0 && errno == EINTR);
    if (r > 0) {
        c->end += (size_t)r;
    }
    return r;
}

/* Return a pointer to the next line (without CRLF/LF) and its length in <*len>; NULL on EOF,
 * error or a line longer than the buffer. */
static char *conn_line(struct tb_conn *c, size_t *len)
{
    char *nl, *line;

    for (;;) {
        nl = memchr(c->buf + c->start, '\n', c->end - c->start);
        if (nl != NULL) {
            line = c->buf + c->start;
            *len = (size_t)(nl - line);
            c->start += *len + 1;
            if (*len > 0 && line[*len - 1] == '\r') {
                (*len)--;
            }
            return line;
        }
        if (conn_fill(c) <= 0) {
            return NULL;
        }
    }
}

/* Consume exactly <n> bytes, feeding them to <b> (may be NULL). Returns 0 or -1. */
static int conn_take(struct tb_conn *c, unsigned long long n, struct tb_body *b)
{
    size_t avail;

    while (n > 0) {
        if (c->start == c->end) {
            c->start = c->end = 0;
            if (conn_fill(c) <= 0) {
                return -1;
            }
        }
        avail = c->end - c->start;
        if ((unsigned long long)avail > n) {
            avail = (size_t)n;
        }
        if (b != NULL) {
            body_feed(b, c->buf + c->start, avail);
        }
        c->start += avail;
        n -= avail;
    }
    return 0;
}

/* ---- request parsing -------------------------------------------------------------------- */

static int token_in_list(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok), i = 0, s, e;

    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) {
            i++;
        }
        s = i;
        while (i < n && v[i] != ',') {
            i++;
        }
        e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) {
            e--;
        }
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0) {
            return 1;
        }
    }
    return 0;
}

static int hdr_is(const struct tb_header *h, const char *name)
{
    return h->name_len == strlen(name) && strncasecmp(h->name, name, h->name_len) == 0;
}

/* Read one request head. Returns 0, 1 on a clean EOF before any byte, -1 on a read error,
 * 400 or 431 on a bad head. */
static int read_head(struct tb_conn *c, struct tb_req *r)
{
    char *end, *p, *line, *eol, *colon, *sp1, *sp2;
    size_t hlen, n;
    int have_cl = 0;

    memset(r, 0, offsetof(struct tb_req, head_copy));
    r->content_length = -1;
    for (;;) {
        /* Tolerate empty lines before a request line (RFC 9112 section 2.2). */
        while (c->end - c->start >= 2 && c->buf[c->start] == '\r' && c->buf[c->start + 1] == '\n') {
            c->start += 2;
        }
        while (c->end > c->start && c->buf[c->start] == '\n') {
            c->start++;
        }
        end = NULL;
        for (p = c->buf + c->start; p < c->buf + c->end; p++) {
            if (*p != '\n') {
                continue;
            }
            if (p + 1 < c->buf + c->end && p[1] == '\n') {
                end = p + 2;
                break;
            }
            if (p + 2 < c->buf + c->end && p[1] == '\r' && p[2] == '\n') {
                end = p + 3;
                break;
            }
        }
        if (end != NULL) {
            break;
        }
        if (c->end - c->start >= TB_HEAD_MAX - 1) {
            return 431;
        }
        {
            ssize_t got = conn_fill(c);
            if (got == 0) {
                return c->end == c->start ? 1 : -1;
            }
            if (got < 0) {
                return -1;
            }
        }
    }
    hlen = (size_t)(end - (c->buf + c->start));
    if (memchr(c->buf + c->start, '\0', hlen) != NULL) {
        return 400;
    }
    memcpy(r->head_copy, c->buf + c->start, hlen);
    r->head_copy[hlen] = '\0';
    c->start += hlen;

    line = r->head_copy;
    eol = strchr(line, '\n');
    *eol = '\0';
    if (eol > line && eol[-1] == '\r') {
        eol[-1] = '\0';
    }
    sp1 = strchr(line, ' ');
    sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (sp1 == NULL || sp2 == NULL || (size_t)(sp1 - line) >= sizeof(r->method) ||
        (size_t)(sp2 - sp1 - 1) >= sizeof(r->target) || strlen(sp2 + 1) >= sizeof(r->version) ||
        sp1 == line || sp2 == sp1 + 1) {
        return 400;
    }
    memcpy(r->method, line, (size_t)(sp1 - line));
    memcpy(r->target, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    strcpy(r->version, sp2 + 1);
    if (strncmp(r->version, "HTTP/1.", 7) != 0 || r->version[7] < '0' || r->version[7] > '9' ||
        r->version[8] != '\0') {
        return 400;
    }
    r->minor = r->version[7] - '0';
    r->head = strcmp(r->method, "HEAD") == 0;

    line = eol + 1;
    while (*line != '\0' && *line != '\r' && *line != '\n') {
        struct tb_header *h;
        char *v, *ve;

        eol = strchr(line, '\n');
        *eol = '\0';
        if (eol > line && eol[-1] == '\r') {
            eol[-1] = '\0';
        }
        colon = strchr(line, ':');
        if (colon == NULL || colon == line || r->nheaders == TB_MAX_HEADERS) {
            return colon == NULL || colon == line ? 400 : 431;
        }
        h = &r->headers[r->nheaders++];
        h->name = line;
        h->name_len = (size_t)(colon - line);
        v = colon + 1;
        while (*v == ' ' || *v == '\t') {
            v++;
        }
        ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) {
            ve--;
        }
        h->value = v;
        h->value_len = (size_t)(ve - v);

        if (hdr_is(h, "Content-Length")) {
            char *e;
            long long cl;
            errno = 0;
            cl = strtoll(h->value, &e, 10);
            if (errno != 0 || e != h->value + h->value_len || cl < 0 || h->value_len == 0 ||
                (have_cl && cl != r->content_length)) {
                return 400;
            }
            have_cl = 1;
            r->content_length = cl;
        } else if (hdr_is(h, "Transfer-Encoding")) {
            if (token_in_list(h->value, h->value_len, "chunked")) {
                r->chunked = 1;
            }
        } else if (hdr_is(h, "Connection")) {
            if (token_in_list(h->value, h->value_len, "close")) {
                r->conn_close = 1;
            }
            if (token_in_list(h->value, h->value_len, "keep-alive")) {
                r->conn_keepalive = 1;
            }
        } else if (hdr_is(h, "Expect")) {
            n = h->value_len;
            if (n == 12 && strncasecmp(h->value, "100-continue", 12) == 0) {
                r->expect_continue = 1;
            }
        }
        line = eol + 1;
    }
    if (r->chunked && have_cl) {
        return 400;
    }
    return 0;
}

/* Read the request body (Content-Length or chunked) into <b>. Sends "100 Continue" first when
 * the client asked for it. Returns 0 or -1 (connection unusable). */
static int read_body(struct tb_conn *c, struct tb_req *r, struct tb_body *b, int *sent_continue)
{
    char *line, *e;
    size_t len;
    unsigned long long sz;

    *sent_continue = 0;
    if (!r->chunked && r->content_length <= 0) {
        return 0;
    }
    if (r->expect_continue && r->minor >= 1) {
        if (write_str(c->fd, "HTTP/1.1 100 Continue\r\n\r\n") < 0) {
            return -1;
        }
        *sent_continue = 1;
    }
    if (!r->chunked) {
        return conn_take(c, (unsigned long long)r->content_length, b);
    }
    for (;;) {
        line = conn_line(c, &len);
        if (line == NULL || len == 0) {
            return -1;
        }
        line[len] = '\0'; /* overwrites the CR or LF, which conn_line consumed already */
        errno = 0;
        sz = strtoull(line, &e, 16);
        if (errno != 0 || e == line || (*e != '\0' && *e != ';' && *e != ' ' && *e != '\t')) {
            return -1;
        }
        if (sz == 0) {
            break;
        }
        if (conn_take(c, sz, b) < 0) {
            return -1;
        }
        line = conn_line(c, &len);
        if (line == NULL || len != 0) {
            return -1;
        }
    }
    /* Trailers, up to the empty line. */
    for (;;) {
        line = conn_line(c, &len);
        if (line == NULL) {
            return -1;
        }
        if (len == 0) {
            return 0;
        }
    }
}

/* Value of query parameter <key> in <target>, or <dflt>. */
static long long qparam(const char *target, const char *key, long long dflt)
{
    const char *q = strchr(target, '?');
    size_t kl = strlen(key);

    while (q != NULL) {
        q++;
        if (strncmp(q, key, kl) == 0 && q[kl] == '=') {
            return strtoll(q + kl + 1, NULL, 10);
        }
        q = strchr(q, '&');
    }
    return dflt;
}

/* Does the path of <target> (before '?') equal <p> or start with <p> when <prefix>? */
static int path_is(const char *target, const char *p, int prefix)
{
    size_t n = strlen(p), plen = strcspn(target, "?");

    if (prefix) {
        return plen >= n && strncmp(target, p, n) == 0;
    }
    return plen == n && strncmp(target, p, n) == 0;
}

static void sleep_ms(long long ms)
{
    struct timespec ts;

    if (ms <= 0) {
        return;
    }
    ts.tv_sec = (time_t)(ms / 1000);
    ts.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static const char *reason(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

/* Start a response head: status line, X-Backend and the connection header. The caller appends
 * its own headers and the blank line. */
static void head_start(struct tb_str *h, const struct tb_req *r, int code, int keep)
{
    str_printf(h, "HTTP/1.1 %d %s\r\nX-Backend: %s\r\n", code, reason(code), tb_name);
    if (!keep) {
        str_printf(h, "Connection: close\r\n");
    } else if (r->minor == 0) {
        str_printf(h, "Connection: keep-alive\r\n");
    }
}

/* Send a complete response with a Content-Length body (omitted for HEAD, 204 and 304). */
static int send_simple(int fd, const struct tb_req *r, int code, int keep, const char *ctype,
                       const char *body, size_t blen)
{
    struct tb_str h = {0};
    int rc;

    head_start(&h, r, code, keep);
    if (code != 204 && code != 304) {
        str_printf(&h, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, blen);
    }
    str_printf(&h, "\r\n");
    if (!r->head && code != 204 && code != 304) {
        str_add(&h, body, blen);
    }
    rc = write_all(fd, h.p, h.len);
    free(h.p);
    return rc;
}

/* Write <n> pattern bytes starting at pattern index <off>. */
static int send_pattern(int fd, unsigned long long off, unsigned long long n)
{
    size_t start, take;

    while (n > 0) {
        start = (size_t)(off % 251);
        take = TB_PATTERN_LEN - start;
        if ((unsigned long long)take > n) {
            take = (size_t)n;
        }
        if (write_all(fd, tb_pattern + start, take) < 0) {
            return -1;
        }
        off += take;
        n -= take;
    }
    return 0;
}

static int do_echo(int fd, const struct tb_req *r, int keep, const struct tb_body *b,
                   int sent_continue)
{
    struct tb_str j = {0};
    size_t i;
    int rc;

    str_printf(&j, "{\"backend\":");
    str_json(&j, tb_name, strlen(tb_name));
    str_printf(&j, ",\"method\":");
    str_json(&j, r->method, strlen(r->method));
    str_printf(&j, ",\"path\":");
    str_json(&j, r->target, strlen(r->target));
    str_printf(&j, ",\"version\":");
    str_json(&j, r->version, strlen(r->version));
    str_printf(&j, ",\"headers\":[");
    for (i = 0; i < r->nheaders; i++) {
        str_printf(&j, "%s[", i ? "," : "");
        str_json(&j, r->headers[i].name, r->headers[i].name_len);
        str_add(&j, ",", 1);
        str_json(&j, r->headers[i].value, r->headers[i].value_len);
        str_add(&j, "]", 1);
    }
    str_printf(&j,
               "],\"chunked\":%s,\"continue_sent\":%s,\"body_bytes\":%llu,\"body_sum\":%llu,"
               "\"body_crc32\":%lu",
               r->chunked ? "true" : "false", sent_continue ? "true" : "false", b->bytes, b->sum,
               (unsigned long)b->crc);
    if (b->keep != NULL && b->bytes <= TB_ECHO_BODY) {
        str_printf(&j, ",\"body\":");
        str_json(&j, b->keep, b->kept);
    }
    str_printf(&j, "}\n");
    rc = send_simple(fd, r, 200, keep, "application/json", j.p, j.len);
    free(j.p);
    return rc;
}

/* Handle one request. Returns 1 to keep the connection, 0 to close it. */
static int handle(struct tb_conn *c, struct tb_req *r, char *echo_buf)
{
    struct tb_body b = {0};
    struct tb_str h = {0};
    int keep, sent_continue = 0, fd = c->fd, ok, control;
    char small[256];

    keep = r->minor >= 1 ? !r->conn_close : (r->conn_keepalive && !r->conn_close);

    control = path_is(r->target, "/stats", 0) || path_is(r->target, "/control", 0);
    if (path_is(r->target, "/health", 0)) {
        atomic_fetch_add(&tb_health, 1);
    } else if (!control) {
        atomic_fetch_add(&tb_requests, 1);
    }

    if (path_is(r->target, "/close-early", 0)) {
        return 0;
    }
    if (path_is(r->target, "/garbage", 0)) {
        (void)write_str(fd, "THIS IS NOT HTTP\r\n\x01\x02\xff garbage \x7f\r\n\r\n");
        return 0;
    }

    b.keep = echo_buf;
    if (read_body(c, r, &b, &sent_continue) < 0) {
        return 0;
    }
    if (!control) {
        int code = atomic_load(&tb_fail_code);
        if (path_is(r->target, "/health", 0) && atomic_load(&tb_health_code) != 0) {
            code = atomic_load(&tb_health_code);
        }
        sleep_ms(atomic_load(&tb_delay_ms));
        if (path_is(r->target, "/reset-after-body", 0)) {
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            return 0;
        }
        if (code != 0) {
            snprintf(small, sizeof(small), "{\"status\":%d,\"forced\":true}\n", code);
            return send_simple(fd, r, code, keep, "application/json", small, strlen(small)) == 0 &&
                   keep;
        }
    }

    if (path_is(r->target, "/stats", 0)) {
        snprintf(small, sizeof(small),
                 "{\"requests\":%llu,\"connections\":%llu,\"accepted\":%llu,\"health\":%llu}\n",
                 (unsigned long long)atomic_load(&tb_requests),
                 (unsigned long long)atomic_load(&tb_connections),
                 (unsigned long long)atomic_load(&tb_accepted),
                 (unsigned long long)atomic_load(&tb_health));
        ok = send_simple(fd, r, 200, keep, "application/json", small, strlen(small)) == 0;
    } else if (path_is(r->target, "/control", 0)) {
        long long v;
        if ((v = qparam(r->target, "fail", -1)) >= 0) {
            atomic_store(&tb_fail_code, (int)v);
        }
        if ((v = qparam(r->target, "health", -1)) >= 0) {
            atomic_store(&tb_health_code, (int)v);
        }
        if ((v = qparam(r->target, "delay", -1)) >= 0) {
            atomic_store(&tb_delay_ms, v);
        }
        snprintf(small, sizeof(small), "{\"fail\":%d,\"health\":%d,\"delay\":%lld}\n",
                 atomic_load(&tb_fail_code), atomic_load(&tb_health_code),
                 (long long)atomic_load(&tb_delay_ms));
        ok = send_simple(fd, r, 200, keep, "application/json", small, strlen(small)) == 0;
    } else if (path_is(r->target, "/health", 0)) {
        ok = send_simple(fd, r, 200, keep, "text/plain", "ok", 2) == 0;
    } else if (path_is(r->target, "/sleep", 0)) {
        long long ms = qparam(r->target, "ms", 0);
        sleep_ms(ms);
        snprintf(small, sizeof(small), "{\"slept_ms\":%lld}\n", ms);
        ok = send_simple(fd, r, 200, keep, "application/json", small, strlen(small)) == 0;
    } else if (path_is(r->target, "/bytes", 0)) {
        long long n = qparam(r->target, "n", 0);
        if (n < 0) {
            n = 0;
        }
        head_start(&h, r, 200, keep);
        str_printf(&h, "Content-Type: application/octet-stream\r\nContent-Length: %lld\r\n\r\n", n);
        ok = write_all(fd, h.p, h.len) == 0 &&
             (r->head || send_pattern(fd, 0, (unsigned long long)n) == 0);
    } else if (path_is(r->target, "/chunked", 0)) {
        long long n = qparam(r->target, "n", 0), k = qparam(r->target, "chunk", 4096);
        unsigned long long off = 0, take;
        if (n < 0) {
            n = 0;
        }
        if (k <= 0) {
            k = 4096;
        }
        head_start(&h, r, 200, keep);
        str_printf(&h, "Content-Type: application/octet-stream\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n");
        ok = write_all(fd, h.p, h.len) == 0;
        while (ok && !r->head && off < (unsigned long long)n) {
            take = (unsigned long long)n - off;
            if (take > (unsigned long long)k) {
                take = (unsigned long long)k;
            }
            snprintf(small, sizeof(small), "%llx\r\n", take);
            ok = write_str(fd, small) == 0 && send_pattern(fd, off, take) == 0 &&
                 write_str(fd, "\r\n") == 0;
            off += take;
        }
        if (ok && !r->head) {
            ok = write_str(fd, "0\r\n\r\n") == 0;
        }
    } else if (path_is(r->target, "/upload", 0)) {
        snprintf(small, sizeof(small), "{\"bytes\":%llu,\"sum\":%llu,\"crc32\":%lu}\n", b.bytes,
                 b.sum, (unsigned long)b.crc);
        ok = send_simple(fd, r, 200, keep, "application/json", small, strlen(small)) == 0;
    } else if (path_is(r->target, "/status", 0)) {
        long long code = qparam(r->target, "code", 200);
        if (code < 200 || code > 599) {
            code = 200;
        }
        snprintf(small, sizeof(small), "{\"status\":%lld}\n", code);
        ok = send_simple(fd, r, (int)code, keep, "application/json", small, strlen(small)) == 0;
    } else if (path_is(r->target, "/conn-close", 0)) {
        ok = send_simple(fd, r, 200, 0, "text/plain", "closing\n", 8) == 0;
        keep = 0;
    } else if (path_is(r->target, "/hop", 0)) {
        head_start(&h, r, 200, 1);
        str_printf(&h, "Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n"
                       "Proxy-Connection: x\r\nTrailer: X\r\nX-End-To-End: kept\r\n"
                       "Content-Type: text/plain\r\nContent-Length: 4\r\n\r\n");
        if (!r->head) {
            str_add(&h, "hop\n", 4);
        }
        ok = write_all(fd, h.p, h.len) == 0;
        keep = keep && r->minor >= 1;
    } else if (path_is(r->target, "/sse", 0)) {
        long long n = qparam(r->target, "n", 3), ms = qparam(r->target, "ms", 100), i;
        head_start(&h, r, 200, keep);
        str_printf(&h, "Content-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n");
        ok = write_all(fd, h.p, h.len) == 0;
        for (i = 0; ok && !r->head && i < n; i++) {
            char ev[128], frame[160];
            int el;
            if (i > 0) {
                sleep_ms(ms);
            }
            el = snprintf(ev, sizeof(ev), "id: %lld\ndata: {\"n\":%lld}\n\n", i, i);
            snprintf(frame, sizeof(frame), "%x\r\n%s\r\n", el, ev);
            ok = write_str(fd, frame) == 0;
        }
        if (ok && !r->head) {
            ok = write_str(fd, "0\r\n\r\n") == 0;
        }
    } else if (path_is(r->target, "/interim", 0)) {
        long long code = qparam(r->target, "code", 103), ms = qparam(r->target, "ms", 100);
        if (code < 100 || code > 199 || code == 101) {
            code = 103;
        }
        snprintf(small, sizeof(small),
                 "HTTP/1.1 %lld Interim\r\nLink: </s.css>; rel=preload"
                 "\r\n\r\n",
                 code);
        ok = write_str(fd, small) == 0;
        sleep_ms(ms);
        snprintf(small, sizeof(small), "{\"interim\":%lld}\n", code);
        ok = ok && send_simple(fd, r, 200, keep, "application/json", small, strlen(small)) == 0;
    } else if (path_is(r->target, "/expect", 0)) {
        snprintf(small, sizeof(small),
                 "{\"expect\":%s,\"continue_sent\":%s,\"bytes\":%llu,\"crc32\":%lu}\n",
                 r->expect_continue ? "true" : "false", sent_continue ? "true" : "false", b.bytes,
                 (unsigned long)b.crc);
        ok = send_simple(fd, r, 200, keep, "application/json", small, strlen(small)) == 0;
    } else {
        ok = do_echo(fd, r, keep, &b, sent_continue) == 0;
    }
    free(h.p);
    return ok && keep;
}

static void *conn_main(void *arg)
{
    struct tb_conn c = {0};
    struct tb_req *r;
    char *echo_buf;
    int rc, counted = 0, one = 1;

    c.fd = (int)(intptr_t)arg;
    c.buf = malloc(TB_IOBUF + 1);
    echo_buf = malloc(TB_ECHO_BODY);
    r = malloc(sizeof(*r));
    if (c.buf == NULL || echo_buf == NULL || r == NULL) {
        goto done;
    }
    r->head_copy = malloc(TB_IOBUF + 1);
    if (r->head_copy == NULL) {
        goto done_r;
    }
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    for (;;) {
        rc = read_head(&c, r);
        if (rc == 400 || rc == 431) {
            const char *msg = rc == 400 ? "{\"error\":\"Bad request\"}\n"
                                        : "{\"error\":\"Header too large\"}\n";
            r->head = 0;
            r->minor = 1;
            (void)send_simple(c.fd, r, rc, 0, "application/json", msg, strlen(msg));
            break;
        }
        if (rc != 0) {
            break;
        }
        if (!counted && !path_is(r->target, "/stats", 0) && !path_is(r->target, "/control", 0)) {
            counted = 1;
            atomic_fetch_add(&tb_connections, 1);
        }
        if (!handle(&c, r, echo_buf)) {
            break;
        }
    }
    free(r->head_copy);
done_r:
    free(r);
done:
    free(echo_buf);
    free(c.buf);
    close(c.fd);
    return NULL;
}

static void on_signal(int sig)
{
    (void)sig;
    tb_stop = 1;
}

static int listen_on(const char *spec)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    struct addrinfo hints, *res = NULL;
    size_t hl;
    int fd, one = 1, rc;

    if (colon == NULL || (size_t)(colon - spec) >= sizeof(host)) {
        fprintf(stderr, "dsp-testbackend: bad address '%s' (want HOST:PORT)\n", spec);
        return -1;
    }
    hl = (size_t)(colon - spec);
    memcpy(host, spec, hl);
    host[hl] = '\0';
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "dsp-testbackend: getaddrinfo(%s): %s\n", spec, gai_strerror(rc));
        return -1;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("dsp-testbackend: socket");
        freeaddrinfo(res);
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        fprintf(stderr, "dsp-testbackend: bind/listen %s: %s\n", spec, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) {
        return -1;
    }
    if (ss.ss_family == AF_INET) {
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

int main(int argc, char **argv)
{
    const char *addr = NULL;
    struct sigaction sa;
    sigset_t block, waitmask;
    pthread_attr_t attr;
    pthread_t tid;
    struct pollfd pfd;
    int lfd, opt, cfd;

    while ((opt = getopt(argc, argv, "l:n:h")) != -1) {
        switch (opt) {
        case 'l':
            addr = optarg;
            break;
        case 'n':
            tb_name = optarg;
            break;
        default:
            fprintf(stderr, "usage: %s -l ADDR:PORT [-n NAME]\n", argv[0]);
            return opt == 'h' ? 0 : 1;
        }
    }
    if (addr == NULL || optind != argc) {
        fprintf(stderr, "usage: %s -l ADDR:PORT [-n NAME]\n", argv[0]);
        return 1;
    }
    crc_init();

    /* Connection threads never see SIGTERM/SIGINT; the main thread takes them in ppoll only,
     * so the flag check cannot race with going to sleep. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    pthread_sigmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);

    lfd = listen_on(addr);
    if (lfd < 0) {
        return 2;
    }
    printf("PORT %d\n", bound_port(lfd));
    fflush(stdout);

    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);

    pfd.fd = lfd;
    pfd.events = POLLIN;
    while (!tb_stop) {
        int n = ppoll(&pfd, 1, NULL, &waitmask);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("dsp-testbackend: ppoll");
            return 1;
        }
        cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN) {
                perror("dsp-testbackend: accept4");
                sleep_ms(10);
            }
            continue;
        }
        atomic_fetch_add(&tb_accepted, 1);
        if (pthread_create(&tid, &attr, conn_main, (void *)(intptr_t)cfd) != 0) {
            fprintf(stderr, "dsp-testbackend: pthread_create failed\n");
            close(cfd);
        }
    }
    close(lfd);
    return 0;
}
