"""``labkit bench gateway``: the FastAPI gateway under sustained load, and the seed's blocking route.

Closed loop at concurrency 16 against ``POST /predict`` (async polling) for 60 s (fast: 10 s):
0 errors, p50/p99 reported. Then the same load for a shorter time against the seed's
``/predict_blocking`` (``.get()`` inside ``async def``), measured side by side.
Notebook 06 calls ``compare_routes``.
"""

from __future__ import annotations

from typing import Any

from labkit import bench
from labkit.measure.load import LoadResult

__all__ = ["CONCURRENCY", "compare_routes", "payload", "run", "sustained"]

CONCURRENCY = 16


def payload(n_images: int = 8, model: str = "cnn") -> dict[str, Any]:
    """A valid request body: ``n_images`` test digits for ``model``."""
    from labkit import data
    from labkit.apps.wire import GatewayCodec

    return GatewayCodec(model).encode(data.load_digits().x_test[:n_images])


def _check(expected: list[int]) -> Any:
    def check(resp: Any) -> str | None:
        pred = resp.json().get("pred")
        return None if pred == expected else f"wrong answer {pred}"

    return check


def sustained(url: str, route: str = "/predict", duration_s: float = 10.0, concurrency: int = CONCURRENCY, n_images: int = 8) -> LoadResult:
    """Closed-loop load on ``url + route`` for ``duration_s``; every answer is checked."""
    from labkit.apps import celery_tasks as ct
    from labkit.measure import load
    from labkit.models import digit_nets

    body = payload(n_images)
    import numpy as np

    expected = digit_nets.predict(ct.load_models()["cnn"], np.asarray(body["images"], dtype=np.float32).reshape(-1, 1, 8, 8)).tolist()
    return load.closed_loop(url + route, body, concurrency=concurrency, duration_s=duration_s, check=_check(expected))


def compare_routes(url: str, duration_s: float = 5.0, concurrency: int = CONCURRENCY) -> dict[str, LoadResult]:
    """The same load on the async-polling route and on the seed's blocking route, one after the other."""
    return {route: sustained(url, route, duration_s, concurrency) for route in ("/predict", "/predict_blocking")}


def run(fast: bool) -> bench.Result:
    """Redis + 2 workers + the gateway; sustained load, then the blocking route for comparison."""
    from tqdm.auto import tqdm

    from labkit.services import celery as celery_svc
    from labkit.services import gateway, redis

    duration, compare_s = (10.0, 5.0) if fast else (60.0, 15.0)
    result = bench.Result("gateway")
    steps = tqdm(total=3, desc="gateway bench")
    with redis.start() as r:
        workers = celery_svc.start_workers(2, r.url, r.url)
        try:
            with gateway.start(r.url, r.url) as gw:
                steps.update()
                main = sustained(gw.url, "/predict", duration)
                steps.update()
                blocking = sustained(gw.url, "/predict_blocking", compare_s)
                steps.update()
        finally:
            celery_svc.stop_workers(workers)
    steps.close()
    ms = main.stats().ms()
    result.targets += [
        bench.Target(f"errors in {duration:.0f} s at concurrency {CONCURRENCY}", main.errors, "requests", "<=", 0),
        bench.Target("gateway p50", ms["p50"], "ms"),
        bench.Target("gateway p99", ms["p99"], "ms"),
        bench.Target("gateway throughput", main.throughput_per_s, "req/s"),
    ]
    if blocking.ok:
        bms = blocking.stats().ms()
        result.targets += [
            bench.Target("blocking .get() route p50 (seed)", bms["p50"], "ms"),
            bench.Target("throughput async / blocking route", main.throughput_per_s / max(blocking.throughput_per_s, 1e-9), "x"),
        ]
    result.figures = {"async": main.summary(), "blocking": blocking.summary(), "status_async": main.status_counts(), "status_blocking": blocking.status_counts()}
    return result
