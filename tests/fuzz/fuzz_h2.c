/* dispatcher fuzz target: random bytes as an HTTP/2 client's frames to the server side. The
 * session is the one worker/wk_h2.c builds (same nghttp2 options, same SETTINGS, no automatic
 * WINDOW_UPDATE) and its callbacks run the same code: the abuse limits (wk_h2_guard_*) on every
 * frame and header field, the header block collection (wk_h2_head_field) and the request builder
 * (wk_h2_head_request) at each complete block, and for a request's trailing HEADERS the trailer
 * fields (wk_h2_head_trailers) and the last chunk they make upstream (wk_h2_last_chunk). The
 * exchange and the sockets are left out.
 *
 * The input follows the client preface (prepended unless it starts with "PRI"); it is fed in
 * pieces (the first byte of the input picks their size), the loop's clock moving between them so
 * the token buckets refill. Invariants: a request accepted has a method, an :authority that is a
 * valid host, a :path starting with '/' (or "*"), fields within the block's buffer and free of
 * CR/LF/NUL; trailer fields are allowed names (wk_trailer_ok) without '_' and with clean
 * values, and their last chunk is one the strict chunked decoder takes whole; every session ends
 * without a leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_util.h"
#include "shm/shm_types.h"
#include "worker/wk_grpc.h"
#include "worker/wk_h2msg.h"
#include "worker/wk_internal.h"

#define MAX_HEADER_BYTES 16384

struct fz_stream {
    struct wk_h2_head *head;
    uint64_t hsize;
    int32_t id;
    int started; /* its request head was complete: a later HEADERS is its trailers */
    struct fz_stream *next, *prev;
};

struct fz_conn {
    nghttp2_session *s;
    struct wk_h2_guard g;
    struct fz_stream *streams;
};

static int in_block(const struct wk_h2_head *hh, const char *p, size_t n)
{
    return p >= hh->hb && p + n <= hh->hb + hh->hb_len;
}

static void check_request(struct wk_h2_head *hh, int end_stream)
{
    struct wk_h1_req rq;
    const char *why = NULL;
    unsigned st = wk_h2_head_request(hh, end_stream, &rq, &why);

    if (st != 0) {
        FUZZ_CHECK(why != NULL);
        FUZZ_CHECK(st == 400 || st == 405 || st == 431);
        return;
    }
    FUZZ_CHECK(rq.host != NULL && rq.hostlen > 0 && in_block(hh, rq.host, rq.hostlen));
    FUZZ_CHECK(wk_host_ok(rq.host, rq.hostlen));
    FUZZ_CHECK(rq.tlen > 0 && in_block(hh, rq.target, rq.tlen));
    FUZZ_CHECK(rq.target[0] == '/' || (rq.tlen == 1 && rq.target[0] == '*'));
    FUZZ_CHECK(rq.pathlen <= rq.tlen);
    FUZZ_CHECK(rq.hd.n <= WK_MAX_HEADERS);
    FUZZ_CHECK(!end_stream || !rq.chunked);
    for (uint32_t i = 0; i < rq.hd.n; i++) {
        const struct wk_hdr *h = &rq.hd.h[i];
        FUZZ_CHECK(in_block(hh, h->name, h->nlen) && in_block(hh, h->value, h->vlen));
        FUZZ_CHECK(wk_token_ok(h->name, h->nlen));
        FUZZ_CHECK(memchr(h->value, '\r', h->vlen) == NULL &&
                   memchr(h->value, '\n', h->vlen) == NULL &&
                   memchr(h->value, '\0', h->vlen) == NULL);
    }
}

static void check_trailers(const struct wk_h2_head *hh)
{
    struct wk_hdr f[WK_MAX_HEADERS];
    char out[2 * MAX_HEADER_BYTES + 64];
    uint32_t n = wk_h2_head_trailers(hh, f);
    size_t ol;

    FUZZ_CHECK(n <= WK_MAX_HEADERS);
    for (uint32_t i = 0; i < n; i++) {
        FUZZ_CHECK(in_block(hh, f[i].name, f[i].nlen) && in_block(hh, f[i].value, f[i].vlen));
        FUZZ_CHECK(wk_trailer_ok(f[i].name, f[i].nlen) &&
                   memchr(f[i].name, '_', f[i].nlen) == NULL);
        FUZZ_CHECK(wk_value_ok(f[i].value, f[i].vlen));
    }
    ol = wk_h2_last_chunk(out, sizeof(out), f, n);
    if (ol > 0) {
        struct wk_chunk ch;
        size_t used = 0, dl = 0;
        wk_h1_chunk_init(&ch, sizeof(out));
        FUZZ_CHECK(wk_h1_chunk_parse(&ch, out, ol, &used, &dl) == WK_CHUNK_DONE && used == ol);
    }
}

