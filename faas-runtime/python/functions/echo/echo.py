"""echo: answers what it received (method, path, query, some headers, body)."""

SHOWN_HEADERS = ("content-type", "content-length", "user-agent", "x-request-id", "x-forwarded-for")


async def handle(request):
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": {k: v for k, v in request.headers.items() if k in SHOWN_HEADERS},
        "body": await request.text(),
        "request_id": request.request_id,
    }
