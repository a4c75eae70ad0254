"""TLS termination: certificates picked by SNI (exact, wildcard, default, self-signed localhost),
requests routed over TLS, protocol versions, certificate replacement on SIGHUP without dropping
established connections, session resumption across workers, refused key/cert pairs (reload and
-t) with FILE:LINE, expired certificates, the handshake timeout, PROXY protocol in front of TLS,
bulk transfers, and TLS to backends (verify, CA, SNI, pooled connections).

Certificates are made at test time with the openssl CLI; the TLS backend is a Python ssl server.
"""

import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib

import dsptest
from dsptest import Conn, make_config, route, svc

# ---- certificates -------------------------------------------------------------------------------

CA_CNF = """[ ca ]
default_ca = CA_default
[ CA_default ]
dir = %s
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
default_md = sha256
policy = policy_any
copy_extensions = copy
unique_subject = no
[ policy_any ]
commonName = supplied
"""


def _run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    if p.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), p.stdout.decode(errors="replace")))


def make_cert(d, name, cn, san=None, days=30):
    """<d>/<name>.pem and <d>/<name>.key: self-signed, P-256, subject CN=<cn> (and O=<name>, so
    two certificates for one CN are told apart by their subject too)."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    cmd = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", key, "-out", cert, "-days", str(days),
           "-subj", "/CN=%s/O=%s" % (cn, name)]
    if san:
        cmd += ["-addext", "subjectAltName=" + san]
    _run(cmd)
    return cert, key


def make_expired_cert(d, name, cn):
    """A self-signed certificate that expired in 2020 (openssl ca can set past dates)."""
    cadir = os.path.join(d, "ca-" + name)
    os.mkdir(cadir)
    open(os.path.join(cadir, "index.txt"), "w").close()
    with open(os.path.join(cadir, "serial"), "w") as f:
        f.write("01\n")
    cnf = os.path.join(cadir, "ca.cnf")
    with open(cnf, "w") as f:
        f.write(CA_CNF % cadir)
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    csr = os.path.join(cadir, "req.csr")
    _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=%s" % cn,
          "-addext", "subjectAltName=DNS:%s" % cn])
    _run(["openssl", "ca", "-batch", "-config", cnf, "-selfsign", "-keyfile", key, "-in", csr,
          "-out", cert, "-startdate", "20200101000000Z", "-enddate", "20200201000000Z",
          "-notext"])
    return cert, key


# ---- clients ------------------------------------------------------------------------------------

def client_ctx(**kw):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


class TlsConn(Conn):
    """dsptest.Conn over TLS, with SNI <server_name> (None: no SNI)."""

    def __init__(self, port, server_name, timeout=10, ctx=None, session=None):
        super().__init__(port, timeout)
        self.sock = (ctx or client_ctx()).wrap_socket(self.sock, server_hostname=server_name,
                                                      session=session)

    def fingerprint(self):
        return hashlib.sha256(self.sock.getpeercert(binary_form=True)).hexdigest()


class RecordSock:
    """A TLS client over memory BIOs, so a test decides how records meet TCP segments: several
    whole records in one send, or one record cut across sends. Socket-like enough for Conn."""

    def __init__(self, port, server_name, timeout=10, hold_finished=False, ctx=None):
        """<hold_finished>: keep the client's last handshake flight back, to go out with
        whatever is sent next (as clients that write their request at once do)."""
        self.raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = (ctx or client_ctx()).wrap_bio(self.inc, self.out, server_hostname=server_name)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._pull()
        if not hold_finished:
            self._flush()

    def data_segments_in(self):
        """Data-carrying TCP segments received so far (struct tcp_info, tcpi_data_segs_in)."""
        info = self.raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from("I", info, 152)[0]

    def _flush(self):
        data = self.out.read()
        if data:
            self.raw.sendall(data)

    def _pull(self):
        d = self.raw.recv(1 << 16)
        if not d:
            self.inc.write_eof()
        else:
            self.inc.write(d)

    def records(self, chunks):
        """Each chunk as its own TLS record, all the records' bytes in one byte string."""
        for c in chunks:
            self.obj.write(c)
        return self.out.read()

    def sendall(self, data):
        self.obj.write(data)
        self._flush()

    def recv(self, n):
        while True:
            try:
                return self.obj.read(n)
            except ssl.SSLWantReadError:
                self._pull()
            except ssl.SSLEOFError:
                return b""

    def settimeout(self, t):
        self.raw.settimeout(t)

    def close(self):
        self.raw.close()


