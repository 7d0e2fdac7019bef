"""Figures of emulated autoscaling runs, every one labelled as the emulation. Used in 08.

    plot.runs({"CPU HPA": run_cpu, "in-flight HPA": run_inflight}, title="Same ramp, two metrics")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labkit.kube.emulation import Emulation
from labkit.kube.hpa import KUBERNETES_RELEASE, MetricSpec

__all__ = ["EMULATION_LABEL", "costs", "runs"]

EMULATION_LABEL = f"emulation: local replicas, HPA algorithm of Kubernetes {KUBERNETES_RELEASE}"


def _metric_vs_target(run: Emulation) -> tuple[list[float], list[float], str]:
    """The run's first metric as a percentage of its target (100 % = on target)."""
    spec = next(m for m in run.hpa.metrics if isinstance(m, MetricSpec))
    ts, ys = run.metric(spec.label)
    return ts, [100.0 * y / spec.target for y in ys], spec.label


def runs(results: Mapping[str, Emulation] | Emulation, title: str = "HPA emulation") -> Any:
    """Four panels on one emulated time axis: offered load, metric vs target, replicas, p99 latency.

    The shaded span is where a scale-down was held back by the stabilization window; errors and
    retries are counted in the latency legend (none is dropped silently).
    """
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    results = {"run": results} if isinstance(results, Emulation) else dict(results)
    fig, axes = plt.subplots(4, 1, figsize=(10, 8.5), sharex=True, layout="constrained")
    for i, (name, run) in enumerate(results.items()):
        c = f"C{i}"
        axes[0].step(*run.offered(), where="post", color=c, label=name)
        ts, ys, label = _metric_vs_target(run)
        axes[1].plot(ts, ys, marker=".", color=c, label=f"{name}: {label}")
        axes[2].step(*run.replicas(), where="post", color=c, label=f"{name}: spec.replicas")
        axes[2].step(*run.ready(), where="post", color=c, ls=":", label=f"{name}: ready")
        held = run.held_interval()
        if held is not None:
            axes[2].axvspan(*held, color=c, alpha=0.12, label=f"{name}: scale-down held {held[1] - held[0]:.0f} s")
        axes[3].plot(*run.latency_p99(), marker=".", color=c, label=f"{name} ({run.errors()} failed, {run.lb.get('retries', 0)} retried)")
    axes[1].axhline(100, color="grey", ls="--", label="target")
    axes[0].set_ylabel("offered load\n(req / real s)")
    axes[1].set_ylabel("metric\n(% of its target)")
    axes[2].set_ylabel("replicas")
    axes[2].yaxis.get_major_locator().set_params(integer=True)
    axes[3].set_ylabel("p99 latency (ms)")
    axes[3].set_yscale("log")
    axes[3].yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes[3].yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 20, 50, 100 ms, not 2×10^1
    axes[3].yaxis.set_minor_formatter(ticker.NullFormatter())  # minor labels crowd each other
    axes[3].set_xlabel("emulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0].set_title(f"{title}\n({EMULATION_LABEL})", fontsize="medium")
    return fig


def costs(results: Mapping[str, Emulation], title: str = "What each HPA cost") -> Any:
    """Three bars per run: replica-seconds, p99 latency, failed requests (the emulation)."""
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), layout="constrained")
    figures = [("replica · emulated s", [r.replica_seconds() for r in results.values()]), ("p99 latency (ms)", [r.p99_ms() for r in results.values()]), ("requests failed", [float(r.errors()) for r in results.values()])]
    for ax, (label, values) in zip(axes, figures):
        bars = ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        ax.bar_label(bars, fmt="%.0f", padding=2)
        ax.set_ylim(0, max([v for v in values if v == v] + [1.0]) * 1.18)  # room for the labels; a count of 0 stays 0..1
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", labelrotation=15)
    fig.suptitle(f"{title}\n({EMULATION_LABEL})", fontsize="medium")
    return fig
