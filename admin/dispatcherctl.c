/* dispatcher: dispatcherctl, the admin socket client. Sends one command, prints the answer as
 * aligned tables (or the raw JSON line with --json). Exit codes per SPEC "Programs": 0 on
 * "ok":true, 1 on an error answer, 2 when the socket cannot be reached or does not answer. */
#include <errno.h>
#include <libconfig.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "admin/adm_buf.h"
#include "admin/adm_json.h"
#include "common/conffile.h"
#include "common/dsp.h"

#define EXIT_OK      0
#define EXIT_ANSWER  1
#define EXIT_CONNECT 2

#define DEFAULT_SOCKET "/run/dispatcher/admin.sock"
#define TIMEOUT_MS     60000

static void usage(FILE *out)
{
    fprintf(out,
            "usage: dispatcherctl [-s SOCKET] [-c CONFIG] [--json] COMMAND ...\n"
            "       dispatcherctl -V | -h\n"
            "  -s SOCKET   admin socket (default: admin.socket of ./dispatcher.conf, else of\n"
            "              /etc/dispatcher/dispatcher.conf, else " DEFAULT_SOCKET ")\n"
            "  -c CONFIG   read admin.socket from this configuration file\n"
            "  --json      print the raw JSON answer\n"
            "  -V          print the version and exit\n"
            "commands: help, show health|instances|routes|workers|stats|certs|fleet,\n"
            "          reload, disable backend SERVICE ADDRESS, enable backend SERVICE ADDRESS,\n"
            "          reset circuit SERVICE ADDRESS, trip circuit SERVICE ADDRESS\n");
}

/* admin.socket of config file <conf>, resolved against the file's folder, into <out>.
 * Returns 0, or -1 when the file cannot be read or has no admin.socket. */
static int socket_from_config(const char *conf, char *out, size_t outlen)
{
    config_t cf;
    const char *s = NULL;
    char dir[PATH_MAX], err[512];
    const char *incdir = NULL, *efile;
    unsigned eline;
    struct conf_src src;
    int rc = -1;

    if (access(conf, R_OK) != 0) {
        return -1;
    }
    config_init(&cf);
    /* Like the master: a FIFO or device named by the config or an @include never blocks us. */
    if (realpath(conf, dir) != NULL) {
        char *slash = strrchr(dir, '/');
        if (slash != NULL) {
            *slash = '\0';
        }
        incdir = dir;
    }
    if (conf_read(&cf, conf, incdir, &src, err, sizeof(err), &efile, &eline) == 0 &&
        config_lookup_string(&cf, "admin.socket", &s) == CONFIG_TRUE && s[0] != '\0') {
        if (s[0] == '/') {
            rc = snprintf(out, outlen, "%s", s) < (int)outlen ? 0 : -1;
        } else if (realpath(conf, dir) != NULL) {
            char *slash = strrchr(dir, '/');
            if (slash != NULL) {
                *slash = '\0';
            }
            rc = snprintf(out, outlen, "%s/%s", dir, s) < (int)outlen ? 0 : -1;
        }
    }
    config_destroy(&cf);
    conf_src_free(&src);
    return rc;
}

/* Send <cmd> and read one answer line into a heap buffer. Returns the length, or -1 with a
 * message printed (exit 2). */
