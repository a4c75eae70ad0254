/* dispatcher: the compress middleware in the exchange. On the request: which coding the client
 * accepts (Accept-Encoding, wk_gz.h). On the response head: whether the response qualifies
 * (a body, not already encoded, no Cache-Control: no-transform, not partial, a listed media
 * type, at least min_bytes when its length is known), and then the head the client gets (no
 * Content-Length, Content-Encoding, Vary: Accept-Encoding merged, a weak ETag). On the body:
 * the decoded bytes the exchange has ready go through a streaming encoder into a buffer of their
 * own, framed for the client (HTTP/1.1 chunks; raw for HTTP/1.0, where the close ends it, and
 * HTTP/2, whose DATA frames carry it), with a sync flush whenever the client would otherwise
 * wait for bytes the encoder holds (an SSE stream stays live), and the end of the stream once
 * the backend's body is complete. Memory per response: the encoder's (wk_gz.h) and one 32 KiB
 * buffer, whatever the body's size. */
#include "worker/wk_internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "shm/shm_mw.h"
#include "worker/wk_gz.h"
#include "worker/wk_mw.h"
#include "worker/wk_mw_types.h"

_Static_assert(SHM_MW_GZ_GZIP == 1u << WK_GZ_GZIP && SHM_MW_GZ_BR == 1u << WK_GZ_BR,
               "the snapshot's coding bits are wk_gz.h's");

#define GZ_OUT_SIZE   (32 * 1024) /* (the upstream buffer's size: the same free list) */
#define GZ_CHUNK_HEAD 6           /* "xxxx\r\n": a chunk of at most 0xffff bytes */
/* Memory of the live encoders per worker. Brotli (~3 MiB a stream) may take half of it (20-odd
 * concurrent streams), gzip (~300 KiB) the rest; past that a brotli client gets gzip, and past
 * the whole no compression: a flood of slow compressed downloads costs no more than this. */
#define WK_GZ_MEM_MAX (128ull << 20)

/* Media types compressed when `types` is not given. */
static const char *const default_types[] = {
    "text/*",          "application/json",     "application/javascript",
    "application/xml", "application/wasm",     "image/svg+xml",
    "font/ttf",        "application/x-ndjson", NULL,
};

/* The Accept-Encoding fields of the request as it goes upstream (the head built in uout: the
 * client's fields, HTTP/1 or HTTP/2 alike), every one of them. */
static void scan_accept_encoding(const struct wk_xchg *x, struct wk_ae *ae)
{
    const char *p = x->tx->uout.data, *end;
    const char *nl;

    if (p == NULL) {
        return;
    }
    end = p + x->tx->uout.end;
    nl = memchr(p, '\n', (size_t)(end - p)); /* (past the request line) */
    while (nl != NULL && nl + 1 < end) {
        const char *ln = nl + 1, *le, *colon;
        nl = memchr(ln, '\n', (size_t)(end - ln));
        le = nl != NULL ? nl : end;
        if (le > ln && le[-1] == '\r') {
            le--;
        }
        if (le == ln) {
            break; /* the blank line */
        }
        colon = memchr(ln, ':', (size_t)(le - ln));
        if (colon != NULL && colon - ln == 15 && strncasecmp(ln, "accept-encoding", 15) == 0) {
            wk_ae_scan(ae, colon + 1, (size_t)(le - colon - 1));
        }
    }
}

/* Request hook: which coding the client accepts (the first compress of a chain decides). */
static int gz_request(struct wk_xchg *x, const struct wk_mw_ctx *c)
{
    const struct shm_mw_compress *p = c->params;
    struct wk_ae ae;

    if (x->tx->gz_mw != 0) {
        return WK_MW_PASS;
    }
    x->tx->gz_mw = (uint8_t)(c->pos + 1);
    wk_ae_init(&ae);
    scan_accept_encoding(x, &ae);
    x->tx->gz_enc = (uint8_t)wk_ae_choose(&ae, p->encodings);
    x->tx->gz_alt = (uint8_t)wk_ae_choose(&ae, p->encodings & ~(1u << WK_GZ_BR));
    return WK_MW_PASS;
}

