"""gRPC through the dispatcher (issue 14): errors the dispatcher produces are gRPC answers
(trailers-only, HTTP 200, grpc-status/grpc-message) for gRPC clients, `grpc-timeout` is the call's
deadline, trailers travel both ways and 1xx responses reach HTTP/2 clients.

Real peers: a gRPC client and server on python3-grpcio (tests/integration/grpc_peer.py) and a
frame-level HTTP/2 client on python3-h2 (tests/integration/h2_frames.py), both run under
/usr/bin/python3 (Debian's, which has those modules); HTTP/1 backends are small raw-socket
servers in this file. One dispatcher per test, several cases per test.
"""

import json
import os
import socket
import subprocess
import threading
import time
import unittest

import dsptest
from dsptest import route, svc

SYS_PY = "/usr/bin/python3"
HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "grpc_peer.py")
FRAMES = os.path.join(HERE, "h2_frames.py")


def sys_has(module):
    if not os.path.exists(SYS_PY):
        return False
    return subprocess.run([SYS_PY, "-c", "import " + module], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


HAVE_GRPC = sys_has("grpc")
HAVE_H2 = sys_has("h2")


def grpc_call(port, authority, case, arg="", timeout=30):
    p = subprocess.run([SYS_PY, PEER, "client", "127.0.0.1:%d" % port, authority, case, arg],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError("grpc client failed: %s" % p.stderr.decode()[-2000:])
    return json.loads(p.stdout.decode())


def h2_streams(port, streams, timeout=10):
    """Open <streams> (see h2_frames.py) on one connection; the events of each, in order."""
    spec = json.dumps({"streams": streams, "timeout": timeout})
    p = subprocess.run([SYS_PY, FRAMES, str(port), spec], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout + 20)
    if p.returncode != 0:
        raise AssertionError("h2 client failed: %s" % p.stderr.decode()[-2000:])
    got = json.loads(p.stdout.decode())
    return [got[k] for k in sorted(got, key=int)]


def req(host, path, method="POST", extra=()):
    return [[":method", method], [":scheme", "http"], [":authority", host], [":path", path]] + \
        [list(h) for h in extra]


def grpc_req(host, path="/dsp.Test/Echo", extra=()):
    return req(host, path, extra=[("content-type", "application/grpc"), ("te", "trailers")] +
               list(extra))


def first(events, kind):
    for k, v, t in events:
        if k == kind:
            return v, t
    return None, None


def hdict(pairs):
    return {k: v for k, v in pairs}


class RawBackend:
    """An HTTP/1.1 backend on a raw socket: records each request's bytes (head and body, a
    chunked body read to its end) and answers by path:
      /trailers  a chunked body with a trailer section (and fields that must not pass)
      /hints     103 Early Hints, then 200
      /hang      nothing, until the client goes
      anything else: 200 with the recorded request as the body"""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.requests = []
        self.hung = []
        self._stop = False
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _read_request(c, buf):
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return None, b""
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        low = head.lower()
        if b"transfer-encoding: chunked" in low:
            body = b""

            def need(n):
                nonlocal rest
                while len(rest) < n:
                    d = c.recv(65536)
                    if not d:
                        raise OSError("eof")
                    rest += d

            def line():
                nonlocal rest
                while b"\r\n" not in rest:
                    need(len(rest) + 1)
                ln, _, rest = rest.partition(b"\r\n")
                return ln
            while True:
                ln = line()
                body += ln + b"\r\n"
                size = int(ln.split(b";")[0], 16)
                if size == 0:
                    break
                need(size + 2)
                body += rest[:size + 2]
                rest = rest[size + 2:]
            while True:
                ln = line()
                body += ln + b"\r\n"
                if ln == b"":
                    break
            return head + b"\r\n\r\n" + body, rest
        n = 0
        for line in low.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        while len(rest) < n:
            d = c.recv(65536)
            if not d:
                break
            rest += d
        return head + b"\r\n\r\n" + rest[:n], rest[n:]

    def _serve(self, c):
        buf = b""
        try:
            while True:
                raw, buf = self._read_request(c, buf)
                if raw is None:
                    return
                self.requests.append(raw)
                path = raw.split(b" ")[1]
                if path == b"/trailers":
                    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                              b"Content-Type: text/plain\r\nTrailer: X-Checksum\r\n\r\n"
                              b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n"
                              b"Grpc-Status: 0\r\nContent-Length: 99\r\nConnection: close\r\n"
                              b"Transfer-Encoding: gzip\r\nX-Empty:\r\n\r\n")
                elif path == b"/trailers-big":
                    # 256 KiB of body in 4 KiB chunks, then a 6 KiB trailer section in pieces
                    c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for i in range(64):
                        c.sendall(b"1000\r\n" + bytes([65 + i % 26]) * 4096 + b"\r\n")
                    # (whole lines and pieces of lines, each in a read of its own)
                    lines = [b"0\r\n"] + [b"X-T%d: %s\r\n" % (i, b"v" * 50)
                                           for i in range(110)] + [b"\r\n"]
                    for k in range(0, len(lines), 10):
                        c.sendall(b"".join(lines[k:k + 10]))
                        time.sleep(0.01)
                elif path == b"/empty":
                    # a gRPC trailers-only answer through an HTTP/1.1 backend
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\n"
                              b"Grpc-Status: 5\r\nGrpc-Message: no such thing\r\n"
                              b"Content-Length: 0\r\n\r\n")
                elif path == b"/hints":
                    c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                    time.sleep(0.3)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                elif path == b"/hang":
                    self.hung.append(time.monotonic())
                    c.recv(1)  # until the dispatcher closes it
                    self.hung.append(time.monotonic())
                    return
                else:
                    body = raw
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) +
                              body)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self._stop = True
        self.sock.close()


