"""Backends named by host name: the master resolves them (c-ares) through a tiny DNS server this
test runs on 127.0.0.1 (dns.servers), re-resolves them at the TTL, publishes address changes as
new generations, keeps the last good addresses when resolution fails, and honours /etc/hosts."""
import json
import os
import re
import select
import socket
import struct
import subprocess
import threading
import time

import dsptest
from dsptest import Conn, request, route, svc, wait_until


class DnsServer:
    """UDP DNS server on 127.0.0.1: answers A queries for the names in <records> (name -> list
    of IPv4 strings) with <ttl>, AAAA with no data, other names with NXDOMAIN. mode "silent"
    drops every query, "servfail" answers SERVFAIL; <delay> holds each answer back."""

    def __init__(self, records, ttl=1):
        self.records = dict(records)
        self.ttl = ttl
        self.mode = "answer"
        self.delay = 0  # seconds before each answer leaves
        self.flip = False  # answer A queries with one address of the list, alternating
        self.flips = 0
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop:
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            self.queries += 1
            if self.mode == "silent" or len(data) < 12:
                continue
            reply = self._answer(data)
            if reply is None:
                continue
            if self.delay > 0:
                t = threading.Timer(self.delay, self._send, (reply, peer))
                t.daemon = True
                t.start()
            else:
                self._send(reply, peer)

    def _send(self, reply, peer):
        try:
            self.sock.sendto(reply, peer)
        except OSError:
            pass

    def _answer(self, q):
        qid, flags, qd = struct.unpack("!HHH", q[:6])
        if qd != 1:
            return None
        labels, off = [], 12
        while off < len(q) and q[off] != 0:
            n = q[off]
            labels.append(q[off + 1:off + 1 + n].decode("ascii", "replace").lower())
            off += 1 + n
        if off + 5 > len(q):
            return None
        qtype, qclass = struct.unpack("!HH", q[off + 1:off + 5])
        question = q[12:off + 5]
        name = ".".join(labels)
        rflags = 0x8000 | (flags & 0x0100) | 0x0080  # response, RD copied, RA
        answers = []
        if self.mode == "servfail":
            rflags |= 2
        elif name not in self.records:
            rflags |= 3  # NXDOMAIN
        elif qtype == 1:
            ips = self.records[name]
            if self.flip and qtype == 1:
                self.flips += 1
                ips = ips[self.flips % 2:][:1]  # every A answer differs from the last
            for ip in ips:
                answers.append(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, self.ttl, 4)
                               + socket.inet_aton(ip))
        head = struct.pack("!HHHHHH", qid, rflags, 1, len(answers), 0, 0)
        return head + question + b"".join(answers)

    def stop(self):
        self._stop = True
        self._t.join()
        self.sock.close()


