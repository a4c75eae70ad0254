/* dispatcher: what `dispatcher-master -t` checks beyond the file itself: the host has what a
 * start would need (the user and group, the folders of the logs, pid file and admin socket), so
 * that a configuration `-t` accepts does not fail at start. Master only. */
#ifndef DSP_MS_PREFLIGHT_H
#define DSP_MS_PREFLIGHT_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

struct ms_config;

/* Check <cfg> (its parser tree must still be there: ms_config_drop_source() not yet called)
 * against this host. <pid_file> is the pid file in use (-p, else cfg->pid_file, or NULL).
 * Returns the number of errors; every problem is appended to the heap text <*out> (NULL when
 * there is none), one "FILE:LINE: message" (or "FILE: message" for a setting not written) per
 * line. With <daemon> (-D), log.error = "stderr" is warned about ("FILE:LINE: warning: ..."),
 * which does not count as an error. Without <host> only that warning is looked for (the start,
 * which meets the other problems itself). */
int ms_preflight(const struct ms_config *cfg, const char *pid_file, int daemon, int host,
                 char **out);

/* Whether another process already listens on an address a listener bound at <sa> would share
 * (SO_REUSEPORT lets a second process of the same user bind beside it and split the traffic).
 * A trial bind without SO_REUSEPORT asks the kernel; when it reports the address in use, the
 * listening sockets that overlap it are looked up in /proc/net/tcp{,6} and their holders in
 * /proc/PID/fd. Sockets this process or its children hold (its own listeners and its
 * workers', kept over a reload) do not count, nor (for -t, the running master of the configuration
 * being checked) those of process <also_ours> and its children when it is not 0, or of a dispatcher
 * started on config file <conf> when that is not NULL. Returns 0 when free (or when it cannot be
 * told: the bind itself decides then), 1 with "pid N (comm) listens there" or similar in <why>. */
int ms_listen_taken(const struct sockaddr *sa, socklen_t salen, pid_t also_ours, const char *conf,
                    char *why, size_t n);

#endif
