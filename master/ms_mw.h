/* dispatcher: middlewares on the master's side: the type table (each type's keys, parser,
 * compiler), one parser for both sources of a middleware (a group of dispatcher.conf and a
 * `middleware:{name}` hash in Redis read through the same accessors), and the compiler of the
 * snapshot's middleware region (shm/shm_mw.h). Master only.
 *
 * Adding a type: a SHM_MW_* number (shm/shm_mw.h) and its name (shm/shm_mw.c), a row in
 * ms_mw_types[] (master/ms_mw.c) naming its keys, parse, compile and free functions (in the
 * type's own file), a row in the worker's hook table (worker/wk_mw.c), and its keys in
 * man/dispatcher.conf.5 under "middlewares[type=NAME].KEY". */
#ifndef DSP_MS_MW_H
#define DSP_MS_MW_H

#include <stddef.h>
#include <stdint.h>

#include "shm/shm_mw.h"

struct ms_config;

/* Where one middleware's keys come from. Accessors return 1 (found, *out set), 0 (absent) or
 * -1 (present but of the wrong type or out of range: already reported). Strings are borrowed
 * until the parse function returns; lists are heap arrays of heap strings (ms_mw_strv_free).
 * In Redis every value is a string: numbers and booleans are parsed from it, lists are
 * comma-separated. */
struct ms_mw_src;
struct ms_mw_src_ops {
    int (*str)(struct ms_mw_src *s, const char *key, const char **out);
    int (*num)(struct ms_mw_src *s, const char *key, long min, long max, long *out);
    int (*boolean)(struct ms_mw_src *s, const char *key, int *out);
    int (*list)(struct ms_mw_src *s, const char *key, char ***out, size_t *n);
    /* Report a problem with <key> (NULL: the entry itself), with its FILE:LINE when known. */
    void (*err)(struct ms_mw_src *s, const char *key, const char *msg);
};

struct ms_mw_src {
    const struct ms_mw_src_ops *ops;
    void *impl;
    const char *where; /* "middlewares[2]" or "middleware:api-limit": prefixes messages */
    const char *dir;   /* relative file names resolve against it */
    int errors;        /* problems reported so far */
};

/* Report a problem: "<where>.<key>: <message>" (printf-style). */
void ms_mw_err(struct ms_mw_src *s, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A required string (reports its absence). 1 or -1/0 as the accessors. */
int ms_mw_need_str(struct ms_mw_src *s, const char *key, const char **out);
/* <v> resolved against s->dir when relative (heap). */
char *ms_mw_path(const struct ms_mw_src *s, const char *v);
void ms_mw_strv_free(char **v, size_t n);

/* The region being compiled: bytes appended at 8-byte aligned offsets. */
struct ms_mw_blob {
    char *p;
    size_t len, cap;
};

/* Append <len> bytes (8-byte aligned); returns their region offset. */
uint32_t ms_mw_put(struct ms_mw_blob *b, const void *p, size_t len);
/* Append a string (and its NUL). */
struct shm_str ms_mw_put_str(struct ms_mw_blob *b, const char *s, size_t len);
/* Append a list of strings. */
struct shm_mw_list ms_mw_put_list(struct ms_mw_blob *b, char *const *v, size_t n);

/* One type's master side. */
struct ms_mw_type {
    const char *name;        /* as `type = "..."` names it */
    uint32_t type;           /* SHM_MW_* */
    const char *const *keys; /* the keys it takes besides name and type, NULL-terminated */
    /* Read and check the keys; returns the heap parameter object (NULL after an error, which
     * was reported through <s>). */
    void *(*parse)(struct ms_mw_src *s);
    /* Append the parameter block to <b>; returns its offset and length in *len. */
    uint32_t (*compile)(const void *params, struct ms_mw_blob *b, uint32_t *len);
    void (*free)(void *params);
};

/* The type named <name>, or NULL. */
const struct ms_mw_type *ms_mw_type_find(const char *name);
const struct ms_mw_type *ms_mw_type_of(uint32_t type);
/* Every type, NULL-terminated (the key reference lists their keys). */
const struct ms_mw_type *const *ms_mw_types(void);

/* A parsed middleware. */
struct ms_mw {
    char *name;
    uint32_t type;   /* SHM_MW_* */
    void *params;    /* the type's parse result */
    uint32_t source; /* SHM_SOURCE_* */
    int line;
};

/* Parse the middleware named <name> of type <type> (its other keys from <s>) into <out>.
 * Returns 0, or -1 after reporting through <s> (<out> then holds the name alone, type 0:
 * ms_mw_dispose() it). */
int ms_mw_parse(struct ms_mw_src *s, const char *name, const char *type, struct ms_mw *out);
void ms_mw_dispose(struct ms_mw *m);

/* The middleware region for <cfg> (heap, *len bytes), each route's list offset in
 * lists[cfg->nroutes]; NULL and *len 0 when no middleware is defined. Aborts on OOM. */
void *ms_mw_compile(const struct ms_config *cfg, uint32_t *lists, size_t *len);

/* Resolve a route's middleware names against cfg->mws: the ids into *ids (heap). Returns 0, or
 * -1 with a message in <err> (an unknown name, one named twice, too many). */
int ms_mw_resolve(const struct ms_config *cfg, char *const *names, size_t n, uint32_t **ids,
                  char *err, size_t errlen);

/* ---- the built-in types (master/ms_mw_types.c) ---------------------------------------------- */
extern const struct ms_mw_type ms_mw_headers, ms_mw_static, ms_mw_ip_allow, ms_mw_redirect_https,
    ms_mw_strip_prefix, ms_mw_max_body, ms_mw_cors;
/* basic_auth and forward_auth (master/ms_mw_auth.c) */
extern const struct ms_mw_type ms_mw_basic_auth, ms_mw_forward_auth;
/* (master/ms_mw_compress.c) */
extern const struct ms_mw_type ms_mw_compress;
/* rate_limit (master/ms_rl.c) */
extern const struct ms_mw_type ms_mw_rate_limit;

#endif
