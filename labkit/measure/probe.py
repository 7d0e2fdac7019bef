"""Was the machine busy while we measured? A contention probe for notebooks and benchmarks.

    p = probe.start()          # calibration matmul + load average + usable cores, now
    ...                        # the measurements
    report = p.finish()        # the same calibration again
    print(report.line())       # one line: idle, or busy and why
    report.cause()             # "another program used the CPU: load average 3.1 on 2 usable cores" or None

A fixed single-thread matmul is timed at the start and at the end (its best of a few short runs);
if the end is markedly slower, or the load average exceeds the usable cores this process may
use (``os.sched_getaffinity``), the report says the machine was busy, and verdicts that fail
print that as their likely cause. Used in every notebook's setup cell and by ``labkit bench``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Probe", "ProbeReport", "calibrate", "last", "load_average", "start", "usable_cores"]

CALIBRATION_SIZE = 256  # matmul side: ~1 ms per call on one laptop core
CALIBRATION_CALLS = 20  # calls per timed run
CALIBRATION_RUNS = 5  # the best of these runs is the figure
SLOWDOWN_LIMIT = 1.25  # end/start calibration time above this: the machine changed speed
LOAD_MARGIN = 0.5  # load average above usable cores + this margin: more runnable work than cores, busy

_LAST: list[ProbeReport] = []


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def calibrate(size: int = CALIBRATION_SIZE, calls: int = CALIBRATION_CALLS, runs: int = CALIBRATION_RUNS) -> float:
    """Seconds per call of a fixed fp32 matmul on one thread: the best of ``runs`` timed runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.mm(a, b)
            best = min(best, (time.perf_counter() - t0) / calls)
        return best
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class ProbeReport:
    """What the probe saw: calibration at start and end (s per call), load averages, usable cores."""

    start_s: float
    end_s: float | None
    load_start: float | None
    load_end: float | None
    usable_cores: int
    cpu_count: int

    @property
    def slowdown(self) -> float | None:
        """End calibration time over start calibration time (1.0 = same speed)."""
        return None if self.end_s is None else self.end_s / self.start_s

    @property
    def max_load(self) -> float | None:
        loads = [x for x in (self.load_start, self.load_end) if x is not None]
        return max(loads) if loads else None

    def busy(self) -> bool:
        """True when the calibration slowed down or the load exceeded the usable cores."""
        return self.cause() is not None

    def cause(self) -> str | None:
        """The likely cause of a disappointing figure, from what the probe measured; None if idle."""
        reasons = []
        if self.max_load is not None and self.max_load > self.usable_cores + LOAD_MARGIN:
            reasons.append(f"other programs used the CPU: load average {self.max_load:.1f} on {self.usable_cores} usable cores")
        if self.slowdown is not None and self.slowdown > SLOWDOWN_LIMIT:
            reasons.append(f"the machine slowed down during the run: calibration {self.slowdown:.2f}× slower at the end than at the start")
        return "; ".join(reasons) or None

    def line(self) -> str:
        """One line for a notebook or a benchmark: idle or busy, with the figures."""
        load = "n/a" if self.max_load is None else f"{self.max_load:.1f}"
        speed = "" if self.slowdown is None else f", calibration end/start {self.slowdown:.2f}×"
        head = f"machine: {self.usable_cores} usable cores (of {self.cpu_count}), load average {load}{speed}"
        cause = self.cause()
        return f"⚠️ {head} — busy: {cause}; read the ratios below with that in mind" if cause else f"✅ {head} — idle enough to measure"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(slowdown=self.slowdown, busy=self.busy(), cause=self.cause())
        return out


class Probe:
    """A started probe: ``finish()`` calibrates again and returns the report (also kept as ``last()``)."""

    def __init__(self) -> None:
        self.start_s = calibrate()
        self.load_start = load_average()
        self.report = ProbeReport(self.start_s, None, self.load_start, None, usable_cores(), os.cpu_count() or 1)
        _LAST[:] = [self.report]

    def finish(self) -> ProbeReport:
        self.report = ProbeReport(self.start_s, calibrate(), self.load_start, load_average(), usable_cores(), os.cpu_count() or 1)
        _LAST[:] = [self.report]
        return self.report


def start() -> Probe:
    """Calibrate now and remember the load average: call before measuring, ``finish()`` after."""
    return Probe()


def last() -> ProbeReport | None:
    """The most recent probe report of this process (a started or finished probe), if any."""
    return _LAST[0] if _LAST else None
