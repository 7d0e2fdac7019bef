"""Write the student edition: solutions replaced by ``...``, outputs cleared, checks kept.

``make_paired_edition`` writes what ``make test`` executes: each notebook once, its lesson, then
its exercises as the student gets them (every check must say "not done yet", never crash; the
clean-up cells after the last check are left out there), then the same exercises solved (every
check must pass) and the clean-up. Solutions live only under "## Exercises"
(``lesson_end`` refuses a notebook where one comes earlier), so the lesson cells of both editions
are the same cells and running them once tests both.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from labkit.errors import BadInput

__all__ = ["BEGIN", "END", "EXERCISES", "STUB", "last_exercise", "lesson_end", "make_paired_edition", "make_student_edition", "strip_solutions"]

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
STUB = "...  # YOUR CODE HERE"
EXERCISES = "## Exercises"


def strip_solutions(source: str) -> str:
    """Replace each BEGIN/END SOLUTION block by one stub line at the block's indentation."""
    if BEGIN not in source and END not in source:
        return source
    out: list[str] = []
    inside = False
    for n, line in enumerate(source.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise BadInput(f"line {n}: {BEGIN} inside another solution block")
            inside = True
            indent = re.match(r"\s*", line).group(0)  # type: ignore[union-attr]
            out.append(indent + STUB)
        elif stripped.startswith(END):
            if not inside:
                raise BadInput(f"line {n}: {END} without {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise BadInput(f"{BEGIN} is never closed by {END}")
    return "\n".join(out)


def _notebooks(src_dir: str | Path) -> list[Path]:
    src = Path(src_dir)
    notebooks = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise BadInput(f"no numbered notebooks (NN_topic.ipynb) in {src}")
    return notebooks


def _as_student(cell: Any) -> Any:
    cell = copy.deepcopy(cell)
    if cell.cell_type == "code":
        cell.source = strip_solutions(cell.source)
        cell.outputs = []
        cell.execution_count = None
    return cell


def make_student_edition(src_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write every notebook of ``src_dir`` to ``out_dir`` as a student edition; return the paths."""
    import nbformat

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in _notebooks(src_dir):
        nb = nbformat.read(path, as_version=4)
        nb.cells = [_as_student(c) for c in nb.cells]
        target = out / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


def lesson_end(cells: list[Any], name: str = "notebook") -> int:
    """Index of the "## Exercises" heading (the lesson is every cell before it); no solution may come earlier."""
    for i, cell in enumerate(cells):
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith(EXERCISES):
            return i
        if cell.cell_type == "code" and BEGIN in cell.source:
            raise BadInput(f"{name}: cell {i} holds a solution before the {EXERCISES!r} heading")
    raise BadInput(f"{name}: no {EXERCISES!r} heading")


def last_exercise(cells: list[Any]) -> int:
    """Index of the last code cell that holds a solution or calls a check: what follows is clean-up
    (stopping servers), which the paired edition runs once, after the solved exercises."""
    found = [i for i, c in enumerate(cells) if c.cell_type == "code" and (BEGIN in c.source or ".check_" in c.source)]
    return found[-1] if found else len(cells) - 1


def _note(text: str) -> Any:
    import nbformat

    return nbformat.v4.new_markdown_cell(text)


def make_paired_edition(src_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write each notebook as lesson + exercises unsolved (student) + exercises solved (instructor)."""
    import nbformat

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in _notebooks(src_dir):
        nb = nbformat.read(path, as_version=4)
        end = lesson_end(nb.cells, path.name)
        exercises = nb.cells[end:]
        nb.cells = [
            *nb.cells[:end],
            _note("*(test run)* The exercises as the student edition has them: every check says \"not done yet\"."),
            *(_as_student(c) for c in exercises[: last_exercise(exercises) + 1]),
            _note("*(test run)* The same exercises solved: every check passes."),
            *(copy.deepcopy(c) for c in exercises),
        ]
        for i, cell in enumerate(nb.cells):  # nbformat wants unique cell ids
            cell["id"] = f"c{i:03d}"
        target = out / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written
