/* dispatcher: the admin line protocol: one command line in, one JSON answer out. The caller
 * (the master's admin server, or a unit test) supplies the state and the actions. */
#ifndef DSP_ADM_CMD_H
#define DSP_ADM_CMD_H

#include <stddef.h>
#include <stdint.h>

struct adm_buf;
struct adm_view;
struct shm_rt;

#define ADM_LINE_MAX 4096 /* bytes in a command line, newline excluded */
#define ADM_STR_(x)  #x
#define ADM_STR(x)   ADM_STR_(x)
/* The answer's error text for a longer line. */
#define ADM_LINE_TOO_LONG "line too long (at most " ADM_STR(ADM_LINE_MAX) " bytes)"

struct adm_ops {
    /* Fill <v> with the current state. Returns 0, or -1 when nothing is published yet. */
    int (*view)(struct adm_view *v, void *arg);
    /* Reload the configuration: 0 with the new generation in <*gen> and what changed in
     * listeners and workers in <*changes> (heap lines, or left NULL), or -1 with a heap error
     * text ("FILE:LINE: message" lines) in <*errs>. Either way <*warns> may receive the heap
     * text of what the reload warned about, one warning per line. */
    int (*reload)(uint64_t *gen, char **errs, char **warns, char **changes, void *arg);
    /* The runtime segment, writable (disable/enable, reset/trip circuit). */
    struct shm_rt *rt;
    void *arg;
};

/* Run the command in <line>[0, len) (no newline; a trailing CR is ignored) and append exactly
 * one JSON object, without a newline, to <out>. Any bytes are accepted: garbage gets an
 * {"ok":false,"error":...} answer. Master only (or tests). */
void adm_cmd_exec(struct adm_buf *out, const char *line, size_t len, const struct adm_ops *ops);

/* Backend actions: the verbs of adm_cmd_backend(). */
#define ADM_VERB_DISABLE 0
#define ADM_VERB_ENABLE  1
#define ADM_VERB_RESET   2 /* reset circuit */
#define ADM_VERB_TRIP    3 /* trip circuit */

/* Run backend action <verb> on backend <addr> of service <svc> (the admin socket's "disable
 * backend", "enable backend", "reset circuit", "trip circuit", and the admin HTTP POSTs), and
 * append its one JSON answer to <out>. */
void adm_cmd_backend(struct adm_buf *out, int verb, const char *svc, const char *addr,
                     const struct adm_ops *ops);

/* The JSON answer for a GET of the admin HTTP API path <path> ("health", "instances", ...:
 * the part after /api/v1/dispatcher/). Returns 0, or -1 when there is no such resource. */
int adm_cmd_api(struct adm_buf *out, const char *path, const struct adm_ops *ops);

#endif
