/* Unit tests for admin/: the JSON reader, every answer of the line protocol rendered from a
 * real compiled snapshot with made-up runtime state (parsed back and checked field by field),
 * hostile command lines, backend control, and the Prometheus exposition's syntax and numbers. */
#include "tests/unit/unit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin/adm_buf.h"
#include "admin/adm_cmd.h"
#include "admin/adm_json.h"
#include "admin/adm_render.h"
#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "master/ms_rt.h"
#include "shm/shm.h"
#include "shm/shm_snap.h"
#include "shm/shm_stats.h"

static const char conf_text[] =
    "workers = 2;\n"
    "log = { error = \"stderr\"; access = \"off\"; };\n"
    "listeners = ( { address = \"127.0.0.1:18999\"; } );\n"
    "services = (\n"
    "  { name = \"web\"; balance = \"least-conn\"; backends = [ \"127.0.0.1:9001\", "
    "\"127.0.0.1:9002\" ]; },\n"
    "  { name = \"q.x-1\"; backends = [ \"127.0.0.1:9003\" ]; },\n"
    "  { name = \"idle\"; backends = []; }\n"
    ");\n"
    "routes = (\n"
    "  { host = \"a.do\"; service = \"web\"; },\n"
    "  { host = \"a.do\"; path = \"/api/\"; methods = [\"GET\", \"POST\"]; priority = 3; "
    "service = \"web\"; },\n"
    "  { host = \"*.b.do\"; service = \"web\"; },\n"
    "  { host = \"*\"; service = \"q.x-1\"; }\n"
    ");\n";

static struct {
    struct ms_config *cfg;
    void *snap;
    struct shm_rt *rt;
    struct shm_ctl *ctl;
    struct ms_rt_reg *reg;
    int reloads;
    int reload_fail;
    const struct adm_fleet *fleet;
} T;

static int view(struct adm_view *v, void *arg)
{
    (void)arg;
    memset(v, 0, sizeof(*v));
    v->snap = T.snap;
    v->rt = T.rt;
    v->ctl = T.ctl;
    v->nworkers = 2;
    v->now_ms = 100000;
    v->now_s = 2000;
    v->started_at = 1970;
    v->loaded_at = 1990;
    v->memory_mb = 12.5;
    v->fleet = T.fleet;
    return 0;
}

static int reload(uint64_t *gen, char **errs, char **warns, char **changes, void *arg)
{
    (void)arg;
    T.reloads++;
    *warns = strdup("/x/d.conf:3: warning one\n\nwarning \"two\"\n");
    if (T.reload_fail) {
        *errs = strdup("/x/d.conf:7: unknown service \"nope\"\n/x/d.conf:9: bad\n");
        return -1;
    }
    *gen = 42;
    *changes = strdup("listener 127.0.0.1:8081 added\nworkers 2 -> 4\n");
    return 0;
}

static void check_warnings(const struct adm_jval *j)
{
    const struct adm_jval *w = adm_json_get(j, "warnings");

    CU_ASSERT_FATAL(w != NULL && w->type == ADM_J_ARR && w->n == 2);
    CU_ASSERT_STRING_EQUAL(w->items[0].str, "/x/d.conf:3: warning one");
    CU_ASSERT_STRING_EQUAL(w->items[1].str, "warning \"two\"");
}

static const struct adm_ops *ops(void)
{
    static struct adm_ops o;

    o.view = view;
    o.reload = reload;
    o.rt = T.rt;
    return &o;
}

static void setup(void)
{
    char path[] = "/tmp/dsp-unit-adm-XXXXXX";
    char *errs = NULL;
    size_t size;
    int fd;

    if (T.snap != NULL) {
        return;
    }
    fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, conf_text, sizeof(conf_text) - 1) == (ssize_t)sizeof(conf_text) - 1);
    close(fd);
    if (ms_config_load(path, 0, &T.cfg, &errs) != 0) {
        fprintf(stderr, "config: %s\n", errs);
    }
    unlink(path);
    CU_ASSERT_FATAL(T.cfg != NULL);
    T.snap = ms_compile(T.cfg, 1, &size);
    T.rt = shm_rt_create();
    T.ctl = shm_ctl_create(1);
    T.reg = ms_rt_reg_new();
    CU_ASSERT_FATAL(T.rt != NULL && T.ctl != NULL);
    CU_ASSERT_FATAL(ms_rt_assign(T.reg, T.rt, T.snap, 1) == 0);
    T.ctl->gen = 1;
    T.ctl->nworkers = 2;
    for (int i = 0; i < 2; i++) {
        T.ctl->workers[i].pid = 100 + i;
        T.ctl->workers[i].gen_current = 1;
        T.ctl->workers[i].gen_oldest = 1;
        T.ctl->workers[i].started_ms = 40000;
        T.ctl->workers[i].heartbeat_ms = 99990;
        T.ctl->workers[i].requests = 7;
    }
    T.ctl->workers[1].restarts = 3;
    T.ctl->reload_failures = 2;
}

