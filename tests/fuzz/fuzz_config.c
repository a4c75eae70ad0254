/* dispatcher: libFuzzer target for the configuration parser (master/ms_config.c over libconfig),
 * and for the compiler that turns an accepted config into a snapshot (master/ms_compile.c).
 * The input is the text of dispatcher.conf, loaded from a temp file like the master loads it.
 * Invariants beyond "no crash, no leak": a rejected config comes with at least one error line;
 * an accepted one compiles into a snapshot that passes the workers' own check (shm_snap_check)
 * and whose counts match the config.
 * Inputs naming device, /proc or /sys paths, or leaving the folder, are skipped: they would make
 * the fuzzer read the machine's files (what such paths do is tested in the integration suite). */
#include <stdint.h>
#include <string.h>

#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "shm/shm_snap.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int has(const uint8_t *d, size_t n, const char *s)
{
    return memmem(d, n, s, strlen(s)) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ms_config *cfg = NULL;
    char *errs = NULL;

    static int files;

    fuzz_quiet();
    if (!files) {
        fuzz_aux_files(); /* (users, page.html: files a config may name) */
        files = 1;
    }
    if (size > 65536 || has(data, size, "/dev") || has(data, size, "/proc") ||
        has(data, size, "/sys") || has(data, size, "..") || has(data, size, "/run")) {
        return 0;
    }
    if (fuzz_config_load((const char *)data, size, &cfg, &errs) != 0) {
        FUZZ_CHECK(cfg == NULL);
        FUZZ_CHECK(errs != NULL && errs[0] != '\0');
        free(errs);
        return 0;
    }
    FUZZ_CHECK(cfg != NULL && errs == NULL);
    {
        size_t sz = 0;
        const struct shm_snap_hdr *s = ms_compile(cfg, 1, &sz);
        FUZZ_CHECK(s != NULL && sz > 0);
        FUZZ_CHECK(shm_snap_check(s, sz) == 0);
        FUZZ_CHECK(s->nroutes == cfg->nroutes);
        FUZZ_CHECK(s->nservices == cfg->nservices);
        free((void *)s);
    }
    ms_config_free(cfg);
    return 0;
}
