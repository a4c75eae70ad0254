/* dispatcher: HTTP/2 to backends (services with protocol = "h2" or "grpc"). An nghttp2 client
 * session per backend connection, on the transport (common/xport.h) like every other socket:
 * nghttp2 does the framing, HPACK, flow control and the RFC 9113 message checks, and no I/O.
 *
 * Each worker keeps, per backend runtime slot, a list of connections (wk.pools[slot].h2) on
 * which exchanges are multiplexed as streams. A connection takes streams up to the backend's
 * SETTINGS_MAX_CONCURRENT_STREAMS (until its first SETTINGS arrive, the last value that backend
 * gave, 100 at first); when all are in use, another connection is opened. Streams wait on a
 * connection until it is connected (TLS with ALPN "h2", or prior knowledge) and the backend's
 * SETTINGS are in; those that no longer fit then go elsewhere. A GOAWAY closes a connection to
 * new streams: the streams it covers finish, nghttp2 closes the others as REFUSED_STREAM and
 * their exchanges retry them as never sent.
 *
 * The exchange (wk_xchg.c) drives a stream through wk_h2up_send() / wk_h2up_recv() in place of
 * its HTTP/1 upstream path: the request head it built for HTTP/1 is translated to a header
 * block, the request body is read out of the client side's buffer by a data provider (decoded
 * when it is chunk-framed), the response head goes to the client side as a struct wk_h1_resp,
 * the response body into the exchange's buffer (chunk-framed for an HTTP/1.1 client when the
 * backend gave no length), trailers into the last chunk or through x->ops->trailers. Flow
 * control is the back-pressure both ways: request DATA is taken only as the backend's windows
 * allow, response DATA is acknowledged only once it moved on to the client side, so a stream
 * holds at most limits.h2_stream_window (plus the exchange's buffer) in each direction.
 *
 * Nothing of the exchange runs inside nghttp2's callbacks: they record what arrived on the
 * stream and queue it to be woken (x->ops->wake) once the connection's input is handled. What
 * the exchanges give a connection (new streams, request DATA, window updates, resets) is written
 * once after the batch's events (wk_h2up_run_due()), not once per stream. */
#include "worker/wk_h2up.h"

#include <ctype.h>
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/net.h"
#include "shm/shm_snap.h"
#include "worker/wk_grpc.h"
#include "worker/wk_tls.h"

int h2up_conn_flush(struct wk_h2up_conn *c);
static void conn_fail(struct wk_h2up_conn *c, int why);
int h2up_stream_place(struct wk_h2up_stream *st, const struct wk_xchg *x);

/* ---- small helpers ------------------------------------------------------------------------- */
void h2up_stream_wake(struct wk_h2up_stream *st)
{
    struct wk_h2up_conn *c = st->c;

    if (c == NULL || (st->flags & S_WAKE)) {
        return;
    }
    st->flags |= S_WAKE;
    st->wnext = c->wake;
    c->wake = st;
}

static void wake_unlink(struct wk_h2up_conn *c, struct wk_h2up_stream *st)
{
    if (!(st->flags & S_WAKE)) {
        return;
    }
    st->flags &= ~S_WAKE;
    for (struct wk_h2up_stream **p = &c->wake; *p != NULL; p = &(*p)->wnext) {
        if (*p == st) {
            *p = st->wnext;
            break;
        }
    }
}

void h2up_stream_unlink(struct wk_h2up_stream *st)
{
    struct wk_h2up_conn *c = st->c;

    if (c == NULL) {
        return;
    }
    wake_unlink(c, st);
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        c->streams = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    }
    if (!(st->flags & S_SUBMITTED) && c->nwait > 0) {
        c->nwait--;
    }
    st->next = st->prev = NULL;
    st->c = NULL;
}

static void stream_link(struct wk_h2up_conn *c, struct wk_h2up_stream *st)
{
    st->c = c;
    st->prev = NULL;
    st->next = c->streams;
    if (c->streams != NULL) {
        c->streams->prev = st;
    }
    c->streams = st;
}

/* The attempt on the stream failed with <why>; <stale>: in a way that says nothing about the
 * backend (refused, never sent, a used connection gone), retried for free a few times. */
void h2up_stream_failed(struct wk_h2up_stream *st, int why, int stale)
{
    if (!(st->flags & S_FAILED)) {
        st->flags |= S_FAILED;
        st->fail = (uint8_t)why;
        if (stale && st->x != NULL && st->x->tx->h2_stale < H2UP_MAX_STALE) {
            st->x->tx->h2_stale++;
            st->flags |= S_STALE;
        }
    }
    h2up_stream_wake(st);
}

/* The connection has no stream: it waits for the next one for H2UP_IDLE_MS. */
void h2up_conn_idle_check(struct wk_h2up_conn *c)
{
    if (!(c->flags & C_DEAD) && c->streams == NULL && c->open == 0 &&
        !(c->flags & (C_CONNECTING | C_TLSHS))) {
        wk_timer_arm(&c->timer, H2UP_IDLE_MS);
        if (c->out_off == c->out_len && c->out != NULL) {
            free(c->out); /* an idle connection holds no frame buffer */
            c->out = NULL;
            c->out_off = c->out_len = c->out_cap = 0;
        }
    }
}

