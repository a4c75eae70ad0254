/* dispatcher: HTTP/2 requests from header blocks, and the abuse limits of HTTP/2 clients (see
 * worker/wk_h2msg.h). */
#include "worker/wk_h2msg.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/str.h"
#include "worker/wk_grpc.h"
#include "worker/wk_internal.h"
#include "worker/wk_mw.h"

#define H2_MAX_CONTINUATIONS 8    /* CONTINUATION frames per header block */
#define H2_MAX_SETTINGS      32   /* entries in one SETTINGS frame */
#define H2_MAX_OUTBOUND_ACK  1000 /* SETTINGS/PING acks queued unread (then: ack flood) */
#define H2_BOMB_FACTOR                                                                             \
    4 /* a header block decompressing to more than this many times                                 \
         max_header_bytes is a bomb, not a mistake */

/* Frames a client may send in a burst, then per second. Stream resets count the client's
 * RST_STREAMs and the streams it made us reset or refuse (rapid reset, CVE-2023-44487, and its
 * variants). */
static const struct {
    uint16_t burst, per_s;
    uint8_t kind; /* SHM_H2_* counted when exceeded */
} h2_rl[WK_H2_RL_KINDS] = {
    [WK_H2_RL_RESET] = {200, 20, SHM_H2_RAPID_RESET},
    [WK_H2_RL_SETTINGS] = {100, 10, SHM_H2_SETTINGS_FLOOD},
    [WK_H2_RL_PING] = {100, 10, SHM_H2_PING_FLOOD},
    [WK_H2_RL_EMPTY_DATA] = {100, 10, SHM_H2_EMPTY_DATA},
    [WK_H2_RL_PRIORITY] = {1000, 100, SHM_H2_PRIORITY_FLOOD},
};

/* ---- the header block -------------------------------------------------------------------------
 */
static uint32_t head_cap(uint64_t max_header_bytes)
{
    return (uint32_t)DSP_MIN(max_header_bytes, (uint64_t)UINT32_MAX / 2) + 64;
}

struct wk_h2_head *wk_h2_head_new(uint64_t max_header_bytes)
{
    return wk_h2_head_renew(NULL, max_header_bytes);
}

struct wk_h2_head *wk_h2_head_renew(struct wk_h2_head *hh, uint64_t max_header_bytes)
{
    uint32_t cap = head_cap(max_header_bytes);

    if (hh != NULL && hh->hb_cap != cap) {
        free(hh);
        hh = NULL;
    }
    if (hh == NULL) {
        hh = malloc(sizeof(*hh) + cap);
        if (hh == NULL) {
            return NULL;
        }
        hh->hb = (char *)(hh + 1);
        hh->hb_cap = cap;
    }
    /* (the field arrays are read only below n) */
    hh->hb_len = 0;
    hh->err = NULL;
    hh->n = 0;
    memset(hh->poff, 0, sizeof(hh->poff));
    memset(hh->plen, 0, sizeof(hh->plen));
    hh->next_free = NULL;
    return hh;
}

void wk_h2_head_free(struct wk_h2_head *hh)
{
    free(hh);
}

#define H2_SPARE_HEADS 32 /* header blocks kept for the next streams (~18 KiB each) */

void wk_h2_head_put(struct wk_h2_head *hh)
{
    if (hh != NULL && wk.h2_nheads < H2_SPARE_HEADS) {
        hh->next_free = wk.h2_heads;
        wk.h2_heads = hh;
        wk.h2_nheads++;
    } else {
        wk_h2_head_free(hh);
    }
}

struct wk_h2_head *wk_h2_head_take(uint64_t max_header_bytes)
{
    struct wk_h2_head *hh = wk.h2_heads;

    if (hh != NULL) {
        wk.h2_heads = hh->next_free;
        wk.h2_nheads--;
    }
    return wk_h2_head_renew(hh, max_header_bytes);
}

