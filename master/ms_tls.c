/* dispatcher: certificates and ticket keys, master side. Every certificate is read, matched with
 * its key, named (SAN DNS, else CN) and test-loaded into a server context exactly as a worker will
 * load it, so that problems surface as "FILE:LINE:" at -t, start or reload instead of inside a
 * worker. The results travel to the workers as PEM text in the snapshot. */
#include "master/ms_tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/dsp.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/tls.h"
#include "master/ms_config.h"
#include "master/ms_loop.h"
#include "shm/shm_types.h"

#define MAX_PEM_FILE  (4u << 20)  /* a certificate file, key or CA bundle */
#define MAX_OCSP_FILE (64u << 10) /* a stapled OCSP response (a few KiB in practice) */
#define MAX_CHAIN     16
#define SELF_DAYS     365

/* ---- small helpers ----------------------------------------------------------------------- */

/* Read <path> whole into a NUL-terminated heap buffer, never blocking on it (see fs.h). */
static int read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    return fs_read_regular(path, MAX_PEM_FILE, out, len, err, errlen);
}

/* Free a buffer that may hold key material. */
static void free_secret(char *p, size_t len)
{
    if (p != NULL) {
        explicit_bzero(p, len);
        free(p);
    }
}

/* The contents of a memory BIO as a heap string (the BIO clears its own memory when freed). */
static char *bio_string(BIO *b)
{
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *s = dsp_xmalloc((size_t)(n > 0 ? n : 0) + 1);

    if (n > 0) {
        memcpy(s, data, (size_t)n);
    }
    s[n > 0 ? n : 0] = '\0';
    return s;
}

/* ---- names ----------------------------------------------------------------------------------- */

struct names {
    char **v;
    size_t n, cap;
};

static void names_add(struct names *ns, const unsigned char *data, int len)
{
    char buf[TLS_MAX_NAME + 1];
    size_t n;

    /* An embedded NUL is the classic trick to make "good.com\0.evil.com" look like good.com. */
    if (len <= 0 || memchr(data, '\0', (size_t)len) != NULL) {
        return;
    }
    n = tls_name_norm((const char *)data, (size_t)len, buf);
    if (n == 0 || !tls_name_ok(buf)) {
        return;
    }
    for (size_t i = 0; i < ns->n; i++) {
        if (strcmp(ns->v[i], buf) == 0) {
            return;
        }
    }
    if (ns->n == ns->cap) {
        ns->cap = ns->cap ? ns->cap * 2 : 4;
        ns->v = dsp_xrealloc(ns->v, ns->cap * sizeof(*ns->v));
    }
    ns->v[ns->n++] = dsp_xstrdup(buf);
}

/* RFC 6125: DNS names from the SAN; the CN only when the SAN has no DNS name at all. */
static void names_of(X509 *x, struct names *ns)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int had_dns = 0;

    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);

        if (g->type == GEN_DNS) {
            had_dns = 1;
            names_add(ns, ASN1_STRING_get0_data(g->d.dNSName), ASN1_STRING_length(g->d.dNSName));
        }
    }
    GENERAL_NAMES_free(gens);
    if (!had_dns) {
        const X509_NAME *subj = X509_get_subject_name(x);
        int idx = -1, last = -1;

        while ((idx = X509_NAME_get_index_by_NID(subj, NID_commonName, idx)) >= 0) {
            last = idx;
        }
        if (last >= 0) {
            const ASN1_STRING *s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subj, last));
            unsigned char *utf8 = NULL;
            int n = ASN1_STRING_to_UTF8(&utf8, s);

            if (n > 0) {
                names_add(ns, utf8, n);
            }
            OPENSSL_free(utf8);
        }
    }
    ERR_clear_error();
}

static void names_free(struct names *ns)
{
    for (size_t i = 0; i < ns->n; i++) {
        free(ns->v[i]);
    }
    free(ns->v);
    memset(ns, 0, sizeof(*ns));
}

int ms_tls_pem_names(const char *pem, size_t len, char ***out)
{
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL) : NULL;
    struct names ns = {0};

    BIO_free(b);
    *out = NULL;
    if (x == NULL) {
        ERR_clear_error();
        return -1;
    }
    names_of(x, &ns);
    X509_free(x);
    *out = ns.v;
    return (int)ns.n;
}

/* ---- loading a certificate ------------------------------------------------------------------ */

static int64_t not_after_of(const X509 *x)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1) {
        return 0;
    }
    return (int64_t)timegm(&tm);
}

