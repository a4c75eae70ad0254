/* dispatcher: worker-private types shared by the event loop, the client/upstream state machine and
 * the header helpers. */
#ifndef DSP_WK_INTERNAL_H
#define DSP_WK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "common/slab.h"
#include "common/xport.h"
#include "shm/shm_snap.h"
#include "shm/shm_types.h"
#include "worker/wk_chunk.h"
#include "worker/wk_h1.h"
#include "worker/wk_mw.h"

/* ---- event sources: every object registered with epoll starts with one of these ---------- */
#define WK_EV_LISTENER 1
#define WK_EV_CLIENT   2
#define WK_EV_UPSTREAM 3
#define WK_EV_H2STREAM 4 /* never in epoll: an HTTP/2 stream, as the owner of its timer */
#define WK_EV_H2UP     5 /* an HTTP/2 connection to a backend (worker/wk_h2up.c) */
#define WK_EV_AUTH     8 /* basic_auth's hashing thread's eventfd (worker/wk_auth.c) */
#define WK_EV_FAUTH    9 /* a connection to a forward_auth service (worker/wk_fauth.c) */

struct wk_ev {
    uint8_t kind;
};

/* Free a closed client (from wk.client_slab) or upstream (allocated with malloc) once the current
 * epoll batch is done: a later event of the same batch may still name it. Marks it dead (kind 0),
 * which the loop's dispatch skips. */
void wk_free_later(struct wk_ev *e);

/* ---- buffers ------------------------------------------------------------------------------
 * Bytes live in data[start, end). A buffer with data == NULL holds nothing and costs nothing:
 * idle connections give their buffers back to the per-worker free list. */
struct wk_buf {
    char *data;
    uint32_t cap;
    uint32_t start;
    uint32_t end;
};

int wk_buf_get(struct wk_buf *b, uint32_t size);
void wk_buf_put(struct wk_buf *b);

/* ---- timers -------------------------------------------------------------------------------
 * One FIFO queue per distinct duration: since every timer in a queue has the same duration,
 * arming appends at the tail and the head is always the next to expire, so arm, disarm and
 * expiry are O(1) without a heap. */
struct wk_timer {
    struct wk_timer *prev, *next;
    struct wk_ev *owner; /* the client or upstream to notify */
    uint64_t deadline;
    uint32_t queue; /* queue index + 1; 0 = not armed */
};

void wk_timer_arm(struct wk_timer *t, uint32_t ms);
void wk_timer_disarm(struct wk_timer *t);

/* ---- generations --------------------------------------------------------------------------- */
struct ssl_st;
struct wk_tls_gen;

struct wk_gen {
    const struct shm_snap_hdr *snap;
    size_t size;
    uint64_t gen;
    uint32_t refs; /* one for "current", one per request in flight */
    struct wk_gen *next;
    struct wk_tls_gen *tls; /* its SSL contexts (worker/wk_tls.h); NULL without TLS */
};

void wk_gen_ref(struct wk_gen *g);
void wk_gen_unref(struct wk_gen *g);

/* ---- upstream connections ------------------------------------------------------------------ */
#define WK_UP_F_READABLE   0x01u
#define WK_UP_F_WRITABLE   0x02u
#define WK_UP_F_CONNECTING 0x04u /* non-blocking connect in progress */
#define WK_UP_F_HUP        0x08u /* peer closed or error reported by epoll */
#define WK_UP_F_REUSED     0x10u /* taken from the pool (so a reset may be a keep-alive race) */
#define WK_UP_F_TLSHS      0x20u /* TLS handshake in progress (counts as connecting) */
/* a write failed (the backend reset or closed): what it sent before that is still read, and
 * nothing more is written */
#define WK_UP_F_WERR 0x40u

struct wk_xchg;
struct wk_alog_req;

struct wk_upstream {
    struct wk_ev ev;
    uint8_t flags;
    struct xport xp;   /* the socket, plain or TLS (kept across pooled reuse) */
    uint32_t be_slot;  /* runtime slot of the backend: the pool key */
    struct wk_xchg *x; /* the exchange it serves; NULL while idle in the pool */
    struct wk_upstream *pnext, *pprev;
    struct wk_timer timer; /* pool idle timeout */
    uint64_t pass;         /* wk.pass when it entered the pool, or when it left it
                              unchecked (0 when its socket was seen empty at reuse) */
};

/* Longest client X-Request-ID kept (longer ones are replaced by a generated id); a UUID is 36. */
#define WK_REQID_MAX 48

/* ---- client connections --------------------------------------------------------------------
 * Client state machine:
 *
 *   IDLE --bytes--> HEAD --head parsed, routed--> PROXY --response sent--> IDLE (keep-alive)
 *                    |                              |                  \--> closed
 *                    +--error--> REPLY (generated response) --> IDLE or LINGER --> closed
 *
 * LINGER: after a response that ends the connection, the write side is shut down and input is
 * drained for a short while so the peer reads the answer instead of a reset.
 *
 * TLS listeners start in TLS (after PPHDR when the listener also takes PROXY headers): the
 * handshake runs under the header timeout armed at accept, then the connection is IDLE. */
#define WK_CS_IDLE   0
#define WK_CS_HEAD   1
#define WK_CS_PROXY  2
#define WK_CS_REPLY  3
#define WK_CS_LINGER 4
#define WK_CS_PPHDR  5 /* waiting for the PROXY protocol header (proxy_protocol listeners) */
#define WK_CS_TLS    6 /* TLS handshake in progress */
#define WK_CS_H2     7 /* HTTP/2 (worker/wk_h2.c): the connection carries streams */

#define WK_C_F_READABLE 0x01u
#define WK_C_F_WRITABLE 0x02u
#define WK_C_F_EOF      0x04u /* client half-closed (read 0) */
#define WK_C_F_CLOSE    0x08u /* close once the current response is out */
#define WK_C_F_HUP      0x10u /* error/hangup reported by epoll */
#define WK_C_F_RDHUP    0x80u /* epoll saw the peer's FIN: read until EOF (no short-read shortcut) */
#define WK_C_F_STARTED  0x40u /* has sent at least one request (idle vs header timeout) */

