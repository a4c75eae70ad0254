/* dispatcher: OpenSSL glue shared by the master (which validates certificates by building the very
 * contexts the workers will build) and the workers. No OpenSSL header is included here: callers
 * that only pass contexts around see opaque structs. */
#ifndef DSP_TLS_H
#define DSP_TLS_H

#include <stddef.h>
#include <stdint.h>

struct ssl_ctx_st;
struct ssl_st;

/* Session tickets: a ticket key encrypts new tickets for TLS_TICKET_ENC_S seconds and is accepted
 * for TLS_TICKET_DEC_S seconds after that; tickets are announced with a lifetime no longer than
 * the decrypt window, so every ticket a client holds can still be opened. */
#define TLS_TICKET_ENC_S 3600u
#define TLS_TICKET_DEC_S 7200u

/* Protocol versions as in the config (ms_config.tls.min_version). */
#define TLS_V12 0x0303
#define TLS_V13 0x0304

/* Longest host name a certificate or SNI may carry (DNS limit). */
#define TLS_MAX_NAME 253

/* A server context with the project's defaults: <min_version> (TLS_V12 or TLS_V13), ECDHE+AEAD
 * suites for 1.2, the 1.3 suites, groups X25519 and P-256, server preference, no compression, no
 * renegotiation, ALPN http/1.1, partial writes, ticket-only resumption (no per-process session
 * cache; TLS 1.3 tickets only when the caller asks with SSL_new_session_ticket()). The certificate
 * comes from <cert_pem> (leaf first, then its chain) and the key from <key_pem>; both are checked
 * to belong together. Returns the context (caller frees with SSL_CTX_free) or NULL with a reason in
 * <err>. Any role. */
struct ssl_ctx_st *tls_server_ctx_new(const char *cert_pem, size_t cert_len, const char *key_pem,
                                      size_t key_len, int min_version, char *err, size_t errlen);

/* A client context for connections to backends: TLS 1.2+, the same suites and groups, ALPN
 * http/1.1. With <verify>, peers must present a chain to one of the PEM certificates in <ca_pem>
 * (<ca_len> 0: the system store). Returns the context or NULL with a reason in <err>. */
struct ssl_ctx_st *tls_client_ctx_new(int verify, const char *ca_pem, size_t ca_len, char *err,
                                      size_t errlen);

/* Give <ctx> (a client context: the certificate it presents when asked) the certificate chain
 * <cert_pem> (leaf first) and the key <key_pem>, checked to belong together. Returns 0, or -1
 * with a reason in <err>. */
int tls_ctx_use_pem(struct ssl_ctx_st *ctx, const char *cert_pem, size_t cert_len,
                    const char *key_pem, size_t key_len, char *err, size_t errlen);

/* A client SSL on connected (or connecting) socket <fd>, from <ctx>: sends SNI <sni> (NULL:
 * none); with <verify>, the peer's certificate must name <sni>, or without one, the address
 * <ip> (<iplen> 4 or 16 bytes). Returns the SSL (for xp_start_tls() of common/xport.h, or
 * SSL_free) or NULL with the reason in <err>. */
struct ssl_st *tls_client_conn(struct ssl_ctx_st *ctx, int fd, const char *sni, int verify,
                               const uint8_t *ip, size_t iplen, char *err, size_t errlen);
/* Attach socket <fd> to <s> for reading and writing (send() with MSG_NOSIGNAL; the socket is
 * never closed by OpenSSL). Returns 0, or -1 when out of memory. */
int tls_set_socket(struct ssl_st *s, int fd);
/* After a read on <s> returned data: did that read empty both the socket and OpenSSL's buffers,
 * so that an edge-triggered reader may wait for the next edge? */
int tls_drained(const struct ssl_st *s);
/* TCP_CORK on the socket of <s> on or off (no system call when it already is): while on, the
 * kernel sends only full segments, so records written one after the other (a ticket, a response,
 * close_notify) leave together; turning it off or closing the socket sends what is held. */
void tls_cork(struct ssl_st *s, int on);
/* A per-connection note that a TLS 1.3 session ticket is still to be sent; take returns it
 * (1 or 0) and clears it. */
void tls_ticket_defer(struct ssl_st *s);
int tls_ticket_take(struct ssl_st *s);
/* Free a context (connections made from it keep it alive). NULL is fine. */
void tls_ctx_free(struct ssl_ctx_st *ctx);

/* Take OpenSSL's queued errors (oldest first) as one "; "-joined line into <buf>, emptying the
 * queue. <buf> is "" when nothing was queued. Returns <buf>. */
char *tls_errors(char *buf, size_t len);

/* Is <name> a host name a certificate may serve: lower-case labels of [a-z0-9_-], optionally
 * behind one leading "*." (a wildcard covers exactly one label)? */
int tls_name_ok(const char *name);

/* Lower-case <in> (an SNI value or Host), drop one trailing dot, into <out> (TLS_MAX_NAME + 1
 * bytes at least). Returns the length, or 0 when it is empty or too long. */
size_t tls_name_norm(const char *in, size_t len, char *out);

/* The pem_password_cb of every PEM read: keys must never ask for a passphrase (there is no
 * terminal in a worker, and the master would block on one at reload). Fails every call. */
int tls_no_passphrase(char *buf, int size, int rwflag, void *u);

#endif
