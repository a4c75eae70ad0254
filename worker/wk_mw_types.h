/* dispatcher: the built-in middleware types' worker hooks (worker/wk_mw_types.c), for the hook
 * table of worker/wk_mw.c, and their pure helpers (unit-tested). */
#ifndef DSP_WK_MW_TYPES_H
#define DSP_WK_MW_TYPES_H

#include <stddef.h>

#include "worker/wk_mw.h"

extern const struct wk_mw_hooks wk_mw_headers_hooks, wk_mw_static_hooks, wk_mw_ip_allow_hooks,
    wk_mw_redirect_hooks, wk_mw_strip_hooks, wk_mw_max_body_hooks, wk_mw_cors_hooks,
    wk_mw_compress_hooks;
/* rate_limit (worker/wk_rl.c) */
extern const struct wk_mw_hooks wk_mw_rate_limit_hooks;

/* strip_prefix: where the target <t>[0, n) goes on without <prefix>[0, plen) (whole path
 * segments only: "/api" strips "/api", "/api/x" and "/api?q", not "/apix"): the new target is
 * t[k, n) with, when *slash is set, t[k] replaced by '/' ("/api" -> "/", "/api?q" -> "/?q").
 * Returns k, or 0 when the prefix does not apply. */
size_t wk_mw_strip(const char *t, size_t n, const char *prefix, size_t plen, int *slash);
/* redirect_https: the host of a Host value without its port ("a.b:8080" -> "a.b", "[::1]:80"
 * -> "[::1]"): its length. */
size_t wk_mw_host_noport(const char *h, size_t n);

#endif
