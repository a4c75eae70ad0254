/* Unit tests for the gRPC helpers: grpc-timeout parsing (every unit, rounding, malformed values),
 * the gRPC content types, the status that answers each generated HTTP error, grpc-message
 * encoding, and which trailer fields may travel. */
#include "tests/unit/unit.h"

#include <stdlib.h>
#include <string.h>

#include "worker/wk_grpc.h"
#include "worker/wk_h2msg.h"
#include "shm/shm_types.h"

#define S(x) x, sizeof(x) - 1

static uint64_t tmo(const char *v)
{
    uint64_t ms = 12345;

    return wk_grpc_timeout(v, strlen(v), &ms) == 0 ? ms : UINT64_MAX;
}

static void test_timeout(void)
{
    CU_ASSERT(tmo("100m") == 100);
    CU_ASSERT(tmo("5S") == 5000);
    CU_ASSERT(tmo("2M") == 120000);
    CU_ASSERT(tmo("1H") == 3600000);
    CU_ASSERT(tmo("1500u") == 2); /* rounded up: never shorter than asked */
    CU_ASSERT(tmo("1000u") == 1);
    CU_ASSERT(tmo("1n") == 1);
    CU_ASSERT(tmo("999999n") == 1);
    CU_ASSERT(tmo("1000001n") == 2);
    CU_ASSERT(tmo("0m") == 0);
    CU_ASSERT(tmo("0n") == 0);
    CU_ASSERT(tmo("00000001S") == 1000); /* 8 digits */
    CU_ASSERT(tmo("99999999m") == 99999999);
    CU_ASSERT(tmo("99999999H") == WK_GRPC_TIMEOUT_MAX_MS); /* clamped, no overflow */
    /* malformed */
    CU_ASSERT(tmo("") == UINT64_MAX);
    CU_ASSERT(tmo("m") == UINT64_MAX);
    CU_ASSERT(tmo("100") == UINT64_MAX);
    CU_ASSERT(tmo("100x") == UINT64_MAX);
    CU_ASSERT(tmo("100ms") == UINT64_MAX);
    CU_ASSERT(tmo("100s") == UINT64_MAX);       /* units are case-sensitive */
    CU_ASSERT(tmo("123456789m") == UINT64_MAX); /* 9 digits */
    CU_ASSERT(tmo("-1S") == UINT64_MAX);
    CU_ASSERT(tmo("+1S") == UINT64_MAX);
    CU_ASSERT(tmo(" 1S") == UINT64_MAX);
    CU_ASSERT(tmo("1S ") == UINT64_MAX);
    CU_ASSERT(tmo("1.5S") == UINT64_MAX);
    CU_ASSERT(tmo("0x1S") == UINT64_MAX);
}

static void test_head_timeout(void)
{
    struct wk_head hd;
    uint64_t ms = 0;

    memset(&hd, 0, sizeof(hd));
    hd.h[0] = (struct wk_hdr){"content-type", "application/grpc", 12, 16};
    hd.n = 1;
    CU_ASSERT(wk_grpc_head_timeout(&hd, &ms) == 0);
    hd.h[1] = (struct wk_hdr){"Grpc-Timeout", "250m", 12, 4};
    hd.n = 2;
    CU_ASSERT(wk_grpc_head_timeout(&hd, &ms) == 1 && ms == 250);
    hd.h[1].value = "250";
    hd.h[1].vlen = 3;
    CU_ASSERT(wk_grpc_head_timeout(&hd, &ms) == -1);
}

static void test_ctype(void)
{
    CU_ASSERT(wk_grpc_ctype(S("application/grpc")));
    CU_ASSERT(wk_grpc_ctype(S("application/grpc+proto")));
    CU_ASSERT(wk_grpc_ctype(S("application/grpc+json")));
    CU_ASSERT(wk_grpc_ctype(S("Application/GRPC")));
    CU_ASSERT(wk_grpc_ctype(S("application/grpc;charset=utf-8")));
    CU_ASSERT(!wk_grpc_ctype(S("application/grpc-web")));
    CU_ASSERT(!wk_grpc_ctype(S("application/grpcx")));
    CU_ASSERT(!wk_grpc_ctype(S("application/json")));
    CU_ASSERT(!wk_grpc_ctype(S("application/grp")));
    CU_ASSERT(!wk_grpc_ctype(S("")));
}

