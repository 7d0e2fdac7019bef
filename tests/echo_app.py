"""A tiny ASGI app for load-generator tests: echoes JSON bodies; {"fail": true} answers 500."""

from __future__ import annotations

import json
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    payload = json.loads(body) if body else {}
    status = 500 if isinstance(payload, dict) and payload.get("fail") else 200
    out = json.dumps({"echo": payload}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
