/* Unit tests for the HTTP/1 codec (worker/wk_h1.c): every framing rule of request and response
 * heads, the status each error maps to, bodies, and the heads it writes. */
#include "tests/unit/unit.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "worker/wk_h1.h"
#include "worker/wk_internal.h"

static struct wk_h1_req rq;

static unsigned req_n(const char *s, size_t n)
{
    return wk_h1_parse_request(s, n, &rq);
}

static unsigned req(const char *s)
{
    return req_n(s, strlen(s));
}

static int span_is(const char *p, size_t n, const char *want)
{
    return p != NULL && n == strlen(want) && memcmp(p, want, n) == 0;
}

static void test_request_ok(void)
{
    CU_ASSERT_EQUAL(req("GET /a/b?x=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nA: b \r\n\r\n"), 0);
    CU_ASSERT_EQUAL(rq.major, 1);
    CU_ASSERT_EQUAL(rq.minor, 1);
    CU_ASSERT_STRING_EQUAL(wk_h1_method_str(rq.method), "GET");
    CU_ASSERT_TRUE(span_is(rq.host, rq.hostlen, "Example.COM:8080"));
    CU_ASSERT_PTR_NULL(rq.abs_host);
    CU_ASSERT_TRUE(span_is(rq.target, rq.tlen, "/a/b?x=1"));
    CU_ASSERT_TRUE(span_is(rq.path, rq.pathlen, "/a/b"));
    CU_ASSERT_EQUAL(rq.slash, 0);
    CU_ASSERT_EQUAL(rq.hd.n, 2);
    CU_ASSERT_TRUE(span_is(rq.hd.h[1].value, rq.hd.h[1].vlen, "b ")); /* OWS kept as sent */
    CU_ASSERT_EQUAL(rq.flags, WK_H1_KEEPALIVE | WK_H1_IDEMPOTENT | WK_H1_DONE);
    CU_ASSERT_EQUAL(rq.chunked, 0);
    CU_ASSERT_EQUAL(rq.clen, UINT64_MAX);

    CU_ASSERT_EQUAL(req("HEAD / HTTP/1.0\r\n\r\n"), 0); /* 1.0: Host optional */
    CU_ASSERT_PTR_NULL(rq.host);
    CU_ASSERT_EQUAL(rq.flags, WK_H1_IDEMPOTENT | WK_H1_HEAD | WK_H1_DONE);
    CU_ASSERT_EQUAL(req("POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                        "Expect: 100-continue\r\nConnection: close\r\n\r\n"),
                    0);
    CU_ASSERT_EQUAL(rq.clen, 5);
    CU_ASSERT_EQUAL(rq.flags, WK_H1_CONTINUE);
    CU_ASSERT_EQUAL(req("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                        "Upgrade: websocket\r\n\r\n"),
                    0);
    CU_ASSERT_TRUE(rq.flags & WK_H1_UPGRADE);
    CU_ASSERT_EQUAL(req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    CU_ASSERT_TRUE(span_is(rq.path, rq.pathlen, "*"));
    CU_ASSERT_EQUAL(req("GET * HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"), 405);
    CU_ASSERT_EQUAL(req("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    CU_ASSERT_STRING_EQUAL(rq.err, "Malformed request line");
    CU_ASSERT_EQUAL(req("GET /#f HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
}

static void test_content_length_and_te(void)
{
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n"),
                    400);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                        "Content-Length: 3\r\n\r\n"),
                    400);
    /* Two Content-Lengths, even equal ones. */
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                        "Content-Length: 3\r\n\r\n"),
                    400);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(
        req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1234567890123456789\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), 0);
    CU_ASSERT_EQUAL(rq.clen, 0);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    CU_ASSERT_EQUAL(rq.chunked, 1);
    CU_ASSERT_FALSE(rq.flags & WK_H1_DONE);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
                    400);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n"),
                    400);
    CU_ASSERT_EQUAL(
        req("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    CU_ASSERT_STRING_EQUAL(rq.err, "Unsupported Transfer-Encoding");
}

static void test_line_structure(void)
{
    static const char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nA: x\0y\r\n\r\n";
    static const char nul_name[] = "GET / HTTP/1.1\r\nHost: h\r\nA\0: y\r\n\r\n";

    /* obs-fold */
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n c\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n\tc\r\n\r\n"), 400);
    /* bare LF and bare CR */
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\nHost: h\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\nA: b\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\r\n\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\rA: b\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\r\nA: b\rc\r\n\r\n"), 400);
    /* NUL */
    CU_ASSERT_EQUAL(req_n(nul, sizeof(nul) - 1), 400);
    CU_ASSERT_EQUAL(req_n(nul_name, sizeof(nul_name) - 1), 400);
    /* whitespace before the colon, or no colon */
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\r\nContent-Length\t: 0\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\r\nA\"b: c\r\n\r\n"), 400);
    /* control bytes in a value, in the target */
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: h\r\nA: b\x01\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
}