static const struct shm_service *svc_named(const char *name)
{
    const struct shm_snap_hdr *s = T.snap;

    for (uint32_t i = 0; i < s->nservices; i++) {
        if (strcmp(shm_s(s, shm_services(s)[i].name), name) == 0) {
            return &shm_services(s)[i];
        }
    }
    return NULL;
}

static const struct shm_backend *be_of(const struct shm_service *sv, uint32_t j)
{
    return &shm_backends(T.snap)[sv->backends_first + j];
}

/* Run <cmd>, parse the answer, check "ok". The caller frees. */
static struct adm_jval *run(const char *cmd, int want_ok)
{
    struct adm_buf b = {0};
    struct adm_jval *j;
    char err[128];
    const struct adm_jval *ok;

    adm_cmd_exec(&b, cmd, strlen(cmd), ops());
    CU_ASSERT_FATAL(b.p != NULL);
    CU_ASSERT(memchr(b.p, '\n', b.len) == NULL);
    j = adm_json_parse(b.p, b.len, err, sizeof(err));
    if (j == NULL) {
        fprintf(stderr, "unparsable answer to %s: %s (%s)\n", cmd, b.p, err);
    }
    CU_ASSERT_FATAL(j != NULL);
    ok = adm_json_get(j, "ok");
    CU_ASSERT_FATAL(ok != NULL && ok->type == ADM_J_BOOL);
    CU_ASSERT_EQUAL(ok->boolean, want_ok);
    if (!want_ok) {
        CU_ASSERT(adm_json_str(j, "error")[0] != '\0');
    }
    adm_buf_dispose(&b);
    return j;
}

/* ---- JSON reader ---------------------------------------------------------------------------- */
static void test_json_reader(void)
{
    char err[128];
    struct adm_jval *j;
    static const char *bad[] = {"",          "{",          "{\"a\":}", "[1,]",    "\"abc",
                                "{\"a\" 1}", "tru",        "[1] x",    "\"\\q\"", "\"\\u12\"",
                                "-",         "{\"a\":1,}", "\"a\nb\""};

    j = adm_json_parse(" {\"a\":[1,2.5,-3e2],\"b\":{\"c\":\"x\\\"y\\u00e9\\n\"},\"t\":true,"
                       "\"f\":false,\"n\":null} ",
                       strlen(" {\"a\":[1,2.5,-3e2],\"b\":{\"c\":\"x\\\"y\\u00e9\\n\"},\"t\":true,"
                              "\"f\":false,\"n\":null} "),
                       err, sizeof(err));
    CU_ASSERT_FATAL(j != NULL);
    CU_ASSERT_EQUAL(adm_json_get(j, "a")->n, 3);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_get(j, "a")->items[2].num, -300.0, 1e-9);
    CU_ASSERT_STRING_EQUAL(adm_json_str(adm_json_get(j, "b"), "c"), "x\"y\xe9\n");
    CU_ASSERT_EQUAL(adm_json_get(j, "t")->boolean, 1);
    CU_ASSERT_EQUAL(adm_json_get(j, "n")->type, ADM_J_NULL);
    CU_ASSERT_PTR_NULL(adm_json_get(j, "zz"));
    adm_json_free(j);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        j = adm_json_parse(bad[i], strlen(bad[i]), err, sizeof(err));
        CU_ASSERT_PTR_NULL(j);
        adm_json_free(j);
    }
    /* Deep nesting is refused, not a stack overflow. */
    {
        char deep[4001];
        memset(deep, '[', 4000);
        deep[4000] = '\0';
        CU_ASSERT_PTR_NULL(adm_json_parse(deep, 4000, err, sizeof(err)));
    }
}

