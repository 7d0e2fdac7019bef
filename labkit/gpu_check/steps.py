"""The steps of ``labkit gpu-check``: what each runs, its time budget, when it skips, and running it capped.

Every step runs in a child process of the interpreter gpu-check was started with, in the
repository root, in fast mode, with ``LABKIT_DEVICE=cuda``; a step still running at its cap is
killed with every process it started (by pid). Budgets are seconds on one modern GPU machine
with 16 cores and nothing cached (models are trained on the spot). Their sum plus ``STARTUP_S``
is ``TOTAL_BUDGET_S``, the whole run's cap. A step's cap is its budget plus whatever earlier steps
left unused (a step that finished early, or was skipped), never eating into the budgets of the
steps after it; a step that would start with less than ``MIN_STEP_S`` is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from labkit.gpu_check import wheels

__all__ = [
    "MIN_STEP_S",
    "NOTEBOOK_MODULES",
    "STARTUP_S",
    "STEPS",
    "TOTAL_BUDGET_S",
    "Outcome",
    "Step",
    "cap_for",
    "gpu_cells_skipped",
    "multi_gpu_reason",
    "notebook_imports",
    "notebook_lines",
    "plan",
    "run_capped",
    "run_step",
    "step_env",
]

TOTAL_BUDGET_S = 345.0  # the steps' share of the 6 minutes; the report takes the rest
STARTUP_S = 15.0  # gpu-check's own start (torch import, the machine's description) before the first step
MIN_STEP_S = 5.0
NOTEBOOK_MODULES = ("nbclient", "nbformat", "ipykernel")  # what running any notebook through nbclient needs
LOG_TAIL_LINES = 25
_LINE = re.compile(r"^\s*(✅|⚠️|Skipped:)")
_IMPORT = re.compile(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", re.M)


@dataclass(frozen=True)
class Step:
    """One step: ``kind`` is command (``python -m <argv>``), bench (the same, with figures), notebook or multi-gpu."""

    name: str
    kind: str
    budget_s: float
    what: str
    argv: tuple[str, ...] = ()
    notebook: str = ""  # a glob under notebooks/, e.g. "00_*.ipynb"
    gpus: int = 0


# Budgets: what the step took on this lab's 2-core CPU box with nothing cached (the benches 16-53 s,
# notebooks 00-04 14-18 s each) plus a margin (nb00 also builds matplotlib's font cache on a bare
# machine). The GPU machine has 16 cores and the benches pin their worker threads, so it should be no
# slower. The multi-gpu step runs only on >= 2 GPUs, and its budget is added to the total there.
STEPS: tuple[Step, ...] = (
    Step("doctor", "command", 10, "labkit doctor (device, GPU names, peak CPU GFLOP/s)", ("labkit", "doctor")),
    Step("bench-baseline", "bench", 40, "peak matmul TFLOP/s (fp32, tf32, bf16) and the digit CNN's achieved TFLOP/s on cuda", ("labkit", "bench", "baseline", "--fast")),
    Step("bench-pipeline", "bench", 60, "thread pipeline vs its bound (CPU stages)", ("labkit", "bench", "pipeline", "--fast")),
    Step("bench-ensemble", "bench", 25, "2 members in 2 processes vs sequential (CPU)", ("labkit", "bench", "ensemble", "--fast")),
    Step("bench-data-parallel", "bench", 35, "data-parallel efficiency (CPU replicas) and one replica on cuda:0", ("labkit", "bench", "data-parallel", "--fast")),
    Step("bench-sharding", "bench", 35, "tensor and GPipe sharding on 2 ranks (gloo unless 2 GPUs: nccl)", ("labkit", "bench", "sharding", "--fast")),
    Step("nb00", "notebook", 30, "notebook 00 through nbclient", notebook="00_*.ipynb"),
    Step("nb01", "notebook", 25, "notebook 01 through nbclient", notebook="01_*.ipynb"),
    Step("nb02", "notebook", 25, "notebook 02 through nbclient", notebook="02_*.ipynb"),
    Step("nb04", "notebook", 20, "notebook 04 through nbclient", notebook="04_*.ipynb"),
    Step("nb11", "notebook", 25, "the LLM serving lesson through nbclient (when it exists)", notebook="11_*.ipynb"),
    Step("multi-gpu", "multi-gpu", 60, "the nccl cells: notebook 03 whole, and 04's GPU cell ran", notebook="03_*.ipynb", gpus=2),
)


@dataclass
class Outcome:
    """What one step did: passed, failed, missed (ran, a benchmark target missed) or skipped, and why."""

    name: str
    status: str
    reason: str | None = None
    what: str = ""
    budget_s: float = 0.0
    cap_s: float = 0.0
    elapsed_s: float = 0.0
    command: list[str] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # a benchmark's other figures and environment
    log_tail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def multi_gpu_reason(gpu_count: int, need: int = 2) -> str:
    """Why the 2-rank nccl cells cannot run here: nccl puts one rank on one device."""
    return f"{gpu_count} GPU{'' if gpu_count == 1 else 's'}: the {need}-rank nccl cells need {need}"


def notebook_imports(path: Path) -> list[str]:
    """Top-level modules the notebook's code cells import, other than the standard library and labkit."""
    import json as _json

    cells = _json.loads(path.read_text(encoding="utf-8"))["cells"]
    found: dict[str, None] = {}
    for c in cells:
        if c.get("cell_type") == "code":
            for m in _IMPORT.findall("".join(c.get("source", ""))):
                found.setdefault(m, None)
    return [m for m in found if m != "labkit" and m not in sys.stdlib_module_names and m != "__future__"]


