"""Redis high availability through Sentinel (SPEC "Redis", issue 16): the test starts a real
redis-server master, a replica and three sentinels (quorum 2, down-after 1 s) on free loopback
ports with their own temp dirs, and a dispatcher with `redis = { sentinels = [...]; master_name =
"mymaster"; }` whose first sentinel is a dead port.

- the master is found through the sentinels and the Redis route is served;
- the master is SIGKILLed under keep-alive load: not one request fails during the failover, and
  a change written to the new master (and PUBLISHed there) is served within 5 s of the switch;
  events on the new master work as before;
- bad sentinel settings are refused by `-t` with FILE:LINE.
"""

# Timing assertions: run alone (see run.py).
DSP_SERIAL = True

import os
import shutil
import signal
import subprocess
import threading
import time

import dsptest
from dsptest import route, svc
from test_redis import Redis, add_route, add_service, publish, status

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Debian's redis-sentinel package; redis-server --sentinel is the same program.
REDIS_SENTINEL = shutil.which("redis-sentinel")
SLACK = 2 if dsptest.SANITIZED else 1


class Sentinel(Redis):
    """A sentinel on 127.0.0.1:<port> monitoring "mymaster" at <master_port>."""

    def __init__(self, tmp, master_port, password=None):
        super().__init__(tmp, password=password)
        self.master_port = master_port

    def start(self):
        d = os.path.join(self.tmp, "sentinel-%d" % self.port)
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, "sentinel.conf")
        with open(conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\n"
                    "sentinel monitor mymaster 127.0.0.1 %d 2\n"
                    "sentinel down-after-milliseconds mymaster 1000\n"
                    "sentinel failover-timeout mymaster 3000\n"
                    "sentinel parallel-syncs mymaster 1\n" % (self.port, d, self.master_port))
            if self.password:
                f.write("requirepass %s\n" % self.password)
        cmd = [REDIS_SENTINEL, conf] if REDIS_SENTINEL else [REDIS_SERVER, conf, "--sentinel"]
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        dsptest._record_pid(self.proc.pid)
        if not dsptest.wait_for(self._pings, 10, 0.05):
            raise AssertionError("sentinel on port %d did not start:\n%s"
                                 % (self.port, open(self.log).read()[-2000:]))
        return self

    def master_port_now(self):
        try:
            out = self.cli("SENTINEL", "get-master-addr-by-name", "mymaster").split()
            return int(out[1]) if len(out) == 2 else None
        except (subprocess.CalledProcessError, OSError, ValueError):
            return None


class Load(threading.Thread):
    """Keep-alive GETs to <host> on <port>, one after the other, until stopped; counts answers
    by status and connection failures."""

    def __init__(self, port, host):
        super().__init__(daemon=True)
        self.port, self.host = port, host
        self.stop_ev = threading.Event()
        self.ok = 0
        self.bad = []

    def run(self):
        conn = None
        while not self.stop_ev.is_set():
            try:
                if conn is None:
                    conn = dsptest.Conn(self.port, timeout=5)
                r = conn.request("GET", "/echo", host=self.host)
                if r.status == 200:
                    self.ok += 1
                else:
                    self.bad.append(r.status)
            except (OSError, dsptest.ConnectionClosed) as e:
                self.bad.append(repr(e))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stop_ev.set()
        self.join(10)


