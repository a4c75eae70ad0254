/* dispatcher: reads dispatcher.conf with libconfig and checks every setting. All problems are
 * collected rather than stopping at the first, so that `-t` and a refused reload show the operator
 * the whole list in one go. */
#include "master/ms_config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <http_parser.h>
#include <libconfig.h>

#include "common/conffile.h"
#include "common/dsp.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/net.h"
#include "common/tls.h"
#include "master/ms_tls.h"
#include "shm/shm_lb.h"
#include "shm/shm_rl.h"
#include "master/ms_mw.h"

#define MAX_CN_LEN 64 /* X.509 upper bound for a commonName */
#define QUAL_LEN   192

/* The keys each group accepts (check_keys()); ms_config_key_table() lists them all. */
static const char *const admin_keys[] = {"socket", "mode", "http", "http_allow", NULL};
static const char *const log_keys[] = {
    "error", "level", "access", "access_format", "syslog_facility", "syslog_socket", NULL};
static const char *const limits_keys[] = {"max_connections",
                                          "max_header_bytes",
                                          "max_body_bytes",
                                          "header_timeout_ms",
                                          "idle_timeout_ms",
                                          "shutdown_timeout_ms",
                                          "tunnel_idle_timeout_ms",
                                          "min_body_rate",
                                          "send_timeout_ms",
                                          "h2_max_streams",
                                          "h2_stream_window",
                                          "rate_limit_keys",
                                          NULL};
static const char *const listener_keys[] = {"address",        "tls",
                                            "proxy_protocol", "client_ca",
                                            "client_verify",  "health_uri",
                                            "http2",          NULL};
static const char *const cert_keys[] = {"cert", "key", "ocsp", NULL};
static const char *const tls_keys[] = {"self_signed_cn", "min_version", "certificates", NULL};
static const char *const redis_keys[] = {
    "host", "port",      "password",           "user",
    "db",   "resync_ms", "connect_timeout_ms", "command_timeout_ms",
    "tls",  "sentinels", "master_name",        "sentinel_password",
    NULL};
static const char *const dns_keys[] = {"servers", "resolve_ms", "min_ttl_ms", "timeout_ms", NULL};
static const char *const backend_keys[] = {"address", "weight", NULL};
static const char *const health_keys[] = {"path", "interval_ms", "timeout_ms", "fall",
                                          "rise", "start",       NULL};
static const char *const circuit_keys[] = {"failures", "open_ms", "count_5xx", NULL};
static const char *const service_keys[] = {"name",
                                           "backends",
                                           "balance",
                                           "health",
                                           "circuit_breaker",
                                           "retries",
                                           "connect_timeout_ms",
                                           "response_timeout_ms",
                                           "stream_idle_timeout_ms",
                                           "tls",
                                           "verify",
                                           "ca",
                                           "sni",
                                           "client_cert",
                                           "client_key",
                                           "passive_failures",
                                           "max_ejection_percent",
                                           "resolve_ms",
                                           "protocol",
                                           NULL};
static const char *const route_keys[] = {"host",        "path",  "methods", "priority", "service",
                                         "middlewares", "split", "sticky",  NULL};
static const char *const split_keys[] = {"service", "weight", NULL};
static const char *const errors_keys[] = {"expose_backend", "list_services", "pages", NULL};
static const char *const error_page_keys[] = {"status", "file", NULL};
static const char *const top_keys[] = {
    "workers", "user",      "group",           "pid_file",    "environment", "admin",    "log",
    "limits",  "listeners", "trusted_proxies", "tls",         "redis",       "services", "routes",
    "dns",     "node_name", "errors",          "middlewares", NULL};

static const struct ms_config_keys key_table[] = {{"", top_keys},
                                                  {"admin", admin_keys},
                                                  {"log", log_keys},
                                                  {"limits", limits_keys},
                                                  {"listeners[]", listener_keys},
                                                  {"tls", tls_keys},
                                                  {"tls.certificates[]", cert_keys},
                                                  {"redis", redis_keys},
                                                  {"dns", dns_keys},
                                                  {"services[]", service_keys},
                                                  {"services[].backends[]", backend_keys},
                                                  {"services[].health", health_keys},
                                                  {"services[].circuit_breaker", circuit_keys},
                                                  {"routes[]", route_keys},
                                                  {"routes[].split[]", split_keys},
                                                  {"errors", errors_keys},
                                                  {"errors.pages[]", error_page_keys},
                                                  {NULL, NULL}};
static const char *const mw_keys[] = {"name", "type", NULL};

/* The static groups, then middlewares[] and each middleware type's own keys, listed as
 * "middlewares[type=NAME]" (built once, from the type table of master/ms_mw.c). */
const struct ms_config_keys *ms_config_key_table(void)
{
    static struct ms_config_keys all[DSP_ARRAY_SIZE(key_table) + SHM_MW_NTYPES + 1];
    static char groups[SHM_MW_NTYPES][48];
    const struct ms_mw_type *const *t = ms_mw_types();
    size_t n = 0;

    if (all[0].group != NULL) {
        return all;
    }
    for (size_t i = 0; key_table[i].group != NULL; i++) {
        all[n++] = key_table[i];
    }
    all[n].group = "middlewares[]";
    all[n++].keys = mw_keys;
    for (size_t i = 0; t[i] != NULL && i < SHM_MW_NTYPES; i++) {
        snprintf(groups[i], sizeof(groups[i]), "middlewares[type=%s]", t[i]->name);
        all[n].group = groups[i];
        all[n++].keys = t[i]->keys;
    }
    all[n].group = NULL;
    return all;
}

struct cfg_err {
    const char *file;
    unsigned line;
    size_t seq;
    char *msg;
};

/* Parser state: where messages point and the problems found so far. */
struct ctx {
    const char *path;
    const char *dir;
    const struct conf_src *src; /* maps libconfig's names of the files back to their paths */
    struct cfg_err *errs;
    size_t nerrs;
    size_t cap;
    /* Service names parsed so far, for duplicates and for routes: open addressing, each slot
     * an index into cfg->services plus one. A fleet may run thousands of services behind
     * 100,000 routes; a linear search per route made that quadratic (3.7 s for 20,000). */
    uint32_t *svc_ix;
    size_t svc_mask;
};

static size_t name_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    }
    return (size_t)(h ^ (h >> 29));
}

/* The service called <name>, or -1. */
static long svc_lookup(const struct ctx *c, const struct ms_config *cfg, const char *name)
{
    if (c->svc_ix == NULL) {
        return -1;
    }
    for (size_t b = name_hash(name) & c->svc_mask; c->svc_ix[b] != 0; b = (b + 1) & c->svc_mask) {
        const struct ms_service *svc = &cfg->services[c->svc_ix[b] - 1];
        if (strcmp(svc->name, name) == 0) {
            return (long)(c->svc_ix[b] - 1);
        }
    }
    return -1;
}

/* Index services[idx] by its name (set, and not yet indexed). */
static void svc_insert(struct ctx *c, const struct ms_config *cfg, size_t idx)
{
    size_t b = name_hash(cfg->services[idx].name) & c->svc_mask;

    while (c->svc_ix[b] != 0) {
        b = (b + 1) & c->svc_mask;
    }
    c->svc_ix[b] = (uint32_t)idx + 1;
}

