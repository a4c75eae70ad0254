#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: a measure that noise cannot move.

Runs dispatcher-master (one worker) under `valgrind --tool=callgrind --trace-children=yes` in front
of dsp-testbackend, sends keep-alive GETs on one connection, and reads the worker's instruction
total. Two runs (N and 2N requests) are subtracted, so start-up and shutdown cancel out:

    python3 bench/icount.py [--master bin/dispatcher-master] [--backend build/release/dsp-testbackend]
                            [--requests 2000] [--path /x] [--body 0] [--client py|h2|h1load]
                            [--streams 10]

--client h2 drives the load with `h2load -n N -c 1 -m STREAMS` (HTTP/2 with prior knowledge on
the plain listener: one connection, STREAMS concurrent streams; --client grpc the same as gRPC
unary calls to a `protocol = "grpc"` service in front of bench/grpc_backend.c), --client h1load with `h2load
--h1 -n N -c 1 -m 1` (the same client in HTTP/1.1, for an HTTP/1 vs HTTP/2 comparison); the
default (py) is one keep-alive connection of sequential GETs from this script.

Compare two builds by pointing --master at each; ICOUNT_KEEP=1 keeps the profiles for
callgrind_annotate. Not part of `make bench` (valgrind is slow: a
few seconds per 1,000 requests); the wall-clock comparisons stay in bench/run.sh.
"""

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, deadline_s=60.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("port %d never opened" % port)


def send_requests(port, n, path, body):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    req = ("POST %s HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n" % (path, body)
           ).encode() + b"x" * body if body else (
        "GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path).encode()
    buf = b""
    for i in range(n):
        s.sendall(req)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[:end])
                total = end + 4 + (int(m.group(1)) if m else 0)
                if len(buf) >= total:
                    if not buf.startswith(b"HTTP/1.1 200"):
                        raise SystemExit("unexpected answer: %r" % buf[:80])
                    buf = buf[total:]
                    break
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise SystemExit("no answer to request %d within 30 s (got %r)" % (i, buf[:80]))
            if not chunk:
                raise SystemExit("connection closed")
            buf += chunk
    s.close()


def h2load_requests(port, n, path, client, streams, grpc_body=None):
    argv = ["h2load", "-n", str(n), "-c", "1", "-t", "1"]
    argv += ["--h1", "-m", "1"] if client == "h1load" else ["-m", str(streams)]
    if grpc_body:
        argv += ["-d", grpc_body, "-H", "content-type: application/grpc", "-H", "te: trailers"]
    r = subprocess.run(argv + ["http://127.0.0.1:%d%s" % (port, path)], capture_output=True,
                       text=True, timeout=600)
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", r.stdout)
    sc = re.search(r"status codes: (\d+) 2xx", r.stdout)
    if r.returncode != 0 or not m or int(m.group(2)) != n or not sc or int(sc.group(1)) != n:
        raise SystemExit("h2load did not complete %d requests:\n%s%s" % (n, r.stdout, r.stderr))


def one_run(args, n):
    tmp = tempfile.mkdtemp(prefix="dsp-icount-")
    bport, pport = free_port(), free_port()
    conf = os.path.join(tmp, "d.conf")
    with open(conf, "w") as f:
        f.write('workers = 1;\npid_file = "%s/d.pid";\nadmin = { socket = "%s/a.sock"; };\n'
                'log = { error = "%s/error.log"; level = "warn"; };\n'
                'listeners = ( { address = "127.0.0.1:%d"; } );\n'
                'services = ( { name = "b"; %sbackends = ( { address = "127.0.0.1:%d"; } ); } );\n'
                'routes = ( { host = "*"; service = "b"; %s} );\n%s'
                % (tmp, tmp, tmp, pport, 'protocol = "grpc"; ' if args.client == "grpc" else "",
                   bport,
                   "middlewares = [%s]; " % ", ".join('"%s"' % m for m in args.route_mw.split(","))
                   if args.route_mw else "", args.conf_extra))
    if args.client == "grpc":
        # bench/grpc_backend.c (built here): answers every call with a message and trailers
        exe = os.path.join(tmp, "grpc-backend")
        subprocess.run(["cc", "-O2", "-o", exe, os.path.join(HERE, "grpc_backend.c"), "-lnghttp2"],
                       check=True)
        bargv = [exe, "127.0.0.1", str(bport)]
        with open(os.path.join(tmp, "grpc.bin"), "wb") as f:
            f.write(b"\0\0\0\0\0")
        args.grpc_body = os.path.join(tmp, "grpc.bin")
    else:
        bargv = [args.backend, "-l", "127.0.0.1:%d" % bport]
    be = subprocess.Popen(bargv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    vg = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes",
                           "--callgrind-out-file=%s/cg.%%p" % tmp, args.master, "-c", conf],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        wait_port(bport)
        wait_port(pport)
        time.sleep(1.0)     # the worker maps its generation and settles
        if args.client == "py":
            send_requests(pport, n, args.path, args.body)
        else:
            h2load_requests(pport, n, args.path, args.client, args.streams,
                            getattr(args, "grpc_body", None))
    finally:
        os.killpg(vg.pid, signal.SIGTERM)
        try:
            vg.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(vg.pid, signal.SIGKILL)
        os.killpg(be.pid, signal.SIGTERM)
        be.wait()
    totals = {}
    for path in glob.glob(os.path.join(tmp, "cg.*")):
        cmd, tot = "", 0
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith("cmd:"):
                    cmd = line[4:].strip()
                m = re.match(r"(?:summary|totals):\s+(\d+)", line)
                if m:
                    tot = max(tot, int(m.group(1)))
        totals[path] = tot
    if os.environ.get("ICOUNT_KEEP"):
        print("profiles kept in %s (callgrind_annotate them)" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(totals) < 2:
        raise SystemExit("expected a master and a worker profile, got %d" % len(totals))
    # The worker is the one that did the requests: the larger count of the two children of
    # valgrind (the master only parses, binds and waits).
    return sorted(totals.values())[-1] if args.which == "max" else sorted(totals.values())


def retried(fn, *a):
    """Ports come from the kernel's free list: on a busy machine another program may take one
    between our check and our bind. One retry on a different pair settles it."""
    try:
        return fn(*a)
    except SystemExit as e:
        print("retrying once: %s" % e, file=sys.stderr)
        return fn(*a)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--master", default=os.path.join(ROOT, "bin", "dispatcher-master"))
    ap.add_argument("--backend", default=os.path.join(ROOT, "build", "release", "dsp-testbackend"))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--path", default="/x")
    ap.add_argument("--body", type=int, default=0, help="POST a body of this many bytes")
    ap.add_argument("--client", default="py", choices=("py", "h2", "h1load", "grpc"),
                    help="py: this script, HTTP/1.1 keep-alive; h2: h2load HTTP/2 prior "
                    "knowledge; h1load: h2load --h1; grpc: h2load gRPC unary calls to a "
                    "protocol = grpc service in front of bench/grpc_backend.c")
    ap.add_argument("--streams", type=int, default=10, help="h2: concurrent streams (-m)")
    ap.add_argument("--conf-extra", default="",
                    help="config text to add (e.g. a middlewares = (...) list)")
    ap.add_argument("--route-mw", default="", help="middleware names for the route, a,b")
    ap.add_argument("--which", default="max", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client != "py" and (args.body or shutil.which("h2load") is None):
        raise SystemExit("--client h2/h1load needs h2load (nghttp2-client) and no --body")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    n = args.requests
    a = retried(one_run, args, n)
    b = retried(one_run, args, 2 * n)
    per = (b - a) / n
    print("%s [%s]: %.0f instructions per request (%d requests: %d, %d requests: %d)"
          % (args.master, args.client, per, n, a, 2 * n, b))


if __name__ == "__main__":
    sys.exit(main())
