"""The linter and the type checker, run as part of the suite: a finding fails ``make test``.

ruff (rules and documented ignores in pyproject.toml ``[tool.ruff]``) over labkit and the tests;
mypy, strict, over labkit (``[tool.mypy]``: the three relaxed checks and the unfollowed frameworks
are listed there with the reason). mypy keeps its cache in .cache/mypy, so a warm run takes a
second or two; a cold one (a fresh clone) about 10 s of CPU.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need

ROOT = Path(__file__).parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.unit
def test_ruff_finds_nothing() -> None:
    need(importlib.util.find_spec("ruff") is not None, "ruff is not installed (pip install -e '.[test]')")
    done = _run("ruff", "check", "--no-cache", "labkit", "tests")
    assert done.returncode == 0, f"ruff found problems (fix them, or `ruff check --fix`):\n{done.stdout}{done.stderr}"


@pytest.mark.unit
def test_mypy_finds_nothing() -> None:
    need(importlib.util.find_spec("mypy") is not None, "mypy is not installed (pip install -e '.[test]')")
    done = _run("mypy", "--cache-dir", str(ROOT / ".cache" / "mypy"))
    assert done.returncode == 0, f"mypy found problems:\n{done.stdout}{done.stderr}"
