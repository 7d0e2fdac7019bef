"""The capstone's harness: every option deployed, checked, loaded, killed and stopped the same way.

An *option* is a way to serve the models (a process pool, Celery, Ray, a Deployment, TorchServe,
TF Serving...). Each option's deployment code is a function returning a ``Deployed``: the URL and
``wire`` codec of each workload it serves (every option is reached over HTTP; the function-style
ones sit behind ``labkit.apps.front``), which processes serve it, how to kill one worker, how to
stop it. Only the in-process *floor* is a Python callable (no HTTP). ``run_option`` then does the
same thing to every option::

    deployed = deploy()                    # start, timed until the first prediction
    check answers on the same test digits, per workload ("cnn", "wide")
    closed loop at each concurrency, ``repeats`` times ≥ ``duration_s`` each (aiohttp client)
    client CPU (this process) and server CPU (the serving process tree) per 1,000 requests; RSS
    kill one worker under load → recovery time and requests lost
    stop

An option deployed on an external cluster (``RAY_ADDRESS``, ``REDIS_URL`` with the cluster's
Celery workers, ``TORCHSERVE_URL``, ``TFSERVING_URL``) says so: its ``Deployed.external`` names
what it used, its row's name ends in " (external)", its server CPU and RSS are not measured (the
cluster's processes are not below this kernel) and no worker is killed. Answers that say which
worker computed them (``"worker"``) are counted per worker: ``OptionResult.served_by``.

``measure.report`` turns the results into what notebook 14 shows (tables, plots, files, advice);
``measure.recovery`` reads what a kill did to the clients. Used in 14 and ``labkit bench capstone``.
"""

from __future__ import annotations

import os
import statistics
import threading
from collections import Counter
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
    "CLIENT",
    "CODECS",
    "EXTERNAL",
    "FIXED_CONCURRENCY",
    "KINDS",
    "WORKLOADS",
    "Deployed",
    "KServeCodec",
    "LitServeCodec",
    "OptionResult",
    "compare_clients",
    "load_target",
    "measure_recovery",
    "run_option",
    "summarize_repeats",
]

# The one fixed concurrency every latency column is read at (its header names it).
FIXED_CONCURRENCY = 16
# The load generator: aiohttp used about half of httpx's client CPU per request here (14 measures it).
CLIENT = "aiohttp"
WORKLOADS = {"cnn": "digit CNN (overhead-bound)", "wide": "wide model (big weights streamed every call)"}
# real: the component itself; emulated: labkit stands in for part of it (the Kubernetes control
# plane); stand-in: labkit's re-implementation of the server; reference: the floor and the ceiling.
KINDS = ("real", "emulated", "stand-in", "reference")
KILL_AFTER_S = 0.5
WARMUP_REQUESTS = 16
WARMUP_CONCURRENCY = 4
# A gateway request waits this long for its task. Celery on Redis hands a killed worker's task to
# another worker after the visibility timeout (10 s) and a restore poll: measured 10.0-11.0 s. A task
# still unanswered at 15 s is counted lost (seen in some CI runs; raising this to 30 s did not save it).
GATEWAY_TIMEOUT_S = 15.0
EXTERNAL = " (external)"  # appended to the name of a row measured on an external deployment


# ---------------------------------------------------------------- how to talk to each server


