"""Hostile backends (SPEC, Proxying: "Strict framing", "A backend connection returns to the pool
only when..."; Health: "A response the backend sent before closing ... is delivered"): a raw-socket
backend in this file sends more than it declared, unsolicited responses, endless 1xx, oversize
heads, bodies on HEAD/204/304, out-of-range statuses, early rejections of uploads, truncated
bodies. Each test checks what the client got and that the NEXT client, which the single worker
serves from the same keep-alive pool, gets its own clean response (every response carries a token
taken from its request)."""

import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse

import dsptest
from dsptest import Conn, route, svc

# The worker's upstream buffer is 32 KiB and its client buffer 16 KiB or more: sizes around
# their multiples are where a message end meets a read boundary.
# Generous for a loaded 2-CPU machine; the hangs these tests look for last at least this long.
RESPONSE_TIMEOUT_MS = 3000

BOUNDARY_SIZES = (16383, 16384, 16385, 32766, 32767, 32768, 32769, 65535, 65536, 65537, 98304,
                  131072)


def leak_response(size):
    """Bytes that parse as a complete response whose body says LEAKED, padded to <size> when
    it allows; below the minimum, plain garbage of <size> bytes."""
    base = b"HTTP/1.1 200 OK\r\nX-Token: LEAKED\r\nContent-Length: %d\r\n\r\n"
    body = b"LEAKED"
    r = base % len(body) + body
    if size < len(r):
        return b"Z" * size
    pad = size - len(r)
    for extra in range(pad, -1, -1):
        body = b"LEAKED" + b"!" * extra
        r = base % len(body) + body
        if len(r) == size:
            return r
    return r


def sized_response(tok, total, cid, chunked=False):
    """A 200 of exactly <total> bytes (head and body) whose body starts with <tok>."""
    tok = tok.encode()
    if chunked:
        head = (b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nX-Token: %s\r\nTransfer-Encoding: chunked"
                b"\r\n\r\n" % (cid, tok))
        # One chunk with a fixed-width size line, then the last chunk.
        n = total - len(head) - len(b"000000\r\n") - 2 - len(b"0\r\n\r\n")
        assert n >= len(tok), total
        data = tok + b"." * (n - len(tok))
        r = head + b"%06x\r\n" % n + data + b"\r\n0\r\n\r\n"
    else:
        n = total
        while True:
            head = (b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nX-Token: %s\r\nContent-Length: %d\r\n\r\n"
                    % (cid, tok, n))
            want = total - len(head)
            if want == n:
                break
            n = want
        assert n >= len(tok), total
        r = head + tok + b"." * (n - len(tok))
    assert len(r) == total, (len(r), total)
    return r


def ok(tok, cid, status=b"200 OK", extra_headers=b""):
    body = tok.encode()
    return (b"HTTP/1.1 %s\r\nX-Conn: %d\r\nX-Token: %s\r\n%sContent-Length: %d\r\n\r\n"
            % (status, cid, body, extra_headers, len(body)) + body)


class TlsStream:
    """Server side of TLS over memory BIOs: what one sendall() is given leaves in one send() on
    the socket, records and all, as a plain backend's bytes do (ssl.SSLSocket would write record
    by record, so extra bytes could trail the response by any time)."""

    def __init__(self, sock, ctx):
        self.sock = sock
        self.inc = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=True)
        sock.settimeout(10)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._pull()
        self._flush()
        sock.settimeout(None)

    def _flush(self):
        d = self.out.read()
        if d:
            self.sock.sendall(d)

    def _pull(self):
        self._flush()
        d = self.sock.recv(65536)
        if not d:
            raise ConnectionResetError("EOF during TLS")
        self.inc.write(d)

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                try:
                    self._pull()
                except ConnectionResetError:
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def sendall(self, data):
        view = memoryview(data)
        while view:
            k = self.obj.write(view)
            view = view[k:]
        self._flush()

    def setsockopt(self, *a):
        self.sock.setsockopt(*a)

    def close(self):
        self.sock.close()


