/* dispatcher: tests for the config loader: values and defaults of a full file, one exact
 * "FILE:LINE: message" per kind of mistake, several mistakes at once, environment overrides and
 * relative-path resolution. */
#include "master/ms_config.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <http_parser.h>

#include "common/log.h"
#include "master/ms_compile.h"
#include "master/ms_dns.h"
#include "shm/shm_snap.h"
#include "tests/unit/unit.h"

/* A plain listener on line 1, so each error test knows where its own lines start. */
#define LISTENER "listeners = ( { address = \"127.0.0.1:8080\"; } );\n"

static char *write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
    return strdup(path);
}

/* Write <text> to a fresh /tmp file; returns its heap path. */
static char *write_tmp(const char *text)
{
    char tmpl[] = "/tmp/dsp-ms-config-XXXXXX";
    int fd = mkstemp(tmpl);
    FILE *f;

    CU_ASSERT_FATAL(fd >= 0);
    f = fdopen(fd, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
    return strdup(tmpl);
}

static int load_text(const char *text, int use_env, struct ms_config **cfg, char **errs,
                     char **path)
{
    int rc;

    *path = write_tmp(text);
    rc = ms_config_load(*path, use_env, cfg, errs);
    return rc;
}

static size_t count_lines(const char *s)
{
    size_t n = 1;

    for (; *s; s++) {
        n += *s == '\n';
    }
    return n;
}

/* Does <errs> hold a line "<path>:<line>: ...<needle>..."? */
static int has_error(const char *errs, const char *path, int line, const char *needle)
{
    char prefix[512];
    size_t plen;
    const char *p = errs;

    if (line == 0) {
        snprintf(prefix, sizeof(prefix), "%s: ", path); /* the file as a whole */
    } else {
        snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
    }
    plen = strlen(prefix);
    while (p != NULL && *p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len >= plen && strncmp(p, prefix, plen) == 0) {
            char *l = strndup(p, len);
            int found = strstr(l + plen, needle) != NULL;
            free(l);
            if (found) {
                return 1;
            }
        }
        p = nl ? nl + 1 : NULL;
    }
    return 0;
}

/* Load <text>, expect exactly one error, at <line>, mentioning <needle>. */
static void expect_error(const char *text, int line, const char *needle)
{
    struct ms_config *cfg = NULL;
    char *errs = NULL, *path;
    int rc = load_text(text, 0, &cfg, &errs, &path);

    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    if (!has_error(errs, path, line, needle) || count_lines(errs) != 1) {
        fprintf(stderr, "\nexpected one error at line %d with \"%s\", got:\n%s\n", line, needle,
                errs);
    }
    CU_ASSERT_TRUE(has_error(errs, path, line, needle));
    CU_ASSERT_EQUAL(count_lines(errs), 1);
    free(errs);
    ms_config_free(cfg);
    unlink(path);
    free(path);
}

static struct ms_config *expect_ok(const char *text, int use_env)
{
    struct ms_config *cfg = NULL;
    char *errs = NULL, *path;
    int rc = load_text(text, use_env, &cfg, &errs, &path);

    if (rc != 0) {
        fprintf(stderr, "\nunexpected errors:\n%s\n", errs);
    }
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_PTR_NULL(errs);
    free(errs);
    unlink(path);
    free(path);
    return cfg;
}

static int cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

static const char spec_example[] =
    "workers = \"auto\";\n"
    "user = \"www-data\"; group = \"www-data\";\n"
    "pid_file = \"dispatcher.pid\";\n"
    "environment = \"production\";\n"
    "\n"
    "admin = { socket = \"run/admin.sock\"; mode = \"0600\";\n"
    "          http = \"127.0.0.1:9000\"; };\n"
    "log = { error = \"stderr\"; level = \"info\";\n"
    "        access = \"logs/access.log\"; access_format = \"json\"; };\n"
    "limits = { max_connections = 10000; max_header_bytes = 16384; max_body_bytes = 0;\n"
    "           header_timeout_ms = 10000; idle_timeout_ms = 60000;"
    " shutdown_timeout_ms = 10000; };\n"
    "\n"
    "listeners = (\n"
    "  { address = \"0.0.0.0:8080\"; },\n"
    "  { address = \"0.0.0.0:8443\"; tls = true; },\n"
    "  { address = \"127.0.0.1:10001\"; proxy_protocol = true; }\n"
    ");\n"
    "trusted_proxies = [ \"127.0.0.1/32\" ];\n"
    "\n"
    "tls = { self_signed_cn = \"localhost\";\n"
    "        min_version = \"TLSv1.2\";\n"
    "        certificates = ( { cert = \"certs/example.pem\";"
    " key = \"certs/example.key\"; } ); };\n"
    "\n"
    "services = (\n"
    "  { name = \"gateway\"; backends = [ \"127.0.0.1:9101\" ]; },\n"
    "  { name = \"db\"; balance = \"least-conn\";\n"
    "    backends = ( { address = \"127.0.0.1:9102\"; weight = 2; },"
    " { address = \"127.0.0.1:9103\"; } );\n"
    "    health = { path = \"/health\"; interval_ms = 30000; timeout_ms = 2000;"
    " fall = 1; rise = 3; };\n"
    "    circuit_breaker = { failures = 5; open_ms = 30000; };\n"
    "    retries = 1; connect_timeout_ms = 2000; response_timeout_ms = 30000; },\n"
    "  { name = \"billing\"; backends = []; }\n"
    ");\n"
    "\n"
    "routes = (\n"
    "  { host = \"gateway.do\"; service = \"gateway\"; },\n"
    "  { host = \"*.app.example.com\"; service = \"gateway\"; },\n"
    "  { host = \"api.do\"; path = \"/api/db/\"; methods = [\"GET\", \"POST\"];"
    " service = \"db\"; },\n"
    "  { host = \"*\"; service = \"gateway\"; }\n"
    ");\n";

/* A temp folder holding dispatcher.conf (with <text>) and certs/example.{pem,key}. */
struct fixture {
    char dir[PATH_MAX];
    char conf[PATH_MAX + 32];
    char certs[PATH_MAX + 32];
    char pem[PATH_MAX + 64];
    char key[PATH_MAX + 64];
};

static void fixture_make(struct fixture *fx, const char *text)
{
    char tmpl[] = "/tmp/dsp-ms-config-dir-XXXXXX";
    char *real;

    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmpl));
    real = realpath(tmpl, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(real);
    snprintf(fx->dir, sizeof(fx->dir), "%s", real);
    free(real);
    snprintf(fx->conf, sizeof(fx->conf), "%s/dispatcher.conf", fx->dir);
    snprintf(fx->certs, sizeof(fx->certs), "%s/certs", fx->dir);
    snprintf(fx->pem, sizeof(fx->pem), "%s/example.pem", fx->certs);
    snprintf(fx->key, sizeof(fx->key), "%s/example.key", fx->certs);
    CU_ASSERT_FATAL(mkdir(fx->certs, 0700) == 0);
    free(write_file(fx->pem, "not parsed\n"));
    free(write_file(fx->key, "not parsed\n"));
    free(write_file(fx->conf, text));
}

static void fixture_remove(struct fixture *fx)
{
    unlink(fx->pem);
    unlink(fx->key);
    rmdir(fx->certs);
    unlink(fx->conf);
    rmdir(fx->dir);
}

static void join(char *buf, size_t n, const char *dir, const char *rel)
{
    snprintf(buf, n, "%s/%s", dir, rel);
}

