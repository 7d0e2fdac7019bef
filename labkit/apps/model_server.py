"""The digit-CNN model server that one container (one pod, one replica) runs: FastAPI + uvicorn.

    POST /predict   {"inputs": [[64 floats in 0..1], ...], "tta": 1}  (inputs may be N×8×8 too)
                    -> {"predictions": [int, ...], "replica": "<host>:<pid>"}
                    ``tta`` > 1 is test-time augmentation: each digit is also classified shifted
                    by one pixel in ``tta - 1`` ways and the logits are averaged (more real
                    inference per request, the same small payload)
    GET  /healthz   liveness: 200 while the process serves at all
    GET  /readyz    readiness: 503 until the model is loaded, warmed up and the readiness delay
                    (LABKIT_READY_DELAY_S, like initialDelaySeconds) has passed; then 200
    GET  /metrics   the replica's own counters in the Prometheus text format, what a Prometheus
                    adapter or KEDA scrapes for a Pods-metric HPA:
                      labkit_inflight_requests        gauge: /predict requests accepted, not answered
                      labkit_inflight_seconds_total   counter: the gauge integrated over time, so
                                                      Δ/Δt is its exact average over a window
                                                      (``avg_over_time`` without sampling)
                      labkit_requests_total           counter: /predict requests answered

Inference runs one request at a time (one core, one torch thread) in a worker thread, so the event
loop keeps accepting requests: the waiting ones are in flight and counted, as a real server counts
its queue.

Settings come from the environment, as in a Kubernetes pod spec:
    LABKIT_MODEL_PATH       weights (a state_dict .pt) baked into the image or mounted; unset:
                            labkit's cached trained DigitCNN (trained once if missing)
    LABKIT_MODEL_ARCH       cnn (default) or mlp: which digit model (one Deployment per model)
    LABKIT_READY_DELAY_S    extra seconds before /readyz says ready (default 0)
    LABKIT_TORCH_THREADS    torch intra-op threads (default 1: one replica, one core)

Run it: ``uvicorn labkit.apps.model_server:app --port 8000`` (the Dockerfile in deploy/ does
this; labkit.kube.emulator starts one per replica). Used in 08.
"""

import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

__all__ = ["MAX_BATCH", "MAX_BODY_BYTES", "MAX_TTA", "InflightCounter", "app", "augment", "create_app", "export_model", "load_model"]

MAX_BATCH = 4096
MAX_BODY_BYTES = 8 * 2**20  # MAX_BATCH digits as JSON fit; a larger body gets 413 before parsing
MAX_TTA = 64
_SHIFTS = [(dy, dx) for dy in (0, -1, 1) for dx in (0, -1, 1)]
_DIGIT_PIXELS = 64


def load_model(path: str | Path | None = None) -> Any:
    """The digit model to serve (LABKIT_MODEL_ARCH): weights from ``path`` (or LABKIT_MODEL_PATH),
    else labkit's cached trained one."""
    import torch

    from labkit import config
    from labkit.models import digit_nets

    cfg = digit_nets.TrainConfig(arch=config.model_arch())  # type: ignore[arg-type]
    path = path or config.model_path()
    if path is None:
        return digit_nets.trained(cfg, progress=False)
    model = digit_nets.build(cfg)
    model.load_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True))
    return model.eval()


def export_model(path: str | Path) -> Path:
    """Write the trained model's weights to ``path`` (the Docker build bakes them in this way)."""
    import torch

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(load_model().state_dict(), out)
    return out


def augment(batch: Any, tta: int) -> Any:
    """Stack ``tta`` copies of an (N, 1, 8, 8) batch, the k-th shifted by one of 9 one-pixel moves."""
    import torch

    copies = []
    for k in range(tta):
        dy, dx = _SHIFTS[k % len(_SHIFTS)]
        copies.append(torch.roll(batch, shifts=(dy, dx), dims=(2, 3)) if (dy, dx) != (0, 0) else batch)
    return torch.cat(copies)


