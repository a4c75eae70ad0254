"""Issue 15, middlewares: the chain framework (top-level `middlewares`, route lists, order, the
access log's "middleware" field, per-middleware metrics, FILE:LINE errors) and the simple types
(headers, static, ip_allow, redirect_https, strip_prefix, max_body, cors), over HTTP/1.1 and
HTTP/2, with one master for many cases."""

import json
import os
import re
import socket
import subprocess
import threading
import time

import dsptest
from dsptest import Conn, request, route, svc


MIDDLEWARES = """middlewares = (
  { name = "secure"; type = "headers"; request_set = ["X-Env: prod", "X-Two: a b"];
    request_remove = ["X-Debug"]; response_set = ["X-Frame-Options: DENY"];
    response_remove = ["X-Backend"]; },
  { name = "maint"; type = "static"; status = 503; content_type = "text/html";
    body_file = "maint.html"; },
  { name = "hello"; type = "static"; body = "hi\\n"; },
  { name = "office"; type = "ip_allow"; cidrs = ["10.0.0.0/8", "fd00::/8"]; },
  { name = "local"; type = "ip_allow"; cidrs = ["127.0.0.0/8", "::1/128"]; },
  { name = "to-https"; type = "redirect_https"; },
  { name = "to-https-301"; type = "redirect_https"; status = 301; },
  { name = "strip-api"; type = "strip_prefix"; prefix = "/api/"; },
  { name = "small"; type = "max_body"; bytes = 100; },
  { name = "api-cors"; type = "cors"; origins = ["https://app.example.com"];
    methods = ["GET", "POST"]; headers = ["Content-Type", "Authorization"];
    credentials = true; max_age_s = 600; },
  { name = "any-cors"; type = "cors"; origins = ["*"]; }
);
trusted_proxies = [ "127.0.0.2/32" ];
"""

ROUTES = [
    ("h.do", ["secure"]),
    ("maint.do", ["secure", "maint"]),      # headers pass, static answers
    ("hello.do", ["hello", "secure"]),      # answered first: secure never runs
    ("office.do", ["office"]),
    ("local.do", ["local", "secure"]),
    ("r.do", ["to-https"]),
    ("r301.do", ["to-https-301"]),
    ("s.do", ["strip-api", "secure"]),
    ("b.do", ["small"]),
    ("c.do", ["api-cors"]),
    ("any.do", ["any-cors"]),
    ("co.do", ["api-cors", "secure", "office"]),  # office's 403 carries cors and secure fields
]


def curl(port, host, path="/", args=(), h2=False):
    cmd = ["curl", "-s", "--max-time", "10", "-D", "-", "-H", "Host: " + host] + list(args)
    if h2:
        cmd.append("--http2-prior-knowledge")
    cmd.append("http://127.0.0.1:%d%s" % (port, path))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    hdrs = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdrs.setdefault(k.strip().lower(), []).append(v.strip())
    return status, hdrs, body


def echo_headers(r):
    return {k.lower(): v for k, v in r.json()["headers"]}


