"""Write the student edition: solutions replaced by ``...``, outputs cleared, checks kept."""

from __future__ import annotations

import re
from pathlib import Path

from labkit.errors import BadInput

__all__ = ["BEGIN", "END", "STUB", "make_student_edition", "strip_solutions"]

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
STUB = "...  # YOUR CODE HERE"


def strip_solutions(source: str) -> str:
    """Replace each BEGIN/END SOLUTION block by one stub line at the block's indentation."""
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


def make_student_edition(src_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write every notebook of ``src_dir`` to ``out_dir`` as a student edition; return the paths."""
    import nbformat

    src, out = Path(src_dir), Path(out_dir)
    notebooks = sorted(src.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise BadInput(f"no numbered notebooks (NN_topic.ipynb) in {src}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.source = strip_solutions(cell.source)
                cell.outputs = []
                cell.execution_count = None
        target = out / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written
