/* dispatcher: creation, publication and mapping of the shared segments. Snapshots are named
 * POSIX shm objects so that workers forked before a reload can still map later generations. */
#include "shm/shm.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fs.h"
#include "common/log.h"
#include "shm/shm_snap.h"

static void *map_anon(size_t size, const char *what)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);

    if (p == MAP_FAILED) {
        log_errno(LOG_ERROR, errno, "mmap(%s, %zu bytes) failed", what, size);
        return NULL;
    }
    return p;
}

struct shm_ctl *shm_ctl_create(int master_pid)
{
    struct shm_ctl *ctl = map_anon(sizeof(*ctl), "control segment");

    if (ctl == NULL) {
        return NULL;
    }
    ctl->magic = SHM_CTL_MAGIC;
    ctl->version = SHM_CTL_VERSION;
    ctl->master_pid = master_pid;
    return ctl;
}

struct shm_rt *shm_rt_create(void)
{
    struct shm_rt *rt = map_anon(sizeof(*rt), "runtime segment");

    if (rt == NULL) {
        return NULL;
    }
    rt->magic = SHM_RT_MAGIC;
    rt->version = SHM_RT_VERSION;
    return rt;
}

void shm_snap_name(char *buf, size_t buflen, int master_pid, uint64_t gen)
{
    snprintf(buf, buflen, "/dsp.%d.%llu", master_pid, (unsigned long long)gen);
}

/* The publisher keeps the first page of its latest generation mapped: what tells another
 * master's start-up sweep (maps_own_segment()) that this one is alive whatever its process name.
 * Its control and runtime segments are anonymous, so nothing else of it shows in its maps. */
static void *mark;
static int mark_not_inherited; /* MADV_DONTFORK took: a child has nothing there to unmap */

void shm_snap_drop_mark(void)
{
    long page = sysconf(_SC_PAGESIZE);

    /* With MADV_DONTFORK the child never had the page, and the range may already hold one of
     * its own mappings: unmapping it would pull that from under it. */
    if (mark != NULL && !mark_not_inherited) {
        munmap(mark, (size_t)(page > 0 ? page : 4096));
    }
    mark = NULL;
}

static void hold_mark(int fd)
{
    long page = sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, (size_t)(page > 0 ? page : 4096), PROT_READ, MAP_SHARED, fd, 0);

    if (p == MAP_FAILED) {
        return; /* keep the previous mark: an older generation of ours shows as well */
    }
    /* Not inherited: a worker maps the generations it serves, and only those. */
    if (mark != NULL) {
        munmap(mark, (size_t)(page > 0 ? page : 4096));
    }
    mark = p;
    mark_not_inherited = madvise(p, (size_t)(page > 0 ? page : 4096), MADV_DONTFORK) == 0;
}

int shm_snap_publish(struct shm_ctl *ctl, const void *snap, size_t size, uint64_t gen, uid_t uid,
                     gid_t gid)
{
    char name[64];
    const char *p = snap;
    size_t off = 0;
    int fd;

    shm_snap_name(name, sizeof(name), ctl->master_pid, gen);
    /* A leftover of the same name can only come from a crashed master with our pid: replace it. */
    shm_unlink(name);
    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd == -1) {
        log_errno(LOG_ERROR, errno, "shm_open(%s) failed", name);
        return -1;
    }
    if (uid != (uid_t)-1 && fchown(fd, uid, gid) == -1) {
        log_errno(LOG_ERROR, errno, "fchown(%s) failed", name);
        goto fail;
    }
    while (off < size) {
        ssize_t n = write(fd, p + off, size - off);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            log_errno(LOG_ERROR, errno, "write(%s, %zu bytes) failed", name, size);
            goto fail;
        }
        off += (size_t)n;
    }
    hold_mark(fd);
    close(fd);
    __atomic_store_n(&ctl->gen, gen, __ATOMIC_RELEASE);
    return 0;
fail:
    close(fd);
    shm_unlink(name);
    return -1;
}

void shm_snap_unlink(int master_pid, uint64_t gen)
{
    char name[64];

    shm_snap_name(name, sizeof(name), master_pid, gen);
    if (shm_unlink(name) == -1 && errno != ENOENT) {
        log_errno(LOG_WARN, errno, "shm_unlink(%s) failed", name);
    }
}

const struct shm_snap_hdr *shm_snap_map(int master_pid, uint64_t gen, size_t *size)
{
    char name[64];
    struct stat st;
    void *p;
    int fd;
    int err;

    shm_snap_name(name, sizeof(name), master_pid, gen);
    fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    if (fd == -1) {
        return NULL;
    }
    if (fstat(fd, &st) == -1 || st.st_size < (off_t)sizeof(struct shm_snap_hdr)) {
        err = errno ? errno : EINVAL;
        close(fd);
        errno = err;
        return NULL;
    }
    /* Populated in one go: shm_snap_check() reads all of it anyway, and one fault per page
     * costs more (100,000 routes: 9.2 -> 8.3 ms to adopt a generation). */
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    err = errno;
    close(fd);
    if (p == MAP_FAILED) {
        errno = err;
        return NULL;
    }
    if (shm_snap_check(p, (size_t)st.st_size) != 0 ||
        ((const struct shm_snap_hdr *)p)->gen != gen) {
        munmap(p, (size_t)st.st_size);
        errno = EINVAL;
        return NULL;
    }
    *size = (size_t)st.st_size;
    return p;
}

void shm_snap_unmap(const struct shm_snap_hdr *h, size_t size)
{
    if (h != NULL) {
        munmap((void *)(uintptr_t)h, size);
    }
}

/* Does process <pid> map one of its own /dev/shm/dsp.<pid>.* objects, as every live master
 * does (its control segment)? Unreadable (another user's process): assume so. */
static int maps_own_segment(int pid)
{
    char path[64], key[64], line[512];
    FILE *f;
    int found = 0;

    snprintf(path, sizeof(path), "/proc/%d/maps", pid);
    f = fopen(path, "re");
    if (f == NULL) {
        return errno != ENOENT && errno != ESRCH;
    }
    snprintf(key, sizeof(key), "/dev/shm/dsp.%d.", pid);
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        found = strstr(line, key) != NULL;
    }
    fclose(f);
    return found;
}

/* Is the master that made objects named dsp.<pid>.* alive? Its process name is ours, or (a
 * master started as another program, e.g. under valgrind, or from a renamed binary) it maps
 * one of them. A pid reused by an unrelated process keeps nothing alive. */
static int master_alive(int pid)
{
    return pid == getpid() || fs_pid_is_ours(pid) ||
           ((kill(pid, 0) == 0 || errno == EPERM) && maps_own_segment(pid));
}

/* Unlink /dev/shm/dsp.PID.GEN objects: those of <only_pid>, or (0) of every dead master. */
static void sweep(int only_pid)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *de;

    if (d == NULL) {
        return;
    }
    while ((de = readdir(d)) != NULL) {
        int pid;
        unsigned long long gen;
        char name[300];

        if (sscanf(de->d_name, "dsp.%d.%llu", &pid, &gen) != 2 || pid <= 0) {
            continue;
        }
        if (only_pid != 0 ? pid != only_pid : master_alive(pid)) {
            continue; /* never those of a live master; a reused pid does not keep one alive */
        }
        snprintf(name, sizeof(name), "/%s", de->d_name);
        shm_unlink(name);
    }
    closedir(d);
}

void shm_sweep_stale(void)
{
    sweep(0);
}

void shm_unlink_all_of(int master_pid)
{
    if (master_pid > 0) {
        sweep(master_pid);
    }
}
