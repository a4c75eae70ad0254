/* dispatcher: the rate_limit middleware in the worker. The request hook takes a token from the
 * key's bucket in the shared table (shm/shm_rl.h: one hash, one probe of a cache line, one
 * compare-and-swap) and either passes, keeping the bucket's figures for the response, or answers
 * 429 itself with Retry-After, the RateLimit-* fields and the SPEC's JSON body. The response hook
 * adds RateLimit-Remaining and RateLimit-Reset to every proxied answer of the route.
 *
 * Keys: "client_ip" is the request's real client (the PROXY source, or the right-most untrusted
 * X-Forwarded-For entry from a trusted proxy: x->at, as ip-hash uses), 4 or 16 bytes; "host" the
 * request's host, lower case, port and trailing dot removed; "header:NAME" the field's first
 * value as it goes upstream. A request without that field counts against one shared bucket, the
 * empty key's (as Traefik does): leaving a header out is not a way around the limit. */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "shm/shm_rl.h"
#include "worker/wk_internal.h"
#include "worker/wk_mw.h"
#include "worker/wk_mw_types.h"

#define HOST_MAX 256

/* wk_mw_txn.rl_set bits */
#define RL_FIGURES  1u /* rl_remaining and rl_reset hold the tightest bucket's figures */
#define RL_ANSWERED 2u /* a generated answer has its RateLimit fields already */

/* The normalised host of the request (as routing sees it) into <buf>; its length. */
static size_t host_key(const struct wk_xchg *x, char *buf)
{
    const char *v;
    size_t n = 0, len = 0;

    if (wk_mw_req_get(x, "host", &v, &n) != 1) {
        return 0;
    }
    if (n > 0 && v[0] == '[') { /* [v6]:port: up to the bracket */
        const char *e = memchr(v, ']', n);
        n = e != NULL ? (size_t)(e - v) + 1 : n;
    } else {
        const char *c = memchr(v, ':', n);
        n = c != NULL ? (size_t)(c - v) : n;
    }
    if (n > 0 && v[n - 1] == '.') {
        n--;
    }
    for (; len < n && len < HOST_MAX; len++) {
        char ch = v[len];
        buf[len] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    return len;
}

static int rl_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_rate_limit *p = c->params;
    struct shm_mw_rate_limit q = *p;
    struct shm_rl_verdict v;
    char host[HOST_MAX], num[24], body[160];
    const void *key = "";
    size_t klen = 0;
    int n;

    switch (p->key) {
    case SHM_RL_KEY_CLIENT_IP:
        key = x->at.client_ip;
        klen = x->at.client_family == AF_INET6 ? 16 : 4;
        break;
    case SHM_RL_KEY_HOST:
        klen = host_key(x, host);
        key = host;
        break;
    default: {
        const char *val;
        if (wk_mw_req_get(x, shm_mw_base(c->s) + p->header_off, &val, &klen) == 1) {
            key = val;
        } else {
            klen = 0;
        }
        break;
    }
    }
    q.id = shm_rl_mw_id(shm_mw_s(c->s, c->m->name), c->m->name.len);
    shm_rl_take(&wk.rt->rl, &q, (uint8_t)p->key, key, klen, wk.now, &v);
    if (v.claimed && c->m->rt_slot < SHM_RT_MAX_MIDDLEWARES) {
        uint64_t *tc = wk.rt->mws[c->m->rt_slot].type_counters;
        __atomic_fetch_add(&tc[SHM_RL_TC_KEYS], 1, __ATOMIC_RELAXED);
        if (v.evicted) {
            __atomic_fetch_add(&tc[SHM_RL_TC_EVICTIONS], 1, __ATOMIC_RELAXED);
        }
    }
    {
        /* Two limits on one route: the answer shows the tighter one. */
        struct wk_mw_txn *mt = &x->tx->mw;
        if (!(mt->rl_set & RL_FIGURES) || v.remaining < mt->rl_remaining) {
            mt->rl_remaining = (uint32_t)v.remaining;
        }
        if (!(mt->rl_set & RL_FIGURES) || v.reset_s > mt->rl_reset) {
            mt->rl_reset = (uint32_t)(v.reset_s > UINT32_MAX ? UINT32_MAX : v.reset_s);
        }
        mt->rl_set |= RL_FIGURES;
    }
    if (v.allowed) {
        return WK_MW_PASS;
    }
    x->tx->mw.rl_set |= RL_ANSWERED; /* its own fields: no earlier limit adds its own */
    n = snprintf(num, sizeof(num), "%llu", (unsigned long long)v.retry_after_s);
    wk_mw_hdr(x, "Retry-After", num, (size_t)n);
    n = snprintf(num, sizeof(num), "%llu", (unsigned long long)v.limit);
    wk_mw_hdr(x, "RateLimit-Limit", num, (size_t)n);
    wk_mw_hdr(x, "RateLimit-Remaining", "0", 1);
    n = snprintf(num, sizeof(num), "%llu", (unsigned long long)v.reset_s);
    wk_mw_hdr(x, "RateLimit-Reset", num, (size_t)n);
    n = snprintf(body, sizeof(body),
                 "{\"error\":\"Too many requests\",\"message\":\"Rate limit exceeded; retry in "
                 "%llu s\",\"retry_after_s\":%llu}",
                 (unsigned long long)v.retry_after_s, (unsigned long long)v.retry_after_s);
    return wk_mw_reply(x, 429, "application/json", body, (size_t)n);
}