static int64_t gtime_unix(const ASN1_GENERALIZEDTIME *t)
{
    struct tm tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        return 0;
    }
    return (int64_t)timegm(&tm);
}

/* Read <path>, a DER OCSP response to staple for <leaf>: it must parse, say "successful", and
 * hold a status for <leaf>'s serial number that is not "revoked". Returns 0 with the bytes in
 * <*der>/<*len> and its nextUpdate in <*next> (0: none), or -1 with the reason in <err>. */
static int load_ocsp(const char *path, X509 *leaf, unsigned char **der, size_t *len, int64_t *next,
                     char *err, size_t errlen)
{
    char *raw = NULL;
    size_t rlen = 0;
    const unsigned char *p;
    OCSP_RESPONSE *rsp = NULL;
    OCSP_BASICRESP *bs = NULL;
    const ASN1_INTEGER *serial = X509_get0_serialNumber(leaf);
    int rc = -1, found = 0;

    if (fs_read_regular(path, MAX_OCSP_FILE, &raw, &rlen, err, errlen) != 0) {
        return -1;
    }
    p = (const unsigned char *)raw;
    rsp = rlen > 0 && rlen < INT32_MAX ? d2i_OCSP_RESPONSE(NULL, &p, (long)rlen) : NULL;
    if (rsp == NULL || p != (const unsigned char *)raw + rlen) {
        snprintf(err, errlen, "\"%s\" is not a DER OCSP response", path);
        goto done;
    }
    if (OCSP_response_status(rsp) != OCSP_RESPONSE_STATUS_SUCCESSFUL ||
        (bs = OCSP_response_get1_basic(rsp)) == NULL) {
        snprintf(err, errlen, "the OCSP response \"%s\" is not a successful one (status %s)", path,
                 OCSP_response_status_str(OCSP_response_status(rsp)));
        goto done;
    }
    for (int i = 0; i < OCSP_resp_count(bs); i++) {
        OCSP_SINGLERESP *sr = OCSP_resp_get0(bs, i);
        ASN1_INTEGER *sn = NULL;
        ASN1_GENERALIZEDTIME *thisupd = NULL, *nextupd = NULL, *rev = NULL;
        int reason = 0, st;

        if (sr == NULL ||
            OCSP_id_get0_info(NULL, NULL, NULL, &sn, (OCSP_CERTID *)OCSP_SINGLERESP_get0_id(sr)) !=
                1 ||
            sn == NULL || ASN1_INTEGER_cmp(sn, serial) != 0) {
            continue;
        }
        st = OCSP_single_get0_status(sr, &reason, &rev, &thisupd, &nextupd);
        if (st == V_OCSP_CERTSTATUS_REVOKED) {
            snprintf(err, errlen, "the OCSP response \"%s\" says the certificate is revoked", path);
            goto done;
        }
        *next = gtime_unix(nextupd);
        found = 1;
        break;
    }
    if (!found) {
        snprintf(err, errlen,
                 "the OCSP response \"%s\" is not about this certificate (no "
                 "status for its serial number)",
                 path);
        goto done;
    }
    *der = (unsigned char *)raw;
    *len = rlen;
    raw = NULL;
    rc = 0;
done:
    ERR_clear_error();
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(rsp);
    free(raw);
    return rc;
}