static int hb_add(struct wk_h2_head *hh, const uint8_t *p, size_t n, uint32_t *off)
{
    if (n > hh->hb_cap - hh->hb_len) {
        return -1;
    }
    memcpy(hh->hb + hh->hb_len, p, n);
    *off = hh->hb_len;
    hh->hb_len += (uint32_t)n;
    return 0;
}

static void head_refuse(struct wk_h2_head *hh, const char *why)
{
    if (hh->err == NULL) {
        hh->err = why;
    }
}

void wk_h2_head_field(struct wk_h2_head *hh, const uint8_t *name, size_t nlen, const uint8_t *value,
                      size_t vlen)
{
    uint32_t no, vo;

    if (hh->err != NULL) {
        return;
    }
    if (nlen > 0 && name[0] == ':') {
        static const char *const names[] = {":method", ":path", ":authority", ":scheme"};
        for (int i = 0; i < 4; i++) {
            if (nlen == strlen(names[i]) && memcmp(name, names[i], nlen) == 0) {
                if (hb_add(hh, value, vlen, &vo) != 0) {
                    head_refuse(hh, "Request header fields too large");
                    return;
                }
                hh->poff[i] = vo + 1;
                hh->plen[i] = (uint32_t)vlen;
                return;
            }
        }
        return; /* (nghttp2 refuses unknown pseudo-headers itself) */
    }
    if (hh->n >= WK_MAX_HEADERS) {
        head_refuse(hh, "Too many header fields");
        return;
    }
    if (!wk_value_ok((const char *)value, vlen) || !wk_token_ok((const char *)name, nlen)) {
        head_refuse(hh, "Malformed header field");
        return;
    }
    if (hb_add(hh, name, nlen, &no) != 0 || hb_add(hh, value, vlen, &vo) != 0) {
        head_refuse(hh, "Request header fields too large");
        return;
    }
    /* Offsets while the block grows; pointers once it is complete. */
    hh->noff[hh->n] = no;
    hh->nlen[hh->n] = (uint32_t)nlen;
    hh->voff[hh->n] = vo;
    hh->vlen[hh->n] = (uint32_t)vlen;
    hh->n++;
}

/* The header block is complete: turn it into a parsed request for the exchange. Returns 0, or the
 * status to refuse it with (<why> says why). */
