"""Baseline: the machine's physical limit and one model's inference on it (notebook 00).

- ``peak``: fp32 matmul GFLOP/s per thread count, thread counts interleaved (1 2, 2 1, …), a Spread
  each; ``best_peak`` is the limit every speedup is judged against (best of all measurements with
  at most that many threads: a peak that other programs lowered never passes for the machine's).
- ``batch_sweep``: latency per batch and items/s of the digit CNN across batch sizes (interleaved,
  ≥ ``timing.min_point_s()`` of timed calls per size), with the GFLOP/s it achieves and its spread.
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
from labkit.measure.timing import Spread

__all__ = ["SweepPoint", "batch_sweep", "best_peak", "gpu_figures", "oversubscription", "peak", "run"]

OVERSUB_BATCH = 256
GPU_BATCHES = (1024, 16384, 131072)  # digit images per batch on a GPU (8×8 images: large batches to fill it)
# Share of test images the GPU copy classifies as the CPU model does (cuDNN may use tf32 convolutions
# in "float32"; bfloat16 keeps 8 mantissa bits, so a few borderline images may flip).
AGREEMENT_TARGET = {"float32": 0.995, "bfloat16": 0.98}  # of the 360 test images: at most 1 and 7 flips
OVERSUB_SECONDS = 1.5
WORKER_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SweepPoint:
    """One batch size: median latency per batch, items per second, achieved GFLOP/s (and the
    spread of the seconds per batch over the interleaved repeats, when measured)."""

    batch_size: int
    latency_ms: float
    throughput_per_s: float
    gflops: float
    latency: Spread | None = None

    def images_per_s(self) -> Spread | None:
        """The spread of images per second over the repeats."""
        return None if self.latency is None else self.latency.per(self.batch_size)


def peak(thread_counts: Sequence[int] | None = None, size: int = 1024, repeats: int = 5, min_s: float | None = None) -> dict[int, Spread]:
    """fp32 matmul GFLOP/s per thread count (default 1 … usable cores), a Spread of repeats each.

    The thread counts are timed in interleaved rounds (1 2, 2 1, …, ``timing.compare``), each with at
    least ``min_s`` (default ``timing.min_point_s()``) of timed products, so a busy spell hits all.
    Shown in 00 §2.
    """
    import torch

    from labkit.measure import timing
    from labkit.runtime import hardware

    counts = list(thread_counts or range(1, hardware.cpu_count() + 1))
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)

    def product(n: int) -> Any:
        def run() -> None:
            torch.set_num_threads(n)
            torch.mm(a, b, out=out)

        return run

    before = torch.get_num_threads()
    try:
        with torch.inference_mode():
            times = timing.compare({str(n): product(n) for n in counts}, repeats=repeats, min_s=min_s, warmup=2)
    finally:
        torch.set_num_threads(before)
    return {n: times[str(n)].per(2 * size**3 / 1e9) for n in counts}


def best_peak(peaks: dict[int, Spread] | dict[int, float], threads: int) -> float:
    """The limit for ``threads`` threads: the best GFLOP/s measured with at most that many threads.

    A program may always use fewer threads, so a 2-thread peak below the 1-thread one (threads that
    waited for cores other programs held) is not the machine's limit.
    """
    best = [v.high if isinstance(v, Spread) else float(v) for n, v in peaks.items() if n <= threads]
    if not best:
        raise ValueError(f"no peak measured with {threads} threads or fewer")
    return max(best)


def batch_sweep(model: Any, batch_sizes: Sequence[int], repeats: int = 5, threads: int | None = None, progress: bool = True, min_s: float | None = None) -> list[SweepPoint]:
    """Time ``model`` on random digit batches of each size: every size warmed up, then interleaved
    rounds (1 8 64 …, … 64 8 1, ``timing.compare``) with at least ``min_s`` (default
    ``timing.min_point_s()``) of timed calls per size; each point is the median of ``repeats`` rounds.

    The batches are made on the model's device in its dtype; on a GPU each timed call ends when
    the GPU has finished it. ``progress`` is kept for callers; nothing is drawn while timing.
    Shown in 00 §4.
    """
    import torch

    from labkit.measure import timing
    from labkit.models import digit_nets
    from labkit.runtime import hardware

    del progress  # a progress bar would leave debris in the notebook and steal CPU from the timing
    param = next(model.parameters())
    flops = digit_nets.flops_per_sample(model)
    n_threads = threads or hardware.threads()
    sizes = list(batch_sizes)
    with hardware.threads_limited(n_threads), torch.inference_mode():
        inputs = {bs: torch.rand(bs, 1, 8, 8, device=param.device).to(param.dtype) for bs in sizes}
        times = timing.compare({str(bs): functools.partial(model, inputs[bs]) for bs in sizes}, repeats=repeats, min_s=min_s, warmup=2, device=param.device)
    out = []
    for bs in sizes:
        t = times[str(bs)].median
        out.append(SweepPoint(bs, t * 1e3, bs / t, flops * bs / t / 1e9, times[str(bs)]))
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
    The one-process reference is the better of a run before and a run after the pairs.

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
    alone = max(alone, _throughput_alone(model, cores, seconds))  # before and after the pair: a busy spell must not shrink the reference
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
    spreads = peak(size=size, repeats=repeats)
    model = digit_nets.trained(digit_nets.TrainConfig(), progress=True)
    sweep = batch_sweep(model, [64, 256, 1024] if fast else [64, 256, 1024, 4096], repeats=5 if fast else 20)
    for n, again in peak(size=size, repeats=repeats).items():  # peak again after the sweep: best of both
        spreads[n] = Spread(spreads[n].values + again.values, spreads[n].label)
    peaks = {n: best_peak(spreads, n) for n in spreads}
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
    figures["peak_gflops_repeats"] = {n: list(sp.values) for n, sp in spreads.items()}
    if hardware.device().type == "cuda":
        gpu_targets, gpu_figs = gpu_figures(model, fast)
        targets += gpu_targets
        figures.update(gpu_figs)
    return Result("baseline", targets, figures=figures)