class InflightCounter:
    """ASGI middleware: counts /predict requests in flight and integrates the count over time."""

    def __init__(self, app: Any, path: str = "/predict") -> None:
        self.app = app
        self.path = path
        self.inflight = 0
        self.inflight_seconds = 0.0
        self.answered = 0
        self._last = time.monotonic()

    def _advance(self, change: int) -> None:
        t = time.monotonic()
        self.inflight_seconds += self.inflight * (t - self._last)
        self._last = t
        self.inflight += change

    def prometheus(self) -> str:
        """The counters in the Prometheus text exposition format."""
        self._advance(0)
        return (
            "# TYPE labkit_inflight_requests gauge\n"
            f"labkit_inflight_requests {self.inflight}\n"
            "# TYPE labkit_inflight_seconds_total counter\n"
            f"labkit_inflight_seconds_total {self.inflight_seconds:.6f}\n"
            "# TYPE labkit_requests_total counter\n"
            f"labkit_requests_total {self.answered}\n"
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            if scope["type"] == "http" and scope["path"] == "/metrics":
                body = self.prometheus().encode()
                await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain; version=0.0.4")]})
                await send({"type": "http.response.body", "body": body})
                return
            await self.app(scope, receive, send)
            return
        self._advance(+1)
        try:
            await self.app(scope, receive, send)
        finally:
            self._advance(-1)
            self.answered += 1


def create_app() -> Any:
    """Build the FastAPI app: the model loads in the lifespan, so /healthz answers before /readyz."""
    import asyncio

    import numpy as np
    import torch
    from fastapi import FastAPI, HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel

    from labkit import config

    state: dict[str, Any] = {"ready_at": None, "model": None, "served": 0}
    one_at_a_time = asyncio.Semaphore(1)
    replica = f"{socket.gethostname()}:{os.getpid()}"

    class PredictRequest(BaseModel):
        inputs: list[Any]
        tta: int = 1

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        torch.set_num_threads(config.model_server_threads())
        model = load_model()
        with torch.inference_mode():
            model(torch.zeros(8, 1, 8, 8))  # warm-up, as a real server would before going ready
        state["model"] = model
        state["ready_at"] = time.monotonic() + config.ready_delay_s()
        yield

    api = FastAPI(title="labkit digit model server", lifespan=lifespan)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Any, exc: RequestValidationError) -> JSONResponse:
        # name the field and the problem; never echo the input (NaN in it would break the JSON answer)
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        text = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg', 'invalid')}" for e in errors[:5])
        return JSONResponse(status_code=422, content={"detail": text or "invalid request", "errors": errors})

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "replica": replica}

    @api.get("/readyz")
    async def readyz() -> Any:
        ready_at = state["ready_at"]
        if ready_at is None or time.monotonic() < ready_at:
            return JSONResponse({"status": "starting", "replica": replica}, status_code=503)
        return {"status": "ready", "replica": replica, "served": state["served"]}

    @api.post("/predict")
    async def predict(req: PredictRequest) -> dict[str, Any]:
        # one request at a time per replica, as one CPU core would; the others wait in flight
        if state["model"] is None:
            raise HTTPException(503, "model not loaded yet")
        try:
            x = np.asarray(req.inputs, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise HTTPException(422, f"inputs must be numbers: {exc}") from exc
        if x.size and not np.isfinite(x).all():
            raise HTTPException(422, "inputs must be finite numbers: NaN or infinity found")
        if any(isinstance(v, (bool, str)) for v in _leaves(req.inputs)):
            raise HTTPException(422, "inputs must be numbers, not booleans or strings")
        if x.size == 0 or x.size % _DIGIT_PIXELS or x.size // _DIGIT_PIXELS > MAX_BATCH:
            raise HTTPException(422, f"inputs must hold 1..{MAX_BATCH} digits of 64 pixels, got shape {list(x.shape)}")
        if not 1 <= req.tta <= MAX_TTA:
            raise HTTPException(422, f"tta must be in 1..{MAX_TTA}, got {req.tta}")
        batch = torch.from_numpy(x.reshape(-1, 1, 8, 8))

        def infer() -> list[int]:
            with torch.inference_mode():
                logits = state["model"](augment(batch, req.tta))
                return list(logits.view(req.tta, len(batch), -1).mean(dim=0).argmax(dim=1).tolist())

        async with one_at_a_time:
            preds = await asyncio.to_thread(infer)
        state["served"] += 1
        return {"predictions": preds, "replica": replica}

    from labkit.apps.body_limit import BodyLimit

    return InflightCounter(BodyLimit(api, MAX_BODY_BYTES))


def _leaves(xs: Any, limit: int = MAX_BATCH * _DIGIT_PIXELS) -> Any:
    """The scalars of a nested list, depth first (stops after ``limit``)."""
    stack, n = [xs], 0
    while stack and n < limit:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        else:
            n += 1
            yield x


def __getattr__(name: str) -> Any:  # ``uvicorn labkit.apps.model_server:app`` builds it lazily
    if name == "app":
        return create_app()
    raise AttributeError(name)
