/* dispatcher: the built-in middleware types' master side: keys, parsing (from the file or Redis,
 * through master/ms_mw.h's accessors) and the compiled parameter blocks (shm/shm_mw.h). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dsp.h"
#include "common/fs.h"
#include "common/net.h"
#include "master/ms_config.h"
#include "master/ms_mw.h"

#define STATIC_BODY_MAX (12u * 1024) /* it goes out of the client's reply buffer whole */

static char *xstrndup(const char *s, size_t n)
{
    char *p = dsp_xmalloc(n + 1);

    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static int is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static int token_ok(const char *s, size_t n)
{
    if (n == 0) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (!is_tchar((unsigned char)s[i])) {
            return 0;
        }
    }
    return 1;
}

static int value_ok(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* Fields a middleware may not touch: the framing, the connection and what routing used. */
static int field_reserved(const char *name, size_t n)
{
    static const char *const no[] = {"content-length",   "transfer-encoding",
                                     "connection",       "keep-alive",
                                     "upgrade",          "te",
                                     "trailer",          "host",
                                     "proxy-connection", NULL};

    for (size_t i = 0; no[i] != NULL; i++) {
        if (strlen(no[i]) == n && strncasecmp(no[i], name, n) == 0) {
            return 1;
        }
    }
    return 0;
}

/* ---- headers -------------------------------------------------------------------------------- */
struct mw_headers {
    char **set_n[2], **set_v[2]; /* [0] request, [1] response */
    size_t nset[2];
    char **rm[2];
    size_t nrm[2];
};

static const char *const headers_keys[] = {"request_set", "request_remove", "response_set",
                                           "response_remove", NULL};

static void headers_free(void *p)
{
    struct mw_headers *h = p;

    for (int k = 0; k < 2; k++) {
        ms_mw_strv_free(h->set_n[k], h->nset[k]);
        ms_mw_strv_free(h->set_v[k], h->nset[k]);
        ms_mw_strv_free(h->rm[k], h->nrm[k]);
    }
    free(h);
}

/* "Name: value" lines into names and values. */
static void headers_sets(struct ms_mw_src *s, const char *key, struct mw_headers *h, int k)
{
    char **v;
    size_t n;

    if (s->ops->list(s, key, &v, &n) != 1) {
        return;
    }
    h->set_n[k] = dsp_xcalloc(n + 1, sizeof(char *));
    h->set_v[k] = dsp_xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        const char *colon = strchr(v[i], ':');
        const char *val;
        size_t nl, vl;

        if (colon == NULL || !token_ok(v[i], (size_t)(colon - v[i]))) {
            ms_mw_err(s, key, "\"%s\" must be \"Name: value\"", v[i]);
            continue;
        }
        nl = (size_t)(colon - v[i]);
        val = colon + 1;
        while (*val == ' ' || *val == '\t') {
            val++;
        }
        vl = strlen(val);
        while (vl > 0 && (val[vl - 1] == ' ' || val[vl - 1] == '\t')) {
            vl--;
        }
        if (!value_ok(val)) {
            ms_mw_err(s, key, "the value of \"%.*s\" holds a control character", (int)nl, v[i]);
            continue;
        }
        if (field_reserved(v[i], nl)) {
            ms_mw_err(s, key, "\"%.*s\" is a framing or connection field: not settable", (int)nl,
                      v[i]);
            continue;
        }
        h->set_n[k][h->nset[k]] = xstrndup(v[i], nl);
        h->set_v[k][h->nset[k]] = xstrndup(val, vl);
        h->nset[k]++;
    }
    ms_mw_strv_free(v, n);
}

static void headers_rms(struct ms_mw_src *s, const char *key, struct mw_headers *h, int k)
{
    if (s->ops->list(s, key, &h->rm[k], &h->nrm[k]) != 1) {
        return;
    }
    for (size_t i = 0; i < h->nrm[k]; i++) {
        if (!token_ok(h->rm[k][i], strlen(h->rm[k][i]))) {
            ms_mw_err(s, key, "\"%s\" is not a header name", h->rm[k][i]);
        } else if (field_reserved(h->rm[k][i], strlen(h->rm[k][i]))) {
            ms_mw_err(s, key, "\"%s\" is a framing or connection field: not removable",
                      h->rm[k][i]);
        }
    }
}

