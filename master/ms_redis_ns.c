/* dispatcher: turns the Redis namespace into config entries. Every value goes through the same
 * checks as the file's (master/ms_config.c exports them), and the namespace is taken or refused
 * as a whole: one bad hash must not leave a fleet serving half of an operator's change. */
#include "master/ms_redis_ns.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dsp.h"
#include "common/log.h"
#include "master/ms_config.h"
#include "master/ms_mw.h"
#include "master/ms_tls.h"


static const char *const set_names[MS_RNS_KINDS] = {"services", "routes", "certs", "middlewares"};
static const char *const hash_names[MS_RNS_KINDS] = {"service:", "route:", "cert:", "middleware:"};

const char *ms_rns_set_name(int kind)
{
    return set_names[kind];
}

const char *ms_rns_hash_name(int kind)
{
    return hash_names[kind];
}

struct ms_rns *ms_rns_new(const char *environment)
{
    struct ms_rns *ns = dsp_xcalloc(1, sizeof(*ns));
    size_t n = strlen("dispatcher:") + strlen(environment) + 2;

    ns->prefix = dsp_xmalloc(n);
    snprintf(ns->prefix, n, "dispatcher:%s:", environment);
    return ns;
}

static void entry_dispose(struct ms_rns_entry *e)
{
    for (size_t i = 0; i < e->nf; i++) {
        free(e->f[i].name);
        free(e->f[i].value);
    }
    free(e->f);
    free(e->id);
    free(e->error);
}

void ms_rns_free(struct ms_rns *ns)
{
    if (ns == NULL) {
        return;
    }
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        for (size_t i = 0; i < ns->n[k]; i++) {
            entry_dispose(&ns->e[k][i]);
        }
        free(ns->e[k]);
        free(ns->set_error[k]);
    }
    free(ns->version_error);
    free(ns->prefix);
    free(ns);
}

/* A NUL-terminated heap copy of <len> bytes; *bad is set when they hold a NUL themselves. */
static char *copy_bytes(const char *p, size_t len, int *bad)
{
    char *s = dsp_xmalloc(len + 1);

    memcpy(s, p, len);
    s[len] = '\0';
    if (strlen(s) != len) {
        *bad = 1;
    }
    return s;
}

struct ms_rns_entry *ms_rns_add(struct ms_rns *ns, int kind, const char *id, size_t idlen)
{
    struct ms_rns_entry *e;
    int bad = 0;

    DSP_ASSERT(kind >= 0 && kind < MS_RNS_KINDS);
    if (ns->n[kind] == ns->cap[kind]) {
        ns->cap[kind] = ns->cap[kind] ? ns->cap[kind] * 2 : 16;
        ns->e[kind] = dsp_xrealloc(ns->e[kind], ns->cap[kind] * sizeof(*ns->e[kind]));
    }
    e = &ns->e[kind][ns->n[kind]++];
    memset(e, 0, sizeof(*e));
    e->id = copy_bytes(id, idlen, &bad);
    if (bad) {
        ms_rns_entry_error(e, "the id holds a NUL byte");
    }
    return e;
}

void ms_rns_set(struct ms_rns_entry *e, const char *name, size_t nlen, const char *value,
                size_t vlen)
{
    int bad = 0;

    if (e->nf == e->capf) {
        e->capf = e->capf ? e->capf * 2 : 8;
        e->f = dsp_xrealloc(e->f, e->capf * sizeof(*e->f));
    }
    e->f[e->nf].name = copy_bytes(name, nlen, &bad);
    e->f[e->nf].value = copy_bytes(value, vlen, &bad);
    e->nf++;
    if (bad) {
        ms_rns_entry_error(e, "a field name or value holds a NUL byte");
    }
}

void ms_rns_entry_error(struct ms_rns_entry *e, const char *msg)
{
    if (e->error == NULL) {
        e->error = dsp_xstrdup(msg);
    }
}

void ms_rns_set_error(struct ms_rns *ns, int kind, const char *msg)
{
    if (ns->set_error[kind] == NULL) {
        ns->set_error[kind] = dsp_xstrdup(msg);
    }
}

void ms_rns_version_error(struct ms_rns *ns, const char *msg)
{
    if (ns->version_state != MS_RNS_VERSION_BAD) {
        ns->version_state = MS_RNS_VERSION_BAD;
        ns->version_error = dsp_xstrdup(msg);
    }
}

