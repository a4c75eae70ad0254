"""HTTP/2 abuse (worker/wk_h2.c): rapid reset, CONTINUATION flood, HPACK bomb, SETTINGS / PING /
empty-DATA / PRIORITY floods, too many streams and a zero-window stall. Each case: the offender
gets GOAWAY (or its stream a reset) within a bounded time, `show stats` and /metrics count it, and
a well-behaved HTTP/2 client on another connection to the same (single) worker keeps getting
answers with normal latency meanwhile.

Frames are written by hand (raw bytes, HPACK from the `hpack` module) by a helper script run under
/usr/bin/python3 (Debian python3-h2); the well-behaved client uses the `h2` module.
"""

import json
import os
import subprocess
import unittest
import urllib.request

import dsptest
from dsptest import make_config, route, svc

SYS_PY = "/usr/bin/python3"

SCRIPT = r'''
import json, socket, struct, sys, threading, time
import h2.config, h2.connection, h2.events, hpack

port, kind = int(sys.argv[1]), sys.argv[2]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINUP, CONT = 0, 1, 2, 3, 4, 6, 7, 8, 9

def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload

REQ = [(":method", "GET"), (":path", "/x"), (":scheme", "http"), (":authority", "h2.test")]
POST = [(":method", "POST"), (":path", "/echo-body"), (":scheme", "http"),
        (":authority", "h2.test")]

# ---- the well-behaved client: one GET after another on its own connection ----
good = {"n": 0, "max_ms": 0.0, "err": None}
stop = threading.Event()

def good_client():
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        s.sendall(c.data_to_send())
        while not stop.is_set():
            sid = c.get_next_available_stream_id()
            t0 = time.monotonic()
            c.send_headers(sid, REQ, end_stream=True)
            s.sendall(c.data_to_send())
            done = False
            while not done:
                d = s.recv(65536)
                if not d:
                    raise Exception("good connection closed")
                for ev in c.receive_data(d):
                    if isinstance(ev, h2.events.DataReceived):
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        done = True
                    if isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        raise Exception("good client got %r" % ev)
                s.sendall(c.data_to_send())
            good["max_ms"] = max(good["max_ms"], (time.monotonic() - t0) * 1000)
            good["n"] += 1
            time.sleep(0.005)
    except Exception as e:
        good["err"] = repr(e)

# ---- the offender ----
enc = hpack.Encoder()

def headers_block(hdrs):
    return enc.encode(hdrs)

def attack(s):
    out = [PREFACE, frame(SETTINGS, 0, 0)]
    if kind == "rapid_reset":
        for i in range(600):
            sid = 1 + 2 * i
            out.append(frame(HEADERS, 0x5, sid, headers_block(REQ)))
            out.append(frame(RST, 0, sid, struct.pack(">I", 8)))
    elif kind == "continuation_flood":
        out.append(frame(HEADERS, 0, 1, headers_block(REQ)))
        for i in range(200):
            out.append(frame(CONT, 0, 1, hpack.Encoder().encode([("x-c%d" % i, "v" * 100)])))
    elif kind == "hpack_bomb":
        big = ("x-bomb", "a" * 4000)
        blk = headers_block(REQ) + enc.encode([big])   # added to the dynamic table
        blk += bytes([0x80 | 62]) * 16000                # ... then referenced 16000 times
        out.append(frame(HEADERS, 0x1, 1, blk[:16384]))    # END_STREAM, then CONTINUATION
        out.append(frame(CONT, 0x4, 1, blk[16384:]))
    elif kind == "settings_flood":
        out += [frame(SETTINGS, 0, 0)] * 2000
    elif kind == "ping_flood":
        out += [frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(2000)]
    elif kind == "priority_flood":
        out += [frame(PRIORITY, 0, 3 + 2 * (i % 50), struct.pack(">IB", 1, 16))
                for i in range(5000)]
    elif kind == "empty_data":
        out.append(frame(HEADERS, 0x4, 1, headers_block(POST)))
        out += [frame(DATA, 0, 1)] * 2000
    elif kind == "too_many_streams":
        for i in range(20):   # limits.h2_max_streams is 8 here; bodies never sent
            out.append(frame(HEADERS, 0x4, 1 + 2 * i, headers_block(POST)))
    elif kind == "zero_window":
        # Stream windows of 0 (SETTINGS_INITIAL_WINDOW_SIZE), never opened.
        out[1] = frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0))
        out.append(frame(HEADERS, 0x5, 1, headers_block(
            [(":method", "GET"), (":path", "/bytes?n=2000000"), (":scheme", "http"),
             (":authority", "h2.test")])))
    data = b"".join(out)
    t0 = time.monotonic()
    try:
        s.sendall(data)
    except OSError:
        pass
    res = {"goaway": None, "resets": {}, "closed": False}
    buf = b""
    acked = False
    while time.monotonic() - t0 < 15:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            res["closed"] = True
            break
        if not d:
            res["closed"] = True
            break
        buf += d
        while len(buf) >= 9:
            ln = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + ln:
                break
            t, fl, sid, pl = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7fffffff, buf[9:9 + ln]
            buf = buf[9 + ln:]
            if t == SETTINGS and not (fl & 1) and not acked:
                acked = True
                try:
                    s.sendall(frame(SETTINGS, 1, 0))
                except OSError:
                    pass
            if t == RST:
                code = int.from_bytes(pl[:4], "big")
                res["resets"][str(code)] = res["resets"].get(str(code), 0) + 1
            if t == GOAWAY and res["goaway"] is None:
                res["goaway"] = int.from_bytes(pl[4:8], "big")
        if kind == "too_many_streams" and sum(res["resets"].values()) >= 12:
            break
        if (kind == "zero_window" and res["resets"]) or res["goaway"] is not None:
            break
    res["elapsed"] = time.monotonic() - t0
    return res

th = threading.Thread(target=good_client)
th.start()
time.sleep(0.2)
s = socket.create_connection(("127.0.0.1", port), timeout=1)
res = attack(s)
time.sleep(0.3)
stop.set()
th.join(10)
s.close()
res["good"] = good
print(json.dumps(res))
'''

