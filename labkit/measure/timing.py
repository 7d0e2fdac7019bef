"""Who did what when: Span and Timeline, latency percentiles, throughput, a ``timed`` block.

Every backend in the lab records ``Span(worker, stage, start, end, item)`` into a ``Timeline``;
every plot and the capstone table read that. Times come from ``now()`` — CLOCK_MONOTONIC on
Linux, which is system-wide, so spans recorded in different processes line up.

GPU work is asynchronous: a host clock read right after launching it measures the launch, not the
work. ``synchronize(device)`` is the one place that waits for a device; ``measure``, ``timed`` and
``Timeline.span`` call it before their clock stops (and before it starts) when given a ``device``,
and ``measure`` after its warm-up calls too. On the CPU it does nothing.
Used in every notebook.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from labkit.errors import BadInput

__all__ = [
    "LatencyStats",
    "Span",
    "Stopwatch",
    "Timeline",
    "latency_stats",
    "measure",
    "now",
    "percentiles",
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
