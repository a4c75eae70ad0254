/* dispatcher: tests for the TLS pieces that need no network: host names read from certificates
 * (SAN, CN fallback), the SNI index's matching order, certificate/key pair checks, the generated
 * self-signed certificate, loading a config's certificates with FILE:LINE errors, publishing
 * them in a snapshot, and the ticket key ring's rotation. */
#include "master/ms_tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "common/dsp.h"
#include "common/log.h"
#include "common/tls.h"
#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "shm/shm_snap.h"
#include "shm/shm_types.h"
#include "tests/unit/unit.h"
#include "worker/wk_tls.h"

/* ---- fixtures ----------------------------------------------------------------------------- */

struct pem_pair {
    char *cert;
    char *key;
};

static char *bio_str(BIO *b)
{
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *s = malloc((size_t)n + 1);

    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    return s;
}

/* A self-signed certificate with subject <cn> (NULL: none), SAN <san> (NULL: none), valid from
 * <from_days> to <to_days> relative to now, on a fresh P-256 key. */
static struct pem_pair make_cert(const char *cn, const char *san, long from_days, long to_days)
{
    struct pem_pair pp;
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIO *b;

    CU_ASSERT_PTR_NOT_NULL_FATAL(pk);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
    X509_gmtime_adj(X509_getm_notBefore(x), from_days * 86400);
    X509_gmtime_adj(X509_getm_notAfter(x), to_days * 86400);
    X509_set_pubkey(x, pk);
    if (cn != NULL) {
        X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                   (const unsigned char *)cn, -1, -1, 0);
    }
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "O", MBSTRING_UTF8,
                               (const unsigned char *)"dispatcher tests", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    if (san != NULL) {
        X509V3_CTX v3;
        X509_EXTENSION *ext;

        X509V3_set_ctx_nodb(&v3);
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
        CU_ASSERT_PTR_NOT_NULL_FATAL(ext);
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    CU_ASSERT_FATAL(X509_sign(x, pk, EVP_sha256()) > 0);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    pp.cert = bio_str(b);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL);
    pp.key = bio_str(b);
    BIO_free(b);
    X509_free(x);
    EVP_PKEY_free(pk);
    return pp;
}

static void pair_free(struct pem_pair *pp)
{
    free(pp->cert);
    free(pp->key);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

static void mk_tmpdir(char *dir, size_t n)
{
    char tmpl[] = "/tmp/dsp-test-tls-XXXXXX";

    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmpl));
    snprintf(dir, n, "%s", tmpl);
}

static void rm_files(const char *dir, const char *const *names)
{
    char p[PATH_MAX];

    for (; *names != NULL; names++) {
        snprintf(p, sizeof(p), "%s/%s", dir, *names);
        unlink(p);
    }
    rmdir(dir);
}

static int has_name(char **names, int n, const char *want)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(names[i], want) == 0) {
            return 1;
        }
    }
    return 0;
}

static void free_names(char **names, int n)
{
    for (int i = 0; i < n; i++) {
        free(names[i]);
    }
    free(names);
}

/* ---- names ----------------------------------------------------------------------------------- */

static void test_names_san(void)
{
    struct pem_pair pp = make_cert("ignored.do",
                                   "DNS:a.example.com, DNS:*.B.example.com, DNS:A.EXAMPLE.COM., "
                                   "IP:10.1.2.3, DNS:bad name.do, email:x@y.do",
                                   0, 30);
    char **names = NULL;
    int n = ms_tls_pem_names(pp.cert, strlen(pp.cert), &names);

    /* SAN DNS names only, lower-cased, trailing dot dropped, duplicates and junk removed; the CN
     * is ignored when the SAN has a DNS name. */
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_TRUE(has_name(names, n, "a.example.com"));
    CU_ASSERT_TRUE(has_name(names, n, "*.b.example.com"));
    CU_ASSERT_FALSE(has_name(names, n, "ignored.do"));
    free_names(names, n);
    pair_free(&pp);
}

