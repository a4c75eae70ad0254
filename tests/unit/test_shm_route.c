/* dispatcher unit tests: the snapshot compiler, its checker and the route matcher, including a
 * brute-force reference matcher that random route sets are compared against. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <CUnit/CUnit.h>
#include <http_parser.h>

#include "common/dsp.h"
#include "common/net.h"
#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "shm/shm_ridx.h"
#include "shm/shm_route.h"
#include "shm/shm_snap.h"
#include "shm/shm_types.h"
#include "tests/unit/unit.h"

#define M(x) (1ULL << (x))

/* ---- hand-built configs ------------------------------------------------------------------ */

struct tcfg {
    struct ms_config cfg;
    size_t rcap;
};

static void tc_init(struct tcfg *t, size_t nsvc)
{
    char buf[64], err[128];

    memset(t, 0, sizeof(*t));
    t->cfg.path = dsp_xstrdup("/etc/dispatcher/dispatcher.conf");
    t->cfg.tls.self_signed_cn = dsp_xstrdup("localhost");
    t->cfg.limits.max_connections = 10000;
    t->cfg.limits.max_header_bytes = 16384;
    t->cfg.limits.header_timeout_ms = 10000;
    t->cfg.limits.idle_timeout_ms = 60000;
    t->cfg.limits.shutdown_timeout_ms = 10000;
    t->cfg.limits.tunnel_idle_timeout_ms = 3600000;
    t->cfg.services = dsp_xcalloc(nsvc, sizeof(*t->cfg.services));
    t->cfg.nservices = nsvc;
    for (size_t i = 0; i < nsvc; i++) {
        struct ms_service *s = &t->cfg.services[i];

        snprintf(buf, sizeof(buf), "svc%zu", i);
        s->name = dsp_xstrdup(buf);
        s->retries = 1;
        s->connect_timeout_ms = 2000;
        s->response_timeout_ms = 30000;
        s->nbackends = 1;
        s->backends = dsp_xcalloc(1, sizeof(*s->backends));
        snprintf(buf, sizeof(buf), "127.0.0.1:%zu", 9000 + i % 50000);
        s->backends[0].address = dsp_xstrdup(buf);
        s->backends[0].weight = 1;
        CU_ASSERT_FATAL(net_parse_addr(buf, 0, &s->backends[0].ss, &s->backends[0].sslen, err,
                                       sizeof(err)) == 0);
    }
}

static void tc_route(struct tcfg *t, const char *host, const char *path, uint64_t methods, int prio,
                     size_t svc)
{
    struct ms_route *r;

    if (t->cfg.nroutes == t->rcap) {
        t->rcap = t->rcap ? t->rcap * 2 : 16;
        t->cfg.routes = dsp_xrealloc(t->cfg.routes, t->rcap * sizeof(*t->cfg.routes));
    }
    r = &t->cfg.routes[t->cfg.nroutes++];
    memset(r, 0, sizeof(*r));
    r->host = dsp_xstrdup(host);
    r->path = dsp_xstrdup(path);
    r->methods = methods;
    r->priority = prio;
    r->service_idx = svc;
    r->service = dsp_xstrdup(t->cfg.services[svc].name);
}

static void tc_free(struct tcfg *t)
{
    for (size_t i = 0; i < t->cfg.nroutes; i++) {
        free(t->cfg.routes[i].host);
        free(t->cfg.routes[i].path);
        free(t->cfg.routes[i].service);
    }
    free(t->cfg.routes);
    for (size_t i = 0; i < t->cfg.nservices; i++) {
        struct ms_service *s = &t->cfg.services[i];

        for (size_t j = 0; j < s->nbackends; j++) {
            free(s->backends[j].address);
        }
        free(s->backends);
        free(s->name);
        free(s->health.path);
    }
    free(t->cfg.services);
    for (size_t i = 0; i < t->cfg.nlisteners; i++) {
        free(t->cfg.listeners[i].address);
    }
    free(t->cfg.listeners);
    free(t->cfg.trusted);
    free(t->cfg.path);
    free(t->cfg.tls.self_signed_cn);
}

static struct shm_snap_hdr *tc_compile(struct tcfg *t, size_t *size)
{
    struct shm_snap_hdr *h = ms_compile(&t->cfg, 1, size);

    CU_ASSERT_FATAL(h != NULL);
    CU_ASSERT(shm_snap_check(h, *size) == 0);
    return h;
}

static uint32_t q(const struct shm_snap_hdr *h, const char *host, const char *path, int method)
{
    char norm[256];
    size_t n = shm_host_normalize(host, strlen(host), norm, sizeof(norm));

    return shm_route_match(h, norm, n, path, strlen(path), method);
}

/* ---- the reference matcher: the SPEC rules, one route at a time ---------------------------- */

static int ref_host(const char *rhost, const char *host, size_t hl, uint64_t *spec)
{
    size_t rl = strlen(rhost);

    if (strcmp(rhost, "*") == 0) {
        *spec = 0;
        return 1;
    }
    if (rl >= 2 && rhost[0] == '*' && rhost[1] == '.') {
        size_t sl = rl - 2;

        *spec = sl + 1;
        return hl > sl + 1 && host[hl - sl - 1] == '.' &&
               memcmp(host + hl - sl, rhost + 2, sl) == 0;
    }
    *spec = UINT64_MAX;
    return rl == hl && memcmp(rhost, host, hl) == 0;
}