void ms_rns_set_version(struct ms_rns *ns, const char *v, size_t len)
{
    char show[48], msg[96];
    size_t i, k = 0, first = len > 0 && v[0] == '-' ? 1 : 0;
    unsigned long long mag = 0;

    /* Only what INCR makes: an optional '-' and 1 to 19 decimal digits (so no overflow here),
     * within the signed 64-bit range. */
    for (i = first; i < len && v[i] >= '0' && v[i] <= '9'; i++) {
        mag = mag * 10 + (unsigned)(v[i] - '0');
        if (i - first >= 19) {
            break;
        }
    }
    if (i == len && len > first && len - first <= 19 &&
        mag <= (first ? 1ull << 63 : (1ull << 63) - 1)) {
        ns->version_state = MS_RNS_VERSION_OK;
        ns->version = first ? (long long)(0 - mag) : (long long)mag;
        return;
    }
    /* For the message: printable ASCII only, shortened. */
    for (i = 0; i < len && k + 4 < sizeof(show); i++) {
        show[k++] = v[i] >= 0x20 && v[i] < 0x7f && v[i] != '"' && v[i] != '\\' ? v[i] : '?';
    }
    if (i < len) {
        memcpy(show + k, "...", 3);
        k += 3;
    }
    show[k] = '\0';
    snprintf(msg, sizeof(msg), "not an integer (\"%s\")", show);
    ms_rns_version_error(ns, msg);
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct ms_rns_entry *)a)->id, ((const struct ms_rns_entry *)b)->id);
}

static int cmp_field(const void *a, const void *b)
{
    return strcmp(((const struct ms_rns_field *)a)->name, ((const struct ms_rns_field *)b)->name);
}

void ms_rns_sort(struct ms_rns *ns)
{
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        if (ns->n[k] > 1) {
            qsort(ns->e[k], ns->n[k], sizeof(*ns->e[k]), cmp_entry);
        }
        for (size_t i = 0; i < ns->n[k]; i++) {
            struct ms_rns_field *f = ns->e[k][i].f;
            size_t nf = ns->e[k][i].nf;

            /* A hash has a handful of fields: insertion sort beats qsort's set-up. */
            if (nf > 16) {
                qsort(f, nf, sizeof(*f), cmp_field);
                continue;
            }
            for (size_t j = 1; j < nf; j++) {
                struct ms_rns_field t = f[j];
                size_t m = j;

                while (m > 0 && strcmp(f[m - 1].name, t.name) > 0) {
                    f[m] = f[m - 1];
                    m--;
                }
                f[m] = t;
            }
        }
    }
}

static int str_eq(const char *a, const char *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    return strcmp(a, b) == 0;
}

int ms_rns_equal(const struct ms_rns *a, const struct ms_rns *b)
{
    if (a == NULL || b == NULL) {
        return a == b;
    }
    if (!str_eq(a->prefix, b->prefix)) {
        return 0;
    }
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        if (a->n[k] != b->n[k] || !str_eq(a->set_error[k], b->set_error[k])) {
            return 0;
        }
        for (size_t i = 0; i < a->n[k]; i++) {
            const struct ms_rns_entry *x = &a->e[k][i], *y = &b->e[k][i];

            if (x->nf != y->nf || x->missing != y->missing || !str_eq(x->id, y->id) ||
                !str_eq(x->error, y->error)) {
                return 0;
            }
            for (size_t j = 0; j < x->nf; j++) {
                if (!str_eq(x->f[j].name, y->f[j].name) || !str_eq(x->f[j].value, y->f[j].value)) {
                    return 0;
                }
            }
        }
    }
    return 1;
}

/* FNV-1a over the string and its terminating NUL, so that ("ab","c") differs from ("a","bc"). */
static uint64_t fnv(uint64_t h, const char *s)
{
    if (s == NULL) {
        return (h ^ 0xffu) * 0x100000001b3ull;
    }
    do {
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    } while (*s++ != '\0');
    return h;
}

uint64_t ms_rns_hash(const struct ms_rns *ns)
{
    uint64_t h = 0xcbf29ce484222325ull;

    h = fnv(h, ns->prefix);
    h = fnv(h, ns->version_state == MS_RNS_VERSION_NONE  ? "no version"
               : ns->version_state == MS_RNS_VERSION_BAD ? "bad version"
                                                         : "version");
    h = fnv(h, ns->version_error);
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        h = fnv(h, set_names[k]);
        h = fnv(h, ns->set_error[k]);
        for (size_t i = 0; i < ns->n[k]; i++) {
            const struct ms_rns_entry *e = &ns->e[k][i];

            h = fnv(h, e->id);
            h = fnv(h, e->error);
            h = fnv(h, e->missing ? "missing" : "");
            for (size_t j = 0; j < e->nf; j++) {
                h = fnv(h, e->f[j].name);
                h = fnv(h, e->f[j].value);
            }
        }
    }
    return h;
}

/* ---- value formats ------------------------------------------------------------------------ */

static const char *skip_space(const char *p)
{
    while (*p == ' ' || *p == '\t') {
        p++;
    }
    return p;
}

/* Take the next comma-separated item of the list at <*p>, blanks around it removed, into <out>.
 * <*p> moves past the comma, or becomes NULL after the last item. Returns 0, or -1 when the item
 * does not fit. */
static int take_item(const char **p, char *out, size_t outlen)
{
    const char *s = skip_space(*p);
    const char *end = strchr(s, ',');
    size_t n = end != NULL ? (size_t)(end - s) : strlen(s);

    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) {
        n--;
    }
    *p = end != NULL ? end + 1 : NULL;
    if (n >= outlen) {
        return -1;
    }
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

