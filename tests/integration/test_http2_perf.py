"""HTTP/2 client side under load (worker/wk_h2.c, worker/wk_pool.c): a burst of streams wider
than the backend pool's floor (64 idle connections) reuses its backend connections instead of
closing and reopening them on every wave of requests; an idle connection that served many
requests holds no more memory than one that served one (no closed streams kept, X-Request-ID
never entered in the HPACK table), and gives its frame buffer's pages back after a second."""

import os
import re
import shutil
import subprocess
import unittest

import dsptest
from dsptest import route, svc

SYS_PY = "/usr/bin/python3"
IDLEMEM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench",
                       "idlemem.py")


class Http2PerfTest(dsptest.TestCase):
    def setUp(self):
        self.b = self.backend("h2perf")

    @unittest.skipUnless(shutil.which("h2load"), "nghttp2-client")
    def test_wide_burst_keeps_its_backend_connections(self):
        self.d = self.dispatcher(services=[svc("web", self.b)], routes=[route("h2.test", "web")])
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


    @unittest.skipUnless(os.path.exists(SYS_PY), "python3-h2")
    def test_idle_connections_after_many_requests_stay_small(self):
        d = self.dispatcher(services=[svc("web", self.b)], routes=[route("h2.test", "web")],
                            workers=1)
        wpid = d.worker_pids()[0]
        p = subprocess.Popen([SYS_PY, "-c", MANY_CLIENT, str(d.port), "40", "60"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "warm")
            rss0 = dsptest.rss_kib(wpid)
            p.stdin.write("go\n")
            p.stdin.flush()
            ready = p.stdout.readline().split()
            self.assertEqual(ready[:1], ["ready"], ready)
            # Every response's X-Request-ID came as a never-indexed literal.
            self.assertEqual(int(ready[1]), 40 * 60)
            p.stdin.write("idle\n")
            p.stdin.flush()
            self.assertEqual(p.stdout.readline().strip(), "acked")
            # Under 1 KiB each (bench/idlemem.py) once the idle session is deleted (worker/
            # wk_h2idle.c) and the heap's pages trimmed; ~11 KiB with nghttp2's session kept
            # (its stream map and HPACK tables; the frame buffer's pages given back), ~21 KiB
            # with the frame buffer kept, ~50 KiB when each also kept up to 128 closed streams
            # and an HPACK table full of request ids. (The sanitizer build's RSS includes shadow
            # memory and quarantine.)
            if not dsptest.SANITIZED:
                dsptest.wait_until(lambda: (dsptest.rss_kib(wpid) - rss0) / 40.0 < 5, 5,
                                   "under 5 KiB of worker RSS per idle HTTP/2 connection")
        finally:
            p.stdin.close()
            p.wait(timeout=30)

    @unittest.skipUnless(os.path.exists(SYS_PY), "python3-h2")
    def test_idle_http2_connection_costs_at_most_twice_an_http1_one(self):
        # Issue 14's target, measured by bench/idlemem.py (its own master, one worker): the
        # worker's RSS growth for 600 connections idle after one request each, HTTP/1.1 then
        # HTTP/2. glibc's tcache is off in that master so that the figures are the objects kept
        # per connection (~336 B and ~530 B) and not the fixed few pages that freed blocks cached
        # per thread can pin. Before common/slab.c an idle HTTP/2 connection cost ~5.7 KiB, 17x.
        if dsptest.SANITIZED:
            self.skipTest("the sanitizer build's RSS includes shadow memory and quarantine")
        env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.tcache_count=0")
        p = subprocess.run([SYS_PY, IDLEMEM, "--master", dsptest.MASTER,
                            "--backend", dsptest.TESTBACKEND, "--conns", "600"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout)
        per = {}
        for line in p.stdout.splitlines():
            m = re.search(r": (h1|h2) idle connections: (-?\d+) bytes RSS", line)
            if m:
                per[m.group(1)] = int(m.group(2))
        self.assertEqual(sorted(per), ["h1", "h2"], p.stdout)
        # An HTTP/1.1 connection keeps its client struct: a figure near zero would mean the
        # measurement saw nothing and the ratio below would prove nothing.
        self.assertGreater(per["h1"], 150, p.stdout)
        self.assertLessEqual(per["h2"], 2 * per["h1"], p.stdout)


# Opens N connections, makes K concurrent requests on each, keeps them open and idle: first a
# warm-up round (closed), then "warm", a line on stdin, the measured round, "ready COUNT" (how many
# X-Request-IDs arrived never-indexed), a line or EOF on stdin, and the end.
MANY_CLIENT = r"""
import socket, sys, h2.connection, h2.config, h2.events
from hpack import NeverIndexedHeaderTuple
port, n, k = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def conn():
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    for sid in range(1, 2 * k, 2):
        c.send_headers(sid, [(":method", "GET"), (":path", "/x"), (":scheme", "http"),
                             (":authority", "h2.test"), ("user-agent", "perf-test")],
                       end_stream=True)
    s.sendall(c.data_to_send())
    ended, never = 0, 0
    while ended < k:
        data = s.recv(65536)
        if not data:
            raise SystemExit("closed")
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                for h in ev.headers:
                    if h[0] == b"x-request-id" and isinstance(h, NeverIndexedHeaderTuple):
                        never += 1
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended += 1
        s.sendall(c.data_to_send())
    return s, never, c
for s, _, _ in [conn() for _ in range(10)]:
    s.close()
print("warm", flush=True)
sys.stdin.readline()
held = [conn() for _ in range(n)]
print("ready %d" % sum(nv for _, nv, _ in held), flush=True)
sys.stdin.readline()
# Idle, as a real client: what the server sends is read and answered (the SETTINGS that an
# idle connection gets is acknowledged) for 2.5 s.
import select, time
socks = {s: c for s, _, c in held}
end = time.monotonic() + 2.5
while time.monotonic() < end:
    for s in select.select(list(socks), [], [], 0.1)[0]:
        socks[s].receive_data(s.recv(65536))
        s.sendall(socks[s].data_to_send())
print("acked", flush=True)
sys.stdin.readline()
"""

if __name__ == "__main__":
    unittest.main()
