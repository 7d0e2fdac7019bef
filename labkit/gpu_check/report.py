"""The gpu-check report: the machine (GPU name and memory, driver, torch and CUDA), every step, every figure.

One JSON file (``SCHEMA`` names its version) and one Markdown file with the same content, named
``gpu-check-<date>-<gpu>.json`` / ``.md`` so a report can be committed as it is under
``benchmarks/results/``. ``validate()`` checks a report dict against the schema's required keys.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA", "STATUSES", "file_stem", "machine", "now_iso", "render_markdown", "summary", "validate", "write"]

SCHEMA = "labkit.gpu-check/1"
STATUSES = ("passed", "missed", "failed", "skipped")
REQUIRED = {
    "schema": str,
    "started": str,
    "elapsed_s": float,
    "budget_s": float,
    "allow_cpu": bool,
    "machine": dict,
    "wheels": dict,
    "steps": list,
    "summary": dict,
}
STEP_REQUIRED: dict[str, type | tuple[type, ...]] = {"name": str, "status": str, "reason": (str, type(None)), "budget_s": float, "elapsed_s": float, "figures": list, "lines": list}


def _driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML here: the driver is then unknown, not an error
        return None


def machine() -> dict[str, Any]:
    """What gpu-check ran on: GPUs (name, memory, capability, SMs), driver, torch, CUDA, cuDNN, Python, cores."""
    import torch

    from labkit.runtime import hardware

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpus": gpus,
        "gpu_count": len(gpus),
        "driver": _driver() if gpus else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "bf16": bool(gpus) and torch.cuda.is_bf16_supported(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(terse=True),
        "cores": hardware.cpu_count(),
    }


def file_stem(report: dict[str, Any]) -> str:
    """``gpu-check-2026-11-20-nvidia-h200`` (``cpu`` when no GPU took part)."""
    gpus = report["machine"]["gpus"]
    name = gpus[0]["name"] if gpus else "cpu"
    if len(gpus) > 1:
        name = f"{len(gpus)}x {name}"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"gpu-check-{report['started'][:10]}-{slug}"


def summary(steps: list[dict[str, Any]]) -> dict[str, int]:
    """How many steps ended in each status."""
    return {s: sum(1 for st in steps if st["status"] == s) for s in STATUSES}


def validate(report: dict[str, Any]) -> list[str]:
    """What is wrong with ``report`` against the schema (empty when it conforms)."""
    problems = [f"{k}: expected {t.__name__}" for k, t in REQUIRED.items() if not isinstance(report.get(k), t)]
    if report.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}")
    for i, step in enumerate(report.get("steps") or []):
        problems += [f"steps[{i}].{k}: wrong or missing" for k, t in STEP_REQUIRED.items() if not isinstance(step.get(k), t)]
        if step.get("status") not in STATUSES:
            problems.append(f"steps[{i}].status: {step.get('status')!r} is not one of {', '.join(STATUSES)}")
        if step.get("status") in ("skipped", "failed", "missed") and not step.get("reason"):
            problems.append(f"steps[{i}] ({step.get('name')}): {step.get('status')} without a reason")
    return problems


def _machine_rows(m: dict[str, Any]) -> list[str]:
    gpus = m["gpus"]
    gpu = "; ".join(f"{g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}, {g['multiprocessors']} SMs" for g in gpus) or "none (a CPU run with --allow-cpu: not a GPU report)"
    return [
        "| | |",
        "|---|---|",
        f"| GPU | {gpu} |",
        f"| driver | {m['driver'] or 'n/a'} |",
        f"| torch | {m['torch']} (CUDA {m['cuda'] or 'none'}, cuDNN {m['cudnn'] or 'none'}, bf16 {'yes' if m['bf16'] else 'no'}) |",
        f"| Python | {m['python']} ({m['executable']}) |",
        f"| CPU | {m['cores']} cores, {m['platform']} |",
    ]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine, verdict on the time budget, steps table, figures, notebook lines."""
    m = report["machine"]
    title = m["gpus"][0]["name"] if m["gpus"] else "CPU only"
    lines = [f"# labkit gpu-check — {title}, {report['started'][:10]}", ""]
    lines += [f"Command: `{report['command']}` · fast mode · device `{report['device']}`", ""]
    lines += [*_machine_rows(m), "", report["budget_line"], ""]
    if report.get("budget_scale", 1.0) != 1.0:
        lines += [f"A rehearsal: every budget stretched {report['budget_scale']:g}×.", ""]
    s = report["summary"]
    lines += [f"**{s['passed']} passed, {s['missed']} missed a target, {s['failed']} failed, {s['skipped']} skipped.**", ""]
    lines += ["## Steps", "", "| step | status | seconds (budget) | what | reason |", "|---|---|---|---|---|"]
    for st in report["steps"]:
        over = " ⚠️ over budget" if st["status"] != "skipped" and st["elapsed_s"] > st["budget_s"] else ""
        secs = f"{st['elapsed_s']:.0f} ({st['budget_s']:.0f}){over}" if st["status"] != "skipped" else f"– ({st['budget_s']:.0f})"
        reason = (st["reason"] or "").replace("|", "\\|")
        lines.append(f"| {st['name']} | {st['status']} | {secs} | {st['what']} | {reason} |")
    w = report["wheels"]
    lines += ["", "## Wheels", "", f"{len(w['needed'])} pinned extra wheels (`--needs`); missing here: {', '.join(w['missing']) or 'none'}."]
    if w["unmet"]:
        lines += ["Unmet requirements:", *[f"- {u}" for u in w["unmet"]]]
    for st in report["steps"]:
        if st["figures"]:
            lines += ["", f"## {st['name']} figures", "", *[f"- {f['line']} · {f.get('device') or ''}" for f in st["figures"]]]
    for st in report["steps"]:
        if st["figures"] or not st["lines"]:
            continue
        lines += ["", f"## {st['name']} lines", "", *[f"- {ln}" for ln in st["lines"]]]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = file_stem(report)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    js.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    md.write_text(render_markdown(report), encoding="utf-8")
    return js, md


def now_iso() -> str:
    """The local time now, ISO 8601 with its UTC offset (the report's ``started``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
