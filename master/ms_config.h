/* dispatcher: the parsed, validated configuration (master only). ms_config_load() turns a
 * dispatcher.conf into this heap structure; ms_compile() turns it into a shm snapshot. */
#ifndef DSP_MS_CONFIG_H
#define DSP_MS_CONFIG_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/net.h"
#include "shm/shm_types.h"

/* The configuration speaks the snapshot's vocabulary (shm/shm_types.h): balance SHM_BALANCE_*,
 * access log format SHM_ACCESS_*, and where an entry was defined SHM_SOURCE_FILE or
 * SHM_SOURCE_REDIS (Redis entries always follow the file's in their arrays, see
 * master/ms_redis_ns.h). */

/* Bounds of the config keys, shared by the file parser and the Redis reader. */
#define MS_MAX_WORKERS      ((int)SHM_MAX_WORKERS)
#define MS_MAX_TIMEOUT_MS   INT_MAX
#define MS_MAX_WEIGHT       1000
#define MS_MAX_RETRIES      100
#define MS_MAX_HEALTH_COUNT 1000    /* health fall and rise */
#define MS_MAX_FAILURES     1000000 /* circuit_breaker.failures, passive_failures */

struct ms_listener {
    char *address; /* as written (after env overrides) */
    struct sockaddr_storage ss;
    socklen_t sslen;
    int tls;
    int proxy_protocol;
    char *client_ca;        /* absolute path of client_ca, or NULL */
    char *client_ca_pem;    /* its contents, read and checked at load */
    uint32_t client_verify; /* SHM_CLIENT_VERIFY_*: OFF without client_ca */
    char *health_uri;       /* answered like admin GET /health, before routing; or NULL */
    int http2;              /* HTTP/2 offered (ALPN h2, or the prior-knowledge preface) */
    int line;
};

struct ms_backend {
    char *address; /* normalised "ip:port" / "[ip6]:port", "name:port" or
                    * "unix:/path" */
    char *name;    /* a host name the master resolves (master/ms_dns.h), lower
                    * case, or NULL for an IP literal (then ss/sslen are set) */
    uint16_t port; /* the port of a named backend */
    struct sockaddr_storage ss;
    socklen_t sslen;
    int weight; /* 1..1000, default 1 */
    int line;
};

struct ms_health {
    int enabled;     /* a health block was given */
    char *path;      /* default "/health" */
    int interval_ms; /* default 30000 */
    int timeout_ms;  /* default 2000 */
    int fall;        /* default 1 */
    int rise;        /* default 3 */
    int start_down;  /* health.start = "down" */
};

struct ms_circuit {
    int enabled;   /* a circuit_breaker block was given */
    int failures;  /* default 5 */
    int open_ms;   /* default 30000 */
    int count_5xx; /* circuit_breaker.count_5xx = true */
};

struct ms_service {
    char *name;
    uint32_t balance; /* SHM_BALANCE_* */
    struct ms_backend *backends;
    size_t nbackends;
    struct ms_health health;
    struct ms_circuit circuit;
    int retries;                /* default 1 */
    int passive_failures;       /* default 3: consecutive connect failures/resets that eject */
    int max_ejection_percent;   /* default 50: cap on the backends passively ejected at once */
    int connect_timeout_ms;     /* default 2000 */
    int response_timeout_ms;    /* default 30000 */
    int stream_idle_timeout_ms; /* gap allowed inside a response body; 0 = response_timeout_ms */
    uint32_t protocol;          /* SHM_PROTO_*: http1 (default), h2, grpc */
    int resolve_ms;             /* re-resolve its backend names at least this often; 0 = dns's */
    uint32_t source;            /* SHM_SOURCE_FILE or SHM_SOURCE_REDIS */
    int line;
    /* TLS to the backends (tls = true; verify; ca; sni). */
    int tls;
    int tls_verify;   /* default 1: chain to tls_ca (or the system store) and name */
    char *tls_sni;    /* lower case, or NULL: no SNI, the backend IP is verified */
    char *tls_ca;     /* absolute path, or NULL for the system store */
    char *tls_ca_pem; /* tls_ca's contents, read and checked at load */
    /* mTLS: the certificate the service presents to its backends (client_cert, client_key). */
    char *tls_client_cert; /* absolute paths, or NULL */
    char *tls_client_key;
    char *tls_client_cert_pem; /* their contents, checked to match at load (chain; PKCS#8) */
    char *tls_client_key_pem;  /* zeroed before it is freed */
};

