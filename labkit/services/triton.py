"""NVIDIA Triton Inference Server from a notebook: the real ``tritonserver``, in its own environment.

Triton comes from the PyPI wheel ``nvidia-pytriton`` (it bundles the ``tritonserver`` binary and
its Python backend). PyTriton pins numpy < 2 while the lab runs numpy 2, so it lives in its own
virtual environment, ``.venv-triton`` (``make triton``; ``make lab`` and ``make test`` build it),
the way a deployment runs a server in its own image. ``start()`` runs ``labkit.apps.triton_app``
with that environment's Python: it binds the wide model once per batching setting and
serves them on free 127.0.0.1 ports (HTTP, gRPC, metrics). The lab's own Python only talks to it
over HTTP — the KServe v2 protocol Triton speaks:

    with triton.start([Setting(1), Setting(32, 2)]) as tr:
        httpx.get(f"{tr.url}/v2/health/ready")                           # 200 once every model is loaded
        httpx.post(tr.infer_url("wide_b32_d2000"), json=triton.request_body(images))
        triton.parse_metrics(httpx.get(f"{tr.metrics_url}/metrics").text)  # nv_inference_* counters

The server dies with its parent (``die_with_parent``; on SIGTERM it stops ``tritonserver`` and
kills the rest of its process group), and ``stop()`` returns once the whole tree is gone.

Shown in 12; used by ``labkit bench triton`` and the capstone (14).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit import config
from labkit.errors import BadInput
from labkit.measure.batching import BatchingSweep, Served, Setting
from labkit.runtime import process
from labkit.services.torchserve import MetricSample, parse_metrics

__all__ = [
    "ROOT",
    "VENV",
    "Counters",
    "MetricSample",
    "Triton",
    "batching_sweep",
    "counters",
    "model_name",
    "parse_metrics",
    "python",
    "request_body",
    "start",
]

ROOT = Path(__file__).resolve().parent.parent.parent
VENV = ROOT / ".venv-triton"
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0
INSTALL_HINT = "make triton  (a separate venv, .venv-triton, with nvidia-pytriton: it pins numpy < 2)"


def python() -> str | None:
    """The Python of ``.venv-triton`` if PyTriton is installed there, else None."""
    exe = VENV / "bin" / "python"
    if not exe.exists() or not any(VENV.glob("lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver")):
        return None
    return str(exe)


def model_name(setting: Setting) -> str:
    """The name a batching setting is bound under: ``wide_b1_d0``, ``wide_b32_d2000`` (delay in µs)."""
    return f"wide_b{setting.max_batch_size}_d{round(setting.max_delay_ms * 1000)}"


def request_body(images: Any) -> dict[str, Any]:
    """A KServe v2 inference request: one FP32 input ``pixels`` of shape (N, 64)."""
    import numpy as np

    x = np.asarray(images, dtype=np.float32).reshape(-1, 64)
    return {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def _output(answer: dict[str, Any], name: str) -> list[int]:
    for out in answer.get("outputs", []):
        if out.get("name") == name:
            return [int(v) for v in out["data"]]
    raise BadInput(f"no output {name!r} in Triton's answer {str(answer)[:200]}")


@dataclass(frozen=True)
class Counters:
    """Triton's per-model counters: requests answered, inferences (items) and model executions (batches)."""

    success: float
    inferences: float
    executions: float

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0


def counters(samples: Iterable[MetricSample], model: str) -> Counters:
    """``nv_inference_request_success``, ``nv_inference_count`` and ``nv_inference_exec_count`` of ``model``."""
    got = {"nv_inference_request_success": 0.0, "nv_inference_count": 0.0, "nv_inference_exec_count": 0.0}
    for s in samples:
        if s.name in got and s.labels.get("model") == model:
            got[s.name] += s.value
    return Counters(got["nv_inference_request_success"], got["nv_inference_count"], got["nv_inference_exec_count"])


