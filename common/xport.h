/* dispatcher: the transport. One interface for plain and TLS stream sockets, shaped for
 * non-blocking sockets under edge-triggered epoll (the workers) and level-triggered epoll (the
 * master's health checker) alike.
 *
 * A struct xport is a few words embedded in its owner (no allocation): the socket, the type (a
 * table of functions, one per kind of transport) and, for TLS, the SSL. Callers go through the
 * xp_*() wrappers below. For plain sockets the wrappers are inline and call the socket directly,
 * so the common case costs exactly the system call it needs and no indirect call; other types go
 * through their table.
 *
 * Every I/O call returns a byte count (> 0), 0 for an orderly EOF (reads), or one of:
 *   XP_WANT_READ   retry once the socket is readable (plain: EAGAIN on a read)
 *   XP_WANT_WRITE  retry once the socket is writable (plain: EAGAIN on a write)
 *   XP_ERR         the connection is unusable; errno says why and xp_error() gives a line for
 *                  logs. TLS never sends close_notify after it.
 * TLS may want the other direction than the call's own (a read that must write a handshake
 * message, a write that waits for a read): the caller retries the same call on that edge.
 *
 * Edge-triggered readers: after a read that returned data, xp_drained() tells whether the
 * socket was left empty, so the reader may stop without the read that would only say EAGAIN;
 * xp_pending() tells whether TLS holds bytes already taken from the socket (read ahead), for
 * which no read edge will ever come: read them before waiting. */
#ifndef DSP_XPORT_H
#define DSP_XPORT_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

struct ssl_st;
struct xport;

#define XP_ERR        (-1)
#define XP_WANT_READ  (-2)
#define XP_WANT_WRITE (-3)

/* xport.flags */
#define XP_F_DRAINED 1u /* the last read that returned data emptied the socket */
#define XP_F_CORKED  2u /* plain: TCP_CORK is on (TLS keeps this in its socket BIO) */

/* A kind of transport. The fields mirror the xp_*() wrappers below. */
struct xport_type {
    const char *name;
    int (*handshake)(struct xport *x);
    ssize_t (*read)(struct xport *x, void *buf, size_t len);
    ssize_t (*writev)(struct xport *x, const struct iovec *iov, int niov, int last);
    int (*pending)(const struct xport *x);
    int (*drained)(const struct xport *x);
    int (*idle_ok)(struct xport *x);
    void (*shutdown)(struct xport *x);
    void (*close)(struct xport *x, int graceful);
};

extern const struct xport_type xp_plain_type;
extern const struct xport_type xp_tls_type;

struct xport {
    const struct xport_type *type;
    int fd;             /* -1: none */
    uint32_t flags;     /* XP_F_* */
    struct ssl_st *ssl; /* TLS only */
};

/* ---- setting up and tearing down ------------------------------------------------------------ */

/* A plain transport on socket <fd> (-1: none yet). */
static inline void xp_init(struct xport *x, int fd)
{
    x->type = &xp_plain_type;
    x->fd = fd;
    x->flags = 0;
    x->ssl = NULL;
}

/* Run TLS over the transport's socket from now on: <ssl> reads and writes it through the socket
 * BIO of common/tls.h (tls_set_socket(), done by tls_client_conn()), and is owned by the
 * transport from here on. The handshake is driven by xp_handshake(). */
void xp_start_tls(struct xport *x, struct ssl_st *ssl);

static inline int xp_is_tls(const struct xport *x)
{
    return x->type == &xp_tls_type;
}

/* End the transport: TLS sends close_notify first when <graceful> and the session is healthy
 * (best effort, never blocks) and frees the SSL; then the socket is closed. The caller removes
 * the socket from its epoll set before (a forked child may share it). The transport is left
 * plain with no socket; calling it again does nothing. */
static inline void xp_close(struct xport *x, int graceful)
{
    x->type->close(x, graceful);
}

/* ---- I/O ------------------------------------------------------------------------------------ */

/* Out of line: the reason for XP_ERR on a plain socket (errno is kept). */
int xp_plain_fail(int err);

/* Drive the handshake: 1 when done (plain: at once), XP_WANT_* or XP_ERR. */
static inline int xp_handshake(struct xport *x)
{
    return x->type == &xp_plain_type ? 1 : x->type->handshake(x);
}

