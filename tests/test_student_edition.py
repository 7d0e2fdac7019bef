"""The student edition runs top to bottom with "not done yet" feedback, and solutions filled back
in make every check pass again. Executed here for notebook 00 (the cheapest), both ways; the
student edition of every notebook is checked statically in test_exercises.py, and `make test`
executes every notebook's exercises unsolved, then solved (the paired edition, .cache/paired-edition/)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from labkit.exercises.student import BEGIN, END, STUB, make_student_edition

ROOT = Path(__file__).parent.parent
NOTEBOOK = "00_setup_and_baselines.ipynb"
TIMEOUT_S = 300
PASSED = re.compile(r"^✅ .*: correct\.", re.M)  # what labkit.exercises.verdict prints for a passed exercise

pytestmark = pytest.mark.notebook


def _solutions(source: str) -> list[list[str]]:
    blocks, current = [], None
    for line in source.splitlines():
        if line.strip().startswith(BEGIN):
            current = []
        elif line.strip().startswith(END):
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def fill_in(student: nbformat.NotebookNode, instructor: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Put the instructor's solution lines back where the student edition has stubs."""
    for s_cell, i_cell in zip(student.cells, instructor.cells):
        if s_cell.cell_type != "code" or STUB not in s_cell.source:
            continue
        blocks = iter(_solutions(i_cell.source))
        s_cell.source = "\n".join("\n".join(next(blocks)) if line.strip() == STUB else line for line in s_cell.source.splitlines())
    return student


def _run(nb: nbformat.NotebookNode, cwd: Path) -> str:
    NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"a cell raised: {out.get('ename')}: {out.get('evalue')}"
            texts.append(out.get("text", ""))
    return "".join(texts)


@pytest.fixture(scope="module")
def editions(tmp_path_factory: pytest.TempPathFactory) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode, Path]:
    out = tmp_path_factory.mktemp("student")
    make_student_edition(ROOT / "notebooks", out)
    student = nbformat.read(out / NOTEBOOK, as_version=4)
    instructor = nbformat.read(ROOT / "notebooks" / NOTEBOOK, as_version=4)
    return student, instructor, out


def test_student_edition_runs_and_says_not_done_yet(editions: tuple[nbformat.NotebookNode, nbformat.NotebookNode, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    student, instructor, out = editions
    monkeypatch.setenv("LABKIT_FAST", "1")
    n_exercises = sum(c.source.count(BEGIN) > 0 for c in instructor.cells if c.cell_type == "code")
    text = _run(nbformat.from_dict(student), out)
    assert text.count("not done yet") == n_exercises, text[-2000:]
    assert not PASSED.search(text)  # no exercise passed (the lesson's own ✅ verdicts are not exercises)


def test_filled_in_student_edition_passes_every_check(editions: tuple[nbformat.NotebookNode, nbformat.NotebookNode, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    student, instructor, out = editions
    monkeypatch.setenv("LABKIT_FAST", "1")
    filled = fill_in(nbformat.from_dict(student), instructor)
    assert STUB not in "\n".join(c.source for c in filled.cells)
    text = _run(filled, out)
    n_exercises = sum(c.source.count(BEGIN) > 0 for c in instructor.cells if c.cell_type == "code")
    assert len(PASSED.findall(text)) == n_exercises and "not done yet" not in text