@unittest.skipUnless(HAVE_H2, "python3-h2 under /usr/bin/python3")
class GrpcErrorsTest(dsptest.TestCase):
    """The dispatcher's own errors, to gRPC clients: trailers-only gRPC answers with the SPEC's
    status mapping; still JSON to other clients."""

    def setUp(self):
        self.raw = RawBackend()
        self.addCleanup(self.raw.stop)
        dead = "127.0.0.1:%d" % dsptest.free_port()
        d = dsptest.Dispatcher(workers=1)
        users = os.path.join(d.tmp, "staff.htpasswd")
        with open(users, "w") as f:  # (a sha512-crypt line: nobody here sends credentials)
            f.write("alice:$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8"
                    "wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/\n")
        mws = ('middlewares = ( { name = "office"; type = "ip_allow"; cidrs = ["10.0.0.0/8"]; },'
               ' { name = "staff"; type = "basic_auth"; realm = "staff"; users_file = "%s"; },'
               ' { name = "maint"; type = "static"; status = 503; body = "down"; },'
               ' { name = "slow"; type = "rate_limit"; average = 1; burst = 1; key = "host"; } );'
               % users)
        d.write_config(dsptest.make_config(
            d.port, d.tmp,
            [svc("gone", dead, retries=0), svc("empty"),
             svc("raw", self.raw.addr, response_timeout_ms=1500)],
            [route("gone.test", "gone"), route("empty.test", "empty"), route("raw.test", "raw"),
             route("office.test", "raw", middlewares=["office"]),
             route("staff.test", "raw", middlewares=["staff"]),
             route("maint.test", "raw", middlewares=["maint"]),
             route("limited.test", "raw", middlewares=["slow"])],
            1, {"max_body_bytes": 100000}, mws))
        self.d = self.start_dispatcher(d)

    def grpc_answer(self, events):
        """The one HEADERS frame (END_STREAM) of a trailers-only answer, as a dict."""
        self.assertEqual([e[0] for e in events], ["response", "end"], events)
        h = hdict(events[0][1])
        self.assertEqual(h[":status"], "200", h)
        self.assertEqual(h["content-type"], "application/grpc", h)
        self.assertNotIn("content-length", h)
        self.assertIn("x-request-id", h)
        return h

    @unittest.skipUnless(HAVE_GRPC, "python3-grpcio under /usr/bin/python3")
    def test_grpc_client_sees_grpc_status(self):
        port = self.d.port
        r = grpc_call(port, "nowhere.test", "echo")
        self.assertEqual(r["code"], "UNIMPLEMENTED", r)              # no route: 12
        self.assertIn("nowhere.test/dsp.Test/Echo", r["details"])
        r = grpc_call(port, "gone.test", "echo")
        self.assertEqual(r["code"], "UNAVAILABLE", r)                # refused (502): 14
        self.assertEqual(r["details"], "The backend refused the connection")
        r = grpc_call(port, "empty.test", "echo")
        self.assertEqual(r["code"], "UNAVAILABLE", r)                # not deployed: 14
        r = grpc_call(port, "gone.test", "big", "200000")
        self.assertEqual(r["code"], "RESOURCE_EXHAUSTED", r)         # 413: 8
        self.assertEqual(self.raw.requests, [])
        # gRPC needs HTTP/2: an HTTP/1 client with a gRPC Content-Type keeps JSON
        r = dsptest.request(self.d.port, "/dsp.Test/Echo", host="nowhere.test", method="POST",
                            headers=[("Content-Type", "application/grpc")], body=b"\0\0\0\0\0")
        self.assertJsonError(r, 404, "Service not found")

    def test_frames_status_mapping_and_deadline(self):
        port = self.d.port
        ev = h2_streams(port, [
            {"headers": grpc_req("nowhere.test")},
            {"headers": grpc_req("gone.test"), "data": ["\0\0\0\0\0"]},
            {"headers": grpc_req("raw.test", extra=[("grpc-timeout", "1.5S")])},
            {"headers": grpc_req("raw.test", extra=[("grpc-timeout", "123456789m")])},
            {"headers": grpc_req("raw.test", "/hang", extra=[("grpc-timeout", "300m")]),
             "data": ["\0\0\0\0\0"]},
            {"headers": grpc_req("raw.test", "/hang", extra=[("grpc-timeout", "0n")])},
            # middlewares' answers
            {"headers": grpc_req("office.test")},
            {"headers": grpc_req("staff.test")},
            {"headers": grpc_req("maint.test")},
            {"headers": grpc_req("limited.test")},
            {"headers": grpc_req("limited.test")},
            # not gRPC: JSON as before
            {"headers": req("nowhere.test", "/x", "GET")},
            {"headers": req("raw.test", "/hang", extra=[("grpc-timeout", "100m")]),
             "data": ["x"]},
        ])
        h = self.grpc_answer(ev[0])
        self.assertEqual((h["grpc-status"], h["grpc-message"]),
                         ("12", "No service for nowhere.test/dsp.Test/Echo"))
        h = self.grpc_answer(ev[1])
        self.assertEqual(h["grpc-status"], "14")
        # a malformed grpc-timeout is refused as grpc-go refuses it: INTERNAL
        for e in ev[2:4]:
            h = self.grpc_answer(e)
            self.assertEqual((h["grpc-status"], h["grpc-message"]),
                             ("13", "Malformed grpc-timeout"))
        # the deadline: DEADLINE_EXCEEDED at 300 ms, not the service's 1.5 s response timeout
        h = self.grpc_answer(ev[4])
        self.assertEqual(h["grpc-status"], "4")
        self.assertIn("deadline", h["grpc-message"])
        t = ev[4][0][2]
        self.assertGreaterEqual(t, 0.28)
        self.assertLess(t, 2.5)
        h = self.grpc_answer(ev[5])                                  # 0: passed at once
        self.assertEqual(h["grpc-status"], "4")
        h = self.grpc_answer(ev.pop(6))                              # ip_allow's 403: 7
        self.assertEqual(h["grpc-status"], "7")
        h = self.grpc_answer(ev.pop(6))                              # basic_auth's 401: 16
        self.assertEqual(h["grpc-status"], "16")
        self.assertEqual(h["www-authenticate"], 'Basic realm="staff"')
        h = self.grpc_answer(ev.pop(6))                              # a static 503: 14
        self.assertEqual(h["grpc-status"], "14")
        passed, limited = ev.pop(6), ev.pop(6)                      # rate_limit's 429: 8
        self.assertEqual(hdict(passed[0][1])[":status"], "200")
        h = self.grpc_answer(limited)
        self.assertEqual(h["grpc-status"], "8")
        self.assertIn("retry-after", h)
        # a plain HTTP/2 request keeps JSON errors, and its grpc-timeout means nothing
        self.assertEqual(hdict(ev[6][0][1])[":status"], "404")
        self.assertEqual(hdict(ev[6][0][1])["content-type"], "application/json")
        self.assertEqual(json.loads(first(ev[6], "data")[0])["error"], "Service not found")
        self.assertEqual(hdict(ev[7][0][1])[":status"], "504")
        self.assertGreater(ev[7][0][2], 1.2)
        # the hung backend connections were dropped when the deadline passed
        dsptest.wait_until(lambda: len(self.raw.hung) == 4, 5, "hung connections closed")


