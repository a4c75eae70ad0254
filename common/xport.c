/* dispatcher: the transport (see xport.h): the plain type's slow paths and the TLS type. */
#include "common/xport.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/tls.h"

/* One TLS record's worth of plaintext: pieces smaller than this are coalesced so a response head
 * and a small body leave in one record rather than two. */
#define XP_COALESCE 16384

static char last_error[256];
static char scratch[XP_COALESCE];

const char *xp_error(void)
{
    return last_error;
}

/* ---- plain ---------------------------------------------------------------------------------- */

int xp_plain_fail(int err)
{
    snprintf(last_error, sizeof(last_error), "%s", strerror(err));
    errno = err;
    return XP_ERR;
}

void xp_plain_cork(struct xport *x)
{
    int one = 1;

    /* Best effort: without it segments are only smaller. */
    (void)setsockopt(x->fd, IPPROTO_TCP, TCP_CORK, &one, sizeof(one));
    x->flags |= XP_F_CORKED;
}

static int plain_handshake(struct xport *x)
{
    (void)x;
    return 1;
}

static ssize_t plain_read(struct xport *x, void *buf, size_t len)
{
    return xp_plain_read(x, buf, len);
}

static ssize_t plain_writev(struct xport *x, const struct iovec *iov, int niov, int last)
{
    return xp_plain_writev(x, iov, niov, last);
}

static int plain_pending(const struct xport *x)
{
    (void)x;
    return 0;
}

static int plain_drained(const struct xport *x)
{
    return (x->flags & XP_F_DRAINED) != 0;
}

static int plain_idle_ok(struct xport *x)
{
    char ch;

    return recv(x->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT) < 0 &&
           (errno == EAGAIN || errno == EWOULDBLOCK);
}

static void plain_shutdown(struct xport *x)
{
    if (x->fd != -1) {
        (void)shutdown(x->fd, SHUT_WR);
    }
}

static void plain_close(struct xport *x, int graceful)
{
    (void)graceful;
    if (x->fd != -1) {
        close(x->fd);
    }
    xp_init(x, -1);
}

const struct xport_type xp_plain_type = {
    .name = "plain",
    .handshake = plain_handshake,
    .read = plain_read,
    .writev = plain_writev,
    .pending = plain_pending,
    .drained = plain_drained,
    .idle_ok = plain_idle_ok,
    .shutdown = plain_shutdown,
    .close = plain_close,
};

/* ---- TLS ------------------------------------------------------------------------------------ */

/* "<what> (<OpenSSL's queued errors>)", emptying the queue. */
static void tls_reason(const char *what)
{
    char detail[200];

    tls_errors(detail, sizeof(detail));
    if (detail[0] != '\0') {
        snprintf(last_error, sizeof(last_error), "%s (%s)", what, detail);
    } else {
        snprintf(last_error, sizeof(last_error), "%s", what);
    }
}

/* Map the failed result <r> of a call on <s>. Fatal errors mark the SSL so that no close_notify
 * follows (OpenSSL forbids SSL_shutdown after them), keep a reason for xp_error() and leave an
 * errno for callers that look there. */
static int tls_fail(SSL *s, int r)
{
    int saved = errno;
    long v;

    switch (SSL_get_error(s, r)) {
    case SSL_ERROR_WANT_READ:
        return XP_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return XP_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        SSL_set_quiet_shutdown(s, 1);
        if (ERR_peek_error() == 0) {
            snprintf(last_error, sizeof(last_error), "%s",
                     saved ? strerror(saved) : "connection closed");
        } else {
            tls_reason("TLS error");
        }
        errno = saved ? saved : ECONNRESET;
        return XP_ERR;
    default:
        SSL_set_quiet_shutdown(s, 1);
        v = SSL_get_verify_result(s);
        if (v != X509_V_OK) {
            ERR_clear_error();
            snprintf(last_error, sizeof(last_error), "certificate verify failed: %s",
                     X509_verify_cert_error_string(v));
        } else {
            tls_reason("TLS error");
        }
        errno = EPROTO;
        return XP_ERR;
    }
}

static int tls_handshake(struct xport *x)
{
    int r;

    ERR_clear_error();
    r = SSL_do_handshake(x->ssl);
    if (r == 1) {
        /* TLS 1.3 servers owe one fresh ticket per connection, resumed ones included, since
         * clients use a ticket once (RFC 8446, C.4). It waits for the first write, whose
         * segment it shares, or for xp_ticket_now(). */
        if (SSL_is_server(x->ssl) && SSL_version(x->ssl) == TLS1_3_VERSION) {
            tls_ticket_defer(x->ssl);
        }
        return 1;
    }
    r = tls_fail(x->ssl, r);
    if (r == 0) {
        snprintf(last_error, sizeof(last_error), "connection closed during the TLS handshake");
        SSL_set_quiet_shutdown(x->ssl, 1);
        errno = ECONNRESET;
        r = XP_ERR;
    }
    return r;
}

