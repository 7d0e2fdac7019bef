"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) over the registries.

    GET  /v1/models/{M}[/versions/{V} | /labels/{L}]             model status
    GET  /v1/models/{M}[/versions/{V} | /labels/{L}]/metadata    signature metadata
    POST /v1/models/{M}[/versions/{V} | /labels/{L}]:predict     row ("instances") or columnar ("inputs")
    GET  /monitoring/prometheus/metrics                          request and batch-size counters

Errors are ``{"error": "..."}`` with 400 (bad request) or 404 (no such model/version/label).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import numpy as np

from labkit.apps.tfserving.registry import (
    InvalidArgument,
    ModelRegistry,
    NotFound,
    Servable,
)

__all__ = ["make_app"]

_PATH = re.compile(r"^/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?P<rest>/metadata|:predict)?$")


def _tolist(a: np.ndarray) -> Any:
    return a.tolist()


def _rows_to_columns(instances: list[Any], input_names: list[str]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("'instances' must be a non-empty JSON list")
    if len(input_names) == 1 and not isinstance(instances[0], dict):
        return {input_names[0]: np.asarray(instances)}
    if not all(isinstance(i, dict) for i in instances):
        raise InvalidArgument("with several inputs, every instance must be an object keyed by input name")
    return {k: np.asarray([i.get(k) for i in instances]) for k in input_names}


def _parse(registry: ModelRegistry, version: int | None, label: str | None, body: Any) -> tuple[Servable, str, dict[str, np.ndarray], bool]:
    """A predict body → (servable, signature key, prepared inputs, row format?)."""
    servable = registry.resolve(version, label)
    if not isinstance(body, dict):
        raise InvalidArgument("Request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise InvalidArgument("Missing 'inputs' or 'instances' key" if "instances" not in body else "Request can have either 'instances' or 'inputs', not both")
    sig_name = body.get("signature_name")
    names = list(servable.input_specs(sig_name))
    if "instances" in body:
        try:
            inputs = _rows_to_columns(body["instances"], names)
        except ValueError as exc:
            raise InvalidArgument(f"instances are not a regular (rectangular) array: {exc}") from exc
    else:
        raw = body["inputs"]
        inputs = {names[0]: np.asarray(raw)} if not isinstance(raw, dict) else {k: np.asarray(v) for k, v in raw.items()}
    key, cast = servable.prepare(sig_name, inputs)
    return servable, key, cast, "instances" in body


def _answer(out: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    """Model outputs → TF Serving's JSON: ``predictions`` (row format) or ``outputs`` (columnar)."""
    keys = list(out)
    if row_format:
        if len(keys) == 1:
            return {"predictions": _tolist(out[keys[0]])}
        n = len(next(iter(out.values())))
        return {"predictions": [{k: _tolist(out[k][i]) for k in keys} for i in range(n)]}
    return {"outputs": _tolist(out[keys[0]])} if len(keys) == 1 else {"outputs": {k: _tolist(v) for k, v in out.items()}}


async def _predict(registry: ModelRegistry, version: int | None, label: str | None, body: Any) -> dict[str, Any]:
    """Parse, run and answer one predict request.

    With batching, the request waits for its batch on the event loop (no thread per request), so
    many requests can be in flight at once for the batcher to merge; without, the model call runs
    in a worker thread so calls overlap as in TF Serving.
    """
    from starlette.concurrency import run_in_threadpool

    servable, key, cast, row_format = _parse(registry, version, label, body)
    future = servable.submit(key, cast)
    out = await asyncio.wrap_future(future) if future is not None else await run_in_threadpool(servable.run, key, cast)
    return _answer(out, row_format)


def make_app(registries: dict[str, ModelRegistry]) -> Any:
    """A Starlette app serving TF Serving's REST API for ``registries``."""
    from google.protobuf import json_format
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    from labkit.apps.tfserving.signatures import signature_def_map

    counters = {"requests": 0, "errors": 0}

    def error(status: int, message: str) -> JSONResponse:
        counters["errors"] += 1
        return JSONResponse({"error": message}, status_code=status)

    async def models(request: Request) -> Any:
        m = _PATH.match(request.url.path)
        if m is None:
            return error(404, f"Malformed request: {request.method} {request.url.path}")
        counters["requests"] += 1
        name, rest = m["model"], m["rest"]
        version = int(m["version"]) if m["version"] else None
        label = m["label"]
        registry = registries.get(name)
        try:
            if registry is None:
                raise NotFound(f"Servable not found for request: Latest({name})" if version is None else f"Servable not found for request: Specific({name}, {version})")
            if rest == ":predict":
                if request.method != "POST":
                    return error(405, "predict needs POST")
                try:
                    body = json.loads(await request.body())
                except (ValueError, UnicodeDecodeError) as exc:
                    raise InvalidArgument(f"JSON Parse error: {exc}") from exc
                return JSONResponse(await _predict(registry, version, label, body))
            if request.method != "GET":
                return error(405, f"{request.method} is not allowed here")
            if rest == "/metadata":
                servable = registry.resolve(version, label)
                return JSONResponse(
                    {
                        "model_spec": {"name": name, "signature_name": "", "version": str(servable.version)},
                        "metadata": {"signature_def": json_format.MessageToDict(signature_def_map(servable), preserving_proto_field_name=True)},
                    }
                )
            if label is not None:
                version = registry.resolve(None, label).version
            return JSONResponse({"model_version_status": registry.status(version)})
        except NotFound as exc:
            return error(404, str(exc))
        except InvalidArgument as exc:
            return error(400, str(exc))

    async def metrics(request: Request) -> Any:
        lines = [
            "# TYPE :tensorflow:serving:request_count counter",
            f':tensorflow:serving:request_count{{api="rest"}} {counters["requests"]}',
            f':tensorflow:serving:request_errors{{api="rest"}} {counters["errors"]}',
            "# TYPE :tensorflow:serving:batching_session:processed_batch_size histogram",
        ]
        for name, reg in registries.items():
            for size, count in sorted(reg.stats.sizes.items()):
                lines.append(f':tensorflow:serving:batching_session:processed_batch_size{{model="{name}",size="{size}"}} {count}')
            lines.append(f':tensorflow:serving:batching_session:batches{{model="{name}"}} {reg.stats.batches}')
        return PlainTextResponse("\n".join(lines) + "\n")

    routes = [Route("/monitoring/prometheus/metrics", metrics), Route("/v1/models/{path:path}", models, methods=["GET", "POST", "PUT", "DELETE"])]
    return Starlette(routes=routes)
