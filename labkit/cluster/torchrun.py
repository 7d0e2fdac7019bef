"""torch.distributed across "nodes": one ``torchrun`` launcher per node, rendezvous over c10d.

    result = torchrun.launch(nnodes=2)        # runs labkit.patterns.multinode on every node
    result.ranks                              # {0: {...}, 1: {...}} as each rank reported

Each launcher is what you would type on one machine::

    torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=HEAD:PORT \\
             --rdzv-id=JOB -m labkit.patterns.multinode --out DIR

here on 127.0.0.1, each in its own working directory and TMPDIR. Used in 04 and tests/test_cluster.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit import config
from labkit.errors import ServiceUnavailable
from labkit.runtime import process

__all__ = ["TorchrunResult", "command", "launch"]

DEFAULT_MODULE = "labkit.patterns.multinode"


@dataclass
class TorchrunResult:
    """What every rank wrote (``ranks``), each launcher's exit code and log tail, and the wall time."""

    ranks: dict[int, dict[str, Any]]
    returncodes: list[int | None]
    logs: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    commands: list[list[str]] = field(default_factory=list)


def command(nnodes: int, endpoint: str, run_id: str, module: str, args: list[str]) -> list[str]:
    """The torchrun command line one node runs."""
    exe = Path(sys.executable).parent / "torchrun"
    launcher = [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, f"--nnodes={nnodes}", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", "-m", module, *args]


def launch(nnodes: int = 2, module: str = DEFAULT_MODULE, args: list[str] | None = None, timeout_s: float = 300.0) -> TorchrunResult:
    """Start ``nnodes`` torchrun launchers (node 0 hosts the c10d store), wait for all, collect ranks.

    Shown in 04 (Beyond one machine).
    """
    out = Path(tempfile.mkdtemp(prefix="torchrun-", dir=config.cache_dir("cluster")))
    endpoint = f"127.0.0.1:{process.free_port()}"
    run_id = out.name
    cmds, procs = [], []
    t0 = time.monotonic()
    try:
        for node in range(nnodes):
            node_dir = out / f"node{node}"
            (node_dir / "tmp").mkdir(parents=True)
            cmd = command(nnodes, endpoint, run_id, module, [*(args or []), "--out", str(out / "ranks")])
            env = {"OMP_NUM_THREADS": "1", "TMPDIR": str(node_dir / "tmp"), "PYTHONUNBUFFERED": "1"}
            cmds.append(cmd)
            procs.append(process.start(f"torchrun-node{node}", cmd, env=env, cwd=node_dir))
        deadline = time.monotonic() + timeout_s
        while any(p.alive() for p in procs):
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"torchrun on {nnodes} nodes did not finish in {timeout_s:.0f} s", logs="\n".join(p.logs() for p in procs))
            time.sleep(0.2)
    finally:
        for p in procs:
            p.stop(timeout_s=5.0)
    ranks = {}
    for f in sorted((out / "ranks").glob("rank-*.json")):
        r = json.loads(f.read_text())
        ranks[int(r["rank"])] = r
    return TorchrunResult(ranks, [p.returncode for p in procs], [p.logs(20) for p in procs], time.monotonic() - t0, cmds)
