"""HTTP/2 to clients (worker/wk_h2.c): prior knowledge on plain listeners, ALPN h2 on TLS ones,
`http2 = false`, request bodies with and without Content-Length (re-framed chunked for HTTP/1.1
backends), large and many concurrent responses, generated errors as HTTP/2 answers, the access
log's proto, cookie crumbs joined for HTTP/1.1, and requests that break HTTP/2's message rules
refused before a backend sees them.

Real clients: curl (--http2-prior-knowledge, --http2 over TLS), h2load and nghttp from Debian's
nghttp2-client; frame-level cases use the `h2` module under /usr/bin/python3 (python3-h2).
"""

import json
import os
import shutil
import subprocess
import unittest
import zlib

import dsptest
from dsptest import make_config, route, svc

SYS_PY = "/usr/bin/python3"


def have(tool):
    return shutil.which(tool) is not None


def curl(*args, timeout=30):
    p = subprocess.run(["curl", "-sS", "--max-time", str(timeout - 5)] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return p


def curl_json(url, *args):
    p = curl("--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}", url, *args)
    body, _, tail = p.stdout.decode().rpartition("\n")
    version, code = tail.split()
    return version, int(code), body


class Http2Test(dsptest.TestCase):
    def setUp(self):
        self.b = self.backend("h2b")
        dead = "127.0.0.1:%d" % dsptest.free_port()
        self.d = self.dispatcher(services=[svc("web", self.b), svc("gone", dead, retries=0)],
                                 routes=[route("h2.test", "web"), route("down.test", "gone")])

    def url(self, path="/", host="h2.test"):
        return "http://%s:%d%s" % (host, self.d.port, path)

    def resolve(self, host="h2.test"):
        return ["--resolve", "%s:%d:127.0.0.1" % (host, self.d.port)]

    @unittest.skipUnless(have("curl"), "curl")
    def test_prior_knowledge_get(self):
        version, code, body = curl_json(self.url("/hello?x=1"), *self.resolve())
        self.assertEqual((version, code), ("2", 200), body)
        got = json.loads(body)
        hdrs = {k.lower(): v for k, v in got["headers"]}
        self.assertEqual(got["path"], "/hello?x=1")
        self.assertEqual(got["version"], "HTTP/1.1")          # translated for the backend
        self.assertEqual(hdrs["host"], "h2.test:%d" % self.d.port)  # from :authority
        self.assertEqual(hdrs["x-forwarded-proto"], "http")
        self.assertIn("x-request-id", hdrs)

    @unittest.skipUnless(have("curl"), "curl")
    def test_request_bodies_both_framings(self):
        data = os.urandom(300000)
        path = os.path.join(self.d.tmp, "body.bin")
        with open(path, "wb") as f:
            f.write(data)
        # With Content-Length: forwarded as is.
        v, code, body = curl_json(self.url("/echo-body"), *self.resolve(), "--data-binary", "@" + path)
        got = json.loads(body)
        self.assertEqual((v, code), ("2", 200))
        self.assertEqual(got["body_bytes"], len(data))
        self.assertEqual(got["body_crc32"], zlib.crc32(data))
        self.assertFalse(got["chunked"])
        # Without: the backend gets it chunked, byte for byte.
        v, code, body = curl_json(self.url("/echo-body"), *self.resolve(), "-X", "POST", "-T", path,
                                  "-H", "Transfer-Encoding:")
        got = json.loads(body)
        self.assertEqual(code, 200, body)
        self.assertEqual(got["body_bytes"], len(data))
        self.assertEqual(got["body_crc32"], zlib.crc32(data))

    @unittest.skipUnless(have("curl"), "curl")
    def test_large_response_and_head(self):
        out = os.path.join(self.d.tmp, "out.bin")
        p = curl("--http2-prior-knowledge", *self.resolve(), "-o", out, "-w",
                 "%{http_version} %{http_code} %{size_download}", self.url("/bytes?n=8000000"))
        self.assertEqual(p.stdout.decode(), "2 200 8000000", p.stderr)
        p = curl("--http2-prior-knowledge", *self.resolve(), "-o", out, "-w",
                 "%{http_code} %{size_download}", self.url("/chunked?n=300000"))
        self.assertEqual(p.stdout.decode(), "200 300000", p.stderr)
        p = curl("--http2-prior-knowledge", *self.resolve(), "-I", self.url("/bytes?n=100"))
        self.assertIn("content-length: 100", p.stdout.decode().lower())
        p = curl("--http2-prior-knowledge", *self.resolve(), "-o", out, "-w", "%{http_code}",
                 self.url("/status?code=204"))
        self.assertEqual(p.stdout.decode(), "204")

    @unittest.skipUnless(have("h2load"), "nghttp2-client")
    def test_many_streams_and_connections(self):
        p = subprocess.run(["h2load", "-n", "4000", "-c", "8", "-m", "32",
                            "-H", ":authority: h2.test", "http://127.0.0.1:%d/x" % self.d.port],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode()
        self.assertIn("4000 succeeded, 0 failed, 0 errored, 0 timeout", out, out)
        self.assertIn("status codes: 4000 2xx", out, out)

    @unittest.skipUnless(have("curl"), "curl")
    def test_errors_are_http2_answers(self):
        v, code, body = curl_json(self.url("/", host="nowhere.test"), *self.resolve("nowhere.test"))
        self.assertEqual((v, code), ("2", 404))
        self.assertEqual(json.loads(body)["error"], "Service not found")
        v, code, body = curl_json(self.url("/", host="down.test"), *self.resolve("down.test"))
        self.assertEqual(v, "2")
        self.assertIn(code, (404, 502, 503))
        self.assertIn("error", json.loads(body))

    @unittest.skipUnless(have("curl"), "curl")
    def test_access_log_proto(self):
        curl_json(self.url("/logged"), *self.resolve())
        log = os.path.join(self.d.tmp, "access.log")

        def line():
            if not os.path.exists(log):
                return None
            for ln in open(log).read().splitlines():
                e = json.loads(ln)
                if e.get("path") == "/logged":
                    return e
            return None
        e = dsptest.wait_until(line, 10, "the access log line")
        self.assertEqual(e["proto"], "HTTP/2.0")
        self.assertEqual(e["host"], "h2.test:%d" % self.d.port)
        self.assertEqual(e["status"], 200)

    @unittest.skipUnless(have("nghttp"), "nghttp2-client")
    def test_cookie_crumbs_joined(self):
        p = subprocess.run(["nghttp", "-H", ":authority: h2.test", "-H", "cookie: a=1",
                            "-H", "cookie: b=2", "http://127.0.0.1:%d/c" % self.d.port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        got = json.loads(p.stdout.decode())
        cookies = [v for k, v in got["headers"] if k.lower() == "cookie"]
        self.assertEqual(cookies, ["a=1; b=2"])

    @unittest.skipUnless(os.path.exists(SYS_PY), "Debian python3")
    def test_message_rule_breakers_refused(self):
        """Connection-specific headers, uppercase names and a Content-Length that the DATA
        contradicts end in a stream reset; the backend never sees such a request."""
        script = r'''
import socket, sys, h2.connection, h2.config, h2.events
port = int(sys.argv[1])
cases = [
    [(":method", "GET"), (":path", "/a"), (":scheme", "http"), (":authority", "h2.test"),
     ("connection", "keep-alive")],
    [(":method", "GET"), (":path", "/b"), (":scheme", "http"), (":authority", "h2.test"),
     ("X-Upper", "1")],
    [(":method", "POST"), (":path", "/c"), (":scheme", "http"), (":authority", "h2.test"),
     ("content-length", "10")],
    [(":method", "GET"), (":path", "/d"), (":scheme", "http"), (":authority", "h2.test"),
     ("te", "gzip")],
]
res = []
for i, hdrs in enumerate(cases):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                    normalize_outbound_headers=False)
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    c.send_headers(1, hdrs, end_stream=(i != 2))
    if i == 2:
        c.send_data(1, b"x" * 3, end_stream=True)
    s.sendall(c.data_to_send())
    out = "none"
    try:
        while out == "none":
            d = s.recv(65536)
            if not d:
                out = "closed"
                break
            for ev in c.receive_data(d):
                if isinstance(ev, h2.events.StreamReset):
                    out = "reset"
                elif isinstance(ev, h2.events.ResponseReceived):
                    out = "status " + dict(ev.headers).get(b":status", b"?").decode()
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    out = "goaway"
            s.sendall(c.data_to_send())
    except socket.timeout:
        out = "timeout"
    res.append(out)
    s.close()
print(" ".join(res))
'''
        before = self.b.stats()["requests"]
        p = subprocess.run([SYS_PY, "-c", script, str(self.d.port)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        outs = p.stdout.decode().split()
        for o in outs:
            self.assertIn(o, ("reset", "goaway", "status 400"), outs)
        self.assertEqual(self.b.stats()["requests"], before)


class Http2TlsTest(dsptest.TestCase):
    @unittest.skipUnless(have("curl"), "curl")
    def test_alpn_and_http2_off(self):
        b = self.backend("h2tls")
        d = dsptest.Dispatcher()
        p1, p2, p3 = dsptest.free_port(), dsptest.free_port(), dsptest.free_port()
        text = make_config(d.port, d.tmp, [svc("web", b)], [route("*", "web")])
        text = text.replace(
            'listeners = ( { address = "127.0.0.1:%d"; } );' % d.port,
            'listeners = ( { address = "127.0.0.1:%d"; }, { address = "127.0.0.1:%d"; tls = true; },\n'
            '  { address = "127.0.0.1:%d"; tls = true; http2 = false; },\n'
            '  { address = "127.0.0.1:%d"; http2 = false; } );\n'
            'tls = { self_signed_cn = "localhost"; };' % (d.port, p1, p2, p3))
        d.write_config(text)
        self.start_dispatcher(d)
        out = curl("-k", "-o", "/dev/null", "-w", "%{http_version}",
                   "https://127.0.0.1:%d/a" % p1).stdout.decode()
        self.assertEqual(out, "2")
        out = curl("-k", "--http1.1", "-o", "/dev/null", "-w", "%{http_version}",
                   "https://127.0.0.1:%d/a" % p1).stdout.decode()
        self.assertEqual(out, "1.1")
        out = curl("-k", "-o", "/dev/null", "-w", "%{http_version}",
                   "https://127.0.0.1:%d/a" % p2).stdout.decode()
        self.assertEqual(out, "1.1")
        # Prior knowledge on a listener without HTTP/2: an HTTP/1 answer (400), not HTTP/2.
        r = dsptest.Conn(p3)
        r.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        resp = r.read_response()
        self.assertEqual(resp.status, 400)
        r.close()


if __name__ == "__main__":
    unittest.main()
