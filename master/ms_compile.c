/* dispatcher: turns a validated ms_config into one contiguous, pointer-free snapshot: header,
 * tables, the route index (layout and design in shm/shm_ridx.h), then the string blob.
 *
 * Memory is touched once where possible: on a fresh heap every new page costs a fault, and for a
 * large config those faults, not the hashing, dominate. So the index is built in place inside the
 * snapshot buffer, in a region sized for the worst case (every route its own host and path),
 * then slid down over the unused space; the strings go after it and the buffer is shrunk. */
#include "master/ms_compile.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>

#include "common/dsp.h"
#include "common/net.h"
#include "master/ms_config.h"
#include "master/ms_mw.h"
#include "master/ms_dns.h"
#include "master/ms_master.h"
#include "shm/shm_ridx.h"
#include "shm/shm_snap.h"
#include "shm/shm_types.h"

#define ALIGN8(x) (((uint64_t)(x) + 7u) & ~(uint64_t)7u)

/* Order of the index tables in the segment (compaction relies on it: each table only moves
 * down, and never onto a table that has not moved yet). */
static const int ridx_order[SHM_RIDX_NTABLES] = {
    SHM_RIDX_META,         SHM_RIDX_GROUPS, SHM_RIDX_GROUP_BUCKETS, SHM_RIDX_PATHS,
    SHM_RIDX_PATH_BUCKETS, SHM_RIDX_PLENS,  SHM_RIDX_LIST,
};


/* The index while it is being built. Its tables point into the snapshot buffer. Until the
 * strings are written, a group's and a path entry's key_off hold the index of a representative
 * route whose host or path carries the key bytes. */
struct ridx_build {
    const struct ms_config *cfg;
    uint32_t nroutes;
    uint32_t *rmap; /* per route: its group, later its path entry */
    uint32_t any_group;
    void *tab[SHM_RIDX_NTABLES];
    uint32_t count[SHM_RIDX_NTABLES];
};

static struct shm_ridx_group *rb_groups(const struct ridx_build *rb)
{
    return rb->tab[SHM_RIDX_GROUPS];
}

static struct shm_ridx_path *rb_paths(const struct ridx_build *rb)
{
    return rb->tab[SHM_RIDX_PATHS];
}

static uint32_t *rb_u32(const struct ridx_build *rb, int t)
{
    return rb->tab[t];
}

static const char *route_host(const struct ms_config *cfg, uint32_t r)
{
    return cfg->routes[r].host != NULL ? cfg->routes[r].host : "*";
}

static const char *route_path(const struct ms_config *cfg, uint32_t r)
{
    return cfg->routes[r].path != NULL ? cfg->routes[r].path : "/";
}

static uint32_t host_kind(const char *h)
{
    if (h[0] == '*' && h[1] == '\0') {
        return SHM_HOST_ANY;
    }
    if (h[0] == '*' && h[1] == '.') {
        return SHM_HOST_WILDCARD;
    }
    return SHM_HOST_EXACT;
}

/* Route <r>'s group key: the host, or for "*.suffix" the suffix. */
static const char *group_key(const struct ms_config *cfg, uint32_t r, uint32_t kind, size_t *len)
{
    const char *h = route_host(cfg, r);

    if (kind == SHM_HOST_WILDCARD) {
        h += 2;
    }
    *len = strlen(h);
    return h;
}

