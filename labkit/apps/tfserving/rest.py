"""TF Serving's REST API as tensorflow_model_server 2.20.0 answers it (an ASGI app over the registries).

Ported from ``model_servers/http_server.cc`` (dispatch, ``ToHTTPStatusCode``),
``http_rest_api_handler.cc`` (routes, verbs) and ``http_rest_api_util.cc`` (URL regexes,
``ParseModelInfo``) at tag 2.20.0; the bodies come from ``labkit.apps.tfserving.json_tensor``.

    POST /v1/models/{M}[/versions/{V} | /labels/{L}]:(predict|classify|regress)
    GET  /v1/models/{M}[/versions/{V} | /labels/{L}][/metadata]
    GET  /monitoring/prometheus/metrics

As upstream: any other path under ``/v1/`` (a malformed URL, an unknown sub-resource, a POST
without a verb or with an unknown one, another HTTP method) is 400 ``Malformed request: METHOD
PATH``; a path outside ``/v1/`` is libevent's 404 page; the URL match ignores case but the verb
and ``metadata`` must be lower case to be dispatched; an unknown version label is 400; a model
status ignores the label. ``:classify``/``:regress`` check the signature as upstream does (so a
model without such signatures gets upstream's 400); one that has them gets 501 here, the
stand-in does not run them. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import unquote

from labkit.apps.tfserving import json_tensor
from labkit.apps.tfserving.registry import ModelRegistry, Servable
from labkit.apps.tfserving.status import InvalidArgument, NotFound, ServingError, Unimplemented, http_status

__all__ = ["make_app", "parse_model_info"]

# http_rest_api_util.cc / .h (2.20.0); RE2 FullMatch == re.fullmatch; RE2's \d is ASCII.
HANDLER_PATH = re.compile(r"(?i)/v1/.*")
PREDICTION_API = re.compile(r"(?i)/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)")
MODEL_STATUS_API = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?")
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
LIBEVENT_404 = "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\nThe requested URL was not found on this server.\n</BODY></HTML>\n"


def parse_model_info(method: str, path: str) -> tuple[bool, str, int | None, str | None, str, str]:
    """ParseModelInfo(): (parsed, model name, version, label, verb, sub-resource)."""
    m = PREDICTION_API.fullmatch(path) if method == "POST" else MODEL_STATUS_API.fullmatch(path) if method == "GET" else None
    name = unquote(m.group(1) or "") if m else ""
    version: int | None = None
    label: str | None = None
    verb = subresource = ""
    if m:
        if m.group(2):
            v = int(m.group(2))
            if v >= 2**63:
                raise InvalidArgument(f"Failed to convert version: {m.group(2)} to numeric.")
            version = v
        if m.group(3):
            label = unquote(m.group(3))
        if method == "POST":
            verb = m.group(4)
        else:
            subresource = m.group(4) or ""
    return m is not None, name, version, label, verb, subresource


def _servable(registries: dict[str, ModelRegistry], name: str, version: int | None, label: str | None) -> Servable:
    """ServerCore::GetServableHandle(): label → version, then the manager's look-up."""
    registry = registries.get(name)
    if registry is None:
        if label is not None:
            raise InvalidArgument(f"Unrecognized servable version label: {label}")
        raise NotFound(f"Servable not found for request: {'Latest(' + name + ')' if version is None else f'Specific({name}, {version})'}")
    return registry.resolve(version, label)


async def _predict(registries: dict[str, ModelRegistry], name: str, version: int | None, label: str | None, body: bytes) -> str:
    """ProcessPredictRequest(): parse (with the signature's dtypes), run, answer.

    With batching, the request waits for its batch on the event loop (no thread per request), so
    many requests can be in flight at once for the batcher to merge; without, the model call runs
    in a worker thread so calls overlap as in TF Serving.
    """
    from starlette.concurrency import run_in_threadpool

    found: list[Servable] = []

    def infomap(signature_name: str) -> dict[str, str]:
        servable = _servable(registries, name, version, label)
        found.append(servable)
        return servable.rest_input_dtypes(signature_name)

    signame, tensors, fmt = json_tensor.fill_predict_request(body, infomap)
    servable = found[-1]
    key, cast = servable.prepare(signame or None, tensors)
    future = servable.submit(key, cast)
    out = await asyncio.wrap_future(future) if future is not None else await run_in_threadpool(servable.run, key, cast)
    return json_tensor.make_json_from_tensors(out, fmt)