static long talk(const char *path, const char *cmd, char **answer)
{
    struct sockaddr_un sa;
    size_t cap = 65536, len = 0;
    char *buf;
    size_t clen = strlen(cmd);
    int fd;

    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "dispatcherctl: socket path too long: %s\n", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
        fprintf(stderr, "dispatcherctl: cannot connect to %s: %s\n", path, strerror(errno));
        if (fd != -1) {
            close(fd);
        }
        return -1;
    }
    for (size_t off = 0; off < clen + 1;) {
        const char *p = off < clen ? cmd + off : "\n";
        size_t n = off < clen ? clen - off : 1;
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            /* The server may have answered (a refusal) and closed before reading: read it. */
            break;
        }
        off += (size_t)w;
    }
    shutdown(fd, SHUT_WR);
    buf = dsp_xmalloc(cap);
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t r;
        char *nl;
        int pr = poll(&pfd, 1, TIMEOUT_MS);

        if (pr == 0) {
            fprintf(stderr, "dispatcherctl: no answer from %s within %d s\n", path,
                    TIMEOUT_MS / 1000);
            break;
        }
        if (pr < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (len + 1 >= cap) {
            if (cap >= ADM_BUF_LIMIT) { /* more than the server ever sends */
                fprintf(stderr, "dispatcherctl: answer too large\n");
                break;
            }
            cap *= 2;
            buf = dsp_xrealloc(buf, cap);
        }
        r = recv(fd, buf + len, cap - len - 1, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            if (r < 0) {
                fprintf(stderr, "dispatcherctl: read from %s failed: %s\n", path, strerror(errno));
            } else {
                fprintf(stderr, "dispatcherctl: %s closed the connection without an answer\n",
                        path);
            }
            break;
        }
        nl = memchr(buf + len, '\n', (size_t)r);
        len += (size_t)r;
        if (nl != NULL) {
            close(fd);
            len = (size_t)(nl - buf);
            buf[len] = '\0';
            *answer = buf;
            return (long)len;
        }
    }
    close(fd);
    free(buf);
    return -1;
}

/* ---- tables --------------------------------------------------------------------------------- */
#define MAX_COLS 16

struct table {
    int ncols;
    const char *head[MAX_COLS];
    int right[MAX_COLS]; /* numbers align right */
    char ***rows;
    size_t nrows, cap;
};

static void t_cols(struct table *t, const char *spec)
{
    /* "NAME,>REQUESTS,..." : '>' marks a right-aligned column. */
    char *copy = dsp_xstrdup(spec), *save = NULL;

    t->ncols = 0;
    for (char *tok = strtok_r(copy, ",", &save); tok && t->ncols < MAX_COLS;
         tok = strtok_r(NULL, ",", &save)) {
        t->right[t->ncols] = tok[0] == '>';
        t->head[t->ncols] = dsp_xstrdup(tok[0] == '>' ? tok + 1 : tok);
        t->ncols++;
    }
    free(copy);
}

/* A printable copy of <s>: control bytes (a hostile Host header, say) become '?'. */
static char *clean(const char *s)
{
    char *o = dsp_xstrdup(s);

    for (char *p = o; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            *p = '?';
        }
    }
    return o;
}

/* Each line of <text> on a line of its own, "dispatcherctl: <prefix>" before it, control bytes
 * made visible. */
static void print_lines(FILE *out, const char *prefix, const char *text)
{
    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);
        if (n > 0) {
            char *line = dsp_xmalloc(n + 1), *c;
            memcpy(line, p, n);
            line[n] = '\0';
            c = clean(line);
            fprintf(out, "dispatcherctl: %s%s\n", prefix, c);
            free(c);
            free(line);
        }
        p = nl != NULL ? nl + 1 : NULL;
    }
}

static char **t_row(struct table *t)
{
    if (t->nrows == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->rows = dsp_xrealloc(t->rows, t->cap * sizeof(*t->rows));
    }
    t->rows[t->nrows] = dsp_xcalloc((size_t)t->ncols, sizeof(char *));
    return t->rows[t->nrows++];
}

static void t_set(char **row, int col, const char *s)
{
    free(row[col]);
    row[col] = clean(s);
}

static void t_print(struct table *t, const char *indent)
{
    size_t w[MAX_COLS];

    for (int c = 0; c < t->ncols; c++) {
        w[c] = strlen(t->head[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t l = t->rows[r][c] ? strlen(t->rows[r][c]) : 1;
            if (l > w[c]) {
                w[c] = l;
            }
        }
    }
    for (size_t r = 0; r <= t->nrows; r++) {
        fputs(indent, stdout);
        for (int c = 0; c < t->ncols; c++) {
            const char *s = r == 0 ? t->head[c] : (t->rows[r - 1][c] ? t->rows[r - 1][c] : "-");
            int last = c == t->ncols - 1;
            if (t->right[c]) {
                printf("%*s%s", (int)w[c], s, last ? "" : "  ");
            } else if (last) {
                printf("%s", s);
            } else {
                printf("%-*s  ", (int)w[c], s);
            }
        }
        putchar('\n');
    }
    for (size_t r = 0; r < t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++) {
            free(t->rows[r][c]);
        }
        free(t->rows[r]);
    }
    for (int c = 0; c < t->ncols; c++) {
        free((void *)(uintptr_t)t->head[c]);
    }
    free(t->rows);
    memset(t, 0, sizeof(*t));
}