int ms_tls_load_cert(struct ms_cert *ct, int min_version, int64_t now, char *err, size_t errlen)
{
    const char *cname = ct->cert ? ct->cert : "certificate";
    const char *kname = ct->key ? ct->key : "key";
    char *craw = NULL, *kraw = NULL, *cpem = NULL, *kpem = NULL, *subject = NULL;
    size_t clen = 0, klen = 0;
    X509 *chain[MAX_CHAIN];
    int nchain = 0;
    EVP_PKEY *pk = NULL;
    BIO *b = NULL;
    struct names ns = {0};
    struct ssl_ctx_st *ctx;
    char e2[384];
    unsigned char *ocsp = NULL;
    size_t ocsp_len = 0;
    int64_t ocsp_next = 0;
    int rc = -1;

    if (ct->cert != NULL && ct->key != NULL) {
        if (read_file(ct->cert, &craw, &clen, err, errlen) != 0 ||
            read_file(ct->key, &kraw, &klen, err, errlen) != 0) {
            goto done;
        }
    } else if (ct->cert_pem != NULL && ct->key_pem != NULL) {
        clen = strlen(ct->cert_pem);
        klen = strlen(ct->key_pem);
        craw = dsp_xstrdup(ct->cert_pem);
        kraw = dsp_xstrdup(ct->key_pem);
    } else {
        snprintf(err, errlen, "no certificate and key given");
        goto done;
    }

    b = BIO_new_mem_buf(craw, (int)clen);
    while (b != NULL && nchain < MAX_CHAIN &&
           (chain[nchain] = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL)) != NULL) {
        nchain++;
    }
    ERR_clear_error();
    BIO_free(b);
    if (nchain == 0) {
        snprintf(err, errlen, "no PEM certificate in \"%s\"", cname);
        goto done;
    }
    b = BIO_new_mem_buf(kraw, (int)klen);
    pk = b ? PEM_read_bio_PrivateKey(b, NULL, tls_no_passphrase, NULL) : NULL;
    BIO_free(b);
    if (pk == NULL) {
        ERR_clear_error();
        if (memmem(kraw, klen, "ENCRYPTED", 9) != NULL) {
            snprintf(err, errlen, "the key \"%s\" is encrypted (passphrases are not supported)",
                     kname);
        } else {
            snprintf(err, errlen, "no PEM private key in \"%s\"", kname);
        }
        goto done;
    }
    if (X509_check_private_key(chain[0], pk) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "the certificate \"%s\" and the key \"%s\" do not match", cname,
                 kname);
        goto done;
    }

    names_of(chain[0], &ns);
    b = BIO_new(BIO_s_mem());
    if (b == NULL ||
        X509_NAME_print_ex(b, X509_get_subject_name(chain[0]), 0, XN_FLAG_RFC2253) < 0) {
        BIO_free(b);
        snprintf(err, errlen, "%s", tls_errors(e2, sizeof(e2)));
        goto done;
    }
    subject = bio_string(b);
    BIO_free(b);

    /* Normalised PEM: whatever else the files held (comments, the key next to the certificate,
     * parameters) stays behind, and the key is PKCS#8 whatever format it came in. */
    b = BIO_new(BIO_s_mem());
    for (int i = 0; b != NULL && i < nchain; i++) {
        if (PEM_write_bio_X509(b, chain[i]) != 1) {
            BIO_free(b);
            b = NULL;
        }
    }
    if (b == NULL) {
        snprintf(err, errlen, "cannot encode \"%s\": %s", cname, tls_errors(e2, sizeof(e2)));
        goto done;
    }
    cpem = bio_string(b);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    if (b == NULL || PEM_write_bio_PKCS8PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL) != 1) {
        BIO_free(b);
        snprintf(err, errlen, "cannot encode \"%s\": %s", kname, tls_errors(e2, sizeof(e2)));
        goto done;
    }
    kpem = bio_string(b);
    BIO_free(b); /* memory BIOs clear their buffer when freed */

    ctx = tls_server_ctx_new(cpem, strlen(cpem), kpem, strlen(kpem), min_version, e2, sizeof(e2));
    if (ctx == NULL) {
        snprintf(err, errlen, "\"%s\" cannot be served: %s", cname, e2);
        goto done;
    }
    SSL_CTX_free(ctx);
    if (ct->ocsp != NULL &&
        load_ocsp(ct->ocsp, chain[0], &ocsp, &ocsp_len, &ocsp_next, err, errlen) != 0) {
        goto done;
    }

    free(ct->cert_pem);
    free(ct->ocsp_der);
    ct->ocsp_der = ocsp;
    ct->ocsp_len = ocsp_len;
    ct->ocsp_next_update = ocsp_next;
    ct->ocsp_stale = ocsp != NULL && ocsp_next != 0 && ocsp_next < now;
    ocsp = NULL;
    free_secret(ct->key_pem, ct->key_pem ? strlen(ct->key_pem) : 0);
    for (size_t i = 0; i < ct->nnames; i++) {
        free(ct->names[i]);
    }
    free(ct->names);
    free(ct->subject);
    ct->cert_pem = cpem;
    ct->key_pem = kpem;
    ct->names = ns.v;
    ct->nnames = ns.n;
    ct->subject = subject;
    ct->not_after = not_after_of(chain[0]);
    ct->expired = ct->not_after != 0 && ct->not_after < now;
    cpem = kpem = subject = NULL;
    memset(&ns, 0, sizeof(ns));
    rc = 0;
done:
    for (int i = 0; i < nchain; i++) {
        X509_free(chain[i]);
    }
    EVP_PKEY_free(pk);
    names_free(&ns);
    free(subject);
    free(cpem);
    free_secret(kpem, kpem ? strlen(kpem) : 0);
    free(craw);
    free(ocsp);
    free_secret(kraw, klen);
    return rc;
}