@dataclass(frozen=True, repr=False)
class KServeCodec(Codec):
    """Triton's KServe v2 infer API (12): one FP32 input ``pixels`` (N, 64) in, output ``label`` out."""

    name = "triton"

    def encode(self, x: Any) -> dict[str, Any]:
        rows = wire.digits(x).reshape(-1, 64)
        return {"inputs": [{"name": "pixels", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]}

    def decode(self, body: Any) -> np.ndarray:
        return wire.digits(np.asarray(body["inputs"][0]["data"], dtype=np.float32))

    def labels(self, answer: Any) -> list[int]:
        return [int(v) for out in answer["outputs"] if out["name"] == "label" for v in out["data"]]


@dataclass(frozen=True, repr=False)
class LitServeCodec(Codec):
    """The lab's LitAPI (13): one digit as ``{"pixels": [64 floats]}``; the answer carries its ``label``."""

    name = "litserve"

    def encode(self, x: Any) -> dict[str, Any]:
        return {"pixels": wire.digits(x).reshape(64).tolist()}

    def decode(self, body: Any) -> np.ndarray:
        return wire.digits(np.asarray(body["pixels"], dtype=np.float32))

    def labels(self, answer: Any) -> list[int]:
        return [int(answer["label"])]


# The gateway's codec waits GATEWAY_TIMEOUT_S for a task; Triton's and LitServe's are here; the others are wire's own.
CODECS: dict[str, Codec] = {**wire.CODECS, "gateway": wire.GatewayCodec(timeout_s=GATEWAY_TIMEOUT_S), "triton": KServeCodec(), "litserve": LitServeCodec()}


@dataclass
class Deployed:
    """A started option: ``url`` + ``codec`` per workload it serves (``wide_url`` None: the CNN only).

    The in-process floor alone gives ``call(x) -> class`` (and ``wide_call``) instead of a URL.
    ``pids()`` lists the processes that serve (their descendants are added); ``kill()`` SIGKILLs
    one worker and says which (None: no worker to kill, ``kill_note`` says why); ``stop()`` ends it all.
    ``exact``: CNN answers must equal the PyTorch CNN's (False for the Keras twin behind TF Serving);
    ``wide_check``: "accuracy" (the wide model's classes are checked against the labels) or "none"
    (an untrained timing twin); ``check=False``: answers are not checked at all (the null server).
    ``external``: what external deployment serves it ("" when everything was started here).
    """

    stop: Callable[[], Any]
    call: Callable[[np.ndarray], int] | None = None
    url: str | None = None
    codec: str | None = None
    wide_url: str | None = None
    wide_codec: str | None = None
    wide_call: Callable[[np.ndarray], int] | None = None
    pids: Callable[[], Iterable[int]] = lambda: ()
    kill: Callable[[], str] | None = None
    kill_note: str = ""
    exact: bool = True
    wide_check: str = "accuracy"
    check: bool = True
    in_process: bool = False
    wide_note: str = "not measured: this option serves the digit CNN only here"
    cnn_note: str = "not measured: this option serves the wide model only here"
    external: str = ""

    def __post_init__(self) -> None:
        if (self.call is None) == (self.url is None and self.wide_url is None):
            raise BadInput("give either call (a Python callable) or url/wide_url + codec (an HTTP server)")
        for url, codec in ((self.url, self.codec), (self.wide_url, self.wide_codec or self.codec)):
            if url is not None and codec not in CODECS:
                raise BadInput(f"codec must be one of {sorted(CODECS)}, got {codec!r}")

    def workloads(self) -> list[str]:
        """The workloads this option serves."""
        return (["cnn"] if (self.url or self.call) else []) + (["wide"] if (self.wide_url or self.wide_call) else [])

    def target(self, workload: str = "cnn") -> tuple[str | None, str | None, Callable[[np.ndarray], int] | None]:
        """(url, codec, call) for one workload."""
        if workload == "wide":
            return self.wide_url, self.wide_codec or self.codec, self.wide_call
        return self.url, self.codec, self.call

    def predict(self, x: np.ndarray, workload: str = "cnn", timeout_s: float = 60.0) -> int:
        """Send one digit, return its class (raises on any failure)."""
        url, codec_name, call = self.target(workload)
        if call is not None:
            return int(call(x))
        import httpx

        codec = CODECS[codec_name]  # type: ignore[index]
        resp = httpx.post(url, json=codec.encode(x), timeout=timeout_s)  # type: ignore[arg-type]
        resp.raise_for_status()
        return codec.label(resp.json())


# ---------------------------------------------------------------- load, memory, CPU


def load_target(
    deployed: Deployed, x: np.ndarray, concurrency: int, n_requests: int | None = None, duration_s: float | None = None,
    workload: str = "cnn", client: str = CLIENT, served_by: Counter[str] | None = None,
) -> LoadResult:
    """Closed-loop load on one option, one digit per request (request i sends ``x[i % len(x)]``).

    ``served_by``: counts the answers per ``"worker"`` they name (answers that name none are not counted).
    """
    url, codec_name, call = deployed.target(workload)
    if call is not None:
        fn = call
        return load.closed_loop_threads(lambda i: fn(x[i % len(x)]), concurrency, n_requests, duration_s)
    if url is None:
        raise BadInput(f"this option does not serve the {workload!r} workload")
    codec = CODECS[codec_name]  # type: ignore[index]
    bodies = [codec.encode(xi) for xi in x]

    def check(resp: Any) -> str | None:
        try:
            answer = resp.json()
            label = codec.label(answer)
        except Exception as exc:
            return f"unreadable answer: {type(exc).__name__}: {exc}"[:200]
        if served_by is not None and isinstance(answer, dict) and answer.get("worker"):
            served_by[str(answer["worker"])] += 1
        return None if 0 <= label <= 9 else f"class {label} is not a digit"

    return load.closed_loop(url, lambda i: bodies[i % len(bodies)], concurrency=concurrency, n_requests=n_requests, duration_s=duration_s, check=check, client=client)


def _cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items() if v >= before.get(pid, 0.0))


def _own_cpu_s() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


# ---------------------------------------------------------------- recovery after a kill