static const char *num(const struct adm_jval *o, const char *key)
{
    const struct adm_jval *v = adm_json_get(o, key);

    if (v == NULL) {
        return "-";
    }
    if (v->type == ADM_J_NUM || v->type == ADM_J_STR) {
        return v->str;
    }
    if (v->type == ADM_J_BOOL) {
        return v->boolean ? "yes" : "no";
    }
    return "-";
}

static void latency_cols(char **row, int col, const struct adm_jval *o)
{
    const struct adm_jval *l = adm_json_get(o, "latency_ms");

    t_set(row, col, num(l, "p50"));
    t_set(row, col + 1, num(l, "p95"));
    t_set(row, col + 2, num(l, "p99"));
}

static void duration(char *buf, size_t n, double s)
{
    unsigned long long t = (unsigned long long)s;

    if (t >= 86400) {
        snprintf(buf, n, "%llud %lluh %llum", t / 86400, t % 86400 / 3600, t % 3600 / 60);
    } else if (t >= 3600) {
        snprintf(buf, n, "%lluh %llum %llus", t / 3600, t % 3600 / 60, t % 60);
    } else if (t >= 60) {
        snprintf(buf, n, "%llum %llus", t / 60, t % 60);
    } else {
        snprintf(buf, n, "%llus", t);
    }
}

static void print_health(const struct adm_jval *j)
{
    const struct adm_jval *w = adm_json_get(j, "workers");
    const struct adm_jval *cf = adm_json_get(j, "config");
    char up[64], when[64] = "-";
    time_t la = (time_t)adm_json_num(cf, "loaded_at", 0);
    struct tm tm;

    duration(up, sizeof(up), adm_json_num(j, "uptime_s", 0));
    if (la > 0 && gmtime_r(&la, &tm) != NULL) {
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
    }
    printf("status      %s", adm_json_str(j, "status"));
    if (adm_json_get(j, "reason") != NULL) {
        char *r = clean(adm_json_str(j, "reason"));
        printf(" (%s)", r);
        free(r);
    }
    printf("\nuptime      %s\n", up);
    printf("memory      %s MB\n", num(j, "memory_mb"));
    printf("workers     %s/%s alive, %s restarts\n", num(w, "alive"), num(w, "configured"),
           num(w, "restarts"));
    printf("instances   %s\n", num(j, "instances"));
    printf("config      generation %s, loaded %s, source %s\n", num(cf, "generation"), when,
           adm_json_str(cf, "source"));
    if (adm_json_get(cf, "redis") != NULL) {
        printf("redis       %s", adm_json_str(cf, "redis"));
        if (adm_json_get(cf, "redis_master") != NULL) {
            char *m = clean(adm_json_str(cf, "redis_master"));
            printf(", master %s", m);
            free(m);
        }
        if (adm_json_get(cf, "redis_version") != NULL) {
            printf(", data version %s", num(cf, "redis_version"));
        }
        printf("\n");
    }
    if (adm_json_get(cf, "redis_problem") != NULL) {
        char *r = clean(adm_json_str(cf, "redis_problem"));
        printf("            %s\n", r);
        free(r);
    }
    if (adm_json_get(j, "rate_limit") != NULL &&
        strcmp(adm_json_str(j, "rate_limit"), "off") != 0) {
        printf("rate limits %s\n", adm_json_str(j, "rate_limit"));
    }
}

