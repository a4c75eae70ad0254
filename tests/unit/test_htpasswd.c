/* Unit tests: htpasswd parsing, hash scheme detection, Basic credentials, SipHash-128. */
#include "tests/unit/unit.h"

#include <crypt.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "common/htpasswd.h"

#define BCRYPT "$2y$04$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha."
#define SHA512                                                                                     \
    "$6$gqrXUCR9H407q6d1$NC/iV0gPiHeKKO3ERxdQ8emzb.M.3Cd47MOAYBq2TgXsZppyPEmE10O/"                 \
    "..4e//RXiTJ4uDZN6yQT3hXZt8Dna/"
#define SHA256 "$5$KYFQ4Pyh8Oz0Sv7k$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX."
#define SHA512_R                                                                                   \
    "$6$rounds=6000$lnnld.gBHLvXTTGV$gRhS2OHmdpzxF61J705M6/"                                       \
    "eaOoF20PncO9Iv0dVhv1AV.DFE5erRKyovNYqWKrIdFyGLkR.OmKEzmzQld98DZ0"

static int scheme(const char *h)
{
    const char *why;
    int s = htp_scheme(h, strlen(h), &why);

    CU_ASSERT(s != HTP_NONE || why != NULL);
    return s;
}

static void test_scheme(void)
{
    const char *why;

    CU_ASSERT_EQUAL(scheme(BCRYPT), HTP_BCRYPT);
    CU_ASSERT_EQUAL(scheme("$2b$04$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha."),
                    HTP_BCRYPT);
    CU_ASSERT_EQUAL(scheme("$2a$04$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha."),
                    HTP_BCRYPT);
    CU_ASSERT_EQUAL(scheme(SHA512), HTP_SHA512);
    CU_ASSERT_EQUAL(scheme(SHA512_R), HTP_SHA512);
    CU_ASSERT_EQUAL(scheme(SHA256), HTP_SHA256);
    CU_ASSERT_EQUAL(scheme("$5$k1mXmyPAOnzOiTEg$nknzeRd8iMAhvDgUnGxCWeG0WExBh5IJ92BUttIZmLD"),
                    HTP_SHA256);
    /* refused schemes, each with its own reason */
    CU_ASSERT_EQUAL(htp_scheme("$apr1$7A5uEwCY$eXhARmA0YDsjGf4H9gBis0", 37, &why), HTP_NONE);
    CU_ASSERT(strstr(why, "apr1") != NULL);
    CU_ASSERT_EQUAL(htp_scheme("9RP.omEIofwq6", 13, &why), HTP_NONE);
    CU_ASSERT(strstr(why, "DES") != NULL);
    CU_ASSERT_EQUAL(htp_scheme("{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=", 33, &why), HTP_NONE);
    CU_ASSERT(strstr(why, "SHA-1") != NULL);
    CU_ASSERT_EQUAL(htp_scheme("hunter2", 7, &why), HTP_NONE);
    CU_ASSERT(strstr(why, "plain") != NULL);
    CU_ASSERT_EQUAL(scheme("$1$abc$def"), HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$y$j9T$abc$def"), HTP_NONE);
    CU_ASSERT_EQUAL(scheme(""), HTP_NONE);
    /* malformed accepted schemes */
    CU_ASSERT_EQUAL(scheme("$2x$04$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$2y$04$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha"),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$2y$04$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha.x"),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$2y$03$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$2y$18$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$2y$1a$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$2y$04$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKh:."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$5$KYFQ4Pyh8Oz0Sv7k$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX"),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$5$$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX."), HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$5$KYFQ4Pyh8Oz0Sv7kX$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$5$rounds=999$KYFQ$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$5$rounds=010000$KYFQ$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$5$rounds=99999999$KYFQ$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$5$rounds=$KYFQ$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX."),
                    HTP_NONE);
    CU_ASSERT_EQUAL(scheme("$5$rounds=5000$KYFQ$6nn0VHvuhYJJFpRWPQc4fhBrbkMHQZFnxpgcUW2tmX."),
                    HTP_SHA256);
}

/* Every accepted hash really is one that libcrypt verifies. */
static void test_scheme_libcrypt(void)
{
    static const char *const h[] = {BCRYPT, SHA512, SHA256, SHA512_R};
    static const char *const pw[] = {"secret", "pw", "pw", "pw"};
    struct crypt_data cd;

    for (size_t i = 0; i < 4; i++) {
        const char *r;
        memset(&cd, 0, sizeof(cd));
        r = crypt_r(pw[i], h[i], &cd);
        CU_ASSERT(r != NULL && strcmp(r, h[i]) == 0);
        memset(&cd, 0, sizeof(cd));
        r = crypt_r("wrong", h[i], &cd);
        CU_ASSERT(r == NULL || strcmp(r, h[i]) != 0);
    }
}