static void test_spec_example(void)
{
    struct fixture fx;
    struct ms_config *cfg = NULL;
    char *errs = NULL;
    char want[PATH_MAX + 64];
    const struct ms_service *svc;
    const struct ms_route *r;

    fixture_make(&fx, spec_example);
    CU_ASSERT_EQUAL(ms_config_load(fx.conf, 0, &cfg, &errs), 0);
    if (errs != NULL) {
        fprintf(stderr, "\n%s\n", errs);
    }
    CU_ASSERT_PTR_NULL(errs);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);

    CU_ASSERT_STRING_EQUAL(cfg->path, fx.conf);
    CU_ASSERT_STRING_EQUAL(cfg->dir, fx.dir);
    CU_ASSERT_EQUAL(cfg->workers, cpus());
    CU_ASSERT_STRING_EQUAL(cfg->user, "www-data");
    CU_ASSERT_STRING_EQUAL(cfg->group, "www-data");
    join(want, sizeof(want), fx.dir, "dispatcher.pid");
    CU_ASSERT_STRING_EQUAL(cfg->pid_file, want);
    CU_ASSERT_STRING_EQUAL(cfg->environment, "production");

    join(want, sizeof(want), fx.dir, "run/admin.sock");
    CU_ASSERT_STRING_EQUAL(cfg->admin.socket, want);
    CU_ASSERT_EQUAL(cfg->admin.mode, 0600);
    CU_ASSERT_STRING_EQUAL(cfg->admin.http, "127.0.0.1:9000");
    CU_ASSERT_EQUAL(cfg->admin.http_ss.ss_family, AF_INET);

    CU_ASSERT_STRING_EQUAL(cfg->log.error, "stderr");
    CU_ASSERT_EQUAL(cfg->log.level, LOG_INFO);
    join(want, sizeof(want), fx.dir, "logs/access.log");
    CU_ASSERT_STRING_EQUAL(cfg->log.access, want);
    CU_ASSERT_EQUAL(cfg->log.access_format, SHM_ACCESS_JSON);

    CU_ASSERT_EQUAL(cfg->limits.max_connections, 10000);
    CU_ASSERT_EQUAL(cfg->limits.max_header_bytes, 16384);
    CU_ASSERT_EQUAL(cfg->limits.max_body_bytes, 0);
    CU_ASSERT_EQUAL(cfg->limits.header_timeout_ms, 10000);
    CU_ASSERT_EQUAL(cfg->limits.idle_timeout_ms, 60000);
    CU_ASSERT_EQUAL(cfg->limits.shutdown_timeout_ms, 10000);
    CU_ASSERT_EQUAL(cfg->limits.tunnel_idle_timeout_ms, 3600000);
    CU_ASSERT_EQUAL(cfg->limits.min_body_rate, 256);
    CU_ASSERT_EQUAL(cfg->limits.send_timeout_ms, 60000);

    CU_ASSERT_EQUAL_FATAL(cfg->nlisteners, 3);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[0].address, "0.0.0.0:8080");
    CU_ASSERT_FALSE(cfg->listeners[0].tls);
    CU_ASSERT_FALSE(cfg->listeners[0].proxy_protocol);
    CU_ASSERT_EQUAL(cfg->listeners[0].line, 14);
    CU_ASSERT_TRUE(cfg->listeners[1].tls);
    CU_ASSERT_FALSE(cfg->listeners[1].proxy_protocol);
    CU_ASSERT_FALSE(cfg->listeners[2].tls);
    CU_ASSERT_TRUE(cfg->listeners[2].proxy_protocol);
    CU_ASSERT_EQUAL(cfg->listeners[2].ss.ss_family, AF_INET);
    CU_ASSERT_EQUAL(ntohs(((struct sockaddr_in *)&cfg->listeners[2].ss)->sin_port), 10001);
    CU_ASSERT_EQUAL(cfg->listeners[2].sslen, sizeof(struct sockaddr_in));

    CU_ASSERT_EQUAL_FATAL(cfg->ntrusted, 1);
    CU_ASSERT_EQUAL(cfg->trusted[0].family, AF_INET);
    CU_ASSERT_EQUAL(cfg->trusted[0].prefix, 32);

    CU_ASSERT_STRING_EQUAL(cfg->tls.self_signed_cn, "localhost");
    CU_ASSERT_EQUAL(cfg->tls.min_version, 0x0303);
    CU_ASSERT_EQUAL_FATAL(cfg->tls.ncerts, 1);
    CU_ASSERT_STRING_EQUAL(cfg->tls.certs[0].cert, fx.pem);
    CU_ASSERT_STRING_EQUAL(cfg->tls.certs[0].key, fx.key);
    CU_ASSERT_EQUAL(cfg->tls.certs[0].line, 22);

    CU_ASSERT_FALSE(cfg->redis.enabled);

    CU_ASSERT_EQUAL_FATAL(cfg->nservices, 3);
    svc = &cfg->services[0];
    CU_ASSERT_STRING_EQUAL(svc->name, "gateway");
    CU_ASSERT_EQUAL(svc->balance, SHM_BALANCE_RR);
    CU_ASSERT_EQUAL_FATAL(svc->nbackends, 1);
    CU_ASSERT_STRING_EQUAL(svc->backends[0].address, "127.0.0.1:9101");
    CU_ASSERT_EQUAL(svc->backends[0].weight, 1);
    CU_ASSERT_FALSE(svc->health.enabled);
    CU_ASSERT_STRING_EQUAL(svc->health.path, "/health");
    CU_ASSERT_EQUAL(svc->health.interval_ms, 30000);
    CU_ASSERT_EQUAL(svc->health.timeout_ms, 2000);
    CU_ASSERT_EQUAL(svc->health.fall, 1);
    CU_ASSERT_EQUAL(svc->health.rise, 3);
    CU_ASSERT_FALSE(svc->health.start_down);
    CU_ASSERT_FALSE(svc->circuit.enabled);
    CU_ASSERT_EQUAL(svc->circuit.failures, 5);
    CU_ASSERT_EQUAL(svc->circuit.open_ms, 30000);
    CU_ASSERT_FALSE(svc->circuit.count_5xx);
    CU_ASSERT_EQUAL(svc->retries, 1);
    CU_ASSERT_EQUAL(svc->connect_timeout_ms, 2000);
    CU_ASSERT_EQUAL(svc->response_timeout_ms, 30000);
    CU_ASSERT_EQUAL(svc->line, 25);

    svc = &cfg->services[1];
    CU_ASSERT_STRING_EQUAL(svc->name, "db");
    CU_ASSERT_EQUAL(svc->balance, SHM_BALANCE_LEASTCONN);
    CU_ASSERT_EQUAL_FATAL(svc->nbackends, 2);
    CU_ASSERT_STRING_EQUAL(svc->backends[0].address, "127.0.0.1:9102");
    CU_ASSERT_EQUAL(svc->backends[0].weight, 2);
    CU_ASSERT_STRING_EQUAL(svc->backends[1].address, "127.0.0.1:9103");
    CU_ASSERT_EQUAL(svc->backends[1].weight, 1);
    CU_ASSERT_TRUE(svc->health.enabled);
    CU_ASSERT_TRUE(svc->circuit.enabled);

    svc = &cfg->services[2];
    CU_ASSERT_STRING_EQUAL(svc->name, "billing");
    CU_ASSERT_EQUAL(svc->nbackends, 0);

    CU_ASSERT_EQUAL_FATAL(cfg->nroutes, 4);
    r = &cfg->routes[0];
    CU_ASSERT_STRING_EQUAL(r->host, "gateway.do");
    CU_ASSERT_STRING_EQUAL(r->path, "/");
    CU_ASSERT_EQUAL(r->methods, 0);
    CU_ASSERT_EQUAL(r->priority, 0);
    CU_ASSERT_STRING_EQUAL(r->service, "gateway");
    CU_ASSERT_EQUAL(r->service_idx, 0);
    CU_ASSERT_EQUAL(r->line, 35);
    CU_ASSERT_STRING_EQUAL(cfg->routes[1].host, "*.app.example.com");
    r = &cfg->routes[2];
    CU_ASSERT_STRING_EQUAL(r->path, "/api/db/");
    CU_ASSERT_EQUAL(r->methods, (1ULL << HTTP_GET) | (1ULL << HTTP_POST));
    CU_ASSERT_EQUAL(r->service_idx, 1);
    CU_ASSERT_STRING_EQUAL(cfg->routes[3].host, "*");

    ms_config_free(cfg);
    fixture_remove(&fx);
}