static void add_err(struct ctx *c, const char *file, unsigned line, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

static void add_err(struct ctx *c, const char *file, unsigned line, const char *fmt, va_list ap)
{
    char msg[1024];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (c->nerrs == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 8;
        c->errs = dsp_xrealloc(c->errs, c->cap * sizeof(*c->errs));
    }
    file = conf_src_name(c->src, file);
    c->errs[c->nerrs].file = file ? file : c->path;
    c->errs[c->nerrs].line = line;
    c->errs[c->nerrs].seq = c->nerrs;
    c->errs[c->nerrs].msg = dsp_xstrdup(msg);
    c->nerrs++;
}

static void err_at(struct ctx *c, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void err_at(struct ctx *c, const config_setting_t *s, const char *fmt, ...)
{
    va_list ap;

    /* (<s> NULL: a check across keys named one the file does not give; the file, line 0) */
    va_start(ap, fmt);
    add_err(c, s != NULL ? config_setting_source_file(s) : NULL,
            s != NULL ? config_setting_source_line(s) : 0, fmt, ap);
    va_end(ap);
}

static void err_line(struct ctx *c, const char *file, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void err_line(struct ctx *c, const char *file, unsigned line, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    add_err(c, file, line, fmt, ap);
    va_end(ap);
}

static size_t file_rank(const struct ctx *c, const char *file)
{
    for (size_t i = 0; i < c->nerrs; i++) {
        if (strcmp(c->errs[i].file, file) == 0) {
            return i;
        }
    }
    return c->nerrs;
}

/* Report in file order (then line) even though sections are checked in a fixed order; insertion
 * sort keeps it stable and the list is short. */
static char *join_errors(struct ctx *c)
{
    size_t *rank = dsp_xcalloc(c->nerrs, sizeof(*rank));
    struct cfg_err *e = c->errs;
    size_t total = 1, off = 0;
    char *out;

    for (size_t i = 0; i < c->nerrs; i++) {
        rank[i] = file_rank(c, e[i].file);
    }
    for (size_t i = 1; i < c->nerrs; i++) {
        struct cfg_err t = e[i];
        size_t tr = rank[i], j = i;
        while (j > 0 && (rank[j - 1] > tr || (rank[j - 1] == tr && e[j - 1].line > t.line))) {
            e[j] = e[j - 1];
            rank[j] = rank[j - 1];
            j--;
        }
        e[j] = t;
        rank[j] = tr;
    }
    free(rank);
    for (size_t i = 0; i < c->nerrs; i++) {
        total += strlen(e[i].file) + strlen(e[i].msg) + 16;
    }
    out = dsp_xmalloc(total);
    out[0] = '\0';
    for (size_t i = 0; i < c->nerrs; i++) {
        /* Line 0: about the file as a whole (no listeners, cannot be read): "FILE: ...". */
        if (e[i].line == 0) {
            off += (size_t)snprintf(out + off, total - off, "%s%s: %s", i ? "\n" : "", e[i].file,
                                    e[i].msg);
        } else {
            off += (size_t)snprintf(out + off, total - off, "%s%s:%u: %s", i ? "\n" : "", e[i].file,
                                    e[i].line, e[i].msg);
        }
    }
    return out;
}

static void ctx_dispose(struct ctx *c)
{
    for (size_t i = 0; i < c->nerrs; i++) {
        free(c->errs[i].msg);
    }
    free(c->errs);
    free(c->svc_ix);
}


/* The full name of <key> inside <where> ("services[1].retries"), for messages. */
static const char *qual(char *buf, size_t n, const char *where, const char *key)
{
    snprintf(buf, n, "%s%s%s", where, *where ? "." : "", key);
    return buf;
}

static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *d, *real, *abs;
    char cwd[PATH_MAX];

    if (slash == NULL) {
        d = dsp_xstrdup(".");
    } else if (slash == path) {
        d = dsp_xstrdup("/");
    } else {
        size_t n = (size_t)(slash - path);
        d = dsp_xmalloc(n + 1);
        memcpy(d, path, n);
        d[n] = '\0';
    }
    real = realpath(d, NULL);
    if (real != NULL) {
        free(d);
        return real;
    }
    if (d[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL) {
        return d;
    }
    abs = dsp_xmalloc(strlen(cwd) + strlen(d) + 2);
    sprintf(abs, "%s/%s", cwd, d);
    free(d);
    return abs;
}

static char *resolve(const struct ctx *c, const char *p)
{
    size_t dl = strlen(c->dir);
    char *r;

    if (p[0] == '/') {
        return dsp_xstrdup(p);
    }
    while (p[0] == '.' && p[1] == '/') {
        p += 2;
        while (*p == '/') {
            p++;
        }
    }
    r = dsp_xmalloc(dl + strlen(p) + 2);
    sprintf(r, "%s%s%s", c->dir, (dl > 0 && c->dir[dl - 1] == '/') ? "" : "/", p);
    return r;
}

/* The get_* helpers return 0 when <name> is absent (so the default stays), 1 when they set
 * <*out>, and -1 after recording an error. */

static int is_int(const config_setting_t *s)
{
    return config_setting_type(s) == CONFIG_TYPE_INT || config_setting_type(s) == CONFIG_TYPE_INT64;
}

/* What a setting holds, for "must be an integer, not ...". libconfig reads 1e3, 10.0 and 1.5 as
 * floating-point numbers and "10" as a string: none of them is taken as an integer. */
static const char *type_name(const config_setting_t *s)
{
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_FLOAT:
        return "a floating-point number (write digits only, no '.' or exponent)";
    case CONFIG_TYPE_STRING:
        return "a string (write the digits without quotes)";
    case CONFIG_TYPE_BOOL:
        return "a boolean";
    case CONFIG_TYPE_GROUP:
        return "a group";
    case CONFIG_TYPE_ARRAY:
        return "an array";
    case CONFIG_TYPE_LIST:
        return "a list";
    default:
        return "an integer";
    }
}

static int get_long(struct ctx *c, config_setting_t *g, const char *where, const char *name,
                    long min, long max, long *out)
{
    config_setting_t *s = config_setting_get_member(g, name);
    char q[QUAL_LEN];
    long long v;

    if (s == NULL) {
        return 0;
    }
    if (!is_int(s)) {
        err_at(c, s, "%s must be an integer, not %s", qual(q, sizeof(q), where, name),
               type_name(s));
        return -1;
    }
    v = config_setting_get_int64(s);
    if (v < min || v > max) {
        if (max == LONG_MAX) {
            err_at(c, s, "%s must be %ld or more (got %lld)", qual(q, sizeof(q), where, name), min,
                   v);
        } else {
            err_at(c, s, "%s must be between %ld and %ld (got %lld)",
                   qual(q, sizeof(q), where, name), min, max, v);
        }
        return -1;
    }
    *out = (long)v;
    return 1;
}

static int get_int(struct ctx *c, config_setting_t *g, const char *where, const char *name, int min,
                   int max, int *out)
{
    long v;
    int r = get_long(c, g, where, name, min, max, &v);

    if (r == 1) {
        *out = (int)v;
    }
    return r;
}

static int get_bool(struct ctx *c, config_setting_t *g, const char *where, const char *name,
                    int *out)
{
    config_setting_t *s = config_setting_get_member(g, name);
    char q[QUAL_LEN];

    if (s == NULL) {
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_BOOL) {
        err_at(c, s, "%s must be true or false", qual(q, sizeof(q), where, name));
        return -1;
    }
    *out = config_setting_get_bool(s) ? 1 : 0;
    return 1;
}

/* <*out> is borrowed from libconfig. Empty strings are refused unless <allow_empty>. */
static int get_str(struct ctx *c, config_setting_t *g, const char *where, const char *name,
                   int allow_empty, const char **out)
{
    config_setting_t *s = config_setting_get_member(g, name);
    char q[QUAL_LEN];

    if (s == NULL) {
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_STRING) {
        err_at(c, s, "%s must be a string", qual(q, sizeof(q), where, name));
        return -1;
    }
    *out = config_setting_get_string(s);
    if (!allow_empty && **out == '\0') {
        err_at(c, s, "%s must not be empty", qual(q, sizeof(q), where, name));
        return -1;
    }
    return 1;
}

/* A member that must be a group; NULL when absent or after an error. */
static config_setting_t *get_group(struct ctx *c, config_setting_t *g, const char *where,
                                   const char *name)
{
    config_setting_t *s = config_setting_get_member(g, name);
    char q[QUAL_LEN];

    if (s == NULL) {
        return NULL;
    }
    if (!config_setting_is_group(s)) {
        err_at(c, s, "%s must be a group { ... }", qual(q, sizeof(q), where, name));
        return NULL;
    }
    return s;
}

/* A member that must be a list "( ... )" or an array "[ ... ]"; NULL when absent or bad. */
static config_setting_t *get_seq(struct ctx *c, config_setting_t *g, const char *where,
                                 const char *name)
{
    config_setting_t *s = config_setting_get_member(g, name);
    char q[QUAL_LEN];

    if (s == NULL) {
        return NULL;
    }
    if (!config_setting_is_list(s) && !config_setting_is_array(s)) {
        err_at(c, s, "%s must be a list ( ... ) or an array [ ... ]",
               qual(q, sizeof(q), where, name));
        return NULL;
    }
    return s;
}

/* Levenshtein distance between <a> and <b>, ignoring case, or a large number when either is
 * longer than the table (no valid key is). */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[65];

    if (la > 64 || lb > 64) {
        return (size_t)-1;
    }
    for (size_t j = 0; j <= lb; j++) {
        row[j] = j;
    }
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            size_t best = diag + cost;
            if (up + 1 < best) {
                best = up + 1;
            }
            if (row[j - 1] + 1 < best) {
                best = row[j - 1] + 1;
            }
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

/* The key of <known> nearest to <name> when it is close enough to be a typo (at most 1 edit
 * for short names, 2 from 5 letters, 3 from 10), else NULL. */
static const char *nearest_key(const char *name, const char *const *known)
{
    size_t len = strlen(name), allowed = len >= 10 ? 3 : len >= 5 ? 2 : 1, best = (size_t)-1;
    const char *pick = NULL;

    for (const char *const *k = known; *k != NULL; k++) {
        size_t d = edit_distance(name, *k);
        if (d < best) {
            best = d;
            pick = *k;
        }
    }
    return best <= allowed ? pick : NULL;
}

static void check_keys(struct ctx *c, config_setting_t *g, const char *where,
                       const char *const *known)
{
    int n = config_setting_length(g);

    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(g, (unsigned)i);
        const char *name = config_setting_name(e);
        const char *const *k;

        for (k = known; *k != NULL; k++) {
            if (name != NULL && strcmp(name, *k) == 0) {
                break;
            }
        }
        if (*k == NULL) {
            const char *near = name != NULL ? nearest_key(name, known) : NULL;
            err_at(c, e, "unknown key '%s'%s%s%s%s%s", name ? name : "?", *where ? " in " : "",
                   where, near ? " (did you mean '" : "", near ? near : "", near ? "'?)" : "");
        }
    }
}


int ms_valid_name(const char *s)
{
    if (*s == '\0') {
        return 0;
    }
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '.' || *s == '-')) {
            return 0;
        }
    }
    return 1;
}

/* Lower-case DNS-ish name: [a-z0-9._-], no empty label. */
static int valid_hostname(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > TLS_MAX_NAME || s[0] == '.' || s[n - 1] == '.' || strstr(s, "..")) {
        return 0;
    }
    for (; *s; s++) {
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '.' || *s == '-' ||
              *s == '_')) {
            return 0;
        }
    }
    return 1;
}

int ms_valid_url_path(const char *s)
{
    if (s[0] != '/') {
        return 0;
    }
    for (; *s; s++) {
        if ((unsigned char)*s <= ' ' || *s == 0x7f) {
            return 0;
        }
    }
    return 1;
}

static int valid_cn(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > MAX_CN_LEN) {
        return 0;
    }
    for (; *s; s++) {
        if ((unsigned char)*s < ' ' || *s == 0x7f) {
            return 0;
        }
    }
    return 1;
}

static int is_wildcard_addr(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    if (ss->ss_family == AF_INET6) {
        return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    }
    return 0;
}

static void check_readable(struct ctx *c, config_setting_t *s, const char *what, const char *file)
{
    struct stat st;

    if (stat(file, &st) != 0 || access(file, R_OK) != 0) {
        err_at(c, s, "%s: cannot read \"%s\": %s", what, file, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        /* Only a hint: the read itself (fs_read_regular) is what cannot block. */
        err_at(c, s, "%s: \"%s\" is %s, not a regular file", what, file,
               fs_type_name((unsigned)st.st_mode));
    }
}

static int online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    if (n < 1) {
        return 1;
    }
    return n > MS_MAX_WORKERS ? MS_MAX_WORKERS : (int)n;
}


/* The host name, as the default node_name; anything outside [A-Za-z0-9_.-] becomes '_'. */
static char *default_node_name(void)
{
    char host[256];

    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0') {
        return dsp_xstrdup("dispatcher");
    }
    host[sizeof(host) - 1] = '\0';
    for (char *p = host; *p; p++) {
        if (!ms_valid_name((char[]){*p, '\0'})) {
            *p = '_';
        }
    }
    return dsp_xstrdup(host);
}

static void set_defaults(struct ms_config *cfg)
{
    cfg->workers = online_cpus();
    cfg->environment = dsp_xstrdup("production");
    cfg->node_name = default_node_name();
    cfg->admin.mode = 0600;
    cfg->log.error = dsp_xstrdup("stderr");
    cfg->log.level = LOG_INFO;
    cfg->log.access_format = SHM_ACCESS_JSON;
    cfg->limits.max_connections = 10000;
    cfg->limits.max_header_bytes = 16384;
    cfg->limits.max_body_bytes = 0;
    cfg->limits.header_timeout_ms = 10000;
    cfg->limits.idle_timeout_ms = 60000;
    cfg->limits.shutdown_timeout_ms = 10000;
    cfg->limits.tunnel_idle_timeout_ms = 3600000;
    cfg->limits.min_body_rate = 256;
    cfg->limits.h2_max_streams = 128;
    cfg->limits.h2_stream_window = 262144;
    cfg->limits.rate_limit_keys = 65536;
    cfg->limits.send_timeout_ms = 60000;
    cfg->tls.self_signed_cn = dsp_xstrdup("localhost");
    cfg->tls.min_version = 0x0303;
    cfg->errors.list_services = 1;
}

static void parse_top(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *s = config_setting_get_member(root, "workers");
    const char *v;

    if (s != NULL) {
        if (config_setting_type(s) == CONFIG_TYPE_STRING &&
            strcmp(config_setting_get_string(s), "auto") == 0) {
            cfg->workers = online_cpus();
        } else if (is_int(s) && config_setting_get_int64(s) >= 1 &&
                   config_setting_get_int64(s) <= MS_MAX_WORKERS) {
            cfg->workers = (int)config_setting_get_int64(s);
        } else {
            err_at(c, s, "workers must be \"auto\" or an integer between 1 and %d", MS_MAX_WORKERS);
        }
    }
    if (get_str(c, root, "", "user", 0, &v) == 1) {
        cfg->user = dsp_xstrdup(v);
    }
    if (get_str(c, root, "", "group", 0, &v) == 1) {
        cfg->group = dsp_xstrdup(v);
    }
    if (get_str(c, root, "", "pid_file", 0, &v) == 1) {
        cfg->pid_file = resolve(c, v);
    }
    if (get_str(c, root, "", "environment", 0, &v) == 1) {
        /* It becomes part of Redis key names, so keep it to a plain token. */
        if (!ms_valid_name(v)) {
            err_at(c, config_setting_get_member(root, "environment"),
                   "environment \"%s\" may only use letters, digits, '_', '.' and '-'", v);
        } else {
            free(cfg->environment);
            cfg->environment = dsp_xstrdup(v);
        }
    }
    if (get_str(c, root, "", "node_name", 0, &v) == 1) {
        /* Part of a Redis key name too (node:{node_name}). */
        if (!ms_valid_name(v) || strlen(v) > 255) {
            err_at(c, config_setting_get_member(root, "node_name"),
                   "node_name \"%s\" may only use letters, digits, '_', '.' and '-' (at most 255)",
                   v);
        } else {
            free(cfg->node_name);
            cfg->node_name = dsp_xstrdup(v);
        }
    }
}

/* admin.mode: a string of octal digits ("0600"). A bare number is read the same way because
 * libconfig parses `0600` as decimal 600, and operators mean chmod-style digits either way. */
static void parse_mode(struct ctx *c, config_setting_t *s, int *out)
{
    char digits[32];
    const char *p;
    char *end;
    long v;

    if (config_setting_type(s) == CONFIG_TYPE_STRING) {
        p = config_setting_get_string(s);
    } else if (is_int(s) && config_setting_get_int64(s) >= 0) {
        snprintf(digits, sizeof(digits), "%lld", config_setting_get_int64(s));
        p = digits;
    } else {
        err_at(c, s, "admin.mode must be octal permission digits such as \"0600\"");
        return;
    }
    if (*p == '\0' || strlen(p) > 6 || strspn(p, "01234567") != strlen(p)) {
        err_at(c, s, "admin.mode \"%s\" must be octal permission digits such as \"0600\"", p);
        return;
    }
    v = strtol(p, &end, 8);
    if (v > 0777) {
        err_at(c, s, "admin.mode \"%s\" must be at most 0777", p);
        return;
    }
    *out = (int)v;
}

