/* dispatcher: the middleware chain in the worker (worker/wk_mw.c). A routed request whose route
 * names middlewares runs them in order once its upstream head is built and before a backend is
 * picked; each may pass, answer by itself, rewrite the request (fields and target of the
 * upstream head), or suspend the request and resume it later from an event. The response head
 * of a proxied response then goes through the response hooks of the middlewares that passed
 * (last first, as nested handlers would), which may edit its fields. A route without
 * middlewares pays one branch.
 *
 * Adding a type: a row in hooks[] (wk_mw.c) with the type's functions (in its own file), plus
 * its master side (master/ms_mw.h). */
#ifndef DSP_WK_MW_H
#define DSP_WK_MW_H

#include <stddef.h>
#include <stdint.h>

#include "shm/shm_mw.h"

struct wk_xchg;
struct wk_h1_req;
struct wk_h1_resp;

/* What a request hook returns (and what wk_mw_resume() takes). */
#define WK_MW_PASS   0  /* go on with the next middleware (then the backend) */
#define WK_MW_DONE   1  /* the hook answered (wk_mw_reply*(): queued) */
#define WK_MW_WAIT   2  /* suspended: the hook continues it with wk_mw_resume() */
#define WK_MW_CLOSED -1 /* the client was closed (a wk_xchg_* call returned -1) */

/* One middleware of the chain, as its hooks see it. */
struct wk_mw_ctx {
    const struct shm_snap_hdr *s;
    const struct shm_mw *m;
    const void *params; /* its parameter block (shm/shm_mw.h) */
    uint32_t id;        /* index in the snapshot's middleware table */
    uint32_t pos;       /* position in the route's chain */
};

struct wk_mw_hooks {
    /* The request hook reads the built upstream head (x->tx->uout), or may suspend: the head
     * is built before it runs. Hooks without it edit the parsed request when they run before
     * any such hook (cheaper: no text to scan); the edit functions below work either way. */
    uint8_t needs_head;
    /* The request, after routing: WK_MW_*. */
    int (*request)(struct wk_xchg *x, const struct wk_mw_ctx *c);
    /* The response head of a proxied response (its fields editable with wk_mw_resp_*()); runs
     * only for middlewares whose request hook passed. 0, or -1 to fail the response (502). */
    int (*response)(struct wk_xchg *x, const struct wk_mw_ctx *c, struct wk_h1_resp *rs);
    /* The request ends while this middleware's request hook is suspended (client gone, timer):
     * free what it holds for it (x->tx->mw.wait) and stop its work. */
    void (*cancel)(struct wk_xchg *x, const struct wk_mw_ctx *c);
    /* The request is over (any way): free per-request state it keeps (x->tx->mw.state). */
    void (*end)(struct wk_xchg *x, const struct wk_mw_ctx *c);
    /* A middleware after this one (which passed) answers by itself (wk_mw_reply/wk_mw_error):
     * add the fields this one puts on responses with wk_mw_hdr() (CORS, security fields), as
     * the response hook does on a proxied response. */
    void (*answer)(struct wk_xchg *x, const struct wk_mw_ctx *c);
};

#define WK_MW_F_WAIT     0x01u /* a request hook is suspended at position pos */
#define WK_MW_F_REQ_DONE 0x04u /* the request side has run through */
#define WK_MW_F_END      0x08u /* some middleware of the chain has an end hook */
#define WK_MW_F_DECO     0x10u /* the answer hooks ran (wk_mw_decorate) */

/* The chain's state, in the request's transaction (zero for a route without middlewares). */
struct wk_mw_txn {
    uint32_t list; /* the route's list (region offset); 0 = no middlewares */
    uint8_t n;     /* chain length */
    uint8_t pos;   /* the middleware running (or suspended) */
    uint8_t flags; /* WK_MW_F_* */
    uint8_t pad0;
    uint32_t answered;    /* id + 1 of the middleware that answered, 0: none */
    uint32_t passed;      /* bit per chain position: passed (its response hook runs) */
    uint64_t max_body;    /* the smallest max_body of the chain (0: none) */
    uint32_t max_body_id; /* id + 1 of the middleware that set it */
    uint32_t pad;
    char *xh; /* extra fields for an answer: "Name: value\r\n" lines (heap) */
    uint32_t xh_len, xh_cap;
    void *wait;           /* the suspended hook's own state */
    void *state;          /* a hook's own per-request state (freed by its end hook) */
    struct wk_h1_req *rq; /* while the head is not built yet: the parsed request the edits go
                             to (its fields and target); NULL once uout holds the head */
    /* rate_limit (worker/wk_rl.c): the tightest bucket's figures for the response fields */
    uint32_t rl_remaining, rl_reset;
    uint8_t rl_set;
    char rl_buf[23]; /* their text, once written into a response head */
};

/* Exchange side: called by wk_xchg.c / the client sides. */
/* wk_xchg_forward() of a route with middlewares: run the chain on <rq> and build the upstream
 * head. 0 to go on to a backend, 1 when answered or suspended, -1 when the client was closed. */
