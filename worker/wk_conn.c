/* dispatcher: the HTTP/1 client side: one client connection over its transport (plain or TLS,
 * after an optional PROXY header), its request heads and bodies checked by the codec (wk_h1.h),
 * each request handed to the exchange (wk_xchg.c) that it serves through wk_h1_ops: generated
 * answers, response heads, the response bytes the exchange makes ready. Requests are handled one
 * at a time per connection (pipelined requests wait in the input buffer); bodies stream both
 * ways through bounded buffers: request bytes are forwarded raw once checked, response bytes
 * likewise (or decoded in place for HTTP/1.0 clients of a chunked response). Timers: the header,
 * idle, send and body-rate timeouts, and the exchange's phases (connect, response, tunnel). */
#include "worker/wk_internal.h"

#include <errno.h>
#include <limits.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/net.h"
#include "common/str.h"
#include "common/tls.h"
#include "shm/shm_route.h"
#include "shm/shm_snap.h"
#include "shm/shm_stats.h"
#include "worker/wk_alog.h"
#include "worker/wk_pp.h"
#include "worker/wk_tls.h"

#define LINGER_MS 2000


/* The client connection an exchange belongs to. */
static struct wk_client *xclient(struct wk_xchg *x)
{
    return (struct wk_client *)(void *)((char *)x - offsetof(struct wk_client, x));
}

/* ---- small helpers ------------------------------------------------------------------------- */
static const struct shm_snap_hdr *csnap(const struct wk_client *c)
{
    return c->x.at.gen ? c->x.at.gen->snap : wk.cur->snap;
}

/* limits.min_body_rate: a request body gets BODY_GRACE_MS, then must keep up the rate on
 * average, never banking more than BODY_WINDOW_MS of credit; checked every BODY_TICK_MS. */
#define BODY_GRACE_MS  5000
#define BODY_WINDOW_MS 5000
#define BODY_TICK_MS   1000

static int body_rate_on(const struct wk_client *c)
{
    return c->x.at.gen != NULL && c->x.at.gen->snap->limits.min_body_rate > 0;
}

/* Is the request body being read from the client (and not held up by a connect)? */
static int body_phase(const struct wk_client *c)
{
    return c->state == WK_CS_PROXY && !(c->x.tflags & (WK_T_REQ_DONE | WK_T_TUNNEL)) &&
           !(c->x.up != NULL && (c->x.up->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS)));
}

/* <n> request body bytes were read: move the body's due time on by n / min_body_rate. */
static void body_credit(struct wk_client *c, size_t n)
{
    uint64_t due = c->x.tx->body_due_ms +
                   (uint64_t)n * 1000 / c->x.at.gen->snap->limits.min_body_rate;
    uint64_t cap = wk.now + BODY_WINDOW_MS;

    if (due > cap) {
        due = cap > c->x.tx->body_due_ms ? cap : c->x.tx->body_due_ms;
    }
    c->x.tx->body_due_ms = due;
}

/* What the exchange waits for from the backend: its final response head (response_timeout_ms,
 * from the end of the request), or, once that head is relayed, the next piece of the body
 * (stream_idle_timeout_ms, re-armed on every step of progress: SSE and slow downloads). */
static uint32_t backend_wait_ms(const struct wk_client *c)
{
    const struct shm_service *svc = wk_xsvc(&c->x);

    return (c->x.tflags & WK_T_RESP_HEAD) ? svc->stream_idle_timeout_ms : svc->response_timeout_ms;
}

void wk_client_rearm(struct wk_client *c)
{
    const struct shm_snap_hdr *s = csnap(c);
    uint32_t ms;

    if (c->x.tflags & (WK_T_SEND_WAIT | WK_T_RATE_TICK)) {
        if (c->state == WK_CS_PROXY && (c->x.tflags & WK_T_SEND_WAIT) &&
            !(c->flags & WK_C_F_WRITABLE)) {
            return; /* the client still does not drain: its send timeout runs on */
        }
        if ((c->x.tflags & WK_T_RATE_TICK) && body_phase(c)) {
            c->x.tx->progress_ms = wk.now; /* the tick is armed: it checks the rate */
            return;
        }
        c->x.tflags &= ~(WK_T_SEND_WAIT | WK_T_RATE_TICK);
    }
    switch (c->state) {
    case WK_CS_IDLE:
        ms = (c->flags & WK_C_F_STARTED) ? s->limits.idle_timeout_ms : s->limits.header_timeout_ms;
        break;
    case WK_CS_HEAD:
    case WK_CS_PPHDR:
    case WK_CS_TLS:
        ms = s->limits.header_timeout_ms;
        break;
    case WK_CS_PROXY:
        if (c->x.tflags & WK_T_TUNNEL) {
            ms = s->limits.tunnel_idle_timeout_ms;
        } else if (c->x.up != NULL && (c->x.up->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS))) {
            ms = wk_xsvc(&c->x)->connect_timeout_ms;
        } else if (!(c->x.tflags & WK_T_REQ_DONE)) {
            ms = DSP_MAX(s->limits.idle_timeout_ms, backend_wait_ms(c));
            if (body_rate_on(c) && body_phase(c)) {
                /* Not re-armed per byte: the tick judges the rate, and the progress time. */
                c->x.tx->progress_ms = wk.now;
                if (c->x.tx->body_due_ms == 0) {
                    c->x.tx->body_due_ms = wk.now + BODY_GRACE_MS;
                }
                c->x.tflags |= WK_T_RATE_TICK;
                ms = BODY_TICK_MS;
            }
        } else {
            ms = backend_wait_ms(c);
        }
        break;
    case WK_CS_LINGER:
        ms = LINGER_MS;
        break;
    case WK_CS_REPLY:
        ms = s->limits.send_timeout_ms;
        break;
    default:
        ms = s->limits.idle_timeout_ms;
        break;
    }
    wk_timer_arm(&c->timer, ms ? ms : 1);
}

