/* dispatcher: the one way the master's live configuration (ms.cfg) changes after start. A reload
 * of the file (SIGHUP or the admin socket's `reload`) and a change of the Redis namespace both
 * go through ms_commit(): validate -> compile -> publish -> apply -> log/report, so that the
 * paths cannot drift apart. */
#ifndef DSP_MS_COMMIT_H
#define DSP_MS_COMMIT_H

struct ms_config;

/* Where a change comes from. */
enum ms_origin {
    MS_ORIGIN_FILE,  /* the file re-read: a new configuration replaces ms.cfg */
    MS_ORIGIN_REDIS, /* new Redis data merged into ms.cfg in place */
};

/* How a commit ended, for the report hook. */
enum ms_outcome {
    MS_COMMIT_INVALID,     /* validation refused the change (<errs> says why, or NULL) */
    MS_COMMIT_UNPUBLISHED, /* valid, but the generation could not be published (logged) */
    MS_COMMIT_DONE,        /* published as generation ms.gen */
};

/* Timings of a successful commit, milliseconds. */
struct ms_commit_times {
    double validate, publish, free_old;
};

struct ms_change {
    enum ms_origin origin;
    /* Validate: return the candidate configuration (a new one for MS_ORIGIN_FILE, ms.cfg changed
     * in place for MS_ORIGIN_REDIS), or NULL with the reasons in <*errs> (heap, one line per
     * problem; may stay NULL). */
    struct ms_config *(*validate)(void *arg, char **errs);
    /* After a failure, undo what validate() changed in ms.cfg in place (NULL: nothing to do). */
    void (*undo)(void *arg);
    /* Log the outcome in the words of the origin. <times> only with MS_COMMIT_DONE. */
    void (*report)(void *arg, enum ms_outcome how, const char *errs,
                   const struct ms_commit_times *times);
    void *arg;
};

/* Commit <ch>. A refused file reload counts in the control segment's reload_failures and, when
 * <errs_out> is given, leaves the reason there (heap). Returns 0 (published) or -1 (the old
 * generation keeps serving). */
int ms_commit(const struct ms_change *ch, char **errs_out);

#endif
