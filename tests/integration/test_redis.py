"""Fleet configuration from Redis (SPEC "Redis"): each test starts its own redis-server on a free
loopback port (--save "" --appendonly no) and seeds it with redis-cli, like an operator would.

- two masters sharing one Redis serve a service + route within 1 s of the PUBLISH, and 404 after
  it is removed;
- environments are isolated (staging keys are not served by production);
- a certificate added in Redis is served for its SNI name after the event;
- Redis killed: traffic keeps flowing on the last config; restarted: a change is picked up;
- Redis down at start: the master starts from the file and picks Redis up later;
- garbage in a hash (bad address, unknown service, bad PEM) is refused as a whole with the key
  named in the log, and nothing changes;
- AUTH (password, ACL user) and SELECT; a SIGHUP reload keeps the Redis data; the file wins a
  name clash.
"""

# Timing assertions or CPU-heavy streams: run alone (see run.py).
DSP_SERIAL = True

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import json
import time

import dsptest
from dsptest import request, route, svc

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
# "Within 1 s" is the contract; the sanitizer build gets the same slack as everywhere else.
WITHIN = 1.0 * (2 if dsptest.SANITIZED else 1)


class Redis:
    """A redis-server on 127.0.0.1:<port> whose data lives in <tmp> (only written by SAVE)."""

    def __init__(self, tmp, port=None, args=(), password=None, user=None):
        self.tmp = tmp
        self.port = port or dsptest.free_port()
        self.args = list(args)
        self.password = password
        self.user = user
        self.proc = None
        self.log = os.path.join(tmp, "redis-%d.log" % self.port)

    def start(self):
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.tmp, "--dbfilename", "dump.rdb"]
                + self.args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        dsptest._record_pid(self.proc.pid)
        ok = dsptest.wait_for(self._pings, 10, 0.05)
        if not ok:
            raise AssertionError("redis-server on port %d did not start:\n%s"
                                 % (self.port, open(self.log).read()[-2000:]))
        return self

    def _pings(self):
        try:
            return self.cli("PING") == "PONG"
        except (subprocess.CalledProcessError, OSError):
            return False

    def cli(self, *args, stdin=None, db=None):
        cmd = [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port)]
        if self.user:
            cmd += ["--user", self.user]
        if self.password:
            cmd += ["--pass", self.password, "--no-auth-warning"]
        if db is not None:
            cmd += ["-n", str(db)]
        if stdin is not None:
            cmd.append("-x")
        out = subprocess.run(cmd + [str(a) for a in args], input=stdin, capture_output=True,
                             check=True, timeout=10)
        return out.stdout.decode().strip()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    stop = kill


# ---- seeding, as an operator does it ------------------------------------------------------------

# Writers INCR `version` on every change (SPEC): a namespace without it is not applied.
def bump(r, env, db=None):
    return int(r.cli("INCR", "dispatcher:%s:version" % env, db=db))


def add_service(r, env, name, backends, db=None, **fields):
    """SADD the name and HSET its hash; <backends> is a list of "addr[=weight]"."""
    args = ["backends", ",".join(backends)]
    for k, v in fields.items():
        args += [k, v]
    r.cli("HSET", "dispatcher:%s:service:%s" % (env, name), *args, db=db)
    r.cli("SADD", "dispatcher:%s:services" % env, name, db=db)
    bump(r, env, db)


def add_route(r, env, rid, db=None, **fields):
    args = []
    for k, v in fields.items():
        args += [k, v]
    r.cli("HSET", "dispatcher:%s:route:%s" % (env, rid), *args, db=db)
    r.cli("SADD", "dispatcher:%s:routes" % env, rid, db=db)
    bump(r, env, db)


def remove(r, env, kind, name):
    r.cli("SREM", "dispatcher:%s:%ss" % (env, kind), name)
    r.cli("DEL", "dispatcher:%s:%s:%s" % (env, kind, name))
    bump(r, env)


