"""HTTP/1.1 framing through the proxy: pipelining, HEAD, 204/304, Expect: 100-continue."""

import json
import select
import shutil
import subprocess
import tempfile
import zlib

import dsptest
from dsptest import Conn, build_request, route, svc


class FramingTest(dsptest.TestCase):

    def setUp(self):
        self.b = self.backend("web")
        self.d = self.dispatcher(services=[svc("web", self.b)], routes=[route("*", "web")])

    def test_pipelining_three_in_one_send(self):
        reqs = b"".join(build_request("GET", "/echo/%d" % i, "p.do") for i in (1, 2, 3))
        with Conn(self.d.port) as c:
            c.send(reqs)
            got = [c.read_response() for _ in range(3)]
            # And the connection is still good afterwards.
            after = c.request("GET", "/echo/4", "p.do")
        self.assertEqual([r.status for r in got], [200, 200, 200])
        self.assertEqual([r.json()["path"] for r in got], ["/echo/1", "/echo/2", "/echo/3"])
        self.assertEqual(after.json()["path"], "/echo/4")
        ids = [r.header("X-Request-ID") for r in got]
        self.assertEqual(len(set(ids)), 3, "each pipelined request has its own id: %r" % ids)

    def test_pipelining_with_bodies(self):
        reqs = (build_request("GET", "/echo/1", "p.do") +
                build_request("POST", "/echo/2", "p.do", body=b"hello pipelining") +
                build_request("POST", "/echo/3", "p.do",
                              headers=[("Transfer-Encoding", "chunked")],
                              body=b"5\r\nhello\r\n6\r\n chunk\r\n0\r\n\r\n") +
                build_request("GET", "/echo/4", "p.do"))
        with Conn(self.d.port) as c:
            c.send(reqs)
            got = [c.read_response() for _ in range(4)]
        self.assertEqual([r.status for r in got], [200] * 4, [r.body[:200] for r in got])
        js = [r.json() for r in got]
        self.assertEqual([j["method"] for j in js], ["GET", "POST", "POST", "GET"])
        self.assertEqual([j["path"] for j in js], ["/echo/%d" % i for i in (1, 2, 3, 4)])
        self.assertEqual(js[1]["body"], "hello pipelining")
        self.assertEqual(js[2]["body"], "hello chunk")

    def test_body_in_same_packet_as_head(self):
        """A Content-Length body that arrives in the same read as the head must be forwarded
        with its Content-Length, and must not leak into the next request upstream."""
        with Conn(self.d.port) as c:
            for i in range(3):
                r = c.request("POST", "/echo/%d" % i, "p.do", body=b"0123456789")
                self.assertEqual(r.status, 200)
                j = r.json()
                self.assertEqual(j["method"], "POST", "upstream stream desynchronised: %r" % j)
                cl = [v for k, v in j["headers"] if k.lower() == "content-length"]
                self.assertEqual(cl, ["10"], "Content-Length forwarded upstream")
                self.assertEqual(j["body"], "0123456789")

    def test_head_has_no_body(self):
        with Conn(self.d.port) as c:
            r = c.request("HEAD", "/bytes?n=1000", "h.do")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("Content-Length"), "1000",
                             "HEAD keeps the Content-Length of the GET")
            self.assertIsNone(r.header("Transfer-Encoding"))
            # Any body bytes would corrupt the next response on this connection.
            r2 = c.request("GET", "/echo/after-head", "h.do")
            self.assertEqual(r2.status, 200)
            self.assertEqual(r2.json()["path"], "/echo/after-head")
            self.assertEqual(r2.json()["method"], "GET")
            r3 = c.request("HEAD", "/chunked?n=5000&chunk=100", "h.do")
            self.assertEqual(r3.status, 200)
            r4 = c.request("GET", "/echo/after-head2", "h.do")
            self.assertEqual(r4.json()["path"], "/echo/after-head2")
            self.assertEqual(c.buf, b"", "unexpected bytes after responses: %r" % c.buf[:100])

    def test_204_and_304_framing(self):
        with Conn(self.d.port) as c:
            for code in (204, 304, 204):
                r = c.request("GET", "/status?code=%d" % code, "s.do")
                self.assertEqual(r.status, code)
                self.assertIsNone(r.header("Transfer-Encoding"),
                                  "%d must not be chunked" % code)
                cl = r.header("Content-Length")
                if code == 204:
                    self.assertIn(cl, (None, "0"), "204 with Content-Length %r" % cl)
                r2 = c.request("GET", "/echo/after-%d" % code, "s.do")
                self.assertEqual(r2.status, 200, "response after %d" % code)
                self.assertEqual(r2.json()["path"], "/echo/after-%d" % code)
            r = c.request("GET", "/status?code=503", "s.do")
            self.assertEqual(r.status, 503, "backend statuses pass through")
            self.assertEqual(r.body, b'{"status":503}\n')

    def test_interim_response_then_final(self):
        """A backend's 1xx interim response followed, later, by the final one: a 103 is
        relayed to an HTTP/1.1 client and a 100 is not, the final response always arrives, and
        the connection carries on (also when the client asked for Connection: close)."""
        with Conn(self.d.port) as c:
            for code in (103, 100, 103):
                r = c.request("GET", "/interim?code=%d&ms=300" % code, "i.do")
                self.assertEqual(r.status, 200, r.body[:200])
                self.assertEqual(r.json(), {"interim": code})
                want = [103] if code == 103 else []
                self.assertEqual([st for st, _ in r.interim], want)
                if code == 103:
                    links = [v for k, v in r.interim[0][1] if k.lower() == "link"]
                    self.assertEqual(links, ["</s.css>; rel=preload"])
            self.assertEqual(c.request("GET", "/echo/after", "i.do").json()["path"],
                             "/echo/after")
        with Conn(self.d.port) as c:
            c.send(build_request("GET", "/interim?code=103&ms=300", "i.do",
                                 [("Connection", "close")]))
            ready, _, _ = select.select([c.sock], [], [], 0.25)
            self.assertTrue(ready, "the 103 should be relayed before the final response")
            r = c.read_response()
            self.assertEqual((r.status, [st for st, _ in r.interim]), (200, [103]))
            self.assertEqual(r.json(), {"interim": 103})

    def test_expect_100_continue(self):
        body = bytes(range(256)) * 400  # 102400 bytes
        with Conn(self.d.port) as c:
            c.send(b"POST /expect HTTP/1.1\r\nHost: e.do\r\nContent-Length: %d\r\n"
                   b"Expect: 100-continue\r\n\r\n" % len(body))
            ready, _, _ = select.select([c.sock], [], [], 3)
            self.assertTrue(ready, "no 100 Continue (nor any answer) within 3s")
            version, status, reason, _ = c.read_head()
            self.assertEqual(status, 100, "expected an interim 100 Continue, got %d" % status)
            c.send(body)
            r = c.read_response()
            self.assertEqual(r.status, 200, r.body[:200])
            j = r.json()
            self.assertEqual(j["bytes"], len(body))
            self.assertEqual(j["crc32"], zlib.crc32(body))
            # The connection stays usable.
            self.assertEqual(c.request("GET", "/echo", "e.do").status, 200)

    def test_curl_expect_upload(self):
        curl = shutil.which("curl")
        self.assertIsNotNone(curl, "curl is needed for this test")
        with tempfile.NamedTemporaryFile() as f:
            data = bytes((i * 13) % 256 for i in range(3 * 1024 * 1024))
            f.write(data)
            f.flush()
            out = subprocess.run(
                [curl, "-sS", "--max-time", "10", "--expect100-timeout", "5", "-H", "Host: e.do",
                 "-H", "Expect: 100-continue", "--data-binary", "@" + f.name,
                 "-w", "\n%{http_code} %{time_total}",
                 "http://127.0.0.1:%d/expect" % self.d.port],
                capture_output=True, timeout=15)
        self.assertEqual(out.returncode, 0, out.stderr)
        body, _, status = out.stdout.rpartition(b"\n")
        code, total = status.split()
        self.assertEqual(code, b"200")
        j = json.loads(body)
        self.assertEqual(j["bytes"], len(data))
        self.assertEqual(j["crc32"], zlib.crc32(data))
        self.assertLess(float(total), 4.0, "curl waited for a 100 Continue that never came")
