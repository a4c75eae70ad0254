/* dispatcher: the master's Redis link. Two async hiredis connections share one fate: "command"
 * reads the namespace, "subscriber" listens on the events channel. Neither ever blocks the loop:
 * hiredis is driven through an adapter onto ms_loop's fds, and every deadline is checked from
 * the loop tick. Callbacks only record what happened; the tick decides and acts, so no context
 * is ever freed from inside one of its own callbacks. Both fds are registered with ms_loop, which
 * closes them in forked workers (ms_loop_child_cleanup).
 *
 * Link states:
 *
 *   DISABLED --(redis enabled)--> WAIT --(retry_at)--> CONNECTING --(both ready)--> UP
 *                                  ^                        |                         |
 *                                  +---- error, timeout, connection lost (backoff) ---+
 *
 * With Sentinel (redis.sentinels), every attempt first asks the sentinels, one after the other,
 * where the master is (WAIT -> RESOLVING -> CONNECTING, on a third, short-lived "sentinel"
 * connection), and the hand-shake checks with ROLE that the server is a master. A fourth
 * connection stays subscribed to +switch-master on one sentinel (its own backoff, rotating over
 * the sentinels): a switch of our master drops the link and resolves again at once, without
 * backoff. Nothing of this touches the configuration being served: only a complete read of the
 * namespace on the new master changes it.
 *
 * A read of the namespace runs only while UP:  IDLE -> SETS (SMEMBERS x3) -> HASHES (one HGETALL
 * per member, pipelined) -> IDLE, and starts when an event came in, on (re)connect, or when
 * resync_ms passed. A read that equals the last good data changes nothing. */
#include "master/ms_redis.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <unistd.h>

#include "admin/adm_render.h"
#include "common/dsp.h"
#include "common/log.h"
#include "common/rds.h"
#include "master/ms_commit.h"
#include "master/ms_config.h"
#include "master/ms_loop.h"
#include "master/ms_master.h"
#include "master/ms_redis_ns.h"

#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 5000

/* Node reports (SPEC "Redis"): node:{node_name} is rewritten at least this often, with a TTL of
 * REPORT_TTL_S; the fleet view is re-read at least every FLEET_EVERY_MS (and at once when a node
 * announces a change on the node-events channel). */
#define REPORT_EVERY_MS 20000
#define REPORT_TTL_S    60
#define FLEET_EVERY_MS  20000
#define FLEET_MAX_NODES 4096
/* An idle command connection sends a PING this often, so that a master that stops answering (a
 * hung process, a partition without a FIN) is noticed within this + command_timeout_ms, not at
 * the next resync. */
#define PING_EVERY_MS 5000

/* The fields of a node report, in the order they are written. */
enum {
    NF_GENERATION = 0,
    NF_APPLIED_AT,
    NF_SOURCE_DIGEST,
    NF_STATUS,
    NF_ERROR,
    NF_VERSION,
    NF_UPDATED_AT,
    NF_PID,
    NF_COUNT
};
static const char *const node_fields[NF_COUNT] = {
    "generation", "applied_at", "source_digest", "status", "error", "version", "updated_at", "pid",
};

/* One node:{name} hash as read. */
struct fnode {
    char *name;
    char *f[NF_COUNT]; /* NULL when missing */
    int gone;          /* the hash has expired: the name is pruned from the nodes SET */
};

enum link_state { LINK_DISABLED = 0, LINK_WAIT, LINK_RESOLVING, LINK_CONNECTING, LINK_UP };
enum watch_state { WATCH_OFF = 0, WATCH_WAIT, WATCH_CONNECTING, WATCH_UP };
enum read_phase { READ_IDLE = 0, READ_SETS, READ_HASHES };

/* One async connection and its registration in the master loop. */
struct conn {
    const char *name;      /* "command" or "subscriber", for messages */
    redisAsyncContext *ac; /* NULL when closed */
    int fd;
    uint32_t events;   /* what hiredis wants watched */
    uint32_t watched;  /* what the loop watches (hiredis re-arms writes per command) */
    int registered;    /* fd is in the loop */
    int connected;     /* TCP connect completed */
    int closing;       /* we are freeing it: not an error */
    int ready;         /* AUTH/SELECT/PING, or SUBSCRIBE, answered */
    int pending;       /* commands sent whose replies are not in yet */
    uint64_t deadline; /* connect or reply deadline (monotonic ms), 0 = none */
    char error[256];   /* set by a callback: the link must be dropped */
};

static struct {
    int tick_registered;
    int state; /* enum link_state */
    struct conn cmd, sub;
    char *sig;  /* the settings the link was opened with */
    char *host; /* the master's address (with Sentinel: as last resolved, NULL */
    int port;   /* before the first answer) */

    /* Sentinel (see the top of the file). */
    struct conn res;  /* asks one sentinel where the master is */
    size_t res_idx;   /* the sentinel asked now (modulo nsentinels) */
    size_t res_tried; /* sentinels tried in this attempt */
    char *res_host;   /* its answer, once res.ready */
    int res_port;
    char res_last[300]; /* the last sentinel's problem in this attempt */
    struct conn sw;     /* subscribed to +switch-master */
    int sw_state;       /* enum watch_state */
    size_t sw_idx;
    uint64_t sw_retry_at;
    unsigned sw_failures;
    char sw_last_error[400];
    int switched;          /* +switch-master for our master came in: resolve now */
    char switch_text[300]; /* its payload, for the log */

    /* This node's report, and the fleet as read. */
    uint64_t ping_next;     /* liveness PING of the idle command connection */
    char file_error[400];   /* the last reload of the file was refused: why (first line) */
    int report_dirty;       /* write the report at the next chance */
    uint64_t report_next;   /* the heartbeat */
    char *report_name;      /* node_name the last report went under */
    char *report_announced; /* its content as last announced on node-events */
    char report_error[300]; /* last refused write (logged once) */
    int fleet_wanted;
    uint64_t fleet_next;
    int fleet_phase; /* 0 idle, 1 SMEMBERS + GET version, 2 HGETALL each */
    size_t fleet_pending;
    struct fnode *fr; /* the read in progress */
    size_t nfr;
    long long fr_version;
    struct fnode *fleet; /* the last complete read, sorted by name */
    size_t nfleet;
    long long fleet_version;
    uint64_t fleet_read_at;
    char *fleet_env;              /* the environment it was read from */
    struct adm_fleet_node *fview; /* ms_redis_fleet()'s answer, rebuilt per call */
    struct adm_fleet fleet_view;

    uint64_t retry_at;
    unsigned failures; /* consecutive: the backoff exponent */
    int ever_up;
    char last_error[512]; /* last failure, for ms_redis_state and to log repeats once */
    char state_text[600];
    unsigned rand_state;

    int phase;  /* enum read_phase */
    int wanted; /* an event came in: read again as soon as possible */
    uint64_t next_resync;
    struct ms_rns *reading; /* the read in progress */
    size_t read_pending;    /* its replies still expected */
    char read_error[256];   /* a server error that is not about the data (LOADING, NOAUTH) */

    struct ms_rns *good;   /* last namespace that validated: merged into every publish */
    uint64_t rejected;     /* fingerprint of the last refused namespace, logged once */
    char reject_text[512]; /* its first problem, while the refusal stands */
    uint64_t synced_at;
    int unversioned;   /* the last complete read had no `version` key: not applied */
    char problem[700]; /* for ms_redis_rejected() */
} rd = {
    .cmd = {.name = "command", .fd = -1},
    .sub = {.name = "subscriber", .fd = -1},
    .res = {.name = "sentinel", .fd = -1},
    .sw = {.name = "sentinel subscriber", .fd = -1},
};

static int sentinel_mode(const struct ms_config *cfg)
{
    return cfg->redis.nsentinels > 0;
}

/* ---- hiredis event adapter onto ms_loop ----------------------------------------------------- */

static void on_fd(int fd, uint32_t events, void *arg)
{
    struct conn *c = arg;

    if (c->ac != NULL && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
        int avail = 0;

        /* hiredis reads 16 KiB per call: drain what is there now rather than take one loop pass
         * per 16 KiB of a large namespace. */
        for (int i = 0; i < 256 && c->ac != NULL; i++) {
            redisAsyncHandleRead(c->ac);
            if (c->ac == NULL || ioctl(fd, FIONREAD, &avail) != 0 || avail <= 0) {
                break;
            }
        }
    }
    /* The read may have freed the context (connection lost): check again. */
    if (c->ac != NULL && (c->events & EPOLLOUT) && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        redisAsyncHandleWrite(c->ac);
    }
}

static void ev_update(struct conn *c)
{
    if (c->registered && c->watched == c->events) {
        return;
    }
    if (c->events == 0) {
        if (c->registered) {
            ms_loop_del(c->fd);
            c->registered = 0;
        }
        return;
    }
    if (!c->registered) {
        if (ms_loop_add(c->fd, c->events, on_fd, c) != 0) {
            snprintf(c->error, sizeof(c->error), "cannot watch the connection's fd");
            return;
        }
        c->registered = 1;
    } else if (ms_loop_mod(c->fd, c->events) != 0) {
        snprintf(c->error, sizeof(c->error), "cannot watch the connection's fd");
        return;
    }
    c->watched = c->events;
}

static void ev_add_read(void *p)
{
    struct conn *c = p;

    c->events |= EPOLLIN;
    ev_update(c);
}

static void ev_del_read(void *p)
{
    struct conn *c = p;

    c->events &= ~(uint32_t)EPOLLIN;
    ev_update(c);
}

static void ev_add_write(void *p)
{
    struct conn *c = p;

    c->events |= EPOLLOUT;
    ev_update(c);
}

static void ev_del_write(void *p)
{
    struct conn *c = p;

    c->events &= ~(uint32_t)EPOLLOUT;
    ev_update(c);
}

/* hiredis is freeing the context (our redisAsyncFree, a lost connection, a failed connect): the
 * fd is still open here and closed right after. Why it went is recorded by on_connect or
 * on_disconnect, which hiredis calls around this; the tick notices c->ac == NULL. */
static void ev_cleanup(void *p)
{
    struct conn *c = p;

    c->events = 0;
    ev_update(c);
    c->ac = NULL;
    c->fd = -1;
}