static int type_listed(const struct wk_mw_ctx *c, const struct shm_mw_compress *p, const char *ct,
                       size_t n)
{
    size_t at = 0;

    /* gRPC (application/grpc, +proto, -web...) compresses its messages itself (grpc-encoding):
     * never a Content-Encoding on it. */
    while (at < n && (ct[at] == ' ' || ct[at] == '\t')) {
        at++;
    }
    if (n - at >= 16 && strncasecmp(ct + at, "application/grpc", 16) == 0) {
        return 0;
    }
    if (p->types.n == 0) {
        for (const char *const *t = default_types; *t != NULL; t++) {
            if (wk_gz_type_match(*t, strlen(*t), ct, n)) {
                return 1;
            }
        }
        return 0;
    }
    {
        const struct shm_snap_hdr *s = c->s;
        const struct shm_str *t = shm_mw_list_at(s, p->types);
        for (uint32_t i = 0; i < p->types.n; i++) {
            if (wk_gz_type_match(shm_mw_s(s, t[i]), t[i].len, ct, n)) {
                return 1;
            }
        }
    }
    return 0;
}

/* What the response head says, as far as compression cares. */
struct gz_view {
    const struct wk_hdr *ctype, *vary;
    uint64_t clen; /* UINT64_MAX: not given */
    int skip;      /* encoded, partial, no-transform: left exactly as it is */
    int vary_has;  /* some Vary already names Accept-Encoding (or is "*") */
};

static void view_head(const struct wk_h1_resp *rs, struct gz_view *v)
{
    memset(v, 0, sizeof(*v));
    v->clen = UINT64_MAX;
    for (uint32_t i = 0; i < rs->hd.n; i++) {
        const struct wk_hdr *h = &rs->hd.h[i];
        if (wk_hdr_is(h, "content-encoding", 16) || wk_hdr_is(h, "content-range", 13)) {
            v->skip = 1;
        } else if (wk_hdr_is(h, "cache-control", 13)) {
            if (wk_hdr_has_token(h->value, h->vlen, "no-transform")) {
                v->skip = 1;
            }
        } else if (wk_hdr_is(h, "content-type", 12)) {
            if (v->ctype == NULL) {
                v->ctype = h;
            }
        } else if (wk_hdr_is(h, "content-length", 14)) {
            uint64_t n;
            if (wk_content_length(h->value, h->vlen, &n)) {
                v->clen = n;
            }
        } else if (wk_hdr_is(h, "vary", 4)) {
            if (v->vary == NULL) {
                v->vary = h;
            }
            if (wk_hdr_has_token(h->value, h->vlen, "accept-encoding") ||
                wk_hdr_has_token(h->value, h->vlen, "*")) {
                v->vary_has = 1;
            }
        }
    }
}

/* Start compressing with <enc>: the encoder, within the worker's budget. NULL when over it or
 * out of memory (the body then goes as it is). */
static struct wk_gzb *gzb_new(const struct shm_mw_compress *p, unsigned enc, uint64_t clen)
{
    int level = enc == WK_GZ_BR ? (int)p->br_quality : (int)p->level;
    size_t cost = wk_gz_cost(enc, level, clen) + GZ_OUT_SIZE;
    struct wk_gzb *g;

    if (wk.gz_mem + cost > (enc == WK_GZ_BR ? WK_GZ_MEM_MAX / 2 : WK_GZ_MEM_MAX)) {
        return NULL;
    }
    g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return NULL;
    }
    g->gz = wk_gz_new(enc, level, clen);
    if (g->gz == NULL) {
        free(g);
        return NULL;
    }
    g->cost = cost;
    wk.gz_mem += cost;
    return g;
}

void wk_mwgz_drop(struct wk_txn *t)
{
    if (t->gzb != NULL) {
        wk.gz_mem -= t->gzb->cost;
        wk_gz_free(t->gzb->gz);
        wk_buf_put(&t->gzb->out);
        free(t->gzb);
        t->gzb = NULL;
    }
}

/* The coding the response gets: the client's choice, gzip when brotli is over its budget, none
 * when both are; the encoder in *g. An answer to HEAD gets the head a GET would (no encoder). */