@unittest.skipUnless(HAVE_H2, "python3-h2 under /usr/bin/python3")
class TrailersTest(dsptest.TestCase):
    """Trailers both ways and 1xx responses between HTTP/2 clients and HTTP/1.1 backends."""

    def setUp(self):
        self.raw = RawBackend()
        self.addCleanup(self.raw.stop)
        self.d = self.dispatcher(services=[svc("raw", self.raw.addr)],
                                 routes=[route("raw.test", "raw")], workers=1)

    def test_trailers_and_interim(self):
        ev = h2_streams(self.d.port, [
            # response trailers from a chunked HTTP/1.1 body: a trailing HEADERS frame
            {"headers": req("raw.test", "/trailers", "GET")},
            # request trailers: the body goes upstream chunked, with the trailer section
            {"headers": req("raw.test", "/record"), "data": ["abc", "defg"],
             "trailers": [["x-sum", "42"], ["grpc-status", "0"], ["x_under", "1"]]},
            # with a Content-Length the body is not chunked: HTTP/1.1 has no place for them
            {"headers": req("raw.test", "/record-cl", extra=[("content-length", "3")]),
             "data": ["xyz"], "trailers": [["x-sum", "1"]]},
            # a big body and a trailer section that arrives in pieces
            {"headers": req("raw.test", "/trailers-big", "GET")},
            # 103 Early Hints reaches the client before the response
            {"headers": req("raw.test", "/hints", "GET")},
            # Expect: 100-continue is answered by the dispatcher, never forwarded
            {"headers": req("raw.test", "/record-expect", extra=[("expect", "100-continue")]),
             "data": ["body"]},
            # a response complete with its head ends the stream with its HEADERS frame
            {"headers": req("raw.test", "/empty", "POST"), "data": ["x"]},
            # trailer fields are checked like header fields: no framing in them
            {"headers": req("raw.test", "/record-bad"), "data": ["abc"],
             "trailers": [["content-length", "3"], ["x-ok", "1"]]},
            # too many of them (as for a head): the stream is reset, the backend never gets a
            # complete request
            {"headers": req("raw.test", "/record-many"), "data": ["abc"],
             "trailers": [["x-t%d" % i, "v"] for i in range(200)]},
        ])
        kinds = [e[0] for e in ev[0]]
        self.assertEqual(kinds[0], "response")
        self.assertEqual(kinds[-2:], ["trailers", "end"], ev[0])
        self.assertEqual("".join(e[1] for e in ev[0] if e[0] == "data"), "hello world")
        tr = hdict(first(ev[0], "trailers")[0])
        self.assertEqual(tr, {"x-checksum": "abc123", "grpc-status": "0", "x-empty": ""})
        self.assertNotIn("trailer", hdict(ev[0][0][1]))
        # request trailers, as the backend got them
        self.assertEqual(first(ev[1], "response")[0][0], [":status", "200"])
        got = [r for r in self.raw.requests if r.startswith(b"POST /record ")][0]
        self.assertIn(b"\r\nTransfer-Encoding: chunked\r\n", got)
        self.assertTrue(got.endswith(b"\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n"
                                     b"x-sum: 42\r\ngrpc-status: 0\r\n\r\n"), got)
        got = [r for r in self.raw.requests if r.startswith(b"POST /record-cl ")][0]
        self.assertTrue(got.endswith(b"Content-Length: 3\r\n\r\nxyz"), got)
        big = ev.pop(3)
        body = "".join(e[1] for e in big if e[0] == "data")
        self.assertEqual(body, "".join(chr(65 + i % 26) * 4096 for i in range(64)))
        self.assertEqual([e[0] for e in big][-2:], ["trailers", "end"])
        self.assertEqual(hdict(first(big, "trailers")[0]),
                         {"x-t%d" % i: "v" * 50 for i in range(110)})
        # 103
        self.assertEqual([e[0] for e in ev[3]], ["info", "response", "data", "end"], ev[3])
        info = hdict(ev[3][0][1])
        self.assertEqual((info[":status"], info["link"]), ("103", "</a.css>; rel=preload"))
        self.assertLess(ev[3][0][2] + 0.2, ev[3][1][2])  # before the final head, not with it
        # 100
        self.assertEqual([e[0] for e in ev[4]][:2], ["info", "response"], ev[4])
        self.assertEqual(hdict(ev[4][0][1])[":status"], "100")
        got = [r for r in self.raw.requests if r.startswith(b"POST /record-expect ")][0]
        self.assertNotIn(b"expect:", got.lower())
        self.assertEqual([e[0] for e in ev[5]], ["response", "end"], ev[5])
        self.assertEqual(hdict(ev[5][0][1])["grpc-status"], "5")
        self.assertEqual([e[0] for e in ev[7]], ["reset"], ev[7])
        self.assertFalse([r for r in self.raw.requests if r.startswith(b"POST /record-many ")])
        got = [r for r in self.raw.requests if r.startswith(b"POST /record-bad ")]
        if [e[0] for e in ev[6]] != ["reset"]:  # (nghttp2 may reset the stream itself)
            self.assertTrue(got[0].endswith(b"\r\n3\r\nabc\r\n0\r\nx-ok: 1\r\n\r\n"), got)


