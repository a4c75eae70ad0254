/* dispatcher: the HTTP/2 side of an active health check (services with protocol h2 or grpc):
 * an nghttp2 client session that does no I/O; the checker (ms_health.c) sends the bytes it
 * serializes and feeds it what the backend answers, until the final response head's :status. */
#include "master/ms_h2hc.h"

#include <nghttp2/nghttp2.h>
#include <stdlib.h>
#include <string.h>

#include "common/dsp.h"

struct ms_h2hc {
    nghttp2_session *s;
    unsigned status; /* the final response's status, once known */
    int over;        /* the stream ended (or the session failed) without one */
};

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct ms_h2hc *c = ud;
    unsigned v = 0;

    (void)s;
    (void)flags;
    if (f->hd.type != NGHTTP2_HEADERS || f->hd.stream_id != 1 || nlen != 7 ||
        memcmp(name, ":status", 7) != 0 || vlen != 3) {
        return 0;
    }
    for (size_t i = 0; i < 3; i++) {
        v = v * 10 + (unsigned)(value[i] - '0'); /* (nghttp2 checked: three digits) */
    }
    if (v >= 200) {
        c->status = v; /* (1xx heads are not the answer) */
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    struct ms_h2hc *c = ud;

    (void)s;
    (void)code;
    if (id == 1) {
        c->over = 1;
    }
    return 0;
}

static size_t nv(nghttp2_nv *v, const char *name, const char *value)
{
    v->name = (uint8_t *)(uintptr_t)name;
    v->namelen = strlen(name);
    v->value = (uint8_t *)(uintptr_t)value;
    v->valuelen = strlen(value);
    v->flags = NGHTTP2_NV_FLAG_NONE;
    return 1;
}

struct ms_h2hc *ms_h2hc_new(const char *path, const char *authority, int https, char **out,
                            size_t *outlen)
{
    struct ms_h2hc *c = calloc(1, sizeof(*c));
    nghttp2_session_callbacks *cb = NULL;
    nghttp2_nv hdrs[6];
    size_t n = 0, len = 0;
    char *buf = NULL;

    if (c == NULL || nghttp2_session_callbacks_new(&cb) != 0) {
        goto fail;
    }
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    if (nghttp2_session_client_new(&c->s, cb, c) != 0) {
        c->s = NULL;
        goto fail;
    }
    n += nv(&hdrs[n], ":method", "GET");
    n += nv(&hdrs[n], ":scheme", https ? "https" : "http");
    n += nv(&hdrs[n], ":authority", authority);
    n += nv(&hdrs[n], ":path", path);
    n += nv(&hdrs[n], "user-agent", "dispatcher-health/" DSP_VERSION);
    n += nv(&hdrs[n], "accept", "*/*");
    if (nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, NULL, 0) != 0 ||
        nghttp2_submit_request(c->s, NULL, hdrs, n, NULL, NULL) != 1) {
        goto fail;
    }
    for (;;) {
        const uint8_t *data;
        ssize_t m = nghttp2_session_mem_send(c->s, &data);
        char *p;
        if (m < 0) {
            goto fail;
        }
        if (m == 0) {
            break;
        }
        p = realloc(buf, len + (size_t)m);
        if (p == NULL) {
            goto fail;
        }
        buf = p;
        memcpy(buf + len, data, (size_t)m);
        len += (size_t)m;
    }
    nghttp2_session_callbacks_del(cb);
    *out = buf;
    *outlen = len;
    return c;
fail:
    nghttp2_session_callbacks_del(cb);
    free(buf);
    ms_h2hc_free(c);
    return NULL;
}

int ms_h2hc_feed(struct ms_h2hc *c, const uint8_t *p, size_t n)
{
    if (c->status == 0 && !c->over && nghttp2_session_mem_recv(c->s, p, n) < 0) {
        c->over = 1;
    }
    /* What the session answers (SETTINGS ACK, a GOAWAY for garbage) is not needed by a one-shot
     * check: serialized and dropped, so that a session that gave up says so (want_read). */
    for (const uint8_t *data; !c->over && nghttp2_session_mem_send(c->s, &data) > 0;) {
    }
    if (c->status != 0) {
        return (int)c->status;
    }
    return c->over || !nghttp2_session_want_read(c->s) ? -1 : 0;
}

void ms_h2hc_free(struct ms_h2hc *c)
{
    if (c != NULL) {
        nghttp2_session_del(c->s);
        free(c);
    }
}
