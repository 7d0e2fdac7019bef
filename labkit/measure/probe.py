"""Was the machine busy while we measured? A contention probe for notebooks and benchmarks.

    p = probe.start()          # calibration matmul + load average + usable cores, now
    ...                        # the measurements
    report = p.finish()        # the same calibration again
    print(report.line())       # one line: idle, or busy and why
    report.cause()             # "another program used the CPU: load average 3.1 on 2 usable cores" or None

A fixed single-thread matmul is timed at the start and at the end (its best of a few short runs);
if the end is markedly slower, or the load average exceeds the usable cores this process may
use (``os.sched_getaffinity``), or other programs (not this process and its children) kept the
usable cores busy (from ``/proc/stat`` on Linux: ``others_cores``, cores' worth of CPU time used by
others since ``start()``), the report says the machine was busy, and verdicts that fail print that
as their likely cause. A high load average alone is not blamed on other programs when
``others_cores`` says they used little: the cause then names this notebook's own processes (or
work that ended as it started). While a probe runs, ``last()`` refreshes the others' share (cheap: two file
reads), so a verdict mid-notebook names what happened so far.
Used in every notebook's setup cell and by ``labkit bench``.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Probe", "ProbeReport", "calibrate", "current", "glance", "last", "load_average", "start", "usable_cores"]

CALIBRATION_SIZE = 256  # matmul side: ~1 ms per call on one laptop core
CALIBRATION_CALLS = 20  # calls per timed run
CALIBRATION_RUNS = 5  # the best of these runs is the figure
SLOWDOWN_LIMIT = 1.25  # end/start calibration time above this: the machine changed speed
LOAD_MARGIN = 0.5  # load average above usable cores + this margin: more runnable work than cores, busy
OTHERS_LIMIT = 0.5  # other programs using more than half a core on average: busy

_LAST: list[ProbeReport] = []
_ACTIVE: list[Probe] = []


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


def _cpu_busy_s() -> tuple[float, float] | None:
    """(busy CPU seconds of the usable cores, wall time) from /proc/stat; None where there is none."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        busy = 0.0
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in cpus:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
                    busy += user + nice + system + irq + softirq + steal
        return busy / os.sysconf("SC_CLK_TCK"), time.monotonic()
    except (AttributeError, OSError, ValueError):
        return None


def _own_cpu_s() -> float:
    """CPU seconds of this process, its waited-for children and its live descendants."""
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                c = child.cpu_times()
                own += c.user + c.system
            except psutil.Error:
                pass
    except ImportError:
        pass
    return own


def _snapshot() -> tuple[float, float, float] | None:
    busy = _cpu_busy_s()
    return None if busy is None else (busy[0], busy[1], _own_cpu_s())


