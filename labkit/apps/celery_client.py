"""The client side of at-least-once: one idempotency key per request, resubmitted past a deadline.

A broker can lose a task for good: kombu's Redis transport takes a message off the queue with
``BRPOP`` and only records it as unacknowledged in a *second* round trip, so a worker SIGKILLed
in between loses it (celery/celery#4354, celery/kombu#305). No broker setting closes that window;
the client can. Every labkit client that waits on a Celery result follows one rule:

    send the task under a key (its task id); if nothing came back within ``resubmit_after_s``
    (the broker's own redelivery time plus a margin), send it again under the same key;
    return the first result; count the rest as duplicates, never return them.

Tasks are pure, so running one twice is harmless; the result is stored under the key either way.
``Ledger`` is the rule as data (no clock inside: tests give it times); ``wait`` / ``wait_async``
run it with any publish/fetch pair; ``call`` runs it with a Celery task. For an event loop,
``RedisPublisher`` sends a task to a Redis broker and ``RedisResults`` waits on a Redis result
backend, both with ``redis.asyncio``: no thread, no lock shared with the loop, no blocking call.
Used in 06, ``labkit bench gateway``, ``labkit bench faults`` and the gateway; its ``ledger``
region is Shown in 06 §6.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from labkit.apps import celery_tasks as tasks

__all__ = ["Ledger", "RedisPublisher", "RedisResults", "call", "new_key", "redelivery_s", "resubmit_after_s", "wait", "wait_async"]

RESUBMIT_MARGIN_S = 0.5  # past the broker's redelivery time: let the broker win when it can
_RECENT = 10_000  # keys remembered after their first result, to count late duplicates
_READY = ("SUCCESS", "FAILURE", "REVOKED")


def redelivery_s(broker_url: str) -> float:
    """The longest a broker takes to hand a dead worker's task to another worker (its redelivery time).

    Redis: the task comes back once it is ``visibility_timeout`` old, at the next restore sweep
    (every ``unacked_restore_interval``). RabbitMQ: at once when the worker's connection closes
    (a SIGKILL closes it); a silent death is noticed after two missed heartbeats.
    """
    if broker_url.startswith(("redis", "rediss")):
        return float(tasks.VISIBILITY_TIMEOUT_S + tasks.UNACKED_RESTORE_INTERVAL_S)
    return float(2 * tasks.BROKER_HEARTBEAT_S)


def resubmit_after_s(broker_url: str) -> float:
    """The client's deadline: resubmit a task not heard back from after this long. Shown in 06 §5."""
    return redelivery_s(broker_url) + RESUBMIT_MARGIN_S


# region: ledger
@dataclass
class Ledger:
    """The resubmission rule as data: when each key was last sent, how often, what came back.

    ``due(key, now)`` is True when the key is still waiting and its last send is ``deadline_s``
    old; ``sent`` records a send (returns the attempt number); ``answered`` records a result and
    returns True only for the first one of that key — later ones are counted in ``duplicates``.
    """

    deadline_s: float
    pending: dict[str, tuple[float, int]] = field(default_factory=dict)  # key -> (last sent at, attempts)
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    submitted: int = 0
    resubmitted: int = 0
    duplicates: int = 0

    def sent(self, key: str, now: float) -> int:
        attempt = self.pending.get(key, (now, 0))[1] + 1
        self.pending[key] = (now, attempt)
        if attempt == 1:
            self.submitted += 1
        else:
            self.resubmitted += 1
        return attempt

    def due(self, key: str, now: float) -> bool:
        last = self.pending.get(key)
        return last is not None and now - last[0] >= self.deadline_s

    def answered(self, key: str) -> bool:
        if key in self.pending:
            del self.pending[key]
            self.recent[key] = None
            if len(self.recent) > _RECENT:
                self.recent.popitem(last=False)
            return True
        if key in self.recent:
            self.duplicates += 1
        return False

    def forget(self, key: str) -> None:
        """The client gave up on ``key`` (its own timeout): stop tracking it."""
        self.pending.pop(key, None)

    def counts(self) -> dict[str, int]:
        return {"submitted": self.submitted, "resubmitted": self.resubmitted, "duplicates": self.duplicates, "waiting": len(self.pending)}


# endregion


def new_key() -> str:
    """A fresh idempotency key (used as the Celery task id)."""
    return str(uuid.uuid4())


def wait(
    key: str,
    publish: Callable[[str, int], None],
    fetch: Callable[[str], Any],
    ledger: Ledger,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = 0.005,
) -> Any:
    """Send ``key``, then ``fetch(key)`` (None: not yet) until a result; resubmit whenever the ledger says due.

    ``publish(key, attempt)`` sends one attempt. Raises TimeoutError after ``timeout_s``.
    """
    t0 = clock()
    publish(key, ledger.sent(key, t0))
    while True:
        value = fetch(key)
        if value is not None:
            ledger.answered(key)
            return value
        t = clock()
        if t - t0 >= timeout_s:
            ledger.forget(key)
            raise TimeoutError(f"no result for {key} within {timeout_s} s")
        if ledger.due(key, t):
            publish(key, ledger.sent(key, t))
        sleep(poll_s)