static void test_defaults(void)
{
    struct ms_config *cfg = expect_ok(LISTENER, 0);

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->workers, cpus());
    CU_ASSERT_PTR_NULL(cfg->user);
    CU_ASSERT_PTR_NULL(cfg->group);
    CU_ASSERT_PTR_NULL(cfg->pid_file);
    CU_ASSERT_STRING_EQUAL(cfg->environment, "production");
    CU_ASSERT_PTR_NULL(cfg->admin.socket);
    CU_ASSERT_PTR_NULL(cfg->admin.http);
    CU_ASSERT_EQUAL(cfg->admin.mode, 0600);
    CU_ASSERT_STRING_EQUAL(cfg->log.error, "stderr");
    CU_ASSERT_EQUAL(cfg->log.level, LOG_INFO);
    CU_ASSERT_PTR_NULL(cfg->log.access);
    CU_ASSERT_EQUAL(cfg->log.access_format, SHM_ACCESS_JSON);
    CU_ASSERT_EQUAL(cfg->limits.max_connections, 10000);
    CU_ASSERT_EQUAL(cfg->limits.max_header_bytes, 16384);
    CU_ASSERT_EQUAL(cfg->limits.max_body_bytes, 0);
    CU_ASSERT_EQUAL(cfg->limits.header_timeout_ms, 10000);
    CU_ASSERT_EQUAL(cfg->limits.idle_timeout_ms, 60000);
    CU_ASSERT_EQUAL(cfg->limits.shutdown_timeout_ms, 10000);
    CU_ASSERT_EQUAL(cfg->limits.tunnel_idle_timeout_ms, 3600000);
    CU_ASSERT_EQUAL(cfg->ntrusted, 0);
    CU_ASSERT_STRING_EQUAL(cfg->tls.self_signed_cn, "localhost");
    CU_ASSERT_EQUAL(cfg->tls.min_version, 0x0303);
    CU_ASSERT_EQUAL(cfg->tls.ncerts, 0);
    CU_ASSERT_FALSE(cfg->redis.enabled);
    CU_ASSERT_EQUAL(cfg->nservices, 0);
    CU_ASSERT_EQUAL(cfg->nroutes, 0);
    ms_config_free(cfg);
}

static void test_values(void)
{
    struct ms_config *cfg = expect_ok(
        "workers = 3;\n"
        "admin = { mode = 640; };\n"
        "log = { level = \"debug\"; access = \"off\"; access_format = \"combined\";\n"
        "        error = \"/var/log/dispatcher.err\"; };\n"
        "limits = { max_body_bytes = 10000000000L; tunnel_idle_timeout_ms = 5; };\n"
        "listeners = ( { address = \"[::1]:8443\"; tls = true; } );\n"
        "trusted_proxies = [ \"10.0.0.0/8\", \"fd00::/8\" ];\n"
        "tls = { min_version = \"TLSv1.3\"; self_signed_cn = \"dev.local\"; };\n"
        "redis = { host = \"10.0.0.9\"; port = 6380; password = \"\"; };\n"
        "services = ( { name = \"a-b_c.d\"; balance = \"ip-hash\";\n"
        "  backends = [ \"localhost:81\", \"[::1]:82\" ];\n"
        "  health = { start = \"down\"; path = \"/hz\"; };\n"
        "  circuit_breaker = { count_5xx = true; }; retries = 0; } );\n"
        "routes = ( { host = \"API.Example.COM.\"; service = \"a-b_c.d\"; priority = -5;\n"
        "             methods = [ \"get\", \"Delete\", \"M-SEARCH\" ]; } );\n",
        0);

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->workers, 3);
    CU_ASSERT_EQUAL(cfg->admin.mode, 0640);
    CU_ASSERT_EQUAL(cfg->log.level, LOG_DEBUG);
    CU_ASSERT_PTR_NULL(cfg->log.access);
    CU_ASSERT_EQUAL(cfg->log.access_format, SHM_ACCESS_COMBINED);
    CU_ASSERT_STRING_EQUAL(cfg->log.error, "/var/log/dispatcher.err");
    CU_ASSERT_EQUAL(cfg->limits.max_body_bytes, 10000000000L);
    CU_ASSERT_EQUAL(cfg->limits.tunnel_idle_timeout_ms, 5);
    CU_ASSERT_EQUAL(cfg->listeners[0].ss.ss_family, AF_INET6);
    CU_ASSERT_TRUE(cfg->listeners[0].tls);
    CU_ASSERT_EQUAL_FATAL(cfg->ntrusted, 2);
    CU_ASSERT_EQUAL(cfg->trusted[1].family, AF_INET6);
    CU_ASSERT_EQUAL(cfg->tls.min_version, 0x0304);
    CU_ASSERT_STRING_EQUAL(cfg->tls.self_signed_cn, "dev.local");
    CU_ASSERT_TRUE(cfg->redis.enabled);
    CU_ASSERT_STRING_EQUAL(cfg->redis.host, "10.0.0.9");
    CU_ASSERT_EQUAL(cfg->redis.port, 6380);
    CU_ASSERT_PTR_NULL(cfg->redis.password);
    CU_ASSERT_EQUAL_FATAL(cfg->nservices, 1);
    CU_ASSERT_EQUAL(cfg->services[0].balance, SHM_BALANCE_IPHASH);
    CU_ASSERT_EQUAL_FATAL(cfg->services[0].nbackends, 2);
    CU_ASSERT_STRING_EQUAL(cfg->services[0].backends[0].address, "127.0.0.1:81");
    CU_ASSERT_STRING_EQUAL(cfg->services[0].backends[1].address, "[::1]:82");
    CU_ASSERT_TRUE(cfg->services[0].health.enabled);
    CU_ASSERT_TRUE(cfg->services[0].health.start_down);
    CU_ASSERT_STRING_EQUAL(cfg->services[0].health.path, "/hz");
    CU_ASSERT_TRUE(cfg->services[0].circuit.count_5xx);
    CU_ASSERT_EQUAL(cfg->services[0].retries, 0);
    CU_ASSERT_EQUAL_FATAL(cfg->nroutes, 1);
    CU_ASSERT_STRING_EQUAL(cfg->routes[0].host, "api.example.com");
    CU_ASSERT_EQUAL(cfg->routes[0].priority, -5);
    CU_ASSERT_EQUAL(cfg->routes[0].methods,
                    (1ULL << HTTP_GET) | (1ULL << HTTP_DELETE) | (1ULL << HTTP_MSEARCH));
    ms_config_free(cfg);
}

static void test_err_unknown_key(void)
{
    expect_error(LISTENER "services = (\n"
                          "  { name = \"a\"; backends = []; },\n"
                          "  { name = \"b\";\n"
                          "    foo = 1; }\n"
                          ");\n",
                 5, "unknown key 'foo' in services[1]");
    expect_error(LISTENER "\nbogus = true;\n", 3, "unknown key 'bogus'");
    expect_error(LISTENER "admin = { socket = \"/tmp/x.sock\";\n  sockt = 1; };\n", 3,
                 "unknown key 'sockt' in admin (did you mean 'socket'?)");
    /* The nearest key of the same section is suggested for a typo, nothing for a stranger. */
    expect_error(LISTENER "limits = {\n  max_conections = 5; };\n", 3,
                 "unknown key 'max_conections' in limits (did you mean 'max_connections'?)");
    expect_error(LISTENER "\nWorkers = 2;\n", 3, "unknown key 'Workers' (did you mean 'workers'?)");
    expect_error(LISTENER "services = (\n  { name = \"a\"; backend = []; }\n);\n", 3,
                 "unknown key 'backend' in services[0] (did you mean 'backends'?)");
    {
        struct ms_config *cfg = NULL;
        char *errs = NULL, *path;
        CU_ASSERT_EQUAL(load_text(LISTENER "\nbogus = true;\n", 0, &cfg, &errs, &path), -1);
        CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
        CU_ASSERT_PTR_NULL(strstr(errs, "did you mean"));
        free(errs);
        unlink(path);
        free(path);
    }
}

/* Errors about the file as a whole name it without a line (no "FILE:0:"). */
static void test_err_whole_file(void)
{
    expect_error("workers = 1;\n", 0, "no listeners");
}

