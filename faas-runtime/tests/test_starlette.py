"""Functions in the seed's style, with Starlette's request and responses, served by a real
runtime subprocess: the seed-style function set (tests/fixtures/seed-style) and fixtures
for the other shapes (cookies, background tasks, plain handlers, broken streams)."""

import os
import subprocess
import sys
import unittest

from tests.support import FIXTURES, RUNTIME_DIR, SEED_STYLE, Replica, fixture, runtime_env


def seed(folder, file, **env):
    return Replica("python", os.path.join(SEED_STYLE, folder), ROOST_FUNCTION_FILE=file, **env)


class SeedStyle(unittest.TestCase):
    def serve(self, folder, file):
        r = seed(folder, file)
        self.addCleanup(r.stop)
        return r

    def test_html(self):
        r = self.serve("seed-html", "page.py")
        status, headers, body = r.request("GET", "/?name=%3Cb%3EAda")
        self.assertEqual((status, headers["content-type"], body),
                         (200, "text/html; charset=utf-8", b"<h1>Hello, &lt;b&gt;Ada!</h1>"))
        self.assertEqual(r.request("GET", "/")[2], b"<h1>Hello, World!</h1>")

    def test_json_in_json_out_and_400_on_bad_input(self):
        r = self.serve("seed-json", "count.py")
        status, headers, body = r.json("POST", "/", '{"text": "one two three"}', {"Content-Type": "application/json"})
        self.assertEqual((status, headers["content-type"], body), (200, "application/json", {"length": 13, "words": 3}))
        self.assertEqual(r.json("POST", "/", '{"txt": 1}')[::2], (400, {"error": "No text provided"}))
        self.assertEqual(r.json("POST", "/", "[1]")[::2], (400, {"error": "No text provided"}))
        self.assertEqual(r.json("POST", "/", "{oops")[::2], (400, {"error": "The body is not JSON"}))
        self.assertEqual(r.json("GET", "/")[::2], (400, {"error": "The body is not JSON"}))

    def test_get_without_a_body_and_query_params(self):
        r = self.serve("seed-get", "greet.py")
        status, _, body = r.json("GET", "/?name=Ada&times=2&tag=x&tag=y")
        self.assertEqual((status, body), (200, {"method": "GET", "greeting": "Hello, Ada! Hello, Ada!",
                                                "tags": ["x", "y"], "body_bytes": 0}))
        self.assertEqual(r.json("GET", "/?times=11")[::2], (400, {"error": "times must be a whole number from 1 to 10"}))

    def test_forms_urlencoded_and_multipart(self):
        r = self.serve("seed-form", "form.py")
        status, _, body = r.json("POST", "/", "a=1&b=x+y&b=z", {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual((status, body), (200, {"fields": {"a": "1", "b": "z"}}))
        multipart = (b'--XyZ\r\nContent-Disposition: form-data; name="title"\r\n\r\nnotes\r\n'
                     b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="n.txt"\r\n'
                     b"Content-Type: text/plain\r\n\r\nhello world\r\n--XyZ--\r\n")
        status, _, body = r.json("POST", "/", multipart, {"Content-Type": "multipart/form-data; boundary=XyZ"})
        self.assertEqual((status, body), (200, {"fields": {"title": "notes", "file": {"filename": "n.txt", "size": 11}}}))

    def test_redirect(self):
        r = self.serve("seed-redirect", "go.py")
        status, headers, body = r.request("GET", "/")
        self.assertEqual((status, headers["location"], body), (307, "/seed-html?name=redirected", b""))

    def test_stream_goes_out_chunked_as_it_is_made(self):
        r = self.serve("seed-stream", "count.py")
        for query in ("?n=4", "?n=4&sync=1"):
            with r.connect() as c:
                c.send_request("GET", "/" + query)
                status, headers = c.read_head()
                self.assertEqual((status, headers["transfer-encoding"]), (200, "chunked"))
                self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
                self.assertNotIn("content-length", headers)
                chunks = c.read_chunks()
                self.assertEqual([b for _, b in chunks], [f"line {i} of 4\n".encode() for i in range(1, 5)])
                # 50 ms apart as made, not all at once at the end (3 gaps of 50 ms).
                self.assertGreater(chunks[-1][0] - chunks[0][0], 0.1, query)
                # keep-alive after a chunked response
                self.assertEqual(c.request("GET", "/?n=1")[::2], (200, b"line 1 of 1\n"))
        self.assertEqual(r.json("GET", "/?n=0")[::2], (400, {"error": "n must be a whole number from 1 to 100"}))

    def test_stream_to_http_1_0_ends_with_the_connection(self):
        r = self.serve("seed-stream", "count.py")
        with r.connect() as c:
            c.send(b"GET /?n=2 HTTP/1.0\r\n\r\n")
            status, headers = c.read_head()
            self.assertEqual((status, headers["connection"]), (200, "close"))
            self.assertNotIn("transfer-encoding", headers)
            while True:
                try:
                    c._fill()
                except ConnectionError:
                    break
            self.assertEqual(c.buf, b"line 1 of 2\nline 2 of 2\n")

    def test_head_of_a_stream_has_no_body(self):
        r = self.serve("seed-stream", "count.py")
        with r.connect() as c:
            status, headers, _ = c.request("HEAD", "/?n=3")
            self.assertEqual((status, headers["transfer-encoding"]), (200, "chunked"))
            self.assertEqual(c.request("GET", "/?n=1")[::2], (200, b"line 1 of 1\n"))  # nothing was left over

    def test_functions_that_cannot_start_exit_1_with_the_reason(self):
        cases = [("seed-missing-module", "broken.py", "No module named 'roost_module_that_does_not_exist'"),
                 ("seed-import-error", "broken.py", "seed-import-error fails at import on purpose"),
                 ("seed-dep", "size.py", "No module named 'humanize'")]  # without its extra_dependencies
        for folder, file, needle in cases:
            p = subprocess.run([sys.executable, "-m", "roost_runtime", "python"], capture_output=True, text=True,
                               env=runtime_env(os.path.join(SEED_STYLE, folder), PORT="0", ROOST_FUNCTION_FILE=file),
                               stdin=subprocess.DEVNULL, timeout=10)
            self.assertEqual((p.returncode, p.stdout), (1, ""), p.stderr)
            self.assertIn(needle, p.stderr)
            self.assertIn("Traceback", p.stderr)


class StarletteShapes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = fixture("starlette_shapes.py")

    @classmethod
    def tearDownClass(cls):
        cls.r.stop()

    def test_the_request_is_starlettes_with_roosts_extras(self):
        status, _, body = self.r.json("POST", "/request?a=1&a=2&b=%C3%A9", "data",
                                      {"X-Thing": "yes", "X-Request-Id": "rid-7"})
        self.assertEqual(status, 200)
        self.assertEqual(body, {
            "is_starlette": True, "method": "POST", "url_path": "/request", "url_query": "a=1&a=2&b=%C3%A9",
            "path": "/request", "query": {"a": "1", "b": "é"}, "query_params": [["a", "1"], ["a", "2"], ["b", "é"]],
            "path_params": {}, "client_host": "127.0.0.1", "header": "yes", "body": "data", "request_id": "rid-7"})

    def test_set_cookie_headers_are_all_kept(self):
        with self.r.connect() as c:
            status, _, body = c.request("GET", "/cookies")
            cookies = [v for k, v in c.header_list if k == "set-cookie"]
        self.assertEqual((status, body), (200, b"two cookies"))
        self.assertEqual(len(cookies), 2, cookies)
        self.assertTrue(cookies[0].startswith("a=1; ") and cookies[1].startswith("b=2; "), cookies)
        self.assertIn("HttpOnly", cookies[1])

    def test_status_media_type_and_headers_are_kept(self):
        status, headers, body = self.r.request("GET", "/text")
        self.assertEqual((status, headers["content-type"], headers["x-a"], body),
                         (201, "text/plain; charset=utf-8", "b", b"made"))
        self.assertEqual(headers["content-length"], "4")
        status, headers, body = self.r.request("GET", "/no-content")
        self.assertEqual((status, body), (204, b""))
        self.assertNotIn("content-length", headers)

    def test_background_task_runs_after_the_response(self):
        self.assertEqual(self.r.request("GET", "/background")[::2], (200, b"sent"))
        self.assertEqual(self.r.json("GET", "/background-done")[2], {"done": ["done"]})

    def test_plain_values_still_work(self):
        self.assertEqual(self.r.json("GET", "/plain")[::2], (200, {"plain": True}))
        self.assertEqual(self.r.json("GET", "/tuple")[::2], (400, {"error": "No text provided"}))

    def test_a_stream_that_fails_ends_early_and_the_server_lives_on(self):
        with self.r.connect() as c:
            c.send_request("GET", "/stream-fails")
            status, headers = c.read_head()
            self.assertEqual((status, headers["transfer-encoding"]), (200, "chunked"))
            while True:  # the first chunk, then the end of the connection without a last chunk
                try:
                    c._fill()
                except ConnectionError:
                    break
            self.assertEqual(c.buf, b"6\r\nfirst\n\r\n")
        self.assertTrue(self.r.wait_stderr("the stream broke"), self.r.stderr_text())
        self.assertEqual(self.r.json("GET", "/plain")[0], 200)


class SyncHandler(unittest.TestCase):
    def test_plain_def_with_starlette(self):
        r = fixture("starlette_sync.py")
        self.addCleanup(r.stop)
        self.assertEqual(r.json("POST", "/", '{"a": 1}')[::2], (202, {"json": {"a": 1}, "body": '{"a": 1}'}))
        self.assertEqual(r.json("POST", "/form", "x=1", {"Content-Type": "application/x-www-form-urlencoded"})[::2],
                         (200, {"x": "1"}))
        self.assertEqual(r.request("GET", "/stream")[::2], (200, b"a\nb\n"))
        self.assertEqual(r.json("POST", "/", "{bad")[0], 400)  # BadRequest, as for async handlers


class WithoutStarlette(unittest.TestCase):
    def test_a_python_function_exits_1_naming_the_interpreter_and_the_fix(self):
        # -S and only the runtime on PYTHONPATH: no site-packages, so no Starlette.
        env = runtime_env(FIXTURES, PORT="0", ROOST_FUNCTION_FILE="boom.py", PYTHONPATH=RUNTIME_DIR)
        p = subprocess.run([sys.executable, "-S", "-m", "roost_runtime", "python"], env=env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=10)
        self.assertEqual((p.returncode, p.stdout), (1, ""), p.stderr)
        for needle in ("need Starlette", sys.executable, "apt install python3-starlette", "pip install starlette",
                       "ROOST_PYTHON", "-S"):
            self.assertIn(needle, p.stderr)

    def test_a_command_function_needs_no_starlette(self):
        env = runtime_env(os.path.join(RUNTIME_DIR, "command", "functions", "wc"), PORT="0",
                          ROOST_COMMAND='["sh", "wc.sh"]', PYTHONPATH=RUNTIME_DIR)
        p = subprocess.Popen([sys.executable, "-S", "-m", "roost_runtime", "command"], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            self.assertTrue(p.stdout.readline().startswith(b"ROOST_READY "))
        finally:
            p.kill()
            p.wait(5)
            p.stdout.close()


if __name__ == "__main__":

    unittest.main()
