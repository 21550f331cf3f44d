async def handle(request):
    body = await request.text()
    return {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": {k.lower(): v for k, v in request.headers.items()
                    if k.lower() in ("content-type", "x-request-id", "user-agent")},
        "body": body,
    }