async def wait_async(
    key: str,
    publish: Callable[[str, int], Awaitable[None]],
    fetch: Callable[[str, float], Awaitable[Any]],
    ledger: Ledger,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """``wait`` for an event loop: ``await fetch(key, wait_s)`` waits up to ``wait_s`` for a result (None: none yet)."""
    t0 = clock()
    await publish(key, ledger.sent(key, t0))
    while True:
        t = clock()
        left = min(t0 + timeout_s, ledger.pending.get(key, (t, 0))[0] + ledger.deadline_s) - t
        value = await fetch(key, max(left, 0.0))
        if value is not None:
            ledger.answered(key)
            return value
        t = clock()
        if t - t0 >= timeout_s:
            ledger.forget(key)
            raise TimeoutError(f"no result for {key} within {timeout_s} s")
        if ledger.due(key, t):
            await publish(key, ledger.sent(key, t))


def call(
    task: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, timeout_s: float = 60.0, ledger: Ledger | None = None, key: str | None = None, trace: bool = False, **options: Any
) -> Any:
    """Run a Celery task at least once and return its result (a blocking client: benchmarks, notebooks).

    The task id is the idempotency key; ``trace`` asks the worker to log each run (``run_log``).
    """
    from celery.result import AsyncResult

    ledger = ledger or Ledger(resubmit_after_s(tasks.app.conf.broker_url))

    def publish(k: str, attempt: int) -> None:
        task.apply_async(args, kwargs or {}, task_id=k, headers=tasks.attempt_headers(attempt, trace), **options)

    def fetch(k: str) -> Any:
        r = AsyncResult(k, app=tasks.app)
        if not r.ready():
            return None
        if r.failed():
            raise RuntimeError(f"task {k} failed: {r.result!r}")
        return r.result

    return wait(key or new_key(), publish, fetch, ledger, timeout_s)


class RedisResults:
    """Wait for Celery results on a Redis result backend without blocking the event loop.

    One ``redis.asyncio`` pub/sub connection subscribes to ``celery-task-meta-*`` (the backend
    publishes every stored state there) and ``start()`` returns only once Redis confirmed the
    subscription; a waiter registers its key *before* the task is sent, so no result can slip
    past. If the connection drops, the listener subscribes again and reads every waiting key at
    once (a result stored in the gap is not lost). Every ``fallback_s`` a waiter also reads its
    key itself: a safety net, counted in ``counts()`` — ``fallback_hits`` is a result the pub/sub
    never delivered. Another run of a key already answered is counted in ``ledger.duplicates``
    (the same stored result seen twice is not). Only messages for a waiting or recently
    answered key are decoded.
    """

    def __init__(self, url: str, ledger: Ledger, fallback_s: float = 1.0) -> None:
        import redis.asyncio as aredis

        self.client = aredis.Redis.from_url(url)
        self.ledger = ledger
        self.fallback_s = fallback_s
        self.prefix = "celery-task-meta-"
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._answers: OrderedDict[str, Any] = OrderedDict()  # key -> date_done of the result returned
        self._task: asyncio.Task[None] | None = None
        self.delivered = 0  # results handed to their waiter by a pub/sub message
        self.fallback_reads = 0  # times a waiter read its key itself (no message within fallback_s)
        self.fallback_hits = 0  # ... and found a result the pub/sub had not delivered: a missed message
        self.reconnects = 0  # pub/sub connections lost and subscribed again
        self.caught_up = 0  # results found by the read of every waiting key after a reconnect
        self.bad_messages = 0  # messages on the channel that were not a result's JSON

    def counts(self) -> dict[str, int]:
        """How results reached their waiters: by pub/sub, after a reconnect, or by the fallback read."""
        names = ("delivered", "fallback_reads", "fallback_hits", "reconnects", "caught_up", "bad_messages")
        return {n: int(getattr(self, n)) for n in names}

    async def _subscribe(self) -> Any:
        """A new pub/sub connection, returned once Redis confirmed the pattern subscription."""
        pubsub = self.client.pubsub()
        await pubsub.psubscribe(self.prefix + "*")
        while True:  # the confirmation comes first on this connection: from then on nothing is missed
            msg = await pubsub.get_message(timeout=5.0)
            if msg is None:
                raise ConnectionError("no psubscribe confirmation from Redis within 5 s")
            if msg["type"] == "psubscribe":
                return pubsub

    async def start(self) -> None:
        pubsub = await self._subscribe()
        self._task = asyncio.create_task(self._listen(pubsub))

    async def _listen(self, pubsub: Any) -> None:
        while True:
            try:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:  # connection dropped: subscribe again, then read every waiting key
                pubsub = await self._resubscribe(pubsub)
                continue
            if msg is not None and msg.get("type") == "pmessage":
                self._deliver(msg["channel"].decode()[len(self.prefix) :], msg["data"])

    async def _resubscribe(self, old: Any) -> Any:
        self.reconnects += 1
        try:
            await old.aclose()
        except Exception:
            pass
        while True:
            try:
                pubsub = await self._subscribe()
                await self._catch_up()
                return pubsub
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)

    async def _catch_up(self) -> None:
        """Read every waiting key once (MGET): a result stored while no subscription was up."""
        keys = [k for k, f in self._waiters.items() if not f.done()]
        if not keys:
            return
        for key, raw in zip(keys, await self.client.mget([self.prefix + k for k in keys])):
            fut = self._waiters.get(key)
            if raw is None or fut is None or fut.done():
                continue
            meta = self._decode(raw)
            if meta is not None and meta.get("status") in _READY:
                self.caught_up += 1
                fut.set_result(meta)

    def _decode(self, raw: bytes) -> dict[str, Any] | None:
        try:
            meta = json.loads(raw)
        except ValueError:
            self.bad_messages += 1
            return None
        if not isinstance(meta, dict):
            self.bad_messages += 1
            return None
        return meta

    def _deliver(self, key: str, raw: bytes) -> None:
        fut = self._waiters.get(key)
        waiting = fut is not None and not fut.done()
        if not waiting and fut is None and key not in self._answers:
            return  # someone else's result (or one long answered): not decoded
        meta = self._decode(raw)
        if meta is None or meta.get("status") not in _READY:
            return
        if fut is not None and not fut.done():
            self.delivered += 1
            fut.set_result(meta)
            return
        answer = fut.result().get("date_done") if fut is not None and not fut.cancelled() else self._answers.get(key)
        if meta.get("date_done") != answer:
            self.ledger.duplicates += 1  # another run of a key already answered

    def register(self, key: str) -> None:
        """Start listening for ``key`` (before its task is sent)."""
        self._waiters[key] = asyncio.get_running_loop().create_future()

    def release(self, key: str) -> None:
        """Stop listening for ``key``; remember its answer to tell a later run from the same result."""
        fut = self._waiters.pop(key, None)
        if fut is not None and fut.done() and not fut.cancelled():
            self._answers[key] = fut.result().get("date_done")
            if len(self._answers) > _RECENT:
                self._answers.popitem(last=False)

    async def fetch(self, key: str, wait_s: float) -> dict[str, Any] | None:
        """The result's metadata (``status``, ``result``) once stored, or None after ``wait_s``."""
        fut = self._waiters.get(key)
        if fut is None:
            return None
        end = time.monotonic() + wait_s
        while not fut.done():
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                return dict(await asyncio.wait_for(asyncio.shield(fut), timeout=min(left, self.fallback_s)))
            except asyncio.TimeoutError:
                self.fallback_reads += 1
                raw = await self.client.get(self.prefix + key)
                if raw is not None and not fut.done():
                    meta = self._decode(raw)
                    if meta is not None and meta.get("status") in _READY:
                        self.fallback_hits += 1
                        fut.set_result(meta)  # the pub/sub message, if it comes later, is the same result
        return dict(fut.result())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self.client.aclose()


