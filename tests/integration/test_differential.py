"""Differential checks of request framing: every case of tests/corpus/ (see its README) is sent
through dispatcher to a raw recording backend, and what the backend received is compared with
what the case expects: a 4xx JSON answer with nothing forwarded, or exactly the expected bytes
(one message, body validated). A second run over a trusted-proxy listener checks `Forwarded`."""

import os
import socket
import ssl
import threading
import time

import dsptest
from dsptest import Conn, route, svc

CORPUS = os.path.normpath(os.path.join(dsptest.HERE, "..", "corpus"))

OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def unescape(line):
    """A corpus line: \\r \\n \\t \\0 \\xHH \\\\ are escapes, the file's own line ends are not
    part of the bytes."""
    out = bytearray()
    i = 0
    while i < len(line):
        ch = line[i]
        if ch != "\\":
            out += ch.encode("latin-1")
            i += 1
            continue
        nxt = line[i + 1]
        if nxt == "x":
            out.append(int(line[i + 2:i + 4], 16))
            i += 4
            continue
        out += {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}[nxt]
        i += 2
    return bytes(out)


def load_case(path):
    """(fields, request bytes, forwarded bytes or None)."""
    fields, sections, cur = {}, {}, None
    with open(path, encoding="latin-1") as f:
        for raw in f.read().split("\n"):
            if raw.startswith("--- "):
                cur = raw[4:].strip()
                sections[cur] = bytearray()
            elif cur is not None:
                sections[cur] += unescape(raw)
            elif raw.startswith("#") or not raw.strip():
                continue
            else:
                k, _, v = raw.partition(":")
                fields[k.strip().lower()] = v.strip()
    fwd = sections.get("forwarded")
    return fields, bytes(sections["request"]), bytes(fwd) if fwd is not None else None


def cases():
    return sorted(os.path.join(CORPUS, n) for n in os.listdir(CORPUS) if n.endswith(".case"))


class _RawServer:
    """Listen on an ephemeral loopback port and hand each accepted socket to self._serve in a
    thread of its own, until stop()."""

    def _listen(self, backlog):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.stop_ev = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.stop_ev.set()
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()


class RecordingBackend(_RawServer):
    """A raw HTTP/1 backend that records every byte it receives (per connection, in order) and
    answers each request it can delimit, leniently (bare LF ends lines, as many servers allow),
    with OK_RESPONSE. Counting the requests it saw shows smuggled ones."""

    def __init__(self):
        self.lock = threading.Lock()
        self.data = bytearray()
        self.requests = 0
        self._listen(64)

    def peek(self):
        with self.lock:
            return bytes(self.data)

    def take(self):
        with self.lock:
            d, n = bytes(self.data), self.requests
            self.data = bytearray()
            self.requests = 0
            return d, n

    @staticmethod
    def _one(buf):
        """Length of the first complete request in <buf>, or 0."""
        i = buf.find(b"\n\n")
        j = buf.find(b"\r\n\r\n")
        if j >= 0 and (i < 0 or j + 4 <= i + 2):
            end = j + 4
        elif i >= 0:
            end = i + 2
        else:
            return 0
        head = buf[:end].decode("latin-1").lower()
        if "transfer-encoding:" in head and "chunked" in head:
            pos = end
            while True:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    return 0
                try:
                    size = int(buf[pos:nl].split(b";")[0].strip(), 16)
                except ValueError:
                    return len(buf)  # garbage: swallow it
                pos = nl + 1
                if size == 0:
                    while True:
                        nl = buf.find(b"\n", pos)
                        if nl < 0:
                            return 0
                        line = buf[pos:nl]
                        pos = nl + 1
                        if line in (b"", b"\r"):
                            return pos
                if len(buf) < pos + size + 1:
                    return 0
                pos += size
                if buf[pos:pos + 2] == b"\r\n":
                    pos += 2
                elif buf[pos:pos + 1] == b"\n":
                    pos += 1
        for line in head.split("\n"):
            if line.startswith("content-length:"):
                try:
                    n = int(line.split(":", 1)[1].strip())
                except ValueError:
                    return len(buf)
                return end + n if len(buf) >= end + n else 0
        return end

    def _serve(self, s):
        buf = bytearray()
        s.settimeout(0.2)
        with s:
            while not self.stop_ev.is_set():
                try:
                    d = s.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not d:
                    return
                with self.lock:
                    self.data += d
                buf += d
                while True:
                    n = self._one(bytes(buf))
                    if n == 0:
                        break
                    del buf[:n]
                    with self.lock:
                        self.requests += 1
                    try:
                        s.sendall(OK_RESPONSE)
                    except OSError:
                        return


