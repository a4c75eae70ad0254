/* dispatcher: libFuzzer target for HTTP/1 message heads as the worker reads them: the request
 * head a client sends and the response head a backend sends. The full processing lives in
 * worker/wk_conn.c (static, connection-bound); this target drives the same pieces the same way:
 * head_end, http-parser with callbacks that fill a struct wk_head as wk_conn.c's do, then the
 * checks of worker/wk_hdr.c and worker/wk_resp.c (request line, strict response head syntax, token and value syntax, hop-by-hop rules, request
 * ids), the target forms (origin, absolute, asterisk), Host normalisation, the route lookup over
 * a compiled snapshot, the access-log capture and both log formats, and the body bytes that
 * follow the head (chunked bodies through the strict decoder of worker/wk_chunk.c).
 *
 * Input: byte 0 is the mode (bit 0: 0 = request head, 1 = response head; bit 1: the request
 * was HEAD, for responses), the rest the bytes read from the socket.
 * Invariants beyond "no crash": the head length found is within the input and ends in a blank
 * line; header spans lie inside the head; an access-log line is one line (JSON that parses back);
 * a head that passes the strict checks (wk_head_tiled: fields tile the head) has CRLF line ends
 * only, no NUL and no obs-fold, byte by byte, one framing (chunked, a length
 * or none) and a Host without bytes that would split it downstream; a chunked body ends at the
 * same byte however it is cut into reads. */
#include <stdint.h>
#include <string.h>
#include <limits.h>
#include <strings.h>

#include <http_parser.h>

#include "admin/adm_json.h"
#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "shm/shm_route.h"
#include "shm/shm_snap.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_alog.h"
#include "worker/wk_chunk.h"
#include "worker/wk_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HEADER_BYTES 16384 /* limits.max_header_bytes default */

static struct wk_head scratch;
static const char *status_text;
static size_t status_text_len;
static const char *msg_base; /* the copy being parsed, to check spans */
static size_t msg_len;
static int msg_done;
static int body_inplace;     /* response: decode chunked bodies in place like the worker */
static char *body_buf;
static size_t body_ready;    /* decoded bytes written at body_buf[0, body_ready) */
static uint64_t body_bytes;
static const void *snap;     /* a compiled routing table */

/* ---- the worker's callbacks (worker/wk_conn.c), same logic ----------------------------- */
static int on_url(http_parser *p, const char *at, size_t len)
{
    (void)p;
    if (scratch.url == NULL) {
        scratch.url = at;
        scratch.url_len = (uint32_t)len;
    } else {
        scratch.url_len += (uint32_t)len;
    }
    return 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
    (void)p;
    if (status_text == NULL) {
        status_text = at;
        status_text_len = len;
    } else {
        status_text_len += len;
    }
    return 0;
}

static int on_hfield(http_parser *p, const char *at, size_t len)
{
    struct wk_hdr *h;

    (void)p;
    if (scratch.n > 0 && !scratch.in_value) {
        h = &scratch.h[scratch.n - 1];
        if (h->name + h->nlen == at) {
            h->nlen += (uint32_t)len;
            return 0;
        }
    }
    if (scratch.n == WK_MAX_HEADERS) {
        scratch.too_many = 1;
        return 1;
    }
    h = &scratch.h[scratch.n++];
    h->name = at;
    h->nlen = (uint32_t)len;
    h->value = "";
    h->vlen = 0;
    scratch.in_value = 0;
    return 0;
}

static int on_hvalue(http_parser *p, const char *at, size_t len)
{
    struct wk_hdr *h;

    (void)p;
    if (scratch.n == 0) {
        return 1;
    }
    h = &scratch.h[scratch.n - 1];
    if (!scratch.in_value) {
        h->value = at;
        h->vlen = (uint32_t)len;
        scratch.in_value = 1;
    } else if (h->value + h->vlen == at) {
        h->vlen += (uint32_t)len;
    } else {
        scratch.folded = 1;
        return 1;
    }
    return 0;
}

static int head_req; /* the response answers a HEAD request */

static int on_headers_complete(http_parser *p)
{
    return p->type == HTTP_RESPONSE && head_req ? 1 : 0;
}

static int on_message_complete(http_parser *p)
{
    msg_done = 1;
    http_parser_pause(p, 1);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    (void)p;
    FUZZ_CHECK(at >= msg_base && at + len <= msg_base + msg_len);
    body_bytes += len;
    if (body_inplace) {
        /* Decoded bytes never overtake the raw ones. */
        FUZZ_CHECK(body_buf + body_ready <= at);
        memmove(body_buf + body_ready, at, len);
        body_ready += len;
    }
    return 0;
}

