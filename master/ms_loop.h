/* dispatcher: the master's event loop plug-in points. Modules that run inside the master (admin
 * socket and HTTP, Redis sync, health checks) register fds and periodic ticks here; callbacks run
 * in the master between signal handling passes, never concurrently. */
#ifndef DSP_MS_LOOP_H
#define DSP_MS_LOOP_H

#include <stdint.h>

/* Called with the epoll <events> of <fd>. */
typedef void (*ms_fd_cb)(int fd, uint32_t events, void *arg);
/* Called about every 100 ms (and right after any fd event pass); <now_ms> is monotonic. */
typedef void (*ms_tick_cb)(uint64_t now_ms, void *arg);

/* Watch <fd> for <events> (EPOLLIN, EPOLLOUT, ...; level-triggered). Returns 0 or -1 (logged). */
int ms_loop_add(int fd, uint32_t events, ms_fd_cb cb, void *arg);
/* Change the events watched on <fd>. Returns 0 or -1. */
int ms_loop_mod(int fd, uint32_t events);
/* Stop watching <fd> (the caller closes it). */
void ms_loop_del(int fd);
/* Register a periodic tick. Returns 0 or -1 (too many). */
int ms_loop_tick(ms_tick_cb cb, void *arg);

/* Hooks run after every successful publish of a generation (reload, Redis change): lets modules
 * refresh what they derived from the config. */
typedef void (*ms_publish_cb)(void *arg);
int ms_loop_on_publish(ms_publish_cb cb, void *arg);
void ms_loop_published(void);

/* In a freshly forked worker: close every fd of the master loop. */
void ms_loop_child_cleanup(void);

/* Run every registered handler for the events in one epoll_pwait pass (master internal). */
int ms_loop_fd(void);
void ms_loop_dispatch(void *ptr, uint32_t events);
void ms_loop_run_ticks(uint64_t now_ms);

#endif
