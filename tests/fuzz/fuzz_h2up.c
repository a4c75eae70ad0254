/* dispatcher: libFuzzer target for HTTP/2 to backends (worker/wk_h2up.c): random bytes as a
 * backend's frames to the worker's client session. The session is the one h2up_session_new()
 * builds for a backend connection (same options, SETTINGS, connection window, the same
 * callbacks recording heads, 1xx, trailers, DATA, resets and GOAWAY on the streams); the
 * exchange is played by this file, which takes the woken streams' body bytes and gives the
 * window back as the exchange does. Sockets and TLS are left out.
 *
 * Input: byte 0 picks how many requests are open (1 to 4, bits 0-1), whether one has a body
 * that waits (bit 2) and the read sizes (bits 3-7); the rest follows the backend's first
 * (empty) SETTINGS frame, prepended. Invariants beyond "no crash, no leak": a stream's fields
 * lie within its header buffer, within the limits (fields, bytes); the names are lower-case
 * tokens and no value holds CR, LF or NUL (what goes on to an HTTP/1 client); a final head has a
 * status of 200-999; received body bytes never exceed the stream's buffer; the connection's open
 * stream count never goes below zero and a SETTINGS leaves a usable max_streams. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm/shm_types.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_h2up.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define HB_MAX 16384
#define WIN    65535

static void check_stream(struct wk_h2up_conn *c, struct wk_h2up_stream *st)
{
    FUZZ_CHECK(st->nf <= H2UP_MAX_FIELDS + H2UP_MAX_TRAILERS && st->nhead <= st->nf);
    FUZZ_CHECK(st->hb_len <= st->hb_cap && st->hb_len <= 2 * c->hb_max);
    for (uint32_t i = 0; i < st->nf; i++) {
        const struct h2up_field *f = &st->f[i];
        const char *n = st->hb + f->noff, *v = st->hb + f->voff;
        FUZZ_CHECK(f->noff + f->nlen <= st->hb_len && f->voff + f->vlen <= st->hb_len);
        FUZZ_CHECK(wk_token_ok(n, f->nlen));
        for (uint32_t k = 0; k < f->nlen; k++) {
            FUZZ_CHECK(n[k] < 'A' || n[k] > 'Z');
        }
        FUZZ_CHECK(memchr(v, '\r', f->vlen) == NULL && memchr(v, '\n', f->vlen) == NULL &&
                   memchr(v, '\0', f->vlen) == NULL);
    }
    if (st->flags & S_HEAD) {
        FUZZ_CHECK(st->status >= 200 && st->status <= 999);
    }
    FUZZ_CHECK(st->rb_off <= st->rb_len && st->rb_len <= st->rb_cap);
    FUZZ_CHECK(st->rb_cap <= c->rb_cap && (st->rb != NULL || st->rb_cap == 0));
}

/* What the exchange does when a stream is woken: take the body bytes, give the window back. */
static void wake_all(struct wk_h2up_conn *c)
{
    while (c->wake != NULL) {
        struct wk_h2up_stream *st = c->wake;
        c->wake = st->wnext;
        st->flags &= ~S_WAKE;
        check_stream(c, st);
        if (st->rb_len > st->rb_off && !(st->flags & S_CLOSED)) {
            nghttp2_session_consume(c->s, st->id, st->rb_len - st->rb_off);
        }
        st->rb_off = st->rb_len = 0;
    }
}

static void drain(nghttp2_session *s)
{
    for (int i = 0; i < 10000; i++) {
        const uint8_t *p;
        if (nghttp2_session_mem_send(s, &p) <= 0) {
            return;
        }
    }
}

/* A request body that never comes: the stream stays open on our side. */
static ssize_t body_wait(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *dflags,
                         nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)id;
    (void)buf;
    (void)len;
    (void)dflags;
    (void)src;
    (void)ud;
    return NGHTTP2_ERR_DEFERRED;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
    static struct wk_pool pool;
    static struct shm_snap_hdr *sn;
    struct wk_h2up_stream *st[4] = {NULL, NULL, NULL, NULL};
    struct wk_h2up_conn c;
    unsigned nreq;
    size_t piece, off = 1;

    if (size == 0 || size > 65536) {
        return 0;
    }
    if (sn == NULL) {
        sn = calloc(1, sizeof(*sn));
        FUZZ_CHECK(sn != NULL);
        sn->limits.max_header_bytes = HB_MAX;
        sn->limits.h2_stream_window = WIN;
        log_level = -1;
    }
    wk.pools = &pool;
    memset(&pool, 0, sizeof(pool));
    memset(&c, 0, sizeof(c));
    c.hb_max = HB_MAX;
    c.rb_cap = WIN;
    c.s = h2up_session_new(&c, sn);
    FUZZ_CHECK(c.s != NULL);
    nreq = 1 + (data[0] & 3);
    for (unsigned i = 0; i < nreq; i++) {
        const nghttp2_nv nva[] = {
            {(uint8_t *)":method", (uint8_t *)(i == 0 && (data[0] & 4) ? "POST" : "GET"), 7,
             (i == 0 && (data[0] & 4)) ? 4 : 3, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)":path", (uint8_t *)"/svc.Echo/Call", 5, 14, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)":authority", (uint8_t *)"backend", 10, 7, NGHTTP2_NV_FLAG_NONE},
            {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, NGHTTP2_NV_FLAG_NONE},
        };
        nghttp2_data_provider prd = {.source = {.ptr = NULL}, .read_callback = body_wait};
        st[i] = calloc(1, sizeof(*st[i]));
        FUZZ_CHECK(st[i] != NULL);
        st[i]->c = &c;
        st[i]->id = nghttp2_submit_request(c.s, NULL, nva, 5, i == 0 && (data[0] & 4) ? &prd : NULL,
                                           st[i]);
        FUZZ_CHECK(st[i]->id > 0);
        c.open++;
    }
    drain(c.s);
    piece = (size_t)(data[0] >> 3) * 61 + 1;
    if (nghttp2_session_mem_recv(c.s, settings, sizeof(settings)) != (ssize_t)sizeof(settings)) {
        goto out;
    }
    while (off < size) {
        size_t n = size - off < piece ? size - off : piece;
        ssize_t r = nghttp2_session_mem_recv(c.s, data + off, n);
        wake_all(&c);
        drain(c.s);
        if (r < 0) {
            break;
        }
        off += n;
    }
    if (c.flags & C_SETTINGS) {
        FUZZ_CHECK(pool.h2_max >= 1);
    }
    FUZZ_CHECK(c.open <= nreq);
out:
    wake_all(&c);
    nghttp2_session_del(c.s); /* (calls no callback) */
    for (unsigned i = 0; i < nreq; i++) {
        check_stream(&c, st[i]);
        free(st[i]->hb);
        free(st[i]->rb);
        free(st[i]);
    }
    wk.pools = NULL;
    return 0;
}