/* ---- generated responses -------------------------------------------------------------------- */
#define F_CLOSE 1

/* wk_h1_ops.reply: queue a complete generated response (<status>, <body> of type <ctype>). The
 * exchange dropped its upstream already. Returns 0; 1 when it does not fit the output buffer
 * (nothing queued); -1 when the client had to be closed instead. */
static int h1_reply(struct wk_xchg *x, unsigned status, const char *ctype, const char *body,
                    size_t blen, int close_it)
{
    struct wk_client *c = xclient(x);
    struct str_buf sb;

    if (!(x->tflags & WK_T_REQ_DONE)) {
        close_it = 1; /* the rest of the request body cannot be told apart from a next request */
    }
    if (wk.stopping || (c->flags & WK_C_F_CLOSE)) {
        close_it = 1;
    }
    if (wk_buf_get(&c->out, wk_head_buf_size(csnap(c))) != 0) {
        wk_client_close(c);
        return -1;
    }
    str_init(&sb, c->out.data + c->out.end, c->out.cap - c->out.end);
    str_addf(&sb, "HTTP/1.1 %u %s\r\n", status, wk_reason(status));
    if (status != 204 && status != 304) {
        str_addf(&sb, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, blen);
    }
    if (x->tx != NULL && x->tx->mw.xh_len > 0) {
        str_add(&sb, x->tx->mw.xh, x->tx->mw.xh_len); /* a middleware's fields */
    }
    if (x->tx != NULL && x->tx->reqid_len > 0) {
        str_adds(&sb, "X-Request-ID: ");
        str_add(&sb, x->tx->reqid, x->tx->reqid_len);
        str_adds(&sb, "\r\n");
    }
    if (close_it) {
        str_adds(&sb, "Connection: close\r\n");
    }
    str_adds(&sb, "\r\n");
    if (!(x->tflags & WK_T_HEAD_REQ)) {
        str_add(&sb, body, blen); /* (a HEAD gets the head alone, Content-Length included) */
    }
    if (sb.overflow) {
        return 1; /* (out.end did not move) */
    }
    c->out.end += (uint32_t)sb.len;
    if (close_it) {
        c->flags |= WK_C_F_CLOSE;
    }
    c->state = WK_CS_REPLY;
    wk_client_rearm(c);
    return 0;
}

/* Check whatever request body bytes are buffered. Only validated bytes become forwardable
 * (c->x.parsed_off): a chunk-size line or trailer line goes upstream only once it is complete and
 * valid; the bytes of an unfinished one (c->x.tx->rqc.pend) wait after parsed_off. Returns 0 to go
 * on proxying, 1 when the client was answered with an error (state REPLY), -1 when it was
 * closed. */
static int parse_body(struct wk_client *c)
{
    uint64_t maxb = c->x.at.gen->snap->limits.max_body_bytes;

    if (c->x.tflags & WK_T_REQ_DONE) {
        return 0;
    }
    if (c->x.tx->req_chunked) {
        uint32_t scan = c->x.parsed_off + c->x.tx->rqc.pend;
        while (scan < c->in.end) {
            size_t used;
            int r = wk_h1_chunk_parse(&c->x.tx->rqc, c->in.data + scan, c->in.end - scan, &used,
                                      NULL);
            if (r == WK_CHUNK_ERROR) {
                char msg[160];
                snprintf(msg, sizeof(msg), "Invalid chunked request body: %s", c->x.tx->rqc.err);
                return wk_xchg_error(&c->x, 400, "Bad request", msg, F_CLOSE) == 0 ? 1 : -1;
            }
            scan += (uint32_t)used;
            c->x.parsed_off = scan - c->x.tx->rqc.pend;
            if (r == WK_CHUNK_DONE) {
                c->x.tflags |= WK_T_REQ_DONE;
                break;
            }
        }
        c->x.tx->body_bytes = c->x.tx->rqc.total; /* announced sizes count at once */
    } else {
        uint64_t take = c->in.end - c->x.parsed_off;
        if (take > c->x.tx->req_left) {
            take = c->x.tx->req_left;
        }
        c->x.parsed_off += (uint32_t)take;
        c->x.tx->req_left -= take;
        c->x.tx->body_bytes += take;
        if (c->x.tx->req_left == 0) {
            c->x.tflags |= WK_T_REQ_DONE;
        }
    }
    if (maxb > 0 && c->x.tx->body_bytes > maxb) {
        return wk_xchg_error(&c->x, 413, "Payload too large",
                             "Request body exceeds limits.max_body_bytes", F_CLOSE) == 0
                   ? 1
                   : -1;
    }
    if (c->x.tx->mw.max_body != 0) {
        return wk_mw_body_over(&c->x, c->x.tx->body_bytes);
    }
    return 0;
}

