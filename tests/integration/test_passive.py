"""Passive health with a threshold and a cap (SPEC "Health, circuit breaker, balancing",
passive_failures and max_ejection_percent): one client that makes a backend reset cannot take a
service down; a refused connect ejects at once; passive_failures resets in a row eject, fewer do
not; ejection never takes out more than max_ejection_percent of the backends, nor the last
healthy one; bad values of both keys are refused with FILE:LINE.

The resetting backend is a small Python server here: it answers every request 200, except
/boom, which it answers by closing with SO_LINGER 0 (an RST) once it has read the request."""

import json
import os
import re
import socket
import struct
import subprocess
import threading
import time

import dsptest
from dsptest import MASTER, Conn, request, route, svc


class ResetBackend:
    """HTTP/1.1 backend on an ephemeral port: GET /boom... is reset (RST after the request was
    read), anything else gets 200 with X-Backend: <name> and Connection: close, so that every
    request to it comes on a fresh connection (a reset on a reused one proves nothing and is
    retried elsewhere). Counts both."""

    def __init__(self, name):
        self.name = name
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(128)
        self.port = self.lsock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.resets = 0
        self.answered = 0
        self.lock = threading.Lock()
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        buf = b""
        s.settimeout(30)
        try:
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b"\r\n", 1)[0].split(b" ")[1]
            if path.startswith(b"/boom"):
                with self.lock:
                    self.resets += 1
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return  # closed below: RST
            body = b"ok %s\n" % path
            with self.lock:
                self.answered += 1
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Backend: %s\r\n"
                      b"Connection: close\r\n\r\n%s"
                      % (len(body), self.name.encode(), body))
        except OSError:
            return
        finally:
            s.close()

    def stop(self):
        self.stopped = True
        self.lsock.close()


def refused_port(test):
    """A port that refuses connections (bound, never listening) for the whole test."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    test.addCleanup(s.close)
    return "127.0.0.1:%d" % s.getsockname()[1]


def admin(d, cmd):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(os.path.join(d.tmp, "admin.sock"))
    buf = b""
    try:
        s.sendall(cmd.encode() + b"\n")
        while b"\n" not in buf:
            c = s.recv(1 << 20)
            if not c:
                break
            buf += c
    finally:
        s.close()
    return json.loads(buf.partition(b"\n")[0])


def backend_info(d, service, addr):
    j = admin(d, "show instances")
    inst = [i for i in j["instances"] if i["name"] == service][0]
    return [b for b in inst["backends"] if b["address"] == addr][0]


def states(d, service):
    """{address: state} of <service>'s backends, from `show instances`."""
    j = admin(d, "show instances")
    inst = [i for i in j["instances"] if i["name"] == service][0]
    return {b["address"]: b["state"] for b in inst["backends"]}


