"""Checks for notebook 00 · Setup and baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from labkit.exercises import is_unanswered, verdict
from labkit.measure import guards

__all__ = ["check_best_batch_size", "check_fraction_of_peak", "check_oversubscription_slowdown"]

_REL_TOL = 0.02


def _close(a: float, b: float, rel: float = _REL_TOL) -> bool:
    return abs(a - b) <= rel * max(abs(b), 1e-12)


def check_fraction_of_peak(answer: float | None, sweep: Sequence[Any], peak_gflops: dict[int, float], batch_size: int, threads: int) -> bool:
    """Exercise 1: achieved GFLOP/s at ``batch_size`` divided by the measured peak at ``threads``.

    An answer built on a fraction above 1 (a peak measured while the machine was slower) is
    refused with the reason, never accepted: it prints ⚠️ and returns False.
    """
    point = next((p for p in sweep if p.batch_size == batch_size), None)
    hint = "take the gflops of the sweep point with that batch size and divide by peak[threads]"
    if point is None:
        return verdict("Exercise 1", answer, f"batch size {batch_size} is not in the sweep", hint)
    expected = point.gflops / peak_gflops[threads]
    if not is_unanswered(answer):
        refused = guards.refusal(guards.fraction_of_peak(point.gflops, peak_gflops[threads], what=f"the model at batch {batch_size}"))
        if refused:
            print(f"⚠️ Exercise 1: {refused}")
            return False
    problem = None
    if not is_unanswered(answer):
        if not isinstance(answer, (int, float)):
            problem = f"expected a number, got {type(answer).__name__}"
        elif answer > 1.0 and _close(answer / 100, expected):
            problem = "that looks like a percentage: give a fraction between 0 and 1"
        elif not _close(float(answer), expected):
            problem = f"{answer:.3g} is not the measured fraction (it should be about {expected:.3g})"
    return verdict("Exercise 1", answer, problem, hint, success=f"The model reaches {100 * expected:.3g}% of the peak measured with at most {threads} thread(s).")


def check_oversubscription_slowdown(answer: float | None, throughputs: dict[str, float]) -> bool:
    """Exercise 2: throughput of the oversubscribed run divided by the one-process run.

    The answer rests on those two entries only; how the third (one thread per process) compares
    with them is the notebook's verdict, not a reason to refuse this ratio.
    """
    names = list(throughputs)
    expected = throughputs[names[1]] / throughputs[names[0]]
    problem = None
    if not is_unanswered(answer):
        if not isinstance(answer, (int, float)):
            problem = f"expected a number, got {type(answer).__name__}"
        elif _close(float(answer), 1 / expected):
            problem = "that is the inverse: divide the oversubscribed throughput by the one-process throughput"
        elif not _close(float(answer), expected):
            problem = f"{answer:.3g} is not the measured ratio (about {expected:.3g})"
    return verdict("Exercise 2", answer, problem, f"use the dict keys in order: {names[1]!r} / {names[0]!r}", success=f"Oversubscription ran at {expected:.2f}× of one process.")


def check_best_batch_size(fn: Callable[[Sequence[Any], float], int] | None) -> bool:
    """Exercise 3: ``fn(sweep, max_latency_ms)`` returns the highest-throughput batch size under the budget."""
    from labkit.bench.baseline import SweepPoint

    hint = "filter points with latency_ms <= max_latency_ms, then take the one with the largest throughput_per_s"
    if is_unanswered(fn):
        return verdict("Exercise 3", None, None, hint)
    sweep = [SweepPoint(1, 0.5, 2000, 1), SweepPoint(8, 1.0, 8000, 1), SweepPoint(64, 4.0, 16000, 1), SweepPoint(512, 30.0, 17000, 1)]
    cases = [(10.0, 64), (100.0, 512), (1.0, 8), (0.6, 1)]
    for budget, expected in cases:
        try:
            got = fn(sweep, budget)
        except Exception as exc:  # the student's function raised
            return verdict("Exercise 3", fn, f"your function raised {type(exc).__name__}: {exc} (budget {budget} ms)", hint)
        if is_unanswered(got):
            return verdict("Exercise 3", None, None, hint)
        if got != expected:
            return verdict("Exercise 3", fn, f"with a budget of {budget} ms it returned {got!r}, expected {expected}", hint)
    return verdict("Exercise 3", fn, None, hint, success="Bigger batches win until the latency budget says stop.")
