"""Issue 16, honest health and errors: streamed responses (SSE) get their own idle timeout
(services[].stream_idle_timeout_ms, default response_timeout_ms) distinct from the time to the
first byte, re-armed by every piece of the body; a response cut (by that timeout, the backend,
the client, or send_timeout_ms) is logged with its status and a "reason" in both access-log
formats, in the error log, and counted in /metrics; listeners[].health_uri answers like admin
GET /health on a data listener, before routing."""

# Timing assertions: run alone (see run.py).
DSP_SERIAL = True

import json
import os
import re
import socket
import threading
import time

import dsptest
from dsptest import free_port, make_config, route, svc

SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def event(i):
    return chunk(b"data: event %d\n\n" % i)


class ScriptBackend:
    """A raw-socket backend: for each connection, read the request head, then play <script>, a
    list of (delay_s, bytes) steps, then "stall" (hold the connection open, sending nothing, until
    the test ends) or "close"."""

    def __init__(self, script, end="stall"):
        self.script = script
        self.end = end
        self.stop_ev = threading.Event()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.conns = []
        self.requests = 0
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                s, _ = self.lsock.accept()
            except OSError:
                continue
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        try:
            buf = b""
            s.settimeout(10)
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                if not d:
                    return
                buf += d
            self.requests += 1
            for delay, data in self.script:
                if self.stop_ev.wait(delay):
                    return
                s.sendall(data)
            if self.end == "close":
                s.close()
                return
            self.stop_ev.wait(30)
        except OSError:
            pass

    def stop(self):
        self.stop_ev.set()
        self.lsock.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


