/* dispatcher: route lookup over a snapshot's route index (SPEC "Routing"). Read-only; any role. */
#ifndef DSP_SHM_ROUTE_H
#define DSP_SHM_ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "shm/shm_types.h"

/* Normalise a Host header value or absolute-form authority into <out>: lower-cased, ":port"
 * removed (IPv6 literals keep their brackets), one trailing dot removed. Returns the length
 * written (0 for an empty or unusable host), never more than <outcap> - 1; <out> is NUL-ended. */
size_t shm_host_normalize(const char *in, size_t len, char *out, size_t outcap);

/* Find the winning route for a request. <host> must be normalised (see above), <path> is the
 * request path (no query string needed, but a query does no harm), <method> is an http-parser
 * enum http_method value. Winner per SPEC: highest priority, then most specific host (exact,
 * longer wildcard, "*"), then longer path, then earlier route. Returns the route index, or
 * SHM_NONE when nothing matches. Costs O(labels in host x distinct path lengths), independent of
 * the number of routes. */
uint32_t shm_route_match(const struct shm_snap_hdr *snap, const char *host, size_t hostlen,
                         const char *path, size_t pathlen, int method);

#endif
