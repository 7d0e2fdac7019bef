"""Ray nodes the way a cluster's machines start them: ``ray start --head`` and ``ray start --address``.

Token authentication, as Ray documents it (docs.ray.io › Ray token authentication, Ray ≥ 2.52):
``RAY_AUTH_MODE=token`` on **every** node and every driver, and the same token everywhere —
from ``RAY_AUTH_TOKEN`` (the value), ``RAY_AUTH_TOKEN_PATH`` (a file) or ``~/.ray/auth_token``
(what ``ray get-auth-token --generate`` writes), in that order of precedence. The harness writes
its own token file (never touching ``~/.ray``) and hands each node ``RAY_AUTH_TOKEN_PATH``.

Each node runs ``ray start … --block`` in the foreground: one process per node that owns its
raylet (and, on the head, the GCS) and takes them down on SIGTERM. Used by ``labkit cluster``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

from labkit.runtime.process import ManagedProcess, free_ports

__all__ = ["AUTH_ENV", "head_command", "node_env", "short_temp", "wait_started", "worker_command", "write_token"]

# Ray reads these (see the module docstring); the driver needs the same two.
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def write_token(path: Path) -> Path:
    """Write a fresh 256-bit token (hex, as ``ray get-auth-token --generate`` makes) to ``path``, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def short_temp(node_dir: Path, attempt: int = 1) -> Path:
    """The node's temp folder: short, in the system temp dir, linked from ``node_dir/ray``.

    Ray's AF_UNIX socket paths (and the dashboard's forkserver's, under TMPDIR) live there and
    must stay under 108 bytes. The supervisor removes it when the node stops.
    """
    temp = Path(tempfile.mkdtemp(prefix="lkray-"))
    (node_dir / f"ray-{attempt}").symlink_to(temp)
    return temp


def node_env(token_path: Path, temp: Path) -> dict[str, str]:
    """Environment of one node: token auth on, its own TMPDIR, fast teardown on SIGTERM."""
    tmp = temp / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "TMPDIR": str(tmp),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # a lab node: no drain wait on SIGTERM
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "OMP_NUM_THREADS": "1",
        "RAY_agent_register_timeout_ms": "120000",  # a loaded 2-core machine: agents import slowly
        "RAY_raylet_start_wait_time_s": "120",
    }


def wait_started(proc: ManagedProcess, temp: Path, timeout_s: float) -> bool:
    """Wait for ``ray start`` to print "Ray runtime started"; False at once if it exits or its raylet aborts.

    A raylet waits only 15 s (hard-coded in Ray 2.60) for its dashboard and runtime-env agents
    to write their port files; on a loaded machine they can take longer, and the raylet aborts
    ("Timed out waiting for file ..."). ``ray start`` would then wait minutes: give up early.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "Ray runtime started" in proc.logs(400):
            return True
        if not proc.alive():
            return False
        for log in temp.glob("session_*/logs/raylet.out"):
            if "Check failed" in log.read_text(errors="replace"):
                return False
        time.sleep(0.5)
    return False


def _ray() -> list[str]:
    exe = Path(sys.executable).parent / "ray"
    return [str(exe)] if exe.exists() else [shutil.which("ray") or "ray"]


def _node_flags(temp: Path, num_cpus: int, resources: dict[str, float]) -> list[str]:
    agent, agent_grpc, runtime_env, metrics = free_ports(4)
    return [
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        f"--resources={json.dumps(resources)}",
        f"--temp-dir={temp}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        "--disable-usage-stats",
        "--block",
    ]


def head_command(temp: Path, port: int, num_cpus: int = 1, resources: dict[str, float] | None = None) -> list[str]:
    """``ray start --head`` on ``port``, without the dashboard's web UI (nine more processes; the GCS answers health checks)."""
    client_port, dashboard_port = free_ports(2)  # without the UI a minimal dashboard still binds (8265 by default)
    return [
        *_ray(), "start", "--head", f"--port={port}", "--include-dashboard=false", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={client_port}",
        *_node_flags(temp, num_cpus, resources or {}),
    ]  # fmt: skip


def worker_command(head_address: str, temp: Path, num_cpus: int = 1, resources: dict[str, float] | None = None) -> list[str]:
    """``ray start --address=HEAD:PORT``: join the head's cluster as one more node."""
    return [*_ray(), "start", f"--address={head_address}", *_node_flags(temp, num_cpus, resources or {})]
