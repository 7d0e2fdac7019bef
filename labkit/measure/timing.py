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
    by = timing.compare({"A": f, "B": g})      # A B, B A, A B ... rounds, a Spread per variant
    by = timing.compare(fs, fixed_calls=True)  # same calls in every round, fixed from the warm-up
    by = timing.interleave({"A": run_a, ...})  # same order, for callables that return their own figure
    by["A"].per(1000)                          # the Spread of a rate: 1000 items per call / s
    by["A"].steady()                           # rounds agree within 30 % of their median
    timing.ratio(by["A"], by["B"])             # A / B: median ratio and its widest range

``point`` uses ``torch.utils.benchmark.Timer.blocked_autorange`` (it keeps the caller's thread
count). A ``Spread`` holds one figure per repeat; ``str()`` gives "median (IQR q1–q3, n repeats)".
``compare`` flips the order every round (A B, then B A), so a machine that speeds up or slows down
during the run hurts every variant alike, and the variant timed last in one round is timed first
in the next. Used in every notebook.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

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
    "ratio",
    "spread",
    "synchronize",
    "throughput",
    "timed",
]

PERCENTILES = (50.0, 95.0, 99.0)

K = TypeVar("K", bound=Hashable)  # the name of a compared variant (a label, a worker count, a tuple)


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
STEADY_LIMIT = 0.30  # rounds whose max − min exceeds 30 % of their median are suspect (Spread.steady)


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
    >>> s.median_relative_spread, s.steady()  # (10 - 1) / 3: the repeats disagree
    (3.0, False)

    ``calls`` holds how many calls each round timed (from ``compare``; empty when the figures were
    not timed calls).
    """

    values: tuple[float, ...]
    label: str = ""
    calls: tuple[int, ...] = ()

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

    @property
    def median_relative_spread(self) -> float:
        """(max - min) / median of the repeats: 0.1 means they agree within 10 % of their median."""
        return (self.high - self.low) / self.median if self.median > 0 else 0.0

    def steady(self, limit: float = STEADY_LIMIT) -> bool:
        """True when the repeats agree within ``limit`` (30 %) of their median."""
        return self.median_relative_spread <= limit

    def scaled(self, factor: float) -> Spread:
        """Every figure times ``factor`` (e.g. 1e3 for ms)."""
        return Spread(tuple(v * factor for v in self.values), self.label, self.calls)

    def per(self, work: float = 1.0) -> Spread:
        """The rate ``work / figure`` of every repeat (e.g. images per second from seconds per call)."""
        return Spread(tuple(work / v if v > 0 else float("inf") for v in self.values), self.label, self.calls)

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


def ratio(numerator: Spread, denominator: Spread) -> tuple[float, float, float]:
    """``numerator / denominator`` (e.g. a speedup: the baseline's seconds over a variant's) as
    (median ratio, lowest, highest): the range pairs the numerator's low with the denominator's high
    and the other way round, so it covers every pair of repeats.

    >>> ratio(spread([2.0, 2.0, 2.0]), spread([1.0, 2.0, 4.0]))
    (1.0, 0.5, 2.0)
    """
    return numerator.median / denominator.median, numerator.low / denominator.high, numerator.high / denominator.low


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


def _rounds(
    variants: Mapping[K, Callable[[], Any]],
    repeats: int,
    warm: Callable[[K, Callable[[], Any]], None],
    one: Callable[[K, Callable[[], Any]], float],
) -> dict[K, list[float]]:
    if not variants:
        raise BadInput("give at least one variant to compare")
    if repeats < 1:
        raise BadInput("repeats must be at least 1")
    for name, fn in variants.items():  # warm every variant before any is timed
        warm(name, fn)
    out: dict[K, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(repeats):  # A B, B A, A B ...: never A A B B, and no variant always goes first
        for name in order if r % 2 == 0 else order[::-1]:
            out[name].append(one(name, variants[name]))
    return out


def compare(
    variants: Mapping[K, Callable[[], Any]],
    repeats: int = DEFAULT_REPEATS,
    min_s: float | None = None,
    warmup: int = 1,
    device: Any = None,
    fixed_calls: bool = False,
) -> dict[K, Spread]:
    """Seconds per call of each variant, timed in interleaved rounds whose order flips (A B, B A, A B ...).

    Every variant is warmed up first (``warmup`` calls each, before any is timed). Then each round
    times every variant once, so each gets at least ``min_s`` (default ``min_point_s()``) of timed
    work in all:

    - by default each round calls a variant until ``min_s / repeats`` has passed (at least once),
      reading the clock (and waiting for ``device``) after every call;
    - with ``fixed_calls`` the calls per round are fixed after the warm-up, from the last warm-up
      call's time, so that the rounds together last at least ``min_s``; every round then repeats the
      same work, and the clock is read (and ``device`` waited for) only around the whole round.
      Without a warm-up that is one call per round. Used so in 02, 03, 04, 05.

    Returns a Spread (one figure per round, ``calls`` per round) per variant, labelled by its name.

    >>> by = compare({"A": lambda: None, "B": lambda: None}, repeats=2, min_s=0.0, fixed_calls=True)
    >>> by["A"].n, by["B"].calls
    (2, (1, 1))
    """
    if warmup < 0:
        raise BadInput("warmup must be 0 or more")
    total_s = min_point_s() if min_s is None else min_s
    budget = total_s / max(repeats, 1)
    per_round: dict[K, int] = {}
    calls: dict[K, list[int]] = {name: [] for name in variants}

    def warm(name: K, fn: Callable[[], Any]) -> None:
        took = 0.0
        for _ in range(warmup):
            synchronize(device)
            t0 = now()
            fn()
            synchronize(device)
            took = now() - t0
        per_round[name] = max(1, math.ceil(total_s / repeats / took)) if took > 0 else 1

    def one(name: K, fn: Callable[[], Any]) -> float:
        synchronize(device)
        n, t0 = 0, now()
        if fixed_calls:
            for _ in range(per_round[name]):
                fn()
            n = per_round[name]
            synchronize(device)
            elapsed = now() - t0
        else:
            while True:
                fn()
                n += 1
                synchronize(device)
                elapsed = now() - t0
                if elapsed >= budget:
                    break
        calls[name].append(n)
        return elapsed / n

    seconds = _rounds(variants, repeats, warm, one)
    return {name: Spread(tuple(v), str(name), tuple(calls[name])) for name, v in seconds.items()}


def interleave(variants: Mapping[K, Callable[[], float]], repeats: int = DEFAULT_REPEATS, warmup: int = 0) -> dict[K, Spread]:
    """Call each variant in interleaved rounds (A B, B A, ...) and collect the figure each returns.

    For runs that measure themselves (a pipeline's throughput, a pool's makespan): ``warmup`` calls
    of every variant are discarded first. Returns a Spread of the returned figures per variant.
    """

    def warm(name: K, fn: Callable[[], float]) -> None:
        for _ in range(warmup):
            fn()

    figures = _rounds(variants, repeats, warm, lambda name, fn: float(fn()))
    return {name: Spread(tuple(v), str(name)) for name, v in figures.items()}
