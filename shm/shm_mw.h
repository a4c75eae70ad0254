/* dispatcher: middlewares in the snapshot (ABI). The master compiles `middlewares = (...)` and
 * each route's `middlewares = [...]` into one self-contained region of the snapshot
 * (shm_snap_hdr.mw_off, mw_len): a header, the middleware table, each type's parameter block and
 * the route lists, with every offset relative to the region's start (so the region is built on
 * its own and copied in whole). Strings in it are struct shm_str relative to the region, each
 * followed by a NUL. A route's list is [count, id, id, ...] (uint32, ids index the table);
 * shm_route.mw_list is its offset, 0 for a route without middlewares (the region's header is
 * never a list). No pointers, like the rest of the snapshot. */
#ifndef DSP_SHM_MW_H
#define DSP_SHM_MW_H

#include <stddef.h>
#include <stdint.h>

#include "shm/shm_types.h"

/* Middleware types. A new type takes the next number, a row in master/ms_mw.c's type table
 * (parse and compile) and one in worker/wk_mw.c's hook table. */
#define SHM_MW_HEADERS        1u
#define SHM_MW_STATIC         2u
#define SHM_MW_IP_ALLOW       3u
#define SHM_MW_REDIRECT_HTTPS 4u
#define SHM_MW_STRIP_PREFIX   5u
#define SHM_MW_MAX_BODY       6u
#define SHM_MW_CORS           7u
#define SHM_MW_RATE_LIMIT     8u
#define SHM_MW_BASIC_AUTH     9u
#define SHM_MW_FORWARD_AUTH   10u
#define SHM_MW_COMPRESS       11u
#define SHM_MW_NTYPES         16u /* type numbers are below this */

/* The most middlewares one route may name (the chain's position fits a byte). */
#define SHM_MW_MAX_CHAIN 32u

struct shm_mw_region {
    uint32_t magic; /* SHM_MW_MAGIC */
    uint32_t nmw;   /* middlewares in the table */
    uint32_t mws_off;
    uint32_t size; /* bytes in the region */
    uint32_t reserved[4];
};

#define SHM_MW_MAGIC 0x574d5344u /* "DSMW" */

struct shm_mw {
    struct shm_str name; /* the stable id: metrics and the access log name it */
    uint32_t type;       /* SHM_MW_* */
    uint32_t rt_slot;    /* index into shm_rt.mws, assigned at publish */
    uint32_t params_off; /* the type's parameter block (8-byte aligned) */
    uint32_t params_len;
    uint32_t source; /* SHM_SOURCE_FILE or SHM_SOURCE_REDIS */
    uint32_t line;   /* config line (0 from Redis) */
    uint32_t reserved[2];
};

/* ---- parameter blocks of the built-in types (each type reads only its own) ---------------- */

/* A list of strings: <n> struct shm_str at <off> (region-relative). */
struct shm_mw_list {
    uint32_t off;
    uint32_t n;
};

/* headers: each edit is "Name" (remove) or a name/value pair (set: replaces every field of that
 * name, or adds it). Lists of names and values of the same length for the set lists. */
struct shm_mw_headers {
    struct shm_mw_list req_set_names, req_set_values;
    struct shm_mw_list req_remove;
    struct shm_mw_list resp_set_names, resp_set_values;
    struct shm_mw_list resp_remove;
    /* bit (len % 64) set for the length of every name of the request ([0]) and response ([1])
     * lists: most fields are kept after one test */
    uint64_t len_mask[2];
};

struct shm_mw_static {
    uint32_t status;
    uint32_t pad;
    struct shm_str content_type;
    struct shm_str body;
};

/* ip_allow: the CIDR table (struct shm_cidr) at <off>. */
struct shm_mw_ip_allow {
    uint32_t cidrs_off;
    uint32_t ncidrs;
};

struct shm_mw_redirect {
    uint32_t status; /* 301, 302, 303, 307 or 308 */
    uint32_t pad;
};

struct shm_mw_strip {
    struct shm_str prefix; /* "/api": no trailing slash (the master strips one) */
};

struct shm_mw_max_body {
    uint64_t bytes;
};

