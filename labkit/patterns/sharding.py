"""Model sharding on several ranks: tensor parallelism (DTensor) and pipeline parallelism (GPipe).

``run_ranks(worker, ...)`` starts one process per rank with ``torch.multiprocessing`` (spawn),
``MASTER_ADDR=127.0.0.1`` and a free port, one torch thread each, and a process group on gloo
(CPU) or nccl (one ``cuda:<rank>`` per rank when there are enough GPUs). A rank that raises makes
``run_ranks`` raise ``WorkerFailed`` naming that rank, at once; a rank that hangs is killed at the
timeout. Every process group is destroyed and no process is left, whatever happens.

The workers below (``tp_worker``, ``pp_worker``, ``crash_worker``) live here, not in a notebook,
because spawned processes must import them. Used in 03.

    result = sharding.tensor_parallel(model, x, prompt_ids, n_new=40)
    assert result.max_abs_diff <= 1e-5
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labkit.errors import BadInput, WorkerFailed
from labkit.measure import timing
from labkit.models.tinygpt import GPTConfig, TinyGPT, generate, param_bytes, vocab
from labkit.runtime.environ import patch_environment
from labkit.runtime.process import die_with_parent

__all__ = [
    "COLLECTIVE_TIMEOUT_S",
    "MASTER_ADDR",
    "RANK_TIMEOUT_S",
    "PipelineResult",
    "TensorParallelResult",
    "backend_for",
    "bubble_fraction",
    "crash_worker",
    "gpipe_ideal_speedup",
    "intra_op_seconds",
    "live_ranks",
    "pipeline_parallel",
    "pp_worker",
    "run_ranks",
    "shard_tinygpt",
    "split_stages",
    "tensor_parallel",
    "tp_plan",
    "tp_worker",
]

MASTER_ADDR = "127.0.0.1"
RANK_TIMEOUT_S = 180.0  # a whole run_ranks call, start-up included
COLLECTIVE_TIMEOUT_S = 60.0  # one collective waiting for a peer
_spawned: set[int] = set()  # pids of every rank started here, for live_ranks()


# ---------------------------------------------------------------- launching ranks


def backend_for(world_size: int) -> str:
    """nccl when there is one CUDA GPU per rank, else gloo (CPU)."""
    from labkit.runtime import hardware

    return "nccl" if hardware.gpu_count() >= world_size else "gloo"


def _rank_main(rank: int, worker: Callable[..., Any], world_size: int, backend: str, out_dir: str, args: tuple[Any, ...]) -> None:
    """What every spawned rank runs: join the group, run ``worker``, save its result, leave the group."""
    import torch.distributed as dist

    die_with_parent()
    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        from labkit.runtime import hardware

        torch.cuda.set_device(device)
        hardware.use_ieee_float32()  # sharded logits are compared with the unsharded CPU model's
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        result = worker(rank, world_size, device, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    except BaseException as exc:
        # when one rank fails its peers fail next (their collectives lose the connection):
        # the time of each error tells the parent which rank failed first
        error = {"rank": rank, "t": timing.now(), "error": f"{type(exc).__name__}: {exc}"}
        (Path(out_dir) / f"error{rank}.json").write_text(json.dumps(error))
        raise
    finally:
        dist.destroy_process_group()


def _first_error(out_dir: str) -> dict[str, Any] | None:
    """The earliest error any rank recorded (the cause; later ones are its consequences)."""
    errors = []
    for f in Path(out_dir).glob("error*.json"):
        try:
            errors.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    return min(errors, key=lambda e: e["t"]) if errors else None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else text


def run_ranks(
    worker: Callable[..., Any],
    args: Sequence[Any] = (),
    world_size: int = 2,
    backend: str | None = None,
    timeout_s: float = RANK_TIMEOUT_S,
) -> list[Any]:
    """Run ``worker(rank, world_size, device, *args)`` on ``world_size`` spawned ranks; return their results.

    ``worker`` must be importable (defined in a module, not a notebook). Raises ``WorkerFailed``
    naming the first rank that raised or died, or the ranks still running after ``timeout_s``.
    """
    import torch.multiprocessing as mp

    from labkit.runtime.process import free_port

    if world_size < 1:
        raise BadInput(f"world_size must be at least 1, got {world_size}")
    backend = backend or backend_for(world_size)
    out_dir = tempfile.mkdtemp(prefix="labkit-ranks-")
    env = {"MASTER_ADDR": MASTER_ADDR, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    ctx = None
    try:
        with patch_environment(**env):  # spawned children copy the environment when they start
            ctx = mp.start_processes(_rank_main, args=(worker, world_size, backend, out_dir, tuple(args)), nprocs=world_size, join=False, start_method="spawn")
        _spawned.update(p.pid for p in ctx.processes if p.pid is not None)
        deadline = timing.now() + timeout_s
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")  # on a failure it warns "Terminating process …" on stderr;
        level = spawn_log.level  # the WorkerFailed below says which rank failed and why, so keep stderr clean
        spawn_log.setLevel(logging.ERROR)
        try:
            while not ctx.join(timeout=0.2):
                if timing.now() > deadline:
                    alive = [str(r) for r, p in enumerate(ctx.processes) if p.is_alive()]
                    raise WorkerFailed(f"rank {', '.join(alive)}", f"still running after {timeout_s:.0f} s (killed)")
        except mp.ProcessRaisedException as exc:
            first = _first_error(out_dir)
            if first is not None:
                raise WorkerFailed(f"rank {first['rank']}", first["error"]) from exc
            raise WorkerFailed(f"rank {exc.error_index}", _last_line(exc.msg)) from exc
        except mp.ProcessExitedException as exc:
            how = f"killed by signal {exc.signal_name}" if exc.signal_name else f"exited with code {exc.exit_code}"
            raise WorkerFailed(f"rank {exc.error_index}", how) from exc
        finally:
            spawn_log.setLevel(level)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    finally:
        if ctx is not None:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            for p in ctx.processes:
                p.join(timeout=5.0)
        shutil.rmtree(out_dir, ignore_errors=True)


def live_ranks() -> list[int]:
    """Pids of rank processes started by ``run_ranks`` in this interpreter that are still running (should be [])."""
    import psutil

    alive = []
    for pid in sorted(_spawned):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            _spawned.discard(pid)
    return alive


def crash_worker(rank: int, world_size: int, device: torch.device, crash_rank: int = 1) -> None:
    """Raise on ``crash_rank``; every other rank waits in a barrier that would never finish alone.

    Shown in 03 (when a rank crashes).
    """
    import torch.distributed as dist

    if rank == crash_rank:
        raise RuntimeError(f"simulated failure on rank {rank} (for example: out of memory)")
    dist.barrier()


# ---------------------------------------------------------------- shared helpers


def _rebuild(cfg: GPTConfig, state: dict[str, torch.Tensor], device: torch.device) -> TinyGPT:
    model = TinyGPT(len(vocab()), cfg)
    model.load_state_dict(state)
    return model.eval().to(device)


def _best(times: Sequence[float]) -> float:
    return min(times)


def _per_repeat(per_rank: Sequence[Sequence[float]]) -> list[float]:
    """Each repeat's time across the ranks: the slowest rank's (the repeat is done when every rank is)."""
    return [max(ts) for ts in zip(*per_rank)]


def _range(times: Sequence[float]) -> tuple[float, float]:
    return (min(times), max(times))


def gpipe_ideal_speedup(n_stages: int, n_microbatches: int) -> float:
    """GPipe's ideal speedup over one device: K·M / (M + K − 1) for K stages and M microbatches."""
    return n_stages * n_microbatches / (n_microbatches + n_stages - 1)


def bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """Fraction of each stage's time spent idle in a GPipe forward: (K − 1) / (M + K − 1)."""
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


def intra_op_seconds(model: nn.Module, x: torch.Tensor, n_threads: int, repeats: int = 5) -> float:
    """Best time of one forward of ``model`` on ``x`` in this process with ``n_threads`` torch threads."""
    from labkit.runtime import hardware

    with hardware.threads_limited(n_threads), torch.inference_mode():
        return _best(timing.measure(lambda: model(x), repeats=repeats, warmup=1, device=x.device))


# ---------------------------------------------------------------- tensor parallelism


def tp_plan() -> dict[str, Any]:
    """The tensor-parallel plan of one TinyGPT block: column-shard q/k/v and fc, row-shard the projections.

    A column-sharded linear keeps a slice of the output features (here: a subset of the heads,
    half of the MLP hidden units); the row-sharded linear after it consumes exactly that slice and
    produces partial sums, which one all-reduce adds up. Two all-reduces per block, no other traffic.

    Shown in 03 (tensor parallelism).
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {
        "attn.q": ColwiseParallel(),
        "attn.k": ColwiseParallel(),
        "attn.v": ColwiseParallel(),
        "attn.proj": RowwiseParallel(),
        "mlp.fc": ColwiseParallel(),
        "mlp.proj": RowwiseParallel(),
    }


def shard_tinygpt(model: TinyGPT, mesh: Any) -> TinyGPT:
    """Apply ``tp_plan()`` to every block of ``model`` on a 1-D device mesh (embeddings, norms, head stay replicated).

    Shown in 03 (tensor parallelism).
    """
    from torch.distributed.tensor.parallel import parallelize_module

    n = mesh.size()
    if model.cfg.n_heads % n:
        raise BadInput(f"n_heads={model.cfg.n_heads} does not divide by {n} ranks")
    for block in model.blocks:
        parallelize_module(block, mesh, tp_plan())
    return model


def tp_worker(
    rank: int,
    world_size: int,
    device: torch.device,
    cfg: GPTConfig,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    prompt_ids: torch.Tensor,
    n_new: int,
    repeats: int,
    x_timed: torch.Tensor,
) -> dict[str, Any]:
    """One tensor-parallel rank: shard TinyGPT, run logits + greedy generation, time forward and all-reduces.

    Shown in 03 (tensor parallelism).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    model = _rebuild(cfg, state, device)
    mesh = init_device_mesh(device.type, (world_size,))
    shard_tinygpt(model, mesh)
    x, x_timed = x.to(device), x_timed.to(device)
    # no_grad, not inference_mode: under inference_mode DTensor misses its sharding cache on every op
    with torch.no_grad():
        logits = model(x)
        tokens = generate(model, prompt_ids.to(device), n_new, cfg.block_size)

        dist.barrier()
        forward_s = timing.measure(lambda: model(x_timed), repeats=repeats, warmup=1, device=device)
        # the same collectives alone: 2 all-reduces of a (batch, seq, d_model) activation per block
        buf = torch.zeros(x_timed.shape[0], x_timed.shape[1], cfg.d_model, device=device)

        def collectives() -> None:
            for _ in range(2 * cfg.n_layers):
                dist.all_reduce(buf)

        dist.barrier()
        allreduce_s = timing.measure(collectives, repeats=repeats, warmup=1, device=device)
    return {
        "rank": rank,
        "logits": logits.cpu(),
        "tokens": tokens.cpu(),
        "n_params": sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters()),
        "param_bytes": param_bytes(model),
        "forward_s": forward_s,
        "allreduce_s": allreduce_s,
        "device": str(device),
    }


