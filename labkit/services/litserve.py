"""LitServe from a notebook: one server per batching setting, on a free 127.0.0.1 port, nothing left behind.

``start(Setting(32, 5.0))`` runs ``labkit.apps.litserve_app`` as a managed child: LitServe's
FastAPI front, one inference worker with the wide model, batches of up to 32 requests
waiting at most 5 ms (``Setting(1)``: no batching). Ready means a real prediction succeeded.
LitServe fixes batching when the server starts, so a sweep starts one server per setting.

    with litserve.start(Setting(32, 5.0)) as srv:
        httpx.post(srv.predict_url, json=litserve.request_body(x[0]))   # {"label": k, "batch_size": n}
        srv.counters()                                                  # requests and batches, from /metrics

The server runs in the lab's own environment (LitServe installs next to everything else: one
package, no pins that conflict). It dies with its parent and ``stop()`` returns once the whole tree
(front, inference worker, logger process) is gone.

Shown in 13; used by ``labkit bench litserve`` and the capstone (14).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit import config
from labkit.errors import BadInput
from labkit.measure.batching import BatchingSweep, Served, Setting
from labkit.runtime import process
from labkit.services.torchserve import MetricSample, parse_metrics

__all__ = ["Counters", "LitServe", "batching_sweep", "counters", "request_body", "start"]

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0


def request_body(image: Any) -> dict[str, Any]:
    """One digit as the LitAPI's ``DigitRequest``: ``{"pixels": [64 floats]}``."""
    import numpy as np

    return {"pixels": np.asarray(image, dtype=np.float32).reshape(64).tolist()}


@dataclass(frozen=True)
class Counters:
    """What ``/metrics`` says: items predicted and model calls (batches)."""

    requests: float
    batches: float

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


def counters(samples: Sequence[MetricSample]) -> Counters:
    """``litserve_requests_total`` and ``litserve_batches_total`` from parsed metrics."""
    got = {s.name: s.value for s in samples}
    return Counters(got.get("litserve_requests_total", 0.0), got.get("litserve_batches_total", 0.0))


class LitServe(process.Handle):
    """A running LitServe: ``url``, ``predict_url``, ``metrics_url`` and its batching ``setting``."""

    def __init__(self, url: str, setting: Setting, proc: process.ManagedProcess | None = None, workdir: Path | None = None) -> None:
        super().__init__("litserve", url, proc)
        self.setting = setting
        self.workdir = workdir
        self.predict_url = f"{url}/predict"
        self.metrics_url = f"{url}/metrics/"
        self.stopped_s: float | None = None

    def predict(self, image: Any, timeout_s: float = 60.0) -> dict[str, Any]:
        """One digit's answer; a 4xx raises BadInput with LitServe's message."""
        import httpx

        r = httpx.post(self.predict_url, json=request_body(image), timeout=timeout_s)
        if r.status_code >= 400:
            raise BadInput(f"LitServe answered HTTP {r.status_code}: {r.text[:300]}")
        answer: dict[str, Any] = r.json()
        return answer

    def metrics(self) -> list[MetricSample]:
        """``GET /metrics/``, parsed (Prometheus text)."""
        import httpx

        return parse_metrics(httpx.get(self.metrics_url, timeout=30).text)

    def counters(self) -> Counters:
        """Items predicted and batches so far."""
        return counters(self.metrics())

    def stop(self) -> None:
        """SIGTERM to the front; it ends its worker and logger; the tree is gone when this returns."""
        if self.process is None:
            return
        t0 = time.monotonic()
        self.process.stop(timeout_s=STOP_TIMEOUT_S)
        self.stopped_s = time.monotonic() - t0


def start(setting: Setting = Setting(32, 5.0), width: int | None = None, threads: int = 1, timeout_s: float = START_TIMEOUT_S) -> LitServe:
    """Start LitServe with the wide model and this batching setting; ready once it predicts."""
    import httpx

    from labkit import needs
    from labkit.models import wide

    if not needs.status("litserve").ok:
        raise needs.unavailable("litserve")
    width = width or wide.WIDTH
    wide.wide_trained(width)  # fit and cache the readout here: the worker only loads it
    workdir = Path(tempfile.mkdtemp(prefix="litserve-", dir=config.cache_dir("litserve")))
    (workdir / "prometheus").mkdir()
    port = process.free_port()
    cmd = [sys.executable, "-m", "labkit.apps.litserve_app", "--port", str(port), "--width", str(width), "--threads", str(threads),
           "--max-batch-size", str(setting.max_batch_size), "--batch-timeout-ms", f"{setting.max_delay_ms:g}"]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus"), "OMP_NUM_THREADS": str(threads), "LABKIT_CACHE_DIR": str(config.cache_dir())}
    handle = LitServe(f"http://127.0.0.1:{port}", setting, workdir=workdir)
    probe = request_body([0.0] * 64)

    def ready() -> bool:
        return httpx.post(handle.predict_url, json=probe, timeout=30).status_code == 200

    t0 = time.monotonic()
    handle.process = process.start("litserve", cmd, env=env, cwd=workdir, ready=ready, timeout_s=timeout_s, install_hint="pip install litserve")
    handle.started_s = time.monotonic() - t0
    return handle


def batching_sweep(settings: Sequence[Setting], concurrencies: Sequence[int], images: Any, n_requests: int = 200, width: int | None = None, progress: bool = True) -> BatchingSweep:
    """One LitServe per setting, the same closed-loop load at each concurrency; the batches from the answers.

    Returns a ``measure.batching.BatchingSweep``; ``servers[label]`` holds each server's start-up
    time and its ``/metrics`` counters (requests vs batches). Shown in 13.
    """
    from labkit.measure import batching

    bodies = [request_body(x) for x in images]

    def check(resp: Any) -> str | None:
        return None if "label" in resp.json() else f"no label in {resp.text[:200]}"

    @contextlib.contextmanager
    def serve(setting: Setting) -> Iterator[Served]:
        with start(setting, width) as srv:
            def info() -> dict[str, Any]:
                c = srv.counters()
                return {"started_s": srv.started_s, "requests": c.requests, "batches": c.batches}

            yield Served(srv.predict_url, lambda i: bodies[i % len(bodies)], check, batch_size_of=lambda a: int(a["batch_size"]), info=info)

    if not settings:
        raise BadInput("a sweep needs at least one setting")
    return batching.sweep(list(settings), concurrencies, serve, n_requests, progress=progress, desc="LitServe sweep")
