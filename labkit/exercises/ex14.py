"""Checks for notebook 14 (capstone): the Pareto front, and choosing an option under a latency budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labkit.exercises import is_unanswered, verdict

__all__ = ["check_budget_choice", "check_pareto_front"]


def check_pareto_front(front: Any, points: Mapping[str, tuple[float, float]]) -> bool:
    """★ ``front``: the names in ``points`` ({name: (throughput_per_s, p99_ms)}) that no other point dominates."""
    from labkit.measure.report import pareto_front

    want = set(pareto_front(points))
    problem = None
    if not is_unanswered(front):
        try:
            got = set(front)
        except TypeError:
            got = None
        if got is None:
            problem = f"expected a list or set of names, got {type(front).__name__}"
        elif got - set(points):
            problem = f"{sorted(got - set(points))} are not names in points"
        elif got != want:
            extra, missing = sorted(got - want), sorted(want - got)
            problem = (f"{extra} are dominated (another point has more throughput and a lower p99)" if extra else "") + (
                ("; " if extra else "") + f"{missing} are not dominated by anything, so they belong to the front" if missing else ""
            )
    return verdict("Pareto front", front, problem, "a point is dominated when another has throughput >= and p99 <= it, better in at least one", f"{len(want)} point(s) on the front.")


def check_budget_choice(choice: Any, loads: Mapping[str, Mapping[Any, Mapping[str, float]]], budget_ms: float) -> bool:
    """★★ ``choice``: the option with the highest throughput at any concurrency whose p99 there is ≤ ``budget_ms``.

    ``loads`` is ``{option: {concurrency: {"throughput_per_s": ..., "p99_ms": ...}}}``. When no
    option meets the budget the answer is the string ``"none"`` (None means "not done yet").
    """
    best, best_tp = "none", -1.0
    for name, by_c in loads.items():
        for s in by_c.values():
            if s["p99_ms"] <= budget_ms and s["throughput_per_s"] > best_tp:
                best, best_tp = name, s["throughput_per_s"]
    problem = None
    if not is_unanswered(choice) and choice != best:
        if choice not in loads and choice != "none":
            problem = f"{choice!r} is not one of the measured options {sorted(loads)}"
        else:
            problem = f"{choice!r} is not it: look at every concurrency of every option, keep those with p99 <= {budget_ms} ms, take the highest throughput"
    return verdict(
        "Best option under a p99 budget",
        choice,
        problem,
        "loop over options and concurrencies; filter by p99_ms <= budget; maximise throughput_per_s (answer 'none' if nothing fits)",
        f"{best} ({best_tp:.0f} requests/s)." if best != "none" else "",
    )