def normalize(fwd):
    """The generated request id differs per run: X-Request-ID values become *."""
    out = []
    for line in fwd.split(b"\r\n"):
        if line.lower().startswith(b"x-request-id:"):
            line = b"X-Request-ID: *"
        out.append(line)
    return b"\r\n".join(out)


class DifferentialTest(dsptest.TestCase):

    def setUp(self):
        self.b = RecordingBackend()
        self.addCleanup(self.b.stop)

    def start(self, extra=""):
        return self.dispatcher(services=[svc("public", self.b.addr), svc("admin", self.b.addr)],
                               routes=[route("admin.internal", "admin"), route("*", "public")],
                               workers=1, limits={"max_header_bytes": 8192}, extra=extra)

    def run_case(self, d, path, variant=None):
        """<variant>, when given, is (label, connect(), prefix bytes, expected-bytes rewrite):
        the same case over another listener kind (PROXY protocol, TLS)."""
        fields, req, fwd = load_case(path)
        name = os.path.basename(path)
        connect = lambda: Conn(d.port, timeout=5)  # noqa: E731
        if variant is not None:
            label, connect, prefix, rewrite = variant
            name = "%s over %s" % (name, label)
            req = prefix + req
            fwd = rewrite(fwd) if fwd is not None else None
        status = int(fields.get("status", "400"))
        late, _ = self.b.take()
        self.assertEqual(late, b"", "%s: bytes reached the backend after the previous case: %r"
                         % (name, late[:300]))
        with connect() as c:
            c.send(req)
            try:
                r = c.read_response()
            except (dsptest.ConnectionClosed, ConnectionResetError) as e:
                self.fail("%s: no response: %s" % (name, e))
            if status >= 400:
                self.assertJsonError(r, status)
                self.assertTrue(r.closed or c.wait_closed(3),
                                "%s: connection open after a %d" % (name, status))
            else:
                self.assertEqual(r.status, status, "%s: status; body %r" % (name, r.body[:200]))
        # Forwarded bytes arrive before the response they caused; give stray ones a moment.
        time.sleep(0.05 if fwd is None else 0.02)
        got, nreq = self.b.take()
        if fwd is None:
            self.assertEqual(got, b"", "%s: the backend received %r" % (name, got[:300]))
        else:
            self.assertEqual(normalize(got), fwd,
                             "%s: forwarded bytes differ:\n got  %r\n want %r" % (name, got, fwd))
            self.assertEqual(nreq, 1, "%s: the backend saw %d requests" % (name, nreq))

    @dsptest.timeout(120)
    def test_corpus(self):
        d = self.start()
        all_cases = cases()
        self.assertGreaterEqual(len(all_cases), 40, "corpus too small")
        for path in all_cases:
            if load_case(path)[0].get("listener") == "trusted":
                continue
            with self.subTest(case=os.path.basename(path)):
                self.run_case(d, path)

    def test_access_log_names_the_routed_host(self):
        """With an absolute-form target the access log shows its authority, the Host routed
        on and forwarded, not the client's Host header."""
        import json
        d = self.start()
        with Conn(d.port, timeout=5) as c:
            c.send(b"GET http://public.example/x HTTP/1.1\r\nHost: admin.internal\r\n"
                   b"X-Request-ID: alog-abs\r\n\r\n")
            self.assertEqual(c.read_response().status, 200)
        path = os.path.join(d.tmp, "access.log")
        line = None
        deadline = time.monotonic() + 5
        while line is None and time.monotonic() < deadline:
            try:
                with open(path) as f:
                    for l in f:
                        if "alog-abs" in l:
                            line = json.loads(l)
            except OSError:
                pass
            time.sleep(0.05)
        self.assertIsNotNone(line, "no access log line")
        self.assertEqual(line["host"], "public.example")
        self.assertEqual(line["service"], "public")

    def test_corpus_trusted_proxy(self):
        """Cases marked `listener: trusted` run with 127.0.0.1 as a trusted proxy."""
        d = self.start(extra='trusted_proxies = [ "127.0.0.1/32" ];')
        ran = 0
        for path in cases():
            if load_case(path)[0].get("listener") != "trusted":
                continue
            ran += 1
            with self.subTest(case=os.path.basename(path)):
                self.run_case(d, path)
        self.assertGreater(ran, 0)


