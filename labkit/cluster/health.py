"""Is the local cluster healthy? One check per component, each a real request.

Ray: the GCS's node table (with the cluster's token); Celery: ``app.control.ping``; brokers: PING / an AMQP connection;
servers: a real prediction. Used by ``labkit cluster status`` and tests/test_cluster.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

__all__ = ["celery_workers", "check", "ray_nodes"]


def ray_nodes(state: dict[str, Any], timeout_s: float = 10.0, at_least: int = 0) -> list[dict[str, Any]]:
    """The alive Ray nodes of the cluster in ``state`` (node_id, address, resources), asked of its GCS.

    The GCS requires the token, and Ray reads ``RAY_AUTH_MODE`` once per process (a process that
    already used Ray without auth cannot switch). So the question is asked by a short child
    process with the token in its environment; this process's environment is left as it was.
    ``at_least``: the child keeps asking (once a second, one Ray import) until that many nodes
    are alive or ``timeout_s`` has passed, then answers what it saw.
    """
    ray = state.get("ray")
    if not ray:
        return []
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": ray["token_path"]}
    env.pop("RAY_AUTH_TOKEN", None)
    cmd = [sys.executable, "-m", "labkit.cluster.health", ray["address"], str(timeout_s), str(at_least)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"asking the GCS at {ray['address']} for its nodes failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _alive_nodes(address: str, timeout_s: float, at_least: int = 0) -> list[dict[str, Any]]:
    """In the child: the GCS's alive nodes, asked again each second until ``at_least`` are alive or time is up."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            nodes = _ask_gcs(address, max(min(deadline - time.monotonic(), 10.0), 1.0))
        except Exception:  # a GCS still starting: ask again while waiting, raise once time is up
            if not at_least or time.monotonic() + 1.0 > deadline:
                raise
            nodes = []
        if len(nodes) >= at_least or time.monotonic() + 1.0 > deadline:
            return nodes
        time.sleep(1.0)


def _ask_gcs(address: str, timeout_s: float) -> list[dict[str, Any]]:
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    infos = GcsClient(address=address).get_all_node_info(timeout=timeout_s)
    out = []
    for node_id, info in infos.items():
        if info.state == 0:  # GcsNodeInfo.ALIVE
            out.append({"node_id": node_id.hex(), "address": info.node_manager_address, "resources": dict(info.resources_total)})
    return out


def celery_workers(state: dict[str, Any], timeout_s: float = 2.0) -> list[str]:
    """Node names of the cluster's Celery workers that answer a ping, over every broker."""
    from labkit.services import celery as celery_svc

    brokers = sorted({c["url"] for c in state.get("components", []) if c["kind"] == "celery-worker"})
    return sorted(name for b in brokers for name in celery_svc.ping(b, timeout_s=timeout_s))


def _server_ok(c: dict[str, Any]) -> bool:
    import httpx

    if c["name"] == "torchserve":
        return httpx.get(f"{c['url']}/ping", timeout=10).json().get("status") == "Healthy"
    if c["name"] == "tfserving":
        return httpx.get(f"{c['url']}/v1/models/digits", timeout=10).status_code == 200
    return False


def check(state: dict[str, Any]) -> dict[str, str]:
    """``{component: "ok" | "FAILED: why"}`` for everything in ``state``."""
    from labkit.runtime import process

    out: dict[str, str] = {}

    def run(name: str, ok: Any) -> None:
        try:
            out[name] = "ok" if ok() else "FAILED"
        except Exception as exc:  # a health check reports, it does not raise
            out[name] = f"FAILED: {type(exc).__name__}: {exc}"[:200]

    comps = state.get("components", [])
    dead = [f"{c['name']} (pid {c['pid']})" for c in comps if c.get("pid") and not process.alive([c["pid"]])]
    out["processes"] = "ok" if not dead else "FAILED: not running: " + ", ".join(dead)
    if state.get("ray"):
        want = len(state["ray"]["nodes"])
        run(f"ray ({want} nodes)", lambda: len(ray_nodes(state)) == want)
    workers = [c["name"] for c in comps if c["kind"] == "celery-worker"]
    if workers:
        run(f"celery ({len(workers)} workers)", lambda: set(workers) <= set(celery_workers(state)))
    for c in comps:
        if c["kind"] == "broker" and c["name"] == "redis":
            from labkit.services import redis

            run("redis", lambda c=c: redis.ping(c["url"]))
        elif c["kind"] == "broker" and c["name"] == "rabbitmq":
            from labkit.services import rabbitmq

            run("rabbitmq", lambda c=c: rabbitmq.amqp_ready(c["url"]))
        elif c["kind"] == "server":
            run(c["name"], lambda c=c: _server_ok(c))
    return out


if __name__ == "__main__":  # the child process of ray_nodes: python -m labkit.cluster.health ADDRESS TIMEOUT_S [AT_LEAST]
    print(json.dumps(_alive_nodes(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)))
