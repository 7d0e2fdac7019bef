"""The gateway's loop-lag probe: a sample splits into the time the loop was held and the CPU wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from labkit.apps.gateway import LoopLag


def test_record_splits_wall_lag_into_held_and_waited() -> None:
    lag = LoopLag()
    lag.record(0.010, 0.004)
    lag.record(0.002, 0.005)  # a wait longer than the lag is capped at the lag: nothing held
    assert list(lag.held) == pytest.approx([0.006, 0.0])
    assert list(lag.waited) == pytest.approx([0.004, 0.002])
    s = lag.summary(reset=True)
    assert s["n"] == 2 and s["max_ms"] == 10.0 and s["held_max_ms"] == 6.0
    assert lag.summary()["n"] == 0  # reset cleared it


def test_a_blocking_call_on_the_loop_shows_as_held_lag() -> None:
    """time.sleep inside a coroutine holds the loop: the probe must count it as held, not as CPU wait."""
    lag = LoopLag(period_s=0.005)

    async def main() -> None:
        probe = asyncio.create_task(lag.run())
        await asyncio.sleep(0.05)
        time.sleep(0.05)  # the blocking call: 50 ms in which the loop cannot wake the probe
        await asyncio.sleep(0.05)
        probe.cancel()

    asyncio.run(main())
    s = lag.summary()
    assert s["held_max_ms"] >= 40.0, s  # the 50 ms block, less at most the probe's own period
    assert s["held_max_ms"] <= s["max_ms"]
