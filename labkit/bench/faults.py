"""``labkit bench faults``: SIGKILL random workers under load, restart them, and count what was lost.

Four options, each under a closed loop of clients and a bounded kill loop (127.0.0.1 only):

- ``celery-redis`` / ``celery-rabbitmq``: clients → the FastAPI gateway → Celery (2 workers,
  Redis result backend). A random live worker's whole process is SIGKILLed at random moments
  (only while another one is still up), then started again. Every request is traced: each run
  of a task logs ``(task id, attempt, pid)``, so the broker's own losses are visible — a task
  whose first delivery never started — next to what the clients saw.
- ``ray-tasks``: ``@ray.remote(max_retries=…)`` tasks kept in flight; a random Ray worker
  process SIGKILLed; Ray starts a new one and retries the task.
- ``pool``: notebook 05's ``ResilientPool`` mapping batches; a random pool worker SIGKILLed;
  the pool is re-created and the unfinished tasks resubmitted.

Ray and the pool are killed again only once they have recovered (a worker on every CPU, a
request answered since): a kill while the last one's replacement starts would stack the two,
and the per-kill recovery would measure the stack. Measured before this rule, 8 Ray kills at
0.2–0.8 s gaps: worst 11.4 s, one request disrupted by four kills in a row; with it, 1.1 s.

Per option (``OptionFaults``): sent, lost at the broker (where visible), lost end to end, run
more than once, kills, worst recovery (for each kill: until every request it disrupted was
answered). Targets: 0 lost end to end; worst recovery ≤ the option's redelivery time + 2 s.
``measure(fast)`` returns the list (the capstone reads it); ``run(fast)`` prints the targets.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labkit import bench, config
from labkit.measure.load import Request
from labkit.measure.recovery import recovery_per_kill

__all__ = ["OPTIONS", "RECOVERY_MARGIN_S", "OptionFaults", "Plan", "celery_option", "measure", "pool_option", "pool_task", "ray_option", "ray_redelivery_s", "recovery_per_kill", "restore_sweep_s", "run"]

OPTIONS = ("celery-redis", "celery-rabbitmq", "ray-tasks", "pool")
RECOVERY_MARGIN_S = 2.0  # target: worst recovery ≤ redelivery time + this
RAY_CPUS = 2  # the Ray option's cluster: one worker per CPU serving


def ray_redelivery_s() -> float:
    """When Ray retries a task whose worker was killed, from its own settings (``src/ray/common/ray_config_def.h``):
    the raylet checks for a worker that vanished every ``raylet_check_for_unexpected_worker_disconnect_interval_ms``
    (1000 by default) and retries after ``task_retry_delay_ms`` (0 by default); ``RAY_<name>`` overrides either."""
    check_ms = float(os.environ.get("RAY_raylet_check_for_unexpected_worker_disconnect_interval_ms", 1000))  # noqa: SIM112 (Ray reads this exact case)
    delay_ms = float(os.environ.get("RAY_task_retry_delay_ms", 0))  # noqa: SIM112
    return (check_ms + delay_ms) / 1000.0


@dataclass
class Plan:
    """How hard to push: kills per option, clients, seconds between kills, a bound on the whole option."""

    kills: int = 30
    kills_other: int = 30  # Ray and the pool
    clients: int = 8
    workers: int = 4  # Celery workers per broker: up to workers - 2 restarting at once, 2 always serving
    gap_s: tuple[float, float] = (0.2, 0.8)
    max_s: float = 240.0
    seed: int = 23

    @staticmethod
    def pick(fast: bool) -> Plan:
        return Plan(kills=30, kills_other=10, max_s=240.0) if fast else Plan(kills=60, kills_other=30, max_s=900.0)


@dataclass
class OptionFaults:
    """What one option did under the kill loop. ``None`` where a figure cannot be seen."""

    option: str
    sent: int = 0
    lost_at_broker: int | None = None
    lost_end_to_end: int = 0
    run_more_than_once: int | None = None
    kills: int = 0
    worst_recovery_s: float | None = None
    redelivery_s: float = 0.0
    resubmitted: int = 0
    duplicates: int = 0
    elapsed_s: float = 0.0
    note: str = ""
    errors: list[str] = field(default_factory=list)  # the first few distinct errors the clients saw
    recovery_s: list[float] = field(default_factory=list)

    @property
    def recovery_target_s(self) -> float:
        return self.redelivery_s + RECOVERY_MARGIN_S

    @property
    def measured(self) -> bool:
        return self.sent > 0

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("recovery_s")
        d["recovery_target_s"] = self.recovery_target_s
        return d




class _Load:
    """Closed-loop clients in a background thread until ``stop()``: each sends, waits, sends again."""

    def __init__(self, send: Callable[[int], Any], clients: int) -> None:
        self.send = send  # an async function of the request index, raising on a wrong answer
        self.clients = clients
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="faults-load", daemon=True)

    async def _main(self) -> None:
        counter = iter(range(10**9))

        async def client(w: int) -> None:
            while not self._stop.is_set():
                i = next(counter)
                t0 = time.monotonic()
                try:
                    await self.send(i)
                    self.requests.append(Request(t0, time.monotonic() - t0, None, None, w))
                except Exception as exc:
                    self.requests.append(Request(t0, time.monotonic() - t0, None, f"{type(exc).__name__}: {exc}"[:200], w))

        await asyncio.gather(*(client(w) for w in range(self.clients)))

    def start(self) -> _Load:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 120.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)


def _kill_loop(plan: Plan, kills: int, victims: Callable[[], list[Any]], kill: Callable[[Any], None], deadline: float, progress: Any) -> list[float]:
    """Kill a random victim at random moments until ``kills`` kills or ``deadline``; return the kill times (each when the victim was gone)."""
    rng = random.Random(plan.seed)
    times: list[float] = []
    while len(times) < kills and time.monotonic() < deadline:
        time.sleep(rng.uniform(*plan.gap_s))
        pool = victims()
        if not pool:
            continue
        victim = rng.choice(pool)
        try:
            kill(victim)
        except Exception:  # it died on its own meanwhile
            continue
        # the kill time is when kill() returned (the process is gone), not when it was called: it first
        # lists the process tree (tens of ms on a busy machine), and a request sent meanwhile can reach
        # the victim and be lost with it — timed from the call, that request started "after the kill"
        # and its kill showed 0 s of recovery beside a task lost at the broker
        times.append(time.monotonic())
        progress.update()
    return times


def restore_sweep_s(redis_url: str, n: int = 100, repeats: int = 10) -> list[float]:
    """Seconds one kombu restore sweep takes to put back ``n`` due unacked messages (the lock must outlive it).

    Uses queue ``labkit-sweep`` on ``redis_url`` with the lab's transport options (visibility 0,
    so every delivered message is due at once); the queue is emptied afterwards.
    """
    from kombu import Connection

    from labkit.apps import celery_tasks as ct

    opts = {**ct.settings(redis_url)["broker_transport_options"], "visibility_timeout": 0}
    out = []
    with Connection(redis_url, transport_options=opts) as conn:
        q = conn.SimpleQueue("labkit-sweep")
        try:
            for _ in range(repeats):
                for i in range(n):
                    q.put({"i": i})
                for _ in range(n):
                    q.get(timeout=5)  # delivered, never acknowledged: now in the unacked hash
                qos = q.consumer.channel.qos
                t0 = time.perf_counter()
                qos.restore_visible(num=n, interval=1)
                out.append(time.perf_counter() - t0)
                q.clear()
        finally:
            q.close()
    return out


# ---------------------------------------------------------------- Celery through the gateway


def celery_option(broker: str, plan: Plan, progress: Any) -> OptionFaults:
    """Gateway + ``plan.workers`` Celery workers on ``broker`` ("redis" or "rabbitmq"), Redis result backend, under the kill loop."""
    import httpx

    from labkit.apps import celery_client
    from labkit.apps import celery_tasks as ct
    from labkit.bench.gateway import payload
    from labkit.services import celery as celery_svc
    from labkit.services import gateway, rabbitmq, redis

    t_start = time.monotonic()
    out = OptionFaults(f"celery-{broker}")
    with redis.start(external=False) as backend:
        mq = rabbitmq.start(external=False) if broker == "rabbitmq" else None
        broker_url = mq.url if mq is not None else backend.url
        # the broker's worst-case redelivery, the one the clients' deadline derives from: Redis 10 + 1 s;
        # RabbitMQ requeues at once when a killed worker's connection closes, but a silent death
        # is only noticed after two missed heartbeats (20 s)
        out.redelivery_s = celery_client.redelivery_s(broker_url)
        names = [f"w{i + 1}" for i in range(plan.workers)]
        workers: dict[str, Any] = {}
        restarting: set[str] = set()
        lock = threading.Lock()
        restarts = ThreadPoolExecutor(len(names), thread_name_prefix="faults-restart")
        try:
            for w in celery_svc.start_workers(len(names), broker_url, backend.url, external=False):  # its own broker, its own workers to kill
                workers[w.own_queue] = w
            with gateway.start(broker_url, backend.url) as gw:
                body = payload(2, "mlp") | {"trace": True}
                expected = httpx.post(gw.url + "/predict", json=body, timeout=60).json()["pred"]
                ct.run_log(backend.client(), clear=True)  # type: ignore[no-untyped-call]
                keys: list[str] = []

                async def send(i: int, client: list[Any] = []) -> None:  # noqa: B006  (one client per load thread)
                    if not client:
                        client.append(httpx.AsyncClient(timeout=90, limits=httpx.Limits(max_connections=plan.clients)))
                    r = await client[0].post(gw.url + "/predict", json=body)
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:120]}")
                    got = r.json()
                    keys.append(got.get("task_id", ""))
                    if got["pred"] != expected:
                        raise RuntimeError(f"wrong answer {got['pred']}")

                def victims() -> list[Any]:
                    with lock:
                        live = [w for n, w in workers.items() if n not in restarting and w.alive()]
                    return live if len(live) >= 2 else []  # never kill the last one standing

                def restart(name: str) -> None:
                    try:
                        w = celery_svc.start(name, broker_url, backend.url)
                        with lock:
                            workers[name] = w
                    finally:
                        with lock:
                            restarting.discard(name)

                def kill(w: Any) -> None:
                    with lock:
                        restarting.add(w.own_queue)
                    w.kill()  # SIGKILL, returns when the process is gone
                    restarts.submit(restart, w.own_queue)

                load = _Load(send, plan.clients).start()
                time.sleep(1.0)
                kills = _kill_loop(plan, plan.kills, victims, kill, t_start + plan.max_s, progress)
                time.sleep(out.redelivery_s + RECOVERY_MARGIN_S + 2.0)  # let the last kill's tasks come back
                load.stop()
                metrics = httpx.get(gw.url + "/metrics", timeout=10).json()["at_least_once"]
                time.sleep(out.redelivery_s + 1.0)  # a message still unacked now is restored before we count
                runs = ct.run_log(backend.client(), clear=True)  # type: ignore[no-untyped-call]
        finally:
            restarts.shutdown(wait=True)
            celery_svc.stop_workers([w for w in workers.values()])
            if mq is not None:
                mq.stop()
    started: dict[str, list[int]] = {}
    for key, attempt, _pid in runs:
        started.setdefault(key, []).append(attempt)
    answered = {k for k in keys if k}
    out.sent = len(load.requests)
    out.lost_end_to_end = sum(1 for r in load.requests if not r.ok)
    out.errors = sorted({str(r.error) for r in load.requests if not r.ok})[:5]
    out.lost_at_broker = sum(1 for k in answered | set(started) if 1 not in started.get(k, []))
    out.run_more_than_once = sum(1 for a in started.values() if len(a) > 1)
    out.kills = len(kills)
    out.recovery_s = recovery_per_kill(load.requests, kills)
    out.worst_recovery_s = max(out.recovery_s, default=None)
    out.resubmitted, out.duplicates = int(metrics["resubmitted"]), int(metrics["duplicates"])
    out.elapsed_s = time.monotonic() - t_start
    return out


# ---------------------------------------------------------------- Ray tasks


def _ray_work(i: int, log: str) -> int:
    with open(log, "a") as f:  # one line per run: a retried task shows up twice
        f.write(f"{i}\n")
    time.sleep(0.02)
    return i * i


def ray_option(plan: Plan, progress: Any, workdir: Path) -> OptionFaults:
    """Ray tasks (``max_retries``) kept in flight while random Ray workers are SIGKILLed."""
    out = OptionFaults("ray-tasks", redelivery_s=ray_redelivery_s())
    try:
        import ray

        from labkit.services import ray as ray_svc
    except ImportError as exc:
        out.note = f"not measured: {exc}"
        return out
    t_start = time.monotonic()
    log = str(workdir / "ray-runs.txt")
    try:
        cluster = ray_svc.start(num_cpus=RAY_CPUS)
    except Exception as exc:
        out.note = f"not measured: Ray did not start ({type(exc).__name__}: {str(exc)[:120]})"
        return out
    try:
        work = ray.remote(max_retries=plan.kills_other + 5, retry_exceptions=False)(_ray_work)

        async def send(i: int) -> None:
            if await work.remote(i, log) != i * i:
                raise RuntimeError("wrong answer")

        ray.get([work.remote(-1 - j, log) for j in range(4)])  # workers up

        killed_at = [0.0]

        def victims() -> list[Any]:  # one kill per recovered cluster, as the pool's: a worker on every CPU again and
            # a request sent after the last kill answered; a kill during a restart would only stack them
            running = [p for p in ray_svc._ray_descendants() if p.name().startswith("ray::_ray_work") or "ray::_ray_work" in " ".join(p.cmdline())]
            served = any(r.ok and r.start > killed_at[0] for r in load.requests[-plan.clients * 4:])
            return running if len(running) >= RAY_CPUS and served else []

        def kill(p: Any) -> None:
            killed_at[0] = time.monotonic()
            p.send_signal(signal.SIGKILL)

        load = _Load(send, plan.clients).start()
        time.sleep(1.0)
        kills = _kill_loop(plan, plan.kills_other, victims, kill, t_start + plan.max_s, progress)
        time.sleep(out.redelivery_s + RECOVERY_MARGIN_S + 1.0)
        load.stop()
    finally:
        cluster.stop()
    runs = [int(x) for x in Path(log).read_text().split()] if Path(log).exists() else []
    counts: dict[int, int] = {}
    for i in runs:
        counts[i] = counts.get(i, 0) + 1
    out.sent = len(load.requests)
    out.lost_end_to_end = sum(1 for r in load.requests if not r.ok)
    out.run_more_than_once = sum(1 for i, c in counts.items() if c > 1 and i >= 0)
    out.kills = len(kills)
    out.recovery_s = recovery_per_kill(load.requests, kills)
    out.worst_recovery_s = max(out.recovery_s, default=None)
    out.elapsed_s = time.monotonic() - t_start
    return out


# ---------------------------------------------------------------- notebook 05's resilient pool


def pool_task(i: int, log: str) -> int:
    """What the pool's workers run in this benchmark: log the run, return ``i * i``."""
    with open(log, "a") as f:
        f.write(f"{i}\n")
    time.sleep(0.01)
    return i * i


