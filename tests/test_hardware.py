from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from labkit.errors import BadInput, NeedsGPU
from labkit.runtime import hardware


def test_device_auto_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABKIT_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert hardware.device().type == expected
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    assert hardware.device() == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "gpu0"])
def test_unknown_device_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("LABKIT_DEVICE", name)
    with pytest.raises(BadInput) as err:
        hardware.device()
    assert "\n" not in str(err.value) and "auto, cpu, cuda" in str(err.value)


def test_gpu_requested_where_none_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    n = hardware.gpu_count()
    monkeypatch.setenv("LABKIT_DEVICE", f"cuda:{n}")
    with pytest.raises(NeedsGPU, match=f"has {n} CUDA GPU"):
        hardware.device()


def test_require_skips_cleanly_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    too_many = hardware.gpu_count() + 1
    assert hardware.require(gpus=0) is True
    assert hardware.require(gpus=too_many) is False
    assert f"needs {too_many} CUDA GPU(s)" in capsys.readouterr().out
    with pytest.raises(NeedsGPU):
        hardware.require(gpus=too_many, strict=True)
    assert hardware.missing(gpus=too_many) is not None


def test_threads_limited_restores() -> None:
    before = torch.get_num_threads()
    with hardware.threads_limited(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(BadInput):
        hardware.set_threads(0)


def test_peak_gflops_is_measured_per_thread_count() -> None:
    peaks = hardware.peak_gflops([1], size=128, repeats=2)
    assert list(peaks) == [1] and peaks[1] > 0.1


def test_import_labkit_is_cheap() -> None:
    code = "import sys, labkit; bad = [m for m in ('torch', 'ray', 'celery', 'tensorflow', 'matplotlib', 'httpx') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"import labkit pulled in heavy modules: {out}"


def test_describe_mentions_device_and_mode() -> None:
    line = hardware.describe()
    assert "device" in line and "mode" in line and "torch" in line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_keep_freed_memory_sets_glibc_and_checks_its_arguments() -> None:
    code = "from labkit.runtime import hardware; print(hardware.keep_freed_memory())"  # a child: the setting lasts for its life
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out == ["True"]
    with pytest.raises(BadInput, match="threshold_mb"):
        hardware.keep_freed_memory(threshold_mb=0)
    with pytest.raises(BadInput, match="keep_mb"):
        hardware.keep_freed_memory(threshold_mb=64, keep_mb=32)


def test_one_gpu_skip_names_what_the_cell_needs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(hardware, "gpu_count", lambda: 1)
    assert hardware.require(gpus=2) is False
    assert capsys.readouterr().out.strip() == (
        "Skipped: needs 2 CUDA GPU(s), this machine has 1. Run this notebook on a machine with 2 GPUs (one rank or replica per GPU) to see this part."
    )


def test_matmul_rate_and_pinning_off_the_gpu() -> None:
    assert hardware.matmul_gflops(1, size=64, repeats=2, device="cpu") > 0
    x = torch.zeros(4)
    if not torch.cuda.is_available():
        assert hardware.pinned(x) is x, "without a GPU there is nothing to pin for"
        with pytest.raises(NeedsGPU, match="gpu_peak_tflops needs a CUDA GPU"):
            hardware.gpu_peak_tflops()
    else:
        assert hardware.pinned(x).is_pinned()
