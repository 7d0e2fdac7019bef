"""The capstone's plumbing: every option measured the same way, then one table, four plots, files.

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

``table``, ``plot_all``, ``save`` and ``advice`` turn the results into what notebook 14 shows.
Used in 14.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labkit import config
from labkit.apps import wire
from labkit.apps.wire import Codec
from labkit.errors import BadInput, ServiceUnavailable
from labkit.measure import load
from labkit.measure.load import LoadResult, Request
from labkit.measure.timing import now
from labkit.runtime import process

__all__ = [
    "CODECS",
    "SEED_TABLE",
    "Deployed",
    "OptionResult",
    "advice",
    "count_loc",
    "deploy_loc",
    "format_recovery",
    "load_target",
    "measure_recovery",
    "notebook_sources",
    "pareto_front",
    "plot_all",
    "results_dir",
    "run_option",
    "save",
    "table",
]

DEPLOY_MARKER = "# deploy:"
RECOVERY_CONCURRENCY = 4
KILL_AFTER_S = 0.5
WARMUP_REQUESTS = 16
WARMUP_CONCURRENCY = 4
# A gateway request waits this long for its task. Celery on Redis hands a killed worker's task to
# another worker after the visibility timeout (10 s) and a restore poll: measured 10.0-11.0 s. A task
# still unanswered at 15 s is counted lost (seen in some CI runs; raising this to 30 s did not save it).
GATEWAY_TIMEOUT_S = 15.0
SLOW_FACTOR = 5.0  # a request this many times slower than before the kill was disrupted by it

# The seed's opinion table, verbatim: one row per family of options.
SEED_TABLE: dict[str, dict[str, str]] = {
    "In-process": {"Best for": "a baseline: one caller, one model", "Advantages": "nothing to run", "Drawbacks": "one process, no isolation"},
    "ProcessPoolExecutor": {"Best for": "simple parallel tasks", "Advantages": "easy, built in", "Drawbacks": "single machine"},
    "Celery": {"Best for": "distributed task queues", "Advantages": "scales, retries", "Drawbacks": "broker to run"},
    "Kubernetes": {"Best for": "production scaling", "Advantages": "autoscaling, self-healing", "Drawbacks": "complex"},
    "Ray": {"Best for": "distributed ML", "Advantages": "simple API, scales across a cluster", "Drawbacks": "extra runtime"},
    "TorchServe": {"Best for": "PyTorch serving", "Advantages": "batching, versioning", "Drawbacks": "archived, Java"},
    "TF Serving": {"Best for": "TF models", "Advantages": "fast C++, versioning", "Drawbacks": "TF only"},
}
# The "In-process" row is not in the seed: it is this lab's baseline.


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
    return _recovery_from(box["r"].requests, t_kill) | {"killed": killed, "note": deployed.kill_note}


def _recovery_from(requests: Sequence[Request], t_kill: float) -> dict[str, Any]:
    before = sorted(r.latency_s for r in requests if r.ok and r.start + r.latency_s < t_kill)
    typical = before[len(before) // 2] if before else 0.0
    slow = max(SLOW_FACTOR * typical, typical + 0.05)
    after = [r for r in requests if r.start + r.latency_s >= t_kill]
    disrupted = [r for r in after if not r.ok or r.start <= t_kill or r.latency_s > slow]
    lost = sum(1 for r in after if not r.ok)
    end = max((r.start + r.latency_s for r in disrupted), default=t_kill)
    last_failed = max((r.start for r in after if not r.ok), default=None)
    # served again: a request sent after the last failure succeeded (or nothing failed)
    ok = last_failed is None or any(r.ok and r.start > last_failed for r in after)
    return {"recovery_s": round(end - t_kill, 3) if ok else None, "lost": lost, "recovered": ok}


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

    A ``ServiceUnavailable`` (or any start failure) gives a row with ``available=False`` and the
    reason. ``n_requests`` may be one number or one per concurrency; ``recovery_s`` None skips the kill.
    ``warmup`` requests at concurrency ``WARMUP_CONCURRENCY`` run untimed first, so every worker is up.
    """
    from tqdm.auto import tqdm

    res = OptionResult(name, family, loc=loc)
    me = os.getpid()
    t0 = now()
    try:
        deployed = deploy()
    except Exception as exc:
        res.available = False
        res.reason = _why(exc)
        return res
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
    except Exception as exc:
        res.available = False
        res.reason = _why(exc)
    finally:
        deployed.stop()
    return res


