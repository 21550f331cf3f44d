"""whoami: names the replica that answered (its host name and process id), after an
optional wait of ?ms= milliseconds (at most 10 s); for load-balancing and scaling checks."""

import asyncio
import os
import socket

from roost_runtime import HttpError

REPLICA = f"{socket.gethostname()}:{os.getpid()}"


async def handle(request):
    raw = request.query.get("ms", "0")
    try:
        ms = float(raw)
        if not 0 <= ms <= 10_000:
            raise ValueError
    except ValueError:
        raise HttpError(400, f"ms must be a number of milliseconds from 0 to 10000, got {raw!r}") from None
    if ms:
        await asyncio.sleep(ms / 1000)
    return {"replica": REPLICA}