unsigned wk_h2_head_request(struct wk_h2_head *hh, int end_stream, struct wk_h1_req *rq,
                            const char **why)
{
    const char *m, *path, *auth = NULL, *clv = NULL;
    size_t mlen, plen, alen = 0, clvl = 0;
    uint32_t cookie = 0, w = 0;
    int expect = 0;

    memset(rq, 0, sizeof(*rq));
    rq->clen = ULLONG_MAX;
    if (hh->err != NULL) {
        *why = hh->err;
        return strstr(hh->err, "too large") || strstr(hh->err, "Too many") ? 431 : 400;
    }
    if (hh->poff[WK_H2_P_METHOD] == 0 || hh->poff[WK_H2_P_PATH] == 0 ||
        hh->poff[WK_H2_P_SCHEME] == 0) {
        *why = "Missing :method, :path or :scheme";
        return 400;
    }
    m = hh->hb + hh->poff[WK_H2_P_METHOD] - 1;
    mlen = hh->plen[WK_H2_P_METHOD];
    path = hh->hb + hh->poff[WK_H2_P_PATH] - 1;
    plen = hh->plen[WK_H2_P_PATH];
    if (hh->poff[WK_H2_P_AUTHORITY] != 0) {
        auth = hh->hb + hh->poff[WK_H2_P_AUTHORITY] - 1;
        alen = hh->plen[WK_H2_P_AUTHORITY];
    }
    for (uint32_t i = 0; i < hh->n; i++) {
        struct wk_hdr *h = &rq->hd.h[w];
        h->name = hh->hb + hh->noff[i];
        h->nlen = hh->nlen[i];
        h->value = hh->hb + hh->voff[i];
        h->vlen = hh->vlen[i];
        if (h->nlen == 4 && memcmp(h->name, "host", 4) == 0 && auth == NULL) {
            auth = h->value; /* (:authority wins over Host when both are there) */
            alen = h->vlen;
        }
        if (h->nlen == 14 && memcmp(h->name, "content-length", 14) == 0) {
            if (clv != NULL && (clvl != h->vlen || memcmp(clv, h->value, clvl) != 0)) {
                *why = "Conflicting Content-Length";
                return 400;
            }
            clv = h->value;
            clvl = h->vlen;
        }
        if (h->nlen == 6 && memcmp(h->name, "expect", 6) == 0 &&
            wk_hdr_has_token(h->value, h->vlen, "100-continue")) {
            expect = 1;
        }
        if (h->nlen == 6 && memcmp(h->name, "cookie", 6) == 0) {
            if (cookie != 0) {
                /* RFC 9113 8.2.3: the crumbs become one field again for HTTP/1.1. */
                struct wk_hdr *c0 = &rq->hd.h[cookie - 1];
                if (hh->hb_len + c0->vlen + 2 + h->vlen > hh->hb_cap) {
                    *why = "Request header fields too large";
                    return 431;
                }
                memcpy(hh->hb + hh->hb_len, c0->value, c0->vlen);
                memcpy(hh->hb + hh->hb_len + c0->vlen, "; ", 2);
                memcpy(hh->hb + hh->hb_len + c0->vlen + 2, h->value, h->vlen);
                c0->value = hh->hb + hh->hb_len;
                c0->vlen += 2 + h->vlen;
                hh->hb_len += c0->vlen;
                continue;
            }
            cookie = w + 1;
        }
        w++;
    }
    rq->hd.n = w;
    rq->hd.url = path;
    rq->hd.url_len = (uint32_t)plen;
    if (!wk_h1_method_num(m, mlen, &rq->method)) {
        *why = "Unknown method";
        return 400;
    }
    if (mlen == 7 && memcmp(m, "CONNECT", 7) == 0) {
        *why = "CONNECT is not supported";
        return 405;
    }
    if (auth == NULL || alen == 0 || !wk_host_ok(auth, alen)) {
        *why = auth == NULL || alen == 0 ? "Missing :authority" : "Invalid :authority";
        return 400;
    }
    if (memchr(path, '#', plen) != NULL ||
        !(plen > 0 && (path[0] == '/' || (plen == 1 && path[0] == '*' && mlen == 7 &&
                                          memcmp(m, "OPTIONS", 7) == 0)))) {
        *why = "Invalid :path";
        return 400;
    }
    if (clv != NULL && !wk_content_length(clv, clvl, &rq->clen)) {
        *why = "Invalid Content-Length";
        return 400;
    }
    rq->major = 2;
    rq->minor = 0;
    rq->host = auth;
    rq->hostlen = alen;
    rq->target = path;
    rq->tlen = plen;
    rq->path = path;
    rq->pathlen = memchr(path, '?', plen) ? (size_t)((const char *)memchr(path, '?', plen) - path)
                                          : plen;
    rq->chunked = !end_stream && rq->clen == ULLONG_MAX;
    rq->flags = WK_H1_KEEPALIVE;
    if (end_stream) {
        rq->flags |= WK_H1_DONE;
    } else if (expect) {
        rq->flags |= WK_H1_CONTINUE;
    }
    if (rq->method == wk_h1_method_head()) {
        rq->flags |= WK_H1_HEAD;
    }
    if (wk_h1_method_idempotent(rq->method)) {
        rq->flags |= WK_H1_IDEMPOTENT;
    }
    return 0;
}

