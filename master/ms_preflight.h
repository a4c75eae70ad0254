/* dispatcher: what `dispatcher-master -t` checks beyond the file itself: the host has what a
 * start would need (the user and group, the folders of the logs, pid file and admin socket), so
 * that a configuration `-t` accepts does not fail at start. Master only. */
#ifndef DSP_MS_PREFLIGHT_H
#define DSP_MS_PREFLIGHT_H

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

#endif
