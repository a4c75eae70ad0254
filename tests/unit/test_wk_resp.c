/* Unit tests for the strict syntax of backend response heads (worker/wk_resp.c). */
#include "tests/unit/unit.h"

#include <string.h>

#include "worker/wk_internal.h"

static int syn(const char *s)
{
    return wk_resp_head_syntax(s, strlen(s));
}

static void test_status_line(void)
{
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\n\r\n"), 200);
    CU_ASSERT_EQUAL(syn("HTTP/1.0 404 Not Found\r\nA: b\r\n\r\n"), 404);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 204\r\n\r\n"), 204);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 \r\n\r\n"), 200);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 599 x\ty \xff\r\n\r\n"), 599);
    /* Out-of-range codes parse: the caller rejects them. */
    CU_ASSERT_EQUAL(syn("HTTP/1.1 000 x\r\n\r\n"), 0);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 999 x\r\n\r\n"), 999);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 1000 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 20 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 0200 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1  200 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1\t200 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/2.0 200 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.2 200 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("http/1.1 200 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn(" HTTP/1.1 200 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("\r\nHTTP/1.1 200 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 2x0 x\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200x\r\n\r\n"), -1);
}

static void test_line_ends(void)
{
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\n\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\nA: b\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\nA: b\r\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\nA: b\rC: d\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\nA: b\x01\r\n\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\nA: b\x7f\r\n\r\n"), -1);
    {
        static const char nul[] = "HTTP/1.1 200 OK\r\nA: \0\r\n\r\n";
        CU_ASSERT_EQUAL(wk_resp_head_syntax(nul, sizeof(nul) - 1), -1);
    }
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\nA: b\r\n"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\nA: b\r\n\r"), -1);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200 OK\r\nA:\tb\r\n\r\n"), 200);
    CU_ASSERT_EQUAL(syn("HTTP/1.1 200\r\n"), -1);
}

static void test_status_line_alone(void)
{
    CU_ASSERT_EQUAL(wk_resp_status_line("HTTP/1.1 200 OK\r\nX\n\n", 20), 200);
    CU_ASSERT_EQUAL(wk_resp_status_line("HTTP/1.1 204\r\n\r\n", 16), 204);
    CU_ASSERT_EQUAL(wk_resp_status_line("HTTP/1.1 200 O\x01K\r\n\r\n", 20), -1);
    CU_ASSERT_EQUAL(wk_resp_status_line("HTTP/1.1 200 OK\n\r\n\r\n", 20), -1);
    CU_ASSERT_EQUAL(wk_resp_status_line("HTTP/1.1 200 OK\rX\r\n\r\n", 20), -1);
    CU_ASSERT_EQUAL(wk_resp_status_line("HTTP/1.1 200 OK\x7f\r\n\r\n", 20), -1);
}

UNIT_SUITE(wk_resp, {"status line alone", test_status_line_alone},
           {"status_line", test_status_line}, {"line_ends", test_line_ends})