/* The backend names of a service and how their resolution stands (master/ms_dns.h). */
static void print_resolve(const struct adm_jval *names)
{
    struct table t = {0};

    if (names == NULL || names->type != ADM_J_ARR || names->n == 0) {
        return;
    }
    t_cols(&t, "NAME,RESOLVES,>TTL ms,>FAILS,ADDRESSES,ERROR");
    for (size_t k = 0; k < names->n; k++) {
        const struct adm_jval *r = &names->items[k];
        const struct adm_jval *a = adm_json_get(r, "addresses");
        char al[1024] = "", **row = t_row(&t);
        size_t an = 0;

        for (size_t m = 0; a != NULL && a->type == ADM_J_ARR && m < a->n; m++) {
            if (a->items[m].type == ADM_J_STR && an < sizeof(al) - 1) {
                an += (size_t)snprintf(al + an, sizeof(al) - an, "%s%s", m ? "," : "",
                                       a->items[m].str);
                if (an >= sizeof(al)) {
                    an = sizeof(al) - 1;
                }
            }
        }
        t_set(row, 0, adm_json_str(r, "name"));
        t_set(row, 1, adm_json_str(r, "status"));
        t_set(row, 2, num(r, "ttl_ms"));
        t_set(row, 3, num(r, "failures"));
        t_set(row, 4, an ? al : "-");
        t_set(row, 5,
              adm_json_get(r, "error") != NULL && adm_json_get(r, "error")->type == ADM_J_STR
                  ? adm_json_str(r, "error")
                  : "-");
    }
    t_print(&t, "  ");
}

static void print_instances(const struct adm_jval *j)
{
    const struct adm_jval *arr = adm_json_get(j, "instances");

    for (size_t i = 0; arr != NULL && arr->type == ADM_J_ARR && i < arr->n; i++) {
        const struct adm_jval *s = &arr->items[i];
        const struct adm_jval *hosts = adm_json_get(s, "hosts");
        const struct adm_jval *bes = adm_json_get(s, "backends");
        struct table t = {0};
        char **row;
        char hl[1024] = "";
        size_t hn = 0;

        for (size_t k = 0; hosts != NULL && hosts->type == ADM_J_ARR && k < hosts->n; k++) {
            if (hosts->items[k].type == ADM_J_STR && hn < sizeof(hl) - 1) {
                hn += (size_t)snprintf(hl + hn, sizeof(hl) - hn, "%s%s", k ? "," : "",
                                       hosts->items[k].str);
                if (hn >= sizeof(hl)) {
                    hn = sizeof(hl) - 1;
                }
            }
        }
        if (i > 0) {
            putchar('\n');
        }
        t_cols(&t, "SERVICE,BALANCE,>REQUESTS,>ERRORS,>RPS,>P50 ms,>P95 ms,>P99 ms,HOSTS");
        row = t_row(&t);
        t_set(row, 0, adm_json_str(s, "name"));
        t_set(row, 1, adm_json_str(s, "balance"));
        t_set(row, 2, num(s, "requests"));
        t_set(row, 3, num(s, "errors"));
        t_set(row, 4, num(s, "rps"));
        latency_cols(row, 5, s);
        t_set(row, 8, hn ? hl : "-");
        t_print(&t, "");
        print_resolve(adm_json_get(s, "resolve"));
        if (bes == NULL || bes->type != ADM_J_ARR || bes->n == 0) {
            printf("  (no backends)\n");
            continue;
        }
        t_cols(&t, "BACKEND,STATE,CIRCUIT,>ACTIVE,>REQUESTS,>ERRORS,>FAILS,>P50 ms,>P95 ms,"
                   ">P99 ms");
        for (size_t k = 0; k < bes->n; k++) {
            const struct adm_jval *b = &bes->items[k];
            row = t_row(&t);
            t_set(row, 0, adm_json_str(b, "address"));
            t_set(row, 1, adm_json_str(b, "state"));
            {
                const struct adm_jval *m = adm_json_get(b, "circuit_manual");
                char cs[64];
                /* A circuit tripped by hand says so: only `reset circuit` closes it. */
                snprintf(cs, sizeof(cs), "%s%s", adm_json_str(b, "circuit"),
                         m != NULL && m->type == ADM_J_BOOL && m->boolean ? " (manual)" : "");
                t_set(row, 2, cs);
            }
            t_set(row, 3, num(b, "active_connections"));
            t_set(row, 4, num(b, "requests"));
            t_set(row, 5, num(b, "errors"));
            t_set(row, 6, num(b, "consecutive_failures"));
            latency_cols(row, 7, b);
        }
        t_print(&t, "  ");
    }
}

