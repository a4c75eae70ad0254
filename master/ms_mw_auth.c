/* dispatcher: basic_auth and forward_auth on the master's side: keys, parsing (file or Redis,
 * through master/ms_mw.h's accessors) and their parameter blocks (shm/shm_mw_auth.h). The users
 * file of a basic_auth is read and checked here, at every load and reload: a line the worker
 * could not use (an MD5, DES or plain-text password, a malformed hash, a user given twice) is an
 * error naming the file's line, and the whole file goes into the snapshot. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/dsp.h"
#include "common/fs.h"
#include "common/htpasswd.h"
#include "common/net.h"
#include "master/ms_mw.h"
#include "shm/shm_mw_auth.h"

#define USERS_FILE_MAX (16u * 1024 * 1024)
#define FA_TIMEOUT_DEF 5000

/* ---- basic_auth -------------------------------------------------------------------------------
 */
struct mw_basic {
    char *realm;
    char *path;
    char *text; /* the file; users point into it */
    struct htp_user *users;
    size_t nusers;
};

static const char *const basic_keys[] = {"realm", "users_file", NULL};

static void basic_free(void *p)
{
    struct mw_basic *m = p;

    free(m->realm);
    free(m->path);
    free(m->text);
    free(m->users);
    free(m);
}

struct htp_errctx {
    struct ms_mw_src *s;
    const char *path;
    unsigned reported;
};

static void htp_err(void *ctx, unsigned line, const char *msg)
{
    struct htp_errctx *e = ctx;

    /* A broken file is reported line by line, up to a point. */
    if (e->reported++ < 20) {
        ms_mw_err(e->s, "users_file", "%s:%u: %s", e->path, line, msg);
    } else if (e->reported == 21) {
        ms_mw_err(e->s, "users_file", "%s: more bad lines follow", e->path);
    }
}

static int realm_ok(const char *r)
{
    for (; *r != '\0'; r++) {
        unsigned char ch = (unsigned char)*r;
        if (ch < 0x20 || ch == 0x7f || ch == '"' || ch == '\\') {
            return 0;
        }
    }
    return 1;
}

static void *basic_parse(struct ms_mw_src *s)
{
    struct mw_basic *m = dsp_xcalloc(1, sizeof(*m));
    const char *v;
    char err[512];
    size_t len;
    long n;

    if (s->ops->str(s, "realm", &v) == 1) {
        if (v[0] == '\0' || strlen(v) > 200 || !realm_ok(v)) {
            ms_mw_err(s, "realm", "must be 1-200 characters without '\"', '\\' or controls");
        } else {
            m->realm = dsp_xstrdup(v);
        }
    }
    if (m->realm == NULL) {
        m->realm = dsp_xstrdup("Restricted");
    }
    if (ms_mw_need_str(s, "users_file", &v) != 1) {
        basic_free(m);
        return NULL;
    }
    m->path = ms_mw_path(s, v);
    if (fs_read_regular(m->path, USERS_FILE_MAX, &m->text, &len, err, sizeof(err)) != 0) {
        ms_mw_err(s, "users_file", "%s", err);
        basic_free(m);
        return NULL;
    }
    {
        struct htp_errctx e = {s, m->path, 0};
        n = htp_parse(m->text, len, &m->users, htp_err, &e);
        DSP_ASSERT(n >= 0); /* (out of memory) */
        if (e.reported > 0) {
            basic_free(m);
            return NULL;
        }
    }
    m->nusers = (size_t)n;
    if (m->nusers == 0) {
        ms_mw_err(s, "users_file", "\"%s\" names no user", m->path);
        basic_free(m);
        return NULL;
    }
    return m;
}

static uint32_t basic_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    const struct mw_basic *m = p;
    struct shm_mw_basic_auth o;
    struct shm_mw_htuser *t = dsp_xcalloc(m->nusers, sizeof(*t));

    memset(&o, 0, sizeof(o));
    o.realm = ms_mw_put_str(b, m->realm, strlen(m->realm));
    o.users_file = ms_mw_put_str(b, m->path, strlen(m->path));
    for (size_t i = 0; i < m->nusers; i++) {
        t[i].user = ms_mw_put_str(b, m->users[i].user, m->users[i].ulen);
        t[i].hash = ms_mw_put_str(b, m->users[i].hash, m->users[i].hlen);
    }
    o.users_off = ms_mw_put(b, t, m->nusers * sizeof(*t));
    o.nusers = (uint32_t)m->nusers;
    for (size_t i = 1; i < m->nusers; i++) {
        if (htp_cost_us(m->users[i].hash, m->users[i].hlen) >
            htp_cost_us(m->users[o.dummy].hash, m->users[o.dummy].hlen)) {
            o.dummy = (uint32_t)i;
        }
    }
    free(t);
    *len = sizeof(o);
    return ms_mw_put(b, &o, sizeof(o));
}

const struct ms_mw_type ms_mw_basic_auth = {"basic_auth", SHM_MW_BASIC_AUTH, basic_keys,
                                            basic_parse,  basic_compile,     basic_free};

/* ---- forward_auth -----------------------------------------------------------------------------
 */
