"""What an operator meets (issue 16): a master refuses an address another process listens on
(naming it), also at -t; dispatcherctl reload prints every error and warning on its own line;
the init script prints each error once; small CLI and log messages."""

import json
import os
import re
import signal
import socket
import subprocess
import unittest

import dsptest
from dsptest import make_config, request, route, svc

CTL = os.path.join(dsptest.BIN_DIR, "dispatcherctl")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args, cwd=None, env=None, timeout=20):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          cwd=cwd, env=env)


def comm(pid):
    with open("/proc/%d/comm" % pid) as f:
        return f.read().strip()


class PortHeldTest(dsptest.TestCase):
    def test_plain_listener_named_at_start_and_at_check(self):
        busy = socket.socket()
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen(5)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        d = dsptest.Dispatcher(port=port)
        d.write_config(make_config(port, d.tmp, [svc("w", "127.0.0.1:9")], [route("*", "w")]))
        holder = "pid %d (%s)" % (os.getpid(), comm(os.getpid()))
        p = run([dsptest.MASTER, "-c", d.conf], cwd=d.tmp)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 2, err)
        self.assertIn("127.0.0.1:%d" % port, err)
        self.assertIn(holder, err, "the message names the process that listens there")
        self.assertFalse(os.path.exists(os.path.join(d.tmp, "dispatcher.pid")))
        p = run([dsptest.MASTER, "-t", "-c", d.conf], cwd=d.tmp)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 1, err)
        self.assertRegex(err, re.escape(d.conf) + r":\d+: listener 127\.0\.0\.1:%d: .*%s"
                         % (port, re.escape(holder)))

    def test_second_master_with_another_config_refused(self):
        b = self.backend("a")
        first = self.dispatcher([svc("s", b)], [route("*", "s")])
        other = dsptest.Dispatcher(port=first.port)
        other.write_config(make_config(first.port, other.tmp, [svc("s", b)], [route("*", "s")]))
        # -t of the running master's own config is fine: those sockets are its own.
        p = run([dsptest.MASTER, "-t", "-c", first.conf], cwd=first.tmp)
        self.assertEqual(p.returncode, 0, p.stderr)
        # Another configuration on the same port is refused before it binds anything.
        p = run([dsptest.MASTER, "-t", "-c", other.conf], cwd=other.tmp)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"pid %d (" % first.proc.pid, p.stderr)
        p = run([dsptest.MASTER, "-c", other.conf], cwd=other.tmp)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 2, err)
        self.assertIn("127.0.0.1:%d" % first.port, err)
        self.assertIn("pid %d (dispatcher-mast" % first.proc.pid, err)
        self.assertFalse(os.path.exists(os.path.join(other.tmp, "dispatcher.pid")))
        # The first one goes on serving, alone, and still reloads.
        self.assertEqual(first.pid_from_file(), first.proc.pid)
        for _ in range(20):
            self.assertEqual(request(first.port, "/echo", host="x.do").status, 200)
        gen = dsptest.generation(first)
        first.hup()
        dsptest.wait_until(lambda: dsptest.generation(first) > gen, 5, "reload")


def ctl(sock, *args):
    p = run([CTL, "-s", sock] + list(args))
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def broken(d, b):
    """A config of <d> with two errors (two routes naming unknown services); their lines."""
    text = make_config(d.port, d.tmp, [svc("s", b)],
                       [route("a.do", "nope1"), route("b.do", "s"), route("*", "nope2")])
    lines = text.splitlines()
    at = [i + 1 for i, l in enumerate(lines) if "nope1" in l or "nope2" in l]
    return text, at