/* ---- replies into the namespace -------------------------------------------------------------- */

/* A SMEMBERS reply for <kind>. Returns 0, or -1 with <err> set when the reply says the server,
 * not the data, is the problem. */
static int fill_set(struct ms_rns *ns, int kind, const redisReply *r, char *err, size_t errlen)
{
    char what[512];

    if (r == NULL) {
        snprintf(err, errlen, "SMEMBERS: no reply");
        return -1;
    }
    if (rds_reply_is_error(r, "WRONGTYPE")) {
        ms_rns_set_error(ns, kind, rds_reply_what(r, what, sizeof(what)));
        return 0;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "SMEMBERS %s%s: %s", ns->prefix, ms_rns_set_name(kind),
                 rds_reply_what(r, what, sizeof(what)));
        return -1;
    }
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *m = r->element[i];

        if (m->type != REDIS_REPLY_STRING) {
            ms_rns_set_error(ns, kind, "a member is not a string");
            continue;
        }
        ms_rns_add(ns, kind, m->str, m->len);
    }
    return 0;
}

/* A HGETALL reply for <e>. Same return convention as fill_set(). */
static int fill_hash(struct ms_rns *ns, struct ms_rns_entry *e, const redisReply *r, char *err,
                     size_t errlen)
{
    char what[512];

    if (r == NULL) {
        snprintf(err, errlen, "HGETALL: no reply");
        return -1;
    }
    if (rds_reply_is_error(r, "WRONGTYPE")) {
        ms_rns_entry_error(e, rds_reply_what(r, what, sizeof(what)));
        return 0;
    }
    if (r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "HGETALL %s...: %s", ns->prefix,
                 rds_reply_what(r, what, sizeof(what)));
        return -1;
    }
    if (r->elements == 0) {
        e->missing = 1;
        return 0;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];

        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            ms_rns_entry_error(e, "a field is not a string");
            continue;
        }
        ms_rns_set(e, k->str, k->len, v->str, v->len);
    }
    return 0;
}

/* The GET reply of the namespace's `version` key. Same return convention as fill_set(). */
static int fill_version(struct ms_rns *ns, const redisReply *r, char *err, size_t errlen)
{
    char what[512];

    if (r == NULL) {
        snprintf(err, errlen, "GET: no reply");
        return -1;
    }
    if (rds_reply_is_error(r, "WRONGTYPE")) {
        ms_rns_version_error(ns, "not a string (WRONGTYPE)");
        return 0;
    }
    if (r->type == REDIS_REPLY_NIL) {
        return 0; /* MS_RNS_VERSION_NONE */
    }
    if (r->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "GET %sversion: %s", ns->prefix,
                 rds_reply_what(r, what, sizeof(what)));
        return -1;
    }
    ms_rns_set_version(ns, r->str, r->len);
    return 0;
}

static void hash_key(char *buf, size_t n, const struct ms_rns *ns, int kind, const char *id)
{
    snprintf(buf, n, "%s%s%s", ns->prefix, ms_rns_hash_name(kind), id);
}

/* ---- the one synchronous read, at start ---------------------------------------------------- */

static struct timeval tv_ms(int msec)
{
    struct timeval tv = {.tv_sec = msec / 1000, .tv_usec = (msec % 1000) * 1000};

    return tv;
}

/* Check one reply of the hand-shake (AUTH, SELECT); frees it. */
static int sync_ok(redisContext *c, redisReply *r, const char *what, char *err, size_t errlen)
{
    char buf[512];
    int ok = r != NULL && r->type != REDIS_REPLY_ERROR;

    if (!ok) {
        snprintf(err, errlen, "%s: %s", what,
                 r != NULL ? rds_reply_what(r, buf, sizeof(buf)) : c->errstr);
    }
    if (r != NULL) {
        freeReplyObject(r);
    }
    return ok ? 0 : -1;
}

/* The answer to SENTINEL get-master-addr-by-name: 0 and the address (heap host), or -1 with
 * why in <err>. */
static int parse_master_addr(const redisReply *r, const char *name, char **host, int *port,
                             char *err, size_t errlen)
{
    char what[512];
    char *end;
    long p;

    if (r == NULL) {
        snprintf(err, errlen, "SENTINEL get-master-addr-by-name: no reply");
        return -1;
    }
    if (r->type == REDIS_REPLY_NIL) {
        snprintf(err, errlen, "does not know a master called '%s'", name);
        return -1;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[0]->len == 0 || r->element[0]->len > 255 ||
        strlen(r->element[0]->str) != r->element[0]->len) {
        snprintf(err, errlen, "SENTINEL get-master-addr-by-name: %s",
                 r->type == REDIS_REPLY_ERROR ? rds_reply_what(r, what, sizeof(what))
                                              : "an answer that is not [ip, port]");
        return -1;
    }
    errno = 0;
    p = strtol(r->element[1]->str, &end, 10);
    if (*end != '\0' || errno != 0 || p < 1 || p > 65535 || r->element[1]->str[0] == '\0') {
        snprintf(err, errlen, "SENTINEL get-master-addr-by-name: bad port in the answer");
        return -1;
    }
    *host = dsp_xstrdup(r->element[0]->str);
    *port = (int)p;
    return 0;
}

/* Is <r>, a ROLE reply, a master's? When not, why in <err>. */
static int role_is_master(const redisReply *r, const char *host, int port, char *err, size_t errlen)
{
    char what[512];

    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
        r->element[0]->type == REDIS_REPLY_STRING) {
        if (strcmp(r->element[0]->str, "master") == 0) {
            return 1;
        }
        snprintf(err, errlen, "ROLE: %s:%d is a %.32s, not the master (a failover in progress?)",
                 host, port, r->element[0]->str);
        return 0;
    }
    snprintf(err, errlen, "ROLE: %s", r ? rds_reply_what(r, what, sizeof(what)) : "no reply");
    return 0;
}

/* Ask the sentinels, one after the other, where the master is (at start). Returns 0 and the
 * address (heap host), or -1 with the last sentinel's problem in <err>. */
static int sync_resolve(const struct ms_config *cfg, char **host, int *port, char *err,
                        size_t errlen)
{
    char one[400];

    snprintf(err, errlen, "no sentinel");
    for (size_t i = 0; i < cfg->redis.nsentinels; i++) {
        const struct ms_redis_addr *a = &cfg->redis.sentinels[i];
        redisContext *c = redisConnectWithTimeout(a->host, a->port,
                                                  tv_ms(cfg->redis.connect_timeout_ms));
        redisReply *r = NULL;
        int rc = -1;

        if (c == NULL) {
            snprintf(one, sizeof(one), "out of memory");
        } else if (c->err) {
            snprintf(one, sizeof(one), "connect: %s", c->errstr);
        } else {
            redisSetTimeout(c, tv_ms(cfg->redis.command_timeout_ms));
            if (cfg->redis.sentinel_password != NULL &&
                sync_ok(c, redisCommand(c, "AUTH %s", cfg->redis.sentinel_password), "AUTH", one,
                        sizeof(one)) != 0) {
                /* one says why */
            } else {
                r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", cfg->redis.master_name);
                if (r == NULL) {
                    snprintf(one, sizeof(one), "SENTINEL get-master-addr-by-name: %s", c->errstr);
                } else {
                    rc = parse_master_addr(r, cfg->redis.master_name, host, port, one, sizeof(one));
                    freeReplyObject(r);
                }
            }
        }
        if (c != NULL) {
            redisFree(c);
        }
        if (rc == 0) {
            rd.res_idx = i; /* the background link starts with the one that answered */
            return 0;
        }
        snprintf(err, errlen, "sentinel %s:%d: %s", a->host, a->port, one);
    }
    return -1;
}

static int sync_read(const struct ms_config *cfg, const char *host, int port, struct ms_rns *ns,
                     char *err, size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(host, port, tv_ms(cfg->redis.connect_timeout_ms));
    char key[1024];
    void *r;
    int rc = -1;

    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (c->err) {
        snprintf(err, errlen, "connect: %s", c->errstr);
        goto out;
    }
    redisSetTimeout(c, tv_ms(cfg->redis.command_timeout_ms));
    if (cfg->redis.password != NULL) {
        r = cfg->redis.user != NULL
                ? redisCommand(c, "AUTH %s %s", cfg->redis.user, cfg->redis.password)
                : redisCommand(c, "AUTH %s", cfg->redis.password);
        if (sync_ok(c, r, "AUTH", err, errlen) != 0) {
            goto out;
        }
    }
    if (cfg->redis.db != 0 &&
        sync_ok(c, redisCommand(c, "SELECT %d", cfg->redis.db), "SELECT", err, errlen) != 0) {
        goto out;
    }
    if (sentinel_mode(cfg)) {
        int master;

        r = redisCommand(c, "ROLE");
        master = role_is_master(r, host, port, err, errlen);
        if (r != NULL) {
            freeReplyObject(r);
        }
        if (!master) {
            goto out;
        }
    }
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        redisAppendCommand(c, "SMEMBERS %s%s", ns->prefix, ms_rns_set_name(k));
    }
    redisAppendCommand(c, "GET %sversion", ns->prefix);
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        if (redisGetReply(c, &r) != REDIS_OK) {
            snprintf(err, errlen, "SMEMBERS: %s", c->errstr);
            goto out;
        }
        if (fill_set(ns, k, r, err, errlen) != 0) {
            freeReplyObject(r);
            goto out;
        }
        freeReplyObject(r);
    }
    if (redisGetReply(c, &r) != REDIS_OK) {
        snprintf(err, errlen, "GET: %s", c->errstr);
        goto out;
    }
    if (fill_version(ns, r, err, errlen) != 0) {
        freeReplyObject(r);
        goto out;
    }
    freeReplyObject(r);
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        for (size_t i = 0; i < ns->n[k]; i++) {
            hash_key(key, sizeof(key), ns, k, ns->e[k][i].id);
            redisAppendCommand(c, "HGETALL %s", key);
        }
    }
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        for (size_t i = 0; i < ns->n[k]; i++) {
            if (redisGetReply(c, &r) != REDIS_OK) {
                snprintf(err, errlen, "HGETALL: %s", c->errstr);
                goto out;
            }
            if (fill_hash(ns, &ns->e[k][i], r, err, errlen) != 0) {
                freeReplyObject(r);
                goto out;
            }
            freeReplyObject(r);
        }
    }
    rc = 0;
