/* dispatcher: turns a validated ms_config into one contiguous, pointer-free snapshot: header,
 * tables, route index (layout in shm/shm_ridx.h), then the string blob. Everything is sized
 * first and written once, so the buffer never moves and offsets are final when written. */
#include "master/ms_compile.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "common/dsp.h"
#include "common/net.h"
#include "master/ms_config.h"
#include "shm/shm_ridx.h"
#include "shm/shm_types.h"

#define ALIGN8(x) (((x) + 7u) & ~(uint64_t)7u)

/* The route index as built in the master's heap before it is copied into the snapshot. Group
 * and path keys are remembered as a representative route (whose strings hold the key bytes) and
 * turned into blob offsets once the routes' strings have their final place. */
struct ridx_build {
    uint32_t nroutes;
    const char **host;           /* per route: the host as configured ("*" when missing) */
    const char **path;           /* per route: the path ("/" when missing) */
    uint32_t *hlen;
    uint32_t *plen;
    uint32_t *kind;              /* SHM_HOST_* */
    uint32_t *rgroup;            /* group of each route */
    uint32_t *rpath;             /* path entry of each route */

    struct shm_ridx_group *groups;
    uint32_t *group_rep;         /* route whose host holds the group's key */
    uint32_t ngroups;
    uint32_t any_group;

    struct shm_ridx_path *paths;
    uint32_t *path_rep;          /* route whose path holds the entry's key */
    uint32_t npaths;

    uint32_t *plens;
    uint32_t nplens;
    uint32_t *list;
    uint32_t nlist;
    uint32_t *gbuckets;
    uint32_t ngbuckets;
    uint32_t *pbuckets;
    uint32_t npbuckets;
};

static uint32_t pow2_buckets(uint32_t n)
{
    uint32_t b = 2;

    /* Load factor at most 1/2 keeps linear probe chains short and guarantees an empty bucket. */
    while (b < 2u * (uint64_t)n) {
        b <<= 1;
    }
    return b;
}

static uint32_t *new_buckets(uint32_t n)
{
    uint32_t *b = dsp_xmalloc((size_t)n * sizeof(*b));

    memset(b, 0xff, (size_t)n * sizeof(*b)); /* SHM_NONE */
    return b;
}

