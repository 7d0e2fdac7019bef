"""Data parallelism: N replicas of one model, each on a shard of the data, results in input order.

Two ways to run replicas, both with spawned processes and one torch thread each:

- ``ReplicaPool`` — N long-lived replica processes. ``run_static`` gives replica *i* shard *i*
  (one message each); ``run_queue`` puts small chunks on one shared work queue that idle replicas
  pull from, which fixes load imbalance. Both return ``DataParallelRun`` (logits in input order,
  a ``Timeline`` of who did what when, wall time and the driver's serial time).
- ``run_distributed`` — the same inference with ``torch.distributed``: rank 0 broadcasts the
  weights, scatters equal shards, every rank computes, rank 0 gathers (gloo on CPU, nccl with
  one rank per GPU).

Replicas build the dataset themselves from a spec (``make_dataset(n_items, seed)``), as if each
read its shard from storage, so only index ranges travel between processes.

    with ReplicaPool(n_replicas=2, n_items=20_000) as pool:
        assert len(set(pool.hashes)) == 1
        run = pool.run_queue(chunk_size=500)

Used in 04 (and its benchmark ``labkit bench data-parallel``); ``make_dataset`` also in 05.
"""

from __future__ import annotations

import os
import queue
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labkit.errors import BadInput, WorkerFailed
from labkit.measure.timing import Span, Timeline, now
from labkit.runtime.process import die_with_parent

__all__ = [
    "DataParallelRun",
    "ReplicaPool",
    "amdahl_speedup",
    "chunk_ranges",
    "make_dataset",
    "rank_main",
    "reference_logits",
    "replica_main",
    "run_distributed",
    "serial_fraction",
    "shard_ranges",
]

BATCH_SIZE = 256
NOISE = 0.05
START_TIMEOUT_S = 180.0
RUN_TIMEOUT_S = 300.0
POLL_S = 0.2


# ---------------------------------------------------------------- data, shards and chunks


def make_dataset(n_items: int, seed: int = 0, base: np.ndarray | None = None) -> np.ndarray:
    """Return ``n_items`` digit images (N, 1, 8, 8) float32: the test split tiled, with seeded noise.

    Deterministic: every process that calls it with the same arguments gets the same array.
    ``base`` (the test split's images) spares a worker process from importing scikit-learn.
    """
    if n_items < 1:
        raise BadInput(f"n_items must be at least 1, got {n_items}")
    if base is None:
        from labkit.data import load_digits

        base = load_digits().x_test
    reps = -(-n_items // len(base))
    x = np.tile(base, (reps, 1, 1, 1))[:n_items]
    rng = np.random.default_rng(seed)
    noisy = x + NOISE * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32)


