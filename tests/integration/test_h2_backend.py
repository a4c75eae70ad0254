"""HTTP/2 to backends (services with protocol = "h2" / "grpc", worker/wk_h2up.c).

Backends that really speak HTTP/2: h2_server.py (this folder) under /usr/bin/python3 (Debian
python3-h2), which can cap SETTINGS_MAX_CONCURRENT_STREAMS, send a GOAWAY mid-traffic, reset a
stream, send trailers, and serve TLS with a chosen ALPN protocol. Clients: curl in HTTP/1.1 and
with --http2-prior-knowledge, h2load for concurrency, raw sockets for the big transfers.
"""

import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import threading
import unittest

import dsptest
from dsptest import Conn, route, svc

SYS_PY = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "h2_server.py")
MIB = 1 << 20


def have_h2():
    if not os.path.exists(SYS_PY):
        return False
    return subprocess.run([SYS_PY, "-c", "import h2, hyperframe"], capture_output=True).returncode == 0


def have(tool):
    return shutil.which(tool) is not None


class H2Server:
    """h2_server.py on a free port; its request log is a JSON line per request."""

    def __init__(self, tmp, *args):
        self.port = dsptest.free_port()
        self.addr = "127.0.0.1:%d" % self.port
        self.logf = os.path.join(tmp, "h2be-%d.log" % self.port)
        self.proc = subprocess.Popen([SYS_PY, SERVER, str(self.port), "--log", self.logf] +
                                     list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dsptest._record_pid(self.proc.pid)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError("h2_server.py did not start: %r %r" % (line, self.proc.stderr.read()))

    def requests(self):
        if not os.path.exists(self.logf):
            return []
        with open(self.logf) as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def curl(*args, timeout=30):
    return subprocess.run(["curl", "-sS", "--max-time", str(timeout - 5)] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)


def curl_head_body(*args):
    """(status, {lower-case header: value}, body) of a curl -i call."""
    p = curl("-i", *args)
    raw = p.stdout
    heads = []
    while True:  # skip 100-continue and the like
        head, _, raw = raw.partition(b"\r\n\r\n")
        heads.append(head)
        if not re.match(rb"HTTP/\S+ 1\d\d", head):
            break
    lines = heads[-1].decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise AssertionError("no response from curl: %r %r" % (p.stdout[:200], p.stderr[:300]))
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, raw


@unittest.skipUnless(have_h2() and have("curl"), "python3-h2 under /usr/bin/python3, curl")
class H2BackendTest(dsptest.TestCase):
    def start(self, servers, workers=1, extra_services=(), limits=None):
        """One dispatcher with a service per (name, H2Server, opts), host <name>.h2."""
        services, routes = [], []
        for name, srv, opts in servers:
            o = {"protocol": "h2", "retries": 1}
            o.update(opts)
            addrs = o.pop("addrs", None) or [o.pop("addr", None)]
            o.pop("addr", None)
            services.append(svc(name, *([srv.addr] if srv is not None else addrs), **o))
            routes.append(route(name + ".h2", name))
        services += list(extra_services)
        self.d = self.dispatcher(services=services, routes=routes, workers=workers, limits=limits)

    def server(self, *args):
        s = H2Server(self.tmp(), *args)
        self.addCleanup(s.stop)
        return s

    def tmp(self):
        if not hasattr(self, "_tmp"):
            import tempfile
            self._tmp = tempfile.mkdtemp(prefix="h2be-")
            dsptest._record_tmp(self._tmp)
        return self._tmp

    def url(self, host, path):
        return "http://%s:%d%s" % (host, self.d.port, path)

    def res(self, host):
        return ["--resolve", "%s:%d:127.0.0.1" % (host, self.d.port)]

    def get(self, host, path, *args, h2=False):
        extra = ["--http2-prior-knowledge"] if h2 else []
        return curl_head_body(*(extra + self.res(host) + list(args) + [self.url(host, path)]))

    # -------------------------------------------------------------------------------------------
    def test_requests_both_client_protocols(self):
        be = self.server()
        self.start([("web", be, {})])
        for h2 in (False, True):
            # A GET: the head translated (pseudo-fields from the HTTP/1 head, hop-by-hop gone,
            # X-Forwarded-*, TE: trailers kept), the connection reused.
            st, hd, body = self.get("web.h2", "/echo?len", "-H", "Connection: keep-alive, x-hop",
                                    "-H", "X-Hop: 1", "-H", "TE: trailers", "-H", "Upgrade: foo",
                                    h2=h2)
            self.assertEqual(st, 200, body)
            got = json.loads(hd["x-headers"])
            self.assertEqual(got[":method"], "GET")
            self.assertEqual(got[":scheme"], "http")
            self.assertEqual(got[":path"], "/echo?len")
            self.assertEqual(got[":authority"], "web.h2:%d" % self.d.port)
            self.assertEqual(got["x-forwarded-proto"], "http")
            self.assertEqual(got["te"], "trailers")
            for hop in ("connection", "upgrade", "host", "keep-alive") + (() if h2 else ("x-hop",)):
                self.assertNotIn(hop, got)  # (over HTTP/2, curl drops Connection: x-hop stays)
            self.assertIn("x-request-id", hd)
            # Bodies with Content-Length, chunked (HTTP/1.1) or without length (HTTP/2).
            data = os.urandom(300000)
            path = os.path.join(self.d.tmp, "b.bin")
            with open(path, "wb") as f:
                f.write(data)
            sha = hashlib.sha256(data).hexdigest()
            for how in (["--data-binary", "@" + path], ["-T", path, "-X", "POST"]):
                st, hd, body = self.get("web.h2", "/echo", *how, h2=h2)
                self.assertEqual(st, 200)
                self.assertEqual(hd["x-body-sha"], sha)
                self.assertEqual(hashlib.sha256(body).hexdigest(), sha, "echoed body differs")
                if not h2:
                    self.assertEqual(hd.get("transfer-encoding"), "chunked")  # no length given
            # HEAD: no body; a response with a length.
            st, hd, body = self.get("web.h2", "/big?n=5000", "-I", h2=h2)
            self.assertEqual((st, hd["content-length"], body), (200, "5000", b""))
            st, hd, body = self.get("web.h2", "/big?n=5000", h2=h2)
            self.assertEqual((st, len(body)), (200, 5000))
            # Trailers: in the last chunk for HTTP/1.1, a trailing HEADERS frame for HTTP/2.
            p = curl("--raw", "-i", *(["--http2-prior-knowledge"] if h2 else []),
                     *self.res("web.h2"), self.url("web.h2", "/trailers"))
            out = p.stdout.decode("latin-1")
            self.assertIn("grpc-status: 0", out)
            self.assertIn("x-trailer: yes", out)
            head = out.split("\r\n\r\n", 1)[0]
            self.assertNotIn("grpc-status", head, "trailers must not become head fields")
            # An interim 103 goes on before the final head (a raw look: curl shows both heads).
            p = curl("-i", *(["--http2-prior-knowledge"] if h2 else []), *self.res("web.h2"),
                     self.url("web.h2", "/early"))
            out = p.stdout.decode("latin-1")
            self.assertRegex(out, r"^HTTP/\S+ 103[^\r]*\r\nlink: </a.css>; rel=preload\r\n")
            self.assertIn(" 200", out.split("\r\n\r\n")[1].split("\r\n")[0])
            self.assertTrue(out.endswith("after hints"), out[-200:])
            # A trailers-only answer (HEADERS with END_STREAM) stays one.
            st, hd, body = self.get("web.h2", "/trailers-only", h2=h2)
            self.assertEqual((st, hd["grpc-status"], body), (200, "5", b""))
            # A stream the backend resets: 502.
            st, hd, body = self.get("web.h2", "/rst", h2=h2)
            self.assertEqual(st, 502, body)
            self.assertEqual(json.loads(body)["error"], "Bad gateway")
        conns = {r["conn"] for r in be.requests()}
        self.assertEqual(len(conns), 1, "requests were not multiplexed on one pooled connection")
        inst = dsptest.admin_ask(self.d, "show instances")
        web = [s for s in inst["instances"] if s["name"] == "web"][0]
        self.assertEqual(web["protocol"], "h2")
        self.assertGreaterEqual(web["errors"], 2)  # the two 502s

    def test_chunked_request_trailers(self):
        # An HTTP/1.1 chunked request's trailer section ends the HTTP/2 stream as a trailing
        # HEADERS frame: allowed fields lower-cased, forbidden ones (framing, hop-by-hop) left out.
        be = self.server()
        self.start([("web", be, {})])
        import socket
        import time
        s = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        self.addCleanup(s.close)
        parts = [b"POST /echo HTTP/1.1\r\nHost: web.h2\r\nTransfer-Encoding: chunked\r\n"
                 b"TE: trailers\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n",
                 b"grpc-foo: 1\r\nContent-Length: 5\r\n", b"X-Checksum:  abc \r\n",
                 b"Connection: x\r\nTE: y\r\n\r\n"]
        for p in parts:
            s.sendall(p)
            time.sleep(0.05)  # (the section arrives in pieces: held until it ends)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])
        reqs = [r for r in be.requests() if r["path"] == "/echo"]
        self.assertEqual(len(reqs), 1, reqs)
        self.assertEqual(reqs[0]["body_len"], 11)
        got = [(str(k), str(v)) for k, v in reqs[0]["trailers"]]
        self.assertEqual(got, [("grpc-foo", "1"), ("x-checksum", "abc")])

    def test_max_concurrent_streams_and_goaway(self):
        one = self.server("--max-streams", "2")
        grace = self.server("--goaway-after", "7")
        harsh = self.server("--goaway-after", "10", "--goaway-harsh")
        self.start([("two", one, {}), ("grace", grace, {}), ("harsh", harsh, {"retries": 0})])
        if not have("h2load"):
            self.skipTest("h2load")
        for host, path, extra in (("two.h2", "/slow?ms=30", []), ("grace.h2", "/echo", ["-d", __file__]),
                                  ("grace.h2", "/slow?ms=5", []), ("harsh.h2", "/slow?ms=5", [])):
            p = subprocess.run(["h2load", "-n", "200", "-c", "2", "-m", "4"] + extra +
                               ["-H", ":authority: " + host, "http://127.0.0.1:%d%s" % (self.d.port, path)],
                               capture_output=True, timeout=60)
            out = p.stdout.decode()
            self.assertIn("200 succeeded, 0 failed", out, "%s%s: %s" % (host, path, out[-600:]))
            self.assertIn("status codes: 200 2xx", out, out[-600:])
        # The backend that takes 2 streams at a time got several connections.
        self.assertGreaterEqual(len({r["conn"] for r in one.requests()}), 4)  # 8 at once / 2
        # GOAWAY: connections were replaced; no request was lost or processed twice.
        for srv, n in ((grace, 400), (harsh, 200)):
            reqs = srv.requests()
            self.assertEqual(len(reqs), n)
            self.assertGreater(len({r["conn"] for r in reqs}), 5)
            ids = [r["headers"]["x-request-id"] for r in reqs]
            self.assertEqual(len(ids), len(set(ids)), "a request reached the backend twice")

    def test_large_bodies_bounded_memory(self):
        be = self.server()
        self.start([("big", be, {})], workers=1, limits={"h2_stream_window": 262144})
        for _ in range(3):
            self.assertEqual(self.get("big.h2", "/big?n=10")[0], 200)
        pid = self.d.worker_pids()[0]
        base = dsptest.rss_kib(pid)
        sampler = dsptest.RssSampler([pid])
        size = 48 * MIB
        # Down: 48 MiB without Content-Length (chunked to the HTTP/1.1 client).
        n = [0]
        with Conn(self.d.port, timeout=60) as c:
            r = c.request("GET", "/big?n=%d&nolen" % size, "big.h2",
                          sink=lambda b: n.__setitem__(0, n[0] + len(b)))
        self.assertEqual((r.status, n[0]), (200, size))
        # Up: 24 MiB with Content-Length, the echo's length checked (the body comes back).
        up = os.path.join(self.d.tmp, "up.bin")
        with open(up, "wb") as f:
            f.write(os.urandom(24 * MIB))
        p = curl("-o", "/dev/null", "-D", "-", "--data-binary", "@" + up, *self.res("big.h2"),
                 self.url("big.h2", "/echo?len"), timeout=60)
        self.assertIn(b"x-body-len: %d" % (24 * MIB), p.stdout)
        peak = sampler.stop()[pid]
        growth = peak - (base or 0)
        print("worker VmRSS KiB: idle %s, peak %s" % (base, peak))
        self.assertLess(growth, (64 if dsptest.SANITIZED else 12) * 1024,
                        "the worker buffered the bodies: RSS grew by %d KiB" % growth)

    def test_tls_alpn(self):
        tmp = self.tmp()
        cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        good = self.server("--tls", cert, key)
        h1only = self.server("--tls", cert, key, "--alpn", "http/1.1")
        health = {"path": "/health", "interval_ms": 100, "timeout_ms": 1000, "fall": 1, "rise": 1}
        self.start([("tls", good, {"tls": True, "ca": cert, "health": health}),
                    ("old", h1only, {"tls": True, "verify": False})])
        # The checks speak HTTP/2 over TLS too (ALPN h2).
        dsptest.wait_until(lambda: any(r["path"] == "/health" and r["headers"][":scheme"] == "https"
                                       for r in good.requests()), 5, "a TLS HTTP/2 health check")
        self.assertEqual(dsptest.backend_state(self.d, "tls", good.addr), "up")
        for h2 in (False, True):
            st, hd, body = self.get("tls.h2", "/echo?len", "-d", "x" * 1000, h2=h2)
            self.assertEqual((st, hd["x-body-len"]), (200, "1000"), body)
            self.assertEqual(json.loads(hd["x-headers"])[":scheme"], "https")
        st, hd, body = self.get("old.h2", "/")
        self.assertEqual(st, 502, body)
        dsptest.wait_until(lambda: "did not select ALPN h2" in self.d.log(), 5, "the ALPN log line")

    def test_health_checks_in_h2(self):
        good = self.server()
        plain = self.backend("h1")  # an HTTP/1.1 backend: no answer to an HTTP/2 check
        health = {"path": "/health", "interval_ms": 100, "timeout_ms": 500, "fall": 1, "rise": 1}
        self.start([("ok", good, {"health": health}),
                    ("old", None, {"health": health, "addr": plain.addr})])
        dsptest.wait_until(lambda: any(r["path"] == "/health" for r in good.requests()), 5,
                           "an HTTP/2 health check reached the h2 backend")
        dsptest.wait_until(lambda: dsptest.backend_state(self.d, "old", plain.addr) == "down", 5,
                           "the HTTP/1-only backend marked down")
        self.assertEqual(dsptest.backend_state(self.d, "ok", good.addr), "up")
        hc = [r for r in good.requests() if r["path"] == "/health"][0]
        self.assertEqual(hc["method"], "GET")
        self.assertEqual(hc["headers"][":scheme"], "http")
        self.assertEqual(self.get("old.h2", "/")[0], 503)  # no healthy backend
        self.assertEqual(self.get("ok.h2", "/echo?len")[0], 200)

    def test_refused_killed_and_retried(self):
        good = self.server()
        victim = self.server()
        dead = "127.0.0.1:%d" % dsptest.free_port()
        self.start([("pair", None, {"addrs": [dead, good.addr], "retries": 1}),
                    ("dead", None, {"addr": dead, "retries": 0}),
                    ("victim", victim, {"retries": 0})])
        for _ in range(6):
            self.assertEqual(self.get("pair.h2", "/echo?len")[0], 200)  # refused -> retried
        st, hd, body = self.get("dead.h2", "/")
        self.assertEqual(st, 502, body)
        self.assertIn("refused the connection", json.loads(body)["message"])
        # A backend killed while streams are open: their clients are answered 502 (nothing of
        # the response came), the next request opens a new connection once it is back.
        results = []

        def slow():
            results.append(self.get("victim.h2", "/slow?ms=3000")[0])

        threads = [threading.Thread(target=slow) for _ in range(3)]
        for t in threads:
            t.start()
        dsptest.wait_until(lambda: len([r for r in victim.requests() if r["path"].startswith("/slow")]) == 3,
                           5, "three slow streams at the backend")
        victim.stop()
        for t in threads:
            t.join(20)
        self.assertEqual(results, [502, 502, 502])
        st, hd, body = self.get("victim.h2", "/")
        self.assertEqual(st, 502, body)  # refused now

    def test_protocol_config(self):
        d = dsptest.Dispatcher(workers=1)
        d.write_config(dsptest.make_config(d.port, d.tmp, [svc("x", "127.0.0.1:9", protocol="h3")],
                                           [route("*", "x")], 1))
        p = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf],
                           capture_output=True, timeout=20)
        err = (p.stdout + p.stderr).decode()
        self.assertNotEqual(p.returncode, 0)
        self.assertRegex(err, r"dispatcher\.conf:\d+: services\[0\]\.protocol \"h3\" must be "
                              r"http1, h2 or grpc")


if __name__ == "__main__":
    unittest.main()
