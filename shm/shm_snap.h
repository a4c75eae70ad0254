/* dispatcher: typed read access to a snapshot segment (any role). Pure inline accessors over the
 * offsets in shm_snap_hdr; validation of a freshly mapped segment is shm_snap_check(). */
#ifndef DSP_SHM_SNAP_H
#define DSP_SHM_SNAP_H

#include <stddef.h>

#include "shm/shm_types.h"

static inline const char *shm_s(const struct shm_snap_hdr *h, struct shm_str s)
{
    return (const char *)h + s.off;
}

static inline const struct shm_service *shm_services(const struct shm_snap_hdr *h)
{
    return (const struct shm_service *)(const void *)((const char *)h + h->services_off);
}

static inline const struct shm_backend *shm_backends(const struct shm_snap_hdr *h)
{
    return (const struct shm_backend *)(const void *)((const char *)h + h->backends_off);
}

static inline const struct shm_route *shm_routes(const struct shm_snap_hdr *h)
{
    return (const struct shm_route *)(const void *)((const char *)h + h->routes_off);
}

static inline const struct shm_listener *shm_listeners(const struct shm_snap_hdr *h)
{
    return (const struct shm_listener *)(const void *)((const char *)h + h->listeners_off);
}

static inline const struct shm_cidr *shm_trusted(const struct shm_snap_hdr *h)
{
    return (const struct shm_cidr *)(const void *)((const char *)h + h->trusted_off);
}

static inline const struct shm_cert *shm_certs(const struct shm_snap_hdr *h)
{
    return (const struct shm_cert *)(const void *)((const char *)h + h->certs_off);
}

static inline const struct shm_str *shm_cert_names(const struct shm_snap_hdr *h)
{
    return (const struct shm_str *)(const void *)((const char *)h + h->cert_names_off);
}

static inline const struct shm_error_page *shm_error_pages(const struct shm_snap_hdr *h)
{
    return (const struct shm_error_page *)(const void *)((const char *)h + h->error_pages_off);
}

/* The entries of route <r>'s weighted split (r->nsplit of them; none when 0). */
static inline const struct shm_split *shm_route_split(const struct shm_snap_hdr *h,
                                                      const struct shm_route *r)
{
    return (const struct shm_split *)(const void *)((const char *)h + h->splits_off) +
           r->split_first;
}

/* Check that a mapped segment of <size> bytes is a well-formed snapshot: magic, version, and
 * every table and string inside the segment. Returns 0 or -1. Any role. */
int shm_snap_check(const struct shm_snap_hdr *h, size_t size);

#endif
