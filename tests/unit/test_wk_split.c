/* dispatcher unit tests: weighted splits (route `split`, `sticky`): the weighted draw (its
 * distribution, zero weights, entries left out), cookie parsing, the dsp_split cookie among a
 * request's Cookie headers, the config and Redis parsers and the compiled snapshot. */
#include "tests/unit/unit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "master/ms_compile.h"
#include "master/ms_config.h"
#include "master/ms_redis_ns.h"
#include "shm/shm_snap.h"
#include "worker/wk_internal.h"

static uint64_t rng_state[2] = {0x9e3779b97f4a7c15ull, 0xdeadbeefcafef00dull};

static void test_draw_distribution(void)
{
    const struct shm_split e[3] = {{0, 95, {0, 0}}, {1, 5, {0, 0}}, {2, 0, {0, 0}}};
    uint32_t count[3] = {0, 0, 0};
    const uint32_t n = 200000;

    for (uint32_t i = 0; i < n; i++) {
        uint32_t k = wk_split_draw(e, 3, 0, wk_rand(rng_state));
        CU_ASSERT_FATAL(k < 3);
        count[k]++;
    }
    /* 95/5 within 0.5 points over 200,000 draws (the standard deviation is 0.05 points). */
    CU_ASSERT(count[0] > n * 0.945 && count[0] < n * 0.955);
    CU_ASSERT(count[1] > n * 0.045 && count[1] < n * 0.055);
    CU_ASSERT_EQUAL(count[2], 0); /* weight 0 is never drawn */

    /* Exact boundaries: the random bits map onto [0, total) in order. */
    CU_ASSERT_EQUAL(wk_split_draw(e, 3, 0, 0), 0);
    CU_ASSERT_EQUAL(wk_split_draw(e, 3, 0, UINT64_MAX), 1);
    CU_ASSERT_EQUAL(wk_split_draw(e, 3, 0, (uint64_t)0xF3333333u << 32), 0); /* 0.95 - eps */
    CU_ASSERT_EQUAL(wk_split_draw(e, 3, 0, (uint64_t)0xF3400000u << 32), 1);
}

static void test_draw_skip_and_zero(void)
{
    const struct shm_split e[4] = {{0, 0, {0, 0}},
                                   {1, 3, {0, 0}},
                                   {2, 1, {0, 0}},
                                   {3, 1000000, {0, 0}}};
    const struct shm_split zero[2] = {{0, 0, {0, 0}}, {1, 0, {0, 0}}};
    uint32_t count[4] = {0, 0, 0, 0};

    CU_ASSERT_EQUAL(wk_split_draw(zero, 2, 0, 12345), UINT32_MAX);
    CU_ASSERT_EQUAL(wk_split_draw(e, 4, 0xe, 12345), UINT32_MAX); /* only weight 0 left */
    CU_ASSERT_EQUAL(wk_split_draw(e, 0, 0, 12345), UINT32_MAX);
    for (int i = 0; i < 40000; i++) {
        uint32_t k = wk_split_draw(e, 4, 1u << 3, wk_rand(rng_state)); /* the big one out */
        CU_ASSERT_FATAL(k == 1 || k == 2);
        count[k]++;
    }
    CU_ASSERT(count[1] > 29000 && count[1] < 31000); /* 3:1 */
    for (int i = 0; i < 1000; i++) {
        CU_ASSERT_EQUAL(wk_split_draw(e, 4, (1u << 3) | (1u << 1), wk_rand(rng_state)), 2);
    }
    /* 16 entries of the largest weight: no overflow of the draw. */
    {
        struct shm_split big[16];
        uint32_t seen = 0;
        for (int i = 0; i < 16; i++) {
            big[i].service = (uint32_t)i;
            big[i].weight = MS_MAX_SPLIT_WEIGHT;
        }
        for (int i = 0; i < 4000; i++) {
            uint32_t k = wk_split_draw(big, 16, 0, wk_rand(rng_state));
            CU_ASSERT_FATAL(k < 16);
            seen |= 1u << k;
        }
        CU_ASSERT_EQUAL(seen, 0xffffu);
        CU_ASSERT_EQUAL(wk_split_draw(big, 16, 0, UINT64_MAX), 15);
    }
}

