"""What each node applied (SPEC "Redis", issue 16): every dispatcher keeps
dispatcher:{environment}:node:{node_name} (generation, applied_at, source_digest, status, error, ...)
with a 60 s expiry, and `show fleet` (admin socket, dispatcherctl, admin HTTP
/api/v1/dispatcher/fleet) lists the environment's nodes and flags those that refused the namespace
or serve an older version.

- two masters on one redis-server; a Redis route naming a service only one of them has in its
  file is refused by the other: show fleet on either flags it (rejected, behind) within a second,
  with the error; fixing the data clears the flag; a refused reload of one node's file is
  flagged the same way until a good one;
- the report's expiry, a stale foreign report ("silent"), an expired one pruned from the SET,
  garbage in a foreign report rendered safely; node_name changed on reload replaces the old key;
- node_name defaults to the host name; a bad node_name is refused by -t.
"""

DSP_SERIAL = True

import json
import os
import socket
import subprocess
import time
import urllib.request

import dsptest
from dsptest import route, svc
from test_redis import Redis, add_route, add_service, publish, remove, status

SLACK = 2 if dsptest.SANITIZED else 1
CTL = os.path.join(os.path.dirname(dsptest.MASTER), "dispatcherctl")


def fleet(d):
    return dsptest.admin_ask(d, "show fleet")


def node(f, name):
    for n in f["nodes"]:
        if n["name"] == name:
            return n
    return None