static unsigned start_coding(struct wk_xchg *x, const struct shm_mw_compress *p, uint64_t clen,
                             struct wk_gzb **g)
{
    *g = NULL;
    if (x->tx->gz_enc == WK_GZ_NONE || (x->tflags & WK_T_HEAD_REQ)) {
        return x->tx->gz_enc;
    }
    *g = gzb_new(p, x->tx->gz_enc, clen);
    if (*g == NULL && x->tx->gz_enc == WK_GZ_BR && x->tx->gz_alt != WK_GZ_NONE) {
        x->tx->gz_enc = x->tx->gz_alt; /* brotli over the budget: gzip costs a tenth */
        *g = gzb_new(p, x->tx->gz_enc, clen);
    }
    return *g != NULL ? x->tx->gz_enc : WK_GZ_NONE;
}

/* Response hook: when the response qualifies, edit its head for the client (no Content-Length,
 * Content-Encoding, Vary: Accept-Encoding, a weak ETag) and start the encoder. A response that
 * qualifies gets Vary whether this client takes the compressed form or not. */
static int gz_response(struct wk_xchg *x, const struct wk_mw_ctx *c, struct wk_h1_resp *rs)
{
    const struct shm_mw_compress *p = c->params;
    struct gz_view v;
    struct wk_gzb *g = NULL;
    char *vary = wk.mw_scratch, *etag = wk.mw_scratch + 1024;
    size_t vlen = 0;
    unsigned st = rs->status, enc;

    if (x->tx->gz_mw != c->pos + 1 || wk_h1_bodyless(0, st) || st == 206) {
        return 0;
    }
    if (x->tx->gzb != NULL) {
        wk_mwgz_drop(x->tx); /* (an earlier attempt's head that was taken back) */
    }
    view_head(rs, &v);
    if (v.skip || !type_listed(c, p, v.ctype ? v.ctype->value : "", v.ctype ? v.ctype->vlen : 0) ||
        (v.clen != UINT64_MAX && (v.clen == 0 || v.clen < p->min_bytes)) ||
        rs->hd.n + 2 > WK_MAX_HEADERS) {
        return 0;
    }
    if (!v.vary_has) {
        vlen = wk_gz_vary(v.vary ? v.vary->value : NULL, v.vary ? v.vary->vlen : 0, vary, 1024);
        if (vlen == 0) {
            return 0; /* (a Vary of 1 KiB: left alone) */
        }
    }
    enc = start_coding(x, p, v.clen, &g);
    for (uint32_t i = 0; i < rs->hd.n; i++) {
        struct wk_hdr *h = &rs->hd.h[i];
        if (h == v.vary && vlen > 0) {
            h->value = vary;
            h->vlen = (uint32_t)vlen;
        }
    }
    if (enc != WK_GZ_NONE) {
        /* Another representation: the same bytes no more (RFC 9110 8.8.3), so a strong ETag
         * turns weak (one too long to rewrite goes). */
        const struct wk_hdr *e = wk_mw_resp_get(rs, "etag");
        size_t n = e != NULL ? wk_gz_etag(e->value, e->vlen, etag, 512) : 0;
        wk_mw_resp_remove(rs, "content-length");
        wk_mw_resp_remove(rs, "etag");
        if (n > 0) {
            wk_mw_resp_add(rs, "ETag", 4, etag, n);
        }
    }
    if (v.vary == NULL && vlen > 0) {
        wk_mw_resp_add(rs, "Vary", 4, vary, vlen);
    }
    if (enc == WK_GZ_NONE) {
        return 0;
    }
    wk_mw_resp_add(rs, "Content-Encoding", 16, wk_gz_name(enc), strlen(wk_gz_name(enc)));
    rs->chunked = 1; /* a body of unknown length from here on */
    rs->has_clen = 0;
    if (g != NULL) {
        g->rt_slot = c->m->rt_slot < SHM_RT_MAX_MIDDLEWARES ? c->m->rt_slot : 0;
        __atomic_fetch_add(&wk.rt->mws[g->rt_slot]
                                .type_counters[enc == WK_GZ_BR ? SHM_MW_GZ_C_BR : SHM_MW_GZ_C_GZIP],
                           1, __ATOMIC_RELAXED);
        x->tx->gzb = g;
    }
    return 0;
}

void wk_mwgz_framed(struct wk_xchg *x, int up_chunked)
{
    /* The client side asked for the body decoded (HTTP/1.0, HTTP/2: it frames nothing itself)
     * or chunked (HTTP/1.1). The backend's body is decoded for the encoder whenever it is
     * chunked. */
    x->tx->gzb->chunked = !(x->tflags & WK_T_DECHUNK);
    x->tflags = up_chunked ? x->tflags | WK_T_DECHUNK : x->tflags & ~WK_T_DECHUNK;
}