out:
    redisFree(c);
    return rc;
}

/* ---- applying a namespace ------------------------------------------------------------------- */

static size_t count_redis_routes(const struct ms_config *cfg)
{
    size_t n = 0;

    for (size_t i = 0; i < cfg->nroutes; i++) {
        n += cfg->routes[i].source == SHM_SOURCE_REDIS;
    }
    return n;
}

static size_t count_redis_services(const struct ms_config *cfg)
{
    size_t n = 0;

    for (size_t i = 0; i < cfg->nservices; i++) {
        n += cfg->services[i].source == SHM_SOURCE_REDIS;
    }
    return n;
}

/* Log why <ns> was refused, once per distinct content (a resync re-reads the same bad data every
 * resync_ms, and one report of it is enough). */
static void report_rejected(const struct ms_rns *ns, const char *errs)
{
    uint64_t h = ms_rns_hash(ns);

    if (h == rd.rejected) {
        log_debug("redis %s*: namespace still invalid; unchanged", ns->prefix);
        return;
    }
    rd.rejected = h;
    snprintf(rd.reject_text, sizeof(rd.reject_text), "%.*s", (int)strcspn(errs, "\n"), errs);
    log_error("redis %s*: namespace rejected as a whole; still serving generation %llu%s",
              ns->prefix, (unsigned long long)ms.gen,
              rd.good != NULL ? " with the last good Redis data" : "");
    log_lines(LOG_ERROR, errs);
}

/* Put the last good data back into ms.cfg after a failed attempt (it validated against this very
 * file before, so it does again). */
static void restore_good(void)
{
    char *errs = NULL;

    if (rd.good != NULL && ms_rns_merge(ms.cfg, rd.good, 1, &errs) != 0) {
        log_error("redis: cannot restore the last good data (bug):");
        log_lines(LOG_ERROR, errs);
    }
    free(errs);
}

/* What is served while the namespace is not applied, for messages. */
static const char *serving_what(char *buf, size_t n)
{
    if (rd.good != NULL) {
        snprintf(buf, n, "the last good Redis data (version %lld)", rd.good->version);
    } else {
        snprintf(buf, n, "the file alone");
    }
    return buf;
}

/* Is <ns> versioned, so that it may be applied? A namespace without a `version` key is what a
 * Redis that restarted without its data holds: not applied (said once, until a versioned read
 * comes); a `version` that is no integer refuses the namespace like any invalid entry. */
static int versioned(const struct ms_rns *ns)
{
    char what[128];

    if (ns->version_state == MS_RNS_VERSION_NONE) {
        if (!rd.unversioned) {
            log_warn("redis %s*: no %sversion key (a Redis that restarted without its data?): "
                     "not applied; serving %s",
                     ns->prefix, ns->prefix, serving_what(what, sizeof(what)));
        }
        rd.unversioned = 1;
        return 0;
    }
    if (rd.unversioned) {
        log_info("redis %s*: %sversion is back", ns->prefix, ns->prefix);
    }
    rd.unversioned = 0;
    if (ns->version_state == MS_RNS_VERSION_BAD) {
        char errs[600];
        snprintf(errs, sizeof(errs), "redis %sversion: %s", ns->prefix, ns->version_error);
        report_rejected(ns, errs);
        return 0;
    }
    return 1;
}

/* The change a new namespace makes (see master/ms_commit.h): merged into ms.cfg in place. */
static struct ms_config *change_validate(void *arg, char **errs)
{
    ms_rns_unmerge(ms.cfg);
    if (ms_rns_merge(ms.cfg, arg, 0, errs) != 0) {
        return NULL;
    }
    return ms.cfg;
}

static void change_undo(void *arg)
{
    (void)arg;
    ms_rns_unmerge(ms.cfg);
    restore_good();
}

static void change_report(void *arg, enum ms_outcome how, const char *errs,
                          const struct ms_commit_times *times)
{
    const struct ms_rns *ns = arg;

    (void)times;
    switch (how) {
    case MS_COMMIT_INVALID:
        report_rejected(ns, errs != NULL ? errs : "");
        break;
    case MS_COMMIT_UNPUBLISHED:
        log_error("redis %s*: cannot publish the new data; still serving generation %llu",
                  ns->prefix, (unsigned long long)ms.gen);
        break;
    case MS_COMMIT_DONE:
        log_info("redis %s*: applied as generation %llu (version %lld; %zu services, %zu routes "
                 "from Redis)",
                 ns->prefix, (unsigned long long)ms.gen, ns->version, count_redis_services(ms.cfg),
                 count_redis_routes(ms.cfg));
        break;
    }
}

/* A complete, sorted read: publish it when it changed and validates. Takes <ns>. */
static void apply(struct ms_rns *ns)
{
    struct ms_change change = {
        .origin = MS_ORIGIN_REDIS,
        .validate = change_validate,
        .undo = change_undo,
        .report = change_report,
        .arg = ns,
    };

    if (!versioned(ns)) {
        ms_rns_free(ns);
        return;
    }
    if (ms_rns_equal(ns, rd.good)) {
        log_debug("redis %s*: unchanged (version %lld)", ns->prefix, ns->version);
        rd.good->version = ns->version;
        rd.synced_at = dsp_wall_s();
        rd.rejected = 0;
        rd.reject_text[0] = '\0';
        ms_rns_free(ns);
        return;
    }
    if (ms_commit(&change, NULL) != 0) {
        ms_rns_free(ns);
        return;
    }
    ms_rns_free(rd.good);
    rd.good = ns;
    rd.rejected = 0;
    rd.reject_text[0] = '\0';
    rd.synced_at = dsp_wall_s();
}

/* ---- async connections ---------------------------------------------------------------------- */

static uint64_t cmd_timeout(void)
{
    return (uint64_t)ms.cfg->redis.command_timeout_ms;
}

/* A command was sent on <c>: its reply must come within command_timeout_ms. */
static void sent(struct conn *c)
{
    if (c->pending++ == 0 && c->connected) {
        c->deadline = dsp_now_ms() + cmd_timeout();
    }
}

/* A reply came in on <c>: the next one (if any) gets a fresh deadline. */
static void answered(struct conn *c)
{
    if (c->pending > 0) {
        c->pending--;
    }
    c->deadline = c->pending > 0 ? dsp_now_ms() + cmd_timeout() : 0;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct conn *c = ac->data;

    if (status != REDIS_OK) {
        /* hiredis frees the context right after this returns. */
        snprintf(c->error, sizeof(c->error), "connect: %s", ac->errstr ? ac->errstr : "failed");
        return;
    }
    c->connected = 1;
    c->deadline = c->pending > 0 ? dsp_now_ms() + cmd_timeout() : 0;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct conn *c = ac->data;

    if (!c->closing && c->error[0] == '\0') {
        snprintf(c->error, sizeof(c->error), "connection lost%s%s",
                 status != REDIS_OK && ac->err ? ": " : "",
                 status != REDIS_OK && ac->err ? ac->errstr : "");
    }
}

/* Replies of the command connection's hand-shake; <priv> names the command. */
static void on_setup(redisAsyncContext *ac, void *reply, void *priv)
{
    struct conn *c = &rd.cmd;
    redisReply *r = reply;
    char what[512];

    if (r == NULL) {
        return; /* the context is going away; ev_cleanup records why */
    }
    answered(c);
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(c->error, sizeof(c->error), "%s: %s", (const char *)priv,
                 rds_reply_what(r, what, sizeof(what)));
        return;
    }
    if (strcmp((const char *)priv, "ROLE") == 0) {
        (void)role_is_master(r, rd.host, rd.port, c->error, sizeof(c->error));
        return;
    }
    if (strcmp((const char *)priv, "PING") == 0) {
        c->ready = 1;
    }
}

static void on_message(redisAsyncContext *ac, void *reply, void *priv)
{
    struct conn *c = &rd.sub;
    redisReply *r = reply;
    char what[512];

    if (r == NULL) {
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        answered(c);
        snprintf(c->error, sizeof(c->error), "SUBSCRIBE: %s",
                 rds_reply_what(r, what, sizeof(what)));
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        return;
    }
    if (strcmp(r->element[0]->str, "subscribe") == 0) {
        /* One confirmation per channel: ready with the second (events and node-events). */
        if (r->element[2]->type == REDIS_REPLY_INTEGER && r->element[2]->integer >= 2) {
            answered(c);
            c->ready = 1;
        }
    } else if (strcmp(r->element[0]->str, "message") == 0 &&
               r->element[1]->type == REDIS_REPLY_STRING) {
        static const char node_events[] = ":node-events";
        const redisReply *ch = r->element[1];

        if (ch->len >= sizeof(node_events) - 1 &&
            memcmp(ch->str + ch->len - (sizeof(node_events) - 1), node_events,
                   sizeof(node_events) - 1) == 0) {
            rd.fleet_wanted = 1; /* a node's report changed */
            return;
        }
        log_debug("redis: event on %s", ch->str);
        rd.wanted = 1;
    }
}

static void subscribe(struct conn *c)
{
    char channel[512];

    char nodes[512];

    snprintf(channel, sizeof(channel), "dispatcher:%s:events", ms.cfg->environment);
    snprintf(nodes, sizeof(nodes), "dispatcher:%s:node-events", ms.cfg->environment);
    if (redisAsyncCommand(c->ac, on_message, NULL, "SUBSCRIBE %s %s", channel, nodes) != REDIS_OK) {
        snprintf(c->error, sizeof(c->error), "cannot send SUBSCRIBE");
        return;
    }
    sent(c);
}

static void on_sub_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    struct conn *c = &rd.sub;
    redisReply *r = reply;
    char what[512];

    if (r == NULL) {
        return;
    }
    answered(c);
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(c->error, sizeof(c->error), "AUTH: %s", rds_reply_what(r, what, sizeof(what)));
        return;
    }
    /* Only now: hiredis routes replies by the subscribed flag, which SUBSCRIBE sets at once, so
     * an AUTH reply still in flight would be lost. */
    subscribe(c);
}

