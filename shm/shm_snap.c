/* dispatcher: validation of a mapped snapshot before any role trusts its offsets. Everything is
 * checked in 64-bit arithmetic against the mapping size, and nothing is read before the bytes
 * holding it are known to be inside the segment, so garbage fails cleanly instead of faulting. */
#include "shm/shm_snap.h"

#include <stdint.h>

#include "shm/shm_mw.h"
#include "shm/shm_ridx.h"
#include "shm/shm_types.h"

struct snap_bounds {
    const char *base;
    uint64_t size;
    uint64_t str_lo; /* the string blob: [str_lo, str_hi) */
    uint64_t str_hi;
};

/* A table of <count> elements of <elsz> bytes at <off>: aligned, after the header and inside. */
static int table_ok(const struct snap_bounds *sb, uint32_t off, uint32_t count, size_t elsz)
{
    if (off % 8 != 0 || off > sb->size) {
        return 0;
    }
    if (count == 0) {
        return 1;
    }
    return off >= sizeof(struct shm_snap_hdr) && (uint64_t)off + (uint64_t)count * elsz <= sb->size;
}

/* A string lies inside the blob and is followed by its NUL. */
static int str_ok(const struct snap_bounds *sb, struct shm_str s)
{
    uint64_t end = (uint64_t)s.off + s.len;

    return s.off >= sb->str_lo && end < sb->str_hi && sb->base[end] == '\0';
}

/* A key slice (wildcard suffixes are the tail of a host string) lies inside the blob. */
static int bytes_ok(const struct snap_bounds *sb, uint32_t off, uint32_t len)
{
    return off >= sb->str_lo && (uint64_t)off + len <= sb->str_hi;
}

static int pow2_or_zero(uint32_t n)
{
    return (n & (n - 1)) == 0;
}

const size_t shm_ridx_elsz[SHM_RIDX_NTABLES] = {
    [SHM_RIDX_META] = sizeof(struct shm_ridx_meta),
    [SHM_RIDX_GROUPS] = sizeof(struct shm_ridx_group),
    [SHM_RIDX_GROUP_BUCKETS] = sizeof(uint32_t),
    [SHM_RIDX_PLENS] = sizeof(uint32_t),
    [SHM_RIDX_PATHS] = sizeof(struct shm_ridx_path),
    [SHM_RIDX_PATH_BUCKETS] = sizeof(uint32_t),
    [SHM_RIDX_LIST] = sizeof(uint32_t),
};

static int ridx_ok(const struct shm_snap_hdr *h, const struct snap_bounds *sb)
{
    const size_t *elsz = shm_ridx_elsz;
    const uint32_t *count = h->ridx.count;
    const struct shm_ridx_meta *meta;
    const struct shm_ridx_group *gr;
    const struct shm_ridx_path *pa;
    const uint32_t *u;

    for (int t = 0; t < SHM_RIDX_NTABLES; t++) {
        if (!table_ok(sb, h->ridx.off[t], count[t], elsz[t])) {
            return 0;
        }
    }
    if (count[SHM_RIDX_META] == 0) {
        /* No index: lookups find nothing, which is only right when there is nothing to find. */
        return h->nroutes == 0;
    }
    if (!pow2_or_zero(count[SHM_RIDX_GROUP_BUCKETS]) ||
        !pow2_or_zero(count[SHM_RIDX_PATH_BUCKETS])) {
        return 0;
    }
    meta = (const void *)(sb->base + h->ridx.off[SHM_RIDX_META]);
    if (meta->any_group != SHM_NONE && meta->any_group >= count[SHM_RIDX_GROUPS]) {
        return 0;
    }
    gr = (const void *)(sb->base + h->ridx.off[SHM_RIDX_GROUPS]);
    for (uint32_t i = 0; i < count[SHM_RIDX_GROUPS]; i++) {
        if (gr[i].kind > SHM_HOST_EXACT || !bytes_ok(sb, gr[i].key_off, gr[i].key_len) ||
            (uint64_t)gr[i].plens_first + gr[i].nplens > count[SHM_RIDX_PLENS]) {
            return 0;
        }
    }
    u = (const void *)(sb->base + h->ridx.off[SHM_RIDX_GROUP_BUCKETS]);
    for (uint32_t i = 0; i < count[SHM_RIDX_GROUP_BUCKETS]; i++) {
        if (u[i] != SHM_NONE && u[i] >= count[SHM_RIDX_GROUPS]) {
            return 0;
        }
    }
    pa = (const void *)(sb->base + h->ridx.off[SHM_RIDX_PATHS]);
    for (uint32_t i = 0; i < count[SHM_RIDX_PATHS]; i++) {
        if (pa[i].group >= count[SHM_RIDX_GROUPS] || !bytes_ok(sb, pa[i].key_off, pa[i].key_len) ||
            (uint64_t)pa[i].list_first + pa[i].nlist > count[SHM_RIDX_LIST]) {
            return 0;
        }
    }
    u = (const void *)(sb->base + h->ridx.off[SHM_RIDX_PATH_BUCKETS]);
    for (uint32_t i = 0; i < count[SHM_RIDX_PATH_BUCKETS]; i++) {
        if (u[i] != SHM_NONE && u[i] >= count[SHM_RIDX_PATHS]) {
            return 0;
        }
    }
    u = (const void *)(sb->base + h->ridx.off[SHM_RIDX_LIST]);
    for (uint32_t i = 0; i < count[SHM_RIDX_LIST]; i++) {
        if (u[i] >= h->nroutes) {
            return 0;
        }
    }
    return 1;
}