/* Transaction flags, reset for each request. */
#define WK_T_REQ_DONE    0x0001u /* request message fully parsed */
#define WK_T_HEAD_REQ    0x0002u /* request method is HEAD: response has no body */
#define WK_T_UP_WRITTEN  0x0004u /* some request byte reached the upstream socket */
#define WK_T_RESP_BYTES  0x0008u /* some response byte came from the upstream */
#define WK_T_RESP_HEAD   0x0010u /* response head parsed and queued for the client */
#define WK_T_RESP_DONE   0x0020u /* response message fully parsed */
#define WK_T_CLIENT_SENT 0x0040u /* some response byte reached the client */
#define WK_T_DECHUNK     0x0080u /* chunked response to an HTTP/1.0 client: decode in place */
#define WK_T_BODY_LOST   0x0100u /* request body bytes were discarded: no retry possible */
#define WK_T_UP_REUSABLE 0x0200u /* upstream may go back to the pool */
#define WK_T_CONTINUE    0x0400u /* client sent Expect: 100-continue */
#define WK_T_IDEMPOTENT  0x0800u
#define WK_T_COUNTED     0x1000u /* backend active counter incremented */
/* request sent, final response head awaited: the response timer is armed once and 1xx bytes do
 * not push it back */
#define WK_T_RESP_WAIT 0x2000u
/* final response head came before the request was fully sent: the upstream is never reused */
#define WK_T_EARLY       0x4000u
#define WK_T_REPLIED     0x8000u   /* the exchange answered by itself (wk_xchg_reply) */
#define WK_T_UPGRADE     0x10000u  /* client asked for a protocol upgrade (Upgrade header) */
#define WK_T_TUNNEL      0x20000u  /* 101 received: bytes are spliced both ways, unparsed */
#define WK_T_UP_EOF      0x40000u  /* tunnel: the backend closed its side */
#define WK_T_LB_DONE     0x80000u  /* this attempt's outcome went to wk_lb_result() */
#define WK_T_100_PENDING 0x100000u /* 100 Continue owed once a suspended middleware passes */
#define WK_T_TALLIED     0x200000u /* statistics of this request recorded (wk_conn.c) */
#define WK_T_HTML        0x400000u /* Accept prefers text/html: errors.pages apply */
/* the client timer is the send timeout: the client stopped draining its response (wk_conn.c) */
#define WK_T_SEND_WAIT 0x20000000u
#define WK_T_RATE_TICK 0x40000000u /* the client timer is the body-rate tick (wk_conn.c) */
/* the body was not read because our buffer was full: not the client's fault, its rate window
 * restarts */
#define WK_T_BODY_STALL 0x10000000u
#define WK_T_LOGGED     0x80000000u /* access log line written (wk_conn.c) */

/* What only a request in progress needs. Idle keep-alive connections hold none of it (they are
 * most connections, and memory per idle connection is what a proxy's capacity is made of); it
 * lives exactly as long as wk_client.gen is set, and comes from a per-worker free list. */
struct wk_txn {
    struct wk_buf uin;  /* bytes from the upstream (response) */
    struct wk_buf uout; /* rewritten request head for the upstream */
    /* positions in uin.data */
    uint32_t rparsed_off; /* response parser consumed up to here */
    uint32_t rsend_off;   /* next response body byte to write to the client */
    uint32_t rready_off;  /* end of response body bytes ready to send (== rparsed_off unless
                             decoding chunks in place) */
    uint8_t reqid_len;
    char reqid[WK_REQID_MAX]; /* not NUL-terminated: reqid_len bytes */
    struct wk_h1_msg rs;      /* response tokenizer state (wk_h1.h) */
    uint64_t body_bytes;      /* request body bytes (decoded) so far, for max_body_bytes */
    uint64_t started_ms;
    uint64_t bytes_sent;    /* bytes written to the client for this request */
    uint64_t resp_due_ms;   /* deadline of the final response head (with WK_T_RESP_WAIT) */
    uint32_t interim_bytes; /* 1xx response bytes of the current attempt */
    uint8_t ninterim;       /* 1xx responses of the current attempt */
    uint8_t cut;            /* SHM_CUT_*: why the response ends before its end (the first reason
                               known wins; none set when the client goes = client_closed) */
    uint64_t
        body_due_ms;      /* limits.min_body_rate: the body is behind its rate from this time on
                             (5 s grace, plus 1 s per min_body_rate bytes read, at most 5 s ahead) */
    uint64_t progress_ms; /* last progress of the exchange while the body is read (rate ticks) */
    struct wk_alog_req *areq; /* the request's access-log fields (NULL when logging is off) */
    struct wk_chunk rqc;      /* chunked request body: strict decoder (wk_chunk.h) */
    uint64_t req_left;        /* Content-Length request body: bytes still to come */
    uint8_t req_chunked;      /* the request body is chunked */
    uint8_t resp_chunked;     /* the response body is chunked: rsc decodes it */
    uint8_t te_trailers;      /* the client sent TE: trailers (passed on to HTTP/2 backends) */
    uint8_t h2_stale;         /* free retries taken after refused HTTP/2 streams (wk_h2up.c) */
    struct wk_chunk rsc;      /* chunked response body: strict decoder */
    /* The compress middleware (worker/wk_mwgz.c): the coding the client accepts (WK_GZ_*, set
     * by its request hook), and once the response is being compressed, its encoder and output
     * (NULL otherwise: the common case, which costs nothing else). */
    uint8_t gz_enc;
    uint8_t gz_alt; /* the coding it accepts besides brotli (when brotli is over the budget) */
    uint8_t gz_mw;  /* chain position + 1 of the compress middleware that took the request */
    struct wk_gzb *gzb;
    struct wk_mw_txn mw; /* the route's middleware chain (worker/wk_mw.h); zero: none */
    struct wk_txn *next_free;
};

