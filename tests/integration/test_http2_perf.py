"""HTTP/2 client side under load (worker/wk_h2.c, worker/wk_pool.c): a burst of streams wider
than the backend pool's floor (64 idle connections) reuses its backend connections instead of
closing and reopening them on every wave of requests."""

import shutil
import subprocess
import unittest

import dsptest
from dsptest import route, svc


class Http2PerfTest(dsptest.TestCase):
    def setUp(self):
        self.b = self.backend("h2perf")
        self.d = self.dispatcher(services=[svc("web", self.b)], routes=[route("h2.test", "web")])

    @unittest.skipUnless(shutil.which("h2load"), "nghttp2-client")
    def test_wide_burst_keeps_its_backend_connections(self):
        # 100 concurrent streams, 50 waves of them: at most 100 backend connections are ever
        # busy at once, so about that many should be opened in all (the old pool kept 64 idle
        # and reopened the rest on every wave: hundreds of connections more).
        p = subprocess.run(["h2load", "-n", "5000", "-c", "1", "-m", "100",
                            "-H", ":authority: h2.test", "http://127.0.0.1:%d/x" % self.d.port],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode()
        self.assertIn("5000 succeeded, 0 failed, 0 errored, 0 timeout", out, out)
        accepted = self.b.stats()["accepted"]
        self.assertLessEqual(accepted, 250, "backend connections opened for 5,000 requests")


if __name__ == "__main__":
    unittest.main()
