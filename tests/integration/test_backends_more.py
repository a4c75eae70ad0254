"""Backends as operators write them (issue 16): unix-socket backends (`unix:/path`) and mTLS to
backends (a service's client_cert / client_key).

Unix-socket backends are served by a small Python HTTP/1.1 server on a unix socket (UnixHTTP):
it answers every request 200 with a JSON body naming the request's path, its headers and the
number of the connection it came on, so that a test sees what the dispatcher forwarded and
whether it reused its upstream connection."""

import http.server
import json
import os
import socketserver
import ssl
import subprocess
import threading

import dsptest
from dsptest import MASTER, Conn, admin_ask, route, svc
from test_tls_clients import issue, make_ca


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


class MtlsBackend:
    """HTTPS/1.1 keep-alive origin that requires a client certificate from <ca> (CERT_REQUIRED);
    GET answers JSON {"path", "peer"}: the subject of the certificate the client presented."""

    def __init__(self, cert, key, ca):
        self.paths = []
        self.lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                pc = self.connection.getpeercert() or {}
                peer = ",".join("%s=%s" % kv for rdn in pc.get("subject", ()) for kv in rdn)
                with backend.lock:
                    backend.paths.append(self.path)
                body = json.dumps({"path": self.path, "peer": peer}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.addr = "127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class MtlsBackendTest(dsptest.TestCase):
    def setUp(self):
        self.d = dsptest.Dispatcher()
        t = self.d.tmp
        self.ca = make_ca(t, "test-ca")
        self.server = issue(t, self.ca, "backend", "/CN=backend.test", san="DNS:backend.test")
        self.client = issue(t, self.ca, "client", "/CN=dispatcher-client/O=edge",
                            usage="clientAuth")
        self.other_ca = make_ca(t, "other-ca")
        self.stranger = issue(t, self.other_ca, "stranger", "/CN=stranger", usage="clientAuth")
        self.be = MtlsBackend(self.server[0], self.server[1], self.ca[0])
        self.addCleanup(self.be.stop)

    def config(self, **opts):
        o = {"tls": True, "ca": self.ca[0], "sni": "backend.test"}
        o.update(opts)
        return dsptest.make_config(self.d.port, self.d.tmp, [svc("api", self.be.addr, **o)],
                                   [route("*", "api")])

    def test_client_certificate_presented_to_backend_and_health_checks(self):
        self.d.write_config(self.config(client_cert=self.client[0], client_key=self.client[1],
                                        health={"path": "/hc", "interval_ms": 100, "rise": 1}))
        self.start_dispatcher(self.d)
        with Conn(self.d.port) as c:
            for i in range(3):
                r = c.request("GET", "/p%d" % i, host="api.do")
                self.assertEqual(r.status, 200, r.body)
                self.assertEqual(r.json()["peer"], "commonName=dispatcher-client,"
                                                   "organizationName=edge")
        dsptest.wait_until(lambda: "/hc" in self.be.paths, 5, "an mTLS health check")
        self.assertEqual(dsptest.backend_state(self.d, "api", self.be.addr), "up")

    def test_without_or_with_a_foreign_certificate_refused(self):
        self.d.write_config(self.config())
        self.start_dispatcher(self.d)
        r = dsptest.request(self.d.port, "/", host="api.do")
        self.assertEqual(r.status, 502, r.body)
        # A certificate the backend's CA did not issue: refused as well. Then the right one,
        # by reload: served (the client context is rebuilt, not reused).
        gen = dsptest.generation(self.d)
        self.d.hup(self.config(client_cert=self.stranger[0], client_key=self.stranger[1]))
        dsptest.wait_until(lambda: dsptest.workers_on_generation(self.d, gen + 1), 10, "reload")
        self.assertEqual(dsptest.request(self.d.port, "/", host="api.do").status, 502)
        self.d.hup(self.config(client_cert=self.client[0], client_key=self.client[1]))
        dsptest.wait_until(lambda: dsptest.workers_on_generation(self.d, gen + 2), 10, "reload")
        dsptest.wait_until(lambda: dsptest.request(self.d.port, "/", host="api.do").status == 200,
                           10, "served with the right certificate")

    def test_bad_settings_refused_with_file_line(self):
        missing = os.path.join(self.d.tmp, "nope.pem")
        cases = [({"client_cert": self.client[0], "client_key": self.stranger[1]},
                  "services[0].client_key: the certificate", "do not match"),
                 ({"client_cert": self.client[0]}, "services[0].client_cert needs", "client_key"),
                 ({"client_key": self.client[1]}, "services[0].client_key needs", "client_cert"),
                 ({"client_cert": missing, "client_key": self.client[1]},
                  "services[0].client_cert:", "nope.pem"),
                 ({"client_cert": self.client[0], "client_key": missing},
                  "services[0].client_key:", "nope.pem"),
                 ({"tls": False, "ca": None, "sni": None, "client_cert": self.client[0],
                   "client_key": self.client[1]},
                  "services[0].client_cert applies to TLS backends only", "add tls = true")]
        for opts, msg, msg2 in cases:
            o = {k: v for k, v in opts.items() if v is not None}
            text = self.config(**o)
            for k in ("ca", "sni"):
                if k in opts and opts[k] is None:
                    text = text.replace(' %s = "%s";' % (k, self.ca[0] if k == "ca"
                                                         else "backend.test"), "")
            self.d.write_config(text)
            line = [i for i, l in enumerate(text.split("\n"), 1) if 'name = "api"' in l][0]
            rc, err = check_config(self.d)
            self.assertEqual(rc, 1, (opts, err))
            self.assertIn("%s:%d: " % (self.d.conf, line), err, opts)
            self.assertIn(msg, err, opts)
            self.assertIn(msg2, err, opts)


class UnixBackendRedisTest(dsptest.TestCase):
    def test_unix_backend_from_redis(self):
        import shutil
        import tempfile
        from test_redis import Redis, add_route, add_service, publish, redis_block, wait_log

        t = tempfile.mkdtemp(prefix="dsp-it-redis-")
        dsptest._record_tmp(t)
        self.addCleanup(shutil.rmtree, t, True)
        r = Redis(t).start()
        self.addCleanup(r.stop)
        gw = self.backend("gw")
        d = self.dispatcher([svc("gw", gw)], [route("gw.do", "gw")], extra=redis_block(r))
        sock = os.path.join(d.tmp, "redis-app.sock")
        be = UnixHTTP(sock)
        self.addCleanup(be.stop)
        self.assertTrue(wait_log(d, r"redis 127\.0\.0\.1:\d+: connected"), d.log_tail())
        add_service(r, "production", "app", ["unix:%s=2" % sock])
        add_route(r, "production", "app", host="app.do", service="app")
        publish(r, "production")
        dsptest.wait_until(lambda: dsptest.request(d.port, "/r", host="app.do").status == 200,
                           10, "the Redis service on a unix socket served")
        self.assertIn("/r", be.paths())
        self.assertEqual(dsptest.backend_state(d, "app", "unix:" + sock), "up")
        # A relative path in Redis is refused as a whole, with the key named.
        add_service(r, "production", "bad", ["unix:run/x.sock"])
        publish(r, "production")
        dsptest.wait_until(lambda: "unix:/absolute/path" in d.log(), 10, "refused")
        self.assertEqual(dsptest.request(d.port, "/r", host="app.do").status, 200)
