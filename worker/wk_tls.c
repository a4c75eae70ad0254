/* dispatcher: the worker's TLS layer. Each adopted generation gets a wk_tls_gen built from the PEM
 * text the master published; SSL objects hold references on their contexts, so dropping a set
 * never disturbs a connection made from it. Ticket keys are read from the control segment, so a
 * ticket issued by any worker resumes on every other. */
#include "worker/wk_tls.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "common/tls.h"
#include "shm/shm_snap.h"
#include "shm/shm_types.h"
#include "worker/wk_internal.h"

struct wk_tls_gen {
    const struct shm_snap_hdr *snap;
    uint32_t ncerts;
    uint32_t def;  /* default certificate, or SHM_NONE */
    SSL_CTX **ctx; /* per certificate; NULL when it could not be built */
    struct wk_sni *sni;
    uint32_t nservices;
    SSL_CTX **svc_ctx;    /* per service: client context, NULL without TLS */
    uint64_t *svc_ctx_id; /* identity of each client context, for session reuse */
    uint32_t nlisteners;
    struct tg_listener *lst; /* per listener: client certificate verification */
    int client_ca;           /* some listener has client_ca */
};

/* A listener with client_ca: what each of its SSLs gets. */
struct tg_listener {
    int mode;                    /* SSL_VERIFY_*; 0 = no client certificates */
    X509_STORE *store;           /* the CAs of client_ca */
    STACK_OF(X509_NAME) * names; /* their subjects, sent in the certificate request */
    unsigned char
        sid[SSL_MAX_SID_CTX_LENGTH]; /* session id context: a session (ticket)
                                      * made elsewhere never resumes here, skipping verification */
    unsigned sidlen;
    uint16_t family, port; /* its address, to recognise its sockets by */
    uint8_t ip[16];
};

static EVP_CIPHER *aes256cbc;
static int ex_ocsp = -1;     /* ex-data of server contexts: their stapled OCSP response */
static int ex_upstream = -1; /* ex-data of client SSLs: (ctx id << 20) | (backend slot + 1) */
static int ex_h2 = -1;       /* ex-data of server SSLs: non-NULL when the listener offers h2 */
static uint64_t next_ctx_id = 1;
static char last_error[256];

/* Last session per backend runtime slot: new upstream connections resume instead of paying a
 * full handshake. Allocated on first use (it is 1 MiB of pointers, touched sparsely). */
struct up_session {
    SSL_SESSION *sess;
    uint64_t ctx_id;
};
static struct up_session *up_sessions;

/* ---- session ticket keys --------------------------------------------------------------------- */

/* A private copy of the control segment's key ring, refreshed when its seqlock moves. */
static struct {
    uint64_t seq;
    int valid;
    struct shm_tkeys k;
} tk;

static void tk_refresh(void)
{
    const struct shm_tkeys *r = &wk.ctl->tkeys;
    struct shm_tkeys tmp;

    /* The master holds the lock for a few stores; a bounded spin is plenty. Should it have died
     * mid-write, the previous copy keeps serving. */
    for (int tries = 0; tries < 10000; tries++) {
        uint64_t s1 = __atomic_load_n(&r->seq, __ATOMIC_ACQUIRE);
        const uint64_t *src = (const uint64_t *)(const void *)r;
        uint64_t *dst = (uint64_t *)(void *)&tmp;

        if (s1 & 1) {
            continue;
        }
        if (tk.valid && s1 == tk.seq) {
            return;
        }
        for (size_t i = 0; i < sizeof(tmp) / 8; i++) {
            dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&r->seq, __ATOMIC_RELAXED) == s1) {
            explicit_bzero(&tk.k, sizeof(tk.k));
            memcpy(&tk.k, &tmp, sizeof(tmp));
            explicit_bzero(&tmp, sizeof(tmp));
            tk.seq = s1;
            tk.valid = 1;
            return;
        }
    }
    explicit_bzero(&tmp, sizeof(tmp));
}