static void test_names_cn_fallback(void)
{
    struct pem_pair pp = make_cert("Secure.Do", NULL, 0, 30);
    struct pem_pair ip_only = make_cert("*.App.Example.com", "IP:127.0.0.1", 0, 30);
    struct pem_pair junk = make_cert("My Test Server", NULL, 0, 30);
    struct pem_pair none = make_cert(NULL, NULL, 0, 30);
    char **names = NULL;
    int n;

    n = ms_tls_pem_names(pp.cert, strlen(pp.cert), &names);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_STRING_EQUAL(names[0], "secure.do");
    free_names(names, n);

    /* A SAN without DNS names does not hide the CN. */
    n = ms_tls_pem_names(ip_only.cert, strlen(ip_only.cert), &names);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_STRING_EQUAL(names[0], "*.app.example.com");
    free_names(names, n);

    n = ms_tls_pem_names(junk.cert, strlen(junk.cert), &names);
    CU_ASSERT_EQUAL(n, 0);
    free_names(names, n);
    n = ms_tls_pem_names(none.cert, strlen(none.cert), &names);
    CU_ASSERT_EQUAL(n, 0);
    free_names(names, n);

    CU_ASSERT_EQUAL(ms_tls_pem_names("not a certificate", 17, &names), -1);
    pair_free(&pp);
    pair_free(&ip_only);
    pair_free(&junk);
    pair_free(&none);
}

static void test_name_rules(void)
{
    char out[TLS_MAX_NAME + 1];

    CU_ASSERT_TRUE(tls_name_ok("secure.do"));
    CU_ASSERT_TRUE(tls_name_ok("localhost"));
    CU_ASSERT_TRUE(tls_name_ok("*.app.example.com"));
    CU_ASSERT_TRUE(tls_name_ok("x_y-1.do"));
    CU_ASSERT_FALSE(tls_name_ok(""));
    CU_ASSERT_FALSE(tls_name_ok("*"));
    CU_ASSERT_FALSE(tls_name_ok("*."));
    CU_ASSERT_FALSE(tls_name_ok("a.*.do"));
    CU_ASSERT_FALSE(tls_name_ok("*x.do"));
    CU_ASSERT_FALSE(tls_name_ok("Upper.do"));
    CU_ASSERT_FALSE(tls_name_ok("a..do"));
    CU_ASSERT_FALSE(tls_name_ok(".a.do"));
    CU_ASSERT_FALSE(tls_name_ok("a.do."));
    CU_ASSERT_FALSE(tls_name_ok("a b.do"));
    CU_ASSERT_EQUAL(tls_name_norm("Secure.DO.", 10, out), 9);
    CU_ASSERT_STRING_EQUAL(out, "secure.do");
    CU_ASSERT_EQUAL(tls_name_norm(".", 1, out), 0);
}

/* ---- SNI matching order ---------------------------------------------------------------------- */

static void test_sni_order(void)
{
    static const char *const names[] = {
        "a.example.com", "*.example.com", "*.b.example.com", "dup.do", "dup.do",
        "old.do",        "old.do",        "new.do",          "new.do", "localhost",
    };
    struct wk_sni *x = wk_sni_new((uint32_t)DSP_ARRAY_SIZE(names));

    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    wk_sni_add(x, names[0], strlen(names[0]), 0, 0);
    wk_sni_add(x, names[1], strlen(names[1]), 1, 0);
    wk_sni_add(x, names[2], strlen(names[2]), 2, 0);
    wk_sni_add(x, names[3], strlen(names[3]), 3, 0);
    wk_sni_add(x, names[4], strlen(names[4]), 4, 0); /* later claim: loses */
    wk_sni_add(x, names[5], strlen(names[5]), 5, 1); /* expired ... */
    wk_sni_add(x, names[6], strlen(names[6]), 6, 0); /* ... a valid one takes over */
    wk_sni_add(x, names[7], strlen(names[7]), 7, 0);
    wk_sni_add(x, names[8], strlen(names[8]), 8, 1); /* an expired one never does */
    wk_sni_add(x, names[9], strlen(names[9]), 9, 0);

    /* Exact beats wildcard; a wildcard covers exactly one label. */
    CU_ASSERT_EQUAL(wk_sni_find(x, "a.example.com", 13), 0);
    CU_ASSERT_EQUAL(wk_sni_find(x, "x.example.com", 13), 1);
    CU_ASSERT_EQUAL(wk_sni_find(x, "b.example.com", 13), 1);
    CU_ASSERT_EQUAL(wk_sni_find(x, "x.b.example.com", 15), 2);
    CU_ASSERT_EQUAL(wk_sni_find(x, "y.x.example.com", 15), UINT32_MAX);
    CU_ASSERT_EQUAL(wk_sni_find(x, "example.com", 11), UINT32_MAX);
    CU_ASSERT_EQUAL(wk_sni_find(x, "dup.do", 6), 3);
    CU_ASSERT_EQUAL(wk_sni_find(x, "old.do", 6), 6);
    CU_ASSERT_EQUAL(wk_sni_find(x, "new.do", 6), 7);
    CU_ASSERT_EQUAL(wk_sni_find(x, "localhost", 9), 9);
    CU_ASSERT_EQUAL(wk_sni_find(x, "unknown.do", 10), UINT32_MAX);
    CU_ASSERT_EQUAL(wk_sni_find(x, "do", 2), UINT32_MAX);
    CU_ASSERT_EQUAL(wk_sni_find(x, ".", 1), UINT32_MAX);
    CU_ASSERT_EQUAL(wk_sni_find(x, "", 0), UINT32_MAX);
    wk_sni_free(x);
}