class MiddlewareTests(dsptest.TestCase):

    def start(self, workers=1, http_port=None):
        self.be = self.backend("b1")
        d = dsptest.Dispatcher(workers=workers)
        with open(os.path.join(d.tmp, "maint.html"), "w") as f:
            f.write("<h1>Down for maintenance</h1>\n")
        routes = [route(h, "app", middlewares=m) for h, m in ROUTES] + [
            route("dead.do", "dead", middlewares=["api-cors", "secure"]), route("*", "app")]
        text = dsptest.make_config(d.port, d.tmp, [svc("app", self.be),
                                                   svc("dead", "127.0.0.1:1", retries=0)], routes,
                                   workers=workers, extra=MIDDLEWARES)
        if http_port is not None:
            sock = os.path.join(d.tmp, "admin.sock")
            text = text.replace('admin = { socket = "%s"; };' % sock,
                                'admin = { socket = "%s"; http = "127.0.0.1:%d"; };'
                                % (sock, http_port))
        d.write_config(text)
        self.start_dispatcher(d)
        return d

    def backend_requests(self):
        return self.be.stats().get("requests", 0)

    def access_lines(self, d, n):
        path = os.path.join(d.tmp, "access.log")

        def lines():
            try:
                with open(path) as f:
                    return [json.loads(l) for l in f if l.strip()]
            except OSError:
                return []
        dsptest.wait_until(lambda: len(lines()) >= n, 5, "%d access-log lines" % n)
        return lines()

    def test_simple_types(self):
        d = self.start()
        p = d.port

        # headers: request fields set/removed upstream, response fields set/removed.
        r = request(p, "/x", host="h.do", headers=[("X-Debug", "1"), ("X-Env", "dev")])
        self.assertEqual(r.status, 200)
        h = echo_headers(r)
        self.assertEqual(h.get("x-env"), "prod")
        self.assertEqual(h.get("x-two"), "a b")
        self.assertNotIn("x-debug", h)
        self.assertEqual(r.header("X-Frame-Options"), "DENY")
        self.assertIsNone(r.header("X-Backend"))
        # A route without middlewares is untouched.
        r = request(p, "/x", host="plain.do", headers=[("X-Debug", "1")])
        self.assertEqual(echo_headers(r).get("x-debug"), "1")
        self.assertEqual(r.header("X-Backend"), "b1")
        self.assertIsNone(r.header("X-Frame-Options"))

        # static: answered without the backend, operator's file and content type.
        before = self.backend_requests()
        r = request(p, "/any", host="maint.do")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.header("Content-Type"), "text/html")
        self.assertEqual(r.body, b"<h1>Down for maintenance</h1>\n")
        self.assertIsNotNone(r.header("X-Request-ID"))
        r = request(p, "/", host="hello.do")
        self.assertEqual((r.status, r.body), (200, b"hi\n"))
        self.assertIsNone(r.header("X-Frame-Options"))  # secure comes after: never ran
        r = request(p, "/", host="hello.do", method="HEAD")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(self.backend_requests(), before)

        # ip_allow: 127.0.0.1 is not in 10/8 or fd00::/8; it is in 127/8.
        r = request(p, "/", host="office.do")
        j = self.assertJsonError(r, 403, "Forbidden")
        self.assertIn("message", j)
        r = request(p, "/", host="local.do")
        self.assertEqual(r.status, 200)
        self.assertEqual(echo_headers(r).get("x-env"), "prod")
        # The real client: X-Forwarded-For counts from a trusted proxy (127.0.0.2) only.
        xff = [("X-Forwarded-For", "10.9.8.7")]
        self.assertEqual(request(p, "/", host="office.do", headers=xff).status, 403)
        self.assertEqual(request_from("127.0.0.2", p, "office.do", xff).status, 200)
        self.assertEqual(request_from("127.0.0.2", p, "office.do",
                                      [("X-Forwarded-For", "10.9.8.7, 192.0.2.1")]).status, 403)
        self.assertEqual(request_from("127.0.0.2", p, "office.do").status, 403)

        # redirect_https: host without port, path and query kept; 308 by default.
        r = request(p, "/a/b?q=1&r=2", host="r.do:%d" % p)
        self.assertEqual(r.status, 308)
        self.assertEqual(r.header("Location"), "https://r.do/a/b?q=1&r=2")
        r = request(p, "/", host="r301.do")
        self.assertEqual((r.status, r.header("Location")), (301, "https://r301.do/"))

        # strip_prefix ("/api/" configured: the trailing slash is dropped).
        for path, seen in [("/api/x/y?z=1", "/x/y?z=1"), ("/api", "/"), ("/api?q", "/?q"),
                           ("/api/", "/"), ("/apix", "/apix"), ("/other", "/other")]:
            r = request(p, path, host="s.do")
            self.assertEqual(r.status, 200, path)
            self.assertEqual(r.json()["path"], seen, path)
            fp = echo_headers(r).get("x-forwarded-prefix")
            self.assertEqual(fp, None if seen == path else "/api", path)
            self.assertEqual(echo_headers(r).get("x-env"), "prod", path)

        # max_body: Content-Length over the limit, chunked once it crosses it, HTTP/2 too.
        before = self.backend_requests()
        r = request(p, "/up", host="b.do", method="POST", body=b"x" * 101)
        self.assertJsonError(r, 413)
        self.assertTrue(r.closed)
        with Conn(p) as c:
            c.send(dsptest.build_request("POST", "/up", "b.do", [("Transfer-Encoding", "chunked")])
                   + b"40\r\n" + b"a" * 64 + b"\r\n" + b"40\r\n" + b"b" * 64 + b"\r\n")
            r = c.read_response()
            self.assertJsonError(r, 413)
            self.assertTrue(r.closed)
        self.assertEqual(self.backend_requests(), before)
        r = request(p, "/up", host="b.do", method="POST", body=b"y" * 100)
        self.assertEqual((r.status, r.json()["body_bytes"]), (200, 100))

        # cors: preflight answered here, simple requests get Allow-Origin, Vary: Origin.
        before = self.backend_requests()
        r = request(p, "/api", host="c.do", method="OPTIONS",
                    headers=[("Origin", "https://app.example.com"),
                             ("Access-Control-Request-Method", "POST")])
        self.assertEqual(r.status, 204)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertEqual(r.header("Access-Control-Allow-Methods"), "GET, POST")
        self.assertEqual(r.header("Access-Control-Allow-Headers"), "Content-Type, Authorization")
        self.assertEqual(r.header("Access-Control-Allow-Credentials"), "true")
        self.assertEqual(r.header("Access-Control-Max-Age"), "600")
        self.assertIn("Origin", r.header_all("Vary"))
        self.assertIsNone(r.header("Content-Length"))
        r = request(p, "/api", host="c.do", method="OPTIONS",
                    headers=[("Origin", "https://evil.example.com"),
                             ("Access-Control-Request-Method", "POST")])
        self.assertEqual(r.status, 204)
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))
        self.assertEqual(self.backend_requests(), before)
        r = request(p, "/api", host="c.do", headers=[("Origin", "https://app.example.com")])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertIn("Origin", r.header_all("Vary"))
        r = request(p, "/api", host="c.do", headers=[("Origin", "https://evil.example.com")])
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))
        r = request(p, "/api", host="any.do", headers=[("Origin", "https://x.example")])
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "*")
        # An answer of a later middleware keeps the fields of those that let it through.
        r = request(p, "/", host="co.do", headers=[("Origin", "https://app.example.com")])
        self.assertJsonError(r, 403, "Forbidden")
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertEqual(r.header("Access-Control-Allow-Credentials"), "true")
        self.assertIn("Origin", r.header_all("Vary"))
        self.assertEqual(r.header("X-Frame-Options"), "DENY")
        # ... and so does the dispatcher's own answer behind them (a refused backend's 502).
        r = request(p, "/", host="dead.do", headers=[("Origin", "https://app.example.com")])
        self.assertJsonError(r, 502, "Bad gateway")
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertEqual(r.header("X-Frame-Options"), "DENY")

        # The access log names the middleware that answered, only on those lines.
        lines = self.access_lines(d, 10)
        by = {}
        for l in lines:
            by.setdefault(l["host"].split(":")[0], []).append(l)
        self.assertEqual(by["maint.do"][0].get("middleware"), "maint")
        self.assertEqual(by["office.do"][0].get("middleware"), "office")
        self.assertEqual(by["r.do"][0].get("middleware"), "to-https")
        self.assertEqual(by["b.do"][0].get("middleware"), "small")
        self.assertNotIn("middleware", by["h.do"][0])
        self.assertNotIn("middleware", by["plain.do"][0])

    def test_http2(self):
        d = self.start()
        p = d.port
        st, hd, body = curl(p, "h.do", "/x", ["-H", "X-Debug: 1"], h2=True)
        self.assertEqual(st, 200)
        self.assertEqual(echo_headers_json(body).get("x-env"), "prod")
        self.assertNotIn("x-debug", echo_headers_json(body))
        self.assertEqual(hd.get("x-frame-options"), ["DENY"])
        self.assertNotIn("x-backend", hd)
        st, hd, body = curl(p, "r.do", "/a?b=1", h2=True)
        self.assertEqual((st, hd.get("location")), (308, ["https://r.do/a?b=1"]))
        st, hd, body = curl(p, "maint.do", "/", h2=True)
        self.assertEqual((st, body), (503, b"<h1>Down for maintenance</h1>\n"))
        st, hd, body = curl(p, "c.do", "/", ["-X", "OPTIONS", "-H",
                                             "Origin: https://app.example.com", "-H",
                                             "Access-Control-Request-Method: GET"], h2=True)
        self.assertEqual(st, 204)
        self.assertEqual(hd.get("access-control-allow-origin"), ["https://app.example.com"])
        before = self.backend_requests()
        # (nghttp: the request's frames in one write. curl's body frames arriving after an
        # early answer make the connection end without it: an HTTP/2 client-side issue of
        # its own, with limits.max_body_bytes too.)
        self.assertEqual(nghttp_status(p, "b.do", "/up", self.bigfile(d, 500)), 413)
        # A body without Content-Length crosses the limit as it streams.
        self.assertEqual(nghttp_status(p, "b.do", "/up", self.bigfile(d, 5000), no_cl=True), 413)
        self.assertEqual(self.backend_requests(), before)
        st, hd, body = curl(p, "s.do", "/api/q", h2=True)
        self.assertEqual(json.loads(body)["path"], "/q")

    def test_counters_and_admin(self):
        """Per-middleware counters (answered, passed) across both workers, in show stats and
        /metrics; show routes lists each route's chain; a reload keeps counters by name."""
        hp = dsptest.free_port()
        d = self.start(workers=2, http_port=hp)
        p = d.port
        for _ in range(5):
            self.assertEqual(request(p, "/", host="office.do").status, 403)
            self.assertEqual(request(p, "/", host="h.do").status, 200)
        self.assertEqual(request(p, "/", host="maint.do").status, 503)

        def mw_stats():
            return {m["name"]: m for m in dsptest.admin_ask(d, "show stats")["middlewares"]}
        dsptest.wait_until(lambda: mw_stats()["office"]["answered"] == 5, 5, "office counted")
        st = mw_stats()
        self.assertEqual((st["office"]["answered"], st["office"]["passed"]), (5, 0))
        self.assertEqual((st["secure"]["answered"], st["secure"]["passed"]), (0, 6))
        self.assertEqual((st["maint"]["answered"], st["maint"]["type"]), (1, "static"))
        # max_body: passed for a small body, answered (not also passed) for one crossing it.
        request(p, "/up", host="b.do", method="POST", body=b"x" * 10)
        with Conn(p) as c:
            c.send(dsptest.build_request("POST", "/up", "b.do", [("Transfer-Encoding", "chunked")])
                   + b"40\r\n" + b"a" * 64 + b"\r\n")
            dsptest.wait_until(lambda: mw_stats()["small"]["passed"] == 2, 5, "head passed")
            c.send(b"40\r\n" + b"b" * 64 + b"\r\n")
            self.assertEqual(c.read_response().status, 413)
        dsptest.wait_until(lambda: mw_stats()["small"]["answered"] == 1, 5, "small counted")
        self.assertEqual(mw_stats()["small"]["passed"], 1)
        routes = dsptest.admin_ask(d, "show routes")["routes"]
        chains = {r["host"]: r["middlewares"] for r in routes}
        self.assertEqual(chains["maint.do"], ["secure", "maint"])
        self.assertEqual(chains["*"], [])
        with socket.create_connection(("127.0.0.1", hp), timeout=5) as c:
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            body = dsptest.read_to_eof(c).decode()
        self.assertIn('dispatcher_middleware_total{middleware="office",type="ip_allow",'
                      'result="answered"} 5', body)
        self.assertIn('dispatcher_middleware_total{middleware="secure",type="headers",'
                      'result="passed"} 6', body)
        # A reload that keeps "office" keeps its counters; one that drops a middleware is fine.
        gen = dsptest.generation(d)
        d.hup()
        dsptest.wait_until(lambda: dsptest.workers_on_generation(d, gen + 1), 10, "reload")
        self.assertEqual(mw_stats()["office"]["answered"], 5)
        self.assertEqual(request(p, "/", host="office.do").status, 403)
        dsptest.wait_until(lambda: mw_stats()["office"]["answered"] == 6, 5, "office counted")
        # A reload whose middleware is invalid changes nothing and says where.
        with open(d.conf) as f:
            text = f.read()
        d.hup(text.replace('cidrs = ["10.0.0.0/8", "fd00::/8"]', 'cidrs = ["10.0.0.0/88"]')
              .replace('"office"]', '"office", "nosuch"]'))
        dsptest.wait_until(lambda: "10.0.0.0/88" in d.log(), 10, "the reload's error logged")
        log = d.log()
        self.assertRegex(log, r"dispatcher\.conf:\d+: middlewares\[\d+\]\.cidrs: \"10\.0\.0\.0/88\"")
        self.assertEqual(dsptest.generation(d), gen + 1)
        self.assertEqual(request(p, "/", host="office.do").status, 403)
        self.assertEqual(request(p, "/", host="h.do").header("X-Frame-Options"), "DENY")

    def test_max_body_streamed(self):
        """A chunked body that crosses max_body mid-stream: 413, the connection closed, and the
        backend never gets a byte past the limit (here: none of the second chunk)."""
        rec = RecordingBackend()
        self.addCleanup(rec.stop)
        d = self.dispatcher([svc("app", rec.addr)],
                            [route("b.do", "app", middlewares=["small"])], workers=1,
                            extra=MIDDLEWARES, start=False)
        with open(os.path.join(d.tmp, "maint.html"), "w") as f:
            f.write("down\n")
        self.start_dispatcher(d)
        for h2 in (False, True):
            if h2 and not os.path.exists("/usr/bin/python3"):
                continue
            rec.data = b""
            if not h2:
                c = Conn(d.port)
                c.send(dsptest.build_request("POST", "/up", "b.do",
                                             [("Transfer-Encoding", "chunked")]))
                c.send(b"40\r\n" + b"a" * 64 + b"\r\n")
            else:
                c = H2Upload(d.port, "b.do")
            dsptest.wait_until(lambda: b"a" * 64 in rec.data, 5, "the first chunk upstream")
            if not h2:
                c.send(b"40\r\n" + b"b" * 64 + b"\r\n")
                r = c.read_response()
                self.assertJsonError(r, 413)
                self.assertTrue(r.closed)
                c.close()
            else:
                self.assertEqual(c.go(), 413)
            time.sleep(0.2)  # (anything wrongly forwarded would arrive meanwhile)
            self.assertNotIn(b"b", rec.data.partition(b"\r\n\r\n")[2], "h2=%s" % h2)

    def test_ip_allow_proxy_protocol(self):
        """Behind a PROXY-protocol listener the client is the PROXY header's source."""
        be = self.backend("b1")
        d = dsptest.Dispatcher(workers=1)
        with open(os.path.join(d.tmp, "maint.html"), "w") as f:
            f.write("down\n")
        text = dsptest.make_config(d.port, d.tmp, [svc("app", be)],
                                   [route("office.do", "app", middlewares=["office"])],
                                   workers=1, extra=MIDDLEWARES)
        text = text.replace('address = "127.0.0.1:%d"; }' % d.port,
                            'address = "127.0.0.1:%d"; proxy_protocol = true; }' % d.port)
        d.write_config(text)
        self.start_dispatcher(d)
        for src, want in [("10.1.2.3", 200), ("192.0.2.1", 403)]:
            with Conn(d.port) as c:
                c.send(("PROXY TCP4 %s 127.0.0.1 4321 80\r\n" % src).encode())
                r = c.request("GET", "/", "office.do")
                self.assertEqual(r.status, want, src)

    def test_suspended_past_response_timeout(self):
        """A request a middleware suspended (forward_auth waiting on a silent auth service) whose
        service's response_timeout_ms runs out first: 504 naming the middleware, the hook
        cancelled, the next request served (HTTP/1.1 and HTTP/2)."""
        be = self.backend("b1")
        silent = RecordingBackend()
        self.addCleanup(silent.stop)
        extra = ('middlewares = ( { name = "sso"; type = "forward_auth"; address = "%s"; '
                 'path = "/verify"; timeout_ms = 20000; } );' % silent.addr)
        d = self.dispatcher([svc("app", be, response_timeout_ms=400)],
                            [route("sso.do", "app", middlewares=["sso"]), route("*", "app")],
                            workers=1, extra=extra)
        for h2 in (False, True):
            t0 = time.monotonic()
            if h2:
                st, hd, body = curl(d.port, "sso.do", "/", h2=True)
            else:
                r = request(d.port, "/", host="sso.do")
                st, body = r.status, r.body
            self.assertEqual(st, 504, body)
            self.assertIn(b"Middleware sso did not decide in time", body)
            self.assertLess(time.monotonic() - t0, 5)
            self.assertEqual(request(d.port, "/", host="other.do").status, 200)

    def bigfile(self, d, n):
        path = os.path.join(d.tmp, "big.bin")
        with open(path, "wb") as f:
            f.write(b"z" * n)
        return path

    def test_config_errors(self):
        """Each mistake is a FILE:LINE error of -t (and the middleware it names)."""
        tmp = dsptest.tempfile.mkdtemp(prefix="dsp-it-")
        conf = os.path.join(tmp, "dispatcher.conf")
        with open(conf, "w") as f:
            f.write("""listeners = ( { address = "127.0.0.1:1"; } );
services = ( { name = "s"; backends = ["127.0.0.1:9"]; } );
middlewares = (
  { name = "a"; type = "headers"; request_set = ["X-A: 1"]; },
  { name = "a"; type = "headers"; request_set = ["X-B: 1"]; },
  { name = "b"; type = "nosuch"; },
  { name = "c"; type = "static"; stauts = 200; },
  { name = "d"; type = "ip_allow"; cidrs = ["10.0.0.0/33"]; },
  { name = "e"; type = "max_body"; },
  { name = "f"; type = "headers"; request_set = ["Content-Length: 5"]; },
  { type = "static"; },
  { name = "g"; type = "redirect_https"; status = 200; },
  { name = "h"; type = "strip_prefix"; prefix = "api"; },
  { name = "i"; type = "cors"; }
);
routes = ( { host = "*"; service = "s"; middlewares = ["a", "zzz"]; } );
""")
        p = subprocess.run([dsptest.MASTER, "-t", "-c", conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20)
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, err)
        for line, what in [(5, "already defined on line 4"), (6, "unknown middleware type"),
                           (7, "unknown key 'stauts'"), (8, "10.0.0.0/33"),
                           (9, "bytes is required"), (10, "Content-Length"),
                           (11, "has no name"), (12, "status"),
                           (13, "prefix"), (14, "origins"),
                           (16, "unknown middleware 'zzz'")]:
            self.assertIn("%s:%d:" % (conf, line), err, what)
            found = [l for l in err.splitlines() if l.startswith("%s:%d:" % (conf, line))]
            self.assertTrue(any(what in l for l in found), "%s: %r" % (what, found))