int wk_h2_head_grpc(const struct wk_h2_head *hh)
{
    for (uint32_t i = 0; i < hh->n; i++) {
        if (hh->nlen[i] == 12 && memcmp(hh->hb + hh->noff[i], "content-type", 12) == 0) {
            return wk_grpc_ctype(hh->hb + hh->voff[i], hh->vlen[i]);
        }
    }
    return 0;
}

uint32_t wk_h2_head_trailers(const struct wk_h2_head *hh, struct wk_hdr *out)
{
    uint32_t k = 0;

    for (uint32_t i = 0; i < hh->n; i++) {
        const char *name = hh->hb + hh->noff[i];
        if (!wk_trailer_ok(name, hh->nlen[i]) || memchr(name, '_', hh->nlen[i]) != NULL) {
            continue; /* (underscores: as for header fields, wk_h1_write_request()) */
        }
        out[k].name = name;
        out[k].nlen = hh->nlen[i];
        out[k].value = hh->hb + hh->voff[i];
        out[k].vlen = hh->vlen[i];
        k++;
    }
    return k;
}

size_t wk_h2_last_chunk(char *out, size_t cap, const struct wk_hdr *f, uint32_t n)
{
    struct str_buf sb;

    str_init(&sb, out, cap);
    str_adds(&sb, "0\r\n");
    for (uint32_t i = 0; i < n; i++) {
        str_add(&sb, f[i].name, f[i].nlen);
        str_adds(&sb, ": ");
        str_add(&sb, f[i].value, f[i].vlen);
        str_adds(&sb, "\r\n");
    }
    str_adds(&sb, "\r\n");
    return sb.overflow ? 0 : sb.len;
}

/* ---- what goes to the client ------------------------------------------------------------------
 */
static size_t nv_put(nghttp2_nv *nv, const char *name, size_t nlen, const char *value, size_t vlen)
{
    nv->name = (uint8_t *)(uintptr_t)name;
    nv->namelen = nlen;
    nv->value = (uint8_t *)(uintptr_t)value;
    nv->valuelen = vlen;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
    return 1;
}

/* X-Request-ID differs in every response: entering it in the HPACK table would only evict the
 * fields that repeat (and cost an insertion and an eviction per response). */
static size_t nv_reqid(nghttp2_nv *nv, const char *reqid, size_t reqid_len)
{
    nv_put(nv, "x-request-id", 12, reqid, reqid_len);
    nv->flags = NGHTTP2_NV_FLAG_NO_INDEX;
    return 1;
}

/* Lower-case <n> bytes of <name> into <to>. */
static void lower(char *to, const char *name, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        char ch = name[k];
        to[k] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
}

int wk_h2_submit_head(nghttp2_session *s, int32_t id, const struct wk_h1_resp *rs,
                      const char *reqid, size_t reqid_len, const nghttp2_data_provider *prd)
{
    const struct wk_head *hd = &rs->hd;
    nghttp2_nv nva[WK_MAX_HEADERS + 2];
    char sbuf[8], lowbuf[1024], *low = lowbuf;
    size_t n = 0, total = 0, at = 0;
    /* a body HTTP/2 frames itself, or none at all: no Content-Length */
    int no_clen = rs->chunked || rs->status < 200 || rs->status == 204 || rs->status == 304;
    int r;

    for (uint32_t i = 0; i < hd->n; i++) {
        total += hd->h[i].nlen;
    }
    if (total >= sizeof(lowbuf) && (low = malloc(total + 1)) == NULL) {
        return -1;
    }
    snprintf(sbuf, sizeof(sbuf), "%u", rs->status);
    n += nv_put(&nva[n], ":status", 7, sbuf, strlen(sbuf));
    for (uint32_t i = 0; i < hd->n; i++) {
        const struct wk_hdr *h = &hd->h[i];
        /* (connection-specific fields are forbidden in HTTP/2; X-Request-ID is ours) */
        if (wk_hdr_hop(hd, h->name, h->nlen) || wk_hdr_is(h, "x-request-id", 12) ||
            (no_clen && wk_hdr_is(h, "content-length", 14))) {
            continue;
        }
        lower(low + at, h->name, h->nlen);
        n += nv_put(&nva[n], low + at, h->nlen, h->value, h->vlen);
        at += h->nlen;
    }
    if (reqid_len > 0) {
        n += nv_reqid(&nva[n], reqid, reqid_len);
    }
    r = rs->status < 200 ? nghttp2_submit_headers(s, NGHTTP2_FLAG_NONE, id, NULL, nva, n, NULL)
                         : nghttp2_submit_response(s, id, nva, n, prd);
    if (low != lowbuf) {
        free(low);
    }
    return r < 0 ? -1 : 0;
}

