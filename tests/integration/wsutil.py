"""A minimal RFC 6455 WebSocket echo server and client (stdlib only) for the tunnel tests."""

import base64
import hashlib
import os
import socket
import struct
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        d = sock.recv(n - len(buf))
        if not d:
            raise ConnectionError("closed after %d of %d bytes" % (len(buf), n))
        buf += d
    return buf


def send_frame(sock, opcode, payload, mask):
    head = bytes([0x80 | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
            _xor(payload, key)
        head += key
    sock.sendall(head + payload)


def _xor(data, key):
    k = int.from_bytes(key * 2, "little")
    out = bytearray(data)
    n8 = len(out) // 8 * 8
    mv = memoryview(out)
    arr = mv[:n8].cast("Q")
    for i in range(len(arr)):
        arr[i] ^= k
    for i in range(n8, len(out)):
        out[i] ^= key[i % 4]
    return bytes(out)


def recv_frame(sock):
    b0, b1 = _recv_exact(sock, 2)
    opcode = b0 & 0x0F
    masked = b1 & 0x80
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", _recv_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", _recv_exact(sock, 8))[0]
    key = _recv_exact(sock, 4) if masked else None
    payload = _recv_exact(sock, n)
    if key:
        payload = _xor(payload, key)
    return opcode, payload


class EchoServer:
    """Accepts WebSocket upgrades on 127.0.0.1:<port> and echoes every frame; answers a plain
    request (no Upgrade) with 200 so a non-101 answer can be tested too."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.address = "127.0.0.1:%d" % self.port
        self.closed_by_peer = threading.Event()
        self.conns = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.recv(4096)
                if not d:
                    return
                head += d
            lines = head.split(b"\r\n")
            hdrs = {}
            for l in lines[1:]:
                if b":" in l:
                    k, v = l.split(b":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            if hdrs.get(b"upgrade", b"").lower() != b"websocket":
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
                return
            acc = base64.b64encode(hashlib.sha1(hdrs[b"sec-websocket-key"] + GUID).digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
            while True:
                op, payload = recv_frame(c)
                if op == 8:
                    send_frame(c, 8, payload, False)
                    break
                send_frame(c, op, payload, False)
            # wait for the client side to go away
            while c.recv(4096):
                pass
            self.closed_by_peer.set()
        except (ConnectionError, OSError):
            self.closed_by_peer.set()
        finally:
            c.close()

    def stop(self):
        self._stop = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def client_handshake(sock, host, path="/ws"):
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() +
                 b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        d = sock.recv(1)
        if not d:
            raise ConnectionError("closed during handshake: %r" % head)
        head += d
    status = int(head.split(b" ", 2)[1])
    expect = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return status, head, expect in head