static const http_parser_settings req_settings = {
    .on_url = on_url,
    .on_header_field = on_hfield,
    .on_header_value = on_hvalue,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static const http_parser_settings resp_settings = {
    .on_status = on_status,
    .on_header_field = on_hfield,
    .on_header_value = on_hvalue,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* worker/wk_conn.c head_end(), same logic. */
static size_t head_end(const char *p, size_t n, size_t from)
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

static const struct wk_hdr *find(const char *name, size_t nlen)
{
    for (uint32_t i = 0; i < scratch.n; i++) {
        if (wk_hdr_is(&scratch.h[i], name, nlen)) {
            return &scratch.h[i];
        }
    }
    return NULL;
}

static void setup(void)
{
    static const char conf[] =
        "listeners = ( { address = \"127.0.0.1:18998\"; } );\n"
        "log = { error = \"stderr\"; access = \"off\"; };\n"
        "services = ( { name = \"a\"; backends = [ \"127.0.0.1:9001\" ]; },\n"
        "             { name = \"b\"; backends = [ \"127.0.0.1:9002\" ]; } );\n"
        "routes = (\n"
        "  { host = \"a.example\"; service = \"a\"; },\n"
        "  { host = \"a.example\"; path = \"/api/\"; methods = [\"GET\", \"POST\"]; priority = 2; "
        "service = \"b\"; },\n"
        "  { host = \"*.b.example\"; path = \"/x\"; service = \"b\"; },\n"
        "  { host = \"127.0.0.1\"; service = \"a\"; },\n"
        "  { host = \"*\"; path = \"/only/\"; service = \"a\"; }\n"
        ");\n";
    struct ms_config *cfg = NULL;
    char *errs = NULL;
    size_t sz;

    fuzz_quiet();
    if (fuzz_config_load(conf, sizeof(conf) - 1, &cfg, &errs) != 0) {
        fprintf(stderr, "fuzz_http_head: config: %s\n", errs);
        abort();
    }
    snap = ms_compile(cfg, 1, &sz);
    FUZZ_CHECK(shm_snap_check(snap, sz) == 0);
    ms_config_free(cfg);
}

/* The access-log line of a request (wk_alog_capture()'s caps, both formats). */
static void check_alog(const char *base, size_t hlen, unsigned major, unsigned minor)
{
    const struct wk_hdr *host = find("host", 4), *ua = find("user-agent", 10),
                        *ref = find("referer", 7);
    const char *sp = memchr(base, ' ', hlen < 64 ? hlen : 64);
    size_t hl = host ? (host->vlen < 255 ? host->vlen : 255) : 0;
    size_t ml = sp ? (size_t)(sp - base) : 0;
    size_t pl = scratch.url_len < 2048 ? scratch.url_len : 2048;
    size_t ul = ua ? (ua->vlen < 512 ? ua->vlen : 512) : 0;
    size_t rl = ref ? (ref->vlen < 512 ? ref->vlen : 512) : 0;
    struct wk_alog_req *r;
    struct wk_alog_entry e;
    static char line[16384];
    char err[128];
    size_t n;

    if (ml > 32) {
        ml = 32;
    }
    r = malloc(sizeof(*r) + hl + ml + pl + ul + rl);
    FUZZ_CHECK(r != NULL);
    r->host_len = (uint16_t)hl;
    r->method_len = (uint16_t)ml;
    r->path_len = (uint16_t)pl;
    r->ua_len = (uint16_t)ul;
    r->ref_len = (uint16_t)rl;
    r->http_major = (uint8_t)(major > 9 ? 9 : major);
    r->http_minor = (uint8_t)(minor > 9 ? 9 : minor);
    memcpy(r->data, host ? host->value : "", hl);
    memcpy(r->data + hl, base, ml);
    memcpy(r->data + hl + ml, scratch.url ? scratch.url : "", pl);
    memcpy(r->data + hl + ml + pl, ua ? ua->value : "", ul);
    memcpy(r->data + hl + ml + pl + ul, ref ? ref->value : "", rl);

    memset(&e, 0, sizeof(e));
    e.client_ip = "192.0.2.1";
    e.req = r;
    e.status = 400;
    e.reqid = "0123456789abcdef0123456789abcdef";
    e.reqid_len = 32;
    e.wall_s = 1700000000;
    for (unsigned fmt = 0; fmt < 2; fmt++) {
        n = wk_alog_format(line, sizeof(line), fmt, &e);
        FUZZ_CHECK(n > 0 && n < sizeof(line));
        FUZZ_CHECK(line[n - 1] == '\n');
        FUZZ_CHECK(memchr(line, '\n', n - 1) == NULL);
        FUZZ_CHECK(memchr(line, '\r', n) == NULL);
        if (fmt == WK_ALOG_JSON) {
            struct adm_jval *j = adm_json_parse(line, n - 1, err, sizeof(err));
            if (j == NULL) {
                fprintf(stderr, "access-log line is not JSON (%s): %.*s\n", err, (int)n, line);
                abort();
            }
            adm_json_free(j);
        }
    }
    free(r);
}

/* worker/wk_conn.c ows_trim() and absolute_form(), same logic. */
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

/* The body after an accepted head (request or response), framed as the worker frames it: chunked bodies through the
 * strict decoder (in pieces, as reads would bring them), Content-Length bodies counted. */
static void request_body(const char *p, size_t n, int chunked, uint64_t clen)
{
    if (chunked) {
        struct wk_chunk ch;
        size_t off = 0, used, dl;
        uint64_t data = 0;
        int r = WK_CHUNK_MORE;

        wk_chunk_init(&ch, MAX_HEADER_BYTES);
        while (off < n) {
            size_t piece = n - off > 7 ? 7 : n - off;
            r = wk_chunk_parse(&ch, p + off, piece, &used, &dl);
            FUZZ_CHECK(used <= piece);
            off += used;
            if (r == WK_CHUNK_DATA) {
                data += dl;
                continue;
            }
            if (r != WK_CHUNK_MORE) {
                break;
            }
        }
        FUZZ_CHECK(r != WK_CHUNK_DONE || data == ch.total); /* (total counts sizes read) */
        if (r == WK_CHUNK_DONE) {
            /* The same bytes in one read end at the same place. */
            FUZZ_CHECK(wk_chunk_check(p, n, MAX_HEADER_BYTES, NULL) == (long)off);
        }
    } else if (clen != ULLONG_MAX) {
        FUZZ_CHECK(clen < 1000000000000000000ull);
    }
}

static void request(char *base, size_t avail)
{
    http_parser p;
    size_t hlen, n, pathlen = 0, hostlen = 0, tlen;
    enum http_errno err;
    const struct wk_hdr *hosth = NULL;
    const char *host = NULL, *path = NULL, *target;
    char nhost[256];
    size_t nhlen;
    uint64_t clen = ULLONG_MAX;
    int ncl = 0, nte = 0, chunked_seen = 0, te_bad = 0;

    hlen = head_end(base, avail, 0);
    if (hlen == 0 || hlen > MAX_HEADER_BYTES) {
        return; /* the worker waits for more, or answers 431 */
    }
    FUZZ_CHECK(base[hlen - 1] == '\n');
    http_parser_init(&p, HTTP_REQUEST);
    wk_head_reset(&scratch);
    n = http_parser_execute(&p, &req_settings, base, hlen);
    err = HTTP_PARSER_ERRNO(&p);
    FUZZ_CHECK(n <= hlen);
    for (uint32_t i = 0; i < scratch.n; i++) {
        const struct wk_hdr *h = &scratch.h[i];
        FUZZ_CHECK(h->nlen == 0 || (h->name >= base && h->name + h->nlen <= base + hlen));
        FUZZ_CHECK(h->vlen == 0 || (h->value >= base && h->value + h->vlen <= base + hlen));
        if (wk_hdr_is(h, "x-request-id", 12)) {
            (void)wk_reqid_sane(h->value, h->vlen);
        }
    }
    FUZZ_CHECK(scratch.url == NULL || (scratch.url >= base && scratch.url + scratch.url_len <=
                                                                  base + hlen));
    check_alog(base, hlen, p.http_major, p.http_minor);
    if (scratch.too_many) {
        return; /* 431 */
    }
    if ((err != HPE_OK && err != HPE_PAUSED) || n != hlen) {
        return;
    }
    {
        const char *nl = memchr(base, '\n', hlen);
        if (nl == NULL || !wk_request_line_ok(base, (size_t)(nl - base))) {
            return;
        }
    }
    if (p.http_major != 1 || p.http_minor > 1) {
        return;
    }
    for (uint32_t i = 0; i < scratch.n; i++) {
        if (!wk_token_ok(scratch.h[i].name, scratch.h[i].nlen) ||
            !wk_value_ok(scratch.h[i].value, scratch.h[i].vlen)) {
            return;
        }
    }
    if (!wk_head_tiled(base, hlen, &scratch)) {
        return; /* 400: bare CR or LF, NUL, obs-fold */
    }
    /* Differential: the per-field proof (fields tile the head, names are tokens, values and the
     * request line are free of controls) must imply what a byte-by-byte check says: CRLF line
     * ends only, no bare CR, no NUL, no line starting with whitespace (obs-fold). */
    for (size_t i = 0; i < hlen; i++) {
        unsigned char b = (unsigned char)base[i];
        FUZZ_CHECK(b != '\0');
        if (b == '\n') {
            FUZZ_CHECK(i > 0 && base[i - 1] == '\r');
            FUZZ_CHECK(i + 1 == hlen || (base[i + 1] != ' ' && base[i + 1] != '\t'));
        }
        if (b == '\r') {
            FUZZ_CHECK(i + 1 < hlen && base[i + 1] == '\n');
        }
    }
    if (p.method == HTTP_CONNECT) {
        return;
    }
    for (uint32_t i = 0; i < scratch.n; i++) {
        const struct wk_hdr *h = &scratch.h[i];
        if (wk_hdr_is(h, "host", 4)) {
            if (hosth != NULL) {
                return;
            }
            hosth = h;
        } else if (wk_hdr_is(h, "content-length", 14)) {
            const char *v = h->value;
            size_t vl = h->vlen;
            ows_trim(&v, &vl);
            if (++ncl > 1 || !wk_content_length(v, vl, &clen)) {
                return;
            }
        } else if (wk_hdr_is(h, "transfer-encoding", 17)) {
            nte++;
            if (!wk_te_chunked_only(h->value, h->vlen, &chunked_seen)) {
                te_bad = 1;
            }
        }
        /* What the forwarded head keeps or drops. */
        (void)wk_hdr_hop(&scratch, h->name, h->nlen);
        (void)wk_hdr_has_token(h->value, h->vlen, "close");
    }
    if (nte > 0) {
        if (te_bad || chunked_seen != 1 || p.http_minor == 0 || ncl > 0 ||
            !(p.flags & F_CHUNKED)) {
            return;
        }
    } else if (p.flags & F_CHUNKED) {
        return;
    }
    /* From here the framing is unambiguous: exactly one of chunked / a length / nothing, and
     * http-parser agrees with what the headers say. */
    FUZZ_CHECK(!(nte > 0 && ncl > 0));
    if (ncl > 0) {
        FUZZ_CHECK(p.content_length == clen || p.content_length == 0 || msg_done);
    }
    if (scratch.url == NULL || scratch.url_len == 0) {
        return;
    }
    target = scratch.url;
    tlen = scratch.url_len;
    if (memchr(target, '#', tlen) != NULL) {
        return;
    }
    if (target[0] == '/') {
        const char *q = memchr(target, '?', tlen);
        path = target;
        pathlen = q ? (size_t)(q - target) : tlen;
    } else if (p.method == HTTP_OPTIONS && tlen == 1 && target[0] == '*') {
        path = target;
        pathlen = 1;
    } else {
        const char *rest;
        size_t rlen;
        if (absolute_form(target, tlen, &host, &hostlen, &rest, &rlen) != 0) {
            return;
        }
        FUZZ_CHECK(rest + rlen == target + tlen);
        target = rest;
        tlen = rlen;
        if (tlen == 0 || target[0] != '/') {
            path = "/";
            pathlen = 1;
        } else {
            const char *q = memchr(target, '?', tlen);
            path = target;
            pathlen = q ? (size_t)(q - target) : tlen;
        }
    }
    if (hosth != NULL) {
        const char *v = hosth->value;
        size_t vl = hosth->vlen;
        ows_trim(&v, &vl);
        if (!wk_host_ok(v, vl)) {
            return;
        }
        /* A valid Host never carries what would end a header or split a value downstream. */
        for (size_t i = 0; i < vl; i++) {
            FUZZ_CHECK(v[i] > ' ' && v[i] != '/' && v[i] != '@' && v[i] != '"' && v[i] != ',' &&
                       v[i] != ';' && (unsigned char)v[i] < 0x7f);
        }
        if (host == NULL) {
            host = v;
            hostlen = vl;
        }
    } else if (p.http_minor >= 1) {
        return;
    }
    nhlen = host ? shm_host_normalize(host, hostlen, nhost, sizeof(nhost)) : 0;
    FUZZ_CHECK(nhlen < sizeof(nhost));
    if (host != NULL && nhlen == 0) {
        return;
    }
    if (host == NULL) {
        nhost[0] = '\0';
    }
    FUZZ_CHECK(nhost[nhlen] == '\0');
    for (size_t i = 0; i < nhlen; i++) {
        FUZZ_CHECK(!(nhost[i] >= 'A' && nhost[i] <= 'Z'));
    }
    (void)http_should_keep_alive(&p);
    {
        uint32_t ridx = shm_route_match(snap, nhost, nhlen, path, pathlen, (int)p.method);
        const struct shm_snap_hdr *s = snap;
        FUZZ_CHECK(ridx == SHM_NONE || ridx < s->nroutes);
    }
    request_body(base + hlen, avail - hlen, nte > 0, clen);
}

static void response(char *base, size_t avail, int was_head)
{
    http_parser p;
    size_t hlen, n, off = 0;
    enum http_errno err;
    int interim = 0, status, full;

    head_req = was_head;
    for (;;) {
        hlen = head_end(base + off, avail - off, 0);
        if (hlen == 0) {
            return;
        }
        /* The status line first (worker/wk_resp.c), then http-parser must agree on the status,
         * then the fields are checked one by one and must tile the head. The byte-by-byte
         * check the worker used before (wk_resp_head_syntax) is the differential: both accept
         * the same heads. */
        full = wk_resp_head_syntax(base + off, hlen);
        FUZZ_CHECK(full >= -1 && full <= 999);
        /* (That check let obs-fold through; the field check refuses it, rightly: RFC 9112 5.2.) */
        for (size_t i = 0; full >= 0 && i + 1 < hlen; i++) {
            if (base[off + i] == '\n' && (base[off + i + 1] == ' ' || base[off + i + 1] == '\t')) {
                full = -1;
            }
        }
        if (full >= 0) {
            FUZZ_CHECK(hlen >= 16 && memcmp(base + off + hlen - 4, "\r\n\r\n", 4) == 0);
            FUZZ_CHECK(memchr(base + off, '\0', hlen) == NULL);
        }
        status = wk_resp_status_line(base + off, hlen);
        FUZZ_CHECK(status >= -1 && status <= 999);
        FUZZ_CHECK(full < 0 || full == status);
        if (status < 100 || status > 599) {
            return;
        }
        http_parser_init(&p, HTTP_RESPONSE);
        wk_head_reset(&scratch);
        status_text = NULL;
        status_text_len = 0;
        msg_done = 0;
        n = http_parser_execute(&p, &resp_settings, base + off, hlen);
        err = HTTP_PARSER_ERRNO(&p);
        if ((err != HPE_OK && err != HPE_PAUSED) || n != hlen || scratch.too_many) {
            return;
        }
        FUZZ_CHECK(p.status_code == (unsigned)status);
        FUZZ_CHECK(status_text == NULL ||
                   (status_text >= base + off && status_text + status_text_len <= base + off + hlen));
        for (uint32_t i = 0; i < scratch.n; i++) {
            if (!wk_token_ok(scratch.h[i].name, scratch.h[i].nlen) ||
                !wk_value_ok(scratch.h[i].value, scratch.h[i].vlen)) {
                return;
            }
            (void)wk_hdr_hop(&scratch, scratch.h[i].name, scratch.h[i].nlen);
        }
        if (!wk_head_tiled(base + off, hlen, &scratch)) {
            FUZZ_CHECK(full < 0); /* what the byte check accepts, the field check accepts */
            return;
        }
        FUZZ_CHECK(full == status); /* and what the field check accepts, the byte check does */
        (void)wk_reason(p.status_code);
        if (p.status_code >= 100 && p.status_code < 200 && p.status_code != 101) {
            off += hlen;
            if (++interim > 64) {
                return;
            }
            continue;
        }
        break;
    }
    off += hlen;
    if (off < avail && !msg_done && (p.flags & F_CHUNKED)) {
        /* Chunked response bodies go through the strict decoder, as the worker does now. */
        request_body(base + off, avail - off, 1, ULLONG_MAX);
    } else if (off < avail && !msg_done) {
        body_inplace = 0;
        body_buf = base + off;
        body_ready = 0;
        n = http_parser_execute(&p, &resp_settings, base + off, avail - off);
        FUZZ_CHECK(n <= avail - off);
        FUZZ_CHECK(body_ready <= n);
        body_inplace = 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy;

    if (snap == NULL) {
        setup();
    }
    if (size < 1 || size > 4 * MAX_HEADER_BYTES) {
        return 0;
    }
    /* An exact-size heap copy so that ASan sees any read past the bytes received. */
    copy = malloc(size - 1 ? size - 1 : 1);
    FUZZ_CHECK(copy != NULL);
    memcpy(copy, data + 1, size - 1);
    msg_base = copy;
    msg_len = size - 1;
    msg_done = 0;
    body_bytes = 0;
    if (data[0] & 1) {
        response(copy, size - 1, (data[0] & 2) != 0);
    } else {
        request(copy, size - 1);
    }
    free(copy);
    return 0;
}
