"""The shared pieces every module uses: die_with_parent, patch_environment, the clean-up check, show()."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import labkit
from labkit.errors import BadInput
from labkit.runtime import environ, process

_PARENT = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import time\\nfrom labkit.runtime.process import die_with_parent\\nassert die_with_parent()\\nprint('ready', flush=True)\\ntime.sleep(120)"], stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
os._exit(0)  # the parent dies without stopping its child
"""


@pytest.mark.unit
def test_a_child_that_asked_dies_with_its_parent() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    out = subprocess.run([sys.executable, "-c", _PARENT], capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 20
    while process.alive([pid]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process.alive([pid]), f"pid {pid} outlived its parent"
    assert process.DEATH_SIGNAL.name == "SIGTERM"


@pytest.mark.unit
def test_patch_environment_restores_set_and_unset_variables_also_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCH_TEST_SET", "before")
    monkeypatch.delenv("PATCH_TEST_UNSET", raising=False)
    with pytest.raises(RuntimeError), environ.patch_environment(PATCH_TEST_SET=1, PATCH_TEST_UNSET="x"):
        assert os.environ["PATCH_TEST_SET"] == "1" and os.environ["PATCH_TEST_UNSET"] == "x"
        raise RuntimeError("inside")
    assert os.environ["PATCH_TEST_SET"] == "before" and "PATCH_TEST_UNSET" not in os.environ


@pytest.mark.unit
def test_assert_nothing_left_names_what_still_runs(capsys: pytest.CaptureFixture[str]) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(AssertionError, match=f"still running after clean-up: pid {child.pid}"):
            process.assert_nothing_left(pids=[child.pid], quiet=True)
        with pytest.raises(AssertionError, match="ray leftover"):
            process.assert_nothing_left(extra=lambda: ["ray leftover"], quiet=True)
    finally:
        child.kill()
        child.wait()
    assert process.assert_nothing_left(pids=[child.pid]) == ["labkit's pid registry", "1 given process(es)"]
    assert capsys.readouterr().out.startswith("nothing left running:")


@pytest.mark.unit
def test_show_prints_regions_and_public_objects_and_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.measure import load
    from labkit.show import regions

    labkit.show("labkit.apps.gateway", "predict-route")
    out = capsys.readouterr().out
    assert out.startswith('@api.post("/predict")') and "# region" not in out and "/healthz" not in out
    labkit.show(load.closed_loop_threads)
    assert capsys.readouterr().out.startswith("def closed_loop_threads(")
    assert "predict-route" in regions("labkit.apps.gateway")
    with pytest.raises(BadInput, match="no region 'nope' in labkit.apps.gateway .its regions: predict-route"):
        labkit.show("labkit.apps.gateway", "nope")
    with pytest.raises(BadInput, match="private"):
        labkit.show(process._create_time)
    with pytest.raises(BadInput, match="no Python module"):
        labkit.show("labkit.no_such_module", "x")
    with pytest.raises(BadInput, match="name the region"):
        labkit.show("labkit.apps.gateway")
