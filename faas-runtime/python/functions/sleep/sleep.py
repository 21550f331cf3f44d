import asyncio

MAX_MS = 30_000


async def handle(request):
    ms = request.query.get("ms")
    if ms is None and (await request.body()):
        ms = (await request.json()).get("ms")
    ms = min(max(int(float(ms or 100)), 0), MAX_MS)
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}
