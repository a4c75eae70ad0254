/* dispatcher: tests for the Redis namespace formats and their merge into a file config: backends
 * "addr[=weight],...", methods "GET,POST", integers; file-wins on a name clash; Redis routes after
 * the file's, sorted by id; one bad hash refuses the whole namespace with its key named; and
 * unmerge restoring the file config exactly. */
#include "master/ms_redis_ns.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <http_parser.h>

#include "common/log.h"
#include "master/ms_config.h"
#include "master/ms_tls.h"
#include "tests/unit/unit.h"

static const char file_conf[] =
    "listeners = ( { address = \"127.0.0.1:8080\"; } );\n"
    "environment = \"production\";\n"
    "redis = { host = \"127.0.0.1\"; port = 6390; db = 2; resync_ms = 500; };\n"
    "services = ( { name = \"gateway\"; backends = [ \"127.0.0.1:9101\" ]; },\n"
    "             { name = \"db\"; backends = [ \"127.0.0.1:9102\" ]; } );\n"
    "routes = ( { host = \"gateway.do\"; service = \"gateway\"; } );\n";

static struct ms_config *load_file(void)
{
    char tmpl[] = "/tmp/dsp-ms-redis-XXXXXX";
    int fd = mkstemp(tmpl);
    struct ms_config *cfg = NULL;
    char *errs = NULL;
    FILE *f;

    CU_ASSERT_FATAL(fd >= 0);
    f = fdopen(fd, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(file_conf, f);
    fclose(f);
    if (ms_config_load(tmpl, 0, &cfg, &errs) != 0) {
        fprintf(stderr, "%s\n", errs);
    }
    unlink(tmpl);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    return cfg;
}

/* Add an entry whose fields are given as "name", "value", ..., NULL. */
static struct ms_rns_entry *add(struct ms_rns *ns, int kind, const char *id, ...)
{
    struct ms_rns_entry *e = ms_rns_add(ns, kind, id, strlen(id));
    va_list ap;
    const char *n;

    va_start(ap, id);
    while ((n = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        ms_rns_set(e, n, strlen(n), v, strlen(v));
    }
    va_end(ap);
    return e;
}

static void test_parse_backends(void)
{
    struct ms_backend *b;
    size_t n;
    char err[256];

    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:81=3, [::1]:82 ,localhost:83 = 2", &b, &n, err,
                                          sizeof(err)),
                    0);
    CU_ASSERT_EQUAL_FATAL(n, 3);
    CU_ASSERT_STRING_EQUAL(b[0].address, "127.0.0.1:81");
    CU_ASSERT_EQUAL(b[0].weight, 3);
    CU_ASSERT_STRING_EQUAL(b[1].address, "[::1]:82");
    CU_ASSERT_EQUAL(b[1].weight, 1);
    CU_ASSERT_STRING_EQUAL(b[2].address, "127.0.0.1:83");
    CU_ASSERT_EQUAL(b[2].weight, 2);
    for (size_t i = 0; i < n; i++) {
        free(b[i].address);
    }
    free(b);

    CU_ASSERT_EQUAL(ms_rns_parse_backends("", &b, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 0);
    CU_ASSERT_PTR_NULL(b);
    CU_ASSERT_EQUAL(ms_rns_parse_backends("  ", &b, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 0);

    CU_ASSERT_EQUAL(ms_rns_parse_backends("10.0.0.1", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "10.0.0.1"));
    CU_ASSERT_EQUAL(ms_rns_parse_backends("not an address:80", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_backends("0.0.0.0:80", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "wildcard"));
    /* A weight that would wrap into the range (2^32 + 1) or carries junk is refused. */
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1=4294967297", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "out of range"));
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1=2x", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1=1.5", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1=-1", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1=0", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "weight"));
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1=1001", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1=x", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1,,127.0.0.1:2", &b, &n, err, sizeof(err)),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "empty"));
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1,", &b, &n, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_backends("127.0.0.1:1,127.0.0.1:1=2", &b, &n, err, sizeof(err)),
                    -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "duplicate backend 127.0.0.1:1"));
}

