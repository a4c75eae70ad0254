/* Unit tests for shm/: layout assertions, publish/map/unlink of generations, a fork test in which
 * a reader keeps adopting generations while the writer publishes, and runtime-slot stability. */
#include "tests/unit/unit.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "master/ms_rt.h"
#include "shm/shm.h"
#include "shm/shm_snap.h"

static void build_cfg(struct ms_config *cfg, struct ms_service *svcs, struct ms_backend *bes,
                      struct ms_route *routes, size_t nbe, const char *svcname)
{
    char err[128];

    memset(cfg, 0, sizeof(*cfg));
    cfg->path = "t.conf";
    cfg->workers = 1;
    cfg->limits.max_connections = 100;
    cfg->limits.max_header_bytes = 16384;
    cfg->limits.header_timeout_ms = 1000;
    cfg->limits.idle_timeout_ms = 1000;
    cfg->limits.shutdown_timeout_ms = 1000;
    cfg->tls.self_signed_cn = "localhost";
    memset(svcs, 0, sizeof(*svcs));
    svcs[0].name = (char *)svcname;
    svcs[0].backends = bes;
    svcs[0].nbackends = nbe;
    svcs[0].retries = 1;
    svcs[0].connect_timeout_ms = 1000;
    svcs[0].response_timeout_ms = 1000;
    for (size_t i = 0; i < nbe; i++) {
        char a[32];
        memset(&bes[i], 0, sizeof(bes[i]));
        snprintf(a, sizeof(a), "127.0.0.1:%zu", 9000 + i);
        bes[i].address = strdup(a);
        bes[i].weight = 1;
        net_parse_addr(a, 0, &bes[i].ss, &bes[i].sslen, err, sizeof(err));
    }
    cfg->services = svcs;
    cfg->nservices = 1;
    memset(routes, 0, sizeof(*routes));
    routes[0].host = "*";
    routes[0].path = "/";
    routes[0].service = (char *)svcname;
    cfg->routes = routes;
    cfg->nroutes = 1;
}

static void free_bes(struct ms_backend *bes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(bes[i].address);
    }
}

static void test_layout(void)
{
    CU_ASSERT_EQUAL(sizeof(struct shm_rt_backend), 128);
    CU_ASSERT_EQUAL(sizeof(struct shm_rt_service), 128);
    CU_ASSERT_EQUAL(sizeof(struct shm_worker_slot), 64);
    CU_ASSERT_EQUAL(offsetof(struct shm_snap_hdr, magic), 0);
    CU_ASSERT_EQUAL(offsetof(struct shm_snap_hdr, gen), 8);
    CU_ASSERT_EQUAL(offsetof(struct shm_ctl, workers) % 64, 0);
    CU_ASSERT_EQUAL(offsetof(struct shm_rt, services) % 64, 0);
}

static void test_publish_map_unlink(void)
{
    struct ms_config cfg;
    struct ms_service svc;
    struct ms_backend bes[3];
    struct ms_route rt;
    struct shm_ctl *ctl = shm_ctl_create((int)getpid());
    size_t size, msize;
    void *snap;
    const struct shm_snap_hdr *h;

    CU_ASSERT_PTR_NOT_NULL_FATAL(ctl);
    build_cfg(&cfg, &svc, bes, &rt, 3, "svc");
    snap = ms_compile(&cfg, 7, &size);
    CU_ASSERT_EQUAL(shm_snap_publish(ctl, snap, size, 7, (uid_t)-1, (gid_t)-1), 0);
    CU_ASSERT_EQUAL(shm_ctl_gen(ctl), 7);
    h = shm_snap_map(ctl->master_pid, 7, &msize);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    CU_ASSERT_EQUAL(msize, size);
    CU_ASSERT_EQUAL(h->gen, 7);
    CU_ASSERT_EQUAL(h->nbackends, 3);
    CU_ASSERT_STRING_EQUAL(shm_s(h, shm_services(h)[0].name), "svc");
    CU_ASSERT_STRING_EQUAL(shm_s(h, shm_backends(h)[2].address), "127.0.0.1:9002");
    /* A mapping outlives the name: retiring a generation never pulls it from under a reader. */
    shm_snap_unlink(ctl->master_pid, 7);
    CU_ASSERT_STRING_EQUAL(shm_s(h, shm_services(h)[0].name), "svc");
    CU_ASSERT_PTR_NULL(shm_snap_map(ctl->master_pid, 7, &msize));
    CU_ASSERT_EQUAL(errno, ENOENT);
    shm_snap_unmap(h, msize);
    /* The wrong generation number inside a segment is refused. */
    CU_ASSERT_EQUAL(shm_snap_publish(ctl, snap, size, 8, (uid_t)-1, (gid_t)-1), 0);
    CU_ASSERT_PTR_NULL(shm_snap_map(ctl->master_pid, 8, &msize));
    shm_snap_unlink(ctl->master_pid, 8);
    free(snap);
    free_bes(bes, 3);
}

