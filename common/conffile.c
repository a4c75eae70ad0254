/* dispatcher: libconfig files read without blocking (see conffile.h). */
#include "common/conffile.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/dsp.h"
#include "common/fs.h"

struct out {
    char *p;
    size_t len, cap;
};

static void out_add(struct out *o, const char *s, size_t n)
{
    if (o->len + n + 1 > o->cap) {
        o->cap = DSP_MAX(o->cap * 2, o->len + n + 1);
        o->p = dsp_xrealloc(o->p, o->cap);
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

struct rd {
    struct conf_src *src;
    const char *incdir;
    char *err;
    size_t errlen;
    const char *efile;
    unsigned eline;
};

static int load(struct rd *r, const char *path, int depth, const char *from, unsigned line,
                int *fd_out);

/* At <p> (a line start, outside strings and comments): an @include directive as libconfig's
 * scanner sees one, `[ \t]*@include[ \t]+"name"`? Sets [*name_at, *name_end) to the quoted text
 * (escapes still in) and returns the offset just past the closing quote, or 0. */
static size_t match_include(const char *p, size_t n, size_t *name_at, size_t *name_end)
{
    static const char kw[] = "@include";
    size_t i = 0, j;

    while (i < n && (p[i] == ' ' || p[i] == '\t')) {
        i++;
    }
    if (n - i < sizeof(kw) - 1 || memcmp(p + i, kw, sizeof(kw) - 1) != 0) {
        return 0;
    }
    i += sizeof(kw) - 1;
    j = i;
    while (i < n && (p[i] == ' ' || p[i] == '\t')) {
        i++;
    }
    if (i == j || i >= n || p[i] != '"') {
        return 0;
    }
    *name_at = ++i;
    for (; i < n; i++) {
        if (p[i] == '\\' && i + 1 < n) {
            i++;
        } else if (p[i] == '"') {
            *name_end = i;
            return i + 1;
        }
    }
    return 0; /* unterminated: libconfig opens nothing either */
}

/* The file name of an @include, unescaped as libconfig does (\\ and \" are the character, any
 * other backslash is dropped). Returns NULL for names that cannot be a path. */
static char *include_name(const char *p, size_t n)
{
    char *s = dsp_xmalloc(n + 1);
    size_t k = 0;

    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\\') {
            if (i + 1 < n && (p[i + 1] == '\\' || p[i + 1] == '"')) {
                s[k++] = p[++i];
            }
            continue;
        }
        if (p[i] == '\0' || p[i] == '\n') {
            free(s);
            return NULL;
        }
        s[k++] = p[i];
    }
    s[k] = '\0';
    if (k == 0) {
        free(s);
        return NULL;
    }
    return s;
}

/* ---- numbers libconfig would read as another number ------------------------------------------
 * libconfig 1.5's scanner reads a plain decimal literal with atoi() and a plain hex literal with
 * strtoul() cast to int, so anything beyond 32 bits wraps without a word (4294967296 is read as 0,
 * 0xFFFFFFFF as -1); with the L suffix it uses 64 bits but saturates beyond them. The copy pass
 * below sees every token of the file anyway, so it checks each integer literal against what
 * libconfig will make of it. Token shapes follow libconfig's scanner: names
 * [A-Za-z*][-A-Za-z0-9_*]*, integers [-+]?[0-9]+(L|LL)?, hex 0[Xx][0-9A-Fa-f]+(L|LL)? and floats
 * (a '.' or an exponent), which are left alone. */

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int hex_val(char ch)
{
    if (is_digit(ch)) {
        return ch - '0';
    }
    if ((ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')) {
        return (ch | 0x20) - 'a' + 10;
    }
    return -1;
}

static int is_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit(ch) || ch == '-' ||
           ch == '_' || ch == '*';
}

/* The numeric token at <p> (a digit, a sign or a '.'; <n> bytes left): returns its length and,
 * when libconfig would read a different number than the one written, a message in <msg>. */