static int mac_init(EVP_MAC_CTX *hctx, const struct shm_tkey *k)
{
    OSSL_PARAM params[3];

    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)(uintptr_t)k->hmac,
                                                  sizeof(k->hmac));
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[2] = OSSL_PARAM_construct_end();
    return EVP_MAC_CTX_set_params(hctx, params);
}

/* OpenSSL's ticket key callback. Encrypt with the current key; decrypt with any key still in its
 * window, asking for a fresh ticket (return 2) when that key no longer encrypts. (TLS 1.3
 * connections get a fresh ticket anyway: common/xport.c.) */
static int on_ticket_key(SSL *s, unsigned char key_name[16], unsigned char *iv,
                         EVP_CIPHER_CTX *ectx, EVP_MAC_CTX *hctx, int enc)
{
    uint64_t now = wk.now / 1000;
    const struct shm_tkey *k;

    (void)s;
    tk_refresh();
    if (!tk.valid) {
        return 0;
    }
    if (enc) {
        if (tk.k.current >= SHM_TKEY_SLOTS) {
            return 0;
        }
        k = &tk.k.keys[tk.k.current];
        if (k->dec_until <= now) {
            return 0; /* no live key: no ticket, rather than one nobody can open */
        }
        if (RAND_bytes(iv, EVP_CIPHER_get_iv_length(aes256cbc)) != 1) {
            return -1;
        }
        memcpy(key_name, k->name, 16);
        if (EVP_EncryptInit_ex(ectx, aes256cbc, NULL, (const unsigned char *)k->aes, iv) != 1 ||
            mac_init(hctx, k) != 1) {
            return -1;
        }
        return 1;
    }
    for (uint32_t i = 0; i < SHM_TKEY_SLOTS; i++) {
        k = &tk.k.keys[i];
        if (k->dec_until <= now || memcmp(key_name, k->name, 16) != 0) {
            continue;
        }
        if (mac_init(hctx, k) != 1 ||
            EVP_DecryptInit_ex(ectx, aes256cbc, NULL, (const unsigned char *)k->aes, iv) != 1) {
            return -1;
        }
        return (i == tk.k.current && now < k->enc_until) ? 1 : 2;
    }
    return 0; /* unknown or retired key: full handshake */
}

/* ---- the SNI index -------------------------------------------------------------------------- */

struct sni_ent {
    const char *name; /* NULL = empty bucket */
    uint32_t len;
    uint32_t hash;
    uint32_t cert;
    uint32_t expired;
};

struct wk_sni {
    uint32_t mask;
    struct sni_ent *tab;
};

static uint32_t fnv1a(const char *p, size_t n)
{
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 16777619u;
    }
    return h;
}

struct wk_sni *wk_sni_new(uint32_t nnames)
{
    struct wk_sni *x = calloc(1, sizeof(*x));
    uint32_t cap = 8;

    if (x == NULL) {
        return NULL;
    }
    while (cap < 2u * (uint64_t)nnames) {
        cap <<= 1;
    }
    x->tab = calloc(cap, sizeof(*x->tab));
    if (x->tab == NULL) {
        free(x);
        return NULL;
    }
    x->mask = cap - 1;
    return x;
}

static struct sni_ent *sni_slot(const struct wk_sni *x, const char *name, size_t len, uint32_t h)
{
    for (uint32_t i = h & x->mask;; i = (i + 1) & x->mask) {
        struct sni_ent *e = &x->tab[i];

        if (e->name == NULL || (e->hash == h && e->len == len && memcmp(e->name, name, len) == 0)) {
            return e;
        }
    }
}

void wk_sni_add(struct wk_sni *x, const char *name, size_t len, uint32_t cert, int expired)
{
    uint32_t h = fnv1a(name, len);
    struct sni_ent *e = sni_slot(x, name, len, h);

    /* Sized for every name at load factor 1/2, so there is always a free bucket. */
    if (e->name != NULL && !(e->expired && !expired)) {
        return;
    }
    e->name = name;
    e->len = (uint32_t)len;
    e->hash = h;
    e->cert = cert;
    e->expired = expired != 0;
}

