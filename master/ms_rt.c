/* dispatcher: runtime slot registry. Runs only at start and reload, so plain arrays and a hash
 * index rebuilt per call are fast enough (tens of thousands of ids in a few milliseconds). */
#include "master/ms_rt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dsp.h"
#include "common/log.h"
#include "shm/shm_mw.h"
#include "shm/shm_snap.h"
#include "shm/shm_stats.h"

struct rt_entry {
    char *key;
    uint32_t slot;
    uint64_t last_gen;    /* newest generation naming it */
    uint64_t retired_gen; /* 0 while live; else the first generation not naming it */
};

struct rt_table {
    struct rt_entry *e;
    size_t n, cap;
    uint32_t *freelist;
    size_t nfree;
    uint32_t next_unused;
    uint32_t limit;
};

struct ms_rt_reg {
    struct rt_table svc;
    struct rt_table be;
    struct rt_table mw;
};

struct ms_rt_reg *ms_rt_reg_new(void)
{
    struct ms_rt_reg *r = dsp_xcalloc(1, sizeof(*r));

    r->svc.limit = SHM_RT_MAX_SERVICES;
    r->be.limit = SHM_RT_MAX_BACKENDS;
    r->svc.freelist = dsp_xcalloc(SHM_RT_MAX_SERVICES, sizeof(uint32_t));
    r->be.freelist = dsp_xcalloc(SHM_RT_MAX_BACKENDS, sizeof(uint32_t));
    r->mw.limit = SHM_RT_MAX_MIDDLEWARES;
    r->mw.freelist = dsp_xcalloc(SHM_RT_MAX_MIDDLEWARES, sizeof(uint32_t));
    return r;
}

static void table_free(struct rt_table *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->e[i].key);
    }
    free(t->e);
    free(t->freelist);
}

void ms_rt_reg_free(struct ms_rt_reg *reg)
{
    if (reg == NULL) {
        return;
    }
    table_free(&reg->svc);
    table_free(&reg->mw);
    table_free(&reg->be);
    free(reg);
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;

    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ull;
    }
    return h;
}

/* Open-addressing index over live entries of <t>: idx[bucket] = entry index + 1. */
struct rt_index {
    uint32_t *idx;
    size_t mask;
};

static void index_build(struct rt_index *ix, const struct rt_table *t, size_t extra)
{
    size_t cap = 16;

    while (cap < (t->n + extra) * 2) {
        cap <<= 1;
    }
    ix->idx = dsp_xcalloc(cap, sizeof(uint32_t));
    ix->mask = cap - 1;
    for (size_t i = 0; i < t->n; i++) {
        size_t b;
        if (t->e[i].retired_gen != 0) {
            continue;
        }
        b = hash_str(t->e[i].key) & ix->mask;
        while (ix->idx[b] != 0) {
            b = (b + 1) & ix->mask;
        }
        ix->idx[b] = (uint32_t)i + 1;
    }
}

static struct rt_entry *index_find(struct rt_index *ix, struct rt_table *t, const char *key,
                                   size_t *bucket)
{
    size_t b = hash_str(key) & ix->mask;

    while (ix->idx[b] != 0) {
        struct rt_entry *e = &t->e[ix->idx[b] - 1];
        if (strcmp(e->key, key) == 0) {
            return e;
        }
        b = (b + 1) & ix->mask;
    }
    *bucket = b;
    return NULL;
}

static int slot_alloc(struct rt_table *t, uint32_t *slot)
{
    if (t->nfree > 0) {
        *slot = t->freelist[--t->nfree];
        return 0;
    }
    if (t->next_unused >= t->limit) {
        return -1;
    }
    *slot = t->next_unused++;
    return 0;
}

/* Look up or create the entry for <key>; returns its slot and sets <*fresh> for new slots. */
static int lookup(struct rt_table *t, struct rt_index *ix, const char *key, uint64_t gen,
                  uint32_t *slot, int *fresh)
{
    size_t bucket = 0;
    struct rt_entry *e = index_find(ix, t, key, &bucket);

    *fresh = 0;
    if (e == NULL) {
        if (slot_alloc(t, slot) != 0) {
            return -1;
        }
        if (t->n == t->cap) {
            t->cap = t->cap ? t->cap * 2 : 64;
            t->e = dsp_xrealloc(t->e, t->cap * sizeof(*t->e));
        }
        e = &t->e[t->n];
        e->key = dsp_xstrdup(key);
        e->slot = *slot;
        e->retired_gen = 0;
        ix->idx[bucket] = (uint32_t)t->n + 1;
        t->n++;
        *fresh = 1;
    }
    e->last_gen = gen;
    *slot = e->slot;
    return 0;
}

static void retire_unseen(struct rt_table *t, uint64_t gen)
{
    for (size_t i = 0; i < t->n; i++) {
        if (t->e[i].retired_gen == 0 && t->e[i].last_gen < gen) {
            t->e[i].retired_gen = gen;
        }
    }
}