def _others_cores(since: tuple[float, float, float] | None) -> float | None:
    """Cores' worth of CPU that other programs used on the usable cores since the snapshot ``since``."""
    now = _snapshot()
    if since is None or now is None or now[1] - since[1] < 0.05:
        return None
    others = (now[0] - since[0]) - (now[2] - since[2])
    return max(0.0, others / (now[1] - since[1]))


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
    others_cores: float | None = None  # cores' worth of CPU other programs used since the start

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
            reasons.append(self._load_reason())
        if self.others_cores is not None and self.others_cores > OTHERS_LIMIT:
            reasons.append(f"other programs kept {self.others_cores:.1f} of the {self.usable_cores} usable cores busy on average while this ran")
        if self.slowdown is not None and self.slowdown > SLOWDOWN_LIMIT:
            reasons.append(f"the machine slowed down during the run: calibration {self.slowdown:.2f}× slower at the end than at the start")
        return "; ".join(reasons) or None

    def _load_reason(self) -> str:
        """Why the load average is high: other programs, unless the direct measurement says they used little."""
        on = f"load average {self.max_load:.1f} on {self.usable_cores} usable cores"
        if self.others_cores is None or self.others_cores > OTHERS_LIMIT:
            return f"other programs used the CPU: {on}"
        # /proc/stat says other programs used little: the load average (a lagging 1-minute count of
        # runnable processes) then counts this notebook's own processes, or work that had just ended
        others = f"other programs used only {self.others_cores:.1f} cores {'so far' if self.end_s is None else 'over the run'}"
        faster = ""
        if self.slowdown is not None and self.slowdown < 1 / SLOWDOWN_LIMIT:
            faster = f", and the start calibration ran {1 / self.slowdown:.2f}× slower than the end (the machine was busier as this started)"
        if self.load_end is not None and self.load_end > self.usable_cores + LOAD_MARGIN:
            when = "now" if self.end_s is None else "at the end"
            return (
                f"load average {self.load_end:.1f} {when} on {self.usable_cores} usable cores, yet {others}{faster}: "
                "the load average counts this notebook's own processes, so they likely outnumbered the cores "
                "(workers or replicas next to this kernel)"
            )
        return (
            f"load average {self.max_load:.1f} at the start on {self.usable_cores} usable cores (a 1-minute average: it lags), "
            f"yet {others}{faster}: likely work that ended as this started, "
            "or this notebook's own processes outnumbering the cores"
        )

    def line(self) -> str:
        """One line for a notebook or a benchmark: idle or busy, with the figures."""
        load = "n/a" if self.max_load is None else f"{self.max_load:.1f}"
        speed = "" if self.slowdown is None else f", calibration end/start {self.slowdown:.2f}×"
        others = "" if self.others_cores is None else f", other programs {self.others_cores:.1f} cores"
        head = f"machine: {self.usable_cores} usable cores (of {self.cpu_count}), load average {load}{others}{speed}"
        cause = self.cause()
        return f"⚠️ {head} — busy: {cause}; read this run's ratios with that in mind" if cause else f"✅ {head} — idle enough to measure"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(slowdown=self.slowdown, busy=self.busy(), cause=self.cause())
        return out


class Probe:
    """A started probe: ``finish()`` calibrates again and returns the report (also kept as ``last()``)."""

    def __init__(self) -> None:
        self.since = _snapshot()
        self.start_s = calibrate()
        self.load_start = load_average()
        self.finished = False
        self.report = ProbeReport(self.start_s, None, self.load_start, None, usable_cores(), os.cpu_count() or 1, _others_cores(self.since))
        _LAST[:] = [self.report]
        _ACTIVE[:] = [self]

    def refresh(self) -> ProbeReport:
        """The report so far: load average and others' CPU share up to now (no calibration)."""
        if not self.finished:
            load = load_average()
            self.report = ProbeReport(self.start_s, None, self.load_start, load, usable_cores(), os.cpu_count() or 1, _others_cores(self.since))
        return self.report

    def finish(self) -> ProbeReport:
        self.report = ProbeReport(self.start_s, calibrate(), self.load_start, load_average(), usable_cores(), os.cpu_count() or 1, _others_cores(self.since))
        self.finished = True
        _LAST[:] = [self.report]
        return self.report


def start() -> Probe:
    """Calibrate now and remember the load average: call before measuring, ``finish()`` after."""
    return Probe()


def glance() -> ProbeReport:
    """A report from this moment's load average alone (no calibration): for a cell run without a probe."""
    return ProbeReport(float("nan"), None, load_average(), None, usable_cores(), os.cpu_count() or 1)


def current() -> ProbeReport:
    """The latest probe's report, or a glance at the load average when no probe ran in this process."""
    return last() or glance()


def last() -> ProbeReport | None:
    """The most recent probe report of this process (a started or finished probe), if any.

    While the latest probe is still running, its report is refreshed first (load, others' CPU).
    """
    if _ACTIVE and _LAST and _LAST[0] is _ACTIVE[0].report and not _ACTIVE[0].finished:
        _LAST[:] = [_ACTIVE[0].refresh()]
    return _LAST[0] if _LAST else None
