/* dispatcher: OpenSSL context construction with the project's TLS policy, and small helpers both
 * the master and the workers need. The master builds every server context once at config load
 * purely to validate it, so a certificate that passes `-t` is one every worker can serve. */
#include "common/tls.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* Mozilla "intermediate": forward secrecy and AEAD only. TLS 1.3 suites are all AEAD. */
static const char ciphers12[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
static const char suites13[] =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
static const char server_groups[] = "X25519:P-256";
static const unsigned char alpn_h11[] = "\x08http/1.1";
static const char sid_ctx[] = "dispatcher";

char *tls_errors(char *buf, size_t len)
{
    size_t off = 0;
    unsigned long e;

    if (len == 0) {
        return buf;
    }
    buf[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        const char *r = ERR_reason_error_string(e);
        int n;

        if (r != NULL) {
            n = snprintf(buf + off, len - off, "%s%s", off ? "; " : "", r);
        } else {
            n = snprintf(buf + off, len - off, "%serror %lx", off ? "; " : "", e);
        }
        if (n > 0) {
            off += (size_t)n < len - off ? (size_t)n : len - off - 1;
        }
    }
    return buf;
}

/* Prefix <what> to the queued OpenSSL errors in <err>. */
static void set_err(char *err, size_t errlen, const char *what)
{
    char detail[256];

    tls_errors(detail, sizeof(detail));
    if (detail[0] != '\0') {
        snprintf(err, errlen, "%s (%s)", what, detail);
    } else {
        snprintf(err, errlen, "%s", what);
    }
}

int tls_name_ok(const char *name)
{
    size_t n = strlen(name), label = 0;
    const char *p = name;

    if (n == 0 || n > TLS_MAX_NAME) {
        return 0;
    }
    if (p[0] == '*') {
        /* Only a whole first label may be a wildcard, and not the only label ("*.com" is the
         * operator's business, "*" alone is nobody's). */
        if (p[1] != '.' || p[2] == '\0') {
            return 0;
        }
        p += 2;
    }
    for (; *p; p++) {
        if (*p == '.') {
            if (label == 0) {
                return 0;
            }
            label = 0;
            continue;
        }
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '_')) {
            return 0;
        }
        if (++label > 63) {
            return 0;
        }
    }
    return label > 0;
}

size_t tls_name_norm(const char *in, size_t len, char *out)
{
    if (len > 0 && in[len - 1] == '.') {
        len--;
    }
    if (len == 0 || len > TLS_MAX_NAME) {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        out[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    out[len] = '\0';
    return len;
}

/* Offer http/1.1 when the client asks for it; a client that offers only other protocols gets
 * no ALPN answer (and may carry on with HTTP/1.1 or give up), never a handshake failure. */
static int on_alpn(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *sel = NULL;

    (void)s;
    (void)arg;
    if (SSL_select_next_proto(&sel, outlen, alpn_h11, sizeof(alpn_h11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

int tls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

static int load_pem_pair(SSL_CTX *ctx, const char *cert_pem, size_t cert_len, const char *key_pem,
                         size_t key_len, char *err, size_t errlen)
{
    BIO *b = BIO_new_mem_buf(cert_pem, (int)cert_len);
    EVP_PKEY *pk = NULL;
    X509 *x;
    int rc = -1;

    if (b == NULL) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    x = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL);
    if (x == NULL) {
        set_err(err, errlen, "no PEM certificate found");
        goto done;
    }
    if (SSL_CTX_use_certificate(ctx, x) != 1) {
        X509_free(x);
        set_err(err, errlen, "certificate refused");
        goto done;
    }
    X509_free(x);
    while ((x = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL)) != NULL) {
        if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
            X509_free(x);
            set_err(err, errlen, "chain certificate refused");
            goto done;
        }
    }
    ERR_clear_error(); /* the loop above ends on "no start line" */
    BIO_free(b);
    b = BIO_new_mem_buf(key_pem, (int)key_len);
    if (b == NULL) {
        set_err(err, errlen, "out of memory");
        goto done;
    }
    pk = PEM_read_bio_PrivateKey(b, NULL, tls_no_passphrase, NULL);
    if (pk == NULL) {
        if (memmem(key_pem, key_len, "ENCRYPTED", 9) != NULL) {
            ERR_clear_error();
            snprintf(err, errlen, "the private key is encrypted (passphrases are not supported)");
        } else {
            set_err(err, errlen, "no PEM private key found");
        }
        goto done;
    }
    if (SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "the private key does not match the certificate");
        goto done;
    }
    rc = 0;
done:
    EVP_PKEY_free(pk);
    BIO_free(b);
    return rc;
}

/* ---- the socket BIO ------------------------------------------------------------------------
 *
 * OpenSSL's own socket BIO, plus one fact the event loop needs: whether the last recv() came
 * back short, i.e. emptied the socket. With read-ahead OpenSSL asks for a whole buffer, so a
 * short read means an edge-triggered reader can stop without the recv() that would only say
 * EAGAIN. The BIO's data word holds the descriptor and two bits, no allocation. */
#define SOCK_DRAINED 1u
#define SOCK_EOF     2u
#define SOCK_CORKED  4u /* TCP_CORK is on (tls_cork) */
#define SOCK_TICKET  8u /* a TLS 1.3 session ticket is owed (tls_ticket_defer) */
#define SOCK_SHIFT   4

static BIO_METHOD *sock_meth;
static int sock_type;

static uintptr_t sock_word(BIO *b)
{
    return (uintptr_t)BIO_get_data(b);
}

static int sock_fd(BIO *b)
{
    return (int)(sock_word(b) >> SOCK_SHIFT);
}

/* Set the bits in <mask> to <bits>. */
static void sock_set_bits(BIO *b, uintptr_t mask, uintptr_t bits)
{
    BIO_set_data(b, (void *)((sock_word(b) & ~mask) | bits));
}

static int sock_retriable(int e)
{
    return e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == EINPROGRESS || e == EALREADY;
}

static int sock_read(BIO *b, char *buf, int len)
{
    ssize_t n;

    BIO_clear_retry_flags(b);
    if (buf == NULL || len <= 0) {
        return 0;
    }
    n = recv(sock_fd(b), buf, (size_t)len, 0);
    if (n > 0) {
        sock_set_bits(b, SOCK_DRAINED | SOCK_EOF, n < len ? SOCK_DRAINED : 0);
    } else if (n == 0) {
        sock_set_bits(b, SOCK_DRAINED | SOCK_EOF, SOCK_DRAINED | SOCK_EOF);
    } else {
        int e = errno;

        sock_set_bits(b, SOCK_DRAINED | SOCK_EOF, SOCK_DRAINED);
        if (sock_retriable(e)) {
            BIO_set_retry_read(b);
        }
        errno = e;
    }
    return (int)n;
}

static int sock_write(BIO *b, const char *buf, int len)
{
    ssize_t n;

    BIO_clear_retry_flags(b);
    if (buf == NULL || len <= 0) {
        return 0;
    }
    n = send(sock_fd(b), buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0 && sock_retriable(errno)) {
        BIO_set_retry_write(b);
    }
    return (int)n;
}

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        return (sock_word(b) & SOCK_EOF) != 0;
    case BIO_C_GET_FD:
        if (ptr != NULL) {
            *(int *)ptr = sock_fd(b);
        }
        return sock_fd(b);
    default:
        return 0;
    }
}