def publish(r, env, bump_version=True):
    """The change event; by default INCRs `version` first, as writers do after raw changes."""
    if bump_version:
        bump(r, env)
    return int(r.cli("PUBLISH", "dispatcher:%s:events" % env, "changed"))


def redis_block(r, env="production", **opts):
    d = {"host": "127.0.0.1", "port": r.port}
    d.update(opts)
    return 'environment = "%s";\nredis = %s;' % (env, dsptest._group(d))


def status(port, host, path="/echo"):
    """(status, X-Backend) of one request, or (None, None) when the connection failed."""
    try:
        r = request(port, path, host=host, timeout=5)
        return r.status, r.header("X-Backend")
    except OSError:
        return None, None


def wait_all(ports, host, want_status, want_backend=None, timeout_s=5.0, path="/echo"):
    """Poll each port until <host> answers <want_status> (and backend) there. Returns the seconds
    until the last one did, or None when one never did."""
    t0 = time.monotonic()
    pending = set(ports)
    while pending and time.monotonic() - t0 < timeout_s:
        for p in sorted(pending):
            st, be = status(p, host, path)
            if st == want_status and (want_backend is None or be == want_backend):
                pending.discard(p)
        if pending:
            time.sleep(0.02)
    return None if pending else time.monotonic() - t0


def wait_log(d, pattern, timeout_s=5.0):
    rx = re.compile(pattern)
    return dsptest.wait_for(lambda: rx.search(d.log()), timeout_s, 0.05)


def make_cert(tmp, cn):
    """A self-signed EC certificate for <cn> (SAN too): (cert PEM bytes, key PEM bytes)."""
    cert = os.path.join(tmp, "%s.pem" % cn)
    key = os.path.join(tmp, "%s.key" % cn)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "30", "-subj", "/CN=%s" % cn, "-addext",
                    "subjectAltName=DNS:%s" % cn], check=True, capture_output=True, timeout=30)
    with open(cert, "rb") as f:
        c = f.read()
    with open(key, "rb") as f:
        k = f.read()
    return c, k


def served_cert_der(port, sni):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            return t.getpeercert(binary_form=True)


