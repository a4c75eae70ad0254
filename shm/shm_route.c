/* dispatcher: host normalisation and route lookup over the index that master/ms_compile.c puts in
 * each snapshot (layout and design in shm/shm_ridx.h). Reads only, allocates nothing, and bounds
 * every probe so that even a damaged index cannot make it loop. */
#include "shm/shm_route.h"

#include <string.h>

#include "shm/shm_ridx.h"
#include "shm/shm_snap.h"

/* Path prefix hashes are computed once per lookup and shared by every host group; prefixes
 * longer than this are rare and hashed on demand. */
#define PREFIX_CACHE 256

size_t shm_host_normalize(const char *in, size_t len, char *out, size_t outcap)
{
    size_t end, n;

    if (outcap == 0) {
        return 0;
    }
    out[0] = '\0';
    if (in == NULL) {
        return 0;
    }
    /* Header values reach us with optional whitespace around them. */
    while (len > 0 && (in[0] == ' ' || in[0] == '\t')) {
        in++;
        len--;
    }
    while (len > 0 && (in[len - 1] == ' ' || in[len - 1] == '\t')) {
        len--;
    }
    if (len > 0 && in[0] == '[') {
        /* IPv6 literal: the port, if any, follows the bracket; the colons inside are the
         * address. */
        const char *rb = memchr(in, ']', len);

        if (rb == NULL) {
            return 0;
        }
        end = (size_t)(rb - in) + 1;
    } else {
        const char *colon = memchr(in, ':', len);

        end = colon != NULL ? (size_t)(colon - in) : len;
    }
    /* "example.com." names the same host as "example.com". */
    if (end > 0 && in[end - 1] == '.') {
        end--;
    }
    if (end == 0 || end >= outcap) {
        return 0;
    }
    for (n = 0; n < end; n++) {
        unsigned char c = (unsigned char)in[n];

        out[n] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    }
    out[n] = '\0';
    return n;
}

/* The index of one snapshot, resolved once per lookup. */
struct ridx_view {
    const struct shm_snap_hdr *snap;
    const struct shm_route *routes;
    uint32_t nroutes;
    const struct shm_ridx_group *groups;
    uint32_t ngroups;
    const uint32_t *gbuckets;
    uint32_t ngbuckets;
    const uint32_t *plens;
    uint32_t nplens;
    const struct shm_ridx_path *paths;
    uint32_t npaths;
    const uint32_t *pbuckets;
    uint32_t npbuckets;
    const uint32_t *list;
    uint32_t nlist;
};

struct prefix_cache {
    const char *path;
    size_t pathlen;
    size_t n; /* h[0..n] are valid */
    uint32_t h[PREFIX_CACHE + 1];
};

/* The best route so far and the key it won with. Host specificity: 0 for "*", suffix length + 1
 * for a wildcard, UINT64_MAX for an exact host. */
struct best {
    uint32_t route;
    int32_t prio;
    uint64_t spec;
    size_t plen;
    uint32_t order;
};

static const void *tab(const struct shm_snap_hdr *h, int t)
{
    return (const char *)h + h->ridx.off[t];
}

static uint32_t prefix_hash(struct prefix_cache *c, size_t len)
{
    uint32_t h;
    size_t i;

    if (len <= PREFIX_CACHE) {
        while (c->n < len) {
            c->h[c->n + 1] = shm_ridx_fnv_step(c->h[c->n], (unsigned char)c->path[c->n]);
            c->n++;
        }
        return c->h[len];
    }
    for (i = c->n, h = c->h[c->n]; i < len; i++) {
        h = shm_ridx_fnv_step(h, (unsigned char)c->path[i]);
    }
    return h;
}

static int method_ok(uint64_t mask, int method)
{
    return mask == 0 || (method >= 0 && method < 64 && ((mask >> method) & 1u) != 0);
}

static uint32_t find_group(const struct ridx_view *v, const char *key, size_t len, uint32_t kind,
                           uint32_t rfnv)
{
    uint32_t h = shm_ridx_host_hash(rfnv, kind);
    uint32_t mask = v->ngbuckets - 1;

    if (v->ngbuckets == 0) {
        return SHM_NONE;
    }
    for (uint32_t i = h & mask, probes = 0; probes < v->ngbuckets; i = (i + 1) & mask, probes++) {
        uint32_t g = v->gbuckets[i];
        const struct shm_ridx_group *gr;

        if (g == SHM_NONE || g >= v->ngroups) {
            return SHM_NONE;
        }
        gr = &v->groups[g];
        if (gr->hash == h && gr->kind == kind && gr->key_len == len &&
            memcmp((const char *)v->snap + gr->key_off, key, len) == 0) {
            return g;
        }
    }
    return SHM_NONE;
}

static const struct shm_ridx_path *find_path(const struct ridx_view *v, uint32_t group,
                                             const char *path, size_t len, uint32_t fnv)
{
    uint32_t h = shm_ridx_path_hash(fnv, group);
    uint32_t mask = v->npbuckets - 1;

    if (v->npbuckets == 0) {
        return NULL;
    }
    for (uint32_t i = h & mask, probes = 0; probes < v->npbuckets; i = (i + 1) & mask, probes++) {
        uint32_t p = v->pbuckets[i];
        const struct shm_ridx_path *pe;

        if (p == SHM_NONE || p >= v->npaths) {
            return NULL;
        }
        pe = &v->paths[p];
        if (pe->hash == h && pe->group == group && pe->key_len == len &&
            memcmp((const char *)v->snap + pe->key_off, path, len) == 0) {
            return pe;
        }
    }
    return NULL;
}

