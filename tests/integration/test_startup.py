"""Starting safely: the pid file is locked for the master's life, so masters started at the same
time on one pid file leave exactly one running, and the refused ones touch nothing of it (pid
file, admin socket, /dev/shm objects); `-t` reports what start would fail on with FILE:LINE."""

import os
import signal
import socket
import subprocess
import time

import dsptest
from dsptest import make_config, request, route, svc

CTL = os.path.join(dsptest.BIN_DIR, "dispatcherctl")


def shm_of(pid):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("dsp.%d." % pid))


def check(conf, *args):
    return subprocess.run([dsptest.MASTER, "-c", conf, "-t"] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20,
                          cwd=os.path.dirname(conf))


def line_of(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError("%r not in the config" % needle)


class PidLockTest(dsptest.TestCase):
    @dsptest.timeout(90)
    def test_masters_started_at_once_leave_one(self):
        b = self.backend("a")
        for rnd in range(4):
            d = dsptest.Dispatcher()
            d.write_config(make_config(d.port, d.tmp, [svc("s", b)], [route("*", "s")]))
            errs = [open(os.path.join(d.tmp, "err%d.log" % i), "wb") for i in range(4)]
            procs = [subprocess.Popen([dsptest.MASTER, "-c", d.conf], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=e, cwd=d.tmp)
                     for e in errs]
            for p in procs:
                dsptest._record_pid(p.pid)
            try:
                # The refused ones exit 2 by themselves; exactly one keeps running.
                dsptest.wait_for(lambda: sum(p.poll() is not None for p in procs) >= 3, 15)
                time.sleep(0.5)
                alive = [p for p in procs if p.poll() is None]
                logs = []
                for i, p in enumerate(procs):
                    with open(os.path.join(d.tmp, "err%d.log" % i), "rb") as f:
                        logs.append(f.read().decode("utf-8", "replace"))
                self.assertEqual(len(alive), 1, "round %d: %d masters running, exits %s\n%s"
                                 % (rnd, len(alive), [p.returncode for p in procs],
                                    "\n".join(logs)))
                live = alive[0]
                for i, p in enumerate(procs):
                    if p is not live:
                        self.assertEqual(p.returncode, 2, logs[i])
                d.proc = live
                d._err, d._out = errs[procs.index(live)], open(os.devnull, "wb")
                d.wait_ready()
                # Everything of the live one is in place and its own.
                self.assertEqual(d.pid_from_file(), live.pid)
                r = subprocess.run([CTL, "-s", os.path.join(d.tmp, "admin.sock"), "show",
                                    "workers"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   timeout=10)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertTrue(shm_of(live.pid))
                for p in procs:
                    if p is not live:
                        self.assertEqual(shm_of(p.pid), [], "refused master left shm")
                self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)
                self.assertEqual(d.stop(), [])
                self.assertFalse(os.path.exists(os.path.join(d.tmp, "dispatcher.pid")))
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
                for e in errs:
                    e.close()

    def test_second_master_refused_by_the_lock_touches_nothing(self):
        b = self.backend("a")
        d = self.dispatcher([svc("s", b)], [route("*", "s")])
        pidf = os.path.join(d.tmp, "dispatcher.pid")
        # The lock, not the file's contents, is what refuses: even a pid file emptied (as a
        # careless logrotate or an operator might) still keeps a second master out.
        with open(pidf, "w"):
            pass
        st = os.stat(pidf)
        sock = os.stat(os.path.join(d.tmp, "admin.sock"))
        before = shm_of(d.proc.pid)
        # A second config naming the same pid file, with its own port and admin socket.
        other = dsptest.Dispatcher()
        text = make_config(other.port, other.tmp, [svc("s", b)], [route("*", "s")])
        other.write_config(text.replace(os.path.join(other.tmp, "dispatcher.pid"), pidf))
        p = subprocess.run([dsptest.MASTER, "-c", other.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10, cwd=other.tmp)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"is locked by", p.stderr)
        self.assertEqual((os.stat(pidf).st_ino, os.stat(pidf).st_mtime_ns),
                         (st.st_ino, st.st_mtime_ns))
        now = os.stat(os.path.join(d.tmp, "admin.sock"))
        self.assertEqual((now.st_ino, now.st_mtime_ns), (sock.st_ino, sock.st_mtime_ns))
        self.assertEqual(shm_of(d.proc.pid), before)
        self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)
        # (The workers do not hold the lock: test_master_death starts a new master at once
        # after a kill -9 of the old one, while its workers still finish.)


