/* dispatcher: bounded string building into caller-owned memory (no allocation), with JSON string
 * escaping. Overflow is sticky: once set, nothing more is appended and the caller can check it. */
#ifndef DSP_STR_H
#define DSP_STR_H

#include <stddef.h>
#include <string.h>

struct str_buf {
    char *p;
    size_t len;
    size_t cap;
    int overflow;
};

static inline void str_init(struct str_buf *s, char *mem, size_t cap)
{
    s->p = mem;
    s->len = 0;
    s->cap = cap;
    s->overflow = 0;
}

/* Inline: the head writers call these a few dozen times per request, mostly with literals whose
 * length the compiler then knows. */
static inline void str_add(struct str_buf *s, const char *data, size_t n)
{
    if (s->overflow || n > s->cap - s->len) {
        s->overflow = 1;
        return;
    }
    memcpy(s->p + s->len, data, n);
    s->len += n;
}

static inline void str_adds(struct str_buf *s, const char *cstr)
{
    str_add(s, cstr, strlen(cstr));
}

void str_addf(struct str_buf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void str_add_u64(struct str_buf *s, unsigned long long v);
/* Append <n> bytes of <data> as a JSON string body (no quotes), escaping quotes, backslashes,
 * control bytes and non-UTF-8-safe high bytes (as \u00XX). */
void str_add_json(struct str_buf *s, const char *data, size_t n);
/* Append "\"...\"" with the escaping above. */
void str_add_jstr(struct str_buf *s, const char *data, size_t n);

#endif