class FleetTest(dsptest.TestCase):

    def redis(self):
        import shutil
        import tempfile
        t = tempfile.mkdtemp(prefix="dsp-it-fleet-")
        dsptest._record_tmp(t)
        self.addCleanup(shutil.rmtree, t, True)
        r = Redis(t).start()
        self.addCleanup(r.stop)
        return r

    def node_dispatcher(self, r, name, services, routes, http_port=None, node_name=True):
        extra = 'environment = "production";\nredis = { host = "127.0.0.1"; port = %d; };' % r.port
        if node_name:
            extra += '\nnode_name = "%s";' % name
        d = dsptest.Dispatcher(workers=1)
        text = dsptest.make_config(d.port, d.tmp, services, routes, workers=1, extra=extra)
        if http_port is not None:
            text = text.replace('admin = { socket = "%s"; };' % os.path.join(d.tmp, "admin.sock"),
                                'admin = { socket = "%s"; http = "127.0.0.1:%d"; };'
                                % (os.path.join(d.tmp, "admin.sock"), http_port))
        d.write_config(text)
        return self.start_dispatcher(d)

    @dsptest.timeout(60)
    def test_one_node_rejects(self):
        r = self.redis()
        gw, api, loc = self.backend("gw"), self.backend("api"), self.backend("local")
        add_service(r, "production", "api", [api.addr])
        add_route(r, "production", "api", host="api.do", service="api")
        http_port = dsptest.free_port()
        # n1's file has a service "local"; n2's does not.
        d1 = self.node_dispatcher(r, "n1", [svc("gw", gw), svc("local", loc)],
                                  [route("gw.do", "gw")], http_port=http_port)
        d2 = self.node_dispatcher(r, "n2", [svc("gw", gw)], [route("gw.do", "gw")])
        for d in (d1, d2):
            self.assertEqual(status(d.port, "api.do"), (200, "api"))
        v1 = int(r.cli("GET", "dispatcher:production:version"))

        def both_ok(d):
            f = fleet(d)
            return (f["ok"] and f["flagged"] == 0 and len(f["nodes"]) == 2 and
                    all(n["version"] == v1 and n["status"] == "ok" for n in f["nodes"]))
        for d in (d1, d2):
            dsptest.wait_until(lambda: both_ok(d), 3 * SLACK, "both nodes ok in show fleet")
        f = fleet(d1)
        self.assertEqual(f["environment"], "production")
        self.assertEqual(f["node"], "n1")
        self.assertEqual(f["version"], v1)
        self.assertEqual([n["name"] for n in f["nodes"]], ["n1", "n2"])
        self.assertTrue(node(f, "n1")["self"])
        self.assertFalse(node(f, "n2")["self"])
        self.assertEqual(node(f, "n1")["source_digest"], node(f, "n2")["source_digest"],
                         "the same Redis data, the same digest")
        self.assertEqual(node(f, "n2")["pid"], d2.proc.pid)
        self.assertEqual(node(f, "n1")["flags"], "")
        ttl = int(r.cli("TTL", "dispatcher:production:node:n1"))
        self.assertTrue(0 < ttl <= 60, ttl)
        self.assertEqual(r.cli("HGET", "dispatcher:production:node:n2", "status"), "ok")

        # A route to "local": n1 applies it, n2 refuses the whole namespace.
        add_route(r, "production", "loc", host="loc.do", service="local")
        t0 = time.monotonic()
        publish(r, "production")
        v2 = int(r.cli("GET", "dispatcher:production:version"))
        dsptest.wait_until(lambda: status(d1.port, "loc.do") == (200, "local"), 2 * SLACK,
                           "n1 applies the change")

        def flagged(d):
            f = fleet(d)
            n2 = node(f, "n2")
            return (f["version"] == v2 and n2 is not None and n2["status"] == "rejected" and
                    node(f, "n1")["version"] == v2 and f["flagged"] == 1)
        for d in (d1, d2):
            dsptest.wait_until(lambda: flagged(d), 2 * SLACK,
                               "show fleet flags n2:\n%s" % json.dumps(fleet(d)))
        dt = time.monotonic() - t0
        f = fleet(d1)
        n2 = node(f, "n2")
        self.assertEqual(n2["flags"], "rejected,behind")
        self.assertEqual(n2["version"], v1, "n2 still serves the last good data")
        self.assertIn("unknown service", n2["error"])
        self.assertIn("route:loc", n2["error"])
        self.assertEqual(node(f, "n1")["flags"], "")
        self.assertNotEqual(node(f, "n1")["source_digest"], n2["source_digest"])
        print("fleet: the refusal visible in show fleet of both nodes %.2fs after the PUBLISH"
              % dt)

        # dispatcherctl's table and the admin HTTP API say the same.
        out = subprocess.run([CTL, "-s", os.path.join(d1.tmp, "admin.sock"), "show", "fleet"],
                             capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 0, out.stderr)
        text = out.stdout.decode()
        self.assertIn("n2", text)
        self.assertIn("rejected,behind", text)
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/dispatcher/fleet" % http_port,
                                    timeout=5) as resp:
            self.assertEqual(resp.status, 200)
            j = json.loads(resp.read())
        self.assertEqual(node(j, "n2")["status"], "rejected")
        self.assertEqual(j["flagged"], 1)
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % http_port,
                                    timeout=5) as resp:
            metrics = resp.read().decode()
        self.assertIn("\ndispatcher_fleet_nodes 2\n", metrics)
        self.assertIn("\ndispatcher_fleet_nodes_flagged 1\n", metrics)

        # Fixed: both serve the same version again, nothing flagged.
        remove(r, "production", "route", "loc")
        publish(r, "production")
        v3 = int(r.cli("GET", "dispatcher:production:version"))
        for d in (d1, d2):
            dsptest.wait_until(lambda: fleet(d)["flagged"] == 0 and all(
                n["version"] == v3 for n in fleet(d)["nodes"]), 2 * SLACK, "flag cleared")

        # A reload of its file that one node refuses is a refused change too.
        good = open(d2.conf).read()
        d2.hup(good.replace("services = (", "services = ( oops", 1))
        dsptest.wait_until(lambda: node(fleet(d1), "n2")["status"] == "rejected", 2 * SLACK,
                           "the refused reload in show fleet")
        n2 = node(fleet(d1), "n2")
        self.assertIn("reload refused: %s:" % d2.conf, n2["error"])
        self.assertEqual(n2["flags"], "rejected")
        d2.hup(good)
        dsptest.wait_until(lambda: node(fleet(d1), "n2")["status"] == "ok" and
                           fleet(d1)["flagged"] == 0, 2 * SLACK, "cleared by a good reload")

        # A node that stops cleanly leaves the fleet at once (a crashed one expires).
        self.assertEqual(d2.stop(), [])
        dsptest.wait_until(lambda: node(fleet(d1), "n2") is None, 2 * SLACK,
                           "n2 gone from show fleet")
        self.assertEqual(r.cli("EXISTS", "dispatcher:production:node:n2"), "0")
        self.assertNotIn("n2", r.cli("SMEMBERS", "dispatcher:production:nodes").split())

    @dsptest.timeout(60)
    def test_foreign_reports_and_rename(self):
        r = self.redis()
        gw = self.backend("gw")
        add_service(r, "production", "api", [gw.addr])
        d = self.node_dispatcher(r, "n1", [svc("gw", gw)], [route("gw.do", "gw")])
        now = int(time.time())
        # A node that stopped reporting 2 minutes ago (its key would have expired; here it has
        # no TTL), one whose hash expired (only its name is left in the SET), one with garbage.
        r.cli("HSET", "dispatcher:production:node:old", "generation", "3", "applied_at",
              str(now - 500), "source_digest", "x", "status", "ok", "error", "", "version", "0",
              "updated_at", str(now - 120), "pid", "1")
        r.cli("SADD", "dispatcher:production:nodes", "old", "expired", "junk")
        r.cli("HSET", "dispatcher:production:node:junk", "generation", "-7", "status",
              'bad "quoted"\x01\\', "version", "12abc", "updated_at", "x", "error",
              "\xff" * 50)
        r.cli("PUBLISH", "dispatcher:production:node-events", "old")
        dsptest.wait_until(lambda: node(fleet(d), "junk") is not None, 3 * SLACK,
                           "foreign reports read")
        f = fleet(d)
        self.assertIsNone(node(f, "expired"))
        dsptest.wait_until(lambda: "expired" not in r.cli("SMEMBERS",
                                                          "dispatcher:production:nodes"),
                           2, "expired name pruned from the SET")
        self.assertEqual(node(f, "old")["flags"], "behind,silent")
        junk = node(f, "junk")
        self.assertEqual(junk["generation"], None)
        self.assertEqual(junk["version"], None)
        self.assertEqual(junk["flags"], "rejected,behind,silent")
        self.assertEqual(node(f, "n1")["flags"], "")
        self.assertEqual(f["flagged"], 2)
        out = subprocess.run([CTL, "-s", os.path.join(d.tmp, "admin.sock"), "show", "fleet"],
                             capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 0, out.stderr)

        # node_name changed by a reload: the old key and name go, the new ones come.
        text = open(d.conf).read().replace('node_name = "n1";', 'node_name = "n1b";')
        d.hup(text)
        dsptest.wait_until(lambda: r.cli("EXISTS", "dispatcher:production:node:n1") == "0" and
                           r.cli("EXISTS", "dispatcher:production:node:n1b") == "1", 3 * SLACK,
                           "renamed report")
        members = r.cli("SMEMBERS", "dispatcher:production:nodes").split()
        self.assertIn("n1b", members)
        self.assertNotIn("n1", members)
        dsptest.wait_until(lambda: fleet(d)["node"] == "n1b" and
                           node(fleet(d), "n1b") is not None and node(fleet(d), "n1") is None,
                           3 * SLACK, "show fleet after the rename")

    def test_default_node_name_and_no_redis(self):
        r = self.redis()
        gw = self.backend("gw")
        d = self.node_dispatcher(r, None, [svc("gw", gw)], [route("gw.do", "gw")],
                                 node_name=False)
        host = socket.gethostname()
        dsptest.wait_until(lambda: r.cli("EXISTS", "dispatcher:production:node:%s" % host) == "1",
                           3 * SLACK, "report under the host name")
        dsptest.wait_until(lambda: fleet(d)["node"] == host and node(fleet(d), host) is not None,
                           3 * SLACK, "show fleet lists this host")
        # Without Redis there is no fleet to show.
        plain = self.dispatcher(services=[svc("gw", gw)], routes=[route("gw.do", "gw")])
        a = dsptest.admin_ask(plain, "show fleet")
        self.assertFalse(a["ok"])
        self.assertIn("Redis is not configured", a["error"])

    def test_bad_node_name(self):
        d = dsptest.Dispatcher()
        for bad in ("a b", "x/y", "", "n" * 256):
            d.write_config('listeners = ( { address = "127.0.0.1:%d"; } );\nnode_name = "%s";\n'
                           % (d.port, bad))
            p = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf], capture_output=True,
                               timeout=10)
            self.assertEqual(p.returncode, 1, bad)
            self.assertRegex(p.stderr.decode(), r"dispatcher\.conf:2: .*node_name", bad)
