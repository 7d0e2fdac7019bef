"""``labkit bench gateway``: the FastAPI gateway under sustained load, next to the two ceilings it sits under.

In one run, on the same Redis and the same 2 workers: (1) the HTTP ceiling — the same load
generator (closed loop, 16 clients, aiohttp) against ``POST /noop`` of the same uvicorn server; (2)
the workers' ceiling — a direct Celery client in a closed loop at the same concurrency (16 of
the same task always in flight); (3) the gateway's ``POST /predict`` under that load, with the
event loop's lag read from ``/metrics`` (a sleep-drift probe inside the gateway). The three run
in interleaved rounds (1 2 3, 1 2 3, …) so that a busy spell on shared cores hits them alike.
Targets: throughput ≥ 0.9 × the lower ceiling (median of the rounds' ratios), p99 loop lag the
loop itself held ≤ 5 ms (the wall lag, which adds time spent waiting for a CPU that other
processes hold, is reported beside it), no result found only by the fallback read, 0 errors
(gateway and ceiling). Then the seed's ``/predict_blocking`` (``.get()`` inside ``async def``)
for comparison. Notebook 06 calls ``compare_routes``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from labkit import bench
from labkit.measure.load import LoadResult
from labkit.measure.timing import now

__all__ = ["CONCURRENCY", "Ceilings", "Round", "celery_ceiling", "compare_routes", "http_ceiling", "loop_lag", "measure", "payload", "run", "sustained"]

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


def sustained(url: str, route: str = "/predict", duration_s: float = 10.0, concurrency: int = CONCURRENCY, n_images: int = 8, client: str = "httpx") -> LoadResult:
    """Closed-loop load on ``url + route`` for ``duration_s``; every answer is checked."""
    import numpy as np

    from labkit.apps import celery_tasks as ct
    from labkit.measure import load
    from labkit.models import digit_nets

    body = payload(n_images)
    expected = digit_nets.predict(ct.load_models()["cnn"], np.asarray(body["images"], dtype=np.float32).reshape(-1, 1, 8, 8)).tolist()
    return load.closed_loop(url + route, body, concurrency=concurrency, duration_s=duration_s, check=_check(expected), client=client)


def compare_routes(url: str, duration_s: float = 5.0, concurrency: int = CONCURRENCY) -> dict[str, LoadResult]:
    """The same load on the async-polling route and on the seed's blocking route, one after the other."""
    return {route: sustained(url, route, duration_s, concurrency) for route in ("/predict", "/predict_blocking")}


def http_ceiling(url: str, duration_s: float, concurrency: int = CONCURRENCY, n_images: int = 8, client: str = "httpx") -> LoadResult:
    """The same load generator and body against ``POST /noop`` of the same server: what HTTP alone allows."""
    from labkit.measure import load

    return load.closed_loop(url + "/noop", payload(n_images), concurrency=concurrency, duration_s=duration_s, client=client)


def celery_ceiling(duration_s: float, concurrency: int = CONCURRENCY, n_images: int = 8, timeout_s: float = 60.0) -> LoadResult:
    """A direct Celery client's closed loop: ``concurrency`` of the gateway's task in flight for
    ``duration_s``, a new one sent as soon as one completes; every answer is checked.

    One thread waits on Celery's own Redis pub/sub: each result's ``then`` callback fires while the
    loop drains the result consumer, which blocks on the socket (no polling; measured here, it cost
    the client no more CPU per task than a 1 ms ``MGET`` sweep, while ``get()`` on the oldest result
    stalled for seconds). As in ``load.closed_loop``, nothing is sent after ``duration_s`` and the
    tasks then in flight are waited for and counted. A task with no result after ``timeout_s`` is
    recorded as an error.
    """
    import numpy as np

    from labkit.apps import celery_tasks as ct
    from labkit.measure.load import Request
    from labkit.models import digit_nets

    images = payload(n_images)["images"]
    expected = digit_nets.predict(ct.load_models()["cnn"], np.asarray(images, dtype=np.float32).reshape(-1, 1, 8, 8)).tolist()
    consumer = ct.app.backend.result_consumer
    done: deque[Any] = deque()  # results whose callback fired, in the order they completed
    in_flight: dict[str, tuple[Any, float]] = {}  # task id -> (AsyncResult, sent at)
    result = LoadResult(concurrency=concurrency, started=now())
    deadline = result.started + duration_s
    while True:
        while len(in_flight) < concurrency and now() < deadline:
            r = ct.model_1.apply_async((images,))
            in_flight[r.id] = (r, now())
            r.then(done.append)  # fires at once if its result already came
        if not in_flight:
            break
        if not done:
            consumer.drain_events(timeout=0.5)  # reads one pub/sub message, or waits for one
        while done:
            r = done.popleft()
            _, t0 = in_flight.pop(r.id)
            error = None if r.successful() and r.result.get("pred") == expected else f"task {r.state}: {r.result!r:.200}"
            result.requests.append(Request(t0, now() - t0, None, error))
        while in_flight and now() - next(iter(in_flight.values()))[1] > timeout_s:  # the oldest first
            r, t0 = in_flight.pop(next(iter(in_flight)))
            ct.app.backend.remove_pending_result(r)
            result.requests.append(Request(t0, now() - t0, None, f"no result after {timeout_s:.0f} s"))
    result.elapsed_s = now() - result.started
    return result


