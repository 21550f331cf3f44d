"""The pure parts, without sockets: headers, requests, responses, return shapes, config."""

import asyncio
import unittest

from roost_runtime.__main__ import Config
from roost_runtime.asgi import Request as StarletteRequest
from roost_runtime.asgi import SyncRequest
from roost_runtime.http import BadRequest, Headers, Request, Response, encode
from roost_runtime.kinds import to_response


def request(target="/", body=b"", headers=(), cls=Request):
    return cls("POST", target, "HTTP/1.1", Headers(headers), body, "rid")


class HeadersTest(unittest.TestCase):
    def test_case_insensitive_and_repeated(self):
        h = Headers([("Content-Type", "a/b"), ("X-A", "1"), ("x-a", "2")])
        self.assertEqual(h["content-type"], "a/b")
        self.assertEqual(h.get("CONTENT-TYPE"), "a/b")
        self.assertEqual(h.get("x-a"), "1, 2")
        self.assertEqual(h.get_all("X-A"), ["1", "2"])
        self.assertIn("X-a", h)
        self.assertIsNone(h.get("missing"))
        self.assertEqual(dict(h), {"content-type": "a/b", "x-a": "1, 2"})
        with self.assertRaises(KeyError):
            h["missing"]


class RequestTest(unittest.TestCase):
    def test_path_and_query(self):
        r = request("/a%2Fb?x=1&x=2&y=%C3%A9&z")
        self.assertEqual(r.path, "/a%2Fb")
        self.assertEqual(r.query, {"x": "1", "y": "é", "z": ""})
        self.assertEqual(r.query_all, {"x": ["1", "2"], "y": ["é"], "z": [""]})
        self.assertEqual(r.query_string, "x=1&x=2&y=%C3%A9&z")
        self.assertEqual(request("//double/slash").path, "//double/slash")
        self.assertEqual(request("/").query, {})

    def test_body_text_json(self):
        for cls in (Request, StarletteRequest):
            r = request(body=b'{"a": [1]}', headers=[("Content-Type", "application/json; charset=utf-8")], cls=cls)
            run = asyncio.run
            self.assertEqual(run(r.body()), b'{"a": [1]}')
            self.assertEqual(run(r.text()), '{"a": [1]}')
            self.assertEqual(run(r.json()), {"a": [1]})
            self.assertEqual(r.content_type, "application/json")
            latin = request(body="é".encode("latin-1"), headers=[("Content-Type", "text/plain; charset=latin-1")],
                            cls=cls)
            self.assertEqual(run(latin.text()), "é")

    def test_bad_json_is_a_bad_request_and_a_value_error(self):
        for cls in (Request, StarletteRequest):
            for body in (b"", b"  ", b"{nope"):
                with self.assertRaises(BadRequest) as e:
                    asyncio.run(request(body=body, cls=cls).json())
                self.assertEqual(e.exception.status, 400)
                self.assertIsInstance(e.exception, ValueError)


class StarletteRequestTest(unittest.TestCase):
    """The request a Python function gets is Starlette's, with Roost's extras."""

    def test_it_is_a_real_starlette_request_over_the_read_request(self):
        import starlette.requests

        r = request("/a%20b/c?x=1&x=2&y=%C3%A9&z", b'{"k": 1}',
                    [("Host", "fn.local"), ("Content-Type", "application/json"), ("X-A", "1"), ("x-a", "2"),
                     ("Cookie", "s=abc")], cls=StarletteRequest)
        self.assertIsInstance(r, starlette.requests.Request)
        self.assertEqual((r.method, r.url.path, r.url.query), ("POST", "/a b/c", "x=1&x=2&y=%C3%A9&z"))
        self.assertEqual(str(r.url), "http://fn.local/a b/c?x=1&x=2&y=%C3%A9&z")  # Starlette 0.26: from the decoded path
        self.assertEqual(r.query_params.getlist("x"), ["1", "2"])
        self.assertEqual(r.query_params["y"], "é")
        self.assertEqual((r.path_params, r.cookies), ({}, {"s": "abc"}))
        self.assertEqual(r.headers["content-type"], "application/json")
        self.assertEqual(r.headers.getlist("x-a"), ["1", "2"])
        self.assertEqual(asyncio.run(r.body()), b'{"k": 1}')
        # Roost's own: the raw path, first values, every value, the raw query, the id.
        self.assertEqual((r.path, r.query_string, r.request_id), ("/a%20b/c", "x=1&x=2&y=%C3%A9&z", "rid"))
        self.assertEqual(r.query, {"x": "1", "y": "é", "z": ""})
        self.assertEqual(r.query_all, {"x": ["1", "2"], "y": ["é"], "z": [""]})

    def test_forms(self):
        async def form(body, content_type):
            r = request(body=body, headers=[("Content-Type", content_type)], cls=StarletteRequest)
            return dict((await r.form()).multi_items())

        self.assertEqual(asyncio.run(form(b"a=1&b=x+y", "application/x-www-form-urlencoded")), {"a": "1", "b": "x y"})
        multipart = (b'--XX\r\nContent-Disposition: form-data; name="n"\r\n\r\nv\r\n--XX--\r\n')
        self.assertEqual(asyncio.run(form(multipart, "multipart/form-data; boundary=XX")), {"n": "v"})

    def test_sync_request(self):
        async def build():
            return request(body=b"[1]", cls=SyncRequest)

        r = asyncio.run(build())
        self.assertEqual((r.body(), r.read(), r.text(), r.json()), (b"[1]", b"[1]", "[1]", [1]))


