"""Shared helpers for the dispatcher integration tests (Python 3 stdlib only).

Everything runs on 127.0.0.1 with ephemeral ports. Each test runs in its own process group
(see run.py), so whatever a test leaves behind is killed when it ends; the helpers still stop
what they start, and check that the master exits 0 on SIGTERM without sanitizer reports.

    class T(dsptest.TestCase):
        def test_x(self):
            b = self.backend("gw")
            d = self.dispatcher(services=[svc("gw", b)], routes=[route("*", "gw")])
            r = request(d.port, "/echo", host="x.do")
            self.assertEqual(r.header("X-Backend"), "gw")
"""

import json
import os
import random
import re
import select
import signal
import socket
import string
import subprocess
import tempfile
import threading
import time
import unittest
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
BIN_DIR = os.environ.get("DSP_BIN", os.path.normpath(os.path.join(HERE, "..", "..", "bin")))
MASTER = os.path.join(BIN_DIR, "dispatcher-master")
TESTBACKEND = os.environ.get(
    "DSP_TESTBACKEND",
    os.path.normpath(os.path.join(HERE, "..", "..", "build", "release", "dsp-testbackend")))
# The sanitizer build is slower and its RSS includes shadow memory and the free quarantine.
SANITIZED = "/build/san" in BIN_DIR or bool(os.environ.get("DSP_SANITIZED"))
MIB = 1024 * 1024

# run.py gives each test a file where every pid we start is recorded, so that it can kill
# them even when a test is killed by its timeout.
_PID_LOG = os.environ.get("DSP_PID_LOG")
# Dispatchers started by this process, so run.py can print their logs when a test fails.
STARTED = []


def timeout(seconds):
    """Decorator: per-test time limit (seconds) enforced by run.py (default 60)."""
    def wrap(fn):
        fn.dsp_timeout = seconds
        return fn
    return wrap


def _record_pid(pid):
    if _PID_LOG:
        with open(_PID_LOG, "a") as f:
            f.write("pid %d\n" % pid)


def _record_tmp(path):
    if _PID_LOG:
        with open(_PID_LOG, "a") as f:
            f.write("tmp %s\n" % path)


_PORT_RANGE = None
_ports_given = set()


