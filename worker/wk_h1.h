/* dispatcher: the HTTP/1 codec. Parses request and response heads from a caller's buffer into a
 * parsed-head struct owned by the caller (fields point into the buffer), with every RFC 9112
 * strictness rule the worker applies (SPEC, Proxying, "Strict framing"), decides the framing of
 * the body, follows a response body that is not chunked (chunked bodies go through wk_chunk.h),
 * and writes the heads the worker forwards. No fd, no connection, no file-level state.
 *
 * The tokenizer underneath (http-parser) is named in this file and wk_h1.c only. */
#ifndef DSP_WK_H1_H
#define DSP_WK_H1_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

#include "worker/wk_chunk.h"

/* A header field: name and value point into the parsed buffer. */
#define WK_MAX_HEADERS 128

struct wk_hdr {
    const char *name;
    const char *value;
    uint32_t nlen;
    uint32_t vlen;
};

struct wk_head {
    const char *url;
    uint32_t url_len;
    uint32_t n;
    int too_many;
    int folded; /* obsolete line folding seen */
    int in_value;
    struct wk_hdr h[WK_MAX_HEADERS];
};

/* The tokenizer's state for one message: kept by the caller while a response body is followed. */
struct wk_h1_msg {
    http_parser p;
    struct wk_head *hd; /* where head fields go; NULL outside a head (trailers are not fields) */
    const char *reason; /* response reason phrase, pointing into the head */
    uint32_t reason_len;
    uint8_t done;     /* the message is complete */
    uint8_t head_req; /* response to a HEAD request: no body */
};

/* Request flags (wk_h1_req.flags). */
#define WK_H1_KEEPALIVE  0x01u /* the connection may carry another request */
#define WK_H1_UPGRADE    0x02u /* the client asks for a protocol upgrade */
#define WK_H1_CONTINUE   0x04u /* Expect: 100-continue */
#define WK_H1_IDEMPOTENT 0x08u
#define WK_H1_HEAD       0x10u /* method HEAD: the response has no body */
#define WK_H1_DONE       0x20u /* the message ended with its head (no body) */

/* A parsed request head. On error, <hd>, the version and the method hold what was read. */
struct wk_h1_req {
    struct wk_head hd; /* the fields, and the raw target (hd.url) */
    unsigned method;   /* http-parser's method numbers (the route tables use them too) */
    uint8_t major, minor;
    uint8_t flags;    /* WK_H1_* */
    uint8_t chunked;  /* the body is chunked */
    uint64_t clen;    /* Content-Length, or UINT64_MAX without one */
    const char *host; /* the validated Host, or the absolute-form authority; NULL: none */
    size_t hostlen;
    const char *abs_host; /* the absolute-form authority (what the access log records) */
    size_t abs_hostlen;
    const char *target; /* origin-form target forwarded upstream ("/" goes first if slash) */
    size_t tlen;
    int slash;
    const char *path; /* path part of the target, for routing */
    size_t pathlen;
    const char *err; /* static text of the error */
};

/* A parsed response head. */
struct wk_h1_resp {
    struct wk_head hd;
    unsigned status;
    const char *reason; /* the reason phrase as sent (may be empty) */
    uint32_t reason_len;
    uint8_t chunked;  /* Transfer-Encoding: chunked */
    uint8_t has_clen; /* a Content-Length was given */
};

/* Index just past the blank line ending a head in <p>[0, n) (bare LF accepted here; the strict
 * checks come with parsing), or 0 when the head is not complete. */
size_t wk_h1_head_end(const char *p, size_t n, size_t from);

/* Parse and check the request head <base>[0, hlen) (as found by wk_h1_head_end()). Returns 0, or
 * the status to answer with (400, 405, 431) and a message in rq->err. */
unsigned wk_h1_parse_request(const char *base, size_t hlen, struct wk_h1_req *rq);

/* Parse and check a response head <base>[0, hlen) into <rs>, with the tokenizer state in <m>
 * (kept for the body). <head_req>: it answers a HEAD request. Returns 0, or -1 for a head that
 * is not strict HTTP/1 or whose status is outside 100-599 (a 502). */