static int is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET) {
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

static void parse_admin(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *g = get_group(c, root, "", "admin");
    config_setting_t *s;
    const char *v;
    char err[256];

    if (g == NULL) {
        return;
    }
    check_keys(c, g, "admin", admin_keys);
    if (get_str(c, g, "admin", "socket", 0, &v) == 1) {
        struct sockaddr_un sa_un;
        cfg->admin.socket = resolve(c, v);
        if (strlen(cfg->admin.socket) >= sizeof(sa_un.sun_path)) {
            err_at(c, config_setting_get_member(g, "socket"),
                   "admin.socket \"%s\" is too long for a unix socket (at most %zu bytes)",
                   cfg->admin.socket, sizeof(sa_un.sun_path) - 1);
        }
    }
    s = config_setting_get_member(g, "mode");
    if (s != NULL) {
        parse_mode(c, s, &cfg->admin.mode);
    }
    if (get_str(c, g, "admin", "http", 0, &v) == 1) {
        if (net_parse_addr(v, 0, &cfg->admin.http_ss, &cfg->admin.http_sslen, err, sizeof(err)) !=
            0) {
            err_at(c, config_setting_get_member(g, "http"), "admin.http: %s", err);
        } else {
            cfg->admin.http = dsp_xstrdup(v);
        }
    }
    s = get_seq(c, g, "admin", "http_allow");
    if (s != NULL && config_setting_length(s) > 0) {
        int n = config_setting_length(s);
        cfg->admin.http_allow = dsp_xcalloc((size_t)n, sizeof(*cfg->admin.http_allow));
        cfg->admin.nhttp_allow = (size_t)n;
        for (int i = 0; i < n; i++) {
            config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            if (config_setting_type(e) != CONFIG_TYPE_STRING) {
                err_at(c, e, "admin.http_allow[%d] must be a string such as \"10.0.0.0/8\"", i);
            } else if (net_cidr_parse(config_setting_get_string(e), &cfg->admin.http_allow[i], err,
                                      sizeof(err)) != 0) {
                err_at(c, e, "admin.http_allow[%d]: %s", i, err);
            }
        }
    }
    /* It has no authentication: only on loopback, unless the operator lists who may reach it. */
    if (cfg->admin.http != NULL && cfg->admin.nhttp_allow == 0 &&
        !is_loopback(&cfg->admin.http_ss)) {
        err_at(c, config_setting_get_member(g, "http"),
               "admin.http \"%s\" is not a loopback address: set admin.http_allow to the client "
               "CIDRs allowed to reach it",
               cfg->admin.http);
    }
}

/* log.error = "syslog": the facility and the daemon's socket become part of the destination,
 * "syslog:FACILITY:SOCKET" (see log_open()), so that a reload sees any change of either. */
static void parse_syslog(struct ctx *c, config_setting_t *g, struct ms_config *cfg)
{
    static const char *const names[] = {"user",   "daemon", "local0", "local1", "local2",
                                        "local3", "local4", "local5", "local6", "local7"};
    static const int codes[] = {1, 3, 16, 17, 18, 19, 20, 21, 22, 23};
    int is_syslog = strcmp(cfg->log.error, "syslog") == 0, facility = 3;
    char *sock = NULL;
    const char *v;

    if (get_str(c, g, "log", "syslog_facility", 0, &v) == 1) {
        size_t i = 0;
        while (i < sizeof(names) / sizeof(names[0]) && strcmp(v, names[i]) != 0) {
            i++;
        }
        if (i == sizeof(names) / sizeof(names[0])) {
            err_at(c, config_setting_get_member(g, "syslog_facility"),
                   "log.syslog_facility \"%s\" must be user, daemon or local0..local7", v);
        } else {
            facility = codes[i];
        }
    }
    if (get_str(c, g, "log", "syslog_socket", 0, &v) == 1) {
        sock = resolve(c, v);
    }
    if (!is_syslog) {
        static const char *const keys[] = {"syslog_facility", "syslog_socket", NULL};
        for (const char *const *k = keys; *k != NULL; k++) {
            config_setting_t *s = config_setting_get_member(g, *k);
            if (s != NULL) {
                err_at(c, s, "log.%s applies to error = \"syslog\" only", *k);
            }
        }
    } else {
        const char *path = sock != NULL ? sock : "/dev/log";
        struct sockaddr_un sa_un;
        size_t n = strlen(path) + 16;

        if (strlen(path) >= sizeof(sa_un.sun_path)) {
            err_at(c, config_setting_get_member(g, "syslog_socket"),
                   "log.syslog_socket \"%s\" is too long for a unix socket", path);
        }
        free(cfg->log.error);
        cfg->log.error = dsp_xmalloc(n);
        snprintf(cfg->log.error, n, "syslog:%d:%s", facility, path);
    }
    free(sock);
}

static void parse_log(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *g = get_group(c, root, "", "log");
    const char *v;

    if (g == NULL) {
        return;
    }
    check_keys(c, g, "log", log_keys);
    if (get_str(c, g, "log", "error", 0, &v) == 1 && strcmp(v, "stderr") != 0) {
        free(cfg->log.error);
        cfg->log.error = strcmp(v, "syslog") == 0 ? dsp_xstrdup(v) : resolve(c, v);
    }
    parse_syslog(c, g, cfg);
    if (get_str(c, g, "log", "level", 0, &v) == 1) {
        int lvl = log_level_parse(v);
        if (lvl < 0) {
            err_at(c, config_setting_get_member(g, "level"),
                   "log.level \"%s\" must be debug, info, warn or error", v);
        } else {
            cfg->log.level = lvl;
        }
    }
    if (get_str(c, g, "log", "access", 0, &v) == 1 && strcmp(v, "off") != 0) {
        cfg->log.access = resolve(c, v);
    }
    if (get_str(c, g, "log", "access_format", 0, &v) == 1) {
        if (strcmp(v, "json") == 0) {
            cfg->log.access_format = SHM_ACCESS_JSON;
        } else if (strcmp(v, "combined") == 0) {
            cfg->log.access_format = SHM_ACCESS_COMBINED;
        } else {
            err_at(c, config_setting_get_member(g, "access_format"),
                   "log.access_format \"%s\" must be \"json\" or \"combined\"", v);
        }
    }
}

static void parse_limits(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *g = get_group(c, root, "", "limits");

    if (g == NULL) {
        return;
    }
    check_keys(c, g, "limits", limits_keys);
    get_long(c, g, "limits", "max_connections", 1, INT_MAX, &cfg->limits.max_connections);
    get_long(c, g, "limits", "max_header_bytes", 1024, 1048576, &cfg->limits.max_header_bytes);
    /* Above 2^31-1 it needs the L suffix: conf_read() refuses a literal libconfig would wrap. */
    get_long(c, g, "limits", "max_body_bytes", 0, LONG_MAX, &cfg->limits.max_body_bytes);
    get_long(c, g, "limits", "header_timeout_ms", 1, MS_MAX_TIMEOUT_MS,
             &cfg->limits.header_timeout_ms);
    get_long(c, g, "limits", "idle_timeout_ms", 1, MS_MAX_TIMEOUT_MS, &cfg->limits.idle_timeout_ms);
    get_long(c, g, "limits", "shutdown_timeout_ms", 1, MS_MAX_TIMEOUT_MS,
             &cfg->limits.shutdown_timeout_ms);
    get_long(c, g, "limits", "tunnel_idle_timeout_ms", 1, MS_MAX_TIMEOUT_MS,
             &cfg->limits.tunnel_idle_timeout_ms);
    /* Above ~100 MB/s the check would only cut off legitimate fast clients stalled by the
     * network: such a value is a unit mistake. */
    get_long(c, g, "limits", "min_body_rate", 0, 100000000, &cfg->limits.min_body_rate);
    get_long(c, g, "limits", "send_timeout_ms", 1, MS_MAX_TIMEOUT_MS, &cfg->limits.send_timeout_ms);
    get_long(c, g, "limits", "h2_max_streams", 1, 10000, &cfg->limits.h2_max_streams);
    /* At least HTTP/2's default window, at most what a stream may buffer without harm. */
    get_long(c, g, "limits", "h2_stream_window", 65535, 16777216, &cfg->limits.h2_stream_window);
    get_long(c, g, "limits", "rate_limit_keys", SHM_RL_MIN_KEYS, SHM_RL_MAX_KEYS,
             &cfg->limits.rate_limit_keys);
}

/* Read an environment override; empty counts as unset (env files often carry `HTTP_PORT=`). */
static const char *env_get(const char *name)
{
    const char *v = getenv(name);

    return (v != NULL && *v != '\0') ? v : NULL;
}

static int env_port(struct ctx *c, const char *name, const char **out)
{
    const char *v = env_get(name);
    char *end;
    long p;

    *out = NULL;
    if (v == NULL) {
        return 0;
    }
    errno = 0;
    p = strtol(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || p < 1 || p > 65535) {
        err_line(c, NULL, 0, "environment %s: \"%s\" is not a port number (1..65535)", name, v);
        return -1;
    }
    *out = v;
    return 1;
}

/* <out> gets the host part as it goes into an address string ("[::1]" for IPv6). */
static int env_host(struct ctx *c, char *out, size_t outlen)
{
    const char *v = env_get("SERVER_HOST");
    struct sockaddr_storage ss;
    socklen_t len;
    char probe[192], err[256];

    out[0] = '\0';
    if (v == NULL) {
        return 0;
    }
    if (strchr(v, ':') != NULL && v[0] != '[') {
        snprintf(out, outlen, "[%s]", v);
    } else {
        snprintf(out, outlen, "%s", v);
    }
    snprintf(probe, sizeof(probe), "%s:1", out);
    if (strlen(v) > 100 || net_parse_addr(probe, 0, &ss, &len, err, sizeof(err)) != 0) {
        err_line(c, NULL, 0, "environment SERVER_HOST: \"%s\" is not an IPv4 or IPv6 address", v);
        out[0] = '\0';
        return -1;
    }
    return 1;
}

/* Rewrite the host and/or port of an address that already parsed ("host:port" / "[v6]:port"). */
static char *override_addr(const char *addr, const char *host, const char *port)
{
    const char *colon = strrchr(addr, ':');
    size_t hlen = (size_t)(colon - addr);
    char *r;

    if (host == NULL || *host == '\0') {
        r = dsp_xmalloc(hlen + strlen(port ? port : colon + 1) + 2);
        sprintf(r, "%.*s:%s", (int)hlen, addr, port ? port : colon + 1);
    } else {
        r = dsp_xmalloc(strlen(host) + strlen(port ? port : colon + 1) + 2);
        sprintf(r, "%s:%s", host, port ? port : colon + 1);
    }
    return r;
}

static void apply_env_listener(struct ctx *c, struct ms_listener *l, const char *host,
                               const char *port, const char *var)
{
    char *addr;
    char err[256];

    if ((host == NULL || *host == '\0') && port == NULL) {
        return;
    }
    addr = override_addr(l->address, host, port);
    if (net_parse_addr(addr, 0, &l->ss, &l->sslen, err, sizeof(err)) != 0) {
        err_line(c, NULL, 0, "environment %s: %s", var, err);
        free(addr);
        return;
    }
    free(l->address);
    l->address = addr;
}

static void parse_client_ca(struct ctx *c, config_setting_t *g, const char *where,
                            struct ms_listener *l);
/* listeners[].health_uri: an origin-form path compared as is with a request's path. */
static int health_uri_ok(const char *v)
{
    size_t n = strlen(v);

    if (n == 0 || n > 255 || v[0] != '/') {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#') {
            return 0;
        }
    }
    return 1;
}

