"""The capstone's thin HTTP front: one FastAPI/uvicorn app in front of a function-style option.

Notebook 14 reaches every option over HTTP with the same client. Options that are Python
functions — the model in the server process, a process pool, Ray tasks — sit behind this front,
which does nothing but decode the JSON, call the option and encode the answer::

    POST /predict/cnn   {"inputs": [[64 floats]], "tta": 1}  →  {"predictions": [k]}
    POST /predict/wide  (the same body)                       →  the wide model's classes

``--backend``: ``null`` (no model at all: the same JSON in and out, the *null-server ceiling*),
``in-process`` (the model runs in the front's threads), ``pool`` (the recovering
``ResilientPool`` of notebook 05), ``ray-tasks`` (one ``@ray.remote`` task per request, spread over the nodes, on a Ray
started by the front, or the cluster at ``RAY_ADDRESS``; its answers also say which Ray node
computed them: ``"worker": "ray node head"``). Started by ``labkit.services.front``. Used in 14 and ``labkit bench capstone``.
"""

from __future__ import annotations

import argparse
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from starlette.requests import Request  # at module level: FastAPI resolves the route's annotations here

__all__ = ["BACKENDS", "WORKLOADS", "classify", "classify_on_node", "create_app", "main"]

BACKENDS = ("null", "in-process", "pool", "ray-tasks")
WORKLOADS = ("cnn", "wide")
_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _model(workload: str) -> Any:
    with _LOCK:
        if workload not in _MODELS:
            import torch

            from labkit.models import digit_nets, wide

            torch.set_num_threads(1)
            _MODELS[workload] = wide.wide_trained() if workload == "wide" else digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False)
        return _MODELS[workload]


def classify(workload: str, x: np.ndarray) -> list[int]:
    """Classes of the digits ``x`` (N, 1, 8, 8) by ``workload``'s model, loaded once per process.

    The one function every backend runs: in the front's threads, in a pool worker, in a Ray task.
    """
    model = _model(workload)
    if workload == "wide":
        return [int(k) for k in model.predict(x)]
    from labkit.models import digit_nets

    return [int(k) for k in digit_nets.predict(model, x)]


def classify_on_node(workload: str, x: np.ndarray) -> tuple[list[int], str]:
    """``classify`` inside a Ray task, and the Ray node it ran on (``services.ray.node_name``)."""
    from labkit.services import ray as ray_service

    return classify(workload, x), ray_service.node_name()


def create_app(backend: str = "null", n_workers: int = 2) -> Any:
    """The FastAPI app for one backend (see the module docstring)."""
    from fastapi import FastAPI, HTTPException
    from starlette.concurrency import run_in_threadpool

    from labkit.apps.wire import CODECS
    from labkit.errors import BadInput

    if backend not in BACKENDS:
        raise BadInput(f"backend must be one of {BACKENDS}, got {backend!r}")
    codec = CODECS["model-server"]
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        if backend == "pool":
            from labkit.patterns.pool import ResilientPool

            state["pool"] = ResilientPool(n_workers=n_workers, model_names=("cnn",))
            await run_in_threadpool(state["pool"].call, classify, "cnn", np.zeros((1, 1, 8, 8), np.float32))
        elif backend == "ray-tasks":
            import ray

            from labkit.services import ray as ray_service

            state["ray"] = ray_service.start(num_cpus=n_workers)  # retries a start that times out on a busy machine
            from labkit.apps import front  # by module name, not __main__: Ray then pickles the function by reference

            # SPREAD: requests go round the nodes; Ray's default packs the driver's node first and, at low
            # concurrency, never leaves it (a cluster run answered every request on the head)
            state["task"] = ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD")(front.classify_on_node)
        elif backend == "in-process":
            await run_in_threadpool(classify, "cnn", np.zeros((1, 1, 8, 8), np.float32))
        yield
        if "pool" in state:
            state["pool"].close()
        if "ray" in state:
            state["ray"].stop()

    api = FastAPI(title=f"labkit capstone front ({backend})", lifespan=lifespan)

    @api.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "backend": backend, "pid": os.getpid()}

    @api.post("/predict/{workload}")
    async def predict(workload: str, request: Request) -> dict[str, Any]:
        if workload not in WORKLOADS:
            raise HTTPException(404, f"workload must be one of {WORKLOADS}")
        try:
            x = codec.decode(await request.json())
        except (BadInput, ValueError, KeyError, TypeError) as exc:
            raise HTTPException(400, str(exc)[:200]) from exc
        if backend == "null":
            preds = [0] * len(x)
        elif backend == "in-process":
            preds = await run_in_threadpool(classify, workload, x)
        elif backend == "pool":
            preds = await run_in_threadpool(state["pool"].call, classify, workload, x)
        else:
            preds, node = await state["task"].remote(workload, x)
            return {"predictions": preds, "worker": node}
        return {"predictions": preds}

    return api


def main(argv: list[str] | None = None) -> None:
    """``python -m labkit.apps.front --backend B --port P [--workers N]``: serve on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=BACKENDS, default="null")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.backend, args.workers), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
