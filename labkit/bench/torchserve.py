"""``labkit bench torchserve``: dynamic batching's throughput gain at concurrency 32, side by side.

One TorchServe, one worker, the wide model as an MLP (``models.wide.wide_mlp()``: at batch size 1 a
request streams 268 MB of float32 weights, which a batch shares; only timed). The same archive is registered twice:
``batch_size=1`` (no batching) and ``batch_size=32, max_batch_delay=10 ms``; each gets the same
closed-loop load at concurrency 32. Also reported: the model's own batching gain in-process, the
HTTP path's ceiling (GET /ping: load generator + Java frontend, no model — batching cannot beat it),
start → first prediction, stop time, and the resident memory of the whole process tree (Java
frontend + Python worker).

Used by 09 (the same code) and 11.
"""

from __future__ import annotations

import functools
import os
import statistics
from typing import Any

from labkit import bench, config, data
from labkit.measure import load, timing
from labkit.models import wide as wide_model
from labkit.runtime import hardware
from labkit.services import torchserve

__all__ = ["run"]

CONCURRENCY = 32
BATCHED = (32, 10)
UNBATCHED = (1, 0)


def run(fast: bool) -> bench.Result:
    """Measure batching on/off at concurrency 32; report start, stop and RSS."""
    n_requests = 320 if fast else 1600
    store = torchserve.model_store()
    wide = wide_model.wide_mlp()  # the timing model, in models.wide.DTYPE_NAME
    mar = torchserve.archive("wide", "1.0", wide, store).name
    images = data.load_digits().x_test[:256]
    model_gain = _in_process_gain(wide, images)
    ts = torchserve.start(store, models={"wide": mar}, probe_image=images[0])
    try:
        rss_one_worker = ts.rss_mb() if not ts.external else float("nan")
        sweep = torchserve.batching_sweep(ts, mar, [UNBATCHED, BATCHED], [CONCURRENCY], images, n_requests=n_requests)
        # the HTTP path alone (load generator + Java frontend, no model): the ceiling batching can reach
        ping = load.closed_loop(f"{ts.url}/ping", None, concurrency=CONCURRENCY, n_requests=n_requests, method="GET")
    finally:
        ts.stop()
    off, on = sweep.row(UNBATCHED[0]), sweep.row(BATCHED[0])
    gain = sweep.gain(CONCURRENCY)
    targets = [
        bench.Target("dynamic batching throughput gain at concurrency 32", gain, "×", ">=", 3.0),
        bench.Target("throughput without batching (c=32)", off.throughput_per_s, "req/s"),
        bench.Target("throughput with batch_size=32, delay 10 ms (c=32)", on.throughput_per_s, "req/s"),
        bench.Target("mean batch formed (c=32)", on.mean_batch, "requests"),
        bench.Target("in-process model gain, batch 32 vs 1 (per item)", model_gain, "×"),
        bench.Target("HTTP path ceiling, GET /ping (c=32)", ping.throughput_per_s, "req/s"),
        bench.Target(f"machine load average at the end (on {hardware.cpu_count()} cores; above that, timings are contended)", os.getloadavg()[0], ""),
        bench.Target("p99 latency without / with batching", off.p99_ms / on.p99_ms if on.p99_ms else float("nan"), "×"),
    ]
    if ts.started_s is not None:
        targets.append(bench.Target("TorchServe start → first prediction", ts.started_s, "s"))
    if ts.stopped_s is not None:
        targets.append(bench.Target("TorchServe stop", ts.stopped_s, "s"))
    if not ts.external:
        targets.append(bench.Target("RSS of the process tree (Java + 1 worker)", rss_one_worker, "MB"))
    return bench.Result("torchserve", targets, figures={"rows": sweep.summaries(), "fast": config.fast()})


def _in_process_gain(model: Any, images: Any) -> float:
    """Per-item time at batch 1 over per-item time at batch 32, in this process (1 thread)."""
    import numpy as np
    import torch

    per_item = {}
    with hardware.threads_limited(1), torch.inference_mode():
        for b in (1, 32):
            xb = torch.tensor(np.asarray(images[:b])).to(next(model.parameters()).dtype)
            per_item[b] = statistics.median(timing.measure(functools.partial(model, xb), repeats=5)) / b
    return per_item[1] / per_item[32]
