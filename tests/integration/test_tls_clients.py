"""Client certificates on TLS listeners (client_ca, client_verify = optional | required, the
verified subject passed upstream in X-Client-Cert-Subject, never taken from the client) and
stapled OCSP responses read from a file (a certificate entry's ocsp).

Certificates come from the openssl CLI at test time: a test CA (make_ca) issues server and
client certificates (issue); test_backends_more.py uses the same helpers for mTLS to backends."""

import os
import subprocess

# ---- certificates -------------------------------------------------------------------------------


def _run(cmd, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30, **kw)
    if p.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), p.stdout.decode(errors="replace")))
    return p.stdout.decode(errors="replace")


def make_ca(d, name):
    """A self-signed P-256 CA: (<d>/<name>.pem, <d>/<name>.key)."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=%s" % name,
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return cert, key


def issue(d, ca, name, subj, san=None, usage="serverAuth", ocsp_url=None):
    """A P-256 certificate for <subj> ("/CN=x/O=y") signed by <ca> (cert, key):
    (<d>/<name>.pem, <d>/<name>.key)."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    csr, ext = os.path.join(d, name + ".csr"), os.path.join(d, name + ".ext")
    _run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-keyout", key, "-out", csr, "-subj", subj])
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=%s\n" % usage)
        if san:
            f.write("subjectAltName=%s\n" % san)
        if ocsp_url:
            f.write("authorityInfoAccess=OCSP;URI:%s\n" % ocsp_url)
    _run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
          "-CAcreateserial", "-out", cert, "-days", "30", "-sha256", "-extfile", ext])
    return cert, key


# ---- client certificates on TLS listeners -------------------------------------------------------

import json  # noqa: E402

import dsptest  # noqa: E402
from dsptest import MASTER, route, svc  # noqa: E402


def curl(port, path="/echo", headers=(), cert=None, host="app.do", extra=()):
    """curl -k to <host> pinned to 127.0.0.1:<port>: (exit code, status, JSON body or None)."""
    cmd = ["curl", "-sk", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "--resolve",
           "%s:%d:127.0.0.1" % (host, port), "https://%s:%d%s" % (host, port, path)] + list(extra)
    for h in headers:
        cmd += ["-H", "%s: %s" % h]
    if cert:
        cmd += ["--cert", cert[0], "--key", cert[1]]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    out = p.stdout.decode("utf-8", "replace")
    body, _, code = out.rpartition("\n")
    try:
        j = json.loads(body)
    except ValueError:
        j = None
    return p.returncode, int(code or 0), j


def hvals(j, name):
    return [v for k, v in j["headers"] if k.lower() == name.lower()]


def s_client(port, args=(), stdin=b""):
    p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port,
                        "-servername", "app.do"] + list(args),
                       input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=20)
    return p.stdout.decode("utf-8", "replace")


class ClientCertBase(dsptest.TestCase):
    """Three listeners: client_verify required (d.port), optional, and a TLS one without
    client_ca; a plain one."""

    def setUp(self):
        self.d = dsptest.Dispatcher()
        t = self.d.tmp
        self.ca = make_ca(t, "clients-ca")
        self.server_ca = make_ca(t, "server-ca")
        self.server = issue(t, self.server_ca, "server", "/CN=app.do", san="DNS:app.do")
        self.alice = issue(t, self.ca, "alice", "/CN=alice/O=Edge, Inc.", usage="clientAuth")
        self.other_ca = make_ca(t, "other-ca")
        self.mallory = issue(t, self.other_ca, "mallory", "/CN=alice/O=Edge, Inc.",
                             usage="clientAuth")
        self.optional, self.notls_ca, self.plain = (dsptest.free_port(), dsptest.free_port(),
                                                    dsptest.free_port())

    def config(self, required_extra="", optional_extra=""):
        be = self.backend("app")
        text = dsptest.make_config(self.d.port, self.d.tmp, [svc("app", be)],
                                   [route("*", "app")])
        old = 'listeners = ( { address = "127.0.0.1:%d"; } );' % self.d.port
        assert old in text
        listeners = (
            'listeners = (\n'
            '  { address = "127.0.0.1:%d"; tls = true; client_ca = "%s";%s },\n'
            '  { address = "127.0.0.1:%d"; tls = true; client_ca = "%s"; '
            'client_verify = "optional";%s },\n'
            '  { address = "127.0.0.1:%d"; tls = true; },\n'
            '  { address = "127.0.0.1:%d"; } );\n'
            'tls = { certificates = ( { cert = "%s"; key = "%s"; } ); };'
            % (self.d.port, self.ca[0], required_extra, self.optional, self.ca[0],
               optional_extra, self.notls_ca, self.plain, self.server[0], self.server[1]))
        return text.replace(old, listeners)

    def start(self):
        self.d.write_config(self.config())
        self.start_dispatcher(self.d)



class ClientCertTest(ClientCertBase):
    def test_required(self):
        self.start()
        forged = [("X-Client-Cert-Subject", "CN=admin")]
        rc, status, _ = curl(self.d.port)
        self.assertNotEqual(rc, 0, "handshake without a certificate must fail")
        self.assertEqual(status, 0)
        rc, status, _ = curl(self.d.port, cert=self.mallory)
        self.assertNotEqual(rc, 0, "a certificate from another CA must fail")
        rc, status, j = curl(self.d.port, headers=forged, cert=self.alice)
        self.assertEqual((rc, status), (0, 200))
        self.assertEqual(hvals(j, "X-Client-Cert-Subject"), ["O=Edge\\, Inc.,CN=alice"])
        # The certificate request names the CA (s_client lists it).
        out = s_client(self.d.port, ["-cert", self.alice[0], "-key", self.alice[1]])
        self.assertIn("Acceptable client certificate CA names", out)
        self.assertIn("CN = clients-ca", out)

    def test_optional_and_forged_header_stripped(self):
        self.start()
        forged = [("X-Client-Cert-Subject", "CN=admin")]
        rc, status, j = curl(self.optional, headers=forged)
        self.assertEqual((rc, status), (0, 200))
        self.assertEqual(hvals(j, "X-Client-Cert-Subject"), [])
        rc, status, j = curl(self.optional, headers=forged, cert=self.alice)
        self.assertEqual((rc, status), (0, 200))
        self.assertEqual(hvals(j, "X-Client-Cert-Subject"), ["O=Edge\\, Inc.,CN=alice"])
        # The same over HTTP/2 (ALPN h2), with the header in lower case as h2 sends it.
        v = subprocess.run(["curl", "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version}",
                            "--resolve", "app.do:%d:127.0.0.1" % self.optional,
                            "https://app.do:%d/echo" % self.optional],
                           stdout=subprocess.PIPE, timeout=20).stdout.decode()
        self.assertEqual(v, "2", "HTTP/2 not negotiated")
        for cert, want in ((None, []), (self.alice, ["O=Edge\\, Inc.,CN=alice"])):
            rc, status, j = curl(self.optional, headers=forged, cert=cert, extra=["--http2"])
            self.assertEqual((rc, status), (0, 200))
            self.assertEqual(hvals(j, "X-Client-Cert-Subject"), want)
        # A presented certificate must verify, even where one is optional.
        rc, _, _ = curl(self.optional, cert=self.mallory)
        self.assertNotEqual(rc, 0)
        # No client_ca: a client certificate is not asked for, and the header never passes.
        rc, status, j = curl(self.notls_ca, headers=forged, cert=self.alice)
        self.assertEqual((rc, status), (0, 200))
        self.assertEqual(hvals(j, "X-Client-Cert-Subject"), [])
        r = dsptest.request(self.plain, "/echo", host="app.do",
                            headers=forged + [("x-client-cert-subject", "CN=root")])
        self.assertEqual(r.status, 200)
        self.assertEqual(hvals(r.json(), "X-Client-Cert-Subject"), [])

    def test_session_from_another_listener_not_resumed(self):
        self.start()
        sess = os.path.join(self.d.tmp, "sess.pem")
        req = b"GET /echo HTTP/1.1\r\nHost: app.do\r\nConnection: close\r\n\r\n"
        out = s_client(self.notls_ca, ["-sess_out", sess, "-ign_eof"], req)
        self.assertIn("HTTP/1.1 200", out)
        self.assertTrue(os.path.getsize(sess) > 0)
        # The session resumes on the listener it came from.
        out = s_client(self.notls_ca, ["-sess_in", sess, "-ign_eof"], req)
        self.assertIn("Reused,", out)
        # Offered to the required listener without a certificate: a full handshake, which
        # fails for want of a certificate, never a resumption that would skip the check.
        out = s_client(self.d.port, ["-sess_in", sess, "-ign_eof"], req)
        self.assertNotIn("Reused,", out)
        self.assertNotIn("HTTP/1.1 200", out)

    def test_bad_settings_refused_with_file_line(self):
        missing = os.path.join(self.d.tmp, "none.pem")
        good = self.config()
        cases = [
            (good.replace('client_verify = "optional";', 'client_verify = "maybe";'),
             'client_verify = "maybe"', 'must be "optional" or "required"'),
            (good.replace('client_ca = "%s"; client_verify' % self.ca[0],
                          'client_ca = "%s"; client_verify' % missing),
             'client_verify = "optional"', "none.pem"),
            (good.replace('{ address = "127.0.0.1:%d"; } );' % self.plain,
                          '{ address = "127.0.0.1:%d"; client_ca = "%s"; } );'
                          % (self.plain, self.ca[0])),
             "127.0.0.1:%d" % self.plain, "applies to TLS listeners only"),
            (good.replace('{ address = "127.0.0.1:%d"; tls = true; }' % self.notls_ca,
                          '{ address = "127.0.0.1:%d"; tls = true; client_verify = "required"; }'
                          % self.notls_ca),
             "127.0.0.1:%d" % self.notls_ca, "client_verify needs"),
        ]
        for text, needle, msg in cases:
            self.d.write_config(text)
            line = [i for i, l in enumerate(text.split("\n"), 1) if needle in l][0]
            p = subprocess.run([MASTER, "-t", "-c", self.d.conf], capture_output=True,
                               timeout=20, cwd=self.d.tmp)
            err = p.stderr.decode(errors="replace")
            self.assertEqual(p.returncode, 1, (needle, err))
            self.assertIn("%s:%d: " % (self.d.conf, line), err, needle)
            self.assertIn(msg, err, needle)


