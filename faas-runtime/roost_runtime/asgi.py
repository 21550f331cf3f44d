"""Starlette for Python functions: the request a handler gets is a real
``starlette.requests.Request``, built from an ASGI scope over the request the server has
already read; a Starlette response a handler returns is run as the ASGI app it is, and
its messages become the server's response (a streamed one chunk by chunk).

Importing this module imports Starlette (about 30 ms): the runtime does it once before a
Python function is loaded, and a spare does it before it is assigned one."""

import asyncio

from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse

from .http import Response, decode_text, log, parse_json, split_target

__all__ = ["Request", "StarletteResponse", "SyncRequest", "run_response"]


class Receive:
    """The ASGI ``receive`` of a request whose body has been read: the body in one
    message, then ``http.disconnect`` once the response is over (a streamed response
    listens for it)."""

    def __init__(self, body):
        self.body = body
        self.sent = False
        self.over = asyncio.Event()

    async def __call__(self):
        if not self.sent:
            self.sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.over.wait()
        return {"type": "http.disconnect"}


def scope(method, target, version, headers, client):
    """The ASGI HTTP scope of a request as the server read it."""
    from urllib.parse import unquote  # imported by Starlette already

    path, query = split_target(target)
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": version.partition("/")[2],
        "method": method,
        "scheme": "http",
        "path": unquote(path),
        "raw_path": path.encode("latin-1", errors="replace"),
        "query_string": query.encode("latin-1", errors="replace"),
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.raw],
        "client": client,
        "server": None,
        "path_params": {},
    }


class Request(StarletteRequest):
    """What an ``async def handle(request)`` gets: Starlette's ``Request`` (``method``,
    ``url``, ``headers``, ``query_params``, ``path_params``, ``client``, ``cookies``,
    ``await body()``, ``await json()``, ``await form()``, ``stream()``), plus Roost's:

    - ``path``: the path as received (percent-encoding kept; ``url.path`` is decoded)
    - ``query``: dict, the first value of each parameter; ``query_all``: dict of lists;
      ``query_string``: the raw query
    - ``request_id``, ``content_type``, ``target``; ``await text()``, ``await read()``
    - ``await json()`` raises ``BadRequest`` (400 for the caller, also a ValueError) for
      an empty body or invalid JSON, where Starlette's would raise a JSONDecodeError (500)
    """

    def __init__(self, method, target, version, headers, body, request_id, client=None):
        super().__init__(scope(method, target, version, headers, client), Receive(body))
        self._body = body  # read already: Starlette's body(), stream() and form() use it
        self.target = target
        self.path, self.query_string = split_target(target)
        self.request_id = request_id

    @property
    def query(self):
        first = {}
        for k, v in self.query_params.multi_items():
            first.setdefault(k, v)
        return first

    @property
    def query_all(self):
        every = {}
        for k, v in self.query_params.multi_items():
            every.setdefault(k, []).append(v)
        return every

    @property
    def content_type(self):
        """The media type of the body without parameters, lower case ("" if none)."""
        return self.headers.get("content-type", "").partition(";")[0].strip().lower()

    def _decoded_text(self):
        return decode_text(self._body, self.headers.get("content-type"))

    def _parsed_json(self):
        if not hasattr(self, "_json"):  # Starlette's cache attribute
            self._json = parse_json(self._body)
        return self._json

    async def read(self):
        return self._body

    async def text(self):
        return self._decoded_text()

    async def json(self):
        return self._parsed_json()

    def __repr__(self):
        return f"<Request {self.method} {self.target} id={self.request_id}>"


class SyncRequest(Request):
    """What a plain ``def handle(request)`` gets (it runs in a worker thread): the same,
    but ``body()``, ``read()``, ``text()``, ``json()`` and ``form()`` return their values
    instead of awaitables (the body is read before the handler runs; ``form()`` is
    parsed on the event loop)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loop = asyncio.get_running_loop()

    def body(self):
        return self._body

    read = body

    def text(self):
        return self._decoded_text()

    def json(self):
        return self._parsed_json()

    def form(self, **limits):
        return asyncio.run_coroutine_threadsafe(self._get_form(**limits), self._loop).result()


async def run_response(app, request):
    """Runs a Starlette response (any ASGI app) for ``request`` and returns it as the
    server's ``Response`` once its head and first body message are out: whole when that
    message is the last, else streamed (the rest of its body messages, as they come)."""
    messages = asyncio.Queue(1)  # the app waits for the server to take each message
    task = asyncio.ensure_future(app(request.scope, request.receive, messages.put))

    async def next_message():
        """The app's next message; None once it has finished without one."""
        if not messages.empty():
            return messages.get_nowait()
        get = asyncio.ensure_future(messages.get())
        done, _ = await asyncio.wait((get, task), return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        if not messages.empty():
            return messages.get_nowait()
        task.result()  # the app's exception, if it raised one
        return None

    try:
        start = await next_message()
        if start is None or start.get("type") != "http.response.start":
            raise RuntimeError(f"the response {type(app).__name__} sent no http.response.start")
        status = start["status"]
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", ())]
        first = await next_message()
    except BaseException:
        task.cancel()
        request.receive.over.set()
        raise
    if first is None or not first.get("more_body", False):
        # Whole: the app may still run its background tasks.
        request.receive.over.set()
        task.add_done_callback(_log_failure)
        response = Response(None, status, headers)  # no Content-Type the app did not set
        response.body = first.get("body", b"") if first else b""
        return response

    async def rest():
        finished = False
        try:
            yield first.get("body", b"")
            while True:
                message = await next_message()
                if message is None:
                    break
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    break
            finished = True
        finally:
            request.receive.over.set()  # tells the app the response is over
            if finished:
                task.add_done_callback(_log_failure)
            else:
                task.cancel()  # the caller went away, or the app failed

    return Response(None, status, headers, stream=rest())


def _log_failure(task):
    if not task.cancelled() and task.exception() is not None:
        import traceback

        e = task.exception()
        log("the function's response failed after it was sent (a background task?):\n"
            + "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
