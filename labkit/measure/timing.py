"""Who did what when: Span and Timeline, latency percentiles, throughput, a ``timed`` block.

Every backend in the lab records ``Span(worker, stage, start, end, item)`` into a ``Timeline``;
every plot and the capstone table read that. Times come from ``now()`` — CLOCK_MONOTONIC on
Linux, which is system-wide, so spans recorded in different processes line up.

GPU work is asynchronous: a host clock read right after launching it measures the launch, not the
work. ``synchronize(device)`` is the one place that waits for a device; ``measure``, ``timed`` and
``Timeline.span`` call it before their clock stops (and before it starts) when given a ``device``,
and ``measure`` after its warm-up calls too. On the CPU it does nothing.

Measurement hygiene (every comparison in the notebooks and benchmarks goes through these):

    s = timing.point(fn)                       # warm-up, then >= min_point_s() of timed calls
    s.median, s.iqr, s.low, s.high             # seconds per call, and the spread over blocks
    by = timing.compare({"A": f, "B": g})      # A B A B ... interleaved, a Spread per variant
    by = timing.interleave({"A": run_a, ...})  # same, for callables that return their own figure
    by["A"].per(1000)                          # the Spread of a rate: 1000 items per call / s

``point`` uses ``torch.utils.benchmark.Timer.blocked_autorange`` (it keeps the caller's thread
count). A ``Spread`` holds one figure per repeat; ``str()`` gives "median (IQR q1–q3, n repeats)".
Used in every notebook.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from labkit.errors import BadInput

__all__ = [
    "LatencyStats",
    "Span",
    "Spread",
    "Stopwatch",
    "Timeline",
    "compare",
    "interleave",
    "latency_stats",
    "measure",
    "min_point_s",
    "now",
    "percentiles",
    "point",
    "spread",
    "synchronize",
    "throughput",
    "timed",
]

PERCENTILES = (50.0, 95.0, 99.0)


def now() -> float:
    """Return a monotonic time in seconds that is comparable across processes on one machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC) if hasattr(time, "CLOCK_MONOTONIC") else time.perf_counter()


def synchronize(device: Any = None) -> None:
    """Wait until the work queued on ``device`` (a torch device or its name) is done; CPU or None: nothing to wait for.

    >>> synchronize("cpu")
    """
    if device is None:
        return
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    if kind == "cpu":
        return
    import torch

    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()
    else:
        raise BadInput(f"cannot wait for device {device!r}: labkit knows cpu, cuda and mps")


@dataclass(frozen=True)
class Span:
    """One piece of work: ``worker`` did ``stage`` on ``item`` from ``start`` to ``end`` (seconds)."""

    worker: str
    stage: str
    start: float
    end: float
    item: Any = None

    @property
    def duration(self) -> float:
        return self.end - self.start


class Timeline:
    """A thread-safe list of spans with the questions plots ask of it.

    >>> tl = Timeline()
    >>> with tl.span("worker-0", "classify", item=3):
    ...     pass
    >>> len(tl), tl.spans[0].stage
    (1, 'classify')
    """

    def __init__(self, spans: Iterable[Span] = ()) -> None:
        self._spans: list[Span] = list(spans)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._spans)

    def __iter__(self) -> Iterator[Span]:
        return iter(self.spans)

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return sorted(self._spans, key=lambda s: (s.start, s.end))

    def add(self, span: Span) -> None:
        with self._lock:
            self._spans.append(span)

    def extend(self, spans: Iterable[Span | dict[str, Any]]) -> None:
        """Add spans, or their dict form (as sent back from another process)."""
        items = [s if isinstance(s, Span) else Span(**s) for s in spans]
        with self._lock:
            self._spans.extend(items)

    @contextmanager
    def span(self, worker: str, stage: str, item: Any = None, device: Any = None) -> Iterator[None]:
        """Record the block's duration as one span (recorded even if the block raises).

        With ``device`` the span ends when the work the block queued on it is done.
        """
        start = now()
        try:
            yield
        finally:
            synchronize(device)
            self.add(Span(worker, stage, start, now(), item))

    def to_dicts(self) -> list[dict[str, Any]]:
        return [asdict(s) for s in self.spans]

    @property
    def start(self) -> float:
        return min((s.start for s in self._spans), default=0.0)

    @property
    def end(self) -> float:
        return max((s.end for s in self._spans), default=0.0)

    @property
    def makespan(self) -> float:
        """Seconds from the first start to the last end."""
        return self.end - self.start

    def workers(self) -> list[str]:
        return sorted({s.worker for s in self._spans})

    def stages(self) -> list[str]:
        """Stages in order of first appearance."""
        seen: dict[str, None] = {}
        for s in self.spans:
            seen.setdefault(s.stage, None)
        return list(seen)

    def by_stage(self) -> dict[str, list[float]]:
        """Durations of each stage, in seconds."""
        out: dict[str, list[float]] = {}
        for s in self.spans:
            out.setdefault(s.stage, []).append(s.duration)
        return out

    def busy_fraction(self) -> dict[str, float]:
        """Fraction of the makespan each worker spent inside spans."""
        total = self.makespan or 1.0
        out: dict[str, float] = {}
        for s in self._spans:
            out[s.worker] = out.get(s.worker, 0.0) + s.duration / total
        return out

    def item_latencies(self) -> dict[Any, float]:
        """Per item: last end minus first start over all its stages."""
        first: dict[Any, float] = {}
        last: dict[Any, float] = {}
        for s in self._spans:
            if s.item is None:
                continue
            first[s.item] = min(first.get(s.item, s.start), s.start)
            last[s.item] = max(last.get(s.item, s.end), s.end)
        return {k: last[k] - first[k] for k in first}


