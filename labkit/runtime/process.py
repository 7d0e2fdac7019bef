"""Managed subprocesses: free ports, readiness, logs, pid files, and no orphans.

A child started here gets ``PR_SET_PDEATHSIG`` (Linux) through ``die_with_parent()``: when the
process that started it dies, even by SIGKILL (a kernel restart), the child gets SIGTERM. Spawned
workers (patterns/*) call ``die_with_parent()`` first thing, for the same guarantee. It runs in its own process group so
``stop()`` reaches its own children too. Each child is recorded in a pid file (pid + create time)
under the cache dir; ``stop_all()`` stops those still running, by pid, never by name.

    with process.start("redis", ["redis-server", "--port", str(port)], ready=ping) as proc:
        ...

Process-tree figures (``tree_pids``, ``tree_rss_mb``, ``tree_cpu_s``, ``kill_descendant``) and
``assert_nothing_left`` (the clean-up check at the end of a notebook and after each test) live
here too.

Used by every module in labkit.services (notebooks 06–14); ``assert_nothing_left`` is shown in
the clean-up cell of 06, 07, 09 and 14.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from labkit import config
from labkit.errors import BadInput, ServiceUnavailable
from labkit.measure import probe

__all__ = [
    "DEATH_SIGNAL",
    "Handle",
    "ManagedProcess",
    "alive",
    "assert_nothing_left",
    "die_with_parent",
    "end_processes",
    "free_port",
    "free_ports",
    "group_members",
    "kill_descendant",
    "running",
    "start",
    "started_here",
    "stop_all",
    "stop_pid",
    "tree_cpu_s",
    "tree_pids",
    "tree_rss_mb",
    "wait_until",
]

H = TypeVar("H", bound="Handle")
STOP_TIMEOUT_S = 10.0
READY_INTERVAL_S = 0.05
LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1
# What an orphaned child gets when its parent dies. SIGTERM, not SIGKILL: its default action ends a
# plain Python worker (a spawned rank, a pool worker) just as surely — also one blocked in a
# collective or a queue read — while a child that handles it (uvicorn, Celery, Redis, TorchServe's
# launcher, Ray) can still stop its own children on the way out; SIGKILL would orphan those.
DEATH_SIGNAL = signal.SIGTERM
_SIGTERM = signal.SIGTERM  # the class below has a method named signal
_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """Return ``n`` distinct free ports (sockets held open together, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def die_with_parent(sig: int = DEATH_SIGNAL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Call it first thing in a spawned worker, or between fork and exec (``start`` does). Returns
    False where it is not available (not Linux): atexit handlers and ``stop_all`` still clean up.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig))) == 0
    except (OSError, AttributeError):
        return False


def group_members(pgid: int) -> list[Any]:
    """Live psutil processes of process group ``pgid`` (a child ``start`` launched leads its own group).

    A descendant whose parent died is re-parented and drops out of the parent's tree, but keeps
    its group: this finds it. Zombies and this interpreter are left out.
    """
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.pid != os.getpid() and p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def wait_until(check: Callable[[], Any], timeout_s: float, what: str, interval_s: float = READY_INTERVAL_S, proc: ManagedProcess | None = None) -> Any:
    """Call ``check`` until it returns a truthy value (returned) or raises no more; fail after ``timeout_s``.

    If ``proc`` exits meanwhile, fail at once with its last log lines.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        if proc is not None and not proc.alive():
            raise ServiceUnavailable(f"{what}: process exited with code {proc.returncode}", logs=proc.logs(LOG_TAIL_LINES))
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # not ready yet
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
            raise ServiceUnavailable(f"{what}: not ready after {timeout_s:.0f} s{detail}", logs=proc.logs(LOG_TAIL_LINES) if proc else "")
        time.sleep(interval_s)


def _pid_dir() -> Path:
    return config.cache_dir("pids")


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # dead, waiting to be reaped
            return None
        return float(proc.create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class ManagedProcess:
    """A child process labkit started: its pid, its log file, and a stop that leaves nothing behind."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path, cmd: Sequence[str]) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.cmd = list(cmd)
        self.started_at = time.monotonic()
        self.pid_file = _pid_dir() / f"{name}-{popen.pid}.json"
        self.pid_file.write_text(json.dumps({"name": name, "pid": popen.pid, "create_time": _create_time(popen.pid), "cmd": self.cmd, "parent": os.getpid()}))
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def logs(self, n: int = LOG_TAIL_LINES) -> str:
        """The last ``n`` lines the process wrote (stdout and stderr together)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-n:])

    def tree(self) -> list[Any]:
        """psutil.Process objects of this process and all its descendants still alive."""
        import psutil

        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss_mb(self) -> float:
        """Resident memory of the whole process tree, in MB."""
        return tree_rss_mb([self.pid])

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main process only (e.g. SIGKILL for a fault-injection demo)."""
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S, sig: int | None = None) -> None:
        """Stop the process and every descendant: ``sig`` (default SIGTERM) first, SIGKILL after ``timeout_s``."""
        import psutil

        sig = signal.SIGTERM if sig is None else sig

        procs = self.tree()
        seen = {p.pid for p in procs}
        procs += [p for p in group_members(self.pid) if p.pid not in seen]  # reparented ones too
        probe.remember(procs)  # with their parents, while they still have them
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        _, alive = psutil.wait_procs(procs[:1], timeout=timeout_s)
        # descendants that outlived their parent's shutdown get the same treatment
        orphans = [p for p in procs[1:] if p.is_running()]
        probe.remember(orphans)  # init reaps these: their CPU up to now stays this notebook's
        end_processes(orphans + alive, sig, timeout_s=min(timeout_s, 3.0))
        try:
            self.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        # anything of its process group started meanwhile (a child forked during shutdown): SIGKILL
        end_processes(group_members(self.pid), signal.SIGKILL, timeout_s=3.0)
        self.pid_file.unlink(missing_ok=True)
        with _live_lock:
            _live.discard(self)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.returncode}"
        return f"<ManagedProcess {self.name} pid={self.pid} {state}>"