/* ---- pairs ----------------------------------------------------------------------------------- */

static void test_pair_check(void)
{
    struct pem_pair a = make_cert("a.do", "DNS:a.do", 0, 30);
    struct pem_pair b = make_cert("b.do", "DNS:b.do", 0, 30);
    struct ms_cert ct;
    char dir[64], ca[PATH_MAX], ka[PATH_MAX], kb[PATH_MAX], enc[PATH_MAX], junk[PATH_MAX];
    char err[512];
    static const char *const files[] = {"a.pem", "a.key", "b.key", "enc.key", "junk.pem", NULL};
    int64_t now = (int64_t)time(NULL);

    mk_tmpdir(dir, sizeof(dir));
    snprintf(ca, sizeof(ca), "%s/a.pem", dir);
    snprintf(ka, sizeof(ka), "%s/a.key", dir);
    snprintf(kb, sizeof(kb), "%s/b.key", dir);
    snprintf(enc, sizeof(enc), "%s/enc.key", dir);
    snprintf(junk, sizeof(junk), "%s/junk.pem", dir);
    write_file(ca, a.cert);
    write_file(ka, a.key);
    write_file(kb, b.key);
    write_file(junk, "hello\n");
    {
        BIO *bio = BIO_new_mem_buf(a.key, -1);
        EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        FILE *f = fopen(enc, "w");

        CU_ASSERT_PTR_NOT_NULL_FATAL(pk);
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        PEM_write_PKCS8PrivateKey(f, pk, EVP_aes_256_cbc(), NULL, 0, NULL, (void *)"secret");
        fclose(f);
        EVP_PKEY_free(pk);
        BIO_free(bio);
    }

    memset(&ct, 0, sizeof(ct));
    ct.cert = ca;
    ct.key = kb;
    CU_ASSERT_EQUAL(ms_tls_load_cert(&ct, TLS_V12, now, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "do not match"));
    CU_ASSERT_PTR_NULL(ct.cert_pem);

    ct.key = enc;
    CU_ASSERT_EQUAL(ms_tls_load_cert(&ct, TLS_V12, now, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "encrypted"));

    ct.cert = junk;
    ct.key = ka;
    CU_ASSERT_EQUAL(ms_tls_load_cert(&ct, TLS_V12, now, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "no PEM certificate"));

    ct.cert = ca;
    ct.key = junk;
    CU_ASSERT_EQUAL(ms_tls_load_cert(&ct, TLS_V12, now, err, sizeof(err)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "no PEM private key"));

    ct.key = ka;
    CU_ASSERT_EQUAL(ms_tls_load_cert(&ct, TLS_V12, now, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(ct.cert_pem);
    CU_ASSERT_PTR_NOT_NULL(strstr(ct.key_pem, "BEGIN PRIVATE KEY"));
    CU_ASSERT_EQUAL_FATAL(ct.nnames, 1);
    CU_ASSERT_STRING_EQUAL(ct.names[0], "a.do");
    CU_ASSERT_PTR_NOT_NULL(strstr(ct.subject, "CN=a.do"));
    CU_ASSERT_FALSE(ct.expired);
    CU_ASSERT_TRUE(ct.not_after > now + 29 * 86400 && ct.not_after <= now + 31 * 86400);

    /* PEM text given directly (no files), as a non-file source would. */
    {
        struct ms_cert pc;

        memset(&pc, 0, sizeof(pc));
        pc.cert_pem = strdup(b.cert);
        pc.key_pem = strdup(a.key);
        CU_ASSERT_EQUAL(ms_tls_load_cert(&pc, TLS_V12, now, err, sizeof(err)), -1);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "do not match"));
        free(pc.key_pem);
        pc.key_pem = strdup(b.key);
        CU_ASSERT_EQUAL(ms_tls_load_cert(&pc, TLS_V13, now, err, sizeof(err)), 0);
        CU_ASSERT_EQUAL_FATAL(pc.nnames, 1);
        CU_ASSERT_STRING_EQUAL(pc.names[0], "b.do");
        ms_cert_dispose(&pc);
    }

    ct.cert = NULL; /* borrowed paths: not ms_cert_dispose's to free */
    ct.key = NULL;
    ms_cert_dispose(&ct);
    rm_files(dir, files);
    pair_free(&a);
    pair_free(&b);
}

