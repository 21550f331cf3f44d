"""HTTP/1.1 on asyncio streams: request parsing, responses, keep-alive, and the server
loop that hands each request to a handler. No dependency beyond the standard library."""

import asyncio
import json
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 64 * 1024


class HttpError(Exception):
    """An error answered with a status and a JSON body."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class Headers:
    """Case-insensitive request headers."""

    def __init__(self, pairs):
        self._items = [(k, v) for k, v in pairs]
        self._map = {}
        for k, v in self._items:
            self._map.setdefault(k.lower(), v)

    def get(self, name, default=None):
        return self._map.get(name.lower(), default)

    def __getitem__(self, name):
        return self._map[name.lower()]

    def __contains__(self, name):
        return name.lower() in self._map

    def items(self):
        return list(self._items)

    def __repr__(self):
        return f"Headers({self._items!r})"


class Request:
    """What a function gets: method, path, query, headers and the body.

    ``query`` maps each parameter to its first value; ``query_all`` to every value."""

    def __init__(self, method, target, headers, body):
        split = urlsplit(target)
        self.method = method
        self.path = split.path or "/"
        self.query_string = split.query
        self.query_all = parse_qs(split.query, keep_blank_values=True)
        self.query = {k: v[0] for k, v in self.query_all.items()}
        self.headers = headers
        self._body = body

    async def body(self):
        return self._body

    async def text(self):
        return self._body.decode("utf-8", errors="replace")

    async def json(self):
        if not self._body:
            raise HttpError(400, "the request has no body; send JSON")
        try:
            return json.loads(self._body)
        except ValueError as e:
            raise HttpError(400, f"the request body is not valid JSON: {e}")


class Response:
    """A response a function returns when it sets ``is_return_serialized``."""

    def __init__(self, body=b"", status=200, headers=None, content_type=None):
        if isinstance(body, str):
            body = body.encode()
            content_type = content_type or "text/plain; charset=utf-8"
        elif isinstance(body, (bytes, bytearray)):
            body = bytes(body)
            content_type = content_type or "application/octet-stream"
        else:
            body = json.dumps(body).encode()
            content_type = content_type or "application/json"
        self.body = body
        self.status = int(status)
        self.headers = dict(headers or {})
        self.headers.setdefault("Content-Type", content_type)


REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 411: "Length Required", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 504: "Gateway Timeout"}


def json_response(status, payload):
    return Response(payload, status=status)


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


async def read_request(reader, max_body):
    """Reads one request; None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise HttpError(400, "truncated request head")
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise HttpError(400, f"bad request line {lines[0]!r}")
    pairs = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpError(400, f"bad header line {line!r}")
        pairs.append((name.strip(), value.strip()))
    headers = Headers(pairs)
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        size_total = 0
        while True:
            size_line = await reader.readline()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            size_total += size
            if size_total > max_body:
                raise HttpError(413, f"the request body is over the {max_body}-byte limit")
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        body = b"".join(chunks)
    else:
        length = headers.get("content-length")
        if length:
            try:
                n = int(length)
            except ValueError:
                raise HttpError(400, f"bad Content-Length {length!r}")
            if n > max_body:
                raise HttpError(413, f"the request body is over the {max_body}-byte limit")
            body = await reader.readexactly(n)
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return Request(method, target, headers, body), keep_alive


def encode(response, request_id, keep_alive):
    reason = REASONS.get(response.status, "Status")
    head = [f"HTTP/1.1 {response.status} {reason}"]
    headers = dict(response.headers)
    headers["Content-Length"] = str(len(response.body))
    if request_id:
        headers.setdefault("X-Request-Id", request_id)
    headers["Connection"] = "keep-alive" if keep_alive else "close"
    for k, v in headers.items():
        head.append(f"{k}: {v}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


class Server:
    """Serves one handler: ``async handler(request) -> Response``."""

    def __init__(self, name, handler, max_body, timeout):
        self.name = name
        self.handler = handler
        self.max_body = max_body
        self.timeout = timeout
        self.in_flight = 0
        self.connections = set()
        self.stopping = False
        self.idle = asyncio.Event()
        self.idle.set()

    async def respond(self, request):
        if request.path == "/healthz" and request.method == "GET":
            return json_response(200, {"status": "ok", "in_flight": self.in_flight - 1})
        request_id = request.headers.get("x-request-id", "")
        try:
            if self.timeout:
                return await asyncio.wait_for(self.handler(request), self.timeout)
            return await self.handler(request)
        except HttpError as e:
            return json_response(e.status, {"error": e.message, "function": self.name, "request_id": request_id})
        except asyncio.TimeoutError:
            log(f"function {self.name}: request {request_id or '-'} timed out after {self.timeout} s")
            return json_response(504, {"error": f"the function did not answer within {self.timeout} s",
                                       "function": self.name, "request_id": request_id})
        except Exception as e:  # a crashing function answers 500, the server lives on
            import traceback  # only on the error path: keeps start-up fast

            log(f"function {self.name}: request {request_id or '-'} raised:\n{traceback.format_exc()}")
            return json_response(500, {"error": f"{type(e).__name__}: {e}", "function": self.name,
                                       "request_id": request_id})

    async def connection(self, reader, writer):
        self.connections.add(writer)
        try:
            while not self.stopping:
                try:
                    parsed = await read_request(reader, self.max_body)
                except HttpError as e:
                    writer.write(encode(json_response(e.status, {"error": e.message, "function": self.name}), "", False))
                    await writer.drain()
                    return
                except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                    return
                if parsed is None:
                    return
                request, keep_alive = parsed
                self.in_flight += 1
                self.idle.clear()
                try:
                    response = await self.respond(request)
                finally:
                    self.in_flight -= 1
                    if self.in_flight == 0:
                        self.idle.set()
                keep_alive = keep_alive and not self.stopping
                writer.write(encode(response, request.headers.get("x-request-id", ""), keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except ConnectionError:
            pass
        finally:
            self.connections.discard(writer)
            try:
                writer.close()
            except Exception:
                pass


async def serve(name, handler, host, port, max_body, timeout, drain_s=25.0):
    """Listens, prints ``ROOST_READY <port>``, serves until SIGTERM/SIGINT, then stops
    accepting, lets in-flight requests finish (at most ``drain_s``) and returns."""
    server = Server(name, handler, max_body, timeout)
    listener = await asyncio.start_server(server.connection, host, port, limit=MAX_HEAD, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ROOST_READY {port}", flush=True)
    log(f"function {name}: serving on {host}:{port}")
    await stop.wait()
    server.stopping = True
    listener.close()
    t = time.monotonic()
    try:
        await asyncio.wait_for(server.idle.wait(), drain_s)
    except asyncio.TimeoutError:
        log(f"function {name}: {server.in_flight} request(s) still running after {drain_s} s; exiting")
    for w in list(server.connections):
        try:
            w.close()
        except Exception:
            pass
    log(f"function {name}: stopped after draining for {time.monotonic() - t:.3f} s")
