/* dispatcher: reads a libconfig file and every file it @includes without ever blocking.
 *
 * libconfig opens @include files itself, with a plain fopen(): a FIFO there would stall the
 * reader for good (a master on reload: admin socket dead, no worker respawned). So the files are
 * read here first, each through fs_read_regular() (no blocking open, regular files only, bounded
 * size), every @include directive is rewritten to name a private in-memory copy, and libconfig
 * parses those copies. Line numbers are kept; conf_src_name() maps the copies' names back to the
 * real paths for messages. */
#ifndef DSP_CONFFILE_H
#define DSP_CONFFILE_H

#include <stddef.h>

#include <libconfig.h>

#define CONF_MAX_BYTES (64u << 20) /* all files of one config together */
#define CONF_MAX_FILES 128         /* files of one config, the main one included */
#define CONF_MAX_DEPTH 10          /* @include nesting, as libconfig allows */

struct conf_file {
    int fd;      /* the in-memory copy, open until conf_read() returns */
    char *alias; /* "/proc/self/fd/N": the name libconfig knows it by */
    char *path;  /* the real file */
};

struct conf_src {
    struct conf_file *f;
    size_t n;
    size_t total; /* bytes read */
};

/* Parse <path> into <lc> (initialised by the caller). Relative @include names resolve against
 * <incdir> (NULL: the current folder), absolute ones are taken as they are. Returns 0, or -1 with
 * the message in <err> and its place in *efile (NULL: no file could be named; else a path owned by
 * <src> or <path>) and *eline. <src> must be released with conf_src_free() once nothing refers to
 * the names any more (config_setting_source_file() answers aliases). */
int conf_read(config_t *lc, const char *path, const char *incdir, struct conf_src *src, char *err,
              size_t errlen, const char **efile, unsigned *eline);
/* The real path for a name libconfig reported (an alias), or <file> itself. */
const char *conf_src_name(const struct conf_src *src, const char *file);
void conf_src_free(struct conf_src *src);

#endif
