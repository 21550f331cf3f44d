"""``python3 -m roost_runtime python|command|spare``: reads the environment (see README.md),
listens, loads the function, serves it, and prints ``ROOST_READY <port>`` once it does.

``spare`` is a runtime started ahead of time for a pool (the orchestrator's process
runtime keeps one): it listens and imports everything the runtime needs (Starlette too),
then reads the function it is to serve as one JSON line on stdin, ``{"kind": "python",
"env": {...}}``, puts ``env`` into its environment and goes on as ``python`` or
``command`` would. A cold start from a spare skips the interpreter's start and the
imports. It exits quietly if stdin closes before an assignment arrives.

The order matters for start-up time: the socket listens before asyncio (most of the
start-up) is imported, so a readiness probe that arrives early waits in the listen
backlog and is answered the moment the server runs, instead of being refused and retried
an interval later. /healthz answers only once the function is loaded."""

import json
import os
import socket
import sys

USAGE = """usage: python3 -m roost_runtime python|command|spare

Serves one function over HTTP/1.1. Configuration through the environment:
  PORT (5000; 0 picks a free port)  ROOST_BIND (0.0.0.0)  ROOST_FUNCTION_NAME
  ROOST_FUNCTION_DIR (the function's folder; default: the current folder)
  ROOST_FUNCTION_FILE (python: the handler file, e.g. hello.py)
  ROOST_COMMAND (command: a JSON list, e.g. ["sh", "wc.sh"]; default ["./$ROOST_FUNCTION_FILE"])
  ROOST_TIMEOUT_S (per request; 0 or unset: none)  ROOST_MAX_BODY (10m)
  ROOST_DRAIN_S  ROOST_CONTENT_TYPE (command)  ROOST_ACCESS_LOG (0)
Prints "ROOST_READY <port>" on stdout once it serves; logs go to stderr.
spare: listens on ROOST_BIND:PORT, imports the runtime, then reads one line on stdin,
  {"kind": "python"|"command", "env": {"ROOST_FUNCTION_FILE": "hello.py", ...}},
  adds env to its environment and serves that function."""

SIZE_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def bind_address(env, errors):
    """``(host, port)`` from ROOST_BIND and PORT; a bad PORT is added to ``errors``."""
    host = env.get("ROOST_BIND") or "0.0.0.0"
    raw_port = env.get("PORT", "").strip() or "5000"
    port = int(raw_port) if raw_port.isdigit() and int(raw_port) < 65536 else None
    if port is None:
        errors.append(f"PORT={raw_port!r}: expected a port number 0-65535")
    return host, port


