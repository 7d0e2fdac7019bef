"""``labkit bench gateway``: the FastAPI gateway under sustained load, next to the two ceilings it sits under.

In one run, on the same Redis and the same 2 workers: (1) the HTTP ceiling — the same load
generator (closed loop, 16 clients) against ``POST /noop`` of the same uvicorn server; (2) the
workers' ceiling — a direct Celery client sending a batch of the same task at once; (3) the
gateway's ``POST /predict`` under that load, with the event loop's lag read from ``/metrics``
(a sleep-drift probe inside the gateway). Targets: throughput ≥ 0.9 × the lower ceiling, p99
loop lag ≤ 5 ms, 0 errors. Then the seed's ``/predict_blocking`` (``.get()`` inside
``async def``) for comparison. Notebook 06 calls ``compare_routes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labkit import bench
from labkit.measure.load import LoadResult

__all__ = ["CONCURRENCY", "Ceilings", "celery_ceiling", "compare_routes", "http_ceiling", "loop_lag", "measure", "payload", "run", "sustained"]

CONCURRENCY = 16
RATIO_TARGET = 0.9
LAG_P99_TARGET_MS = 5.0


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


def http_ceiling(url: str, duration_s: float, concurrency: int = CONCURRENCY, n_images: int = 8) -> LoadResult:
    """The same load generator and body against ``POST /noop`` of the same server: what HTTP alone allows."""
    from labkit.measure import load

    return load.closed_loop(url + "/noop", payload(n_images), concurrency=concurrency, duration_s=duration_s)


def celery_ceiling(n_tasks: int, n_images: int = 8) -> float:
    """Tasks/s of a direct Celery client sending ``n_tasks`` of the gateway's task at once, then collecting all."""
    from labkit.apps import celery_tasks as ct
    from labkit.measure.timing import now

    images = payload(n_images)["images"]
    t0 = now()
    results = [ct.model_1.apply_async((images,)) for _ in range(n_tasks)]
    for r in results:
        r.get(timeout=60)
    return n_tasks / (now() - t0)


def loop_lag(url: str, reset: bool = False) -> dict[str, Any]:
    """The gateway's ``/metrics``: loop-lag percentiles since the last reset, at-least-once counts."""
    import httpx

    return dict(httpx.get(url + "/metrics", params={"reset": int(reset)}, timeout=10).json())


@dataclass
class Ceilings:
    """One run's figures: the gateway and the two ceilings it sits under, measured side by side."""

    gateway: LoadResult
    http: LoadResult
    celery_tasks_per_s: float
    metrics: dict[str, Any]

    @property
    def lower_ceiling(self) -> float:
        return min(self.http.throughput_per_s, self.celery_tasks_per_s)

    @property
    def ratio(self) -> float:
        return self.gateway.throughput_per_s / max(self.lower_ceiling, 1e-9)

    @property
    def lag_p99_ms(self) -> float:
        return float(self.metrics["loop_lag"]["p99_ms"])


def measure(url: str, duration_s: float, n_tasks: int, concurrency: int = CONCURRENCY) -> Ceilings:
    """Warm up, then the HTTP ceiling, the Celery ceiling and the gateway with its loop lag, in turn."""
    sustained(url, "/predict", min(2.0, duration_s), concurrency)  # warm-up: connections, imports, caches
    http = http_ceiling(url, duration_s, concurrency)
    tps = celery_ceiling(n_tasks)
    loop_lag(url, reset=True)
    main = sustained(url, "/predict", duration_s, concurrency)
    return Ceilings(main, http, tps, loop_lag(url))


def run(fast: bool) -> bench.Result:
    """Redis + 2 workers + the gateway: both ceilings, the gateway and its loop lag; then the blocking route."""
    import os

    from tqdm.auto import tqdm

    from labkit.apps import celery_tasks as ct
    from labkit.runtime import process
    from labkit.services import celery as celery_svc
    from labkit.services import gateway, redis

    duration, compare_s, n_tasks = (8.0, 4.0, 1000) if fast else (30.0, 10.0, 4000)
    result = bench.Result("gateway")
    steps = tqdm(total=2, desc="gateway bench")
    before = {i["pid"] for i in process.running()}
    from labkit.measure import probe

    watch = probe.start()
    with redis.start(external=False) as r:
        ct.use(r.url, r.url)
        workers = celery_svc.start_workers(2, r.url, r.url)
        try:
            with gateway.start(r.url, r.url) as gw:
                c = measure(gw.url, duration, n_tasks)
                steps.update()
                blocking = sustained(gw.url, "/predict_blocking", compare_s)
                steps.update()
        finally:
            celery_svc.stop_workers(workers)
    steps.close()
    process.assert_nothing_left(before=before, quiet=True)  # every broker, worker and uvicorn is gone
    main = c.gateway
    ms = main.stats().ms()
    result.targets += [
        bench.Target(f"errors in {duration:.0f} s at concurrency {CONCURRENCY}", main.errors, "requests", "<=", 0),
        bench.Target("gateway throughput", main.throughput_per_s, "req/s"),
        bench.Target("HTTP ceiling (POST /noop, same server and load generator)", c.http.throughput_per_s, "req/s"),
        bench.Target("Celery ceiling (direct client, same workers)", c.celery_tasks_per_s, "tasks/s"),
        bench.Target("gateway / lower ceiling", c.ratio, "x", ">=", RATIO_TARGET),
        bench.Target("event-loop lag p99 under load", c.lag_p99_ms, "ms", "<=", LAG_P99_TARGET_MS),
        bench.Target("gateway p50", ms["p50"], "ms"),
        bench.Target("gateway p99", ms["p99"], "ms"),
    ]
    if blocking.ok:
        bms = blocking.stats().ms()
        result.targets += [
            bench.Target("blocking .get() route p50 (seed)", bms["p50"], "ms"),
            bench.Target("throughput async / blocking route", main.throughput_per_s / max(blocking.throughput_per_s, 1e-9), "x"),
        ]
    result.figures = {
        "async": main.summary(),
        "http_ceiling": c.http.summary(),
        "celery_ceiling_tasks_per_s": round(c.celery_tasks_per_s, 1),
        "metrics": c.metrics,
        "blocking": blocking.summary(),
        "status_async": main.status_counts(),
        "status_blocking": blocking.status_counts(),
        "load_average": list(os.getloadavg()),
    }
    report = watch.finish()
    result.figures["probe"] = report.as_dict() | {"line": report.line()}
    return result