class NamedBackend:
    """dsp-testbackend on <ip>:<port> (port 0: ephemeral)."""

    def __init__(self, name, ip, port=0):
        self.name = name
        self.proc = subprocess.Popen([dsptest.TESTBACKEND, "-l", "%s:%d" % (ip, port), "-n", name],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dsptest._record_pid(self.proc.pid)
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        line = self.proc.stdout.readline().decode() if ready else ""
        m = re.match(r"PORT (\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("dsp-testbackend on %s:%d: %r" % (ip, port, line))
        self.ip = ip
        self.port = int(m.group(1))
        self.addr = "%s:%d" % (ip, self.port)

    def stats(self):
        return json.loads(_get(self.ip, self.port, "/stats"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def _get(ip, port, path):
    with socket.create_connection((ip, port), timeout=5) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n" % path)
                  .encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def resolve_info(d, service):
    for s in dsptest.admin_ask(d, "show instances")["instances"]:
        if s["name"] == service:
            return s
    return None


def served_addresses(d, service):
    s = resolve_info(d, service)
    return sorted(b["address"] for b in s["backends"]) if s else None


def backend_field(d, service, address, field):
    for b in resolve_info(d, service)["backends"]:
        if b["address"] == address:
            return b[field]
    return None


class DnsBackendTest(dsptest.TestCase):
    def dns(self, records, ttl=1):
        srv = DnsServer(records, ttl)
        self.addCleanup(srv.stop)
        return srv

    def named_backend(self, name, ip, port=0):
        b = NamedBackend(name, ip, port)
        self.addCleanup(b.stop)
        return b

    def dns_extra(self, srv, resolve_ms=1000, timeout_ms=200):
        return ('dns = { servers = [ "127.0.0.1:%d" ]; resolve_ms = %d; min_ttl_ms = 100; '
                'timeout_ms = %d; };' % (srv.port, resolve_ms, timeout_ms))

    def backends_seen(self, d, n=12):
        return {request(d.port, "/echo", host="app.do").header("X-Backend") for _ in range(n)}

    def test_all_addresses_then_change(self):
        """A name with two addresses: both serve. The answer changes: a new generation, traffic
        moves, requests in flight complete, and an open keep-alive connection (client side and the
        pooled one to the address that stays) is not closed."""
        b2 = self.named_backend("b2", "127.0.0.2")
        b3 = self.named_backend("b3", "127.0.0.3", b2.port)
        b4 = self.named_backend("b4", "127.0.0.4", b2.port)
        srv = self.dns({"app.test": ["127.0.0.2", "127.0.0.3"]}, ttl=1)
        d = self.dispatcher([svc("app", "app.test:%d" % b2.port)], [route("app.do", "app")],
                            workers=1, extra=self.dns_extra(srv))
        self.assertEqual(self.backends_seen(d), {"b2", "b3"})
        info = resolve_info(d, "app")
        self.assertEqual(info["resolve"][0]["name"], "app.test:%d" % b2.port)
        self.assertEqual(info["resolve"][0]["status"], "ok")
        self.assertEqual(sorted(info["resolve"][0]["addresses"]), sorted([b2.addr, b3.addr]))

        keep = Conn(d.port)
        self.addCleanup(keep.close)
        for _ in range(4):
            self.assertEqual(keep.request("GET", "/echo", host="app.do").status, 200)
        accepted_b3 = b3.stats()["accepted"]
        gen = dsptest.generation(d)
        requests_b3 = backend_field(d, "app", b3.addr, "requests")
        self.assertGreater(requests_b3, 0)

        slow = []

        def sleeper():
            slow.append(request(d.port, "/sleep?ms=1500", host="app.do", timeout=10).status)
        threads = [threading.Thread(target=sleeper) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # both are in flight, one on each address
        srv.records["app.test"] = ["127.0.0.3", "127.0.0.4"]
        wait_until(lambda: served_addresses(d, "app") == sorted([b3.addr, b4.addr]), 10,
                   "the new address set published")
        self.assertGreater(dsptest.generation(d), gen)
        for t in threads:
            t.join(10)
        self.assertEqual(slow, [200, 200])
        wait_until(lambda: dsptest.workers_on_generation(d, dsptest.generation(d)), 5,
                   "the worker on the new generation")
        self.assertEqual(self.backends_seen(d), {"b3", "b4"})
        for _ in range(4):
            self.assertEqual(keep.request("GET", "/echo", host="app.do").status, 200)
        # The pooled connection to 127.0.0.3 (an address that stayed) was reused, not reopened:
        # the one more connection b3 accepted is this /stats request's own.
        self.assertEqual(b3.stats()["accepted"], accepted_b3 + 1)
        # Its runtime state (counters, health, circuit) is kept: keyed by address, not by name.
        self.assertGreaterEqual(backend_field(d, "app", b3.addr, "requests"), requests_b3 + 2)
        self.assertIn("resolves to 2 addresses", d.log())

    def test_failure_keeps_last_good(self):
        """The DNS server stops answering, then says the name does not exist: the last good
        addresses keep serving and `show instances` shows the failure; answers again: ok."""
        b2 = self.named_backend("b2", "127.0.0.2")
        srv = self.dns({"app.test": ["127.0.0.2"]}, ttl=1)
        d = self.dispatcher([svc("app", "app.test:%d" % b2.port, "127.0.0.1:1")],
                            [route("app.do", "app")], workers=1,
                            extra=self.dns_extra(srv, resolve_ms=500))
        srv.mode = "silent"

        def failed_with(text):
            r = resolve_info(d, "app")["resolve"][0]
            return r["status"] == "failed" and text in (r["error"] or "") and r
        r = wait_until(lambda: failed_with("no answer"), 10, "a timed-out resolution shown")
        self.assertEqual(r["addresses"], [b2.addr])
        self.assertGreaterEqual(r["failures"], 1)
        self.assertEqual(request(d.port, "/echo", host="app.do").header("X-Backend"), "b2")
        srv.records = {}
        srv.mode = "answer"
        wait_until(lambda: failed_with("no such name"), 10, "NXDOMAIN shown")
        self.assertEqual(sorted(served_addresses(d, "app")), sorted([b2.addr, "127.0.0.1:1"]))
        self.assertEqual(request(d.port, "/echo", host="app.do").header("X-Backend"), "b2")
        self.assertIn("keeping its last 1 address", d.log())
        # dispatcherctl's table says it too.
        out = subprocess.run([os.path.join(dsptest.BIN_DIR, "dispatcherctl"), "-s",
                              os.path.join(d.tmp, "admin.sock"), "show", "instances"],
                             capture_output=True, timeout=10).stdout.decode()
        self.assertRegex(out, r"app\.test:%d +failed .*%s +no such name" % (b2.port,
                                                                           re.escape(b2.addr)))
        srv.records = {"app.test": ["127.0.0.2"]}
        wait_until(lambda: resolve_info(d, "app")["resolve"][0]["status"] == "ok", 10,
                   "resolving again")

        # The same through the admin HTTP API is the same renderer; checked by the socket here.

    def test_unresolvable_at_start(self):
        """-t and the start refuse a name that does not resolve, with FILE:LINE."""
        srv = self.dns({})
        d = self.dispatcher([svc("app", "nope.test:8080")], [route("app.do", "app")],
                            extra=self.dns_extra(srv), start=False)
        line = [i + 1 for i, l in enumerate(open(d.conf).read().split("\n"))
                if "nope.test" in l][0]
        p = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf], capture_output=True, timeout=20)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(("%s:%d: " % (d.conf, line)).encode(), p.stderr)
        self.assertIn(b"nope.test:8080 does not resolve: no such name", p.stderr)
        p = subprocess.run([dsptest.MASTER, "-c", d.conf], capture_output=True, timeout=20)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"does not resolve", p.stderr)
        # With the name known, -t passes.
        srv.records["nope.test"] = ["127.0.0.2"]
        p = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf], capture_output=True, timeout=20)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual((p.stdout, p.stderr), (("%s: ok\n" % d.conf).encode(), b""))

    def test_hosts_file_and_localhost(self):
        """A name in /etc/hosts resolves without DNS (the DNS server knows nothing), and
        localhost:port works; an address listed twice in a service is one backend."""
        host = None
        with open("/etc/hosts") as f:
            for l in f:
                parts = l.split("#")[0].split()
                if len(parts) >= 2 and parts[0] == "127.0.0.1":
                    for n in parts[1:]:
                        if n != "localhost" and re.match(r"^[a-z][a-z0-9.-]*$", n.lower()):
                            host = n.lower()
        if host is None:
            self.skipTest("no name for 127.0.0.1 in /etc/hosts besides localhost")
        b = self.named_backend("h", "127.0.0.1")
        srv = self.dns({})
        d = self.dispatcher([svc("app", "%s:%d" % (host, b.port), "localhost:%d" % b.port)],
                            [route("app.do", "app")], extra=self.dns_extra(srv))
        self.assertEqual(self.backends_seen(d, 4), {"h"})
        self.assertEqual(served_addresses(d, "app"), [b.addr])
        r = resolve_info(d, "app")["resolve"][0]
        self.assertEqual((r["name"], r["status"], r["addresses"]),
                         ("%s:%d" % (host, b.port), "ok", [b.addr]))

    def test_new_name_on_reload(self):
        """A name first used by a reload is resolved on the loop and serves once it answers;
        the admin socket answers meanwhile."""
        b1 = self.named_backend("b1", "127.0.0.1")
        b5 = self.named_backend("b5", "127.0.0.5")
        srv = self.dns({"new.test": ["127.0.0.5"]})
        d = self.dispatcher([svc("app", b1.addr)], [route("app.do", "app")],
                            extra=self.dns_extra(srv))
        d.hup(dsptest.make_config(d.port, d.tmp, [svc("app", "new.test:%d" % b5.port)],
                                  [route("app.do", "app")], extra=self.dns_extra(srv)))
        wait_until(lambda: served_addresses(d, "app") == [b5.addr], 10, "the new name served")
        wait_until(lambda: dsptest.workers_on_generation(d, dsptest.generation(d)), 5,
                   "the workers on it")
        self.assertEqual(self.backends_seen(d, 4), {"b5"})

    def test_name_from_redis(self):
        """A service from Redis whose backend is a name: resolved after the Redis change is
        published, served on its addresses, and followed when the answer changes."""
        import shutil
        import tempfile
        import test_redis as tr
        tmp = tempfile.mkdtemp(prefix="dsp-it-dns-redis-")
        dsptest._record_tmp(tmp)
        self.addCleanup(shutil.rmtree, tmp, True)
        r = tr.Redis(tmp).start()
        self.addCleanup(r.stop)
        b1 = self.named_backend("b1", "127.0.0.1")
        b6 = self.named_backend("b6", "127.0.0.6")
        b7 = self.named_backend("b7", "127.0.0.7", b6.port)
        srv = self.dns({"api.test": ["127.0.0.6"]})
        d = self.dispatcher([svc("gw", b1.addr)], [route("gw.do", "gw")],
                            extra=self.dns_extra(srv) + "\n" + tr.redis_block(r))
        self.assertTrue(tr.wait_log(d, r"redis 127\.0\.0\.1:\d+: connected"), d.log_tail())
        tr.add_service(r, "production", "api", ["API.test:%d=2" % b6.port])
        tr.add_route(r, "production", "api", host="api.do", service="api")
        tr.publish(r, "production")
        wait_until(lambda: served_addresses(d, "api") == [b6.addr], 10, "the Redis name served")
        wait_until(lambda: dsptest.workers_on_generation(d, dsptest.generation(d)), 5,
                   "the workers on it")
        self.assertEqual(request(d.port, "/echo", host="api.do").header("X-Backend"), "b6")
        self.assertEqual(backend_field(d, "api", b6.addr, "weight"), 2)
        srv.records["api.test"] = ["127.0.0.7"]
        wait_until(lambda: served_addresses(d, "api") == [b7.addr], 10, "the new answer served")
        wait_until(lambda: dsptest.workers_on_generation(d, dsptest.generation(d)), 5,
                   "the workers on it")
        self.assertEqual(request(d.port, "/echo", host="api.do").header("X-Backend"), "b7")

    def test_reload_resolves_again(self):
        """A long TTL holds an answer until it runs out, but a reload of the file asks again."""
        b2 = self.named_backend("b2", "127.0.0.2")
        b3 = self.named_backend("b3", "127.0.0.3", b2.port)
        srv = self.dns({"app.test": ["127.0.0.2"]}, ttl=300)
        conf = dsptest.make_config
        d = self.dispatcher([svc("app", "app.test:%d" % b2.port)], [route("app.do", "app")],
                            extra=self.dns_extra(srv, resolve_ms=60000))
        self.assertEqual(resolve_info(d, "app")["resolve"][0]["ttl_ms"], 60000)
        srv.records["app.test"] = ["127.0.0.3"]
        time.sleep(0.5)  # give a wrong early re-resolution the time to show
        self.assertEqual(served_addresses(d, "app"), [b2.addr])
        d.hup(conf(d.port, d.tmp, [svc("app", "app.test:%d" % b2.port)],
                   [route("app.do", "app")], extra=self.dns_extra(srv, resolve_ms=60000)))
        wait_until(lambda: served_addresses(d, "app") == [b3.addr], 10, "re-resolved on reload")

    def test_switch_to_a_name_never_404(self):
        """A reload that moves a service from an address to a name not yet resolved keeps the
        old backends until the first answer (held back 3 s here): no 404 meanwhile."""
        b1 = self.named_backend("b1", "127.0.0.1")
        b5 = self.named_backend("b5", "127.0.0.5")
        srv = self.dns({"slow.test": ["127.0.0.5"]})
        d = self.dispatcher([svc("app", b1.addr)], [route("app.do", "app")],
                            extra=self.dns_extra(srv))
        gen = dsptest.generation(d)
        # Held back long enough that a loaded machine still sees the pending window.
        srv.delay = 3.0
        d.hup(dsptest.make_config(d.port, d.tmp, [svc("app", "slow.test:%d" % b5.port)],
                                  [route("app.do", "app")],
                                  extra=self.dns_extra(srv, timeout_ms=8000)))
        wait_until(lambda: dsptest.workers_on_generation(d, gen + 1), 5, "the reload applied")
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = request(d.port, "/echo", host="app.do")
            seen.append((r.status, r.header("X-Backend")))
            if seen[-1] == (200, "b5"):
                break
            time.sleep(0.02)
        self.assertEqual(seen[-1], (200, "b5"))
        self.assertEqual({s for s, _ in seen}, {200}, seen)
        self.assertIn((200, "b1"), seen, "the old backend served while the name was pending")
        self.assertEqual(served_addresses(d, "app"), [b5.addr])

    def test_new_name_that_never_resolves(self):
        """A reload adds a service whose only backend is a name that does not exist: it has no
        backend (404 "not deployed", never a connect to an address-less backend), the error is
        logged and `show instances` says "unresolved"; the rest serves on."""
        b1 = self.named_backend("b1", "127.0.0.1")
        srv = self.dns({})
        d = self.dispatcher([svc("app", b1.addr)], [route("app.do", "app")],
                            extra=self.dns_extra(srv))
        d.hup(dsptest.make_config(d.port, d.tmp, [svc("app", b1.addr),
                                                  svc("other", "missing.test:8080")],
                                  [route("app.do", "app"), route("other.do", "other")],
                                  extra=self.dns_extra(srv)))
        wait_until(lambda: resolve_info(d, "other") is not None
                   and resolve_info(d, "other")["resolve"][0]["status"] == "unresolved", 10,
                   "the failure shown")
        wait_until(lambda: dsptest.workers_on_generation(d, dsptest.generation(d)), 5,
                   "the workers on the last generation")
        for _ in range(4):
            self.assertJsonError(request(d.port, "/", host="other.do"), 404,
                                 "Service not deployed")
        self.assertEqual(request(d.port, "/echo", host="app.do").header("X-Backend"), "b1")
        self.assertIn("backend name missing.test does not resolve (no such name)", d.log())
        self.assertNotIn("Address family", d.log())

    def test_tls_backend_by_name_verifies_the_name(self):
        """A TLS service whose backends are one name (and no sni) sends that name as SNI and
        verifies the certificate against it, not against the resolved IP."""
        import tempfile
        import test_tls
        tmp = tempfile.mkdtemp(prefix="dsp-it-dns-tls-")
        dsptest._record_tmp(tmp)
        cert, key = test_tls.make_cert(tmp, "secure", "secure.test", san="DNS:secure.test")
        tb = test_tls.TlsBackend("tb", cert, key)
        self.addCleanup(tb.stop)
        srv = self.dns({"secure.test": ["127.0.0.1"]})
        d = self.dispatcher([svc("sec", "secure.test:%d" % tb.port, tls=True, ca=cert)],
                            [route("sec.do", "sec")], extra=self.dns_extra(srv))
        r = request(d.port, "/x", host="sec.do")
        self.assertEqual((r.status, r.header("X-Backend")), (200, "tb"), r.body[:300])
        self.assertEqual(set(tb.snis), {"secure.test"})

    def test_unusable_addresses_dropped(self):
        """0.0.0.0 (which connects to this host), broadcast and multicast answers are never
        backends; a name with nothing else is refused by -t like one that does not resolve."""
        b2 = self.named_backend("b2", "127.0.0.2")
        srv = self.dns({"app.test": ["0.0.0.0", "127.0.0.2", "224.0.0.1", "255.255.255.255"],
                        "bad.test": ["0.0.0.0", "239.1.2.3"]})
        d = self.dispatcher([svc("app", "app.test:%d" % b2.port)], [route("app.do", "app")],
                            extra=self.dns_extra(srv))
        self.assertEqual(served_addresses(d, "app"), [b2.addr])
        self.assertEqual(self.backends_seen(d, 4), {"b2"})
        bad = dsptest.Dispatcher()
        bad.write_config(dsptest.make_config(bad.port, bad.tmp, [svc("x", "bad.test:80")],
                                             [route("x.do", "x")], extra=self.dns_extra(srv)))
        p = subprocess.run([dsptest.MASTER, "-t", "-c", bad.conf], capture_output=True,
                           timeout=20)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn(b"bad.test:80 does not resolve: no usable address", p.stderr)

    def test_flapping_answers_bounded(self):
        """A name whose every answer differs (TTL 0) publishes at most about one generation a
        second, and traffic flows throughout."""
        b2 = self.named_backend("b2", "127.0.0.2")
        b3 = self.named_backend("b3", "127.0.0.3", b2.port)
        srv = self.dns({"app.test": ["127.0.0.2", "127.0.0.3"]}, ttl=0)
        d = self.dispatcher([svc("app", "app.test:%d" % b2.port)], [route("app.do", "app")],
                            extra=self.dns_extra(srv))
        srv.flip = True
        gen0 = dsptest.generation(d)
        t0 = time.monotonic()
        seen = set()
        while time.monotonic() - t0 < 3.0:
            r = request(d.port, "/echo", host="app.do")
            self.assertEqual(r.status, 200)
            seen.add(r.header("X-Backend"))
            time.sleep(0.05)
        published = dsptest.generation(d) - gen0
        self.assertGreater(srv.flips, 10, "the name was re-resolved at min_ttl_ms")
        self.assertGreaterEqual(published, 1)
        self.assertLessEqual(published, 5, "%d generations in 3 s for %d answers"
                             % (published, srv.flips))

    def test_metrics_per_name(self):
        """/metrics says per name whether its last resolution answered and how many addresses
        it serves; a failure keeps the count and drops the gauge to 0."""
        b2 = self.named_backend("b2", "127.0.0.2")
        srv = self.dns({"app.test": ["127.0.0.2", "127.0.0.3"]})
        d = dsptest.Dispatcher()
        hport = dsptest.free_port()
        sock = os.path.join(d.tmp, "admin.sock")
        text = dsptest.make_config(d.port, d.tmp, [svc("app", "app.test:%d" % b2.port)],
                                   [route("app.do", "app")],
                                   extra=self.dns_extra(srv, resolve_ms=500))
        text = text.replace('admin = { socket = "%s"; };' % sock,
                            'admin = { socket = "%s"; http = "127.0.0.1:%d"; };' % (sock, hport))
        d.write_config(text)
        self.start_dispatcher(d)
        label = '{service="app",name="app.test:%d"}' % b2.port

        def metrics():
            with socket.create_connection(("127.0.0.1", hport), timeout=5) as s:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            return data.decode()
        m = metrics()
        self.assertIn("dispatcher_backend_name_resolved%s 1\n" % label, m)
        self.assertIn("dispatcher_backend_name_addresses%s 2\n" % label, m)
        srv.mode = "servfail"
        wait_until(lambda: "dispatcher_backend_name_resolved%s 0\n" % label in metrics(), 10,
                   "the failure in /metrics")
        self.assertIn("dispatcher_backend_name_addresses%s 2\n" % label, metrics())
