"""Sanity guards: numbers that cannot be right print ⚠️, and exercises refuse answers built on them.

    g = guards.fraction_of_peak(measured, peak)        # above 1: the peak was measured too low
    g = guards.peak_with_threads({1: 180.0, 2: 49.4})  # adding threads lowered the peak
    g = guards.repeats_agree(spread)                   # a repeat differs from its twin by > 30 %
    g = guards.rounds_agree(timing.compare(...))       # some variant's rounds differ by > 30 % of its median
    g = guards.speedup_within_cores(3.1, workers=4)    # more speedup than usable cores
    g = guards.speedup_at_least_one(0.7, workers=2)    # 2 workers did less than one worker's work
    if not g: ...                                      # g.reason says why; g.line is the ⚠️ line

Each guard prints its ⚠️ line (nothing when the number is sane, unless ``quiet=False``) and returns
a ``Guard``, truthy when sane. ``refusal(*guards)`` is the message an exercise's check returns
instead of ✅ when any guard tripped. The ⚠️ line ends with the probe's cause when it saw one.
``rounds_agree`` prints its ✅ line too: the patterns notebooks show that each comparison held steady.
Its 30 % is of the median (``Spread.steady``); ``repeats_agree``'s is of the smaller repeat.
Used in 00-05 and by their exercises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labkit.errors import BadInput
from labkit.measure import probe, verdicts
from labkit.measure.timing import STEADY_LIMIT, Spread

__all__ = ["TWIN_LIMIT", "Guard", "fraction_of_peak", "peak_with_threads", "refusal", "repeats_agree", "rounds_agree", "speedup_at_least_one", "speedup_within_cores"]

TWIN_LIMIT = 0.30  # a repeat more than 30 % away from its twin: the figure is noise, not a measurement
THREAD_DROP_LIMIT = 0.10  # a peak more than 10 % lower with more threads: threads fought for cores


@dataclass(frozen=True)
class Guard:
    """The outcome of one sanity guard: ``ok`` (truthy), the printed ``line``, and why it tripped."""

    ok: bool
    line: str
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok

    def _ipython_display_(self) -> None:  # a cell ending in a guard shows nothing more: the guard printed what matters
        return None


def _unexplained() -> str:
    """A note for a spread the probe cannot explain: no other load on average and no slowdown so far."""
    seen = probe.current()
    if seen.cause():
        return ""
    start = seen.others_start
    if start is not None and round(start, 1) > probe.OTHERS_LIMIT:  # the start line said busy: do not deny it
        return (f"; other programs used {start:.1f} cores during the start calibration but little on average so far, so the cause is not "
                "known from this run (another program for part of it, this notebook's own processes, or the OS)")
    return "; other programs stayed under the probe's limit, so the cause is not known from this run (this notebook's own processes, or the OS)"


def _cause(why: str) -> str:
    return verdicts.with_probe_cause(why)


def _guard(claim: str, value: float, op: str, bound: float, why: str, unit: str = "", digits: int = 2, quiet: bool = True) -> Guard:
    v = verdicts.check(f"sanity: {claim}", value, op, bound, unit=unit, digits=digits, cause=_cause(why), show=False)
    if not v or not quiet:
        print(v)
    return Guard(bool(v), str(v), "" if v else why)


def fraction_of_peak(measured: float, peak: float, what: str = "the measured rate", quiet: bool = True) -> Guard:
    """⚠️ when ``measured / peak`` exceeds 1: the 'peak' was measured while the machine was slower."""
    fraction = measured / peak if peak > 0 else float("inf")
    why = f"{what} beat the peak, so the peak was measured while the machine was slower (other programs or a lower clock); a fraction of it means nothing"
    return _guard(f"{what} is at most the peak", fraction, "<=", 1.0, why, unit="×", quiet=quiet)


def peak_with_threads(peaks: Mapping[int, float], quiet: bool = True) -> Guard:
    """⚠️ when the best rate with more threads is > 10 % below the rate with fewer threads."""
    counts = sorted(peaks)
    worst, pair = 1.0, (counts[0], counts[0])
    for i, lo in enumerate(counts):
        for hi in counts[i + 1 :]:
            ratio = peaks[hi] / peaks[lo] if peaks[lo] > 0 else 1.0
            if ratio < worst:
                worst, pair = ratio, (lo, hi)
    why = f"{pair[1]} threads ran slower than {pair[0]}: the threads waited for cores that other programs held, so this peak is not the machine's"
    return _guard("adding threads does not lower the peak", worst, ">=", 1.0 - THREAD_DROP_LIMIT, why, unit="×", quiet=quiet)


def repeats_agree(s: Spread, what: str = "", limit: float = TWIN_LIMIT, quiet: bool = True) -> Guard:
    """⚠️ when the most different repeat of ``s`` is more than ``limit`` (30 %) away from its twin."""
    name = what or s.label or "the figure"
    why = f"the repeats of {name} disagree by {s.relative_spread:.0%}, so a figure drawn from them depends on the moment it was timed{_unexplained()}"
    return _guard(f"repeats of {name} agree within {limit * 100:.0f} %", s.relative_spread * 100, "<=", limit * 100, why, unit=" %", digits=0, quiet=quiet)


def rounds_agree(spreads: Mapping[Any, Spread], limit: float = STEADY_LIMIT, quiet: bool = False) -> Guard:
    """One line for a whole comparison: do the interleaved rounds of every variant agree within
    ``limit`` (30 %) of their median (``Spread.steady``)? The worst variant is named.

    Unlike the other guards it prints its ✅ line as well unless ``quiet``. Used in 02, 04, 05.
    """
    if not spreads:
        raise BadInput("give at least one Spread (the result of timing.compare)")
    key = max(spreads, key=lambda k: spreads[k].median_relative_spread)  # the caller's name for the variant
    worst = spreads[key]
    name = ", ".join(map(str, key)) if isinstance(key, tuple) else key  # (3, "processes") reads "3, processes"
    spread = worst.median_relative_spread
    why = f"the rounds of {name} differ by {spread:.0%} of their median, so its median mixes fast and slow rounds{_unexplained()}"
    claim = f"the {worst.n} interleaved rounds of each variant agree (worst: {name})"
    return _guard(claim, 100 * spread, "<=", 100 * limit, why, unit=" %", digits=0, quiet=quiet)


def speedup_within_cores(speedup: float, workers: int | None = None, cores: int | None = None, quiet: bool = True,
                         timed_apart: str | None = None) -> Guard:
    """⚠️ when ``speedup`` exceeds the usable cores (or ``workers``, if fewer): the baseline ran slow.

    ``timed_apart`` says where the baseline was timed when not beside this run (``"in section 4"``): the cause then names that.
    """
    cores = probe.usable_cores() if cores is None else cores
    limit = min(cores, workers) if workers else cores
    why = f"{limit} {'workers' if workers and workers < cores else 'cores'} cannot do more than {limit}× the work of one, so the one-worker baseline was slowed"
    busy = probe.current().cause()
    if timed_apart:
        why += (f": it was timed {timed_apart}, not beside this run, and a machine's speed moves between moments"
                + (f"; {busy}" if busy else " (no other program was measured: the speed itself moved)"))
    else:
        why += f": {busy}" if busy else " (timed cold, or its speed moved: other programs stayed under the probe's limit)"
    return _guard(f"speedup is at most {limit}× ({'workers' if workers and workers < cores else 'usable cores'})", speedup, "<=", float(limit), why, unit="×", quiet=quiet)


def speedup_at_least_one(speedup: float, workers: int, quiet: bool = True) -> Guard:
    """⚠️ when ``workers`` parallel workers did less than one worker's work: they did not get a core each."""
    why = (f"{workers} workers did less work than one, so while they ran they did not get a core each "
           f"(the one-worker figure was timed at another moment){_unexplained()}")
    return _guard(f"{workers} workers do at least one worker's work", speedup, ">=", 1.0, why, unit="×", quiet=quiet)


def refusal(*checks: Guard) -> str | None:
    """The message an exercise returns when an answer rests on a number a guard rejected; None if all sane."""
    bad = [g.reason for g in checks if not g]
    if not bad:
        return None
    return "not accepted: the answer is built on a number that cannot be right — " + "; ".join(bad) + ". Measure again (on a quieter machine) and recompute."