static uint32_t ref_match(const struct ms_config *cfg, const char *host, size_t hl,
                          const char *path, size_t pl, int method)
{
    uint32_t best = SHM_NONE;
    int bprio = 0;
    uint64_t bspec = 0;
    size_t bplen = 0;

    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct ms_route *r = &cfg->routes[i];
        size_t rpl = strlen(r->path);
        uint64_t spec;
        int better;

        if (!ref_host(r->host, host, hl, &spec) || rpl > pl || memcmp(r->path, path, rpl) != 0) {
            continue;
        }
        if (r->methods != 0 && (method < 0 || method >= 64 || !(r->methods & M(method)))) {
            continue;
        }
        if (best == SHM_NONE) {
            better = 1;
        } else if (r->priority != bprio) {
            better = r->priority > bprio;
        } else if (spec != bspec) {
            better = spec > bspec;
        } else {
            better = rpl > bplen; /* equal: the earlier route, already held, stays */
        }
        if (better) {
            best = (uint32_t)i;
            bprio = r->priority;
            bspec = spec;
            bplen = rpl;
        }
    }
    return best;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
    /* xorshift64*: deterministic, so a failure reproduces. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static size_t rndn(size_t n)
{
    return (size_t)(rnd() % n);
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void check_norm(const char *in, const char *want)
{
    char out[64];
    size_t n = shm_host_normalize(in, strlen(in), out, sizeof(out));

    CU_ASSERT_EQUAL(n, strlen(want));
    CU_ASSERT_STRING_EQUAL(out, want);
}

static void test_normalize(void)
{
    char small[8];
    char big[300];

    check_norm("Example.COM", "example.com");
    check_norm("example.com:8080", "example.com");
    check_norm("example.com.", "example.com");
    check_norm("example.com.:443", "example.com");
    check_norm("example.com..", "example.com.");
    check_norm("[::1]:8080", "[::1]");
    check_norm("[::1]", "[::1]");
    check_norm("[FE80::1]:80", "[fe80::1]");
    check_norm("10.0.0.1:80", "10.0.0.1");
    check_norm(" a.b ", "a.b");
    check_norm("", "");
    check_norm(":80", "");
    check_norm(".", "");
    check_norm("[::1", "");
    /* Too long for the output buffer: unusable, not truncated. */
    CU_ASSERT_EQUAL(shm_host_normalize("abcdefgh", 8, small, sizeof(small)), 0);
    CU_ASSERT_STRING_EQUAL(small, "");
    CU_ASSERT_EQUAL(shm_host_normalize("abcdefg", 7, small, sizeof(small)), 7);
    CU_ASSERT_EQUAL(shm_host_normalize("abc", 3, small, 0), 0);
    memset(big, 'a', sizeof(big));
    CU_ASSERT_EQUAL(shm_host_normalize(big, sizeof(big), small, sizeof(small)), 0);
    /* Only <len> bytes are read. */
    CU_ASSERT_EQUAL(shm_host_normalize("ab.cd:1", 2, small, sizeof(small)), 2);
    CU_ASSERT_STRING_EQUAL(small, "ab");
}

static void test_host_kinds(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h;
    size_t size;

    tc_init(&t, 3);
    tc_route(&t, "*", "/", 0, 0, 0);                 /* 0 */
    tc_route(&t, "*.example.com", "/", 0, 0, 1);     /* 1 */
    tc_route(&t, "api.example.com", "/", 0, 0, 2);   /* 2 */
    tc_route(&t, "*.app.example.com", "/", 0, 0, 1); /* 3: longer wildcard */
    tc_route(&t, "gateway.do", "/", 0, 0, 2);        /* 4 */
    h = tc_compile(&t, &size);

    CU_ASSERT_EQUAL(q(h, "api.example.com", "/", HTTP_GET), 2);
    CU_ASSERT_EQUAL(q(h, "API.Example.COM:8443", "/x", HTTP_GET), 2);
    CU_ASSERT_EQUAL(q(h, "api.example.com.", "/", HTTP_GET), 2);
    CU_ASSERT_EQUAL(q(h, "www.example.com", "/", HTTP_GET), 1);
    CU_ASSERT_EQUAL(q(h, "a.b.example.com", "/", HTTP_GET), 1);
    CU_ASSERT_EQUAL(q(h, "example.com", "/", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "x.app.example.com", "/", HTTP_GET), 3);
    CU_ASSERT_EQUAL(q(h, "y.x.app.example.com", "/", HTTP_GET), 3);
    /* "*.app.example.com" needs a label before the suffix; the apex is "*.example.com"'s. */
    CU_ASSERT_EQUAL(q(h, "app.example.com", "/", HTTP_GET), 1);
    CU_ASSERT_EQUAL(q(h, "gateway.do", "/", HTTP_GET), 4);
    CU_ASSERT_EQUAL(q(h, "x.gateway.do", "/", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "other", "/", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "example.com.evil", "/", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "xexample.com", "/", HTTP_GET), 0);
    free(h);
    tc_free(&t);
}

static void test_wildcard_not_apex(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h;
    size_t size;

    tc_init(&t, 1);
    tc_route(&t, "*.app.example.com", "/", 0, 0, 0);
    h = tc_compile(&t, &size);
    CU_ASSERT_EQUAL(q(h, "app.example.com", "/", HTTP_GET), SHM_NONE);
    CU_ASSERT_EQUAL(q(h, "a.app.example.com", "/", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "a.b.app.example.com", "/", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, ".app.example.com", "/", HTTP_GET), SHM_NONE);
    CU_ASSERT_EQUAL(q(h, "aapp.example.com", "/", HTTP_GET), SHM_NONE);
    free(h);
    tc_free(&t);
}

