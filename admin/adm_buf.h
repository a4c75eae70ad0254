/* dispatcher: a growable output buffer for admin answers (JSON lines, HTTP responses, metrics).
 * It grows on the heap up to a hard limit; past it the buffer is marked overflowed and further
 * appends are dropped, so a huge configuration can never exhaust the master's memory. */
#ifndef DSP_ADM_BUF_H
#define DSP_ADM_BUF_H

#include <stddef.h>

#define ADM_BUF_LIMIT (256u * 1024u * 1024u)

struct adm_buf {
    char *p; /* heap, NUL-terminated while not overflowed; NULL when empty */
    size_t len;
    size_t cap;
    int overflow; /* an append did not fit under ADM_BUF_LIMIT (or out of memory) */
};

/* All-zero is a valid empty buffer; adm_buf_dispose() frees it and leaves it empty again. */
void adm_buf_dispose(struct adm_buf *b);
/* Forget the content, keep the memory. */
void adm_buf_reset(struct adm_buf *b);
/* Drop the first <n> bytes. */
void adm_buf_consume(struct adm_buf *b, size_t n);

void adm_buf_add(struct adm_buf *b, const char *data, size_t n);
void adm_buf_adds(struct adm_buf *b, const char *s);
void adm_buf_addf(struct adm_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void adm_buf_u64(struct adm_buf *b, unsigned long long v);
/* A JSON string with quotes, escaped as common/str.h does. */
void adm_buf_jstr(struct adm_buf *b, const char *s, size_t n);
void adm_buf_jstrz(struct adm_buf *b, const char *s);
/* A JSON number with one decimal (finite; NaN and infinities print as 0). */
void adm_buf_f1(struct adm_buf *b, double v);

#endif
