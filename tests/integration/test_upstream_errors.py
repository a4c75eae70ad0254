"""Backend failures become the JSON errors of SPEC "Errors": 502 for refused, early close or
garbage, 504 past response_timeout_ms."""

import time

import dsptest
from dsptest import Conn, free_port, request, route, svc


class UpstreamErrorTest(dsptest.TestCase):

    def setUp(self):
        self.b = self.backend("up")
        self.dead = "127.0.0.1:%d" % free_port()  # nothing listens there
        self.d = self.dispatcher(
            services=[svc("up", self.b, retries=0, response_timeout_ms=500),
                      # The same backend, for the tests where a 504 would hide the answer: a
                      # loaded machine may take 500 ms to close or to send garbage.
                      svc("early", self.b, retries=0, response_timeout_ms=10000),
                      svc("dead", self.dead, retries=0, connect_timeout_ms=1000)],
            routes=[route("dead.do", "dead"), route("early.do", "early"), route("*", "up")])

    def check_error(self, r, status, error):
        j = self.assertJsonError(r, status, error)
        self.assertIn("message", j)
        self.assertTrue(r.header("X-Request-ID"), "error responses carry X-Request-ID")
        return j

    def test_backend_closes_early_502(self):
        with Conn(self.d.port) as c:
            r = c.request("GET", "/close-early", "early.do")
            self.check_error(r, 502, "Bad gateway")
            if not r.closed:
                # A 502 does not have to end the client connection; if it stays, it works.
                self.assertEqual(c.request("GET", "/echo", "early.do").status, 200)

    def test_backend_garbage_502(self):
        r = request(self.d.port, "/garbage", host="early.do")
        self.check_error(r, 502, "Bad gateway")

    def test_slow_backend_504(self):
        t0 = time.monotonic()
        r = request(self.d.port, "/sleep?ms=3000", host="up.do", timeout=10)
        dt = time.monotonic() - t0
        self.check_error(r, 504, "Gateway timeout")
        self.assertGreater(dt, 0.4, "504 after %.2fs, before response_timeout_ms=500" % dt)
        self.assertLess(dt, 2.0, "504 after %.2fs with response_timeout_ms=500" % dt)
        # A request under the limit is fine.
        self.assertEqual(request(self.d.port, "/sleep?ms=100", host="up.do").status, 200)

    def test_connection_refused_502(self):
        t0 = time.monotonic()
        r = request(self.d.port, "/echo", host="dead.do")
        self.check_error(r, 502, "Bad gateway")
        self.assertLess(time.monotonic() - t0, 2.0)
        # The other service is unaffected.
        self.assertEqual(request(self.d.port, "/echo", host="up.do").header("X-Backend"), "up")