/* ---- commands ------------------------------------------------------------------------------- */
static void test_health(void)
{
    struct adm_jval *j;
    const struct adm_jval *w, *c;

    setup();
    j = run("show health", 1);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "status"), "healthy");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "uptime_s", -1), 30, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "memory_mb", -1), 12.5, 1e-9);
    w = adm_json_get(j, "workers");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(w, "configured", -1), 2, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(w, "alive", -1), 2, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(w, "restarts", -1), 3, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "instances", -1), 3, 1e-9);
    c = adm_json_get(j, "config");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(c, "generation", -1), 1, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(c, "loaded_at", -1), 1990, 1e-9);
    CU_ASSERT_STRING_EQUAL(adm_json_str(c, "source"), "file");
    adm_json_free(j);

    /* A dead worker, then every backend of a service down: degraded, with the reason. */
    T.ctl->workers[1].pid = 0;
    j = run("show health", 1);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "status"), "degraded");
    CU_ASSERT(strstr(adm_json_str(j, "reason"), "worker 1") != NULL);
    adm_json_free(j);
    T.ctl->workers[1].pid = 101;
    {
        const struct shm_service *sv = svc_named("web");
        T.rt->backends[be_of(sv, 0)->rt_slot].state = SHM_BE_DOWN;
        j = run("show health", 1);
        CU_ASSERT_STRING_EQUAL(adm_json_str(j, "status"), "healthy"); /* one is still up */
        adm_json_free(j);
        T.rt->backends[be_of(sv, 1)->rt_slot].state = SHM_BE_DISABLED;
        j = run("show health", 1);
        CU_ASSERT_STRING_EQUAL(adm_json_str(j, "status"), "degraded");
        CU_ASSERT(strstr(adm_json_str(j, "reason"), "web") != NULL);
        adm_json_free(j);
        T.rt->backends[be_of(sv, 0)->rt_slot].state = SHM_BE_UP;
        T.rt->backends[be_of(sv, 1)->rt_slot].state = SHM_BE_UP;
    }
    /* A worker still on an old generation long after the reload. */
    T.ctl->workers[0].gen_current = 0;
    j = run("show health", 1);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "status"), "degraded");
    adm_json_free(j);
    T.ctl->workers[0].gen_current = 1;
}

