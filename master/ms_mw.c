/* dispatcher: middlewares on the master's side (see ms_mw.h): the type table, the parser shared
 * by the file and Redis, name resolution for routes and the compiler of the snapshot region. */
#include "master/ms_mw.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dsp.h"
#include "master/ms_config.h"

/* Every type: one row each (see ms_mw.h for how to add one). */
static const struct ms_mw_type *const types[] = {&ms_mw_headers,      &ms_mw_static,
                                                 &ms_mw_ip_allow,     &ms_mw_redirect_https,
                                                 &ms_mw_strip_prefix, &ms_mw_max_body,
                                                 &ms_mw_cors,         &ms_mw_basic_auth,
                                                 &ms_mw_forward_auth, &ms_mw_compress,
                                                 &ms_mw_rate_limit,   NULL};

const struct ms_mw_type *const *ms_mw_types(void)
{
    return types;
}

const struct ms_mw_type *ms_mw_type_find(const char *name)
{
    for (size_t i = 0; types[i] != NULL; i++) {
        if (strcmp(types[i]->name, name) == 0) {
            return types[i];
        }
    }
    return NULL;
}

const struct ms_mw_type *ms_mw_type_of(uint32_t type)
{
    for (size_t i = 0; types[i] != NULL; i++) {
        if (types[i]->type == type) {
            return types[i];
        }
    }
    return NULL;
}

void ms_mw_err(struct ms_mw_src *s, const char *key, const char *fmt, ...)
{
    char msg[768], full[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (key != NULL && s->where[0] == '\0') {
        snprintf(full, sizeof(full), "%s: %s", key, msg);
    } else if (s->where[0] == '\0') {
        snprintf(full, sizeof(full), "%s", msg);
    } else if (key != NULL) {
        snprintf(full, sizeof(full), "%s.%s: %s", s->where, key, msg);
    } else {
        snprintf(full, sizeof(full), "%s: %s", s->where, msg);
    }
    s->errors++;
    s->ops->err(s, key, full);
}

int ms_mw_need_str(struct ms_mw_src *s, const char *key, const char **out)
{
    int r = s->ops->str(s, key, out);

    if (r == 0) {
        ms_mw_err(s, NULL, "%s is required", key);
        return -1;
    }
    return r;
}

char *ms_mw_path(const struct ms_mw_src *s, const char *v)
{
    char *p;

    if (v[0] == '/' || s->dir == NULL) {
        return dsp_xstrdup(v);
    }
    p = dsp_xmalloc(strlen(s->dir) + strlen(v) + 2);
    sprintf(p, "%s/%s", s->dir, v);
    return p;
}

void ms_mw_strv_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i]);
    }
    free(v);
}

int ms_mw_parse(struct ms_mw_src *s, const char *name, const char *type, struct ms_mw *out)
{
    const struct ms_mw_type *t = ms_mw_type_find(type);
    int before = s->errors;

    memset(out, 0, sizeof(*out));
    out->name = dsp_xstrdup(name); /* (also after an error: see ms_mw_parse's callers) */
    if (!ms_valid_name(name)) {
        ms_mw_err(s, "name", "\"%s\" is not a valid name (letters, digits, '.', '_', '-')", name);
    }
    if (t == NULL) {
        char known[512] = "";
        for (size_t i = 0; types[i] != NULL; i++) {
            size_t l = strlen(known);
            snprintf(known + l, sizeof(known) - l, "%s%s", i ? ", " : "", types[i]->name);
        }
        ms_mw_err(s, "type", "unknown middleware type \"%s\" (known: %s)", type, known);
        return -1;
    }
    out->params = t->parse(s);
    if (out->params == NULL || s->errors != before) {
        if (out->params != NULL) {
            t->free(out->params);
            out->params = NULL;
        }
        if (s->errors == before) {
            ms_mw_err(s, NULL, "invalid %s middleware", type);
        }
        return -1;
    }
    out->type = t->type;
    return 0;
}

void ms_mw_dispose(struct ms_mw *m)
{
    const struct ms_mw_type *t = ms_mw_type_of(m->type);

    if (t != NULL && m->params != NULL) {
        t->free(m->params);
    }
    free(m->name);
    memset(m, 0, sizeof(*m));
}

