"""Listener and `workers` changes on reload (SPEC, Signals): new sockets reach the running
workers, a removed listener stops accepting while its open connections finish, the worker count
grows and shrinks gracefully, and a client hammering a listener that stays sees no error."""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import unittest

import dsptest
from dsptest import (Conn, admin_ask, free_port, make_config, request, route, svc, wait_until)


def listeners_line(*entries):
    return "listeners = ( %s );" % ", ".join(entries)


def plain(port, **opts):
    more = "".join(" %s = %s;" % (k, "true" if v else "false") for k, v in opts.items())
    return '{ address = "127.0.0.1:%d";%s }' % (port, more)


def refused(port):
    """True once nothing listens on <port>. (A connection that reached a removed listener's
    queue in the instant it was closed is reset: that one is not the answer yet.)"""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


def alive_workers(d):
    return sum(1 for w in admin_ask(d, "show workers")["workers"] if w["alive"])


def reload(test, d, text):
    """Write <text> and reload through the admin socket; the answer (asserted ok)."""
    d.write_config(text)
    r = admin_ask(d, "reload", timeout=30)
    test.assertTrue(r.get("ok"), "reload refused: %r\n%s" % (r, d.log_tail()))
    return r


class Hammer:
    """Clients on <port>: <fresh> threads open a new connection per request (what a dropped
    accept queue or a closed socket would reset or refuse), <kept> threads reuse one keep-alive
    connection. Every failure is recorded with its time."""

    def __init__(self, port, host, fresh=3, kept=1):
        self.port, self.host = port, host
        self.stop_ev = threading.Event()
        self.ok = 0
        self.fail = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]
        self.threads += [threading.Thread(target=self._kept, daemon=True) for _ in range(kept)]
        for t in self.threads:
            t.start()

    def _count(self, err=None):
        with self.lock:
            if err is None:
                self.ok += 1
            else:
                self.fail.append("%.3f %s" % (time.monotonic(), err))

    def _fresh(self):
        while not self.stop_ev.is_set():
            try:
                r = request(self.port, "/echo", host=self.host, timeout=10)
                self._count(None if r.status == 200 else "status %d" % r.status)
            except Exception as e:  # noqa: BLE001 (every failure counts)
                self._count("%s: %s" % (type(e).__name__, e))

    def _kept(self):
        c = None
        while not self.stop_ev.is_set():
            try:
                if c is None:
                    c = Conn(self.port)
                r = c.request("GET", "/echo", self.host)
                self._count(None if r.status == 200 else "status %d" % r.status)
                if (r.header("Connection") or "").lower() == "close":
                    c.close()  # (a retiring worker's last answer on it)
                    c = None
            except Exception as e:  # noqa: BLE001
                self._count("keep-alive: %s: %s" % (type(e).__name__, e))
                c = None
        if c is not None:
            c.close()

    def progress(self, n):
        start = self.ok
        wait_until(lambda: self.ok >= start + n, 20, "%d more requests served" % n)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(15)


