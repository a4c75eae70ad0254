"""HTTP/2 connections and the dispatcher's life cycle (worker/wk_h2.c): a stop (SIGTERM, SIGQUIT)
sends GOAWAY, lets the streams in flight finish and starts none after it; a reload (SIGHUP) leaves
HTTP/2 connections alone while new streams follow the new routes; an idle HTTP/2 connection is
closed after limits.idle_timeout_ms with a GOAWAY first.

The client is a small frame-level one (hyperframe + hpack from Debian's python3-h2, run under
/usr/bin/python3) driven line by line over a pipe: unlike h2's state machine it keeps reading
frames after a GOAWAY and can still open a stream then, which is what a racing client does.
"""

import json
import os
import select
import signal
import subprocess
import time
import unittest

import dsptest
from dsptest import make_config, route, svc

SYS_PY = "/usr/bin/python3"

# Commands on stdin, one JSON answer per line on stdout:
#   req SID AUTHORITY PATH   send a GET on stream SID          -> {"ok": true}
#   wait SID SECS            the stream's end (or the time out) -> {"status","body","reset",...}
#   goaway SECS              the first GOAWAY                  -> {"last","code"} or {"timeout"}
#   eof SECS                 the connection's end              -> {"eof": true, "t": seconds}
CLIENT = r'''
import json, socket, sys, threading, time
import hpack, hyperframe.frame as F

sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
enc, dec = hpack.Encoder(), hpack.Decoder()
wlock = threading.Lock()
cond = threading.Condition()
streams, state = {}, {"goaway": None, "eof": None, "t0": time.monotonic()}

def send(fr):
    with wlock:
        sock.sendall(fr.serialize())

sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
send(F.SettingsFrame(0))

def recv_exact(n):
    b = b""
    while len(b) < n:
        c = sock.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b

def reader():
    try:
        while True:
            fr, ln = F.Frame.parse_frame_header(memoryview(recv_exact(9)))
            fr.parse_body(memoryview(recv_exact(ln)))
            with cond:
                st = streams.setdefault(fr.stream_id, {"status": None, "body": 0, "reset": None,
                                                       "end": False}) if fr.stream_id else None
                if isinstance(fr, F.SettingsFrame) and "ACK" not in fr.flags:
                    with wlock:     # (RFC 7541 4.2: the encoder obeys HEADER_TABLE_SIZE)
                        if 1 in fr.settings:
                            enc.header_table_size = fr.settings[1]
                        sock.sendall(F.SettingsFrame(0, flags=["ACK"]).serialize())
                elif isinstance(fr, F.PingFrame) and "ACK" not in fr.flags:
                    send(F.PingFrame(0, data=fr.opaque_data, flags=["ACK"]))
                elif isinstance(fr, F.GoAwayFrame) and state["goaway"] is None:
                    state["goaway"] = {"last": fr.last_stream_id, "code": fr.error_code,
                                       "t": time.monotonic() - state["t0"]}
                elif isinstance(fr, F.HeadersFrame):
                    for k, v in dec.decode(fr.data):
                        if k == ":status":
                            st["status"] = int(v)
                elif isinstance(fr, F.DataFrame):
                    st["body"] += len(fr.data)
                    if fr.flow_controlled_length:
                        send(F.WindowUpdateFrame(0, window_increment=fr.flow_controlled_length))
                        send(F.WindowUpdateFrame(fr.stream_id,
                                                 window_increment=fr.flow_controlled_length))
                elif isinstance(fr, F.RstStreamFrame):
                    st["reset"] = fr.error_code
                if st is not None and ("END_STREAM" in fr.flags or st["reset"] is not None):
                    st["end"] = True
                cond.notify_all()
    except (EOFError, OSError):
        pass
    sock.close()        # as a browser does once the server's side ended
    with cond:
        state["eof"] = time.monotonic() - state["t0"]
        cond.notify_all()

threading.Thread(target=reader, daemon=True).start()

def answer(o):
    sys.stdout.write(json.dumps(o) + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    a = line.split()
    if a[0] == "req":
        sid = int(a[1])
        hdrs = [(":method", "GET"), (":scheme", "http"), (":authority", a[2]), (":path", a[3])]
        try:
            with wlock:
                sock.sendall(F.HeadersFrame(sid, data=enc.encode(hdrs),
                                            flags=["END_HEADERS", "END_STREAM"]).serialize())
            answer({"ok": True})
        except OSError as e:
            answer({"ok": False, "error": str(e)})
    elif a[0] == "wait":
        sid, secs = int(a[1]), float(a[2])
        with cond:
            cond.wait_for(lambda: (streams.get(sid) or {}).get("end") or state["eof"] is not None,
                          secs)
            answer(dict(streams.get(sid) or {"status": None, "body": 0, "reset": None,
                                             "end": False}))
    elif a[0] == "goaway":
        with cond:
            cond.wait_for(lambda: state["goaway"] is not None or state["eof"] is not None,
                          float(a[1]))
            answer(state["goaway"] or {"timeout": True, "eof": state["eof"] is not None})
    elif a[0] == "spam":
        # a connection WINDOW_UPDATE (+1) every 3 ms until the end: there is always client
        # input in flight when the server finishes, as with a browser acknowledging DATA
        # (no PINGs: those count as a flood)
        def spam():
            while state["eof"] is None:
                try:
                    send(F.WindowUpdateFrame(0, window_increment=1))
                except OSError:
                    return
                time.sleep(0.003)
        threading.Thread(target=spam, daemon=True).start()
        answer({"ok": True})
    elif a[0] == "eof":
        with cond:
            cond.wait_for(lambda: state["eof"] is not None, float(a[1]))
            answer({"eof": state["eof"] is not None, "t": state["eof"]})
'''


