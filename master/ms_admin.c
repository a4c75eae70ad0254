/* dispatcher: the admin server's view of the master (see ms_admin.h). The only place that hands
 * master state to admin/: the admin server calls these through its host table. */
#include "master/ms_admin.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "admin/adm.h"
#include "admin/adm_render.h"
#include "common/dsp.h"
#include "common/log.h"
#include "master/ms_config.h"
#include "master/ms_dns.h"
#include "master/ms_loop.h"
#include "master/ms_master.h"
#include "master/ms_redis.h"

/* RSS of the master and its workers, in MiB. */
static double rss_mb(void)
{
    long page = sysconf(_SC_PAGESIZE);
    double total = 0;
    pid_t pids[SHM_MAX_WORKERS + 1];
    int n = 0;

    pids[n++] = getpid();
    for (int i = 0; i < ms.nworkers && i < (int)SHM_MAX_WORKERS; i++) {
        if (ms.w[i].pid != 0) {
            pids[n++] = ms.w[i].pid;
        }
    }
    for (int i = 0; i < n; i++) {
        char path[64], buf[128];
        unsigned long size = 0, resident = 0;
        int fd;
        ssize_t r;

        snprintf(path, sizeof(path), "/proc/%d/statm", (int)pids[i]);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd == -1) {
            continue;
        }
        r = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (r <= 0) {
            continue;
        }
        buf[r] = '\0';
        if (sscanf(buf, "%lu %lu", &size, &resident) == 2) {
            total += (double)resident * (double)page;
        }
    }
    return total / (1024.0 * 1024.0);
}

static int view(struct adm_view *v, void *arg)
{
    (void)arg;
    if (ms.snap == NULL || ms.ctl == NULL || ms.rt == NULL) {
        return -1;
    }
    memset(v, 0, sizeof(*v));
    v->snap = ms.snap;
    v->rt = ms.rt;
    v->ctl = ms.ctl;
    v->nworkers = (unsigned)ms.nworkers;
    v->configured = (unsigned)ms.nactive;
    v->slots_ever = (unsigned)ms.slots_ever;
    for (int i = 0; i < ms.nworkers && i < (int)SHM_MAX_WORKERS; i++) {
        v->retiring[i] = ms_slot_retired(i);
    }
    v->now_ms = dsp_now_ms();
    v->now_s = dsp_wall_s();
    v->started_at = ms.ctl->started_at;
    v->loaded_at = v->snap->loaded_at; /* stamped when the generation was compiled */
    v->memory_mb = rss_mb();
    v->redis_state = ms.cfg->redis.enabled ? ms_redis_state() : NULL;
    v->redis_problem = ms.cfg->redis.enabled ? ms_redis_rejected() : NULL;
    v->redis_master = ms.cfg->redis.enabled ? ms_redis_master() : NULL;
    v->redis_has_version = ms_redis_version(&v->redis_version);
    v->service_extra = ms_dns_render_service;
    v->metrics_extra = ms_dns_render_metrics;
    v->fleet = ms_redis_fleet();
    return 0;
}

static int reload(uint64_t *gen, char **errs, char **warns, char **changes, void *arg)
{
    int rc;

    (void)arg;
    log_info("reload requested on the admin socket");
    /* What this reload warns about (an expired certificate, a setting that needs a restart)
     * goes back to the operator who asked, as well as to the log. */
    log_capture_start();
    rc = ms_reload(errs, changes);
    *warns = log_capture_end();
    if (rc != 0) {
        return -1;
    }
    *gen = ms.gen;
    return 0;
}

static void settings(struct adm_settings *s, void *ctx)
{
    const struct ms_config *cfg = ms.cfg;

    (void)ctx;
    s->socket = cfg->admin.socket;
    s->socket_mode = cfg->admin.mode;
    s->http = cfg->admin.http;
    s->http_ss = &cfg->admin.http_ss;
    s->http_sslen = cfg->admin.http_sslen;
    s->http_allow = cfg->admin.http_allow;
    s->nhttp_allow = cfg->admin.nhttp_allow;
    s->access_log = cfg->log.access;
    s->header_timeout_ms = (uint64_t)cfg->limits.header_timeout_ms;
    s->idle_timeout_ms = (uint64_t)cfg->limits.idle_timeout_ms;
    s->uid = ms.uid;
    s->gid = ms.gid;
}

static int draining(void *ctx)
{
    (void)ctx;
    return ms.stopping != 0;
}

static int watch(int fd, uint32_t events, adm_fd_cb cb, void *arg, void *ctx)
{
    (void)ctx;
    return ms_loop_add(fd, events, cb, arg);
}

static int rewatch(int fd, uint32_t events, void *ctx)
{
    (void)ctx;
    return ms_loop_mod(fd, events);
}

static void unwatch(int fd, void *ctx)
{
    (void)ctx;
    ms_loop_del(fd);
}

/* What admin GET /health would answer, for the workers' listeners[].health_uri: they read one
 * word instead of judging every backend per probe. (The view is built without the costly parts
 * of view(): memory, Redis.) */
static void publish_health(void)
{
    uint32_t h = SHM_HEALTH_STARTING;
    char why[256];

    if (ms.ctl == NULL) {
        return;
    }
    if (ms.stopping) {
        h = SHM_HEALTH_DRAINING;
    } else if (ms.snap != NULL && ms.rt != NULL) {
        struct adm_view v;
        memset(&v, 0, sizeof(v));
        v.snap = ms.snap;
        v.rt = ms.rt;
        v.ctl = ms.ctl;
        v.nworkers = (unsigned)ms.nworkers;
        v.now_ms = dsp_now_ms();
        v.now_s = dsp_wall_s();
        v.started_at = ms.ctl->started_at;
        v.loaded_at = v.snap->loaded_at;
        h = adm_healthy(&v, why, sizeof(why)) ? SHM_HEALTH_SERVING : SHM_HEALTH_DEGRADED;
    }
    __atomic_store_n(&ms.ctl->health, h, __ATOMIC_RELEASE);
}

static void on_tick(uint64_t now_ms, void *arg)
{
    (void)arg;
    publish_health();
    adm_tick(now_ms);
}

static void on_publish(void *arg)
{
    (void)arg;
    publish_health();
    adm_config_changed();
}

int ms_admin_start(void)
{
    struct adm_host host = {
        .cmd = {.view = view, .reload = reload, .rt = ms.rt, .arg = NULL},
        .settings = settings,
        .draining = draining,
        .watch = watch,
        .rewatch = rewatch,
        .unwatch = unwatch,
        .ctx = NULL,
    };

    if (adm_init(&host) != 0) {
        return -1;
    }
    if (ms_loop_tick(on_tick, NULL) != 0 || ms_loop_on_publish(on_publish, NULL) != 0) {
        log_error("admin: master loop tables full");
        return -1;
    }
    return 0;
}
