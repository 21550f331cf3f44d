from roost_runtime import Response

handler_run_config = {"is_return_serialized": True}


async def handle(request):
    data = await request.json()
    try:
        a, b = data["value1"], data["value2"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            raise TypeError
    except (KeyError, TypeError):
        return Response({"error": 'send {"value1": <number>, "value2": <number>}'}, status=400)
    return Response({"result": a + b})
