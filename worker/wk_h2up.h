/* dispatcher: HTTP/2 to backends, the parts shared by worker/wk_h2up.c (connections, pools,
 * nghttp2) and worker/wk_h2upx.c (the exchange's side of a stream). Private to those two. */
#ifndef DSP_WK_H2UP_H
#define DSP_WK_H2UP_H

#include <nghttp2/nghttp2.h>
#include <stdint.h>

#include "worker/wk_internal.h"

#define H2UP_UIN_SIZE     (32 * 1024) /* = wk_xchg.c's UPSTREAM_BUF_SIZE: the same free list */
#define H2UP_OUT_SIZE     (64 * 1024) /* serialized frames queued before the socket is written */
#define H2UP_IDLE_MS      30000 /* an idle connection closes after this (as the HTTP/1 pools) */
#define H2UP_GUESS        100   /* streams a connection takes before its backend says */
#define H2UP_MAX_WAIT     4096  /* streams waiting on one connection that is not ready */
#define H2UP_CONN_WIN     (64u << 20) /* connection receive window (streams bound the memory) */
#define H2UP_MAX_STALE    10          /* free retries of one request (refused streams...) */
#define H2UP_MAX_TRAILERS 64
#define H2UP_RB_FIRST     (16 * 1024) /* a stream's first response body buffer (grows) */

/* Connection flags. */
#define C_CONNECTING 0x001u /* non-blocking connect in progress */
#define C_TLSHS      0x002u /* TLS handshake in progress */
#define C_READABLE   0x004u
#define C_WRITABLE   0x008u
#define C_SETTINGS   0x010u /* the backend's first SETTINGS arrived: streams go out */
#define C_GOAWAY     0x020u /* no new streams (GOAWAY received or sent) */
#define C_DEAD       0x040u /* failed or closed: only its pending wake-ups are left */
#define C_HUP        0x080u
#define C_TLS        0x100u
#define C_USED       0x200u /* has completed a stream: failures on it may be staleness */
#define C_DUE        0x400u /* on wk.h2up_due: written once the batch is handled */

/* Stream flags. */
#define S_SUBMITTED 0x0001u  /* the request was handed to nghttp2 */
#define S_HEAD      0x0002u  /* the final response head arrived (not yet delivered) */
#define S_HEAD_DONE 0x0004u  /* ... and was delivered to the client side */
#define S_END       0x0008u  /* the backend ended the stream (END_STREAM) */
#define S_CLOSED    0x0010u  /* nghttp2 closed the stream */
#define S_FAILED    0x0020u  /* the attempt failed: <fail> says how */
#define S_DEFERRED  0x0040u  /* the data provider waits for request bytes */
#define S_REQ_EOF   0x0080u  /* the request's END_STREAM went to nghttp2 */
#define S_TRAILERS  0x0100u  /* response trailers arrived */
#define S_CHUNK_OUT 0x0200u  /* the body goes to the client chunk-framed */
#define S_NOBODY    0x0400u  /* the response has no body (HEAD, 204, 304) */
#define S_WAKE      0x0800u  /* on its connection's wake list */
#define S_BAD       0x1000u  /* the backend broke the protocol on this stream */
#define S_STALE     0x2000u  /* a failure that says nothing about the backend (refused) */
#define S_LAST_DONE 0x4000u  /* the chunked body's last chunk (and trailers) are written */
#define S_REQ_DEC   0x8000u  /* the chunk-framed request body was decoded to its end */
#define S_UNSENT    0x10000u /* the backend provably processed nothing of it */

#define H2UP_MAX_FIELDS WK_MAX_HEADERS

struct h2up_field {
    uint32_t noff, nlen, voff, vlen;
};

struct wk_h2up_conn;

struct wk_h2up_stream {
    struct wk_h2up_conn *c; /* NULL once its connection is gone */
    struct wk_xchg *x;
    int32_t id;
    uint32_t flags; /* S_* */
    uint8_t fail;   /* WK_FAIL_* with S_FAILED */
    unsigned status;
    struct wk_h2up_stream *next, *prev; /* the connection's streams */
    struct wk_h2up_stream *wnext;       /* the connection's wake list */
    struct wk_chunk dec;                /* a chunk-framed request body, decoded */
    /* header fields of the head, then of the trailers: names and values in hb */
    char *hb;
    uint32_t hb_len, hb_cap;
    uint32_t nf;    /* fields so far: the head's [0, nhead), then the trailers' */
    uint32_t nhead; /* fields of the head (once S_HEAD) */
    struct h2up_field f[H2UP_MAX_FIELDS + H2UP_MAX_TRAILERS];
    /* response body received, not yet moved to the exchange's buffer: rb[rb_off, rb_len) */
    char *rb;
    uint32_t rb_off, rb_len, rb_cap;
};

