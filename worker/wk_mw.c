/* dispatcher: the middleware chain (see wk_mw.h): running the request hooks in order with
 * suspend and resume, the response hooks on a proxied response head, answers with extra
 * fields, edits of the upstream request head, and the per-middleware counters. */
#include "worker/wk_mw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/dsp.h"
#include "common/str.h"
#include "worker/wk_auth.h"
#include "worker/wk_fauth.h"
#include "worker/wk_internal.h"
#include "worker/wk_mw_types.h"

/* Every type's hooks, by SHM_MW_* (a type without a row here passes every request). */
static const struct wk_mw_hooks *const hooks[SHM_MW_NTYPES] = {
    [SHM_MW_HEADERS] = &wk_mw_headers_hooks,
    [SHM_MW_STATIC] = &wk_mw_static_hooks,
    [SHM_MW_IP_ALLOW] = &wk_mw_ip_allow_hooks,
    [SHM_MW_REDIRECT_HTTPS] = &wk_mw_redirect_hooks,
    [SHM_MW_STRIP_PREFIX] = &wk_mw_strip_hooks,
    [SHM_MW_MAX_BODY] = &wk_mw_max_body_hooks,
    [SHM_MW_CORS] = &wk_mw_cors_hooks,
    [SHM_MW_RATE_LIMIT] = &wk_mw_rate_limit_hooks,
    [SHM_MW_BASIC_AUTH] = &wk_mw_basic_auth_hooks,
    [SHM_MW_FORWARD_AUTH] = &wk_mw_forward_auth_hooks,
    [SHM_MW_COMPRESS] = &wk_mw_compress_hooks,
};

static const struct wk_mw_hooks *hooks_of(uint32_t type)
{
    return type < SHM_MW_NTYPES ? hooks[type] : NULL;
}

/* The chain member at <pos> of the request's route. */
static void ctx_at(const struct wk_xchg *x, uint32_t pos, struct wk_mw_ctx *c)
{
    const struct shm_snap_hdr *s = x->at.gen->snap;
    uint32_t n;
    const uint32_t *ids = shm_mw_route_list(s, x->tx->mw.list, &n);

    c->s = s;
    c->pos = pos;
    c->id = ids[pos];
    c->m = &shm_mws(s)[c->id];
    c->params = shm_mw_params(s, c->m);
}

void wk_mw_count(uint32_t rt_slot, int answered)
{
    if (rt_slot < SHM_RT_MAX_MIDDLEWARES) {
        struct shm_rt_mw *m = &wk.rt->mws[rt_slot];
        __atomic_fetch_add(answered ? &m->answered : &m->passed, 1, __ATOMIC_RELAXED);
    }
}

/* ---- the request side ---------------------------------------------------------------- */
/* Build the upstream head from the edited request: edits go to the text from here on. 0, or
 * WK_MW_DONE (431 answered) / WK_MW_CLOSED. */
static int build_head(struct wk_xchg *x)
{
    struct wk_h1_req *rq = x->tx->mw.rq;
    int r;

    if (rq == NULL) {
        return 0;
    }
    x->tx->mw.rq = NULL;
    r = wk_xchg_build(x, rq);
    return r == 0 ? 0 : r > 0 ? WK_MW_DONE : WK_MW_CLOSED;
}

/* Run the chain from x->tx->mw.pos on. */
static int run_from(struct wk_xchg *x)
{
    struct wk_mw_txn *mt = &x->tx->mw;

    while (mt->pos < mt->n) {
        struct wk_mw_ctx c;
        const struct wk_mw_hooks *h;
        int r = WK_MW_PASS;

        ctx_at(x, mt->pos, &c);
        h = hooks_of(c.m->type);
        if (h != NULL && h->needs_head && (r = build_head(x)) != 0) {
            return r;
        }
        if (h != NULL && h->request != NULL) {
            r = h->request(x, &c);
        }
        if (h != NULL && h->end != NULL) {
            mt->flags |= WK_MW_F_END;
        }
        if (r == WK_MW_WAIT && mt->rq != NULL) {
            /* (Suspended: the parsed request does not outlive this call.) */
            int b = build_head(x);
            if (b != 0) {
                if (h->cancel != NULL) {
                    h->cancel(x, &c);
                }
                mt->wait = NULL;
                return b;
            }
        }
        switch (r) {
        case WK_MW_PASS:
            mt->passed |= 1u << mt->pos;
            wk_mw_count(c.m->rt_slot, 0);
            mt->pos++;
            break;
        case WK_MW_WAIT:
            mt->flags |= WK_MW_F_WAIT;
            x->ops->rearm(x); /* the service's response_timeout_ms bounds the wait */
            return WK_MW_WAIT;
        case WK_MW_DONE:
            if (mt->answered == 0) {
                mt->answered = c.id + 1;
                wk_mw_count(c.m->rt_slot, 1);
            }
            return WK_MW_DONE;
        default:
            return WK_MW_CLOSED;
        }
    }
    mt->flags |= WK_MW_F_REQ_DONE;
    return WK_MW_PASS;
}

