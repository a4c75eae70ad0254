#!/usr/bin/env python3
"""Where a proxy's time goes: syscalls per request (strace -c) and hot functions (perf record).

Sets up the same backend and proxies as bench/bench.py (same configs, same CPU pinning), then for
each proxy and each chosen scenario:
  - attaches `strace -c -f` to the proxy's worker process(es) during a short wrk run and prints the
    syscalls per completed request (strace slows the proxy down; the counts, not the rate, matter);
  - with perf available, samples the worker with `perf record -e cpu-clock` (call graphs with
    --call-graph dwarf for dispatcher) during another wrk run and prints the hottest symbols.
Not part of `make bench`; run it by hand after `make all`:
    python3 bench/profile.py [--proxies dispatcher,nginx,haproxy] [--scenarios a,b,c]
                             [--seconds 4] [--no-perf] [--out DIR]
perf data and reports are left in DIR (default: a temporary directory that is printed).
"""

import argparse
import atexit
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402


def strace_counts(proxy, run):
    """Run run() with strace -c -f attached to the proxy's workers; return (result, {syscall: n})."""
    out = os.path.join(B.TMP, "strace-%s.txt" % proxy.name)
    argv = ["strace", "-c", "-f", "-o", out]
    for pid in proxy.pids():
        argv += ["-p", str(pid)]
    st = subprocess.Popen(B.pin(B.LOAD_CPU) + argv, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)     # let strace attach
    r = run()
    st.send_signal(signal.SIGINT)
    st.wait(30)
    counts = {}
    with open(out) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                counts[m.group(2)] = int(m.group(1))
    return r, counts


def perf_profile(proxy, sc, run, outdir, dwarf):
    data = os.path.join(outdir, "perf-%s-%s.data" % (sc, proxy.name))
    argv = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "2999", "-o", data]
    argv += ["--call-graph", "dwarf,16384"] if dwarf else ["-g"]
    argv += ["-p", ",".join(str(p) for p in proxy.pids())]
    pr = subprocess.Popen(B.pin(B.LOAD_CPU) + argv, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = run()
    pr.send_signal(signal.SIGINT)
    pr.wait(60)
    by_dso = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g",
                             "none", "--sort", "dso", "--percent-limit", "0.5"],
                            capture_output=True, text=True).stdout
    flat = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none",
                           "--sort", "dso,symbol", "--percent-limit", "0.7"],
                          capture_output=True, text=True).stdout
    flat = by_dso + flat
    with open(data + ".flat.txt", "w") as f:
        f.write(flat)
    if dwarf:
        # inclusive time per function (what a call costs including the syscalls it makes)
        tree = subprocess.run(["perf", "report", "-i", data, "--children", "--stdio",
                               "-g", "none", "--sort", "symbol", "--percent-limit", "1"],
                              capture_output=True, text=True).stdout
        with open(data + ".children.txt", "w") as f:
            f.write(tree)
    return r, flat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--proxies", default="dispatcher,nginx,haproxy")
    ap.add_argument("--scenarios", default="a,b,c",
                    help="a, b, c over plain HTTP; f, g over TLS (as in make bench)")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--no-perf", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    proxies_wanted = args.proxies.split(",")
    scenarios = args.scenarios.split(",")

    B.TMP = tempfile.mkdtemp(prefix="dsp-profile.")
    os.chmod(B.TMP, 0o755)
    outdir = args.out or B.TMP
    os.makedirs(outdir, exist_ok=True)
    B.KEEP = outdir == B.TMP
    atexit.register(B.cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, B._on_signal)
    os.sched_setaffinity(0, {B.LOAD_CPU})

    bport, bport2 = B.free_port(), B.free_port()
    B.start_backend(bport, bport2)
    tls = any(sc in ("f", "g") for sc in scenarios)
    if tls and any(sc in ("a", "b", "c") for sc in scenarios):
        B.die("profile plain (a, b, c) and TLS (f, g) scenarios in separate runs")
    cert = B.Cert() if tls else None
    proxies = {}
    for p in proxies_wanted:
        port = B.free_port()
        if p == "dispatcher":
            proxies[p] = B.start_dispatcher(
                "dispatcher", B.dsp_config(port, bport, bport2, [("*", None, "b")], tls=cert),
                port)[0]
        elif p == "nginx":
            proxies[p] = B.start_front_nginx(port, bport, tls=cert)
        else:
            proxies[p] = B.start_haproxy(port, bport, tls=cert)
        if tls:
            proxies[p].scheme, proxies[p].url_host = "https", "localhost"
            B.check_tls_proxy(proxies[p], cert)
        else:
            B.check_proxy(p, port)

    spec = {"a": ("/small", B.KEEPALIVE_CONNS, ()),
            "b": ("/small", B.KEEPALIVE_CONNS, ("Connection: close",)),
            "c": ("/1m", B.LARGE_CONNS, ()),
            "f": ("/small", B.TLS_CONNS, ()),
            "g": ("/small", B.TLS_CONNS, ("Connection: close",))}
    table = {}
    for sc in scenarios:
        path, conns, hdrs = spec[sc]
        for p, prx in proxies.items():
            B.wrk(prx, path, conns, 1, hdrs)     # warm-up
            r, counts = strace_counts(prx, lambda: B.wrk(prx, path, conns, args.seconds, hdrs))
            table[(sc, p)] = (r["requests"], counts)
            B.log("strace %s %s: %d requests, %.2f syscalls/request"
                  % (sc, p, r["requests"], sum(counts.values()) / max(1, r["requests"])))
            if not args.no_perf and shutil_which("perf"):
                r, flat = perf_profile(prx, sc, lambda: B.wrk(prx, path, conns, args.seconds, hdrs),
                                       outdir, dwarf=(p == "dispatcher"))
                B.log("perf %s %s: %.0f req/s, %.2f CPU us/req under perf; top symbols:"
                      % (sc, p, r["rps"], r["cpu_us"]))
                print("\n".join(line.rstrip(" -") for line in flat.splitlines()
                                if line.strip() and not line.startswith("#")))

    # syscalls per request, one table per scenario
    for sc in scenarios:
        names = sorted({n for (s, p), (_, c) in table.items() if s == sc for n in c},
                       key=lambda n: -max(table[(sc, p)][1].get(n, 0) / max(1, table[(sc, p)][0])
                                          for p in proxies))
        print("\nsyscalls per request, scenario (%s)" % sc)
        print("%-22s" % "syscall" + "".join("%12s" % p for p in proxies))
        for n in names:
            vals = [table[(sc, p)][1].get(n, 0) / max(1, table[(sc, p)][0]) for p in proxies]
            if max(vals) >= 0.005:
                print("%-22s" % n + "".join("%12.3f" % v for v in vals))
        print("%-22s" % "total" + "".join(
            "%12.3f" % (sum(table[(sc, p)][1].values()) / max(1, table[(sc, p)][0]))
            for p in proxies))
    print("\nperf data and reports in %s" % outdir)


def shutil_which(x):
    import shutil
    return shutil.which(x) is not None


if __name__ == "__main__":
    main()