int ms_rns_parse_int(const char *v, long min, long max, long *out, char *err, size_t errlen)
{
    const char *p = v;
    char *end;
    long long x;

    if (*p == '-' || *p == '+') {
        p++;
    }
    if (*p < '0' || *p > '9') {
        snprintf(err, errlen, "\"%s\" is not an integer", v);
        return -1;
    }
    errno = 0;
    x = strtoll(v, &end, 10);
    if (*end != '\0') {
        snprintf(err, errlen, "\"%s\" is not an integer", v);
        return -1;
    }
    if (errno == ERANGE || x < min || x > max) {
        snprintf(err, errlen, "%s is out of range (%ld..%ld)", v, min, max);
        return -1;
    }
    *out = (long)x;
    return 0;
}

int ms_rns_parse_backends(const char *v, struct ms_backend **out, size_t *n, char *err,
                          size_t errlen)
{
    struct ms_backend *b = NULL;
    size_t nb = 0, cap = 0, *first;
    const char *p = v;
    char item[300], why[256];

    *out = NULL;
    *n = 0;
    if (*skip_space(v) == '\0') {
        return 0; /* known but not deployed */
    }
    for (size_t idx = 0; p != NULL; idx++) {
        char *eq;
        long w = 1;

        if (take_item(&p, item, sizeof(item)) != 0) {
            snprintf(err, errlen, "backend #%zu is too long", idx + 1);
            goto fail;
        }
        if (item[0] == '\0') {
            snprintf(err, errlen, "backend #%zu is empty (\"addr[=weight],...\")", idx + 1);
            goto fail;
        }
        eq = strchr(item, '=');
        if (eq != NULL) {
            *eq = '\0';
            if (ms_rns_parse_int(skip_space(eq + 1), 1, MS_MAX_WEIGHT, &w, why, sizeof(why)) != 0) {
                snprintf(err, errlen, "backend \"%s\": weight %s", item, why);
                goto fail;
            }
            for (size_t k = strlen(item); k > 0 && (item[k - 1] == ' ' || item[k - 1] == '\t');
                 k--) {
                item[k - 1] = '\0';
            }
        }
        if (nb == cap) {
            cap = cap ? cap * 2 : 4;
            b = dsp_xrealloc(b, cap * sizeof(*b));
        }
        memset(&b[nb], 0, sizeof(b[nb]));
        b[nb].weight = (int)w;
        if (ms_parse_backend_addr(item, &b[nb], why, sizeof(why)) != 0) {
            snprintf(err, errlen, "backend \"%s\": %s", item, why);
            goto fail;
        }
        nb++;
    }
    first = dsp_xcalloc(nb + 1, sizeof(*first));
    ms_backend_dups(b, nb, first);
    for (size_t i = 0; i < nb; i++) {
        if (first[i] != i) {
            snprintf(err, errlen, "duplicate backend %s", b[i].address);
            free(first);
            goto fail;
        }
    }
    free(first);
    *out = b;
    *n = nb;
    return 0;

fail:
    for (size_t j = 0; j < nb; j++) {
        free(b[j].address);
        free(b[j].name);
    }
    free(b);
    return -1;
}

int ms_rns_parse_split(const char *v, struct ms_split **out, size_t *n, char *err, size_t errlen)
{
    struct ms_split *sp = dsp_xcalloc(MS_MAX_SPLIT, sizeof(*sp));
    size_t ns = 0;
    const char *p = v;
    char item[300], why[256];

    *out = NULL;
    *n = 0;
    for (size_t idx = 0; p != NULL; idx++) {
        char *eq;
        long w;

        if (take_item(&p, item, sizeof(item)) != 0) {
            snprintf(err, errlen, "entry #%zu is too long", idx + 1);
            goto fail;
        }
        if (ns == MS_MAX_SPLIT) {
            snprintf(err, errlen, "more than %d entries", MS_MAX_SPLIT);
            goto fail;
        }
        eq = strchr(item, '=');
        if (eq == NULL) {
            snprintf(err, errlen, "entry #%zu \"%s\" must be service=weight", idx + 1, item);
            goto fail;
        }
        *eq = '\0';
        for (size_t k = strlen(item); k > 0 && (item[k - 1] == ' ' || item[k - 1] == '\t'); k--) {
            item[k - 1] = '\0';
        }
        if (!ms_valid_name(item)) {
            snprintf(err, errlen,
                     "entry #%zu: service name \"%s\" may only use letters, digits, "
                     "'_', '.' and '-'",
                     idx + 1, item);
            goto fail;
        }
        if (ms_rns_parse_int(skip_space(eq + 1), 0, MS_MAX_SPLIT_WEIGHT, &w, why, sizeof(why)) !=
            0) {
            snprintf(err, errlen, "service \"%s\": weight %s", item, why);
            goto fail;
        }
        sp[ns].service = dsp_xstrdup(item);
        sp[ns].weight = (int)w;
        ns++;
    }
    *out = sp;
    *n = ns;
    return 0;

fail:
    for (size_t j = 0; j < ns; j++) {
        free(sp[j].service);
    }
    free(sp);
    return -1;
}

