/* dispatcher: libFuzzer target for HTTP/1 message heads as the worker reads them: the request
 * head a client sends and the response head a backend sends, through the worker's HTTP/1 codec
 * (worker/wk_h1.c: head end, request and response heads with every strict check, target forms,
 * Host, framing, bodies that are not chunked, the heads written upstream and to the client), then
 * what the worker does with a parsed head: Host normalisation, the route lookup over a compiled
 * snapshot, the access-log capture and both log formats, and the body bytes that follow the head
 * (chunked bodies through the strict decoder of worker/wk_chunk.c).
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

#include "admin/adm_json.h"
#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "shm/shm_route.h"
#include "shm/shm_snap.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_alog.h"
#include "worker/wk_chunk.h"
#include "worker/wk_h1.h"
#include "worker/wk_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HEADER_BYTES 16384 /* limits.max_header_bytes default */

static struct wk_h1_req rq;
static struct wk_h1_resp rs;
static struct wk_h1_msg msg;
static const struct wk_head *scratch_hd; /* the head whose fields find() and the log look at */
#define scratch (*scratch_hd)
static const char *msg_base; /* the copy being parsed, to check spans */
static size_t msg_len;
static const void *snap; /* a compiled routing table */

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

/* The body after an accepted head (request or response), framed as the worker frames it: chunked
 * bodies through the strict decoder (in pieces, as reads would bring them), Content-Length bodies
 * counted. */
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

/* Every span the codec returns lies inside the head. */
static void check_spans(const struct wk_head *hd, const char *base, size_t hlen)
{
    for (uint32_t i = 0; i < hd->n; i++) {
        const struct wk_hdr *h = &hd->h[i];
        FUZZ_CHECK(h->nlen == 0 || (h->name >= base && h->name + h->nlen <= base + hlen));
        FUZZ_CHECK(h->vlen == 0 || (h->value >= base && h->value + h->vlen <= base + hlen));
    }
    FUZZ_CHECK(hd->url == NULL || (hd->url >= base && hd->url + hd->url_len <= base + hlen));
}

/* Byte by byte: CRLF line ends only, no bare CR, no NUL, no line starting with whitespace. */
static void check_lines(const char *base, size_t hlen)
{
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
}

static void request(char *base, size_t avail)
{
    size_t hlen;
    unsigned st;
    char nhost[256];
    size_t nhlen;
    static char fwd[MAX_HEADER_BYTES + 8192];

    hlen = wk_h1_head_end(base, avail, 0);
    if (hlen == 0 || hlen > MAX_HEADER_BYTES) {
        return; /* the worker waits for more, or answers 431 */
    }
    FUZZ_CHECK(base[hlen - 1] == '\n');
    st = wk_h1_parse_request(base, hlen, &rq);
    scratch_hd = &rq.hd;
    check_spans(&rq.hd, base, hlen);
    for (uint32_t i = 0; i < rq.hd.n; i++) {
        if (wk_hdr_is(&rq.hd.h[i], "x-request-id", 12)) {
            (void)wk_reqid_sane(rq.hd.h[i].value, rq.hd.h[i].vlen);
        }
    }
    FUZZ_CHECK(rq.abs_host == NULL ||
               (rq.abs_host >= base && rq.abs_host + rq.abs_hostlen <= base + hlen));
    check_alog(base, hlen, rq.major, rq.minor);
    if (st != 0) {
        FUZZ_CHECK(st == 400 || st == 405 || st == 431);
        FUZZ_CHECK(rq.err != NULL);
        return;
    }
    /* Differential: the per-field proof (fields tile the head, names are tokens, values and the
     * request line are free of controls) must imply what a byte-by-byte check says. */
    check_lines(base, hlen);
    FUZZ_CHECK(rq.major == 1 && rq.minor <= 1);
    /* One framing: chunked (HTTP/1.1 only), a length, or none. */
    FUZZ_CHECK(!(rq.chunked && rq.clen != UINT64_MAX));
    FUZZ_CHECK(!rq.chunked || rq.minor == 1);
    FUZZ_CHECK(rq.clen == UINT64_MAX || rq.clen < 1000000000000000000ull);
    FUZZ_CHECK(rq.target != NULL && rq.path != NULL && rq.pathlen > 0);
    FUZZ_CHECK(rq.host != NULL || rq.minor == 0);
    for (uint32_t i = 0; i < rq.hd.n; i++) {
        (void)wk_hdr_hop(&rq.hd, rq.hd.h[i].name, rq.hd.h[i].nlen);
    }
    if (rq.host != NULL) {
        /* A valid Host never carries what would end a header or split a value downstream. */
        for (size_t i = 0; i < rq.hostlen; i++) {
            char ch = rq.host[i];
            FUZZ_CHECK(ch > ' ' && ch != '/' && ch != '@' && ch != '"' && ch != ',' && ch != ';' &&
                       (unsigned char)ch < 0x7f);
        }
    }
    nhlen = rq.host ? shm_host_normalize(rq.host, rq.hostlen, nhost, sizeof(nhost)) : 0;
    FUZZ_CHECK(nhlen < sizeof(nhost));
    if (rq.host != NULL && nhlen == 0) {
        return;
    }
    if (rq.host == NULL) {
        nhost[0] = '\0';
    }
    FUZZ_CHECK(nhost[nhlen] == '\0');
    for (size_t i = 0; i < nhlen; i++) {
        FUZZ_CHECK(!(nhost[i] >= 'A' && nhost[i] <= 'Z'));
    }
    {
        uint32_t ridx = shm_route_match(snap, nhost, nhlen, rq.path, rq.pathlen, (int)rq.method);
        const struct shm_snap_hdr *s = snap;
        FUZZ_CHECK(ridx == SHM_NONE || ridx < s->nroutes);
    }
    /* The head forwarded upstream has strict line structure whatever the client sent. */
    {
        struct wk_h1_fwd f = {0};
        size_t n;
        f.method = rq.method;
        f.target = rq.target;
        f.tlen = rq.tlen;
        f.slash = rq.slash;
        f.host = rq.host;
        f.hostlen = rq.host ? rq.hostlen : 0;
        f.dflt_host = "svc";
        f.peer_ip = "192.0.2.1";
        f.real_ip = "192.0.2.1";
        f.reqid = "0123456789abcdef0123456789abcdef";
        f.reqid_len = 32;
        f.clen = rq.clen;
        f.trusted = (uint8_t)(hlen & 1);
        f.upgrade = (rq.flags & WK_H1_UPGRADE) != 0;
        f.chunked = rq.chunked;
        n = wk_h1_write_request(fwd, sizeof(fwd), &rq.hd, &f);
        FUZZ_CHECK(n > 0 && n < sizeof(fwd));
        FUZZ_CHECK(wk_h1_head_end(fwd, n, 0) == n);
        check_lines(fwd, n);
    }
    request_body(base + hlen, avail - hlen, rq.chunked, rq.clen);
}

