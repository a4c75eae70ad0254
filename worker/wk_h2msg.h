/* dispatcher: HTTP/2 requests from header blocks, and the limits on what an HTTP/2 client may make
 * the worker do (worker/wk_h2msg.c). No I/O and no connection state: worker/wk_h2.c drives them
 * from its nghttp2 callbacks, and tests/fuzz/fuzz_h2.c drives them the same way. */
#ifndef DSP_WK_H2MSG_H
#define DSP_WK_H2MSG_H

#include <nghttp2/nghttp2.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/wk_h1.h"

struct wk_xchg;

/* ---- a request's header block ----------------------------------------------------------------
 * Names and values are copied into <hb> as they arrive (at most max_header_bytes + 64 bytes),
 * the fields kept as offsets; wk_h2_head_request() turns the complete block into the parsed
 * request an HTTP/1 head gives (pointing into <hb>). */
enum { WK_H2_P_METHOD, WK_H2_P_PATH, WK_H2_P_AUTHORITY, WK_H2_P_SCHEME };

struct wk_h2_head {
    char *hb;
    uint32_t hb_len, hb_cap;
    const char *err; /* why the block is refused (checked at its end), or NULL */
    uint32_t n;
    uint32_t noff[WK_MAX_HEADERS], nlen[WK_MAX_HEADERS];
    uint32_t voff[WK_MAX_HEADERS], vlen[WK_MAX_HEADERS];
    uint32_t poff[4], plen[4];    /* WK_H2_P_*: offset + 1 (0: absent), length */
    struct wk_h2_head *next_free; /* (kept for reuse by its owner) */
};

/* A new, empty block for at most <max_header_bytes> of fields (one allocation), or NULL. */
struct wk_h2_head *wk_h2_head_new(uint64_t max_header_bytes);
void wk_h2_head_free(struct wk_h2_head *hh);
/* <hh> (which may be NULL) emptied for a new block: the same memory when its capacity is the one
 * <max_header_bytes> asks for, else a new block (and <hh> freed). NULL when out of memory. */
struct wk_h2_head *wk_h2_head_renew(struct wk_h2_head *hh, uint64_t max_header_bytes);
/* The worker's spare blocks (wk.h2_heads): an empty block taken from them (or new), and a block
 * given back to them (or freed when there are enough). */
struct wk_h2_head *wk_h2_head_take(uint64_t max_header_bytes);
void wk_h2_head_put(struct wk_h2_head *hh);
/* One field as nghttp2 decoded it (its RFC 9113 checks passed). A field that breaks our own
 * rules (too many, too large, a value or name HTTP/1.1 cannot carry) marks the block refused. */
void wk_h2_head_field(struct wk_h2_head *hh, const uint8_t *name, size_t nlen, const uint8_t *value,
                      size_t vlen);
/* The complete block as a request (<end_stream>: no body follows). Returns 0, or the status to
 * refuse it with (400, 405, 431; <why> says why). May append joined cookie crumbs to <hb>. */
unsigned wk_h2_head_request(struct wk_h2_head *hh, int end_stream, struct wk_h1_req *rq,
                            const char **why);

/* Is the block's Content-Type a gRPC one (wk_grpc_ctype())? */
int wk_h2_head_grpc(const struct wk_h2_head *hh);
/* The block as trailer fields (a request's trailing HEADERS): those wk_trailer_ok() lets
 * through and without an underscore (as header fields), pointing into <hb>, into <out> (room
 * for WK_MAX_HEADERS). Returns how many. */
uint32_t wk_h2_head_trailers(const struct wk_h2_head *hh, struct wk_hdr *out);
/* The last chunk of a body sent upstream chunked, with the trailer fields <f>[0, n) as its
 * trailer section, into <out>[0, cap): its length, or 0 when it does not fit. */
size_t wk_h2_last_chunk(char *out, size_t cap, const struct wk_hdr *f, uint32_t n);

/* ---- what goes to the client ----------------------------------------------------------------- */
/* Submit the response head <rs> (a backend's, HTTP/1 fields) on stream <id>: its fields
 * lower-cased, without the connection-specific ones and X-Request-ID (<reqid> is ours), without
 * Content-Length where HTTP/2 frames the body (chunked) or there is none (1xx, 204, 304). A 1xx
 * is an interim HEADERS frame (<prd> unused); a final head goes with <prd> (NULL: it ends the
 * stream). 0, or -1. */
int wk_h2_submit_head(nghttp2_session *s, int32_t id, const struct wk_h1_resp *rs,
                      const char *reqid, size_t reqid_len, const nghttp2_data_provider *prd);
/* Submit the head of <x>'s generated answer: <status>, <ctype>, Content-Length <blen> (neither
 * for 204 and 304), a middleware's fields, X-Request-ID; the body from <prd> (NULL: none). 0,
 * or -1. */