def pool_option(plan: Plan, progress: Any, workdir: Path) -> OptionFaults:
    """``ResilientPool.map`` over batches, in a loop, while a random pool worker is SIGKILLed now and then."""
    from labkit.patterns.pool import ResilientPool

    out = OptionFaults("pool")
    t_start = time.monotonic()
    log = str(workdir / "pool-runs.txt")
    batch = 16
    sent, lost, n_batches = 0, 0, 0
    requests: list[Request] = []
    stop = threading.Event()
    last_done = [0.0]  # when the last batch finished: the next kill waits for one after the previous kill
    rp = ResilientPool(n_workers=2, model_names=("mlp",), max_restarts=10**6)

    def mapper() -> None:
        nonlocal sent, lost, n_batches
        while not stop.is_set():
            ids = list(range(n_batches * batch, (n_batches + 1) * batch))
            n_batches += 1
            t0 = time.monotonic()
            try:
                got = rp.map(pool_task, ids, [log] * len(ids))
                bad = sum(1 for i, g in zip(ids, got) if g != i * i)
            except Exception as exc:
                bad, got = len(ids), [repr(exc)]
            dt = time.monotonic() - t0
            sent += len(ids)
            lost += bad
            requests.extend(Request(t0, dt, None, None if k >= bad else "lost") for k in range(len(ids)))
            last_done[0] = time.monotonic()

    try:
        rp.map(pool_task, [-1, -2], [log, log])  # the first pool: its start-up time is the "redelivery" time
        out.redelivery_s = rp.startup_s[-1]
        thread = threading.Thread(target=mapper, name="faults-pool", daemon=True)
        thread.start()
        time.sleep(0.5)
        killed_at = [0.0]

        def victims() -> list[int]:  # one kill per recovered pool: a kill during a restart would only stack them
            return [p for p in rp.pids if p] if last_done[0] > killed_at[0] else []

        def kill(pid: int) -> None:
            killed_at[0] = time.monotonic()
            os.kill(pid, signal.SIGKILL)

        kills = _kill_loop(plan, plan.kills_other, victims, kill, t_start + plan.max_s, progress)
        time.sleep(1.0)
        stop.set()
        thread.join(300)
    finally:
        rp.close()
    counts: dict[int, int] = {}
    for i in (int(x) for x in Path(log).read_text().split()):
        counts[i] = counts.get(i, 0) + 1
    out.sent, out.lost_end_to_end, out.kills = sent, lost, len(kills)
    out.run_more_than_once = sum(1 for i, c in counts.items() if c > 1 and i >= 0)
    out.resubmitted = rp.resubmitted
    out.redelivery_s = max(rp.startup_s) if rp.startup_s else out.redelivery_s  # recovery = a new pool's start-up
    out.recovery_s = recovery_per_kill(requests, kills)
    out.worst_recovery_s = max(out.recovery_s, default=None)
    out.elapsed_s = time.monotonic() - t_start
    return out