def measure_recovery(deployed: Deployed, x: np.ndarray, duration_s: float, concurrency: int = FIXED_CONCURRENCY, kill_after_s: float = KILL_AFTER_S, workload: str = "cnn") -> dict[str, Any]:
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
    t = threading.Thread(target=lambda: box.setdefault("r", load_target(deployed, x, concurrency, duration_s=duration_s, workload=workload)), daemon=True)
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
    return recovery.recovery_from(box["r"].requests, t_kill) | {"killed": killed, "note": deployed.kill_note, "concurrency": concurrency}


# ---------------------------------------------------------------- one option, measured


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def summarize_repeats(runs: Sequence[LoadResult], client_cpu_s: float | None, server_cpu_s: float | None) -> dict[str, Any]:
    """One point: the median and spread over repeats of throughput and p50/p99; CPU per 1,000 requests (None: not measured)."""
    tps = [r.throughput_per_s for r in runs]
    stats = [r.stats().ms() for r in runs]
    n = sum(r.n for r in runs)
    return {
        "n": n, "repeats": len(runs), "seconds": round(sum(r.elapsed_s for r in runs), 2), "errors": sum(r.errors for r in runs),
        "throughput_per_s": round(statistics.median(tps), 1), "throughput_spread": _spread(tps),
        "p50_ms": round(statistics.median(s["p50"] for s in stats), 2), "p99_ms": round(statistics.median(s["p99"] for s in stats), 2),
        "p99_spread": _spread([s["p99"] for s in stats]),
        "client_cpu_s_per_1k": round(client_cpu_s / n * 1000, 3) if client_cpu_s is not None else None,
        "server_cpu_s_per_1k": round(server_cpu_s / n * 1000, 3) if server_cpu_s is not None else None,
    }  # fmt: skip


@dataclass
class OptionResult:
    """Everything measured for one option (``available`` False: ``reason`` says why).

    ``points[workload][concurrency]``: the summary of ``summarize_repeats``; ``latencies_s``:
    every latency at the fixed concurrency, per workload; ``notes[workload]``: why a workload
    was not measured; ``external``: the external deployment it ran on ("" when started here);
    ``served_by``: measured answers per worker that computed them (when answers name one).
    """

    name: str
    family: str
    kind: str = "real"
    what: str = ""
    available: bool = True
    reason: str = ""
    startup_s: float | None = None
    correct: dict[str, str] = field(default_factory=dict)
    points: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    rss_mb: float | None = None
    recovery: dict[str, Any] = field(default_factory=dict)
    loc: int | None = None
    http: bool = True
    external: str = ""
    served_by: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BadInput(f"kind must be one of {KINDS}, got {self.kind!r}")

    def at(self, workload: str, concurrency: int = FIXED_CONCURRENCY) -> dict[str, Any]:
        """The point at one concurrency ({} when not measured)."""
        return self.points.get(workload, {}).get(concurrency, {})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["points"] = {w: {str(k): v for k, v in by_c.items()} for w, by_c in self.points.items()}
        d["latencies_s"] = {w: [round(v, 6) for v in vs] for w, vs in self.latencies_s.items()}
        return d


def _check_answers(deployed: Deployed, workload: str, x: np.ndarray, expected: Mapping[str, np.ndarray], labels: np.ndarray | None, n_check: int, name: str) -> str:
    if not deployed.check:
        return "not checked (no model behind it)"
    if workload == "wide" and deployed.wide_check == "none":
        deployed.predict(x[0], workload)
        return "not checked (untrained timing twin)"
    preds = np.array([deployed.predict(xi, workload) for xi in x[:n_check]])
    if workload == "cnn" and deployed.exact:
        agree = float(np.mean(preds == expected["cnn"][:n_check]))
        if agree < 1.0:
            raise AssertionError(f"{name}: {agree:.0%} of answers equal the in-process CNN's (must be 100 %)")
        return f"{n_check}/{n_check} equal to in-process"
    truth = labels if labels is not None else expected[workload]
    acc = float(np.mean(preds == truth[:n_check]))
    if acc < 0.8:
        raise AssertionError(f"{name} ({workload}): only {acc:.0%} of {n_check} digits right")
    return f"{round(acc * n_check)}/{n_check} right" + (" (its own model)" if workload == "cnn" else "")


