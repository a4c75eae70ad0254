"""A small HTTP/2 backend for test_h2_backend.py, run under /usr/bin/python3 (Debian python3-h2).

    /usr/bin/python3 h2_server.py PORT [--max-streams N] [--goaway-after N] [--tls CERT KEY]
                                       [--alpn PROTO] [--log FILE]

One thread per connection; each connection numbers itself (x-conn). Paths:
  /echo           the request body back (no content-length unless ?len), x-conn, x-stream,
                  x-body-len, x-body-sha (sha256 hex of the body), x-headers (JSON of the fields)
  /big?n=N        N pattern bytes (content-length unless ?nolen)
  /slow?ms=N      waits N ms, then 200 "slow"
  /rst            RST_STREAM INTERNAL_ERROR instead of an answer
  /early          103 (link: </a.css>; rel=preload), then 200 "after hints"
  /trailers       200 "body" then trailers grpc-status: 0, x-trailer: yes
  /trailers-only  HEADERS with END_STREAM: 200, grpc-status: 5
  /health         200 "ok"
--goaway-after N: after the Nth request of a connection, a GOAWAY goes out covering every stream
begun so far (--goaway-harsh: only up to that Nth one); those are still answered (200 ms later),
later ones are ignored (refused by the GOAWAY); the connection closes once all are answered.
Each request is appended to --log as one JSON line (conn, stream, method, path, headers).
"""

import hashlib
import json
import socket
import ssl
import sys
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

ARGS = sys.argv[1:]
PORT = int(ARGS[0])


def opt(name, default=None, n=1):
    if name in ARGS:
        i = ARGS.index(name)
        return ARGS[i + 1:i + 1 + n] if n > 1 else ARGS[i + 1]
    return default


MAX_STREAMS = int(opt("--max-streams", "100"))
GOAWAY_AFTER = int(opt("--goaway-after", "0"))
HARSH = "--goaway-harsh" in ARGS
TLS = opt("--tls", None, 2)
ALPN = opt("--alpn", "h2")
LOG = opt("--log", None)
log_lock = threading.Lock()
conn_count = [0]


def pattern(n):
    base = bytes(range(256)) * 64
    out = bytearray()
    while len(out) < n:
        out += base[:n - len(out)]
    return bytes(out)