int ms_rns_parse_methods(const char *v, uint64_t *out, char *err, size_t errlen)
{
    const char *p = v;
    uint64_t m = 0;
    char item[64];

    if (*skip_space(v) == '\0') {
        snprintf(err, errlen, "methods is empty (leave the field out to allow every method)");
        return -1;
    }
    while (p != NULL) {
        int r = take_item(&p, item, sizeof(item));
        int k = r == 0 && item[0] != '\0' ? ms_method_from_name(item) : -1;

        if (k < 0) {
            snprintf(err, errlen, "methods: unknown HTTP method \"%s\"", r == 0 ? item : "...");
            return -1;
        }
        m |= 1ULL << k;
    }
    *out = m;
    return 0;
}

/* ---- merge ---------------------------------------------------------------------------------- */

/* Problems found so far, one "redis KEY: message" line each. */
struct errs {
    char *buf;
    size_t len, cap;
    size_t count;
};

static void add_err(struct errs *el, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_err(struct errs *el, const char *key, const char *fmt, ...)
{
    char msg[1024];
    size_t need;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    need = strlen(key) + strlen(msg) + 16;
    if (el->len + need > el->cap) {
        el->cap = (el->len + need) * 2;
        el->buf = dsp_xrealloc(el->buf, el->cap);
    }
    el->len += (size_t)snprintf(el->buf + el->len, el->cap - el->len, "%sredis %s: %s",
                                el->count ? "\n" : "", key, msg);
    el->count++;
}

static const char *entry_key(char *buf, size_t n, const struct ms_rns *ns, int kind, const char *id)
{
    snprintf(buf, n, "%s%s%s", ns->prefix, hash_names[kind], id);
    return buf;
}

static const char *const service_fields[] = {"backends",
                                             "balance",
                                             "health_path",
                                             "health_interval_ms",
                                             "health_timeout_ms",
                                             "health_fall",
                                             "health_rise",
                                             "retries",
                                             "connect_timeout_ms",
                                             "response_timeout_ms",
                                             "stream_idle_timeout_ms",
                                             "protocol",
                                             NULL};
static const char *const route_fields[] = {"host",        "path",  "methods", "priority", "service",
                                           "middlewares", "split", "sticky",  NULL};
static const char *const cert_fields[] = {"cert", "key", NULL};

static void unknown_field(struct errs *el, const char *key, const char *name,
                          const char *const *known)
{
    char list[512];
    size_t off = 0;

    list[0] = '\0';
    for (const char *const *k = known; *k != NULL; k++) {
        off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%s", off ? ", " : "", *k);
        if (off >= sizeof(list)) {
            break;
        }
    }
    add_err(el, key, "unknown field '%s' (known: %s)", name, list);
}

/* An integer field into <*out>; errors name the field. */
static void int_field(struct errs *el, const char *key, const struct ms_rns_field *f, long min,
                      long max, int *out)
{
    char why[256];
    long v;

    if (ms_rns_parse_int(f->value, min, max, &v, why, sizeof(why)) != 0) {
        add_err(el, key, "%s: %s", f->name, why);
        return;
    }
    *out = (int)v;
}

static void parse_service(struct errs *el, const char *key, const struct ms_rns_entry *e,
                          struct ms_service *svc)
{
    char why[256];

    for (size_t i = 0; i < e->nf; i++) {
        const struct ms_rns_field *f = &e->f[i];
        const char *n = f->name;

        if (strcmp(n, "backends") == 0) {
            if (ms_rns_parse_backends(f->value, &svc->backends, &svc->nbackends, why,
                                      sizeof(why)) != 0) {
                add_err(el, key, "backends: %s", why);
            }
        } else if (strcmp(n, "balance") == 0) {
            if (ms_parse_balance(f->value, &svc->balance) != 0) {
                add_err(el, key, "balance \"%s\" must be round-robin, least-conn or ip-hash",
                        f->value);
            }
        } else if (strcmp(n, "protocol") == 0) {
            if (ms_parse_protocol(f->value, &svc->protocol) != 0) {
                add_err(el, key, "protocol \"%s\" must be http1, h2 or grpc", f->value);
            }
        } else if (strcmp(n, "health_path") == 0) {
            svc->health.enabled = 1;
            if (!ms_valid_url_path(f->value)) {
                add_err(el, key, "health_path \"%s\" must start with '/' and contain no spaces",
                        f->value);
            } else {
                free(svc->health.path);
                svc->health.path = dsp_xstrdup(f->value);
            }
        } else if (strcmp(n, "health_interval_ms") == 0) {
            svc->health.enabled = 1;
            int_field(el, key, f, 1, MS_MAX_TIMEOUT_MS, &svc->health.interval_ms);
        } else if (strcmp(n, "health_timeout_ms") == 0) {
            svc->health.enabled = 1;
            int_field(el, key, f, 1, MS_MAX_TIMEOUT_MS, &svc->health.timeout_ms);
        } else if (strcmp(n, "health_fall") == 0) {
            svc->health.enabled = 1;
            int_field(el, key, f, 1, MS_MAX_HEALTH_COUNT, &svc->health.fall);
        } else if (strcmp(n, "health_rise") == 0) {
            svc->health.enabled = 1;
            int_field(el, key, f, 1, MS_MAX_HEALTH_COUNT, &svc->health.rise);
        } else if (strcmp(n, "retries") == 0) {
            int_field(el, key, f, 0, MS_MAX_RETRIES, &svc->retries);
        } else if (strcmp(n, "connect_timeout_ms") == 0) {
            int_field(el, key, f, 1, MS_MAX_TIMEOUT_MS, &svc->connect_timeout_ms);
        } else if (strcmp(n, "response_timeout_ms") == 0) {
            int_field(el, key, f, 1, MS_MAX_TIMEOUT_MS, &svc->response_timeout_ms);
        } else if (strcmp(n, "stream_idle_timeout_ms") == 0) {
            int_field(el, key, f, 1, MS_MAX_TIMEOUT_MS, &svc->stream_idle_timeout_ms);
        } else {
            unknown_field(el, key, n, service_fields);
        }
    }
}

/* Services by name, so that a namespace with many routes and services merges in n log n. */
struct name_idx {
    const char *name;
    size_t idx;
};

struct svc_index {
    struct name_idx *v;
    size_t n;
};

static int cmp_name_idx(const void *a, const void *b)
{
    return strcmp(((const struct name_idx *)a)->name, ((const struct name_idx *)b)->name);
}

/* Index the <n> services at <s>, whose positions in the config start at <base>. */
static void index_services(struct svc_index *ix, const struct ms_service *s, size_t n, size_t base)
{
    ix->v = dsp_xcalloc(n + 1, sizeof(*ix->v));
    ix->n = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i].name != NULL) {
            ix->v[ix->n].name = s[i].name;
            ix->v[ix->n].idx = base + i;
            ix->n++;
        }
    }
    qsort(ix->v, ix->n, sizeof(*ix->v), cmp_name_idx);
}