static int send_auth(struct conn *c, redisCallbackFn *fn, void *priv)
{
    const struct ms_config *cfg = ms.cfg;
    int r;

    if (cfg->redis.user != NULL) {
        r = redisAsyncCommand(c->ac, fn, priv, "AUTH %s %s", cfg->redis.user, cfg->redis.password);
    } else {
        r = redisAsyncCommand(c->ac, fn, priv, "AUTH %s", cfg->redis.password);
    }
    if (r == REDIS_OK) {
        sent(c);
    }
    return r == REDIS_OK ? 0 : -1;
}

static int conn_open(struct conn *c, const char *host, int port, uint64_t now)
{
    const struct ms_config *cfg = ms.cfg;
    redisAsyncContext *ac;

    c->fd = -1;
    c->events = 0;
    c->watched = 0;
    c->registered = 0;
    c->connected = 0;
    c->closing = 0;
    c->ready = 0;
    c->pending = 0;
    c->deadline = 0;
    c->error[0] = '\0';
    /* A host name is resolved here, synchronously: use an address or a name from /etc/hosts. */
    ac = redisAsyncConnect(host, port);
    if (ac == NULL) {
        snprintf(c->error, sizeof(c->error), "connect: out of memory");
        return -1;
    }
    if (ac->err) {
        snprintf(c->error, sizeof(c->error), "connect: %s", ac->errstr);
        redisAsyncFree(ac);
        return -1;
    }
    c->ac = ac;
    c->fd = ac->c.fd;
    ac->data = c;
    ac->ev.data = c;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    /* Notices a peer that vanished without a FIN, which matters for the idle subscriber. */
    redisEnableKeepAlive(&ac->c);
    c->deadline = now + (uint64_t)cfg->redis.connect_timeout_ms;
    /* The connect callback must come after the hooks: setting it arms the first write event. */
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return c->error[0] == '\0' ? 0 : -1;
}

static void conn_close(struct conn *c)
{
    if (c->ac != NULL) {
        c->closing = 1;
        redisAsyncFree(c->ac); /* runs pending callbacks with NULL, then ev_cleanup */
    }
    c->ac = NULL;
    c->fd = -1;
    c->ready = 0;
    c->connected = 0;
    c->pending = 0;
    c->deadline = 0;
}

static void read_abort(void)
{
    ms_rns_free(rd.reading);
    rd.reading = NULL;
    rd.phase = READ_IDLE;
    rd.read_pending = 0;
    rd.read_error[0] = '\0';
}

static void fleet_abort(void);

static void link_close(void)
{
    read_abort();
    fleet_abort();
    conn_close(&rd.cmd);
    conn_close(&rd.sub);
    conn_close(&rd.res);
    free(rd.res_host);
    rd.res_host = NULL;
}

static char *settings_sig(const struct ms_config *cfg)
{
    size_t n = strlen(cfg->redis.host) + strlen(cfg->environment) +
               (cfg->redis.user ? strlen(cfg->redis.user) : 0) +
               (cfg->redis.password ? strlen(cfg->redis.password) : 0) +
               (cfg->redis.master_name ? strlen(cfg->redis.master_name) : 0) +
               (cfg->redis.sentinel_password ? strlen(cfg->redis.sentinel_password) : 0) + 64;
    size_t len;
    char *s;

    for (size_t i = 0; i < cfg->redis.nsentinels; i++) {
        n += strlen(cfg->redis.sentinels[i].host) + 16;
    }
    s = dsp_xmalloc(n);
    len = (size_t)snprintf(s, n, "%s\n%d\n%d\n%s\n%s\n%s\n%s\n%s\n", cfg->redis.host,
                           cfg->redis.port, cfg->redis.db, cfg->redis.user ? cfg->redis.user : "",
                           cfg->redis.password ? cfg->redis.password : "", cfg->environment,
                           cfg->redis.master_name ? cfg->redis.master_name : "",
                           cfg->redis.sentinel_password ? cfg->redis.sentinel_password : "");
    for (size_t i = 0; i < cfg->redis.nsentinels && len < n; i++) {
        len += (size_t)snprintf(s + len, n - len, "%s:%d,", cfg->redis.sentinels[i].host,
                                cfg->redis.sentinels[i].port);
    }
    return s;
}

/* What the link talks to, for messages: "redis 10.0.0.5:6379", "redis master 'mymaster'
 * (10.0.0.5:6379)", or "redis master 'mymaster'" before the sentinels named it. */
static const char *link_label(char *buf, size_t n)
{
    if (!sentinel_mode(ms.cfg)) {
        snprintf(buf, n, "redis %s:%d", rd.host ? rd.host : "?", rd.port);
    } else if (rd.host == NULL || rd.state == LINK_RESOLVING) {
        snprintf(buf, n, "redis master '%s'", ms.cfg->redis.master_name);
    } else {
        snprintf(buf, n, "redis master '%s' (%s:%d)", ms.cfg->redis.master_name, rd.host, rd.port);
    }
    return buf;
}

static void link_fail(uint64_t now, const char *why)
{
    unsigned shift = rd.failures < 10 ? rd.failures : 10;
    uint64_t delay = (uint64_t)BACKOFF_MIN_MS << shift;
    int repeat = strcmp(why, rd.last_error) == 0 && rd.state != LINK_UP;
    char label[400];

    link_label(label, sizeof(label));
    link_close();
    if (delay > BACKOFF_MAX_MS) {
        delay = BACKOFF_MAX_MS;
    }
    /* +-20% so that a fleet does not reconnect in lock-step after a Redis restart. */
    delay = delay * 4 / 5 + (uint64_t)(rand_r(&rd.rand_state) % (int)(delay * 2 / 5 + 1));
    rd.failures++;
    rd.retry_at = now + delay;
    rd.state = LINK_WAIT;
    if (repeat) {
        log_debug("%s: %s; retrying in %llu ms", label, why, (unsigned long long)delay);
    } else {
        log_warn("%s: %s; still serving generation %llu, retrying in %llu ms", label, why,
                 (unsigned long long)ms.gen, (unsigned long long)delay);
    }
    snprintf(rd.last_error, sizeof(rd.last_error), "%s", why);
}

static void link_connect(uint64_t now)
{
    const struct ms_config *cfg = ms.cfg;
    char why[512];

    rd.state = LINK_CONNECTING;
    if (conn_open(&rd.cmd, rd.host, rd.port, now) != 0) {
        snprintf(why, sizeof(why), "%s connection: %s", rd.cmd.name, rd.cmd.error);
        link_fail(now, why);
        return;
    }
    if (conn_open(&rd.sub, rd.host, rd.port, now) != 0) {
        snprintf(why, sizeof(why), "%s connection: %s", rd.sub.name, rd.sub.error);
        link_fail(now, why);
        return;
    }
    /* Commands queue until the connect completes. PING last: when it answers, the hand-shake is
     * done (and a server that wants a password says so to PING too). */
    if (cfg->redis.password != NULL) {
        send_auth(&rd.cmd, on_setup, (void *)"AUTH");
    }
    if (cfg->redis.db != 0 && redisAsyncCommand(rd.cmd.ac, on_setup, (void *)"SELECT", "SELECT %d",
                                                cfg->redis.db) == REDIS_OK) {
        sent(&rd.cmd);
    }
    /* What the sentinels named may already be a replica again (a failover in progress, a stale
     * sentinel): read only from a master. */
    if (sentinel_mode(cfg) &&
        redisAsyncCommand(rd.cmd.ac, on_setup, (void *)"ROLE", "ROLE") == REDIS_OK) {
        sent(&rd.cmd);
    }
    if (redisAsyncCommand(rd.cmd.ac, on_setup, (void *)"PING", "PING") == REDIS_OK) {
        sent(&rd.cmd);
    }
    if (cfg->redis.password != NULL) {
        send_auth(&rd.sub, on_sub_auth, NULL);
    } else {
        subscribe(&rd.sub);
    }
}

/* ---- Sentinel: where the master is, and when it moves -----------------------------------------
 */

static void on_resolve(redisAsyncContext *ac, void *reply, void *priv)
{
    struct conn *c = &rd.res;
    redisReply *r = reply;
    char what[512];

    (void)ac;
    if (r == NULL) {
        return;
    }
    answered(c);
    if (priv != NULL) { /* AUTH */
        if (r->type == REDIS_REPLY_ERROR) {
            snprintf(c->error, sizeof(c->error), "AUTH: %s", rds_reply_what(r, what, sizeof(what)));
        }
        return;
    }
    if (c->error[0] != '\0' || c->ready) {
        return;
    }
    free(rd.res_host);
    rd.res_host = NULL;
    if (parse_master_addr(r, ms.cfg->redis.master_name, &rd.res_host, &rd.res_port, c->error,
                          sizeof(c->error)) == 0) {
        c->ready = 1;
    }
}

/* Ask sentinel rd.res_idx. Returns 0, or -1 with the problem in rd.res.error. */
static int res_ask(uint64_t now)
{
    const struct ms_config *cfg = ms.cfg;
    const struct ms_redis_addr *a = &cfg->redis.sentinels[rd.res_idx % cfg->redis.nsentinels];

    if (conn_open(&rd.res, a->host, a->port, now) != 0) {
        return -1;
    }
    if (cfg->redis.sentinel_password != NULL) {
        if (redisAsyncCommand(rd.res.ac, on_resolve, (void *)"AUTH", "AUTH %s",
                              cfg->redis.sentinel_password) != REDIS_OK) {
            snprintf(rd.res.error, sizeof(rd.res.error), "cannot send AUTH");
            return -1;
        }
        sent(&rd.res);
    }
    if (redisAsyncCommand(rd.res.ac, on_resolve, NULL, "SENTINEL get-master-addr-by-name %s",
                          cfg->redis.master_name) != REDIS_OK) {
        snprintf(rd.res.error, sizeof(rd.res.error), "cannot send SENTINEL");
        return -1;
    }
    sent(&rd.res);
    return 0;
}

/* One attempt begins: ask the sentinels, starting with the one that answered last. */
static void res_begin(uint64_t now)
{
    rd.state = LINK_RESOLVING;
    rd.res_tried = 0;
    rd.res_last[0] = '\0';
    if (res_ask(now) != 0) {
        rd.res.deadline = now; /* the tick moves on to the next sentinel */
    }
}