static void test_instances_and_stats(void)
{
    const struct shm_service *web, *q;
    struct adm_jval *j;
    const struct adm_jval *arr, *s0, *b0, *lat, *hosts;

    setup();
    web = svc_named("web");
    q = svc_named("q.x-1");
    CU_ASSERT_FATAL(web != NULL && q != NULL);
    for (int i = 0; i < 90; i++) {
        shm_stats_record(T.rt, (unsigned)(i % 2), web->rt_slot, be_of(web, 0)->rt_slot, 200, 10,
                         99500);
    }
    for (int i = 0; i < 10; i++) {
        shm_stats_record(T.rt, 0, web->rt_slot, be_of(web, 1)->rt_slot, 502, 100, 99500);
    }
    shm_stats_record(T.rt, 1, q->rt_slot, SHM_NONE, 404, 0, 99500);
    T.rt->backends[be_of(web, 0)->rt_slot].requests = 90;
    T.rt->backends[be_of(web, 1)->rt_slot].errors = 10;
    T.rt->backends[be_of(web, 1)->rt_slot].circuit = SHM_CIRCUIT_OPEN;
    T.rt->backends[be_of(web, 1)->rt_slot].consecutive_failures = 5;
    T.rt->backends[be_of(web, 0)->rt_slot].active = 2;
    T.rt->services[web->rt_slot].errors = 10;

    j = run("show instances", 1);
    arr = adm_json_get(j, "instances");
    CU_ASSERT_FATAL(arr != NULL && arr->type == ADM_J_ARR && arr->n == 3);
    s0 = &arr->items[0];
    CU_ASSERT_STRING_EQUAL(adm_json_str(s0, "name"), "web");
    CU_ASSERT_STRING_EQUAL(adm_json_str(s0, "balance"), "least-conn");
    hosts = adm_json_get(s0, "hosts");
    CU_ASSERT_FATAL(hosts != NULL && hosts->n == 2); /* a.do once, *.b.do */
    CU_ASSERT_STRING_EQUAL(hosts->items[0].str, "*.b.do");
    CU_ASSERT_STRING_EQUAL(hosts->items[1].str, "a.do");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(s0, "requests", -1), 100, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(s0, "errors", -1), 10, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(s0, "rps", -1), 100.0 / 30, 0.01);
    lat = adm_json_get(s0, "latency_ms");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(lat, "p50", -1), 10, 1e-9);
    CU_ASSERT(adm_json_num(lat, "p95", -1) >= 96 && adm_json_num(lat, "p95", -1) <= 103);
    CU_ASSERT(adm_json_num(lat, "p99", -1) >= 96 && adm_json_num(lat, "p99", -1) <= 103);
    b0 = adm_json_get(s0, "backends");
    CU_ASSERT_FATAL(b0 != NULL && b0->n == 2);
    CU_ASSERT_STRING_EQUAL(adm_json_str(&b0->items[0], "address"), "127.0.0.1:9001");
    CU_ASSERT_STRING_EQUAL(adm_json_str(&b0->items[0], "state"), "up");
    CU_ASSERT_STRING_EQUAL(adm_json_str(&b0->items[0], "circuit"), "closed");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&b0->items[0], "active_connections", -1), 2, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&b0->items[0], "requests", -1), 90, 1e-9);
    CU_ASSERT_STRING_EQUAL(adm_json_str(&b0->items[1], "circuit"), "open");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&b0->items[1], "consecutive_failures", -1), 5, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&b0->items[1], "errors", -1), 10, 1e-9);
    CU_ASSERT(adm_json_get(&b0->items[1], "latency_ms") != NULL);
    CU_ASSERT_STRING_EQUAL(adm_json_str(&arr->items[1], "name"), "q.x-1");
    CU_ASSERT_EQUAL(adm_json_get(&arr->items[2], "backends")->n, 0);
    adm_json_free(j);

    j = run("show stats", 1);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "requests", -1), 101, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(adm_json_get(j, "status"), "2xx", -1), 90, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(adm_json_get(j, "status"), "4xx", -1), 1, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(adm_json_get(j, "status"), "5xx", -1), 10, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "reload_failures", -1), 2, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "active_connections", -1), 2, 1e-9);
    CU_ASSERT_EQUAL(adm_json_get(j, "services")->n, 3);
    adm_json_free(j);
}

static void test_routes_workers_certs(void)
{
    struct adm_jval *j;
    const struct adm_jval *arr, *m;

    setup();
    j = run("show routes", 1);
    arr = adm_json_get(j, "routes");
    CU_ASSERT_FATAL(arr != NULL && arr->n == 4);
    CU_ASSERT_STRING_EQUAL(adm_json_str(&arr->items[1], "path"), "/api/");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&arr->items[1], "priority", -1), 3, 1e-9);
    m = adm_json_get(&arr->items[1], "methods");
    CU_ASSERT_FATAL(m != NULL && m->n == 2);
    CU_ASSERT_STRING_EQUAL(m->items[0].str, "GET");
    CU_ASSERT_STRING_EQUAL(m->items[1].str, "POST");
    CU_ASSERT_EQUAL(adm_json_get(&arr->items[0], "methods")->n, 0);
    CU_ASSERT_STRING_EQUAL(adm_json_str(&arr->items[3], "service"), "q.x-1");
    adm_json_free(j);

    j = run("show workers", 1);
    arr = adm_json_get(j, "workers");
    CU_ASSERT_FATAL(arr != NULL && arr->n == 2);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&arr->items[1], "pid", -1), 101, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&arr->items[1], "restarts", -1), 3, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&arr->items[0], "uptime_s", -1), 60, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&arr->items[0], "heartbeat_age_ms", -1), 10, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(&arr->items[0], "requests", -1), 7, 1e-9);
    adm_json_free(j);

    j = run("show certs", 1);
    arr = adm_json_get(j, "certs");
    CU_ASSERT_FATAL(arr != NULL && arr->type == ADM_J_ARR);
    CU_ASSERT_EQUAL(arr->n, ((const struct shm_snap_hdr *)T.snap)->ncerts);
    adm_json_free(j);

    j = run("help", 1);
    CU_ASSERT_EQUAL(adm_json_get(j, "commands")->n, 13);
    adm_json_free(j);
}