static uint32_t pow2_buckets(uint32_t n)
{
    uint32_t b = 2;

    /* Load factor at most 1/2 keeps linear probe chains short and guarantees an empty bucket. */
    while (b < 2u * (uint64_t)n) {
        b <<= 1;
    }
    return b;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

static int cmp_u32_desc(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a;
    uint32_t y = *(const uint32_t *)b;

    return (x < y) - (x > y);
}

/* One group per distinct host key; "*" is a group too but lives outside the hash. */
static void build_groups(struct ridx_build *rb)
{
    const struct ms_config *cfg = rb->cfg;
    struct shm_ridx_group *groups = rb_groups(rb);
    uint32_t *b = rb_u32(rb, SHM_RIDX_GROUP_BUCKETS);
    uint32_t nb = rb->count[SHM_RIDX_GROUP_BUCKETS];
    uint32_t ng = 0;

    memset(b, 0xff, (size_t)nb * sizeof(*b)); /* SHM_NONE */
    for (uint32_t r = 0; r < rb->nroutes; r++) {
        int32_t prio = cfg->routes[r].priority;
        uint32_t kind = host_kind(route_host(cfg, r));
        uint32_t h, i, g;
        const char *key;
        size_t klen;

        if (kind == SHM_HOST_ANY) {
            if (rb->any_group == SHM_NONE) {
                rb->any_group = ng++;
                groups[rb->any_group].kind = SHM_HOST_ANY;
                groups[rb->any_group].key_off = r;
                groups[rb->any_group].key_len = 1;
                groups[rb->any_group].max_prio = prio;
            }
            g = rb->any_group;
        } else {
            key = group_key(cfg, r, kind, &klen);
            DSP_ASSERT(klen < UINT32_MAX);
            h = shm_ridx_host_hash(shm_ridx_rfnv(key, klen), kind);
            for (i = h & (nb - 1);; i = (i + 1) & (nb - 1)) {
                const char *okey;
                size_t olen;

                g = b[i];
                if (g == SHM_NONE) {
                    g = b[i] = ng++;
                    groups[g].hash = h;
                    groups[g].kind = kind;
                    groups[g].key_off = r;
                    groups[g].key_len = (uint32_t)klen;
                    groups[g].max_prio = prio;
                    break;
                }
                if (groups[g].hash != h || groups[g].kind != kind || groups[g].key_len != klen) {
                    continue;
                }
                okey = group_key(cfg, groups[g].key_off, kind, &olen);
                if (memcmp(okey, key, klen) == 0) {
                    break;
                }
            }
        }
        rb->rmap[r] = g;
        if (prio > groups[g].max_prio) {
            groups[g].max_prio = prio;
        }
    }
    rb->count[SHM_RIDX_GROUPS] = ng;
}

/* One path entry per distinct (group, path). */
static void build_paths(struct ridx_build *rb)
{
    const struct ms_config *cfg = rb->cfg;
    struct shm_ridx_path *paths = rb_paths(rb);
    uint32_t *b = rb_u32(rb, SHM_RIDX_PATH_BUCKETS);
    uint32_t nb = rb->count[SHM_RIDX_PATH_BUCKETS];
    uint32_t np = 0;

    memset(b, 0xff, (size_t)nb * sizeof(*b));
    for (uint32_t r = 0; r < rb->nroutes; r++) {
        const char *path = route_path(cfg, r);
        size_t len = strlen(path);
        uint32_t g = rb->rmap[r];
        uint32_t h = shm_ridx_path_hash(shm_ridx_fnv(path, len), g);
        uint32_t i, p;

        DSP_ASSERT(len < UINT32_MAX);
        for (i = h & (nb - 1);; i = (i + 1) & (nb - 1)) {
            p = b[i];
            if (p == SHM_NONE) {
                p = b[i] = np++;
                paths[p].group = g;
                paths[p].hash = h;
                paths[p].key_off = r;
                paths[p].key_len = (uint32_t)len;
                paths[p].nlist = 0;
                break;
            }
            if (paths[p].hash == h && paths[p].group == g && paths[p].key_len == len &&
                memcmp(route_path(cfg, paths[p].key_off), path, len) == 0) {
                break;
            }
        }
        rb->rmap[r] = p;
        paths[p].nlist++;
    }
    rb->count[SHM_RIDX_PATHS] = np;
}

/* Sort each path entry's routes by (priority desc, order asc) and drop the ones that can never be
 * chosen: a route whose methods are all accepted by routes ahead of it in the same list always
 * loses to one of them. That also bounds every list by the number of method bits plus one, so a
 * lookup never walks a long list however many duplicate routes a config has. */
static void build_lists(struct ridx_build *rb)
{
    const struct ms_config *cfg = rb->cfg;
    struct shm_ridx_path *paths = rb_paths(rb);
    uint32_t np = rb->count[SHM_RIDX_PATHS];
    uint32_t *list = rb_u32(rb, SHM_RIDX_LIST);
    uint32_t *fill = dsp_xmalloc(((size_t)np + 1) * sizeof(*fill));
    uint64_t *keys = NULL;
    size_t keyscap = 0;
    uint32_t sum = 0, out = 0;

    for (uint32_t p = 0; p < np; p++) {
        paths[p].list_first = sum;
        fill[p] = sum;
        sum += paths[p].nlist;
    }
    /* Routes go in in config order, so each slice starts sorted by order. */
    for (uint32_t r = 0; r < rb->nroutes; r++) {
        list[fill[rb->rmap[r]]++] = r;
    }
    for (uint32_t p = 0; p < np; p++) {
        struct shm_ridx_path *pe = &paths[p];
        uint32_t *l = list + pe->list_first;
        uint32_t n = pe->nlist, kept = 0;
        uint64_t seen = 0;
        int seen_all = 0;

        if (n > 1) {
            if (n > keyscap) {
                keyscap = n;
                keys = dsp_xrealloc(keys, keyscap * sizeof(*keys));
            }
            /* Key: inverted biased priority in the high half (so ascending = priority desc),
             * the route index (= config order) in the low half. */
            for (uint32_t i = 0; i < n; i++) {
                uint32_t bias = (uint32_t)cfg->routes[l[i]].priority ^ 0x80000000u;
                keys[i] = ((uint64_t)(UINT32_MAX - bias) << 32) | l[i];
            }
            qsort(keys, n, sizeof(*keys), cmp_u64);
            for (uint32_t i = 0; i < n; i++) {
                l[i] = (uint32_t)keys[i];
            }
        }
        /* Compaction only moves entries down, so reading slice p after earlier ones shrank is
         * safe. */
        pe->list_first = out;
        for (uint32_t i = 0; i < n && !seen_all; i++) {
            uint64_t m = cfg->routes[l[i]].methods;

            if (m != 0 && (m & ~seen) == 0) {
                continue;
            }
            list[out + kept++] = l[i];
            seen_all = m == 0;
            seen |= m;
        }
        pe->nlist = kept;
        out += kept;
    }
    rb->count[SHM_RIDX_LIST] = out;
    free(keys);
    free(fill);
}

/* Each group's distinct path lengths, longest first. */
static void build_plens(struct ridx_build *rb)
{
    struct shm_ridx_group *groups = rb_groups(rb);
    struct shm_ridx_path *paths = rb_paths(rb);
    uint32_t ng = rb->count[SHM_RIDX_GROUPS], np = rb->count[SHM_RIDX_PATHS];
    uint32_t *plens = rb_u32(rb, SHM_RIDX_PLENS);
    uint32_t *fill = dsp_xcalloc((size_t)ng + 1, sizeof(*fill));
    uint32_t *tmp = dsp_xmalloc(((size_t)np + 1) * sizeof(*tmp));
    uint32_t sum = 0, out = 0;

    for (uint32_t p = 0; p < np; p++) {
        fill[paths[p].group]++;
    }
    /* plens_first doubles as each group's start in tmp until the lengths are deduplicated. */
    for (uint32_t g = 0; g < ng; g++) {
        groups[g].plens_first = sum;
        sum += fill[g];
        fill[g] = groups[g].plens_first;
    }
    for (uint32_t p = 0; p < np; p++) {
        tmp[fill[paths[p].group]++] = paths[p].key_len;
    }
    for (uint32_t g = 0; g < ng; g++) {
        uint32_t *s = tmp + groups[g].plens_first;
        uint32_t n = fill[g] - groups[g].plens_first;

        if (n > 1) {
            qsort(s, n, sizeof(*s), cmp_u32_desc);
        }
        groups[g].plens_first = out;
        for (uint32_t i = 0; i < n; i++) {
            if (i == 0 || s[i] != s[i - 1]) {
                plens[out++] = s[i];
            }
        }
        groups[g].nplens = out - groups[g].plens_first;
    }
    rb->count[SHM_RIDX_PLENS] = out;
    free(tmp);
    free(fill);
}

static void rehash(uint32_t *b, uint32_t nb, const void *entries, size_t elsz, size_t hash_off,
                   uint32_t n, uint32_t skip)
{
    memset(b, 0xff, (size_t)nb * sizeof(*b));
    for (uint32_t e = 0; e < n; e++) {
        uint32_t h, i;

        if (e == skip) {
            continue;
        }
        memcpy(&h, (const char *)entries + (size_t)e * elsz + hash_off, sizeof(h));
        for (i = h & (nb - 1); b[i] != SHM_NONE; i = (i + 1) & (nb - 1)) {
        }
        b[i] = e;
    }
}

/* Slide the index tables down from their worst-case places to packed ones starting at <base> +
 * <start>; the hashes are resized to their key counts on the way. Returns the end offset. */
static uint64_t ridx_compact(struct ridx_build *rb, char *base, uint64_t start, uint32_t *off)
{
    uint64_t cur = start;

    rb->count[SHM_RIDX_GROUP_BUCKETS] = pow2_buckets(rb->count[SHM_RIDX_GROUPS]);
    rb->count[SHM_RIDX_PATH_BUCKETS] = pow2_buckets(rb->count[SHM_RIDX_PATHS]);
    for (int k = 0; k < SHM_RIDX_NTABLES; k++) {
        int t = ridx_order[k];
        size_t bytes = (size_t)rb->count[t] * shm_ridx_elsz[t];
        void *dst = base + cur;

        if (t == SHM_RIDX_GROUP_BUCKETS) {
            rehash(dst, rb->count[t], rb_groups(rb), sizeof(struct shm_ridx_group),
                   offsetof(struct shm_ridx_group, hash), rb->count[SHM_RIDX_GROUPS],
                   rb->any_group);
        } else if (t == SHM_RIDX_PATH_BUCKETS) {
            rehash(dst, rb->count[t], rb_paths(rb), sizeof(struct shm_ridx_path),
                   offsetof(struct shm_ridx_path, hash), rb->count[SHM_RIDX_PATHS], SHM_NONE);
        } else if (dst != rb->tab[t]) {
            memmove(dst, rb->tab[t], bytes);
        }
        rb->tab[t] = dst;
        off[t] = (uint32_t)cur;
        /* Alignment padding may hold bytes of the worst-case layout: keep the segment clean. */
        memset(base + cur + bytes, 0, (size_t)(ALIGN8(cur + bytes) - (cur + bytes)));
        cur = ALIGN8(cur + bytes);
    }
    return cur;
}

/* A big config touches every page of its buffer, and taking those faults one at a time costs
 * more than all the hashing (several times more on some virtual machines). Fault the whole block
 * in with one call instead. Best effort: kernels before 5.14 say EINVAL and we fault as we go. */
static void prefault(void *p, size_t len)
{
#ifdef MADV_POPULATE_WRITE
    uintptr_t lo = ((uintptr_t)p + 4095u) & ~(uintptr_t)4095u;
    uintptr_t hi = ((uintptr_t)p + len) & ~(uintptr_t)4095u;

    if (len >= (1u << 20) && hi > lo) {
        (void)madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE);
    }
#else
    (void)p;
    (void)len;
#endif
}

