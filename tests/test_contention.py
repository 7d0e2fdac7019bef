"""A notebook run while another program keeps a core busy: the probe says so, and no ✅ lies.

The cells of notebook 00 that measure the machine (parameters, setup with the contention probe,
the interleaved peak and its scaling verdict, the probe's closing line) run in a kernel while a
busy-loop process competes for the CPU. The run must print a ⚠️ line naming the probe's cause,
and every ✅ line must satisfy its own printed condition.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "00_setup_and_baselines.ipynb"
# Cells kept, by what their source contains: the short, self-contained measuring part of 00.
KEEP = ("config.pick(", "contention = probe.start()", "peaks = baseline.peak(", "give at least 3/4 of the ideal", "contention.finish()")
TICK = re.compile(r"✅ .*? — measured (-?[\d,.]+)\S*.*? \(expected (≥|≤|>|<|=) (-?[\d,.]+)")
BETWEEN = re.compile(r"✅ .*? — measured (-?[\d,.]+)\S*.*? \(expected between (-?[\d,.]+)\S* and (-?[\d,.]+)")
PROBE_CAUSES = ("other programs", "slowed down")


def _short_notebook() -> object:
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = [c for c in nb.cells if c.cell_type == "code" and any(k in c.source for k in KEEP)]
    nb.cells = [c for c in nb.cells if "process.assert_nothing_left" not in c.source] + [
        nbformat.v4.new_code_cell("print(contention.finish().line())"),
    ]
    assert len(nb.cells) >= 5, "notebook 00 no longer has the cells this test runs"
    return nb


def _printed_lines(nb: object) -> list[str]:
    lines: list[str] = []
    for cell in nb.cells:  # type: ignore[attr-defined]
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{out.get('ename')}: {out.get('evalue')}"
            if out.output_type == "stream":
                lines += out.text.splitlines()
    return lines


def test_a_busy_core_is_named_and_no_tick_contradicts_its_numbers(tmp_path: Path) -> None:
    nbclient = pytest.importorskip("nbclient")
    nb = _short_notebook()
    env = {**os.environ, "LABKIT_FAST": "1"}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute(env=env)  # the kernel's environment: fast mode, whatever the caller set
    finally:
        hog.kill()
        hog.wait(timeout=10)
    lines = _printed_lines(nb)
    warned = [line for line in lines if line.startswith("⚠️") and any(c in line for c in PROBE_CAUSES)]
    assert warned, "no ⚠️ line named the probe's cause while a CPU hog ran:\n" + "\n".join(lines)
    for line in lines:
        if not line.startswith("✅") or "measured" not in line or "(expected" not in line:
            continue
        if between := BETWEEN.search(line):
            value, low, high = (float(between[i].replace(",", "")) for i in (1, 2, 3))
            assert low <= value <= high, f"a ✅ whose printed numbers violate its printed range: {line}"
            continue
        m = TICK.search(line)
        assert m, f"a ✅ line that does not follow the verdict format: {line}"
        value, op, bound = float(m[1].replace(",", "")), m[2], float(m[3].replace(",", ""))
        holds = {"≥": value >= bound, "≤": value <= bound, ">": value > bound, "<": value < bound, "=": value == bound}[op]
        assert holds, f"a ✅ whose printed numbers violate its printed condition: {line}"