/* ---- nghttp2 callbacks: record, never drive an exchange ------------------------------------ */
static struct wk_h2up_stream *cb_stream(nghttp2_session *s, int32_t id)
{
    return nghttp2_session_get_stream_user_data(s, id);
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct wk_h2up_stream *st = cb_stream(s, f->hd.stream_id);

    (void)ud;
    if (st != NULL && f->hd.type == NGHTTP2_HEADERS && !(st->flags & S_HEAD)) {
        st->nf = 0; /* a new head (after 1xx ones); trailers go after the head's fields */
        st->hb_len = 0;
    }
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct wk_h2up_stream *st = cb_stream(s, f->hd.stream_id);
    struct wk_h2up_conn *c = ud;
    size_t need = nlen + vlen;

    (void)flags;
    if (st == NULL || f->hd.type != NGHTTP2_HEADERS) {
        return 0;
    }
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
        unsigned v = 0;
        for (size_t i = 0; i < vlen && i < 3; i++) {
            v = v * 10 + (unsigned)(value[i] - '0'); /* (nghttp2 checked: 3 digits) */
        }
        st->status = v;
        return 0;
    }
    if (nlen > 0 && name[0] == ':') {
        return 0;
    }
    if (st->nf >= ((st->flags & S_HEAD) ? st->nhead + H2UP_MAX_TRAILERS : H2UP_MAX_FIELDS) ||
        st->hb_len + need > 2 * c->hb_max) {
        st->flags |= S_BAD; /* more than a head may hold: the stream is reset, a 502 */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (st->hb_len + need > st->hb_cap) {
        uint32_t cap = DSP_MAX(st->hb_cap * 2, (uint32_t)(st->hb_len + need));
        char *p = realloc(st->hb, cap);
        if (p == NULL) {
            st->flags |= S_BAD;
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        st->hb = p;
        st->hb_cap = cap;
    }
    st->f[st->nf].noff = st->hb_len;
    st->f[st->nf].nlen = (uint32_t)nlen;
    memcpy(st->hb + st->hb_len, name, nlen);
    st->hb_len += (uint32_t)nlen;
    st->f[st->nf].voff = st->hb_len;
    st->f[st->nf].vlen = (uint32_t)vlen;
    memcpy(st->hb + st->hb_len, value, vlen);
    st->hb_len += (uint32_t)vlen;
    st->nf++;
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    struct wk_h2up_stream *st = cb_stream(s, id);
    struct wk_h2up_conn *c = ud;

    (void)flags;
    if (st == NULL || (st->flags & (S_FAILED | S_NOBODY)) || !(st->flags & S_HEAD)) {
        nghttp2_session_consume(s, id, len); /* nobody wants it: the windows stay open */
        return 0;
    }
    if (st->rb_off > 0 && st->rb_len + len > st->rb_cap) {
        memmove(st->rb, st->rb + st->rb_off, st->rb_len - st->rb_off);
        st->rb_len -= st->rb_off;
        st->rb_off = 0;
    }
    if (st->rb_len + len > c->rb_cap) {
        /* More than the window we gave: nghttp2 lets no such peer through, but never trust. */
        nghttp2_session_consume(s, id, len);
        st->flags |= S_BAD;
        h2up_stream_failed(st, WK_FAIL_BAD, 0);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (st->rb_len + len > st->rb_cap) {
        /* The buffer starts small (most answers are) and grows up to the stream window: not
         * a window-sized block (a mapping of its own) per stream. */
        uint32_t cap = DSP_MAX(st->rb_cap * 2, (uint32_t)(st->rb_len + len));
        char *p;
        cap = DSP_MIN(DSP_MAX(cap, (uint32_t)H2UP_RB_FIRST), c->rb_cap);
        p = realloc(st->rb, cap);
        if (p == NULL) {
            nghttp2_session_consume(s, id, len);
            h2up_stream_failed(st, WK_FAIL_BAD, 0);
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        st->rb = p;
        st->rb_cap = cap;
    }
    memcpy(st->rb + st->rb_len, data, len);
    st->rb_len += (uint32_t)len;
    h2up_stream_wake(st);
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct wk_h2up_conn *c = ud;
    struct wk_h2up_stream *st;

    if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK)) {
        uint32_t m = nghttp2_session_get_remote_settings(s,
                                                         NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        c->max_streams = m;
        wk.pools[c->be_slot].h2_max = m > 0 ? m : 1;
        c->flags |= C_SETTINGS;
        return 0;
    }
    if (f->hd.type == NGHTTP2_GOAWAY) {
        c->flags |= C_GOAWAY; /* (nghttp2 closes the streams it does not cover: REFUSED) */
        return 0;
    }
    st = cb_stream(s, f->hd.stream_id);
    if (st == NULL) {
        return 0;
    }
    if (f->hd.type == NGHTTP2_HEADERS) {
        if (!(st->flags & S_HEAD)) {
            if (st->status >= 200) {
                st->flags |= S_HEAD;
                st->nhead = st->nf;
            } else if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) || h2up_interim(st) != 0) {
                st->flags |= S_BAD; /* (an END_STREAM there: nghttp2 refuses that already) */
                h2up_stream_failed(st, WK_FAIL_BAD, 0);
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            }
        } else {
            st->flags |= S_TRAILERS;
        }
        h2up_stream_wake(st);
    }
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        st->flags |= S_END;
        h2up_stream_wake(st);
    }
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct wk_h2up_stream *st = cb_stream(s, f->hd.stream_id);

    (void)ud;
    if (st != NULL && st->x != NULL && f->hd.type == NGHTTP2_HEADERS) {
        st->x->tflags |= WK_T_UP_WRITTEN;
    }
    return 0;
}

