"""The rate_limit middleware (SPEC "Middlewares", ISSUE 15).

Host scope (one master, 2 workers):
- a bucket is exact across workers: 16 keep-alive connections spread over both workers fire 150
  pipelined requests at a bucket of 50 that refills one token a minute: exactly 50 pass;
- the answers: 429 with the SPEC's JSON body (retry_after_s), Retry-After, RateLimit-Limit,
  RateLimit-Remaining and RateLimit-Reset; the last two on every proxied answer of the route;
- keys: a header (a request without it shares the empty key's bucket, as Traefik does), the host,
  the client IP (X-Forwarded-For counts only from a trusted proxy);
- a flood of distinct X-API-Key values on a small table (limits.rate_limit_keys = 1024): the
  table stays at its size, evictions show in /metrics, an exhausted key stays exhausted, and
  requests stay fast;
- buckets survive a reload and a killed worker.
Fleet scope (two masters, one redis-server started by the test):
- the fleet admits what one bucket allows plus at most one reconciliation period's worth of the
  other dispatcher; redis killed: `show health` says "rate_limit":"host-fallback", /metrics
  dispatcher_rate_limit_fleet_fallback 1, and each dispatcher goes on limiting on its own;
  redis back: "fleet" again.
"""

# Counts requests against time: run alone (see run.py).
DSP_SERIAL = True

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import unittest

import dsptest
from dsptest import Conn, admin_ask, build_request, request, route, svc, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def mw(name, **kw):
    d = {"name": name, "type": "rate_limit"}
    d.update(kw)
    return d


def middlewares(*mws):
    return "middlewares = (\n  %s\n);" % ",\n  ".join(dsptest._group(m) for m in mws)