def _why(exc: BaseException) -> str:
    if isinstance(exc, ServiceUnavailable):
        return f"{exc.what}" + (f" — {exc.how_to_get}" if exc.how_to_get else "")
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


# ---------------------------------------------------------------- lines of code


def count_loc(source: str) -> int:
    """Non-blank lines that are not comments (``#``) and not IPython ``%``/``!`` lines."""
    n = 0
    for line in source.splitlines():
        s = line.strip()
        if s and not s.startswith(("#", "%", "!")):
            n += 1
    return n


def deploy_loc(sources: Iterable[str], marker: str = DEPLOY_MARKER) -> dict[str, int]:
    """Lines a user writes per option: each source whose first line is ``# deploy: NAME`` counts for NAME.

    Pass the notebook's cells (``notebook_sources``); a later cell with the same NAME replaces an
    earlier one (a re-run).
    """
    out: dict[str, int] = {}
    for src in sources:
        first = src.lstrip().split("\n", 1)[0].strip()
        if first.startswith(marker):
            out[first[len(marker):].strip()] = count_loc(src)
    return out


def notebook_sources(name: str) -> list[str]:
    """Code cells of notebook ``name`` (the current folder's, else the lab's ``notebooks/``), then this
    kernel's input history (``In``): so ``deploy_loc`` counts what ran, even cells edited but not saved."""
    import nbformat

    sources: list[str] = []
    for folder in (Path.cwd(), Path(__file__).resolve().parents[2] / "notebooks"):
        if (folder / name).exists():
            nb = nbformat.read(folder / name, as_version=4)
            sources = [c.source for c in nb.cells if c.cell_type == "code"]
            break
    try:
        from IPython import get_ipython

        shell = get_ipython()
        history = shell.user_ns.get("In", []) if shell is not None else []
    except ImportError:
        history = []
    return sources + [s for s in history if s]


# ---------------------------------------------------------------- table, plots, files, advice


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names not dominated on (throughput ↑, p99 ↓): no other point is at least as good on both and better on one."""
    front = []
    for name, (tp, p99) in points.items():
        dominated = any((tp2 >= tp and q2 <= p99) and (tp2 > tp or q2 < p99) for n2, (tp2, q2) in points.items() if n2 != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def format_recovery(rec: Mapping[str, Any]) -> str:
    """The recovery figures as the table shows them: '1.2 s, 0 lost', 'did not recover…', or why not measured."""
    if rec.get("recovery_s") is not None:
        return f"{rec['recovery_s']:.1f} s, {rec['lost']} lost"
    if rec.get("recovered") is False:
        return "did not recover: requests still failed at the end"
    return rec.get("note") or "not measured"


def table(results: Sequence[OptionResult], concurrencies: Sequence[int] = (1, 8, 32)) -> Any:
    """One row per option: the seed's opinion columns next to the measured ones (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for r in results:
        row: dict[str, Any] = {"option": r.name, **SEED_TABLE.get(r.family, {"Best for": "", "Advantages": "", "Drawbacks": ""})}
        if not r.available:
            row["status"] = f"not available: {r.reason}"
        else:
            row["status"] = "measured"
            for c in concurrencies:
                row[f"req/s @{c}"] = r.loads.get(c, {}).get("throughput_per_s")
            b = r.best()
            row["p50 ms"] = b.get("p50_ms")
            row["p99 ms"] = b.get("p99_ms")
            row["at conc."] = b.get("concurrency")
            row["start-up s"] = r.startup_s
            row["RSS MB"] = r.rss_mb
            row["CPU s / 1k req"] = r.cpu_s_per_1k
            row["recovery after kill"] = format_recovery(r.recovery)
        row["deploy LOC"] = r.loc
        rows.append(row)
    return pd.DataFrame(rows).set_index("option")


