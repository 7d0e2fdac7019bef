"""Checks for notebook 04 (data parallelism): Amdahl's law, shards that cover the data, imbalance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labkit.exercises import is_unanswered, verdict

__all__ = ["check_amdahl", "check_shards", "check_static_efficiency"]


def check_amdahl(serial_fraction: float, n_replicas: int, answer: float | None) -> bool:
    """★ ``answer`` is Amdahl's predicted speedup for ``serial_fraction`` on ``n_replicas``."""
    problem = None
    if not 0.0 <= serial_fraction < 1.0:
        problem = f"the serial fraction {serial_fraction!r} is impossible (it is a share of the wall time, 0 ≤ s < 1): measure it again in section 4 before predicting from it"
        expected = float("nan")
    else:
        expected = 1.0 / (serial_fraction + (1.0 - serial_fraction) / n_replicas)
    if problem is None and not _is_number(answer):
        problem = f"expected a number, got {answer!r}"
    elif problem is None and answer > n_replicas + 1e-9:  # type: ignore[operator]
        problem = f"{answer:.3f}× is impossible: {n_replicas} replicas cannot be more than {n_replicas}× as fast as one"
    elif problem is None and abs(answer - expected) > 1e-3 * expected:  # type: ignore[operator]
        problem = f"{answer:.3f} is not Amdahl's prediction for s={serial_fraction:.4f}, N={n_replicas}"
    return verdict("Amdahl prediction", answer, problem, "speedup = 1 / (s + (1 - s) / N): only the parallel part shrinks with N", f"{expected:.2f}× at most, however fast each replica is.")


def check_shards(shards: Callable[[int, int], Any] | None) -> bool:
    """★★ ``shards(n_items, n_replicas)`` returns contiguous (start, stop) pairs covering every item once, sizes within 1."""
    problem = None
    if not is_unanswered(shards) and _returns_nothing(shards):
        shards = None  # a stub whose body is still `...`: not done yet
    if not is_unanswered(shards):
        for n_items, n_replicas in [(10, 3), (7, 7), (5, 1), (1000, 6), (3, 5)]:
            try:
                got = [tuple(map(int, r)) for r in shards(n_items, n_replicas)]
            except Exception as exc:  # the student's code raised: say which input
                problem = f"shards({n_items}, {n_replicas}) raised {exc!r}"
                break
            covered = [i for start, stop in got for i in range(start, stop)]
            sizes = [stop - start for start, stop in got]
            if len(got) != n_replicas:
                problem = f"shards({n_items}, {n_replicas}) gave {len(got)} shards, expected {n_replicas} (some may be empty)"
            elif covered != list(range(n_items)):
                problem = f"shards({n_items}, {n_replicas}) = {got} does not cover 0..{n_items - 1} exactly once, in order"
            elif max(sizes) - min(sizes) > 1:
                problem = f"shards({n_items}, {n_replicas}) sizes {sizes} differ by more than 1: one replica would wait for another"
            if problem:
                break
    return verdict("Even shards", shards, problem, "give the first n_items % n_replicas shards one extra item; start each shard where the previous stopped")


def check_static_efficiency(weights: list[float], answer: float | None) -> bool:
    """★ ``answer`` is the best efficiency static shards sized by ``weights`` can reach (equal-speed replicas)."""
    expected = (sum(weights) / len(weights)) / max(weights)
    problem = None
    if not _is_number(answer):
        problem = f"expected a number, got {answer!r}"
    elif not 0.0 < answer <= 1.0:  # type: ignore[operator]
        problem = f"an efficiency of {answer:.3f} is impossible: useful work over the replica-time available lies between 0 and 1"
    elif abs(answer - expected) > 1e-3:  # type: ignore[operator]
        problem = f"{answer:.3f} is not right for shard weights {weights}"
    return verdict("Static-shard efficiency", answer, problem, "everyone waits for the biggest shard: efficiency = mean shard / largest shard")


def _returns_nothing(fn: Callable[..., Any]) -> bool:
    try:
        return is_unanswered(fn(10, 3))
    except Exception:  # judged (and reported) by the full check
        return False


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