def fire(port, host, nconns, per_conn, headers_of=lambda c, i: ()):
    """<nconns> keep-alive connections, each sending <per_conn> pipelined GETs at once (in its
    own thread); returns every response."""
    out, errors = [], []
    lock = threading.Lock()

    def one(c):
        try:
            with Conn(port, timeout=20) as conn:
                data = b"".join(build_request("GET", "/echo", host, headers_of(c, i))
                                for i in range(per_conn))
                conn.send(data)
                rs = [conn.read_response() for _ in range(per_conn)]
            with lock:
                out.extend(rs)
        except Exception as e:  # reported by the caller
            with lock:
                errors.append(repr(e))

    ts = [threading.Thread(target=one, args=(c,)) for c in range(nconns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    if errors:
        raise AssertionError("client errors: %s" % errors[:3])
    return out


def metric(port_or_d, name):
    text = admin_http_metrics(port_or_d)
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    return int(m.group(1)) if m else None


def admin_http_metrics(d):
    with socket.create_connection(("127.0.0.1", d.admin_port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return dsptest.read_to_eof(s).decode("latin-1")


def worker_requests(d):
    return {w["slot"]: w["requests"] for w in admin_ask(d, "show workers")["workers"]
            if w["alive"]}


class HostScope(dsptest.TestCase):
    d = None

    @classmethod
    def setUpClass(cls):
        cls.be = dsptest.Backend("rl")
        cls.d = dsptest.Dispatcher(workers=2)
        cls.d.admin_port = dsptest.free_port()
        extra = "\n".join([
            'admin = { socket = "%s"; http = "127.0.0.1:%d"; };'
            % (os.path.join(cls.d.tmp, "admin.sock"), cls.d.admin_port),
            "trusted_proxies = [\"127.0.0.2\"];",
            middlewares(
                # 50 tokens, one more a minute: nothing refills during a test.
                mw("exact", average=1, period_s=60, burst=50, key="header:X-Test"),
                mw("hdr", average=1, period_s=60, burst=3, key="header:X-API-Key"),
                mw("by-host", average=1, period_s=60, burst=2, key="host"),
                mw("by-ip", average=1, period_s=60, burst=2),
                mw("flood", average=1, period_s=60, burst=2, key="header:X-API-Key"),
                mw("keep", average=1, period_s=60, burst=2, key="header:X-Keep"),
                mw("h2", average=1, period_s=60, burst=2, key="header:X-H2"),
                mw("before-page", average=1, period_s=60, burst=2, key="header:X-P"),
                {"name": "page", "type": "static", "status": 503, "body": "down\n"},
            ),
        ])
        conf = dsptest.make_config(
            cls.d.port, cls.d.tmp, [svc("rl", cls.be)],
            [route("exact.rl", "rl", middlewares=["exact"]),
             route("hdr.rl", "rl", middlewares=["hdr"]),
             route("*.host.rl", "rl", middlewares=["by-host"]),
             route("ip.rl", "rl", middlewares=["by-ip"]),
             route("flood.rl", "rl", middlewares=["flood"]),
             route("keep.rl", "rl", middlewares=["keep"]),
             route("h2.rl", "rl", middlewares=["h2"]),
             route("page.rl", "rl", middlewares=["before-page", "page"]),
             route("plain.rl", "rl")],
            workers=2, limits={"rate_limit_keys": 1024}, extra=extra)
        # make_config wrote an admin line first: the later one (with http) must win, so drop it.
        conf = re.sub(r'^admin = \{ socket = "[^"]*"; \};\n', "", conf, count=1, flags=re.M)
        cls.d.write_config(conf)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        # test_kept_across_reload_and_crash kills a worker on purpose.
        problems = cls.d.stop(check_workers=False) if cls.d else []
        cls.be.stop()
        if problems:
            raise AssertionError("dispatcher did not stop cleanly: %s" % problems)

    def test_exact_across_workers(self):
        before = worker_requests(self.d)
        rs = fire(self.d.port, "exact.rl", 16, 10, lambda c, i: [("X-Test", "k1")])
        after = worker_requests(self.d)
        codes = [r.status for r in rs]
        self.assertEqual(len(codes), 160)
        self.assertEqual(codes.count(200), 50, "exactly the bucket passes: %s"
                         % {c: codes.count(c) for c in set(codes)})
        self.assertEqual(codes.count(429), 110)
        self.assertEqual(metric(self.d, "dispatcher_rate_limit_contended_total"), 0)
        busy = [s for s in after if after[s] > before.get(s, 0)]
        self.assertGreaterEqual(len(busy), 2, "both workers served (%s -> %s)" % (before, after))

    def test_answers_and_headers(self):
        c = Conn(self.d.port)
        self.addCleanup(c.close)
        rems = []
        for i in range(3):
            r = c.request("GET", "/echo", "hdr.rl", headers=[("X-API-Key", "answers")])
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("X-Backend"), "rl")
            rems.append(int(r.header("RateLimit-Remaining")))
            self.assertGreaterEqual(int(r.header("RateLimit-Reset")), 1)
        self.assertEqual(rems, [2, 1, 0])
        r = c.request("GET", "/echo", "hdr.rl", headers=[("X-API-Key", "answers")])
        j = self.assertJsonError(r, 429, "Too many requests")
        self.assertIsNone(r.header("X-Backend"), "the backend never saw it")
        retry = int(r.header("Retry-After"))
        self.assertTrue(1 <= retry <= 60, retry)  # one token a minute
        self.assertEqual(j.get("retry_after_s"), retry)
        self.assertIn("message", j)
        self.assertEqual(r.header("RateLimit-Limit"), "3")
        self.assertEqual(r.header("RateLimit-Remaining"), "0")
        self.assertGreaterEqual(int(r.header("RateLimit-Reset")), retry)
        # The connection stays usable; a route without middlewares has no RateLimit fields.
        r = c.request("GET", "/echo", "plain.rl")
        self.assertEqual(r.status, 200)
        self.assertIsNone(r.header("RateLimit-Remaining"))
        # The access log names the middleware that answered.
        wait_until(lambda: '"middleware":"hdr"' in open(os.path.join(self.d.tmp, "access.log")).read(),
                   5, "the 429 in the access log")

    def test_fields_on_answers_of_later_middlewares(self):
        # A static page after the limit: its answers carry the figures too, then the 429.
        rs = [request(self.d.port, "/", host="page.rl", headers=[("X-P", "p")]) for _ in range(3)]
        self.assertEqual([r.status for r in rs], [503, 503, 429])
        self.assertEqual([r.header_all("RateLimit-Remaining") for r in rs], [["1"], ["0"], ["0"]])
        self.assertEqual(rs[0].body, b"down\n")
        self.assertEqual(len(rs[2].header_all("RateLimit-Reset")), 1, rs[2].headers)

    def test_missing_header_shares_one_bucket(self):
        # As Traefik: no X-API-Key is the empty key, one bucket for all such requests.
        codes = [request(self.d.port, "/echo", host="hdr.rl").status for _ in range(4)]
        self.assertEqual(codes, [200, 200, 200, 429])
        self.assertEqual(request(self.d.port, "/echo", host="hdr.rl",
                                 headers=[("X-API-Key", "other")]).status, 200)

    def test_host_and_client_ip_keys(self):
        for h in ("a.host.rl", "b.host.rl"):
            codes = [request(self.d.port, "/echo", host=h).status for _ in range(3)]
            self.assertEqual(codes, [200, 200, 429], h)
        # client_ip: X-Forwarded-For from an untrusted peer changes nothing...
        codes = [request(self.d.port, "/echo", host="ip.rl",
                         headers=[("X-Forwarded-For", "10.0.0.%d" % i)]).status for i in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        # ...from a trusted proxy (127.0.0.2) the forwarded client is the key.
        def via_proxy(client):
            s = socket.create_connection(("127.0.0.1", self.d.port), timeout=10,
                                         source_address=("127.0.0.2", 0))
            with Conn.__new__(Conn) as c:
                c.sock, c.buf, c.eof = s, bytearray(), False
                return c.request("GET", "/echo", "ip.rl",
                                 headers=[("X-Forwarded-For", client)]).status
        self.assertEqual([via_proxy("192.0.2.7") for _ in range(3)], [200, 200, 429])
        self.assertEqual(via_proxy("192.0.2.8"), 200)

    def test_flood_of_keys(self):
        c = Conn(self.d.port)
        self.addCleanup(c.close)
        for _ in range(2):
            self.assertEqual(c.request("GET", "/echo", "flood.rl",
                                       headers=[("X-API-Key", "victim")]).status, 200)
        self.assertEqual(c.request("GET", "/echo", "flood.rl",
                                   headers=[("X-API-Key", "victim")]).status, 429)
        cap = metric(self.d, "dispatcher_rate_limit_capacity")
        self.assertEqual(cap, 256 * 7, "1024 keys: 147 groups of 7, rounded up to 256")
        ev0 = metric(self.d, "dispatcher_rate_limit_evictions_total")

        def timed(n):
            t = time.monotonic()
            for _ in range(n):
                c.request("GET", "/echo", "flood.rl", headers=[("X-API-Key", "victim")])
            return (time.monotonic() - t) / n

        t_before = timed(50)
        rs = fire(self.d.port, "flood.rl", 8, 500, lambda k, i: [("X-API-Key", "f%d-%d" % (k, i))])
        self.assertEqual([r.status for r in rs].count(200), 4000, "every new key has its bucket")
        t_after = timed(50)
        keys = metric(self.d, "dispatcher_rate_limit_keys")
        self.assertLessEqual(keys, cap)
        self.assertGreater(metric(self.d, "dispatcher_rate_limit_evictions_total") - ev0, 1000)
        text = admin_http_metrics(self.d)
        m = re.search(r'^dispatcher_rate_limit_middleware_keys_total\{middleware="flood",'
                      r'result="evicted"\} (\d+)$', text, re.M)
        self.assertTrue(m and int(m.group(1)) > 1000, "evictions of the flood's middleware")
        r = c.request("GET", "/echo", "flood.rl", headers=[("X-API-Key", "victim")])
        self.assertEqual(r.status, 429, "the flood did not give the exhausted key a new bucket")
        self.assertLess(t_after, t_before * 4 + 0.005,
                        "lookups stay fast: %.2f ms -> %.2f ms" % (t_before * 1e3, t_after * 1e3))

    def test_kept_across_reload_and_crash(self):
        codes = [request(self.d.port, "/echo", host="keep.rl",
                         headers=[("X-Keep", "k")]).status for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        gen = dsptest.generation(self.d)
        self.d.hup()
        wait_until(lambda: dsptest.workers_on_generation(self.d, gen + 1), 10, "the reload")
        self.assertEqual(request(self.d.port, "/echo", host="keep.rl",
                                 headers=[("X-Keep", "k")]).status, 429, "after a reload")
        pids = self.d.worker_pids()
        os.kill(pids[0], signal.SIGKILL)
        wait_until(lambda: len(set(self.d.worker_pids()) - set(pids)) == 1, 10, "a new worker")
        codes = [request(self.d.port, "/echo", host="keep.rl",
                         headers=[("X-Keep", "k")]).status for _ in range(6)]
        self.assertEqual(codes, [429] * 6, "after a worker was killed")

    def test_http2(self):
        # The same bucket, fields and answer for HTTP/2 clients (curl, prior knowledge).
        def curl():
            p = subprocess.run(["curl", "-s", "--max-time", "10", "--http2-prior-knowledge",
                                "-D", "-", "-H", "Host: h2.rl", "-H", "X-H2: k",
                                "http://127.0.0.1:%d/echo" % self.d.port],
                               capture_output=True, timeout=20)
            head, _, body = p.stdout.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            hd = {k.strip().lower(): v.strip() for k, _, v in
                  (l.partition(":") for l in lines[1:])}
            return lines[0], hd, body

        if not shutil.which("curl"):
            self.skipTest("curl is not installed")
        for rem in ("1", "0"):
            st, hd, _ = curl()
            self.assertTrue(st.startswith("HTTP/2 200"), st)
            self.assertEqual(hd.get("ratelimit-remaining"), rem)
            self.assertIn("ratelimit-reset", hd)
        st, hd, body = curl()
        self.assertTrue(st.startswith("HTTP/2 429"), st)
        self.assertEqual(hd.get("ratelimit-limit"), "2")
        self.assertEqual(int(hd.get("retry-after")), json.loads(body)["retry_after_s"])

    def test_health_says_host(self):
        self.assertEqual(admin_ask(self.d, "show health").get("rate_limit"), "host")
        ctl = os.path.join(os.path.dirname(dsptest.MASTER), "dispatcherctl")
        out = subprocess.run([ctl, "-s", os.path.join(self.d.tmp, "admin.sock"), "show",
                              "health"], capture_output=True, text=True, timeout=10).stdout
        self.assertRegex(out, r"(?m)^rate limits +host$")


class Redis:
    def __init__(self, tmp):
        self.tmp, self.port, self.proc = tmp, dsptest.free_port(), None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        dsptest._record_pid(self.proc.pid)
        wait_until(lambda: self.cli("PING") == "PONG", 10, "redis-server up")
        return self

    def cli(self, *args):
        try:
            return subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port)]
                                  + [str(a) for a in args], capture_output=True, timeout=10,
                                  text=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@unittest.skipUnless(os.path.exists(REDIS_SERVER), "redis-server is not installed")
class FleetScope(dsptest.TestCase):
    def fleet_dispatcher(self, r, be):
        d = dsptest.Dispatcher(workers=2)
        d.admin_port = dsptest.free_port()
        extra = "\n".join([
            'environment = "rltest";',
            'redis = { host = "127.0.0.1"; port = %d; };' % r.port,
            middlewares(mw("fleet", average=20, burst=10, key="header:X-K", scope="fleet")),
        ])
        conf = dsptest.make_config(d.port, d.tmp, [svc("rl", be)],
                                   [route("fleet.rl", "rl", middlewares=["fleet"])],
                                   workers=2, extra=extra)
        conf = conf.replace('admin = { socket = "%s"; };' % os.path.join(d.tmp, "admin.sock"),
                            'admin = { socket = "%s"; http = "127.0.0.1:%d"; };'
                            % (os.path.join(d.tmp, "admin.sock"), d.admin_port))
        d.write_config(conf)
        return self.start_dispatcher(d)

    @dsptest.timeout(60)
    def test_fleet_limit_and_fallback(self):
        tmp = dsptest.Dispatcher(workers=1).tmp
        r = Redis(tmp).start()
        self.addCleanup(r.kill)
        be = self.backend("rl")
        ds = [self.fleet_dispatcher(r, be), self.fleet_dispatcher(r, be)]
        for d in ds:
            wait_until(lambda: admin_ask(d, "show health").get("rate_limit") == "fleet", 10,
                       "fleet mode")

        # Both dispatchers hammered for 2 s on one key: one bucket (10 + 20/s) for the fleet,
        # plus what the other admits within one reconciliation period (10 + 20 * 0.1 at most).
        stop = time.monotonic() + 2.0
        counts = {200: 0, 429: 0}
        lock = threading.Lock()

        def hammer(port):
            with Conn(port) as c:
                while time.monotonic() < stop:
                    st = c.request("GET", "/echo", "fleet.rl", headers=[("X-K", "shared")]).status
                    with lock:
                        counts[st] = counts.get(st, 0) + 1
                    time.sleep(0.002)

        t0 = time.monotonic()
        ts = [threading.Thread(target=hammer, args=(d.port,)) for d in ds for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        elapsed = time.monotonic() - t0
        ok = counts[200]
        one_bucket = 10 + 20 * elapsed
        print("fleet: %s in %.2f s (one bucket: %.0f)" % (counts, elapsed, one_bucket))
        self.assertGreater(counts[429], 0, counts)
        self.assertGreaterEqual(ok, 10 + 20 * 2.0 - 2, counts)
        self.assertLessEqual(ok, one_bucket + 12 + 8,
                             "fleet overshoot beyond one period: %s in %.2fs" % (counts, elapsed))
        # Redis holds the fleet's count under the environment's namespace.
        wait_until(lambda: int(r.cli("GET", "dispatcher:rltest:rl:fleet:shared") or 0) >= ok, 3,
                   "the fleet total in redis")

        # Redis killed: each dispatcher says so and limits on its own.
        r.kill()
        for d in ds:
            wait_until(lambda: admin_ask(d, "show health").get("rate_limit") == "host-fallback",
                       5, "host-fallback in show health")
            self.assertEqual(metric(d, "dispatcher_rate_limit_fleet_fallback"), 1)
            # 30 pipelined requests on a fresh key: the burst of 10, plus what refills meanwhile.
            t0 = time.monotonic()
            rs = fire(d.port, "fleet.rl", 1, 30, lambda c, i: [("X-K", "after-%d" % d.port)])
            dt = time.monotonic() - t0
            ok = [r.status for r in rs].count(200)
            self.assertTrue(10 <= ok <= 10 + 20 * dt + 1, "%d of 30 in %.2f s" % (ok, dt))

        # Redis back (empty, on the same port): reconciled again, shown as such.
        r.start()
        for d in ds:
            wait_until(lambda: admin_ask(d, "show health").get("rate_limit") == "fleet", 10,
                       "fleet again once redis is back")
            self.assertEqual(metric(d, "dispatcher_rate_limit_fleet_fallback"), 0)


if __name__ == "__main__":
    unittest.main()
