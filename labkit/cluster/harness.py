"""A local multi-node cluster on 127.0.0.1, started apart from any notebook: ``up``, ``status``, ``down``.

    c = cluster.up(ray_nodes=2, celery_workers=2)     # a supervisor process owns every node
    print(c.exports())                                 # export RAY_ADDRESS=... lines for a shell
    ...                                                # run notebooks with c.env set
    c.down()                                           # everything stopped; raises if a pid is left

``labkit cluster up`` runs the same supervisor detached (it outlives the command) and records it
in ``<cache>/cluster/current.json``; ``labkit cluster status`` / ``down`` find it there.
Used in 07 and 04 (Beyond one machine), README "Run on a cluster", tests/test_cluster.py.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from labkit import config
from labkit.errors import BadInput, ServiceUnavailable
from labkit.runtime import process

__all__ = ["Cluster", "current", "up"]

UP_TIMEOUT_S = 1200.0  # a loaded 2-core machine: TF, torch and Java each import for minutes
DOWN_TIMEOUT_S = 120.0


def _pointer() -> Path:
    return config.cache_dir("cluster") / "current.json"


class Cluster:
    """A running local cluster: ``state`` (from its state file), ``env``, ``exports()``, ``health()``, ``down()``."""

    def __init__(self, state_path: Path, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.state_path = Path(state_path)
        self.popen = popen

    @property
    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_path.read_text()))

    @property
    def supervisor_pid(self) -> int:
        return int(self.state["supervisor_pid"])

    @property
    def env(self) -> dict[str, str]:
        """The environment variables a notebook (or any driver) needs to use this cluster."""
        return {k: v for k, v in self.state["env"].items() if v}

    def exports(self) -> str:
        """``export NAME=value`` lines for a shell."""
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))

    def running(self) -> bool:
        return bool(process.alive([self.supervisor_pid]))

    def pids(self) -> list[int]:
        """Every process of the cluster now: the supervisor and all its descendants."""
        return process.tree_pids([self.supervisor_pid]) if self.running() else []

    def health(self) -> dict[str, str]:
        """One line per component: ``ok`` or why not (see labkit.cluster.health)."""
        from labkit.cluster import health

        if not self.running():
            return {"supervisor": f"FAILED: pid {self.supervisor_pid} is not running"}
        return {"supervisor": "ok", **health.check(self.state)}

    def healthy(self) -> bool:
        return all(v == "ok" for v in self.health().values())

    def down(self, timeout_s: float = DOWN_TIMEOUT_S) -> list[int]:
        """Stop everything and wait; return the pids that had to be SIGKILLed (empty: a clean stop).

        Raises AssertionError if any process of the cluster is still alive afterwards.
        """
        import psutil

        pids = self.pids()
        if pids:
            os.kill(self.supervisor_pid, signal.SIGTERM)
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        killed = [p.pid for p in alive]
        process.end_processes(alive, signal.SIGKILL, timeout_s=5.0)
        if self.popen is not None:
            self.popen.wait(timeout=10)
        left = process.alive(pids)
        if _pointer().exists() and json.loads(_pointer().read_text()).get("state") == str(self.state_path):
            _pointer().unlink(missing_ok=True)
        if left:
            raise AssertionError(f"cluster processes still running after down: {left}")
        return killed

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __repr__(self) -> str:
        s = self.state
        return f"<Cluster {s['status']} supervisor pid {s['supervisor_pid']}, {len(s['components'])} components, {s['root']}>"


def up(
    ray_nodes: int = 2,
    ray_cpus: int = 1,
    celery_workers: int = 2,
    rabbitmq: bool = True,
    torchserve: bool = True,
    tfserving: bool = True,
    detach: bool = False,
    timeout_s: float = UP_TIMEOUT_S,
) -> Cluster:
    """Start the supervisor and wait until every component is ready; return the cluster.

    ``ray_nodes`` Ray nodes (a head and ``ray_nodes - 1`` workers, ``ray_cpus`` CPUs and a
    ``host_<name>`` resource each), ``celery_workers`` workers per broker (Redis, and RabbitMQ if
    ``rabbitmq``), one TorchServe and one TF Serving. 0 / False leaves a part out. ``detach``
    lets the cluster outlive this process (``labkit cluster up``); otherwise it dies with it.
    """
    if ray_nodes < 0 or celery_workers < 0 or ray_nodes > 8 or celery_workers > 8:
        raise BadInput("ray_nodes and celery_workers must be in 0..8")
    root = config.cache_dir("cluster", time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    spec = {"root": str(root), "ray_nodes": ray_nodes, "ray_cpus": ray_cpus, "celery_workers": celery_workers, "rabbitmq": rabbitmq, "torchserve": torchserve, "tfserving": tfserving}
    spec_path, state_path = root / "spec.json", root / "state.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = {k: v for k, v in os.environ.items() if k not in config.EXTERNAL_SERVICE_VARS}
    with open(root / "supervisor.log", "wb") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "labkit.cluster.supervisor", str(spec_path), str(state_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
            preexec_fn=None if detach else process.die_with_parent,
        )  # fmt: skip
    cluster = Cluster(state_path, popen)
    deadline = time.monotonic() + timeout_s
    while True:
        status = json.loads(state_path.read_text())["status"] if state_path.exists() else "starting"
        if status == "ready":
            break
        if status in ("failed", "stopped") or popen.poll() is not None:
            popen.wait(timeout=DOWN_TIMEOUT_S)
            detail = json.loads(state_path.read_text()).get("error", "") if state_path.exists() else ""
            tail = (root / "supervisor.log").read_text(errors="replace")[-2000:]
            raise ServiceUnavailable(f"the local cluster did not start: {detail or f'supervisor exited {popen.returncode}'}", logs=tail)
        if time.monotonic() > deadline:
            cluster.down()
            raise ServiceUnavailable(f"the local cluster was not ready after {timeout_s:.0f} s", logs=(root / "supervisor.log").read_text(errors="replace")[-2000:])
        time.sleep(0.5)
    if detach:
        _pointer().write_text(json.dumps({"state": str(state_path), "supervisor_pid": popen.pid}))
    return cluster


def current() -> Cluster | None:
    """The cluster ``labkit cluster up`` started (None if none is recorded or it is gone)."""
    p = _pointer()
    if not p.exists():
        return None
    info = json.loads(p.read_text())
    c = Cluster(Path(info["state"]))
    if not Path(info["state"]).exists() or not c.running():
        p.unlink(missing_ok=True)
        return None
    return c