class Hostile:
    """A backend on raw sockets. Connections are served one request after another; the request
    path picks what the backend does (see respond()). Every response names its connection in
    X-Conn, so a test can tell whether the proxy reused it."""

    def __init__(self, tls=None):
        self.tls = tls  # an ssl.SSLContext (server side) for a TLS backend
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(256)
        self.port = self.ls.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.lock = threading.Lock()
        self.nconn = 0
        self.socks = []
        self.stopped = False
        self.requests = []  # (cid, method, target)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.stopped = True
        try:
            self.ls.close()
        except OSError:
            pass
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass

    def _accept(self):
        while not self.stopped:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            # As real servers do: without it, an answer queued behind a small unacknowledged
            # segment (a TLS session ticket) waits for the ACK, and the reset of a close() with
            # unread input discards it in our own kernel before it leaves.
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.nconn += 1
                cid = self.nconn
                self.socks.append(s)
            threading.Thread(target=self._serve, args=(s, cid), daemon=True).start()

    def _serve(self, s, cid):
        buf = b""
        try:
            if self.tls is not None:
                s = TlsStream(s, self.tls)
            while not self.stopped:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                hdrs = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                path, _, qs = target.partition("?")
                q = dict(urllib.parse.parse_qsl(qs))
                with self.lock:
                    self.requests.append((cid, method, target))
                if path.startswith("/early/"):
                    self._early(s, path, q, cid)
                    return
                cl = int(hdrs.get("content-length", "0"))
                while len(buf) < cl:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[cl:]
                for act in self.respond(method, path, q, cid):
                    if isinstance(act, bytes):
                        s.sendall(act)
                    elif isinstance(act, float):
                        time.sleep(act)
                    elif act == "close":
                        return
                    elif act == "hang":
                        while not self.stopped and s.recv(65536):
                            pass
                        return
        except OSError:
            return
        finally:
            try:
                s.close()
            except OSError:
                pass

    def _early(self, s, path, q, cid):
        """Answer an upload without reading its body, then close: the kernel resets the
        connection because the body is unread."""
        code = path.split("/")[2]
        body = b'{"rejected":"%s"}' % code.encode()
        reason = {"413": b"Payload Too Large", "401": b"Unauthorized"}.get(code, b"No")
        auth = b"WWW-Authenticate: Basic realm=\"x\"\r\n" if code == "401" else b""
        if q.get("late"):
            # The proxy has filled the socket buffers with body bytes and waits to write more
            # when the answer and the reset come.
            time.sleep(float(q["late"]) / 1000)
        s.sendall(b"HTTP/1.1 %s %s\r\nX-Conn: %d\r\n%sContent-Length: %d\r\nConnection: close"
                  b"\r\n\r\n" % (code.encode(), reason, cid, auth, len(body)) + body)
        mode = q.get("mode", "close")
        if mode == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "wait":
            time.sleep(0.2)
        s.close()

    def respond(self, method, path, q, cid):
        parts = path.split("/")
        kind = parts[1]
        tok = parts[2] if len(parts) > 2 else "none"
        if kind == "tok":
            return [ok(tok, cid)]
        if kind == "extra":
            # A response of exactly <total> bytes, then <extra> bytes nobody asked for.
            r = sized_response(tok, int(q["total"]), cid, q.get("te") == "chunked")
            extra = leak_response(int(q.get("extra", "80")))
            if q.get("split"):
                return [r, float(q["split"]) / 1000, extra]
            return [r + extra]
        if kind == "second":
            return [ok(tok, cid) + ok("LEAKED", cid)]
        if kind == "interim":
            n = int(q.get("n", "1"))
            hint = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            acts = []
            every = float(q.get("every_ms", "0")) / 1000
            for _ in range(n):
                acts.append(hint)
                if every:
                    acts.append(every)
            if q.get("final", "1") == "1":
                acts.append(ok(tok, cid))
            else:
                acts.append("hang")
            return acts
        if kind == "bighead":
            size = int(q["size"])
            return [b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * size + b"\r\n" + ok(tok, cid)[17:]]
        if kind == "manyheaders":
            n = int(q["n"])
            hs = b"".join(b"X-H%d: v\r\n" % i for i in range(n))
            return [ok(tok, cid, extra_headers=hs)]
        if kind == "bodyless":
            status = q.get("status", "204").encode()
            if q.get("te") == "chunked":
                framing = b"Transfer-Encoding: chunked\r\n"
                body = b"5\r\nBODY!\r\n0\r\n\r\n"
            else:
                framing = b"Content-Length: 5\r\n"
                body = b"BODY!"
            head = (b"HTTP/1.1 %s X\r\nX-Conn: %d\r\nX-Token: %s\r\n%s\r\n"
                    % (status, cid, tok.encode(), framing))
            return [head + (body if q.get("body") == "1" else b"")]
        if kind == "status":
            line = urllib.parse.unquote(q["line"]).encode("latin-1")
            return [line + b"\r\nX-Conn: %d\r\nContent-Length: 2\r\n\r\nok" % cid]
        if kind == "rawhead":
            return [urllib.parse.unquote(q["head"]).encode("latin-1") + b"ok"]
        if kind == "midbody":
            return [b"HTTP/1.1 200 OK\r\nX-Conn: %d\r\nContent-Length: 1000\r\n\r\n" % cid
                    + b"x" * 500, "close"]
        if kind == "load":
            if q.get("bad") == "1":
                return [sized_response(tok, int(q["total"]), cid) + leak_response(200)]
            return [ok(tok, cid)]
        return [b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]