@dataclass
class TensorParallelResult:
    """What ``tensor_parallel`` measured; times are the best of the repeats, in seconds (each repeat
    counts its slowest rank); the ``*_range_s`` fields are the (fastest, slowest) repeat."""

    world_size: int
    backend: str
    max_abs_diff: float
    tokens_identical: bool
    tokens: list[int]
    n_params_full: int
    n_params_per_rank: list[int]
    bytes_full: int
    bytes_per_rank: list[int]
    forward_s: float
    collectives_s: float
    unsharded_s: float
    per_rank: list[dict[str, Any]] = field(repr=False, default_factory=list)
    forward_range_s: tuple[float, float] = (0.0, 0.0)
    collectives_range_s: tuple[float, float] = (0.0, 0.0)

    @property
    def compute_s(self) -> float:
        """Forward time not spent in the all-reduces (never below 0)."""
        return max(self.forward_s - self.collectives_s, 0.0)

    @property
    def speedup(self) -> float:
        return self.unsharded_s / self.forward_s


def tensor_parallel(
    model: TinyGPT,
    x: torch.Tensor,
    prompt_ids: torch.Tensor,
    n_new: int = 40,
    repeats: int = 5,
    world_size: int = 2,
    backend: str | None = None,
    x_timed: torch.Tensor | None = None,
    unsharded_s: float | None = None,
) -> TensorParallelResult:
    """Shard ``model`` over ``world_size`` ranks; compare logits and greedy tokens with the unsharded model.

    Logits are compared on ``x``; forward passes are timed on ``x_timed`` (default ``x``). The
    unsharded reference is computed here, in this process; its time (1 thread) too, unless the
    caller passes the baseline it already measured as ``unsharded_s`` (one baseline per notebook).
    """
    x_timed = x if x_timed is None else x_timed
    backend = backend or backend_for(world_size)
    with torch.inference_mode():
        ref_logits = model(x)
        ref_tokens = generate(model, prompt_ids, n_new, model.cfg.block_size)
    if unsharded_s is None:
        unsharded_s = intra_op_seconds(model, x_timed, n_threads=1, repeats=repeats)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    results = run_ranks(tp_worker, (model.cfg, state, x, prompt_ids, n_new, repeats, x_timed), world_size=world_size, backend=backend)
    diff = max(float((r["logits"] - ref_logits).abs().max()) for r in results)
    same = all(torch.equal(r["tokens"], ref_tokens) for r in results)
    forward = _per_repeat([r["forward_s"] for r in results])
    collectives = _per_repeat([r["allreduce_s"] for r in results])
    return TensorParallelResult(
        world_size=world_size,
        backend=backend,
        max_abs_diff=diff,
        tokens_identical=same,
        tokens=ref_tokens.tolist(),
        n_params_full=sum(p.numel() for p in model.parameters()),
        n_params_per_rank=[r["n_params"] for r in results],
        bytes_full=param_bytes(model),
        bytes_per_rank=[r["param_bytes"] for r in results],
        forward_s=_best(forward),
        collectives_s=_best(collectives),
        unsharded_s=unsharded_s,
        per_rank=results,
        forward_range_s=_range(forward),
        collectives_range_s=_range(collectives),
    )


