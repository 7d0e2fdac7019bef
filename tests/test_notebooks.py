"""Every notebook has the course's shape, is stored without outputs, and is listed in the README.

(nbval executes the notebooks themselves: `pytest notebooks --nbval-lax`.)
"""

from __future__ import annotations

import ast
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


# ---------------------------------------------------------------- what a notebook shows or calls of labkit


def _python(source: str) -> str:
    """A cell's code as plain Python: IPython lines (``%``, ``!``) dropped, ``obj??`` kept as ``obj``."""
    lines = []
    for line in source.splitlines():
        if line.lstrip().startswith(("%", "!")):
            lines.append("")
        else:
            lines.append(re.sub(r"^(\s*)([\w.]+)\?\??\s*$", r"\1\2", line))
    return "\n".join(lines)


def _labkit_names(nb: nbformat.NotebookNode) -> tuple[dict[str, str], list[ast.AST]]:
    """The names the notebook binds to labkit objects (``{local name: dotted path}``) and every cell's AST."""
    bound: dict[str, str] = {}
    trees = []
    for src in _code(nb):
        tree = ast.parse(_python(src))
        trees.append(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "labkit":
                for a in node.names:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "labkit":
                        bound[a.asname or a.name.split(".")[0]] = (a.asname and a.name) or "labkit"
    return bound, trees


def test_uses_no_private_name_of_labkit(nb: nbformat.NotebookNode) -> None:
    """A lesson reaching into ``_name`` breaks silently on a rename: everything it uses is public."""
    bound, trees = _labkit_names(nb)
    private = sorted(f"{q} (import)" for n, q in bound.items() if n.startswith("_") or any(p.startswith("_") and not p.startswith("__") for p in q.split(".")))
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in bound:
                    private.append(f"{ast.unparse(node)} (line {node.lineno})")
    assert not private, f"{nb.metadata['path'].name} uses private names of labkit: {private}"


def test_shows_code_through_labkit_show(nb: nbformat.NotebookNode) -> None:
    """No ``??`` (prints nothing in an executed notebook) and no slicing of source text."""
    code = "\n".join(_code(nb))
    name = nb.metadata["path"].name
    assert not re.search(r"^\s*[\w.]+\?\?\s*$", code, re.M), f"{name}: show labkit code with labkit.show(...), not ??"
    assert not re.search(r"getsource\([^)]*\)\s*(\.index|\.split|\[)", code) and "source.index(" not in code, f"{name}: show a named region, don't slice source text"


def _shown(nb: nbformat.NotebookNode) -> list[tuple[str, str | None]]:
    """Every ``labkit.show(...)`` call: (what, region) as written (``what`` a dotted module or object name)."""
    out = []
    for tree in _labkit_names(nb)[1]:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("labkit.show", "show"):
                args = [a.value if isinstance(a, ast.Constant) else ast.unparse(a) for a in node.args]
                out.append((args[0], args[1] if len(args) > 1 else None))
    return out


def test_everything_shown_exists_and_says_where_it_is_shown(nb: nbformat.NotebookNode) -> None:
    """Each region a notebook names exists; each object it shows is public and its docstring says 'Shown in NN'."""
    import importlib
    import inspect

    from labkit.show import regions

    path: Path = nb.metadata["path"]
    bound, _ = _labkit_names(nb)
    for what, region in _shown(nb):
        if region is not None:
            assert region in regions(what), f"{path.name}: no region {region!r} in {what}"
            module = importlib.import_module(what)
            assert f"Shown in {path.name[:2]}" in (module.__doc__ or ""), f"{path.name}: {what}'s docstring must say 'Shown in {path.name[:2]}'"
            continue
        head, *rest = what.split(".")
        assert head in bound, f"{path.name}: labkit.show({what}) — {head} is not a labkit name here"
        obj: object = importlib.import_module(bound[head]) if importlib.util.find_spec(bound[head]) else None
        if obj is None:
            module, _, attr = bound[head].rpartition(".")
            obj = getattr(importlib.import_module(module), attr)
        for part in rest:
            obj = getattr(obj, part)
        doc = inspect.getdoc(getattr(obj, "run", obj)) if not inspect.getdoc(obj) else inspect.getdoc(obj)
        assert f"Shown in {path.name[:2]}" in (doc or ""), f"{path.name}: the docstring of {what} must say 'Shown in {path.name[:2]}'"


def test_no_cell_echoes_a_bare_value_after_a_check(nb: nbformat.NotebookNode) -> None:
    """A check prints its verdict as a sentence and returns True/False for the tests: a cell that ends
    with the bare call also shows ``True`` below that sentence, so the call ends with ``;``."""
    echoing = []
    for i, src in enumerate(_code(nb)):
        body = ast.parse(_python(src)).body
        last = body[-1] if body else None
        is_check = isinstance(last, ast.Expr) and isinstance(last.value, ast.Call) and re.fullmatch(r"ex\d\d\.check_\w+", ast.unparse(last.value.func))
        if is_check and not src.rstrip().endswith(";"):
            echoing.append(f"code cell {i}: {ast.unparse(last)}")
    assert not echoing, f"{nb.metadata['path'].name}: end these check calls with ';' (they would echo True): {echoing}"