static void parse_listeners(struct ctx *c, config_setting_t *root, struct ms_config *cfg,
                            int use_env)
{
    config_setting_t *seq = get_seq(c, root, "", "listeners");
    int n = seq ? config_setting_length(seq) : 0;
    int *ok;
    char where[64], err[256];

    if (seq == NULL) {
        if (config_setting_get_member(root, "listeners") == NULL) {
            err_line(c, NULL, 0, "no listeners: at least one is required");
        }
        return;
    }
    if (n == 0) {
        err_at(c, seq, "listeners is empty: at least one is required");
        return;
    }
    cfg->listeners = dsp_xcalloc((size_t)n, sizeof(*cfg->listeners));
    cfg->nlisteners = (size_t)n;
    ok = dsp_xcalloc((size_t)n, sizeof(*ok));
    for (int i = 0; i < n; i++) {
        config_setting_t *g = config_setting_get_elem(seq, (unsigned)i);
        struct ms_listener *l = &cfg->listeners[i];
        const char *v;

        snprintf(where, sizeof(where), "listeners[%d]", i);
        l->line = (int)config_setting_source_line(g);
        if (!config_setting_is_group(g)) {
            err_at(c, g, "%s must be a group { address = \"ip:port\"; ... }", where);
            continue;
        }
        check_keys(c, g, where, listener_keys);
        l->http2 = 1;
        get_bool(c, g, where, "tls", &l->tls);
        get_bool(c, g, where, "http2", &l->http2);
        get_bool(c, g, where, "proxy_protocol", &l->proxy_protocol);
        parse_client_ca(c, g, where, l);
        if (get_str(c, g, where, "health_uri", 0, &v) == 1) {
            if (!health_uri_ok(v)) {
                err_at(c, config_setting_get_member(g, "health_uri"),
                       "%s.health_uri must be a path starting with '/' (at most 255 bytes, no "
                       "query, spaces or control characters)",
                       where);
            } else {
                l->health_uri = dsp_xstrdup(v);
            }
        }
        switch (get_str(c, g, where, "address", 0, &v)) {
        case 0:
            err_at(c, g, "%s has no address", where);
            break;
        case 1:
            l->address = dsp_xstrdup(v);
            if (net_parse_addr(v, 0, &l->ss, &l->sslen, err, sizeof(err)) != 0) {
                err_at(c, config_setting_get_member(g, "address"), "%s.address: %s", where, err);
            } else {
                ok[i] = 1;
            }
            break;
        default:
            break;
        }
    }
    if (use_env) {
        const char *http_port, *https_port;
        char host[160];
        int plain = -1, tls = -1;

        env_port(c, "HTTP_PORT", &http_port);
        env_port(c, "HTTPS_PORT", &https_port);
        env_host(c, host, sizeof(host));
        for (int i = 0; i < n; i++) {
            if (cfg->listeners[i].tls && tls < 0) {
                tls = i;
            } else if (!cfg->listeners[i].tls && plain < 0) {
                plain = i;
            }
        }
        if (plain >= 0 && ok[plain]) {
            apply_env_listener(c, &cfg->listeners[plain], host, http_port,
                               http_port ? "HTTP_PORT" : "SERVER_HOST");
        }
        if (tls >= 0 && ok[tls]) {
            apply_env_listener(c, &cfg->listeners[tls], host, https_port,
                               https_port ? "HTTPS_PORT" : "SERVER_HOST");
        }
    }
    for (int i = 0; i < n; i++) {
        char a[80], b[80];

        if (!ok[i]) {
            continue;
        }
        net_addr_str((struct sockaddr *)&cfg->listeners[i].ss, a, sizeof(a));
        for (int j = 0; j < i; j++) {
            if (ok[j] && strcmp(a, net_addr_str((struct sockaddr *)&cfg->listeners[j].ss, b,
                                                sizeof(b))) == 0) {
                err_line(c, config_setting_source_file(config_setting_get_elem(seq, (unsigned)i)),
                         (unsigned)cfg->listeners[i].line,
                         "duplicate listener %s (already at line %d)", a, cfg->listeners[j].line);
                break;
            }
        }
    }
    free(ok);
}

/* client_ca / client_verify of a TLS listener: client certificates, verified against the CA
 * bundle (read here, like a service's ca). client_verify defaults to "required". */
static void parse_client_ca(struct ctx *c, config_setting_t *g, const char *where,
                            struct ms_listener *l)
{
    config_setting_t *ca = config_setting_get_member(g, "client_ca");
    config_setting_t *vs = config_setting_get_member(g, "client_verify");
    const char *v;
    char err[512];

    if (ca == NULL && vs == NULL) {
        return;
    }
    if (!l->tls) {
        err_at(c, ca != NULL ? ca : vs, "%s.%s applies to TLS listeners only: add tls = true",
               where, ca != NULL ? "client_ca" : "client_verify");
        return;
    }
    if (ca == NULL) {
        err_at(c, vs, "%s.client_verify needs %s.client_ca (the CAs to verify against)", where,
               where);
        return;
    }
    l->client_verify = SHM_CLIENT_VERIFY_REQUIRED;
    if (get_str(c, g, where, "client_verify", 0, &v) == 1) {
        if (strcmp(v, "required") == 0) {
            l->client_verify = SHM_CLIENT_VERIFY_REQUIRED;
        } else if (strcmp(v, "optional") == 0) {
            l->client_verify = SHM_CLIENT_VERIFY_OPTIONAL;
        } else {
            err_at(c, vs, "%s.client_verify \"%s\" must be \"optional\" or \"required\"", where, v);
        }
    }
    if (get_str(c, g, where, "client_ca", 0, &v) == 1) {
        l->client_ca = resolve(c, v);
        if (ms_tls_read_ca(l->client_ca, &l->client_ca_pem, err, sizeof(err)) != 0) {
            err_at(c, ca, "%s.client_ca: %s", where, err);
        }
    }
}

static void parse_trusted(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *seq = get_seq(c, root, "", "trusted_proxies");
    int n = seq ? config_setting_length(seq) : 0;
    char err[256];

    if (n == 0) {
        return;
    }
    cfg->trusted = dsp_xcalloc((size_t)n, sizeof(*cfg->trusted));
    cfg->ntrusted = (size_t)n;
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(seq, (unsigned)i);

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            err_at(c, e, "trusted_proxies[%d] must be a string such as \"10.0.0.0/8\"", i);
        } else if (net_cidr_parse(config_setting_get_string(e), &cfg->trusted[i], err,
                                  sizeof(err)) != 0) {
            err_at(c, e, "trusted_proxies[%d]: %s", i, err);
        }
    }
}

void ms_cert_dispose(struct ms_cert *ct)
{
    free(ct->cert);
    free(ct->key);
    free(ct->ocsp);
    free(ct->ocsp_der);
    free(ct->file);
    free(ct->cert_pem);
    if (ct->key_pem != NULL) {
        explicit_bzero(ct->key_pem, strlen(ct->key_pem));
        free(ct->key_pem);
    }
    for (size_t i = 0; i < ct->nnames; i++) {
        free(ct->names[i]);
    }
    free(ct->names);
    free(ct->subject);
    memset(ct, 0, sizeof(*ct));
}

static void parse_certs(struct ctx *c, config_setting_t *tls, struct ms_config *cfg)
{
    config_setting_t *seq = get_seq(c, tls, "tls", "certificates");
    int n = seq ? config_setting_length(seq) : 0;
    char where[64];

    if (n == 0) {
        return;
    }
    cfg->tls.certs = dsp_xcalloc((size_t)n, sizeof(*cfg->tls.certs));
    cfg->tls.ncerts = (size_t)n;
    for (int i = 0; i < n; i++) {
        config_setting_t *g = config_setting_get_elem(seq, (unsigned)i);
        struct ms_cert *ct = &cfg->tls.certs[i];
        const char *v;
        char what[96];

        snprintf(where, sizeof(where), "tls.certificates[%d]", i);
        ct->line = (int)config_setting_source_line(g);
        ct->source = SHM_SOURCE_FILE;
        if (config_setting_source_file(g) != NULL) {
            ct->file = dsp_xstrdup(conf_src_name(c->src, config_setting_source_file(g)));
        }
        if (!config_setting_is_group(g)) {
            err_at(c, g, "%s must be a group { cert = \"...\"; key = \"...\"; }", where);
            continue;
        }
        check_keys(c, g, where, cert_keys);
        switch (get_str(c, g, where, "cert", 0, &v)) {
        case 0:
            err_at(c, g, "%s has no cert", where);
            break;
        case 1:
            ct->cert = resolve(c, v);
            check_readable(c, config_setting_get_member(g, "cert"),
                           qual(what, sizeof(what), where, "cert"), ct->cert);
            break;
        default:
            break;
        }
        switch (get_str(c, g, where, "key", 0, &v)) {
        case 0:
            err_at(c, g, "%s has no key", where);
            break;
        case 1:
            ct->key = resolve(c, v);
            check_readable(c, config_setting_get_member(g, "key"),
                           qual(what, sizeof(what), where, "key"), ct->key);
            break;
        default:
            break;
        }
        if (get_str(c, g, where, "ocsp", 0, &v) == 1) {
            ct->ocsp = resolve(c, v);
            check_readable(c, config_setting_get_member(g, "ocsp"),
                           qual(what, sizeof(what), where, "ocsp"), ct->ocsp);
        }
    }
}

static void parse_tls(struct ctx *c, config_setting_t *root, struct ms_config *cfg, int use_env)
{
    config_setting_t *g = get_group(c, root, "", "tls");
    const char *v;

    if (g != NULL) {
        check_keys(c, g, "tls", tls_keys);
        if (get_str(c, g, "tls", "self_signed_cn", 0, &v) == 1) {
            if (!valid_cn(v)) {
                err_at(c, config_setting_get_member(g, "self_signed_cn"),
                       "tls.self_signed_cn must be 1..%d printable characters", MAX_CN_LEN);
            } else {
                free(cfg->tls.self_signed_cn);
                cfg->tls.self_signed_cn = dsp_xstrdup(v);
            }
        }
        if (get_str(c, g, "tls", "min_version", 0, &v) == 1) {
            if (strcasecmp(v, "TLSv1.2") == 0) {
                cfg->tls.min_version = 0x0303;
            } else if (strcasecmp(v, "TLSv1.3") == 0) {
                cfg->tls.min_version = 0x0304;
            } else {
                err_at(c, config_setting_get_member(g, "min_version"),
                       "tls.min_version \"%s\" must be \"TLSv1.2\" or \"TLSv1.3\"", v);
            }
        }
        parse_certs(c, g, cfg);
    }
    if (use_env && (v = env_get("SELF_SIGNED_CN")) != NULL) {
        if (!valid_cn(v)) {
            err_line(c, NULL, 0, "environment SELF_SIGNED_CN: must be 1..%d printable characters",
                     MAX_CN_LEN);
        } else {
            free(cfg->tls.self_signed_cn);
            cfg->tls.self_signed_cn = dsp_xstrdup(v);
        }
    }
}

/* "host:port" or "[v6]:port" of a sentinel into <a>. Returns 0, or -1 with a reason. */
static int parse_host_port(const char *v, struct ms_redis_addr *a, char *err, size_t errlen)
{
    const char *colon = strrchr(v, ':');
    const char *h = v, *hend;
    char *end;
    long port;

    if (colon == NULL || colon == v) {
        snprintf(err, errlen, "\"%s\" is not HOST:PORT", v);
        return -1;
    }
    hend = colon;
    if (*v == '[') {
        if (colon[-1] != ']' || colon - v < 3) {
            snprintf(err, errlen, "\"%s\": an IPv6 address is written [ADDRESS]:PORT", v);
            return -1;
        }
        h = v + 1;
        hend = colon - 1;
    }
    for (const char *p = h; p < hend; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!(ch == '.' || ch == '-' || ch == ':' || (ch >= '0' && ch <= '9') ||
              (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')) ||
            (ch == ':' && *v != '[')) {
            snprintf(err, errlen, "\"%s\": bad host name", v);
            return -1;
        }
    }
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (colon[1] < '0' || colon[1] > '9' || *end != '\0' || errno != 0 || port < 1 ||
        port > 65535) {
        snprintf(err, errlen, "\"%s\": the port must be 1..65535", v);
        return -1;
    }
    a->host = dsp_xmalloc((size_t)(hend - h) + 1);
    memcpy(a->host, h, (size_t)(hend - h));
    a->host[hend - h] = '\0';
    a->port = (int)port;
    return 0;
}

/* redis.sentinels, redis.master_name, redis.sentinel_password. */
static void parse_sentinels(struct ctx *c, config_setting_t *g, struct ms_config *cfg)
{
    config_setting_t *seq = get_seq(c, g, "redis", "sentinels");
    config_setting_t *name = config_setting_get_member(g, "master_name");
    int n = seq ? config_setting_length(seq) : 0;
    const char *v;
    char err[256];

    if (seq != NULL && n == 0) {
        err_at(c, seq, "redis.sentinels must list at least one \"HOST:PORT\"");
    }
    if (n > 64) {
        err_at(c, seq, "redis.sentinels: at most 64 (got %d)", n);
        n = 0;
    }
    if (n > 0) {
        cfg->redis.sentinels = dsp_xcalloc((size_t)n, sizeof(*cfg->redis.sentinels));
    }
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(seq, (unsigned)i);
        struct ms_redis_addr *a = &cfg->redis.sentinels[cfg->redis.nsentinels];

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            err_at(c, e, "redis.sentinels[%d] must be a string such as \"10.0.0.1:26379\"", i);
        } else if (parse_host_port(config_setting_get_string(e), a, err, sizeof(err)) != 0) {
            err_at(c, e, "redis.sentinels[%d]: %s", i, err);
        } else {
            cfg->redis.nsentinels++;
        }
    }
    if (get_str(c, g, "redis", "master_name", 0, &v) == 1) {
        int ok = strlen(v) <= 255;
        for (const char *p = v; *p && ok; p++) {
            ok = (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f;
        }
        if (!ok) {
            err_at(c, name,
                   "redis.master_name must be printable ASCII without spaces "
                   "(at most 255 bytes)");
        } else {
            cfg->redis.master_name = dsp_xstrdup(v);
        }
    }
    if (get_str(c, g, "redis", "sentinel_password", 1, &v) == 1 && *v != '\0') {
        cfg->redis.sentinel_password = dsp_xstrdup(v);
    }
    if (seq != NULL && name == NULL) {
        err_at(c, seq, "redis.sentinels needs redis.master_name (the name the sentinels monitor)");
    } else if (seq == NULL && name != NULL) {
        err_at(c, name, "redis.master_name needs redis.sentinels");
    } else if (seq == NULL && config_setting_get_member(g, "sentinel_password") != NULL) {
        err_at(c, config_setting_get_member(g, "sentinel_password"),
               "redis.sentinel_password needs redis.sentinels");
    }
    if (seq != NULL) {
        const char *both = config_setting_get_member(g, "host") != NULL   ? "host"
                           : config_setting_get_member(g, "port") != NULL ? "port"
                                                                          : NULL;
        if (both != NULL) {
            err_at(c, config_setting_get_member(g, both),
                   "redis.%s and redis.sentinels exclude each other: with sentinels the master "
                   "is the one they name",
                   both);
        }
    }
}

