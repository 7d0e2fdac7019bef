"""Process pools for model inference: models loaded once per worker, and a pool that survives deaths.

``concurrent.futures.ProcessPoolExecutor`` does the work; this module holds what its workers run
(spawned workers import them by module name, so they cannot live in a notebook):

- ``init_worker`` — the pool's ``initializer``: one torch thread, models loaded **once** per worker.
- ``classify`` (inputs pickled to the worker) and ``classify_range`` (only indices travel; the
  worker builds the dataset itself), each returning predictions and a timing span.
- ``start_pool`` — a spawn-context pool whose workers are all up and loaded before it returns,
  so start-up cost is measured apart from the work.
- ``ResilientPool`` — ``map`` that survives a worker killed mid-batch: on ``BrokenProcessPool``
  it re-creates the pool and resubmits only the unfinished tasks; nothing is lost (counted).
- ``fork_demo`` — the fork-after-threads trap, run safely in a subprocess with a timeout.

    with start_pool(n_workers=2, model_names=("cnn", "mlp")) as pool:
        futures = [pool.executor.submit(classify, "cnn", x) for x in batches]

Used in 05.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labkit.errors import BadInput, WorkerFailed
from labkit.measure.timing import Span, now

__all__ = [
    "MODEL_NAMES",
    "ModelPool",
    "ResilientPool",
    "classify",
    "classify_range",
    "die",
    "fail",
    "fork_demo",
    "init_worker",
    "start_pool",
    "worker_info",
]

START_TIMEOUT_S = 180.0
TASK_TIMEOUT_S = 300.0
MAX_RESTARTS = 3
_WORKER: dict[str, Any] = {}  # per worker process: its models, dataset and name


def _model_configs() -> dict[str, Any]:
    from labkit.models.digit_nets import TrainConfig

    return {"cnn": TrainConfig(arch="cnn"), "mlp": TrainConfig(arch="mlp")}


MODEL_NAMES = ("cnn", "mlp")  # the models ``init_worker`` can load


# ---------------------------------------------------------------- what workers run


def init_worker(model_names: Sequence[str] = MODEL_NAMES, n_threads: int = 1, n_items: int = 0, seed: int = 0, base: np.ndarray | None = None, ready: Any = None) -> None:
    """Pool initializer: set torch threads, load each model once, build the dataset; report to ``ready``.

    Shown in 05 §3.
    """
    from labkit.patterns.data_parallel import make_dataset
    from labkit.runtime.process import die_with_parent

    die_with_parent()
    t0 = now()
    import torch

    from labkit.models import digit_nets

    torch.set_num_threads(n_threads)
    configs = _model_configs()
    _WORKER["models"] = {name: digit_nets.trained(configs[name], progress=False) for name in model_names}
    _WORKER["x"] = make_dataset(n_items, seed, base) if n_items else None
    _WORKER["name"] = f"pid {os.getpid()}"
    _WORKER["load_s"] = now() - t0
    if ready is not None:
        ready.put(worker_info())


def worker_info() -> dict[str, Any]:
    """This worker's pid, torch threads, loaded models and start-up time."""
    import torch

    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "models": sorted(_WORKER.get("models", {})), "load_s": _WORKER.get("load_s")}


def _model(name: str) -> Any:
    loaded = _WORKER.get("models")
    if loaded is None:
        raise BadInput("this process has no models: create the pool with initializer=labkit.patterns.pool.init_worker")
    if name not in loaded:
        raise BadInput(f"model {name!r} is not loaded in this worker; it has {sorted(loaded)}")
    return loaded[name]


