/* dispatcher: registration tables behind the master's epoll loop (see ms_loop.h). */
#include "master/ms_loop.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "common/log.h"

#define MAX_FDS   1024
#define MAX_TICKS 16
#define MAX_HOOKS 16

struct loop_fd {
    int fd;
    ms_fd_cb cb;
    void *arg;
};

static int epfd = -1;
static struct loop_fd fds[MAX_FDS];
static struct {
    ms_tick_cb cb;
    void *arg;
} ticks[MAX_TICKS];
static int nticks;
static struct {
    ms_publish_cb cb;
    void *arg;
} hooks[MAX_HOOKS];
static int nhooks;

int ms_loop_fd(void)
{
    if (epfd == -1) {
        epfd = epoll_create1(EPOLL_CLOEXEC);
        if (epfd == -1) {
            log_errno(LOG_ERROR, errno, "epoll_create1() failed");
        }
    }
    return epfd;
}

int ms_loop_add(int fd, uint32_t events, ms_fd_cb cb, void *arg)
{
    struct epoll_event ev;

    if (ms_loop_fd() == -1) {
        return -1;
    }
    for (int i = 0; i < MAX_FDS; i++) {
        if (fds[i].cb == NULL) {
            fds[i].fd = fd;
            fds[i].cb = cb;
            fds[i].arg = arg;
            ev.events = events;
            ev.data.ptr = &fds[i];
            if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
                log_errno(LOG_ERROR, errno, "epoll_ctl(ADD %d) failed", fd);
                fds[i].cb = NULL;
                return -1;
            }
            return 0;
        }
    }
    log_error("master loop: too many watched fds");
    return -1;
}

int ms_loop_mod(int fd, uint32_t events)
{
    for (int i = 0; i < MAX_FDS; i++) {
        if (fds[i].cb != NULL && fds[i].fd == fd) {
            struct epoll_event ev = {.events = events, .data.ptr = &fds[i]};
            return epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
        }
    }
    return -1;
}

void ms_loop_del(int fd)
{
    for (int i = 0; i < MAX_FDS; i++) {
        if (fds[i].cb != NULL && fds[i].fd == fd) {
            epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
            fds[i].cb = NULL;
            fds[i].fd = -1;
            return;
        }
    }
}

int ms_loop_tick(ms_tick_cb cb, void *arg)
{
    if (nticks == MAX_TICKS) {
        return -1;
    }
    ticks[nticks].cb = cb;
    ticks[nticks].arg = arg;
    nticks++;
    return 0;
}

int ms_loop_on_publish(ms_publish_cb cb, void *arg)
{
    if (nhooks == MAX_HOOKS) {
        return -1;
    }
    hooks[nhooks].cb = cb;
    hooks[nhooks].arg = arg;
    nhooks++;
    return 0;
}

void ms_loop_published(void)
{
    for (int i = 0; i < nhooks; i++) {
        hooks[i].cb(hooks[i].arg);
    }
}

void ms_loop_dispatch(void *ptr, uint32_t events)
{
    struct loop_fd *l = ptr;

    /* A callback earlier in the same pass may have removed this fd. */
    if (l->cb != NULL) {
        l->cb(l->fd, events, l->arg);
    }
}

void ms_loop_run_ticks(uint64_t now_ms)
{
    for (int i = 0; i < nticks; i++) {
        ticks[i].cb(now_ms, ticks[i].arg);
    }
}

void ms_loop_child_cleanup(void)
{
    /* Every fd registered here belongs to the master (admin sockets, health checks, Redis):
     * a forked worker must not hold them open or accept on them. */
    for (int i = 0; i < MAX_FDS; i++) {
        if (fds[i].cb != NULL) {
            close(fds[i].fd);
            fds[i].cb = NULL;
        }
    }
    if (epfd != -1) {
        close(epfd);
        epfd = -1;
    }
}