# ---------------------------------------------------------------- the benchmark


def measure(fast: bool | None = None, options: Sequence[str] = OPTIONS, plan: Plan | None = None, progress: bool = True) -> list[OptionFaults]:
    """Run the kill loop on each option in turn; one ``OptionFaults`` per option. Used by ``run`` and 14."""
    import tempfile

    from labkit.runtime.progress import tqdm
    from labkit.services import rabbitmq

    plan = plan or Plan.pick(config.fast() if fast is None else fast)
    total = sum(plan.kills if o.startswith("celery") else plan.kills_other for o in options)
    bar = tqdm(total=total, desc="kills", disable=not progress)
    out = []
    with tempfile.TemporaryDirectory(prefix="faults-", dir=config.cache_dir("faults")) as tmp:
        for option in options:
            bar.set_postfix_str(option)
            if option == "celery-rabbitmq" and not rabbitmq.available():
                out.append(OptionFaults(option, note="not measured: RabbitMQ is not installed"))
            elif option.startswith("celery-"):
                out.append(celery_option(option.removeprefix("celery-"), plan, bar))
            elif option == "ray-tasks":
                out.append(ray_option(plan, bar, Path(tmp)))
            elif option == "pool":
                out.append(pool_option(plan, bar, Path(tmp)))
    bar.close()
    return out


