"""The one bounded load generator: closed loop at a concurrency, open loop at a rate.

HTTP goes through httpx (``closed_loop``, ``open_loop``, ``ramp``; ``closed_loop(client="aiohttp")``
for the cheaper client the capstone uses); any async client, a gRPC stub
say, through ``closed_loop_calls``; a plain Python callable through ``closed_loop_threads``
(threads, for in-process models and process pools). All record the same ``Request``s, so stats,
CDFs and tables read every kind alike; calls that are not HTTP record no status.

Loads only target loopback addresses (127.0.0.0/8, localhost, [::1]) and always stop by
themselves: after ``n_requests`` or ``duration_s``, whichever comes first. Every request is
recorded (start, latency, status, error), so nothing fails silently.

    result = load.closed_loop(url, payload, concurrency=8, n_requests=200)
    print(result.stats(), result.throughput_per_s, result.errors)

Used in 06–14.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from labkit.errors import BadInput
from labkit.measure.timing import LatencyStats, latency_stats, now

__all__ = ["CLIENTS", "LoadResult", "Request", "closed_loop", "closed_loop_calls", "closed_loop_threads", "open_loop", "ramp", "run_outside_event_loop"]

T = TypeVar("T")
CLIENTS = ("httpx", "aiohttp")
MAX_REQUESTS = 100_000
MAX_DURATION_S = 600.0
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Request:
    """One request's record: when it started (monotonic s), how long it took, what came back."""

    start: float
    latency_s: float
    status: int | None
    error: str | None = None
    worker: int = 0

    @property
    def ok(self) -> bool:
        """No error, and a 2xx status for HTTP (calls of other protocols record no status)."""
        return self.error is None and (self.status is None or 200 <= self.status < 300)


@dataclass
class LoadResult:
    """All requests of one load run, with the figures plots and tables need."""

    requests: list[Request] = field(default_factory=list)
    started: float = 0.0
    elapsed_s: float = 0.0
    concurrency: int | None = None
    rate_per_s: float | None = None

    @property
    def n(self) -> int:
        return len(self.requests)

    @property
    def ok(self) -> list[Request]:
        return [r for r in self.requests if r.ok]

    @property
    def errors(self) -> int:
        return self.n - len(self.ok)

    @property
    def throughput_per_s(self) -> float:
        """Successful requests per second of wall time."""
        return len(self.ok) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def latencies_s(self) -> list[float]:
        return [r.latency_s for r in self.ok]

    def stats(self) -> LatencyStats:
        lat = self.latencies_s()
        if not lat:
            raise BadInput(f"no successful request among {self.n}; first error: {self.first_error()}")
        return latency_stats(lat)

    def first_error(self) -> str | None:
        for r in self.requests:
            if not r.ok:
                return r.error or f"HTTP {r.status}"
        return None

    def status_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.requests:
            key = str(r.status) if r.status is not None else ("ok" if r.error is None else r.error.split(":")[0])
            out[key] = out.get(key, 0) + 1
        return out

    def line(self) -> str:
        """The run in one sentence with units: requests, errors, throughput, p50/p95/p99."""
        text = f"{self.n} requests, {self.errors} failed, {self.throughput_per_s:,.1f} req/s"
        if self.ok:
            ms = self.stats().ms()
            text += f", latency p50 {ms['p50']:.1f} ms, p95 {ms['p95']:.1f} ms, p99 {ms['p99']:.1f} ms"
        return text

    def summary(self) -> dict[str, Any]:
        """A flat dict for tables: n, errors, throughput, p50/p95/p99 in ms."""
        d: dict[str, Any] = {"n": self.n, "errors": self.errors, "throughput_per_s": round(self.throughput_per_s, 1)}
        if self.ok:
            d.update({f"{k}_ms": v for k, v in self.stats().ms().items() if k in ("p50", "p95", "p99")})
        return d


