"""``labkit gpu-check`` / ``python -m labkit.gpu_check``: arguments, the refusal without CUDA, the run, the report.

See ``labkit.gpu_check`` for the one-line command that runs it on a GPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from labkit.gpu_check import report as rep
from labkit.gpu_check import steps as st
from labkit.gpu_check import wheels

__all__ = ["REPO", "SIX_MINUTES_S", "main", "parser", "refusal", "run_check"]

REPO = Path(__file__).resolve().parents[2]
_STARTED = time.monotonic()  # gpu-check's clock starts when its command does (torch's import counts)
SIX_MINUTES_S = 360.0


def parser() -> argparse.ArgumentParser:
    """The command's arguments (``--allow-cpu`` is for the CPU test suite and is not listed in --help)."""
    p = argparse.ArgumentParser(
        prog="labkit gpu-check",
        description="Run the lab's GPU paths (doctor, benchmarks, notebooks 00 01 02 04 11, the nccl cells) in fast mode on cuda, "
        "each step capped, and write one JSON + Markdown report. Installs and downloads nothing.",
    )
    p.add_argument("--out", type=Path, help="folder for the report (created if absent)")
    p.add_argument("--needs", action="store_true", help="print the extra wheels it uses (name==version per line) and exit")
    p.add_argument("--list", action="store_true", help="print the steps with their time budgets and exit")
    p.add_argument("--only", default="", help="comma-separated step names to run (the others are reported as skipped)")
    p.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--budget-scale", type=float, default=1.0, help=argparse.SUPPRESS)  # rehearsals on a slower CPU box
    return p


