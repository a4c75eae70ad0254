/* dispatcher: the parsed, validated configuration (master only). ms_config_load() turns a
 * dispatcher.conf into this heap structure; ms_compile() turns it into a shm snapshot. */
#ifndef DSP_MS_CONFIG_H
#define DSP_MS_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/net.h"

#define MS_BALANCE_RR         0 /* round-robin (weighted) */
#define MS_BALANCE_LEASTCONN  1
#define MS_BALANCE_IPHASH     2

#define MS_ACCESS_JSON     0
#define MS_ACCESS_COMBINED 1

struct ms_listener {
    char *address;               /* as written (after env overrides) */
    struct sockaddr_storage ss;
    socklen_t sslen;
    int tls;
    int proxy_protocol;
    int line;
};

struct ms_backend {
    char *address;               /* normalised "ip:port" / "[ip6]:port" */
    struct sockaddr_storage ss;
    socklen_t sslen;
    int weight;                  /* 1..1000, default 1 */
    int line;
};

struct ms_health {
    int enabled;                 /* a health block was given */
    char *path;                  /* default "/health" */
    int interval_ms;             /* default 30000 */
    int timeout_ms;              /* default 2000 */
    int fall;                    /* default 1 */
    int rise;                    /* default 3 */
    int start_down;              /* health.start = "down" */
};

struct ms_circuit {
    int enabled;                 /* a circuit_breaker block was given */
    int failures;                /* default 5 */
    int open_ms;                 /* default 30000 */
    int count_5xx;               /* circuit_breaker.count_5xx = true */
};

struct ms_service {
    char *name;
    int balance;                 /* MS_BALANCE_* */
    struct ms_backend *backends;
    size_t nbackends;
    struct ms_health health;
    struct ms_circuit circuit;
    int retries;                 /* default 1 */
    int connect_timeout_ms;      /* default 2000 */
    int response_timeout_ms;     /* default 30000 */
    int line;
};

struct ms_route {
    char *host;                  /* lower-cased; "*", "*.suffix" or exact */
    char *path;                  /* default "/" */
    uint64_t methods;            /* bit (1 << enum http_method); 0 = all methods */
    int priority;                /* default 0 */
    char *service;
    size_t service_idx;          /* index into ms_config.services */
    int line;
};

struct ms_cert {
    char *cert;                  /* absolute path */
    char *key;                   /* absolute path */
    int line;
};

struct ms_config {
    char *path;                  /* the file, as given */
    char *dir;                   /* its folder (absolute); relative paths resolve against it */
    int workers;                 /* resolved: "auto" = online CPUs */
    char *user, *group;          /* NULL when not set */
    char *pid_file;              /* absolute or NULL */
    char *environment;           /* default "production" */

    struct {
        char *socket;            /* absolute or NULL */
        int mode;                /* default 0600 */
        char *http;              /* "127.0.0.1:9000" or NULL when not set */
        struct sockaddr_storage http_ss;
        socklen_t http_sslen;
    } admin;

    struct {
        char *error;             /* "stderr" or absolute path */
        int level;               /* LOG_* */
        char *access;            /* absolute path or NULL for "off" */
        int access_format;       /* MS_ACCESS_* */
    } log;

    struct {
        long max_connections;    /* default 10000 */
        long max_header_bytes;   /* default 16384 */
        long max_body_bytes;     /* default 0 = unlimited */
        long header_timeout_ms;  /* default 10000 */
        long idle_timeout_ms;    /* default 60000 */
        long shutdown_timeout_ms;/* default 10000 */
        long tunnel_idle_timeout_ms; /* default 3600000 */
    } limits;

    struct ms_listener *listeners;
    size_t nlisteners;

    struct net_cidr *trusted;
    size_t ntrusted;

    struct {
        char *self_signed_cn;    /* default "localhost" */
        int min_version;         /* 0x0303 TLS1.2 (default) or 0x0304 TLS1.3 */
        struct ms_cert *certs;
        size_t ncerts;
    } tls;

    struct {
        int enabled;
        char *host;
        int port;
        char *password;
    } redis;

    struct ms_service *services;
    size_t nservices;
    struct ms_route *routes;
    size_t nroutes;
};

/* Parse and validate <path>. On success returns 0 and a heap config in <*out>. On failure returns
 * -1 and <*errs> holds every problem found, one "FILE:LINE: message" per line (heap; caller frees).
 * Environment overrides (HTTP_PORT, HTTPS_PORT, SERVER_HOST, SELF_SIGNED_CN) are applied when
 * <use_env> is non-zero. Master only. */
int ms_config_load(const char *path, int use_env, struct ms_config **out, char **errs);

/* Free a config from ms_config_load(); NULL is fine. */
void ms_config_free(struct ms_config *cfg);

/* Map an http method name ("GET") to its http-parser enum value, or -1. */
int ms_method_from_name(const char *name);

#endif