int ms_tls_read_ca(const char *path, char **pem, char *err, size_t errlen)
{
    char *raw = NULL;
    size_t len;
    BIO *b;
    X509 *x;
    int n = 0;

    *pem = NULL;
    if (read_file(path, &raw, &len, err, errlen) != 0) {
        return -1;
    }
    b = BIO_new_mem_buf(raw, (int)len);
    while (b != NULL && (x = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL)) != NULL) {
        X509_free(x);
        n++;
    }
    BIO_free(b);
    ERR_clear_error();
    if (n == 0) {
        snprintf(err, errlen, "no PEM certificate in \"%s\"", path);
        free(raw);
        return -1;
    }
    *pem = raw;
    return 0;
}

/* ---- the self-signed certificate ------------------------------------------------------------- */

static int add_ext(X509 *x, int nid, const char *value)
{
    X509V3_CTX v3;
    X509_EXTENSION *ext;
    int ok;

    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    if (ext == NULL) {
        return -1;
    }
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

int ms_tls_self_signed(const char *cn, char **cert_pem, char **key_pem, char *err, size_t errlen)
{
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIGNUM *serial = BN_new();
    BIO *b = NULL;
    char name[TLS_MAX_NAME + 1], san[TLS_MAX_NAME + 8], e2[256];
    size_t nlen = tls_name_norm(cn, strlen(cn), name);
    int rc = -1;

    *cert_pem = *key_pem = NULL;
    if (pk == NULL || x == NULL || serial == NULL) {
        snprintf(err, errlen, "cannot generate a P-256 key: %s", tls_errors(e2, sizeof(e2)));
        goto done;
    }
    /* A random 127-bit serial: positive, and unique enough that browsers never see two
     * different certificates with one issuer and serial. */
    if (X509_set_version(x, X509_VERSION_3) != 1 ||
        BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
        BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) == NULL ||
        X509_gmtime_adj(X509_getm_notBefore(x), -3600) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), (long)SELF_DAYS * 86400) == NULL ||
        X509_set_pubkey(x, pk) != 1 ||
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                   (const unsigned char *)cn, -1, -1, 0) != 1 ||
        X509_set_issuer_name(x, X509_get_subject_name(x)) != 1 ||
        add_ext(x, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_ext(x, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(x, NID_ext_key_usage, "serverAuth") != 0 ||
        add_ext(x, NID_subject_key_identifier, "hash") != 0) {
        snprintf(err, errlen, "cannot build the certificate: %s", tls_errors(e2, sizeof(e2)));
        goto done;
    }
    /* Clients ignore the CN when checking names; give it as a SAN too when it is a host name. */
    if (nlen > 0 && name[0] != '*' && tls_name_ok(name)) {
        snprintf(san, sizeof(san), "DNS:%s", name);
        if (add_ext(x, NID_subject_alt_name, san) != 0) {
            snprintf(err, errlen, "cannot add the SAN: %s", tls_errors(e2, sizeof(e2)));
            goto done;
        }
    }
    if (X509_sign(x, pk, EVP_sha256()) == 0) {
        snprintf(err, errlen, "cannot sign the certificate: %s", tls_errors(e2, sizeof(e2)));
        goto done;
    }
    b = BIO_new(BIO_s_mem());
    if (b == NULL || PEM_write_bio_X509(b, x) != 1) {
        snprintf(err, errlen, "cannot encode the certificate: %s", tls_errors(e2, sizeof(e2)));
        goto done;
    }
    *cert_pem = bio_string(b);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    if (b == NULL || PEM_write_bio_PKCS8PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL) != 1) {
        snprintf(err, errlen, "cannot encode the key: %s", tls_errors(e2, sizeof(e2)));
        free(*cert_pem);
        *cert_pem = NULL;
        goto done;
    }
    *key_pem = bio_string(b);
    rc = 0;
done:
    BIO_free(b);
    BN_free(serial);
    X509_free(x);
    EVP_PKEY_free(pk);
    return rc;
}

/* Generated once per CN and reused by every reload: clients that pinned or resumed with it keep
 * working, and a reload does not cost a key generation. */
static struct {
    char *cn;
    char *cert_pem;
    char *key_pem;
} self_cache;

static void self_cache_clear(void)
{
    free(self_cache.cn);
    free(self_cache.cert_pem);
    free_secret(self_cache.key_pem, self_cache.key_pem ? strlen(self_cache.key_pem) : 0);
    memset(&self_cache, 0, sizeof(self_cache));
}

