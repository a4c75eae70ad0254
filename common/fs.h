/* dispatcher: small filesystem helpers for start-up paths (pid file, admin socket, logs). */
#ifndef DSP_FS_H
#define DSP_FS_H

#include <stddef.h>

/* Create every missing folder above <path> (its last component is a file name, not created),
 * with mode 0755. Returns 0, or -1 with errno set and "mkdir(DIR): reason" in <err>. */
int fs_mkdir_parents(const char *path, char *err, size_t errlen);

/* Every file the master reads because the config names it goes through these: the open never
 * blocks (O_NONBLOCK: a FIFO or a device cannot stall the master), the type is checked on the
 * descriptor itself (no race between a check and the open), and the size is bounded.
 * fs_open_regular: a read-only descriptor of a regular file of at most <max> bytes (its size in
 * *size), or -1 with "cannot read "PATH": reason" in <err>. */
int fs_open_regular(const char *path, size_t max, size_t *size, char *err, size_t errlen);
/* The whole file in a NUL-terminated heap buffer (*out, *len), or -1 with <err> as above. */
int fs_read_regular(const char *path, size_t max, char **out, size_t *len, char *err,
                    size_t errlen);
/* Is <pid> a live process running the same program as this one (same /proc/PID/comm)? A pid
 * left in a pid file or a shm name by a dead master may have been reused by anything else.
 * When /proc cannot tell, a live pid counts as ours (never remove what may be in use). */
int fs_pid_is_ours(int pid);
/* "a FIFO", "a directory", ... for a st_mode that is not a regular file. */
const char *fs_type_name(unsigned mode);

#endif