static void parse_redis(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *g = get_group(c, root, "", "redis");
    const char *v;
    int tls = 0;

    if (g == NULL) {
        return;
    }
    check_keys(c, g, "redis", redis_keys);
    cfg->redis.enabled = 1;
    cfg->redis.port = 6379;
    cfg->redis.resync_ms = 30000;
    cfg->redis.connect_timeout_ms = 2000;
    cfg->redis.command_timeout_ms = 2000;
    cfg->redis.host = dsp_xstrdup(get_str(c, g, "redis", "host", 0, &v) == 1 ? v : "127.0.0.1");
    get_int(c, g, "redis", "port", 1, 65535, &cfg->redis.port);
    if (get_str(c, g, "redis", "password", 1, &v) == 1 && *v != '\0') {
        cfg->redis.password = dsp_xstrdup(v);
    }
    if (get_str(c, g, "redis", "user", 1, &v) == 1 && *v != '\0') {
        cfg->redis.user = dsp_xstrdup(v);
        if (cfg->redis.password == NULL) {
            err_at(c, config_setting_get_member(g, "user"),
                   "redis.user needs redis.password (AUTH user password)");
        }
    }
    /* Redis itself allows 16 databases unless its `databases` setting says more. */
    get_int(c, g, "redis", "db", 0, 1000000, &cfg->redis.db);
    get_int(c, g, "redis", "resync_ms", 100, MS_MAX_TIMEOUT_MS, &cfg->redis.resync_ms);
    get_int(c, g, "redis", "connect_timeout_ms", 1, MS_MAX_TIMEOUT_MS,
            &cfg->redis.connect_timeout_ms);
    get_int(c, g, "redis", "command_timeout_ms", 1, MS_MAX_TIMEOUT_MS,
            &cfg->redis.command_timeout_ms);
    /* Debian's hiredis (0.14) has no TLS; say so rather than call the key unknown. */
    if (get_bool(c, g, "redis", "tls", &tls) == 1 && tls) {
        err_at(c, config_setting_get_member(g, "tls"),
               "redis.tls: TLS to Redis is not supported by this build's hiredis (0.14); "
               "use a local TLS tunnel (stunnel, spiped) to the Redis server");
    }
    parse_sentinels(c, g, cfg);
}

/* "name:port" where name is a host name (not an IP, not "localhost", which net_parse_addr()
 * takes): returns 1 and fills <b>, 0 when <v> is no such thing, -1 with a reason in <err> for a
 * name with a bad port. */
static int parse_backend_name(const char *v, struct ms_backend *b, char *err, size_t errlen)
{
    const char *colon = strrchr(v, ':');
    char host[TLS_MAX_NAME + 2];
    size_t hlen;
    unsigned long port = 0;
    int alpha = 0;

    if (colon == NULL || v[0] == '[' || colon == v) {
        return 0;
    }
    hlen = (size_t)(colon - v);
    if (hlen >= sizeof(host)) {
        return 0;
    }
    for (size_t i = 0; i < hlen; i++) {
        char ch = v[i];

        host[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
        alpha |= (host[i] >= 'a' && host[i] <= 'z') || host[i] == '-' || host[i] == '_';
    }
    if (hlen > 1 && host[hlen - 1] == '.') {
        hlen--; /* "app.internal." is fully qualified: the same name */
    }
    host[hlen] = '\0';
    /* Digits and dots only is a (bad) IPv4 address, never a name to send to DNS. */
    if (!alpha || !valid_hostname(host)) {
        return 0;
    }
    for (const char *p = colon + 1; *p; p++) {
        if (*p < '0' || *p > '9' || port > 65535) {
            port = 0;
            break;
        }
        port = port * 10 + (unsigned long)(*p - '0');
    }
    if (port == 0 || port > 65535) {
        snprintf(err, errlen, "bad port in address \"%s\"", v);
        return -1;
    }
    free(b->address);
    free(b->name);
    b->name = dsp_xstrdup(host);
    b->port = (uint16_t)port;
    b->address = dsp_xmalloc(hlen + 8);
    snprintf(b->address, hlen + 8, "%s:%lu", host, port);
    memset(&b->ss, 0, sizeof(b->ss));
    b->ss.ss_family = AF_UNSPEC;
    b->sslen = 0;
    return 1;
}

/* dns = { servers = [ "127.0.0.1:53" ]; resolve_ms; min_ttl_ms; timeout_ms; }: how the master
 * resolves backend names (master/ms_dns.c). */
static void parse_dns(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *g = get_group(c, root, "", "dns");
    config_setting_t *s;
    size_t len = 0;

    cfg->dns.resolve_ms = 30000;
    cfg->dns.min_ttl_ms = 1000;
    cfg->dns.timeout_ms = 2000;
    if (g == NULL) {
        return;
    }
    check_keys(c, g, "dns", dns_keys);
    get_int(c, g, "dns", "resolve_ms", 100, MS_MAX_TIMEOUT_MS, &cfg->dns.resolve_ms);
    get_int(c, g, "dns", "min_ttl_ms", 0, MS_MAX_TIMEOUT_MS, &cfg->dns.min_ttl_ms);
    get_int(c, g, "dns", "timeout_ms", 10, 60000, &cfg->dns.timeout_ms);
    if (cfg->dns.min_ttl_ms > cfg->dns.resolve_ms) {
        config_setting_t *m = config_setting_get_member(g, "min_ttl_ms");
        err_at(c, m != NULL ? m : config_setting_get_member(g, "resolve_ms"),
               "dns.min_ttl_ms (%d) is more than dns.resolve_ms (%d)", cfg->dns.min_ttl_ms,
               cfg->dns.resolve_ms);
    }
    if ((s = get_seq(c, g, "dns", "servers")) == NULL || config_setting_length(s) == 0) {
        return;
    }
    cfg->dns.servers = dsp_xcalloc((size_t)config_setting_length(s), 56);
    for (int i = 0; i < config_setting_length(s); i++) {
        config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v = config_setting_type(e) == CONFIG_TYPE_STRING ? config_setting_get_string(e)
                                                                     : NULL;
        struct sockaddr_storage ss;
        socklen_t sl;
        char err[256], buf[64], with_port[80];

        if (v != NULL && strchr(v, ':') == NULL) {
            snprintf(with_port, sizeof(with_port), "%s:53", v); /* the port may be left out */
            v = with_port;
        } else if (v != NULL && v[0] != '[' && strchr(v, ':') != strrchr(v, ':')) {
            snprintf(with_port, sizeof(with_port), "[%s]:53", v); /* bare IPv6 */
            v = with_port;
        }
        if (v == NULL || net_parse_addr(v, 0, &ss, &sl, err, sizeof(err)) != 0 ||
            is_wildcard_addr(&ss)) {
            err_at(c, e, "dns.servers[%d] must be \"ip\" or \"ip:port\"%s%s", i,
                   v != NULL ? ": " : "", v != NULL ? v : "");
            continue;
        }
        net_addr_str((struct sockaddr *)&ss, buf, sizeof(buf));
        len += (size_t)snprintf(cfg->dns.servers + len, 56, "%s%s", len > 0 ? "," : "", buf);
    }
}

/* "unix:/path": a Unix-domain socket. The path must be absolute and fit sun_path; whether it
 * exists is not checked (the backend may create it later, like a TCP backend may start later). */
static int parse_backend_unix(const char *v, struct ms_backend *b, char *err, size_t errlen)
{
    const char *path = v + NET_UNIX_PREFIX_LEN;
    size_t len = strlen(path);
    struct sockaddr_un sun;
    socklen_t sl;

    for (const char *p = path; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            snprintf(err, errlen, "unix socket path of \"%.*s...\" has a control character",
                     (int)(p - v), v);
            return -1;
        }
    }
    if (len == 0 || path[0] != '/') {
        snprintf(err, errlen, "\"%s\": a unix socket backend is \"unix:/absolute/path\"", v);
        return -1;
    }
    if (net_unix_addr(path, len, &sun, &sl) != 0) {
        snprintf(err, errlen, "unix socket path \"%s\" is %zu bytes, longer than the %zu allowed",
                 path, len, sizeof(sun.sun_path) - 1);
        return -1;
    }
    memset(&b->ss, 0, sizeof(b->ss));
    memcpy(&b->ss, &sun, sl);
    b->sslen = sl;
    free(b->name);
    b->name = NULL;
    free(b->address);
    b->address = dsp_xstrdup(v);
    return 0;
}

int ms_parse_backend_addr(const char *v, struct ms_backend *b, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char buf[80];
    int named;

    if (strncmp(v, NET_UNIX_PREFIX, NET_UNIX_PREFIX_LEN) == 0) {
        return parse_backend_unix(v, b, err, errlen);
    }
    if (strncmp(v, "localhost:", 10) != 0 && (named = parse_backend_name(v, b, err, errlen)) != 0) {
        return named == 1 ? 0 : -1;
    }
    if (net_parse_addr(v, 0, &ss, &len, err, errlen) != 0) {
        return -1;
    }
    if (is_wildcard_addr(&ss)) {
        snprintf(err, errlen, "\"%s\" is a wildcard address, not a backend", v);
        return -1;
    }
    b->ss = ss;
    b->sslen = len;
    free(b->name);
    b->name = NULL;
    free(b->address);
    b->address = dsp_xstrdup(net_addr_str((struct sockaddr *)&ss, buf, sizeof(buf)));
    return 0;
}

static void parse_backend(struct ctx *c, config_setting_t *e, const char *where,
                          struct ms_backend *b)
{
    config_setting_t *as = e;
    char err[256];

    b->weight = 1;
    b->line = (int)config_setting_source_line(e);
    if (config_setting_is_group(e)) {
        const char *v;

        check_keys(c, e, where, backend_keys);
        get_int(c, e, where, "weight", 1, MS_MAX_WEIGHT, &b->weight);
        if (get_str(c, e, where, "address", 0, &v) != 1) {
            if (config_setting_get_member(e, "address") == NULL) {
                err_at(c, e, "%s has no address", where);
            }
            return;
        }
        as = config_setting_get_member(e, "address");
    } else if (config_setting_type(e) != CONFIG_TYPE_STRING) {
        err_at(c, e,
               "%s must be \"ip:port\", \"name:port\", \"unix:/path\" or "
               "{ address = \"ip:port\"; weight = N; }",
               where);
        return;
    }
    if (ms_parse_backend_addr(config_setting_get_string(as), b, err, sizeof(err)) != 0) {
        err_at(c, as, "%s: %s", where, err);
    }
}

