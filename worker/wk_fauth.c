/* dispatcher: forward_auth's sub-requests over pooled connections (see wk_fauth.h). */
#include "worker/wk_fauth.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/net.h"
#include "shm/shm_mw_auth.h"
#include "worker/wk_internal.h"
#include "worker/wk_mw.h"

#define FA_IN_CAP (WK_FAUTH_HEAD_MAX + WK_FAUTH_BODY_MAX)

#define FA_CONNECTING 1
#define FA_SENDING    2
#define FA_READING    3
#define FA_IDLE       4

struct wk_fauth_conn {
    struct wk_ev ev; /* WK_EV_FAUTH */
    uint8_t state;   /* FA_* */
    uint8_t readable, writable, reused, eof;
    uint8_t kick; /* the timer is a zero-delay kick to write on a pooled connection */
    struct xport xp;
    struct wk_timer timer;
    struct wk_fauth_conn *next, *prev; /* the idle list */
    char key[128];                     /* the address it is connected to */
    size_t klen;
    struct wk_fauth_wait *w;
    struct wk_fauth_target t; /* (t.addr points to key) */
    char *out;                /* the request head */
    uint32_t olen, osent;
    char *in; /* the answer: head, then the body (decoded in place when chunked) */
    uint32_t ilen;
    uint32_t hlen;    /* head length once parsed (0: not yet) */
    uint32_t parsed;  /* raw body bytes consumed */
    uint32_t dec;     /* end of the decoded body */
    uint8_t chunked;  /* body state */
    uint8_t complete; /* the answer is whole */
    struct wk_chunk ch;
    struct wk_h1_msg m;
    struct wk_h1_resp rs;
};

struct wk_fauthw {
    struct wk_fauth_conn *idle; /* most recently parked first */
    unsigned nidle, nconns;
    struct wk_fauth_stats st;
    uint64_t logged_ms; /* the last failure logged (once a second at most) */
};

static struct wk_fauthw *state(void)
{
    if (wk.fauth == NULL) {
        wk.fauth = calloc(1, sizeof(*wk.fauth));
    }
    return wk.fauth;
}

const struct wk_fauth_stats *wk_fauth_stats(void)
{
    static const struct wk_fauth_stats none;

    return wk.fauth != NULL ? &wk.fauth->st : &none;
}

/* ---- the sub-request head ----------------------------------------------------------------------
 */
static int name_is(const char *n, size_t nl, const char *want)
{
    return strlen(want) == nl && strncasecmp(n, want, nl) == 0;
}

static int skip_field(const char *n, size_t nl)
{
    static const char *const drop[] = {"host",
                                       "content-length",
                                       "transfer-encoding",
                                       "connection",
                                       "keep-alive",
                                       "upgrade",
                                       "te",
                                       "trailer",
                                       "expect",
                                       "x-real-ip",
                                       "x-forwarded-method",
                                       "x-forwarded-uri",
                                       NULL};

    for (int i = 0; drop[i] != NULL; i++) {
        if (name_is(n, nl, drop[i])) {
            return 1;
        }
    }
    return 0;
}

static int put(char *out, size_t cap, size_t *n, const char *p, size_t len)
{
    if (cap - *n < len) {
        return -1;
    }
    memcpy(out + *n, p, len);
    *n += len;
    return 0;
}

#define PUTS(s) put(out, cap, &n, s, strlen(s))

