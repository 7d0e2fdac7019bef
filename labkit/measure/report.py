"""The capstone's report: one table and one row of plots per workload, files on disk, advice.

Everything here reads ``capstone.OptionResult``s (what ``capstone.run_option`` measured); nothing
measures. ``table`` sets the seed's opinion columns (each marked where this run cannot test it)
next to the measured ones, every latency column at one fixed concurrency named in its header;
``plot_all`` draws, per workload, throughput with its spread, latency CDFs and throughput vs p99
(whiskers: min–max over repeats) with the Pareto front of the real options (emulated, stand-in and
reference rows drawn apart, in grey; each real option one colour in every panel); ``save`` writes JSON, CSV and PNG; ``advice`` answers an engineer's questions from both
workloads, real rows only. Used in 14 and ``labkit bench capstone``.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit import config
from labkit.measure.recovery import format_recovery

if TYPE_CHECKING:
    from labkit.measure.capstone import OptionResult

__all__ = [
    "DEPLOY_MARKER",
    "NOT_TESTED",
    "SEED_TABLE",
    "SEED_TESTED",
    "advice",
    "ceiling_shares",
    "col",
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
NOT_TESTED = "not tested here"

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
# What this run can say about each opinion: which column tests it, or NOT_TESTED (one machine, one model).
SEED_TESTED: dict[str, dict[str, str]] = {
    "In-process": {"Best for": "floor row", "Advantages": "start-up column", "Drawbacks": "recovery column"},
    "ProcessPoolExecutor": {"Best for": "measured", "Advantages": "deploy LOC column", "Drawbacks": NOT_TESTED},
    "Celery": {"Best for": NOT_TESTED + " (one machine)", "Advantages": "retries: recovery column; scales: " + NOT_TESTED, "Drawbacks": "start-up, RSS columns"},
    "Kubernetes": {"Best for": NOT_TESTED, "Advantages": "self-healing: recovery column (emulated controller); autoscaling: " + NOT_TESTED + " (see 08)", "Drawbacks": "deploy LOC column"},
    "Ray": {"Best for": NOT_TESTED + " (one machine)", "Advantages": "a cluster: " + NOT_TESTED, "Drawbacks": "start-up, RSS columns"},
    "TorchServe": {"Best for": "measured", "Advantages": "batching: wide workload; versioning: " + NOT_TESTED, "Drawbacks": "start-up, RSS columns"},
    "TF Serving": {"Best for": NOT_TESTED + " (a stand-in serves here)", "Advantages": NOT_TESTED + ": this row is labkit's Python stand-in", "Drawbacks": NOT_TESTED},
}
KIND_LABEL = {"real": "real server", "emulated": "EMULATED (labkit stands in for the control plane)", "stand-in": "STAND-IN (labkit's re-implementation)", "reference": "reference (not an option)"}


def col(what: str, concurrency: int) -> str:
    """A column header that names its concurrency: ``col("p99 ms", 16)`` → "p99 ms @ 16 clients"."""
    return f"{what} @ {concurrency} clients"


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


def results_dir() -> Path:
    """Where the capstone writes its JSON, CSV and PNG: ``<cache dir>/results/capstone``."""
    return config.cache_dir("results", "capstone")


def _ceiling(results: Sequence[OptionResult], workload: str, concurrency: int) -> float | None:
    null = next((r for r in results if r.family == "Null server" and r.at(workload, concurrency)), None)
    return null.at(workload, concurrency)["throughput_per_s"] if null else None


def ceiling_shares(results: Sequence[OptionResult], workload: str = "cnn", concurrency: int = 16) -> dict[str, float]:
    """Each HTTP row's throughput as a share of the null-server ceiling (same front, client, concurrency)."""
    top = _ceiling(results, workload, concurrency)
    if not top:
        return {}
    return {r.name: round(r.at(workload, concurrency)["throughput_per_s"] / top, 3) for r in results if r.http and r.family != "Null server" and r.at(workload, concurrency)}