static void parse_health(struct ctx *c, config_setting_t *g, const char *where, struct ms_health *h)
{
    const char *v;

    check_keys(c, g, where, health_keys);
    h->enabled = 1;
    if (get_str(c, g, where, "path", 0, &v) == 1) {
        if (!ms_valid_url_path(v)) {
            err_at(c, config_setting_get_member(g, "path"),
                   "%s.path \"%s\" must start with '/' and contain no spaces", where, v);
        } else {
            free(h->path);
            h->path = dsp_xstrdup(v);
        }
    }
    get_int(c, g, where, "interval_ms", 1, MS_MAX_TIMEOUT_MS, &h->interval_ms);
    get_int(c, g, where, "timeout_ms", 1, MS_MAX_TIMEOUT_MS, &h->timeout_ms);
    get_int(c, g, where, "fall", 1, MS_MAX_HEALTH_COUNT, &h->fall);
    get_int(c, g, where, "rise", 1, MS_MAX_HEALTH_COUNT, &h->rise);
    if (get_str(c, g, where, "start", 0, &v) == 1) {
        if (strcmp(v, "up") == 0) {
            h->start_down = 0;
        } else if (strcmp(v, "down") == 0) {
            h->start_down = 1;
        } else {
            err_at(c, config_setting_get_member(g, "start"),
                   "%s.start \"%s\" must be \"up\" or \"down\"", where, v);
        }
    }
}

struct be_order {
    const char *address;
    size_t i;
};

static int cmp_be_order(const void *a, const void *b)
{
    const struct be_order *x = a, *y = b;
    int r = strcmp(x->address, y->address);

    return r != 0 ? r : (x->i > y->i) - (x->i < y->i);
}

void ms_backend_dups(const struct ms_backend *b, size_t n, size_t *first)
{
    struct be_order *o = dsp_xcalloc(n + 1, sizeof(*o));
    size_t m = 0;

    for (size_t i = 0; i < n; i++) {
        first[i] = i;
        if (b[i].address != NULL) {
            o[m].address = b[i].address;
            o[m].i = i;
            m++;
        }
    }
    qsort(o, m, sizeof(*o), cmp_be_order);
    for (size_t k = 1; k < m; k++) {
        if (strcmp(o[k].address, o[k - 1].address) == 0) {
            first[o[k].i] = first[o[k - 1].i];
        }
    }
    free(o);
}

/* Each backend of <svc> that repeats an earlier one's address, with that one's line. */
static void report_duplicate_backends(struct ctx *c, config_setting_t *seq,
                                      const struct ms_service *svc, const char *where)
{
    size_t *first = dsp_xcalloc(svc->nbackends + 1, sizeof(*first));

    ms_backend_dups(svc->backends, svc->nbackends, first);
    for (size_t i = 0; i < svc->nbackends; i++) {
        if (first[i] != i) {
            err_at(c, config_setting_get_elem(seq, (unsigned)i),
                   "duplicate backend %s in service '%s' (already at line %d)",
                   svc->backends[i].address, svc->name ? svc->name : where,
                   svc->backends[first[i]].line);
        }
    }
    free(first);
}

void ms_service_init(struct ms_service *svc)
{
    memset(svc, 0, sizeof(*svc));
    svc->balance = SHM_BALANCE_RR;
    svc->source = SHM_SOURCE_FILE;
    svc->retries = 1;
    svc->passive_failures = (int)SHM_LB_PASSIVE_FAILURES;
    svc->max_ejection_percent = (int)SHM_LB_MAX_EJECTION_PERCENT;
    svc->connect_timeout_ms = 2000;
    svc->response_timeout_ms = 30000;
    svc->health.path = dsp_xstrdup("/health");
    svc->health.interval_ms = 30000;
    svc->health.timeout_ms = 2000;
    svc->health.fall = 1;
    svc->health.rise = 3;
    svc->circuit.failures = 5;
    svc->circuit.open_ms = 30000;
    svc->tls_verify = 1;
}

void ms_service_dispose(struct ms_service *svc)
{
    for (size_t j = 0; j < svc->nbackends; j++) {
        free(svc->backends[j].address);
        free(svc->backends[j].name);
    }
    free(svc->backends);
    free(svc->name);
    free(svc->health.path);
    free(svc->tls_sni);
    free(svc->tls_ca);
    free(svc->tls_ca_pem);
    free(svc->tls_client_cert);
    free(svc->tls_client_key);
    free(svc->tls_client_cert_pem);
    if (svc->tls_client_key_pem != NULL) {
        explicit_bzero(svc->tls_client_key_pem, strlen(svc->tls_client_key_pem));
        free(svc->tls_client_key_pem);
    }
    memset(svc, 0, sizeof(*svc));
}

int ms_parse_protocol(const char *v, uint32_t *out)
{
    if (strcmp(v, "http1") == 0) {
        *out = SHM_PROTO_HTTP1;
    } else if (strcmp(v, "h2") == 0) {
        *out = SHM_PROTO_H2;
    } else if (strcmp(v, "grpc") == 0) {
        *out = SHM_PROTO_GRPC;
    } else {
        return -1;
    }
    return 0;
}

int ms_parse_balance(const char *v, uint32_t *out)
{
    if (strcmp(v, "round-robin") == 0) {
        *out = SHM_BALANCE_RR;
    } else if (strcmp(v, "least-conn") == 0) {
        *out = SHM_BALANCE_LEASTCONN;
    } else if (strcmp(v, "ip-hash") == 0) {
        *out = SHM_BALANCE_IPHASH;
    } else {
        return -1;
    }
    return 0;
}

/* client_cert / client_key of a service (mTLS to its backends): both or neither, read with the
 * same reader and checks as the listeners' certificates (a key that does not match its
 * certificate is an error of the client_key line). */
static void parse_service_client_cert(struct ctx *c, config_setting_t *g, const char *where,
                                      struct ms_service *svc)
{
    config_setting_t *cs = config_setting_get_member(g, "client_cert");
    config_setting_t *ks = config_setting_get_member(g, "client_key");
    const char *cv = NULL, *kv = NULL;
    struct ms_cert ct;
    char err[768];
    int rc;

    if (cs == NULL && ks == NULL) {
        return;
    }
    if (get_str(c, g, where, "client_cert", 0, &cv) != 1 ||
        get_str(c, g, where, "client_key", 0, &kv) != 1) {
        if (cs == NULL || ks == NULL) {
            err_at(c, cs != NULL ? cs : ks, "%s.%s needs %s.%s as well", where,
                   cs != NULL ? "client_cert" : "client_key", where,
                   cs != NULL ? "client_key" : "client_cert");
        }
        return;
    }
    svc->tls_client_cert = resolve(c, cv);
    svc->tls_client_key = resolve(c, kv);
    memset(&ct, 0, sizeof(ct));
    ct.cert = svc->tls_client_cert;
    ct.key = svc->tls_client_key;
    rc = ms_tls_load_cert(&ct, TLS_V12, 0, err, sizeof(err));
    ct.cert = ct.key = NULL; /* the service's */
    if (rc != 0) {
        /* On the line of the file at fault: the key's when the pair does not match. */
        int key = strstr(err, "do not match") != NULL || strstr(err, "private key") != NULL ||
                  strstr(err, "is encrypted") != NULL ||
                  (strstr(err, svc->tls_client_key) != NULL &&
                   strstr(err, svc->tls_client_cert) == NULL);

        err_at(c, key ? ks : cs, "%s.%s: %s", where, key ? "client_key" : "client_cert", err);
    } else {
        svc->tls_client_cert_pem = ct.cert_pem;
        svc->tls_client_key_pem = ct.key_pem;
        ct.cert_pem = ct.key_pem = NULL;
    }
    ms_cert_dispose(&ct);
}

/* tls / verify / ca / sni of a service: TLS to its backends. The CA bundle is read here so that
 * workers, which may run as another user, never open files, and a bad bundle fails the load. */
static void parse_service_tls(struct ctx *c, config_setting_t *g, const char *where,
                              struct ms_service *svc)
{
    const char *v;
    char err[512];

    get_bool(c, g, where, "tls", &svc->tls);
    get_bool(c, g, where, "verify", &svc->tls_verify);
    if (get_str(c, g, where, "sni", 0, &v) == 1) {
        char *h = ms_normalise_host(v);

        if (h == NULL || h[0] == '*') {
            err_at(c, config_setting_get_member(g, "sni"), "%s.sni \"%s\" must be a host name",
                   where, v);
            free(h);
        } else {
            svc->tls_sni = h;
        }
    }
    if (get_str(c, g, where, "ca", 0, &v) == 1) {
        config_setting_t *s = config_setting_get_member(g, "ca");

        svc->tls_ca = resolve(c, v);
        if (ms_tls_read_ca(svc->tls_ca, &svc->tls_ca_pem, err, sizeof(err)) != 0) {
            err_at(c, s, "%s.ca: %s", where, err);
        }
    }
    parse_service_client_cert(c, g, where, svc);
    if (!svc->tls) {
        static const char *const needs_tls[] = {"verify",      "ca",         "sni",
                                                "client_cert", "client_key", NULL};

        for (const char *const *k = needs_tls; *k != NULL; k++) {
            config_setting_t *s = config_setting_get_member(g, *k);
            if (s != NULL) {
                err_at(c, s, "%s.%s applies to TLS backends only: add tls = true", where, *k);
            }
        }
    }
}

static void parse_service(struct ctx *c, config_setting_t *g, int idx, struct ms_config *cfg)
{
    struct ms_service *svc = &cfg->services[idx];
    config_setting_t *s;
    const char *v;
    long dup;
    char where[64], sub[96];

    snprintf(where, sizeof(where), "services[%d]", idx);
    ms_service_init(svc);
    svc->line = (int)config_setting_source_line(g);
    if (!config_setting_is_group(g)) {
        err_at(c, g, "%s must be a group { name = \"...\"; backends = [ ... ]; }", where);
        return;
    }
    check_keys(c, g, where, service_keys);

    switch (get_str(c, g, where, "name", 0, &v)) {
    case 0:
        err_at(c, g, "%s has no name", where);
        break;
    case 1:
        s = config_setting_get_member(g, "name");
        if (!ms_valid_name(v)) {
            err_at(c, s, "service name \"%s\" may only use letters, digits, '_', '.' and '-'", v);
            break;
        }
        dup = svc_lookup(c, cfg, v);
        if (dup >= 0) {
            err_at(c, s, "duplicate service name '%s' (already at line %d)", v,
                   cfg->services[dup].line);
        }
        svc->name = dsp_xstrdup(v);
        if (dup < 0) {
            svc_insert(c, cfg, (size_t)idx);
        }
        break;
    default:
        break;
    }

    if (get_str(c, g, where, "balance", 0, &v) == 1) {
        if (ms_parse_balance(v, &svc->balance) != 0) {
            err_at(c, config_setting_get_member(g, "balance"),
                   "%s.balance \"%s\" must be round-robin, least-conn or ip-hash", where, v);
        }
    }

    if ((s = get_seq(c, g, where, "backends")) != NULL && config_setting_length(s) > 0) {
        size_t n = (size_t)config_setting_length(s);

        svc->backends = dsp_xcalloc(n, sizeof(*svc->backends));
        svc->nbackends = n;
        for (size_t i = 0; i < n; i++) {
            config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            struct ms_backend *b = &svc->backends[i];

            snprintf(sub, sizeof(sub), "%s.backends[%zu]", where, i);
            parse_backend(c, e, sub, b);
        }
        report_duplicate_backends(c, s, svc, where);
    }

    snprintf(sub, sizeof(sub), "%s.health", where);
    if ((s = get_group(c, g, where, "health")) != NULL) {
        parse_health(c, s, sub, &svc->health);
    }
    snprintf(sub, sizeof(sub), "%s.circuit_breaker", where);
    if ((s = get_group(c, g, where, "circuit_breaker")) != NULL) {
        check_keys(c, s, sub, circuit_keys);
        svc->circuit.enabled = 1;
        get_int(c, s, sub, "failures", 1, MS_MAX_FAILURES, &svc->circuit.failures);
        get_int(c, s, sub, "open_ms", 1, MS_MAX_TIMEOUT_MS, &svc->circuit.open_ms);
        get_bool(c, s, sub, "count_5xx", &svc->circuit.count_5xx);
    }
    get_int(c, g, where, "retries", 0, MS_MAX_RETRIES, &svc->retries);
    get_int(c, g, where, "passive_failures", 1, MS_MAX_FAILURES, &svc->passive_failures);
    get_int(c, g, where, "max_ejection_percent", 0, 100, &svc->max_ejection_percent);
    get_int(c, g, where, "connect_timeout_ms", 1, MS_MAX_TIMEOUT_MS, &svc->connect_timeout_ms);
    get_int(c, g, where, "response_timeout_ms", 1, MS_MAX_TIMEOUT_MS, &svc->response_timeout_ms);
    get_int(c, g, where, "stream_idle_timeout_ms", 1, MS_MAX_TIMEOUT_MS,
            &svc->stream_idle_timeout_ms);
    get_int(c, g, where, "resolve_ms", 100, MS_MAX_TIMEOUT_MS, &svc->resolve_ms);
    if (get_str(c, g, where, "protocol", 0, &v) == 1 && ms_parse_protocol(v, &svc->protocol) != 0) {
        err_at(c, config_setting_get_member(g, "protocol"),
               "%s.protocol \"%s\" must be http1, h2 or grpc", where, v);
    }
    parse_service_tls(c, g, where, svc);
    for (size_t i = 0; svc->tls && svc->tls_verify && svc->tls_sni == NULL && i < svc->nbackends;
         i++) {
        if (svc->backends[i].ss.ss_family == AF_UNIX) {
            err_line(c, config_setting_source_file(g), (unsigned)svc->backends[i].line,
                     "%s: backend %s is a unix socket, which has no address to verify its "
                     "certificate against: set %s.sni (or verify = false)",
                     where, svc->backends[i].address, where);
            break;
        }
    }
}

