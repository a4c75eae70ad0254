/* bench: the gRPC backend of scenario (m), so that the backend is not what limits the proxies.
 *
 * One thread, epoll, HTTP/2 with prior knowledge (h2c) on libnghttp2. Every request (whatever
 * its path and body) is answered as a unary gRPC call: HEADERS (:status 200, content-type
 * application/grpc), one DATA frame carrying one length-prefixed message (the protobuf of a
 * helloworld.HelloReply { message: "hi" }), and trailers (grpc-status 0). Built by
 * bench/bench_grpc.py at bench time:
 *
 *     cc -O2 -o grpc-backend bench/grpc_backend.c -lnghttp2
 *     ./grpc-backend 127.0.0.1 PORT
 *
 * Bench only: no TLS, no limits beyond nghttp2's own, no graceful stop (SIGTERM ends it). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* gRPC message: not compressed, length 4, then field 1 (string) "hi". */
static const uint8_t reply_msg[] = {0, 0, 0, 0, 4, 0x0a, 0x02, 'h', 'i'};

struct conn {
    int fd;
    int want_out; /* EPOLLOUT is armed */
    nghttp2_session *s;
};

static int epfd;

static ssize_t on_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *ud)
{
    struct conn *c = ud;
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);

    (void)s;
    (void)flags;
    if (n < 0) {
        return errno == EAGAIN || errno == EWOULDBLOCK ? NGHTTP2_ERR_WOULDBLOCK
                                                       : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return n;
}

static ssize_t reply_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *fl,
                          nghttp2_data_source *src, void *ud)
{
    static const nghttp2_nv trailers[] = {
        {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, NGHTTP2_NV_FLAG_NONE}};

    (void)src;
    (void)ud;
    if (len < sizeof(reply_msg)) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    memcpy(buf, reply_msg, sizeof(reply_msg));
    *fl |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    if (nghttp2_submit_trailer(s, id, trailers, 1) != 0) {
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return (ssize_t)sizeof(reply_msg);
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    static const nghttp2_nv head[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3,
                                       NGHTTP2_NV_FLAG_NONE},
                                      {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12,
                                       16, NGHTTP2_NV_FLAG_NONE}};
    nghttp2_data_provider prd = {.read_callback = reply_read};

    (void)ud;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM) && f->hd.stream_id > 0) {
        nghttp2_submit_response(s, f->hd.stream_id, head, 2, &prd);
    }
    return 0;
}

static void conn_close(struct conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    nghttp2_session_del(c->s);
    free(c);
}

/* Read what is there, answer, write what the socket takes. -1: the connection is done. */
static int conn_run(struct conn *c)
{
    uint8_t buf[65536];

    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n == 0) {
            return -1;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                break;
            }
            return -1;
        }
        if (nghttp2_session_mem_recv(c->s, buf, (size_t)n) < 0) {
            return -1;
        }
        if ((size_t)n < sizeof(buf)) {
            break;
        }
    }
    if (nghttp2_session_send(c->s) != 0) {
        return -1;
    }
    if (!nghttp2_session_want_read(c->s) && !nghttp2_session_want_write(c->s)) {
        return -1;
    }
    if (nghttp2_session_want_write(c->s) != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (c->want_out ? 0 : EPOLLOUT), .data.ptr = c};
        c->want_out = !c->want_out;
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
    return 0;
}

static void conn_new(int fd, nghttp2_session_callbacks *cb)
{
    static const nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1024},
                                                {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
    struct conn *c = calloc(1, sizeof(*c));
    struct epoll_event ev = {.events = EPOLLIN};
    int one = 1;

    if (c == NULL) {
        close(fd);
        return;
    }
    c->fd = fd;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (nghttp2_session_server_new(&c->s, cb, c) != 0) {
        close(fd);
        free(c);
        return;
    }
    nghttp2_submit_settings(c->s, NGHTTP2_FLAG_NONE, iv, 2);
    ev.data.ptr = c;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0 || conn_run(c) != 0) {
        conn_close(c);
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    nghttp2_session_callbacks *cb;
    struct epoll_event ev = {.events = EPOLLIN}, evs[256];
    int lfd, one = 1;

    if (argc != 3 || inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    sa.sin_port = htons((uint16_t)atoi(argv[2]));
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 4096) != 0) {
        perror("listen");
        return 1;
    }
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    epfd = epoll_create1(0);
    ev.data.ptr = NULL;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    conn_new(fd, cb);
                }
            } else if ((evs[i].events & (EPOLLERR | EPOLLHUP)) || conn_run(c) != 0) {
                conn_close(c);
            }
        }
    }
}