/* ---- the self-signed certificate ----------------------------------------------------------- */

static void test_self_signed(void)
{
    char *cert = NULL, *key = NULL, err[256], grp[64];
    BIO *b;
    X509 *x;
    EVP_PKEY *pk;
    struct ms_cert ct;
    int64_t now = (int64_t)time(NULL);
    size_t glen = 0;

    CU_ASSERT_EQUAL_FATAL(ms_tls_self_signed("localhost", &cert, &key, err, sizeof(err)), 0);
    b = BIO_new_mem_buf(cert, -1);
    x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    CU_ASSERT_PTR_NOT_NULL_FATAL(x);
    pk = X509_get0_pubkey(x);
    CU_ASSERT_EQUAL(EVP_PKEY_get_base_id(pk), EVP_PKEY_EC);
    CU_ASSERT_EQUAL(EVP_PKEY_get_group_name(pk, grp, sizeof(grp), &glen), 1);
    CU_ASSERT_STRING_EQUAL(grp, "prime256v1");
    CU_ASSERT_EQUAL(X509_verify(x, pk), 1); /* self-signed */
    CU_ASSERT_EQUAL(X509_check_host(x, "localhost", 0, 0, NULL), 1);
    CU_ASSERT_EQUAL(X509_check_purpose(x, X509_PURPOSE_SSL_SERVER, 0), 1);
    X509_free(x);

    memset(&ct, 0, sizeof(ct));
    ct.cert_pem = cert;
    ct.key_pem = key;
    CU_ASSERT_EQUAL(ms_tls_load_cert(&ct, TLS_V12, now, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(ct.nnames, 1);
    CU_ASSERT_STRING_EQUAL(ct.names[0], "localhost");
    CU_ASSERT_STRING_EQUAL(ct.subject, "CN=localhost");
    CU_ASSERT_TRUE(ct.not_after > now + 360 * 86400);
    ms_cert_dispose(&ct);

    /* A CN that is no host name still makes a certificate; it just names no host. */
    CU_ASSERT_EQUAL_FATAL(ms_tls_self_signed("My Dev Box", &cert, &key, err, sizeof(err)), 0);
    memset(&ct, 0, sizeof(ct));
    ct.cert_pem = cert;
    ct.key_pem = key;
    CU_ASSERT_EQUAL(ms_tls_load_cert(&ct, TLS_V12, now, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(ct.nnames, 0);
    ms_cert_dispose(&ct);
}

/* ---- a whole config ------------------------------------------------------------------------ */

static void test_prepare_and_publish(void)
{
    struct pem_pair ok = make_cert("secure.do", "DNS:secure.do", -1, 30);
    struct pem_pair wild = make_cert("*.app.example.com", NULL, -1, 30);
    struct pem_pair old = make_cert("old.do", "DNS:old.do", -40, -10);
    struct pem_pair other = make_cert("other.do", NULL, 0, 30);
    static const char *const files[] = {"ok.pem",  "ok.key",    "wild.pem",  "wild.key", "old.pem",
                                        "old.key", "other.key", "good.conf", "bad.conf", NULL};
    char dir[64], p[PATH_MAX], conf[PATH_MAX], want[PATH_MAX + 32], *errs = NULL;
    struct ms_config *cfg = NULL;
    const struct shm_snap_hdr *h;
    const struct shm_cert *ct;
    const struct shm_str *nm;
    void *snap;
    size_t size;
    int saved = log_level;

    mk_tmpdir(dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/ok.pem", dir);
    write_file(p, ok.cert);
    snprintf(p, sizeof(p), "%s/ok.key", dir);
    write_file(p, ok.key);
    snprintf(p, sizeof(p), "%s/wild.pem", dir);
    write_file(p, wild.cert);
    snprintf(p, sizeof(p), "%s/wild.key", dir);
    write_file(p, wild.key);
    snprintf(p, sizeof(p), "%s/old.pem", dir);
    write_file(p, old.cert);
    snprintf(p, sizeof(p), "%s/old.key", dir);
    write_file(p, old.key);
    snprintf(p, sizeof(p), "%s/other.key", dir);
    write_file(p, other.key);
    snprintf(conf, sizeof(conf), "%s/good.conf", dir);
    write_file(conf, "listeners = ( { address = \"127.0.0.1:8443\"; tls = true; } );\n"
                     "tls = { self_signed_cn = \"dev.local\";\n"
                     "  certificates = (\n"
                     "    { cert = \"ok.pem\"; key = \"ok.key\"; },\n"
                     "    { cert = \"wild.pem\"; key = \"wild.key\"; },\n"
                     "    { cert = \"old.pem\"; key = \"old.key\"; }\n"
                     "  ); };\n");
    log_level = LOG_ERROR; /* the expired certificate's warning is expected */
    CU_ASSERT_EQUAL_FATAL(ms_config_load(conf, 0, &cfg, &errs), 0);
    CU_ASSERT_EQUAL(ms_tls_prepare(cfg, &errs), 0);
    if (errs != NULL) {
        fprintf(stderr, "\n%s\n", errs);
        free(errs);
        errs = NULL;
    }
    CU_ASSERT_FALSE(cfg->tls.certs[0].expired);
    CU_ASSERT_TRUE(cfg->tls.certs[2].expired);
    CU_ASSERT_STRING_EQUAL(cfg->tls.self_signed.names[0], "dev.local");

    snap = ms_compile(cfg, 1, &size);
    h = snap;
    CU_ASSERT_EQUAL_FATAL(shm_snap_check(h, size), 0);
    CU_ASSERT_EQUAL_FATAL(h->ncerts, 4);
    CU_ASSERT_EQUAL(h->ncert_names, 4);
    CU_ASSERT_EQUAL(h->tls_min_version, 0x0303u);
    ct = shm_certs(h);
    nm = shm_cert_names(h);
    CU_ASSERT_STRING_EQUAL(shm_s(h, nm[ct[0].names_first]), "secure.do");
    CU_ASSERT_STRING_EQUAL(shm_s(h, nm[ct[1].names_first]), "*.app.example.com");
    CU_ASSERT_EQUAL(ct[0].line, 4);
    CU_ASSERT_EQUAL(ct[0].flags, 0u);
    CU_ASSERT_EQUAL(ct[2].flags, SHM_CERT_F_EXPIRED);
    CU_ASSERT_EQUAL(ct[3].flags, SHM_CERT_F_DEFAULT | SHM_CERT_F_SELF_SIGNED);
    CU_ASSERT_EQUAL(ct[3].line, 0u);
    CU_ASSERT_EQUAL(ct[0].source, SHM_SOURCE_FILE);
    CU_ASSERT_EQUAL(ct[3].source, SHM_SOURCE_FILE); /* generated for the file's self_signed_cn */
    CU_ASSERT_STRING_EQUAL(shm_s(h, ct[3].subject), "CN=dev.local");
    CU_ASSERT_PTR_NOT_NULL(strstr(shm_s(h, ct[1].key_pem), "BEGIN PRIVATE KEY"));
    /* A worker builds its contexts from exactly these bytes. */
    {
        struct ssl_ctx_st *c;
        char err[256];

        for (uint32_t i = 0; i < h->ncerts; i++) {
            c = tls_server_ctx_new(shm_s(h, ct[i].cert_pem), ct[i].cert_pem.len,
                                   shm_s(h, ct[i].key_pem), ct[i].key_pem.len, TLS_V12, err,
                                   sizeof(err));
            CU_ASSERT_PTR_NOT_NULL(c);
            SSL_CTX_free(c);
        }
    }
    /* Damaged tables are refused. */
    ((struct shm_cert *)(void *)((char *)snap + h->certs_off))[1].names_first = 100;
    CU_ASSERT_EQUAL(shm_snap_check(h, size), -1);
    free(snap);
    ms_config_free(cfg);
    cfg = NULL;

    /* A mismatched pair: the error names the file and the line of the entry. */
    snprintf(conf, sizeof(conf), "%s/bad.conf", dir);
    write_file(conf, "listeners = ( { address = \"127.0.0.1:8443\"; tls = true; } );\n"
                     "tls = { certificates = (\n"
                     "    { cert = \"ok.pem\"; key = \"ok.key\"; },\n"
                     "    { cert = \"wild.pem\";\n"
                     "      key = \"other.key\"; }\n"
                     "  ); };\n");
    CU_ASSERT_EQUAL_FATAL(ms_config_load(conf, 0, &cfg, &errs), 0);
    CU_ASSERT_EQUAL(ms_tls_prepare(cfg, &errs), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    snprintf(want, sizeof(want), "%s:4: tls.certificates[1]: ", conf);
    CU_ASSERT_EQUAL(strncmp(errs, want, strlen(want)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, "do not match"));
    CU_ASSERT_PTR_NULL(strchr(errs, '\n'));
    free(errs);
    ms_config_free(cfg);
    log_level = saved;

    rm_files(dir, files);
    pair_free(&ok);
    pair_free(&wild);
    pair_free(&old);
    pair_free(&other);
}

static void test_service_tls_keys(void)
{
    struct pem_pair ca = make_cert("Test CA", NULL, 0, 30);
    static const char *const files[] = {"ca.pem", "a.conf", "b.conf", NULL};
    char dir[64], p[PATH_MAX], *errs = NULL;
    struct ms_config *cfg = NULL;
    void *snap;
    size_t size;
    const struct shm_service *sv;

    mk_tmpdir(dir, sizeof(dir));
    snprintf(p, sizeof(p), "%s/ca.pem", dir);
    write_file(p, ca.cert);
    snprintf(p, sizeof(p), "%s/a.conf", dir);
    write_file(p, "listeners = ( { address = \"127.0.0.1:8080\"; } );\n"
                  "services = (\n"
                  "  { name = \"s\"; backends = [\"127.0.0.1:1\"]; tls = true; ca = \"ca.pem\";\n"
                  "    sni = \"Backend.Internal\"; },\n"
                  "  { name = \"p\"; backends = [\"127.0.0.1:2\"]; tls = true; verify = false; },\n"
                  "  { name = \"q\"; backends = [\"127.0.0.1:3\"]; }\n"
                  ");\n");
    CU_ASSERT_EQUAL_FATAL(ms_config_load(p, 0, &cfg, &errs), 0);
    CU_ASSERT_TRUE(cfg->services[0].tls && cfg->services[0].tls_verify);
    CU_ASSERT_STRING_EQUAL(cfg->services[0].tls_sni, "backend.internal");
    CU_ASSERT_PTR_NOT_NULL(strstr(cfg->services[0].tls_ca_pem, "BEGIN CERTIFICATE"));
    CU_ASSERT_FALSE(cfg->services[1].tls_verify);
    snap = ms_compile(cfg, 1, &size);
    CU_ASSERT_EQUAL_FATAL(shm_snap_check(snap, size), 0);
    sv = shm_services(snap);
    CU_ASSERT_EQUAL(sv[0].tls, SHM_SVC_TLS_ON | SHM_SVC_TLS_VERIFY);
    CU_ASSERT_STRING_EQUAL(shm_s(snap, sv[0].tls_sni), "backend.internal");
    CU_ASSERT_TRUE(sv[0].tls_ca_pem.len > 0);
    CU_ASSERT_EQUAL(sv[1].tls, SHM_SVC_TLS_ON);
    CU_ASSERT_EQUAL(sv[1].tls_ca_pem.len, 0);
    CU_ASSERT_EQUAL(sv[2].tls, 0u);
    free(snap);
    ms_config_free(cfg);

    snprintf(p, sizeof(p), "%s/b.conf", dir);
    write_file(p, "listeners = ( { address = \"127.0.0.1:8080\"; } );\n"
                  "services = (\n"
                  "  { name = \"s\"; backends = [\"127.0.0.1:1\"]; sni = \"x.do\"; },\n"
                  "  { name = \"t\"; backends = [\"127.0.0.1:1\"]; tls = true;\n"
                  "    ca = \"missing.pem\"; },\n"
                  "  { name = \"u\"; backends = [\"127.0.0.1:1\"]; tls = true; sni = \"*.x\"; }\n"
                  ");\n");
    CU_ASSERT_EQUAL(ms_config_load(p, 0, &cfg, &errs), -1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(errs);
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, ":3: services[0].sni applies to TLS backends only"));
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, ":5: services[1].ca: cannot read"));
    CU_ASSERT_PTR_NOT_NULL(strstr(errs, ":6: services[2].sni \"*.x\" must be a host name"));
    free(errs);
    rm_files(dir, files);
    pair_free(&ca);
}

/* ---- ticket keys ----------------------------------------------------------------------------- */

static int live_keys(const struct shm_tkeys *r)
{
    int n = 0;

    for (uint32_t i = 0; i < SHM_TKEY_SLOTS; i++) {
        n += r->keys[i].dec_until != 0;
    }
    return n;
}

static int zeroed(const struct shm_tkey *k)
{
    static const struct shm_tkey zero;

    return memcmp(k, &zero, sizeof(zero)) == 0;
}

static void test_ticket_rotation(void)
{
    struct shm_tkeys r;
    uint64_t t0 = 1000, first, seq;
    uint64_t name0[2];

    memset(&r, 0, sizeof(r));
    CU_ASSERT_EQUAL(ms_tls_tickets_rotate(&r, t0), 1);
    first = r.current;
    CU_ASSERT_EQUAL(r.seq % 2, 0u);
    CU_ASSERT_EQUAL(r.keys[first].enc_until, t0 + TLS_TICKET_ENC_S);
    CU_ASSERT_EQUAL(r.keys[first].dec_until, t0 + TLS_TICKET_ENC_S + TLS_TICKET_DEC_S);
    memcpy(name0, r.keys[first].name, sizeof(name0));
    CU_ASSERT_FALSE(name0[0] == 0 && name0[1] == 0);

    /* Nothing to do within the period. */
    seq = r.seq;
    CU_ASSERT_EQUAL(ms_tls_tickets_rotate(&r, t0 + TLS_TICKET_ENC_S - 1), 0);
    CU_ASSERT_EQUAL(r.seq, seq);

    /* A new key encrypts; the old one still decrypts. */
    CU_ASSERT_EQUAL(ms_tls_tickets_rotate(&r, t0 + TLS_TICKET_ENC_S), 1);
    CU_ASSERT_NOT_EQUAL(r.current, first);
    CU_ASSERT_EQUAL(live_keys(&r), 2);
    CU_ASSERT_EQUAL(memcmp(r.keys[first].name, name0, sizeof(name0)), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(r.keys[r.current].name, name0, sizeof(name0)), 0);

    /* Steady state: at most three live keys, and the oldest is zeroed once its window ends. */
    for (uint64_t t = t0 + 2 * TLS_TICKET_ENC_S; t <= t0 + 10 * TLS_TICKET_ENC_S;
         t += TLS_TICKET_ENC_S) {
        ms_tls_tickets_rotate(&r, t);
        CU_ASSERT_TRUE(live_keys(&r) <= 3);
        CU_ASSERT_TRUE(r.keys[r.current].enc_until > t);
        for (uint32_t i = 0; i < SHM_TKEY_SLOTS; i++) {
            CU_ASSERT_TRUE(r.keys[i].dec_until > t || zeroed(&r.keys[i]));
        }
    }
    CU_ASSERT_TRUE(zeroed(&r.keys[first]) || memcmp(r.keys[first].name, name0, 16) != 0);
    CU_ASSERT_EQUAL(r.seq % 2, 0u);
}

/* ---- the socket BIO (common/tls.c) ------------------------------------------------------- */

/* A connected loopback TCP pair, both ends non-blocking. */
static void tcp_pair(int *a, int *b)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof(sa);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;

    CU_ASSERT_FATAL(l >= 0);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CU_ASSERT_FATAL(bind(l, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CU_ASSERT_FATAL(listen(l, 1) == 0);
    CU_ASSERT_FATAL(getsockname(l, (struct sockaddr *)&sa, &sl) == 0);
    *a = socket(AF_INET, SOCK_STREAM, 0);
    CU_ASSERT_FATAL(*a >= 0 && connect(*a, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    *b = accept(l, NULL, NULL);
    CU_ASSERT_FATAL(*b >= 0);
    close(l);
    /* As the proxy's sockets: no Nagle delay between small records. */
    setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(*b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(*a, F_SETFL, O_NONBLOCK);
    fcntl(*b, F_SETFL, O_NONBLOCK);
}

/* Drive both handshakes until done (bounded). */
static void handshake_pair(SSL *cl, SSL *sv)
{
    int done_c = 0, done_s = 0;

    for (int i = 0; i < 1000 && !(done_c && done_s); i++) {
        if (!done_c) {
            int r = SSL_do_handshake(cl);
            done_c = r == 1;
            CU_ASSERT_FATAL(r == 1 || SSL_get_error(cl, r) == SSL_ERROR_WANT_READ);
        }
        if (!done_s) {
            int r = SSL_do_handshake(sv);
            done_s = r == 1;
            CU_ASSERT_FATAL(r == 1 || SSL_get_error(sv, r) == SSL_ERROR_WANT_READ);
        }
        usleep(1000);
    }
    CU_ASSERT_FATAL(done_c && done_s);
}

static void test_socket_bio(void)
{
    struct pem_pair pp = make_cert("bio.do", "DNS:bio.do", 0, 30);
    char err[256], buf[256];
    SSL_CTX *sctx = tls_server_ctx_new(pp.cert, strlen(pp.cert), pp.key, strlen(pp.key), TLS_V12,
                                       err, sizeof(err));
    SSL_CTX *cctx = tls_client_ctx_new(0, NULL, 0, err, sizeof(err));
    int cfd, sfd, v = -1, n;
    socklen_t vl = sizeof(v);
    SSL *cl, *sv;

    CU_ASSERT_PTR_NOT_NULL_FATAL(sctx);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cctx);
    tcp_pair(&cfd, &sfd);
    cl = tls_client_conn(cctx, cfd, "bio.do", 0, NULL, 0, err, sizeof(err));
    sv = SSL_new(sctx);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cl);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sv);
    CU_ASSERT_EQUAL_FATAL(tls_set_socket(sv, sfd), 0);
    SSL_set_accept_state(sv);
    CU_ASSERT_EQUAL(SSL_get_fd(sv), sfd);
    handshake_pair(cl, sv);

    /* Two records in one segment: the first read returns the first record, and the socket is
     * empty but OpenSSL still holds the second, so the server is not drained. */
    CU_ASSERT_EQUAL(SSL_write(cl, "first", 5), 5);
    CU_ASSERT_EQUAL(SSL_write(cl, "second", 6), 6);
    usleep(20000);
    n = SSL_read(sv, buf, sizeof(buf));
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_FALSE(tls_drained(sv));
    n = SSL_read(sv, buf, sizeof(buf));
    CU_ASSERT_EQUAL(n, 6);
    CU_ASSERT_TRUE(tls_drained(sv));
    /* Nothing more: WANT_READ, with errno intact for the caller. */
    n = SSL_read(sv, buf, sizeof(buf));
    CU_ASSERT_EQUAL(SSL_get_error(sv, n), SSL_ERROR_WANT_READ);

    /* Cork: set and cleared on the socket, once each. */
    tls_cork(sv, 1);
    CU_ASSERT_EQUAL(getsockopt(sfd, IPPROTO_TCP, TCP_CORK, &v, &vl), 0);
    CU_ASSERT_EQUAL(v, 1);
    tls_cork(sv, 0);
    CU_ASSERT_EQUAL(getsockopt(sfd, IPPROTO_TCP, TCP_CORK, &v, &vl), 0);
    CU_ASSERT_EQUAL(v, 0);

    /* Ticket note: taken once. */
    CU_ASSERT_EQUAL(tls_ticket_take(sv), 0);
    tls_ticket_defer(sv);
    CU_ASSERT_EQUAL(tls_ticket_take(sv), 1);
    CU_ASSERT_EQUAL(tls_ticket_take(sv), 0);

    /* The peer's close without close_notify reads as EOF, not a hang or a crash. */
    SSL_set_quiet_shutdown(cl, 1);
    SSL_free(cl);
    close(cfd);
    usleep(20000);
    n = SSL_read(sv, buf, sizeof(buf));
    CU_ASSERT_TRUE(n <= 0);
    CU_ASSERT_NOT_EQUAL(SSL_get_error(sv, n), SSL_ERROR_WANT_READ);
    CU_ASSERT_TRUE(tls_drained(sv));
    SSL_free(sv);
    close(sfd); /* still ours: freeing the SSL did not close it */
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    pair_free(&pp);
}

UNIT_SUITE(tls, {"names from SAN", test_names_san}, {"names from CN", test_names_cn_fallback},
           {"name rules", test_name_rules}, {"SNI matching order", test_sni_order},
           {"pair checks", test_pair_check}, {"self-signed", test_self_signed},
           {"prepare and publish", test_prepare_and_publish},
           {"service tls keys", test_service_tls_keys}, {"ticket rotation", test_ticket_rotation},
           {"socket BIO", test_socket_bio})