def _seed(family: str, column: str) -> str:
    if family not in SEED_TABLE:
        return "— (not in the seed's table)" if family != "Null server" else "—"
    text = SEED_TABLE[family].get(column, "")
    note = SEED_TESTED.get(family, {}).get(column, "")
    return f"{text} [{note}]" if text and note else text


def table(results: Sequence[OptionResult], workload: str = "cnn", concurrency: int = 16) -> Any:
    """One row per option for one workload: the seed's opinions next to the measured columns (a DataFrame).

    Every latency and throughput column is read at ``concurrency`` and says so in its header.
    When a row ran on an external deployment, a "runs on" column names it for every row.
    """
    import pandas as pd

    shares = ceiling_shares(results, workload, concurrency)
    any_external = any(r.external for r in results)
    rows = []
    for r in results:
        row: dict[str, Any] = {"option": r.name, "kind": KIND_LABEL[r.kind], "what it is": r.what}
        if any_external:
            row["runs on"] = f"external: {r.external}" if r.external else "started by this notebook"
        row.update({c: _seed(r.family, c) for c in ("Best for", "Advantages", "Drawbacks")})
        p = r.at(workload, concurrency)
        if not r.available:
            row["status"] = f"not available here: {r.reason}"
        elif not p:
            row["status"] = r.notes.get(workload, "not measured")
        else:
            row["status"] = f"measured ({p['repeats']} × {p['seconds'] / p['repeats']:.1f} s, {p['n']} requests)"
            tp, q = p["throughput_spread"], p["p99_spread"]
            row[col("req/s", concurrency)] = p["throughput_per_s"]
            row[col("req/s min–max", concurrency)] = f"{tp['min']:.0f}–{tp['max']:.0f}"
            row[col("p50 ms", concurrency)] = p["p50_ms"]
            row[col("p99 ms", concurrency)] = p["p99_ms"]
            row[col("p99 ms min–max", concurrency)] = f"{q['min']:.1f}–{q['max']:.1f}"
            row[col("share of null-server ceiling", concurrency)] = shares.get(r.name)
            row[col("client CPU s / 1k req", concurrency)] = p["client_cpu_s_per_1k"]
            row[col("server CPU s / 1k req", concurrency)] = p["server_cpu_s_per_1k"]
            row["start-up s"] = r.startup_s
            row["RSS MB"] = r.rss_mb
            row["answers"] = r.correct.get(workload, "")
        row[col("recovery after kill", concurrency)] = format_recovery(r.recovery) if r.available else ""
        row["deploy LOC"] = r.loc
        rows.append(row)
    return pd.DataFrame(rows).set_index("option")


def _real(results: Sequence[OptionResult], workload: str, concurrency: int) -> list[OptionResult]:
    return [r for r in results if r.kind == "real" and r.at(workload, concurrency)]


