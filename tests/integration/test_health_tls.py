"""Health checks over TLS read what OpenSSL already holds: a backend whose status line comes in
two TLS records of one TCP segment (and which keeps the connection open) is judged at once,
not timed out waiting for a read event that never comes."""

import os
import socket
import ssl
import subprocess
import threading
import time

import dsptest
from dsptest import route, svc


class SplitStatusTlsBackend:
    """A TLS origin answering every request with "HTTP/1.1 <status> ..." split into two records
    ("HTTP/1.1 2" and the rest) sent corked, so they leave in one segment; it then keeps the
    connection open for <hold> seconds."""

    def __init__(self, cert, key, status=200, hold=3.0):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.status, self.hold = status, hold
        self.answered = 0
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.ls.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.ls.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                s, _ = self.ls.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._conn, args=(s,), daemon=True).start()

    def _conn(self, raw):
        t = None
        try:
            raw.settimeout(5)
            t = self.ctx.wrap_socket(raw, server_side=True)  # takes over raw's descriptor
            req = b""
            while b"\r\n\r\n" not in req:
                chunk = t.recv(4096)
                if not chunk:
                    return
                req += chunk
            head = "HTTP/1.1 %d OK\r\nContent-Length: 0\r\n\r\n" % self.status
            t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
            t.sendall(head[:10].encode())
            t.sendall(head[10:].encode())
            t.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
            with self.lock:
                self.answered += 1
            deadline = time.monotonic() + self.hold
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.05)
        except (OSError, ssl.SSLError):
            pass
        finally:
            (t or raw).close()

    def stop(self):
        self.stopping = True
        self.thread.join(2)
        self.ls.close()


class HealthTlsTest(dsptest.TestCase):

    @dsptest.timeout(40)
    def test_status_line_split_over_two_records(self):
        d = dsptest.Dispatcher(workers=1)
        cert = os.path.join(d.tmp, "b.pem")
        key = os.path.join(d.tmp, "b.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=split.internal",
                        "-addext", "subjectAltName=DNS:split.internal"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       timeout=30)
        tb = SplitStatusTlsBackend(cert, key)
        self.addCleanup(tb.stop)
        health = {"path": "/health", "interval_ms": 100, "timeout_ms": 600, "fall": 1,
                  "rise": 1}
        services = [svc("split", tb.addr, tls=True, ca=cert, sni="split.internal",
                        health=health)]
        d.write_config(dsptest.make_config(d.port, d.tmp, services,
                                           [route("split.do", "split")], workers=1,
                                           extra=""))
        self.start_dispatcher(d)
        # Several checks answered and judged, none timed out.
        ok = dsptest.wait_for(lambda: tb.answered >= 4, 10, 0.05)
        self.assertTrue(ok, d.log_tail())
        time.sleep(0.8)  # longer than timeout_ms: a check stuck on the held bytes would fail
        self.assertNotIn("is down", d.log(), d.log_tail())
        self.assertNotIn("no answer within", d.log(), d.log_tail())