class RedisPublisher:
    """Send a Celery task to a Redis broker from an event loop: one ``LPUSH`` with ``redis.asyncio``.

    It writes the message kombu's Redis transport writes (Celery protocol 2, JSON, body in
    base64, the default exchange, queue = routing key), so a normal worker takes it. Publishing
    through Celery instead (``apply_async`` in a thread pool) works too, but each publish then
    holds the GIL in another thread, and the loop waits for it.
    """

    def __init__(self, url: str) -> None:
        import os
        import socket

        import redis.asyncio as aredis

        self.client = aredis.Redis.from_url(url)
        self.origin = f"gen{os.getpid()}@{socket.gethostname()}"

    def message(self, name: str, args: list[Any], kwargs: dict[str, Any], task_id: str, queue: str, headers: dict[str, Any]) -> str:
        """The JSON kombu stores in the queue's list for one task."""
        import base64

        body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        head = {
            "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
            "root_id": task_id, "parent_id": None, "argsrepr": f"<{len(body)} bytes>", "kwargsrepr": "{}",
            "origin": self.origin, "ignore_result": False, "replaced_task_nesting": 0,
            "stamped_headers": None, "stamps": {}, **headers,
        }  # fmt: skip
        props = {
            "correlation_id": task_id, "reply_to": None, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        }  # fmt: skip
        return json.dumps({"body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8", "content-type": "application/json", "headers": head, "properties": props})

    async def publish(self, name: str, args: list[Any], kwargs: dict[str, Any], task_id: str, queue: str, headers: dict[str, Any]) -> None:
        await self.client.lpush(queue, self.message(name, args, kwargs, task_id, queue, headers))

    async def close(self) -> None:
        await self.client.aclose()
