/* dispatcher: the built-in middleware types' worker hooks: headers, static, ip_allow,
 * redirect_https, strip_prefix, max_body, cors (parameters: shm/shm_mw.h). */
#include "worker/wk_mw_types.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "worker/wk_internal.h"

/* ---- headers -------------------------------------------------------------------------------- */
/* Is <h> one of the <n> names <l>? (Lengths first.) */
static int named_in(const struct wk_mw_ctx *c, const struct wk_hdr *h, const struct shm_str *l,
                    uint32_t n)
{
    for (uint32_t k = 0; k < n; k++) {
        if (l[k].len == h->nlen && strncasecmp(shm_mw_s(c->s, l[k]), h->name, h->nlen) == 0) {
            return 1;
        }
    }
    return 0;
}

/* One pass over <hd>: drop the fields named in <rml> or <snl>, then add <snl>: <svl>. 0, or -1
 * when the fields do not fit. */
static int edit_fields(const struct wk_mw_ctx *c, struct wk_head *hd, uint64_t mask,
                       struct shm_mw_list rml, struct shm_mw_list snl, struct shm_mw_list svl)
{
    const struct shm_str *rm = shm_mw_list_at(c->s, rml);
    const struct shm_str *sn = shm_mw_list_at(c->s, snl);
    const struct shm_str *sv = shm_mw_list_at(c->s, svl);
    uint32_t w = 0;

    if (rml.n + snl.n == 0) {
        return 0;
    }
    for (uint32_t i = 0; i < hd->n; i++) {
        if (!((mask >> (hd->h[i].nlen % 64)) & 1) ||
            (!named_in(c, &hd->h[i], rm, rml.n) && !named_in(c, &hd->h[i], sn, snl.n))) {
            if (w != i) {
                hd->h[w] = hd->h[i];
            }
            w++;
        }
    }
    hd->n = w;
    for (uint32_t i = 0; i < snl.n; i++) {
        struct wk_hdr *h;
        if (hd->n >= WK_MAX_HEADERS) {
            return -1;
        }
        h = &hd->h[hd->n++];
        h->name = shm_mw_s(c->s, sn[i]);
        h->nlen = sn[i].len;
        h->value = shm_mw_s(c->s, sv[i]);
        h->vlen = sv[i].len;
    }
    return 0;
}

static int headers_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_headers *p = c->params;
    const struct shm_str *rm = shm_mw_list_at(c->s, p->req_remove);
    const struct shm_str *sn = shm_mw_list_at(c->s, p->req_set_names);
    const struct shm_str *sv = shm_mw_list_at(c->s, p->req_set_values);

    if (x->tx->mw.rq != NULL) {
        /* The parsed request: one pass. */
        if (edit_fields(c, &x->tx->mw.rq->hd, p->len_mask[0], p->req_remove, p->req_set_names,
                        p->req_set_values) != 0) {
            return wk_mw_error(x, 431, "Request header fields too large",
                               "Too many request header fields to forward");
        }
        return WK_MW_PASS;
    }
    for (uint32_t i = 0; i < p->req_remove.n; i++) {
        wk_mw_req_remove(x, shm_mw_s(c->s, rm[i]));
    }
    for (uint32_t i = 0; i < p->req_set_names.n; i++) {
        if (wk_mw_req_set(x, shm_mw_s(c->s, sn[i]), shm_mw_s(c->s, sv[i]), sv[i].len) != 0) {
            return wk_mw_error(x, 431, "Request header fields too large",
                               "Request head too large to forward");
        }
    }
    return WK_MW_PASS;
}

static int headers_response(struct wk_xchg *x, const struct wk_mw_ctx *c, struct wk_h1_resp *rs)
{
    const struct shm_mw_headers *p = c->params;

    (void)x;
    /* (No room for one more field: the response goes without it.) */
    edit_fields(c, &rs->hd, p->len_mask[1], p->resp_remove, p->resp_set_names, p->resp_set_values);
    return 0;
}

/* A later middleware's answer gets the response fields set (there is nothing to remove). */
static void headers_answer(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_headers *p = c->params;
    const struct shm_str *sn = shm_mw_list_at(c->s, p->resp_set_names);
    const struct shm_str *sv = shm_mw_list_at(c->s, p->resp_set_values);

    for (uint32_t i = 0; i < p->resp_set_names.n; i++) {
        wk_mw_hdr(x, shm_mw_s(c->s, sn[i]), shm_mw_s(c->s, sv[i]), sv[i].len);
    }
}

const struct wk_mw_hooks wk_mw_headers_hooks = {.request = headers_request,
                                                .response = headers_response,
                                                .answer = headers_answer};

