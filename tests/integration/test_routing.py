"""Routing: host, path, method, wildcard, priority, default route and the two 404 bodies."""

import json

import dsptest
from dsptest import request, route, svc

ROUTED = ["gateway", "db", "auth", "cache", "queue", "search", "mail", "files",
          "api", "apiv1", "apidb", "app", "prio", "default"]


class RoutingTest(dsptest.TestCase):

    def setUp(self):
        self.b = {name: self.backend(name) for name in ROUTED}
        d = dsptest.Dispatcher()
        values = {name: b.addr for name, b in self.b.items()}
        d.write_config(dsptest.render_fixture("routing.conf", TMP=d.tmp, PORT=d.port, **values))
        self.d = self.start_dispatcher(d)

    def via(self, host, path="/echo", method="GET", body=None):
        r = request(self.d.port, path, host=host, method=method, body=body)
        return r

    def assertRoutedTo(self, host, path, want, method="GET"):
        r = self.via(host, path, method, body=b"x" if method == "POST" else None)
        self.assertEqual(r.status, 200, "%s %s%s: status %d body %r"
                         % (method, host, path, r.status, r.body[:200]))
        self.assertEqual(r.header("X-Backend"), want, "%s %s%s" % (method, host, path))
        if method != "HEAD":
            j = r.json()
            self.assertEqual(j["backend"], want)
            self.assertEqual(j["path"], path, "the request target must reach the backend as is")
        return r

    def test_host_routing_eight_subdomains(self):
        for name in ["gateway", "db", "auth", "cache", "queue", "search", "mail", "files"]:
            self.assertRoutedTo(name + ".do", "/echo/" + name + "?q=1", name)
        # Host is lower-cased; the port and a trailing dot are ignored.
        self.assertRoutedTo("DB.Do", "/echo", "db")
        self.assertRoutedTo("auth.do:8080", "/echo", "auth")
        self.assertRoutedTo("mail.do.", "/echo", "mail")
        self.assertRoutedTo("Files.DO.:1234", "/echo", "files")

    def test_host_from_absolute_form(self):
        with dsptest.Conn(self.d.port) as c:
            c.send(b"GET http://cache.do/echo/abs HTTP/1.1\r\nHost: gateway.do\r\n\r\n")
            r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("X-Backend"), "cache",
                         "the absolute-form authority wins over the Host header")

    def test_path_routing_longest_prefix(self):
        self.assertRoutedTo("api.do", "/api/db/users?id=3", "apidb")
        self.assertRoutedTo("api.do", "/api/db/", "apidb")
        self.assertRoutedTo("api.do", "/api/other", "apiv1")
        self.assertRoutedTo("api.do", "/api/dbx", "apiv1")
        self.assertRoutedTo("api.do", "/other", "api")
        self.assertRoutedTo("api.do", "/", "api")

    def test_methods_filter_falls_through(self):
        self.assertRoutedTo("api.do", "/api/db/x", "apidb", method="GET")
        self.assertRoutedTo("api.do", "/api/db/x", "apidb", method="HEAD")
        # POST is not in the apidb route's methods: the next best match (/api/) takes it.
        self.assertRoutedTo("api.do", "/api/db/x", "apiv1", method="POST")
        self.assertRoutedTo("api.do", "/api/db/x", "apiv1", method="DELETE")

    def test_default_route(self):
        self.assertRoutedTo("unknown.example", "/echo", "default")
        self.assertRoutedTo("gateway.do.evil", "/echo", "default")
        self.assertRoutedTo("127.0.0.1", "/", "default")

    def test_wildcard_host(self):
        self.assertRoutedTo("x.app.example.com", "/echo", "app")
        self.assertRoutedTo("a.b.app.example.com", "/echo", "app")
        self.assertRoutedTo("X.APP.EXAMPLE.COM:443", "/echo", "app")
        # "*.app.example.com" needs a label before the suffix.
        self.assertRoutedTo("app.example.com", "/echo", "default")
        self.assertRoutedTo("xapp.example.com", "/echo", "default")

    def test_priority_beats_specific_host(self):
        self.assertRoutedTo("gateway.do", "/prio/x", "prio")
        self.assertRoutedTo("gateway.do", "/priority", "gateway")

    def test_service_not_deployed(self):
        r = self.via("billing.do", "/invoices")
        j = self.assertJsonError(r, 404, "Service not deployed")
        self.assertIn("message", j)
        self.assertIn("hint", j)
        total = sum(b.stats()["requests"] for b in self.b.values())
        self.assertEqual(total, 0, "no backend may see a request for an undeployed service")


class NoRouteTest(dsptest.TestCase):

    def test_no_route_404_lists_services(self):
        a, b = self.backend("alpha"), self.backend("beta")
        d = self.dispatcher(services=[svc("alpha", a), svc("beta", b)],
                            routes=[route("alpha.do", "alpha"), route("beta.do", "beta"),
                                    route("api.do", "beta", path="/v1/", methods=["GET"])])
        r = request(d.port, "/some/where?x=1", host="nowhere.do")
        j = self.assertJsonError(r, 404, "Service not found")
        self.assertIn("message", j)
        self.assertIn("nowhere.do", j["message"], "message should name HOST/PATH")
        self.assertIsInstance(j.get("available_services"), list, json.dumps(j))
        names = [s if isinstance(s, str) else s.get("name") for s in j["available_services"]]
        self.assertEqual(sorted(names), ["alpha", "beta"])
        self.assertTrue(r.header("X-Request-ID"), "error responses carry X-Request-ID too")
        # A path or method that no route of the host accepts is a 404 as well.
        self.assertJsonError(request(d.port, "/v2/x", host="api.do"), 404, "Service not found")
        self.assertJsonError(request(d.port, "/v1/x", host="api.do", method="POST", body=b"{}"),
                             404, "Service not found")
        self.assertEqual(request(d.port, "/v1/x", host="api.do").header("X-Backend"), "beta")
        self.assertEqual(a.stats()["requests"] + b.stats()["requests"], 1)
