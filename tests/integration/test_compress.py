"""The compress middleware (issue 15): gzip and brotli chosen by Accept-Encoding, decoded by curl
--compressed and compared byte for byte with the backend's body (Content-Length, chunked and
close-delimited backend responses; HTTP/1.1, HTTP/1.0 and HTTP/2 clients); the head it rewrites
(Content-Encoding, no Content-Length, Vary merged, weak ETag); what it leaves alone (encoded,
no-transform, tiny, 206, other types, HEAD/204/304, clients that do not accept it); a 100 MiB
response streamed with bounded worker memory; a slow event stream still arriving event by event
when compressed; bad settings refused with FILE:LINE."""

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import zlib

import dsptest
from dsptest import Conn, svc, route

MIB = 1 << 20
BIG = 100 * MIB
BIG_BR = 24 * MIB
RSS_GROWTH_KIB = 8 * 1024          # worker VmRSS growth allowed while 100 MiB stream through
RSS_GROWTH_SAN_KIB = 64 * 1024     # (sanitizer build: shadow memory and quarantine count)


def body_of(n, seed=0):
    """<n> bytes of compressible JSON-ish text, the same for the same (n, seed)."""
    out, i = [], 0
    size = 0
    while size < n:
        piece = b'{"id": %d, "name": "item-%d", "tags": ["a", "b"], "ok": true},\n' % (
            i + seed, (i * 7919 + seed) % 1000)
        out.append(piece)
        size += len(piece)
        i += 1
    return b"".join(out)[:n]