/* Bounds of a route's weighted split (file and Redis). */
#define MS_MAX_SPLIT        16      /* services in one split */
#define MS_MAX_SPLIT_WEIGHT 1000000 /* one entry's weight */

/* One entry of a route's weighted split. */
struct ms_split {
    char *service;
    size_t service_idx; /* index into ms_config.services */
    int weight;         /* 0..MS_MAX_SPLIT_WEIGHT, default 1 */
};

struct ms_route {
    char *host;       /* lower-cased; "*", "*.suffix" or exact */
    char *path;       /* default "/" */
    uint64_t methods; /* bit (1 << enum http_method); 0 = all methods */
    int priority;     /* default 0 */
    /* split = ( { service; weight; }, ... ) instead of service: the service is drawn per
     * request by weight (service/service_idx are then the first entry's); sticky keeps a client
     * on its draw with the dsp_split cookie. */
    struct ms_split *split;
    size_t nsplit;
    int sticky;
    char *service;
    size_t service_idx; /* index into ms_config.services */
    uint32_t source;    /* SHM_SOURCE_FILE or SHM_SOURCE_REDIS */
    int line;
    char **mw_names; /* middlewares = [...], in order (heap) */
    size_t nmw;
    uint32_t *mw_ids; /* their indexes in ms_config.mws */
};

struct ms_cert {
    char *cert; /* absolute path (NULL when the PEM came from elsewhere) */
    char *key;  /* absolute path (idem) */
    char *ocsp; /* absolute path of a DER OCSP response to staple, or NULL */
    int line;
    uint32_t source; /* SHM_SOURCE_*: Redis certificates follow the file's */
    /* Filled by ms_tls_prepare() (master/ms_tls.h) from the files, or from cert_pem/key_pem when
     * a source other than the file gave the PEM text directly. */
    char *file;     /* config file of the entry, for messages (NULL: ms_config.path) */
    char *cert_pem; /* leaf, then its chain */
    char *key_pem;  /* PKCS#8; zeroed before it is freed */
    char **names;   /* SAN DNS names, else the CN: lower case, "*.x" wildcards */
    size_t nnames;
    char *subject;           /* RFC 2253 one-liner, for messages and `show certs` */
    int64_t not_after;       /* unix seconds */
    int expired;             /* not_after had passed at load (still served) */
    unsigned char *ocsp_der; /* the OCSP response read from <ocsp>, checked to be a
                              * successful one for this certificate; NULL: none stapled */
    size_t ocsp_len;
    int64_t ocsp_next_update; /* its nextUpdate (unix seconds), 0 when it has none */
    int ocsp_stale;           /* nextUpdate had passed at load: not stapled (a warning) */
};

/* An operator's error page (errors.pages[]): read at load, copied into the snapshot. */
#define MS_ERROR_PAGE_MAX (12u * 1024) /* it goes out of the client's reply buffer whole */
struct ms_error_page {
    int status; /* 400..599, each status at most once */
    char *file; /* absolute path */
    char *body; /* the file's bytes (no NUL among them) */
    size_t len;
    int line;
};

/* A Redis Sentinel's address (redis.sentinels). */
struct ms_redis_addr {
    char *host; /* IP literal or a name (resolved by hiredis, synchronously) */
    int port;
};

struct ms_mw;

