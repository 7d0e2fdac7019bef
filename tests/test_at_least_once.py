"""The client-side resubmission rule, without timing: an injected clock and a broker that drops a message.

``celery_client.wait`` / ``wait_async`` send a task under a key, resubmit it under the same key
once the ledger says the deadline passed, and return the first result; later results of the
same key are counted as duplicates, never returned.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from labkit.apps import celery_client, celery_tasks

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


class DroppingBroker:
    """Runs every attempt at once, except those in ``drop`` (lost between BRPOP and the unacked record)."""

    def __init__(self, drop: set[int]) -> None:
        self.drop = drop
        self.sent: list[tuple[str, int, float]] = []
        self.stored: dict[str, Any] = {}

    def publish(self, clock: FakeClock) -> Any:
        def publish(key: str, attempt: int) -> None:
            self.sent.append((key, attempt, clock()))
            if attempt not in self.drop:
                self.stored[key] = {"pred": [7], "attempt": attempt}

        return publish

    def fetch(self, key: str) -> Any:
        return self.stored.get(key)


def test_ledger_is_due_only_past_the_deadline_and_counts_duplicates() -> None:
    led = celery_client.Ledger(deadline_s=10.0)
    assert led.sent("k", 0.0) == 1
    assert not led.due("k", 9.99) and led.due("k", 10.0)
    assert led.sent("k", 10.0) == 2 and not led.due("k", 19.0) and led.due("k", 20.0)
    assert led.answered("k") is True  # the first result
    assert led.answered("k") is False and led.duplicates == 1  # the second: counted, not returned
    assert not led.due("k", 1e9)  # answered keys are never resubmitted
    assert led.counts() == {"submitted": 1, "resubmitted": 1, "duplicates": 1, "waiting": 0}
    assert led.answered("unknown") is False and led.duplicates == 1  # not ours: not a duplicate either


def test_a_dropped_message_is_resubmitted_once_under_the_same_key() -> None:
    clock, broker = FakeClock(), DroppingBroker(drop={1})
    led = celery_client.Ledger(deadline_s=11.5)
    value = celery_client.wait("key-1", broker.publish(clock), broker.fetch, led, timeout_s=60, clock=clock, sleep=clock.sleep, poll_s=0.5)
    assert value == {"pred": [7], "attempt": 2}
    assert [(k, a) for k, a, _ in broker.sent] == [("key-1", 1), ("key-1", 2)]
    assert broker.sent[1][2] == pytest.approx(11.5, abs=0.5)  # resent at the deadline, not before
    assert led.counts()["resubmitted"] == 1


def test_no_resubmission_when_the_broker_delivers() -> None:
    clock, broker = FakeClock(), DroppingBroker(drop=set())
    led = celery_client.Ledger(deadline_s=11.5)
    celery_client.wait("k", broker.publish(clock), broker.fetch, led, timeout_s=60, clock=clock, sleep=clock.sleep)
    assert len(broker.sent) == 1 and led.resubmitted == 0


def test_gives_up_after_the_timeout_and_forgets_the_key() -> None:
    clock, broker = FakeClock(), DroppingBroker(drop={1, 2, 3, 4, 5, 6})
    led = celery_client.Ledger(deadline_s=10.0)
    with pytest.raises(TimeoutError):
        celery_client.wait("k", broker.publish(clock), broker.fetch, led, timeout_s=35, clock=clock, sleep=clock.sleep, poll_s=1.0)
    assert [a for _, a, _ in broker.sent] == [1, 2, 3, 4] and led.counts()["waiting"] == 0


def test_wait_async_resubmits_and_returns_the_first_result_once() -> None:
    clock, broker = FakeClock(), DroppingBroker(drop={1})
    led = celery_client.Ledger(deadline_s=5.0)

    async def publish(key: str, attempt: int) -> None:
        broker.publish(clock)(key, attempt)

    async def fetch(key: str, wait_s: float) -> Any:
        clock.sleep(wait_s)  # waited the whole time it was allowed to
        return broker.fetch(key)

    value = asyncio.run(celery_client.wait_async("k", publish, fetch, led, timeout_s=30, clock=clock))
    assert value["attempt"] == 2 and [a for _, a, _ in broker.sent] == [1, 2]
    assert broker.sent[1][2] == pytest.approx(5.0)
    led.answered("k")  # the first attempt's result arriving late is a duplicate
    assert led.duplicates == 1


def test_deadline_follows_the_brokers_redelivery_time() -> None:
    redis_s = celery_client.redelivery_s("redis://127.0.0.1:1/0")
    assert redis_s == celery_tasks.VISIBILITY_TIMEOUT_S + celery_tasks.UNACKED_RESTORE_INTERVAL_S
    assert celery_client.resubmit_after_s("redis://127.0.0.1:1/0") > redis_s
    assert celery_client.resubmit_after_s("amqp://guest:guest@127.0.0.1:1//") > celery_client.redelivery_s("amqp://x")
    opts = celery_tasks.settings("redis://127.0.0.1:1/0")["broker_transport_options"]
    assert opts["unacked_mutex_expire"] == celery_tasks.UNACKED_MUTEX_EXPIRE_S < celery_tasks.VISIBILITY_TIMEOUT_S


def test_redis_publisher_writes_a_celery_protocol_2_message() -> None:
    pub = celery_client.RedisPublisher("redis://127.0.0.1:1/0")  # no connection is made until a command
    raw = json.loads(pub.message("labkit.apps.celery_tasks.model_1", [[[0.5] * 64]], {}, "tid", "cnn", celery_tasks.attempt_headers(2, True)))
    args, kwargs, embed = json.loads(base64.b64decode(raw["body"]))
    assert args == [[[0.5] * 64]] and kwargs == {} and set(embed) == {"callbacks", "errbacks", "chain", "chord"}
    assert raw["headers"]["id"] == "tid" and raw["headers"]["task"].endswith("model_1") and raw["headers"]["labkit_attempt"] == 2
    assert raw["properties"]["delivery_info"] == {"exchange": "", "routing_key": "cnn"} and raw["properties"]["body_encoding"] == "base64"
    assert celery_tasks.queue_of("labkit.apps.celery_tasks.model_2") == "mlp" and celery_tasks.queue_of("x") == "celery"