static long lookup(const struct svc_index *ix, const char *name)
{
    struct name_idx key = {name, 0};
    const struct name_idx *hit = bsearch(&key, ix->v, ix->n, sizeof(*ix->v), cmp_name_idx);

    return hit != NULL ? (long)hit->idx : -1;
}

/* "a,b" (spaces around names allowed; "" for none) -> a heap array of heap names. */
static char **split_list(const char *v, size_t *n)
{
    size_t cap = 1;
    char **out;

    for (const char *p = v; *p != '\0'; p++) {
        cap += *p == ',';
    }
    out = dsp_xcalloc(cap + 1, sizeof(*out));
    *n = 0;
    while (*v != '\0') {
        const char *e = strchr(v, ','), *a = v, *b;
        b = e != NULL ? e : v + strlen(v);
        while (a < b && (*a == ' ' || *a == '\t')) {
            a++;
        }
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) {
            b--;
        }
        if (b > a || e != NULL || *n > 0) {
            out[*n] = dsp_xmalloc((size_t)(b - a) + 1);
            memcpy(out[*n], a, (size_t)(b - a));
            out[(*n)++][b - a] = '\0';
        }
        if (e == NULL) {
            break;
        }
        v = e + 1;
    }
    return out;
}

/* A route's "middlewares" field: names of file or Redis middlewares, in order. */
static void route_mws(struct errs *el, const char *key, const char *v, const struct ms_config *cfg,
                      struct ms_route *r)
{
    char why[256];

    r->mw_names = split_list(v, &r->nmw);
    for (size_t i = 0; i < r->nmw; i++) {
        if (r->mw_names[i][0] == '\0') {
            add_err(el, key, "middlewares: an empty name in \"%s\"", v);
            return;
        }
    }
    if (ms_mw_resolve(cfg, r->mw_names, r->nmw, &r->mw_ids, why, sizeof(why)) != 0) {
        add_err(el, key, "middlewares: %s", why);
    }
}

/* ---- middleware:{name}: the hash read through master/ms_mw.h's accessors ------------------- */
struct rns_src {
    struct errs *el;
    const char *key;
    const struct ms_rns_entry *e;
};

static const char *rns_field(struct ms_mw_src *s, const char *name)
{
    const struct ms_rns_entry *e = ((struct rns_src *)s->impl)->e;

    for (size_t i = 0; i < e->nf; i++) {
        if (strcmp(e->f[i].name, name) == 0) {
            return e->f[i].value;
        }
    }
    return NULL;
}

static int rns_str(struct ms_mw_src *s, const char *key, const char **out)
{
    *out = rns_field(s, key);
    return *out != NULL;
}

static int rns_num(struct ms_mw_src *s, const char *key, long min, long max, long *out)
{
    const char *v = rns_field(s, key);
    char why[256];

    if (v == NULL) {
        return 0;
    }
    if (ms_rns_parse_int(v, min, max, out, why, sizeof(why)) != 0) {
        ms_mw_err(s, key, "%s", why);
        return -1;
    }
    return 1;
}

static int rns_bool(struct ms_mw_src *s, const char *key, int *out)
{
    const char *v = rns_field(s, key);

    if (v == NULL) {
        return 0;
    }
    if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0) {
        *out = 1;
    } else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0) {
        *out = 0;
    } else {
        ms_mw_err(s, key, "must be true or false (got \"%s\")", v);
        return -1;
    }
    return 1;
}

