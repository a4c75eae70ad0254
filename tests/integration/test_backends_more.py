"""Backends as operators write them (issue 16): unix-socket backends (`unix:/path`) and mTLS to
backends (a service's client_cert / client_key).

Unix-socket backends are served by a small Python HTTP/1.1 server on a unix socket (UnixHTTP):
it answers every request 200 with a JSON body naming the request's path, its headers and the
number of the connection it came on, so that a test sees what the dispatcher forwarded and
whether it reused its upstream connection."""

import json
import os
import socket
import socketserver
import subprocess
import threading

import dsptest
from dsptest import MASTER, Conn, admin_ask, route, svc


class UnixHTTP:
    """HTTP/1.1 keep-alive server on unix socket <path>: 200 with JSON {path, conn, headers}."""

    def __init__(self, path):
        self.path = path
        self.conns = 0
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                with outer.lock:
                    outer.conns += 1
                    conn = outer.conns
                while True:
                    line = self.rfile.readline(65536)
                    if not line:
                        return
                    parts = line.decode("latin-1").split()
                    if len(parts) != 3:
                        return
                    headers = {}
                    while True:
                        h = self.rfile.readline(65536)
                        if h in (b"\r\n", b"\n", b""):
                            break
                        k, _, v = h.decode("latin-1").partition(":")
                        headers[k.strip().lower()] = v.strip()
                    n = int(headers.get("content-length", "0") or 0)
                    if n:
                        self.rfile.read(n)
                    with outer.lock:
                        outer.requests.append((parts[1], headers, conn))
                    body = json.dumps({"path": parts[1], "conn": conn,
                                       "headers": headers}).encode()
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    self.wfile.flush()

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.srv = Server(path, Handler)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def paths(self):
        with self.lock:
            return [r[0] for r in self.requests]

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def check_config(d):
    p = subprocess.run([MASTER, "-t", "-c", d.conf], capture_output=True, timeout=20, cwd=d.tmp)
    return p.returncode, p.stderr.decode(errors="replace")


class UnixBackendTest(dsptest.TestCase):
    def unix_server(self, path):
        s = UnixHTTP(path)
        self.addCleanup(s.stop)
        return s

    def test_proxied_pooled_health_checked_and_listed(self):
        d = self.dispatcher([], [], start=False)
        sock = os.path.join(d.tmp, "app.sock")
        be = self.unix_server(sock)
        addr = "unix:" + sock
        d.write_config(dsptest.make_config(
            d.port, d.tmp,
            [svc("app", addr, health={"path": "/hc", "interval_ms": 100, "rise": 1})],
            [route("*", "app")]))
        self.start_dispatcher(d)
        with Conn(d.port) as c:
            r1 = c.request("GET", "/one", host="app.do", headers=[("X-Forwarded-For", "6.6.6.6")])
            r2 = c.request("GET", "/two", host="app.do")
        self.assertEqual((r1.status, r2.status), (200, 200), r1.body)
        j1, j2 = r1.json(), r2.json()
        self.assertEqual((j1["path"], j2["path"]), ("/one", "/two"))
        # X-Forwarded-* describe the client as for any backend.
        self.assertEqual(j1["headers"].get("x-forwarded-for"), "127.0.0.1")
        self.assertEqual(j1["headers"].get("x-real-ip"), "127.0.0.1")
        self.assertEqual(j1["headers"].get("host"), "app.do")
        # The second request reused the pooled upstream connection of the first.
        self.assertEqual(j1["conn"], j2["conn"], "upstream connection not reused")
        dsptest.wait_until(lambda: "/hc" in be.paths(), 5, "a health check over the socket")
        hc = [r for r in be.requests if r[0] == "/hc"][0]
        self.assertEqual(hc[1].get("host"), "localhost")
        inst = admin_ask(d, "show instances")["instances"]
        app = [s for s in inst if s["name"] == "app"][0]
        self.assertEqual([b["address"] for b in app["backends"]], [addr])
        self.assertEqual(dsptest.backend_state(d, "app", addr), "up")

    def test_socket_may_appear_later(self):
        d = self.dispatcher([], [], start=False)
        sock = os.path.join(d.tmp, "later.sock")
        d.write_config(dsptest.make_config(d.port, d.tmp, [svc("app", "unix:" + sock)],
                                           [route("*", "app")]))
        rc, err = check_config(d)
        self.assertEqual(rc, 0, err)
        self.start_dispatcher(d)
        r = dsptest.request(d.port, "/", host="app.do")
        self.assertIn(r.status, (502, 503), r.body)
        self.unix_server(sock)
        dsptest.wait_until(lambda: dsptest.request(d.port, "/x", host="app.do").status == 200, 15,
                           "served once the socket exists")

    def test_bad_paths_refused_with_file_line(self):
        d = self.dispatcher([], [], start=False)
        cases = [("unix:relative/app.sock", "unix:/absolute/path"),
                 ("unix:", "unix:/absolute/path"),
                 ("unix:/" + "a" * 120, "longer than the 107 allowed"),
                 ("unix:/tmp/a\tb", "control character")]
        for addr, msg in cases:
            text = dsptest.make_config(d.port, d.tmp, [svc("app", addr)], [route("*", "app")])
            d.write_config(text)
            line = [i for i, l in enumerate(text.split("\n"), 1) if 'name = "app"' in l][0]
            rc, err = check_config(d)
            self.assertEqual(rc, 1, (addr, err))
            self.assertIn("%s:%d: " % (d.conf, line), err, addr)
            self.assertIn(msg, err, addr)

    def test_tls_verify_needs_sni(self):
        d = self.dispatcher([], [], start=False)
        d.write_config(dsptest.make_config(d.port, d.tmp,
                                           [svc("app", "unix:/run/x.sock", tls=True)],
                                           [route("*", "app")]))
        rc, err = check_config(d)
        self.assertEqual(rc, 1, err)
        self.assertIn("set services[0].sni", err)