def _check_target(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise BadInput(f"load tests only target this machine (127.0.0.1, localhost, [::1]); refusing {host!r}")


def _check_concurrency(concurrency: int) -> None:
    if not 1 <= concurrency <= 1024:
        raise BadInput(f"concurrency must be in 1..1024, got {concurrency}")


def _failed(t0: float, exc: BaseException, worker: int) -> Request:
    """A call that raised: recorded (type and message), never re-raised — a load test counts failures."""
    return Request(t0, now() - t0, None, f"{type(exc).__name__}: {exc}"[:200], worker)


def _check_bounds(n_requests: int | None, duration_s: float | None) -> None:
    if n_requests is None and duration_s is None:
        raise BadInput("give n_requests or duration_s (or both): a load test must stop by itself")
    if n_requests is not None and not 0 < n_requests <= MAX_REQUESTS:
        raise BadInput(f"n_requests must be in 1..{MAX_REQUESTS}, got {n_requests}")
    if duration_s is not None and not 0 < duration_s <= MAX_DURATION_S:
        raise BadInput(f"duration_s must be in (0, {MAX_DURATION_S}], got {duration_s}")


Payload = Any | Callable[[int], Any]


async def _one(client: Any, method: str, url: str, payload: Payload, i: int, worker: int, check: Callable[[Any], str | None] | None) -> Request:
    body = payload(i) if callable(payload) else payload
    t0 = now()
    try:
        resp = await client.request(method, url, json=body) if body is not None else await client.request(method, url)
        err = None
        if check is not None and 200 <= resp.status_code < 300:
            err = check(resp)
        return Request(t0, now() - t0, resp.status_code, err if err else (None if resp.status_code < 400 else resp.text[:200]), worker)
    except Exception as exc:  # timeouts, refused connections
        return _failed(t0, exc, worker)


def run_outside_event_loop(fn: Callable[[], T]) -> T:
    """Return ``fn()``; called from a thread that runs an event loop (Jupyter's), in a fresh thread.

    So ``fn`` may call ``asyncio.run``. An exception it raises is raised here, in the caller's thread.
    Used by every load here and by the async exercise checks of 06.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="labkit-load")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _run(coro_factory: Callable[[], Any]) -> LoadResult:
    """Run an async load to completion, also from inside a running event loop (Jupyter)."""
    return run_outside_event_loop(lambda: asyncio.run(coro_factory()))


def closed_loop(
    url: str,
    payload: Payload = None,
    concurrency: int = 8,
    n_requests: int | None = None,
    duration_s: float | None = None,
    method: str = "POST",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    check: Callable[[Any], str | None] | None = None,
    client: str = "httpx",
) -> LoadResult:
    """``concurrency`` clients each send a request, wait for the answer, send the next.

    ``payload`` is a JSON body or a function of the request index; ``check(response)`` may
    return an error string for a 2xx answer that is wrong. ``client``: "httpx", or "aiohttp"
    (less client CPU per request: measured in 14, ``labkit bench capstone``).
    """
    _check_target(url)
    if client not in CLIENTS:
        raise BadInput(f"client must be one of {CLIENTS}, got {client!r}")
    if client == "aiohttp":
        return _closed_loop(_aiohttp_session(concurrency, timeout_s), _aiohttp_send(method, url, payload, check), concurrency, n_requests, duration_s)
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    def open_client() -> Any:
        return httpx.AsyncClient(timeout=timeout_s, limits=limits)

    async def send(client: Any, i: int, worker: int) -> Request:
        return await _one(client, method, url, payload, i, worker, check)

    return _closed_loop(open_client, send, concurrency, n_requests, duration_s)


@dataclass(frozen=True)
class _Answer:
    """An aiohttp answer read in full, with the httpx names ``check`` functions use."""

    status_code: int
    text: str

    def json(self) -> Any:
        import json

        return json.loads(self.text)


def _aiohttp_session(concurrency: int, timeout_s: float) -> Callable[[], Any]:
    def open_client() -> Any:
        import aiohttp

        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=timeout_s))

    return open_client


def _aiohttp_send(method: str, url: str, payload: Payload, check: Callable[[Any], str | None] | None) -> Callable[[Any, int, int], Any]:
    import json

    async def send(session: Any, i: int, worker: int) -> Request:
        body = payload(i) if callable(payload) else payload
        data = json.dumps(body).encode() if body is not None else None
        t0 = now()
        try:
            async with session.request(method, url, data=data, headers=_JSON) as resp:
                answer = _Answer(resp.status, await resp.text())
            err = check(answer) if check is not None and 200 <= answer.status_code < 300 else None
            return Request(t0, now() - t0, answer.status_code, err if err else (None if answer.status_code < 400 else answer.text[:200]), worker)
        except Exception as exc:  # timeouts, refused connections
            return _failed(t0, exc, worker)

    return send


_JSON = {"content-type": "application/json"}


def closed_loop_calls(
    target: str,
    client: Callable[[], Any],
    concurrency: int = 8,
    n_requests: int | None = None,
    duration_s: float | None = None,
) -> LoadResult:
    """``closed_loop`` for any async client (a gRPC stub, say).

    ``client()`` is an async context manager (opened once, inside the load's event loop) that
    yields ``call``; ``await call(i)`` sends request ``i`` and returns None, or an error string
    for a wrong answer (an exception is recorded as an error). ``target`` is the ``host:port``
    the calls go to, checked to be this machine.
    """
    _check_target(f"tcp://{target}")

    async def send(call: Any, i: int, worker: int) -> Request:
        t0 = now()
        try:
            err = await call(i)
        except Exception as exc:
            return _failed(t0, exc, worker)
        return Request(t0, now() - t0, None, err, worker)

    return _closed_loop(client, send, concurrency, n_requests, duration_s)


def closed_loop_threads(
    fn: Callable[[int], Any],
    concurrency: int = 8,
    n_requests: int | None = None,
    duration_s: float | None = None,
) -> LoadResult:
    """``closed_loop`` for a Python callable: ``concurrency`` threads each call ``fn(i)`` back to back.

    A call that returns is a success (no status: it is not HTTP); one that raises is recorded as
    an error. Stops after ``n_requests`` or ``duration_s``, whichever comes first. Used in 14.
    """
    _check_bounds(n_requests, duration_s)
    _check_concurrency(concurrency)
    result = LoadResult(concurrency=concurrency)
    lock = threading.Lock()
    counter = iter(range(n_requests if n_requests is not None else MAX_REQUESTS))
    result.started = now()
    deadline = result.started + duration_s if duration_s is not None else float("inf")

    def worker(w: int) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None or now() >= deadline:
                return
            t0 = now()
            try:
                fn(i)
                rec = Request(t0, now() - t0, None, None, w)
            except Exception as exc:
                rec = _failed(t0, exc, w)
            with lock:
                result.requests.append(rec)

    threads = [threading.Thread(target=worker, args=(w,), name=f"labkit-calls-{w}", daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.elapsed_s = now() - result.started
    return result


def _closed_loop(
    open_client: Callable[[], Any],
    send: Callable[[Any, int, int], Any],
    concurrency: int,
    n_requests: int | None,
    duration_s: float | None,
) -> LoadResult:
    """``concurrency`` workers share one client (an async context manager); each awaits ``send(client, i, worker)``."""
    _check_bounds(n_requests, duration_s)
    _check_concurrency(concurrency)

    async def main() -> LoadResult:
        result = LoadResult(concurrency=concurrency)
        counter = iter(range(n_requests if n_requests is not None else MAX_REQUESTS))
        async with open_client() as client:
            result.started = now()
            deadline = result.started + duration_s if duration_s is not None else float("inf")

            async def worker(w: int) -> None:
                for i in counter:
                    if now() >= deadline:
                        return
                    result.requests.append(await send(client, i, w))

            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            result.elapsed_s = now() - result.started
        return result

    return _run(main)


def open_loop(
    url: str,
    payload: Payload = None,
    rate_per_s: float = 10.0,
    duration_s: float = 5.0,
    method: str = "POST",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_in_flight: int = 256,
    check: Callable[[Any], str | None] | None = None,
) -> LoadResult:
    """Send requests at a fixed rate whatever the answers (arrivals don't wait): shows queueing."""
    return ramp(url, payload, [(duration_s, rate_per_s)], method, timeout_s, max_in_flight, check)


def ramp(
    url: str,
    payload: Payload,
    profile: Sequence[tuple[float, float]],
    method: str = "POST",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_in_flight: int = 256,
    check: Callable[[Any], str | None] | None = None,
) -> LoadResult:
    """Open-loop load following ``profile``: a list of (duration_s, rate_per_s) phases.

    At most ``max_in_flight`` requests are outstanding; arrivals beyond that are recorded as
    errors ("overload"), never silently dropped.
    """
    _check_target(url)
    total_s = sum(d for d, _ in profile)
    _check_bounds(None, total_s)
    if any(r < 0 or d <= 0 for d, r in profile):
        raise BadInput("every phase needs duration_s > 0 and rate_per_s >= 0")
    if sum(d * r for d, r in profile) > MAX_REQUESTS:
        raise BadInput(f"the profile would send more than {MAX_REQUESTS} requests")

    async def main() -> LoadResult:
        import httpx

        result = LoadResult(rate_per_s=max(r for _, r in profile))
        sem = asyncio.Semaphore(max_in_flight)
        tasks: list[asyncio.Task[None]] = []
        limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
        async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

            async def fire(i: int) -> None:
                if sem.locked():
                    result.requests.append(Request(now(), 0.0, None, "overload: too many requests in flight"))
                    return
                async with sem:
                    result.requests.append(await _one(client, method, url, payload, i, 0, check))

            result.started = now()
            i = 0
            phase_start = result.started
            for duration, rate in profile:
                if rate > 0:
                    k = 0
                    while True:
                        t_next = phase_start + k / rate
                        if t_next >= phase_start + duration:
                            break
                        delay = t_next - now()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        tasks.append(asyncio.create_task(fire(i)))
                        i += 1
                        k += 1
                phase_start += duration
                delay = phase_start - now()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*tasks)
        result.elapsed_s = now() - result.started
        return result

    return _run(main)