/* ---- static --------------------------------------------------------------------------------- */
static int static_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_static *p = c->params;

    return wk_mw_reply(x, p->status, shm_mw_s(c->s, p->content_type), shm_mw_s(c->s, p->body),
                       p->body.len);
}

const struct wk_mw_hooks wk_mw_static_hooks = {.request = static_request};

/* ---- ip_allow ------------------------------------------------------------------------------- */
static int ip_allow_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_ip_allow *p = c->params;
    const struct shm_cidr *cidrs = (const struct shm_cidr *)(const void *)(shm_mw_base(c->s) +
                                                                           p->cidrs_off);

    if (wk_mw_client_in(x, cidrs, p->ncidrs)) {
        return WK_MW_PASS;
    }
    return wk_mw_error(x, 403, "Forbidden", "Access from this address is not allowed");
}

const struct wk_mw_hooks wk_mw_ip_allow_hooks = {.request = ip_allow_request};

/* ---- redirect_https ------------------------------------------------------------------------- */
size_t wk_mw_host_noport(const char *h, size_t n)
{
    if (n > 0 && h[0] == '[') {
        const char *e = memchr(h, ']', n);
        return e != NULL ? (size_t)(e - h) + 1 : n;
    }
    for (size_t i = 0; i < n; i++) {
        if (h[i] == ':') {
            return i;
        }
    }
    return n;
}

static int redirect_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_redirect *p = c->params;
    const char *host = NULL, *t;
    size_t hl = 0, tl;
    char loc[8192];
    int n;

    if (x->peer->https) {
        return WK_MW_PASS;
    }
    if (!wk_mw_req_host(x, &host, &hl)) {
        return wk_mw_error(x, 400, "Bad request", "No Host to redirect to");
    }
    hl = wk_mw_host_noport(host, hl);
    wk_mw_req_target(x, &t, &tl);
    n = snprintf(loc, sizeof(loc), "https://%.*s%.*s", (int)hl, host, (int)tl, t);
    if (n < 0 || (size_t)n >= sizeof(loc)) {
        return wk_mw_error(x, 414, "URI too long", "The redirect target is too long");
    }
    wk_mw_hdr(x, "Location", loc, (size_t)n);
    return wk_mw_reply(x, p->status, "text/plain; charset=utf-8", "", 0);
}

const struct wk_mw_hooks wk_mw_redirect_hooks = {.request = redirect_request};

/* ---- strip_prefix --------------------------------------------------------------------------- */
size_t wk_mw_strip(const char *t, size_t n, const char *prefix, size_t plen, int *slash)
{
    *slash = 0;
    if (plen < 2 || n < plen || memcmp(t, prefix, plen) != 0) {
        return 0;
    }
    if (n == plen || t[plen] == '?' || t[plen] == '#') {
        *slash = 1;
        return plen - 1;
    }
    return t[plen] == '/' ? plen : 0;
}

static int strip_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_strip *p = c->params;
    const char *t;
    size_t tl, k;
    int slash;

    wk_mw_req_target(x, &t, &tl);
    k = wk_mw_strip(t, tl, shm_mw_s(c->s, p->prefix), p->prefix.len, &slash);
    if (k == 0) {
        return WK_MW_PASS;
    }
    if (slash) {
        ((char *)t)[k] = '/'; /* (t points into the head this middleware may edit) */
    }
    if (wk_mw_req_set_target(x, t + k, tl - k) != 0 ||
        wk_mw_req_set(x, "X-Forwarded-Prefix", shm_mw_s(c->s, p->prefix), p->prefix.len) != 0) {
        return wk_mw_error(x, 431, "Request header fields too large",
                           "Request head too large to forward");
    }
    return WK_MW_PASS;
}

const struct wk_mw_hooks wk_mw_strip_hooks = {.request = strip_request};

/* ---- max_body ------------------------------------------------------------------------------- */
static int max_body_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_max_body *p = c->params;
    const char *v;
    size_t vl;
    uint64_t clen = 0;

    if (wk_mw_req_get(x, "content-length", &v, &vl)) {
        wk_content_length(v, vl, &clen);
    }
    if (clen > p->bytes || x->tx->body_bytes > p->bytes) {
        return wk_xchg_error(x, 413, "Payload too large", "Request body exceeds the route's limit",
                             1) == 0
                   ? WK_MW_DONE
                   : WK_MW_CLOSED;
    }
    if (x->tx->mw.max_body == 0 || p->bytes < x->tx->mw.max_body) {
        /* The client side checks the body against it as it comes (wk_mw_body_over()). */
        x->tx->mw.max_body = p->bytes == 0 ? 1 : p->bytes;
        x->tx->mw.max_body_id = c->id + 1;
    }
    return WK_MW_PASS;
}

const struct wk_mw_hooks wk_mw_max_body_hooks = {.request = max_body_request};

