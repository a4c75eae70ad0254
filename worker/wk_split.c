/* dispatcher: weighted splits of a route across services (route `split`, `sticky`): the weighted
 * draw, the dsp_split cookie read from the request and set on the response. The draw and the
 * cookie parsing are pure (unit-tested); wk_split_route() and wk_split_set_cookie() are what the
 * exchange calls.
 *
 * Choice per request, for a route with a split:
 *   - sticky, and a dsp_split cookie names an entry of weight > 0 whose service can take the
 *     request (some backend admitted): that service, nothing set;
 *   - else a draw by weight among the entries whose service can take it (entries of weight 0
 *     never drawn); sticky: Set-Cookie names the drawn service on the response;
 *   - no entry can take it (no backends, all down or open): the first draw's service, whose own
 *     404 "not deployed" or 503 the client gets, exactly as with a plain route to it.
 * A client is thus moved off a service that is out as a whole (a canary that died), like
 * Traefik's weighted services with health checks; its cookie is replaced only when a response
 * comes back from the service it was moved to. */
#include <string.h>

#include "shm/shm_snap.h"
#include "worker/wk_internal.h"

uint32_t wk_split_draw(const struct shm_split *e, uint32_t n, uint32_t skip, uint64_t rnd)
{
    uint64_t total = 0, r;

    for (uint32_t i = 0; i < n; i++) {
        if (!(skip & (1u << i))) {
            total += e[i].weight;
        }
    }
    if (total == 0) {
        return UINT32_MAX;
    }
    /* Multiply-shift of the high 32 random bits: uniform over [0, total) without a division
     * (total < 2^32: at most 16 entries of weight <= 1,000,000). */
    r = ((rnd >> 32) * total) >> 32;
    for (uint32_t i = 0; i < n; i++) {
        if (skip & (1u << i)) {
            continue;
        }
        if (r < e[i].weight) {
            return i;
        }
        r -= e[i].weight;
    }
    return UINT32_MAX; /* not reached */
}

int wk_cookie_next(const char *v, size_t vlen, size_t *pos, const char **name, size_t *nlen,
                   const char **val, size_t *vallen)
{
    size_t i = *pos;

    while (i < vlen) {
        size_t start, eq = SIZE_MAX, end;

        while (i < vlen && (v[i] == ' ' || v[i] == '\t' || v[i] == ';')) {
            i++;
        }
        if (i >= vlen) {
            break;
        }
        start = i;
        while (i < vlen && v[i] != ';') {
            if (v[i] == '=' && eq == SIZE_MAX) {
                eq = i;
            }
            i++;
        }
        end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t')) {
            end--;
        }
        if (eq == SIZE_MAX || eq >= end) {
            continue; /* no '=': not a cookie pair */
        }
        *name = v + start;
        *nlen = eq - start;
        while (*nlen > 0 && (v[start + *nlen - 1] == ' ' || v[start + *nlen - 1] == '\t')) {
            (*nlen)--;
        }
        *val = v + eq + 1;
        *vallen = end - eq - 1;
        while (*vallen > 0 && (**val == ' ' || **val == '\t')) {
            (*val)++;
            (*vallen)--;
        }
        if (*vallen >= 2 && (*val)[0] == '"' && (*val)[*vallen - 1] == '"') {
            (*val)++; /* a quoted value (RFC 6265 allows DQUOTE around cookie-octets) */
            *vallen -= 2;
        }
        *pos = i;
        return 1;
    }
    *pos = vlen;
    return 0;
}

uint32_t wk_split_cookie_entry(const struct shm_snap_hdr *s, const struct shm_split *e, uint32_t n,
                               const struct wk_head *hd, int *seen)
{
    static const char cname[] = SHM_SPLIT_COOKIE;

    *seen = 0;
    for (uint32_t h = 0; h < hd->n; h++) {
        const char *name, *val;
        size_t pos = 0, nlen, vlen;

        if (!wk_hdr_is(&hd->h[h], "cookie", 6)) {
            continue;
        }
        while (wk_cookie_next(hd->h[h].value, hd->h[h].vlen, &pos, &name, &nlen, &val, &vlen)) {
            if (nlen != sizeof(cname) - 1 || memcmp(name, cname, nlen) != 0) {
                continue;
            }
            *seen = 1;
            for (uint32_t i = 0; i < n; i++) {
                const struct shm_service *svc = &shm_services(s)[e[i].service];
                if (e[i].weight > 0 && svc->name.len == vlen &&
                    memcmp(shm_s(s, svc->name), val, vlen) == 0) {
                    return i;
                }
            }
        }
    }
    return UINT32_MAX;
}

/* Can x's request go to service <svc> now (some backend admitted)? */
static int service_ready(struct wk_xchg *x, uint32_t svc)
{
    x->at.service = svc;
    return shm_services(x->at.gen->snap)[svc].nbackends > 0 && wk_lb_can_retry(&x->at);
}

void wk_split_route(struct wk_xchg *x, const struct shm_route *r, const struct wk_head *hd)
{
    const struct shm_snap_hdr *s = x->at.gen->snap;
    const struct shm_split *e = shm_route_split(s, r);
    uint32_t n = r->nsplit, skip = 0, first = UINT32_MAX, i = UINT32_MAX, kept = UINT32_MAX;
    int sticky = (r->split_flags & SHM_SPLIT_STICKY) != 0, seen = 0;

    if (sticky) {
        kept = wk_split_cookie_entry(s, e, n, hd, &seen);
        if (kept != UINT32_MAX) {
            if (service_ready(x, e[kept].service)) {
                return;
            }
            skip |= 1u << kept;
        }
    }
    for (uint32_t k = 0; k < n; k++) {
        i = wk_split_draw(e, n, skip, wk_rand(wk.rng));
        if (i == UINT32_MAX) {
            break;
        }
        if (first == UINT32_MAX) {
            first = i;
        }
        if (service_ready(x, e[i].service)) {
            break;
        }
        skip |= 1u << i;
        i = UINT32_MAX;
    }
    if (i == UINT32_MAX) {
        /* Nothing can take it: the client's own service if it has one, else the first draw,
         * answered as a plain route to it would be. */
        i = kept != UINT32_MAX ? kept : first;
    }
    x->at.service = e[i].service;
    if (sticky && i != kept) {
        x->at.set_cookie = e[i].cookie;
    }
}

void wk_split_set_cookie(struct wk_xchg *x, struct wk_h1_resp *rs)
{
    struct wk_hdr *h;

    if (x->at.set_cookie.len == 0 || rs->hd.n >= WK_MAX_HEADERS) {
        return;
    }
    h = &rs->hd.h[rs->hd.n++];
    h->name = "Set-Cookie";
    h->nlen = 10;
    h->value = shm_s(x->at.gen->snap, x->at.set_cookie);
    h->vlen = x->at.set_cookie.len;
}
