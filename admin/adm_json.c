/* dispatcher: recursive-descent JSON reader (see adm_json.h). */
#include "admin/adm_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

struct jp {
    const char *s;
    size_t n;
    size_t i;
    char *err;
    size_t errlen;
    int failed;
};

static void fail(struct jp *p, const char *what)
{
    if (!p->failed) {
        snprintf(p->err, p->errlen, "%s at byte %zu", what, p->i);
        p->failed = 1;
    }
}

static void skip_ws(struct jp *p)
{
    while (p->i < p->n &&
           (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r')) {
        p->i++;
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static int read_hex4(struct jp *p, unsigned *out)
{
    unsigned v = 0;

    if (p->n - p->i < 4) {
        return -1;
    }
    for (int k = 0; k < 4; k++) {
        int h = hexval(p->s[p->i + (size_t)k]);
        if (h < 0) {
            return -1;
        }
        v = v * 16 + (unsigned)h;
    }
    p->i += 4;
    *out = v;
    return 0;
}

/* Parse a string at p->i (opening quote included) into a heap buffer. */
static char *parse_string(struct jp *p, size_t *len)
{
    size_t cap = 16, n = 0;
    char *out = malloc(cap);

    if (out == NULL) {
        fail(p, "out of memory");
        return NULL;
    }
    p->i++; /* the quote */
    for (;;) {
        unsigned char ch;
        char tmp[4];
        size_t tn = 0;

        if (p->i >= p->n) {
            fail(p, "unterminated string");
            free(out);
            return NULL;
        }
        ch = (unsigned char)p->s[p->i++];
        if (ch == '"') {
            break;
        }
        if (ch < 0x20) {
            fail(p, "control character in string");
            free(out);
            return NULL;
        }
        if (ch != '\\') {
            tmp[tn++] = (char)ch;
        } else {
            unsigned u;
            if (p->i >= p->n) {
                fail(p, "bad escape");
                free(out);
                return NULL;
            }
            ch = (unsigned char)p->s[p->i++];
            switch (ch) {
            case '"':
            case '\\':
            case '/':
                tmp[tn++] = (char)ch;
                break;
            case 'b':
                tmp[tn++] = '\b';
                break;
            case 'f':
                tmp[tn++] = '\f';
                break;
            case 'n':
                tmp[tn++] = '\n';
                break;
            case 'r':
                tmp[tn++] = '\r';
                break;
            case 't':
                tmp[tn++] = '\t';
                break;
            case 'u':
                if (read_hex4(p, &u) != 0) {
                    fail(p, "bad \\u escape");
                    free(out);
                    return NULL;
                }
                if (u < 0x100) {
                    /* The dispatcher escapes raw (maybe non-UTF-8) bytes as \u00XX: give the
                     * byte back. */
                    tmp[tn++] = (char)u;
                } else if (u < 0x800) {
                    tmp[tn++] = (char)(0xc0 | (u >> 6));
                    tmp[tn++] = (char)(0x80 | (u & 0x3f));
                } else {
                    /* Surrogates are passed through as three-byte sequences: display only. */
                    tmp[tn++] = (char)(0xe0 | (u >> 12));
                    tmp[tn++] = (char)(0x80 | ((u >> 6) & 0x3f));
                    tmp[tn++] = (char)(0x80 | (u & 0x3f));
                }
                break;
            default:
                fail(p, "bad escape");
                free(out);
                return NULL;
            }
        }
        if (n + tn + 1 > cap) {
            char *q;
            while (n + tn + 1 > cap) {
                cap *= 2;
            }
            q = realloc(out, cap);
            if (q == NULL) {
                fail(p, "out of memory");
                free(out);
                return NULL;
            }
            out = q;
        }
        memcpy(out + n, tmp, tn);
        n += tn;
    }
    out[n] = '\0';
    *len = n;
    return out;
}

static int parse_value(struct jp *p, struct adm_jval *v, int depth);

static int grow(struct jp *p, struct adm_jval *v, size_t *cap, int with_keys)
{
    if (v->n < *cap) {
        return 0;
    }
    size_t nc = *cap ? *cap * 2 : 4;
    struct adm_jval *ni = realloc(v->items, nc * sizeof(*ni));
    if (ni == NULL) {
        fail(p, "out of memory");
        return -1;
    }
    v->items = ni;
    if (with_keys) {
        char **nk = realloc(v->keys, nc * sizeof(*nk));
        if (nk == NULL) {
            fail(p, "out of memory");
            return -1;
        }
        v->keys = nk;
    }
    *cap = nc;
    return 0;
}

static int parse_container(struct jp *p, struct adm_jval *v, int depth, int obj)
{
    size_t cap = 0;
    char close = obj ? '}' : ']';

    v->type = obj ? ADM_J_OBJ : ADM_J_ARR;
    p->i++;
    skip_ws(p);
    if (p->i < p->n && p->s[p->i] == close) {
        p->i++;
        return 0;
    }
    for (;;) {
        struct adm_jval *item;

        if (grow(p, v, &cap, obj) != 0) {
            return -1;
        }
        item = &v->items[v->n];
        memset(item, 0, sizeof(*item));
        if (obj) {
            size_t klen;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != '"') {
                fail(p, "expected a key");
                return -1;
            }
            v->keys[v->n] = parse_string(p, &klen);
            if (v->keys[v->n] == NULL) {
                return -1;
            }
            v->n++;
            skip_ws(p);
            if (p->i >= p->n || p->s[p->i] != ':') {
                fail(p, "expected ':'");
                return -1;
            }
            p->i++;
        } else {
            v->n++;
        }
        if (parse_value(p, item, depth + 1) != 0) {
            return -1;
        }
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
            continue;
        }
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            return 0;
        }
        fail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        return -1;
    }
}

