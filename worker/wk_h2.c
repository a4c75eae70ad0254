/* dispatcher: the HTTP/2 client side. A client connection that negotiated ALPN "h2" (TLS) or
 * began with the HTTP/2 preface (plain, prior knowledge) is served by an nghttp2 server session:
 * nghttp2 does the framing, HPACK, flow control and the RFC 9113 message checks, and does no I/O;
 * the bytes go through the connection's transport (common/xport.h) like HTTP/1's.
 *
 * Each stream is one request and drives its own exchange (wk_xchg.c) exactly as an HTTP/1
 * request does: the stream builds the parsed-request struct from its header block, and serves
 * the exchange through wk_h2_ops (a generated answer or the backend's response head become a
 * HEADERS frame, response bytes are read out of the exchange's buffer by a data provider).
 *
 * Memory per stream is bounded by limits.h2_stream_window in each direction: request DATA is
 * acknowledged (WINDOW_UPDATE) only once it has been written to the backend, and response bytes
 * stay in the exchange's upstream buffer until the stream's send window takes them. */
#include "worker/wk_internal.h"
#include "worker/wk_grpc.h"
#include "worker/wk_h2msg.h"

#include <errno.h>
#include <limits.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/str.h"
#include "shm/shm_route.h"
#include "shm/shm_snap.h"

#define H2_OUT_SIZE   (64 * 1024) /* serialized frames waiting for the socket */
#define H2_RELEASE_MS 1000 /* idle this long, a connection gives its frame buffer's pages back */

/* Stream flags. */
#define S_END_STREAM 0x01u  /* the client's half is closed: the request is complete */
#define S_STARTED    0x02u  /* the exchange was begun (x is live until S_ENDED) */
#define S_ENDED      0x04u  /* the exchange was ended (logged and released) */
#define S_RESPONDED  0x08u  /* a response (proxied or generated) was submitted */
#define S_EOF        0x10u  /* the response's last byte went to nghttp2 */
#define S_CHUNKED    0x20u  /* the body goes upstream chunked (no Content-Length was sent) */
#define S_DISCARD    0x40u  /* request DATA is no longer wanted: consumed and dropped */
#define S_GRPC       0x80u  /* a gRPC request (its Content-Type): our errors are gRPC answers */
#define S_NOBODY     0x100u /* the response has no body: its HEADERS end the stream */

struct wk_h2;

struct wk_h2_stream {
    struct wk_ev ev; /* WK_EV_H2STREAM: owner of the stream's timer */
    struct wk_xchg x;
    struct wk_timer timer;
    struct wk_h2 *h;
    int32_t id;
    uint32_t flags;             /* S_* */
    struct wk_buf rq;           /* request bytes for the backend (chunk-framed with S_CHUNKED) */
    uint64_t unacked;           /* DATA payload received but not yet acknowledged */
    uint64_t body_bytes;        /* DATA payload received in all */
    uint64_t hsize;             /* decompressed size of the header blocks (RFC 9113 6.5.2) */
    struct wk_h2_head *head;    /* the header block while it arrives (then the trailers') */
    struct wk_hdr *rtr;         /* the request's trailer fields (x.rtrail), or NULL */
    struct wk_h2_fields *trail; /* the response's trailers, sent after its last DATA */
    uint64_t deadline;          /* grpc-timeout: the call's end (wk.now ms), 0: none */
    char *reply;                /* a generated answer's body */
    uint32_t reply_len, reply_off;
    struct wk_h2_stream *next, *prev;
};

struct wk_h2 {
    nghttp2_session *s;
    struct wk_client *c;
    struct wk_h2_stream *streams;
    uint32_t nstreams;
    uint8_t goaway; /* a graceful GOAWAY was sent (worker stopping) */
    uint8_t due;    /* on wk.h2_due (wk_h2_run_due) */
    struct wk_h2 *due_next;
    struct wk_h2_guard g;     /* abuse limits */
    struct wk_h2_mem *mem;    /* nghttp2's allocator (frame buffer pages given back when idle) */
    struct wk_h2_saved saved; /* what the client knows while s is NULL (idle: wk_h2idle.c) */
    char *out;                /* serialized frames not yet written: [out_off, out_len) */
    uint32_t out_off, out_len, out_cap;
};

static const struct wk_xchg_ops wk_h2_ops;
static struct dsp_slab h2_slab = DSP_SLAB_INIT(sizeof(struct wk_h2)); /* (wk.client_slab's why) */

static struct wk_h2_stream *xstream(struct wk_xchg *x)
{
    return (struct wk_h2_stream *)(void *)((char *)x - offsetof(struct wk_h2_stream, x));
}

static const struct shm_snap_hdr *cur_snap(void)
{
    return wk.cur->snap;
}

/* ---- stream lifetime ------------------------------------------------------------------------ */
static struct wk_h2_stream *stream_new(struct wk_h2 *h, int32_t id)
{
    struct wk_h2_stream *st = calloc(1, sizeof(*st));

    if (st == NULL) {
        return NULL;
    }
    st->ev.kind = WK_EV_H2STREAM;
    st->timer.owner = &st->ev;
    st->h = h;
    st->id = id;
    st->x.ops = &wk_h2_ops;
    st->x.peer = &h->c->peer;
    st->x.rq = &st->rq;
    st->x.at.client_family = h->c->peer.family;
    memcpy(st->x.at.client_ip, h->c->peer.ip, 16);
    st->next = h->streams;
    if (h->streams != NULL) {
        h->streams->prev = st;
    }
    h->streams = st;
    h->nstreams++;
    return st;
}

static void head_free(struct wk_h2_stream *st)
{
    wk_h2_head_put(st->head);
    st->head = NULL;
}

