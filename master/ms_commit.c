/* dispatcher: committing a configuration change (see ms_commit.h), and the file reload built on
 * it. Master only. */
#include "master/ms_commit.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/dsp.h"
#include "common/log.h"
#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "master/ms_loop.h"
#include "master/ms_master.h"
#include "master/ms_redis.h"
#include "master/ms_rt.h"
#include "master/ms_tls.h"
#include "shm/shm.h"

/* ---- generations ---------------------------------------------------------------------------- */
int ms_publish(void)
{
    size_t size;
    uint64_t gen = ms.gen + 1;
    void *snap = ms_compile(ms.cfg, gen, &size);

    if (ms_rt_assign(ms.reg, ms.rt, snap, gen) != 0) {
        free(snap);
        return -1;
    }
    if (shm_snap_publish(ms.ctl, snap, size, gen, ms.uid, ms.gid) != 0) {
        explicit_bzero(snap, size); /* holds private keys */
        free(snap);
        return -1;
    }
    if (ms.snap != NULL) {
        explicit_bzero(ms.snap, ms.snap_size);
    }
    free(ms.snap);
    ms.snap = snap;
    ms.snap_size = size;
    ms.gen = gen;
    if (ms.oldest_kept == 0) {
        ms.oldest_kept = gen;
    }
    ms_loop_published();
    return 0;
}

/* ---- commit --------------------------------------------------------------------------------- */
/* What the last successful file reload changed in listeners and workers (heap lines, or NULL). */
static char *last_changes;

/* What the master itself derives from the configuration. */
static void apply_master(const struct ms_config *old, const struct ms_config *ncfg)
{
    log_level = ncfg->log.level;
    if (old->log.error == NULL || ncfg->log.error == NULL ||
        strcmp(old->log.error, ncfg->log.error) != 0) {
        if (log_open(ncfg->log.error) != 0) {
            log_errno(LOG_ERROR, errno, "cannot open error log %s", ncfg->log.error);
        }
    }
}

static double mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void refused(const struct ms_change *ch, enum ms_outcome how, const char *errs,
                    char **errs_out)
{
    ch->report(ch->arg, how, errs, NULL);
    if (ch->origin != MS_ORIGIN_FILE) {
        return;
    }
    __atomic_fetch_add(&ms.ctl->reload_failures, 1, __ATOMIC_RELAXED);
    if (errs_out != NULL) {
        *errs_out = dsp_xstrdup(how == MS_COMMIT_UNPUBLISHED
                                    ? "cannot publish the new configuration (see the error log)"
                                : errs != NULL ? errs
                                               : "invalid configuration (see the error log)");
    }
}

int ms_commit(const struct ms_change *ch, char **errs_out)
{
    struct ms_config *old = ms.cfg, *ncfg;
    struct ms_commit_times times;
    char *errs = NULL, *changes = NULL;
    double t0 = mono_ms(), t1, t2;

    ncfg = ch->validate(ch->arg, &errs);
    if (ncfg == NULL) {
        refused(ch, MS_COMMIT_INVALID, errs, errs_out);
        if (ch->undo != NULL) {
            ch->undo(ch->arg);
        }
        free(errs);
        return -1;
    }
    /* New listeners (and the sockets more workers need) are bound before anything changes: a
     * reload that cannot bind is refused like an invalid file. */
    if (ncfg != old && ms_listeners_prepare(ncfg, &errs, &changes) != 0) {
        ms_config_free(ncfg);
        free(changes);
        refused(ch, MS_COMMIT_INVALID, errs, errs_out);
        if (ch->undo != NULL) {
            ch->undo(ch->arg);
        }
        free(errs);
        return -1;
    }
    ms.cfg = ncfg;
    t1 = mono_ms();
    if (ms_publish() != 0) {
        ms.cfg = old;
        if (ncfg != old) {
            ms_listeners_abort();
            free(changes);
            ms_config_free(ncfg);
        }
        refused(ch, MS_COMMIT_UNPUBLISHED, NULL, errs_out);
        if (ch->undo != NULL) {
            ch->undo(ch->arg);
        }
        return -1;
    }
    /* Published first: a worker started or handed a socket now serves the new generation. */
    if (ncfg != old) {
        ms_listeners_apply();
    }
    apply_master(old, ncfg);
    t2 = mono_ms();
    if (ncfg != old) {
        ms_config_drop_source(ncfg);
        ms_config_free(old);
    }
    times.validate = t1 - t0;
    times.publish = t2 - t1;
    times.free_old = mono_ms() - t2;
    if (ch->origin == MS_ORIGIN_FILE) {
        free(last_changes);
        last_changes = changes;
        changes = NULL;
    }
    free(changes);
    ch->report(ch->arg, MS_COMMIT_DONE, NULL, &times);
    return 0;
}

/* ---- the file ------------------------------------------------------------------------------- */
static struct ms_config *file_validate(void *arg, char **errs)
{
    struct ms_config *ncfg = NULL;

    (void)arg;
    /* Certificates are loaded and checked as part of the config: a bad pair refuses the reload
     * with its line, and the old certificates keep serving. The fleet's data did not change with
     * the file: the last good Redis data is merged again, and a file it no longer fits (a Redis
     * route naming a service the file dropped) is refused the same way. */
    if (ms_config_load(ms.conf_path, 1, &ncfg, errs) != 0 || ms_tls_prepare(ncfg, errs) != 0 ||
        ms_redis_merge_into(ncfg, errs) != 0) {
        ms_config_free(ncfg);
        return NULL;
    }
    return ncfg;
}

static void file_report(void *arg, enum ms_outcome how, const char *errs,
                        const struct ms_commit_times *t)
{
    (void)arg;
    switch (how) {
    case MS_COMMIT_INVALID:
        log_error("reload failed; still serving generation %llu", (unsigned long long)ms.gen);
        log_lines(LOG_ERROR, errs);
        ms_redis_file_outcome(errs != NULL ? errs : "invalid configuration");
        break;
    case MS_COMMIT_UNPUBLISHED:
        ms_redis_file_outcome("cannot publish the new configuration");
        break; /* ms_publish() logged why */
    case MS_COMMIT_DONE:
        ms_redis_file_outcome(NULL);
        log_info("configuration reloaded: generation %llu, %zu services, %zu routes (read %.0f "
                 "ms, published %.0f ms later, old one freed in %.0f ms)",
                 (unsigned long long)ms.gen, ms.cfg->nservices, ms.cfg->nroutes, t->validate,
                 t->publish, t->free_old);
        log_lines(LOG_INFO, last_changes);
        break;
    }
}

int ms_reload(char **errs_out, char **changes_out)
{
    static const struct ms_change file = {
        .origin = MS_ORIGIN_FILE,
        .validate = file_validate,
        .report = file_report,
    };

    free(last_changes);
    last_changes = NULL;
    if (ms_commit(&file, errs_out) != 0) {
        return -1;
    }
    if (changes_out != NULL) {
        *changes_out = last_changes != NULL ? dsp_xstrdup(last_changes) : NULL;
    }
    return 0;
}