static int rns_list(struct ms_mw_src *s, const char *key, char ***out, size_t *n)
{
    const char *v = rns_field(s, key);

    *out = NULL;
    *n = 0;
    if (v == NULL) {
        return 0;
    }
    *out = split_list(v, n);
    return 1;
}

static void rns_err(struct ms_mw_src *s, const char *key, const char *msg)
{
    struct rns_src *r = s->impl;

    (void)key;
    add_err(r->el, r->key, "%s", msg);
}

static const struct ms_mw_src_ops rns_ops = {
    .str = rns_str, .num = rns_num, .boolean = rns_bool, .list = rns_list, .err = rns_err};

/* A middleware from its hash: "type" and the type's keys, as in the file. 0, or -1 (reported). */
static int parse_mw(struct errs *el, const char *key, const struct ms_rns_entry *e, const char *dir,
                    struct ms_mw *out)
{
    struct rns_src r = {el, key, e};
    struct ms_mw_src src = {.ops = &rns_ops, .impl = &r, .where = "", .dir = dir};
    const struct ms_mw_type *t;
    const char *type = NULL;

    if (!rns_str(&src, "type", &type)) {
        add_err(el, key, "no type field");
        return -1;
    }
    t = ms_mw_type_find(type);
    for (size_t i = 0; t != NULL && i < e->nf; i++) {
        size_t k = 0;
        if (strcmp(e->f[i].name, "type") == 0) {
            continue;
        }
        while (t->keys[k] != NULL && strcmp(t->keys[k], e->f[i].name) != 0) {
            k++;
        }
        if (t->keys[k] == NULL) {
            unknown_field(el, key, e->f[i].name, t->keys);
            return -1;
        }
    }
    if (ms_mw_parse(&src, e->id, type, out) != 0) {
        return -1;
    }
    out->source = SHM_SOURCE_REDIS;
    return 0;
}

/* A route's split: each service known (file first, then Redis), the checks across entries. */
static void route_split(struct errs *el, const char *key, const struct svc_index *file_ix,
                        const struct svc_index *redis_ix, struct ms_route *r, int have_service)
{
    char why[320];

    if (have_service) {
        add_err(el, key,
                "has both service and split (a route names one service, or splits its "
                "requests among several)");
        return;
    }
    for (size_t k = 0; k < r->nsplit; k++) {
        long idx = lookup(file_ix, r->split[k].service);

        if (idx < 0) {
            idx = lookup(redis_ix, r->split[k].service);
        }
        if (idx < 0) {
            add_err(el, key, "split: unknown service '%s' (neither in the file nor in Redis)",
                    r->split[k].service);
            return;
        }
        r->split[k].service_idx = (size_t)idx;
    }
    if (ms_split_check(r, why, sizeof(why)) != 0) {
        add_err(el, key, "split: %s", why);
        return;
    }
    ms_split_finish(r);
}

static void parse_route(struct errs *el, const char *key, const struct ms_rns_entry *e,
                        const struct svc_index *file_ix, const struct svc_index *redis_ix,
                        const struct ms_config *cfg, struct ms_route *r)
{
    int have_host = 0, have_service = 0, have_split = 0;
    char why[256];
    long v;

    for (size_t i = 0; i < e->nf; i++) {
        const struct ms_rns_field *f = &e->f[i];
        const char *n = f->name;

        if (strcmp(n, "host") == 0) {
            have_host = 1;
            r->host = ms_normalise_host(f->value);
            if (r->host == NULL) {
                add_err(el, key, "host \"%s\" must be \"*\", \"*.suffix\" or a host name (no port)",
                        f->value);
            }
        } else if (strcmp(n, "path") == 0) {
            if (!ms_valid_url_path(f->value)) {
                add_err(el, key, "path \"%s\" must start with '/' and contain no spaces", f->value);
            } else {
                free(r->path);
                r->path = dsp_xstrdup(f->value);
            }
        } else if (strcmp(n, "methods") == 0) {
            if (ms_rns_parse_methods(f->value, &r->methods, why, sizeof(why)) != 0) {
                add_err(el, key, "%s", why);
            }
        } else if (strcmp(n, "priority") == 0) {
            if (ms_rns_parse_int(f->value, INT_MIN, INT_MAX, &v, why, sizeof(why)) != 0) {
                add_err(el, key, "priority: %s", why);
            } else {
                r->priority = (int)v;
            }
        } else if (strcmp(n, "middlewares") == 0) {
            route_mws(el, key, f->value, cfg, r);
        } else if (strcmp(n, "service") == 0) {
            long idx = lookup(file_ix, f->value);

            if (idx < 0) {
                idx = lookup(redis_ix, f->value);
            }

            have_service = 1;
            r->service = dsp_xstrdup(f->value);
            if (idx < 0) {
                add_err(el, key, "unknown service '%s' (neither in the file nor in Redis)",
                        f->value);
            } else {
                r->service_idx = (size_t)idx;
            }
        } else if (strcmp(n, "split") == 0) {
            have_split = 1;
            if (ms_rns_parse_split(f->value, &r->split, &r->nsplit, why, sizeof(why)) != 0) {
                add_err(el, key, "split: %s", why);
            }
        } else if (strcmp(n, "sticky") == 0) {
            if (strcmp(f->value, "true") == 0 || strcmp(f->value, "1") == 0) {
                r->sticky = 1;
            } else if (strcmp(f->value, "false") != 0 && strcmp(f->value, "0") != 0) {
                add_err(el, key, "sticky \"%s\" must be true or false", f->value);
            }
        } else {
            unknown_field(el, key, n, route_fields);
        }
    }
    if (!have_host) {
        add_err(el, key, "no host field (use \"*\" to match every host)");
    }
    if (have_split) {
        route_split(el, key, file_ix, redis_ix, r, have_service);
    } else if (!have_service) {
        add_err(el, key, "no service field (or split)");
    } else if (r->sticky) {
        add_err(el, key, "sticky applies to a split only");
    }
}