/* A response being compressed: the body bytes the exchange has ready (decoded, in uin) go
 * through the encoder into <out>, framed as the client side asked (HTTP/1.1 chunks, or raw for
 * HTTP/1.0 and HTTP/2), and the client side takes them from there (wk_xchg_ready()). */
struct wk_gz;
struct wk_gzb {
    struct wk_gz *gz;
    struct wk_buf out; /* [start, end): bytes for the client */
    uint8_t chunked;   /* frame as chunks */
    uint8_t ended;     /* the encoder finished: all of the body is in <out> (or sent) */
    uint8_t pending;   /* the encoder's last call filled <out>: it may hold more output */
    size_t cost;       /* what it counts in wk.gz_mem */
    uint32_t rt_slot;  /* the middleware's counters (wk.rt->mws[]) */
};

/* One request's backend attempts as the balancer (wk_lb.c) sees them: everything it reads or
 * writes, so that it works without a connection (and is unit-tested on its own). Embedded in the
 * client connection (no allocation); meaningful while a request is in progress (gen != NULL). */
#define WK_AT_PROBE 0x01u /* the current attempt holds its backend's probe lease */

struct wk_attempt {
    struct wk_gen *gen;    /* snapshot this request was routed with (referenced) */
    uint32_t service;      /* index in gen's service table (SHM_NONE: not routed yet) */
    uint32_t backend;      /* the current attempt's backend: position within the service */
    uint64_t tried;        /* bitmask of backend positions already tried */
    uint8_t tries;         /* attempts made so far */
    uint8_t flags;         /* WK_AT_* */
    uint8_t client_family; /* the request's client: peer, or the right-most untrusted
                              X-Forwarded-For entry when the peer is a trusted proxy (the
                              ip-hash key) */
    uint8_t client_ip[16];
    struct shm_str set_cookie; /* a sticky split's draw: the Set-Cookie value that keeps the
                                  client on it (in gen's snapshot); len 0 = none */
};

/* Where a request comes from, as the exchange needs it (access log, X-Forwarded-*, ip-hash). */
struct wk_peer {
    uint8_t family; /* the connection's client: socket peer, or the PROXY source */
    uint8_t ip[16];
    uint16_t port;
    uint8_t https;      /* arrived on a TLS listener (forwarded proto https) */
    char *cert_subject; /* the verified client certificate's subject (heap), or NULL */
};

/* ---- the exchange (wk_xchg.c) ----------------------------------------------------------------
 * One request from the moment its head is parsed until its response is delivered: routing, the
 * backend attempts (pick, connect or reuse, retry), the upstream side in HTTP/1 (request head
 * and body out, response head and body in, framing checked), the outcome for the balancer, the
 * statistics and the access log. It knows nothing of the client's protocol: the client side
 * (the HTTP/1 connection of wk_conn.c; an HTTP/2 stream can do the same) hands it the parsed
 * request head and the request bytes, drains the response bytes it exposes, and serves it
 * through a table of operations.
 *
 * Return convention of every exchange function that can end the request: 0 when the exchange
 * goes on or was answered (a generated response is queued: the client side sees that through
 * its own state), -1 when the client side was closed (the exchange is gone with it). */
struct wk_xchg_ops {
    /* Queue a generated response (<status>, <body> of Content-Type <ctype>: JSON, or an
     * operator's HTML page) and drop the exchange's upstream. 0; 1 when it does not fit what
     * the client side can queue now (nothing queued: a smaller answer may); -1 when closed. */
    int (*reply)(struct wk_xchg *x, unsigned status, const char *ctype, const char *body,
                 size_t blen, int close_it);
    /* Queue the client's response head for the backend's final (or 101) head <rs>: 0, or -1
     * (the attempt fails as a bad response). May set WK_T_DECHUNK: the client wants the chunked
     * body delivered decoded. */
    int (*resp_head)(struct wk_xchg *x, const struct wk_h1_resp *rs);
    /* Take back the head queued by resp_head (nothing of it reached the client). */
    void (*unhead)(struct wk_xchg *x);
    /* Pass on an interim (1xx) response <rs>, whose HTTP/1 head is <head>[0, hlen) when the
     * backend spoke HTTP/1 (else NULL: a client side that needs the bytes writes them from
     * <rs>): 0, or -1 (the attempt fails as a bad response). */
    int (*interim)(struct wk_xchg *x, const struct wk_h1_resp *rs, const char *head, size_t hlen);
    /* The response's trailer fields <f>[0, n), once its body is complete (before the client
     * side sees WK_T_RESP_DONE), when they do not travel inside the relayed bytes: an HTTP/1
     * chunked body decoded for the client (WK_T_DECHUNK), or an HTTP/2 backend's trailing
     * HEADERS. Not yet checked: the client side keeps what wk_trailer_ok() (wk_grpc.h) lets
     * through. 0, or -1 when the client side was closed. */
    int (*trailers)(struct wk_xchg *x, const struct wk_hdr *f, uint32_t n);
    /* The exchange cannot go on and nothing honest can be answered: cut the client. */
    void (*close)(struct wk_xchg *x);
    /* The exchange changed phase (connected, request sent, ...): re-arm the client's timer. */
    void (*rearm)(struct wk_xchg *x);
    /* The upstream has news (an event): drive the client side, which drives the exchange. */
    void (*wake)(struct wk_xchg *x);
};

struct wk_xchg {
    const struct wk_xchg_ops *ops;
    const struct wk_peer *peer;
    uint32_t tflags; /* WK_T_*, reset for each request */
    uint16_t status; /* the response's status (proxied or generated) */
    uint8_t method;  /* the request: method (wk_h1_req.method), version */
    uint8_t vmajor, vminor;
    struct wk_upstream *up;
    struct wk_h2up_stream *h2s; /* instead of <up>: a stream to an HTTP/2 backend (wk_h2up.c) */
    struct wk_txn *tx;          /* the request in progress: exactly while at.gen != NULL */
    struct wk_attempt at; /* the request's routing and backend attempts (wk_lb.c works on it) */
    /* The request's bytes, in a buffer of the client side: [body_off, parsed_off) are body bytes
     * the client side checked (forwardable), [send_off, parsed_off) those not yet written
     * upstream. The client side may compact the buffer, moving the offsets with it. */
    struct wk_buf *rq;
    uint32_t body_off;
    uint32_t parsed_off;
    uint32_t send_off;
    /* The request's trailer fields (an HTTP/2 client's trailing HEADERS), set by the client side
     * before WK_T_REQ_DONE, checked (wk_trailer_ok()); NULL: none. An HTTP/1.1 backend gets them
     * inside the chunked body the client side frames, so only an HTTP/2 upstream reads them. */
    const struct wk_hdr *rtrail;
    uint32_t nrtrail;
};