struct ms_config {
    void *source;       /* the libconfig tree read, until ms_config_drop_source() */
    void *source_names; /* its files' real names (struct conf_src), as long */
    char *path;         /* the file, as given */
    char *dir;          /* its folder (absolute); relative paths resolve against it */
    int workers;        /* resolved: "auto" = online CPUs */
    char *user, *group; /* NULL when not set */
    char *pid_file;     /* absolute or NULL */
    char *environment;  /* default "production" */
    char *node_name;    /* this dispatcher in the fleet's node reports: default the host
                         * name (gethostname), else "dispatcher" */

    struct {
        char *socket; /* absolute or NULL */
        int mode;     /* default 0600 */
        char *http;   /* "127.0.0.1:9000" or NULL when not set */
        struct sockaddr_storage http_ss;
        socklen_t http_sslen;
        struct net_cidr *http_allow; /* admin.http_allow: the only clients served, when set */
        size_t nhttp_allow;
    } admin;

    struct {
        char *error;            /* "stderr", absolute path, or "syslog:FACILITY:SOCKET" */
        int level;              /* LOG_* */
        char *access;           /* absolute path or NULL for "off" */
        uint32_t access_format; /* SHM_ACCESS_* */
    } log;

    struct {
        long max_connections;        /* default 10000 */
        long max_header_bytes;       /* default 16384 */
        long max_body_bytes;         /* default 0 = unlimited */
        long header_timeout_ms;      /* default 10000 */
        long idle_timeout_ms;        /* default 60000 */
        long shutdown_timeout_ms;    /* default 10000 */
        long tunnel_idle_timeout_ms; /* default 3600000 */
        long min_body_rate;          /* default 256 bytes/s, 0 = off */
        long send_timeout_ms;        /* default 60000 */
        long h2_max_streams;         /* default 128: concurrent streams per HTTP/2 connection */
        long h2_stream_window;       /* default 262144: bytes buffered per stream and direction */
        long rate_limit_keys;        /* default 65536: rate_limit buckets (sized at start) */
    } limits;

    struct ms_listener *listeners;
    size_t nlisteners;

    struct net_cidr *trusted;
    size_t ntrusted;

    struct {
        char *self_signed_cn; /* default "localhost" */
        int min_version;      /* 0x0303 TLS1.2 (default) or 0x0304 TLS1.3 */
        struct ms_cert *certs;
        size_t ncerts;
        struct ms_cert self_signed; /* generated by ms_tls_prepare(): the default certificate */
    } tls;

    struct {
        int enabled;
        char *host;
        int port;
        char *password;         /* NULL when not set */
        char *user;             /* ACL user (AUTH user password), NULL when not set */
        int db;                 /* SELECT index, default 0 */
        int resync_ms;          /* full re-read period, default 30000 */
        int connect_timeout_ms; /* default 2000 */
        int command_timeout_ms; /* default 2000 */
        /* Sentinel: the master is the one the sentinels name <master_name> (host/port unused). */
        struct ms_redis_addr *sentinels;
        size_t nsentinels;       /* 0 = plain host/port */
        char *master_name;       /* NULL without sentinels */
        char *sentinel_password; /* AUTH to the sentinels, NULL when not set */
        int merged;              /* the Redis namespace is merged into this config */
    } redis;

    struct {
        char *servers;  /* "ip:port,..." for c-ares, or NULL: /etc/resolv.conf */
        int resolve_ms; /* a name is re-resolved within this (caps its TTL), 30000 */
        int min_ttl_ms; /* and not more often than this, default 1000 */
        int timeout_ms; /* one query attempt, default 2000 */
    } dns;

    /* errors = { expose_backend; list_services; pages }: what generated error bodies show. */
    struct {
        int expose_backend;          /* default 0: 502/503/504 messages name no backend address */
        int list_services;           /* default 1: the no-route 404 lists available_services */
        struct ms_error_page *pages; /* served to clients that prefer text/html */
        size_t npages;
    } errors;

    struct ms_service *services;
    size_t nservices;
    struct ms_route *routes;
    size_t nroutes;
    struct ms_mw *mws; /* middlewares = (...) (master/ms_mw.h) */
    size_t nmws;
};