def plot_all(results: Sequence[OptionResult], concurrency: int = 16, device: str = "cpu", workloads: Sequence[str] = ("cnn", "wide")) -> Any:
    """Per workload (one row each): throughput with its min–max, latency CDFs, throughput vs p99 + Pareto front.

    Real options are coloured (one colour per option in every panel and row, never tab10's grey) and
    form the front; emulated, stand-in and reference rows are grey (dashed, hollow), labelled as such
    and left off the front. The throughput-vs-p99 points carry min–max whiskers on both axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from labkit import plots
    from labkit.measure.capstone import WORKLOADS

    # one colour per real option, the same in every panel and row; tab10's grey (index 7) is left to the grey rows
    palette = [plt.cm.tab10(i) for i in range(10) if i != 7]
    real_colour = {r.name: palette[i % len(palette)] for i, r in enumerate(r for r in results if r.kind == "real")}
    fig = plt.figure(figsize=(17, 5.4 * len(workloads)), layout="constrained")
    subfigs = fig.subfigures(len(workloads), 1, squeeze=False)[:, 0]  # one per workload, its name as the row's title
    end_labels: list[tuple[Any, list[Any]]] = []  # each throughput panel's value labels, fitted once the layout is done
    for sub, w in zip(subfigs, workloads):
        sub.suptitle(f"{WORKLOADS[w]} — each real option has one colour in all three panels", fontweight="bold")
        row = sub.subplots(1, 3, width_ratios=[1.25, 1, 1])
        ok = [r for r in results if r.at(w, concurrency)]
        ax = row[0]
        names = [r.name for r in ok]
        tps = [r.at(w, concurrency)["throughput_per_s"] for r in ok]
        # the bar is the median of the rounds, pooled; on a round figure it can sit a hair outside min–max
        lo = [max(0.0, t - r.at(w, concurrency)["throughput_spread"]["min"]) for r, t in zip(ok, tps)]
        hi = [max(0.0, r.at(w, concurrency)["throughput_spread"]["max"] - t) for r, t in zip(ok, tps)]
        colors = [real_colour.get(r.name, "lightgrey") for r in ok]
        ax.barh(names, tps, xerr=[lo, hi], color=colors, edgecolor=["k" if r.kind == "real" else "grey" for r in ok], hatch=None)
        end_labels.append((ax, [ax.text(t + h, yy, f" {t:.0f}" + ("" if r.kind == "real" else f"  ({r.kind})"), va="center", fontsize="x-small")
                                for r, t, h, yy in zip(ok, tps, hi, range(len(ok)))]))
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize="x-small")
        ax.set(xlabel=col("requests / s (median, bar: min–max)", concurrency), title="throughput")
        drawn = [r for r in ok if len(r.latencies_s.get(w, []))]
        plots.latency_cdf({r.name + ("" if r.kind == "real" else f" [{r.kind}]"): r.latencies_s.get(w, []) for r in drawn}, ax=row[1], title=f"latency CDF @ {concurrency} clients")
        for r, line in zip(drawn, row[1].get_lines()):  # the CDFs come first, in order: colour them like the bars
            line.set(color=real_colour.get(r.name, "grey"), ls="-" if r.kind == "real" else "--")
        row[1].legend(handles=[Line2D([], [], color="grey", ls="--", label="emulated, stand-in or reference")], fontsize="x-small", loc="lower right")
        ax = row[2]
        points: dict[str, tuple[float, float]] = {}
        for r in ok:
            cs = sorted(r.points[w])
            pts = [r.points[w][c] for c in cs]
            xs, ys = [p["p99_ms"] for p in pts], [p["throughput_per_s"] for p in pts]
            # whiskers: the min–max over repeats on both axes (clipped at the median: a round figure can sit a hair outside)
            xerr = [[max(0.0, x - p["p99_spread"]["min"]) for x, p in zip(xs, pts)], [max(0.0, p["p99_spread"]["max"] - x) for x, p in zip(xs, pts)]]
            yerr = [[max(0.0, y - p["throughput_spread"]["min"]) for y, p in zip(ys, pts)], [max(0.0, p["throughput_spread"]["max"] - y) for y, p in zip(ys, pts)]]
            if r.kind == "real":
                ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o-", color=real_colour[r.name], elinewidth=0.8, label=r.name)
                points.update({f"{r.name} @{c}": (yv, xv) for c, xv, yv in zip(cs, xs, ys)})
            else:
                ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o--", mfc="none", color="grey", elinewidth=0.8, label=f"{r.name} [{r.kind}, not on the front]")
        front = pareto_front(points)
        if front:
            ax.plot([points[n][1] for n in front], [points[n][0] for n in front], "k:", lw=1.2, label="Pareto front (real options only)")
            ax.scatter([points[n][1] for n in front], [points[n][0] for n in front], s=140, facecolors="none", edgecolors="k")
        ax.set(xscale="log", yscale="log", xlabel=col("p99 ms (log)", concurrency) if len(ok) and len(ok[0].points[w]) == 1 else "p99 ms (log); one point per concurrency",
               ylabel="requests / s (log)", title="throughput vs p99 (whiskers: min–max)")
        plots.plain_log_ticks(ax, "x")  # plain ms and req/s (40, 60, 100, 200 …), not 10^2 alone: a value can be read off
        plots.plain_log_ticks(ax, "y")
        ax.legend(handles=[h for h, lab in zip(*ax.get_legend_handles_labels()) if lab.startswith("Pareto")]
                  + [Line2D([], [], color="grey", ls="--", marker="o", mfc="none", label="emulated, stand-in or reference: not on the front")],
                  fontsize="x-small", loc="upper left", bbox_to_anchor=(0.0, -0.12), frameon=False)  # under the axes: off the points
        ax.grid(alpha=0.3)
        missing = [r for r in results if not r.at(w, concurrency)]
        if missing:
            ax.annotate("not on this workload: " + "; ".join(f"{r.name} ({textwrap.shorten((r.reason or r.notes.get(w, 'not measured')).split(' — ')[0], 60, placeholder=' …')})" for r in missing),
                        (0, -0.30), xycoords="axes fraction", fontsize="xx-small", color="dimgrey", wrap=True, va="top")
        for a in row:
            plots.annotate_device(a, device)
    fig.canvas.draw()  # the layout is final: each value label's width is known
    for ax, labels in end_labels:
        plots.keep_end_labels_inside(ax, labels)
    return fig


def save(results: Sequence[OptionResult], tables: Mapping[str, Any], fig: Any = None, folder: str | Path | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``capstone.json`` (every figure + the environment), ``capstone-<workload>.csv`` per table and ``capstone.png``."""
    from labkit import bench

    out = Path(folder) if folder is not None else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "capstone.json"}
    payload = {"environment": bench.environment(), "options": [r.to_dict() for r in results], **(extra or {})}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    for w, df in tables.items():
        paths[f"csv-{w}"] = out / f"capstone-{w}.csv"
        df.to_csv(paths[f"csv-{w}"])
    if fig is not None:
        paths["png"] = out / "capstone.png"
        fig.savefig(paths["png"], dpi=100, bbox_inches="tight")  # the "not on this workload" note sits below the axes
    return paths


