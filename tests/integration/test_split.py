"""Weighted splits (route `split`, `sticky`; SPEC "dispatcher.conf", "Redis"):

- 10,000 requests on 16 keep-alive connections (pipelined, both workers): each service's share
  within 2 percentage points of its weight;
- sticky: the dsp_split cookie (HTTP/1 among other cookies and in several Cookie headers, and
  HTTP/2 through curl) keeps a client on its service and reaches the backend unchanged; a client
  without one gets a Set-Cookie (Path=/, HttpOnly, SameSite=Lax, Max-Age); a cookie naming a
  service outside the split or of weight 0 is replaced;
- a split member without backends, or with its only backend's circuit tripped, is left out
  (a sticky client moved off it); a split of nothing deployable answers its 404;
- weights changed by SIGHUP while a keep-alive connection is open: the connection is kept and
  the new share applies to its next requests; `show routes` (socket, dispatcherctl) shows it;
- `-t` refuses bad splits with FILE:LINE;
- a split in a Redis route (`split`, `sticky` fields) from a real redis-server, changed by a
  PUBLISH under an open connection, and a bad one refused as a whole.
"""

import os
import re
import socket
import subprocess
import time

import dsptest
from dsptest import admin_ask, svc

CTL = os.path.join(dsptest.BIN_DIR, "dispatcherctl")


def split_route(host, entries, sticky=None, **opts):
    d = {"host": host}
    d.update(opts)
    d["split"] = [{"service": s, "weight": w} for s, w in entries]
    if sticky is not None:
        d["sticky"] = sticky
    return d


