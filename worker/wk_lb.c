/* dispatcher: which backend serves the next attempt, and what an attempt's outcome does to the
 * shared runtime state. All state that decides (tickets, active counts, up/down, circuits, probe
 * leases) lives in the runtime segment so every worker sees one truth and a crash loses nothing;
 * the rules are in shm/shm_lb.c. What a worker keeps for itself is only derived data: per
 * generation and service, the round-robin schedule or the Maglev table, built on first use. */
#include "worker/wk_internal.h"

#include <stdio.h>
#include <stdlib.h>

#include "common/log.h"
#include "shm/shm_lb.h"
#include "shm/shm_snap.h"

/* ---- per-generation derived tables ---------------------------------------------------------- */
#define LB_GENS 4 /* generations cached at once: the current one and those still draining */

struct lb_svc {
    uint32_t *tab; /* round-robin schedule or Maglev table, backend positions */
    uint32_t len;
    uint8_t state; /* 0 not built yet, 1 built, 2 cannot be built (out of memory) */
};

struct lb_gen {
    uint64_t gen; /* 0 = free */
    uint32_t nservices;
    struct lb_svc *svcs;
};

static struct lb_gen lb_gens[LB_GENS];

static void gen_free(struct lb_gen *g)
{
    for (uint32_t i = 0; i < g->nservices && g->svcs != NULL; i++) {
        free(g->svcs[i].tab);
    }
    free(g->svcs);
    g->svcs = NULL;
    g->nservices = 0;
    g->gen = 0;
}

static int gen_live(uint64_t gen)
{
    for (struct wk_gen *g = wk.gens; g != NULL; g = g->next) {
        if (g->gen == gen) {
            return 1;
        }
    }
    return 0;
}

/* The cache entry of <g>, made on first use; a generation no longer mapped (or else the oldest)
 * makes room. NULL when out of memory. */
static struct lb_gen *gen_cache(const struct wk_gen *g)
{
    struct lb_gen *victim = NULL;

    for (int i = 0; i < LB_GENS; i++) {
        if (lb_gens[i].gen == g->gen) {
            return &lb_gens[i];
        }
    }
    for (int i = 0; i < LB_GENS && victim == NULL; i++) {
        if (lb_gens[i].gen == 0 || !gen_live(lb_gens[i].gen)) {
            victim = &lb_gens[i];
        }
    }
    if (victim == NULL) {
        victim = &lb_gens[0];
        for (int i = 1; i < LB_GENS; i++) {
            if (lb_gens[i].gen < victim->gen) {
                victim = &lb_gens[i];
            }
        }
    }
    gen_free(victim);
    victim->svcs = calloc(g->snap->nservices ? g->snap->nservices : 1, sizeof(*victim->svcs));
    if (victim->svcs == NULL) {
        return NULL;
    }
    victim->nservices = g->snap->nservices;
    victim->gen = g->gen;
    return victim;
}

static void svc_build(struct lb_svc *ls, const struct shm_snap_hdr *s,
                      const struct shm_service *svc)
{
    const struct shm_backend *bes = shm_backends(s) + svc->backends_first;
    uint32_t n = svc->nbackends;
    uint32_t *w = malloc(n * sizeof(*w));
    uint32_t *rw = malloc(n * sizeof(*rw));
    uint64_t *keys = NULL;

    ls->state = 2;
    if (w == NULL || rw == NULL) {
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        w[i] = bes[i].weight;
    }
    if (svc->balance == SHM_BALANCE_IPHASH) {
        ls->len = shm_lb_maglev_size(n);
        ls->tab = malloc(ls->len * sizeof(*ls->tab));
        keys = malloc(n * sizeof(*keys));
        if (ls->tab == NULL || keys == NULL) {
            goto done;
        }
        for (uint32_t i = 0; i < n; i++) {
            /* The address alone: the table must not depend on positions or generations. */
            keys[i] = shm_lb_hash(shm_s(s, bes[i].address), bes[i].address.len, 0);
        }
        if (shm_lb_maglev_build(keys, w, n, ls->tab, ls->len) == 0) {
            ls->state = 1;
        }
    } else {
        ls->len = shm_lb_swrr_weights(w, n, rw);
        ls->tab = malloc(ls->len * sizeof(*ls->tab));
        if (ls->tab != NULL && shm_lb_swrr_build(rw, n, ls->tab, ls->len) == 0) {
            ls->state = 1;
        }
    }
done:
    if (ls->state != 1) {
        log_error("out of memory building the balancing table of service %s; using a plain scan",
                  shm_s(s, svc->name));
        free(ls->tab);
        ls->tab = NULL;
        ls->len = 0;
    }
    free(keys);
    free(rw);
    free(w);
}