/* ---- strings and addresses ---------------------------------------------------------------- */

/* The string blob starts with one NUL that every empty or missing string points at. */
struct blob {
    char *base;     /* the snapshot */
    uint64_t start; /* strings_off */
    uint64_t cur;
    uint64_t end;
};

static uint64_t str_need(const char *s)
{
    return s != NULL && s[0] != '\0' ? strlen(s) + 1 : 0;
}

static struct shm_str put_str(struct blob *b, const char *s)
{
    struct shm_str out = {(uint32_t)b->start, 0};
    size_t len = s != NULL ? strlen(s) : 0;

    if (len == 0) {
        return out;
    }
    DSP_ASSERT(b->cur + len + 1 <= b->end);
    memcpy(b->base + b->cur, s, len + 1);
    out.off = (uint32_t)b->cur;
    out.len = (uint32_t)len;
    b->cur += len + 1;
    return out;
}

/* family, host-order port and network-order ip bytes of a parsed address. */
static void put_addr(const struct sockaddr_storage *ss, uint16_t *family, uint16_t *port,
                     uint8_t ip[16])
{
    *family = ss->ss_family;
    if (ss->ss_family == AF_INET) {
        struct sockaddr_in sin;

        memcpy(&sin, ss, sizeof(sin));
        *port = ntohs(sin.sin_port);
        memcpy(ip, &sin.sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        struct sockaddr_in6 sin6;

        memcpy(&sin6, ss, sizeof(sin6));
        *port = ntohs(sin6.sin6_port);
        memcpy(ip, &sin6.sin6_addr, 16);
    }
}

static uint64_t u64_of(long v)
{
    return v > 0 ? (uint64_t)v : 0;
}

static uint32_t u32_of(long v)
{
    return v <= 0 ? 0 : (unsigned long)v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static uint64_t table(uint64_t *cur, uint64_t count, size_t elsz)
{
    uint64_t off = *cur;

    *cur = ALIGN8(off + count * elsz);
    return off;
}

/* ---- backends by name ----------------------------------------------------------------------- */

/* The backends a service publishes when some of them are named: each name expands into one
 * backend per address it resolves to (its weight each), an address that appears twice in the
 * service (a literal and a name, two names) once, at its first place. */
struct xbe {
    const char *address; /* the ms_backend's, or <own> */
    char *own;
    struct sockaddr_storage ss;
    int weight;
};

struct xsvc {
    int expanded;  /* 0: the service has no named backend, publish cfg's list */
    struct xbe *v; /* else its <n> backends (none while its names have no address) */
    size_t n;
};

static int xbe_cmp(const void *a, const void *b)
{
    const struct xbe *x = *(const struct xbe *const *)a, *y = *(const struct xbe *const *)b;
    int c = strcmp(x->address, y->address);

    return c != 0 ? c : (x > y) - (x < y);
}

/* A name first used by this configuration (a reload, a Redis change) has no answer yet for the
 * few milliseconds its first query takes. Meanwhile the service keeps the backends it had in the
 * generation being replaced, so that switching a service to a name never answers 404 "not
 * deployed" in between; the first answer (or failure) publishes again without them. */
static void add_previous(const struct ms_service *s, struct xbe **v, size_t *n, size_t *cap)
{
    const struct shm_snap_hdr *old = ms.snap;
    const struct shm_service *os;
    const struct shm_backend *ob;

    if (old == NULL || s->name == NULL) {
        return;
    }
    os = shm_services(old);
    ob = shm_backends(old);
    for (uint32_t i = 0; i < old->nservices; i++) {
        if (strcmp(shm_s(old, os[i].name), s->name) != 0) {
            continue;
        }
        for (uint32_t j = 0; j < os[i].nbackends; j++) {
            const struct shm_backend *b = &ob[os[i].backends_first + j];
            struct xbe *x;

            if (*n == *cap) {
                *cap = *cap ? *cap * 2 : 8;
                *v = dsp_xrealloc(*v, *cap * sizeof(**v));
            }
            x = &(*v)[(*n)++];
            memset(x, 0, sizeof(*x));
            x->weight = (int)b->weight;
            x->own = dsp_xstrdup(shm_s(old, b->address));
            x->address = x->own;
            if (b->family == AF_UNIX) {
                const char *path = x->own + NET_UNIX_PREFIX_LEN;
                struct sockaddr_un sun;
                socklen_t sl;

                if (net_unix_addr(path, strlen(path), &sun, &sl) == 0) {
                    memcpy(&x->ss, &sun, sl);
                }
            } else if (b->family == AF_INET) {
                struct sockaddr_in *s4 = (struct sockaddr_in *)&x->ss;

                s4->sin_family = AF_INET;
                s4->sin_port = htons(b->port);
                memcpy(&s4->sin_addr, b->ip, 4);
            } else {
                struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&x->ss;

                s6->sin6_family = AF_INET6;
                s6->sin6_port = htons(b->port);
                memcpy(&s6->sin6_addr, b->ip, 16);
            }
        }
        return;
    }
}

static void expand_service(const struct ms_service *s, struct xsvc *out)
{
    struct xbe *v = NULL, **ord;
    size_t n = 0, cap = 0, k = 0;
    int pending = 0;

    for (size_t j = 0; j < s->nbackends; j++) {
        const struct ms_backend *mb = &s->backends[j];
        const struct sockaddr_storage *a = NULL;
        size_t na = mb->name != NULL ? ms_dns_addrs(mb->name, &a) : 1;

        pending |= mb->name != NULL && ms_dns_pending(mb->name);

        for (size_t i = 0; i < na; i++) {
            struct xbe *x;

            if (n == cap) {
                cap = cap ? cap * 2 : s->nbackends + 4;
                v = dsp_xrealloc(v, cap * sizeof(*v));
            }
            x = &v[n++];
            memset(x, 0, sizeof(*x));
            x->weight = mb->weight;
            if (mb->name == NULL) {
                x->address = mb->address;
                x->ss = mb->ss;
                continue;
            }
            char buf[80];

            x->ss = a[i];
            if (x->ss.ss_family == AF_INET) {
                ((struct sockaddr_in *)&x->ss)->sin_port = htons(mb->port);
            } else {
                ((struct sockaddr_in6 *)&x->ss)->sin6_port = htons(mb->port);
            }
            x->own = dsp_xstrdup(net_addr_str((const struct sockaddr *)&x->ss, buf, sizeof(buf)));
            x->address = x->own;
        }
    }
    if (pending) {
        add_previous(s, &v, &n, &cap);
    }
    /* Duplicates: sort pointers by address (then position), drop all but the first of each. */
    ord = dsp_xmalloc((n + 1) * sizeof(*ord));
    for (size_t i = 0; i < n; i++) {
        ord[i] = &v[i];
    }
    qsort(ord, n, sizeof(*ord), xbe_cmp);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(ord[i]->address, ord[i - 1]->address) == 0) {
            ord[i]->weight = 0; /* marked: weights are >= 1 */
        }
    }
    free(ord);
    for (size_t i = 0; i < n; i++) {
        if (v[i].weight == 0) {
            free(v[i].own);
        } else {
            v[k++] = v[i];
        }
    }
    out->expanded = 1;
    out->v = v;
    out->n = k;
}

