/* dispatcher: admin command parsing and execution (see adm_cmd.h). */
#include "admin/adm_cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "admin/adm_buf.h"
#include "admin/adm_render.h"
#include "shm/shm_state.h"

#define MAX_WORDS 8
#define MAX_WORD  512

static const char *const help_lines[] = {
    "help",
    "show health",
    "show instances",
    "show routes",
    "show workers",
    "show stats",
    "show certs",
    "show fleet",
    "reload",
    "disable backend SERVICE ADDRESS",
    "enable backend SERVICE ADDRESS",
    "reset circuit SERVICE ADDRESS",
    "trip circuit SERVICE ADDRESS",
};

typedef void (*render_fn)(struct adm_buf *b, const struct adm_view *v);

static const struct {
    const char *name;
    render_fn fn;
} shows[] = {
    {"health", adm_render_health}, {"instances", adm_render_instances},
    {"routes", adm_render_routes}, {"workers", adm_render_workers},
    {"stats", adm_render_stats},   {"certs", adm_render_certs},
    {"fleet", adm_render_fleet},
};

static void do_help(struct adm_buf *out)
{
    adm_buf_adds(out, "{\"ok\":true,\"commands\":[");
    for (size_t i = 0; i < sizeof(help_lines) / sizeof(help_lines[0]); i++) {
        if (i > 0) {
            adm_buf_adds(out, ",");
        }
        adm_buf_jstrz(out, help_lines[i]);
    }
    adm_buf_adds(out, "]}");
}

static void do_show(struct adm_buf *out, render_fn fn, const struct adm_ops *ops)
{
    struct adm_view v;
    size_t mark = out->len;

    memset(&v, 0, sizeof(v));
    if (ops->view(&v, ops->arg) != 0) {
        adm_render_error(out, "no configuration is published yet");
        return;
    }
    fn(out, &v);
    if (out->overflow) {
        /* Too big to answer: take it back and say so. */
        out->overflow = 0;
        out->len = mark;
        if (out->p != NULL) {
            out->p[mark] = '\0';
        }
        adm_render_error(out, "answer too large");
    }
}

/* The non-empty lines of <text> as a JSON array of strings. */
static void lines_array(struct adm_buf *out, const char *text)
{
    int first = 1;

    adm_buf_adds(out, "[");
    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);
        if (n > 0) {
            adm_buf_adds(out, first ? "" : ",");
            adm_buf_jstr(out, p, n);
            first = 0;
        }
        p = nl != NULL ? nl + 1 : NULL;
    }
    adm_buf_adds(out, "]");
}

static void do_reload(struct adm_buf *out, const struct adm_ops *ops)
{
    uint64_t gen = 0;
    char *errs = NULL, *warns = NULL, *changes = NULL;

    if (ops->reload(&gen, &errs, &warns, &changes, ops->arg) == 0) {
        adm_buf_addf(out, "{\"ok\":true,\"generation\":%llu", (unsigned long long)gen);
        /* What changed in listeners and workers ("listener 127.0.0.1:8081 added", ...),
         * only when anything did. */
        if (changes != NULL && changes[strspn(changes, "\n")] != '\0') {
            adm_buf_adds(out, ",\"changes\":");
            lines_array(out, changes);
        }
    } else {
        size_t n = errs ? strlen(errs) : 0;
        /* "error" keeps the whole text (its lines joined by \n); "errors" has one per line. */
        while (n > 0 && errs[n - 1] == '\n') {
            errs[--n] = '\0';
        }
        adm_buf_adds(out, "{\"ok\":false,\"error\":");
        adm_buf_jstrz(out, errs && n ? errs : "reload failed");
        adm_buf_adds(out, ",\"errors\":");
        lines_array(out, errs && n ? errs : "reload failed");
    }
    if (warns != NULL && warns[strspn(warns, "\n")] != '\0') {
        adm_buf_adds(out, ",\"warnings\":"); /* only when there are any */
        lines_array(out, warns);
    }
    adm_buf_adds(out, "}");
    free(errs);
    free(warns);
    free(changes);
}

/* disable/enable backend, reset/trip circuit: <verb> (ADM_VERB_*) on backend <addr> of service
 * <svc>. */
void adm_cmd_backend(struct adm_buf *out, int verb, const char *svc, const char *addr,
                     const struct adm_ops *ops)
{
    static const char *const done[] = {"disabled", "enabled", "circuit reset", "circuit tripped"};
    struct adm_view v;
    uint32_t slot = 0;
    const char *what = "service";
    char msg[MAX_WORD * 2 + 64];

    memset(&v, 0, sizeof(v));
    if (ops->view(&v, ops->arg) != 0) {
        adm_render_error(out, "no configuration is published yet");
        return;
    }
    if (shm_state_backend_slot(v.snap, svc, addr, &slot, &what) != 0) {
        if (strcmp(what, "service") == 0) {
            snprintf(msg, sizeof(msg), "no service \"%s\"", svc);
        } else {
            snprintf(msg, sizeof(msg), "service \"%s\" has no backend \"%s\"", svc, addr);
        }
        adm_render_error(out, msg);
        return;
    }
    switch (verb) {
    case ADM_VERB_DISABLE:
        shm_state_disable(ops->rt, slot);
        break;
    case ADM_VERB_ENABLE:
        shm_state_enable(ops->rt, slot);
        break;
    case ADM_VERB_TRIP:
        shm_state_trip_circuit(ops->rt, slot);
        break;
    default:
        shm_state_reset_circuit(ops->rt, slot);
        break;
    }
    adm_buf_adds(out, "{\"ok\":true,\"service\":");
    adm_buf_jstrz(out, svc);
    adm_buf_adds(out, ",\"backend\":");
    adm_buf_jstrz(out, addr);
    adm_buf_adds(out, ",\"done\":");
    adm_buf_jstrz(out, done[verb]);
    adm_buf_adds(out, "}");
}

