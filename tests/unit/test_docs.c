/* dispatcher: the KEY REFERENCE of man/dispatcher.conf.5 lists exactly the keys the config
 * parser accepts (ms_config_key_table()), each with its type, default and reload behaviour.
 * Run from the repository root (as `make unit` does). */
#include "master/ms_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/unit.h"

#define MAN_PAGE "man/dispatcher.conf.5"
#define MAX_KEYS 512

struct doc_key {
    char name[128];
    int complete; /* Type:, Default: and Reload: lines follow, with a known Reload: value */
    int seen;     /* matched by a parser key */
};

static int known_reload(const char *v)
{
    static const char *const ok[] = {"yes.", "restart.", "as its keys say.", "\\- (refused).",
                                     NULL};

    for (const char *const *o = ok; *o != NULL; o++) {
        if (strcmp(v, *o) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The keys of the KEY REFERENCE section: ".TP", ".B key", "Type: ...", ".br", "Default: ...",
 * ".br", "Reload: ...". Returns how many (or -1 when the page cannot be read). */
static int read_doc_keys(struct doc_key *out, int max)
{
    FILE *f = fopen(MAN_PAGE, "r");
    char line[1024], lines[8][1024];
    int n = 0, in = 0, have = 0;

    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, ".SH ", 4) == 0) {
            in = strcmp(line, ".SH KEY REFERENCE") == 0;
            have = 0;
            continue;
        }
        if (!in) {
            continue;
        }
        /* Keep the last 7 lines: an entry is complete when its Reload: line arrives. */
        if (have == 7) {
            memmove(lines[0], lines[1], sizeof(lines[0]) * 6);
            have = 6;
        }
        memcpy(lines[have++], line, sizeof(line));
        if (have >= 2 && strcmp(lines[have - 2], ".TP") == 0 &&
            strncmp(lines[have - 1], ".B ", 3) == 0 && n < max) {
            snprintf(out[n].name, sizeof(out[n].name), "%s", lines[have - 1] + 3);
            out[n].complete = 0;
            out[n].seen = 0;
            n++;
        }
        if (have == 7 && n > 0 && strcmp(lines[0], ".TP") == 0 &&
            strcmp(lines[1] + 3, out[n - 1].name) == 0 && strncmp(lines[2], "Type: ", 6) == 0 &&
            strlen(lines[2]) > 7 && strcmp(lines[3], ".br") == 0 &&
            strncmp(lines[4], "Default: ", 9) == 0 && strlen(lines[4]) > 10 &&
            strcmp(lines[5], ".br") == 0 && strncmp(lines[6], "Reload: ", 8) == 0 &&
            known_reload(lines[6] + 8)) {
            out[n - 1].complete = 1;
        }
    }
    fclose(f);
    return n;
}

static void test_every_key_documented(void)
{
    static struct doc_key doc[MAX_KEYS];
    int n = read_doc_keys(doc, MAX_KEYS), parser_keys = 0;
    char full[256];

    if (n < 0) {
        CU_FAIL_FATAL("cannot read " MAN_PAGE " (run the unit tests from the repository root)");
    }
    CU_ASSERT_FATAL(n > 0 && n < MAX_KEYS);
    for (int i = 0; i < n; i++) {
        if (!doc[i].complete) {
            fprintf(stderr, "\n  %s: key %s lacks its Type:/Default:/Reload: lines\n", MAN_PAGE,
                    doc[i].name);
        }
        CU_ASSERT(doc[i].complete);
        for (int j = 0; j < i; j++) {
            if (strcmp(doc[i].name, doc[j].name) == 0) {
                fprintf(stderr, "\n  %s: key %s listed twice\n", MAN_PAGE, doc[i].name);
                CU_FAIL("a key listed twice");
            }
        }
    }
    for (const struct ms_config_keys *g = ms_config_key_table(); g->group != NULL; g++) {
        for (const char *const *k = g->keys; *k != NULL; k++) {
            int found = 0;

            snprintf(full, sizeof(full), "%s%s%s", g->group, *g->group ? "." : "", *k);
            parser_keys++;
            for (int i = 0; i < n; i++) {
                if (strcmp(doc[i].name, full) == 0) {
                    doc[i].seen = 1;
                    found = 1;
                }
            }
            if (!found) {
                fprintf(stderr, "\n  the parser accepts %s, " MAN_PAGE " does not list it\n", full);
            }
            CU_ASSERT(found);
        }
    }
    for (int i = 0; i < n; i++) {
        if (!doc[i].seen) {
            fprintf(stderr, "\n  " MAN_PAGE " lists %s, the parser does not accept it\n",
                    doc[i].name);
        }
        CU_ASSERT(doc[i].seen);
    }
    CU_ASSERT(parser_keys == n);
}

/* Whether <word> occurs in <text> as a whole word (not inside a longer name). */
static int has_word(const char *text, const char *word)
{
    size_t n = strlen(word);

    for (const char *p = strstr(text, word); p != NULL; p = strstr(p + 1, word)) {
        char before = p > text ? p[-1] : ' ', after = p[n];
        int inner_b = (before >= 'a' && before <= 'z') || (before >= '0' && before <= '9') ||
                      before == '_';
        int inner_a = (after >= 'a' && after <= 'z') || (after >= '0' && after <= '9') ||
                      after == '_';
        if (!inner_b && !inner_a) {
            return 1;
        }
    }
    return 0;
}

/* A key reference entry says its type and default; what the key does is said in the sections
 * before it: every key's own name appears there (count_5xx was listed, never explained). */
static void test_every_key_explained(void)
{
    static struct doc_key doc[MAX_KEYS];
    static char prose[1 << 20];
    int n = read_doc_keys(doc, MAX_KEYS), in_ref = 0;
    size_t len = 0;
    char line[1024];
    FILE *f = fopen(MAN_PAGE, "r");

    CU_ASSERT_FATAL(f != NULL && n > 0);
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, ".SH ", 4) == 0) {
            in_ref = strcmp(line, ".SH KEY REFERENCE\n") == 0;
        }
        if (!in_ref && len + strlen(line) < sizeof(prose)) {
            memcpy(prose + len, line, strlen(line) + 1);
            len += strlen(line);
        }
    }
    fclose(f);
    for (int i = 0; i < n; i++) {
        const char *dot = strrchr(doc[i].name, '.');
        char leaf[128];

        const char *src = dot != NULL ? dot + 1 : doc[i].name;
        size_t l = strlen(src) < sizeof(leaf) - 1 ? strlen(src) : sizeof(leaf) - 1;

        memcpy(leaf, src, l);
        leaf[l] = '\0';
        leaf[strcspn(leaf, "[")] = '\0';
        if (!has_word(prose, leaf)) {
            fprintf(stderr, "\n  %s: %s is in the KEY REFERENCE but no section explains it\n",
                    MAN_PAGE, doc[i].name);
            CU_FAIL("a key not explained");
        }
    }
}

UNIT_SUITE(docs, {"every config key documented", test_every_key_documented},
           {"every config key explained", test_every_key_explained})