/* The encoder failed (out of memory inside the library): nothing honest can follow. */
static int gz_fail(struct wk_xchg *x, const char *what)
{
    log_warn("compress: %s; response cut", what);
    wk_xchg_cut(x, SHM_CUT_INTERNAL);
    x->ops->close(x);
    return -1;
}

/* Which encoder operation the ready input calls for, or -1 for none now. */
static int pump_op(const struct wk_xchg *x, const struct wk_gzb *g, uint32_t inlen)
{
    if (inlen > 0 || g->pending) {
        return WK_GZ_RUN;
    }
    if (x->tflags & WK_T_RESP_DONE) {
        return WK_GZ_FINISH;
    }
    /* Input is held in the encoder, the client has nothing left to send, and the backend has
     * nothing more for now: push it out (a sync point), so a slow stream is never held back. A
     * fast one is not flushed while bytes still wait for the client. */
    if (wk_gz_dirty(g->gz) && g->out.end == g->out.start &&
        (x->up == NULL || !(x->up->flags & WK_UP_F_READABLE))) {
        return WK_GZ_FLUSH;
    }
    return -1;
}

int wk_mwgz_pump(struct wk_xchg *x)
{
    struct wk_txn *t = x->tx;
    struct wk_gzb *g = t->gzb;

    if (g->out.data == NULL && wk_buf_get(&g->out, GZ_OUT_SIZE) != 0) {
        return gz_fail(x, "out of memory");
    }
    for (int guard = 0; guard < 64 && !g->ended; guard++) {
        uint32_t inlen = t->rready_off - t->rsend_off;
        int op = pump_op(x, g, inlen), r;
        size_t frame = g->chunked ? GZ_CHUNK_HEAD + 2 : 0, reserve, room, used, made;
        char *dst;

        if (op < 0) {
            break;
        }
        reserve = frame + (op == WK_GZ_FINISH && g->chunked ? 5 : 0);
        if (g->out.start > 0 && g->out.cap - g->out.end < reserve + 1024) {
            memmove(g->out.data, g->out.data + g->out.start, g->out.end - g->out.start);
            g->out.end -= g->out.start;
            g->out.start = 0;
        }
        room = g->out.cap - g->out.end;
        if (room < reserve + 64) {
            break; /* the client drains it first */
        }
        room -= reserve;
        dst = g->out.data + g->out.end + (g->chunked ? GZ_CHUNK_HEAD : 0);
        r = wk_gz_step(g->gz, t->uin.data + t->rsend_off, inlen, &used, dst, room, &made, op);
        if (r < 0) {
            return gz_fail(x, "encoder error");
        }
        t->rsend_off += (uint32_t)used;
        g->pending = made == room;
        if (used > 0 || made > 0) {
            uint64_t *tc = wk.rt->mws[g->rt_slot].type_counters;
            __atomic_fetch_add(&tc[SHM_MW_GZ_C_IN], used, __ATOMIC_RELAXED);
            __atomic_fetch_add(&tc[SHM_MW_GZ_C_OUT], made, __ATOMIC_RELAXED);
        }
        if (made > 0) {
            if (g->chunked) {
                static const char hex[] = "0123456789abcdef";
                char *h = g->out.data + g->out.end;
                for (int k = 0; k < 4; k++) {
                    h[k] = hex[(made >> (12 - 4 * k)) & 15u];
                }
                h[4] = '\r';
                h[5] = '\n';
                memcpy(dst + made, "\r\n", 2);
            }
            g->out.end += (uint32_t)(made + frame);
        }
        if (op == WK_GZ_FINISH && r == 1) {
            if (g->chunked) {
                memcpy(g->out.data + g->out.end, "0\r\n\r\n", 5);
                g->out.end += 5;
            }
            g->ended = 1;
        }
        if (used == 0 && made == 0 && !(op != WK_GZ_RUN && r == 1)) {
            break;
        }
    }
    return 0;
}

const struct wk_mw_hooks wk_mw_compress_hooks = {
    .needs_head = 1, /* Accept-Encoding is read from the built upstream head */
    .request = gz_request,
    .response = gz_response,
};