# ---- OCSP stapling from a file -----------------------------------------------------------------

def ocsp_response(d, ca, cert, name, revoked=False):
    """A real OCSP response for <cert> signed by <ca>, from `openssl ocsp` answering against
    an index naming the certificate (good, or revoked): <d>/<name>.der."""
    serial = _run(["openssl", "x509", "-noout", "-serial", "-in", cert]).strip().split("=")[1]
    subj = _run(["openssl", "x509", "-noout", "-subject", "-nameopt", "compat", "-in",
                 cert]).strip().partition("=")[2].strip()
    index = os.path.join(d, name + ".index")
    with open(index, "w") as f:
        f.write("%s\t301231235959Z\t%s\t%s\tunknown\t%s\n"
                % ("R" if revoked else "V", "240101000000Z" if revoked else "", serial, subj))
    req, resp = os.path.join(d, name + ".req"), os.path.join(d, name + ".der")
    _run(["openssl", "ocsp", "-issuer", ca[0], "-cert", cert, "-reqout", req, "-no_nonce"])
    _run(["openssl", "ocsp", "-index", index, "-rsigner", ca[0], "-rkey", ca[1], "-CA", ca[0],
          "-reqin", req, "-respout", resp, "-ndays", "7"])
    return resp, serial


class OcspTest(dsptest.TestCase):
    def setUp(self):
        self.d = dsptest.Dispatcher()
        t = self.d.tmp
        self.ca = make_ca(t, "ocsp-ca")
        self.cert = issue(t, self.ca, "app", "/CN=app.do", san="DNS:app.do")
        self.other = issue(t, self.ca, "app2", "/CN=app.do/O=second", san="DNS:app.do")
        self.resp, self.serial = ocsp_response(t, self.ca, self.cert[0], "good")

    def config(self, cert, ocsp):
        be = self.backend("app")
        text = dsptest.make_config(self.d.port, self.d.tmp, [svc("app", be)],
                                   [route("*", "app")])
        old = 'listeners = ( { address = "127.0.0.1:%d"; } );' % self.d.port
        return text.replace(old, (
            'listeners = ( { address = "127.0.0.1:%d"; tls = true; } );\n'
            'tls = { certificates = (\n'
            '  { cert = "%s"; key = "%s";%s }\n'
            '); };' % (self.d.port, cert[0], cert[1],
                       ' ocsp = "%s";' % ocsp if ocsp else "")))

    def stapled(self):
        return s_client(self.d.port, ["-status"])

    def test_stapled_and_reloaded_with_the_certificate(self):
        self.d.write_config(self.config(self.cert, self.resp))
        self.start_dispatcher(self.d)
        out = self.stapled()
        self.assertIn("OCSP Response Status: successful", out)
        self.assertIn("Cert Status: good", out)
        self.assertIn("Serial Number: %s" % self.serial, out)
        certs = dsptest.admin_ask(self.d, "show certs")["certs"]
        self.assertEqual([c["ocsp_stapled"] for c in certs if c["path"] == self.cert[0]], [True])
        self.assertTrue(all(not c["ocsp_stapled"] for c in certs if c["self_signed"]))
        # A client that does not ask gets nothing stapled.
        self.assertNotIn("OCSP Response Status", s_client(self.d.port))
        # Another certificate with its own response: SIGHUP staples the new one.
        resp2, serial2 = ocsp_response(self.d.tmp, self.ca, self.other[0], "good2")
        gen = dsptest.generation(self.d)
        self.d.hup(self.config(self.other, resp2))
        dsptest.wait_until(lambda: dsptest.workers_on_generation(self.d, gen + 1), 10, "reload")
        out = self.stapled()
        self.assertIn("Serial Number: %s" % serial2, out)
        self.assertIn("O = second", out)
        # A response that does not cover the certificate is refused; the served pair stays.
        self.d.hup(self.config(self.other, self.resp))
        dsptest.wait_until(lambda: "not about this certificate" in self.d.log(), 10,
                           "refused reload")
        self.assertEqual(dsptest.generation(self.d), gen + 1)
        self.assertIn("Serial Number: %s" % serial2, self.stapled())
        # Without ocsp: nothing stapled.
        self.d.hup(self.config(self.other, None))
        dsptest.wait_until(lambda: dsptest.workers_on_generation(self.d, gen + 2), 10, "reload")
        self.assertIn("OCSP response: no response sent", self.stapled())

    def test_bad_responses_refused_with_file_line(self):
        garbage = os.path.join(self.d.tmp, "garbage.ocsp")
        with open(garbage, "wb") as f:
            f.write(b"\x30\x03\x0a\x01\x00 trailing junk")
        revoked, _ = ocsp_response(self.d.tmp, self.ca, self.cert[0], "revoked", revoked=True)
        cases = [(garbage, "is not a DER OCSP response"),
                 (os.path.join(self.d.tmp, "missing.ocsp"), "missing.ocsp"),
                 (ocsp_response(self.d.tmp, self.ca, self.other[0], "for-other")[0],
                  "not about this certificate"),
                 (revoked, "says the certificate is revoked")]
        for path, msg in cases:
            text = self.config(self.cert, path)
            self.d.write_config(text)
            line = [i for i, l in enumerate(text.split("\n"), 1) if 'ocsp = "' in l][0]
            p = subprocess.run([MASTER, "-t", "-c", self.d.conf], capture_output=True,
                               timeout=20, cwd=self.d.tmp)
            err = p.stderr.decode(errors="replace")
            self.assertEqual(p.returncode, 1, (path, err))
            self.assertIn("%s:%d: " % (self.d.conf, line), err, path)
            self.assertIn(msg, err, path)