/* The sentinel being asked failed: ask the next one, or give the attempt up (backoff). */
static void res_next(uint64_t now, const char *why)
{
    const struct ms_config *cfg = ms.cfg;

    for (;;) {
        const struct ms_redis_addr *a = &cfg->redis.sentinels[rd.res_idx % cfg->redis.nsentinels];

        snprintf(rd.res_last, sizeof(rd.res_last), "sentinel %s:%d: %s", a->host, a->port, why);
        log_debug("redis master '%s': %s", cfg->redis.master_name, rd.res_last);
        conn_close(&rd.res);
        rd.res_idx = (rd.res_idx + 1) % cfg->redis.nsentinels;
        if (++rd.res_tried >= cfg->redis.nsentinels) {
            char msg[400];

            snprintf(msg, sizeof(msg), "no sentinel named the master (%s)", rd.res_last);
            link_fail(now, msg);
            return;
        }
        if (res_ask(now) == 0) {
            return;
        }
        why = rd.res.error;
    }
}

/* The sentinel answered: connect to the master it named. */
static void res_done(uint64_t now)
{
    char *host = rd.res_host;
    int port = rd.res_port;

    rd.res_host = NULL;
    conn_close(&rd.res);
    if (rd.host == NULL || strcmp(rd.host, host) != 0 || rd.port != port) {
        log_info("redis master '%s': the sentinels name %s:%d", ms.cfg->redis.master_name, host,
                 port);
    }
    free(rd.host);
    rd.host = host;
    rd.port = port;
    link_connect(now);
}

static void on_switch(redisAsyncContext *ac, void *reply, void *priv);
static const char *conn_problem(const struct conn *c, uint64_t now, char *buf, size_t n);

static void sw_subscribe(struct conn *c)
{
    if (redisAsyncCommand(c->ac, on_switch, NULL, "SUBSCRIBE +switch-master") != REDIS_OK) {
        snprintf(c->error, sizeof(c->error), "cannot send SUBSCRIBE");
        return;
    }
    sent(c);
}

/* Replies on the sentinel subscriber: AUTH (<priv> set), the SUBSCRIBE confirmation, and the
 * +switch-master messages ("<name> <old-ip> <old-port> <new-ip> <new-port>"). */
static void on_switch(redisAsyncContext *ac, void *reply, void *priv)
{
    struct conn *c = &rd.sw;
    redisReply *r = reply;
    const redisReply *p;
    const char *name = ms.cfg->redis.master_name;
    size_t nl = strlen(name);
    char what[512];

    (void)ac;
    if (r == NULL) {
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        answered(c);
        snprintf(c->error, sizeof(c->error), "%s: %s", priv != NULL ? "AUTH" : "SUBSCRIBE",
                 rds_reply_what(r, what, sizeof(what)));
        return;
    }
    if (priv != NULL) {
        answered(c);
        sw_subscribe(c); /* only after AUTH's reply, as on the data subscriber */
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        return;
    }
    if (strcmp(r->element[0]->str, "subscribe") == 0) {
        answered(c);
        c->ready = 1;
        return;
    }
    p = r->element[2];
    if (strcmp(r->element[0]->str, "message") != 0 || p->type != REDIS_REPLY_STRING ||
        p->len <= nl || memcmp(p->str, name, nl) != 0 || p->str[nl] != ' ') {
        return; /* another master of these sentinels */
    }
    snprintf(rd.switch_text, sizeof(rd.switch_text), "%.*s", (int)DSP_MIN(p->len, 250), p->str);
    rd.switched = 1;
}

static void sw_fail(uint64_t now, const char *why)
{
    const struct ms_config *cfg = ms.cfg;
    const struct ms_redis_addr *a = &cfg->redis.sentinels[rd.sw_idx % cfg->redis.nsentinels];
    unsigned shift = rd.sw_failures < 10 ? rd.sw_failures : 10;
    uint64_t delay = DSP_MIN((uint64_t)BACKOFF_MIN_MS << shift, (uint64_t)BACKOFF_MAX_MS);
    char msg[400];

    snprintf(msg, sizeof(msg), "sentinel %s:%d: %s", a->host, a->port, why);
    conn_close(&rd.sw);
    if (strcmp(msg, rd.sw_last_error) != 0) {
        log_warn("redis master '%s': %s; not watching for +switch-master, retrying in %llu ms "
                 "(on the next sentinel)",
                 cfg->redis.master_name, msg, (unsigned long long)delay);
        snprintf(rd.sw_last_error, sizeof(rd.sw_last_error), "%s", msg);
    }
    rd.sw_failures++;
    rd.sw_idx = (rd.sw_idx + 1) % cfg->redis.nsentinels;
    rd.sw_retry_at = now + delay;
    rd.sw_state = WATCH_WAIT;
}

/* The subscriber to +switch-master: (re)connect, notice its failures, act on a switch. */
static void sw_tick(uint64_t now)
{
    const struct ms_config *cfg = ms.cfg;
    char buf[512];
    const char *why;

    if (!sentinel_mode(cfg)) {
        conn_close(&rd.sw);
        rd.sw_state = WATCH_OFF;
        rd.switched = 0;
        return;
    }
    switch (rd.sw_state) {
    case WATCH_OFF:
        rd.sw_state = WATCH_WAIT;
        rd.sw_retry_at = now;
        rd.sw_failures = 0;
        rd.sw_last_error[0] = '\0';
        /* fall through */
    case WATCH_WAIT: {
        const struct ms_redis_addr *a = &cfg->redis.sentinels[rd.sw_idx % cfg->redis.nsentinels];

        if (now < rd.sw_retry_at) {
            break;
        }
        rd.sw_state = WATCH_CONNECTING;
        if (conn_open(&rd.sw, a->host, a->port, now) != 0) {
            sw_fail(now, rd.sw.error);
            break;
        }
        if (cfg->redis.sentinel_password != NULL) {
            if (redisAsyncCommand(rd.sw.ac, on_switch, (void *)"AUTH", "AUTH %s",
                                  cfg->redis.sentinel_password) == REDIS_OK) {
                sent(&rd.sw);
            } else {
                snprintf(rd.sw.error, sizeof(rd.sw.error), "cannot send AUTH");
            }
        } else {
            sw_subscribe(&rd.sw);
        }
        break;
    }
    case WATCH_CONNECTING:
    case WATCH_UP:
        why = conn_problem(&rd.sw, now, buf, sizeof(buf));
        if (why != NULL) {
            sw_fail(now, why);
            break;
        }
        if (rd.sw_state == WATCH_CONNECTING && rd.sw.ready) {
            const struct ms_redis_addr *a =
                &cfg->redis.sentinels[rd.sw_idx % cfg->redis.nsentinels];

            rd.sw_state = WATCH_UP;
            rd.sw_failures = 0;
            log_info("redis master '%s': watching +switch-master on sentinel %s:%d",
                     cfg->redis.master_name, a->host, a->port);
            rd.sw_last_error[0] = '\0';
            /* A switch may have happened while nobody watched: a link that is down tries at
             * once rather than at the end of its backoff. */
            if (rd.state == LINK_WAIT) {
                rd.retry_at = now;
            }
        }
        break;
    default:
        break;
    }
    if (rd.switched) {
        char host[256] = "";
        int port = 0;

        rd.switched = 0;
        /* "<name> <old-ip> <old-port> <new-ip> <new-port>": already on the new one? */
        if (sscanf(rd.switch_text + strlen(cfg->redis.master_name), " %*s %*d %255s %d", host,
                   &port) == 2 &&
            rd.state == LINK_UP && rd.host != NULL && strcmp(host, rd.host) == 0 &&
            port == rd.port) {
            log_info("redis: +switch-master %s; already on the new master", rd.switch_text);
            return;
        }
        log_info("redis: +switch-master %s; resolving the master again (still serving "
                 "generation %llu)",
                 rd.switch_text, (unsigned long long)ms.gen);
        link_close();
        rd.state = LINK_WAIT;
        rd.retry_at = now;
        rd.failures = 0;
        rd.last_error[0] = '\0';
    }
}

/* ---- reading the namespace ------------------------------------------------------------------ */

/* <priv> of a read reply: kind + MS_RNS_KINDS * index. */
static void *read_tag(int kind, size_t idx)
{
    return (void *)(uintptr_t)((uintptr_t)idx * MS_RNS_KINDS + (uintptr_t)kind);
}

static void on_read_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    uintptr_t tag = (uintptr_t)priv;
    int kind = (int)(tag % MS_RNS_KINDS);
    size_t idx = (size_t)(tag / MS_RNS_KINDS);
    int rc;

    if (reply == NULL || rd.reading == NULL) {
        return; /* teardown, or a read that was abandoned */
    }
    answered(&rd.cmd);
    rd.read_pending--;
    if (rd.phase == READ_SETS) {
        rc = fill_set(rd.reading, kind, reply, rd.read_error, sizeof(rd.read_error));
    } else {
        DSP_ASSERT(idx < rd.reading->n[kind]);
        rc = fill_hash(rd.reading, &rd.reading->e[kind][idx], reply, rd.read_error,
                       sizeof(rd.read_error));
    }
    (void)rc;
}

static void on_version_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)priv;
    if (reply == NULL || rd.reading == NULL) {
        return;
    }
    answered(&rd.cmd);
    rd.read_pending--;
    (void)fill_version(rd.reading, reply, rd.read_error, sizeof(rd.read_error));
}

static void read_send_cb(redisCallbackFn *fn, const char *cmd, const char *key, void *tag)
{
    if (redisAsyncCommand(rd.cmd.ac, fn, tag, "%s %s", cmd, key) != REDIS_OK) {
        snprintf(rd.cmd.error, sizeof(rd.cmd.error), "cannot send %s", cmd);
        return;
    }
    sent(&rd.cmd);
    rd.read_pending++;
}

static void read_send(const char *cmd, const char *key, void *tag)
{
    read_send_cb(on_read_reply, cmd, key, tag);
}