static int parse_number(struct jp *p, struct adm_jval *v)
{
    size_t start = p->i;
    char *end;

    if (p->i < p->n && p->s[p->i] == '-') {
        p->i++;
    }
    if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') {
        fail(p, "bad number");
        return -1;
    }
    while (p->i < p->n &&
           ((p->s[p->i] >= '0' && p->s[p->i] <= '9') || p->s[p->i] == '.' || p->s[p->i] == 'e' ||
            p->s[p->i] == 'E' || p->s[p->i] == '+' || p->s[p->i] == '-')) {
        p->i++;
    }
    v->type = ADM_J_NUM;
    v->str = malloc(p->i - start + 1);
    if (v->str == NULL) {
        fail(p, "out of memory");
        return -1;
    }
    memcpy(v->str, p->s + start, p->i - start);
    v->str[p->i - start] = '\0';
    v->slen = p->i - start;
    v->num = strtod(v->str, &end);
    if (*end != '\0') {
        fail(p, "bad number");
        return -1;
    }
    return 0;
}

static int parse_value(struct jp *p, struct adm_jval *v, int depth)
{
    if (depth > MAX_DEPTH) {
        fail(p, "nested too deeply");
        return -1;
    }
    skip_ws(p);
    if (p->i >= p->n) {
        fail(p, "unexpected end");
        return -1;
    }
    switch (p->s[p->i]) {
    case '{':
        return parse_container(p, v, depth, 1);
    case '[':
        return parse_container(p, v, depth, 0);
    case '"':
        v->type = ADM_J_STR;
        v->str = parse_string(p, &v->slen);
        return v->str ? 0 : -1;
    case 't':
        if (p->n - p->i >= 4 && memcmp(p->s + p->i, "true", 4) == 0) {
            p->i += 4;
            v->type = ADM_J_BOOL;
            v->boolean = 1;
            return 0;
        }
        break;
    case 'f':
        if (p->n - p->i >= 5 && memcmp(p->s + p->i, "false", 5) == 0) {
            p->i += 5;
            v->type = ADM_J_BOOL;
            return 0;
        }
        break;
    case 'n':
        if (p->n - p->i >= 4 && memcmp(p->s + p->i, "null", 4) == 0) {
            p->i += 4;
            v->type = ADM_J_NULL;
            return 0;
        }
        break;
    default:
        return parse_number(p, v);
    }
    fail(p, "unexpected character");
    return -1;
}

static void free_inner(struct adm_jval *v)
{
    for (size_t i = 0; i < v->n; i++) {
        if (v->items != NULL) {
            free_inner(&v->items[i]);
        }
        if (v->keys != NULL) {
            free(v->keys[i]);
        }
    }
    free(v->items);
    free(v->keys);
    free(v->str);
}

void adm_json_free(struct adm_jval *v)
{
    if (v != NULL) {
        free_inner(v);
        free(v);
    }
}

struct adm_jval *adm_json_parse(const char *s, size_t n, char *err, size_t errlen)
{
    struct jp p = {.s = s, .n = n, .err = err, .errlen = errlen};
    struct adm_jval *v = calloc(1, sizeof(*v));

    if (v == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (parse_value(&p, v, 0) == 0) {
        skip_ws(&p);
        if (p.i != p.n) {
            fail(&p, "trailing bytes");
        }
    }
    if (p.failed) {
        adm_json_free(v);
        return NULL;
    }
    return v;
}

const struct adm_jval *adm_json_get(const struct adm_jval *obj, const char *key)
{
    if (obj == NULL || obj->type != ADM_J_OBJ) {
        return NULL;
    }
    for (size_t i = 0; i < obj->n; i++) {
        if (strcmp(obj->keys[i], key) == 0) {
            return &obj->items[i];
        }
    }
    return NULL;
}

const char *adm_json_str(const struct adm_jval *obj, const char *key)
{
    const struct adm_jval *v = adm_json_get(obj, key);

    return v != NULL && v->type == ADM_J_STR ? v->str : "";
}

double adm_json_num(const struct adm_jval *obj, const char *key, double dflt)
{
    const struct adm_jval *v = adm_json_get(obj, key);

    return v != NULL && v->type == ADM_J_NUM ? v->num : dflt;
}
