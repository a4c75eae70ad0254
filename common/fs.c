/* dispatcher: filesystem helpers (see fs.h). */
#include "common/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

const char *fs_type_name(unsigned mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG:
        return "a regular file";
    case S_IFDIR:
        return "a directory";
    case S_IFIFO:
        return "a FIFO";
    case S_IFSOCK:
        return "a socket";
    case S_IFCHR:
        return "a character device";
    case S_IFBLK:
        return "a block device";
    default:
        return "not a regular file";
    }
}

int fs_open_regular(const char *path, size_t max, size_t *size, char *err, size_t errlen)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);

    if (fd == -1) {
        snprintf(err, errlen, "cannot read \"%s\": %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot read \"%s\": %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "cannot read \"%s\": %s, not a regular file", path,
                 fs_type_name((unsigned)st.st_mode));
        close(fd);
        return -1;
    }
    if (st.st_size < 0 || (unsigned long long)st.st_size > (unsigned long long)max) {
        snprintf(err, errlen, "cannot read \"%s\": larger than %zu bytes", path, max);
        close(fd);
        return -1;
    }
    *size = (size_t)st.st_size;
    return fd;
}

int fs_read_regular(const char *path, size_t max, char **out, size_t *len, char *err, size_t errlen)
{
    size_t size, off = 0;
    char *buf;
    int fd = fs_open_regular(path, max, &size, err, errlen);

    if (fd == -1) {
        return -1;
    }
    buf = malloc(size + 1);
    if (buf == NULL) {
        snprintf(err, errlen, "cannot read \"%s\": out of memory", path);
        close(fd);
        return -1;
    }
    /* Exactly the size fstat saw: a file growing meanwhile cannot make us read without end. */
    while (off < size) {
        ssize_t n = read(fd, buf + off, size - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            snprintf(err, errlen, "cannot read \"%s\": %s", path,
                     n < 0 ? strerror(errno) : "file shrank while being read");
            explicit_bzero(buf, off);
            free(buf);
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    close(fd);
    buf[off] = '\0';
    *out = buf;
    *len = off;
    return 0;
}

/* The command name of <pid> (from /proc/PID/stat) into <comm>, and whether it is a zombie. */
static int read_stat(int pid, char *comm, size_t n, int *zombie)
{
    char path[64], buf[512];
    char *open_p, *close_p;
    ssize_t r;
    int fd;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        return -1;
    }
    r = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (r <= 0) {
        errno = EIO;
        return -1;
    }
    buf[r] = '\0';
    open_p = strchr(buf, '(');
    close_p = strrchr(buf, ')');
    if (open_p == NULL || close_p == NULL || close_p < open_p || close_p[1] != ' ') {
        errno = EIO;
        return -1;
    }
    snprintf(comm, n, "%.*s", (int)(close_p - open_p - 1), open_p + 1);
    *zombie = close_p[2] == 'Z' || close_p[2] == 'X';
    return 0;
}

int fs_pid_is_ours(int pid)
{
    char theirs[64], mine[64];
    int zombie, z;

    if (pid <= 0 || (kill(pid, 0) == -1 && errno != EPERM)) {
        return 0;
    }
    if (read_stat(pid, theirs, sizeof(theirs), &zombie) != 0) {
        return errno == ENOENT ? 0 : 1;
    }
    if (zombie) {
        return 0; /* killed, not yet reaped by its parent */
    }
    if (read_stat((int)getpid(), mine, sizeof(mine), &z) != 0) {
        return 1;
    }
    return strcmp(theirs, mine) == 0;
}
