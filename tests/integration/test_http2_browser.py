"""A real browser through a TLS listener: headless Chromium (Debian `chromium`) loads a page with
many assets (images and scripts) from a tiny HTTP/1.1 backend, negotiates h2 by ALPN with the
self-signed certificate, and every asset shows in the access log as "proto":"HTTP/2.0".
Skipped when chromium is not installed.
"""

import http.server
import json
import os
import shutil
import subprocess
import tempfile
import threading
import unittest

import dsptest
from dsptest import make_config, route, svc

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
N_IMG, N_JS = 40, 12
# A 1x1 transparent GIF.
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c000000000100010000"
                    "02024401003b")


def page():
    imgs = "".join('<img src="/img/%d.gif" width="1" height="1">' % i for i in range(N_IMG))
    js = "".join('<script src="/js/%d.js"></script>' % i for i in range(N_JS))
    return ("<!doctype html><html><head><title>h2</title>%s</head><body>%s<script>"
            "window.addEventListener('load', function () {"
            " var ok = 0, im = document.images;"
            " for (var i = 0; i < im.length; i++) if (im[i].complete && im[i].naturalWidth) ok++;"
            " document.body.setAttribute('data-result', ok + '/' + (window.njs || 0));"
            "});</script></body></html>" % (js, imgs)).encode()


class AssetServer(http.server.ThreadingHTTPServer):
    # A browser's burst of streams becomes a burst of backend connections: socketserver's
    # default backlog of 5 drops SYNs under it, which ends as connect timeouts.
    request_queue_size = 256
    daemon_threads = True


class Assets(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive toward the dispatcher

    def do_GET(self):
        if self.path.startswith("/img/"):
            body, ctype = GIF, "image/gif"
        elif self.path.startswith("/js/"):
            body, ctype = b"window.njs = (window.njs || 0) + 1;\n", "application/javascript"
        elif self.path == "/":
            body, ctype = page(), "text/html"
        else:
            body, ctype = b"no\n", "text/plain"
            self.send_response(404)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@unittest.skipUnless(CHROMIUM, "chromium not installed")
class Http2BrowserTest(dsptest.TestCase):
    def test_chromium_loads_page_over_h2(self):
        srv = AssetServer(("127.0.0.1", 0), Assets)
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        backend = "127.0.0.1:%d" % srv.server_address[1]

        d = dsptest.Dispatcher(workers=1)
        tls_port = dsptest.free_port()
        text = make_config(d.port, d.tmp, [svc("web", backend)], [route("*", "web")], workers=1)
        text = text.replace(
            'listeners = ( { address = "127.0.0.1:%d"; } );' % d.port,
            'listeners = ( { address = "127.0.0.1:%d"; }, { address = "127.0.0.1:%d"; tls = true; } );\n'
            'tls = { self_signed_cn = "localhost"; };' % (d.port, tls_port))
        d.write_config(text)
        self.start_dispatcher(d)

        profile = tempfile.mkdtemp(prefix="dsp-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
               "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-background-networking",
               "--ignore-certificate-errors", "--user-data-dir=" + profile,
               "--virtual-time-budget=20000", "--dump-dom",
               "https://127.0.0.1:%d/" % tls_port]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.communicate()
            self.fail("chromium did not finish within 120 s")
        dom = out.decode("utf-8", "replace")
        self.assertIn('data-result="%d/%d"' % (N_IMG, N_JS), dom,
                      "page not fully loaded:\n%s\n%s" % (dom[-500:], err.decode()[-1500:]))

        def entries():
            try:
                with open(os.path.join(d.tmp, "access.log")) as f:
                    return [json.loads(l) for l in f if l.strip()]
            except OSError:
                return []

        want = 1 + N_IMG + N_JS
        dsptest.wait_until(lambda: len([e for e in entries() if e.get("path", "").startswith(
            ("/img/", "/js/")) or e.get("path") == "/"]) >= want, 10,
            "%d page and asset requests in the access log" % want)
        assets = [e for e in entries()
                  if e.get("path", "").startswith(("/img/", "/js/")) or e.get("path") == "/"]
        protos = sorted(set(e.get("proto") for e in assets))
        self.assertEqual(protos, ["HTTP/2.0"], protos)
        self.assertEqual(sorted(set(e.get("status") for e in assets)), [200])


if __name__ == "__main__":
    unittest.main()