/* End the stream's exchange once: <how> as wk_xchg_log() takes it. */
static void stream_end_exchange(struct wk_h2_stream *st, int how)
{
    if ((st->flags & (S_STARTED | S_ENDED)) == S_STARTED) {
        st->flags |= S_ENDED;
        wk_xchg_log(&st->x, how);
        wk_xchg_end(&st->x);
    }
}

static void stream_free(struct wk_h2_stream *st)
{
    struct wk_h2 *h = st->h;

    stream_end_exchange(st, -1);
    wk_timer_disarm(&st->timer);
    head_free(st);
    free(st->reply);
    free(st->rtr);
    free(st->trail);
    wk_h2_buf_release(&st->rq, wk_head_buf_size(cur_snap()));
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        h->streams = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    }
    h->nstreams--;
    wk_free_later(&st->ev);
}

/* Are the stream's errors gRPC answers: a gRPC call, or a request routed to a gRPC service? */
static int stream_grpc(const struct wk_h2_stream *st)
{
    const struct wk_xchg *x = &st->x;

    return (st->flags & S_GRPC) != 0 || (x->at.gen != NULL && x->at.service != SHM_NONE &&
                                         wk_xsvc(x)->protocol == SHM_PROTO_GRPC);
}

/* ---- the header block ------------------------------------------------------------------------ */
static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct wk_h2 *h = ud;
    struct wk_h2_stream *st;

    (void)s;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST || h->g.waking) {
        return 0;
    }
    st = stream_new(h, f->hd.stream_id);
    if (st == NULL) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->head = wk_h2_head_take(cur_snap()->limits.max_header_bytes);
    if (st->head == NULL) {
        stream_free(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    nghttp2_session_set_stream_user_data(h->s, f->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct wk_h2_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    struct wk_h2 *h = ud;

    (void)flags;
    if (st == NULL) {
        return 0;
    }
    if (wk_h2_guard_header(&h->g, s, &st->hsize, nlen, vlen, cur_snap()->limits.max_header_bytes) !=
        0) {
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* an HPACK bomb */
    }
    if (f->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    if (st->head == NULL && f->headers.cat == NGHTTP2_HCAT_HEADERS && (st->flags & S_STARTED) &&
        !(st->flags & (S_ENDED | S_DISCARD))) {
        /* The request's trailers (nghttp2 allows no pseudo-header there). */
        st->head = wk_h2_head_new(cur_snap()->limits.max_header_bytes);
        if (st->head == NULL) {
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    if (st->head != NULL) {
        wk_h2_head_field(st->head, name, nlen, value, vlen);
    }
    return 0;
}

/* ---- the request ----------------------------------------------------------------------------- */
static void rst(struct wk_h2_stream *st, uint32_t code)
{
    st->flags |= S_DISCARD;
    nghttp2_submit_rst_stream(st->h->s, NGHTTP2_FLAG_NONE, st->id, code);
}

/* The stream cannot go on: its exchange ends as cut, the stream is reset with <code>. -1. */
static int stream_fail(struct wk_h2_stream *st, uint32_t code)
{
    stream_end_exchange(st, -1);
    rst(st, code);
    return -1;
}

/* The header block of a new request is complete: build the request and start its exchange. */
static void stream_request(struct wk_h2_stream *st, int end_stream)
{
    struct wk_xchg *x = &st->x;
    const struct shm_snap_hdr *s;
    struct wk_h1_req rqs, *rq = &rqs; /* pointers into st->head */
    const char *why = NULL;
    char mbuf[40], nhost[256];
    size_t nhlen, ml;
    unsigned status;
    int r;

    if (wk_xchg_begin(x) != 0) {
        rst(st, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    st->flags |= S_STARTED | (end_stream ? S_END_STREAM : 0) |
                 (wk_h2_head_grpc(st->head) ? S_GRPC : 0);
    s = x->at.gen->snap;
    status = wk_h2_head_request(st->head, end_stream, rq, &why);
    x->method = (uint8_t)rq->method;
    x->vmajor = 2;
    x->vminor = 0;
    /* The access log records the method as sent, from the "METHOD " at the head's start. */
    ml = st->head->poff[WK_H2_P_METHOD] ? DSP_MIN(st->head->plen[WK_H2_P_METHOD], sizeof(mbuf) - 2)
                                        : 0;
    memcpy(mbuf, st->head->hb + (ml ? st->head->poff[WK_H2_P_METHOD] - 1 : 0), ml);
    mbuf[ml] = ' ';
    wk_xchg_identify(x, &rq->hd, mbuf, ml + 1, rq->host, rq->host ? rq->hostlen : 0);
    if (status != 0) {
        wk_xchg_error(x, status,
                      status == 431   ? "Request header fields too large"
                      : status == 405 ? "Method not allowed"
                                      : "Bad request",
                      why, 1);
        goto out;
    }
    nhlen = shm_host_normalize(rq->host, rq->hostlen, nhost, sizeof(nhost));
    if (nhlen == 0) {
        wk_xchg_error(x, 400, "Bad request", "Invalid :authority", 1);
        goto out;
    }
    st->flags |= rq->chunked ? S_CHUNKED : 0;
    x->tflags |= ((rq->flags & WK_H1_IDEMPOTENT) ? WK_T_IDEMPOTENT : 0) |
                 ((rq->flags & WK_H1_HEAD) ? WK_T_HEAD_REQ : 0) |
                 ((rq->flags & WK_H1_DONE) ? WK_T_REQ_DONE : 0);
    x->tx->req_chunked = rq->chunked;
    x->body_off = x->parsed_off = x->send_off = 0;
    if (!end_stream && wk_buf_get(&st->rq, wk_head_buf_size(s)) != 0) { /* (grows: rq_room) */
        wk_xchg_error(x, 503, "Service unavailable", "Out of resources", 1);
        goto out;
    }
    r = wk_xchg_health(x, st->h->c->listener, rq);
    if (r == 0) {
        r = wk_xchg_route(x, rq, nhost, nhlen);
    }
    if (r == 0 && stream_grpc(st)) {
        r = wk_h2_grpc_deadline(x, rq, &st->deadline);
    }
    if (r == 0) {
        r = wk_xchg_forward(x, rq);
    }
    if (r == 0 && (rq->flags & WK_H1_CONTINUE) && !(st->flags & S_END_STREAM)) {
        wk_h2_submit_continue(st->h->s, st->id); /* (Expect is answered here, as on HTTP/1) */
    }
    head_free(st);
    if (r == 0) {
        wk_xchg_start(x);
    }
out:
    head_free(st);
}

/* The most the request buffer grows to: a full stream window of tiny chunk-framed frames. */
static int rq_room(struct wk_h2_stream *st, size_t need /* 0: all it may take */)
{
    const struct shm_snap_hdr *sn = st->x.at.gen->snap;

    return wk_h2_buf_room(&st->rq, need, 2 * (size_t)sn->limits.h2_stream_window + 64,
                          wk_head_buf_size(sn));
}

/* Append request DATA for the backend (chunk-framed when the request has no Content-Length).
 * Returns 0, or -1 when it does not fit: a client that floods tiny frames. */
static int rq_append(struct wk_h2_stream *st, const uint8_t *p, size_t n)
{
    struct wk_xchg *x = &st->x;
    struct wk_buf *b = &st->rq;
    char sz[24];
    int zl = 0;

    if (x->send_off == x->parsed_off && x->send_off > 0 &&
        b->end + n + 32 > x->at.gen->snap->limits.h2_stream_window) {
        /* Everything so far went upstream and half the room is used: start it over (a retry
         * can no longer replay the body; a smaller one stays for a refused attempt). */
        if (x->send_off > x->body_off) {
            x->tflags |= WK_T_BODY_LOST;
        }
        b->start = b->end = 0;
        x->body_off = x->parsed_off = x->send_off = 0;
    }
    if (st->flags & S_CHUNKED) {
        zl = snprintf(sz, sizeof(sz), "%zx\r\n", n);
    }
    if (rq_room(st, (size_t)zl + n + 2) != 0) {
        return -1;
    }
    memcpy(b->data + b->end, sz, (size_t)zl);
    memcpy(b->data + b->end + zl, p, n);
    b->end += (uint32_t)zl + (uint32_t)n;
    if (st->flags & S_CHUNKED) {
        memcpy(b->data + b->end, "\r\n", 2);
        b->end += 2;
    }
    x->parsed_off = b->end;
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    struct wk_h2_stream *st = nghttp2_session_get_stream_user_data(s, id);
    uint64_t maxb;

    (void)flags;
    (void)ud;
    if (st == NULL || (st->flags & (S_DISCARD | S_ENDED | S_EOF)) || !(st->flags & S_STARTED)) {
        nghttp2_session_consume(s, id, len);
        return 0;
    }
    st->body_bytes += len;
    maxb = st->x.at.gen->snap->limits.max_body_bytes;
    if (maxb > 0 && st->body_bytes > maxb) {
        nghttp2_session_consume(s, id, len);
        wk_xchg_error(&st->x, 413, "Payload too large",
                      "Request body exceeds limits.max_body_bytes", 1);
        return 0;
    }
    if (st->x.tx->mw.max_body != 0 && wk_mw_body_over(&st->x, st->body_bytes) != 0) {
        nghttp2_session_consume(s, id, len);
        return 0;
    }
    if (rq_append(st, data, len) != 0) {
        nghttp2_session_consume(s, id, len);
        stream_end_exchange(st, -1);
        rst(st, NGHTTP2_ENHANCE_YOUR_CALM);
        return 0;
    }
    st->unacked += len;
    return 0;
}

/* The client's half of the stream ended (END_STREAM on DATA or trailers). Its trailers (a
 * HEADERS frame after its DATA) become x->rtrail, and the trailer section of a body that goes
 * upstream chunked. (A body sent with its Content-Length has no place for them in HTTP/1.1.) */
static void request_end(struct wk_h2_stream *st)
{
    struct wk_xchg *x = &st->x;
    struct wk_buf *b = &st->rq;
    size_t n;

    st->flags |= S_END_STREAM;
    if (!(st->flags & S_STARTED) || (st->flags & (S_ENDED | S_DISCARD))) {
        return;
    }
    if (st->head != NULL) {
        if (st->head->err != NULL) {
            stream_fail(st, NGHTTP2_PROTOCOL_ERROR);
            return;
        }
        if ((st->rtr = malloc(sizeof(*st->rtr) * WK_MAX_HEADERS)) == NULL) {
            stream_fail(st, NGHTTP2_INTERNAL_ERROR);
            return;
        }
        x->nrtrail = wk_h2_head_trailers(st->head, st->rtr);
        x->rtrail = x->nrtrail > 0 ? st->rtr : NULL;
    }
    if ((st->flags & S_CHUNKED) && !(x->tflags & WK_T_REQ_DONE)) {
        n = b->data ? wk_h2_last_chunk(b->data + b->end, b->cap - b->end, x->rtrail, x->nrtrail)
                    : 0;
        if (n == 0 && b->data && rq_room(st, 0) == 0) { /* (grown: again) */
            n = wk_h2_last_chunk(b->data + b->end, b->cap - b->end, x->rtrail, x->nrtrail);
        }
        if (n == 0) {
            stream_fail(st, NGHTTP2_INTERNAL_ERROR);
            return;
        }
        b->end += (uint32_t)n;
        x->parsed_off = b->end;
    }
    x->tflags |= WK_T_REQ_DONE;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct wk_h2_stream *st;

    struct wk_h2 *h = ud;

    if (f->hd.type != NGHTTP2_HEADERS && wk_h2_guard_frame(&h->g, s, f) != 0) {
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st == NULL) {
        return 0;
    }
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST &&
        !(st->flags & S_STARTED)) {
        stream_request(st, (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
    } else if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) &&
               (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        request_end(st);
    }
    return 0;
}

/* A frame nghttp2 refused: a stream the client made us reset (a stream beyond
 * SETTINGS_MAX_CONCURRENT_STREAMS, a frame on a closed stream, a window overflow...) counts
 * against the reset bucket like a reset the client sent itself. */
static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int err, void *ud)
{
    struct wk_h2 *h = ud;

    (void)f;
    return wk_h2_guard_invalid(&h->g, s, err);
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct wk_h2_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);

    (void)ud;
    /* Answered before the request was complete (an early 413, a 404 to an upload): the rest
     * of the body is not wanted. */
    if (st != NULL && (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        (f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) &&
        !(st->flags & S_END_STREAM)) {
        st->flags |= S_DISCARD;
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct wk_h2_stream *st = nghttp2_session_get_stream_user_data(s, id);

    (void)code;
    (void)ud;
    if (st != NULL) {
        nghttp2_session_set_stream_user_data(s, id, NULL);
        stream_end_exchange(st, (st->flags & S_EOF) ? ((st->x.tflags & WK_T_REPLIED) ? 0 : 1) : -1);
        stream_free(st);
    }
    return 0;
}

static void h2_rearm(struct wk_xchg *x);
static void h2_close(struct wk_xchg *x);

/* ---- the response ---------------------------------------------------------------------------- */
/* The body's end: its trailers, if any, end the stream. */
static void resp_eof(nghttp2_session *s, struct wk_h2_stream *st, uint32_t *dflags)
{
    *dflags |= NGHTTP2_DATA_FLAG_EOF;
    if (st->trail != NULL && st->trail->n > 0 && !(st->flags & S_EOF) &&
        nghttp2_submit_trailer(s, st->id, st->trail->nv, st->trail->n) == 0) {
        *dflags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    st->flags |= S_EOF;
}

static ssize_t resp_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *dflags,
                         nghttp2_data_source *src, void *ud)
{
    struct wk_h2_stream *st = src->ptr;
    struct wk_xchg *x = &st->x;
    struct wk_txn *tx = x->tx;
    size_t n;

    (void)id;
    (void)ud;
    if (st->reply != NULL) {
        n = DSP_MIN(len, (size_t)(st->reply_len - st->reply_off));
        memcpy(buf, st->reply + st->reply_off, n);
        st->reply_off += (uint32_t)n;
        if (tx != NULL) {
            tx->bytes_sent += n;
        }
        if (st->reply_off == st->reply_len) {
            *dflags |= NGHTTP2_DATA_FLAG_EOF;
            st->flags |= S_EOF;
            if (st->flags & S_STARTED) {
                wk_xchg_tally(x, 0);
            }
        }
        return (ssize_t)n;
    }
    if (tx == NULL || (st->flags & (S_ENDED | S_EOF))) {
        resp_eof(s, st, dflags); /* (after grpc_end(), with its trailers) */
        return 0;
    }
    {
        char *p;
        n = DSP_MIN(len, (size_t)wk_xchg_ready(x, &p));
        memcpy(buf, p, n);
    }
    wk_xchg_took(x, (uint32_t)n);
    tx->bytes_sent += n;
    if (n > 0) {
        h2_rearm(x); /* the client took bytes: its send timer starts over */
    }
    if (wk_xchg_body_final(x) && !wk_xchg_has_ready(x)) {
        resp_eof(s, st, dflags);
        wk_xchg_tally(x, 1);
        wk_xchg_finish(x);
        wk_timer_disarm(&st->timer);
        return (ssize_t)n;
    }
    return n > 0 ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
}

/* h2_reply for a gRPC client: the gRPC status of our answer, trailers-only (its HEADERS end
 * the stream; the rest of the request body is consumed and dropped). */
static int grpc_reply(struct wk_h2_stream *st, unsigned status, const char *body, size_t blen)
{
    struct wk_xchg *x = &st->x;

    if (wk_h2_submit_grpc_error(st->h->s, st->id, x, status, body, blen) != 0) {
        return stream_fail(st, NGHTTP2_INTERNAL_ERROR);
    }
    x->status = (uint16_t)status; /* (what the statistics and the log record) */
    st->flags |= S_RESPONDED | S_EOF | (st->flags & S_END_STREAM ? 0 : S_DISCARD);
    wk_timer_disarm(&st->timer);
    wk_xchg_tally(x, 0);
    return 0;
}

static int h2_reply(struct wk_xchg *x, unsigned status, const char *ctype, const char *body,
                    size_t blen, int close_it)
{
    struct wk_h2_stream *st = xstream(x);
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = resp_read};

    (void)close_it;
    if (st->flags & S_RESPONDED) {
        return stream_fail(st, NGHTTP2_INTERNAL_ERROR);
    }
    if (stream_grpc(st) && (status < 200 || status >= 300)) {
        return grpc_reply(st, status, body, blen);
    }
    st->reply = malloc(blen ? blen : 1);
    if (st->reply == NULL) {
        return stream_fail(st, NGHTTP2_INTERNAL_ERROR);
    }
    memcpy(st->reply, body, blen);
    st->reply_len = (uint32_t)blen;
    /* (a HEAD gets the head alone, Content-Length included) */
    if (wk_h2_submit_reply(st->h->s, st->id, x, status, ctype, blen,
                           (x->tflags & WK_T_HEAD_REQ) ? NULL : &prd) != 0) {
        return stream_fail(st, NGHTTP2_INTERNAL_ERROR);
    }
    st->flags |= S_RESPONDED;
    if (x->tflags & WK_T_HEAD_REQ) {
        st->flags |= S_EOF;
        wk_xchg_tally(x, 0);
    }
    if (!(st->flags & S_END_STREAM)) {
        st->flags |= S_DISCARD; /* the rest of the body is consumed and dropped */
    }
    if (st->flags & S_EOF) {
        wk_timer_disarm(&st->timer);
    } else {
        /* The body must leave within send_timeout_ms, whatever the client's window. */
        wk_timer_arm(&st->timer, x->at.gen != NULL ? x->at.gen->snap->limits.send_timeout_ms
                                                   : cur_snap()->limits.send_timeout_ms);
    }
    return 0;
}

static int h2_resp_head(struct wk_xchg *x, const struct wk_h1_resp *rs)
{
    struct wk_h2_stream *st = xstream(x);
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = resp_read};
    /* (complete with its head: no body, such as a gRPC trailers-only answer, whose grpc-status
     * gRPC clients look for only in a HEADERS frame that ends the stream) */
    int bodyless = wk_h1_bodyless((x->tflags & WK_T_HEAD_REQ) != 0, rs->status) ||
                   (x->tflags & WK_T_RESP_DONE);

    if (rs->status < 200 || (st->flags & S_RESPONDED)) {
        return -1; /* (a 101 nobody can have asked for over HTTP/2) */
    }
    if (rs->chunked) {
        x->tflags |= WK_T_DECHUNK; /* HTTP/2 frames the body itself */
    }
    if (wk_h2_submit_head(st->h->s, st->id, rs, x->tx->reqid, x->tx->reqid_len,
                          bodyless ? NULL : &prd) != 0) {
        return -1;
    }
    /* A HEADERS frame cannot be taken back: from here on only a reset can end it badly. */
    x->tflags |= WK_T_CLIENT_SENT;
    x->status = (uint16_t)rs->status;
    st->flags |= S_RESPONDED | (bodyless ? S_NOBODY : 0);
    return 0;
}

static void h2_unhead(struct wk_xchg *x)
{
    (void)x; /* never asked: the head counts as sent (WK_T_CLIENT_SENT) */
}

/* A 1xx of the backend goes on as a HEADERS frame of its own. A 100 (Continue) only tells what
 * we told the client already, if it asked (Expect is answered here, never forwarded), as the
 * HTTP/1 side does. */
static int h2_interim(struct wk_xchg *x, const struct wk_h1_resp *rs, const char *head, size_t hlen)
{
    struct wk_h2_stream *st = xstream(x);

    (void)head;
    (void)hlen;
    if (rs->status == 100 || (st->flags & S_RESPONDED)) {
        return 0;
    }
    return wk_h2_submit_head(st->h->s, st->id, rs, x->tx->reqid, x->tx->reqid_len, NULL);
}

/* The response's trailers: kept until its last DATA frame is out (resp_read). */
static int h2_trailers(struct wk_xchg *x, const struct wk_hdr *f, uint32_t n)
{
    struct wk_h2_stream *st = xstream(x);

    free(st->trail);
    st->trail = wk_h2_fields_new(f, n);
    if (st->trail == NULL) {
        wk_xchg_cut(x, SHM_CUT_INTERNAL);
        h2_close(x);
        return -1;
    }
    return 0;
}

/* A gRPC call whose response began and cannot go on ends as a gRPC server ends one: the DATA
 * queued, then <code> (WK_GRPC_*) and <msg> in trailers, instead of a reset that clients report
 * as INTERNAL or CANCELLED; the exchange ends as cut. 1 when so, 0 when the stream is no such
 * call (the caller resets it). */
static int grpc_end(struct wk_h2_stream *st, unsigned code, const char *msg)
{
    struct wk_h2_fields *tf;

    if (code == 0 || !stream_grpc(st) ||
        (st->flags & (S_RESPONDED | S_NOBODY | S_EOF | S_ENDED)) != S_RESPONDED ||
        (tf = wk_h2_grpc_status(code, msg)) == NULL) {
        return 0;
    }
    free(st->trail);
    st->trail = tf;
    stream_end_exchange(st, -1);
    nghttp2_session_resume_data(st->h->s, st->id);
    return 1;
}

static void h2_close(struct wk_xchg *x)
{
    struct wk_h2_stream *st = xstream(x);
    const char *msg;
    unsigned code = wk_grpc_cut_code(x->tx != NULL ? x->tx->cut : SHM_CUT_NONE, &msg);

    if (!grpc_end(st, code, msg)) {
        stream_fail(st, NGHTTP2_INTERNAL_ERROR);
    }
}

static void h2_rearm(struct wk_xchg *x)
{
    struct wk_h2_stream *st = xstream(x);
    const struct shm_service *svc;
    uint32_t ms;

    if ((st->flags & (S_ENDED | S_EOF)) || x->at.gen == NULL || x->at.service == SHM_NONE ||
        (x->tflags & WK_T_REPLIED)) {
        wk_timer_disarm(&st->timer);
        return;
    }
    svc = wk_xsvc(x);
    if (x->up != NULL && (x->up->flags & (WK_UP_F_CONNECTING | WK_UP_F_TLSHS))) {
        ms = svc->connect_timeout_ms;
    } else if (!(x->tflags & WK_T_REQ_DONE)) {
        ms = DSP_MAX(x->at.gen->snap->limits.idle_timeout_ms, svc->response_timeout_ms);
    } else if (x->tflags & WK_T_RESP_HEAD) {
        ms = svc->stream_idle_timeout_ms; /* a gap inside the body (SSE, slow downloads) */
        if (x->tx != NULL && wk_xchg_has_ready(x)) {
            /* Bytes wait for the client (its window, or the socket): it must take some
             * within send_timeout_ms (wk_h2_stream_timeout). */
            ms = x->at.gen->snap->limits.send_timeout_ms;
        }
    } else {
        ms = svc->response_timeout_ms;
    }
    if (st->deadline != 0) {
        /* grpc-timeout: every phase ends by the call's deadline at the latest. */
        ms = (uint32_t)DSP_MIN((uint64_t)ms, st->deadline > wk.now ? st->deadline - wk.now : 0);
    }
    wk_timer_arm(&st->timer, ms ? ms : 1);
}

static void h2_wake(struct wk_xchg *x)
{
    struct wk_h2 *h = xstream(x)->h;

    /* The backend of one stream had an event: the others' may follow in this batch. */
    if (!h->due) {
        h->due = 1;
        h->due_next = wk.h2_due;
        wk.h2_due = h;
    }
}

static void due_remove(struct wk_h2 *h)
{
    for (struct wk_h2 **pp = &wk.h2_due; h->due && *pp != NULL; pp = &(*pp)->due_next) {
        if (*pp == h) {
            *pp = h->due_next;
            h->due = 0;
            break;
        }
    }
}

void wk_h2_run_due(void)
{
    while (wk.h2_due != NULL) {
        struct wk_h2 *h = wk.h2_due;
        due_remove(h);
        wk_client_run(h->c);
    }
}

static const struct wk_xchg_ops wk_h2_ops = {
    .reply = h2_reply,
    .resp_head = h2_resp_head,
    .unhead = h2_unhead,
    .interim = h2_interim,
    .trailers = h2_trailers,
    .close = h2_close,
    .rearm = h2_rearm,
    .wake = h2_wake,
};

/* Does the stream's response wait for the client to take it? */
static int stream_stalled(const struct wk_h2_stream *st)
{
    const struct wk_txn *tx = st->x.tx;

    if ((st->flags & (S_RESPONDED | S_EOF)) != S_RESPONDED) {
        return 0;
    }
    return st->reply != NULL || (tx != NULL && wk_xchg_has_ready(&st->x));
}

/* The call's deadline (grpc-timeout) passed: DEADLINE_EXCEEDED while the response has not
 * begun, else the stream is cancelled (the client's own deadline has passed too). */
static void deadline_passed(struct wk_h2_stream *st)
{
    struct wk_xchg *x = &st->x;

    if (!(x->tflags & WK_T_RESP_HEAD)) {
        wk_xchg_error(x, 504, "Gateway timeout", "The call's deadline (grpc-timeout) passed", 0);
        return;
    }
    wk_xchg_cut(x, SHM_CUT_DEADLINE);
    if (!grpc_end(st, WK_GRPC_DEADLINE_EXCEEDED, "Deadline exceeded")) {
        stream_fail(st, NGHTTP2_CANCEL);
    }
}

void wk_h2_stream_timeout(struct wk_h2_stream *st)
{
    struct wk_h2 *h = st->h;
    struct wk_client *c = h->c;

    if (st->deadline != 0 && wk.now >= st->deadline &&
        (st->flags & (S_STARTED | S_ENDED | S_EOF)) == S_STARTED &&
        !(st->x.tflags & WK_T_REPLIED)) {
        deadline_passed(st);
        wk_client_run(c);
        return;
    }
    if (stream_stalled(st)) {
        /* The client took nothing for send_timeout_ms. With its window shut (a zero-window
         * stall), that is abuse: the stream is reset and its backend connection released; a
         * shut connection window ends the connection. A socket that does not drain is the
         * connection timer's business (conn_timer). */
        int conn_shut = nghttp2_session_get_remote_window_size(h->s) <= 0;
        int shut = conn_shut || nghttp2_session_get_stream_remote_window_size(h->s, st->id) <= 0;
        if ((st->flags & (S_STARTED | S_ENDED)) == S_STARTED) {
            wk_xchg_cut(&st->x, SHM_CUT_SEND_TIMEOUT);
        }
        stream_end_exchange(st, -1);
        rst(st, shut ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_CANCEL);
        if (conn_shut) {
            wk_h2_guard_abuse(&h->g, h->s, SHM_H2_ZERO_WINDOW);
        } else if (shut) {
            wk_h2_guard_count(SHM_H2_ZERO_WINDOW);
        }
        wk_client_run(c);
        return;
    }
    if ((st->flags & (S_STARTED | S_ENDED | S_EOF)) == S_STARTED) {
        wk_xchg_expired(&st->x);
    }
    wk_client_run(c);
}


/* ---- the connection -------------------------------------------------------------------------- */
/* A new server session for <h> with our SETTINGS and connection window submitted. 0 or -1. */
static int session_new(struct wk_h2 *h)
{
    static const struct wk_h2_cbs cbs = {on_begin_headers, on_header,     on_frame_recv,
                                         on_frame_send,    on_data_chunk, on_stream_close,
                                         on_invalid_frame};

    return wk_h2_session_new(&h->s, h, &h->mem, &cbs, cur_snap(), h->g.table0);
}

int wk_h2_start(struct wk_client *c, const char *pre, size_t plen)
{
    struct wk_h2 *h;

    if ((h = dsp_slab_calloc(&h2_slab)) == NULL) {
        return -1;
    }
    h->c = c;
    if (session_new(h) != 0) {
        wk_h2_session_del(&h->s, &h->mem);
        dsp_slab_free(&h2_slab, h);
        return -1;
    }
    c->h2 = h;
    c->state = WK_CS_H2;
    if (plen > 0 && wk_h2_guard_recv(&h->g, h->s, (const uint8_t *)pre, plen) < 0 && !h->g.abused) {
        return -1; /* (c->h2 is set: the close frees it) */
    }
    return 0; /* (an abuse in the first bytes: wk_h2_step() sends the GOAWAY) */
}

/* An idle connection's session, deleted (wk_h2_timeout), is rebuilt before anything uses it. */
static int session_wake(struct wk_h2 *h)
{
    if (h->s != NULL) {
        return 0;
    }
    if (session_new(h) != 0 || wk_h2_wake(h->s, &h->g, &h->saved) != 0) {
        wk_h2_session_del(&h->s, &h->mem);
        return -1;
    }
    return 0;
}

void wk_h2_free(struct wk_client *c)
{
    struct wk_h2 *h = c->h2;

    if (h == NULL) {
        return;
    }
    while (h->streams != NULL) {
        stream_free(h->streams);
    }
    due_remove(h);
    wk_h2_session_del(&h->s, &h->mem);
    free(h->out);
    dsp_slab_free(&h2_slab, h);
    c->h2 = NULL;
}

int wk_h2_idle(const struct wk_client *c)
{
    return c->h2 == NULL || c->h2->nstreams == 0;
}

/* Serialize what nghttp2 has to send into h->out and write it. Returns 1 on progress, 0 when
 * blocked or done, -1 when the connection failed. */
static int flush(struct wk_client *c, struct wk_h2 *h)
{
    int progress = 0;

    for (;;) {
        if (h->out_off < h->out_len) {
            ssize_t n;
            if (!(c->flags & WK_C_F_WRITABLE)) {
                return progress;
            }
            n = xp_write(&c->xp, h->out + h->out_off, h->out_len - h->out_off, 0);
            if (n == XP_WANT_WRITE) {
                c->flags &= ~WK_C_F_WRITABLE;
                return progress;
            }
            if (n == XP_WANT_READ) {
                return progress;
            }
            if (n < 0) {
                return -1;
            }
            h->out_off += (uint32_t)n;
            progress = 1;
            if (h->out_off < h->out_len) {
                continue;
            }
            h->out_off = h->out_len = 0;
        }
        for (;;) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(h->s, &data);
            if (n < 0) {
                return -1;
            }
            if (n == 0) {
                break;
            }
            if ((size_t)n > h->out_cap - h->out_len) {
                uint32_t cap = DSP_MAX(h->out_cap * 2, (uint32_t)(h->out_len + (size_t)n));
                char *p = realloc(h->out, cap);
                if (p == NULL) {
                    return -1;
                }
                h->out = p;
                h->out_cap = cap;
            }
            h->mem->dirty = 1;
            memcpy(h->out + h->out_len, data, (size_t)n);
            h->out_len += (uint32_t)n;
            if (h->out_len >= H2_OUT_SIZE) {
                break; /* enough queued: the socket takes it first */
            }
        }
        if (h->out_off == h->out_len) {
            return progress;
        }
    }
}

/* One pass over the streams: move request and response bytes through each exchange. */
static int pump_streams(struct wk_h2 *h)
{
    int progress = 0;

    for (struct wk_h2_stream *st = h->streams, *next; st != NULL; st = next) {
        struct wk_xchg *x = &st->x;
        int r, moved = 0;

        next = st->next;
        if ((st->flags & (S_STARTED | S_ENDED | S_EOF)) != S_STARTED ||
            (x->tflags & WK_T_REPLIED)) {
            continue;
        }
        r = wk_xchg_send(x);
        if (r < 0) {
            continue;
        }
        moved |= r;
        r = wk_xchg_recv(x);
        if (r < 0) {
            continue;
        }
        moved |= r;
        if (wk_xchg_parse(x) < 0 || (st->flags & (S_ENDED | S_EOF))) {
            continue;
        }
        if ((x->tflags & (WK_T_RESP_DONE | WK_T_REPLIED)) == WK_T_RESP_DONE &&
            (st->flags & S_NOBODY)) {
            /* A response without a body ended with its HEADERS frame. */
            st->flags |= S_EOF;
            wk_xchg_tally(x, 1);
            wk_xchg_finish(x);
            wk_timer_disarm(&st->timer);
            continue;
        }
        if ((st->flags & S_RESPONDED) && x->tx != NULL &&
            (wk_xchg_has_ready(x) || wk_xchg_body_final(x))) {
            nghttp2_session_resume_data(h->s, st->id);
        }
        if (st->unacked > 0 && x->send_off == x->parsed_off) {
            /* All of it reached the backend: the client may send that much again. */
            nghttp2_session_consume(h->s, st->id, (size_t)st->unacked);
            st->unacked = 0;
            moved = 1;
        }
        if (moved) {
            h2_rearm(x);
        }
        progress |= moved;
    }
    return progress;
}

/* The connection's own timer: idle (no stream) or a client that does not drain its frames. */
static void conn_timer(struct wk_client *c, struct wk_h2 *h)
{
    const struct shm_snap_hdr *sn = cur_snap();

    if (h->out_off < h->out_len && !(c->flags & WK_C_F_WRITABLE)) {
        if (c->timer.queue == 0) {
            wk_timer_arm(&c->timer, sn->limits.send_timeout_ms);
        }
    } else if (h->nstreams == 0) {
        wk_timer_arm(&c->timer, ((h->mem != NULL && h->mem->dirty) || h->g.table0 == 1) &&
                                        sn->limits.idle_timeout_ms > H2_RELEASE_MS
                                    ? (h->g.table0 == 1 ? 100 : H2_RELEASE_MS) /* (ACK in) */
                                    : sn->limits.idle_timeout_ms);
    } else {
        wk_timer_disarm(&c->timer);
    }
}

/* The end of a connection whose last frames are written. Frames the client sent meanwhile (a
 * WINDOW_UPDATE for the last DATA, a stream opened across our GOAWAY) would turn a close into a
 * reset that can destroy those last frames on their way: with no stream left, writing is shut
 * down and the input drained for a moment (LINGER), as for HTTP/1. Returns -1 when closed, 1. */
static int h2_end(struct wk_client *c)
{
    if (c->h2->nstreams != 0 || (c->flags & (WK_C_F_EOF | WK_C_F_HUP))) {
        wk_client_close(c);
        return -1;
    }
    wk_h2_free(c);
    xp_shutdown(&c->xp);
    c->state = WK_CS_LINGER;
    wk_client_rearm(c);
    return 1;
}

/* A connection error (nghttp2 or an abuse limit queued a GOAWAY): send it if the socket takes
 * it, end the streams (logged as cut) and linger (h2_end), so that the client's unread frames
 * do not turn our close into a reset that destroys the GOAWAY. Returns 1 or -1 (closed). */
static int goaway_close(struct wk_client *c, struct wk_h2 *h)
{
    if (flush(c, h) < 0 || h->out_off < h->out_len) {
        wk_client_close(c);
        return -1;
    }
    while (h->streams != NULL) {
        stream_free(h->streams);
    }
    return h2_end(c);
}

int wk_h2_step(struct wk_client *c)
{
    struct wk_h2 *h = c->h2;
    int progress = 0, r;

    if (!(c->flags & WK_C_F_READABLE) && xp_pending(&c->xp)) {
        c->flags |= WK_C_F_READABLE;
    }
    if (session_wake(h) != 0) {
        wk_client_close(c);
        return -1;
    }
    if (h->g.abused) {
        return goaway_close(c, h);
    }
    if ((c->flags & WK_C_F_READABLE) && !(c->flags & WK_C_F_EOF)) {
        ssize_t n;
        if (c->in.data == NULL && wk_buf_get(&c->in, wk_head_buf_size(cur_snap())) != 0) {
            wk_client_close(c);
            return -1;
        }
        n = xp_read(&c->xp, c->in.data, c->in.cap);
        if (n == XP_WANT_READ) {
            c->flags &= ~WK_C_F_READABLE;
        } else if (n == XP_WANT_WRITE) {
            c->flags &= ~WK_C_F_WRITABLE;
        } else if (n == XP_ERR) {
            wk_client_close(c);
            return -1;
        } else if (n == 0) {
            c->flags |= WK_C_F_EOF;
        } else {
            if (!(c->flags & WK_C_F_RDHUP) && xp_drained(&c->xp)) {
                c->flags &= ~WK_C_F_READABLE;
            }
            progress = 1;
            if (wk_h2_guard_recv(&h->g, h->s, (const uint8_t *)c->in.data, (size_t)n) < 0) {
                return goaway_close(c, h);
            }
        }
    }
    if (c->flags & (WK_C_F_EOF | WK_C_F_HUP)) {
        wk_client_close(c); /* (streams in progress are logged as cut, 499) */
        return -1;
    }
    if (wk.stopping && !h->goaway) {
        h->goaway = 1;
        nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h->s), NGHTTP2_NO_ERROR, NULL,
                              0);
    }
    progress |= pump_streams(h);
    r = flush(c, h);
    if (r < 0) {
        wk_client_close(c);
        return -1;
    }
    progress |= r;
    if ((!nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s) &&
         h->out_off == h->out_len) ||
        (h->goaway && h->nstreams == 0 && h->out_off == h->out_len)) {
        return h2_end(c);
    }
    /* Idle HTTP/2 connections hold no buffers (as idle HTTP/1 ones): what was read is in
     * nghttp2 already, and the frame queue is empty. */
    if (!(c->flags & WK_C_F_READABLE)) {
        wk_buf_put(&c->in);
    }
    if (h->out_off == h->out_len && h->nstreams == 0) {
        free(h->out);
        h->out = NULL;
        h->out_off = h->out_len = h->out_cap = 0;
    }
    conn_timer(c, h);
    return progress;
}

void wk_h2_timeout(struct wk_client *c)
{
    struct wk_h2 *h = c->h2;
    uint32_t idle_ms = cur_snap()->limits.idle_timeout_ms;

    if (h != NULL && h->s != NULL && h->nstreams == 0 && (h->mem->dirty || h->g.table0 == 1) &&
        h->out_off == h->out_len && !nghttp2_session_want_write(h->s) && idle_ms > H2_RELEASE_MS) {
        /* Idle for H2_RELEASE_MS: the session goes (wk_h2idle.c), or at least the frame
         * buffer's pages; on to the idle timeout. */
        int quick = h->g.table0 == 1; /* (armed 100 ms after the ACK, not H2_RELEASE_MS) */
        if (wk_h2_sleep_check(h->s, &h->g, &h->saved) == 1 && flush(c, h) < 0) {
            wk_client_close(c);
            return;
        }
        if (h->out_off == h->out_len && wk_h2_sleep_check(h->s, &h->g, &h->saved) == 0) {
            wk_h2_session_del(&h->s, &h->mem);
            wk.h2_slept++;
        } else {
            wk_h2_mem_idle(h->mem);
        }
        wk_timer_arm(&c->timer, idle_ms - (quick ? 100 : H2_RELEASE_MS)); /* (conn_timer's) */
        return;
    }
    /* Idle (no stream for idle_timeout_ms), or frames not drained for send_timeout_ms: a GOAWAY
     * if the socket takes it, then the close. */
    if (h != NULL && h->out_off == h->out_len && session_wake(h) == 0) {
        nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h->s), NGHTTP2_NO_ERROR, NULL,
                              0);
        if (flush(c, h) >= 0 && h->out_off == h->out_len) {
            h2_end(c);
            return;
        }
    }
    wk_client_close(c);
}