static void test_paths(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h;
    size_t size;

    tc_init(&t, 1);
    tc_route(&t, "a.do", "/", 0, 0, 0);           /* 0 */
    tc_route(&t, "a.do", "/api", 0, 0, 0);        /* 1 */
    tc_route(&t, "a.do", "/api/db/", 0, 0, 0);    /* 2 */
    tc_route(&t, "*", "/api/db/x/long", 0, 0, 0); /* 3: longer path, less specific host */
    tc_route(&t, "b.do", "/only", 0, 0, 0);       /* 4 */
    h = tc_compile(&t, &size);

    CU_ASSERT_EQUAL(q(h, "a.do", "/", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "a.do", "/other", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api", HTTP_GET), 1);
    /* Plain byte prefix: "/api" also takes "/apiary". */
    CU_ASSERT_EQUAL(q(h, "a.do", "/apiary", HTTP_GET), 1);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/db", HTTP_GET), 1);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/db/", HTTP_GET), 2);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/db/users?id=1", HTTP_GET), 2);
    /* Host specificity ranks before path length. */
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/db/x/long/er", HTTP_GET), 2);
    CU_ASSERT_EQUAL(q(h, "c.do", "/api/db/x/long/er", HTTP_GET), 3);
    CU_ASSERT_EQUAL(q(h, "b.do", "/only/x", HTTP_GET), 4);
    CU_ASSERT_EQUAL(q(h, "b.do", "/onl", HTTP_GET), SHM_NONE);
    CU_ASSERT_EQUAL(q(h, "b.do", "", HTTP_GET), SHM_NONE);
    CU_ASSERT_EQUAL(q(h, "b.do", "/ONLY", HTTP_GET), SHM_NONE);
    free(h);
    tc_free(&t);
}

static void test_methods(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h;
    size_t size;

    tc_init(&t, 1);
    tc_route(&t, "a.do", "/api", M(HTTP_GET), 0, 0);                /* 0 */
    tc_route(&t, "a.do", "/", 0, 0, 0);                             /* 1: catch-all */
    tc_route(&t, "a.do", "/api", M(HTTP_GET) | M(HTTP_POST), 0, 0); /* 2 */
    tc_route(&t, "a.do", "/api", M(HTTP_GET), 0, 0);                /* 3: shadowed by 0 */
    tc_route(&t, "b.do", "/x", M(HTTP_DELETE), 0, 0);               /* 4 */
    h = tc_compile(&t, &size);

    CU_ASSERT_EQUAL(q(h, "a.do", "/api/x", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/x", HTTP_POST), 2);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/x", HTTP_PUT), 1);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/x", -1), 1);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/x", 99), 1);
    CU_ASSERT_EQUAL(q(h, "b.do", "/x", HTTP_DELETE), 4);
    CU_ASSERT_EQUAL(q(h, "b.do", "/x", HTTP_GET), SHM_NONE);
    free(h);
    tc_free(&t);
}

static void test_priority_and_ties(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h;
    size_t size;

    tc_init(&t, 2);
    tc_route(&t, "a.do", "/api/v1", 0, 0, 0);      /* 0 */
    tc_route(&t, "*", "/", 0, 5, 1);               /* 1: priority beats everything */
    tc_route(&t, "b.do", "/", 0, 0, 0);            /* 2 */
    tc_route(&t, "b.do", "/", 0, 0, 1);            /* 3: same as 2, later */
    tc_route(&t, "c.do", "/", 0, -1, 0);           /* 4 */
    tc_route(&t, "c.do", "/", 0, 0, 1);            /* 5: higher priority, later */
    tc_route(&t, "*.d.do", "/", 0, 7, 0);          /* 6 */
    tc_route(&t, "x.d.do", "/long/path", 0, 7, 0); /* 7 */
    tc_route(&t, "x.d.do", "/", 0, 8, 0);          /* 8 */
    h = tc_compile(&t, &size);

    CU_ASSERT_EQUAL(q(h, "a.do", "/api/v1/x", HTTP_GET), 1);
    CU_ASSERT_EQUAL(q(h, "b.do", "/", HTTP_GET), 1);
    CU_ASSERT_EQUAL(q(h, "y.d.do", "/", HTTP_GET), 6);
    /* Priority before path length inside one host too. */
    CU_ASSERT_EQUAL(q(h, "x.d.do", "/long/path", HTTP_GET), 8);
    free(h);

    /* Without the priority-5 catch-all, ties go to the earlier route. */
    t.cfg.routes[1].priority = -5;
    h = tc_compile(&t, &size);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api/v1/x", HTTP_GET), 0);
    CU_ASSERT_EQUAL(q(h, "a.do", "/api", HTTP_GET), 1);
    CU_ASSERT_EQUAL(q(h, "b.do", "/", HTTP_GET), 2);
    CU_ASSERT_EQUAL(q(h, "c.do", "/", HTTP_GET), 5);
    free(h);
    tc_free(&t);
}

static void test_empty_host_and_none(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h;
    size_t size;

    tc_init(&t, 1);
    tc_route(&t, "a.do", "/", 0, 0, 0);
    tc_route(&t, "*.do", "/", 0, 0, 0);
    h = tc_compile(&t, &size);
    CU_ASSERT_EQUAL(q(h, "", "/", HTTP_GET), SHM_NONE);
    CU_ASSERT_EQUAL(q(h, "zz", "/", HTTP_GET), SHM_NONE);
    CU_ASSERT_EQUAL(shm_route_match(h, NULL, 0, NULL, 0, HTTP_GET), SHM_NONE);
    free(h);

    tc_route(&t, "*", "/", 0, 0, 0);
    h = tc_compile(&t, &size);
    CU_ASSERT_EQUAL(q(h, "", "/", HTTP_GET), 2);
    CU_ASSERT_EQUAL(q(h, ".", "/", HTTP_GET), 2);
    CU_ASSERT_EQUAL(q(h, "do", "/", HTTP_GET), 2);
    free(h);
    tc_free(&t);

    /* No routes at all. */
    tc_init(&t, 1);
    h = tc_compile(&t, &size);
    CU_ASSERT_EQUAL(q(h, "a.do", "/", HTTP_GET), SHM_NONE);
    free(h);
    tc_free(&t);
}

