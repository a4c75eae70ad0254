/* dispatcher: helpers shared by the libFuzzer targets (tests/fuzz/fuzz_*.c). Each target is one
 * translation unit linked with build/fuzz/libdsp.a; these are static so nothing collides. */
#ifndef DSP_FUZZ_UTIL_H
#define DSP_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "master/ms_config.h"

/* A failed invariant is a crash: libFuzzer keeps the input as an artifact. */
#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* A private folder for the temp files of this process (removed at exit). */
static char fuzz_dir[64];

#define FUZZ_UNUSED __attribute__((unused))

FUZZ_UNUSED static void fuzz_dir_rm(void)
{
    if (fuzz_dir[0] != '\0') {
        char p[128];
        snprintf(p, sizeof(p), "%s/dispatcher.conf", fuzz_dir);
        unlink(p);
        snprintf(p, sizeof(p), "%s/users", fuzz_dir);
        unlink(p);
        snprintf(p, sizeof(p), "%s/page.html", fuzz_dir);
        unlink(p);
        rmdir(fuzz_dir);
    }
}

FUZZ_UNUSED static const char *fuzz_tmpdir(void)
{
    if (fuzz_dir[0] == '\0') {
        snprintf(fuzz_dir, sizeof(fuzz_dir), "/tmp/dsp-fuzz-XXXXXX");
        if (mkdtemp(fuzz_dir) == NULL) {
            perror("mkdtemp");
            abort();
        }
        atexit(fuzz_dir_rm);
    }
    return fuzz_dir;
}

/* The files a config may name by a relative path, in the private folder: "users" (an htpasswd
 * file for basic_auth's users_file: two good lines and a refused one) and "page.html" (a static
 * middleware's body_file). */
FUZZ_UNUSED static void fuzz_aux_files(void)
{
    static const char users[] =
        "alice:$2y$04$abcdefghijklmnopqrstuuNQ3yP4wP0W0wuN3b0bFvD3yNbX0nG9m\n"
        "bob:$6$saltsalt$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        "aaaaaaaaaaaa\n"
        "# a comment\n";
    static const char page[] = "<html>down for maintenance</html>\n";
    const char *name[2] = {"users", "page.html"}, *text[2] = {users, page};

    for (int i = 0; i < 2; i++) {
        char path[128];
        FILE *f;
        snprintf(path, sizeof(path), "%s/%s", fuzz_tmpdir(), name[i]);
        f = fopen(path, "w");
        if (f == NULL || fputs(text[i], f) < 0 || fclose(f) != 0) {
            perror(path);
            abort();
        }
    }
}

/* Load config text <text>[0, n) the way the master loads a file (the parser reads files only):
 * written to a temp file in a private folder, loaded, the file removed. Returns 0 with <*out>,
 * or -1 with <*errs> (heap) like ms_config_load(). */
FUZZ_UNUSED static int fuzz_config_load(const char *text, size_t n, struct ms_config **out,
                                        char **errs)
{
    char path[128];
    FILE *f;
    int rc;

    snprintf(path, sizeof(path), "%s/dispatcher.conf", fuzz_tmpdir());
    f = fopen(path, "w");
    if (f == NULL || (n > 0 && fwrite(text, 1, n, f) != n) || fclose(f) != 0) {
        perror(path);
        abort();
    }
    rc = ms_config_load(path, 0, out, errs);
    unlink(path);
    return rc;
}

/* Quiet logs: a fuzzer run would otherwise print every rejected input's warning. */
FUZZ_UNUSED static void fuzz_quiet(void)
{
    log_level = LOG_ERROR - 1;
}

#endif