/* ---- cors ----------------------------------------------------------------------------------- */
/* Is <o>[0, n) one of the allowed origins? */
static int origin_allowed(const struct wk_mw_ctx *c, const struct shm_mw_cors *p, const char *o,
                          size_t n)
{
    const struct shm_str *l = shm_mw_list_at(c->s, p->origins);

    if (p->flags & SHM_MW_CORS_ANY_ORIGIN) {
        return 1;
    }
    for (uint32_t i = 0; i < p->origins.n; i++) {
        if (l[i].len == n && strncasecmp(shm_mw_s(c->s, l[i]), o, n) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The Access-Control-Allow-Origin value: "*" for any origin without credentials, else the
 * origin itself. */
static void allow_origin(const struct shm_mw_cors *p, const char **o, size_t *n)
{
    if ((p->flags & (SHM_MW_CORS_ANY_ORIGIN | SHM_MW_CORS_CREDENTIALS)) == SHM_MW_CORS_ANY_ORIGIN) {
        *o = "*";
        *n = 1;
    }
}

static int cors_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_cors *p = c->params;
    const char *o, *rm;
    size_t ol, rml;
    char age[24];

    if (strcmp(wk_h1_method_str(x->method), "OPTIONS") != 0 ||
        !wk_mw_req_get(x, "origin", &o, &ol) ||
        !wk_mw_req_get(x, "access-control-request-method", &rm, &rml)) {
        return WK_MW_PASS; /* not a preflight: the response hook adds the fields */
    }
    /* A preflight is answered here, whatever the origin: a refused one gets no Allow-*. */
    if (origin_allowed(c, p, o, ol)) {
        allow_origin(p, &o, &ol);
        wk_mw_hdr(x, "Access-Control-Allow-Origin", o, ol);
        wk_mw_hdr(x, "Access-Control-Allow-Methods", shm_mw_s(c->s, p->methods), p->methods.len);
        if (p->headers.len > 0) {
            wk_mw_hdr(x, "Access-Control-Allow-Headers", shm_mw_s(c->s, p->headers),
                      p->headers.len);
        }
        if (p->flags & SHM_MW_CORS_CREDENTIALS) {
            wk_mw_hdr(x, "Access-Control-Allow-Credentials", "true", 4);
        }
        if (p->max_age_s > 0) {
            int n = snprintf(age, sizeof(age), "%u", p->max_age_s);
            wk_mw_hdr(x, "Access-Control-Max-Age", age, (size_t)n);
        }
    }
    wk_mw_hdr(x, "Vary", "Origin", 6);
    return wk_mw_reply(x, 204, "text/plain", "", 0);
}

static int cors_response(struct wk_xchg *x, const struct wk_mw_ctx *c, struct wk_h1_resp *rs)
{
    const struct shm_mw_cors *p = c->params;
    const char *o;
    size_t ol;

    if (!((p->flags & (SHM_MW_CORS_ANY_ORIGIN | SHM_MW_CORS_CREDENTIALS)) ==
          SHM_MW_CORS_ANY_ORIGIN)) {
        wk_mw_resp_add(rs, "Vary", 4, "Origin", 6); /* the answer depends on the origin */
    }
    if (!wk_mw_req_get(x, "origin", &o, &ol) || !origin_allowed(c, p, o, ol)) {
        return 0;
    }
    allow_origin(p, &o, &ol);
    wk_mw_resp_set(rs, "Access-Control-Allow-Origin", 27, o, ol);
    if (p->flags & SHM_MW_CORS_CREDENTIALS) {
        wk_mw_resp_set(rs, "Access-Control-Allow-Credentials", 32, "true", 4);
    }
    return 0;
}

/* A later middleware's answer (a 401, a 429) stays readable by the page that asked. */
static void cors_answer(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_cors *p = c->params;
    const char *o;
    size_t ol;

    if (wk_mw_req_get(x, "origin", &o, &ol) && origin_allowed(c, p, o, ol)) {
        allow_origin(p, &o, &ol);
        wk_mw_hdr(x, "Access-Control-Allow-Origin", o, ol);
        if (p->flags & SHM_MW_CORS_CREDENTIALS) {
            wk_mw_hdr(x, "Access-Control-Allow-Credentials", "true", 4);
        }
    }
    if ((p->flags & (SHM_MW_CORS_ANY_ORIGIN | SHM_MW_CORS_CREDENTIALS)) != SHM_MW_CORS_ANY_ORIGIN) {
        wk_mw_hdr(x, "Vary", "Origin", 6);
    }
}

const struct wk_mw_hooks wk_mw_cors_hooks = {.request = cors_request,
                                             .response = cors_response,
                                             .answer = cors_answer};