static struct shm_ctl *tk_ctl;

void ms_tls_cleanup(void)
{
    self_cache_clear();
    if (tk_ctl != NULL) {
        /* Every worker is gone by now: nothing may open a ticket any more. */
        explicit_bzero(&tk_ctl->tkeys, sizeof(tk_ctl->tkeys));
        tk_ctl = NULL;
    }
}

/* ---- the whole certificate set of a config --------------------------------------------------- */

struct errs {
    char *s;
    size_t len, cap;
};

static void errs_add(struct errs *e, const char *file, int line, const char *msg)
{
    size_t need = strlen(file) + strlen(msg) + 32;

    if (e->len + need >= e->cap) {
        e->cap = (e->cap + need) * 2;
        e->s = dsp_xrealloc(e->s, e->cap);
    }
    if (line <= 0) { /* about the file as a whole */
        e->len += (size_t)snprintf(e->s + e->len, e->cap - e->len, "%s%s: %s", e->len ? "\n" : "",
                                   file, msg);
    } else {
        e->len += (size_t)snprintf(e->s + e->len, e->cap - e->len, "%s%s:%d: %s",
                                   e->len ? "\n" : "", file, line, msg);
    }
}

int ms_tls_prepare(struct ms_config *cfg, char **errs)
{
    struct errs e = {0};
    struct ms_cert self;
    int64_t now = (int64_t)time(NULL);
    char err[768], msg[1024];

    *errs = NULL;
    for (size_t i = 0; i < cfg->tls.ncerts; i++) {
        struct ms_cert *ct = &cfg->tls.certs[i];
        const char *file = ct->file ? ct->file : cfg->path;

        if (ms_tls_load_cert(ct, cfg->tls.min_version, now, err, sizeof(err)) != 0) {
            snprintf(msg, sizeof(msg), "tls.certificates[%zu]: %s", i, err);
            errs_add(&e, file, ct->line, msg);
            continue;
        }
        if (ct->expired) {
            char when[32];
            time_t t = (time_t)ct->not_after;
            struct tm tm;

            gmtime_r(&t, &tm);
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
            log_warn("%s:%d: tls.certificates[%zu]: certificate \"%s\" (%s) expired on %s; "
                     "still served",
                     file, ct->line, i, ct->cert ? ct->cert : "", ct->subject, when);
        }
        if (ct->ocsp_stale) {
            log_warn("%s:%d: tls.certificates[%zu]: the OCSP response \"%s\" is out of date "
                     "(nextUpdate passed): not stapled until it is replaced",
                     file, ct->line, i, ct->ocsp);
        }
        if (ct->nnames == 0) {
            log_warn("%s:%d: tls.certificates[%zu]: certificate \"%s\" (%s) names no host (no "
                     "DNS name in its SAN, no usable CN): SNI never selects it",
                     file, ct->line, i, ct->cert ? ct->cert : "", ct->subject);
        }
    }
    if (e.len > 0) {
        *errs = e.s;
        return -1;
    }

    if (self_cache.cn == NULL || strcmp(self_cache.cn, cfg->tls.self_signed_cn) != 0) {
        char *c = NULL, *k = NULL;

        if (ms_tls_self_signed(cfg->tls.self_signed_cn, &c, &k, err, sizeof(err)) != 0) {
            snprintf(msg, sizeof(msg), "tls.self_signed_cn: %s", err);
            errs_add(&e, cfg->path, 0, msg);
            *errs = e.s;
            return -1;
        }
        self_cache_clear();
        self_cache.cn = dsp_xstrdup(cfg->tls.self_signed_cn);
        self_cache.cert_pem = c;
        self_cache.key_pem = k;
    }
    memset(&self, 0, sizeof(self));
    self.source = SHM_SOURCE_FILE; /* generated for the file's tls.self_signed_cn */
    self.cert_pem = dsp_xstrdup(self_cache.cert_pem);
    self.key_pem = dsp_xstrdup(self_cache.key_pem);
    if (ms_tls_load_cert(&self, cfg->tls.min_version, now, err, sizeof(err)) != 0) {
        ms_cert_dispose(&self);
        snprintf(msg, sizeof(msg), "tls.self_signed_cn: %s", err);
        errs_add(&e, cfg->path, 0, msg);
        *errs = e.s;
        return -1;
    }
    ms_cert_dispose(&cfg->tls.self_signed);
    cfg->tls.self_signed = self;
    return 0;
}