int wk_h2_submit_reply(nghttp2_session *s, int32_t id, struct wk_xchg *x, unsigned status,
                       const char *ctype, size_t blen, const nghttp2_data_provider *prd);
/* Submit the gRPC form of <x>'s generated answer <status> with <body> (wk_grpc.h): HTTP 200,
 * one HEADERS frame with END_STREAM (trailers-only) carrying content-type application/grpc,
 * grpc-status, grpc-message, a middleware's fields and X-Request-ID. 0, or -1. */
int wk_h2_submit_grpc_error(nghttp2_session *s, int32_t id, struct wk_xchg *x, unsigned status,
                            const char *body, size_t blen);
/* Trailer fields kept for nghttp2_submit_trailer(): a copy of those of <f>[0, n) that
 * wk_trailer_ok() lets through with a clean value, names lower-cased; one allocation (free()),
 * NULL when out of memory. */
struct wk_h2_fields {
    nghttp2_nv *nv;
    size_t n;
};
struct wk_h2_fields *wk_h2_fields_new(const struct wk_hdr *f, uint32_t n);

/* Submit an interim 100 (Continue) on stream <id>. */
void wk_h2_submit_continue(nghttp2_session *s, int32_t id);
/* The trailers that end a gRPC call with status <code> and <msg> (percent-encoded already). */
struct wk_h2_fields *wk_h2_grpc_status(unsigned code, const char *msg);
/* The grpc-timeout of the gRPC call <rq>: the call's end in *deadline (wk.now ms; 0: none). A
 * malformed value is refused as grpc-go refuses it (INTERNAL, from our 400); a zero one has
 * passed (DEADLINE_EXCEEDED). 0, 1 when <x> was answered, -1 when its client side was closed. */
int wk_h2_grpc_deadline(struct wk_xchg *x, const struct wk_h1_req *rq, uint64_t *deadline);

/* ---- abuse limits ---------------------------------------------------------------------------
 * Per connection token buckets on the loop's clock (wk.now: no syscall) for frames that cost us
 * work and give the client nothing; past one, or past nghttp2's own limits, the connection is
 * sent GOAWAY ENHANCE_YOUR_CALM and read no more. Counted per kind in shm_ctl.h2[slot].abuse. */
enum {
    WK_H2_RL_RESET,
    WK_H2_RL_SETTINGS,
    WK_H2_RL_PING,
    WK_H2_RL_EMPTY_DATA,
    WK_H2_RL_PRIORITY,
    WK_H2_RL_KINDS
};

struct wk_h2_guard {
    struct {
        uint32_t tokens;
        uint64_t at; /* wk.now of the last refill (0: never used, full) */
    } rl[WK_H2_RL_KINDS];
    uint8_t abused; /* the GOAWAY was queued: nothing more is read */
    uint8_t acked;  /* the client acknowledged our SETTINGS */
    uint8_t gone;   /* the client sent GOAWAY */
    uint8_t waking; /* synthetic frames rebuild a session (wk_h2_wake): nothing is counted */
    uint8_t table0; /* our SETTINGS_HEADER_TABLE_SIZE is 0 (once idle): 1 sent, 2 acknowledged */
};

/* The nghttp2 options every client session gets (CONTINUATION, SETTINGS entries, unread
 * acknowledgements, nghttp2's own reset limit as a backstop to ours). */
/* Room for <need> more bytes in <b> (which holds data; 0: as many as <max> allows): the buffer
 * grows (a heap block, the contents and offsets kept) up to <max> bytes, the old one released
 * (wk_h2_buf_release, <pooled>). 0, or -1 when <max> would not hold them. */
struct wk_buf;
int wk_h2_buf_room(struct wk_buf *b, size_t need, size_t max, size_t pooled);
/* Give <b> back: to the worker's pool when it still has the <pooled> size it was taken with,
 * else (grown) to the heap. */
void wk_h2_buf_release(struct wk_buf *b, size_t pooled);

/* ---- the session's memory ---------------------------------------------------------------------
 * nghttp2 keeps a 16 KiB frame buffer for the whole life of a session, though its content is dead
 * once every frame went out. Buffers that large get their own mapping, whose pages an idle
 * connection gives back (wk_h2_mem_idle); the next frame touches them in again. */
#define WK_H2_BIG_MAX 4
struct wk_h2_mem {
    nghttp2_mem mem; /* the allocator handed to nghttp2_session_server_new3() */
    struct {
        void *p;
        size_t len; /* bytes mapped */
    } big[WK_H2_BIG_MAX];
    uint8_t dirty; /* frames may have touched the big buffers since the last release */
    uint8_t map;   /* big allocations get a mapping (only while the session is created: later
                      ones, such as a frame buffer's extra chunks, come and go with frames) */
};
void wk_h2_mem_init(struct wk_h2_mem *m);
/* Nothing is queued or being written: the big buffers' pages go back to the kernel. */
void wk_h2_mem_idle(struct wk_h2_mem *m);

