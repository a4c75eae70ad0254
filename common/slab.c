/* dispatcher: fixed-size objects packed in 64 KiB chunks (common/slab.h). */
#include "common/slab.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DSP_SLAB_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define DSP_SLAB_ASAN 1
#endif

#ifdef DSP_SLAB_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/lsan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
/* Objects hold the only pointers to heap blocks (buffers, sessions): the leak checker must see
 * them, and it scans no mapping it was not told about. */
#define ROOT(p, n)   __lsan_register_root_region((p), (n))
#define UNROOT(p, n) __lsan_unregister_root_region((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#define ROOT(p, n)     ((void)(p), (void)(n))
#define UNROOT(p, n)   ((void)(p), (void)(n))
#endif

#define SLAB_MAGIC   0x64736c62u /* "dslb" */
#define DSP_SLAB_HDR 64u         /* the header's room: slots start 64 bytes in */

struct dsp_slab_chunk {
    uint32_t magic;
    uint32_t used;  /* slots handed out at least once: [0, used) */
    uint32_t live;  /* slots allocated now */
    uint8_t listed; /* on the slab's avail list */
    struct dsp_slab *slab;
    void *free;                           /* freed slots, linked through their first word */
    struct dsp_slab_chunk *next, *prev;   /* the avail list */
    struct dsp_slab_chunk *anext, *aprev; /* every chunk mapped but the spare */
};

_Static_assert(sizeof(struct dsp_slab_chunk) <= DSP_SLAB_HDR, "slab chunk header room");

static char *slots(struct dsp_slab_chunk *c)
{
    return (char *)c + DSP_SLAB_HDR;
}

void dsp_slab_init(struct dsp_slab *s, size_t size)
{
    memset(s, 0, sizeof(*s));
    if (size < sizeof(void *)) {
        size = sizeof(void *);
    }
    if (size > 16 * 1024) {
        abort(); /* (a programming error: the callers pass sizeof a struct) */
    }
    s->size = (uint32_t)DSP_SLAB_SLOT(size);
    s->per = (uint32_t)((DSP_SLAB_CHUNK - DSP_SLAB_HDR) / s->size);
}

static struct dsp_slab_chunk *chunk_of(const struct dsp_slab *s, void *p)
{
    struct dsp_slab_chunk *c = (struct dsp_slab_chunk *)((uintptr_t)p &
                                                         ~(uintptr_t)(DSP_SLAB_CHUNK - 1));

    if (c->magic != SLAB_MAGIC || c->slab != s || (char *)p < slots(c) ||
        (size_t)((char *)p - slots(c)) % s->size != 0 ||
        (size_t)((char *)p - slots(c)) / s->size >= c->used) {
        abort(); /* not one of ours: freeing it would corrupt the slab */
    }
    return c;
}

static void unlist(struct dsp_slab *s, struct dsp_slab_chunk *c)
{
    if (!c->listed) {
        return;
    }
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        s->avail = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    c->next = c->prev = NULL;
    c->listed = 0;
}

static void list(struct dsp_slab *s, struct dsp_slab_chunk *c)
{
    if (c->listed) {
        return;
    }
    c->prev = NULL;
    c->next = s->avail;
    if (s->avail != NULL) {
        s->avail->prev = c;
    }
    s->avail = c;
    c->listed = 1;
}

/* A chunk on its own 64 KiB boundary: map twice the size, give back both ends. */
static struct dsp_slab_chunk *chunk_map(struct dsp_slab *s)
{
    size_t len = 2 * DSP_SLAB_CHUNK;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *a;
    struct dsp_slab_chunk *c;

    if (m == MAP_FAILED) {
        return NULL;
    }
    a = (char *)(((uintptr_t)m + DSP_SLAB_CHUNK - 1) & ~(uintptr_t)(DSP_SLAB_CHUNK - 1));
    if (a > m) {
        munmap(m, (size_t)(a - m));
    }
    if (a + DSP_SLAB_CHUNK < m + len) {
        munmap(a + DSP_SLAB_CHUNK, (size_t)(m + len - (a + DSP_SLAB_CHUNK)));
    }
    c = (struct dsp_slab_chunk *)(void *)a;
    c->magic = SLAB_MAGIC;
    c->slab = s;
    POISON(slots(c), DSP_SLAB_CHUNK - DSP_SLAB_HDR);
    ROOT(a, DSP_SLAB_CHUNK);
    s->chunks++;
    return c;
}

static void all_add(struct dsp_slab *s, struct dsp_slab_chunk *c)
{
    c->aprev = NULL;
    c->anext = s->all;
    if (s->all != NULL) {
        s->all->aprev = c;
    }
    s->all = c;
}

static void all_del(struct dsp_slab *s, struct dsp_slab_chunk *c)
{
    if (c->aprev != NULL) {
        c->aprev->anext = c->anext;
    } else {
        s->all = c->anext;
    }
    if (c->anext != NULL) {
        c->anext->aprev = c->aprev;
    }
    c->anext = c->aprev = NULL;
}

static void chunk_unmap(struct dsp_slab *s, struct dsp_slab_chunk *c)
{
    UNPOISON(slots(c), DSP_SLAB_CHUNK - DSP_SLAB_HDR);
    UNROOT(c, DSP_SLAB_CHUNK);
    c->magic = 0;
    munmap(c, DSP_SLAB_CHUNK);
    s->chunks--;
}

void *dsp_slab_calloc(struct dsp_slab *s)
{
    struct dsp_slab_chunk *c = s->avail;
    char *p;

    if (c == NULL) {
        if (s->spare != NULL) {
            c = s->spare;
            s->spare = NULL;
        } else if ((c = chunk_map(s)) == NULL) {
            return NULL;
        }
        all_add(s, c);
        list(s, c);
    }
    if (c->free != NULL) {
        p = c->free;
        UNPOISON(p, s->size);
        memcpy(&c->free, p, sizeof(void *));
    } else {
        p = slots(c) + (size_t)c->used * s->size;
        c->used++;
        UNPOISON(p, s->size);
    }
    c->live++;
    if (c->free == NULL && c->used == s->per) {
        unlist(s, c); /* full */
    }
    s->live++;
    memset(p, 0, s->size);
    return p;
}

void dsp_slab_free(struct dsp_slab *s, void *p)
{
    struct dsp_slab_chunk *c;

    if (p == NULL) {
        return;
    }
    c = chunk_of(s, p);
    memcpy(p, &c->free, sizeof(void *));
    POISON(p, s->size);
    c->free = p;
    c->live--;
    s->live--;
    if (c->live > 0) {
        list(s, c);
        return;
    }
    /* Empty: its slots start over; it is kept as the spare, or unmapped. */
    unlist(s, c);
    all_del(s, c);
    c->free = NULL;
    c->used = 0;
    POISON(slots(c), DSP_SLAB_CHUNK - DSP_SLAB_HDR);
    if (s->spare == NULL) {
        s->spare = c;
    } else {
        chunk_unmap(s, c);
    }
}

void dsp_slab_destroy(struct dsp_slab *s)
{
    while (s->all != NULL) {
        struct dsp_slab_chunk *c = s->all;
        all_del(s, c);
        chunk_unmap(s, c);
    }
    if (s->spare != NULL) {
        chunk_unmap(s, s->spare);
    }
    s->avail = s->spare = NULL;
    s->live = 0;
}
