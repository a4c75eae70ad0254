/* Unit tests for the strict chunked-body decoder: what RFC 9112 allows is accepted whole, fed at
 * once or byte by byte; every ambiguity of the smuggling class is refused; and no byte of an
 * unchecked line is ever reported as committed. */
#include "tests/unit/unit.h"

#include <string.h>

#include "worker/wk_chunk.h"

#define S(x) x, sizeof(x) - 1

/* Feed <p> in pieces of <step> bytes (0: all at once), collecting data. Returns the result code
 * of the last call; *consumed = bytes consumed in total. */
static int feed(const char *p, size_t n, size_t step, char *data, size_t *dn, size_t *consumed,
                uint32_t trailer_max)
{
    struct wk_chunk ch;
    size_t off = 0, got = 0;
    int r = WK_CHUNK_MORE;

    wk_chunk_init(&ch, trailer_max);
    while (off < n) {
        size_t avail = step == 0 || n - off < step ? n - off : step;
        size_t base = off, used, dl;
        /* Only bytes after the committed ones may be given again: here every call is new. */
        r = wk_chunk_parse(&ch, p + base, avail, &used, &dl);
        if (r == WK_CHUNK_DATA) {
            memcpy(data + got, p + base + used - dl, dl);
            got += dl;
        }
        off += used;
        if (r == WK_CHUNK_ERROR || r == WK_CHUNK_DONE) {
            break;
        }
        /* committed bytes never exceed consumed ones */
        CU_ASSERT(ch.pend <= off);
    }
    *dn = got;
    *consumed = off;
    return r;
}

static int ok_all_ways(const char *p, size_t n, const char *want, size_t wn)
{
    static const size_t steps[] = {0, 1, 2, 3, 7};
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        char data[512];
        size_t dn = 0, used = 0;
        int r = feed(p, n, steps[s], data, &dn, &used, 0);
        if (r != WK_CHUNK_DONE || used != n || dn != wn || memcmp(data, want, wn) != 0) {
            return 0;
        }
    }
    return 1;
}

static int bad_all_ways(const char *p, size_t n)
{
    static const size_t steps[] = {0, 1, 3};
    for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
        char data[8192];
        size_t dn = 0, used = 0;
        if (feed(p, n, steps[s], data, &dn, &used, 0) != WK_CHUNK_ERROR) {
            return 0;
        }
    }
    return 1;
}

