/* dispatcher: the HTTP/1 codec (see wk_h1.h). http-parser is the tokenizer; every rule the worker
 * enforces on top of it is here, in the order the worker always applied them (the first failing
 * rule names the error). */
#include "worker/wk_h1.h"

#include <limits.h>
#include <string.h>
#include <strings.h>

#include "common/str.h"
#include "worker/wk_internal.h"

/* ---- tokenizer callbacks: results go to the message's own storage, nothing file-level ----- */
static int on_url(http_parser *p, const char *at, size_t len)
{
    struct wk_head *hd = ((struct wk_h1_msg *)p->data)->hd;

    if (hd == NULL) {
        return 1;
    }
    if (hd->url == NULL) {
        hd->url = at;
        hd->url_len = (uint32_t)len;
    } else {
        hd->url_len += (uint32_t)len;
    }
    return 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
    struct wk_h1_msg *m = p->data;

    if (m->reason == NULL) {
        m->reason = at;
        m->reason_len = (uint32_t)len;
    } else {
        m->reason_len += (uint32_t)len;
    }
    return 0;
}

static int on_hfield(http_parser *p, const char *at, size_t len)
{
    struct wk_head *hd = ((struct wk_h1_msg *)p->data)->hd;
    struct wk_hdr *h;

    if (hd == NULL) {
        return 0; /* a trailer: forwarded (validated) as body bytes, never a head field */
    }
    if (hd->n > 0 && !hd->in_value) {
        h = &hd->h[hd->n - 1];
        if (h->name + h->nlen == at) {
            h->nlen += (uint32_t)len;
            return 0;
        }
    }
    if (hd->n == WK_MAX_HEADERS) {
        hd->too_many = 1;
        return 1;
    }
    h = &hd->h[hd->n++];
    h->name = at;
    h->nlen = (uint32_t)len;
    h->value = "";
    h->vlen = 0;
    hd->in_value = 0;
    return 0;
}

static int on_hvalue(http_parser *p, const char *at, size_t len)
{
    struct wk_head *hd = ((struct wk_h1_msg *)p->data)->hd;
    struct wk_hdr *h;

    if (hd == NULL) {
        return 0;
    }
    if (hd->n == 0) {
        return 1;
    }
    h = &hd->h[hd->n - 1];
    if (!hd->in_value) {
        h->value = at;
        h->vlen = (uint32_t)len;
        hd->in_value = 1;
    } else if (h->value + h->vlen == at) {
        h->vlen += (uint32_t)len;
    } else {
        /* Obsolete line folding: RFC 7230 lets a proxy reject it, which is safer than guessing. */
        hd->folded = 1;
        return 1;
    }
    return 0;
}

static int on_headers_complete_req(http_parser *p)
{
    (void)p;
    return 0;
}

static int on_headers_complete_resp(http_parser *p)
{
    const struct wk_h1_msg *m = p->data;

    /* http-parser would wait for the body a 204 or 304 with a Content-Length announces. */
    return wk_h1_bodyless(m->head_req, p->status_code) ? 1 : 0;
}