/* ---- session ticket keys --------------------------------------------------------------------- */

static void put_words(uint64_t *dst, const uint64_t *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        __atomic_store_n(&dst[i], src[i], __ATOMIC_RELAXED);
    }
}

static void zero_words(uint64_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        __atomic_store_n(&dst[i], 0, __ATOMIC_RELAXED);
    }
}

int ms_tls_tickets_rotate(struct shm_tkeys *r, uint64_t now)
{
    struct shm_tkey fresh;
    uint64_t cur = r->current; /* the master is the only writer: plain reads suffice */
    uint32_t retire = 0, slot = SHM_TKEY_SLOTS;
    int need_new = cur >= SHM_TKEY_SLOTS || r->keys[cur].dec_until == 0 ||
                   now >= r->keys[cur].enc_until;
    int changed = 0;

    for (uint32_t i = 0; i < SHM_TKEY_SLOTS; i++) {
        if (r->keys[i].dec_until != 0 && r->keys[i].dec_until <= now) {
            retire |= 1u << i;
        }
    }
    if (need_new) {
        uint64_t oldest = UINT64_MAX;

        for (uint32_t i = 0; i < SHM_TKEY_SLOTS && slot == SHM_TKEY_SLOTS; i++) {
            if (r->keys[i].dec_until == 0 || (retire & (1u << i))) {
                slot = i;
            }
        }
        /* No free slot can only mean a clock oddity: take the key that dies first. */
        for (uint32_t i = 0; i < SHM_TKEY_SLOTS && slot == SHM_TKEY_SLOTS; i++) {
            if (i != cur && r->keys[i].dec_until < oldest) {
                oldest = r->keys[i].dec_until;
            }
        }
        for (uint32_t i = 0; i < SHM_TKEY_SLOTS && slot == SHM_TKEY_SLOTS; i++) {
            if (i != cur && r->keys[i].dec_until == oldest) {
                slot = i;
            }
        }
        memset(&fresh, 0, sizeof(fresh));
        if (RAND_bytes((unsigned char *)fresh.name, sizeof(fresh.name)) != 1 ||
            RAND_bytes((unsigned char *)fresh.aes, sizeof(fresh.aes)) != 1 ||
            RAND_bytes((unsigned char *)fresh.hmac, sizeof(fresh.hmac)) != 1) {
            char e2[256];
            log_error("cannot generate a session ticket key: %s", tls_errors(e2, sizeof(e2)));
            explicit_bzero(&fresh, sizeof(fresh));
            need_new = 0;
        } else {
            fresh.enc_until = now + TLS_TICKET_ENC_S;
            fresh.dec_until = now + TLS_TICKET_ENC_S + TLS_TICKET_DEC_S;
        }
    }
    if (!need_new && retire == 0) {
        return 0;
    }

    /* Seqlock write: odd while the slots change, so a worker never uses a torn key. */
    __atomic_store_n(&r->seq, r->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    for (uint32_t i = 0; i < SHM_TKEY_SLOTS; i++) {
        if (retire & (1u << i)) {
            zero_words((uint64_t *)(void *)&r->keys[i], sizeof(r->keys[i]) / 8);
            changed++;
        }
    }
    if (need_new) {
        put_words((uint64_t *)(void *)&r->keys[slot], (const uint64_t *)(const void *)&fresh,
                  sizeof(fresh) / 8);
        __atomic_store_n(&r->current, slot, __ATOMIC_RELAXED);
        explicit_bzero(&fresh, sizeof(fresh));
        changed += (retire & (1u << slot)) ? 0 : 1;
    }
    __atomic_store_n(&r->seq, r->seq + 1, __ATOMIC_RELEASE);
    if (need_new) {
        log_debug("session ticket key rotated (slot %u)", slot);
    }
    return changed;
}

static void on_ticket_tick(uint64_t now_ms, void *arg)
{
    (void)arg;
    if (tk_ctl != NULL) {
        ms_tls_tickets_rotate(&tk_ctl->tkeys, now_ms / 1000);
    }
}

int ms_tls_tickets_start(struct shm_ctl *ctl)
{
    tk_ctl = ctl;
    if (ms_tls_tickets_rotate(&ctl->tkeys, dsp_now_ms() / 1000) == 0 &&
        ctl->tkeys.keys[ctl->tkeys.current].dec_until == 0) {
        return -1;
    }
    if (ms_loop_tick(on_ticket_tick, NULL) != 0) {
        log_error("cannot register the session ticket key rotation");
        return -1;
    }
    return 0;
}