static int sock_create(BIO *b)
{
    BIO_set_data(b, NULL);
    BIO_set_init(b, 1);
    return 1;
}

/* The socket stays the caller's: freeing the BIO never closes it. */
static int sock_destroy(BIO *b)
{
    (void)b;
    return 1;
}

int tls_set_socket(struct ssl_st *s, int fd)
{
    BIO *b;

    if (fd < 0 || (uintptr_t)fd > (UINTPTR_MAX >> SOCK_SHIFT)) {
        return -1;
    }
    if (sock_meth == NULL) {
        int type = BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR;
        BIO_METHOD *m = BIO_meth_new(type, "dispatcher socket");

        if (m == NULL || BIO_meth_set_read(m, sock_read) != 1 ||
            BIO_meth_set_write(m, sock_write) != 1 || BIO_meth_set_ctrl(m, sock_ctrl) != 1 ||
            BIO_meth_set_create(m, sock_create) != 1 ||
            BIO_meth_set_destroy(m, sock_destroy) != 1) {
            BIO_meth_free(m);
            return -1;
        }
        sock_meth = m;
        sock_type = type;
    }
    b = BIO_new(sock_meth);
    if (b == NULL) {
        return -1;
    }
    BIO_set_data(b, (void *)((uintptr_t)fd << SOCK_SHIFT));
    SSL_set_bio(s, b, b);
    return 0;
}


/* The BIO of <s> when it is ours, else NULL. */
static BIO *sock_bio(const struct ssl_st *s)
{
    BIO *b = SSL_get_wbio(s);

    return b != NULL && sock_meth != NULL && BIO_method_type(b) == sock_type ? b : NULL;
}

int tls_drained(const struct ssl_st *s)
{
    BIO *b = sock_bio(s);

    return b != NULL && (sock_word(b) & SOCK_DRAINED) && !SSL_has_pending(s);
}

void tls_cork(struct ssl_st *s, int on)
{
    BIO *b = sock_bio(s);
    int v = on != 0;

    if (b == NULL || ((sock_word(b) & SOCK_CORKED) != 0) == v) {
        return;
    }
    /* Best effort: without it segments are only smaller. */
    (void)setsockopt(sock_fd(b), IPPROTO_TCP, TCP_CORK, &v, sizeof(v));
    sock_set_bits(b, SOCK_CORKED, v ? SOCK_CORKED : 0);
}

