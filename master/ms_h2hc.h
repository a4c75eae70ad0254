/* dispatcher: the HTTP/2 side of an active health check (ms_h2hc.c), without I/O. */
#ifndef DSP_MS_H2HC_H
#define DSP_MS_H2HC_H

#include <stddef.h>
#include <stdint.h>

struct ms_h2hc;

/* A check of <path> on <authority> (<https>: the :scheme): the bytes to send (client preface,
 * SETTINGS, the GET's HEADERS) in *out[0, *outlen) (heap, the caller frees them). NULL when out
 * of memory. */
struct ms_h2hc *ms_h2hc_new(const char *path, const char *authority, int https, char **out,
                            size_t *outlen);
/* Feed what the backend sent: the final response's status (200-599) once its head is in, 0 when
 * more is needed, -1 when the stream or the connection ended without one (or broke HTTP/2). */
int ms_h2hc_feed(struct ms_h2hc *c, const uint8_t *p, size_t n);
void ms_h2hc_free(struct ms_h2hc *c);

#endif
