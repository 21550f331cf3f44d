"""Entry point: ``python3 -m roost_runtime python|command`` (see the package docstring)."""

import asyncio
import importlib.util
import json
import os
import sys

from .http import HttpError, Response, json_response, log, serve


def env_float(name, default):
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        sys.exit(f"roost_runtime: {name}={value!r} is not a number")


def load_python_handler(name, folder, file):
    path = os.path.join(folder, file)
    if not os.path.isfile(path):
        sys.exit(f"roost_runtime: function {name}: handler file {path} not found")
    sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"roost_function_{name.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handle = getattr(module, "handle", None)
    if handle is None:
        sys.exit(f"roost_runtime: function {name}: {path} defines no handle(request)")
    serialized = bool(getattr(module, "handler_run_config", {}).get("is_return_serialized"))

    async def handler(request):
        result = handle(request)
        if hasattr(result, "__await__"):
            result = await result
        if not serialized:
            return Response(result)  # JSON-encoded, as the seed did
        if isinstance(result, Response):
            return result
        if isinstance(result, tuple) and len(result) == 2:
            return Response(result[0], status=result[1])
        return Response(result)

    return handler


def command_handler(name, folder, command, timeout):
    content_type = os.environ.get("ROOST_CONTENT_TYPE")

    async def handler(request):
        env = dict(os.environ)
        env.update({"REQUEST_METHOD": request.method, "REQUEST_PATH": request.path,
                    "QUERY_STRING": request.query_string,
                    "REQUEST_ID": request.headers.get("x-request-id", "")})
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=folder, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(await request.body()), timeout or None)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise HttpError(504, f"the command did not finish within {timeout} s")
        if err:
            log(f"function {name} (stderr): {err.decode(errors='replace').rstrip()}")
        if proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-5:]
            return json_response(500, {"error": f"the command exited with {proc.returncode}",
                                       "function": name, "stderr": tail})
        if content_type:
            return Response(out, content_type=content_type)
        try:
            json.loads(out)
            return Response(out, content_type="application/json")
        except ValueError:
            return Response(out, content_type="text/plain; charset=utf-8")

    return handler


def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else "python"
    name = os.environ.get("ROOST_FUNCTION_NAME", "function")
    folder = os.path.abspath(os.environ.get("ROOST_FUNCTION_DIR", "."))
    port = int(os.environ.get("PORT", "5000"))
    host = os.environ.get("ROOST_BIND", "0.0.0.0")
    timeout = env_float("ROOST_TIMEOUT_S", 0.0)
    max_body = int(env_float("ROOST_MAX_BODY", 10 * 1024 * 1024))
    if kind == "python":
        file = os.environ.get("ROOST_FUNCTION_FILE")
        if not file:
            sys.exit("roost_runtime: set ROOST_FUNCTION_FILE to the handler file (for example hello.py)")
        handler = load_python_handler(name, folder, file)
    elif kind == "command":
        try:
            command = json.loads(os.environ.get("ROOST_COMMAND", ""))
            assert isinstance(command, list) and command and all(isinstance(c, str) for c in command)
        except (ValueError, AssertionError):
            sys.exit('roost_runtime: set ROOST_COMMAND to a JSON list, for example ["sh", "wc.sh"]')
        handler = command_handler(name, folder, command, timeout)
        timeout = 0.0  # the command handler enforces it and kills the process
    else:
        sys.exit(f"roost_runtime: unknown kind {kind!r}: use python or command")
    asyncio.run(serve(name, handler, host, port, max_body, timeout))


if __name__ == "__main__":
    main()