static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int err, void *ud)
{
    struct wk_h2up_stream *st = cb_stream(s, f->hd.stream_id);

    (void)err;
    (void)ud;
    if (st != NULL) {
        st->flags |= S_BAD; /* nghttp2 resets it (a malformed message) */
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct wk_h2up_conn *c = ud;
    struct wk_h2up_stream *st = cb_stream(s, id);

    if (st == NULL) {
        return 0; /* (a stream its exchange let go: counted out then) */
    }
    if (c->open > 0) {
        c->open--;
    }
    nghttp2_session_set_stream_user_data(s, id, NULL);
    st->flags |= S_CLOSED;
    if (code == NGHTTP2_NO_ERROR && (st->flags & S_END)) {
        c->flags |= C_USED;
    } else if (code == NGHTTP2_REFUSED_STREAM && !(st->flags & S_HEAD)) {
        /* Refused, or beyond a GOAWAY's last stream: the backend processed nothing of it. */
        st->flags |= S_UNSENT;
        h2up_stream_failed(st, WK_FAIL_RESET, 1);
    } else if (!(st->flags & S_END) || code != NGHTTP2_NO_ERROR) {
        h2up_stream_failed(st, (st->flags & S_BAD) ? WK_FAIL_BAD : WK_FAIL_RESET, 0);
    }
    h2up_stream_wake(st);
    return 0;
}

/* ---- the request ----------------------------------------------------------------------------- */
static size_t nv_set(nghttp2_nv *nv, const char *name, size_t nlen, const char *value, size_t vlen)
{
    nv->name = (uint8_t *)(uintptr_t)name;
    nv->namelen = nlen;
    nv->value = (uint8_t *)(uintptr_t)value;
    nv->valuelen = vlen;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
    return 1;
}

/* Bytes of a chunk-framed request's trailer section kept after x->send_off while the decoder
 * reads it (they stay in the client's buffer until the section ends: req_trailers()). */
uint32_t h2up_req_held(const struct wk_h2up_stream *st, const struct wk_xchg *x)
{
    return x->tx->req_chunked && !(st->flags & S_REQ_DEC) && wk_chunk_in_trailer(&st->dec)
               ? st->dec.line
               : 0;
}

/* The trailer section of a chunk-framed request, whole (its <len> bytes at <p>), as fields for
 * the trailing HEADERS: those wk_trailer_ok() lets through with a clean value, names lower-cased
 * in place (the bytes are the request's, already consumed), at most WK_MAX_HEADERS. */
static uint32_t req_trailers(char *p, size_t len, nghttp2_nv *nv)
{
    struct wk_hdr f[WK_MAX_HEADERS];
    uint32_t n = wk_trailer_split(p, len, f, WK_MAX_HEADERS);

    for (uint32_t i = 0; i < n; i++) {
        char *name = p + (f[i].name - p);
        for (uint32_t j = 0; j < f[i].nlen; j++) {
            name[j] = (char)tolower((unsigned char)name[j]);
        }
        nv_set(&nv[i], name, f[i].nlen, f[i].value, f[i].vlen);
    }
    return n;
}

/* Decode a chunk-framed request body from x->rq [send_off, parsed_off) into <buf>; a trailer
 * section is held after send_off until it ends, then turned into <nv> (*ntr fields). Returns
 * the data bytes written. */
static size_t req_dechunk(struct wk_h2up_stream *st, struct wk_xchg *x, uint8_t *buf, size_t len,
                          nghttp2_nv *nv, uint32_t *ntr)
{
    size_t out = 0;

    while (out < len && !(st->flags & S_REQ_DEC)) {
        uint32_t base = x->send_off + h2up_req_held(st, x);
        size_t used = 0, dl = 0, n;
        int r;

        if (base >= x->parsed_off) {
            break;
        }
        n = DSP_MIN((size_t)(x->parsed_off - base), len - out);
        r = wk_chunk_parse(&st->dec, x->rq->data + base, n, &used, &dl);
        if (r == WK_CHUNK_ERROR) {
            break; /* (checked before by the client side: not reached) */
        }
        if (r == WK_CHUNK_DATA) {
            memcpy(buf + out, x->rq->data + base + used - dl, dl);
            out += dl;
        }
        if (r == WK_CHUNK_DONE) {
            uint32_t end = base + (uint32_t)used, tl = DSP_MIN(st->dec.line, end - x->send_off);
            *ntr = req_trailers(x->rq->data + end - tl, tl, nv);
            st->flags |= S_REQ_DEC;
            x->send_off = end;
        } else {
            x->send_off = base + (uint32_t)used - h2up_req_held(st, x);
        }
    }
    return out;
}

/* The request body for the stream's DATA frames: x->rq [send_off, parsed_off), decoded when it
 * is chunk-framed. */
static ssize_t req_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *dflags,
                        nghttp2_data_source *src, void *ud)
{
    struct wk_h2up_stream *st = cb_stream(s, id);
    nghttp2_nv nv[WK_MAX_HEADERS];
    uint32_t ntr = 0;
    struct wk_xchg *x;
    size_t out = 0;

    (void)src;
    (void)ud;
    if (st == NULL || st->x == NULL) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* (its exchange went: reset) */
    }
    x = st->x;
    if (!x->tx->req_chunked) {
        out = DSP_MIN(len, (size_t)(x->parsed_off - x->send_off));
        memcpy(buf, x->rq->data + x->send_off, out);
        x->send_off += (uint32_t)out;
    } else {
        out = req_dechunk(st, x, buf, len, nv, &ntr);
    }
    if (out > 0) {
        x->tflags |= WK_T_UP_WRITTEN;
        h2up_stream_wake(st); /* (its client side may read more now) */
    }
    if ((x->tflags & WK_T_REQ_DONE) && x->send_off == x->parsed_off) {
        *dflags |= NGHTTP2_DATA_FLAG_EOF;
        st->flags |= S_REQ_EOF;
        if (x->nrtrail > 0) {
            /* The HTTP/2 client's trailers (checked by its side) end the stream instead. */
            ntr = DSP_MIN(x->nrtrail, (uint32_t)WK_MAX_HEADERS);
            for (uint32_t i = 0; i < ntr; i++) {
                nv_set(&nv[i], x->rtrail[i].name, x->rtrail[i].nlen, x->rtrail[i].value,
                       x->rtrail[i].vlen);
            }
        }
        if (ntr > 0 && nghttp2_submit_trailer(s, id, nv, ntr) == 0) {
            *dflags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        return (ssize_t)out;
    }
    if (out == 0) {
        st->flags |= S_DEFERRED;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)out;
}