static inline ssize_t xp_plain_read(struct xport *x, void *buf, size_t len)
{
    ssize_t n;

    do {
        n = recv(x->fd, buf, len, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        x->flags = (size_t)n < len ? x->flags | XP_F_DRAINED : x->flags & ~XP_F_DRAINED;
        return n;
    }
    if (n == 0) {
        x->flags |= XP_F_DRAINED;
        return 0;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        x->flags |= XP_F_DRAINED;
        return XP_WANT_READ;
    }
    return xp_plain_fail(errno);
}

/* Read up to <len> (> 0) bytes: the count, 0 at EOF, XP_WANT_* or XP_ERR. */
static inline ssize_t xp_read(struct xport *x, void *buf, size_t len)
{
    return x->type == &xp_plain_type ? xp_plain_read(x, buf, len) : x->type->read(x, buf, len);
}

/* Out of line: TCP_CORK on (best effort). */
void xp_plain_cork(struct xport *x);

static inline ssize_t xp_plain_writev(struct xport *x, const struct iovec *iov, int niov, int last)
{
    ssize_t n;

    if (last && !(x->flags & XP_F_CORKED)) {
        xp_plain_cork(x);
    }
    do {
        if (niov == 1) {
            n = send(x->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else {
            struct msghdr mh = {.msg_iov = (struct iovec *)(uintptr_t)iov,
                                .msg_iovlen = (size_t)niov};
            n = sendmsg(x->fd, &mh, MSG_NOSIGNAL);
        }
    } while (n < 0 && errno == EINTR);
    if (n >= 0) {
        return n;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return XP_WANT_WRITE;
    }
    return xp_plain_fail(errno);
}

/* Write from <iov> (<niov> >= 1): the count of leading bytes written (possibly short), or
 * XP_WANT_* / XP_ERR. Never raises SIGPIPE. <last>: these bytes are the last before the
 * connection closes, so the socket is corked and stays corked: the FIN (and, for TLS, the
 * close_notify) leaves in the same segment when the socket closes.
 * TLS: small pieces are coalesced so that they leave in one record (up to 16 KiB); a TLS 1.3
 * session ticket owed since a server handshake joins the first write. After XP_WANT_*, the next
 * call must offer the same bytes first (more may follow), as OpenSSL requires. */
static inline ssize_t xp_writev(struct xport *x, const struct iovec *iov, int niov, int last)
{
    if (x->type == &xp_plain_type) {
        return xp_plain_writev(x, iov, niov, last);
    }
    return x->type->writev(x, iov, niov, last);
}

/* One buffer: xp_writev() with one piece. */
static inline ssize_t xp_write(struct xport *x, const void *buf, size_t len, int last)
{
    struct iovec iov = {.iov_base = (void *)(uintptr_t)buf, .iov_len = len};

    return xp_writev(x, &iov, 1, last);
}

/* Does the transport hold bytes already taken from the socket and not yet read by the caller
 * (TLS read ahead, a partly delivered record)? No read edge will come for them. Plain: never. */
static inline int xp_pending(const struct xport *x)
{
    return x->type == &xp_plain_type ? 0 : x->type->pending(x);
}

/* After a read that returned data: was the socket left empty (and nothing is pending), so that
 * an edge-triggered reader may wait for the next edge? (A short plain read proves it; for TLS a
 * short read may end a record with the next one queued, and the socket BIO knows.) */
static inline int xp_drained(const struct xport *x)
{
    return x->type == &xp_plain_type ? (x->flags & XP_F_DRAINED) != 0 : x->type->drained(x);
}

/* Is an idle connection (between two exchanges) still clean: nothing arrived, no EOF, no
 * error? One non-blocking look at the socket. TLS consumes post-handshake messages (session
 * tickets) on the way; anything else (data, alert, EOF) means no. */
static inline int xp_idle_ok(struct xport *x)
{
    return x->type->idle_ok(x);
}

/* Half-close: send close_notify (TLS, when the session is healthy) and then the FIN; reading
 * goes on. Best effort, never blocks. */
static inline void xp_shutdown(struct xport *x)
{
    x->type->shutdown(x);
}

/* TLS server: send the TLS 1.3 session ticket still owed since the handshake, if any, for when
 * the connection is about to wait for its client (otherwise the next write takes it along).
 * Plain: nothing. */
void xp_ticket_now(struct xport *x);

/* The reason for the last XP_ERR, for log lines ("" when none). */
const char *xp_error(void);

#endif