/* The request's flags and body framing, from the checked head <rq> at c->in.start [0, hlen). */
static void take_request(struct wk_client *c, const struct wk_h1_req *rq, size_t hlen)
{
    struct wk_xchg *x = &c->x;

    if (rq->flags & WK_H1_CONTINUE) {
        x->tflags |= WK_T_CONTINUE;
    }
    if (!(rq->flags & WK_H1_KEEPALIVE)) {
        c->flags |= WK_C_F_CLOSE;
    }
    if (rq->flags & WK_H1_HEAD) {
        x->tflags |= WK_T_HEAD_REQ;
    }
    if (rq->flags & WK_H1_UPGRADE) {
        x->tflags |= WK_T_UPGRADE;
    }
    if (rq->flags & WK_H1_IDEMPOTENT) {
        x->tflags |= WK_T_IDEMPOTENT;
    }
    x->tx->req_chunked = rq->chunked;
    x->tx->req_left = 0;
    if (x->tx->req_chunked) {
        wk_h1_chunk_init(&x->tx->rqc, (uint32_t)x->at.gen->snap->limits.max_header_bytes);
    } else if (rq->clen != ULLONG_MAX) {
        x->tx->req_left = rq->clen;
    }
    if (!x->tx->req_chunked && x->tx->req_left == 0) {
        x->tflags |= WK_T_REQ_DONE;
    }
    x->body_off = x->parsed_off = x->send_off = c->in.start + (uint32_t)hlen;
}

/* Does the client wait for a 100 Continue before it sends its body? */
static int continue_owed(const struct wk_client *c)
{
    return (c->x.tflags & WK_T_CONTINUE) && !(c->x.tflags & WK_T_REQ_DONE) && c->x.vminor >= 1;
}

/* Queue the 100 Continue: 0, or -1 when the client was closed. */
static int queue_continue(struct wk_client *c)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";

    if (wk_buf_get(&c->out, wk_head_buf_size(csnap(c))) != 0) {
        wk_client_close(c);
        return -1;
    }
    memcpy(c->out.data + c->out.end, cont, sizeof(cont) - 1);
    c->out.end += sizeof(cont) - 1;
    return 0;
}

/* A complete head sits in c->in at [start, start + hlen). Parse and check it (RFC 9112 framing,
 * Host), then hand it to the exchange: route, check the body bytes that came with it, forward.
 * Returns 0, or -1 when the client was closed. */
static int process_head(struct wk_client *c, size_t hlen)
{
    struct wk_xchg *x = &c->x;
    const char *base = c->in.data + c->in.start;
    char nhost[256];
    size_t nhlen;
    unsigned st;
    int r;
    struct wk_h1_req rq; /* this head: pointers into c->in, alive for this call only */

    if (wk_xchg_begin(x) != 0) {
        wk_client_close(c);
        return -1;
    }
    c->flags |= WK_C_F_STARTED;
    st = wk_h1_parse_request(base, hlen, &rq);
    x->method = (uint8_t)rq.method;
    x->vmajor = rq.major;
    x->vminor = rq.minor;
    if (rq.flags & WK_H1_DONE) {
        x->tflags |= WK_T_REQ_DONE;
    }
    wk_xchg_identify(x, &rq.hd, base, hlen, rq.abs_host, rq.abs_hostlen);
    if (st != 0) {
        return wk_xchg_error(x, st,
                             st == 431   ? "Request header fields too large"
                             : st == 405 ? "Method not allowed"
                                         : "Bad request",
                             rq.err, F_CLOSE);
    }
    nhlen = rq.host ? shm_host_normalize(rq.host, rq.hostlen, nhost, sizeof(nhost)) : 0;
    if (rq.host != NULL && nhlen == 0) {
        return wk_xchg_error(x, 400, "Bad request", "Invalid Host header", F_CLOSE);
    }
    take_request(c, &rq, hlen);
    c->state = WK_CS_PROXY;
    r = wk_xchg_health(x, c->listener, &rq);
    if (r != 0) {
        return r < 0 ? -1 : 0;
    }
    r = wk_xchg_route(x, &rq, nhost, nhlen);
    /* Any body bytes that came with the head are checked before a backend sees anything. */
    if (r == 0) {
        r = parse_body(c);
    }
    if (r == 0) {
        r = wk_xchg_forward(x, &rq);
    }
    if (r != 0) {
        if (r > 0 && (x->tx->mw.flags & WK_MW_F_WAIT) && continue_owed(c)) {
            x->tflags |= WK_T_100_PENDING; /* (sent if the middleware lets the request go on) */
        }
        return r < 0 ? -1 : 0;
    }
    if (continue_owed(c) && queue_continue(c) != 0) {
        return -1;
    }
    x->tx->body_due_ms = wk.now + BODY_GRACE_MS;
    return wk_xchg_start(x);
}

