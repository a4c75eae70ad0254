/* dispatcher: filesystem helpers (see fs.h). */
#include "common/fs.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int fs_mkdir_parents(const char *path, char *err, size_t errlen)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);

    if (n >= sizeof(buf)) {
        snprintf(err, errlen, "%s: path too long", path);
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(buf, path, n + 1);
    /* Walk the components left to right, skipping the file name itself. */
    for (char *p = buf + 1; *p != '\0'; p++) {
        struct stat st;

        if (*p != '/') {
            continue;
        }
        *p = '\0';
        if (stat(buf, &st) == 0) {
            if (!S_ISDIR(st.st_mode)) {
                snprintf(err, errlen, "%s is not a directory", buf);
                errno = ENOTDIR;
                return -1;
            }
        } else if (mkdir(buf, 0755) == -1 && errno != EEXIST) {
            int e = errno;
            snprintf(err, errlen, "mkdir(%s): %s", buf, strerror(e));
            errno = e;
            return -1;
        }
        *p = '/';
    }
    return 0;
}