def stream(port, path="/events", timeout=15, host="s.do", read_limit=None):
    """GET <path> and read until the dispatcher closes: (head bytes + body bytes, seconds from
    the last byte received to the close, seconds from the request to the close)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n"
              % (path.encode(), host.encode()))
    data = b""
    last = t0
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
            last = time.monotonic()
            if read_limit is not None and len(data) >= read_limit:
                break
    except ConnectionResetError:
        pass
    end = time.monotonic()
    s.close()
    return data, end - last, end - t0


def read_lines(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode().splitlines()
    except FileNotFoundError:
        return []


def log_line_for(path, pred, timeout_s=5):
    """The first access-log line <pred> accepts, waiting for the once-a-second flush."""
    found = []

    def look():
        for line in read_lines(path):
            if pred(line):
                found.append(line)
                return True
        return False
    dsptest.wait_until(look, timeout_s, "access-log line")
    return found[0]


def http_get(port, path, method="GET"):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                  % (method.encode(), path.encode()))
        data = dsptest.read_to_eof(s)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode("latin-1"), body


class StreamBase(dsptest.TestCase):
    """A one-worker dispatcher in front of one ScriptBackend service "sse"."""

    def start(self, backend, fmt=None, admin_http=None, listener_extra="", **svc_opts):
        d = dsptest.Dispatcher(workers=1)
        text = make_config(d.port, d.tmp, [svc("sse", backend.addr, **svc_opts)],
                           [route("*", "sse")], workers=1)
        self.alog = os.path.join(d.tmp, "access.log")
        if fmt:
            old = 'access = "%s"; };' % self.alog
            assert old in text
            text = text.replace(old, 'access = "%s"; access_format = "%s"; };' % (self.alog, fmt))
        if admin_http:
            sock = os.path.join(d.tmp, "admin.sock")
            text = text.replace('admin = { socket = "%s"; };' % sock,
                                'admin = { socket = "%s"; http = "127.0.0.1:%d"; };'
                                % (sock, admin_http))
        if listener_extra:
            old = '{ address = "127.0.0.1:%d"; }' % d.port
            text = text.replace(old, '{ address = "127.0.0.1:%d"; %s }' % (d.port, listener_extra))
        d.write_config(text)
        self.start_dispatcher(d)
        return d

    def script_backend(self, script, end="stall"):
        b = ScriptBackend(script, end)
        self.addCleanup(b.stop)
        return b


class StreamIdleTest(StreamBase):

    def test_stall_cut_after_stream_idle_not_response_timeout(self):
        # Three events, then silence: the cut comes stream_idle_timeout_ms (600) after the last
        # one, not response_timeout_ms (8000); logged 200 with the reason, in the error log and
        # in /metrics.
        b = self.script_backend([(0, SSE_HEAD + event(0)), (0.1, event(1)), (0.1, event(2))])
        hport = free_port()
        d = self.start(b, admin_http=hport, response_timeout_ms=8000, stream_idle_timeout_ms=600)
        data, gap, total = stream(d.port)
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:200])
        for i in range(3):
            self.assertIn(b"data: event %d\n\n" % i, data)
        self.assertFalse(data.endswith(b"0\r\n\r\n"), "a cut stream must not look complete")
        self.assertGreater(gap, 0.45, "cut too early (%.2f s after the last event)" % gap)
        self.assertLess(gap, 2.5, "cut %.2f s after the last event: not stream_idle_timeout_ms"
                        % gap)
        line = log_line_for(self.alog, lambda l: '"path":"/events"' in l)
        j = json.loads(line)
        self.assertEqual(j["status"], 200, line)
        self.assertEqual(j["reason"], "stream_idle_timeout", line)
        self.assertGreater(j["bytes_sent"], len(SSE_HEAD), line)
        dsptest.wait_until(lambda: "stream_idle_timeout_ms (600 ms)" in d.log(), 5,
                           "the cut in the error log")
        status, _, body = http_get(hport, "/metrics")
        self.assertEqual(status, 200)
        m = re.search(rb'^dispatcher_responses_cut_total\{reason="stream_idle_timeout"\} (\d+)$',
                      body, re.M)
        self.assertIsNotNone(m, body[-2000:])
        self.assertEqual(int(m.group(1)), 1)

    def test_default_is_response_timeout_rearmed_by_each_piece(self):
        # Without stream_idle_timeout_ms the gap allowed is response_timeout_ms (700), counted
        # between pieces: events every 300 ms for ~2.4 s (far beyond 700 ms in total) all
        # arrive, then the silence is cut ~700 ms after the last one.
        script = [(0, SSE_HEAD)] + [(0.3, event(i)) for i in range(8)]
        b = self.script_backend(script)
        d = self.start(b, response_timeout_ms=700)
        data, gap, total = stream(d.port)
        for i in range(8):
            self.assertIn(b"data: event %d\n\n" % i, data)
        self.assertGreater(total, 2.4)
        self.assertGreater(gap, 0.5, "cut %.2f s after the last event" % gap)
        self.assertLess(gap, 2.5, "cut %.2f s after the last event" % gap)
        line = log_line_for(self.alog, lambda l: '"path":"/events"' in l)
        self.assertEqual(json.loads(line)["reason"], "stream_idle_timeout", line)

    def test_head_waits_response_timeout_and_complete_stream_has_no_reason(self):
        # The head comes after 1.2 s: response_timeout_ms (5000) applies to it, not the
        # 500 ms stream timeout. Then pieces 300 ms apart for 1.8 s and the last chunk: a
        # complete response, logged without a reason, kept alive.
        script = [(1.2, SSE_HEAD)] + [(0.3, event(i)) for i in range(6)] + [(0.1, b"0\r\n\r\n")]
        b = self.script_backend(script)
        d = self.start(b, response_timeout_ms=5000, stream_idle_timeout_ms=500)
        with dsptest.Conn(d.port) as c:
            t0 = time.monotonic()
            r = c.request("GET", "/done", host="s.do")
            self.assertEqual(r.status, 200, r.body[:200])
            self.assertGreater(time.monotonic() - t0, 1.2 + 1.5)
            for i in range(6):
                self.assertIn(b"data: event %d\n\n" % i, r.body)
            self.assertFalse(getattr(r, "closed", False))
        line = log_line_for(self.alog, lambda l: '"path":"/done"' in l)
        j = json.loads(line)
        self.assertEqual(j["status"], 200)
        self.assertNotIn("reason", j, line)

    def test_backend_closed_mid_body_combined_format(self):
        # A Content-Length body cut short by the backend: backend_closed, as the combined
        # format's last field (complete responses keep their usual fields).
        b = self.script_backend([(0, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")],
                                end="close")
        d = self.start(b, fmt="combined")
        data, gap, total = stream(d.port, "/short")
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:200])
        self.assertLess(total, 5)
        line = log_line_for(self.alog, lambda l: "/short" in l)
        self.assertRegex(line, r'"GET /short HTTP/1\.1" 200 \d+ .* "%s" "backend_closed"$'
                         % re.escape(b.addr))
        dsptest.wait_until(lambda: "backend_closed" in d.log(), 5, "the cut in the error log")

    def test_client_closed_mid_stream(self):
        # (A FIN alone may be a half-close: the client is known gone when a write fails, so
        # events keep coming.)
        b = self.script_backend([(0, SSE_HEAD + event(0))] + [(0.1, event(i)) for i in range(20)])
        d = self.start(b, stream_idle_timeout_ms=20000)
        data, _, _ = stream(d.port, "/leave", read_limit=len(SSE_HEAD) + 5)
        self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:200])
        line = log_line_for(self.alog, lambda l: '"path":"/leave"' in l)
        self.assertEqual(json.loads(line)["reason"], "client_closed", line)

    def test_stream_idle_timeout_ms_refused_when_bad(self):
        for bad in ("0", "-5", '"600"', "true"):
            d = dsptest.Dispatcher()
            text = make_config(d.port, d.tmp, [svc("sse", "127.0.0.1:9")], [route("*", "sse")])
            text = text.replace('backends = ["127.0.0.1:9"];',
                                'backends = ["127.0.0.1:9"]; stream_idle_timeout_ms = %s;' % bad)
            d.write_config(text)
            p = dsptest.subprocess.run([dsptest.MASTER, "-t", "-c", d.conf],
                                       capture_output=True, text=True, timeout=10)
            self.assertEqual(p.returncode, 1, (bad, p.stderr))
            self.assertIn("stream_idle_timeout_ms", p.stderr)
            self.assertRegex(p.stderr, r"dispatcher\.conf:\d+: ")


class HealthUriTest(dsptest.TestCase):

    def start(self, services, routes, health_uri="/healthz", extra_listener=""):
        d = dsptest.Dispatcher()
        text = make_config(d.port, d.tmp, services, routes)
        old = '{ address = "127.0.0.1:%d"; }' % d.port
        assert old in text
        text = text.replace(old, '{ address = "127.0.0.1:%d"; health_uri = "%s"; %s}'
                            % (d.port, health_uri, extra_listener))
        d.write_config(text)
        self.start_dispatcher(d)
        return d, text

    def test_serving_before_routing(self):
        b = self.backend("b")
        # Routes only for app.do: the probe needs no route and no Host that routes.
        d, _ = self.start([svc("web", b)], [route("app.do", "web")])
        dsptest.wait_until(lambda: http_get(d.port, "/healthz")[0] == 200, 5, "serving")
        status, head, body = http_get(d.port, "/healthz")
        self.assertEqual(json.loads(body), {"ok": True, "status": "serving"})
        self.assertIn("Content-Type: application/json", head)
        self.assertEqual(http_get(d.port, "/healthz?probe=1")[0], 200)
        # HEAD: the same status and length, no body.
        status, head, body = http_get(d.port, "/healthz", method="HEAD")
        self.assertEqual((status, body), (200, b""))
        # Keep-alive: a probe then a proxied request on one connection.
        with dsptest.Conn(d.port) as c:
            r = c.request("GET", "/healthz", host="anything.do")
            self.assertEqual(r.status, 200)
            r = c.request("GET", "/echo/x", host="app.do")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["path"], "/echo/x")
        # Other paths and other methods on that path are routed as usual.
        self.assertEqual(http_get(d.port, "/healthz/x")[0], 404)
        self.assertEqual(http_get(d.port, "/health")[0], 404)
        with dsptest.Conn(d.port) as c:
            r = c.request("POST", "/healthz", host="app.do", body=b"x")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["path"], "/healthz")

    def test_degraded_by_failing_checks_then_serving_again(self):
        b = self.backend("b")
        d, text = self.start([svc("web", "127.0.0.1:9")], [route("*", "web")])
        dsptest.wait_until(lambda: http_get(d.port, "/healthz")[0] == 200, 5,
                           "serving: no checks, no traffic is not degraded")
        d.write_config(text.replace(
            'backends = ["127.0.0.1:9"];',
            'backends = ["127.0.0.1:9"]; health = { path = "/h"; interval_ms = 100; };'))
        d.hup()
        dsptest.wait_until(lambda: http_get(d.port, "/healthz")[0] == 503, 5, "degraded")
        status, _, body = http_get(d.port, "/healthz")
        self.assertEqual(json.loads(body), {"ok": False, "status": "degraded"})
        # The backend replaced by a live one: serving again.
        d.write_config(text.replace('"127.0.0.1:9"', '"%s"' % b.addr))
        d.hup()
        dsptest.wait_until(lambda: http_get(d.port, "/healthz")[0] == 200, 5, "serving again")

    def test_listener_without_health_uri_routes_it(self):
        b = self.backend("b")
        d = self.dispatcher([svc("web", b)], [route("*", "web")])
        status, _, body = http_get(d.port, "/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["path"], "/healthz")

    def test_bad_health_uri_refused(self):
        for bad in ('""', '"healthz"', '"/a b"', '"/h?x=1"', "1", '"/%s"' % ("a" * 300)):
            d = dsptest.Dispatcher()
            text = make_config(d.port, d.tmp, [svc("web", "127.0.0.1:9")], [route("*", "web")])
            old = '{ address = "127.0.0.1:%d"; }' % d.port
            text = text.replace(old, '{ address = "127.0.0.1:%d"; health_uri = %s; }'
                                % (d.port, bad))
            d.write_config(text)
            p = dsptest.subprocess.run([dsptest.MASTER, "-t", "-c", d.conf],
                                       capture_output=True, text=True, timeout=10)
            self.assertEqual(p.returncode, 1, (bad, p.stderr))
            self.assertIn("health_uri", p.stderr)


class GeneratedHeadTest(dsptest.TestCase):

    def test_head_gets_no_body_from_generated_answers(self):
        # A HEAD answered by the dispatcher itself (no route: 404; health_uri above) gets the
        # head alone: a body would be read as the next response on a keep-alive connection.
        b = self.backend("b")
        d = self.dispatcher([svc("web", b)], [route("app.do", "web")])
        with dsptest.Conn(d.port) as c:
            r = c.request("HEAD", "/nothing", host="nowhere.do")
            self.assertEqual(r.status, 404)
            self.assertGreater(int(r.header("Content-Length")), 0)
            r = c.request("GET", "/echo/next", host="app.do")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.json()["path"], "/echo/next")


class ShutdownCutTest(StreamBase):

    def test_stream_open_at_the_end_of_a_graceful_stop_is_logged(self):
        # An SSE stream still open when shutdown_timeout_ms (3000) runs out: its line is written
        # (status 200, reason "shutdown") before the worker exits, not lost.
        b = self.script_backend([(0, SSE_HEAD + event(0))])
        d = self.start(b)  # (response_timeout_ms, 30 s, is the stream's idle timeout)
        s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        self.addCleanup(s.close)
        s.sendall(b"GET /open HTTP/1.1\r\nHost: s.do\r\n\r\n")
        got = b""
        while b"event 0" not in got:
            got += s.recv(65536)
        problems = d.stop()
        self.assertEqual(problems, [])
        line = log_line_for(self.alog, lambda l: '"path":"/open"' in l, timeout_s=2)
        j = json.loads(line)
        self.assertEqual((j["status"], j["reason"]), (200, "shutdown"), line)
