"""HTTP/1.1 for one function: the request and response objects, request parsing, response
encoding, and the server (keep-alive, body limit, per-request timeout, graceful drain).

Standard library only, and nothing beyond asyncio and json on the start path: modules
needed only on an error path or on first use (traceback, urllib.parse) are imported there.
"""

import asyncio
import json
import os
import signal
import sys
import time

MAX_HEAD = 64 * 1024  # request line and headers together
MAX_HEADERS = 100

REASONS = {
    100: "Continue", 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 409: "Conflict", 410: "Gone", 411: "Length Required", 413: "Content Too Large",
    415: "Unsupported Media Type", 418: "I'm a Teapot", 422: "Unprocessable Content", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def log(message):
    """One line on stderr (the replica's log)."""
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class HttpError(Exception):
    """Answers the caller ``status`` with the JSON ``{"error": message, "function": ...,
    "request_id": ..., **extra}``. A function may raise it, for example
    ``raise HttpError(400, "send a number")``."""

    def __init__(self, status, message, **extra):
        super().__init__(message)
        self.status = int(status)
        self.message = str(message)
        self.extra = extra


class BadRequest(HttpError, ValueError):
    """The request body could not be decoded (400). Also a ValueError, so a function that
    catches ValueError around ``await request.json()`` sees it."""

    def __init__(self, message):
        super().__init__(400, message)


class Headers:
    """Case-insensitive request headers. ``get``/``[]`` give the value (repeated headers
    joined with ", "), ``get_all`` every value; iteration, ``keys()`` and ``items()`` use
    lower-case names; ``raw`` is the list of (name, value) pairs as received."""

    __slots__ = ("raw", "_map")

    def __init__(self, pairs=()):
        self.raw = list(pairs)
        m = {}
        for k, v in self.raw:
            m.setdefault(k.lower(), []).append(v)
        self._map = m

    def get(self, name, default=None):
        values = self._map.get(name.lower())
        return ", ".join(values) if values else default

    def get_all(self, name):
        return list(self._map.get(name.lower(), ()))

    def __getitem__(self, name):
        values = self._map.get(name.lower())
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self):
        return iter(self._map)

    def __len__(self):
        return len(self._map)

    def keys(self):
        return list(self._map)

    def items(self):
        return [(k, ", ".join(v)) for k, v in self._map.items()]

    def __repr__(self):
        return f"Headers({self.raw!r})"


def decode_text(body, content_type):
    """``body`` decoded with the charset of the ``content_type`` header (default UTF-8)."""
    charset = "utf-8"
    for param in (content_type or "").split(";")[1:]:
        k, _, v = param.partition("=")
        if k.strip().lower() == "charset":
            charset = v.strip().strip('"') or "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def parse_json(body):
    """``body`` parsed as JSON; an empty or invalid body raises ``BadRequest`` (400)."""
    if not body.strip():
        raise BadRequest("the request has no body; send JSON")
    try:
        return json.loads(body)
    except ValueError as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None


