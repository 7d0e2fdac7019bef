"""Shared test plumbing: strict mode, skip discipline, and a check that nothing is left running.

- ``need(reason)`` skips a test whose service or binary is missing — and fails it under
  LABKIT_STRICT=1 (CI), so a missing broker can never pass silently.
- A skip without a reason fails.
- After the session, no process labkit started may still be running.
"""

from __future__ import annotations

import pytest

from labkit import config


def need(available: bool, reason: str) -> None:
    """Skip (or, in strict mode, fail) when ``available`` is False; ``reason`` says what is missing."""
    if available:
        return
    if config.strict():
        pytest.fail(f"LABKIT_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ").strip()
        if not reason or reason in {"unconditional skip", "<Skipped instance>"}:
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid}: skipped without a reason; every skip must say why"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from labkit.services import process

    if process.running():
        stopped = process.stop_all()
        print(f"\nlabkit: processes left running after the tests (now stopped): {', '.join(stopped)}")
        session.exitstatus = 1