/* A split route's SERVICE cell: "shop-v1=95,shop-v2=5" and " (sticky)". */
static void split_cell(char **row, int col, const struct adm_jval *r)
{
    const struct adm_jval *sp = adm_json_get(r, "split");
    const struct adm_jval *st = adm_json_get(r, "sticky");
    char cell[1024];
    size_t n = 0;

    if (sp == NULL || sp->type != ADM_J_ARR) {
        return;
    }
    cell[0] = '\0';
    for (size_t k = 0; k < sp->n && n < sizeof(cell) - 1; k++) {
        n += (size_t)snprintf(cell + n, sizeof(cell) - n, "%s%s=%s", k ? "," : "",
                              adm_json_str(&sp->items[k], "service"), num(&sp->items[k], "weight"));
    }
    if (n < sizeof(cell) - 1 && st != NULL && st->type == ADM_J_BOOL && st->boolean) {
        snprintf(cell + n, sizeof(cell) - n, " (sticky)");
    }
    t_set(row, col, cell);
}

static void print_routes(const struct adm_jval *j)
{
    const struct adm_jval *arr = adm_json_get(j, "routes");
    struct table t = {0};

    t_cols(&t, "HOST,PATH,METHODS,>PRIORITY,SERVICE,SOURCE,MIDDLEWARES");
    for (size_t i = 0; arr != NULL && arr->type == ADM_J_ARR && i < arr->n; i++) {
        const struct adm_jval *r = &arr->items[i];
        const struct adm_jval *m = adm_json_get(r, "methods");
        char ml[256] = "";
        size_t mn = 0;
        char **row = t_row(&t);

        for (size_t k = 0; m != NULL && m->type == ADM_J_ARR && k < m->n; k++) {
            if (m->items[k].type == ADM_J_STR && mn < sizeof(ml) - 1) {
                mn += (size_t)snprintf(ml + mn, sizeof(ml) - mn, "%s%s", k ? "," : "",
                                       m->items[k].str);
                if (mn >= sizeof(ml)) {
                    mn = sizeof(ml) - 1;
                }
            }
        }
        t_set(row, 0, adm_json_str(r, "host"));
        t_set(row, 1, adm_json_str(r, "path"));
        t_set(row, 2, mn ? ml : "*");
        t_set(row, 3, num(r, "priority"));
        t_set(row, 4, adm_json_str(r, "service"));
        split_cell(row, 4, r);
        t_set(row, 5, adm_json_str(r, "source"));
        m = adm_json_get(r, "middlewares");
        ml[0] = '\0';
        mn = 0;
        for (size_t k = 0; m != NULL && m->type == ADM_J_ARR && k < m->n; k++) {
            if (m->items[k].type == ADM_J_STR && mn < sizeof(ml) - 1) {
                mn += (size_t)snprintf(ml + mn, sizeof(ml) - mn, "%s%s", k ? "," : "",
                                       m->items[k].str);
                mn = mn >= sizeof(ml) ? sizeof(ml) - 1 : mn;
            }
        }
        t_set(row, 6, mn ? ml : "-");
    }
    t_print(&t, "");
}

static void print_workers(const struct adm_jval *j)
{
    const struct adm_jval *arr = adm_json_get(j, "workers");
    struct table t = {0};

    printf("workers %s/%s alive, generation %s", num(j, "alive"), num(j, "configured"),
           num(j, "generation"));
    if (adm_json_num(j, "retiring", 0) > 0) {
        printf(", %s retiring", num(j, "retiring"));
    }
    printf("\n");
    t_cols(&t, ">SLOT,>PID,ALIVE,>RESTARTS,UPTIME,>GEN,>CONNS,>REQUESTS,>HEARTBEAT ms");
    for (size_t i = 0; arr != NULL && arr->type == ADM_J_ARR && i < arr->n; i++) {
        const struct adm_jval *w = &arr->items[i];
        char **row = t_row(&t);
        char up[64];

        duration(up, sizeof(up), adm_json_num(w, "uptime_s", 0));
        t_set(row, 0, num(w, "slot"));
        t_set(row, 1, num(w, "pid"));
        {
            const struct adm_jval *rt = adm_json_get(w, "retiring");
            int retiring = rt != NULL && rt->type == ADM_J_BOOL && rt->boolean;
            const struct adm_jval *al = adm_json_get(w, "alive");
            int alive = al != NULL && al->type == ADM_J_BOOL && al->boolean;
            t_set(row, 2, !retiring ? num(w, "alive") : alive ? "retiring" : "retired");
        }
        t_set(row, 3, num(w, "restarts"));
        t_set(row, 4, up);
        t_set(row, 5, num(w, "generation"));
        t_set(row, 6, num(w, "connections"));
        t_set(row, 7, num(w, "requests"));
        t_set(row, 8, num(w, "heartbeat_age_ms"));
    }
    t_print(&t, "");
}

