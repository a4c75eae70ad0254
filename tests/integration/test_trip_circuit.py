"""`trip circuit SERVICE ADDRESS`: a backend's circuit opened by hand through the admin socket,
dispatcherctl and admin HTTP (POST): no request reaches it (the other backend takes them, 503
when it was the only one), it stays open past open_ms (never half-opens by itself), shows as
"open" with circuit_manual (dispatcherctl: "open (manual)"), survives a worker SIGKILL and a
reload that keeps the backend, and `reset circuit` closes it."""

import json
import os
import signal
import subprocess
import time

import dsptest
from dsptest import admin_ask, route, svc, wait_until
from test_admin import admin_config

CTL = os.path.join(dsptest.BIN_DIR, "dispatcherctl")


def post(port, path, headers=()):
    with dsptest.Conn(port) as c:
        return c.request("POST", path, host="127.0.0.1", headers=headers)


class TripCircuitTest(dsptest.TestCase):
    def seen(self, d, host, n):
        """The (status, X-Backend) of <n> requests on one keep-alive connection."""
        out = {}
        with dsptest.Conn(d.port) as c:
            for _ in range(n):
                r = c.request("GET", "/echo", host=host)
                k = (r.status, r.header("X-Backend"))
                out[k] = out.get(k, 0) + 1
        return out

    def backend_of(self, d, service, address):
        for s in admin_ask(d, "show instances")["instances"]:
            if s["name"] == service:
                for b in s["backends"]:
                    if b["address"] == address:
                        return b
        return None

    def ctl(self, d, *args):
        p = subprocess.run([CTL, "-s", os.path.join(d.tmp, "admin.sock")] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def test_trip_reset_everywhere(self):
        b1, b2, b3 = self.backend("b1"), self.backend("b2"), self.backend("b3")
        services = [svc("two", b1, b2, circuit_breaker={"failures": 3, "open_ms": 200}),
                    svc("one", b3)]
        routes = [route("two.do", "two"), route("one.do", "one")]
        d = dsptest.Dispatcher(workers=2)
        http_port = dsptest.free_port()
        text = admin_config(d, services, routes, http_port)
        d.write_config(text)
        self.start_dispatcher(d)
        self.assertEqual(set(self.seen(d, "two.do", 6)), {(200, "b1"), (200, "b2")})

        # Socket: trip b1; every request goes to b2, also well past open_ms (no half-open probe).
        j = admin_ask(d, "trip circuit two %s" % b1.addr)
        self.assertTrue(j["ok"], j)
        self.assertEqual(j["done"], "circuit tripped")
        before = b1.stats()["requests"]
        self.assertEqual(self.seen(d, "two.do", 10), {(200, "b2"): 10})
        time.sleep(0.5)  # open_ms is 200: give a half-open probe the chance to show
        self.assertEqual(self.seen(d, "two.do", 10), {(200, "b2"): 10})
        self.assertEqual(b1.stats()["requests"], before)
        b = self.backend_of(d, "two", b1.addr)
        self.assertEqual((b["circuit"], b["circuit_manual"]), ("open", True))
        self.assertEqual(self.backend_of(d, "two", b2.addr)["circuit_manual"], False)
        rc, out, _ = self.ctl(d, "show", "instances")
        self.assertEqual(rc, 0)
        line = [l for l in out.splitlines() if b1.addr in l][0]
        self.assertIn("open (manual)", line)
        self.assertIn("trip circuit SERVICE ADDRESS", admin_ask(d, "help")["commands"])

        # Kept across a worker SIGKILL and a reload that keeps the backend.
        victim = d.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(d.worker_pids()) == 2 and victim not in d.worker_pids(), 10,
                   "worker respawned")
        d.initial_workers = d.worker_pids()
        gen = dsptest.generation(d)
        d.hup(text + "# reloaded\n")
        wait_until(lambda: dsptest.workers_on_generation(d, gen + 1), 10, "reload applied")
        self.assertEqual(self.seen(d, "two.do", 10), {(200, "b2"): 10})
        self.assertTrue(self.backend_of(d, "two", b1.addr)["circuit_manual"])

        # dispatcherctl resets it: closed, both serve again.
        rc, out, err = self.ctl(d, "reset", "circuit", "two", b1.addr)
        self.assertEqual(rc, 0, err)
        self.assertIn("circuit reset", out)
        b = self.backend_of(d, "two", b1.addr)
        self.assertEqual((b["circuit"], b["circuit_manual"]), ("closed", False))
        self.assertEqual(set(self.seen(d, "two.do", 6)), {(200, "b1"), (200, "b2")})

        # Admin HTTP: trip the only backend of a service without a breaker: 503, kept; reset.
        r = post(http_port, "/api/v1/dispatcher/circuit/trip?service=one&address=%s"
                 % b3.addr.replace(":", "%3A"))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(json.loads(r.body)["done"], "circuit tripped")
        r = dsptest.request(d.port, "/echo", host="one.do")
        self.assertEqual(r.status, 503)
        self.assertIn("Circuit open", r.json()["message"])
        rc, out, _ = self.ctl(d, "trip", "circuit", "one", b3.addr)  # again: still fine
        self.assertEqual(rc, 0)
        self.assertIn("circuit tripped", out)
        self.assertEqual(dsptest.request(d.port, "/echo", host="one.do").status, 503)
        r = post(http_port, "/api/v1/dispatcher/circuit/reset?service=one&address=" + b3.addr)
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(dsptest.request(d.port, "/echo", host="one.do").status, 200)

        # Refusals: unknown names, bad arguments, a browser's cross-origin POST, a GET.
        for cmd in ("trip circuit nope %s" % b1.addr, "trip circuit two 10.0.0.1:1",
                    "trip circuit two", "trip circuit two a b"):
            j = admin_ask(d, cmd)
            self.assertFalse(j["ok"], cmd)
            self.assertTrue(j["error"], cmd)
        rc, _, _ = self.ctl(d, "trip", "circuit", "nope", b1.addr)
        self.assertEqual(rc, 1)
        self.assertEqual(post(http_port, "/api/v1/dispatcher/circuit/trip?service=nope&address="
                              + b1.addr).status, 404)
        for q in ("", "?service=two", "?address=" + b1.addr, "?service=two&address=%zz",
                  "?service=two&address=%0a"):
            self.assertEqual(post(http_port, "/api/v1/dispatcher/circuit/trip" + q).status, 400, q)
        r = post(http_port, "/api/v1/dispatcher/circuit/trip?service=two&address=" + b1.addr,
                 headers=[("Origin", "http://evil.example")])
        self.assertEqual(r.status, 403)
        with dsptest.Conn(http_port) as c:
            r = c.request("GET", "/api/v1/dispatcher/circuit/trip?service=two&address=" + b1.addr,
                          host="127.0.0.1")
        self.assertEqual(r.status, 404)
        self.assertFalse(self.backend_of(d, "two", b1.addr)["circuit_manual"])
        self.assertEqual(set(self.seen(d, "two.do", 6)), {(200, "b1"), (200, "b2")})