class Config:
    """The runtime's settings from the environment; every bad variable is reported."""

    def __init__(self, kind, env):
        errors = []

        def number(var, default, minimum=0.0):
            raw = env.get(var, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
                if not value >= minimum or value == float("inf"):
                    raise ValueError
                return value
            except ValueError:
                errors.append(f"{var}={raw!r}: expected a number of seconds >= {minimum:g}")
                return default

        self.kind = kind
        if kind not in ("python", "command"):
            errors.append(f"unknown kind {kind!r}: use python or command")
        self.name = env.get("ROOST_FUNCTION_NAME") or "function"
        self.folder = os.path.abspath(env.get("ROOST_FUNCTION_DIR") or ".")
        if not os.path.isdir(self.folder):
            errors.append(f"ROOST_FUNCTION_DIR={self.folder!r} is not a folder")
        self.host, self.port = bind_address(env, errors)
        self.timeout = number("ROOST_TIMEOUT_S", 0.0)
        # A request cannot outlast its timeout, so the drain needs no longer than that.
        self.drain_s = number("ROOST_DRAIN_S", self.timeout + 1.0 if self.timeout else 30.0)
        raw_size = env.get("ROOST_MAX_BODY", "").strip().lower()
        self.max_body = 10 << 20
        if raw_size:
            unit = SIZE_UNITS.get(raw_size[-1:], 1)
            digits = raw_size[:-1] if raw_size[-1:] in SIZE_UNITS else raw_size
            if digits.isdigit():
                self.max_body = int(digits) * unit
            else:
                errors.append(f"ROOST_MAX_BODY={raw_size!r}: expected bytes, or a size like 512k, 10m")
        self.access_log = env.get("ROOST_ACCESS_LOG", "").lower() in ("1", "true", "yes", "on")
        self.content_type = env.get("ROOST_CONTENT_TYPE") or None
        self.file = env.get("ROOST_FUNCTION_FILE") or None
        self.command = None
        if kind == "python" and not self.file:
            errors.append("ROOST_FUNCTION_FILE is not set: name the handler file, for example hello.py")
        if kind == "command":
            raw = env.get("ROOST_COMMAND", "")
            if raw.strip():
                try:
                    command = json.loads(raw)
                except ValueError:
                    command = None
                if isinstance(command, list) and command and all(isinstance(c, str) and c for c in command):
                    self.command = command
                else:
                    errors.append(f'ROOST_COMMAND={raw!r}: expected a JSON list of strings, for example ["sh", "wc.sh"]')
            elif self.file:
                self.command = [os.path.join(".", self.file)]
            else:
                errors.append('set ROOST_COMMAND to a JSON list, for example ["sh", "wc.sh"] '
                              '(or ROOST_FUNCTION_FILE to an executable file)')
        self.errors = errors


def log(message):
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def listen(host, port):
    """A listening TCP socket on ``host:port`` (the first address ``host`` resolves to)."""
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if len(argv) > 1:
        print(USAGE, file=sys.stderr)
        return 2
    if argv and argv[0] == "spare":
        return spare()
    config = Config(argv[0] if argv else "python", os.environ)
    if config.errors:
        for e in config.errors:
            log(f"roost_runtime: {e}")
        return 2
    try:
        sock = listen(config.host, config.port)
    except OSError as e:
        log(f"roost_runtime: function {config.name}: cannot listen on {config.host}:{config.port}: {e}")
        return 1
    return run(config, sock)


def spare():
    """Listens and imports, then serves the function the first stdin line assigns."""
    errors = []
    host, port = bind_address(os.environ, errors)
    if errors:
        for e in errors:
            log(f"roost_runtime: spare: {e}")
        return 2
    try:
        sock = listen(host, port)
    except OSError as e:
        log(f"roost_runtime: spare: cannot listen on {host}:{port}: {e}")
        return 1
    # What every function needs, imported before any is known: most of a start.
    import asyncio  # noqa: F401

    from . import http, kinds  # noqa: F401

    try:
        from . import asgi  # noqa: F401  Starlette, for Python functions
    except ImportError:
        pass  # a command function needs none; a Python one exits 1 saying what to install

    start_dir = os.getcwd()
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # stdin closed before an assignment: the pool is being emptied
    try:
        assignment = json.loads(line)
        kind, env = assignment["kind"], assignment["env"]
        if not (isinstance(kind, str) and isinstance(env, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        log('roost_runtime: spare: the assignment is not {"kind": "python"|"command", "env": {"NAME": "value", ...}}: '
            f"{line[:200]!r}")
        return 2
    os.environ.update(env)
    config = Config(kind, os.environ)
    if config.errors:
        for e in config.errors:
            log(f"roost_runtime: {e}")
        return 2
    # As if started for this function: `-m` put the start folder first on sys.path.
    if sys.path and sys.path[0] in ("", start_dir):
        sys.path[0] = config.folder
    sys.argv[1:] = [kind]
    return run(config, sock)


def run(config, sock):
    """Loads the function and serves it on the listening ``sock`` until a signal."""
    import asyncio

    from .http import Request, Server, serve
    from .kinds import LoadError, check_command, command_handler, load_python

    # stdout carries the readiness line only: what the function prints goes to the log.
    ready_out = sys.stdout
    sys.stdout = sys.stderr
    os.chdir(config.folder)
    try:
        if config.kind == "python":
            handler, request_class = load_python(config.name, config.folder, config.file)
            timeout = config.timeout
        else:
            check_command(config.command, config.folder)
            handler = command_handler(config.name, config.folder, config.command, config.timeout,
                                      config.content_type)
            request_class, timeout = None, 0.0  # the command handler kills on its own timeout
    except LoadError as e:
        log(f"roost_runtime: function {config.name}: {e}")
        return 1

    def ready(port):
        try:
            ready_out.write(f"ROOST_READY {port}\n")
            ready_out.flush()
            os.dup2(2, 1)  # anything else written to fd 1 (child processes) goes to the log
        except (OSError, ValueError):
            pass  # nobody reads stdout: the HTTP readiness probe still works

    server = Server(config.name, handler, max_body=config.max_body, timeout=timeout,
                    make_request=request_class or Request, access_log=config.access_log)
    asyncio.run(serve(server, sock, config.drain_s, on_ready=ready))
    return 0


if __name__ == "__main__":
    sys.exit(main())
