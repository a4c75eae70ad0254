/* dispatcher: libFuzzer target for the Redis namespace (master/ms_redis_ns.c): the hash values a
 * Redis holds ("addr=weight,..." backends, "GET,POST" methods, integers, hosts, paths, PEM
 * certificates...) validated and merged into a file config, then compiled.
 *
 * Input: lines. "S id", "R id", "C id", "M id" start a service / route / certificate /
 * middleware entry (the id is the rest of the line, any bytes; a middleware's hash has "type"
 * and that type's keys, a route's "split" and "middlewares" name services and middlewares);
 * "name=value" adds a field to the current entry (any bytes but the newline, NULs included, as
 * Redis strings are binary); "?" marks the current entry as listed but missing, "!text" records a
 * read error on it, "#K text" a read error on the SET of kind K (S, R, C or M). A field name
 * repeated in one entry is ignored (Redis hashes cannot hold it twice). Invariants beyond "no
 * crash, no leak": the namespace equals itself and hashes the same; a refused merge leaves the
 * config untouched and says why; an accepted one compiles into a snapshot that passes
 * shm_snap_check; unmerge restores the file config's counts (middlewares too); a split value parses
 * into 1 to 16 named entries of weights within bounds. Inputs naming device, /proc or /sys paths,
 * or leaving the folder, are skipped (a users_file or body_file would read them); "users" and
 * "page.html" exist in the folder. */
#include <stdint.h>
#include <string.h>

#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "master/ms_redis_ns.h"
#include "shm/shm_snap.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct ms_config *cfg;
static size_t file_services, file_routes, file_certs, file_mws;

static void setup(void)
{
    static const char conf[] =
        "listeners = ( { address = \"127.0.0.1:18997\"; } );\n"
        "environment = \"production\";\n"
        "redis = { host = \"127.0.0.1\"; port = 6390; };\n"
        "services = ( { name = \"gateway\"; backends = [ \"127.0.0.1:9101\" ]; },\n"
        "             { name = \"db\"; backends = [ \"127.0.0.1:9102\", \"[::1]:9103\" ]; } );\n"
        "middlewares = ( { name = \"secure\"; type = \"headers\";\n"
        "                  response_set = [ \"X-Frame-Options: DENY\" ]; } );\n"
        "routes = ( { host = \"gateway.do\"; service = \"gateway\"; middlewares = [ \"secure\" ]; "
        "} "
        ");\n";
    char *errs = NULL;

    fuzz_quiet();
    fuzz_aux_files();
    if (fuzz_config_load(conf, sizeof(conf) - 1, &cfg, &errs) != 0) {
        fprintf(stderr, "fuzz_redis_ns: config: %s\n", errs);
        abort();
    }
    file_services = cfg->nservices;
    file_routes = cfg->nroutes;
    file_certs = cfg->tls.ncerts;
    file_mws = cfg->nmws;
}

static int kind_of(uint8_t ch)
{
    return ch == 'S'   ? MS_RNS_SERVICE
           : ch == 'R' ? MS_RNS_ROUTE
           : ch == 'C' ? MS_RNS_CERT
           : ch == 'M' ? MS_RNS_MW
                       : -1;
}