class ClientCertReloadTest(ClientCertBase):
    def test_reload_adds_client_ca(self):
        # Start without client certificates anywhere, then reload: the TLS listener without
        # client_ca gets one, and a new listener with client_ca appears. Neither ever serves a
        # client without a certificate after the reload.
        text = self.config()
        plain_tls = text.replace(' client_ca = "%s";' % self.ca[0], "").replace(
            ' client_verify = "optional";', "")
        self.d.write_config(plain_tls)
        self.start_dispatcher(self.d)
        self.assertEqual(curl(self.notls_ca)[:2], (0, 200))
        gen = dsptest.generation(self.d)
        newport = dsptest.free_port()
        text2 = self.config().replace(
            '{ address = "127.0.0.1:%d"; tls = true; }' % self.notls_ca,
            '{ address = "127.0.0.1:%d"; tls = true; client_ca = "%s"; },\n'
            '  { address = "127.0.0.1:%d"; tls = true; client_ca = "%s"; }'
            % (self.notls_ca, self.ca[0], newport, self.ca[0]))
        self.d.hup(text2)
        dsptest.wait_until(lambda: dsptest.workers_on_generation(self.d, gen + 1), 10, "reload")
        for port in (self.notls_ca, self.d.port):
            rc, _, _ = curl(port)
            self.assertNotEqual(rc, 0, "port %d served without a certificate" % port)
            rc, status, j = curl(port, cert=self.alice)
            self.assertEqual((rc, status), (0, 200))
            self.assertEqual(hvals(j, "X-Client-Cert-Subject"), ["O=Edge\\, Inc.,CN=alice"])
        dsptest.wait_until(lambda: curl(newport, cert=self.alice)[1] == 200, 10,
                           "the new listener serves")
        for _ in range(20):
            self.assertNotEqual(curl(newport)[0], 0, "new listener served without a certificate")
