/* dispatcher: tests for the middleware framework and the simple types' logic: config to snapshot
 * region (and its check against tampering), edits of the upstream head and of a response head,
 * prefix stripping, the host of a redirect, CIDR matching of the client. */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "master/ms_mw.h"
#include "shm/shm_mw.h"
#include "shm/shm_snap.h"
#include "tests/unit/unit.h"
#include "worker/wk_internal.h"
#include "worker/wk_mw_types.h"

static void test_strip(void)
{
    struct {
        const char *t, *want;
    } c[] = {{"/api/x/y?z=1", "/x/y?z=1"},
             {"/api", "/"},
             {"/api?q=1", "/?q=1"},
             {"/api/", "/"},
             {"/apix", NULL},
             {"/ap", NULL},
             {"/other/api", NULL},
             {"/api#f", "/#f"},
             {"/API/x", NULL}};

    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        char buf[64];
        int slash;
        size_t n = strlen(c[i].t), k;

        memcpy(buf, c[i].t, n + 1);
        k = wk_mw_strip(buf, n, "/api", 4, &slash);
        if (c[i].want == NULL) {
            CU_ASSERT_EQUAL(k, 0);
            continue;
        }
        CU_ASSERT_FATAL(k > 0);
        if (slash) {
            buf[k] = '/';
        }
        CU_ASSERT_EQUAL(n - k, strlen(c[i].want));
        CU_ASSERT_NSTRING_EQUAL(buf + k, c[i].want, n - k);
    }
}

static void test_host_noport(void)
{
    CU_ASSERT_EQUAL(wk_mw_host_noport("a.b:8080", 8), 3);
    CU_ASSERT_EQUAL(wk_mw_host_noport("a.b", 3), 3);
    CU_ASSERT_EQUAL(wk_mw_host_noport("[::1]:80", 8), 5);
    CU_ASSERT_EQUAL(wk_mw_host_noport("[::1]", 5), 5);
    CU_ASSERT_EQUAL(wk_mw_host_noport("", 0), 0);
}

/* ---- the upstream head ------------------------------------------------------------------------
 */
static char headbuf[512];

static void head_init(struct wk_xchg *x, struct wk_txn *t, const char *head)
{
    memset(x, 0, sizeof(*x));
    memset(t, 0, sizeof(*t));
    x->tx = t;
    memcpy(headbuf, head, strlen(head));
    t->uout.data = headbuf;
    t->uout.cap = sizeof(headbuf);
    t->uout.end = (uint32_t)strlen(head);
}

static int head_is(const struct wk_xchg *x, const char *want)
{
    return x->tx->uout.end == strlen(want) && memcmp(x->tx->uout.data, want, strlen(want)) == 0;
}