static void add_listener(struct tcfg *t, const char *addr, int tls, int pp)
{
    struct ms_listener *l;
    char err[128];

    t->cfg.listeners = dsp_xrealloc(t->cfg.listeners, (t->cfg.nlisteners + 1) * sizeof(*l));
    l = &t->cfg.listeners[t->cfg.nlisteners++];
    memset(l, 0, sizeof(*l));
    l->address = dsp_xstrdup(addr);
    l->tls = tls;
    l->proxy_protocol = pp;
    CU_ASSERT_FATAL(net_parse_addr(addr, 0, &l->ss, &l->sslen, err, sizeof(err)) == 0);
}

static void build_sample(struct tcfg *t)
{
    struct ms_service *s;
    char err[128];

    tc_init(t, 3);
    add_listener(t, "0.0.0.0:8080", 0, 0);
    add_listener(t, "[::1]:8443", 1, 1);
    t->cfg.trusted = dsp_xcalloc(2, sizeof(*t->cfg.trusted));
    t->cfg.ntrusted = 2;
    CU_ASSERT_FATAL(net_cidr_parse("127.0.0.1/32", &t->cfg.trusted[0], err, sizeof(err)) == 0);
    CU_ASSERT_FATAL(net_cidr_parse("10.0.0.0/8", &t->cfg.trusted[1], err, sizeof(err)) == 0);

    /* svc1: two weighted backends, health and circuit breaker. */
    s = &t->cfg.services[1];
    free(s->backends[0].address);
    free(s->backends);
    s->nbackends = 2;
    s->backends = dsp_xcalloc(2, sizeof(*s->backends));
    s->backends[0].address = dsp_xstrdup("127.0.0.1:9102");
    s->backends[0].weight = 2;
    s->backends[1].address = dsp_xstrdup("[::1]:9103");
    s->backends[1].weight = 1;
    CU_ASSERT_FATAL(net_parse_addr("127.0.0.1:9102", 0, &s->backends[0].ss, &s->backends[0].sslen,
                                   err, sizeof(err)) == 0);
    CU_ASSERT_FATAL(net_parse_addr("[::1]:9103", 0, &s->backends[1].ss, &s->backends[1].sslen, err,
                                   sizeof(err)) == 0);
    s->balance = SHM_BALANCE_LEASTCONN;
    s->health.enabled = 1;
    s->health.path = dsp_xstrdup("/health");
    s->health.interval_ms = 30000;
    s->health.timeout_ms = 2000;
    s->health.fall = 1;
    s->health.rise = 3;
    s->circuit.enabled = 1;
    s->circuit.failures = 5;
    s->circuit.open_ms = 30000;
    s->retries = 2;

    /* svc2: known but not deployed. */
    s = &t->cfg.services[2];
    free(s->backends[0].address);
    free(s->backends);
    s->backends = NULL;
    s->nbackends = 0;
    s->balance = SHM_BALANCE_IPHASH;

    tc_route(t, "gateway.do", "/", 0, 0, 0);
    tc_route(t, "*.app.example.com", "/", 0, 0, 0);
    tc_route(t, "api.do", "/api/db/", M(HTTP_GET) | M(HTTP_POST), 0, 1);
    tc_route(t, "*", "/", 0, 0, 0);
}