/* wk_h1_ops.resp_head: queue the client's response head for the backend's head <rs>. */
static int h1_resp_head(struct wk_xchg *x, const struct wk_h1_resp *rs)
{
    struct wk_client *c = xclient(x);
    unsigned status = rs->status;
    size_t n;
    int chunked = rs->chunked;
    int client10 = c->x.vmajor == 1 && c->x.vminor == 0;
    int close_it = (c->flags & WK_C_F_CLOSE) || !(c->x.tflags & WK_T_REQ_DONE) || wk.stopping;
    int bodyless = wk_h1_bodyless((x->tflags & WK_T_HEAD_REQ) != 0, status);
    /* 204 (and 1xx) must not carry framing headers at all; HEAD and 304 may keep the
     * Content-Length of the body they do not have. */
    int no_framing = status == 204 || status < 200;

    if (status == 101) {
        close_it = 0;
    }

    if (!bodyless) {
        if (chunked && client10) {
            c->x.tflags |= WK_T_DECHUNK;
            close_it = 1;
        } else if (!chunked && !rs->has_clen) {
            close_it = 1; /* delimited by EOF */
        }
    }
    if (close_it) {
        c->flags |= WK_C_F_CLOSE;
    }
    if (wk_buf_get(&c->out, wk_head_buf_size(csnap(c))) != 0) {
        return -1;
    }
    c->rhead_at = c->out.end;
    n = wk_h1_write_response(c->out.data + c->out.end, c->out.cap - c->out.end, rs,
                             chunked && !(c->x.tflags & WK_T_DECHUNK) &&
                                 !(bodyless && (no_framing || client10)),
                             c->x.tx->reqid, c->x.tx->reqid_len,
                             status == 101 ? WK_H1_CONN_UPGRADE
                             : close_it    ? WK_H1_CONN_CLOSE
                             : client10    ? WK_H1_CONN_KEEPALIVE
                                           : WK_H1_CONN_NONE);
    if (n == 0) {
        return -1;
    }
    c->out.end += (uint32_t)n;
    c->x.status = (uint16_t)status;
    return 0;
}

/* wk_h1_ops.unhead: nothing of the queued head reached the client: take it back. */
static void h1_unhead(struct wk_xchg *x)
{
    struct wk_client *c = xclient(x);

    c->out.end = c->rhead_at;
}

/* wk_h1_ops.interim: forward an interim 1xx response (other than 100, which we answer
 * ourselves) to a 1.1 client. */
static int h1_interim(struct wk_xchg *x, const struct wk_h1_resp *rs, const char *head, size_t hlen)
{
    struct wk_client *c = xclient(x);

    if (rs->status == 100 || c->x.vminor == 0) {
        return 0;
    }
    if (wk_buf_get(&c->out, wk_head_buf_size(csnap(c))) != 0) {
        return -1;
    }
    if (head == NULL) {
        /* (from a backend that does not speak HTTP/1: its fields, written as a head) */
        hlen = wk_h1_write_response(c->out.data + c->out.end, c->out.cap - c->out.end, rs, 0,
                                    x->tx->reqid, x->tx->reqid_len, WK_H1_CONN_NONE);
        c->out.end += (uint32_t)hlen;
        return hlen > 0 ? 0 : -1;
    }
    if (hlen > c->out.cap - c->out.end) {
        return -1;
    }
    memcpy(c->out.data + c->out.end, head, hlen);
    c->out.end += (uint32_t)hlen;
    return 0;
}

/* wk_h1_ops.trailers: an HTTP/1.1 client gets a chunked body's trailer section inside the body
 * bytes it is relayed; an HTTP/1.0 client (the body decoded for it) cannot carry trailers. */
static int h1_trailers(struct wk_xchg *x, const struct wk_hdr *f, uint32_t n)
{
    (void)x;
    (void)f;
    (void)n;
    return 0;
}

/* ---- I/O steps: each returns 1 on progress, 0 when blocked, -1 when the client is gone ------ */
static int client_read(struct wk_client *c)
{
    ssize_t n;

    /* OpenSSL may hold bytes the socket no longer announces: read ahead by a handshake step
     * that ran on a write edge. Edge-triggered epoll reports readiness as of when the event is
     * fetched, so once such bytes left the socket no read edge will come for them. */
    if (!(c->flags & WK_C_F_READABLE) && xp_pending(&c->xp)) {
        c->flags |= WK_C_F_READABLE;
    }
    if (!(c->flags & WK_C_F_READABLE) || (c->flags & WK_C_F_EOF)) {
        return 0;
    }
    if (c->in.data == NULL && wk_buf_get(&c->in, wk_head_buf_size(csnap(c))) != 0) {
        wk_client_close(c);
        return -1;
    }
    if (c->in.end == c->in.cap) {
        if (c->state == WK_CS_PROXY &&
            (!(c->x.tflags & WK_T_REQ_DONE) || (c->x.tflags & WK_T_TUNNEL)) &&
            c->x.send_off > c->in.start) {
            /* Streaming a body: drop what the upstream already has. */
            uint32_t shift = c->x.send_off;
            if (c->x.send_off > c->x.body_off) {
                c->x.tflags |= WK_T_BODY_LOST;
            }
            memmove(c->in.data, c->in.data + shift, c->in.end - shift);
            c->in.end -= shift;
            c->x.parsed_off -= shift;
            c->x.send_off = 0;
            c->in.start = 0;
            c->x.body_off = c->x.body_off > shift ? c->x.body_off - shift : 0;
        } else if ((c->state == WK_CS_IDLE || c->state == WK_CS_HEAD) && c->in.start > 0) {
            memmove(c->in.data, c->in.data + c->in.start, c->in.end - c->in.start);
            c->in.end -= c->in.start;
            c->in.start = 0;
        }
        if (c->in.end == c->in.cap) {
            if (c->state == WK_CS_PROXY) {
                c->x.tflags |= WK_T_BODY_STALL; /* we hold the body back, not the client */
            }
            return 0;
        }
    }
    n = xp_read(&c->xp, c->in.data + c->in.end, c->in.cap - c->in.end);
    if (n == XP_WANT_READ) {
        c->flags &= ~WK_C_F_READABLE;
        if (c->state == WK_CS_IDLE || c->state == WK_CS_HEAD) {
            xp_ticket_now(&c->xp); /* (a request in progress: its response takes it) */
        }
        return 0;
    }
    if (n == XP_WANT_WRITE) {
        c->flags &= ~WK_C_F_WRITABLE; /* retried on the write edge; READABLE stays set */
        return 0;
    }
    if (n == XP_ERR) {
        wk_client_close(c);
        return -1;
    }
    /* Edge-triggered: a read that emptied the socket means new bytes bring a new edge, so the
     * read that would only say "again" is skipped. Not when a FIN is already pending: it came
     * with this edge and no other will announce it. */
    if (n > 0 && !(c->flags & WK_C_F_RDHUP) && xp_drained(&c->xp)) {
        c->flags &= ~WK_C_F_READABLE;
    }
    if (n > 0) {
        c->in.end += (uint32_t)n;
        if (c->state == WK_CS_PROXY && !(c->x.tflags & WK_T_REQ_DONE) && body_rate_on(c)) {
            body_credit(c, (size_t)n);
        }
        return 1;
    }
    c->flags |= WK_C_F_EOF;
    return 1;
}