static void test_err_bad_address(void)
{
    expect_error("listeners = (\n"
                 "  { address = \"127.0.0.1:8080\"; },\n"
                 "  { address = \"example.com:80\"; }\n"
                 ");\n",
                 3, "listeners[1].address");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"10.0.0.1\" ]; } );\n",
                 3, "bad address");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"0.0.0.0:80\" ]; } );\n",
                 3, "wildcard");
    expect_error("listeners = ( { tls = true; } );\n", 1, "no address");
}

/* Backends by name: kept as written (lower case, no trailing dot) for the master to resolve; a
 * bad IPv4, a name with a bad port or characters no name has stays an error. */
static void test_backend_names(void)
{
    struct ms_config *cfg = expect_ok(LISTENER "dns = { servers = [ \"127.0.0.1:5353\", "
                                               "\"10.0.0.2\" ]; resolve_ms = 5000; "
                                               "min_ttl_ms = 200; timeout_ms = 300; };\n"
                                               "services = ( { name = \"a\"; resolve_ms = 700;\n"
                                               "  backends = ( \"App.Internal.:8080\", "
                                               "\"127.0.0.1:81\", \"localhost:82\", "
                                               "{ address = \"db-1:5432\"; weight = 3; } ); } );\n",
                                      0);

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL_FATAL(cfg->services[0].nbackends, 4);
    CU_ASSERT_STRING_EQUAL(cfg->services[0].backends[0].name, "app.internal");
    CU_ASSERT_STRING_EQUAL(cfg->services[0].backends[0].address, "app.internal:8080");
    CU_ASSERT_EQUAL(cfg->services[0].backends[0].port, 8080);
    CU_ASSERT_PTR_NULL(cfg->services[0].backends[1].name);
    CU_ASSERT_PTR_NULL(cfg->services[0].backends[2].name); /* localhost needs no lookup */
    CU_ASSERT_STRING_EQUAL(cfg->services[0].backends[2].address, "127.0.0.1:82");
    CU_ASSERT_STRING_EQUAL(cfg->services[0].backends[3].name, "db-1");
    CU_ASSERT_EQUAL(cfg->services[0].backends[3].weight, 3);
    CU_ASSERT_EQUAL(cfg->services[0].resolve_ms, 700);
    CU_ASSERT_STRING_EQUAL(cfg->dns.servers, "127.0.0.1:5353,10.0.0.2:53");
    CU_ASSERT_EQUAL(cfg->dns.resolve_ms, 5000);
    CU_ASSERT_EQUAL(cfg->dns.min_ttl_ms, 200);
    CU_ASSERT_EQUAL(cfg->dns.timeout_ms, 300);
    ms_config_free(cfg);

    cfg = expect_ok(LISTENER, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_PTR_NULL(cfg->dns.servers);
    CU_ASSERT_EQUAL(cfg->dns.resolve_ms, 30000);
    CU_ASSERT_EQUAL(cfg->dns.min_ttl_ms, 1000);
    ms_config_free(cfg);

    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"10.0.0.300:80\" ]; } );\n",
                 3, "bad IPv4");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"app.internal:0\" ]; } );\n",
                 3, "bad port");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"app.internal:80x\" ]; } );\n",
                 3, "bad port");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"app internal:80\" ]; } );\n",
                 3, "services[0].backends[0]");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"app..internal:80\" ]; } );\n",
                 3, "services[0].backends[0]");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"app:80\", \"APP:80\" ]; } );\n",
                 3, "duplicate");
    expect_error(LISTENER "dns = {\n  servers = [ \"ns.example\" ]; };\n", 3, "dns.servers[0]");
    expect_error(LISTENER "dns = {\n  servers = [ \"0.0.0.0\" ]; };\n", 3, "dns.servers[0]");
    expect_error(LISTENER "dns = { resolve_ms = 1000;\n  min_ttl_ms = 2000; };\n", 3,
                 "dns.min_ttl_ms");
    /* A resolve_ms under the default min_ttl_ms (1000), which is not given: an error at
     * resolve_ms (the master crashed on it: the check pointed at the missing key). */
    expect_error(LISTENER "dns = {\n  resolve_ms = 300; };\n", 3, "dns.min_ttl_ms (1000)");
}

/* "unix:/path" backends: AF_UNIX addresses kept as written; relative, empty, too long and
 * repeated paths refused at their line. */
static void test_unix_backends(void)
{
    char longp[160];
    char conf[512];
    struct ms_config *cfg = expect_ok(LISTENER
                                      "services = ( { name = \"a\";\n"
                                      "  backends = ( \"unix:/run/app.sock\", \"127.0.0.1:81\", "
                                      "{ address = \"unix:/run/b.sock\"; weight = 2; } ); } );\n",
                                      0);

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL_FATAL(cfg->services[0].nbackends, 3);
    CU_ASSERT_STRING_EQUAL(cfg->services[0].backends[0].address, "unix:/run/app.sock");
    CU_ASSERT_EQUAL(cfg->services[0].backends[0].ss.ss_family, AF_UNIX);
    CU_ASSERT_PTR_NULL(cfg->services[0].backends[0].name);
    CU_ASSERT_STRING_EQUAL(((struct sockaddr_un *)&cfg->services[0].backends[0].ss)->sun_path,
                           "/run/app.sock");
    CU_ASSERT_EQUAL(cfg->services[0].backends[1].ss.ss_family, AF_INET);
    CU_ASSERT_EQUAL(cfg->services[0].backends[2].weight, 2);
    ms_config_free(cfg);

    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"unix:run/app.sock\" ]; } );\n",
                 3, "unix:/absolute/path");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"unix:\" ]; } );\n",
                 3, "unix:/absolute/path");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = [ \"unix:/a.sock\", \"unix:/a.sock\" ]; } );\n",
                 3, "duplicate");
    memset(longp, 'x', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = '\0';
    snprintf(conf, sizeof(conf),
             LISTENER "services = ( { name = \"a\";\n  backends = [ \"unix:/%s\" ]; } );\n", longp);
    expect_error(conf, 3, "longer than the 107 allowed");
    expect_error(LISTENER "services = ( { name = \"a\"; tls = true;\n"
                          "  backends = [ \"unix:/a.sock\" ]; } );\n",
                 3, "sni");
}

/* Names expand into their addresses at compile time: one from /etc/hosts ("LOCALHOST" is not the
 * literal shortcut, so it goes through the resolver), deduplicated against the literal address;
 * a name without an address adds nothing (never a backend without an address) and is a FILE:LINE
 * error for the start and -t. */
static void test_backend_names_compile(void)
{
    struct ms_config *cfg = expect_ok(LISTENER "dns = { servers = [ \"127.0.0.1:1\" ]; "
                                               "timeout_ms = 100; };\n"
                                               "services = ( { name = \"a\"; backends = (\n"
                                               "  \"LOCALHOST:81\", \"127.0.0.1:81\",\n"
                                               "  \"nope.invalid:80\" ); },\n"
                                               "  { name = \"b\"; backends = ( "
                                               "\"nope.invalid:80\" ); } );\n",
                                      0);
    char *errs = NULL;
    size_t size, n81 = 0;
    const struct shm_snap_hdr *h;
    const struct shm_backend *be;

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(ms_dns_resolve_all(cfg, &errs), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, ":5: service \"a\": backend nope.invalid:80 does not "
                                        "resolve"));
    CU_ASSERT_PTR_NULL(strstr(errs, "localhost"));
    free(errs);
    h = ms_compile(cfg, 1, &size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    CU_ASSERT_EQUAL(shm_services(h)[0].nbackends, h->nbackends);
    CU_ASSERT_EQUAL(shm_services(h)[1].nbackends, 0); /* "not deployed" while it has no address */
    be = shm_backends(h);
    for (uint32_t i = 0; i < h->nbackends; i++) {
        CU_ASSERT(be[i].family == AF_INET || be[i].family == AF_INET6);
        CU_ASSERT_PTR_NULL(strstr(shm_s(h, be[i].address), "nope"));
        n81 += strcmp(shm_s(h, be[i].address), "127.0.0.1:81") == 0;
    }
    CU_ASSERT_EQUAL(n81, 1);
    free((void *)h);
    ms_dns_stop();
    ms_config_free(cfg);
}

