"""``labkit gpu-check`` on the CPU: arguments, --needs, the plan's skips, capped steps, notebook steps, the report.

The GPU run itself needs a GPU machine (README, "Running on a GPU"); everything around it runs here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import torch

from labkit import bench
from labkit.gpu_check import check, report, steps, wheels

REPO = Path(__file__).resolve().parent.parent
NO_CUDA = not torch.cuda.is_available()


def _gpu_check(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labkit.gpu_check", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


# ---------------------------------------------------------------- wheels


def test_needs_prints_the_pinned_closure_one_per_line() -> None:
    out = _gpu_check("--needs")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines == wheels.needs() and len(lines) == len(wheels.WHEELS)
    assert all(re.fullmatch(r"[a-z0-9-]+==[0-9][\w.]*", ln) for ln in lines), lines
    names = {ln.split("==")[0] for ln in lines}
    assert {"nbclient", "nbformat", "ipykernel", "ipywidgets", "pydantic", "pyzmq", "traitlets"} <= names
    assert not names & wheels.PREINSTALLED, "a wheel the GPU machine already has is not brought along"


def test_pinned_wheels_are_closed_under_their_requirements_for_cp312() -> None:
    # every requirement (markers evaluated for CPython 3.12 on Linux x86_64) is pinned or preinstalled
    assert wheels.closure_gaps() == []
    assert wheels.unmet() == [], "the lab's venv satisfies every pinned wheel's requirements"


def test_missing_modules_name_the_wheel_that_brings_them() -> None:
    assert wheels.missing(["nbclient", "json", "zmq", "no_such_mod"], have=lambda m: m == "json") == [
        "nbclient (wheel nbclient==0.11.0)",
        "zmq (wheel pyzmq==27.3.0)",
        "no_such_mod",
    ]


# ---------------------------------------------------------------- arguments and refusal


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA: gpu-check runs instead of refusing")
def test_refuses_without_cuda_in_one_line(tmp_path: Path) -> None:
    out = _gpu_check("--out", str(tmp_path / "r"))
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("gpu-check: no CUDA GPU here") and out.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "f"
    afile.write_text("")
    for argv, start in [
        (["--only", "doctor,nope", "--out", str(tmp_path)], "gpu-check: unknown step(s) nope"),
        ([], "gpu-check: give --out DIR"),
        (["--out", str(afile)], f"gpu-check: --out {afile} is a file"),
    ]:
        assert check.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(start) and err.count("\n") == 1, err


def test_list_shows_every_step_with_its_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main(["--list"]) == 0
    out = capsys.readouterr().out
    for s in steps.STEPS:
        assert re.search(rf"^{re.escape(s.name)}\s+{s.budget_s:.0f} s", out, re.M)


def test_one_gpu_budgets_fit_inside_six_minutes() -> None:
    one_gpu = [s for s in steps.STEPS if s.gpus < 2]
    assert all(s.budget_s > 0 and s.what for s in steps.STEPS)
    assert sum(s.budget_s for s in one_gpu) + steps.STARTUP_S <= steps.TOTAL_BUDGET_S < check.SIX_MINUTES_S
    names = [s.name for s in steps.STEPS]
    assert len(set(names)) == len(names)
    assert {"doctor", "bench-baseline", "bench-pipeline", "bench-ensemble", "bench-data-parallel", "bench-sharding", "nb00", "nb01", "nb02", "nb04", "nb11", "multi-gpu"} == set(names)


def test_a_step_may_use_what_earlier_steps_left_but_never_what_later_ones_need() -> None:
    a, b, c = (steps.Step(n, "command", budget, n) for n, budget in (("a", 10), ("b", 50), ("c", 20)))
    planned = [(a, None), (b, "skipped for a reason"), (c, None)]
    assert steps.cap_for(planned, 0, 100) == 80  # b is skipped: its 50 s go to a, c keeps its 20
    assert steps.cap_for(planned, 2, 25) == 25


# ---------------------------------------------------------------- the plan


def _notebooks(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for n in names:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import ipywidgets as widgets\nfrom labkit import config\nimport os")])
        nbformat.write(nb, folder / n)
    return folder


def test_plan_skips_what_cannot_run_and_says_why(tmp_path: Path) -> None:
    folder = _notebooks(tmp_path, "00_a.ipynb", "01_b.ipynb", "02_c.ipynb", "03_d.ipynb", "04_e.ipynb")
    reasons = {s.name: r for s, r in steps.plan(steps.STEPS, 1, folder, have=lambda m: m != "nbclient")}
    assert all(reasons[n] is None for n in ("doctor", "bench-baseline", "bench-pipeline", "bench-ensemble", "bench-data-parallel", "bench-sharding"))
    assert reasons["nb00"] == reasons["nb04"] == "missing nbclient (wheel nbclient==0.11.0)"
    assert reasons["nb11"] == "notebooks/11_*.ipynb is not in this checkout"
    assert reasons["multi-gpu"] == "1 GPU: the 2-rank nccl cells need 2"
    # a module the notebook itself imports (ipywidgets) counts too; labkit and the standard library do not
    reasons = {s.name: r for s, r in steps.plan(steps.STEPS, 0, folder, have=lambda m: m != "ipywidgets")}
    assert reasons["nb02"] == "missing ipywidgets (wheel ipywidgets==8.1.9)"
    assert reasons["multi-gpu"] == "0 GPUs: the 2-rank nccl cells need 2"
    # the doctor and the benches go through the labkit command, which needs typer (and what it imports)
    reasons = {s.name: r for s, r in steps.plan(steps.STEPS, 1, folder, have=lambda m: m != "typer")}
    assert reasons["doctor"] == reasons["bench-sharding"] == "missing typer (the labkit command needs them)"
    assert reasons["nb00"] is None


def test_plan_runs_the_nccl_cells_on_two_gpus_and_honours_only(tmp_path: Path) -> None:
    folder = _notebooks(tmp_path, "03_d.ipynb", "04_e.ipynb")
    reasons = {s.name: r for s, r in steps.plan(steps.STEPS, 2, folder, have=lambda m: True)}
    assert reasons["multi-gpu"] is None and reasons["nb04"] is None
    reasons = {s.name: r for s, r in steps.plan(steps.STEPS, 2, folder, only=["doctor"], have=lambda m: True)}
    assert reasons["doctor"] is None and reasons["multi-gpu"] == "not selected (--only doctor)"


def test_the_real_notebooks_import_only_what_the_wheels_and_the_machine_provide() -> None:
    for path in sorted((REPO / "notebooks").glob("0[0-4]_*.ipynb")):
        for module in steps.notebook_imports(path):
            dist = wheels.MODULE_WHEEL.get(module, wheels.normalize(module))
            assert dist in wheels.WHEELS or dist in wheels.PREINSTALLED, f"{path.name} imports {module}: not on the GPU machine"


# ---------------------------------------------------------------- running steps


def test_a_step_at_its_cap_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    t0 = time.monotonic()
    rc, elapsed = steps.run_capped([sys.executable, "-c", script], 2.0, steps.step_env(REPO, "cpu"), REPO, tmp_path / "log")
    assert rc is None and 2.0 <= elapsed < 15 and time.monotonic() - t0 < 15
    child = int(pid_file.read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_step_env_sets_fast_mode_device_and_this_checkout() -> None:
    env = steps.step_env(REPO, "cuda")
    assert env["LABKIT_FAST"] == "1" and env["LABKIT_DEVICE"] == "cuda" and env["TQDM_DISABLE"] == "1"
    assert env["PYTHONPATH"].split(":")[0] == str(REPO)


def test_a_bench_step_that_errors_fails_with_its_one_line_error(tmp_path: Path) -> None:
    step = steps.Step("bench-nope", "bench", 60, "a benchmark that does not exist", ("labkit", "bench", "nope", "--fast"))
    out = steps.run_step(step, 60, REPO, tmp_path, "cpu", {})
    assert out.status == "failed" and out.figures == []
    assert out.reason == "exit code 2: error: unknown benchmark 'nope'; choose from " + ", ".join(bench.BENCHMARKS) + " or all", out.reason
    assert out.command[1:5] == ["-m", "labkit", "bench", "nope"] and out.command[-2] == "--json"


def test_notebook_step_keeps_verdict_and_skip_lines_and_names_the_failing_cell(tmp_path: Path) -> None:
    folder = tmp_path / "notebooks"
    folder.mkdir()
    cells = [
        'print("✅ two is more than one — measured 2 (expected ≥ 1)")',
        'from labkit.runtime import hardware\nhardware.require(gpus=64)',
        "1 / 0",
        'print("never runs")',
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells]), folder / "99_demo.ipynb")
    step = steps.Step("nb99", "notebook", 60, "a demo notebook", notebook="99_*.ipynb")
    work = tmp_path / "work"
    work.mkdir()
    executed: dict[str, Path] = {}
    out = steps.run_step(step, 60, tmp_path, work, "cpu", executed)
    assert out.status == "failed" and out.reason is not None
    assert out.reason.startswith("exit code 1: cell 2: ZeroDivisionError"), out.reason
    assert out.lines[0] == "cell 0: ✅ two is more than one — measured 2 (expected ≥ 1)"
    assert out.lines[1].startswith("cell 1: Skipped: needs 64 CUDA GPU(s)")
    assert executed["nb99"].exists() and steps.gpu_cells_skipped(executed["nb99"]) == [out.lines[1]]


# ---------------------------------------------------------------- the report


def test_cpu_run_writes_a_report_that_follows_the_schema(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    run = _gpu_check("--allow-cpu", "--only", "doctor", "--out", str(out_dir), timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    [js] = out_dir.glob("gpu-check-*-cpu.json")
    data = json.loads(js.read_text())
    assert report.validate(data) == []
    assert data["allow_cpu"] is True and data["device"] == "cpu" and data["machine"]["gpus"] == []
    by_name = {s["name"]: s for s in data["steps"]}
    assert [s["name"] for s in data["steps"]] == [s.name for s in steps.STEPS]
    doctor = by_name["doctor"]
    assert doctor["status"] == "passed" and doctor["elapsed_s"] > 0 and any("labkit doctor" in ln for ln in doctor["lines"])
    assert all(s["status"] == "skipped" and s["reason"] == "not selected (--only doctor)" for n, s in by_name.items() if n != "doctor")
    assert data["summary"] == {"passed": 1, "missed": 0, "failed": 0, "skipped": len(steps.STEPS) - 1}
    assert data["budget_line"].startswith("✅ the whole check finished inside 6 minutes — measured")
    md = js.with_suffix(".md").read_text()
    assert md.startswith("# labkit gpu-check — CPU only, ") and "| doctor | passed |" in md
    assert "not a GPU report" in md and data["budget_line"] in md
    assert "===== doctor:" in js.with_suffix(".log").read_text()
    assert "[ 1/12] doctor: passed" in run.stdout


def test_validate_flags_what_the_schema_forbids() -> None:
    bad = {"schema": "other", "steps": [{"name": "x", "status": "skipped", "reason": None, "budget_s": 1.0, "elapsed_s": 0.0, "figures": [], "lines": []}]}
    problems = report.validate(bad)
    assert "schema: expected 'labkit.gpu-check/1'" in problems
    assert "steps[0] (x): skipped without a reason" in problems
    assert any(p.startswith("machine:") for p in problems)


def test_file_stem_names_the_date_and_the_gpu() -> None:
    gpu = {"name": "NVIDIA H200", "memory_gib": 139.8, "capability": "9.0", "multiprocessors": 132}
    assert report.file_stem({"started": "2026-11-20T10:00:00+0000", "machine": {"gpus": [gpu]}}) == "gpu-check-2026-11-20-nvidia-h200"
    assert report.file_stem({"started": "2026-11-20T10:00:00+0000", "machine": {"gpus": [gpu, gpu]}}) == "gpu-check-2026-11-20-2x-nvidia-h200"


# ---------------------------------------------------------------- device-agnostic pieces of the GPU path


def test_batch_sweep_runs_in_the_models_dtype() -> None:
    from labkit.bench import baseline
    from labkit.models import digit_nets

    model = digit_nets.build(digit_nets.TrainConfig(arch="cnn")).eval()
    flops = digit_nets.flops_per_sample(model)
    half = digit_nets.build(digit_nets.TrainConfig(arch="cnn")).to(torch.bfloat16).eval()
    assert digit_nets.flops_per_sample(half) == flops > 0
    [point] = baseline.batch_sweep(half, [16], repeats=2, threads=1, progress=False)
    assert point.batch_size == 16 and point.gflops > 0


def test_readme_and_docstring_give_the_same_one_line_device_command() -> None:
    import labkit.gpu_check as gc

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Running on a GPU") :]
    command = re.search(r"```\n(python3 -m pip install [^\n]+)\n```", section)
    assert command is not None, "the README's 'Running on a GPU' section shows the device command"
    assert command.group(1) in (gc.__doc__ or "")
    line = command.group(1)
    assert "--no-index" in line and "--target /tmp/site .gpu-wheels/*.whl" in line and "python3 -m labkit.gpu_check --out" in line


def test_make_gpu_wheels_downloads_cp312_manylinux_binaries_only() -> None:
    out = subprocess.run(["make", "-n", "gpu-wheels"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert out.returncode == 0, out.stderr
    for arg in ("--python-version 3.12", "--only-binary=:all:", "--no-deps", "--platform manylinux2014_x86_64", "-m labkit.gpu_check --needs", "-d \".gpu-wheels\""):
        assert arg in out.stdout, arg
    assert ".gpu-wheels/" in (REPO / ".gitignore").read_text().splitlines()


def test_the_gpu_figures_of_bench_baseline_run_end_to_end_on_a_stand_in_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # the code path of `labkit bench baseline` on a GPU, with the CPU standing in (its peak faked:
    # measuring a GPU's needs one); predictions in float32 must equal the CPU model's exactly here
    from labkit.bench import baseline
    from labkit.models import digit_nets
    from labkit.runtime import hardware

    monkeypatch.setattr(hardware, "gpu_peak_tflops", lambda device, repeats: {"float32": 1.0, "tf32": 2.0, "bfloat16": 4.0})
    model = digit_nets.trained(digit_nets.TrainConfig(), progress=False)
    targets, figures = baseline.gpu_figures(model, fast=True, device="cpu", batch_sizes=(64,))
    by_name = {t.name: t for t in targets}
    assert {"peak float32 matmul, cpu", "peak tf32 matmul, cpu", "peak bfloat16 matmul, cpu"} <= set(by_name)
    assert by_name["digit CNN on the GPU in float32: predictions equal to the CPU's"].value == 1.0
    assert by_name["digit CNN on the GPU in bfloat16: predictions equal to the CPU's"].met is True
    assert by_name["digit CNN achieved on cpu, bfloat16 (batch 64)"].value > 0
    assert [p["batch_size"] for p in figures["gpu_sweep_float32"]] == [64]


def test_the_device_replica_of_bench_data_parallel_matches_the_reference_on_a_stand_in_device() -> None:
    from labkit.bench import data_parallel as bench_dp
    from labkit.patterns import data_parallel as dp

    n_items = 2000
    targets, figures = bench_dp.device_replica(n_items, dp.reference_logits(n_items), cpu_s=1.0, repeats=1, device="cpu")
    assert targets[0].name == "1 replica on cpu: max |logits - CPU replica|" and targets[0].met is True
    assert len(figures["gpu_replica_s"]) == 1


def test_labkit_gpu_check_is_the_same_command() -> None:
    out = subprocess.run([sys.executable, "-m", "labkit", "gpu-check", "--needs"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0 and out.stdout.splitlines() == wheels.needs()