/* The schedule or table of c's service, or NULL (then callers scan the backends in order). */
static const struct lb_svc *svc_table(const struct wk_attempt *a, const struct shm_service *svc)
{
    struct lb_gen *g = gen_cache(a->gen);
    struct lb_svc *ls;

    if (g == NULL || a->service >= g->nservices) {
        return NULL;
    }
    ls = &g->svcs[a->service];
    if (ls->state == 0) {
        svc_build(ls, a->gen->snap, svc);
    }
    return ls->state == 1 ? ls : NULL;
}

/* ---- choosing ------------------------------------------------------------------------------- */
struct pick {
    const struct wk_attempt *a;
    const struct shm_service *svc;
    const struct shm_backend *bes;
    struct shm_lb_policy pol;
    uint64_t rejected; /* positions < 64 already found unusable during this pick */
    uint64_t *cursor;  /* the service's shared ticket counter */
};

static struct shm_rt_backend *rtb(const struct shm_backend *b)
{
    return &wk.rt->backends[b->rt_slot];
}

/* May position <j> take this attempt? With <take>, SHM_LB_PROBE means the probe lease is ours. */
static int try_pos(struct pick *pk, uint32_t j, int take)
{
    uint64_t bit = j < 64 ? 1ull << j : 0;
    int r;

    if (bit & (pk->a->tried | pk->rejected)) {
        return SHM_LB_NO;
    }
    r = shm_lb_admit(rtb(&pk->bes[j]), &pk->pol, wk.now, take, NULL);
    if (r == SHM_LB_NO) {
        pk->rejected |= bit;
    }
    return r;
}

static uint64_t ticket(struct pick *pk)
{
    return __atomic_fetch_add(pk->cursor, 1, __ATOMIC_RELAXED);
}

/* Every position from a rotating start: the fallback when the schedule or ticket walk found
 * nothing usable. */
static int scan(struct pick *pk, int *res)
{
    uint32_t n = pk->svc->nbackends;
    uint32_t start = (uint32_t)(ticket(pk) % n);

    for (uint32_t k = 0; k < n; k++) {
        uint32_t j = start + k < n ? start + k : start + k - n;
        if ((*res = try_pos(pk, j, 1)) != SHM_LB_NO) {
            return (int)j;
        }
    }
    return -1;
}

/* Round-robin: the next ticket's slot of the smooth schedule. An unusable backend's slot is
 * passed over by taking another ticket (not by moving to the next slot, which would hand its
 * share to the one scheduled after it). */
static int pick_rr(struct pick *pk, int *res)
{
    const struct lb_svc *ls = svc_table(pk->a, pk->svc);
    uint32_t tries = 2 * pk->svc->nbackends + 8;

    for (uint32_t k = 0; ls != NULL && k < tries; k++) {
        uint32_t j = ls->tab[ticket(pk) % ls->len];
        if ((*res = try_pos(pk, j, 1)) != SHM_LB_NO) {
            return (int)j;
        }
    }
    /* Most of the service is out: scan for what is left. */
    return scan(pk, res);
}