def _overlapping(real: Sequence[OptionResult], best: OptionResult, workload: str, concurrency: int, spread: str, lowest: bool) -> list[OptionResult]:
    """The other real rows whose min–max over repeats reaches the winner's: this run does not tell them apart."""
    b = best.at(workload, concurrency)[spread]
    out = []
    for r in real:
        if r is best:
            continue
        o = r.at(workload, concurrency)[spread]
        if (o["min"] <= b["max"]) if lowest else (o["max"] >= b["min"]):
            out.append(r)
    return out


def _tie_note(best: OptionResult, ties: Sequence[OptionResult], workload: str, concurrency: int, spread: str, unit: str) -> str:
    d = 1 if unit == " ms" else 0

    def span(r: OptionResult) -> str:
        s = r.at(workload, concurrency)[spread]
        return f"{s['min']:.{d}f}–{s['max']:.{d}f}"

    if not ties:
        return f" (its repeats, {span(best)}{unit}, overlap no other real option's)"
    return f" — but its repeats ({span(best)}{unit}) overlap those of " + ", ".join(f"{r.name} ({span(r)})" for r in ties) + ": this run does not separate them"


def _fastest_lossless(healed: Sequence[OptionResult], best: OptionResult) -> str:
    """When the fastest recovery lost requests: the fastest one that lost none, if any did."""
    if not best.recovery.get("lost"):
        return ""
    clean = [r for r in healed if r.recovery.get("lost") == 0]
    if not clean:
        return "; every option that recovered lost requests"
    r = min(clean, key=lambda r: r.recovery["recovery_s"])
    return f"; fastest with no request lost: **{r.name}**, {r.recovery['recovery_s']:.1f} s"