static void *headers_parse(struct ms_mw_src *s)
{
    struct mw_headers *h = dsp_xcalloc(1, sizeof(*h));

    headers_sets(s, "request_set", h, 0);
    headers_sets(s, "response_set", h, 1);
    headers_rms(s, "request_remove", h, 0);
    headers_rms(s, "response_remove", h, 1);
    if (h->nset[0] + h->nset[1] + h->nrm[0] + h->nrm[1] == 0 && s->errors == 0) {
        ms_mw_err(s, NULL,
                  "a headers middleware needs request_set, request_remove, "
                  "response_set or response_remove");
    }
    return h;
}

static uint32_t headers_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    const struct mw_headers *h = p;
    struct shm_mw_headers o;

    memset(&o, 0, sizeof(o));
    o.req_set_names = ms_mw_put_list(b, h->set_n[0], h->nset[0]);
    o.req_set_values = ms_mw_put_list(b, h->set_v[0], h->nset[0]);
    o.req_remove = ms_mw_put_list(b, h->rm[0], h->nrm[0]);
    o.resp_set_names = ms_mw_put_list(b, h->set_n[1], h->nset[1]);
    o.resp_set_values = ms_mw_put_list(b, h->set_v[1], h->nset[1]);
    o.resp_remove = ms_mw_put_list(b, h->rm[1], h->nrm[1]);
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < h->nset[k]; i++) {
            o.len_mask[k] |= 1ull << (strlen(h->set_n[k][i]) % 64);
        }
        for (size_t i = 0; i < h->nrm[k]; i++) {
            o.len_mask[k] |= 1ull << (strlen(h->rm[k][i]) % 64);
        }
    }
    *len = sizeof(o);
    return ms_mw_put(b, &o, sizeof(o));
}

const struct ms_mw_type ms_mw_headers = {"headers",     SHM_MW_HEADERS,  headers_keys,
                                         headers_parse, headers_compile, headers_free};

/* ---- static --------------------------------------------------------------------------------- */
struct mw_static {
    long status;
    char *ctype;
    char *body;
    size_t blen;
};

static const char *const static_keys[] = {"status", "content_type", "body", "body_file", NULL};

static void static_free(void *p)
{
    struct mw_static *m = p;

    free(m->ctype);
    free(m->body);
    free(m);
}

static void *static_parse(struct ms_mw_src *s)
{
    struct mw_static *m = dsp_xcalloc(1, sizeof(*m));
    const char *v = NULL, *f = NULL;
    char err[512];
    int hb, hf;

    m->status = 200;
    s->ops->num(s, "status", 200, 599, &m->status);
    if (s->ops->str(s, "content_type", &v) == 1) {
        if (v[0] == '\0' || !value_ok(v)) {
            ms_mw_err(s, "content_type", "must be a media type such as \"text/html\"");
        } else {
            m->ctype = dsp_xstrdup(v);
        }
    }
    hb = s->ops->str(s, "body", &v);
    hf = s->ops->str(s, "body_file", &f);
    if (hb == 1 && hf == 1) {
        ms_mw_err(s, "body_file", "give body or body_file, not both");
    } else if (hb == 1) {
        m->blen = strlen(v);
        m->body = dsp_xstrdup(v);
        if (m->blen > STATIC_BODY_MAX) {
            ms_mw_err(s, "body", "at most %u bytes", STATIC_BODY_MAX);
        }
    } else if (hf == 1) {
        char *path = ms_mw_path(s, f);
        if (fs_read_regular(path, STATIC_BODY_MAX, &m->body, &m->blen, err, sizeof(err)) != 0) {
            ms_mw_err(s, "body_file", "%s", err);
        } else if (memchr(m->body, '\0', m->blen) != NULL) {
            ms_mw_err(s, "body_file", "\"%s\" holds a NUL byte", path);
        }
        free(path);
    }
    if ((m->status == 204 || m->status == 304) && m->blen > 0) {
        ms_mw_err(s, "status", "a %ld answer has no body", m->status);
    }
    if (m->ctype == NULL) {
        m->ctype = dsp_xstrdup("text/plain; charset=utf-8");
    }
    return m;
}

static uint32_t static_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    const struct mw_static *m = p;
    struct shm_mw_static o;

    memset(&o, 0, sizeof(o));
    o.status = (uint32_t)m->status;
    o.content_type = ms_mw_put_str(b, m->ctype, strlen(m->ctype));
    o.body = ms_mw_put_str(b, m->body != NULL ? m->body : "", m->blen);
    *len = sizeof(o);
    return ms_mw_put(b, &o, sizeof(o));
}

const struct ms_mw_type ms_mw_static = {"static",     SHM_MW_STATIC,  static_keys,
                                        static_parse, static_compile, static_free};

