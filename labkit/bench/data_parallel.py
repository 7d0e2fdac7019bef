"""``labkit bench data-parallel``: data-parallel efficiency of N replicas, measured side by side.

One ``ReplicaPool`` of N spawned replicas (one torch thread each) runs the same batch inference
with 1 replica and with N, alternating after one untimed warm-up of each, best of a few repeats each; efficiency = T1 / (N · TN).
Per-replica work is large (≥ 1 s at N=2 on this CPU) so start-up and IPC stay a small share.
Also reported: the shared-queue run, the serial fraction and Amdahl's prediction, and the max
difference of the parallel logits from single-replica inference. On a machine with a CUDA GPU, one
replica on cuda:0 is timed against the single CPU replica and its logits compared. Used in 04.
"""

from __future__ import annotations

import numpy as np

from labkit import bench
from labkit.patterns import data_parallel as dp

__all__ = ["device_replica", "run"]

EFFICIENCY_TARGET = 0.90
MAX_DIFF_TARGET = 1e-5
GPU_MAX_DIFF_TARGET = 1e-4  # the GPU replica computes in IEEE float32 (hardware.use_ieee_float32), as notebook 04 checks


def run(fast: bool = False, n_replicas: int = 2) -> bench.Result:
    """Measure data-parallel efficiency at ``n_replicas`` and check the results equal one replica's."""
    from labkit.runtime.progress import tqdm

    n_items = 100_000 if fast else 300_000
    repeats = 2 if fast else 4
    reference = dp.reference_logits(n_items)
    one: list[float] = []
    many: list[float] = []
    queued: list[float] = []
    runs = []
    with dp.ReplicaPool(n_replicas=n_replicas, n_items=n_items) as pool:
        if len(set(pool.hashes)) != 1:
            raise AssertionError(f"replica weights differ: {pool.hashes}")
        pool.run_static(n_replicas=1)  # warm-up: every replica's first call (allocator, caches) is not timed
        pool.run_static()
        pool.run_queue(chunk_size=max(n_items // 100, 256))
        for _ in tqdm(range(repeats), desc="data-parallel", leave=False):
            r1 = pool.run_static(n_replicas=1)
            rn = pool.run_static()
            rq = pool.run_queue(chunk_size=max(n_items // 100, 256))
            one.append(r1.wall_s)
            many.append(rn.wall_s)
            queued.append(rq.wall_s)
            runs += [r1, rn, rq]
        start_s = pool.start_s
    max_diff = max(float(np.abs(r.logits - reference).max()) for r in runs)
    t1, tn, tq = min(one), min(many), min(queued)
    s = min(dp.serial_fraction(r) for r in runs if r.n_replicas == 1)
    from labkit.runtime import hardware

    gpu_targets, gpu_figures = device_replica(n_items, reference, t1, repeats) if hardware.gpu_count() else ([], {})
    return bench.Result(
        name="data-parallel",
        targets=[
            bench.Target(f"data-parallel efficiency at N={n_replicas}", t1 / (n_replicas * tn), "", ">=", EFFICIENCY_TARGET),
            bench.Target("max |logits - single replica|", max_diff, "", "<=", MAX_DIFF_TARGET),
            bench.Target(f"speedup at N={n_replicas} (static shards)", t1 / tn, "×"),
            bench.Target(f"speedup at N={n_replicas} (shared queue)", t1 / tq, "×"),
            bench.Target(f"Amdahl prediction at N={n_replicas}", dp.amdahl_speedup(s, n_replicas), "×"),
            bench.Target("serial fraction", s, ""),
            bench.Target("replica pool start-up", start_s, "s"),
            *gpu_targets,
        ],
        figures={"n_items": n_items, "t1_s": one, "tn_s": many, "queue_s": queued, "n_replicas": n_replicas, **gpu_figures},
    )


def device_replica(n_items: int, reference: np.ndarray, cpu_s: float, repeats: int, device: str = "cuda:0") -> tuple[list[bench.Target], dict[str, object]]:
    """One replica on ``device`` (on a GPU: its input pinned once, copied asynchronously) against
    the single CPU replica's ``cpu_s``, and how far its logits are from ``reference`` (the CPU's)."""
    with dp.ReplicaPool(n_replicas=1, n_items=n_items, devices=[device]) as pool:
        pool.run_static()  # warm-up: CUDA context, cuDNN's choice of convolution kernels
        runs = [pool.run_static() for _ in range(repeats)]
    best = min(r.wall_s for r in runs)
    diff = max(float(np.abs(r.logits - reference).max()) for r in runs)
    targets = [
        bench.Target(f"1 replica on {device}: max |logits - CPU replica|", diff, "", "<=", GPU_MAX_DIFF_TARGET),
        bench.Target(f"1 replica on {device} speedup over 1 CPU replica (1 thread)", cpu_s / best, "×"),
    ]
    return targets, {"gpu_replica_s": [r.wall_s for r in runs]}