static void test_oversize(void)
{
    static char buf[WK_MAX_HEADERS * 16 + 256];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: h\r\n");

    for (int i = 0; i < WK_MAX_HEADERS - 1; i++) {
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "X%d: v\r\n", i);
    }
    memcpy(buf + n, "\r\n", 3);
    CU_ASSERT_EQUAL(req_n(buf, n + 2), 0); /* exactly WK_MAX_HEADERS fields */
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, "Y: v\r\n\r\n");
    CU_ASSERT_EQUAL(req_n(buf, n), 431);
    CU_ASSERT_STRING_EQUAL(rq.err, "Too many header fields");
    /* The head end: incomplete, bare-LF and CRLF ends. */
    CU_ASSERT_EQUAL(wk_h1_head_end("GET / HTTP/1.1\r\nHost: h\r\n", 24, 0), 0);
    CU_ASSERT_EQUAL(wk_h1_head_end("GET / HTTP/1.1\r\n\r\nxyz", 21, 0), 18);
    CU_ASSERT_EQUAL(wk_h1_head_end("GET / HTTP/1.1\n\nxyz", 19, 0), 16);
}

static void test_absolute_form(void)
{
    CU_ASSERT_EQUAL(req("GET http://a.example:8080/x?y HTTP/1.1\r\nHost: other\r\n\r\n"), 0);
    CU_ASSERT_TRUE(span_is(rq.host, rq.hostlen, "a.example:8080"));
    CU_ASSERT_TRUE(span_is(rq.abs_host, rq.abs_hostlen, "a.example:8080"));
    CU_ASSERT_TRUE(span_is(rq.target, rq.tlen, "/x?y"));
    CU_ASSERT_TRUE(span_is(rq.path, rq.pathlen, "/x"));
    CU_ASSERT_EQUAL(req("GET HTTPS://a.example?q HTTP/1.1\r\nHost: a.example\r\n\r\n"), 0);
    CU_ASSERT_EQUAL(rq.slash, 1);
    CU_ASSERT_TRUE(span_is(rq.target, rq.tlen, "?q"));
    CU_ASSERT_TRUE(span_is(rq.path, rq.pathlen, "/"));
    CU_ASSERT_EQUAL(req("GET ftp://a.example/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET http://u@a.example/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET http://a.example/#x HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    /* The authority is routed on, but the Host header must still be valid. */
    CU_ASSERT_EQUAL(req("GET http://a.example/ HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
    CU_ASSERT_TRUE(span_is(rq.abs_host, rq.abs_hostlen, "a.example"));
}

static void test_host(void)
{
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\n\r\n"), 400);
    CU_ASSERT_STRING_EQUAL(rq.err, "Missing Host header");
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
    CU_ASSERT_STRING_EQUAL(rq.err, "Multiple Host headers");
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: \r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: a,b\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n"), 400);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), 0);
    CU_ASSERT_EQUAL(req("GET / HTTP/1.1\r\nHost: \t10.0.0.1:65535 \r\n\r\n"), 0);
    CU_ASSERT_TRUE(span_is(rq.host, rq.hostlen, "10.0.0.1:65535"));
}

static struct wk_h1_msg msg;
static struct wk_h1_resp rs;

static int resp(const char *s, int head_req)
{
    return wk_h1_parse_response(&msg, s, strlen(s), head_req, &rs);
}

static void test_response_status(void)
{
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 Fine Thanks\r\nContent-Length: 3\r\n\r\n", 0), 0);
    CU_ASSERT_EQUAL(rs.status, 200);
    CU_ASSERT_TRUE(span_is(rs.reason, rs.reason_len, "Fine Thanks"));
    CU_ASSERT_TRUE(rs.has_clen);
    CU_ASSERT_FALSE(msg.done);
    CU_ASSERT_EQUAL(resp("HTTP/1.0 599 x\r\n\r\n", 0), 0);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 600 x\r\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 099 x\r\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 000 x\r\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 20 x\r\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/2 200 x\r\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\nA: b\r\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nA: b\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nA : b\r\n\r\n", 0), -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nA: b\x01\r\n\r\n", 0), -1);
    {
        static const char nul[] = "HTTP/1.1 200 OK\r\nA: \0\r\n\r\n";
        CU_ASSERT_EQUAL(wk_h1_parse_response(&msg, nul, sizeof(nul) - 1, 0, &rs), -1);
    }
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 0),
                    -1);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", 0), -1);
}