static void parse_services(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *seq = get_seq(c, root, "", "services");
    int n = seq ? config_setting_length(seq) : 0;

    if (n == 0) {
        return;
    }
    cfg->services = dsp_xcalloc((size_t)n, sizeof(*cfg->services));
    cfg->nservices = (size_t)n;
    c->svc_mask = 15;
    while (c->svc_mask < 2 * (size_t)n) {
        c->svc_mask = c->svc_mask * 2 + 1;
    }
    c->svc_ix = dsp_xcalloc(c->svc_mask + 1, sizeof(*c->svc_ix));
    for (int i = 0; i < n; i++) {
        parse_service(c, config_setting_get_elem(seq, (unsigned)i), i, cfg);
    }
}

char *ms_normalise_host(const char *v)
{
    char *h = dsp_xstrdup(v);
    size_t n = strlen(h);
    const char *name;

    for (size_t i = 0; i < n; i++) {
        if (h[i] >= 'A' && h[i] <= 'Z') {
            h[i] = (char)(h[i] - 'A' + 'a');
        }
    }
    /* "*." must not shrink into "*", which would match every host. */
    if (n > 1 && h[n - 1] == '.' && h[n - 2] != '*') {
        h[--n] = '\0';
    }
    if (strcmp(h, "*") == 0) {
        return h;
    }
    name = (h[0] == '*' && h[1] == '.') ? h + 2 : h;
    if (!valid_hostname(name)) {
        free(h);
        return NULL;
    }
    return h;
}

static void parse_methods(struct ctx *c, config_setting_t *seq, const char *where, uint64_t *out)
{
    int n = config_setting_length(seq);

    if (n == 0) {
        err_at(c, seq, "%s.methods is empty (leave it out to allow every method)", where);
        return;
    }
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(seq, (unsigned)i);
        int m;

        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            err_at(c, e, "%s.methods[%d] must be a string such as \"GET\"", where, i);
            continue;
        }
        m = ms_method_from_name(config_setting_get_string(e));
        if (m < 0) {
            err_at(c, e, "%s.methods: unknown HTTP method \"%s\"", where,
                   config_setting_get_string(e));
            continue;
        }
        *out |= 1ULL << m;
    }
}

void ms_route_init(struct ms_route *r)
{
    memset(r, 0, sizeof(*r));
    r->path = dsp_xstrdup("/");
    r->source = SHM_SOURCE_FILE;
}

void ms_route_dispose(struct ms_route *r)
{
    ms_mw_strv_free(r->mw_names, r->nmw);
    free(r->mw_ids);
    free(r->host);
    free(r->path);
    free(r->service);
    for (size_t i = 0; i < r->nsplit; i++) {
        free(r->split[i].service);
    }
    free(r->split);
    memset(r, 0, sizeof(*r));
}

/* A route's middlewares = ["a", "b"]: names of middlewares defined at top level, in order. */
static void parse_route_mws(struct ctx *c, config_setting_t *g, const char *where,
                            const struct ms_config *cfg, struct ms_route *r)
{
    config_setting_t *seq = get_seq(c, g, where, "middlewares");
    int n = seq ? config_setting_length(seq) : 0;
    char err[256];

    if (n <= 0) {
        return;
    }
    r->mw_names = dsp_xcalloc((size_t)n, sizeof(*r->mw_names));
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(seq, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            err_at(c, e, "%s.middlewares[%d] must be a string (a middleware's name)", where, i);
            return;
        }
        r->mw_names[r->nmw++] = dsp_xstrdup(config_setting_get_string(e));
    }
    if (ms_mw_resolve(cfg, r->mw_names, r->nmw, &r->mw_ids, err, sizeof(err)) != 0) {
        err_at(c, seq, "%s.middlewares: %s", where, err);
    }
}

int ms_split_check(const struct ms_route *r, char *why, size_t whylen)
{
    long total = 0;

    for (size_t i = 0; i < r->nsplit; i++) {
        total += r->split[i].weight;
        for (size_t j = 0; j < i && r->split[i].service != NULL; j++) {
            if (r->split[j].service != NULL &&
                strcmp(r->split[i].service, r->split[j].service) == 0) {
                snprintf(why, whylen, "service '%s' is listed twice", r->split[i].service);
                return -1;
            }
        }
    }
    if (r->nsplit > 0 && total == 0) {
        snprintf(why, whylen, "every weight is 0 (at least one must be above 0)");
        return -1;
    }
    return 0;
}

void ms_split_finish(struct ms_route *r)
{
    if (r->nsplit > 0 && r->split[0].service != NULL) {
        free(r->service);
        r->service = dsp_xstrdup(r->split[0].service);
        r->service_idx = r->split[0].service_idx;
    }
}

/* split = ( { service = "..."; weight = N; }, ... ) of route <where> into <r>. */
static void parse_split(struct ctx *c, config_setting_t *seq, const char *where, struct ms_route *r,
                        const struct ms_config *cfg)
{
    int n = config_setting_length(seq);
    char sub[96], why[320];
    const char *v;
    long found;

    if (n == 0 || n > MS_MAX_SPLIT) {
        err_at(c, seq, "%s.split must list 1 to %d { service = \"...\"; weight = N; } (has %d)",
               where, MS_MAX_SPLIT, n);
        return;
    }
    r->split = dsp_xcalloc((size_t)n, sizeof(*r->split));
    r->nsplit = (size_t)n;
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(seq, (unsigned)i);
        struct ms_split *sp = &r->split[i];

        sp->weight = 1;
        snprintf(sub, sizeof(sub), "%s.split[%d]", where, i);
        if (!config_setting_is_group(e)) {
            err_at(c, e, "%s must be a group { service = \"...\"; weight = N; }", sub);
            continue;
        }
        check_keys(c, e, sub, split_keys);
        switch (get_str(c, e, sub, "service", 0, &v)) {
        case 0:
            err_at(c, e, "%s has no service", sub);
            break;
        case 1:
            sp->service = dsp_xstrdup(v);
            found = svc_lookup(c, cfg, v);
            if (found >= 0) {
                sp->service_idx = (size_t)found;
            } else {
                err_at(c, config_setting_get_member(e, "service"),
                       "%s: unknown service '%s' (not in services)", sub, v);
            }
            break;
        default:
            break;
        }
        get_int(c, e, sub, "weight", 0, MS_MAX_SPLIT_WEIGHT, &sp->weight);
    }
    if (ms_split_check(r, why, sizeof(why)) != 0) {
        err_at(c, seq, "%s.split: %s", where, why);
    }
    ms_split_finish(r);
}

static void parse_route(struct ctx *c, config_setting_t *g, int idx, struct ms_config *cfg)
{
    struct ms_route *r = &cfg->routes[idx];
    config_setting_t *s;
    const char *v;
    long found;
    char where[64];

    snprintf(where, sizeof(where), "routes[%d]", idx);
    ms_route_init(r);
    r->line = (int)config_setting_source_line(g);
    if (!config_setting_is_group(g)) {
        err_at(c, g, "%s must be a group { host = \"...\"; service = \"...\"; }", where);
        return;
    }
    check_keys(c, g, where, route_keys);

    switch (get_str(c, g, where, "host", 0, &v)) {
    case 0:
        err_at(c, g, "%s has no host (use \"*\" to match every host)", where);
        break;
    case 1:
        r->host = ms_normalise_host(v);
        if (r->host == NULL) {
            err_at(c, config_setting_get_member(g, "host"),
                   "%s.host \"%s\" must be \"*\", \"*.suffix\" or a host name (no port)", where, v);
        }
        break;
    default:
        break;
    }

    if (get_str(c, g, where, "path", 0, &v) == 1) {
        if (!ms_valid_url_path(v)) {
            err_at(c, config_setting_get_member(g, "path"),
                   "%s.path \"%s\" must start with '/' and contain no spaces", where, v);
        } else {
            free(r->path);
            r->path = dsp_xstrdup(v);
        }
    }
    if ((s = get_seq(c, g, where, "methods")) != NULL) {
        parse_methods(c, s, where, &r->methods);
    }
    get_int(c, g, where, "priority", INT_MIN, INT_MAX, &r->priority);
    parse_route_mws(c, g, where, cfg, r);
    get_bool(c, g, where, "sticky", &r->sticky);

    if ((s = config_setting_get_member(g, "split")) != NULL) {
        if (config_setting_get_member(g, "service") != NULL) {
            err_at(c, s,
                   "%s has both service and split (a route names one service, or splits "
                   "its requests among several)",
                   where);
        }
        if ((s = get_seq(c, g, where, "split")) != NULL) {
            parse_split(c, s, where, r, cfg);
        }
        return;
    }
    if (r->sticky) {
        err_at(c, config_setting_get_member(g, "sticky"), "%s: sticky applies to a split only",
               where);
    }
    switch (get_str(c, g, where, "service", 0, &v)) {
    case 0:
        err_at(c, g, "%s has no service (or split)", where);
        break;
    case 1:
        r->service = dsp_xstrdup(v);
        found = svc_lookup(c, cfg, v);
        if (found >= 0) {
            r->service_idx = (size_t)found;
            return;
        }
        err_at(c, config_setting_get_member(g, "service"),
               "%s: unknown service '%s' (not in services)", where, v);
        break;
    default:
        break;
    }
}

/* ---- middlewares = ( { name; type; ...the type's keys }, ... ) ------------------------------- */
/* A libconfig group as a middleware's key source (master/ms_mw.h). */
struct lc_src {
    struct ctx *c;
    config_setting_t *g;
};

static config_setting_t *lc_member(struct ms_mw_src *s, const char *key)
{
    return config_setting_get_member(((struct lc_src *)s->impl)->g, key);
}

static int lc_str(struct ms_mw_src *s, const char *key, const char **out)
{
    struct lc_src *l = s->impl;
    int r = get_str(l->c, l->g, s->where, key, 1, out);

    s->errors += r < 0;
    return r;
}

static int lc_num(struct ms_mw_src *s, const char *key, long min, long max, long *out)
{
    struct lc_src *l = s->impl;
    int r = get_long(l->c, l->g, s->where, key, min, max, out);

    s->errors += r < 0;
    return r;
}

static int lc_bool(struct ms_mw_src *s, const char *key, int *out)
{
    struct lc_src *l = s->impl;
    int r = get_bool(l->c, l->g, s->where, key, out);

    s->errors += r < 0;
    return r;
}

