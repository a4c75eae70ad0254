"""SIGHUP reload under keep-alive load: a new route answers within 1 s, no request fails, no
client connection is closed, workers are not restarted; an invalid config changes nothing and
logs FILE:LINE:."""

# Timing assertions or CPU-heavy streams: run alone (see run.py).
DSP_SERIAL = True

import re
import socket
import threading
import time

import dsptest
from dsptest import Conn, make_config, request, route, svc


class ReloadTest(dsptest.TestCase):

    @dsptest.timeout(60)
    def test_reload_under_keepalive_load(self):
        b1, b2 = self.backend("one"), self.backend("two")
        services = [svc("one", b1)]
        routes = [route("one.do", "one")]
        d = self.dispatcher(services=services, routes=routes)
        workers = sorted(d.worker_pids())
        r = request(d.port, "/echo", host="new.do")
        self.assertEqual(r.status, 404, "new.do must not route before the reload")

        stop = threading.Event()
        lock = threading.Lock()
        stats = {"ok": 0, "fail": []}
        last_ok = {}

        def client(n):
            try:
                c = Conn(d.port, timeout=5)
            except OSError as e:
                with lock:
                    stats["fail"].append("connect: %s" % e)
                return
            with c:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = c.request("GET", "/echo/%d/%d" % (n, i), "one.do")
                        if r.status != 200 or r.header("X-Backend") != "one" or r.closed:
                            raise AssertionError("status %d backend %s closed %s" %
                                                 (r.status, r.header("X-Backend"), r.closed))
                    except Exception as e:  # noqa: BLE001
                        with lock:
                            stats["fail"].append("client %d request %d at %.3f: %s: %s" % (
                                n, i, time.monotonic(), type(e).__name__, e))
                        return  # the connection is unusable: that is the failure
                    with lock:
                        stats["ok"] += 1
                        last_ok[n] = time.monotonic()
                    time.sleep(0.005)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        idle = Conn(d.port, timeout=5)  # an idle keep-alive connection across the reload
        self.addCleanup(idle.close)
        self.assertEqual(idle.request("GET", "/echo", "one.do").status, 200)
        time.sleep(0.5)

        services2 = services + [svc("two", b2)]
        routes2 = routes + [route("new.do", "two")]
        t_hup = time.monotonic()
        d.hup(make_config(d.port, d.tmp, services2, routes2))

        def new_route_ok():
            try:
                return request(d.port, "/echo", host="new.do", timeout=2).header("X-Backend") \
                    == "two"
            except OSError:
                return False
        ok = dsptest.wait_for(new_route_ok, 3.0, 0.02)
        dt = time.monotonic() - t_hup
        self.assertTrue(ok, "new route not served 3s after SIGHUP:\n" + d.log_tail())
        self.assertLess(dt, 1.0, "new route served only %.2fs after SIGHUP" % dt)
        time.sleep(0.5)  # the load runs on across the reload (checked below)
        gen = dsptest.generation(d)
        dsptest.wait_until(lambda: dsptest.workers_on_generation(d, gen), 5,
                           "every worker on generation %d" % gen)
        # Existing connections pick up the new routes for their next request.
        r = idle.request("GET", "/echo", "new.do")
        self.assertEqual(r.header("X-Backend"), "two",
                         "a keep-alive connection from before the reload must see new routes")

        # An invalid config: a syntax error on a known line.
        good = make_config(d.port, d.tmp, services2, routes2)
        bad = good + "this is not a setting\n"
        bad_line = len(good.splitlines()) + 1
        log_before = len(d.log())
        d.hup(bad)
        pat = re.compile(r"dispatcher\.conf:%d:" % bad_line)
        found = dsptest.wait_for(lambda: pat.search(d.log()[log_before:]), 3.0)
        self.assertTrue(found, "no 'dispatcher.conf:%d:' in the log after reloading a broken "
                        "config; log tail:\n%s" % (bad_line, d.log_tail()))

        # A semantic error: a route naming an unknown service, on its own line.
        routes3 = routes2 + [route("broken.do", "nosuchservice")]
        bad2 = make_config(d.port, d.tmp, services2, routes3)
        bad2_line = [i + 1 for i, line in enumerate(bad2.splitlines()) if "nosuchservice" in line]
        log_before = len(d.log())
        d.hup(bad2)
        pat2 = re.compile(r"dispatcher\.conf:%d:" % bad2_line[0])
        found = dsptest.wait_for(lambda: pat2.search(d.log()[log_before:]), 3.0)
        self.assertTrue(found, "no 'dispatcher.conf:%d:' in the log after a config with an "
                        "unknown service; log tail:\n%s" % (bad2_line[0], d.log_tail()))
        time.sleep(0.3)

        # The old config still serves, on new and old connections.
        self.assertEqual(request(d.port, "/echo", host="one.do").header("X-Backend"), "one")
        self.assertEqual(request(d.port, "/echo", host="new.do").header("X-Backend"), "two")
        self.assertEqual(request(d.port, "/echo", host="broken.do").status, 404)
        self.assertEqual(idle.request("GET", "/echo", "one.do").header("X-Backend"), "one")

        stop.set()
        for t in threads:
            t.join(10)
        self.assertEqual(stats["fail"], [], "keep-alive clients failed across reloads")
        self.assertGreater(stats["ok"], 50)
        for n in range(3):
            self.assertGreater(last_ok.get(n, 0), t_hup + 0.5,
                               "client %d made no progress after the reload" % n)
        self.assertEqual(sorted(d.worker_pids()), workers, "a reload must not restart workers")
        print("%d keep-alive requests across 3 reloads; new route served %.3fs after SIGHUP"
              % (stats["ok"], dt))