#define SHM_MW_CORS_CREDENTIALS 1u
#define SHM_MW_CORS_ANY_ORIGIN  2u /* origins has "*" */

struct shm_mw_cors {
    struct shm_mw_list origins;
    struct shm_str methods; /* joined "GET, POST" */
    struct shm_str headers; /* joined "Content-Type, Authorization" */
    uint32_t max_age_s;     /* 0 = no Access-Control-Max-Age */
    uint32_t flags;         /* SHM_MW_CORS_* */
};

/* compress (master/ms_mw_compress.c, worker/wk_mwgz.c). */
#define SHM_MW_GZ_GZIP (1u << 1) /* encodings: the bits are worker/wk_gz.h's WK_GZ_* */
#define SHM_MW_GZ_BR   (1u << 2)
/* Its counters in the runtime segment's shm_rt_mw.type_counters (/metrics): responses
 * compressed with gzip, with brotli, body bytes that went in, compressed bytes that came out. */
#define SHM_MW_GZ_C_GZIP 0
#define SHM_MW_GZ_C_BR   1
#define SHM_MW_GZ_C_IN   2
#define SHM_MW_GZ_C_OUT  3

struct shm_mw_compress {
    uint64_t min_bytes;       /* a smaller Content-Length goes as it is */
    struct shm_mw_list types; /* media type patterns; none: the default list (wk_mwgz.c) */
    uint32_t encodings;       /* SHM_MW_GZ_* */
    uint32_t level;           /* gzip, 1-9 */
    uint32_t br_quality;      /* brotli, 0-11 */
    uint32_t pad;
};

/* ---- access (any role; the region was checked by shm_snap_check()) -------------------------- */
static inline const char *shm_mw_base(const struct shm_snap_hdr *h)
{
    return (const char *)h + h->mw_off;
}

static inline const struct shm_mw_region *shm_mw_region(const struct shm_snap_hdr *h)
{
    return (const struct shm_mw_region *)(const void *)shm_mw_base(h);
}

/* Middlewares in the snapshot (0 when it has none: then mw_off may point anywhere). */
static inline uint32_t shm_mw_count(const struct shm_snap_hdr *h)
{
    return h->mw_len == 0 ? 0 : shm_mw_region(h)->nmw;
}

static inline const struct shm_mw *shm_mws(const struct shm_snap_hdr *h)
{
    return (const struct shm_mw *)(const void *)(shm_mw_base(h) + shm_mw_region(h)->mws_off);
}

static inline const char *shm_mw_s(const struct shm_snap_hdr *h, struct shm_str s)
{
    return shm_mw_base(h) + s.off;
}

static inline const void *shm_mw_params(const struct shm_snap_hdr *h, const struct shm_mw *m)
{
    return shm_mw_base(h) + m->params_off;
}

static inline const struct shm_str *shm_mw_list_at(const struct shm_snap_hdr *h,
                                                   struct shm_mw_list l)
{
    return (const struct shm_str *)(const void *)(shm_mw_base(h) + l.off);
}

/* A route's middleware list: its count in *n, the ids after it (NULL and 0 when none). */
static inline const uint32_t *shm_mw_route_list(const struct shm_snap_hdr *h, uint32_t list,
                                                uint32_t *n)
{
    const uint32_t *l;

    if (list == 0) {
        *n = 0;
        return NULL;
    }
    l = (const uint32_t *)(const void *)(shm_mw_base(h) + list);
    *n = l[0];
    return l + 1;
}

/* The configuration's name of a type ("headers"), or "unknown". */
const char *shm_mw_type_name(uint32_t type);

/* Check the middleware region of snapshot <h> of <size> bytes, once its route table is known to
 * be inside (shm_snap_check() calls it): the region inside the segment, its header, the table,
 * names, parameter blocks inside it, and every route's list inside it naming known ids. 0 or
 * -1. */
int shm_mw_check(const struct shm_snap_hdr *h, uint64_t size);

_Static_assert(sizeof(struct shm_mw) % 8 == 0, "shm_mw alignment");
_Static_assert(sizeof(struct shm_mw_region) % 8 == 0, "shm_mw_region alignment");

#endif
