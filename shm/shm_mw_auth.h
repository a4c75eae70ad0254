/* dispatcher: the parameter blocks of basic_auth and forward_auth in the snapshot's middleware
 * region (shm/shm_mw.h): region-relative offsets, no pointers. */
#ifndef DSP_SHM_MW_AUTH_H
#define DSP_SHM_MW_AUTH_H

#include <stdint.h>

#include "shm/shm_mw.h"

/* One line of the users file: the user name and its crypt hash (bcrypt, sha512/256-crypt). */
struct shm_mw_htuser {
    struct shm_str user;
    struct shm_str hash;
};

/* basic_auth: the users file compiled in (read at load and reload), sorted by user name. */
struct shm_mw_basic_auth {
    struct shm_str realm;      /* checked: no '"', '\' or control characters */
    struct shm_str users_file; /* its path, for messages */
    uint32_t users_off;        /* struct shm_mw_htuser table */
    uint32_t nusers;           /* >= 1 */
    uint32_t dummy; /* the user with the most expensive hash: an unknown user is hashed with it */
    uint32_t pad;
};

/* forward_auth: where the auth service is and what to copy from its 2xx answers. */
struct shm_mw_forward_auth {
    struct shm_str address;          /* as configured: "127.0.0.1:9200", "unix:/run/a.sock" */
    struct shm_str path;             /* origin-form: "/verify" */
    struct shm_mw_list copy_headers; /* field names */
    uint32_t timeout_ms;
    uint16_t family; /* AF_INET, AF_INET6 or AF_UNIX */
    uint16_t port;
    uint8_t ip[16];
};

/* Their counters in the runtime segment's shm_rt_mw.type_counters (/metrics). */
#define SHM_BA_TC_CACHED   0 /* basic_auth: credentials found verified in the cache */
#define SHM_BA_TC_HASHED   1 /* verified by hashing them */
#define SHM_BA_TC_REJECTED 2 /* 401: missing, malformed or wrong */
#define SHM_BA_TC_BUSY     3 /* 503: too many checks waiting */
#define SHM_FA_TC_ALLOWED  0 /* forward_auth: a 2xx let the request through */
#define SHM_FA_TC_DENIED   1 /* another answer was returned to the client */
#define SHM_FA_TC_FAILED   2 /* 503: no usable answer */

_Static_assert(sizeof(struct shm_mw_htuser) % 8 == 0, "shm_mw_htuser alignment");
_Static_assert(sizeof(struct shm_mw_basic_auth) % 8 == 0, "shm_mw_basic_auth alignment");
_Static_assert(sizeof(struct shm_mw_forward_auth) % 8 == 0, "shm_mw_forward_auth alignment");

#endif
