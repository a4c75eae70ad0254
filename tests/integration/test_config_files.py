"""Files named by the config that are not regular files (FIFO, directory, device, a symlink to
one): certificate, key, CA of a TLS backend, @include. `-t` must answer in bounded time with
FILE:LINE, and a reload must fail without ever stalling the master: the admin socket answers,
a killed worker is respawned, traffic goes on."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import dsptest
from dsptest import make_config, request, route, svc

CTL = os.path.join(dsptest.BIN_DIR, "dispatcherctl")
T = 10 if dsptest.SANITIZED else 5  # bound for any single answer


def admin_ask(path, line):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(T)
    s.connect(path)
    s.sendall(line.encode() + b"\n")
    buf = b""
    while not buf.endswith(b"\n"):
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    return buf.decode()


class NonRegularFilesTest(dsptest.TestCase):
    check_workers = False  # one test kills a worker on purpose

    def setUp(self):
        self.b = self.backend("a")
        self.d = dsptest.Dispatcher()
        t = self.d.tmp
        self.fifo = os.path.join(t, "fifo")
        os.mkfifo(self.fifo)
        self.link = os.path.join(t, "link-to-fifo")
        os.symlink(self.fifo, self.link)
        self.dir = os.path.join(t, "adir")
        os.mkdir(self.dir)
        self.regular = os.path.join(t, "garbage.pem")
        with open(self.regular, "w") as f:
            f.write("not a certificate\n")

    def conf(self, extra="", services=None):
        services = services or [svc("s", self.b)]
        return make_config(self.d.port, self.d.tmp, services, [route("*", "s")], extra=extra)

    def variants(self):
        """(name, config text, what the message must name) for every kind of file path."""
        out = []
        for bad in (self.fifo, self.link, self.dir, "/dev/zero"):
            out.append(("cert " + bad,
                        self.conf('tls = { certificates = ( { cert = "%s"; key = "%s"; } ); };'
                                  % (bad, self.regular)), bad))
            out.append(("key " + bad,
                        self.conf('tls = { certificates = ( { cert = "%s"; key = "%s"; } ); };'
                                  % (self.regular, bad)), bad))
            out.append(("ca " + bad,
                        self.conf(services=[svc("s", self.b, tls=True, ca=bad)]), bad))
            out.append(("include " + bad, self.conf('@include "%s"' % bad), bad))
        return out

    def check_t(self, name, text, bad):
        self.d.write_config(text)
        t0 = time.monotonic()
        try:
            p = subprocess.run([dsptest.MASTER, "-t", "-c", self.d.conf], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=T)
        except subprocess.TimeoutExpired:
            self.fail("%s: -t still running after %ss" % (name, T))
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, "%s: -t exit code; stderr %r" % (name, err))
        self.assertRegex(err, r"dispatcher\.conf:\d+: ", "%s: no FILE:LINE: in %r" % (name, err))
        self.assertIn(os.path.basename(bad), err, name)
        self.assertLess(time.monotonic() - t0, T)

    def test_check_refuses_non_regular_files(self):
        for name, text, bad in self.variants():
            self.check_t(name, text, bad)
        # The config file itself.
        os.unlink(self.d.conf)
        os.mkfifo(self.d.conf)
        p = subprocess.run([dsptest.MASTER, "-t", "-c", self.d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=T)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"a FIFO, not a regular file", p.stderr)

    def test_reload_never_stalls_the_master(self):
        d = self.d
        good = self.conf()
        d.write_config(good)
        self.start_dispatcher(d)
        sock = os.path.join(d.tmp, "admin.sock")
        self.assertEqual(request(d.port).status, 200)
        for i, (name, text, bad) in enumerate(self.variants()):
            if i % 2 == 0:
                seen = d.log().count("not a regular file")
                d.hup(text)
                self.assertTrue(dsptest.wait_for(
                    lambda: d.log().count("not a regular file") > seen, T),
                    "%s: no error logged after SIGHUP within %ss" % (name, T))
            else:
                d.write_config(text)
                try:
                    p = subprocess.run([CTL, "-s", sock, "reload"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, timeout=T)
                except subprocess.TimeoutExpired:
                    self.fail("%s: dispatcherctl reload still waiting after %ss" % (name, T))
                self.assertEqual(p.returncode, 1, "%s: %r %r" % (name, p.stdout, p.stderr))
                self.assertIn(os.path.basename(bad), p.stdout.decode() + p.stderr.decode())
            # The master answers at once, whatever the file was.
            a = admin_ask(sock, "show health")
            self.assertIn('"ok":true', a, name)
            self.assertEqual(request(d.port).status, 200, name)
        # The config file itself replaced by a FIFO.
        seen = d.log().count("not a regular file")
        f2 = os.path.join(d.tmp, "fifo2")
        os.mkfifo(f2)
        os.replace(f2, d.conf)
        d.hup()
        self.assertTrue(dsptest.wait_for(lambda: d.log().count("not a regular file") > seen, T),
                        "config FIFO: no error logged after SIGHUP within %ss" % T)
        self.assertIn('"ok":true', admin_ask(sock, "show health"))
        self.assertTrue(dsptest.wait_for(lambda: "a FIFO" in d.log(), T), d.log_tail())
        self.assertRegex(d.log(), r"dispatcher\.conf:\d+: .*not a regular file")
        # The last failed reload left the master responsive: a killed worker is respawned.
        pids = d.worker_pids()
        os.kill(pids[0], signal.SIGKILL)
        self.assertTrue(dsptest.wait_for(
            lambda: pids[0] not in d.worker_pids() and len(d.worker_pids()) == 2, T),
            "worker not respawned: %s" % d.worker_pids())
        # And a good config still reloads.
        d.write_config(good)
        self.assertIn('"ok":true', admin_ask(sock, "reload"))
        self.assertEqual(request(d.port).status, 200)


class ManyBackendsTest(dsptest.TestCase):

    @dsptest.timeout(60)
    def test_duplicate_backends_found_in_n_log_n(self):
        """A service with 100,000 backends is checked in bounded time (the duplicate search was
        quadratic: seconds of master stall per reload), and a duplicate among them is still
        reported with both lines."""
        tmp = tempfile.mkdtemp(prefix="dsp-it-")
        dsptest._record_tmp(tmp)
        self.addCleanup(shutil.rmtree, tmp, True)
        port = dsptest.free_port()
        addrs = ["127.0.%d.1:%d" % (1 + i // 25000, 1000 + i % 25000) for i in range(100000)]
        text = make_config(port, tmp, [svc("big", *addrs)], [route("big.do", "big")])
        conf = os.path.join(tmp, "dispatcher.conf")
        with open(conf, "w") as f:
            f.write(text)
        # Bounded by growth, not by a clock that a loaded machine or a sanitizer build moves:
        # ten times the backends may cost about ten times (n log n: ~12x), never a hundred
        # (the quadratic search). The small run is 10,000 backends of the same shape.
        small = os.path.join(tmp, "small.conf")
        with open(small, "w") as f:
            f.write(make_config(port, tmp, [svc("big", *addrs[:10000])], [route("big.do", "big")]))
        t0 = time.monotonic()
        p = subprocess.run([dsptest.MASTER, "-t", "-c", small], capture_output=True, timeout=30)
        dt_small = time.monotonic() - t0
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace")[-2000:])
        t0 = time.monotonic()
        p = subprocess.run([dsptest.MASTER, "-t", "-c", conf], capture_output=True, timeout=30)
        dt = time.monotonic() - t0
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace")[-2000:])
        self.assertLess(dt, 35 * dt_small + 1.0,
                        "-t took %.2fs for 100,000 backends, %.2fs for 10,000" % (dt, dt_small))

        # The same address again, on a line of its own after the others.
        text = text.replace('"%s"]' % addrs[-1], '"%s",\n "%s"]' % (addrs[-1], addrs[7]))
        with open(conf, "w") as f:
            f.write(text)
        line = [i + 1 for i, s in enumerate(text.splitlines()) if s.startswith(' "%s"' % addrs[7])]
        self.assertEqual(len(line), 1, "the test did not place the duplicate")
        p = subprocess.run([dsptest.MASTER, "-t", "-c", conf], capture_output=True, timeout=30)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 1, err[-2000:])
        self.assertIn("dispatcher.conf:%d: duplicate backend %s in service 'big' (already at line"
                      % (line[0], addrs[7]), err)
        print("-t of 100,000 backends: %.2fs" % dt)