/* Least-conn: fewest requests in flight across all workers relative to weight, compared as
 * (active + 1) / weight so that idle backends are ordered by weight. Ties are shared out in
 * turn by the service's shared ticket (a rotating start alone would hand a busy backend's turn to
 * whoever follows it). Two passes: count the ties, then take the ticket's one. */
static int lc_score(struct pick *pk, uint32_t j, uint64_t *a, uint64_t *w)
{
    int64_t act;

    if (try_pos(pk, j, 0) == SHM_LB_NO) {
        return 0;
    }
    act = __atomic_load_n(&rtb(&pk->bes[j])->active, __ATOMIC_RELAXED);
    *a = act > 0 ? (uint64_t)act + 1 : 1;
    *w = pk->bes[j].weight ? pk->bes[j].weight : 1;
    return 1;
}

static int pick_lc(struct pick *pk, int *res)
{
    uint32_t n = pk->svc->nbackends;

    for (int round = 0; round < 4; round++) {
        uint64_t t = ticket(pk), best_a = 0, best_w = 1, a, w, k;
        uint32_t nties = 0;
        int cand = -1;

        for (uint32_t j = 0; j < n; j++) {
            if (!lc_score(pk, j, &a, &w)) {
                continue;
            }
            if (nties == 0 || a * best_w < best_a * w) {
                best_a = a;
                best_w = w;
                nties = 1;
                cand = (int)j;
            } else if (a * best_w == best_a * w) {
                nties++;
            }
        }
        if (nties == 0) {
            return -1;
        }
        /* Counts may have moved since: if the ticket's tie is gone, the first one will do. */
        k = t % nties;
        for (uint32_t j = (uint32_t)cand; nties > 1 && j < n; j++) {
            if (lc_score(pk, j, &a, &w) && a * best_w == best_a * w && k-- == 0) {
                cand = (int)j;
                break;
            }
        }
        if ((*res = try_pos(pk, (uint32_t)cand, 1)) != SHM_LB_NO) {
            return cand;
        }
        /* Another worker took its probe lease first: choose again without it. */
    }
    return scan(pk, res);
}

/* ip-hash: the client's Maglev slot; when that backend is unusable, the next slots in the table,
 * which spreads its clients over the others in proportion and leaves everyone else in place. */
static int pick_hash(struct pick *pk, int *res)
{
    const struct lb_svc *ls = svc_table(pk->a, pk->svc);
    /* The request's client (PROXY source or trusted X-Forwarded-For), not the hop before us. */
    uint64_t h = shm_lb_client_hash(pk->a->client_family, pk->a->client_ip);
    uint32_t n = pk->svc->nbackends;

    if (ls != NULL) {
        uint32_t at = (uint32_t)(h % ls->len);
        for (uint32_t k = 0; k < ls->len; k++) {
            uint32_t j = ls->tab[at];
            if ((*res = try_pos(pk, j, 1)) != SHM_LB_NO) {
                return (int)j;
            }
            at = at + 1 == ls->len ? 0 : at + 1;
        }
        return -1;
    }
    for (uint32_t k = 0; k < n; k++) {
        uint32_t j = (uint32_t)((h + k) % n);
        if ((*res = try_pos(pk, j, 1)) != SHM_LB_NO) {
            return (int)j;
        }
    }
    return -1;
}

