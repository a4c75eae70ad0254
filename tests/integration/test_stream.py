"""Long-lived streams (issue: real client addresses and long-lived streams): PROXY protocol v1
and v2, trusted X-Forwarded-For, WebSocket tunnels through reloads, SSE delivered as it comes."""

# Timing assertions or CPU-heavy streams: run alone (see run.py).
DSP_SERIAL = True

import shutil
import socket
import ssl
import struct
import subprocess
import time

import dsptest
import wsutil
from dsptest import Conn, free_port, request, route, svc


def pp2_header(src, sport, dst, dport):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    addr = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addr)) + addr


class ProxyProtocolTest(dsptest.TestCase):

    def setUp(self):
        self.b = self.backend("web")

    def start_pp(self):
        """A dispatcher whose only listener speaks the PROXY protocol."""
        port = free_port()
        d = dsptest.Dispatcher(port=port)
        conf = dsptest.make_config(port, d.tmp, [svc("web", self.b)], [route("*", "web")])
        conf = conf.replace('{ address = "127.0.0.1:%d"; }' % port,
                            '{ address = "127.0.0.1:%d"; proxy_protocol = true; }' % port)
        d.write_config(conf)
        self.start_dispatcher(d, wait=False)
        ok = dsptest.wait_for(lambda: self._accepts(port), 10)
        self.assertTrue(ok, "proxy_protocol listener not accepting:\n" + d.log_tail())
        return d

    @staticmethod
    def _accepts(port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    def echo_headers(self, r):
        return {k.lower(): v for k, v in r.json()["headers"]}

    def test_v1_with_curl(self):
        d = self.start_pp()
        out = subprocess.run(["curl", "-s", "--haproxy-protocol", "-H", "Host: a.do",
                              "-H", "X-Forwarded-For: 6.6.6.6",
                              "http://127.0.0.1:%d/echo" % d.port],
                             capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 0, out.stderr)
        import json
        h = {k.lower(): v for k, v in json.loads(out.stdout)["headers"]}
        # curl sends the real connection addresses: 127.0.0.1; a forged XFF from an untrusted
        # client is dropped.
        self.assertEqual(h["x-real-ip"], "127.0.0.1")
        self.assertNotIn("6.6.6.6", h["x-forwarded-for"])

    def test_v1_and_v2_raw(self):
        d = self.start_pp()
        for hdr in (b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n",
                    pp2_header("198.51.100.9", 40001, "10.0.0.1", 80)):
            with Conn(d.port) as c:
                c.send(hdr)
                r = c.request("GET", "/echo", "a.do")
                self.assertEqual(r.status, 200)
                h = self.echo_headers(r)
                ip = "203.0.113.7" if hdr.startswith(b"PROXY") else "198.51.100.9"
                self.assertEqual(h["x-real-ip"], ip)
                self.assertEqual(h["x-forwarded-for"], ip)

    def test_malformed_header_closes(self):
        d = self.start_pp()
        before = self.b.stats()["requests"]
        for junk in (b"GET /echo HTTP/1.1\r\nHost: a.do\r\n\r\n",
                     b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\nGET / HTTP/1.1\r\n\r\n",
                     b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"):
            with Conn(d.port) as c:
                c.send(junk)
                self.assertTrue(c.wait_closed(3), "no close after %r" % junk)
                self.assertEqual(c.buf, b"", "something answered %r" % junk)
        self.assertEqual(self.b.stats()["requests"], before, "malformed header reached backend")

    def test_haproxy_send_proxy_v2(self):
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            self.skipTest("haproxy not installed")
        d = self.start_pp()
        hport = free_port()
        cfg = "%s/haproxy.cfg" % d.tmp
        with open(cfg, "w") as f:
            f.write("global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 2s\n"
                    "  timeout client 5s\n  timeout server 5s\n"
                    "frontend fe\n  bind 127.0.0.2:%d\n  default_backend be\n"
                    "backend be\n  server d 127.0.0.1:%d send-proxy-v2\n" % (hport, d.port))
        p = subprocess.Popen([haproxy, "-f", cfg, "-db"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        dsptest._record_pid(p.pid)
        try:
            ok = dsptest.wait_for(lambda: self._accepts_on("127.0.0.2", hport), 10)
            self.assertTrue(ok, "haproxy did not start")
            with Conn(hport, host="127.0.0.2") as c:
                r = c.request("GET", "/echo", "a.do")
            h = self.echo_headers(r)
            # HAProxy saw the client as 127.0.0.1 (our source address), the socket peer of the
            # dispatcher is HAProxy; the PROXY v2 header carries the original.
            self.assertEqual(h["x-real-ip"], "127.0.0.1")
        finally:
            p.terminate()
            p.wait(5)

    @staticmethod
    def _accepts_on(host, port):
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            return False


class TrustedProxyClientTest(dsptest.TestCase):

    def test_real_ip_from_trusted_chain(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")],
                            extra='trusted_proxies = [ "127.0.0.1/32", "10.0.0.0/8" ];')
        r = request(d.port, "/echo", host="a.do",
                    headers=[("X-Forwarded-For", "6.6.6.6, 203.0.113.5, 10.1.2.3")])
        h = {k.lower(): v for k, v in r.json()["headers"]}
        # right-most untrusted entry: 203.0.113.5 (10.1.2.3 is a trusted proxy)
        self.assertEqual(h["x-real-ip"], "203.0.113.5")
        self.assertEqual(h["x-forwarded-for"], "6.6.6.6, 203.0.113.5, 10.1.2.3, 127.0.0.1")

    def test_ip_hash_uses_real_client(self):
        bs = [self.backend("b%d" % i) for i in range(3)]
        d = self.dispatcher([svc("web", *bs, balance="ip-hash")], [route("*", "web")],
                            extra='trusted_proxies = [ "127.0.0.1/32" ];')
        seen = {}
        for i in range(40):
            client = "198.51.100.%d" % (i % 10)
            r = request(d.port, "/echo", host="a.do", headers=[("X-Forwarded-For", client)])
            seen.setdefault(client, set()).add(r.header("X-Backend"))
        # each real client sticks to one backend, and the clients spread over several
        self.assertTrue(all(len(v) == 1 for v in seen.values()), seen)
        self.assertGreater(len(set().union(*seen.values())), 1, seen)

    def test_untrusted_cannot_spoof(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")],
                            extra='trusted_proxies = [ "10.0.0.0/8" ];')
        r = request(d.port, "/echo", host="a.do",
                    headers=[("X-Forwarded-For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6")])
        h = {k.lower(): v for k, v in r.json()["headers"]}
        self.assertEqual(h["x-real-ip"], "127.0.0.1")
        self.assertEqual(h["x-forwarded-for"], "127.0.0.1")


class WebSocketTest(dsptest.TestCase):

    def setUp(self):
        self.ws = wsutil.EchoServer()
        self.addCleanup(self.ws.stop)
        self.d = self.dispatcher([svc("ws", self.ws.address)], [route("*", "ws")],
                                 limits={"tunnel_idle_timeout_ms": 5000})

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.d.port), timeout=10)
        status, head, accept_ok = wsutil.client_handshake(s, "ws.do")
        self.assertEqual(status, 101, head)
        self.assertTrue(accept_ok, "Sec-WebSocket-Accept missing or wrong: %r" % head)
        self.assertIn(b"upgrade", head.lower())
        return s

    def test_echo_sizes_and_reload(self):
        s = self.connect()
        try:
            sizes = [1, 2, 125, 126, 127, 65535, 65536, 300000, 1 << 20]
            for i, n in enumerate(sizes):
                payload = bytes((j * 31 + i) & 0xFF for j in range(n))
                op = 2 if i % 2 else 1
                if op == 1:
                    payload = (b"x" * n)
                wsutil.send_frame(s, op, payload, True)
                rop, back = wsutil.recv_frame(s)
                self.assertEqual(rop, op)
                self.assertEqual(back, payload, "frame of %d bytes corrupted" % n)
                if i == 3:
                    # a reload in the middle of the session does not break it
                    gen = dsptest.generation(self.d)
                    self.d.hup()
                    dsptest.wait_until(
                        lambda: dsptest.workers_on_generation(self.d, gen + 1), 5,
                        "every worker on the reloaded generation %d" % (gen + 1))
            wsutil.send_frame(s, 8, b"\x03\xe8bye", True)
            rop, _ = wsutil.recv_frame(s)
            self.assertEqual(rop, 8)
        finally:
            s.close()
        self.assertTrue(self.ws.closed_by_peer.wait(3), "client close did not reach backend")

    def test_echo_over_tls_listener(self):
        # A TLS listener with no certificate configured serves the self-signed fallback.
        port = free_port()
        d = dsptest.Dispatcher(port=port)
        conf = dsptest.make_config(port, d.tmp, [svc("ws", self.ws.address)],
                                   [route("*", "ws")])
        conf = conf.replace('{ address = "127.0.0.1:%d"; }' % port,
                            '{ address = "127.0.0.1:%d"; tls = true; }' % port)
        d.write_config(conf)
        self.start_dispatcher(d, wait=False)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def connect():
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            return ctx.wrap_socket(raw, server_hostname="localhost")

        ok = dsptest.wait_for(lambda: self._tls_up(connect), 10)
        self.assertTrue(ok, "TLS listener not serving:\n" + d.log_tail())
        s = connect()
        try:
            status, head, accept_ok = wsutil.client_handshake(s, "ws.do")
            self.assertEqual(status, 101, head)
            self.assertTrue(accept_ok)
            for i, n in enumerate((1, 125, 70000, 1 << 20)):
                op = 1 if i % 2 == 0 else 2
                payload = b"t" * n if op == 1 else bytes((j * 13) & 0xFF for j in range(n))
                wsutil.send_frame(s, op, payload, True)
                rop, back = wsutil.recv_frame(s)
                self.assertEqual((rop, back == payload), (op, True), "frame of %d bytes" % n)
            wsutil.send_frame(s, 8, b"\x03\xe8", True)
            self.assertEqual(wsutil.recv_frame(s)[0], 8)
        finally:
            s.close()

    @staticmethod
    def _tls_up(connect):
        try:
            connect().close()
            return True
        except (OSError, ssl.SSLError):
            return False

    def test_backend_close_propagates(self):
        s = self.connect()
        try:
            for c in list(self.ws.conns):
                c.shutdown(socket.SHUT_RDWR)
            s.settimeout(3)
            self.assertEqual(s.recv(100), b"", "backend close did not reach the client")
        finally:
            s.close()

    def test_non_101_is_ordinary_response(self):
        r = request(self.d.port, "/plain", host="ws.do")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body, b"no")


class SseTest(dsptest.TestCase):

    def test_events_arrive_as_sent(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b, response_timeout_ms=2000)], [route("*", "web")])
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        t0 = time.monotonic()
        s.sendall(b"GET /sse?n=25&ms=100 HTTP/1.1\r\nHost: a.do\r\n\r\n")
        buf = b""
        first = None
        while buf.count(b"data:") < 25:
            dd = s.recv(65536)
            if not dd:
                break
            buf += dd
            if first is None and b"data:" in buf:
                first = time.monotonic() - t0
        s.close()
        self.assertIsNotNone(first, "no event at all")
        self.assertLess(first, 0.3, "first event after %.3fs: buffered?" % first)
        # 25 events over 2.4 s, with response_timeout_ms=2000: a stream that keeps sending is
        # never cut by the response timeout. (Gaps of 100 ms, not 200: a loaded machine that
        # holds the backend up for a second must not look like a cut.)
        self.assertEqual(buf.count(b"data:"), 25)