void wk_h2_guard_options(nghttp2_option *opt);
/* Count one <kind> (SHM_H2_*) without ending anything (a refused stream, a stalled one). */
void wk_h2_guard_count(unsigned kind);
/* The client abused <s>: count it once, queue GOAWAY ENHANCE_YOUR_CALM. Returns
 * NGHTTP2_ERR_CALLBACK_FAILURE, for a callback to return (nghttp2 stops at once). */
int wk_h2_guard_abuse(struct wk_h2_guard *g, nghttp2_session *s, unsigned kind);
/* From on_frame_recv (any frame but HEADERS) and on_invalid_frame_recv (<err>: the library's
 * error): 0, or NGHTTP2_ERR_CALLBACK_FAILURE once over a limit. */
int wk_h2_guard_frame(struct wk_h2_guard *g, nghttp2_session *s, const nghttp2_frame *f);
int wk_h2_guard_invalid(struct wk_h2_guard *g, nghttp2_session *s, int err);
/* From on_header: <hsize> adds up a stream's decompressed fields (RFC 9113 sizes); a block far
 * beyond <max_header_bytes> is an HPACK bomb, stopped before it is inflated to its end. Returns
 * 0 or NGHTTP2_ERR_CALLBACK_FAILURE. */
int wk_h2_guard_header(struct wk_h2_guard *g, nghttp2_session *s, uint64_t *hsize, size_t nlen,
                       size_t vlen, uint64_t max_header_bytes);
/* Feed <n> bytes from the client to <s>: 0, or -1 on a connection error (GOAWAY queued where
 * nghttp2 or we could: flush, then close). */
int wk_h2_guard_recv(struct wk_h2_guard *g, nghttp2_session *s, const uint8_t *p, size_t n);

/* ---- sessions torn down while idle (wk_h2idle.c) ---------------------------------------------
 * An idle connection's nghttp2 session (~10 KiB: its struct, stream map, HPACK rings) is deleted
 * and rebuilt when the client sends again. What the client knows of the connection is kept here:
 * its SETTINGS, our send window, the last stream it opened. The decoder's HPACK table is emptied
 * first (SETTINGS_HEADER_TABLE_SIZE 0, sent once the connection is idle); our encoder's is not
 * needed (a fresh encoder refers only to entries it added, which the client's decoder holds). */
struct wk_h2_saved {
    uint32_t set[6]; /* the client's SETTINGS 1..6 */
    int32_t rwin;    /* the connection's send window */
    int32_t last_id; /* the last stream the client opened (our GOAWAY's) */
};
/* The client side's callbacks (wk_h2.c), for wk_h2_session_new(). */
struct wk_h2_cbs {
    nghttp2_on_begin_headers_callback begin_headers;
    nghttp2_on_header_callback header;
    nghttp2_on_frame_recv_callback frame_recv;
    nghttp2_on_frame_send_callback frame_send;
    nghttp2_on_data_chunk_recv_callback data_chunk;
    nghttp2_on_stream_close_callback stream_close;
    nghttp2_on_invalid_frame_recv_callback invalid_frame;
};
struct shm_snap_hdr;
/* A new server session in <*sp> (user data <ud>, allocator <*memp>, allocated first if NULL: it
 * lives as long as the session) with our SETTINGS (from <sn>'s limits) and connection window
 * submitted. 0, or -1 (to delete with wk_h2_session_del). */
int wk_h2_session_new(nghttp2_session **sp, void *ud, struct wk_h2_mem **memp,
                      const struct wk_h2_cbs *cbs, const struct shm_snap_hdr *sn, int table0);
/* Delete <*sp> (NULL too) and its allocator: both NULL after. */
void wk_h2_session_del(nghttp2_session **sp, struct wk_h2_mem **memp);
/* Can <s> be deleted (no stream, nothing to send, our SETTINGS acknowledged, no GOAWAY, empty
 * HPACK table, all DATA read acknowledged)? 0 (<sv> filled), 1 (SETTINGS_HEADER_TABLE_SIZE 0,
 * or a WINDOW_UPDATE for DATA read since the last one, was queued: send it, ask again later),
 * -1 (keep the session). */
int wk_h2_sleep_check(nghttp2_session *s, struct wk_h2_guard *g, struct wk_h2_saved *sv);
/* Bring the new session <s> (our SETTINGS and local window submitted) to <sv>'s state with
 * synthetic frames; what it would send for them is dropped. 0, or -1 (close). */
int wk_h2_wake(nghttp2_session *s, struct wk_h2_guard *g, const struct wk_h2_saved *sv);

#endif