static void read_start(uint64_t now)
{
    char key[512];

    rd.wanted = 0;
    rd.next_resync = now + (uint64_t)ms.cfg->redis.resync_ms;
    rd.reading = ms_rns_new(ms.cfg->environment);
    rd.phase = READ_SETS;
    for (int k = 0; k < MS_RNS_KINDS; k++) {
        snprintf(key, sizeof(key), "%s%s", rd.reading->prefix, ms_rns_set_name(k));
        read_send("SMEMBERS", key, read_tag(k, 0));
    }
    /* In the same phase as the SETs, so it is one snapshot with them as far as one connection
     * can make it (a writer INCRs version after its change). */
    snprintf(key, sizeof(key), "%sversion", rd.reading->prefix);
    read_send_cb(on_version_reply, "GET", key, NULL);
}

static void read_step(uint64_t now)
{
    char key[1024];

    if (rd.phase == READ_IDLE) {
        if (rd.wanted || now >= rd.next_resync) {
            read_start(now);
        }
        return;
    }
    if (rd.read_pending > 0) {
        return;
    }
    if (rd.phase == READ_SETS) {
        rd.phase = READ_HASHES;
        for (int k = 0; k < MS_RNS_KINDS; k++) {
            for (size_t i = 0; i < rd.reading->n[k]; i++) {
                hash_key(key, sizeof(key), rd.reading, k, rd.reading->e[k][i].id);
                read_send("HGETALL", key, read_tag(k, i));
            }
        }
        if (rd.read_pending > 0) {
            return;
        }
    }
    {
        struct ms_rns *ns = rd.reading;

        rd.reading = NULL;
        rd.phase = READ_IDLE;
        ms_rns_sort(ns);
        apply(ns);
        rd.report_dirty = 1; /* applied, refused or unchanged: what this node serves now */
    }
}

/* ---- node reports and the fleet view -------------------------------------------------------- */

/* Every dispatcher keeps `node:{node_name}` (HASH, node_fields) up to date in its namespace, with
 * a REPORT_TTL_S expiry it refreshes every REPORT_EVERY_MS, and lists the name in the `nodes` SET
 * (names whose hash expired are pruned by the readers). When the content changes it announces
 * the name on `node-events`, so every dispatcher re-reads the fleet at once, and `show fleet`
 * shows a change one node refused right away. */

static void fnodes_free(struct fnode *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        for (int k = 0; k < NF_COUNT; k++) {
            free(v[i].f[k]);
        }
    }
    free(v);
}

static void fleet_abort(void)
{
    fnodes_free(rd.fr, rd.nfr);
    rd.fr = NULL;
    rd.nfr = 0;
    rd.fleet_phase = 0;
    rd.fleet_pending = 0;
}

static void on_report_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    char what[512];

    (void)ac;
    if (r == NULL) {
        return;
    }
    answered(&rd.cmd);
    if (r->type != REDIS_REPLY_ERROR) {
        if (priv != NULL && rd.report_error[0] != '\0') {
            log_info("redis: node report written again");
            rd.report_error[0] = '\0';
        }
        return;
    }
    rds_reply_what(r, what, sizeof(what));
    if (rds_reply_is_error(r, "READONLY")) {
        /* A master that became a replica (Sentinel failover): find the master again. */
        snprintf(rd.cmd.error, sizeof(rd.cmd.error), "writing the node report: %.200s", what);
        return;
    }
    if (strcmp(what, rd.report_error) != 0) {
        log_warn("redis: cannot write this node's report (%s): %s; show fleet will not list it",
                 priv != NULL ? (const char *)priv : "command", what);
        snprintf(rd.report_error, sizeof(rd.report_error), "%.299s", what);
    }
}

static void report_send(const char *tag, int argc, const char **argv)
{
    if (redisAsyncCommandArgv(rd.cmd.ac, on_report_reply, (void *)tag, argc, argv, NULL) !=
        REDIS_OK) {
        snprintf(rd.cmd.error, sizeof(rd.cmd.error), "cannot send %s", argv[0]);
        return;
    }
    sent(&rd.cmd);
}

/* Write this node's report (the link is up). */
static void report_write(uint64_t now)
{
    const struct ms_config *cfg = ms.cfg;
    const char *prefix = ms_redis_namespace();
    const char *redis_problem = ms_redis_rejected();
    const struct shm_snap_hdr *snap = ms.snap;
    char problem_buf[1200];
    const char *problem = redis_problem;
    char val[NF_COUNT][48];
    const char *argv[2 + 2 * NF_COUNT];
    char key[600], set[600], chan[600], *content;
    long long version;
    size_t clen;
    int argc = 0;

    rd.report_dirty = 0;
    rd.report_next = now + REPORT_EVERY_MS;
    if (prefix == NULL) {
        return;
    }
    if (rd.file_error[0] != '\0') {
        /* A refused reload of the file is a refused change too. */
        snprintf(problem_buf, sizeof(problem_buf), "%s%s%s", redis_problem ? redis_problem : "",
                 redis_problem ? "; " : "", rd.file_error);
        problem = problem_buf;
    }
    snprintf(set, sizeof(set), "%snodes", prefix);
    if (rd.report_name != NULL && strcmp(rd.report_name, cfg->node_name) != 0) {
        /* node_name changed on reload: the old name goes at once. */
        snprintf(key, sizeof(key), "%snode:%s", prefix, rd.report_name);
        report_send(NULL, 2, (const char *[]){"DEL", key});
        report_send(NULL, 3, (const char *[]){"SREM", set, rd.report_name});
    }
    free(rd.report_name);
    rd.report_name = dsp_xstrdup(cfg->node_name);
    snprintf(key, sizeof(key), "%snode:%s", prefix, cfg->node_name);
    snprintf(val[NF_GENERATION], sizeof(val[0]), "%llu", (unsigned long long)ms.gen);
    snprintf(val[NF_APPLIED_AT], sizeof(val[0]), "%llu",
             (unsigned long long)(snap != NULL ? snap->loaded_at : 0));
    if (cfg->redis.merged && rd.good != NULL) {
        snprintf(val[NF_SOURCE_DIGEST], sizeof(val[0]), "%016llx",
                 (unsigned long long)ms_rns_hash(rd.good));
    } else {
        snprintf(val[NF_SOURCE_DIGEST], sizeof(val[0]), "file");
    }
    snprintf(val[NF_STATUS], sizeof(val[0]), "%s", problem != NULL ? "rejected" : "ok");
    if (ms_redis_version(&version)) {
        snprintf(val[NF_VERSION], sizeof(val[0]), "%lld", version);
    } else {
        val[NF_VERSION][0] = '\0';
    }
    snprintf(val[NF_UPDATED_AT], sizeof(val[0]), "%llu", (unsigned long long)dsp_wall_s());
    snprintf(val[NF_PID], sizeof(val[0]), "%d", (int)getpid());
    argv[argc++] = "HSET";
    argv[argc++] = key;
    for (int k = 0; k < NF_COUNT; k++) {
        argv[argc++] = node_fields[k];
        argv[argc++] = k == NF_ERROR ? (problem != NULL ? problem : "") : val[k];
    }
    report_send("HSET", argc, argv);
    {
        char ttl[16];

        snprintf(ttl, sizeof(ttl), "%d", REPORT_TTL_S);
        report_send("EXPIRE", 3, (const char *[]){"EXPIRE", key, ttl});
    }
    report_send("SADD", 3, (const char *[]){"SADD", set, cfg->node_name});
    /* Announce a change (not the heartbeat): everything but updated_at. */
    clen = strlen(key) + (problem ? strlen(problem) : 0) + NF_COUNT * 48 + 16;
    content = dsp_xmalloc(clen);
    snprintf(content, clen, "%s|%s|%s|%s|%s|%s|%s", key, val[NF_GENERATION], val[NF_APPLIED_AT],
             val[NF_SOURCE_DIGEST], val[NF_STATUS], val[NF_VERSION],
             problem != NULL ? problem : "");
    if (rd.report_announced == NULL || strcmp(content, rd.report_announced) != 0) {
        snprintf(chan, sizeof(chan), "%snode-events", prefix);
        report_send("PUBLISH", 3, (const char *[]){"PUBLISH", chan, cfg->node_name});
        free(rd.report_announced);
        rd.report_announced = content;
    } else {
        free(content);
    }
}

static void fleet_set_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    char what[512];

    (void)ac;
    (void)priv;
    if (r == NULL || rd.fleet_phase != 1) {
        return;
    }
    answered(&rd.cmd);
    rd.fleet_pending--;
    if (r->type != REDIS_REPLY_ARRAY) {
        log_debug("redis: SMEMBERS nodes: %s", rds_reply_what(r, what, sizeof(what)));
        return;
    }
    if (r->elements > 0) {
        rd.fr = dsp_xcalloc(DSP_MIN(r->elements, (size_t)FLEET_MAX_NODES), sizeof(*rd.fr));
    }
    for (size_t i = 0; i < r->elements && rd.nfr < FLEET_MAX_NODES; i++) {
        const redisReply *m = r->element[i];

        if (m->type != REDIS_REPLY_STRING || m->len == 0 || m->len > 255 ||
            strlen(m->str) != m->len) {
            continue;
        }
        rd.fr[rd.nfr].name = dsp_xstrdup(m->str);
        rd.nfr++;
    }
}

static void fleet_version_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    char *end;

    (void)ac;
    (void)priv;
    if (r == NULL || rd.fleet_phase != 1) {
        return;
    }
    answered(&rd.cmd);
    rd.fleet_pending--;
    rd.fr_version = -1;
    if (r->type == REDIS_REPLY_STRING && r->len > 0 && r->len < 20 && r->str[0] != '-') {
        long long v = strtoll(r->str, &end, 10);
        if (*end == '\0' && v >= 0) {
            rd.fr_version = v;
        }
    }
}

static void fleet_hash_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    size_t idx = (size_t)(uintptr_t)priv;
    struct fnode *nd;

    (void)ac;
    if (r == NULL || rd.fleet_phase != 2) {
        return;
    }
    answered(&rd.cmd);
    rd.fleet_pending--;
    DSP_ASSERT(idx < rd.nfr);
    nd = &rd.fr[idx];
    if (r->type != REDIS_REPLY_ARRAY) {
        return; /* WRONGTYPE and such: listed with nothing known */
    }
    if (r->elements == 0) {
        nd->gone = 1;
        return;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];

        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            continue;
        }
        for (int f = 0; f < NF_COUNT; f++) {
            if (strcmp(k->str, node_fields[f]) == 0 && nd->f[f] == NULL) {
                /* Any bytes: cut at a NUL and at 1 KiB, escaped when rendered. */
                size_t n = DSP_MIN(strnlen(v->str, v->len), (size_t)1024);
                nd->f[f] = dsp_xmalloc(n + 1);
                memcpy(nd->f[f], v->str, n);
                nd->f[f][n] = '\0';
            }
        }
    }
}

