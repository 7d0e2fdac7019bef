"""Shared test plumbing: strict mode, skip discipline, and a check that nothing is left running.

- ``need(reason)`` skips a test whose service or binary is missing — and fails it under
  LABKIT_STRICT=1 (CI), so a missing broker can never pass silently.
- A skip without a reason fails.
- After the session, no process labkit started may still be running.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from labkit import config


def need(available: bool, reason: str) -> None:
    """Skip (or, in strict mode, fail) when ``available`` is False; ``reason`` says what is missing."""
    if available:
        return
    if config.strict():
        pytest.fail(f"LABKIT_STRICT=1 and {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def nothing_new_left(held: set[int]) -> Iterator[None]:
    """Fail if the block leaves a labkit process it started running (``held``: pids owned by longer-lived fixtures)."""
    from labkit.runtime import process

    before = {i["pid"] for i in process.running()}
    yield
    # only what this test process started (started_here): other sessions may share the cache dir
    process.assert_nothing_left(before=before | set(held), quiet=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ").strip()
        if not reason or reason in {"unconditional skip", "<Skipped instance>"}:
            report.outcome = "failed"
            report.longrepr = f"{item.nodeid}: skipped without a reason; every skip must say why"


_SESSION_START = time.time()


def _started_by_this_session(info: dict) -> bool:  # type: ignore[type-arg]
    """True if this pytest process (or a kernel/worker it started) started the process in ``info``."""
    import psutil

    me = os.getpid()
    parent = info.get("parent")
    try:
        p = psutil.Process(int(parent)) if parent else None
        while p is not None:
            if p.pid == me:
                return True
            p = p.parent()
        return False
    except psutil.NoSuchProcess:  # its starter is gone (a kernel that ended): judge by time
        return float(info.get("create_time") or 0) >= _SESSION_START


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from labkit.runtime import process

    left = [r for r in process.running() if _started_by_this_session(r)]
    if left:
        names = ", ".join(f"{r['name']} (pid {r['pid']})" for r in left)
        for r in left:
            process.stop_pid(int(r["pid"]))
        print(f"\nlabkit: processes left running after the tests (now stopped): {names}")
        session.exitstatus = 1
