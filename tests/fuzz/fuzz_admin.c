/* dispatcher: libFuzzer target for the admin line protocol (admin/adm_cmd.c): each input line is
 * one command as read from admin.socket, run against a real compiled snapshot with runtime
 * state (so "show ..." renders and "disable backend S A" really flips state); the last line is
 * also tried as an admin HTTP API resource name.
 * Invariants beyond "no crash, no leak": every answer is exactly one JSON object (parsed back
 * with the reader dispatcherctl uses) with a boolean "ok", on one line. */
#include <stdint.h>
#include <string.h>

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
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct {
    void *snap;
    struct shm_rt *rt;
    struct shm_ctl *ctl;
    struct ms_rt_reg *reg;
    unsigned reload_turn;
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
    return 0;
}

/* Reload answers in turn: errors and warnings, success with warnings (blank lines, a control
 * byte) and changes, plain success, and a failure without a text. */
static int reload(uint64_t *gen, char **errs, char **warns, char **changes, void *arg)
{
    (void)arg;
    switch (T.reload_turn++ % 4) {
    case 0:
        *errs = strdup("/x/d.conf:7: unknown service \"n\\o\"\n/x/d.conf:9: bad \x01\n");
        *warns = strdup("/x/d.conf:3: key \"x\" is deprecated\n");
        return -1;
    case 1:
        *warns = strdup("\nbackend 10.0.0.1:80 \x7f resolves late\n\n\n");
        *changes = strdup("listener 127.0.0.1:8081 added\n\nworkers 2 -> \"4\"\n");
        break;
    case 3:
        return -1;
    }
    *gen = 42;
    return 0;
}

static void setup(void)
{
    static const char conf[] =
        "workers = 2;\n"
        "log = { error = \"stderr\"; access = \"off\"; };\n"
        "listeners = ( { address = \"127.0.0.1:18996\"; } );\n"
        "services = (\n"
        "  { name = \"web\"; balance = \"least-conn\"; backends = [ \"127.0.0.1:9001\", "
        "\"127.0.0.1:9002\" ]; circuit_breaker = { failures = 3; }; },\n"
        "  { name = \"q.x-1\"; backends = [ \"[::1]:9003\" ]; },\n"
        "  { name = \"idle\"; backends = []; }\n"
        ");\n"
        "routes = (\n"
        "  { host = \"a.do\"; service = \"web\"; },\n"
        "  { host = \"a.do\"; path = \"/api/\"; methods = [\"GET\", \"POST\"]; priority = 3; "
        "service = \"web\"; },\n"
        "  { host = \"*\"; service = \"q.x-1\"; }\n"
        ");\n";
    struct ms_config *cfg = NULL;
    char *errs = NULL;
    size_t size;

    fuzz_quiet();
    if (fuzz_config_load(conf, sizeof(conf) - 1, &cfg, &errs) != 0) {
        fprintf(stderr, "fuzz_admin: config: %s\n", errs);
        abort();
    }
    T.snap = ms_compile(cfg, 1, &size);
    ms_config_free(cfg);
    T.rt = shm_rt_create();
    T.ctl = shm_ctl_create(1);
    T.reg = ms_rt_reg_new();
    FUZZ_CHECK(T.rt != NULL && T.ctl != NULL && T.reg != NULL);
    FUZZ_CHECK(ms_rt_assign(T.reg, T.rt, T.snap, 1) == 0);
    T.ctl->gen = 1;
    T.ctl->nworkers = 2;
    for (int i = 0; i < 2; i++) {
        T.ctl->workers[i].pid = 100 + i;
        T.ctl->workers[i].gen_current = 1;
        T.ctl->workers[i].gen_oldest = 1;
        T.ctl->workers[i].started_ms = 40000;
        T.ctl->workers[i].heartbeat_ms = 99990;
    }
}

static void check_answer(const struct adm_buf *b)
{
    char err[128];
    struct adm_jval *j;
    const struct adm_jval *ok;

    FUZZ_CHECK(!b->overflow && b->p != NULL && b->len > 0);
    FUZZ_CHECK(strlen(b->p) == b->len);
    FUZZ_CHECK(memchr(b->p, '\n', b->len) == NULL);
    j = adm_json_parse(b->p, b->len, err, sizeof(err));
    if (j == NULL) {
        fprintf(stderr, "answer is not JSON (%s): %s\n", err, b->p);
        abort();
    }
    FUZZ_CHECK(j->type == ADM_J_OBJ);
    ok = adm_json_get(j, "ok");
    FUZZ_CHECK(ok != NULL && ok->type == ADM_J_BOOL);
    adm_json_free(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct adm_ops ops;
    struct adm_buf out = {0};
    const char *p = (const char *)data, *end = p + size;
    const char *last = p;
    size_t lastn = 0;
    int lines = 0;

    if (T.snap == NULL) {
        setup();
        ops.view = view;
        ops.reload = reload;
        ops.rt = T.rt;
    }
    if (size > 3 * (ADM_LINE_MAX + 1)) {
        return 0;
    }
    while (p < end && lines++ < 16) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);

        adm_buf_reset(&out);
        adm_cmd_exec(&out, p, n, &ops);
        check_answer(&out);
        last = p;
        lastn = n;
        p += n + 1;
    }
    /* The admin HTTP API resource name (NUL-terminated path after /api/v1/dispatcher/). */
    if (lastn < 256) {
        char path[256];
        memcpy(path, last, lastn);
        path[lastn] = '\0';
        adm_buf_reset(&out);
        if (adm_cmd_api(&out, path, &ops) == 0) {
            check_answer(&out);
        }
    }
    adm_buf_dispose(&out);
    return 0;
}
