"""Roost's function runtime: a small asyncio HTTP/1.1 server that runs one function.

Standard library only, so a replica is ready in tens of milliseconds. Kinds:

- ``python``: imports ``$ROOST_FUNCTION_FILE`` from ``$ROOST_FUNCTION_DIR`` and calls its
  ``async def handle(request)`` for every request.
- ``command``: runs ``$ROOST_COMMAND`` (a JSON list) once per request, the body on stdin,
  stdout as the response, stderr to the log.

See ``faas-runtime/README.md`` for the whole contract.
"""

from .http import Response

__all__ = ["Response"]
