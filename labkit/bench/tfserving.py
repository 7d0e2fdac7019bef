"""``labkit bench tfserving``: server-side batching vs none at concurrency 32 (wide timing model).

Both servers run the same SavedModel on the same requests (one 8×8 digit each), one after the
other in this run, loaded over gRPC (the official ``PredictionServiceStub``, TF Serving's
high-throughput API: the target) and over REST (JSON, reported beside it). Also reports
start-to-first-prediction time and the server's RSS. Used in 10, 14.

The figures are those of the server ``labkit.services.tfserving`` starts: labkit's stand-in,
which follows tensorflow_model_server 2.20.0, unless the real binary is on PATH. The JSON
names it (``figures["server"]``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from labkit.bench import Result, Target

if TYPE_CHECKING:
    from labkit.measure.batching import BatchingSweep

__all__ = ["batching_sweep", "grpc_closed_loop", "run"]


def _payloads(n: int) -> list[dict[str, Any]]:
    from labkit.apps.wire import TFServingCodec
    from labkit.data import load_digits

    x = load_digits().x_test
    codec = TFServingCodec()
    return [codec.encode(x[i % len(x)]) for i in range(n)]


def batching_sweep(
    concurrencies: list[int],
    n_requests: int,
    max_batch_size: int = 32,
    batch_timeout_micros: int = 2000,
    progress: bool = True,
    model_base_path: Any = None,
    model_name: str = "digits",
    grpc: bool = False,
) -> BatchingSweep:
    """Closed-loop load at each concurrency against a server without and with batching.

    Returns a ``measure.batching.BatchingSweep``: REST rows (transport ``http``) and, with
    ``grpc=True``, the same load over gRPC (transport ``grpc``); ``servers[label]`` holds each
    server's start-up time, RSS and the batch sizes it formed (its Prometheus metrics).
    Shown in 10 §6.
    """
    from labkit.measure import batching
    from labkit.services import tfserving

    payloads = _payloads(n_requests)

    @contextlib.contextmanager
    def serve(setting: batching.Setting) -> Iterator[batching.Served]:
        with tfserving.start(model_base_path=model_base_path, model_name=model_name, enable_batching=setting.batching, max_batch_size=max_batch_size, batch_timeout_micros=batch_timeout_micros) as tfs:
            transports = {}
            if grpc and tfs.grpc_target:
                target = tfs.grpc_target
                transports["grpc"] = lambda c, n: grpc_closed_loop(target, model_name, concurrency=c, n_requests=n)
            info = lambda: {"server": tfs.label, "startup_s": tfs.started_s, "rss_mb": tfs.rss_mb(), "batch_sizes": _batch_sizes(tfs.url)}
            yield batching.Served(tfs.predict_url(), lambda i: payloads[i], transports=transports, info=info)

    settings = [batching.Setting(1), batching.Setting(max_batch_size, batch_timeout_micros / 1000)]
    return batching.sweep(settings, concurrencies, serve, n_requests, warmup=(4, 20), progress=progress)


def _batch_sizes(url: str) -> dict[int, int]:
    """Batch sizes the server formed, read from its Prometheus metrics."""
    import re

    import httpx

    text = httpx.get(f"{url}/monitoring/prometheus/metrics", timeout=5).text
    return {int(s): int(c) for s, c in re.findall(r'processed_batch_size\{model="[^"]+",size="(\d+)"\} (\d+)', text)}


def _predict_requests(model_name: str, n: int) -> list[Any]:
    """``n`` PredictRequests of one test digit each, built as a client does (``tf.make_tensor_proto``)."""
    import numpy as np

    from labkit.data import load_digits
    from labkit.models import savedmodels

    tf = savedmodels.silence_tensorflow()  # before tensorflow_serving, which imports tensorflow
    from tensorflow_serving.apis import predict_pb2

    x = load_digits().x_test.reshape(-1, 64)
    out = []
    for i in range(n):
        req = predict_pb2.PredictRequest()
        req.model_spec.name = model_name
        req.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.asarray(x[i % len(x)][None], np.float32)))
        out.append(req)
    return out


def grpc_closed_loop(grpc_target: str, model_name: str, concurrency: int, n_requests: int) -> Any:
    """Closed-loop Predict calls (one digit each) with the official stub over ``grpc.aio``: a ``load.LoadResult``."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from labkit.measure import load

    requests = _predict_requests(model_name, n_requests)

    @contextlib.asynccontextmanager
    async def client() -> AsyncIterator[Callable[[int], Awaitable[str | None]]]:
        async with grpc.aio.insecure_channel(grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            async def call(i: int) -> str | None:
                reply = await stub.Predict(requests[i], timeout=30)
                return None if reply.outputs else "empty answer"

            yield call

    return load.closed_loop_calls(grpc_target, client, concurrency=concurrency, n_requests=n_requests)


BATCH_TIMEOUT_MICROS = 10_000  # as TorchServe's max_batch_delay of 10 ms in its benchmark


def run(fast: bool = False) -> Result:
    """Batching gain at concurrency 32 (target ≥ 3×) on the wide timing model, start-up time and RSS.

    The digit CNN costs ~0.1 ms per call, far less than a request's HTTP work, so batching can't
    show on it; the wide model's call is mostly fixed cost (reading its weights), like the large
    models servers batch for. Its answers are not checked (it is untrained, a timing model).
    """
    from labkit import config
    from labkit.models import savedmodels

    n = 320 if fast else 2000
    wide_dir = savedmodels.export_wide(config.cache_dir("tfserving", "bench"))
    sweep = batching_sweep([32], n, model_base_path=wide_dir, model_name="wide", batch_timeout_micros=BATCH_TIMEOUT_MICROS, grpc=True)
    off, on = sweep.row(1, 32, "grpc"), sweep.row(32, 32, "grpc")
    rest_off, rest_on = sweep.row(1, 32), sweep.row(32, 32)
    server = sweep.servers[on.setting.label]
    gain = on.throughput_per_s / off.throughput_per_s
    model = f"wide MLP {savedmodels.WIDE_SQUARE_LAYERS}×{savedmodels.WIDE_WIDTH}², {savedmodels.WIDE_DTYPE}"
    return Result(
        "tfserving",
        [
            Target(f"gRPC: batching throughput gain at concurrency 32 ({model})", gain, "×", ">=", 3.0),
            Target("gRPC: throughput without batching", off.throughput_per_s, "req/s"),
            Target("gRPC: throughput with batching", on.throughput_per_s, "req/s"),
            Target("gRPC: p99 without batching", off.p99_ms, "ms"),
            Target("gRPC: p99 with batching", on.p99_ms, "ms"),
            Target("REST: batching throughput gain at concurrency 32 (JSON; the Python HTTP client on the same 2 cores caps it)", rest_on.throughput_per_s / rest_off.throughput_per_s, "×"),
            Target("REST: throughput without batching", rest_off.throughput_per_s, "req/s"),
            Target("REST: throughput with batching", rest_on.throughput_per_s, "req/s"),
            Target("start to first prediction", server["startup_s"], "s"),
            Target("server RSS (process tree)", server["rss_mb"], "MB"),
        ],
        figures={"server": server.get("server"), "rows": sweep.summaries(), "servers": sweep.servers},
    )