/* The 503 message: name the open circuits when some backend is out for that reason. */
static void no_backend(struct pick *pk, char *why, size_t whylen)
{
    const struct shm_snap_hdr *s = pk->a->gen->snap;
    const char *name = shm_s(s, pk->svc->name);
    const struct shm_backend *first = NULL;
    uint32_t nopen = 0;

    for (uint32_t j = 0; j < pk->svc->nbackends; j++) {
        int reason = 0;
        if (shm_lb_admit(rtb(&pk->bes[j]), &pk->pol, wk.now, 0, &reason) == SHM_LB_NO &&
            reason == SHM_LB_WHY_OPEN) {
            first = first ? first : &pk->bes[j];
            nopen++;
        }
    }
    if (nopen > 0 && !(s->errors_flags & SHM_ERRORS_EXPOSE_BACKEND)) {
        /* Addresses only with errors.expose_backend. */
        snprintf(why, whylen, "Circuit open for %u backend%s of service %s", nopen,
                 nopen > 1 ? "s" : "", name);
    } else if (nopen == 1) {
        snprintf(why, whylen, "Circuit open for backend %s of service %s", shm_s(s, first->address),
                 name);
    } else if (nopen > 1) {
        snprintf(why, whylen, "Circuit open for backend %s (and %u more) of service %s",
                 shm_s(s, first->address), nopen - 1, name);
    } else {
        snprintf(why, whylen, "No healthy backend for service %s", name);
    }
}

static const struct shm_service *at_service(const struct wk_attempt *a)
{
    return &shm_services(a->gen->snap)[a->service];
}

static void pick_init(struct pick *pk, const struct wk_attempt *a)
{
    pk->a = a;
    pk->svc = at_service(a);
    pk->bes = shm_backends(a->gen->snap) + pk->svc->backends_first;
    shm_lb_policy_of(pk->svc, &pk->pol);
    pk->rejected = 0;
    pk->cursor = &wk.rt->services[pk->svc->rt_slot].rr_cursor;
}

int wk_lb_pick(struct wk_attempt *a, char *why, size_t whylen)
{
    struct pick pk;
    int j = -1, res = SHM_LB_NO;

    pick_init(&pk, a);
    a->flags &= ~WK_AT_PROBE;
    if (pk.svc->nbackends > 0) {
        switch (pk.svc->balance) {
        case SHM_BALANCE_LEASTCONN:
            j = pick_lc(&pk, &res);
            break;
        case SHM_BALANCE_IPHASH:
            j = pick_hash(&pk, &res);
            break;
        default:
            j = pick_rr(&pk, &res);
            break;
        }
    }
    if (j < 0) {
        no_backend(&pk, why, whylen);
        return -1;
    }
    if (res == SHM_LB_PROBE) {
        a->flags |= WK_AT_PROBE;
    }
    return j;
}

int wk_lb_can_retry(const struct wk_attempt *a)
{
    struct pick pk;

    pick_init(&pk, a);
    for (uint32_t j = 0; j < pk.svc->nbackends; j++) {
        if (try_pos(&pk, j, 0) != SHM_LB_NO) {
            return 1;
        }
    }
    return 0;
}

/* ---- outcomes ------------------------------------------------------------------------------- */
static const char *fail_text(int fail)
{
    switch (fail) {
    case WK_FAIL_CONNECT:
        return "connection refused";
    case WK_FAIL_TLS:
        return "TLS handshake failed";
    case WK_FAIL_TLSVERIFY:
        return "TLS certificate verification failed";
    case WK_FAIL_CTIMEOUT:
        return "connect timed out";
    case WK_FAIL_ABORT:
        return "connection reset";
    case WK_FAIL_RTIMEOUT:
        return "response timed out";
    case WK_FAIL_BAD:
        return "invalid response";
    case 0:
        return "5xx response";
    default:
        return "closed without a response";
    }
}

static uint64_t keep_logged_ms;

static const char *keep_text(int why)
{
    switch (why) {
    case SHM_LB_KEEP_CAP:
        return "max_ejection_percent of its backends are out already";
    case SHM_LB_KEEP_LAST:
        return "it is the last healthy backend of the service";
    default:
        return "another ejection of the service was being decided";
    }
}