void tls_ticket_defer(struct ssl_st *s)
{
    BIO *b = sock_bio(s);

    if (b != NULL) {
        sock_set_bits(b, SOCK_TICKET, SOCK_TICKET);
    }
}

int tls_ticket_take(struct ssl_st *s)
{
    BIO *b = sock_bio(s);

    if (b == NULL || !(sock_word(b) & SOCK_TICKET)) {
        return 0;
    }
    sock_set_bits(b, SOCK_TICKET, 0);
    return 1;
}

struct ssl_ctx_st *tls_server_ctx_new(const char *cert_pem, size_t cert_len, const char *key_pem,
                                      size_t key_len, int min_version, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

    if (ctx == NULL) {
        set_err(err, errlen, "SSL_CTX_new() failed");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, min_version == TLS_V13 ? TLS1_3_VERSION
                                                                  : TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_cipher_list(ctx, ciphers12) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, suites13) != 1 ||
        SSL_CTX_set1_groups_list(ctx, server_groups) != 1) {
        set_err(err, errlen, "cannot apply the TLS policy");
        SSL_CTX_free(ctx);
        return NULL;
    }
    /* OpenSSL 3 refuses client-initiated renegotiation unless told otherwise; NO_RENEGOTIATION
     * also refuses it in every other form. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Partial writes and moving buffers: the proxy hands SSL_write whatever part of its
     * bounded buffers is ready, and compacts them between calls. Released buffers keep an idle
     * keep-alive connection at a few hundred bytes of OpenSSL state. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* Resumption is by ticket only: a session cache would be per worker, and a client's next
     * connection usually lands on another worker. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)sid_ctx, sizeof(sid_ctx) - 1);
    SSL_CTX_set_timeout(ctx, TLS_TICKET_DEC_S);
    /* TLS 1.3 tickets are sent by the caller (SSL_new_session_ticket) when it suits the
     * connection: with the first response when the request came with the handshake. */
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    /* Whole-buffer reads: one recv() for a request instead of one per record header and body,
     * and a short one tells the loop the socket is empty (tls_drained). */
    SSL_CTX_set_read_ahead(ctx, 1);
    if (load_pem_pair(ctx, cert_pem, cert_len, key_pem, key_len, err, errlen) != 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int tls_ctx_use_pem(struct ssl_ctx_st *ctx, const char *cert_pem, size_t cert_len,
                    const char *key_pem, size_t key_len, char *err, size_t errlen)
{
    return load_pem_pair(ctx, cert_pem, cert_len, key_pem, key_len, err, errlen);
}

struct ssl_st *tls_client_conn(struct ssl_ctx_st *ctx, int fd, const char *sni, int verify,
                               const uint8_t *ip, size_t iplen, char *err, size_t errlen)
{
    SSL *s = SSL_new(ctx);

    if (s == NULL || tls_set_socket(s, fd) != 0) {
        set_err(err, errlen, "SSL_new() failed");
        SSL_free(s);
        return NULL;
    }
    SSL_set_connect_state(s);
    if (sni != NULL && SSL_set_tlsext_host_name(s, sni) != 1) {
        set_err(err, errlen, "cannot set the server name");
        SSL_free(s);
        return NULL;
    }
    /* Without a name to check, the certificate must name the address we connect to. */
    if (verify && (sni != NULL ? SSL_set1_host(s, sni) != 1
                               : X509_VERIFY_PARAM_set1_ip(SSL_get0_param(s), ip, iplen) != 1)) {
        set_err(err, errlen, "cannot set the name to verify");
        SSL_free(s);
        return NULL;
    }
    return s;
}

void tls_ctx_free(struct ssl_ctx_st *ctx)
{
    SSL_CTX_free(ctx);
}

struct ssl_ctx_st *tls_client_ctx_new(int verify, const char *ca_pem, size_t ca_len, char *err,
                                      size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (ctx == NULL) {
        set_err(err, errlen, "SSL_CTX_new() failed");
        return NULL;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_set_alpn_protos(ctx, alpn_h11, sizeof(alpn_h11) - 1) != 0) {
        set_err(err, errlen, "cannot apply the TLS policy");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1); /* as for servers: see tls_drained() */
    /* Sessions are kept by the caller (per backend), not in OpenSSL's cache. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    if (verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (ca_len > 0) {
            X509_STORE *st = SSL_CTX_get_cert_store(ctx);
            BIO *b = BIO_new_mem_buf(ca_pem, (int)ca_len);
            X509 *x;
            int n = 0;

            while (b != NULL && (x = PEM_read_bio_X509(b, NULL, tls_no_passphrase, NULL)) != NULL) {
                if (X509_STORE_add_cert(st, x) == 1) {
                    n++;
                }
                X509_free(x);
            }
            BIO_free(b);
            ERR_clear_error();
            if (n == 0) {
                snprintf(err, errlen, "no PEM certificate in the CA bundle");
                SSL_CTX_free(ctx);
                return NULL;
            }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            set_err(err, errlen, "cannot use the system CA store");
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}
