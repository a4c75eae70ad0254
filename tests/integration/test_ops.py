"""Operations: the SysV init script (start, status, reload, configtest, restart, stop) as root,
the systemd unit (systemd-analyze verify, when available), `make install` into a DESTDIR, the man
pages (man -l), workers running as the configured user (seen in /proc), and run/ and logs/
created at start."""

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import dsptest
from dsptest import make_config, request, route, svc

ROOT = os.path.normpath(os.path.join(dsptest.HERE, "..", ".."))
INIT = os.path.join(ROOT, "contrib", "dispatcher.init")
UNIT = os.path.join(ROOT, "contrib", "dispatcher.service")
MANS = [os.path.join(ROOT, "man", m) for m in
        ("dispatcher-master.8", "dispatcherctl.8", "dispatcher.conf.5")]


def proc_ids(pid):
    """(real, effective uid), (real, effective gid) of <pid> from /proc/PID/status."""
    uids = gids = None
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Uid:"):
                uids = tuple(int(x) for x in line.split()[1:3])
            elif line.startswith("Gid:"):
                gids = tuple(int(x) for x in line.split()[1:3])
    return uids, gids


class OpsTest(dsptest.TestCase):

    def tmpdir(self):
        t = tempfile.mkdtemp(prefix="dsp-it-")
        dsptest._record_tmp(t)
        return t

    def init(self, env, *args):
        p = subprocess.run(["sh", INIT] + list(args), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        return p.returncode, p.stdout.decode()

    @dsptest.timeout(120)
    def test_sysv_script_start_reload_status_stop(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("the init script test runs as root")
        b1, b2 = self.backend("b1"), self.backend("b2")
        d = dsptest.Dispatcher()  # only for its port and temp dir
        pidfile = os.path.join(d.tmp, "run", "dispatcher.pid")
        conf = make_config(d.port, d.tmp, [svc("one", b1)], [route("*", "one")])
        d.write_config(conf)
        env = dict(os.environ, DAEMON=dsptest.MASTER, CONF=d.conf, PIDFILE=pidfile,
                   STOP_TIMEOUT="20")
        rc, out = self.init(env, "status")
        self.assertEqual(rc, 3, out)
        rc, out = self.init(env, "configtest")
        self.assertEqual(rc, 0, out)
        self.assertIn(": ok", out)

        rc, out = self.init(env, "start")
        self.assertEqual(rc, 0, out)
        with open(pidfile) as f:
            pid = int(f.read())
        dsptest._record_pid(pid)

        def cleanup():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.addCleanup(cleanup)
        self.assertTrue(dsptest.wait_for(
            lambda: request(d.port, "/echo", host="x.do").status == 200, 10))
        self.assertEqual(request(d.port, "/echo", host="x.do").header("X-Backend"), "b1")
        # Daemonized: not our child, no controlling terminal, its own session.
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
        fields = st[st.rfind(")") + 2:].split()
        self.assertNotEqual(int(fields[1]), os.getpid())
        self.assertEqual(int(fields[3]), pid)  # session leader
        workers = dsptest.children_of(pid)
        self.assertGreaterEqual(len(workers), 2)

        rc, out = self.init(env, "status")
        self.assertEqual(rc, 0, out)
        self.assertIn("running (pid %d)" % pid, out)
        rc, out = self.init(env, "start")  # already running: fine, nothing new
        self.assertEqual(rc, 0, out)
        with open(pidfile) as f:
            self.assertEqual(int(f.read()), pid)

        # reload: the new config serves, same master and workers.
        d.write_config(make_config(d.port, d.tmp, [svc("two", b2)], [route("*", "two")]))
        rc, out = self.init(env, "reload")
        self.assertEqual(rc, 0, out)
        self.assertTrue(dsptest.wait_for(
            lambda: request(d.port, "/echo", host="x.do").header("X-Backend") == "b2", 5))
        self.assertEqual(dsptest.children_of(pid), workers)
        # A broken config: reload refuses (configtest first) and the master keeps serving.
        d.write_config("workers = ;\n")
        rc, out = self.init(env, "reload")
        self.assertNotEqual(rc, 0, out)
        self.assertEqual(self.init(env, "configtest")[0], 1)
        self.assertEqual(request(d.port, "/echo", host="x.do").header("X-Backend"), "b2")
        d.write_config(make_config(d.port, d.tmp, [svc("two", b2)], [route("*", "two")]))

        rc, out = self.init(env, "restart")
        self.assertEqual(rc, 0, out)
        with open(pidfile) as f:
            pid2 = int(f.read())
        dsptest._record_pid(pid2)
        self.assertNotEqual(pid2, pid)
        self.assertTrue(dsptest.wait_for(lambda: not os.path.exists("/proc/%d" % pid), 5))
        self.assertTrue(dsptest.wait_for(
            lambda: request(d.port, "/echo", host="x.do").status == 200, 10))

        rc, out = self.init(env, "stop")
        self.assertEqual(rc, 0, out)
        self.assertFalse(os.path.exists("/proc/%d" % pid2) and
                         dsptest._state(pid2) not in (None, "Z"))
        self.assertFalse(os.path.exists(pidfile))
        rc, out = self.init(env, "status")
        self.assertEqual(rc, 3, out)
        rc, out = self.init(env, "stop")
        self.assertEqual(rc, 0, out)
        rc, out = self.init(env, "bogus")
        self.assertEqual(rc, 2, out)

    def test_systemd_unit_verifies(self):
        sa = shutil.which("systemd-analyze")
        if sa is None:
            raise unittest.SkipTest("systemd-analyze not installed")
        dest = self.tmpdir()
        unit = os.path.join(dest, "dispatcher.service")
        mandir = os.path.join(dest, "man")
        for sub in ("man5", "man8"):
            os.makedirs(os.path.join(mandir, sub))
        for m in MANS:
            shutil.copy(m, os.path.join(mandir, "man" + m[-1]))
        with open(UNIT) as f:
            text = f.read()
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", text)
        self.assertRegex(text, r"(?m)^Type=(simple|notify)$")
        self.assertRegex(text, r"(?m)^ExecStop=.*-(QUIT|TERM) ")
        with open(unit, "w") as f:
            f.write(text.replace("/usr/local/sbin/dispatcher-master", dsptest.MASTER))
        env = dict(os.environ, MANPATH=mandir, SYSTEMD_LOG_LEVEL="notice")
        p = subprocess.run([sa, "verify", unit], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode()
        # A container without a running systemd may still complain about its own units.
        problems = [l for l in out.splitlines() if "dispatcher.service" in l]
        self.assertEqual(problems, [], out)

    def test_man_pages_render(self):
        if shutil.which("man") is None:
            raise unittest.SkipTest("man not installed")
        for m in MANS:
            p = subprocess.run(["man", "--warnings", "-l", m], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60,
                               env=dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8",
                                        MAN_KEEP_FORMATTING="0"))
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stderr.decode().strip(), "", m)
            text = re.sub(r".\x08", "", p.stdout.decode())  # overstrike bold/underline
            for sec in ("NAME", "SYNOPSIS" if m.endswith(".8") else "DESCRIPTION", "SEE ALSO"):
                self.assertIn(sec, text, m)

    @dsptest.timeout(180)
    def test_make_install_into_destdir(self):
        if shutil.which("make") is None:
            raise unittest.SkipTest("make not installed")
        dest = self.tmpdir()
        # -o all: install what DSP_BIN holds, never rebuild here.
        cmd = ["make", "-C", ROOT, "-o", "all", "BINDIR=" + dsptest.BIN_DIR, "DESTDIR=" + dest,
               "PREFIX=/usr", "install"]
        # Under `make test` the environment carries the outer make's flags (SANITIZE, CC, a
        # jobserver): this make must stand alone.
        env = {k: v for k, v in os.environ.items()
               if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                           env=env)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        for rel, mode in (("usr/sbin/dispatcher-master", 0o755), ("usr/sbin/dispatcherctl", 0o755),
                          ("usr/share/man/man8/dispatcher-master.8", 0o644),
                          ("usr/share/man/man8/dispatcherctl.8", 0o644),
                          ("usr/share/man/man5/dispatcher.conf.5", 0o644),
                          ("usr/share/dispatcher/contrib/dispatcher.service", None),
                          ("usr/share/dispatcher/contrib/dispatcher.init", 0o755),
                          ("usr/share/dispatcher/contrib/dispatcher.logrotate", None),
                          ("etc/dispatcher/dispatcher.conf", 0o644)):
            path = os.path.join(dest, rel)
            self.assertTrue(os.path.isfile(path), rel)
            if mode is not None:
                self.assertEqual(os.stat(path).st_mode & 0o777, mode, rel)
        with open(os.path.join(dest, "usr/share/dispatcher/contrib/dispatcher.service")) as f:
            self.assertIn("ExecStart=/usr/sbin/dispatcher-master", f.read())
        conf = os.path.join(dest, "etc/dispatcher/dispatcher.conf")
        with open(conf) as f:
            text = f.read()
        self.assertIn('"/run/dispatcher/admin.sock"', text)
        self.assertIn('"/var/log/dispatcher/access.log"', text)
        # A daemon never logs to stderr: the installed config has an error log file, in a
        # folder make install created.
        self.assertIn('error = "/var/log/dispatcher/error.log"', text)
        self.assertTrue(os.path.isdir(os.path.join(dest, "var/log/dispatcher")))
        p = subprocess.run([os.path.join(dest, "usr/sbin/dispatcher-master"), "-t", "-c", conf],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout)
        # An existing config is never overwritten.
        with open(conf, "w") as f:
            f.write("# mine\n")
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
                           env=env)
        self.assertEqual(p.returncode, 0, p.stdout.decode())
        with open(conf) as f:
            self.assertEqual(f.read(), "# mine\n")

    def test_workers_drop_privileges(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("privilege drop needs root")
        try:
            pw = pwd.getpwnam("nobody")
        except KeyError:
            raise unittest.SkipTest("no user nobody")
        b = self.backend("b")
        d = dsptest.Dispatcher()
        os.chmod(d.tmp, 0o755)  # the workers (nobody) write the access log in it
        group = "nogroup"
        try:
            import grp
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            group, gid = None, pw.pw_gid
        extra = 'user = "nobody";' + (' group = "%s";' % group if group else "")
        d.write_config(make_config(d.port, d.tmp, [svc("web", b)], [route("*", "web")],
                                   extra=extra))
        self.start_dispatcher(d)
        for w in d.worker_pids():
            uids, gids = proc_ids(w)
            self.assertEqual(uids, (pw.pw_uid, pw.pw_uid), "worker %d" % w)
            self.assertEqual(gids, (gid, gid), "worker %d" % w)
        self.assertEqual(proc_ids(d.proc.pid)[0], (0, 0))  # the master keeps root for reloads
        for _ in range(5):
            self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)
        # Reload still works (the master re-reads as root and publishes for the workers).
        gen = dsptest.generation(d)
        d.hup()
        dsptest.wait_until(lambda: dsptest.workers_on_generation(d, gen + 1), 5,
                           "every worker on the reloaded generation %d" % (gen + 1))
        self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)
        alog = os.path.join(d.tmp, "access.log")
        self.assertEqual(os.stat(alog).st_uid, pw.pw_uid)
        self.assertTrue(dsptest.wait_for(lambda: os.path.getsize(alog) > 0, 5))
        self.assertNotIn("cannot open access log", d.log())

    def test_run_and_logs_folders_are_created(self):
        b = self.backend("b")
        d = dsptest.Dispatcher()
        text = make_config(d.port, d.tmp, [svc("web", b)], [route("*", "web")])
        text = text.replace(os.path.join(d.tmp, "dispatcher.pid"), "run/d/dispatcher.pid")
        text = text.replace(os.path.join(d.tmp, "admin.sock"), "run/d/admin.sock")
        text = text.replace(os.path.join(d.tmp, "access.log"), "logs/a/access.log")
        d.write_config(text)
        self.start_dispatcher(d)
        self.assertTrue(os.path.isfile(os.path.join(d.tmp, "run/d/dispatcher.pid")))
        self.assertTrue(os.path.exists(os.path.join(d.tmp, "run/d/admin.sock")))
        self.assertEqual(request(d.port, "/echo", host="x.do").status, 200)
        self.assertTrue(dsptest.wait_for(
            lambda: os.path.getsize(os.path.join(d.tmp, "logs/a/access.log")) > 0, 5))

    def test_unusable_paths_fail_start_with_a_clear_message(self):
        b = self.backend("b")
        d = dsptest.Dispatcher()
        blocker = os.path.join(d.tmp, "blocker")
        with open(blocker, "w") as f:
            f.write("a file where a folder should be\n")
        text = make_config(d.port, d.tmp, [svc("web", b)], [route("*", "web")])
        text = text.replace(os.path.join(d.tmp, "access.log"), blocker + "/access.log")
        d.write_config(text)
        d.start(wait=False)
        self.assertEqual(d.proc.wait(15), 2)
        self.assertIn("blocker is not a directory", d.log())
        d._err.close()
        d._out.close()
        # A live admin socket is not stolen by a second master.
        d1 = self.dispatcher([svc("web", b)], [route("*", "web")])
        d2 = dsptest.Dispatcher()
        text = make_config(d2.port, d2.tmp, [svc("web", b)], [route("*", "web")])
        d2.write_config(text.replace(os.path.join(d2.tmp, "admin.sock"),
                                     os.path.join(d1.tmp, "admin.sock")))
        d2.start(wait=False)
        self.assertEqual(d2.proc.wait(15), 2)
        self.assertIn("in use by another process", d2.log())
        d2._err.close()
        d2._out.close()
        self.assertEqual(request(d1.port, "/echo", host="x.do").status, 200)