/* ---- client connections: the HTTP/1 side (wk_conn.c) ----------------------------------------- */
struct wk_client {
    struct wk_ev ev;
    uint8_t state; /* WK_CS_* */
    uint8_t flags; /* WK_C_F_* */
    uint8_t listener;
    struct xport xp; /* the client's socket, plain or TLS */
    struct wk_timer timer;
    struct wk_client *next, *prev; /* all client connections of this worker */

    struct wk_buf in;  /* bytes from the client */
    struct wk_buf out; /* generated bytes for the client: 100-continue, response head, errors */
    uint32_t rhead_at; /* out.end before the final response head was queued */

    struct wk_xchg x; /* the current request (HTTP/1) */
    struct wk_peer peer;
    struct wk_h2 *h2; /* HTTP/2 state (WK_CS_H2), else NULL */
};

/* ---- the worker ----------------------------------------------------------------------------- */
struct wk_listener {
    struct wk_ev ev;
    int fd;
    uint32_t idx; /* the listener's position in the configuration */
    uint32_t lid; /* the master's names for this socket (worker/wk.h) */
    uint32_t sock;
    uint8_t tls; /* options for new connections (a reload may change them) */
    uint8_t proxy_protocol;
    uint16_t family; /* its address: idx is looked up again in each adopted generation */
    uint16_t port;
    uint8_t ip[16];
};

struct wk_h2up_conn;

struct wk_pool {
    struct wk_upstream *head;
    uint32_t count;
    uint32_t hiwat;    /* the most requests busy on the backend at once lately (wk_pool_put) */
    uint64_t hiwat_ms; /* when hiwat was set */
    uint32_t h2_max;   /* the backend's last SETTINGS_MAX_CONCURRENT_STREAMS (0: none) */
    struct wk_h2up_conn *h2; /* HTTP/2 connections to the backend (wk_h2up.c) */
};

struct wk_worker {
    int epfd;
    int slot;
    int stopping; /* graceful stop in progress */
    uint64_t now; /* monotonic ms, refreshed each loop pass */
    uint64_t stop_deadline;
    struct shm_ctl *ctl;
    struct shm_rt *rt;
    struct shm_worker_slot *me;
    struct wk_gen *cur;             /* current generation (referenced) */
    struct wk_gen *gens;            /* all mapped generations */
    struct wk_listener **listeners; /* each allocated on its own (events point to them) */
    int nlisten;
    int accept_starved; /* accept4() ran out of descriptors: logged once per episode */
    uint64_t starved_since;
    uint64_t accept_resume_ms; /* accepting paused until then (0: not paused) */
    int listeners_off;         /* listeners taken out of the epoll set during the pause */
    struct wk_client *clients; /* list head */
    uint64_t nclients;
    /* Client connections (and their HTTP/2 state, wk_h2.c) live as long as the connection:
     * packed in a slab of their own, not among the heap's short-lived blocks (common/slab.h). */
    struct dsp_slab client_slab;
    struct wk_pool *pools;         /* indexed by backend runtime slot */
    uint64_t pass;                 /* epoll_wait() calls so far: events of the current batch are
                                      older than anything done while handling them */
    int batch_full;                /* the last epoll_wait() filled its array: more may be ready */
    struct wk_h2up_conn *h2up_due; /* HTTP/2 backend connections to write after the batch */
    struct wk_h2 *h2_due;        /* HTTP/2 connections to run once the batch's events are handled */
    struct wk_h2_head *h2_heads; /* spare header blocks (wk_h2.c), h2_nheads of them */
    uint32_t h2_nheads;
    uint32_t h2_slept;   /* idle HTTP/2 sessions deleted since the last malloc_trim() */
    uint64_t h2_trim_ms; /* wk.now of the last malloc_trim() (wk_h2_trim) */
    uint64_t rng[2];
    struct wk_authw *auth;   /* basic_auth's checks (worker/wk_auth.c), NULL until used */
    struct wk_fauthw *fauth; /* forward_auth's connections (worker/wk_fauth.c), NULL until used */
    /* Field values a response hook writes (compress: Vary, ETag), read when the head it edited
     * is written, right after the hooks ran. */
    char mw_scratch[1536];
    /* What the live compress encoders and their buffers may use (wk_mwgz.c): a new one starts
     * only within WK_GZ_MEM_MAX, else the response goes with a cheaper coding or as it is. */
    uint64_t gz_mem;
};

extern struct wk_worker wk;

/* The service and backend of a routed exchange's current attempt, and the size of the buffers
 * that hold heads (a client's input, the upstream request head) under snapshot <s>. */
static inline const struct shm_service *wk_xsvc(const struct wk_xchg *x)
{
    return &shm_services(x->at.gen->snap)[x->at.service];
}

static inline const struct shm_backend *wk_xbe(const struct wk_xchg *x)
{
    return &shm_backends(x->at.gen->snap)[wk_xsvc(x)->backends_first + x->at.backend];
}

static inline uint32_t wk_head_buf_size(const struct shm_snap_hdr *s)
{
    uint64_t sz = (s->limits.max_header_bytes + 4096 + 4095) & ~(uint64_t)4095;

    return (uint32_t)(sz < 16384 ? 16384 : sz);
}

