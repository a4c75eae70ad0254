"""Slow and idle clients: a trickled head gets its 408 after header_timeout_ms (trickling does not
extend it), a body slower than limits.min_body_rate gets a 408 and its backend connection is
closed, a client that reads nothing of a large response is closed after limits.send_timeout_ms
(and its backend connection with it) while the worker's memory stays bounded, and slowhttptest's
slowloris / slow body / slow read attacks leave a normal client served."""

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import unittest

import dsptest
from dsptest import Conn, request, route, svc


class CountingBackend:
    """A raw-socket HTTP backend that counts the connections it has open. Each request's body
    (Content-Length) is read whole, then answered with a small 200; with big=N, the answer is
    an N-byte body sent as fast as the peer takes it, and the time its sending failed (the proxy
    closed the connection) is recorded in .send_failed_at."""

    def __init__(self, big=0, hold_body_s=0.0):
        self.big = big
        self.hold_body_s = hold_body_s
        self.lock = threading.Lock()
        self.open = 0
        self.accepted = 0
        self.requests = 0
        self.sent = 0
        self.send_failed_at = None
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(128)
        self.port = self.srv.getsockname()[1]
        self.addr = "127.0.0.1:%d" % self.port
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self._stop = True
        self.srv.close()

    def count(self):
        with self.lock:
            return self.open

    def _accept(self):
        while not self._stop:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.accepted += 1
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                clen = 0
                chunked = False
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        clen = int(v.strip())
                    if k.strip().lower() == b"transfer-encoding":
                        chunked = True
                if chunked:  # (whole body: up to the last chunk, no trailers)
                    while not (buf.startswith(b"0\r\n\r\n") or b"\r\n0\r\n\r\n" in buf):
                        d = s.recv(65536)
                        if not d:
                            return
                        buf += d
                    clen = buf.index(b"0\r\n\r\n") + 5
                if self.hold_body_s:
                    time.sleep(self.hold_body_s)
                while len(buf) < clen:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[clen:]
                with self.lock:
                    self.requests += 1
                if self.big:
                    self._send_big(s)
                    return
                body = json.dumps({"body_bytes": clen}).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass
        finally:
            s.close()
            with self.lock:
                self.open -= 1

    def _send_big(self, s):
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: %d\r\n\r\n" % self.big)
        block = b"x" * 65536
        left = self.big
        try:
            while left > 0:
                n = s.send(block[:min(left, len(block))])
                left -= n
                with self.lock:
                    self.sent += n
        except OSError:
            self.send_failed_at = time.monotonic()
            raise


def worker_cpu_ticks(pid):
    f = dsptest._stat_fields(pid)
    return int(f[11]) + int(f[12]) if f else None


