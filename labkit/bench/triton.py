"""``labkit bench triton``: NVIDIA Triton's dynamic batching gain on the wide model, at concurrency 32.

One real ``tritonserver`` (nvidia-pytriton, run from ``.venv-triton``), the wide model
(``models.wide``, width 8192: at batch 1 a request streams 256 MB of float32 weights,
which a batch shares) bound twice: ``max_batch_size`` 1 (no batching) and the dynamic batcher
(up to 32, waiting up to 2 ms). Both get the same closed-loop load at concurrency 32, one after
the other, in this run (``services.triton.batching_sweep``). Also reported: the mean batch
Triton formed (``nv_inference_count`` / ``nv_inference_exec_count`` from its metrics), the HTTP
path's ceiling (``GET /v2/health/live``: the load generator and Triton's front, no model), start →
ready, stop, the process tree's RSS, and the machine's load average.

Used by 12 (the same code) and 14.
"""

from __future__ import annotations

import os

from labkit import bench, config, data
from labkit.measure import load
from labkit.measure.batching import Setting
from labkit.runtime import hardware
from labkit.services import triton

__all__ = ["BATCHED", "CONCURRENCY", "UNBATCHED", "run"]

CONCURRENCY = 32
UNBATCHED = Setting(1)
BATCHED = Setting(32, 2.0)


def run(fast: bool) -> bench.Result:
    """Measure dynamic batching on/off at concurrency 32; report start, stop, RSS and the ceiling."""
    n_requests = 320 if fast else 1600
    images = data.load_digits().x_test[:256]
    tr = triton.start([UNBATCHED, BATCHED])
    try:
        rss = tr.rss_mb()
        sweep = triton.batching_sweep(tr, [CONCURRENCY], images, n_requests=n_requests)
        ping = load.closed_loop(f"{tr.url}/v2/health/live", None, concurrency=CONCURRENCY, n_requests=n_requests, method="GET")
    finally:
        tr.stop()
    off, on = sweep.row(UNBATCHED.max_batch_size), sweep.row(BATCHED.max_batch_size)
    on_counts = sweep.servers[BATCHED.label]
    targets = [
        bench.Target(f"Triton dynamic batching throughput gain at concurrency {CONCURRENCY}", sweep.gain(CONCURRENCY), "×", ">=", 3.0),
        bench.Target(f"throughput without batching (c={CONCURRENCY})", off.throughput_per_s, "req/s"),
        bench.Target(f"throughput with the dynamic batcher, max 32, 2 ms (c={CONCURRENCY})", on.throughput_per_s, "req/s"),
        bench.Target("mean batch formed (from the answers)", on.mean_batch, "requests"),
        bench.Target("mean batch formed (Triton's metrics: inferences / executions)", on_counts["inferences"] / max(on_counts["executions"], 1.0), "requests"),
        bench.Target("p99 latency without / with batching", off.p99_ms / on.p99_ms if on.p99_ms else float("nan"), "×"),
        bench.Target(f"HTTP path ceiling, GET /v2/health/live (c={CONCURRENCY})", ping.throughput_per_s, "req/s"),
        bench.Target("Triton start → every model ready", tr.started_s or float("nan"), "s"),
        bench.Target("Triton stop (whole process tree gone)", tr.stopped_s or float("nan"), "s"),
        bench.Target("RSS of the process tree (PyTriton + tritonserver + backend stubs)", rss, "MB"),
        bench.Target(f"machine load average at the end (on {hardware.cpu_count()} cores; above that, timings are contended)", os.getloadavg()[0], ""),
    ]
    return bench.Result("triton", targets, figures={"rows": sweep.summaries(), "servers": sweep.servers, "fast": config.fast()})