/* The fields every generated answer of <x> ends with: a middleware's (Location,
 * WWW-Authenticate, Retry-After...), names lower-cased, then our X-Request-ID. */
static size_t reply_fields(struct wk_xchg *x, nghttp2_nv *nva, size_t n, size_t max)
{
    if (x->tx != NULL && x->tx->mw.xh_len > 0) {
        size_t at = 0, nl, vl;
        char *nm;
        const char *v;
        while (n < max - 1 && wk_mw_xh_next(x, &at, &nm, &nl, &v, &vl)) {
            lower(nm, nm, nl);
            n += nv_put(&nva[n], nm, nl, v, vl);
        }
    }
    if (x->tx != NULL && x->tx->reqid_len > 0) {
        n += nv_reqid(&nva[n], x->tx->reqid, x->tx->reqid_len);
    }
    return n;
}

int wk_h2_submit_reply(nghttp2_session *s, int32_t id, struct wk_xchg *x, unsigned status,
                       const char *ctype, size_t blen, const nghttp2_data_provider *prd)
{
    nghttp2_nv nva[4 + 32];
    char sbuf[8], lbuf[24];
    size_t n = 0;

    snprintf(sbuf, sizeof(sbuf), "%u", status);
    snprintf(lbuf, sizeof(lbuf), "%zu", blen);
    n += nv_put(&nva[n], ":status", 7, sbuf, strlen(sbuf));
    if (status != 204 && status != 304) {
        n += nv_put(&nva[n], "content-type", 12, ctype, strlen(ctype));
        n += nv_put(&nva[n], "content-length", 14, lbuf, strlen(lbuf));
    }
    n = reply_fields(x, nva, n, DSP_ARRAY_SIZE(nva));
    return nghttp2_submit_response(s, id, nva, n, prd) != 0 ? -1 : 0;
}

int wk_h2_submit_grpc_error(nghttp2_session *s, int32_t id, struct wk_xchg *x, unsigned status,
                            const char *body, size_t blen)
{
    nghttp2_nv nva[4 + 32];
    char code[12], msg[512];
    size_t n = 0, ml = wk_grpc_message(status, body, blen, msg, sizeof(msg));

    snprintf(code, sizeof(code), "%u", wk_grpc_code(status, body, blen));
    n += nv_put(&nva[n], ":status", 7, "200", 3);
    n += nv_put(&nva[n], "content-type", 12, "application/grpc", 16);
    n += nv_put(&nva[n], "grpc-status", 11, code, strlen(code));
    n += nv_put(&nva[n], "grpc-message", 12, msg, ml);
    n = reply_fields(x, nva, n, DSP_ARRAY_SIZE(nva));
    return nghttp2_submit_response(s, id, nva, n, NULL) != 0 ? -1 : 0;
}

struct wk_h2_fields *wk_h2_fields_new(const struct wk_hdr *f, uint32_t n)
{
    size_t bytes = 0, k = 0;
    struct wk_h2_fields *tf;
    char *p;