static size_t scan_number(const char *p, size_t n, char *msg, size_t msglen)
{
    const unsigned long long lim64 = 0x7fffffffffffffffull;
    unsigned long long v = 0;
    size_t i = 0, start;
    int neg = 0, hex = 0, over = 0, wide = 0;
    long long got;

    msg[0] = '\0';
    if (p[0] == '-' || p[0] == '+') {
        neg = p[0] == '-';
        i++;
    }
    if (!neg && i == 0 && n >= 3 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') &&
        hex_val(p[2]) >= 0) {
        hex = 1;
        for (i = 2; i < n && hex_val(p[i]) >= 0; i++) {
            over |= v > (~0ull >> 4);
            v = v << 4 | (unsigned)hex_val(p[i]);
        }
    } else {
        start = i;
        for (; i < n && is_digit(p[i]); i++) {
            over |= v > (~0ull - 9) / 10;
            v = v * 10 + (unsigned)(p[i] - '0');
        }
        if ((i < n && p[i] == '.') ||
            (i > start && i + 1 < n && (p[i] == 'e' || p[i] == 'E') &&
             (is_digit(p[i + 1]) ||
              ((p[i + 1] == '-' || p[i + 1] == '+') && i + 2 < n && is_digit(p[i + 2]))))) {
            /* A float: the rest of it, so that its digits are not taken for an integer. */
            i += p[i] == '.';
            while (i < n && is_digit(p[i])) {
                i++;
            }
            if (i + 1 < n && (p[i] == 'e' || p[i] == 'E')) {
                size_t k = i + 1 + (p[i + 1] == '-' || p[i + 1] == '+');
                if (k < n && is_digit(p[k])) {
                    for (i = k; i < n && is_digit(p[i]); i++) {
                    }
                }
            }
            return i > 0 ? i : 1;
        }
        if (i == start) {
            return 1; /* a lone sign */
        }
    }
    if (i < n && p[i] == 'L') {
        wide = 1;
        i += 1 + (i + 1 < n && p[i + 1] == 'L');
    }
    /* What libconfig makes of it: 64 bits saturate (strtoll, strtoull), 32 bits then wrap. */
    if (hex) {
        got = over ? -1 : (long long)v;
        if (!wide) {
            got = (int)(unsigned)(over ? ~0ul : v);
        }
        if (!over && v <= (wide ? lim64 : 0x7fffffffull)) {
            return i;
        }
    } else {
        if (!over && v <= lim64 + (unsigned)neg) {
            got = neg ? (long long)(0 - v) : (long long)v;
        } else {
            got = neg ? LLONG_MIN : LLONG_MAX;
        }
        if (!wide) {
            got = (int)(unsigned)(unsigned long long)got;
        }
        if (!over && v <= (wide ? lim64 : 0x7fffffffull) + (unsigned)neg) {
            return i;
        }
    }
    if (!wide && !over && v <= lim64 + (unsigned)neg) {
        snprintf(msg, msglen,
                 "%.*s does not fit in 32 bits: libconfig would read it as %lld; write %.*sL "
                 "for a 64-bit integer",
                 (int)DSP_MIN(i, (size_t)40), p, got, (int)i, p);
    } else {
        snprintf(msg, msglen,
                 "%.*s%s does not fit in a signed 64-bit integer (libconfig would read it "
                 "as %lld)",
                 (int)DSP_MIN(i, (size_t)40), p, i > 40 ? "..." : "", got);
    }
    return i;
}

static int fail(struct rd *r, const char *file, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct rd *r, const char *file, unsigned line, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(r->err, r->errlen, fmt, ap);
    va_end(ap);
    r->efile = file;
    r->eline = line;
    return -1;
}

/* Copy <buf> to <o>, replacing the name of every @include by the alias of its copy. Only the
 * directives are rewritten: everything else is copied in bulk, so a 100,000-route config costs
 * one pass of byte compares. */
