"""Interleaved repeats of compared variants: warm-up, a minimum duration per point, median and spread.

    samples = repeats.interleave({"1 worker": run_1, "2 workers": run_2}, rounds=3, min_s=0.3)
    samples["2 workers"].median_s, samples["2 workers"].low_s, samples["2 workers"].high_s

Every variant is called once untimed first (warm-up: pools spawned, caches filled, threads
started). Then the variants take turns, round after round (A B, B A, A B … — the order flips each
round, so a machine that slows down mid-run hurts every variant alike), and a point is repeated
until it has run at least ``min_s`` seconds, so a fast point is not one noisy timer reading.
Each sample keeps every round's seconds per call; plots draw the spread (min–max) as error bars.

Used by the patterns notebooks (02, 03, 04, 05) and their benchmarks until ``labkit.measure.timing``
grows the same helper.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labkit.errors import BadInput
from labkit.measure.timing import now, synchronize

__all__ = ["Sample", "check_steady", "draw_spread", "interleave", "ratio"]

MIN_S = 0.3  # at least this long per timed point (fast mode); callers pass more in full mode
ROUNDS = 3  # interleaved rounds per variant
TWIN_LIMIT = 0.30  # repeats that differ by more than this (relative to the median) are suspect


@dataclass(frozen=True)
class Sample:
    """One variant's rounds: seconds per call of each round, with median and spread."""

    name: Hashable
    seconds: tuple[float, ...]
    calls_per_round: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def low_s(self) -> float:
        return min(self.seconds)

    @property
    def high_s(self) -> float:
        return max(self.seconds)

    @property
    def spread(self) -> float:
        """(max − min) / median of the rounds: 0.1 means the repeats agree within 10 %."""
        return (self.high_s - self.low_s) / self.median_s if self.median_s > 0 else 0.0

    def steady(self, limit: float = TWIN_LIMIT) -> bool:
        """True when the repeats agree within ``limit`` of the median."""
        return self.spread <= limit

    def __str__(self) -> str:
        return f"{self.name}: median {self.median_s * 1e3:,.1f} ms (min–max {self.low_s * 1e3:,.1f}–{self.high_s * 1e3:,.1f} ms, {len(self.seconds)} rounds × {self.calls_per_round} call(s))"


def interleave(
    variants: Mapping[Any, Callable[[], Any]],
    rounds: int = ROUNDS,
    min_s: float = MIN_S,
    warmup: int = 1,
    device: Any = None,
) -> dict[Any, Sample]:
    """Warm up every variant, then time them in alternating order for ``rounds`` rounds.

    Each variant's calls per round are fixed after the warm-up so that its rounds together last at
    least ``min_s`` (estimated from the warm-up call); the sample holds seconds per call.
    """
    if rounds < 1:
        raise BadInput("rounds must be at least 1")
    if not variants:
        raise BadInput("give at least one variant to time")
    calls: dict[Any, int] = {}
    for name, fn in variants.items():
        took = 0.0
        for _ in range(max(1, warmup)):
            synchronize(device)
            t0 = now()
            fn()
            synchronize(device)
            took = now() - t0
        calls[name] = max(1, math.ceil(min_s / rounds / took)) if took > 0 and warmup > 0 else 1
    seconds: dict[Any, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            fn = variants[name]
            synchronize(device)
            t0 = now()
            for _ in range(calls[name]):
                fn()
            synchronize(device)
            seconds[name].append((now() - t0) / calls[name])
    return {name: Sample(name, tuple(seconds[name]), calls[name]) for name in variants}


def ratio(numerator: Sample, denominator: Sample) -> tuple[float, float, float]:
    """``numerator / denominator`` of seconds (e.g. a speedup baseline/variant): median, low, high."""
    return (
        numerator.median_s / denominator.median_s,
        numerator.low_s / denominator.high_s,
        numerator.high_s / denominator.low_s,
    )


def draw_spread(ax: Any, xs: Sequence[Any], medians: Sequence[float], lows: Sequence[float], highs: Sequence[float], color: str = "black") -> None:
    """Draw min–max error bars around each median on ``ax`` (a speedup or throughput plot)."""
    yerr = [[m - lo for m, lo in zip(medians, lows)], [hi - m for m, hi in zip(medians, highs)]]
    ax.errorbar(list(xs), list(medians), yerr=yerr, fmt="none", ecolor=color, capsize=4, linewidth=1, zorder=3)


def check_steady(samples: Mapping[Any, Sample], limit: float = TWIN_LIMIT) -> bool:
    """Print one verdict: do the repeated rounds of every variant agree within ``limit``? (the worst spread is shown)."""
    from labkit.measure import verdicts

    worst = max(samples.values(), key=lambda s: s.spread)
    claim = f"the {len(worst.seconds)} interleaved rounds of each variant agree (worst: {worst.name})"
    return bool(verdicts.check(claim, 100 * worst.spread, "<=", 100 * limit, unit=" %", digits=0))