/* Does what client_write() is about to offer end the response, on a connection that closes
 * after it? (Flags that never clear within a transaction; a close decided only by an
 * unfinished request body is left out, as that body may still complete.) */
static int ends_and_closes(const struct wk_client *c)
{
    if (!((c->flags & (WK_C_F_CLOSE | WK_C_F_HUP)) || wk.stopping)) {
        return 0;
    }
    return c->state == WK_CS_REPLY ||
           (c->state == WK_CS_PROXY && wk_xchg_body_final(&c->x) && !(c->x.tflags & WK_T_TUNNEL));
}

/* The client's socket is full with more to send: from now on it has limits.send_timeout_ms to
 * take something, whatever the backend does meanwhile (the backend is not read while our buffer
 * for this client is full, so memory stays bounded). */
static void send_blocked(struct wk_client *c)
{
    if (c->state == WK_CS_PROXY && !(c->x.tflags & WK_T_SEND_WAIT)) {
        c->x.tflags = (c->x.tflags & ~WK_T_RATE_TICK) | WK_T_SEND_WAIT;
        wk_timer_arm(&c->timer, csnap(c)->limits.send_timeout_ms);
    }
}

static int client_write(struct wk_client *c)
{
    struct iovec iov[2];
    int niov = 0;
    ssize_t n;
    size_t first = 0;

    if (c->out.end > c->out.start) {
        iov[niov].iov_base = c->out.data + c->out.start;
        iov[niov].iov_len = first = c->out.end - c->out.start;
        niov++;
    }
    if ((c->x.tflags & WK_T_RESP_HEAD) && c->state == WK_CS_PROXY && wk_xchg_has_ready(&c->x)) {
        char *p;
        iov[niov].iov_len = wk_xchg_ready(&c->x, &p);
        iov[niov].iov_base = p;
        niov++;
    }
    if (niov == 0 || !(c->flags & WK_C_F_WRITABLE)) {
        return 0;
    }
    if (c->x.tx != NULL && !(c->x.tflags & WK_T_TALLIED)) {
        /* What is offered now ends the response: count it before the client can see it. */
        if (c->state == WK_CS_REPLY && c->x.at.gen != NULL) {
            wk_xchg_tally(&c->x, 0);
        } else if (c->state == WK_CS_PROXY && wk_xchg_body_final(&c->x) &&
                   !(c->x.tflags & WK_T_TUNNEL)) {
            wk_xchg_tally(&c->x, 1);
        }
    }
    /* The last bytes before a close are corked: the FIN (and close_notify) join them. */
    n = xp_writev(&c->xp, iov, niov, ends_and_closes(c));
    if (n == XP_WANT_WRITE) {
        c->flags &= ~WK_C_F_WRITABLE;
        send_blocked(c);
        return 0;
    }
    if (n == XP_WANT_READ) {
        return 0; /* retried on the next edge */
    }
    if (n < 0) {
        wk_client_close(c);
        return -1;
    }
    c->x.tflags &= ~WK_T_SEND_WAIT; /* it drains: the caller's wk_client_rearm() re-arms as usual */
    if (c->x.tflags & WK_T_RESP_HEAD) {
        c->x.tflags |= WK_T_CLIENT_SENT;
    }
    if (c->x.tx != NULL) {
        c->x.tx->bytes_sent += (uint64_t)n;
    }
    if ((size_t)n <= first) {
        c->out.start += (uint32_t)n;
    } else {
        c->out.start = c->out.end;
        wk_xchg_took(&c->x, (uint32_t)((size_t)n - first));
    }
    if (c->out.start == c->out.end) {
        c->out.start = c->out.end = 0;
    }
    return 1;
}

/* Back to waiting for the next request on a kept-alive connection, or close. Returns -1 if the
 * client was closed. */
