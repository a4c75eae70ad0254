"""Balancing, health checks, circuit breaker and retries (SPEC "Health, circuit breaker,
balancing" and the retry rule of "Proxying"), with 3 real backends and 2 workers, so that every
piece of shared state is exercised across processes.

Backends are told to misbehave through dsp-testbackend's /control endpoint (fail=N answers N,
health=N fails /health alone, delay=MS slows every answer) and /reset-after-body."""

# Timing assertions or CPU-heavy streams: run alone (see run.py).
DSP_SERIAL = True

import json
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time

import dsptest
from dsptest import Conn, request, route, svc


def weighted(*pairs):
    """backends = ( { address = ...; weight = ...; }, ... )"""
    return [{"address": b.addr, "weight": w} for b, w in pairs]


def control(b, **settings):
    q = "&".join("%s=%d" % kv for kv in settings.items())
    r = request(b.port, "/control?" + q, host="backend")
    assert r.status == 200, r
    return r.json()


def served(b):
    return b.stats()["requests"]


def request_from(src_ip, port, path, host, timeout=10):
    """One request on a fresh connection bound to source address <src_ip> (any 127/8 works)."""
    c = Conn.__new__(Conn)
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                      source_address=(src_ip, 0))
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.buf = bytearray()
    c.eof = False
    with c:
        return c.request("GET", path, host)


class FixedPortBackend(dsptest.Backend):
    """A dsp-testbackend on a given port, so a killed backend can come back where it was."""

    def __init__(self, name, port):
        self.name = name
        self.proc = subprocess.Popen([dsptest.TESTBACKEND, "-l", "127.0.0.1:%d" % port, "-n", name],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dsptest._record_pid(self.proc.pid)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not re.match(r"PORT %d" % port, line):
            self.proc.kill()
            raise RuntimeError("dsp-testbackend did not start on port %d: %r" % (port, line))
        self.port = port
        self.addr = "127.0.0.1:%d" % port


def kill9(b):
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()


class Load:
    """<threads> clients sending GET /echo until stopped, half on keep-alive connections, half on
    fresh ones; every outcome is recorded as (start, end, backend or None, error)."""

    def __init__(self, port, host, threads=4):
        self.port = port
        self.host = host
        self.results = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, n):
        conn = None
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            t0 = time.monotonic()
            path = "/echo/%d/%d" % (n, i)
            backend, err = None, None
            try:
                if n % 2 == 0:
                    if conn is None:
                        conn = Conn(self.port, timeout=5)
                    r = conn.request("GET", path, self.host)
                    if r.closed:
                        conn.close()
                        conn = None
                else:
                    r = request(self.port, path, host=self.host, timeout=5)
                if r.status == 200 and r.json()["path"] == path:
                    backend = r.header("X-Backend")
                else:
                    err = "status %d body %r" % (r.status, r.body[:200])
            except Exception as e:  # noqa: BLE001 - every failure counts
                err = "%s: %s" % (type(e).__name__, e)
                if conn is not None:
                    conn.close()
                    conn = None
            with self.lock:
                self.results.append((t0, time.monotonic(), backend, err))
        if conn is not None:
            conn.close()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)
        return self.results