static uint32_t sni_get(const struct wk_sni *x, const char *name, size_t len)
{
    const struct sni_ent *e = sni_slot(x, name, len, fnv1a(name, len));

    return e->name != NULL ? e->cert : UINT32_MAX;
}

uint32_t wk_sni_find(const struct wk_sni *x, const char *name, size_t len)
{
    char wild[TLS_MAX_NAME + 2];
    const char *dot;
    uint32_t c;

    if (x == NULL || len == 0) {
        return UINT32_MAX;
    }
    c = sni_get(x, name, len);
    if (c != UINT32_MAX) {
        return c;
    }
    dot = memchr(name, '.', len);
    if (dot == NULL || dot == name || (size_t)(dot - name) + 1 >= len || len > TLS_MAX_NAME) {
        return UINT32_MAX;
    }
    wild[0] = '*';
    memcpy(wild + 1, dot, len - (size_t)(dot - name));
    return sni_get(x, wild, 1 + len - (size_t)(dot - name));
}

void wk_sni_free(struct wk_sni *x)
{
    if (x != NULL) {
        free(x->tab);
        free(x);
    }
}

/* ---- contexts per generation ----------------------------------------------------------------- */

static int on_servername(SSL *s, int *al, void *arg)
{
    const struct wk_tls_gen *tg = wk.cur != NULL ? wk.cur->tls : NULL;
    const char *sn = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
    char name[TLS_MAX_NAME + 1];
    size_t n;
    uint32_t c;

    (void)al;
    (void)arg;
    if (sn == NULL || tg == NULL) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    n = tls_name_norm(sn, strlen(sn), name);
    c = n > 0 ? wk_sni_find(tg->sni, name, n) : UINT32_MAX;
    if (c == UINT32_MAX || tg->ctx[c] == NULL) {
        c = tg->def;
    }
    if (c != SHM_NONE && tg->ctx[c] != NULL && tg->ctx[c] != SSL_get_SSL_CTX(s)) {
        X509_STORE *st = NULL;

        /* The verify store lives with the certificate settings, which the switch replaces. */
        SSL_get0_verify_cert_store(s, &st);
        if (st != NULL && X509_STORE_up_ref(st) != 1) {
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        SSL_set_SSL_CTX(s, tg->ctx[c]);
        if (st != NULL && SSL_set0_verify_cert_store(s, st) != 1) {
            X509_STORE_free(st);
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

static int same_str(const struct shm_snap_hdr *a, struct shm_str x, const struct shm_snap_hdr *b,
                    struct shm_str y)
{
    return x.len == y.len && memcmp(shm_s(a, x), shm_s(b, y), x.len) == 0;
}

/* A stapled OCSP response, owned by the server context it belongs to (which may outlive the
 * generation whose snapshot it came from). */
struct ocsp_blob {
    size_t len;
    unsigned char der[];
};

static void ocsp_blob_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                           void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    free(ptr);
}

/* OpenSSL asks what to staple when a client sent status_request: the context's response, as is
 * (the OCSP response of the certificate SNI picked; none: nothing stapled). */
static int on_status(SSL *s, void *arg)
{
    const struct ocsp_blob *ob = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(s), ex_ocsp);
    unsigned char *copy;

    (void)arg;
    if (ob == NULL || SSL_get_tlsext_status_type(s) != TLSEXT_STATUSTYPE_ocsp) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    copy = OPENSSL_malloc(ob->len);
    if (copy == NULL) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    memcpy(copy, ob->der, ob->len);
    if (SSL_set_tlsext_status_ocsp_resp(s, copy, (long)ob->len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* Give <ctx> certificate <c>'s OCSP response to staple. Returns 0 or -1 (out of memory). */
static int set_ocsp(SSL_CTX *ctx, const struct shm_snap_hdr *h, const struct shm_cert *c)
{
    struct ocsp_blob *ob;

    if (c->ocsp.len == 0) {
        return 0;
    }
    ob = malloc(sizeof(*ob) + c->ocsp.len);
    if (ob == NULL) {
        return -1;
    }
    ob->len = c->ocsp.len;
    memcpy(ob->der, shm_s(h, c->ocsp), c->ocsp.len);
    if (SSL_CTX_set_ex_data(ctx, ex_ocsp, ob) != 1) {
        free(ob);
        return -1;
    }
    SSL_CTX_set_tlsext_status_cb(ctx, on_status);
    return 0;
}

/* A server context of <prev> made from the same PEM text and policy as certificate <i>. */
static SSL_CTX *reuse_server_ctx(const struct wk_tls_gen *prev, const struct shm_snap_hdr *h,
                                 uint32_t i)
{
    const struct shm_cert *c = &shm_certs(h)[i];
    const struct shm_cert *pc;

    if (prev == NULL || prev->snap->tls_min_version != h->tls_min_version) {
        return NULL;
    }
    pc = shm_certs(prev->snap);
    /* Same position first: that is the common case of a reload that changed no certificate. */
    for (uint32_t k = 0; k <= prev->ncerts; k++) {
        uint32_t j = k == 0 ? i : k - 1;

        if (j >= prev->ncerts || (k > 0 && j == i) || prev->ctx[j] == NULL) {
            continue;
        }
        if (same_str(h, c->cert_pem, prev->snap, pc[j].cert_pem) &&
            same_str(h, c->key_pem, prev->snap, pc[j].key_pem) &&
            same_str(h, c->ocsp, prev->snap, pc[j].ocsp)) {
            return SSL_CTX_up_ref(prev->ctx[j]) == 1 ? prev->ctx[j] : NULL;
        }
    }
    return NULL;
}

/* ALPN: "h2" when the client offers it and the listener allows it, else "http/1.1" when
 * offered; a client that offers neither goes on without ALPN (and speaks HTTP/1). */
static int on_alpn(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char both[] = "\x02h2\x08http/1.1";
    static const unsigned char h1[] = "\x08http/1.1";
    int h2 = SSL_get_ex_data(s, ex_h2) != NULL;
    unsigned char *sel;

    (void)arg;
    if (SSL_select_next_proto(&sel, outlen, h2 ? both : h1,
                              (unsigned)(h2 ? sizeof(both) : sizeof(h1)) - 1, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int on_new_session(SSL *s, SSL_SESSION *sess);

static SSL_CTX *client_ctx(const struct wk_tls_gen *prev, const struct shm_snap_hdr *h, uint32_t i,
                           uint64_t *id)
{
    const struct shm_service *sv = &shm_services(h)[i];
    SSL_CTX *ctx;
    char err[256];

    for (uint32_t k = 0; prev != NULL && k <= prev->nservices; k++) {
        uint32_t j = k == 0 ? i : k - 1;
        const struct shm_service *pv;

        if (j >= prev->nservices || (k > 0 && j == i) || prev->svc_ctx[j] == NULL) {
            continue;
        }
        pv = &shm_services(prev->snap)[j];
        if (pv->tls == sv->tls && same_str(h, sv->tls_ca_pem, prev->snap, pv->tls_ca_pem) &&
            same_str(h, sv->tls_client_cert_pem, prev->snap, pv->tls_client_cert_pem) &&
            same_str(h, sv->tls_client_key_pem, prev->snap, pv->tls_client_key_pem) &&
            SSL_CTX_up_ref(prev->svc_ctx[j]) == 1) {
            *id = prev->svc_ctx_id[j];
            return prev->svc_ctx[j];
        }
    }
    ctx = tls_client_ctx_new((sv->tls & SHM_SVC_TLS_VERIFY) != 0, shm_s(h, sv->tls_ca_pem),
                             sv->tls_ca_pem.len, err, sizeof(err));
    if (ctx == NULL) {
        log_error("service %s: cannot set up TLS to its backends: %s", shm_s(h, sv->name), err);
        return NULL;
    }
    if (sv->tls_client_cert_pem.len > 0 &&
        tls_ctx_use_pem(ctx, shm_s(h, sv->tls_client_cert_pem), sv->tls_client_cert_pem.len,
                        shm_s(h, sv->tls_client_key_pem), sv->tls_client_key_pem.len, err,
                        sizeof(err)) != 0) {
        log_error("service %s: cannot use its client certificate: %s", shm_s(h, sv->name), err);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    *id = next_ctx_id++;
    return ctx;
}

/* The client certificate settings of listener <i> into <l> (left off, logged, when its CA
 * bundle cannot be used: the master checked it, so only memory can fail here). */
static void listener_verify(const struct shm_snap_hdr *h, uint32_t i, struct tg_listener *l)
{
    const struct shm_listener *ls = &shm_listeners(h)[i];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    BIO *b;
    X509 *x;
    int n = 0;

    l->family = ls->family;
    l->port = ls->port;
    memcpy(l->ip, ls->ip, sizeof(l->ip));
    if (!ls->tls || ls->client_verify == SHM_CLIENT_VERIFY_OFF || ls->client_ca_pem.len == 0) {
        return;
    }
    l->store = X509_STORE_new();
    l->names = sk_X509_NAME_new_null();
    b = BIO_new_mem_buf(shm_s(h, ls->client_ca_pem), (int)ls->client_ca_pem.len);
    while (l->store != NULL && l->names != NULL && b != NULL &&
           (x = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL)) != NULL) {
        X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(x));

        if (X509_STORE_add_cert(l->store, x) == 1) {
            n++;
        }
        if (nm != NULL && sk_X509_NAME_push(l->names, nm) <= 0) {
            X509_NAME_free(nm);
        }
        X509_free(x);
    }
    BIO_free(b);
    ERR_clear_error();
    /* The session id context names the CA bundle and the mode. */
    memcpy(l->sid, "dsp-cca", 7);
    if (n == 0 || EVP_Digest(shm_s(h, ls->client_ca_pem), ls->client_ca_pem.len, md, &mdlen,
                             EVP_sha256(), NULL) != 1) {
        log_error("listener %s: cannot use its client_ca; TLS connections to it are refused",
                  shm_s(h, ls->address));
        X509_STORE_free(l->store);
        sk_X509_NAME_pop_free(l->names, X509_NAME_free);
        l->store = NULL;
        l->names = NULL;
        l->mode = -1;
        return;
    }
    l->sid[7] = (unsigned char)ls->client_verify;
    memcpy(l->sid + 8, md, 24);
    l->sidlen = 32;
    l->mode = SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE |
              (ls->client_verify == SHM_CLIENT_VERIFY_REQUIRED ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                               : 0);
}

struct wk_tls_gen *wk_tls_gen_new(const struct shm_snap_hdr *h, const struct wk_tls_gen *prev)
{
    const struct shm_cert *certs = shm_certs(h);
    const struct shm_str *names = shm_cert_names(h);
    struct wk_tls_gen *tg = calloc(1, sizeof(*tg));
    char err[384];

    if (tg == NULL) {
        goto oom;
    }
    tg->snap = h;
    tg->def = SHM_NONE;
    tg->ncerts = h->ncerts;
    tg->nservices = h->nservices;
    tg->ctx = calloc((size_t)h->ncerts + 1, sizeof(*tg->ctx));
    tg->svc_ctx = calloc((size_t)h->nservices + 1, sizeof(*tg->svc_ctx));
    tg->svc_ctx_id = calloc((size_t)h->nservices + 1, sizeof(*tg->svc_ctx_id));
    tg->sni = wk_sni_new(h->ncert_names);
    if (tg->ctx == NULL || tg->svc_ctx == NULL || tg->svc_ctx_id == NULL || tg->sni == NULL) {
        goto oom;
    }
    for (uint32_t i = 0; i < h->ncerts; i++) {
        const struct shm_cert *c = &certs[i];
        SSL_CTX *ctx = reuse_server_ctx(prev, h, i);

        if (ctx == NULL) {
            ctx = tls_server_ctx_new(shm_s(h, c->cert_pem), c->cert_pem.len, shm_s(h, c->key_pem),
                                     c->key_pem.len, (int)h->tls_min_version, err, sizeof(err));
            if (ctx == NULL) {
                /* The master test-loaded it; failing here means memory trouble. */
                log_error("certificate %s (%s) cannot be served: %s", shm_s(h, c->path),
                          shm_s(h, c->subject), err);
                continue;
            }
            SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
            SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
            SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
            if (set_ocsp(ctx, h, c) != 0) {
                log_error("certificate %s (%s): no memory for its OCSP response: not stapled",
                          shm_s(h, c->path), shm_s(h, c->subject));
            }
        }
        tg->ctx[i] = ctx;
        if (c->flags & SHM_CERT_F_DEFAULT) {
            tg->def = i;
        }
        for (uint32_t k = 0; k < c->nnames; k++) {
            struct shm_str nm = names[c->names_first + k];
            wk_sni_add(tg->sni, shm_s(h, nm), nm.len, i, (c->flags & SHM_CERT_F_EXPIRED) != 0);
        }
    }
    if (tg->def == SHM_NONE && h->ncerts > 0 && tg->ctx[0] != NULL) {
        tg->def = 0;
    }
    for (uint32_t i = 0; i < h->nservices; i++) {
        if (shm_services(h)[i].tls & SHM_SVC_TLS_ON) {
            tg->svc_ctx[i] = client_ctx(prev, h, i, &tg->svc_ctx_id[i]);
        }
    }
    tg->nlisteners = h->nlisteners;
    tg->lst = calloc((size_t)h->nlisteners + 1, sizeof(*tg->lst));
    if (tg->lst == NULL) {
        goto oom;
    }
    for (uint32_t i = 0; i < h->nlisteners; i++) {
        listener_verify(h, i, &tg->lst[i]);
        tg->client_ca |= tg->lst[i].mode != 0;
    }
    return tg;
oom:
    log_error("out of memory building the TLS contexts of generation %llu",
              (unsigned long long)h->gen);
    wk_tls_gen_free(tg);
    return NULL;
}

void wk_tls_gen_free(struct wk_tls_gen *tg)
{
    if (tg == NULL) {
        return;
    }
    for (uint32_t i = 0; tg->ctx != NULL && i < tg->ncerts; i++) {
        SSL_CTX_free(tg->ctx[i]);
    }
    for (uint32_t i = 0; tg->svc_ctx != NULL && i < tg->nservices; i++) {
        SSL_CTX_free(tg->svc_ctx[i]);
    }
    for (uint32_t i = 0; tg->lst != NULL && i < tg->nlisteners; i++) {
        X509_STORE_free(tg->lst[i].store);
        sk_X509_NAME_pop_free(tg->lst[i].names, X509_NAME_free);
    }
    free(tg->lst);
    free(tg->ctx);
    free(tg->svc_ctx);
    free(tg->svc_ctx_id);
    wk_sni_free(tg->sni);
    free(tg);
}

int wk_tls_init(void)
{
    aes256cbc = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
    ex_upstream = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    ex_ocsp = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ocsp_blob_free);
    ex_h2 = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (aes256cbc == NULL || ex_upstream < 0 || ex_ocsp < 0 || ex_h2 < 0) {
        char err[256];
        log_error("TLS start-up failed: %s", tls_errors(err, sizeof(err)));
        return -1;
    }
    return 0;
}

/* ---- connections -------------------------------------------------------------------------- */

const char *wk_tls_error(void)
{
    return last_error;
}

/* Does listener <l> (bound to <l>'s address, maybe a wildcard) own local address <ss>?
 * 2: exactly, 1: through its wildcard address, 0: no. */
static int listener_owns(const struct tg_listener *l, const struct sockaddr_storage *ss)
{
    static const uint8_t zero[16];
    const uint8_t *ip;
    uint16_t port;
    size_t n = l->family == AF_INET6 ? 16 : 4;

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)ss;
        ip = (const uint8_t *)&s4->sin_addr;
        port = ntohs(s4->sin_port);
        if (l->family != AF_INET && !(l->family == AF_INET6 && memcmp(l->ip, zero, 16) == 0)) {
            return 0;
        }
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)ss;
        ip = (const uint8_t *)&s6->sin6_addr;
        port = ntohs(s6->sin6_port);
        if (l->family != AF_INET6) {
            return 0;
        }
    } else {
        return 0;
    }
    if (port != l->port) {
        return 0;
    }
    if (ss->ss_family == (int)l->family && memcmp(ip, l->ip, n) == 0) {
        return 2;
    }
    return memcmp(l->ip, zero, n) == 0 ? 1 : 0;
}

static const struct tg_listener no_verify; /* mode 0 */

/* The client certificate settings for a connection accepted on socket <fd>, said to be from
 * listener <idx>. The index comes from the master's listener messages, which may run a moment
 * behind or ahead of the generation this worker serves: the socket's own address decides.
 * NULL when the generation has no listener with that address: the connection is refused rather
 * than served without the verification a newer generation may ask for. */
static const struct tg_listener *listener_of(const struct wk_tls_gen *tg, int fd, uint32_t idx)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    const struct tg_listener *best = NULL;
    int how = 0;

    if (!tg->client_ca && __atomic_load_n(&wk.ctl->gen, __ATOMIC_ACQUIRE) == tg->snap->gen) {
        return &no_verify; /* (nothing asks for certificates: no system call) */
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        return NULL;
    }
    if (idx < tg->nlisteners && listener_owns(&tg->lst[idx], &ss) == 2) {
        return &tg->lst[idx];
    }
    for (uint32_t i = 0; i < tg->nlisteners && how < 2; i++) {
        int h = listener_owns(&tg->lst[i], &ss);
        if (h > how) {
            how = h;
            best = &tg->lst[i];
        }
    }
    return best;
}

int wk_tls_alpn_h2(const struct ssl_st *s)
{
    const unsigned char *p;
    unsigned int n;

    SSL_get0_alpn_selected(s, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

struct ssl_st *wk_tls_server_new(int fd, uint32_t listener)
{
    const struct tg_listener *l;
    const struct wk_tls_gen *tg = wk.cur != NULL ? wk.cur->tls : NULL;
    SSL *s;

    if (tg == NULL || tg->def == SHM_NONE || tg->ctx[tg->def] == NULL) {
        static uint64_t warned;
        if (wk.now - warned > 10000 || warned == 0) {
            warned = wk.now ? wk.now : 1;
            log_error("TLS connection refused: no certificate to serve");
        }
        return NULL;
    }
    s = SSL_new(tg->ctx[tg->def]);
    if (s == NULL || tls_set_socket(s, fd) != 0) {
        ERR_clear_error();
        SSL_free(s);
        return NULL;
    }
    if (listener < tg->snap->nlisteners && shm_listeners(tg->snap)[listener].http2) {
        SSL_set_ex_data(s, ex_h2, (void *)1);
    }
    l = listener_of(tg, fd, listener);
    if (l == NULL) {
        SSL_free(s);
        return NULL;
    }
    if (l->mode != 0) {
        STACK_OF(X509_NAME) *names = l->mode > 0 ? SSL_dup_CA_list(l->names) : NULL;

        /* mode -1: the CA bundle was unusable; refusing beats serving without verification. */
        if (l->mode < 0 || names == NULL || SSL_set1_verify_cert_store(s, l->store) != 1 ||
            SSL_set_session_id_context(s, l->sid, l->sidlen) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            ERR_clear_error();
            SSL_free(s);
            return NULL;
        }
        SSL_set_client_CA_list(s, names);
        SSL_set_verify(s, l->mode, NULL);
    }
    SSL_set_accept_state(s);
    return s;
}

char *wk_tls_client_subject(const struct ssl_st *s)
{
    X509 *x = SSL_get0_peer_certificate(s);
    BIO *b;
    char *out = NULL;
    long n;
    char *p;

    if (x == NULL || SSL_get_verify_result(s) != X509_V_OK) {
        return NULL;
    }
    b = BIO_new(BIO_s_mem());
    if (b == NULL || X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) < 0) {
        BIO_free(b);
        ERR_clear_error();
        return NULL;
    }
    n = BIO_get_mem_data(b, &p);
    if (n > 0 && n <= 4096 && (out = malloc((size_t)n + 1)) != NULL) {
        size_t k = 0;

        /* RFC 2253 escapes what is not printable ASCII; drop anything left that a header
         * value cannot carry. */
        for (long i = 0; i < n; i++) {
            if ((unsigned char)p[i] >= 0x20 && (unsigned char)p[i] < 0x7f) {
                out[k++] = p[i];
            }
        }
        out[k] = '\0';
    }
    BIO_free(b);
    return out;
}

struct ssl_st *wk_tls_client_new(int fd, const struct wk_tls_gen *tg, uint32_t svc,
                                 const struct shm_backend *be)
{
    const struct shm_service *sv;
    const char *sni;
    SSL *s;

    if (tg == NULL || svc >= tg->nservices || tg->svc_ctx[svc] == NULL) {
        snprintf(last_error, sizeof(last_error), "no TLS context for the service");
        return NULL;
    }
    sv = &shm_services(tg->snap)[svc];
    sni = sv->tls_sni.len > 0 ? shm_s(tg->snap, sv->tls_sni) : NULL;
    s = tls_client_conn(tg->svc_ctx[svc], fd, sni, (sv->tls & SHM_SVC_TLS_VERIFY) != 0, be->ip,
                        be->family == AF_INET6 ? 16 : 4, last_error, sizeof(last_error));
    if (s == NULL) {
        return NULL;
    }
    SSL_set_ex_data(s, ex_upstream,
                    (void *)(uintptr_t)((tg->svc_ctx_id[svc] << 20) | ((uint64_t)be->rt_slot + 1)));
    if (up_sessions != NULL && be->rt_slot < SHM_RT_MAX_BACKENDS) {
        struct up_session *us = &up_sessions[be->rt_slot];
        const char *host = us->sess ? SSL_SESSION_get0_hostname(us->sess) : NULL;

        if (us->sess != NULL && us->ctx_id == tg->svc_ctx_id[svc] &&
            ((host == NULL && sni == NULL) || (host && sni && strcmp(host, sni) == 0))) {
            SSL_set_session(s, us->sess);
        }
    }
    return s;
}

/* OpenSSL hands over each session a backend gives us (TLS 1.3: when its ticket arrives). Keep
 * the newest per backend; returning 1 keeps the reference. */
static int on_new_session(SSL *s, SSL_SESSION *sess)
{
    uint64_t v = (uint64_t)(uintptr_t)SSL_get_ex_data(s, ex_upstream);
    uint64_t slot1 = v & 0xfffffu;
    struct up_session *us;

    if (slot1 == 0 || slot1 > SHM_RT_MAX_BACKENDS) {
        return 0;
    }
    if (up_sessions == NULL) {
        up_sessions = calloc(SHM_RT_MAX_BACKENDS, sizeof(*up_sessions));
        if (up_sessions == NULL) {
            return 0;
        }
    }
    us = &up_sessions[slot1 - 1];
    SSL_SESSION_free(us->sess);
    us->sess = sess;
    us->ctx_id = v >> 20;
    return 1;
}

/* A handshake with a backend failed: the session it offered must not be offered again. */
void wk_tls_forget(struct ssl_st *s)
{
    uint64_t v = (uint64_t)(uintptr_t)SSL_get_ex_data(s, ex_upstream);
    uint64_t slot1 = v & 0xfffffu;

    if (up_sessions != NULL && slot1 > 0 && slot1 <= SHM_RT_MAX_BACKENDS) {
        SSL_SESSION_free(up_sessions[slot1 - 1].sess);
        up_sessions[slot1 - 1].sess = NULL;
    }
}

int wk_tls_resumed(const struct ssl_st *s)
{
    return SSL_session_reused(s) == 1;
}

int wk_tls_verify_failed(const struct ssl_st *s)
{
    return SSL_get_verify_result(s) != X509_V_OK;
}
