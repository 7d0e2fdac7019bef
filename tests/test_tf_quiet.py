"""TensorFlow imported through labkit prints none of its start-up notes, and still shows real errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import need

from labkit.models import savedmodels

pytestmark = pytest.mark.unit

IMPORT_THEN_REPORT = """
import os, sys
from labkit.models import savedmodels
assert "tensorflow" not in sys.modules
tf = savedmodels.silence_tensorflow()
import keras  # what labkit's trainers import next: already quiet
print(os.environ["TF_CPP_MIN_LOG_LEVEL"], tf.get_logger().level)
"""


def test_importing_tensorflow_through_labkit_prints_nothing() -> None:
    need(importlib.util.find_spec("tensorflow") is not None, "tensorflow is not installed (pip install -e '.[tf]')")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", IMPORT_THEN_REPORT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", f"TensorFlow's start-up lines got through:\n{done.stderr}"
    assert done.stdout.split() == ["2", "30"], done.stdout  # C++ INFO and WARNING off; Python logger at WARNING


def test_only_info_start_up_lines_are_dropped() -> None:
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796238925.521852   13285 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results.",
        "2024-01-11 05:40:05.061907: I tensorflow/core/platform/cpu_feature_guard.cc:182] This TensorFlow binary is optimized to use available CPU instructions.",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    ]
    kept = [
        "E0000 00:00:1758131045.203198 3722035 cuda_dnn.cc:8579] Unable to register cuDNN factory",
        "W0000 00:00:1758131045.228000 3722035 computation_placer.cc:177] computation placer already registered.",
        "2025-09-17 14:44:05.176998: E external/local_xla/xla/stream_executor/cuda/cuda_fft.cc:467] Unable to register cuFFT factory",
        "Traceback (most recent call last):",
        "/x/keras.py:1: UserWarning: something real",
    ]
    text = "".join(line + "\n" for pair in zip(noise, kept) for line in pair) + kept[-1] + "\n"
    assert savedmodels.startup_noise_removed(text) == "".join(line + "\n" for line in kept)


def test_what_else_is_written_meanwhile_comes_back(capfd: pytest.CaptureFixture[str]) -> None:
    """A real error the C++ side prints during the import reaches stderr after it; the notes do not."""
    with savedmodels._startup_noise_filtered():
        os.write(2, b"I0000 00:00:1.0   1 port.cc:153] oneDNN custom operations are on.\nE0000 00:00:1.1   1 x.cc:9] a real error\n")
        print("a Python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert "a real error" in err and "a Python warning" in err and "oneDNN" not in err, err
