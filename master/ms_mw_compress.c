/* dispatcher: the compress middleware's master side: its keys (from dispatcher.conf or a Redis
 * `middleware:{name}` hash, through master/ms_mw.h's accessors), their checks, and its compiled
 * parameter block (struct shm_mw_compress). The worker side is worker/wk_mwgz.c. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common/dsp.h"
#include "master/ms_mw.h"

#define COMPRESS_TYPES_MAX 64

struct mw_compress {
    struct shm_mw_compress p; /* (types filled in at compile time) */
    char **types;
    size_t ntypes;
};

static const char *const compress_keys[] = {"min_bytes",  "types",     "level",
                                            "br_quality", "encodings", NULL};

static void compress_free(void *p)
{
    struct mw_compress *m = p;

    ms_mw_strv_free(m->types, m->ntypes);
    free(m);
}

static int tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Are <s>[0, n) all token characters other than '*' (and at least one)? */
static int word_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!tchar((unsigned char)s[i]) || s[i] == '*') {
            return 0;
        }
    }
    return n > 0;
}

/* A media type pattern: "type/subtype", "type/" followed by '*', '*' or its "any/any" form. */
static int type_pattern_ok(const char *t)
{
    const char *slash = strchr(t, '/');

    if (strcmp(t, "*") == 0 || strcmp(t, "*/*") == 0) {
        return 1;
    }
    if (slash == NULL || !word_ok(t, (size_t)(slash - t))) {
        return 0;
    }
    return strcmp(slash + 1, "*") == 0 || word_ok(slash + 1, strlen(slash + 1));
}

static void parse_types(struct ms_mw_src *s, struct mw_compress *m)
{
    if (s->ops->list(s, "types", &m->types, &m->ntypes) != 1) {
        return; /* absent: the default list (worker/wk_mwgz.c); wrong: reported */
    }
    if (m->ntypes == 0) {
        ms_mw_err(s, "types", "must name at least one media type (leave it out for the default)");
    } else if (m->ntypes > COMPRESS_TYPES_MAX) {
        ms_mw_err(s, "types", "at most %d media types", COMPRESS_TYPES_MAX);
    }
    for (size_t i = 0; i < m->ntypes; i++) {
        if (!type_pattern_ok(m->types[i])) {
            ms_mw_err(s, "types", "\"%s\" is not a media type (\"text/html\", \"text/*\" or \"*\")",
                      m->types[i]);
        }
    }
}

static void parse_encodings(struct ms_mw_src *s, struct mw_compress *m)
{
    char **v;
    size_t n;

    m->p.encodings = SHM_MW_GZ_GZIP | SHM_MW_GZ_BR;
    if (s->ops->list(s, "encodings", &v, &n) != 1) {
        return;
    }
    m->p.encodings = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(v[i], "gzip") == 0) {
            m->p.encodings |= SHM_MW_GZ_GZIP;
        } else if (strcmp(v[i], "br") == 0) {
            m->p.encodings |= SHM_MW_GZ_BR;
        } else {
            ms_mw_err(s, "encodings", "\"%s\" is not one of \"gzip\", \"br\"", v[i]);
        }
    }
    if (n == 0) {
        ms_mw_err(s, "encodings", "must name \"gzip\", \"br\" or both");
    }
    ms_mw_strv_free(v, n);
}

static void *compress_parse(struct ms_mw_src *s)
{
    struct mw_compress *m = dsp_xcalloc(1, sizeof(*m));
    long v;

    m->p.min_bytes = 1024;
    m->p.level = 6;
    m->p.br_quality = 4;
    if (s->ops->num(s, "min_bytes", 0, LONG_MAX, &v) == 1) {
        m->p.min_bytes = (uint64_t)v;
    }
    if (s->ops->num(s, "level", 1, 9, &v) == 1) {
        m->p.level = (uint32_t)v;
    }
    if (s->ops->num(s, "br_quality", 0, 11, &v) == 1) {
        m->p.br_quality = (uint32_t)v;
    }
    parse_types(s, m);
    parse_encodings(s, m);
    return m;
}

static uint32_t compress_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    const struct mw_compress *m = p;
    struct shm_mw_compress o = m->p;

    o.types = ms_mw_put_list(b, m->types, m->types != NULL ? m->ntypes : 0);
    *len = sizeof(o);
    return ms_mw_put(b, &o, sizeof(o));
}

const struct ms_mw_type ms_mw_compress = {"compress",     SHM_MW_COMPRESS,  compress_keys,
                                          compress_parse, compress_compile, compress_free};