static void stream_free(struct fz_conn *c, struct fz_stream *st)
{
    if (st->prev != NULL) {
        st->prev->next = st->next;
    } else {
        c->streams = st->next;
    }
    if (st->next != NULL) {
        st->next->prev = st->prev;
    }
    wk_h2_head_free(st->head);
    free(st);
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct fz_conn *c = ud;
    struct fz_stream *st;

    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->head = wk_h2_head_new(MAX_HEADER_BYTES);
    if (st->head == NULL) {
        free(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st->id = f->hd.stream_id;
    st->next = c->streams;
    if (c->streams != NULL) {
        c->streams->prev = st;
    }
    c->streams = st;
    nghttp2_session_set_stream_user_data(s, f->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct fz_conn *c = ud;
    struct fz_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);

    (void)flags;
    if (st == NULL) {
        return 0;
    }
    if (wk_h2_guard_header(&c->g, s, &st->hsize, nlen, vlen, MAX_HEADER_BYTES) != 0) {
        FUZZ_CHECK(c->g.abused);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (f->hd.type == NGHTTP2_HEADERS && st->head == NULL && st->started &&
        f->headers.cat == NGHTTP2_HCAT_HEADERS) {
        st->head = wk_h2_head_new(MAX_HEADER_BYTES); /* the trailers (as wk_h2.c does) */
        if (st->head == NULL) {
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    if (f->hd.type == NGHTTP2_HEADERS && st->head != NULL) {
        wk_h2_head_field(st->head, name, nlen, value, vlen);
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct fz_conn *c = ud;
    struct fz_stream *st;

    if (f->hd.type != NGHTTP2_HEADERS && wk_h2_guard_frame(&c->g, s, f) != 0) {
        FUZZ_CHECK(c->g.abused);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st != NULL && st->head != NULL && f->hd.type == NGHTTP2_HEADERS &&
        f->headers.cat == NGHTTP2_HCAT_REQUEST) {
        check_request(st->head, (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
        wk_h2_head_free(st->head);
        st->head = NULL;
        st->started = 1;
    } else if (st != NULL && st->head != NULL && f->hd.type == NGHTTP2_HEADERS) {
        check_trailers(st->head);
        wk_h2_head_free(st->head);
        st->head = NULL;
    }
    if (f->hd.type == NGHTTP2_DATA && f->hd.length > 0) {
        nghttp2_session_consume(s, f->hd.stream_id, f->hd.length);
    }
    return 0;
}

static int on_invalid_frame(nghttp2_session *s, const nghttp2_frame *f, int err, void *ud)
{
    struct fz_conn *c = ud;

    (void)f;
    return wk_h2_guard_invalid(&c->g, s, err);
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct fz_stream *st = nghttp2_session_get_stream_user_data(s, id);

    (void)code;
    if (st != NULL) {
        nghttp2_session_set_stream_user_data(s, id, NULL);
        stream_free(ud, st);
    }
    return 0;
}

static void drain(nghttp2_session *s)
{
    for (int i = 0; i < 10000; i++) {
        const uint8_t *data;
        if (nghttp2_session_mem_send(s, &data) <= 0) {
            return;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    static struct shm_ctl *ctl;
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    nghttp2_settings_entry iv[3];
    struct fz_conn c;
    size_t piece, off = 0;

    if (ctl == NULL) {
        ctl = calloc(1, sizeof(*ctl)); /* the abuse counters land here */
        FUZZ_CHECK(ctl != NULL);
        log_level = -1;
    }
    wk.ctl = ctl;
    wk.slot = 0;
    wk.now = 1000;
    memset(&c, 0, sizeof(c));
    FUZZ_CHECK(nghttp2_session_callbacks_new(&cb) == 0 && nghttp2_option_new(&opt) == 0);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, on_invalid_frame);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    wk_h2_guard_options(opt);
    FUZZ_CHECK(nghttp2_session_server_new2(&c.s, cb, &c, opt) == 0);
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS;
    iv[0].value = 16;
    iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE;
    iv[1].value = 65535;
    iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE;
    iv[2].value = MAX_HEADER_BYTES;
    FUZZ_CHECK(nghttp2_submit_settings(c.s, NGHTTP2_FLAG_NONE, iv, 3) == 0);
    drain(c.s);

    piece = size > 0 ? (size_t)(data[0] % 64) * 97 + 1 : 1;
    if (size < 3 || memcmp(data, "PRI", 3) != 0) {
        if (wk_h2_guard_recv(&c.g, c.s, preface, sizeof(preface) - 1) != 0) {
            goto out;
        }
    }
    while (off < size) {
        size_t n = size - off < piece ? size - off : piece;
        int r = wk_h2_guard_recv(&c.g, c.s, data + off, n);
        drain(c.s);
        if (r != 0) {
            break;
        }
        off += n;
        wk.now += data[off - 1] & 0x3f; /* the clock moves between reads */
    }
out:
    nghttp2_session_del(c.s); /* (calls no callback) */
    while (c.streams != NULL) {
        stream_free(&c, c.streams);
    }
    return 0;
}