def fingerprint_of(path):
    with open(path) as f:
        der = ssl.PEM_cert_to_DER_cert(f.read())
    return hashlib.sha256(der).hexdigest()


def s_client(port, servername=None, args=(), linger=0.3):
    """Run openssl s_client; stdin stays open for <linger> s (so a TLS 1.3 ticket can arrive).
    Returns its output."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port]
    cmd += ["-servername", servername] if servername else ["-noservername"]
    cmd += list(args)
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    time.sleep(linger)
    try:
        out, _ = p.communicate(b"", timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out.decode("utf-8", "replace")


def subject_of(out):
    m = re.search(r"^subject=(.*)$", out, re.M)
    return m.group(1).strip() if m else None


def cn_of(out):
    s = subject_of(out) or ""
    m = re.search(r"CN\s*=\s*([^,/]+)", s)
    return m.group(1).strip() if m else None


def handshake_ok(out):
    return re.search(r"^(New|Reused), TLSv1\.[0-3], Cipher is (?!\(NONE\))", out, re.M) is not None


def curl(port, host, path, extra=()):
    """curl -k over TLS to <host> pinned to 127.0.0.1:<port>; returns (status, headers, body)."""
    cmd = ["curl", "-sk", "--max-time", "10", "-D", "-", "--resolve",
           "%s:%d:127.0.0.1" % (host, port), "https://%s:%d%s" % (host, port, path)] + list(extra)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    raw = p.stdout.decode("utf-8", "replace")
    head, _, body = raw.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    hdrs = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def server_pid_of(sock, server_port, pids):
    """Which of <pids> holds the server side of client socket <sock>."""
    cport = sock.getsockname()[1]
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            lport = int(cols[1].rsplit(":", 1)[1], 16)
            rport = int(cols[2].rsplit(":", 1)[1], 16)
            if lport == server_port and rport == cport:
                inodes.add(cols[9])
    for p in pids:
        if dsptest._holds_socket(p, inodes):
            return p
    return None


# ---- a TLS backend ------------------------------------------------------------------------------

class TlsBackend:
    """An HTTPS/1.1 keep-alive origin (Python ssl). Records the SNI of each handshake and numbers
    its connections; GET answers JSON {"backend", "path", "conn", "headers"}."""

    def __init__(self, name, cert, key):
        self.name = name
        self.snis = []
        self.conns = 0
        self.lock = threading.Lock()
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                with backend.lock:
                    backend.conns += 1
                    self.conn_no = backend.conns

            def do_GET(self):
                body = json.dumps({"backend": backend.name, "path": self.path,
                                   "conn": self.conn_no,
                                   "headers": dict(self.headers.items())}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Backend", backend.name)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.sni_callback = self._on_sni
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.addr = "127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def _on_sni(self, sslsock, name, ctx):
        with self.lock:
            self.snis.append(name)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


# ---- configuration ------------------------------------------------------------------------------

def tls_config(d, tls_port, plain_port, services, routes, certs, workers=2, tls_extra="",
               limits=None, pp=False):
    """make_config() with a TLS listener (d.port, the one wait_ready() probes) and a plain one,
    and a tls block listing <certs> [(cert, key), ...], one entry per line."""
    text = make_config(tls_port, d.tmp, services, routes, workers, limits)
    listeners = ('listeners = ( { address = "127.0.0.1:%d"; tls = true;%s },\n'
                 '              { address = "127.0.0.1:%d"; } );'
                 % (tls_port, " proxy_protocol = true;" if pp else "", plain_port))
    entries = ",\n".join('    { cert = "%s"; key = "%s"; }' % ck for ck in certs)
    tls = ('tls = { self_signed_cn = "localhost";%s\n  certificates = (\n%s\n  ); };'
           % (tls_extra, entries))
    old = 'listeners = ( { address = "127.0.0.1:%d"; } );' % tls_port
    assert old in text
    return text.replace(old, listeners + "\n" + tls)


def line_of(text, needle):
    for i, l in enumerate(text.splitlines(), 1):
        if needle in l:
            return i
    raise AssertionError("%r not in config" % needle)


class TlsTest(dsptest.TestCase):

    def setUp(self):
        self.d = dsptest.Dispatcher()
        self.dir = self.d.tmp
        self.plain = dsptest.free_port()
        self.secure = make_cert(self.dir, "secure", "secure.do", "DNS:secure.do")
        self.wild = make_cert(self.dir, "wild", "*.app.example.com")  # CN only: no SAN
        self.other = make_cert(self.dir, "other", "other.do", "DNS:other.do")

    def start(self, certs=None, workers=2, tls_extra="", limits=None, pp=False, services=None,
              routes=None):
        b1, b2 = self.backend("secure"), self.backend("wild")
        self.services = services or [svc("secure", b1), svc("wild", b2)]
        self.routes = routes or [route("secure.do", "secure"),
                                 route("*.app.example.com", "wild"),
                                 route("localhost", "secure")]
        self.certs = certs if certs is not None else [self.secure, self.wild]
        self.conf_text = tls_config(self.d, self.d.port, self.plain, self.services, self.routes,
                                    self.certs, workers, tls_extra, limits, pp)
        # The admin HTTP endpoint, for /metrics.
        self.admin_port = dsptest.free_port()
        sock = 'admin = { socket = "%s";' % os.path.join(self.d.tmp, "admin.sock")
        assert sock in self.conf_text
        self.conf_text = self.conf_text.replace(
            sock, sock + ' http = "127.0.0.1:%d";' % self.admin_port)
        self.d.workers = workers
        self.d.write_config(self.conf_text)
        self.start_dispatcher(self.d)
        return self.d

    def handshakes(self):
        """dispatcher_tls_handshakes_total by result, from /metrics."""
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = dsptest.read_to_eof(s)
        got = dict(re.findall(r'(?m)^dispatcher_tls_handshakes_total\{result="(\w+)"\} (\d+)$',
                              data.decode()))
        return {k: int(v) for k, v in got.items()}

    # -- SNI and routing -----------------------------------------------------------------------

    def test_sni_picks_certificate(self):
        d = self.start()
        cases = [("secure.do", "secure.do"), ("SECURE.DO", "secure.do"),
                 ("foo.app.example.com", "*.app.example.com"),
                 ("unknown.do", "localhost"),           # no match: the default (self-signed)
                 ("a.b.app.example.com", "localhost"),  # a wildcard covers one label only
                 ("localhost", "localhost"),            # self_signed_cn
                 (None, "localhost")]                   # no SNI at all
        for name, want in cases:
            out = s_client(d.port, name, linger=0.05)
            self.assertTrue(handshake_ok(out), "%s: handshake failed:\n%s" % (name, out[-800:]))
            self.assertEqual(cn_of(out), want, "SNI %s: subject %r" % (name, subject_of(out)))
        # The self-signed certificate is an EC P-256 key and names localhost in its SAN.
        with TlsConn(d.port, "localhost") as c:
            der = c.sock.getpeercert(binary_form=True)
        pem = ssl.DER_cert_to_PEM_cert(der)
        p = subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem.encode(),
                           stdout=subprocess.PIPE, timeout=10)
        text = p.stdout.decode()
        self.assertIn("prime256v1", text)
        self.assertIn("DNS:localhost", text)

    def test_requests_routed_over_tls(self):
        d = self.start()
        st, h, body = curl(d.port, "secure.do", "/echo/x")
        self.assertEqual(st, 200, body)
        self.assertEqual(h.get("x-backend"), "secure")
        headers = dict((k.lower(), v) for k, v in json.loads(body)["headers"])
        self.assertEqual(headers.get("x-forwarded-proto"), "https")
        st, h, body = curl(d.port, "api.app.example.com", "/echo")
        self.assertEqual((st, h.get("x-backend")), (200, "wild"), body)
        st, h, body = curl(d.port, "nothing.do", "/x")
        self.assertEqual(st, 404)
        self.assertEqual(json.loads(body)["error"], "Service not found")
        # ALPN: h2 is preferred when offered (test_http2.py covers HTTP/2 itself); a client
        # that offers only http/1.1 gets it.
        p = subprocess.run(["curl", "-skv", "--http2", "-o", "/dev/null", "--resolve",
                            "secure.do:%d:127.0.0.1" % d.port,
                            "https://secure.do:%d/echo" % d.port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        self.assertIn("ALPN: server accepted h2", p.stderr.decode())
        p = subprocess.run(["curl", "-skv", "--http1.1", "-o", "/dev/null", "--resolve",
                            "secure.do:%d:127.0.0.1" % d.port,
                            "https://secure.do:%d/echo" % d.port],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        self.assertIn("ALPN: server accepted http/1.1", p.stderr.decode())
        # The plain listener next to it still speaks HTTP, with X-Forwarded-Proto http.
        r = dsptest.request(self.plain, "/echo", host="secure.do")
        self.assertEqual(r.status, 200)
        headers = dict((k.lower(), v) for k, v in r.json()["headers"])
        self.assertEqual(headers.get("x-forwarded-proto"), "http")
        # Keep-alive and pipelining over one TLS connection.
        with TlsConn(d.port, "secure.do") as c:
            for i in range(20):
                r = c.request("GET", "/echo/%d" % i, "secure.do")
                self.assertEqual(r.status, 200)
                self.assertFalse(r.closed)
            c.send(dsptest.build_request("GET", "/echo/p1", "secure.do") +
                   dsptest.build_request("GET", "/echo/p2", "secure.do"))
            self.assertEqual(c.read_response().json()["path"], "/echo/p1")
            self.assertEqual(c.read_response().json()["path"], "/echo/p2")

    def test_records_and_segments(self):
        """Many requests, each in its own record, arriving in one TCP segment must all be
        answered (one read may hold them all: the worker must not wait for another edge), and
        a record cut across segments must be waited for."""
        d = self.start()
        rs = RecordSock(d.port, "secure.do")
        c = Conn.__new__(Conn)
        c.sock, c.buf, c.eof = rs, bytearray(), False
        with c:
            reqs = [dsptest.build_request("GET", "/echo/r%d" % i, "secure.do") for i in range(40)]
            rs.raw.sendall(rs.records(reqs))
            for i in range(40):
                r = c.read_response()
                self.assertEqual((r.status, r.json()["path"]), (200, "/echo/r%d" % i))
            # Two requests split across one record boundary and three segments, 100 ms apart.
            blob = rs.records([reqs[0][:7], reqs[0][7:] + reqs[1]])
            for part in (blob[:3], blob[3:len(blob) - 9], blob[len(blob) - 9:]):
                rs.raw.sendall(part)
                time.sleep(0.1)
            self.assertEqual(c.read_response().json()["path"], "/echo/r0")
            self.assertEqual(c.read_response().json()["path"], "/echo/r1")
            # A body in many small records after its head in one record.
            body = os.urandom(5000).hex().encode()
            head = dsptest.build_request("POST", "/echo/body", "secure.do",
                                         [("Content-Length", str(len(body)))])
            rs.raw.sendall(rs.records([head] + [body[i:i + 100] for i in range(0, len(body), 100)]))
            r = c.read_response("POST")
            self.assertEqual(r.status, 200)
            j = r.json()
            self.assertEqual((j["path"], j["body_bytes"], j["body_crc32"]),
                             ("/echo/body", len(body), zlib.crc32(body)))

    def test_ticket_response_and_close_share_a_segment(self):
        """TLS 1.3 with the request sent along with the client's Finished and Connection:
        close: the session ticket, the response and close_notify reach the client in one TCP
        segment after the server's handshake flight, not in three; the ticket still resumes."""
        d = self.start()
        ctx = client_ctx(maximum_version=ssl.TLSVersion.TLSv1_3,
                         minimum_version=ssl.TLSVersion.TLSv1_3)
        for attempt in range(2):
            rs = RecordSock(d.port, "secure.do", hold_finished=True, ctx=ctx)
            rs.sendall(dsptest.build_request("GET", "/echo/seg", "secure.do",
                                             [("Connection", "close")]))
            data = dsptest.read_to_eof(rs)
            self.assertTrue(data.startswith(b"HTTP/1.1 200"), data[:200])
            self.assertIn(b"/echo/seg", data)
            segs = rs.data_segments_in()
            session = rs.obj.session
            rs.close()
            if segs == 2:
                break
        self.assertEqual(segs, 2, "expected the server flight, then ticket + response + "
                         "close_notify in one segment")
        self.assertTrue(session is not None and session.has_ticket, "no ticket received")
        with TlsConn(d.port, "secure.do", ctx=ctx, session=session) as c:
            self.assertTrue(c.sock.session_reused)
            self.assertEqual(c.request("GET", "/echo", "secure.do").status, 200)

    def test_protocol_versions(self):
        d = self.start()
        # SECLEVEL=0 so that this client really offers the old versions: the refusal must be
        # the server's.
        for flag in ("-tls1", "-tls1_1"):
            out = s_client(d.port, "secure.do", [flag, "-cipher", "DEFAULT:@SECLEVEL=0"],
                           linger=0.05)
            self.assertFalse(handshake_ok(out), "%s accepted:\n%s" % (flag, out[-600:]))
            self.assertRegex(out, r"alert protocol version|no protocols available|"
                                  r"unsupported protocol|wrong version")
        for flag, want in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            out = s_client(d.port, "secure.do", [flag], linger=0.05)
            self.assertTrue(handshake_ok(out), "%s refused:\n%s" % (flag, out[-600:]))
            self.assertIn(want, out)
        # TLS 1.2 suites are ECDHE with AEAD; the groups are X25519 and P-256.
        out = s_client(d.port, "secure.do", ["-tls1_2", "-cipher", "AES256-SHA256"], linger=0.05)
        self.assertFalse(handshake_ok(out), "a static-RSA CBC suite was accepted")
        out = s_client(d.port, "secure.do", ["-groups", "P-384"], linger=0.05)
        self.assertFalse(handshake_ok(out), "group P-384 was accepted")
        out = s_client(d.port, "secure.do", ["-groups", "X25519"], linger=0.05)
        self.assertTrue(handshake_ok(out), out[-600:])

    def test_min_version_13(self):
        d = self.start(tls_extra=' min_version = "TLSv1.3";')
        self.assertFalse(handshake_ok(s_client(d.port, "secure.do", ["-tls1_2"], linger=0.05)))
        self.assertTrue(handshake_ok(s_client(d.port, "secure.do", ["-tls1_3"], linger=0.05)))

    # -- reloads -----------------------------------------------------------------------------------

    @dsptest.timeout(60)
    def test_replace_certificate_and_sighup(self):
        d = self.start()
        old_fp = fingerprint_of(self.secure[0])
        ka = TlsConn(d.port, "secure.do")
        self.addCleanup(ka.close)
        self.assertEqual(ka.request("GET", "/echo/1", "secure.do").status, 200)
        self.assertEqual(ka.fingerprint(), old_fp)

        # New key and certificate written over the same files, then SIGHUP.
        tmpd = os.path.join(self.dir, "new")
        os.mkdir(tmpd)
        cert, key = make_cert(tmpd, "secure", "secure.do", "DNS:secure.do")
        os.replace(key, self.secure[1])
        os.replace(cert, self.secure[0])
        new_fp = fingerprint_of(self.secure[0])
        self.assertNotEqual(new_fp, old_fp)
        d.hup()

        def served():
            with TlsConn(d.port, "secure.do") as c:
                return c.fingerprint()
        ok = dsptest.wait_for(lambda: served() == new_fp, 5, 0.05)
        self.assertTrue(ok, "new certificate not served after SIGHUP:\n" + d.log_tail())
        # Every worker serves it (each has its own contexts).
        for _ in range(10):
            self.assertEqual(served(), new_fp)
        # The established connection goes on, still on the old session.
        for i in range(3):
            r = ka.request("GET", "/echo/after/%d" % i, "secure.do")
            self.assertEqual(r.status, 200)
            self.assertFalse(r.closed)
        self.assertEqual(ka.fingerprint(), old_fp)
        self.assertIn("configuration reloaded", d.log())

    @dsptest.timeout(60)
    def test_bad_pair_on_reload_keeps_old_certificate(self):
        d = self.start()
        old_fp = fingerprint_of(self.secure[0])
        bad = tls_config(d, d.port, self.plain, self.services, self.routes,
                         [(self.secure[0], self.other[1]), self.wild])
        bad_line = line_of(bad, self.other[1])
        d.hup(bad)
        pat = "%s:%d: tls.certificates[0]: " % (d.conf, bad_line)
        ok = dsptest.wait_for(lambda: pat in d.log(), 5, 0.05)
        self.assertTrue(ok, "no %r in the log:\n%s" % (pat, d.log_tail()))
        self.assertIn("do not match", d.log())
        self.assertIn("reload failed", d.log())
        for _ in range(4):
            with TlsConn(d.port, "secure.do") as c:
                self.assertEqual(c.fingerprint(), old_fp)
                self.assertEqual(c.request("GET", "/echo", "secure.do").status, 200)

    def test_check_reports_mismatch_with_line(self):
        good = tls_config(self.d, self.d.port, self.plain, [svc("s", "127.0.0.1:1")],
                          [route("*", "s")], [self.secure, self.wild])
        self.d.write_config(good)
        p = subprocess.run([dsptest.MASTER, "-t", "-c", self.d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b": ok", p.stdout)

        bad = tls_config(self.d, self.d.port, self.plain, [svc("s", "127.0.0.1:1")],
                         [route("*", "s")],
                         [self.secure, (self.wild[0], self.other[1]),
                          (os.path.join(self.dir, "missing.pem"), self.other[1])])
        self.d.write_config(bad)
        p = subprocess.run([dsptest.MASTER, "-t", "-c", self.d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, err)
        # The unreadable file is a parse error (reported alone, before certificates load).
        self.assertIn("%s:%d:" % (self.d.conf, line_of(bad, "missing.pem")), err)
        self.assertIn("cannot read", err)

        bad = tls_config(self.d, self.d.port, self.plain, [svc("s", "127.0.0.1:1")],
                         [route("*", "s")], [self.secure, (self.wild[0], self.other[1])])
        self.d.write_config(bad)
        p = subprocess.run([dsptest.MASTER, "-t", "-c", self.d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, err)
        want = "%s:%d: tls.certificates[1]: " % (self.d.conf, line_of(bad, self.other[1]))
        self.assertIn(want, err)
        self.assertIn("do not match", err)
        # Starting with it fails the same way, before binding anything.
        p = subprocess.run([dsptest.MASTER, "-c", self.d.conf], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(p.returncode, 1)
        self.assertIn(want, p.stderr.decode())

    def test_expired_certificate_warns_and_serves(self):
        exp = make_expired_cert(self.dir, "expired", "expired.do")
        d = self.start(certs=[self.secure, self.wild, exp])
        line = line_of(self.conf_text, exp[0])
        self.assertRegex(d.log(), r"\[warn\].*%s:%d: tls.certificates\[2\]: .*expired on 2020"
                         % (re.escape(d.conf), line))
        out = s_client(d.port, "expired.do", linger=0.05)
        self.assertTrue(handshake_ok(out), out[-600:])
        self.assertEqual(cn_of(out), "expired.do")

    # -- resumption --------------------------------------------------------------------------------

    @dsptest.timeout(90)
    def test_resumption_across_workers(self):
        d = self.start(workers=2)
        sess = os.path.join(self.dir, "sess.pem")
        # A TLS 1.3 ticket comes after the handshake: give s_client time to read it (a loaded or
        # sanitizer-built worker can be slow to send it).
        for linger in (0.3, 1.0, 3.0):
            out = s_client(d.port, "secure.do", ["-sess_out", sess], linger=linger)
            self.assertIn("New, TLSv1.3", out)
            if os.path.exists(sess):
                break
        self.assertTrue(os.path.exists(sess), "s_client wrote no session:\n" + out[-600:])
        before = self.handshakes()
        for i in range(12):
            out = s_client(d.port, "secure.do", ["-sess_in", sess], linger=0.1)
            self.assertRegex(out, r"(?m)^Reused, TLSv1\.3", "connection %d not resumed:\n%s"
                             % (i, out[-800:]))
        # The server counted them so (the metric an operator would watch).
        after = self.handshakes()
        self.assertEqual(after["resumed"] - before["resumed"], 12, (before, after))
        self.assertEqual(after["full"], before["full"], (before, after))
        self.assertGreaterEqual(before["full"], 1)
        # A resumed TLS 1.3 connection gets a fresh ticket, and that one resumes too: clients
        # that use each ticket once (wrk, browsers) resume every connection, not every other.
        prev = sess
        for i in range(3):
            nxt = os.path.join(self.dir, "chain%d.pem" % i)
            for linger in (0.3, 1.0, 3.0):
                out = s_client(d.port, "secure.do", ["-sess_in", prev, "-sess_out", nxt],
                               linger=linger)
                self.assertRegex(out, r"(?m)^Reused, TLSv1\.3", "chain %d:\n%s" % (i, out[-800:]))
                if os.path.exists(nxt):
                    break
            self.assertTrue(os.path.exists(nxt), "no new ticket after resumption %d" % i)
            prev = nxt
        # TLS 1.2 tickets too.
        sess12 = os.path.join(self.dir, "sess12.pem")
        s_client(d.port, "secure.do", ["-tls1_2", "-sess_out", sess12], linger=0.3)
        for i in range(4):
            out = s_client(d.port, "secure.do", ["-tls1_2", "-sess_in", sess12], linger=0.05)
            self.assertRegex(out, r"(?m)^Reused, TLSv1\.2", out[-800:])

        # Now prove the spread: resume while holding each connection open, and find which worker
        # accepted it, until both workers have resumed a session the other one issued.
        workers = d.worker_pids()
        self.assertEqual(len(workers), 2)
        ctx = client_ctx()  # Python resumes only within the context that made the session
        with TlsConn(d.port, "secure.do", ctx=ctx) as first:
            self.assertEqual(first.request("GET", "/echo", "secure.do").status, 200)
            issuer = server_pid_of(first.sock, d.port, workers)
            session = first.sock.session
        seen, held = set(), []
        try:
            for i in range(60):
                c = TlsConn(d.port, "secure.do", ctx=ctx, session=session)
                held.append(c)
                self.assertTrue(c.sock.session_reused, "connection %d not resumed" % i)
                self.assertEqual(c.request("GET", "/echo/%d" % i, "secure.do").status, 200)
                seen.add(server_pid_of(c.sock, d.port, workers))
                if len(seen) == 2 and i >= 9:
                    break
        finally:
            for c in held:
                c.close()
        self.assertEqual(seen, set(workers), "resumed connections all landed on one worker")
        self.assertIn(issuer, seen)

    # -- connection handling -------------------------------------------------------------------------

    def test_handshake_timeout_and_garbage(self):
        d = self.start(limits={"header_timeout_ms": 600})
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        t0 = time.monotonic()
        self.assertEqual(s.recv(100), b"")  # silent client: closed, nothing sent in clear
        dt = time.monotonic() - t0
        self.assertTrue(0.4 < dt < 3, "closed after %.2fs" % dt)
        s.close()
        # Plain HTTP on the TLS port: the handshake fails and the connection just closes.
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: secure.do\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        self.assertNotIn(b"HTTP/1.1", data)
        s.close()
        # Both count as failed handshakes.
        self.assertTrue(dsptest.wait_for(lambda: self.handshakes().get("failed", 0) >= 2, 3),
                        self.handshakes())
        # Workers are fine afterwards.
        self.assertEqual(curl(d.port, "secure.do", "/echo")[0], 200)

    @dsptest.timeout(90)
    def test_bulk_transfer_both_ways(self):
        d = self.start()
        n = 48 * dsptest.MIB
        with TlsConn(d.port, "secure.do", timeout=60) as c:
            crc = [0, 0]

            def sink(chunk):
                crc[0] = zlib.crc32(chunk, crc[0])
                crc[1] += len(chunk)
            r = c.request("GET", "/bytes?n=%d" % n, "secure.do", sink=sink)
            self.assertEqual(r.status, 200)
            self.assertEqual(crc[1], n)
            self.assertEqual(crc[0], dsptest.pattern_crc(n))
            up = dsptest.Uploader(32 * dsptest.MIB, chunk_sizes=(1000, 70000, dsptest.MIB))
            c.send(dsptest.build_request("POST", "/upload", "secure.do",
                                         [("Content-Length", str(up.total))]))
            for chunk in up.chunks():
                c.send(chunk)
            r = c.read_response("POST")
            self.assertEqual(r.status, 200, r.body[:200])
            j = r.json()
            self.assertEqual((j["bytes"], j["crc32"]), (up.total, up.crc))
            r = c.request("GET", "/chunked?n=3000000&chunk=777", "secure.do")
            self.assertEqual(len(r.body), 3000000)

    def test_proxy_protocol_then_tls(self):
        d = self.start(pp=True)
        raw = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        raw.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n")
        s = client_ctx().wrap_socket(raw, server_hostname="secure.do")
        c = Conn.__new__(Conn)
        c.sock, c.buf, c.eof = s, bytearray(), False
        with c:
            r = c.request("GET", "/echo", "secure.do")
            self.assertEqual(r.status, 200)
            headers = dict((k.lower(), v) for k, v in r.json()["headers"])
            self.assertEqual(headers.get("x-real-ip"), "203.0.113.7")
            self.assertEqual(headers.get("x-forwarded-proto"), "https")

    # -- TLS to backends ---------------------------------------------------------------------------

    @dsptest.timeout(60)
    def test_backend_tls(self):
        bcert, bkey = make_cert(self.dir, "backend", "backend.internal",
                                "DNS:backend.internal,IP:127.0.0.1")
        tb = TlsBackend("tb", bcert, bkey)
        self.addCleanup(tb.stop)
        services = [
            svc("verified", tb.addr, tls=True, ca=bcert, sni="backend.internal"),
            svc("by-ip", tb.addr, tls=True, ca=bcert),
            svc("unverified", tb.addr, tls=True, verify=False),
            svc("wrong-ca", tb.addr, tls=True, ca=self.other[0], sni="backend.internal"),
            svc("wrong-name", tb.addr, tls=True, ca=bcert, sni="elsewhere.internal"),
        ]
        routes = [route(s["name"] + ".do", s["name"]) for s in services]
        d = self.start(services=services, routes=routes)

        with Conn(self.plain) as c:
            for i in range(5):
                r = c.request("GET", "/v/%d" % i, "verified.do")
                self.assertEqual(r.status, 200, r.body[:300])
                j = r.json()
                self.assertEqual(j["backend"], "tb")
                self.assertEqual(j["path"], "/v/%d" % i)
                self.assertEqual(j["headers"].get("X-Forwarded-Proto"), "http")
        self.assertIn("backend.internal", tb.snis)
        # One keep-alive client, sequential requests: one pooled TLS connection upstream.
        self.assertEqual(tb.conns, 1, "expected the upstream TLS connection to be reused")

        # Over a TLS listener too.
        st, h, body = curl(d.port, "verified.do", "/over-tls")
        self.assertEqual(st, 200, body)

        for name in ("by-ip", "unverified"):
            r = dsptest.request(self.plain, "/x", host=name + ".do")
            self.assertEqual(r.status, 200, "%s: %r" % (name, r.body[:300]))
        for name in ("wrong-ca", "wrong-name"):
            r = dsptest.request(self.plain, "/x", host=name + ".do")
            self.assertJsonError(r, 502, "Bad gateway")
        self.assertIn("certificate verify failed", d.log())

    @dsptest.timeout(60)
    def test_backend_tls_health_checks(self):
        bcert, bkey = make_cert(self.dir, "backend", "backend.internal", "DNS:backend.internal")
        tb = TlsBackend("tb", bcert, bkey)
        self.addCleanup(tb.stop)
        health = {"path": "/health", "interval_ms": 150, "timeout_ms": 1000, "fall": 1,
                  "rise": 1}
        services = [
            svc("checked", tb.addr, tls=True, ca=bcert, sni="backend.internal", health=health),
            svc("bad-ca", tb.addr, tls=True, ca=self.other[0], sni="backend.internal",
                health=health),
        ]
        routes = [route(s["name"] + ".do", s["name"]) for s in services]
        d = self.start(services=services, routes=routes)
        # The master's checks speak TLS too: the good service stays up, the one whose backend
        # fails verification goes down (503) rather than failing every request with a 502.
        ok = dsptest.wait_for(lambda: "backend %s of service bad-ca is down" % tb.addr in d.log(),
                              5, 0.05)
        self.assertTrue(ok, d.log_tail())
        self.assertRegex(d.log(), r"service bad-ca is down: health check /health failed "
                                  r"\(certificate verify failed")
        time.sleep(0.5)
        for _ in range(3):
            r = dsptest.request(self.plain, "/x", host="checked.do")
            self.assertEqual(r.status, 200, r.body[:300])
        self.assertNotIn("service checked is down", d.log())
        r = dsptest.request(self.plain, "/x", host="bad-ca.do")
        self.assertJsonError(r, 503, "Service unavailable")
