/* Unit tests for the worker's header rules: hop-by-hop detection (including names listed in
 * Connection), token matching, request-id sanity and generation. */
#include "tests/unit/unit.h"

#include <string.h>

#include "worker/wk_internal.h"

static void add(struct wk_head *h, const char *name, const char *value)
{
    h->h[h->n].name = name;
    h->h[h->n].nlen = (uint32_t)strlen(name);
    h->h[h->n].value = value;
    h->h[h->n].vlen = (uint32_t)strlen(value);
    h->n++;
}

static void test_hop_by_hop(void)
{
    static struct wk_head h;

    wk_head_reset(&h);
    add(&h, "Host", "a");
    add(&h, "Connection", "close, X-Secret ,x-other");
    add(&h, "connection", "Keep-Alive");
    CU_ASSERT(wk_hdr_hop(&h, "Connection", 10));
    CU_ASSERT(wk_hdr_hop(&h, "KEEP-ALIVE", 10));
    CU_ASSERT(wk_hdr_hop(&h, "Proxy-Connection", 16));
    CU_ASSERT(wk_hdr_hop(&h, "te", 2));
    CU_ASSERT(wk_hdr_hop(&h, "Trailer", 7));
    CU_ASSERT(wk_hdr_hop(&h, "Transfer-Encoding", 17));
    CU_ASSERT(wk_hdr_hop(&h, "Upgrade", 7));
    CU_ASSERT(wk_hdr_hop(&h, "x-secret", 8));
    CU_ASSERT(wk_hdr_hop(&h, "X-Other", 7));
    CU_ASSERT(!wk_hdr_hop(&h, "X-Secre", 7));
    CU_ASSERT(!wk_hdr_hop(&h, "Host", 4));
    CU_ASSERT(!wk_hdr_hop(&h, "Content-Length", 14));
    CU_ASSERT(!wk_hdr_hop(&h, "Tea", 3));
}

static void test_tokens(void)
{
    CU_ASSERT(wk_hdr_has_token("gzip, chunked", 13, "chunked"));
    CU_ASSERT(wk_hdr_has_token("Upgrade", 7, "upgrade"));
    CU_ASSERT(!wk_hdr_has_token("chunkedx", 8, "chunked"));
    CU_ASSERT(!wk_hdr_has_token("", 0, "close"));
}

static void test_reqid(void)
{
    uint64_t rng[2] = {12345, 67890};
    char a[48], b[48];

    CU_ASSERT(wk_reqid_sane("abc-123_DEF.x:y+z/=", 19));
    CU_ASSERT(!wk_reqid_sane("", 0));
    CU_ASSERT(!wk_reqid_sane("a b", 3));
    CU_ASSERT(!wk_reqid_sane("a\"b", 3));
    CU_ASSERT(!wk_reqid_sane("a\r\nb", 4));
    {
        char longid[80];
        memset(longid, 'a', sizeof(longid));
        CU_ASSERT(wk_reqid_sane(longid, WK_REQID_MAX));
        CU_ASSERT(!wk_reqid_sane(longid, WK_REQID_MAX + 1));
    }
    wk_reqid_new(rng, a);
    wk_reqid_new(rng, b);
    CU_ASSERT_EQUAL(strlen(a), 32);
    CU_ASSERT(wk_reqid_sane(a, 32));
    CU_ASSERT(strcmp(a, b) != 0);
}

static void test_reasons(void)
{
    CU_ASSERT_STRING_EQUAL(wk_reason(404), "Not Found");
    CU_ASSERT_STRING_EQUAL(wk_reason(502), "Bad Gateway");
    CU_ASSERT_STRING_EQUAL(wk_reason(431), "Request Header Fields Too Large");
    CU_ASSERT_STRING_EQUAL(wk_reason(299), "Unknown");
}

static void test_syntax(void)
{
    CU_ASSERT(wk_request_line_ok("GET / HTTP/1.1", 14));
    CU_ASSERT(wk_request_line_ok("GET /a?b HTTP/1.0\r", 18));
    CU_ASSERT(!wk_request_line_ok("GET / HTTX/1.1", 14));
    CU_ASSERT(!wk_request_line_ok("GET  / HTTP/1.1", 15));
    CU_ASSERT(!wk_request_line_ok("GET / HTTP/1.1 x", 16));
    CU_ASSERT(!wk_request_line_ok("G(T / HTTP/1.1", 14));
    CU_ASSERT(!wk_request_line_ok("GET /\x01 HTTP/1.1", 15));
    CU_ASSERT(!wk_request_line_ok("GET", 3));
    CU_ASSERT(wk_token_ok("X-Custom_1", 10));
    CU_ASSERT(!wk_token_ok("Bad Name", 8));
    CU_ASSERT(!wk_token_ok("a:b", 3));
    CU_ASSERT(!wk_token_ok("", 0));
    CU_ASSERT(wk_value_ok("a\tb c", 5));
    CU_ASSERT(!wk_value_ok("a\rb", 3));
    CU_ASSERT(!wk_value_ok("a\0b", 3));
}