class RedisTest(dsptest.TestCase):

    def redis(self, **kw):
        tmp = kw.pop("tmp", None) or self.tmpdir()
        r = Redis(tmp, **kw).start()
        self.addCleanup(r.stop)
        return r

    def tmpdir(self):
        import tempfile
        t = tempfile.mkdtemp(prefix="dsp-it-redis-")
        dsptest._record_tmp(t)
        self.addCleanup(shutil.rmtree, t, True)
        return t

    def redis_dispatcher(self, r, backend, env="production", workers=2, **opts):
        """A dispatcher whose file holds service "gw" (routed from gw.do) and follows <r>."""
        return self.dispatcher(services=[svc("gw", backend)], routes=[route("gw.do", "gw")],
                               workers=workers, extra=redis_block(r, env, **opts))

    # ---------------------------------------------------------------------------------------------

    @dsptest.timeout(60)
    def test_two_masters_share_redis(self):
        r = self.redis()
        gw, api = self.backend("gw"), self.backend("api")
        d1 = self.redis_dispatcher(r, gw)
        d2 = self.redis_dispatcher(r, gw)
        ports = [d1.port, d2.port]
        for p in ports:
            self.assertEqual(status(p, "gw.do"), (200, "gw"))
            self.assertEqual(status(p, "api.do")[0], 404)
        # Both are subscribed before the change is made.
        self.assertTrue(wait_log(d1, r"redis 127\.0\.0\.1:\d+: connected"), d1.log_tail())
        self.assertTrue(wait_log(d2, r"redis 127\.0\.0\.1:\d+: connected"), d2.log_tail())

        add_service(r, "production", "api", [api.addr])
        add_route(r, "production", "api", host="api.do", service="api")
        t0 = time.monotonic()
        self.assertEqual(publish(r, "production"), 2, "both masters are subscribed")
        dt = wait_all(ports, "api.do", 200, "api", timeout_s=5)
        self.assertIsNotNone(dt, "api.do not served by both:\n%s\n%s"
                             % (d1.log_tail(), d2.log_tail()))
        self.assertLess(time.monotonic() - t0, WITHIN + 0.2,
                        "served by both only after %.3fs" % (time.monotonic() - t0))
        for p in ports:
            self.assertEqual(status(p, "gw.do"), (200, "gw"), "the file's route still serves")

        # A second route to the same Redis service, by path, with methods.
        add_route(r, "production", "api-v2", host="*.api.do", path="/v2/", methods="GET,HEAD",
                  priority="5", service="api")
        publish(r, "production")
        self.assertIsNotNone(wait_all(ports, "x.api.do", 200, "api", timeout_s=WITHIN + 0.2,
                                      path="/v2/echo"))
        for p in ports:
            self.assertEqual(status(p, "x.api.do", "/v1/echo")[0], 404, "path prefix")
        # The admin socket says where each route came from and how Redis is doing.
        ctl = os.path.join(os.path.dirname(dsptest.MASTER), "dispatcherctl")
        sock = os.path.join(d1.tmp, "admin.sock")
        out = subprocess.run([ctl, "-s", sock, "--json", "show", "routes"], capture_output=True,
                             timeout=10)
        src = {r["host"]: r["source"] for r in json.loads(out.stdout)["routes"]}
        self.assertEqual(src.get("api.do"), "redis", src)
        self.assertEqual(src.get("*.api.do"), "redis", src)
        self.assertEqual(src.get("gw.do"), "file", src)
        out = subprocess.run([ctl, "-s", sock, "--json", "show", "health"], capture_output=True,
                             timeout=10)
        cfg = json.loads(out.stdout)["config"]
        self.assertEqual(cfg["source"], "file+redis")
        self.assertEqual(cfg["redis"], "connected")

        remove(r, "production", "route", "api")
        remove(r, "production", "route", "api-v2")
        remove(r, "production", "service", "api")
        t0 = time.monotonic()
        publish(r, "production")
        dt = wait_all(ports, "api.do", 404, timeout_s=5)
        self.assertIsNotNone(dt, "api.do still served after removal")
        self.assertLess(time.monotonic() - t0, WITHIN + 0.2)
        for p in ports:
            self.assertEqual(status(p, "x.api.do", "/v2/echo")[0], 404)
            self.assertEqual(status(p, "gw.do"), (200, "gw"))
        self.assertIn("applied as generation", d1.log())

    @dsptest.timeout(60)
    def test_environments_isolated(self):
        r = self.redis()
        gw, st = self.backend("gw"), self.backend("staging")
        prod = self.redis_dispatcher(r, gw, env="production", resync_ms=200)
        stag = self.redis_dispatcher(r, gw, env="staging")
        self.assertTrue(wait_log(prod, r"connected; following dispatcher:production:"))
        self.assertTrue(wait_log(stag, r"connected; following dispatcher:staging:"))

        add_service(r, "staging", "shop", [st.addr])
        add_route(r, "staging", "shop", host="shop.do", service="shop")
        self.assertEqual(publish(r, "staging"), 1, "only the staging master listens")
        publish(r, "production")
        self.assertIsNotNone(wait_all([stag.port], "shop.do", 200, "staging", timeout_s=WITHIN))
        time.sleep(0.3)
        self.assertEqual(status(prod.port, "shop.do")[0], 404,
                         "production must not serve staging keys")
        # Nor does a full resync of production.
        time.sleep(0.6)
        self.assertEqual(status(prod.port, "shop.do")[0], 404)
        self.assertEqual(status(prod.port, "gw.do"), (200, "gw"))

        # Switching the environment by a reload follows the other namespace.
        prod.hup(dsptest.make_config(prod.port, prod.tmp, [svc("gw", gw)], [route("gw.do", "gw")],
                                     extra=redis_block(r, "staging", resync_ms=200)))
        self.assertIsNotNone(wait_all([prod.port], "shop.do", 200, "staging", timeout_s=5),
                             prod.log_tail())
        self.assertTrue(wait_log(prod, r"connected; following dispatcher:staging:"))

    @dsptest.timeout(60)
    def test_certificate_from_redis_sni(self):
        r = self.redis()
        gw = self.backend("gw")
        d = dsptest.Dispatcher(workers=2)
        d.write_config("\n".join([
            "workers = 2;",
            'pid_file = "%s";' % os.path.join(d.tmp, "dispatcher.pid"),
            'log = { error = "stderr"; level = "info"; access = "off"; };',
            'listeners = ( { address = "127.0.0.1:%d"; tls = true; } );' % d.port,
            'tls = { self_signed_cn = "default.invalid"; };',
            redis_block(r),
            'services = ( { name = "gw"; backends = [ "%s" ]; } );' % gw.addr,
            'routes = ( { host = "*"; service = "gw"; } );',
        ]) + "\n")
        self.start_dispatcher(d)
        self.assertTrue(wait_log(d, r"connected; following"))
        cert, key = make_cert(d.tmp, "shop.example.com")
        want = ssl.PEM_cert_to_DER_cert(cert.decode())
        self.assertNotEqual(served_cert_der(d.port, "shop.example.com"), want,
                            "not served before it is in Redis")

        r.cli("HSET", "dispatcher:production:cert:shop", "key", key.decode())
        r.cli("HSET", "dispatcher:production:cert:shop", "cert", stdin=cert)
        r.cli("SADD", "dispatcher:production:certs", "shop")
        t0 = time.monotonic()
        publish(r, "production")
        got = dsptest.wait_for(lambda: served_cert_der(d.port, "shop.example.com") == want,
                               WITHIN + 1)
        self.assertTrue(got, "the Redis certificate is not served for its SNI name:\n%s"
                        % d.log_tail())
        self.assertLess(time.monotonic() - t0, WITHIN + 1)
        self.assertNotEqual(served_cert_der(d.port, "other.example.com"), want)

        # A bad PEM is refused with its key named; the good one keeps serving.
        r.cli("HSET", "dispatcher:production:cert:broken", "cert",
              "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
              "key", key.decode())
        r.cli("SADD", "dispatcher:production:certs", "broken")
        publish(r, "production")
        self.assertTrue(wait_log(d, r"redis dispatcher:production:cert:broken: "),
                        d.log_tail())
        self.assertEqual(served_cert_der(d.port, "shop.example.com"), want)

    @dsptest.timeout(90)
    def test_redis_killed_and_restarted(self):
        r = self.redis()
        gw, api = self.backend("gw"), self.backend("api")
        d = self.redis_dispatcher(r, gw, resync_ms=300)
        add_service(r, "production", "api", [api.addr])
        add_route(r, "production", "api", host="api.do", service="api")
        publish(r, "production")
        self.assertIsNotNone(wait_all([d.port], "api.do", 200, "api", timeout_s=3))
        r.cli("SAVE")

        r.kill()
        self.assertTrue(wait_log(d, r"redis 127\.0\.0\.1:\d+: .*still serving generation"),
                        d.log_tail())
        # Traffic keeps flowing on the last config while Redis is gone.
        t_end = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < t_end:
            self.assertEqual(status(d.port, "api.do"), (200, "api"))
            self.assertEqual(status(d.port, "gw.do"), (200, "gw"))
            n += 1
            time.sleep(0.05)
        self.assertGreater(n, 5)

        # Restarted (with its saved data); a change made right away, without any event, is
        # picked up by the reconnect's read or the next resync.
        r.start()
        add_route(r, "production", "api2", host="api2.do", service="api")
        self.assertIsNotNone(wait_all([d.port], "api2.do", 200, "api", timeout_s=10),
                             "change not picked up after the restart:\n%s" % d.log_tail())
        self.assertTrue(wait_log(d, r"reconnected"))
        # And events work again on the new subscription.
        remove(r, "production", "route", "api2")
        publish(r, "production")
        self.assertIsNotNone(wait_all([d.port], "api2.do", 404, timeout_s=WITHIN + 0.2))
        self.assertEqual(status(d.port, "api.do"), (200, "api"))

    @dsptest.timeout(60)
    def test_unreachable_at_start(self):
        tmp = self.tmpdir()
        r = Redis(tmp)  # not started yet: nothing listens on its port
        self.addCleanup(r.stop)
        gw, api = self.backend("gw"), self.backend("api")
        d = self.redis_dispatcher(r, gw, resync_ms=500)
        self.assertEqual(status(d.port, "gw.do"), (200, "gw"), "started from the file alone")
        self.assertIn("starting from", d.log())
        r.start()
        add_service(r, "production", "api", [api.addr])
        add_route(r, "production", "api", host="api.do", service="api")
        self.assertIsNotNone(wait_all([d.port], "api.do", 200, "api", timeout_s=10),
                             d.log_tail())

    @dsptest.timeout(60)
    def test_garbage_rejected_as_a_whole(self):
        r = self.redis()
        gw, api = self.backend("gw"), self.backend("api")
        d = self.redis_dispatcher(r, gw)
        self.assertTrue(wait_log(d, r"connected; following"))
        add_service(r, "production", "api", [api.addr])
        add_route(r, "production", "api", host="api.do", service="api")
        publish(r, "production")
        self.assertIsNotNone(wait_all([d.port], "api.do", 200, "api", timeout_s=3))
        applied = d.log().count("applied as generation")

        cert, key = make_cert(d.tmp, "bad.example.com")
        cases = [
            # (what to break, key named in the log, message)
            (lambda: add_service(r, "production", "bad", ["127.0.0.1:1", "not-an-address"]),
             "service:bad", "backends: backend \"not-an-address\""),
            (lambda: add_route(r, "production", "bad", host="bad.do", service="nope"),
             "route:bad", "unknown service 'nope'"),
            (lambda: (r.cli("HSET", "dispatcher:production:cert:bad", "cert",
                            "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
                            "key", key.decode()),
                      r.cli("SADD", "dispatcher:production:certs", "bad")),
             "cert:bad", ""),
        ]
        for brk, k, msg in cases:
            # Each time a valid change rides along: refusing "as a whole" means it is not served.
            add_route(r, "production", "ride", host="ride.do", service="api")
            brk()
            publish(r, "production")
            pat = r"\[error\].*redis dispatcher:production:%s: %s" % (re.escape(k), re.escape(msg))
            self.assertTrue(wait_log(d, pat, 3), "no error naming %s:\n%s" % (k, d.log_tail()))
            self.assertIn("rejected as a whole", d.log())
            self.assertEqual(status(d.port, "api.do"), (200, "api"))
            self.assertEqual(status(d.port, "ride.do")[0], 404, "nothing changes")
            self.assertEqual(d.log().count("applied as generation"), applied)
            # Clean up the garbage: the valid change is now applied.
            kind, name = k.split(":")
            remove(r, "production", kind, name)
            publish(r, "production")
            self.assertIsNotNone(wait_all([d.port], "ride.do", 200, "api", timeout_s=3),
                                 d.log_tail())
            remove(r, "production", "route", "ride")
            publish(r, "production")
            self.assertIsNotNone(wait_all([d.port], "ride.do", 404, timeout_s=3))
            applied = d.log().count("applied as generation")

    @dsptest.timeout(60)
    def test_auth_acl_user_and_db(self):
        r = self.redis(password="secret",
                       args=["--requirepass", "secret",
                             "--user", "fleet", "on", ">fleetpw", "~*", "&*", "+@all"])
        gw, api = self.backend("gw"), self.backend("api")
        d1 = self.redis_dispatcher(r, gw, password="secret", db=3)
        d2 = self.redis_dispatcher(r, gw, user="fleet", password="fleetpw", db=3)
        bad = self.redis_dispatcher(r, gw, password="wrong", db=3)
        add_service(r, "production", "api", [api.addr], db=3)
        add_route(r, "production", "api", host="api.do", service="api", db=3)
        publish(r, "production")
        self.assertIsNotNone(wait_all([d1.port, d2.port], "api.do", 200, "api", timeout_s=3),
                             d1.log_tail() + "\n" + d2.log_tail())
        self.assertTrue(wait_log(bad, r"AUTH: WRONGPASS"), bad.log_tail())
        self.assertEqual(status(bad.port, "api.do")[0], 404)
        self.assertEqual(status(bad.port, "gw.do"), (200, "gw"))
        self.assertNotIn("wrong", bad.log().replace("WRONGPASS", ""), "no password in the log")

    @dsptest.timeout(60)
    def test_reload_keeps_redis_data_and_file_wins(self):
        r = self.redis()
        gw, api, other = self.backend("gw"), self.backend("api"), self.backend("other")
        files = [svc("gw", gw), svc("legacy", gw)]
        d = self.dispatcher(services=files, routes=[route("gw.do", "gw")],
                            extra=redis_block(r))
        self.assertTrue(wait_log(d, r"connected; following"))
        add_service(r, "production", "api", [api.addr])
        add_route(r, "production", "api", host="api.do", service="api")
        # Same name as the file's service: the file wins, and Redis routes to "gw" reach it.
        add_service(r, "production", "gw", [other.addr])
        add_route(r, "production", "to-gw", host="to-gw.do", service="gw")
        # A Redis route may name a service that only the file defines.
        add_route(r, "production", "to-legacy", host="legacy.do", service="legacy")
        publish(r, "production")
        self.assertIsNotNone(wait_all([d.port], "api.do", 200, "api", timeout_s=3))
        self.assertEqual(status(d.port, "to-gw.do"), (200, "gw"))
        self.assertEqual(status(d.port, "legacy.do"), (200, "gw"))
        self.assertTrue(wait_log(d, r"redis dispatcher:production:service:gw: .*file's entry wins"))

        # SIGHUP with a new file route: the Redis data stays merged.
        d.hup(dsptest.make_config(d.port, d.tmp, files,
                                  [route("gw.do", "gw"), route("new.do", "gw")],
                                  extra=redis_block(r)))
        self.assertIsNotNone(wait_all([d.port], "new.do", 200, "gw", timeout_s=3), d.log_tail())
        self.assertEqual(status(d.port, "api.do"), (200, "api"))
        self.assertEqual(status(d.port, "to-gw.do"), (200, "gw"))
        self.assertEqual(status(d.port, "legacy.do"), (200, "gw"))

        # A file that the Redis data no longer fits (route to-legacy needs "legacy") is refused.
        d.hup(dsptest.make_config(d.port, d.tmp, [svc("gw", gw)],
                                  [route("gw.do", "gw"), route("newer.do", "gw")],
                                  extra=redis_block(r)))
        self.assertTrue(wait_log(d, r"reload failed"), d.log_tail())
        self.assertTrue(wait_log(d, r"redis dispatcher:production:route:to-legacy: unknown "
                                    r"service 'legacy'"), d.log_tail())
        self.assertEqual(status(d.port, "newer.do")[0], 404, "the old config still serves")
        self.assertEqual(status(d.port, "new.do"), (200, "gw"))
        self.assertEqual(status(d.port, "api.do"), (200, "api"))

    # ---- the `version` key (issue 12, defect 11) --------------------------------------------

    def health_config(self, d):
        ctl = os.path.join(os.path.dirname(dsptest.MASTER), "dispatcherctl")
        out = subprocess.run([ctl, "-s", os.path.join(d.tmp, "admin.sock"), "--json", "show",
                              "health"], capture_output=True, timeout=10)
        return json.loads(out.stdout)["config"]

    def assert_keeps_serving(self, d, host, want, seconds):
        t_end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < t_end:
            self.assertEqual(status(d.port, host), want, d.log_tail())
            n += 1
            time.sleep(0.05)
        self.assertGreater(n, 3)

    @dsptest.timeout(60)
    def test_redis_restarted_empty_keeps_serving(self):
        r = self.redis()
        gw, api = self.backend("gw"), self.backend("api")
        d = self.redis_dispatcher(r, gw, resync_ms=200)
        self.assertTrue(wait_log(d, r"connected; following"))
        add_service(r, "production", "api", [api.addr])
        add_route(r, "production", "api", host="api.do", service="api")
        publish(r, "production")
        self.assertIsNotNone(wait_all([d.port], "api.do", 200, "api", timeout_s=3))
        version = int(r.cli("GET", "dispatcher:production:version"))
        # Resyncs may have applied the data before its last INCR: wait for that version.
        self.assertTrue(dsptest.wait_for(
            lambda: self.health_config(d).get("redis_version") == version, 3), d.log_tail())
        said = d.log().count("no dispatcher:production:version key")  # the empty Redis at start

        # Restarted without persistence: empty. Reconnect, resyncs and an event all find a
        # namespace without `version`: the Redis routes keep serving.
        r.kill()
        r.start()
        # Empty but for what the dispatcher itself writes once reconnected (its node report,
        # issue 16): no configuration key.
        keys = [k for k in r.cli("KEYS", "*").split() if ":node:" not in k and
                not k.endswith(":nodes")]
        self.assertEqual(keys, [])
        self.assertTrue(wait_log(d, r"reconnected", 10), d.log_tail())
        publish(r, "production", bump_version=False)
        self.assert_keeps_serving(d, "api.do", (200, "api"), 1.0)
        self.assertTrue(wait_log(d, r"no dispatcher:production:version key .* serving the last good "
                                    r"Redis data \(version %d\)" % version, 1), d.log_tail())
        self.assertEqual(status(d.port, "gw.do"), (200, "gw"))
        self.assertEqual(d.log().count("no dispatcher:production:version key"), said + 1,
                         "said once, not on every resync")
        cfg = self.health_config(d)
        self.assertEqual(cfg["source"], "file+redis")
        self.assertEqual(cfg["redis"], "connected")
        self.assertEqual(cfg.get("redis_version"), version)
        self.assertIn("no version key", cfg.get("redis_problem", ""))
        self.assertIn("serving the last good Redis data (version %d)" % version,
                      cfg["redis_problem"])

        # The next change with a version is applied as usual (the old routes are gone from
        # Redis, so they go).
        add_route(r, "production", "new", host="new.do", service="gw")
        publish(r, "production")
        self.assertIsNotNone(wait_all([d.port], "new.do", 200, "gw", timeout_s=3), d.log_tail())
        self.assertIsNotNone(wait_all([d.port], "api.do", 404, timeout_s=3))
        cfg = self.health_config(d)
        self.assertNotIn("redis_problem", cfg)
        self.assertEqual(cfg["redis_version"], int(r.cli("GET", "dispatcher:production:version")))
        self.assertIn("dispatcher:production:version is back", d.log())

    @dsptest.timeout(60)
    def test_first_start_without_version_serves_the_file(self):
        r = self.redis()
        gw, api = self.backend("gw"), self.backend("api")
        # Data, but nobody ever INCRed version.
        r.cli("HSET", "dispatcher:production:service:api", "backends", api.addr)
        r.cli("SADD", "dispatcher:production:services", "api")
        r.cli("HSET", "dispatcher:production:route:api", "host", "api.do", "service", "api")
        r.cli("SADD", "dispatcher:production:routes", "api")
        d = self.redis_dispatcher(r, gw, resync_ms=200)
        self.assertEqual(status(d.port, "gw.do"), (200, "gw"))
        self.assertEqual(status(d.port, "api.do")[0], 404, "applied without a version key")
        self.assertIn("no dispatcher:production:version key", d.log())
        self.assertTrue(wait_log(d, r"connected; following"))
        time.sleep(0.5)  # resyncs find the same: nothing changes, nothing more is logged
        self.assertEqual(status(d.port, "api.do")[0], 404)
        self.assertEqual(d.log().count("no dispatcher:production:version key"), 1)
        cfg = self.health_config(d)
        self.assertEqual(cfg["source"], "file")
        self.assertNotIn("redis_version", cfg)
        self.assertIn("no version key", cfg["redis_problem"])
        self.assertIn("serving the file alone", cfg["redis_problem"])
        publish(r, "production")  # INCR version, then the event
        self.assertIsNotNone(wait_all([d.port], "api.do", 200, "api", timeout_s=3), d.log_tail())
        self.assertEqual(self.health_config(d)["redis_version"], 1)
        self.assertNotIn("redis_problem", self.health_config(d))

    @dsptest.timeout(60)
    def test_garbage_version_rejected(self):
        r = self.redis()
        gw, api = self.backend("gw"), self.backend("api")
        d = self.redis_dispatcher(r, gw)
        self.assertTrue(wait_log(d, r"connected; following"))
        add_service(r, "production", "api", [api.addr])
        add_route(r, "production", "api", host="api.do", service="api")
        publish(r, "production")
        self.assertIsNotNone(wait_all([d.port], "api.do", 200, "api", timeout_s=3))
        applied = d.log().count("applied as generation")
        key = "dispatcher:production:version"
        for breaker, msg in [
                (lambda: r.cli("SET", key, "12abc"), 'not an integer ("12abc")'),
                (lambda: r.cli("SET", key, ""), 'not an integer ("")'),
                (lambda: r.cli("SET", key, "99999999999999999999"), "not an integer"),
                (lambda: r.cli("SET", key, "\x01\"x"), 'not an integer ("'),
                (lambda: (r.cli("DEL", key), r.cli("SADD", key, "7")),
                 "not a string (WRONGTYPE)")]:
            # A valid change rides along: refused as a whole, it is not served.
            r.cli("HSET", "dispatcher:production:route:ride", "host", "ride.do", "service", "api")
            r.cli("SADD", "dispatcher:production:routes", "ride")
            breaker()
            publish(r, "production", bump_version=False)
            pat = r"\[error\].*redis dispatcher:production:version: %s" % re.escape(msg)
            self.assertTrue(wait_log(d, pat, 3), "no error for %s:\n%s" % (msg, d.log_tail()))
            self.assertEqual(status(d.port, "ride.do")[0], 404, "nothing changes")
            self.assertEqual(status(d.port, "api.do"), (200, "api"))
            self.assertEqual(d.log().count("applied as generation"), applied)
            self.assertIn("redis dispatcher:production:version: not",
                          self.health_config(d)["redis_problem"])
            # A good version again: applied.
            r.cli("DEL", key)
            r.cli("SET", key, "41")
            publish(r, "production")
            self.assertIsNotNone(wait_all([d.port], "ride.do", 200, "api", timeout_s=3),
                                 d.log_tail())
            self.assertTrue(dsptest.wait_for(
                lambda: self.health_config(d).get("redis_version") == 42, 3), d.log_tail())
            self.assertNotIn("redis_problem", self.health_config(d))
            remove(r, "production", "route", "ride")
            publish(r, "production")
            self.assertIsNotNone(wait_all([d.port], "ride.do", 404, timeout_s=3))
            applied = d.log().count("applied as generation")
