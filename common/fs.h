/* dispatcher: small filesystem helpers for start-up paths (pid file, admin socket, logs). */
#ifndef DSP_FS_H
#define DSP_FS_H

#include <stddef.h>

/* Create every missing folder above <path> (its last component is a file name, not created),
 * with mode 0755. Returns 0, or -1 with errno set and "mkdir(DIR): reason" in <err>. */
int fs_mkdir_parents(const char *path, char *err, size_t errlen);

#endif
