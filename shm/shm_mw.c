/* dispatcher: the middleware region of a snapshot (shm/shm_mw.h): type names and the check of a
 * freshly mapped region before anyone trusts its offsets. */
#include "shm/shm_mw.h"

#include "shm/shm_snap.h"

const char *shm_mw_type_name(uint32_t type)
{
    static const char *const names[SHM_MW_NTYPES] = {
        [SHM_MW_HEADERS] = "headers",
        [SHM_MW_STATIC] = "static",
        [SHM_MW_IP_ALLOW] = "ip_allow",
        [SHM_MW_REDIRECT_HTTPS] = "redirect_https",
        [SHM_MW_STRIP_PREFIX] = "strip_prefix",
        [SHM_MW_MAX_BODY] = "max_body",
        [SHM_MW_CORS] = "cors",
        [SHM_MW_RATE_LIMIT] = "rate_limit",
        [SHM_MW_BASIC_AUTH] = "basic_auth",
        [SHM_MW_FORWARD_AUTH] = "forward_auth",
        [SHM_MW_COMPRESS] = "compress",
    };

    return type < SHM_MW_NTYPES && names[type] != NULL ? names[type] : "unknown";
}

/* [off, off + len) inside a region of <size> bytes. */
static int in_region(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

static int str_in(const char *base, uint64_t size, struct shm_str s)
{
    return in_region(s.off, (uint64_t)s.len + 1, size) && base[s.off + s.len] == '\0';
}

int shm_mw_check(const struct shm_snap_hdr *h, uint64_t size)
{
    const struct shm_mw_region *r;
    const struct shm_mw *m;
    const struct shm_route *rt = shm_routes(h);
    const char *base;
    uint64_t len = h->mw_len;

    if (len == 0) {
        for (uint32_t i = 0; i < h->nroutes; i++) {
            if (rt[i].mw_list != 0) {
                return -1;
            }
        }
        return 0;
    }
    if (h->mw_off % 8 != 0 || h->mw_off < sizeof(*h) || !in_region(h->mw_off, len, size) ||
        len < sizeof(*r)) {
        return -1;
    }
    base = (const char *)h + h->mw_off;
    r = (const struct shm_mw_region *)(const void *)base;
    if (r->magic != SHM_MW_MAGIC || r->size != len || r->mws_off % 8 != 0 ||
        r->mws_off < sizeof(*r) || !in_region(r->mws_off, (uint64_t)r->nmw * sizeof(*m), len)) {
        return -1;
    }
    m = (const struct shm_mw *)(const void *)(base + r->mws_off);
    for (uint32_t i = 0; i < r->nmw; i++) {
        if (!str_in(base, len, m[i].name) || m[i].type == 0 || m[i].type >= SHM_MW_NTYPES ||
            m[i].params_off % 8 != 0 || !in_region(m[i].params_off, m[i].params_len, len)) {
            return -1;
        }
    }
    for (uint32_t i = 0; i < h->nroutes; i++) {
        const uint32_t *l;
        uint32_t n;

        if (rt[i].mw_list == 0) {
            continue;
        }
        if (rt[i].mw_list % 4 != 0 || rt[i].mw_list < sizeof(*r) ||
            !in_region(rt[i].mw_list, 4, len)) {
            return -1;
        }
        l = (const uint32_t *)(const void *)(base + rt[i].mw_list);
        n = l[0];
        if (n == 0 || n > SHM_MW_MAX_CHAIN || !in_region(rt[i].mw_list, 4ull * (n + 1), len)) {
            return -1;
        }
        for (uint32_t k = 1; k <= n; k++) {
            if (l[k] >= r->nmw) {
                return -1;
            }
        }
    }
    return 0;
}