def free_port():
    """A port that was free a moment ago. Under run.py, from this test's own range
    (DSP_PORT_RANGE, disjoint from the tests running alongside and below the ephemeral ports);
    otherwise whatever bind(port 0) gives."""
    global _PORT_RANGE
    if _PORT_RANGE is None:
        r = os.environ.get("DSP_PORT_RANGE", "")
        lo, _, hi = r.partition("-")
        _PORT_RANGE = (int(lo), int(hi)) if lo.isdigit() and hi.isdigit() else ()
    for _ in range(200 if _PORT_RANGE else 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if _PORT_RANGE:
                port = random.randint(*_PORT_RANGE)
                if port in _ports_given:
                    continue
                s.bind(("127.0.0.1", port))
            else:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        except OSError:
            continue
        finally:
            s.close()
        _ports_given.add(port)
        return port
    raise RuntimeError("no free port in %r" % (_PORT_RANGE,))


def read_to_eof(sock):
    """Everything <sock> (anything with recv()) sends until it closes."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def wait_for(pred, timeout_s, interval=0.02):
    """Poll <pred> until it returns a true value or <timeout_s> passes; returns the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# ---- processes ------------------------------------------------------------------------------

def children_of(pid):
    """Pids whose parent is <pid>: from /proc/PID/task/*/children when the kernel has it (one
    read per thread, cheap enough to poll from a busy test), else by scanning /proc/*/stat."""
    try:
        kids = set()
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                kids.update(int(x) for x in f.read().split())
        return sorted(k for k in kids if _state(k) not in (None, "Z"))
    except FileNotFoundError:
        if not os.path.exists("/proc/%d" % pid):
            return []
    except OSError:
        pass
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                st = f.read()
        except OSError:
            continue
        # The comm field may hold spaces or parentheses: split after the last ')'.
        rest = st[st.rfind(")") + 2:].split()
        if len(rest) > 1 and rest[0] != "Z" and int(rest[1]) == pid:
            out.append(int(name))
    return sorted(out)


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the comm field (fields[0] is the state), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return None
    return st[st.rfind(")") + 2:].split()


def _state(pid):
    f = _stat_fields(pid)
    return f[0] if f else None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_time_boot(pid):
    """When <pid> started, in seconds on the CLOCK_BOOTTIME scale (resolution 1/CLK_TCK), or
    None. Compare with time.clock_gettime(time.CLOCK_BOOTTIME)."""
    f = _stat_fields(pid)
    return int(f[19]) / CLK_TCK if f else None


def _listen_inodes(port):
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            pass
    return inodes


def _holds_socket(pid, inodes):
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def rss_kib(pid):
    """VmRSS of <pid> in KiB, or None when it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Samples VmRSS of <pids> every <interval> s in a thread; max_kib maps pid -> max KiB."""

    def __init__(self, pids, interval=0.02):
        self.pids = list(pids)
        self.interval = interval
        self.max_kib = {p: 0 for p in self.pids}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            for p in self.pids:
                v = rss_kib(p)
                if v is not None and v > self.max_kib[p]:
                    self.max_kib[p] = v
            time.sleep(self.interval)

    def stop(self):
        self._stop.set()
        self._t.join()
        return self.max_kib


class Backend:
    """A dsp-testbackend process on an ephemeral port."""

    def __init__(self, name):
        self.name = name
        self.proc = subprocess.Popen([TESTBACKEND, "-l", "127.0.0.1:0", "-n", name],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _record_pid(self.proc.pid)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        m = re.match(r"PORT (\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("dsp-testbackend %s did not print its port (got %r, stderr %r)"
                               % (name, line, self.proc.stderr.read()))
        self.port = int(m.group(1))
        self.addr = "127.0.0.1:%d" % self.port

    def stats(self):
        r = request(self.port, "/stats", host="backend")
        return json.loads(r.body)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


# ---- configuration --------------------------------------------------------------------------

def _val(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return _group(v)
    if isinstance(v, (list, tuple)):
        if any(isinstance(x, dict) for x in v):  # groups need a libconfig list, not an array
            return "(" + ", ".join(_val(x) for x in v) + ")"
        return "[" + ", ".join(_val(x) for x in v) + "]"
    return '"%s"' % str(v).replace("\\", "\\\\").replace('"', '\\"')


def _group(d):
    return "{ " + " ".join("%s = %s;" % (k, _val(v)) for k, v in d.items()) + " }"


def svc(name, *backends, **opts):
    """A service entry; <backends> are Backend objects or "ip:port" strings."""
    d = {"name": name, "backends": [b.addr if isinstance(b, Backend) else b for b in backends]}
    d.update(opts)
    return d


def route(host, service, **opts):
    """A route entry (opts: path, methods, priority)."""
    d = {"host": host}
    d.update(opts)
    d["service"] = service
    return d


def make_config(port, tmp, services, routes, workers=2, limits=None, extra=""):
    """Render a dispatcher.conf. Each service and route sits on a line of its own."""
    lim = {"header_timeout_ms": 10000, "idle_timeout_ms": 60000, "shutdown_timeout_ms": 3000}
    lim.update(limits or {})
    lines = [
        "# generated by tests/integration/dsptest.py",
        "workers = %d;" % workers,
        'pid_file = "%s";' % os.path.join(tmp, "dispatcher.pid"),
        'admin = { socket = "%s"; };' % os.path.join(tmp, "admin.sock"),
        'log = { error = "stderr"; level = "info"; access = "%s"; };'
        % os.path.join(tmp, "access.log"),
        "limits = %s;" % _group(lim),
        'listeners = ( { address = "127.0.0.1:%d"; } );' % port,
    ]
    if extra:
        lines.append(extra)
    lines.append("services = (")
    lines += ["  %s%s" % (_group(s), "," if i < len(services) - 1 else "")
              for i, s in enumerate(services)]
    lines.append(");")
    lines.append("routes = (")
    lines += ["  %s%s" % (_group(r), "," if i < len(routes) - 1 else "")
              for i, r in enumerate(routes)]
    lines.append(");")
    return "\n".join(lines) + "\n"


def render_fixture(name, **values):
    """tests/fixtures/<name> with ${KEY} placeholders substituted."""
    with open(os.path.join(FIXTURES, name)) as f:
        return string.Template(f.read()).substitute(**values)


class Dispatcher:
    """dispatcher-master -c CONF in the foreground, stderr captured to <tmp>/error.log."""

    def __init__(self, conf_text=None, port=None, tmp=None, workers=2):
        self.tmp = tmp or tempfile.mkdtemp(prefix="dsp-it-")
        _record_tmp(self.tmp)
        self.port = port or free_port()
        self.workers = workers
        self.conf = os.path.join(self.tmp, "dispatcher.conf")
        self.errlog = os.path.join(self.tmp, "error.log")
        self.outlog = os.path.join(self.tmp, "stdout.log")
        self.proc = None
        self.initial_workers = []
        if conf_text is not None:
            self.write_config(conf_text)

    def write_config(self, text):
        tmpf = self.conf + ".new"
        with open(tmpf, "w") as f:
            f.write(text)
        os.replace(tmpf, self.conf)

    def start(self, wait=True):
        self._err = open(self.errlog, "ab")
        self._out = open(self.outlog, "ab")
        self.proc = subprocess.Popen([MASTER, "-c", self.conf], stdout=self._out,
                                     stderr=self._err, stdin=subprocess.DEVNULL, cwd=self.tmp)
        _record_pid(self.proc.pid)
        STARTED.append(self)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s=15):
        deadline = time.monotonic() + timeout_s * (2 if SANITIZED else 1)
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("dispatcher-master exited with %s during start-up:\n%s"
                                     % (self.proc.returncode, self.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("dispatcher-master did not accept on port %d within %ss:\n%s"
                                     % (self.port, timeout_s, self.log_tail()))
            time.sleep(0.02)
        ok = wait_for(lambda: len(self.worker_pids()) >= self.workers,
                      max(0.5, deadline - time.monotonic()))
        if not ok:
            raise AssertionError("expected %d workers, have children %s:\n%s"
                                 % (self.workers, children_of(self.proc.pid), self.log_tail()))
        self.initial_workers = self.worker_pids()
        for p in self.initial_workers:
            _record_pid(p)

    def worker_pids(self):
        """Children of the master that hold a listening socket on our port (all children when
        none does, e.g. while they start)."""
        kids = children_of(self.proc.pid)
        inodes = _listen_inodes(self.port)
        holders = [p for p in kids if _holds_socket(p, inodes)]
        return holders if holders else kids

    def pid_from_file(self):
        with open(os.path.join(self.tmp, "dispatcher.pid")) as f:
            return int(f.read().strip())

    def hup(self, conf_text=None):
        if conf_text is not None:
            self.write_config(conf_text)
        self.proc.send_signal(signal.SIGHUP)

    def log(self):
        try:
            with open(self.errlog, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log().splitlines()[-n:])

    def sanitizer_reports(self, context=8):
        """Sanitizer reports in the error log, each with the <context> lines that follow."""
        lines = [l for l in self.log().splitlines() if l.strip()]
        pats = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                "WARNING: ThreadSanitizer", "ERROR: UndefinedBehaviorSanitizer")
        return ["\n    ".join(lines[i:i + 1 + context])
                for i, line in enumerate(lines) if any(p in line for p in pats)]

    def stop(self, expect_rc=0, check_workers=True):
        """SIGTERM and wait. Returns a list of problems (empty when all is well)."""
        problems = []
        if self.proc is None:
            return problems
        if self.proc.poll() is None:
            if check_workers:
                now = self.worker_pids()
                gone = sorted(set(self.initial_workers) - set(now))
                if gone:
                    problems.append("worker(s) %s died during the test (workers now %s)"
                                    % (gone, now))
            kids = children_of(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20 if SANITIZED else 10)
            except subprocess.TimeoutExpired:
                problems.append("dispatcher-master did not exit within 10s of SIGTERM")
                self.proc.kill()
                self.proc.wait()
            for k in kids:
                if wait_for(lambda: rss_kib(k) is None, 3) is None:
                    problems.append("worker %d still alive after the master exited" % k)
                    try:
                        os.kill(k, signal.SIGKILL)
                    except OSError:
                        pass
        if expect_rc is not None and self.proc.returncode != expect_rc:
            problems.append("dispatcher-master exit code %s, expected %s"
                            % (self.proc.returncode, expect_rc))
        reps = self.sanitizer_reports()
        if reps:
            problems.append("sanitizer reports in the error log:\n  " + "\n  ".join(reps[:5]))
        self._err.close()
        self._out.close()
        return problems


class TestCase(unittest.TestCase):
    """Base class: backend() and dispatcher() start processes that are stopped at the end of the
    test; a dispatcher that does not stop cleanly (exit 0, workers alive, no sanitizer report)
    fails the test."""

    def backend(self, name):
        b = Backend(name)
        self.addCleanup(b.stop)
        return b

    def dispatcher(self, services, routes, workers=2, limits=None, extra="", start=True):
        d = Dispatcher(workers=workers)
        d.write_config(make_config(d.port, d.tmp, services, routes, workers, limits, extra))
        if start:
            self.start_dispatcher(d)
        return d

    def start_dispatcher(self, d, **kw):
        d.start(**kw)
        self.addCleanup(self._stop_dispatcher, d)
        return d

    def _stop_dispatcher(self, d):
        problems = d.stop(check_workers=getattr(self, "check_workers", True))
        if problems:
            self.fail("dispatcher on port %d did not stop cleanly:\n- %s"
                      % (d.port, "\n- ".join(problems)))

    def assertJsonError(self, r, status, error=None):
        """<r> has <status>, Content-Type application/json and a JSON body with "error"."""
        self.assertEqual(r.status, status, "status; body %r" % r.body[:300])
        ctype = r.header("Content-Type") or ""
        self.assertTrue(ctype.startswith("application/json"),
                        "Content-Type %r, expected application/json" % ctype)
        try:
            j = json.loads(r.body)
        except ValueError:
            self.fail("body is not JSON: %r" % r.body[:300])
        self.assertIn("error", j, "JSON body %r has no \"error\" key" % j)
        if error is not None:
            self.assertEqual(j["error"], error)
        return j


# ---- HTTP client over raw sockets -----------------------------------------------------------

class ConnectionClosed(Exception):
    pass


class Response:
    def __init__(self, version, status, reason, headers, body):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value), as received
        self.body = body        # bytes, or None when streamed to a sink
        self.closed = False     # the server closed the connection after this response
        self.interim = []       # 1xx responses received before this one

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %d %r>" % (self.status, (self.body or b"")[:80])


def build_request(method, path, host, headers=(), body=None, version="HTTP/1.1"):
    """Request bytes. Content-Length is added for a bytes <body> unless headers set framing."""
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    names = set()
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
        names.add(k.lower())
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append("Content-Length: %d" % len(body))
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return data + (body or b"")


class Conn:
    """One client connection; never reconnects, so a test can tell that it survived."""

    def __init__(self, port, timeout=10, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        if self.eof:
            raise ConnectionClosed("connection closed by peer")
        d = self.sock.recv(1 << 20)
        if not d:
            self.eof = True
            raise ConnectionClosed("connection closed by peer")
        self.buf += d

    def _line(self, limit=1 << 20):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + 1]
                return line.rstrip(b"\r")
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill()

    def _take(self, n, sink, store):
        """Consume exactly <n> body bytes."""
        while n > 0:
            if not self.buf:
                self._fill()
            k = min(n, len(self.buf))
            chunk = bytes(self.buf[:k])
            del self.buf[:k]
            if sink:
                sink(chunk)
            else:
                store.append(chunk)
            n -= k

    def read_head(self):
        """Read one response head: (version, status, reason, headers)."""
        line = self._line()
        while line == b"":
            line = self._line()
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ValueError("bad status line %r" % line[:200])
        headers = []
        while True:
            h = self._line()
            if h == b"":
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers

    def read_response(self, method="GET", sink=None, keep_interim=False):
        """Read a response (skipping 1xx ones, kept in .interim); <sink>(bytes) receives the body
        instead of .body when given."""
        interim = []
        while True:
            version, status, reason, headers = self.read_head()
            if 100 <= status < 200 and status != 101:
                interim.append((status, headers))
                continue
            break
        r = Response(version, status, reason, headers, None)
        r.interim = interim
        store = []
        te = (r.header("Transfer-Encoding") or "").lower()
        cl = r.header("Content-Length")
        if method == "HEAD" or status in (204, 304) or status == 101:
            pass
        elif "chunked" in te:
            while True:
                szl = self._line().split(b";")[0].strip()
                size = int(szl, 16)
                if size == 0:
                    while self._line() != b"":
                        pass
                    break
                self._take(size, sink, store)
                if self._line() != b"":
                    raise ValueError("missing CRLF after chunk")
        elif cl is not None:
            self._take(int(cl), sink, store)
        else:
            try:
                while True:
                    if self.buf:
                        self._take(len(self.buf), sink, store)
                    self._fill()
            except ConnectionClosed:
                r.closed = True
        if sink is None:
            r.body = b"".join(store)
        conn_hdr = (r.header("Connection") or "").lower()
        if "close" in conn_hdr or (version == "HTTP/1.0" and "keep-alive" not in conn_hdr):
            r.closed = True
        return r

    def request(self, method="GET", path="/", host="test.do", headers=(), body=None, sink=None):
        self.send(build_request(method, path, host, headers, body))
        return self.read_response(method, sink=sink)

    def wait_closed(self, timeout_s=3):
        """True when the peer closes the connection (EOF or reset) within <timeout_s>; bytes
        that arrive meanwhile are kept in .buf."""
        old = self.sock.gettimeout()
        self.sock.settimeout(0.1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    d = self.sock.recv(65536)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    return True
                if not d:
                    self.eof = True
                    return True
                self.buf += d
            return False
        finally:
            self.sock.settimeout(old)


def request(port, path="/", host="test.do", method="GET", headers=(), body=None, timeout=10):
    """One request on a fresh connection, which is closed afterwards."""
    with Conn(port, timeout=timeout) as c:
        return c.request(method, path, host, headers, body)


def pattern_crc(n):
    """crc32 of the first <n> bytes of the testbackend pattern (byte i = i*7 % 251)."""
    period = bytes((i * 7) % 251 for i in range(251))
    block = period * 4096
    crc = 0
    while n > 0:
        k = min(n, len(block))
        crc = zlib.crc32(block[:k] if k < len(block) else block, crc)
        n -= k
    return crc


class Uploader:
    """Body generator: <total> bytes of a seeded random 1 MiB block repeated; crc32 and count of
    what was produced are tracked as it goes."""

    def __init__(self, total, chunk_sizes=(MIB,)):
        self.total = total
        self.block = random.Random(1234).randbytes(MIB + 1)
        self.chunk_sizes = chunk_sizes
        self.crc = 0
        self.sent = 0

    def chunks(self):
        off = 0
        i = 0
        while self.sent < self.total:
            want = min(self.chunk_sizes[i % len(self.chunk_sizes)], self.total - self.sent)
            i += 1
            out = bytearray()
            while len(out) < want:
                k = min(want - len(out), MIB - off)
                out += self.block[off:off + k]
                off = (off + k) % MIB
            out = bytes(out)
            self.crc = zlib.crc32(out, self.crc)
            self.sent += len(out)
            yield out


# ---- waiting on conditions --------------------------------------------------------------------

def wait_until(pred, timeout_s, what, interval=0.02):
    """wait_for() that fails the test when <pred> is still false after <timeout_s>: <what> says
    what was awaited. Returns the predicate's last (true) value. Use it instead of a fixed sleep
    before asserting a count or a state; a sleep may stay only to pace load or to give something
    that must NOT happen the time to show."""
    v = wait_for(pred, timeout_s, interval)
    if not v:
        raise AssertionError("%s: still not so after %.1f s" % (what, timeout_s))
    return v


def admin_ask(d, cmd, timeout=10):
    """One command on the admin socket of Dispatcher <d> (make_config puts it in d.tmp); the
    parsed JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(os.path.join(d.tmp, "admin.sock"))
        s.sendall(cmd.encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise EOFError("admin socket closed; got %r" % buf[:200])
            buf += chunk
    return json.loads(buf.partition(b"\n")[0])


def generation(d):
    """The generation the master of <d> last published."""
    return admin_ask(d, "show workers")["generation"]


def workers_on_generation(d, gen):
    """True when every live worker of <d> serves generation <gen> or a later one, and at least
    one does (a reload is complete for every connection's next request)."""
    try:
        ws = [w for w in admin_ask(d, "show workers")["workers"] if w["alive"]]
    except (OSError, ValueError, EOFError):
        return False
    return bool(ws) and all(w["generation"] >= gen for w in ws)


def backend_state(d, service, address):
    """The shared state ("up", "down", "disabled") of backend <address> of <service>, from
    `show instances`; None when not listed."""
    for s in admin_ask(d, "show instances")["instances"]:
        if s["name"] == service:
            for b in s["backends"]:
                if b["address"] == address:
                    return b["state"]
    return None