/* errors = { expose_backend; list_services; pages }: defaults, pages read into the snapshot,
 * and every bad page refused with its line. */
static void test_errors_section(void)
{
    char dir[] = "/tmp/dsp-ms-config-pages-XXXXXX";
    char page[PATH_MAX], big[PATH_MAX], nul[PATH_MAX], text[4 * PATH_MAX];
    struct ms_config *cfg;
    const struct shm_snap_hdr *h;
    size_t size;
    FILE *f;

    cfg = expect_ok(LISTENER, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->errors.expose_backend, 0);
    CU_ASSERT_EQUAL(cfg->errors.list_services, 1);
    CU_ASSERT_EQUAL(cfg->errors.npages, 0);
    h = ms_compile(cfg, 1, &size);
    CU_ASSERT_EQUAL(h->errors_flags, SHM_ERRORS_LIST_SERVICES);
    CU_ASSERT_EQUAL(h->nerror_pages, 0);
    free((void *)h);
    ms_config_free(cfg);

    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(page, sizeof(page), "%s/502.html", dir);
    snprintf(big, sizeof(big), "%s/big.html", dir);
    snprintf(nul, sizeof(nul), "%s/nul.html", dir);
    free(write_file(page, "<h1>Down for a moment</h1>\n"));
    f = fopen(big, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (unsigned i = 0; i <= MS_ERROR_PAGE_MAX; i++) {
        fputc('x', f);
    }
    fclose(f);
    f = fopen(nul, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fwrite("a\0b", 1, 3, f);
    fclose(f);

    snprintf(text, sizeof(text),
             LISTENER "errors = { expose_backend = true; list_services = false;\n"
                      "  pages = ( { status = 502; file = \"%s\"; },\n"
                      "            { status = 404; file = \"%s\"; } ); };\n",
             page, page);
    cfg = expect_ok(text, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->errors.npages, 2);
    h = ms_compile(cfg, 1, &size);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    CU_ASSERT_EQUAL(shm_snap_check(h, size), 0);
    CU_ASSERT_EQUAL(h->errors_flags, SHM_ERRORS_EXPOSE_BACKEND);
    CU_ASSERT_EQUAL(h->nerror_pages, 2);
    CU_ASSERT_EQUAL(shm_error_pages(h)[0].status, 502);
    CU_ASSERT_EQUAL(shm_error_pages(h)[1].status, 404);
    CU_ASSERT_STRING_EQUAL(shm_s(h, shm_error_pages(h)[1].body), "<h1>Down for a moment</h1>\n");
    free((void *)h);
    ms_config_free(cfg);

    expect_error(LISTENER "errors = { pages = ( { status = 502; file = "
                          "\"/nonexistent/dsp-502.html\"; } ); };\n",
                 2, "cannot read \"/nonexistent/dsp-502.html\"");
    snprintf(text, sizeof(text),
             LISTENER "errors = {\n pages = (\n { status = 502; file = \"%s\"; } ); };\n", big);
    expect_error(text, 4, "larger than");
    snprintf(text, sizeof(text),
             LISTENER "errors = {\n pages = (\n { status = 502; file = \"%s\"; } ); };\n", nul);
    expect_error(text, 4, "NUL");
    snprintf(text, sizeof(text),
             LISTENER "errors = {\n pages = (\n { status = 502; file = \"%s\"; },\n"
                      " { status = 502; file = \"%s\"; } ); };\n",
             page, page);
    expect_error(text, 5, "already given on line 4");
    snprintf(text, sizeof(text),
             LISTENER "errors = { pages = ( { status = 302; file = \"%s\"; } ); };\n", page);
    expect_error(text, 2, "between 400 and 599");
    expect_error(LISTENER "errors = { pages = ( { status = 502; } ); };\n", 2, "has no file");
    expect_error(LISTENER "errors = { expose_backends = true; };\n", 2, "expose_backend");
    expect_error(LISTENER "errors = { list_services = 1; };\n", 2, "true or false");
    unlink(page);
    unlink(big);
    unlink(nul);
    rmdir(dir);
}

static void test_err_bad_port(void)
{
    expect_error("listeners = (\n  { address = \"127.0.0.1:70000\"; }\n);\n", 2, "bad port");
    expect_error("listeners = (\n  { address = \"127.0.0.1:0\"; }\n);\n", 2, "bad port");
    expect_error(LISTENER "redis = {\n  port = 0; };\n", 3, "redis.port");
}

static void test_err_unknown_service(void)
{
    expect_error(LISTENER "services = ( { name = \"a\"; backends = []; } );\n"
                          "routes = (\n"
                          "  { host = \"*\";\n"
                          "    service = \"nope\"; }\n"
                          ");\n",
                 5, "unknown service 'nope'");
}

static void test_err_duplicate_service(void)
{
    expect_error(LISTENER "services = (\n"
                          "  { name = \"a\"; backends = []; },\n"
                          "  { name = \"b\"; backends = []; },\n"
                          "  { backends = [];\n"
                          "    name = \"a\"; }\n"
                          ");\n",
                 6, "duplicate service name 'a' (already at line 3)");
}

static void test_err_duplicate_listener(void)
{
    expect_error("listeners = (\n"
                 "  { address = \"0.0.0.0:8080\"; },\n"
                 "  { address = \"127.0.0.1:8081\"; },\n"
                 "  { address = \"*:8080\"; tls = true; }\n"
                 ");\n",
                 4, "duplicate listener 0.0.0.0:8080 (already at line 2)");
}

static void test_err_bad_balance(void)
{
    expect_error(LISTENER "services = ( { name = \"a\"; backends = [];\n"
                          "  balance = \"random\"; } );\n",
                 3, "balance \"random\"");
}

static void test_err_bad_method(void)
{
    expect_error(LISTENER "services = ( { name = \"a\"; backends = []; } );\n"
                          "routes = ( { host = \"*\"; service = \"a\";\n"
                          "  methods = [ \"GET\",\n"
                          "              \"FETCH\" ]; } );\n",
                 5, "unknown HTTP method \"FETCH\"");
    expect_error(LISTENER "services = ( { name = \"a\"; backends = []; } );\n"
                          "routes = ( { host = \"*\"; service = \"a\";\n"
                          "  methods = []; } );\n",
                 4, "methods is empty");
}

static void test_err_bad_path(void)
{
    expect_error(LISTENER "services = ( { name = \"a\"; backends = []; } );\n"
                          "routes = ( { host = \"*\"; service = \"a\";\n"
                          "  path = \"api/\"; } );\n",
                 4, "must start with '/'");
    expect_error(LISTENER "services = ( { name = \"a\"; backends = [];\n"
                          "  health = { path = \"health\"; }; } );\n",
                 3, "must start with '/'");
}

static void test_err_bad_cidr(void)
{
    expect_error(LISTENER "trusted_proxies = [ \"10.0.0.0/8\",\n"
                          "  \"10.0.0.0/33\" ];\n",
                 3, "trusted_proxies[1]");
    expect_error(LISTENER "trusted_proxies = [ \"bogus\" ];\n", 2, "bad CIDR");
}

static void test_err_missing_cert(void)
{
    expect_error(LISTENER "tls = {\n"
                          "  certificates = (\n"
                          "    { cert = \"/nonexistent/dsp-test.pem\";\n"
                          "      key = \"/etc/hostname\"; } ); };\n",
                 4, "cannot read \"/nonexistent/dsp-test.pem\"");
    expect_error(LISTENER "tls = { certificates = ( { cert = \"/etc/hostname\"; } ); };\n", 2,
                 "has no key");
}

static void test_err_syntax(void)
{
    expect_error(LISTENER "workers = 2;\n"
                          "user = ;\n",
                 3, "syntax error");
    expect_error(LISTENER "workers = 2;\nworkers = 3;\n", 3, "duplicate setting");
}

static void test_err_types(void)
{
    expect_error(LISTENER "workers = 0;\n", 2, "workers");
    expect_error(LISTENER "workers = 257;\n", 2, "workers");
    expect_error(LISTENER "workers = \"many\";\n", 2, "workers");
    expect_error("listeners = ( { address = \"127.0.0.1:1\"; tls = \"yes\"; } );\n", 1,
                 "listeners[0].tls must be true or false");
    expect_error(LISTENER "limits = { max_header_bytes = 100; };\n", 2, "max_header_bytes");
    expect_error(LISTENER "limits = { max_body_bytes = -1; };\n", 2, "max_body_bytes");
    expect_error(LISTENER "limits = { idle_timeout_ms = 0; };\n", 2, "idle_timeout_ms");
    expect_error(LISTENER "limits = { idle_timeout_ms = \"10s\"; };\n", 2, "must be an integer");
    expect_error(LISTENER "limits = {\n min_body_rate = -1; };\n", 3, "limits.min_body_rate");
    expect_error(LISTENER "limits = { min_body_rate = 1.5; };\n", 2, "must be an integer");
    expect_error(LISTENER "limits = { min_body_rate = 1000000000; };\n", 2, "min_body_rate");
    expect_error(LISTENER "limits = { send_timeout_ms = 0; };\n", 2, "limits.send_timeout_ms");
    expect_error(LISTENER "limits = { send_timeout_ms = \"1m\"; };\n", 2, "must be an integer");
    expect_error(LISTENER "admin = { mode = \"0999\"; };\n", 2, "admin.mode");
    expect_error(LISTENER "admin = \"x\";\n", 2, "admin must be a group");
    expect_error(LISTENER "log = { level = \"loud\"; };\n", 2, "log.level");
    expect_error(LISTENER "log = { access_format = \"xml\"; };\n", 2, "access_format");
    expect_error(LISTENER "tls = { min_version = \"TLSv1.1\"; };\n", 2, "min_version");
    expect_error(LISTENER "services = ( { name = \"a b\"; } );\n", 2, "service name");
    expect_error(LISTENER "services = ( { backends = []; } );\n", 2, "has no name");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  backends = ( { address = \"127.0.0.1:1\"; weight = 0; } ); } );\n",
                 3, "weight");
    expect_error(LISTENER "services = ( { name = \"a\"; backends = [\n"
                          "  \"127.0.0.1:1\",\n"
                          "  \"127.0.0.1:1\" ]; } );\n",
                 4, "duplicate backend 127.0.0.1:1");
    expect_error(LISTENER "services = ( { name = \"a\";\n"
                          "  health = { start = \"maybe\"; }; } );\n",
                 3, "start");
    expect_error("listeners = ();\n", 1, "at least one");
    expect_error("workers = 1;\n", 0, "at least one");
    expect_error(LISTENER "services = ( { name = \"x\"; } );\n"
                          "routes = ( { service = \"x\"; } );\n",
                 3, "has no host");
    expect_error(LISTENER "services = ( { name = \"x\"; } );\n"
                          "routes = ( { host = \"*\"; } );\n",
                 3, "has no service");
}

/* libconfig 1.5 wraps a plain literal beyond 32 bits (4294967296 is read as 0: no limit) and
 * saturates beyond 64 bits: every such literal is an error at its own line, for every key. */
static void test_err_numbers(void)
{
    static const struct {
        const char *text;
        int line;
        const char *needle;
    } bad[] = {
        {"limits = { max_body_bytes = 4294967296; };\n", 2, "4294967296 does not fit in 32 bits"},
        {"limits = { max_body_bytes = 4294967296; };\n", 2, "read it as 0; write 4294967296L"},
        {"limits = { max_connections = 2147483648; };\n", 2, "read it as -2147483648"},
        {"limits = { idle_timeout_ms = -2147483649; };\n", 2, "read it as 2147483647"},
        {"limits = { header_timeout_ms = 4294967297; };\n", 2, "read it as 1;"},
        {"limits = { max_body_bytes = 0x100000000; };\n", 2, "0x100000000 does not fit in 32"},
        {"limits = { max_body_bytes = 0xFFFFFFFF; };\n", 2, "read it as -1"},
        {"limits = { max_body_bytes = 0x80000000; };\n", 2, "read it as -2147483648"},
        {"limits = { max_body_bytes = 99999999999999999999L; };\n", 2, "signed 64-bit"},
        {"limits = { max_body_bytes = 99999999999999999999; };\n", 2, "signed 64-bit"},
        {"limits = { max_body_bytes = 9223372036854775808L; };\n", 2, "signed 64-bit"},
        {"limits = { max_body_bytes = -9223372036854775809L; };\n", 2, "signed 64-bit"},
        {"limits = { max_body_bytes = 0x8000000000000000L; };\n", 2, "signed 64-bit"},
        {"limits = { max_body_bytes = 0x1FFFFFFFFFFFFFFFFLL; };\n", 2, "signed 64-bit"},
        {"limits = { max_body_bytes = 000000000000000000000000004294967296; };\n", 2,
         "does not fit in 32 bits"},
        {"workers = 4294967298;\n", 2, "read it as 2;"},
        {"admin = { mode = 4294967296; };\n", 2, "does not fit in 32 bits"},
        {"redis = { host = \"127.0.0.1\";\n  port = 4294973675; };\n", 3, "read it as 6379"},
        {"services = ( { name = \"a\"; max_ejection_percent = 1099511627776; } );\n", 2,
         "read it as 0;"},
        {"services = ( { name = \"a\";\n"
         "  backends = ( { address = \"127.0.0.1:1\"; weight = 4294967297; } ); } );\n",
         3, "read it as 1;"},
        {"services = ( { name = \"a\"; health = {\n fall = 1; rise = 1; interval_ms = 1;\n"
         " timeout_ms = 4294967296000; }; } );\n",
         4, "4294967296000 does not fit in 32 bits"},
        {"services = ( { name = \"a\"; retries = 1; passive_failures = 0x1000000001; } );\n", 2,
         "read it as 1;"},
        {"services = ( { name = \"x\"; } );\n"
         "routes = ( { host = \"*\"; service = \"x\"; priority = -4294967295; } );\n",
         3, "read it as 1;"},
        /* With the L suffix the number is read as written, and the key's range applies. */
        {"limits = { max_connections = 4294967296L; };\n", 2,
         "limits.max_connections must be between 1 and 2147483647 (got 4294967296)"},
        {"limits = { max_body_bytes = -4294967296L; };\n", 2, "(got -4294967296)"},
        {"services = ( { name = \"a\"; max_ejection_percent = 0x10000000000L; } );\n", 2,
         "between 0 and 100 (got 1099511627776)"},
        {"services = ( { name = \"a\"; retries = -1; } );\n", 2, "retries must be between 0"},
        /* Other types where an integer is expected. */
        {"limits = { max_connections = 1e3; };\n", 2, "not a floating-point number"},
        {"limits = { max_connections = 1000.0; };\n", 2, "not a floating-point number"},
        {"limits = { max_connections = 1.5; };\n", 2, "not a floating-point number"},
        {"limits = { max_connections = \"10000\"; };\n", 2, "not a string"},
        {"limits = { max_connections = true; };\n", 2, "not a boolean"},
        {"limits = { max_connections = [ 1 ]; };\n", 2, "not an array"},
        {"services = ( { name = \"a\"; retries = 2.0; } );\n", 2, "not a floating-point"},
        {"listeners = ( { address = \"127.0.0.1:1\"; tls = 1; } );\n", 1,
         "tls must be true or false"},
    };
    char text[1024];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (strncmp(bad[i].text, "listeners", 9) == 0) {
            snprintf(text, sizeof(text), "%s", bad[i].text);
        } else {
            snprintf(text, sizeof(text), LISTENER "%s", bad[i].text);
        }
        expect_error(text, bad[i].line, bad[i].needle);
    }
}

/* The same numbers are fine with the L suffix, at the int32 edges, and in strings and comments. */
static void test_numbers_ok(void)
{
    struct ms_config *cfg = expect_ok(
        LISTENER
        "# max_body_bytes = 4294967296; -99999999999999999999\n"
        "// 0xFFFFFFFF 4294967296\n"
        "/* 4294967296\n   1099511627776 */\n"
        "environment = \"e4294967296\";\n"
        "user = \"4294967296\";\n"
        "limits = { max_body_bytes = 4294967296L; max_connections = 2147483647;\n"
        "           idle_timeout_ms = 0x7FFFFFFF; header_timeout_ms = 0x10LL;\n"
        "           tunnel_idle_timeout_ms = +0010; };\n"
        "services = ( { name = \"s-4294967296\"; retries = 0; max_ejection_percent = 100L; } );\n"
        "routes = ( { host = \"*\"; service = \"s-4294967296\"; priority = -2147483648; } );\n",
        0);

    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->limits.max_body_bytes, 4294967296L);
    CU_ASSERT_EQUAL(cfg->limits.max_connections, 2147483647L);
    CU_ASSERT_EQUAL(cfg->limits.idle_timeout_ms, 2147483647L);
    CU_ASSERT_EQUAL(cfg->limits.header_timeout_ms, 16);
    CU_ASSERT_EQUAL(cfg->limits.tunnel_idle_timeout_ms, 10);
    CU_ASSERT_STRING_EQUAL(cfg->user, "4294967296");
    CU_ASSERT_EQUAL(cfg->services[0].max_ejection_percent, 100);
    CU_ASSERT_EQUAL(cfg->routes[0].priority, INT_MIN);
    ms_config_free(cfg);
    cfg = expect_ok(LISTENER "limits = { max_body_bytes = 9223372036854775807L; };\n", 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL(cfg->limits.max_body_bytes, LONG_MAX);
    ms_config_free(cfg);
}

/* A wrapped literal in an @included file is reported at that file's line. */
static void test_numbers_include(void)
{
    char dir[] = "/tmp/dsp-ms-numbers-XXXXXX";
    char inc[300], main_path[300];
    struct ms_config *cfg = NULL;
    char *errs = NULL, *p1, *p2;
    char want[400];

    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(inc, sizeof(inc), "%s/limits.conf", dir);
    snprintf(main_path, sizeof(main_path), "%s/main.conf", dir);
    p1 = write_file(inc, "max_connections = 10;\n\nmax_body_bytes = 4294967296;\n");
    p2 = write_file(main_path, LISTENER "limits = {\n@include \"limits.conf\"\n};\n");
    CU_ASSERT_EQUAL(ms_config_load(main_path, 0, &cfg, &errs), -1);
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    snprintf(want, sizeof(want), "%s:3: 4294967296 does not fit in 32 bits", inc);
    if (strstr(errs, want) == NULL) {
        fprintf(stderr, "\nwanted \"%s\", got:\n%s\n", want, errs);
    }
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, want));
    free(errs);
    unlink(inc);
    unlink(main_path);
    rmdir(dir);
    free(p1);
    free(p2);
}