class ResponseTest(unittest.TestCase):
    def test_bodies_and_types(self):
        self.assertEqual((Response("hé").body, Response("x").headers["Content-Type"]), ("hé".encode(), "text/plain; charset=utf-8"))
        self.assertEqual(Response(b"\x00").headers["Content-Type"], "application/octet-stream")
        self.assertEqual(Response({"a": 1}).body, b'{"a": 1}')
        self.assertEqual(Response(None).body, b"")
        self.assertEqual(Response("<p>", headers={"content-type": "text/html"}).headers, {"content-type": "text/html"})
        with self.assertRaises(ValueError):
            Response("x", status=99)

    def test_encode(self):
        data = encode(Response("hi", 201, {"Content-Length": "999", "X-A": "b"}), "rid", True)
        head, body = data.split(b"\r\n\r\n")
        self.assertEqual(body, b"hi")
        self.assertEqual(head.split(b"\r\n"), [b"HTTP/1.1 201 Created", b"X-A: b", b"Content-Type: text/plain; charset=utf-8",
                                               b"X-Request-Id: rid", b"Content-Length: 2", b"Connection: keep-alive"])
        with self.assertRaises(ValueError):
            encode(Response("x", headers={"X": "a\nb"}), "", False)

    def test_repeated_headers_and_a_streamed_head(self):
        r = Response(None, headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        self.assertIn(b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n", encode(r, "", True))

        async def chunks():
            yield b"x"

        head = encode(Response(None, headers={"Content-Type": "text/plain"}, stream=chunks()), "", True)
        self.assertIn(b"Transfer-Encoding: chunked\r\n", head)
        self.assertNotIn(b"Content-Length", head)
        self.assertTrue(head.endswith(b"\r\n\r\n"))


class ToResponseTest(unittest.TestCase):
    def test_json_mode(self):
        self.assertEqual(to_response({"a": 1}, False).body, b'{"a": 1}')
        self.assertEqual(to_response("s", False).body, b'"s"')
        self.assertEqual(to_response(None, False).body, b"null")
        r = to_response(({"e": 1}, 400), False)
        self.assertEqual((r.status, r.body), (400, b'{"e": 1}'))
        self.assertEqual(to_response([1, 2], False).body, b"[1, 2]")
        self.assertEqual(to_response((1, True), False).body, b"[1, true]")  # a bool is no status
        self.assertEqual(to_response((1, 2), False).body, b"[1, 2]")  # nor is 2
        with self.assertRaises(TypeError):
            to_response({1}, False)

    def test_serialized_mode(self):
        self.assertEqual(to_response("s", True).body, b"s")
        self.assertEqual(to_response(b"b", True).headers["Content-Type"], "application/octet-stream")
        r = to_response(("x", 404, {"A": "1"}), True)
        self.assertEqual((r.status, r.body, r.headers["A"]), (404, b"x", "1"))


class ConfigTest(unittest.TestCase):
    def test_defaults(self):
        c = Config("python", {"ROOST_FUNCTION_FILE": "f.py", "ROOST_FUNCTION_DIR": "/"})
        self.assertEqual(c.errors, [])
        self.assertEqual((c.port, c.host, c.timeout, c.max_body, c.drain_s), (5000, "0.0.0.0", 0.0, 10 << 20, 30.0))

    def test_values(self):
        c = Config("command", {"ROOST_FUNCTION_DIR": "/", "PORT": "0", "ROOST_TIMEOUT_S": "2.5",
                               "ROOST_MAX_BODY": "512k", "ROOST_FUNCTION_FILE": "run.sh"})
        self.assertEqual(c.errors, [])
        self.assertEqual((c.port, c.timeout, c.drain_s, c.max_body, c.command), (0, 2.5, 3.5, 512 << 10, ["./run.sh"]))

    def test_every_error_is_reported(self):
        c = Config("command", {"ROOST_FUNCTION_DIR": "/nonexistent-roost", "PORT": "70000",
                               "ROOST_TIMEOUT_S": "-1", "ROOST_MAX_BODY": "1x", "ROOST_COMMAND": '"sh"'})
        self.assertEqual(len(c.errors), 5, c.errors)


if __name__ == "__main__":
    unittest.main()
