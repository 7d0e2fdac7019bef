"""``labkit bench ray``: Ray's overheads and what Serve's request batching buys, side by side.

Targets:
- sync task round trip p50 ≤ 2 ms (Ray publishes ~1 ms for one client's sync tasks);
- actor method call p50 and tasks/s for 1,000 tiny tasks (reported);
- Serve with ``@serve.batch`` (max_batch_size 32) vs max_batch_size 1, both at concurrency 32
  over HTTP: throughput gain ≥ 3×. The model is ``wide.WideDigitNet`` (one digit per
  request), whose per-call cost is mostly reading its weights — the case batching is for. With the
  tiny digit CNN, Serve's per-request work dominates and the gain is near 1× (notebook 07 shows both).

Notebook 07 calls ``overheads`` and ``serve_batching`` from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit import bench
from labkit.measure.timing import latency_stats, now
from labkit.models import wide

if TYPE_CHECKING:
    from labkit.measure.batching import BatchingSweep

__all__ = ["model_batching_gain", "overheads", "run", "serve_batching"]

WIDE_WIDTH = wide.WIDTH
CONCURRENCY = 32
BATCH_WAIT_S = 0.01  # Serve's batch_wait_timeout_s


def overheads(n_round_trips: int = 200, n_tasks: int = 1000) -> dict[str, float]:
    """Measure a sync task round trip, an actor call (p50 ms each) and tasks/s; Ray must be running."""
    import ray

    @ray.remote
    def noop() -> int:
        return 0

    @ray.remote
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def incr(self) -> int:
            self.n += 1
            return self.n

    ray.get([noop.remote() for _ in range(20)])  # warm up the workers
    task_s = []
    for _ in range(n_round_trips):
        t0 = now()
        ray.get(noop.remote())
        task_s.append(now() - t0)
    counter = Counter.remote()  # type: ignore[attr-defined]
    ray.get(counter.incr.remote())
    actor_s = []
    for _ in range(n_round_trips):
        t0 = now()
        ray.get(counter.incr.remote())
        actor_s.append(now() - t0)
    ray.kill(counter)
    t0 = now()
    ray.get([noop.remote() for _ in range(n_tasks)])
    elapsed = now() - t0
    return {
        "task_p50_ms": latency_stats(task_s).p50 * 1e3,
        "task_p99_ms": latency_stats(task_s).p99 * 1e3,
        "actor_p50_ms": latency_stats(actor_s).p50 * 1e3,
        "tasks_per_s": n_tasks / elapsed,
    }


def _deployment(width: int) -> Any:
    from ray import serve

    from labkit.apps.wire import RayServeCodec
    from labkit.models import wide

    codec = RayServeCodec()

    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
    class WideDigits:
        def __init__(self, max_batch_size: int) -> None:
            import torch

            torch.set_num_threads(1)
            self.model = wide.wide_trained(width)
            self.predict.set_max_batch_size(max_batch_size)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=BATCH_WAIT_S)
        async def predict(self, xs: list[np.ndarray]) -> list[list[int]]:
            sizes = [len(x) for x in xs]
            preds = self.model.predict(np.concatenate(xs)).tolist()
            bounds = np.cumsum([0, *sizes])
            return [preds[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

        async def __call__(self, request: Any) -> dict[str, Any]:
            return {"pred": await self.predict(codec.decode(await request.json()))}

    return WideDigits


def serve_batching(serve_url: str, batch_sizes: tuple[int, ...] = (1, 32), width: int = WIDE_WIDTH, concurrency: int = CONCURRENCY, n_requests: int = 192) -> BatchingSweep:
    """Deploy the wide digit model once per max_batch_size and load each at ``concurrency``.

    Returns a ``measure.batching.BatchingSweep`` (one row per max_batch_size); every answer is
    checked (one class in 0..9 per request), so a malformed answer counts as an error. Serve must be
    running (``start_serve``). Shown in 07 §5.
    """
    from ray import serve

    from labkit.apps.wire import RayServeCodec
    from labkit.data import load_digits
    from labkit.measure import batching
    from labkit.models import wide
    from labkit.services.ray import quiet_logs

    x = load_digits().x_test[:64]
    wide.wide_trained(width)  # fit and cache the readout once, before the replicas load it
    codec = RayServeCodec()

    def payload(i: int) -> dict[str, Any]:
        return codec.encode(x[i % len(x)])

    def check(resp: Any) -> str | None:
        pred = codec.labels(resp.json())
        return None if len(pred) == 1 and pred[0] in range(10) else f"bad answer {pred}"

    deployment = _deployment(width)

    @contextlib.contextmanager
    def deployed(setting: batching.Setting) -> Iterator[batching.Served]:
        name = f"wide-b{setting.max_batch_size}"
        with quiet_logs():
            serve.run(deployment.bind(setting.max_batch_size), name=name, route_prefix=f"/{name}")
        try:
            yield batching.Served(f"{serve_url}/{name}", payload, check)
        finally:
            with quiet_logs():
                serve.delete(name)

    settings = [batching.Setting(b, BATCH_WAIT_S * 1e3 if b > 1 else 0.0) for b in batch_sizes]
    return batching.sweep(settings, [concurrency], deployed, n_requests, warmup=(min(concurrency, 8), 16), progress=False)


def model_batching_gain(width: int = WIDE_WIDTH, batch_size: int = CONCURRENCY, repeats: int = 3) -> float:
    """In this process, one thread: time of ``batch_size`` single-digit calls / one call on the batch."""
    from labkit.data import load_digits
    from labkit.measure.timing import measure
    from labkit.runtime.hardware import threads_limited

    net = wide.wide_trained(width)
    x = load_digits().x_test[:batch_size]
    with threads_limited(1):
        one = min(measure(lambda: net.predict(x[:1]), repeats=repeats))
        batched = min(measure(lambda: net.predict(x), repeats=repeats))
    return one * batch_size / batched


def run(fast: bool) -> bench.Result:
    """Start Ray and Serve locally, measure overheads and batching, stop everything."""
    from labkit.runtime.progress import tqdm
    from labkit.services import ray as ray_service

    bar = tqdm(total=3, desc="bench ray")
    with ray_service.start(num_cpus=2) as cluster:
        bar.update(1)
        ov = overheads(n_round_trips=100 if fast else 300, n_tasks=1000)
        model_gain = model_batching_gain()
        bar.update(1)
        serve_url = cluster.start_serve()
        batching = serve_batching(serve_url, n_requests=128 if fast else 384)
        bar.update(1)
    bar.close()
    left = cluster.leftover()
    gain = batching.gain(CONCURRENCY)
    return bench.Result(
        name="ray",
        targets=[
            bench.Target("sync task round trip p50", ov["task_p50_ms"], "ms", "<=", 2.0),
            bench.Target("actor call p50", ov["actor_p50_ms"], "ms"),
            bench.Target("tiny tasks per second (1,000 tasks)", ov["tasks_per_s"], "tasks/s"),
            bench.Target("wide model alone: batch of 32 vs 32 single calls (1 thread)", model_gain, "×"),
            bench.Target("Serve batching (32 vs 1) throughput gain at concurrency 32", gain, "×", ">=", 3.0),
            bench.Target("Ray processes left after shutdown", float(len(left)), "", "<=", 0.0),
        ],
        figures={"overheads": ov, "model_batching_gain": model_gain, "serve_batching": batching.summaries(), "wide_width": WIDE_WIDTH, "ray_start_s": cluster.started_s, "leftover": left},
    )