static void test_req_edits(void)
{
    struct wk_xchg x;
    struct wk_txn t;
    const char *v, *tg;
    size_t vl, tl;

    head_init(&x, &t,
              "GET /api/x?q HTTP/1.1\r\nHost: a.do\r\nX-Debug: 1\r\nAccept: */*\r\n"
              "x-debug:2\r\n\r\n");
    CU_ASSERT(wk_mw_req_get(&x, "accept", &v, &vl) == 1 && vl == 3 && memcmp(v, "*/*", 3) == 0);
    CU_ASSERT(wk_mw_req_get(&x, "X-DEBUG", &v, &vl) == 1 && vl == 1 && *v == '1');
    CU_ASSERT(wk_mw_req_get(&x, "x-deb", &v, &vl) == 0);
    CU_ASSERT(wk_mw_req_get(&x, "GET /api/x?q HTTP/1.1", &v, &vl) == 0);
    CU_ASSERT_EQUAL(wk_mw_req_remove(&x, "x-debug"), 2);
    CU_ASSERT(head_is(&x, "GET /api/x?q HTTP/1.1\r\nHost: a.do\r\nAccept: */*\r\n\r\n"));
    CU_ASSERT_EQUAL(wk_mw_req_set(&x, "Accept", "text/html", 9), 0);
    CU_ASSERT_EQUAL(wk_mw_req_add(&x, "X-A", 3, "b", 1), 0);
    CU_ASSERT(head_is(&x, "GET /api/x?q HTTP/1.1\r\nHost: a.do\r\nAccept: text/html\r\nX-A: b\r\n"
                          "\r\n"));
    wk_mw_req_target(&x, &tg, &tl);
    CU_ASSERT(tl == 8 && memcmp(tg, "/api/x?q", 8) == 0);
    CU_ASSERT_EQUAL(wk_mw_req_set_target(&x, tg + 4, tl - 4), 0); /* (inside the old one) */
    CU_ASSERT(
        head_is(&x, "GET /x?q HTTP/1.1\r\nHost: a.do\r\nAccept: text/html\r\nX-A: b\r\n\r\n"));
    CU_ASSERT_EQUAL(wk_mw_req_set_target(&x, "/a/longer/target", 16), 0);
    CU_ASSERT(head_is(&x, "GET /a/longer/target HTTP/1.1\r\nHost: a.do\r\nAccept: text/html\r\n"
                          "X-A: b\r\n\r\n"));
    /* No room: refused, the head unchanged. */
    {
        char big[600];
        uint32_t end = t.uout.end;
        memset(big, 'v', sizeof(big));
        CU_ASSERT_EQUAL(wk_mw_req_add(&x, "X-Big", 5, big, sizeof(big)), -1);
        CU_ASSERT_EQUAL(wk_mw_req_set_target(&x, big, sizeof(big)), -1);
        CU_ASSERT_EQUAL(t.uout.end, end);
    }
}

/* Before the head is built the edits go to the parsed request. */
static void test_req_edits_parsed(void)
{
    static struct wk_h1_req rq;
    struct wk_xchg x;
    struct wk_txn t;
    const char *v, *tg;
    size_t vl, tl;
    char target[] = "/api/x?q";

    memset(&rq, 0, sizeof(rq));
    memset(&x, 0, sizeof(x));
    memset(&t, 0, sizeof(t));
    x.tx = &t;
    t.mw.rq = &rq;
    rq.host = "a.do:81";
    rq.hostlen = 7;
    rq.target = target;
    rq.tlen = strlen(target);
    CU_ASSERT_EQUAL(wk_mw_req_add(&x, "X-Debug", 7, "1", 1), 0);
    CU_ASSERT_EQUAL(wk_mw_req_add(&x, "Accept", 6, "*/*", 3), 0);
    CU_ASSERT_EQUAL(wk_mw_req_add(&x, "x-debug", 7, "2", 1), 0);
    CU_ASSERT(wk_mw_req_get(&x, "X-DEBUG", &v, &vl) == 1 && *v == '1');
    CU_ASSERT_EQUAL(wk_mw_req_remove(&x, "x-debug"), 2);
    CU_ASSERT(rq.hd.n == 1 && wk_mw_req_get(&x, "accept", &v, &vl) == 1 && vl == 3);
    CU_ASSERT_EQUAL(wk_mw_req_set(&x, "Accept", "text/html", 9), 0);
    CU_ASSERT(rq.hd.n == 1 && rq.hd.h[0].vlen == 9);
    CU_ASSERT(wk_mw_req_host(&x, &v, &vl) == 1 && vl == 7);
    wk_mw_req_target(&x, &tg, &tl);
    CU_ASSERT_EQUAL(wk_mw_req_set_target(&x, tg + 4, tl - 4), 0);
    CU_ASSERT(rq.tlen == 4 && memcmp(rq.target, "/x?q", 4) == 0 && rq.slash == 0);
    rq.hd.n = WK_MAX_HEADERS;
    CU_ASSERT_EQUAL(wk_mw_req_add(&x, "X", 1, "1", 1), -1);
    CU_ASSERT_EQUAL(t.uout.end, 0); /* (nothing built) */
}

static void test_resp_edits(void)
{
    struct wk_h1_resp rs;

    memset(&rs, 0, sizeof(rs));
    wk_mw_resp_add(&rs, "Server", 6, "x", 1);
    wk_mw_resp_add(&rs, "Vary", 4, "Accept", 6);
    wk_mw_resp_add(&rs, "server", 6, "y", 1);
    wk_mw_resp_remove(&rs, "SERVER");
    CU_ASSERT_EQUAL(rs.hd.n, 1);
    CU_ASSERT_PTR_NOT_NULL(wk_mw_resp_get(&rs, "vary"));
    wk_mw_resp_set(&rs, "Vary", 4, "Origin", 6);
    CU_ASSERT(rs.hd.n == 1 && rs.hd.h[0].vlen == 6);
    for (int i = 0; i < WK_MAX_HEADERS + 5; i++) {
        wk_mw_resp_add(&rs, "X", 1, "1", 1);
    }
    CU_ASSERT_EQUAL(rs.hd.n, WK_MAX_HEADERS);
    CU_ASSERT_EQUAL(wk_mw_resp_add(&rs, "X", 1, "1", 1), -1);
}

static void test_client_in(void)
{
    struct wk_xchg x;
    struct wk_peer peer;
    struct shm_cidr c[2];

    memset(&x, 0, sizeof(x));
    memset(&peer, 0, sizeof(peer));
    memset(c, 0, sizeof(c));
    x.peer = &peer;
    c[0].family = AF_INET;
    c[0].prefix = 12;
    inet_pton(AF_INET, "172.16.0.0", c[0].addr);
    c[1].family = AF_INET6;
    c[1].prefix = 8;
    inet_pton(AF_INET6, "fd00::", c[1].addr);
    x.at.client_family = AF_INET;
    inet_pton(AF_INET, "172.31.255.1", x.at.client_ip);
    CU_ASSERT(wk_mw_client_in(&x, c, 2));
    inet_pton(AF_INET, "172.32.0.1", x.at.client_ip);
    CU_ASSERT(!wk_mw_client_in(&x, c, 2));
    x.at.client_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:172.16.1.1", x.at.client_ip);
    CU_ASSERT(wk_mw_client_in(&x, c, 2)); /* v4-mapped */
    inet_pton(AF_INET6, "fdff::1", x.at.client_ip);
    CU_ASSERT(wk_mw_client_in(&x, c, 2));
    inet_pton(AF_INET6, "fe00::1", x.at.client_ip);
    CU_ASSERT(!wk_mw_client_in(&x, c, 2));
    /* No resolved client: the peer. */
    x.at.client_family = 0;
    peer.family = AF_INET;
    inet_pton(AF_INET, "172.20.0.9", peer.ip);
    CU_ASSERT(wk_mw_client_in(&x, c, 2));
    CU_ASSERT(!wk_mw_client_in(&x, c, 0));
}

/* ---- config to snapshot ---------------------------------------------------------------------- */
static char *write_tmp(const char *text)
{
    char tmpl[] = "/tmp/dsp-mw-XXXXXX";
    int fd = mkstemp(tmpl);

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    return strdup(tmpl);
}

static const char mw_conf[] =
    "listeners = ( { address = \"127.0.0.1:8080\"; } );\n"
    "services = ( { name = \"s\"; backends = [\"127.0.0.1:9\"]; } );\n"
    "middlewares = (\n"
    "  { name = \"h\"; type = \"headers\"; request_set = [\"X-A:  1 \", \"X-B: two\"];\n"
    "    response_remove = [\"Server\"]; },\n"
    "  { name = \"ip\"; type = \"ip_allow\"; cidrs = [\"10.0.0.0/8\", \"::1\"]; },\n"
    "  { name = \"c\"; type = \"cors\"; origins = [\"*\"]; credentials = true; },\n"
    "  { name = \"sp\"; type = \"strip_prefix\"; prefix = \"/api//\"; }\n"
    ");\n"
    "routes = ( { host = \"a.do\"; service = \"s\"; middlewares = [\"ip\", \"h\"]; },\n"
    "           { host = \"*\"; service = \"s\"; } );\n";