static void status_cols(char **row, int col, const struct adm_jval *o)
{
    const struct adm_jval *s = adm_json_get(o, "status");

    t_set(row, col, num(s, "2xx"));
    t_set(row, col + 1, num(s, "3xx"));
    t_set(row, col + 2, num(s, "4xx"));
    t_set(row, col + 3, num(s, "5xx"));
}

static void print_stats(const struct adm_jval *j)
{
    const struct adm_jval *arr = adm_json_get(j, "services");
    struct table t = {0};
    char **row;

    printf("generation %s, %s reload failures, %s client connections, %s active backend "
           "connections, %s backend TLS verification failures\n",
           num(j, "generation"), num(j, "reload_failures"), num(j, "client_connections"),
           num(j, "active_connections"), num(j, "tls_verify_failures"));
    {
        const struct adm_jval *bp = adm_json_get(j, "requests_by_proto");
        const struct adm_jval *ab = adm_json_get(j, "h2_abuse");
        if (bp != NULL) {
            printf("requests by protocol: HTTP/1 %s, HTTP/2 %s\n", num(bp, "http1"), num(bp, "h2"));
        }
        if (ab != NULL && ab->type == ADM_J_OBJ) {
            printf("HTTP/2 abuse stopped:");
            for (size_t k = 0; k < ab->n; k++) {
                printf(" %s %s", ab->keys[k], num(ab, ab->keys[k]));
            }
            printf("\n");
        }
        printf("\n");
    }
    t_cols(&t, "SERVICE,>REQUESTS,>ERRORS,>RPS,>2xx,>3xx,>4xx,>5xx,>P50 ms,>P95 ms,>P99 ms");
    for (size_t i = 0; arr != NULL && arr->type == ADM_J_ARR && i < arr->n; i++) {
        const struct adm_jval *s = &arr->items[i];
        row = t_row(&t);
        t_set(row, 0, adm_json_str(s, "name"));
        t_set(row, 1, num(s, "requests"));
        t_set(row, 2, num(s, "errors"));
        t_set(row, 3, num(s, "rps"));
        status_cols(row, 4, s);
        latency_cols(row, 8, s);
    }
    row = t_row(&t);
    t_set(row, 0, "(all)");
    t_set(row, 1, num(j, "requests"));
    t_set(row, 2, num(j, "errors"));
    t_set(row, 3, num(j, "rps"));
    status_cols(row, 4, j);
    latency_cols(row, 8, j);
    t_print(&t, "");
}

/* The strings of array member <key> of <o>, comma-separated, into <buf>. */
static const char *joined(const struct adm_jval *o, const char *key, char *buf, size_t n)
{
    const struct adm_jval *a = adm_json_get(o, key);
    size_t len = 0;

    buf[0] = '\0';
    for (size_t k = 0; a != NULL && a->type == ADM_J_ARR && k < a->n && len < n - 1; k++) {
        if (a->items[k].type == ADM_J_STR) {
            len += (size_t)snprintf(buf + len, n - len, "%s%s", len ? "," : "", a->items[k].str);
        }
    }
    return buf[0] ? buf : "-";
}