int wk_mw_forward(struct wk_xchg *x, const struct wk_h1_req *rq)
{
    int r;

    /* The chain edits the parsed request until a hook needs the head built or suspends; a
     * "/"-less target with a query (absolute-form) is edited as built text. */
    if (rq->slash && rq->tlen > 0) {
        if ((r = wk_xchg_build(x, rq)) != 0) {
            return r;
        }
    } else {
        x->tx->mw.rq = (struct wk_h1_req *)(uintptr_t)rq;
    }
    r = wk_mw_request(x);
    if (r == WK_MW_PASS && x->tx->mw.rq != NULL) {
        x->tx->mw.rq = NULL;
        return wk_xchg_build(x, rq);
    }
    x->tx->mw.rq = NULL;
    return r == WK_MW_PASS ? 0 : r == WK_MW_CLOSED ? -1 : 1;
}

int wk_mw_request(struct wk_xchg *x)
{
    struct wk_mw_txn *mt = &x->tx->mw;
    uint32_t n;

    shm_mw_route_list(x->at.gen->snap, mt->list, &n);
    mt->n = (uint8_t)n;
    mt->pos = 0;
    return run_from(x);
}

int wk_mw_resume(struct wk_xchg *x, int verdict)
{
    struct wk_mw_txn *mt = &x->tx->mw;
    struct wk_mw_ctx c;
    int r;

    if (!(mt->flags & WK_MW_F_WAIT)) {
        return 0;
    }
    mt->flags &= (uint8_t)~WK_MW_F_WAIT;
    mt->wait = NULL;
    ctx_at(x, mt->pos, &c);
    if (verdict == WK_MW_CLOSED) {
        return -1;
    }
    if (verdict == WK_MW_DONE) {
        if (mt->answered == 0) {
            mt->answered = c.id + 1;
            wk_mw_count(c.m->rt_slot, 1);
        }
        x->ops->wake(x);
        return 0;
    }
    mt->passed |= 1u << mt->pos;
    wk_mw_count(c.m->rt_slot, 0);
    mt->pos++;
    r = run_from(x);
    if (r == WK_MW_CLOSED) {
        return -1;
    }
    if (r == WK_MW_PASS && wk_xchg_start(x) != 0) {
        return -1;
    }
    if (r != WK_MW_WAIT) {
        x->ops->wake(x);
    }
    return 0;
}

int wk_mw_expired(struct wk_xchg *x)
{
    struct wk_mw_txn *mt = &x->tx->mw;
    struct wk_mw_ctx c;
    const struct wk_mw_hooks *h;
    char msg[256];

    ctx_at(x, mt->pos, &c);
    h = hooks_of(c.m->type);
    mt->flags &= (uint8_t)~WK_MW_F_WAIT;
    if (h != NULL && h->cancel != NULL) {
        h->cancel(x, &c);
    }
    mt->wait = NULL;
    snprintf(msg, sizeof(msg), "Middleware %s did not decide in time", shm_mw_s(c.s, c.m->name));
    return wk_xchg_error(x, 504, "Gateway timeout", msg, 1);
}

