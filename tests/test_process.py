"""labkit.runtime.process: ready means ready, stop leaves nothing, children die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from labkit.errors import BadInput, ServiceUnavailable
from labkit.measure import probe
from labkit.runtime import process

SLEEPER = [sys.executable, "-c", "import time, subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"]


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable() -> None:
    import socket

    port = process.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_start_ready_logs_and_stop_whole_tree() -> None:
    port = process.free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]

    def ready() -> bool:
        import httpx

        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200

    with process.start("http-test", cmd, ready=ready, timeout_s=30) as proc:
        assert proc.alive()
        assert any(r["pid"] == proc.pid for r in process.running())
        assert proc.rss_mb() > 1
        time.sleep(0.2)
        assert "GET /" in proc.logs()
    assert not proc.alive()
    assert all(r["pid"] != proc.pid for r in process.running())
    assert not proc.pid_file.exists()


def test_stop_reaches_grandchildren() -> None:
    proc = process.start("tree-test", SLEEPER)
    process.wait_until(lambda: len(proc.tree()) >= 2, 20, "grandchild started")
    pids = [p.pid for p in proc.tree()]
    proc.stop(timeout_s=5)
    assert all(_gone(pid) for pid in pids)


BURNER = [sys.executable, "-c", "import time, subprocess, sys; subprocess.Popen([sys.executable, '-c', "
          "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.8: pass\\ntime.sleep(60)']); time.sleep(60)"]


def test_stop_keeps_the_cpu_of_orphans_as_own() -> None:
    """A grandchild outliving its parent's SIGTERM is reaped by init: its CPU stays this process's in the probe."""
    before, _ = probe._own_cpu_s()  # the probe has never seen the grandchild: only stop() can record it
    proc = process.start("orphan-cpu", BURNER)
    process.wait_until(lambda: len(proc.tree()) >= 2 and sum(proc.tree()[1].cpu_times()[:2]) >= 0.75, 20, "grandchild burned its CPU")
    proc.stop(timeout_s=5)
    after, _ = probe._own_cpu_s()
    assert after - before >= 0.7, f"the orphan's 0.8 s of CPU left the count: {after - before:.2f} s counted"


def test_missing_executable_says_how_to_get_it() -> None:
    with pytest.raises(ServiceUnavailable, match="apt-get install -y nothing-here"):
        process.start("missing", ["definitely-not-a-binary-xyz"], install_hint="apt-get install -y nothing-here")
    with pytest.raises(BadInput):
        process.start("empty", [])


def test_child_that_exits_fails_fast_with_its_logs() -> None:
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailable) as err:
        process.start("crasher", [sys.executable, "-c", "print('bad config line 3'); raise SystemExit(3)"], ready=lambda: False, timeout_s=30)
    assert time.monotonic() - t0 < 15
    assert "exited with code 3" in str(err.value) and "bad config line 3" in str(err.value)


def test_not_ready_times_out() -> None:
    with pytest.raises(ServiceUnavailable, match="not ready after 1 s"):
        process.start("never-ready", [sys.executable, "-c", "import time; time.sleep(30)"], ready=lambda: False, timeout_s=1)
    assert not [r for r in process.running() if r["name"] == "never-ready"]


def test_children_die_with_their_parent_even_on_sigkill(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A kernel restart SIGKILLs the kernel: what it started must not survive it."""
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from labkit.runtime import process
            p = process.start("orphan-check", [sys.executable, "-c", "import time; time.sleep(60)"])
            print(p.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child_pid = int(parent.stdout.readline())  # type: ignore[union-attr]
        assert psutil.pid_exists(child_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert _gone(child_pid), "the child outlived its SIGKILLed parent"
    finally:
        parent.kill()
    process.running()  # prunes the stale pid file
    assert not [r for r in process.running() if r["name"] == "orphan-check"]


def test_handle_external_stop_is_a_no_op() -> None:
    h = process.Handle("redis", "redis://127.0.0.1:1/0")
    assert h.external and h.pid is None and h.alive()
    h.stop()
    assert "external" in h.logs()


def test_a_chain_whose_every_parent_waited_is_counted_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Launcher → Java → workers, all gone, each reaped by its parent (09's TorchServe): the kernel's
    children times already hold the whole chain (1 + 20 + 10 s), so it counts 31 s, not 61 s."""
    launcher, java, worker = (1, 0.0), (2, 0.0), (3, 0.0)
    seen = {launcher: probe._Seen(None, 1.0, 0.0, False),  # last seen before it waited for Java
            java: probe._Seen(launcher, 20.0, 10.0, False), worker: probe._Seen(java, 10.0, 0.0, False)}
    monkeypatch.setattr(probe, "_SEEN", seen)
    assert probe._tree_cpu_s(None, set(), 31.0) == 31.0


def test_an_orphan_counts_beside_earlier_waited_children(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A server (1 s) is waited for after 5 s of other children; its worker (0.8 s), orphaned and reaped by init, adds its own."""
    server, worker = (1, 0.0), (2, 0.0)
    monkeypatch.setattr(probe, "_SEEN", {server: probe._Seen(None, 1.0, 0.0, False), worker: probe._Seen(server, 0.8, 0.0, True)})
    assert abs(probe._tree_cpu_s(None, set(), 6.0) - 6.8) < 1e-9
    # the same worker still live, not yet orphaned: counted as live, once
    monkeypatch.setattr(probe, "_SEEN", {server: probe._Seen(None, 1.0, 0.0, False), worker: probe._Seen(server, 0.8, 0.0, False)})
    assert abs(probe._tree_cpu_s(None, {server, worker}, 5.0) - 6.8) < 1e-9
