"""add: POST {"value1": a, "value2": b} -> {"result": a + b}. Bad input -> 400."""

import math

from roost_runtime import Response

handler_run_config = {"is_return_serialized": True}

USAGE = 'send a JSON object {"value1": <number>, "value2": <number>}'


def number(data, key):
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    return value


async def handle(request):
    data = await request.json()  # not JSON: the runtime answers 400 itself
    if not isinstance(data, dict):
        return Response({"error": USAGE}, status=400)
    try:
        result = number(data, "value1") + number(data, "value2")
    except ValueError as e:
        return Response({"error": f"{e}; {USAGE}"}, status=400)
    return Response({"result": result})