def percentiles(values: Sequence[float], ps: Sequence[float] = PERCENTILES) -> dict[float, float]:
    """Percentiles with linear interpolation between closest ranks (numpy's default method)."""
    if len(values) == 0:
        raise BadInput("percentiles of an empty list are undefined: measure at least one value")
    xs = sorted(float(v) for v in values)
    out: dict[float, float] = {}
    for p in ps:
        if not 0 <= p <= 100:
            raise BadInput(f"percentile {p} is outside 0..100")
        rank = (len(xs) - 1) * p / 100.0
        lo = int(rank)
        hi = min(lo + 1, len(xs) - 1)
        out[p] = xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)
    return out


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latencies, in seconds."""

    n: int
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    def ms(self) -> dict[str, float]:
        """The same figures in milliseconds, rounded for printing."""
        return {k: round(v * 1e3, 3) for k, v in asdict(self).items() if k != "n"}

    def __str__(self) -> str:
        m = self.ms()
        return f"n={self.n} p50={m['p50']:.2f} ms p95={m['p95']:.2f} ms p99={m['p99']:.2f} ms"


def latency_stats(latencies_s: Sequence[float]) -> LatencyStats:
    """Summarise latencies (seconds) as mean, p50, p95, p99 and max."""
    p = percentiles(latencies_s)
    return LatencyStats(
        n=len(latencies_s),
        mean=sum(latencies_s) / len(latencies_s),
        p50=p[50.0],
        p95=p[95.0],
        p99=p[99.0],
        max=max(latencies_s),
    )


def throughput(n_items: int, elapsed_s: float) -> float:
    """Items per second."""
    if elapsed_s <= 0:
        raise BadInput(f"elapsed time must be positive, got {elapsed_s}")
    return n_items / elapsed_s


@dataclass
class Stopwatch:
    """What ``timed()`` yields: ``elapsed_s`` is set when the block ends."""

    start: float = field(default_factory=now)
    elapsed_s: float = 0.0


@contextmanager
def timed(device: Any = None) -> Iterator[Stopwatch]:
    """Time a block: ``with timed() as t: work()`` then read ``t.elapsed_s``.

    With ``device`` (e.g. ``"cuda"``) the clock starts once earlier work on it is done and stops
    once the block's work on it is done.
    """
    synchronize(device)
    sw = Stopwatch()
    try:
        yield sw
    finally:
        synchronize(device)
        sw.elapsed_s = now() - sw.start


def measure(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, device: Any = None) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times; return each duration (s).

    With ``device`` every timed call starts after the device is idle and ends when the device has
    finished the call's work (``synchronize``); without it, ``fn`` is assumed to run on the CPU.
    """
    if repeats < 1:
        raise BadInput("repeats must be at least 1")
    if warmup < 0:
        raise BadInput("warmup must be 0 or more")
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        synchronize(device)
        t0 = now()
        fn()
        synchronize(device)
        out.append(now() - t0)
    return out


# --- measurement hygiene: a minimum duration per point, interleaved repeats, median and spread ---

FAST_MIN_POINT_S = 0.3  # seconds of timed calls per measured point in fast mode
FULL_MIN_POINT_S = 1.0  # ... and in full mode
DEFAULT_REPEATS = 5  # interleaved rounds per compared variant


def min_point_s() -> float:
    """Seconds of timed work per measured point: 0.3 s in fast mode, 1 s in full mode."""
    from labkit import config

    return config.pick(fast=FAST_MIN_POINT_S, full=FULL_MIN_POINT_S)