struct mw_fauth {
    char *address;
    char *path;
    char **copy;
    size_t ncopy;
    long timeout_ms;
    uint16_t family, port;
    uint8_t ip[16];
};

static const char *const fauth_keys[] = {"address", "path", "copy_headers", "timeout_ms", NULL};

static void fauth_free(void *p)
{
    struct mw_fauth *m = p;

    free(m->address);
    free(m->path);
    ms_mw_strv_free(m->copy, m->ncopy);
    free(m);
}

static int tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* The fields a copy may not name: framing, connection, routing. */
static int copy_reserved(const char *n)
{
    static const char *const no[] = {"content-length",   "transfer-encoding",
                                     "connection",       "keep-alive",
                                     "upgrade",          "te",
                                     "trailer",          "host",
                                     "proxy-connection", NULL};

    for (size_t i = 0; no[i] != NULL; i++) {
        if (strcasecmp(no[i], n) == 0) {
            return 1;
        }
    }
    return 0;
}

static void fauth_address(struct ms_mw_src *s, struct mw_fauth *m, const char *v)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    char err[256];

    if (strncmp(v, NET_UNIX_PREFIX, NET_UNIX_PREFIX_LEN) == 0) {
        struct sockaddr_un sun;
        if (net_unix_addr(v + NET_UNIX_PREFIX_LEN, strlen(v) - NET_UNIX_PREFIX_LEN, &sun, &sl) !=
            0) {
            ms_mw_err(s, "address",
                      "\"%s\": a unix socket needs an absolute path of at most "
                      "107 bytes",
                      v);
            return;
        }
        m->family = AF_UNIX;
    } else if (v[0] == '*' || net_parse_addr(v, 0, &ss, &sl, err, sizeof(err)) != 0) {
        ms_mw_err(s, "address", "\"%s\": expected IP:port, [IPv6]:port or unix:/path", v);
        return;
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
        m->family = AF_INET6;
        m->port = ntohs(s6->sin6_port);
        memcpy(m->ip, &s6->sin6_addr, 16);
    } else {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
        m->family = AF_INET;
        m->port = ntohs(s4->sin_port);
        memcpy(m->ip, &s4->sin_addr, 4);
    }
    if (strlen(v) > 120) {
        ms_mw_err(s, "address", "at most 120 bytes");
        return;
    }
    m->address = dsp_xstrdup(v);
}

static void *fauth_parse(struct ms_mw_src *s)
{
    struct mw_fauth *m = dsp_xcalloc(1, sizeof(*m));
    const char *v;
    int errs = s->errors;

    m->timeout_ms = FA_TIMEOUT_DEF;
    if (ms_mw_need_str(s, "address", &v) == 1) {
        fauth_address(s, m, v);
    }
    if (s->ops->str(s, "path", &v) == 1) {
        int ok = v[0] == '/' && strlen(v) <= 1024;
        for (const char *q = v; ok && *q != '\0'; q++) {
            ok = (unsigned char)*q > 0x20 && (unsigned char)*q < 0x7f && *q != '#';
        }
        if (!ok) {
            ms_mw_err(s, "path",
                      "must be an origin-form path such as \"/verify\" (no spaces or "
                      "controls)");
        } else {
            m->path = dsp_xstrdup(v);
        }
    }
    if (m->path == NULL) {
        m->path = dsp_xstrdup("/");
    }
    if (s->ops->list(s, "copy_headers", &m->copy, &m->ncopy) == 1) {
        for (size_t i = 0; i < m->ncopy; i++) {
            int ok = m->copy[i][0] != '\0' && strlen(m->copy[i]) <= 128;
            for (const char *q = m->copy[i]; ok && *q != '\0'; q++) {
                ok = tchar((unsigned char)*q);
            }
            if (!ok || copy_reserved(m->copy[i])) {
                ms_mw_err(s, "copy_headers", "\"%s\" is not a field name that can be copied",
                          m->copy[i]);
            }
        }
    }
    s->ops->num(s, "timeout_ms", 1, 600000, &m->timeout_ms);
    if (s->errors != errs || m->address == NULL) {
        fauth_free(m);
        return NULL;
    }
    return m;
}

static uint32_t fauth_compile(const void *p, struct ms_mw_blob *b, uint32_t *len)
{
    const struct mw_fauth *m = p;
    struct shm_mw_forward_auth o;

    memset(&o, 0, sizeof(o));
    o.address = ms_mw_put_str(b, m->address, strlen(m->address));
    o.path = ms_mw_put_str(b, m->path, strlen(m->path));
    o.copy_headers = ms_mw_put_list(b, m->copy, m->ncopy);
    o.timeout_ms = (uint32_t)m->timeout_ms;
    o.family = m->family;
    o.port = m->port;
    memcpy(o.ip, m->ip, 16);
    *len = sizeof(o);
    return ms_mw_put(b, &o, sizeof(o));
}

const struct ms_mw_type ms_mw_forward_auth = {"forward_auth", SHM_MW_FORWARD_AUTH, fauth_keys,
                                              fauth_parse,    fauth_compile,       fauth_free};
