"""What an operator meets (issue 16): a master refuses an address another process listens on
(naming it), also at -t; dispatcherctl reload prints every error and warning on its own line;
the init script prints each error once; small CLI and log messages."""

import os
import re
import signal
import socket
import subprocess

import dsptest
from dsptest import make_config, request, route, svc

CTL = os.path.join(dsptest.BIN_DIR, "dispatcherctl")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args, cwd=None, env=None, timeout=20):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          cwd=cwd, env=env)


def comm(pid):
    with open("/proc/%d/comm" % pid) as f:
        return f.read().strip()


class PortHeldTest(dsptest.TestCase):
    def test_plain_listener_named_at_start_and_at_check(self):
        busy = socket.socket()
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen(5)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        d = dsptest.Dispatcher(port=port)
        d.write_config(make_config(port, d.tmp, [svc("w", "127.0.0.1:9")], [route("*", "w")]))
        holder = "pid %d (%s)" % (os.getpid(), comm(os.getpid()))
        p = run([dsptest.MASTER, "-c", d.conf], cwd=d.tmp)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 2, err)
        self.assertIn("127.0.0.1:%d" % port, err)
        self.assertIn(holder, err, "the message names the process that listens there")
        self.assertFalse(os.path.exists(os.path.join(d.tmp, "dispatcher.pid")))
        p = run([dsptest.MASTER, "-t", "-c", d.conf], cwd=d.tmp)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 1, err)
        self.assertRegex(err, re.escape(d.conf) + r":\d+: listener 127\.0\.0\.1:%d: .*%s"
                         % (port, re.escape(holder)))

    def test_second_master_with_another_config_refused(self):
        b = self.backend("a")
        first = self.dispatcher([svc("s", b)], [route("*", "s")])
        other = dsptest.Dispatcher(port=first.port)
        other.write_config(make_config(first.port, other.tmp, [svc("s", b)], [route("*", "s")]))
        # -t of the running master's own config is fine: those sockets are its own.
        p = run([dsptest.MASTER, "-t", "-c", first.conf], cwd=first.tmp)
        self.assertEqual(p.returncode, 0, p.stderr)
        # Another configuration on the same port is refused before it binds anything.
        p = run([dsptest.MASTER, "-t", "-c", other.conf], cwd=other.tmp)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"pid %d (" % first.proc.pid, p.stderr)
        p = run([dsptest.MASTER, "-c", other.conf], cwd=other.tmp)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 2, err)
        self.assertIn("127.0.0.1:%d" % first.port, err)
        self.assertIn("pid %d (dispatcher-mast" % first.proc.pid, err)
        self.assertFalse(os.path.exists(os.path.join(other.tmp, "dispatcher.pid")))
        # The first one goes on serving, alone, and still reloads.
        self.assertEqual(first.pid_from_file(), first.proc.pid)
        for _ in range(20):
            self.assertEqual(request(first.port, "/echo", host="x.do").status, 200)
        gen = dsptest.generation(first)
        first.hup()
        dsptest.wait_until(lambda: dsptest.generation(first) > gen, 5, "reload")