def classify(model_name: str, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Classify ``x`` (sent to the worker, pickled) with a loaded model; return (predictions, span)."""
    from labkit.models import digit_nets

    t0 = now()
    preds = digit_nets.predict(_model(model_name), x)
    span = Span(_WORKER["name"], model_name, t0, now(), len(x))
    return preds, span.__dict__


def classify_range(model_name: str, start: int, stop: int, die_token: str | None = None) -> tuple[int, np.ndarray, dict[str, Any]]:
    """Classify items ``start:stop`` of the worker's own dataset; return (start, predictions, span).

    ``die_token`` (a file path) kills this worker with SIGKILL the first time any worker sees it
    missing — one deterministic crash, as when the kernel's OOM killer picks a worker.
    """
    from labkit.models import digit_nets

    if die_token is not None:
        try:
            fd = os.open(die_token, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)
    x = _WORKER.get("x")
    if x is None or stop > len(x):
        raise BadInput(f"items {start}:{stop} are outside this worker's dataset; start the pool with n_items >= {stop}")
    t0 = now()
    preds = digit_nets.predict(_model(model_name), x[start:stop])
    return start, preds, Span(_WORKER["name"], model_name, t0, now(), (start, stop)).__dict__


def die(how: str = "exit") -> None:
    """End this worker process abruptly: ``os._exit(1)`` (``"exit"``) or SIGKILL (``"kill"``), as a crash would."""
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)


def fail(message: str = "fault injected") -> None:
    """Raise inside a worker (an ordinary task error, not a dead process)."""
    raise RuntimeError(message)


# ---------------------------------------------------------------- pools


@dataclass
class ModelPool:
    """A started ``ProcessPoolExecutor`` with its workers' info and start-up time; ``stop()`` leaves nothing."""

    executor: ProcessPoolExecutor
    workers: list[dict[str, Any]]
    startup_s: float

    @property
    def pids(self) -> list[int]:
        return [w["pid"] for w in self.workers]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut the pool down; SIGKILL any worker (by pid) still running after ``timeout_s``."""
        t = threading.Thread(target=self.executor.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            for pid in self.pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            t.join(10.0)

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_pool(n_workers: int = 2, model_names: Sequence[str] = MODEL_NAMES, n_threads: int = 1, n_items: int = 0, seed: int = 0, context: str = "spawn", timeout_s: float = START_TIMEOUT_S) -> ModelPool:
    """Start ``n_workers`` processes (``context`` start method) with ``init_worker``; return once all are loaded.

    The pool is the standard one, in view::

        ProcessPoolExecutor(n_workers, mp_context=get_context("spawn"),
                            initializer=init_worker, initargs=(model_names, n_threads, ...))

    Shown in 05 §5.
    """
    import multiprocessing as mp
    import queue

    from labkit.data import load_digits
    from labkit.models import digit_nets

    if n_workers < 1:
        raise BadInput(f"n_workers must be at least 1, got {n_workers}")
    configs = _model_configs()
    unknown = [m for m in model_names if m not in configs]
    if unknown:
        raise BadInput(f"unknown model(s) {unknown}; choose from {sorted(configs)}")
    for name in model_names:
        digit_nets.trained(configs[name], progress=False)  # train and cache here once, not in every worker
    ctx = mp.get_context(context)
    ready = ctx.Queue()
    t0 = now()
    executor = ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=init_worker, initargs=(tuple(model_names), n_threads, n_items, seed, load_digits().x_test, ready))
    probes = [executor.submit(worker_info) for _ in range(n_workers)]  # spawn starts workers on demand
    workers: list[dict[str, Any]] = []
    try:
        while len(workers) < n_workers:
            try:
                workers.append(ready.get(timeout=0.2))
            except queue.Empty:
                broken = [f for f in probes if f.done() and f.exception() is not None]
                if broken:
                    raise WorkerFailed("pool start", broken[0].exception()) from None  # type: ignore[arg-type]
                if now() - t0 > timeout_s:
                    raise WorkerFailed("pool start", f"{len(workers)} of {n_workers} workers ready after {timeout_s:.0f} s") from None
    except BaseException:
        ModelPool(executor, workers, 0.0).stop(timeout_s=2.0)
        raise
    for f in probes:
        f.result()
    return ModelPool(executor, workers, now() - t0)


@dataclass
class ResilientPool:
    """``map`` over a process pool that survives workers that die: re-create the pool, resubmit unfinished work.

    A task that *raises* is a bug, not a crash: it stops the map with ``WorkerFailed`` naming the
    task. A worker that *dies* (SIGKILL, ``os._exit``, OOM) breaks the whole pool
    (``BrokenProcessPool``); the finished results are kept, the pool is started again and only
    the unfinished tasks are resubmitted — up to ``max_restarts`` times, then ``WorkerFailed``.
    Tasks must be idempotent: one may run twice if its worker died after starting it.
    """

    n_workers: int = 2
    model_names: Sequence[str] = MODEL_NAMES
    n_threads: int = 1
    n_items: int = 0
    seed: int = 0
    max_restarts: int = MAX_RESTARTS
    timeout_s: float = TASK_TIMEOUT_S
    restarts: int = 0
    submitted: int = 0
    resubmitted: int = 0
    completed: int = 0
    startup_s: list[float] = field(default_factory=list)
    _pool: ModelPool | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _ensure(self) -> ModelPool:
        if self._pool is None:
            self._pool = start_pool(self.n_workers, self.model_names, self.n_threads, self.n_items, self.seed)
            self.startup_s.append(self._pool.startup_s)
        return self._pool

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Any]:
        """Run ``fn(*args)`` for each tuple of arguments; return results in input order, none lost.

        Shown in 05 §9.
        """
        calls = list(zip(*iterables))
        results: list[Any] = [None] * len(calls)
        done = [False] * len(calls)
        pending = list(range(len(calls)))
        while pending:
            pool = self._ensure()
            futures: dict[Any, int] = {}
            try:
                for i in pending:
                    futures[pool.executor.submit(fn, *calls[i])] = i
            except BrokenProcessPool:
                pass  # a worker died while we were still submitting: restart below
            self.submitted += len(futures)
            try:
                for fut in as_completed(futures, timeout=self.timeout_s):
                    i = futures[fut]
                    try:
                        results[i] = fut.result()
                    except BrokenProcessPool:
                        continue
                    except Exception as exc:
                        self.close()
                        raise WorkerFailed(f"task {i} ({getattr(fn, '__name__', fn)})", exc) from exc
                    done[i] = True
                    self.completed += 1
            except TimeoutError:
                self.close()
                raise WorkerFailed("process pool", f"no result within {self.timeout_s:.0f} s") from None
            pending = [i for i in pending if not done[i]]
            if pending:
                self.restarts += 1
                self.close()
                if self.restarts > self.max_restarts:
                    raise WorkerFailed("process pool", f"workers died {self.restarts} times; {len(pending)} of {len(calls)} tasks unfinished")
                self.resubmitted += len(pending)
        return results

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One task, safe to call from many threads at once: ``fn(*args)``, resubmitted if its worker died.

        The first caller that sees the broken pool restarts it (the others wait for it, then
        resubmit). Used by the capstone's HTTP front (14).
        """
        for _ in range(self.max_restarts + 1):
            with self._lock:
                pool = self._ensure()
            try:
                fut = pool.executor.submit(fn, *args)
                self.submitted += 1
                result = fut.result(timeout=self.timeout_s)
                self.completed += 1
                return result
            except BrokenProcessPool:
                with self._lock:
                    if self._pool is pool:
                        self.restarts += 1
                        self.close()
                    self.resubmitted += 1
            except TimeoutError:
                raise WorkerFailed("process pool", f"no result within {self.timeout_s:.0f} s") from None
        raise WorkerFailed("process pool", f"the task's worker died {self.max_restarts + 1} times")

    @property
    def pids(self) -> list[int]:
        return self._pool.pids if self._pool else []

    def close(self) -> None:
        """Stop the current pool (a later ``map`` starts a new one)."""
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    def __enter__(self) -> ResilientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- the fork-after-threads trap

_FORK_SCRIPTS = {
    # A thread holds a lock at the moment of fork(); the child gets a copy of the lock, still
    # held, but not the thread that would release it. Libraries hold such locks all the time
    # (allocators, logging, OpenMP's thread pool).
    "lock": """
        import os, threading, time
        lock = threading.Lock()
        def busy():
            while True:
                with lock:
                    time.sleep(0.01)
        threading.Thread(target=busy, daemon=True).start()
        time.sleep(0.05)
        print("parent: a thread holds the lock, forking", flush=True)
        pid = os.fork()
        if pid == 0:
            with lock:  # never acquired: its owner does not exist in the child
                os._exit(0)
        os.waitpid(pid, 0)
        print("child finished")
    """,
    # torch's intra-op thread pool is started in the parent, then a fork pool runs torch in children.
    "torch": """
        import multiprocessing as mp, torch
        from concurrent.futures import ProcessPoolExecutor
        torch.set_num_threads(2)
        a = torch.randn(512, 512)
        (a @ a).sum().item()  # starts the intra-op thread pool in the parent
        print("parent: torch thread pool running, forking 2 workers", flush=True)
        def work(_):
            return float((a @ a).sum())
        with ProcessPoolExecutor(2, mp_context=mp.get_context("fork")) as ex:
            print("children finished:", len(list(ex.map(work, range(4)))), "results")
    """,
}


def fork_demo(kind: str = "lock", timeout_s: float = 5.0) -> dict[str, Any]:
    """Run a fork-after-threads script in its own process group; kill it after ``timeout_s``.

    Returns ``{"kind", "hung", "elapsed_s", "output"}``; never hangs the caller.
    """
    if kind not in _FORK_SCRIPTS:
        raise BadInput(f"kind must be one of {sorted(_FORK_SCRIPTS)}, got {kind!r}")
    t0 = now()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_FORK_SCRIPTS[kind])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its forked children: one group we started
        out, _ = proc.communicate()
        hung = True
    return {"kind": kind, "hung": hung, "elapsed_s": now() - t0, "output": (out or "").strip()}
