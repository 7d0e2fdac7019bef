"""Every notebook has the course's shape, is stored without outputs, and is listed in the README.

(nbval executes the notebooks themselves: `pytest notebooks --nbval-lax`.)
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
README = (ROOT / "README.md").read_text()


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: use NN_topic.ipynb"


@pytest.fixture(params=NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def nb(request: pytest.FixtureRequest) -> nbformat.NotebookNode:
    node = nbformat.read(request.param, as_version=4)
    node.metadata["path"] = request.param
    return node


def _code(nb: nbformat.NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _markdown(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_stored_without_outputs(nb: nbformat.NotebookNode) -> None:
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{nb.metadata['path'].name}: strip outputs before committing"
    nbformat.validate(nb)


def test_course_shape(nb: nbformat.NotebookNode) -> None:
    path: Path = nb.metadata["path"]
    number = path.name[:2]
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {number} · "), f"{path.name}: title '# {number} · Topic' first"
    text = _markdown(nb)
    for heading in ("What you will learn", "What you need", "## Summary", "Key API", "## Exercises", "## Next"):
        assert heading in text, f"{path.name}: missing {heading!r}"
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells if c.cell_type == "code"), f"{path.name}: no cell tagged 'parameters'"
    code = "\n".join(_code(nb))
    assert code.count("# BEGIN SOLUTION") >= 2 and code.count("# BEGIN SOLUTION") == code.count("# END SOLUTION"), f"{path.name}: ≥ 2 marked solutions"
    assert re.search(rf"\bex{number}\.check_\w+\(", code), f"{path.name}: exercises are checked by labkit.exercises.ex{number}"
    assert re.search(r"\bplots\.\w+\(|\.plot_\w+\(", code), f"{path.name}: plot the timings"


def test_no_installs_path_hacks_or_downloads(nb: nbformat.NotebookNode) -> None:
    code = "\n".join(_code(nb))
    assert not re.search(r"^\s*[!%]\s*pip install", code, re.M), "no pip cells: the README's command installs everything"
    assert "sys.path" not in code, "no sys.path hacks"
    assert not re.search(r"from_pretrained|urlretrieve|hf_hub_download|torch\.hub\.load", code), "nothing is downloaded at run time"
    # make test runs the student edition from .cache/student-edition/, two levels down, so "../deploy"
    # is not the repository's deploy/ there: find it with kubectl.deploy_dir() instead.
    assert not re.search(r"""Path\(\s*["']\.\.["']|["']\.\./""", code), "no paths relative to the notebook's folder ('..')"


def test_readme_lists_it_and_its_needs(nb: nbformat.NotebookNode) -> None:
    path: Path = nb.metadata["path"]
    row = next((line for line in README.splitlines() if line.startswith("|") and f"notebooks/{path.name}" in line), None)
    assert row is not None, f"README course table has no row linking notebooks/{path.name}"
    assert "coming" not in row.lower(), f"{path.name} exists: its README row must not say 'coming'"
    gpus = re.findall(r"require\(gpus=(\d+)", "\n".join(_code(nb)))
    if gpus:
        assert "GPU" in row, f"{path.name} has GPU-only cells (require(gpus={max(gpus)})): its README row must say so"