class ReloadReportTest(dsptest.TestCase):
    def test_ctl_reload_prints_each_error_and_warning_on_its_own_line(self):
        b = self.backend("a")
        d = self.dispatcher([svc("s", b)], [route("*", "s")])
        sock = os.path.join(d.tmp, "admin.sock")
        text, at = broken(d, b)
        d.write_config(text)
        rc, out, err = ctl(sock, "reload")
        self.assertEqual(rc, 1, out + err)
        lines = err.splitlines()
        for line_no, name in zip(at, ("nope1", "nope2")):
            mine = [l for l in lines if l.startswith("dispatcherctl: %s:%d: " % (d.conf, line_no))]
            self.assertEqual(len(mine), 1, err)
            self.assertIn(name, mine[0])
        self.assertNotIn("?", err, "errors joined into one line")
        # A reload that goes through but warns: the warning reaches the operator, even with
        # log.level = "error" (the log does not show it then).
        good = make_config(d.port, d.tmp, [svc("s", b)], [route("*", "s")])
        good = good.replace('admin = { socket = "%s"; };' % sock,
                            'admin = { socket = "%s"; http = "127.0.0.1:%d"; };'
                            % (sock, dsptest.free_port()))
        good = good.replace('level = "info"', 'level = "error"')
        d.write_config(good)
        rc, out, err = ctl(sock, "reload")
        self.assertEqual(rc, 0, out + err)
        self.assertIn("reloaded: generation", out)
        self.assertRegex(err, r"(?m)^dispatcherctl: warning: admin socket/http changes take "
                              r"effect at the next restart$")
        rc, out, err = ctl(sock, "--json", "reload")
        self.assertEqual(rc, 0, out + err)
        self.assertIn('"warnings":["admin socket/http changes', out)

    def test_init_script_prints_each_error_once(self):
        b = self.backend("a")
        d = self.dispatcher([svc("s", b)], [route("*", "s")])
        text, at = broken(d, b)
        d.write_config(text)
        init = os.path.join(ROOT, "contrib", "dispatcher.init")
        for action, pidfile, want_rc in (
                ("reload", os.path.join(d.tmp, "dispatcher.pid"), 1),
                ("start", os.path.join(d.tmp, "none", "x.pid"), 6)):
            env = dict(os.environ, DAEMON=dsptest.MASTER, CONF=d.conf, PIDFILE=pidfile)
            p = run(["sh", init, action], env=env)
            out = (p.stdout + p.stderr).decode(errors="replace")
            self.assertEqual(p.returncode, want_rc, out)
            for line_no in at:
                self.assertEqual(out.count("%s:%d: " % (d.conf, line_no)), 1,
                                 "%s: each error once:\n%s" % (action, out))


def shipped_copy(extra=""):
    """A copy of the shipped dispatcher.conf in a fresh folder (no logs/ or run/ yet), on free
    ports, one worker: (folder, config path, listen port, environment for the master)."""
    tmp = dsptest.Dispatcher().tmp
    with open(os.path.join(ROOT, "dispatcher.conf")) as f:
        text = f.read()
    hport, port = dsptest.free_port(), dsptest.free_port()
    assert '"127.0.0.1:9000"' in text
    text = text.replace('"127.0.0.1:9000"', '"127.0.0.1:%d"' % hport)
    text = text.replace('workers = "auto"', "workers = 1") + extra
    conf = os.path.join(tmp, "dispatcher.conf")
    with open(conf, "w") as f:
        f.write(text)
    return tmp, conf, port, dict(os.environ, HTTP_PORT=str(port))