class ReloadListenersTest(dsptest.TestCase):

    def setUp(self):
        self.b = self.backend("one")
        self.services = [svc("one", self.b)]
        self.routes = [route("*", "one")]

    def conf(self, d, listeners, workers):
        text = make_config(d.port, d.tmp, self.services, self.routes, workers=workers)
        base = listeners_line(plain(d.port))
        self.assertIn(base, text)
        return text.replace(base, listeners)

    @dsptest.timeout(120)
    def test_listeners_and_workers_change_under_load(self):
        """Under load on a listener that stays: add a listener, grow the workers, remove the
        listener (a keep-alive connection on it keeps being served), shrink the workers to one
        and grow them again, several rounds: zero failed requests, the changes reported by
        `reload`, workers never restarted except the retired ones."""
        d = self.dispatcher(self.services, self.routes, workers=2)
        p2 = free_port()
        stay = plain(d.port)
        load = Hammer(d.port, "a.do")
        try:
            load.progress(50)
            initial = set(d.worker_pids())
            for rnd in range(3):
                r = reload(self, d, self.conf(d, listeners_line(stay, plain(p2)), 4))
                changes = r.get("changes", [])
                self.assertIn("listener 127.0.0.1:%d added" % p2, changes)
                self.assertIn("workers %d -> 4" % (2 if rnd == 0 else 1), changes)
                self.assertEqual(request(p2, "/echo", host="b.do").status, 200)
                wait_until(lambda: alive_workers(d) == 4, 10, "4 workers")
                if rnd == 0:
                    # The two running workers were kept (grown, not restarted).
                    self.assertTrue(initial <= set(dsptest.children_of(d.proc.pid)))
                # Every worker accepts on both listeners: 40 fresh connections on the new one
                # all served (a worker without the socket would leave them queued).
                for _ in range(40):
                    self.assertEqual(request(p2, "/echo", host="b.do", timeout=5).status, 200)
                held = Conn(p2)
                self.assertEqual(held.request("GET", "/echo", "b.do").status, 200)
                load.progress(30)

                r = reload(self, d, self.conf(d, listeners_line(stay), 4))
                self.assertEqual(r.get("changes"), ["listener 127.0.0.1:%d removed" % p2])
                wait_until(lambda: refused(p2), 5, "port %d refused after its removal" % p2)
                # Its open connection finishes what it does, and more.
                self.assertEqual(held.request("GET", "/echo", "b.do").status, 200)
                held.close()
                load.progress(30)

                r = reload(self, d, self.conf(d, listeners_line(stay), 1))
                self.assertEqual(r.get("changes"), ["workers 4 -> 1"])
                wait_until(lambda: alive_workers(d) == 1, 15, "the retired workers gone")
                load.progress(30)
            r = reload(self, d, self.conf(d, listeners_line(stay), 2))
            self.assertEqual(r.get("changes"), ["workers 1 -> 2"])
            wait_until(lambda: alive_workers(d) == 2, 10, "2 workers")
            load.progress(50)
        finally:
            load.stop()
        self.assertEqual(load.fail, [], "failed requests on the listener that stayed")
        self.assertGreater(load.ok, 300)
        log = d.log()
        self.assertNotIn("take effect at the next restart", log)
        self.assertIn("listener 127.0.0.1:%d added" % p2, log)
        print("%d requests, 0 failed, across %d reloads of listeners and workers"
              % (load.ok, 10))
        d.initial_workers = d.worker_pids()

    @dsptest.timeout(90)
    def test_wrk_through_listener_and_worker_reloads(self):
        """wrk (64 keep-alive connections) on the listener that stays while reloads add and
        remove another listener and move the worker count between 1 and 4: no socket error,
        no non-2xx answer."""
        wrk = shutil.which("wrk")
        if wrk is None:
            self.skipTest("wrk is not installed (make deps installs it with the bench packages)")
        d = self.dispatcher(self.services, self.routes, workers=2)
        p2 = free_port()
        secs = 8
        proc = subprocess.Popen([wrk, "-t2", "-c64", "-d%ds" % secs, "-H", "Host: a.do",
                                 "http://127.0.0.1:%d/echo" % d.port],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        steps = [(4, True), (4, False), (1, False), (3, True), (2, True), (1, False), (2, False)]
        n = 0
        end = time.monotonic() + secs - 1.5
        while time.monotonic() < end and n < 21:
            w, extra = steps[n % len(steps)]
            ls = [plain(d.port)] + ([plain(p2)] if extra else [])
            reload(self, d, self.conf(d, listeners_line(*ls), w))
            if extra:  # applied, not merely accepted
                self.assertEqual(request(p2, "/echo", host="b.do", timeout=5).status, 200)
            else:
                wait_until(lambda: refused(p2), 5, "port %d refused" % p2)
            n += 1
            time.sleep(0.15)  # paces the reloads: wrk keeps running between them
        out = proc.communicate(timeout=60)[0]
        print("wrk across %d reloads:\n%s" % (n, out))
        self.assertGreaterEqual(n, 7)  # (a loaded machine reloads slower)
        self.assertNotIn("Socket errors", out)
        self.assertNotIn("Non-2xx", out)
        self.assertRegex(out, r"(\d+) requests in")
        d.initial_workers = d.worker_pids()

    @dsptest.timeout(90)
    def test_unpublished_reload_resets_nothing(self):
        """A reload that grows the workers but cannot be published (more backends than the
        runtime segment holds) changes nothing, and the sockets it prepared for the new workers
        never took a connection: a client loop on the listener sees no reset."""
        d = self.dispatcher(self.services, self.routes, workers=2)
        load = Hammer(d.port, "a.do", fresh=4, kept=0)
        try:
            load.progress(50)
            many = [svc("big%d" % k, *["127.0.0.%d:%d" % (k + 1, 1000 + i) for i in range(1000)])
                    for k in range(67)]
            text = make_config(d.port, d.tmp, self.services + many, self.routes, workers=4)
            for _ in range(2):
                d.write_config(text)
                r = admin_ask(d, "reload", timeout=60)
                self.assertFalse(r.get("ok"), r)
                load.progress(30)
        finally:
            load.stop()
        self.assertEqual(load.fail, [], "failed requests on the listener")
        self.assertEqual(alive_workers(d), 2)
        self.assertEqual(admin_ask(d, "show workers")["configured"], 2)

    @dsptest.timeout(60)
    def test_respawned_worker_gets_the_current_listeners(self):
        """A worker killed after a reload added a listener is respawned on the current set
        (the added listener too), not on the one bound at start."""
        d = self.dispatcher(self.services, self.routes, workers=1)
        p2 = free_port()
        reload(self, d, self.conf(d, listeners_line(plain(d.port), plain(p2)), 1))
        self.assertEqual(request(p2, "/echo", host="b.do").status, 200)
        victim = d.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: [p for p in dsptest.children_of(d.proc.pid) if p != victim]
                   and alive_workers(d) == 1, 10, "the worker respawned")
        for port in (d.port, p2):
            self.assertEqual(request(port, "/echo", host="b.do", timeout=5).status, 200)
        # And a removed one is not given to the next respawn.
        reload(self, d, self.conf(d, listeners_line(plain(d.port)), 1))
        victim = d.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: alive_workers(d) == 1 and victim not in
                   dsptest.children_of(d.proc.pid), 10, "the worker respawned")
        self.assertEqual(request(d.port, "/echo", host="b.do", timeout=5).status, 200)
        wait_until(lambda: refused(p2), 5, "port %d refused" % p2)
        self.check_workers = False

    @dsptest.timeout(60)
    def test_changed_options_apply_to_new_connections(self):
        """proxy_protocol and tls switched on a listener that stays: new connections get the
        new options, a connection open from before keeps being served as it started."""
        d = self.dispatcher(self.services, self.routes, workers=2)
        old = Conn(d.port)
        self.assertEqual(old.request("GET", "/echo", "a.do").status, 200)

        r = reload(self, d, self.conf(d, listeners_line(plain(d.port, proxy_protocol=True)), 2))
        self.assertEqual(r.get("changes"), ["listener 127.0.0.1:%d: proxy_protocol on" % d.port])
        for _ in range(10):  # the first right after the answer: no window with the old ones
            with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
                s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\n"
                          b"GET /echo HTTP/1.1\r\nHost: a.do\r\nConnection: close\r\n\r\n")
                got = dsptest.read_to_eof(s)
            self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:200])
            self.assertIn(b"192.0.2.7", got)  # the backend echoes X-Forwarded-For
        self.assertEqual(old.request("GET", "/echo", "a.do").status, 200)

        r = reload(self, d, self.conf(d, listeners_line(plain(d.port, tls=True)), 2))
        self.assertEqual(sorted(r.get("changes")),
                         ["listener 127.0.0.1:%d: proxy_protocol off" % d.port,
                          "listener 127.0.0.1:%d: tls on" % d.port])
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for _ in range(4):  # both workers
            with socket.create_connection(("127.0.0.1", d.port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                    s.sendall(b"GET /echo HTTP/1.1\r\nHost: a.do\r\nConnection: close\r\n\r\n")
                    got = dsptest.read_to_eof(s)
            self.assertTrue(got.startswith(b"HTTP/1.1 200"), got[:200])
        self.assertEqual(old.request("GET", "/echo", "a.do").status, 200)
        old.close()

    @dsptest.timeout(60)
    def test_reordered_listeners_keep_their_own_http2_setting(self):
        """Listeners reordered by a reload (one added in front): each keeps its own `http2`
        setting from the first connection after the answer on (a worker looks its listeners
        up by address in each generation, not by their old positions)."""
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("curl is not installed")
        d = self.dispatcher(self.services, self.routes, workers=2)
        p_off, p_new = free_port(), free_port()
        on = plain(d.port)
        off = '{ address = "127.0.0.1:%d"; http2 = false; }' % p_off

        def version(port):
            out = subprocess.run([curl, "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                                  "%{http_version}", "http://127.0.0.1:%d/echo" % port],
                                 capture_output=True, text=True, timeout=10)
            return out.stdout

        reload(self, d, self.conf(d, listeners_line(on, off), 2))
        self.assertEqual(version(d.port), "2")
        self.assertNotEqual(version(p_off), "2")
        r = reload(self, d, self.conf(d, listeners_line(plain(p_new), off, on), 2))
        self.assertEqual(r.get("changes"), ["listener 127.0.0.1:%d added" % p_new])
        for _ in range(4):
            self.assertEqual(version(d.port), "2")
            self.assertNotEqual(version(p_off), "2")
            self.assertEqual(version(p_new), "2")

    @dsptest.timeout(60)
    def test_unbindable_listener_refuses_the_reload(self):
        """A listener that cannot be bound (another process listens there) refuses the reload
        with the file, line and errno text; nothing else of it applies and the old set serves."""
        d = self.dispatcher(self.services, self.routes, workers=2)
        other = socket.socket()
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        self.addCleanup(other.close)
        taken = other.getsockname()[1]
        gen = dsptest.generation(d)
        d.write_config(self.conf(d, listeners_line(plain(d.port), plain(taken)), 3))
        r = admin_ask(d, "reload", timeout=30)
        self.assertFalse(r.get("ok"), r)
        self.assertIn("cannot bind listener 127.0.0.1:%d" % taken, r.get("error", ""))
        self.assertIn("dispatcher.conf:", r.get("error", ""))
        self.assertEqual(dsptest.generation(d), gen)
        self.assertEqual(alive_workers(d), 2)
        self.assertEqual(request(d.port, "/echo", host="a.do").status, 200)
        # dispatcherctl prints the change list of a good reload.
        d.write_config(self.conf(d, listeners_line(plain(d.port)), 3))
        ctl = os.path.join(os.path.dirname(dsptest.MASTER), "dispatcherctl")
        out = subprocess.run([ctl, "-s", os.path.join(d.tmp, "admin.sock"), "reload"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("workers 2 -> 3", out.stdout)
        d.initial_workers = d.worker_pids()

    @dsptest.timeout(60)
    def test_check_says_what_a_reload_would_change(self):
        """`-t` beside the running master (named by the pid file) lists what a reload of the
        checked file would change in listeners and workers, and nothing when nothing would."""
        d = self.dispatcher(self.services, self.routes, workers=2)
        p2 = free_port()

        def check():
            out = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf], capture_output=True,
                                 text=True, timeout=30, cwd=d.tmp)
            self.assertEqual(out.returncode, 0, out.stderr)
            return out.stdout

        out = check()
        self.assertEqual(out.strip(), "%s: ok" % d.conf)
        d.write_config(self.conf(d, listeners_line(plain(d.port, proxy_protocol=True),
                                                   plain(p2)), 3))
        out = check()
        pid = d.proc.pid
        for what in ("listener 127.0.0.1:%d added" % p2,
                     "listener 127.0.0.1:%d: proxy_protocol on" % d.port, "workers 2 -> 3"):
            self.assertIn("%s: a reload of pid %d would apply: %s" % (d.conf, pid, what), out)
        # And a reload then does exactly that.
        r = admin_ask(d, "reload", timeout=30)
        self.assertEqual(sorted(r.get("changes", [])),
                         sorted(["listener 127.0.0.1:%d added" % p2,
                                 "listener 127.0.0.1:%d: proxy_protocol on" % d.port,
                                 "workers 2 -> 3"]))
        self.assertEqual(check().strip(), "%s: ok" % d.conf)
        d.initial_workers = d.worker_pids()

    @dsptest.timeout(60)
    def test_retired_worker_finishes_its_requests(self):
        """Shrinking the workers retires the extra ones like SIGQUIT does: slow requests in
        flight on them complete, then they exit and are not respawned."""
        d = self.dispatcher(self.services, self.routes, workers=3)
        results = []

        def slow():
            try:
                results.append(request(d.port, "/sleep?ms=1500", host="a.do", timeout=10).status)
            except Exception as e:  # noqa: BLE001
                results.append(repr(e))

        threads = [threading.Thread(target=slow) for _ in range(9)]
        for t in threads:
            t.start()
        wait_until(lambda: sum(w["connections"] for w in admin_ask(d, "show workers")["workers"])
                   >= 9, 5, "9 slow requests in flight")
        busy = [w["pid"] for w in admin_ask(d, "show workers")["workers"] if w["connections"]]
        for _ in range(30):
            self.assertEqual(request(d.port, "/echo", host="a.do").status, 200)
        before = admin_ask(d, "show stats")["requests"]
        r = reload(self, d, self.conf(d, listeners_line(plain(d.port)), 1))
        self.assertEqual(r.get("changes"), ["workers 3 -> 1"])
        # While they drain: one worker configured, the others flagged, and that is healthy.
        ws = admin_ask(d, "show workers")
        self.assertEqual(ws["configured"], 1)
        self.assertEqual(ws["alive"], 1)
        # (the retired ones with slow requests are surely still there; an idle one may be gone)
        busy_retiring = sum(1 for w in ws["workers"] if w["pid"] in busy and w["slot"] != 0)
        self.assertTrue(busy_retiring <= ws["retiring"] <= 2, ws)
        self.assertEqual(sum(1 for w in ws["workers"] if w["alive"] and not w["retiring"]), 1)
        self.assertEqual(admin_ask(d, "show health")["status"], "healthy")
        ctl = os.path.join(os.path.dirname(dsptest.MASTER), "dispatcherctl")
        out = subprocess.run([ctl, "-s", os.path.join(d.tmp, "admin.sock"), "show", "workers"],
                             capture_output=True, text=True, timeout=30).stdout
        self.assertIn("workers 1/1 alive", out)
        self.assertIn("retiring", out)
        for t in threads:
            t.join(15)
        self.assertEqual(results, [200] * 9)
        wait_until(lambda: alive_workers(d) == 1, 10, "the retired workers gone")
        self.assertEqual(admin_ask(d, "show health")["status"], "healthy",
                         admin_ask(d, "show health"))
        # What the retired workers counted still counts.
        self.assertGreaterEqual(admin_ask(d, "show stats")["requests"], before + 9)
        self.assertGreater(len(busy), 1, "the slow requests all went to one worker")
        self.assertIn("retired", d.log())
        self.assertEqual(request(d.port, "/echo", host="a.do").status, 200)
        d.initial_workers = d.worker_pids()


if __name__ == "__main__":
    unittest.main()
