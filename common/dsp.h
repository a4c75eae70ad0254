/* dispatcher: project-wide version, small macros and helpers. Every module includes it.
 * Functions return 0 on success and -1 on failure; the few that need more outcomes define them
 * next to their API (the transport's XP_WANT_READ/XP_WANT_WRITE in common/xport.h). */
#ifndef DSP_DSP_H
#define DSP_DSP_H

#include <stddef.h>
#include <stdint.h>

#define DSP_VERSION "0.1.0"

#define DSP_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define DSP_MIN(a, b)     ((a) < (b) ? (a) : (b))
#define DSP_MAX(a, b)     ((a) > (b) ? (a) : (b))

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