def plot_all(results: Sequence[OptionResult], device: str = "cpu") -> Any:
    """Four panels: best throughput bars, latency CDFs, throughput vs p99 with the Pareto front, memory bars."""
    import matplotlib.pyplot as plt

    from labkit import plots

    ok = [r for r in results if r.available and r.loads]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5), layout="constrained")
    plots.bars({r.name: r.best()["throughput_per_s"] for r in ok}, ax=axes[0, 0], ylabel="requests / s", title="Best throughput (any concurrency)", fmt="{:.0f}")
    top = max(c for r in ok for c in r.loads) if ok else 1
    plots.latency_cdf({r.name: r.latencies_s.get(top, []) for r in ok}, ax=axes[0, 1], title=f"Latency CDF at concurrency {top}")
    ax = axes[1, 0]
    points, served = {}, {}
    for i, r in enumerate(ok):
        xs = [r.loads[c]["p99_ms"] for c in sorted(r.loads)]
        ys = [r.loads[c]["throughput_per_s"] for c in sorted(r.loads)]
        ax.plot(xs, ys, "o-", color=plt.cm.tab10(i % 10), label=r.name, alpha=0.8)
        for c, xv, yv in zip(sorted(r.loads), xs, ys):
            points[f"{r.name} @{c}"] = (yv, xv)
            if r.http:
                served[f"{r.name} @{c}"] = (yv, xv)
    for pts, style, label in ((points, "k--", "Pareto front (all)"), (served, "k:", "Pareto front (HTTP services)")):
        front = pareto_front(pts)
        if front:
            ax.plot([pts[n][1] for n in front], [pts[n][0] for n in front], style, lw=1.2, label=label)
            ax.scatter([pts[n][1] for n in front], [pts[n][0] for n in front], s=120, facecolors="none", edgecolors="k")
    ax.set(xscale="log", yscale="log", xlabel="p99 latency (ms, log)", ylabel="requests / s (log)", title="Throughput vs p99 (each point: one concurrency)")
    ax.legend(fontsize="xx-small", ncols=2, loc="best")
    ax.grid(alpha=0.3)
    plots.bars({r.name: r.rss_mb or 0.0 for r in ok}, ax=axes[1, 1], ylabel="MB", title="RSS of the serving process tree", fmt="{:.0f}")
    for a in (axes[0, 0], axes[1, 1]):
        a.tick_params(axis="x", labelrotation=30)
        plt.setp(a.get_xticklabels(), ha="right", rotation_mode="anchor")
    for a in axes.flat:
        plots.annotate_device(a, device)
    return fig


def results_dir() -> Path:
    """Where the capstone writes its JSON, CSV and PNG: ``<cache dir>/results/capstone``."""
    return config.cache_dir("results", "capstone")


