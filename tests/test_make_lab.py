"""The README's first command: `make lab` opens a lab that answers at the URL it prints, then stops clean.

Run as root (CI, a container), it must pass --allow-root, which Jupyter needs there; as a user it must
not. The second run is fast: with the stamp fresh, `make lab` runs no pip at all.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import need

from labkit.runtime import process

ROOT = Path(__file__).parent.parent
VENV = Path(sys.prefix)
URL = re.compile(r"http://127\.0\.0\.1:\d+/lab\?token=[0-9a-f]+")
START_TIMEOUT_S = 120

pytestmark = pytest.mark.service


def _make(*args: str) -> list[str]:
    return ["make", "-C", str(ROOT), f"VENV={VENV}", *args]


def _stamp_is_fresh() -> bool:
    return subprocess.run(_make("-q", f"{VENV}/.labkit-installed"), capture_output=True, timeout=60).returncode == 0


def test_second_run_installs_nothing_and_root_gets_allow_root() -> None:
    need(shutil.which("make") is not None and _stamp_is_fresh(), "make is missing or .venv is not set up (run `make venv`)")
    dry = subprocess.run(_make("-n", "lab"), capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "pip" not in dry.stdout, dry.stdout  # the stamp is fresh: straight to Jupyter
    assert ("--allow-root" in dry.stdout) == (os.geteuid() == 0), dry.stdout


def test_make_lab_prints_a_url_that_answers_and_stops_clean() -> None:
    need(shutil.which("make") is not None and _stamp_is_fresh(), "make is missing or .venv is not set up (run `make venv`)")
    port = process.free_port()
    lab = subprocess.Popen(_make("lab", f"LAB_PORT={port}"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        seen, url, deadline = [], None, time.monotonic() + START_TIMEOUT_S
        while url is None and time.monotonic() < deadline:
            line = lab.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            seen.append(line)
            match = URL.search(line)
            url = match.group(0) if match else None
        assert url, "no http://127.0.0.1:PORT/lab?token=... line:\n" + "".join(seen[-30:])
        assert f":{port}/" in url
        tree = [psutil.Process(lab.pid), *psutil.Process(lab.pid).children(recursive=True)]
        resp = httpx.get(url, timeout=30)
        assert resp.status_code == 200 and "JupyterLab" in resp.text, resp.status_code
        assert httpx.get(url.split("?")[0], timeout=30, follow_redirects=False).status_code in (302, 403), "without the token the lab must not open"
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        try:
            lab.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait(timeout=10)
        lab.stdout.close()  # type: ignore[union-attr]
    _, alive = psutil.wait_procs(tree, timeout=15)
    assert not alive, f"still running after make lab was stopped: {alive}"