static void test_response_bodies(void)
{
    static const char body[] = "abcdefgh";

    /* A length: the bytes past it are not the body's, and the connection can go on. */
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", 0), 0);
    CU_ASSERT_EQUAL(wk_h1_body(&msg, body, 2), 2);
    CU_ASSERT_FALSE(msg.done);
    CU_ASSERT_EQUAL(wk_h1_body(&msg, body + 2, 6), 1);
    CU_ASSERT_TRUE(msg.done);
    CU_ASSERT_TRUE(wk_h1_keep_alive(&msg));
    /* No framing: up to EOF, never kept alive. */
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\n\r\n", 0), 0);
    CU_ASSERT_EQUAL(wk_h1_body(&msg, body, 8), 8);
    CU_ASSERT_FALSE(msg.done);
    wk_h1_body_eof(&msg);
    CU_ASSERT_TRUE(msg.done);
    CU_ASSERT_FALSE(wk_h1_keep_alive(&msg));
    /* HTTP/1.0 without keep-alive */
    CU_ASSERT_EQUAL(resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 0), 0);
    CU_ASSERT_TRUE(msg.done);
    CU_ASSERT_FALSE(wk_h1_keep_alive(&msg));
    /* chunked: the codec leaves the body to the chunk decoder */
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0), 0);
    CU_ASSERT_TRUE(rs.chunked);
    CU_ASSERT_FALSE(msg.done);
}

static void test_no_body_responses(void)
{
    CU_ASSERT_EQUAL(resp("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", 0), 0);
    CU_ASSERT_TRUE(msg.done);
    CU_ASSERT_TRUE(wk_h1_keep_alive(&msg));
    CU_ASSERT_EQUAL(resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 0), 0);
    CU_ASSERT_TRUE(msg.done);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", 1), 0);
    CU_ASSERT_TRUE(msg.done);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 1), 0);
    CU_ASSERT_TRUE(msg.done);
    CU_ASSERT_EQUAL(resp("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 0), 0);
    CU_ASSERT_TRUE(msg.done);
    CU_ASSERT_EQUAL(rs.status, 103);
    CU_ASSERT_TRUE(wk_h1_bodyless(0, 100));
    CU_ASSERT_TRUE(wk_h1_bodyless(0, 204));
    CU_ASSERT_TRUE(wk_h1_bodyless(0, 304));
    CU_ASSERT_TRUE(wk_h1_bodyless(1, 200));
    CU_ASSERT_FALSE(wk_h1_bodyless(0, 200));
    CU_ASSERT_FALSE(wk_h1_bodyless(0, 205));
}

static void test_chunk_sizes(void)
{
    static const char *bad[] = {"zz\r\n", "-1\r\n",   "+1\r\n",      " 1\r\n",
                                "1 \r\n", "0x1\r\n",  "1\n",         "1\r\r\n",
                                "\r\n",   "1\r\na\n", "1\r\nab\r\n", "11111111111111111\r\n"};
    struct wk_chunk ch;
    size_t used, dl;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int r;
        size_t off = 0, n = strlen(bad[i]);
        wk_h1_chunk_init(&ch, 0);
        do {
            r = wk_h1_chunk_parse(&ch, bad[i] + off, n - off, &used, &dl);
            off += used;
        } while (r == WK_CHUNK_DATA && off < n);
        CU_ASSERT_EQUAL(r, WK_CHUNK_ERROR);
    }
    /* A valid body cut into single bytes ends at the same place. */
    {
        static const char ok[] = "3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nNEXT";
        size_t off = 0;
        int r = WK_CHUNK_MORE;
        wk_h1_chunk_init(&ch, 0);
        while (off < sizeof(ok) - 1 && r != WK_CHUNK_DONE) {
            r = wk_h1_chunk_parse(&ch, ok + off, 1, &used, &dl);
            CU_ASSERT_NOT_EQUAL(r, WK_CHUNK_ERROR);
            off += used;
        }
        CU_ASSERT_EQUAL(r, WK_CHUNK_DONE);
        CU_ASSERT_EQUAL(off, sizeof(ok) - 1 - 4);
        CU_ASSERT_EQUAL(ch.total, 3);
    }
}