def shard_ranges(n_items: int, n_replicas: int, weights: list[float] | None = None) -> list[tuple[int, int]]:
    """Split ``range(n_items)`` into ``n_replicas`` contiguous (start, stop) shards, in order.

    Equal sizes (±1) by default; ``weights`` makes them uneven (e.g. [3, 1] → 75 % / 25 %).

    >>> shard_ranges(10, 3)
    [(0, 4), (4, 7), (7, 10)]
    """
    if n_replicas < 1:
        raise BadInput(f"n_replicas must be at least 1, got {n_replicas}")
    w = np.ones(n_replicas) if weights is None else np.asarray(weights, dtype=float)
    if len(w) != n_replicas or (w <= 0).any():
        raise BadInput(f"weights must be {n_replicas} positive numbers, got {weights}")
    if weights is None:
        sizes = [n_items // n_replicas + (1 if r < n_items % n_replicas else 0) for r in range(n_replicas)]
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    else:
        bounds = np.round(np.concatenate([[0], np.cumsum(w)]) / w.sum() * n_items).astype(int)
    return [(int(bounds[r]), int(bounds[r + 1])) for r in range(n_replicas)]


def chunk_ranges(n_items: int, chunk_size: int) -> list[tuple[int, int]]:
    """Split ``range(n_items)`` into chunks of ``chunk_size`` (the last may be shorter).

    >>> chunk_ranges(5, 2)
    [(0, 2), (2, 4), (4, 5)]
    """
    if chunk_size < 1:
        raise BadInput(f"chunk_size must be at least 1, got {chunk_size}")
    return [(s, min(s + chunk_size, n_items)) for s in range(0, n_items, chunk_size)]


def amdahl_speedup(serial_fraction: float, n: int) -> float:
    """Amdahl's law: the speedup on ``n`` workers when ``serial_fraction`` of the work cannot be split."""
    return 1.0 / (serial_fraction + (1.0 - serial_fraction) / n)


def serial_fraction(run: DataParallelRun) -> float:
    """The share of a 1-replica run's wall time that is not replica compute (dispatch, gather, IPC)."""
    compute = sum(s.duration for s in run.timeline if s.stage == "infer")
    return max(0.0, 1.0 - compute / run.wall_s)


def reference_logits(n_items: int, seed: int = 0, config: Any = None, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Single-replica, single-thread inference in this process: what every parallel run must equal."""
    from labkit.models import digit_nets
    from labkit.runtime import hardware

    model = digit_nets.trained(config or digit_nets.TrainConfig(arch="cnn"), progress=False)
    with hardware.threads_limited(1):
        return digit_nets.predict_logits(model, make_dataset(n_items, seed), batch_size).numpy()


# ---------------------------------------------------------------- replica processes


def _infer(model: Any, x: Any, start: int, stop: int, device: str) -> np.ndarray:
    """Logits of ``x[start:stop]`` (a CPU tensor, pinned when ``device`` is a GPU) in batches on ``device``."""
    import torch

    outs = []
    with torch.inference_mode():
        for s in range(start, stop, BATCH_SIZE):
            xb = x[s : min(s + BATCH_SIZE, stop)].to(device, non_blocking=True)  # async from pinned memory
            outs.append(model(xb))
        logits = torch.cat(outs).cpu() if outs else torch.zeros(0, 10)  # one copy back, which waits for the GPU
    return logits.numpy()


def replica_main(rank: int, config: Any, base: np.ndarray, n_items: int, seed: int, n_threads: int, device: str, inbox: Any, work: Any, outbox: Any) -> None:
    """A replica: load the model once, then serve commands from ``inbox`` until told to stop.

    Shown in 04 §2.
    """
    die_with_parent()
    name = f"replica-{rank}"
    try:
        import torch

        from labkit.models import digit_nets
        from labkit.runtime import hardware

        torch.set_num_threads(n_threads)
        t0 = now()
        model = digit_nets.trained(config, progress=False).to(device).eval()
        x = torch.from_numpy(make_dataset(n_items, seed, base))
        if torch.device(device).type == "cuda":
            hardware.use_ieee_float32()  # logits equal the CPU replica's to float32 rounding
            x = hardware.pinned(x)  # pinned once: every batch then copies to the GPU asynchronously
        outbox.put(("ready", rank, {"pid": os.getpid(), "hash": digit_nets.weights_hash(model), "load_s": now() - t0}))
        while True:
            cmd, job, arg = inbox.get()
            if cmd == "stop":
                return
            if cmd == "raise":
                raise RuntimeError(f"fault injected into {name}")
            if cmd == "exit":
                os._exit(3)
            ranges = arg if cmd == "static" else iter(lambda: work.get(), None)
            for start, stop in ranges:
                t = now()
                logits = _infer(model, x, start, stop, device)
                outbox.put(("chunk", rank, (job, start, logits, Span(name, "infer", t, now(), (start, stop)))))
            outbox.put(("idle", rank, job))
    except Exception:
        outbox.put(("error", rank, traceback.format_exc()))


@dataclass
class DataParallelRun:
    """One parallel inference: logits in input order, who did what when, and how long it took."""

    logits: np.ndarray
    timeline: Timeline
    wall_s: float
    n_replicas: int
    mode: str
    chunks_per_replica: dict[str, int] = field(default_factory=dict)
    hashes: list[str] = field(default_factory=list)

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def throughput_per_s(self) -> float:
        return len(self.logits) / self.wall_s

    def busy_s(self) -> dict[str, float]:
        """Seconds each replica spent computing."""
        out: dict[str, float] = {}
        for s in self.timeline:
            if s.stage == "infer":
                out[s.worker] = out.get(s.worker, 0.0) + s.duration
        return out

    def imbalance(self) -> float:
        """Longest replica busy time over the mean (1.0 = perfectly balanced)."""
        busy = list(self.busy_s().values())
        return max(busy) / (sum(busy) / len(busy)) if busy else 1.0


class ReplicaPool:
    """N spawned replica processes, each holding the same model (loaded once), one torch thread each.

    ``devices`` puts replica *i* on ``devices[i]`` (e.g. one per GPU); default all on the CPU.
    Use as a context manager, or call ``stop()``. A replica that raises or dies makes the
    current call raise ``WorkerFailed`` naming it (never a hang).
    """

    def __init__(self, n_replicas: int = 2, n_items: int = 20_000, seed: int = 0, config: Any = None, n_threads: int = 1, devices: list[str] | None = None, start_timeout_s: float = START_TIMEOUT_S) -> None:
        import multiprocessing as mp

        from labkit.data import load_digits
        from labkit.models import digit_nets

        if n_replicas < 1:
            raise BadInput(f"n_replicas must be at least 1, got {n_replicas}")
        self.n_replicas, self.n_items, self.seed = n_replicas, n_items, seed
        self.config = config or digit_nets.TrainConfig(arch="cnn")
        self.devices = devices or ["cpu"] * n_replicas
        if len(self.devices) != n_replicas:
            raise BadInput(f"devices lists {len(self.devices)} entries for {n_replicas} replicas")
        digit_nets.trained(self.config, progress=False)  # train (and cache) once here, never in N replicas at once
        ctx = mp.get_context("spawn")
        self._work = ctx.Queue()
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(n_replicas)]
        self._jobs = 0
        self.info: dict[int, dict[str, Any]] = {}
        t0 = now()
        self._procs = [
            ctx.Process(target=replica_main, args=(r, self.config, load_digits().x_test, n_items, seed, n_threads, self.devices[r], self._inboxes[r], self._work, self._outbox), name=f"replica-{r}", daemon=True)
            for r in range(n_replicas)
        ]
        for p in self._procs:
            p.start()
        try:
            while len(self.info) < n_replicas:
                kind, rank, payload = self._next(set(range(n_replicas)), t0 + start_timeout_s)
                if kind == "ready":
                    self.info[rank] = payload
        except BaseException:
            self.stop()
            raise
        self.start_s = now() - t0

    @property
    def hashes(self) -> list[str]:
        """Each replica's weights hash, by rank (equal hashes: identical replicas)."""
        return [self.info[r]["hash"] for r in range(self.n_replicas)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def _next(self, ranks: set[int], deadline: float) -> tuple[str, int, Any]:
        while True:
            try:
                kind, rank, payload = self._outbox.get(timeout=POLL_S)
            except queue.Empty:
                for r in ranks:
                    if not self._procs[r].is_alive():
                        raise WorkerFailed(f"replica-{r}", f"process died with exit code {self._procs[r].exitcode}") from None
                if now() > deadline:
                    raise WorkerFailed("replica pool", f"no answer within the timeout; replicas {sorted(ranks)}") from None
                continue
            if kind == "error":
                raise WorkerFailed(f"replica-{rank}", payload.strip().splitlines()[-1] + "\n" + payload)
            return kind, rank, payload

    def _collect(self, job: int, ranks: set[int], mode: str, t0: float, timeout_s: float) -> DataParallelRun:
        logits = np.empty((self.n_items, 10), np.float32)
        filled = 0
        timeline = Timeline()
        counts: dict[str, int] = {}
        waiting = set(ranks)
        deadline = now() + timeout_s
        while waiting:
            kind, rank, payload = self._next(ranks, deadline)
            if kind == "idle" and payload == job:
                waiting.discard(rank)
            elif kind == "chunk" and payload[0] == job:
                _, start, out, span = payload
                logits[start : start + len(out)] = out  # placed by index: input order whatever the finish order
                filled += len(out)
                timeline.add(span)
                counts[span.worker] = counts.get(span.worker, 0) + 1
        wall = now() - t0
        timeline.add(Span("driver", "dispatch+gather", t0, t0 + wall))
        if filled != self.n_items:
            raise WorkerFailed("replica pool", f"{filled} of {self.n_items} items came back")
        return DataParallelRun(logits, timeline, wall, len(ranks), mode, counts, [self.info[r]["hash"] for r in sorted(ranks)])

    def run_static(self, n_replicas: int | None = None, weights: list[float] | None = None, timeout_s: float = RUN_TIMEOUT_S) -> DataParallelRun:
        """Give replica *i* shard *i* of the dataset (``weights`` makes shards uneven); wait for all."""
        n = n_replicas or self.n_replicas
        self._check_n(n)
        self._jobs += 1
        t0 = now()
        for r, rng in enumerate(shard_ranges(self.n_items, n, weights)):
            self._inboxes[r].put(("static", self._jobs, [rng]))
        return self._collect(self._jobs, set(range(n)), "static", t0, timeout_s)

    def run_queue(self, chunk_size: int = 500, n_replicas: int | None = None, timeout_s: float = RUN_TIMEOUT_S) -> DataParallelRun:
        """Put small chunks on one shared work queue; each idle replica pulls the next one."""
        n = n_replicas or self.n_replicas
        self._check_n(n)
        self._jobs += 1
        t0 = now()
        for rng in chunk_ranges(self.n_items, chunk_size):
            self._work.put(rng)
        for _ in range(n):
            self._work.put(None)  # one "no more work" per replica
        for r in range(n):
            self._inboxes[r].put(("queue", self._jobs, None))
        return self._collect(self._jobs, set(range(n)), f"queue/{chunk_size}", t0, timeout_s)

    def inject_fault(self, rank: int, kind: str = "raise", timeout_s: float = 60.0) -> None:
        """Make replica ``rank`` raise (``kind="raise"``) or exit abruptly (``"exit"``); the error surfaces here."""
        if kind not in ("raise", "exit"):
            raise BadInput(f"kind must be 'raise' or 'exit', got {kind!r}")
        self._inboxes[rank].put((kind, 0, None))
        self._next({rank}, now() + timeout_s)

    def _check_n(self, n: int) -> None:
        if not 1 <= n <= self.n_replicas:
            raise BadInput(f"this pool has {self.n_replicas} replicas; asked for {n}")
        dead = [r for r in range(n) if not self._procs[r].is_alive()]
        if dead:
            raise WorkerFailed(f"replica-{dead[0]}", "process is not running; start a new ReplicaPool")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every replica (politely, then SIGKILL) and release the queues."""
        for r, p in enumerate(self._procs):
            if p.is_alive():
                self._inboxes[r].put(("stop", 0, None))
        deadline = time.monotonic() + timeout_s
        for p in self._procs:
            if p.pid is None:
                continue
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        for q in [self._work, self._outbox, *self._inboxes]:
            q.cancel_join_thread()
            q.close()

    def __enter__(self) -> ReplicaPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- torch.distributed


def rank_main(rank: int, world: int, port: int, backend: str, config: Any, base: np.ndarray, n_items: int, seed: int, fail_rank: int, results: Any) -> None:
    """One rank: broadcast weights from rank 0, scatter equal shards, infer, gather to rank 0.

    Shown in 04 §6.
    """
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from labkit.models import digit_nets
    from labkit.runtime import hardware

    die_with_parent()
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
        hardware.use_ieee_float32()  # the gathered logits are compared with one CPU replica's
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    name = f"rank-{rank}"
    tl = Timeline()
    try:
        model = digit_nets.trained(config, progress=False).to(device).eval()
        with tl.span(name, "broadcast", device=device):
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)  # every replica starts from rank 0's weights
        hashes: list[Any] = [None] * world
        dist.all_gather_object(hashes, digit_nets.weights_hash(model))
        per_rank = -(-n_items // world)
        shard = torch.empty(per_rank, 1, 8, 8, device=device)
        scatter_list = None
        if rank == 0:
            x = torch.from_numpy(make_dataset(n_items, seed, base))
            x = torch.cat([x, x.new_zeros(per_rank * world - n_items, 1, 8, 8)])  # pad to equal shards
            if backend == "nccl":
                x = hardware.pinned(x)  # the shards copy to the GPU asynchronously
            scatter_list = [c.contiguous().to(device, non_blocking=True) for c in x.chunk(world)]
        with tl.span(name, "scatter", device=device):
            dist.scatter(shard, scatter_list, src=0)
        if rank == fail_rank:
            raise RuntimeError(f"fault injected into {name}")
        with tl.span(name, "infer", device=device):
            with torch.inference_mode():
                out = torch.cat([model(shard[s : s + BATCH_SIZE]) for s in range(0, per_rank, BATCH_SIZE)])
        gathered = [torch.empty_like(out) for _ in range(world)] if rank == 0 else None
        with tl.span(name, "gather", device=device):
            dist.gather(out.contiguous(), gathered, dst=0)
        spans: list[Any] = [None] * world
        dist.all_gather_object(spans, tl.to_dicts())
        if rank == 0:
            logits = torch.cat(gathered).cpu().numpy()[:n_items]
            results.put({"logits": logits, "hashes": hashes, "spans": [s for per in spans for s in per]})
    except Exception as exc:
        # report first, so the caller can name the rank that failed first (its peers then fail
        # with "connection closed by peer", which is a consequence, not the cause)
        results.put({"error": f"{type(exc).__name__}: {exc}", "rank": rank, "t": now()})
        raise
    finally:
        dist.destroy_process_group()


def run_distributed(n_ranks: int = 2, n_items: int = 20_000, backend: str = "gloo", seed: int = 0, config: Any = None, timeout_s: float = RUN_TIMEOUT_S, fail_rank: int = -1) -> DataParallelRun:
    """Run data-parallel inference with ``torch.distributed`` on ``n_ranks`` spawned processes.

    gloo on the CPU; nccl with one rank per GPU. A rank that fails makes this raise
    ``WorkerFailed`` with the rank's error (the other ranks are stopped), never a hang.
    ``fail_rank`` injects a fault into that rank (for tests and the notebook's demo).
    """
    import torch.multiprocessing as tmp

    from labkit.data import load_digits
    from labkit.models import digit_nets
    from labkit.runtime.process import free_port

    if backend not in ("gloo", "nccl"):
        raise BadInput(f"backend must be gloo or nccl, got {backend!r}")
    config = config or digit_nets.TrainConfig(arch="cnn")
    digit_nets.trained(config, progress=False)
    results = tmp.get_context("spawn").SimpleQueue()
    t0 = now()
    ctx = tmp.start_processes(rank_main, args=(n_ranks, free_port(), backend, config, load_digits().x_test, n_items, seed, fail_rank, results), nprocs=n_ranks, join=False, start_method="spawn")
    deadline = now() + timeout_s
    res: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = []

    def drain() -> None:
        nonlocal res
        while not results.empty():
            msg = results.get()  # read while ranks run: a full pipe would block rank 0
            if "error" in msg:
                errors.append(msg)
            elif res is None:
                res = msg

    try:
        while not ctx.join(timeout=POLL_S):
            drain()
            if now() > deadline:
                raise WorkerFailed("torch.distributed", f"ranks did not finish within {timeout_s:.0f} s")
    except tmp.ProcessRaisedException as exc:
        for p in ctx.processes:
            p.join(5)  # let the other ranks report their errors too
        drain()
        if errors:
            first = min(errors, key=lambda e: e["t"])
            raise WorkerFailed(f"rank-{first['rank']}", first["error"]) from None
        raise WorkerFailed(f"rank-{exc.error_index}", str(exc).strip().splitlines()[-1] + "\n" + str(exc)) from None
    except tmp.ProcessExitedException as exc:
        raise WorkerFailed(f"rank-{exc.error_index}", f"exited with code {exc.exit_code}") from None
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    drain()
    wall = now() - t0
    if res is None:
        raise WorkerFailed("rank-0", "finished without sending results")
    timeline = Timeline()
    timeline.extend(res["spans"])
    return DataParallelRun(res["logits"], timeline, wall, n_ranks, f"distributed/{backend}", hashes=res["hashes"])
