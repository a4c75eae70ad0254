"""kill -9 of the master: its workers stop accepting at once, finish the request in flight and
exit within limits.shutdown_timeout_ms; a new master on the same config and port starts at once
and serves; nothing of the dead master is left in /dev/shm, and its pid file and admin socket do
not stand in the way. Run as root and, when possible, with workers that drop to nobody (a uid
change clears the kernel's parent-death signal)."""

import grp
import os
import pwd
import signal
import socket
import subprocess
import threading
import time
import unittest

import dsptest
from dsptest import make_config, request, route, svc

CTL = os.path.join(dsptest.BIN_DIR, "dispatcherctl")
SHUTDOWN_MS = 3000


def shm_of(pid):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("dsp.%d." % pid))


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def alive(pid):
    return dsptest.rss_kib(pid) is not None


class MasterDeathTest(dsptest.TestCase):
    check_workers = False  # the first master's workers go with it

    def run_case(self, extra=""):
        b = self.backend("a")
        d = dsptest.Dispatcher()
        os.chmod(d.tmp, 0o755)  # workers running as nobody write the access log in it
        text = make_config(d.port, d.tmp, [svc("s", b)], [route("*", "s")],
                           limits={"shutdown_timeout_ms": SHUTDOWN_MS}, extra=extra)
        # The admin HTTP port too must be free for the next master at once.
        hport = dsptest.free_port()
        sock = os.path.join(d.tmp, "admin.sock")
        text = text.replace('admin = { socket = "%s"; };' % sock,
                            'admin = { socket = "%s"; http = "127.0.0.1:%d"; };' % (sock, hport))
        d.write_config(text)
        d.start()  # not start_dispatcher(): this master is meant to die with SIGKILL
        self.addCleanup(lambda: d.proc.poll() is None and d.proc.kill())
        old_pid = d.proc.pid
        workers = d.worker_pids()
        self.assertEqual(len(workers), 2)
        self.assertEqual(request(d.port).status, 200)
        self.assertTrue(shm_of(old_pid), "no /dev/shm/dsp.%d.* while running" % old_pid)

        res = {}

        def slow():
            try:
                res["r"] = request(d.port, "/sleep?ms=1500", timeout=10)
            except Exception as e:  # noqa: BLE001 - reported below
                res["e"] = e
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.4)  # the request is on a worker, the backend sleeping

        os.kill(old_pid, signal.SIGKILL)
        d.proc.wait(5)
        t_kill = time.monotonic()
        # Workers stop accepting at once: the port is free (no queue left to land in).
        self.assertTrue(dsptest.wait_for(lambda: refused(d.port), 1.0),
                        "the dead master's workers still accept on port %d" % d.port)

        # A new master on the same config and port starts at once, while the old workers drain.
        d2 = dsptest.Dispatcher(port=d.port, tmp=d.tmp)
        self.start_dispatcher(d2)
        self.assertLess(time.monotonic() - t_kill, 5)
        for _ in range(20):
            self.assertEqual(request(d.port).status, 200)
        self.assertEqual(d2.pid_from_file(), d2.proc.pid)
        p = subprocess.run([CTL, "-s", os.path.join(d.tmp, "admin.sock"), "--json", "show",
                            "health"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(shm_of(old_pid), [], "stale shm of the dead master")
        with dsptest.Conn(hport) as c:
            self.assertEqual(c.request("GET", "/health", host="127.0.0.1").status, 200)

        # The request in flight on the dead master's worker completes.
        t.join(10)
        self.assertNotIn("e", res, res.get("e"))
        self.assertEqual(res["r"].status, 200)
        # Its workers exit within shutdown_timeout_ms of the master's death.
        left = (SHUTDOWN_MS + 500) / 1000.0 - (time.monotonic() - t_kill)
        self.assertTrue(dsptest.wait_for(lambda: not any(alive(w) for w in workers),
                                         max(left, 0.1)),
                        "old workers %s alive %.1fs after the master died"
                        % ([w for w in workers if alive(w)], time.monotonic() - t_kill))
        self.assertEqual(request(d.port).status, 200)

    def test_kill9_master(self):
        self.run_case()

    def test_kill9_master_with_unprivileged_workers(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("privilege drop needs root")
        try:
            pwd.getpwnam("nobody")
            grp.getgrnam("nogroup")
        except KeyError:
            raise unittest.SkipTest("no user nobody / group nogroup")
        self.run_case('user = "nobody"; group = "nogroup";')

    def test_orphaned_workers_leave_no_shm(self):
        """No new master comes: the dead master's workers remove its /dev/shm objects."""
        b = self.backend("a")
        d = dsptest.Dispatcher()
        os.chmod(d.tmp, 0o755)
        extra = 'user = "nobody"; group = "nogroup";' if os.geteuid() == 0 else ""
        d.write_config(make_config(d.port, d.tmp, [svc("s", b)], [route("*", "s")],
                                   extra=extra))
        d.start()
        self.addCleanup(lambda: d.proc.poll() is None and d.proc.kill())
        d.hup()  # a second generation
        self.assertTrue(dsptest.wait_for(lambda: "generation 2" in d.log(), 5), d.log_tail())
        workers, pid = d.worker_pids(), d.proc.pid
        self.assertTrue(shm_of(pid))
        os.kill(pid, signal.SIGKILL)
        d.proc.wait(5)
        self.assertTrue(dsptest.wait_for(lambda: not any(alive(w) for w in workers), 5))
        self.assertEqual(shm_of(pid), [], "the dead master's shm objects outlive its workers")

    def test_live_master_is_not_disturbed(self):
        """A second master on the same config refuses to start (live pid file or live admin
        socket), removes nothing, and never takes a connection of the live one's ports."""
        b = self.backend("a")
        d = dsptest.Dispatcher()
        d.write_config(make_config(d.port, d.tmp, [svc("s", b)], [route("*", "s")]))
        self.start_dispatcher(d)
        before = shm_of(d.proc.pid)
        stop = threading.Event()
        fails, done = [], [0]

        def load():
            while not stop.is_set():
                try:
                    r = request(d.port, timeout=5)
                    if r.status != 200:
                        fails.append(r.status)
                except Exception as e:  # noqa: BLE001 - counted
                    fails.append(repr(e))
                done[0] += 1
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            for i in range(6):
                args = [] if i % 2 == 0 else ["-p", os.path.join(d.tmp, "o.pid")]
                p = subprocess.run([dsptest.MASTER, "-c", d.conf] + args, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=10, cwd=d.tmp)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertIn(b"running", p.stderr)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        self.assertGreater(done[0], 20)
        self.assertEqual(fails, [], "requests to the live master failed while a second one tried "
                         "to start (%d of %d)" % (len(fails), done[0]))
        self.assertEqual(shm_of(d.proc.pid), before)
        self.assertEqual(d.pid_from_file(), d.proc.pid)
        self.assertTrue(os.path.exists(os.path.join(d.tmp, "admin.sock")))
        self.assertEqual(request(d.port).status, 200)