/* NULL when no service has a named backend (the common case costs nothing). */
static struct xsvc *expand_backends(const struct ms_config *cfg)
{
    struct xsvc *xs = NULL;

    for (size_t i = 0; i < cfg->nservices; i++) {
        const struct ms_service *s = &cfg->services[i];

        for (size_t j = 0; j < s->nbackends; j++) {
            if (s->backends[j].name != NULL) {
                if (xs == NULL) {
                    xs = dsp_xcalloc(cfg->nservices, sizeof(*xs));
                }
                expand_service(s, &xs[i]);
                break;
            }
        }
    }
    return xs;
}

static void xsvc_free(struct xsvc *xs, size_t n)
{
    for (size_t i = 0; xs != NULL && i < n; i++) {
        for (size_t j = 0; j < xs[i].n; j++) {
            free(xs[i].v[j].own);
        }
        free(xs[i].v);
    }
    free(xs);
}

/* The server name sent to and verified on a TLS service's backends: its sni, else the host name
 * its backends are all named by (as nginx's proxy_ssl_name defaults to the upstream's name),
 * else none (the backend's IP is verified). */
static const char *svc_sni(const struct ms_service *s)
{
    const char *name = NULL;

    if (!s->tls || s->tls_sni != NULL) {
        return s->tls ? s->tls_sni : NULL;
    }
    for (size_t j = 0; j < s->nbackends; j++) {
        if (s->backends[j].name == NULL ||
            (name != NULL && strcmp(name, s->backends[j].name) != 0)) {
            return NULL;
        }
        name = s->backends[j].name;
    }
    return name;
}