static void print_certs(const struct adm_jval *j)
{
    const struct adm_jval *arr = adm_json_get(j, "certs");
    struct table t = {0};

    t_cols(&t, "SUBJECT,NAMES,NOT_AFTER,>DAYS_LEFT,FLAGS,SOURCE,PATH");
    for (size_t i = 0; arr != NULL && arr->type == ADM_J_ARR && i < arr->n; i++) {
        const struct adm_jval *c = &arr->items[i];
        char **row = t_row(&t);
        char names[2048], date[32] = "-", flags[64] = "";
        time_t na = (time_t)adm_json_num(c, "not_after", 0);
        struct tm tm;
        const struct adm_jval *f;

        if (na > 0 && gmtime_r(&na, &tm) != NULL) {
            strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
        }
        if ((f = adm_json_get(c, "expired")) != NULL && f->type == ADM_J_BOOL && f->boolean) {
            strcat(flags, "expired,");
        }
        if ((f = adm_json_get(c, "default")) != NULL && f->type == ADM_J_BOOL && f->boolean) {
            strcat(flags, "default,");
        }
        if ((f = adm_json_get(c, "self_signed")) != NULL && f->type == ADM_J_BOOL && f->boolean) {
            strcat(flags, "self-signed,");
        }
        if ((f = adm_json_get(c, "ocsp_stapled")) != NULL && f->type == ADM_J_BOOL && f->boolean) {
            strcat(flags, "ocsp,");
        }
        if (flags[0] != '\0') {
            flags[strlen(flags) - 1] = '\0';
        }
        t_set(row, 0, adm_json_str(c, "subject"));
        t_set(row, 1, joined(c, "names", names, sizeof(names)));
        t_set(row, 2, date);
        t_set(row, 3, num(c, "days_left"));
        t_set(row, 4, flags[0] ? flags : "-");
        t_set(row, 5, adm_json_str(c, "source"));
        t_set(row, 6, adm_json_str(c, "path")[0] ? adm_json_str(c, "path") : "-");
    }
    t_print(&t, "");
}

/* Any other answer: one "key  value" line per scalar member, arrays of objects as tables of
 * their scalar members. */
static void print_generic(const struct adm_jval *j)
{
    for (size_t i = 0; i < j->n; i++) {
        const struct adm_jval *v = &j->items[i];

        if (strcmp(j->keys[i], "ok") == 0) {
            continue;
        }
        if (v->type == ADM_J_ARR) {
            int objects = v->n > 0 && v->items[0].type == ADM_J_OBJ;
            if (!objects) {
                printf("%s:", j->keys[i]);
                for (size_t k = 0; k < v->n; k++) {
                    char *s = clean(v->items[k].str ? v->items[k].str : "-");
                    printf("%s%s", k ? "\n  " : "\n  ", s);
                    free(s);
                }
                printf("%s\n", v->n ? "" : " (none)");
                continue;
            }
            {
                struct table t = {0};
                const struct adm_jval *o0 = &v->items[0];
                char spec[1024] = "";
                size_t sn = 0;
                for (size_t k = 0; k < o0->n && k < MAX_COLS; k++) {
                    sn += (size_t)snprintf(spec + sn, sizeof(spec) - sn, "%s%s", k ? "," : "",
                                           o0->keys[k]);
                    if (sn >= sizeof(spec)) {
                        break;
                    }
                }
                for (char *p = spec; *p; p++) {
                    if (*p >= 'a' && *p <= 'z') {
                        *p = (char)(*p - 'a' + 'A');
                    }
                }
                t_cols(&t, spec);
                for (size_t r = 0; r < v->n; r++) {
                    char **row = t_row(&t);
                    for (int c = 0; c < t.ncols && (size_t)c < o0->n; c++) {
                        t_set(row, c, num(&v->items[r], o0->keys[c]));
                    }
                }
                t_print(&t, "");
            }
        } else if (v->type != ADM_J_OBJ) {
            char *s = clean(v->type == ADM_J_NULL ? "-" : num(j, j->keys[i]));
            printf("%-12s %s\n", j->keys[i], s);
            free(s);
        }
    }
}

