"""``labkit bench ensemble``: 2 ensemble members in 2 processes (1 torch thread each) vs sequential.

Both CNN members run on the same large batch, so each call does real work (~0.5 s per member on
one core in fast mode) and the process overhead (pickling the batch, collecting logits) stays small.
Sequential, threads and processes are timed interleaved in one run, and each runner's fastest run
counts (the least disturbed on a shared machine); the worker start-up (spawn + import torch + load
members) is reported separately, as it is paid once. Used in 02.
"""

from __future__ import annotations

import numpy as np

from labkit import bench, data
from labkit.patterns import ensemble
from labkit.runtime.progress import tqdm

__all__ = ["N_MEMBERS", "SPEEDUP_TARGET", "run"]

N_MEMBERS = 2
SPEEDUP_TARGET = 1.85


def run(fast: bool = False) -> bench.Result:
    """Measure the 2-process speedup of a 2-member ensemble over running the members one after another.

    Shown in 02 (Summary).
    """
    batch = 16384 if fast else 65536
    repeats = 5 if fast else 7
    digits = data.load_digits()
    reps = -(-batch // len(digits.x_test))
    x = np.tile(digits.x_test, (reps, 1, 1, 1))[:batch]
    configs = ensemble.bagged_configs(N_MEMBERS, archs=("cnn",))
    members = ensemble.load_members(configs, progress=False)
    with tqdm(total=2, desc="bench ensemble", leave=False) as bar:
        with ensemble.MemberPool(configs, n_workers=N_MEMBERS, threads_per_worker=1) as pool:
            bar.update(1)
            pool.predict_logits(x[:256])  # warm-up: first call in each worker
            times = ensemble.compare_runners(members, pool, x, repeats=repeats, stat="min")
            stats = [(s.pid, s.rss_mb, s.last_call_cpu_s) for s in pool.stats]
            startup_s = pool.startup_s
            bar.update(1)
    speedup = times["sequential"] / times["processes"]
    return bench.Result(
        name="ensemble",
        targets=[
            bench.Target("ensemble 2 members, 2 processes speedup over sequential", speedup, "x", ">=", SPEEDUP_TARGET),
            bench.Target("ensemble 2 members, 2 threads speedup over sequential", times["sequential"] / times["threads"], "x"),
            bench.Target("ensemble process pool start-up (spawn, 2 workers)", startup_s, "s"),
            bench.Target("ensemble worker RSS (mean)", float(np.mean([s[1] for s in stats])), "MB"),
        ],
        figures={"batch": batch, "repeats": repeats, "times_s": times, "workers": stats},
    )