struct errs {
    unsigned line[16];
    char msg[16][256];
    int n;
};

static void on_err(void *ctx, unsigned line, const char *msg)
{
    struct errs *e = ctx;

    if (e->n < 16) {
        e->line[e->n] = line;
        snprintf(e->msg[e->n], sizeof(e->msg[0]), "%s", msg);
        e->n++;
    }
}

static void test_parse(void)
{
    static const char text[] = "# staff\r\n"
                               "\n"
                               "zed:" SHA256 "\r\n"
                               "alice:" BCRYPT "\n"
                               "eve:$apr1$7A5uEwCY$eXhARmA0YDsjGf4H9gBis0\n"
                               "nocolon\n"
                               ":" BCRYPT "\n"
                               "bob:" SHA512 "\n"
                               "alice:" SHA512 "\n"
                               "fred:9RP.omEIofwq6\n"
                               "plain:hunter2\n"
                               "ctl\001:" BCRYPT "\n"
                               "carol:" SHA512_R;
    struct errs e = {0};
    struct htp_user *u;
    long n = htp_parse(text, sizeof(text) - 1, &u, on_err, &e);

    CU_ASSERT_EQUAL_FATAL(n, 4);
    CU_ASSERT(u[0].ulen == 5 && memcmp(u[0].user, "alice", 5) == 0 && u[0].line == 4 &&
              u[0].scheme == HTP_BCRYPT && u[0].hlen == strlen(BCRYPT));
    CU_ASSERT(u[1].ulen == 3 && memcmp(u[1].user, "bob", 3) == 0 && u[1].scheme == HTP_SHA512);
    CU_ASSERT(u[2].ulen == 5 && memcmp(u[2].user, "carol", 5) == 0 && u[2].line == 13);
    CU_ASSERT(u[3].ulen == 3 && memcmp(u[3].user, "zed", 3) == 0 && u[3].scheme == HTP_SHA256 &&
              u[3].hlen == strlen(SHA256)); /* the CR is not part of the hash */
    CU_ASSERT_EQUAL_FATAL(e.n, 7);
    CU_ASSERT(e.line[0] == 5 && strstr(e.msg[0], "eve") && strstr(e.msg[0], "apr1"));
    CU_ASSERT(e.line[1] == 6 && strstr(e.msg[1], "user:hash"));
    CU_ASSERT(e.line[2] == 7 && strstr(e.msg[2], "empty user"));
    CU_ASSERT(e.line[3] == 10 && strstr(e.msg[3], "DES"));
    CU_ASSERT(e.line[4] == 11 && strstr(e.msg[4], "plain"));
    CU_ASSERT(e.line[5] == 12 && strstr(e.msg[5], "control"));
    CU_ASSERT(e.line[6] == 9 && strstr(e.msg[6], "already given on line 4"));
    free(u);

    memset(&e, 0, sizeof(e));
    n = htp_parse("", 0, &u, on_err, &e);
    CU_ASSERT(n == 0 && e.n == 0);
    free(u);
}

static int decode(const char *v, char *buf, size_t cap, char *user, char *pass)
{
    const char *u, *p;
    size_t ul, pl;

    if (htp_basic_decode(v, strlen(v), buf, cap, &u, &ul, &p, &pl) != 0) {
        return -1;
    }
    memcpy(user, u, ul);
    user[ul] = 0;
    memcpy(pass, p, pl);
    pass[pl] = 0;
    return 0;
}