def run(fast: bool) -> bench.Result:
    """Every option under its kill loop: targets 0 lost end to end, recovery ≤ redelivery + 2 s."""
    from labkit.runtime import process

    before = {i["pid"] for i in process.running()}
    plan = Plan.pick(fast)
    from labkit.measure import probe

    watch = probe.start()
    results = measure(fast, plan=plan)
    process.assert_nothing_left(before=before, quiet=True)
    result = bench.Result("faults")
    for f in results:
        if not f.measured:
            result.figures[f.option] = f.summary()
            continue
        want = plan.kills if f.option.startswith("celery") else plan.kills_other
        result.targets += [
            bench.Target(f"{f.option}: SIGKILLs under load", f.kills, "kills", ">=", want),
            bench.Target(f"{f.option}: lost end to end", f.lost_end_to_end, "tasks", "<=", 0),
            bench.Target(f"{f.option}: worst recovery after a kill", f.worst_recovery_s or 0.0, "s", "<=", f.recovery_target_s),
            bench.Target(f"{f.option}: sent", f.sent, "tasks"),
            bench.Target(f"{f.option}: run more than once", -1 if f.run_more_than_once is None else f.run_more_than_once, "tasks"),
        ]
        if f.lost_at_broker is not None:
            result.targets.append(bench.Target(f"{f.option}: lost at the broker (first delivery never started)", f.lost_at_broker, "tasks"))
        result.figures[f.option] = f.summary()
    result.figures["load_average"] = list(os.getloadavg())
    report = watch.finish()
    result.figures["probe"] = report.as_dict() | {"line": report.line()}
    return result