static size_t svc_nbackends(const struct ms_config *cfg, const struct xsvc *xs, size_t i)
{
    return xs != NULL && xs[i].expanded ? xs[i].n : cfg->services[i].nbackends;
}

static const char *svc_backend(const struct ms_config *cfg, const struct xsvc *xs, size_t i,
                               size_t j, const struct sockaddr_storage **ss, int *weight)
{
    if (xs != NULL && xs[i].expanded) {
        *ss = &xs[i].v[j].ss;
        *weight = xs[i].v[j].weight;
        return xs[i].v[j].address;
    }
    *ss = &cfg->services[i].backends[j].ss;
    *weight = cfg->services[i].backends[j].weight;
    return cfg->services[i].backends[j].address;
}

static void fill_services(const struct ms_config *cfg, const struct xsvc *xs, char *base,
                          struct blob *b, const struct shm_snap_hdr *h)
{
    struct shm_service *sv = (struct shm_service *)(void *)(base + h->services_off);
    struct shm_backend *be = (struct shm_backend *)(void *)(base + h->backends_off);
    uint32_t nb = 0;

    for (size_t i = 0; i < cfg->nservices; i++) {
        const struct ms_service *s = &cfg->services[i];
        struct shm_service *o = &sv[i];

        o->name = put_str(b, s->name);
        o->backends_first = nb;
        o->nbackends = (uint32_t)svc_nbackends(cfg, xs, i);
        o->balance = s->balance;
        o->protocol = s->protocol;
        o->rt_slot = SHM_NONE;
        o->retries = u32_of(s->retries);
        o->connect_timeout_ms = u32_of(s->connect_timeout_ms);
        o->response_timeout_ms = u32_of(s->response_timeout_ms);
        o->stream_idle_timeout_ms = u32_of(s->stream_idle_timeout_ms > 0 ? s->stream_idle_timeout_ms
                                                                         : s->response_timeout_ms);
        o->health_enabled = s->health.enabled != 0;
        o->health_interval_ms = u32_of(s->health.interval_ms);
        o->health_timeout_ms = u32_of(s->health.timeout_ms);
        o->health_fall = u32_of(s->health.fall);
        o->health_rise = u32_of(s->health.rise);
        o->health_start_down = s->health.start_down != 0;
        o->health_path = put_str(b, s->health.path);
        o->cb_enabled = s->circuit.enabled != 0;
        o->cb_failures = u32_of(s->circuit.failures);
        o->cb_open_ms = u32_of(s->circuit.open_ms);
        o->cb_count_5xx = s->circuit.count_5xx != 0;
        o->passive_failures = u32_of(s->passive_failures);
        o->max_ejection_percent = u32_of(s->max_ejection_percent);
        o->source = s->source;
        o->tls = s->tls ? SHM_SVC_TLS_ON | (s->tls_verify ? SHM_SVC_TLS_VERIFY : 0u) : 0u;
        o->tls_sni = put_str(b, svc_sni(s));
        o->tls_ca_pem = put_str(b, s->tls ? s->tls_ca_pem : NULL);
        o->tls_client_cert_pem = put_str(b, s->tls ? s->tls_client_cert_pem : NULL);
        o->tls_client_key_pem = put_str(b, s->tls ? s->tls_client_key_pem : NULL);
        for (size_t j = 0; j < o->nbackends; j++) {
            const struct sockaddr_storage *ss;
            int weight;
            const char *addr = svc_backend(cfg, xs, i, j, &ss, &weight);
            struct shm_backend *ob = &be[nb++];

            ob->address = put_str(b, addr);
            ob->service = (uint32_t)i;
            ob->weight = u32_of(weight);
            ob->rt_slot = SHM_NONE;
            put_addr(ss, &ob->family, &ob->port, ob->ip);
            o->total_weight += ob->weight;
        }
    }
}

/* The Set-Cookie value that keeps a client on split entry <service> (heap). */
static char *split_cookie(const char *service)
{
    size_t n = sizeof(SHM_SPLIT_COOKIE "=" SHM_SPLIT_COOKIE_ATTRS) + strlen(service);
    char *p = dsp_xmalloc(n);

    snprintf(p, n, "%s=%s%s", SHM_SPLIT_COOKIE, service, SHM_SPLIT_COOKIE_ATTRS);
    return p;
}

static uint64_t split_cookie_need(const char *service)
{
    return sizeof(SHM_SPLIT_COOKIE "=" SHM_SPLIT_COOKIE_ATTRS) + strlen(service);
}

/* Route <mr>'s split entries from <*next> of the split table on. */
static void fill_split(const struct ms_config *cfg, char *base, struct blob *b,
                       const struct shm_snap_hdr *h, const struct ms_route *mr,
                       struct shm_route *out, uint32_t *next)
{
    struct shm_split *sp = (struct shm_split *)(void *)(base + h->splits_off) + *next;
    struct shm_service *sv = (struct shm_service *)(void *)(base + h->services_off);