/* ---- ip_allow ------------------------------------------------------------------------------- */
struct mw_ip_allow {
    struct shm_cidr *c;
    size_t n;
};

static const char *const ip_allow_keys[] = {"cidrs", NULL};

static void ip_allow_free(void *p)
{
    struct mw_ip_allow *m = p;

    free(m->c);
    free(m);
}

static void *ip_allow_parse(struct ms_mw_src *s)
{
    struct mw_ip_allow *m = dsp_xcalloc(1, sizeof(*m));
    char **v, err[256];
    size_t n;
    int r = s->ops->list(s, "cidrs", &v, &n);

    if (r == 0 || (r == 1 && n == 0)) {
        ms_mw_err(s, NULL, "an ip_allow middleware needs cidrs (a list such as [\"10.0.0.0/8\"])");
    }
    if (r != 1) {
        return m;
    }
    m->c = dsp_xcalloc(n + 1, sizeof(*m->c));
    for (size_t i = 0; i < n; i++) {
        struct net_cidr nc;
        if (net_cidr_parse(v[i], &nc, err, sizeof(err)) != 0) {
            ms_mw_err(s, "cidrs", "\"%s\": %s", v[i], err);
            continue;
        }
        m->c[m->n].family = nc.family;
        m->c[m->n].prefix = nc.prefix;
        memcpy(m->c[m->n].addr, nc.addr, 16);
        m->n++;
    }
    ms_mw_strv_free(v, n);
    return m;
}

static uint32_t ip_allow_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    const struct mw_ip_allow *m = p;
    struct shm_mw_ip_allow o;

    memset(&o, 0, sizeof(o));
    o.cidrs_off = ms_mw_put(b, m->c, m->n * sizeof(*m->c));
    o.ncidrs = (uint32_t)m->n;
    *len = sizeof(o);
    return ms_mw_put(b, &o, sizeof(o));
}

const struct ms_mw_type ms_mw_ip_allow = {"ip_allow",     SHM_MW_IP_ALLOW,  ip_allow_keys,
                                          ip_allow_parse, ip_allow_compile, ip_allow_free};

/* ---- redirect_https ------------------------------------------------------------------------- */
static const char *const redirect_keys[] = {"status", NULL};

static void *redirect_parse(struct ms_mw_src *s)
{
    struct shm_mw_redirect *m = dsp_xcalloc(1, sizeof(*m));
    long st = 308;

    if (s->ops->num(s, "status", 301, 308, &st) == 1 &&
        (st != 301 && st != 302 && st != 303 && st != 307 && st != 308)) {
        ms_mw_err(s, "status", "must be 301, 302, 303, 307 or 308 (got %ld)", st);
    }
    m->status = (uint32_t)st;
    return m;
}

static uint32_t plain_compile(const void *p, size_t n, struct ms_mw_blob *b, uint32_t *len)
{
    *len = (uint32_t)n;
    return ms_mw_put(b, p, n);
}

static uint32_t redirect_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    return plain_compile(p, sizeof(struct shm_mw_redirect), b, len);
}

const struct ms_mw_type ms_mw_redirect_https = {"redirect_https", SHM_MW_REDIRECT_HTTPS,
                                                redirect_keys,    redirect_parse,
                                                redirect_compile, free};

/* ---- strip_prefix --------------------------------------------------------------------------- */
static const char *const strip_keys[] = {"prefix", NULL};

static void *strip_parse(struct ms_mw_src *s)
{
    const char *v;
    char *p = NULL;
    size_t n;

    if (ms_mw_need_str(s, "prefix", &v) != 1) {
        return dsp_xstrdup("");
    }
    n = strlen(v);
    while (n > 1 && v[n - 1] == '/') {
        n--;
    }
    if (v[0] != '/' || n < 2 || !ms_valid_url_path(v) || strpbrk(v, "?#") != NULL) {
        ms_mw_err(s, "prefix", "\"%s\" must be a path such as \"/api\" (not \"/\")", v);
    }
    p = xstrndup(v, n);
    return p;
}

static uint32_t strip_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    struct shm_mw_strip o;

    memset(&o, 0, sizeof(o));
    o.prefix = ms_mw_put_str(b, p, strlen(p));
    *len = sizeof(o);
    return ms_mw_put(b, &o, sizeof(o));
}

const struct ms_mw_type ms_mw_strip_prefix = {"strip_prefix", SHM_MW_STRIP_PREFIX, strip_keys,
                                              strip_parse,    strip_compile,       free};

