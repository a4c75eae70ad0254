/* Unit tests for common/slab: dense fixed-size objects in 64 KiB chunks. */
#include "tests/unit/unit.h"

#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/slab.h"

#define N 2000

static uintptr_t chunk(const void *p)
{
    return (uintptr_t)p & ~(uintptr_t)(DSP_SLAB_CHUNK - 1);
}

static void test_sizes(void)
{
    struct dsp_slab s;

    dsp_slab_init(&s, 1);
    CU_ASSERT_EQUAL(s.size, 16);
    dsp_slab_init(&s, 336);
    CU_ASSERT_EQUAL(s.size, 336);
    dsp_slab_init(&s, 297);
    CU_ASSERT_EQUAL(s.size, 304);
    CU_ASSERT_EQUAL(s.per, (DSP_SLAB_CHUNK - 64) / 304);
    {
        struct dsp_slab t = DSP_SLAB_INIT(297); /* (the static initializer agrees) */
        CU_ASSERT(t.size == s.size && t.per == s.per && t.avail == NULL && t.live == 0);
    }
}

/* Objects are zeroed, distinct, inside one 64 KiB chunk each, and packed: N objects take the
 * fewest chunks that hold them. */
static void test_dense(void)
{
    static void *p[N];
    struct dsp_slab s;
    size_t want;

    dsp_slab_init(&s, 300);
    for (int i = 0; i < N; i++) {
        unsigned char *o = dsp_slab_calloc(&s);
        CU_ASSERT_PTR_NOT_NULL_FATAL(o);
        for (uint32_t k = 0; k < s.size; k++) {
            if (o[k] != 0) {
                CU_FAIL("not zeroed");
                break;
            }
        }
        memset(o, 0xa5, 300);
        CU_ASSERT_EQUAL(chunk(o), chunk(o + s.size - 1));
        CU_ASSERT_EQUAL((uintptr_t)o % 16, 0);
        p[i] = o;
    }
    want = (N + s.per - 1) / s.per;
    CU_ASSERT_EQUAL(s.chunks, want);
    CU_ASSERT_EQUAL(s.live, N);
    for (int i = 1; i < N; i++) {
        /* handed out in order within a chunk: no two overlap */
        if (chunk(p[i]) == chunk(p[i - 1])) {
            CU_ASSERT((char *)p[i] - (char *)p[i - 1] == (ptrdiff_t)s.size);
        }
    }
    dsp_slab_destroy(&s);
    CU_ASSERT_EQUAL(s.chunks, 0);
}

/* Freed slots are reused before new chunks are mapped; a chunk that empties is unmapped except
 * one spare; nothing handed out twice. */
static void test_reuse(void)
{
    static void *p[N];
    struct dsp_slab s;
    unsigned seed = 7;
    size_t chunks;

    dsp_slab_init(&s, 512);
    for (int i = 0; i < N; i++) {
        p[i] = dsp_slab_calloc(&s);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p[i]);
        *(int *)p[i] = i;
    }
    chunks = s.chunks;
    /* free every other one, then as many again: no new chunk */
    for (int i = 0; i < N; i += 2) {
        dsp_slab_free(&s, p[i]);
        p[i] = NULL;
    }
    CU_ASSERT_EQUAL(s.live, N / 2);
    for (int i = 0; i < N; i += 2) {
        p[i] = dsp_slab_calloc(&s);
        CU_ASSERT_PTR_NOT_NULL_FATAL(p[i]);
        *(int *)p[i] = i;
    }
    CU_ASSERT_EQUAL(s.chunks, chunks);
    for (int i = 0; i < N; i++) {
        CU_ASSERT_EQUAL(*(int *)p[i], i); /* (a slot given twice would have been overwritten) */
    }
    /* free all in a shuffled order: one chunk (the spare) stays mapped */
    for (int i = N - 1; i > 0; i--) {
        int j = (int)(rand_r(&seed) % (unsigned)(i + 1));
        void *t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
    for (int i = 0; i < N; i++) {
        dsp_slab_free(&s, p[i]);
    }
    dsp_slab_free(&s, NULL);
    CU_ASSERT_EQUAL(s.live, 0);
    CU_ASSERT_EQUAL(s.chunks, 1);
    /* the spare is used again, from its first slot */
    p[0] = dsp_slab_calloc(&s);
    CU_ASSERT_EQUAL(s.chunks, 1);
    CU_ASSERT_EQUAL((char *)p[0] - (char *)chunk(p[0]), 64);
    dsp_slab_free(&s, p[0]);
    dsp_slab_destroy(&s);
    CU_ASSERT_EQUAL(s.chunks, 0);
}

/* A pointer that is not an object's start, or belongs to another slab, stops the process
 * instead of corrupting the free lists. */
static void test_foreign(void)
{
    struct dsp_slab a, b;
    char *p;

    dsp_slab_init(&a, 64);
    dsp_slab_init(&b, 64);
    p = dsp_slab_calloc(&a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    for (int k = 0; k < 3; k++) {
        pid_t pid = fork();
        int st = 0;

        if (pid == 0) {
            if (k == 0) {
                dsp_slab_free(&a, p + 8);
            } else if (k == 1) {
                dsp_slab_free(&b, p);
            } else {
                dsp_slab_free(&a, p + 64 * 5); /* never handed out */
            }
            _exit(0);
        }
        CU_ASSERT_FATAL(pid > 0);
        CU_ASSERT_EQUAL(waitpid(pid, &st, 0), pid);
        CU_ASSERT(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    }
    dsp_slab_free(&a, p);
    dsp_slab_destroy(&a);
    dsp_slab_destroy(&b);
}

UNIT_SUITE(slab, {"sizes", test_sizes}, {"dense", test_dense}, {"reuse", test_reuse},
           {"foreign", test_foreign})