# ---------------------------------------------------------------- pipeline parallelism


class _Stage(nn.Module):
    """A contiguous slice of TinyGPT: embeddings on the first stage, the head on the last."""

    def __init__(self, model: TinyGPT, layers: range, first: bool, last: bool) -> None:
        super().__init__()
        self.first, self.last = first, last
        self.tok = model.tok if first else None
        self.pos = model.pos if first else None
        self.blocks = nn.ModuleList([model.blocks[i] for i in layers])
        self.ln_f = model.ln_f if last else None
        self.head = model.head if last else None
        self._block_size = model.cfg.block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            assert self.tok is not None and self.pos is not None
            x = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            x = block(x)
        if self.last:
            assert self.ln_f is not None and self.head is not None
            x = self.head(self.ln_f(x))
        return x


def split_stages(model: TinyGPT, n_stages: int) -> list[nn.Module]:
    """Cut TinyGPT into ``n_stages`` consecutive stages with (as nearly as possible) equal numbers of blocks.

    Shown in 03 (pipeline parallelism).
    """
    n = model.cfg.n_layers
    if not 1 <= n_stages <= n:
        raise BadInput(f"{n_stages} stages need between 1 and n_layers={n} stages")
    bounds = [round(i * n / n_stages) for i in range(n_stages + 1)]
    return [_Stage(model, range(bounds[i], bounds[i + 1]), i == 0, i == n_stages - 1) for i in range(n_stages)]


def _record_spans(module: nn.Module, rank: int, spans: list[dict[str, Any]], device: torch.device) -> list[Any]:
    """Record one span per forward call of ``module`` (the microbatch index as item); on a GPU a span
    starts when earlier work is done and ends when the forward's kernels are."""
    starts: list[float] = []

    def pre(_m: nn.Module, _a: Any) -> None:
        timing.synchronize(device)
        starts.append(timing.now())

    def post(_m: nn.Module, _a: Any, _o: Any) -> None:
        timing.synchronize(device)
        spans.append({"worker": f"rank {rank}", "stage": f"stage {rank}", "start": starts[-1], "end": timing.now(), "item": len(spans)})

    return [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]