/* ---- max_body ------------------------------------------------------------------------------- */
static const char *const max_body_keys[] = {"bytes", NULL};

static void *max_body_parse(struct ms_mw_src *s)
{
    struct shm_mw_max_body *m = dsp_xcalloc(1, sizeof(*m));
    long v = 0;

    switch (s->ops->num(s, "bytes", 0, LONG_MAX, &v)) {
    case 0:
        ms_mw_err(s, NULL, "bytes is required");
        break;
    case 1:
        m->bytes = (uint64_t)v;
        break;
    default:
        break;
    }
    return m;
}

static uint32_t max_body_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    return plain_compile(p, sizeof(struct shm_mw_max_body), b, len);
}

const struct ms_mw_type ms_mw_max_body = {"max_body",     SHM_MW_MAX_BODY,  max_body_keys,
                                          max_body_parse, max_body_compile, free};

/* ---- cors ----------------------------------------------------------------------------------- */
struct mw_cors {
    char **origins;
    size_t norigins;
    char *methods, *headers;
    long max_age;
    int credentials;
};

static const char *const cors_keys[] = {"origins",     "methods",   "headers",
                                        "credentials", "max_age_s", NULL};

static void cors_free(void *p)
{
    struct mw_cors *m = p;

    ms_mw_strv_free(m->origins, m->norigins);
    free(m->methods);
    free(m->headers);
    free(m);
}

/* A list of tokens joined by ", " (heap), or NULL when absent (an error reported). */
static char *token_list(struct ms_mw_src *s, const char *key, const char *dflt)
{
    char **v, *out;
    size_t n, len = 1;
    int r = s->ops->list(s, key, &v, &n);

    if (r != 1) {
        return dsp_xstrdup(dflt);
    }
    for (size_t i = 0; i < n; i++) {
        if (!token_ok(v[i], strlen(v[i]))) {
            ms_mw_err(s, key, "\"%s\" is not a token", v[i]);
        }
        len += strlen(v[i]) + 2;
    }
    out = dsp_xcalloc(1, len);
    for (size_t i = 0; i < n; i++) {
        if (i > 0) {
            strcat(out, ", ");
        }
        strcat(out, v[i]);
    }
    ms_mw_strv_free(v, n);
    return out;
}

static void *cors_parse(struct ms_mw_src *s)
{
    struct mw_cors *m = dsp_xcalloc(1, sizeof(*m));
    int r = s->ops->list(s, "origins", &m->origins, &m->norigins);

    if (r == 0 || (r == 1 && m->norigins == 0)) {
        ms_mw_err(s, NULL,
                  "a cors middleware needs origins (\"https://app.example.com\" or \"*\")");
    }
    for (size_t i = 0; i < m->norigins; i++) {
        const char *o = m->origins[i];
        if (strcmp(o, "*") != 0 &&
            ((strncmp(o, "http://", 7) != 0 && strncmp(o, "https://", 8) != 0) ||
             strchr(strchr(o, ':') + 3, '/') != NULL || !value_ok(o) || strchr(o, ' ') != NULL ||
             strchr(o, ',') != NULL)) {
            ms_mw_err(s, "origins", "\"%s\" must be \"*\" or scheme://host[:port]", o);
        }
    }
    m->methods = token_list(s, "methods", "GET, HEAD, POST");
    m->headers = token_list(s, "headers", "");
    s->ops->boolean(s, "credentials", &m->credentials);
    s->ops->num(s, "max_age_s", 0, 86400 * 7, &m->max_age);
    return m;
}

static uint32_t cors_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    const struct mw_cors *m = p;
    struct shm_mw_cors o;

    memset(&o, 0, sizeof(o));
    o.origins = ms_mw_put_list(b, m->origins, m->norigins);
    o.methods = ms_mw_put_str(b, m->methods, strlen(m->methods));
    o.headers = ms_mw_put_str(b, m->headers, strlen(m->headers));
    o.max_age_s = (uint32_t)m->max_age;
    o.flags = m->credentials ? SHM_MW_CORS_CREDENTIALS : 0u;
    for (size_t i = 0; i < m->norigins; i++) {
        if (strcmp(m->origins[i], "*") == 0) {
            o.flags |= SHM_MW_CORS_ANY_ORIGIN;
        }
    }
    *len = sizeof(o);
    return ms_mw_put(b, &o, sizeof(o));
}

const struct ms_mw_type ms_mw_cors = {"cors",     SHM_MW_CORS,  cors_keys,
                                      cors_parse, cors_compile, cors_free};
