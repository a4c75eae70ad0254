"""Admin socket, dispatcherctl and admin HTTP: every command through the socket and through
dispatcherctl, backend control that changes real traffic, peer-credential refusal, hostile input
(garbage, 1 MiB lines, many clients), /metrics syntax and exact counter movement, latency
percentiles of a slow backend."""

import json
import os
import re
import shutil
import socket
import subprocess
import time

import dsptest
from dsptest import make_config, request, route, svc

CTL = os.path.join(dsptest.BIN_DIR, "dispatcherctl")


def admin_config(d, services, routes, http_port=None, mode=None, extra="", workers=2):
    """make_config with the admin block replaced: socket in the temp dir, optional HTTP port."""
    text = make_config(d.port, d.tmp, services, routes, workers=workers, extra=extra)
    sock = os.path.join(d.tmp, "admin.sock")
    parts = ['socket = "%s";' % sock]
    if mode is not None:
        parts.append('mode = "%s";' % mode)
    if http_port is not None:
        parts.append('http = "127.0.0.1:%d";' % http_port)
    old = 'admin = { socket = "%s"; };' % sock
    assert old in text
    return text.replace(old, "admin = { %s };" % " ".join(parts))


class AdminConn:
    """One admin-socket connection; ask() sends a line and returns the parsed answer."""

    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b"\n" not in self.buf:
            d = self.s.recv(1 << 20)
            if not d:
                raise EOFError("admin socket closed; got %r" % self.buf[:200])
            self.buf += d
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def answer(self):
        raw = self.line()
        j = json.loads(raw)
        assert isinstance(j, dict) and isinstance(j.get("ok"), bool), raw[:300]
        return j

    def ask(self, cmd):
        self.send(cmd.encode() + b"\n")
        return self.answer()

    def close(self):
        self.s.close()


def ask(path, cmd):
    c = AdminConn(path)
    try:
        return c.ask(cmd)
    finally:
        c.close()


def ctl(sock, *args, user=None):
    """Run dispatcherctl; returns (rc, stdout, stderr)."""
    cmd = [CTL, "-s", sock] + list(args)
    if user is not None:
        cmd = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups"] + cmd
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def http_get(port, path, method="GET"):
    with dsptest.Conn(port) as c:
        return c.request(method, path, host="127.0.0.1")


