from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import bench
from labkit.errors import BadInput


def _labkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True, timeout=300)


def test_doctor_reports_machine_and_components() -> None:
    out = _labkit("doctor", "--no-measure")
    assert out.returncode == 0, out.stderr
    for word in ("python", "torch", "device", "cores", "Redis", "RabbitMQ", "Java", "Chromium", "kubectl", "TensorFlow"):
        assert word in out.stdout
    missing = [line for line in out.stdout.splitlines() if line.startswith("-- ")]
    assert out.stdout.count("get it:") == len(missing), "every missing component says how to get it"


def test_bench_unknown_name_is_one_clear_line() -> None:
    out = _labkit("bench", "nope")
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: unknown benchmark 'nope'") and out.stderr.count("\n") == 1


def test_target_lines_follow_the_format() -> None:
    t = bench.Target("speedup", 1.93, "×", ">=", 1.85)
    assert t.line() == "speedup: measured 1.93 ×, target >= 1.85 × — met"
    assert bench.Target("p50", 7.0, "ms", "<=", 5.0).line() == "p50: measured 7 ms, target <= 5 ms — MISSED"
    assert bench.Target("tasks/s", 1630.4, "1/s").line() == "tasks/s: measured 1630 1/s (reported)"
    with pytest.raises(BadInput):
        bench.Target("x", 1.0, "", "==", 1.0)


def test_bench_baseline_writes_json(tmp_path: Path) -> None:
    out_path = tmp_path / "b.json"
    out = _labkit("bench", "baseline", "--fast", "--json", str(out_path))
    assert out.returncode == 0, out.stderr
    assert "peak fp32 matmul, 1 thread: measured" in out.stdout
    data = json.loads(out_path.read_text())
    assert data["environment"]["torch"] and data["results"][0]["name"] == "baseline"
    figures = {t["name"]: t["value"] for t in data["results"][0]["targets"]}
    assert figures["digit CNN achieved / peak"] > 0


def test_services_list_runs() -> None:
    out = _labkit("services")
    assert out.returncode == 0


def test_every_registered_benchmark_name_is_documented_in_readme() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name, exists in bench.available().items():
        if exists:
            assert f"labkit bench {name}" in readme, f"README must document `labkit bench {name}`"
