"""The runtime as a real subprocess on a free loopback port, over real HTTP."""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME_DIR = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    def __init__(self, kind, folder, extra_env):
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=RUNTIME_DIR, PORT=str(self.port), ROOST_BIND="127.0.0.1",
                   ROOST_FUNCTION_NAME="t", ROOST_FUNCTION_DIR=folder, **extra_env)
        self.proc = subprocess.Popen([sys.executable, "-m", "roost_runtime", kind], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        line = self.proc.stdout.readline()
        assert line.strip() == f"ROOST_READY {self.port}", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        assert time.monotonic() < deadline
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()

    def request(self, method, path, body=None, headers=None, conn=None):
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            if conn is None:
                c.close()

    def json(self, method, path, body=None, headers=None):
        status, headers, data = self.request(method, path, body, headers)
        return status, headers, json.loads(data)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def python_fn(folder, file, **env):
    return Replica("python", os.path.join(RUNTIME_DIR, "python", "functions", folder), dict(ROOST_FUNCTION_FILE=file, **env))


class PythonRuntime(unittest.TestCase):
    def test_hello_health_and_keep_alive(self):
        r = python_fn("hello", "hello.py")
        try:
            self.assertEqual(r.json("GET", "/healthz")[0], 200)
            conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=10)
            for _ in range(2):  # two requests on one connection
                status, _, data = r.request("GET", "/", conn=conn)
                self.assertEqual((status, json.loads(data)), (200, {"Hello": "World"}))
        finally:
            r.stop()

    def test_add_and_bad_input(self):
        r = python_fn("add", "add.py")
        try:
            status, _, body = r.json("POST", "/", json.dumps({"value1": 2, "value2": 40}), {"Content-Type": "application/json"})
            self.assertEqual((status, body), (200, {"result": 42}))
            status, _, body = r.json("POST", "/", json.dumps({"value1": "x"}))
            self.assertEqual(status, 400)
            status, _, body = r.json("POST", "/", "{not json")
            self.assertEqual(status, 400)
            self.assertIn("not valid JSON", body["error"])
        finally:
            r.stop()

    def test_echo_query_request_id_and_body_limit(self):
        r = python_fn("echo", "echo.py", ROOST_MAX_BODY="1000")
        try:
            status, headers, body = r.json("POST", "/a/b?x=1&y=2", "hi", {"X-Request-Id": "abc"})
            self.assertEqual(status, 200)
            self.assertEqual((body["path"], body["query"], body["body"]), ("/a/b", {"x": "1", "y": "2"}, "hi"))
            self.assertEqual(headers.get("X-Request-Id"), "abc")
            status, _, _ = r.request("POST", "/", "x" * 2000)
            self.assertEqual(status, 413)
        finally:
            r.stop()

    def test_exception_gives_json_500_and_server_lives(self):
        folder = os.path.join(HERE, "fixtures")
        r = Replica("python", folder, {"ROOST_FUNCTION_FILE": "boom.py"})
        try:
            status, _, body = r.json("GET", "/", headers={"X-Request-Id": "r1"})
            self.assertEqual(status, 500)
            self.assertEqual((body["function"], body["request_id"]), ("t", "r1"))
            self.assertIn("ZeroDivisionError", body["error"])
            self.assertEqual(r.json("GET", "/healthz")[0], 200)
            time.sleep(0.1)
            self.assertIn("Traceback", "".join(r.stderr))
        finally:
            r.stop()

    def test_timeout_gives_504(self):
        r = python_fn("sleep", "sleep.py", ROOST_TIMEOUT_S="0.2")
        try:
            self.assertEqual(r.json("GET", "/?ms=1000")[0], 504)
            self.assertEqual(r.json("GET", "/?ms=10"), (200, r.json("GET", "/?ms=10")[1], {"slept_ms": 10}))
        finally:
            r.stop()

    def test_sigterm_finishes_the_request_in_flight(self):
        r = python_fn("sleep", "sleep.py")
        try:
            result = {}
            t = threading.Thread(target=lambda: result.update(r=r.json("GET", "/?ms=500")))
            t.start()
            time.sleep(0.15)
            r.proc.send_signal(signal.SIGTERM)
            t.join(5)
            self.assertEqual(result["r"][0], 200)
            self.assertEqual(r.proc.wait(5), 0)
        finally:
            r.stop()


class CommandRuntime(unittest.TestCase):
    def test_wc_counts_stdin(self):
        folder = os.path.join(RUNTIME_DIR, "command", "functions", "wc")
        r = Replica("command", folder, {"ROOST_COMMAND": '["sh", "wc.sh"]'})
        try:
            status, headers, body = r.json("POST", "/", "one two\nthree\n")
            self.assertEqual((status, body), (200, {"lines": 2, "words": 3, "bytes": 14}))
            self.assertEqual(headers["Content-Type"], "application/json")
        finally:
            r.stop()

    def test_failure_and_timeout(self):
        r = Replica("command", HERE, {"ROOST_COMMAND": '["sh", "-c", "echo broken >&2; exit 3"]'})
        try:
            status, _, body = r.json("POST", "/", "x")
            self.assertEqual(status, 500)
            self.assertIn("3", body["error"])
            self.assertEqual(body["stderr"], ["broken"])
        finally:
            r.stop()
        r = Replica("command", HERE, {"ROOST_COMMAND": '["sleep", "5"]', "ROOST_TIMEOUT_S": "0.2"})
        try:
            self.assertEqual(r.json("POST", "/", "")[0], 504)
        finally:
            r.stop()


if __name__ == "__main__":
    unittest.main()
