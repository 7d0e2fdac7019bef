"""labkit's progress bars end clean in an executed notebook: one line of text (or nothing), no frozen
widget text and nothing on stderr; outside a kernel they are tqdm's text bars."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from labkit.runtime import progress

CELLS = {
    "kept": "from labkit.runtime import progress\nfor _ in progress.tqdm(range(5), desc='kept'):\n    pass",
    "cleared": "for _ in progress.tqdm(range(5), desc='cleared', leave=False):\n    pass",
    "manual": "with progress.tqdm(total=4, desc='manual') as b:\n    b.update(4)",
    "stopped early": "b = progress.tqdm(total=4, desc='stopped early', leave=False)\nb.update(1)\nb.close()",
}


def _run(cells: list[str], **env: str) -> list[list[dict]]:  # type: ignore[type-arg]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in cells])
    NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    return [c.outputs for c in nb.cells]


def _texts(outputs: list[dict]) -> list[str]:  # type: ignore[type-arg]
    assert not [o for o in outputs if o.get("name") == "stderr"], f"a progress bar wrote to stderr: {outputs}"
    return [o["data"].get("text/plain", "") for o in outputs if o["output_type"] == "display_data"]


@pytest.mark.notebook
@pytest.mark.parametrize("widgets", [True, False], ids=["ipywidgets", "no ipywidgets"])
def test_bars_leave_one_final_line_in_an_executed_notebook(widgets: bool) -> None:
    setup = [] if widgets else ["import sys\nsys.modules['ipywidgets'] = None  # as if it were not installed"]
    outs = _run(setup + list(CELLS.values()))[len(setup) :]
    by_name = dict(zip(CELLS, (_texts(o) for o in outs)))
    assert by_name["kept"] == [by_name["kept"][0]] and "kept: 100%" in by_name["kept"][0] and "5/5" in by_name["kept"][0], by_name
    assert by_name["cleared"] == [""], by_name  # leave=False: nothing left once it completed
    assert "4/4" in by_name["manual"][0], by_name
    assert "1/4" in by_name["stopped early"][0], by_name  # an unfinished bar stays, so you see where it stopped
    for outputs in outs:
        assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), "a widget view was left in the notebook"


@pytest.mark.unit
def test_outside_a_kernel_it_is_tqdms_text_bar(capsys: pytest.CaptureFixture[str]) -> None:
    from tqdm.std import tqdm

    assert not progress.in_kernel()
    b = progress.tqdm(range(3), desc="plain")
    assert type(b) is tqdm
    assert sum(b) == 3
    assert "plain: 100%" in capsys.readouterr().err