static void test_roundtrip(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h;
    const struct shm_service *sv;
    const struct shm_backend *be;
    const struct shm_route *rt;
    const struct shm_listener *ls;
    const struct shm_cidr *tc;
    size_t size;
    time_t before = time(NULL);

    build_sample(&t);
    h = tc_compile(&t, &size);
    CU_ASSERT_EQUAL(h->magic, SHM_SNAP_MAGIC);
    CU_ASSERT_EQUAL(h->version, SHM_SNAP_VERSION);
    CU_ASSERT_EQUAL(h->gen, 1);
    CU_ASSERT_EQUAL(h->size, size);
    CU_ASSERT_EQUAL(size % 8, 0);
    CU_ASSERT(h->loaded_at >= (uint64_t)before && h->loaded_at <= (uint64_t)time(NULL));
    CU_ASSERT_EQUAL(h->source, SHM_SOURCE_FILE);
    CU_ASSERT_EQUAL(h->limits.max_connections, 10000);
    CU_ASSERT_EQUAL(h->limits.max_header_bytes, 16384);
    CU_ASSERT_EQUAL(h->limits.max_body_bytes, 0);
    CU_ASSERT_EQUAL(h->limits.tunnel_idle_timeout_ms, 3600000);
    CU_ASSERT_STRING_EQUAL(shm_s(h, h->config_path), "/etc/dispatcher/dispatcher.conf");
    CU_ASSERT_STRING_EQUAL(shm_s(h, h->self_signed_cn), "localhost");
    CU_ASSERT_EQUAL(h->ncerts, 0);
    CU_ASSERT_EQUAL(h->listeners_off % 8, 0);
    CU_ASSERT_EQUAL(h->services_off % 8, 0);
    CU_ASSERT_EQUAL(h->backends_off % 8, 0);
    CU_ASSERT_EQUAL(h->routes_off % 8, 0);

    CU_ASSERT_EQUAL_FATAL(h->nlisteners, 2);
    ls = shm_listeners(h);
    CU_ASSERT_EQUAL(ls[0].family, AF_INET);
    CU_ASSERT_EQUAL(ls[0].port, 8080);
    CU_ASSERT_EQUAL(ls[0].tls, 0);
    CU_ASSERT_STRING_EQUAL(shm_s(h, ls[0].address), "0.0.0.0:8080");
    CU_ASSERT_EQUAL(ls[1].family, AF_INET6);
    CU_ASSERT_EQUAL(ls[1].port, 8443);
    CU_ASSERT_EQUAL(ls[1].tls, 1);
    CU_ASSERT_EQUAL(ls[1].proxy_protocol, 1);
    CU_ASSERT_EQUAL(ls[1].ip[15], 1);

    CU_ASSERT_EQUAL_FATAL(h->ntrusted, 2);
    tc = shm_trusted(h);
    CU_ASSERT_EQUAL(tc[0].family, AF_INET);
    CU_ASSERT_EQUAL(tc[0].prefix, 32);
    CU_ASSERT_EQUAL(tc[0].addr[0], 127);
    CU_ASSERT_EQUAL(tc[1].prefix, 8);
    CU_ASSERT_EQUAL(tc[1].addr[0], 10);

    CU_ASSERT_EQUAL_FATAL(h->nservices, 3);
    CU_ASSERT_EQUAL_FATAL(h->nbackends, 3);
    sv = shm_services(h);
    be = shm_backends(h);
    CU_ASSERT_STRING_EQUAL(shm_s(h, sv[0].name), "svc0");
    CU_ASSERT_EQUAL(sv[0].backends_first, 0);
    CU_ASSERT_EQUAL(sv[0].nbackends, 1);
    CU_ASSERT_EQUAL(sv[0].nroutes, 3);
    CU_ASSERT_EQUAL(sv[0].rt_slot, SHM_NONE);
    CU_ASSERT_EQUAL(sv[0].balance, SHM_BALANCE_RR);
    CU_ASSERT_STRING_EQUAL(shm_s(h, sv[1].name), "svc1");
    CU_ASSERT_EQUAL(sv[1].backends_first, 1);
    CU_ASSERT_EQUAL(sv[1].nbackends, 2);
    CU_ASSERT_EQUAL(sv[1].total_weight, 3);
    CU_ASSERT_EQUAL(sv[1].balance, SHM_BALANCE_LEASTCONN);
    CU_ASSERT_EQUAL(sv[1].retries, 2);
    CU_ASSERT_EQUAL(sv[1].health_enabled, 1);
    CU_ASSERT_EQUAL(sv[1].health_rise, 3);
    CU_ASSERT_STRING_EQUAL(shm_s(h, sv[1].health_path), "/health");
    CU_ASSERT_EQUAL(sv[1].cb_enabled, 1);
    CU_ASSERT_EQUAL(sv[1].cb_failures, 5);
    CU_ASSERT_EQUAL(sv[1].nroutes, 1);
    CU_ASSERT_EQUAL(sv[2].nbackends, 0);
    CU_ASSERT_EQUAL(sv[2].balance, SHM_BALANCE_IPHASH);
    CU_ASSERT_EQUAL(sv[2].nroutes, 0);
    CU_ASSERT_STRING_EQUAL(shm_s(h, sv[2].health_path), "");
    CU_ASSERT_STRING_EQUAL(shm_s(h, be[0].address), "127.0.0.1:9000");
    CU_ASSERT_EQUAL(be[0].service, 0);
    CU_ASSERT_STRING_EQUAL(shm_s(h, be[1].address), "127.0.0.1:9102");
    CU_ASSERT_EQUAL(be[1].service, 1);
    CU_ASSERT_EQUAL(be[1].weight, 2);
    CU_ASSERT_EQUAL(be[1].port, 9102);
    CU_ASSERT_EQUAL(be[1].family, AF_INET);
    CU_ASSERT_EQUAL(be[1].ip[0], 127);
    CU_ASSERT_EQUAL(be[1].ip[3], 1);
    CU_ASSERT_EQUAL(be[1].rt_slot, SHM_NONE);
    CU_ASSERT_STRING_EQUAL(shm_s(h, be[2].address), "[::1]:9103");
    CU_ASSERT_EQUAL(be[2].family, AF_INET6);
    CU_ASSERT_EQUAL(be[2].port, 9103);

    CU_ASSERT_EQUAL_FATAL(h->nroutes, 4);
    rt = shm_routes(h);
    CU_ASSERT_STRING_EQUAL(shm_s(h, rt[1].host), "*.app.example.com");
    CU_ASSERT_EQUAL(rt[1].host_kind, SHM_HOST_WILDCARD);
    CU_ASSERT_STRING_EQUAL(shm_s(h, rt[2].path), "/api/db/");
    CU_ASSERT_EQUAL(rt[2].methods, M(HTTP_GET) | M(HTTP_POST));
    CU_ASSERT_EQUAL(rt[2].service, 1);
    CU_ASSERT_EQUAL(rt[2].order, 2);
    CU_ASSERT_EQUAL(rt[2].host_kind, SHM_HOST_EXACT);
    CU_ASSERT_EQUAL(rt[3].host_kind, SHM_HOST_ANY);

    CU_ASSERT_EQUAL(q(h, "api.do", "/api/db/x", HTTP_POST), 2);
    CU_ASSERT_EQUAL(q(h, "api.do", "/api/db/x", HTTP_DELETE), 3);

    /* Same config, same bytes: no leftovers of the build end up in the segment. */
    {
        size_t size2;
        struct shm_snap_hdr *h2 = ms_compile(&t.cfg, 1, &size2);

        CU_ASSERT_EQUAL_FATAL(size2, size);
        h2->loaded_at = h->loaded_at;
        CU_ASSERT(memcmp(h, h2, size) == 0);
        free(h2);
    }
    free(h);
    tc_free(&t);
}

