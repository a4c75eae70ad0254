"""Floods and exhaustion: at max_connections a flood of new connections gets fast 503s (or
closes) while the established ones go on; at the worker's descriptor limit it pauses accepting
(no spinning: its CPU time stays low), closes idle keep-alive connections to make room, logs one
line however many listeners and attempts there are, answers requests that need a backend connection with a fast 503, keeps the master and the
admin socket responsive, and serves again by itself once descriptors free up."""

import json
import os
import resource
import socket
import threading
import time

import dsptest
from dsptest import Conn, request, route, svc


def admin(d, cmd, timeout=2):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(os.path.join(d.tmp, "admin.sock"))
        s.sendall(cmd.encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return json.loads(buf.split(b"\n")[0])


def cpu_ticks(pid):
    f = dsptest._stat_fields(pid)
    return int(f[11]) + int(f[12])


def wakeups(pid):
    """Voluntary context switches of <pid>'s main thread: one per sleep in epoll_wait."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def nfds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class FloodTest(dsptest.TestCase):

    def test_max_connections_flood(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")],
                            limits={"max_connections": 20})
        self.assertTrue(dsptest.wait_for(
            lambda: sum(w["connections"] for w in admin(d, "show workers")["workers"]) == 0, 5))
        conns = []
        try:
            for _ in range(20):
                c = Conn(d.port, timeout=5)
                conns.append(c)
                self.assertEqual(c.request("GET", "/echo", "a.do").status, 200)
            time.sleep(0.3)
            stop = threading.Event()
            served = {"ok": 0, "bad": []}

            def established():
                while not stop.is_set():
                    for c in conns:
                        try:
                            r = c.request("GET", "/echo", "a.do")
                            if r.status == 200:
                                served["ok"] += 1
                            else:
                                served["bad"].append(r.status)
                        except Exception as e:  # noqa: BLE001
                            served["bad"].append(repr(e))
                            return

            t = threading.Thread(target=established)
            t.start()
            worst = 0.0
            refused = 0
            try:
                for _ in range(300):
                    t0 = time.monotonic()
                    try:
                        with Conn(d.port, timeout=3) as c:
                            c.send(b"GET /echo HTTP/1.1\r\nHost: a.do\r\n\r\n")
                            r = c.read_response()
                            self.assertEqual(r.status, 503, r.body[:200])
                            self.assertJsonError(r, 503, "Service unavailable")
                            refused += 1
                    except (ConnectionResetError, BrokenPipeError, dsptest.ConnectionClosed):
                        refused += 1  # closed at once: acceptable
                    worst = max(worst, time.monotonic() - t0)
            finally:
                stop.set()
                t.join(10)
            self.assertEqual(refused, 300)
            self.assertLess(worst, 1.0, "a refused connection took %.2fs" % worst)
            self.assertEqual(served["bad"], [], "established connections failed")
            self.assertGreater(served["ok"], 20)
        finally:
            for c in conns:
                c.close()
        self.assertTrue(dsptest.wait_for(
            lambda: request(d.port, "/echo", host="a.do").status == 200, 3))

    @dsptest.timeout(60)
    def test_fd_limit_backoff(self):
        b = self.backend("web")
        port2 = dsptest.free_port()
        d = dsptest.Dispatcher(workers=1)
        conf = dsptest.make_config(d.port, d.tmp, [svc("web", b)], [route("*", "web")], 1,
                                   {"header_timeout_ms": 30000})
        # Two listeners: the idle one must not end the episode (and log again) each time.
        conf = conf.replace('listeners = ( { address = "127.0.0.1:%d"; } );' % d.port,
                            'listeners = ( { address = "127.0.0.1:%d"; }, '
                            '{ address = "127.0.0.1:%d"; } );' % (d.port, port2))
        d.write_config(conf)
        self.start_dispatcher(d)
        wpid = d.worker_pids()[0]
        self.assertTrue(dsptest.wait_for(lambda: admin(d, "show workers")["workers"][0]
                                         ["connections"] == 0, 5))
        # A kept-alive client between two requests (its upstream connection is pooled): both
        # may be closed to make room.
        ka = Conn(d.port, timeout=5)
        self.addCleanup(ka.close)
        self.assertEqual(ka.request("GET", "/echo", "a.do").status, 200)
        base = nfds(wpid)
        limit = base + 8
        resource.prlimit(wpid, resource.RLIMIT_NOFILE, (limit, limit))
        held = []
        try:
            # More connections than descriptors: the rest wait in the backlog.
            for _ in range(20):
                held.append(Conn(d.port, timeout=5))
            self.assertTrue(dsptest.wait_for(lambda: nfds(wpid) >= limit, 3),
                            "worker has %d descriptors, limit %d" % (nfds(wpid), limit))
            # New connections keep arriving while it is at the limit; its CPU stays low.
            t0 = cpu_ticks(wpid)
            v0 = wakeups(wpid)
            w0 = time.monotonic()
            extra = []
            while time.monotonic() - w0 < 2.0:
                try:
                    extra.append(socket.create_connection(("127.0.0.1", d.port), timeout=1))
                except OSError:
                    pass
                time.sleep(0.01)
            used = (cpu_ticks(wpid) - t0) / dsptest.CLK_TCK
            woke = wakeups(wpid) - v0
            held += extra
            self.assertLess(used, 0.5 if dsptest.SANITIZED else 0.25,
                            "worker used %.2fs of CPU in 2s at the descriptor limit" % used)
            # It retries on a back-off, not once per queued connection (%d arrived).
            self.assertLess(woke, 60, "worker woke up %d times in 2s at the descriptor limit, "
                            "%d connections arriving" % (woke, len(extra)))
            self.assertTrue(ka.wait_closed(1), "the idle keep-alive connection was kept")
            # A request that needs a backend connection: a quick answer, a 503 when there is
            # no descriptor for it.
            t0 = time.monotonic()
            r = held[0].request("GET", "/echo", "a.do")
            self.assertIn(r.status, (200, 502, 503), r.body[:200])
            self.assertLess(time.monotonic() - t0, 1.0)
            # The master and its admin socket answer meanwhile.
            t0 = time.monotonic()
            self.assertTrue(admin(d, "show health")["ok"])
            self.assertLess(time.monotonic() - t0, 1.0)
            lines = [l for l in d.log().splitlines() if "accept4()" in l]
            self.assertEqual(len(lines), 1, "accept failures logged %d times:\n%s"
                             % (len(lines), "\n".join(lines[:5])))
            sock_lines = [l for l in d.log().splitlines() if "socket() for backend" in l]
            self.assertLessEqual(len(sock_lines), 1)
        finally:
            for c in held:
                c.close()
        # Descriptors free up: it serves again by itself.
        ok = dsptest.wait_for(lambda: self._try(d.port), 5, interval=0.1)
        self.assertTrue(ok, "not serving again after the descriptors were freed")
        self.assertTrue(self._try(port2))

    @dsptest.timeout(60)
    def test_master_started_with_low_fd_limit(self):
        # The whole dispatcher started under a low RLIMIT_NOFILE (as with `ulimit -n 64`): its
        # worker runs out first; the master and the admin socket answer throughout.
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")], workers=1, start=False,
                            limits={"header_timeout_ms": 30000})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        try:
            self.start_dispatcher(d)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        wpid = d.worker_pids()[0]
        held = []
        try:
            for _ in range(120):
                held.append(socket.create_connection(("127.0.0.1", d.port), timeout=2))
            self.assertTrue(dsptest.wait_for(
                lambda: any("accept4()" in l for l in d.log().splitlines()), 3),
                "the worker did not reach its descriptor limit")
            t0 = cpu_ticks(wpid)
            for _ in range(10):
                t1 = time.monotonic()
                self.assertTrue(admin(d, "show health")["ok"])
                self.assertLess(time.monotonic() - t1, 1.0)
                time.sleep(0.1)
            self.assertLess((cpu_ticks(wpid) - t0) / dsptest.CLK_TCK, 0.3)
        finally:
            for c in held:
                c.close()
        ok = dsptest.wait_for(lambda: self._try(d.port), 5, interval=0.1)
        self.assertTrue(ok, "not serving again after the descriptors were freed")
        self.assertEqual(len([l for l in d.log().splitlines() if "accept4()" in l]), 1)

    @staticmethod
    def _try(port):
        try:
            return request(port, "/echo", host="a.do", timeout=2).status == 200
        except OSError:
            return False
        except dsptest.ConnectionClosed:
            return False


if __name__ == "__main__":
    import unittest
    unittest.main()
