#!/usr/bin/env python3
"""Scenario (k) of the benchmark (issue 15): what a rate limit costs on the hot path.

Keep-alive GET /small (64 connections, wrk, as scenario (a)) through:
  - dispatcher, a route without middlewares;
  - dispatcher, the same route with `rate_limit` (client_ip key, a limit so high it never
    triggers: every request takes a token from the shared bucket and gets RateLimit-Remaining and
    RateLimit-Reset) followed by `headers` (one response field set);
  - nginx doing the same: `limit_req` (a zone keyed by $binary_remote_addr, never triggering) and
    `add_header`.
The goal (ISSUE 15): the dispatcher's CPU per request with the middlewares at most 1.1x that of
the plain route, and below nginx's. Uses bench/bench.py's machinery (CPU pinning, backend, wrk,
CPU accounting); run by bench/run.sh after bench.py when BENCH_ONLY is unset or names k.
Writes bench/RESULTS-rate_limit.md (BENCH_OUT_K, "-" for none) and prints the same table.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import log, die  # noqa: E402

OUT = os.environ.get("BENCH_OUT_K", os.path.join(bench.ROOT, "bench", "RESULTS-rate_limit.md"))
CONNS = bench.KEEPALIVE_CONNS

MIDDLEWARES = """middlewares = (
  { name = "limit"; type = "rate_limit"; average = 1000000; burst = 1000000; key = "client_ip"; },
  { name = "secure"; type = "headers"; response_set = ["X-Content-Type-Options: nosniff"]; }
);
"""


def dsp_conf(port, bport, bport2, with_mw):
    text = bench.dsp_config(port, bport, bport2, [("*", None, "b")])
    if not with_mw:
        return text
    text = text.replace('  { host = "*"; service = "b"; }',
                        '  { host = "*"; service = "b"; middlewares = ["limit", "secure"]; }')
    if 'middlewares = ["limit"' not in text:
        die("bench_rl: the route line of bench.dsp_config() changed")
    return text + MIDDLEWARES


def start_nginx_limited(port, bport):
    d, top = bench.nginx_common("nginx-limit")
    conf = top + """http {
%s    proxy_http_version 1.1;
    limit_req_zone $binary_remote_addr zone=limit:10m rate=1000000r/s;
    upstream b {
        server 127.0.0.1:%d;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:%d backlog=4096;
        location / {
            limit_req zone=limit burst=1000000 nodelay;
            add_header X-Content-Type-Options nosniff;
            proxy_pass http://b;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Request-ID $request_id;
            add_header X-Request-ID $request_id;
        }
    }
}
""" % (bench.nginx_http_common(d), bport, port)
    p = bench.start_nginx("nginx-limit", conf, port, bench.PROXY_CPU)
    return bench.Proxy("nginx-limit", p, port, lambda: bench.children(p.pid))


def check_headers(name, port, want):
    """The response to GET /small carries each field of <want> ({name: value or None})."""
    with bench.socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
        st, hdrs, _ = bench.read_response(s)
    for k, v in want.items():
        if st != 200 or k not in hdrs or (v is not None and hdrs[k] != v):
            die("%s: the response (%d) lacks %s: %s" % (name, st, k, hdrs))


def main():
    for tool in ("nginx", "wrk", "taskset"):
        if bench.shutil.which(tool) is None:
            die("%s not found (make bench installs nginx and wrk)" % tool)
    bench.start_harness("-k")
    bport, bport2 = bench.free_port(), bench.free_port()
    bench.start_backend(bport, bport2)

    kinds = ["plain", "rate_limit+headers", "nginx limit_req+add_header"]
    proxies = {}
    for k in kinds:
        port = bench.free_port()
        if k == "plain":
            proxies[k] = bench.start_dispatcher("dsp-plain", dsp_conf(port, bport, bport2, False),
                                                port)[0]
        elif k == "rate_limit+headers":
            proxies[k] = bench.start_dispatcher("dsp-mw", dsp_conf(port, bport, bport2, True),
                                                port)[0]
            check_headers(k, port, {"ratelimit-remaining": None, "ratelimit-reset": None,
                                    "x-content-type-options": "nosniff"})
        else:
            proxies[k] = start_nginx_limited(port, bport)
            check_headers(k, port, {"x-content-type-options": "nosniff"})
        bench.check_proxy(k, port)
        log("(k) %s on 127.0.0.1:%d" % (k, port))

    res = {k: [] for k in kinds}
    for k in kinds:
        bench.wrk(proxies[k], "/small", CONNS, 1)  # warm-up
    notes = []
    for rnd in range(bench.ROUNDS):
        order = kinds[rnd % 3:] + kinds[:rnd % 3]
        for k in order:
            r = bench.wrk(proxies[k], "/small", CONNS, bench.DURATION)
            res[k].append(r)
            log("round %d k %-28s %8.0f req/s  p99 %7.2f ms  %6.2f us/req  other load %3.0f%%%s"
                % (rnd + 1, k, r["rps"], r["p99_ms"], r["cpu_us"], r["other_pct"],
                   "  errors %d" % r["errors"] if r["errors"] else ""))
            if r["errors"]:
                notes.append("%s round %d: %d errors or non-2xx answers" % (k, rnd + 1,
                                                                            r["errors"]))
    for k in kinds:
        bench.stop(proxies[k].proc)

    med = {k: {m: statistics.median(x[m] for x in res[k]) for m in ("rps", "cpu_us", "p99_ms")}
           for k in kinds}
    plain, mw, ngx = (med[k]["cpu_us"] for k in kinds)
    L = ["# Benchmark (k): rate_limit + headers on the hot path", "",
         "%s; %d s x %d rounds, %d keep-alive connections, GET /small; medians." % (
             time.strftime("%Y-%m-%d %H:%M %Z"), bench.DURATION, bench.ROUNDS, CONNS), "",
         "| proxy | req/s | p99 ms | CPU us/req |", "|---|---|---|---|"]
    for k in kinds:
        L.append("| %s | %.0f | %.2f | %.2f |" % (k, med[k]["rps"], med[k]["p99_ms"],
                                                  med[k]["cpu_us"]))
    L += ["", "- middlewares / plain CPU per request: %.3fx (target <= 1.1x): %s" % (
        mw / plain, "met" if mw <= 1.1 * plain else "NOT met"),
        "- dispatcher with middlewares / nginx limit_req+add_header: %.3fx (target < 1): %s" % (
        mw / ngx, "met" if mw < ngx else "NOT met")]
    L += ["- " + n for n in notes]
    text = "\n".join(L) + "\n"
    bench.emit(text, OUT)


if __name__ == "__main__":
    main()