class UnpublishedReloadTest(dsptest.TestCase):

    @dsptest.timeout(90)
    def test_unpublished_reload_keeps_the_bound_listener_set(self):
        """A reload that validates but cannot be published (more backends than the runtime
        segment has slots) changes nothing of the listeners either: plain clients keep being
        served. The same listener change in a later good reload applies (to new connections)."""
        b = self.backend("one")
        services = [svc("one", b)]
        routes = [route("one.do", "one")]
        d = self.dispatcher(services=services, routes=routes)
        plain = 'listeners = ( { address = "127.0.0.1:%d"; } );' % d.port
        proxied = ('listeners = ( { address = "127.0.0.1:%d"; proxy_protocol = true; } );'
                   % d.port)
        change = "listener 127.0.0.1:%d: proxy_protocol on" % d.port

        def proxied_conf(svcs):
            text = make_config(d.port, d.tmp, svcs, routes)
            self.assertIn(plain, text)
            return text.replace(plain, proxied)

        def log_count(what):
            return d.log().count(what)

        # 67 x 1,000 backends: more than the 65,536 runtime slots.
        many = [svc("big%d" % k, *["127.0.0.%d:%d" % (k + 1, 1000 + i) for i in range(1000)])
                for k in range(67)]
        failures = log_count("runtime segment")
        d.hup(proxied_conf(services + many))
        self.assertTrue(dsptest.wait_for(lambda: log_count("runtime segment") > failures, 30),
                        "the oversized reload was not refused at publish:\n" + d.log_tail())
        self.assertEqual(log_count(change), 0)
        for _ in range(4):
            self.assertEqual(request(d.port, "/echo", host="one.do").status, 200)

        reloaded = log_count("configuration reloaded")
        d.hup(proxied_conf(services))
        self.assertTrue(dsptest.wait_for(lambda: log_count("configuration reloaded") > reloaded,
                                         15), d.log_tail())
        self.assertEqual(log_count(change), 1, d.log_tail())
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
                s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 1000 80\r\n"
                          b"GET /echo HTTP/1.1\r\nHost: one.do\r\nConnection: close\r\n\r\n")
                self.assertTrue(dsptest.read_to_eof(s).startswith(b"HTTP/1.1 200"))