static int rewrite(struct rd *r, const char *path, const char *buf, size_t len, int depth,
                   struct out *o)
{
    enum { CODE, STR, COMMENT } st = CODE;
    unsigned line = 1;
    int bol = 1;
    size_t i = 0, copied = 0;

    while (i < len) {
        char ch = buf[i];

        if (st == CODE && bol) {
            size_t at = 0, end = 0;
            size_t past = match_include(buf + i, len - i, &at, &end);
            if (past > 0) {
                char *name = include_name(buf + i + at, end - at);
                char *full;
                char alias[64];
                int fd;

                if (name == NULL) {
                    return fail(r, path, line, "@include: bad file name");
                }
                if (name[0] == '/' || r->incdir == NULL) {
                    full = name;
                } else {
                    full = dsp_xmalloc(strlen(r->incdir) + strlen(name) + 2);
                    sprintf(full, "%s/%s", r->incdir, name);
                    free(name);
                }
                if (load(r, full, depth + 1, path, line, &fd) != 0) {
                    free(full);
                    return -1;
                }
                free(full);
                out_add(o, buf + copied, i + at - 1 - copied); /* up to the opening quote */
                snprintf(alias, sizeof(alias), "\"/proc/self/fd/%d\"", fd);
                out_add(o, alias, strlen(alias));
                i += past;
                copied = i;
                bol = 0;
                continue;
            }
        }
        bol = 0;
        switch (st) {
        case CODE:
            if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '*') {
                /* A name (digits in it are no number): none holds a newline or a quote. */
                for (i++; i < len && is_name_char(buf[i]); i++) {
                }
                continue;
            }
            if (is_digit(ch) || ch == '-' || ch == '+' || ch == '.') {
                char msg[256];

                i += scan_number(buf + i, len - i, msg, sizeof(msg));
                if (msg[0] != '\0') {
                    return fail(r, path, line, "%s", msg);
                }
                continue;
            }
            if (ch == '"') {
                st = STR;
            } else if (ch == '#' || (ch == '/' && i + 1 < len && buf[i + 1] == '/')) {
                const char *nl = memchr(buf + i, '\n', len - i);
                i = nl ? (size_t)(nl - buf) : len; /* the newline is seen below */
                continue;
            } else if (ch == '/' && i + 1 < len && buf[i + 1] == '*') {
                st = COMMENT;
                i += 2;
                continue;
            }
            break;
        case STR:
            if (ch == '\\' && i + 1 < len) {
                line += buf[i + 1] == '\n';
                i += 2;
                continue;
            }
            if (ch == '"') {
                st = CODE;
            }
            break;
        case COMMENT:
            if (ch == '*' && i + 1 < len && buf[i + 1] == '/') {
                st = CODE;
                i += 2;
                continue;
            }
            break;
        }
        if (ch == '\n') {
            line++;
            bol = 1;
        }
        i++;
    }
    out_add(o, buf + copied, len - copied);
    return 0;
}

/* Read <path> (named by an @include at <from>:<line>, or the main file when <from> is NULL),
 * rewrite it and store the result in an in-memory file whose descriptor goes to *fd_out. */
