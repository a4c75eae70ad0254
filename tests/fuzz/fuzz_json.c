/* dispatcher: libFuzzer target for the JSON reader (admin/adm_json.c) that dispatcherctl uses on
 * answers from the admin socket (untrusted: whoever owns the socket path can answer anything).
 * Invariants beyond "no crash, no leak": a parsed tree has consistent sizes, strings are
 * NUL-terminated at their length, and the lookup helpers are safe on any node. */
#include <stdint.h>
#include <string.h>

#include "admin/adm_json.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(const struct adm_jval *v, int depth)
{
    FUZZ_CHECK(depth < 1000);
    switch (v->type) {
    case ADM_J_NULL:
    case ADM_J_BOOL:
        break;
    case ADM_J_NUM:
        FUZZ_CHECK(v->str != NULL);
        break;
    case ADM_J_STR:
        FUZZ_CHECK(v->str != NULL && v->str[v->slen] == '\0');
        break;
    case ADM_J_ARR:
        FUZZ_CHECK(v->n == 0 || v->items != NULL);
        for (size_t i = 0; i < v->n; i++) {
            walk(&v->items[i], depth + 1);
        }
        break;
    case ADM_J_OBJ:
        FUZZ_CHECK(v->n == 0 || (v->items != NULL && v->keys != NULL));
        for (size_t i = 0; i < v->n; i++) {
            FUZZ_CHECK(v->keys[i] != NULL);
            FUZZ_CHECK(adm_json_get(v, v->keys[i]) != NULL);
            (void)adm_json_str(v, v->keys[i]);
            (void)adm_json_num(v, v->keys[i], 0);
            walk(&v->items[i], depth + 1);
        }
        break;
    default:
        FUZZ_CHECK(0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    struct adm_jval *v;
    char *copy = malloc(size ? size : 1);

    FUZZ_CHECK(copy != NULL);
    memcpy(copy, data, size);
    err[0] = '\0';
    v = adm_json_parse(copy, size, err, sizeof(err));
    if (v == NULL) {
        FUZZ_CHECK(err[0] != '\0');
    } else {
        walk(v, 0);
        (void)adm_json_get(v, "ok");
        (void)adm_json_str(v, "error");
        adm_json_free(v);
    }
    free(copy);
    return 0;
}