int wk_mw_forward(struct wk_xchg *x, const struct wk_h1_req *rq);
/* Run the chain from its start: WK_MW_PASS (go on to the backend), WK_MW_DONE, WK_MW_WAIT or
 * WK_MW_CLOSED. */
int wk_mw_request(struct wk_xchg *x);
/* Continue a suspended chain: <verdict> is what the suspended hook decided (WK_MW_PASS, or
 * WK_MW_DONE after answering). Then the next middlewares run and the request goes on to a
 * backend. Returns 0, or -1 when the client was closed. */
int wk_mw_resume(struct wk_xchg *x, int verdict);
/* The response head of a proxied response: 0, or -1 (fail the attempt as a bad response). */
int wk_mw_response(struct wk_xchg *x, struct wk_h1_resp *rs);
/* The client side's timer expired while a hook is suspended: 504. */
int wk_mw_expired(struct wk_xchg *x);
/* The request ends: cancel a suspended hook, free per-request state. */
void wk_mw_end(struct wk_xchg *x);
/* The request body has reached <total> bytes: over a max_body middleware's limit, answer 413
 * (and close). 0 when within, 1 when answered, -1 when the client was closed. */
int wk_mw_body_over(struct wk_xchg *x, uint64_t total);
/* The extra fields of the answer (wk_mw_hdr()) one by one, from *at = 0: 1 and the field, or 0
 * at the end. Names may be lower-cased in place (HTTP/2). */
int wk_mw_xh_next(struct wk_xchg *x, size_t *at, char **name, size_t *nlen, const char **v,
                  size_t *vlen);
/* The answer hooks of the middlewares that let the request through (once): an answer a later
 * middleware or the exchange gives (401, 429, 502) carries their response fields. */
void wk_mw_decorate(struct wk_xchg *x);
/* The name of the middleware that answered (for the access log), or NULL. */
const char *wk_mw_answered(const struct wk_xchg *x, size_t *len);

/* ---- for hooks ------------------------------------------------------------------------------ */
/* Answer with <status> and <body> of type <ctype> (a static page, a redirect), the extra
 * fields added with wk_mw_hdr() included: WK_MW_DONE, or WK_MW_CLOSED. */
int wk_mw_reply(struct wk_xchg *x, unsigned status, const char *ctype, const char *body,
                size_t blen);
/* Answer with the SPEC's JSON error body {"error": <error>, "message": <msg>}. */
int wk_mw_error(struct wk_xchg *x, unsigned status, const char *error, const char *msg);
/* Add a field to the answer about to be given (WWW-Authenticate, Retry-After, Location). 0, or
 * -1 (no memory: the answer goes without it). */
int wk_mw_hdr(struct wk_xchg *x, const char *name, const char *value, size_t vlen);

/* The request as it goes upstream (the built head): a field's first value, the target. */
int wk_mw_req_get(const struct wk_xchg *x, const char *name, const char **v, size_t *vlen);
void wk_mw_req_target(const struct wk_xchg *x, const char **t, size_t *tlen);
/* The Host the request goes upstream with (HTTP/2: the :authority; absolute-form: its
 * authority): 1, or 0 when it has none (HTTP/1.0). */
int wk_mw_req_host(const struct wk_xchg *x, const char **h, size_t *hlen);
/* Edits: remove every field <name>; set (remove, then add); add; replace the target. 0, or -1
 * when the head would not fit its buffer (the request is then answered 431 by the caller).
 * Before the head is built (x->tx->mw.rq set), names, values and targets are kept by pointer
 * until it is: snapshot strings, the request's own bytes, or memory of the transaction. The
 * dispatcher's own fields (X-Forwarded-*, X-Real-IP, X-Request-ID) are written by the builder
 * whatever the edits say. */
int wk_mw_req_remove(struct wk_xchg *x, const char *name);
int wk_mw_req_set(struct wk_xchg *x, const char *name, const char *v, size_t vlen);
int wk_mw_req_add(struct wk_xchg *x, const char *name, size_t nlen, const char *v, size_t vlen);
/* (<t> may point into the current target only when it is not longer.) */
int wk_mw_req_set_target(struct wk_xchg *x, const char *t, size_t tlen);

/* Response head edits (in a response hook). Values must outlive the hook: snapshot strings,
 * the request head, or wk_mw_scratch(). 0, or -1 (too many fields). */
void wk_mw_resp_remove(struct wk_h1_resp *rs, const char *name);
int wk_mw_resp_set(struct wk_h1_resp *rs, const char *name, size_t nlen, const char *v,
                   size_t vlen);
int wk_mw_resp_add(struct wk_h1_resp *rs, const char *name, size_t nlen, const char *v,
                   size_t vlen);
const struct wk_hdr *wk_mw_resp_get(const struct wk_h1_resp *rs, const char *name);

/* Is the request's client (x->at: the PROXY source or the trusted X-Forwarded-For entry) in
 * one of <n> CIDR blocks? */
int wk_mw_client_in(const struct wk_xchg *x, const struct shm_cidr *c, uint32_t n);

/* Counters of the middleware in slot <rt_slot>. */
void wk_mw_count(uint32_t rt_slot, int answered);

#endif
