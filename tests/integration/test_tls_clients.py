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
