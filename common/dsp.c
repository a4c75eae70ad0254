/* dispatcher: the few helpers every module needs (clock, checked allocation, assertions). */
#include "common/dsp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void dsp_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "dispatcher: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

uint64_t dsp_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t dsp_wall_s(void)
{
    return (uint64_t)time(NULL);
}

static void oom(size_t n)
{
    fprintf(stderr, "dispatcher: out of memory allocating %zu bytes\n", n);
    abort();
}

void *dsp_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL) {
        oom(n);
    }
    return p;
}

void *dsp_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);

    if (p == NULL) {
        oom(n * sz);
    }
    return p;
}

void *dsp_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (q == NULL) {
        oom(n);
    }
    return q;
}

char *dsp_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = dsp_xmalloc(n);

    memcpy(p, s, n);
    return p;
}