/* Split <line> into words. Returns the count, or -1 with <err> set for bytes that can never
 * form a command (controls, non-ASCII) or too many/too long words. */
static int split(const char *line, size_t len, char words[MAX_WORDS][MAX_WORD], const char **err)
{
    int n = 0;
    size_t i = 0;

    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t')) {
        len--;
    }
    for (size_t k = 0; k < len; k++) {
        unsigned char ch = (unsigned char)line[k];
        if ((ch < 0x20 && ch != '\t') || ch >= 0x7f) {
            *err = "invalid bytes in command (expected printable ASCII); try \"help\"";
            return -1;
        }
    }
    for (;;) {
        size_t start, wl;

        while (i < len && (line[i] == ' ' || line[i] == '\t')) {
            i++;
        }
        if (i >= len) {
            return n;
        }
        start = i;
        while (i < len && line[i] != ' ' && line[i] != '\t') {
            i++;
        }
        wl = i - start;
        if (n == MAX_WORDS) {
            *err = "too many words; try \"help\"";
            return -1;
        }
        if (wl >= MAX_WORD) {
            *err = "word too long; try \"help\"";
            return -1;
        }
        memcpy(words[n], line + start, wl);
        words[n][wl] = '\0';
        n++;
    }
}

void adm_cmd_exec(struct adm_buf *out, const char *line, size_t len, const struct adm_ops *ops)
{
    static char words[MAX_WORDS][MAX_WORD];
    const char *err = NULL;
    char msg[MAX_WORD + 96];
    int n;

    if (len > ADM_LINE_MAX) {
        adm_render_error(out, ADM_LINE_TOO_LONG);
        return;
    }
    n = split(line, len, words, &err);
    if (n < 0) {
        adm_render_error(out, err);
        return;
    }
    if (n == 0) {
        adm_render_error(out, "empty command; try \"help\"");
        return;
    }
    if (strcasecmp(words[0], "help") == 0) {
        if (n != 1) {
            adm_render_error(out, "usage: help");
            return;
        }
        do_help(out);
        return;
    }
    if (strcasecmp(words[0], "show") == 0) {
        if (n != 2) {
            adm_render_error(out, "usage: show health|instances|routes|workers|stats|certs|fleet");
            return;
        }
        for (size_t i = 0; i < sizeof(shows) / sizeof(shows[0]); i++) {
            if (strcasecmp(words[1], shows[i].name) == 0) {
                do_show(out, shows[i].fn, ops);
                return;
            }
        }
        snprintf(msg, sizeof(msg), "unknown: show %s; try \"help\"", words[1]);
        adm_render_error(out, msg);
        return;
    }
    if (strcasecmp(words[0], "reload") == 0) {
        if (n != 1) {
            adm_render_error(out, "usage: reload");
            return;
        }
        do_reload(out, ops);
        return;
    }
    if ((strcasecmp(words[0], "disable") == 0 || strcasecmp(words[0], "enable") == 0) && n >= 2 &&
        strcasecmp(words[1], "backend") == 0) {
        int verb = strcasecmp(words[0], "disable") == 0 ? ADM_VERB_DISABLE : ADM_VERB_ENABLE;
        if (n != 4) {
            adm_render_error(out, verb == ADM_VERB_DISABLE
                                      ? "usage: disable backend SERVICE ADDRESS"
                                      : "usage: enable backend SERVICE ADDRESS");
            return;
        }
        adm_cmd_backend(out, verb, words[2], words[3], ops);
        return;
    }
    if ((strcasecmp(words[0], "reset") == 0 || strcasecmp(words[0], "trip") == 0) && n >= 2 &&
        strcasecmp(words[1], "circuit") == 0) {
        int verb = strcasecmp(words[0], "reset") == 0 ? ADM_VERB_RESET : ADM_VERB_TRIP;
        if (n != 4) {
            adm_render_error(out, verb == ADM_VERB_RESET ? "usage: reset circuit SERVICE ADDRESS"
                                                         : "usage: trip circuit SERVICE ADDRESS");
            return;
        }
        adm_cmd_backend(out, verb, words[2], words[3], ops);
        return;
    }
    snprintf(msg, sizeof(msg), "unknown command \"%s\"; try \"help\"", words[0]);
    adm_render_error(out, msg);
}

int adm_cmd_api(struct adm_buf *out, const char *path, const struct adm_ops *ops)
{
    for (size_t i = 0; i < sizeof(shows) / sizeof(shows[0]); i++) {
        if (strcmp(path, shows[i].name) == 0) {
            do_show(out, shows[i].fn, ops);
            return 0;
        }
    }
    return -1;
}
