"""``roost_runtime spare``: a runtime started ahead of time that is told its function on
stdin (the process runtime's pool), as a real subprocess over real HTTP."""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

from tests.support import CMD_FUNCTIONS, FIXTURES, PY_FUNCTIONS, START_TIMEOUT, Conn, free_port, runtime_env


class Spare:
    """A spare runtime, started in a folder of its own with no function settings."""

    def __init__(self):
        self.port = free_port()
        env = runtime_env(FIXTURES, PORT=str(self.port))
        for k in ("ROOST_FUNCTION_NAME", "ROOST_FUNCTION_DIR"):
            env.pop(k)
        self.start_dir = tempfile.mkdtemp(prefix="roost-spare-")
        self.proc = subprocess.Popen([sys.executable, "-S", "-m", "roost_runtime", "spare"], env=env,
                                     cwd=self.start_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def connect_when_listening(self):
        """A connection as soon as the spare listens (it answers only once assigned)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                return Conn(self.port)
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def assign(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.close()

    def ready_line(self):
        return self.proc.stdout.readline().decode()

    def finish(self):
        """(exit code, stderr) of a spare that exits by itself."""
        code = self.proc.wait(timeout=START_TIMEOUT)
        return code, self.proc.stderr.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()
        os.rmdir(self.start_dir)


def assignment(kind, **env):
    return json.dumps({"kind": kind, "env": env})


class AssignedSpare(unittest.TestCase):
    def spare(self):
        s = Spare()
        self.addCleanup(s.stop)
        return s

    def test_a_probe_sent_before_the_assignment_is_answered_once_the_function_serves(self):
        s = self.spare()
        with s.connect_when_listening() as probe:  # answered once the function serves
            probe.send_request("GET", "/healthz")
            s.assign(assignment("python", ROOST_FUNCTION_NAME="hello", ROOST_FUNCTION_FILE="hello.py",
                                ROOST_FUNCTION_DIR=os.path.join(PY_FUNCTIONS, "hello")))
            status, _, body = probe.read_response()
            self.assertEqual((status, json.loads(body)), (200, {"status": "ok"}))
        self.assertEqual(s.ready_line(), f"ROOST_READY {s.port}\n")
        with Conn(s.port) as c:
            status, _, body = c.request("GET", "/")
            self.assertEqual((status, json.loads(body)), (200, {"Hello": "World"}))

    def test_the_function_sees_its_environment_folder_and_path_as_if_started_for_it(self):
        s = self.spare()
        s.assign(assignment("python", ROOST_FUNCTION_NAME="env", ROOST_FUNCTION_FILE="environment.py",
                            ROOST_FUNCTION_DIR=FIXTURES, GREETING="from-the-definitions"))
        self.assertTrue(s.ready_line().startswith("ROOST_READY "))
        with Conn(s.port) as c:
            status, _, body = c.request("GET", "/")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), {"greeting": "from-the-definitions", "cwd": FIXTURES,
                                            "path0": FIXTURES, "argv": ["python"]})

    def test_a_command_function(self):
        s = self.spare()
        s.assign(assignment("command", ROOST_FUNCTION_NAME="wc", ROOST_COMMAND='["sh", "wc.sh"]',
                            ROOST_FUNCTION_DIR=os.path.join(CMD_FUNCTIONS, "wc")))
        self.assertTrue(s.ready_line().startswith("ROOST_READY "))
        with Conn(s.port) as c:
            status, _, body = c.request("POST", "/", "one two\n")
        self.assertEqual((status, json.loads(body)), (200, {"lines": 1, "words": 2, "bytes": 8}))


class RefusedSpare(unittest.TestCase):
    def run_spare(self, line):
        s = Spare()
        self.addCleanup(s.stop)
        if line is None:
            s.proc.stdin.close()
        else:
            s.assign(line)
        return s.finish()

    def test_stdin_closed_before_an_assignment_exits_quietly(self):
        self.assertEqual(self.run_spare(None), (0, ""))

    def test_a_line_that_is_not_an_assignment_says_what_is_expected(self):
        for line in ("not json", '{"kind": "python"}', '{"kind": "python", "env": {"A": 1}}', "[1, 2]"):
            code, err = self.run_spare(line)
            self.assertEqual(code, 2, line)
            self.assertIn('the assignment is not {"kind": "python"|"command", "env"', err)

    def test_an_assignment_with_bad_settings_is_refused_like_a_bad_start(self):
        code, err = self.run_spare(assignment("python", ROOST_FUNCTION_DIR=FIXTURES))
        self.assertEqual(code, 2)
        self.assertIn("ROOST_FUNCTION_FILE is not set", err)
        code, err = self.run_spare(assignment("ruby", ROOST_FUNCTION_DIR=FIXTURES))
        self.assertEqual(code, 2)
        self.assertIn("unknown kind 'ruby'", err)


if __name__ == "__main__":
    unittest.main()