class SentinelTest(dsptest.TestCase):

    def tmpdir(self):
        import tempfile
        t = tempfile.mkdtemp(prefix="dsp-it-sentinel-")
        dsptest._record_tmp(t)
        self.addCleanup(shutil.rmtree, t, True)
        return t

    def start_cluster(self):
        tmp = self.tmpdir()
        master = Redis(tmp, args=["--repl-diskless-sync-delay", "0"]).start()
        self.addCleanup(master.stop)
        replica = Redis(tmp, args=["--replicaof", "127.0.0.1", str(master.port),
                                   "--repl-diskless-sync-delay", "0"]).start()
        self.addCleanup(replica.stop)
        sentinels = []
        for _ in range(3):
            s = Sentinel(tmp, master.port).start()
            self.addCleanup(s.stop)
            sentinels.append(s)
        # Ready for a failover: the replica is in sync and every sentinel knows it and the two
        # others (hellos go every 2 s through the master).
        dsptest.wait_until(lambda: "master_link_status:up" in replica.cli("INFO", "replication"),
                           10, "replica in sync")

        def sentinels_ready():
            for s in sentinels:
                try:
                    if not s.cli("SENTINEL", "ckquorum", "mymaster").startswith("OK 3 "):
                        return False
                    if "slave" not in s.cli("SENTINEL", "replicas", "mymaster"):
                        return False
                except (subprocess.CalledProcessError, OSError):
                    return False
            return True
        dsptest.wait_until(sentinels_ready, 15, "sentinels see each other and the replica")
        return master, replica, sentinels

    def sentinel_block(self, sentinels, dead_port, env="production", **opts):
        addrs = ["127.0.0.1:%d" % dead_port] + ["127.0.0.1:%d" % s.port for s in sentinels]
        d = {"sentinels": addrs, "master_name": "mymaster", "connect_timeout_ms": 500,
             "command_timeout_ms": 1000}
        d.update(opts)
        return 'environment = "%s";\nredis = %s;' % (env, dsptest._group(d))

    @dsptest.timeout(90)
    def test_failover_under_load(self):
        master, replica, sentinels = self.start_cluster()
        gw, ha, ha2 = self.backend("gw"), self.backend("ha"), self.backend("ha2")
        add_service(master, "production", "ha", [ha.addr])
        add_route(master, "production", "ha", host="ha.do", service="ha")
        d = self.dispatcher(services=[svc("gw", gw)], routes=[route("gw.do", "gw")],
                            extra=self.sentinel_block(sentinels, dsptest.free_port()))
        # Found through the sentinels at start (the dead first one skipped).
        self.assertEqual(status(d.port, "ha.do"), (200, "ha"), d.log_tail())
        dsptest.wait_until(lambda: dsptest.admin_ask(d, "show health")["config"].get("redis")
                           == "connected", 5 * SLACK, "redis connected")
        dsptest.wait_until(lambda: "watching +switch-master" in d.log(), 5 * SLACK,
                           "subscribed to +switch-master")

        loads = [Load(d.port, "ha.do"), Load(d.port, "gw.do")]
        for l in loads:
            l.start()
        dsptest.wait_until(lambda: all(l.ok > 20 for l in loads), 5, "load running")
        master.kill()
        t_kill = time.monotonic()
        dsptest.wait_until(lambda: sentinels[0].master_port_now() == replica.port, 30,
                           "sentinels promoted the replica")
        t_switch = time.monotonic()
        # A change written to the new master right away: served within 5 s of the switch
        # (the event may come before the dispatcher is back; the re-read on reconnect has it).
        add_service(replica, "production", "ha2", [ha2.addr])
        add_route(replica, "production", "ha2", host="ha2.do", service="ha2")
        publish(replica, "production")
        dsptest.wait_until(lambda: status(d.port, "ha2.do") == (200, "ha2"), 5 * SLACK,
                           "change on the new master served within 5 s of the switch:\n"
                           + d.log_tail())
        t_served = time.monotonic()
        time.sleep(0.3)  # a little load on the new generation too
        for l in loads:
            l.stop()
        print("sentinel failover: switch %.2fs after the kill, change served %.2fs after the "
              "switch; %d+%d requests, failed %s"
              % (t_switch - t_kill, t_served - t_switch, loads[0].ok, loads[1].ok,
                 [l.bad for l in loads]))
        for l in loads:
            self.assertEqual(l.bad, [], "requests failed during the failover")
            self.assertGreater(l.ok, 50)
        self.assertEqual(status(d.port, "ha.do"), (200, "ha"), "the old Redis route kept")
        h = dsptest.admin_ask(d, "show health")["config"]
        self.assertEqual(h.get("redis"), "connected", h)
        self.assertEqual(h.get("redis_master"), "mymaster at 127.0.0.1:%d" % replica.port, h)
        self.assertRegex(d.log(), r"\+switch-master mymaster 127\.0\.0\.1 %d 127\.0\.0\.1 %d"
                         % (master.port, replica.port))
        # Events on the new master work as before.
        add_route(replica, "production", "ha3", host="ha3.do", service="ha2")
        t0 = time.monotonic()
        self.assertEqual(publish(replica, "production"), 1, "subscribed on the new master")
        dsptest.wait_until(lambda: status(d.port, "ha3.do") == (200, "ha2"), 1.0 * SLACK + 0.2,
                           "event on the new master")
        self.assertLess(time.monotonic() - t0, 1.0 * SLACK + 0.2)

    @dsptest.timeout(60)
    def test_no_sentinel_answers(self):
        """All sentinels down at start: the file serves, the master keeps trying; once one is
        up the Redis route is served. The sentinel wants a password (sentinel_password)."""
        tmp = self.tmpdir()
        master = Redis(tmp).start()
        self.addCleanup(master.stop)
        add_service(master, "production", "ha", [self.backend("ha").addr])
        add_route(master, "production", "ha", host="ha.do", service="ha")
        s = Sentinel(tmp, master.port, password="s3cret")  # not started yet: its port is known
        gw = self.backend("gw")
        d = self.dispatcher(services=[svc("gw", gw)], routes=[route("gw.do", "gw")],
                            extra=self.sentinel_block([s], dsptest.free_port(),
                                                      sentinel_password="s3cret"))
        self.assertEqual(status(d.port, "gw.do"), (200, "gw"))
        self.assertEqual(status(d.port, "ha.do")[0], 404)
        self.assertIn("no sentinel named the master",
                      dsptest.admin_ask(d, "show health")["config"].get("redis", ""))
        s.start()
        self.addCleanup(s.stop)
        # Backoff is capped at 5 s.
        dsptest.wait_until(lambda: status(d.port, "ha.do") == (200, "ha"), 8 * SLACK,
                           "served once a sentinel answers:\n" + d.log_tail())

    def test_bad_settings(self):
        tmp = self.tmpdir()
        conf = os.path.join(tmp, "bad.conf")
        cases = [
            ('redis = { sentinels = ["127.0.0.1:26379"]; };', "needs redis.master_name"),
            ('redis = { master_name = "m"; };', "needs redis.sentinels"),
            ('redis = { host = "127.0.0.1"; sentinels = ["127.0.0.1:1"]; master_name = "m"; };',
             "exclude each other"),
            ('redis = { sentinels = ["127.0.0.1"]; master_name = "m"; };', "HOST:PORT"),
            ('redis = { sentinels = ["127.0.0.1:99999"]; master_name = "m"; };', "1..65535"),
            ('redis = { sentinels = []; master_name = "m"; };', "at least one"),
            ('redis = { sentinels = [1]; master_name = "m"; };', "must be a string"),
            ('redis = { sentinels = ["a b:1"]; master_name = "m"; };', "bad host name"),
            ('redis = { sentinels = ["[::1:5"]; master_name = "m"; };', "IPv6"),
            ('redis = { sentinels = ["h:1"]; master_name = "a b"; };', "master_name"),
            ('redis = { sentinel_password = "x"; };', "needs redis.sentinels"),
        ]
        for text, want in cases:
            with open(conf, "w") as f:
                f.write('listeners = ( { address = "127.0.0.1:%d"; } );\n%s\n'
                        % (dsptest.free_port(), text))
            p = subprocess.run([dsptest.MASTER, "-t", "-c", conf], capture_output=True,
                               timeout=10)
            err = p.stderr.decode()
            self.assertEqual(p.returncode, 1, text + "\n" + err)
            self.assertRegex(err, r"bad\.conf:2: .*" + want.replace("(", r"\(").replace(
                ".", r"\.").replace("[", r"\["), text)
        with open(conf, "w") as f:
            f.write('listeners = ( { address = "127.0.0.1:%d"; } );\nredis = { sentinels = '
                    '["127.0.0.1:26379", "[::1]:26380", "sentinel-1.internal:26379"]; '
                    'master_name = "mymaster"; sentinel_password = "s"; };\n'
                    % dsptest.free_port())
        p = subprocess.run([dsptest.MASTER, "-t", "-c", conf], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 0, p.stderr.decode())

    @dsptest.timeout(60)
    def test_master_stops_answering(self):
        """A master that hangs (SIGSTOP: no FIN, no RST) is noticed by the idle link's PING
        within 5 s + command_timeout_ms, traffic keeps flowing, and the link comes back once
        it answers again."""
        tmp = self.tmpdir()
        master = Redis(tmp).start()
        self.addCleanup(master.stop)
        add_service(master, "production", "ha", [self.backend("ha").addr])
        add_route(master, "production", "ha", host="ha.do", service="ha")
        d = self.dispatcher(services=[svc("gw", self.backend("gw"))],
                            routes=[route("gw.do", "gw")],
                            extra='environment = "production";\nredis = { host = "127.0.0.1"; '
                                  'port = %d; command_timeout_ms = 500; };' % master.port)

        def redis_state():
            return dsptest.admin_ask(d, "show health")["config"].get("redis", "")
        dsptest.wait_until(lambda: redis_state() == "connected", 5 * SLACK, "connected")
        os.kill(master.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            dsptest.wait_until(lambda: "timed out" in redis_state(), (5 + 0.5 + 1) * SLACK,
                               "the hung master noticed:\n" + d.log_tail())
            print("sentinel: a hung master noticed after %.2fs" % (time.monotonic() - t0))
            self.assertEqual(status(d.port, "ha.do"), (200, "ha"))
        finally:
            os.kill(master.proc.pid, signal.SIGCONT)
        dsptest.wait_until(lambda: redis_state() == "connected", 8 * SLACK, "reconnected")
        self.assertEqual(status(d.port, "ha.do"), (200, "ha"))

    @dsptest.timeout(60)
    def test_reload_onto_sentinels(self):
        """A reload moves a dispatcher from redis.host to Sentinel: a name the sentinels do not
        know is said in show health while the Redis routes keep serving; the right name
        follows the master, whose events are applied."""
        tmp = self.tmpdir()
        master = Redis(tmp).start()
        self.addCleanup(master.stop)
        ha = self.backend("ha")
        add_service(master, "production", "ha", [ha.addr])
        add_route(master, "production", "ha", host="ha.do", service="ha")
        s = Sentinel(tmp, master.port).start()
        self.addCleanup(s.stop)
        d = self.dispatcher(services=[svc("gw", self.backend("gw"))],
                            routes=[route("gw.do", "gw")],
                            extra='environment = "production";\nredis = { host = "127.0.0.1"; '
                                  'port = %d; };' % master.port)
        self.assertEqual(status(d.port, "ha.do"), (200, "ha"))
        plain = open(d.conf).read()
        block = plain.split("redis = ")[1].split("\n")[0]

        def health():
            return dsptest.admin_ask(d, "show health")["config"]
        gen = dsptest.generation(d)
        d.hup(plain.replace(block, dsptest._group({
            "sentinels": ["127.0.0.1:%d" % s.port], "master_name": "nosuch"}) + ";"))
        dsptest.wait_until(lambda: "does not know a master called 'nosuch'" in
                           health().get("redis", ""), 5 * SLACK,
                           "unknown master name said:\n" + d.log_tail())
        self.assertGreater(dsptest.generation(d), gen, "the reload itself applied")
        self.assertEqual(health().get("redis_master"), "nosuch (not known yet)")
        self.assertEqual(status(d.port, "ha.do"), (200, "ha"), "Redis routes kept")
        d.hup(plain.replace(block, dsptest._group({
            "sentinels": ["127.0.0.1:%d" % s.port], "master_name": "mymaster"}) + ";"))
        dsptest.wait_until(lambda: health().get("redis") == "connected", 8 * SLACK,
                           "connected through the sentinel:\n" + d.log_tail())
        self.assertEqual(health().get("redis_master"), "mymaster at 127.0.0.1:%d" % master.port)
        add_route(master, "production", "ha2", host="ha2.do", service="ha")
        publish(master, "production")
        dsptest.wait_until(lambda: status(d.port, "ha2.do") == (200, "ha"), 2 * SLACK,
                           "event applied after the move")

    @dsptest.timeout(60)
    def test_wrong_sentinel_password(self):
        tmp = self.tmpdir()
        master = Redis(tmp).start()
        self.addCleanup(master.stop)
        s = Sentinel(tmp, master.port, password="right").start()
        self.addCleanup(s.stop)
        d = self.dispatcher(services=[svc("gw", self.backend("gw"))],
                            routes=[route("gw.do", "gw")],
                            extra=self.sentinel_block([s], dsptest.free_port(),
                                                      sentinel_password="wrong"))
        self.assertEqual(status(d.port, "gw.do"), (200, "gw"))
        st = dsptest.admin_ask(d, "show health")["config"].get("redis", "")
        self.assertIn("AUTH", st)
        self.assertIn("sentinel 127.0.0.1:%d" % s.port, st)