static void test_compile(void)
{
    char *path = write_tmp(mw_conf), *errs = NULL;
    struct ms_config *cfg = NULL;
    const struct shm_snap_hdr *h;
    const struct shm_mw *m;
    const struct shm_route *rt;
    const uint32_t *ids;
    uint32_t n;
    size_t size;
    void *snap;

    CU_ASSERT_EQUAL_FATAL(ms_config_load(path, 0, &cfg, &errs), 0);
    snap = ms_compile(cfg, 1, &size);
    h = snap;
    CU_ASSERT_EQUAL_FATAL(shm_snap_check(h, size), 0);
    CU_ASSERT_EQUAL_FATAL(shm_mw_count(h), 4);
    m = shm_mws(h);
    CU_ASSERT_STRING_EQUAL(shm_mw_s(h, m[0].name), "h");
    CU_ASSERT_EQUAL(m[0].type, SHM_MW_HEADERS);
    {
        const struct shm_mw_headers *p = shm_mw_params(h, &m[0]);
        const struct shm_str *nm = shm_mw_list_at(h, p->req_set_names);
        const struct shm_str *vl = shm_mw_list_at(h, p->req_set_values);
        CU_ASSERT_EQUAL_FATAL(p->req_set_names.n, 2);
        CU_ASSERT_STRING_EQUAL(shm_mw_s(h, nm[0]), "X-A");
        CU_ASSERT_STRING_EQUAL(shm_mw_s(h, vl[0]), "1");
        CU_ASSERT_STRING_EQUAL(shm_mw_s(h, vl[1]), "two");
        CU_ASSERT_EQUAL(p->resp_remove.n, 1);
        CU_ASSERT_EQUAL(p->req_remove.n, 0);
    }
    {
        const struct shm_mw_ip_allow *p = shm_mw_params(h, &m[1]);
        const struct shm_cidr *c = (const void *)(shm_mw_base(h) + p->cidrs_off);
        CU_ASSERT_EQUAL_FATAL(p->ncidrs, 2);
        CU_ASSERT(c[0].family == AF_INET && c[0].prefix == 8 && c[0].addr[0] == 10);
        CU_ASSERT(c[1].family == AF_INET6 && c[1].prefix == 128 && c[1].addr[15] == 1);
    }
    {
        const struct shm_mw_cors *p = shm_mw_params(h, &m[2]);
        CU_ASSERT_EQUAL(p->flags, SHM_MW_CORS_ANY_ORIGIN | SHM_MW_CORS_CREDENTIALS);
        CU_ASSERT_STRING_EQUAL(shm_mw_s(h, p->methods), "GET, HEAD, POST");
    }
    {
        const struct shm_mw_strip *p = shm_mw_params(h, &m[3]);
        CU_ASSERT_STRING_EQUAL(shm_mw_s(h, p->prefix), "/api");
    }
    rt = shm_routes(h);
    ids = shm_mw_route_list(h, rt[0].mw_list, &n);
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT(ids[0] == 1 && ids[1] == 0);
    CU_ASSERT_PTR_NULL(shm_mw_route_list(h, rt[1].mw_list, &n));
    CU_ASSERT_EQUAL(n, 0);

    /* A tampered region is refused: an id out of range, a list outside, a bad type. */
    {
        char *cp = malloc(size);
        struct shm_snap_hdr *c = (struct shm_snap_hdr *)(void *)cp;
        uint32_t *l;
        memcpy(cp, snap, size);
        l = (uint32_t *)(void *)(cp + c->mw_off + shm_routes(c)[0].mw_list);
        l[1] = 4;
        CU_ASSERT_EQUAL(shm_snap_check(c, size), -1);
        memcpy(cp, snap, size);
        ((struct shm_route *)(void *)(cp + c->routes_off))[1].mw_list = c->mw_len;
        CU_ASSERT_EQUAL(shm_snap_check(c, size), -1);
        memcpy(cp, snap, size);
        ((struct shm_mw *)(void *)(cp + c->mw_off + shm_mw_region(c)->mws_off))[2].type = 99;
        CU_ASSERT_EQUAL(shm_snap_check(c, size), -1);
        memcpy(cp, snap, size);
        ((struct shm_mw *)(void *)(cp + c->mw_off + shm_mw_region(c)->mws_off))[0].params_len =
            c->mw_len;
        CU_ASSERT_EQUAL(shm_snap_check(c, size), -1);
        free(cp);
    }
    free(snap);
    ms_config_free(cfg);
    unlink(path);
    free(path);
}

