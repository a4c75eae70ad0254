"""Chaos under load (issue 12): faults injected while clients keep requests flowing, asserted on
counts. Each test prints one "chaos ...:" line with its counts (requests, failures and what
failures were allowed), the figures of the closing note.

- workers killed with SIGKILL, repeatedly: a request may fail only on a connection that the
  killed worker held at the kill (read from /proc while the victim is stopped), at most one per
  such connection; every other request succeeds;
- hundreds of SIGHUP reloads under keep-alive load: no failed request, and afterwards no fd
  leaked in the master or the workers, no snapshot left in /dev/shm or mapped by a worker;
- a backend killed under load with retries configured: no POST reaches a backend twice (each
  backend records every POST id it read), GETs keep succeeding on the other backend, and only
  POSTs in flight on the killed backend may fail;
- Redis restarted repeatedly under load, with its data and once without (no `version` key: not
  applied): no failed request, the Redis routes are still served, and a change made after the
  restarts is picked up;
- RSS of the workers flat over 1,000,000 keep-alive requests (wrk).

Under the sanitizer build the load and the number of faults are scaled down (time limits double
there, and everything runs ~5x slower)."""

# Load and timing: run alone (see run.py).
DSP_SERIAL = True

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import dsptest
from dsptest import request, route, svc

SAN = dsptest.SANITIZED


def scaled(n, san):
    return san if SAN else n


# ---- helpers -----------------------------------------------------------------------------------

class Load:
    """<threads> client threads, each on its own keep-alive connection (a new one after a failure
    or a close), sending <make_req>(thread, seq) -> (method, path, host, headers, body) and
    checking the answer with <check>(thread, seq, response) -> error text or None. Every request
    is recorded as (t_start, t_end, ok, error, client port, thread, seq)."""

    def __init__(self, port, threads, make_req, check=None, per_request_conn=False):
        self.port = port
        self.make_req = make_req
        self.check = check or (lambda n, i, r: None if r.status == 200 else
                               "status %d %r" % (r.status, r.body[:120]))
        self.per_request_conn = per_request_conn
        self.results = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _run(self, n):
        conn = None
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            method, path, host, headers, body = self.make_req(n, i)
            t0 = time.monotonic()
            lport = None
            try:
                if conn is None:
                    conn = dsptest.Conn(self.port, timeout=10)
                lport = conn.sock.getsockname()[1]
                r = conn.request(method, path, host, headers, body)
                err = self.check(n, i, r)
                if r.closed or self.per_request_conn:
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - every failure counts
                err = "%s: %s" % (type(e).__name__, e)
                if conn is not None:
                    conn.close()
                conn = None
            with self.lock:
                self.results.append((t0, time.monotonic(), err is None, err, lport, n, i))
        if conn is not None:
            conn.close()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(20)
        return self.results

    def count(self):
        with self.lock:
            return len(self.results)

    def failures(self):
        return [r for r in self.results if not r[2]]


def client_ports_of(pid, port):
    """Client-side ports of the established TCP connections to local <port> whose socket is held
    by process <pid> (read from /proc: its socket inodes, then /proc/net/tcp{,6})."""
    inodes = set()
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return set()
    for fd in fds:
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    rport = int(p[2].rsplit(":", 1)[1], 16)
                    if lport == port and p[9] in inodes:
                        ports.add(rport)
        except OSError:
            pass
    return ports


def fd_kinds(pid):
    """{"socket": n, "other": n} for the open fds of <pid>, plus the non-socket targets."""
    socks, other = 0, []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:"):
            socks += 1
        else:
            other.append(re.sub(r"\[\d+\]$", "", link))
    return socks, sorted(other)


def shm_objects(master_pid):
    """The dispatcher's snapshot objects in /dev/shm (named dsp.<master pid>.<generation>)."""
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith("dsp.%d." % master_pid))


