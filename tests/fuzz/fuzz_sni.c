/* dispatcher: libFuzzer target for the TLS server name a client sends (SNI): normalised by
 * tls_name_norm() (common/tls.c) and looked up in the worker's certificate table, exact name then
 * "*.parent" wildcard (wk_sni_find() in worker/wk_tls.c), as on_servername() does.
 * Input: the name (SNI reaches us as a C string: cut at the first NUL).
 * Invariants beyond "no crash": the normalised name is lower case, within TLS_MAX_NAME and
 * NUL-ended; a lookup answers one of the table's certificates or "none"; an exact name of the
 * table finds its own certificate; a wildcard match only covers one label (the name's first dot
 * leads to the wildcard's suffix). */
#include <stdint.h>
#include <string.h>

#include "common/tls.h"
#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_tls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const names[] = {
    "a.example",
    "*.example",
    "*.b.example",
    "xn--bcher-kva.example",
    "localhost",
    "*.x",
    "very.deep.name.example.org",
    "127.0.0.1",
};
#define NNAMES (sizeof(names) / sizeof(names[0]))
static struct wk_sni *table;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char in[1024], name[TLS_MAX_NAME + 2];
    size_t n, len;
    uint32_t c;

    if (table == NULL) {
        table = wk_sni_new(NNAMES);
        FUZZ_CHECK(table != NULL);
        for (uint32_t i = 0; i < NNAMES; i++) {
            wk_sni_add(table, names[i], strlen(names[i]), i, 0);
        }
        for (uint32_t i = 0; i < NNAMES; i++) {
            FUZZ_CHECK(wk_sni_find(table, names[i], strlen(names[i])) == i);
        }
    }
    len = size < sizeof(in) - 1 ? size : sizeof(in) - 1;
    memcpy(in, data, len);
    in[len] = '\0';
    len = strlen(in);
    memset(name, 0x5a, sizeof(name));
    n = tls_name_norm(in, len, name);
    FUZZ_CHECK(n <= TLS_MAX_NAME);
    if (n == 0) {
        return 0;
    }
    FUZZ_CHECK(name[n] == '\0');
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(!(name[i] >= 'A' && name[i] <= 'Z'));
    }
    c = wk_sni_find(table, name, n);
    FUZZ_CHECK(c == UINT32_MAX || c < NNAMES);
    if (c != UINT32_MAX) {
        const char *want = names[c];
        if (want[0] == '*') {
            const char *dot = memchr(name, '.', n);
            FUZZ_CHECK(dot != NULL && dot != name);
            FUZZ_CHECK(strcmp(dot, want + 1) == 0);
        } else {
            FUZZ_CHECK(strlen(want) == n && memcmp(want, name, n) == 0);
        }
    }
    return 0;
}