static void test_backend_control_and_reload(void)
{
    const struct shm_service *web;
    uint32_t slot;
    struct adm_jval *j;

    setup();
    web = svc_named("web");
    slot = be_of(web, 1)->rt_slot;
    j = run("disable backend web 127.0.0.1:9002", 1);
    CU_ASSERT_EQUAL(T.rt->backends[slot].state, SHM_BE_DISABLED);
    adm_json_free(j);
    j = run("show instances", 1);
    CU_ASSERT_STRING_EQUAL(
        adm_json_str(&adm_json_get(&adm_json_get(j, "instances")->items[0], "backends")->items[1],
                     "state"),
        "disabled");
    adm_json_free(j);
    j = run("enable backend web 127.0.0.1:9002", 1);
    CU_ASSERT_EQUAL(T.rt->backends[slot].state, SHM_BE_UP);
    adm_json_free(j);
    T.rt->backends[slot].circuit = SHM_CIRCUIT_OPEN;
    T.rt->backends[slot].consecutive_failures = 9;
    j = run("reset circuit web 127.0.0.1:9002", 1);
    CU_ASSERT_EQUAL(T.rt->backends[slot].circuit, SHM_CIRCUIT_CLOSED);
    CU_ASSERT_EQUAL(T.rt->backends[slot].consecutive_failures, 0);
    adm_json_free(j);
    adm_json_free(run("disable backend nope 127.0.0.1:9002", 0));
    adm_json_free(run("disable backend web 127.0.0.1:1", 0));
    adm_json_free(run("disable backend web", 0));
    adm_json_free(run("enable backend web 127.0.0.1:9002 extra", 0));
    adm_json_free(run("reset circuit", 0));

    j = run("reload", 1);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "generation", -1), 42, 1e-9);
    check_warnings(j);
    {
        const struct adm_jval *ch = adm_json_get(j, "changes");
        CU_ASSERT_FATAL(ch != NULL && ch->type == ADM_J_ARR && ch->n == 2);
        CU_ASSERT_STRING_EQUAL(ch->items[0].str, "listener 127.0.0.1:8081 added");
        CU_ASSERT_STRING_EQUAL(ch->items[1].str, "workers 2 -> 4");
    }
    adm_json_free(j);
    T.reload_fail = 1;
    j = run("reload", 0);
    CU_ASSERT(strstr(adm_json_str(j, "error"), "/x/d.conf:7: unknown service") != NULL);
    CU_ASSERT(strstr(adm_json_str(j, "error"), "\n/x/d.conf:9: bad") != NULL);
    {
        /* One array entry per error line, and the warnings beside them. */
        const struct adm_jval *e = adm_json_get(j, "errors");
        CU_ASSERT_FATAL(e != NULL && e->type == ADM_J_ARR && e->n == 2);
        CU_ASSERT_STRING_EQUAL(e->items[0].str, "/x/d.conf:7: unknown service \"nope\"");
        CU_ASSERT_STRING_EQUAL(e->items[1].str, "/x/d.conf:9: bad");
    }
    check_warnings(j);
    adm_json_free(j);
    T.reload_fail = 0;
    adm_json_free(run("reload now", 0));
}

static void test_hostile_lines(void)
{
    static const char *bad[] = {"",          "   ",           "bogus",      "show",
                                "show nope", "show health x", "help me",    "SHOW",
                                "\x01\x02",  "show\x7f",      "sh\xc3\xa9", "a b c d e f g h i j"};
    char *big;
    struct adm_buf b = {0};

    setup();
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        adm_json_free(run(bad[i], 0));
    }
    /* Case and surrounding blanks do not matter; a CR (telnet) is dropped. */
    adm_json_free(run("  SHOW   Health \r", 1));
    adm_json_free(run("show\thealth", 1));
    /* NUL bytes in the middle of a line. */
    adm_cmd_exec(&b, "show\0health", 11, ops());
    CU_ASSERT(strstr(b.p, "\"ok\":false") != NULL);
    adm_buf_dispose(&b);
    /* Over-long lines and words. */
    big = malloc(1 << 20);
    memset(big, 'a', 1 << 20);
    adm_cmd_exec(&b, big, 1 << 20, ops());
    CU_ASSERT(strstr(b.p, "too long") != NULL);
    adm_buf_reset(&b);
    adm_cmd_exec(&b, big, 4000, ops());
    CU_ASSERT(strstr(b.p, "\"ok\":false") != NULL);
    adm_buf_dispose(&b);
    free(big);
}

