"""Pipeline inference: stages connected by bounded queues, run sequentially, in threads or in processes.

A ``Stage`` is a name, a *builder* (a module-level function, or a ``functools.partial`` of one,
that loads the model and returns the stage's function) and a replica count. The builder is
what travels to a spawned process, so it must be importable: that is why the stages of notebook
01 live here (``scene_stages``) and not in the notebook.

Runners, all returning a ``PipelineRun`` (outputs in input order, a ``Timeline`` of stage spans,
per-item latency and throughput):

- ``run_sequential``: one worker does every stage of an item before taking the next;
- ``run_threads``: one thread per stage replica, bounded ``queue.Queue`` between stages
  (back-pressure), a sentinel shuts the pipeline down, a failing stage stops every worker and
  raises ``WorkerFailed`` naming the stage in the caller;
- ``run_processes``: the same with spawned processes and ``multiprocessing`` queues, so every
  hop pickles the item (tensors go through shared memory) — ``PipelineRun.hops_s`` shows what
  that costs.

``measure_stages`` times each stage alone; ``pipeline_bound`` turns that into the most a
pipeline can deliver: 1 / (slowest stage time ÷ its replicas). ``against_bound`` runs a thread
pipeline several times, timing the stages alone just before and after each run (alone, run,
alone, run, …: the bound and the run see the same machine), and returns the ratios to the bound.
Used in 01 and ``labkit bench pipeline``.
"""

from __future__ import annotations

import functools
import queue
import statistics
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadInput, WorkerFailed
from labkit.measure.timing import LatencyStats, Timeline, latency_stats, now
from labkit.runtime.process import die_with_parent

__all__ = [
    "QUEUE_DEPTH",
    "THREAD_PREFIX",
    "BoundCheck",
    "PipelineRun",
    "Stage",
    "against_bound",
    "build_classify",
    "build_denoise",
    "build_detect",
    "check_below_bound",
    "failing",
    "measure_stages",
    "pipeline_bound",
    "run_processes",
    "run_sequential",
    "run_threads",
    "scene_stages",
    "thread_worker",
    "to_batches",
    "with_replicas",
]

QUEUE_DEPTH = 4  # items a queue between two stages may hold before the upstream stage blocks
POLL_S = 0.05  # how often a blocked worker checks whether the pipeline was stopped
JOIN_TIMEOUT_S = 10.0
START_TIMEOUT_S = 180.0  # spawned workers import torch and load their model before they are ready
THREAD_PREFIX = "labkit-pipeline"


class _End:
    """The sentinel that follows the last item: "no more items, shut down"."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _End)

    def __hash__(self) -> int:
        return 0


END = _End()


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: ``build()`` returns the function applied to every item.

    >>> s = Stage("double", functools.partial(_constant, lambda x: 2 * x))
    >>> run_sequential([s], [1, 2]).outputs
    [2, 4]
    """

    name: str
    build: Callable[[], Callable[[Any], Any]]
    replicas: int = 1

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise BadInput(f"stage {self.name!r} needs at least 1 replica, got {self.replicas}")


