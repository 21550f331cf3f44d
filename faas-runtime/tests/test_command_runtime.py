"""The command kind as a real subprocess over real HTTP."""

import json
import os
import tempfile
import time
import unittest

from tests.support import CMD_FUNCTIONS, HERE, Replica


def command(folder, argv, **env):
    return Replica("command", folder, ROOST_COMMAND=json.dumps(argv), **env)


class Wc(unittest.TestCase):
    def test_wc_counts_stdin(self):
        r = command(os.path.join(CMD_FUNCTIONS, "wc"), ["sh", "wc.sh"])
        self.addCleanup(r.stop)
        status, headers, body = r.json("POST", "/", "one two\nthree\n")
        self.assertEqual((status, body), (200, {"lines": 2, "words": 3, "bytes": 14}))
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(r.json("POST", "/", "")[::2], (200, {"lines": 0, "words": 0, "bytes": 0}))
        with r.connect() as c:  # keep-alive and a chunked body
            c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"4\r\nab c\r\n3;ext=1\r\n\nd\n\r\n0\r\n\r\n")
            status, _, body = c.read_response()
            self.assertEqual((status, json.loads(body)), (200, {"lines": 2, "words": 3, "bytes": 7}))
            self.assertEqual(c.request("GET", "/healthz")[0], 200)


class CommandContract(unittest.TestCase):
    def test_request_is_passed_as_cgi_variables(self):
        script = 'printf "%s|%s|%s|%s" "$REQUEST_METHOD" "$REQUEST_PATH" "$QUERY_STRING" "$REQUEST_ID"'
        r = command(HERE, ["sh", "-c", script], FUNCTION_SETTING="from-yaml")
        self.addCleanup(r.stop)
        status, headers, body = r.request("PUT", "/a/b?x=1&y=2", "", {"X-Request-Id": "cmd-1"})
        self.assertEqual((status, body), (200, b"PUT|/a/b|x=1&y=2|cmd-1"))
        self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(headers["x-request-id"], "cmd-1")

    def test_function_env_and_content_type_override(self):
        r = command(HERE, ["sh", "-c", 'printf "<b>%s</b>" "$FUNCTION_SETTING"'],
                    FUNCTION_SETTING="from-yaml", ROOST_CONTENT_TYPE="text/html")
        self.addCleanup(r.stop)
        status, headers, body = r.request("GET", "/")
        self.assertEqual((status, headers["content-type"], body), (200, "text/html", b"<b>from-yaml</b>"))

    def test_failure_is_500_with_exit_code_and_stderr_tail(self):
        script = "for i in $(seq 1 30); do echo line$i >&2; done; echo partial; exit 3"
        r = command(HERE, ["sh", "-c", script])
        self.addCleanup(r.stop)
        status, _, body = r.json("POST", "/", "x", {"X-Request-Id": "f1"})
        self.assertEqual(status, 500)
        self.assertEqual(body["exit_code"], 3)
        self.assertIn("exited with code 3", body["error"])
        self.assertEqual(body["stderr"], [f"line{i}" for i in range(11, 31)])
        self.assertEqual((body["function"], body["request_id"]), ("t", "f1"))
        self.assertTrue(r.wait_stderr("t [f1]: line30"), r.stderr_text())
        self.assertEqual(r.json("GET", "/healthz")[0], 200)

    def test_timeout_kills_the_whole_command_and_is_504(self):
        with tempfile.TemporaryDirectory() as tmp:
            pidfile = os.path.join(tmp, "pid")
            # The shell starts a child: the kill must reach it too, not only the shell.
            script = f"echo started >&2; sleep 30 & echo $! > {pidfile}; wait"
            r = command(tmp, ["sh", "-c", script], ROOST_TIMEOUT_S="0.3")
            self.addCleanup(r.stop)
            t = time.monotonic()
            status, _, body = r.json("POST", "/", "")
            self.assertLess(time.monotonic() - t, 2.0)
            self.assertEqual(status, 504)
            self.assertIn("0.3 s", body["error"])
            self.assertEqual(body["stderr"], ["started"])
            with open(pidfile) as f:
                pid = int(f.read())
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.02)
            self.assertFalse(_alive(pid), "the command's child survived the timeout")
            self.assertEqual(r.json("GET", "/healthz")[0], 200)

    def test_command_that_ignores_stdin(self):
        r = command(HERE, ["sh", "-c", "echo '[1, 2]'"])
        self.addCleanup(r.stop)
        status, headers, body = r.json("POST", "/", b"z" * 300_000)
        self.assertEqual((status, body), (200, [1, 2]))
        self.assertEqual(headers["content-type"], "application/json")

    def test_missing_program_fails_at_start(self):
        import subprocess
        import sys
        from tests.support import runtime_env

        p = subprocess.run([sys.executable, "-m", "roost_runtime", "command"],
                           env=runtime_env(HERE, PORT="0", ROOST_COMMAND='["no-such-program-roost"]'),
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 1)
        self.assertIn("not on PATH", p.stderr)
        p = subprocess.run([sys.executable, "-m", "roost_runtime", "command"],
                           env=runtime_env(HERE, PORT="0", ROOST_COMMAND="sh wc.sh"),
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 2)
        self.assertIn("JSON list", p.stderr)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for this purpose (its parent, the killed shell, is gone too).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    unittest.main()