static int on_message_complete(http_parser *p)
{
    ((struct wk_h1_msg *)p->data)->done = 1;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings req_settings = {
    .on_url = on_url,
    .on_header_field = on_hfield,
    .on_header_value = on_hvalue,
    .on_headers_complete = on_headers_complete_req,
    .on_message_complete = on_message_complete,
};

static const http_parser_settings resp_settings = {
    .on_status = on_status,
    .on_header_field = on_hfield,
    .on_header_value = on_hvalue,
    .on_headers_complete = on_headers_complete_resp,
    .on_message_complete = on_message_complete,
};

static void msg_init(struct wk_h1_msg *m, enum http_parser_type type, struct wk_head *hd,
                     int head_req)
{
    http_parser_init(&m->p, type);
    m->p.data = m;
    m->hd = hd;
    m->reason = NULL;
    m->reason_len = 0;
    m->done = 0;
    m->head_req = (uint8_t)(head_req != 0);
    wk_head_reset(hd);
}

/* ---- heads ----------------------------------------------------------------------------------- */
size_t wk_h1_head_end(const char *p, size_t n, size_t from)
{
    size_t i = from > 3 ? from - 3 : 0;

    while (i < n) {
        const char *nl = memchr(p + i, '\n', n - i);
        size_t k;
        if (nl == NULL) {
            return 0;
        }
        k = (size_t)(nl - p) + 1;
        if (k < n && p[k] == '\n') {
            return k + 1;
        }
        if (k + 1 < n && p[k] == '\r' && p[k + 1] == '\n') {
            return k + 2;
        }
        i = k;
    }
    return 0;
}

static int is_idempotent(unsigned method)
{
    return method == HTTP_GET || method == HTTP_HEAD || method == HTTP_PUT ||
           method == HTTP_DELETE || method == HTTP_OPTIONS || method == HTTP_TRACE;
}

/* Trim OWS around a header value. */
static void ows_trim(const char **v, size_t *n)
{
    while (*n > 0 && (**v == ' ' || **v == '\t')) {
        (*v)++;
        (*n)--;
    }
    while (*n > 0 && ((*v)[*n - 1] == ' ' || (*v)[*n - 1] == '\t')) {
        (*n)--;
    }
}

/* An absolute-form target "scheme://authority[path-abempty][?query]": checks it (http or https,
 * a valid authority, no userinfo, no fragment) and finds its authority and the origin-form rest.
 * Returns 0 or -1. */
static int absolute_form(const char *t, size_t n, const char **auth, size_t *alen,
                         const char **rest, size_t *rlen)
{
    size_t i = 0, a;

    if (n > 7 && strncasecmp(t, "http://", 7) == 0) {
        i = 7;
    } else if (n > 8 && strncasecmp(t, "https://", 8) == 0) {
        i = 8;
    } else {
        return -1;
    }
    a = i;
    while (i < n && t[i] != '/' && t[i] != '?') {
        i++;
    }
    if (!wk_host_ok(t + a, i - a)) {
        return -1;
    }
    *auth = t + a;
    *alen = i - a;
    *rest = t + i;
    *rlen = n - i;
    return 0;
}

#define BAD(msg) (rq->err = (msg), 400u)

/* Framing headers (RFC 9112 6): one Host, one valid Content-Length, Transfer-Encoding "chunked"
 * only, once, in HTTP/1.1, never with a Content-Length. */
static unsigned req_framing(const http_parser *p, struct wk_h1_req *rq, const struct wk_hdr **hosth)
{
    int ncl = 0, nte = 0, chunked_seen = 0, te_bad = 0;

    for (uint32_t i = 0; i < rq->hd.n; i++) {
        const struct wk_hdr *h = &rq->hd.h[i];
        if (wk_hdr_is(h, "host", 4)) {
            if (*hosth != NULL) {
                return BAD("Multiple Host headers");
            }
            *hosth = h;
        } else if (wk_hdr_is(h, "content-length", 14)) {
            const char *v = h->value;
            size_t vl = h->vlen;
            ows_trim(&v, &vl);
            if (++ncl > 1 || !wk_content_length(v, vl, &rq->clen)) {
                return BAD("Invalid or repeated Content-Length");
            }
        } else if (wk_hdr_is(h, "transfer-encoding", 17)) {
            nte++;
            if (!wk_te_chunked_only(h->value, h->vlen, &chunked_seen)) {
                te_bad = 1;
            }
        } else if (wk_hdr_is(h, "expect", 6)) {
            if (h->vlen == 12 && strncasecmp(h->value, "100-continue", 12) == 0) {
                rq->flags |= WK_H1_CONTINUE;
            }
        }
    }
    if (nte > 0) {
        /* Only "chunked", once, and only in HTTP/1.1 (RFC 9112 6.1): anything else could be read
         * with other boundaries by the next hop. */
        if (te_bad || chunked_seen != 1 || p->http_minor == 0) {
            return BAD("Unsupported Transfer-Encoding");
        }
        if (ncl > 0) {
            return BAD("Both Content-Length and Transfer-Encoding");
        }
        if (!(p->flags & F_CHUNKED)) {
            return BAD("Unsupported Transfer-Encoding");
        }
    } else if (p->flags & F_CHUNKED) {
        return BAD("Unsupported Transfer-Encoding");
    }
    rq->chunked = nte > 0;
    return 0;
}

/* The request target (origin, absolute or asterisk form) and the Host it is routed on. */
static unsigned req_target(const http_parser *p, struct wk_h1_req *rq, const struct wk_hdr *hosth)
{
    const char *target = rq->hd.url;
    size_t tlen = rq->hd.url_len;

    if (target == NULL || tlen == 0) {
        return BAD("Missing request target");
    }
    if (memchr(target, '#', tlen) != NULL) {
        return BAD("Invalid request target");
    }
    if (target[0] == '/') {
        const char *q = memchr(target, '?', tlen);
        rq->path = target;
        rq->pathlen = q ? (size_t)(q - target) : tlen;
    } else if (p->method == HTTP_OPTIONS && tlen == 1 && target[0] == '*') {
        rq->path = target;
        rq->pathlen = 1;
    } else {
        /* absolute-form: its authority is the Host that is routed on and forwarded, the
         * origin-form goes upstream */
        const char *rest;
        size_t rlen;
        if (absolute_form(target, tlen, &rq->host, &rq->hostlen, &rest, &rlen) != 0) {
            return BAD("Invalid request target");
        }
        rq->abs_host = rq->host;
        rq->abs_hostlen = rq->hostlen;
        target = rest;
        tlen = rlen;
        rq->slash = tlen == 0 || target[0] != '/';
        if (rq->slash) {
            rq->path = "/";
            rq->pathlen = 1;
        } else {
            const char *q = memchr(target, '?', tlen);
            rq->path = target;
            rq->pathlen = q ? (size_t)(q - target) : tlen;
        }
    }
    rq->target = target;
    rq->tlen = tlen;
    if (hosth != NULL) {
        const char *v = hosth->value;
        size_t vl = hosth->vlen;
        ows_trim(&v, &vl);
        if (!wk_host_ok(v, vl)) {
            return BAD("Invalid Host header");
        }
        if (rq->host == NULL) {
            rq->host = v;
            rq->hostlen = vl;
        }
    } else if (p->http_minor >= 1) {
        return BAD("Missing Host header");
    }
    return 0;
}

unsigned wk_h1_parse_request(const char *base, size_t hlen, struct wk_h1_req *rq)
{
    struct wk_h1_msg m;
    const struct wk_hdr *hosth = NULL;
    enum http_errno err;
    size_t n;
    unsigned st;

    msg_init(&m, HTTP_REQUEST, &rq->hd, 0);
    rq->flags = 0;
    rq->chunked = 0;
    rq->clen = UINT64_MAX;
    rq->host = rq->abs_host = NULL;
    rq->hostlen = rq->abs_hostlen = 0;
    rq->target = rq->path = NULL;
    rq->tlen = rq->pathlen = 0;
    rq->slash = 0;
    rq->err = NULL;
    n = http_parser_execute(&m.p, &req_settings, base, hlen);
    m.hd = NULL;
    err = HTTP_PARSER_ERRNO(&m.p);
    rq->method = m.p.method;
    rq->major = (uint8_t)m.p.http_major;
    rq->minor = (uint8_t)m.p.http_minor;
    if (m.done) {
        rq->flags |= WK_H1_DONE;
    }
    if (rq->hd.too_many) {
        rq->err = "Too many header fields";
        return 431;
    }
    if ((err != HPE_OK && err != HPE_PAUSED) || n != hlen) {
        return BAD(rq->hd.folded ? "Obsolete header line folding" : http_errno_description(err));
    }
    {
        const char *nl = memchr(base, '\n', hlen);
        if (nl == NULL || !wk_request_line_ok(base, (size_t)(nl - base))) {
            return BAD("Malformed request line");
        }
    }
    if (m.p.http_major != 1 || m.p.http_minor > 1) {
        return BAD("Unsupported HTTP version (HTTP/1.0 or 1.1 only)");
    }
    for (uint32_t i = 0; i < rq->hd.n; i++) {
        if (!wk_token_ok(rq->hd.h[i].name, rq->hd.h[i].nlen) ||
            !wk_value_ok(rq->hd.h[i].value, rq->hd.h[i].vlen)) {
            return BAD("Malformed header field");
        }
    }
    /* CRLF line ends only, no NUL, no obs-fold: a lenient reader must not find other lines. */
    if (!wk_head_tiled(base, hlen, &rq->hd)) {
        return BAD("Malformed request head (bare CR or LF, NUL or obsolete line folding)");
    }
    if (m.p.method == HTTP_CONNECT) {
        rq->err = "CONNECT is not supported";
        return 405;
    }
    st = req_framing(&m.p, rq, &hosth);
    if (st == 0) {
        st = req_target(&m.p, rq, hosth);
    }
    if (st != 0) {
        return st;
    }
    if (http_should_keep_alive(&m.p)) {
        rq->flags |= WK_H1_KEEPALIVE;
    }
    if (m.p.method == HTTP_HEAD) {
        rq->flags |= WK_H1_HEAD;
    }
    if (m.p.upgrade) {
        rq->flags |= WK_H1_UPGRADE;
    }
    if (is_idempotent(m.p.method)) {
        rq->flags |= WK_H1_IDEMPOTENT;
    }
    return 0;
}

int wk_h1_parse_response(struct wk_h1_msg *m, const char *base, size_t hlen, int head_req,
                         struct wk_h1_resp *rs)
{
    enum http_errno err;
    size_t n;
    int status;

    /* Strict framing: a status line and CRLF lines as RFC 9112 writes them, and a status in
     * 100-599; anything else is a 502, never relayed. */
    status = wk_resp_status_line(base, hlen);
    if (status < 100 || status > 599) {
        return -1;
    }
    msg_init(m, HTTP_RESPONSE, &rs->hd, head_req);
    n = http_parser_execute(&m->p, &resp_settings, base, hlen);
    m->hd = NULL;
    err = HTTP_PARSER_ERRNO(&m->p);
    if ((err != HPE_OK && err != HPE_PAUSED) || n != hlen || rs->hd.too_many ||
        m->p.status_code != (unsigned)status) {
        return -1;
    }
    for (uint32_t i = 0; i < rs->hd.n; i++) {
        /* A backend must not smuggle a line break or junk into the client's response. */
        if (!wk_token_ok(rs->hd.h[i].name, rs->hd.h[i].nlen) ||
            !wk_value_ok(rs->hd.h[i].value, rs->hd.h[i].vlen)) {
            return -1;
        }
    }
    /* CRLF line ends only, no bare CR or LF, no obs-fold: the fields tile the head. */
    if (!wk_head_tiled(base, hlen, &rs->hd)) {
        return -1;
    }
    rs->status = m->p.status_code;
    rs->reason = m->reason;
    rs->reason_len = m->reason_len;
    rs->chunked = (m->p.flags & F_CHUNKED) != 0;
    rs->has_clen = (m->p.flags & F_CONTENTLENGTH) != 0;
    return 0;
}

/* ---- response bodies that are not chunked ---------------------------------------------------- */
long wk_h1_body(struct wk_h1_msg *m, const char *p, size_t n)
{
    size_t used = http_parser_execute(&m->p, &resp_settings, p, n);
    enum http_errno err = HTTP_PARSER_ERRNO(&m->p);

    if (err != HPE_OK && err != HPE_PAUSED) {
        return -1;
    }
    return (long)used;
}

void wk_h1_body_eof(struct wk_h1_msg *m)
{
    http_parser_execute(&m->p, &resp_settings, NULL, 0);
}

int wk_h1_keep_alive(const struct wk_h1_msg *m)
{
    return http_should_keep_alive(&m->p);
}

const char *wk_h1_method_str(unsigned method)
{
    return http_method_str((enum http_method)method);
}

int wk_h1_method_num(const char *s, size_t n, unsigned *out)
{
    for (unsigned m = 0; m < 64; m++) {
        const char *name = http_method_str((enum http_method)m);
        if (strcmp(name, "<unknown>") == 0) {
            break;
        }
        if (strlen(name) == n && memcmp(name, s, n) == 0) {
            *out = m;
            return 1;
        }
    }
    return 0;
}

int wk_h1_method_idempotent(unsigned method)
{
    return is_idempotent(method);
}

unsigned wk_h1_method_head(void)
{
    return HTTP_HEAD;
}

/* ---- writing heads --------------------------------------------------------------------------- */
/* Does a header name hold an underscore? Such names are dropped on the way upstream (as nginx
 * does): many frameworks read X_Forwarded_For as X-Forwarded-For. */
static int name_has_underscore(const struct wk_hdr *h)
{
    return memchr(h->name, '_', h->nlen) != NULL;
}

size_t wk_h1_write_request(char *out, size_t cap, const struct wk_head *hd,
                           const struct wk_h1_fwd *f)
{
    struct str_buf sb;
    const struct wk_hdr *xff[8];
    int nxff = 0;

    str_init(&sb, out, cap);
    str_adds(&sb, http_method_str((enum http_method)f->method));
    str_adds(&sb, f->slash ? " /" : " ");
    str_add(&sb, f->target, f->tlen);
    str_adds(&sb, " HTTP/1.1\r\n");
    for (uint32_t i = 0; i < hd->n; i++) {
        const struct wk_hdr *h = &hd->h[i];
        if (wk_hdr_is(h, "host", 4)) {
            continue; /* replaced by the Host that was routed on */
        }
        if (wk_hdr_is(h, "x-forwarded-for", 15)) {
            if (f->trusted && nxff < 8) {
                xff[nxff++] = h;
            }
            continue;
        }
        if (wk_hdr_is(h, "content-length", 14) || wk_hdr_is(h, "x-forwarded-proto", 17) ||
            wk_hdr_is(h, "x-forwarded-host", 16) || wk_hdr_is(h, "x-real-ip", 9) ||
            wk_hdr_is(h, "x-request-id", 12) || wk_hdr_is(h, "expect", 6) ||
            wk_hdr_is(h, "x-client-cert-subject", 21) || name_has_underscore(h) ||
            (!f->trusted && wk_hdr_is(h, "forwarded", 9))) {
            continue;
        }
        if (wk_hdr_hop(hd, h->name, h->nlen) && !(f->upgrade && wk_hdr_is(h, "upgrade", 7))) {
            continue;
        }
        str_add(&sb, h->name, h->nlen);
        str_adds(&sb, ": ");
        str_add(&sb, h->value, h->vlen);
        str_adds(&sb, "\r\n");
    }
    str_adds(&sb, "Host: ");
    if (f->hostlen > 0) {
        str_add(&sb, f->host, f->hostlen);
    } else {
        /* HTTP/1.0 without Host: name the service, the only host we know. */
        str_adds(&sb, f->dflt_host);
    }
    str_adds(&sb, "\r\nX-Forwarded-For: ");
    for (int i = 0; i < nxff; i++) {
        str_add(&sb, xff[i]->value, xff[i]->vlen);
        str_adds(&sb, ", ");
    }
    str_adds(&sb, f->peer_ip);
    str_adds(&sb, f->https ? "\r\nX-Forwarded-Proto: https" : "\r\nX-Forwarded-Proto: http");
    if (f->hostlen > 0) {
        str_adds(&sb, "\r\nX-Forwarded-Host: ");
        str_add(&sb, f->host, f->hostlen);
    }
    str_adds(&sb, "\r\nX-Real-IP: ");
    str_adds(&sb, f->real_ip);
    str_adds(&sb, "\r\nX-Request-ID: ");
    str_add(&sb, f->reqid, f->reqid_len);
    str_adds(&sb, "\r\n");
    if (f->cert_subject != NULL) {
        str_adds(&sb, "X-Client-Cert-Subject: ");
        str_adds(&sb, f->cert_subject);
        str_adds(&sb, "\r\n");
    }
    if (f->upgrade) {
        str_adds(&sb, "Connection: upgrade\r\n");
    }
    if (f->chunked) {
        str_adds(&sb, "Transfer-Encoding: chunked\r\n");
    } else if (f->clen != UINT64_MAX) {
        str_addf(&sb, "Content-Length: %llu\r\n", (unsigned long long)f->clen);
    }
    str_adds(&sb, "\r\n");
    return sb.overflow ? 0 : sb.len;
}

size_t wk_h1_write_response(char *out, size_t cap, const struct wk_h1_resp *rs, int te_chunked,
                            const char *reqid, size_t reqid_len, int conn)
{
    const struct wk_head *hd = &rs->hd;
    unsigned status = rs->status;
    /* 204 (and 1xx) must not carry framing headers at all; HEAD and 304 may keep the
     * Content-Length of the body they do not have. */
    int no_framing = status == 204 || status < 200;
    struct str_buf sb;

    str_init(&sb, out, cap);
    str_addf(&sb, "HTTP/1.1 %u ", status);
    if (rs->reason != NULL && rs->reason_len > 0 && rs->reason_len < 128) {
        str_add(&sb, rs->reason, rs->reason_len);
    } else {
        str_adds(&sb, wk_reason(status));
    }
    str_adds(&sb, "\r\n");
    for (uint32_t i = 0; i < hd->n; i++) {
        const struct wk_hdr *h = &hd->h[i];
        if (wk_hdr_is(h, "x-request-id", 12)) {
            continue;
        }
        if (no_framing && status != 101 && wk_hdr_is(h, "content-length", 14)) {
            continue;
        }
        if (wk_hdr_hop(hd, h->name, h->nlen) && !(status == 101 && wk_hdr_is(h, "upgrade", 7))) {
            continue;
        }
        str_add(&sb, h->name, h->nlen);
        str_adds(&sb, ": ");
        str_add(&sb, h->value, h->vlen);
        str_adds(&sb, "\r\n");
    }
    if (te_chunked) {
        str_adds(&sb, "Transfer-Encoding: chunked\r\n");
    }
    str_adds(&sb, "X-Request-ID: ");
    str_add(&sb, reqid, reqid_len);
    str_adds(&sb, "\r\n");
    if (conn == WK_H1_CONN_UPGRADE) {
        str_adds(&sb, "Connection: upgrade\r\n");
    } else if (conn == WK_H1_CONN_CLOSE) {
        str_adds(&sb, "Connection: close\r\n");
    } else if (conn == WK_H1_CONN_KEEPALIVE) {
        str_adds(&sb, "Connection: keep-alive\r\n");
    }
    str_adds(&sb, "\r\n");
    return sb.overflow ? 0 : sb.len;
}