/* Fields HTTP/2 forbids (connection-specific, RFC 9113 8.2.2) or that become pseudo-fields. */
static int req_field_dropped(const char *n, size_t l)
{
    static const char *const drop[] = {"host",          "connection",
                                       "keep-alive",    "proxy-connection",
                                       "upgrade",       "te",
                                       "expect",        "transfer-encoding",
                                       "http2-settings"};

    for (size_t i = 0; i < DSP_ARRAY_SIZE(drop); i++) {
        if (strlen(drop[i]) == l && strncasecmp(drop[i], n, l) == 0) {
            return 1;
        }
    }
    return 0;
}

size_t wk_h2up_head_nv(char *p, size_t len, int https, int te_trailers, nghttp2_nv *nva, size_t max)
{
    const char *end = p + len, *sp1, *sp2, *eol;
    size_t n = 4;

    eol = memchr(p, '\r', len);
    sp1 = eol ? memchr(p, ' ', (size_t)(eol - p)) : NULL;
    sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (sp2 == NULL || max < 5) {
        return 0;
    }
    nv_set(&nva[0], ":method", 7, p, (size_t)(sp1 - p));
    nv_set(&nva[1], ":scheme", 7, https ? "https" : "http", https ? 5 : 4);
    nv_set(&nva[2], ":path", 5, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    nv_set(&nva[3], ":authority", 10, "", 0);
    for (p = (char *)(uintptr_t)eol + 2; p < end && *p != '\r'; p = (char *)(uintptr_t)eol + 2) {
        const char *colon = memchr(p, ':', (size_t)(end - p)), *v;
        eol = memchr(p, '\r', (size_t)(end - p));
        if (colon == NULL || eol == NULL || colon > eol) {
            return 0;
        }
        for (v = colon + 1; v < eol && *v == ' '; v++) {
        }
        if ((size_t)(colon - p) == 4 && strncasecmp(p, "host", 4) == 0) {
            nv_set(&nva[3], ":authority", 10, v, (size_t)(eol - v));
            continue;
        }
        if (req_field_dropped(p, (size_t)(colon - p))) {
            continue;
        }
        if (n >= max - 1) {
            return 0;
        }
        for (char *k = p; k < colon; k++) {
            *k = (char)(*k >= 'A' && *k <= 'Z' ? *k + 32 : *k);
        }
        n += nv_set(&nva[n], p, (size_t)(colon - p), v, (size_t)(eol - v));
    }
    if (te_trailers) {
        n += nv_set(&nva[n], "te", 2, "trailers", 8);
    }
    return n;
}

/* Submit the exchange's request: its HTTP/1 head (tx->uout, as built for any backend) becomes
 * the header block. Returns 0, or -1 when it cannot be submitted. */
static int stream_submit(struct wk_h2up_stream *st)
{
    struct wk_h2up_conn *c = st->c;
    struct wk_xchg *x = st->x;
    nghttp2_nv nva[WK_MAX_HEADERS + 16];
    nghttp2_data_provider prd = {.source.ptr = NULL, .read_callback = req_read};
    size_t n = wk_h2up_head_nv(x->tx->uout.data + x->tx->uout.start,
                               x->tx->uout.end - x->tx->uout.start, (c->flags & C_TLS) != 0,
                               x->tx->te_trailers, nva, DSP_ARRAY_SIZE(nva));
    int32_t id;

    if (n == 0) {
        return -1;
    }
    if (x->tx->req_chunked) {
        wk_chunk_init(&st->dec, 0);
    }
    id = nghttp2_submit_request(c->s, NULL, nva, n,
                                ((x->tflags & WK_T_REQ_DONE) && x->send_off == x->parsed_off &&
                                 !x->tx->req_chunked)
                                    ? NULL
                                    : &prd,
                                st);
    if (id < 0) {
        return -1;
    }
    x->tx->uout.start = x->tx->uout.end;
    st->id = id;
    st->flags |= S_SUBMITTED;
    c->nwait--;
    c->open++;
    return 0;
}

/* The connection is ready (connected, its backend's SETTINGS in): submit the streams that wait
 * on it, up to what the backend allows; the others go elsewhere. */
static void conn_submit_waiting(struct wk_h2up_conn *c)
{
    struct wk_h2up_stream *st, *next;

    for (st = c->streams; st != NULL; st = next) {
        next = st->next;
        if (st->flags & (S_SUBMITTED | S_FAILED)) {
            continue;
        }
        if (c->open >= c->max_streams || (c->flags & C_GOAWAY)) {
            struct wk_xchg *x = st->x;
            h2up_stream_unlink(st);
            if (h2up_stream_place(st, x) != 0) {
                stream_link(c, st); /* (to be woken by this connection: the failure) */
                st->flags |= S_SUBMITTED;
                h2up_stream_failed(st, WK_FAIL_CONNECT, 0);
            }
            continue;
        }
        if (stream_submit(st) != 0) {
            st->flags |= S_SUBMITTED;
            c->nwait--;
            h2up_stream_failed(st, WK_FAIL_BAD, 0);
        }
    }
}

/* ---- connections ----------------------------------------------------------------------------- */
static void pool_unlink(struct wk_h2up_conn *c)
{
    struct wk_pool *p = &wk.pools[c->be_slot];

    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else if (p->h2 == c) {
        p->h2 = c->next;
    } else {
        return;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    c->next = c->prev = NULL;
}

/* Wake the exchanges of the streams with news (outside any nghttp2 call). */
static void conn_wake_all(struct wk_h2up_conn *c)
{
    while (c->wake != NULL) {
        struct wk_h2up_stream *st = c->wake;
        c->wake = st->wnext;
        st->flags &= ~S_WAKE;
        if (st->x != NULL) {
            st->x->ops->wake(st->x);
        }
    }
}

void h2up_conn_due(struct wk_h2up_conn *c)
{
    if (!(c->flags & (C_DUE | C_DEAD))) {
        c->flags |= C_DUE;
        c->dprev = NULL;
        c->dnext = wk.h2up_due;
        if (wk.h2up_due != NULL) {
            wk.h2up_due->dprev = c;
        }
        wk.h2up_due = c;
    }
}

static void due_remove(struct wk_h2up_conn *c)
{
    if (!(c->flags & C_DUE)) {
        return;
    }
    c->flags &= ~C_DUE;
    if (c->dprev != NULL) {
        c->dprev->dnext = c->dnext;
    } else {
        wk.h2up_due = c->dnext;
    }
    if (c->dnext != NULL) {
        c->dnext->dprev = c->dprev;
    }
    c->dnext = c->dprev = NULL;
}

int wk_h2up_run_due(void)
{
    int any = wk.h2up_due != NULL;

    while (wk.h2up_due != NULL) {
        struct wk_h2up_conn *c = wk.h2up_due;
        due_remove(c);
        if (h2up_conn_flush(c) == 0 && !(c->flags & C_DEAD)) {
            conn_wake_all(c); /* (request bytes went out: their client sides may read more) */
            h2up_conn_idle_check(c);
        }
    }
    return any;
}

/* A dead connection whose streams were woken: they keep their failure, it goes. */
static void conn_release(struct wk_h2up_conn *c)
{
    due_remove(c);
    while (c->streams != NULL) {
        h2up_stream_unlink(c->streams);
    }
    wk_timer_disarm(&c->timer);
    free(c->out);
    free(c->addr);
    c->out = c->addr = NULL;
    wk_free_later(&c->ev);
}

/* The connection fails (or closes): every stream whose response is not complete fails with
 * <why>; their exchanges are woken from the connection's timer (the caller may be inside one of
 * them). */
static void conn_fail(struct wk_h2up_conn *c, int why)
{
    int stale = (c->flags & C_USED) && why == WK_FAIL_RESET;

    if (c->flags & C_DEAD) {
        return;
    }
    c->flags |= C_DEAD | C_GOAWAY;
    due_remove(c);
    pool_unlink(c);
    for (struct wk_h2up_stream *st = c->streams; st != NULL; st = st->next) {
        if ((st->flags & (S_HEAD | S_END)) != (S_HEAD | S_END)) {
            if (!(st->flags & S_SUBMITTED)) {
                st->flags |= S_UNSENT;
            }
            h2up_stream_failed(st, why, stale || !(st->flags & S_SUBMITTED));
        } else {
            h2up_stream_wake(st);
        }
    }
    xp_close(&c->xp, 0);
    nghttp2_session_del(c->s);
    c->s = NULL;
    wk_timer_arm(&c->timer, 1);
}

/* Serialize what nghttp2 has to send and write it. Returns 0, or -1 when the connection failed
 * (its streams are told). */
int h2up_conn_flush(struct wk_h2up_conn *c)
{
    if (c->flags & (C_DEAD | C_CONNECTING | C_TLSHS)) {
        return 0;
    }
    for (;;) {
        while (c->out_off < c->out_len) {
            ssize_t n;
            if (!(c->flags & C_WRITABLE)) {
                return 0;
            }
            n = xp_write(&c->xp, c->out + c->out_off, c->out_len - c->out_off, 0);
            if (n == XP_WANT_WRITE) {
                c->flags &= ~C_WRITABLE;
                return 0;
            }
            if (n == XP_WANT_READ) {
                return 0;
            }
            if (n < 0) {
                conn_fail(c, WK_FAIL_RESET);
                return -1;
            }
            c->out_off += (uint32_t)n;
        }
        c->out_off = c->out_len = 0;
        for (;;) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(c->s, &data);
            if (n < 0) {
                conn_fail(c, WK_FAIL_BAD);
                return -1;
            }
            if (n == 0) {
                break;
            }
            if ((size_t)n > c->out_cap - c->out_len) {
                uint32_t cap = DSP_MAX(c->out_cap * 2, (uint32_t)(c->out_len + (size_t)n));
                char *p = realloc(c->out, cap);
                if (p == NULL) {
                    conn_fail(c, WK_FAIL_RESET);
                    return -1;
                }
                c->out = p;
                c->out_cap = cap;
            }
            memcpy(c->out + c->out_len, data, (size_t)n);
            c->out_len += (uint32_t)n;
            if (c->out_len >= H2UP_OUT_SIZE) {
                break;
            }
        }
        if (c->out_len == 0) {
            return 0;
        }
    }
}

nghttp2_session *h2up_session_new(struct wk_h2up_conn *c, const struct shm_snap_hdr *sn)
{
    nghttp2_session_callbacks *cb = NULL;
    nghttp2_option *opt = NULL;
    nghttp2_session *s = NULL;
    nghttp2_settings_entry iv[3];

    if (nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&opt) != 0) {
        goto out;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    /* Response DATA is acknowledged once it moved on to the client side (back-pressure). */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, 4 * sn->limits.max_header_bytes + 65536);
    if (nghttp2_session_client_new2(&s, cb, c, opt) != 0) {
        s = NULL;
        goto out;
    }
    iv[0].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH;
    iv[0].value = 0;
    iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE;
    iv[1].value = sn->limits.h2_stream_window;
    iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE;
    iv[2].value = (uint32_t)sn->limits.max_header_bytes;
    if (nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, iv, 3) != 0 ||
        nghttp2_session_set_local_window_size(s, NGHTTP2_FLAG_NONE, 0, (int32_t)H2UP_CONN_WIN) !=
            0) {
        nghttp2_session_del(s);
        s = NULL;
    }