/* The value parsers on their own, on a NUL-terminated copy. */
static void parse_value(const char *v, size_t n)
{
    char *s = malloc(n + 1), err[256];
    struct ms_backend *b = NULL;
    struct ms_split *sp = NULL;
    size_t nb = 0, nsp = 0;
    uint64_t m = 0;
    long l = 0;

    FUZZ_CHECK(s != NULL);
    memcpy(s, v, n);
    s[n] = '\0';
    if (ms_rns_parse_backends(s, &b, &nb, err, sizeof(err)) == 0) {
        FUZZ_CHECK(nb == 0 || b != NULL);
        for (size_t i = 0; i < nb; i++) {
            FUZZ_CHECK(b[i].weight >= 1 && b[i].weight <= MS_MAX_WEIGHT);
            FUZZ_CHECK(b[i].address != NULL);
            /* A host name backend: "name:port", the master resolves the name. */
            FUZZ_CHECK(b[i].name == NULL ||
                       (b[i].port > 0 && strncmp(b[i].address, b[i].name, strlen(b[i].name)) == 0 &&
                        b[i].address[strlen(b[i].name)] == ':'));
            free(b[i].address);
            free(b[i].name);
        }
        free(b);
    } else {
        FUZZ_CHECK(err[0] != '\0');
    }
    if (ms_rns_parse_split(s, &sp, &nsp, err, sizeof(err)) == 0) {
        FUZZ_CHECK(sp != NULL && nsp >= 1 && nsp <= MS_MAX_SPLIT);
        for (size_t i = 0; i < nsp; i++) {
            FUZZ_CHECK(sp[i].service != NULL && sp[i].service[0] != '\0');
            FUZZ_CHECK(strchr(sp[i].service, '=') == NULL && strchr(sp[i].service, ',') == NULL);
            FUZZ_CHECK(sp[i].weight >= 0 && sp[i].weight <= MS_MAX_SPLIT_WEIGHT);
            free(sp[i].service);
        }
        free(sp);
    } else {
        FUZZ_CHECK(sp == NULL && nsp == 0 && err[0] != '\0');
    }
    (void)ms_rns_parse_methods(s, &m, err, sizeof(err));
    if (ms_rns_parse_int(s, -1000, 1000, &l, err, sizeof(err)) == 0) {
        FUZZ_CHECK(l >= -1000 && l <= 1000);
    }
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_rns *ns;
    struct ms_rns_entry *e = NULL;
    const char *p = (const char *)data, *end = p + size;
    char *errs = NULL;
    int entries = 0;

    if (cfg == NULL) {
        setup();
    }
    if (size > 16384 || memmem(data, size, "/dev", 4) || memmem(data, size, "/proc", 5) ||
        memmem(data, size, "/sys", 4) || memmem(data, size, "..", 2) ||
        memmem(data, size, "/run", 4)) {
        return 0;
    }
    ns = ms_rns_new("production");
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        int k;

        if (n >= 2 && p[1] == ' ' && (k = kind_of((uint8_t)p[0])) >= 0) {
            if (++entries > 64) {
                break;
            }
            e = ms_rns_add(ns, k, p + 2, n - 2);
        } else if (n >= 1 && p[0] == '?' && e != NULL) {
            e->missing = 1;
        } else if (n >= 1 && p[0] == '!' && e != NULL) {
            char msg[64];
            snprintf(msg, sizeof(msg), "%.*s", (int)(n - 1 < 60 ? n - 1 : 60), p + 1);
            ms_rns_entry_error(e, msg);
        } else if (n >= 2 && p[0] == '#' && (k = kind_of((uint8_t)p[1])) >= 0) {
            ms_rns_set_error(ns, k, "read error");
        } else if (e != NULL) {
            const char *eq = memchr(p, '=', n);
            int dup = 0;
            /* A Redis hash holds each field once (a second HSET replaces the value): keep the
             * first, as the reader can never see two. */
            for (size_t i = 0; eq != NULL && i < e->nf; i++) {
                dup |= strlen(e->f[i].name) == (size_t)(eq - p) &&
                       memcmp(e->f[i].name, p, (size_t)(eq - p)) == 0;
            }
            if (eq != NULL && !dup) {
                size_t nlen = (size_t)(eq - p), vlen = n - nlen - 1;
                ms_rns_set(e, p, nlen, eq + 1, vlen);
                parse_value(eq + 1, vlen);
            }
        }
        p += n + 1;
    }
    ms_rns_sort(ns);
    FUZZ_CHECK(ms_rns_equal(ns, ns));
    FUZZ_CHECK(ms_rns_hash(ns) == ms_rns_hash(ns));
    if (ms_rns_merge(cfg, ns, 1, &errs) != 0) {
        FUZZ_CHECK(errs != NULL && errs[0] != '\0');
        FUZZ_CHECK(!cfg->redis.merged);
        free(errs);
    } else {
        size_t sz = 0;
        const struct shm_snap_hdr *s;

        FUZZ_CHECK(errs == NULL);
        FUZZ_CHECK(cfg->redis.merged);
        s = ms_compile(cfg, 2, &sz);
        FUZZ_CHECK(s != NULL && shm_snap_check(s, sz) == 0);
        FUZZ_CHECK(s->nservices == cfg->nservices && s->nroutes == cfg->nroutes);
        free((void *)s);
        ms_rns_unmerge(cfg);
        FUZZ_CHECK(!cfg->redis.merged);
    }
    FUZZ_CHECK(cfg->nservices == file_services);
    FUZZ_CHECK(cfg->nroutes == file_routes);
    FUZZ_CHECK(cfg->tls.ncerts == file_certs);
    FUZZ_CHECK(cfg->nmws == file_mws);
    ms_rns_free(ns);
    return 0;
}