class Conn:
    def __init__(self, sock, num):
        self.sock = sock
        self.num = num
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                        header_encoding="utf-8"))
        self.lock = threading.Lock()
        self.bodies = {}
        self.trailers = {}  # stream -> the request's trailers (logged)
        self.heads = {}
        self.pending = {}  # stream -> [data, end, trailers]
        self.nreq = 0
        self.goaway_last = None  # the last stream a GOAWAY we sent covers
        self.open_ids = set()  # requests begun and not yet answered
        self.closed = False
        self.max_seen = 0  # the highest stream begun
        self.max_done = 0  # the highest stream taken for processing
        self.heads_method = {}

    def flush(self):
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self):
        """Send what the windows allow of each pending body."""
        for sid in list(self.pending):
            data, trailers = self.pending[sid]
            data = memoryview(data)
            try:
                while data:
                    w = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
                    if w <= 0:
                        break
                    self.h2.send_data(sid, data[:w].tobytes())
                    data = data[w:]
                if not data:
                    if trailers:
                        self.h2.send_headers(sid, trailers, end_stream=True)
                    else:
                        self.h2.end_stream(sid)
                    del self.pending[sid]
                else:
                    self.pending[sid] = [data, trailers]
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                self.pending.pop(sid, None)
        self.flush()

    def respond(self, sid, status, body=b"", headers=(), length=True, trailers=None):
        with self.lock:
            hdrs = [(":status", str(status)), ("x-conn", str(self.num)), ("x-stream", str(sid))]
            hdrs += list(headers)
            if length:
                hdrs.append(("content-length", str(len(body))))
            try:
                self.h2.send_headers(sid, hdrs)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                return
            if self.heads_method.pop(sid, "GET") == "HEAD":
                self.h2.end_stream(sid)
                self.flush()
                return
            self.pending[sid] = [body, trailers]
            self.pump()

    def handle(self, sid):
        head = dict(self.heads.pop(sid))
        self.heads_method[sid] = head.get(":method")
        body = bytes(self.bodies.pop(sid, b""))
        path = head.get(":path", "/")
        if LOG:
            with log_lock, open(LOG, "a") as f:
                f.write(json.dumps({"conn": self.num, "stream": sid, "method": head.get(":method"),
                                    "path": path, "headers": head, "body_len": len(body),
                                    "trailers": self.trailers.pop(sid, [])}) + "\n")
        base, _, query = path.partition("?")
        q = dict(kv.split("=", 1) for kv in query.split("&") if "=" in kv)
        if base == "/echo":
            info = [("x-body-len", str(len(body))),
                    ("x-body-sha", hashlib.sha256(body).hexdigest()),
                    ("x-headers", json.dumps(head))]
            self.respond(sid, 200, body, info, length="len" in query)
        elif base == "/big":
            n = int(q.get("n", "1000"))
            self.respond(sid, 200, pattern(n), (), length="nolen" not in query)
        elif base == "/slow":
            time.sleep(int(q.get("ms", "200")) / 1000.0)
            self.respond(sid, 200, b"slow")
        elif base == "/rst":
            with self.lock:
                self.h2.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self.flush()
        elif base == "/early":
            with self.lock:
                self.h2.send_headers(sid, [(":status", "103"), ("link", "</a.css>; rel=preload")])
                self.flush()
            self.respond(sid, 200, b"after hints")
        elif base == "/trailers":
            self.respond(sid, 200, b"body", [("content-type", "application/grpc")], length=False,
                         trailers=[("grpc-status", "0"), ("x-trailer", "yes")])
        elif base == "/trailers-only":
            with self.lock:
                self.h2.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                           ("grpc-status", "5"), ("x-conn", str(self.num))],
                                     end_stream=True)
                self.flush()
        else:
            self.respond(sid, 200, b"ok")

    def handle_then_count(self, sid, delay):
        time.sleep(delay)
        self.handle(sid)
        with self.lock:
            self.open_ids.discard(sid)
            self.maybe_close()

    def maybe_close(self):
        """After a GOAWAY, once everything it covers is answered and sent, the connection ends
        (FIN; what the client still sends is read, so that no reset eats the last frames)."""
        if self.goaway_last is None or self.pending or self.closed or \
                [i for i in self.open_ids if i <= self.goaway_last]:
            return
        self.closed = True
        self.flush()
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def request_done(self, sid):
        if self.goaway_last is not None and sid > self.goaway_last:
            return  # not covered by our GOAWAY: ignored (the client retries it)
        self.nreq += 1
        self.max_done = max(self.max_done, sid)
        delay = 0
        with self.lock:
            if GOAWAY_AFTER and self.nreq == GOAWAY_AFTER:
                # A graceful GOAWAY (h2's close_connection() would forbid answering the streams
                # it covers): written by hand, the state machine does not know.
                # Graceful: every stream begun is covered; harsh: only up to this one (those
                # begun after it are refused, even mid-upload).
                # (never below a stream already taken: it was processed)
                self.goaway_last = max(self.max_done, sid) if HARSH else max(self.max_seen, sid)
                self.flush()
                self.sock.sendall(hyperframe.frame.GoAwayFrame(
                    0, last_stream_id=self.goaway_last).serialize())
                delay = 0.2
        threading.Thread(target=self.handle_then_count, args=(sid, delay), daemon=True).start()

    def run(self):
        with self.lock:
            self.h2.initiate_connection()
            self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
            self.flush()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            ready = []
            with self.lock:
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    self.flush()
                    return
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived):
                        self.heads[ev.stream_id] = ev.headers
                        self.max_seen = max(self.max_seen, ev.stream_id)
                        if self.goaway_last is None or ev.stream_id <= self.goaway_last:
                            self.open_ids.add(ev.stream_id)
                        self.bodies[ev.stream_id] = bytearray()
                    elif isinstance(ev, h2.events.DataReceived):
                        if ev.stream_id in self.bodies:
                            self.bodies[ev.stream_id] += ev.data
                        self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.TrailersReceived):
                        self.trailers[ev.stream_id] = ev.headers
                    elif isinstance(ev, h2.events.StreamEnded):
                        if ev.stream_id in self.heads:
                            ready.append(ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        self.open_ids.discard(ev.stream_id)
                        self.pending.pop(ev.stream_id, None)
                        self.heads.pop(ev.stream_id, None)
                self.flush()
                self.pump()
                self.maybe_close()
            for sid in ready:
                self.request_done(sid)


def serve(sock, num):
    try:
        Conn(sock, num).run()
    finally:
        try:
            sock.close()
        except OSError:
            pass


def main():
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", PORT))
    ls.listen(256)
    ctx = None
    if TLS:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(TLS[0], TLS[1])
        ctx.set_alpn_protocols([ALPN])
    print("ready", flush=True)
    while True:
        s, _ = ls.accept()
        conn_count[0] += 1
        if ctx is not None:
            try:
                s = ctx.wrap_socket(s, server_side=True)
            except (ssl.SSLError, OSError):
                s.close()
                continue
        threading.Thread(target=serve, args=(s, conn_count[0]), daemon=True).start()


if __name__ == "__main__":
    main()