def start(
    name: str,
    cmd: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    ready: Callable[[], Any] | None = None,
    timeout_s: float = 30.0,
    install_hint: str = "",
) -> ManagedProcess:
    """Start ``cmd`` as a managed child and wait until ``ready()`` is truthy (if given).

    ``env`` is added to this process's environment. A missing executable raises
    ``ServiceUnavailable`` naming ``install_hint``; a child that exits or never gets ready raises
    it with the child's last log lines.
    """
    if not cmd:
        raise BadInput("cmd must name an executable")
    log_path = config.cache_dir("logs") / f"{name}-{int(time.time() * 1000)}.log"
    full_env = {**os.environ, **(env or {})}
    log = open(log_path, "wb")  # noqa: SIM115  (the child writes to it; closed here once Popen has its copy)
    try:
        popen = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise ServiceUnavailable(f"{name}: executable {cmd[0]!r} not found", install_hint) from exc
    finally:
        log.close()
    proc = ManagedProcess(name, popen, log_path, cmd)
    if ready is not None:
        try:
            wait_until(ready, timeout_s, f"{name} (pid {proc.pid})", proc=proc)
        except BaseException:
            proc.stop(timeout_s=3.0)
            raise
    return proc


def running() -> list[dict[str, Any]]:
    """Processes labkit started (from any interpreter) that are still running."""
    out = []
    for f in sorted(_pid_dir().glob("*.json")):
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            f.unlink(missing_ok=True)
            continue
        ct = _create_time(int(info["pid"]))
        if ct is None or (info.get("create_time") and abs(ct - info["create_time"]) > 1.0):
            f.unlink(missing_ok=True)  # gone, or the pid was reused by something else
            continue
        info["pid_file"] = str(f)
        out.append(info)
    return out


def started_here() -> list[dict[str, Any]]:
    """Processes this interpreter (e.g. this notebook's kernel) started that are still running."""
    me = os.getpid()
    return [info for info in running() if info.get("parent") == me]