/* All pairs of <v> as "name=value|" into <out>. */
static void pairs(const char *v, char *out, size_t cap)
{
    const char *name, *val;
    size_t pos = 0, nlen, vlen, o = 0;

    out[0] = '\0';
    while (wk_cookie_next(v, strlen(v), &pos, &name, &nlen, &val, &vlen)) {
        o += (size_t)snprintf(out + o, cap - o, "%.*s=%.*s|", (int)nlen, name, (int)vlen, val);
    }
}

static void test_cookie_parse(void)
{
    char out[512];

    pairs("a=1", out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "a=1|");
    pairs("a=1; b=2;c=3 ;  d = 4 ", out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "a=1|b=2|c=3|d=4|");
    pairs("dsp_split=\"v2\"; x=\"\"; y=\"", out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "dsp_split=v2|x=|y=\"|");
    pairs(";;; novalue; =x; e=; f=a=b;", out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "=x|e=|f=a=b|");
    pairs("", out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "");
    pairs("   ;  ", out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "");
}

/* A config with two services and a sticky split route, compiled. */
static struct shm_snap_hdr *compile_text(const char *text, struct ms_config **cfgp)
{
    char path[] = "/tmp/dsp-split-XXXXXX";
    int fd = mkstemp(path);
    struct ms_config *cfg = NULL;
    char *errs = NULL;
    size_t size = 0;
    struct shm_snap_hdr *h;

    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    if (ms_config_load(path, 0, &cfg, &errs) != 0) {
        fprintf(stderr, "\n%s\n", errs);
    }
    unlink(path);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    h = ms_compile(cfg, 1, &size);
    CU_ASSERT_FATAL(shm_snap_check(h, size) == 0);
    *cfgp = cfg;
    return h;
}

static const char split_conf[] =
    "listeners = ( { address = \"127.0.0.1:8080\"; } );\n"
    "services = ( { name = \"shop-v1\"; backends = [ \"127.0.0.1:9101\" ]; },\n"
    "             { name = \"shop-v2\"; backends = [ \"127.0.0.1:9102\" ]; },\n"
    "             { name = \"other\"; backends = [ \"127.0.0.1:9103\" ]; } );\n"
    "routes = ( { host = \"shop.do\"; sticky = true;\n"
    "             split = ( { service = \"shop-v1\"; weight = 95; },\n"
    "                       { service = \"shop-v2\"; weight = 5; },\n"
    "                       { service = \"other\"; weight = 0; } ); },\n"
    "           { host = \"*\"; service = \"other\"; } );\n";

static uint32_t entry_for(const struct shm_snap_hdr *h, const struct shm_route *r,
                          const char *const *cookies, uint32_t n, int *seen)
{
    struct wk_head hd;

    memset(&hd, 0, sizeof(hd));
    hd.h[hd.n].name = "Accept";
    hd.h[hd.n].nlen = 6;
    hd.h[hd.n].value = "*/*";
    hd.h[hd.n++].vlen = 3;
    for (uint32_t i = 0; i < n; i++) {
        hd.h[hd.n].name = i % 2 ? "cookie" : "Cookie";
        hd.h[hd.n].nlen = 6;
        hd.h[hd.n].value = cookies[i];
        hd.h[hd.n++].vlen = (uint32_t)strlen(cookies[i]);
    }
    return wk_split_cookie_entry(h, shm_route_split(h, r), r->nsplit, &hd, seen);
}

