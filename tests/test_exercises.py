from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from labkit.bench.baseline import SweepPoint
from labkit.errors import BadInput
from labkit.exercises import ExerciseFailed, ex00, verdict
from labkit.exercises.student import BEGIN, END, STUB, last_exercise, lesson_end, make_paired_edition, make_student_edition, strip_solutions

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def test_verdict_three_ways(capsys: pytest.CaptureFixture[str]) -> None:
    assert verdict("E", None, "ignored", "a hint") is False
    assert "not done yet" in capsys.readouterr().out
    assert verdict("E", ..., None, "a hint") is False
    assert verdict("E", 3, None, "a hint") is True
    with pytest.raises(ExerciseFailed, match="(?s)too small.*Hint: a hint"):
        verdict("E", 2, "too small", "a hint")


def test_ex00_checks_give_specific_feedback() -> None:
    sweep = [SweepPoint(64, 1.0, 64000, 10.0)]
    peak = {1: 50.0, 2: 100.0}
    assert ex00.check_fraction_of_peak(0.1, sweep, peak, 64, 2)
    with pytest.raises(ExerciseFailed, match="percentage"):
        ex00.check_fraction_of_peak(10.0, sweep, peak, 64, 2)
    with pytest.raises(ExerciseFailed, match="not the measured fraction"):
        ex00.check_fraction_of_peak(0.5, sweep, peak, 64, 2)
    oversub = {"one": 100.0, "over": 50.0, "fixed": 120.0}
    assert ex00.check_oversubscription_slowdown(0.5, oversub)
    with pytest.raises(ExerciseFailed, match="inverse"):
        ex00.check_oversubscription_slowdown(2.0, oversub)
    assert not ex00.check_best_batch_size(lambda s, b: None)
    with pytest.raises(ExerciseFailed, match="expected 64"):
        ex00.check_best_batch_size(lambda s, b: max(s, key=lambda p: p.throughput_per_s).batch_size)
    with pytest.raises(ExerciseFailed, match="raised ZeroDivisionError"):
        ex00.check_best_batch_size(lambda s, b: 1 // 0)


def test_strip_solutions_keeps_indentation_and_rest() -> None:
    src = "x = None\n# BEGIN SOLUTION\nx = 42\n# END SOLUTION\ncheck(x)\ndef f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION\n"
    out = strip_solutions(src)
    assert out == f"x = None\n{STUB}\ncheck(x)\ndef f():\n    {STUB}"
    compile(out, "<student>", "exec")  # still valid Python
    for bad in ["# BEGIN SOLUTION\n", "# END SOLUTION\n", "# BEGIN SOLUTION\n# BEGIN SOLUTION\n"]:
        with pytest.raises(BadInput):
            strip_solutions(bad)


def test_student_edition_of_the_real_notebooks(tmp_path: Path) -> None:
    written = make_student_edition(NOTEBOOKS, tmp_path)
    assert [p.name for p in written] == sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for path in written:
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "# BEGIN SOLUTION" not in text and STUB in text, path.name
        assert "labkit.exercises" in text or "from labkit.exercises import" in text, f"{path.name}: checks must stay"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        for cell in nb.cells:
            if cell.cell_type == "code":
                body = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("!", "%")) and not line.rstrip().endswith("??"))
                compile(body, f"{path.name}", "exec")


def test_one_placeholder_rule_for_every_check() -> None:
    """Every exercise module asks ``exercises.is_unanswered`` what "not done yet" means; none re-implements it."""
    from pathlib import Path

    import labkit.exercises as pkg

    copies = [f"{p.name}:{n}" for p in sorted(Path(pkg.__file__).parent.glob("ex*.py")) for n, line in enumerate(p.read_text().splitlines(), 1) if "Ellipsis" in line]
    assert not copies, f"use exercises.is_unanswered instead of testing for None/Ellipsis: {copies}"


def test_paired_edition_runs_each_lesson_once_then_both_editions_of_its_exercises(tmp_path: Path) -> None:
    """What `make test` executes: the lesson (the same cells in both editions), exercises unsolved, then solved."""
    paired = {p.name: p for p in make_paired_edition(NOTEBOOKS, tmp_path / "paired")}
    students = {p.name: p for p in make_student_edition(NOTEBOOKS, tmp_path / "student")}
    assert paired.keys() == students.keys() == {p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")}
    for name, path in paired.items():
        instructor = nbformat.read(NOTEBOOKS / name, as_version=4).cells
        student = nbformat.read(students[name], as_version=4).cells
        end = lesson_end(instructor, name)
        assert [c.source for c in student[:end]] == [c.source for c in instructor[:end]], f"{name}: the lesson differs between editions"
        cells = [c.source for c in nbformat.read(path, as_version=4).cells]
        n = last_exercise(instructor[end:]) + 1  # the student copy stops at the last check: clean-up runs once, at the end
        assert cells[:end] == [c.source for c in instructor[:end]]
        assert cells[end + 1 : end + 1 + n] == [c.source for c in student[end : end + n]], f"{name}: unsolved exercises"
        assert cells[end + 2 + n :] == [c.source for c in instructor[end:]], f"{name}: solved exercises and clean-up"
        assert not any("stop()" in s for s in cells[end + 1 : end + 1 + n] if "check_" not in s), f"{name}: a clean-up cell among the unsolved exercises"
        assert any(STUB in s for s in cells[end + 1 : end + 1 + n]) and any(BEGIN in s for s in cells[end + 2 + n :])


def test_lesson_end_refuses_a_solution_before_the_exercises() -> None:
    cells = [nbformat.v4.new_code_cell(f"{BEGIN}\nx = 1\n{END}"), nbformat.v4.new_markdown_cell("## Exercises")]
    with pytest.raises(BadInput, match="before the '## Exercises' heading"):
        lesson_end(cells, "nb")
    with pytest.raises(BadInput, match="no '## Exercises' heading"):
        lesson_end(cells[1:0], "nb")