/* ---- wk_xchg.c: the exchange (return conventions: see struct wk_xchg_ops) ------------------- */
/* An address (AF_INET: 4 bytes, AF_INET6: 16) as text. */
void wk_ip_str(uint8_t family, const uint8_t *ip, char *buf, size_t len);
/* (wk_account.c) Is the connection's peer a trusted proxy (trusted_proxies)? */
int wk_xchg_peer_trusted(const struct wk_xchg *x);
/* (wk_account.c) The request's client into x->at: the peer, or for a trusted peer the right-most
 * X-Forwarded-For entry of <hd> that is not itself a trusted proxy. */
void wk_xchg_resolve_client(struct wk_xchg *x, const struct wk_head *hd);
/* Start a request: reference the current generation, take a transaction, reset the attempt
 * state. 0, or -1 when out of memory (the caller closes the client). */
int wk_xchg_begin(struct wk_xchg *x);
/* The request id (the client's when sane, else a new one) and the access log's fields, from the
 * parsed head at <base> [0, hlen). <abs_host>: an absolute-form authority (or NULL). */
void wk_xchg_identify(struct wk_xchg *x, const struct wk_head *hd, const char *base, size_t hlen,
                      const char *abs_host, size_t abs_hostlen);
/* Route the checked request <rq> (an HTTP/1 head, or what another codec fills in the same
 * shape) on normalised host <nhost> and its path: finds the service, or answers 404 (no route,
 * no backends) or 413 (declared body too large). 0 when routed, 1 when answered, -1 when the
 * client was closed. */
int wk_xchg_route(struct wk_xchg *x, const struct wk_h1_req *rq, const char *nhost, size_t nhlen);
/* listeners[].health_uri: a GET or HEAD of it (on listener <listener>) is answered like admin
 * GET /health, before routing. 0 when <rq> is no probe, 1 when answered, -1 when closed. */
int wk_xchg_health(struct wk_xchg *x, uint32_t listener, const struct wk_h1_req *rq);
/* Build the request head for the backend (X-Forwarded-*, X-Request-ID, hop-by-hop headers
 * dropped), then run the route's middlewares on it (worker/wk_mw.h). 0 to go on to a backend,
 * 1 when answered (431, or by a middleware) or suspended by a middleware (which resumes it),
 * -1 when the client was closed. */
int wk_xchg_forward(struct wk_xchg *x, const struct wk_h1_req *rq);
/* Build the upstream head from <rq> alone (wk_xchg_forward() without middlewares): 0, 1 when
 * answered 431, -1 when the client was closed. */
int wk_xchg_build(struct wk_xchg *x, const struct wk_h1_req *rq);
/* Pick a backend and connect (or reuse a pooled connection); retries follow by themselves. */
int wk_xchg_start(struct wk_xchg *x);
/* Move request bytes (the head, then [send_off, parsed_off) of x->rq) to the upstream: 1 on
 * progress, 0 when blocked, -1 when the client was closed. */
int wk_xchg_send(struct wk_xchg *x);
/* Read what the upstream sent: 1 on progress, 0 when blocked, -1 when the client was closed. */
int wk_xchg_recv(struct wk_xchg *x);
/* Parse what was read: the response head goes to ops->resp_head, body bytes become ready in
 * tx->uin at [rsend_off, rready_off) for the client side to send (it moves rsend_off). */
int wk_xchg_parse(struct wk_xchg *x);
/* The response is complete: outcome, statistics and log; the upstream goes back to its pool
 * when it ended at an exact message boundary. */
int wk_xchg_finish(struct wk_xchg *x);
/* The client side's timer expired during the exchange (connect, response, body or tunnel idle
 * timeout): fail the attempt (retrying where allowed), answer 408/504, or cut the client. */
int wk_xchg_expired(struct wk_xchg *x);
/* Note what the request's Accept headers prefer (only when the snapshot has error pages). */
void wk_xchg_accept(struct wk_xchg *x, const struct wk_head *hd);
/* Answer with a generated response: JSON {"error", "message"}, or the <body> as given; an
 * operator's page for <status> instead when the client prefers text/html. */
int wk_xchg_error(struct wk_xchg *x, unsigned status, const char *error, const char *msg,
                  int close_it);
/* (wk_xchg_reply_as() with a <ctype>: that body as given, no operator's page.) */
int wk_xchg_reply_as(struct wk_xchg *x, unsigned status, const char *ctype, const char *body,
                     size_t blen, int close_it);
/* An answer of the exchange behind middlewares that passed carries their response fields. */
static inline void wk_xchg_mw_fields(struct wk_xchg *x)
{
    if (x->tx != NULL && x->tx->mw.passed != 0 && x->at.gen != NULL) {
        wk_mw_decorate(x);
    }
}
static inline int wk_xchg_reply(struct wk_xchg *x, unsigned status, const char *body, size_t blen,
                                int close_it)
{
    return wk_xchg_reply_as(x, status, NULL, body, blen, close_it);
}
/* Statistics of a request whose response is complete, once: <how> 1 = proxied, 0 = generated.
 * Called just before the write that hands the client the response's last bytes, so whoever got
 * the response and then reads the counters finds it counted. */
void wk_xchg_tally(struct wk_xchg *x, int how);
/* The request is over: <how> 1 = proxied response complete, 0 = generated response sent, -1 =
 * the client went before its end (logged only, not counted). */
