"""The lab in a real browser: JupyterLab + Debian's chromium driven by Playwright.

Opens notebook 00, runs all cells, and checks what a student sees: no cell errored, a
matplotlib figure and an ipywidgets slider are rendered, and moving the slider re-runs the
measurement (its output changes). Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import need

from labkit.runtime import process

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
NOTEBOOK = "00_setup_and_baselines.ipynb"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
RUN_ALL_TIMEOUT_S = 240

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """JupyterLab on 127.0.0.1 with a token, serving a copy of notebook 00 (the repo stays clean)."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    port, token = process.free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
        "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
        "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False",
        "--LabServerApp.workspaces_dir=" + str(root / ".workspaces"),
    ]
    base = f"http://127.0.0.1:{port}"
    ready = lambda: httpx.get(f"{base}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).status_code == 200
    with process.start("jupyterlab", cmd, env={"LABKIT_FAST": "1", "JUPYTER_CONFIG_DIR": str(root / ".jupyter")}, ready=ready, timeout_s=90):
        yield f"{base}/lab/tree/{NOTEBOOK}?token={token}"


def _widget_output(page) -> str:  # type: ignore[no-untyped-def]
    return page.locator(".widget-interact .widget-output").last.inner_text(timeout=10_000)


def test_notebook_00_runs_in_jupyterlab_in_chromium(lab: str) -> None:
    need(Path(CHROMIUM).exists(), f"chromium is not installed ({CHROMIUM}); apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab, timeout=60_000)
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget && window.jupyterapp.shell.currentWidget.sessionContext && window.jupyterapp.shell.currentWidget.sessionContext.session && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel", timeout=90_000)
            page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'", timeout=90_000)
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            done = """() => {
                const nb = window.jupyterapp.shell.currentWidget;
                const cells = nb.content.widgets.filter(c => c.model.type === 'code');
                return cells.length > 0 && cells.every(c => c.model.executionCount !== null)
                    && nb.sessionContext.session.kernel.status === 'idle';
            }"""
            deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
            while not page.evaluate(done):
                assert time.monotonic() < deadline, f"notebook did not finish in {RUN_ALL_TIMEOUT_S} s"
                page.wait_for_timeout(1000)
            errors = page.evaluate(
                """() => window.jupyterapp.shell.currentWidget.content.widgets
                    .filter(c => c.model.type === 'code')
                    .flatMap(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue))"""
            )
            page.screenshot(path=str(ARTIFACTS / "00_after_run_all.png"), full_page=False)
            assert errors == [], f"cells raised: {errors}"

            figures = page.locator(".jp-RenderedImage img")
            assert figures.count() >= 3, "the matplotlib figures were not rendered"
            slider = page.locator(".widget-slider .noUi-handle").first
            slider.wait_for(state="visible", timeout=30_000)
            slider.scroll_into_view_if_needed()
            before = _widget_output(page)
            assert "images/s" in before, f"the widget did not show a measurement: {before!r}"
            page.screenshot(path=str(ARTIFACTS / "00_widget_before.png"))

            slider.focus()
            page.keyboard.press("ArrowLeft")
            deadline = time.monotonic() + 60
            after = before
            while after == before and time.monotonic() < deadline:
                page.wait_for_timeout(500)
                after = _widget_output(page)
            page.screenshot(path=str(ARTIFACTS / "00_widget_after.png"))
            assert after != before and "images/s" in after, f"moving the slider did not re-run the measurement: {after!r}"
        finally:
            browser.close()
