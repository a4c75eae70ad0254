"""The dispatcher-master command line: -t, exit codes, pid file, graceful SIGTERM."""

import os
import re
import signal
import socket
import subprocess
import threading
import time

import dsptest
from dsptest import MASTER, request, route, svc


class CheckConfigTest(dsptest.TestCase):

    def check(self, fixture):
        d = dsptest.Dispatcher(port=dsptest.free_port())
        d.write_config(dsptest.render_fixture(fixture, PORT=d.port))
        p = subprocess.run([MASTER, "-t", "-c", d.conf], capture_output=True, timeout=20,
                           cwd=d.tmp)
        return d.conf, p.returncode, p.stdout.decode(errors="replace"), \
            p.stderr.decode(errors="replace")

    def test_check_good_config(self):
        conf, rc, out, err = self.check("check-good.conf")
        self.assertEqual(rc, 0, "stdout %r stderr %r" % (out, err))
        self.assertIn("%s: ok" % conf, out + err)

    def test_check_syntax_error(self):
        conf, rc, out, err = self.check("check-syntax.conf")
        self.assertEqual(rc, 1, "stdout %r stderr %r" % (out, err))
        self.assertRegex(err, re.escape(conf) + r":9: ", "want FILE:9: on stderr")

    def test_check_unknown_service(self):
        conf, rc, out, err = self.check("check-unknown-service.conf")
        self.assertEqual(rc, 1, "stdout %r stderr %r" % (out, err))
        self.assertRegex(err, re.escape(conf) + r":10: ", "want FILE:10: on stderr")
        self.assertIn("nosuchservice", err)


class StartupTest(dsptest.TestCase):

    def test_port_taken_exits_2(self):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(5)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        d = dsptest.Dispatcher(port=port)
        d.write_config(dsptest.make_config(port, d.tmp, [svc("w", "127.0.0.1:9")],
                                           [route("*", "w")]))
        d.start(wait=False)
        try:
            rc = d.proc.wait(10)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
            self.fail("dispatcher-master kept running with its port taken")
        self.assertEqual(rc, 2, "exit code with the listen port taken; log:\n" + d.log_tail())
        self.assertIn("127.0.0.1:%d" % port, d.log(), "the message names the address")
        self.assertFalse(os.path.exists(os.path.join(d.tmp, "dispatcher.pid")),
                         "no pid file when binding failed")
        d._err.close()
        d._out.close()

    def test_pid_file_and_graceful_stop(self):
        b = self.backend("w")
        d = dsptest.Dispatcher()
        d.write_config(dsptest.make_config(d.port, d.tmp, [svc("w", b)], [route("*", "w")]))
        d.start()
        self.addCleanup(lambda: d.proc.poll() is None and d.proc.kill())
        pidfile = os.path.join(d.tmp, "dispatcher.pid")
        self.assertEqual(d.pid_from_file(), d.proc.pid)
        workers = d.worker_pids()

        # SIGTERM with a request in flight: it completes, then the master exits 0.
        result = {}

        def slow():
            try:
                result["r"] = request(d.port, "/sleep?ms=1000", host="w.do", timeout=10)
            except Exception as e:  # noqa: BLE001
                result["e"] = e
        t = threading.Thread(target=slow)
        t.start()
        dsptest.wait_until(lambda: b.stats()["requests"] >= 1, 5, "the slow request in flight")
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        t.join(10)
        self.assertNotIn("e", result, "in-flight request failed at SIGTERM: %r" % result.get("e"))
        self.assertEqual(result["r"].status, 200)
        try:
            rc = d.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.fail("master still running 10s after SIGTERM")
        self.assertEqual(rc, 0, "exit code after SIGTERM; log:\n" + d.log_tail())
        self.assertLess(time.monotonic() - t0, 3.5, "graceful stop took too long")
        self.assertFalse(os.path.exists(pidfile), "pid file not removed at exit")
        for w in workers:
            self.assertTrue(dsptest.wait_for(lambda: dsptest.rss_kib(w) is None, 2),
                            "worker %d survived the master" % w)
        problems = d.stop()
        self.assertEqual(problems, [])


class WrappedNumberTest(dsptest.TestCase):
    """libconfig 1.5 reads `4294967296` as 0 (no body limit at all): such a literal is refused
    with its FILE:LINE by -t and by a reload, which keeps the old limit; `4294967296L` works."""

    def test_wrapped_literal_refused_by_check_and_reload(self):
        b = self.backend("web")
        d = self.dispatcher([svc("web", b)], [route("*", "web")], start=False,
                            limits={"max_body_bytes": 1000})
        good = open(d.conf).read()
        self.assertIn("max_body_bytes = 1000;", good)
        bad = good.replace("max_body_bytes = 1000;", "max_body_bytes = 4294967296;")
        line = bad[:bad.index("4294967296")].count("\n") + 1
        d.write_config(bad)
        p = subprocess.run([MASTER, "-t", "-c", d.conf], capture_output=True, timeout=20,
                           cwd=d.tmp)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 1, "-t accepted a wrapped literal: %r" % err)
        self.assertRegex(err, re.escape(d.conf) + r":%d: 4294967296 does not fit in 32 bits"
                         % line)

        d.write_config(good)
        self.start_dispatcher(d)
        body = b"x" * 2000
        self.assertEqual(request(d.port, method="POST", body=body).status, 413)
        seen = d.log().count("reload failed")
        d.hup(bad)
        self.assertTrue(dsptest.wait_for(lambda: d.log().count("reload failed") > seen, 10),
                        "reload with a wrapped literal was not refused:\n" + d.log_tail())
        self.assertRegex(d.log(), re.escape(d.conf) + r":%d: 4294967296 does not fit" % line)
        # The old limit (1000) still holds; the wrapped one would have been 0, no limit.
        self.assertEqual(request(d.port, method="POST", body=body).status, 413)
        # Written with the L suffix the same number is read as it stands.
        seen = d.log().count("reload failed")
        d.hup(good.replace("max_body_bytes = 1000;", "max_body_bytes = 4294967296L;"))
        self.assertTrue(dsptest.wait_for(
            lambda: request(d.port, method="POST", body=body).status == 200, 10),
            "4294967296L not applied:\n" + d.log_tail())
        self.assertEqual(d.log().count("reload failed"), seen)