/* A certificate: PEM text in the hash, checked by the same code as a file's (ms_tls_load_cert:
 * parse, key matches, a server context accepts the pair). */
static void parse_cert(struct errs *el, const char *key, const struct ms_rns_entry *e,
                       int min_version, int64_t now, struct ms_cert *ct)
{
    char why[768];
    int bad = 0;

    for (size_t i = 0; i < e->nf; i++) {
        const struct ms_rns_field *f = &e->f[i];

        if (strcmp(f->name, "cert") == 0) {
            ct->cert_pem = dsp_xstrdup(f->value);
        } else if (strcmp(f->name, "key") == 0) {
            ct->key_pem = dsp_xstrdup(f->value);
        } else {
            unknown_field(el, key, f->name, cert_fields);
            bad = 1;
        }
    }
    if (ct->cert_pem == NULL || ct->key_pem == NULL) {
        add_err(el, key, "needs both a cert and a key field (PEM)");
        return;
    }
    if (!bad && ms_tls_load_cert(ct, min_version, now, why, sizeof(why)) != 0) {
        add_err(el, key, "%s", why);
        return;
    }
    if (!bad && ct->expired) {
        log_warn("redis %s: certificate (%s) has expired; still served", key, ct->subject);
    }
}

/* Common checks of an entry before its fields are read. Returns 1 when the fields can be read. */
static int entry_ok(struct errs *el, const struct ms_rns *ns, int kind,
                    const struct ms_rns_entry *e, const char *key)
{
    if (e->error != NULL) {
        add_err(el, key, "%s", e->error);
        return 0;
    }
    if (e->missing) {
        add_err(el, key, "listed in SET %s%s but the hash does not exist", ns->prefix,
                set_names[kind]);
        return 0;
    }
    if (!ms_valid_name(e->id)) {
        add_err(el, key, "the id \"%s\" may only use letters, digits, '_', '.' and '-'", e->id);
        return 0;
    }
    return 1;
}