class H2Client:
    def __init__(self, port):
        self.p = subprocess.Popen([SYS_PY, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  bufsize=1)

    def ask(self, line, timeout=30):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            raise AssertionError("h2 client: no answer to %r" % line)
        out = self.p.stdout.readline()
        if not out:
            raise AssertionError("h2 client died: %s" % self.p.stderr.read())
        return json.loads(out)

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            f.close()


def access_lines(d):
    try:
        with open(os.path.join(d.tmp, "access.log")) as f:
            return [json.loads(l) for l in f if l.strip()]
    except OSError:
        return []


@unittest.skipUnless(os.path.exists(SYS_PY), "Debian python3 (python3-h2)")
class Http2GracefulTest(dsptest.TestCase):
    def start(self, limits=None):
        self.b = self.backend("h2g")
        self.d = self.dispatcher(services=[svc("web", self.b)], routes=[route("h2.test", "web")],
                                 workers=1, limits=limits)
        self.c = H2Client(self.d.port)
        self.addCleanup(self.c.close)

    def stop_with_stream_in_flight(self, sig):
        self.start()
        c = self.c
        # One ordinary exchange first: the connection is HTTP/2 and served.
        c.ask("req 1 h2.test /")
        self.assertEqual(c.ask("wait 1 10")["status"], 200)
        # A slow response in flight, then the stop.
        c.ask("req 3 h2.test /sleep?ms=1500")
        dsptest.wait_until(lambda: self.b.stats()["requests"] >= 2, 5,
                           "the slow request reached the backend")
        t_sig = time.monotonic()
        self.d.proc.send_signal(sig)
        g = c.ask("goaway 5")
        self.assertNotIn("timeout", g, "no GOAWAY after the stop signal")
        self.assertEqual(g["code"], 0)          # NO_ERROR: a graceful one
        self.assertEqual(g["last"], 3)          # the stream in flight is kept
        self.assertLess(time.monotonic() - t_sig, 1.2, "GOAWAY came only when the stream ended")
        # A stream opened after the GOAWAY is never started (ignored or refused).
        c.ask("req 5 h2.test /after-goaway")
        s3 = c.ask("wait 3 10")
        self.assertEqual((s3["status"], s3["reset"], s3["end"]), (200, None, True), s3)
        s5 = c.ask("wait 5 3")
        self.assertIsNone(s5["status"], s5)
        self.assertIn(s5["reset"], (None, 7), s5)  # none, or REFUSED_STREAM
        self.assertTrue(c.ask("eof 10")["eof"], "the connection stays open after its last stream")
        self.d.proc.wait(10)
        self.assertEqual(self.d.proc.returncode, 0)
        paths = [e.get("path", "") for e in access_lines(self.d)]
        self.assertIn("/sleep?ms=1500", paths)
        self.assertFalse([p for p in paths if p.startswith("/after-goaway")], paths)

    def test_sigterm_goaway_lets_streams_finish(self):
        self.stop_with_stream_in_flight(signal.SIGTERM)

    def test_sigquit_goaway_lets_streams_finish(self):
        self.stop_with_stream_in_flight(signal.SIGQUIT)

    def test_last_frames_survive_client_input_at_close(self):
        """The worker must not close (reset) a connection with client frames unread: the final
        DATA frame would be lost on its way."""
        for rnd in range(3):
            self.start()
            c = self.c
            c.ask("req 1 h2.test /sleep?ms=300")
            dsptest.wait_until(lambda: self.b.stats()["requests"] >= 1, 5, "request in flight")
            self.d.proc.send_signal(signal.SIGTERM)
            self.assertNotIn("timeout", c.ask("goaway 5"))
            c.ask("spam")
            r = c.ask("wait 1 10")
            self.assertEqual((r["status"], r["body"] > 0, r["end"]), (200, True, True),
                             "round %d: %s" % (rnd, r))
            self.assertTrue(c.ask("eof 10")["eof"])
            self.d.proc.wait(10)
            self.c.close()
            self.b.stop()

    def test_stop_sends_goaway_to_idle_connection(self):
        self.start()
        c = self.c
        c.ask("req 1 h2.test /")
        self.assertEqual(c.ask("wait 1 10")["status"], 200)
        self.d.proc.send_signal(signal.SIGTERM)
        g = c.ask("goaway 5")
        self.assertNotIn("timeout", g, "an idle HTTP/2 connection was closed without a GOAWAY")
        self.assertEqual((g["code"], g["last"]), (0, 1))
        self.assertTrue(c.ask("eof 5")["eof"])
        self.d.proc.wait(10)
        self.assertEqual(self.d.proc.returncode, 0)

    def test_reload_leaves_http2_connection_alone(self):
        self.start()
        b2 = self.backend("h2g-new")
        c = self.c
        c.ask("req 1 h2.test /")
        r = c.ask("wait 1 10")
        self.assertEqual(r["status"], 200)
        sid = 3
        for i, (name, target) in enumerate([("new", b2), ("old", self.b), ("new", b2)]):
            before = target.stats().get("requests", 0)
            gen = dsptest.generation(self.d)
            self.d.hup(make_config(self.d.port, self.d.tmp,
                                   [svc("web", target), svc("other", self.b)],
                                   [route("h2.test", "web"), route("x%d.test" % i, "other")],
                                   workers=1))
            dsptest.wait_until(lambda: dsptest.generation(self.d) > gen, 10, "reload %d" % i)
            dsptest.wait_until(lambda: dsptest.workers_on_generation(self.d, gen + 1), 10,
                               "worker on the new generation")
            # Also a slow stream spanning the next reload's moment is fine: the same
            # connection, a new stream, the new route.
            c.ask("req %d h2.test /reload-%d" % (sid, i))
            r = c.ask("wait %d 10" % sid)
            self.assertEqual((r["status"], r["reset"]), (200, None), (i, r))
            dsptest.wait_until(lambda: target.stats().get("requests", 0) > before, 5,
                               "reload %d: the stream went to the %s backend" % (i, name))
            sid += 2
        g = c.ask("goaway 0.3")
        self.assertIn("timeout", g, "a reload sent a GOAWAY: %s" % g)
        self.assertFalse(g["eof"], "a reload closed the HTTP/2 connection")
        self.assertEqual(self.d.worker_pids(), self.d.initial_workers)

    def test_idle_timeout_goaway(self):
        self.start(limits={"idle_timeout_ms": 700})
        c = self.c
        c.ask("req 1 h2.test /")
        self.assertEqual(c.ask("wait 1 10")["status"], 200)
        # A stream longer than the idle timeout does not count as idle.
        c.ask("req 3 h2.test /sleep?ms=1200")
        r = c.ask("wait 3 10")
        self.assertEqual((r["status"], r["reset"]), (200, None), r)
        t0 = time.monotonic()
        g = c.ask("goaway 6")
        self.assertNotIn("timeout", g, "no GOAWAY on an idle HTTP/2 connection")
        self.assertEqual((g["code"], g["last"]), (0, 3))
        waited = time.monotonic() - t0
        self.assertGreater(waited, 0.4, "closed before idle_timeout_ms")
        self.assertTrue(c.ask("eof 5")["eof"], "GOAWAY sent but the connection stays open")


if __name__ == "__main__":
    unittest.main()
