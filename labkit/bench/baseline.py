"""Baseline: the machine's physical limit and one model's inference on it (notebook 00).

- ``peak``: fp32 matmul GFLOP/s per thread count (the limit every speedup is judged against).
- ``batch_sweep``: latency per batch and items/s of the digit CNN across batch sizes, with the
  GFLOP/s it achieves.
- ``oversubscription``: two processes with too many threads vs one thread each, side by side.
- ``gpu_figures`` (on a CUDA device): peak matmul TFLOP/s in fp32, tf32 and bf16, and the digit
  CNN's achieved TFLOP/s on the GPU in fp32 and bf16, each as a share of its peak.

``labkit bench baseline`` runs all three and reports achieved/peak as a ratio. Used in 00, 14.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from labkit.bench import Result, Target

__all__ = ["SweepPoint", "batch_sweep", "gpu_figures", "oversubscription", "run"]

OVERSUB_BATCH = 256
GPU_BATCHES = (1024, 16384, 131072)  # digit images per batch on a GPU (8×8 images: large batches to fill it)
# Share of test images the GPU copy classifies as the CPU model does (cuDNN may use tf32 convolutions
# in "float32"; bfloat16 keeps 8 mantissa bits, so a few borderline images may flip).
AGREEMENT_TARGET = {"float32": 0.995, "bfloat16": 0.98}  # of the 360 test images: at most 1 and 7 flips
OVERSUB_SECONDS = 1.5
WORKER_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SweepPoint:
    """One batch size: median latency per batch, items per second, achieved GFLOP/s."""

    batch_size: int
    latency_ms: float
    throughput_per_s: float
    gflops: float


def batch_sweep(model: Any, batch_sizes: Sequence[int], repeats: int = 10, threads: int | None = None, progress: bool = True) -> list[SweepPoint]:
    """Time ``model`` on random digit batches of each size (median of ``repeats`` after a warm-up).

    The batches are made on the model's device in its dtype; on a GPU each timed call ends when
    the GPU has finished it (``timing.measure(..., device=...)``).
    Shown in 00 §4.
    """
    import statistics

    import torch
    from tqdm.auto import tqdm

    from labkit.measure.timing import measure
    from labkit.models import digit_nets
    from labkit.runtime import hardware

    param = next(model.parameters())
    flops = digit_nets.flops_per_sample(model)
    out = []
    n_threads = threads or hardware.threads()
    with hardware.threads_limited(n_threads), torch.inference_mode():
        for bs in tqdm(list(batch_sizes), desc="batch sizes", disable=not progress, leave=False):
            x = torch.rand(bs, 1, 8, 8, device=param.device).to(param.dtype)
            t = statistics.median(measure(functools.partial(model, x), repeats=repeats, warmup=2, device=param.device))
            out.append(SweepPoint(bs, t * 1e3, bs / t, flops * bs / t / 1e9))
    return out


def gpu_figures(model: Any, fast: bool, device: str = "cuda", batch_sizes: Sequence[int] | None = None) -> tuple[list[Target], dict[str, Any]]:
    """On a CUDA GPU: peak matmul TFLOP/s (fp32, tf32, bf16), the digit CNN's achieved TFLOP/s there
    in fp32 and bf16 at its best batch, each over its peak, and whether it predicts what the CPU does."""
    import copy

    import torch

    from labkit.data import load_digits
    from labkit.models import digit_nets
    from labkit.runtime import hardware

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev)
    peaks = hardware.gpu_peak_tflops(device, repeats=3 if fast else 5)
    sizes = tuple(batch_sizes or (GPU_BATCHES if fast else (*GPU_BATCHES, 4 * GPU_BATCHES[-1])))
    targets = [Target(f"peak {k} matmul, {name}", v, "TFLOP/s") for k, v in peaks.items()]
    figures: dict[str, Any] = {"gpu": name, "gpu_peak_tflops": peaks}
    x_test = torch.tensor(load_digits().x_test)  # a copy: the cached array is read-only
    cpu_pred = digit_nets.predict(model, x_test)
    for dtype in ("float32", "bfloat16"):
        if dtype not in peaks:
            continue
        gpu_model = copy.deepcopy(model).to(dev, getattr(torch, dtype)).eval()
        sweep = batch_sweep(gpu_model, sizes, repeats=5 if fast else 20, progress=False)
        best = max(sweep, key=lambda p: p.gflops)
        agree = float((digit_nets.predict(gpu_model, x_test.to(getattr(torch, dtype))) == cpu_pred).mean())
        targets += [
            Target(f"digit CNN achieved on {name}, {dtype} (batch {best.batch_size})", best.gflops / 1e3, "TFLOP/s"),
            Target(f"digit CNN achieved / peak {dtype} on the GPU", best.gflops / 1e3 / peaks[dtype], "×"),
            Target(f"digit CNN on the GPU in {dtype}: predictions equal to the CPU's", agree, "of test images", ">=", AGREEMENT_TARGET[dtype]),
        ]
        figures[f"gpu_sweep_{dtype}"] = [asdict(p) for p in sweep]
    return targets, figures


def _oversub_worker(threads_list: list[int], barrier: Any, results: Any, rank: int, seconds: float) -> None:
    """Runs in a spawned process: for each thread count, wait for the peer, then run inference."""
    import torch

    from labkit.measure.timing import now
    from labkit.models import digit_nets
    from labkit.runtime import hardware

    model = digit_nets.trained(digit_nets.TrainConfig(), progress=False)
    x = torch.rand(OVERSUB_BATCH, 1, 8, 8)
    for n_threads in threads_list:
        hardware.set_threads(n_threads)
        with torch.inference_mode():
            model(x)
            barrier.wait(timeout=WORKER_TIMEOUT_S)
            t0, items = now(), 0
            while now() - t0 < seconds:
                model(x)
                items += OVERSUB_BATCH
            results.put((rank, n_threads, items, now() - t0))


def _throughput_alone(model: Any, n_threads: int, seconds: float) -> float:
    import torch

    from labkit.measure.timing import now
    from labkit.runtime import hardware

    x = torch.rand(OVERSUB_BATCH, 1, 8, 8)
    with hardware.threads_limited(n_threads), torch.inference_mode():
        model(x)
        t0, items = now(), 0
        while now() - t0 < seconds:
            model(x)
            items += OVERSUB_BATCH
    return items / (now() - t0)


def oversubscription(seconds: float = OVERSUB_SECONDS, n_processes: int = 2) -> dict[str, float]:
    """Throughput (items/s) of: one process using every core; ``n_processes`` processes with
    every core's worth of threads each (oversubscribed); ``n_processes`` with 1 thread each.

    Shown in 00 §5.
    """
    from labkit.errors import WorkerFailed
    from labkit.models import digit_nets
    from labkit.runtime import hardware

    cores = hardware.cpu_count()
    model = digit_nets.trained(digit_nets.TrainConfig(), progress=False)
    alone = _throughput_alone(model, cores, seconds)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_processes)
    results = ctx.Queue()
    configs = [cores, 1]
    procs = [ctx.Process(target=_oversub_worker, args=(configs, barrier, results, r, seconds), daemon=True) for r in range(n_processes)]
    for p in procs:
        p.start()
    got: list[tuple[int, int, int, float]] = []
    try:
        for _ in range(n_processes * len(configs)):
            got.append(results.get(timeout=WORKER_TIMEOUT_S))
    except Exception as exc:
        dead = [f"process {i} (exit {p.exitcode})" for i, p in enumerate(procs) if not p.is_alive()]
        raise WorkerFailed(", ".join(dead) or "oversubscription worker", f"no result within {WORKER_TIMEOUT_S:.0f} s") from exc
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    total = {t: sum(items for _, tt, items, _ in got if tt == t) / max(el for _, tt, _, el in got if tt == t) for t in configs}
    return {
        f"1 process × {cores} threads": alone,
        f"{n_processes} processes × {cores} threads": total[cores],
        f"{n_processes} processes × 1 thread": total[1],
    }


def run(fast: bool = False) -> Result:
    """Peak GFLOP/s, the digit CNN's achieved GFLOP/s at its best batch, their ratio, and the
    oversubscription slowdown — all measured in this run."""
    from labkit.models import digit_nets
    from labkit.runtime import hardware

    cores = hardware.cpu_count()
    size, repeats = (512, 3) if fast else (2048, 5)
    peaks = hardware.peak_gflops(size=size, repeats=repeats)
    model = digit_nets.trained(digit_nets.TrainConfig(), progress=True)
    sweep = batch_sweep(model, [64, 256, 1024] if fast else [64, 256, 1024, 4096], repeats=5 if fast else 20)
    best = max(sweep, key=lambda p: p.gflops)
    over = oversubscription(seconds=1.0 if fast else 3.0)
    names = list(over)
    targets = [Target(f"peak fp32 matmul, {n} thread{'s' if n > 1 else ''}", g, "GFLOP/s") for n, g in peaks.items()]
    targets += [
        Target(f"digit CNN achieved (batch {best.batch_size}, {cores} threads)", best.gflops, "GFLOP/s"),
        Target("digit CNN achieved / peak", best.gflops / peaks[cores], "×"),
        Target("oversubscribed / 1 process (2 procs × all threads)", over[names[1]] / over[names[0]], "×"),
        Target("1 thread per process / 1 process", over[names[2]] / over[names[0]], "×"),
    ]
    figures: dict[str, Any] = {"peak_gflops": peaks, "sweep": [asdict(p) for p in sweep], "oversubscription": over}
    if hardware.device().type == "cuda":
        gpu_targets, gpu_figs = gpu_figures(model, fast)
        targets += gpu_targets
        figures.update(gpu_figs)
    return Result("baseline", targets, figures=figures)