class GrpcServer:
    """grpc_peer.py's server (dsp.Test) on an ephemeral port; stop() kills it."""

    def __init__(self):
        self.proc = subprocess.Popen([SYS_PY, PEER, "server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dsptest._record_pid(self.proc.pid)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise AssertionError("grpc server did not start: %r %r"
                                 % (line, self.proc.stderr.read()[-2000:]))
        self.port = int(line.split()[1])
        self.addr = "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@unittest.skipUnless(HAVE_GRPC, "python3-grpcio under /usr/bin/python3")
class GrpcCallsTest(dsptest.TestCase):
    """Real gRPC calls through the dispatcher to a real gRPC server (`protocol = "grpc"`): the
    four kinds of RPC relayed as they flow, metadata and trailers both ways, custom statuses,
    deadlines, and a killed backend."""

    def setUp(self):
        self.srv = GrpcServer()
        self.addCleanup(self.srv.stop)
        self.victim = GrpcServer()
        self.addCleanup(self.victim.stop)
        self.d = self.dispatcher(
            services=[svc("g", self.srv.addr, protocol="grpc", response_timeout_ms=5000),
                      svc("v", self.victim.addr, protocol="grpc", retries=0)],
            routes=[route("grpc.test", "g"), route("victim.test", "v")], workers=1,
            start=False)
        p = subprocess.run([dsptest.MASTER, "-t", "-c", self.d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if p.returncode != 0:
            self.skipTest("no gRPC backends in this build: %s" % p.stdout.decode()[-300:])
        self.start_dispatcher(self.d)

    def call(self, case, arg="", authority="grpc.test"):
        return grpc_call(self.d.port, authority, case, arg)

    def test_calls(self):
        r = self.call("echo", "hello")
        self.assertEqual((r["code"], r["messages"]), ("OK", ["echo:hello"]), r)
        # metadata both ways
        self.assertEqual((r["initial"].get("x-echo-one"), r["initial"].get("x-echo-two")),
                         ("1", "zwei"), r)
        # server streaming, relayed as it flows: message 1 reached the client before the server
        # sent message 2 (it waits for the client's marker)
        marker = os.path.join(self.d.tmp, "marker")
        r = self.call("count", marker)
        self.assertEqual((r["code"], r["messages"]), ("OK", ["msg-0", "msg-1 seen", "msg-2"]), r)
        # client streaming
        r = self.call("sum", "50")
        self.assertEqual((r["code"], r["messages"]), ("OK", ["n=50 bytes=122500"]), r)
        # bidirectional, each message sent only once the answer to the previous one came back
        r = self.call("chat")
        self.assertEqual((r["code"], r["messages"]),
                         ("OK", ["re:m0", "re:m1", "re:m2", "re:m3", "re:m4"]), r)
        # a status of the server's own, its message and trailing metadata reach the client
        r = self.call("fail", "FAILED_PRECONDITION:not now, 100% sure")
        self.assertEqual((r["code"], r["details"]),
                         ("FAILED_PRECONDITION", "not now, 100% sure"), r)
        self.assertEqual(r["trailing"].get("x-trail"), "t-value", r)
        self.assertEqual(r["trailing"].get("x-trail-bin"), "0001ff", r)
        # no route: UNIMPLEMENTED
        r = self.call("echo", authority="nowhere.test")
        self.assertEqual(r["code"], "UNIMPLEMENTED", r)
        # an unknown method is the server's UNIMPLEMENTED, passed on
        r = self.call("method", "/dsp.Test/Nope")
        self.assertEqual(r["code"], "UNIMPLEMENTED", r)
        self.killed_backend()

    def test_deadline(self):
        cancelled = os.path.join(self.d.tmp, "cancelled")
        t0 = time.monotonic()
        r = self.call("sleep", "4000:0.5:" + cancelled)
        self.assertEqual(r["code"], "DEADLINE_EXCEEDED", r)
        self.assertLess(time.monotonic() - t0, 3.0)
        # the backend's stream was ended too, long before its 4 s
        dsptest.wait_until(lambda: os.path.exists(cancelled), 2.5, "the server saw the cancel")
        # the dispatcher's own deadline (grpc-timeout, no deadline in the client): the server
        # sent its headers at once, so the call ends as a server ends it, DEADLINE_EXCEEDED in
        # the trailers, and the backend's stream is cancelled
        cancelled2 = cancelled + "2"
        ev = h2_streams(self.d.port, [{
            "headers": grpc_req("grpc.test", extra=[("grpc-timeout", "300m"),
                                                    ("x-sleep-ms", "4000"),
                                                    ("x-cancelled-file", cancelled2)]),
            "data": ["\0\0\0\0\x02zz"]}])[0]
        self.assertEqual([e[0] for e in ev], ["response", "trailers", "end"], ev)
        self.assertEqual(hdict(ev[1][1])["grpc-status"], "4")
        self.assertGreaterEqual(ev[1][2], 0.28)
        self.assertLess(ev[1][2], 2.5)
        dsptest.wait_until(lambda: os.path.exists(cancelled2), 2.5, "the server saw the cancel")
        # within the deadline all is well
        r = self.call("sleep", "100:5")
        self.assertEqual((r["code"], r["messages"]), ("OK", ["echo:zz"]), r)

    def killed_backend(self):
        r = self.call("echo", "x", authority="victim.test")
        self.assertEqual(r["code"], "OK", r)
        # killed in the middle of a call whose response began: UNAVAILABLE in the trailers, as
        # a server that goes away would say (not a reset, which clients report as INTERNAL)
        started = os.path.join(self.d.tmp, "started")
        p = subprocess.Popen([SYS_PY, PEER, "client", "127.0.0.1:%d" % self.d.port,
                              "victim.test", "sleep", "5000:10::" + started],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dsptest.wait_until(lambda: os.path.exists(started), 10, "the call under way")
        self.victim.stop()
        out, err = p.communicate(timeout=30)
        r = json.loads(out.decode())
        self.assertEqual((r["code"], r["details"]), ("UNAVAILABLE", "The backend closed the stream"),
                         r)
        self.assertLess(r["elapsed"], 4.0)
        # and once it is gone
        r = self.call("echo", "x", authority="victim.test")
        self.assertEqual(r["code"], "UNAVAILABLE", r)
        r = self.call("echo", "x", authority="victim.test")
        self.assertEqual(r["code"], "UNAVAILABLE", r)
        # a service with protocol = "grpc" answers any HTTP/2 request with gRPC errors...
        ev = h2_streams(self.d.port, [{"headers": req("victim.test", "/x", "GET")}])[0]
        self.assertEqual([e[0] for e in ev], ["response", "end"], ev)
        h = hdict(ev[0][1])
        self.assertEqual((h[":status"], h["grpc-status"]), ("200", "14"), h)
        # ... and an HTTP/1 client with JSON (gRPC needs HTTP/2)
        r = dsptest.request(self.d.port, "/x", host="victim.test")
        self.assertIn(r.status, (502, 503))
        self.assertJsonError(r, r.status)


@unittest.skipUnless(HAVE_H2, "python3-h2 under /usr/bin/python3")
class H2BackendTrailersTest(dsptest.TestCase):
    """An HTTP/2 client's request trailers reach an HTTP/2 backend as a trailing HEADERS frame
    (h2_server.py logs them), checked like header fields."""

    def test_request_trailers_to_h2_backend(self):
        from test_h2_backend import H2Server
        d = self.dispatcher(services=[], routes=[], workers=1, start=False)
        be = H2Server(d.tmp)
        self.addCleanup(be.stop)
        d.write_config(dsptest.make_config(d.port, d.tmp, [svc("h2", be.addr, protocol="h2")],
                                           [route("h2.test", "h2")], 1))
        p = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if p.returncode != 0:
            self.skipTest("no HTTP/2 backends in this build")
        self.start_dispatcher(d)
        ev = h2_streams(d.port, [
            {"headers": req("h2.test", "/echo"), "data": ["abc", "de"],
             "trailers": [["x-sum", "42"], ["x_under", "1"], ["grpc-status", "0"]]},
            {"headers": req("h2.test", "/echo", extra=[("content-length", "3")]),
             "data": ["xyz"], "trailers": [["x-cl", "1"]]}])
        for e in ev:
            self.assertEqual(hdict(e[0][1])[":status"], "200", e)
        got = {r["headers"].get("content-length", "-"): r for r in be.requests()}
        self.assertEqual(got["-"]["body_len"], 5)
        self.assertEqual(got["-"]["trailers"], [["x-sum", "42"], ["grpc-status", "0"]])
        self.assertEqual(got["3"]["trailers"], [["x-cl", "1"]])  # (HTTP/2 carries them both ways)