static int next_request(struct wk_client *c)
{
    int close_it = (c->flags & (WK_C_F_CLOSE | WK_C_F_HUP)) || wk.stopping ||
                   !(c->x.tflags & WK_T_REQ_DONE);

    wk_xchg_end(&c->x);
    if (close_it) {
        if (c->in.data != NULL && c->in.end > c->x.parsed_off && !(c->flags & WK_C_F_HUP)) {
            /* Unread input would turn our close into a reset that can destroy the response on
             * its way: shut down writing and drain for a moment instead. */
            xp_shutdown(&c->xp);
            c->state = WK_CS_LINGER;
            wk_client_rearm(c);
            return 0;
        }
        if (!(c->flags & WK_C_F_HUP) && !(c->x.tflags & WK_T_REQ_DONE)) {
            xp_shutdown(&c->xp);
            c->state = WK_CS_LINGER;
            wk_client_rearm(c);
            return 0;
        }
        wk_client_close(c);
        return -1;
    }
    c->in.start = c->x.parsed_off;
    c->x.tflags = 0;
    c->x.at.flags = 0;
    c->x.at.service = SHM_NONE;
    c->x.status = 0;
    wk_buf_put(&c->out);
    if (c->in.start == c->in.end) {
        wk_buf_put(&c->in);
    }
    c->state = WK_CS_IDLE;
    wk_client_rearm(c);
    return 0;
}

/* One pass of an upgraded connection: bytes both ways until either side closes, then close
 * both once what the closing side sent has been delivered. Returns 1, 0 or -1 (closed). */
static int tunnel_step(struct wk_client *c)
{
    int progress = 0, r;

    r = client_read(c);
    if (r < 0) {
        return -1;
    }
    progress |= r;
    if (c->in.data != NULL) {
        c->x.parsed_off = c->in.end;
    }
    r = wk_xchg_send(&c->x);
    if (r < 0) {
        return -1;
    }
    progress |= r;
    if (c->state != WK_CS_PROXY || c->x.up == NULL) {
        return 1;
    }
    r = wk_xchg_recv(&c->x);
    if (r < 0) {
        return -1;
    }
    progress |= r;
    if (c->x.tx->uin.data != NULL) {
        c->x.tx->rready_off = c->x.tx->rparsed_off = c->x.tx->uin.end;
    }
    r = client_write(c);
    if (r < 0) {
        return -1;
    }
    progress |= r;
    if (((c->x.tflags & WK_T_UP_EOF) && c->out.start == c->out.end &&
         c->x.tx->rsend_off == c->x.tx->rready_off) ||
        ((c->flags & (WK_C_F_EOF | WK_C_F_HUP)) && c->x.send_off == c->x.parsed_off)) {
        wk_xchg_finish(&c->x);
        wk_client_close(c);
        return -1;
    }
    if (progress) {
        wk_client_rearm(c);
    }
    return progress;
}

static int step_parse_body(struct wk_client *c)
{
    return parse_body(c) < 0 ? -1 : 0;
}

static int step_send(struct wk_client *c)
{
    return wk_xchg_send(&c->x);
}

static int step_recv(struct wk_client *c)
{
    return wk_xchg_recv(&c->x);
}

static int step_parse_response(struct wk_client *c)
{
    return wk_xchg_parse(&c->x);
}

/* The request/response pump, in order. Each returns 1 on progress, 0 when blocked, -1 when the
 * client is gone; any of them may also end the transaction (an error reply), which ends the pass.
 */
static int (*const proxy_steps[])(struct wk_client *) = {
    step_parse_body, step_send, step_recv, step_parse_response, client_write,
};

/* One pass of a proxied request. Returns 1, 0 or -1 (the client was closed). */
static int proxy_step(struct wk_client *c)
{
    int progress = 0, r;

    if (!(c->x.tflags & WK_T_REQ_DONE) || (c->in.data && c->in.end < c->in.cap)) {
        r = client_read(c);
        if (r < 0) {
            return -1;
        }
        progress |= r;
    }
    if ((c->flags & WK_C_F_HUP) || ((c->flags & WK_C_F_EOF) && !(c->x.tflags & WK_T_REQ_DONE))) {
        /* The client gave up mid-request (or the socket failed): nothing can be answered. */
        wk_client_close(c);
        return -1;
    }
    if (c->flags & WK_C_F_EOF) {
        c->flags |= WK_C_F_CLOSE;
    }
    for (size_t i = 0; i < DSP_ARRAY_SIZE(proxy_steps); i++) {
        r = proxy_steps[i](c);
        if (r < 0) {
            return -1;
        }
        progress |= r;
        if (c->state != WK_CS_PROXY) {
            return 1;
        }
    }
    if (wk_xchg_body_final(&c->x) && c->out.start == c->out.end && !wk_xchg_has_ready(&c->x)) {
        wk_xchg_finish(&c->x);
        return next_request(c) != 0 ? -1 : 1;
    }
    if (progress) {
        struct wk_upstream *u = c->x.up;
        if (u != NULL && !(u->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS)) &&
            (c->x.tflags & (WK_T_REQ_DONE | WK_T_RESP_HEAD)) == WK_T_REQ_DONE &&
            c->x.send_off == c->x.parsed_off && c->x.tx->uout.start == c->x.tx->uout.end) {
            /* The request is out and the final response head awaited: response_timeout_ms
             * counts from here, once; 1xx trickling in (or client bytes) do not extend it.
             * (Only a client that stopped reading forwarded 1xx re-arms it, once it drains:
             * the send timeout had the timer meanwhile.) */
            if ((c->x.tflags & WK_T_RESP_WAIT) && c->timer.queue != 0 &&
                c->timer.deadline == c->x.tx->resp_due_ms) {
                return progress;
            }
            wk_client_rearm(c);
            if (c->timer.queue != 0 &&
                c->timer.deadline == wk.now + wk_xsvc(&c->x)->response_timeout_ms) {
                c->x.tflags |= WK_T_RESP_WAIT;
                c->x.tx->resp_due_ms = c->timer.deadline;
            }
            return progress;
        }
        wk_client_rearm(c);
    }
    return progress;
}

