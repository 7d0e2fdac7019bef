from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from labkit.errors import BadInput
from labkit.measure import load
from labkit.runtime import process


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    port = process.free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "-m", "uvicorn", "echo_app:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with process.start("echo-app", cmd, cwd=Path(__file__).parent, ready=lambda: httpx.post(url, json={}).status_code == 200, timeout_s=30):
        yield url


def test_closed_loop_counts_every_request(echo_url: str) -> None:
    r = load.closed_loop(echo_url, payload=lambda i: {"i": i}, concurrency=4, n_requests=60)
    assert r.n == 60 and r.errors == 0 and r.throughput_per_s > 0
    assert {req.worker for req in r.requests} == {0, 1, 2, 3}
    s = r.stats()
    assert 0 < s.p50 <= s.p99 <= s.max
    assert r.summary()["n"] == 60


def test_errors_are_recorded_not_raised(echo_url: str) -> None:
    r = load.closed_loop(echo_url, payload=lambda i: {"fail": i % 3 == 0}, concurrency=2, n_requests=30)
    assert r.errors == 10 and r.status_counts() == {"200": 20, "500": 10}
    bad_check = load.closed_loop(echo_url, payload={"x": 1}, concurrency=1, n_requests=3, check=lambda resp: "wrong answer")
    assert bad_check.errors == 3 and bad_check.first_error() == "wrong answer"


def test_refused_connection_is_an_error_not_a_hang() -> None:
    port = process.free_port()
    r = load.closed_loop(f"http://127.0.0.1:{port}/", payload={}, concurrency=2, n_requests=4, timeout_s=2)
    assert r.errors == 4 and "ConnectError" in (r.first_error() or "")
    with pytest.raises(BadInput, match="no successful request"):
        r.stats()


def test_duration_bound_stops_by_itself(echo_url: str) -> None:
    r = load.closed_loop(echo_url, payload={}, concurrency=2, duration_s=0.5)
    assert 0.4 < r.elapsed_s < 5 and r.n > 0


def test_open_loop_and_ramp_follow_the_rate(echo_url: str) -> None:
    r = load.open_loop(echo_url, payload={}, rate_per_s=40, duration_s=0.5)
    assert r.n == 20 and r.errors == 0
    rr = load.ramp(echo_url, {}, [(0.25, 20), (0.25, 0), (0.25, 40)])
    assert rr.n == 5 + 0 + 10


@pytest.mark.parametrize("url", ["http://10.0.0.1:80/", "http://example.com/", "http://192.168.1.2/"])
def test_only_loopback_targets(url: str) -> None:
    with pytest.raises(BadInput, match="only target this machine"):
        load.closed_loop(url, n_requests=1)


def test_must_be_bounded() -> None:
    with pytest.raises(BadInput, match="stop by itself"):
        load.closed_loop("http://127.0.0.1:1/")
    with pytest.raises(BadInput):
        load.closed_loop("http://127.0.0.1:1/", n_requests=10**9)
    with pytest.raises(BadInput):
        load.ramp("http://127.0.0.1:1/", {}, [(1.0, -5)])


def test_closed_loop_calls_records_answers_errors_and_exceptions() -> None:
    """The protocol-agnostic closed loop (used for gRPC): every call recorded, failures counted, client closed."""
    import asyncio
    import contextlib

    events: list[str] = []

    @contextlib.asynccontextmanager
    async def client():  # type: ignore[no-untyped-def]
        events.append("open")

        async def call(i: int) -> str | None:
            await asyncio.sleep(0.001)
            if i % 10 == 3:
                raise ConnectionError("gone")
            return "wrong answer" if i % 10 == 7 else None

        yield call
        events.append("closed")

    result = load.closed_loop_calls("127.0.0.1:1", client, concurrency=4, n_requests=40)
    assert result.n == 40 and result.errors == 8
    assert events == ["open", "closed"]
    assert result.status_counts() == {"ok": 32, "ConnectionError": 4, "wrong answer": 4}
    with pytest.raises(BadInput):
        load.closed_loop_calls("10.1.2.3:8500", client, n_requests=1)


def test_closed_loop_threads_records_every_call_and_every_error() -> None:
    def fn(i: int) -> int:
        if i % 5 == 0:
            raise RuntimeError(f"bad {i}")
        return i

    r = load.closed_loop_threads(fn, concurrency=4, n_requests=50)
    assert r.n == 50 and r.errors == 10 and r.concurrency == 4
    assert {q.worker for q in r.requests} <= set(range(4))
    assert r.first_error() is not None and r.first_error().startswith("RuntimeError: bad")
    assert r.throughput_per_s > 0 and r.stats().n == 40
    assert r.status_counts() == {"ok": 40, "RuntimeError": 10}  # not HTTP: no status, like closed_loop_calls
    with pytest.raises(BadInput):
        load.closed_loop_threads(fn, concurrency=2)


def test_batching_sweep_serves_each_setting_loads_each_concurrency_and_stops_it(echo_url: str) -> None:
    """The one sweep behind TorchServe's, Ray Serve's and TF Serving's: every row measured, every server stopped."""
    import contextlib

    from labkit.measure import batching

    events: list[str] = []

    @contextlib.contextmanager
    def serve(setting: batching.Setting) -> Iterator[batching.Served]:
        events.append(f"start {setting.max_batch_size}")
        try:
            yield batching.Served(
                echo_url,
                lambda i: {"i": i, "fail": setting.batching and i == 3},  # one wrong answer in the batched run
                check=lambda r: None if "echo" in r.json() else "no echo",
                batch_size_of=lambda answer: 4 if setting.batching else 1,  # as a server that reports its batches
                transports={"fake": lambda c, n: load.closed_loop_threads(lambda i: None, c, n)},
                info=lambda: {"stopped_after": len(events)},
            )
        finally:
            events.append(f"stop {setting.max_batch_size}")

    result = batching.sweep([batching.Setting(1), batching.Setting(4, 5)], [1, 3], serve, n_requests=12, warmup=(1, 2), progress=False)
    assert events == ["start 1", "stop 1", "start 4", "stop 4"]
    assert [(r.max_batch_size, r.concurrency, r.transport) for r in result.rows] == [(1, 1, "http"), (1, 1, "fake"), (1, 3, "http"), (1, 3, "fake"), (4, 1, "http"), (4, 1, "fake"), (4, 3, "http"), (4, 3, "fake")]
    assert all(r.load.n == 12 for r in result.rows)
    assert result.row(4, 3).errors == 1 and result.row(1, 3).errors == 0  # the 500 is counted, never dropped
    assert result.row(1, 1).mean_batch == 1.0 and result.row(4, 1).mean_batch == 4.0 and result.row(4, 1, "fake").mean_batch == 0.0
    assert result.gain(3) == pytest.approx(result.row(4, 3).throughput_per_s / result.row(1, 3).throughput_per_s)
    assert set(result.servers) == {"no batching", "max batch 4, wait 5 ms"}
    assert result.row(4, 3).summary()["batches_formed"] == {4: 11}
    with pytest.raises(BadInput):
        result.row(8, 3)