class ShippedConfigTest(dsptest.TestCase):
    def test_shipped_config_logs_to_a_file_created_at_start(self):
        tmp, conf, port, env = shipped_copy()
        # -D has nothing to warn about: the error log is a file.
        p = run([dsptest.MASTER, "-t", "-D", "-c", conf], cwd=tmp, env=env)
        self.assertEqual((p.returncode, p.stderr.decode()), (0, ""))
        d = dsptest.Dispatcher(port=port, tmp=tmp, workers=1)
        d.proc = subprocess.Popen([dsptest.MASTER, "-c", conf], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp,
                                  env=env)
        dsptest._record_pid(d.proc.pid)
        errlog = os.path.join(tmp, "logs", "error.log")

        def started():
            try:
                with open(errlog) as f:
                    return "started" in f.read()
            except OSError:
                return False
        try:
            dsptest.wait_until(started, 10, "the start logged in logs/error.log")
        finally:
            d.proc.send_signal(signal.SIGTERM)
            out, err = d.proc.communicate(timeout=15)
        self.assertEqual(d.proc.returncode, 0, err)
        self.assertEqual(err, b"", "nothing on stderr once the error log is open")

    @dsptest.timeout(60)
    def test_readme_redis_example_works_on_the_shipped_config(self):
        import test_redis
        if not os.path.exists(test_redis.REDIS_SERVER):
            raise unittest.SkipTest("redis-server not installed")
        tmp, conf, port, env = shipped_copy()
        r = test_redis.Redis(tmp).start()
        self.addCleanup(r.kill)
        with open(conf, "a") as f:
            f.write('\nredis = { host = "127.0.0.1"; port = %d; };\n' % r.port)
        # The certificate and key the example reads, for the host it routes.
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", "api.key", "-out", "api.pem", "-days", "30",
             "-subj", "/CN=api.example.com"], cwd=tmp)
        d = dsptest.Dispatcher(port=port, tmp=tmp, workers=1)
        d._err, d._out = open(d.errlog, "ab"), open(d.outlog, "ab")
        d.proc = subprocess.Popen([dsptest.MASTER, "-c", conf], stdin=subprocess.DEVNULL,
                                  stdout=d._out, stderr=d._err, cwd=tmp, env=env)
        dsptest._record_pid(d.proc.pid)
        dsptest.STARTED.append(d)
        self.addCleanup(self._stop_dispatcher, d)
        d.wait_ready()
        # The README's commands, as written, against this Redis.
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        block = readme[readme.index("Seed a service and a route"):]
        block = block[block.index("```sh\n") + 6:]
        block = block[:block.index("\n```")]
        cmds = [l for l in block.splitlines() if l.startswith("redis-cli ")]
        self.assertGreaterEqual(len(cmds), 5, block)
        for c in cmds:
            p = run(["sh", "-c", c.replace("redis-cli ", "%s -p %d " % (test_redis.REDIS_CLI,
                                                                        r.port), 1)], cwd=tmp)
            self.assertEqual(p.returncode, 0, (c, p.stderr))

        sock = os.path.join(tmp, "run", "admin.sock")  # the shipped admin.socket

        def served():
            routes = json.loads(ctl(sock, "--json", "show", "routes")[1])["routes"]
            return any(x["host"] == "api.example.com" and x["service"] == "api" for x in routes)
        dsptest.wait_until(served, 5, "the README's route served from Redis")
        self.assertIn("api.example.com", ctl(sock, "--json", "show", "certs")[1])


class CtrlCTest(dsptest.TestCase):
    def test_ctrl_c_stops_master_and_workers_quietly(self):
        # A terminal's Ctrl-C sends SIGINT to the whole foreground process group: the master
        # and its workers at once. That is a stop, not a worker crash to respawn.
        b = self.backend("a")
        for _ in range(3):
            d = dsptest.Dispatcher()
            d.write_config(make_config(d.port, d.tmp, [svc("s", b)], [route("*", "s")]))
            d._err, d._out = open(d.errlog, "ab"), open(d.outlog, "ab")
            d.proc = subprocess.Popen([dsptest.MASTER, "-c", d.conf], stdin=subprocess.DEVNULL,
                                      stdout=d._out, stderr=d._err, cwd=d.tmp,
                                      start_new_session=True)
            dsptest._record_pid(d.proc.pid)
            d.wait_ready()
            workers = d.worker_pids()
            os.killpg(d.proc.pid, signal.SIGINT)
            self.assertEqual(d.proc.wait(10), 0, d.log_tail())
            for w in workers:
                dsptest.wait_until(lambda: dsptest.rss_kib(w) is None, 5, "worker %d gone" % w)
            d._err.close()
            d._out.close()
            self.assertNotIn("respawning", d.log())
            self.assertIn("fast stop requested", d.log())


class CtlCliTest(dsptest.TestCase):
    def test_version_and_missing_config(self):
        p = run([CTL, "-V"])
        self.assertEqual(p.returncode, 0, p.stderr)
        master = run([dsptest.MASTER, "-V"]).stdout.decode().split()[-1]
        self.assertEqual(p.stdout.decode().strip(), "dispatcherctl %s" % master)
        tmp = dsptest.Dispatcher().tmp
        missing = os.path.join(tmp, "missing.conf")
        p = run([CTL, "-c", missing, "show", "health"])
        self.assertEqual(p.returncode, 2)
        self.assertIn("cannot read %s: No such file or directory" % missing, p.stderr.decode())