int main(int argc, char **argv)
{
    const char *sock = NULL, *conf = NULL;
    char path[PATH_MAX], cmd[8192], err[256];
    size_t cl = 0;
    int json = 0, i, rc;
    char *answer = NULL;
    long alen;
    struct adm_jval *j;
    const struct adm_jval *ok;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
            sock = argv[++i];
        } else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            conf = argv[++i];
        } else if (strcmp(argv[i], "--json") == 0 || strcmp(argv[i], "-j") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
            printf("dispatcherctl %s\n", DSP_VERSION);
            return EXIT_OK;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        } else if (argv[i][0] == '-') {
            usage(stderr);
            return EXIT_ANSWER;
        } else {
            break;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_ANSWER;
    }
    for (; i < argc; i++) {
        int n = snprintf(cmd + cl, sizeof(cmd) - cl, "%s%s", cl ? " " : "", argv[i]);
        if (n < 0 || (size_t)n >= sizeof(cmd) - cl) {
            fprintf(stderr, "dispatcherctl: command too long\n");
            return EXIT_ANSWER;
        }
        cl += (size_t)n;
    }
    if (sock == NULL) {
        if (conf != NULL) {
            if (access(conf, R_OK) != 0) {
                fprintf(stderr, "dispatcherctl: cannot read %s: %s\n", conf, strerror(errno));
                return EXIT_CONNECT;
            }
            if (socket_from_config(conf, path, sizeof(path)) != 0) {
                fprintf(stderr,
                        "dispatcherctl: no admin.socket in %s (or the file does not "
                        "parse: check it with dispatcher-master -t -c %s)\n",
                        conf, conf);
                return EXIT_CONNECT;
            }
            sock = path;
        } else if (socket_from_config("dispatcher.conf", path, sizeof(path)) == 0 ||
                   socket_from_config("/etc/dispatcher/dispatcher.conf", path, sizeof(path)) == 0) {
            sock = path;
        } else {
            sock = DEFAULT_SOCKET;
        }
    }
    alen = talk(sock, cmd, &answer);
    if (alen < 0) {
        return EXIT_CONNECT;
    }
    j = adm_json_parse(answer, (size_t)alen, err, sizeof(err));
    ok = adm_json_get(j, "ok");
    if (j == NULL || ok == NULL || ok->type != ADM_J_BOOL) {
        fprintf(stderr, "dispatcherctl: unreadable answer from %s (%s)\n", sock,
                j ? "no \"ok\" member" : err);
        adm_json_free(j);
        free(answer);
        return EXIT_CONNECT;
    }
    rc = ok->boolean ? EXIT_OK : EXIT_ANSWER;
    if (!json) {
        /* What a reload warned about (an expired certificate, a setting that needs a
         * restart), whether it went through or not: on stderr, one per line. */
        const struct adm_jval *w = adm_json_get(j, "warnings");
        for (size_t k = 0; w != NULL && w->type == ADM_J_ARR && k < w->n; k++) {
            if (w->items[k].type == ADM_J_STR) {
                print_lines(stderr, "warning: ", w->items[k].str);
            }
        }
    }
    if (json) {
        printf("%s\n", answer);
    } else if (!ok->boolean) {
        /* A reload refused for several reasons: each on a line of its own. */
        print_lines(stderr, "", adm_json_str(j, "error"));
    } else if (strcasecmp(cmd, "show health") == 0) {
        print_health(j);
    } else if (strcasecmp(cmd, "show instances") == 0) {
        print_instances(j);
    } else if (strcasecmp(cmd, "show routes") == 0) {
        print_routes(j);
    } else if (strcasecmp(cmd, "show workers") == 0) {
        print_workers(j);
    } else if (strcasecmp(cmd, "show stats") == 0) {
        print_stats(j);
    } else if (strcasecmp(cmd, "show certs") == 0) {
        print_certs(j);
    } else if (strcasecmp(cmd, "reload") == 0) {
        const struct adm_jval *ch = adm_json_get(j, "changes");
        printf("reloaded: generation %s\n", num(j, "generation"));
        for (size_t k = 0; ch != NULL && ch->type == ADM_J_ARR && k < ch->n; k++) {
            if (ch->items[k].type == ADM_J_STR) {
                char *c = clean(ch->items[k].str);
                printf("  %s\n", c);
                free(c);
            }
        }
    } else if (adm_json_get(j, "done") != NULL) {
        printf("backend %s of service %s: %s\n", adm_json_str(j, "backend"),
               adm_json_str(j, "service"), adm_json_str(j, "done"));
    } else {
        print_generic(j);
    }
    adm_json_free(j);
    free(answer);
    return rc;
}