void wk_xchg_log(struct wk_xchg *x, int how);
/* Why the exchange is about to be cut (SHM_CUT_*), for its log line; the first reason wins. */
static inline void wk_xchg_cut(struct wk_xchg *x, unsigned why)
{
    if (x->tx != NULL && x->tx->cut == SHM_CUT_NONE) {
        x->tx->cut = (uint8_t)why;
    }
}
/* The response body bytes ready for the client side: their start in *p and their count. */
static inline uint32_t wk_xchg_ready(const struct wk_xchg *x, char **p)
{
    const struct wk_txn *t = x->tx;

    if (t->gzb != NULL) {
        *p = t->gzb->out.data + t->gzb->out.start;
        return t->gzb->out.end - t->gzb->out.start;
    }
    *p = t->uin.data + t->rsend_off;
    return t->rready_off - t->rsend_off;
}
/* Are response body bytes ready for the client side? */
static inline int wk_xchg_has_ready(const struct wk_xchg *x)
{
    const struct wk_txn *t = x->tx;

    return t->gzb != NULL ? t->gzb->out.end > t->gzb->out.start : t->rready_off > t->rsend_off;
}
/* The client side sent <n> of the ready bytes. */
static inline void wk_xchg_took(struct wk_xchg *x, uint32_t n)
{
    struct wk_txn *t = x->tx;

    if (t->gzb != NULL) {
        t->gzb->out.start += n;
        if (t->gzb->out.start == t->gzb->out.end) {
            t->gzb->out.start = t->gzb->out.end = 0;
        }
    } else {
        t->rsend_off += n;
    }
}
/* Is every byte of the response body produced (the backend's part complete, and a compressed
 * body finished), so that the ready bytes are its end? */
static inline int wk_xchg_body_final(const struct wk_xchg *x)
{
    return (x->tflags & WK_T_RESP_DONE) && (x->tx->gzb == NULL || x->tx->gzb->ended);
}

/* ---- wk_mwgz.c: the compress middleware in the exchange --------------------------------------
 * (Its request and response hooks are in the chain's table, worker/wk_mw.c.) */
/* The response head went to the client side with compression on (x->tx->gzb): note how the
 * client side frames the body, and decode the backend's when it is chunked (<up_chunked>). */
void wk_mwgz_framed(struct wk_xchg *x, int up_chunked);
/* Move the ready body bytes through the encoder (the exchange calls it after each parse while
 * x->tx->gzb is set). 0, or -1 when the encoder failed (the client side was cut). */
int wk_mwgz_pump(struct wk_xchg *x);
/* Forget the compression of a head that was taken back (ops->unhead), and at the end. */
void wk_mwgz_drop(struct wk_txn *t);

/* Drop the upstream of the current attempt without reusing it (and a probe lease). */
void wk_xchg_detach(struct wk_xchg *x);
/* End the request: detach, give back the transaction and the generation. */
void wk_xchg_end(struct wk_xchg *x);
void wk_upstream_event(struct wk_upstream *u, uint32_t events);

/* The backend <be>'s socket address. 0, or -1 (a unix path that does not fit). */
int wk_backend_addr(const struct shm_snap_hdr *s, const struct shm_backend *be,
                    struct sockaddr_storage *ss, socklen_t *sl);
/* The current attempt failed with <why> (WK_FAIL_*): retry where the rules allow, else answer
 * 502/504. 0 when a new attempt runs or the client was answered, -1 when it was closed. */
int wk_xchg_failed(struct wk_xchg *x, int why);
/* Hand the final response head <rs> to the client side through the route's response hooks
 * (middlewares, compress, the split cookie). 0, or -1 (the attempt fails as a bad response). */
int wk_xchg_relay_head(struct wk_xchg *x, struct wk_h1_resp *rs);

/* ---- wk_h2up.c: HTTP/2 to backends (services with protocol h2 or grpc) ---------------------- */
struct wk_h2up_stream;
/* Start the exchange's attempt on a stream to its backend (x->h2s): 0, 1 when the connect was
 * refused at once, -1 when out of resources. */
int wk_h2up_attach(struct wk_xchg *x);
/* Drop the attempt's stream (reset when still open). */
void wk_h2up_detach(struct wk_xchg *x);
/* wk_xchg_send() / wk_xchg_recv() for an HTTP/2 attempt (same returns). */
int wk_h2up_send(struct wk_xchg *x);
int wk_h2up_recv(struct wk_xchg *x);
/* Did the attempt fail in a way that says nothing about the backend (a refused stream, or a
 * used connection gone) and may be retried for free? */
int wk_h2up_stale(const struct wk_xchg *x);
/* Does <hd> carry TE: trailers? */
int wk_h2up_te_trailers(const struct wk_head *hd);
/* Close the idle HTTP/2 connections to backend slot <slot> (out of descriptors); how many. */
size_t wk_h2up_shed(uint32_t slot);
void wk_h2up_event(struct wk_h2up_conn *c, uint32_t events);
void wk_h2up_timeout(struct wk_h2up_conn *c);
/* Write the HTTP/2 backend connections that were given frames in this batch (one write each,
 * not one per stream) and wake the exchanges whose request bodies went out. Returns whether
 * there was any. */
int wk_h2up_run_due(void);

/* ---- wk_pool.c: idle keep-alive connections to backends, per backend runtime slot ----------- */
/* Close an upstream connection (unlinking it from its pool when it is idle there). */
void wk_upstream_close(struct wk_upstream *u);
/* Is anything (bytes, EOF, an error) waiting on a connection between two exchanges? One
 * non-blocking look; TLS session tickets are consumed and do not count. */
int wk_upstream_pending(struct wk_upstream *u);
/* Park an upstream whose exchange ended exactly at a message boundary (u->x still set). From
 * here on any input closes it. */
void wk_pool_put(struct wk_upstream *u);
/* An idle connection to backend slot <be_slot> fit for reuse (<tls>: the service's setting
 * now), marked WK_UP_F_REUSED, or NULL. <careful>: look at the socket even when its events are
 * known to be handled (requests that must never be sent twice). */
struct wk_upstream *wk_pool_take(uint32_t be_slot, int tls, int careful);
/* An event on an idle pooled connection. */
void wk_pool_event(struct wk_upstream *u, uint32_t events);
void wk_upstream_timeout(struct wk_upstream *u);
/* Close every idle pooled connection of the current generation's backends; how many. */
size_t wk_pool_shed(void);

/* ---- wk_conn.c: the HTTP/1 client side ------------------------------------------------------- */
void wk_client_accept(int fd, const struct sockaddr *sa, const struct wk_listener *l);
void wk_client_event(struct wk_client *c, uint32_t events);
void wk_client_timeout(struct wk_client *c);
void wk_client_close(struct wk_client *c);
/* The HTTP/1 client side as the exchange sees it. */
extern const struct wk_xchg_ops wk_h1_ops;
/* Arm the client's timer for its state (and its exchange's phase). */
void wk_client_rearm(struct wk_client *c);
/* Drive the connection as far as it goes without blocking. */
void wk_client_run(struct wk_client *c);