out:
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    return s;
}

/* Open a connection to the exchange's current backend. Returns it (connecting, or connected),
 * or NULL with *refused set when the connect failed at once (else out of resources). */
static struct wk_h2up_conn *conn_new(const struct wk_xchg *x, int *refused)
{
    const struct shm_snap_hdr *sn = x->at.gen->snap;
    const struct shm_service *svc = wk_xsvc(x);
    const struct shm_backend *be = wk_xbe(x);
    struct wk_h2up_conn *c = calloc(1, sizeof(*c));
    struct sockaddr_storage ss;
    socklen_t sl;
    struct epoll_event ev;
    struct wk_pool *p = &wk.pools[be->rt_slot];
    int one = 1;

    *refused = 0;
    if (c == NULL) {
        return NULL;
    }
    c->ev.kind = WK_EV_H2UP;
    c->timer.owner = &c->ev;
    c->be_slot = be->rt_slot;
    c->max_streams = p->h2_max ? p->h2_max : H2UP_GUESS;
    c->connect_ms = svc->connect_timeout_ms ? svc->connect_timeout_ms : 1;
    c->hb_max = (uint32_t)sn->limits.max_header_bytes;
    c->rb_cap = (uint32_t)DSP_MAX(sn->limits.h2_stream_window, 65535u);
    c->addr = strdup(shm_s(sn, be->address));
    xp_init(&c->xp, -1);
    if (c->addr == NULL || wk_backend_addr(sn, be, &ss, &sl) != 0 ||
        (c->s = h2up_session_new(c, sn)) == NULL) {
        goto fail;
    }
    xp_init(&c->xp, socket(be->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (c->xp.fd == -1) {
        goto fail;
    }
    if (be->family != AF_UNIX) {
        setsockopt(c->xp.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    if (epoll_ctl(wk.epfd, EPOLL_CTL_ADD, c->xp.fd, &ev) == -1) {
        goto fail;
    }
    if (svc->tls & SHM_SVC_TLS_ON) {
        static const unsigned char alpn[] = "\x02h2";
        struct ssl_st *ssl = wk_tls_client_new(c->xp.fd, x->at.gen->tls, x->at.service, be);
        if (ssl == NULL) {
            log_error("TLS to backend %s: %s", c->addr, wk_tls_error());
            goto fail;
        }
        SSL_set_alpn_protos(ssl, alpn, sizeof(alpn) - 1);
        xp_start_tls(&c->xp, ssl);
        c->flags |= C_TLS | C_TLSHS;
    }
    if (connect(c->xp.fd, (struct sockaddr *)&ss, sl) == -1) {
        if (errno != EINPROGRESS) {
            *refused = 1;
            goto fail;
        }
        c->flags |= C_CONNECTING;
    } else {
        c->flags |= C_WRITABLE;
    }
    c->next = p->h2;
    if (p->h2 != NULL) {
        p->h2->prev = c;
    }
    p->h2 = c;
    wk_timer_arm(&c->timer, c->connect_ms);
    return c;
fail:
    if (c->xp.fd != -1) {
        xp_close(&c->xp, 0);
    }
    if (c->s != NULL) {
        nghttp2_session_del(c->s);
    }
    free(c->addr);
    free(c);
    return NULL;
}

/* Put the stream on a connection to the exchange's backend with room for it (opening one when
 * none has), and submit it there when that connection is ready. 0, 1 when the connect was
 * refused at once, -1 when out of resources. */
int h2up_stream_place(struct wk_h2up_stream *st, const struct wk_xchg *x)
{
    uint32_t tls = (wk_xsvc(x)->tls & SHM_SVC_TLS_ON) ? C_TLS : 0u;
    struct wk_h2up_conn *c;
    int refused;

    const char *addr = shm_s(x->at.gen->snap, wk_xbe(x)->address);

    for (c = wk.pools[wk_xbe(x)->rt_slot].h2; c != NULL; c = c->next) {
        /* (the address too: a runtime slot a reload gave another backend keeps no stranger) */
        if (!(c->flags & (C_GOAWAY | C_DEAD)) && (c->flags & C_TLS) == tls &&
            c->open + c->nwait < c->max_streams && c->nwait < H2UP_MAX_WAIT &&
            strcmp(c->addr, addr) == 0) {
            break;
        }
    }
    if (c == NULL) {
        c = conn_new(x, &refused);
        if (c == NULL) {
            return refused ? 1 : -1;
        }
    }
    stream_link(c, st);
    st->flags &= ~S_SUBMITTED;
    c->nwait++;
    if (c->flags & C_SETTINGS) {
        wk_timer_disarm(&c->timer); /* (the idle timeout) */
        if (stream_submit(st) != 0) {
            h2up_stream_unlink(st);
            h2up_conn_idle_check(c);
            return -1;
        }
        h2up_conn_due(c);
    }
    return 0;
}

/* TLS: the handshake, then ALPN must have selected h2. 1 when done, 0 when blocked, -1 when the
 * connection failed. */
static int conn_handshake(struct wk_h2up_conn *c)
{
    const unsigned char *proto = NULL;
    unsigned plen = 0;
    int r;

    if (!(c->flags & (C_READABLE | C_WRITABLE))) {
        return 0;
    }
    r = xp_handshake(&c->xp);
    if (r == XP_WANT_READ) {
        c->flags &= ~C_READABLE;
        return 0;
    }
    if (r == XP_WANT_WRITE) {
        c->flags &= ~C_WRITABLE;
        return 0;
    }
    if (r != 1) {
        int verify = wk_tls_verify_failed(c->xp.ssl);
        wk_tls_forget(c->xp.ssl);
        if (verify) {
            __atomic_fetch_add(&wk.rt->backends[c->be_slot].tls_verify_failures, 1,
                               __ATOMIC_RELAXED);
        }
        log_warn("TLS handshake with HTTP/2 backend %s failed: %s", c->addr, xp_error());
        conn_fail(c, verify ? WK_FAIL_TLSVERIFY : WK_FAIL_TLS);
        return -1;
    }
    SSL_get0_alpn_selected(c->xp.ssl, &proto, &plen);
    if (plen != 2 || memcmp(proto, "h2", 2) != 0) {
        log_warn("backend %s did not select ALPN h2 (protocol = h2 needs it with tls = true): "
                 "%s",
                 c->addr, plen ? "it chose another protocol" : "it offered no ALPN protocol");
        conn_fail(c, WK_FAIL_TLS);
        return -1;
    }
    c->flags &= ~C_TLSHS;
    return 1;
}

/* Read what the backend sent into nghttp2. 0, or -1 when the connection failed. */
static int conn_read(struct wk_h2up_conn *c)
{
    char buf[16384];

    if (!(c->flags & C_READABLE) && xp_pending(&c->xp)) {
        c->flags |= C_READABLE;
    }
    while ((c->flags & C_READABLE) && !(c->flags & C_DEAD)) {
        ssize_t n = xp_read(&c->xp, buf, sizeof(buf));
        if (n == XP_WANT_READ) {
            c->flags &= ~C_READABLE;
            break;
        }
        if (n == XP_WANT_WRITE) {
            c->flags &= ~C_WRITABLE;
            break;
        }
        if (n <= 0) {
            conn_fail(c, WK_FAIL_RESET);
            return -1;
        }
        if (nghttp2_session_mem_recv(c->s, (const uint8_t *)buf, (size_t)n) < 0) {
            log_warn("HTTP/2 backend %s broke the protocol: connection closed", c->addr);
            conn_fail(c, WK_FAIL_BAD);
            return -1;
        }
        if (xp_drained(&c->xp) && !(c->flags & C_HUP)) {
            c->flags &= ~C_READABLE;
        }
    }
    return 0;
}

/* One pass of a connection: connect, handshake, input, the streams waiting for it, output;
 * then the exchanges with news. */
static void conn_run(struct wk_h2up_conn *c)
{
    if (c->flags & C_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (!(c->flags & (C_WRITABLE | C_HUP))) {
            return;
        }
        if (getsockopt(c->xp.fd, SOL_SOCKET, SO_ERROR, &err, &sl) == -1) {
            err = errno;
        }
        if (err != 0) {
            conn_fail(c, WK_FAIL_CONNECT);
            goto after;
        }
        c->flags &= ~C_CONNECTING;
    }
    if ((c->flags & C_TLSHS) && conn_handshake(c) <= 0) {
        goto after;
    }
    if (conn_read(c) < 0) {
        goto after;
    }
    if ((c->flags & C_SETTINGS) && c->nwait > 0) {
        wk_timer_disarm(&c->timer); /* (the connect timeout) */
        conn_submit_waiting(c);
    }
    if (h2up_conn_flush(c) < 0) {
        goto after;
    }
    if (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s)) {
        conn_fail(c, WK_FAIL_RESET); /* (a GOAWAY exchanged and nothing left open) */
    } else if ((c->flags & C_GOAWAY) && c->streams == NULL && c->open == 0) {
        conn_fail(c, WK_FAIL_RESET);
    } else if ((c->flags & C_HUP) && !(c->flags & C_READABLE)) {
        conn_fail(c, WK_FAIL_RESET);
    }
after:
    conn_wake_all(c);
    if (c->flags & C_DEAD) {
        conn_release(c);
    } else {
        h2up_conn_idle_check(c);
    }
}

void wk_h2up_event(struct wk_h2up_conn *c, uint32_t events)
{
    if (c->flags & C_DEAD) {
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        c->flags |= C_READABLE;
    }
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        c->flags |= C_WRITABLE;
    }
    if (events & (EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        c->flags |= C_HUP;
    }
    conn_run(c);
}

void wk_h2up_timeout(struct wk_h2up_conn *c)
{
    if (!(c->flags & C_DEAD)) {
        if (!(c->flags & C_SETTINGS)) {
            log_warn("HTTP/2 backend %s: no connection (or no SETTINGS) within %u ms", c->addr,
                     c->connect_ms);
            conn_fail(c, WK_FAIL_CTIMEOUT);
        } else if (c->streams == NULL) {
            /* Idle for H2UP_IDLE_MS: say goodbye. */
            nghttp2_submit_goaway(c->s, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
            h2up_conn_flush(c);
            conn_fail(c, WK_FAIL_RESET);
        } else {
            return;
        }
    }
    conn_wake_all(c);
    conn_release(c);
}

size_t wk_h2up_shed(uint32_t slot)
{
    size_t n = 0;

    for (struct wk_h2up_conn *c = wk.pools[slot].h2, *next; c != NULL; c = next) {
        next = c->next;
        if (c->streams == NULL && c->open == 0) {
            conn_fail(c, WK_FAIL_RESET); /* (no stream to tell) */
            conn_release(c);
            n++;
        }
    }
    return n;
}
