"""An idle HTTP/2 client connection without its nghttp2 session (worker/wk_h2idle.c): idle for a
second, the session is deleted and rebuilt from what was kept when the client sends again. The
connection must go on exactly as before: PING and SETTINGS answered, big header blocks (HPACK),
request and response bodies beyond the initial 65,535-byte windows (flow control), stream ids
going on, and the idle timeout's GOAWAY naming the last stream the client opened.

Frame-level client: the `h2` module under /usr/bin/python3 (python3-h2).
"""

import json
import os
import subprocess
import unittest

import dsptest
from dsptest import route, svc

SYS_PY = "/usr/bin/python3"

SCRIPT = r'''
import json, socket, sys, time, zlib
import h2.config, h2.connection, h2.events, h2.settings

port, pause = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
c.initiate_connection()
s.sendall(c.data_to_send())
out = {"steps": []}


def pump(until):
    """Read frames until until(event) is true for one of them; returns that event."""
    while True:
        d = s.recv(65536)
        if not d:
            raise SystemExit("closed %r %r" % (out.get("goaway"), out["steps"]))
        hit = None
        for ev in c.receive_data(d):
            if isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                bodies[ev.stream_id] = bodies.get(ev.stream_id, b"") + ev.data
            if isinstance(ev, h2.events.ResponseReceived):
                status[ev.stream_id] = dict(ev.headers)[b":status"].decode()
            if isinstance(ev, h2.events.ConnectionTerminated):
                out["goaway"] = [ev.error_code, ev.last_stream_id]
            if hit is None and until(ev):
                hit = ev
        s.sendall(c.data_to_send())
        if hit is not None:
            return hit


bodies, status = {}, {}


def idle(secs):
    """Idle as a real client is: what arrives is read and answered (SETTINGS acknowledged)."""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            raise SystemExit("closed while idle %r" % out)
        c.receive_data(d)
        s.sendall(c.data_to_send())
    s.settimeout(10)


def request(sid, path, headers=(), body=None):
    hs = [(":method", "POST" if body is not None else "GET"), (":path", path),
          (":scheme", "http"), (":authority", "idle.test")] + list(headers)
    c.send_headers(sid, hs, end_stream=body is None)
    s.sendall(c.data_to_send())
    off = 0
    while body is not None and off < len(body):
        n = min(c.local_flow_control_window(sid), c.max_outbound_frame_size, len(body) - off)
        if n == 0:
            pump(lambda ev: isinstance(ev, h2.events.WindowUpdated))
            continue
        c.send_data(sid, body[off:off + n], end_stream=off + n == len(body))
        s.sendall(c.data_to_send())
        off += n
    pump(lambda ev: isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid)
    return status[sid], bodies.get(sid, b"")


st, b = request(1, "/echo/1", [("cookie", "a=1")])
out["steps"].append(["first", st])
idle(pause)
c.ping(b"12345678")
s.sendall(c.data_to_send())
pump(lambda ev: isinstance(ev, h2.events.PingAckReceived))
c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100000})
s.sendall(c.data_to_send())
pump(lambda ev: isinstance(ev, h2.events.SettingsAcknowledged))
out["steps"].append(["ping+settings", "ok"])
idle(pause)
cookies = [("cookie", "c%d=%s" % (i, "v" * 300)) for i in range(8)]
st, b = request(3, "/echo/3", cookies + [("x-big", "y" * 2000)])
got = json.loads(b) if st == "200" else {"headers": [["status", st], ["body", b.decode()[:200]]]}
hd = {}
for k, v in got["headers"]:
    hd.setdefault(k.lower(), []).append(v)
out["steps"].append(["big headers", st, hd.get("cookie"), len(hd.get("x-big", [""])[0])])
idle(pause)
body = bytes((i * 13) % 256 for i in range(200000))
st, b = request(5, "/upload", body=body)
up = json.loads(b)
out["steps"].append(["upload", st, up["bytes"], up["crc32"] == zlib.crc32(body)])
st, b = request(7, "/bytes?n=300000")
out["steps"].append(["download", st, len(b), b == bytes((i * 7) % 251 for i in range(300000))])
idle(pause)
# Again once torn down: the same cookies (an HPACK table would have indexed them).
st, b = request(9, "/echo/9", cookies)
out["steps"].append(["again", st, json.loads(b).get("headers", b.decode()[:300])])
# Idle until the idle timeout: a GOAWAY naming stream 9, then the close.
try:
    while "goaway" not in out:
        pump(lambda ev: isinstance(ev, h2.events.ConnectionTerminated))
except SystemExit:
    pass
print(json.dumps(out))
'''


@unittest.skipUnless(os.path.exists(SYS_PY), "Debian python3")
class Http2IdleTest(dsptest.TestCase):
    def test_torn_down_session_goes_on(self):
        b = self.backend("idleb")
        d = self.dispatcher(services=[svc("web", b)], routes=[route("idle.test", "web")],
                            limits={"idle_timeout_ms": 1600})
        p = subprocess.run([SYS_PY, "-c", SCRIPT, str(d.port), "1.2"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        out = json.loads(p.stdout)
        steps = {s[0]: s[1:] for s in out["steps"]}
        self.assertEqual(steps["first"], ["200"], out)
        self.assertEqual(steps["ping+settings"], ["ok"], out)
        st, cookie, xbig = steps["big headers"]
        self.assertEqual(st, "200", out)
        self.assertEqual(cookie, ["; ".join("c%d=%s" % (i, "v" * 300) for i in range(8))], out)
        self.assertEqual(xbig, 2000, out)
        self.assertEqual(steps["upload"], ["200", 200000, True], out)
        self.assertEqual(steps["download"], ["200", 300000, True], out)
        self.assertEqual(steps["again"][0], "200", out)
        self.assertIn(["cookie", "; ".join("c%d=%s" % (i, "v" * 300) for i in range(8))],
                      steps["again"][1], out)
        self.assertEqual(out.get("goaway"), [0, 9], out)


if __name__ == "__main__":
    unittest.main()