class SignalLogTest(dsptest.TestCase):
    def test_sigusr1_and_shutdown_timeout_are_logged(self):
        import threading
        b = self.backend("a")
        d = self.dispatcher([svc("s", b)], [route("*", "s")], workers=1,
                            limits={"shutdown_timeout_ms": 300})
        d.proc.send_signal(signal.SIGUSR1)
        dsptest.wait_until(lambda: "SIGUSR1" in d.log(), 5, "SIGUSR1 logged")
        result = {}

        def slow():
            try:
                result["r"] = request(d.port, "/sleep?ms=4000", host="x.do", timeout=10)
            except Exception as e:  # noqa: BLE001
                result["e"] = e
        t = threading.Thread(target=slow)
        t.start()
        dsptest.wait_until(lambda: b.stats()["requests"] >= 1, 5, "the slow request in flight")
        d.proc.send_signal(signal.SIGTERM)
        self.assertEqual(d.proc.wait(10), 0)
        t.join(10)
        self.assertIn("e", result, "the request outlived the shutdown timeout: %r" % result)
        self.assertRegex(d.log(), r"\[warn\] worker .*shutdown timeout "
                                  r"\(limits.shutdown_timeout_ms = 300\) reached: closing 1 "
                                  r"connection")


class ShowCertsTest(dsptest.TestCase):
    def test_show_certs_names_and_date(self):
        import calendar
        import time
        from test_tls import make_cert
        tmp = dsptest.Dispatcher().tmp
        cert, key = make_cert(tmp, "multi", "a.example.com",
                              san="DNS:a.example.com,DNS:*.b.example.com,DNS:c.example.com")
        end = run(["openssl", "x509", "-in", cert, "-noout", "-enddate"]).stdout.decode()
        end = end.strip().split("=", 1)[1]  # "Mar  1 12:00:00 2027 GMT"
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                            time.gmtime(calendar.timegm(time.strptime(end,
                                                                      "%b %d %H:%M:%S %Y GMT"))))
        extra = 'tls = { certificates = ( { cert = "%s"; key = "%s"; } ); };' % (cert, key)
        d = self.dispatcher([svc("s", "127.0.0.1:9")], [route("*", "s")], extra=extra)
        sock = os.path.join(d.tmp, "admin.sock")
        rc, out, err = ctl(sock, "show", "certs")
        self.assertEqual(rc, 0, err)
        row = [l for l in out.splitlines() if "a.example.com,*.b.example.com,c.example.com" in l]
        self.assertEqual(len(row), 1, out)
        self.assertIn(iso, row[0], out)
        self.assertIn(cert, row[0])
        j = json.loads(ctl(sock, "--json", "show", "certs")[1])
        mine = [c for c in j["certs"] if c["path"] == cert][0]
        self.assertEqual(mine["not_after_date"], iso)
        self.assertEqual(mine["names"], ["a.example.com", "*.b.example.com", "c.example.com"])


class HealthProbeTest(dsptest.TestCase):
    def test_unchecked_service_without_traffic_is_not_degraded(self):
        # A service with no health checks and no traffic yet (its backend not even listening)
        # is not "degraded": nothing is known against it. One whose checks fail is.
        hport = dsptest.free_port()
        extra = 'admin = { socket = "%%s"; http = "127.0.0.1:%d"; };' % hport
        d = dsptest.Dispatcher()
        text = make_config(d.port, d.tmp, [svc("quiet", "127.0.0.1:9")], [route("*", "quiet")])
        sock = os.path.join(d.tmp, "admin.sock")
        text = text.replace('admin = { socket = "%s"; };' % sock, extra % sock)
        d.write_config(text)
        self.start_dispatcher(d)

        def health():
            with socket.create_connection(("127.0.0.1", hport), timeout=5) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = dsptest.read_to_eof(s)
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split()[1]), json.loads(body)
        st, j = health()
        self.assertEqual((st, j["status"]), (200, "serving"), j)
        # Still so after a reload.
        gen = dsptest.generation(d)
        d.hup()
        dsptest.wait_until(lambda: dsptest.generation(d) > gen, 5, "reload")
        st, j = health()
        self.assertEqual((st, j["status"]), (200, "serving"), j)
        # The same backend under a failing health check makes it degraded.
        d.write_config(text.replace(
            'backends = ["127.0.0.1:9"];',
            'backends = ["127.0.0.1:9"]; health = { path = "/h"; interval_ms = 100; };'))
        d.hup()
        dsptest.wait_until(lambda: health()[0] == 503, 5, "degraded by a failing check")
