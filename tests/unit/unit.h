/* dispatcher unit tests: each test file registers its CUnit suite from a constructor, so adding a
 * file needs no edit elsewhere. */
#ifndef DSP_TEST_UNIT_H
#define DSP_TEST_UNIT_H

#include <CUnit/CUnit.h>

struct unit_test {
    const char *name;
    CU_TestFunc fn;
};

/* Register suite <name> with the NULL-name-terminated <tests>. Call from a constructor. */
void unit_add_suite(const char *name, const struct unit_test *tests);

#define UNIT_SUITE(sname, ...)                                                                     \
    static const struct unit_test sname##_tests[] = {__VA_ARGS__, {NULL, NULL}};                   \
    __attribute__((constructor)) static void sname##_register(void)                                \
    {                                                                                              \
        unit_add_suite(#sname, sname##_tests);                                                     \
    }

#endif