size_t wk_fauth_head(char *out, size_t cap, const struct wk_fauth_target *t, const char *path,
                     size_t plen, const char *up, size_t uplen)
{
    const char *eol = memchr(up, '\n', uplen), *sp1, *sp2, *p, *end = up + uplen;
    size_t n = 0;
    int bad = 0;

    /* "METHOD SP target SP HTTP/1.1 CRLF": the head we built ourselves. */
    if (eol == NULL || eol == up || eol[-1] != '\r' ||
        (sp1 = memchr(up, ' ', (size_t)(eol - up))) == NULL ||
        (sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1))) == NULL) {
        return 0;
    }
    bad |= PUTS("GET ") | put(out, cap, &n, path, plen) | PUTS(" HTTP/1.1\r\nHost: ");
    if (t->family == AF_UNIX) {
        bad |= PUTS("localhost");
    } else {
        bad |= put(out, cap, &n, t->addr, t->alen);
    }
    bad |= PUTS("\r\nX-Forwarded-Method: ") | put(out, cap, &n, up, (size_t)(sp1 - up)) |
           PUTS("\r\nX-Forwarded-Uri: ") | put(out, cap, &n, sp1 + 1, (size_t)(sp2 - sp1 - 1)) |
           PUTS("\r\n");
    for (p = eol + 1; p < end;) {
        const char *le = memchr(p, '\n', (size_t)(end - p)), *colon;
        size_t ll;
        if (le == NULL) {
            return 0;
        }
        ll = (size_t)(le - p) + 1;
        if (ll <= 2) {
            break; /* the blank line */
        }
        colon = memchr(p, ':', ll);
        if (colon == NULL) {
            return 0;
        }
        if (!skip_field(p, (size_t)(colon - p))) {
            bad |= put(out, cap, &n, p, ll);
        }
        p += ll;
    }
    bad |= PUTS("\r\n");
    return bad ? 0 : n;
}

/* ---- connections -------------------------------------------------------------------------------
 */
static void idle_unlink(struct wk_fauth_conn *c)
{
    struct wk_fauthw *f = wk.fauth;

    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        f->idle = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    c->next = c->prev = NULL;
    f->nidle--;
}

static void conn_close(struct wk_fauth_conn *c)
{
    if (c->state == FA_IDLE) {
        idle_unlink(c);
    }
    wk_timer_disarm(&c->timer);
    if (c->xp.fd != -1) {
        epoll_ctl(wk.epfd, EPOLL_CTL_DEL, c->xp.fd, NULL);
        xp_close(&c->xp, 0);
    }
    free(c->out);
    free(c->in);
    c->out = c->in = NULL;
    wk.fauth->nconns--;
    wk.fauth->st.conns_open = wk.fauth->nconns;
    wk_free_later(&c->ev);
}

static int conn_addr(const struct wk_fauth_target *t, struct sockaddr_storage *ss, socklen_t *sl)
{
    memset(ss, 0, sizeof(*ss));
    if (t->family == AF_UNIX) {
        return net_unix_addr(t->addr + NET_UNIX_PREFIX_LEN, t->alen - NET_UNIX_PREFIX_LEN,
                             (struct sockaddr_un *)ss, sl);
    }
    if (t->family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(t->port);
        memcpy(&s6->sin6_addr, t->ip, 16);
        *sl = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(t->port);
        memcpy(&s4->sin_addr, t->ip, 4);
        *sl = sizeof(*s4);
    }
    return 0;
}

/* A new connection to <t>, connecting (or connected: a unix socket). NULL when none can be
 * made now (the limit, descriptors, a refused unix socket count as failures at once). */
static struct wk_fauth_conn *conn_new(const struct wk_fauth_target *t)
{
    struct wk_fauthw *f = state();
    struct wk_fauth_conn *c;
    struct sockaddr_storage ss;
    struct epoll_event ev;
    socklen_t sl = 0;
    int one = 1, fd;