/* The reader (a forked child) adopts whatever generation is published, checks the whole table is
 * consistent with the generation number, and exits 0 after enough adoptions; the writer keeps
 * publishing and retiring generations the reader no longer holds. */
static void test_fork_readers_never_torn(void)
{
    struct shm_ctl *ctl = shm_ctl_create((int)getpid());
    struct ms_config cfg;
    struct ms_service svc;
    struct ms_backend bes[4];
    struct ms_route rt;
    uint64_t gen = 1;
    size_t size, nbe = 2;
    void *snap;
    pid_t pid;
    int status = -1;

    CU_ASSERT_PTR_NOT_NULL_FATAL(ctl);
    build_cfg(&cfg, &svc, bes, &rt, 2, "s1");
    snap = ms_compile(&cfg, gen, &size);
    CU_ASSERT_EQUAL_FATAL(shm_snap_publish(ctl, snap, size, gen, (uid_t)-1, (gid_t)-1), 0);
    free(snap);
    pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        uint64_t last = 0;
        int adopted = 0;
        time_t until = time(NULL) + 10;
        while (adopted < 200 && time(NULL) < until) {
            uint64_t g = shm_ctl_gen(ctl);
            size_t ms;
            const struct shm_snap_hdr *h;
            if (g == last) {
                continue;
            }
            h = shm_snap_map(ctl->master_pid, g, &ms);
            if (h == NULL) {
                continue; /* already retired: a newer one exists */
            }
            __atomic_store_n(&ctl->workers[0].gen_oldest, g, __ATOMIC_RELEASE);
            /* gen N has (N % 4) + 1 backends and its service is named "s<N>" */
            if (h->gen != g || h->nbackends != (g % 4) + 1 ||
                atoll(shm_s(h, shm_services(h)[0].name) + 1) != (long long)g) {
                _exit(3);
            }
            shm_snap_unmap(h, ms);
            last = g;
            adopted++;
        }
        _exit(adopted >= 200 ? 0 : 4);
    }
    for (int i = 0; i < 400000 && waitpid(pid, &status, WNOHANG) == 0; i++) {
        char name[32];
        uint64_t held;
        gen++;
        snprintf(name, sizeof(name), "s%llu", (unsigned long long)gen);
        free_bes(bes, nbe);
        nbe = (gen % 4) + 1;
        build_cfg(&cfg, &svc, bes, &rt, nbe, name);
        snap = ms_compile(&cfg, gen, &size);
        shm_snap_publish(ctl, snap, size, gen, (uid_t)-1, (gid_t)-1);
        free(snap);
        held = __atomic_load_n(&ctl->workers[0].gen_oldest, __ATOMIC_ACQUIRE);
        if (held > 1 && held - 1 < gen) {
            shm_snap_unlink(ctl->master_pid, held - 1);
        }
        usleep(200);
    }
    if (waitpid(pid, &status, 0) != pid) {
        kill(pid, SIGKILL);
    }
    CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    for (uint64_t g = 1; g <= gen; g++) {
        shm_snap_unlink(ctl->master_pid, g);
    }
    free_bes(bes, nbe);
}