/* A copy in an exact-size heap block, so ASan flags any read past the segment. */
static struct shm_snap_hdr *dup_snap(const void *src, size_t size)
{
    void *p = dsp_xmalloc(size);

    memcpy(p, src, size);
    return p;
}

static void *at(struct shm_snap_hdr *c, uint32_t off)
{
    return (char *)c + off;
}

static void test_check_corrupt(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h, *c;
    size_t size;

    build_sample(&t);
    h = tc_compile(&t, &size);

    CU_ASSERT_EQUAL(shm_snap_check(h, size - 8), -1); /* truncated */
    CU_ASSERT_EQUAL(shm_snap_check(h, 16), -1);
    CU_ASSERT_EQUAL(shm_snap_check(h, 0), -1);
    CU_ASSERT_EQUAL(shm_snap_check(NULL, size), -1);

    /* Truncated but with a header that claims the short size: tables and strings stick out. */
    c = dup_snap(h, h->strings_off + 4);
    c->size = h->strings_off + 4;
    CU_ASSERT_EQUAL(shm_snap_check(c, c->size), -1);
    free(c);

#define CORRUPT(stmt)                                                                              \
    do {                                                                                           \
        c = dup_snap(h, size);                                                                     \
        CU_ASSERT_EQUAL(shm_snap_check(c, size), 0);                                               \
        stmt;                                                                                      \
        CU_ASSERT_EQUAL(shm_snap_check(c, size), -1);                                              \
        free(c);                                                                                   \
    } while (0)

    CORRUPT(c->magic ^= 1);
    CORRUPT(c->version = 99);
    CORRUPT(c->routes_off = (uint32_t)size);
    CORRUPT(c->routes_off = (uint32_t)size - 8);
    CORRUPT(c->services_off = 0xfffffff8u);
    CORRUPT(c->backends_off += 4);
    CORRUPT(c->nroutes = 0xffffffffu);
    CORRUPT(c->strings_len = 0xffffffffu);
    CORRUPT(c->config_path.off = (uint32_t)size + 100);
    CORRUPT(c->config_path.len = 0xffffffffu);
    CORRUPT(c->self_signed_cn.len += 1);
    CORRUPT(((struct shm_route *)at(c, c->routes_off))[1].host.off = 0xfffffff0u);
    CORRUPT(((struct shm_route *)at(c, c->routes_off))[0].service = 3);
    CORRUPT(((struct shm_backend *)at(c, c->backends_off))[2].service = 7);
    CORRUPT(((struct shm_service *)at(c, c->services_off))[1].nbackends = 3);
    CORRUPT(((struct shm_listener *)at(c, c->listeners_off))[1].address.off = 8);
    CORRUPT(c->ridx.off[SHM_RIDX_GROUPS] = (uint32_t)size);
    CORRUPT(c->ridx.count[SHM_RIDX_LIST] = 0x7fffffffu);
    CORRUPT(c->ridx.count[SHM_RIDX_GROUP_BUCKETS] = 3);
    CORRUPT(((uint32_t *)at(c, c->ridx.off[SHM_RIDX_LIST]))[0] = 4);
    CORRUPT(((uint32_t *)at(c, c->ridx.off[SHM_RIDX_GROUP_BUCKETS]))[0] = 1000);
    CORRUPT(((struct shm_ridx_path *)at(c, c->ridx.off[SHM_RIDX_PATHS]))[0].list_first = ~0u);
    CORRUPT(((struct shm_ridx_path *)at(c, c->ridx.off[SHM_RIDX_PATHS]))[0].group = 100);
    CORRUPT(((struct shm_ridx_group *)at(c, c->ridx.off[SHM_RIDX_GROUPS]))[0].key_off = ~0u - 8);
    CORRUPT(((struct shm_ridx_group *)at(c, c->ridx.off[SHM_RIDX_GROUPS]))[0].nplens = 1000);
    CORRUPT(((struct shm_ridx_meta *)at(c, c->ridx.off[SHM_RIDX_META]))->any_group = 77);
    /* A string whose NUL was overwritten. */
    CORRUPT(((char *)c)[c->config_path.off + c->config_path.len] = 'x');
#undef CORRUPT

    free(h);
    tc_free(&t);
}

/* Random damage must be caught or harmless: the check never reads outside the segment, and a
 * segment that passes it can be matched against without faulting. */
static void test_check_fuzz(void)
{
    struct tcfg t;
    struct shm_snap_hdr *h, *c;
    size_t size;
    int passed = 0;

    build_sample(&t);
    tc_route(&t, "*.do", "/x/y", 0, 1, 2);
    tc_route(&t, "a.api.do", "/", M(HTTP_PUT), 0, 1);
    h = tc_compile(&t, &size);
    for (int it = 0; it < 20000; it++) {
        size_t n = 1 + rndn(4);

        c = dup_snap(h, size);
        for (size_t k = 0; k < n; k++) {
            size_t at = rndn(size / 4) * 4;
            uint32_t v = (uint32_t)rnd();

            if (rnd() & 1) {
                v &= 0xff; /* small values land inside the segment more often */
            }
            memcpy((char *)c + at, &v, 4);
        }
        if (shm_snap_check(c, size) == 0) {
            passed++;
            (void)q(c, "api.do", "/api/db/x", HTTP_GET);
            (void)q(c, "x.y.app.example.com", "/", HTTP_POST);
            (void)q(c, "", "", 0);
        }
        free(c);
    }
    /* Many flips hit padding, reserved fields or string bytes and are legitimately accepted. */
    CU_ASSERT(passed > 0);
    free(h);
    tc_free(&t);
}