def _notebook_path(step: Step, notebooks: Path) -> Path | None:
    matches = sorted(notebooks.glob(step.notebook))
    return matches[0] if matches else None


def plan(
    steps: Sequence[Step],
    gpu_count: int,
    notebooks: Path,
    only: Sequence[str] = (),
    have: Callable[[str], bool] = wheels.importable,
) -> list[tuple[Step, str | None]]:
    """Each step with the reason it will be skipped, or None if it runs (nothing is run here)."""
    out: list[tuple[Step, str | None]] = []
    for step in steps:
        reason = None
        if only and step.name not in only:
            reason = f"not selected (--only {','.join(only)})"
        elif step.gpus and gpu_count < step.gpus:
            reason = multi_gpu_reason(gpu_count, step.gpus)
        elif step.kind in ("command", "bench"):
            lacking = wheels.missing(["typer", *wheels.modules_required_by("typer")], have)  # the labkit command
            if lacking:
                reason = "missing " + ", ".join(lacking) + " (the labkit command needs them)"
        elif step.notebook:
            path = _notebook_path(step, notebooks)
            if path is None:
                reason = f"notebooks/{step.notebook} is not in this checkout"
            else:
                lacking = wheels.missing([*NOTEBOOK_MODULES, *notebook_imports(path)], have)
                if lacking:
                    reason = "missing " + ", ".join(lacking)
        out.append((step, reason))
    return out


def cap_for(planned: Sequence[tuple[Step, str | None]], index: int, time_left_s: float) -> float:
    """Seconds step ``index`` may run: what is left of the whole budget minus the budgets of the
    steps after it that will run (so it gets its own budget plus whatever earlier steps left)."""
    return time_left_s - sum(s.budget_s for s, reason in planned[index + 1 :] if reason is None)