    out->split_first = *next;
    out->nsplit = (uint16_t)mr->nsplit;
    out->split_flags = mr->sticky ? SHM_SPLIT_STICKY : 0u;
    for (size_t k = 0; k < mr->nsplit; k++) {
        const struct ms_split *e = &mr->split[k];
        char *ck = split_cookie(cfg->services[e->service_idx].name);

        DSP_ASSERT(e->service_idx < cfg->nservices);
        sp[k].service = (uint32_t)e->service_idx;
        sp[k].weight = (uint32_t)e->weight;
        sp[k].cookie = put_str(b, ck);
        free(ck);
        if (k > 0) { /* (the first entry is the route's service, counted by the caller) */
            sv[e->service_idx].nroutes++;
        }
    }
    *next += (uint32_t)mr->nsplit;
}

static void fill_routes(const struct ms_config *cfg, char *base, struct blob *b,
                        const struct shm_snap_hdr *h, const uint32_t *mw_lists)
{
    struct shm_route *rt = (struct shm_route *)(void *)(base + h->routes_off);
    struct shm_service *sv = (struct shm_service *)(void *)(base + h->services_off);
    uint32_t next_split = 0;

    for (uint32_t r = 0; r < h->nroutes; r++) {
        const struct ms_route *mr = &cfg->routes[r];

        DSP_ASSERT(mr->service_idx < cfg->nservices);
        rt[r].host = put_str(b, route_host(cfg, r));
        rt[r].path = put_str(b, route_path(cfg, r));
        rt[r].methods = mr->methods;
        rt[r].priority = mr->priority;
        rt[r].service = (uint32_t)mr->service_idx;
        rt[r].order = r;
        rt[r].host_kind = host_kind(route_host(cfg, r));
        rt[r].source = mr->source;
        rt[r].mw_list = mw_lists[r];
        sv[mr->service_idx].nroutes++;
        if (mr->nsplit > 0) {
            fill_split(cfg, base, b, h, mr, &rt[r], &next_split);
        }
    }
}

/* ---- certificates -------------------------------------------------------------------------- */

/* The certificates to publish: the configured ones that ms_tls_prepare() loaded, in config order,
 * then the generated self-signed one. Entries without PEM (a config that was only parsed, as in
 * some unit tests) are left out. */
static const struct ms_cert *cert_at(const struct ms_config *cfg, size_t i)
{
    if (i < cfg->tls.ncerts) {
        return cfg->tls.certs[i].cert_pem != NULL ? &cfg->tls.certs[i] : NULL;
    }
    return i == cfg->tls.ncerts && cfg->tls.self_signed.cert_pem != NULL ? &cfg->tls.self_signed
                                                                         : NULL;
}

/* <len> bytes of binary data (may hold NULs), NUL-terminated like the strings. */
static struct shm_str put_bin(struct blob *b, const void *p, size_t len)
{
    struct shm_str out = {(uint32_t)b->start, 0};

    if (p == NULL || len == 0) {
        return out;
    }
    DSP_ASSERT(b->cur + len + 1 <= b->end);
    memcpy(b->base + b->cur, p, len);
    b->base[b->cur + len] = '\0';
    out.off = (uint32_t)b->cur;
    out.len = (uint32_t)len;
    b->cur += len + 1;
    return out;
}

static void fill_certs(const struct ms_config *cfg, char *base, struct blob *b,
                       const struct shm_snap_hdr *h)
{
    struct shm_cert *ct = (struct shm_cert *)(void *)(base + h->certs_off);
    struct shm_str *names = (struct shm_str *)(void *)(base + h->cert_names_off);
    uint32_t n = 0, nn = 0;

    for (size_t i = 0; i <= cfg->tls.ncerts; i++) {
        const struct ms_cert *mc = cert_at(cfg, i);
        struct shm_cert *o;

        if (mc == NULL) {
            continue;
        }
        o = &ct[n++];
        o->cert_pem = put_str(b, mc->cert_pem);
        o->key_pem = put_str(b, mc->key_pem);
        o->subject = put_str(b, mc->subject);
        o->path = put_str(b, mc->cert);
        if (!mc->ocsp_stale) {
            o->ocsp = put_bin(b, mc->ocsp_der, mc->ocsp_len);
        }
        o->names_first = nn;
        o->nnames = (uint32_t)mc->nnames;
        for (size_t k = 0; k < mc->nnames; k++) {
            names[nn++] = put_str(b, mc->names[k]);
        }
        o->not_after = mc->not_after > 0 ? (uint64_t)mc->not_after : 0;
        o->flags = mc->expired ? SHM_CERT_F_EXPIRED : 0u;
        o->source = mc->source;
        if (mc == &cfg->tls.self_signed) {
            o->flags |= SHM_CERT_F_SELF_SIGNED | SHM_CERT_F_DEFAULT;
        } else {
            o->line = mc->line > 0 ? (uint32_t)mc->line : 0u;
        }
    }
    DSP_ASSERT(n == h->ncerts && nn == h->ncert_names);
}

