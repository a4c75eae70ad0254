/* dispatcher: an idle HTTP/2 client connection without its nghttp2 session. nghttp2 has no way to
 * shrink a session (its struct, stream map and HPACK rings are ~10 KiB, 30 times what an idle
 * HTTP/1 connection costs), so an idle one is deleted, and a new one is brought to the same state
 * by feeding it the frames that made it: the client's SETTINGS, a request on the client's last
 * stream (its header block sets the HPACK table size to 0 first; the stream ids go on from there)
 * answered with as many DATA bytes as our send window lost, the acknowledgement of our SETTINGS,
 * a WINDOW_UPDATE for a send window above the initial one. What the new session sends for them
 * is dropped: the client got it from the old one. */
#include "worker/wk_internal.h"
#include "worker/wk_h2msg.h"

#include <limits.h>
#include <malloc.h>
#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>

#include "common/dsp.h"
#include "shm/shm_snap.h"

#define H2_INITIAL_WINDOW 65535

int wk_h2_session_new(nghttp2_session **sp, void *ud, struct wk_h2_mem **memp,
                      const struct wk_h2_cbs *cbs, const struct shm_snap_hdr *sn, int table0)
{
    nghttp2_session_callbacks *cb = NULL;
    nghttp2_option *opt = NULL;
    nghttp2_settings_entry iv[4];
    struct wk_h2_mem *mem = *memp;
    int r = -1;

    /* (not part of the connection's own struct: an idle connection has no session, and needs
     * none of its ~110 bytes) */
    if (mem == NULL && (mem = *memp = malloc(sizeof(*mem))) != NULL) {
        wk_h2_mem_init(mem);
    }
    if (mem == NULL) {
        return -1;
    }
    if (nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&opt) != 0) {
        goto out;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, cbs->begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, cbs->header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, cbs->frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, cbs->frame_send);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, cbs->data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, cbs->stream_close);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cb, cbs->invalid_frame);
    /* Request DATA is acknowledged once it reached the backend (back-pressure), not on
     * arrival. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Closed streams are kept only for RFC 7540's priority tree, which nothing here uses: up
     * to h2_max_streams of them (~200 bytes each) would stay with an idle connection. */
    nghttp2_option_set_no_closed_streams(opt, 1);
    wk_h2_guard_options(opt);
    mem->map = 1; /* (the frame buffer is allocated with the session) */
    if (nghttp2_session_server_new3(sp, cb, ud, opt, &mem->mem) != 0) {
        *sp = NULL;
        goto out;
    }
    mem->map = 0;
    iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS;
    iv[0].value = sn->limits.h2_max_streams;
    iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE;
    iv[1].value = sn->limits.h2_stream_window;
    iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE;
    iv[2].value = (uint32_t)sn->limits.max_header_bytes;
    iv[3].settings_id = NGHTTP2_SETTINGS_HEADER_TABLE_SIZE;
    iv[3].value = 0;
    r = nghttp2_submit_settings(*sp, NGHTTP2_FLAG_NONE, iv, table0 ? 4 : 3) != 0 ||
                nghttp2_session_set_local_window_size(
                    *sp, NGHTTP2_FLAG_NONE, 0,
                    (int32_t)DSP_MIN((uint64_t)sn->limits.h2_stream_window * 4,
                                     (uint64_t)INT32_MAX)) != 0
            ? -1
            : 0;
out:
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    mem->map = 0;
    return r;
}

void wk_h2_session_del(nghttp2_session **sp, struct wk_h2_mem **memp)
{
    nghttp2_session_del(*sp);
    *sp = NULL;
    free(*memp);
    *memp = NULL;
}

/* Is any stream of the tree under <st> more than idle (PRIORITY frames leave idle ones)? */
static int busy(nghttp2_stream *st, int depth)
{
    for (nghttp2_stream *c = nghttp2_stream_get_first_child(st); c != NULL;
         c = nghttp2_stream_get_next_sibling(c)) {
        if (depth > 64 || nghttp2_stream_get_state(c) != NGHTTP2_STREAM_STATE_IDLE ||
            busy(c, depth + 1)) {
            return 1;
        }
    }
    return 0;
}

int wk_h2_sleep_check(nghttp2_session *s, struct wk_h2_guard *g, struct wk_h2_saved *sv)
{
    nghttp2_stream *root = nghttp2_session_get_root_stream(s);
    int32_t unacked = nghttp2_session_get_effective_recv_data_length(s);

    if (!g->acked || g->gone || g->abused || !nghttp2_session_want_read(s) ||
        nghttp2_session_want_write(s) || (root != NULL && busy(root, 0))) {
        return -1;
    }
    if (g->table0 == 1) {
        g->table0 = 2; /* (acknowledged) */
    }
    if (g->table0 == 0) {
        /* The client's header blocks may use the HPACK table (4,096 bytes) while the
         * connection is busy; idle, it is told to leave it empty, which our SETTINGS' ACK
         * confirms. */
        nghttp2_settings_entry ht = {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 0};
        g->table0 = 1;
        g->acked = 0;
        return nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, &ht, 1) == 0 ? 1 : -1;
    }
    if (nghttp2_session_get_hd_inflate_dynamic_table_size(s) != 0) {
        return -1;
    }
    if (unacked > 0) {
        /* The client's window as a new session sees it: DATA read since the last
         * WINDOW_UPDATE is given back now (a new session would never do it). */
        return nghttp2_submit_window_update(s, NGHTTP2_FLAG_NONE, 0, unacked) == 0 ? 1 : -1;
    }
    for (int i = 0; i < 6; i++) {
        sv->set[i] = nghttp2_session_get_remote_settings(s, (nghttp2_settings_id)(i + 1));
    }
    sv->rwin = nghttp2_session_get_remote_window_size(s);
    sv->last_id = nghttp2_session_get_last_proc_stream_id(s);
    return 0;
}