class Triton(process.Handle):
    """A running Triton: ``url`` (HTTP), ``grpc_address``, ``metrics_url``, the bound ``models``."""

    def __init__(self, url: str, grpc_address: str, metrics_url: str, models: dict[str, Setting], proc: process.ManagedProcess | None = None, workdir: Path | None = None) -> None:
        super().__init__("triton", url, proc)
        self.grpc_address = grpc_address
        self.metrics_url = metrics_url
        self.models = models
        self.workdir = workdir
        self.stopped_s: float | None = None

    def infer_url(self, model: str) -> str:
        """``POST /v2/models/NAME/infer`` (KServe v2)."""
        return f"{self.url}/v2/models/{model}/infer"

    def predict(self, model: str, images: Any, timeout_s: float = 60.0) -> list[int]:
        """Labels for a batch of images (one request, shape (N, 64)); a 4xx raises BadInput with Triton's message."""
        import httpx

        r = httpx.post(self.infer_url(model), json=request_body(images), timeout=timeout_s)
        if r.status_code >= 400:
            raise BadInput(f"Triton answered HTTP {r.status_code}: {r.text[:300]}")
        return _output(r.json(), "label")

    def metrics(self) -> list[MetricSample]:
        """``GET /metrics`` on the metrics port, parsed (Prometheus text)."""
        import httpx

        return parse_metrics(httpx.get(f"{self.metrics_url}/metrics", timeout=30).text)

    def counters(self, model: str) -> Counters:
        """Requests, inferences and executions of ``model`` so far (from ``/metrics``)."""
        return counters(self.metrics(), model)

    def stop(self) -> None:
        """SIGTERM: Triton unloads its models and exits; the tree is gone when this returns."""
        if self.process is None:
            return
        t0 = time.monotonic()
        self.process.stop(timeout_s=STOP_TIMEOUT_S)
        self.stopped_s = time.monotonic() - t0


def start(settings: Sequence[Setting] = (Setting(1), Setting(32, 2.0)), width: int | None = None, threads: int = 1, timeout_s: float = START_TIMEOUT_S) -> Triton:
    """Start Triton with the wide model bound once per batching setting; ready when every model is.

    ``Setting(1)``: no batching (``max_batch_size`` 1); ``Setting(32, 2.0)``: Triton's dynamic
    batcher, batches of up to 32, waiting up to 2 ms. ``handle.started_s`` is start → ready.
    """
    import httpx

    from labkit import needs
    from labkit.models import wide

    exe = python()
    if exe is None:
        raise needs.unavailable("triton", "Triton runs from .venv-triton")
    if not settings:
        raise BadInput("start() needs at least one batching setting")
    width = width or wide.WIDTH
    wide.wide_trained(width)  # fit and cache the readout here: the server only loads it
    models = {model_name(s): s for s in settings}
    workdir = Path(tempfile.mkdtemp(prefix="triton-", dir=config.cache_dir("triton")))
    http, grpc, metrics = process.free_ports(3)
    cmd = [exe, "-m", "labkit.apps.triton_app", "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
           "--width", str(width), "--threads", str(threads), "--workspace", str(workdir / "workspace")]
    for name, s in models.items():
        cmd += ["--model", f"{name}:{s.max_batch_size}:{round(s.max_delay_ms * 1000)}"]
    env = {"PYTHONPATH": str(ROOT), "LABKIT_CACHE_DIR": str(config.cache_dir()), "OMP_NUM_THREADS": str(threads), "PYTHONNOUSERSITE": "1"}
    url = f"http://127.0.0.1:{http}"

    def ready() -> bool:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200 and all(
            httpx.get(f"{url}/v2/models/{m}/ready", timeout=5).status_code == 200 for m in models
        )

    t0 = time.monotonic()
    proc = process.start("triton", cmd, env=env, cwd=workdir, ready=ready, timeout_s=timeout_s, install_hint=INSTALL_HINT)
    handle = Triton(url, f"127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}", models, proc, workdir)
    handle.started_s = time.monotonic() - t0
    return handle


def batching_sweep(tr: Triton, concurrencies: Sequence[int], images: Any, n_requests: int = 200, progress: bool = True) -> BatchingSweep:
    """A perf_analyzer-style sweep: every bound setting at every concurrency, closed loop, one image a request.

    Returns a ``measure.batching.BatchingSweep`` (the rows every server's sweep has); the batch
    sizes come from each answer's ``batch_size`` output, and ``servers[label]`` holds Triton's
    own counters for that model (requests vs executions: fewer executions = batching happened).

    Shown in 12.
    """
    from labkit.measure import batching

    bodies = [request_body(x[None]) for x in images]

    def check(resp: Any) -> str | None:
        answer = resp.json()
        return None if any(o.get("name") == "label" for o in answer.get("outputs", [])) else f"no label in {str(answer)[:200]}"

    @contextlib.contextmanager
    def serve(setting: Setting) -> Iterator[Served]:
        name = model_name(setting)
        if name not in tr.models:
            raise BadInput(f"{setting.label} is not bound in this Triton; bound: {sorted(tr.models)}")
        yield Served(tr.infer_url(name), lambda i: bodies[i % len(bodies)], check,
                     batch_size_of=lambda answer: _output(answer, "batch_size")[0],
                     info=lambda: tr.counters(name).__dict__)

    return batching.sweep(list(tr.models.values()), concurrencies, serve, n_requests, progress=progress, desc="Triton sweep")