def pp_worker(
    rank: int,
    world_size: int,
    device: torch.device,
    cfg: GPTConfig,
    state: dict[str, torch.Tensor],
    x: torch.Tensor,
    microbatch_counts: Sequence[int],
    repeats: int,
) -> dict[str, Any]:
    """One pipeline rank: the naive layer split (send/recv of the whole batch) and GPipe for each M, in turns."""
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    model = _rebuild(cfg, state, device)
    stage = split_stages(model, world_size)[rank]
    first, last = rank == 0, rank == world_size - 1
    x = x.to(device)
    act_shape = (x.shape[0], x.shape[1], cfg.d_model)
    out: dict[str, Any] = {"rank": rank, "naive_s": [], "gpipe_s": {}, "gpipe_spans": {}, "naive_spans": []}

    def sync() -> None:
        timing.synchronize(device)

    for m in microbatch_counts:
        if x.shape[0] % m:
            raise BadInput(f"batch of {x.shape[0]} does not split into {m} equal microbatches")

    def naive(record: list[dict[str, Any]] | None) -> torch.Tensor:
        """The naive split: each rank waits for the whole batch from the previous one."""
        h = x if first else torch.empty(act_shape, device=device)
        if not first:
            dist.recv(h, src=rank - 1)
            sync()  # on nccl the receive is queued on the GPU: the stage starts once it has landed
        s0 = timing.now()
        h = stage(h)
        sync()
        if record is not None:
            record.append({"worker": f"rank {rank}", "stage": f"stage {rank}", "start": s0, "end": timing.now(), "item": 0})
        if not last:
            dist.send(h.contiguous(), dst=rank + 1)
        return h

    with torch.no_grad():
        # GPipe: the same stages, the batch cut into M microbatches that flow through back to back
        schedules = {m: ScheduleGPipe(PipelineStage(stage, rank, world_size, device), n_microbatches=m) for m in microbatch_counts}
        variants: list[Any] = ["naive", *microbatch_counts]
        spans: dict[Any, list[dict[str, Any]]] = {v: [] for v in variants}
        times: dict[Any, list[float]] = {v: [] for v in variants}
        # every repeat runs every variant in turn (naive, then each M), so a load that comes and goes
        # hits them all alike; rep 0 is the warm-up; the last repeat records the spans the charts show
        for rep in range(repeats + 1):
            for v in variants:
                # the unsplit model on rank 0 alone, in turns with the split runs so both see the same machine load
                dist.barrier()
                if first:
                    t0 = timing.now()
                    model(x)
                    sync()
                    if rep > 0:
                        out.setdefault("unsplit_s", []).append(timing.now() - t0)
                record = spans[v] if rep == repeats else None
                hooks = _record_spans(stage, rank, record, device) if record is not None and v != "naive" else []
                dist.barrier()
                t0 = timing.now()
                if v == "naive":
                    y = naive(record)
                else:
                    y = schedules[v].eval(x) if first else schedules[v].eval()
                    sync()
                dist.barrier()
                if rep > 0:
                    times[v].append(timing.now() - t0)
                for handle in hooks:
                    handle.remove()
                if last and rep == repeats:
                    if v == "naive":
                        out["logits_naive"] = y.cpu()
                    else:
                        out.setdefault("logits_gpipe", {})[v] = y.cpu()
        out["naive_s"], out["naive_spans"] = times["naive"], spans["naive"]
        out["gpipe_s"] = {m: times[m] for m in microbatch_counts}
        out["gpipe_spans"] = {m: spans[m] for m in microbatch_counts}
    return out