#define HOK(x) wk_host_ok(x, sizeof(x) - 1)

static void test_host(void)
{
    CU_ASSERT(HOK("example.com"));
    CU_ASSERT(HOK("Example.COM."));
    CU_ASSERT(HOK("a.test:8080"));
    CU_ASSERT(HOK("a.test:65535"));
    CU_ASSERT(HOK("127.0.0.1"));
    CU_ASSERT(HOK("127.0.0.1:80"));
    CU_ASSERT(HOK("[::1]"));
    CU_ASSERT(HOK("[::1]:8080"));
    CU_ASSERT(HOK("[2001:db8::1]"));
    CU_ASSERT(HOK("[::ffff:1.2.3.4]"));
    CU_ASSERT(HOK("under_score.test"));
    CU_ASSERT(HOK("a%41.test"));
    CU_ASSERT(!wk_host_ok("", 0));
    CU_ASSERT(!HOK("a/b"));
    CU_ASSERT(!HOK("user@evil"));
    CU_ASSERT(!HOK("\"evil\""));
    CU_ASSERT(!HOK("'evil'"));
    CU_ASSERT(!HOK("a b"));
    CU_ASSERT(!HOK("a,b"));
    CU_ASSERT(!HOK("a;b"));
    CU_ASSERT(!HOK("a(b)"));
    CU_ASSERT(!HOK("a\\b"));
    CU_ASSERT(!HOK("a?b"));
    CU_ASSERT(!HOK("a#b"));
    CU_ASSERT(!HOK("a.test:"));
    CU_ASSERT(!HOK("a.test:80x"));
    CU_ASSERT(!HOK("a.test:65536"));
    CU_ASSERT(!HOK("a.test:123456"));
    CU_ASSERT(!HOK("a.test:80:80"));
    CU_ASSERT(!HOK(":80"));
    CU_ASSERT(!HOK("[::1"));
    CU_ASSERT(!HOK("[::1]x"));
    CU_ASSERT(!HOK("[::1]:"));
    CU_ASSERT(!HOK("[]"));
    CU_ASSERT(!HOK("[fe80::1%eth0]"));
    CU_ASSERT(!HOK("[v1.x]"));
    CU_ASSERT(!HOK("[1.2.3.4]"));
    CU_ASSERT(!HOK("a%zz"));
    CU_ASSERT(!HOK("a%4"));
    CU_ASSERT(!HOK("a\001b"));
    CU_ASSERT(!HOK("a\200b"));
}

static void test_framing_values(void)
{
    uint64_t v = 7;
    int seen;

    CU_ASSERT(wk_content_length("0", 1, &v) && v == 0);
    CU_ASSERT(wk_content_length("123", 3, &v) && v == 123);
    CU_ASSERT(wk_content_length("999999999999999999", 18, &v) && v == 999999999999999999ull);
    CU_ASSERT(!wk_content_length("", 0, &v));
    CU_ASSERT(!wk_content_length("+5", 2, &v));
    CU_ASSERT(!wk_content_length("-5", 2, &v));
    CU_ASSERT(!wk_content_length("5, 5", 4, &v));
    CU_ASSERT(!wk_content_length("0x5", 3, &v));
    CU_ASSERT(!wk_content_length("1 0", 3, &v));
    CU_ASSERT(!wk_content_length("1000000000000000000", 19, &v));
    seen = 0;
    CU_ASSERT(wk_te_chunked_only("chunked", 7, &seen));
    seen = 0;
    CU_ASSERT(wk_te_chunked_only(" CHUNKED ", 9, &seen));
    CU_ASSERT(!wk_te_chunked_only("chunked", 7, &seen)); /* a second line */
    seen = 0;
    CU_ASSERT(!wk_te_chunked_only("chunked, chunked", 16, &seen));
    seen = 0;
    CU_ASSERT(!wk_te_chunked_only("chunked, identity", 17, &seen));
    seen = 0;
    CU_ASSERT(!wk_te_chunked_only("gzip, chunked", 13, &seen));
    seen = 0;
    CU_ASSERT(!wk_te_chunked_only("xchunked", 8, &seen));
    seen = 0;
    CU_ASSERT(!wk_te_chunked_only("", 0, &seen));
    seen = 0;
    CU_ASSERT(!wk_te_chunked_only("chunked,", 8, &seen));
    seen = 0;
    CU_ASSERT(!wk_te_chunked_only("\013chunked", 8, &seen));
}

/* A head split into fields where a lenient parser would split it: <fields> lists, per field,
 * the offsets of name, name end, value and value end in <p>. */
