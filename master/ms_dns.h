/* dispatcher: backends named by host name ("app.internal:8080"). The master resolves every name
 * the configuration uses with c-ares (/etc/hosts first, then the servers of dns.servers or
 * /etc/resolv.conf), on its own event loop, never blocking it or a worker. Each name is
 * re-resolved at its record's TTL, bounded by dns.min_ttl_ms and resolve_ms; an answer that
 * changes the address set publishes a new generation (ms_compile() expands a name into one
 * backend per address, so the runtime state of an address that stays keeps its slot). A failed
 * resolution keeps the last good addresses and is shown in `show instances`. Master only. */
#ifndef DSP_MS_DNS_H
#define DSP_MS_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct adm_buf;
struct ms_config;

/* Resolve every backend name of <cfg> now, waiting for the answers (at most a few timeouts):
 * for the start and `-t`, before the master serves anything. Returns 0 when each name has an
 * address, else -1 with one "FILE:LINE: ..." line per backend that has none in <*errs> (heap).
 * The answers are kept for ms_dns_addrs(). */
int ms_dns_resolve_all(const struct ms_config *cfg, char **errs);

/* Start resolving on the master's event loop (ms.cfg's names, re-resolved as they expire; the
 * set follows every publish). Returns 0 or -1 (logged). */
int ms_dns_start(void);
void ms_dns_stop(void);

/* The last good addresses of <name> (port 0), sorted; 0 when it never resolved. */
size_t ms_dns_addrs(const char *name, const struct sockaddr_storage **addrs);

/* Has <name> never had an answer, good or bad (a name the served configuration has just started
 * to use)? */
int ms_dns_pending(const char *name);

/* Append ",\"resolve\":[...]" for service <svc> of ms.cfg when it has named backends: each name
 * with its status ("ok", "failed" (last good addresses kept), "pending", "unresolved"), its
 * addresses, the last error and when it resolved last. */
void ms_dns_render_service(struct adm_buf *b, uint32_t svc, const void *arg);

/* Prometheus: dispatcher_backend_name_resolved{service,name} (1: the last resolution answered,
 * 0: it failed or never answered) and dispatcher_backend_name_addresses{service,name} (the
 * addresses served); nothing when no backend is named. */
void ms_dns_render_metrics(struct adm_buf *b, const void *arg);

#endif
