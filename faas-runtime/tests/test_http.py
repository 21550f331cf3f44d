"""HTTP/1.1 details over a raw socket: pipelining, HTTP/1.0, Expect, HEAD, malformed
requests. One echo replica serves the whole class."""

import json
import unittest

from tests.support import python_function


class Protocol(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = python_function("echo", "echo.py", ROOST_MAX_BODY="64k")

    @classmethod
    def tearDownClass(cls):
        cls.r.stop()

    def test_pipelined_requests_are_answered_in_order(self):
        with self.r.connect() as c:
            c.send(b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
                   b"POST /2 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
                   b"GET /3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            paths = []
            for _ in range(3):
                status, headers, body = c.read_response()
                self.assertEqual(status, 200)
                paths.append((json.loads(body)["path"], json.loads(body)["body"], headers["connection"]))
            self.assertEqual(paths, [("/1", "", "keep-alive"), ("/2", "abc", "keep-alive"), ("/3", "", "close")])
            self.assertTrue(c.closed_by_server())

    def test_http_1_0_closes_unless_keep_alive_is_asked(self):
        with self.r.connect() as c:
            c.send(b"GET / HTTP/1.0\r\n\r\n")
            self.assertEqual(c.read_response()[1]["connection"], "close")
            self.assertTrue(c.closed_by_server())
        with self.r.connect() as c:
            c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            self.assertEqual(c.read_response()[1]["connection"], "keep-alive")
            self.assertEqual(c.request("GET", "/again")[0], 200)

    def test_expect_100_continue(self):
        with self.r.connect() as c:
            c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            status, _, _ = c.read_response()
            self.assertEqual(status, 100)
            c.send(b"hello")
            status, _, body = c.read_response()
            self.assertEqual((status, json.loads(body)["body"]), (200, "hello"))
        with self.r.connect() as c:  # too large: refused before the client sends the body
            c.send(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\nExpect: 100-continue\r\n\r\n")
            self.assertEqual(c.read_response()[0], 413)

    def test_head_has_headers_but_no_body(self):
        with self.r.connect() as c:
            status, headers, body = c.request("HEAD", "/x")
            self.assertEqual((status, body), (200, b""))
            self.assertGreater(int(headers["content-length"]), 0)
            self.assertEqual(c.request("HEAD", "/healthz")[0], 200)
            self.assertEqual(c.request("GET", "/y")[0], 200)  # the connection is still in step

    def test_absolute_form_target(self):
        status, _, body = self.r.json("GET", "http://example.test/p/q?x=1")
        self.assertEqual((status, body["path"], body["query"]), (200, "/p/q", {"x": "1"}))

    def test_healthz_with_a_query_goes_to_the_function(self):
        status, _, body = self.r.json("GET", "/healthz?x=1")
        self.assertEqual((status, body["path"]), (200, "/healthz"))

    def bad(self, raw, status):
        with self.r.connect() as c:
            c.send(raw)
            got, headers, body = c.read_response()
            self.assertEqual(got, status, body)
            self.assertEqual(headers["connection"], "close")
            self.assertIn("error", json.loads(body))
            self.assertTrue(c.closed_by_server())

    def test_malformed_requests(self):
        self.bad(b"NONSENSE\r\n\r\n", 400)
        self.bad(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505)
        self.bad(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400)
        self.bad(b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400)
        self.bad(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400)
        self.bad(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400)
        self.bad(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)
        self.bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501)
        self.bad(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400)
        self.bad(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431)

    def test_client_gone_mid_body_does_not_hurt(self):
        with self.r.connect() as c:
            c.send(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort")
        self.assertEqual(self.r.request("GET", "/healthz")[0], 200)


if __name__ == "__main__":
    unittest.main()