class RecordingBackend:
    """Accepts connections and records every byte received; never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.data = b""
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        with c:
            while True:
                try:
                    b = c.recv(65536)
                except OSError:
                    return
                if not b:
                    return
                self.data += b

    def stop(self):
        self.stopped = True
        self.sock.close()


H2_UPLOAD = r"""
import socket, sys
import h2.config, h2.connection, h2.events
port, host = int(sys.argv[1]), sys.argv[2]
sock = socket.create_connection(("127.0.0.1", port), timeout=10)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
conn.send_headers(1, [(":method", "POST"), (":path", "/up"), (":scheme", "http"),
                      (":authority", host)])
conn.send_data(1, b"a" * 64)
sock.sendall(conn.data_to_send())
sys.stdin.readline()
conn.send_data(1, b"b" * 64)
sock.sendall(conn.data_to_send())
status = 0
while not status:
    chunk = sock.recv(65536)
    if not chunk:
        break
    for ev in conn.receive_data(chunk):
        if isinstance(ev, h2.events.ResponseReceived):
            status = int(dict(ev.headers)[b":status"])
    sock.sendall(conn.data_to_send())
print(status, flush=True)
"""


class H2Upload:
    """An HTTP/2 POST without Content-Length: 64 bytes of DATA, then (go()) 64 more; the
    answer's status. Run by the system's python3, which has python3-h2."""

    def __init__(self, port, host):
        self.p = subprocess.Popen(["/usr/bin/python3", "-c", H2_UPLOAD, str(port), host],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def go(self):
        out, _ = self.p.communicate(b"go\n", timeout=20)
        return int(out.strip() or 0)


def request_from(src, port, host, headers=()):
    """One request from source address <src> (a loopback alias)."""
    c = Conn.__new__(Conn)
    c.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.sock.bind((src, 0))
    c.sock.settimeout(10)
    c.sock.connect(("127.0.0.1", port))
    c.buf = bytearray()
    c.eof = False
    with c:
        return c.request("GET", "/", host, headers)


def nghttp_status(port, host, path, data_file, no_cl=False):
    cmd = ["nghttp", "-n", "-v", "-H", ":authority: " + host, "-d", data_file]
    if no_cl:
        cmd.append("--no-content-length")
    cmd.append("http://127.0.0.1:%d%s" % (port, path))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    for l in p.stdout.decode("latin-1").splitlines():
        if ":status:" in l:
            return int(l.split(":status:")[1])
    return 0


def echo_headers_json(body):
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


class MiddlewareRedisTest(dsptest.TestCase):
    """`middlewares` SET + `middleware:{name}` HASH (type and the file's keys, lists
    comma-separated) and route:{id}'s `middlewares` field; a bad one is reported and not
    applied; a name defined in the file wins."""

    @dsptest.timeout(60)
    def test_middlewares_from_redis(self):
        import test_redis as tr
        tmp = dsptest.tempfile.mkdtemp(prefix="dsp-it-redis-")
        dsptest._record_tmp(tmp)
        r = tr.Redis(tmp).start()
        self.addCleanup(r.stop)
        be = self.backend("api")
        file_mw = ('middlewares = ( { name = "tag"; type = "headers"; '
                   'response_set = ["X-Tag: file"]; } );')
        d = self.dispatcher(services=[svc("gw", be)], routes=[route("gw.do", "gw")], workers=1,
                            extra=file_mw + "\n" + tr.redis_block(r))
        self.assertTrue(tr.wait_log(d, r"connected; following"))
        env = "production"

        def add_mw(name, **fields):
            args = []
            for k, v in fields.items():
                args += [k, v]
            r.cli("HSET", "dispatcher:%s:middleware:%s" % (env, name), *args)
            r.cli("SADD", "dispatcher:%s:middlewares" % env, name)
            tr.bump(r, env)

        add_mw("office", type="ip_allow", cidrs="10.0.0.0/8, fd00::/8")
        add_mw("sec", type="headers", request_set="X-Env: prod", response_remove="X-Backend")
        add_mw("tag", type="headers", response_set="X-Tag: redis")  # the file's wins
        tr.add_service(r, env, "api", [be.addr])
        tr.add_route(r, env, "a", host="a.do", service="api", middlewares="sec, tag")
        tr.add_route(r, env, "b", host="b.do", service="api", middlewares="office")
        tr.publish(r, env)
        self.assertIsNotNone(tr.wait_all([d.port], "a.do", 200, timeout_s=5), d.log_tail())
        res = request(d.port, "/", host="a.do")
        self.assertEqual(echo_headers(res).get("x-env"), "prod")
        self.assertIsNone(res.header("X-Backend"))
        self.assertEqual(res.header("X-Tag"), "file")
        self.assertEqual(request(d.port, "/", host="b.do").status, 403)
        self.assertTrue(tr.wait_log(d, r"middleware 'tag' is also defined in"))
        routes = {x["host"]: x["middlewares"] for x in dsptest.admin_ask(d, "show routes")["routes"]}
        self.assertEqual(routes["a.do"], ["sec", "tag"])

        applied = d.log().count("applied as generation")
        cases = [
            (lambda: add_mw("bad", type="nosuch"), "middleware:bad", "unknown middleware type"),
            (lambda: add_mw("bad", type="ip_allow", cidrs="10.0.0.0/33"), "middleware:bad",
             "10.0.0.0/33"),
            (lambda: add_mw("bad", type="headers", request_set="X-A: 1", colour="red"),
             "middleware:bad", "unknown field 'colour'"),
            (lambda: tr.add_route(r, env, "bad", host="bad.do", service="api",
                                  middlewares="sec,nope"),
             "route:bad", "unknown middleware 'nope'"),
        ]
        for brk, k, msg in cases:
            tr.add_route(r, env, "ride", host="ride.do", service="api")
            brk()
            tr.publish(r, env)
            pat = r"\[error\].*redis dispatcher:production:%s: .*%s" % (re.escape(k),
                                                                       re.escape(msg))
            self.assertTrue(tr.wait_log(d, pat, 3), "no error naming %s:\n%s" % (k, d.log_tail()))
            self.assertEqual(tr.status(d.port, "ride.do")[0], 404, "nothing changes")
            self.assertEqual(d.log().count("applied as generation"), applied)
            kind, name = k.split(":")
            tr.remove(r, env, kind, name)
            tr.publish(r, env)
            self.assertIsNotNone(tr.wait_all([d.port], "ride.do", 200, timeout_s=3), d.log_tail())
            tr.remove(r, env, "route", "ride")
            tr.publish(r, env)
            self.assertIsNotNone(tr.wait_all([d.port], "ride.do", 404, timeout_s=3))
            applied = d.log().count("applied as generation")
        self.assertEqual(request(d.port, "/", host="b.do").status, 403)