static int better(const struct best *b, int32_t prio, uint64_t spec, size_t plen, uint32_t order)
{
    if (b->route == SHM_NONE || prio != b->prio) {
        return b->route == SHM_NONE || prio > b->prio;
    }
    if (spec != b->spec) {
        return spec > b->spec;
    }
    if (plen != b->plen) {
        return plen > b->plen;
    }
    return order < b->order;
}

/* Offer group <g>'s best route for this request to <b>. */
static void try_group(const struct ridx_view *v, uint32_t g, uint64_t spec, struct prefix_cache *pc,
                      int method, struct best *b)
{
    const struct shm_ridx_group *gr = &v->groups[g];

    /* Only a strictly higher priority lets a group beat what is already found in another. */
    if (b->route != SHM_NONE && gr->max_prio < b->prio) {
        return;
    }
    for (uint32_t k = 0; k < gr->nplens; k++) {
        uint32_t len = v->plens[gr->plens_first + k];
        const struct shm_ridx_path *pe;

        if (len > pc->pathlen) {
            continue;
        }
        pe = find_path(v, g, pc->path, len, prefix_hash(pc, len));
        if (pe == NULL) {
            continue;
        }
        /* The list is sorted by (priority desc, order asc): its first route that takes this
         * method is the entry's best. */
        for (uint32_t i = 0; i < pe->nlist; i++) {
            uint32_t r = v->list[pe->list_first + i];
            const struct shm_route *rt;

            if (r >= v->nroutes) {
                break;
            }
            rt = &v->routes[r];
            if (!method_ok(rt->methods, method)) {
                continue;
            }
            if (better(b, rt->priority, spec, len, rt->order)) {
                b->route = r;
                b->prio = rt->priority;
                b->spec = spec;
                b->plen = len;
                b->order = rt->order;
            }
            /* Shorter paths of this group lose to a route that already has its top priority. */
            if (rt->priority >= gr->max_prio) {
                return;
            }
            break;
        }
    }
}

uint32_t shm_route_match(const struct shm_snap_hdr *snap, const char *host, size_t hostlen,
                         const char *path, size_t pathlen, int method)
{
    const struct shm_ridx_meta *meta;
    struct ridx_view v;
    struct prefix_cache pc;
    struct best b;
    uint32_t h, g;

    if (snap->ridx.count[SHM_RIDX_META] == 0) {
        return SHM_NONE;
    }
    meta = tab(snap, SHM_RIDX_META);
    v.snap = snap;
    v.routes = shm_routes(snap);
    v.nroutes = snap->nroutes;
    v.groups = tab(snap, SHM_RIDX_GROUPS);
    v.ngroups = snap->ridx.count[SHM_RIDX_GROUPS];
    v.gbuckets = tab(snap, SHM_RIDX_GROUP_BUCKETS);
    v.ngbuckets = snap->ridx.count[SHM_RIDX_GROUP_BUCKETS];
    v.plens = tab(snap, SHM_RIDX_PLENS);
    v.nplens = snap->ridx.count[SHM_RIDX_PLENS];
    v.paths = tab(snap, SHM_RIDX_PATHS);
    v.npaths = snap->ridx.count[SHM_RIDX_PATHS];
    v.pbuckets = tab(snap, SHM_RIDX_PATH_BUCKETS);
    v.npbuckets = snap->ridx.count[SHM_RIDX_PATH_BUCKETS];
    v.list = tab(snap, SHM_RIDX_LIST);
    v.nlist = snap->ridx.count[SHM_RIDX_LIST];

    if (path == NULL) {
        pathlen = 0;
    }
    if (host == NULL) {
        hostlen = 0;
    }
    pc.path = path;
    pc.pathlen = pathlen;
    pc.n = 0;
    pc.h[0] = SHM_RIDX_FNV_BASIS;
    b.route = SHM_NONE;
    b.prio = 0;
    b.spec = 0;
    b.plen = 0;
    b.order = 0;

    /* Right to left: at each '.' with a label before it, the hash so far is that of the suffix
     * after the dot, i.e. the key of the "*.suffix" routes that match. The full host last. */
    h = SHM_RIDX_FNV_BASIS;
    for (size_t j = hostlen; j-- > 0;) {
        if (host[j] == '.' && j > 0) {
            g = find_group(&v, host + j + 1, hostlen - j - 1, SHM_HOST_WILDCARD, h);
            if (g != SHM_NONE) {
                try_group(&v, g, (uint64_t)(hostlen - j), &pc, method, &b);
            }
        }
        h = shm_ridx_fnv_step(h, (unsigned char)host[j]);
    }
    g = find_group(&v, host, hostlen, SHM_HOST_EXACT, h);
    if (g != SHM_NONE) {
        try_group(&v, g, UINT64_MAX, &pc, method, &b);
    }
    if (meta->any_group < v.ngroups) {
        try_group(&v, meta->any_group, 0, &pc, method, &b);
    }
    return b.route;
}