    for (uint32_t i = 0; i < n; i++) {
        bytes += f[i].nlen + f[i].vlen;
    }
    tf = malloc(sizeof(*tf) + n * sizeof(nghttp2_nv) + bytes + 1);
    if (tf == NULL) {
        return NULL;
    }
    tf->nv = (nghttp2_nv *)(void *)(tf + 1);
    p = (char *)(tf->nv + n);
    for (uint32_t i = 0; i < n; i++) {
        if (!wk_trailer_ok(f[i].name, f[i].nlen) || !wk_value_ok(f[i].value, f[i].vlen)) {
            continue;
        }
        lower(p, f[i].name, f[i].nlen);
        memcpy(p + f[i].nlen, f[i].value, f[i].vlen);
        k += nv_put(&tf->nv[k], p, f[i].nlen, p + f[i].nlen, f[i].vlen);
        p += f[i].nlen + f[i].vlen;
    }
    tf->n = k;
    return tf;
}

void wk_h2_submit_continue(nghttp2_session *s, int32_t id)
{
    static const nghttp2_nv cont = {(uint8_t *)":status", (uint8_t *)"100", 7, 3, 0};

    nghttp2_submit_headers(s, NGHTTP2_FLAG_NONE, id, NULL, &cont, 1, NULL);
}

struct wk_h2_fields *wk_h2_grpc_status(unsigned code, const char *msg)
{
    char c[12];
    struct wk_hdr f[2];

    snprintf(c, sizeof(c), "%u", code);
    f[0] = (struct wk_hdr){"grpc-status", c, 11, (uint32_t)strlen(c)};
    f[1] = (struct wk_hdr){"grpc-message", msg, 12, (uint32_t)strlen(msg)};
    return wk_h2_fields_new(f, 2);
}

int wk_h2_grpc_deadline(struct wk_xchg *x, const struct wk_h1_req *rq, uint64_t *deadline)
{
    uint64_t ms;
    int r = wk_grpc_head_timeout(&rq->hd, &ms);

    if (r < 0) {
        r = wk_xchg_error(x, 400, "Bad request", "Malformed grpc-timeout", 1);
    } else if (r == 0 || ms > 0) {
        *deadline = r ? wk.now + ms : 0;
        return 0;
    } else {
        r = wk_xchg_error(x, 504, "Gateway timeout", "The call's deadline passed", 0);
    }
    return r < 0 ? -1 : 1;
}

/* ---- abuse limits -----------------------------------------------------------------------------
 */
void wk_h2_buf_release(struct wk_buf *b, size_t pooled)
{
    if (b->data != NULL && b->cap != pooled) {
        free(b->data); /* (a grown size would take a slot of the pool's few sizes) */
        b->data = NULL;
    }
    wk_buf_put(b);
}

int wk_h2_buf_room(struct wk_buf *b, size_t need, size_t max, size_t pooled)
{
    struct wk_buf old = *b;
    size_t cap;

    if (need == 0 && b->data != NULL && b->end <= max) {
        need = DSP_MAX(max - b->end, (size_t)1); /* (all it may take) */
    }
    if (b->data != NULL && need <= b->cap - b->end) {
        return 0;
    }
    if (b->data == NULL || b->end > max || need > max - b->end) {
        return -1;
    }
    cap = DSP_MIN(max, DSP_MAX(2 * (size_t)b->cap, b->end + need));
    if ((b->data = malloc(cap)) == NULL) {
        *b = old;
        return -1;
    }
    memcpy(b->data, old.data, old.end);
    b->cap = (uint32_t)cap;
    wk_h2_buf_release(&old, pooled);
    return 0;
}

/* ---- the session's memory ------------------------------------------------------------------- */
#define H2_BIG 16384 /* allocations this large (the frame buffer) get their own mapping */

static int big_find(const struct wk_h2_mem *m, const void *p)
{
    for (int i = 0; p != NULL && i < WK_H2_BIG_MAX; i++) {
        if (m->big[i].p == p) {
            return i;
        }
    }
    return -1;
}