static void test_basic(void)
{
    char buf[600], u[300], p[300];

    CU_ASSERT(decode("Basic YWxpY2U6c2VjcmV0", buf, sizeof(buf), u, p) == 0 &&
              strcmp(u, "alice") == 0 && strcmp(p, "secret") == 0);
    CU_ASSERT(decode("basic   YWxpY2U6c2VjcmV0  ", buf, sizeof(buf), u, p) == 0);
    CU_ASSERT(decode("BASIC YWxpY2U6", buf, sizeof(buf), u, p) == 0 && strcmp(p, "") == 0);
    /* "a:b:c": the password holds the second colon */
    CU_ASSERT(decode("Basic YTpiOmM=", buf, sizeof(buf), u, p) == 0 && strcmp(u, "a") == 0 &&
              strcmp(p, "b:c") == 0);
    CU_ASSERT(decode("Basic YTpiOmM", buf, sizeof(buf), u, p) == 0);
    CU_ASSERT(decode("Bearer YWxpY2U6c2VjcmV0", buf, sizeof(buf), u, p) == -1);
    CU_ASSERT(decode("Basic", buf, sizeof(buf), u, p) == -1);
    CU_ASSERT(decode("Basic ", buf, sizeof(buf), u, p) == -1);
    CU_ASSERT(decode("BasicYWxpY2U6c2VjcmV0", buf, sizeof(buf), u, p) == -1);
    CU_ASSERT(decode("Basic YWxpY2U", buf, sizeof(buf), u, p) == -1);           /* no colon */
    CU_ASSERT(decode("Basic OnNlY3JldA==", buf, sizeof(buf), u, p) == -1);      /* empty user */
    CU_ASSERT(decode("Basic YWxp Y2U6c2VjcmV0", buf, sizeof(buf), u, p) == -1); /* space inside */
    CU_ASSERT(decode("Basic YWxpY2U6c2VjcmV0=", buf, sizeof(buf), u, p) == -1); /* bad padding */
    CU_ASSERT(decode("Basic YWxpY2U6c2VjcmV0===", buf, sizeof(buf), u, p) == -1);
    CU_ASSERT(decode("Basic YWxpY2U6c2VjcmV!", buf, sizeof(buf), u, p) == -1);
    CU_ASSERT(decode("Basic YTpiAA==", buf, sizeof(buf), u, p) == -1); /* NUL in password */
    CU_ASSERT(decode("Basic YTpiOmN=", buf, sizeof(buf), u, p) == -1); /* non-canonical */
    CU_ASSERT(decode("Basic YWxpY2U6c2VjcmV0", buf, 8, u, p) == -1);   /* does not fit */
    /* a password of HTP_PASS_MAX + 1 bytes */
    {
        char raw[300], v[500];
        memset(raw, 'x', sizeof(raw));
        memcpy(raw, "a:", 2);
        CU_ASSERT_EQUAL(EVP_EncodeBlock((unsigned char *)v + 6, (unsigned char *)raw,
                                        2 + HTP_PASS_MAX + 1) > 0,
                        1);
        memcpy(v, "Basic ", 6);
        CU_ASSERT(decode(v, buf, sizeof(buf), u, p) == -1);
        EVP_EncodeBlock((unsigned char *)v + 6, (unsigned char *)raw, 2 + HTP_PASS_MAX);
        CU_ASSERT(decode(v, buf, sizeof(buf), u, p) == 0 && strlen(p) == HTP_PASS_MAX);
    }
}

/* SipHash-2-4-128 against OpenSSL's. */
static void test_siphash(void)
{
    uint8_t key[16], msg[64], a[16], b[16];
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);

    CU_ASSERT_PTR_NOT_NULL_FATAL(mac);
    for (int i = 0; i < 16; i++) {
        key[i] = (uint8_t)i;
    }
    for (int i = 0; i < 64; i++) {
        msg[i] = (uint8_t)i;
    }
    for (size_t n = 0; n <= 64; n++) {
        EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
        size_t outl = 0, sz = 16;
        OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &sz),
                               OSSL_PARAM_construct_end()};
        CU_ASSERT_FATAL(ctx != NULL && EVP_MAC_init(ctx, key, 16, params) == 1);
        CU_ASSERT(EVP_MAC_update(ctx, msg, n) == 1 && EVP_MAC_final(ctx, b, &outl, 16) == 1);
        CU_ASSERT_EQUAL(outl, 16);
        htp_siphash128(key, msg, n, a);
        CU_ASSERT(memcmp(a, b, 16) == 0);
        EVP_MAC_CTX_free(ctx);
    }
    EVP_MAC_free(mac);
    CU_ASSERT(htp_ct_equal("abc", "abc", 3) && !htp_ct_equal("abc", "abd", 3));
}

static void test_cost(void)
{
    uint64_t b4 = htp_cost_us(BCRYPT, strlen(BCRYPT));
    const char *b10 = "$2y$10$FkXlyD.8Lx68XoEnDO/08.Gy751L6wV4HzP1MFRirBAQdEJwTKha.";

    CU_ASSERT(b4 > 0 && htp_cost_us(b10, strlen(b10)) == b4 * 64);
    CU_ASSERT(htp_cost_us(SHA512, strlen(SHA512)) > htp_cost_us(SHA256, strlen(SHA256)));
    CU_ASSERT(htp_cost_us(SHA512_R, strlen(SHA512_R)) > htp_cost_us(SHA512, strlen(SHA512)));
    CU_ASSERT(htp_cost_us(b10, strlen(b10)) > htp_cost_us(SHA512_R, strlen(SHA512_R)));
    CU_ASSERT_EQUAL(htp_cost_us("plain", 5), 0);
}

UNIT_SUITE(htpasswd, {"cost", test_cost}, {"scheme", test_scheme},
           {"scheme_libcrypt", test_scheme_libcrypt}, {"parse", test_parse}, {"basic", test_basic},
           {"siphash", test_siphash})