class BalanceTest(dsptest.TestCase):

    def backends(self, n=3):
        return [self.backend("b%d" % i) for i in range(n)]

    def test_round_robin_weighted_smooth_across_workers(self):
        b = self.backends()
        d = self.dispatcher(
            services=[svc("web", backends=weighted((b[0], 3), (b[1], 1), (b[2], 1)))],
            routes=[route("*", "web")])
        # Fresh connections land on either worker; the schedule is one for both.
        seq = [request(d.port, "/echo", host="w.do").header("X-Backend") for _ in range(50)]
        self.assertEqual(seq, ["b0", "b1", "b0", "b2", "b0"] * 10,
                         "smooth weighted round-robin 3:1:1 across 2 workers")

    def test_active_health_checks(self):
        b = self.backends()
        d = self.dispatcher(
            services=[svc("web", *b, health={"path": "/health", "interval_ms": 200,
                                             "timeout_ms": 500, "fall": 2, "rise": 2})],
            routes=[route("*", "web")])
        seen = {request(d.port, "/echo", host="w.do").header("X-Backend") for _ in range(9)}
        self.assertEqual(seen, {"b0", "b1", "b2"})
        h0 = b[1].stats()["health"]
        time.sleep(0.5)
        checks = b[1].stats()["health"] - h0
        # One process checks, not one per worker: 0.5 s at 200 ms is 2 or 3 checks.
        self.assertTrue(1 <= checks <= 4, "%d checks of b1 in 0.5 s at interval 200 ms" % checks)

        # b1 fails its health checks: out after fall (2) failed checks, not before.
        h1 = b[1].stats()["health"]
        control(b[1], health=500)
        dsptest.wait_until(lambda: dsptest.backend_state(d, "web", b[1].addr) == "down", 5,
                           "b1 down after failing its checks")
        self.assertGreaterEqual(b[1].stats()["health"] - h1, 2, "down before 2 failed checks")
        n1 = served(b[1])
        got = [request(d.port, "/echo", host="w.do") for _ in range(30)]
        self.assertEqual([r.status for r in got], [200] * 30)
        self.assertNotIn("b1", {r.header("X-Backend") for r in got})
        self.assertEqual(served(b[1]), n1, "a backend failing its checks still got requests")

        # Passing again: back after rise (2) checks.
        h1 = b[1].stats()["health"]
        control(b[1], health=0)
        dsptest.wait_until(lambda: dsptest.backend_state(d, "web", b[1].addr) == "up", 5,
                           "b1 up after passing its checks")
        self.assertGreaterEqual(b[1].stats()["health"] - h1, 2, "up before 2 passed checks")
        got = [request(d.port, "/echo", host="w.do").header("X-Backend") for _ in range(30)]
        self.assertEqual(got.count("b1"), 10, got)

        # All of them failing: 503 naming the service.
        for x in b:
            control(x, health=503)
        dsptest.wait_until(lambda: all(dsptest.backend_state(d, "web", x.addr) == "down"
                                       for x in b), 5, "every backend down")
        r = request(d.port, "/echo", host="w.do")
        j = self.assertJsonError(r, 503, "Service unavailable")
        self.assertEqual(j["message"], "No healthy backend for service web")
        self.assertIn("health check /health failed (status 503)", d.log())

    @dsptest.timeout(60)
    def test_killed_backend_no_failed_requests_and_back_after_rise(self):
        b = self.backends()
        d = self.dispatcher(
            services=[svc("web", *b, retries=2,
                          health={"path": "/health", "interval_ms": 200, "timeout_ms": 300,
                                  "fall": 2, "rise": 3})],
            routes=[route("*", "web")])
        load = Load(d.port, "w.do")
        time.sleep(0.6)
        t_kill = time.monotonic()
        kill9(b[1])
        time.sleep(1.5)
        res = load.stop()
        failed = [r for r in res if r[3] is not None]
        after = [r for r in res if r[0] > t_kill + 2 * 0.2]
        self.assertGreater(len(res), 100, "too little load")
        self.assertEqual(failed, [], "client requests failed after killing a backend")
        self.assertTrue(any(r[2] == "b1" for r in res if r[1] < t_kill), "b1 never served")
        self.assertFalse(any(r[2] == "b1" for r in after))
        dsptest.wait_until(lambda: "of service web is down" in d.log(), 5,
                           "b1 reported down\n" + d.log_tail())

        # Restart it on its port: back in rotation only after rise (3) passed checks.
        t_up = time.monotonic()
        b1 = FixedPortBackend("b1", b[1].port)
        self.addCleanup(b1.stop)
        first = None
        while time.monotonic() - t_up < 5:
            if request(d.port, "/echo", host="w.do").header("X-Backend") == "b1":
                first = time.monotonic() - t_up
                break
            time.sleep(0.01)
        self.assertIsNotNone(first, "b1 not back within 5 s of its restart")
        self.assertGreater(first, 0.35, "b1 back %.2fs after restart, before 3 checks" % first)
        print("b1 back in rotation %.2fs after its restart" % first)
        dsptest.wait_until(lambda: dsptest.backend_state(d, "web", b1.addr) == "up", 5,
                           "b1 up in the shared state")
        got = [request(d.port, "/echo", host="w.do").header("X-Backend") for _ in range(30)]
        self.assertEqual(got.count("b1"), 10)

    @dsptest.timeout(40)
    def test_passive_down_without_health_block_retried_after_interval(self):
        b = self.backends()
        d = self.dispatcher(services=[svc("web", *b, retries=2)], routes=[route("*", "web")])
        port = b[1].port
        kill9(b[1])
        t_mark = time.monotonic()
        got = [request(d.port, "/echo", host="w.do") for _ in range(12)]
        self.assertEqual([r.status for r in got], [200] * 12, "retries cover the dead backend")
        b1 = FixedPortBackend("b1", port)
        self.addCleanup(b1.stop)
        first = None
        while time.monotonic() - t_mark < 16:
            if request(d.port, "/echo", host="w.do").header("X-Backend") == "b1":
                first = time.monotonic() - t_mark
                break
            time.sleep(0.05)
        self.assertIsNotNone(first, "b1 not tried again within 16 s")
        self.assertGreater(first, 9.5, "passive down lasted only %.2fs" % first)
        self.assertLess(first, 12.5)
        got = [request(d.port, "/echo", host="w.do").header("X-Backend") for _ in range(9)]
        self.assertEqual(got.count("b1"), 3)
        self.assertIn("is up again: trial request answered", d.log())

    def test_least_conn_avoids_busy_backend(self):
        b = self.backends()
        d = self.dispatcher(services=[svc("lc", *b, balance="least-conn")],
                            routes=[route("*", "lc")])
        control(b[0], delay=3000)
        slow = []
        threads = [threading.Thread(target=lambda: slow.append(
            request(d.port, "/echo", host="l.do", timeout=10))) for _ in range(3)]
        for t in threads:
            t.start()
        ok = dsptest.wait_for(lambda: served(b[0]) >= 1, 2)
        self.assertTrue(ok, "no request reached b0")
        # The requests that did not land on b0 (busy for 3 s) have their answers: b1 and b2 idle.
        dsptest.wait_until(lambda: len(slow) + served(b[0]) >= 3, 5, "b1 and b2 idle again")
        got = [request(d.port, "/echo", host="l.do").header("X-Backend") for _ in range(30)]
        self.assertNotIn("b0", got, "least-conn sent new requests to the busy backend")
        self.assertEqual(got.count("b1"), 15, "ties between idle backends are shared: %s" % got)
        for t in threads:
            t.join(10)
        self.assertEqual([r.status for r in slow], [200] * 3)
        control(b[0], delay=0)
        got = [request(d.port, "/echo", host="l.do").header("X-Backend") for _ in range(30)]
        self.assertIn("b0", got, "b0 idle again but not used")

    def test_least_conn_frees_a_backend_once_its_answer_is_in(self):
        # A backend whose response is complete is no longer busy, though the client has not
        # taken all of it yet: here an HTTP/2 client with stream windows of 0 (it takes
        # nothing) holds a 2000-byte answer. The next requests are shared between both
        # backends as between idle ones, not all sent to the other.
        b = self.backends()[:2]
        d = self.dispatcher(services=[svc("lc", *b, balance="least-conn")],
                            routes=[route("*", "lc")], workers=1)
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        self.addCleanup(s.close)

        def frame(t, flags, sid, payload=b""):
            return len(payload).to_bytes(3, "big") + bytes([t, flags]) + \
                sid.to_bytes(4, "big") + payload

        def lit(name, value):  # HPACK literal without indexing, new name, no Huffman
            return b"\0" + bytes([len(name)]) + name + bytes([len(value)]) + value

        block = (lit(b":method", b"GET") + lit(b":path", b"/bytes?n=2000") +
                 lit(b":scheme", b"http") + lit(b":authority", b"l.do"))
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" +
                  frame(4, 0, 0, (4).to_bytes(2, "big") + (0).to_bytes(4, "big")) +
                  frame(1, 0x5, 1, block))
        dsptest.wait_until(lambda: served(b[0]) + served(b[1]) == 1, 5, "the held request served")
        held = 0 if served(b[0]) == 1 else 1
        # its whole answer is in the dispatcher: the backend carries no request any more
        dsptest.wait_until(lambda: dsptest.admin_ask(d, "show stats")["active_connections"] == 0,
                           5, "the held request's backend no longer counted active")
        got = []
        for _ in range(10):
            got.append(request(d.port, "/echo", host="l.do").header("X-Backend"))
        self.assertEqual(got.count(b[held].name), 5,
                         "the backend whose answer is complete still counted busy: %s" % got)

    def test_ip_hash_sticky_and_survives_reload(self):
        b = self.backends()
        other = self.backend("other")
        services = [svc("ih", *b, balance="ip-hash")]
        routes = [route("*", "ih")]
        d = self.dispatcher(services=services, routes=routes)
        clients = ["127.0.0.%d" % i for i in range(2, 42)]

        def mapping():
            m = {}
            for ip in clients:
                got = {request_from(ip, d.port, "/echo", "i.do").header("X-Backend")
                       for _ in range(3)}
                self.assertEqual(len(got), 1, "client %s went to %s" % (ip, got))
                m[ip] = got.pop()
            return m

        before = mapping()
        counts = {x: list(before.values()).count(x) for x in ("b0", "b1", "b2")}
        self.assertTrue(all(c >= 4 for c in counts.values()), counts)

        def reloaded(pred):
            # Both workers: each fresh connection lands on either, so ask ten in a row.
            return dsptest.wait_for(lambda: all(
                pred(request(d.port, "/echo", host="other.do").header("X-Backend"))
                for _ in range(10)), 5)

        # Reload (a new service and route): every client stays where it was.
        d.hup(dsptest.make_config(d.port, d.tmp, services + [svc("other", other)],
                                  [route("other.do", "other")] + routes))
        self.assertTrue(reloaded(lambda x: x == "other"))
        self.assertEqual(mapping(), before)

        # Reload without b2: its clients move, the others (all but a rare one) stay.
        d.hup(dsptest.make_config(d.port, d.tmp, [svc("ih", b[0], b[1], balance="ip-hash")],
                                  routes))
        self.assertTrue(reloaded(lambda x: x != "other"))
        after = mapping()
        kept = [ip for ip in clients if before[ip] != "b2"]
        moved = [ip for ip in kept if after[ip] != before[ip]]
        self.assertLessEqual(len(moved), 1, (before, after))
        print("%d clients, %d on the removed backend, %d others moved"
              % (len(clients), len(clients) - len(kept), len(moved)))

    def test_circuit_opens_probes_once_and_closes(self):
        b = self.backend("cb")
        d = self.dispatcher(
            services=[svc("db", b, retries=0,
                          circuit_breaker={"failures": 3, "open_ms": 1000, "count_5xx": True})],
            routes=[route("*", "db")])
        msg = "Circuit open for 1 backend of service db"  # no address: errors.expose_backend
        self.assertEqual(request(d.port, "/echo", host="c.do").status, 200)
        control(b, fail=500)
        for _ in range(3):
            r = request(d.port, "/echo", host="c.do")
            self.assertEqual((r.status, r.header("X-Backend")), (500, "cb"))
        t_open = time.monotonic()
        n0 = served(b)
        r = request(d.port, "/echo", host="c.do")
        self.assertEqual(self.assertJsonError(r, 503, "Service unavailable")["message"], msg)
        time.sleep(0.5)
        for _ in range(5):
            self.assertEqual(request(d.port, "/echo", host="c.do").status, 503)
        self.assertEqual(served(b), n0, "requests reached the backend while the circuit was open")

        # After open_ms: exactly one probe across both workers (the probe is slow, so the others
        # arrive while it is in flight); it fails and the circuit opens again.
        control(b, delay=600)
        time.sleep(max(0.0, t_open + 1.15 - time.monotonic()))
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            request(d.port, "/echo", host="c.do", timeout=10))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        statuses = sorted(r.status for r in results)
        self.assertEqual(statuses, [500] + [503] * 7, "one probe, the rest refused")
        self.assertEqual(served(b), n0 + 1)
        for r in results:
            if r.status == 503:
                self.assertEqual(r.json()["message"], msg)
        self.assertEqual(request(d.port, "/echo", host="c.do").status, 503)

        # Recovered: the next probe closes the circuit.
        control(b, fail=0, delay=0)
        time.sleep(1.15)
        got = [request(d.port, "/echo", host="c.do").status for _ in range(10)]
        self.assertEqual(got, [200] * 10)
        self.assertIn("circuit closed for backend %s of service db" % b.addr, d.log())

    def test_post_reset_after_body_is_not_retried(self):
        b = self.backends()
        ka = self.backend("ka")
        d = self.dispatcher(
            services=[svc("p", *b, retries=2), svc("g", *b, retries=2), svc("k", ka, retries=2)],
            routes=[route("p.do", "p"), route("g.do", "g"), route("k.do", "k")])
        total = lambda: sum(served(x) for x in b)  # noqa: E731

        # Fresh upstream connection, POST: sent once, the client gets a 502.
        n = total()
        r = request(d.port, "/reset-after-body", host="p.do", method="POST", body=b"x" * 5000)
        self.assertJsonError(r, 502, "Bad gateway")
        self.assertEqual(total() - n, 1, "a POST that may have been processed was sent again")

        # Reused keep-alive upstream connection, POST: still never sent twice.
        with Conn(d.port) as c:
            self.assertEqual(c.request("GET", "/echo", "k.do").status, 200)
            n = served(ka)
            r = c.request("POST", "/reset-after-body", "k.do", body=b"y" * 100)
            self.assertJsonError(r, 502, "Bad gateway")
        self.assertEqual(served(ka) - n, 1)

        # The same failure on a GET is retried on the other backends (retries = 2).
        n = total()
        r = request(d.port, "/reset-after-body", host="g.do")
        self.assertJsonError(r, 502, "Bad gateway")
        self.assertEqual(total() - n, 3, "an idempotent request is retried up to `retries`")