void wk_mw_end(struct wk_xchg *x)
{
    struct wk_mw_txn *mt = &x->tx->mw;

    if ((mt->flags & (WK_MW_F_WAIT | WK_MW_F_END)) && mt->n > 0 && x->at.gen != NULL) {
        if (mt->flags & WK_MW_F_WAIT) {
            struct wk_mw_ctx c;
            const struct wk_mw_hooks *h;
            ctx_at(x, mt->pos, &c);
            h = hooks_of(c.m->type);
            mt->flags &= (uint8_t)~WK_MW_F_WAIT;
            if (h != NULL && h->cancel != NULL) {
                h->cancel(x, &c);
            }
        }
        for (uint32_t i = 0; i < mt->n; i++) {
            struct wk_mw_ctx c;
            const struct wk_mw_hooks *h;
            ctx_at(x, i, &c);
            h = hooks_of(c.m->type);
            if (h != NULL && h->end != NULL) {
                h->end(x, &c);
            }
        }
    }
    if (mt->xh != NULL) {
        free(mt->xh);
        mt->xh = NULL;
        mt->xh_len = mt->xh_cap = 0;
    }
    mt->list = 0; /* (the transaction is zeroed when it is taken again) */
}

int wk_mw_body_over(struct wk_xchg *x, uint64_t total)
{
    struct wk_mw_txn *mt = &x->tx->mw;

    if (mt->max_body == 0 || total <= mt->max_body) {
        return 0;
    }
    if (mt->answered == 0 && mt->max_body_id != 0) {
        /* It let the head through (counted as passed): now it answers instead. */
        uint32_t slot = shm_mws(x->at.gen->snap)[mt->max_body_id - 1].rt_slot;
        mt->answered = mt->max_body_id;
        wk_mw_count(slot, 1);
        if (slot < SHM_RT_MAX_MIDDLEWARES) {
            __atomic_fetch_sub(&wk.rt->mws[slot].passed, 1, __ATOMIC_RELAXED);
        }
    }
    wk_mw_decorate(x);
    return wk_xchg_error(x, 413, "Payload too large", "Request body exceeds the route's limit",
                         1) == 0
               ? 1
               : -1;
}

int wk_mw_xh_next(struct wk_xchg *x, size_t *at, char **name, size_t *nlen, const char **v,
                  size_t *vlen)
{
    struct wk_mw_txn *mt = &x->tx->mw;
    char *p, *colon, *nl;

    if (*at >= mt->xh_len) {
        return 0;
    }
    p = mt->xh + *at;
    colon = memchr(p, ':', mt->xh_len - *at);
    nl = memchr(p, '\n', mt->xh_len - *at);
    if (colon == NULL || nl == NULL || colon > nl) {
        *at = mt->xh_len;
        return 0;
    }
    *name = p;
    *nlen = (size_t)(colon - p);
    *v = colon + 2;
    *vlen = (size_t)(nl - 1 - (colon + 2));
    *at = (size_t)(nl + 1 - mt->xh);
    return 1;
}

const char *wk_mw_answered(const struct wk_xchg *x, size_t *len)
{
    const struct shm_mw *m;

    if (x->tx == NULL || x->tx->mw.answered == 0 || x->at.gen == NULL) {
        return NULL;
    }
    m = &shm_mws(x->at.gen->snap)[x->tx->mw.answered - 1];
    *len = m->name.len;
    return shm_mw_s(x->at.gen->snap, m->name);
}

