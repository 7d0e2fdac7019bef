"""A request-body size limit as ASGI middleware: a body over the limit gets 413 before any parsing.

    app = BodyLimit(fastapi_app, max_bytes=256 * 1024)

The body is read chunk by chunk, so an oversized one is never buffered whole (at most
``DRAIN_LIMIT_BYTES`` of it is read and dropped; a ``content-length`` above that is refused at
once). Used by the gateway (06), the model server (08) and the balancer.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["DRAIN_LIMIT_BYTES", "MAX_BODY_BYTES", "BodyLimit", "too_large"]

MAX_BODY_BYTES = 256 * 1024  # the default limit
DRAIN_LIMIT_BYTES = 64 * 2**20  # read (and discard) at most this much of an oversized body


def too_large(send: Any, size: int, limit: int = MAX_BODY_BYTES) -> Any:
    """An awaitable that sends the 413 answer naming ``size`` and ``limit``."""
    body = json.dumps({"detail": f"request body is {size} bytes or more; the limit is {limit} bytes"}).encode()

    async def respond() -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return respond()


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413 before any parsing happens."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > DRAIN_LIMIT_BYTES:
            return await too_large(send, int(length), self.max_bytes)
        chunks, size, more = [], 0, True
        while more:  # read the body ourselves, so an oversized one is never buffered whole
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            piece = message.get("body", b"")
            size += len(piece)
            more = message.get("more_body", False)
            if size <= self.max_bytes:
                chunks.append(piece)
            elif size > DRAIN_LIMIT_BYTES:
                break
        if size > self.max_bytes:
            return await too_large(send, size, self.max_bytes)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
