#!/usr/bin/env python3
"""Side-by-side benchmark of dispatcher, nginx and HAProxy as reverse proxies (issue 3).

One nginx backend (a small fixed body at /small, 1 MiB at /1m) runs on the load CPU together with
wrk and the idle-connection client; the three proxies run pinned to the proxy CPU. Every scenario
runs against every proxy in turn, for several rounds, and the medians go into one table, printed
and written to bench/RESULTS.md. Numbers are only comparable within one run.

Run through `make bench` (installs nginx, haproxy and wrk, builds, then runs bench/run.sh).
Environment knobs, mostly for development runs:
  DSP_MASTER       dispatcher-master binary (default: bin/dispatcher-master of this checkout)
  BENCH_DURATION   seconds per wrk run (default 5)
  BENCH_ROUNDS     rounds per throughput scenario and reloads (default 5; (d) runs min(3, this))
  BENCH_IDLE_CONNS idle keep-alive connections for scenario (d) (default 10000)
  BENCH_ROUTES     routes for scenario (e) (default 100000)
  BENCH_ONLY       comma-separated subset of a,b,c,d,e,f,g,h,i,j,l (default all)
  BENCH_SLOW_CONNS slowloris connections held open during scenario (h) (default 2000)
  BENCH_TLS_ROUNDS rounds for the TLS scenarios (f), (g) (default min(3, BENCH_ROUNDS))
  BENCH_OUT        results file (default bench/RESULTS.md; "-" writes none)
  BENCH_KEEP=1     keep the temporary directory (configs, logs) for inspection
  BENCH_QUIET_WAIT seconds to wait at start for other jobs on the machine to go quiet (default 60)
  BENCH_GZIP_LEVEL gzip level of scenario (l), for dispatcher and nginx alike (default 6)
"""

import atexit
import datetime
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DSP_MASTER = os.environ.get("DSP_MASTER", os.path.join(ROOT, "bin", "dispatcher-master"))
DURATION = int(os.environ.get("BENCH_DURATION", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "10000"))
NROUTES = int(os.environ.get("BENCH_ROUTES", "100000"))
ONLY = set(os.environ.get("BENCH_ONLY", "a,b,c,d,e,f,g,h,i,j,l").replace(" ", "").split(","))
TLS_ROUNDS = int(os.environ.get("BENCH_TLS_ROUNDS", str(min(3, ROUNDS))))
OUT = os.environ.get("BENCH_OUT", os.path.join(ROOT, "bench", "RESULTS.md"))
KEEP = os.environ.get("BENCH_KEEP", "") not in ("", "0")
QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT", "60"))
SLOW_CONNS = int(os.environ.get("BENCH_SLOW_CONNS", "2000"))

SMALL_BODY = "dispatcher-bench small response body, 64 bytes of fixed text...\n"
assert len(SMALL_BODY) == 64
ONE_MIB = 1 << 20
KEEPALIVE_CONNS = 64    # scenario (a), (b) and (e)
LARGE_CONNS = 16        # scenario (c)
TLS_CONNS = 50          # scenarios (f) and (g)
SLOW_CLIENTS = 10       # scenario (h): the normal clients measured calm and under attack
H2_CONNS, H2_STREAMS = 10, 100     # scenarios (i), (j): h2load connections x concurrent streams
GZIP_CONNS = 16         # scenario (l): gzip of a 100 KiB JSON response
GZIP_LEVEL = int(os.environ.get("BENCH_GZIP_LEVEL", "6"))
GZIP_PROXIES = ["dispatcher", "nginx"]
# scenario (h): the proxies' request-head timeout, the same for all three and well above one attack
# run, so that no proxy sheds the slowloris connections during the measurement
SLOW_HEADER_TIMEOUT_S = 60
# TLS 1.2 suites for nginx and HAProxy (dispatcher's built-in policy is the same ECDHE+AEAD set)
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
PROBE_HOST = "probe.bench"
MEASURED_HOST = "h050000.bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
import resource  # noqa: E402
NOFILE = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
if NOFILE == resource.RLIM_INFINITY or NOFILE < 0:
    NOFILE = 65536

PROXIES = ["dispatcher", "nginx", "haproxy"]
LABEL = {"dispatcher": "dispatcher", "nginx": "nginx", "haproxy": "HAProxy"}


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def die(msg):
    log("FAILED: " + msg)
    sys.exit(1)


# ---- CPUs ---------------------------------------------------------------------------------------
_cpus = sorted(os.sched_getaffinity(0))
LOAD_CPU = 0 if 0 in _cpus else _cpus[0]
PROXY_CPU = 1 if 1 in _cpus else (_cpus[1] if len(_cpus) > 1 else LOAD_CPU)


def pin(cpu):
    return ["taskset", "-c", str(cpu)]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ---- processes ----------------------------------------------------------------------------------
TMP = None
_procs = []     # Popen objects we started, each leading its own process group


def spawn(name, argv, cpu, logname=None):
    """Start argv pinned to cpu in a new session; output goes to TMP/<logname or name>.log."""
    logf = open(os.path.join(TMP, (logname or name) + ".log"), "ab")
    p = subprocess.Popen(pin(cpu) + argv, stdin=subprocess.DEVNULL,
                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, cwd=TMP)
    logf.close()
    p.bench_name = name
    _procs.append(p)
    return p


def stop(p, timeout=5.0):
    """SIGTERM the process p (a master stops its own workers), then SIGKILL what is left of the
    process group it leads after timeout. Only ever our own processes."""
    if p in _procs:
        _procs.remove(p)
    try:
        os.kill(p.pid, signal.SIGTERM)      # the master stops its own workers
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    # The group may still hold children (workers) after the leader exited.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if p.poll() is None:
        p.kill()
        p.wait()


def cleanup():
    for p in list(reversed(_procs)):
        stop(p, timeout=3.0)
    if TMP and os.path.isdir(TMP):
        if KEEP:
            log("kept %s" % TMP)
        else:
            shutil.rmtree(TMP, ignore_errors=True)


def _on_signal(signum, frame):
    log("caught signal %d, stopping" % signum)
    sys.exit(130)


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return sorted(int(x) for x in out.split())


def cpu_ticks_split(pids):
    """(utime, stime) ticks summed over pids, from /proc/PID/stat."""
    u = s = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rpartition(")")[2].split()
            u += int(fields[11])
            s += int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return u, s


def cpu_ticks(pids):
    return sum(cpu_ticks_split(pids))


def machine_busy_ticks():
    """user+nice+system ticks of all CPUs (irq/softirq left out: loopback traffic lands there)."""
    with open("/proc/stat") as f:
        v = f.readline().split()[1:]
    return int(v[0]) + int(v[1]) + int(v[2])


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_quiet(limit_s, threshold=0.25):
    """Wait up to limit_s for the machine to use less than threshold CPUs (shared machines: other
    jobs' builds and tests skew req/s). Returns the last measured load in CPUs."""
    deadline = time.monotonic() + limit_s
    waited = False
    while True:
        m0, t0 = machine_busy_ticks(), time.monotonic()
        time.sleep(1.0)
        load = (machine_busy_ticks() - m0) / CLK_TCK / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            if waited:
                log("machine load now %.2f CPUs" % load)
            return load
        if not waited:
            log("other jobs use %.2f CPUs; waiting up to %.0fs for quiet" % (load, limit_s))
            waited = True


BACKEND_PIDS = []      # the backend nginx worker(s), filled in by start_backend


def rss_bytes(pids):
    total = 0
    for pid in pids:
        with open("/proc/%d/statm" % pid) as f:
            total += int(f.read().split()[1]) * PAGE
    return total


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            die("%s exited with %s while starting (see %s/%s.log)"
                % (proc.bench_name, proc.returncode, TMP, proc.bench_name))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    die("%s did not listen on 127.0.0.1:%d within %.0fs" % (proc.bench_name, port, timeout))


# ---- a tiny HTTP/1.1 client (sanity checks, reload probe, idle connections) ----------------------
def read_response(sock):
    """Read one Content-Length framed response; return (status, headers dict, body bytes)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    if "content-length" not in hdrs:
        raise ConnectionError("response without Content-Length: %r" % lines[0])
    need = int(hdrs["content-length"])
    body = bytearray(rest)
    while len(body) < need:
        chunk = sock.recv(max(65536, need - len(body)))
        if not chunk:
            raise ConnectionError("connection closed inside the body")
        body += chunk
    return status, hdrs, bytes(body)


def http_get(port, path, host="bench", timeout=5.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)).encode())
        return read_response(s)


def check_proxy(name, port, host="bench"):
    st, _, body = http_get(port, "/small", host)
    if st != 200 or body.decode() != SMALL_BODY:
        die("%s: GET /small answered %d %r" % (name, st, body[:80]))
    st, _, body = http_get(port, "/1m", host)
    if st != 200 or len(body) != ONE_MIB:
        die("%s: GET /1m answered %d with %d bytes" % (name, st, len(body)))


# ---- backend and proxies ------------------------------------------------------------------------
def nginx_common(name):
    d = os.path.join(TMP, name)
    os.makedirs(d, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return d, """%sworker_processes 1;