def advice(results: Sequence[OptionResult], concurrency: int = 16, workloads: Sequence[str] = ("cnn", "wide")) -> list[str]:
    """'Which option when', one sentence per question an engineer asks, from both workloads, real rows only.

    Emulated, stand-in and reference rows never win a question; they are named apart. A winner
    whose min–max over repeats overlaps another real option's says so and names it (the run does
    not separate them); a figure measured once (CPU per request, recovery) says it has no spread.
    """
    from labkit.measure.capstone import WORKLOADS

    out: list[str] = []
    apart = sorted({r.name for r in results if r.kind in ("emulated", "stand-in")})
    for w in workloads:
        real = _real(results, w, concurrency)
        if not real:
            out.append(f"{WORKLOADS[w]}: no real option was measured here, so there is nothing to advise.")
            continue
        low = min(real, key=lambda r: r.at(w, concurrency)["p99_ms"])
        low_ties = _overlapping(real, low, w, concurrency, "p99_spread", lowest=True)
        per_cpu = {r.name: 1000 / max(r.at(w, concurrency)["server_cpu_s_per_1k"], 1e-9) for r in real if r.at(w, concurrency)["server_cpu_s_per_1k"] is not None}
        eff = max(per_cpu, key=per_cpu.__getitem__) if per_cpu else None  # external rows have no server CPU figure
        fast = max(real, key=lambda r: r.at(w, concurrency)["throughput_per_s"])
        fast_ties = _overlapping(real, fast, w, concurrency, "throughput_spread", lowest=False)
        top = _ceiling(results, w, concurrency)
        share = f" ({fast.at(w, concurrency)['throughput_per_s'] / top:.0%} of the null-server ceiling, {top:.0f} req/s)" if top else ""
        out.append(f"{WORKLOADS[w]} — lowest p99 @ {concurrency} clients: **{low.name}**, {low.at(w, concurrency)['p99_ms']:.1f} ms"
                   + _tie_note(low, low_ties, w, concurrency, "p99_spread", " ms") + "; "
                   + (f"most requests per server CPU-second: **{eff}**, {per_cpu[eff]:.0f} (one figure per option, no spread); " if eff else "requests per server CPU-second: not measured (external rows only); ")
                   + f"highest throughput: **{fast.name}**, {fast.at(w, concurrency)['throughput_per_s']:.0f} req/s{share}"
                   + _tie_note(fast, fast_ties, w, concurrency, "throughput_spread", " req/s") + ".")
    healed = [r for r in results if r.kind == "real" and r.recovery.get("recovery_s") is not None]
    broken = [r.name for r in results if r.kind == "real" and r.recovery.get("recovered") is False]
    if healed:
        best = min(healed, key=lambda r: r.recovery["recovery_s"])
        out.append(f"Fastest recovery after a worker was killed (CNN, @ {concurrency} clients; one kill per option, so no spread): **{best.name}**, {best.recovery['recovery_s']:.1f} s, "
                   f"{best.recovery['lost']} request(s) lost" + _fastest_lossless(healed, best) + (f"; did not recover by itself: {', '.join(broken)}." if broken else "."))
    coded = [r for r in results if r.kind == "real" and r.available and r.loc]
    if coded:
        few = min(coded, key=lambda r: r.loc or 0)
        tied = [r.name for r in coded if r is not few and r.loc == few.loc]
        out.append(f"Least code to deploy: **{few.name}**, {few.loc} lines" + (f" (as few: {', '.join(tied)})." if tied else "."))
    kube = [r for r in results if r.family == "Kubernetes" and r.loc]
    if kube:
        out.append(f"Kubernetes needs {min(r.loc or 0 for r in kube)} lines (deploy code + Dockerfile + manifests in deploy/); its rows are emulated, so they are left out of the ranking above.")
    external = [r.name for r in results if r.external and r.available]
    if external:
        out.append("Measured on an external deployment (its server CPU, RSS and recovery are not this notebook's to measure): " + "; ".join(external) + ".")
    if apart:
        out.append("Left out of every question above (emulated or stand-in: their numbers are labkit's, not the product's): " + "; ".join(apart) + ".")
    return out
