"""Test harness: the runtime as a real subprocess on a free loopback port, and a small raw
HTTP/1.1 client (http.client hides keep-alive, chunking and pipelining)."""

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

try:
    import starlette  # noqa: F401  the runtime serves Python functions with it
except ImportError as e:
    raise ImportError(f"the runtime's tests need Starlette, and {sys.executable} cannot import it ({e}): run them "
                      "with /usr/bin/python3 after apt install python3-starlette python3-multipart "
                      "(scripts/test.sh picks it), or pip install starlette python-multipart") from None

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIME_DIR = os.path.dirname(HERE)
FIXTURES = os.path.join(HERE, "fixtures")
SEED_STYLE = os.path.join(FIXTURES, "seed-style", "python", "functions")
PY_FUNCTIONS = os.path.join(RUNTIME_DIR, "python", "functions")
CMD_FUNCTIONS = os.path.join(RUNTIME_DIR, "command", "functions")
# The folders `site` put on this interpreter's path (site- or dist-packages, where
# Starlette is): a runtime started with -S (as the spares are) finds them on PYTHONPATH,
# as the orchestrator's process runtime arranges.
SITE_DIRS = [p for p in sys.path if p.endswith(("-packages", ".egg")) and os.path.isdir(p)]
START_TIMEOUT = 10.0
IO_TIMEOUT = 10.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runtime_env(folder, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env.update(PYTHONPATH=os.pathsep.join([RUNTIME_DIR, *SITE_DIRS]), PYTHONDONTWRITEBYTECODE="1", ROOST_BIND="127.0.0.1",
               ROOST_FUNCTION_NAME="t", ROOST_FUNCTION_DIR=folder)
    env.update(extra)
    return env


class Replica:
    """A started runtime: ``port``, ``ready_line``, ``stderr_text()``, ``stop()``."""

    def __init__(self, kind, folder, port=None, **env):
        self.port = free_port() if port is None else port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roost_runtime", kind], env=runtime_env(folder, PORT=str(self.port), **env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stderr = []
        self._stdout = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._stderr.append), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._stdout.put), daemon=True).start()
        try:
            line = self._stdout.get(timeout=START_TIMEOUT)
        except queue.Empty:
            line = b""
        self.ready_line = line.decode()
        if not self.ready_line.startswith("ROOST_READY "):
            self.stop()
            raise AssertionError(f"no readiness line (got {line!r}); stderr:\n{self.stderr_text()}")
        if self.port == 0:
            self.port = int(self.ready_line.split()[1])

    @staticmethod
    def _pump(stream, sink):
        for line in iter(stream.readline, b""):
            sink(line)
        sink(b"")  # end of stream

    def stdout_rest(self, timeout=5.0):
        """What stdout carried after the readiness line, up to its end."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            line = self._stdout.get(timeout=max(0.01, deadline - time.monotonic()))
            if line == b"":
                return b"".join(out)
            out.append(line)

    def stderr_text(self):
        return b"".join(self._stderr).decode(errors="replace")

    def wait_stderr(self, needle, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.stderr_text():
                return True
            time.sleep(0.01)
        return False

    def connect(self):
        return Conn(self.port)

    def request(self, method, path, body=b"", headers=None):
        """One request on a fresh connection: (status, headers, body)."""
        with self.connect() as c:
            return c.request(method, path, body, headers)

    def json(self, method, path, body=b"", headers=None):
        status, headers, data = self.request(method, path, body, headers)
        return status, headers, json.loads(data)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except Exception:
                pass


def python_function(folder, file, **env):
    return Replica("python", os.path.join(PY_FUNCTIONS, folder), ROOST_FUNCTION_FILE=file, **env)


def fixture(file, **env):
    return Replica("python", FIXTURES, ROOST_FUNCTION_FILE=file, **env)


class Conn:
    """A raw HTTP/1.1 connection: send requests, read responses (Content-Length bodies)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def send(self, data):
        self.sock.sendall(data)

    def send_request(self, method, path, body=b"", headers=None):
        if isinstance(body, str):
            body = body.encode()
        headers = dict(headers or {})
        headers.setdefault("Host", "test")
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in headers):
            headers["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.send(head.encode() + body)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk

    def read_head(self):
        """(status, headers with lower-case names); ``header_list`` keeps every line's
        (name, value), repeated names too."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        self.header_list = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            self.header_list.append((k.strip().lower(), v.strip()))
        return status, dict(self.header_list)

    def _read_line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_chunks(self):
        """The chunks of a chunked body, each with the time it was complete:
        [(monotonic time, bytes), ...], up to the last chunk."""
        chunks = []
        while True:
            size = int(self._read_line().split(b";")[0], 16)
            if size == 0:
                self._read_line()  # the empty line after the last chunk (no trailers)
                return chunks
            while len(self.buf) < size + 2:
                self._fill()
            chunks.append((time.monotonic(), self.buf[:size]))
            assert self.buf[size:size + 2] == b"\r\n", self.buf[:size + 2]
            self.buf = self.buf[size + 2:]

    def read_response(self, head_only=False):
        """(status, headers with lower-case names, body); a chunked body is joined."""
        status, headers = self.read_head()
        if not head_only and headers.get("transfer-encoding") == "chunked":
            return status, headers, b"".join(c for _, c in self.read_chunks())
        n = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def request(self, method, path, body=b"", headers=None):
        self.send_request(method, path, body, headers)
        return self.read_response(head_only=method == "HEAD")

    def closed_by_server(self, timeout=2.0):
        """True when the server closes the connection (EOF) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except socket.timeout:
            return False
        except ConnectionError:
            return True
        finally:
            self.sock.settimeout(IO_TIMEOUT)