class HostileBackendTest(dsptest.TestCase):

    def setUp(self):
        self.h = Hostile()
        self.addCleanup(self.h.stop)
        # One worker: every client meets the same upstream pool.
        self.d = self.dispatcher(
            services=[svc("h", self.h.addr, retries=1, response_timeout_ms=RESPONSE_TIMEOUT_MS)],
            routes=[route("*", "h")], workers=1)
        self.n = 0

    def tok(self):
        self.n += 1
        return "t%d-%d" % (self.n, time.monotonic_ns() % 1000000)

    def clean_next(self, not_conn=None, c=None):
        """The next client (a new connection, or <c>) gets its own response, from a backend
        connection other than <not_conn>."""
        t = self.tok()
        if c is None:
            with Conn(self.d.port, timeout=5) as c2:
                r = c2.request("GET", "/tok/" + t, "h.do")
        else:
            r = c.request("GET", "/tok/" + t, "h.do")
        self.assertEqual(r.status, 200, "next client: %r %r" % (r, r.headers))
        self.assertEqual(r.body, t.encode(), "next client got another response: %r" % r.body[:100])
        if not_conn is not None:
            self.assertNotEqual(r.header("X-Conn"), not_conn,
                                "a connection that ended off a message boundary was reused")
        return r

    def check_502(self, r):
        j = self.assertJsonError(r, 502, "Bad gateway")
        self.assertIn("message", j)

    # ---- defect 2: more than declared -----------------------------------------------------

    def _extra(self, te):
        for total in BOUNDARY_SIZES:
            for extra in (1, 2, 80, 5000):
                t = self.tok()
                with Conn(self.d.port, timeout=5) as c:
                    r = c.request("GET", "/extra/%s?total=%d&extra=%d&te=%s" % (t, total, extra, te),
                                  "h.do")
                    self.assertEqual(r.status, 200)
                    self.assertTrue(r.body.startswith(t.encode()), r.body[:60])
                    self.assertNotIn(b"LEAKED", r.body)
                    conn = r.header("X-Conn")
                    # Same client connection, then a new one: neither sees the extra bytes.
                    self.clean_next(conn, c)
                self.clean_next(conn)

    @dsptest.timeout(90)
    def test_extra_bytes_after_content_length_never_leak(self):
        self._extra("cl")

    @dsptest.timeout(90)
    def test_extra_bytes_after_chunked_never_leak(self):
        self._extra("chunked")

    def test_extra_bytes_arriving_later_never_leak(self):
        for total in (32768, 65536, 1000):
            for split in (1, 30):
                t = self.tok()
                with Conn(self.d.port, timeout=5) as c:
                    r = c.request("GET", "/extra/%s?total=%d&extra=80&split=%d" % (t, total, split),
                                  "h.do")
                    self.assertTrue(r.body.startswith(t.encode()))
                time.sleep(0.1)  # the extra bytes reach the idle pooled connection
                self.clean_next(r.header("X-Conn"))

    def test_second_unsolicited_response_never_leaks(self):
        for _ in range(5):
            t = self.tok()
            with Conn(self.d.port, timeout=5) as c:
                r = c.request("GET", "/second/" + t, "h.do")
                self.assertEqual(r.body, t.encode())
                self.clean_next(r.header("X-Conn"), c)

    def test_clean_boundary_responses_are_reused(self):
        """The pool still works: a response that ends exactly at a read boundary with nothing
        after it leaves a reusable connection."""
        for total in (32768, 65536, 1000):
            t = self.tok()
            with Conn(self.d.port, timeout=5) as c:
                r = c.request("GET", "/extra/%s?total=%d&extra=0" % (t, total), "h.do")
                self.assertTrue(r.body.startswith(t.encode()))
                conn = r.header("X-Conn")
                r2 = self.clean_next(None, c)
                self.assertEqual(r2.header("X-Conn"), conn, "clean response not reused")

    @dsptest.timeout(120)
    def test_no_response_ever_reaches_another_client_under_load(self):
        """Several clients at once, some responses followed by bytes nobody asked for (sizes at
        the buffer boundaries): every client gets exactly its own response."""
        errors = []
        counts = {"ok": 0}
        lock = threading.Lock()

        def client(k):
            sizes = (32768, 65536, 16384, 32767, 32769)
            c = None
            try:
                for i in range(120):
                    if c is None or i % 17 == 0:
                        if c is not None:
                            c.close()
                        c = Conn(self.d.port, timeout=10)
                    t = "c%d-%d" % (k, i)
                    if i % 3 == 0:
                        p = "/load/%s?bad=1&total=%d" % (t, sizes[(i // 3) % len(sizes)])
                    else:
                        p = "/load/" + t
                    r = c.request("GET", p, "h.do")
                    if r.status != 200 or not r.body.startswith(t.encode()):
                        with lock:
                            errors.append((t, r.status, r.body[:60]))
                        c.close()
                        c = None
                        continue
                    with lock:
                        counts["ok"] += 1
            except Exception as e:  # noqa: BLE001 (reported below)
                with lock:
                    errors.append(("client %d" % k, repr(e)))
            finally:
                if c is not None:
                    c.close()

        th = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for t in th:
            t.start()
        for t in th:
            t.join(100)
        self.assertEqual(errors, [], "%d wrong or failed responses of %d"
                         % (len(errors), len(errors) + counts["ok"]))
        self.assertEqual(counts["ok"], 6 * 120)

    # ---- defect 5: no body on HEAD, 204, 304 ------------------------------------------------

    def test_bodyless_responses_end_at_their_head(self):
        cases = [("GET", "204"), ("GET", "304"), ("HEAD", "200"), ("HEAD", "404"),
                 ("HEAD", "204"), ("HEAD", "304")]
        for method, status in cases:
            for te in ("cl", "chunked"):
                for body in ("0", "1"):
                    t = self.tok()
                    with Conn(self.d.port, timeout=5) as c:
                        t0 = time.monotonic()
                        c.send(dsptest.build_request(
                            method, "/bodyless/%s?status=%s&te=%s&body=%s" % (t, status, te, body),
                            "h.do"))
                        v, st, _, hdrs = c.read_head()
                        dt = time.monotonic() - t0
                        what = "%s %s %s body=%s" % (method, status, te, body)
                        self.assertEqual(st, int(status), what)
                        self.assertLess(dt, 2.0, "%s: head after %.2fs" % (what, dt))
                        names = [k.lower() for k, _ in hdrs]
                        if status == "204":
                            self.assertNotIn("content-length", names, what)
                            self.assertNotIn("transfer-encoding", names, what)
                        elif te == "cl":
                            self.assertIn("content-length", names, what)
                        conn = dict((k.lower(), v) for k, v in hdrs).get("x-conn")
                        # Nothing follows the head: the next response on this connection is the
                        # next request's, at once.
                        t2 = time.monotonic()
                        r = self.clean_next(conn if body == "1" else None, c)
                        self.assertLess(time.monotonic() - t2, 2.0, what)
                        self.assertNotIn(b"BODY", r.body)
                    self.clean_next(conn if body == "1" else None)

    # ---- defect 6: an early answer to an upload is delivered -------------------------------

    def _upload_early(self, code, mode, size=8 << 20, late=0):
        with Conn(self.d.port, timeout=10) as c:
            c.send(dsptest.build_request("POST", "/early/%s?mode=%s&late=%d" % (code, mode, late),
                                         "h.do",
                                         headers=[("Content-Length", str(size))]))

            def pump():
                chunk = b"u" * 65536
                try:
                    for _ in range(size // len(chunk)):
                        c.sock.sendall(chunk)
                except OSError:
                    pass

            th = threading.Thread(target=pump, daemon=True)
            th.start()
            r = c.read_response("POST")
            self.assertEqual(r.status, int(code), "%s/%s: %r %r" % (code, mode, r, r.body[:200]))
            self.assertEqual(r.body, b'{"rejected":"%s"}' % code.encode())
            th.join(10)
            if r.closed:
                # Announced (the upload was unfinished when the answer came): and done.
                self.assertTrue(c.wait_closed(5), "Connection: close, but it stayed open")
            else:
                # The proxy had read the whole body by then: the connection may stay, and
                # then it serves the next request.
                self.clean_next(None, c)

    def test_early_reject_of_upload_is_delivered_not_502(self):
        for code in ("413", "401"):
            for mode in ("close", "rst", "wait"):
                for late in (0, 100):
                    self._upload_early(code, mode, late=late)
                # Not a backend failure: the service is still up, nobody gets 502/503.
                self.clean_next()

    def test_early_reject_is_not_a_backend_failure(self):
        """The balancer hears the status, not a failure: a circuit breaker that opens after two
        failures stays closed, and nothing is logged as down or ejected."""
        self.d = self.dispatcher(
            services=[svc("h", self.h.addr, retries=0, response_timeout_ms=RESPONSE_TIMEOUT_MS,
                          passive_failures=2, circuit_breaker={"failures": 2, "open_ms": 30000})],
            routes=[route("*", "h")], workers=1)
        for mode in ("rst", "close", "rst", "close"):
            self._upload_early("413", mode, late=100)
            self._upload_early("401", mode, size=200000)
        self.clean_next()
        log = self.d.log()
        for bad in ("circuit open", "is down", "passive ejection"):
            self.assertNotIn(bad, log)

    def test_early_reject_of_small_upload(self):
        for mode in ("close", "rst"):
            self._upload_early("413", mode, size=100000)
            self.clean_next()

    # ---- defect 11: statuses, 1xx, heads --------------------------------------------------

    def test_status_out_of_range_is_502(self):
        lines = ["HTTP/1.1 000 Zero", "HTTP/1.1 099 Low", "HTTP/1.1 600 High", "HTTP/1.1 999 X",
                 "HTTP/1.1 1000 X", "HTTP/1.1 20 X", "HTTP/1.1 0200 OK", "HTTP/1.1 2000 X",
                 "HTTP/1.1 abc X", "HTTP/1.1 101 Switching Protocols", "HTTP/2.0 200 OK",
                 "HTTP/1.2 200 OK", "HTTP/1.1  200 OK", "HTTP/1.1 200\x01OK", "HTTP/1.1\t200 OK",
                 " HTTP/1.1 200 OK", "http/1.1 200 OK"]
        for line in lines:
            with Conn(self.d.port, timeout=5) as c:
                r = c.request("GET", "/status/x?line=" + urllib.parse.quote(line), "h.do")
                self.assertEqual(r.status, 502, "%r relayed as %r" % (line, r))
                self.check_502(r)
            self.clean_next()
        # In range, with or without a reason phrase: relayed.
        for line, st in (("HTTP/1.1 200 OK", 200), ("HTTP/1.1 599 Odd", 599),
                         ("HTTP/1.0 200 OK", 200), ("HTTP/1.1 200 ", 200), ("HTTP/1.1 404", 404)):
            r = dsptest.request(self.d.port, "/status/x?line=" + urllib.parse.quote(line), "h.do")
            self.assertEqual(r.status, st, line)
            self.assertEqual(r.body, b"ok")

    def test_bare_lf_or_cr_in_response_head_is_502(self):
        heads = ["HTTP/1.1 200 OK\nContent-Length: 2\n\n",
                 "HTTP/1.1 200 OK\r\nContent-Length: 2\n\r\n",
                 "HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\nContent-Length: 2\r\n\r\n",
                 "HTTP/1.1 200 OK\r\nX-A: 1\r\n Folded\r\nContent-Length: 2\r\n\r\n",
                 "\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"]
        for h in heads:
            with Conn(self.d.port, timeout=5) as c:
                r = c.request("GET", "/rawhead/x?head=" + urllib.parse.quote(h), "h.do")
                self.assertEqual(r.status, 502, "%r relayed" % h)
            self.clean_next()

    def test_interim_responses_are_bounded(self):
        # A few 103s before the final response: forwarded, then the response.
        t = self.tok()
        with Conn(self.d.port, timeout=5) as c:
            c.send(dsptest.build_request("GET", "/interim/%s?n=2" % t, "h.do"))
            r = c.read_response()
            self.assertEqual(r.status, 200)
            self.assertEqual(r.body, t.encode())
            self.assertEqual([s for s, _ in r.interim], [103, 103])
        # A storm, with or without an end: 502 at once, connection not reused.
        for final in ("1", "0"):
            t = self.tok()
            t0 = time.monotonic()
            with Conn(self.d.port, timeout=5) as c:
                c.send(dsptest.build_request("GET", "/interim/%s?n=500&final=%s" % (t, final),
                                             "h.do"))
                r = c.read_response()
                self.assertEqual(r.status, 502, "final=%s: %r" % (final, r))
                self.assertLess(time.monotonic() - t0, 2.0)
            self.clean_next()

    def test_trickled_interim_responses_do_not_extend_the_response_timeout(self):
        # 103s every 0.6 s (6 of them: under the count bound) and no final response.
        t0 = time.monotonic()
        with Conn(self.d.port, timeout=12) as c:
            c.send(dsptest.build_request("GET", "/interim/x?n=6&every_ms=600&final=0", "h.do"))
            r = c.read_response()
        dt = time.monotonic() - t0
        self.assertEqual(r.status, 504, repr(r))
        self.assertLess(dt, RESPONSE_TIMEOUT_MS / 1000 + 1.2,
                        "504 after %.2fs with response_timeout_ms=%d" % (dt, RESPONSE_TIMEOUT_MS))
        self.clean_next()

    def test_oversize_response_head_is_502(self):
        for size in (40000, 70000, 200000):
            with Conn(self.d.port, timeout=5) as c:
                r = c.request("GET", "/bighead/x?size=%d" % size, "h.do")
                self.check_502(r)
            self.clean_next()
        with Conn(self.d.port, timeout=5) as c:
            r = c.request("GET", "/manyheaders/x?n=300", "h.do")
            self.check_502(r)
        self.clean_next()

    def test_close_mid_body(self):
        # The backend's FIN often comes with the edge of its last bytes: it must not wait for
        # another edge (or the response timeout) to be seen.
        for _ in range(8):
            with Conn(self.d.port, timeout=5) as c:
                c.send(dsptest.build_request("GET", "/midbody/x", "h.do"))
                v, st, _, hdrs = c.read_head()
                self.assertEqual(st, 200)
                self.assertTrue(c.wait_closed(1.5),
                                "truncated response: the client must see a close at once")
                self.assertLessEqual(len(c.buf), 500)
            self.clean_next()


class HostileTlsBackendTest(HostileBackendTest):
    """The pool rules with a TLS backend: extra bytes after a response (in the same TLS record
    or in one of their own), early answers to uploads, statuses."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dsp-hostile-tls-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        cert, key = os.path.join(self.dir, "b.pem"), os.path.join(self.dir, "b.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=backend.internal"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       timeout=30)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.h = Hostile(tls=ctx)
        self.addCleanup(self.h.stop)
        self.d = self.dispatcher(
            services=[svc("h", self.h.addr, retries=1, response_timeout_ms=RESPONSE_TIMEOUT_MS,
                          tls=True, verify=False)],
            routes=[route("*", "h")], workers=1)
        self.n = 0

    # The upload tests send 8 MiB per round through TLS: fewer rounds.
    def test_early_reject_of_upload_is_delivered_not_502(self):
        for code in ("413", "401"):
            for mode in ("close", "rst"):
                self._upload_early(code, mode, size=2 << 20, late=100)
            self.clean_next()

    def test_early_reject_is_not_a_backend_failure(self):
        pass  # the accounting is the plain backend's test

    def test_no_response_ever_reaches_another_client_under_load(self):
        pass  # plain backend only: Python TLS on a shared 2-CPU machine is too slow for it
