/* Unit tests for the access-log line formats: JSON lines with every SPEC field (hostile bytes
 * escaped, absent fields null or empty), the combined format, and the size bound. */
#include "tests/unit/unit.h"

#include <stdlib.h>
#include <string.h>

#include "admin/adm_json.h"
#include "worker/wk_alog.h"

static struct wk_alog_req *req(const char *host, const char *method, const char *path,
                               const char *ua, const char *ref)
{
    size_t hl = strlen(host), ml = strlen(method), pl = strlen(path), ul = strlen(ua),
           rl = strlen(ref);
    struct wk_alog_req *r = calloc(1, sizeof(*r) + hl + ml + pl + ul + rl);

    r->host_len = (uint16_t)hl;
    r->method_len = (uint16_t)ml;
    r->path_len = (uint16_t)pl;
    r->ua_len = (uint16_t)ul;
    r->ref_len = (uint16_t)rl;
    r->http_major = 1;
    r->http_minor = 1;
    memcpy(r->data, host, hl);
    memcpy(r->data + hl, method, ml);
    memcpy(r->data + hl + ml, path, pl);
    memcpy(r->data + hl + ml + pl, ua, ul);
    memcpy(r->data + hl + ml + pl + ul, ref, rl);
    return r;
}

static void entry(struct wk_alog_entry *e, const struct wk_alog_req *r)
{
    memset(e, 0, sizeof(*e));
    e->client_ip = "10.1.2.3";
    e->req = r;
    e->status = 200;
    e->duration_ms = 12;
    e->bytes_sent = 345;
    e->reqid = "abc";
    e->reqid_len = 3;
    e->service = "web";
    e->service_len = 3;
    e->backend = "127.0.0.1:9001";
    e->backend_len = 14;
    e->wall_s = 1700000000; /* 2023-11-14T22:13:20Z */
    e->wall_ms = 5;
}

static void test_json_line(void)
{
    struct wk_alog_req *r = req("a.do", "GET", "/x?y=\"1\"", "curl/8 \x01\xff", "");
    struct wk_alog_entry e;
    char buf[16384], err[128];
    size_t n;
    struct adm_jval *j;

    entry(&e, r);
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_JSON, &e);
    CU_ASSERT_FATAL(n > 0);
    CU_ASSERT_EQUAL(buf[n - 1], '\n');
    CU_ASSERT(memchr(buf, '\n', n - 1) == NULL);
    j = adm_json_parse(buf, n - 1, err, sizeof(err));
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "time"), "2023-11-14T22:13:20.005Z");
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "client_ip"), "10.1.2.3");
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "host"), "a.do");
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "method"), "GET");
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "path"), "/x?y=\"1\"");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "status", 0), 200, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "duration_ms", 0), 12, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "bytes_sent", 0), 345, 1e-9);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "user_agent"), "curl/8 \x01\xff");
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "request_id"), "abc");
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "service"), "web");
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "backend"), "127.0.0.1:9001");
    adm_json_free(j);

    /* No parsed request (408), no service, no backend. */
    entry(&e, NULL);
    e.service = e.backend = NULL;
    e.status = 408;
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_JSON, &e);
    j = adm_json_parse(buf, n - 1, err, sizeof(err));
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT_EQUAL(adm_json_get(j, "service")->type, ADM_J_NULL);
    CU_ASSERT_EQUAL(adm_json_get(j, "backend")->type, ADM_J_NULL);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "method"), "");
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "path"), "");
    adm_json_free(j);

    /* A cut response carries its reason; a complete one has no such key. */
    entry(&e, r);
    e.reason = "stream_idle_timeout";
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_JSON, &e);
    j = adm_json_parse(buf, n - 1, err, sizeof(err));
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "reason"), "stream_idle_timeout");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "status", 0), 200, 1e-9);
    adm_json_free(j);
    entry(&e, r);
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_JSON, &e);
    j = adm_json_parse(buf, n - 1, err, sizeof(err));
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT_PTR_NULL(adm_json_get(j, "reason"));
    CU_ASSERT_PTR_NULL(adm_json_get(j, "middleware"));
    adm_json_free(j);
    /* A middleware's answer names it. */
    entry(&e, r);
    e.middleware = "api-limit";
    e.middleware_len = 9;
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_JSON, &e);
    j = adm_json_parse(buf, n - 1, err, sizeof(err));
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "middleware"), "api-limit");
    adm_json_free(j);

    /* Too small a buffer: nothing, rather than half a line. */
    entry(&e, r);
    CU_ASSERT_EQUAL(wk_alog_format(buf, 40, WK_ALOG_JSON, &e), 0);
    free(r);
}

static void test_combined_line(void)
{
    struct wk_alog_req *r = req("a.do", "POST", "/p", "Mozilla \"x\"", "http://r/");
    struct wk_alog_entry e;
    char buf[4096];
    size_t n;

    entry(&e, r);
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_COMBINED, &e);
    CU_ASSERT_FATAL(n > 0);
    buf[n] = '\0';
    CU_ASSERT_STRING_EQUAL(buf, "10.1.2.3 - - [14/Nov/2023:22:13:20 +0000] \"POST /p HTTP/1.1\" "
                                "200 345 \"http://r/\" \"Mozilla \\x22x\\x22\" \"a.do\" 12 "
                                "\"abc\" \"web\" \"127.0.0.1:9001\"\n");
    entry(&e, NULL);
    e.backend = NULL;
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_COMBINED, &e);
    buf[n] = '\0';
    CU_ASSERT(strstr(buf, "] \"-\" 200 345 \"-\" \"-\" \"-\" 12 \"abc\" \"web\" \"-\"\n") != NULL);
    /* A cut response: the reason as one more quoted field at the end. */
    entry(&e, r);
    e.reason = "client_closed";
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_COMBINED, &e);
    buf[n] = '\0';
    CU_ASSERT(strstr(buf, "\"abc\" \"web\" \"127.0.0.1:9001\" \"client_closed\"\n") != NULL);
    /* A middleware's answer: named in a last field of its own. */
    entry(&e, r);
    e.backend = NULL;
    e.middleware = "office";
    e.middleware_len = 6;
    n = wk_alog_format(buf, sizeof(buf), WK_ALOG_COMBINED, &e);
    buf[n] = '\0';
    CU_ASSERT(strstr(buf, "\"abc\" \"web\" \"-\" \"middleware=office\"\n") != NULL);
    free(r);
}

UNIT_SUITE(wk_alog, {"json_line", test_json_line}, {"combined_line", test_combined_line})