def _constant(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return fn


def with_replicas(stages: Sequence[Stage], **replicas: int) -> list[Stage]:
    """Return ``stages`` with new replica counts by name: ``with_replicas(stages, detect=2)``."""
    unknown = set(replicas) - {s.name for s in stages}
    if unknown:
        raise BadInput(f"no stage named {', '.join(sorted(unknown))}; stages are {', '.join(s.name for s in stages)}")
    return [Stage(s.name, s.build, replicas.get(s.name, s.replicas)) for s in stages]


@dataclass
class PipelineRun:
    """What a runner returns: outputs in input order, stage spans, per-item latency, throughput."""

    strategy: str
    outputs: list[Any]
    timeline: Timeline
    latencies_s: list[float]  # per item: result out minus item accepted by the pipeline
    elapsed_s: float  # first item accepted → last result out
    n_scenes: int  # items × their batch size: what throughput counts
    hops_s: dict[str, list[float]] = field(default_factory=dict)  # queue put → get, per hop
    startup_s: float = 0.0  # processes: spawn + import + model load, before the first item

    @property
    def throughput_per_s(self) -> float:
        """Scenes per second (a micro-batch of 8 counts 8)."""
        return self.n_scenes / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def stats(self) -> LatencyStats:
        """p50/p95/p99 of the per-item latency."""
        return latency_stats(self.latencies_s)

    def flat(self) -> list[Any]:
        """Outputs of micro-batches concatenated: one entry per scene, in input order."""
        return [o for out in self.outputs for o in out]

    def summary(self) -> str:
        s = self.stats()
        extra = f", start-up {self.startup_s:.1f} s" if self.startup_s else ""
        return f"{self.strategy:>22}: {self.throughput_per_s:7.1f} scenes/s, latency p50 {s.p50 * 1e3:6.2f} ms p95 {s.p95 * 1e3:6.2f} ms p99 {s.p99 * 1e3:6.2f} ms{extra}"


# ---------------------------------------------------------------- the scene stages of notebook 01


def build_denoise() -> Callable[[Any], Any]:
    """Stage 1: load the denoiser; the function maps a (B, 1, 32, 32) batch to its clean version."""
    import torch

    from labkit.models import vision

    model = vision.trained_denoiser(progress=False).to(memory_format=torch.channels_last)  # NHWC: ~2× faster convs on CPU

    def denoise(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x.contiguous(memory_format=torch.channels_last))

    return denoise


def build_detect() -> Callable[[Any], Any]:
    """Stage 2: load the detector; the function returns (images, one (k, 4) box array per image).

    Shown in 01 §1.
    """
    import torch

    from labkit.models import vision

    model = vision.trained_detector(progress=False).to(memory_format=torch.channels_last)

    def detect(x: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        with torch.inference_mode():
            return x, vision.find_boxes(model(x.contiguous(memory_format=torch.channels_last)))

    return detect


def build_classify() -> Callable[[Any], Any]:
    """Stage 3: load the DigitCNN; the function returns one (boxes, labels) pair per image."""
    import torch

    from labkit.models import digit_nets, vision

    model = digit_nets.trained(digit_nets.TrainConfig(), progress=False)

    def classify(item: tuple[torch.Tensor, list[Any]]) -> list[tuple[Any, Any]]:
        x, boxes = item
        with torch.inference_mode():
            labels = model(vision.crop_boxes(x, boxes)).argmax(dim=1).numpy()
        out, k = [], 0
        for b in boxes:
            out.append((b, labels[k : k + len(b)]))
            k += len(b)
        return out

    return classify


def scene_stages(denoise: int = 1, detect: int = 1, classify: int = 1) -> list[Stage]:
    """The three stages of notebook 01, with replica counts: preprocess → detect → classify."""
    return [Stage("denoise", build_denoise, denoise), Stage("detect", build_detect, detect), Stage("classify", build_classify, classify)]


def to_batches(images: Any, batch_size: int = 1) -> list[Any]:
    """Split (N, H, W) images into (B, 1, H, W) float tensors: the items of a pipeline run."""
    import numpy as np
    import torch

    if batch_size < 1:
        raise BadInput(f"batch_size must be at least 1, got {batch_size}")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    return [x[i : i + batch_size].clone() for i in range(0, len(x), batch_size)]


class _Failing:
    def __init__(self, fn: Callable[[Any], Any], after: int, stage: str) -> None:
        self.fn, self.after, self.calls, self.stage = fn, after, 0, stage

    def __call__(self, item: Any) -> Any:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError(f"injected failure in {self.stage} on call {self.calls}")
        return self.fn(item)


def _build_failing(build: Callable[[], Callable[[Any], Any]], after: int, name: str) -> Callable[[Any], Any]:
    return _Failing(build(), after, name)


def failing(stage: Stage, after: int = 0) -> Stage:
    """A copy of ``stage`` whose function raises after ``after`` successful calls (tests, exercises)."""
    return Stage(stage.name, functools.partial(_build_failing, stage.build, after, stage.name), stage.replicas)


# ---------------------------------------------------------------- measuring


def _size(item: Any) -> int:
    try:
        return len(item)
    except TypeError:
        return 1


def measure_stages(stages: Sequence[Stage], items: Sequence[Any], repeats: int = 3) -> dict[str, float]:
    """Seconds per item of each stage measured alone (median of ``repeats`` passes over ``items``).

    Each stage runs on the previous stage's outputs, one item at a time, after one warm-up call.
    """
    if not items:
        raise BadInput("measure_stages needs at least one item")
    inputs = list(items)
    out: dict[str, float] = {}
    for stage in stages:
        fn = stage.build()
        fn(inputs[0])
        per_item = []
        outputs: list[Any] = []
        for _ in range(max(1, repeats)):
            t0 = now()
            outputs = [fn(x) for x in inputs]
            per_item.append((now() - t0) / len(inputs))
        out[stage.name] = statistics.median(per_item)
        inputs = outputs
    return out


def pipeline_bound(stage_times_s: dict[str, float], replicas: dict[str, int] | None = None) -> float:
    """Items/s a pipeline can reach at most: 1 / max over stages of (time per item ÷ replicas)."""
    if not stage_times_s:
        raise BadInput("pipeline_bound needs at least one stage time")
    reps = replicas or {}
    return 1.0 / max(t / reps.get(name, 1) for name, t in stage_times_s.items())


def check_below_bound(throughputs: Mapping[str, float], bound_per_s: float, timed: str, unit: str = "scenes/s",
                      set_by: str = "its slowest stage") -> bool:
    """Print a ⚠️ line for each run faster than ``bound_per_s`` (from stage times taken ``timed``); True if none was.

    A bound holds for the stage times of one moment. A run at another moment, on a machine whose speed
    changed, can beat it: then what sets the bound (``set_by``: the slowest stage, or for the sequential
    bound all the stages) ran faster in that run than when it was timed.
    Shown in 01 §2, §4, §7, §8.
    """
    above = {name: v for name, v in throughputs.items() if v > bound_per_s}
    for name, v in above.items():
        print(f"⚠️ {name}: {v:,.0f} {unit} is above the bound {bound_per_s:,.0f} {unit} from the stage times of {timed}: "
              f"{set_by} ran faster in the run than at the moment of timing (the machine's speed changed between the two), "
              "so judge it against a bound timed around it, as §3 does")
    return not above


# ---------------------------------------------------------------- sequential


def run_sequential(stages: Sequence[Stage], items: Iterable[Any], warmup: bool = True) -> PipelineRun:
    """Run every stage of one item, then the next item, in this thread (the baseline).

    With ``warmup`` the first item goes through once, untimed, before the clock starts.
    """
    fns = [s.build() for s in stages]
    items = list(items)
    if warmup and items:
        x = items[0]
        for fn in fns:
            x = fn(x)
    timeline = Timeline()
    outputs, latencies, n = [], [], 0
    t_start = now()
    for seq, item in enumerate(items):
        n += _size(item)
        t0 = now()
        x = item
        for stage, fn in zip(stages, fns):
            with timeline.span("sequential", stage.name, item=seq):
                x = fn(x)
        outputs.append(x)
        latencies.append(now() - t0)
    return PipelineRun("sequential", outputs, timeline, latencies, now() - t_start, n)


# ---------------------------------------------------------------- threads


def _put(q: Any, obj: Any, stop: Any) -> bool:
    """Put with back-pressure; give up (False) if the pipeline is stopped while waiting."""
    while not stop.is_set():
        try:
            q.put(obj, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q: Any, stop: Any) -> Any:
    """Get the next item; None if the pipeline is stopped while waiting."""
    while not stop.is_set():
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            continue
    return None


class _Countdown:
    """Live replicas of a stage; the last one to see END passes END on to the next stage."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()

    def last(self) -> bool:
        with self.lock:
            self.n -= 1
            return self.n == 0


def _apply(fn: Callable[[Any], Any], seq: int, payload: Any, sent: float, worker: str, stage: str, timeline: Timeline, hops: list[float]) -> Any:
    """Run one item through a stage; warm-up items (negative ``seq``) are not timed."""
    if seq < 0:
        return fn(payload)
    hops.append(now() - sent)
    with timeline.span(worker, stage, item=seq):
        return fn(payload)


def thread_worker(
    worker: str, stage: str, fn: Callable[[Any], Any], qin: Any, qout: Any, n_next: int, countdown: _Countdown,
    stop: threading.Event, timeline: Timeline, hops: list[float], errors: list[tuple[str, str, BaseException]],
) -> None:
    """One worker thread of ``run_threads``: take an item, run ``fn``, pass it on; the last one out passes END.

    Shown in 01 §3 (what one worker thread of the pipeline does).
    """
    try:
        while True:
            env = _get(qin, stop)
            if env is None:
                return
            if env == END:
                if countdown.last():
                    for _ in range(n_next):
                        _put(qout, END, stop)
                return
            seq, payload, sent = env
            result = _apply(fn, seq, payload, sent, worker, stage, timeline, hops)
            if not _put(qout, (seq, result, now()), stop):
                return
    except BaseException as exc:
        errors.append((worker, stage, exc))
        stop.set()


def _feed(items: Sequence[Any], q: Any, n_first: int, stop: Any, entered: dict[int, float], warmup: int = 0, warm: threading.Event | None = None) -> None:
    """Put ``warmup`` untimed copies of the first item, wait until they are out, then every item, then END."""
    if warmup and items:
        for k in range(warmup):
            if not _put(q, (-1 - k, items[0], now()), stop):
                return
        while warm is not None and not warm.wait(POLL_S):
            if stop.is_set():
                return
    for seq, item in enumerate(items):
        t = now()
        if not _put(q, (seq, item, t), stop):
            return
        entered[seq] = t
    for _ in range(n_first):
        _put(q, END, stop)


def _collect(q: Any, n_items: int, stop: Any, alive: Callable[[], str | None], warmup: int = 0, warm: threading.Event | None = None) -> dict[int, tuple[Any, float]]:
    """Read results until END; stop early if a worker failed (``alive`` names a dead worker).

    Warm-up results (negative sequence numbers) are dropped; ``warm`` is set when all ``warmup`` are out.
    """
    done: dict[int, tuple[Any, float]] = {}
    warmed = 0
    while True:
        try:
            env = q.get(timeout=POLL_S)
        except queue.Empty:
            if stop.is_set() or alive() is not None:
                return done
            continue
        except Exception:  # a process queue whose sender died: report the failure, not this echo
            if stop.is_set() or alive() is not None:
                return done
            raise
        if env == END:
            return done
        seq, result, _ = env
        if seq < 0:
            warmed += 1
            if warm is not None and warmed >= warmup:
                warm.set()
            continue
        done[seq] = (result, now())


def _warmups(stages: Sequence[Stage], warmup: bool) -> int:
    """Untimed items to send first: one per replica of the widest stage, so most workers see one."""
    return max(s.replicas for s in stages) if warmup else 0


def _hop_names(stages: Sequence[Stage]) -> list[str]:
    names = ["source", *(s.name for s in stages)]
    return [f"{a}→{b}" for a, b in zip(names, names[1:])]


def _finish(strategy: str, items: Sequence[Any], done: dict[int, tuple[Any, float]], entered: dict[int, float], timeline: Timeline, hops: dict[str, list[float]], startup_s: float = 0.0) -> PipelineRun:
    missing = [i for i in range(len(items)) if i not in done]
    if missing:
        raise WorkerFailed(strategy, f"{len(missing)} of {len(items)} items never came out (first: item {missing[0]})")
    outputs = [done[i][0] for i in range(len(items))]
    latencies = [done[i][1] - entered[i] for i in range(len(items))]
    t0 = min(entered.values(), default=0.0)
    t1 = max((d[1] for d in done.values()), default=0.0)
    return PipelineRun(strategy, outputs, timeline, latencies, t1 - t0, sum(_size(x) for x in items), hops, startup_s)


def run_threads(stages: Sequence[Stage], items: Sequence[Any], queue_depth: int = QUEUE_DEPTH, warmup: bool = True) -> PipelineRun:
    """Run the stages in threads (one per replica) linked by bounded queues; outputs in input order.

    With ``warmup`` the first item goes through the workers untimed before the clock starts (as a
    server warms its models before taking traffic): a worker's first call pays one-off costs
    (its thread's memory pools, kernel selection) that a throughput figure should not count.

    A stage that raises stops every worker, and the caller gets ``WorkerFailed`` naming the stage,
    with the original exception chained. No thread outlives the call.
    """
    if queue_depth < 1:
        raise BadInput(f"queue_depth must be at least 1, got {queue_depth}")
    items = list(items)
    stop = threading.Event()
    qs: list[queue.Queue[Any]] = [queue.Queue(maxsize=queue_depth) for _ in range(len(stages) + 1)]
    timeline = Timeline()
    hop_names = _hop_names(stages)
    hops: dict[str, list[float]] = {h: [] for h in hop_names}
    errors: list[tuple[str, str, BaseException]] = []
    entered: dict[int, float] = {}
    threads = []
    try:
        for k, stage in enumerate(stages):
            n_next = stages[k + 1].replicas if k + 1 < len(stages) else 1
            countdown = _Countdown(stage.replicas)
            for r in range(stage.replicas):
                worker = f"{stage.name}-{r}"
                try:
                    fn = stage.build()
                except Exception as exc:
                    raise WorkerFailed(f"stage {stage.name!r} ({worker}, while loading)", exc) from exc
                args = (worker, stage.name, fn, qs[k], qs[k + 1], n_next, countdown, stop, timeline, hops[hop_names[k]], errors)
                threads.append(threading.Thread(target=thread_worker, args=args, name=f"{THREAD_PREFIX}-{worker}", daemon=True))
        n_warm, warm = _warmups(stages, warmup), threading.Event()
        feeder = threading.Thread(target=_feed, args=(items, qs[0], stages[0].replicas, stop, entered, n_warm, warm), name=f"{THREAD_PREFIX}-source", daemon=True)
        threads.append(feeder)
        for t in threads:
            t.start()
        done = _collect(qs[-1], len(items), stop, lambda: errors[0][0] if errors else None, n_warm, warm)
    finally:
        stop.set()
        for t in threads:
            if t.is_alive() or t.ident is not None:
                t.join(JOIN_TIMEOUT_S)
    if errors:
        worker, stage_name, error = errors[0]
        raise WorkerFailed(f"stage {stage_name!r} ({worker})", error) from error
    return _finish("threads", items, done, entered, timeline, hops)


@dataclass
class BoundCheck:
    """Thread pipeline runs measured against their own bound (stages timed alone around each run).

    Per run: ``stage_runs`` (seconds per item of each stage alone, the mean of the timings just
    before and after it), ``bounds_per_s`` (scenes per second) and ``ratios`` (run / bound).
    The headline figures (``run``, ``ratio``, ``throughput_per_s``, ``bound_per_s``, ``stage_s``,
    ``inside_s``) all belong to one run, the median-ratio run, so ratio = throughput / bound as printed.
    """

    runs: list[PipelineRun]
    stage_runs: list[dict[str, float]]
    bounds_per_s: list[float]
    scenes_per_item: int

    @property
    def ratios(self) -> list[float]:
        return [r.throughput_per_s / b for r, b in zip(self.runs, self.bounds_per_s)]

    @property
    def index(self) -> int:
        """Which run is the median-ratio run (of an even count, the better of the middle two)."""
        order = sorted(range(len(self.runs)), key=lambda i: self.ratios[i])
        return order[len(order) // 2]

    @property
    def run(self) -> PipelineRun:
        """The run with the median ratio (for Gantt charts and latency)."""
        return self.runs[self.index]

    @property
    def ratio(self) -> float:
        """The median-ratio run's throughput / bound."""
        return self.ratios[self.index]

    @property
    def throughput_per_s(self) -> float:
        """The median-ratio run's throughput (scenes per second)."""
        return self.run.throughput_per_s

    @property
    def bound_per_s(self) -> float:
        """The median-ratio run's bound (scenes per second), from the stage timings around it."""
        return self.bounds_per_s[self.index]

    @property
    def stage_s(self) -> dict[str, float]:
        """Seconds per item of each stage alone, timed around the median-ratio run."""
        return self.stage_runs[self.index]

    @property
    def slowest(self) -> str:
        return max(self.stage_s, key=lambda k: self.stage_s[k])

    def inside_s(self, i: int | None = None) -> dict[str, float]:
        """Seconds per item of each stage inside run ``i`` (default: the median-ratio run; mean span)."""
        run = self.run if i is None else self.runs[i]
        return {k: statistics.fmean(v) for k, v in run.timeline.by_stage().items()}

    def shortfall(self, i: int | None = None) -> str:
        """Run ``i``'s ratio (default: the median-ratio run) split into its two measured factors.

        ratio = throughput × (slowest stage alone) / scenes per item = (share of the run the slowest
        stage spent in a call) / (its time per call inside ÷ its time alone). The first factor is
        below 1 when that stage waited (for its input, or for a core); the second is above 1 when its
        calls ran slower inside the pipeline than alone. Shown in 01 §3.
        """
        i = self.index if i is None else i
        alone_s = self.stage_runs[i]
        slow = max(alone_s, key=lambda k: alone_s[k])
        inside = self.inside_s(i)[slow]
        busy = self.runs[i].throughput_per_s / self.scenes_per_item * inside
        inflation = inside / alone_s[slow]
        faster = " (a call ran faster inside than alone: the machine's speed changed between the timings and the run)" if inflation < 0.9 else ""
        return (f"{slow} was in a call {busy:.0%} of the run, and a call took {inside * 1e3:.2f} ms inside against "
                f"{alone_s[slow] * 1e3:.2f} ms alone ({inflation:.2f}×): {busy:.2f} / {inflation:.2f} = {busy / inflation:.2f}× of the bound{faster}")


def against_bound(stages: Sequence[Stage], items: Sequence[Any], repeats: int = 3, queue_depth: int = QUEUE_DEPTH) -> BoundCheck:
    """Run the thread pipeline ``repeats`` times; time the stages alone before the first run and
    after every run (alone, run, alone, run, …) and judge each run against the mean of the timings
    just before and after it. Throughput and bound are in scenes per second; the headline figures
    are those of the median-ratio run (``BoundCheck``), so they agree with each other.

    Shown in 01.
    """
    if repeats < 1:
        raise BadInput("repeats must be at least 1")
    items = list(items)
    per_item = _size(items[0]) if items else 1
    runs: list[PipelineRun] = []
    bounds: list[float] = []
    stage_runs: list[dict[str, float]] = []
    after = measure_stages(stages, items, repeats=1)
    for _ in range(repeats):
        before = after
        runs.append(run_threads(stages, items, queue_depth=queue_depth))
        after = measure_stages(stages, items, repeats=1)
        stage_s = {k: (before[k] + after[k]) / 2 for k in before}
        stage_runs.append(stage_s)
        bounds.append(pipeline_bound(stage_s) * per_item)
    return BoundCheck(runs, stage_runs, bounds, per_item)


# ---------------------------------------------------------------- processes


def _process_worker(
    worker: str, stage: str, build: Callable[[], Callable[[Any], Any]], qin: Any, qout: Any, n_next: int,
    live: Any, report: Any, stop: Any, torch_threads: int,
) -> None:
    """Body of one spawned stage replica (importable, so ``spawn`` can start it)."""
    die_with_parent()
    import torch

    torch.set_num_threads(torch_threads)
    timeline = Timeline()
    hops: list[float] = []
    try:
        fn = build()
        report.put(("ready", worker, None))
        while True:
            env = _get(qin, stop)
            if env is None:
                break
            if env == END:
                with live.get_lock():
                    live.value -= 1
                    last = live.value == 0
                if last:
                    for _ in range(n_next):
                        _put(qout, END, stop)
                break
            seq, payload, sent = env
            result = _apply(fn, seq, payload, sent, worker, stage, timeline, hops)
            if not _put(qout, (seq, result, now()), stop):
                break
        report.put(("spans", worker, (timeline.to_dicts(), hops)))
        # Tensors sent downstream live in this process's shared memory until they are read:
        # stay alive until the parent has every result and says stop.
        stop.wait()
    except BaseException as exc:
        if not stop.is_set():  # after a stop, errors are echoes of the first failure (lost shared tensors)
            report.put(("error", worker, (stage, f"{type(exc).__name__}: {exc}", traceback.format_exc())))
            stop.set()
        qout.cancel_join_thread()


def run_processes(stages: Sequence[Stage], items: Sequence[Any], queue_depth: int = QUEUE_DEPTH, torch_threads: int = 1, start_timeout_s: float = START_TIMEOUT_S, warmup: bool = True) -> PipelineRun:
    """Run the stages in spawned processes (one per replica) linked by ``multiprocessing`` queues.

    Start-up (spawn, import torch, load the model) is timed apart, as ``startup_s``; throughput
    and latency count from the first item, after an untimed warm-up item as in ``run_threads``.
    Errors and shutdown behave as in ``run_threads``; every process is joined (or terminated)
    before the call returns.
    """
    import multiprocessing as mp

    if queue_depth < 1:
        raise BadInput(f"queue_depth must be at least 1, got {queue_depth}")
    items = list(items)
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    qs = [ctx.Queue(maxsize=queue_depth) for _ in range(len(stages) + 1)]
    report = ctx.Queue()
    hop_names = _hop_names(stages)
    procs: list[tuple[str, str, Any]] = []
    entered: dict[int, float] = {}
    errors: list[tuple[str, str, str, str]] = []
    finished: dict[str, Any] = {}
    feeder: threading.Thread | None = None
    keep: list[Any] = []

    def drain(timeout: float = 0.0) -> None:
        try:
            while True:
                kind, worker, payload = report.get(timeout=timeout) if timeout else report.get_nowait()
                if kind == "error":
                    errors.append((worker, *payload))
                elif kind == "spans":
                    finished[worker] = payload
                else:
                    finished.setdefault("_ready", set()).add(worker)
                timeout = 0.0
        except queue.Empty:
            return

    def dead() -> str | None:
        drain()
        if errors:
            return errors[0][0]
        for worker, _, p in procs:
            if p.exitcode not in (None, 0):
                return worker
        return None

    t_spawn = now()
    try:
        for k, stage in enumerate(stages):
            n_next = stages[k + 1].replicas if k + 1 < len(stages) else 1
            live = ctx.Value("i", stage.replicas)
            keep.append(live)  # Process.start() drops its args: keep the shared counter alive
            for r in range(stage.replicas):
                worker = f"{stage.name}-{r}"
                args = (worker, stage.name, stage.build, qs[k], qs[k + 1], n_next, live, report, stop, torch_threads)
                p = ctx.Process(target=_process_worker, args=args, name=f"{THREAD_PREFIX}-{worker}", daemon=True)
                p.start()
                procs.append((worker, stage.name, p))
        deadline = now() + start_timeout_s
        while len(finished.get("_ready", ())) < len(procs):
            drain(POLL_S)
            if dead() is not None:
                break
            if now() > deadline:
                raise WorkerFailed("process pipeline", f"workers not ready after {start_timeout_s:.0f} s")
        startup_s = now() - t_spawn
        done: dict[int, tuple[Any, float]] = {}
        if dead() is None:
            n_warm, warm = _warmups(stages, warmup), threading.Event()
            feeder = threading.Thread(target=_feed, args=(items, qs[0], stages[0].replicas, stop, entered, n_warm, warm), name=f"{THREAD_PREFIX}-source", daemon=True)
            feeder.start()
            done = _collect(qs[-1], len(items), stop, dead, n_warm, warm)
            deadline = now() + JOIN_TIMEOUT_S
            while stop.is_set() and not errors and now() < deadline:  # a worker stopped us: await its report
                drain(POLL_S)
            deadline = now() + JOIN_TIMEOUT_S
            while dead() is None and len(finished) - 1 < len(procs) and now() < deadline:
                drain(POLL_S)
        failed = dead()
    finally:
        stop.set()
        if feeder is not None:
            feeder.join(JOIN_TIMEOUT_S)
        for _, _, p in procs:
            p.join(JOIN_TIMEOUT_S)
            if p.is_alive():
                p.terminate()
                p.join(JOIN_TIMEOUT_S)
        for q in [*qs, report]:
            q.cancel_join_thread()
            q.close()
    if failed is not None:
        if errors:
            worker, stage_name, message, tb = errors[0]
            raise WorkerFailed(f"stage {stage_name!r} ({worker}, process)", RuntimeError(f"{message}\n{tb}"))
        stage_name = next(s for w, s, _ in procs if w == failed)
        raise WorkerFailed(f"stage {stage_name!r} ({failed}, process)", "the process died without reporting an error")
    timeline = Timeline()
    hops: dict[str, list[float]] = {h: [] for h in hop_names}
    index = {s.name: k for k, s in enumerate(stages)}
    for worker, stage_name, _ in procs:
        spans, worker_hops = finished.get(worker, ([], []))
        timeline.extend(spans)
        hops[hop_names[index[stage_name]]].extend(worker_hops)
    return _finish("processes", items, done, entered, timeline, hops, startup_s)
