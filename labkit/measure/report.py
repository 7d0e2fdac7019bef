"""The capstone's report: one table, four plots, files on disk, advice, and the lines of code per option.

Everything here reads ``capstone.OptionResult``s (what ``capstone.run_option`` measured) and the
notebook's own cells; nothing measures. ``table`` sets the seed's opinion columns next to the
measured ones; ``plot_all`` draws throughput, latency CDFs, throughput vs p99 with the Pareto front,
and memory; ``save`` writes JSON, CSV and PNG; ``advice`` says "which option when" with numbers
taken from the results; ``deploy_loc`` counts the lines each option's ``# deploy:`` cell needs.
Used in 14.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit import config
from labkit.measure.recovery import format_recovery

if TYPE_CHECKING:
    from labkit.measure.capstone import OptionResult

__all__ = [
    "DEPLOY_MARKER",
    "SEED_TABLE",
    "advice",
    "count_loc",
    "deploy_loc",
    "notebook_sources",
    "pareto_front",
    "plot_all",
    "results_dir",
    "save",
    "table",
]

DEPLOY_MARKER = "# deploy:"

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


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names not dominated on (throughput ↑, p99 ↓): no other point is at least as good on both and better on one."""
    front = []
    for name, (tp, p99) in points.items():
        dominated = any((tp2 >= tp and q2 <= p99) and (tp2 > tp or q2 < p99) for n2, (tp2, q2) in points.items() if n2 != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def table(results: Sequence[OptionResult], concurrencies: Sequence[int] = (1, 8, 32)) -> Any:
    """One row per option: the seed's opinion columns next to the measured ones (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for r in results:
        row: dict[str, Any] = {"option": r.name, **SEED_TABLE.get(r.family, {"Best for": "", "Advantages": "", "Drawbacks": ""})}
        if not r.available:
            row["status"] = f"not available here: {r.reason}"
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
    absent = [r for r in results if not r.available]
    if absent:  # an option that could not start is named on the figure, not silently left out
        fig.supxlabel("not available here: " + "; ".join(f"{r.name} ({r.reason.split(' — ')[0].split('. Get it: ')[0]})" for r in absent), fontsize="small", color="dimgrey", wrap=True)
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