static void response(char *base, size_t avail, int was_head)
{
    size_t hlen, off = 0;
    int interim = 0, status, full;
    static char out[4 * MAX_HEADER_BYTES + 8192];

    for (;;) {
        hlen = wk_h1_head_end(base + off, avail - off, 0);
        if (hlen == 0) {
            return;
        }
        /* The codec checks the status line, then the fields one by one (they must tile the
         * head). The byte-by-byte check the worker used before (wk_resp_head_syntax) is the
         * differential: what the codec accepts, it accepts with the same status. */
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
        if (wk_h1_parse_response(&msg, base + off, hlen, was_head, &rs) != 0) {
            return;
        }
        scratch_hd = &rs.hd;
        FUZZ_CHECK(rs.status >= 100 && rs.status <= 599);
        FUZZ_CHECK((int)rs.status == status && full == status);
        check_spans(&rs.hd, base + off, hlen);
        check_lines(base + off, hlen);
        FUZZ_CHECK(rs.reason == NULL ||
                   (rs.reason >= base + off && rs.reason + rs.reason_len <= base + off + hlen));
        FUZZ_CHECK(!wk_h1_bodyless(was_head, rs.status) || msg.done);
        {
            size_t n = wk_h1_write_response(out, sizeof(out), &rs, rs.chunked, "r", 1,
                                            (int)(hlen & 3));
            FUZZ_CHECK(n > 0);
            FUZZ_CHECK(wk_h1_head_end(out, n, 0) == n);
            check_lines(out, n);
        }
        if (rs.status < 200 && rs.status != 101) {
            off += hlen;
            if (++interim > 64) {
                return;
            }
            continue;
        }
        break;
    }
    off += hlen;
    if (off < avail && !msg.done && rs.chunked) {
        /* Chunked response bodies go through the strict decoder, as the worker does. */
        request_body(base + off, avail - off, 1, ULLONG_MAX);
    } else if (off < avail && !msg.done) {
        long n = wk_h1_body(&msg, base + off, avail - off);
        FUZZ_CHECK(n >= -1 && n <= (long)(avail - off));
        if (n >= 0 && !msg.done) {
            wk_h1_body_eof(&msg);
        }
        (void)wk_h1_keep_alive(&msg);
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
    if (data[0] & 1) {
        response(copy, size - 1, (data[0] & 2) != 0);
    } else {
        request(copy, size - 1);
    }
    free(copy);
    return 0;
}