/* ---- wk_h2.c: the HTTP/2 client side --------------------------------------------------------- */
struct wk_h2;
struct wk_h2_stream;
struct wk_h2_head;
/* Serve <c> in HTTP/2 from now on (state WK_CS_H2); <pre> holds bytes already read (the client
 * preface on a plain listener). 0, or -1 (the caller closes the client). */
int wk_h2_start(struct wk_client *c, const char *pre, size_t plen);
/* One pass of an HTTP/2 connection: 1 on progress, 0 when blocked, -1 when it was closed. */
int wk_h2_step(struct wk_client *c);
/* Release the HTTP/2 state (its streams' exchanges end as cut). */
void wk_h2_free(struct wk_client *c);
/* Has the connection no stream in progress? */
int wk_h2_idle(const struct wk_client *c);
void wk_h2_stream_timeout(struct wk_h2_stream *st);
/* Run the HTTP/2 connections whose streams' backends had events in this batch: one pass over
 * each connection's streams and one write of all their frames, not one per backend event. */
void wk_h2_run_due(void);
/* The connection's timer expired (idle, or a client not draining): GOAWAY and close. */
void wk_h2_timeout(struct wk_client *c);
/* Idle sessions were deleted: their heap pages go back to the kernel (at most once a second;
 * wk_loop wakes up for it). */
void wk_h2_trim(void);

/* ---- wk_client.c: a client connection's lifetime ------------------------------------------- */
/* PROXY protocol header (PPHDR state) and TLS handshake (TLS state): 1 on progress, 0 when
 * blocked, -1 when the client was closed. */
int wk_client_pphdr(struct wk_client *c);
int wk_client_handshake(struct wk_client *c);
/* Close idle keep-alive clients (graceful stop). */
void wk_close_idle_clients(void);
/* Close every client connection, a request in progress logged as cut for <why> (SHM_CUT_*). */
void wk_close_all_clients(unsigned why);
/* Out of descriptors: close the pooled idle upstream connections (of the current generation's
 * backends) and up to <max_clients> kept-alive clients waiting between requests. Returns how
 * many connections were closed. */
size_t wk_shed_idle(size_t max_clients);

/* ---- wk_debug.c: connections as text, for debug log lines ---------------------------------- */
const char *wk_client_state_name(unsigned state);
/* One line (NUL-terminated, "..." when cut) describing <c>: peer, transport, state and flags,
 * buffers, and while a request is in progress its exchange and upstream. Returns its length. */
size_t wk_client_describe(const struct wk_client *c, char *buf, size_t len);
/* At debug level: "<what>: <description of c>". */
void wk_client_debug(const struct wk_client *c, const char *what);

/* ---- wk_lb.c: backend choice and outcome accounting (balancing, health, circuit breaker) ---- */
/* Why an upstream attempt failed (0 = it succeeded). */
#define WK_FAIL_CONNECT   1 /* connect refused/unreachable: nothing reached the backend */
#define WK_FAIL_RESET     2 /* reset or EOF before any response byte */
#define WK_FAIL_CTIMEOUT  3 /* connect timed out */
#define WK_FAIL_RTIMEOUT  4 /* no (complete) response within response_timeout_ms */
#define WK_FAIL_BAD       5 /* response unparsable or truncated */
#define WK_FAIL_TLS       8 /* TLS handshake with the backend failed (not its certificate) */
#define WK_FAIL_TLSVERIFY 9 /* the backend's certificate failed verification */
/* Refinements of WK_FAIL_RESET that upstream_failed() passes to wk_lb_result() only: */
#define WK_FAIL_ABORT 6 /* RST on a fresh connection before any response byte */
/* reset/EOF on a reused keep-alive connection before any response byte: most likely closed by
 * the backend while idle, which says nothing about its health */
#define WK_FAIL_STALE 7

/* Choose the backend (position within a's service) for the next attempt, skipping positions in
 * a->tried and backends that are down, disabled or whose circuit is open. Returns the position,
 * or -1 with a client-facing reason in <why> (for the 503 message). When the attempt is a
 * backend's one trial request (half-open probe, passive-down retry), WK_AT_PROBE is set in
 * a->flags; wk_lb_result() hands the probe lease back (or it expires by itself). The caller
 * records the choice (a->backend, a->tried, a->tries). */
int wk_lb_pick(struct wk_attempt *a, char *why, size_t whylen);
/* Is there any backend left that a retry could use? */
int wk_lb_can_retry(const struct wk_attempt *a);
/* Record the outcome of the attempt on a->backend: <fail> is a WK_FAIL_* code or 0 for a
 * response with HTTP <status>. Called exactly once per attempt. */
void wk_lb_result(struct wk_attempt *a, int fail, unsigned status);
/* The attempt ends without an outcome (the client went away): give back a probe lease. */
void wk_lb_abort(struct wk_attempt *a);

/* ---- wk_split.c: weighted splits (route `split`, `sticky`) ----------------------------------- */
/* The entry of <e>[0, n) drawn by weight with random bits <rnd>, leaving out the entries whose
 * bit is set in <skip> (and those of weight 0); UINT32_MAX when nothing is left to draw. */
uint32_t wk_split_draw(const struct shm_split *e, uint32_t n, uint32_t skip, uint64_t rnd);
/* The next "name=value" pair of Cookie header value <v>[0, vlen) from <*pos> on (RFC 6265
 * cookie-string, leniently: OWS around ';' and '=', a quoted value unquoted, pairs without '='
 * skipped). Returns 1 with the pair and <*pos> moved past it, or 0 at the end. */
int wk_cookie_next(const char *v, size_t vlen, size_t *pos, const char **name, size_t *nlen,
                   const char **val, size_t *vallen);