static void test_rt_slots_stable(void)
{
    struct shm_rt *rt = shm_rt_create();
    struct ms_rt_reg *reg = ms_rt_reg_new();
    struct ms_config cfg;
    struct ms_service svc;
    struct ms_backend bes[3];
    struct ms_route r;
    size_t size;
    struct shm_snap_hdr *s1, *s2;
    uint32_t slot_b1;

    CU_ASSERT_PTR_NOT_NULL_FATAL(rt);
    build_cfg(&cfg, &svc, bes, &r, 3, "svc");
    s1 = ms_compile(&cfg, 1, &size);
    CU_ASSERT_EQUAL(ms_rt_assign(reg, rt, s1, 1), 0);
    slot_b1 = shm_backends(s1)[1].rt_slot;
    CU_ASSERT(slot_b1 != SHM_NONE);
    rt->backends[slot_b1].requests = 42;
    /* Generation 2 drops backend 0 and keeps backends 1 and 2: their counters stay. */
    cfg.services[0].backends = &bes[1];
    cfg.services[0].nbackends = 2;
    s2 = ms_compile(&cfg, 2, &size);
    CU_ASSERT_EQUAL(ms_rt_assign(reg, rt, s2, 2), 0);
    CU_ASSERT_EQUAL(shm_backends(s2)[0].rt_slot, slot_b1);
    CU_ASSERT_EQUAL(rt->backends[slot_b1].requests, 42);
    CU_ASSERT_EQUAL(shm_services(s2)[0].rt_slot, shm_services(s1)[0].rt_slot);
    /* The dropped slot is recycled only once generation 1 is gone. */
    ms_rt_release(reg, rt, 1);
    CU_ASSERT_EQUAL(rt->backends[shm_backends(s1)[0].rt_slot].in_use, 1);
    ms_rt_release(reg, rt, 2);
    CU_ASSERT_EQUAL(rt->backends[shm_backends(s1)[0].rt_slot].in_use, 0);
    CU_ASSERT_EQUAL(rt->backends[slot_b1].in_use, 1);
    free(s1);
    free(s2);
    free_bes(bes, 3);
    ms_rt_reg_free(reg);
}

/* A live master is never swept, even one whose process name differs from ours (started under
 * valgrind, or from a renamed binary): it maps its own segment. A dead one's objects go. */
static void test_sweep_keeps_live_masters(void)
{
    int ready[2];
    char name[128], dead[64], ch;
    pid_t child, gone;
    struct stat st;

    CU_ASSERT_FATAL(pipe(ready) == 0);
    child = fork();
    CU_ASSERT_FATAL(child >= 0);
    if (child == 0) {
        int fd;
        void *p;
        prctl(PR_SET_NAME, "not-a-master", 0, 0, 0);
        snprintf(name, sizeof(name), "/dsp.%d.77", (int)getpid());
        fd = shm_open(name, O_CREAT | O_RDWR, 0600);
        if (fd < 0 || ftruncate(fd, 4096) != 0) {
            _exit(1);
        }
        p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED || write(ready[1], "r", 1) != 1) {
            _exit(1);
        }
        pause();
        _exit(0);
    }
    close(ready[1]);
    CU_ASSERT_FATAL(read(ready[0], &ch, 1) == 1);
    close(ready[0]);
    /* A process that is gone: its objects are stale. */
    gone = fork();
    if (gone == 0) {
        _exit(0);
    }
    waitpid(gone, NULL, 0);
    snprintf(dead, sizeof(dead), "/dsp.%d.5", (int)gone);
    close(shm_open(dead, O_CREAT | O_RDWR, 0600));

    shm_sweep_stale();
    snprintf(name, sizeof(name), "/dev/shm/dsp.%d.77", (int)child);
    CU_ASSERT_EQUAL(stat(name, &st), 0);
    snprintf(name, sizeof(name), "/dev/shm%s", dead);
    CU_ASSERT_NOT_EQUAL(stat(name, &st), 0);

    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    shm_sweep_stale();
    snprintf(name, sizeof(name), "/dev/shm/dsp.%d.77", (int)child);
    CU_ASSERT_NOT_EQUAL(stat(name, &st), 0);
}

UNIT_SUITE(shm, {"layout", test_layout}, {"publish_map_unlink", test_publish_map_unlink},
           {"fork_readers_never_torn", test_fork_readers_never_torn},
           {"rt_slots_stable", test_rt_slots_stable},
           {"sweep_keeps_live_masters", test_sweep_keeps_live_masters})
