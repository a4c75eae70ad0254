/* dispatcher: response compression for the `compress` middleware, with no connection in it:
 * Accept-Encoding negotiation (q-values), the response checks (media type patterns, Vary, weak
 * ETag) and a streaming encoder (gzip through zlib, brotli through libbrotlienc) whose memory is
 * bounded per stream and whose output follows its input (a flush when the caller would otherwise
 * wait, never a whole body held). Unit-tested on its own (tests/unit/test_wk_gz.c). */
#ifndef DSP_WK_GZ_H
#define DSP_WK_GZ_H

#include <stddef.h>
#include <stdint.h>

/* Content codings (also bit positions of an "allowed" mask: 1u << WK_GZ_...). */
#define WK_GZ_NONE 0
#define WK_GZ_GZIP 1
#define WK_GZ_BR   2
#define WK_GZ_ALL  ((1u << WK_GZ_GZIP) | (1u << WK_GZ_BR))

/* Defaults: gzip level 6 (zlib's own default), brotli quality 4 (on-the-fly: close to gzip -6
 * in CPU, smaller output). */
#define WK_GZ_LEVEL_DEFAULT 6
#define WK_GZ_BRQ_DEFAULT   4

/* ---- Accept-Encoding ------------------------------------------------------------------------
 * The q-values (thousandths) a request gives gzip, br, "*" and identity; -1 when not listed.
 * Zero it with wk_ae_init(), scan every Accept-Encoding value, then choose. */
struct wk_ae {
    int16_t q[4];
};
#define WK_AE_GZIP     0
#define WK_AE_BR       1
#define WK_AE_STAR     2
#define WK_AE_IDENTITY 3

void wk_ae_init(struct wk_ae *a);
/* One Accept-Encoding value (a comma-separated list of codings with optional ";q=" weights).
 * Malformed elements are skipped; a coding listed twice keeps its first weight. */
void wk_ae_scan(struct wk_ae *a, const char *v, size_t n);
/* The coding to use among <allowed> (a WK_GZ_ALL-style mask): the highest q above 0 (br before
 * gzip at equal q; a coding not listed takes the q of "*"), WK_GZ_NONE when none is acceptable
 * or the client ranks identity strictly higher. A request without Accept-Encoding gets none. */
unsigned wk_ae_choose(const struct wk_ae *a, unsigned allowed);

/* ---- the response --------------------------------------------------------------------------
 * Does Content-Type value <ct> match pattern <pat> ("text/html", "text/ *" as one word, "*" or
 * "* / *")? Parameters (";charset=...") and case are ignored; "*" matches an empty value (no
 * Content-Type) too. */
int wk_gz_type_match(const char *pat, size_t plen, const char *ct, size_t clen);
/* Vary after compression: <v> (NULL: no Vary) with Accept-Encoding added unless it is already
 * there or Vary is "*". Written to <out>[0, cap): its length, or 0 when it does not fit. */
size_t wk_gz_vary(const char *v, size_t vlen, char *out, size_t cap);
/* The ETag of the compressed representation: a strong one made weak ("W/" before it), a weak
 * one as is. Written to <out>[0, cap): its length, or 0 when it does not fit. */
size_t wk_gz_etag(const char *v, size_t vlen, char *out, size_t cap);
/* The value a "Content-Encoding" field gets for <enc>. */
const char *wk_gz_name(unsigned enc);

/* ---- the encoder ------------------------------------------------------------------------------
 */
struct wk_gz;
/* A stream for coding <enc> at <level> (gzip 1-9, brotli quality 0-11). <size_hint> is the body
 * length when known (UINT64_MAX otherwise): a small body gets a smaller window and hash, so
 * memory follows the body (at most ~260 KiB for gzip, ~3 MiB for brotli at quality 4).
 * NULL when out of memory. */
struct wk_gz *wk_gz_new(unsigned enc, int level, uint64_t size_hint);
void wk_gz_free(struct wk_gz *z);
/* The memory a stream of wk_gz_new(<enc>, <level>, <size_hint>) may come to use, in bytes (an
 * estimate from above: what the callers budget with). */
size_t wk_gz_cost(unsigned enc, int level, uint64_t size_hint);

#define WK_GZ_RUN    0 /* take input, output what the coder has ready */
#define WK_GZ_FLUSH  1 /* and push out everything taken so far (a sync point) */
#define WK_GZ_FINISH 2 /* the input is complete: end the stream */

/* Compress <in>[0, inlen) into <out>[0, cap) with operation <op>; *used and *made say how much
 * input was taken and output written. Returns 1 once a FLUSH or FINISH is complete (all output
 * for it written: for FINISH the stream is over), 0 when it needs another call (with room
 * in <out>: a FLUSH or FINISH in progress takes no new input until it is done), -1 on an
 * error of the library. */
int wk_gz_step(struct wk_gz *z, const char *in, size_t inlen, size_t *used, char *out, size_t cap,
               size_t *made, int op);
/* Has the stream taken input that no completed FLUSH has pushed out yet? */
int wk_gz_dirty(const struct wk_gz *z);
/* Is the stream finished (FINISH complete)? */
int wk_gz_done(const struct wk_gz *z);

#endif