def step_env(repo: Path, device: str) -> dict[str, str]:
    """The environment of every step: fast mode, the device, this checkout importable, no progress bars."""
    env = dict(os.environ)
    path = [str(repo), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env.update(
        LABKIT_FAST="1",
        LABKIT_DEVICE=device,
        PYTHONPATH=os.pathsep.join(dict.fromkeys(path)),
        PYTHONUNBUFFERED="1",
        TQDM_DISABLE="1",
        JUPYTER_PLATFORM_DIRS="1",
    )
    return env


def _kill_tree(pid: int) -> None:
    """Kill ``pid`` and every process it started (by pid; children first looked up, then all killed)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _kill_group(pgid: int) -> None:
    """Kill what is left of the process group (session) started for one step."""
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_capped(argv: Sequence[str], cap_s: float, env: dict[str, str], cwd: Path, log: Path) -> tuple[int | None, float]:
    """Run ``argv`` with output to ``log``; kill its whole tree at ``cap_s``. Returns (exit code or None on timeout, seconds).

    The child gets a session of its own, so whatever it leaves running is killed with it.
    """
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            proc.wait()
            rc = None
        except BaseException:  # Ctrl-C or SIGTERM on gpu-check: the step goes with it
            _kill_tree(proc.pid)
            _kill_group(proc.pid)
            raise
        _kill_group(proc.pid)
    return rc, time.monotonic() - t0


def _tail(text: str, n: int = LOG_TAIL_LINES) -> str:
    lines = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]  # a progress bar's last state only
    return "\n".join([ln for ln in lines if ln.strip()][-n:])


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^(error:|[A-Za-z_.]*(Error|Exception|Failed)\b|cell \d+)", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def notebook_lines(nb_path: Path) -> list[str]:
    """The verdict (✅/⚠️) and ``Skipped:`` lines an executed notebook printed, with their cell number."""
    out = []
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    for i, cell in enumerate(cells):
        for o in cell.get("outputs", []):
            text = o.get("text") or o.get("data", {}).get("text/plain") or ""
            for ln in ("".join(text) if isinstance(text, list) else text).splitlines():
                if _LINE.match(ln):
                    out.append(f"cell {i}: {ln.strip()}")
    return out


def gpu_cells_skipped(nb_path: Path) -> list[str]:
    """``Skipped:`` lines printed by the cells that call ``hardware.require(gpus=...)`` (empty: they all ran)."""
    cells = json.loads(nb_path.read_text(encoding="utf-8"))["cells"]
    out = []
    for i, cell in enumerate(cells):
        if cell.get("cell_type") == "code" and "require(gpus" in "".join(cell.get("source", "")):
            for o in cell.get("outputs", []):
                text = "".join(o.get("text", ""))
                out += [f"cell {i}: {ln.strip()}" for ln in text.splitlines() if ln.strip().startswith("Skipped:")]
    return out


def _bench_result(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A bench JSON's target lines (each with the device it ran on) and its other figures and environment."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return [], {}
    env = data.get("environment", {})
    results = data.get("results", [])
    targets = [{**t, "device": env.get("device")} for r in results for t in r.get("targets", [])]
    return targets, {"environment": env, "figures": [r.get("figures", {}) for r in results]}


def run_step(step: Step, cap_s: float, repo: Path, work: Path, device: str, executed: dict[str, Path]) -> Outcome:
    """Run one step capped at ``cap_s`` seconds; executed notebooks go to ``work`` (recorded in ``executed``)."""
    env = step_env(repo, device)
    log = work / f"{step.name}.log"
    outcome = Outcome(step.name, "passed", what=step.what, budget_s=float(step.budget_s), cap_s=round(cap_s, 1))
    dst: Path | None = None
    if step.kind in ("command", "bench"):
        argv = [sys.executable, "-m", *step.argv]
        if step.kind == "bench":
            argv += ["--json", str(work / f"{step.name}.json")]
    else:
        src = _notebook_path(step, repo / "notebooks")
        assert src is not None, f"plan() skips {step.name} when its notebook is absent"
        dst = executed[step.name] = work / src.name
        argv = [sys.executable, "-m", "labkit.gpu_check.notebook", str(src), str(dst), str(int(cap_s))]
    outcome.command = [Path(argv[0]).name, *argv[1:]]
    rc, outcome.elapsed_s = run_capped(argv, cap_s, env, repo, log)
    text = log.read_text(errors="replace")
    outcome.log_tail = _tail(text)
    if step.kind == "bench":
        outcome.figures, outcome.details = _bench_result(work / f"{step.name}.json")
        outcome.lines = [f["line"] for f in outcome.figures]
    elif dst is not None and dst.exists():
        outcome.lines = notebook_lines(dst)
    else:
        outcome.lines = [ln for ln in text.splitlines() if ln.strip()][:40]
    skipped_gpu_cells: list[str] = []
    if step.kind == "multi-gpu" and rc == 0 and dst is not None:
        others = [p for p in (executed.get("nb04"),) if p is not None and p.exists()]
        skipped_gpu_cells = [ln for p in (dst, *others) for ln in gpu_cells_skipped(p)]
    if rc is None:
        outcome.status, outcome.reason = "failed", f"timed out: still running at its cap of {cap_s:.0f} s (killed)"
    elif rc != 0:
        missed = [f["name"] for f in outcome.figures if f.get("met") is False]
        if step.kind == "bench" and rc == 1 and missed:
            outcome.status, outcome.reason = "missed", "target missed: " + "; ".join(missed)
        else:
            outcome.status, outcome.reason = "failed", f"exit code {rc}: {_last_error(text)}"
    elif skipped_gpu_cells:
        outcome.status, outcome.reason = "failed", "a GPU cell skipped on a machine with enough GPUs: " + "; ".join(skipped_gpu_cells)
    return outcome