# ---- a strict Prometheus text format 0.0.4 parser -------------------------------------------
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(r"^(%s)(\{(?:%s)(?:,%s)*\})? ([^ ]+)( -?\d+)?$" % (_NAME, _LABEL, _LABEL))
_TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def parse_prometheus(text):
    """Parse exposition text strictly; returns {(name, frozenset(labels)): value}. Raises
    AssertionError on any deviation: bad line, sample before/without its TYPE, a family split
    in two, a duplicate sample, histogram buckets that are not cumulative or lack +Inf."""
    assert text.endswith("\n"), "exposition must end with a newline"
    samples = {}
    types = {}
    seen_families = []
    current = None
    for n, line in enumerate(text.split("\n")[:-1], 1):
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) (%s) (.*)$" % _NAME, line)
            assert m, "line %d: bad comment %r" % (n, line)
            if m.group(1) == "TYPE":
                assert m.group(3) in _TYPES, "line %d: bad type %r" % (n, line)
                assert m.group(2) not in types, "line %d: second TYPE for %s" % (n, m.group(2))
                types[m.group(2)] = m.group(3)
                assert m.group(2) not in seen_families, "family %s split" % m.group(2)
                seen_families.append(m.group(2))
                current = m.group(2)
            continue
        assert line.strip() != "", "line %d: empty line" % n
        m = _SAMPLE.match(line)
        assert m, "line %d: bad sample %r" % (n, line)
        name = m.group(1)
        fam = name
        for suf in ("_bucket", "_sum", "_count"):
            if name.endswith(suf) and types.get(name[:-len(suf)]) == "histogram":
                fam = name[:-len(suf)]
        assert fam == current, "line %d: sample %s outside its family %s" % (n, name, current)
        labels = {}
        if m.group(2):
            for lm in re.finditer(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2)):
                assert lm.group(1) not in labels, "line %d: duplicate label" % n
                labels[lm.group(1)] = lm.group(2)
        v = m.group(3)
        assert v in ("+Inf", "-Inf", "NaN") or re.match(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$", v), \
            "line %d: bad value %r" % (n, v)
        key = (name, frozenset(labels.items()))
        assert key not in samples, "line %d: duplicate sample" % n
        samples[key] = float(v)
    # Histograms: per label set, buckets cumulative, +Inf == _count.
    for fam, t in types.items():
        if t != "histogram":
            continue
        groups = {}
        for (name, labels), v in samples.items():
            if name == fam + "_bucket":
                d = dict(labels)
                le = d.pop("le")
                groups.setdefault(frozenset(d.items()), []).append(
                    (float("inf") if le == "+Inf" else float(le), v))
        for lbl, bks in groups.items():
            bks.sort()
            assert bks[-1][0] == float("inf"), "%s: no +Inf bucket" % fam
            for a, b in zip(bks, bks[1:]):
                assert b[1] >= a[1], "%s: buckets not cumulative" % fam
            assert samples[(fam + "_count", lbl)] == bks[-1][1], "%s: _count != +Inf" % fam
            assert (fam + "_sum", lbl) in samples, "%s: no _sum" % fam
    return samples


def metric(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


class AdminTest(dsptest.TestCase):

    def start(self, services, routes, http=False, mode=None, extra="", workers=2):
        d = dsptest.Dispatcher(workers=workers)
        self.http_port = dsptest.free_port() if http else None
        d.write_config(admin_config(d, services, routes, self.http_port, mode, extra, workers))
        self.start_dispatcher(d)
        self.sock = os.path.join(d.tmp, "admin.sock")
        self.assertTrue(dsptest.wait_for(lambda: os.path.exists(self.sock), 5))
        return d

    def backends_seen(self, d, n, path="/echo", host="x.do"):
        seen = {}
        for _ in range(n):
            r = request(d.port, path, host=host)
            key = (r.status, r.header("X-Backend"))
            seen[key] = seen.get(key, 0) + 1
        return seen

    # ---- the socket --------------------------------------------------------------------------
    def test_every_command_on_the_socket(self):
        b1, b2 = self.backend("b1"), self.backend("b2")
        d = self.start([svc("web", b1, b2), svc("idle")],
                       [route("*", "web"), route("idle.do", "idle", path="/i/",
                                                 methods=["GET", "POST"], priority=2)])
        for _ in range(6):
            self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)
        c = AdminConn(self.sock)

        j = c.ask("help")
        self.assertTrue(j["ok"])
        for cmd in ("show health", "show instances", "show routes", "show workers", "show stats",
                    "show certs", "reload", "disable backend SERVICE ADDRESS",
                    "enable backend SERVICE ADDRESS", "reset circuit SERVICE ADDRESS"):
            self.assertIn(cmd, j["commands"])

        j = c.ask("show health")
        self.assertTrue(j["ok"])
        self.assertEqual(j["status"], "healthy", j)
        self.assertIsInstance(j["uptime_s"], int)
        self.assertGreater(j["memory_mb"], 0)
        self.assertEqual(j["workers"], {"configured": 2, "alive": 2, "restarts": 0})
        self.assertEqual(j["instances"], 2)
        self.assertEqual(j["config"]["generation"], 1)
        self.assertLessEqual(abs(j["config"]["loaded_at"] - time.time()), 60)
        self.assertEqual(j["config"]["source"], "file")

        j = c.ask("show instances")
        web = [s for s in j["instances"] if s["name"] == "web"][0]
        self.assertEqual(web["hosts"], ["*"])
        self.assertEqual(web["balance"], "round-robin")
        self.assertEqual(web["requests"], 6)
        self.assertEqual(web["errors"], 0)
        self.assertGreater(web["rps"], 0)
        self.assertEqual(set(web["latency_ms"]), {"p50", "p95", "p99"})
        self.assertEqual([b["address"] for b in web["backends"]], [b1.addr, b2.addr])
        for b in web["backends"]:
            for k in ("state", "circuit", "active_connections", "requests", "errors",
                      "consecutive_failures", "latency_ms"):
                self.assertIn(k, b)
            self.assertEqual(b["state"], "up")
            self.assertEqual(b["circuit"], "closed")
        self.assertEqual(sum(b["requests"] for b in web["backends"]), 6)
        idle = [s for s in j["instances"] if s["name"] == "idle"][0]
        self.assertEqual(idle["backends"], [])
        self.assertEqual(idle["hosts"], ["idle.do"])

        j = c.ask("show routes")
        self.assertEqual(len(j["routes"]), 2)
        self.assertEqual(j["routes"][1], {"host": "idle.do", "path": "/i/",
                                          "methods": ["GET", "POST"], "priority": 2,
                                          "source": "file", "service": "idle",
                                          "middlewares": []})

        j = c.ask("show workers")
        self.assertEqual(len(j["workers"]), 2)
        self.assertEqual(sorted(w["pid"] for w in j["workers"]), sorted(d.worker_pids()))
        self.assertTrue(all(w["alive"] and w["generation"] == 1 for w in j["workers"]))
        self.assertEqual(sum(w["requests"] for w in j["workers"]), 6)

        j = c.ask("show stats")
        self.assertEqual(j["requests"], 6)
        self.assertEqual(j["status"]["2xx"], 6)
        self.assertEqual(j["generation"], 1)

        j = c.ask("show certs")
        self.assertTrue(j["ok"])
        self.assertIsInstance(j["certs"], list)

        # reload: the new generation, and the new route serves.
        d.write_config(admin_config(d, [svc("web", b1, b2), svc("idle"), svc("new", b2)],
                                    [route("*", "web"), route("new.do", "new")]))
        j = c.ask("reload")
        self.assertEqual(j, {"ok": True, "generation": 2})
        self.assertTrue(dsptest.wait_for(
            lambda: request(d.port, "/echo", host="new.do").header("X-Backend") == "b2", 3))
        self.assertEqual(c.ask("show health")["config"]["generation"], 2)
        # A broken config: the error names file and line, nothing changes.
        d.write_config(admin_config(d, [svc("web", b1)], [route("*", "nope")]))
        j = c.ask("reload")
        self.assertFalse(j["ok"])
        self.assertRegex(j["error"], re.escape(d.conf) + r":\d+: ")
        self.assertEqual(c.ask("show health")["config"]["generation"], 2)
        self.assertEqual(request(d.port, "/echo", host="new.do").status, 200)
        c.close()

    def test_disable_enable_and_reset_circuit_change_traffic(self):
        b1, b2 = self.backend("b1"), self.backend("b2")
        b3 = self.backend("b3")
        d = self.start([svc("web", b1, b2),
                        svc("cb", b3, circuit_breaker={"failures": 2, "open_ms": 600000,
                                                       "count_5xx": True})],
                       [route("*", "web"), route("cb.do", "cb")])
        self.assertEqual(set(self.backends_seen(d, 8)), {(200, "b1"), (200, "b2")})

        j = ask(self.sock, "disable backend web %s" % b1.addr)
        self.assertTrue(j["ok"], j)
        self.assertEqual(self.backends_seen(d, 10), {(200, "b2"): 10})
        st = ask(self.sock, "show instances")["instances"][0]["backends"]
        self.assertEqual([b["state"] for b in st], ["disabled", "up"])
        self.assertTrue(ask(self.sock, "enable backend web %s" % b1.addr)["ok"])
        self.assertEqual(set(self.backends_seen(d, 8)), {(200, "b1"), (200, "b2")})

        # Both disabled: 503; then back.
        self.assertTrue(ask(self.sock, "disable backend web %s" % b1.addr)["ok"])
        self.assertTrue(ask(self.sock, "disable backend web %s" % b2.addr)["ok"])
        self.assertEqual(request(d.port, "/echo", host="x.do").status, 503)
        self.assertEqual(ask(self.sock, "show health")["status"], "degraded")
        self.assertTrue(ask(self.sock, "enable backend web %s" % b1.addr)["ok"])
        self.assertTrue(ask(self.sock, "enable backend web %s" % b2.addr)["ok"])
        self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)

        # Two 500s open cb's circuit; requests are refused until the circuit is reset.
        for _ in range(2):
            self.assertEqual(request(d.port, "/status?code=500", host="cb.do").status, 500)
        self.assertEqual(request(d.port, "/echo", host="cb.do").status, 503)
        inst = [s for s in ask(self.sock, "show instances")["instances"] if s["name"] == "cb"][0]
        self.assertEqual(inst["backends"][0]["circuit"], "open")
        j = ask(self.sock, "reset circuit cb %s" % b3.addr)
        self.assertTrue(j["ok"], j)
        r = request(d.port, "/echo", host="cb.do")
        self.assertEqual((r.status, r.header("X-Backend")), (200, "b3"))
        inst = [s for s in ask(self.sock, "show instances")["instances"] if s["name"] == "cb"][0]
        self.assertEqual(inst["backends"][0]["circuit"], "closed")
        self.assertEqual(inst["backends"][0]["consecutive_failures"], 0)

        # Wrong names and arguments.
        for cmd in ("disable backend nope %s" % b1.addr, "disable backend web 10.0.0.1:1",
                    "enable backend web", "reset circuit cb", "disable backend web a b"):
            j = ask(self.sock, cmd)
            self.assertFalse(j["ok"], cmd)
            self.assertTrue(j["error"], cmd)

    def test_hostile_input_keeps_the_socket_serving(self):
        b = self.backend("b")
        d = self.start([svc("web", b)], [route("*", "web")])
        other = AdminConn(self.sock)  # an idle client must not block anyone
        c = AdminConn(self.sock, timeout=20)
        # 1 MiB without a newline gets its answer at once, the rest of the line is skipped.
        c.send(b"A" * (1 << 20))
        j = c.answer()
        self.assertFalse(j["ok"])
        self.assertIn("too long", j["error"])
        c.send(b"B" * 1000 + b"\nshow health\n")
        self.assertTrue(c.answer()["ok"])
        # Garbage of every kind, each answered in order, then a good command.
        junk = [b"\x00\x01\x02\xff\xfe", b"rm -rf /", b"show", b"show everything",
                b"SHOW HEALTH please", "héllo".encode(), b"\x1b[2J", b"{\"json\":1}",
                b"disable", b"x" * 4097]
        c.send(b"\n".join(junk) + b"\nshow workers\n")
        for k in junk:
            j = c.answer()
            self.assertFalse(j["ok"], k)
            self.assertIsInstance(j["error"], str)
        self.assertTrue(c.answer()["ok"])
        # Pipelined good commands all answered.
        c.send(b"help\n" * 200)
        for _ in range(200):
            self.assertTrue(c.answer()["ok"])
        # Many clients at once.
        conns = [AdminConn(self.sock) for _ in range(20)]
        for x in conns:
            x.send(b"show stats\n")
        for x in conns:
            self.assertTrue(x.answer()["ok"])
            x.close()
        # A client that vanishes mid-line and one that half-closes after its command.
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.sock)
        s.sendall(b"show hea")
        s.close()
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.sock)
        s.sendall(b"show health")
        s.shutdown(socket.SHUT_WR)
        data = dsptest.read_to_eof(s)
        s.close()
        self.assertTrue(json.loads(data)["ok"])
        self.assertTrue(other.ask("show health")["ok"])
        self.assertTrue(c.ask("show health")["ok"])
        other.close()
        c.close()
        self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)

    def test_other_uid_is_refused(self):
        b = self.backend("b")
        # A world-writable socket so that the connection gets as far as the credential check.
        self.start([svc("web", b)], [route("*", "web")], mode="0666")
        self.assertEqual(os.stat(self.sock).st_mode & 0o777, 0o666)
        os.chmod(os.path.dirname(self.sock), 0o755)  # temp dirs are 0700
        nobody = 65534
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setgroups([])
                os.setgid(nobody)
                os.setuid(nobody)
                c = AdminConn(self.sock)
                try:
                    c.send(b"show health\n")
                except OSError:
                    pass  # refused before the command was read: the answer is still there
                try:
                    j = c.answer()
                    code = 0 if (not j["ok"] and "permission" in j["error"]) else 3
                    # and nothing more: the connection is closed
                    try:
                        c.line()
                        code = 4
                    except (EOFError, ConnectionResetError):
                        pass
                except (EOFError, ConnectionResetError):
                    code = 0
            except Exception:
                code = 2
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.WEXITSTATUS(status), 0, "peer with uid 65534 was not refused")
        # dispatcherctl as nobody: an error answer (exit 1); root is served.
        rc, out, err = ctl(self.sock, "show", "health", user=nobody)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("permission denied", err)
        self.assertTrue(ask(self.sock, "show health")["ok"])

    def test_default_mode_keeps_others_out(self):
        b = self.backend("b")
        self.start([svc("web", b)], [route("*", "web")])
        self.assertEqual(os.stat(self.sock).st_mode & 0o777, 0o600)
        # tmp dirs are 0700: let nobody reach the socket file itself.
        os.chmod(os.path.dirname(self.sock), 0o755)
        rc, out, err = ctl(self.sock, "show", "health", user=65534)
        self.assertEqual(rc, 2, out + err)

    # ---- dispatcherctl ------------------------------------------------------------------------
    def test_dispatcherctl_every_command(self):
        b1, b2 = self.backend("b1"), self.backend("b2")
        d = self.start([svc("web", b1, b2)], [route("*", "web"), route("a.do", "web", path="/a/")])
        for _ in range(4):
            request(d.port, "/echo", host="x.do")
        for args in (["help"], ["show", "health"], ["show", "instances"], ["show", "routes"],
                     ["show", "workers"], ["show", "stats"], ["show", "certs"]):
            rc, out, err = ctl(self.sock, "--json", *args)
            self.assertEqual(rc, 0, err)
            self.assertEqual(out.count("\n"), 1)
            self.assertTrue(json.loads(out)["ok"])
            rc, out, err = ctl(self.sock, *args)
            self.assertEqual(rc, 0, err)
            self.assertTrue(out.strip(), args)
            self.assertFalse(out.lstrip().startswith("{"), "table expected for %s" % args)
        rc, out, _ = ctl(self.sock, "show", "instances")
        self.assertIn("BACKEND", out)
        self.assertIn("CIRCUIT", out)
        self.assertIn("P99 ms", out)
        self.assertIn(b1.addr, out)
        # Aligned: every backend row has its state in the same column as the header's STATE.
        lines = out.splitlines()
        hdr = [l for l in lines if l.strip().startswith("BACKEND")][0]
        col = hdr.index("STATE")
        rows = [l for l in lines if b1.addr in l or b2.addr in l]
        self.assertEqual(len(rows), 2)
        for r in rows:
            self.assertEqual(r[col:col + 2], "up", out)
        rc, out, _ = ctl(self.sock, "show", "health")
        self.assertRegex(out, r"status\s+healthy")
        rc, out, _ = ctl(self.sock, "show", "routes")
        self.assertRegex(out, r"a\.do\s+/a/\s+\*\s+0\s+web")

        rc, out, err = ctl(self.sock, "disable", "backend", "web", b1.addr)
        self.assertEqual(rc, 0, err)
        self.assertIn("disabled", out)
        self.assertEqual(self.backends_seen(d, 6), {(200, "b2"): 6})
        rc, out, err = ctl(self.sock, "enable", "backend", "web", b1.addr)
        self.assertEqual(rc, 0, err)
        self.assertEqual(set(self.backends_seen(d, 6)), {(200, "b1"), (200, "b2")})
        rc, out, err = ctl(self.sock, "reset", "circuit", "web", b2.addr)
        self.assertEqual(rc, 0, err)
        rc, out, err = ctl(self.sock, "reload")
        self.assertEqual(rc, 0, err)
        self.assertIn("generation 2", out)

        rc, out, err = ctl(self.sock, "bogus", "command")
        self.assertEqual(rc, 1)
        self.assertIn("unknown command", err)
        rc, out, err = ctl(self.sock, "--json", "disable", "backend", "web", "1.2.3.4:5")
        self.assertEqual(rc, 1)
        self.assertFalse(json.loads(out)["ok"])
        rc, out, err = ctl(os.path.join(d.tmp, "nothing-here.sock"), "show", "health")
        self.assertEqual(rc, 2)
        self.assertIn("cannot connect", err)

    def test_dispatcherctl_default_socket_from_config(self):
        b = self.backend("b")
        d = self.start([svc("web", b)], [route("*", "web")])
        # No -s: ./dispatcher.conf's admin.socket, resolved against the file's folder.
        work = os.path.join(d.tmp, "cwd")
        os.makedirs(work)
        with open(os.path.join(work, "dispatcher.conf"), "w") as f:
            f.write('admin = { socket = "../admin.sock"; };\n')
        p = subprocess.run([CTL, "--json", "show", "health"], cwd=work, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(json.loads(p.stdout)["ok"])
        p = subprocess.run([CTL, "-c", d.conf, "show", "workers"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)

    # ---- admin HTTP and metrics ---------------------------------------------------------------
    def test_http_api_and_metrics(self):
        b = self.backend("b")
        d = self.start([svc("web", b), svc("api", b)], [route("*", "web"),
                                                         route("api.do", "api")], http=True)
        for _ in range(3):
            request(d.port, "/echo", host="x.do")
        for name in ("health", "instances", "routes", "workers", "stats", "certs"):
            r = http_get(self.http_port, "/api/v1/dispatcher/" + name)
            self.assertEqual(r.status, 200, name)
            self.assertTrue(r.header("Content-Type").startswith("application/json"))
            j = json.loads(r.body)
            self.assertTrue(j["ok"])
            sock = ask(self.sock, "show " + name)
            self.assertEqual(set(j), set(sock), name)
        self.assertEqual(json.loads(http_get(self.http_port,
                                             "/api/v1/dispatcher/routes").body),
                         ask(self.sock, "show routes"))
        self.assertEqual(http_get(self.http_port, "/api/v1/dispatcher/nope").status, 404)
        self.assertEqual(http_get(self.http_port, "/").status, 404)
        self.assertEqual(http_get(self.http_port, "/metrics", method="POST").status, 405)
        r = http_get(self.http_port, "/metrics", method="HEAD")
        self.assertEqual((r.status, r.body), (200, b""))

        r = http_get(self.http_port, "/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.header("Content-Type").startswith("text/plain; version=0.0.4"))
        before = parse_prometheus(r.body.decode())
        for fam in ("dispatcher_requests_total", "dispatcher_request_duration_seconds_bucket",
                    "dispatcher_active_connections", "dispatcher_backend_up",
                    "dispatcher_backend_circuit_state", "dispatcher_worker_restarts_total",
                    "dispatcher_config_generation", "dispatcher_config_reload_failures_total"):
            self.assertTrue(any(k[0] == fam for k in before), fam)
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "metrics"], input=r.body,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            self.assertEqual(p.returncode, 0, p.stdout)

        # Counters move by exactly the number of requests sent.
        n_ok, n_404, n_api = 37, 5, 11
        for _ in range(n_ok):
            self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)
        for _ in range(n_404):
            self.assertEqual(request(d.port, "/status?code=404", host="x.do").status, 404)
        for _ in range(n_api):
            self.assertEqual(request(d.port, "/echo", host="api.do").status, 200)
        after = parse_prometheus(http_get(self.http_port, "/metrics").body.decode())

        def delta(name, **lb):
            return (metric(after, name, **lb) or 0) - (metric(before, name, **lb) or 0)
        self.assertEqual(delta("dispatcher_requests_total", service="web", code="2xx"), n_ok)
        self.assertEqual(delta("dispatcher_requests_total", service="web", code="4xx"), n_404)
        self.assertEqual(delta("dispatcher_requests_total", service="web", code="5xx"), 0)
        self.assertEqual(delta("dispatcher_requests_total", service="api", code="2xx"), n_api)
        self.assertEqual(delta("dispatcher_request_duration_seconds_count", service="web"),
                         n_ok + n_404)
        self.assertEqual(delta("dispatcher_request_duration_seconds_bucket", service="web",
                               le="+Inf"), n_ok + n_404)
        self.assertEqual(delta("dispatcher_backend_requests_total", service="web",
                               backend=b.addr), n_ok + n_404)
        self.assertEqual(metric(after, "dispatcher_backend_up", service="web", backend=b.addr), 1)
        self.assertEqual(metric(after, "dispatcher_config_generation"), 1)
        self.assertEqual(metric(after, "dispatcher_worker_restarts_total"), 0)
        # A failed reload is counted.
        with open(d.conf, "a") as f:
            f.write("this is not libconfig\n")
        self.assertFalse(ask(self.sock, "reload")["ok"])
        again = parse_prometheus(http_get(self.http_port, "/metrics").body.decode())
        self.assertEqual(metric(again, "dispatcher_config_reload_failures_total"), 1)
        # Hostile HTTP: garbage and an oversized head get errors; the server keeps serving.
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=5) as s:
            s.sendall(b"\x00\x01 garbage\r\n\r\n")
            self.assertIn(b" 400 ", s.recv(4096))
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
            self.assertIn(b" 431 ", s.recv(4096))
        self.assertEqual(http_get(self.http_port, "/api/v1/dispatcher/health").status, 200)

    @dsptest.timeout(90)
    def test_latency_percentiles_of_a_slow_backend(self):
        fast, slow = self.backend("fast"), self.backend("slow")
        d = self.start([svc("fast", fast), svc("slow", slow)],
                       [route("*", "fast"), route("slow.do", "slow")], http=True)
        # One request at a time, each timed by the client too: the proxy's own measure of a
        # request (head read to response relayed) cannot exceed what the client saw (but for
        # the coarseness of its clock), so the upper bounds below come from the client's times. On an idle machine they are barely
        # above 100 ms (tighter than any fixed bound); on a loaded one a descheduled process
        # cannot make them fail, while a counting bug (wrong bucket, wrong service, summed
        # twice) still does.
        def timed(path, host):
            t0 = time.monotonic()
            self.assertEqual(request(d.port, path, host=host).status, 200)
            return (time.monotonic() - t0) * 1000.0

        slow_ms = sorted(timed("/sleep?ms=100", "slow.do") for _ in range(20))
        fast_ms = sorted(timed("/echo", "x.do") for _ in range(20))

        # The workers read CLOCK_MONOTONIC_COARSE (6 on Linux): a duration they measure may
        # exceed the true one by one tick of it (4 ms at HZ=250), plus a truncated millisecond.
        tick_ms = time.clock_getres(getattr(time, "CLOCK_MONOTONIC_COARSE", 6)) * 1000.0

        def at_most(client_ms):
            # A percentile is interpolated inside a histogram bucket at most 1/8 of its value
            # wide.
            return (client_ms + tick_ms + 1) * 1.125 + 1

        inst = {s["name"]: s for s in ask(self.sock, "show instances")["instances"]}
        for lat in (inst["slow"]["latency_ms"], inst["slow"]["backends"][0]["latency_ms"]):
            # The backend sleeps 100 ms: nothing can be faster (bucket 96..103).
            self.assertTrue(95 <= lat["p50"] <= at_most(slow_ms[9]), (lat, slow_ms))
            self.assertTrue(100 <= lat["p99"] <= at_most(slow_ms[19]), (lat, slow_ms))
            self.assertTrue(lat["p50"] <= lat["p95"] <= lat["p99"], lat)
        self.assertLessEqual(inst["fast"]["latency_ms"]["p99"], at_most(fast_ms[19]),
                             (inst["fast"], fast_ms))
        self.assertEqual(inst["slow"]["requests"], 20)
        # rps over the last minute (or the uptime when shorter) counts the 20.
        self.assertGreater(inst["slow"]["rps"], 0)
        m = parse_prometheus(http_get(self.http_port, "/metrics").body.decode())
        self.assertEqual(metric(m, "dispatcher_request_duration_seconds_bucket", service="slow",
                                le="0.05"), 0)
        # All 20 on an idle machine; at least those the client saw within 250 ms on a loaded one.
        within = metric(m, "dispatcher_request_duration_seconds_bucket", service="slow",
                        le="0.25")
        self.assertTrue(sum(1 for x in slow_ms if x + tick_ms + 1 <= 250) <= within <= 20,
                        (within, slow_ms))
        self.assertEqual(metric(m, "dispatcher_request_duration_seconds_count", service="slow"), 20)
        s = metric(m, "dispatcher_request_duration_seconds_sum", service="slow")
        self.assertTrue(1.9 <= s <= (sum(slow_ms) + 20 * (tick_ms + 1)) / 1000.0, (s, slow_ms))
