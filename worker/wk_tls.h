/* dispatcher: TLS in the worker: the per-generation context set (server certificates picked by
 * SNI, client contexts for TLS backends), shared session ticket keys and backend session reuse.
 * The SSLs made here are driven through the transport (common/xport.h) like plain sockets. */
#ifndef DSP_WK_TLS_H
#define DSP_WK_TLS_H

#include <stddef.h>
#include <stdint.h>

struct ssl_st;
struct shm_backend;
struct shm_snap_hdr;
struct wk_tls_gen;
struct wk_sni;

/* Worker start-up: cipher handles and ex-data slots. Returns 0 or -1 (logged). */
int wk_tls_init(void);

/* Build the TLS state of a freshly mapped generation <snap>: one server context per certificate,
 * the SNI index, one client context per TLS service. Contexts whose inputs did not change since
 * <prev> (the generation being replaced, or NULL) are shared rather than rebuilt, so a reload that
 * touches no certificate costs nothing here. A certificate or service whose context cannot be
 * built is logged and left out. Returns the set, or NULL (logged) when memory ran out. */
struct wk_tls_gen *wk_tls_gen_new(const struct shm_snap_hdr *snap, const struct wk_tls_gen *prev);
/* Drop a set. Connections created from its contexts keep them alive (OpenSSL counts refs). */
void wk_tls_gen_free(struct wk_tls_gen *tg);

/* A server-side SSL for socket <fd> accepted on listener <listener>, starting on the default
 * certificate of the current generation; SNI switches it during the handshake. On a listener with
 * client_ca it asks for a client certificate (client_verify). NULL on failure (logged once per
 * burst). */
struct ssl_st *wk_tls_server_new(int fd, uint32_t listener);
/* After the handshake of server-side <s>: the RFC 2253 subject of the client certificate it
 * verified (printable ASCII only), as a heap string, or NULL when none was verified. */
char *wk_tls_client_subject(const struct ssl_st *s);
/* Did the handshake of <s> select ALPN "h2"? (Offered when the listener has http2.) */
int wk_tls_alpn_h2(const struct ssl_st *s);
/* A client-side SSL on socket <fd> to backend <be> of service <svc> (an index in <tg>'s
 * generation): SNI and name or IP verification as the service says, resuming the last session
 * with that backend (kept per runtime slot) when it was made under the same settings. NULL when
 * the service has no TLS context or on failure (reason in wk_tls_error()). */
struct ssl_st *wk_tls_client_new(int fd, const struct wk_tls_gen *tg, uint32_t svc,
                                 const struct shm_backend *be);

/* Did the completed handshake of <s> resume a session? */
int wk_tls_resumed(const struct ssl_st *s);
/* A handshake with a backend failed on <s> (a client-side SSL from wk_tls_client_new()): the
 * session it offered is not offered again. */
void wk_tls_forget(struct ssl_st *s);
/* Did a failed handshake on client-side SSL <s> fail verifying the peer's certificate (chain,
 * name or address), rather than for another reason? */
int wk_tls_verify_failed(const struct ssl_st *s);
/* Why the last wk_tls_client_new() failed, for log lines. */
const char *wk_tls_error(void);

/* ---- the SNI index (pure; exposed for unit tests) -------------------------------------------
 * Maps exact names and "*.parent" wildcards to certificate numbers. Lookup tries the exact name,
 * then the wildcard for its parent (a wildcard covers one label, as clients check it). Names are
 * borrowed: they must outlive the index. */
struct wk_sni *wk_sni_new(uint32_t nnames);
/* Add <name> (lower case) for certificate <cert>. The first certificate to claim a name keeps it,
 * except that a valid certificate takes a name over from an <expired> one. */
void wk_sni_add(struct wk_sni *x, const char *name, size_t len, uint32_t cert, int expired);
/* The certificate for normalised host <name>, or UINT32_MAX. */
uint32_t wk_sni_find(const struct wk_sni *x, const char *name, size_t len);
void wk_sni_free(struct wk_sni *x);

#endif