static void test_valid(void)
{
    CU_ASSERT(ok_all_ways(S("0\r\n\r\n"), "", 0));
    CU_ASSERT(ok_all_ways(S("5\r\nhello\r\n0\r\n\r\n"), "hello", 5));
    CU_ASSERT(ok_all_ways(S("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde", 5));
    CU_ASSERT(ok_all_ways(S("A\r\n0123456789\r\n0\r\n\r\n"), "0123456789", 10));
    CU_ASSERT(ok_all_ways(S("a\r\n0123456789\r\n000\r\n\r\n"), "0123456789", 10));
    CU_ASSERT(ok_all_ways(S("0003\r\nabc\r\n0\r\n\r\n"), "abc", 3));
    /* extensions: name, name=token, name="quoted", BWS around ; and = */
    CU_ASSERT(ok_all_ways(S("3;a\r\nabc\r\n0\r\n\r\n"), "abc", 3));
    CU_ASSERT(ok_all_ways(S("3;a=b;c=\"d;e\\\"f\"\r\nabc\r\n0;x\r\n\r\n"), "abc", 3));
    CU_ASSERT(ok_all_ways(S("3 ; a = b\t;c\r\nabc\r\n0\r\n\r\n"), "abc", 3));
    CU_ASSERT(ok_all_ways(S("3;a=\"\"\r\nabc\r\n0\r\n\r\n"), "abc", 3));
    /* data may hold any byte, CR and LF included */
    CU_ASSERT(ok_all_ways(S("4\r\n\r\n\0\n\r\n0\r\n\r\n"), "\r\n\0\n", 4));
    /* trailers */
    CU_ASSERT(ok_all_ways(S("1\r\nx\r\n0\r\nX-T: 1\r\nY:\r\nZ: a b\t\r\n\r\n"), "x", 1));
    CU_ASSERT(ok_all_ways(S("0\r\nA:b\r\n\r\n"), "", 0));
}

static void test_size_line(void)
{
    CU_ASSERT(bad_all_ways(S("\r\nabc\r\n0\r\n\r\n")));   /* empty size */
    CU_ASSERT(bad_all_ways(S("zz\r\nabc\r\n0\r\n\r\n"))); /* not hex */
    CU_ASSERT(bad_all_ways(S("3g\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("0x3\r\nabc\r\n0\r\n\r\n"))); /* 0x prefix */
    CU_ASSERT(bad_all_ways(S("+3\r\nabc\r\n0\r\n\r\n")));  /* sign */
    CU_ASSERT(bad_all_ways(S("-3\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S(" 3\r\nabc\r\n0\r\n\r\n"))); /* leading whitespace */
    CU_ASSERT(bad_all_ways(S("\t3\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3 \r\nabc\r\n0\r\n\r\n"))); /* trailing whitespace */
    CU_ASSERT(bad_all_ways(S("3\t\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3\nabc\r\n0\r\n\r\n"))); /* bare LF */
    CU_ASSERT(bad_all_ways(S("3\rabc\r\n0\r\n\r\n"))); /* bare CR */
    CU_ASSERT(bad_all_ways(S("3\r\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3\0\r\nabc\r\n0\r\n\r\n"))); /* NUL */
    CU_ASSERT(bad_all_ways(S("1_0\r\n0123456789abcdef\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("10000000000000000\r\n"))); /* 17 digits */
    CU_ASSERT(bad_all_ways(S("00000000000000003\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3,3\r\nabc\r\n0\r\n\r\n")));
    {
        char big[WK_CHUNK_LINE_MAX + 16];
        memset(big, 'a', sizeof(big));
        big[0] = '1';
        big[1] = ';';
        CU_ASSERT(bad_all_ways(big, sizeof(big)));
    }
}

static void test_extensions(void)
{
    /* The defect: an extension ended by a bare LF hides a second request from a lenient reader. */
    CU_ASSERT(bad_all_ways(S("3d;\nAAAA\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a\rb\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;\r\nabc\r\n0\r\n\r\n"))); /* empty name */
    CU_ASSERT(bad_all_ways(S("3;=b\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a=\r\nabc\r\n0\r\n\r\n")));  /* empty value */
    CU_ASSERT(bad_all_ways(S("3;a b\r\nabc\r\n0\r\n\r\n"))); /* two names */
    CU_ASSERT(bad_all_ways(S("3;a=b c\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a=\"b\r\nabc\r\n0\r\n\r\n"))); /* open quote */
    CU_ASSERT(bad_all_ways(S("3;a=\"b\nc\"\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a=\"b\0\"\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a=\"b\"c\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a=\"b\" \r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a=b \r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a(\r\nabc\r\n0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3;a\x7f\r\nabc\r\n0\r\n\r\n")));
}

static void test_data_and_trailers(void)
{
    CU_ASSERT(bad_all_ways(S("3\r\nabcd\r\n0\r\n\r\n"))); /* data longer than its size */
    CU_ASSERT(bad_all_ways(S("3\r\nabc\n0\r\n\r\n")));    /* bare LF after data */
    CU_ASSERT(bad_all_ways(S("3\r\nabc\r0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("3\r\nabc0\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("0\r\n\n"))); /* final bare LF */
    CU_ASSERT(bad_all_ways(S("0\r\n\r\r\n")));
    CU_ASSERT(bad_all_ways(S("0\r\nX: a\n\r\n")));
    CU_ASSERT(bad_all_ways(S("0\r\nX : a\r\n\r\n")));      /* space before colon */
    CU_ASSERT(bad_all_ways(S("0\r\nX: a\r\n b\r\n\r\n"))); /* obs-fold */
    CU_ASSERT(bad_all_ways(S("0\r\n: a\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("0\r\nNoColon\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("0\r\nX: a\0b\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("0\r\nX: a\rb\r\n\r\n")));
    CU_ASSERT(bad_all_ways(S("0\r\nX\x01: a\r\n\r\n")));
    {
        /* the trailer section is bounded */
        char buf[512];
        size_t dn, used;
        size_t n = 0;
        memcpy(buf, "0\r\n", 3);
        n = 3;
        for (int i = 0; i < 20; i++) {
            memcpy(buf + n, "X-Long: 0123456\r\n", 17);
            n += 17;
        }
        memcpy(buf + n, "\r\n", 2);
        n += 2;
        CU_ASSERT(feed(buf, n, 0, buf, &dn, &used, 100) == WK_CHUNK_ERROR);
        CU_ASSERT(feed(buf, n, 0, buf, &dn, &used, 1000) == WK_CHUNK_DONE);
    }
}

static void test_done_stops(void)
{
    /* What follows the body (a pipelined request) is not consumed. */
    static const char two[] = "2\r\nab\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    uint64_t dec = 0;
    CU_ASSERT(wk_chunk_check(two, sizeof(two) - 1, 0, &dec) == 12);
    CU_ASSERT(dec == 2);
    CU_ASSERT(wk_chunk_check(S("2\r\nab\r\n0\r\n"), 0, NULL) == 0); /* incomplete */
    CU_ASSERT(wk_chunk_check(S("2\r\nab\r\n0\r\n\n"), 0, NULL) == -1);
}

static void test_commit(void)
{
    /* pend covers exactly the bytes of the line in progress. */
    struct wk_chunk ch;
    size_t used, dl;

    wk_chunk_init(&ch, 0);
    CU_ASSERT(wk_chunk_parse(&ch, S("3;ab"), &used, &dl) == WK_CHUNK_MORE);
    CU_ASSERT(used == 4 && ch.pend == 4);
    CU_ASSERT(wk_chunk_parse(&ch, S("c\r"), &used, &dl) == WK_CHUNK_MORE);
    CU_ASSERT(ch.pend == 6);
    CU_ASSERT(wk_chunk_parse(&ch, S("\nxyz"), &used, &dl) == WK_CHUNK_DATA);
    CU_ASSERT(used == 4 && dl == 3 && ch.pend == 0);
    CU_ASSERT(wk_chunk_parse(&ch, S("\r"), &used, &dl) == WK_CHUNK_MORE);
    CU_ASSERT(ch.pend == 1);
    CU_ASSERT(wk_chunk_parse(&ch, S("\n"), &used, &dl) == WK_CHUNK_MORE);
    CU_ASSERT(ch.pend == 0);
    /* an error leaves the decoder failed */
    CU_ASSERT(wk_chunk_parse(&ch, S("3;\n"), &used, &dl) == WK_CHUNK_ERROR);
    CU_ASSERT(ch.err != NULL);
    CU_ASSERT(wk_chunk_parse(&ch, S("0\r\n\r\n"), &used, &dl) == WK_CHUNK_ERROR);
}

static void test_trailer_bytes(void)
{
    /* Inside the trailer section, the committed bytes of it so far; at its end, <line> is the
     * whole section with its final CRLF. */
    struct wk_chunk ch;
    size_t used, dl;

    wk_chunk_init(&ch, 0);
    CU_ASSERT(wk_chunk_parse(&ch, S("2\r\nab\r\n0\r\n"), &used, &dl) == WK_CHUNK_DATA);
    CU_ASSERT(wk_chunk_trailer_bytes(&ch) == 0);
    CU_ASSERT(wk_chunk_parse(&ch, S("\r\n0\r\n"), &used, &dl) == WK_CHUNK_MORE);
    CU_ASSERT(wk_chunk_trailer_bytes(&ch) == 0); /* (in the section, nothing of it yet) */
    CU_ASSERT(wk_chunk_parse(&ch, S("A: 1\r\nBb: x"), &used, &dl) == WK_CHUNK_MORE);
    CU_ASSERT(wk_chunk_trailer_bytes(&ch) == 6 && ch.pend == 5);
    CU_ASSERT(wk_chunk_parse(&ch, S("y\r\n"), &used, &dl) == WK_CHUNK_MORE);
    CU_ASSERT(wk_chunk_trailer_bytes(&ch) == 14);
    CU_ASSERT(wk_chunk_parse(&ch, S("\r\nZ"), &used, &dl) == WK_CHUNK_DONE);
    CU_ASSERT(used == 2 && ch.line == 16);
    CU_ASSERT(wk_chunk_trailer_bytes(&ch) == 0);
}

UNIT_SUITE(wk_chunk, {"valid bodies, any split", test_valid}, {"chunk size line", test_size_line},
           {"chunk extensions", test_extensions},
           {"data CRLF and trailers", test_data_and_trailers},
           {"stops at the body's end", test_done_stops}, {"commit points", test_commit},
           {"trailer section bytes", test_trailer_bytes})