class PassiveTest(dsptest.TestCase):

    def reset_backend(self, name):
        b = ResetBackend(name)
        self.addCleanup(b.stop)
        return b

    @dsptest.timeout(60)
    def test_client_resetting_only_backend_cannot_take_service_down(self):
        r = self.reset_backend("only")
        # A circuit breaker with failures > 1 is an explicit opt-in that one reset must not trip.
        d = self.dispatcher(
            services=[svc("one", r.addr), svc("cb", r.addr, retries=0,
                                          circuit_breaker={"failures": 3, "open_ms": 10000})],
            routes=[route("cb.do", "cb"), route("*", "one")])

        # Sequential: boom, then everyone else is served at once.
        for i in range(5):
            x = request(d.port, "/boom/%d" % i, host="one.do")
            self.assertJsonError(x, 502, "Bad gateway")
            got = [request(d.port, "/ok/%d/%d" % (i, k), host="one.do") for k in range(3)]
            self.assertEqual([g.status for g in got], [200] * 3,
                             "a reset of the only backend took the service down: %r" % got)
        x = request(d.port, "/boom", host="cb.do")
        self.assertEqual(x.status, 502)
        self.assertEqual(request(d.port, "/ok", host="cb.do").status, 200,
                         "one reset opened a circuit configured with failures = 3")

        # Concurrent: one hostile client resets in a loop (many times in a row, so the count is
        # reached again and again), others keep getting 200: not one 503.
        stop = threading.Event()
        booms = []

        def hostile():
            while not stop.is_set():
                booms.append(request(d.port, "/boom/h", host="one.do").status)

        results = []
        lock = threading.Lock()

        def client(n):
            with Conn(d.port, timeout=10) as c:
                for k in range(60):
                    try:
                        st = c.request("GET", "/ok/c%d/%d" % (n, k), "one.do").status
                    except Exception as e:  # noqa: BLE001 - every failure counts
                        st = repr(e)
                    with lock:
                        results.append(st)
        h = threading.Thread(target=hostile)
        h.start()
        time.sleep(0.1)
        cl = [threading.Thread(target=client, args=(n,)) for n in range(3)]
        for t in cl:
            t.start()
        for t in cl:
            t.join(30)
        stop.set()
        h.join(10)
        self.assertGreater(len(booms), 10, "the hostile client hardly ran")
        self.assertEqual(set(booms), {502})
        self.assertEqual(len(results), 180)
        self.assertEqual([x for x in results if x != 200], [],
                         "other clients failed while one client made the only backend reset")
        # Three in a row with nobody in between: the count is reached, the backend stays.
        for _ in range(3):
            self.assertEqual(request(d.port, "/boom/again", host="one.do").status, 502)
        self.assertEqual(request(d.port, "/ok/after", host="one.do").status, 200)
        self.assertEqual(states(d, "one"), {r.addr: "up"})
        self.assertIn("stays in rotation: it is the last healthy backend of the service",
                      d.log())
        self.assertNotIn("of service one is down", d.log())
        print("%d resets provoked, %d requests of other clients all 200" % (len(booms),
                                                                          len(results)))

    def test_ejection_capped_by_max_ejection_percent(self):
        live = self.backend("live")
        dead = [refused_port(self) for _ in range(3)]
        d = self.dispatcher(
            services=[svc("half", *dead, live, retries=3),
                      svc("all", *dead, live, retries=3, max_ejection_percent=100),
                      svc("none", *dead, retries=3, max_ejection_percent=100)],
            routes=[route("half.do", "half"), route("all.do", "all"), route("*", "none")])
        for host in ("half.do", "all.do"):
            got = [request(d.port, "/echo", host=host) for _ in range(12)]
            self.assertEqual([g.status for g in got], [200] * 12, host)
        # 50% of 4: two of the dead ones out, the third stays in rotation (retries cover it).
        st = states(d, "half")
        self.assertEqual(st[live.addr], "up")
        self.assertEqual(sorted(st[a] for a in dead), ["down", "down", "up"], st)
        self.assertIn("stays in rotation: max_ejection_percent of its backends are out",
                      d.log())
        # 100%: all three dead ones out, the live one of course not.
        st = states(d, "all")
        self.assertEqual(st, dict([(a, "down") for a in dead] + [(live.addr, "up")]))
        # All dead, 100%: still never the last one (clients get 502, not 503).
        got = [request(d.port, "/echo", host="x.do") for _ in range(8)]
        self.assertEqual({g.status for g in got}, {502})
        st = states(d, "none")
        self.assertEqual(sorted(st.values()), ["down", "down", "up"], st)

    def test_refused_connect_ejects_at_once(self):
        live = self.backend("live")
        dead = refused_port(self)
        d = self.dispatcher(services=[svc("web", dead, live, retries=1)],
                            routes=[route("*", "web")])
        # Round-robin over two: the first two requests try both; the refused one is retried.
        got = [request(d.port, "/echo", host="w.do") for _ in range(2)]
        self.assertEqual([(g.status, g.header("X-Backend")) for g in got], [(200, "live")] * 2)
        j = admin(d, "show instances")["instances"][0]
        be = {b["address"]: b for b in j["backends"]}
        self.assertEqual((be[dead]["state"], be[dead]["errors"]), ("down", 1),
                         "one refused connect (of passive_failures = 3) did not eject")
        self.assertEqual(be[live.addr]["state"], "up")
        self.assertIn("backend %s of service web is down: connection refused" % dead, d.log())
        got = [request(d.port, "/echo", host="w.do") for _ in range(6)]
        self.assertEqual([g.status for g in got], [200] * 6)
        self.assertEqual(admin(d, "show instances")["instances"][0]["backends"][0]["errors"], 1,
                         "an ejected backend still got requests")

    def test_resets_in_a_row_eject_fewer_do_not(self):
        r = self.reset_backend("r")
        ok = self.backend("ok")
        d = self.dispatcher(services=[svc("web", r.addr, ok, retries=0)],
                            routes=[route("*", "web")])

        def hit_r(path, want_resets=None, want_answered=None):
            """Send <path> until r has seen one more of it (round-robin alternates)."""
            n0 = (r.resets, r.answered)
            for _ in range(4):
                x = request(d.port, path, host="w.do")
                if (r.resets, r.answered) != n0:
                    return x
            self.fail("r never got %s" % path)

        hit_r("/boom/1")
        hit_r("/boom/2")
        self.assertEqual(states(d, "web")[r.addr], "up", "2 resets of passive_failures = 3")
        self.assertEqual(backend_info(d, "web", r.addr)["passive_failures"], 2)
        x = hit_r("/ok")  # an answer in between: the count starts again
        self.assertEqual(x.status, 200)
        hit_r("/boom/3")
        hit_r("/boom/4")
        self.assertEqual(states(d, "web")[r.addr], "up", "the count did not start again")
        hit_r("/boom/5")
        self.assertEqual(r.resets, 5)
        self.assertEqual(states(d, "web")[r.addr], "down", "3 resets in a row did not eject")
        info = backend_info(d, "web", r.addr)
        self.assertEqual((info["ejected"], info["passive_failures"]), (True, 0))
        self.assertEqual(backend_info(d, "web", ok.addr)["ejected"], False)
        self.assertIn("backend %s of service web is down: connection reset" % r.addr, d.log())
        got = [request(d.port, "/echo", host="w.do") for _ in range(6)]
        self.assertEqual([(g.status, g.header("X-Backend")) for g in got], [(200, "ok")] * 6)

        # passive_failures = 1: a single reset is enough.
        d.hup(dsptest.make_config(d.port, d.tmp, [svc("web", ok, retries=0),
                                                  svc("one", r.addr, ok, retries=0,
                                                      passive_failures=1)],
                                  [route("one.do", "one"), route("*", "web")]))
        self.assertTrue(dsptest.wait_for(
            lambda: any(i["name"] == "one" for i in admin(d, "show instances")["instances"]), 5))
        n0 = r.resets
        for _ in range(20):
            if r.resets != n0:
                break
            request(d.port, "/boom/x", host="one.do")
        self.assertEqual(r.resets, n0 + 1)
        self.assertEqual(states(d, "one")[r.addr], "down")


