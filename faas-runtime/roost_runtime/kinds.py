"""The two kinds of function: ``python`` (a module's ``handle(request)``) and ``command``
(a program run once per request, CGI-like). Each gives the server an
``async handler(request) -> Response`` and the request class it wants."""

import asyncio
import importlib.util
import inspect
import json
import os
import sys

from .http import HttpError, Response, header_items, log


class LoadError(Exception):
    """The function cannot be loaded; the message says why and what to do."""


# --- python -------------------------------------------------------------------------------

def need_starlette():
    """The ``asgi`` module (Starlette's request and responses); LoadError, naming the
    interpreter and the fix, when Starlette cannot be imported."""
    try:
        from . import asgi
    except ImportError as e:
        python = f"{sys.executable} (Python {sys.version.split()[0]})"
        hidden = (" It was started with -S: site-packages folders are seen only when they are on PYTHONPATH."
                  if sys.flags.no_site else "")
        raise LoadError(
            f"Python functions need Starlette, and {python} cannot import it: {e}.{hidden} "
            "Install it: apt install python3-starlette python3-multipart (Debian's /usr/bin/python3), or "
            f"{sys.executable} -m pip install starlette python-multipart; or point ROOST_PYTHON at an "
            "interpreter that has it.") from None
    return asgi


def load_python(name, folder, file):
    """Imports ``folder/file`` and returns ``(handler, request_class)``."""
    asgi = need_starlette()
    path = os.path.join(folder, file)
    if not os.path.isfile(path):
        raise LoadError(f"the handler file {path} does not exist (ROOST_FUNCTION_DIR, ROOST_FUNCTION_FILE)")
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the function's own helper modules, as for a script
    module_name = "roost_function_" + "".join(c if c.isalnum() else "_" for c in name)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses, pickle and typing look modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException as e:
        sys.modules.pop(module_name, None)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        import traceback

        raise LoadError(f"importing {path} failed:\n{traceback.format_exc().rstrip()}") from None
    handle = getattr(module, "handle", None)
    if not callable(handle):
        raise LoadError(f"{path} defines no function handle(request)")
    config = getattr(module, "handler_run_config", None) or {}
    if not isinstance(config, dict):
        raise LoadError(f"{path}: handler_run_config must be a dict, like {{\"is_return_serialized\": True}}")
    serialized = bool(config.get("is_return_serialized", False))
    is_async = inspect.iscoroutinefunction(handle) or inspect.iscoroutinefunction(
        getattr(handle, "__call__", None))

    async def respond(result, request):
        if isinstance(result, asgi.StarletteResponse):
            return await asgi.run_response(result, request)
        return to_response(result, serialized)

    if is_async:
        async def handler(request):
            return await respond(await handle(request), request)
        return handler, asgi.Request

    async def sync_handler(request):
        # A plain def may block: it runs in a worker thread so that /healthz and other
        # requests keep being served.
        result = await asyncio.get_running_loop().run_in_executor(None, handle, request)
        if inspect.isawaitable(result):
            result = await result
        return await respond(result, request)
    return sync_handler, asgi.SyncRequest


def to_response(result, serialized):
    """The function's return value as a Response (a Starlette response is run by the
    handler instead: ``asgi.run_response``).

    Always: a ``Response``; a tuple ``(body, status)`` or ``(body, status, headers)`` with
    an int status 100-599 (other tuples are data, JSON arrays). Otherwise: JSON-encoded,
    or with ``is_return_serialized`` a ``str`` is text/plain, ``bytes``
    application/octet-stream and anything else JSON."""
    if isinstance(result, Response):
        return result
    if isinstance(result, tuple) and len(result) in (2, 3) and type(result[1]) is int \
            and 100 <= result[1] <= 599:
        body, status = result[0], result[1]
        headers = result[2] if len(result) == 3 else None
        if isinstance(body, Response):
            body.status = status
            if headers:
                body.headers = header_items(body.headers) + header_items(headers)
            return body
        if not serialized:
            return Response(json.dumps(body).encode(), status, headers, content_type="application/json")
        return Response(body, status, headers)
    if serialized:
        return Response(result)
    return Response(json.dumps(result).encode(), content_type="application/json")


# --- command ------------------------------------------------------------------------------

STDERR_TAIL = 20  # lines of the command's stderr kept for the 500 answer


def check_command(command, folder):
    """Raises LoadError when the program of ``command`` cannot be found."""
    prog = command[0]
    if os.sep in prog:
        path = prog if os.path.isabs(prog) else os.path.join(folder, prog)
        if not os.path.isfile(path):
            raise LoadError(f"the command's program {prog} does not exist in {folder}")
        if not os.access(path, os.X_OK):
            raise LoadError(f"the command's program {prog} is not executable (chmod +x, or run it "
                            f"through an interpreter: [\"sh\", \"{os.path.basename(prog)}\"])")
        return
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if os.path.isfile(os.path.join(d or ".", prog)) and os.access(os.path.join(d or ".", prog), os.X_OK):
            return
    raise LoadError(f"the command's program {prog!r} is not on PATH")


def command_handler(name, folder, command, timeout, content_type=None):
    """Runs ``command`` in ``folder`` for each request: body on stdin, stdout the response,
    stderr to the log. Non-zero exit: 500; over ``timeout``: killed, 504."""
    base_env = dict(os.environ)

    async def handler(request):
        rid = request.request_id
        env = dict(base_env)
        env.update(REQUEST_METHOD=request.method, REQUEST_PATH=request.path,
                   QUERY_STRING=request.query_string, REQUEST_ID=rid,
                   CONTENT_TYPE=request.headers.get("content-type", ""),
                   CONTENT_LENGTH=str(len(request._body)))
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=folder, env=env, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True)  # its own process group: a timeout kills all of it
        except OSError as e:
            raise HttpError(500, f"cannot run the command {command}: {e}") from None
        tail = []

        async def feed():
            try:
                if request._body:
                    proc.stdin.write(request._body)
                    await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the command did not read all of its input
            finally:
                proc.stdin.close()

        async def pump_stderr():
            pending = b""
            while True:
                chunk = await proc.stderr.read(65536)
                if not chunk:
                    break
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    _stderr_line(line, tail, name, rid)
            if pending:
                _stderr_line(pending, tail, name, rid)

        work = asyncio.gather(feed(), proc.stdout.read(), pump_stderr(), proc.wait())
        try:
            if timeout:
                _, out, _, code = await asyncio.wait_for(work, timeout)
            else:
                _, out, _, code = await work
        except asyncio.TimeoutError:
            _kill(proc)
            await proc.wait()
            raise HttpError(504, f"the command did not finish within {timeout:g} s and was killed",
                            stderr=tail[-STDERR_TAIL:]) from None
        finally:
            if proc.returncode is None:  # cancelled (the runtime is stopping) or timed out
                _kill(proc)
        if code != 0:
            what = f"exited with code {code}" if code > 0 else f"was killed by signal {-code}"
            raise HttpError(500, f"the command {what}", exit_code=code, stderr=tail[-STDERR_TAIL:])
        if content_type:
            return Response(out, content_type=content_type)
        try:
            json.loads(out)
            return Response(out, content_type="application/json")
        except ValueError:
            return Response(out, content_type="text/plain; charset=utf-8")

    return handler


def _stderr_line(line, tail, name, rid):
    text = line.rstrip(b"\r").decode("utf-8", errors="replace")
    log(f"{name} [{rid}]: {text}")
    tail.append(text)
    if len(tail) > 2 * STDERR_TAIL:
        del tail[:-STDERR_TAIL]


def _kill(proc):
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass
