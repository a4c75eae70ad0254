/* dispatcher: htpasswd files and HTTP Basic credentials, as basic_auth needs them. Pure code (no
 * I/O, no allocation but the parser's table), used by the master at load and by the worker per
 * request, unit-tested on its own.
 *
 * Accepted hash schemes are those libcrypt verifies slowly enough to be worth a password file:
 * bcrypt ($2y$, $2b$, $2a$; cost 4 to 17, as `htpasswd -B -C` allows), sha512-crypt ($6$) and
 * sha256-crypt ($5$) (default or "rounds=" 1000 to 10,000,000). Everything else (MD5 $apr1$ and
 * $1$, {SHA}, crypt DES, plain text) is refused at load with the file's line. */
#ifndef DSP_HTPASSWD_H
#define DSP_HTPASSWD_H

#include <stddef.h>
#include <stdint.h>

#define HTP_NONE   0
#define HTP_BCRYPT 1
#define HTP_SHA512 2
#define HTP_SHA256 3

#define HTP_USER_MAX 255 /* bytes in a user name */
#define HTP_HASH_MAX 160 /* bytes in a hash string (sha512-crypt with rounds is 123) */
#define HTP_PASS_MAX 255 /* bytes of a password checked (longer ones never match) */

/* The scheme of hash string <h>[0, n) (HTP_*), or HTP_NONE with a static reason in *why naming
 * what it is ("MD5 ($apr1$) is not supported: ...") when it is not a well-formed accepted one. */
int htp_scheme(const char *h, size_t n, const char **why);

/* A rough cost of verifying a password against the accepted hash <h>[0, n), in microseconds of
 * one core (bcrypt: doubling per cost step; sha-crypt: linear in rounds, default 5000). An
 * unknown user is checked against the file's most expensive hash, so that the answer never comes
 * sooner than for a real user. */
uint64_t htp_cost_us(const char *h, size_t n);

struct htp_user {
    const char *user; /* pointing into the parsed text (not NUL-terminated) */
    const char *hash;
    uint32_t ulen, hlen;
    uint32_t line;   /* 1-based line of the file */
    uint32_t scheme; /* HTP_* */
};

/* Parse the htpasswd text <t>[0, n): "user:hash" lines, LF or CRLF ends, empty lines and lines
 * starting with '#' skipped. Every bad line (no ':', empty or over-long user, control bytes, a
 * user given twice, a refused scheme) is reported through <err> with its line, and skipped.
 * Returns the users in *out (malloc'ed, sorted by user name bytes; free() it) and their count,
 * or -1 when out of memory. */
typedef void (*htp_err_fn)(void *ctx, unsigned line, const char *msg);
long htp_parse(const char *t, size_t n, struct htp_user **out, htp_err_fn err, void *ctx);

/* Compare user names the table is sorted by (memcmp order, shorter first on a common prefix). */
int htp_user_cmp(const char *a, size_t alen, const char *b, size_t blen);

/* The credentials of an Authorization field value <v>[0, n): "Basic" (any case), one or more
 * spaces, base64 of "user:password" (standard alphabet, padding optional). Decoded into
 * <buf>[0, cap); *user and *pass point into it. 0, or -1 for anything else (another scheme, bad
 * base64, no ':', an empty user, control bytes, too long). */
int htp_basic_decode(const char *v, size_t n, char *buf, size_t cap, const char **user,
                     size_t *ulen, const char **pass, size_t *plen);

/* SipHash-2-4 with a 128-bit output of <p>[0, n) under <key> (the keyed hash the credential
 * cache stores instead of passwords). */
void htp_siphash128(const uint8_t key[16], const void *p, size_t n, uint8_t out[16]);

/* Equality of two byte strings in time that depends on the lengths only. */
int htp_ct_equal(const void *a, const void *b, size_t n);

#endif