def stop_pid(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Stop one process labkit recorded, and its descendants; False if it was not running."""
    import psutil

    for f in _pid_dir().glob(f"*-{pid}.json"):
        f.unlink(missing_ok=True)
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    end_processes(procs, signal.SIGTERM, timeout_s)
    return True


def end_processes(procs: Sequence[Any], sig: int | None = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Send ``sig`` to each psutil process (None: send nothing, just wait), wait ``timeout_s``, SIGKILL the rest.

    Returns once every one of them is gone (or 3 s after the SIGKILL). Only for processes labkit
    started: the pid registry, a handle's tree, a cluster's recorded pids.
    """
    import psutil

    if sig is not None:
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
    _, alive = psutil.wait_procs(list(procs), timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=3.0)


def stop_all(timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop every process labkit started that is still running; return what was stopped."""
    return [f"{info['name']} (pid {info['pid']})" for info in running() if stop_pid(int(info["pid"]), timeout_s)]


def _stop_live() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        try:
            p.stop(timeout_s=5.0)
        except Exception:  # interpreter is exiting: best effort
            pass


atexit.register(_stop_live)


class Handle:
    """What every service start function returns: ``url``, ``pid``, ``logs()``, ``stop()``.

    ``process`` is None when the service is external (from an env var): ``stop()`` then does
    nothing, because labkit did not start it.
    """

    def __init__(self, name: str, url: str, process: ManagedProcess | None = None, extra: list[ManagedProcess] | None = None, started_s: float | None = None) -> None:
        self.name = name
        self.url = url
        self.process = process
        self.extra = extra or []
        self.started_s = started_s

    @property
    def external(self) -> bool:
        return self.process is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process.alive() if self.process else True

    def logs(self, n: int = LOG_TAIL_LINES) -> str:
        return self.process.logs(n) if self.process else f"{self.name} is external ({self.url}): see its own logs"

    def rss_mb(self) -> float:
        return sum(p.rss_mb() for p in [self.process, *self.extra] if p is not None)

    def stop(self) -> None:
        """Stop what labkit started for this service (nothing, if it is external)."""
        if self.process is not None:
            self.process.stop()
        for p in reversed(self.extra):
            p.stop()

    def __enter__(self: H) -> H:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = "external" if self.external else f"pid {self.pid}"
        return f"<{type(self).__name__} {self.name} {self.url} ({where})>"


# ---------------------------------------------------------------- process trees


def tree_pids(roots: Iterable[int]) -> list[int]:
    """The given pids and all their live descendants, each once."""
    import psutil

    out: dict[int, None] = {}
    for pid in roots:
        try:
            p = psutil.Process(pid)
            out[pid] = None
            for c in p.children(recursive=True):
                out[c.pid] = None
        except psutil.NoSuchProcess:
            continue
    return list(out)


def tree_rss_mb(roots: Iterable[int]) -> float:
    """Resident memory of ``roots`` and their descendants, in MB (2**20 bytes). Used in 14."""
    import psutil

    total = 0
    for pid in tree_pids(roots):
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def tree_cpu_s(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each process of the trees: ``{pid: seconds}``."""
    import psutil

    out = {}
    for pid in tree_pids(roots):
        try:
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def kill_descendant(roots: Iterable[int], *markers: str) -> str:
    """SIGKILL one process of the trees below ``roots`` whose name or command line contains a marker.

    Markers are tried in order (e.g. a busy Ray worker ``"ray::classify"``, then an idle
    ``"ray::IDLE"``); this interpreter is never chosen. Shown in 14 (killing a worker under load).
    """
    import psutil

    pids = [p for p in tree_pids(list(roots)) if p != os.getpid()]
    for marker in markers:
        for pid in pids:
            try:
                p = psutil.Process(pid)
                name = p.name()
                text = name + " " + " ".join(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if marker in text:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended between the look and the kill: try the next one
                    continue
                return f"{name} (pid {pid})"  # the name read before the kill: a killed process has none
    raise BadInput(f"no process matching {markers} below the given pids")


# ---------------------------------------------------------------- the clean-up check


def alive(pids: Iterable[int]) -> list[int]:
    """Those of ``pids`` that are still running (a zombie, dead but not yet reaped, is not)."""
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def assert_nothing_left(
    pids: Iterable[int] = (),
    extra: Callable[[], Sequence[str]] | None = None,
    before: Iterable[int] = (),
    quiet: bool = False,
) -> list[str]:
    """Fail (AssertionError) if anything this interpreter started is still running; else say so.

    Checks labkit's pid registry (``started_here()``, less the pids in ``before``), the given
    ``pids`` (workers of a pool, a server's process tree) and, when given, ``extra()``: descriptions
    of what else is alive (e.g. a Ray cluster's ``leftover``). Prints ``nothing left running: …``
    naming what was checked, unless ``quiet``; returns those names. Shown in the clean-up cell of
    00, 03–07, 09 and 14; tests/conftest.py checks every test with it.
    """
    skip = set(before)
    pids = list(pids)
    left = [f"{i['name']} (pid {i['pid']})" for i in started_here() if i["pid"] not in skip]
    left += [f"pid {pid}" for pid in alive(pids) if pid not in skip and pid != os.getpid()]
    if extra is not None:
        left += list(extra())
    if left:
        raise AssertionError(f"still running after clean-up: {', '.join(left)}")
    checked = ["labkit's pid registry"] + ([f"{len(pids)} given process(es)"] if pids else []) + (["the caller's own list"] if extra is not None else [])
    if not quiet:
        print(f"nothing left running: checked {', '.join(checked)}")
    return checked
