"""Roost's function runtime: a small asyncio HTTP/1.1 server that serves one function.

Standard library only, so a replica is ready in tens of milliseconds. Run it as
``python3 -m roost_runtime python|command`` (the contract is in ``faas-runtime/README.md``).

- ``python``: imports ``$ROOST_FUNCTION_FILE`` from ``$ROOST_FUNCTION_DIR`` and calls its
  ``handle(request)`` for every request.
- ``command``: runs ``$ROOST_COMMAND`` (a JSON list) once per request, the body on stdin,
  stdout as the response, stderr to the log.

# Layout

- ``http``: the request and response objects, HTTP/1.1 parsing and encoding, the server
  (keep-alive, body limit, timeout, graceful drain).
- ``kinds``: loading a Python function or wrapping a command, and turning what a function
  returns into a response.
- ``__main__``: the environment, readiness line, exit codes.

What a function may import from here: ``Response``, ``HttpError``.
"""

__all__ = ["BadRequest", "Headers", "HttpError", "Request", "Response"]


def __getattr__(name):
    # Loaded on first use: `python3 -m roost_runtime` listens before it imports asyncio.
    if name in __all__:
        from . import http

        return getattr(http, name)
    raise AttributeError(f"module 'roost_runtime' has no attribute {name!r}")