def save(results: Sequence[OptionResult], df: Any, fig: Any = None, folder: str | Path | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``capstone.json`` (every figure + the environment), ``capstone.csv`` (the table) and ``capstone.png``."""
    from labkit import bench

    out = Path(folder) if folder is not None else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "capstone.json", "csv": out / "capstone.csv"}
    payload = {"environment": bench.environment(), "options": [r.to_dict() for r in results], **(extra or {})}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    df.to_csv(paths["csv"])
    if fig is not None:
        paths["png"] = out / "capstone.png"
        fig.savefig(paths["png"], dpi=110)
    return paths


def advice(results: Sequence[OptionResult]) -> list[str]:
    """'Which option when', one sentence per finding, every number taken from ``results``."""
    ok = [r for r in results if r.available and r.loads]
    if not ok:
        return ["No option could be measured on this machine, so there is nothing to compare."]
    base = next((r for r in ok if r.family == "In-process"), None)
    fastest = max(ok, key=lambda r: r.best()["throughput_per_s"])
    lowest = min(ok, key=lambda r: min(v["p99_ms"] for v in r.loads.values()))
    lean = min((r for r in ok if r.rss_mb), key=lambda r: r.rss_mb or 0.0, default=None)
    quick = min((r for r in ok if r.startup_s is not None), key=lambda r: r.startup_s or 0.0)
    slow = max((r for r in ok if r.startup_s is not None), key=lambda r: r.startup_s or 0.0)
    out = [
        f"Highest throughput: **{fastest.name}**, {fastest.best()['throughput_per_s']:.0f} requests/s at concurrency {fastest.best()['concurrency']}.",
        f"Lowest p99 at any concurrency: **{lowest.name}**, {min(v['p99_ms'] for v in lowest.loads.values()):.1f} ms.",
    ]
    if base is not None and fastest is not base:
        ratio = fastest.best()["throughput_per_s"] / base.best()["throughput_per_s"]
        verdict = "more workers beat one process here." if ratio > 1.2 else "about the same: for a model this small, parallel workers barely pay on this machine."
        out.append(f"Against the in-process baseline ({base.best()['throughput_per_s']:.0f} requests/s), the fastest option is {ratio:.2f}× — {verdict}")
    servers = [r for r in ok if r.family not in ("In-process", "ProcessPoolExecutor")]
    if base is not None and servers:
        cheapest = min(servers, key=lambda r: r.cpu_s_per_1k or float("inf"))
        dearest = max(servers, key=lambda r: r.cpu_s_per_1k or 0.0)
        out.append(f"Per 1,000 requests the in-process model needs {base.cpu_s_per_1k:.2f} CPU s; among the services, **{cheapest.name}** needs "
                   f"{cheapest.cpu_s_per_1k:.2f} s and **{dearest.name}** {dearest.cpu_s_per_1k:.2f} s: serialization, HTTP, brokers and schedulers cost more than the model.")
    if lean is not None:
        heavy = max((r for r in ok if r.rss_mb), key=lambda r: r.rss_mb or 0.0)
        out.append(f"Memory: **{lean.name}** serves in {lean.rss_mb:.0f} MB, **{heavy.name}** needs {heavy.rss_mb:.0f} MB ({(heavy.rss_mb or 0) / (lean.rss_mb or 1):.0f}×).")
    out.append(f"Start-up to the first prediction ranges from {quick.startup_s:.2f} s (**{quick.name}**) to {slow.startup_s:.1f} s (**{slow.name}**): "
               "what a cold start or a new replica costs.")
    healed = [r for r in ok if r.recovery.get("recovery_s") is not None]
    broken = [r for r in ok if r.recovery.get("recovered") is False]
    if healed:
        best = min(healed, key=lambda r: r.recovery["recovery_s"])
        worst = max(healed, key=lambda r: r.recovery["recovery_s"])
        out.append(f"After a worker was killed, **{best.name}** was back to normal {best.recovery['recovery_s']:.1f} s later ({best.recovery['lost']} request(s) lost), "
                   f"**{worst.name}** after {worst.recovery['recovery_s']:.1f} s ({worst.recovery['lost']} lost)"
                   + (f"; {', '.join(r.name for r in broken)} did not recover by itself." if broken else "."))
    with_loc = [r for r in ok if r.loc]
    if with_loc:
        few = min(with_loc, key=lambda r: r.loc or 0)
        many = max(with_loc, key=lambda r: r.loc or 0)
        out.append(f"Deployment code written in this notebook: {few.loc} lines for **{few.name}**, {many.loc} for **{many.name}**.")
    return out
