/* dispatcher: libFuzzer target for the PROXY protocol v1/v2 header parser (worker/wk_pp.c), the
 * first bytes a worker reads from a proxy_protocol listener.
 * Invariants beyond "no crash": a parsed length is within the input; the parse is a function of
 * the header bytes alone (re-parsing exactly the header gives the same result, and any shorter
 * prefix of a valid header asks for more bytes, never fails nor succeeds early); "need more"
 * never happens past the largest header we accept. */
#include <stdint.h>
#include <string.h>

#include "tests/fuzz/fuzz_util.h"
#include "worker/wk_pp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wk_pp_addr a, b;
    int r, r2;

    memset(&a, 0xa5, sizeof(a));
    r = wk_pp_parse(data, size, &a);
    FUZZ_CHECK(r >= -1);
    FUZZ_CHECK(r <= (int)size);
    if (r == 0) {
        FUZZ_CHECK(size < WK_PP_MAX_V2 + 16);
        return 0;
    }
    if (r < 0) {
        return 0;
    }
    FUZZ_CHECK(r <= WK_PP_MAX_V2);
    FUZZ_CHECK(a.family == 0 || a.family == 2 /* AF_INET */ || a.family == 10 /* AF_INET6 */);
    /* The header alone parses the same. */
    memset(&b, 0x5a, sizeof(b));
    r2 = wk_pp_parse(data, (size_t)r, &b);
    FUZZ_CHECK(r2 == r);
    FUZZ_CHECK(memcmp(&a, &b, sizeof(a)) == 0);
    /* Every shorter prefix (checked at a few cuts to stay fast) needs more bytes. */
    {
        size_t cuts[4] = {(size_t)r - 1, (size_t)r / 2, 1, (size_t)r > 16 ? 16 : 0};
        for (int i = 0; i < 4; i++) {
            if (cuts[i] > 0 && cuts[i] < (size_t)r) {
                FUZZ_CHECK(wk_pp_parse(data, cuts[i], &b) == 0);
            }
        }
    }
    return 0;
}
