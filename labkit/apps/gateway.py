"""The FastAPI gateway in front of the Celery workers: the code that runs inside the uvicorn process.

Routes (``create_app()`` builds them; ``labkit.services.gateway.start`` runs
``uvicorn --factory labkit.apps.gateway:create_app``):

    POST /predict           waits for the task without blocking the event loop (async polling)
    POST /predict_blocking  the seed's version: ``.get()`` inside ``async def`` — blocks the loop
    GET  /healthz           the process answers (liveness)
    GET  /readyz            the broker and the result backend answer (readiness)

Bad input gets a 422 naming the field, a body over ``MAX_BODY_BYTES`` a 413, a result later
than ``timeout_s`` a 504. Used in 06 and ``labkit bench gateway``; its ``predict-route`` region
is Shown in 06 §4.
"""

# no `from __future__ import annotations`: FastAPI reads the route annotations of locally defined models

import asyncio
import time
from typing import Any

__all__ = ["MAX_BODY_BYTES", "MAX_IMAGES", "BodyLimit", "create_app"]

MAX_BODY_BYTES = 256 * 1024  # a request larger than this gets 413 (≈ 400 images as JSON)
MAX_IMAGES = 256
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
_DRAIN_LIMIT_BYTES = 64 * 2**20  # read (and discard) at most this much of an oversized body


def _too_large(send: Any, size: int) -> Any:
    import json

    body = json.dumps({"detail": f"request body is {size} bytes or more; the limit is {MAX_BODY_BYTES} bytes"}).encode()

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
        if length is not None and length.isdigit() and int(length) > _DRAIN_LIMIT_BYTES:
            return await _too_large(send, int(length))
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
            elif size > _DRAIN_LIMIT_BYTES:
                break
        if size > self.max_bytes:
            return await _too_large(send, size)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _error_text(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def create_app() -> Any:
    """Build the FastAPI app (uvicorn's factory). Broker and backend come from CELERY_* env vars."""
    from typing import Annotated, Literal

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    from labkit.apps import celery_tasks as tasks

    Pixel = Annotated[float, Field(ge=0.0, le=1.0)]
    Image = Annotated[list[Pixel], Field(min_length=64, max_length=64, description="an 8×8 image, row by row, pixels in [0, 1]")]

    class PredictRequest(BaseModel):
        """What a client sends: images and which model (or the ensemble) should answer."""

        model_config = ConfigDict(extra="forbid", strict=True)  # "1" or true is not a pixel
        images: Annotated[list[Image], Field(min_length=1, max_length=MAX_IMAGES)]
        model: Literal["cnn", "mlp", "ensemble"] = "cnn"
        timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S)] = DEFAULT_TIMEOUT_S

    api = FastAPI(title="labkit digits gateway")

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse(status_code=422, content={"detail": _error_text(errors), "errors": errors})

    def submit(req: PredictRequest) -> Any:
        if req.model == "ensemble":
            return tasks.ensemble(req.images).apply_async()
        task = tasks.model_1 if req.model == "cnn" else tasks.model_2
        return task.delay(req.images)

    def answer(req: PredictRequest, value: dict[str, Any], t0: float) -> dict[str, Any]:
        return {"model": req.model, "pred": value["pred"], "latency_ms": round((time.perf_counter() - t0) * 1e3, 3)}

    # region: predict-route
    @api.post("/predict")
    async def predict(req: PredictRequest) -> Any:
        """Submit, then poll ``ready()`` with ``await asyncio.sleep`` in between: the loop stays free."""
        t0 = time.perf_counter()
        result = submit(req)
        deadline, delay = t0 + req.timeout_s, 0.001
        while not result.ready():
            if time.perf_counter() > deadline:
                return JSONResponse(status_code=504, content={"detail": f"no result within {req.timeout_s} s (task {result.id})"})
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.02)
        if result.failed():
            return JSONResponse(status_code=502, content={"detail": f"the worker failed: {result.result!r}"})
        return answer(req, result.result, t0)

    @api.post("/predict_blocking")
    async def predict_blocking(req: PredictRequest) -> Any:
        """The seed's version: ``.get()`` blocks the event loop, so requests are served one at a time."""
        t0 = time.perf_counter()
        value = submit(req).get(timeout=req.timeout_s)  # blocks every other request meanwhile
        return answer(req, value, t0)

    # endregion

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True}

    @api.get("/readyz")
    async def readyz() -> Any:
        def check() -> None:
            with tasks.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            client = getattr(tasks.app.backend, "client", None)
            if client is not None:
                client.ping()

        try:
            await asyncio.to_thread(check)
        except Exception as exc:  # the broker or backend is down: not ready
            return JSONResponse(status_code=503, content={"ready": False, "detail": f"{type(exc).__name__}: {exc}"})
        return {"ready": True}

    return BodyLimit(api)