static void test_code(void)
{
    static const char nf[] = "{\"error\":\"Service not found\",\"message\":\"No service\"}";
    static const char nd[] =
        "{\"error\":\"Service not deployed\",\"message\":\"x\",\"hint\":\"y\"}";

    CU_ASSERT(wk_grpc_code(502, S("{}")) == 14);
    CU_ASSERT(wk_grpc_code(503, S("{}")) == 14);
    CU_ASSERT(wk_grpc_code(504, S("{}")) == 4);
    CU_ASSERT(wk_grpc_code(408, S("{}")) == 4);
    CU_ASSERT(wk_grpc_code(404, S(nf)) == 12);
    CU_ASSERT(wk_grpc_code(404, S(nd)) == 14);
    CU_ASSERT(wk_grpc_code(404, S("<html>Service not deployed</html>")) == 12);
    CU_ASSERT(wk_grpc_code(429, S("{}")) == 8);
    CU_ASSERT(wk_grpc_code(413, S("{}")) == 8);
    CU_ASSERT(wk_grpc_code(431, S("{}")) == 8);
    CU_ASSERT(wk_grpc_code(400, S("{}")) == 13);
    CU_ASSERT(wk_grpc_code(500, S("{}")) == 13);
    CU_ASSERT(wk_grpc_code(401, S("{}")) == 16);
    CU_ASSERT(wk_grpc_code(403, S("{}")) == 7);
    CU_ASSERT(wk_grpc_code(405, S("{}")) == 12);
    CU_ASSERT(wk_grpc_code(501, S("{}")) == 12);
    CU_ASSERT(wk_grpc_code(200, S("{}")) == 0);
    CU_ASSERT(wk_grpc_code(308, S("")) == 2);
    CU_ASSERT(wk_grpc_code(418, NULL, 0) == 2);
}

static void test_cut_code(void)
{
    const char *m;

    CU_ASSERT(wk_grpc_cut_code(SHM_CUT_BACKEND_CLOSED, &m) == 14 && m != NULL);
    CU_ASSERT(wk_grpc_cut_code(SHM_CUT_BACKEND_INVALID, &m) == 13 && m != NULL);
    CU_ASSERT(wk_grpc_cut_code(SHM_CUT_STREAM_IDLE, &m) == 4 && m != NULL);
    CU_ASSERT(wk_grpc_cut_code(SHM_CUT_DEADLINE, &m) == 4 && m != NULL);
    /* the client's doing, or ours: a reset, no status */
    CU_ASSERT(wk_grpc_cut_code(SHM_CUT_REQUEST_ERROR, &m) == 0 && m == NULL);
    CU_ASSERT(wk_grpc_cut_code(SHM_CUT_INTERNAL, &m) == 0);
    CU_ASSERT(wk_grpc_cut_code(SHM_CUT_SEND_TIMEOUT, &m) == 0);
    CU_ASSERT(wk_grpc_cut_code(SHM_CUT_NONE, &m) == 0);
}

static void test_message(void)
{
    char out[64];
    size_t n;

    n = wk_grpc_message(503,
                        S("{\"error\":\"Service unavailable\",\"message\":\"No healthy "
                          "backend\"}"),
                        out, sizeof(out));
    CU_ASSERT(n == strlen(out));
    CU_ASSERT_STRING_EQUAL(out, "No healthy backend");
    /* escapes: \" \\ \u00XX control and non-ASCII bytes, and '%' itself */
    wk_grpc_message(400, S("{\"message\":\"a\\\"b\\\\c\\u000ad\\u00e9 100%\"}"), out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "a\"b\\c%0Ad%E9 100%25");
    wk_grpc_message(400, S("{\"message\":\"\\u20ac\"}"), out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "%E2%82%AC");
    /* no JSON message: the reason phrase */
    wk_grpc_message(502, S("<html>x</html>"), out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "Bad Gateway");
    wk_grpc_message(504, S("{\"message\":\"\"}"), out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "Gateway Timeout");
    /* an unterminated value is no value */
    wk_grpc_message(502, S("{\"message\":\"abc"), out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "Bad Gateway");
    /* cut between whole escapes */
    n = wk_grpc_message(400, S("{\"message\":\"abcd\\u00e9\"}"), out, 7);
    CU_ASSERT(n == 4);
    CU_ASSERT_STRING_EQUAL(out, "abcd");
    n = wk_grpc_message(400, S("{\"message\":\"abcdefgh\"}"), out, 5);
    CU_ASSERT(n == 4);
    CU_ASSERT_STRING_EQUAL(out, "abcd");
    CU_ASSERT(wk_grpc_message(400, S("{}"), out, 1) == 0 && out[0] == '\0');
}