class BalanceCrashTest(dsptest.TestCase):
    check_workers = False  # workers are killed on purpose

    def test_worker_kill_keeps_circuit_and_health_state(self):
        b = [self.backend("b%d" % i) for i in range(3)]
        d = self.dispatcher(
            services=[svc("db", b[0], retries=0,
                          circuit_breaker={"failures": 2, "open_ms": 60000, "count_5xx": True}),
                      svc("web", b[1], b[2], health={"path": "/health", "interval_ms": 200,
                                                     "timeout_ms": 500, "fall": 1, "rise": 1})],
            routes=[route("db.do", "db"), route("*", "web")])
        msg = "Circuit open for 1 backend of service db"  # no address: errors.expose_backend
        control(b[0], fail=500)
        for _ in range(2):
            self.assertEqual(request(d.port, "/echo", host="db.do").status, 500)
        self.assertEqual(request(d.port, "/echo", host="db.do").json()["message"], msg)
        control(b[1], health=500)
        dsptest.wait_until(lambda: dsptest.backend_state(d, "web", b[1].addr) == "down", 5,
                           "b1 down after failing its check")
        n0, n1 = served(b[0]), served(b[1])

        old = d.worker_pids()
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        new = dsptest.wait_for(
            lambda: len([p for p in d.worker_pids() if p not in old]) == 2, 5)
        self.assertTrue(new, "workers not respawned")
        dsptest.wait_for(lambda: request(d.port, "/echo", host="x.do").status == 200, 5)

        for _ in range(6):
            r = request(d.port, "/echo", host="db.do")
            self.assertEqual(self.assertJsonError(r, 503)["message"], msg)
        got = [request(d.port, "/echo", host="x.do").header("X-Backend") for _ in range(20)]
        self.assertEqual(got, ["b2"] * 20)
        self.assertEqual((served(b[0]), served(b[1])), (n0, n1))
        self.assertEqual(json.loads(request(b[0].port, "/control", host="x").body)["fail"], 500)
