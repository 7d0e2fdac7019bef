"""``labkit bench litserve``: LitServe's batching gain on the wide model, at concurrency 32.

Two LitServe servers, one after the other (LitServe fixes batching at start-up): ``max_batch_size``
1 (no batching) and batches of up to 32 waiting up to 20 ms (the Python front hands requests over more slowly than Triton's C++ one: a longer wait collects larger batches), each with one inference worker and
the wide model (``models.wide``, width 8192). The same closed-loop load at concurrency 32
(``services.litserve.batching_sweep``). Also reported: the mean batch formed (from the answers
and from ``/metrics``: requests / batches), the HTTP path's ceiling (``GET /health``: the load
generator and LitServe's FastAPI front, no model), start → first prediction, and the load average.

Used by 13 (the same code) and 14.
"""

from __future__ import annotations

import os

from labkit import bench, config, data
from labkit.measure import load
from labkit.measure.batching import Setting
from labkit.runtime import hardware
from labkit.services import litserve

__all__ = ["BATCHED", "CONCURRENCY", "UNBATCHED", "run"]

CONCURRENCY = 32
UNBATCHED = Setting(1)
BATCHED = Setting(32, 20.0)


def run(fast: bool) -> bench.Result:
    """Measure batching on/off at concurrency 32; report start-up, the ceiling and the batches."""
    n_requests = 320 if fast else 1600
    images = data.load_digits().x_test[:256]
    sweep = litserve.batching_sweep([UNBATCHED, BATCHED], [CONCURRENCY], images, n_requests=n_requests)
    with litserve.start(UNBATCHED) as srv:
        ping = load.closed_loop(f"{srv.url}/health", None, concurrency=CONCURRENCY, n_requests=n_requests, method="GET")
    off, on = sweep.row(UNBATCHED.max_batch_size), sweep.row(BATCHED.max_batch_size)
    on_info = sweep.servers[BATCHED.label]
    targets = [
        bench.Target(f"LitServe batching throughput gain at concurrency {CONCURRENCY}", sweep.gain(CONCURRENCY), "×", ">=", 3.0),
        bench.Target(f"throughput without batching (c={CONCURRENCY})", off.throughput_per_s, "req/s"),
        bench.Target(f"throughput with max_batch_size 32, batch_timeout 20 ms (c={CONCURRENCY})", on.throughput_per_s, "req/s"),
        bench.Target("mean batch formed (from the answers)", on.mean_batch, "requests"),
        bench.Target("mean batch formed (/metrics: requests / batches)", on_info["requests"] / max(on_info["batches"], 1.0), "requests"),
        bench.Target("p99 latency without / with batching", off.p99_ms / on.p99_ms if on.p99_ms else float("nan"), "×"),
        bench.Target(f"HTTP path ceiling, GET /health (c={CONCURRENCY})", ping.throughput_per_s, "req/s"),
        bench.Target("LitServe start → first prediction (batched server)", float(on_info["started_s"] or float("nan")), "s"),
        bench.Target(f"machine load average at the end (on {hardware.cpu_count()} cores; above that, timings are contended)", os.getloadavg()[0], ""),
    ]
    return bench.Result("litserve", targets, figures={"rows": sweep.summaries(), "servers": sweep.servers, "fast": config.fast()})