int ms_mw_resolve(const struct ms_config *cfg, char *const *names, size_t n, uint32_t **ids,
                  char *err, size_t errlen)
{
    uint32_t *v;

    *ids = NULL;
    if (n > SHM_MW_MAX_CHAIN) {
        snprintf(err, errlen, "at most %u middlewares per route", SHM_MW_MAX_CHAIN);
        return -1;
    }
    v = dsp_xcalloc(n ? n : 1, sizeof(*v));
    for (size_t i = 0; i < n; i++) {
        size_t k;
        for (k = 0; k < cfg->nmws; k++) {
            if (strcmp(cfg->mws[k].name, names[i]) == 0) {
                break;
            }
        }
        if (k == cfg->nmws) {
            snprintf(err, errlen, "unknown middleware '%s' (not in middlewares)", names[i]);
            free(v);
            return -1;
        }
        for (size_t j = 0; j < i; j++) {
            if (v[j] == k) {
                snprintf(err, errlen, "middleware '%s' named twice", names[i]);
                free(v);
                return -1;
            }
        }
        v[i] = (uint32_t)k;
    }
    *ids = v;
    return 0;
}

/* ---- the region ------------------------------------------------------------------------------ */
static void blob_grow(struct ms_mw_blob *b, size_t need)
{
    if (b->len + need <= b->cap) {
        return;
    }
    while (b->len + need > b->cap) {
        b->cap = b->cap ? b->cap * 2 : 4096;
    }
    b->p = dsp_xrealloc(b->p, b->cap);
}

uint32_t ms_mw_put(struct ms_mw_blob *b, const void *p, size_t len)
{
    size_t at = (b->len + 7u) & ~(size_t)7u;

    blob_grow(b, at - b->len + len);
    memset(b->p + b->len, 0, at - b->len);
    if (len > 0) {
        memcpy(b->p + at, p, len);
    }
    b->len = at + len;
    DSP_ASSERT(b->len < UINT32_MAX / 2);
    return (uint32_t)at;
}

struct shm_str ms_mw_put_str(struct ms_mw_blob *b, const char *s, size_t len)
{
    struct shm_str out;

    blob_grow(b, len + 1);
    memcpy(b->p + b->len, s, len);
    b->p[b->len + len] = '\0';
    out.off = (uint32_t)b->len;
    out.len = (uint32_t)len;
    b->len += len + 1;
    return out;
}

struct shm_mw_list ms_mw_put_list(struct ms_mw_blob *b, char *const *v, size_t n)
{
    struct shm_str *tmp = dsp_xcalloc(n ? n : 1, sizeof(*tmp));
    struct shm_mw_list l;

    for (size_t i = 0; i < n; i++) {
        tmp[i] = ms_mw_put_str(b, v[i], strlen(v[i]));
    }
    l.off = ms_mw_put(b, tmp, n * sizeof(*tmp));
    l.n = (uint32_t)n;
    free(tmp);
    return l;
}

void *ms_mw_compile(const struct ms_config *cfg, uint32_t *lists, size_t *len)
{
    struct ms_mw_blob b = {0};
    struct shm_mw_region r;
    struct shm_mw *tab;
    uint32_t tab_off;

    memset(lists, 0, cfg->nroutes * sizeof(*lists));
    *len = 0;
    if (cfg->nmws == 0) {
        return NULL;
    }
    memset(&r, 0, sizeof(r));
    ms_mw_put(&b, &r, sizeof(r));
    tab = dsp_xcalloc(cfg->nmws, sizeof(*tab));
    tab_off = ms_mw_put(&b, tab, cfg->nmws * sizeof(*tab));
    for (size_t i = 0; i < cfg->nmws; i++) {
        const struct ms_mw *m = &cfg->mws[i];
        const struct ms_mw_type *t = ms_mw_type_of(m->type);

        DSP_ASSERT(t != NULL);
        tab[i].name = ms_mw_put_str(&b, m->name, strlen(m->name));
        tab[i].type = m->type;
        tab[i].rt_slot = SHM_NONE;
        tab[i].params_off = t->compile(m->params, &b, &tab[i].params_len);
        tab[i].source = m->source;
        tab[i].line = m->line > 0 ? (uint32_t)m->line : 0;
    }
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct ms_route *rt = &cfg->routes[i];
        uint32_t l[SHM_MW_MAX_CHAIN + 1];

        if (rt->nmw == 0) {
            continue;
        }
        DSP_ASSERT(rt->nmw <= SHM_MW_MAX_CHAIN && rt->mw_ids != NULL);
        l[0] = (uint32_t)rt->nmw;
        for (size_t k = 0; k < rt->nmw; k++) {
            l[k + 1] = rt->mw_ids[k];
        }
        lists[i] = ms_mw_put(&b, l, (rt->nmw + 1) * sizeof(uint32_t));
    }
    memcpy(b.p + tab_off, tab, cfg->nmws * sizeof(*tab));
    free(tab);
    ms_mw_put(&b, NULL, 0); /* pad to 8 */
    r.magic = SHM_MW_MAGIC;
    r.nmw = (uint32_t)cfg->nmws;
    r.mws_off = tab_off;
    r.size = (uint32_t)b.len;
    memcpy(b.p, &r, sizeof(r));
    *len = b.len;
    return b.p;
}