def shm_mappings(pid):
    """Distinct /dev/shm/dsp.* files mapped by <pid>."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            return sorted({l.split()[-1] for l in f if "/dev/shm/dsp." in l})
    except OSError:
        return []


def echo_req(host):
    return lambda n, i: ("GET", "/echo/%d/%d" % (n, i), host, (), None)


# A minimal origin for the POST test, run as a process of its own so that it can be SIGKILLed:
# every request it reads completely is appended ("METHOD ID\n", one write) to its record file
# BEFORE it answers, so the record survives the kill.
POST_BACKEND = r"""
import os, socket, sys, threading
name, rec = sys.argv[1], sys.argv[2]
fd = os.open(rec, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(512)
print("PORT %d" % ls.getsockname()[1], flush=True)
def serve(c):
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            hdrs = {}
            for l in lines[1:]:
                k, _, v = l.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            n = int(hdrs.get("content-length", "0"))
            while len(buf) < n:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            body, buf = buf[:n], buf[n:]
            os.write(fd, ("%s %s\n" % (method, hdrs.get("x-post-id", target))).encode())
            out = ("%s %s %d" % (name, target, len(body))).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nX-Backend: " + name.encode() +
                      b"\r\nContent-Length: %d\r\n\r\n" % len(out) + out)
    except OSError:
        pass
    finally:
        c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