static void test_write_request(void)
{
    char out[512];
    struct wk_h1_fwd f = {0};
    size_t n;

    CU_ASSERT_EQUAL(req("POST /p HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop\r\n"
                        "X-Hop: 1\r\nKeep: 2\r\nX_Under: 3\r\nX-Forwarded-For: 1.2.3.4\r\n"
                        "Forwarded: for=x\r\nContent-Length: 2\r\nTE: trailers\r\n\r\n"),
                    0);
    f.method = rq.method;
    f.target = rq.target;
    f.tlen = rq.tlen;
    f.host = rq.host;
    f.hostlen = rq.hostlen;
    f.peer_ip = "10.0.0.9";
    f.real_ip = "10.0.0.9";
    f.reqid = "rid";
    f.reqid_len = 3;
    f.clen = rq.clen;
    n = wk_h1_write_request(out, sizeof(out), &rq.hd, &f);
    CU_ASSERT_TRUE(n > 0);
    out[n] = '\0';
    CU_ASSERT_STRING_EQUAL(out,
                           "POST /p HTTP/1.1\r\nKeep: 2\r\nHost: h\r\nX-Forwarded-For: 10.0.0.9\r\n"
                           "X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
                           "X-Real-IP: 10.0.0.9\r\nX-Request-ID: rid\r\n"
                           "Content-Length: 2\r\n\r\n");
    f.trusted = 1;
    f.https = 1;
    f.chunked = 1;
    f.hostlen = 0;
    f.dflt_host = "svc";
    f.slash = 1;
    f.target = "?q";
    f.tlen = 2;
    n = wk_h1_write_request(out, sizeof(out), &rq.hd, &f);
    CU_ASSERT_TRUE(n > 0);
    out[n] = '\0';
    CU_ASSERT_STRING_EQUAL(out, "POST /?q HTTP/1.1\r\nKeep: 2\r\nForwarded: for=x\r\nHost: svc\r\n"
                                "X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n"
                                "X-Forwarded-Proto: https\r\n"
                                "X-Real-IP: 10.0.0.9\r\nX-Request-ID: rid\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n");
    CU_ASSERT_EQUAL(wk_h1_write_request(out, 40, &rq.hd, &f), 0); /* does not fit */
}

static void test_write_response(void)
{
    char out[512];
    size_t n;

    CU_ASSERT_EQUAL(resp("HTTP/1.1 204 Gone Fishing\r\nContent-Length: 0\r\nX-Request-ID: b\r\n"
                         "Connection: x\r\nX: 1\r\nY: 2\r\n\r\n",
                         0),
                    0);
    n = wk_h1_write_response(out, sizeof(out), &rs, 0, "rid", 3, WK_H1_CONN_CLOSE);
    CU_ASSERT_TRUE(n > 0);
    out[n] = '\0';
    CU_ASSERT_STRING_EQUAL(out, "HTTP/1.1 204 Gone Fishing\r\nY: 2\r\nX-Request-ID: rid\r\n"
                                "Connection: close\r\n\r\n");
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 \r\nContent-Length: 5\r\n\r\n", 0), 0);
    n = wk_h1_write_response(out, sizeof(out), &rs, 0, "r", 1, WK_H1_CONN_KEEPALIVE);
    out[n] = '\0';
    CU_ASSERT_STRING_EQUAL(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Request-ID: r\r\n"
                                "Connection: keep-alive\r\n\r\n");
    CU_ASSERT_EQUAL(resp("HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n"
                         "Connection: upgrade\r\n\r\n",
                         0),
                    0);
    n = wk_h1_write_response(out, sizeof(out), &rs, 0, "r", 1, WK_H1_CONN_UPGRADE);
    out[n] = '\0';
    CU_ASSERT_STRING_EQUAL(out,
                           "HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\nX-Request-ID: r\r\n"
                           "Connection: upgrade\r\n\r\n");
    CU_ASSERT_EQUAL(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0), 0);
    n = wk_h1_write_response(out, sizeof(out), &rs, 1, "r", 1, WK_H1_CONN_NONE);
    out[n] = '\0';
    CU_ASSERT_STRING_EQUAL(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                                "X-Request-ID: r\r\n\r\n");
    CU_ASSERT_EQUAL(wk_h1_write_response(out, 20, &rs, 1, "r", 1, WK_H1_CONN_NONE), 0);
}

UNIT_SUITE(wk_h1, {"request ok", test_request_ok},
           {"content-length and transfer-encoding", test_content_length_and_te},
           {"line structure", test_line_structure}, {"oversize", test_oversize},
           {"absolute-form", test_absolute_form}, {"host", test_host},
           {"response status", test_response_status}, {"response bodies", test_response_bodies},
           {"no-body responses", test_no_body_responses}, {"chunk sizes", test_chunk_sizes},
           {"write request", test_write_request}, {"write response", test_write_response})