static int lc_list(struct ms_mw_src *s, const char *key, char ***out, size_t *n)
{
    struct lc_src *l = s->impl;
    config_setting_t *seq = lc_member(s, key);
    int len;

    *out = NULL;
    *n = 0;
    if (seq == NULL) {
        return 0;
    }
    seq = get_seq(l->c, l->g, s->where, key);
    if (seq == NULL) {
        s->errors++;
        return -1;
    }
    len = config_setting_length(seq);
    *out = dsp_xcalloc((size_t)len + 1, sizeof(**out));
    for (int i = 0; i < len; i++) {
        config_setting_t *e = config_setting_get_elem(seq, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_STRING) {
            err_at(l->c, e, "%s.%s[%d] must be a string", s->where, key, i);
            s->errors++;
            ms_mw_strv_free(*out, *n);
            *out = NULL;
            *n = 0;
            return -1;
        }
        (*out)[(*n)++] = dsp_xstrdup(config_setting_get_string(e));
    }
    return 1;
}

static void lc_err(struct ms_mw_src *s, const char *key, const char *msg)
{
    struct lc_src *l = s->impl;
    config_setting_t *at = key != NULL ? lc_member(s, key) : NULL;

    err_at(l->c, at != NULL ? at : l->g, "%s", msg);
}

static const struct ms_mw_src_ops lc_ops = {
    .str = lc_str, .num = lc_num, .boolean = lc_bool, .list = lc_list, .err = lc_err};

static void parse_middleware(struct ctx *c, config_setting_t *g, int idx, struct ms_config *cfg)
{
    struct lc_src l = {c, g};
    struct ms_mw_src src = {.ops = &lc_ops, .impl = &l, .dir = c->dir};
    const struct ms_mw_type *t;
    const char *name = NULL, *type = NULL;
    char where[96];
    int line = (int)config_setting_source_line(g);

    snprintf(where, sizeof(where), "middlewares[%d]", idx);
    src.where = where;
    if (!config_setting_is_group(g)) {
        err_at(c, g, "%s must be a group { name = \"...\"; type = \"...\"; ... }", where);
        return;
    }
    if (get_str(c, g, where, "name", 0, &name) != 1 ||
        get_str(c, g, where, "type", 0, &type) != 1) {
        if (name == NULL && config_setting_get_member(g, "name") == NULL) {
            err_at(c, g, "%s has no name", where);
        }
        if (type == NULL && config_setting_get_member(g, "type") == NULL) {
            err_at(c, g, "%s has no type", where);
        }
        return;
    }
    for (size_t k = 0; k < cfg->nmws; k++) {
        if (strcmp(cfg->mws[k].name, name) == 0) {
            err_at(c, config_setting_get_member(g, "name"),
                   "%s: middleware '%s' is already defined on line %d", where, name,
                   cfg->mws[k].line);
            return;
        }
    }
    t = ms_mw_type_find(type);
    if (t != NULL) {
        const char *known[64];
        size_t n = 0;
        known[n++] = "name";
        known[n++] = "type";
        for (size_t k = 0; t->keys[k] != NULL && n < DSP_ARRAY_SIZE(known) - 1; k++) {
            known[n++] = t->keys[k];
        }
        known[n] = NULL;
        check_keys(c, g, where, known);
    }
    /* (Kept by name even when invalid: routes naming it get no second, misleading error.) */
    ms_mw_parse(&src, name, type, &cfg->mws[cfg->nmws]);
    cfg->mws[cfg->nmws].source = SHM_SOURCE_FILE;
    cfg->mws[cfg->nmws].line = line;
    cfg->nmws++;
}

static void parse_middlewares(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *seq = get_seq(c, root, "", "middlewares");
    int n = seq ? config_setting_length(seq) : 0;

    if (n == 0) {
        return;
    }
    cfg->mws = dsp_xcalloc((size_t)n, sizeof(*cfg->mws));
    for (int i = 0; i < n; i++) {
        parse_middleware(c, config_setting_get_elem(seq, (unsigned)i), i, cfg);
    }
}

static void parse_routes(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *seq = get_seq(c, root, "", "routes");
    int n = seq ? config_setting_length(seq) : 0;

    if (n == 0) {
        return;
    }
    cfg->routes = dsp_xcalloc((size_t)n, sizeof(*cfg->routes));
    cfg->nroutes = (size_t)n;
    for (int i = 0; i < n; i++) {
        parse_route(c, config_setting_get_elem(seq, (unsigned)i), i, cfg);
    }
}


/* errors = { expose_backend; list_services; pages = ( { status; file; }, ... ); }. The pages
 * are read here, like certificates (no blocking open, regular files of bounded size), so a
 * missing or unreadable page fails -t, the start and the reload with its line. */
static void parse_errors(struct ctx *c, config_setting_t *root, struct ms_config *cfg)
{
    config_setting_t *g = get_group(c, root, "", "errors");
    config_setting_t *seq;
    int n;

    if (g == NULL) {
        return;
    }
    check_keys(c, g, "errors", errors_keys);
    get_bool(c, g, "errors", "expose_backend", &cfg->errors.expose_backend);
    get_bool(c, g, "errors", "list_services", &cfg->errors.list_services);
    seq = get_seq(c, g, "errors", "pages");
    n = seq ? config_setting_length(seq) : 0;
    if (n == 0) {
        return;
    }
    cfg->errors.pages = dsp_xcalloc((size_t)n, sizeof(*cfg->errors.pages));
    for (int i = 0; i < n; i++) {
        config_setting_t *e = config_setting_get_elem(seq, (unsigned)i);
        struct ms_error_page *pg = &cfg->errors.pages[cfg->errors.npages];
        char where[64], err[512];
        const char *v;
        int status = 0, have_file;

        snprintf(where, sizeof(where), "errors.pages[%d]", i);
        if (!config_setting_is_group(e)) {
            err_at(c, e, "%s must be a group { status = 502; file = \"errors/502.html\"; }", where);
            continue;
        }
        check_keys(c, e, where, error_page_keys);
        switch (get_int(c, e, where, "status", 400, 599, &status)) {
        case 0:
            err_at(c, e, "%s has no status", where);
            continue;
        case 1:
            break;
        default:
            continue;
        }
        for (size_t k = 0; k < cfg->errors.npages; k++) {
            if (cfg->errors.pages[k].status == status) {
                err_at(c, config_setting_get_member(e, "status"),
                       "%s: a page for status %d is already given on line %d", where, status,
                       cfg->errors.pages[k].line);
                status = 0;
                break;
            }
        }
        have_file = get_str(c, e, where, "file", 0, &v);
        if (have_file == 0) {
            err_at(c, e, "%s has no file", where);
        }
        if (status == 0 || have_file != 1) {
            continue;
        }
        pg->status = status;
        pg->line = (int)config_setting_source_line(e);
        pg->file = resolve(c, v);
        cfg->errors.npages++;
        if (fs_read_regular(pg->file, MS_ERROR_PAGE_MAX, &pg->body, &pg->len, err, sizeof(err)) !=
            0) {
            err_at(c, config_setting_get_member(e, "file"), "%s.file: %s", where, err);
        } else if (memchr(pg->body, '\0', pg->len) != NULL) {
            err_at(c, config_setting_get_member(e, "file"), "%s.file: \"%s\" holds a NUL byte",
                   where, pg->file);
        }
    }
}

int ms_config_load(const char *path, int use_env, struct ms_config **out, char **errs)
{
    struct ms_config *cfg = dsp_xcalloc(1, sizeof(*cfg));
    struct ctx c = {0};
    struct conf_src src = {0};
    char rerr[1024];
    const char *efile;
    unsigned eline;
    config_t *lc;
    config_setting_t *root;

    *out = NULL;
    *errs = NULL;
    cfg->path = dsp_xstrdup(path);
    cfg->dir = dir_of(path);
    set_defaults(cfg);
    c.path = cfg->path;
    c.dir = cfg->dir;
    c.src = &src;

    lc = dsp_xmalloc(sizeof(*lc));
    config_init(lc);
    /* Relative @include names resolve against the file's folder like every other path. */
    if (conf_read(lc, path, cfg->dir, &src, rerr, sizeof(rerr), &efile, &eline) != 0) {
        err_line(&c, efile, eline, "%s", rerr);
        /* Messages point at file names owned by src: join them before it goes. */
        *errs = join_errors(&c);
        config_destroy(lc);
        free(lc);
    } else {
        root = config_root_setting(lc);
        check_keys(&c, root, "", top_keys);
        parse_top(&c, root, cfg);
        parse_admin(&c, root, cfg);
        parse_log(&c, root, cfg);
        parse_limits(&c, root, cfg);
        parse_listeners(&c, root, cfg, use_env);
        parse_trusted(&c, root, cfg);
        parse_tls(&c, root, cfg, use_env);
        parse_redis(&c, root, cfg);
        parse_dns(&c, root, cfg);
        parse_services(&c, root, cfg);
        parse_middlewares(&c, root, cfg);
        parse_routes(&c, root, cfg);
        parse_errors(&c, root, cfg);
        /* Messages point at file names owned by lc and src: join them before they go. */
        if (c.nerrs > 0) {
            *errs = join_errors(&c);
        }
        cfg->source = lc;
    }
    if (c.nerrs == 0 && cfg->source != NULL) {
        /* Kept with the tree: its settings name their files by alias (ms_config_file_of). */
        cfg->source_names = dsp_xmalloc(sizeof(src));
        memcpy(cfg->source_names, &src, sizeof(src));
    } else {
        conf_src_free(&src);
    }
    if (c.nerrs > 0) {
        if (*errs == NULL) {
            *errs = join_errors(&c);
        }
        ctx_dispose(&c);
        ms_config_free(cfg);
        return -1;
    }
    ctx_dispose(&c);
    *out = cfg;
    return 0;
}

void ms_config_drop_source(struct ms_config *cfg)
{
    if (cfg != NULL && cfg->source != NULL) {
        config_destroy(cfg->source);
        free(cfg->source);
        cfg->source = NULL;
    }
    if (cfg != NULL && cfg->source_names != NULL) {
        conf_src_free(cfg->source_names);
        free(cfg->source_names);
        cfg->source_names = NULL;
    }
}

const char *ms_config_file_of(const struct ms_config *cfg, const char *alias)
{
    const char *f = cfg->source_names ? conf_src_name(cfg->source_names, alias) : NULL;

    return f != NULL ? f : cfg->path;
}

void ms_config_free(struct ms_config *cfg)
{
    if (cfg == NULL) {
        return;
    }
    ms_config_drop_source(cfg);
    free(cfg->path);
    free(cfg->dir);
    free(cfg->user);
    free(cfg->group);
    free(cfg->pid_file);
    free(cfg->environment);
    free(cfg->admin.socket);
    free(cfg->admin.http);
    free(cfg->admin.http_allow);
    free(cfg->log.error);
    free(cfg->log.access);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        free(cfg->listeners[i].address);
        free(cfg->listeners[i].client_ca);
        free(cfg->listeners[i].client_ca_pem);
        free(cfg->listeners[i].health_uri);
    }
    free(cfg->listeners);
    free(cfg->trusted);
    free(cfg->tls.self_signed_cn);
    for (size_t i = 0; i < cfg->tls.ncerts; i++) {
        ms_cert_dispose(&cfg->tls.certs[i]);
    }
    free(cfg->tls.certs);
    ms_cert_dispose(&cfg->tls.self_signed);
    free(cfg->redis.host);
    free(cfg->dns.servers);
    free(cfg->redis.password);
    free(cfg->redis.user);
    for (size_t i = 0; i < cfg->redis.nsentinels; i++) {
        free(cfg->redis.sentinels[i].host);
    }
    free(cfg->redis.sentinels);
    free(cfg->redis.master_name);
    free(cfg->redis.sentinel_password);
    free(cfg->node_name);
    for (size_t i = 0; i < cfg->nservices; i++) {
        ms_service_dispose(&cfg->services[i]);
    }
    free(cfg->services);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        ms_route_dispose(&cfg->routes[i]);
    }
    free(cfg->routes);
    for (size_t i = 0; i < cfg->nmws; i++) {
        ms_mw_dispose(&cfg->mws[i]);
    }
    free(cfg->mws);
    for (size_t i = 0; i < cfg->errors.npages; i++) {
        free(cfg->errors.pages[i].file);
        free(cfg->errors.pages[i].body);
    }
    free(cfg->errors.pages);
    free(cfg);
}

int ms_method_from_name(const char *name)
{
    if (name == NULL) {
        return -1;
    }
    /* http_method_str() answers "<unknown>" past the last method; the bit mask holds 64. */
    for (int m = 0; m < 64; m++) {
        const char *s = http_method_str((enum http_method)m);
        if (strcmp(s, "<unknown>") == 0) {
            break;
        }
        if (strcasecmp(s, name) == 0) {
            return m;
        }
    }
    return -1;
}
