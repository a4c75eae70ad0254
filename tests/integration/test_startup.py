"""Starting safely: the pid file is locked for the master's life, so masters started at the same
time on one pid file leave exactly one running, and the refused ones touch nothing of it (pid
file, admin socket, /dev/shm objects); `-t` reports what start would fail on with FILE:LINE."""

import os
import signal
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