int wk_h1_parse_response(struct wk_h1_msg *m, const char *base, size_t hlen, int head_req,
                         struct wk_h1_resp *rs);

/* Responses without a body whatever their framing headers say (RFC 9112 6.3). */
static inline int wk_h1_bodyless(int head_req, unsigned status)
{
    return head_req || status < 200 || status == 204 || status == 304;
}

/* Follow a response body that is not chunked (a length, or up to EOF) over <p>[0, n): returns
 * the bytes that belong to it; m->done once complete; -1 on a tokenizer error. */
long wk_h1_body(struct wk_h1_msg *m, const char *p, size_t n);
/* The upstream closed: an EOF-delimited body ends here (m->done). */
void wk_h1_body_eof(struct wk_h1_msg *m);
/* May the connection carry another message after this one (version, Connection, framing)? */
int wk_h1_keep_alive(const struct wk_h1_msg *m);

/* ---- writing heads ----------------------------------------------------------------------------
 * What the request head forwarded upstream says beyond the client's fields. */
struct wk_h1_fwd {
    unsigned method;
    const char *target; /* origin-form target; <slash>: a "/" goes before it */
    size_t tlen;
    int slash;
    const char *host; /* the Host routed on; <hostlen> 0: none (HTTP/1.0), <dflt_host> is sent */
    size_t hostlen;
    const char *dflt_host;
    const char *peer_ip;      /* appended to X-Forwarded-For */
    const char *real_ip;      /* X-Real-IP */
    const char *cert_subject; /* X-Client-Cert-Subject, or NULL: none (a client's is dropped) */
    const char *reqid;
    size_t reqid_len;
    uint64_t clen;   /* Content-Length to send, UINT64_MAX: none */
    uint8_t trusted; /* the peer is a trusted proxy: its X-Forwarded-For and Forwarded stay */
    uint8_t https;
    uint8_t upgrade; /* forward Upgrade, send Connection: upgrade */
    uint8_t chunked; /* the body goes chunked */
};

/* Write the upstream request head for the client's fields <hd> into <out>[0, cap): hop-by-hop
 * fields, framing and forwarding fields are dropped and written anew. Returns its length, or 0
 * when it does not fit. */
size_t wk_h1_write_request(char *out, size_t cap, const struct wk_head *hd,
                           const struct wk_h1_fwd *f);

/* Connection header of a response head written for the client. */
#define WK_H1_CONN_NONE      0
#define WK_H1_CONN_CLOSE     1
#define WK_H1_CONN_KEEPALIVE 2
#define WK_H1_CONN_UPGRADE   3

/* Write the client response head for the upstream head <rs> into <out>[0, cap): its status and
 * reason, its end-to-end fields (no X-Request-ID, no hop-by-hop ones but Upgrade in a 101, no
 * Content-Length in a 1xx or 204), then "Transfer-Encoding: chunked" if <te_chunked>, our
 * X-Request-ID and the Connection field <conn>. Returns its length, or 0 when it does not fit. */
size_t wk_h1_write_response(char *out, size_t cap, const struct wk_h1_resp *rs, int te_chunked,
                            const char *reqid, size_t reqid_len, int conn);

/* Chunked bodies (request and response): the strict incremental decoder of wk_chunk.h, through
 * the codec's names so that callers use one API. */
static inline void wk_h1_chunk_init(struct wk_chunk *ch, uint32_t trailer_max)
{
    wk_chunk_init(ch, trailer_max);
}

static inline int wk_h1_chunk_parse(struct wk_chunk *ch, const char *p, size_t n, size_t *used,
                                    size_t *dlen)
{
    return wk_chunk_parse(ch, p, n, used, dlen);
}

/* The method's name ("GET"). */
const char *wk_h1_method_str(unsigned method);
/* The method number of the method name <s>[0, n) (exact, case-sensitive): 1 and *out, or 0 for
 * a method the tokenizer does not know. */
int wk_h1_method_num(const char *s, size_t n, unsigned *out);
int wk_h1_method_idempotent(unsigned method);
unsigned wk_h1_method_head(void);

#endif