def split_target(target):
    """``(path, query)`` of a request target, both as received (percent-encoding kept)."""
    if target.startswith(("http://", "https://")):  # absolute form: keep path and query
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        target = rest[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    return path.partition("#")[0] or "/", query.partition("#")[0]


class Request:
    """The request as the server read it, which the command kind gets (a Python
    function gets a Starlette request built from it: ``asgi.Request``).

    - ``method``: "GET", "POST", ...
    - ``path``: the path as received, percent-encoding kept, without the query (Envoy has
      already replaced the ``/<function>`` prefix with ``/``)
    - ``query``: dict, each parameter's first value (``?a=1&a=2`` -> ``{"a": "1"}``), decoded;
      ``query_all``: dict of lists; ``query_string``: the raw query
    - ``headers``: case-insensitive (see ``Headers``)
    - ``request_id``: ``X-Request-Id`` from the request, or one made up for it
    - ``client``: ``(host, port)`` of the peer, or None
    - ``await request.body()``, ``await request.text()``, ``await request.json()``
    """

    def __init__(self, method, target, version, headers, body, request_id, client=None):
        self.method = method
        self.target = target
        self.http_version = version
        self.path, self.query_string = split_target(target)
        self.headers = headers
        self.request_id = request_id
        self.client = client
        self._body = body
        self._query_all = None

    @property
    def query_all(self):
        if self._query_all is None:
            if self.query_string:
                from urllib.parse import parse_qs  # first use only: keeps start-up fast

                self._query_all = parse_qs(self.query_string, keep_blank_values=True)
            else:
                self._query_all = {}
        return self._query_all

    @property
    def query(self):
        return {k: v[0] for k, v in self.query_all.items()}

    @property
    def content_type(self):
        """The media type of the body without parameters, lower case ("" if none)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def body(self):
        return self._body

    async def text(self):
        return decode_text(self._body, self.headers.get("content-type"))

    async def json(self):
        return parse_json(self._body)

    def __repr__(self):
        return f"<Request {self.method} {self.target} id={self.request_id}>"


def _json_bytes(value):
    return json.dumps(value).encode()


def header_items(headers):
    """The (name, value) pairs of ``headers``: a dict, or a list of pairs (a name may
    repeat, as Set-Cookie does)."""
    return list(headers.items()) if hasattr(headers, "items") else list(headers)


class Response:
    """A response of a function's own: ``Response(body, status=200, headers=None)``.

    ``body``: ``str`` (text/plain; charset=utf-8), ``bytes`` (application/octet-stream),
    ``None`` (empty) or anything else, sent as JSON (application/json). A ``Content-Type``
    in ``headers`` or ``content_type=`` overrides the default. ``headers`` is a dict, or
    a list of (name, value) pairs when a name repeats.

    ``stream``, an async iterator of bytes, makes the body the chunks it yields, each sent
    as it comes (chunked); ``body`` is then unused. The server closes it (``aclose``)
    when it stops reading early."""

    __slots__ = ("body", "status", "headers", "stream")

    def __init__(self, body=b"", status=200, headers=None, content_type=None, stream=None):
        if body is None:
            body, default_type = b"", None
        elif isinstance(body, str):
            body, default_type = body.encode(), "text/plain; charset=utf-8"
        elif isinstance(body, (bytes, bytearray, memoryview)):
            body, default_type = bytes(body), "application/octet-stream"
        else:
            body, default_type = _json_bytes(body), "application/json"
        status = int(status)
        if not 100 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP status (100-599)")
        self.body = body
        self.status = status
        self.stream = stream
        self.headers = dict(headers or {}) if headers is None or hasattr(headers, "items") else list(headers)
        content_type = None if stream is not None else content_type or default_type
        if content_type and not any(k.lower() == "content-type" for k, _ in header_items(self.headers)):
            if isinstance(self.headers, dict):
                self.headers["Content-Type"] = content_type
            else:
                self.headers.append(("Content-Type", content_type))

    def __repr__(self):
        size = "streamed" if self.stream is not None else f"{len(self.body)} bytes"
        return f"<Response {self.status} {size}>"


def json_error(status, message, function, request_id, **extra):
    payload = {"error": message, "function": function, "request_id": request_id}
    payload.update(extra)
    return Response(payload, status=status)


# Headers the server writes itself; a function's values for them are dropped.
_OWN_HEADERS = frozenset(("content-length", "connection", "transfer-encoding", "keep-alive"))


def encode(response, request_id, keep_alive, head_only=False, chunked=True):
    """The bytes of a response: status line, headers, body. A streamed response
    (``response.stream``) gets its head only, announcing ``Transfer-Encoding: chunked``
    (or, with ``chunked=False``, for HTTP/1.0, a body that ends with the connection)."""
    status = response.status
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    has_id = False
    for k, v in header_items(response.headers):
        k, v = str(k), str(v)
        lk = k.lower()
        if lk in _OWN_HEADERS:
            continue
        if "\r" in v or "\n" in v or "\r" in k or "\n" in k or ":" in k or not k:
            raise ValueError(f"bad response header {k!r}: {v!r}")
        has_id = has_id or lk == "x-request-id"
        lines.append(f"{k}: {v}")
    if request_id and not has_id:
        lines.append(f"X-Request-Id: {request_id}")
    body = response.body
    if status < 200 or status in (204, 304):
        body = b""
    elif response.stream is not None:
        body = b""
        if chunked:
            lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")
    return head if head_only else head + body


def has_body(status):
    return status >= 200 and status not in (204, 304)


def new_request_id():
    return os.urandom(8).hex()


async def read_head(reader):
    """Reads the request line and headers: (method, target, version, Headers), or None at
    a clean end of the connection. Raises HttpError for a malformed head."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise HttpError(400, "the connection ended inside the request head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431, f"the request head is over {MAX_HEAD} bytes") from None
    # Tolerate empty lines before the request line (RFC 9112 2.2).
    lines = raw.lstrip(b"\r\n").decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HttpError(400, f"bad request line {lines[0][:200]!r}")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, f"{version[:20]!r} is not supported; use HTTP/1.1")
    pairs = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            raise HttpError(400, "folded header lines are not allowed")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"bad header line {line[:200]!r}")
        pairs.append((name, value.strip(" \t")))
    if len(pairs) > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} request headers")
    return method, target, version, Headers(pairs)