def run_option(
    name: str,
    family: str,
    deploy: Callable[[], Deployed],
    x: np.ndarray,
    expected: np.ndarray | Mapping[str, np.ndarray],
    concurrencies: Sequence[int] = (FIXED_CONCURRENCY,),
    duration_s: float = 2.0,
    repeats: int = 2,
    recovery_s: float | None = 3.0,
    n_check: int = 16,
    labels: np.ndarray | None = None,
    loc: int | None = None,
    warmup: int = WARMUP_REQUESTS,
    kind: str = "real",
    what: str = "",
    workloads: Sequence[str] = tuple(WORKLOADS),
    n_requests: int | None = None,
) -> OptionResult:
    """Start one option, measure it (see the module docstring), stop it; never leave it running.

    Each point is ``repeats`` closed-loop runs of ``duration_s`` each (or ``n_requests``, whichever
    comes first); the summary keeps the median and the spread. An option that cannot start here
    (``deploy`` raises ``ServiceUnavailable``, or a Python package is missing) gives a row with
    ``available=False`` and the reason, after every process labkit started during ``deploy`` is
    stopped. A wrong answer or failed requests are a failure, not unavailability: the option is
    stopped and the error raised. ``recovery_s`` None skips the kill. ``warmup`` requests at
    concurrency ``WARMUP_CONCURRENCY`` run untimed first, per workload, so every worker is up.
    A deployment on an external cluster (``Deployed.external``) gets `` (external)`` after its
    name, and no server CPU or RSS (its processes are the cluster's, not below this kernel).
    """
    from labkit.runtime.progress import tqdm

    res = OptionResult(name, family, kind=kind, what=what, loc=loc)
    me = os.getpid()
    running_before = {int(i["pid"]) for i in process.started_here()}
    expected_by = dict(expected) if isinstance(expected, Mapping) else {"cnn": np.asarray(expected)}
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
    res.http = deployed.call is None
    if deployed.external:
        res.name, res.external = name + EXTERNAL, deployed.external
    served_by: Counter[str] = Counter()
    try:
        first = deployed.workloads()[0]
        deployed.predict(x[0], first)
        res.startup_s = round(now() - t0, 3)
        served = [w for w in workloads if w in deployed.workloads()]
        for w in workloads:
            if w not in served:
                res.notes[w] = deployed.wide_note if w == "wide" else deployed.cnn_note
        serving: Callable[[], list[int]] = lambda: [me] if deployed.in_process else [p for p in process.tree_pids([p for p in deployed.pids() if p]) if p != me]
        rss = []
        for w in served:
            res.correct[w] = _check_answers(deployed, w, x, expected_by, labels, n_check, name)
            if warmup:
                load_target(deployed, x, WARMUP_CONCURRENCY, n_requests=warmup, duration_s=60.0, workload=w)
            res.points[w] = {}
            for c in tqdm(concurrencies, desc=f"{name} ({w})", leave=False):
                runs, client_s, server_s = [], 0.0, 0.0
                for _ in range(repeats):
                    pids = serving()
                    before, own = process.tree_cpu_s(pids), _own_cpu_s()
                    r = load_target(deployed, x, c, n_requests=n_requests, duration_s=duration_s, workload=w, served_by=served_by)
                    own_after, after = _own_cpu_s(), process.tree_cpu_s(pids)
                    if r.errors:
                        raise AssertionError(f"{name} ({w}) at concurrency {c}: {r.errors} of {r.n} requests failed; first: {r.first_error()}")
                    runs.append(r)
                    client_s += own_after - own
                    server_s += _cpu_delta(before, after)
                res.points[w][c] = summarize_repeats(runs, None if deployed.in_process else client_s, None if deployed.external else server_s)
                if c == FIXED_CONCURRENCY or c == max(concurrencies):
                    res.latencies_s[w] = [lat for r in runs for lat in r.latencies_s()]
                rss.append(process.tree_rss_mb(serving()))
        res.rss_mb = round(max(rss), 1) if rss and not deployed.external else None
        res.served_by = dict(sorted(served_by.items()))
        if recovery_s:
            res.recovery = measure_recovery(deployed, x, recovery_s, concurrency=min(FIXED_CONCURRENCY, max(concurrencies)), workload=first)
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


def compare_clients(url: str, body: Any, concurrency: int = FIXED_CONCURRENCY, duration_s: float = 2.0, rounds: int = 2, clients: Sequence[str] = load.CLIENTS) -> dict[str, dict[str, float]]:
    """Client CPU (this process) per 1,000 requests for each load generator, interleaved ``rounds`` times.

    Aim it at the null server (no model): then the server is as cheap as it gets and the
    client's own cost shows. Returns {client: {"cpu_s_per_1k": best round, "throughput_per_s": its rate}}.
    Shown in 14 (choosing the load generator).
    """
    out: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for client in clients:
            t0 = _own_cpu_s()
            r = load.closed_loop(url, body, concurrency=concurrency, duration_s=duration_s, client=client)
            spent = _own_cpu_s() - t0
            if r.errors:
                raise AssertionError(f"{client}: {r.errors} of {r.n} requests failed; first: {r.first_error()}")
            cost = spent / r.n * 1000
            if client not in out or cost < out[client]["cpu_s_per_1k"]:
                out[client] = {"cpu_s_per_1k": round(cost, 3), "throughput_per_s": round(r.throughput_per_s, 1)}
    return out
