/* common/conffile.c: @include rewriting keeps libconfig's meaning (strings, comments, escapes,
 * line numbers) and refuses files that are not regular without ever opening them blocking. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/conffile.h"
#include "tests/unit/unit.h"

static char dir[PATH_MAX];

static void put(const char *name, const char *text)
{
    char p[PATH_MAX + 64];
    FILE *f;

    snprintf(p, sizeof(p), "%s/%s", dir, name);
    f = fopen(p, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

/* Parse <name>; returns 0 and leaves <lc> filled, or -1 with the message in <err> and the place
 * ("FILE:LINE", FILE's base name only) in <where>. */
static int rd(config_t *lc, const char *name, char *err, size_t errlen, char *where, size_t wlen)
{
    char p[PATH_MAX + 64];
    struct conf_src src;
    const char *efile;
    unsigned eline;
    int rc;

    snprintf(p, sizeof(p), "%s/%s", dir, name);
    config_init(lc);
    rc = conf_read(lc, p, dir, &src, err, errlen, &efile, &eline);
    if (rc != 0) {
        const char *slash = efile ? strrchr(efile, '/') : NULL;
        snprintf(where, wlen, "%s:%u", slash ? slash + 1 : (efile ? efile : "-"), eline);
    }
    conf_src_free(&src);
    return rc;
}

static void setup(void)
{
    char p[PATH_MAX + 64];

    snprintf(dir, sizeof(dir), "/tmp/dsp-unit-conf-XXXXXX");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(dir));
    snprintf(p, sizeof(p), "%s/fifo", dir);
    CU_ASSERT_EQUAL_FATAL(mkfifo(p, 0600), 0);
    put("inc.conf", "b = 2;\n");
}

static void teardown(void)
{
    char cmd[PATH_MAX + 16];

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CU_ASSERT_EQUAL(system(cmd), 0);
}

static void test_includes_followed_like_libconfig(void)
{
    config_t lc;
    char err[512], where[PATH_MAX];
    int v = 0;

    setup();
    /* Not includes: inside a block comment, a line comment, not at a line start. Includes:
     * indented, escaped characters in the name, after a comment ended on an earlier line. */
    put("main.conf", "/* x\n@include \"fifo\"\n*/\n# @include \"fifo\"\n"
                     "// @include \"fifo\"\n a = 1; \n \t@include \"in\\c.conf\"\n"
                     "/* y */\n@include \"inc.conf\"\n");
    CU_ASSERT_EQUAL(rd(&lc, "main.conf", err, sizeof(err), where, sizeof(where)), -1);
    /* the same name twice is a duplicate setting: libconfig did read both includes */
    CU_ASSERT_PTR_NOT_NULL(strstr(where, "inc.conf:1"));
    config_destroy(&lc);

    put("main.conf", "s = \"multi\nline\";\n@include \"inc.conf\"\n");
    CU_ASSERT_EQUAL_FATAL(rd(&lc, "main.conf", err, sizeof(err), where, sizeof(where)), 0);
    CU_ASSERT(config_lookup_int(&lc, "b", &v) == CONFIG_TRUE && v == 2);
    config_destroy(&lc);

    /* A quote closes a string across lines: an @include line inside one is no include. */
    put("main.conf", "s = \"a\n@include \\\"fifo\\\" \";\nc = 3;\n");
    CU_ASSERT_EQUAL(rd(&lc, "main.conf", err, sizeof(err), where, sizeof(where)), 0);
    config_destroy(&lc);
    teardown();
}

static void test_errors_point_at_the_real_file(void)
{
    config_t lc;
    char err[512], where[PATH_MAX];

    setup();
    put("bad.conf", "x = 1;\ny = ;\n");
    put("main.conf", "a = 1;\n\n@include \"bad.conf\"\n");
    CU_ASSERT_EQUAL(rd(&lc, "main.conf", err, sizeof(err), where, sizeof(where)), -1);
    CU_ASSERT_STRING_EQUAL(where, "bad.conf:2");
    config_destroy(&lc);

    put("main.conf", "a = 1;\n@include \"fifo\"\n");
    CU_ASSERT_EQUAL(rd(&lc, "main.conf", err, sizeof(err), where, sizeof(where)), -1);
    CU_ASSERT_STRING_EQUAL(where, "main.conf:2");
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "a FIFO, not a regular file"));
    config_destroy(&lc);

    put("main.conf", "a = 1;\n@include \"/dev/zero\"\n");
    CU_ASSERT_EQUAL(rd(&lc, "main.conf", err, sizeof(err), where, sizeof(where)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "a character device"));
    config_destroy(&lc);

    put("loop.conf", "@include \"loop.conf\"\n");
    CU_ASSERT_EQUAL(rd(&lc, "loop.conf", err, sizeof(err), where, sizeof(where)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "nested more than 10 deep"));
    config_destroy(&lc);

    CU_ASSERT_EQUAL(rd(&lc, "fifo", err, sizeof(err), where, sizeof(where)), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "cannot read config"));
    config_destroy(&lc);
    teardown();
}

UNIT_SUITE(conffile, {"includes_followed_like_libconfig", test_includes_followed_like_libconfig},
           {"errors_point_at_the_real_file", test_errors_point_at_the_real_file})