static int tiled(const char *p, const unsigned (*f)[4], unsigned nf)
{
    static struct wk_head h;

    wk_head_reset(&h);
    for (unsigned i = 0; i < nf; i++) {
        h.h[i].name = p + f[i][0];
        h.h[i].nlen = f[i][1] - f[i][0];
        h.h[i].value = f[i][3] > f[i][2] ? p + f[i][2] : "";
        h.h[i].vlen = f[i][3] - f[i][2];
    }
    h.n = nf;
    return wk_head_tiled(p, strlen(p), &h);
}

static void test_head_tiled(void)
{
    /*                 0123456789012345 6 7890123456 7 8901234 5 6 7 */
    static const char ok[] = "GET / HTTP/1.1\r\nHost: a.b\r\nX:\t 1 \r\n\r\n";
    static const unsigned okf[][4] = {{16, 20, 22, 25}, {27, 28, 31, 32}};
    static const char empty[] = "GET / HTTP/1.1\r\nX:\r\nY: \r\n\r\n";
    static const unsigned emptyf[][4] = {{16, 17, 18, 18}, {20, 21, 23, 23}};
    /* a bare LF ends X's line for a lenient parser: Host is a field of its own */
    static const char lf[] = "GET / HTTP/1.1\r\nX: 1\nHost: a\r\n\r\n";
    static const unsigned lff[][4] = {{16, 17, 19, 20}, {21, 25, 27, 28}};
    /* a bare CR likewise */
    static const char cr[] = "GET / HTTP/1.1\r\nX: 1\rHost: a\r\n\r\n";
    /* obs-fold: the value goes on at " 2" */
    static const char fold[] = "GET / HTTP/1.1\r\nX: 1\r\n 2\r\n\r\n";
    static const unsigned foldf[][4] = {{16, 17, 19, 20}};

    CU_ASSERT(tiled(ok, okf, 2));
    CU_ASSERT(tiled(empty, emptyf, 2));
    CU_ASSERT(tiled("GET / HTTP/1.1\r\n\r\n", NULL, 0));
    CU_ASSERT(!tiled("GET / HTTP/1.1\n\r\n", NULL, 0));
    CU_ASSERT(!tiled("GET / HTTP/1.1\r\n\n", NULL, 0));
    CU_ASSERT(!tiled("GET / HTTP/1.1\r\n\r\nX", NULL, 0));
    CU_ASSERT(!tiled(lf, lff, 2));
    CU_ASSERT(!tiled(cr, lff, 2));
    CU_ASSERT(!tiled(fold, foldf, 1));
    CU_ASSERT(!tiled(ok, okf, 1)); /* a field the parser did not report */
}

static int prefers_html(const char *v)
{
    struct wk_accept a;

    memset(&a, 0, sizeof(a));
    wk_accept_scan(&a, v, strlen(v));
    return wk_accept_html(&a);
}

static void test_accept(void)
{
    /* Browsers. */
    CU_ASSERT(prefers_html("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"));
    CU_ASSERT(prefers_html("text/html, */*; q=0.01"));
    CU_ASSERT(prefers_html("TEXT/HTML"));
    CU_ASSERT(prefers_html("text/*;q=0.9, application/json;q=0.5"));
    /* API clients, curl, nothing said, ties, refusals. */
    CU_ASSERT(!prefers_html(""));
    CU_ASSERT(!prefers_html("*/*"));
    CU_ASSERT(!prefers_html("application/json"));
    CU_ASSERT(!prefers_html("application/json, text/html"));
    CU_ASSERT(!prefers_html("text/html;q=0.5, application/json"));
    CU_ASSERT(!prefers_html("text/html;q=0, */*"));
    CU_ASSERT(!prefers_html("text/*;q=0.9, */*"));
    CU_ASSERT(!prefers_html("text/htmlx, application/jsonx"));
    /* The most specific range decides: text/html;q=0 beats the text range. */
    CU_ASSERT(!prefers_html("text/*, text/html;q=0, application/json;q=0.1"));
    CU_ASSERT(prefers_html("*/*;q=0.1, text/html;level=1"));
    /* Bad q-values drop their element; garbage stays garbage. */
    CU_ASSERT(!prefers_html("text/html;q=2"));
    CU_ASSERT(!prefers_html("text/html;q=1.5"));
    CU_ASSERT(!prefers_html("text/html;q=0.12345"));
    CU_ASSERT(!prefers_html("text/html;q=abc"));
    CU_ASSERT(prefers_html("text/html;q=1.000"));
    CU_ASSERT(!prefers_html(",,,;;;=q"));
    CU_ASSERT(!prefers_html("text/"));
    CU_ASSERT(!prefers_html("/html"));
}

UNIT_SUITE(wk_hdr, {"syntax", test_syntax}, {"host", test_host},
           {"framing values", test_framing_values}, {"head tiling", test_head_tiled},
           {"hop_by_hop", test_hop_by_hop}, {"tokens", test_tokens}, {"reqid", test_reqid},
           {"reasons", test_reasons}, {"accept", test_accept})
