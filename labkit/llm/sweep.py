"""An offered-load sweep: static vs continuous batching on the same traces, load from low to overload.

Load is relative to what continuous batching can sustain on this machine: ``capacity_per_s`` runs
a burst (every request at time 0) through the continuous engine and counts requests per second;
load 1.0 offers exactly that rate, 0.25 a quarter of it. Each load gets one seeded Poisson trace,
served by both policies one after the other. Shown in 11.

    sw = sweep.offered_load(model, loads=(0.25, 0.5, 1.0, 4.0), n_requests=120)
    sweep.plot_sweep(sw)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from labkit.errors import BadInput
from labkit.llm import trace
from labkit.llm.engine import POLICIES, Engine, EngineRun

__all__ = ["BLOCK_SIZE", "LOADS", "MAX_BATCH", "Sweep", "SweepPoint", "capacity_per_s", "offered_load", "plot_sweep"]

LOADS = (0.25, 0.5, 1.0, 4.0)
MAX_BATCH = 8
BLOCK_SIZE = 2  # tokens per KV block: our sequences hold ≤ 64 tokens (vLLM's 16 serve sequences of hundreds)


@dataclass
class SweepPoint:
    """One policy at one offered load."""

    policy: str
    load: float
    rate_per_s: float
    run: EngineRun = field(repr=False)


@dataclass
class Sweep:
    """Every point of a sweep, and the capacity that load 1.0 stands for."""

    capacity_per_s: float
    max_batch: int
    block_size: int
    points: list[SweepPoint]

    @property
    def loads(self) -> list[float]:
        return sorted({p.load for p in self.points})

    def at(self, policy: str, load: float) -> EngineRun:
        """The run of ``policy`` at ``load``."""
        for p in self.points:
            if p.policy == policy and p.load == load:
                return p.run
        raise BadInput(f"no point for {policy!r} at load {load}; loads: {self.loads}")

    def series(self, policy: str, figure: str) -> list[float]:
        """One figure of ``EngineRun.summary()`` for ``policy`` at every load, in load order."""
        return [self.at(policy, load).summary()[figure] for load in self.loads]

    def rows(self) -> list[dict[str, Any]]:
        return [{"policy": p.policy, "load": p.load, "rate_per_s": round(p.rate_per_s, 1), **p.run.summary()} for p in self.points]


def capacity_per_s(model: nn.Module, n_requests: int = 100, max_batch: int = MAX_BATCH, block_size: int = BLOCK_SIZE, seed: int = 0, repeats: int = 1) -> float:
    """Requests per second the continuous engine sustains: a burst of ``n_requests`` served as fast as it can (best of ``repeats``)."""
    burst = trace.poisson(n_requests, float("inf"), seed=seed)
    return max(n_requests / Engine(model, "continuous", max_batch, "paged", block_size).run(burst).makespan_s for _ in range(repeats))


def offered_load(
    model: nn.Module,
    loads: Sequence[float] = LOADS,
    n_requests: int = 120,
    max_batch: int = MAX_BATCH,
    block_size: int = BLOCK_SIZE,
    seed: int = 0,
    capacity: float | None = None,
    repeats: int = 1,
) -> Sweep:
    """Serve one Poisson trace per load with both policies (paged KV cache); return every run. Shown in 11.

    With ``repeats`` > 1 the two policies run alternately that many times per load and each keeps
    its run with the least busy time (the one least disturbed by other programs).
    """
    cap = capacity if capacity is not None else capacity_per_s(model, max_batch=max_batch, block_size=block_size, seed=seed, repeats=repeats)
    points = []
    for load in loads:
        rate = load * cap
        reqs = trace.poisson(n_requests, rate, seed=seed)
        best: dict[str, EngineRun] = {}
        for _ in range(repeats):
            for policy in POLICIES:  # interleaved, so both see the same machine
                run = Engine(model, policy, max_batch, "paged", block_size).run(reqs)
                if policy not in best or run.busy_s < best[policy].busy_s:
                    best[policy] = run
        points += [SweepPoint(policy, load, rate, best[policy]) for policy in POLICIES]
    return Sweep(cap, max_batch, block_size, points)


def plot_sweep(sw: Sweep, axes: Any = None, title: str = "") -> Any:
    """Tokens/s, TTFT p50 and inter-token latency p50/p99 against offered load, one line per policy."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.4), layout="constrained")
    loads = sw.loads
    for policy, color in zip(POLICIES, ("C3", "C0")):
        axes[0].plot(loads, sw.series(policy, "tokens_per_s"), "o-", color=color, label=policy)
        axes[1].plot(loads, sw.series(policy, "ttft_p50_ms"), "o-", color=color, label=f"{policy} p50")
        axes[1].plot(loads, sw.series(policy, "ttft_p99_ms"), "x:", color=color, label=f"{policy} p99")
        axes[2].plot(loads, sw.series(policy, "itl_p50_ms"), "o-", color=color, label=f"{policy} p50")
        axes[2].plot(loads, sw.series(policy, "itl_p99_ms"), "x:", color=color, label=f"{policy} p99")
    for ax, ylabel, name in zip(axes, ("tokens / s", "ms", "ms"), ("Throughput", "Time to first token", "Inter-token latency")):
        ax.set_xlabel("offered load (1.0 = continuous capacity)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name}{' · ' + title if title else ''}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    from matplotlib import ticker

    for ax in axes[1:]:  # log axes labelled in plain ms (0.5, 1, 2, 5 …), not 10^0 and 2×10^0
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.5)  # the top third left empty: the legend sits above the lines, never on them
        if hi / lo < 10:  # under a decade 1-2-5 labels only two values (an idle 11: inter-token 1.3–4.5 ms read "2" and "5")
            ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)))
        ax.legend(fontsize="small", ncols=2, loc="upper left")
    return axes