/* A plain listener's connection starts with "P": the HTTP/2 client preface (prior knowledge),
 * when the listener offers HTTP/2? Returns 1 when the connection switched to HTTP/2, 0 to go on
 * with HTTP/1 (not a preface, or not yet all of one: 0 with nothing done but waiting), -1 when
 * it was closed. */
static int h2_preface(struct wk_client *c, size_t avail)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const struct shm_snap_hdr *s = csnap(c);
    const char *p = c->in.data + c->in.start;
    size_t n = DSP_MIN(avail, sizeof(preface) - 1);

    if (xp_is_tls(&c->xp) || c->listener >= s->nlisteners || !shm_listeners(s)[c->listener].http2 ||
        memcmp(p, preface, n) != 0) {
        return 0;
    }
    if (n < sizeof(preface) - 1) {
        return 0; /* (the HTTP/1 head search finds no end in it either: more is read) */
    }
    if (wk_h2_start(c, p, avail) != 0) {
        wk_client_close(c);
        return -1;
    }
    c->in.start = c->in.end = 0;
    return 1;
}

/* Waiting for a request head (IDLE, HEAD): read, skip the empty lines allowed before a request,
 * and hand a complete head to process_head(). Returns 1, 0 or -1 (closed). */
static int head_step(struct wk_client *c)
{
    size_t hlen, avail;
    int r = client_read(c);

    if (r < 0) {
        return -1;
    }
    if (c->in.data != NULL) {
        while (c->in.start < c->in.end &&
               (c->in.data[c->in.start] == '\r' || c->in.data[c->in.start] == '\n')) {
            c->in.start++;
        }
    }
    avail = c->in.data ? c->in.end - c->in.start : 0;
    if (avail == 0) {
        if (c->flags & (WK_C_F_EOF | WK_C_F_HUP)) {
            wk_client_close(c);
            return -1;
        }
        if (c->state == WK_CS_HEAD) {
            c->state = WK_CS_IDLE;
        }
        return r;
    }
    if (c->in.data[c->in.start] == 'P' && !(c->flags & WK_C_F_STARTED)) {
        /* HTTP/2 with prior knowledge: the client preface instead of a request line. */
        int h2 = h2_preface(c, avail);
        if (h2 != 0) {
            return h2;
        }
    }
    if (c->state == WK_CS_IDLE) {
        c->state = WK_CS_HEAD;
        if (c->flags & WK_C_F_STARTED) {
            wk_client_rearm(c);
        }
    }
    hlen = wk_h1_head_end(c->in.data + c->in.start, avail, 0);
    if (hlen == 0 || hlen > csnap(c)->limits.max_header_bytes) {
        if (avail >= csnap(c)->limits.max_header_bytes || hlen != 0) {
            if (wk_xchg_begin(&c->x) != 0) {
                wk_client_close(c);
                return -1;
            }
            return wk_xchg_error(&c->x, 431, "Request header fields too large",
                                 "Request head exceeds limits.max_header_bytes", F_CLOSE) != 0
                       ? -1
                       : 1;
        }
        if (c->flags & (WK_C_F_EOF | WK_C_F_HUP)) {
            wk_client_close(c);
            return -1;
        }
        return r;
    }
    return process_head(c, hlen) < 0 ? -1 : 1;
}

/* LINGER: the response is out and writing shut down; input is drained until EOF or the timer.
 * Returns 1, 0 or -1 (closed). */
static int linger_step(struct wk_client *c)
{
    char sink[4096];
    ssize_t n;

    if (!(c->flags & WK_C_F_READABLE)) {
        return 0;
    }
    n = recv(c->xp.fd, sink, sizeof(sink), 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        wk_client_close(c);
        return -1;
    }
    if (n < 0) {
        c->flags &= ~WK_C_F_READABLE;
        return 0;
    }
    return 1;
}