/* A mapping of at least <size> bytes, or NULL (then the heap serves it). */
static void *big_new(struct wk_h2_mem *m, size_t size)
{
    size_t len = (size + 4095) & ~(size_t)4095;
    int i = 0;
    void *p;

    while (i < WK_H2_BIG_MAX && m->big[i].p != NULL) {
        i++;
    }
    if (i == WK_H2_BIG_MAX) {
        return NULL;
    }
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        return NULL;
    }
    m->big[i].p = p;
    m->big[i].len = len;
    m->dirty = 1;
    return p;
}

static void *h2_malloc(size_t size, void *ud)
{
    struct wk_h2_mem *m = ud;
    void *p = size >= H2_BIG && m->map ? big_new(m, size) : NULL;

    return p != NULL ? p : malloc(size);
}

static void h2_free(void *p, void *ud)
{
    struct wk_h2_mem *m = ud;
    int i = big_find(m, p);

    if (i < 0) {
        free(p);
        return;
    }
    munmap(p, m->big[i].len);
    m->big[i].p = NULL;
}

static void *h2_calloc(size_t n, size_t size, void *ud)
{
    (void)ud;
    return calloc(n, size);
}

static void *h2_realloc(void *p, size_t size, void *ud)
{
    struct wk_h2_mem *m = ud;
    int i = big_find(m, p);
    void *q;

    if (p == NULL) {
        return h2_malloc(size, ud);
    }
    if (i < 0) {
        return realloc(p, size); /* (a heap block stays on the heap) */
    }
    if (size <= m->big[i].len) {
        return p;
    }
    q = h2_malloc(size, ud);
    if (q != NULL) {
        memcpy(q, p, m->big[i].len);
        h2_free(p, ud);
    }
    return q;
}

void wk_h2_mem_init(struct wk_h2_mem *m)
{
    memset(m, 0, sizeof(*m));
    m->mem.mem_user_data = m;
    m->mem.malloc = h2_malloc;
    m->mem.free = h2_free;
    m->mem.calloc = h2_calloc;
    m->mem.realloc = h2_realloc;
}

void wk_h2_mem_idle(struct wk_h2_mem *m)
{
    if (!m->dirty) {
        return;
    }
    m->dirty = 0;
    for (int i = 0; i < WK_H2_BIG_MAX; i++) {
        if (m->big[i].p != NULL) {
            madvise(m->big[i].p, m->big[i].len, MADV_DONTNEED);
        }
    }
}

void wk_h2_guard_options(nghttp2_option *opt)
{
    nghttp2_option_set_stream_reset_rate_limit(opt, 2u * h2_rl[WK_H2_RL_RESET].burst,
                                               2u * h2_rl[WK_H2_RL_RESET].per_s);
    nghttp2_option_set_max_continuations(opt, H2_MAX_CONTINUATIONS);
    nghttp2_option_set_max_settings(opt, H2_MAX_SETTINGS);
    nghttp2_option_set_max_outbound_ack(opt, H2_MAX_OUTBOUND_ACK);
}

void wk_h2_guard_count(unsigned kind)
{
    if (wk.ctl != NULL && wk.slot >= 0 && (unsigned)wk.slot < SHM_MAX_WORKERS &&
        kind < SHM_H2_ABUSE_KINDS) {
        __atomic_fetch_add(&wk.ctl->h2[wk.slot].abuse[kind], 1, __ATOMIC_RELAXED);
    }
}