/* One mistake per line, each a FILE:LINE error naming the problem. */
static void test_config_errors(void)
{
    static const struct {
        const char *entry, *want;
    } c[] = {
        {"{ name = \"a\"; type = \"headers\"; request_set = [\"bad name: 1\"]; }", "Name: value"},
        {"{ name = \"a\"; type = \"headers\"; response_remove = [\"Transfer-Encoding\"]; }",
         "framing"},
        {"{ name = \"a\"; type = \"headers\"; }", "needs request_set"},
        {"{ name = \"a b\"; type = \"static\"; }", "not a valid name"},
        {"{ name = \"a\"; type = \"static\"; body = \"x\"; body_file = \"y\"; }", "not both"},
        {"{ name = \"a\"; type = \"static\"; body_file = \"/nonexistent/x\"; }", "body_file"},
        {"{ name = \"a\"; type = \"static\"; status = 99; }", "status"},
        {"{ name = \"a\"; type = \"static\"; status = 204; body = \"x\"; }", "has no body"},
        {"{ name = \"a\"; type = \"ip_allow\"; cidrs = []; }", "needs cidrs"},
        {"{ name = \"a\"; type = \"ip_allow\"; cidrs = [1]; }", "must be a string"},
        {"{ name = \"a\"; type = \"strip_prefix\"; prefix = \"/\"; }", "not \"/\""},
        {"{ name = \"a\"; type = \"max_body\"; bytes = -1; }", "bytes"},
        {"{ name = \"a\"; type = \"cors\"; origins = [\"ftp://x\"]; }", "scheme://host"},
        {"{ name = \"a\"; type = \"cors\"; origins = [\"*\"]; max_age_s = -5; }", "max_age_s"},
        {"\"just a string\"", "must be a group"},
    };

    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        char text[1024], *path, *errs = NULL;
        struct ms_config *cfg = NULL;

        snprintf(text, sizeof(text),
                 "listeners = ( { address = \"127.0.0.1:8080\"; } );\n"
                 "services = ( { name = \"s\"; backends = [\"127.0.0.1:9\"]; } );\n"
                 "middlewares = (\n%s\n);\n",
                 c[i].entry);
        path = write_tmp(text);
        CU_ASSERT_EQUAL(ms_config_load(path, 0, &cfg, &errs), -1);
        /* (libconfig places a scalar list element on the line after it) */
        if (errs == NULL || (strstr(errs, ":4:") == NULL && c[i].entry[0] != '"') ||
            strstr(errs, c[i].want) == NULL) {
            fprintf(stderr, "\n  %s: got %s\n", c[i].entry, errs ? errs : "(nothing)");
            CU_FAIL("expected error missing");
        }
        free(errs);
        unlink(path);
        free(path);
    }
}

UNIT_SUITE(mw, {"strip_prefix", test_strip}, {"host without port", test_host_noport},
           {"upstream head edits", test_req_edits}, {"parsed request edits", test_req_edits_parsed},
           {"response head edits", test_resp_edits}, {"client in CIDRs", test_client_in},
           {"config to snapshot region", test_compile}, {"config errors", test_config_errors})
