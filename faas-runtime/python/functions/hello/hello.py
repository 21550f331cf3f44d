async def handle(request):
    return {"Hello": "World"}