daemon off;
master_process on;
pid %s/nginx.pid;
error_log %s/error.log warn;
worker_rlimit_nofile %d;
events { worker_connections %d; use epoll; }
""" % (user, d, d, NOFILE, NOFILE - 100)


def nginx_http_common(d):
    return """    access_log off;
    client_body_temp_path %s/client_body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server_tokens off;
""" % (d, d, d, d, d)


def start_nginx(name, conf, port, cpu):
    d = os.path.join(TMP, name)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    p = spawn(name, ["nginx", "-p", d + "/", "-e", os.path.join(d, "error.log"), "-c", path], cpu)
    wait_port(port, p)
    return p


def start_backend(port, port2):
    www = os.path.join(TMP, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "1m"), "wb") as f:
        f.write((b"0123456789abcdef" * 64 + b"\n")[:1024] * 1024)
    with open(os.path.join(www, "100k.json"), "wb") as f:
        f.write(json_100k())
    d, top = nginx_common("backend")
    conf = top + """http {
%s    default_type text/plain;
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=600s;
    server {
        listen 127.0.0.1:%d backlog=4096;
        location = /small { return 200 "%s"; }
        location = /1m { default_type application/octet-stream; alias %s/1m; }
        location = /json100k { default_type application/json; alias %s/100k.json; }
    }
    server {
        listen 127.0.0.1:%d;
        location / { return 200 "second backend\\n"; }
    }
}
""" % (nginx_http_common(d), port, SMALL_BODY.replace("\n", "\\n"), www, www, port2)
    p = start_nginx("backend", conf, port, LOAD_CPU)
    BACKEND_PIDS[:] = children(p.pid)
    st, _, body = http_get(port, "/small")
    if st != 200 or body.decode() != SMALL_BODY:
        die("backend /small answered %d %r" % (st, body))
    return p


def dsp_config(port, bport, bport2, routes, tls=None, header_timeout_s=None):
    """routes: list of (host, path or None, service); tls: None or the Cert to serve (the
    listener then terminates TLS)."""
    out = ["# generated by bench/bench.py",
           "workers = 1;",
           'log = { error = "%s/dispatcher-error.log"; level = "warn"; access = "off"; };' % TMP,
           "limits = { max_connections = 30000; idle_timeout_ms = 60000; "
           "shutdown_timeout_ms = 1000;%s };" % (
               " header_timeout_ms = %d;" % (header_timeout_s * 1000) if header_timeout_s else ""),
           ('listeners = ( { address = "127.0.0.1:%d"; tls = true; } );' % port if tls else
            'listeners = ( { address = "127.0.0.1:%d"; } );' % port),
           'services = ( { name = "b"; backends = [ "127.0.0.1:%d" ]; },' % bport,
           '             { name = "b2"; backends = [ "127.0.0.1:%d" ]; } );' % bport2,
           "routes = ("]
    if tls:
        out.insert(5, 'tls = { certificates = ( { cert = "%s"; key = "%s"; } ); };'
                   % (tls.pem, tls.key))
    rl = []
    for host, path, svc in routes:
        if path:
            rl.append('  { host = "%s"; path = "%s"; service = "%s"; }' % (host, path, svc))
        else:
            rl.append('  { host = "%s"; service = "%s"; }' % (host, svc))
    out.append(",\n".join(rl))
    out.append(");")
    return "\n".join(out) + "\n"


def many_routes(n, probe_service):
    """n routes of mixed kinds: exact hosts, exact hosts with a path, wildcard suffixes; the
    measured host and the reload probe are among them."""
    routes = [(MEASURED_HOST, None, "b"), (PROBE_HOST, None, probe_service)]
    i = 0
    while len(routes) < n:
        i += 1
        if i == 50000:
            continue
        k = i % 4
        if k == 0:
            routes.append(("*.w%06d.bench" % i, None, "b"))
        elif k == 1:
            routes.append(("h%06d.bench" % i, "/p%d/" % (i % 97), "b2"))
        else:
            routes.append(("h%06d.bench" % i, None, "b"))
    return routes


def write_atomic(path, text):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Proxy:
    def __init__(self, name, proc, port, pids_fn, host="bench"):
        self.name, self.proc, self.port, self.pids_fn, self.host = name, proc, port, pids_fn, host
        # wrk's URL: TLS proxies are addressed as https://localhost:PORT, since wrk sends the URL
        # host as SNI (an IP address as SNI gets dispatcher's self-signed default certificate)
        self.scheme, self.url_host = "http", "127.0.0.1"

    def pids(self):
        return self.pids_fn()


def start_dispatcher(name, conf_text, port):
    conf = os.path.join(TMP, name + ".conf")
    write_atomic(conf, conf_text)
    chk = subprocess.run([DSP_MASTER, "-t", "-c", conf], capture_output=True, text=True)
    if chk.returncode != 0:
        die("%s: dispatcher-master -t rejected the bench config:\n%s%s"
            % (name, chk.stdout, chk.stderr))
    p = spawn(name, [DSP_MASTER, "-c", conf], PROXY_CPU)
    wait_port(port, p, timeout=60)
    deadline = time.monotonic() + 10
    while not children(p.pid):
        if time.monotonic() > deadline:
            die("%s: no worker process under master %d" % (name, p.pid))
        time.sleep(0.02)
    return Proxy(name, p, port, lambda: children(p.pid)), conf


def start_front_nginx(port, bport, tls=None, name="nginx", header_timeout_s=None, h2=False,
                      http_extra=""):
    d, top = nginx_common(name)
    # HTTP/2 (scenarios (i), (j)): nginx 1.22 spells `http2 on` as a listen parameter; without
    # ssl it is h2c with prior knowledge, as h2load speaks it
    h2p = " http2" if h2 else ""
    listen = "listen 127.0.0.1:%d%s backlog=4096;" % (port, h2p)
    if tls:
        listen = """listen 127.0.0.1:%d ssl%s backlog=4096;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;
        ssl_ciphers %s;
        ssl_prefer_server_ciphers on;
        ssl_session_tickets on;
        ssl_session_timeout 2h;""" % (port, h2p, tls.pem, tls.key, TLS12_CIPHERS)
    if header_timeout_s:
        listen += "\n        client_header_timeout %ds;" % header_timeout_s
    conf = top + """http {
%s    proxy_http_version 1.1;
    proxy_max_temp_file_size 0;
%s    upstream b {
        server 127.0.0.1:%d;
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        %s
        location / {
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
""" % (nginx_http_common(d), http_extra, bport, listen)
    p = start_nginx(name, conf, port, PROXY_CPU)
    return Proxy(name, p, port, lambda: children(p.pid))


def start_haproxy(port, bport, tls=None, name="haproxy", header_timeout_s=None, h2=False):
    d = os.path.join(TMP, name)
    os.makedirs(d, exist_ok=True)
    tls_global, bind, proto = "", "bind 127.0.0.1:%d" % port, "http"
    if h2 and not tls:
        bind += " proto h2"     # (j): h2c with prior knowledge
    if tls:
        tls_global = """    ssl-default-bind-ciphers %s
    ssl-default-bind-ciphersuites %s
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-default-bind-curves X25519:P-256
""" % (TLS12_CIPHERS, TLS13_SUITES)
        bind = "bind 127.0.0.1:%d ssl crt %s alpn %s" % (
            port, tls.combined, "h2,http/1.1" if h2 else "http/1.1")
        proto = "https"
    conf = """global
    nbthread 1
    maxconn %d
    # HAProxy sizes its fd limit as 2 x maxconn; where the hard limit is lower (20000 here) it
    # must still start, and 10,000 idle clients need only about 10,000 fds.
    no strict-limits
    hard-stop-after 3s
%s
defaults
    mode http
    option http-keep-alive
    option forwardfor
    http-reuse always
    maxconn %d
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request %ds
    timeout http-keep-alive 60s

frontend fe
    %s
    unique-id-format %%{+X}o%%ci%%cp%%fp%%Ts%%rt
    unique-id-header X-Request-ID
    http-request set-header X-Forwarded-Proto %s
    http-request set-header X-Forwarded-Host %%[req.hdr(host)]
    http-request set-header X-Real-IP %%[src]
    http-response set-header X-Request-ID %%[unique-id]
    default_backend be

backend be
    server s1 127.0.0.1:%d
""" % (max(IDLE_CONNS, SLOW_CONNS) + 1000, tls_global, max(IDLE_CONNS, SLOW_CONNS) + 1000,
       header_timeout_s or 10, bind, proto, bport)
    path = os.path.join(d, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    chk = subprocess.run(["haproxy", "-c", "-q", "-f", path], capture_output=True, text=True)
    if chk.returncode != 0:
        die("haproxy -c rejected the bench config:\n%s%s" % (chk.stdout, chk.stderr))
    p = spawn(name, ["haproxy", "-db", "-f", path], PROXY_CPU)
    wait_port(port, p)
    return Proxy(name, p, port, lambda: [p.pid])


# ---- wrk ----------------------------------------------------------------------------------------
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk(proxy, path, conns, duration, headers=()):
    argv = pin(LOAD_CPU) + ["wrk", "-t1", "-c%d" % conns, "-d%ds" % duration,
            "--timeout", "5s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    argv += ["-H", "Host: %s" % proxy.host,
             "%s://%s:%d%s" % (proxy.scheme, proxy.url_host, proxy.port, path)]
    pids = proxy.pids()
    b0, m0, w0 = cpu_ticks(BACKEND_PIDS), machine_busy_ticks(), children_cpu_s()
    t0, (u0, s0) = time.monotonic(), cpu_ticks_split(pids)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    t1, (u1, s1) = time.monotonic(), cpu_ticks_split(pids)
    c0, c1 = u0 + s0, u1 + s1
    b1, m1, w1 = cpu_ticks(BACKEND_PIDS), machine_busy_ticks(), children_cpu_s()
    out = r.stdout
    if r.returncode != 0:
        die("wrk failed (%d): %s %s" % (r.returncode, out, r.stderr))
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    if not (m and rps and p99):
        die("cannot parse wrk output:\n" + out + r.stderr)
    nreq = int(m.group(1))
    errs = 0
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if se:
        errs += sum(int(x) for x in se.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errs += int(non2xx.group(1))
    restarted = proxy.pids() != pids
    cpu_s = (c1 - c0) / CLK_TCK
    # CPU time of everything that is not this benchmark (other jobs on the machine), in % of one
    # CPU: a noisy neighbour shows here rather than as an unexplained drop in req/s.
    other_s = (m1 - m0 - (c1 - c0) - (b1 - b0)) / CLK_TCK - (w1 - w0)
    return {
        "rps": float(rps.group(1)),
        "p99_ms": float(p99.group(1)) * _UNIT[p99.group(2)],
        "cpu_us": (cpu_s * 1e6 / nreq) if nreq else float("nan"),
        "cpu_pct": 100.0 * cpu_s / (t1 - t0),
        "sys_pct": (100.0 * (s1 - s0) / (c1 - c0)) if c1 > c0 else float("nan"),
        "backend_us": ((b1 - b0) / CLK_TCK * 1e6 / nreq) if nreq else float("nan"),
        "wrk_us": ((w1 - w0) * 1e6 / nreq) if nreq else float("nan"),
        "other_pct": max(0.0, 100.0 * other_s / (t1 - t0)),
        "requests": nreq,
        "errors": errs,
        "restarted": restarted,
    }


def h2load(proxy, path, duration, extra=()):
    """Scenarios (i), (j): h2load -t1 -c H2_CONNS -m H2_STREAMS for duration seconds, pinned to the
    load CPU; p99 from its per-request log. Same result fields as wrk(). <extra>: more h2load
    arguments (scenario (m): the request body and gRPC's header fields)."""
    logp = os.path.join(TMP, "h2load-requests.log")
    argv = pin(LOAD_CPU) + ["h2load", "-t1", "-c%d" % H2_CONNS, "-m%d" % H2_STREAMS,
                            "-D", str(duration), "--log-file", logp] + list(extra) + [
                                "%s://%s:%d%s" % (proxy.scheme, proxy.url_host, proxy.port, path)]
    pids = proxy.pids()
    b0, m0, w0 = cpu_ticks(BACKEND_PIDS), machine_busy_ticks(), children_cpu_s()
    t0, (u0, s0) = time.monotonic(), cpu_ticks_split(pids)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    t1, (u1, s1) = time.monotonic(), cpu_ticks_split(pids)
    b1, m1, w1 = cpu_ticks(BACKEND_PIDS), machine_busy_ticks(), children_cpu_s()
    out = r.stdout
    if r.returncode != 0:
        die("h2load failed (%d): %s %s" % (r.returncode, out[-2000:], r.stderr[-2000:]))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    sc = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    if not (m and sc):
        die("cannot parse h2load output:\n" + out + r.stderr)
    if not proto or proto.group(1) not in ("h2", "h2c"):
        die("%s: h2load did not negotiate HTTP/2:\n%s" % (proxy.name, out))
    durs = []
    with open(logp) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                durs.append(int(parts[2]))
    os.unlink(logp)
    durs.sort()
    nreq = int(m.group(4))
    errs = int(m.group(5)) + int(m.group(6)) + int(m.group(7)) + int(sc.group(3)) + int(sc.group(4))
    c0, c1 = u0 + s0, u1 + s1
    cpu_s = (c1 - c0) / CLK_TCK
    other_s = (m1 - m0 - (c1 - c0) - (b1 - b0)) / CLK_TCK - (w1 - w0)
    return {
        "rps": nreq / (t1 - t0),
        "p99_ms": durs[min(len(durs) - 1, int(len(durs) * 0.99))] / 1000.0 if durs else float("nan"),
        "cpu_us": (cpu_s * 1e6 / nreq) if nreq else float("nan"),
        "cpu_pct": 100.0 * cpu_s / (t1 - t0),
        "sys_pct": (100.0 * (s1 - s0) / (c1 - c0)) if c1 > c0 else float("nan"),
        "backend_us": ((b1 - b0) / CLK_TCK * 1e6 / nreq) if nreq else float("nan"),
        "wrk_us": ((w1 - w0) * 1e6 / nreq) if nreq else float("nan"),
        "other_pct": max(0.0, 100.0 * other_s / (t1 - t0)),
        "requests": nreq,
        "errors": errs,
        "restarted": proxy.pids() != pids,
    }


# ---- scenarios (f), (g): TLS -----------------------------------------------------------------------
class Cert:
    """One EC P-256 certificate for all three proxies, made in the temp dir at bench time."""
    def __init__(self):
        self.pem = os.path.join(TMP, "bench.pem")
        self.key = os.path.join(TMP, "bench.key")
        self.combined = os.path.join(TMP, "bench.combined.pem")     # HAProxy wants one file
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
                            "-keyout", self.key, "-out", self.pem, "-subj", "/CN=bench",
                            "-addext", "subjectAltName=DNS:bench,DNS:localhost,IP:127.0.0.1"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            die("openssl req failed:\n%s%s" % (r.stdout, r.stderr))
        with open(self.combined, "w") as out:
            for f in (self.pem, self.key):
                with open(f) as inp:
                    out.write(inp.read())


def check_tls_proxy(proxy, cert):
    """GET /small over TLS with SNI localhost (what wrk sends), verifying that the bench
    certificate is the one served."""
    import ssl
    ctx = ssl.create_default_context(cafile=cert.pem)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5.0) as raw:
        with ctx.wrap_socket(raw, server_hostname=proxy.url_host) as s:
            s.sendall(("GET /small HTTP/1.1\r\nHost: %s\r\n\r\n" % proxy.host).encode())
            st, _, body = read_response(s)
            ver, cipher = s.version(), s.cipher()[0]
    if st != 200 or body.decode() != SMALL_BODY:
        die("%s: GET /small over TLS answered %d %r" % (proxy.name, st, body[:80]))
    return "%s %s" % (ver, cipher)


def s_time(proxy, duration):
    """Full handshakes: `openssl s_time -new` (a new session per connection, no request),
    pinned to the load CPU; connections/s over the wall time and proxy CPU per handshake."""
    argv = pin(LOAD_CPU) + ["openssl", "s_time", "-connect", "127.0.0.1:%d" % proxy.port,
                            "-new", "-time", str(duration)]
    pids = proxy.pids()
    m0, w0 = machine_busy_ticks(), children_cpu_s()
    t0, (u0, s0) = time.monotonic(), cpu_ticks_split(pids)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    t1, (u1, s1) = time.monotonic(), cpu_ticks_split(pids)
    m1, w1 = machine_busy_ticks(), children_cpu_s()
    m = re.search(r"(\d+) connections in [\d.]+s;", r.stdout)
    if r.returncode != 0 or not m:
        die("openssl s_time against %s failed (%d):\n%s%s"
            % (proxy.name, r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    n = int(m.group(1))
    c0, c1 = u0 + s0, u1 + s1
    cpu_s = (c1 - c0) / CLK_TCK
    other_s = (m1 - m0 - (c1 - c0)) / CLK_TCK - (w1 - w0)
    return {
        "rps": n / (t1 - t0),
        "p99_ms": float("nan"),
        "cpu_us": (cpu_s * 1e6 / n) if n else float("nan"),
        "cpu_pct": 100.0 * cpu_s / (t1 - t0),
        "sys_pct": (100.0 * (s1 - s0) / (c1 - c0)) if c1 > c0 else float("nan"),
        "backend_us": float("nan"),
        "wrk_us": ((w1 - w0) * 1e6 / n) if n else float("nan"),
        "other_pct": max(0.0, 100.0 * other_s / (t1 - t0)),
        "requests": n,
        "errors": 0,
        "restarted": proxy.pids() != pids,
    }


# ---- scenario (d): idle keep-alive connections --------------------------------------------------
IP_BIND_ADDRESS_NO_PORT = 24


def idle_connections(proxy, n):
    """Open n connections, send one request on each and read the answer, keep them all open;
    return (bytes of worker RSS per connection, connections still open, baseline RSS)."""
    req = ("GET /small HTTP/1.1\r\nHost: %s\r\n\r\n" % proxy.host).encode()
    for _ in range(50):     # warm the request path first
        http_get(proxy.port, "/small", proxy.host)
    time.sleep(0.3)
    pids = proxy.pids()
    rss0 = rss_bytes(pids)
    socks = []
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind(("127.0.0.%d" % (2 + i % 8), 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", proxy.port))
            s.sendall(req)
            st, _, body = read_response(s)
            if st != 200:
                die("%s: idle connection %d got status %d" % (proxy.name, i, st))
        time.sleep(1.0)
        rss1 = rss_bytes(pids)
        # count connections the proxy has closed meanwhile (readable = EOF or reset)
        poller = select.poll()
        for s in socks:
            poller.register(s.fileno(), select.POLLIN | select.POLLRDHUP)
        closed = len(poller.poll(0))
        if proxy.pids() != pids:
            die("%s: worker process changed during the idle-connection test" % proxy.name)
        return (rss1 - rss0) / n, n - closed, rss0
    finally:
        for s in socks:
            s.close()


# ---- scenario (h): slowloris ----------------------------------------------------------------------
# The attacker: a separate, CPU-cheap python process on the load CPU (Debian's slowhttptest
# busy-loops a whole CPU, which would starve wrk on the shared load CPU). It opens N connections,
# sends the start of a request head on each, then every 0.5 s one more header line on a tenth of
# them, so no head ever completes; it stops when its stdin gets a line or closes, and then prints
# how many connections the proxy had closed meanwhile.
SLOWLORIS = r"""
import os, select, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    s.setblocking(False)
    socks.append(s)
print("ready %d" % len(socks), flush=True)
closed = set()
k = 0
step = max(1, n // 10)
while True:
    r, _, _ = select.select([sys.stdin], [], [], 0.5)
    if r:
        break
    for j in range(step):
        i = (k + j) % n
        if i in closed:
            continue
        try:
            socks[i].send(b"X-a: b\r\n")
        except OSError:
            closed.add(i)
    k = (k + step) % n
p = select.poll()
for i, s in enumerate(socks):
    if i not in closed:
        p.register(s.fileno(), select.POLLIN | select.POLLRDHUP | select.POLLHUP | select.POLLERR)
closed_now = len(closed) + len(p.poll(0))
print("done open %d closed %d" % (n - closed_now, closed_now), flush=True)
"""


class Slowloris:
    def __init__(self, port, n):
        self.n = n
        path = os.path.join(TMP, "slowloris.py")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(SLOWLORIS)
        py = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        errf = open(os.path.join(TMP, "slowloris.log"), "ab")
        self.p = subprocess.Popen(pin(LOAD_CPU) + [py, path, str(port), str(n)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf,
                                  start_new_session=True, cwd=TMP, text=True)
        errf.close()
        self.p.bench_name = "slowloris"
        _procs.append(self.p)
        line = self.p.stdout.readline()
        if not line.startswith("ready"):
            die("slowloris attacker did not get its %d connections up (see %s/slowloris.log)"
                % (n, TMP))

    def finish(self):
        """Stop the attack; return the number of its connections still open at the end."""
        try:
            self.p.stdin.write("stop\n")
            self.p.stdin.close()
        except OSError:
            pass
        out = self.p.stdout.read()
        self.p.wait(timeout=30)
        _procs.remove(self.p)
        m = re.search(r"done open (\d+)", out)
        return int(m.group(1)) if m else 0


def start_slow_proxy(p, port, bport, bport2):
    """The proxies of scenario (h): as for (a)..(d), with SLOW_HEADER_TIMEOUT_S as head timeout."""
    if p == "dispatcher":
        return start_dispatcher("dispatcher-h", dsp_config(
            port, bport, bport2, [("*", None, "b")], header_timeout_s=SLOW_HEADER_TIMEOUT_S),
            port)[0]
    if p == "nginx":
        return start_front_nginx(port, bport, name="nginx-h",
                                 header_timeout_s=SLOW_HEADER_TIMEOUT_S)
    return start_haproxy(port, bport, name="haproxy-h", header_timeout_s=SLOW_HEADER_TIMEOUT_S)


# ---- scenario (e): reload ------------------------------------------------------------------------
def reload_until_served(proxy, conf, text, want_body, timeout=60.0):
    """SIGHUP, then probe the route that changed on a new connection every millisecond until
    it answers from the new generation. The prober runs on the load CPU like every other client:
    probing in a tight loop from the proxy's CPU took CPU from the master it was timing."""
    write_atomic(conf, text)
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {LOAD_CPU})
    try:
        t0 = time.monotonic()
        os.kill(proxy.proc.pid, signal.SIGHUP)
        polls = 0
        while True:
            polls += 1
            try:
                st, _, body = http_get(proxy.port, "/small", PROBE_HOST)
                if st == 200 and body.decode() == want_body:
                    return (time.monotonic() - t0) * 1000.0, polls
            except (OSError, ConnectionError):
                pass
            if time.monotonic() - t0 > timeout:
                die("%s: reload not served within %.0fs" % (proxy.name, timeout))
            if proxy.proc.poll() is not None:
                die("%s: master exited during reload" % proxy.name)
            time.sleep(0.001)
    finally:
        os.sched_setaffinity(0, affinity)


# ---- report -------------------------------------------------------------------------------------
def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt(v, kind):
    if v != v:
        return "n/a"
    if kind == "rps":
        return "%.0f" % v
    if kind in ("ms", "us"):
        return "%.2f" % v if v < 100 else "%.0f" % v
    if kind == "pct":
        return "%.0f%%" % v
    if kind == "bytes":
        return "%.0f" % v
    return "%.3g" % v


def ratio(a, b):
    if a != a or b != b or b == 0:
        return "n/a"
    return "%.2f" % (a / b)


def tool_version(argv, pattern):
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
        m = re.search(pattern, r.stdout + r.stderr)
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+local changes" if dirty else "") if rev else "?"
    except OSError:
        return "?"


# ---- scenario (l): gzip of a 100 KiB JSON response ---------------------------------------------
def json_100k():
    """About 100 KiB of a JSON API answer (an array of records, repetitive like real ones)."""
    recs, i, size = [], 0, 2
    while True:
        recs.append(('{"id":%d,"sku":"SKU-%06d","name":"Product %d","price":%d.%02d,'
                     '"tags":["%s","%s"],"stock":%d,"active":%s}' % (
                         i, (i * 7919) % 1000000, i, (i * 37) % 500, i % 100,
                         ("red", "green", "blue", "black")[i % 4], ("s", "m", "l", "xl")[i % 3],
                         (i * 13) % 97, "true" if i % 5 else "false")).encode())
        size += len(recs[-1]) + 1
        if size > 102400:
            recs.pop()
            return b"[" + b",".join(recs) + b"]"
        i += 1


def gzip_check(prx):
    """GET /json100k with Accept-Encoding: gzip is answered gzip, decoding to the file."""
    import http.client
    import zlib
    c = http.client.HTTPConnection("127.0.0.1", prx.port, timeout=10)
    c.request("GET", "/json100k", headers={"Host": prx.host, "Accept-Encoding": "gzip"})
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200 or r.getheader("Content-Encoding") != "gzip":
        die("%s: /json100k answered %d, Content-Encoding %r" % (prx.name, r.status,
                                                               r.getheader("Content-Encoding")))
    if zlib.decompress(body, 31) != json_100k():
        die("%s: /json100k does not decode to the backend's body" % prx.name)
    return len(body)


def gzip_scenario(bport, bport2, notes):
    """(l): dispatcher's compress middleware against nginx's gzip filter at the same level."""
    prx = {}
    port = free_port()
    conf = dsp_config(port, bport, bport2, [("*", None, "b")]).replace(
        '{ host = "*"; service = "b"; }', '{ host = "*"; service = "b"; middlewares = ["gz"]; }')
    conf += ('middlewares = ( { name = "gz"; type = "compress"; level = %d; min_bytes = 1024; '
             'types = ["application/json"]; } );\n' % GZIP_LEVEL)
    prx["dispatcher"] = start_dispatcher("dispatcher-gzip", conf, port)[0]
    prx["nginx"] = start_front_nginx(
        free_port(), bport, name="nginx-gzip",
        http_extra="    gzip on;\n    gzip_comp_level %d;\n    gzip_types application/json;\n"
                   "    gzip_min_length 1024;\n    gzip_proxied any;\n    gzip_vary on;\n"
                   % GZIP_LEVEL)
    for p in GZIP_PROXIES:
        n = gzip_check(prx[p])
        log("%s-gzip on 127.0.0.1:%d: /json100k %d bytes -> %d gzip bytes at level %d"
            % (p, prx[p].port, len(json_100k()), n, GZIP_LEVEL))
        wrk(prx[p], "/json100k", GZIP_CONNS, 1, ("Accept-Encoding: gzip",))   # warm-up
    res = {p: [] for p in GZIP_PROXIES}
    for rnd in range(ROUNDS):
        order = GZIP_PROXIES[rnd % 2:] + GZIP_PROXIES[:rnd % 2]
        for p in order:
            r = wrk(prx[p], "/json100k", GZIP_CONNS, DURATION, ("Accept-Encoding: gzip",))
            res[p].append(r)
            log("round %d l %-10s %8.0f req/s  p99 %7.2f ms  %6.2f us/req  cpu %3.0f%%  "
                "other load %3.0f%%%s" % (
                    rnd + 1, p, r["rps"], r["p99_ms"], r["cpu_us"], r["cpu_pct"],
                    r["other_pct"], "  errors %d" % r["errors"] if r["errors"] else ""))
            if r["errors"]:
                notes.append("l round %d %s: %d socket errors or non-2xx responses"
                             % (rnd + 1, LABEL[p], r["errors"]))
    for p in GZIP_PROXIES:
        stop(prx[p].proc)
    return res


def gzip_table_rows(res):
    """Rows of the main table for scenario (l) (no HAProxy: its gzip is libslz, without levels)."""
    if "l" not in res:
        return []
    out, first = [], True
    for key, label, kind in METRICS:
        vals = {p: med([r[key] for r in res["l"][p]]) for p in GZIP_PROXIES}
        out.append("| %s | %s | %s | %s | n/a | %s | |" % (
            SCEN["l"] if first else "", label, fmt(vals["dispatcher"], kind),
            fmt(vals["nginx"], kind), ratio(vals["dispatcher"], vals["nginx"])))
        first = False
    return out


SCEN = {
    "a": "(a) /small, %d keep-alive conns" % KEEPALIVE_CONNS,
    "b": "(b) /small, new conn per request (%d conns)" % KEEPALIVE_CONNS,
    "c": "(c) /1m (1 MiB), %d keep-alive conns" % LARGE_CONNS,
    "f": "(f) TLS /small, %d keep-alive conns" % TLS_CONNS,
    "g": "(g) TLS /small, new conn per request, resumed handshakes (wrk, %d conns)" % TLS_CONNS,
    "i": "(i) HTTP/2 over TLS /small, h2load %d conns x %d streams" % (H2_CONNS, H2_STREAMS),
    "j": "(j) HTTP/2 cleartext (prior knowledge) /small, h2load %d conns x %d streams"
         % (H2_CONNS, H2_STREAMS),
    "l": "(l) gzip level %d of a 100 KiB JSON response, %d keep-alive conns"
         % (GZIP_LEVEL, GZIP_CONNS),
}
STIME_LABEL = "(g) TLS full handshakes, `openssl s_time -new` (client-bound)"
STIME_METRICS = [("rps", "handshakes/s", "rps"), ("cpu_us", "proxy CPU µs/handshake", "us"),
                 ("cpu_pct", "proxy CPU busy", "pct")]
METRICS = [("rps", "req/s", "rps"), ("p99_ms", "p99 latency ms", "ms"),
           ("cpu_us", "proxy CPU µs/req", "us"), ("cpu_pct", "proxy CPU busy", "pct")]


def row(sc, name, i, r):
    return ("| %s | %s | %d | %.0f | %.2f | %.2f | %.0f%% | %.0f%% | %.2f | %.2f | %.0f%% | %d "
            "| %d |" % (sc, name, i + 1, r["rps"], r["p99_ms"], r["cpu_us"], r["cpu_pct"],
                        r["sys_pct"], r["backend_us"], r.get("wrk_us", float("nan")),
                        r["other_pct"], r["requests"], r["errors"]))


def tls_table_rows(res, stime):
    """Rows of the main table for (f), (g) and the s_time full-handshake extra row."""
    L = []
    for sc in "fg":
        if sc not in res:
            continue
        first = True
        for key, label, kind in METRICS:
            vals = {p: med([r[key] for r in res[sc][p]]) for p in PROXIES}
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                SCEN[sc] if first else "", label,
                fmt(vals["dispatcher"], kind), fmt(vals["nginx"], kind),
                fmt(vals["haproxy"], kind),
                ratio(vals["dispatcher"], vals["nginx"]),
                ratio(vals["dispatcher"], vals["haproxy"])))
            first = False
    if stime:
        first = True
        for key, label, kind in STIME_METRICS:
            vals = {p: med([r[key] for r in stime[p]]) for p in PROXIES}
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                STIME_LABEL if first else "", label,
                fmt(vals["dispatcher"], kind), fmt(vals["nginx"], kind),
                fmt(vals["haproxy"], kind),
                ratio(vals["dispatcher"], vals["nginx"]),
                ratio(vals["dispatcher"], vals["haproxy"])))
            first = False
    return L


def tls_targets(res, stime):
    """Tick lines of issue 5's bench targets."""
    L = []
    if "f" in res:
        d = med([r["rps"] for r in res["f"]["dispatcher"]])
        n = med([r["rps"] for r in res["f"]["nginx"]])
        L.append("- [%s] (f) TLS keep-alive req/s ≥ 1.2× nginx: %s× nginx (%.0f vs %.0f req/s)"
                 % ("x" if d >= 1.2 * n else " ", ratio(d, n), d, n))
    if "g" in res:
        d = med([r["rps"] for r in res["g"]["dispatcher"]])
        n = med([r["rps"] for r in res["g"]["nginx"]])
        extra = ""
        if stime:
            sd = med([r["rps"] for r in stime["dispatcher"]])
            sn = med([r["rps"] for r in stime["nginx"]])
            extra = ("; full handshakes (s_time, client-bound): %s× nginx (%.0f vs %.0f/s)"
                     % (ratio(sd, sn), sd, sn))
        L.append("- [%s] (g) TLS handshakes/s ≥ nginx: %s× nginx on new connections with resumed "
                 "handshakes (wrk, %.0f vs %.0f/s)%s"
                 % ("x" if d >= n else " ", ratio(d, n), d, n, extra))
    return L


def slow_table_rows(res):
    """Rows of the main table for scenario (h)."""
    if "h" not in res:
        return []
    L = []
    calm = {p: {k: med([r[k] for r in res["h"][p]]) for k, _, _ in METRICS} for p in PROXIES}
    hit = {p: {k: med([r[k] for r in res["h_attack"][p]]) for k, _, _ in METRICS}
           for p in PROXIES}
    lines = [("req/s calm", "rps", {p: calm[p]["rps"] for p in PROXIES}),
             ("req/s under attack", "rps", {p: hit[p]["rps"] for p in PROXIES}),
             ("p99 latency ms calm", "ms", {p: calm[p]["p99_ms"] for p in PROXIES}),
             ("p99 latency ms under attack", "ms", {p: hit[p]["p99_ms"] for p in PROXIES}),
             ("p99 under attack / calm", "x",
              {p: hit[p]["p99_ms"] / calm[p]["p99_ms"] if calm[p]["p99_ms"] else float("nan")
               for p in PROXIES}),
             ("proxy CPU µs/req under attack", "us", {p: hit[p]["cpu_us"] for p in PROXIES})]
    first = True
    for label, kind, vals in lines:
        L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            "(h) /small, %d keep-alive conns, calm vs %d slowloris conns" % (
                SLOW_CLIENTS, SLOW_CONNS) if first else "", label,
            fmt(vals["dispatcher"], "ms" if kind == "x" else kind), fmt(vals["nginx"], "ms" if
                                                                        kind == "x" else kind),
            fmt(vals["haproxy"], "ms" if kind == "x" else kind),
            ratio(vals["dispatcher"], vals["nginx"]),
            ratio(vals["dispatcher"], vals["haproxy"])))
        first = False
    return L


def slow_targets(res):
    """Tick line of issue 12's slowloris target."""
    if "h" not in res:
        return []
    c = med([r["p99_ms"] for r in res["h"]["dispatcher"]])
    a = med([r["p99_ms"] for r in res["h_attack"]["dispatcher"]])
    return ["- [%s] (h) p99 under %d slowloris connections ≤ 2× calm: %s× (%.2f vs %.2f ms)"
            % ("x" if a <= 2 * c else " ", SLOW_CONNS, ratio(a, c), a, c)]


def report(res, idle, e_res, reloads, started, elapsed, notes, stime=None):
    stime = stime or {}
    L = []
    runs = [r for sc in res.values() for lst in sc.values() for r in lst]
    runs += [r for lst in e_res.values() for r in lst]
    other = med([r["other_pct"] for r in runs]) if runs else 0.0
    L.append("# Benchmark results")
    L.append("")
    L.append("Produced by `make bench` (bench/run.sh). Numbers compare proxies within this run only.")
    L.append("")
    L.append("- Date: %s" % started.strftime("%Y-%m-%d %H:%M:%S %Z").strip())
    L.append("- CPU: %s; %d online CPUs; proxies pinned to CPU %d, backend nginx + wrk + clients "
             "to CPU %d" % (cpu_model(), os.cpu_count(), PROXY_CPU, LOAD_CPU))
    L.append("- Kernel: %s; dispatcher %s; nginx %s; HAProxy %s; wrk %s" % (
        platform.release(), git_rev(),
        tool_version(["nginx", "-v"], r"nginx/(\S+)"),
        tool_version(["haproxy", "-v"], r"version (\S+)"),
        tool_version(["wrk", "-v"], r"wrk (\S+)")))
    L.append("- Method: wrk -t1, %d s per run, %d rounds with the proxies in rotating order, "
             "median shown; CPU = utime+stime of the proxy's worker process(es) from "
             "/proc/PID/stat over the run / requests completed; whole run took %.0f s"
             % (DURATION, ROUNDS, elapsed))
    L.append("- Reading it: the backend and wrk share one CPU, so when \"proxy CPU busy\" is well "
             "below 100% the load side is the limit and req/s understates the proxy; "
             "CPU µs/req is then the figure that compares the proxies")
    L.append("- Other load: CPU used by processes outside the benchmark during the wrk runs, "
             "median %.0f%% of one CPU (per run in the details below)%s" % (
                 other, "; req/s and p99 of this run are disturbed by it" if other > 10 else ""))
    L.append("- Settings: dispatcher workers=1; nginx worker_processes 1 with upstream keepalive; "
             "HAProxy nbthread 1 with http-reuse always; all three add X-Forwarded-For/-Proto/"
             "-Host, X-Real-IP and X-Request-ID; no access logs")
    if "h" in res:
        L.append("- Slowloris (h): %d wrk connections on /small, %d rounds of a calm run, then a "
                 "run while a python process on the load CPU holds %d connections open against "
                 "the proxy, each sent `GET / HTTP/1.1`, `Host: x` and every 5 s one more header "
                 "line (a tenth of them every 0.5 s), so no head completes; all three proxies "
                 "get a %d s request-head timeout (dispatcher limits.header_timeout_ms, nginx "
                 "client_header_timeout, HAProxy timeout http-request), longer than a run, so none "
                 "closes them meanwhile" % (SLOW_CLIENTS, ROUNDS, SLOW_CONNS,
                                             SLOW_HEADER_TIMEOUT_S))
    if "f" in res or "g" in res:
        L.append("- TLS (f), (g): %d rounds; one EC P-256 certificate (CN/SAN bench, localhost) for "
                 "all three; TLS 1.2/1.3, groups X25519 and P-256, ECDHE+AEAD 1.2 suites, session "
                 "tickets on; wrk gets https://localhost:PORT (SNI localhost) with Host: bench. "
                 "(g) via wrk: Debian's wrk 4.1 resumes its TLS session on every reconnect, so "
                 "this is new TCP connections with resumed handshakes, for all three alike. Full "
                 "handshakes: `openssl s_time -new` (no request sent, no SNI, so dispatcher "
                 "answers with its self-signed EC P-256 default; same key type), one process on "
                 "the load CPU: client-bound, handshakes/s = connections / wall time" % TLS_ROUNDS)
    if "i" in res or "j" in res:
        L.append("- HTTP/2 (i), (j): h2load -t1 -c%d -m%d on the load CPU, %d s per run (req/s = "
                 "succeeded requests / wall time, p99 from h2load's per-request log), HTTP/1.1 "
                 "keep-alive to the backend; (i) over TLS with ALPN h2 (dispatcher's TLS listener, "
                 "nginx `listen ... ssl http2`, HAProxy `alpn h2,http/1.1`), (j) h2c with prior "
                 "knowledge (dispatcher's plain listener, nginx `listen ... http2`, HAProxy "
                 "`bind ... proto h2`)" % (H2_CONNS, H2_STREAMS, DURATION))
    L.append("")
    L.append("| scenario | metric | dispatcher | nginx | HAProxy | dispatcher/nginx | "
             "dispatcher/HAProxy |")
    L.append("|---|---|---:|---:|---:|---:|---:|")
    for sc in "abc":
        if sc not in res:
            continue
        first = True
        for key, label, kind in METRICS:
            vals = {p: med([r[key] for r in res[sc][p]]) for p in PROXIES}
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                SCEN[sc] if first else "", label,
                fmt(vals["dispatcher"], kind), fmt(vals["nginx"], kind),
                fmt(vals["haproxy"], kind),
                ratio(vals["dispatcher"], vals["nginx"]),
                ratio(vals["dispatcher"], vals["haproxy"])))
            first = False
    if idle:
        vals = {p: med([x[0] for x in idle[p]]) for p in PROXIES}
        L.append("| (d) %d idle keep-alive conns | worker RSS bytes/conn | %s | %s | %s | %s | %s |"
                 % (IDLE_CONNS, fmt(vals["dispatcher"], "bytes"), fmt(vals["nginx"], "bytes"),
                    fmt(vals["haproxy"], "bytes"), ratio(vals["dispatcher"], vals["nginx"]),
                    ratio(vals["dispatcher"], vals["haproxy"])))
    L.extend(tls_table_rows(res, stime))
    L.extend(slow_table_rows(res))
    for sc in "ij":
        if sc not in res:
            continue
        first = True
        for key, label, kind in METRICS:
            vals = {p: med([r[key] for r in res[sc][p]]) for p in PROXIES}
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                SCEN[sc] if first else "", label,
                fmt(vals["dispatcher"], kind), fmt(vals["nginx"], kind),
                fmt(vals["haproxy"], kind),
                ratio(vals["dispatcher"], vals["nginx"]),
                ratio(vals["dispatcher"], vals["haproxy"])))
            first = False
    L.extend(gzip_table_rows(res))
    L.append("")
    if e_res:
        L.append("(e) dispatcher only, /small over %d keep-alive conns, Host %s "
                 "(an exact-host route in both configs):" % (KEEPALIVE_CONNS, MEASURED_HOST))
        L.append("")
        L.append("| metric | 1 route | %d routes | %d/1 |" % (NROUTES, NROUTES))
        L.append("|---|---:|---:|---:|")
        for key, label, kind in METRICS:
            one = med([r[key] for r in e_res["one"]])
            many = med([r[key] for r in e_res["many"]])
            L.append("| %s | %s | %s | %s |" % (label, fmt(one, kind), fmt(many, kind),
                                                ratio(many, one)))
        if reloads:
            ms = [x[0] for x in reloads]
            L.append("| SIGHUP reload of %d routes until the new generation serves, ms | | %s "
                     "(min %s, max %s, n=%d) | |" % (NROUTES, fmt(med(ms), "ms"),
                                                     fmt(min(ms), "ms"), fmt(max(ms), "ms"),
                                                     len(ms)))
        L.append("")
    # Targets of issue 3
    T = []
    if "a" in res:
        v = {p: {k: med([r[k] for r in res["a"][p]]) for k, _, _ in METRICS} for p in PROXIES}
        d, n, h = v["dispatcher"], v["nginx"], v["haproxy"]
        T.append(("(a) req/s ≥ 1.3× nginx", d["rps"] >= 1.3 * n["rps"],
                  "%s× nginx" % ratio(d["rps"], n["rps"])))
        T.append(("(a) req/s ≥ 1.2× HAProxy", d["rps"] >= 1.2 * h["rps"],
                  "%s× HAProxy" % ratio(d["rps"], h["rps"])))
        T.append(("(a) CPU µs/req ≤ 0.75× nginx", d["cpu_us"] <= 0.75 * n["cpu_us"],
                  "%s× nginx" % ratio(d["cpu_us"], n["cpu_us"])))
        T.append(("(a) p99 ≤ nginx", d["p99_ms"] <= n["p99_ms"],
                  "%s× nginx" % ratio(d["p99_ms"], n["p99_ms"])))
    for sc in "bc":
        if sc in res:
            d = med([r["rps"] for r in res[sc]["dispatcher"]])
            best = max(med([r["rps"] for r in res[sc]["nginx"]]),
                       med([r["rps"] for r in res[sc]["haproxy"]]))
            T.append(("(%s) req/s ≥ the better of nginx and HAProxy" % sc, d >= best,
                      "%s× the better" % ratio(d, best)))
    if idle:
        d = med([x[0] for x in idle["dispatcher"]])
        T.append(("(d) ≤ 300 bytes per idle connection", d <= 300, "%.0f bytes" % d))
    if e_res:
        one = med([r["rps"] for r in e_res["one"]])
        many = med([r["rps"] for r in e_res["many"]])
        cone = med([r["cpu_us"] for r in e_res["one"]])
        cmany = med([r["cpu_us"] for r in e_res["many"]])
        T.append(("(e) ≤ 5%% slower with %d routes" % NROUTES, many >= 0.95 * one,
                  "req/s %+.1f%%, CPU µs/req %+.1f%%" % (100.0 * (many / one - 1.0),
                                                       100.0 * (cmany / cone - 1.0))))
        if reloads:
            m = med([x[0] for x in reloads])
            T.append(("(e) reload of %d routes serving in < 200 ms" % NROUTES, m < 200,
                      "%.0f ms" % m))
    if T:
        L.append("Targets (issue 3):")
        L.append("")
        for name, ok, got in T:
            L.append("- [%s] %s: %s" % ("x" if ok else " ", name, got))
        L.append("")
    if "l" in res:
        d = med([r["cpu_us"] for r in res["l"]["dispatcher"]])
        n = med([r["cpu_us"] for r in res["l"]["nginx"]])
        L.append("Targets (issue 15, middlewares):")
        L.append("")
        L.append("- [%s] (l) gzip CPU µs/req ≤ nginx's `gzip on` at level %d: %s× nginx"
                 % ("x" if d <= n else " ", GZIP_LEVEL, ratio(d, n)))
        L.append("")
    T12 = slow_targets(res)
    if T12:
        L.append("Targets (issue 12, hardening):")
        L.append("")
        L.extend(T12)
        L.append("")
    T5 = tls_targets(res, stime)
    if T5:
        L.append("Targets (issue 5, TLS):")
        L.append("")
        L.extend(T5)
        L.append("")
    if notes:
        L.append("Notes:")
        L.append("")
        for n_ in notes:
            L.append("- " + n_)
        L.append("")
    # raw per-round values
    L.append("<details><summary>Per-round values</summary>")
    L.append("")
    L.append("| scenario | proxy | round | req/s | p99 ms | CPU µs/req | CPU busy | kernel share "
             "| backend µs/req | load generator µs/req | other load | requests | errors |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc in "abcfgij":
        if sc not in res:
            continue
        for p in PROXIES:
            for i, r in enumerate(res[sc][p]):
                L.append(row(sc, LABEL[p], i, r))
    for p in (GZIP_PROXIES if "l" in res else []):
        for i, r in enumerate(res["l"][p]):
            L.append(row("l", LABEL[p], i, r))
    for sc, nm in (("h", "h calm"), ("h_attack", "h under attack")):
        for p in (PROXIES if sc in res else []):
            for i, r in enumerate(res[sc][p]):
                L.append(row(nm, LABEL[p], i, r))
    for p in (PROXIES if stime else []):
        for i, r in enumerate(stime[p]):
            L.append(row("g s_time", LABEL[p], i, r).replace("| nan ", "| n/a "))
    if e_res:
        for k, nm in (("one", "1 route"), ("many", "%d routes" % NROUTES)):
            for i, r in enumerate(e_res[k]):
                L.append(row("e", "dispatcher, " + nm, i, r))
    L.append("")
    if idle:
        L.append("| (d) proxy | round | bytes/conn | conns still open | baseline worker RSS KiB |")
        L.append("|---|---:|---:|---:|---:|")
        for p in PROXIES:
            for i, (b, still, rss0) in enumerate(idle[p]):
                L.append("| %s | %d | %.0f | %d | %d |" % (LABEL[p], i + 1, b, still, rss0 // 1024))
        L.append("")
    if reloads:
        L.append("Reloads (ms until served, probe requests): " +
                 ", ".join("%.1f (%d)" % x for x in reloads))
        L.append("")
    L.append("</details>")
    return "\n".join(L) + "\n"


# ---- main ---------------------------------------------------------------------------------------
def start_harness(tag):
    """Wait for a quiet machine, make the temp dir, make sure every process started is stopped
    at exit and on signals, and move the harness itself to the load CPU (it is load, not proxy).
    <tag> names the temp dir (dsp-bench<tag>.)."""
    global TMP
    if QUIET_WAIT > 0:
        wait_quiet(QUIET_WAIT)
    TMP = tempfile.mkdtemp(prefix="dsp-bench%s." % tag)
    os.chmod(TMP, 0o755)
    atexit.register(cleanup)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)
    os.sched_setaffinity(0, {LOAD_CPU})


def emit(text, out):
    """Print a results text and write it to <out> ("-": print only)."""
    print()
    print(text)
    if out != "-":
        with open(out, "w") as f:
            f.write(text)
        log("wrote %s" % out)


def main():
    started = datetime.datetime.now().astimezone()
    t_start = time.monotonic()
    for tool in ("nginx", "haproxy", "wrk", "taskset", "pgrep"):
        if shutil.which(tool) is None:
            die("%s not found (make bench installs nginx, haproxy and wrk)" % tool)
    if not os.access(DSP_MASTER, os.X_OK):
        die("%s is not built (run `make bench` or `make all`)" % DSP_MASTER)
    if PROXY_CPU == LOAD_CPU:
        log("WARNING: only one CPU available; proxies and load share CPU %d" % LOAD_CPU)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < IDLE_CONNS + 1000:
        die("open-file limit %d too low for %d idle connections (run.sh raises it)"
            % (soft, IDLE_CONNS))

    start_harness("")
    log("temp dir %s; proxies on CPU %d, load on CPU %d; %ds x %d rounds"
        % (TMP, PROXY_CPU, LOAD_CPU, DURATION, ROUNDS))

    bport, bport2 = free_port(), free_port()
    start_backend(bport, bport2)
    log("backend nginx on 127.0.0.1:%d (+%d)" % (bport, bport2))

    ports = {p: free_port() for p in PROXIES}
    main_routes = [("*", None, "b")]

    def start(p):
        if p == "dispatcher":
            return start_dispatcher("dispatcher", dsp_config(ports[p], bport, bport2, main_routes),
                                    ports[p])[0]
        if p == "nginx":
            return start_front_nginx(ports[p], bport)
        return start_haproxy(ports[p], bport)

    proxies = {}
    for p in (PROXIES if ONLY & set("abcd") else []):
        proxies[p] = start(p)
        check_proxy(p, ports[p])
        log("%s on 127.0.0.1:%d, worker pid(s) %s" % (p, ports[p], proxies[p].pids()))

    notes = []
    res, idle, e_res, reloads = {}, {}, {}, []
    scen = [s for s in "abc" if s in ONLY]
    spec = {"a": ("/small", KEEPALIVE_CONNS, ()),
            "b": ("/small", KEEPALIVE_CONNS, ("Connection: close",)),
            "c": ("/1m", LARGE_CONNS, ())}
    for sc in scen:
        res[sc] = {p: [] for p in PROXIES}
        for p in PROXIES:      # short warm-up, not recorded
            path, conns, hdrs = spec[sc]
            wrk(proxies[p], path, conns, 1, hdrs)
    for rnd in range(ROUNDS):
        order = PROXIES[rnd % 3:] + PROXIES[:rnd % 3]
        for sc in scen:
            path, conns, hdrs = spec[sc]
            for p in order:
                r = wrk(proxies[p], path, conns, DURATION, hdrs)
                res[sc][p].append(r)
                log("round %d %s %-10s %8.0f req/s  p99 %7.2f ms  %6.2f us/req  cpu %3.0f%%  "
                    "other load %3.0f%%%s" % (
                        rnd + 1, sc, p, r["rps"], r["p99_ms"], r["cpu_us"], r["cpu_pct"],
                        r["other_pct"], "  errors %d" % r["errors"] if r["errors"] else ""))
                if r["errors"]:
                    notes.append("%s round %d %s: %d socket errors or non-2xx responses"
                                 % (sc, rnd + 1, LABEL[p], r["errors"]))
                if r["restarted"]:
                    notes.append("%s round %d %s: the worker process changed during the run"
                                 % (sc, rnd + 1, LABEL[p]))

    if "d" in ONLY:
        idle = {p: [] for p in PROXIES}
        for rnd in range(min(3, ROUNDS)):
            for p in PROXIES:
                # a fresh proxy each round, so memory kept from earlier runs does not hide growth
                stop(proxies[p].proc)
                proxies[p] = start(p)
                x = idle_connections(proxies[p], IDLE_CONNS)
                idle[p].append(x)
                log("round %d d %-10s %6.0f bytes/idle conn (%d of %d still open, baseline RSS "
                    "%d KiB)" % (rnd + 1, p, x[0], x[1], IDLE_CONNS, x[2] // 1024))
                if x[1] != IDLE_CONNS:
                    notes.append("(d) round %d %s: only %d of %d connections were still open"
                                 % (rnd + 1, LABEL[p], x[1], IDLE_CONNS))

    for p in proxies:
        stop(proxies[p].proc)

    stime = {}
    tls_scen = [s for s in "fg" if s in ONLY]
    if tls_scen:
        cert = Cert()
        tports = {p: free_port() for p in PROXIES}
        tproxies = {}
        for p in PROXIES:
            name = p + "-tls"
            if p == "dispatcher":
                prx = start_dispatcher(name, dsp_config(tports[p], bport, bport2, main_routes,
                                                        tls=cert), tports[p])[0]
            elif p == "nginx":
                prx = start_front_nginx(tports[p], bport, tls=cert, name=name)
            else:
                prx = start_haproxy(tports[p], bport, tls=cert, name=name)
            prx.scheme, prx.url_host = "https", "localhost"
            tproxies[p] = prx
            log("%s on https://localhost:%d (%s), worker pid(s) %s"
                % (name, tports[p], check_tls_proxy(prx, cert), prx.pids()))
        tspec = {"f": ("/small", TLS_CONNS, ()),
                 "g": ("/small", TLS_CONNS, ("Connection: close",))}
        for sc in tls_scen:
            res[sc] = {p: [] for p in PROXIES}
            for p in PROXIES:      # short warm-up, not recorded
                path, conns, hdrs = tspec[sc]
                wrk(tproxies[p], path, conns, 1, hdrs)
        if "g" in ONLY:
            stime = {p: [] for p in PROXIES}
        for rnd in range(TLS_ROUNDS):
            order = PROXIES[rnd % 3:] + PROXIES[:rnd % 3]
            for sc in tls_scen:
                path, conns, hdrs = tspec[sc]
                for p in order:
                    r = wrk(tproxies[p], path, conns, DURATION, hdrs)
                    res[sc][p].append(r)
                    log("round %d %s %-10s %8.0f req/s  p99 %7.2f ms  %6.2f us/req  cpu %3.0f%%  "
                        "other load %3.0f%%%s" % (
                            rnd + 1, sc, p, r["rps"], r["p99_ms"], r["cpu_us"], r["cpu_pct"],
                            r["other_pct"], "  errors %d" % r["errors"] if r["errors"] else ""))
                    if r["errors"]:
                        notes.append("%s round %d %s: %d socket errors or non-2xx responses"
                                     % (sc, rnd + 1, LABEL[p], r["errors"]))
                    if r["restarted"]:
                        notes.append("%s round %d %s: the worker process changed during the run"
                                     % (sc, rnd + 1, LABEL[p]))
                if sc == "g":
                    for p in order:
                        r = s_time(tproxies[p], DURATION)
                        stime[p].append(r)
                        log("round %d g %-10s %8.0f full handshakes/s (s_time)  %6.2f us/hs  "
                            "cpu %3.0f%%  other load %3.0f%%" % (
                                rnd + 1, p, r["rps"], r["cpu_us"], r["cpu_pct"], r["other_pct"]))
        for p in PROXIES:
            stop(tproxies[p].proc)

    h2_scen = [s for s in "ij" if s in ONLY]
    if h2_scen:
        if shutil.which("h2load") is None:
            die("h2load not found (Debian nghttp2-client) for scenarios (i), (j)")
        cert = Cert()
        h2proxies = {}
        for sc in h2_scen:
            tls = cert if sc == "i" else None
            h2proxies[sc] = {}
            for p in PROXIES:
                port, name = free_port(), "%s-h2%s" % (p, "tls" if tls else "c")
                if p == "dispatcher":
                    prx = start_dispatcher(name, dsp_config(port, bport, bport2, main_routes,
                                                            tls=tls), port)[0]
                elif p == "nginx":
                    prx = start_front_nginx(port, bport, tls=tls, name=name, h2=True)
                else:
                    prx = start_haproxy(port, bport, tls=tls, name=name, h2=True)
                if tls:
                    prx.scheme, prx.url_host = "https", "localhost"
                h2proxies[sc][p] = prx
                h2load(prx, "/small", 1)       # check and short warm-up, not recorded
                log("%s on %s://%s:%d, worker pid(s) %s"
                    % (name, prx.scheme, prx.url_host, port, prx.pids()))
            res[sc] = {p: [] for p in PROXIES}
        for rnd in range(ROUNDS):
            order = PROXIES[rnd % 3:] + PROXIES[:rnd % 3]
            for sc in h2_scen:
                for p in order:
                    r = h2load(h2proxies[sc][p], "/small", DURATION)
                    res[sc][p].append(r)
                    log("round %d %s %-10s %8.0f req/s  p99 %7.2f ms  %6.2f us/req  cpu %3.0f%%  "
                        "other load %3.0f%%%s" % (
                            rnd + 1, sc, p, r["rps"], r["p99_ms"], r["cpu_us"], r["cpu_pct"],
                            r["other_pct"], "  errors %d" % r["errors"] if r["errors"] else ""))
                    if r["errors"]:
                        notes.append("%s round %d %s: %d failed or non-2xx requests"
                                     % (sc, rnd + 1, LABEL[p], r["errors"]))
                    if r["restarted"]:
                        notes.append("%s round %d %s: the worker process changed during the run"
                                     % (sc, rnd + 1, LABEL[p]))
        for sc in h2_scen:
            for p in PROXIES:
                stop(h2proxies[sc][p].proc)

    if "h" in ONLY:
        hports = {p: free_port() for p in PROXIES}
        hproxies = {}
        for p in PROXIES:
            hproxies[p] = start_slow_proxy(p, hports[p], bport, bport2)
            check_proxy(p, hports[p])
            wrk(hproxies[p], "/small", SLOW_CLIENTS, 1)      # short warm-up, not recorded
        res["h"] = {p: [] for p in PROXIES}
        res["h_attack"] = {p: [] for p in PROXIES}
        for rnd in range(ROUNDS):
            order = PROXIES[rnd % 3:] + PROXIES[:rnd % 3]
            for p in order:
                calm = wrk(hproxies[p], "/small", SLOW_CLIENTS, DURATION)
                att = Slowloris(hports[p], SLOW_CONNS)
                time.sleep(1.0)     # measure the held connections, not the burst of accepts
                try:
                    hit = wrk(hproxies[p], "/small", SLOW_CLIENTS, DURATION)
                finally:
                    still = att.finish()
                res["h"][p].append(calm)
                res["h_attack"][p].append(hit)
                log("round %d h %-10s calm %8.0f req/s p99 %6.2f ms | %d slowloris conns %8.0f "
                    "req/s p99 %6.2f ms (%d still open at the end)%s" % (
                        rnd + 1, p, calm["rps"], calm["p99_ms"], SLOW_CONNS, hit["rps"],
                        hit["p99_ms"], still, "  errors %d" % (calm["errors"] + hit["errors"])
                        if calm["errors"] + hit["errors"] else ""))
                for k, r in (("calm", calm), ("under attack", hit)):
                    if r["errors"]:
                        notes.append("h round %d %s %s: %d socket errors or non-2xx responses"
                                     % (rnd + 1, LABEL[p], k, r["errors"]))
                    if r["restarted"]:
                        notes.append("h round %d %s %s: the worker process changed during the run"
                                     % (rnd + 1, LABEL[p], k))
                if still != SLOW_CONNS:
                    notes.append("h round %d %s: only %d of %d slowloris connections were still "
                                 "open at the end of the run" % (rnd + 1, LABEL[p], still,
                                                                 SLOW_CONNS))
        for p in PROXIES:
            stop(hproxies[p].proc)

    if "l" in ONLY:
        res["l"] = gzip_scenario(bport, bport2, notes)

    if "e" in ONLY:
        t0 = time.monotonic()
        many_a = many_routes(NROUTES, "b")
        many_b = many_routes(NROUTES, "b2")
        port_one, port_many = free_port(), free_port()
        one, _ = start_dispatcher("dsp-1route", dsp_config(
            port_one, bport, bport2, [(MEASURED_HOST, None, "b")]), port_one)
        one.host = MEASURED_HOST
        conf_a = dsp_config(port_many, bport, bport2, many_a)
        conf_b = dsp_config(port_many, bport, bport2, many_b)
        t1 = time.monotonic()
        many, many_conf = start_dispatcher("dsp-%droutes" % NROUTES, conf_a, port_many)
        log("(e) %d-route config: %d KiB, generated in %.0f ms, started in %.0f ms"
            % (NROUTES, len(conf_a) // 1024, (t1 - t0) * 1000, (time.monotonic() - t1) * 1000))
        many.host = MEASURED_HOST
        for prx in (one, many):
            st, _, body = http_get(prx.port, "/small", MEASURED_HOST)
            if st != 200 or body.decode() != SMALL_BODY:
                die("%s: GET /small answered %d %r" % (prx.name, st, body[:80]))
        st, _, body = http_get(port_many, "/small", PROBE_HOST)
        if st != 200 or body.decode() != SMALL_BODY:
            die("%s: probe route answered %d %r" % (many.name, st, body[:80]))
        e_res = {"one": [], "many": []}
        for prx in (one, many):
            wrk(prx, "/small", KEEPALIVE_CONNS, 1)
        for rnd in range(ROUNDS):
            pair = [("one", one), ("many", many)]
            if rnd % 2:
                pair.reverse()
            for k, prx in pair:
                r = wrk(prx, "/small", KEEPALIVE_CONNS, DURATION)
                e_res[k].append(r)
                log("round %d e %-16s %8.0f req/s  p99 %7.2f ms  %6.2f us/req  cpu %3.0f%%  "
                    "other load %3.0f%%" % (rnd + 1, prx.name, r["rps"], r["p99_ms"], r["cpu_us"],
                                            r["cpu_pct"], r["other_pct"]))
                if r["errors"]:
                    notes.append("e round %d %s: %d socket errors or non-2xx responses"
                                 % (rnd + 1, prx.name, r["errors"]))
        # reloads: flip the probe route between the two backends and wait until it is served
        for rnd in range(ROUNDS):
            text, want = (conf_b, "second backend\n") if rnd % 2 == 0 else (conf_a, SMALL_BODY)
            ms, polls = reload_until_served(many, many_conf, text, want)
            reloads.append((ms, polls))
            log("round %d e reload of %d routes served after %.1f ms (%d probes)"
                % (rnd + 1, NROUTES, ms, polls))
            time.sleep(0.5)
        stop(one.proc)
        stop(many.proc)

    elapsed = time.monotonic() - t_start
    text = report(res, idle, e_res, reloads, started, elapsed, notes, stime)
    emit(text, OUT)


if __name__ == "__main__":
    main()
