#!/usr/bin/env python3
"""Scenario (n) of the benchmark (issue 14): HTTP/2 /small through dispatcher and h2o.

The issue's HTTP/2 anchors are nginx, HAProxy (scenarios (i), (j) in bench.py) and h2o, an
HTTP/2-first server with its own codec. h2o is run here, side by side with dispatcher, on the
same load as (i) and (j): h2load -t1 -c10 -m100, GET /small from the bench's nginx backend over
HTTP/1.1, (i) over TLS with ALPN h2 (the bench certificate) and (j) h2c with prior knowledge.
h2o: Debian's 2.2, `num-threads: 1`, `proxy.reverse.url` (HTTP/1.1 keep-alive upstream; it adds
X-Forwarded-For/-Proto itself, has no X-Request-ID), pinned to the proxy CPU like dispatcher.
Uses bench/bench.py's machinery; run by bench/run.sh when BENCH_ONLY is unset or names n.
Writes bench/RESULTS-h2o.md (BENCH_OUT_N, "-" for none) and prints the same table.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import log, die  # noqa: E402

OUT = os.environ.get("BENCH_OUT_N", os.path.join(bench.ROOT, "bench", "RESULTS-h2o.md"))


def start_h2o(name, port, bport, cert=None):
    d = os.path.join(bench.TMP, name)
    os.makedirs(d, exist_ok=True)
    ssl = ("  ssl:\n    certificate-file: %s\n    key-file: %s\n" % (cert.pem, cert.key)
           if cert else "")
    conf = """%snum-threads: 1
pid-file: %s/h2o.pid
error-log: %s/error.log
listen:
  host: 127.0.0.1
  port: %d
%shosts:
  default:
    paths:
      /:
        proxy.reverse.url: http://127.0.0.1:%d/
""" % ("user: root\n" if os.geteuid() == 0 else "", d, d, port, ssl, bport)
    path = os.path.join(d, "h2o.conf")
    with open(path, "w") as f:
        f.write(conf)
    p = bench.spawn(name, ["h2o", "-c", path], bench.PROXY_CPU)
    bench.wait_port(port, p)
    px = bench.Proxy("h2o", p, port, lambda: [p.pid] + bench.children(p.pid))
    if cert:
        px.scheme, px.url_host = "https", "localhost"
    return px


def main():
    for tool in ("nginx", "h2o", "h2load", "taskset"):
        if bench.shutil.which(tool) is None:
            die("%s not found (apt-get install h2o nghttp2-client nginx)" % tool)
    bench.start_harness("-n")
    bport, bport2 = bench.free_port(), bench.free_port()
    bench.start_backend(bport, bport2)
    cert = bench.Cert()

    scen = ["i", "j"]
    kinds = ["dispatcher", "h2o"]
    proxies = {}
    for sc in scen:
        tls = cert if sc == "i" else None
        port = bench.free_port()
        proxies[sc, "dispatcher"] = bench.start_dispatcher(
            "dsp-n-" + sc, bench.dsp_config(port, bport, bport2, [("*", None, "b")], tls=tls),
            port)[0]
        if tls:
            proxies[sc, "dispatcher"].scheme = "https"
            proxies[sc, "dispatcher"].url_host = "localhost"
        proxies[sc, "h2o"] = start_h2o("h2o-" + sc, bench.free_port(), bport, tls)
        for k in kinds:
            if tls:
                bench.check_tls_proxy(proxies[sc, k], cert)
            else:
                bench.check_proxy(k, proxies[sc, k].port)
            bench.h2load(proxies[sc, k], "/small", 1)    # warm-up (and the h2/h2c check)

    res = {key: [] for key in proxies}
    for rnd in range(bench.ROUNDS):
        for sc in scen:
            for k in (kinds if rnd % 2 == 0 else kinds[::-1]):
                r = bench.h2load(proxies[sc, k], "/small", bench.DURATION)
                res[sc, k].append(r)
                log("round %d %s %-10s %8.0f req/s  p99 %7.2f ms  %6.2f us/req  cpu %3.0f%%  "
                    "other load %3.0f%%" % (rnd + 1, sc, k, r["rps"], r["p99_ms"], r["cpu_us"],
                                            r["cpu_pct"], r["other_pct"]))
    for p in proxies.values():
        bench.stop(p.proc)

    L = ["# Benchmark (n): HTTP/2 /small through dispatcher and h2o", "",
         "%s; dispatcher %s; h2load -t1 -c%d -m%d, %d s x %d rounds, medians; nginx backend "
         "(HTTP/1.1 keep-alive) and h2load on the load CPU, proxies pinned to CPU %d." % (
             time.strftime("%Y-%m-%d %H:%M %Z"), bench.git_rev(), bench.H2_CONNS,
             bench.H2_STREAMS, bench.DURATION, bench.ROUNDS, bench.PROXY_CPU), "",
         "| scenario | metric | dispatcher | h2o | dispatcher/h2o |", "|---|---|---:|---:|---:|"]
    checks = []
    for sc, label in (("i", "(i) HTTP/2 over TLS"), ("j", "(j) h2c, prior knowledge")):
        med = {k: {m: statistics.median(x[m] for x in res[sc, k])
                   for m in ("rps", "p99_ms", "cpu_us", "cpu_pct", "other_pct")} for k in kinds}
        d, h = med["dispatcher"], med["h2o"]
        for m, name, fmt in (("rps", "req/s", "%.0f"), ("p99_ms", "p99 ms", "%.2f"),
                             ("cpu_us", "proxy CPU µs/req", "%.2f"),
                             ("cpu_pct", "proxy CPU busy %", "%.0f"),
                             ("other_pct", "other load % of a CPU", "%.0f")):
            L.append("| %s | %s | %s | %s | %.2f |" % (label if m == "rps" else "", name,
                                                      fmt % d[m], fmt % h[m],
                                                      d[m] / h[m] if h[m] else float("nan")))
        checks.append("- [%s] %s req/s ≥ h2o: %.2fx; CPU per request %.2fx h2o's" % (
            "x" if d["rps"] >= h["rps"] else " ", label, d["rps"] / h["rps"],
            d["cpu_us"] / h["cpu_us"]))
    L += [""] + checks + [""]
    L.append("When \"proxy CPU busy\" is well below 100 %, the load CPU is the limit and req/s "
             "understates the proxy: compare CPU per request then.")
    text = "\n".join(L) + "\n"
    bench.emit(text, OUT)


if __name__ == "__main__":
    main()