/* Middlewares keep their counters by name across reloads. */
static int assign_mws(struct ms_rt_reg *reg, struct shm_rt *rt, struct shm_snap_hdr *snap,
                      uint64_t gen)
{
    uint32_t n = shm_mw_count(snap);
    struct shm_mw *m;
    struct rt_index ix;
    int rc = 0;

    if (n == 0) {
        return 0;
    }
    m = (struct shm_mw *)(void *)((char *)snap + snap->mw_off + shm_mw_region(snap)->mws_off);
    index_build(&ix, &reg->mw, n);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t slot;
        int fresh;

        if (lookup(&reg->mw, &ix, shm_mw_s(snap, m[i].name), gen, &slot, &fresh) != 0) {
            log_error("runtime segment full: more than %u middlewares", SHM_RT_MAX_MIDDLEWARES);
            rc = -1;
            break;
        }
        if (fresh) {
            memset(&rt->mws[slot], 0, sizeof(rt->mws[slot]));
            __atomic_store_n(&rt->mws[slot].in_use, 1, __ATOMIC_RELEASE);
        }
        m[i].rt_slot = slot;
    }
    free(ix.idx);
    return rc;
}

int ms_rt_assign(struct ms_rt_reg *reg, struct shm_rt *rt, struct shm_snap_hdr *snap, uint64_t gen)
{
    struct shm_service *svcs = (struct shm_service *)(void *)((char *)snap + snap->services_off);
    struct shm_backend *bes = (struct shm_backend *)(void *)((char *)snap + snap->backends_off);
    struct rt_index six, bix;
    char key[512];
    int rc = 0;

    index_build(&six, &reg->svc, snap->nservices);
    index_build(&bix, &reg->be, snap->nbackends);
    for (uint32_t i = 0; i < snap->nservices && rc == 0; i++) {
        uint32_t slot;
        int fresh;
        const char *name = shm_s(snap, svcs[i].name);

        if (lookup(&reg->svc, &six, name, gen, &slot, &fresh) != 0) {
            log_error("runtime segment full: more than %u services", SHM_RT_MAX_SERVICES);
            rc = -1;
            break;
        }
        if (fresh) {
            shm_stats_clear_service(rt, slot); /* recycled: reads stats_used */
            memset(&rt->services[slot], 0, sizeof(rt->services[slot]));
            __atomic_store_n(&rt->services[slot].in_use, 1, __ATOMIC_RELEASE);
        }
        svcs[i].rt_slot = slot;
        for (uint32_t j = 0; j < svcs[i].nbackends; j++) {
            struct shm_backend *b = &bes[svcs[i].backends_first + j];
            snprintf(key, sizeof(key), "%s|%s", name, shm_s(snap, b->address));
            if (lookup(&reg->be, &bix, key, gen, &slot, &fresh) != 0) {
                log_error("runtime segment full: more than %u backends", SHM_RT_MAX_BACKENDS);
                rc = -1;
                break;
            }
            if (fresh) {
                struct shm_rt_backend *rb = &rt->backends[slot];
                shm_stats_clear_backend(rt, slot);
                memset(rb, 0, sizeof(*rb));
                rb->state = svcs[i].health_enabled && svcs[i].health_start_down ? SHM_BE_DOWN
                                                                                : SHM_BE_UP;
                __atomic_store_n(&rb->in_use, 1, __ATOMIC_RELEASE);
            }
            b->rt_slot = slot;
        }
    }
    free(six.idx);
    free(bix.idx);
    if (rc == 0) {
        rc = assign_mws(reg, rt, snap, gen);
    }
    if (rc == 0) {
        retire_unseen(&reg->svc, gen);
        retire_unseen(&reg->be, gen);
        retire_unseen(&reg->mw, gen);
    }
    return rc;
}

static void release_table(struct rt_table *t, uint64_t oldest, uint32_t *in_use_base, size_t stride)
{
    size_t w = 0;

    for (size_t i = 0; i < t->n; i++) {
        struct rt_entry *e = &t->e[i];
        if (e->retired_gen != 0 && e->retired_gen <= oldest) {
            uint32_t *in_use = (uint32_t *)(void *)((char *)in_use_base + stride * e->slot);
            __atomic_store_n(in_use, 0, __ATOMIC_RELEASE);
            t->freelist[t->nfree++] = e->slot;
            free(e->key);
            continue;
        }
        t->e[w++] = *e;
    }
    t->n = w;
}

void ms_rt_release(struct ms_rt_reg *reg, struct shm_rt *rt, uint64_t oldest_live_gen)
{
    release_table(&reg->svc, oldest_live_gen, &rt->services[0].in_use, sizeof(rt->services[0]));
    release_table(&reg->be, oldest_live_gen, &rt->backends[0].in_use, sizeof(rt->backends[0]));
    release_table(&reg->mw, oldest_live_gen, &rt->mws[0].in_use, sizeof(rt->mws[0]));
}