/* The certificate table: its strings, its slices of the name table, at most one default. Called
 * once both tables are known to lie inside the segment. */
static int certs_ok(const struct shm_snap_hdr *h, const struct snap_bounds *sb)
{
    const struct shm_cert *ct = shm_certs(h);
    const struct shm_str *names = shm_cert_names(h);
    uint32_t ndefault = 0;

    if (h->ncerts > 0 && h->tls_min_version != 0x0303 && h->tls_min_version != 0x0304) {
        return 0;
    }
    for (uint32_t i = 0; i < h->ncert_names; i++) {
        if (!str_ok(sb, names[i])) {
            return 0;
        }
    }
    for (uint32_t i = 0; i < h->ncerts; i++) {
        if (!str_ok(sb, ct[i].cert_pem) || !str_ok(sb, ct[i].key_pem) ||
            !str_ok(sb, ct[i].subject) || !str_ok(sb, ct[i].path) || ct[i].cert_pem.len == 0 ||
            ct[i].key_pem.len == 0 || (uint64_t)ct[i].names_first + ct[i].nnames > h->ncert_names ||
            (ct[i].flags &
             ~(uint32_t)(SHM_CERT_F_DEFAULT | SHM_CERT_F_SELF_SIGNED | SHM_CERT_F_EXPIRED)) != 0) {
            return 0;
        }
        ndefault += (ct[i].flags & SHM_CERT_F_DEFAULT) != 0;
    }
    return ndefault <= 1;
}

int shm_snap_check(const struct shm_snap_hdr *h, size_t size)
{
    struct snap_bounds sb;
    const struct shm_listener *ls;
    const struct shm_service *sv;
    const struct shm_backend *be;
    const struct shm_route *rt;

    if (h == NULL || size < sizeof(*h) || ((uintptr_t)h & 7u) != 0) {
        return -1;
    }
    if (h->magic != SHM_SNAP_MAGIC || h->version != SHM_SNAP_VERSION || h->size != size) {
        return -1;
    }
    sb.base = (const char *)h;
    sb.size = size;
    sb.str_lo = h->strings_off;
    sb.str_hi = (uint64_t)h->strings_off + h->strings_len;
    if (sb.str_lo < sizeof(*h) || sb.str_hi > sb.size) {
        return -1;
    }
    if (!table_ok(&sb, h->listeners_off, h->nlisteners, sizeof(struct shm_listener)) ||
        !table_ok(&sb, h->trusted_off, h->ntrusted, sizeof(struct shm_cidr)) ||
        !table_ok(&sb, h->services_off, h->nservices, sizeof(struct shm_service)) ||
        !table_ok(&sb, h->backends_off, h->nbackends, sizeof(struct shm_backend)) ||
        !table_ok(&sb, h->routes_off, h->nroutes, sizeof(struct shm_route))) {
        return -1;
    }
    if (!table_ok(&sb, h->certs_off, h->ncerts, sizeof(struct shm_cert)) ||
        !table_ok(&sb, h->cert_names_off, h->ncert_names, sizeof(struct shm_str)) ||
        !certs_ok(h, &sb)) {
        return -1;
    }
    if (!table_ok(&sb, h->error_pages_off, h->nerror_pages, sizeof(struct shm_error_page)) ||
        !table_ok(&sb, h->splits_off, h->nsplits, sizeof(struct shm_split))) {
        return -1;
    }
    for (uint32_t i = 0; i < h->nerror_pages; i++) {
        const struct shm_error_page *pg = &shm_error_pages(h)[i];
        if (!str_ok(&sb, pg->body) || pg->status < 400 || pg->status > 599) {
            return -1;
        }
    }
    if (!str_ok(&sb, h->config_path) || !str_ok(&sb, h->self_signed_cn) ||
        !str_ok(&sb, h->access_log)) {
        return -1;
    }

    ls = shm_listeners(h);
    for (uint32_t i = 0; i < h->nlisteners; i++) {
        if (!str_ok(&sb, ls[i].address)) {
            return -1;
        }
    }
    sv = shm_services(h);
    for (uint32_t i = 0; i < h->nservices; i++) {
        if (!str_ok(&sb, sv[i].name) || !str_ok(&sb, sv[i].health_path) ||
            !str_ok(&sb, sv[i].tls_sni) || !str_ok(&sb, sv[i].tls_ca_pem) ||
            (uint64_t)sv[i].backends_first + sv[i].nbackends > h->nbackends ||
            sv[i].balance > SHM_BALANCE_IPHASH) {
            return -1;
        }
    }
    be = shm_backends(h);
    for (uint32_t i = 0; i < h->nbackends; i++) {
        if (!str_ok(&sb, be[i].address) || be[i].service >= h->nservices) {
            return -1;
        }
    }
    rt = shm_routes(h);
    for (uint32_t i = 0; i < h->nroutes; i++) {
        if (!str_ok(&sb, rt[i].host) || !str_ok(&sb, rt[i].path) || rt[i].service >= h->nservices ||
            rt[i].host_kind > SHM_HOST_EXACT ||
            (uint64_t)rt[i].split_first + rt[i].nsplit > h->nsplits) {
            return -1;
        }
    }
    for (uint32_t i = 0; i < h->nsplits; i++) {
        const struct shm_split *sp =
            (const struct shm_split *)(const void *)(sb.base + h->splits_off) + i;
        if (sp->service >= h->nservices || !str_ok(&sb, sp->cookie)) {
            return -1;
        }
    }
    if (shm_mw_check(h, size) != 0) {
        return -1;
    }
    return ridx_ok(h, &sb) ? 0 : -1;
}
