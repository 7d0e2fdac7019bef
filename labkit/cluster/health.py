"""Is the local cluster healthy? One check per component, each a real request.

Ray: the GCS's node table (with the cluster's token); Celery: ``app.control.ping``; brokers: PING / an AMQP connection;
servers: a real prediction. Used by ``labkit cluster status`` and tests/test_cluster.py.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["celery_workers", "check", "ray_nodes"]


def ray_nodes(state: dict[str, Any], timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The alive Ray nodes of the cluster in ``state`` (node_id, address, resources), asked of its GCS.

    The GCS requires the token: this process gets ``RAY_AUTH_MODE=token`` and the token path first.
    """
    ray = state.get("ray")
    if not ray:
        return []
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN_PATH", ray["token_path"])
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    infos = GcsClient(address=ray["address"]).get_all_node_info(timeout=timeout_s)
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
