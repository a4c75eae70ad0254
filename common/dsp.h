/* dispatcher: project-wide status codes, version and assertion macros. Every module includes it. */
#ifndef DSP_DSP_H
#define DSP_DSP_H

#include <stddef.h>
#include <stdint.h>

#define DSP_VERSION "0.1.0"

/* Status vocabulary shared by all modules (nginx-style). */
#define DSP_OK       0
#define DSP_ERR      (-1)
#define DSP_AGAIN    (-2) /* would block: try again when the fd is ready */
#define DSP_DECLINED (-3) /* not handled here (e.g. no route matched) */

#define DSP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define DSP_MIN(a, b)     ((a) < (b) ? (a) : (b))
#define DSP_MAX(a, b)     ((a) > (b) ? (a) : (b))
#define DSP_UNUSED(x)     ((void)(x))
#define DSP_CACHELINE     64

void dsp_assert_fail(const char *expr, const char *file, int line);

#define DSP_ASSERT(e)                                                                              \
    do {                                                                                           \
        if (!(e)) {                                                                                \
            dsp_assert_fail(#e, __FILE__, __LINE__);                                               \
        }                                                                                          \
    } while (0)

/* Monotonic milliseconds (coarse clock: cheap enough to call once per loop pass). */
uint64_t dsp_now_ms(void);
/* Wall-clock seconds since the epoch. */
uint64_t dsp_wall_s(void);

/* Allocation that aborts on OOM: only for master/config code, never on the worker request path. */
void *dsp_xmalloc(size_t n);
void *dsp_xcalloc(size_t n, size_t sz);
void *dsp_xrealloc(void *p, size_t n);
char *dsp_xstrdup(const char *s);

#endif
