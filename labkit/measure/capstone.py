"""The capstone's harness: every option deployed, checked, loaded, killed and stopped the same way.

An *option* is a way to serve the digit CNN (in-process, a process pool, Celery, Ray, a
Deployment, TorchServe, TF Serving). The notebook writes each option's deployment code in view,
as a function returning a ``Deployed``: how to send one prediction (an HTTP URL + a ``wire`` codec, or a
Python callable), which processes serve it, how to kill one worker, how to stop it. ``run_option``
then does the same thing to every option::

    deployed = deploy()                    # start, timed until the first prediction
    check answers on the same test digits
    closed loop at each concurrency        # load.closed_loop, or load.closed_loop_threads for callables
    RSS of the serving process tree, CPU seconds per 1,000 requests (runtime.process.tree_*)
    kill one worker under load → recovery time and requests lost
    stop

``measure.report`` turns the results into what notebook 14 shows (table, plots, files, advice,
lines of code); ``measure.recovery`` reads what a kill did to the clients. Used in 14.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from labkit.apps import wire
from labkit.apps.wire import Codec
from labkit.errors import BadInput, ServiceUnavailable
from labkit.measure import load, recovery
from labkit.measure.load import LoadResult
from labkit.measure.timing import now
from labkit.runtime import process

__all__ = [
    "CODECS",
    "Deployed",
    "OptionResult",
    "load_target",
    "measure_recovery",
    "run_option",
]

RECOVERY_CONCURRENCY = 4
KILL_AFTER_S = 0.5
WARMUP_REQUESTS = 16
WARMUP_CONCURRENCY = 4
# A gateway request waits this long for its task. Celery on Redis hands a killed worker's task to
# another worker after the visibility timeout (10 s) and a restore poll: measured 10.0-11.0 s. A task
# still unanswered at 15 s is counted lost (seen in some CI runs; raising this to 30 s did not save it).
GATEWAY_TIMEOUT_S = 15.0


# ---------------------------------------------------------------- how to talk to each server


# The gateway's codec waits GATEWAY_TIMEOUT_S for a task; the other servers' codecs are wire's own.
CODECS: dict[str, Codec] = {**wire.CODECS, "gateway": wire.GatewayCodec(timeout_s=GATEWAY_TIMEOUT_S)}


@dataclass
class Deployed:
    """A started option: ``call(x) -> class`` for in-process/pool/Ray tasks, or ``url`` + ``codec`` for a server.

    ``pids()`` lists the processes that serve (their descendants are added); ``kill()`` SIGKILLs
    one worker and says which (None: no worker to kill, ``kill_note`` says why); ``stop()`` ends it all.
    ``exact``: answers must equal the PyTorch CNN's (False for the Keras twin behind TF Serving).
    """

    stop: Callable[[], Any]
    call: Callable[[np.ndarray], int] | None = None
    url: str | None = None
    codec: str | None = None
    pids: Callable[[], Iterable[int]] = lambda: ()
    kill: Callable[[], str] | None = None
    kill_note: str = ""
    exact: bool = True
    in_process: bool = False

    def __post_init__(self) -> None:
        if (self.call is None) == (self.url is None):
            raise BadInput("give either call (a Python callable) or url + codec (an HTTP server)")
        if self.url is not None and self.codec not in CODECS:
            raise BadInput(f"codec must be one of {sorted(CODECS)}, got {self.codec!r}")

    def predict(self, x: np.ndarray, timeout_s: float = 60.0) -> int:
        """Send one digit, return its class (raises on any failure)."""
        if self.call is not None:
            return int(self.call(x))
        import httpx

        codec = CODECS[self.codec]  # type: ignore[index]
        resp = httpx.post(self.url, json=codec.encode(x), timeout=timeout_s)  # type: ignore[arg-type]
        resp.raise_for_status()
        return codec.label(resp.json())


# ---------------------------------------------------------------- load, memory, CPU


def load_target(deployed: Deployed, x: np.ndarray, concurrency: int, n_requests: int | None = None, duration_s: float | None = None) -> LoadResult:
    """Closed-loop load on one option, one digit per request (request i sends ``x[i % len(x)]``)."""
    if deployed.call is not None:
        call = deployed.call
        return load.closed_loop_threads(lambda i: call(x[i % len(x)]), concurrency, n_requests, duration_s)

    codec = CODECS[deployed.codec]  # type: ignore[index]
    bodies = [codec.encode(xi) for xi in x]

    def check(resp: Any) -> str | None:
        try:
            label = codec.label(resp.json())
        except Exception as exc:
            return f"unreadable answer: {type(exc).__name__}: {exc}"[:200]
        return None if 0 <= label <= 9 else f"class {label} is not a digit"

    return load.closed_loop(deployed.url, lambda i: bodies[i % len(bodies)], concurrency=concurrency, n_requests=n_requests, duration_s=duration_s, check=check)  # type: ignore[arg-type]


def _cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items() if v >= before.get(pid, 0.0))


# ---------------------------------------------------------------- recovery after a kill


def measure_recovery(deployed: Deployed, x: np.ndarray, duration_s: float, concurrency: int = RECOVERY_CONCURRENCY, kill_after_s: float = KILL_AFTER_S) -> dict[str, Any]:
    """Kill one worker ``kill_after_s`` into a closed-loop load; return how long clients were disrupted.

    A request was *disrupted* when it failed, was in flight at the kill, or took more than
    ``SLOW_FACTOR`` × the pre-kill median. ``recovery_s`` = the last disrupted request's end −
    the kill: how long until every client had its answer (or its error); None when no request
    sent after the last failure succeeded (not recovered). ``lost`` = failed requests.

    Shown in 14 (how every option is measured).
    """
    if deployed.kill is None:
        return {"recovery_s": None, "lost": None, "killed": None, "recovered": None, "note": deployed.kill_note or "no worker to kill"}
    box: dict[str, Any] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", load_target(deployed, x, concurrency, duration_s=duration_s)), daemon=True)
    t.start()
    import time

    time.sleep(kill_after_s)
    t_kill = now()
    try:
        killed = deployed.kill()
    except Exception as exc:  # nothing to kill right now: say so instead of failing the option
        t.join()
        return {"recovery_s": None, "lost": None, "killed": None, "recovered": None, "note": f"not measured: kill failed ({_why(exc)})"}
    t.join()
    return recovery.recovery_from(box["r"].requests, t_kill) | {"killed": killed, "note": deployed.kill_note}


# ---------------------------------------------------------------- one option, measured


@dataclass
class OptionResult:
    """Everything measured for one option (``available`` False: ``reason`` says why)."""

    name: str
    family: str
    available: bool = True
    reason: str = ""
    startup_s: float | None = None
    correct: str = ""
    loads: dict[int, dict[str, Any]] = field(default_factory=dict)  # concurrency -> summary
    latencies_s: dict[int, list[float]] = field(default_factory=dict)
    rss_mb: float | None = None
    cpu_s_per_1k: float | None = None
    recovery: dict[str, Any] = field(default_factory=dict)
    loc: int | None = None
    http: bool = False  # served over HTTP (a URL), not called in Python

    def best(self) -> dict[str, Any]:
        """The load summary at the concurrency with the highest throughput."""
        if not self.loads:
            return {}
        c = max(self.loads, key=lambda k: self.loads[k]["throughput_per_s"])
        return {"concurrency": c, **self.loads[c]}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loads"] = {str(k): v for k, v in self.loads.items()}
        d["latencies_s"] = {str(k): [round(v, 6) for v in vs] for k, vs in self.latencies_s.items()}
        return d


def run_option(
    name: str,
    family: str,
    deploy: Callable[[], Deployed],
    x: np.ndarray,
    expected: np.ndarray,
    concurrencies: Sequence[int] = (1, 8, 32),
    n_requests: int | Sequence[int] = 200,
    duration_s: float = 2.0,
    recovery_s: float | None = 3.0,
    n_check: int = 16,
    labels: np.ndarray | None = None,
    loc: int | None = None,
    warmup: int = WARMUP_REQUESTS,
) -> OptionResult:
    """Start one option, measure it (see the module docstring), stop it; never leave it running.

    An option that cannot start here (``deploy`` raises ``ServiceUnavailable``, or a Python package
    is missing) gives a row with ``available=False`` and the reason, after every process labkit
    started during ``deploy`` is stopped. A wrong answer or failed requests are a failure, not
    unavailability: the option is stopped and the error raised. ``n_requests`` may be one number or
    one per concurrency; ``recovery_s`` None skips the kill. ``warmup`` requests at concurrency
    ``WARMUP_CONCURRENCY`` run untimed first, so every worker is up.
    """
    from tqdm.auto import tqdm


    res = OptionResult(name, family, loc=loc)
    me = os.getpid()
    running_before = {int(i["pid"]) for i in process.started_here()}
    t0 = now()
    try:
        deployed = deploy()
    except (ServiceUnavailable, ModuleNotFoundError) as exc:
        _stop_started_since(running_before)
        res.available = False
        res.reason = _why(exc)
        return res
    except BaseException:
        _stop_started_since(running_before)
        raise
    res.http = deployed.url is not None
    try:
        deployed.predict(x[0])
        res.startup_s = round(now() - t0, 3)
        preds = np.array([deployed.predict(xi) for xi in x[:n_check]])
        agree = float(np.mean(preds == expected[:n_check]))
        if deployed.exact:
            if agree < 1.0:
                raise AssertionError(f"{name}: {agree:.0%} of answers equal the in-process CNN's (must be 100 %)")
            res.correct = f"{n_check}/{n_check} equal to in-process"
        else:
            acc = float(np.mean(preds == labels[:n_check])) if labels is not None else agree
            if acc < 0.8:
                raise AssertionError(f"{name}: only {acc:.0%} of {n_check} digits right")
            res.correct = f"{round(acc * n_check)}/{n_check} right (its own model)"
        if warmup:
            load_target(deployed, x, WARMUP_CONCURRENCY, n_requests=warmup, duration_s=30.0)
        roots: Callable[[], list[int]] = lambda: [me, *deployed.pids()]
        before = process.tree_cpu_s(roots())
        n_total, rss = 0, []
        counts = [n_requests] * len(concurrencies) if isinstance(n_requests, int) else list(n_requests)
        for c, n in zip(tqdm(concurrencies, desc=name, leave=False), counts):
            r = load_target(deployed, x, c, n_requests=n, duration_s=duration_s)
            if r.errors:
                raise AssertionError(f"{name} at concurrency {c}: {r.errors} of {r.n} requests failed; first: {r.first_error()}")
            res.loads[c] = r.summary()
            res.latencies_s[c] = r.latencies_s()
            n_total += r.n
            serving = [p for p in deployed.pids()] if not deployed.in_process else [me]
            rss.append(process.tree_rss_mb(serving) if serving else 0.0)
        after = process.tree_cpu_s(roots())
        res.cpu_s_per_1k = round(_cpu_delta(before, after) / n_total * 1000, 3)
        res.rss_mb = round(max(rss), 1)
        if recovery_s:
            res.recovery = measure_recovery(deployed, x, recovery_s)
        else:
            res.recovery = {"recovery_s": None, "lost": None, "recovered": None, "note": "not measured (recovery off)"}
    except BaseException:
        try:
            deployed.stop()
        finally:
            _stop_started_since(running_before)  # what a half-stopped option left behind
        raise
    deployed.stop()
    return res


def _stop_started_since(before: set[int]) -> None:
    """Stop every process this interpreter started (labkit's registry) that was not running at ``before``."""

    for info in process.started_here():
        if int(info["pid"]) not in before:
            process.stop_pid(int(info["pid"]))


def _why(exc: BaseException) -> str:
    if isinstance(exc, ServiceUnavailable):
        return f"{exc.what}" + (f" — {exc.how_to_get}" if exc.how_to_get else "")
    if isinstance(exc, ModuleNotFoundError):
        return f"Python package {exc.name!r} is not installed — get it: make lab (or: pip install -e '.[serve]')"
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