static const char *const rt_hosts[] = {
    "*",         "a.com",       "b.a.com", "c.b.a.com", "x.org",   "*.com", "*.a.com",
    "*.b.a.com", "*.c.b.a.com", "*.org",   "com",       "*.x.org", "a.b",   "*.b",
};
static const char *const q_hosts[] = {
    "",    "a.com", "b.a.com", "c.b.a.com", "d.c.b.a.com", "zz.b.a.com", "com", "x.org", "y.x.org",
    "org", "q.com", "a.comx",  ".com",      "unknown",     "a.b",        "b",   "x.a.b",
};
static const char *const rt_paths[] = {
    "/", "", "/a", "/ab", "/a/", "/a/b", "/b", "/abc/d", "/x/y/z",
};
static const char *const q_paths[] = {
    "/", "", "/a", "/ab", "/abc", "/abc/def", "/a/b/c", "/b", "/bb", "/x/y/z/w", "/zz", "/a/",
};
static const int prios[] = {-2, 0, 0, 0, 0, 1, 3};
static const int q_methods[] = {0, 1, 2, 3, 4, 5, 6, 45, -1, 70};

static uint64_t rnd_methods(void)
{
    uint64_t m = 0;

    if (rndn(2) == 0) {
        return 0;
    }
    for (int i = 0; i < 3; i++) {
        m |= M(rndn(7));
    }
    if (rndn(8) == 0) {
        m |= M(45);
    }
    return m;
}

static void compare_random(struct tcfg *t, size_t nq, const char *const *hosts, size_t nhosts,
                           const char *const *paths, size_t npaths, unsigned *mismatches)
{
    struct shm_snap_hdr *h;
    size_t size;

    h = tc_compile(t, &size);
    for (size_t i = 0; i < nq; i++) {
        const char *host = hosts[rndn(nhosts)];
        const char *path = paths[rndn(npaths)];
        int m = q_methods[rndn(DSP_ARRAY_SIZE(q_methods))];
        uint32_t got = shm_route_match(h, host, strlen(host), path, strlen(path), m);
        uint32_t want = ref_match(&t->cfg, host, strlen(host), path, strlen(path), m);

        if (got != want) {
            if (*mismatches < 5) {
                fprintf(stderr, "\nmismatch host=\"%s\" path=\"%s\" method=%d: got %d want %d\n",
                        host, path, m, (int)got, (int)want);
            }
            (*mismatches)++;
        }
    }
    free(h);
}

static void test_random_vs_reference(void)
{
    unsigned mismatches = 0;

    for (int set = 0; set < 400; set++) {
        struct tcfg t;
        size_t n = 1 + rndn(60);

        tc_init(&t, 2);
        for (size_t i = 0; i < n; i++) {
            tc_route(&t, rt_hosts[rndn(DSP_ARRAY_SIZE(rt_hosts))],
                     rt_paths[rndn(DSP_ARRAY_SIZE(rt_paths))], rnd_methods(),
                     prios[rndn(DSP_ARRAY_SIZE(prios))], rndn(2));
        }
        compare_random(&t, 1000, q_hosts, DSP_ARRAY_SIZE(q_hosts), q_paths, DSP_ARRAY_SIZE(q_paths),
                       &mismatches);
        tc_free(&t);
    }
    CU_ASSERT_EQUAL(mismatches, 0);
}

/* Bigger random sets from a tiny alphabet: many hash collisions of near-identical keys, many
 * distinct path lengths per host, deep label chains. */
static void rnd_name(char *buf, size_t labels, int wildcard)
{
    static const char *const lab[] = {"a", "b", "ab", "ba", "c"};
    size_t n = 0;

    if (wildcard) {
        n += (size_t)sprintf(buf, "*.");
    }
    for (size_t i = 0; i < labels; i++) {
        n += (size_t)sprintf(buf + n, "%s%s", i ? "." : "", lab[rndn(DSP_ARRAY_SIZE(lab))]);
    }
}

static void rnd_path(char *buf)
{
    size_t n = rndn(8);

    buf[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        buf[i] = "/ab"[rndn(3)];
    }
    buf[n] = '\0';
}

static void test_random_large_vs_reference(void)
{
    char hosts[300][32], paths[200][16];
    const char *hp[300], *pp[200];
    unsigned mismatches = 0;

    for (size_t i = 0; i < 300; i++) {
        rnd_name(hosts[i], 1 + rndn(4), 0);
        hp[i] = hosts[i];
    }
    for (size_t i = 0; i < 200; i++) {
        rnd_path(paths[i]);
        pp[i] = paths[i];
    }
    for (int set = 0; set < 20; set++) {
        struct tcfg t;
        size_t n = 500 + rndn(2000);

        tc_init(&t, 3);
        for (size_t i = 0; i < n; i++) {
            char host[32], path[16];
            size_t k = rndn(20);

            if (k == 0) {
                strcpy(host, "*");
            } else {
                rnd_name(host, 1 + rndn(3), k < 8);
            }
            rnd_path(path);
            tc_route(&t, host, path, rnd_methods(), prios[rndn(DSP_ARRAY_SIZE(prios))], rndn(3));
        }
        compare_random(&t, 3000, hp, 300, pp, 200, &mismatches);
        tc_free(&t);
    }
    CU_ASSERT_EQUAL(mismatches, 0);
}

