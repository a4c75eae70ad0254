/* dispatcher: the Redis namespace `dispatcher:{environment}:` as read (three SETs of ids and the
 * hash of each id), and its merge into a file config. This half has no I/O so that the hash
 * formats and the validation are unit-tested on their own; master/ms_redis.c does the reading.
 * Master only. */
#ifndef DSP_MS_REDIS_NS_H
#define DSP_MS_REDIS_NS_H

#include <stddef.h>
#include <stdint.h>

struct ms_backend;
struct ms_config;
struct ms_split;

#define MS_RNS_SERVICE 0 /* SET services, HASH service:{name} */
#define MS_RNS_ROUTE   1 /* SET routes,   HASH route:{id} */
#define MS_RNS_CERT    2 /* SET certs,    HASH cert:{id} */
#define MS_RNS_MW      3 /* SET middlewares, HASH middleware:{name} */
#define MS_RNS_KINDS   4

struct ms_rns_field {
    char *name;
    char *value;
};

struct ms_rns_entry {
    char *id;               /* member of the kind's SET */
    struct ms_rns_field *f; /* the hash's fields (sorted by name after ms_rns_sort) */
    size_t nf;
    size_t capf;
    int missing; /* listed in the SET, but the hash does not exist */
    char *error; /* reading the hash failed (WRONGTYPE, NUL byte...), or NULL */
};

/* The namespace's `version` key (writers INCR it on every change). A namespace without one is
 * what a Redis that restarted without its data holds: it is not applied. */
#define MS_RNS_VERSION_NONE 0 /* no such key */
#define MS_RNS_VERSION_OK   1 /* an integer, in .version */
#define MS_RNS_VERSION_BAD  2 /* anything else: why in .version_error */

struct ms_rns {
    char *prefix;      /* "dispatcher:{environment}:" */
    int version_state; /* MS_RNS_VERSION_* */
    long long version;
    char *version_error;
    char *set_error[MS_RNS_KINDS];        /* reading the SET itself failed, or NULL */
    struct ms_rns_entry *e[MS_RNS_KINDS]; /* sorted by id after ms_rns_sort */
    size_t n[MS_RNS_KINDS];
    size_t cap[MS_RNS_KINDS];
};

/* An empty namespace for <environment> (heap; free with ms_rns_free). */
struct ms_rns *ms_rns_new(const char *environment);
void ms_rns_free(struct ms_rns *ns);

/* The SET name ("services") and the hash key infix ("service:") of <kind>. */
const char *ms_rns_set_name(int kind);
const char *ms_rns_hash_name(int kind);

/* Append an entry of <kind> called <id> (<idlen> bytes; an id holding a NUL byte is recorded as
 * an error). Returns the entry, owned by <ns>. */
struct ms_rns_entry *ms_rns_add(struct ms_rns *ns, int kind, const char *id, size_t idlen);
/* Add field <name> = <value> to <e> (lengths given because Redis strings are binary). */
void ms_rns_set(struct ms_rns_entry *e, const char *name, size_t nlen, const char *value,
                size_t vlen);
/* Record why <e>'s hash, or <kind>'s SET, could not be read; the first message is kept. */
void ms_rns_entry_error(struct ms_rns_entry *e, const char *msg);
void ms_rns_set_error(struct ms_rns *ns, int kind, const char *msg);

/* Record the value of the `version` key (<len> bytes; a reply that is not a string goes to
 * ms_rns_version_error): an integer as INCR makes it, else the namespace is refused. */
void ms_rns_set_version(struct ms_rns *ns, const char *v, size_t len);
void ms_rns_version_error(struct ms_rns *ns, const char *msg);

/* Sort entries by id and fields by name: the canonical form that ms_rns_equal() compares and
 * that makes the merge order deterministic. */
void ms_rns_sort(struct ms_rns *ns);
/* 1 when <a> and <b> (both sorted) hold the same data (the version is not compared: a bump
 * without a change changes nothing). NULL equals only NULL. */
int ms_rns_equal(const struct ms_rns *a, const struct ms_rns *b);
/* A 64-bit fingerprint of a sorted namespace, its version's state included (to log a rejected
 * one only once). */
uint64_t ms_rns_hash(const struct ms_rns *ns);

/* Validate <ns> against <cfg> (which must hold no Redis entries) and append its services,
 * middlewares, routes and certificates after the file's, each kind sorted by id, marked
 * SHM_SOURCE_REDIS; sets cfg->redis.merged. A Redis service named like a file service is skipped
 * (the file wins; logged as a warning unless <quiet>). Returns 0, or -1 when anything is invalid:
 * <cfg> is then unchanged and <*errs> (heap, caller frees) holds one "redis KEY: message" line per
 * problem. */
int ms_rns_merge(struct ms_config *cfg, const struct ms_rns *ns, int quiet, char **errs);
/* Remove every Redis entry from <cfg> again (and clear cfg->redis.merged). */
void ms_rns_unmerge(struct ms_config *cfg);

/* The value formats, exposed for the unit tests. Each returns 0, or -1 with a reason in <err>. */
/* "addr[=weight],..." -> heap array of <*n> backends (NULL and 0 for an empty string). */
int ms_rns_parse_backends(const char *v, struct ms_backend **out, size_t *n, char *err,
                          size_t errlen);
/* "GET,POST" (case-insensitive, spaces allowed around names) -> bit mask of http methods. */
int ms_rns_parse_methods(const char *v, uint64_t *out, char *err, size_t errlen);
/* "shop-v1=95,shop-v2=5" (a route's split; spaces allowed around names and weights) -> heap
 * array of <*n> entries, names and weights only (no lookup), at most MS_MAX_SPLIT, each weight
 * 0..MS_MAX_SPLIT_WEIGHT. */
int ms_rns_parse_split(const char *v, struct ms_split **out, size_t *n, char *err, size_t errlen);
/* A decimal integer in [min, max], nothing else around it. */
int ms_rns_parse_int(const char *v, long min, long max, long *out, char *err, size_t errlen);

#endif