int ms_rns_merge(struct ms_config *cfg, const struct ms_rns *ns, int quiet, char **errs)
{
    struct errs el = {0};
    struct ms_service *rs = NULL;
    struct ms_route *rr = NULL;
    struct ms_cert *rc = NULL;
    struct svc_index file_ix, redis_ix;
    size_t nrs = 0, nrr = 0, nrc = 0, nfile_mws;
    int64_t now = (int64_t)time(NULL);
    char key[512];

    *errs = NULL;
    DSP_ASSERT(!cfg->redis.merged);
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        if (ns->set_error[k] != NULL) {
            snprintf(key, sizeof(key), "%s%s", ns->prefix, set_names[k]);
            add_err(&el, key, "%s", ns->set_error[k]);
        }
    }

    index_services(&file_ix, cfg->services, cfg->nservices, 0);
    rs = dsp_xcalloc(ns->n[MS_RNS_SERVICE] + 1, sizeof(*rs));
    for (size_t i = 0; i < ns->n[MS_RNS_SERVICE]; i++) {
        const struct ms_rns_entry *e = &ns->e[MS_RNS_SERVICE][i];

        entry_key(key, sizeof(key), ns, MS_RNS_SERVICE, e->id);
        if (!entry_ok(&el, ns, MS_RNS_SERVICE, e, key)) {
            continue;
        }
        if (lookup(&file_ix, e->id) >= 0) {
            if (!quiet) {
                log_warn("redis %s: service '%s' is also defined in %s; the file's entry wins", key,
                         e->id, cfg->path);
            }
            continue;
        }
        ms_service_init(&rs[nrs]);
        rs[nrs].name = dsp_xstrdup(e->id);
        rs[nrs].source = SHM_SOURCE_REDIS;
        parse_service(&el, key, e, &rs[nrs]);
        nrs++;
    }

    /* Middlewares go into cfg at once (routes resolve names there), out again on failure. */
    nfile_mws = cfg->nmws;
    if (ns->n[MS_RNS_MW] > 0) {
        cfg->mws = dsp_xrealloc(cfg->mws, (cfg->nmws + ns->n[MS_RNS_MW]) * sizeof(*cfg->mws));
    }
    for (size_t i = 0; i < ns->n[MS_RNS_MW]; i++) {
        const struct ms_rns_entry *e = &ns->e[MS_RNS_MW][i];
        size_t k = 0;

        entry_key(key, sizeof(key), ns, MS_RNS_MW, e->id);
        if (!entry_ok(&el, ns, MS_RNS_MW, e, key)) {
            continue;
        }
        while (k < nfile_mws && strcmp(cfg->mws[k].name, e->id) != 0) {
            k++;
        }
        if (k < nfile_mws) {
            if (!quiet) {
                log_warn("redis %s: middleware '%s' is also defined in %s; the file's entry wins",
                         key, e->id, cfg->path);
            }
            continue;
        }
        memset(&cfg->mws[cfg->nmws], 0, sizeof(cfg->mws[0]));
        if (parse_mw(&el, key, e, cfg->dir, &cfg->mws[cfg->nmws]) == 0) {
            cfg->nmws++;
        } else {
            ms_mw_dispose(&cfg->mws[cfg->nmws]);
        }
    }

    index_services(&redis_ix, rs, nrs, cfg->nservices);
    rr = dsp_xcalloc(ns->n[MS_RNS_ROUTE] + 1, sizeof(*rr));
    for (size_t i = 0; i < ns->n[MS_RNS_ROUTE]; i++) {
        const struct ms_rns_entry *e = &ns->e[MS_RNS_ROUTE][i];

        entry_key(key, sizeof(key), ns, MS_RNS_ROUTE, e->id);
        if (!entry_ok(&el, ns, MS_RNS_ROUTE, e, key)) {
            continue;
        }
        ms_route_init(&rr[nrr]);
        rr[nrr].source = SHM_SOURCE_REDIS;
        parse_route(&el, key, e, &file_ix, &redis_ix, cfg, &rr[nrr]);
        nrr++;
    }

    rc = dsp_xcalloc(ns->n[MS_RNS_CERT] + 1, sizeof(*rc));
    for (size_t i = 0; i < ns->n[MS_RNS_CERT]; i++) {
        const struct ms_rns_entry *e = &ns->e[MS_RNS_CERT][i];

        entry_key(key, sizeof(key), ns, MS_RNS_CERT, e->id);
        if (!entry_ok(&el, ns, MS_RNS_CERT, e, key)) {
            continue;
        }
        rc[nrc].source = SHM_SOURCE_REDIS;
        parse_cert(&el, key, e, cfg->tls.min_version, now, &rc[nrc]);
        nrc++;
    }

    free(file_ix.v);
    free(redis_ix.v);
    if (el.count > 0) {
        for (size_t i = 0; i < nrs; i++) {
            ms_service_dispose(&rs[i]);
        }
        for (size_t i = 0; i < nrr; i++) {
            ms_route_dispose(&rr[i]);
        }
        for (size_t i = 0; i < nrc; i++) {
            ms_cert_dispose(&rc[i]);
        }
        free(rs);
        free(rr);
        free(rc);
        while (cfg->nmws > nfile_mws) {
            ms_mw_dispose(&cfg->mws[--cfg->nmws]);
        }
        *errs = el.buf;
        return -1;
    }
    if (nrs > 0) {
        cfg->services = dsp_xrealloc(cfg->services, (cfg->nservices + nrs) * sizeof(*rs));
        memcpy(cfg->services + cfg->nservices, rs, nrs * sizeof(*rs));
        cfg->nservices += nrs;
    }
    if (nrr > 0) {
        cfg->routes = dsp_xrealloc(cfg->routes, (cfg->nroutes + nrr) * sizeof(*rr));
        memcpy(cfg->routes + cfg->nroutes, rr, nrr * sizeof(*rr));
        cfg->nroutes += nrr;
    }
    if (nrc > 0) {
        cfg->tls.certs = dsp_xrealloc(cfg->tls.certs, (cfg->tls.ncerts + nrc) * sizeof(*rc));
        memcpy(cfg->tls.certs + cfg->tls.ncerts, rc, nrc * sizeof(*rc));
        cfg->tls.ncerts += nrc;
    }
    free(rs);
    free(rr);
    free(rc);
    cfg->redis.merged = 1;
    return 0;
}

void ms_rns_unmerge(struct ms_config *cfg)
{
    /* Redis entries always sit after the file's (ms_rns_merge appends them). */
    while (cfg->nroutes > 0 && cfg->routes[cfg->nroutes - 1].source == SHM_SOURCE_REDIS) {
        ms_route_dispose(&cfg->routes[--cfg->nroutes]);
    }
    while (cfg->nservices > 0 && cfg->services[cfg->nservices - 1].source == SHM_SOURCE_REDIS) {
        ms_service_dispose(&cfg->services[--cfg->nservices]);
    }
    while (cfg->nmws > 0 && cfg->mws[cfg->nmws - 1].source == SHM_SOURCE_REDIS) {
        ms_mw_dispose(&cfg->mws[--cfg->nmws]);
    }
    while (cfg->tls.ncerts > 0 && cfg->tls.certs[cfg->tls.ncerts - 1].source == SHM_SOURCE_REDIS) {
        ms_cert_dispose(&cfg->tls.certs[--cfg->tls.ncerts]);
    }
    cfg->redis.merged = 0;
}