static void test_parse_methods(void)
{
    uint64_t m = 0;
    char err[256];

    CU_ASSERT_EQUAL(ms_rns_parse_methods("GET,POST", &m, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(m, (1ULL << HTTP_GET) | (1ULL << HTTP_POST));
    CU_ASSERT_EQUAL(ms_rns_parse_methods(" delete , m-search ", &m, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(m, (1ULL << HTTP_DELETE) | (1ULL << HTTP_MSEARCH));
    CU_ASSERT_EQUAL(ms_rns_parse_methods("GET,FETCH", &m, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "unknown HTTP method \"FETCH\""));
    CU_ASSERT_EQUAL(ms_rns_parse_methods("", &m, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "empty"));
    CU_ASSERT_EQUAL(ms_rns_parse_methods("GET,", &m, err, sizeof(err)), -1);
}

static void test_parse_int(void)
{
    long v;
    char err[256];

    CU_ASSERT_EQUAL(ms_rns_parse_int("42", 0, 100, &v, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(v, 42);
    CU_ASSERT_EQUAL(ms_rns_parse_int("-7", -10, 10, &v, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(v, -7);
    CU_ASSERT_EQUAL(ms_rns_parse_int("101", 0, 100, &v, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "out of range"));
    CU_ASSERT_EQUAL(ms_rns_parse_int("4 2", 0, 100, &v, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_int("", 0, 100, &v, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_int("1e3", 0, 10000, &v, err, sizeof(err)), -1);
    CU_ASSERT_EQUAL(ms_rns_parse_int("99999999999999999999", 0, 100, &v, err, sizeof(err)), -1);
    /* Strictly decimal digits, nothing around them, never wrapped into the range. */
    static const char *const bad[] = {"4294967296",
                                      "4294967297",
                                      "-4294967295",
                                      "2147483648",
                                      "-2147483649",
                                      "9223372036854775808",
                                      "-9223372036854775809",
                                      "18446744073709551617",
                                      "0x10",
                                      "1.0",
                                      "1e3",
                                      "10 ",
                                      " 10",
                                      "10\n",
                                      "\t10",
                                      "10abc",
                                      "+-1",
                                      "--1",
                                      "-",
                                      "+",
                                      "1,5",
                                      "true",
                                      "10L"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 12345;
        if (ms_rns_parse_int(bad[i], INT_MIN, INT_MAX, &v, err, sizeof(err)) != -1) {
            fprintf(stderr, "\n\"%s\" was accepted as %ld\n", bad[i], v);
        }
        CU_ASSERT_EQUAL(ms_rns_parse_int(bad[i], INT_MIN, INT_MAX, &v, err, sizeof(err)), -1);
        CU_ASSERT_EQUAL(v, 12345);
    }
    CU_ASSERT_EQUAL(ms_rns_parse_int("2147483647", INT_MIN, INT_MAX, &v, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(v, INT_MAX);
    CU_ASSERT_EQUAL(ms_rns_parse_int("-2147483648", INT_MIN, INT_MAX, &v, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(v, INT_MIN);
    CU_ASSERT_EQUAL(ms_rns_parse_int("+0010", 0, 100, &v, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(v, 10);
}

static void test_config_keys(void)
{
    struct ms_config *cfg = load_file();

    CU_ASSERT_TRUE(cfg->redis.enabled);
    CU_ASSERT_EQUAL(cfg->redis.port, 6390);
    CU_ASSERT_EQUAL(cfg->redis.db, 2);
    CU_ASSERT_EQUAL(cfg->redis.resync_ms, 500);
    CU_ASSERT_EQUAL(cfg->redis.connect_timeout_ms, 2000);
    CU_ASSERT_EQUAL(cfg->redis.command_timeout_ms, 2000);
    CU_ASSERT_PTR_NULL(cfg->redis.user);
    CU_ASSERT_FALSE(cfg->redis.merged);
    ms_config_free(cfg);
}

static void test_merge(void)
{
    struct ms_config *cfg = load_file();
    struct ms_rns *ns = ms_rns_new("production");
    char *errs = NULL;
    int lvl = log_level;

    CU_ASSERT_STRING_EQUAL(ns->prefix, "dispatcher:production:");
    add(ns, MS_RNS_SERVICE, "api", "backends", "127.0.0.1:9201=2,127.0.0.1:9202", "balance",
        "least-conn", "health_path", "/up", "health_interval_ms", "500", "retries", "3", "protocol",
        "grpc", NULL);
    add(ns, MS_RNS_SERVICE, "gateway", "backends", "127.0.0.1:9999", NULL); /* file wins */
    add(ns, MS_RNS_SERVICE, "empty", NULL);
    add(ns, MS_RNS_ROUTE, "z-last", "host", "Z.DO.", "service", "api", NULL);
    add(ns, MS_RNS_ROUTE, "a-first", "host", "*.api.do", "path", "/v1/", "methods", "GET,POST",
        "priority", "-3", "service", "gateway", NULL);
    add(ns, MS_RNS_ROUTE, "m-mid", "host", "*", "service", "empty", NULL);
    ms_rns_sort(ns);

    log_level = LOG_ERROR; /* the file-wins warning */
    CU_ASSERT_EQUAL_FATAL(ms_rns_merge(cfg, ns, 0, &errs), 0);
    log_level = lvl;
    CU_ASSERT_PTR_NULL(errs);
    CU_ASSERT_TRUE(cfg->redis.merged);

    CU_ASSERT_EQUAL_FATAL(cfg->nservices, 4);
    CU_ASSERT_STRING_EQUAL(cfg->services[0].name, "gateway");
    CU_ASSERT_EQUAL(cfg->services[0].source, SHM_SOURCE_FILE);
    CU_ASSERT_STRING_EQUAL(cfg->services[0].backends[0].address, "127.0.0.1:9101");
    CU_ASSERT_STRING_EQUAL(cfg->services[2].name, "api");
    CU_ASSERT_EQUAL(cfg->services[2].source, SHM_SOURCE_REDIS);
    CU_ASSERT_EQUAL(cfg->services[2].balance, SHM_BALANCE_LEASTCONN);
    CU_ASSERT_EQUAL_FATAL(cfg->services[2].nbackends, 2);
    CU_ASSERT_EQUAL(cfg->services[2].backends[0].weight, 2);
    CU_ASSERT_STRING_EQUAL(cfg->services[2].backends[1].address, "127.0.0.1:9202");
    CU_ASSERT_TRUE(cfg->services[2].health.enabled);
    CU_ASSERT_STRING_EQUAL(cfg->services[2].health.path, "/up");
    CU_ASSERT_EQUAL(cfg->services[2].health.interval_ms, 500);
    CU_ASSERT_EQUAL(cfg->services[2].retries, 3);
    CU_ASSERT_EQUAL(cfg->services[2].protocol, SHM_PROTO_GRPC);
    CU_ASSERT_EQUAL(cfg->services[0].protocol, SHM_PROTO_HTTP1); /* the default */
    CU_ASSERT_STRING_EQUAL(cfg->services[3].name, "empty");
    CU_ASSERT_EQUAL(cfg->services[3].nbackends, 0);
    CU_ASSERT_FALSE(cfg->services[3].health.enabled);

    CU_ASSERT_EQUAL_FATAL(cfg->nroutes, 4);
    CU_ASSERT_EQUAL(cfg->routes[0].source, SHM_SOURCE_FILE);
    /* After the file's, in id order. */
    CU_ASSERT_STRING_EQUAL(cfg->routes[1].host, "*.api.do");
    CU_ASSERT_STRING_EQUAL(cfg->routes[1].path, "/v1/");
    CU_ASSERT_EQUAL(cfg->routes[1].methods, (1ULL << HTTP_GET) | (1ULL << HTTP_POST));
    CU_ASSERT_EQUAL(cfg->routes[1].priority, -3);
    CU_ASSERT_EQUAL(cfg->routes[1].service_idx, 0); /* the file's gateway */
    CU_ASSERT_EQUAL(cfg->routes[1].source, SHM_SOURCE_REDIS);
    CU_ASSERT_STRING_EQUAL(cfg->routes[2].host, "*");
    CU_ASSERT_EQUAL(cfg->routes[2].service_idx, 3);
    CU_ASSERT_STRING_EQUAL(cfg->routes[3].host, "z.do");
    CU_ASSERT_STRING_EQUAL(cfg->routes[3].path, "/");
    CU_ASSERT_EQUAL(cfg->routes[3].service_idx, 2);

    ms_rns_unmerge(cfg);
    CU_ASSERT_FALSE(cfg->redis.merged);
    CU_ASSERT_EQUAL(cfg->nservices, 2);
    CU_ASSERT_EQUAL(cfg->nroutes, 1);
    CU_ASSERT_STRING_EQUAL(cfg->routes[0].host, "gateway.do");
    /* Merging again after an unmerge gives the same result. */
    CU_ASSERT_EQUAL(ms_rns_merge(cfg, ns, 1, &errs), 0);
    CU_ASSERT_EQUAL(cfg->nroutes, 4);
    ms_rns_free(ns);
    ms_config_free(cfg);
}

/* Merge <ns> into a fresh file config; it must be refused with an error containing <key> and
 * <msg>, and leave the config as the file made it. */
static void expect_refused(struct ms_rns *ns, const char *key, const char *msg)
{
    struct ms_config *cfg = load_file();
    char *errs = NULL;
    char line[512];

    ms_rns_sort(ns);
    CU_ASSERT_EQUAL(ms_rns_merge(cfg, ns, 1, &errs), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    snprintf(line, sizeof(line), "redis dispatcher:production:%s: ", key);
    if (strstr(errs, line) == NULL || strstr(errs, msg) == NULL) {
        fprintf(stderr, "\nexpected \"%s...%s\" in:\n%s\n", line, msg, errs);
    }
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, line));
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, msg));
    CU_ASSERT_EQUAL(cfg->nservices, 2);
    CU_ASSERT_EQUAL(cfg->nroutes, 1);
    CU_ASSERT_FALSE(cfg->redis.merged);
    free(errs);
    ms_config_free(cfg);
    ms_rns_free(ns);
}

/* A namespace holding one good service and route besides whatever the test adds. */
static struct ms_rns *base_ns(void)
{
    struct ms_rns *ns = ms_rns_new("production");

    add(ns, MS_RNS_SERVICE, "good", "backends", "127.0.0.1:9300", NULL);
    add(ns, MS_RNS_ROUTE, "good", "host", "good.do", "service", "good", NULL);
    return ns;
}

static void test_refused(void)
{
    struct ms_rns *ns;
    struct ms_rns_entry *e;

    ns = base_ns();
    add(ns, MS_RNS_SERVICE, "bad", "backends", "127.0.0.1:9301,nonsense", NULL);
    expect_refused(ns, "service:bad", "backends: backend \"nonsense\"");

    ns = base_ns();
    add(ns, MS_RNS_SERVICE, "bad", "backends", "127.0.0.1:9301", "protocol", "h3", NULL);
    expect_refused(ns, "service:bad", "protocol \"h3\" must be http1, h2 or grpc");

    ns = base_ns();
    add(ns, MS_RNS_ROUTE, "api", "host", "api.do", "service", "x", NULL);
    expect_refused(ns, "route:api", "unknown service 'x'");

    ns = base_ns();
    add(ns, MS_RNS_ROUTE, "api", "host", "api.do:80", "service", "good", NULL);
    expect_refused(ns, "route:api", "host \"api.do:80\"");

    ns = base_ns();
    add(ns, MS_RNS_ROUTE, "api", "service", "good", NULL);
    expect_refused(ns, "route:api", "no host field");

    ns = base_ns();
    add(ns, MS_RNS_ROUTE, "api", "host", "a.do", NULL);
    expect_refused(ns, "route:api", "no service field");

    ns = base_ns();
    add(ns, MS_RNS_ROUTE, "api", "host", "a.do", "service", "good", "path", "v1", NULL);
    expect_refused(ns, "route:api", "must start with '/'");

    ns = base_ns();
    add(ns, MS_RNS_ROUTE, "api", "host", "a.do", "service", "good", "methods", "GET,FETCH", NULL);
    expect_refused(ns, "route:api", "unknown HTTP method \"FETCH\"");

    ns = base_ns();
    add(ns, MS_RNS_ROUTE, "api", "host", "a.do", "service", "good", "priority", "high", NULL);
    expect_refused(ns, "route:api", "priority: \"high\" is not an integer");

    ns = base_ns();
    add(ns, MS_RNS_ROUTE, "api", "host", "a.do", "service", "good", "hots", "x", NULL);
    expect_refused(ns, "route:api", "unknown field 'hots'");

    ns = base_ns();
    add(ns, MS_RNS_SERVICE, "s", "balance", "random", NULL);
    expect_refused(ns, "service:s", "balance \"random\"");

    ns = base_ns();
    add(ns, MS_RNS_SERVICE, "s", "retries", "101", NULL);
    expect_refused(ns, "service:s", "retries: 101 is out of range");

    ns = base_ns();
    add(ns, MS_RNS_SERVICE, "bad name", "backends", "", NULL);
    expect_refused(ns, "service:bad name", "may only use");

    ns = base_ns();
    e = add(ns, MS_RNS_SERVICE, "gone", NULL);
    e->missing = 1;
    expect_refused(ns, "service:gone", "listed in SET dispatcher:production:services");

    ns = base_ns();
    e = add(ns, MS_RNS_ROUTE, "str", NULL);
    ms_rns_entry_error(e, "WRONGTYPE Operation against a key holding the wrong kind of value");
    expect_refused(ns, "route:str", "WRONGTYPE");

    ns = base_ns();
    ms_rns_set_error(ns, MS_RNS_ROUTE, "WRONGTYPE Operation against a key");
    expect_refused(ns, "routes", "WRONGTYPE");

    ns = base_ns();
    e = add(ns, MS_RNS_SERVICE, "nul", NULL);
    ms_rns_set(e, "backends", 8, "127.0.0.1:1\0x", 13);
    expect_refused(ns, "service:nul", "NUL byte");
}

static void test_certs(void)
{
    struct ms_config *cfg = load_file();
    struct ms_rns *ns;
    char *cert = NULL, *key = NULL, *other_cert = NULL, *other_key = NULL, *errs = NULL;
    char err[256];
    size_t nfile = cfg->tls.ncerts;

    CU_ASSERT_EQUAL_FATAL(ms_tls_self_signed("shop.example.com", &cert, &key, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(ms_tls_self_signed("other.example.com", &other_cert, &other_key, err,
                                             sizeof(err)),
                          0);

    ns = base_ns();
    add(ns, MS_RNS_CERT, "shop", "cert", cert, "key", key, NULL);
    ms_rns_sort(ns);
    CU_ASSERT_EQUAL_FATAL(ms_rns_merge(cfg, ns, 1, &errs), 0);
    CU_ASSERT_EQUAL_FATAL(cfg->tls.ncerts, nfile + 1);
    CU_ASSERT_EQUAL(cfg->tls.certs[nfile].source, SHM_SOURCE_REDIS);
    CU_ASSERT_EQUAL_FATAL(cfg->tls.certs[nfile].nnames, 1);
    CU_ASSERT_STRING_EQUAL(cfg->tls.certs[nfile].names[0], "shop.example.com");
    CU_ASSERT_PTR_NULL(cfg->tls.certs[nfile].cert);
    ms_rns_unmerge(cfg);
    CU_ASSERT_EQUAL(cfg->tls.ncerts, nfile);
    ms_rns_free(ns);
    ms_config_free(cfg);

    ns = base_ns();
    add(ns, MS_RNS_CERT, "bad", "cert", "-----BEGIN CERTIFICATE-----\ngarbage\n", "key", key, NULL);
    expect_refused(ns, "cert:bad", "");

    ns = base_ns();
    add(ns, MS_RNS_CERT, "mismatch", "cert", cert, "key", other_key, NULL);
    expect_refused(ns, "cert:mismatch", "");

    ns = base_ns();
    add(ns, MS_RNS_CERT, "nokey", "cert", cert, NULL);
    expect_refused(ns, "cert:nokey", "needs both a cert and a key");

    ns = base_ns();
    add(ns, MS_RNS_CERT, "extra", "cert", cert, "key", key, "chain", "x", NULL);
    expect_refused(ns, "cert:extra", "unknown field 'chain'");

    free(cert);
    free(other_cert);
    explicit_bzero(key, strlen(key));
    explicit_bzero(other_key, strlen(other_key));
    free(key);
    free(other_key);
}

static void test_equal_and_hash(void)
{
    struct ms_rns *a = ms_rns_new("production"), *b = ms_rns_new("production");
    struct ms_rns *c = ms_rns_new("staging");

    add(a, MS_RNS_SERVICE, "x", "backends", "127.0.0.1:1", "balance", "ip-hash", NULL);
    add(a, MS_RNS_ROUTE, "r1", "host", "a.do", "service", "x", NULL);
    add(a, MS_RNS_ROUTE, "r2", "host", "b.do", "service", "x", NULL);
    /* Same content, other order (Redis returns SET members and hash fields in any order). */
    add(b, MS_RNS_ROUTE, "r2", "service", "x", "host", "b.do", NULL);
    add(b, MS_RNS_SERVICE, "x", "balance", "ip-hash", "backends", "127.0.0.1:1", NULL);
    add(b, MS_RNS_ROUTE, "r1", "host", "a.do", "service", "x", NULL);
    ms_rns_sort(a);
    ms_rns_sort(b);
    ms_rns_sort(c);
    CU_ASSERT_TRUE(ms_rns_equal(a, b));
    CU_ASSERT_EQUAL(ms_rns_hash(a), ms_rns_hash(b));
    CU_ASSERT_FALSE(ms_rns_equal(a, NULL));
    CU_ASSERT_TRUE(ms_rns_equal(NULL, NULL));
    CU_ASSERT_FALSE(ms_rns_equal(a, c));
    ms_rns_set(&b->e[MS_RNS_ROUTE][0], "path", 4, "/x", 2);
    ms_rns_sort(b);
    CU_ASSERT_FALSE(ms_rns_equal(a, b));
    CU_ASSERT_NOT_EQUAL(ms_rns_hash(a), ms_rns_hash(b));
    ms_rns_free(a);
    ms_rns_free(b);
    ms_rns_free(c);
}

static void test_config_errors(void)
{
    static const char *const bad[][2] = {
        {"redis = { db = -1; };\n", "redis.db"},
        {"redis = { resync_ms = 10; };\n", "redis.resync_ms"},
        {"redis = { connect_timeout_ms = 0; };\n", "redis.connect_timeout_ms"},
        {"redis = { user = \"u\"; };\n", "redis.user needs redis.password"},
        {"redis = { tls = true; };\n", "redis.tls"},
        {"redis = { hots = 1; };\n", "unknown key 'hots' in redis"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char tmpl[] = "/tmp/dsp-ms-redis-XXXXXX";
        int fd = mkstemp(tmpl);
        struct ms_config *cfg = NULL;
        char *errs = NULL;
        FILE *f = fdopen(fd, "w");

        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        fprintf(f, "listeners = ( { address = \"127.0.0.1:8080\"; } );\n%s", bad[i][0]);
        fclose(f);
        CU_ASSERT_EQUAL(ms_config_load(tmpl, 0, &cfg, &errs), -1);
        CU_ASSERT_PTR_NOT_NULL(errs != NULL ? strstr(errs, bad[i][1]) : NULL);
        CU_ASSERT_PTR_NOT_NULL(errs != NULL ? strstr(errs, ":2: ") : NULL);
        free(errs);
        unlink(tmpl);
    }
}

static void test_version(void)
{
    static const struct {
        const char *v;
        int state;
        long long want;
    } cases[] = {
        {"1", MS_RNS_VERSION_OK, 1},
        {"0", MS_RNS_VERSION_OK, 0},
        {"42", MS_RNS_VERSION_OK, 42},
        {"-3", MS_RNS_VERSION_OK, -3},
        {"9223372036854775807", MS_RNS_VERSION_OK, 9223372036854775807LL},
        {"-9223372036854775808", MS_RNS_VERSION_OK, -9223372036854775807LL - 1},
        {"9223372036854775808", MS_RNS_VERSION_BAD, 0},
        {"99999999999999999999", MS_RNS_VERSION_BAD, 0},
        {"00000000000000000000001", MS_RNS_VERSION_BAD, 0},
        {"", MS_RNS_VERSION_BAD, 0},
        {"-", MS_RNS_VERSION_BAD, 0},
        {"+1", MS_RNS_VERSION_BAD, 0},
        {" 1", MS_RNS_VERSION_BAD, 0},
        {"1 ", MS_RNS_VERSION_BAD, 0},
        {"1.5", MS_RNS_VERSION_BAD, 0},
        {"12abc", MS_RNS_VERSION_BAD, 0},
        {"0x10", MS_RNS_VERSION_BAD, 0},
    };
    struct ms_rns *a, *b;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ms_rns *ns = ms_rns_new("production");
        ms_rns_set_version(ns, cases[i].v, strlen(cases[i].v));
        CU_ASSERT_EQUAL(ns->version_state, cases[i].state);
        if (ns->version_state != cases[i].state) {
            printf("\n   version \"%s\"\n", cases[i].v);
        }
        if (cases[i].state == MS_RNS_VERSION_OK) {
            CU_ASSERT_EQUAL(ns->version, cases[i].want);
            CU_ASSERT_PTR_NULL(ns->version_error);
        } else {
            CU_ASSERT_PTR_NOT_NULL(ns->version_error);
            CU_ASSERT_PTR_NOT_NULL(strstr(ns->version_error, "not an integer"));
        }
        ms_rns_free(ns);
    }
    /* Binary junk: NUL bytes, control characters and quotes are not echoed; long values are
     * shortened. */
    a = ms_rns_new("production");
    ms_rns_set_version(a, "1\0002\n\"\\", 6);
    CU_ASSERT_EQUAL(a->version_state, MS_RNS_VERSION_BAD);
    CU_ASSERT_STRING_EQUAL(a->version_error, "not an integer (\"1?2???\")");
    ms_rns_free(a);
    {
        char big[4096];
        memset(big, '7', sizeof(big));
        big[10] = 'x';
        a = ms_rns_new("production");
        ms_rns_set_version(a, big, sizeof(big));
        CU_ASSERT_EQUAL(a->version_state, MS_RNS_VERSION_BAD);
        CU_ASSERT(strlen(a->version_error) < 80);
        CU_ASSERT_PTR_NOT_NULL(strstr(a->version_error, "...\")"));
        ms_rns_free(a);
    }
    /* The first problem is kept. */
    a = ms_rns_new("production");
    ms_rns_version_error(a, "not a string (WRONGTYPE)");
    ms_rns_set_version(a, "x", 1);
    CU_ASSERT_STRING_EQUAL(a->version_error, "not a string (WRONGTYPE)");
    ms_rns_free(a);

    /* The data is compared without the version; the fingerprint tells the states apart. */
    a = ms_rns_new("production");
    b = ms_rns_new("production");
    add(a, MS_RNS_ROUTE, "r1", "host", "a.do", "service", "x", NULL);
    add(b, MS_RNS_ROUTE, "r1", "host", "a.do", "service", "x", NULL);
    ms_rns_set_version(a, "5", 1);
    ms_rns_set_version(b, "6", 1);
    CU_ASSERT_TRUE(ms_rns_equal(a, b));
    CU_ASSERT_EQUAL(ms_rns_hash(a), ms_rns_hash(b));
    ms_rns_set_version(b, "x", 1);
    CU_ASSERT_NOT_EQUAL(ms_rns_hash(a), ms_rns_hash(b));
    ms_rns_free(b);
    b = ms_rns_new("production");
    add(b, MS_RNS_ROUTE, "r1", "host", "a.do", "service", "x", NULL);
    CU_ASSERT_NOT_EQUAL(ms_rns_hash(a), ms_rns_hash(b)); /* no version at all */
    ms_rns_free(a);
    ms_rns_free(b);
}

UNIT_SUITE(ms_redis, {"backends \"addr[=weight],...\"", test_parse_backends},
           {"methods \"GET,POST\"", test_parse_methods}, {"integers", test_parse_int},
           {"redis config keys", test_config_keys}, {"redis config errors", test_config_errors},
           {"merge: file wins, order, unmerge", test_merge},
           {"refused as a whole, key named", test_refused},
           {"certificates: PEM checked like files", test_certs},
           {"canonical form: equal and hash", test_equal_and_hash}, {"version key", test_version})