/* Parse and validate <path>. On success returns 0 and a heap config in <*out>. On failure returns
 * -1 and <*errs> holds every problem found, one "FILE:LINE: message" per line (heap; caller frees).
 * Environment overrides (HTTP_PORT, HTTPS_PORT, SERVER_HOST, SELF_SIGNED_CN) are applied when
 * <use_env> is non-zero. Master only. */
int ms_config_load(const char *path, int use_env, struct ms_config **out, char **errs);

/* Free a config from ms_config_load(); NULL is fine. */
void ms_config_free(struct ms_config *cfg);
/* Free the parser's tree that the config was read from (nothing in cfg points into it). A
 * reload does this after the new generation is published: with 100,000 routes it takes ~20 ms
 * that the switch need not wait for. ms_config_free() does it too. */
void ms_config_drop_source(struct ms_config *cfg);
/* The real path of a file the parser tree names by <alias> (config_setting_source_file()), or
 * the config file's own path. Only while the tree is there. */
const char *ms_config_file_of(const struct ms_config *cfg, const char *alias);

/* The keys the file parser accepts, per group: <group> is "" for the top level, else a path
 * such as "admin", "services[]" or "services[].health" ("[]": each entry of a list). The table
 * ends with a NULL group. What the documentation (man/dispatcher.conf.5) is checked against. */
struct ms_config_keys {
    const char *group;
    const char *const *keys; /* NULL-terminated */
};
const struct ms_config_keys *ms_config_key_table(void);

/* Map an http method name ("GET") to its http-parser enum value, or -1. */
int ms_method_from_name(const char *name);

/* ---- building blocks shared by the file parser and the Redis reader (master/ms_redis_ns.c), so
 * that an entry from either source is checked by the same code. ---- */

/* Set <svc> / <r> to the defaults of an entry with no settings (all owned strings on the heap). */
void ms_service_init(struct ms_service *svc);
void ms_route_init(struct ms_route *r);
/* Free what an entry owns (not the entry itself). */
void ms_service_dispose(struct ms_service *svc);
void ms_route_dispose(struct ms_route *r);
void ms_cert_dispose(struct ms_cert *ct);

/* The checks of a route's split that span its entries (a service listed twice, every weight 0),
 * for the file and Redis alike. Returns 0, or -1 with the reason in <why>. */
int ms_split_check(const struct ms_route *r, char *why, size_t whylen);
/* Make a split route's service/service_idx those of its first entry (what code that sees one
 * service per route uses). */
void ms_split_finish(struct ms_route *r);

/* Service names and the environment: 1+ of [A-Za-z0-9_.-]. Returns 1 when valid. */
int ms_valid_name(const char *s);
/* A URL path: starts with '/', no spaces or control bytes. Returns 1 when valid. */
int ms_valid_url_path(const char *s);
/* Lower-case a route host, drop one trailing dot and check it is "*", "*.suffix" or a host name.
 * Returns a heap copy, or NULL when it is none of those. */
char *ms_normalise_host(const char *v);
/* "round-robin" | "least-conn" | "ip-hash" into SHM_BALANCE_*. Returns 0 or -1. */
int ms_parse_balance(const char *v, uint32_t *out);
/* "http1" | "h2" | "grpc" -> SHM_PROTO_*: 0, or -1. */
int ms_parse_protocol(const char *v, uint32_t *out);
/* For each backend of <b>[0, n), the index of the first one with its address (itself when none
 * before has it; NULL addresses are their own) into <first>[0, n). O(n log n): a service may
 * have tens of thousands. */
void ms_backend_dups(const struct ms_backend *b, size_t n, size_t *first);
/* Parse a backend address ("ip:port", "[ip6]:port", "localhost:port", "name:port",
 * "unix:/path") into <b>'s address (heap, normalised) and either ss and sslen (AF_UNIX for a
 * unix socket), or for a host name name and port (the master resolves it, master/ms_dns.h).
 * Returns 0, or -1 with the reason in <err>. */
int ms_parse_backend_addr(const char *v, struct ms_backend *b, char *err, size_t errlen);

#endif
