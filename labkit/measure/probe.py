"""Was the machine busy while we measured? A contention probe for notebooks and benchmarks.

    p = probe.start()          # calibration matmul + load average + usable cores, now
    ...                        # the measurements
    report = p.finish()        # the same calibration again
    print(report.line())       # one line: idle, or busy and why
    report.cause()             # "other programs kept 1.3 of the 2 usable cores busy ..." or None

A fixed single-thread matmul is timed at the start and at the end (its best of a few short runs);
if the end is markedly slower, or the load average exceeds the usable cores this process may
use (``os.sched_getaffinity``), or other programs (not this process and its descendants) kept the
usable cores busy (from ``/proc/stat`` on Linux: ``others_cores``, cores' worth of CPU time used by
others since ``start()``), the report says the machine was busy, and verdicts that fail print that
as their likely cause. The start and the end calibration each sit in a window of at least
``WINDOW_S`` over which the others' share is measured too (``others_start``, ``others_end``), so
the start line reports what other programs used then, not just the load average.
The load average counts every runnable thread, this notebook's own included, so it is never
blamed on other programs by itself: a high one is explained by what was measured (other programs
during a calibration window, this notebook's processes outnumbering the cores or keeping them
busy), or reported as unexplained. While a probe runs, ``last()`` refreshes the shares (cheap:
a few file reads), so a verdict mid-notebook names what happened so far.
Used in every notebook's setup cell and by ``labkit bench``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

__all__ = ["Probe", "ProbeReport", "calibrate", "current", "glance", "last", "load_average", "remember", "start", "usable_cores"]

CALIBRATION_SIZE = 256  # matmul side: ~1 ms per call on one laptop core
CALIBRATION_CALLS = 20  # calls per timed run
CALIBRATION_RUNS = 5  # at least this many runs; the best of them is the figure
CALIBRATION_BUDGET_S = 0.4  # runs go on until this long has passed (inside the probe's window, so it costs no time): a best of ~20, not 5
SLOWDOWN_LIMIT = 1.25  # end/start calibration time above this: the machine changed speed (the only sign where /proc/stat is missing)
SLOWDOWN_MEASURED_LIMIT = 1.5  # the same, where other programs' CPU is measured: an idle 2-core VM's calibration moved 0.27–0.34 ms (1.24×) after a burst of its own work
LOAD_MARGIN = 0.5  # load average above usable cores + this margin: more runnable work than cores, busy
OTHERS_LIMIT = 0.5  # other programs using more than half a core on average: busy
WINDOW_S = 0.5  # the start and end calibrations are padded to this window for the CPU shares (/proc/stat counts 10 ms ticks)

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


_Key = tuple[int, float]  # (pid, create time): a pid the OS reuses is another process


class _Seen(NamedTuple):
    """A descendant as last seen."""

    parent: _Key | None  # None: a child of this process
    own_s: float  # its own CPU seconds
    waited_s: float  # its waited-for children's CPU seconds (the kernel's children times)
    orphan: bool  # seen with another parent since (init took it over): its parent never waits for it


_SEEN: dict[_Key, _Seen] = {}
_SEEN_LOCK = threading.Lock()
SAMPLE_S = 1.0  # a started probe looks at the process tree this often, so a worker that lives a second is counted


def _subtree_cpu_s(key: _Key, live: set[_Key]) -> tuple[float, float]:
    """(what ``key``'s parent's children times hold once it waits for ``key``, ``key``'s whole subtree), in CPU seconds."""
    seen = _SEEN[key]
    waited_s, unwaited_s = _below_cpu_s(key, live, seen.waited_s)
    return seen.own_s + waited_s, seen.own_s + waited_s + unwaited_s


def _below_cpu_s(key: _Key | None, live: set[_Key], waited_s: float) -> tuple[float, float]:
    """``key``'s descendants' CPU seconds in two parts: (what ``key`` waited for, the rest).

    The first is the larger of ``waited_s`` (its children times, perhaps seen before the last child exited)
    and what its gone children held for it (a parent that does not wait, like Ray's raylet, leaves
    ``waited_s`` short). The rest is what no wait of ``key`` records: its live children's subtrees, its
    orphans' (init reaps them), and what its gone children did not wait for in turn.
    """
    held_s, rest_s = 0.0, 0.0
    for kid in [k for k, seen in _SEEN.items() if seen.parent == key]:
        kid_held_s, kid_total_s = _subtree_cpu_s(kid, live)
        if kid in live or _SEEN[kid].orphan:
            rest_s += kid_total_s
        else:
            held_s += kid_held_s
            rest_s += kid_total_s - kid_held_s
    return max(waited_s, held_s), rest_s


def _tree_cpu_s(key: _Key | None, live: set[_Key], waited_s: float) -> float:
    """CPU seconds of ``key``'s descendants (live ones now, gone ones as last seen), each counted once.

    A chain whose every parent waited (TorchServe's launcher → Java → workers) is held whole in the top's
    children times and counts once; an orphan (a worker that outlived its server's shutdown) adds its own.
    """
    return sum(_below_cpu_s(key, live, waited_s))


def _own_cpu_s() -> tuple[float, int]:
    """CPU seconds of this process and all its descendants (live, waited for, or gone), and how many descendants are live.

    A descendant that exits without an ancestor here waiting for it (a Ray worker, whose raylet does not add it
    to its own children's CPU) would take its CPU out of the count and put it in other programs'; it counts
    instead with the CPU it had when a snapshot last saw it. A parent that did wait is not counted twice
    (``_tree_cpu_s`` says how).
    """
    t = os.times()
    try:
        import psutil
    except ImportError:
        return t.user + t.system + t.children_user + t.children_system, 0
    with _SEEN_LOCK:  # the probe's sampler thread walks the tree too
        live = _remember(psutil.Process().children(recursive=True))
        return t.user + t.system + _tree_cpu_s(None, live, t.children_user + t.children_system), len(live)


def _remember(procs: Iterable[Any]) -> set[_Key]:
    """Record each psutil process's CPU now under its (pid, create time), keeping a parent recorded earlier (and marking it an orphan once another parent has it); returns their keys."""
    import psutil

    me, keys = os.getpid(), set[_Key]()
    for proc in procs:
        try:
            with proc.oneshot():
                c, key, ppid = proc.cpu_times(), (proc.pid, proc.create_time()), proc.ppid()
            known = _SEEN.get(key)
            parent = known.parent if known else None if ppid == me else (ppid, psutil.Process(ppid).create_time())
        except psutil.Error:
            continue
        orphan = bool(known and (known.orphan or ppid != (me if parent is None else parent[0])))
        _SEEN[key] = _Seen(parent, c.user + c.system, c.children_user + c.children_system, orphan)
        keys.add(key)
    return keys


def remember(procs: Iterable[Any]) -> None:
    """Keep these descendants' CPU as this notebook's even once they are gone (``ManagedProcess.stop`` calls it on a tree before it ends it).

    A worker that outlives its parent's shutdown (LitServe's, once its front has exited) is reaped by init, out
    of every ``os.times()`` here; recorded with its parent before the kill and refreshed after, its CPU stays own
    (13 on an idle machine read 'other programs 0.7 cores' without this).
    """
    with _SEEN_LOCK:
        _remember(procs)


@dataclass(frozen=True)
class _Snapshot:
    busy_s: float  # busy CPU seconds of the usable cores (everyone's)
    wall_s: float
    own_s: float  # CPU seconds of this process and its descendants
    own_procs: int  # live descendants of this process (the processes it started, and theirs)


def _snapshot() -> _Snapshot | None:
    busy = _cpu_busy_s()
    if busy is None:
        return None
    own, n_procs = _own_cpu_s()
    return _Snapshot(busy[0], busy[1], own, n_procs)


def _shares(since: _Snapshot | None, now: _Snapshot | None) -> tuple[float | None, float | None]:
    """Cores' worth of CPU that (other programs, this notebook's processes) used between two snapshots."""
    if since is None or now is None or now.wall_s - since.wall_s < 0.05:
        return None, None
    wall, own = now.wall_s - since.wall_s, now.own_s - since.own_s
    return max(0.0, (now.busy_s - since.busy_s - own) / wall), max(0.0, own / wall)


def _pad(since: _Snapshot | None) -> None:
    """Sleep until ``WINDOW_S`` has passed since ``since``: a share over a few ticks is noise."""
    if since is not None:
        time.sleep(max(0.0, WINDOW_S - (time.monotonic() - since.wall_s)))


def calibrate(size: int = CALIBRATION_SIZE, calls: int = CALIBRATION_CALLS, runs: int = CALIBRATION_RUNS,
              budget_s: float = CALIBRATION_BUDGET_S) -> float:
    """Seconds per call of a fixed fp32 matmul on one thread: the best of at least ``runs`` timed runs, more until ``budget_s`` has passed.

    The best of 5 runs (100 ms) called an idle run 1.41× slower at its end; the best of every run in 0.4 s is steadier.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(size, size)
        b = torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        best, done, began = float("inf"), 0, time.perf_counter()
        while done < runs or time.perf_counter() - began < budget_s:
            t0 = time.perf_counter()
            for _ in range(calls):
                torch.mm(a, b)
            best, done = min(best, (time.perf_counter() - t0) / calls), done + 1
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
    own_cores: float | None = None  # cores' worth of CPU this process and its descendants used since the start
    own_procs: int | None = None  # the most processes this notebook started (live descendants) seen at once
    others_start: float | None = None  # other programs' share during the start calibration's window
    others_end: float | None = None  # other programs' share during the end calibration's window

    @property
    def slowdown(self) -> float | None:
        """End calibration time over start calibration time (1.0 = same speed)."""
        return None if self.end_s is None else self.end_s / self.start_s

    @property
    def slowdown_limit(self) -> float:
        """The slowdown that calls the machine busy: looser where other programs' CPU was measured, which then decides."""
        return SLOWDOWN_LIMIT if self.others_cores is None else SLOWDOWN_MEASURED_LIMIT

    @property
    def max_load(self) -> float | None:
        loads = [x for x in (self.load_start, self.load_end) if x is not None]
        return max(loads) if loads else None

    def busy(self) -> bool:
        """True when the calibration slowed down, the load exceeded the usable cores, or other programs used a core's share."""
        return self.cause() is not None

    @property
    def _span(self) -> str:
        """Over what the shares were measured: the start calibration's window, the run so far, or the whole run."""
        if self.end_s is None:
            return "during the start calibration" if self.load_end is None else "on average so far"
        return "on average over the run"

    def _high(self, value: float | None, limit: float, digits: int = 1) -> bool:
        return value is not None and round(value, digits) > limit  # compared as printed, like a verdict

    def cause(self) -> str | None:
        """The likely cause of a disappointing figure, from what the probe measured; None if idle."""
        reasons = []
        load_high = self._high(self.max_load, self.usable_cores + LOAD_MARGIN)
        if self._high(self.others_cores, OTHERS_LIMIT):
            load = f" (load average {self.max_load:.1f} on {self.usable_cores} usable cores)" if load_high else ""
            reasons.append(f"other programs kept {self.others_cores:.1f} of the {self.usable_cores} usable cores busy {self._span}{load}")
        elif load_high and (why := self._load_reason()):
            reasons.append(why)
        if self._high(self.slowdown, self.slowdown_limit, 2):
            reasons.append(f"the machine slowed down during the run: calibration {self.slowdown:.2f}× slower at the end than at the start")
        return "; ".join(reasons) or None

    def _load_set_aside(self) -> bool:
        """A high load average that nothing measured explains: a lagging mean, not a busy machine (see ``_load_reason``)."""
        return self._high(self.max_load, self.usable_cores + LOAD_MARGIN) and self._load_reason() is None

    def _load_reason(self) -> str | None:
        """Why the load average is high when other programs used little on average: only what was measured.

        None when other programs were measured and nothing explains the load: no burst in a calibration window,
        no crowd of this notebook's processes, no slower start. The 1-minute mean lags (a run started right after
        another one ended reads 2.9 with 0.0 cores in use), so it does not call the machine busy by itself.
        """
        cores = self.usable_cores
        high_end = self._high(self.load_end, cores + LOAD_MARGIN)
        if self.load_end is None:  # the start report, or a glance: one load average
            when = ""
        elif high_end:
            when = " now" if self.end_s is None else " at the end"
        else:
            when = " at the start"
        if self.others_cores is None:  # no /proc/stat, or a glance: the load average alone, which counts this notebook's threads too
            return f"load average {self.max_load:.1f} on {cores} usable cores (it counts every runnable thread, this notebook's own included; whose was not measured)"
        on = f"load average {self.max_load:.1f}{when} on {cores} usable cores"
        others = f"other programs used only {self.others_cores:.1f} cores {self._span}"
        faster = ""
        if self.slowdown is not None and self.slowdown < 1 / SLOWDOWN_LIMIT:
            faster = f", and the start calibration ran {1 / self.slowdown:.2f}× slower than the end (the machine was busier as this started)"
        windows = [] if self.end_s is None and self.load_end is None else [("start", self.others_start), ("end", self.others_end)]
        bursts = [f"{share:.1f} cores during the {name} calibration" for name, share in windows if self._high(share, OTHERS_LIMIT)]
        if bursts:
            return (
                f"{on}: other programs used {' and '.join(bursts)}, though only {self.others_cores:.1f} cores {self._span}{faster}: "
                "another program ran next to this notebook for part of the run"
            )
        own = []
        if self.load_end is not None and self.own_procs is not None and self.own_procs > cores:
            own.append(f"{self.own_procs} processes it started were live at once (more than the {cores} usable cores)")
        if self.load_end is not None and self._high(self.own_cores, cores - OTHERS_LIMIT):
            own.append(f"they used {self.own_cores:.1f} of the {cores} cores {self._span}")
        if own:
            return f"{on}, yet {others}{faster}: the load average counts this notebook's own processes too, and {', and '.join(own)}"
        if not faster:
            return None
        mine = "" if self.own_cores is None or self.load_end is None else f", and this notebook's processes {self.own_cores:.1f} cores"
        return (
            f"{on} (a 1-minute average of runnable threads: it lags), yet {others}{mine}{faster}: "
            "no measured program explains it; the causes to check are work that ended as this started "
            "and short bursts of this notebook's own processes"
        )

    def _condition(self) -> str:
        """What 'idle enough' was checked against, as printed."""
        aside = self._load_set_aside()
        checks = [] if self.max_load is None or aside else [f"load average ≤ {self.usable_cores + LOAD_MARGIN:.1f}"]
        if self.others_cores is not None:
            checks.append(f"other programs ≤ {OTHERS_LIMIT:.1f} cores")
        if self.slowdown is not None:
            checks.append(f"calibration end/start ≤ {self.slowdown_limit:.2f}×")
        text = ", ".join(checks) or "nothing measurable on this OS"
        if aside:
            text += (f"; the load average {self.max_load:.1f} is set aside: a lagging 1-minute mean of runnable threads, "
                     "and no program was measured using the cores")
        return text

    def line(self) -> str:
        """One line for a notebook or a benchmark: idle or busy, with the figures."""
        load = "n/a" if self.max_load is None else f"{self.max_load:.1f}"
        speed = "" if self.slowdown is None else f", calibration end/start {self.slowdown:.2f}×"
        others = "" if self.others_cores is None else f", other programs {self.others_cores:.1f} cores"
        head = f"machine: {self.usable_cores} usable cores (of {self.cpu_count}), load average {load}{others}{speed}"
        cause = self.cause()
        if cause:
            return f"⚠️ {head} — busy: {cause}; read this run's ratios with that in mind"
        return f"✅ {head} — idle enough to measure (expected {self._condition()})"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(slowdown=self.slowdown, busy=self.busy(), cause=self.cause())
        return out


class Probe:
    """A started probe: ``finish()`` calibrates again and returns the report (also kept as ``last()``)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.since = _snapshot()
        self.start_s = calibrate()
        _pad(self.since)
        now = _snapshot()
        self.others_start, own = _shares(self.since, now)
        self.own_procs = None if now is None else now.own_procs
        self.load_start = load_average()
        self.finished = False
        self.report = self._report(None, None, self.others_start, own)
        _LAST[:] = [self.report]
        for old in _ACTIVE:
            old._done.set()
        _ACTIVE[:] = [self]
        threading.Thread(target=self._sample, name="labkit-probe", daemon=True).start()

    def _sample(self) -> None:
        """Look at the process tree every ``SAMPLE_S`` until finished, so short-lived descendants keep their CPU.

        Only their CPU: the count of live processes stays the snapshots' (a Ray cluster's idle daemons, counted
        every second, made 07's idle run read '17 processes live at once' and busy).
        """
        while not self._done.wait(SAMPLE_S):
            _own_cpu_s()

    def _report(self, end_s: float | None, load_end: float | None, others: float | None, own: float | None, others_end: float | None = None) -> ProbeReport:
        start_only = load_end is None  # the start report: its shares are the start window's
        return ProbeReport(
            self.start_s, end_s, self.load_start, load_end, usable_cores(), os.cpu_count() or 1, others, own, self.own_procs,
            None if start_only else self.others_start, others_end,
        )

    def _seen(self) -> tuple[float | None, float | None]:
        """Others' and own shares since the start, counting this notebook's live processes on the way."""
        now = _snapshot()
        if now is not None:
            self.own_procs = max(self.own_procs or 0, now.own_procs)
        return _shares(self.since, now)

    def refresh(self) -> ProbeReport:
        """The report so far: load average and the CPU shares up to now (no calibration)."""
        if not self.finished:
            self.report = self._report(None, load_average(), *self._seen())
        return self.report

    def finish(self) -> ProbeReport:
        """Calibrate again (in its own window for the others' share) and return the whole run's report."""
        mark = _snapshot()
        end_s = calibrate()
        _pad(mark)
        others_end, _ = _shares(mark, _snapshot())
        self.report = self._report(end_s, load_average(), *self._seen(), others_end=others_end)
        self.finished = True
        self._done.set()
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