class CompressBackend:
    """A raw-socket HTTP/1.1 backend: GET /<kind>?n=N answers N bytes of body_of(N) in the
    framing and with the fields <kind> names; keep-alive where the framing allows."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.sse_seen = threading.Event()   # the client side saw the last event sent
        self.release = threading.Event()    # /hold answers end
        self.closed = False
        self.big = body_of(64 * 1024, seed=7)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, target = line.split()[0].decode(), line.split()[1].decode()
                hdrs = {}
                while True:
                    h = f.readline()
                    if h in (b"\r\n", b""):
                        break
                    k, _, v = h.decode().partition(":")
                    hdrs[k.strip().lower()] = v.strip()
                if not self._answer(c, method, target, hdrs):
                    return
        except OSError:
            return
        finally:
            c.close()

    def _answer(self, c, method, target, hdrs):
        path, _, q = target.partition("?")
        args = dict(a.partition("=")[::2] for a in q.split("&") if a)
        n = int(args.get("n", 5000))
        kind = path.strip("/")
        head_only = method == "HEAD"
        ae = hdrs.get("accept-encoding", "-")
        base = [b"HTTP/1.1 200 OK", b"X-Seen-AE: " + ae.encode()]
        ctype = b"Content-Type: application/json"
        body = body_of(n)
        if kind == "big":
            return self._big(c, n, chunked="chunked" in args)
        if kind == "sse":
            return self._sse(c, hdrs)
        if kind == "hold":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body + b"\r\n")
            self.release.wait(30)
            c.sendall(b"0\r\n\r\n")
            return True
        extra = []
        status = None
        if kind == "encoded":
            extra = [b"Content-Encoding: gzip"]
            body = zlib.compress(body)
        elif kind == "notransform":
            extra = [b"Cache-Control: public, no-transform"]
        elif kind == "png":
            ctype = b"Content-Type: image/png"
        elif kind == "notype":
            ctype = None
        elif kind == "html":
            ctype = b"Content-Type: text/html; charset=utf-8"
        elif kind == "range":
            status = b"HTTP/1.1 206 Partial Content"
            extra = [b"Content-Range: bytes 0-%d/%d" % (n - 1, 2 * n)]
        elif kind == "vary":
            extra = [b"Vary: Origin", b'ETag: "v1"']
        elif kind == "varyae":
            extra = [b"Vary: accept-encoding", b'ETag: W/"v2"']
        elif kind in ("204", "304"):
            status = b"HTTP/1.1 %s X" % kind.encode()
            body = b""
        head = [status or base[0], base[1]] + ([ctype] if ctype else []) + extra
        if kind == "chunked" or kind == "html":
            head.append(b"Transfer-Encoding: chunked")
            c.sendall(b"\r\n".join(head) + b"\r\n\r\n")
            if head_only:
                return True
            for k in range(0, len(body), 7001):
                p = body[k:k + 7001]
                c.sendall(b"%x\r\n" % len(p) + p + b"\r\n")
            c.sendall(b"0\r\n\r\n")
            return True
        if kind == "close":
            head.append(b"Connection: close")
            c.sendall(b"\r\n".join(head) + b"\r\n\r\n" + (b"" if head_only else body))
            return False
        if kind != "204":
            head.append(b"Content-Length: %d" % len(body))
        c.sendall(b"\r\n".join(head) + b"\r\n\r\n"
                  + (b"" if head_only or kind in ("204", "304") else body))
        return True

    def _big(self, c, n, chunked):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: %d\r\n\r\n" % n
        c.sendall(head)
        left = n
        while left > 0:
            p = self.big[:min(left, len(self.big))]
            c.sendall(b"%x\r\n" % len(p) + p + b"\r\n" if chunked else p)
            left -= len(p)
        if chunked:
            c.sendall(b"0\r\n\r\n")
        return True

    def _sse(self, c, hdrs):
        """Five events, each sent only once the client saw the one before (or 10 s passed:
        then the test fails on what it saw)."""
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                  b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(5):
            self.sse_seen.clear()
            ev = b"id: %d\ndata: event number %d %s\n\n" % (i, i, b"x" * 40)
            c.sendall(b"%x\r\n" % len(ev) + ev + b"\r\n")
            self.sse_seen.wait(10)
        c.sendall(b"0\r\n\r\n")
        return True


GZ = ('middlewares = ( { name = "gz"; type = "compress"; min_bytes = 1024; '
      'types = ["text/*", "application/json"]; } );')


def fetch(port, path, *args, host="gz.do", compressed=True):
    """(status, head fields as a dict of lists, body) of GET <path> through curl (decoded when
    <compressed>)."""
    cmd = ["curl", "-s", "-S", "--max-time", "60", "-D", "/dev/stderr", "-o", "-",
           "-H", "Host: " + host] + (["--compressed"] if compressed else []) + list(args) + \
          ["http://127.0.0.1:%d%s" % (port, path)]
    p = subprocess.run(cmd, capture_output=True, timeout=90)
    if p.returncode != 0:
        raise AssertionError("curl %s failed (%d): %s" % (cmd, p.returncode, p.stderr[-500:]))
    lines = p.stderr.decode("latin-1").split("\r\n")
    status = None
    fields = {}
    for line in lines:
        if line.startswith("HTTP/"):
            status = int(line.split()[1])
            fields = {}
        elif ":" in line:
            k, _, v = line.partition(":")
            fields.setdefault(k.strip().lower(), []).append(v.strip())
    return status, fields, p.stdout


class CompressTest(dsptest.TestCase):

    def setUp(self):
        self.be = CompressBackend()
        self.addCleanup(self.be.stop)

    def start(self, workers=1, mw=GZ):
        d = self.dispatcher([svc("b", self.be.addr)],
                            [route("gz.do", "b", middlewares=["gz"]), route("plain.do", "b")],
                            workers=workers, extra=mw, start=False)
        # with an admin HTTP listener, for /metrics
        d.admin_port = dsptest.free_port()
        sock = 'admin = { socket = "%s"; };' % os.path.join(d.tmp, "admin.sock")
        text = open(d.conf).read()
        self.assertIn(sock, text)
        d.write_config(text.replace(sock, 'admin = { socket = "%s"; http = "127.0.0.1:%d"; };'
                                    % (os.path.join(d.tmp, "admin.sock"), d.admin_port)))
        return self.start_dispatcher(d)

    def metrics(self, d):
        """The compress lines of /metrics: {line without its value: value}."""
        with socket.create_connection(("127.0.0.1", d.admin_port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            text = dsptest.read_to_eof(s).decode("latin-1")
        return {k: int(v) for k, _, v in (l.rpartition(" ") for l in text.splitlines()
                                          if l.startswith("dispatcher_compress"))}

    def test_round_trips(self):
        """gzip and br, every backend framing, every client protocol: decoded bytes are the
        backend's, the head says what was done."""
        d = self.start()
        n = 50000
        want = body_of(n)
        for kind in ("json", "chunked", "close"):
            for ae in ("gzip", "br", "gzip;q=0.5, br;q=0.4", "deflate, gzip, br"):
                for proto in ("--http1.1", "--http1.0", "--http2-prior-knowledge"):
                    st, f, body = fetch(d.port, "/%s?n=%d" % (kind, n), proto,
                                        "-H", "Accept-Encoding: " + ae)
                    what = "%s %s %s" % (kind, ae, proto)
                    enc = "gzip" if ae.startswith("gzip") else "br"
                    self.assertEqual(st, 200, what)
                    self.assertEqual(f.get("content-encoding"), [enc], what)
                    self.assertNotIn("content-length", f, what)
                    self.assertEqual(f.get("vary"), ["Accept-Encoding"], what)
                    self.assertEqual(len(body), n, what)
                    self.assertTrue(body == want, what + ": decoded body differs")
                    if proto == "--http1.1":
                        self.assertEqual(f.get("transfer-encoding"), ["chunked"], what)
                    if proto == "--http1.0":
                        self.assertEqual(f.get("connection"), ["close"], what)
        # The compressed size is the encoder's, and the encoding is real (not identity).
        st, f, raw = fetch(d.port, "/json?n=%d" % n, "-H", "Accept-Encoding: gzip",
                           compressed=False)
        self.assertLess(len(raw), n // 4)
        self.assertEqual(zlib.decompress(raw, 31), want)
        # The backend still sees the client's Accept-Encoding (it may compress by itself).
        self.assertEqual(f.get("x-seen-ae"), ["gzip"])
        # Keep-alive holds across compressed responses, both sides (one connection each).
        with Conn(d.port) as c:
            for i in range(3):
                r = c.request("GET", "/chunked?n=%d" % (3000 + i), host="gz.do",
                              headers=[("Accept-Encoding", "gzip")])
                self.assertEqual(r.status, 200)
                self.assertEqual(zlib.decompress(r.body, 31), body_of(3000 + i))
        # Vary merged with the backend's, a strong ETag made weak, a weak one kept.
        st, f, body = fetch(d.port, "/vary?n=5000", "-H", "Accept-Encoding: br")
        self.assertEqual(f.get("vary"), ["Origin, Accept-Encoding"])
        self.assertEqual(f.get("etag"), ['W/"v1"'])
        self.assertEqual(body, body_of(5000))
        st, f, body = fetch(d.port, "/varyae?n=5000", "-H", "Accept-Encoding: gzip")
        self.assertEqual(f.get("vary"), ["accept-encoding"])
        self.assertEqual(f.get("etag"), ['W/"v2"'])
        self.assertEqual(f.get("content-encoding"), ["gzip"])
        # text/* matches text/html with parameters.
        st, f, body = fetch(d.port, "/html?n=5000", "-H", "Accept-Encoding: gzip")
        self.assertEqual(f.get("content-encoding"), ["gzip"])
        self.assertEqual(body, body_of(5000))
        # /metrics: responses per coding, bytes in and out (counted before the last bytes go).
        m = self.metrics(d)
        lab = 'dispatcher_compress_total{middleware="gz",encoding="%s"}'
        print("metrics: %s" % m)
        self.assertEqual(m[lab % "br"], 3 * 3 * 2 + 1)           # the loop, /vary
        self.assertEqual(m[lab % "gzip"], 3 * 3 * 2 + 1 + 3 + 2)  # + raw, keep-alive, varyae, html
        bytes_in = m['dispatcher_compress_bytes_total{middleware="gz",direction="in"}']
        bytes_out = m['dispatcher_compress_bytes_total{middleware="gz",direction="out"}']
        self.assertEqual(bytes_in, 37 * n + 3000 + 3001 + 3002 + 3 * 5000)
        self.assertLess(bytes_out, bytes_in // 4)

    def test_left_alone(self):
        """Responses that must not be compressed pass byte for byte with their own head."""
        d = self.start()
        n = 5000
        cases = [
            ("/encoded?n=%d" % n, "gzip", "already encoded"),
            ("/notransform?n=%d" % n, "gzip", "no-transform"),
            ("/json?n=1023", "gzip", "below min_bytes"),
            ("/range?n=%d" % n, "gzip", "206"),
            ("/png?n=%d" % n, "gzip", "image/png not listed"),
            ("/notype?n=%d" % n, "gzip", "no Content-Type"),
            ("/json?n=%d" % n, "identity", "identity only"),
            ("/json?n=%d" % n, "gzip;q=0, br;q=0", "both refused"),
            ("/json?n=%d" % n, "compress, zstd", "no coding we have"),
            ("/json?n=%d" % n, "", "no Accept-Encoding"),
        ]
        for path, ae, what in cases:
            for proto in ("--http1.1", "--http2-prior-knowledge"):
                args = [proto] + (["-H", "Accept-Encoding: " + ae] if ae else
                                  ["-H", "Accept-Encoding:"])
                st, f, raw = fetch(d.port, path, *args, compressed=False)
                self.assertNotIn("content-encoding" if "encoded" not in what else "x",
                                 f, what)
                if "encoded" in what:
                    self.assertEqual(f.get("content-encoding"), ["gzip"], what)
                    self.assertEqual(zlib.decompress(raw), body_of(n), what)
                else:
                    self.assertEqual(raw, body_of(len(raw)), what)
                    if what != "206":
                        self.assertEqual(len(raw), 1023 if "min" in what else n, what)
                if what in ("identity only", "both refused", "no coding we have",
                            "no Accept-Encoding"):
                    # a response we would compress for others still tells caches so
                    self.assertEqual(f.get("vary"), ["Accept-Encoding"], what)
                    self.assertEqual(f.get("content-length"), [str(n)], what)
                elif what != "206":
                    self.assertNotIn("vary", f, what)
        # br refused, gzip taken
        st, f, body = fetch(d.port, "/json?n=%d" % n, "-H", "Accept-Encoding: br;q=0, *")
        self.assertEqual(f.get("content-encoding"), ["gzip"])
        # 204 and 304 carry no body: their heads go as they are.
        for path, code in (("/204", 204), ("/304", 304)):
            with Conn(d.port) as c:
                r = c.request("GET", path, host="gz.do", headers=[("Accept-Encoding", "gzip")])
                self.assertEqual(r.status, code)
                self.assertIsNone(r.header("content-encoding"), path)
                self.assertIsNone(r.header("vary"), path)
                self.assertEqual(r.body, b"")
        # HEAD gets the head a GET would get (RFC 9110 9.3.2), and no body.
        for proto in ("--http1.1", "--http2-prior-knowledge"):
            p = subprocess.run(["curl", "-s", "-S", "-I", proto, "-H", "Host: gz.do", "-H",
                                "Accept-Encoding: gzip", "http://127.0.0.1:%d/vary?n=5000"
                                % d.port], capture_output=True, timeout=30)
            head = p.stdout.decode("latin-1").lower()
            self.assertIn("content-encoding: gzip", head, proto)
            self.assertIn("vary: origin, accept-encoding", head, proto)
            self.assertIn('etag: w/"v1"', head, proto)
            self.assertNotIn("content-length", head, proto)
        with Conn(d.port) as c:
            r = c.request("HEAD", "/json?n=5000", host="gz.do", headers=[("Accept-Encoding", "br")])
            self.assertEqual((r.status, r.body, r.header("content-encoding")), (200, b"", "br"))
            r = c.request("GET", "/json?n=5000", host="gz.do")
            self.assertEqual((r.status, r.body), (200, body_of(5000)))   # the connection goes on
        # A route without the middleware is never compressed.
        st, f, raw = fetch(d.port, "/json?n=%d" % n, "-H", "Accept-Encoding: gzip",
                           host="plain.do", compressed=False)
        self.assertNotIn("content-encoding", f)
        self.assertNotIn("vary", f)
        self.assertEqual(raw, body_of(n))

    @dsptest.timeout(120)
    def test_big_bounded_memory(self):
        """100 MiB of compressible text (gzip; 24 MiB for brotli): decoded exactly, while the
        worker's RSS stays within a few MiB of its idle size."""
        d = self.start()
        pid = d.worker_pids()[0]
        # warm up: buffers and encoders once, so the baseline holds the steady state
        fetch(d.port, "/big?n=%d" % MIB, "-H", "Accept-Encoding: gzip")
        fetch(d.port, "/big?n=%d" % MIB, "-H", "Accept-Encoding: br")
        base = dsptest.rss_kib(pid)
        # gzip: 100 MiB from a chunked backend; brotli (slower to encode): 24 MiB with a
        # Content-Length, still far beyond any buffer
        for ae, size, q in (("gzip", BIG, "n=%d&chunked" % BIG), ("br", BIG_BR, "n=%d" % BIG_BR)):
            want = hashlib.sha256()
            left = size
            while left > 0:
                p = self.be.big[:min(left, len(self.be.big))]
                want.update(p)
                left -= len(p)
            sampler = dsptest.RssSampler([pid])
            cmd = ["curl", "-s", "-S", "--max-time", "100", "--compressed", "-H", "Host: gz.do",
                   "-H", "Accept-Encoding: " + ae, "http://127.0.0.1:%d/big?%s" % (d.port, q)]
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            h = hashlib.sha256()
            got = 0
            while True:
                b = p.stdout.read(1 << 20)
                if not b:
                    break
                h.update(b)
                got += len(b)
            p.wait()
            peak = sampler.stop()[pid]
            growth = peak - base
            print("%s: %d MiB, worker VmRSS idle %d KiB, peak %d KiB (+%d)"
                  % (ae, size >> 20, base, peak, growth))
            self.assertEqual(p.returncode, 0)
            self.assertEqual(got, size, ae)
            self.assertEqual(h.hexdigest(), want.hexdigest(), ae)
            self.assertLess(growth, RSS_GROWTH_SAN_KIB if dsptest.SANITIZED else RSS_GROWTH_KIB,
                            "%s: worker RSS grew by %d KiB" % (ae, growth))

    def test_encoder_memory_budget(self):
        """Many slow compressed streams at once: past brotli's share of the worker's encoder
        budget a brotli client gets gzip (a tenth of the memory), and brotli again once they
        are over."""
        d = self.start()
        n = 60
        conns, encs = [], []
        try:
            for i in range(n):
                c = Conn(d.port, timeout=20)
                conns.append(c)
                c.send(b"GET /hold?n=4000 HTTP/1.1\r\nHost: gz.do\r\n"
                       b"Accept-Encoding: br, gzip\r\n\r\n")
                _, status, _, fields = c.read_head()
                self.assertEqual(status, 200)
                encs.append(dict((k.lower(), v) for k, v in fields).get("content-encoding"))
        finally:
            self.be.release.set()
        br, gz = encs.count("br"), encs.count("gzip")
        print("%d slow streams: %d br, %d gzip" % (n, br, gz))
        self.assertEqual(br + gz, n, encs)
        self.assertGreaterEqual(br, 16)
        self.assertLessEqual(br, 24)
        self.assertEqual(encs[:br], ["br"] * br)   # the first ones got brotli, then gzip
        for c, enc in zip(conns, encs):
            body = _read_chunked(c)
            if enc == "gzip":
                self.assertEqual(zlib.decompress(body, 31), body_of(4000))
            c.close()
        self.be.release.clear()
        self.be.release.set()
        st, f, body = fetch(d.port, "/hold?n=4000", "-H", "Accept-Encoding: br, gzip")
        self.assertEqual(f.get("content-encoding"), ["br"])
        self.assertEqual(body, body_of(4000))

    def test_event_stream_not_held(self):
        """An event stream, compressed, reaches the client event by event: the backend sends
        the next event only once the client decoded the one before."""
        d = self.start()
        for ae in ("gzip", "br"):
            if ae == "br" and not _has_brotli():
                continue
            with Conn(d.port, timeout=15) as c:
                c.send(b"GET /sse HTTP/1.1\r\nHost: gz.do\r\nAccept-Encoding: %s\r\n\r\n"
                       % ae.encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    head += c.sock.recv(65536)
                head, _, rest = head.partition(b"\r\n\r\n")
                self.assertIn(b"Content-Encoding: " + ae.encode(), head)
                dec = _decoder(ae)
                text = b""
                raw = rest
                deadline = time.monotonic() + 20
                for i in range(5):
                    want = b"data: event number %d " % i
                    while want not in text:
                        self.assertLess(time.monotonic(), deadline,
                                        "%s: event %d never arrived (got %r)" % (ae, i, text))
                        data, raw = _dechunk(raw)
                        text += dec(data)
                        if want in text:
                            break
                        more = c.sock.recv(65536)
                        self.assertTrue(more, "%s: connection closed before event %d" % (ae, i))
                        raw += more
                    self.be.sse_seen.set()
                self.assertEqual(text.count(b"data: "), 5)


def _has_brotli():
    try:
        import brotli  # noqa: F401
        return True
    except ImportError:
        pass
    # Debian's python3-brotli, for a python3 of the same version installed elsewhere (pyenv)
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import brotli  # noqa: F401,F811
        return True
    except ImportError:
        return False
    finally:
        sys.path.remove("/usr/lib/python3/dist-packages")


def _decoder(ae):
    if ae == "gzip":
        z = zlib.decompressobj(31)
        return z.decompress
    import brotli
    b = brotli.Decompressor()
    return b.process


def _dechunk(raw):
    """The data of the complete chunks at the start of <raw>, and what is left."""
    out = b""
    while True:
        line, sep, rest = raw.partition(b"\r\n")
        if not sep:
            return out, raw
        size = int(line.split(b";")[0], 16)
        if size == 0 or len(rest) < size + 2:
            return out, raw
        out += rest[:size]
        raw = rest[size + 2:]


class CompressConfigTest(dsptest.TestCase):

    def test_config_errors(self):
        """Each bad compress setting is a FILE:LINE error of -t."""
        tmp = dsptest.tempfile.mkdtemp(prefix="dsp-it-")
        conf = os.path.join(tmp, "dispatcher.conf")
        with open(conf, "w") as f:
            f.write("""listeners = ( { address = "127.0.0.1:1"; } );
services = ( { name = "s"; backends = ["127.0.0.1:9"]; } );
middlewares = (
  { name = "ok"; type = "compress"; },
  { name = "a"; type = "compress"; level = 0; },
  { name = "b"; type = "compress"; level = 10; },
  { name = "c"; type = "compress"; br_quality = 12; },
  { name = "d"; type = "compress"; min_bytes = -1; },
  { name = "e"; type = "compress"; types = ["text"]; },
  { name = "f"; type = "compress"; types = []; },
  { name = "g"; type = "compress"; encodings = ["gzip", "zstd"]; },
  { name = "h"; type = "compress"; encodings = []; },
  { name = "i"; type = "compress"; levle = 5; },
  { name = "j"; type = "compress"; types = ["text/h*ml"]; },
  { name = "k"; type = "compress"; level = "6"; }
);
routes = ( { host = "*"; service = "s"; middlewares = ["ok"]; } );
""")
        p = subprocess.run([dsptest.MASTER, "-t", "-c", conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=20)
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, err)
        for line, what in [(5, "level"), (6, "level"), (7, "br_quality"), (8, "min_bytes"),
                           (9, "not a media type"), (10, "at least one media type"),
                           (11, "zstd"), (12, "encodings"), (13, "unknown key 'levle'"),
                           (14, "text/h*ml"), (15, "level")]:
            found = [l for l in err.splitlines() if l.startswith("%s:%d:" % (conf, line))]
            self.assertTrue(any(what in l for l in found), "line %d, %s: %r\n%s"
                            % (line, what, found, err))
        self.assertFalse([l for l in err.splitlines() if l.startswith("%s:4:" % conf)], err)


def _read_chunked(c):
    """The rest of a chunked body on Conn <c> (its head already read)."""
    out = []
    while True:
        size = int(c._line().split(b";")[0].strip(), 16)
        if size == 0:
            while c._line() != b"":
                pass
            return b"".join(out)
        c._take(size, None, out)
        c._line()


class CompressRedisTest(dsptest.TestCase):

    @dsptest.timeout(60)
    def test_compress_from_redis(self):
        """A compress middleware from a `middleware:{name}` hash (lists comma-separated) on a
        Redis route; a bad setting there is refused with the key named, nothing applied."""
        import test_redis as tr
        tmp = dsptest.tempfile.mkdtemp(prefix="dsp-it-redis-")
        dsptest._record_tmp(tmp)
        r = tr.Redis(tmp).start()
        self.addCleanup(r.stop)
        be = CompressBackend()
        self.addCleanup(be.stop)
        d = self.dispatcher(services=[svc("gw", be.addr)], routes=[route("gw.do", "gw")],
                            workers=1, extra=tr.redis_block(r))
        self.assertTrue(tr.wait_log(d, r"connected; following"))
        env = "production"
        r.cli("HSET", "dispatcher:%s:middleware:gz" % env, "type", "compress",
              "types", "text/plain, application/json", "level", "9", "min_bytes", "100",
              "encodings", "gzip")
        r.cli("SADD", "dispatcher:%s:middlewares" % env, "gz")
        tr.add_service(r, env, "api", [be.addr])
        tr.add_route(r, env, "a", host="a.do", service="api", middlewares="gz")
        tr.publish(r, env)
        self.assertIsNotNone(tr.wait_all([d.port], "a.do", 200, timeout_s=5, path="/json?n=10"),
                             d.log_tail())
        st, f, body = fetch(d.port, "/json?n=500", "-H", "Accept-Encoding: br, gzip",
                            host="a.do")
        self.assertEqual(f.get("content-encoding"), ["gzip"])   # encodings = gzip only
        self.assertEqual(body, body_of(500))
        st, f, body = fetch(d.port, "/json?n=99", "-H", "Accept-Encoding: gzip", host="a.do")
        self.assertNotIn("content-encoding", f)                  # min_bytes = 100
        applied = d.log().count("applied as generation")
        r.cli("HSET", "dispatcher:%s:middleware:gz" % env, "level", "12")
        tr.publish(r, env)
        self.assertTrue(tr.wait_log(d, r"\[error\].*redis dispatcher:production:middleware:gz: "
                                       r".*level", 3), d.log_tail())
        self.assertEqual(d.log().count("applied as generation"), applied)
        st, f, body = fetch(d.port, "/json?n=500", "-H", "Accept-Encoding: gzip", host="a.do")
        self.assertEqual(f.get("content-encoding"), ["gzip"])    # the last good one serves


class CompressH2BackendTest(dsptest.TestCase):

    def test_h2_backend(self):
        """Bodies from an HTTP/2 backend (DATA frames, with or without content-length) are
        compressed like HTTP/1 ones for every client protocol; `types = ["*"]` takes a
        response without Content-Type too, but never gRPC (it compresses its own messages)."""
        import test_h2_backend as hb
        if not hb.have_h2():
            self.skipTest("needs /usr/bin/python3 with h2 (Debian python3-h2)")
        tmp = dsptest.tempfile.mkdtemp(prefix="dsp-it-")
        dsptest._record_tmp(tmp)
        srv = hb.H2Server(tmp)
        self.addCleanup(srv.stop)
        d = self.dispatcher([svc("b", srv.addr, protocol="h2")],
                            [route("gz.do", "b", middlewares=["gz"])], workers=1,
                            extra='middlewares = ( { name = "gz"; type = "compress"; '
                                  'types = ["*"]; } );')
        n = 300000
        want = (bytes(range(256)) * 64 * 20)[:n]   # h2_server.py's pattern()
        for q in ("n=%d" % n, "n=%d&nolen" % n):
            for proto in ("--http1.1", "--http1.0", "--http2-prior-knowledge"):
                for ae in ("gzip", "br"):
                    st, f, body = fetch(d.port, "/big?" + q, proto, "-H", "Accept-Encoding: " + ae)
                    what = "%s %s %s" % (q, proto, ae)
                    self.assertEqual(st, 200, what)
                    self.assertEqual(f.get("content-encoding"), [ae], what)
                    self.assertNotIn("content-length", f, what)
                    self.assertTrue(body == want, what + ": decoded body differs")
        for proto in ("--http1.1", "--http2-prior-knowledge"):
            st, f, body = fetch(d.port, "/trailers", proto, "-H", "Accept-Encoding: gzip",
                                compressed=False)
            self.assertEqual((st, body), (200, b"body"), proto)
            self.assertNotIn("content-encoding", f, proto)