static void frame_head(uint8_t *p, uint32_t len, uint8_t type, uint8_t flags, int32_t id)
{
    p[0] = (uint8_t)(len >> 16);
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    p[3] = type;
    p[4] = flags;
    p[5] = (uint8_t)((uint32_t)id >> 24);
    p[6] = (uint8_t)((uint32_t)id >> 16);
    p[7] = (uint8_t)((uint32_t)id >> 8);
    p[8] = (uint8_t)id;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* The synthetic response's body: <source.ptr> counts the bytes left. */
static ssize_t fill(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *dflags,
                    nghttp2_data_source *src, void *ud)
{
    int32_t *left = src->ptr;
    size_t n = len < (size_t)*left ? len : (size_t)*left;

    (void)s;
    (void)id;
    (void)ud;
    memset(buf, 0, n);
    *left -= (int32_t)n;
    if (*left == 0) {
        *dflags |= NGHTTP2_DATA_FLAG_EOF;
    }
    return (ssize_t)n;
}

/* Feed <n> bytes, then drop all the session would send. 0 or -1. */
static int feed(nghttp2_session *s, const uint8_t *p, size_t n)
{
    const uint8_t *out;
    ssize_t r = nghttp2_session_mem_recv(s, p, n);

    if (r < 0 || (size_t)r != n) {
        return -1;
    }
    while ((r = nghttp2_session_mem_send(s, &out)) > 0) {
    }
    return r < 0 ? -1 : 0;
}

int wk_h2_wake(nghttp2_session *s, struct wk_h2_guard *g, const struct wk_h2_saved *sv)
{
    uint8_t f[9 + 6 * 6], *p = f + 9;
    int r = -1;

    g->waking = 1;
    if (feed(s, (const uint8_t *)NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN) != 0) {
        goto out;
    }
    for (int i = 0; i < 6; i++) {
        p[0] = 0;
        p[1] = (uint8_t)(i + 1);
        put32(p + 2, sv->set[i]);
        p += 6;
    }
    frame_head(f, 6 * 6, NGHTTP2_SETTINGS, NGHTTP2_FLAG_NONE, 0);
    if (feed(s, f, sizeof(f)) != 0) {
        goto out;
    }
    if (sv->last_id > 0) {
        /* GET / (:authority "a"), after "dynamic table size update: 0" (RFC 7541 6.3) while our
         * SETTINGS do not apply yet: the decoder then waits for no such update from the client
         * (it went to the old session, if it was due). */
        static const uint8_t block[] = {0x20, 0x82, 0x86, 0x84, 0x01, 0x01, 'a'};
        nghttp2_nv st = {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE};
        nghttp2_data_provider dp;
        int32_t lost = H2_INITIAL_WINDOW - sv->rwin;

        frame_head(f, sizeof(block), NGHTTP2_HEADERS,
                   NGHTTP2_FLAG_END_HEADERS | NGHTTP2_FLAG_END_STREAM, sv->last_id);
        memcpy(f + 9, block, sizeof(block));
        if (feed(s, f, 9 + sizeof(block)) != 0) {
            goto out;
        }
        if (lost > 0 && sv->set[NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE - 1] < (uint32_t)lost) {
            frame_head(f, 4, NGHTTP2_WINDOW_UPDATE, NGHTTP2_FLAG_NONE, sv->last_id);
            put32(f + 9, (uint32_t)lost);
            if (feed(s, f, 13) != 0) {
                goto out;
            }
        }
        dp.source.ptr = &lost;
        dp.read_callback = fill;
        if (nghttp2_submit_response(s, sv->last_id, &st, 1, lost > 0 ? &dp : NULL) != 0 ||
            feed(s, NULL, 0) != 0 || nghttp2_session_find_stream(s, sv->last_id) != NULL) {
            goto out;
        }
    } else if (sv->rwin < H2_INITIAL_WINDOW) {
        goto out;
    }
    frame_head(f, 0, NGHTTP2_SETTINGS, NGHTTP2_FLAG_ACK, 0);
    if (feed(s, f, 9) != 0) {
        goto out;
    }
    if (sv->rwin > H2_INITIAL_WINDOW) {
        frame_head(f, 4, NGHTTP2_WINDOW_UPDATE, NGHTTP2_FLAG_NONE, 0);
        put32(f + 9, (uint32_t)(sv->rwin - H2_INITIAL_WINDOW));
        if (feed(s, f, 13) != 0) {
            goto out;
        }
    }
    if (nghttp2_session_get_remote_window_size(s) == sv->rwin &&
        nghttp2_session_get_last_proc_stream_id(s) == sv->last_id &&
        !nghttp2_session_want_write(s) && nghttp2_session_want_read(s)) {
        r = 0; /* (the HPACK table stays at 0: a client may not get 4,096 then 0 again before
                * its next header block, some then signal both) */
        g->table0 = 2;
    }
out:
    g->waking = 0;
    return r;
}

void wk_h2_trim(void)
{
    /* A deleted session leaves ~10 KiB of holes in the heap among live blocks: free() keeps
     * their pages; malloc_trim() gives the whole free pages back. */
    if (wk.h2_slept != 0 && wk.now - wk.h2_trim_ms >= 1000) {
        wk.h2_slept = 0;
        wk.h2_trim_ms = wk.now;
        malloc_trim(0);
    }
}