def loop_lag(url: str, reset: bool = False) -> dict[str, Any]:
    """The gateway's ``/metrics``: loop-lag percentiles since the last reset, at-least-once counts."""
    import httpx

    return dict(httpx.get(url + "/metrics", params={"reset": int(reset)}, timeout=10).json())


@dataclass
class Round:
    """One round: the HTTP ceiling, the Celery ceiling and the gateway, measured one right after the other."""

    http: LoadResult
    celery: LoadResult
    gateway: LoadResult
    metrics: dict[str, Any]

    @property
    def celery_tasks_per_s(self) -> float:
        """The Celery ceiling: completed tasks per second of the closed loop."""
        return self.celery.throughput_per_s

    @property
    def ratio(self) -> float:
        """The gateway's throughput over the lower of this round's two ceilings."""
        return self.gateway.throughput_per_s / max(min(self.http.throughput_per_s, self.celery_tasks_per_s), 1e-9)


@dataclass
class Ceilings:
    """Interleaved rounds (HTTP ceiling, Celery ceiling, gateway; again; …): a busy spell hits all three alike.

    Figures are medians over rounds; the ratio is the median of each round's own ratio; the loop
    lag is the worst round's.
    """

    rounds: list[Round]

    @staticmethod
    def _median(values: list[float]) -> float:
        import statistics

        return float(statistics.median(values))

    @staticmethod
    def _pooled(runs: list[LoadResult]) -> LoadResult:
        reqs = [q for run in runs for q in run.requests]
        return LoadResult(requests=reqs, started=runs[0].started, elapsed_s=sum(run.elapsed_s for run in runs), concurrency=runs[0].concurrency)

    @property
    def gateway(self) -> LoadResult:
        """Every gateway request of every round, as one result (errors, latency percentiles)."""
        return self._pooled([r.gateway for r in self.rounds])

    @property
    def celery(self) -> LoadResult:
        """Every task of every round's Celery ceiling, as one result (errors, latency percentiles)."""
        return self._pooled([r.celery for r in self.rounds])

    @property
    def gateway_per_s(self) -> float:
        return self._median([r.gateway.throughput_per_s for r in self.rounds])

    @property
    def http_per_s(self) -> float:
        return self._median([r.http.throughput_per_s for r in self.rounds])

    @property
    def celery_tasks_per_s(self) -> float:
        return self._median([r.celery_tasks_per_s for r in self.rounds])

    @property
    def ratio(self) -> float:
        return self._median([r.ratio for r in self.rounds])

    def lag(self, key: str) -> float:
        """The worst round's ``loop_lag[key]`` (``p99_ms``: wall lag; ``held_p99_ms``: the loop held, CPU wait taken out)."""
        return max(float(r.metrics["loop_lag"].get(key, 0.0)) for r in self.rounds)

    @property
    def gc_max_ms(self) -> float:
        """The longest garbage-collector pause the gateway reported in any round (0 where not reported)."""
        return max((float(g["max_ms"]) for r in self.rounds for g in r.metrics.get("gc_pauses", {}).values()), default=0.0)

    def results_count(self, key: str) -> int:
        """A ``RedisResults`` count (``fallback_hits``, ``delivered``…) summed over rounds (0 where not reported)."""
        return sum(int(r.metrics.get("results", {}).get(key, 0)) for r in self.rounds)


