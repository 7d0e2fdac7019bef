"""Checks for notebook 05 (ProcessPoolExecutor): threads per worker, results in order, pickled size."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from labkit.exercises import verdict

__all__ = ["check_in_order", "check_pickled_mb", "check_threads_per_worker"]


def check_threads_per_worker(threads_per_worker: Callable[[int, int], Any] | None) -> bool:
    """★ ``threads_per_worker(cores, n_workers)``: torch threads per worker so the pool never oversubscribes."""
    problem = None
    fn = None if threads_per_worker is None or threads_per_worker(8, 2) is None else threads_per_worker
    if fn is not None:
        for cores, n in [(8, 2), (2, 2), (2, 4), (16, 3), (1, 1)]:
            got, want = fn(cores, n), max(1, cores // n)
            if got != want:
                problem = f"threads_per_worker({cores}, {n}) = {got!r}; {n} workers × {got!r} threads on {cores} cores " + (
                    "oversubscribes the CPU" if isinstance(got, int) and got * n > max(cores, n) else "leaves cores idle or is not a positive int"
                )
                break
    return verdict("Threads per worker", fn, problem, "workers × threads should not exceed the cores, and every worker needs at least 1 thread")


def _slow_square(x: int) -> int:
    time.sleep(0.002 * (10 - x))  # later items finish first, so completion order is reversed
    return x * x


def check_in_order(submit_in_order: Callable[..., Any] | None) -> bool:
    """★★ ``submit_in_order(executor, fn, items)`` uses submit + as_completed and returns results in input order."""
    problem = None
    fn = submit_in_order
    if fn is not None:
        with ThreadPoolExecutor(4) as ex:
            got = fn(ex, _slow_square, list(range(10)))
        if got is None:
            fn = None
        elif list(got) != [x * x for x in range(10)]:
            problem = f"got {list(got)}; expected the squares of 0..9 in input order"
    return verdict("Results in input order", fn, problem, "remember each future's index (a dict future → i), fill results[i] as they complete")


def check_pickled_mb(x: np.ndarray, answer: float | None) -> bool:
    """★ ``answer`` is how many MB (2**20 bytes) pickling ``x`` sends to a worker."""
    expected = len(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)) / 2**20
    problem = None
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        problem = f"expected a number of MB, got {answer!r}"
    elif abs(answer - expected) > 0.05 * expected:
        problem = f"{answer:.2f} MB is off; x has shape {x.shape} and dtype {x.dtype}"
    return verdict("Pickled size", answer, problem, "bytes ≈ x.nbytes (elements × bytes per element) plus a small header; divide by 2**20", f"{expected:.2f} MB per call.")