static void test_trailers(void)
{
    struct wk_hdr f[8];
    static const char sec[] = "grpc-status: 0\r\ngrpc-message:  all good \t\r\nContent-Length: "
                              "5\r\nTE: trailers\r\nX-Meta:\r\nhost: a\r\nUpgrade: x\r\n\r\n";
    uint32_t n;

    CU_ASSERT(wk_trailer_ok(S("grpc-status")));
    CU_ASSERT(wk_trailer_ok(S("X-Checksum")));
    CU_ASSERT(!wk_trailer_ok(S(":status")));
    CU_ASSERT(!wk_trailer_ok(S("content-length")));
    CU_ASSERT(!wk_trailer_ok(S("Transfer-Encoding")));
    CU_ASSERT(!wk_trailer_ok(S("connection")));
    CU_ASSERT(!wk_trailer_ok(S("Trailer")));
    CU_ASSERT(!wk_trailer_ok(S("HOST")));
    CU_ASSERT(!wk_trailer_ok(S("bad name")));
    CU_ASSERT(!wk_trailer_ok(S("")));
    n = wk_trailer_split(S(sec), f, 8);
    CU_ASSERT(n == 3);
    CU_ASSERT(f[0].nlen == 11 && memcmp(f[0].name, "grpc-status", 11) == 0);
    CU_ASSERT(f[0].vlen == 1 && f[0].value[0] == '0');
    CU_ASSERT(f[1].vlen == 8 && memcmp(f[1].value, "all good", 8) == 0);
    CU_ASSERT(f[2].nlen == 6 && f[2].vlen == 0);
    CU_ASSERT(wk_trailer_split(S(sec), f, 1) == 1);
    CU_ASSERT(wk_trailer_split(S("\r\n"), f, 8) == 0);
    CU_ASSERT(wk_trailer_split(S("a: b"), f, 8) == 1); /* (no line end) */
}

static void test_h2_trailer_fields(void)
{
    struct wk_hdr f[4] = {{"X-Sum", "42", 5, 2},
                          {"Content-Length", "3", 14, 1},
                          {"grpc-status", "0", 11, 1},
                          {"x-bad", "a\rb", 5, 3}};
    struct wk_h2_fields *tf = wk_h2_fields_new(f, 4);
    char out[128];
    size_t n;

    CU_ASSERT_FATAL(tf != NULL);
    CU_ASSERT(tf->n == 2);
    CU_ASSERT(tf->nv[0].namelen == 5 && memcmp(tf->nv[0].name, "x-sum", 5) == 0); /* lowered */
    CU_ASSERT(tf->nv[0].valuelen == 2 && memcmp(tf->nv[0].value, "42", 2) == 0);
    CU_ASSERT(tf->nv[1].namelen == 11 && memcmp(tf->nv[1].name, "grpc-status", 11) == 0);
    free(tf);
    /* the last chunk of a request body sent upstream chunked, with the trailer section */
    n = wk_h2_last_chunk(out, sizeof(out), f, 1);
    CU_ASSERT(n == 16 && memcmp(out, "0\r\nX-Sum: 42\r\n\r\n", 16) == 0);
    CU_ASSERT(wk_h2_last_chunk(out, sizeof(out), NULL, 0) == 5);
    CU_ASSERT(wk_h2_last_chunk(out, 15, f, 1) == 0); /* does not fit */
}

UNIT_SUITE(wk_grpc, {"grpc-timeout", test_timeout}, {"grpc-timeout field", test_head_timeout},
           {"gRPC content types", test_ctype}, {"status for generated errors", test_code},
           {"status for cut calls", test_cut_code}, {"grpc-message", test_message},
           {"trailer fields", test_trailers},
           {"HTTP/2 trailer fields and the last chunk", test_h2_trailer_fields})
