"""Parallel ensembles: members, combining rules, and running members sequentially, in threads or processes.

An ensemble's members are independent at inference time, so they can run side by side; the
price is resources (every worker process holds torch and its members). Used in 02 and 14.

    configs = ensemble.bagged_configs(5)               # bootstrap samples, seeds, architectures
    members = ensemble.load_members(configs)           # trained once, cached on disk
    logits = ensemble.run_sequential(members, x)       # (n_members, n, 10)
    preds = ensemble.combine(logits, "soft")           # or "vote", "weighted"
    with ensemble.MemberPool(configs, n_workers=2) as pool:   # spawn, 1 torch thread each
        assert (ensemble.combine(pool.predict_logits(x), "soft") == preds).all()

Combining rules work on stacked logits ``(n_members, n, n_classes)``:
``soft_average`` (mean of softmax probabilities), ``majority_vote`` and ``weighted_vote``.
**Tie rule** for both votes: among the classes with the most (weighted) votes, the one with the
highest mean probability over all members wins; if that also ties, the lowest class index.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.errors import BadInput, WorkerFailed
from labkit.measure import timing
from labkit.measure.timing import Span, Spread, Timeline, now
from labkit.runtime.environ import patch_environment
from labkit.runtime.process import die_with_parent

if TYPE_CHECKING:
    from torch import nn

    from labkit.models.digit_nets import TrainConfig

__all__ = [
    "RULES",
    "Boosted",
    "MemberPool",
    "WorkerStats",
    "accuracy_vs_members",
    "bagged_configs",
    "combine",
    "compare_runners",
    "corrupt",
    "init_worker",
    "load_members",
    "majority_vote",
    "member_name",
    "run_sequential",
    "run_threads",
    "runner_variants",
    "samme",
    "soft_average",
    "softmax",
    "time_runners",
    "vote",
    "vote_weights",
    "weighted_vote",
    "worker_run",
]

RULES = ("soft", "vote", "weighted")
N_CLASSES = 10
# SAMME's weak learner: a one-hidden-layer MLP trained briefly (~70% accuracy alone), and its shrinkage.
WEAK_HIDDEN = (16,)
WEAK_EPOCHS = 3
BOOST_LEARNING_RATE = 0.3
INFER_BATCH = 256  # rows per forward call: activations stay near L2 size, so two processes do not fight over cache
_TIE_TOL = 1e-9


# ---------------------------------------------------------------- members


def bagged_configs(n_members: int, archs: Sequence[str] = ("cnn", "mlp"), epochs: int | None = None) -> list[TrainConfig]:
    """Configs of ``n_members`` bagged members: member i has its own bootstrap sample and seed, arch cycles."""
    from labkit.models.digit_nets import TrainConfig

    if n_members < 1:
        raise BadInput(f"an ensemble needs at least 1 member, got {n_members}")
    extra = {} if epochs is None else {"epochs": epochs}
    return [TrainConfig(arch=archs[i % len(archs)], seed=i, bootstrap_seed=i, **extra) for i in range(n_members)]  # type: ignore[arg-type]


def member_name(config: TrainConfig) -> str:
    """A short label: ``cnn-b3`` (bagged, bootstrap seed 3), ``mlp-w1`` (boosted, seed 1)."""
    if config.sample_weights is not None:
        return f"{config.arch}-w{config.seed}"
    if config.bootstrap_seed is not None:
        return f"{config.arch}-b{config.bootstrap_seed}"
    return f"{config.arch}-s{config.seed}"


def load_members(configs: Sequence[TrainConfig], progress: bool = True) -> list[nn.Module]:
    """Trained members for ``configs`` (from labkit's disk cache, or trained now and cached)."""
    from labkit.models import digit_nets

    return [digit_nets.trained(c, progress=progress) for c in configs]


@dataclass
class Boosted:
    """A SAMME ensemble: member configs in training order, their vote weights and weighted train errors."""

    configs: list[TrainConfig]
    alphas: list[float]
    errors: list[float]


def samme(
    n_rounds: int, hidden: tuple[int, ...] = WEAK_HIDDEN, epochs: int = WEAK_EPOCHS, learning_rate: float = BOOST_LEARNING_RATE, progress: bool = True
) -> Boosted:
    """Train a SAMME (multi-class AdaBoost) ensemble of small MLPs; each round reweights the training set.

    Round m trains on sample weights w, gets weighted error ``err``, votes with
    ``alpha = learning_rate * (log((1 - err) / err) + log(K - 1))``, and multiplies the weights of
    the examples it got wrong by ``exp(alpha)`` (shrinkage < 1 keeps one round from dominating).
    Training is sequential; inference is a weighted vote of independent members, so parallel.
    """
    from labkit.data import load_digits
    from labkit.models import digit_nets

    digits = load_digits()
    x, y = digits.x_train, digits.y_train
    w = np.full(len(y), 1.0 / len(y))
    out = Boosted([], [], [])
    for m in range(n_rounds):
        cfg = digit_nets.TrainConfig(arch="mlp", hidden=hidden, epochs=epochs, seed=m, sample_weights=tuple(np.round(w * len(w), 12).tolist()))
        wrong = digit_nets.predict(digit_nets.trained(cfg, progress=progress), x) != y
        err = float(np.clip((w * wrong).sum() / w.sum(), 1e-10, 1 - 1e-10))
        alpha = learning_rate * (math.log((1 - err) / err) + math.log(N_CLASSES - 1))
        if alpha <= 0:  # no better than chance: SAMME stops
            break
        out.configs.append(cfg)
        out.alphas.append(alpha)
        out.errors.append(err)
        w = w * np.exp(alpha * wrong)
        w = w / w.sum()
    return out


# ---------------------------------------------------------------- combining rules


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, numerically stable."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _check(logits: np.ndarray, weights: Sequence[float] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 3:
        raise BadInput(f"logits must be shaped (n_members, n, n_classes), got {arr.shape}")
    w = np.ones(arr.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (arr.shape[0],):
        raise BadInput(f"need one weight per member ({arr.shape[0]}), got {w.shape}")
    return arr, w


def soft_average(logits: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """Predict the class with the highest (weighted) mean softmax probability over members."""
    arr, w = _check(logits, weights)
    probs = np.tensordot(w / w.sum(), softmax(arr), axes=1)
    return probs.argmax(axis=1)


def vote(arr: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Each member votes for its top class with weight ``w[i]``; ties go to the highest mean probability.

    Shown in 02 §2.
    """
    votes = np.zeros(arr.shape[1:])
    for member_logits, weight in zip(arr, w):
        votes[np.arange(arr.shape[1]), member_logits.argmax(axis=1)] += weight
    top = votes.max(axis=1, keepdims=True)
    tied = votes >= top - _TIE_TOL * max(1.0, float(np.abs(w).sum()))
    mean_prob = softmax(arr).mean(axis=0)
    score = np.where(tied, mean_prob, -np.inf)  # argmax keeps the first (lowest) class on exact ties
    return score.argmax(axis=1)


def majority_vote(logits: np.ndarray) -> np.ndarray:
    """Each member votes for its top class; most votes wins (ties: highest mean probability, then lowest class)."""
    arr, w = _check(logits, None)
    return vote(arr, w)


def weighted_vote(logits: np.ndarray, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Like ``majority_vote`` but member i's vote counts ``weights[i]`` (same tie rule)."""
    arr, w = _check(logits, weights)
    return vote(arr, w)


def combine(logits: np.ndarray, rule: str = "soft", weights: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """Apply a combining rule by name: ``soft``, ``vote`` or ``weighted`` (which needs ``weights``)."""
    if rule == "soft":
        return soft_average(logits)
    if rule == "vote":
        return majority_vote(logits)
    if rule == "weighted":
        if weights is None:
            raise BadInput("the weighted vote needs weights, e.g. vote_weights(validation accuracies)")
        return weighted_vote(logits, weights)
    raise BadInput(f"unknown combining rule {rule!r}; use one of {', '.join(RULES)}")


def vote_weights(accuracies: Sequence[float] | np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """SAMME-style vote weights from accuracies: ``log(acc / (1 - acc)) + log(K - 1)``."""
    acc = np.clip(np.asarray(accuracies, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(acc / (1 - acc)) + math.log(n_classes - 1)


# ---------------------------------------------------------------- evaluation


def corrupt(x: np.ndarray, level: float, kind: str = "noise", seed: int = 0) -> np.ndarray:
    """Corrupt images in [0, 1]: ``noise`` adds Gaussian noise of std ``level``; ``dropout`` zeroes that fraction of pixels."""
    rng = np.random.default_rng(seed)
    xs = np.asarray(x, dtype=np.float32)
    if level < 0:
        raise BadInput(f"corruption level must be >= 0, got {level}")
    if kind == "noise":
        out = xs + rng.normal(0.0, level, size=xs.shape).astype(np.float32)
    elif kind == "dropout":
        out = np.where(rng.random(xs.shape) < level, 0.0, xs)
    else:
        raise BadInput(f"unknown corruption {kind!r}; use noise or dropout")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def accuracy_vs_members(
    logits_val: np.ndarray, y_val: np.ndarray, logits_test: np.ndarray, y_test: np.ndarray, rules: Sequence[str] = RULES
) -> dict[str, list[float]]:
    """Test accuracy of the first n members combined, n = 1 … M, next to the baselines.

    ``average member`` is the mean test accuracy of those n members; ``best member (val)`` is the
    test accuracy of the member with the best *validation* accuracy among them (no peeking at test).
    Weighted votes use ``vote_weights`` of validation accuracies.
    """
    val_acc = np.array([(m.argmax(1) == y_val).mean() for m in np.asarray(logits_val)])
    test_acc = np.array([(m.argmax(1) == y_test).mean() for m in np.asarray(logits_test)])
    out: dict[str, list[float]] = {"n_members": [], "average member": [], "best member (val)": []}
    out.update({r: [] for r in rules})
    for n in range(1, len(test_acc) + 1):
        out["n_members"].append(n)
        out["average member"].append(float(test_acc[:n].mean()))
        out["best member (val)"].append(float(test_acc[int(np.argmax(val_acc[:n]))]))
        for r in rules:
            preds = combine(logits_test[:n], r, vote_weights(val_acc[:n]))
            out[r].append(float((preds == y_test).mean()))
    return out


# ---------------------------------------------------------------- running members


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    from labkit.models.digit_nets import predict_logits

    return predict_logits(model, x, batch_size=INFER_BATCH).numpy()


def run_sequential(members: Sequence[nn.Module], x: np.ndarray, timeline: Timeline | None = None, worker: str = "main") -> np.ndarray:
    """Run every member on ``x`` one after another; return stacked logits (n_members, n, classes)."""
    outs = []
    for i, model in enumerate(members):
        start = now()
        outs.append(_logits(model, x))
        if timeline is not None:
            _add(timeline, worker, i, start)
    return np.stack(outs)


def _add(timeline: Timeline, worker: str, i: int, start: float) -> None:
    timeline.add(Span(worker, f"member {i}", start, now(), i))


def run_threads(members: Sequence[nn.Module], x: np.ndarray, n_workers: int = 2, timeline: Timeline | None = None) -> np.ndarray:
    """Run members in a thread pool (torch releases the GIL inside ops); 1 torch thread per worker."""
    from labkit.runtime import hardware

    def one(i: int) -> np.ndarray:
        start = now()
        out = _logits(members[i], x)
        if timeline is not None:
            _add(timeline, threading.current_thread().name, i, start)
        return out

    with hardware.threads_limited(1), ThreadPoolExecutor(n_workers, thread_name_prefix="member") as pool:
        return np.stack(list(pool.map(one, range(len(members)))))


# Worker-process state: set once by init_worker, read by every call (spawned processes import this module).
_WORKER: dict[str, Any] = {}


def init_worker(configs: Sequence[TrainConfig], member_ids: Sequence[int], n_threads: int) -> None:
    """Initializer of a worker process: 1 torch thread, load its members once (from the disk cache).

    Shown in 02 §4.
    """
    die_with_parent()
    import torch

    torch.set_num_threads(n_threads)
    _WORKER["members"] = dict(zip(member_ids, load_members(configs, progress=False)))


def _usage() -> dict[str, Any]:
    import psutil

    proc = psutil.Process()
    cpu = proc.cpu_times()
    return {"pid": proc.pid, "rss_mb": proc.memory_info().rss / 2**20, "cpu_s": cpu.user + cpu.system}


def _worker_ready() -> dict[str, Any]:
    return _usage()


def worker_run(x: np.ndarray, member_ids: Sequence[int], worker: str) -> dict[str, Any]:
    """Run this worker's members on ``x``; return logits, spans, and the process's pid, RSS and CPU time.

    Shown in 02 §4.
    """
    outs, spans = {}, []
    for i in member_ids:
        start = now()
        outs[i] = _logits(_WORKER["members"][i], x)
        spans.append({"worker": worker, "stage": f"member {i}", "start": start, "end": now(), "item": i})
    return {"logits": outs, "spans": spans, **_usage()}


@dataclass
class WorkerStats:
    """One worker process: pid, members, resident memory, CPU seconds in total and in the last call."""

    worker: str
    pid: int
    members: list[int]
    rss_mb: float = 0.0
    cpu_s: float = 0.0
    last_call_cpu_s: float = 0.0

    def update(self, usage: dict[str, Any]) -> None:
        self.pid, self.rss_mb = usage["pid"], usage["rss_mb"]
        self.last_call_cpu_s, self.cpu_s = usage["cpu_s"] - self.cpu_s, usage["cpu_s"]


@dataclass
class MemberPool:
    """Worker processes (spawn), each with 1 torch thread and its members loaded once, pinned round-robin.

    Member i lives on worker ``i % n_workers``; ``predict_logits(x)`` sends ``x`` to every worker
    that has a requested member and stacks the logits in member order. A context manager.
    """

    configs: Sequence[TrainConfig]
    n_workers: int = 2
    threads_per_worker: int = 1
    startup_s: float = 0.0
    stats: list[WorkerStats] = field(default_factory=list)
    _executors: list[ProcessPoolExecutor] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        import multiprocessing as mp

        if self.n_workers < 1:
            raise BadInput(f"n_workers must be >= 1, got {self.n_workers}")
        # Members must be on disk before workers start: train any missing one here, once.
        load_members(self.configs, progress=False)
        ctx = mp.get_context("spawn")
        t0 = now()
        with patch_environment(OMP_NUM_THREADS=self.threads_per_worker, MKL_NUM_THREADS=self.threads_per_worker):
            for k in range(self.n_workers):
                ids = list(range(k, len(self.configs), self.n_workers))
                ex = ProcessPoolExecutor(1, mp_context=ctx, initializer=init_worker, initargs=([self.configs[i] for i in ids], ids, self.threads_per_worker))
                self._executors.append(ex)
                self.stats.append(WorkerStats(f"proc-{k}", 0, ids))
            try:
                usages = [f.result() for f in [ex.submit(_worker_ready) for ex in self._executors]]
            except Exception as exc:
                self.close()
                raise WorkerFailed("ensemble worker", exc) from exc
        for s, usage in zip(self.stats, usages):
            s.update(usage)
        self.startup_s = now() - t0

    def predict_logits(self, x: np.ndarray, members: Sequence[int] | None = None, timeline: Timeline | None = None) -> np.ndarray:
        """Run the requested members (default all) on ``x`` in parallel; return (n_members, n, classes)."""
        if not self._executors:
            raise BadInput("this MemberPool is closed")
        wanted = list(range(len(self.configs))) if members is None else list(members)
        xs = np.ascontiguousarray(x, dtype=np.float32)
        futures = []
        for s, ex in zip(self.stats, self._executors):
            mine = [i for i in s.members if i in wanted]
            if mine:
                futures.append((s, ex.submit(worker_run, xs, mine, s.worker)))
        outs: dict[int, np.ndarray] = {}
        for s, fut in futures:
            try:
                res = fut.result()
            except Exception as exc:
                raise WorkerFailed(s.worker, exc) from exc
            outs.update(res["logits"])
            s.update(res)
            if timeline is not None:
                timeline.extend(res["spans"])
        return np.stack([outs[i] for i in wanted])

    def pids(self) -> list[int]:
        return [s.pid for s in self.stats]

    def close(self) -> None:
        """Shut the worker processes down and wait for them to exit."""
        for ex in self._executors:
            ex.shutdown(wait=True, cancel_futures=True)
        self._executors.clear()

    def __enter__(self) -> MemberPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def runner_variants(members: Sequence[nn.Module], pool: MemberPool, x: np.ndarray, member_ids: Sequence[int] | None = None, intra_op: bool = False) -> dict[str, Any]:
    """The callables that run the same members on the same ``x``: sequential (1 torch thread), threads, processes.

    ``members`` are the in-process models of the pool's members ``member_ids`` (default: all), in that order.
    ``intra_op=True`` adds "sequential (all cores)": one process using every core inside each op.
    Each callable returns the stacked logits.
    """
    from labkit.runtime import hardware

    ids = list(range(len(pool.configs))) if member_ids is None else list(member_ids)
    if len(members) != len(ids):
        raise BadInput(f"got {len(members)} models for {len(ids)} pool members")
    chosen = list(members)
    n_threads = len({i % pool.n_workers for i in ids})
    runs: dict[str, Any] = {
        "sequential": lambda: _with_threads(1, run_sequential, chosen, x),
        "threads": lambda: run_threads(chosen, x, n_workers=n_threads),
        "processes": lambda: pool.predict_logits(x, ids),
    }
    if intra_op:
        runs["sequential (all cores)"] = lambda: _with_threads(hardware.cpu_count(), run_sequential, chosen, x)
    return runs


def time_runners(variants: dict[Any, Any], rounds: int = 3, min_s: float = 0.3) -> dict[Any, Spread]:
    """Warm up and time ``variants`` (name → callable returning logits) in interleaved rounds; check they agree.

    Every variant is warmed up, then they take turns (A B, B A, …) with the same calls in every
    round (``timing.compare(..., fixed_calls=True)``), so ``rounds`` together last at least ``min_s``.
    Returns a ``timing.Spread`` per name (median and min–max of seconds per call). Shown in 02 §4.
    """
    outputs: dict[Any, np.ndarray] = {}

    def keep(name: Any, fn: Any) -> Any:
        def run() -> None:
            outputs[name] = fn()

        return run

    samples = timing.compare({name: keep(name, fn) for name, fn in variants.items()}, repeats=rounds, min_s=min_s, fixed_calls=True)
    by_shape: dict[tuple[int, ...], np.ndarray] = {}
    for name, out in outputs.items():
        ref = by_shape.setdefault(out.shape, out)
        if not np.allclose(out, ref, atol=1e-4):
            raise WorkerFailed(str(name), "logits differ from the other runners' on the same members")
    return samples


def compare_runners(
    members: Sequence[nn.Module],
    pool: MemberPool,
    x: np.ndarray,
    member_ids: Sequence[int] | None = None,
    repeats: int = 3,
    intra_op: bool = False,
    stat: str = "median",
    min_s: float = 0.0,
) -> dict[str, float]:
    """Time the same members on the same ``x``: sequential (1 torch thread), threads, processes.

    Every runner is warmed up, then runs are interleaved (seq, threads, processes, processes, threads, …)
    so a noisy machine hits all alike, and every runner's logits are checked equal.
    Each runner's ``stat`` ("median", or "min": its least-disturbed run on a shared machine) is returned.
    """
    if stat not in ("median", "min"):
        raise BadInput(f"stat must be median or min, got {stat!r}")
    samples = time_runners(runner_variants(members, pool, x, member_ids, intra_op), rounds=repeats, min_s=min_s)
    return {k: (s.median if stat == "median" else s.low) for k, s in samples.items()}


def _with_threads(n: int, fn: Any, *args: Any) -> Any:
    from labkit.runtime import hardware

    with hardware.threads_limited(n):
        return fn(*args)