static int fnode_cmp(const void *a, const void *b)
{
    return strcmp(((const struct fnode *)a)->name, ((const struct fnode *)b)->name);
}

static void fleet_start(uint64_t now)
{
    const char *prefix = ms_redis_namespace();
    char key[600];

    rd.fleet_wanted = 0;
    rd.fleet_next = now + FLEET_EVERY_MS;
    if (prefix == NULL) {
        return;
    }
    fleet_abort();
    rd.fr_version = -1;
    rd.fleet_phase = 1;
    snprintf(key, sizeof(key), "%snodes", prefix);
    if (redisAsyncCommand(rd.cmd.ac, fleet_set_reply, NULL, "SMEMBERS %s", key) != REDIS_OK) {
        snprintf(rd.cmd.error, sizeof(rd.cmd.error), "cannot send SMEMBERS");
        return;
    }
    sent(&rd.cmd);
    rd.fleet_pending++;
    snprintf(key, sizeof(key), "%sversion", prefix);
    if (redisAsyncCommand(rd.cmd.ac, fleet_version_reply, NULL, "GET %s", key) != REDIS_OK) {
        snprintf(rd.cmd.error, sizeof(rd.cmd.error), "cannot send GET");
        return;
    }
    sent(&rd.cmd);
    rd.fleet_pending++;
}

static void fleet_step(uint64_t now)
{
    const char *prefix = ms_redis_namespace();
    char key[600];

    if (rd.fleet_phase == 0) {
        if (rd.fleet_wanted || now >= rd.fleet_next) {
            fleet_start(now);
        }
        return;
    }
    if (rd.fleet_pending > 0 || prefix == NULL) {
        return;
    }
    if (rd.fleet_phase == 1) {
        rd.fleet_phase = 2;
        for (size_t i = 0; i < rd.nfr; i++) {
            snprintf(key, sizeof(key), "%snode:%s", prefix, rd.fr[i].name);
            if (redisAsyncCommand(rd.cmd.ac, fleet_hash_reply, (void *)(uintptr_t)i, "HGETALL %s",
                                  key) != REDIS_OK) {
                snprintf(rd.cmd.error, sizeof(rd.cmd.error), "cannot send HGETALL");
                return;
            }
            sent(&rd.cmd);
            rd.fleet_pending++;
        }
        if (rd.fleet_pending > 0) {
            return;
        }
    }
    /* Complete: prune the expired names, keep the rest. */
    {
        size_t keep = 0;

        snprintf(key, sizeof(key), "%snodes", prefix);
        for (size_t i = 0; i < rd.nfr; i++) {
            if (rd.fr[i].gone) {
                report_send(NULL, 3, (const char *[]){"SREM", key, rd.fr[i].name});
                free(rd.fr[i].name);
                for (int k = 0; k < NF_COUNT; k++) {
                    free(rd.fr[i].f[k]);
                }
                continue;
            }
            rd.fr[keep++] = rd.fr[i];
        }
        if (keep > 1) {
            qsort(rd.fr, keep, sizeof(*rd.fr), fnode_cmp);
        }
        fnodes_free(rd.fleet, rd.nfleet);
        rd.fleet = rd.fr;
        rd.nfleet = keep;
        rd.fleet_version = rd.fr_version;
        rd.fleet_read_at = dsp_wall_s();
        free(rd.fleet_env);
        rd.fleet_env = dsp_xstrdup(ms.cfg->environment);
        rd.fr = NULL;
        rd.nfr = 0;
        rd.fleet_phase = 0;
    }
}

static void on_ping(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    char what[512];

    (void)ac;
    (void)priv;
    if (r == NULL) {
        return;
    }
    answered(&rd.cmd);
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(rd.cmd.error, sizeof(rd.cmd.error), "PING: %s",
                 rds_reply_what(r, what, sizeof(what)));
    }
}

/* Is the master still answering? (An idle link only: any command in flight has its own
 * deadline.) */
static void ping_step(uint64_t now)
{
    if (rd.cmd.pending > 0) {
        rd.ping_next = now + PING_EVERY_MS;
        return;
    }
    if (now < rd.ping_next) {
        return;
    }
    rd.ping_next = now + PING_EVERY_MS;
    if (redisAsyncCommand(rd.cmd.ac, on_ping, NULL, "PING") != REDIS_OK) {
        snprintf(rd.cmd.error, sizeof(rd.cmd.error), "cannot send PING");
        return;
    }
    sent(&rd.cmd);
}

static void on_published(void *arg)
{
    (void)arg;
    rd.report_dirty = 1; /* a new generation: say so */
}

static void fleet_forget(void)
{
    fleet_abort();
    fnodes_free(rd.fleet, rd.nfleet);
    rd.fleet = NULL;
    rd.nfleet = 0;
    rd.fleet_read_at = 0;
    rd.fleet_version = -1;
    free(rd.fleet_env);
    rd.fleet_env = NULL;
    free(rd.fview);
    rd.fview = NULL;
    free(rd.report_name);
    rd.report_name = NULL;
    free(rd.report_announced);
    rd.report_announced = NULL;
    rd.report_error[0] = '\0';
}

/* ---- the tick -------------------------------------------------------------------------------- */

static const char *conn_problem(const struct conn *c, uint64_t now, char *buf, size_t n)
{
    if (c->error[0] != '\0') {
        snprintf(buf, n, "%s connection: %s", c->name, c->error);
        return buf;
    }
    if (c->ac == NULL) {
        snprintf(buf, n, "%s connection closed", c->name);
        return buf;
    }
    if (c->deadline != 0 && now >= c->deadline) {
        snprintf(buf, n, "%s connection: %s timed out", c->name,
                 c->connected ? "a command" : "connect");
        return buf;
    }
    return NULL;
}

static void on_tick(uint64_t now, void *arg)
{
    const struct ms_config *cfg = ms.cfg;
    char buf[512];
    const char *why;
    char *sig;

    if (!cfg->redis.enabled) {
        if (rd.state != LINK_DISABLED) {
            link_close();
            conn_close(&rd.sw);
            rd.sw_state = WATCH_OFF;
            rd.state = LINK_DISABLED;
            log_info("redis: disabled by the configuration");
        }
        fleet_forget();
        ms_rns_free(rd.good);
        rd.good = NULL;
        free(rd.sig);
        rd.sig = NULL;
        return;
    }
    sig = settings_sig(cfg);
    if (rd.sig == NULL || strcmp(sig, rd.sig) != 0) {
        if (rd.sig != NULL) {
            log_info("redis: connection settings or environment changed; reconnecting");
            rd.last_error[0] = '\0';
            rd.unversioned = 0; /* another namespace, maybe: its first read says */
        }
        fleet_forget();
        link_close();
        conn_close(&rd.sw);
        rd.sw_state = WATCH_OFF;
        rd.sw_idx = 0;
        free(rd.sig);
        rd.sig = sig;
        free(rd.host);
        rd.host = sentinel_mode(cfg) ? NULL : dsp_xstrdup(cfg->redis.host);
        rd.port = sentinel_mode(cfg) ? 0 : cfg->redis.port;
        rd.state = LINK_WAIT;
        rd.retry_at = now;
        rd.failures = 0;
    } else {
        free(sig);
    }
    sw_tick(now);

    if (rd.state == LINK_RESOLVING) {
        if (rd.res.ready) {
            res_done(now);
        } else if ((why = conn_problem(&rd.res, now, buf, sizeof(buf))) != NULL) {
            res_next(now, rd.res.error[0] != '\0' ? rd.res.error : why);
        }
        return;
    }
    if (rd.state == LINK_CONNECTING || rd.state == LINK_UP) {
        why = conn_problem(&rd.cmd, now, buf, sizeof(buf));
        if (why == NULL) {
            why = conn_problem(&rd.sub, now, buf, sizeof(buf));
        }
        if (why == NULL && rd.read_error[0] != '\0') {
            snprintf(buf, sizeof(buf), "reading the namespace: %s", rd.read_error);
            why = buf;
        }
        if (why != NULL) {
            link_fail(now, why);
            return;
        }
    }
    switch (rd.state) {
    case LINK_WAIT:
        if (now >= rd.retry_at) {
            if (sentinel_mode(cfg)) {
                res_begin(now);
            } else {
                link_connect(now);
            }
        }
        break;
    case LINK_CONNECTING:
        if (rd.cmd.ready && rd.sub.ready) {
            rd.state = LINK_UP;
            log_info("%s: %s; following dispatcher:%s: (events on dispatcher:%s:events)",
                     link_label(buf, sizeof(buf)), rd.ever_up ? "reconnected" : "connected",
                     cfg->environment, cfg->environment);
            rd.ever_up = 1;
            rd.failures = 0;
            rd.last_error[0] = '\0';
            /* Events may have been missed while the link was down. */
            rd.wanted = 1;
            rd.fleet_wanted = 1;
            rd.ping_next = now + PING_EVERY_MS;
            read_step(now);
        }
        break;
    case LINK_UP:
        read_step(now);
        if (rd.report_dirty || now >= rd.report_next) {
            report_write(now);
        }
        fleet_step(now);
        ping_step(now);
        break;
    default:
        break;
    }
}

/* ---- API ------------------------------------------------------------------------------------- */

struct ext_cmd {
    ms_redis_reply_fn *fn;
    void *priv;
};

static void on_ext_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct ext_cmd *e = priv;

    if (reply != NULL) {
        answered(&rd.cmd);
        if (((redisReply *)reply)->type == REDIS_REPLY_ERROR &&
            rds_reply_is_error(reply, "READONLY")) {
            snprintf(rd.cmd.error, sizeof(rd.cmd.error), "a write was refused: READONLY");
        }
    }
    e->fn(ac, reply, e->priv);
    free(e);
}

