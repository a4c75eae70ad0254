/* dispatcher: forward_auth's sub-requests (worker side). For a request, a GET of the middleware's
 * path goes to the auth service over a pooled keep-alive HTTP/1.1 connection of this worker; its
 * answer (status, head, body up to WK_FAUTH_BODY_MAX) comes back to the waiting request on the
 * event loop. Anything that is not a complete, well-formed answer within the timeout (refused,
 * reset, garbage, a body over the limit) is a failure: the request gets a 503, never a pass.
 *
 * Pooled connections are reused only when the previous answer ended exactly at its end with
 * keep-alive (as for backends); a reused connection that fails before a byte of the answer came
 * is retried once on a fresh one (the GET has no side effect). At most WK_FAUTH_MAX_CONNS
 * connections per worker, WK_FAUTH_MAX_IDLE of them idle. */
#ifndef DSP_WK_FAUTH_H
#define DSP_WK_FAUTH_H

#include <stddef.h>
#include <stdint.h>

#define WK_FAUTH_HEAD_MAX  32768 /* the auth service's response head */
#define WK_FAUTH_BODY_MAX  8192  /* the body of an answer returned to the client */
#define WK_FAUTH_MAX_CONNS 512
#define WK_FAUTH_MAX_IDLE  64
#define WK_FAUTH_IDLE_MS   30000 /* an idle pooled connection is closed after this */

struct wk_fauth_conn;
struct wk_h1_resp;
struct wk_head;
struct wk_mw_hooks;

/* Where the auth service is (from the snapshot). */
struct wk_fauth_target {
    const char *addr; /* the configured address ("127.0.0.1:9200", "unix:/run/auth.sock"): the
                         pool key */
    size_t alen;
    uint16_t family; /* AF_INET, AF_INET6, AF_UNIX */
    uint16_t port;
    uint8_t ip[16];
    uint32_t timeout_ms; /* connect, send and the whole answer */
};

/* The answer, valid during the done() call only. */
struct wk_fauth_res {
    int fail; /* no usable answer: <why> says what (for the log) */
    const char *why;
    unsigned status;
    const struct wk_h1_resp *rs; /* its head fields */
    const char *body;            /* its body, decoded (chunked) */
    size_t blen;
};

/* A request waiting for an answer; owned by the caller, who must call wk_fauth_cancel() if it
 * goes away before done() runs. */
struct wk_fauth_wait {
    struct wk_fauth_conn *conn; /* NULL: not waiting */
    uint64_t deadline;
    void (*done)(struct wk_fauth_wait *w, const struct wk_fauth_res *r);
};

/* Write the sub-request head for GET <path> into <out>[0, cap), from the request head built for
 * the backend <up>[0, uplen) (request line, fields, blank line: X-Forwarded-For/Proto/Host are
 * in it already): Host (the address; "localhost" for a unix socket), X-Forwarded-Method and
 * X-Forwarded-Uri (from its request line), its X-Forwarded-For/Proto/Host, then its other
 * fields (the client's Authorization, Cookie, Accept, ...) but the framing and connection ones,
 * Host and X-Real-IP. Returns its length, or 0 when it does not fit or <up> is not such a head. */
size_t wk_fauth_head(char *out, size_t cap, const struct wk_fauth_target *t, const char *path,
                     size_t plen, const char *up, size_t uplen);

/* Send the head <head>[0, hlen) to <t> for <w>. 0: w->done() runs later (never before this
 * returns); -1: it cannot even start (too many connections, out of descriptors): answer 503. */
int wk_fauth_start(const struct wk_fauth_target *t, const char *head, size_t hlen,
                   struct wk_fauth_wait *w);
void wk_fauth_cancel(struct wk_fauth_wait *w);

void wk_fauth_event(struct wk_fauth_conn *c, uint32_t events);
void wk_fauth_timeout(struct wk_fauth_conn *c);

/* The answer parser alone (the fuzz target, unit tests): a connection without a socket whose
 * reads are the pieces fed to it. Feeding <p>[0, n) is one read (what does not fit the answer
 * buffer is dropped, as a read would leave it; n 0: the end of the stream). 1 when the answer is
 * complete (<r> as done() would get it, valid until the parser is freed), 0 when more is needed,
 * -1 when there is no usable answer (r->fail, r->why); after 1 or -1 it is done (-1). */
struct wk_fauth_conn *wk_fauth_parser_new(void);
int wk_fauth_parser_feed(struct wk_fauth_conn *c, const char *p, size_t n, struct wk_fauth_res *r);
void wk_fauth_parser_free(struct wk_fauth_conn *c);

/* The forward_auth middleware's hooks (worker/wk_mw.c's table). */
extern const struct wk_mw_hooks wk_mw_forward_auth_hooks;

struct wk_fauth_stats {
    uint64_t requests, reused, failed, conns_open;
};
const struct wk_fauth_stats *wk_fauth_stats(void);

#endif