class _TlsSock:
    """An SSL socket whose abrupt end reads as EOF, as a plain socket's does."""

    def __init__(self, ss):
        self.ss = ss

    def recv(self, n):
        try:
            return self.ss.recv(n)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return b""

    def __getattr__(self, name):
        return getattr(self.ss, name)


class TlsConn(Conn):
    def __init__(self, port, timeout=5):
        super().__init__(port, timeout=timeout)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = _TlsSock(ctx.wrap_socket(self.sock, server_hostname="a.test"))


PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def pp2_header():
    """A PROXY v2 header for TCP over IPv4 from 127.0.0.1:40000 to 127.0.0.1:80."""
    addrs = socket.inet_aton("127.0.0.1") * 2 + (40000).to_bytes(2, "big") + (80).to_bytes(2, "big")
    return PP2_SIG + bytes([0x21, 0x11]) + len(addrs).to_bytes(2, "big") + addrs


class DifferentialListenersTest(dsptest.TestCase):
    """The whole corpus again over the other ways a request can arrive: after a PROXY v1 or v2
    header (the PROXY source is 127.0.0.1, so what is forwarded is the same) and over TLS
    (X-Forwarded-Proto https). Strict framing must not depend on the listener."""

    setUp = DifferentialTest.setUp
    run_case = DifferentialTest.run_case

    @dsptest.timeout(180)
    def test_corpus_over_proxy_protocol_and_tls(self):
        pp_port, tls_port = dsptest.free_port(), dsptest.free_port()
        d = dsptest.Dispatcher(workers=1)
        conf = dsptest.make_config(d.port, d.tmp,
                                   [svc("public", self.b.addr), svc("admin", self.b.addr)],
                                   [route("admin.internal", "admin"), route("*", "public")],
                                   1, {"max_header_bytes": 8192})
        old = 'listeners = ( { address = "127.0.0.1:%d"; } );' % d.port
        self.assertIn(old, conf)
        conf = conf.replace(old, 'listeners = ( { address = "127.0.0.1:%d"; },\n'
                            '  { address = "127.0.0.1:%d"; proxy_protocol = true; },\n'
                            '  { address = "127.0.0.1:%d"; tls = true; } );\n'
                            'tls = { self_signed_cn = "localhost"; };'
                            % (d.port, pp_port, tls_port))
        d.write_config(conf)
        self.start_dispatcher(d)
        same = lambda fwd: fwd  # noqa: E731
        https = lambda fwd: fwd.replace(b"X-Forwarded-Proto: http\r\n",  # noqa: E731
                                        b"X-Forwarded-Proto: https\r\n")
        variants = [
            ("PROXY v1", lambda: Conn(pp_port, timeout=5),
             b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 80\r\n", same),
            ("PROXY v2", lambda: Conn(pp_port, timeout=5), pp2_header(), same),
            ("TLS", lambda: TlsConn(tls_port), b"", https),
        ]
        ran = 0
        for i, path in enumerate(cases()):
            if load_case(path)[0].get("listener") == "trusted":
                continue
            # One PROXY version per case, alternating, so both see every kind of case.
            for v in (variants[i % 2], variants[2]):
                with self.subTest(case=os.path.basename(path), listener=v[0]):
                    self.run_case(d, path, v)
                    ran += 1
        self.assertGreaterEqual(ran, 2 * 40)


class ScriptedBackend(_RawServer):
    """A raw backend that answers every request head it reads with <parts> (bytes written one
    after the other, <gap> seconds apart), then closes when <close> is true."""

    def __init__(self, parts, gap=0.0, close=False):
        self.parts, self.gap, self.close = parts, gap, close
        self._listen(16)

    def _serve(self, s):
        buf = b""
        s.settimeout(5)
        with s:
            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        d = s.recv(65536)
                        if not d:
                            return
                        buf += d
                    buf = buf[buf.index(b"\r\n\r\n") + 4:]
                    for i, p in enumerate(self.parts):
                        if i and self.gap:
                            time.sleep(self.gap)
                        s.sendall(p)
                    if self.close:
                        return
            except OSError:
                return


class ChunkedResponseTest(dsptest.TestCase):
    """Backends' chunked bodies go through the same strict decoder: a bad one is a 502 when
    nothing was sent yet, else the client connection is closed; never passed on."""

    HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

    def serve(self, parts, gap=0.0):
        self.sb = ScriptedBackend(parts, gap)
        self.addCleanup(self.sb.stop)
        return self.dispatcher(services=[svc("web", self.sb.addr)], routes=[route("*", "web")],
                               workers=1)

    def test_bad_chunk_at_once_is_502(self):
        d = self.serve([])
        for body in (b"3d;\nAAAA\r\n0\r\n\r\n", b"5\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX\r\n0\r\n\r\n",
                     b"0x5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nX : y\r\n\r\n",
                     b"5 \r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\n\n"):
            with self.subTest(body=body):
                self.sb.parts = [self.HEAD + body]
                with Conn(d.port, timeout=5) as c:
                    c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                    r = c.read_response()
                    self.assertJsonError(r, 502, "Bad gateway")

    def test_bad_chunk_later_closes(self):
        d = self.serve([self.HEAD + b"5\r\nhello\r\n", b"3 \r\nabc\r\n0\r\n\r\nSMUGGLED"], gap=0.3)
        with Conn(d.port, timeout=5) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            version, status, _, _ = c.read_head()
            self.assertEqual(status, 200)
            self.assertTrue(c.wait_closed(3), "client connection not closed after a bad chunk")
            self.assertNotIn(b"abc", bytes(c.buf))
            self.assertNotIn(b"SMUGGLED", bytes(c.buf))
            self.assertEqual(bytes(c.buf), b"5\r\nhello\r\n")

    def test_huge_trailer_is_refused_not_waited_for(self):
        """A trailer line larger than the upstream buffer can hold: refused at once (the
        client sees the connection cut), never a wait for response_timeout_ms."""
        self.sb = ScriptedBackend([self.HEAD + b"5\r\nhello\r\n", b"0\r\nX-Big: " + b"a" * 40000 +
                                   b"\r\n\r\n"], gap=0.2)
        self.addCleanup(self.sb.stop)
        d = self.dispatcher(services=[svc("web", self.sb.addr)], routes=[route("*", "web")],
                            workers=1, limits={"max_header_bytes": 65536})
        t0 = time.monotonic()
        with Conn(d.port, timeout=10) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            self.assertEqual(c.read_head()[1], 200)
            self.assertTrue(c.wait_closed(5), "connection not cut")
            self.assertNotIn(b"X-Big", bytes(c.buf))
        self.assertLess(time.monotonic() - t0, 5)

    def test_valid_chunked_relayed_and_decoded(self):
        body = b"5;x=\"y\"\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n"
        d = self.serve([self.HEAD + body[:9], body[9:20], body[20:]], gap=0.05)
        with Conn(d.port, timeout=5) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"hello world"))
            # the connection stays usable
            r = c.request("GET", "/", "a.test")
            self.assertEqual((r.status, r.body), (200, b"hello world"))
        with Conn(d.port, timeout=5) as c:
            c.send(b"GET / HTTP/1.0\r\nHost: a.test\r\n\r\n")
            r = c.read_response()
            self.assertEqual((r.status, r.body), (200, b"hello world"))


