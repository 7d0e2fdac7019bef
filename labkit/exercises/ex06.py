"""Checks for notebook 06 · Celery (Redis and RabbitMQ) + FastAPI."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

from labkit.exercises import is_unanswered, verdict
from labkit.measure import probe
from labkit.measure.load import run_outside_event_loop

__all__ = ["check_idempotent", "check_speedups", "check_wait_for"]

_REL_TOL = 0.02


def check_speedups(answer: Mapping[str, float] | None, figures: Mapping[str, Any]) -> bool:
    """Exercise 1: ``{broker: tasks/s with 2 workers ÷ tasks/s with 1 worker}`` from ``figures``."""
    expected = {name: f.tasks_per_s_2 / f.tasks_per_s_1 for name, f in figures.items()}
    hint = "for each broker in `figures`, divide .tasks_per_s_2 by .tasks_per_s_1"
    problem = None
    if not is_unanswered(answer):
        if not isinstance(answer, Mapping):
            problem = f"expected a dict broker → speedup, got {type(answer).__name__}"
        elif set(answer) != set(expected):
            problem = f"expected one entry per broker {sorted(expected)}, got {sorted(answer)}"
        else:
            for name, want in expected.items():
                got = answer[name]
                if not isinstance(got, (int, float)):
                    problem = f"{name}: expected a number, got {type(got).__name__}"
                elif abs(got - 1 / want) <= _REL_TOL * (1 / want) and abs(want - 1) > _REL_TOL:
                    problem = f"{name}: that is the inverse; divide the 2-worker figure by the 1-worker one"
                elif abs(got - want) > _REL_TOL * want:
                    problem = f"{name}: {got:.3g} is not the measured speedup (about {want:.3g})"
                if problem:
                    break
    best = max(expected, key=expected.get) if expected else "?"  # type: ignore[arg-type]
    top = expected.get(best, 0.0)
    cores = probe.usable_cores()
    if top >= 1.8:
        why = "near the 2× two workers can give at most"
    elif cores < 4:  # two workers, the broker and this client: fewer cores than that, and they share them
        why = f"under the 2× two workers can give at most: on {cores} usable core(s), the broker and this client need CPU too"
    else:  # enough cores for all four: the cores are not the cause
        why = "under the 2× two workers can give at most: the broker and this client handle every task too, so the workers are not the only limit"
    return verdict("Exercise 1", answer, problem, hint, success=f"Two workers helped most on {best} ({top:.2f}×) — {why}.")


# Which tasks may run twice without harm? (a redelivered task runs again)
_IDEMPOTENT = {"a": True, "b": False, "c": True, "d": False}


def check_idempotent(answer: set[str] | None) -> bool:
    """Exercise 2: the letters of the tasks that are safe to run twice."""
    hint = "a task is idempotent if running it twice leaves the world as running it once: reads and overwrites are; appends, increments and emails are not"
    problem = None
    want = {k for k, v in _IDEMPOTENT.items() if v}
    if not is_unanswered(answer):
        got = {str(x).strip().lower() for x in answer} if isinstance(answer, (set, list, tuple, frozenset)) else None
        if got is None:
            problem = f"expected a set of letters like {{'a'}}, got {type(answer).__name__}"
        elif got - set(_IDEMPOTENT):
            problem = f"unknown letters {sorted(got - set(_IDEMPOTENT))}; choose among a, b, c, d"
        elif got != want:
            wrong = sorted(got - want)
            missing = sorted(want - got)
            problem = "not quite: " + "; ".join(
                part for part in (f"{', '.join(wrong)} would do harm when run twice" if wrong else "", f"{', '.join(missing)} is safe to repeat" if missing else "") if part
            )
    return verdict("Exercise 2", answer, problem, hint, success="With acks_late, only idempotent tasks make at-least-once delivery safe.")


class _FakeResult:
    """Looks like a Celery AsyncResult whose answer is ready after ``after_s`` seconds."""

    def __init__(self, value: Any, after_s: float) -> None:
        self._value = value
        self._at = time.monotonic() + after_s
        self.polls = 0

    def ready(self) -> bool:
        self.polls += 1
        return time.monotonic() >= self._at

    @property
    def result(self) -> Any:
        if not self.ready():
            raise AssertionError("read .result before ready() was True")
        return self._value

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("get() blocks the event loop: poll ready() and await asyncio.sleep instead")


def check_wait_for(fn: Callable[[Any, float], Any] | None) -> bool:
    """Exercise 3: ``async def wait_for(result, timeout_s)`` polls without blocking the event loop."""
    hint = "loop: if result.ready(): return result.result; if past the deadline: raise TimeoutError; else await asyncio.sleep(a few ms)"
    if is_unanswered(fn):
        return verdict("Exercise 3", None, None, hint)
    problem = None
    if not inspect.iscoroutinefunction(fn):
        problem = "wait_for must be an `async def` function"
    else:

        async def scenario() -> tuple[Any, int, bool]:
            ticks = 0
            stop = False

            async def ticker() -> None:  # runs only if the loop is free
                nonlocal ticks
                while not stop:
                    ticks += 1
                    await asyncio.sleep(0.005)

            t = asyncio.create_task(ticker())
            value = await fn(_FakeResult({"pred": [7]}, 0.15), 2.0)
            timed_out = False
            try:
                await fn(_FakeResult(None, 60.0), 0.1)
            except (TimeoutError, asyncio.TimeoutError):
                timed_out = True
            stop = True
            await t
            return value, ticks, timed_out

        try:
            value, ticks, timed_out = run_outside_event_loop(lambda: asyncio.run(asyncio.wait_for(scenario(), 10.0)))
        except AssertionError as exc:
            value, ticks, timed_out = None, 0, False
            problem = str(exc)
        except Exception as exc:  # the student's code raised
            value, ticks, timed_out = None, 0, False
            problem = f"it raised {type(exc).__name__}: {exc}"
        if problem is None:
            if value != {"pred": [7]}:
                problem = f"it returned {value!r} instead of the result's value"
            elif ticks < 10:
                problem = f"other coroutines ran only {ticks} times while it waited: the event loop was blocked (time.sleep?)"
            elif not timed_out:
                problem = "it did not raise TimeoutError when the result was not ready in time"
    return verdict("Exercise 3", fn, problem, hint, success="That is how the gateway's /predict waits.")
