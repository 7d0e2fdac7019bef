"""What this machine can do: device choice, torch threads, measured peak GFLOP/s, GPU needs.

Device choice is visible: ``device()`` picks cuda → mps → cpu (or what LABKIT_DEVICE says) and
``require(gpus=2)`` prints why a GPU-only cell is skipped instead of silently using the CPU.
Used in 00 and every notebook's setup cell.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from labkit.errors import BadInput, NeedsGPU

if TYPE_CHECKING:
    import torch

__all__ = [
    "cpu_count",
    "describe",
    "device",
    "gpu_count",
    "gpu_peak_tflops",
    "keep_freed_memory",
    "matmul_gflops",
    "missing",
    "peak_gflops",
    "pinned",
    "report",
    "require",
    "set_threads",
    "threads",
    "threads_limited",
    "use_ieee_float32",
]

MATMUL_SIZE = 1024
MATMUL_REPEATS = 5
GPU_MATMUL_SIZE = 8192  # fills a large GPU: ~1.1 TFLOP per product
GPU_MATMUL_CALLS = 10  # products per timed call on a GPU, so launch and sync overhead stay negligible
GPU_MATMUL_WARMUP = 3  # cuBLAS handle, kernel choice and clocks settle before timing
_DEVICE_HELP = "use auto, cpu, cuda, cuda:N or mps"


def cpu_count() -> int:
    """CPU cores this process may use (respects affinity masks and containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def gpu_count() -> int:
    """Number of CUDA GPUs torch can see (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def device(name: str | None = None) -> torch.device:
    """Return the torch device to use: ``name``, else LABKIT_DEVICE, else cuda → mps → cpu.

    >>> device("cpu")
    device(type='cpu')
    """
    import torch

    from labkit import config

    wanted = (name or config.device_name()).strip().lower()
    if wanted == "auto":
        if gpu_count():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted == "mps":
        if not _mps_available():
            raise NeedsGPU("LABKIT_DEVICE=mps but Apple's MPS backend is not available here; use cpu or auto")
        return torch.device("mps")
    if wanted == "cuda" or wanted.startswith("cuda:"):
        index_text = wanted.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise BadInput(f"device {wanted!r} is not understood; {_DEVICE_HELP}")
        n = gpu_count()
        if int(index_text) >= n:
            raise NeedsGPU(f"device {wanted!r} was requested but this machine has {n} CUDA GPU(s); use cpu or auto")
        return torch.device(wanted)
    raise BadInput(f"unknown device {wanted!r}; {_DEVICE_HELP}")


def threads() -> int:
    """Threads torch uses for intra-op parallelism in this process."""
    import torch

    return torch.get_num_threads()


def set_threads(n: int) -> None:
    """Set torch's intra-op threads (and OMP/MKL for child processes started after this)."""
    import torch

    if n < 1:
        raise BadInput(f"threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)


@contextmanager
def threads_limited(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch threads, then restore the previous count."""
    import torch

    from labkit.runtime.environ import patch_environment

    before = torch.get_num_threads()
    with patch_environment(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n):
        set_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def keep_freed_memory(threshold_mb: int = 32, keep_mb: int = 1024) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS at once (Linux only).

    By default glibc gives large blocks (from 128 KB; it moves that threshold as blocks are freed) an
    ``mmap`` of their own and hands freed heap space back to the OS, so a tensor's pages are zeroed and
    faulted in again and again, and threads allocating at once contend in the kernel. Here blocks up
    to ``threshold_mb`` come from malloc's heaps, which keep up to ``keep_mb`` of free space.
    Measured in ``labkit bench pipeline`` (32 scenes per item, 2 MB activations): the thread pipeline's
    spread across repeats fell from 0.48-1.58 to 0.82-0.92 of the bound. Returns False where glibc's
    ``mallopt`` is not available; the setting lasts for the life of the process.
    """
    if threshold_mb < 1 or keep_mb < threshold_mb:
        raise BadInput(f"need 1 <= threshold_mb <= keep_mb, got threshold_mb={threshold_mb}, keep_mb={keep_mb}")
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    mb = 1 << 20
    return all(libc.mallopt(k, v) == 1 for k, v in ((m_mmap_threshold, threshold_mb * mb), (m_trim_threshold, keep_mb * mb), (m_top_pad, 64 * mb)))


def matmul_gflops(n_threads: int, size: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS, dtype: str = "float32", device: str = "cpu") -> float:
    """Measure the best matmul GFLOP/s in ``dtype`` with ``n_threads`` torch threads, on ``device``.

    On a GPU (``device="cuda"``) the operands live there (random, never zeros), each timed call runs
    ``GPU_MATMUL_CALLS`` products after ``GPU_MATMUL_WARMUP`` untimed ones, and the clock stops only
    when the GPU is done (``timing.measure(..., device=...)``); ``n_threads`` matters only on the CPU.
    """
    import torch

    from labkit.measure.timing import measure

    dt = getattr(torch, dtype)
    dev = torch.device(device)
    on_gpu = dev.type != "cpu"
    a = torch.randn(size, size, device=dev).to(dt)
    b = torch.randn(size, size, device=dev).to(dt)
    out = torch.empty(size, size, device=dev, dtype=dt)
    calls = GPU_MATMUL_CALLS if on_gpu else 1

    def products() -> None:
        for _ in range(calls):
            torch.mm(a, b, out=out)

    with threads_limited(n_threads), torch.inference_mode():
        times = measure(products, repeats=repeats, warmup=GPU_MATMUL_WARMUP if on_gpu else 1, device=dev if on_gpu else None)
    return 2 * size**3 * calls / min(times) / 1e9


def gpu_peak_tflops(device: str = "cuda", size: int = GPU_MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> dict[str, float]:
    """Measured matmul TFLOP/s on a GPU in float32 (IEEE), tf32 (float32 on the matrix units) and bfloat16.

    bfloat16 only where the device supports it. torch's float32 matmul precision is restored after
    the tf32 run. Used by ``labkit bench baseline`` on a GPU machine and by ``labkit gpu-check``.
    """
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" or not gpu_count():
        raise NeedsGPU(f"gpu_peak_tflops needs a CUDA GPU; {missing(gpus=1) or f'device {device!r} is not cuda'}")
    out = {"float32": matmul_gflops(1, size, repeats, "float32", device) / 1e3}
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # float32 operands, tf32 matrix units
        out["tf32"] = matmul_gflops(1, size, repeats, "float32", device) / 1e3
    finally:
        torch.set_float32_matmul_precision(before)
    if torch.cuda.is_bf16_supported():
        out["bfloat16"] = matmul_gflops(1, size, repeats, "bfloat16", device) / 1e3
    return out


def pinned(x: torch.Tensor) -> torch.Tensor:
    """``x`` in page-locked host memory when a CUDA GPU is present (copies to it can then run
    asynchronously with ``.to(device, non_blocking=True)``); ``x`` itself otherwise. Pin once, reuse."""
    if x.device.type != "cpu" or not gpu_count() or x.is_pinned():
        return x
    return x.pin_memory()


def use_ieee_float32() -> None:
    """Make float32 convolutions and matmuls on CUDA compute in IEEE float32 in this process (no tf32).

    cuDNN runs float32 convolutions on the tf32 matrix units by default (10 mantissa bits), so a
    GPU replica's logits differ from the CPU's by ~1e-3; in IEEE float32 they agree to ~1e-6, which
    is what the lab's "same result as one replica" checks compare. For worker processes (replicas,
    ranks) whose results are checked against the CPU; costs nothing measurable on the lab's models.
    """
    import torch

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def peak_gflops(thread_counts: Sequence[int] | None = None, size: int = MATMUL_SIZE, repeats: int = MATMUL_REPEATS) -> dict[int, float]:
    """Measured fp32 matmul GFLOP/s for each thread count (default 1 … all cores): the physical limit."""
    counts = list(thread_counts or range(1, cpu_count() + 1))
    return {n: matmul_gflops(n, size=size, repeats=repeats) for n in counts}


def missing(gpus: int = 0) -> str | None:
    """Return why a cell needing ``gpus`` GPUs cannot run here, or None if it can."""
    if gpus <= 0:
        return None
    have = gpu_count()
    if have >= gpus:
        return None
    return f"needs {gpus} CUDA GPU(s), this machine has {have}"


def require(gpus: int = 0, strict: bool = False) -> bool:
    """Return True if this machine has ``gpus`` GPUs; else print why the cell skips and return False.

    GPU-only demonstrations skip cleanly in both fast and strict mode; pass ``strict=True`` to
    raise ``NeedsGPU`` instead.

    >>> require(gpus=0)
    True
    """
    reason = missing(gpus=gpus)
    if reason is None:
        return True
    if strict:
        raise NeedsGPU(reason)
    where = "a GPU machine" if gpu_count() == 0 else f"a machine with {gpus} GPUs (one rank or replica per GPU)"
    print(f"Skipped: {reason}. Run this notebook on {where} to see this part.")
    return False


def report() -> dict[str, Any]:
    """Python, torch, device, cores and threads as a dict (printed by notebooks' setup cells)."""
    import torch

    from labkit import __version__

    dev = device()
    info: dict[str, Any] = {
        "labkit": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
        "cpu": platform.processor() or platform.machine(),
        "cores": cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
        "gpus": gpu_count(),
    }
    if dev.type == "cuda":
        info["gpu_names"] = [torch.cuda.get_device_name(i) for i in range(gpu_count())]
    return info


def describe() -> str:
    """One line for a notebook's setup cell: versions, device, cores, threads and mode."""
    from labkit import config

    info = report()
    mode = "fast" if config.fast() else "full"
    return (
        f"labkit {info['labkit']} · python {info['python']} · torch {info['torch']} · device {info['device']}"
        f" · {info['cores']} core{'' if info['cores'] == 1 else 's'}"
        f" · {info['torch_threads']} torch thread{'' if info['torch_threads'] == 1 else 's'} · {mode} mode"
    )