/* ---- the response side ---------------------------------------------------------------------- */
int wk_mw_response(struct wk_xchg *x, struct wk_h1_resp *rs)
{
    struct wk_mw_txn *mt = &x->tx->mw;

    for (uint32_t i = mt->n; i-- > 0;) {
        struct wk_mw_ctx c;
        const struct wk_mw_hooks *h;

        if (!(mt->passed & (1u << i))) {
            continue;
        }
        ctx_at(x, i, &c);
        h = hooks_of(c.m->type);
        if (h != NULL && h->response != NULL && h->response(x, &c, rs) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ---- answers -------------------------------------------------------------------------------- */
int wk_mw_hdr(struct wk_xchg *x, const char *name, const char *value, size_t vlen)
{
    struct wk_mw_txn *mt = &x->tx->mw;
    size_t nlen = strlen(name), need = nlen + vlen + 4;

    if (mt->xh_len + need > mt->xh_cap) {
        uint32_t cap = (uint32_t)DSP_MAX(256u, 2 * (mt->xh_len + need));
        char *p = realloc(mt->xh, cap);
        if (p == NULL || cap > 8192) {
            if (p != NULL) {
                mt->xh = p;
            }
            return -1;
        }
        mt->xh = p;
        mt->xh_cap = cap;
    }
    memcpy(mt->xh + mt->xh_len, name, nlen);
    memcpy(mt->xh + mt->xh_len + nlen, ": ", 2);
    memcpy(mt->xh + mt->xh_len + nlen + 2, value, vlen);
    memcpy(mt->xh + mt->xh_len + nlen + 2 + vlen, "\r\n", 2);
    mt->xh_len += (uint32_t)need;
    return 0;
}

/* The answer hooks of the middlewares that let the request through before the one answering,
 * outermost last (a 401 or 429 behind cors or headers still carries their fields). */
void wk_mw_decorate(struct wk_xchg *x)
{
    struct wk_mw_txn *mt = &x->tx->mw;

    if (mt->flags & WK_MW_F_DECO) {
        return;
    }
    mt->flags |= WK_MW_F_DECO;
    for (uint32_t i = mt->n; i-- > 0;) {
        struct wk_mw_ctx c;
        const struct wk_mw_hooks *h;

        if (!(mt->passed & (1u << i))) {
            continue;
        }
        ctx_at(x, i, &c);
        h = hooks_of(c.m->type);
        if (h != NULL && h->answer != NULL) {
            h->answer(x, &c);
        }
    }
}

int wk_mw_reply(struct wk_xchg *x, unsigned status, const char *ctype, const char *body,
                size_t blen)
{
    wk_mw_decorate(x);
    if (status == 204 || status == 304) {
        blen = 0; /* (they have no body, whatever was given) */
    }
    return wk_xchg_reply_as(x, status, ctype, body, blen, 0) == 0 ? WK_MW_DONE : WK_MW_CLOSED;
}

int wk_mw_error(struct wk_xchg *x, unsigned status, const char *error, const char *msg)
{
    wk_mw_decorate(x);
    return wk_xchg_error(x, status, error, msg, 0) == 0 ? WK_MW_DONE : WK_MW_CLOSED;
}

/* ---- the upstream request head (x->tx->uout: request line, fields, blank line) --------------- */
/* The field lines of the head: [*first, *end) where *end is the blank line's start. */
static void head_fields(const struct wk_xchg *x, size_t *first, size_t *end)
{
    const char *p = x->tx->uout.data;
    const char *nl = memchr(p, '\n', x->tx->uout.end);

    *first = nl != NULL ? (size_t)(nl - p) + 1 : x->tx->uout.end;
    *end = x->tx->uout.end >= 2 ? x->tx->uout.end - 2 : 0;
}

/* Is the line at <p> (up to its CRLF) the field <name>? Its value then in *v, *vlen. */
static int line_is(const char *p, size_t len, const char *name, size_t nlen, const char **v,
                   size_t *vlen)
{
    size_t e = len;

    if (len <= nlen || p[nlen] != ':' || strncasecmp(p, name, nlen) != 0) {
        return 0;
    }
    p += nlen + 1;
    e -= nlen + 1;
    while (e > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        e--;
    }
    while (e > 0 && (p[e - 1] == ' ' || p[e - 1] == '\t')) {
        e--;
    }
    *v = p;
    *vlen = e;
    return 1;
}

/* Is field <h> named <name> (<nlen> bytes)? (The length first: most fields differ there.) */
static inline int hdr_is(const struct wk_hdr *h, const char *name, size_t nlen)
{
    return h->nlen == nlen && strncasecmp(h->name, name, nlen) == 0;
}

int wk_mw_req_get(const struct wk_xchg *x, const char *name, const char **v, size_t *vlen)
{
    const char *p = x->tx->uout.data;
    size_t at, end, nlen = strlen(name);

    if (x->tx->mw.rq != NULL) {
        const struct wk_head *hd = &x->tx->mw.rq->hd;
        for (uint32_t i = 0; i < hd->n; i++) {
            if (hdr_is(&hd->h[i], name, nlen)) {
                *v = hd->h[i].value;
                *vlen = hd->h[i].vlen;
                return 1;
            }
        }
        return 0;
    }
    if (p == NULL) {
        return 0;
    }
    head_fields(x, &at, &end);
    while (at < end) {
        const char *nl = memchr(p + at, '\n', end - at);
        size_t le = nl != NULL ? (size_t)(nl - p) : end;
        if (line_is(p + at, le - at - (le > at && p[le - 1] == '\r'), name, nlen, v, vlen)) {
            return 1;
        }
        at = le + 1;
    }
    return 0;
}

int wk_mw_req_remove(struct wk_xchg *x, const char *name)
{
    char *p = x->tx->uout.data;
    size_t at, end, nlen = strlen(name);
    int n = 0;

    if (x->tx->mw.rq != NULL) {
        struct wk_head *hd = &x->tx->mw.rq->hd;
        uint32_t w = 0;
        for (uint32_t i = 0; i < hd->n; i++) {
            if (!hdr_is(&hd->h[i], name, nlen)) {
                hd->h[w++] = hd->h[i];
            }
        }
        n = (int)(hd->n - w);
        hd->n = w;
        return n;
    }
    head_fields(x, &at, &end);
    while (at < end) {
        const char *nl = memchr(p + at, '\n', end - at);
        size_t le = nl != NULL ? (size_t)(nl - p) : end;
        const char *v;
        size_t vl;

        if (line_is(p + at, le - at - (le > at && p[le - 1] == '\r'), name, nlen, &v, &vl)) {
            size_t cut = le + 1 - at;
            memmove(p + at, p + le + 1, x->tx->uout.end - (le + 1));
            x->tx->uout.end -= (uint32_t)cut;
            end -= cut;
            n++;
            continue;
        }
        at = le + 1;
    }
    return n;
}

int wk_mw_req_add(struct wk_xchg *x, const char *name, size_t nlen, const char *v, size_t vlen)
{
    char *p = x->tx->uout.data;
    size_t need = nlen + vlen + 4, at = x->tx->uout.end - 2;

    if (x->tx->mw.rq != NULL) {
        struct wk_head *hd = &x->tx->mw.rq->hd;
        struct wk_hdr *h;
        if (hd->n >= WK_MAX_HEADERS) {
            return -1;
        }
        h = &hd->h[hd->n++];
        h->name = name;
        h->nlen = (uint32_t)nlen;
        h->value = v;
        h->vlen = (uint32_t)vlen;
        return 0;
    }
    if (x->tx->uout.end + need > x->tx->uout.cap) {
        return -1;
    }
    memmove(p + at + need, p + at, 2);
    memcpy(p + at, name, nlen);
    memcpy(p + at + nlen, ": ", 2);
    memcpy(p + at + nlen + 2, v, vlen);
    memcpy(p + at + nlen + 2 + vlen, "\r\n", 2);
    x->tx->uout.end += (uint32_t)need;
    return 0;
}

int wk_mw_req_set(struct wk_xchg *x, const char *name, const char *v, size_t vlen)
{
    wk_mw_req_remove(x, name);
    return wk_mw_req_add(x, name, strlen(name), v, vlen);
}

/* The request line's target: [*a, *b) in uout. */
static int target_span(const struct wk_xchg *x, size_t *a, size_t *b)
{
    const char *p = x->tx->uout.data;
    const char *nl = memchr(p, '\n', x->tx->uout.end);
    const char *sp1, *sp2;

    if (nl == NULL || (sp1 = memchr(p, ' ', (size_t)(nl - p))) == NULL) {
        return -1;
    }
    sp2 = memchr(sp1 + 1, ' ', (size_t)(nl - sp1 - 1));
    if (sp2 == NULL) {
        return -1;
    }
    *a = (size_t)(sp1 + 1 - p);
    *b = (size_t)(sp2 - p);
    return 0;
}

int wk_mw_req_host(const struct wk_xchg *x, const char **h, size_t *hlen)
{
    if (x->tx->mw.rq != NULL) {
        *h = x->tx->mw.rq->host;
        *hlen = x->tx->mw.rq->host != NULL ? x->tx->mw.rq->hostlen : 0;
        return *h != NULL && *hlen > 0;
    }
    return wk_mw_req_get(x, "host", h, hlen) && *hlen > 0;
}

void wk_mw_req_target(const struct wk_xchg *x, const char **t, size_t *tlen)
{
    size_t a, b;

    if (x->tx->mw.rq != NULL) {
        /* (wk_xchg_forward() never leaves a "/"-less target with a query to this mode) */
        const struct wk_h1_req *rq = x->tx->mw.rq;
        *t = rq->slash ? "/" : rq->target;
        *tlen = rq->slash ? 1 : rq->tlen;
        return;
    }
    if (x->tx->uout.data == NULL || target_span(x, &a, &b) != 0) {
        *t = "/";
        *tlen = 1;
        return;
    }
    *t = x->tx->uout.data + a;
    *tlen = b - a;
}

int wk_mw_req_set_target(struct wk_xchg *x, const char *t, size_t tlen)
{
    char *p = x->tx->uout.data;
    size_t a, b, old;

    if (x->tx->mw.rq != NULL) {
        x->tx->mw.rq->target = t;
        x->tx->mw.rq->tlen = tlen;
        x->tx->mw.rq->slash = 0;
        return 0;
    }
    if (target_span(x, &a, &b) != 0) {
        return -1;
    }
    old = b - a;
    if (tlen > old && x->tx->uout.end + (tlen - old) > x->tx->uout.cap) {
        return -1;
    }
    if (tlen <= old) {
        /* <t> may lie inside the old target (a stripped prefix): it moves left first. */
        memmove(p + a, t, tlen);
        memmove(p + a + tlen, p + b, x->tx->uout.end - b);
    } else {
        memmove(p + a + tlen, p + b, x->tx->uout.end - b);
        memmove(p + a, t, tlen);
    }
    x->tx->uout.end = (uint32_t)(x->tx->uout.end + tlen - old);
    return 0;
}

/* ---- response head edits -------------------------------------------------------------------- */
const struct wk_hdr *wk_mw_resp_get(const struct wk_h1_resp *rs, const char *name)
{
    size_t nlen = strlen(name);

    for (uint32_t i = 0; i < rs->hd.n; i++) {
        if (hdr_is(&rs->hd.h[i], name, nlen)) {
            return &rs->hd.h[i];
        }
    }
    return NULL;
}

void wk_mw_resp_remove(struct wk_h1_resp *rs, const char *name)
{
    size_t nlen = strlen(name);
    uint32_t w = 0;

    for (uint32_t i = 0; i < rs->hd.n; i++) {
        if (!hdr_is(&rs->hd.h[i], name, nlen)) {
            rs->hd.h[w++] = rs->hd.h[i];
        }
    }
    rs->hd.n = w;
}

int wk_mw_resp_add(struct wk_h1_resp *rs, const char *name, size_t nlen, const char *v, size_t vlen)
{
    struct wk_hdr *h;

    if (rs->hd.n >= WK_MAX_HEADERS) {
        return -1;
    }
    h = &rs->hd.h[rs->hd.n++];
    h->name = name;
    h->nlen = (uint32_t)nlen;
    h->value = v;
    h->vlen = (uint32_t)vlen;
    return 0;
}

int wk_mw_resp_set(struct wk_h1_resp *rs, const char *name, size_t nlen, const char *v, size_t vlen)
{
    uint32_t w = 0;

    for (uint32_t i = 0; i < rs->hd.n; i++) {
        if (!hdr_is(&rs->hd.h[i], name, nlen)) {
            rs->hd.h[w++] = rs->hd.h[i];
        }
    }
    rs->hd.n = w;
    return wk_mw_resp_add(rs, name, nlen, v, vlen);
}

/* ---- the client ----------------------------------------------------------------------------- */
static int prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits)
{
    unsigned bytes = bits / 8, rest = bits % 8;

    if (memcmp(a, b, bytes) != 0) {
        return 0;
    }
    return rest == 0 || ((a[bytes] ^ b[bytes]) & (uint8_t)(0xffu << (8 - rest))) == 0;
}

int wk_mw_client_in(const struct wk_xchg *x, const struct shm_cidr *c, uint32_t n)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t fam = x->at.client_family;
    const uint8_t *ip = x->at.client_ip;

    if (fam == 0) {
        fam = x->peer->family;
        ip = x->peer->ip;
    }
    if (fam == AF_INET6 && memcmp(ip, mapped, 12) == 0) {
        fam = AF_INET; /* ::ffff:a.b.c.d is a.b.c.d */
        ip += 12;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (c[i].family == fam && c[i].prefix <= (fam == AF_INET ? 32 : 128) &&
            prefix_match(ip, c[i].addr, c[i].prefix)) {
            return 1;
        }
    }
    return 0;
}
