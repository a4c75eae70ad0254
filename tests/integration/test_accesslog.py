"""Access log: one JSON line per request with every SPEC field and counts that match, the
combined format, rotation by rename + SIGUSR1 without losing a line, and a file that cannot be
written (reported once, requests unaffected)."""

import json
import os
import re
import signal
import threading
import time

import dsptest
from dsptest import Conn, make_config, request, route, svc

FIELDS = ("client_ip", "host", "method", "path", "status", "duration_ms", "bytes_sent",
          "user_agent", "request_id", "service", "backend")


def read_lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    assert data == b"" or data.endswith(b"\n"), "partial last line in %s" % path
    return data.decode().splitlines()


def wait_lines(path, n, timeout_s=5):
    """Lines are flushed at least every second: wait until <path> has <n> (or the timeout)."""
    dsptest.wait_for(lambda: len(read_lines(path)) >= n, timeout_s)
    return read_lines(path)


class AccessLogTest(dsptest.TestCase):

    def start(self, services, routes, fmt=None, access=None, workers=2):
        d = dsptest.Dispatcher(workers=workers)
        text = make_config(d.port, d.tmp, services, routes, workers=workers)
        self.alog = access or os.path.join(d.tmp, "access.log")
        old = 'access = "%s"; };' % os.path.join(d.tmp, "access.log")
        assert old in text
        new = 'access = "%s";%s };' % (self.alog, ' access_format = "%s";' % fmt if fmt else "")
        d.write_config(text.replace(old, new))
        self.start_dispatcher(d)
        return d

    def test_json_lines_every_field_counts_match(self):
        b = self.backend("b")
        d = self.start([svc("web", b), svc("idle")],
                       [route("www.do", "web"), route("idle.do", "idle")])
        sent = []
        with Conn(d.port) as c:  # keep-alive: several requests on one connection
            for i in range(10):
                r = c.request("GET", "/echo?i=%d" % i, host="www.do",
                              headers=[("User-Agent", "t/1 \"q\""), ("X-Request-ID", "id-%d" % i)])
                self.assertEqual(r.status, 200)
                sent.append(("www.do", "GET", "/echo?i=%d" % i, 200, "id-%d" % i, "web",
                             b.addr, len(r.body)))
        for i in range(5):
            r = request(d.port, "/upload", host="www.do", method="POST", body=b"x" * 1000)
            self.assertEqual(r.status, 200)
            sent.append(("www.do", "POST", "/upload", 200, r.header("X-Request-ID"), "web",
                         b.addr, len(r.body)))
        r = request(d.port, "/", host="idle.do")
        self.assertEqual(r.status, 404)
        sent.append(("idle.do", "GET", "/", 404, r.header("X-Request-ID"), "idle", None,
                     len(r.body)))
        r = request(d.port, "/status?code=503", host="www.do")
        sent.append(("www.do", "GET", "/status?code=503", 503, r.header("X-Request-ID"), "web",
                     b.addr, len(r.body)))
        r = request(d.port, "/nothing", host="unrouted.do")
        self.assertEqual(r.status, 404)
        sent.append(("unrouted.do", "GET", "/nothing", 404, r.header("X-Request-ID"), None, None,
                     len(r.body)))

        lines = wait_lines(self.alog, len(sent))
        time.sleep(0.3)
        lines = read_lines(self.alog)
        self.assertEqual(len(lines), len(sent), "\n".join(lines))
        by_id = {}
        for line in lines:
            j = json.loads(line)
            for f in FIELDS:
                self.assertIn(f, j, line)
            self.assertEqual(j["client_ip"], "127.0.0.1")
            self.assertIsInstance(j["duration_ms"], int)
            self.assertIsInstance(j["bytes_sent"], int)
            by_id[j["request_id"]] = j
        for host, method, path, status, rid, service, backend, body_len in sent:
            j = by_id[rid]
            self.assertEqual((j["host"], j["method"], j["path"], j["status"], j["service"],
                              j["backend"]), (host, method, path, status, service, backend), j)
            # bytes_sent counts the response head too
            self.assertGreater(j["bytes_sent"], body_len)
        self.assertEqual(by_id["id-3"]["user_agent"], 't/1 "q"')

    def test_combined_format(self):
        b = self.backend("b")
        d = self.start([svc("web", b)], [route("*", "web")], fmt="combined")
        for i in range(4):
            request(d.port, "/echo/%d" % i, host="c.do",
                    headers=[("User-Agent", "ua"), ("Referer", "http://r/")])
        lines = wait_lines(self.alog, 4)
        self.assertEqual(len(lines), 4)
        pat = re.compile(r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                         r'"GET /echo/\d HTTP/1\.1" 200 \d+ "http://r/" "ua" "c\.do" \d+ '
                         r'"[0-9a-f]{32}" "web" "%s"$' % re.escape(b.addr))
        for line in lines:
            self.assertRegex(line, pat)

    @dsptest.timeout(90)
    def test_rotation_by_rename_and_sigusr1_loses_nothing(self):
        b = self.backend("b")
        d = self.start([svc("web", b)], [route("*", "web")], workers=3)
        ids = []
        stop = threading.Event()
        lock = threading.Lock()
        errors = []

        def load():
            # Steady traffic across the rotation, on keep-alive connections.
            try:
                with Conn(d.port) as c:
                    while not stop.is_set():
                        r = c.request("GET", "/echo", host="x.do")
                        if r.status != 200:
                            errors.append(r.status)
                        with lock:
                            ids.append(r.header("X-Request-ID"))
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.7)
        rotated = self.alog + ".1"
        os.rename(self.alog, rotated)
        d.proc.send_signal(signal.SIGUSR1)
        time.sleep(0.7)
        stop.set()
        for t in threads:
            t.join(10)
        self.assertEqual(errors, [])
        self.assertTrue(dsptest.wait_for(lambda: os.path.exists(self.alog), 3),
                        "no new access log after SIGUSR1")
        dsptest.wait_for(lambda: len(read_lines(rotated)) + len(read_lines(self.alog))
                         >= len(ids), 5)
        time.sleep(1.2)
        old, new = read_lines(rotated), read_lines(self.alog)
        logged = [json.loads(l)["request_id"] for l in old + new]
        self.assertGreater(len(old), 0)
        self.assertGreater(len(new), 0)
        self.assertEqual(len(logged), len(ids), "lines: %d old + %d new, requests %d"
                         % (len(old), len(new), len(ids)))
        self.assertEqual(sorted(logged), sorted(ids))
        # The second file only holds requests made after the first one's last line was written.
        self.assertEqual(len(set(logged)), len(logged))

    def test_unwritable_log_is_reported_once_and_never_blocks(self):
        b = self.backend("b")
        # Every write to /dev/full fails with ENOSPC: a full disk.
        d = self.start([svc("web", b)], [route("*", "web")], access="/dev/full")
        t0 = time.monotonic()
        for i in range(300):
            self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)
            if i % 100 == 0:
                time.sleep(1.1)  # let flushes happen between bursts
        self.assertLess(time.monotonic() - t0, 30)
        time.sleep(1.2)  # the last flushes fail too: time for a repeated message to show

        def write_errors():
            return [l for l in d.log().splitlines() if "access log" in l and "write failed" in l]
        dsptest.wait_until(write_errors, 5, "a write failure of the access log reported")
        errs = write_errors()
        self.assertGreaterEqual(len(errs), 1, d.log_tail())
        self.assertLessEqual(len(errs), 2, "\n".join(errs))  # once per worker at most
        self.assertEqual(sorted(d.worker_pids()), sorted(d.initial_workers))