ABUSE_KINDS = ["rapid_reset", "continuation_flood", "hpack_bomb", "settings_flood", "ping_flood",
               "empty_data", "priority_flood", "ack_flood", "zero_window", "refused_stream"]


@unittest.skipUnless(os.path.exists(SYS_PY), "Debian python3")
class Http2AbuseTest(dsptest.TestCase):
    def setUp(self):
        self.b = self.backend("h2abuse")
        self.d = dsptest.Dispatcher(workers=1)
        self.http_port = dsptest.free_port()
        text = make_config(self.d.port, self.d.tmp, [svc("web", self.b)],
                           [route("h2.test", "web")], workers=1,
                           limits={"h2_max_streams": 8, "send_timeout_ms": 1000})
        sock = 'admin = { socket = "%s"; };' % os.path.join(self.d.tmp, "admin.sock")
        text = text.replace(sock, 'admin = { socket = "%s"; http = "127.0.0.1:%d"; };'
                            % (os.path.join(self.d.tmp, "admin.sock"), self.http_port))
        self.d.write_config(text)
        self.start_dispatcher(self.d)

    def abuse_counts(self):
        return dsptest.admin_ask(self.d, "show stats")["h2_abuse"]

    def run_attack(self, kind):
        p = subprocess.run([SYS_PY, "-c", SCRIPT, str(self.d.port), kind],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        res = json.loads(p.stdout.decode())
        good = res["good"]
        self.assertIsNone(good["err"], res)
        self.assertGreaterEqual(good["n"], 5, res)
        self.assertLess(good["max_ms"], 1000, res)
        return res

    def check_goaway(self, kind, counter):
        res = self.run_attack(kind)
        self.assertTrue(res["goaway"] == 11 or res["closed"], res)   # ENHANCE_YOUR_CALM
        self.assertEqual(res["goaway"], 11, res)
        self.assertLess(res["elapsed"], 10, res)
        dsptest.wait_until(lambda: self.abuse_counts()[counter] >= 1, 5, "%s counted" % counter)
        return res

    def test_rapid_reset(self):
        self.check_goaway("rapid_reset", "rapid_reset")

    def test_continuation_flood(self):
        self.check_goaway("continuation_flood", "continuation_flood")

    def test_hpack_bomb(self):
        res = self.check_goaway("hpack_bomb", "hpack_bomb")
        self.assertLess(res["elapsed"], 5, res)   # stopped early, not inflated to its end
        self.assertLess(dsptest.rss_kib(self.d.initial_workers[0])
                        if self.d.initial_workers else 0, 200000)

    def test_settings_flood(self):
        self.check_goaway("settings_flood", "settings_flood")

    def test_ping_flood(self):
        self.check_goaway("ping_flood", "ping_flood")

    def test_priority_flood(self):
        self.check_goaway("priority_flood", "priority_flood")

    def test_empty_data_flood(self):
        self.check_goaway("empty_data", "empty_data")

    def test_too_many_streams(self):
        res = self.run_attack("too_many_streams")
        self.assertGreaterEqual(res["resets"].get("7", 0), 12, res)   # REFUSED_STREAM
        dsptest.wait_until(lambda: self.abuse_counts()["refused_stream"] >= 12, 5,
                           "refused streams counted")

    def test_zero_window_stall(self):
        res = self.run_attack("zero_window")
        self.assertEqual(res["resets"].get("11", 0), 1, res)   # the stream, after send_timeout_ms
        self.assertLess(res["elapsed"], 6, res)
        dsptest.wait_until(lambda: self.abuse_counts()["zero_window"] >= 1, 5, "stall counted")
        # The backend connection was released with the stream.
        dsptest.wait_until(lambda: dsptest.admin_ask(self.d, "show stats")["active_connections"]
                           == 0, 5, "backend connection released")

    def test_metrics_render_abuse_and_protocols(self):
        self.run_attack("ping_flood")
        dsptest.wait_until(lambda: self.abuse_counts()["ping_flood"] >= 1, 5, "counted")
        dsptest.request(self.d.port, "/x", host="h2.test")
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.http_port,
                                    timeout=10) as r:
            text = r.read().decode()
        vals = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                vals[k] = float(v)
        for k in ABUSE_KINDS:
            self.assertIn('dispatcher_h2_abuse_total{kind="%s"}' % k, vals)
        self.assertGreaterEqual(vals['dispatcher_h2_abuse_total{kind="ping_flood"}'], 1)
        self.assertGreaterEqual(vals['dispatcher_requests_by_proto_total{proto="h2"}'], 5)
        self.assertGreaterEqual(vals['dispatcher_requests_by_proto_total{proto="http1"}'], 1)
        st = dsptest.admin_ask(self.d, "show stats")
        self.assertGreaterEqual(st["requests_by_proto"]["h2"], 5)
        self.assertGreaterEqual(st["requests_by_proto"]["http1"], 1)


if __name__ == "__main__":
    unittest.main()