static void test_100k_routes(void)
{
    enum { N = 100000, NAPI = 2000 };
    struct tcfg t;
    struct shm_snap_hdr *h;
    size_t size;
    char host[64], path[64];
    double t0, t1, best = 1e9;
    volatile uint32_t sink = 0;
    unsigned bad = 0;

    tc_init(&t, 100);
    for (int i = 0; i < N; i++) {
        snprintf(host, sizeof(host), "h%d.example.com", i);
        tc_route(&t, host, "/", 0, 0, (size_t)i % 100);
    }
    for (int i = 0; i < NAPI; i++) {
        snprintf(host, sizeof(host), "h%d.example.com", i);
        snprintf(path, sizeof(path), "/api/v%d/", i % 7);
        tc_route(&t, host, path, i % 2 ? M(HTTP_GET) : 0, 0, 0);
    }
    tc_route(&t, "*.example.com", "/", 0, 0, 1); /* N + NAPI */
    tc_route(&t, "*", "/", 0, 0, 2);             /* N + NAPI + 1 */

    for (int rep = 0; rep < 3; rep++) {
        t0 = now_ms();
        h = ms_compile(&t.cfg, 1, &size);
        t1 = now_ms();
        best = t1 - t0 < best ? t1 - t0 : best;
        if (rep < 2) {
            free(h);
        }
    }
    CU_ASSERT_EQUAL_FATAL(shm_snap_check(h, size), 0);
    fprintf(stderr, "\n    compile %d routes: %.1f ms (best of 3), snapshot %zu bytes\n",
            N + NAPI + 2, best, size);
    /* Generous so a sanitizer build passes; a release build takes a small fraction of this. */
    CU_ASSERT(best < 1000.0);

    for (int k = 0; k < 20000; k++) {
        int i = (int)rndn(N);
        uint32_t want = (uint32_t)i;
        int m = rndn(2) ? HTTP_GET : HTTP_POST;

        snprintf(host, sizeof(host), "H%d.Example.com:443", i);
        if (i < NAPI) {
            snprintf(path, sizeof(path), "/api/v%d/x", i % 7);
            if (i % 2 == 0 || m == HTTP_GET) {
                want = (uint32_t)(N + i);
            }
        } else {
            strcpy(path, "/api/v1/x");
        }
        if (q(h, host, path, m) != want) {
            bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(q(h, "nope.example.com", "/", HTTP_GET), N + NAPI);
    CU_ASSERT_EQUAL(q(h, "a.h5.example.com", "/", HTTP_GET), N + NAPI);
    CU_ASSERT_EQUAL(q(h, "example.com", "/", HTTP_GET), N + NAPI + 1);
    CU_ASSERT_EQUAL(q(h, "h100000.example.com", "/", HTTP_GET), N + NAPI);

    /* Cost per lookup: a hit on an exact host, then one falling through to "*". */
    t0 = now_ms();
    for (int k = 0; k < 1000000; k++) {
        sink += shm_route_match(h, "h77777.example.com", 18, "/api/v3/items/1", 15, HTTP_GET);
    }
    t1 = now_ms();
    fprintf(stderr, "    lookup (exact hit, 3 labels): %.0f ns\n", (t1 - t0) * 1e6 / 1000000);
    t0 = now_ms();
    for (int k = 0; k < 1000000; k++) {
        sink += shm_route_match(h, "www.unknown.org", 15, "/index.html", 11, HTTP_GET);
    }
    t1 = now_ms();
    fprintf(stderr, "    lookup (miss, falls to \"*\"): %.0f ns\n", (t1 - t0) * 1e6 / 1000000);
    (void)sink;
    free(h);
    tc_free(&t);
}

/* 100k routes under one host group with many distinct paths and priorities. */
static void test_100k_paths(void)
{
    enum { N = 100000 };
    struct tcfg t;
    struct shm_snap_hdr *h;
    size_t size;
    char path[64], req[80];
    double t0, t1, best = 1e9;
    unsigned bad = 0;

    tc_init(&t, 10);
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof(path), "/svc%d/", i);
        tc_route(&t, i % 2 ? "*" : "*.do", path, 0, i % 3 == 0 ? 1 : 0, (size_t)i % 10);
    }
    for (int rep = 0; rep < 3; rep++) {
        t0 = now_ms();
        h = ms_compile(&t.cfg, 2, &size);
        t1 = now_ms();
        best = t1 - t0 < best ? t1 - t0 : best;
        if (rep < 2) {
            free(h);
        }
    }
    CU_ASSERT_EQUAL_FATAL(shm_snap_check(h, size), 0);
    fprintf(stderr, "\n    compile %d routes, 2 host groups: %.1f ms (best of 3), %zu bytes\n", N,
            best, size);
    CU_ASSERT(best < 1000.0);
    for (int k = 0; k < 20000; k++) {
        int i = (int)rndn(N);
        const char *host = rndn(2) ? "x.do" : "other";
        uint32_t want;

        snprintf(req, sizeof(req), "/svc%d/items", i);
        /* Only route i's path is a prefix; "other" only matches the "*" (odd) routes. */
        want = host[0] == 'x' || i % 2 ? (uint32_t)i : SHM_NONE;
        if (k < 50) {
            CU_ASSERT_EQUAL(ref_match(&t.cfg, host, strlen(host), req, strlen(req), HTTP_GET),
                            want);
        }
        if (q(h, host, req, HTTP_GET) != want) {
            bad++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    free(h);
    tc_free(&t);
}

UNIT_SUITE(shm_route, {"normalize", test_normalize}, {"host_kinds", test_host_kinds},
           {"wildcard_not_apex", test_wildcard_not_apex}, {"paths", test_paths},
           {"methods", test_methods}, {"priority_and_ties", test_priority_and_ties},
           {"empty_host_and_none", test_empty_host_and_none}, {"roundtrip", test_roundtrip},
           {"check_corrupt", test_check_corrupt}, {"check_fuzz", test_check_fuzz},
           {"random_vs_reference", test_random_vs_reference},
           {"random_large_vs_reference", test_random_large_vs_reference},
           {"100k_routes", test_100k_routes}, {"100k_paths", test_100k_paths})
