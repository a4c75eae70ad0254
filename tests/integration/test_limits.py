"""Connection limits and lifecycle: max_connections answers 503, idle keep-alive connections are
closed after idle_timeout_ms, SIGTERM lets an in-flight request finish, SIGINT stops at once."""

import json
import os
import signal
import socket
import threading
import time

import dsptest
from dsptest import Conn, request, route, svc


def open_connections(d):
    """Client connections the workers have published (admin `show workers`)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(os.path.join(d.tmp, "admin.sock"))
        s.sendall(b"show workers\n")
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return sum(w["connections"] for w in json.loads(buf.split(b"\n")[0])["workers"])


class LimitsTest(dsptest.TestCase):

    def test_max_connections_503(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")],
                            limits={"max_connections": 4})
        # The start-up probe's connection is counted until its worker has seen it close.
        self.assertTrue(dsptest.wait_for(lambda: open_connections(d) == 0, 5),
                        "connections still counted after start-up: %r" % open_connections(d))
        conns = []
        try:
            for _ in range(4):
                c = Conn(d.port)
                conns.append(c)
                self.assertEqual(c.request("GET", "/echo", "a.do").status, 200)
            # Once all workers have published their counts, the fifth is refused.
            dsptest.wait_until(lambda: open_connections(d) >= 4, 5,
                               "the 4 open connections published by the workers")
            r = request(d.port, "/echo", host="a.do")
            j = self.assertJsonError(r, 503, "Service unavailable")
            self.assertIn("message", j)
            # The connections already open keep working.
            self.assertEqual(conns[0].request("GET", "/echo", "a.do").status, 200)
        finally:
            for c in conns:
                c.close()
        # Once they are gone, new connections are served again.
        ok = dsptest.wait_for(lambda: request(d.port, "/echo", host="a.do").status == 200, 3)
        self.assertTrue(ok, "connections not accepted again after the others closed")

    def test_idle_keepalive_closed(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")],
                            limits={"idle_timeout_ms": 300})
        with Conn(d.port) as c:
            self.assertEqual(c.request("GET", "/echo", "a.do").status, 200)
            t0 = time.monotonic()
            self.assertTrue(c.wait_closed(3), "idle keep-alive connection not closed")
            dt = time.monotonic() - t0
            self.assertGreater(dt, 0.2)
            self.assertLess(dt, 2.0)

    def test_graceful_stop_finishes_in_flight(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")])
        result = {}

        def slow():
            result["r"] = request(d.port, "/sleep?ms=800", host="a.do", timeout=10)

        t = threading.Thread(target=slow)
        t.start()
        dsptest.wait_until(lambda: b.stats()["requests"] >= 1, 5, "the slow request in flight")
        d.proc.send_signal(signal.SIGTERM)
        t.join(10)
        self.assertIn("r", result, "in-flight request got no answer")
        self.assertEqual(result["r"].status, 200)
        d.proc.wait(10)
        self.assertEqual(d.proc.returncode, 0)

    def test_fast_stop_sigint(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")])
        threading.Thread(target=lambda: self._ignore(d.port), daemon=True).start()
        dsptest.wait_until(lambda: b.stats()["requests"] >= 1, 5, "the slow request in flight")
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGINT)
        d.proc.wait(5)
        self.assertLess(time.monotonic() - t0, 2.0, "SIGINT did not stop the master quickly")
        self.assertEqual(d.proc.returncode, 0)

    @staticmethod
    def _ignore(port):
        try:
            request(port, "/sleep?ms=5000", host="a.do", timeout=10)
        except Exception:
            pass
