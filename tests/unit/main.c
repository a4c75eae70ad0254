/* dispatcher unit test runner: runs every registered CUnit suite, or only those named on the
 * command line (`unit-tests ms_config shm_route`). */
#include "tests/unit/unit.h"

#include <CUnit/Basic.h>
#include <stdio.h>
#include <string.h>

#define MAX_SUITES 64

static struct {
    const char *name;
    const struct unit_test *tests;
} suites[MAX_SUITES];
static int nsuites;

void unit_add_suite(const char *name, const struct unit_test *tests)
{
    if (nsuites < MAX_SUITES) {
        suites[nsuites].name = name;
        suites[nsuites].tests = tests;
        nsuites++;
    }
}

static int wanted(const char *name, int argc, char **argv)
{
    if (argc < 2) {
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    unsigned failed;

    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 2;
    }
    for (int i = 0; i < nsuites; i++) {
        CU_pSuite s;
        if (!wanted(suites[i].name, argc, argv)) {
            continue;
        }
        s = CU_add_suite(suites[i].name, NULL, NULL);
        if (s == NULL) {
            return 2;
        }
        for (const struct unit_test *t = suites[i].tests; t->name != NULL; t++) {
            CU_add_test(s, t->name, t->fn);
        }
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
