/* dispatcher: libFuzzer target for forward_auth's answer parser (worker/wk_fauth.c): what an auth
 * service sends back to a sub-request (status line, head, a body by length, chunked or up to the
 * close), through the same code the pooled connections run, with reads cut where the input says.
 *
 * Input: byte 0 steers (bits 0-5: the read sizes, bit 6: the stream ends after the input, bit 7:
 * reads of one byte), the rest is the answer. Invariants beyond "no crash, no leak": the outcome
 * (complete, incomplete, failed) and a complete answer's status and body are the same whether the
 * answer arrives in one read or in pieces; a complete answer has a final status (200-999), its
 * head fields lie in the head before its body, a failure says why; a body not chunked is a run of
 * the input's bytes; nothing is returned past the end of the stream. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_fauth.h"
#include "worker/wk_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct outcome {
    int rc;
    unsigned status;
    size_t blen;
    char *body;
    int chunked;
};

static void run(const char *p, size_t n, uint8_t steer, int whole, struct outcome *o)
{
    struct wk_fauth_conn *c = wk_fauth_parser_new();
    struct wk_fauth_res r;
    size_t off = 0;
    uint32_t rnd = steer * 2654435761u + 1;

    FUZZ_CHECK(c != NULL);
    memset(o, 0, sizeof(*o));
    o->rc = 0;
    while (o->rc == 0 && off < n) {
        size_t piece = whole ? n : steer & 0x80 ? 1 : 1 + (rnd >> 16) % (1u + (steer & 0x3f) * 97u);
        if (piece > n - off) {
            piece = n - off;
        }
        rnd = rnd * 1103515245u + 12345u;
        o->rc = wk_fauth_parser_feed(c, p + off, piece, &r);
        off += piece;
    }
    if (o->rc == 0 && (steer & 0x40)) {
        o->rc = wk_fauth_parser_feed(c, NULL, 0, &r); /* the end of the stream */
        FUZZ_CHECK(o->rc != 0);
    }
    if (o->rc < 0) {
        FUZZ_CHECK(r.fail && r.why != NULL && r.why[0] != '\0' && r.status == 503);
    } else if (o->rc == 1) {
        const struct wk_h1_resp *rs = r.rs;
        FUZZ_CHECK(!r.fail && rs != NULL && r.status == rs->status);
        FUZZ_CHECK(r.status >= 200 && r.status <= 999);
        FUZZ_CHECK(r.blen <= WK_FAUTH_HEAD_MAX + WK_FAUTH_BODY_MAX && r.blen <= n);
        FUZZ_CHECK(rs->hd.n <= WK_MAX_HEADERS);
        for (uint32_t i = 0; i < rs->hd.n; i++) {
            const struct wk_hdr *h = &rs->hd.h[i];
            FUZZ_CHECK(h->name >= r.body - WK_FAUTH_HEAD_MAX && h->name + h->nlen <= r.body);
            FUZZ_CHECK(h->value >= r.body - WK_FAUTH_HEAD_MAX && h->value + h->vlen <= r.body);
            FUZZ_CHECK(wk_token_ok(h->name, h->nlen));
        }
        o->status = r.status;
        o->blen = r.blen;
        o->chunked = rs->chunked;
        o->body = malloc(r.blen + 1);
        FUZZ_CHECK(o->body != NULL);
        memcpy(o->body, r.body, r.blen);
        if (!rs->chunked) {
            FUZZ_CHECK(r.blen == 0 || memmem(p, n, r.body, r.blen) != NULL);
        }
    }
    /* Done: more input changes nothing. */
    if (o->rc != 0) {
        FUZZ_CHECK(wk_fauth_parser_feed(c, "x", 1, &r) == -1);
    }
    wk_fauth_parser_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct outcome a, b;

    if (size == 0 || size > 65536) {
        return 0;
    }
    fuzz_quiet();
    run((const char *)data + 1, size - 1, data[0], 1, &a);
    run((const char *)data + 1, size - 1, data[0], 0, &b);
    FUZZ_CHECK(a.rc == b.rc);
    if (a.rc == 1) {
        FUZZ_CHECK(a.status == b.status && a.blen == b.blen && a.chunked == b.chunked);
        FUZZ_CHECK(memcmp(a.body, b.body, a.blen) == 0);
    }
    free(a.body);
    free(b.body);
    return 0;
}