def measure(url: str, duration_s: float, concurrency: int = CONCURRENCY, rounds: int = 3, client: str = "aiohttp") -> Ceilings:
    """Warm up, then ``rounds`` interleaved rounds of the HTTP ceiling, the Celery ceiling and the
    gateway (its loop lag reset before and read after each), each a closed loop at ``concurrency``
    for ``duration_s / rounds``.

    ``client``: the load generator for both HTTP loads (aiohttp uses about a third of httpx's CPU
    per request, CPU the server shares on a small machine).
    """
    sustained(url, "/predict", min(2.0, duration_s), concurrency, client=client)  # warm-up: connections, imports, caches
    per_s = duration_s / rounds
    out = []
    for _ in range(rounds):
        http = http_ceiling(url, per_s, concurrency, client=client)
        celery = celery_ceiling(per_s, concurrency)
        loop_lag(url, reset=True)
        gw = sustained(url, "/predict", per_s, concurrency, client=client)
        out.append(Round(http, celery, gw, loop_lag(url, reset=True)))
    return Ceilings(out)


def run(fast: bool) -> bench.Result:
    """Redis + 2 workers + the gateway: both ceilings, the gateway and its loop lag; then the blocking route."""
    import os

    from labkit.apps import celery_tasks as ct
    from labkit.runtime import process
    from labkit.runtime.progress import tqdm
    from labkit.services import celery as celery_svc
    from labkit.services import gateway, redis

    duration, compare_s = (8.0, 4.0) if fast else (30.0, 10.0)
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
                c = measure(gw.url, duration)
                steps.update()
                blocking = sustained(gw.url, "/predict_blocking", compare_s)
                steps.update()
        finally:
            celery_svc.stop_workers(workers)
    steps.close()
    process.assert_nothing_left(before=before, quiet=True)  # every broker, worker and uvicorn is gone
    main = c.gateway
    ms = main.stats().ms()
    cms = c.celery.stats().ms() if c.celery.ok else {}
    n = len(c.rounds)
    result.targets += [
        bench.Target(f"errors in {duration:.0f} s at concurrency {CONCURRENCY}", main.errors, "requests", "<=", 0),
        bench.Target(f"gateway throughput (median of {n} interleaved rounds)", c.gateway_per_s, "req/s"),
        bench.Target("HTTP ceiling (POST /noop, same server and load generator)", c.http_per_s, "req/s"),
        bench.Target(f"Celery ceiling (direct closed-loop client, {CONCURRENCY} in flight, same workers)", c.celery_tasks_per_s, "tasks/s"),
        bench.Target("Celery ceiling: failed or wrong tasks", c.celery.errors, "tasks", "<=", 0),
        bench.Target("gateway / lower ceiling (median of the rounds' own ratios)", c.ratio, "x", ">=", RATIO_TARGET),
        bench.Target("event-loop lag p99 the loop itself held (CPU wait taken out; worst round)", c.lag("held_p99_ms"), "ms", "<=", LAG_P99_TARGET_MS),
        bench.Target("event-loop lag p99, wall (includes waiting for a CPU other processes held)", c.lag("p99_ms"), "ms"),
        bench.Target("longest garbage-collector pause in the gateway (any generation; start-up objects frozen)", c.gc_max_ms, "ms"),
        bench.Target("results that reached their waiter only by the fallback read", c.results_count("fallback_hits"), "results", "<=", 0),
        bench.Target("gateway p50", ms["p50"], "ms"),
        bench.Target("gateway p99", ms["p99"], "ms"),
    ]
    if cms:
        result.targets += [
            bench.Target("Celery ceiling p50 (task sent to result seen, direct client)", cms["p50"], "ms"),
            bench.Target("Celery ceiling p99 (task sent to result seen, direct client)", cms["p99"], "ms"),
        ]
    if blocking.ok:
        bms = blocking.stats().ms()
        result.targets += [
            bench.Target("blocking .get() route p50 (seed)", bms["p50"], "ms"),
            bench.Target("throughput async / blocking route", main.throughput_per_s / max(blocking.throughput_per_s, 1e-9), "x"),
        ]
    result.figures = {
        "async": main.summary(),
        "celery": c.celery.summary(),
        "rounds": [
            {
                "http": r.http.summary(),
                "celery_tasks_per_s": round(r.celery_tasks_per_s, 1),
                "celery": r.celery.summary(),
                "gateway": r.gateway.summary(),
                "ratio": round(r.ratio, 3),
                "metrics": r.metrics,
            }
            for r in c.rounds
        ],
        "blocking": blocking.summary(),
        "status_async": main.status_counts(),
        "status_blocking": blocking.status_counts(),
        "load_average": list(os.getloadavg()),
    }
    report = watch.finish()
    result.figures["probe"] = report.as_dict() | {"line": report.line()}
    return result
