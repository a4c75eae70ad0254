/* dispatcher: gRPC semantics the worker needs, as pure functions (unit-tested): which requests are
 * gRPC, the grpc-timeout header, the gRPC status that answers one of our generated HTTP errors,
 * its grpc-message, and what a trailer section may carry. No connection, no file-level state. */
#ifndef DSP_WK_GRPC_H
#define DSP_WK_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include "worker/wk_h1.h"

/* gRPC status codes (doc/statuscodes.md of grpc). */
#define WK_GRPC_OK                 0
#define WK_GRPC_UNKNOWN            2
#define WK_GRPC_DEADLINE_EXCEEDED  4
#define WK_GRPC_PERMISSION_DENIED  7
#define WK_GRPC_RESOURCE_EXHAUSTED 8
#define WK_GRPC_UNIMPLEMENTED      12
#define WK_GRPC_INTERNAL           13
#define WK_GRPC_UNAVAILABLE        14
#define WK_GRPC_UNAUTHENTICATED    16

/* Longest grpc-timeout accepted, in milliseconds (anything longer is clamped to it): the
 * protocol allows 99999999 hours. */
#define WK_GRPC_TIMEOUT_MAX_MS (UINT64_C(1) << 40)

/* Is the Content-Type value <v>[0, n) a gRPC one: "application/grpc", alone or followed by "+"
 * (a message format: "+proto", "+json") or by ";" (parameters), case-insensitive? */
int wk_grpc_ctype(const char *v, size_t n);

/* Parse a grpc-timeout value: 1 to 8 ASCII digits, then one unit of H M S m u n (hours ...
 * nanoseconds), nothing else. 0 and the timeout in *ms (rounded up to a whole millisecond, so
 * only a zero timeout is 0), or -1 when it is malformed. */
int wk_grpc_timeout(const char *v, size_t n, uint64_t *ms);

/* The grpc-timeout field of <hd> (the first one): 0 when there is none, 1 with its value in *ms,
 * -1 when it is malformed. */
int wk_grpc_head_timeout(const struct wk_head *hd, uint64_t *ms);

/* The gRPC status that carries our generated HTTP answer <status> to a gRPC client: 14
 * UNAVAILABLE for 502/503 (and for a 404 whose JSON <body> says "Service not deployed": a known
 * service without backends), 4 DEADLINE_EXCEEDED for 504 and 408, 12 UNIMPLEMENTED for 404
 * (no route), 405 and 501, 8 RESOURCE_EXHAUSTED for 429, 413 and 431, 16 UNAUTHENTICATED for
 * 401, 7 PERMISSION_DENIED for 403, 13 INTERNAL for 400 and 500, 0 for 2xx, 2 UNKNOWN for
 * anything else. */
unsigned wk_grpc_code(unsigned status, const char *body, size_t blen);

/* A gRPC call whose response began is cut for <cut> (SHM_CUT_*): the status that ends it as a
 * gRPC server would (14 the backend closed, 13 it sent garbage, 4 it went silent or the deadline
 * passed) and its message in *msg; 0 when the cut is no such reason (the stream is reset). */
unsigned wk_grpc_cut_code(unsigned cut, const char **msg);

/* The grpc-message for a generated answer: the "message" string of its JSON <body> (else the
 * reason phrase of <status>), percent-encoded as the gRPC spec asks (bytes outside 0x20-0x7E and
 * '%' become %XX). Writes at most <cap> - 1 bytes and a NUL into <out>, cutting only between
 * whole escapes; returns the length. */
size_t wk_grpc_message(unsigned status, const char *body, size_t blen, char *out, size_t cap);

/* May a field named <name>[0, n) travel in a trailer section (either way, either protocol)? Not a
 * pseudo-header, a connection-specific (hop-by-hop) field, framing (Content-Length), Host, or a
 * name that is not a token. */
int wk_trailer_ok(const char *name, size_t n);

/* Split a checked HTTP/1 trailer section <p>[0, n) (trailer lines as wk_chunk accepted them, the
 * final empty line optional) into fields: names and values point into <p>, values without their
 * surrounding whitespace. Fields that wk_trailer_ok() refuses are left out; at most <max> are
 * kept. Returns how many. */
uint32_t wk_trailer_split(const char *p, size_t n, struct wk_hdr *out, uint32_t max);

#endif
