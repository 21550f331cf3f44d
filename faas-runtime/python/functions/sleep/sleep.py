"""sleep: waits for a while, then answers; for load and drain tests.

The duration in milliseconds comes from ?ms=250 or a JSON body {"ms": 250}; default 100,
capped at MAX_MS."""

import asyncio

from roost_runtime import HttpError

DEFAULT_MS = 100
MAX_MS = 30_000


async def handle(request):
    raw = request.query.get("ms")
    if raw is None and (await request.body()).strip():
        data = await request.json()
        raw = data.get("ms") if isinstance(data, dict) else None
    if raw is None:
        raw = DEFAULT_MS
    try:
        ms = float(raw)
        if not 0 <= ms < float("inf"):
            raise ValueError
    except (TypeError, ValueError):
        raise HttpError(400, f"ms must be a number of milliseconds >= 0, got {raw!r}") from None
    ms = min(ms, MAX_MS)
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": int(ms) if ms.is_integer() else ms}
