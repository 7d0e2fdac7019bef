"""``labkit bench celery``: the same tasks on Redis and on RabbitMQ, side by side.

For each broker (the result backend is Redis for both: chords need it): round trip
(``apply_async`` → ``get``) p50/p99 of a one-image MLP task, tasks/s with one and with two
workers, and the time until a task comes back after the worker running it was SIGKILLed —
during a batch whose every result is counted and checked. Notebook 06 calls the same functions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from labkit import bench

__all__ = ["BatchAfterKill", "BrokerFigures", "kill_during_batch", "measure_broker", "round_trip", "run", "throughput"]

P50_TARGET_MS = 5.0
REDELIVERY_TARGET_S = 15.0


def _images(n: int, offset: int = 0) -> tuple[list[list[float]], Any]:
    from labkit import data

    d = data.load_digits()
    idx = [(offset + i) % len(d.x_test) for i in range(n)]
    return d.x_test[idx].reshape(n, -1).tolist(), d.y_test[idx]


def round_trip(n: int = 200, warmup: int = 10, progress: bool = True) -> list[float]:
    """Latencies (s) of ``n`` sequential ``model_2.delay(one image).get()`` round trips."""
    from labkit.apps import celery_tasks as ct
    from labkit.measure.timing import now
    from labkit.runtime.progress import tqdm

    x, _ = _images(1)
    for _ in range(warmup):
        ct.model_2.delay(x).get(timeout=30)
    out = []
    for _ in tqdm(range(n), desc="round trips", disable=not progress, leave=False):
        t0 = now()
        ct.model_2.delay(x).get(timeout=30)
        out.append(now() - t0)
    return out


def throughput(n: int = 300, queue: str | None = None) -> float:
    """Tasks/s for ``n`` one-image MLP tasks sent at once to ``queue`` (default: the model's queue)."""
    from labkit.apps import celery_tasks as ct
    from labkit.measure.timing import now

    x, _ = _images(1)
    t0 = now()
    options = {"queue": queue} if queue else {}
    results = [ct.model_2.apply_async((x,), **options) for _ in range(n)]
    for r in results:
        r.get(timeout=60)
    return n / (now() - t0)


@dataclass
class BatchAfterKill:
    """A batch of N tasks during which one worker was SIGKILLed mid-task."""

    n_sent: int
    n_received: int
    n_correct: int
    killed: str
    redelivery_s: float
    elapsed_s: float
    workers_seen: dict[str, int] = field(default_factory=dict)
    redone_by: str | None = None  # the worker that ran the killed task again
    resubmitted: int = 0  # tasks the client sent again (same id) after the redelivery deadline

    @property
    def lost(self) -> int:
        return self.n_sent - self.n_received


def kill_during_batch(workers: list[Any], n: int = 20, repeats: int = 600, timeout_s: float = 60.0) -> BatchAfterKill:
    """Send ``n`` CNN tasks, SIGKILL the worker running the first one, then collect all ``n``.

    Every result is checked against the CNN run here; ``redelivery_s`` is the time from the kill
    until the killed task's result arrived (done by another worker, after the broker gave it back).
    A task not heard back from after ``celery_client.resubmit_after_s`` is sent again under the
    same id (``resubmitted``): the client's half of at-least-once.

    Shown in 06 §5 (its docstring).
    """
    import time

    import numpy as np

    from labkit.apps import celery_tasks as ct
    from labkit.measure.timing import now
    from labkit.models import digit_nets

    images, _ = _images(n * 4)
    batches = [images[4 * i : 4 * i + 4] for i in range(n)]
    cnn = ct.load_models()["cnn"]
    expected = [digit_nets.predict(cnn, np.asarray(b, dtype=np.float32).reshape(-1, 1, 8, 8)).tolist() for b in batches]
    by_pid = {w.pid: w for w in workers}
    from labkit.apps import celery_client

    ledger = celery_client.Ledger(celery_client.resubmit_after_s(str(ct.app.conf.broker_url)))
    t0 = now()
    results = [ct.model_1.apply_async((b,), {"repeats": repeats}, queue="cnn") for b in batches]
    for r in results:
        ledger.sent(r.id, t0)
    victim, victim_task = None, None
    while victim is None:  # wait until a task runs, and note which worker (pid) runs it
        for r in results:
            if r.state == "STARTED" and isinstance(r.info, dict) and r.info.get("pid") in by_pid:
                victim, victim_task = by_pid[r.info["pid"]], r
                break
        if now() - t0 > timeout_s:
            raise TimeoutError("no task started: are the workers consuming queue 'cnn'?")
        time.sleep(0.005)
    t_kill = now()
    victim.kill()
    done_at: dict[int, float] = {}
    while len(done_at) < n and now() - t_kill < timeout_s:
        for i, r in enumerate(results):
            if i not in done_at and r.ready():
                done_at[i] = now()
                ledger.answered(r.id)
            elif i not in done_at and ledger.due(r.id, now()):  # not heard back: resend under the same id
                attempt = ledger.sent(r.id, now())
                ct.model_1.apply_async((batches[i],), {"repeats": repeats}, queue="cnn", task_id=r.id, headers=ct.attempt_headers(attempt))
        time.sleep(0.01)
    values = [r.result if i in done_at and r.successful() else None for i, r in enumerate(results)]
    received = [v for v in values if v is not None]
    correct = sum(1 for v, e in zip(values, expected) if v is not None and v["pred"] == e)
    seen: dict[str, int] = {}
    for v in received:
        seen[v["worker"]] = seen.get(v["worker"], 0) + 1
    k = results.index(victim_task)
    redelivery = done_at[k] - t_kill if k in done_at else float("inf")
    victim_value = values[k]
    redone_by = victim_value["worker"] if victim_value is not None else None
    return BatchAfterKill(n, len(received), correct, victim.nodename, redelivery, now() - t0, seen, redone_by, ledger.resubmitted)


@dataclass
class BrokerFigures:
    """What ``measure_broker`` found for one broker."""

    broker: str
    round_trip_s: list[float]
    tasks_per_s_1: float
    tasks_per_s_2: float
    batch: BatchAfterKill | None

    def line(self) -> str:
        """The figures in one sentence with units."""
        d = self.summary()
        text = (f"{self.broker}: round trip p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms; "
                f"{d['tasks/s (1 worker)']} tasks/s with 1 worker, {d['tasks/s (2 workers)']} with 2")
        if self.batch is not None:
            text += f"; after a worker kill {d['received']} results back ({d['correct']} correct), the killed task redone {d['redelivery_s']} s after the kill"
        return text

    def summary(self) -> dict[str, Any]:
        from labkit.measure.timing import latency_stats

        ms = latency_stats(self.round_trip_s).ms()
        d = {"broker": self.broker, "p50_ms": round(ms["p50"], 2), "p99_ms": round(ms["p99"], 2), "tasks/s (1 worker)": round(self.tasks_per_s_1), "tasks/s (2 workers)": round(self.tasks_per_s_2)}
        if self.batch is not None:
            d.update({"redelivery_s": round(self.batch.redelivery_s, 1), "received": f"{self.batch.n_received}/{self.batch.n_sent}", "correct": self.batch.n_correct})
        return d


def measure_broker(broker: str, broker_url: str, backend_url: str, workers: list[Any], n_round_trips: int = 200, n_throughput: int = 300, n_batch: int = 20, kill: bool = True, progress: bool = True) -> BrokerFigures:
    """All figures for one broker, with ``workers`` (≥ 2, started on it) already running.

    With ``kill=True`` the last step SIGKILLs one of the workers.
    """
    from labkit.apps import celery_tasks as ct

    ct.use(broker_url, backend_url)
    rt = round_trip(n_round_trips, progress=progress)
    t1 = throughput(n_throughput, queue=workers[0].own_queue)
    t2 = throughput(n_throughput)
    batch = kill_during_batch(workers, n_batch) if kill else None
    return BrokerFigures(broker, rt, t1, t2, batch)


def run(fast: bool) -> bench.Result:
    """Start Redis and RabbitMQ, two workers on each in turn, and measure both."""
    from labkit.runtime.progress import tqdm
    from labkit.services import celery as celery_svc
    from labkit.services import rabbitmq, redis

    n_rt, n_tp, n_batch = (100, 150, 12) if fast else (1000, 1000, 40)
    result = bench.Result("celery")
    figures: dict[str, BrokerFigures] = {}
    with redis.start() as backend:
        for name in tqdm(["redis", "rabbitmq"], desc="brokers"):
            broker = backend if name == "redis" else rabbitmq.start()
            workers = celery_svc.start_workers(2, broker.url, backend.url)
            try:
                figures[name] = measure_broker(name, broker.url, backend.url, workers, n_rt, n_tp, n_batch)
            finally:
                celery_svc.stop_workers(workers)
                if broker is not backend:
                    broker.stop()
    from labkit.measure.timing import latency_stats

    for name, f in figures.items():
        ms = latency_stats(f.round_trip_s).ms()
        result.targets.append(bench.Target(f"round-trip p50 ({name})", ms["p50"], "ms", "<=", P50_TARGET_MS))
        result.targets.append(bench.Target(f"round-trip p99 ({name})", ms["p99"], "ms"))
        result.targets.append(bench.Target(f"tasks/s, 1 worker ({name})", f.tasks_per_s_1, "tasks/s"))
        result.targets.append(bench.Target(f"tasks/s, 2 workers ({name})", f.tasks_per_s_2, "tasks/s"))
        assert f.batch is not None
        result.targets.append(bench.Target(f"redelivery after worker SIGKILL ({name})", f.batch.redelivery_s, "s", "<=", REDELIVERY_TARGET_S))
        result.targets.append(bench.Target(f"tasks lost after worker SIGKILL ({name})", f.batch.lost, "tasks", "<=", 0))
        result.figures[name] = {**f.summary(), "batch": asdict(f.batch)}
    return result
