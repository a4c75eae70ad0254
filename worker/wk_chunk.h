/* dispatcher: a strict, incremental decoder/validator of HTTP/1.1 chunked bodies (RFC 9112 7.1),
 * shared by request and response paths. Pure code: no fd, no allocation, no file-level state; all
 * of it lives in the caller's struct wk_chunk.
 *
 * Accepted, exactly:
 *   chunked-body = *chunk last-chunk trailer-section CRLF
 *   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   chunk-size   = 1*HEXDIG (at most 16 digits, leading zeros included)
 *   chunk-ext    = *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] )
 *   trailer      = *( field-name ":" OWS field-value OWS CRLF )
 * Anything else (bare CR or LF, NUL, whitespace before the size or before the CRLF, signs, "0x",
 * obs-fold, a space before a trailer's colon, an over-long line or trailer section) is an error.
 *
 * Forwarding: bytes are "committed" once the element they belong to is complete and valid (a
 * whole size line, chunk data as it comes, the CRLF after the data, a whole trailer line, the
 * final CRLF). <pend> counts consumed bytes not yet committed: a caller that forwards raw bytes
 * forwards only up to (consumed so far - pend), so no byte of an unchecked line ever leaves. */
#ifndef DSP_WK_CHUNK_H
#define DSP_WK_CHUNK_H

#include <stddef.h>
#include <stdint.h>

/* Longest chunk-size line (size, extensions, CRLF). */
#define WK_CHUNK_LINE_MAX 4096
/* Most hex digits in a chunk size (16 = 64 bits). */
#define WK_CHUNK_DIGITS_MAX 16

#define WK_CHUNK_ERROR (-1) /* invalid framing: <err> says why; the decoder stays in error */
#define WK_CHUNK_MORE  0    /* everything given was consumed, the body goes on */
#define WK_CHUNK_DATA  1    /* the last <dlen> bytes of the <used> ones are chunk data */
#define WK_CHUNK_DONE  2    /* the body ended <used> bytes in; what follows is not the body's */

struct wk_chunk {
    uint64_t left;        /* size being read, then data bytes of the current chunk still due */
    uint64_t total;       /* chunk data bytes so far (the decoded body length) */
    uint32_t line;        /* bytes of the current size line, or of the trailer section */
    uint32_t pend;        /* consumed but not yet committed bytes (see above) */
    uint32_t trailer_max; /* longest trailer section accepted */
    uint8_t state;
    uint8_t digits;
    const char *err; /* static text, set with WK_CHUNK_ERROR */
};

/* Start a body; <trailer_max> bounds the trailer section (0: WK_CHUNK_LINE_MAX). */
void wk_chunk_init(struct wk_chunk *ch, uint32_t trailer_max);

/* Consume bytes of <p>[0, n). Returns WK_CHUNK_MORE (all <n> consumed), WK_CHUNK_DATA (stopped
 * after a span of chunk data: <p>[*used - *dlen, *used)), WK_CHUNK_DONE (the body's last byte is
 * <p>[*used - 1]) or WK_CHUNK_ERROR (*used is where the error was found). Call again with the
 * rest after WK_CHUNK_DATA. <dlen> may be NULL when the caller only validates. */
int wk_chunk_parse(struct wk_chunk *ch, const char *p, size_t n, size_t *used, size_t *dlen);

/* Bytes of the trailer section consumed and committed so far (they lie just before the
 * committed position), while the decoder is inside it; 0 elsewhere. At WK_CHUNK_DONE the whole
 * section, its final CRLF included, is the <line> bytes before the end. */
uint32_t wk_chunk_trailer_bytes(const struct wk_chunk *ch);

/* Is the decoder inside the trailer section (after the last chunk, before the final CRLF's
 * end)? Then <line> counts the section's bytes consumed so far. */
int wk_chunk_in_trailer(const struct wk_chunk *ch);

/* Validate a whole buffer at once (a convenience for tests and small bodies). Returns the
 * length of the body (what a DONE consumed), 0 when incomplete, -1 on error. */
long wk_chunk_check(const char *p, size_t n, uint32_t trailer_max, uint64_t *decoded);

#endif