void *ms_compile(const struct ms_config *cfg, uint64_t gen, size_t *size)
{
    struct ridx_build rb;
    struct shm_snap_hdr *h;
    struct shm_listener *ls;
    struct shm_cidr *tc;
    const struct shm_route *rt;
    struct shm_ridx_group *gr;
    struct shm_ridx_path *pa;
    struct shm_ridx_meta *meta;
    struct blob b;
    uint64_t ub_off[SHM_RIDX_NTABLES];
    uint64_t cur, idx_start, ub_end, strings_need, nbackends = 0;
    uint64_t lo, to, so, bo, ro, co, cno, eo, mo, spo, total, ncerts = 0, ncert_names = 0;
    uint64_t nsplits = 0;
    uint32_t n, *mw_lists;
    char *base;
    struct xsvc *xs;
    void *mw;
    size_t mw_len;

    DSP_ASSERT(cfg->nroutes < UINT32_MAX / 4);
    n = (uint32_t)cfg->nroutes;
    xs = expand_backends(cfg);
    mw_lists = dsp_xcalloc((size_t)n + 1, sizeof(*mw_lists));
    mw = ms_mw_compile(cfg, mw_lists, &mw_len);

    /* Size the string blob exactly: everything below is written in the same order. */
    strings_need = 1 + str_need(cfg->path) + str_need(cfg->tls.self_signed_cn);
    strings_need += str_need(cfg->log.access);
    for (size_t i = 0; i < cfg->errors.npages; i++) {
        strings_need += str_need(cfg->errors.pages[i].body);
    }
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        strings_need += str_need(cfg->listeners[i].address) +
                        str_need(cfg->listeners[i].client_ca_pem) +
                        str_need(cfg->listeners[i].health_uri);
    }
    for (size_t i = 0; i < cfg->nservices; i++) {
        const struct ms_service *s = &cfg->services[i];

        strings_need += str_need(s->name) + str_need(s->health.path);
        if (s->tls) {
            strings_need += str_need(svc_sni(s)) + str_need(s->tls_ca_pem) +
                            str_need(s->tls_client_cert_pem) + str_need(s->tls_client_key_pem);
        }
        for (size_t j = 0; j < svc_nbackends(cfg, xs, i); j++) {
            const struct sockaddr_storage *ss;
            int weight;

            strings_need += str_need(svc_backend(cfg, xs, i, j, &ss, &weight));
        }
        nbackends += svc_nbackends(cfg, xs, i);
    }
    for (uint32_t r = 0; r < n; r++) {
        strings_need += str_need(route_host(cfg, r)) + str_need(route_path(cfg, r));
        for (size_t k = 0; k < cfg->routes[r].nsplit; k++) {
            strings_need += split_cookie_need(
                cfg->services[cfg->routes[r].split[k].service_idx].name);
            nsplits++;
        }
    }
    for (size_t i = 0; i <= cfg->tls.ncerts; i++) {
        const struct ms_cert *mc = cert_at(cfg, i);

        if (mc == NULL) {
            continue;
        }
        ncerts++;
        ncert_names += mc->nnames;
        strings_need += str_need(mc->cert_pem) + str_need(mc->key_pem) + str_need(mc->subject) +
                        str_need(mc->cert) + (mc->ocsp_der != NULL ? mc->ocsp_len + 1 : 0);
        for (size_t k = 0; k < mc->nnames; k++) {
            strings_need += str_need(mc->names[k]);
        }
    }

    cur = ALIGN8(sizeof(struct shm_snap_hdr));
    lo = table(&cur, cfg->nlisteners, sizeof(struct shm_listener));
    to = table(&cur, cfg->ntrusted, sizeof(struct shm_cidr));
    so = table(&cur, cfg->nservices, sizeof(struct shm_service));
    bo = table(&cur, nbackends, sizeof(struct shm_backend));
    ro = table(&cur, n, sizeof(struct shm_route));
    co = table(&cur, ncerts, sizeof(struct shm_cert));
    cno = table(&cur, ncert_names, sizeof(struct shm_str));
    eo = table(&cur, cfg->errors.npages, sizeof(struct shm_error_page));
    mo = table(&cur, mw_len, 1);
    spo = table(&cur, nsplits, sizeof(struct shm_split));

    /* Worst-case index region: at most one group and one path entry per route. */
    memset(&rb, 0, sizeof(rb));
    rb.cfg = cfg;
    rb.nroutes = n;
    rb.any_group = SHM_NONE;
    rb.count[SHM_RIDX_META] = 1;
    rb.count[SHM_RIDX_GROUPS] = n;
    rb.count[SHM_RIDX_GROUP_BUCKETS] = pow2_buckets(n);
    rb.count[SHM_RIDX_PATHS] = n;
    rb.count[SHM_RIDX_PATH_BUCKETS] = pow2_buckets(n);
    rb.count[SHM_RIDX_PLENS] = n;
    rb.count[SHM_RIDX_LIST] = n;
    idx_start = cur;
    for (int k = 0; k < SHM_RIDX_NTABLES; k++) {
        int t = ridx_order[k];

        ub_off[t] = table(&cur, rb.count[t], shm_ridx_elsz[t]);
    }
    ub_end = cur;
    /* Offsets are 32-bit in the ABI; the final segment is no larger than this bound. */
    DSP_ASSERT(ub_end + strings_need + 8 <= UINT32_MAX);

    /* calloc: fresh pages come zeroed for free, and reserved fields must read as zero. */
    base = dsp_xcalloc(1, (size_t)(ub_end + strings_need + 8));
    prefault(base, (size_t)(ub_end + strings_need + 8));
    for (int t = 0; t < SHM_RIDX_NTABLES; t++) {
        rb.tab[t] = base + ub_off[t];
    }
    rb.rmap = dsp_xmalloc(((size_t)n + 1) * sizeof(*rb.rmap));
    build_groups(&rb);
    build_paths(&rb);
    build_lists(&rb);
    build_plens(&rb);
    free(rb.rmap);

    h = (struct shm_snap_hdr *)(void *)base;
    cur = ridx_compact(&rb, base, idx_start, h->ridx.off);
    for (int t = 0; t < SHM_RIDX_NTABLES; t++) {
        h->ridx.count[t] = rb.count[t];
    }
    for (int t = SHM_RIDX_NTABLES; t < (int)DSP_ARRAY_SIZE(h->ridx.off); t++) {
        h->ridx.off[t] = (uint32_t)idx_start;
    }
    total = ALIGN8(cur + strings_need);

    h->magic = SHM_SNAP_MAGIC;
    h->version = SHM_SNAP_VERSION;
    h->gen = gen;
    h->size = total;
    h->loaded_at = (uint64_t)time(NULL);
    h->source = SHM_SOURCE_FILE | (cfg->redis.merged ? SHM_SOURCE_REDIS : 0u);
    h->limits.max_connections = u64_of(cfg->limits.max_connections);
    h->limits.max_header_bytes = u64_of(cfg->limits.max_header_bytes);
    h->limits.max_body_bytes = u64_of(cfg->limits.max_body_bytes);
    h->limits.header_timeout_ms = u32_of(cfg->limits.header_timeout_ms);
    h->limits.idle_timeout_ms = u32_of(cfg->limits.idle_timeout_ms);
    h->limits.shutdown_timeout_ms = u32_of(cfg->limits.shutdown_timeout_ms);
    h->limits.tunnel_idle_timeout_ms = u32_of(cfg->limits.tunnel_idle_timeout_ms);
    h->limits.min_body_rate = u32_of(cfg->limits.min_body_rate);
    h->limits.h2_max_streams = u32_of(cfg->limits.h2_max_streams);
    h->limits.h2_stream_window = u32_of(cfg->limits.h2_stream_window);
    h->limits.send_timeout_ms = u32_of(cfg->limits.send_timeout_ms);
    h->listeners_off = (uint32_t)lo;
    h->nlisteners = (uint32_t)cfg->nlisteners;
    h->trusted_off = (uint32_t)to;
    h->ntrusted = (uint32_t)cfg->ntrusted;
    h->services_off = (uint32_t)so;
    h->nservices = (uint32_t)cfg->nservices;
    h->backends_off = (uint32_t)bo;
    h->nbackends = (uint32_t)nbackends;
    h->routes_off = (uint32_t)ro;
    h->nroutes = n;
    h->certs_off = (uint32_t)co;
    h->ncerts = (uint32_t)ncerts;
    h->cert_names_off = (uint32_t)cno;
    h->ncert_names = (uint32_t)ncert_names;
    h->tls_min_version = cfg->tls.min_version == 0x0304 ? 0x0304u : 0x0303u;
    h->workers = cfg->workers > 0 ? (uint32_t)cfg->workers : 0;
    h->errors_flags = (cfg->errors.expose_backend ? SHM_ERRORS_EXPOSE_BACKEND : 0u) |
                      (cfg->errors.list_services ? SHM_ERRORS_LIST_SERVICES : 0u);
    h->error_pages_off = (uint32_t)eo;
    h->nerror_pages = (uint32_t)cfg->errors.npages;
    h->mw_off = (uint32_t)mo;
    h->mw_len = (uint32_t)mw_len;
    if (mw_len > 0) {
        memcpy(base + mo, mw, mw_len);
    }
    free(mw);
    h->splits_off = (uint32_t)spo;
    h->nsplits = (uint32_t)nsplits;
    h->strings_off = (uint32_t)cur;
    h->strings_len = (uint32_t)strings_need;

    /* The blob now overlays index space that compaction freed. Every byte of it is written
     * below: the shared empty string's NUL here, the strings after it, the padding at the end. */
    b.base = base;
    b.start = cur;
    b.cur = cur + 1;
    b.end = cur + strings_need;
    base[cur] = '\0';
    h->config_path = put_str(&b, cfg->path);
    h->self_signed_cn = put_str(&b, cfg->tls.self_signed_cn);
    h->access_log = put_str(&b, cfg->log.access);
    h->access_format = cfg->log.access_format;
    for (size_t i = 0; i < cfg->errors.npages; i++) {
        struct shm_error_page *pg = (struct shm_error_page *)(void *)(base + eo) + i;

        pg->status = (uint32_t)cfg->errors.pages[i].status;
        pg->body = put_str(&b, cfg->errors.pages[i].body);
    }

    ls = (struct shm_listener *)(void *)(base + lo);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct ms_listener *l = &cfg->listeners[i];

        put_addr(&l->ss, &ls[i].family, &ls[i].port, ls[i].ip);
        ls[i].tls = l->tls != 0;
        ls[i].proxy_protocol = l->proxy_protocol != 0;
        ls[i].http2 = l->http2 != 0;
        ls[i].address = put_str(&b, l->address);
        ls[i].client_ca_pem = put_str(&b, l->client_ca_pem);
        ls[i].client_verify = l->client_ca_pem != NULL ? l->client_verify : SHM_CLIENT_VERIFY_OFF;
        ls[i].health_uri = put_str(&b, l->health_uri);
    }
    tc = (struct shm_cidr *)(void *)(base + to);
    for (size_t i = 0; i < cfg->ntrusted; i++) {
        tc[i].family = cfg->trusted[i].family;
        tc[i].prefix = cfg->trusted[i].prefix;
        memcpy(tc[i].addr, cfg->trusted[i].addr, sizeof(tc[i].addr));
    }
    fill_services(cfg, xs, base, &b, h);
    xsvc_free(xs, cfg->nservices);
    fill_routes(cfg, base, &b, h, mw_lists);
    free(mw_lists);
    fill_certs(cfg, base, &b, h);
    DSP_ASSERT(b.cur == b.end);
    memset(base + b.end, 0, (size_t)(total - b.end));

    /* Keys point at the routes' own strings. */
    rt = (const struct shm_route *)(const void *)(base + ro);
    meta = rb.tab[SHM_RIDX_META];
    memset(meta, 0, sizeof(*meta));
    meta->any_group = rb.any_group;
    gr = rb_groups(&rb);
    for (uint32_t g = 0; g < rb.count[SHM_RIDX_GROUPS]; g++) {
        const struct shm_str *s = &rt[gr[g].key_off].host;
        uint32_t skip = gr[g].kind == SHM_HOST_WILDCARD ? 2u : 0u;

        gr[g].key_off = s->off + skip;
        gr[g].key_len = s->len - skip;
    }
    pa = rb_paths(&rb);
    for (uint32_t p = 0; p < rb.count[SHM_RIDX_PATHS]; p++) {
        pa[p].key_off = rt[pa[p].key_off].path.off;
    }

    /* Shrinking keeps the block in place (mremap or a trimmed heap chunk). */
    base = dsp_xrealloc(base, (size_t)total);
    *size = (size_t)total;
    return base;
}