static void test_err_hosts(void)
{
    static const char *const bad[] = {"api.do:80", "[::1]", "*.",     "a.*.b", "*foo",
                                      "a..b",      "",      "sp ace", "*.*.x"};
    char text[512];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(text, sizeof(text),
                 LISTENER "services = ( { name = \"a\"; backends = []; } );\n"
                          "routes = ( { service = \"a\";\n"
                          "  host = \"%s\"; } );\n",
                 bad[i]);
        expect_error(text, 4, "host");
    }
}

static void test_many_errors(void)
{
    struct ms_config *cfg = NULL;
    char *errs = NULL, *path;
    int rc = load_text("workers = 0;\n"
                       "listeners = (\n"
                       "  { address = \"1.2.3.4:99999\"; },\n"
                       "  { address = \"127.0.0.1:80\"; colour = \"blue\"; }\n"
                       ");\n"
                       "services = (\n"
                       "  { name = \"a\"; balance = \"fast\"; backends = []; },\n"
                       "  { name = \"a\"; backends = []; }\n"
                       ");\n"
                       "routes = ( { host = \"*\"; path = \"x\"; service = \"zz\"; } );\n",
                       0, &cfg, &errs, &path);

    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    CU_ASSERT_TRUE(has_error(errs, path, 1, "workers"));
    CU_ASSERT_TRUE(has_error(errs, path, 3, "bad port"));
    CU_ASSERT_TRUE(has_error(errs, path, 4, "unknown key 'colour' in listeners[1]"));
    CU_ASSERT_TRUE(has_error(errs, path, 7, "balance"));
    CU_ASSERT_TRUE(has_error(errs, path, 8, "duplicate service name 'a'"));
    CU_ASSERT_TRUE(has_error(errs, path, 10, "must start with '/'"));
    CU_ASSERT_TRUE(has_error(errs, path, 10, "unknown service 'zz'"));
    CU_ASSERT_EQUAL(count_lines(errs), 7);
    /* Sorted by line for the operator. */
    CU_ASSERT_TRUE(strncmp(errs, path, strlen(path)) == 0 &&
                   strncmp(errs + strlen(path), ":1: ", 4) == 0);
    free(errs);
    unlink(path);
    free(path);
}

