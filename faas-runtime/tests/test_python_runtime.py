"""The python kind as a real subprocess over real HTTP: the example functions, errors,
timeouts, return shapes, plain handlers, start-up failures and SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

from tests.support import FIXTURES, Replica, fixture, python_function, runtime_env


class Hello(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = python_function("hello", "hello.py")

    @classmethod
    def tearDownClass(cls):
        cls.r.stop()

    def test_readiness_line_is_the_only_line_on_stdout(self):
        self.assertEqual(self.r.ready_line, f"ROOST_READY {self.r.port}\n")

    def test_healthz(self):
        status, headers, body = self.r.json("GET", "/healthz")
        self.assertEqual((status, body), (200, {"status": "ok"}))
        self.assertEqual(headers["content-type"], "application/json")

    def test_hello_get_and_post(self):
        for method in ("GET", "POST"):
            status, headers, body = self.r.json(method, "/")
            self.assertEqual((status, body), (200, {"Hello": "World"}))
            self.assertEqual(headers["content-type"], "application/json")

    def test_keep_alive_two_requests_on_one_connection(self):
        with self.r.connect() as c:
            for _ in range(2):
                status, headers, body = c.request("GET", "/")
                self.assertEqual((status, json.loads(body)), (200, {"Hello": "World"}))
                self.assertEqual(headers["connection"], "keep-alive")
            self.assertFalse(c.closed_by_server(0.2))

    def test_request_id_is_echoed_or_made_up(self):
        _, headers, _ = self.r.request("GET", "/", headers={"X-Request-Id": "req-42"})
        self.assertEqual(headers["x-request-id"], "req-42")
        _, headers, _ = self.r.request("GET", "/")
        self.assertRegex(headers["x-request-id"], r"^[0-9a-f]{16}$")


class ExampleFunctions(unittest.TestCase):
    def test_add(self):
        r = python_function("add", "add.py")
        self.addCleanup(r.stop)
        status, _, body = r.json("POST", "/", json.dumps({"value1": 2, "value2": 40}),
                                 {"Content-Type": "application/json"})
        self.assertEqual((status, body), (200, {"result": 42}))
        self.assertEqual(r.json("POST", "/", '{"value1": 1.5, "value2": -0.5}')[2], {"result": 1.0})
        for bad in ('{"value1": "x", "value2": 1}', '{"value1": 1}', "[1, 2]", '{"value1": true, "value2": 1}'):
            status, _, body = r.json("POST", "/", bad)
            self.assertEqual(status, 400, bad)
            self.assertIn("value1", body["error"])

    def test_invalid_or_missing_json_body_is_400(self):
        r = python_function("add", "add.py")
        self.addCleanup(r.stop)
        status, _, body = r.json("POST", "/", "{not json", {"X-Request-Id": "bad-1"})
        self.assertEqual(status, 400)
        self.assertIn("not valid JSON", body["error"])
        self.assertEqual((body["function"], body["request_id"]), ("t", "bad-1"))
        status, _, body = r.json("POST", "/")
        self.assertEqual(status, 400)
        self.assertIn("no body", body["error"])

    def test_echo_with_query_headers_and_body(self):
        r = python_function("echo", "echo.py")
        self.addCleanup(r.stop)
        status, headers, body = r.json("PUT", "/a/b%20c?x=1&x=2&y=a%20b&flag", "hé",
                                       {"X-Request-Id": "abc", "Content-Type": "text/plain; charset=utf-8"})
        self.assertEqual(status, 200)
        self.assertEqual(headers["x-request-id"], "abc")
        self.assertEqual(body["method"], "PUT")
        self.assertEqual(body["path"], "/a/b%20c")
        self.assertEqual(body["query"], {"x": "1", "y": "a b", "flag": ""})
        self.assertEqual(body["body"], "hé")
        self.assertEqual(body["request_id"], "abc")
        self.assertEqual(body["headers"]["x-request-id"], "abc")
        self.assertEqual(body["headers"]["content-type"], "text/plain; charset=utf-8")

    def test_sleep_duration_from_query_or_json_and_bad_input(self):
        r = python_function("sleep", "sleep.py")
        self.addCleanup(r.stop)
        t = time.monotonic()
        self.assertEqual(r.json("GET", "/?ms=150")[::2], (200, {"slept_ms": 150}))
        self.assertGreaterEqual(time.monotonic() - t, 0.15)
        self.assertEqual(r.json("POST", "/", '{"ms": 20}')[::2], (200, {"slept_ms": 20}))
        status, _, body = r.json("GET", "/?ms=soon")
        self.assertEqual(status, 400)
        self.assertIn("ms must be", body["error"])

    def test_whoami_names_its_replica_and_checks_ms(self):
        r = python_function("whoami", "whoami.py")
        self.addCleanup(r.stop)
        status, _, body = r.json("GET", "/?ms=5")
        self.assertEqual(status, 200)
        self.assertEqual(body["replica"].rsplit(":", 1)[1], str(r.proc.pid))
        self.assertEqual(r.json("GET", "/")[2], body)
        status, _, body = r.json("GET", "/?ms=-1")
        self.assertEqual(status, 400)
        self.assertIn("ms must be", body["error"])


class AccessLog(unittest.TestCase):
    def test_access_log_line_per_request(self):
        r = python_function("hello", "hello.py", ROOST_ACCESS_LOG="1")
        self.addCleanup(r.stop)
        r.request("GET", "/x?y=1", headers={"X-Request-Id": "log-1"})
        self.assertTrue(r.wait_stderr("t: GET /x?y=1 200 "), r.stderr_text())
        self.assertIn("id=log-1", r.stderr_text())


class Errors(unittest.TestCase):
    def test_exception_gives_json_500_and_the_server_lives_on(self):
        r = fixture("boom.py")
        self.addCleanup(r.stop)
        with r.connect() as c:  # the same connection keeps working after the 500
            status, headers, body = c.request("GET", "/", headers={"X-Request-Id": "r1"})
            self.assertEqual(status, 500)
            self.assertEqual(headers["content-type"], "application/json")
            body = json.loads(body)
            self.assertEqual(body, {"error": "ZeroDivisionError: division by zero", "function": "t", "request_id": "r1"})
            self.assertEqual(c.request("GET", "/ok")[0], 200)
        self.assertEqual(r.json("GET", "/healthz")[0], 200)
        self.assertTrue(r.wait_stderr("Traceback"), r.stderr_text())
        self.assertIn("ZeroDivisionError", r.stderr_text())
        self.assertIn("r1", r.stderr_text())

    def test_timeout_gives_504_and_the_server_lives_on(self):
        r = python_function("sleep", "sleep.py", ROOST_TIMEOUT_S="0.2")
        self.addCleanup(r.stop)
        t = time.monotonic()
        status, _, body = r.json("GET", "/?ms=3000", headers={"X-Request-Id": "slow"})
        self.assertLess(time.monotonic() - t, 2.0)
        self.assertEqual(status, 504)
        self.assertEqual(body["request_id"], "slow")
        self.assertIn("0.2 s", body["error"])
        self.assertEqual(r.json("GET", "/?ms=10")[::2], (200, {"slept_ms": 10}))

    def test_body_over_the_limit_is_413(self):
        r = python_function("echo", "echo.py", ROOST_MAX_BODY="1k")
        self.addCleanup(r.stop)
        self.assertEqual(r.request("POST", "/", "x" * 1024)[0], 200)
        status, headers, body = r.request("POST", "/", "x" * 2000)
        self.assertEqual(status, 413)
        self.assertIn("1024 bytes", json.loads(body)["error"])
        self.assertEqual(headers["connection"], "close")
        with r.connect() as c:  # chunked: refused once the chunks pass the limit
            c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"300\r\n" + b"y" * 0x300 + b"\r\n" + b"300\r\n" + b"y" * 0x300 + b"\r\n0\r\n\r\n")
            self.assertEqual(c.read_response()[0], 413)
        self.assertEqual(r.json("GET", "/healthz")[0], 200)


class ReturnShapes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.r = fixture("shapes.py")

    @classmethod
    def tearDownClass(cls):
        cls.r.stop()

    def check(self, path, status, content_type, body):
        s, h, b = self.r.request("GET", path)
        self.assertEqual(s, status, b)
        if content_type is not None:
            self.assertEqual(h.get("content-type"), content_type)
        if body is not None:
            self.assertEqual(b, body)
        return h

    def test_shapes(self):
        self.check("/str", 200, "text/plain; charset=utf-8", b"plain text")
        self.check("/bytes", 200, "application/octet-stream", b"\x00\x01\x02")
        self.check("/tuple", 418, "text/plain; charset=utf-8", b"I'm a teapot")
        h = self.check("/tuple-headers", 201, "application/json", b'{"made": true}')
        self.assertEqual(h["location"], "/x")
        h = self.check("/response", 202, "application/json", b'{"a": 1}')
        self.assertEqual(h["x-custom"], "yes")
        self.check("/html", 200, "text/html", b"<h1>hi</h1>")
        h = self.check("/none", 204, None, b"")
        self.assertNotIn("content-length", h)
        self.check("/dict", 200, "application/json", b'{"still": "json"}')
        h = self.check("/starlette", 203, "text/html; charset=utf-8", b"<p>seed</p>")
        self.assertEqual(h["x-from"], "starlette")
        h = self.check("/request-id", 200, None, b"")
        self.assertEqual(h["x-request-id"], "set-by-function")
        with self.r.connect() as c:  # a list of headers may repeat a name
            self.assertEqual(c.request("GET", "/cookies")[0], 200)
            self.assertEqual([v for k, v in c.header_list if k == "set-cookie"], ["a=1", "b=2"])

    def test_http_error_and_bad_responses(self):
        status, _, body = self.r.json("GET", "/http-error", headers={"X-Request-Id": "e"})
        self.assertEqual((status, body), (422, {"error": "that will not do", "function": "t", "request_id": "e", "field": "x"}))
        status, _, body = self.r.json("GET", "/bad-header")
        self.assertEqual(status, 500)
        self.assertIn("bad response header", body["error"])
        status, _, body = self.r.json("GET", "/not-json")
        self.assertEqual(status, 500)
        self.assertIn("not JSON serializable", body["error"])

    def test_seed_style_tuple_without_is_return_serialized(self):
        r = fixture("tuple_json.py")
        self.addCleanup(r.stop)
        self.assertEqual(r.json("POST", "/", "{}")[::2], (400, {"error": "No text provided"}))
        self.assertEqual(r.json("POST", "/", '{"text": "abc"}')[::2], (200, {"length": 3}))


class PlainHandler(unittest.TestCase):
    def test_plain_def_runs_in_a_thread_and_prints_go_to_the_log(self):
        r = fixture("plain.py")
        self.addCleanup(r.stop)
        status, _, body = r.json("POST", "/p", '{"a": 1}')
        self.assertEqual((status, body), (200, {"method": "POST", "data": {"a": 1}, "text": '{"a": 1}'}))
        result = {}
        t = threading.Thread(target=lambda: result.update(r=r.json("GET", "/block?s=0.6")))
        t.start()
        time.sleep(0.1)
        started = time.monotonic()
        self.assertEqual(r.json("GET", "/healthz")[0], 200)  # not blocked by the sleeping handler
        self.assertLess(time.monotonic() - started, 0.3)
        t.join(5)
        self.assertEqual(result["r"][0], 200)
        self.assertTrue(r.wait_stderr("handling POST /p"))
        self.assertIn("imported plain.py", r.stderr_text())
        r.proc.send_signal(signal.SIGTERM)
        self.assertEqual(r.proc.wait(5), 0)
        self.assertEqual(r.stdout_rest(), b"")  # nothing but the readiness line on stdout


class StartAndStop(unittest.TestCase):
    def run_runtime(self, kind="python", **env):
        return subprocess.run([sys.executable, "-m", "roost_runtime", kind], env=runtime_env(FIXTURES, PORT="0", **env),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)

    def test_port_zero_picks_a_free_port(self):
        r = Replica("python", os.path.join(FIXTURES), port=0, ROOST_FUNCTION_FILE="boom.py")
        self.addCleanup(r.stop)
        self.assertNotEqual(r.port, 0)
        self.assertEqual(r.json("GET", "/ok")[::2], (200, {"ok": True}))

    def test_import_error_exits_1_with_the_traceback(self):
        p = self.run_runtime(ROOST_FUNCTION_FILE="import_error.py")
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, "")
        self.assertIn("broken at import", p.stderr)
        self.assertIn("Traceback", p.stderr)

    def test_bad_configuration_exits_2_naming_every_problem(self):
        p = self.run_runtime(ROOST_FUNCTION_FILE="", ROOST_TIMEOUT_S="soon", ROOST_MAX_BODY="lots")
        self.assertEqual(p.returncode, 2)
        for needle in ("ROOST_FUNCTION_FILE", "ROOST_TIMEOUT_S", "ROOST_MAX_BODY"):
            self.assertIn(needle, p.stderr)
        p = self.run_runtime(ROOST_FUNCTION_FILE="missing.py")
        self.assertEqual(p.returncode, 1)
        self.assertIn("missing.py does not exist", p.stderr)
        p = self.run_runtime("java")
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown kind", p.stderr)

    def test_sigterm_finishes_the_request_in_flight_then_exits_0(self):
        r = python_function("sleep", "sleep.py")
        self.addCleanup(r.stop)
        idle = r.connect()  # an idle keep-alive connection is closed at once
        self.addCleanup(idle.close)
        self.assertEqual(idle.request("GET", "/healthz")[0], 200)
        result = {}
        t = threading.Thread(target=lambda: result.update(r=r.json("GET", "/?ms=600")))
        t.start()
        time.sleep(0.2)
        r.proc.send_signal(signal.SIGTERM)
        self.assertTrue(idle.closed_by_server(1.0))
        t.join(5)
        self.assertEqual(result["r"][0], 200, result)
        self.assertEqual(result["r"][2], {"slept_ms": 600})
        self.assertEqual(result["r"][1]["connection"], "close")
        self.assertEqual(r.proc.wait(5), 0)
        self.assertIn("draining 1 request", r.stderr_text())

    def test_drain_is_bounded(self):
        r = python_function("sleep", "sleep.py", ROOST_DRAIN_S="0.3")
        self.addCleanup(r.stop)
        c = r.connect()
        self.addCleanup(c.close)
        c.send_request("GET", "/?ms=5000")
        time.sleep(0.2)
        t = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        self.assertEqual(r.proc.wait(5), 0)
        self.assertLess(time.monotonic() - t, 2.0)
        self.assertIn("1 request(s) still running after 0.3", r.stderr_text())

    def test_drain_bound_holds_for_a_blocked_plain_handler(self):
        r = fixture("plain.py", ROOST_DRAIN_S="0.3")
        self.addCleanup(r.stop)
        c = r.connect()
        self.addCleanup(c.close)
        c.send_request("GET", "/block?s=5")  # a worker thread that cannot be cancelled
        time.sleep(0.2)
        t = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        self.assertEqual(r.proc.wait(5), 0)
        self.assertLess(time.monotonic() - t, 2.0)

    def test_second_signal_stops_the_drain(self):
        r = python_function("sleep", "sleep.py")
        self.addCleanup(r.stop)
        c = r.connect()
        self.addCleanup(c.close)
        c.send_request("GET", "/?ms=5000")
        time.sleep(0.2)
        t = time.monotonic()
        r.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        self.assertIsNone(r.proc.poll())  # still draining
        r.proc.send_signal(signal.SIGINT)
        self.assertEqual(r.proc.wait(5), 0)
        self.assertLess(time.monotonic() - t, 2.0)


if __name__ == "__main__":
    unittest.main()