class CheckHostTest(dsptest.TestCase):
    def config(self, d, **repl):
        text = make_config(d.port, d.tmp, [svc("s", "127.0.0.1:9")], [route("*", "s")])
        for old, new in repl.items():
            text = text.replace(old, new)
        d.write_config(text)
        return text

    def test_check_catches_what_start_would_fail_on(self):
        d = dsptest.Dispatcher()
        with open(os.path.join(d.tmp, "blocker"), "w") as f:
            f.write("a file where a folder should be\n")
        t = d.tmp
        text = self.config(d, **{
            "workers = 2;": 'workers = 2;\nuser = "no-such-user-dsp";\ngroup = "no-such-group-dsp";',
            'error = "stderr"': 'error = "%s/blocker/logs/error.log"' % t,
            os.path.join(t, "access.log"): os.path.join(t, "blocker/logs/access.log"),
            os.path.join(t, "dispatcher.pid"): os.path.join(t, "blocker/run/d.pid"),
            os.path.join(t, "admin.sock"): os.path.join(t, "blocker/admin.sock"),
        })
        p = check(d.conf)
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, err)
        self.assertNotIn(b"ok", p.stdout)
        want = [
            ("user", 'unknown user "no-such-user-dsp"'),
            ("group", 'unknown group "no-such-group-dsp"'),
            ("log = ", "log.error: %s/blocker is not a directory" % t),
            ("log = ", "log.access: %s/blocker is not a directory" % t),
            ("pid_file", "pid file: %s/blocker is not a directory" % t),
            ("admin = ", "admin.socket: %s/blocker is not a directory" % t),
        ]
        for needle, msg in want:
            self.assertIn("%s:%d: %s" % (d.conf, line_of(text, needle), msg), err)
        self.assertEqual(len(err.strip().splitlines()), len(want), err)
        # Start fails on them too (the first it meets): -t said so beforehand.
        d.start(wait=False)
        self.assertIn(d.proc.wait(15), (1, 2))
        d._err.close()
        d._out.close()
        # -p names the pid file in use: checked instead of pid_file.
        p = check(d.conf, "-p", os.path.join(t, "blocker/x.pid"))
        self.assertIn("pid file: %s/blocker is not a directory" % t, p.stderr.decode())

    def test_folders_that_start_creates_pass_the_check(self):
        d = dsptest.Dispatcher()
        t = d.tmp
        self.config(d, **{
            'error = "stderr"': 'error = "%s"' % os.path.join(t, "logs/e/error.log"),
            os.path.join(t, "access.log"): os.path.join(t, "logs/a/access.log"),
            os.path.join(t, "dispatcher.pid"): os.path.join(t, "run/d/dispatcher.pid"),
            os.path.join(t, "admin.sock"): os.path.join(t, "run/s/admin.sock"),
        })
        p = check(d.conf)
        self.assertEqual((p.returncode, p.stderr), (0, b""))
        self.assertIn(b"ok", p.stdout)
        self.assertFalse(os.path.exists(os.path.join(t, "run")))  # -t creates nothing

    def test_daemon_with_stderr_log_is_warned(self):
        d = dsptest.Dispatcher()
        t = d.tmp
        text = self.config(d)
        p = check(d.conf, "-D")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("%s:%d: warning: log.error is \"stderr\" and -D" %
                      (d.conf, line_of(text, "log = ")), p.stderr.decode())
        p = check(d.conf)
        self.assertEqual(p.stderr, b"")
        # The start says it too, before it detaches.
        p = subprocess.run([dsptest.MASTER, "-c", d.conf, "-D"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20, cwd=t)
        pidf = os.path.join(d.tmp, "dispatcher.pid")
        self.assertTrue(dsptest.wait_for(lambda: os.path.exists(pidf) and
                                         os.path.getsize(pidf) > 0, 10))
        pid = d.pid_from_file()
        dsptest._record_pid(pid)
        try:
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn(b"warning: log.error is \"stderr\" and -D", p.stderr)
        finally:
            os.kill(pid, signal.SIGTERM)
            dsptest.wait_for(lambda: dsptest.rss_kib(pid) is None, 10)
        # Set to a file, there is nothing to warn about.
        text = self.config(d, **{'error = "stderr"': 'error = "%s/e.log"' % d.tmp})
        p = check(d.conf, "-D")
        self.assertEqual((p.returncode, p.stderr), (0, b""))


class SyslogTest(dsptest.TestCase):
    def test_error_log_to_syslog(self):
        b = self.backend("a")
        d = dsptest.Dispatcher()
        path = os.path.join(d.tmp, "log.sock")
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(path)
        rx.settimeout(0.2)
        self.addCleanup(rx.close)
        text = make_config(d.port, d.tmp, [svc("s", b), svc("dead", "127.0.0.1:9")],
                           [route("dead.do", "dead"), route("*", "s")])
        text = text.replace('error = "stderr";', 'error = "syslog"; syslog_facility = "local3"; '
                            'syslog_socket = "log.sock";')
        d.write_config(text)
        p = check(d.conf, "-D")
        self.assertEqual((p.returncode, p.stderr), (0, b""))  # nothing lost with -D
        self.start_dispatcher(d)
        got = []

        def drain(pred, timeout=10):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if any(pred(m) for m in got):
                    return True
                try:
                    got.append(rx.recv(4096).decode("utf-8", "replace"))
                except socket.timeout:
                    pass
            return False

        # local3 = 19: info is <158>, error <155>; one datagram per line, the pid as the tag.
        self.assertTrue(drain(lambda m: m.startswith("<158>") and " started: " in m), got)
        m = [m for m in got if " started: " in m][0]
        self.assertIn("dispatcher[%d]: [info] master" % d.proc.pid, m)
        self.assertFalse(m.endswith("\n"))
        self.assertEqual(d.log(), "")  # nothing on stderr
        # The workers' lines go there too (a refused backend is taken out, a warning).
        self.assertEqual(request(d.port, "/", host="dead.do").status, 502)
        self.assertTrue(drain(lambda m: m.startswith("<156>") and "127.0.0.1:9" in m), got)
        m = [m for m in got if "127.0.0.1:9" in m][0]
        self.assertTrue(any("dispatcher[%d]: [warn] worker" % w in m for w in d.worker_pids()), m)
        # An error: a killed worker is respawned, and the master says so.
        os.kill(d.worker_pids()[0], signal.SIGKILL)
        self.assertTrue(drain(lambda m: m.startswith("<155>") and "killed by signal" in m), got)
        dsptest.wait_for(lambda: len(d.worker_pids()) == 2, 5)
        d.initial_workers = d.worker_pids()
        # ...and a syslog daemon that restarts (new socket at the same path) gets the next ones.
        rx.close()
        os.unlink(path)
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(path)
        rx.settimeout(0.2)
        self.addCleanup(rx.close)
        d.hup()
        got.clear()
        self.assertTrue(drain(lambda m: "reloaded" in m), got)
        self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)

    def test_syslog_settings_checked(self):
        d = dsptest.Dispatcher()
        text = make_config(d.port, d.tmp, [svc("s", "127.0.0.1:9")], [route("*", "s")])
        bad = text.replace('error = "stderr";', 'error = "syslog"; syslog_socket = "nope.sock";')
        d.write_config(bad)
        p = check(d.conf)
        self.assertEqual(p.returncode, 1)
        self.assertIn("%s:%d: log.error = \"syslog\": cannot reach %s/nope.sock" %
                      (d.conf, line_of(bad, "log = "), d.tmp), p.stderr.decode())
        bad = text.replace('error = "stderr";', 'error = "syslog"; syslog_facility = "mail";')
        d.write_config(bad)
        p = check(d.conf)
        self.assertEqual(p.returncode, 1)
        self.assertIn('log.syslog_facility "mail" must be', p.stderr.decode())
        bad = text.replace('error = "stderr";', 'error = "stderr"; syslog_facility = "daemon";')
        d.write_config(bad)
        p = check(d.conf)
        self.assertEqual(p.returncode, 1)
        self.assertIn('log.syslog_facility applies to error = "syslog" only', p.stderr.decode())