void wk_lb_result(struct wk_attempt *a, int fail, unsigned status)
{
    const struct shm_service *svc = at_service(a);
    const struct shm_snap_hdr *s = a->gen->snap;
    const struct shm_backend *bes = shm_backends(s) + svc->backends_first;
    const struct shm_backend *be = &bes[a->backend];
    struct shm_rt_backend *rb = rtb(be);
    struct shm_lb_policy pol;
    int probe = (a->flags & WK_AT_PROBE) != 0;
    int outcome, why = 0;
    unsigned t;

    a->flags &= ~WK_AT_PROBE;
    shm_lb_policy_of(svc, &pol);
    switch (fail) {
    case 0:
        outcome = status >= 500 && pol.cb_count_5xx ? SHM_LB_FAIL_5XX : SHM_LB_OK;
        break;
    case WK_FAIL_CONNECT:
    case WK_FAIL_TLS:
    case WK_FAIL_TLSVERIFY:
        /* Refused or unreachable (or no TLS session could be set up): nothing a client can
         * provoke, so it counts in full at once. */
        outcome = SHM_LB_FAIL_REFUSED;
        break;
    case WK_FAIL_CTIMEOUT:
    case WK_FAIL_ABORT:
        /* A reset may be one client's doing (a request the backend aborts on): one count. */
        outcome = SHM_LB_FAIL_CONN;
        break;
    case WK_FAIL_STALE:
        outcome = SHM_LB_NEUTRAL;
        break;
    default:
        outcome = SHM_LB_FAIL;
        break;
    }
    if (fail != 0 && fail != WK_FAIL_STALE) {
        __atomic_fetch_add(&rb->errors, 1, __ATOMIC_RELAXED);
    }
    t = shm_lb_outcome(rb, &pol, outcome, probe, wk.now);
    if (t & SHM_LB_T_EJECT) {
        t |= shm_lb_eject(wk.rt->backends, &wk.rt->services[svc->rt_slot], bes, svc->nbackends,
                          a->backend, &pol, wk.now, &why);
        /* Kept in rotation: said when the count is first reached (a later failure asks again,
         * silently), and at most once a second by this worker, whatever a client provokes. */
        if (!(t & SHM_LB_T_DOWN) && (t & SHM_LB_T_EJECT_FIRST) && why != SHM_LB_KEEP_GONE &&
            wk.now >= keep_logged_ms + 1000) {
            keep_logged_ms = wk.now;
            log_warn("backend %s of service %s is due for passive ejection (%s) but stays in "
                     "rotation: %s",
                     shm_s(s, be->address), shm_s(s, svc->name), fail_text(fail), keep_text(why));
        }
    }
    /* One line per transition (the compare-and-swap winner logs it), never one per request. */
    if (t & SHM_LB_T_DOWN) {
        log_warn("backend %s of service %s is down: %s", shm_s(s, be->address), shm_s(s, svc->name),
                 fail_text(fail));
    }
    if (t & SHM_LB_T_UP) {
        log_info("backend %s of service %s is up again: trial request answered",
                 shm_s(s, be->address), shm_s(s, svc->name));
    }
    if (t & SHM_LB_T_OPEN) {
        log_warn("circuit open for backend %s of service %s: %s%s", shm_s(s, be->address),
                 shm_s(s, svc->name), probe ? "probe failed, " : "", fail_text(fail));
    }
    if (t & SHM_LB_T_CLOSE) {
        log_info("circuit closed for backend %s of service %s: probe succeeded",
                 shm_s(s, be->address), shm_s(s, svc->name));
    }
}

void wk_lb_abort(struct wk_attempt *a)
{
    const struct shm_service *svc;
    const struct shm_backend *be;

    if (!(a->flags & WK_AT_PROBE)) {
        return;
    }
    /* The client went away mid-attempt: the probe proved nothing either way; let another
     * request probe at once instead of waiting for the lease to lapse. */
    a->flags &= ~WK_AT_PROBE;
    svc = at_service(a);
    be = &shm_backends(a->gen->snap)[svc->backends_first + a->backend];
    __atomic_store_n(&rtb(be)->probe_until_ms, 0, __ATOMIC_RELEASE);
}