static void test_compiled_and_cookie_entry(void)
{
    struct ms_config *cfg;
    struct shm_snap_hdr *h = compile_text(split_conf, &cfg);
    const struct shm_route *r = NULL;
    const struct shm_split *e;
    int seen = 0;

    for (uint32_t i = 0; i < h->nroutes; i++) {
        if (strcmp(shm_s(h, shm_routes(h)[i].host), "shop.do") == 0) {
            r = &shm_routes(h)[i];
        }
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_EQUAL(r->nsplit, 3);
    CU_ASSERT_EQUAL(r->split_flags, SHM_SPLIT_STICKY);
    e = shm_route_split(h, r);
    CU_ASSERT_EQUAL(e[0].weight, 95);
    CU_ASSERT_EQUAL(e[2].weight, 0);
    CU_ASSERT_STRING_EQUAL(shm_s(h, shm_services(h)[e[1].service].name), "shop-v2");
    CU_ASSERT_STRING_EQUAL(shm_s(h, e[1].cookie),
                           "dsp_split=shop-v2; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax");
    CU_ASSERT_EQUAL(r->service, e[0].service);
    CU_ASSERT_EQUAL(shm_services(h)[e[1].service].nroutes, 1);
    CU_ASSERT_EQUAL(shm_services(h)[e[2].service].nroutes, 2);

    {
        const char *c1[] = {"dsp_split=shop-v2"};
        const char *c2[] = {"a=1; dsp_split=shop-v1; b=2"};
        const char *c3[] = {"a=1", "theme=x; dsp_split=\"shop-v2\""};
        const char *c4[] = {"dsp_split=nope", "dsp_split=shop-v1"}; /* the valid one counts */
        const char *c5[] = {"dsp_split=other"};                     /* weight 0 */
        const char *c6[] = {"dsp_split=shop-v"};
        const char *c7[] = {"xdsp_split=shop-v1; dsp_splitx=shop-v1; a=dsp_split=shop-v1"};
        const char *c8[] = {"dsp_split=SHOP-V1", "dsp_split=shop-v1x"};

        CU_ASSERT_EQUAL(entry_for(h, r, c1, 1, &seen), 1);
        CU_ASSERT_EQUAL(seen, 1);
        CU_ASSERT_EQUAL(entry_for(h, r, c2, 1, &seen), 0);
        CU_ASSERT_EQUAL(entry_for(h, r, c3, 2, &seen), 1);
        CU_ASSERT_EQUAL(entry_for(h, r, c4, 2, &seen), 0);
        CU_ASSERT_EQUAL(entry_for(h, r, c5, 1, &seen), UINT32_MAX);
        CU_ASSERT_EQUAL(seen, 1);
        CU_ASSERT_EQUAL(entry_for(h, r, c6, 1, &seen), UINT32_MAX);
        CU_ASSERT_EQUAL(entry_for(h, r, c7, 1, &seen), UINT32_MAX);
        CU_ASSERT_EQUAL(seen, 0);
        CU_ASSERT_EQUAL(entry_for(h, r, c8, 2, &seen), UINT32_MAX);
        CU_ASSERT_EQUAL(entry_for(h, r, NULL, 0, &seen), UINT32_MAX);
        CU_ASSERT_EQUAL(seen, 0);
    }
    free(h);
    ms_config_free(cfg);
}

static void test_redis_split_values(void)
{
    struct ms_split *sp = NULL;
    size_t n = 0;
    char why[256];
    char many[400] = "";

    CU_ASSERT_EQUAL(ms_rns_parse_split("shop-v1=95,shop-v2=5", &sp, &n, why, sizeof(why)), 0);
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT_STRING_EQUAL(sp[0].service, "shop-v1");
    CU_ASSERT_EQUAL(sp[0].weight, 95);
    CU_ASSERT_EQUAL(sp[1].weight, 5);
    for (size_t i = 0; i < n; i++) {
        free(sp[i].service);
    }
    free(sp);
    CU_ASSERT_EQUAL(ms_rns_parse_split(" a = 0 , b=1000000 ", &sp, &n, why, sizeof(why)), 0);
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT_STRING_EQUAL(sp[0].service, "a");
    CU_ASSERT_EQUAL(sp[1].weight, 1000000);
    for (size_t i = 0; i < n; i++) {
        free(sp[i].service);
    }
    free(sp);
    for (int i = 0; i < 17; i++) {
        strcat(many, i ? ",s=1" : "s=1");
    }
    {
        const char *bad[] = {"",         "a",  "a=",    "a=-1",    "a=1000001", "a=1.5",
                             "a=1,,b=2", "=1", "a b=1", "a=1;b=2", many};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            sp = (struct ms_split *)1;
            CU_ASSERT_EQUAL(ms_rns_parse_split(bad[i], &sp, &n, why, sizeof(why)), -1);
            CU_ASSERT_PTR_NULL(sp);
            CU_ASSERT(why[0] != '\0');
        }
    }
}

UNIT_SUITE(wk_split, {"draw distribution", test_draw_distribution},
           {"draw skip and zero", test_draw_skip_and_zero}, {"cookie parse", test_cookie_parse},
           {"compiled and cookie entry", test_compiled_and_cookie_entry},
           {"redis split values", test_redis_split_values});