int wk_h2_guard_abuse(struct wk_h2_guard *g, nghttp2_session *s, unsigned kind)
{
    if (!g->abused) {
        g->abused = 1;
        wk_h2_guard_count(kind);
        log_debug("HTTP/2 client abuse (%s): GOAWAY ENHANCE_YOUR_CALM", shm_h2_abuse_name(kind));
        nghttp2_session_terminate_session(s, NGHTTP2_ENHANCE_YOUR_CALM);
    }
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* Take one token of bucket <k>: 0, or -1 when the client is over its limit. */
static int rl_take(struct wk_h2_guard *g, unsigned k)
{
    uint64_t now = wk.now;

    if (g->rl[k].at == 0) {
        g->rl[k].tokens = h2_rl[k].burst;
        g->rl[k].at = now ? now : 1;
    } else if (now > g->rl[k].at) {
        uint64_t add = (now - g->rl[k].at) * h2_rl[k].per_s / 1000;
        if (add > 0) {
            g->rl[k].tokens = (uint32_t)DSP_MIN((uint64_t)h2_rl[k].burst, g->rl[k].tokens + add);
            g->rl[k].at = g->rl[k].tokens == h2_rl[k].burst
                              ? now
                              : g->rl[k].at + add * 1000 / h2_rl[k].per_s;
        }
    }
    if (g->rl[k].tokens == 0) {
        return -1;
    }
    g->rl[k].tokens--;
    return 0;
}

static int rl_check(struct wk_h2_guard *g, nghttp2_session *s, unsigned k)
{
    return rl_take(g, k) == 0 ? 0 : wk_h2_guard_abuse(g, s, h2_rl[k].kind);
}

int wk_h2_guard_frame(struct wk_h2_guard *g, nghttp2_session *s, const nghttp2_frame *f)
{
    switch (f->hd.type) {
    case NGHTTP2_RST_STREAM:
        return rl_check(g, s, WK_H2_RL_RESET);
    case NGHTTP2_SETTINGS:
        g->acked |= (f->hd.flags & NGHTTP2_FLAG_ACK) != 0;
        return (f->hd.flags & NGHTTP2_FLAG_ACK) || g->waking ? 0
                                                             : rl_check(g, s, WK_H2_RL_SETTINGS);
    case NGHTTP2_GOAWAY:
        g->gone = 1;
        return 0;
    case NGHTTP2_PING:
        return rl_check(g, s, WK_H2_RL_PING);
    case NGHTTP2_PRIORITY:
        return rl_check(g, s, WK_H2_RL_PRIORITY);
    case NGHTTP2_DATA:
        return f->hd.length == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM)
                   ? rl_check(g, s, WK_H2_RL_EMPTY_DATA)
                   : 0;
    default:
        return 0;
    }
}

int wk_h2_guard_invalid(struct wk_h2_guard *g, nghttp2_session *s, int err)
{
    /* A stream beyond SETTINGS_MAX_CONCURRENT_STREAMS, a frame on a closed stream, a window
     * overflow...: a stream the client made us reset counts like one it reset itself. */
    if (g->waking) {
        return 0; /* (wk_h2_wake's synthetic stream) */
    }
    if (err == NGHTTP2_ERR_REFUSED_STREAM) {
        wk_h2_guard_count(SHM_H2_REFUSED_STREAM);
    }
    return rl_check(g, s, WK_H2_RL_RESET);
}

int wk_h2_guard_header(struct wk_h2_guard *g, nghttp2_session *s, uint64_t *hsize, size_t nlen,
                       size_t vlen, uint64_t max_header_bytes)
{
    *hsize += nlen + vlen + 32;
    if (*hsize > max_header_bytes * H2_BOMB_FACTOR + 4096) {
        return wk_h2_guard_abuse(g, s, SHM_H2_HPACK_BOMB);
    }
    return 0;
}

int wk_h2_guard_recv(struct wk_h2_guard *g, nghttp2_session *s, const uint8_t *p, size_t n)
{
    ssize_t r;

    if (g->abused) {
        return -1;
    }
    r = nghttp2_session_mem_recv(s, p, n);
    if (r >= 0) {
        return 0;
    }
    if (r == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS) {
        wk_h2_guard_abuse(g, s, SHM_H2_CONTINUATION);
    } else if (r == NGHTTP2_ERR_FLOODED) {
        wk_h2_guard_abuse(g, s, SHM_H2_ACK_FLOOD);
    }
    return -1;
}
