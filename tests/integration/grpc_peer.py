"""A real gRPC server and client (python3-grpcio) for test_grpc.py. Runs under /usr/bin/python3
(Debian's, which has the grpc module); test_grpc.py starts it as a subprocess.

    grpc_peer.py server                  prints "PORT n", serves until stdin closes
    grpc_peer.py client TARGET AUTHORITY CASE [ARG]
                                         runs one call through TARGET (host:port) with the given
                                         :authority, prints one JSON object: code (the gRPC
                                         status name), details, messages, metadata, timings

No protoc: generic handlers on raw bytes, service dsp.Test:
    Echo     unary: b"echo:" + request; request metadata x-in-* comes back as initial metadata
             x-echo-*; x-sleep-ms sleeps first (x-cancelled-file: a file written once the call
             is seen cancelled, so the test knows the backend stream was ended; x-started-file:
             one written as the call begins, after its initial metadata went out)
    Fail     unary: aborts with the status and message named by the request (b"CODE:message"),
             with trailing metadata x-trail-bin (binary) and x-trail
    Count    server streaming: request b"N" -> N messages b"msg-i"; after the first, waits for
             the file named by x-marker (the client writes it once it has message 1) and says
             in the second whether it came ("seen" / "late")
    Sum      client streaming: b"n=<messages> bytes=<total>"
    Chat     bidirectional: b"re:" + each message, at once
"""

import json
import os
import sys
import threading
import time

import grpc

SERVICE = "dsp.Test"


def _echo(request, context):
    md = dict(context.invocation_metadata())
    out = [("x-echo-" + k[5:], v) for k, v in md.items() if k.startswith("x-in-")]
    context.send_initial_metadata(out)
    ms = int(md.get("x-sleep-ms", "0"))
    if md.get("x-started-file"):
        with open(md["x-started-file"], "w") as f:
            f.write("1")
    if ms:
        cancelled_file = md.get("x-cancelled-file")
        end = time.monotonic() + ms / 1000.0
        while time.monotonic() < end and context.is_active():
            time.sleep(0.01)
        if not context.is_active():
            if cancelled_file:
                with open(cancelled_file, "w") as f:
                    f.write("%f" % time.monotonic())
            return b""
    return b"echo:" + request


def _fail(request, context):
    code, _, msg = request.decode().partition(":")
    context.set_trailing_metadata([("x-trail", "t-value"), ("x-trail-bin", b"\x00\x01\xff")])
    context.abort(grpc.StatusCode[code], msg)


def _count(request, context):
    n = int(request.decode())
    marker = dict(context.invocation_metadata()).get("x-marker")
    for i in range(n):
        if i == 1 and marker:
            end = time.monotonic() + 5
            while time.monotonic() < end and not os.path.exists(marker):
                time.sleep(0.005)
            yield b"msg-1 " + (b"seen" if os.path.exists(marker) else b"late")
            continue
        yield b"msg-%d" % i


def _sum(request_iterator, context):
    n = total = 0
    for m in request_iterator:
        n += 1
        total += len(m)
    return b"n=%d bytes=%d" % (n, total)


def _chat(request_iterator, context):
    for m in request_iterator:
        yield b"re:" + m


def serve():
    from concurrent import futures
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail),
        "Count": grpc.unary_stream_rpc_method_handler(_count),
        "Sum": grpc.stream_unary_rpc_method_handler(_sum),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("PORT %d" % port, flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
    server.stop(0)


def _md(md):
    out = {}
    for k, v in (md or ()):
        out[k] = v.hex() if isinstance(v, bytes) else v
    return out


def client(target, authority, case, arg):
    ch = grpc.insecure_channel(target, options=[("grpc.default_authority", authority),
                                                ("grpc.enable_retries", 0)])
    res = {"code": "OK", "details": None, "messages": [], "initial": {}, "trailing": {}}
    t0 = time.monotonic()
    try:
        if case == "echo":
            call = ch.unary_unary("/%s/Echo" % SERVICE)
            md = [("x-in-one", "1"), ("x-in-two", "zwei")]
            body = (arg or "hello").encode()
            resp, c = call.with_call(body, metadata=md, timeout=10)
            res["messages"] = [resp.decode("latin-1")]
            res["initial"] = _md(c.initial_metadata())
            res["trailing"] = _md(c.trailing_metadata())
        elif case == "big":
            call = ch.unary_unary("/%s/Echo" % SERVICE)
            resp = call(b"x" * int(arg), timeout=10)
            res["messages"] = [len(resp)]
        elif case == "sleep":  # ARG: "<sleep ms>:<deadline s>[:cancelled file[:started file]]"
            parts = arg.split(":")
            md = [("x-sleep-ms", parts[0])]
            if len(parts) > 2 and parts[2]:
                md.append(("x-cancelled-file", parts[2]))
            if len(parts) > 3:
                md.append(("x-started-file", parts[3]))
            call = ch.unary_unary("/%s/Echo" % SERVICE)
            resp = call(b"zz", metadata=md, timeout=float(parts[1]))
            res["messages"] = [resp.decode("latin-1")]
        elif case == "fail":
            call = ch.unary_unary("/%s/Fail" % SERVICE)
            try:
                call(arg.encode(), timeout=10)
            except grpc.RpcError as e:
                res["trailing"] = _md(e.trailing_metadata())
                raise
        elif case == "count":  # ARG: marker file
            call = ch.unary_stream("/%s/Count" % SERVICE)
            for m in call(b"3", metadata=[("x-marker", arg)], timeout=10):
                res["messages"].append(m.decode())
                if len(res["messages"]) == 1:
                    with open(arg, "w") as f:
                        f.write("1")
        elif case == "sum":
            call = ch.stream_unary("/%s/Sum" % SERVICE)
            n = int(arg or "50")
            resp = call(iter([b"m" * (i * 100) for i in range(n)]), timeout=10)
            res["messages"] = [resp.decode()]
        elif case == "chat":
            # Each message goes out only after the answer to the previous one came back: a
            # proxy that held messages until the end of a stream would deadlock here.
            q = []
            got = threading.Event()
            lock = threading.Condition()

            def gen():
                for i in range(5):
                    yield b"m%d" % i
                    with lock:
                        if not lock.wait_for(lambda: len(q) > i, timeout=5):
                            return
            call = ch.stream_stream("/%s/Chat" % SERVICE)
            for m in call(gen(), timeout=10):
                with lock:
                    q.append(m.decode())
                    lock.notify_all()
            got.set()
            res["messages"] = q
        elif case == "method":  # ARG: full method path (unary, empty request)
            call = ch.unary_unary(arg)
            res["messages"] = [call(b"", timeout=10).decode("latin-1")]
        else:
            raise SystemExit("unknown case %r" % case)
    except grpc.RpcError as e:
        res["code"] = e.code().name
        res["details"] = e.details()
        if not res["trailing"]:
            res["trailing"] = _md(e.trailing_metadata())
    res["elapsed"] = time.monotonic() - t0
    ch.close()
    print(json.dumps(res), flush=True)


def main():
    if sys.argv[1] == "server":
        serve()
    else:
        client(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "")


if __name__ == "__main__":
    main()
