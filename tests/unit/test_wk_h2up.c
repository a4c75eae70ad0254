/* dispatcher unit tests: HTTP/2 to backends: the request head translated to a header block
 * (wk_h2up_head_nv), and the health checker's HTTP/2 side (ms_h2hc) against an nghttp2 server
 * session that answers it. */
#include "tests/unit/unit.h"

#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>

#include "master/ms_h2hc.h"
#include "worker/wk_h2up.h"

static const char *nv_get(const nghttp2_nv *nva, size_t n, const char *name, size_t *vlen)
{
    for (size_t i = 0; i < n; i++) {
        if (nva[i].namelen == strlen(name) && memcmp(nva[i].name, name, nva[i].namelen) == 0) {
            *vlen = nva[i].valuelen;
            return (const char *)nva[i].value;
        }
    }
    return NULL;
}

static int nv_is(const nghttp2_nv *nva, size_t n, const char *name, const char *value)
{
    size_t vl = 0;
    const char *v = nv_get(nva, n, name, &vl);

    return v != NULL && vl == strlen(value) && memcmp(v, value, vl) == 0;
}

static void test_head_nv(void)
{
    char head[] = "POST /api/x?y=1 HTTP/1.1\r\n"
                  "User-Agent: curl\r\n"
                  "Content-Type: application/grpc\r\n"
                  "Host: api.example:8080\r\n"
                  "Connection: keep-alive\r\n"
                  "Keep-Alive: timeout=5\r\n"
                  "Transfer-Encoding: chunked\r\n"
                  "Upgrade: h2c\r\n"
                  "Proxy-Connection: x\r\n"
                  "TE: trailers\r\n"
                  "Expect: 100-continue\r\n"
                  "X-Forwarded-For: 10.0.0.1\r\n"
                  "X-Empty: \r\n"
                  "\r\n";
    nghttp2_nv nva[32];
    size_t n = wk_h2up_head_nv(head, strlen(head), 0, 1, nva, 32), vl;

    CU_ASSERT_EQUAL_FATAL(n, 9);
    CU_ASSERT(nv_is(nva, n, ":method", "POST"));
    CU_ASSERT(nv_is(nva, n, ":scheme", "http"));
    CU_ASSERT(nv_is(nva, n, ":path", "/api/x?y=1"));
    CU_ASSERT(nv_is(nva, n, ":authority", "api.example:8080"));
    CU_ASSERT(nv_is(nva, n, "user-agent", "curl")); /* names lower-cased */
    CU_ASSERT(nv_is(nva, n, "content-type", "application/grpc"));
    CU_ASSERT(nv_is(nva, n, "x-forwarded-for", "10.0.0.1"));
    CU_ASSERT(nv_is(nva, n, "x-empty", ""));
    CU_ASSERT(nv_is(nva, n, "te", "trailers")); /* added back: the only TE passed */
    for (size_t i = 0; i < n; i++) {
        static const char *const gone[] = {
            "host",   "connection",        "keep-alive",      "upgrade",
            "expect", "transfer-encoding", "proxy-connection"};
        for (size_t k = 0; k < sizeof(gone) / sizeof(gone[0]); k++) {
            CU_ASSERT(nva[i].namelen != strlen(gone[k]) ||
                      memcmp(nva[i].name, gone[k], nva[i].namelen) != 0);
        }
    }
    CU_ASSERT(nv_get(nva, n, "te", &vl) != NULL);

    /* Without TE: trailers, over TLS. */
    char h2[] = "GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n";
    n = wk_h2up_head_nv(h2, strlen(h2), 1, 0, nva, 32);
    CU_ASSERT_EQUAL(n, 4);
    CU_ASSERT(nv_is(nva, n, ":scheme", "https"));
    CU_ASSERT(nv_get(nva, n, "te", &vl) == NULL);

    /* Not a head, or too many fields for the room given: 0. */
    char bad[] = "GARBAGE\r\n\r\n";
    CU_ASSERT_EQUAL(wk_h2up_head_nv(bad, strlen(bad), 0, 0, nva, 32), 0);
    char nocolon[] = "GET / HTTP/1.1\r\nHost a\r\n\r\n";
    CU_ASSERT_EQUAL(wk_h2up_head_nv(nocolon, strlen(nocolon), 0, 0, nva, 32), 0);
    char many[] = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    CU_ASSERT_EQUAL(wk_h2up_head_nv(many, strlen(many), 0, 0, nva, 6), 0);
    CU_ASSERT_EQUAL(wk_h2up_head_nv(many, strlen(many), 0, 0, nva, 8), 7);
}