static void test_env(void)
{
    static const char text[] = "listeners = (\n"
                               "  { address = \"127.0.0.1:10001\"; proxy_protocol = true; },\n"
                               "  { address = \"0.0.0.0:8443\"; tls = true; },\n"
                               "  { address = \"0.0.0.0:8080\"; },\n"
                               "  { address = \"0.0.0.0:9443\"; tls = true; }\n"
                               ");\n";
    struct ms_config *cfg;
    struct ms_config *c2 = NULL;
    char *errs = NULL, *path;

    setenv("HTTP_PORT", "18080", 1);
    setenv("HTTPS_PORT", "18443", 1);
    setenv("SELF_SIGNED_CN", "test.example", 1);
    unsetenv("SERVER_HOST");
    cfg = expect_ok(text, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[0].address, "127.0.0.1:18080");
    CU_ASSERT_EQUAL(ntohs(((struct sockaddr_in *)&cfg->listeners[0].ss)->sin_port), 18080);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[1].address, "0.0.0.0:18443");
    CU_ASSERT_STRING_EQUAL(cfg->listeners[2].address, "0.0.0.0:8080");
    CU_ASSERT_STRING_EQUAL(cfg->listeners[3].address, "0.0.0.0:9443");
    CU_ASSERT_STRING_EQUAL(cfg->tls.self_signed_cn, "test.example");
    ms_config_free(cfg);

    /* Without use_env nothing changes. */
    cfg = expect_ok(text, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[0].address, "127.0.0.1:10001");
    CU_ASSERT_STRING_EQUAL(cfg->tls.self_signed_cn, "localhost");
    ms_config_free(cfg);

    setenv("SERVER_HOST", "::1", 1);
    unsetenv("HTTPS_PORT");
    cfg = expect_ok(text, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[0].address, "[::1]:18080");
    CU_ASSERT_EQUAL(cfg->listeners[0].ss.ss_family, AF_INET6);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[1].address, "[::1]:8443");
    CU_ASSERT_EQUAL(cfg->listeners[1].ss.ss_family, AF_INET6);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[2].address, "0.0.0.0:8080");
    ms_config_free(cfg);

    setenv("SERVER_HOST", "10.1.2.3", 1);
    cfg = expect_ok(text, 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(cfg->listeners[0].address, "10.1.2.3:18080");
    CU_ASSERT_STRING_EQUAL(cfg->listeners[1].address, "10.1.2.3:8443");
    ms_config_free(cfg);

    /* An override that collides with another listener is a duplicate. */
    setenv("HTTP_PORT", "8080", 1);
    unsetenv("SERVER_HOST");
    setenv("HTTPS_PORT", "9443", 1);
    CU_ASSERT_EQUAL(load_text(text, 1, &c2, &errs, &path), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    CU_ASSERT_TRUE(has_error(errs, path, 5, "duplicate listener 0.0.0.0:9443"));
    free(errs);
    unlink(path);
    free(path);

    /* Bad values are errors naming the variable. */
    setenv("HTTP_PORT", "http", 1);
    setenv("HTTPS_PORT", "65536", 1);
    setenv("SERVER_HOST", "example.com", 1);
    setenv("SELF_SIGNED_CN", "", 1);
    errs = NULL;
    CU_ASSERT_EQUAL(load_text(text, 1, &c2, &errs, &path), -1);
    CU_ASSERT_PTR_NULL(c2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    CU_ASSERT_TRUE(has_error(errs, path, 0, "environment HTTP_PORT"));
    CU_ASSERT_TRUE(has_error(errs, path, 0, "environment HTTPS_PORT"));
    CU_ASSERT_TRUE(has_error(errs, path, 0, "environment SERVER_HOST"));
    CU_ASSERT_EQUAL(count_lines(errs), 3);
    free(errs);
    unlink(path);
    free(path);

    unsetenv("HTTP_PORT");
    unsetenv("HTTPS_PORT");
    unsetenv("SERVER_HOST");
    unsetenv("SELF_SIGNED_CN");
}

static void test_relative_paths(void)
{
    struct fixture fx;
    struct ms_config *cfg = NULL;
    char *errs = NULL;
    char want[PATH_MAX + 64], cwd[PATH_MAX], rel[PATH_MAX + 64];

    fixture_make(&fx,
                 "pid_file = \"./run/d.pid\";\n"
                 "admin = { socket = \"/run/abs.sock\"; };\n"
                 "log = { error = \"logs/error.log\"; access = \"../access.log\"; };\n" LISTENER
                 "tls = { certificates = ( { cert = \"./certs/example.pem\";\n"
                 "                           key = \"certs/example.key\"; } ); };\n");
    /* Load through a relative path from another working directory. */
    CU_ASSERT_PTR_NOT_NULL_FATAL(getcwd(cwd, sizeof(cwd)));
    CU_ASSERT_FATAL(chdir("/tmp") == 0);
    snprintf(rel, sizeof(rel), "%s/dispatcher.conf", strrchr(fx.dir, '/') + 1);
    CU_ASSERT_EQUAL(ms_config_load(rel, 0, &cfg, &errs), 0);
    CU_ASSERT_FATAL(chdir(cwd) == 0);
    if (errs != NULL) {
        fprintf(stderr, "\n%s\n", errs);
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(cfg->dir, fx.dir);
    join(want, sizeof(want), fx.dir, "run/d.pid");
    CU_ASSERT_STRING_EQUAL(cfg->pid_file, want);
    CU_ASSERT_STRING_EQUAL(cfg->admin.socket, "/run/abs.sock");
    join(want, sizeof(want), fx.dir, "logs/error.log");
    CU_ASSERT_STRING_EQUAL(cfg->log.error, want);
    join(want, sizeof(want), fx.dir, "../access.log");
    CU_ASSERT_STRING_EQUAL(cfg->log.access, want);
    CU_ASSERT_STRING_EQUAL(cfg->tls.certs[0].cert, fx.pem);
    CU_ASSERT_STRING_EQUAL(cfg->tls.certs[0].key, fx.key);
    ms_config_free(cfg);

    /* A certificate path relative to the file, not to the working directory. */
    free(write_file(fx.conf, LISTENER "tls = { certificates = (\n"
                                      "  { cert = \"certs/missing.pem\";\n"
                                      "    key = \"certs/example.key\"; } ); };\n"));
    cfg = NULL;
    errs = NULL;
    CU_ASSERT_EQUAL(ms_config_load(fx.conf, 0, &cfg, &errs), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    snprintf(want, sizeof(want), "cannot read \"%s/certs/missing.pem\"", fx.dir);
    CU_ASSERT_TRUE(has_error(errs, fx.conf, 3, want));
    free(errs);
    fixture_remove(&fx);
}

static void test_missing_file(void)
{
    struct ms_config *cfg = NULL;
    char *errs = NULL;

    CU_ASSERT_EQUAL(ms_config_load("/nonexistent/dispatcher.conf", 0, &cfg, &errs), -1);
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    CU_ASSERT_TRUE(has_error(errs, "/nonexistent/dispatcher.conf", 0, "No such file"));
    free(errs);
}

static void test_method_names(void)
{
    CU_ASSERT_EQUAL(ms_method_from_name("get"), HTTP_GET);
    CU_ASSERT_EQUAL(ms_method_from_name("GET"), HTTP_GET);
    CU_ASSERT_EQUAL(ms_method_from_name("Post"), HTTP_POST);
    CU_ASSERT_EQUAL(ms_method_from_name("DELETE"), HTTP_DELETE);
    CU_ASSERT_EQUAL(ms_method_from_name("m-search"), HTTP_MSEARCH);
    CU_ASSERT_EQUAL(ms_method_from_name("FETCH"), -1);
    CU_ASSERT_EQUAL(ms_method_from_name("<unknown>"), -1);
    CU_ASSERT_EQUAL(ms_method_from_name(""), -1);
    CU_ASSERT_EQUAL(ms_method_from_name(NULL), -1);
}

/* Thousands of services, found by name for every route (an index, not a scan); a duplicate
 * among them still names the line of the first. */
static void test_many_services(void)
{
    enum { NS = 3000, NR = 9000 };
    size_t cap = 160 * (NS + NR) + 256, len = 0;
    char *text = malloc(cap);
    struct ms_config *cfg;

    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    len += (size_t)snprintf(text + len, cap - len, LISTENER "services = (\n");
    for (int i = 0; i < NS; i++) {
        len += (size_t)snprintf(text + len, cap - len,
                                "  { name = \"svc-%d\"; backends = [ \"127.0.0.1:%d\" ]; },\n", i,
                                1024 + i);
    }
    text[len - 2] = '\n';
    len--;
    len += (size_t)snprintf(text + len, cap - len, ");\nroutes = (\n");
    for (int i = 0; i < NR; i++) {
        len += (size_t)snprintf(text + len, cap - len,
                                "  { host = \"h%d.example\"; service = \"svc-%d\"; }%s\n", i,
                                (i * 7) % NS, i + 1 < NR ? "," : "");
    }
    snprintf(text + len, cap - len, ");\n");
    cfg = expect_ok(text, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_EQUAL_FATAL(cfg->nroutes, NR);
    for (int i = 0; i < NR; i++) {
        char want[32];
        snprintf(want, sizeof(want), "svc-%d", (i * 7) % NS);
        CU_ASSERT_EQUAL(cfg->routes[i].service_idx, (size_t)((i * 7) % NS));
        CU_ASSERT_STRING_EQUAL(cfg->services[cfg->routes[i].service_idx].name, want);
    }
    ms_config_free(cfg);

    /* the same services with svc-1234 repeated at the end (line 2 + 3000 + 1) */
    len = 0;
    len += (size_t)snprintf(text + len, cap - len, LISTENER "services = (\n");
    for (int i = 0; i < NS; i++) {
        len += (size_t)snprintf(text + len, cap - len, "  { name = \"svc-%d\"; backends = []; },\n",
                                i);
    }
    snprintf(text + len, cap - len, "  { name = \"svc-1234\"; backends = []; }\n);\n");
    expect_error(text, 2 + NS + 1, "duplicate service name 'svc-1234' (already at line 1237)");
    free(text);
}

UNIT_SUITE(ms_config, {"spec example", test_spec_example}, {"defaults", test_defaults},
           {"values", test_values}, {"unknown key", test_err_unknown_key},
           {"whole file", test_err_whole_file}, {"bad address", test_err_bad_address},
           {"bad port", test_err_bad_port}, {"backend names", test_backend_names},
           {"unix backends", test_unix_backends},
           {"backend names compiled", test_backend_names_compile},
           {"unknown service", test_err_unknown_service},
           {"duplicate service", test_err_duplicate_service}, {"many services", test_many_services},
           {"duplicate listener", test_err_duplicate_listener},
           {"bad balance", test_err_bad_balance}, {"bad method", test_err_bad_method},
           {"bad path", test_err_bad_path}, {"bad cidr", test_err_bad_cidr},
           {"missing cert", test_err_missing_cert}, {"syntax error", test_err_syntax},
           {"type errors", test_err_types}, {"numbers libconfig would wrap", test_err_numbers},
           {"numbers read as written", test_numbers_ok},
           {"wrapped number in an include", test_numbers_include}, {"bad hosts", test_err_hosts},
           {"many errors", test_many_errors}, {"env overrides", test_env},
           {"relative paths", test_relative_paths}, {"missing file", test_missing_file},
           {"method names", test_method_names}, {"errors section", test_errors_section})
