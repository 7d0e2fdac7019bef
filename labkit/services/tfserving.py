"""TensorFlow Serving for notebooks 10 and 14: external, the real binary, or labkit's stand-in.

Order: ``TFSERVING_URL`` set → use that server (REST; gRPC at ``TFSERVING_GRPC`` if set);
``tensorflow_model_server`` on PATH → start the real binary; else start labkit's stand-in
(``labkit tfserving``) as a managed subprocess. The stand-in follows **tensorflow_model_server
2.20.0** (``UPSTREAM``): its REST routes, HTTP statuses, error bodies and gRPC codes are ported
from that release's sources and checked by its own test cases (tests/test_tfserving_upstream.py).
``handle.label`` says which server answered, for every printed figure and plot title.
Ready means a real prediction succeeded.

    with tfserving.start(model_base_path=savedmodels.export_versions()) as tfs:
        httpx.post(f"{tfs.url}/v1/models/digits:predict", json={"instances": [[0.0] * 64]})
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from labkit import config
from labkit.errors import BadInput, ServiceUnavailable
from labkit.runtime import process

__all__ = ["STAND_IN", "UPSTREAM", "TFServingHandle", "start"]

READY_TIMEOUT_S = 120.0
REAL_BINARY = "tensorflow_model_server"
UPSTREAM = "tensorflow_model_server 2.20.0"
STAND_IN = f"labkit stand-in (follows {UPSTREAM})"


class TFServingHandle(process.Handle):
    """A TF Serving endpoint: ``url`` is the REST base, ``grpc_target`` is host:port for gRPC."""

    def __init__(self, url: str, grpc_target: str | None, model_name: str, proc: process.ManagedProcess | None, kind: str, started_s: float | None = None) -> None:
        super().__init__("tfserving", url, proc, started_s=started_s)
        self.grpc_target = grpc_target
        self.model_name = model_name
        self.kind = kind

    @property
    def label(self) -> str:
        """Which server this is, for figures: the stand-in says so and names the release it follows."""
        if self.kind == "external":
            return f"TF Serving at {self.url}"
        return self.kind

    @property
    def is_stand_in(self) -> bool:
        return self.kind == STAND_IN

    def predict_url(self, version: int | None = None, label: str | None = None) -> str:
        """REST predict URL for the model, optionally pinned to a version or a label."""
        if version is not None and label is not None:
            raise BadInput("give a version or a label, not both")
        middle = f"/versions/{version}" if version is not None else (f"/labels/{label}" if label else "")
        return f"{self.url}/v1/models/{self.model_name}{middle}:predict"

    def check_alive(self) -> None:
        """Raise ServiceUnavailable (with the server's last log lines) if the server died."""
        if self.process is not None and not self.process.alive():
            raise ServiceUnavailable(f"TF Serving (pid {self.process.pid}) exited with code {self.process.returncode}", logs=self.process.logs())


def _probe(url: str) -> bool:
    import httpx

    r = httpx.post(url, json={"instances": [[0.0] * 64]}, timeout=5)
    return r.status_code == 200 and "predictions" in r.json()


def _serves(handle: TFServingHandle) -> None:
    """Raise ServiceUnavailable unless the external server at ``handle.url`` has ``handle.model_name`` loaded."""
    import httpx

    try:
        r = httpx.get(f"{handle.url}/v1/models/{handle.model_name}", timeout=10)
    except httpx.HTTPError as exc:
        raise ServiceUnavailable(f"TFSERVING_URL={handle.url} does not answer ({exc})", "start that server, or unset TFSERVING_URL to start one here") from exc
    if r.status_code != 200:
        raise ServiceUnavailable(
            f"the TF Serving at {handle.url} serves no model {handle.model_name!r} (HTTP {r.status_code})",
            f"load it there (labkit.models.savedmodels.export_versions(model_name={handle.model_name!r}) writes it), or unset TFSERVING_URL",
        )


def start(
    model_base_path: str | Path | None = None,
    model_name: str = "digits",
    enable_batching: bool = False,
    max_batch_size: int = 32,
    batch_timeout_micros: int = 2000,
    num_batch_threads: int = 1,
    model_config_file: str | Path | None = None,
    poll_s: float = 1.0,
    timeout_s: float = READY_TIMEOUT_S,
) -> TFServingHandle:
    """Start (or find) a TF Serving with REST and gRPC on free 127.0.0.1 ports; wait until it predicts."""
    external = config.external_url("TFSERVING_URL")
    if external:
        handle = TFServingHandle(external.rstrip("/"), os.environ.get("TFSERVING_GRPC") or None, model_name, None, "external")
        _serves(handle)
        process.wait_until(lambda: _probe(handle.predict_url()), 30, f"TF Serving at {external}")
        return handle
    if model_base_path is None and model_config_file is None:
        from labkit.models import savedmodels

        model_base_path = savedmodels.export_versions(model_name=model_name)
    rest_port, grpc_port = process.free_ports(2)
    flags = [f"--port={grpc_port}", f"--rest_api_port={rest_port}", f"--file_system_poll_wait_seconds={poll_s:g}"]
    if model_config_file is not None:
        flags.append(f"--model_config_file={model_config_file}")
    else:
        flags += [f"--model_name={model_name}", f"--model_base_path={model_base_path}"]
    real = shutil.which(REAL_BINARY)
    if enable_batching:  # the real binary reads these from a batching parameters file only
        params = config.cache_dir("tfserving") / f"batching-{max_batch_size}-{batch_timeout_micros}-{num_batch_threads}.txt"
        params.write_text(f"max_batch_size {{ value: {max_batch_size} }}\nbatch_timeout_micros {{ value: {batch_timeout_micros} }}\nnum_batch_threads {{ value: {num_batch_threads} }}\n")
        flags += ["--enable_batching", f"--batching_parameters_file={params}"]
    cmd = [real, *flags] if real else [sys.executable, "-m", "labkit", "tfserving", *flags]
    url = f"http://127.0.0.1:{rest_port}"
    t0 = time.monotonic()
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    predict = f"{url}/v1/models/{model_name}:predict"
    proc = process.start("tfserving", cmd, env=env, ready=lambda: _probe(predict), timeout_s=timeout_s, install_hint="pip install tensorflow-cpu; pip install --no-deps tensorflow-serving-api")
    return TFServingHandle(url, f"127.0.0.1:{grpc_port}", model_name, proc, "tensorflow_model_server" if real else STAND_IN, started_s=time.monotonic() - t0)
