/* dispatcher: the master's share of TLS: loading and checking certificates (at -t, start and
 * reload), the self-signed fallback certificate, and the session ticket keys shared with the
 * workers through the control segment. Master only (and unit tests). */
#ifndef DSP_MS_TLS_H
#define DSP_MS_TLS_H

#include <stddef.h>
#include <stdint.h>

struct ms_cert;
struct ms_config;
struct shm_ctl;
struct shm_tkeys;

/* Load every tls.certificates entry of <cfg> (ms_tls_load_cert) and attach the self-signed
 * certificate for cfg->tls.self_signed_cn (generated once per CN and process, then reused, so a
 * reload keeps it and tickets stay valid). Expired certificates are logged as warnings and still
 * served. Returns 0, or -1 with every problem as "FILE:LINE: message" lines in <*errs> (heap;
 * caller frees). */
int ms_tls_prepare(struct ms_config *cfg, char **errs);

/* Read and check one certificate: from <ct>->cert and <ct>->key (files) when set, else from the
 * PEM text already in <ct>->cert_pem / <ct>->key_pem. Fills cert_pem (normalised: leaf, then
 * chain), key_pem (PKCS#8), names, subject, not_after and expired (against <now>, unix seconds),
 * and proves that a server context with <min_version> accepts the pair. Returns 0, or -1 with
 * the reason in <err> (<ct> unchanged). */
int ms_tls_load_cert(struct ms_cert *ct, int min_version, int64_t now, char *err, size_t errlen);

/* The host names a PEM certificate serves: its SAN DNS names, or when it has none, its (last)
 * CN; lower-cased, trailing dot removed, invalid ones and duplicates dropped. Returns the count
 * and a heap array of heap strings in <*names> (NULL when 0), or -1 when <pem> holds no
 * certificate. */
int ms_tls_pem_names(const char *pem, size_t len, char ***names);

/* Generate a self-signed EC P-256 certificate for <cn> (SAN DNS:<cn> when it is a host name),
 * valid from an hour ago for a year. PEM texts in <*cert_pem> and <*key_pem> (heap; zero the
 * key before freeing it). Returns 0 or -1 with the reason in <err>. Nothing touches the disk. */
int ms_tls_self_signed(const char *cn, char **cert_pem, char **key_pem, char *err, size_t errlen);

/* Read a CA bundle (PEM, at least one certificate) into <*pem> (heap). Returns 0 or -1 with the
 * reason in <err>. */
int ms_tls_read_ca(const char *path, char **pem, char *err, size_t errlen);

/* Fill the first ticket key into <ctl> (before the workers are forked) and register the
 * rotation tick with the master loop. Returns 0 or -1 (logged). */
int ms_tls_tickets_start(struct shm_ctl *ctl);

/* Rotate <ring> for monotonic second <now>: when the encrypting key's period is over (or there
 * is none), a fresh random key takes a free slot and becomes current; keys whose decrypt window
 * is over are zeroed. Returns the number of slots changed. Exposed for the unit tests. */
int ms_tls_tickets_rotate(struct shm_tkeys *ring, uint64_t now);

/* Free the cached self-signed certificate (zeroing its key). At exit. */
void ms_tls_cleanup(void);

#endif