/* Drive the connection as far as it can go without blocking. */
void wk_client_run(struct wk_client *c)
{
    for (int guard = 0; guard < 10000; guard++) {
        int progress = 0;
        int r;

        switch (c->state) {
        case WK_CS_IDLE:
        case WK_CS_HEAD:
            r = head_step(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        case WK_CS_PROXY:
            r = (c->x.tflags & WK_T_TUNNEL) ? tunnel_step(c) : proxy_step(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        case WK_CS_REPLY:
            r = client_write(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            if (c->out.start == c->out.end) {
                wk_xchg_log(&c->x, 0);
                if (next_request(c) != 0) {
                    return;
                }
                progress = 1;
            }
            break;
        case WK_CS_TLS:
            r = wk_client_handshake(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        case WK_CS_H2:
            r = wk_h2_step(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        case WK_CS_PPHDR:
            r = wk_client_pphdr(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        case WK_CS_LINGER:
            r = linger_step(c);
            if (r < 0) {
                return;
            }
            progress |= r;
            break;
        default:
            break;
        }
        if (!progress) {
            return;
        }
    }
}

void wk_client_event(struct wk_client *c, uint32_t events)
{
    if (events & EPOLLIN) {
        c->flags |= WK_C_F_READABLE;
    }
    if (events & EPOLLOUT) {
        c->flags |= WK_C_F_WRITABLE;
    }
    if (events & EPOLLRDHUP) {
        c->flags |= WK_C_F_READABLE | WK_C_F_RDHUP; /* read the EOF */
    }
    if (events & (EPOLLERR | EPOLLHUP)) {
        c->flags |= WK_C_F_READABLE | WK_C_F_WRITABLE;
    }
    wk_client_run(c);
}

/* The timer of a proxied request expired: the send timeout, the body-rate tick, or the
 * exchange's own phase (wk_xchg_expired). Returns 1 when the connection must not be run now
 * (closed, or the tick re-armed), 0 when it should. */
static int proxy_timeout(struct wk_client *c)
{
    if (c->x.tflags & WK_T_SEND_WAIT) {
        c->x.tflags &= ~WK_T_SEND_WAIT;
        if (!(c->flags & WK_C_F_WRITABLE)) {
            char ip[64];
            wk_ip_str(c->peer.family, c->peer.ip, ip, sizeof(ip));
            log_debug("client %s read nothing for limits.send_timeout_ms: closing", ip);
            wk_xchg_cut(&c->x, SHM_CUT_SEND_TIMEOUT);
            if (c->x.tflags & WK_T_TUNNEL) {
                wk_xchg_finish(&c->x);
            }
            wk_client_close(c); /* and with it the upstream */
            return 1;
        }
        wk_client_rearm(c);
        return 0;
    }
    if (c->x.tflags & WK_T_RATE_TICK) {
        c->x.tflags &= ~WK_T_RATE_TICK;
        if (!body_phase(c)) {
            wk_client_rearm(c); /* the phase changed without a re-arm */
            return 0;
        }
        if ((c->x.tflags & WK_T_BODY_STALL) || (c->in.data && c->in.end == c->in.cap)) {
            /* The body waited for us, not for the client: its window starts again. */
            c->x.tflags &= ~WK_T_BODY_STALL;
            c->x.tx->body_due_ms = DSP_MAX(c->x.tx->body_due_ms, wk.now + BODY_WINDOW_MS);
        }
        if (wk.now >= c->x.tx->body_due_ms) {
            /* Too slow to be worth a backend connection: 408 while nothing of the
             * response went out (the upstream is closed, never pooled), else a close. */
            if (wk_xchg_error(&c->x, 408, "Request timeout",
                              "Request body slower than limits.min_body_rate", F_CLOSE) != 0) {
                return 1;
            }
            return 0;
        }
        if (wk.now - c->x.tx->progress_ms <
            DSP_MAX(csnap(c)->limits.idle_timeout_ms, backend_wait_ms(c))) {
            c->x.tflags |= WK_T_RATE_TICK;
            wk_timer_arm(&c->timer, BODY_TICK_MS);
            return 1;
        }
        /* No progress either way for that long: as without a rate, below. */
    }
    return wk_xchg_expired(&c->x) < 0 ? 1 : 0;
}

void wk_client_timeout(struct wk_client *c)
{
    wk_client_debug(c, "timer expired");
    switch (c->state) {
    case WK_CS_IDLE:
        wk_client_close(c);
        return;
    case WK_CS_HEAD:
        if (wk_xchg_begin(&c->x) != 0) {
            wk_client_close(c);
            return;
        }
        if (wk_xchg_error(&c->x, 408, "Request timeout",
                          "Request headers not received within limits.header_timeout_ms",
                          F_CLOSE) != 0) {
            return;
        }
        break;
    case WK_CS_PPHDR:
        wk_client_close(c);
        return;
    case WK_CS_PROXY:
        if (proxy_timeout(c) != 0) {
            return;
        }
        break;
    case WK_CS_H2: /* idle, or not draining what it is sent */
        wk_h2_timeout(c);
        return;
    case WK_CS_TLS: /* a handshake that did not finish in time failed */
        __atomic_fetch_add(&wk.ctl->tls_handshakes[SHM_TLS_HS_FAILED], 1, __ATOMIC_RELAXED);
        wk_client_close(c);
        return;
    default:
        wk_client_close(c);
        return;
    }
    wk_client_run(c);
}

/* ---- the exchange's view of this connection -------------------------------------------------- */
static void h1_close(struct wk_xchg *x)
{
    wk_client_close(xclient(x));
}

static void h1_rearm(struct wk_xchg *x)
{
    wk_client_rearm(xclient(x));
}

static void h1_wake(struct wk_xchg *x)
{
    struct wk_client *c = xclient(x);

    /* A middleware that suspended the request let it go on to a backend: the client now gets
     * the 100 Continue it waits for (not when the middleware answered instead). */
    if (x->tflags & WK_T_100_PENDING) {
        x->tflags &= ~WK_T_100_PENDING;
        if (!(x->tflags & WK_T_REPLIED) && x->tx != NULL && x->up != NULL && continue_owed(c) &&
            c->out.start == c->out.end && queue_continue(c) != 0) {
            return;
        }
    }
    wk_client_run(c);
}

const struct wk_xchg_ops wk_h1_ops = {
    .reply = h1_reply,
    .resp_head = h1_resp_head,
    .unhead = h1_unhead,
    .interim = h1_interim,
    .trailers = h1_trailers,
    .close = h1_close,
    .rearm = h1_rearm,
    .wake = h1_wake,
};
