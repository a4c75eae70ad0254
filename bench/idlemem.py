#!/usr/bin/python3
"""Memory per idle client connection, HTTP/1.1 against HTTP/2 (issue 14's idle-memory target).

Starts dispatcher-master (one worker) in front of dsp-testbackend, opens N connections that each
make one GET (/x) and then stay open and idle, and reports the worker's RSS growth per connection
(/proc/PID/statm, as bench (d) does) and its Private_Dirty growth (/proc/PID/smaps_rollup):

    /usr/bin/python3 bench/idlemem.py [--master bin/dispatcher-master] [--conns 2000]
                                      [--proto h1|h2|both] [--per-conn 1]

HTTP/2 uses prior knowledge on the plain listener (python3-h2 builds the frames). Not part of
`make bench`; short, single-process, loopback only.
"""

import argparse
import os
import shutil
import signal
import select
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PAGE = os.sysconf("SC_PAGE_SIZE")
IP_BIND_ADDRESS_NO_PORT = 24


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, deadline_s=30.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("port %d never opened" % port)


def mem(pid):
    with open("/proc/%d/statm" % pid) as f:
        rss = int(f.read().split()[1]) * PAGE
    dirty = 0
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                dirty = int(line.split()[1]) * 1024
    return rss, dirty


class Sock(socket.socket):
    """A socket that can carry its HTTP/2 connection state."""


def connect(i, port):
    s = Sock(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind(("127.0.0.%d" % (2 + i % 8), 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def h1_one(i, port, k=1):
    s = connect(i, port)
    for _ in range(k):
        h1_req(s, i)
    return s


def h1_req(s, i):
    s.sendall(b"GET /x HTTP/1.1\r\nHost: bench\r\nUser-Agent: idlemem\r\nAccept: */*\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit("h1 connection %d: %r" % (i, head[:60]))
    clen = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            clen = int(line.split(b":")[1])
    while len(body) < clen:
        body += s.recv(65536)


def h2_one(i, port, k=1):
    import h2.config
    import h2.connection
    import h2.events
    s = connect(i, port)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    for sid in range(1, 2 * k, 2):
        h2_req(s, c, sid, i)
    s.h2 = c
    return s


def h2_idle_read(poller, byfd):
    """An idle client still reads and answers what the server sends (as browsers do): the
    SETTINGS that a connection idle for a second gets (HEADER_TABLE_SIZE 0) is acknowledged."""
    for fd, _ in poller.poll(0):
        s = byfd[fd]
        try:
            data = s.recv(65536)
        except OSError:
            continue
        if data:
            s.h2.receive_data(data)
            s.sendall(s.h2.data_to_send())


def h2_req(s, c, sid, i):
    import h2.events
    c.send_headers(sid, [(":method", "GET"), (":path", "/x"), (":scheme", "http"),
                         (":authority", "bench"), ("user-agent", "idlemem"), ("accept", "*/*")],
                   end_stream=True)
    s.sendall(c.data_to_send())
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            raise SystemExit("h2 connection %d closed" % i)
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                done = True
            if isinstance(ev, h2.events.ResponseReceived):
                st = dict(ev.headers).get(b":status")
                if st != b"200":
                    raise SystemExit("h2 connection %d: status %r" % (i, st))
            if isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        s.sendall(c.data_to_send())


def measure(args, proto):
    tmp = tempfile.mkdtemp(prefix="dsp-idlemem-")
    bport, pport = free_port(), free_port()
    conf = os.path.join(tmp, "d.conf")
    with open(conf, "w") as f:
        f.write('workers = 1;\npid_file = "%s/d.pid";\nadmin = { socket = "%s/a.sock"; };\n'
                'log = { error = "%s/error.log"; level = "warn"; };\n'
                'limits = { max_connections = 30000; idle_timeout_ms = 120000; };\n'
                'listeners = ( { address = "127.0.0.1:%d"; } );\n'
                'services = ( { name = "b"; backends = ( { address = "127.0.0.1:%d"; } ); } );\n'
                'routes = ( { host = "*"; service = "b"; } );\n' % (tmp, tmp, tmp, pport, bport))
    be = subprocess.Popen([args.backend, "-l", "127.0.0.1:%d" % bport], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    ms = subprocess.Popen([args.master, "-c", conf], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    socks = []
    poller, byfd = select.poll(), {}
    one = h2_one if proto == "h2" else h1_one
    try:
        wait_port(bport)
        wait_port(pport)
        time.sleep(0.5)
        out = subprocess.run(["pgrep", "-P", str(ms.pid)], capture_output=True, text=True).stdout
        wpid = int(out.split()[0])
        for i in range(200):        # warm up: pools, free lists, the heap's first growth
            one(i, pport).close()
        time.sleep(0.5)
        rss0, dirty0 = mem(wpid)
        for i in range(args.conns):
            socks.append(one(i, pport, args.per_conn))
            if proto == "h2":
                poller.register(socks[-1].fileno(), select.POLLIN)
                byfd[socks[-1].fileno()] = socks[-1]
                if i % 20 == 0:
                    h2_idle_read(poller, byfd)
        end = time.monotonic() + 3.0
        while proto == "h2" and time.monotonic() < end:
            h2_idle_read(poller, byfd)
            time.sleep(0.05)
        time.sleep(3.0 if proto == "h1" else 1.5)     # (the HTTP/2 session goes 0.1 s after the ACK, the heap's pages
        #                    within another second)
        rss1, dirty1 = mem(wpid)
    finally:
        for s in socks:
            s.close()
        os.killpg(ms.pid, signal.SIGTERM)
        os.killpg(be.pid, signal.SIGTERM)
        ms.wait()
        be.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return (rss1 - rss0) / args.conns, (dirty1 - dirty0) / args.conns


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--master", default=os.path.join(ROOT, "bin", "dispatcher-master"))
    ap.add_argument("--backend", default=os.path.join(ROOT, "build", "release", "dsp-testbackend"))
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--per-conn", type=int, default=1, help="requests made on each connection")
    ap.add_argument("--proto", default="both", choices=("h1", "h2", "both"))
    args = ap.parse_args()
    res = {}
    for proto in (("h1", "h2") if args.proto == "both" else (args.proto,)):
        res[proto] = measure(args, proto)
        print("%s: %s idle connections: %.0f bytes RSS, %.0f bytes private dirty per connection"
              % (args.master, proto, res[proto][0], res[proto][1]), flush=True)
    if len(res) == 2:
        print("h2/h1 RSS ratio: %.2f" % (res["h2"][0] / res["h1"][0] if res["h1"][0] else 0))


if __name__ == "__main__":
    sys.exit(main())