@dataclass
class PipelineResult:
    """What ``pipeline_parallel`` measured; times are the best of the repeats, in seconds.

    A repeat's time is its timed span, barrier to barrier, of the slowest rank; ``naive_repeats_s`` and
    ``gpipe_repeats_s`` keep every repeat (in order: the last one is the one the timelines show).
    A timeline's makespan (first stage's start to last stage's end) leaves out the barriers and the
    schedule's own work before the first and after the last stage call, so it can be shorter.
    """

    n_stages: int
    backend: str
    batch_size: int
    seq_len: int
    unsplit_s: float
    naive_s: float
    gpipe_s: dict[int, float]
    max_abs_diff: float
    naive_timeline: timing.Timeline
    timelines: dict[int, timing.Timeline]
    baseline_s: float | None = None  # the caller's unsharded baseline; speedups divide it when given
    naive_repeats_s: list[float] = field(default_factory=list)
    gpipe_repeats_s: dict[int, list[float]] = field(default_factory=dict)

    def spread(self, n_microbatches: int | None = None) -> timing.Spread:
        """The repeats of GPipe at ``n_microbatches`` (None: of the naive split) as a ``timing.Spread``."""
        if n_microbatches is None:
            return timing.spread(self.naive_repeats_s or [self.naive_s], label="the naive split")
        return timing.spread(self.gpipe_repeats_s.get(n_microbatches) or [self.gpipe_s[n_microbatches]], label=f"GPipe M={n_microbatches}")

    @property
    def reference_s(self) -> float:
        """The time speedups divide: the caller's baseline if given, else the unsplit model timed on rank 0."""
        return self.unsplit_s if self.baseline_s is None else self.baseline_s

    def speedup(self, n_microbatches: int) -> float:
        """GPipe speedup over the unsplit model (1 thread): the caller's baseline, else rank 0's timing."""
        return self.reference_s / self.gpipe_s[n_microbatches]

    def ideal(self, n_microbatches: int) -> float:
        return gpipe_ideal_speedup(self.n_stages, n_microbatches)

    def throughput_per_s(self, n_microbatches: int) -> float:
        """Sequences per second through the pipeline."""
        return self.batch_size / self.gpipe_s[n_microbatches]

    def rows(self) -> list[dict[str, float]]:
        """One row per M: seconds, sequences/s, measured and ideal speedup, their ratio (unrounded: round where printed)."""
        return [
            {
                "microbatches": m,
                "seconds": self.gpipe_s[m],
                "seq_per_s": self.throughput_per_s(m),
                "speedup": self.speedup(m),
                "ideal": self.ideal(m),
                "of_ideal": self.speedup(m) / self.ideal(m),
            }
            for m in sorted(self.gpipe_s)
        ]


def pipeline_parallel(
    model: TinyGPT,
    x: torch.Tensor,
    microbatch_counts: Sequence[int] = (1, 2, 4, 8),
    repeats: int = 3,
    world_size: int = 2,
    backend: str | None = None,
    baseline_s: float | None = None,
) -> PipelineResult:
    """Run the naive split and GPipe over ``world_size`` stages; check every output against the unsplit model.

    The unsplit time is measured on rank 0 (1 thread, the other ranks idle), interleaved with the
    split runs so that both see the same machine load; every repeat runs the naive split and each M
    in turn. With ``baseline_s`` (the caller's one
    unsharded baseline) speedups divide that instead, and ``unsplit_s`` is a check of it.
    """
    backend = backend or backend_for(world_size)
    with torch.inference_mode():
        ref = model(x)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    results = run_ranks(pp_worker, (model.cfg, state, x, list(microbatch_counts), repeats), world_size=world_size, backend=backend)
    last = results[-1]
    diffs = [float((last["logits_naive"] - ref).abs().max())]
    diffs += [float((y - ref).abs().max()) for y in last["logits_gpipe"].values()]
    naive = timing.Timeline()
    timelines = {m: timing.Timeline() for m in microbatch_counts}
    for r in results:
        naive.extend(r["naive_spans"])
        for m in microbatch_counts:
            timelines[m].extend(r["gpipe_spans"][m])
    naive_s = _per_repeat([r["naive_s"] for r in results])
    gpipe_s = {m: _per_repeat([r["gpipe_s"][m] for r in results]) for m in microbatch_counts}
    return PipelineResult(
        n_stages=world_size,
        backend=backend,
        batch_size=int(x.shape[0]),
        seq_len=int(x.shape[1]),
        unsplit_s=_best(results[0]["unsplit_s"]),
        naive_s=_best(naive_s),
        gpipe_s={m: _best(t) for m, t in gpipe_s.items()},
        max_abs_diff=max(diffs),
        naive_timeline=naive,
        timelines=timelines,
        baseline_s=baseline_s,
        naive_repeats_s=naive_s,
        gpipe_repeats_s=gpipe_s,
    )