/* <v> in decimal at <p> (room for 10 digits): its length. (snprintf() costs more than the whole
 * rate limit does on every proxied answer.) */
static size_t u32_dec(char *p, uint32_t v)
{
    char tmp[10];
    size_t n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++) {
        p[i] = tmp[n - 1 - i];
    }
    return n;
}

static int rl_response(struct wk_xchg *x, const struct wk_mw_ctx *c, struct wk_h1_resp *rs)
{
    struct wk_mw_txn *mt = &x->tx->mw;
    size_t a, b;

    (void)c;
    if (!(mt->rl_set & RL_FIGURES) || mt->rl_buf[0] != '\0') {
        return 0; /* another rate_limit of the chain wrote them already */
    }
    _Static_assert(sizeof(mt->rl_buf) >= 22, "two 10-digit numbers and their NULs");
    a = u32_dec(mt->rl_buf, mt->rl_remaining);
    mt->rl_buf[a] = '\0';
    b = u32_dec(mt->rl_buf + a + 1, mt->rl_reset);
    mt->rl_buf[a + 1 + b] = '\0';
    /* The backend's own fields of these names give way (one read-only pass: rarely any). */
    for (uint32_t i = 0; i < rs->hd.n; i++) {
        const struct wk_hdr *h = &rs->hd.h[i];
        if ((h->nlen == 19 || h->nlen == 15) && (h->name[0] | 0x20) == 'r' &&
            (wk_hdr_is(h, "ratelimit-remaining", 19) || wk_hdr_is(h, "ratelimit-reset", 15))) {
            wk_mw_resp_remove(rs, "ratelimit-remaining");
            wk_mw_resp_remove(rs, "ratelimit-reset");
            break;
        }
    }
    wk_mw_resp_add(rs, "RateLimit-Remaining", 19, mt->rl_buf, a);
    wk_mw_resp_add(rs, "RateLimit-Reset", 15, mt->rl_buf + a + 1, b);
    return 0;
}

/* A later middleware answers by itself (401, 403, a static page): the answer carries the
 * figures too (once, however many limits the route has). */
static void rl_answer(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    struct wk_mw_txn *mt = &x->tx->mw;
    char buf[12];

    (void)c;
    if ((mt->rl_set & (RL_FIGURES | RL_ANSWERED)) != RL_FIGURES) {
        return;
    }
    mt->rl_set |= RL_ANSWERED;
    wk_mw_hdr(x, "RateLimit-Remaining", buf, u32_dec(buf, mt->rl_remaining));
    wk_mw_hdr(x, "RateLimit-Reset", buf, u32_dec(buf, mt->rl_reset));
}

const struct wk_mw_hooks wk_mw_rate_limit_hooks = {.request = rl_request,
                                                   .response = rl_response,
                                                   .answer = rl_answer};
