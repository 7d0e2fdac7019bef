"""``labkit bench``: benchmarks as ratios measured side by side in one run, with target lines.

Each benchmark lives in ``labkit/bench/<name>.py`` and exposes ``run(fast: bool) -> Result``.
Every target prints one line in one format, for people and scripts alike::

    <name>: measured <value> <unit>, target <op> <value> — met      (or — MISSED)

and the JSON file holds the same figures plus the environment. Notebooks call the same code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import operator
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labkit.errors import BadInput

__all__ = ["BENCHMARKS", "Result", "Target", "available", "environment", "run", "write_json"]

# Every benchmark of the lab, in course order ("all" runs those that exist).
BENCHMARKS = (
    "baseline",
    "pipeline",
    "ensemble",
    "sharding",
    "data-parallel",
    "celery",
    "gateway",
    "ray",
    "hpa",
    "torchserve",
    "tfserving",
    "faults",
    "triton",
    "litserve",
    "llm",
    "capstone",
)
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Target:
    """One measured figure, optionally compared with a target (``op`` and ``target``)."""

    name: str
    value: float
    unit: str = ""
    op: str | None = None
    target: float | None = None

    def __post_init__(self) -> None:
        if self.op is not None and self.op not in _OPS:
            raise BadInput(f"target op {self.op!r} is not one of {', '.join(_OPS)}")

    @property
    def met(self) -> bool | None:
        """True/False against the target; None for a figure that is only reported."""
        if self.op is None or self.target is None:
            return None
        return _OPS[self.op](self.value, self.target)

    def line(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        measured = f"{self.name}: measured {_fmt(self.value)}{unit}"
        if self.met is None:
            return f"{measured} (reported)"
        return f"{measured}, target {self.op} {_fmt(self.target)}{unit} — {'met' if self.met else 'MISSED'}"


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


@dataclass
class Result:
    """What one benchmark returns: its targets, any extra figures, and how long it took."""

    name: str
    targets: list[Target] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0
    fast: bool = False

    @property
    def all_met(self) -> bool:
        return all(t.met is not False for t in self.targets)

    def lines(self) -> list[str]:
        return [t.line() for t in self.targets]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for t, td in zip(self.targets, d["targets"]):
            td["met"] = t.met
            td["line"] = t.line()
        return d


def _module_name(name: str) -> str:
    return "labkit.bench." + name.replace("-", "_")


def available() -> dict[str, bool]:
    """Which benchmarks exist in this checkout (the rest are still to come)."""
    return {n: importlib.util.find_spec(_module_name(n)) is not None for n in BENCHMARKS}


def environment() -> dict[str, Any]:
    """CPU, cores, threads, versions and device: stored next to every result."""
    import torch

    from labkit import __version__
    from labkit.runtime import hardware

    return {
        "labkit": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": hardware.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(hardware.device()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run(name: str, fast: bool = False) -> Result:
    """Run one benchmark by name and return its result."""
    if name not in BENCHMARKS:
        raise BadInput(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)} or all")
    if not available()[name]:
        raise BadInput(f"benchmark {name!r} is not in this version of labkit yet")
    from labkit.measure import probe
    from labkit.runtime import hardware

    module = importlib.import_module(_module_name(name))
    contention = probe.start()  # calibration + load at the start and the end: the JSON says if the machine was busy
    t0 = time.monotonic()
    with hardware.threads_limited(hardware.threads()):  # a benchmark that changes torch's threads must not change the next one's
        result: Result = module.run(fast=fast)
    result.elapsed_s = time.monotonic() - t0
    result.fast = fast
    report = contention.finish()
    result.figures["probe"] = report.as_dict()
    print(f"{name}: {report.line()}")
    return result


def write_json(results: Sequence[Result], path: str | Path) -> Path:
    """Write results and the environment to ``path`` as JSON."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "results": [r.to_dict() for r in results]}, indent=2, default=str))
    return out
