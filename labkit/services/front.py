"""Start the capstone's thin HTTP front (``labkit.apps.front``) as a uvicorn subprocess.

    fr = front.start("pool")                 # or "null", "in-process", "ray-tasks"
    httpx.post(fr.url + "/predict/cnn", json={"inputs": [[0.0] * 64]})
    fr.stop()                                # the whole tree: pool workers, Ray, all of it

Used in 14 and ``labkit bench capstone``.
"""

from __future__ import annotations

import sys
import time

from labkit.errors import BadInput
from labkit.runtime import process

__all__ = ["FrontHandle", "start"]


class FrontHandle(process.Handle):
    """A running front: ``url`` (http://127.0.0.1:PORT), ``pid``, ``backend``, ``logs()``, ``stop()``."""

    backend: str = "null"

    def predict_url(self, workload: str = "cnn") -> str:
        return f"{self.url}/predict/{workload}"


def start(backend: str = "null", n_workers: int = 2, timeout_s: float = 180.0) -> FrontHandle:
    """Run the front for ``backend`` on a free port; ready when a real prediction answers 200."""
    import httpx

    from labkit.apps.front import BACKENDS

    if backend not in BACKENDS:
        raise BadInput(f"backend must be one of {BACKENDS}, got {backend!r}")
    port = process.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "labkit.apps.front", "--backend", backend, "--port", str(port), "--workers", str(n_workers)]
    body = {"inputs": [[0.0] * 64], "tta": 1}
    t0 = time.perf_counter()
    proc = process.start(
        f"front-{backend}-{port}", cmd, env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "RAY_agent_register_timeout_ms": "120000"},
        ready=lambda: httpx.post(url + "/predict/cnn", json=body, timeout=30).status_code == 200,
        timeout_s=timeout_s, install_hint="pip install fastapi uvicorn",
    )  # fmt: skip
    handle = FrontHandle(f"front ({backend})", url, proc, started_s=time.perf_counter() - t0)
    handle.backend = backend
    return handle
