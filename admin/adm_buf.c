/* dispatcher: growable admin output buffer (see adm_buf.h). */
#include "admin/adm_buf.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/str.h"

void adm_buf_dispose(struct adm_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

void adm_buf_reset(struct adm_buf *b)
{
    b->len = 0;
    b->overflow = 0;
    if (b->p != NULL) {
        b->p[0] = '\0';
    }
}

void adm_buf_consume(struct adm_buf *b, size_t n)
{
    if (n >= b->len) {
        adm_buf_reset(b);
        return;
    }
    memmove(b->p, b->p + n, b->len - n + 1);
    b->len -= n;
}

/* Make room for <n> more bytes plus the NUL. Returns 0, or -1 (overflow set). */
static int reserve(struct adm_buf *b, size_t n)
{
    size_t want, cap;
    char *p;

    if (b->overflow) {
        return -1;
    }
    if (n > ADM_BUF_LIMIT || b->len + n + 1 > ADM_BUF_LIMIT) {
        b->overflow = 1;
        return -1;
    }
    want = b->len + n + 1;
    if (want <= b->cap) {
        return 0;
    }
    cap = b->cap ? b->cap : 256;
    while (cap < want) {
        cap *= 2;
    }
    if (cap > ADM_BUF_LIMIT) {
        cap = ADM_BUF_LIMIT;
    }
    p = realloc(b->p, cap);
    if (p == NULL) {
        b->overflow = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void adm_buf_add(struct adm_buf *b, const char *data, size_t n)
{
    if (reserve(b, n) != 0) {
        return;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void adm_buf_adds(struct adm_buf *b, const char *s)
{
    adm_buf_add(b, s, strlen(s));
}

void adm_buf_addf(struct adm_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n) != 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void adm_buf_u64(struct adm_buf *b, unsigned long long v)
{
    adm_buf_addf(b, "%llu", v);
}

void adm_buf_jstr(struct adm_buf *b, const char *s, size_t n)
{
    struct str_buf sb;

    /* Escaping grows a byte to at most 6. */
    if (n > ADM_BUF_LIMIT / 6 || reserve(b, n * 6 + 2) != 0) {
        b->overflow = 1;
        return;
    }
    str_init(&sb, b->p + b->len, b->cap - b->len - 1);
    str_add_jstr(&sb, s, n);
    b->len += sb.len;
    b->p[b->len] = '\0';
}

void adm_buf_jstrz(struct adm_buf *b, const char *s)
{
    adm_buf_jstr(b, s, strlen(s));
}

void adm_buf_f1(struct adm_buf *b, double v)
{
    if (!isfinite(v)) {
        v = 0.0;
    }
    adm_buf_addf(b, "%.1f", v);
}