class PostBackend:
    def __init__(self, name, tmp):
        self.name = name
        self.record = os.path.join(tmp, "posts-%s.log" % name)
        self.proc = subprocess.Popen([sys.executable, "-c", POST_BACKEND, name, self.record],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        dsptest._record_pid(self.proc.pid)
        line = self.proc.stdout.readline().decode()
        m = re.match(r"PORT (\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("post backend %s did not start: %r" % (name, line))
        self.port = int(m.group(1))
        self.addr = "127.0.0.1:%d" % self.port

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()

    def records(self):
        try:
            with open(self.record) as f:
                return [l.split() for l in f.read().splitlines() if l]
        except OSError:
            return []


class ChaosKillTest(dsptest.TestCase):
    check_workers = False  # killed on purpose

    # ---- (1) workers killed -----------------------------------------------------------------

    @dsptest.timeout(60)
    def test_workers_killed_repeatedly_under_load(self):
        """SIGKILL a worker (alternately each of two) every ~1.5 s under keep-alive load."""
        b = self.backend("web")
        d = self.dispatcher(services=[svc("web", b)], routes=[route("*", "web")], workers=2)
        kills = scaled(6, 3)
        load = Load(d.port, scaled(8, 4), echo_req("k.do")).start()
        killed = []  # (time, victim, client ports it held)
        age = {p: time.monotonic() for p in d.worker_pids()}
        try:
            for _ in range(kills):
                # Kill a worker that has run for over a second (a worker dying right after its
                # start may have its respawn delayed by the crash-loop protection).
                time.sleep(0.3)
                victim = min(age, key=lambda p: age[p])
                time.sleep(max(0.0, age[victim] + 1.2 - time.monotonic()))
                kids_before = set(dsptest.children_of(d.proc.pid))
                os.kill(victim, signal.SIGSTOP)  # frozen: it accepts nothing more
                held = client_ports_of(victim, d.port)
                os.kill(victim, signal.SIGKILL)
                killed.append((time.monotonic(), victim, held))
                del age[victim]
                new = dsptest.wait_for(lambda: [p for p in dsptest.children_of(d.proc.pid)
                                                if p not in kids_before], 3.0, 0.005)
                self.assertTrue(new, "no worker respawned after killing %d" % victim)
                age[new[0]] = time.monotonic()
            time.sleep(0.8)
        finally:
            results = load.stop()
        fails = load.failures()
        allowed = set().union(*[k[2] for k in killed])
        stray = [f for f in fails if f[4] not in allowed]
        per_port = {}
        for f in fails:
            per_port[f[4]] = per_port.get(f[4], 0) + 1
        msg = ("chaos worker-kill: %d requests, %d kills, %d client connections held by the "
               "killed workers, %d failed (%d on other connections): %s"
               % (len(results), len(killed), len(allowed), len(fails), len(stray),
                  [(f[4], f[3]) for f in fails[:8]]))
        print(msg)
        self.assertGreater(len(results), scaled(1000, 100), msg)
        self.assertEqual(stray, [], "failures on connections the killed workers did not hold: "
                         + msg)
        self.assertTrue(all(v == 1 for v in per_port.values()),
                        "more than one failure on one connection: " + msg)
        self.assertLessEqual(len(fails), len(allowed), msg)
        # Every request started after the last respawn (+ grace) succeeded, on both workers.
        for _ in range(20):
            self.assertEqual(request(d.port, "/echo", host="k.do").status, 200)



class ChaosTest(dsptest.TestCase):

    # ---- (2) reload storm ---------------------------------------------------------------------

    @dsptest.timeout(120)
    def test_reload_storm_no_failures_no_leaks(self):
        b = self.backend("web")
        b2 = self.backend("alt")
        routes = [route("*", "web")]
        d = self.dispatcher(services=[svc("web", b), svc("alt", b2)], routes=routes, workers=2)
        conf_a = open(d.conf).read()
        conf_b = conf_a.replace('{ host = "*"; service = "web"; }',
                                '{ host = "*"; service = "web"; },\n  '
                                '{ host = "alt.do"; service = "alt"; }')
        self.assertNotEqual(conf_a, conf_b)
        reloads = scaled(500, 150)
        burst = 100
        workers = sorted(d.worker_pids())

        # Warm up (buffers, pools, first snapshots), then take the baseline with no client.
        # (New connections too: kept-alive ones may all land on one worker, and a worker that
        # served nothing has not opened its access log yet, which would show as a new fd.)
        warm = Load(d.port, 4, echo_req("r.do")).start()
        warm_fresh = Load(d.port, 1, echo_req("r.do"), per_request_conn=True).start()
        time.sleep(0.5)
        warm.stop()
        warm_fresh.stop()
        self.assertEqual(warm.failures(), [])
        self.assertEqual(warm_fresh.failures(), [])
        time.sleep(0.3)
        base_fds = {p: fd_kinds(p) for p in [d.proc.pid] + workers}
        base_shm = shm_objects(d.proc.pid)

        logpos = [0]

        def applied():
            """Reload outcomes logged since the last call."""
            with open(d.errlog, "rb") as f:
                f.seek(logpos[0])
                text = f.read()
            cut = text.rfind(b"\n") + 1
            logpos[0] += cut
            text = text[:cut].decode("utf-8", "replace")
            return (len(re.findall(r"configuration reloaded: generation", text)),
                    len(re.findall(r"reload failed", text)))

        applied()
        load = Load(d.port, scaled(6, 3), echo_req("r.do")).start()
        # One client with a new connection per request: accepts run through the storm too.
        fresh = Load(d.port, 1, echo_req("r.do"), per_request_conn=True).start()
        times, slow = [], []
        done = failed = burst_done = burst_failed = 0
        try:
            for i in range(reloads):
                t0 = time.monotonic()
                d.hup(conf_b if i % 2 == 0 else conf_a)
                got = (0, 0)
                while got == (0, 0) and time.monotonic() - t0 < 10:
                    time.sleep(0.001)
                    got = applied()
                self.assertNotEqual(got, (0, 0), "reload %d not applied within 10s:\n%s"
                                    % (i, d.log_tail()))
                done += got[0]
                failed += got[1]
                times.append(time.monotonic() - t0)
                if times[-1] > 1.0:
                    slow.append((i, times[-1]))
            # The last config is served (reload count is even: conf_a, no alt.do route ...)
            self.assertEqual(request(d.port, "/echo", host="alt.do").header("X-Backend"), "web")
            # ... and a burst of SIGHUPs with no wait (they may coalesce) ends on the last file.
            for i in range(burst):
                d.hup(conf_b if i % 2 else conf_a)
            self.assertTrue(dsptest.wait_for(
                lambda: request(d.port, "/echo", host="alt.do").header("X-Backend") == "alt", 5))
            time.sleep(0.3)
            got = applied()
            burst_done, burst_failed = got
        finally:
            results = load.stop() + fresh.stop()
        fails = [r for r in results if not r[2]]
        times.sort()
        msg = ("chaos reload-storm: %d reloads (%d applied, %d refused) then a burst of %d "
               "SIGHUPs (%d applied), %d requests under them, %d failed; a reload applied in "
               "p50 %.1f ms, max %.1f ms (over 1 s: %s): %s"
               % (reloads, done, failed, burst, burst_done, len(results), len(fails),
                  1000 * times[len(times) // 2], 1000 * times[-1], slow,
                  [f[3] for f in fails[:5]]))
        print(msg)
        self.assertEqual(failed + burst_failed, 0, msg)
        self.assertGreaterEqual(burst_done, 1, msg)
        self.assertEqual(done, reloads, msg)
        self.assertEqual(fails, [], msg)
        self.assertGreater(len(results), reloads, msg)
        self.assertEqual(sorted(d.worker_pids()), workers, "workers replaced during the storm")

        # Leaks: with no client left, the old generations are retired and unlinked.
        def settled():
            return (shm_objects(d.proc.pid) == base_shm
                    and all(len(shm_mappings(p)) <= 1 for p in workers))
        dsptest.wait_for(settled, 10, 0.1)
        now_shm = shm_objects(d.proc.pid)
        maps = {p: shm_mappings(p) for p in workers}
        self.assertLessEqual(len(now_shm), max(len(base_shm), 1),
                             "snapshot objects left in /dev/shm: before %s, after %s"
                             % (base_shm, now_shm))
        for p in workers:
            self.assertLessEqual(len(maps[p]), 1, "worker %d still maps %s" % (p, maps[p]))
        now_fds = {p: fd_kinds(p) for p in [d.proc.pid] + workers}
        for p in [d.proc.pid] + workers:
            (s0, o0), (s1, o1) = base_fds[p], now_fds[p]
            who = "master" if p == d.proc.pid else "worker %d" % p
            self.assertEqual(o1, o0, "%s: non-socket fds changed: %s -> %s" % (who, o0, o1))
            # Sockets: the listeners, the admin socket, and pooled upstream connections (at
            # most one per client connection that was active).
            self.assertLessEqual(s1, s0 + scaled(6, 3) + 2, "%s: sockets %d -> %d"
                                 % (who, s0, s1))
        print("chaos reload-storm: fds master %s workers %s (before %s); /dev/shm objects %d "
              "before, %d after" % (now_fds[d.proc.pid][0] + len(now_fds[d.proc.pid][1]),
                                    [now_fds[p][0] + len(now_fds[p][1]) for p in workers],
                                    [base_fds[p][0] + len(base_fds[p][1])
                                     for p in [d.proc.pid] + workers],
                                    len(base_shm), len(now_shm)))

    # ---- (3) backend killed, POSTs never twice -----------------------------------------------

    @dsptest.timeout(60)
    def test_backend_killed_post_never_sent_twice(self):
        tmp = tempfile.mkdtemp(prefix="dsp-it-chaos-")
        dsptest._record_tmp(tmp)
        self.addCleanup(shutil.rmtree, tmp, True)
        ba, bb = PostBackend("a", tmp), PostBackend("b", tmp)
        self.addCleanup(ba.kill)
        self.addCleanup(bb.kill)
        d = self.dispatcher(services=[svc("web", ba.addr, bb.addr, retries=2)],
                            routes=[route("*", "web")], workers=2)
        nposters, ngetters = scaled(4, 2), scaled(4, 2)

        def make(n, i):
            if n < nposters:
                pid = "%d-%d" % (n, i)
                return ("POST", "/post/" + pid, "p.do", [("X-Post-Id", pid)], b"x" * 100)
            return ("GET", "/get/%d/%d" % (n, i), "p.do", (), None)

        load = Load(d.port, nposters + ngetters, make).start()
        time.sleep(1.0)
        t_kill = time.monotonic()
        ba.kill()  # SIGKILL, then wait until it is gone
        t_dead = time.monotonic()
        time.sleep(2.0)
        results = load.stop()

        recs = ba.records() + bb.records()
        seen = {}
        for method, rid in recs:
            if method == "POST":
                seen[rid] = seen.get(rid, 0) + 1
        twice = sorted(k for k, v in seen.items() if v > 1)
        posts = [r for r in results if r[5] < nposters]
        gets = [r for r in results if r[5] >= nposters]
        post_fail = [r for r in posts if not r[2]]
        get_fail = [r for r in gets if not r[2]]
        ok_ids = {"%d-%d" % (r[5], r[6]) for r in posts if r[2]}
        missing = sorted(i for i in ok_ids if i not in seen)
        gets_after = [r for r in gets if r[0] > t_kill]
        late = [r for r in post_fail if r[0] > t_dead]
        msg = ("chaos backend-kill: %d POSTs (%d failed: %d sent while the backend was being "
               "killed (%.1f ms), %d after it was gone), %d POST ids received twice, %d GETs (%d "
               "after the kill; %d failed): %s"
               % (len(posts), len(post_fail), len(post_fail) - len(late),
                  1000 * (t_dead - t_kill), len(late), len(twice), len(gets), len(gets_after),
                  len(get_fail), [("thread %d #%d at kill%+.4fs" % (r[5], r[6], r[0] - t_kill),
                                   r[3][:90]) for r in (post_fail + get_fail)[:8]]))
        print(msg)
        self.assertEqual(twice, [], "POSTs sent twice: " + msg)
        self.assertEqual(missing, [], "POSTs answered 200 but never received: " + msg)
        self.assertEqual(get_fail, [], msg)
        # A failed POST can only be one that went to the backend before it was gone (between
        # SIGKILL and its end, a process still holds its sockets: a request may reach it and be
        # lost). Once it is gone, a pooled connection to it must never be used for a POST.
        self.assertEqual(late, [], "POSTs sent after the backend was gone failed: " + msg)
        self.assertGreater(len(gets_after), scaled(100, 20), msg)
        self.assertGreater(len(posts), scaled(200, 40), msg)

    # ---- (4) Redis restarted ----------------------------------------------------------------

    @dsptest.timeout(90)
    def test_redis_restarted_under_load(self):
        import test_redis as tr  # a module alias: its TestCase is not collected again here
        tmp = tempfile.mkdtemp(prefix="dsp-it-chaos-redis-")
        dsptest._record_tmp(tmp)
        self.addCleanup(shutil.rmtree, tmp, True)
        r = tr.Redis(tmp).start()
        self.addCleanup(r.stop)
        gw, api = self.backend("gw"), self.backend("api")
        d = self.dispatcher(services=[svc("gw", gw)], routes=[route("gw.do", "gw")],
                            extra=tr.redis_block(r, resync_ms=300))
        tr.add_service(r, "production", "api", [api.addr])
        tr.add_route(r, "production", "api", host="api.do", service="api")
        r.cli("INCR", "dispatcher:production:version")
        tr.publish(r, "production")
        self.assertIsNotNone(tr.wait_all([d.port], "api.do", 200, "api", timeout_s=3))
        r.cli("SAVE")

        def make(n, i):
            return ("GET", "/echo/%d/%d" % (n, i), "api.do" if n % 2 else "gw.do", (), None)

        def check(n, i, resp):
            want = "api" if n % 2 else "gw"
            if resp.status != 200 or resp.header("X-Backend") != want:
                return "status %d from %s" % (resp.status, resp.header("X-Backend"))
            return None

        restarts = scaled(3, 2)
        load = Load(d.port, scaled(6, 4), make, check).start()
        reconnects = 0
        try:
            for k in range(restarts):
                time.sleep(0.5)
                lost = len(re.findall(r"still serving generation", d.log()))
                back = len(re.findall(r"reconnected", d.log()))
                r.kill()
                self.assertTrue(dsptest.wait_for(
                    lambda: len(re.findall(r"still serving generation", d.log())) > lost, 5,
                    0.05), d.log_tail())
                time.sleep(0.3)
                r.start()
                self.assertTrue(dsptest.wait_for(
                    lambda: len(re.findall(r"reconnected", d.log())) > back, 10, 0.05),
                    "no reconnect after restart %d:\n%s" % (k + 1, d.log_tail()))
                reconnects += 1
            # Restarted without its data: the namespace has no version key, so it is not
            # applied and the last good Redis config keeps serving (SPEC, Redis).
            time.sleep(0.5)
            back = len(re.findall(r"reconnected", d.log()))
            r.kill()
            os.unlink(os.path.join(tmp, "dump.rdb"))
            r.start()
            self.assertTrue(dsptest.wait_for(
                lambda: len(re.findall(r"reconnected", d.log())) > back, 10, 0.05),
                "no reconnect after the empty restart:\n%s" % d.log_tail())
            time.sleep(1.0)  # over three resyncs (resync_ms = 300) with the empty namespace
            self.assertEqual(r.cli("EXISTS", "dispatcher:production:version"), "0")
            # The operator writes the data back, and a new route, in one transaction (a
            # resync between separate writes would rightly apply a half-written namespace).
            k = "dispatcher:production:"
            script = "\n".join([
                "MULTI",
                "HSET %sservice:api backends %s" % (k, api.addr),
                "SADD %sservices api" % k,
                "HSET %sroute:api host api.do service api" % k,
                "HSET %sroute:api2 host api2.do service api" % k,
                "SADD %sroutes api api2" % k,
                "INCR %sversion" % k,
                "EXEC", ""])
            subprocess.run([tr.REDIS_CLI, "-h", "127.0.0.1", "-p", str(r.port)],
                           input=script.encode(), capture_output=True, check=True, timeout=10)
            tr.publish(r, "production")
            self.assertIsNotNone(tr.wait_all([d.port], "api2.do", 200, "api", timeout_s=5),
                                 d.log_tail())
            time.sleep(0.3)
        finally:
            results = load.stop()
        fails = [x for x in results if not x[2]]
        api_n = sum(1 for x in results if x[5] % 2)
        msg = ("chaos redis-restart: %d restarts with the data and 1 without (%d reconnects), %d "
               "requests (%d on the Redis route), %d failed: %s" % (restarts, reconnects + 1, len(results), api_n, len(fails),
                                          [x[3] for x in fails[:5]]))
        print(msg)
        self.assertEqual(fails, [], msg)
        self.assertGreater(api_n, scaled(300, 50), msg)
        self.assertEqual(tr.status(d.port, "api.do"), (200, "api"))

    # ---- (5) RSS over 1,000,000 requests --------------------------------------------------------

    @dsptest.timeout(120)
    def test_rss_flat_over_a_million_requests(self):
        wrk = shutil.which("wrk")
        if wrk is None:
            self.skipTest("wrk is not installed (make deps installs it with the bench packages)")
        b = self.backend("fast")
        d = self.dispatcher(services=[svc("fast", b)], routes=[route("*", "fast")], workers=2,
                            extra="")
        workers = d.worker_pids()
        target = scaled(1000000, 100000)
        budget = scaled(75, 150)  # seconds of wrk at most
        url = "http://127.0.0.1:%d/health" % d.port

        def run_wrk(secs):
            out = subprocess.run([wrk, "-t2", "-c32", "-d%ds" % secs, "-H", "Host: rss.do", url],
                                 capture_output=True, timeout=secs + 30).stdout.decode()
            m = re.search(r"(\d+) requests in", out)
            self.assertIsNotNone(m, out)
            bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            errs = re.search(r"Socket errors: (.*)", out)
            return int(m.group(1)), int(bad.group(1)) if bad else 0, errs.group(1) if errs else ""

        n0, bad0, _ = run_wrk(2)  # warm-up: pools, buffers, allocator arenas
        self.assertEqual(bad0, 0)
        rss0 = {p: dsptest.rss_kib(p) for p in workers}
        total, bad, errs, t0 = 0, 0, [], time.monotonic()
        while total < target and time.monotonic() - t0 < budget:
            n, nb, e = run_wrk(5)
            total += n
            bad += nb
            if e:
                errs.append(e)
        rss1 = {p: dsptest.rss_kib(p) for p in workers}
        growth = max(rss1[p] - rss0[p] for p in workers)
        limit_kib = scaled(2048, 16384)
        msg = ("chaos rss: %d requests in %.0f s after %d warm-up, worker RSS %s KiB -> %s KiB "
               "(max growth %d KiB, limit %d), %d non-2xx, socket errors %s"
               % (total, time.monotonic() - t0, n0, [rss0[p] for p in workers],
                  [rss1[p] for p in workers], growth, limit_kib, bad, errs))
        print(msg)
        self.assertEqual(bad, 0, msg)
        self.assertEqual(errs, [], msg)
        self.assertGreaterEqual(total, target, "fewer requests than planned: " + msg)
        self.assertLess(growth, limit_kib, msg)
        self.assertEqual(sorted(d.worker_pids()), sorted(workers))
