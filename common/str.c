/* dispatcher: bounded string builder. */
#include "common/str.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void str_addf(struct str_buf *s, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (s->overflow) {
        return;
    }
    va_start(ap, fmt);
    n = vsnprintf(s->p + s->len, s->cap - s->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= s->cap - s->len) {
        s->overflow = 1;
        return;
    }
    s->len += (size_t)n;
}

void str_add_u64(struct str_buf *s, unsigned long long v)
{
    char tmp[24];
    int i = (int)sizeof(tmp);

    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    str_add(s, tmp + i, sizeof(tmp) - (size_t)i);
}

void str_add_json(struct str_buf *s, const char *data, size_t n)
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < n && !s->overflow; i++) {
        unsigned char ch = (unsigned char)data[i];
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            str_add(s, esc, 2);
        } else if (ch < 0x20 || ch >= 0x7f) {
            /* Non-ASCII bytes from the network may not be valid UTF-8: escape them all. */
            char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            str_add(s, esc, 6);
        } else {
            str_add(s, (const char *)&data[i], 1);
        }
    }
}

void str_add_jstr(struct str_buf *s, const char *data, size_t n)
{
    str_add(s, "\"", 1);
    str_add_json(s, data, n);
    str_add(s, "\"", 1);
}