/* The entry of split <e>[0, n) (of snapshot <s>) of weight > 0 that a dsp_split cookie of <hd>'s
 * Cookie headers names, or UINT32_MAX; <*seen> says whether any dsp_split cookie came. */
uint32_t wk_split_cookie_entry(const struct shm_snap_hdr *s, const struct shm_split *e, uint32_t n,
                               const struct wk_head *hd, int *seen);
/* Route <r> has a split: choose x's service (x->at.service) for this request from the request
 * head <hd>, and for a sticky split that needs it the Set-Cookie (x->at.set_cookie). */
void wk_split_route(struct wk_xchg *x, const struct shm_route *r, const struct wk_head *hd);
/* Add the Set-Cookie of x's split draw to the response head <rs> about to be relayed. */
void wk_split_set_cookie(struct wk_xchg *x, struct wk_h1_resp *rs);

/* The exchange's routing to route <r>: its service, or for a split the one drawn for this
 * request (head <hd>); inline so that a route without a split pays two stores and a test. */
static inline void wk_route_service(struct wk_xchg *x, const struct shm_route *r,
                                    const struct wk_head *hd)
{
    x->at.service = r->service;
    x->at.set_cookie.len = 0;
    if (r->nsplit > 0) {
        wk_split_route(x, r, hd);
    }
}

/* The response head <rs> about to be relayed: add a sticky split draw's Set-Cookie, if any. */
static inline void wk_split_cookie_out(struct wk_xchg *x, struct wk_h1_resp *rs)
{
    if (x->at.set_cookie.len > 0) {
        wk_split_set_cookie(x, rs);
    }
}

/* ---- wk_hdr.c: pure helpers, unit-tested ----------------------------------------------------- */
/* (struct wk_hdr and struct wk_head: worker/wk_h1.h) */

/* Case-insensitive header-name equality. */
int wk_hdr_is(const struct wk_hdr *h, const char *name, size_t nlen);
/* Is <name> a hop-by-hop header, either by definition or because a Connection header of <head>
 * lists it? (Content-Length is not hop-by-hop but framing; callers handle it.) */
int wk_hdr_hop(const struct wk_head *head, const char *name, size_t nlen);
/* Does a comma-separated header value contain <token> (case-insensitive)? */
int wk_hdr_has_token(const char *v, size_t vlen, const char *token);
/* Is <v> an acceptable client X-Request-ID (1..WK_REQID_MAX bytes of [A-Za-z0-9._:+/=-])? */
int wk_reqid_sane(const char *v, size_t vlen);
/* Generate a 32-hex-char request id into <out> (at least 33 bytes). */
void wk_reqid_new(uint64_t rng[2], char *out);
/* The next 64 random bits of the worker's generator <rng> (xorshift128+: fast, not secret). */
uint64_t wk_rand(uint64_t rng[2]);
/* Is <s> a non-empty RFC 7230 token (header name, method)? */
int wk_token_ok(const char *s, size_t n);
/* Is <s> free of control bytes other than HTAB (header value)? */
int wk_value_ok(const char *s, size_t n);
/* Is <p>[0, n) (the first line, LF excluded) "METHOD SP target SP HTTP/d.d" with optional CR? */
int wk_request_line_ok(const char *p, size_t n);
/* Strict line structure of a parsed request head <p>[0, n) (RFC 9112, CRLF only): the request
 * line ends in CRLF, every field of <hd> starts right after the previous CRLF and is exactly
 * name ":" OWS value OWS CRLF, and a bare CRLF ends the head. With the token/value checks of
 * the names, values and request line this proves the head free of bare CR/LF, NUL and obs-fold,
 * at a cost per field rather than per byte. */
int wk_head_tiled(const char *p, size_t n, const struct wk_head *hd);
/* Is <v> (OWS already trimmed) a valid Host or absolute-form authority: an RFC 3986 reg-name
 * (without the sub-delims ' ( ) , ;), an IPv4 address or an [IPv6] literal, with an optional
 * :port of 1-5 digits up to 65535? No userinfo, no empty host. */
int wk_host_ok(const char *v, size_t n);
/* Parse a Content-Length value (OWS already trimmed): 1-18 digits, nothing else. Returns 1 and
 * the value in *out, or 0. */
int wk_content_length(const char *v, size_t n, uint64_t *out);
/* Transfer-Encoding value check: 1 when every list element is "chunked" and *seen (the count of
 * "chunked" elements over all lines of the message so far) stays at 1; 0 otherwise. */
int wk_te_chunked_only(const char *v, size_t n, int *seen);
/* The reason phrase for a status code ("OK", "Not Found", ...). */
const char *wk_reason(unsigned status);

/* Accept header(s) of a request, as far as generated error bodies care: the q-value the client
 * gives text/html ([0]) and application/json ([1]) through its most specific media range
 * (spec: 3 exact, 2 "type/ *", 1 "* / *", 0 not covered). Zero it, scan every Accept value. */
struct wk_accept {
    int16_t q[2]; /* thousandths */
    int8_t spec[2];
};
void wk_accept_scan(struct wk_accept *a, const char *v, size_t n);
/* Does the client prefer text/html to application/json (strictly: a tie keeps JSON)? */
int wk_accept_html(const struct wk_accept *a);

/* Shared http-parser callbacks that fill a struct wk_head passed as parser->data's head. */
void wk_head_reset(struct wk_head *h);

/* ---- wk_resp.c: response head syntax --------------------------------------------------------- */
/* Is <p>[0, n) a complete response head in strict RFC 9112 form ("HTTP/1.0|1.1 SP 3DIGIT" then SP
 * and a reason or the line end; CRLF line ends only, no bare CR, no control bytes but HTAB; the
 * empty line at the end)? Returns its status code (0-999, not range-checked), or -1. */
int wk_resp_head_syntax(const char *p, size_t n);
/* The status line alone (up to its CRLF), as above; the worker checks the fields per field
 * instead (token and value checks, then wk_head_tiled()), which accepts the same heads. */
int wk_resp_status_line(const char *p, size_t n);

#endif