def _classify_or_regress(registries: dict[str, ModelRegistry], verb: str, name: str, version: int | None, label: str | None, body: bytes) -> str:
    """ProcessClassifyRequest()/ProcessRegressRequest(): body first, then the servable, then the signature."""
    from labkit.apps.tfserving.signatures import check_classify, check_regress

    signame, _context, _examples = json_tensor.fill_classify_regress_request(body)
    servable = _servable(registries, name, version, label)
    (check_classify if verb == "classify" else check_regress)(servable, signame)
    raise Unimplemented(f"labkit's TF-Serving stand-in does not run {verb} signatures (tensorflow_model_server 2.20.0 would run this one)")


def _status_json(registries: dict[str, ModelRegistry], name: str, version: int | None) -> str:
    """ProcessModelStatusRequest() → GetModelStatusImpl (the label is not consulted)."""
    if not name:
        raise InvalidArgument("Missing model name in request.")
    registry = registries.get(name)
    if registry is None:
        raise NotFound(f"Could not find any versions of model {name}" if version is None else f"Could not find version {version} of model {name}")
    return json.dumps({"model_version_status": registry.status(version)}, indent=1)


def _metadata_json(registries: dict[str, ModelRegistry], name: str, version: int | None, label: str | None) -> str:
    """ProcessModelMetadataRequest() → GetModelMetadataImpl (signature_def only)."""
    from google.protobuf import json_format

    from labkit.apps.tfserving.signatures import signature_def_map

    if not name:
        raise InvalidArgument("Missing model name in request.")
    servable = _servable(registries, name, version, label)
    try:
        sigs = json_format.MessageToDict(signature_def_map(servable), preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26
        sigs = json_format.MessageToDict(signature_def_map(servable), preserving_proto_field_name=True, including_default_value_fields=True)
    return json.dumps({"model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)}, "metadata": {"signature_def": sigs}}, indent=1)


def make_app(registries: dict[str, ModelRegistry]) -> Any:
    """An ASGI app serving TF Serving's REST API for ``registries``."""
    counters = {"requests": 0, "errors": 0}

    async def handle(method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, str | None]:
        """RestApiRequestDispatcher::ProcessRequest: (HTTP status, body, content type)."""
        if method == "OPTIONS":
            if re.search(r"https?://", headers.get("origin", "")):
                return 200, "", None
            return 400, "", None  # FailedPrecondition("Origin header is missing in CORS preflight"), no body
        try:
            parsed, name, version, label, verb, sub = parse_model_info(method, path)
            if method == "POST" and parsed and verb == "predict":
                return 200, await _predict(registries, name, version, label, body), "application/json"
            if method == "POST" and parsed and verb in ("classify", "regress"):
                return 200, _classify_or_regress(registries, verb, name, version, label, body), "application/json"
            if method == "GET" and parsed:
                if sub == "metadata":
                    return 200, _metadata_json(registries, name, version, label), "application/json"
                return 200, _status_json(registries, name, version), "application/json"
            raise InvalidArgument(f"Malformed request: {method} {path}")
        except ServingError as exc:
            counters["errors"] += 1
            return http_status(exc), json_tensor.make_json_from_status(exc), "application/json"
        except Exception as exc:  # the server must answer, never drop the connection
            counters["errors"] += 1
            return 500, json_tensor.make_json_from_status(ServingError(f"{type(exc).__name__}: {exc}", "INTERNAL")), "application/json"

    def metrics() -> str:
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
        return "\n".join(lines) + "\n"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        method = scope["method"]
        raw = scope.get("raw_path") or scope["path"].encode()
        path = raw.decode("latin-1").split("?", 1)[0]  # uri_path(): as sent, not percent-decoded
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        ctype: str | None
        if path == PROMETHEUS_PATH:
            status, text, ctype = 200, metrics(), "text/plain"
        elif HANDLER_PATH.fullmatch(path):
            counters["requests"] += 1
            status, text, ctype = await handle(method, path, body, headers)
        else:
            status, text, ctype = 404, LIBEVENT_404, "text/html"
        data = text.encode()
        out_headers = [(b"content-length", str(len(data)).encode())]
        if ctype:
            out_headers.append((b"content-type", ctype.encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": data})

    return app