def too_large(limit):
    return HttpError(413, f"the request body is over the limit of {limit} bytes")


async def read_body(reader, writer, headers, version, limit):
    """Reads the body (Content-Length or chunked), at most ``limit`` bytes; answers
    ``Expect: 100-continue`` once the body is known to be acceptable."""
    te = headers.get("transfer-encoding")
    cl = headers.get("content-length")
    if te is not None:
        if cl is not None:
            raise HttpError(400, "both Transfer-Encoding and Content-Length are set")
        if te.strip().lower() != "chunked":
            raise HttpError(501, f"Transfer-Encoding {te!r} is not supported; use chunked")
    elif cl is not None:
        values = {v.strip() for v in cl.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise HttpError(400, f"bad Content-Length {cl!r}")
        length = int(values.pop())
        if length > limit:
            raise too_large(limit)
        if length == 0:
            return b""
    else:
        return b""
    if version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if te is None:
        return await reader.readexactly(length)
    chunks, total = [], 0
    while True:
        line = await _read_line(reader)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
            if size < 0 or not size_text or size_text[:1] in b"+-" or b"_" in size_text:
                raise ValueError
        except ValueError:
            raise HttpError(400, f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while await _read_line(reader):  # trailers, up to the empty line
                pass
            return b"".join(chunks)
        total += size
        if total > limit:
            raise too_large(limit)
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "a chunk does not end with CRLF")


async def _read_line(reader):
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise HttpError(400, "a chunk line is too long") from None
    return line.rstrip(b"\r\n")


class _Connection:
    __slots__ = ("writer", "busy")

    def __init__(self, writer):
        self.writer = writer
        self.busy = False


class Server:
    """Serves one function. ``handler`` is ``async handler(request) -> Response``;
    ``make_request(method, target, version, headers, body, request_id, client=)`` builds
    the request object it gets (``Request``, or a Starlette one for Python functions)."""

    def __init__(self, name, handler, *, max_body, timeout, make_request=Request, access_log=False):
        self.name = name
        self.handler = handler
        self.make_request = make_request
        self.max_body = max_body
        self.timeout = timeout
        self.access_log = access_log
        self.in_flight = 0
        self.connections = set()
        self.stopping = False
        self.idle = asyncio.Event()
        self.idle.set()

    async def call(self, request):
        """The function's response, or a JSON error: never raises (except cancellation)."""
        rid = request.request_id
        task = asyncio.ensure_future(self.handler(request))
        try:
            if self.timeout:
                done, _ = await asyncio.wait((task,), timeout=self.timeout)
                if not done:
                    task.cancel()
                    log(f"{self.name}: request {rid} timed out after {self.timeout:g} s")
                    return json_error(504, f"the function did not answer within {self.timeout:g} s",
                                      self.name, rid)
            else:
                await asyncio.wait((task,))
            if task.cancelled():
                raise RuntimeError("the function's task was cancelled")
            response = task.result()
            if not isinstance(response, Response):
                raise TypeError(f"the runtime's handler returned {type(response).__name__}, not a Response")
            return response
        except HttpError as e:
            return json_error(e.status, e.message, self.name, rid, **e.extra)
        except asyncio.CancelledError:
            if not task.done():
                task.cancel()
            raise
        except Exception as e:
            import traceback  # the error path only: keeps start-up fast

            log(f"{self.name}: request {rid} ({request.method} {request.target}) raised:\n"
                + traceback.format_exc().rstrip())
            return json_error(500, f"{type(e).__name__}: {e}", self.name, rid)

    def _begin(self):
        self.in_flight += 1
        self.idle.clear()

    def _end(self):
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    async def connection(self, reader, writer):
        conn = _Connection(writer)
        self.connections.add(conn)
        try:
            while not self.stopping:
                try:
                    head = await read_head(reader)
                except HttpError as e:
                    await self._fail(reader, writer, e, new_request_id())
                    return
                if head is None:
                    return
                conn.busy = True
                method, target, version, headers = head
                rid = headers.get("x-request-id") or new_request_id()
                if version == "HTTP/1.1":
                    keep_alive = "close" not in headers.get("connection", "").lower()
                else:
                    keep_alive = "keep-alive" in headers.get("connection", "").lower()
                if (method == "GET" or method == "HEAD") and target == "/healthz":
                    try:
                        await read_body(reader, writer, headers, version, self.max_body)
                    except HttpError as e:
                        await self._fail(reader, writer, e, rid)
                        return
                    response = Response(b'{"status": "ok"}', headers={
                        "Content-Type": "application/json", "X-Roost-In-Flight": str(self.in_flight)})
                    keep_alive = await self._send(writer, response, rid, keep_alive and not self.stopping,
                                                  method, version)
                else:
                    started = time.monotonic()
                    self._begin()  # in flight until its response is written (a stream too)
                    try:
                        try:
                            body = await read_body(reader, writer, headers, version, self.max_body)
                        except HttpError as e:
                            await self._fail(reader, writer, e, rid)
                            return
                        peer = writer.get_extra_info("peername")
                        request = self.make_request(method, target, version, headers, body, rid,
                                                    client=tuple(peer[:2]) if peer else None)
                        response = await self.call(request)
                        keep_alive = await self._send(writer, response, rid, keep_alive and not self.stopping,
                                                      method, version)
                    finally:
                        self._end()
                    if self.access_log:
                        log(f"{self.name}: {method} {target} {response.status} "
                            f"{(time.monotonic() - started) * 1000:.1f}ms id={rid}")
                conn.busy = False
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away
        except Exception:  # a bug of the runtime's: lose this connection, not the server
            import traceback

            log(f"{self.name}: connection failed:\n{traceback.format_exc().rstrip()}")
        finally:
            self.connections.discard(conn)
            writer.close()

    async def _send(self, writer, response, rid, keep_alive, method, version):
        """Writes ``response``; a streamed one chunk by chunk as its chunks come. Returns
        whether the connection stays open."""
        stream = response.stream
        chunked = version == "HTTP/1.1"
        if stream is not None and not chunked:
            keep_alive = False  # HTTP/1.0: the end of the body is the end of the connection
        try:
            data = encode(response, rid, keep_alive, head_only=method == "HEAD", chunked=chunked)
        except ValueError as e:
            log(f"{self.name}: request {rid}: cannot send the function's response: {e}")
            data = encode(json_error(500, f"the function's response is invalid: {e}", self.name, rid),
                          rid, keep_alive)
            if stream is not None:
                await stream.aclose()
                stream = None
        writer.write(data)
        await writer.drain()
        if stream is None:
            return keep_alive
        try:
            if method != "HEAD" and has_body(response.status):
                async for chunk in stream:
                    if chunk:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            import traceback

            # The head is out: the caller sees the body end early (no last chunk).
            log(f"{self.name}: request {rid}: the function's streamed response failed:\n"
                + traceback.format_exc().rstrip())
            return False
        finally:
            await stream.aclose()
        return keep_alive

    async def _fail(self, reader, writer, error, rid):
        """Answers a request the server refuses (bad head, body too large) and closes the
        connection, reading what the client still sends for a moment first, so that the
        client gets the answer instead of a reset."""
        writer.write(encode(json_error(error.status, error.message, self.name, rid), rid, False))
        try:
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
                if not chunk:
                    break
        except (ConnectionError, TimeoutError, OSError):
            pass

    def close_idle(self):
        """Closes the keep-alive connections that wait for their next request."""
        for conn in list(self.connections):
            if not conn.busy:
                conn.writer.close()


async def serve(server, sock, drain_s, on_ready=None):
    """Serves on the listening socket ``sock``, calls ``on_ready(port)``, serves until
    SIGTERM or SIGINT, then stops accepting, closes idle keep-alive connections, lets
    in-flight requests finish (at most ``drain_s`` seconds; a second signal stops waiting)
    and returns. Past the bound it exits the process at once: a plain ``def`` handler
    still running in a worker thread would otherwise hold the exit up."""
    listener = await asyncio.start_server(server.connection, sock=sock, limit=MAX_HEAD)
    host, port = sock.getsockname()[:2]
    stop = asyncio.Event()
    signals = []

    def on_signal(signum):
        signals.append(signum)
        stop.set()
        if len(signals) == 1:
            log(f"{server.name}: {signal.Signals(signum).name}: draining {server.in_flight} request(s)")
        else:
            log(f"{server.name}: second signal: not waiting any longer")
            server.idle.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    if on_ready is not None:
        on_ready(port)
    log(f"{server.name}: serving on {host}:{port}")
    await stop.wait()
    t = time.monotonic()
    server.stopping = True
    listener.close()
    server.close_idle()
    try:
        await asyncio.wait_for(server.idle.wait(), drain_s)
    except asyncio.TimeoutError:
        pass
    if server.in_flight:
        log(f"{server.name}: {server.in_flight} request(s) still running after "
            f"{time.monotonic() - t:.3f} s; exiting without them")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(0)
    for conn in list(server.connections):
        conn.writer.close()
    log(f"{server.name}: stopped after draining for {time.monotonic() - t:.3f} s")