/* The Prometheus text: every line a comment or "name{labels} value", histograms cumulative. */
static void test_metrics(void)
{
    struct adm_view v;
    struct adm_buf b = {0};
    char *save = NULL, *line;
    int samples = 0, types = 0;
    unsigned long long last_bucket = 0;
    int in_hist = 0;

    setup();
    view(&v, NULL);
    adm_render_metrics(&b, &v);
    CU_ASSERT_FATAL(b.p != NULL && !b.overflow);
    CU_ASSERT(b.p[b.len - 1] == '\n');
    CU_ASSERT(strstr(b.p, "dispatcher_requests_total{service=\"web\",code=\"2xx\"} 90\n") != NULL);
    CU_ASSERT(strstr(b.p, "dispatcher_requests_total{service=\"q.x-1\",code=\"4xx\"} 1\n") != NULL);
    CU_ASSERT(strstr(b.p, "dispatcher_request_duration_seconds_bucket{service=\"web\",le=\"0.01\"}"
                          " 90\n") != NULL);
    CU_ASSERT(strstr(b.p, "dispatcher_request_duration_seconds_bucket{service=\"web\",le=\"+Inf\"}"
                          " 100\n") != NULL);
    CU_ASSERT(strstr(b.p, "dispatcher_request_duration_seconds_count{service=\"web\"} 100\n") !=
              NULL);
    CU_ASSERT(strstr(b.p, "dispatcher_request_duration_seconds_sum{service=\"web\"} 1.900\n") !=
              NULL);
    CU_ASSERT(strstr(b.p, "dispatcher_worker_restarts_total 3\n") != NULL);
    CU_ASSERT(strstr(b.p, "dispatcher_config_generation 1\n") != NULL);
    CU_ASSERT(strstr(b.p, "dispatcher_config_reload_failures_total 2\n") != NULL);
    CU_ASSERT(
        strstr(b.p, "dispatcher_backend_up{service=\"web\",backend=\"127.0.0.1:9001\"} 1\n") !=
        NULL);
    for (line = strtok_r(b.p, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') {
            CU_ASSERT(strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0);
            types += strncmp(line, "# TYPE ", 7) == 0;
            continue;
        }
        {
            char *sp = strrchr(line, ' ');
            char *end;
            CU_ASSERT_FATAL(sp != NULL);
            strtod(sp + 1, &end);
            CU_ASSERT(*end == '\0');
            CU_ASSERT((line[0] >= 'a' && line[0] <= 'z') || line[0] == '_');
            if (strstr(line, "_bucket{") != NULL) {
                unsigned long long vv = strtoull(sp + 1, NULL, 10);
                if (in_hist) {
                    CU_ASSERT(vv >= last_bucket);
                }
                last_bucket = vv;
                in_hist = strstr(line, "le=\"+Inf\"") == NULL;
            }
            samples++;
        }
    }
    CU_ASSERT(samples > 50);
    CU_ASSERT(types >= 15);
    adm_buf_dispose(&b);
}

static void test_buf_limits(void)
{
    struct adm_buf b = {0};

    adm_buf_adds(&b, "abc");
    adm_buf_addf(&b, "%d-%s", 12, "x");
    CU_ASSERT_STRING_EQUAL(b.p, "abc12-x");
    adm_buf_consume(&b, 2);
    CU_ASSERT_STRING_EQUAL(b.p, "c12-x");
    adm_buf_reset(&b);
    adm_buf_jstr(&b, "a\"\\\n\x01\xff", 6);
    CU_ASSERT_STRING_EQUAL(b.p, "\"a\\\"\\\\\\u000a\\u0001\\u00ff\"");
    adm_buf_reset(&b);
    adm_buf_f1(&b, 1.25);
    adm_buf_f1(&b, NAN);
    CU_ASSERT_STRING_EQUAL(b.p, "1.20.0");
    /* Past the limit: overflow is sticky and nothing more is appended. */
    adm_buf_add(&b, "x", ADM_BUF_LIMIT);
    CU_ASSERT(b.overflow);
    adm_buf_adds(&b, "more");
    CU_ASSERT_STRING_EQUAL(b.p, "1.20.0");
    adm_buf_dispose(&b);
}

