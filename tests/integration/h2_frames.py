"""A frame-level HTTP/2 client (python3-h2) for test_grpc.py, run under /usr/bin/python3.

    h2_frames.py PORT SPEC_JSON

SPEC_JSON: {"streams": [{"headers": [[name, value], ...], "data": ["text", ...],
                         "trailers": [[name, value], ...] or null}], "timeout": seconds}
Each stream is opened in order: HEADERS (END_STREAM when there is neither data nor trailers),
its DATA frames, then its trailers (HEADERS with END_STREAM) or END_STREAM on the last DATA.
Prints one JSON object: for each stream its events in order, each [kind, value, seconds since
the stream was opened]: "info" (a 1xx's headers), "response" (final headers), "data" (text),
"trailers", "reset" (error code), "end".
"""

import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events


def pairs(hs):
    return [[k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v]
            for k, v in hs]


def main():
    port = int(sys.argv[1])
    spec = json.loads(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port))
    cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                    normalize_outbound_headers=False,
                                    validate_inbound_headers=False)
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    out = {}
    started = {}
    open_ids = []
    for st in spec["streams"]:
        sid = c.get_next_available_stream_id()
        data, trailers = st.get("data") or [], st.get("trailers")
        c.send_headers(sid, [tuple(h) for h in st["headers"]],
                       end_stream=not data and not trailers)
        for i, d in enumerate(data):
            c.send_data(sid, d.encode(), end_stream=(i == len(data) - 1 and not trailers))
        if trailers:
            c.send_headers(sid, [tuple(h) for h in trailers], end_stream=True)
        out[sid] = []
        started[sid] = time.monotonic()
        open_ids.append(sid)
    s.sendall(c.data_to_send())
    deadline = time.monotonic() + spec.get("timeout", 10)
    s.settimeout(0.2)
    done = set()
    while len(done) < len(open_ids) and time.monotonic() < deadline:
        try:
            buf = s.recv(65536)
        except socket.timeout:
            continue
        if not buf:
            break
        for ev in c.receive_data(buf):
            sid = getattr(ev, "stream_id", None)
            t = time.monotonic() - started.get(sid, time.monotonic())
            if isinstance(ev, h2.events.InformationalResponseReceived):
                out[sid].append(["info", pairs(ev.headers), t])
            elif isinstance(ev, h2.events.ResponseReceived):
                out[sid].append(["response", pairs(ev.headers), t])
            elif isinstance(ev, h2.events.DataReceived):
                out[sid].append(["data", ev.data.decode("latin-1"), t])
                c.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                out[sid].append(["trailers", pairs(ev.headers), t])
            elif isinstance(ev, h2.events.StreamReset):
                out[sid].append(["reset", int(ev.error_code), t])
                done.add(sid)
            elif isinstance(ev, h2.events.StreamEnded):
                out[sid].append(["end", None, t])
                done.add(sid)
        s.sendall(c.data_to_send())
    s.close()
    print(json.dumps({str(k): v for k, v in out.items()}), flush=True)


if __name__ == "__main__":
    main()
