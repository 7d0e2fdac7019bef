"""Start the FastAPI gateway (``labkit.apps.gateway``) in front of the Celery workers, as a uvicorn subprocess.

    gw = gateway.start(broker_url=r.url, backend_url=r.url)
    httpx.post(gw.url + "/predict", json={"images": [[0.0] * 64], "model": "cnn"})

Used in 06 and ``labkit bench gateway``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from labkit.errors import ServiceUnavailable
from labkit.runtime import process

__all__ = ["GatewayHandle", "start"]


class GatewayHandle(process.Handle):
    """A running gateway: ``url`` (http://127.0.0.1:PORT), ``pid``, ``logs()``, ``stop()``."""

    def get(self, path: str, **kwargs: Any) -> Any:
        import httpx

        return httpx.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        import httpx

        return httpx.post(self.url + path, **kwargs)


def start(broker_url: str | None = None, backend_url: str | None = None, timeout_s: float = 60.0) -> GatewayHandle:
    """Run the gateway with uvicorn on a free port; ready when GET /readyz answers 200."""
    import httpx

    from labkit.services.celery import resolve_urls

    broker, backend = resolve_urls(broker_url, backend_url)
    port = process.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "uvicorn", "--factory", "labkit.apps.gateway:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    env = {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = process.start(f"gateway-{port}", cmd, env=env, ready=lambda: httpx.get(url + "/readyz", timeout=3).status_code == 200, timeout_s=timeout_s, install_hint="pip install fastapi uvicorn")
    if not proc.alive():
        raise ServiceUnavailable(f"gateway on port {port} exited", logs=proc.logs())
    return GatewayHandle("gateway", url, proc, started_s=time.perf_counter() - t0)