/* show fleet: flags, nulls for numbers that are not, hostile strings escaped, no Redis. */
static void test_fleet(void)
{
    static const struct adm_fleet_node nodes[] = {
        {.name = "a",
         .status = "ok",
         .error = "",
         .source_digest = "d1",
         .version = 7,
         .generation = 3,
         .applied_at = 1990,
         .updated_at = 1995,
         .pid = 10},
        {.name = "b",
         .status = "rejected",
         .error = "redis x: unknown service \"q\"\n\x01",
         .source_digest = "d0",
         .version = 6,
         .generation = 9,
         .applied_at = 1900,
         .updated_at = 1999,
         .pid = 11},
        {.name = "c",
         .status = "\xff\"",
         .error = "",
         .source_digest = "",
         .version = -1,
         .generation = -1,
         .applied_at = -1,
         .updated_at = 2000 - ADM_FLEET_SILENT_S - 1,
         .pid = -1},
    };
    struct adm_fleet f = {.environment = "production",
                          .self = "a",
                          .read_at = 1999,
                          .version = 7,
                          .nodes = nodes,
                          .n = 3};
    const struct adm_jval *arr;
    struct adm_jval *j;
    char flags[64];

    CU_ASSERT_EQUAL(adm_fleet_flags(&f, &nodes[0], 2000, flags, sizeof(flags)), 0);
    CU_ASSERT_STRING_EQUAL(flags, "");
    CU_ASSERT_EQUAL(adm_fleet_flags(&f, &nodes[1], 2000, flags, sizeof(flags)), 2);
    CU_ASSERT_STRING_EQUAL(flags, "rejected,behind");
    CU_ASSERT_EQUAL(adm_fleet_flags(&f, &nodes[2], 2000, flags, sizeof(flags)), 3);
    CU_ASSERT_STRING_EQUAL(flags, "rejected,behind,silent");
    CU_ASSERT_EQUAL(adm_fleet_flags(&f, &nodes[2], 2000, flags, 5), 3); /* truncated, no crash */
    f.version = -1; /* the namespace has no version: nobody is behind */
    CU_ASSERT_EQUAL(adm_fleet_flags(&f, &nodes[1], 2000, flags, sizeof(flags)), 1);
    f.version = 7;

    T.fleet = &f;
    j = run("show fleet", 1);
    CU_ASSERT_STRING_EQUAL(adm_json_str(j, "node"), "a");
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "flagged", -1), 2, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(adm_json_num(j, "version", -1), 7, 1e-9);
    arr = adm_json_get(j, "nodes");
    CU_ASSERT_FATAL(arr != NULL && arr->type == ADM_J_ARR && arr->n == 3);
    CU_ASSERT_STRING_EQUAL(adm_json_str(&arr->items[1], "error"),
                           "redis x: unknown service \"q\"\n\x01");
    CU_ASSERT_STRING_EQUAL(adm_json_str(&arr->items[1], "flags"), "rejected,behind");
    CU_ASSERT_EQUAL(adm_json_get(&arr->items[2], "version")->type, ADM_J_NULL);
    CU_ASSERT_EQUAL(adm_json_get(&arr->items[0], "self")->boolean, 1);
    CU_ASSERT_EQUAL(adm_json_get(&arr->items[1], "self")->boolean, 0);
    adm_json_free(j);
    {
        struct adm_buf b = {0};
        struct adm_view v;

        view(&v, NULL);
        adm_render_metrics(&b, &v);
        CU_ASSERT_FATAL(b.p != NULL);
        CU_ASSERT(strstr(b.p, "\ndispatcher_fleet_nodes 3\n") != NULL);
        CU_ASSERT(strstr(b.p, "\ndispatcher_fleet_nodes_flagged 2\n") != NULL);
        adm_buf_dispose(&b);
    }
    f.n = 0;
    j = run("show fleet", 1);
    CU_ASSERT(adm_json_get(j, "nodes")->n == 0);
    adm_json_free(j);
    T.fleet = NULL;
    j = run("show fleet", 0);
    adm_json_free(j);
}

UNIT_SUITE(adm_render, {"json_reader", test_json_reader}, {"buf_limits", test_buf_limits},
           {"health", test_health}, {"instances_and_stats", test_instances_and_stats},
           {"routes_workers_certs", test_routes_workers_certs},
           {"backend_control_and_reload", test_backend_control_and_reload},
           {"hostile_lines", test_hostile_lines}, {"metrics", test_metrics}, {"fleet", test_fleet})