static const char *group_key(const struct ridx_build *rb, uint32_t r, uint32_t *len)
{
    if (rb->kind[r] == SHM_HOST_WILDCARD) {
        *len = rb->hlen[r] - 2;
        return rb->host[r] + 2;
    }
    *len = rb->hlen[r];
    return rb->host[r];
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
static void build_groups(struct ridx_build *rb, const struct ms_config *cfg)
{
    uint32_t nb = pow2_buckets(rb->nroutes);
    uint32_t *b = new_buckets(nb);

    for (uint32_t r = 0; r < rb->nroutes; r++) {
        int32_t prio = cfg->routes[r].priority;
        uint32_t klen, h, i, g;
        const char *key;

        if (rb->kind[r] == SHM_HOST_ANY) {
            if (rb->any_group == SHM_NONE) {
                g = rb->any_group = rb->ngroups++;
                rb->groups[g].kind = SHM_HOST_ANY;
                rb->groups[g].max_prio = prio;
                rb->group_rep[g] = r;
            }
            g = rb->any_group;
            goto found;
        }
        key = group_key(rb, r, &klen);
        h = shm_ridx_host_hash(shm_ridx_rfnv(key, klen), rb->kind[r]);
        for (i = h & (nb - 1);; i = (i + 1) & (nb - 1)) {
            uint32_t olen;
            const char *okey;

            g = b[i];
            if (g == SHM_NONE) {
                g = b[i] = rb->ngroups++;
                rb->groups[g].hash = h;
                rb->groups[g].kind = rb->kind[r];
                rb->groups[g].key_len = klen;
                rb->groups[g].max_prio = prio;
                rb->group_rep[g] = r;
                break;
            }
            if (rb->groups[g].hash != h || rb->groups[g].kind != rb->kind[r] ||
                rb->groups[g].key_len != klen) {
                continue;
            }
            okey = group_key(rb, rb->group_rep[g], &olen);
            if (memcmp(okey, key, klen) == 0) {
                break;
            }
        }
    found:
        rb->rgroup[r] = g;
        if (prio > rb->groups[g].max_prio) {
            rb->groups[g].max_prio = prio;
        }
    }
    free(b);
}

/* One path entry per distinct (group, path). */
static void build_paths(struct ridx_build *rb)
{
    uint32_t nb = pow2_buckets(rb->nroutes);
    uint32_t *b = new_buckets(nb);

    for (uint32_t r = 0; r < rb->nroutes; r++) {
        uint32_t g = rb->rgroup[r];
        uint32_t len = rb->plen[r];
        uint32_t h = shm_ridx_path_hash(shm_ridx_fnv(rb->path[r], len), g);
        uint32_t i, p;

        for (i = h & (nb - 1);; i = (i + 1) & (nb - 1)) {
            p = b[i];
            if (p == SHM_NONE) {
                p = b[i] = rb->npaths++;
                rb->paths[p].group = g;
                rb->paths[p].hash = h;
                rb->paths[p].key_len = len;
                rb->path_rep[p] = r;
                break;
            }
            if (rb->paths[p].hash == h && rb->paths[p].group == g && rb->paths[p].key_len == len &&
                memcmp(rb->path[rb->path_rep[p]], rb->path[r], len) == 0) {
                break;
            }
        }
        rb->rpath[r] = p;
        rb->paths[p].nlist++;
    }
    free(b);
}

/* Sort each path entry's routes by (priority desc, order asc) and drop the ones that can never be
 * chosen: a route whose methods are all accepted by routes ahead of it in the same list always
 * loses to one of them. That also bounds every list by the number of method bits plus one, so a
 * lookup never walks a long list however many duplicate routes a config has. */
static void build_lists(struct ridx_build *rb, const struct ms_config *cfg)
{
    uint32_t *fill = dsp_xmalloc(((size_t)rb->npaths + 1) * sizeof(*fill));
    uint64_t *keys = NULL;
    size_t keyscap = 0;
    uint32_t sum = 0, out = 0;

    rb->list = dsp_xmalloc(((size_t)rb->nroutes + 1) * sizeof(*rb->list));
    for (uint32_t p = 0; p < rb->npaths; p++) {
        rb->paths[p].list_first = sum;
        fill[p] = sum;
        sum += rb->paths[p].nlist;
    }
    /* Routes go in in config order, so each slice starts sorted by order. */
    for (uint32_t r = 0; r < rb->nroutes; r++) {
        rb->list[fill[rb->rpath[r]]++] = r;
    }
    for (uint32_t p = 0; p < rb->npaths; p++) {
        struct shm_ridx_path *pe = &rb->paths[p];
        uint32_t *l = rb->list + pe->list_first;
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
        pe->list_first = out;
        for (uint32_t i = 0; i < n && !seen_all; i++) {
            uint64_t m = cfg->routes[l[i]].methods;

            if (m != 0 && (m & ~seen) == 0) {
                continue;
            }
            rb->list[out + kept++] = l[i];
            if (m == 0) {
                seen_all = 1;
            }
            seen |= m;
        }
        pe->nlist = kept;
        out += kept;
    }
    rb->nlist = out;
    free(keys);
    free(fill);
}

/* Each group's distinct path lengths, longest first. */
static void build_plens(struct ridx_build *rb)
{
    uint32_t *fill = dsp_xcalloc((size_t)rb->ngroups + 1, sizeof(*fill));
    uint32_t *first = dsp_xcalloc((size_t)rb->ngroups + 1, sizeof(*first));
    uint32_t *tmp = dsp_xmalloc(((size_t)rb->npaths + 1) * sizeof(*tmp));
    uint32_t sum = 0, out = 0;

    for (uint32_t p = 0; p < rb->npaths; p++) {
        fill[rb->paths[p].group]++;
    }
    for (uint32_t g = 0; g < rb->ngroups; g++) {
        uint32_t c = fill[g];

        first[g] = sum;
        fill[g] = sum;
        sum += c;
    }
    for (uint32_t p = 0; p < rb->npaths; p++) {
        tmp[fill[rb->paths[p].group]++] = rb->paths[p].key_len;
    }
    rb->plens = dsp_xmalloc(((size_t)rb->npaths + 1) * sizeof(*rb->plens));
    for (uint32_t g = 0; g < rb->ngroups; g++) {
        uint32_t *s = tmp + first[g];
        uint32_t n = fill[g] - first[g];

        if (n > 1) {
            qsort(s, n, sizeof(*s), cmp_u32_desc);
        }
        rb->groups[g].plens_first = out;
        for (uint32_t i = 0; i < n; i++) {
            if (i == 0 || s[i] != s[i - 1]) {
                rb->plens[out++] = s[i];
            }
        }
        rb->groups[g].nplens = out - rb->groups[g].plens_first;
    }
    rb->nplens = out;
    free(tmp);
    free(first);
    free(fill);
}

/* The build hashes were sized for the route count; the published ones fit the key counts. */
static void build_buckets(struct ridx_build *rb)
{
    rb->ngbuckets = pow2_buckets(rb->ngroups);
    rb->gbuckets = new_buckets(rb->ngbuckets);
    for (uint32_t g = 0; g < rb->ngroups; g++) {
        uint32_t i;

        if (rb->groups[g].kind == SHM_HOST_ANY) {
            continue;
        }
        for (i = rb->groups[g].hash & (rb->ngbuckets - 1); rb->gbuckets[i] != SHM_NONE;
             i = (i + 1) & (rb->ngbuckets - 1)) {
        }
        rb->gbuckets[i] = g;
    }
    rb->npbuckets = pow2_buckets(rb->npaths);
    rb->pbuckets = new_buckets(rb->npbuckets);
    for (uint32_t p = 0; p < rb->npaths; p++) {
        uint32_t i;

        for (i = rb->paths[p].hash & (rb->npbuckets - 1); rb->pbuckets[i] != SHM_NONE;
             i = (i + 1) & (rb->npbuckets - 1)) {
        }
        rb->pbuckets[i] = p;
    }
}

static void ridx_build(struct ridx_build *rb, const struct ms_config *cfg)
{
    size_t n = cfg->nroutes;

    DSP_ASSERT(n < UINT32_MAX / 4);
    memset(rb, 0, sizeof(*rb));
    rb->nroutes = (uint32_t)n;
    rb->any_group = SHM_NONE;
    rb->host = dsp_xmalloc((n + 1) * sizeof(*rb->host));
    rb->path = dsp_xmalloc((n + 1) * sizeof(*rb->path));
    rb->hlen = dsp_xmalloc((n + 1) * sizeof(*rb->hlen));
    rb->plen = dsp_xmalloc((n + 1) * sizeof(*rb->plen));
    rb->kind = dsp_xmalloc((n + 1) * sizeof(*rb->kind));
    rb->rgroup = dsp_xmalloc((n + 1) * sizeof(*rb->rgroup));
    rb->rpath = dsp_xmalloc((n + 1) * sizeof(*rb->rpath));
    rb->groups = dsp_xcalloc(n + 1, sizeof(*rb->groups));
    rb->group_rep = dsp_xmalloc((n + 1) * sizeof(*rb->group_rep));
    rb->paths = dsp_xcalloc(n + 1, sizeof(*rb->paths));
    rb->path_rep = dsp_xmalloc((n + 1) * sizeof(*rb->path_rep));

    for (size_t r = 0; r < n; r++) {
        const struct ms_route *mr = &cfg->routes[r];
        const char *h = mr->host != NULL ? mr->host : "*";
        const char *p = mr->path != NULL ? mr->path : "/";
        size_t hl = strlen(h), pl = strlen(p);

        DSP_ASSERT(hl < UINT32_MAX && pl < UINT32_MAX);
        rb->host[r] = h;
        rb->path[r] = p;
        rb->hlen[r] = (uint32_t)hl;
        rb->plen[r] = (uint32_t)pl;
        if (hl == 1 && h[0] == '*') {
            rb->kind[r] = SHM_HOST_ANY;
        } else if (hl >= 2 && h[0] == '*' && h[1] == '.') {
            rb->kind[r] = SHM_HOST_WILDCARD;
        } else {
            rb->kind[r] = SHM_HOST_EXACT;
        }
    }
    build_groups(rb, cfg);
    build_paths(rb);
    build_lists(rb, cfg);
    build_plens(rb);
    build_buckets(rb);
}

static void ridx_dispose(struct ridx_build *rb)
{
    free(rb->host);
    free(rb->path);
    free(rb->hlen);
    free(rb->plen);
    free(rb->kind);
    free(rb->rgroup);
    free(rb->rpath);
    free(rb->groups);
    free(rb->group_rep);
    free(rb->paths);
    free(rb->path_rep);
    free(rb->plens);
    free(rb->list);
    free(rb->gbuckets);
    free(rb->pbuckets);
}

/* ---- layout and writing ----------------------------------------------------------------- */

/* The string blob starts with one NUL that every empty or missing string points at. */
struct blob {
    char *base;                  /* the snapshot */
    uint64_t start;              /* strings_off */
    uint64_t cur;
    uint64_t end;
};

static uint64_t str_need(const char *s)
{
    return s != NULL && s[0] != '\0' ? strlen(s) + 1 : 0;
}

static struct shm_str put_strn(struct blob *b, const char *s, size_t len)
{
    struct shm_str out = {(uint32_t)b->start, 0};

    if (s == NULL || len == 0) {
        return out;
    }
    DSP_ASSERT(b->cur + len + 1 <= b->end);
    memcpy(b->base + b->cur, s, len);
    b->base[b->cur + len] = '\0';
    out.off = (uint32_t)b->cur;
    out.len = (uint32_t)len;
    b->cur += len + 1;
    return out;
}

static struct shm_str put_str(struct blob *b, const char *s)
{
    return put_strn(b, s, s != NULL ? strlen(s) : 0);
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

void *ms_compile(const struct ms_config *cfg, uint64_t gen, size_t *size)
{
    static const size_t ridx_elsz[SHM_RIDX_NTABLES] = {
        [SHM_RIDX_META] = sizeof(struct shm_ridx_meta),
        [SHM_RIDX_GROUPS] = sizeof(struct shm_ridx_group),
        [SHM_RIDX_GROUP_BUCKETS] = sizeof(uint32_t),
        [SHM_RIDX_PLENS] = sizeof(uint32_t),
        [SHM_RIDX_PATHS] = sizeof(struct shm_ridx_path),
        [SHM_RIDX_PATH_BUCKETS] = sizeof(uint32_t),
        [SHM_RIDX_LIST] = sizeof(uint32_t),
    };
    uint32_t ridx_count[SHM_RIDX_NTABLES];
    uint64_t ridx_off[SHM_RIDX_NTABLES];
    struct ridx_build rb;
    struct shm_snap_hdr *h;
    struct shm_listener *ls;
    struct shm_cidr *tc;
    struct shm_service *sv;
    struct shm_backend *be;
    struct shm_route *rt;
    struct shm_ridx_meta *meta;
    struct shm_ridx_group *gr;
    struct shm_ridx_path *pa;
    struct shm_str *rhost;
    struct blob b;
    uint64_t cur, strings_need, nbackends = 0;
    uint64_t lo, to, so, bo, ro, co, total;
    char *base;

    ridx_build(&rb, cfg);

    /* Size the string blob exactly: it is written in the same order below. */
    strings_need = 1 + str_need(cfg->path) + str_need(cfg->tls.self_signed_cn);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        strings_need += str_need(cfg->listeners[i].address);
    }
    for (size_t i = 0; i < cfg->nservices; i++) {
        const struct ms_service *s = &cfg->services[i];

        strings_need += str_need(s->name) + str_need(s->health.path);
        for (size_t j = 0; j < s->nbackends; j++) {
            strings_need += str_need(s->backends[j].address);
        }
        nbackends += s->nbackends;
    }
    for (uint32_t r = 0; r < rb.nroutes; r++) {
        strings_need += rb.hlen[r] + 1u + rb.plen[r] + 1u;
    }

    cur = ALIGN8(sizeof(struct shm_snap_hdr));
    lo = table(&cur, cfg->nlisteners, sizeof(struct shm_listener));
    to = table(&cur, cfg->ntrusted, sizeof(struct shm_cidr));
    so = table(&cur, cfg->nservices, sizeof(struct shm_service));
    bo = table(&cur, nbackends, sizeof(struct shm_backend));
    ro = table(&cur, rb.nroutes, sizeof(struct shm_route));
    co = table(&cur, 0, 1);
    ridx_count[SHM_RIDX_META] = 1;
    ridx_count[SHM_RIDX_GROUPS] = rb.ngroups;
    ridx_count[SHM_RIDX_GROUP_BUCKETS] = rb.ngbuckets;
    ridx_count[SHM_RIDX_PLENS] = rb.nplens;
    ridx_count[SHM_RIDX_PATHS] = rb.npaths;
    ridx_count[SHM_RIDX_PATH_BUCKETS] = rb.npbuckets;
    ridx_count[SHM_RIDX_LIST] = rb.nlist;
    for (int t = 0; t < SHM_RIDX_NTABLES; t++) {
        ridx_off[t] = table(&cur, ridx_count[t], ridx_elsz[t]);
    }
    total = ALIGN8(cur + strings_need);
    /* Offsets are 32-bit in the ABI. */
    DSP_ASSERT(total <= UINT32_MAX);

    base = dsp_xcalloc(1, (size_t)total);
    h = (struct shm_snap_hdr *)(void *)base;
    h->magic = SHM_SNAP_MAGIC;
    h->version = SHM_SNAP_VERSION;
    h->gen = gen;
    h->size = total;
    h->loaded_at = (uint64_t)time(NULL);
    h->source = SHM_SOURCE_FILE;
    h->limits.max_connections = u64_of(cfg->limits.max_connections);
    h->limits.max_header_bytes = u64_of(cfg->limits.max_header_bytes);
    h->limits.max_body_bytes = u64_of(cfg->limits.max_body_bytes);
    h->limits.header_timeout_ms = u32_of(cfg->limits.header_timeout_ms);
    h->limits.idle_timeout_ms = u32_of(cfg->limits.idle_timeout_ms);
    h->limits.shutdown_timeout_ms = u32_of(cfg->limits.shutdown_timeout_ms);
    h->limits.tunnel_idle_timeout_ms = u32_of(cfg->limits.tunnel_idle_timeout_ms);
    h->listeners_off = (uint32_t)lo;
    h->nlisteners = (uint32_t)cfg->nlisteners;
    h->trusted_off = (uint32_t)to;
    h->ntrusted = (uint32_t)cfg->ntrusted;
    h->services_off = (uint32_t)so;
    h->nservices = (uint32_t)cfg->nservices;
    h->backends_off = (uint32_t)bo;
    h->nbackends = (uint32_t)nbackends;
    h->routes_off = (uint32_t)ro;
    h->nroutes = rb.nroutes;
    h->certs_off = (uint32_t)co;
    h->ncerts = 0;
    h->strings_off = (uint32_t)cur;
    h->strings_len = (uint32_t)strings_need;
    for (int t = 0; t < SHM_RIDX_NTABLES; t++) {
        h->ridx.off[t] = (uint32_t)ridx_off[t];
        h->ridx.count[t] = ridx_count[t];
    }
    for (int t = SHM_RIDX_NTABLES; t < (int)DSP_ARRAY_SIZE(h->ridx.off); t++) {
        h->ridx.off[t] = (uint32_t)co;
    }

    b.base = base;
    b.start = cur;
    b.cur = cur + 1; /* the shared empty string; calloc already wrote its NUL */
    b.end = cur + strings_need;
    h->config_path = put_str(&b, cfg->path);
    h->self_signed_cn = put_str(&b, cfg->tls.self_signed_cn);

    ls = (struct shm_listener *)(void *)(base + lo);
    for (size_t i = 0; i < cfg->nlisteners; i++) {
        const struct ms_listener *l = &cfg->listeners[i];

        put_addr(&l->ss, &ls[i].family, &ls[i].port, ls[i].ip);
        ls[i].tls = l->tls != 0;
        ls[i].proxy_protocol = l->proxy_protocol != 0;
        ls[i].address = put_str(&b, l->address);
    }

    tc = (struct shm_cidr *)(void *)(base + to);
    for (size_t i = 0; i < cfg->ntrusted; i++) {
        tc[i].family = cfg->trusted[i].family;
        tc[i].prefix = cfg->trusted[i].prefix;
        memcpy(tc[i].addr, cfg->trusted[i].addr, sizeof(tc[i].addr));
    }

    sv = (struct shm_service *)(void *)(base + so);
    be = (struct shm_backend *)(void *)(base + bo);
    nbackends = 0;
    for (size_t i = 0; i < cfg->nservices; i++) {
        const struct ms_service *s = &cfg->services[i];
        struct shm_service *o = &sv[i];

        o->name = put_str(&b, s->name);
        o->backends_first = (uint32_t)nbackends;
        o->nbackends = (uint32_t)s->nbackends;
        o->balance = s->balance == MS_BALANCE_LEASTCONN ? SHM_BALANCE_LEASTCONN
                     : s->balance == MS_BALANCE_IPHASH  ? SHM_BALANCE_IPHASH
                                                        : SHM_BALANCE_RR;
        o->rt_slot = SHM_NONE;
        o->retries = u32_of(s->retries);
        o->connect_timeout_ms = u32_of(s->connect_timeout_ms);
        o->response_timeout_ms = u32_of(s->response_timeout_ms);
        o->health_enabled = s->health.enabled != 0;
        o->health_interval_ms = u32_of(s->health.interval_ms);
        o->health_timeout_ms = u32_of(s->health.timeout_ms);
        o->health_fall = u32_of(s->health.fall);
        o->health_rise = u32_of(s->health.rise);
        o->health_start_down = s->health.start_down != 0;
        o->health_path = put_str(&b, s->health.path);
        o->cb_enabled = s->circuit.enabled != 0;
        o->cb_failures = u32_of(s->circuit.failures);
        o->cb_open_ms = u32_of(s->circuit.open_ms);
        o->cb_count_5xx = s->circuit.count_5xx != 0;
        for (size_t j = 0; j < s->nbackends; j++) {
            const struct ms_backend *mb = &s->backends[j];
            struct shm_backend *ob = &be[nbackends++];

            ob->address = put_str(&b, mb->address);
            ob->service = (uint32_t)i;
            ob->weight = u32_of(mb->weight);
            ob->rt_slot = SHM_NONE;
            put_addr(&mb->ss, &ob->family, &ob->port, ob->ip);
            o->total_weight += ob->weight;
        }
    }

    rt = (struct shm_route *)(void *)(base + ro);
    for (uint32_t r = 0; r < rb.nroutes; r++) {
        const struct ms_route *mr = &cfg->routes[r];

        DSP_ASSERT(mr->service_idx < cfg->nservices);
        rt[r].host = put_strn(&b, rb.host[r], rb.hlen[r]);
        rt[r].path = put_strn(&b, rb.path[r], rb.plen[r]);
        rt[r].methods = mr->methods;
        rt[r].priority = mr->priority;
        rt[r].service = (uint32_t)mr->service_idx;
        rt[r].order = r;
        rt[r].host_kind = rb.kind[r];
        sv[mr->service_idx].nroutes++;
    }
    DSP_ASSERT(b.cur <= b.end);

    /* The route index: keys point at the routes' own strings. */
    meta = (struct shm_ridx_meta *)(void *)(base + ridx_off[SHM_RIDX_META]);
    meta->any_group = rb.any_group;
    gr = (struct shm_ridx_group *)(void *)(base + ridx_off[SHM_RIDX_GROUPS]);
    for (uint32_t g = 0; g < rb.ngroups; g++) {
        rhost = &rt[rb.group_rep[g]].host;
        gr[g] = rb.groups[g];
        gr[g].key_off = rhost->off + (rb.groups[g].kind == SHM_HOST_WILDCARD ? 2u : 0u);
        gr[g].key_len = rhost->len - (rb.groups[g].kind == SHM_HOST_WILDCARD ? 2u : 0u);
    }
    pa = (struct shm_ridx_path *)(void *)(base + ridx_off[SHM_RIDX_PATHS]);
    for (uint32_t p = 0; p < rb.npaths; p++) {
        pa[p] = rb.paths[p];
        pa[p].key_off = rt[rb.path_rep[p]].path.off;
    }
    memcpy(base + ridx_off[SHM_RIDX_GROUP_BUCKETS], rb.gbuckets,
           (size_t)rb.ngbuckets * sizeof(uint32_t));
    memcpy(base + ridx_off[SHM_RIDX_PLENS], rb.plens, (size_t)rb.nplens * sizeof(uint32_t));
    memcpy(base + ridx_off[SHM_RIDX_PATH_BUCKETS], rb.pbuckets,
           (size_t)rb.npbuckets * sizeof(uint32_t));
    memcpy(base + ridx_off[SHM_RIDX_LIST], rb.list, (size_t)rb.nlist * sizeof(uint32_t));

    ridx_dispose(&rb);
    *size = (size_t)total;
    return base;
}