class Pipe:
    """A keep-alive HTTP/1.1 client that pipelines batches of small requests and returns each
    response's X-Backend (fast enough for thousands of requests in a second or two)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def batch(self, host, n, path="/bytes?n=0", extra=b""):
        req = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host.encode(), extra)
        self.s.sendall(req * n)
        out = []
        while len(out) < n:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                d = self.s.recv(1 << 16)
                if not d:
                    raise AssertionError("connection closed after %d responses" % len(out))
                self.buf += d
                continue
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            assert head.startswith(b"HTTP/1.1 200"), head[:200]
            m = re.search(rb"(?im)^content-length: *(\d+)", head)
            clen = int(m.group(1)) if m else 0
            while len(self.buf) < clen:
                self.buf += self.s.recv(1 << 16)
            self.buf = self.buf[clen:]
            out.append(re.search(rb"(?im)^x-backend: *(\S+)", head).group(1).decode())
        return out

    def close(self):
        self.s.close()


def shares(names):
    return {k: names.count(k) / len(names) for k in set(names)}


class SplitTest(dsptest.TestCase):
    def ctl(self, d, *args):
        p = subprocess.run([CTL, "-s", os.path.join(d.tmp, "admin.sock")] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        return p.returncode, p.stdout.decode()

    def test_split_shares_sticky_fallback_and_reload(self):
        b1, b2, b3 = self.backend("b1"), self.backend("b2"), self.backend("b3")
        services = [svc("v1", b1), svc("v2", b2), svc("v3", b3), svc("dark")]
        routes = [split_route("shop.do", [("v1", 95), ("v2", 5)]),
                  split_route("ab.do", [("v1", 50), ("v2", 50)], sticky=True),
                  split_route("zero.do", [("v1", 0), ("v2", 1)], sticky=True),
                  split_route("canary.do", [("v3", 90), ("dark", 10)]),
                  split_route("dead.do", [("dark", 1)], sticky=True)]
        d = self.dispatcher(services, routes, workers=2)

        # 10,000 requests on 16 connections (the kernel spreads them over both workers).
        names = []
        for _ in range(16):
            p = Pipe(d.port)
            for _ in range(5):
                names += p.batch("shop.do", 125)
            p.close()
        self.assertEqual(len(names), 10000)
        got = shares(names)
        self.assertLessEqual(abs(got.get("b2", 0) - 0.05), 0.02, got)
        self.assertLessEqual(abs(got.get("b1", 0) - 0.95), 0.02, got)
        ws = admin_ask(d, "show workers")["workers"]
        self.assertTrue(all(w["requests"] > 0 for w in ws if w["alive"]), ws)

        # Sticky: no cookie -> drawn and told; the cookie keeps the client there.
        seen = set()
        for _ in range(20):
            r = dsptest.request(d.port, "/echo", host="ab.do")
            be = r.header("X-Backend")
            ck = r.header("Set-Cookie")
            self.assertEqual(ck, "dsp_split=%s; Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"
                             % {"b1": "v1", "b2": "v2"}[be])
            seen.add(be)
        self.assertEqual(seen, {"b1", "b2"})
        with dsptest.Conn(d.port) as c:
            for hdrs in ([("Cookie", "dsp_split=v2")],
                         [("Cookie", "a=1; dsp_split=v2; b=\"x\"")],
                         [("Cookie", "a=1"), ("Cookie", "theme=dark;dsp_split=\"v2\"")]):
                for _ in range(10):
                    r = c.request("GET", "/echo", host="ab.do", headers=hdrs)
                    self.assertEqual((r.status, r.header("X-Backend")), (200, "b2"))
                    self.assertIsNone(r.header("Set-Cookie"))
            # Forwarded upstream unchanged.
            got_hdrs = r.json()["headers"]
            self.assertEqual([v for k, v in got_hdrs if k.lower() == "cookie"],
                             ["a=1", "theme=dark;dsp_split=\"v2\""])
            # A bogus cookie, one for a service outside the split: replaced.
            for bad in ("dsp_split=nope", "dsp_split=v3", "dsp_split=", "xdsp_split=v2"):
                r = c.request("GET", "/echo", host="ab.do", headers=[("Cookie", bad)])
                m = re.match(r"dsp_split=(v1|v2); ", r.header("Set-Cookie") or "")
                self.assertTrue(m, (bad, r.headers))
                self.assertEqual({"v1": "b1", "v2": "b2"}[m.group(1)], r.header("X-Backend"))
            # Weight 0 takes no client, not even one whose cookie names it.
            for _ in range(10):
                r = c.request("GET", "/echo", host="zero.do", headers=[("Cookie", "dsp_split=v1")])
                self.assertEqual(r.header("X-Backend"), "b2")
                self.assertTrue(r.header("Set-Cookie").startswith("dsp_split=v2; "))

        # HTTP/2 (curl, prior knowledge; one request per run: curl 7.88 fails to reuse an h2c
        # connection): the cookie works there too.
        for _ in range(3):
            p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-D",
                                "-", "-H", "Host: ab.do", "-b", "x=1; dsp_split=v1",
                                "http://127.0.0.1:%d/echo" % d.port], capture_output=True,
                               timeout=30)
            heads = p.stdout.decode().lower()
            self.assertIn("http/2 200", heads, p.stderr)
            self.assertIn("x-backend: b1", heads)
            self.assertNotIn("set-cookie", heads)
        p = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-D", "-",
                            "-H", "Host: ab.do", "http://127.0.0.1:%d/echo" % d.port],
                           capture_output=True, timeout=30)
        self.assertRegex(p.stdout.decode().lower(), r"set-cookie: dsp_split=v[12]; path=/")

        # A member with no backends is left out; a split of nothing deployable: its own 404.
        self.assertEqual(set(Pipe(d.port).batch("canary.do", 200)), {"b3"})
        r = dsptest.request(d.port, "/echo", host="dead.do")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json()["error"], "Service not deployed")
        self.assertIsNone(r.header("Set-Cookie"))
        # A sticky client of a service whose only backend is out moves, and is told.
        self.assertTrue(admin_ask(d, "trip circuit v2 %s" % b2.addr)["ok"])
        r = dsptest.request(d.port, "/echo", host="ab.do", headers=[("Cookie", "dsp_split=v2")])
        self.assertEqual(r.header("X-Backend"), "b1")
        self.assertTrue(r.header("Set-Cookie").startswith("dsp_split=v1; "))
        self.assertTrue(admin_ask(d, "reset circuit v2 %s" % b2.addr)["ok"])

        # show routes: socket and dispatcherctl.
        rs = {r["host"]: r for r in admin_ask(d, "show routes")["routes"]}
        self.assertEqual(rs["ab.do"]["split"], [{"service": "v1", "weight": 50},
                                                 {"service": "v2", "weight": 50}])
        self.assertIs(rs["ab.do"]["sticky"], True)
        self.assertIs(rs["shop.do"]["sticky"], False)
        self.assertIsNone(rs["shop.do"]["service"])
        hosts = {i["name"]: i["hosts"] for i in admin_ask(d, "show instances")["instances"]}
        self.assertEqual(hosts["v2"], ["ab.do", "shop.do", "zero.do"])
        self.assertEqual(hosts["dark"], ["canary.do", "dead.do"])
        rc, out = self.ctl(d, "show", "routes")
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"shop\.do .* v1=95,v2=5 ")
        self.assertRegex(out, r"ab\.do .* v1=50,v2=50 \(sticky\)")

        # Reload with new weights under an open keep-alive connection: kept, new shares.
        keep = Pipe(d.port)
        self.assertEqual(len(keep.batch("shop.do", 10)), 10)
        gen = dsptest.generation(d)
        routes[0] = split_route("shop.do", [("v1", 20), ("v2", 80)])
        d.hup(dsptest.make_config(d.port, d.tmp, services, routes, 2))
        dsptest.wait_until(lambda: dsptest.workers_on_generation(d, gen + 1), 10, "reload")
        names = []
        for _ in range(10):
            names += keep.batch("shop.do", 200)
        got = shares(names)
        self.assertLessEqual(abs(got.get("b2", 0) - 0.80), 0.04, got)
        keep.close()
        rs = {r["host"]: r for r in admin_ask(d, "show routes")["routes"]}
        self.assertEqual([e["weight"] for e in rs["shop.do"]["split"]], [20, 80])

    def test_bad_splits_refused_with_file_line(self):
        b1 = self.backend("b1")
        services = [svc("v1", b1), svc("v2", b1)]
        bad = [
            ({"host": "a.do", "service": "v1", "split": [{"service": "v2", "weight": 1}]},
             "both service and split"),
            (split_route("a.do", [("v1", 1), ("nope", 1)]), "unknown service 'nope'"),
            (split_route("a.do", [("v1", -1), ("v2", 1)]), "weight must be between 0 and"),
            ({"host": "a.do", "split": [{"service": "v1", "weight": "5"}]},
             "weight must be an integer"),
            (split_route("a.do", [("v1", 0), ("v2", 0)]), "every weight is 0"),
            (split_route("a.do", [("v1", 1)] * 17), "must list 1 to 16"),
            (split_route("a.do", [("v1", 1), ("v2", 1), ("v1", 2)]), "'v1' is listed twice"),
            ({"host": "a.do", "service": "v1", "sticky": True}, "sticky applies to a split"),
            ({"host": "a.do", "split": [{"service": "v1", "wieght": 1}]}, "wieght"),
            ({"host": "a.do", "split": []}, "must list 1 to 16"),
        ]
        for rt, want in bad:
            d = dsptest.Dispatcher(workers=1)
            d.write_config(dsptest.make_config(d.port, d.tmp, services, [rt], 1))
            p = subprocess.run([dsptest.MASTER, "-t", "-c", d.conf], capture_output=True,
                               timeout=20, cwd=d.tmp)
            err = p.stderr.decode()
            self.assertEqual(p.returncode, 1, (rt, err))
            self.assertRegex(err, r"dispatcher\.conf:\d+: .*%s" % re.escape(want), rt)


class SplitRedisTest(dsptest.TestCase):
    def test_split_from_redis(self):
        from test_redis import Redis, publish, redis_block
        import tempfile
        tmp = tempfile.mkdtemp(prefix="dsp-it-redis-")
        dsptest._record_tmp(tmp)
        r = Redis(tmp).start()
        self.addCleanup(r.stop)
        b1, b2 = self.backend("b1"), self.backend("b2")
        services = [svc("v1", b1), svc("v2", b2)]
        d = self.dispatcher(services, [dsptest.route("file.do", "v1")], workers=2,
                            extra=redis_block(r))
        key = "dispatcher:production:route:r1"
        r.cli("HSET", key, "host", "redis.do", "split", "v1=30, v2=70", "sticky", "true")
        r.cli("SADD", "dispatcher:production:routes", "r1")
        publish(r, "production")
        dsptest.wait_until(lambda: dsptest.request(d.port, "/echo", host="redis.do").status == 200,
                           5, "redis route served")
        keep = Pipe(d.port)
        got = shares(keep.batch("redis.do", 2000))
        self.assertLessEqual(abs(got.get("b2", 0) - 0.70), 0.05, got)
        r1 = dsptest.request(d.port, "/echo", host="redis.do")
        self.assertRegex(r1.header("Set-Cookie"), r"^dsp_split=v[12]; Path=/;")
        rt = [x for x in admin_ask(d, "show routes")["routes"] if x["host"] == "redis.do"][0]
        self.assertEqual((rt["source"], rt["split"], rt["sticky"]),
                         ("redis", [{"service": "v1", "weight": 30},
                                    {"service": "v2", "weight": 70}], True))

        # New weights through Redis: the open connection follows them.
        r.cli("HSET", key, "split", "v1=100,v2=0")
        publish(r, "production")
        dsptest.wait_until(lambda: set(keep.batch("redis.do", 50)) == {"b1"}, 5, "new weights")
        self.assertEqual(set(keep.batch("redis.do", 500)), {"b1"})

        # Garbage is refused as a whole, naming the key; the last good split keeps serving.
        for bad in ("v1=abc", "v1=1,nope=1", "v1=0", "v1=1,v1=2", "v1", "",
                    ",".join("v1=1" for _ in range(17))):
            r.cli("HSET", key, "split", bad)
            before = d.log().count("route:r1")
            publish(r, "production")
            dsptest.wait_until(lambda: d.log().count("route:r1") > before, 5,
                               "refusal of %r logged" % bad)
            self.assertEqual(set(keep.batch("redis.do", 20)), {"b1"})
        r.cli("HSET", key, "split", "v1=1", "service", "v2")
        before = d.log().count("route:r1")
        publish(r, "production")
        dsptest.wait_until(lambda: "both service and split" in d.log(), 5, "both refused")
        keep.close()