static int load(struct rd *r, const char *path, int depth, const char *from, unsigned line,
                int *fd_out)
{
    struct conf_src *src = r->src;
    struct conf_file *f;
    struct out o = {0};
    char msg[512], alias[64];
    char *buf, *mypath;
    size_t len, off = 0;
    int fd;

    if (depth > CONF_MAX_DEPTH) {
        return fail(r, from, line, "@include \"%s\": nested more than %d deep (a loop?)", path,
                    CONF_MAX_DEPTH);
    }
    if (src->n >= CONF_MAX_FILES) {
        return fail(r, from, line, "@include \"%s\": more than %d files in one config", path,
                    CONF_MAX_FILES);
    }
    if (fs_read_regular(path, CONF_MAX_BYTES - src->total, &buf, &len, msg, sizeof(msg)) != 0) {
        if (from == NULL) {
            return fail(r, NULL, 0, "cannot read config: %s", msg);
        }
        return fail(r, from, line, "@include: %s", msg);
    }
    src->total += len;
    /* The path must outlive this call: messages about this file point at it. */
    src->f = dsp_xrealloc(src->f, (src->n + 1) * sizeof(*src->f));
    f = &src->f[src->n++];
    f->fd = -1;
    f->alias = NULL;
    f->path = mypath = dsp_xstrdup(path);
    if (rewrite(r, mypath, buf, len, depth, &o) != 0) {
        free(buf);
        free(o.p);
        return -1;
    }
    free(buf);
    fd = memfd_create("dispatcher.conf", MFD_CLOEXEC);
    if (fd == -1) {
        free(o.p);
        return fail(r, from ? from : mypath, line, "cannot read \"%s\": memfd_create: %s", mypath,
                    strerror(errno));
    }
    while (off < o.len) {
        ssize_t n = write(fd, o.p + off, o.len - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            free(o.p);
            close(fd);
            return fail(r, from ? from : mypath, line, "cannot read \"%s\": %s", mypath,
                        strerror(n < 0 ? errno : EIO));
        }
        off += (size_t)n;
    }
    free(o.p);
    /* src->f may have moved while the includes of this file were read. */
    for (size_t k = 0; k < src->n; k++) {
        if (src->f[k].path == mypath) {
            snprintf(alias, sizeof(alias), "/proc/self/fd/%d", fd);
            src->f[k].fd = fd;
            src->f[k].alias = dsp_xstrdup(alias);
        }
    }
    *fd_out = fd;
    return 0;
}

static void close_copies(struct conf_src *src)
{
    for (size_t k = 0; k < src->n; k++) {
        if (src->f[k].fd != -1) {
            close(src->f[k].fd);
            src->f[k].fd = -1;
        }
    }
}

int conf_read(config_t *lc, const char *path, const char *incdir, struct conf_src *src, char *err,
              size_t errlen, const char **efile, unsigned *eline)
{
    struct rd r = {.src = src, .incdir = incdir, .err = err, .errlen = errlen};
    char alias[64];
    int fd;

    memset(src, 0, sizeof(*src));
    *efile = NULL;
    *eline = 0;
    if (load(&r, path, 0, NULL, 0, &fd) != 0) {
        close_copies(src);
        *efile = r.efile;
        *eline = r.eline;
        return -1;
    }
    /* Names are all rewritten: libconfig must not prefix anything to them (include_dir is left
     * unset; libconfig 1.5 cannot be given NULL). */
    snprintf(alias, sizeof(alias), "/proc/self/fd/%d", fd);
    if (config_read_file(lc, alias) != CONFIG_TRUE) {
        snprintf(err, errlen, "%s", config_error_text(lc) ? config_error_text(lc) : "cannot parse");
        *efile = conf_src_name(src, config_error_file(lc));
        if (*efile == NULL) {
            *efile = src->f[0].path;
        }
        *eline = (unsigned)config_error_line(lc);
        close_copies(src);
        return -1;
    }
    close_copies(src);
    return 0;
}

const char *conf_src_name(const struct conf_src *src, const char *file)
{
    if (file == NULL || src == NULL) {
        return file;
    }
    for (size_t k = 0; k < src->n; k++) {
        if (src->f[k].alias != NULL && strcmp(src->f[k].alias, file) == 0) {
            return src->f[k].path;
        }
    }
    return file;
}

void conf_src_free(struct conf_src *src)
{
    close_copies(src);
    for (size_t k = 0; k < src->n; k++) {
        free(src->f[k].alias);
        free(src->f[k].path);
    }
    free(src->f);
    memset(src, 0, sizeof(*src));
}
