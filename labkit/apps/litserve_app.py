"""The LitServe server: the wide model behind a ``LitAPI``, batching, Prometheus metrics.

Run by ``labkit.services.litserve`` as ``python -m labkit.apps.litserve_app --port P ...``.
LitServe (Lightning AI) puts a FastAPI/uvicorn front in one process and the model in an
inference worker process; the front queues requests and hands the worker **batches** of up to
``max_batch_size``, waiting at most ``batch_timeout`` seconds for one to fill. The ``LitAPI``
below is what a user writes:

- ``setup``: once per worker — load the model;
- ``decode_request``: one request body → one input. Its type annotation (``DigitRequest``, a
  pydantic model) makes the front validate every request on its own: a bad body is answered
  ``422`` with the reason before it reaches the worker, so it cannot spoil a batch;
- ``predict``: a **list** of inputs (a batch) → a list of outputs;
- ``encode_response``: one output → one JSON answer (``{"label": k, "batch_size": n}``).

``/metrics`` is Prometheus text: ``litserve_requests_total`` (items predicted) and
``litserve_batches_total`` (model calls), counted by a LitServe ``Logger`` in multiprocess mode.
Fewer batches than requests = batching happened.

This module has no ``from __future__ import annotations`` on purpose: LitServe reads
``decode_request``'s annotation at run time to build the endpoint.

Shown in 13.
"""

import argparse
import os
from typing import Any

import litserve as ls
from pydantic import BaseModel, Field

__all__ = ["DigitRequest", "MetricsLogger", "WideDigitAPI", "build_server", "main"]

PIXELS = 64


class DigitRequest(BaseModel):
    """One 8×8 digit, flattened: exactly 64 numbers."""

    pixels: list[float] = Field(min_length=PIXELS, max_length=PIXELS)


class MetricsLogger(ls.Logger):
    """Counts items and batches as Prometheus counters (the logger runs in its own process)."""

    def __init__(self) -> None:
        super().__init__()
        self._counters: dict[str, Any] = {}

    def process(self, key: str, value: Any) -> None:
        from prometheus_client import Counter

        if not self._counters:
            self._counters = {
                "requests": Counter("litserve_requests", "Items predicted (one per request)"),
                "batches": Counter("litserve_batches", "Model calls (one per batch)"),
            }
        if key == "batch_size":
            self._counters["requests"].inc(float(value))
            self._counters["batches"].inc()


class WideDigitAPI(ls.LitAPI):  # type: ignore[misc,unused-ignore]
    """The wide digit model (``labkit.models.wide``) as a LitAPI: setup, decode_request, predict (a batch), encode_response. Shown in 13."""

    def __init__(self, width: int, threads: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.width = width
        self.threads = threads

    def setup(self, device: str) -> None:
        import torch

        from labkit.models import wide

        torch.set_num_threads(self.threads)
        self.model = wide.wide_trained(self.width)  # the readout was fitted and cached by the caller

    def decode_request(self, request: DigitRequest) -> Any:
        import numpy as np

        return np.asarray(request.pixels, dtype=np.float32)

    def predict(self, x: Any) -> list[tuple[int, int]]:
        import numpy as np

        batch = np.stack(list(x)).reshape(-1, 1, 8, 8) if isinstance(x, list) else np.asarray(x).reshape(-1, 1, 8, 8)
        labels = self.model.predict(batch)
        self.log("batch_size", len(batch))
        return [(int(k), len(batch)) for k in labels]

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs  # predict stacks them; keeps (label, batch size) pairs one per request

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any) -> dict[str, int]:
        if isinstance(output, list):  # max_batch_size 1: predict got one input, answered a list of one
            output = output[0]
        label, batch_size = output
        return {"label": label, "batch_size": batch_size}


def build_server(width: int, max_batch_size: int, batch_timeout_s: float, threads: int = 1) -> Any:
    """The ``LitServer``: one CPU worker, batching as given, ``/metrics`` mounted. Shown in 13."""
    from prometheus_client import CollectorRegistry, make_asgi_app, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    api = WideDigitAPI(width, threads, max_batch_size=max_batch_size, batch_timeout=batch_timeout_s)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, loggers=MetricsLogger(), timeout=60, track_requests=False)
    server.app.mount("/metrics", make_asgi_app(registry=registry))
    return server


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, serve until SIGTERM."""
    parser = argparse.ArgumentParser(description="LitServe serving the wide digit model")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=1)
    parser.add_argument("--batch-timeout-ms", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from labkit.runtime.process import die_with_parent

    die_with_parent()
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        raise SystemExit("set PROMETHEUS_MULTIPROC_DIR to an empty directory (labkit.services.litserve does)")
    server = build_server(args.width, args.max_batch_size, args.batch_timeout_ms / 1000, args.threads)
    server.run(host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
