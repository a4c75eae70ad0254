/* dispatcher: a small JSON reader for dispatcherctl (and the admin unit tests): parses one
 * answer line into a tree. Input is untrusted: depth, sizes and escapes are all checked. */
#ifndef DSP_ADM_JSON_H
#define DSP_ADM_JSON_H

#include <stddef.h>

#define ADM_J_NULL 0
#define ADM_J_BOOL 1
#define ADM_J_NUM  2
#define ADM_J_STR  3
#define ADM_J_ARR  4
#define ADM_J_OBJ  5

struct adm_jval {
    int type;               /* ADM_J_* */
    int boolean;            /* BOOL */
    double num;             /* NUM */
    char *str;              /* STR: decoded bytes, NUL-terminated; NUM: the number as written */
    size_t slen;            /* STR length (may hold NULs) */
    struct adm_jval *items; /* ARR elements, OBJ values */
    char **keys;            /* OBJ keys (decoded, NUL-terminated) */
    size_t n;
};

/* Parse the JSON text <s>[0, n) (surrounding whitespace allowed). Returns a heap tree, or NULL
 * with a reason in <err>. */
struct adm_jval *adm_json_parse(const char *s, size_t n, char *err, size_t errlen);
/* Free a tree from adm_json_parse(); NULL is fine. */
void adm_json_free(struct adm_jval *v);
/* Member <key> of object <obj>, or NULL (also when <obj> is NULL or not an object). */
const struct adm_jval *adm_json_get(const struct adm_jval *obj, const char *key);
/* Convenience readers: the string (or "" when absent/not a string), the number (or <dflt>). */
const char *adm_json_str(const struct adm_jval *obj, const char *key);
double adm_json_num(const struct adm_jval *obj, const char *key, double dflt);

#endif