static ssize_t tls_read(struct xport *x, void *buf, size_t len)
{
    int n;

    ERR_clear_error();
    n = SSL_read(x->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return n > 0 ? n : tls_fail(x->ssl, n);
}

static ssize_t tls_writev(struct xport *x, const struct iovec *iov, int niov, int last)
{
    SSL *s = x->ssl;
    const char *p;
    size_t len, total = 0;
    int n, ticket;

    for (int i = 0; i < niov; i++) {
        total += iov[i].iov_len;
    }
    if (total == 0) {
        return 0;
    }
    /* A ticket owed since the handshake, these bytes and (with <last>) the close_notify that
     * follows leave in one segment: cork until the socket closes, or until this write is done
     * when the connection stays open. */
    ticket = tls_ticket_take(s);
    if (ticket && SSL_new_session_ticket(s) != 1) {
        ERR_clear_error();
        ticket = 0;
    }
    if (ticket || last) {
        tls_cork(s, 1);
    }
    if (niov == 1 || iov[0].iov_len >= XP_COALESCE) {
        p = iov[0].iov_base;
        len = iov[0].iov_len;
    } else {
        /* Coalesce the head of the queue. After a WANT_* the same rule picks the same first
         * bytes again (or more of them), as OpenSSL requires of a retried write. */
        len = total < XP_COALESCE ? total : XP_COALESCE;
        for (size_t off = 0, i = 0; off < len; i++) {
            size_t k = iov[i].iov_len < len - off ? iov[i].iov_len : len - off;
            memcpy(scratch + off, iov[i].iov_base, k);
            off += k;
        }
        p = scratch;
    }
    ERR_clear_error();
    n = SSL_write(s, p, len > INT32_MAX ? INT32_MAX : (int)len);
    if (!last) {
        tls_cork(s, 0);
    }
    if (n > 0) {
        return n;
    }
    n = tls_fail(s, n);
    if (n == 0) {
        /* close_notify received while writing: the peer is gone. */
        snprintf(last_error, sizeof(last_error), "connection closed");
        errno = EPIPE;
        n = XP_ERR;
    }
    return n;
}

static int tls_pending(const struct xport *x)
{
    return SSL_has_pending(x->ssl);
}

static int tls_drained_x(const struct xport *x)
{
    return tls_drained(x->ssl);
}

static int tls_idle_ok(struct xport *x)
{
    char b;
    int n;

    if (SSL_has_pending(x->ssl)) {
        return 0;
    }
    ERR_clear_error();
    n = SSL_read(x->ssl, &b, 1);
    if (n > 0) {
        return 0;
    }
    return tls_fail(x->ssl, n) == XP_WANT_READ;
}

/* close_notify, if the session is established and healthy and none was sent yet. */
static void tls_notify(SSL *s)
{
    if (!SSL_is_init_finished(s) || SSL_get_quiet_shutdown(s) ||
        (SSL_get_shutdown(s) & SSL_SENT_SHUTDOWN)) {
        return;
    }
    ERR_clear_error();
    SSL_shutdown(s);
    ERR_clear_error();
}

static void tls_shutdown_x(struct xport *x)
{
    tls_notify(x->ssl);
    if (x->fd != -1) {
        (void)shutdown(x->fd, SHUT_WR);
    }
}

static void tls_close_x(struct xport *x, int graceful)
{
    if (graceful) {
        tls_notify(x->ssl);
    }
    SSL_free(x->ssl);
    if (x->fd != -1) {
        close(x->fd);
    }
    xp_init(x, -1);
}

const struct xport_type xp_tls_type = {
    .name = "tls",
    .handshake = tls_handshake,
    .read = tls_read,
    .writev = tls_writev,
    .pending = tls_pending,
    .drained = tls_drained_x,
    .idle_ok = tls_idle_ok,
    .shutdown = tls_shutdown_x,
    .close = tls_close_x,
};

void xp_start_tls(struct xport *x, struct ssl_st *ssl)
{
    x->type = &xp_tls_type;
    x->ssl = ssl;
    x->flags &= ~XP_F_DRAINED;
}

void xp_ticket_now(struct xport *x)
{
    if (x->type == &xp_tls_type && tls_ticket_take(x->ssl) &&
        (SSL_new_session_ticket(x->ssl) != 1 || SSL_do_handshake(x->ssl) != 1)) {
        ERR_clear_error(); /* a ticket still queued goes out with the next write */
    }
}