class SplitChunkTest(dsptest.TestCase):
    """Chunked request bodies that arrive in pieces: a chunk-size line goes upstream only once
    it is complete and valid, so the bad line of a body that started well never leaves."""

    def setUp(self):
        self.b = RecordingBackend()
        self.addCleanup(self.b.stop)
        self.d = self.dispatcher(services=[svc("web", self.b.addr)], routes=[route("*", "web")],
                                 workers=1)

    def test_valid_body_byte_by_byte(self):
        body = b"5;a=\"b\"\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n"
        with Conn(self.d.port, timeout=5) as c:
            c.send(b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(len(body)):
                c.send(body[i:i + 1])
                time.sleep(0.002)
            r = c.read_response()
            self.assertEqual(r.status, 200)
        time.sleep(0.05)
        got, n = self.b.take()
        self.assertEqual(n, 1)
        self.assertTrue(got.endswith(b"\r\n\r\n" + body), got[-200:])

    def test_pipelined_after_trailers(self):
        """A request pipelined right behind a chunked body's trailers is a request of its own
        (never a trailer, never part of the first message)."""
        body = b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
        with Conn(self.d.port, timeout=10) as c:
            c.send(b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   body + b"GET /second HTTP/1.1\r\nHost: b.test\r\n\r\n")
            self.assertEqual(c.read_response().status, 200)
            self.assertEqual(c.read_response().status, 200)
        got, n = self.b.take()
        self.assertEqual(n, 2, got)
        first, _, second = got.partition(body)
        self.assertTrue(first.startswith(b"POST /up HTTP/1.1\r\n"), got)
        self.assertTrue(second.startswith(b"GET /second HTTP/1.1\r\n"), got)
        self.assertIn(b"\r\nHost: b.test\r\n", second)

    def test_bad_line_after_good_chunk_never_forwarded(self):
        good = b"\r\n\r\n5\r\nhello\r\n"
        for bad in (b"3d;", b"3d;\nAAAA", b"5 ", b"0x"):
            with self.subTest(bad=bad):
                self.b.take()
                with Conn(self.d.port, timeout=10) as c:
                    c.send(b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked"
                           b"\r\n\r\n5\r\nhello\r\n")
                    # the head and the good chunk go upstream
                    self.assertTrue(dsptest.wait_for(lambda: self.b.peek().endswith(good), 10),
                                    self.b.peek()[-100:])
                    for i in range(len(bad)):
                        c.send(bad[i:i + 1])
                        time.sleep(0.05)
                    if not bad.endswith(b"AAAA"):
                        # an incomplete line: nothing of it may leave; finish it badly
                        time.sleep(0.2)
                        self.assertTrue(self.b.peek().endswith(good), self.b.peek()[-100:])
                        c.send(b"\n0\r\n\r\n")
                    r = c.read_response()
                    self.assertJsonError(r, 400, "Bad request")
                time.sleep(0.2)
                got, _ = self.b.take()
                self.assertTrue(got.endswith(good), "bytes of the bad line reached the backend: "
                                "%r" % got[-100:])