/* ---- the health check against a server session -------------------------------------------- */
struct srv {
    nghttp2_session *s;
    int32_t stream;
    char path[64];
    char scheme[8];
    const char *status; /* what to answer */
    int reset;          /* RST_STREAM instead */
};

static int srv_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                      const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct srv *v = ud;

    (void)s;
    (void)flags;
    if (f->hd.type == NGHTTP2_HEADERS && vlen < sizeof(v->path)) {
        if (nlen == 5 && memcmp(name, ":path", 5) == 0) {
            memcpy(v->path, value, vlen);
            v->path[vlen] = '\0';
        } else if (nlen == 7 && memcmp(name, ":scheme", 7) == 0 && vlen < sizeof(v->scheme)) {
            memcpy(v->scheme, value, vlen);
            v->scheme[vlen] = '\0';
        }
    }
    return 0;
}

static int srv_frame(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    struct srv *v = ud;
    nghttp2_nv hd[2] = {
        {(uint8_t *)":status", (uint8_t *)"100", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"x", (uint8_t *)"y", 1, 1, NGHTTP2_NV_FLAG_NONE},
    };

    if (f->hd.type == NGHTTP2_HEADERS && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        v->stream = f->hd.stream_id;
        if (v->reset) {
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id,
                                      NGHTTP2_INTERNAL_ERROR);
            return 0;
        }
        nghttp2_submit_headers(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NULL, hd, 1, NULL); /* 1xx */
        hd[0].value = (uint8_t *)(uintptr_t)v->status;
        nghttp2_submit_response(s, f->hd.stream_id, hd, 2, NULL);
    }
    return 0;
}

/* One check against a server answering <status> (or resetting): what ms_h2hc_feed() says. */
static int run_check(struct srv *v)
{
    nghttp2_session_callbacks *cb;
    char *out = NULL;
    size_t outlen = 0;
    struct ms_h2hc *c = ms_h2hc_new("/healthz", "b.example", 1, &out, &outlen);
    int r = 0;

    CU_ASSERT_FATAL(c != NULL && outlen > 24);
    CU_ASSERT(memcmp(out, NGHTTP2_CLIENT_MAGIC, 24) == 0);
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, srv_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, srv_frame);
    nghttp2_session_server_new(&v->s, cb, v);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(v->s, NGHTTP2_FLAG_NONE, NULL, 0);
    CU_ASSERT((size_t)nghttp2_session_mem_recv(v->s, (const uint8_t *)out, outlen) == outlen);
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(v->s, &data);
        if (n <= 0) {
            break;
        }
        /* A byte at a time: the status comes out however the bytes are cut. */
        for (ssize_t i = 0; i < n && r == 0; i++) {
            r = ms_h2hc_feed(c, data + i, 1);
        }
    }
    CU_ASSERT_STRING_EQUAL(v->path, "/healthz");
    CU_ASSERT_STRING_EQUAL(v->scheme, "https");
    nghttp2_session_del(v->s);
    ms_h2hc_free(c);
    free(out);
    return r;
}

static void test_health_check(void)
{
    struct srv v;

    memset(&v, 0, sizeof(v));
    v.status = "204";
    CU_ASSERT_EQUAL(run_check(&v), 204); /* the 100 before it is not the answer */
    memset(&v, 0, sizeof(v));
    v.status = "503";
    CU_ASSERT_EQUAL(run_check(&v), 503);
    memset(&v, 0, sizeof(v));
    v.reset = 1;
    CU_ASSERT_EQUAL(run_check(&v), -1);

    /* An HTTP/1 answer is no HTTP/2 answer. */
    char *out = NULL;
    size_t outlen = 0;
    struct ms_h2hc *c = ms_h2hc_new("/", "a", 0, &out, &outlen);
    static const char h1[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    CU_ASSERT_EQUAL(ms_h2hc_feed(c, (const uint8_t *)h1, sizeof(h1) - 1), -1);
    ms_h2hc_free(c);
    free(out);
}

UNIT_SUITE(wk_h2up, {"head_nv", test_head_nv}, {"health_check", test_health_check})