@dataclass(frozen=True)
class Spread:
    """Repeated figures of one variant (seconds per call, or any figure): median and spread.

    >>> s = spread([1.0, 2.0, 3.0, 4.0, 10.0], label="x")
    >>> s.median, s.low, s.high, s.iqr
    (3.0, 1.0, 10.0, 2.0)
    >>> s.per(1.0).median  # a rate: 1 unit of work per call
    0.3333333333333333
    """

    values: tuple[float, ...]
    label: str = ""

    def _q(self, p: float) -> float:
        return percentiles(self.values, [p])[p]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return self._q(50.0)

    @property
    def q1(self) -> float:
        return self._q(25.0)

    @property
    def q3(self) -> float:
        return self._q(75.0)

    @property
    def iqr(self) -> float:
        """Interquartile range: q3 - q1."""
        return self.q3 - self.q1

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def best(self) -> float:
        """The smallest figure (for times: the least disturbed run)."""
        return self.low

    @property
    def relative_spread(self) -> float:
        """(max - min) / min: how far the most different repeat is from its twin (0.3 = 30 %)."""
        return (self.high - self.low) / self.low if self.low > 0 else float("inf")

    def scaled(self, factor: float) -> Spread:
        """Every figure times ``factor`` (e.g. 1e3 for ms)."""
        return Spread(tuple(v * factor for v in self.values), self.label)

    def per(self, work: float = 1.0) -> Spread:
        """The rate ``work / figure`` of every repeat (e.g. images per second from seconds per call)."""
        return Spread(tuple(work / v if v > 0 else float("inf") for v in self.values), self.label)

    def fmt(self, unit: str = "", digits: int = 2, scale: float = 1.0) -> str:
        """``median unit (IQR q1–q3, n repeats)`` with the figures times ``scale``."""
        f = f"{{:,.{digits}f}}"
        return f"{f.format(self.median * scale)}{unit} (IQR {f.format(self.q1 * scale)}–{f.format(self.q3 * scale)}{unit}, {self.n} repeats)"

    def __str__(self) -> str:
        return self.fmt()


def spread(values: Iterable[float], label: str = "") -> Spread:
    """A ``Spread`` of the given figures (at least one)."""
    vals = tuple(float(v) for v in values)
    if not vals:
        raise BadInput("a spread needs at least one figure")
    return Spread(vals, label)


def point(fn: Callable[[], Any], min_s: float | None = None, warmup: int = 1, device: Any = None, label: str = "") -> Spread:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then blocks of calls for at least ``min_s``.

    ``torch.utils.benchmark.Timer.blocked_autorange`` picks the block size (so a 10 µs call is timed
    in blocks of many calls) and runs blocks until ``min_s`` (default ``min_point_s()``) of timed
    work; the Spread holds each block's seconds per call. The caller's torch thread count is kept.
    """
    import torch
    from torch.utils import benchmark

    if warmup < 0:
        raise BadInput("warmup must be 0 or more")
    min_s = min_point_s() if min_s is None else min_s
    for _ in range(warmup):
        fn()
    synchronize(device)

    def call() -> None:
        fn()
        synchronize(device)

    timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=torch.get_num_threads(), label=label)
    m = timer.blocked_autorange(min_run_time=min_s)
    return Spread(tuple(float(t) for t in m.times), label)


def _rounds(variants: Mapping[str, Callable[[], Any]], repeats: int, warmup: int, one: Callable[[Callable[[], Any]], float]) -> dict[str, Spread]:
    if not variants:
        raise BadInput("give at least one variant to compare")
    if repeats < 1:
        raise BadInput("repeats must be at least 1")
    for fn in variants.values():  # warm every variant before any is timed
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # A B A B ..., never A A B B: a slow spell hits every variant
        for name, fn in variants.items():
            out[name].append(one(fn))
    return {name: Spread(tuple(v), name) for name, v in out.items()}


def compare(
    variants: Mapping[str, Callable[[], Any]],
    repeats: int = DEFAULT_REPEATS,
    min_s: float | None = None,
    warmup: int = 1,
    device: Any = None,
) -> dict[str, Spread]:
    """Seconds per call of each variant, timed in interleaved rounds (A B A B ...).

    Every variant is warmed up first; each round times every variant once, calling it until at
    least ``min_s / repeats`` has passed (at least once), so each variant gets ``min_s`` (default
    ``min_point_s()``) of timed work in all. Returns a Spread (one figure per round) per variant.
    """
    budget = (min_point_s() if min_s is None else min_s) / max(repeats, 1)

    def one(fn: Callable[[], Any]) -> float:
        synchronize(device)
        calls, t0 = 0, now()
        while True:
            fn()
            calls += 1
            synchronize(device)
            elapsed = now() - t0
            if elapsed >= budget:
                return elapsed / calls

    return _rounds(variants, repeats, warmup, one)


def interleave(variants: Mapping[str, Callable[[], float]], repeats: int = DEFAULT_REPEATS, warmup: int = 0) -> dict[str, Spread]:
    """Call each variant in interleaved rounds (A B A B ...) and collect the figure each returns.

    For runs that measure themselves (a pipeline's throughput, a pool's makespan): ``warmup`` calls
    of every variant are discarded first. Returns a Spread of the returned figures per variant.
    """
    return _rounds(variants, repeats, warmup, lambda fn: float(fn()))
