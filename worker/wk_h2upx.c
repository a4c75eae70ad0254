/* dispatcher: HTTP/2 to backends, the exchange's side of a stream (see worker/wk_h2up.c): the
 * attempt attached to a stream, the request body moved on by nghttp2's data provider
 * (wk_h2up.c), the response head handed to the client side as a struct wk_h1_resp, the body
 * into the exchange's buffer (chunk-framed for an HTTP/1.1 client without a length) with the
 * window given back as it moves on, the trailers in the last chunk or through
 * x->ops->trailers, and failures turned into retries, 502s or a cut. */
#include "worker/wk_h2up.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dsp.h"
#include "common/log.h"
#include "worker/wk_grpc.h"
#include "worker/wk_h2msg.h"
/* ---- the exchange's side --------------------------------------------------------------------- */
int wk_h2up_attach(struct wk_xchg *x)
{
    struct wk_h2up_stream *st = calloc(1, sizeof(*st));
    int r;

    if (st == NULL) {
        return -1;
    }
    st->x = x;
    x->h2s = st;
    r = h2up_stream_place(st, x);
    if (r != 0) {
        x->h2s = NULL;
        free(st);
    }
    return r;
}

void wk_h2up_detach(struct wk_xchg *x)
{
    struct wk_h2up_stream *st = x->h2s;
    struct wk_h2up_conn *c;

    if (st == NULL) {
        return;
    }
    x->h2s = NULL;
    st->x = NULL;
    c = st->c;
    if (c != NULL && !(c->flags & C_DEAD) && (st->flags & S_SUBMITTED) && st->id > 0) {
        if (st->rb_len > st->rb_off) {
            nghttp2_session_consume(c->s, st->id, st->rb_len - st->rb_off); /* (the window) */
        }
        if (!(st->flags & S_CLOSED)) {
            nghttp2_session_set_stream_user_data(c->s, st->id, NULL);
            nghttp2_submit_rst_stream(c->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            if (c->open > 0) {
                c->open--;
            }
        }
    }
    h2up_stream_unlink(st);
    if (c != NULL && !(c->flags & C_DEAD)) {
        h2up_conn_due(c);
        h2up_conn_idle_check(c);
    }
    free(st->hb);
    free(st->rb);
    free(st);
}

int wk_h2up_stale(const struct wk_xchg *x)
{
    return x->h2s != NULL && (x->h2s->flags & S_STALE) != 0;
}

int wk_h2up_te_trailers(const struct wk_head *hd)
{
    for (uint32_t i = 0; i < hd->n; i++) {
        if (wk_hdr_is(&hd->h[i], "te", 2) &&
            wk_hdr_has_token(hd->h[i].value, hd->h[i].vlen, "trailers")) {
            return 1;
        }
    }
    return 0;
}

int wk_h2up_send(struct wk_xchg *x)
{
    struct wk_h2up_stream *st = x->h2s;
    struct wk_h2up_conn *c = st->c;
    uint32_t before = x->send_off;

    if (c == NULL || (c->flags & C_DEAD) || (st->flags & S_FAILED) || !(st->flags & S_SUBMITTED)) {
        return 0;
    }
    if (st->flags & (S_CLOSED | S_REQ_EOF)) {
        if (x->send_off != x->parsed_off) {
            /* The stream is over (the backend answered and closed it): the rest of the request
             * has nowhere to go. */
            x->tflags |= WK_T_BODY_LOST;
            x->send_off = x->parsed_off;
            return 1;
        }
        return 0;
    }
    if ((st->flags & S_DEFERRED) &&
        (x->parsed_off > x->send_off + h2up_req_held(st, x) || (x->tflags & WK_T_REQ_DONE))) {
        st->flags &= ~S_DEFERRED;
        nghttp2_session_resume_data(c->s, st->id);
    }
    h2up_conn_due(c);
    return x->send_off != before;
}

int h2up_interim(struct wk_h2up_stream *st)
{
    struct wk_xchg *x = st->x;
    struct wk_h1_resp rs;
    uint32_t n = DSP_MIN(st->nf, (uint32_t)WK_MAX_HEADERS);

    if (x == NULL) {
        return 0;
    }
    /* Bounded as from HTTP/1 backends: a backend that trickles 1xx without end holds nothing
     * for long. */
    if (++x->tx->ninterim > 8) {
        return -1;
    }
    memset(&rs.hd, 0, offsetof(struct wk_head, h)); /* (the fields below are set one by one) */
    rs.chunked = rs.has_clen = 0;
    rs.status = st->status;
    rs.reason = wk_reason(st->status);
    rs.reason_len = (uint32_t)strlen(rs.reason);
    for (uint32_t i = 0; i < n; i++) {
        rs.hd.h[i].name = st->hb + st->f[i].noff;
        rs.hd.h[i].nlen = st->f[i].nlen;
        rs.hd.h[i].value = st->hb + st->f[i].voff;
        rs.hd.h[i].vlen = st->f[i].vlen;
    }
    rs.hd.n = n;
    return x->ops->interim(x, &rs, NULL, 0) != 0 ? -1 : 0;
}

/* The response head arrived: hand it to the client side. 0, or what wk_xchg_failed() gives. */
static int deliver_head(struct wk_xchg *x, struct wk_h2up_stream *st)
{
    struct wk_h1_resp rs;
    int nobody = wk_h1_bodyless((x->tflags & WK_T_HEAD_REQ) != 0, st->status);

    memset(&rs, 0, sizeof(rs));
    rs.status = st->status;
    rs.reason = wk_reason(st->status);
    rs.reason_len = (uint32_t)strlen(rs.reason);
    for (uint32_t i = 0; i < st->nhead; i++) {
        struct wk_hdr *h = &rs.hd.h[i];
        h->name = st->hb + st->f[i].noff;
        h->nlen = st->f[i].nlen;
        h->value = st->hb + st->f[i].voff;
        h->vlen = st->f[i].vlen;
        if (wk_hdr_is(h, "content-length", 14)) {
            rs.has_clen = 1;
        }
    }
    rs.hd.n = st->nhead;
    if (!nobody && (st->flags & (S_END | S_TRAILERS)) == S_END && st->rb_off == st->rb_len) {
        /* Complete with its head (a trailers-only gRPC answer): no body at all. */
        if (!rs.has_clen && rs.hd.n < WK_MAX_HEADERS) {
            struct wk_hdr *h = &rs.hd.h[rs.hd.n++];
            h->name = "content-length";
            h->nlen = 14;
            h->value = "0";
            h->vlen = 1;
            rs.has_clen = 1;
        }
        x->tflags |= WK_T_RESP_DONE;
    }
    rs.chunked = !nobody && !rs.has_clen; /* HTTP/2 frames the body: HTTP/1.1 gets chunks */
    if (x->tx->uin.data == NULL && wk_buf_get(&x->tx->uin, H2UP_UIN_SIZE) != 0) {
        return wk_xchg_failed(x, WK_FAIL_BAD);
    }
    x->tx->uin.start = x->tx->uin.end = 0;
    x->tx->rsend_off = x->tx->rready_off = x->tx->rparsed_off = 0;
    x->tx->resp_chunked = 0;
    if (wk_xchg_relay_head(x, &rs) != 0) {
        x->tflags &= ~WK_T_RESP_DONE;
        return wk_xchg_failed(x, WK_FAIL_BAD);
    }
    x->tflags |= WK_T_RESP_HEAD | WK_T_RESP_BYTES;
    st->flags |= S_HEAD_DONE;
    if (nobody) {
        st->flags |= S_NOBODY;
        x->tflags |= WK_T_RESP_DONE; /* (complete with its head, whatever follows) */
    } else if (rs.chunked && !(x->tflags & WK_T_DECHUNK)) {
        st->flags |= S_CHUNK_OUT;
    }
    return 0;
}

/* The response's trailer fields (those wk_trailer_ok() lets through) into <f> (room for
 * H2UP_MAX_TRAILERS): how many. */
static uint32_t trailer_fields(const struct wk_h2up_stream *st, struct wk_hdr *f)
{
    uint32_t n = 0;

    for (uint32_t i = st->nhead; (st->flags & S_TRAILERS) && i < st->nf; i++) {
        const char *name = st->hb + st->f[i].noff;
        if (wk_trailer_ok(name, st->f[i].nlen)) {
            f[n].name = name;
            f[n].nlen = st->f[i].nlen;
            f[n].value = st->hb + st->f[i].voff;
            f[n].vlen = st->f[i].vlen;
            n++;
        }
    }
    return n;
}

/* The end of the body: the last chunk with the trailers as its trailer section for an HTTP/1.1
 * client (1 when it fit the exchange's buffer, else 0: later; trailers that do not fit even an
 * empty buffer are dropped), the trailers through x->ops->trailers for the others (-1 when that
 * closed the client). */
static int body_end(struct wk_xchg *x, struct wk_h2up_stream *st)
{
    struct wk_hdr f[H2UP_MAX_TRAILERS];
    uint32_t n = trailer_fields(st, f);
    struct wk_buf *b = &x->tx->uin;
    size_t len;

    if (!(st->flags & S_CHUNK_OUT)) {
        return n > 0 && !(x->tflags & WK_T_HEAD_REQ) && x->ops->trailers(x, f, n) != 0 ? -1 : 1;
    }
    len = wk_h2_last_chunk(b->data + b->end, b->cap - b->end, f, n);
    if (len == 0 && b->end == 0) {
        len = wk_h2_last_chunk(b->data, b->cap, f, 0);
    }
    if (len == 0) {
        return 0;
    }
    b->end += (uint32_t)len;
    return 1;
}

/* Move response DATA from the stream into the exchange's buffer (chunk-framed for an HTTP/1.1
 * client without a length), acknowledging it to the backend; at the stream's end, the last
 * chunk or the trailers. Returns 1 on progress, 0, or -1 when the client side was closed. */
static int move_body(struct wk_xchg *x, struct wk_h2up_stream *st)
{
    struct wk_txn *tx = x->tx;
    struct wk_buf *b = &tx->uin;
    struct wk_h2up_conn *c = st->c;
    size_t moved = 0;
    int progress = 0;

    if (tx->rsend_off == tx->rready_off) {
        b->start = b->end = tx->rsend_off = tx->rready_off = tx->rparsed_off = 0;
    } else if (tx->rsend_off > 0 && b->cap - b->end < 1024) {
        memmove(b->data, b->data + tx->rsend_off, b->end - tx->rsend_off);
        b->end -= tx->rsend_off;
        tx->rsend_off = 0;
    }
    if (st->flags & S_NOBODY) {
        moved = st->rb_len - st->rb_off;
        st->rb_off = st->rb_len;
    }
    while (st->rb_off < st->rb_len) {
        size_t space = b->cap - b->end, n = st->rb_len - st->rb_off;
        if (st->flags & S_CHUNK_OUT) {
            if (space <= 24) {
                break;
            }
            n = DSP_MIN(n, space - 24);
            b->end += (uint32_t)snprintf(b->data + b->end, 24, "%zx\r\n", n);
        } else if (space == 0) {
            break;
        } else {
            n = DSP_MIN(n, space);
        }
        memcpy(b->data + b->end, st->rb + st->rb_off, n);
        b->end += (uint32_t)n;
        if (st->flags & S_CHUNK_OUT) {
            memcpy(b->data + b->end, "\r\n", 2);
            b->end += 2;
        }
        st->rb_off += (uint32_t)n;
        moved += n;
    }
    if (moved > 0) {
        progress = 1;
        if (c != NULL && !(c->flags & C_DEAD)) {
            nghttp2_session_consume(c->s, st->id, moved);
        }
    }
    if ((st->flags & S_END) && st->rb_off == st->rb_len && !(x->tflags & WK_T_RESP_DONE)) {
        int r = body_end(x, st);
        if (r < 0) {
            return -1;
        }
        if (r == 0) {
            goto out;
        }
        x->tflags |= WK_T_RESP_DONE;
        progress = 1;
    }
out:
    tx->rready_off = tx->rparsed_off = b->end;
    if (moved > 0 && c != NULL) {
        h2up_conn_due(c);
    }
    return progress;
}

int wk_h2up_recv(struct wk_xchg *x)
{
    struct wk_h2up_stream *st = x->h2s;
    int progress = 0;

    if ((st->flags & S_HEAD) && !(st->flags & S_HEAD_DONE)) {
        if (deliver_head(x, st) != 0) {
            return -1;
        }
        if (x->h2s != st) {
            return 1; /* (failed over to a new attempt, or answered) */
        }
        progress = 1;
    }
    if (st->flags & S_HEAD_DONE) {
        int r = move_body(x, st);
        if (r < 0) {
            return -1;
        }
        progress |= r;
    }
    if ((st->flags & S_FAILED) && !(x->tflags & WK_T_RESP_DONE)) {
        if (!(st->flags & S_HEAD_DONE)) {
            if (st->flags & S_UNSENT) {
                x->tflags &= ~WK_T_UP_WRITTEN; /* any method may go again */
            }
            log_debug("HTTP/2 stream %d to %s failed (%d, flags 0x%x, tflags 0x%x)", (int)st->id,
                      st->c != NULL ? st->c->addr : "?", st->fail, st->flags, x->tflags);
            return wk_xchg_failed(x, st->fail) == 0 ? 1 : -1;
        }
        wk_xchg_cut(x, SHM_CUT_BACKEND_CLOSED);
        x->ops->close(x);
        return -1;
    }
    return progress;
}
