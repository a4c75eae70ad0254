"""Issue 16, honest errors: generated 502/503/504 bodies name no backend address unless
errors.expose_backend; errors.list_services = false drops the 404's service list; errors.pages
serve an operator's HTML page to clients that prefer text/html (real curl, a browser's Accept),
read at load and reload; a failure on a reused keep-alive connection that reaches the client as a
502 counts against the backend; a TLS backend whose certificate fails verification is reported as
such (body, error log, show instances/stats, /metrics)."""

import json
import os
import socket
import subprocess
import tempfile
import threading

import dsptest
from dsptest import Conn, free_port, request, route, svc
import test_tls

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def curl(port, host, path="/", headers=(), method=None, h2=False):
    """Plain-HTTP curl to 127.0.0.1:<port> with Host <host> (HTTP/2 prior knowledge with <h2>);
    (status, headers, body bytes)."""
    cmd = ["curl", "-s", "--max-time", "10", "-D", "-", "-H", "Host: " + host]
    if h2:
        cmd.append("--http2-prior-knowledge")
    for h in headers:
        cmd += ["-H", h]
    if method:
        cmd += ["-X", method]
    cmd.append("http://127.0.0.1:%d%s" % (port, path))
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    hdrs = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


class KeepAliveThenClose:
    """A raw HTTP/1.1 backend: on each connection it answers the first request (200, keep-alive,
    Content-Length), then reads the next request whole and closes without answering, the way a
    backend that drops idle keep-alive connections does when a request meets the close."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.requests = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _read_request(self, c, buf):
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return None, b""
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        clen = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                clen = int(v.strip())
        while len(rest) < clen:
            d = c.recv(65536)
            if not d:
                return None, b""
            rest += d
        return head.split(b"\r\n")[0].decode(), rest[clen:]

    def _serve(self, c):
        try:
            c.settimeout(10)
            line, buf = self._read_request(c, b"")
            if line is None:
                return
            self.requests.append(line)
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n"
                      b"\r\nok")
            line, buf = self._read_request(c, buf)
            if line is not None:
                self.requests.append(line)
        except OSError:
            pass
        finally:
            c.close()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()


def backend_row(d, service, address):
    for s in dsptest.admin_ask(d, "show instances")["instances"]:
        if s["name"] == service:
            for b in s["backends"]:
                if b["address"] == address:
                    return b
    return None


class ErrorsTest(dsptest.TestCase):

    # ---- what 502/503/504 bodies say --------------------------------------------------------
    def _failures(self, extra):
        b = self.backend("up")
        dead = "127.0.0.1:%d" % free_port()
        d = self.dispatcher(
            services=[svc("early", b, retries=0, response_timeout_ms=10000),
                      svc("slow", b, retries=0, response_timeout_ms=300),
                      svc("dead", dead, retries=0),
                      svc("cb", dead, retries=0,
                          circuit_breaker={"failures": 1, "open_ms": 60000})],
            routes=[route("early.do", "early"), route("slow.do", "slow"),
                    route("dead.do", "dead"), route("cb.do", "cb")],
            extra=extra)
        bodies = {}
        bodies["refused"] = request(d.port, "/echo", host="dead.do")
        bodies["early close"] = request(d.port, "/close-early", host="early.do")
        bodies["garbage"] = request(d.port, "/garbage", host="early.do")
        bodies["timeout"] = request(d.port, "/sleep?ms=3000", host="slow.do")
        request(d.port, "/echo", host="cb.do")  # opens the circuit
        bodies["circuit"] = request(d.port, "/echo", host="cb.do")
        return d, b, dead, bodies

    def test_bodies_name_no_backend_by_default(self):
        d, b, dead, bodies = self._failures("")
        want = {"refused": (502, "The backend refused the connection"),
                "early close": (502, "The backend closed the connection without a response"),
                "garbage": (502, "The backend sent an invalid response"),
                "timeout": (504, "The backend did not answer within 300 ms"),
                "circuit": (503, "Circuit open for 1 backend of service cb")}
        for what, r in bodies.items():
            j = self.assertJsonError(r, want[what][0])
            self.assertEqual(j["message"], want[what][1], what)
            for addr in (b.addr, dead, "127.0.0.1"):
                self.assertNotIn(addr.encode(), r.body, "%s: body names %s" % (what, addr))
            self.assertTrue(r.header("X-Request-ID"))

    def test_expose_backend_names_it(self):
        d, b, dead, bodies = self._failures("errors = { expose_backend = true; };")
        self.assertEqual(bodies["refused"].json()["message"],
                         "Backend %s refused the connection" % dead)
        self.assertEqual(bodies["early close"].json()["message"],
                         "Backend %s closed the connection without a response" % b.addr)
        self.assertEqual(bodies["timeout"].json()["message"],
                         "Backend %s did not answer within 300 ms" % b.addr)
        self.assertEqual(bodies["circuit"].json()["message"],
                         "Circuit open for backend %s of service cb" % dead)

    def test_list_services(self):
        b = self.backend("b")
        for extra, listed in (("", True), ("errors = { list_services = true; };", True),
                              ("errors = { list_services = false; };", False)):
            d = self.dispatcher(services=[svc("shop", b), svc("secret-billing", b)],
                                routes=[route("shop.do", "shop")], extra=extra)
            r = request(d.port, "/x", host="nowhere.do")
            j = self.assertJsonError(r, 404, "Service not found")
            self.assertIn("nowhere.do", j["message"])
            if listed:
                self.assertEqual(sorted(j["available_services"]), ["secret-billing", "shop"])
            else:
                self.assertNotIn("available_services", j)
                self.assertNotIn(b"secret-billing", r.body)
            d.stop()

    # ---- HTML pages -------------------------------------------------------------------------
    @dsptest.timeout(90)
    def test_pages_for_browsers(self):
        b = self.backend("b")
        dead = "127.0.0.1:%d" % free_port()
        d = self.dispatcher(
            services=[svc("dead", dead, retries=0), svc("ok", b),
                      svc("slow", b, retries=0, response_timeout_ms=300),
                      svc("cb", dead, retries=0, circuit_breaker={"failures": 1,
                                                                  "open_ms": 60000})],
            routes=[route("dead.do", "dead"), route("ok.do", "ok"), route("slow.do", "slow"),
                    route("cb.do", "cb")],
            extra='errors = { pages = ( { status = 502; file = "errors/502.html"; },\n'
                  '  { status = 503; file = "errors/503.html"; },\n'
                  '  { status = 404; file = "%s"; } ); };' % os.path.join("errors", "404.html"),
            start=False)
        os.mkdir(os.path.join(d.tmp, "errors"))
        pages = {502: b"<html><body>We are fixing it (502)</body></html>\n",
                 503: b"<html><body>Busy (503) \xc3\xa9</body></html>\n",
                 404: b"<!doctype html><title>Not here</title>\n"}
        for st, body in pages.items():
            with open(os.path.join(d.tmp, "errors", "%d.html" % st), "wb") as f:
                f.write(body)
        self.start_dispatcher(d)

        # A browser's Accept: the page, text/html, status and request id kept.
        st, h, body = curl(d.port, "dead.do", headers=["Accept: " + BROWSER_ACCEPT,
                                                        "X-Request-ID: page-test-1"])
        self.assertEqual((st, body), (502, pages[502]))
        self.assertEqual(h.get("content-type"), "text/html")
        self.assertEqual(h.get("content-length"), str(len(pages[502])))
        self.assertEqual(h.get("x-request-id"), "page-test-1")
        st, h, body = curl(d.port, "nowhere.do", "/x", headers=["Accept: " + BROWSER_ACCEPT])
        self.assertEqual((st, h.get("content-type"), body), (404, "text/html", pages[404]))
        self.assertTrue(h.get("x-request-id"))
        # The same over HTTP/2.
        st, h, body = curl(d.port, "dead.do", headers=["Accept: " + BROWSER_ACCEPT,
                                                        "X-Request-ID: page-test-2"], h2=True)
        self.assertEqual((st, h.get("content-type"), body), (502, "text/html", pages[502]))
        self.assertEqual(h.get("x-request-id"), "page-test-2")
        st, h, body = curl(d.port, "dead.do", h2=True)
        self.assertEqual((st, h.get("content-type")), (502, "application/json"))
        curl(d.port, "cb.do")  # opens the circuit
        st, h, body = curl(d.port, "cb.do", headers=["Accept: text/html"])
        self.assertEqual((st, h.get("content-type"), body), (503, "text/html", pages[503]))
        # No page for 504: JSON even for a browser.
        st, h, body = curl(d.port, "slow.do", "/sleep?ms=3000",
                           headers=["Accept: " + BROWSER_ACCEPT])
        self.assertEqual((st, h.get("content-type")), (504, "application/json"))
        self.assertEqual(json.loads(body)["error"], "Gateway timeout")
        # Clients that do not prefer HTML get JSON: curl's */*, an API client, a tie.
        for accept in (None, "application/json", "application/json, text/html",
                       "text/html;q=0.5, application/json", "*/*"):
            hs = ["Accept: " + accept] if accept else []
            st, h, body = curl(d.port, "dead.do", headers=hs)
            self.assertEqual((st, h.get("content-type")), (502, "application/json"), accept)
            self.assertEqual(json.loads(body)["error"], "Bad gateway")
        # Proxied answers are untouched.
        st, h, body = curl(d.port, "ok.do", "/echo", headers=["Accept: " + BROWSER_ACCEPT])
        self.assertEqual(st, 200)

        # Reload reads the pages again.
        new502 = b"<html><body>Back in a minute</body></html>\n"
        with open(os.path.join(d.tmp, "errors", "502.html"), "wb") as f:
            f.write(new502)
        gen = dsptest.generation(d)
        d.hup()
        dsptest.wait_until(lambda: dsptest.workers_on_generation(d, gen + 1), 10, "reload")
        st, h, body = curl(d.port, "dead.do", headers=["Accept: " + BROWSER_ACCEPT])
        self.assertEqual((st, body), (502, new502))

        # A page gone: -t and the reload fail with FILE:LINE, the old page stays served.
        os.unlink(os.path.join(d.tmp, "errors", "503.html"))
        p = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20)
        self.assertEqual(p.returncode, 1, p.stderr)
        err = p.stderr.decode()
        line = [i + 1 for i, l in enumerate(open(d.conf).read().splitlines())
                if "503.html" in l][0]
        self.assertIn("%s:%d: errors.pages[1].file: cannot read" % (d.conf, line), err)
        gen = dsptest.generation(d)
        d.hup()
        dsptest.wait_until(lambda: "%s:%d: errors.pages[1].file" % (d.conf, line) in d.log(), 10,
                           "reload refused with FILE:LINE")
        self.assertEqual(dsptest.generation(d), gen)
        st, h, body = curl(d.port, "cb.do", headers=["Accept: text/html"])
        self.assertEqual((st, body), (503, pages[503]))

    def test_page_errors_at_start(self):
        b = self.backend("b")
        big = os.path.join(tempfile.mkdtemp(prefix="dsp-it-page-"), "big.html")
        with open(big, "wb") as f:
            f.write(b"x" * (12 * 1024 + 1))
        for extra, needle in (
                ('errors = { pages = ( { status = 502; file = "/nonexistent/502.html"; } ); };',
                 'errors.pages[0].file: cannot read "/nonexistent/502.html"'),
                ('errors = { pages = ( { status = 502; file = "%s"; } ); };' % big,
                 "larger than 12288 bytes"),
                ('errors = { pages = ( { status = 502; file = "/dev/null"; } ); };',
                 "not a regular file"),
                ('errors = { pages = ( { status = 200; file = "%s"; } ); };' % big,
                 "between 400 and 599")):
            d = self.dispatcher(services=[svc("b", b)], routes=[route("*", "b")], extra=extra,
                                start=False)
            line = [i + 1 for i, l in enumerate(open(d.conf).read().splitlines())
                    if l.startswith("errors")][0]
            p = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=20)
            self.assertEqual(p.returncode, 1, p.stderr)
            self.assertIn("%s:%d: " % (d.conf, line), p.stderr.decode())
            self.assertIn(needle, p.stderr.decode())
            p = subprocess.run([dsptest.MASTER, "-c", d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=20)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn(needle, p.stderr.decode())

    # ---- a reused connection's 502 counts -----------------------------------------------------
    def test_reused_connection_502_counts(self):
        kb = KeepAliveThenClose()
        self.addCleanup(kb.stop)
        d = self.dispatcher(services=[svc("ka", kb.addr, retries=0,
                                          circuit_breaker={"failures": 1, "open_ms": 60000})],
                            routes=[route("*", "ka")], workers=1)
        with Conn(d.port) as c:
            r = c.request("GET", "/first", "ka.do")
            self.assertEqual((r.status, r.body), (200, b"ok"))
            # The upstream connection is pooled; a POST goes out on it and the backend closes
            # it without an answer: never replayed (not idempotent), so the client gets a 502.
            r = c.request("POST", "/second", "ka.do", body=b"payload")
            self.assertJsonError(r, 502, "Bad gateway")
        self.assertEqual(kb.requests, ["GET /first HTTP/1.1", "POST /second HTTP/1.1"])
        row = backend_row(d, "ka", kb.addr)
        self.assertEqual(row["errors"], 1, row)
        self.assertEqual(row["consecutive_failures"], 1, row)
        self.assertEqual(row["circuit"], "open", row)
        svc_row = [s for s in dsptest.admin_ask(d, "show stats")["services"]
                   if s["name"] == "ka"][0]
        self.assertEqual(svc_row["errors"], 1)
        # The circuit breaker saw it: the next request is refused at once.
        r = request(d.port, "/third", host="ka.do")
        self.assertJsonError(r, 503, "Service unavailable")

    def test_reused_connection_retried_does_not_count(self):
        kb = KeepAliveThenClose()
        self.addCleanup(kb.stop)
        d = self.dispatcher(services=[svc("ka", kb.addr, retries=0)],
                            routes=[route("*", "ka")], workers=1)
        with Conn(d.port) as c:
            self.assertEqual(c.request("GET", "/first", "ka.do").status, 200)
            # A GET on the stale connection is retried on a fresh one, which answers.
            r = c.request("GET", "/second", "ka.do")
            self.assertEqual((r.status, r.body), (200, b"ok"))
        row = backend_row(d, "ka", kb.addr)
        self.assertEqual((row["errors"], row["consecutive_failures"]), (0, 0), row)

    # ---- TLS verification ---------------------------------------------------------------------
    @dsptest.timeout(60)
    def test_tls_verify_failure_reported(self):
        tmp = tempfile.mkdtemp(prefix="dsp-it-tlsv-")
        cert, key = test_tls.make_cert(tmp, "self", "backend.internal",
                                       "DNS:backend.internal,IP:127.0.0.1")
        tb = test_tls.TlsBackend("tb", cert, key)
        self.addCleanup(tb.stop)
        http_port = free_port()
        d = self.dispatcher(
            services=[svc("strict", tb.addr, tls=True, verify=True, retries=0),
                      svc("trusting", tb.addr, tls=True, ca=cert, retries=0),
                      svc("checked", tb.addr, tls=True, retries=0,
                          health={"path": "/health", "interval_ms": 100, "timeout_ms": 1000,
                                  "fall": 1, "rise": 1})],
            routes=[route("strict.do", "strict"), route("trusting.do", "trusting"),
                    route("checked.do", "checked")],
            start=False)
        sock = os.path.join(d.tmp, "admin.sock")
        text = open(d.conf).read().replace(
            'admin = { socket = "%s"; };' % sock,
            'admin = { socket = "%s"; http = "127.0.0.1:%d"; };' % (sock, http_port))
        d.write_config(text)
        self.start_dispatcher(d)

        for i in range(2):
            r = request(d.port, "/x", host="strict.do")
            j = self.assertJsonError(r, 502, "Bad gateway")
            self.assertIn("TLS verification failed", j["message"])
            self.assertNotIn("refused", j["message"])
            self.assertNotIn(b"127.0.0.1", r.body)
        self.assertEqual(request(d.port, "/x", host="trusting.do").status, 200)
        log = d.log()
        self.assertRegex(log, r"TLS verification of backend %s of service strict failed: "
                              r"certificate verify failed: self[- ]signed certificate"
                         % tb.addr.replace(".", r"\."))
        self.assertNotIn("refused", log)
        self.assertEqual(backend_row(d, "strict", tb.addr)["tls_verify_failures"], 2)
        self.assertEqual(backend_row(d, "trusting", tb.addr)["tls_verify_failures"], 0)
        # The master's health checks count their verification failures too.
        dsptest.wait_until(lambda: backend_row(d, "checked", tb.addr)["tls_verify_failures"] >= 2,
                           5, "health checks counted in tls_verify_failures")
        stats = dsptest.admin_ask(d, "show stats")
        self.assertGreaterEqual(stats["tls_verify_failures"], 4)
        ctl = os.path.join(dsptest.BIN_DIR, "dispatcherctl")
        p = subprocess.run([ctl, "-s", os.path.join(d.tmp, "admin.sock"), "show", "stats"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout.decode(), r"\d+ backend TLS verification failures")
        by_name = dict((s["name"], s) for s in stats["services"])
        self.assertEqual(by_name["strict"]["tls_verify_failures"], 2)
        self.assertEqual(by_name["trusting"]["tls_verify_failures"], 0)
        with Conn(http_port) as c:
            m = c.request("GET", "/metrics", "127.0.0.1").body.decode()
        want = ('dispatcher_backend_tls_verify_failures_total{service="strict",backend="%s"} 2'
                % tb.addr)
        self.assertIn(want, m)

        # With expose_backend the body names the backend.
        d.hup(text.replace("routes = (", "errors = { expose_backend = true; };\nroutes = ("))
        dsptest.wait_until(lambda: "TLS verification failed: the certificate of backend %s"
                           % tb.addr in request(d.port, "/x", host="strict.do").body.decode(),
                           10, "expose_backend applied by the reload")
