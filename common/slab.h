/* dispatcher: fixed-size objects that live as long as a connection, packed side by side in
 * 64 KiB chunks of their own instead of the malloc heap.
 *
 * A connection's long-lived objects (the client connection, its HTTP/2 state) are allocated while
 * large short-lived ones come and go (an nghttp2 session, its streams, their buffers). From the
 * heap, each long-lived one ends up in its own page among the holes the others left: malloc_trim()
 * cannot give those pages back, and an idle HTTP/2 connection cost ~5.6 KiB where its objects are
 * 640 bytes. From a slab they are dense, and the heap's holes become whole free pages.
 *
 * Chunks are mapped (mmap) on the 64 KiB boundary their header sits on, so an object finds its
 * chunk from its address. A new chunk's slots are handed out in order (its pages are touched
 * only as they are used); freed slots go to the chunk's free list; a chunk that empties is
 * unmapped, except the last one kept as a spare. Not thread-safe: one slab per worker thread.
 * Under AddressSanitizer, free and never-used slots are poisoned. */
#ifndef DSP_SLAB_H
#define DSP_SLAB_H

#include <stddef.h>
#include <stdint.h>

#define DSP_SLAB_CHUNK    ((size_t)64 * 1024)
#define DSP_SLAB_HDR      64u /* a chunk's header: its slots start this far in */
#define DSP_SLAB_SLOT(sz) (((size_t)(sz) + 15) & ~(size_t)15)

struct dsp_slab_chunk;

struct dsp_slab {
    uint32_t size;                /* bytes per slot (a multiple of 16) */
    uint32_t per;                 /* slots per chunk */
    struct dsp_slab_chunk *avail; /* chunks with a free or never-used slot */
    struct dsp_slab_chunk *spare; /* an empty chunk kept mapped */
    struct dsp_slab_chunk *all;   /* every other chunk */
    uint64_t chunks;              /* chunks mapped, the spare included */
    uint64_t live;                /* objects allocated and not freed */
};

/* Objects of <size> bytes (8 to 16 KiB): a static slab's initializer, or dsp_slab_init(). */
#define DSP_SLAB_INIT(sz)                                                                          \
    {                                                                                              \
        .size = (uint32_t)DSP_SLAB_SLOT(sz),                                                       \
        .per = (uint32_t)((DSP_SLAB_CHUNK - DSP_SLAB_HDR) / DSP_SLAB_SLOT(sz))                     \
    }
void dsp_slab_init(struct dsp_slab *s, size_t size);
/* A zeroed object, or NULL (no memory). */
void *dsp_slab_calloc(struct dsp_slab *s);
/* Give back <p> (from dsp_slab_calloc on <s>; NULL is ignored). */
void dsp_slab_free(struct dsp_slab *s, void *p);
/* Unmap every chunk: every object of <s> is gone at once (tests). */
void dsp_slab_destroy(struct dsp_slab *s);

#endif