class SlowClientTest(dsptest.TestCase):

    def counting_backend(self, **kw):
        b = CountingBackend(**kw)
        self.addCleanup(b.stop)
        return b

    def test_slow_head_408_not_extended_by_trickling(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")], workers=1,
                            limits={"header_timeout_ms": 1000})
        head = b"GET /echo HTTP/1.1\r\nHost: a.do\r\nX-Pad: " + b"p" * 200 + b"\r\n\r\n"
        for keepalive in (False, True):
            with Conn(d.port, timeout=5) as c:
                if keepalive:
                    # The next request on a kept-alive connection: timed from its first byte.
                    self.assertEqual(c.request("GET", "/echo", "a.do").status, 200)
                t0 = time.monotonic()
                got = None
                # One byte every 50 ms: 200+ bytes would take >10 s; each byte must not
                # re-arm the timer.
                for i in range(len(head) - 4):
                    try:
                        c.sock.sendall(head[i:i + 1])
                    except OSError:
                        break
                    time.sleep(0.05)
                    if time.monotonic() - t0 > 4:
                        break
                    c.sock.setblocking(False)
                    try:
                        data = c.sock.recv(65536)
                        c.buf += data
                        if b"\r\n\r\n" in c.buf or not data:
                            break
                    except BlockingIOError:
                        pass
                    except OSError:
                        break
                    finally:
                        c.sock.setblocking(True)
                c.settimeout(5)
                dt = time.monotonic() - t0
                try:
                    r = c.read_response()
                except (dsptest.ConnectionClosed, ConnectionResetError) as e:
                    self.fail("no 408 to a trickled head (keepalive=%s): %s" % (keepalive, e))
                self.assertJsonError(r, 408, "Request timeout")
                self.assertLess(dt, 2.5, "408 after %.2fs, header_timeout_ms=1000 (trickling "
                                "extended it; keepalive=%s)" % (dt, keepalive))
                self.assertGreater(dt, 0.7)
                self.assertTrue(r.closed or c.wait_closed(3), "connection open after a 408")

    def test_proxy_header_and_head_share_the_header_timeout(self):
        # On a proxy_protocol listener the PROXY header, then the head, both trickled: the
        # timeout runs from the accept and is not started again once the PROXY header is in.
        b = self.backend("web")
        d = dsptest.Dispatcher(workers=1)
        conf = dsptest.make_config(d.port, d.tmp, [svc("web", b)], [route("*", "web")], 1,
                                   {"header_timeout_ms": 1500})
        conf = conf.replace('{ address = "127.0.0.1:%d"; }' % d.port,
                            '{ address = "127.0.0.1:%d"; proxy_protocol = true; }' % d.port)
        d.write_config(conf)
        self.start_dispatcher(d, wait=False)
        self.assertTrue(dsptest.wait_for(lambda: len(d.worker_pids()) >= 1, 10))
        self.assertTrue(dsptest.wait_for(lambda: self._port_open(d.port), 10))
        pp = b"PROXY TCP4 192.0.2.1 192.0.2.2 1234 80\r\n"
        with Conn(d.port, timeout=6) as c:
            t0 = time.monotonic()
            for i in range(0, len(pp), 4):
                c.send(pp[i:i + 4])
                time.sleep(0.1)
            while time.monotonic() - t0 < 1.2:
                time.sleep(0.02)
            try:
                c.send(b"GET /echo HTTP/1.1\r\nHost: a.do\r\n")
                r = c.read_response()
            except (dsptest.ConnectionClosed, ConnectionResetError, BrokenPipeError):
                r = None
            dt = time.monotonic() - t0
            if r is not None:
                self.assertJsonError(r, 408, "Request timeout")
            self.assertLess(dt, 2.3, "answered %.2fs after the accept, header_timeout_ms=1500: "
                            "the PROXY header restarted the timeout" % dt)

    @staticmethod
    def _port_open(port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    @dsptest.timeout(40)
    def test_slow_body_408_and_backend_released(self):
        b = self.counting_backend()
        # min_body_rate is left at its default (256 bytes/s after a 5 s grace).
        d = self.dispatcher([svc("up", b.addr)], [route("*", "up")], workers=1)
        # Three shapes at once: a Content-Length body a byte every 0.5 s, a chunked body
        # trickled the same way, and a burst followed by silence (credit is capped at 5 s).
        heads = {
            "trickle": (b"POST /upload HTTP/1.1\r\nHost: a.do\r\nContent-Length: 100000\r\n\r\n"
                        + b"a" * 100, b"b"),
            "chunked": (b"POST /upload HTTP/1.1\r\nHost: a.do\r\nTransfer-Encoding: chunked"
                        b"\r\n\r\n", b"1\r\nc\r\n"),
            "burst": (b"POST /upload HTTP/1.1\r\nHost: a.do\r\nContent-Length: 1000000\r\n\r\n"
                      + b"d" * 60000, b""),
        }
        results = {}

        def client(name):
            head, drip = heads[name]
            with Conn(d.port, timeout=20) as c:
                c.send(head)
                t0 = time.monotonic()
                c.sock.setblocking(False)
                got = b""
                k = 0
                while time.monotonic() - t0 < 15 and b"\r\n\r\n" not in got:
                    if drip:
                        try:
                            c.sock.send(drip[k % len(drip):k % len(drip) + 1])
                            k += 1
                        except BlockingIOError:
                            pass
                        except OSError:
                            break
                    time.sleep(0.5)
                    try:
                        d_ = c.sock.recv(65536)
                        if not d_:
                            break
                        got += d_
                    except BlockingIOError:
                        pass
                    except OSError:
                        break
                dt = time.monotonic() - t0
                c.sock.setblocking(True)
                c.settimeout(3)
                c.buf += got
                try:
                    results[name] = (c.read_response("POST"), dt)
                except (dsptest.ConnectionClosed, ConnectionResetError, socket.timeout) as e:
                    results[name] = (e, dt)

        threads = [threading.Thread(target=client, args=(n,)) for n in heads]
        for t in threads:
            t.start()
        self.assertTrue(dsptest.wait_for(lambda: b.count() == 3, 5),
                        "the backend connections were not opened (%d)" % b.count())
        for t in threads:
            t.join(30)
        for name in heads:
            r, dt = results[name]
            if not isinstance(r, dsptest.Response):
                self.fail("%s: no 408 to a slow body after %.1fs: %r" % (name, dt, r))
            self.assertJsonError(r, 408, "Request timeout")
            self.assertLess(dt, 9, "%s: the 408 came %.1fs after the body started" % (name, dt))
            self.assertGreater(dt, 3.5, "%s: 408 within the 5 s grace (%.1fs)" % (name, dt))
        # The backend connections are closed, not kept or pooled.
        self.assertTrue(dsptest.wait_for(lambda: b.count() == 0, 3),
                        "the backend still has %d connection(s) open" % b.count())
        self.assertEqual(b.requests, 0)
        # The proxy serves on.
        r = request(d.port, "/x", host="a.do", method="POST", body=b"z" * 1000)
        self.assertEqual(r.status, 200)

    @dsptest.timeout(40)
    def test_body_at_the_rate_or_held_back_by_us_is_served(self):
        # A body that keeps up the rate is served even when it takes longer than the grace,
        # and so is one that only waits because the backend does not read it yet.
        b = self.counting_backend(hold_body_s=7.0)
        fast = self.counting_backend()
        d = self.dispatcher([svc("held", b.addr), svc("ok", fast.addr)],
                            [route("held.do", "held"), route("*", "ok")], workers=1,
                            limits={"min_body_rate": 1000})
        res = {}

        def held():
            total = 8 * dsptest.MIB
            with Conn(d.port, timeout=20) as c:
                c.send(b"POST /up HTTP/1.1\r\nHost: held.do\r\nContent-Length: %d\r\n\r\n" % total)
                blk = b"h" * 65536
                for _ in range(total // len(blk)):
                    c.send(blk)
                res["held"] = c.read_response("POST")

        t = threading.Thread(target=held)
        t.start()
        with Conn(d.port, timeout=20) as c:
            total = 14000
            c.send(b"POST /up HTTP/1.1\r\nHost: ok.do\r\nContent-Length: %d\r\n\r\n" % total)
            # 2000 bytes/s for 7 s: twice the rate, past the grace.
            for _ in range(28):
                c.send(b"o" * 500)
                time.sleep(0.25)
            r = c.read_response("POST")
            self.assertEqual(r.status, 200, r.body[:200])
            self.assertEqual(r.json()["body_bytes"], total)
        t.join(25)
        self.assertIn("held", res, "the held-back upload got no answer")
        self.assertEqual(res["held"].status, 200, res["held"].body[:200])

    @dsptest.timeout(40)
    def test_client_not_reading_closed_after_send_timeout(self):
        size = 1 << 30
        b = self.counting_backend(big=size)
        d = self.dispatcher([svc("big", b.addr)], [route("*", "big")], workers=1,
                            limits={"send_timeout_ms": 1500})
        wpid = d.worker_pids()[0]
        base = dsptest.rss_kib(wpid)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", d.port))
        s.sendall(b"GET /big HTTP/1.1\r\nHost: a.do\r\n\r\n")
        sampler = dsptest.RssSampler([wpid])
        t0 = time.monotonic()
        # Never read; a byte of a pipelined next request now and then is activity, but not
        # draining: it must not keep the connection alive.
        closed = False
        try:
            while time.monotonic() - t0 < 8:
                if b.send_failed_at is not None:
                    closed = True
                    break
                try:
                    s.send(b"G")
                except OSError:
                    pass
                time.sleep(0.3)
        finally:
            max_kib = sampler.stop()[wpid]
        self.assertTrue(closed, "the backend was still sending %.1fs after the client stopped "
                        "reading (send_timeout_ms=1500; %d bytes sent)"
                        % (time.monotonic() - t0, b.sent))
        self.assertLess(b.send_failed_at - t0, 5.0)
        self.assertLess(b.sent, 64 * dsptest.MIB, "the proxy kept reading the backend")
        self.assertTrue(dsptest.wait_for(lambda: b.count() == 0, 3))
        # The client sees the end (EOF or reset) after what was buffered for it.
        s.settimeout(5)
        got = 0
        try:
            while True:
                data = s.recv(1 << 20)
                if not data:
                    break
                got += len(data)
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        self.assertLess(got, size)
        growth = max_kib - (base or 0)
        self.assertLess(growth, 64 * 1024 if dsptest.SANITIZED else 16 * 1024,
                        "worker RSS grew by %d KiB" % growth)
        # And it serves on.
        self.assertEqual(dsptest.wait_for(lambda: b.count() == 0, 2), True)


class SlowTlsClientTest(dsptest.TestCase):
    """The same limits on a TLS listener (the master's self-signed certificate): the timers
    see decrypted bytes and OpenSSL's want-write."""

    def tls_dispatcher(self, b, limits):
        d = dsptest.Dispatcher(workers=1)
        conf = dsptest.make_config(d.port, d.tmp, [svc("up", b.addr)], [route("*", "up")], 1,
                                   limits)
        conf = conf.replace('{ address = "127.0.0.1:%d"; }' % d.port,
                            '{ address = "127.0.0.1:%d"; tls = true; }' % d.port)
        d.write_config(conf)
        self.start_dispatcher(d)
        return d

    @staticmethod
    def tls_conn(port, rcvbuf=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = socket.socket()
        if rcvbuf:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", port))
        return ctx.wrap_socket(raw, server_hostname="localhost")

    @dsptest.timeout(40)
    def test_tls_slow_body_408(self):
        b = CountingBackend()
        self.addCleanup(b.stop)
        d = self.tls_dispatcher(b, {})
        s = self.tls_conn(d.port)
        s.sendall(b"POST /x HTTP/1.1\r\nHost: a.do\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
        self.assertTrue(dsptest.wait_for(lambda: b.count() == 1, 5))
        t0 = time.monotonic()
        got = b""
        s.settimeout(0.5)
        while time.monotonic() - t0 < 12 and b"\r\n\r\n" not in got:
            try:
                s.send(b"b")
                got += s.recv(65536)
            except (socket.timeout, ssl.SSLWantReadError):
                pass
            except OSError:
                break
        dt = time.monotonic() - t0
        self.assertIn(b" 408 ", got.split(b"\r\n")[0] if got else b"",
                      "no 408 to a trickled body over TLS after %.1fs: %r" % (dt, got[:100]))
        self.assertLess(dt, 9)
        s.close()
        self.assertTrue(dsptest.wait_for(lambda: b.count() == 0, 3))

    @dsptest.timeout(40)
    def test_tls_client_not_reading_closed(self):
        big = CountingBackend(big=1 << 30)
        self.addCleanup(big.stop)
        d = self.tls_dispatcher(big, {"send_timeout_ms": 1500})
        s = self.tls_conn(d.port, rcvbuf=4096)
        s.sendall(b"GET /big HTTP/1.1\r\nHost: a.do\r\n\r\n")
        t0 = time.monotonic()
        self.assertTrue(dsptest.wait_for(lambda: big.send_failed_at is not None, 8, 0.05),
                        "the backend was still sending %.1fs after a TLS client stopped reading "
                        "(%d bytes sent)" % (time.monotonic() - t0, big.sent))
        self.assertLess(big.send_failed_at - t0, 5.0)
        self.assertLess(big.sent, 64 * dsptest.MIB)
        s.close()


SLOWHTTPTEST = shutil.which("slowhttptest")


@unittest.skipUnless(SLOWHTTPTEST, "slowhttptest not installed (Debian package slowhttptest)")
class SlowlorisTest(dsptest.TestCase):
    """slowhttptest against a dispatcher while a normal client keeps requesting: every normal
    request must succeed."""

    def attack(self, args, conns, limits=None, path="/echo"):
        b = self.backend("web")
        lim = {"header_timeout_ms": 30000}
        lim.update(limits or {})
        d = self.dispatcher([svc("web", b)], [route("*", "web")], limits=lim)
        url = "http://127.0.0.1:%d%s" % (d.port, path)
        proc = subprocess.Popen([SLOWHTTPTEST] + args + ["-c", str(conns), "-u", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dsptest._record_pid(proc.pid)
        ok = fail = 0
        errors = []
        peak = 0
        sampler = dsptest.RssSampler(d.worker_pids(), interval=0.2)
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 25:
            try:
                r = request(d.port, "/echo", host="a.do", timeout=10)
                if r.status == 200:
                    ok += 1
                else:
                    fail += 1
                    errors.append(r.status)
            except Exception as e:  # noqa: BLE001 - any failure of a normal client counts
                fail += 1
                errors.append(repr(e))
            n = 0
            for w in d.worker_pids():
                try:
                    n += len(os.listdir("/proc/%d/fd" % w))
                except OSError:
                    pass
            peak = max(peak, n)
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        rss = sampler.stop()
        if not dsptest.SANITIZED:
            # Bounded buffers: 16 KiB of head per connection at most, nothing per body byte.
            self.assertLess(max(rss.values()), 96 * 1024, "worker RSS under attack: %r KiB" % rss)
        # (No timing or count assertion: the machine also runs the attacker and the backend.)
        self.assertGreater(ok, 0)
        self.assertEqual(fail, 0, "normal requests failed under attack: %r" % errors[:10])
        return peak

    @dsptest.timeout(60)
    def test_slowloris_headers(self):
        peak = self.attack(["-H", "-i", "10", "-r", "1000", "-l", "6"], 2000)
        # The attack really held its connections open.
        self.assertGreater(peak, 1000, "the attack held only %d descriptors" % peak)

    @dsptest.timeout(60)
    def test_slow_body(self):
        self.attack(["-B", "-i", "2", "-r", "500", "-s", "100000", "-l", "7"], 1000)

    @dsptest.timeout(60)
    def test_slow_read(self):
        self.attack(["-X", "-r", "500", "-w", "1", "-y", "2", "-n", "2", "-z", "8",
                     "-k", "2", "-l", "6"], 500, limits={"send_timeout_ms": 3000},
                    path="/bytes?n=262144")


if __name__ == "__main__":
    unittest.main()