def refusal() -> str | None:
    """Why gpu-check will not run here (one line), or None when torch sees a CUDA GPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return None
    return f"gpu-check: no CUDA GPU here (torch {torch.__version__} sees none); run it on a GPU machine (README: Running on a GPU)"


def _command_line() -> str:
    """How gpu-check was started, as a reader would type it."""
    first = Path(sys.argv[0])
    head = ["python", "-m", "labkit.gpu_check"] if first.name == "__main__.py" else [first.name]
    return shlex.join([*head, *sys.argv[1:]])


def _say(text: str) -> None:
    print(text, flush=True)


def _wheel_state() -> dict[str, Any]:
    needed = sorted({m for m in (*st.NOTEBOOK_MODULES, "ipywidgets", "pydantic")})
    return {"needed": wheels.needs(), "missing": wheels.missing(needed), "unmet": wheels.unmet()}


def run_check(out_dir: Path, only: Sequence[str] = (), allow_cpu: bool = False, repo: Path = REPO, command: str = "", budget_scale: float = 1.0, t0: float | None = None) -> dict[str, Any]:
    """Run every step (capped), write ``<stem>.json``, ``.md``, ``.log`` and ``-notebooks.zip`` to ``out_dir``; return the report.

    ``budget_scale`` stretches every budget and the total (a rehearsal on a slower machine); the
    report then says so, and its 6-minute verdict is judged against the stretched total.
    """
    from labkit.measure import verdicts

    t0 = time.monotonic() if t0 is None else t0
    started = rep.now_iso()
    machine = rep.machine()
    device = "cuda" if machine["gpu_count"] else "cpu"
    planned = [(dataclasses.replace(s, budget_s=s.budget_s * budget_scale), r) for s, r in st.plan(st.STEPS, machine["gpu_count"], repo / "notebooks", only)]
    extra = sum(s.budget_s for s, reason in planned if s.gpus >= 2 and reason is None)  # the multi-GPU step, on >= 2 GPUs
    total = st.TOTAL_BUDGET_S * budget_scale + extra
    deadline = t0 + total
    six_minutes = SIX_MINUTES_S * budget_scale + extra
    _say(f"gpu-check on {', '.join(g['name'] for g in machine['gpus']) or 'the CPU (--allow-cpu)'}: {len(planned)} steps, {total:.0f} s budget")
    outcomes: list[st.Outcome] = []
    executed: dict[str, Path] = {}
    logs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="labkit-gpu-check-") as tmp:
        work = Path(tmp)
        for i, (step, reason) in enumerate(planned, 1):
            cap = st.cap_for(planned, i - 1, deadline - time.monotonic())
            if reason is None and cap < st.MIN_STEP_S:
                reason = f"no time left: {cap:.0f} s of the {total:.0f} s budget remain for it"
            if reason is not None:
                outcome = st.Outcome(step.name, "skipped", reason, step.what, float(step.budget_s))
            else:
                outcome = st.run_step(step, cap, repo, work, device, executed)
                logs.append(f"===== {step.name}: {' '.join(outcome.command)}\n{(work / f'{step.name}.log').read_text(errors='replace')}")
            outcomes.append(outcome)
            took = f" in {outcome.elapsed_s:.0f} s (budget {step.budget_s:.0f} s, cap {outcome.cap_s:.0f} s)" if outcome.status != "skipped" else ""
            _say(f"[{i:>2}/{len(planned)}] {step.name}: {outcome.status}{took}{': ' + outcome.reason if outcome.reason else ''}")
        elapsed = time.monotonic() - t0
        step_dicts = [o.to_dict() for o in outcomes]
        budget = verdicts.check("the whole check finished inside 6 minutes" if budget_scale == 1 else f"the whole check finished inside {budget_scale:g} × 6 minutes (a rehearsal)", elapsed, "<=", six_minutes, unit=" s", digits=0,
                                cause="a step ran long: see the steps table", show=False)
        report: dict[str, Any] = {
            "schema": rep.SCHEMA,
            "started": started,
            "elapsed_s": round(elapsed, 1),
            "budget_s": float(six_minutes),
            "budget_scale": budget_scale,
            "budget_line": str(budget),
            "command": command or _command_line(),
            "device": device,
            "allow_cpu": allow_cpu,
            "machine": machine,
            "wheels": _wheel_state(),
            "steps": step_dicts,
            "summary": rep.summary(step_dicts),
        }
        js, md = rep.write(report, out_dir)
        stem = rep.file_stem(report)
        (out_dir / f"{stem}.log").write_text("\n".join(logs), encoding="utf-8")
        if executed:
            with zipfile.ZipFile(out_dir / f"{stem}-notebooks.zip", "w", zipfile.ZIP_DEFLATED) as z:
                for path in executed.values():
                    if path.exists():
                        z.write(path, path.name)
    _say(report["budget_line"])
    s = report["summary"]
    _say(f"{s['passed']} passed, {s['missed']} missed a target, {s['failed']} failed, {s['skipped']} skipped; report: {js} and {md.name}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, refuse without CUDA (one line, exit 2), run, and exit 1 if any step failed."""
    args = parser().parse_args(argv)
    if args.needs:
        try:
            print("\n".join(wheels.needs()), flush=True)
        except BrokenPipeError:  # `--needs | head`: the reader has what it wanted
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- replaces the closed pipe for the rest of the run
        return 0
    if args.list:
        for s in st.STEPS:
            print(f"{s.name:<20} {s.budget_s:>4.0f} s  {s.what}")
        one_gpu = sum(s.budget_s for s in st.STEPS if s.gpus < 2)
        print(f"{'total':<20} {st.TOTAL_BUDGET_S:>4.0f} s  ({one_gpu:.0f} s of steps on one GPU + {st.STARTUP_S:.0f} s start-up; the multi-gpu step adds its budget on >= 2 GPUs)")
        return 0
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - {s.name for s in st.STEPS})
    if unknown:
        print(f"gpu-check: unknown step(s) {', '.join(unknown)}; --list shows them", file=sys.stderr)
        return 2
    if args.out is None:
        print("gpu-check: give --out DIR (where the report goes), or --needs / --list", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"gpu-check: --out {args.out} is a file, not a folder", file=sys.stderr)
        return 2
    why = None if args.allow_cpu else refusal()
    if why:
        print(why, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated gpu-check stops its step too
    if args.budget_scale <= 0:
        print("gpu-check: --budget-scale must be positive", file=sys.stderr)
        return 2
    report = run_check(args.out, only, args.allow_cpu, budget_scale=args.budget_scale, t0=_STARTED)
    return 1 if report["summary"]["failed"] else 0