    if (f == NULL || f->nconns >= WK_FAUTH_MAX_CONNS || t->alen >= sizeof(c->key) ||
        conn_addr(t, &ss, &sl) != 0) {
        return NULL;
    }
    fd = socket(t->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    c->ev.kind = WK_EV_FAUTH;
    c->timer.owner = &c->ev;
    xp_init(&c->xp, fd);
    memcpy(c->key, t->addr, t->alen);
    c->klen = t->alen;
    c->t = *t;
    c->t.addr = c->key;
    if (t->family != AF_UNIX) {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    if (epoll_ctl(wk.epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
        close(fd);
        free(c);
        return NULL;
    }
    f->nconns++;
    f->st.conns_open = f->nconns;
    c->state = FA_CONNECTING;
    if (connect(fd, (struct sockaddr *)&ss, sl) == -1) {
        if (errno != EINPROGRESS) {
            c->xp.fd = fd;
            conn_close(c);
            return NULL;
        }
    } else {
        c->writable = 1;
    }
    return c;
}

static struct wk_fauth_conn *pool_take(const struct wk_fauth_target *t)
{
    struct wk_fauthw *f = wk.fauth;

    for (struct wk_fauth_conn *c = f ? f->idle : NULL; c != NULL; c = c->next) {
        if (c->klen == t->alen && memcmp(c->key, t->addr, t->alen) == 0) {
            idle_unlink(c);
            wk_timer_disarm(&c->timer);
            c->reused = 1;
            c->t.timeout_ms = t->timeout_ms;
            return c;
        }
    }
    return NULL;
}

/* Give <c> the request of <w> (the head is copied). 0, or -1 (out of memory). */
static int conn_attach(struct wk_fauth_conn *c, struct wk_fauth_wait *w, const char *head,
                       size_t hlen)
{
    uint64_t left = w->deadline > wk.now ? w->deadline - wk.now : 1;

    c->out = malloc(hlen);
    c->in = malloc(FA_IN_CAP);
    if (c->out == NULL || c->in == NULL) {
        return -1;
    }
    memcpy(c->out, head, hlen);
    c->olen = (uint32_t)hlen;
    c->osent = c->ilen = c->hlen = c->parsed = c->dec = 0;
    c->chunked = c->complete = c->eof = 0;
    c->w = w;
    w->conn = c;
    if (c->state == FA_IDLE) {
        c->state = FA_SENDING;
    }
    wk_timer_arm(&c->timer, (uint32_t)(left > 600000 ? 600000 : left));
    return 0;
}

static void conn_run(struct wk_fauth_conn *c);

/* Start <w>'s request on a pooled connection or a new one. */
static int start_on(const struct wk_fauth_target *t, const char *head, size_t hlen,
                    struct wk_fauth_wait *w, int fresh)
{
    struct wk_fauth_conn *c = fresh ? NULL : pool_take(t);

    if (c == NULL) {
        c = conn_new(t);
    } else {
        wk.fauth->st.reused++;
    }
    if (c == NULL) {
        return -1;
    }
    if (conn_attach(c, w, head, hlen) != 0) {
        c->w = NULL;
        w->conn = NULL;
        conn_close(c);
        return -1;
    }
    return 0;
}

int wk_fauth_start(const struct wk_fauth_target *t, const char *head, size_t hlen,
                   struct wk_fauth_wait *w)
{
    w->conn = NULL;
    w->deadline = wk.now + t->timeout_ms;
    if (state() == NULL || start_on(t, head, hlen, w, 0) != 0) {
        return -1;
    }
    wk.fauth->st.requests++;
    /* Nothing runs now (done() must not come before this returns): the connection's first
     * event (writable) drives it. A pooled one is already connected: its write edge is long
     * used, so it is driven from the loop's next pass through a zero timer. */
    if (w->conn->state == FA_SENDING) {
        wk_timer_arm(&w->conn->timer, 0);
        w->conn->kick = 1;
        w->conn->writable = 1;
    }
    return 0;
}

void wk_fauth_cancel(struct wk_fauth_wait *w)
{
    struct wk_fauth_conn *c = w->conn;

    if (c == NULL) {
        return;
    }
    w->conn = NULL;
    c->w = NULL;
    conn_close(c); /* its answer is pending: never reusable */
}

/* Park <c> after a complete answer, or close it. */
static void conn_release(struct wk_fauth_conn *c, int reusable)
{
    struct wk_fauthw *f = wk.fauth;

    if (!reusable || c->eof || wk.stopping || f->nidle >= WK_FAUTH_MAX_IDLE) {
        conn_close(c);
        return;
    }
    free(c->out);
    free(c->in);
    c->out = c->in = NULL;
    c->state = FA_IDLE;
    c->readable = 0;
    c->next = f->idle;
    c->prev = NULL;
    if (f->idle != NULL) {
        f->idle->prev = c;
    }
    f->idle = c;
    f->nidle++;
    wk_timer_arm(&c->timer, WK_FAUTH_IDLE_MS);
}

/* The answer is whole: hand it over, then park or close the connection. */
static void conn_done(struct wk_fauth_conn *c)
{
    struct wk_fauth_wait *w = c->w;
    struct wk_fauth_res r = {0};
    int reusable = wk_h1_keep_alive(&c->m) && c->parsed == c->ilen - c->hlen;

    wk_timer_disarm(&c->timer);
    r.status = c->rs.status;
    r.rs = &c->rs;
    r.body = c->in + c->hlen;
    r.blen = c->dec - c->hlen;
    c->w = NULL;
    c->state = FA_READING; /* (not idle while the callback runs) */
    if (w != NULL) {
        w->conn = NULL;
        w->done(w, &r);
    }
    conn_release(c, reusable);
}

/* No usable answer. A reused connection that failed before any byte of its answer is retried
 * once on a fresh one (the peer may have closed it while idle). */
static void conn_fail(struct wk_fauth_conn *c, const char *why)
{
    struct wk_fauth_wait *w = c->w;
    struct wk_fauth_res r = {0};

    c->w = NULL;
    if (w != NULL) {
        w->conn = NULL;
        if (c->reused && c->ilen == 0 && wk.now < w->deadline &&
            start_on(&c->t, c->out, c->olen, w, 1) == 0) {
            conn_close(c);
            return;
        }
        wk.fauth->st.failed++;
        r.fail = 1;
        r.why = why;
        r.status = 503;
        conn_close(c);
        w->done(w, &r);
        return;
    }
    conn_close(c);
}

/* ---- the answer ---------------------------------------------------------------------------------
 */
/* Parse what was read: 1 when the answer is complete, 0 when more is needed, -1 when it is bad
 * (with *why). */
static int parse(struct wk_fauth_conn *c, const char **why)
{
    if (c->hlen == 0) {
        size_t h = wk_h1_head_end(c->in, c->ilen, 0);
        if (h == 0) {
            /* (at the end of the stream, no more will come: never wait for it) */
            *why = c->eof ? "connection closed before the end of the response head"
                          : "response head too large";
            return c->ilen >= WK_FAUTH_HEAD_MAX || c->eof ? -1 : 0;
        }
        if (h > WK_FAUTH_HEAD_MAX || wk_h1_parse_response(&c->m, c->in, h, 0, &c->rs) != 0 ||
            c->rs.status < 200) {
            *why = "invalid response head";
            return -1;
        }
        c->hlen = c->dec = (uint32_t)h;
        if (c->m.done) {
            return 1;
        }
        c->chunked = c->rs.chunked;
        if (c->chunked) {
            wk_h1_chunk_init(&c->ch, 4096);
        }
    }
    if (c->chunked) {
        uint32_t scan = c->hlen + c->parsed;
        while (scan < c->ilen) {
            size_t used, dl;
            int r = wk_h1_chunk_parse(&c->ch, c->in + scan, c->ilen - scan, &used, &dl);
            if (r == WK_CHUNK_ERROR) {
                *why = "invalid chunked body";
                return -1;
            }
            if (r == WK_CHUNK_DATA) {
                memmove(c->in + c->dec, c->in + scan + used - dl, dl);
                c->dec += (uint32_t)dl;
            }
            scan += (uint32_t)used;
            c->parsed = scan - c->hlen;
            if (r == WK_CHUNK_DONE) {
                return 1;
            }
        }
    } else if (c->hlen + c->parsed < c->ilen || c->eof) {
        long n = 0;
        if (c->hlen + c->parsed < c->ilen) {
            n = wk_h1_body(&c->m, c->in + c->hlen + c->parsed, c->ilen - c->hlen - c->parsed);
        }
        if (n < 0) {
            *why = "invalid response body";
            return -1;
        }
        /* (Not chunked: the raw bytes are the body, nothing moves.) */
        c->parsed += (uint32_t)n;
        c->dec = c->hlen + c->parsed;
        if (c->eof && !c->m.done) {
            wk_h1_body_eof(&c->m);
        }
        if (c->m.done) {
            return 1;
        }
    }
    if (c->eof) {
        *why = "connection closed before the end of the response";
        return -1;
    }
    if (c->ilen == FA_IN_CAP) {
        *why = "response body too large";
        return -1;
    }
    return 0;
}

/* A 2xx answer needs no body: once its head is in, the rest is not waited for (the connection
 * is then closed instead of reused). */
static int good_enough(const struct wk_fauth_conn *c)
{
    return c->hlen != 0 && c->rs.status >= 200 && c->rs.status < 300;
}

/* <n> more bytes of the answer were read into c->in (0 with room left: the end of the stream).
 * 1 when the answer is complete, 0 when more is needed, -1 when there is none usable (*why). */
static int took(struct wk_fauth_conn *c, size_t n, const char **why)
{
    int r;

    if (n == 0 && c->ilen < FA_IN_CAP) {
        c->eof = 1;
        if (c->ilen == 0) {
            *why = "connection closed without a response";
            return -1;
        }
    }
    c->ilen += (uint32_t)n;
    r = parse(c, why);
    if (r < 0 && good_enough(c) && strcmp(*why, "response body too large") == 0) {
        c->eof = 1; /* (closed after: the rest of the body is not read) */
        c->dec = c->hlen;
        return 1;
    }
    return r;
}

static void conn_read(struct wk_fauth_conn *c)
{
    const char *why = NULL;

    for (;;) {
        ssize_t n = 0;
        int r;
        if (c->ilen < FA_IN_CAP) {
            n = xp_read(&c->xp, c->in + c->ilen, FA_IN_CAP - c->ilen);
        }
        if (n == XP_WANT_READ || n == XP_WANT_WRITE) {
            c->readable = 0;
            return;
        }
        if (n == XP_ERR) {
            conn_fail(c, "connection reset");
            return;
        }
        r = took(c, (size_t)n, &why);
        if (r == 1) {
            conn_done(c);
            return;
        }
        if (r < 0) {
            conn_fail(c, why);
            return;
        }
    }
}

struct wk_fauth_conn *wk_fauth_parser_new(void)
{
    struct wk_fauth_conn *c = calloc(1, sizeof(*c));

    if (c != NULL && (c->in = malloc(FA_IN_CAP)) == NULL) {
        free(c);
        return NULL;
    }
    if (c != NULL) {
        c->xp.fd = -1;
        c->state = FA_READING;
    }
    return c;
}

int wk_fauth_parser_feed(struct wk_fauth_conn *c, const char *p, size_t n, struct wk_fauth_res *r)
{
    size_t take = n < FA_IN_CAP - c->ilen ? n : FA_IN_CAP - c->ilen;
    const char *why = NULL;
    int rc;

    memset(r, 0, sizeof(*r));
    if (c->complete) {
        return -1;
    }
    if (take > 0) {
        memcpy(c->in + c->ilen, p, take);
    }
    rc = took(c, take, &why);
    if (rc < 0) {
        c->complete = 1;
        r->fail = 1;
        r->why = why;
        r->status = 503;
    } else if (rc == 1) {
        c->complete = 1;
        r->status = c->rs.status;
        r->rs = &c->rs;
        r->body = c->in + c->hlen;
        r->blen = c->dec - c->hlen;
    }
    return rc;
}

void wk_fauth_parser_free(struct wk_fauth_conn *c)
{
    if (c != NULL) {
        free(c->in);
        free(c);
    }
}

static void conn_run(struct wk_fauth_conn *c)
{
    if (c->state == FA_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        if (!c->writable && !c->readable) {
            return;
        }
        if (getsockopt(c->xp.fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
            conn_fail(c, "connection refused");
            return;
        }
        c->state = FA_SENDING;
    }
    if (c->state == FA_SENDING) {
        while (c->osent < c->olen) {
            ssize_t n = xp_write(&c->xp, c->out + c->osent, c->olen - c->osent, 0);
            if (n == XP_WANT_WRITE || n == XP_WANT_READ) {
                c->writable = 0;
                return;
            }
            if (n < 0) {
                conn_fail(c, "connection reset");
                return;
            }
            c->osent += (uint32_t)n;
        }
        c->state = FA_READING;
        c->readable = 1; /* (an answer may already wait: one read costs nothing) */
    }
    if (c->state == FA_READING && c->readable) {
        conn_read(c);
    }
}

void wk_fauth_event(struct wk_fauth_conn *c, uint32_t events)
{
    if (c->state == FA_IDLE) {
        /* Input or a close on an idle pooled connection: it is not fit for reuse (a write edge,
         * the request's last bytes acknowledged, is no news). */
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            conn_close(c);
        }
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        c->readable = 1;
    }
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) {
        c->writable = 1;
    }
    conn_run(c);
}

void wk_fauth_timeout(struct wk_fauth_conn *c)
{
    if (c->state == FA_IDLE) {
        conn_close(c);
        return;
    }
    if (c->kick) {
        uint64_t left = c->w != NULL && c->w->deadline > wk.now ? c->w->deadline - wk.now : 1;
        c->kick = 0;
        wk_timer_arm(&c->timer, (uint32_t)(left > 600000 ? 600000 : left));
        conn_run(c);
        return;
    }
    if (c->w != NULL) {
        c->w->deadline = wk.now; /* (no retry after the time is up) */
    }
    conn_fail(c, "timed out");
}

/* ---- the forward_auth middleware (worker/wk_mw.c's hook table) --------------------------------
 */
struct fa_wait {
    struct wk_fauth_wait w; /* first: the callback gets it */
    struct wk_xchg *x;
    const struct shm_snap_hdr *s;
    const struct shm_mw_forward_auth *p;
    uint32_t name_off, name_len; /* the middleware's name (for the log) */
    uint32_t rt_slot;            /* its counters */
};

static void fa_count(uint32_t rt_slot, int k)
{
    if (rt_slot < SHM_RT_MAX_MIDDLEWARES) {
        __atomic_fetch_add(&wk.rt->mws[rt_slot].type_counters[k], 1, __ATOMIC_RELAXED);
    }
}

/* Log a failure of the auth service, at most once a second per worker. */
static void fa_log(const struct fa_wait *fw, const char *why)
{
    struct wk_fauthw *f = state();

    if (f != NULL && (f->logged_ms == 0 || wk.now - f->logged_ms >= 1000)) {
        f->logged_ms = wk.now;
        log_warn("forward_auth %.*s: auth service %s: %s: answering 503", (int)fw->name_len,
                 shm_mw_base(fw->s) + fw->name_off, shm_mw_s(fw->s, fw->p->address), why);
    }
}

/* Fields of the auth service's answer that are not passed on to the client: framing,
 * connection, and those the reply writes itself. */
static int fa_drop_answer_field(const struct wk_hdr *h)
{
    static const char *const drop[] = {"content-length",
                                       "transfer-encoding",
                                       "connection",
                                       "keep-alive",
                                       "upgrade",
                                       "te",
                                       "trailer",
                                       "proxy-connection",
                                       "content-type",
                                       "x-request-id",
                                       "date",
                                       "server",
                                       NULL};

    for (int i = 0; drop[i] != NULL; i++) {
        if (wk_hdr_is(h, drop[i], strlen(drop[i]))) {
            return 1;
        }
    }
    return 0;
}

/* 2xx: the listed fields of the answer replace whatever the client sent under those names. */
static int fa_copy(struct wk_xchg *x, const struct shm_snap_hdr *s,
                   const struct shm_mw_forward_auth *p, const struct wk_h1_resp *rs)
{
    const struct shm_str *names = shm_mw_list_at(s, p->copy_headers);

    for (uint32_t i = 0; i < p->copy_headers.n; i++) {
        const char *name = shm_mw_s(s, names[i]);
        wk_mw_req_remove(x, name);
        for (uint32_t k = 0; k < rs->hd.n; k++) {
            const struct wk_hdr *h = &rs->hd.h[k];
            if (wk_hdr_is(h, name, names[i].len) &&
                wk_mw_req_add(x, name, names[i].len, h->value, h->vlen) != 0) {
                return -1;
            }
        }
    }
    return 0;
}

/* Non-2xx: the answer goes to the client as it is (status, fields, body). */
static int fa_pass_answer(struct wk_xchg *x, const struct wk_fauth_res *r)
{
    char name[256], ctype[512];
    const char *ct = NULL;

    for (uint32_t k = 0; k < r->rs->hd.n; k++) {
        const struct wk_hdr *h = &r->rs->hd.h[k];
        if (wk_hdr_is(h, "content-type", 12)) {
            if (h->vlen >= sizeof(ctype)) {
                return -1;
            }
            memcpy(ctype, h->value, h->vlen);
            ctype[h->vlen] = '\0';
            ct = ctype;
            continue;
        }
        if (fa_drop_answer_field(h)) {
            continue;
        }
        if (h->nlen >= sizeof(name)) {
            return -1;
        }
        memcpy(name, h->name, h->nlen);
        name[h->nlen] = '\0';
        if (wk_mw_hdr(x, name, h->value, h->vlen) != 0) {
            return -1;
        }
    }
    return wk_mw_reply(x, r->status, ct != NULL ? ct : "text/plain; charset=utf-8", r->body,
                       r->blen) == WK_MW_DONE
               ? 0
               : -2;
}

static void fa_done(struct wk_fauth_wait *w, const struct wk_fauth_res *r)
{
    struct fa_wait *fw = (struct fa_wait *)(void *)w;
    struct wk_xchg *x = fw->x;
    const struct shm_snap_hdr *s = fw->s;
    const struct shm_mw_forward_auth *p = fw->p;
    int rc;

    x->tx->mw.wait = NULL;
    fa_count(fw->rt_slot, r->fail                               ? SHM_FA_TC_FAILED
                          : r->status >= 200 && r->status < 300 ? SHM_FA_TC_ALLOWED
                                                                : SHM_FA_TC_DENIED);
    if (!r->fail && r->status >= 200 && r->status < 300) {
        free(fw);
        if (fa_copy(x, s, p, r->rs) != 0) {
            if (wk_mw_error(x, 431, "Request header fields too large",
                            "Request head too large to forward") == WK_MW_DONE) {
                wk_mw_resume(x, WK_MW_DONE);
            }
            return;
        }
        wk_mw_resume(x, WK_MW_PASS);
        return;
    }
    if (r->fail) {
        fa_log(fw, r->why);
        rc = -1;
    } else {
        rc = fa_pass_answer(x, r);
        if (rc == -1) {
            fa_log(fw, "answer too large to relay");
        }
    }
    free(fw);
    if (rc == -2) {
        return; /* the client was closed */
    }
    if (rc == 0 || wk_mw_error(x, 503, "Service unavailable",
                               "Authentication service unavailable") == WK_MW_DONE) {
        wk_mw_resume(x, WK_MW_DONE);
    }
}

static int fa_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_forward_auth *p = c->params;
    struct wk_fauth_target t;
    struct fa_wait *fw;
    size_t cap = x->tx->uout.end + p->path.len + p->address.len + 256, n;
    char *head = malloc(cap);

    memset(&t, 0, sizeof(t));
    t.addr = shm_mw_s(c->s, p->address);
    t.alen = p->address.len;
    t.family = p->family;
    t.port = p->port;
    memcpy(t.ip, p->ip, 16);
    t.timeout_ms = p->timeout_ms;
    fw = malloc(sizeof(*fw));
    n = head != NULL ? wk_fauth_head(head, cap, &t, shm_mw_s(c->s, p->path), p->path.len,
                                     x->tx->uout.data + x->tx->uout.start,
                                     x->tx->uout.end - x->tx->uout.start)
                     : 0;
    if (fw == NULL || n == 0) {
        free(head);
        free(fw);
        return wk_mw_error(x, 503, "Service unavailable", "Authentication service unavailable");
    }
    fw->w.done = fa_done;
    fw->x = x;
    fw->s = c->s;
    fw->p = p;
    fw->name_off = c->m->name.off;
    fw->name_len = c->m->name.len;
    fw->rt_slot = c->m->rt_slot;
    if (wk_fauth_start(&t, head, n, &fw->w) != 0) {
        free(head);
        fa_log(fw, "no connection can be made now");
        fa_count(fw->rt_slot, SHM_FA_TC_FAILED);
        free(fw);
        return wk_mw_error(x, 503, "Service unavailable", "Authentication service unavailable");
    }
    free(head);
    x->tx->mw.wait = fw;
    return WK_MW_WAIT;
}

static void fa_cancel(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    struct fa_wait *fw = x->tx->mw.wait;

    (void)c;
    if (fw != NULL) {
        wk_fauth_cancel(&fw->w);
        free(fw);
        x->tx->mw.wait = NULL;
    }
}

const struct wk_mw_hooks wk_mw_forward_auth_hooks = {
    .needs_head = 1, /* the sub-request is made from the built upstream head */
    .request = fa_request,
    .cancel = fa_cancel,
};