int ms_redis_up(void)
{
    return rd.state == LINK_UP && rd.cmd.ac != NULL && rd.cmd.error[0] == '\0';
}

int ms_redis_command(ms_redis_reply_fn *fn, void *priv, int argc, const char **argv,
                     const size_t *argvlen)
{
    struct ext_cmd *e;

    if (!ms_redis_up()) {
        return -1;
    }
    e = dsp_xmalloc(sizeof(*e));
    e->fn = fn;
    e->priv = priv;
    if (redisAsyncCommandArgv(rd.cmd.ac, on_ext_reply, e, argc, argv, argvlen) != REDIS_OK) {
        free(e);
        return -1;
    }
    sent(&rd.cmd);
    return 0;
}

int ms_redis_start(void)
{
    const struct ms_config *cfg = ms.cfg;
    struct ms_rns *ns;
    char err[512], where[400];
    char *errs = NULL;
    char *host = NULL;
    int port = 0, rc;

    if (!rd.tick_registered) {
        if (ms_loop_tick(on_tick, NULL) != 0) {
            log_error("redis: cannot register the master loop tick");
            return 0;
        }
        rd.rand_state = (unsigned)getpid() ^ (unsigned)dsp_now_ms();
        rd.tick_registered = 1;
        if (ms_loop_on_publish(on_published, NULL) != 0) {
            log_error("redis: cannot register the publish hook; node reports follow the "
                      "heartbeat only");
        }
    }
    if (!cfg->redis.enabled) {
        return 0;
    }
    ns = ms_rns_new(cfg->environment);
    if (sentinel_mode(cfg)) {
        snprintf(where, sizeof(where), "redis master '%s'", cfg->redis.master_name);
        if (sync_resolve(cfg, &host, &port, err, sizeof(err)) != 0) {
            log_warn("%s: no sentinel named the master (%s); starting from %s alone and "
                     "retrying in the background",
                     where, err, cfg->path);
            snprintf(rd.last_error, sizeof(rd.last_error), "no sentinel named the master (%.400s)",
                     err);
            ms_rns_free(ns);
            return 0;
        }
        snprintf(where, sizeof(where), "redis master '%s' (%s:%d)", cfg->redis.master_name, host,
                 port);
    } else {
        host = dsp_xstrdup(cfg->redis.host);
        port = cfg->redis.port;
        snprintf(where, sizeof(where), "redis %s:%d", host, port);
    }
    rc = sync_read(cfg, host, port, ns, err, sizeof(err));
    free(host);
    if (rc != 0) {
        log_warn("%s: %s; starting from %s alone and retrying in the background", where, err,
                 cfg->path);
        /* Worded like the background attempts' messages, so that the same failure is not
         * logged again by the first of them. */
        snprintf(rd.last_error, sizeof(rd.last_error), "command connection: %.480s", err);
        ms_rns_free(ns);
        return 0;
    }
    ms_rns_sort(ns);
    if (!versioned(ns)) {
        ms_rns_free(ns);
        return 0;
    }
    if (ms_rns_merge(ms.cfg, ns, 0, &errs) != 0) {
        report_rejected(ns, errs);
        free(errs);
        ms_rns_free(ns);
        return 0;
    }
    log_info("redis %s*: version %lld, %zu services, %zu routes merged with %s", ns->prefix,
             ns->version, count_redis_services(ms.cfg), count_redis_routes(ms.cfg), cfg->path);
    rd.good = ns;
    rd.synced_at = dsp_wall_s();
    return 0;
}

int ms_redis_merge_into(struct ms_config *ncfg, char **errs)
{
    char prefix[512];

    *errs = NULL;
    if (!ncfg->redis.enabled || rd.good == NULL) {
        return 0;
    }
    snprintf(prefix, sizeof(prefix), "dispatcher:%s:", ncfg->environment);
    if (strcmp(prefix, rd.good->prefix) != 0) {
        return 0; /* another namespace: read once the reload is in */
    }
    return ms_rns_merge(ncfg, rd.good, 0, errs);
}

/* A clean stop takes this node out of the fleet at once rather than leave its report to go
 * silent and expire: best effort, the commands are written only as far as the socket takes them
 * without waiting. */
static void report_remove(void)
{
    const char *prefix = ms_redis_namespace();
    char key[600], set[600], chan[600];
    int done = 0;

    if (rd.state != LINK_UP || rd.cmd.ac == NULL || rd.report_name == NULL || prefix == NULL) {
        return;
    }
    snprintf(key, sizeof(key), "%snode:%s", prefix, rd.report_name);
    snprintf(set, sizeof(set), "%snodes", prefix);
    snprintf(chan, sizeof(chan), "%snode-events", prefix);
    report_send(NULL, 2, (const char *[]){"DEL", key});
    report_send(NULL, 3, (const char *[]){"SREM", set, rd.report_name});
    report_send(NULL, 3, (const char *[]){"PUBLISH", chan, rd.report_name});
    for (int i = 0; i < 64 && !done && rd.cmd.ac != NULL; i++) {
        if (redisBufferWrite(&rd.cmd.ac->c, &done) != REDIS_OK) {
            break;
        }
    }
}

void ms_redis_stop(void)
{
    report_remove();
    link_close();
    fleet_forget();
    conn_close(&rd.sw);
    rd.sw_state = WATCH_OFF;
    ms_rns_free(rd.good);
    rd.good = NULL;
    free(rd.sig);
    rd.sig = NULL;
    free(rd.host);
    rd.host = NULL;
    rd.state = LINK_DISABLED;
}

const char *ms_redis_state(void)
{
    if (ms.cfg == NULL || !ms.cfg->redis.enabled) {
        return "disabled";
    }
    if (rd.state == LINK_UP) {
        return "connected";
    }
    if (rd.last_error[0] != '\0') {
        snprintf(rd.state_text, sizeof(rd.state_text), "error: %s", rd.last_error);
        return rd.state_text;
    }
    return "connecting";
}

int ms_redis_in_generation(void)
{
    return ms.cfg != NULL && ms.cfg->redis.merged;
}

uint64_t ms_redis_synced_at(void)
{
    return rd.synced_at;
}

const char *ms_redis_rejected(void)
{
    char what[128];

    if (ms.cfg == NULL || !ms.cfg->redis.enabled) {
        return NULL;
    }
    if (rd.unversioned) {
        snprintf(rd.problem, sizeof(rd.problem),
                 "no version key in the namespace (a Redis that restarted without its data?): "
                 "not applied; serving %s",
                 serving_what(what, sizeof(what)));
        return rd.problem;
    }
    if (rd.reject_text[0] != '\0') {
        snprintf(rd.problem, sizeof(rd.problem), "%s; serving %s", rd.reject_text,
                 serving_what(what, sizeof(what)));
        return rd.problem;
    }
    return NULL;
}

int ms_redis_version(long long *version)
{
    if (ms.cfg == NULL || !ms.cfg->redis.enabled || rd.good == NULL || !ms.cfg->redis.merged) {
        return 0;
    }
    *version = rd.good->version;
    return 1;
}

const char *ms_redis_namespace(void)
{
    static char buf[512];

    if (ms.cfg == NULL || !ms.cfg->redis.enabled) {
        return NULL;
    }
    snprintf(buf, sizeof(buf), "dispatcher:%s:", ms.cfg->environment);
    return buf;
}

static long long fleet_num(const char *v)
{
    char *end;
    long long n;

    if (v == NULL || *v < '0' || *v > '9') {
        return -1;
    }
    errno = 0;
    n = strtoll(v, &end, 10);
    return *end == '\0' && errno == 0 ? n : -1;
}

const struct adm_fleet *ms_redis_fleet(void)
{
    struct adm_fleet *f = &rd.fleet_view;
    int current;

    if (ms.cfg == NULL || !ms.cfg->redis.enabled) {
        return NULL;
    }
    current = rd.fleet_env != NULL && strcmp(rd.fleet_env, ms.cfg->environment) == 0;
    free(rd.fview);
    rd.fview = NULL;
    memset(f, 0, sizeof(*f));
    f->environment = ms.cfg->environment;
    f->self = ms.cfg->node_name;
    f->version = current ? rd.fleet_version : -1;
    f->read_at = current ? rd.fleet_read_at : 0;
    if (!current || rd.nfleet == 0) {
        return f;
    }
    rd.fview = dsp_xcalloc(rd.nfleet, sizeof(*rd.fview));
    for (size_t i = 0; i < rd.nfleet; i++) {
        const struct fnode *src = &rd.fleet[i];
        struct adm_fleet_node *nd = &rd.fview[i];

        nd->name = src->name;
        nd->status = src->f[NF_STATUS] ? src->f[NF_STATUS] : "";
        nd->error = src->f[NF_ERROR] ? src->f[NF_ERROR] : "";
        nd->source_digest = src->f[NF_SOURCE_DIGEST] ? src->f[NF_SOURCE_DIGEST] : "";
        nd->version = fleet_num(src->f[NF_VERSION]);
        nd->generation = fleet_num(src->f[NF_GENERATION]);
        nd->applied_at = fleet_num(src->f[NF_APPLIED_AT]);
        nd->updated_at = fleet_num(src->f[NF_UPDATED_AT]);
        nd->pid = fleet_num(src->f[NF_PID]);
    }
    f->nodes = rd.fview;
    f->n = rd.nfleet;
    return f;
}

void ms_redis_file_outcome(const char *errs)
{
    if (errs == NULL) {
        rd.file_error[0] = '\0';
    } else {
        snprintf(rd.file_error, sizeof(rd.file_error), "reload refused: %.*s",
                 (int)DSP_MIN(strcspn(errs, "\n"), (size_t)360), errs);
    }
    rd.report_dirty = 1;
}

const char *ms_redis_master(void)
{
    static char buf[600];

    if (ms.cfg == NULL || !ms.cfg->redis.enabled || !sentinel_mode(ms.cfg)) {
        return NULL;
    }
    if (rd.host == NULL) {
        snprintf(buf, sizeof(buf), "%s (not known yet)", ms.cfg->redis.master_name);
    } else {
        snprintf(buf, sizeof(buf), "%s at %s:%d", ms.cfg->redis.master_name, rd.host, rd.port);
    }
    return buf;
}