struct wk_h2up_conn {
    struct wk_ev ev; /* WK_EV_H2UP */
    uint32_t flags;  /* C_* */
    struct xport xp;
    nghttp2_session *s;
    uint32_t be_slot;
    uint32_t max_streams; /* the backend's SETTINGS_MAX_CONCURRENT_STREAMS (or a guess) */
    uint32_t open;        /* streams submitted and not yet closed by nghttp2 */
    uint32_t nwait;       /* streams attached but not yet submitted */
    uint32_t connect_ms;  /* the service's connect_timeout_ms */
    uint32_t hb_max;      /* limits.max_header_bytes */
    uint32_t rb_cap;      /* receive buffer per stream (the stream window) */
    struct wk_h2up_stream *streams;
    struct wk_h2up_stream *wake;        /* streams with news for their exchange */
    struct wk_h2up_conn *next, *prev;   /* in wk.pools[be_slot].h2 */
    struct wk_h2up_conn *dnext, *dprev; /* on wk.h2up_due (C_DUE) */
    struct wk_timer timer;              /* connect timeout, idle timeout, deferred wake-ups */
    char *out;                          /* serialized frames not yet written: [out_off, out_len) */
    uint32_t out_off, out_len, out_cap;
    char *addr; /* the backend's address, for log lines */
};

/* (wk_h2up.c) Queue the stream's exchange to be woken; take it off its connection. */
void h2up_stream_wake(struct wk_h2up_stream *st);
void h2up_stream_unlink(struct wk_h2up_stream *st);
/* (wk_h2up.c) The attempt on the stream failed with <why> (WK_FAIL_*); <stale>: in a way that
 * says nothing about the backend. */
void h2up_stream_failed(struct wk_h2up_stream *st, int why, int stale);
/* (wk_h2upx.c) An interim (1xx) head arrived (fields [0, nf)): passed on to the client side
 * (called from nghttp2's frame callback: nothing but the client side's interim op runs). 0, or
 * -1 when the attempt must fail (too many, or the client side refused it). */
int h2up_interim(struct wk_h2up_stream *st);
/* Put the stream on a connection with room (see wk_h2up.c). 0, 1 refused at once, -1. */
int h2up_stream_place(struct wk_h2up_stream *st, const struct wk_xchg *x);
/* (wk_h2up.c) Trailer bytes of a chunk-framed request held after x->send_off until the
 * section ends (0 when none). */
uint32_t h2up_req_held(const struct wk_h2up_stream *st, const struct wk_xchg *x);
/* Write what nghttp2 has to send: 0, or -1 when the connection failed. */
int h2up_conn_flush(struct wk_h2up_conn *c);
/* The connection has frames to write: written once the batch's events are handled (by
 * wk_h2up_run_due()), so that the streams submitted in one batch cost one write. */
void h2up_conn_due(struct wk_h2up_conn *c);
/* The client session of <c> (its callbacks record what the backend sent on the streams and
 * queue them to be woken; they drive nothing), SETTINGS queued; NULL when out of memory. Also
 * what tests/fuzz/fuzz_h2up.c feeds a hostile backend's frames to. */
struct shm_snap_hdr;
nghttp2_session *h2up_session_new(struct wk_h2up_conn *c, const struct shm_snap_hdr *sn);
/* With no stream left, the connection's idle timeout starts. */
void h2up_conn_idle_check(struct wk_h2up_conn *c);

/* The request head <p>[0, len) (an HTTP/1 head as the exchange builds it for any backend) as an
 * HTTP/2 header block into <nva>[0, max): :method, :scheme (<https>), :path, :authority from
 * Host, the fields with lower-cased names (in place in <p>), without the connection-specific
 * ones, Host, TE and Expect; "te: trailers" when <te_trailers>. Returns how many, or 0 when the
 * head is not one or does not fit. */
size_t wk_h2up_head_nv(char *p, size_t len, int https, int te_trailers, nghttp2_nv *nva,
                       size_t max);

#endif