class PassiveConfigTest(dsptest.TestCase):

    def check(self, **opts):
        d = dsptest.Dispatcher(port=dsptest.free_port())
        text = dsptest.make_config(d.port, d.tmp, [svc("a", "127.0.0.1:1"),
                                                   svc("web", "127.0.0.1:2", **opts)],
                                   [route("*", "web")])
        d.write_config(text)
        line = [i for i, l in enumerate(text.split("\n"), 1) if 'name = "web"' in l][0]
        p = subprocess.run([MASTER, "-t", "-c", d.conf], capture_output=True, timeout=20,
                           cwd=d.tmp)
        return p.returncode, p.stderr.decode(errors="replace"), "%s:%d: " % (d.conf, line)

    def test_bad_values_refused_with_file_line(self):
        bad = [({"passive_failures": 0}, "passive_failures must be between 1 and"),
               ({"passive_failures": -3}, "passive_failures must be between 1 and"),
               ({"passive_failures": "3"}, "passive_failures must be an integer"),
               ({"max_ejection_percent": 101}, "max_ejection_percent must be between 0 and 100"),
               ({"max_ejection_percent": -1}, "max_ejection_percent must be between 0 and 100"),
               ({"max_ejection_percent": True}, "max_ejection_percent must be an integer"),
               ({"max_ejection_percent": 1000}, "max_ejection_percent must be between 0 and 100")]
        for opts, msg in bad:
            rc, err, where = self.check(**opts)
            self.assertEqual(rc, 1, "%r accepted: %s" % (opts, err))
            self.assertRegex(err, re.escape(where) + r".*" + re.escape(msg), opts)
        for opts in ({"passive_failures": 1, "max_ejection_percent": 0},
                     {"passive_failures": 1000, "max_ejection_percent": 100}, {}):
            rc, err, _ = self.check(**opts)
            self.assertEqual(rc, 0, "%r refused: %s" % (opts, err))
