"""The capstone's options: one small entry per row, each with the deployment code it really needs.

Every entry names the row (what it is in its name: "emulated", "stand-in", "null server"...), its
family (for the seed's opinion columns), its kind (``capstone.KINDS``), the ``labkit.needs`` key
of the component it cannot run without, and a deploy function returning a ``capstone.Deployed``.
Notebook 14 shows the deploy functions (``labkit.show``) and counts their lines; ``labkit bench
capstone`` runs a subset. A new server is one more ``Option(...)`` line in ``options()``.

On a cluster (``labkit cluster up``, or real machines: README "Run on a cluster") the options
with an external form use it when its variable is set, through the same service calls: Celery
on ``REDIS_URL`` / ``RABBITMQ_URL`` with the cluster's workers (``LABKIT_CELERY_WORKERS=external``;
the gateway, a client of the broker, still starts here), the front's Ray tasks and Ray Serve on
``RAY_ADDRESS`` (Serve's apps are deleted at stop), TorchServe on ``TORCHSERVE_URL`` (the
capstone's models registered there and unregistered at stop) and TF Serving on
``TFSERVING_URL``. Such a row says so (``external``) and kills no worker (``EXTERNAL_KILL_NOTE``).
Shown in 14.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labkit.measure import capstone
from labkit.measure.capstone import Deployed

__all__ = [
    "DEPLOY_DIR",
    "EXTERNAL_KILL_NOTE",
    "KUBE_FILES",
    "N_WORKERS",
    "ONLY_FAMILIES_ENV",
    "TF_STAND_IN",
    "Option",
    "deploy_celery",
    "deploy_celery_rabbitmq",
    "deploy_floor",
    "deploy_front_in_process",
    "deploy_front_pool",
    "deploy_front_ray_tasks",
    "deploy_kubernetes",
    "deploy_kubernetes_retrying",
    "deploy_litserve",
    "deploy_loc",
    "deploy_null",
    "deploy_ray_serve",
    "deploy_tfserving",
    "deploy_torchserve",
    "deploy_triton",
    "left_out",
    "on_cluster",
    "options",
]

N_WORKERS = 2  # workers / replicas per option: one per core
DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
# What a Kubernetes user writes besides the Python: the image and the base manifests (notebook 08).
KUBE_FILES = ("Dockerfile", "k8s/base/deployment.yaml", "k8s/base/service.yaml", "k8s/base/hpa.yaml", "k8s/base/kustomization.yaml")
TF_STAND_IN = "TF Serving stand-in (labkit, follows 2.20.0)"
# On a machine at load 20+ on 2 cores the raylet gave up waiting for its metrics agent ("Timed out
# waiting for file .../metrics_agent_port"; Ray's check node_manager.cc:3576) and Ray never started.
RAY_AGENT_TIMEOUT_MS = 120_000
# The recovery column of a row whose workers belong to an external cluster (the cluster's to restart).
EXTERNAL_KILL_NOTE = "not measured: external workers ({}) belong to the cluster; killing one is not this notebook's business"


@dataclass(frozen=True)
class Option:
    """One row of the capstone: name, family, kind, the needs key (None: always here), deploy()."""

    name: str
    family: str
    kind: str
    what: str
    deploy: Callable[[], Deployed]
    needs: str | None = None
    files: Sequence[str] = field(default_factory=tuple)  # files under deploy/ that count as its code
    uses: Sequence[Callable[..., Any]] = field(default_factory=tuple)  # functions its deploy calls, counted too

    def __post_init__(self) -> None:
        if self.kind not in capstone.KINDS:
            raise ValueError(f"kind must be one of {capstone.KINDS}, got {self.kind!r}")


# region: floor-and-front
def deploy_floor() -> Deployed:
    """The model in the caller's own threads: no HTTP, no JSON. The floor every row is above."""
    from labkit.models import digit_nets, wide

    cnn = digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False)
    big = wide.wide_trained()
    return Deployed(call=lambda x: int(digit_nets.predict(cnn, x[None])[0]), wide_call=lambda x: int(big.predict(x[None])[0]),
                    stop=lambda: None, in_process=True, kill_note="n/a: no worker (a crash is the caller's crash)")


def _front(backend: str, **kw: Any) -> Deployed:
    from labkit.services import front

    fr = front.start(backend, n_workers=N_WORKERS)
    return Deployed(url=fr.predict_url("cnn"), wide_url=fr.predict_url("wide"), codec="model-server", stop=fr.stop, pids=lambda: [fr.pid], **kw)  # type: ignore[list-item]


def deploy_null() -> Deployed:
    """The thin FastAPI front with nothing behind it: JSON in, JSON out. The ceiling of every HTTP row."""
    return _front("null", check=False, kill_note="n/a: no model behind it")


def deploy_front_in_process() -> Deployed:
    """The same front, the model in its own threads."""
    return _front("in-process", kill_note="n/a: one process (restarting it is a supervisor's job)")


def deploy_front_pool() -> Deployed:
    """The same front over notebook 05's ResilientPool: a killed worker's pool is rebuilt and the task resubmitted."""
    from labkit.runtime import process

    d = _front("pool")
    front_pid = next(iter(d.pids()))
    d.kill = lambda: process.kill_descendant([front_pid], "spawn_main")
    return d


def deploy_front_ray_tasks() -> Deployed:
    """The same front; one ``@ray.remote(max_retries=3)`` task per request on a Ray the front started (or ``RAY_ADDRESS``'s)."""
    from labkit import config
    from labkit.runtime import process

    d = _front("ray-tasks")
    if cluster := config.external_url("RAY_ADDRESS"):  # the front joined it
        return on_cluster(d, f"the Ray cluster at {cluster} (RAY_ADDRESS); the front runs here", "the cluster's Ray workers")
    front_pid = next(iter(d.pids()))
    d.kill = lambda: process.kill_descendant([front_pid], "ray::classify", "ray::IDLE")
    return d
# endregion


# region: servers
def deploy_celery(broker_kind: str = "redis") -> Deployed:
    """Celery workers behind the FastAPI gateway (06), on Redis or RabbitMQ; results in Redis. The CNN only."""
    from labkit.services import celery as celery_svc
    from labkit.services import gateway, rabbitmq, redis

    backend = redis.start()  # REDIS_URL, if set
    broker = rabbitmq.start() if broker_kind == "rabbitmq" else backend  # RABBITMQ_URL, if set
    workers = celery_svc.start_workers(N_WORKERS, broker_url=broker.url, backend_url=backend.url, prefix="mq" if broker_kind == "rabbitmq" else "w")
    gw = gateway.start(broker.url, backend.url)
    handles = [gw, *workers, *([broker] if broker is not backend else []), backend]

    def kill() -> str:
        workers[0].kill()
        return workers[0].nodename

    d = Deployed(url=gw.url + "/predict", codec="gateway", stop=lambda: _stop_all(handles),
                 pids=lambda: [h.pid for h in handles if h.pid], kill=kill)
    if workers[0].external or broker.external:
        names = ", ".join(w.nodename for w in workers)
        return on_cluster(d, f"{broker.name} at {_host(broker.url)}, workers {names}; the gateway runs here", names if workers[0].external else None)
    return d


def deploy_ray_serve() -> Deployed:
    """Ray Serve (07): the CNN with two replicas, the wide model batched (``@serve.batch``, up to 16)."""
    import numpy as np
    import torch
    from ray import serve

    from labkit.apps import wire
    from labkit.models import digit_nets, wide
    from labkit.runtime import process
    from labkit.services import ray as ray_service

    codec = wire.CODECS["ray-serve"]

    @serve.deployment(num_replicas=N_WORKERS, ray_actor_options={"num_cpus": 0.5})
    class Digits:
        def __init__(self) -> None:
            torch.set_num_threads(1)
            self.model = digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False)
            self.node = ray_service.node_name()

        async def __call__(self, request: Any) -> dict[str, Any]:
            return {"pred": digit_nets.predict(self.model, codec.decode(await request.json())).tolist(), "worker": self.node}

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
    class Wide:
        def __init__(self) -> None:
            torch.set_num_threads(1)
            self.model = wide.wide_trained()
            self.node = ray_service.node_name()

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
        async def predict(self, xs: list[Any]) -> list[list[int]]:
            preds = self.model.predict(np.concatenate(xs)).tolist()
            bounds = np.cumsum([0, *[len(x) for x in xs]])
            return [preds[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

        async def __call__(self, request: Any) -> dict[str, Any]:
            return {"pred": await self.predict(codec.decode(await request.json())), "worker": self.node}

    os.environ.setdefault("RAY_agent_register_timeout_ms", str(RAY_AGENT_TIMEOUT_MS))  # see RAY_AGENT_TIMEOUT_MS
    cluster = ray_service.start(num_cpus=N_WORKERS)
    url = cluster.start_serve()
    serve.run(Digits.bind(), name="digits", route_prefix="/digits")  # type: ignore[attr-defined]
    serve.run(Wide.bind(), name="wide", route_prefix="/wide")  # type: ignore[attr-defined]
    d = Deployed(url=url + "/digits", wide_url=url + "/wide", codec="ray-serve", stop=cluster.stop, pids=lambda: cluster.pids,  # stop deletes both apps
                 kill=lambda: process.kill_descendant([os.getpid()], "ServeReplica:digits"))
    return on_cluster(d, f"the Ray cluster at {cluster.url} (RAY_ADDRESS): Serve's proxy and replicas", "the Serve replicas") if cluster.external else d


def deploy_kubernetes(service: str = "kube-proxy") -> Deployed:
    """Replica processes of the model server (08) behind a Service; the control plane is labkit's emulation.

    ``service="kube-proxy"``: a request to a dead replica fails, as in Kubernetes; ``"retrying"``:
    the client (or an ingress) retries it on another replica — the client's choice. The CNN only.
    """
    from labkit.kube import emulator, hpa

    dep = emulator.start_deployment(replicas=N_WORKERS, service=service)
    scaler = emulator.Autoscaler(dep, hpa.HPA(min_replicas=N_WORKERS, max_replicas=N_WORKERS + 1), target_utilization=50).start()
    return Deployed(url=dep.url + "/predict", codec="model-server", stop=lambda: _stop_all([scaler, dep]),
                    pids=lambda: [p.pid for p in dep.processes()], kill=dep.kill)


def deploy_celery_rabbitmq() -> Deployed:
    """``deploy_celery`` on RabbitMQ."""
    return deploy_celery("rabbitmq")


def deploy_kubernetes_retrying() -> Deployed:
    """``deploy_kubernetes`` with the retrying Service: retries are the client's choice."""
    return deploy_kubernetes("retrying")


def deploy_torchserve() -> Deployed:
    """TorchServe (09): the CNN on two workers, the wide model as an MLP with dynamic batching (16, 10 ms).

    Both are registered through the management API, so on ``TORCHSERVE_URL``'s server too (whose
    model store must be labkit's: ``labkit cluster up``'s is), and unregistered at stop.
    """
    from labkit.models import digit_nets, wide
    from labkit.runtime import process
    from labkit.services import torchserve

    store = torchserve.model_store()
    cnn = torchserve.archive("capstone_digits", "1.0", digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False), store)
    big = torchserve.archive("capstone_wide", "1.0", wide.wide_mlp(), store)
    ts = torchserve.start(store)  # TORCHSERVE_URL, if set
    registered: list[str] = []

    def stop() -> None:
        try:
            for name in registered:
                ts.unregister(name)
        finally:
            ts.stop()

    try:
        ts.register(cnn.name, initial_workers=N_WORKERS)
        registered.append("capstone_digits")
        ts.register(big.name, batch_size=16, max_batch_delay_ms=10, initial_workers=1)
        registered.append("capstone_wide")
    except BaseException:
        stop()
        raise
    d = Deployed(url=ts.predictions_url("capstone_digits"), wide_url=ts.predictions_url("capstone_wide"), codec="torchserve", stop=stop,
                 pids=lambda: [ts.pid], kill=lambda: process.kill_descendant([ts.pid], "model_service_worker"))  # type: ignore[list-item]
    return on_cluster(d, f"TorchServe at {ts.url} (TORCHSERVE_URL)", "TorchServe's Python workers") if ts.external else d


def deploy_tfserving() -> Deployed:
    """labkit's TF Serving stand-in (10), serving the CNN's Keras twin. The CNN only (its wide twin is untrained: notebook 10 batches it)."""
    from labkit.services import tfserving

    tfs = tfserving.start()  # TFSERVING_URL, if set (it must serve "digits"); else the digits versions exported here
    d = Deployed(url=tfs.predict_url(), codec="tfserving", stop=tfs.stop, pids=lambda: [tfs.pid], exact=False,  # type: ignore[list-item]
                 kill_note="not measured: one server process; restarting it is a supervisor's job",
                 wide_note="not measured: the stand-in's wide twin is untrained (notebook 10 measures its batching)")
    return on_cluster(d, f"{tfs.label} (TFSERVING_URL; real binary or labkit's stand-in: not known from here)", "its server process") if tfs.external else d


def deploy_triton() -> Deployed:
    """NVIDIA Triton (12): the real ``tritonserver`` in its own venv, the wide model with dynamic batching (16, 2 ms)."""
    from labkit.measure.batching import Setting
    from labkit.services import triton

    setting = Setting(16, 2.0)
    tr = triton.start([setting])
    return Deployed(wide_url=tr.infer_url(triton.model_name(setting)), codec="triton", stop=tr.stop, pids=lambda: [tr.pid],  # type: ignore[list-item]
                    kill_note="not measured: one server process; restarting it is a supervisor's job")


def deploy_litserve() -> Deployed:
    """LitServe (13): LitServe's FastAPI front and one inference worker, the wide model batched (16, 5 ms)."""
    from labkit.measure.batching import Setting
    from labkit.services import litserve

    srv = litserve.start(Setting(16, 5.0))
    return Deployed(wide_url=srv.predict_url, codec="litserve", stop=srv.stop, pids=lambda: [srv.pid],  # type: ignore[list-item]
                    kill_note="not measured here: one inference worker in this setup")
# endregion


def on_cluster(d: Deployed, where: str, workers: str | None) -> Deployed:
    """Mark ``d`` as served by an external deployment: ``where`` says what; ``workers`` (if any) are not killed. Used in 14."""
    d.external = where
    if workers:
        d.kill, d.kill_note = None, EXTERNAL_KILL_NOTE.format(workers)
    return d


def _host(url: str) -> str:
    """``host:port`` of a service URL (no credentials)."""
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.rsplit("@", 1)[-1]


def _stop_all(handles: Sequence[Any]) -> None:
    """Stop each handle in order; every one is stopped even if an earlier stop raised."""
    errors = []
    for h in handles:
        try:
            h.stop()
        except Exception as exc:  # re-raised once all are stopped
            errors.append(exc)
    if errors:
        raise errors[0]


def options() -> list[Option]:
    """Every row of the capstone, in the order they run (servers not in this checkout are left out)."""
    rows = [
        Option("In-process, no HTTP (floor)", "In-process", "reference", "the model in the caller's threads: no HTTP, no JSON", deploy_floor),
        Option("HTTP front, no model (null-server ceiling)", "Null server", "reference", "the FastAPI front answering without a model", deploy_null, uses=(_front,)),
        Option("HTTP front + in-process model", "In-process", "real", "the FastAPI front running the model in its threads", deploy_front_in_process, uses=(_front,)),
        Option("HTTP front + ProcessPool (recovering, 05)", "ProcessPoolExecutor", "real", "the front over notebook 05's ResilientPool", deploy_front_pool, uses=(_front,)),
        Option("HTTP front + Ray tasks", "Ray", "real", "the front; one Ray task per request", deploy_front_ray_tasks, uses=(_front,)),
        Option("Celery + Redis", "Celery", "real", "FastAPI gateway → Redis → Celery workers", deploy_celery, "redis"),
        Option("Celery + RabbitMQ", "Celery", "real", "FastAPI gateway → RabbitMQ → Celery workers", deploy_celery_rabbitmq, "rabbitmq", uses=(deploy_celery,)),
        Option("Ray Serve", "Ray", "real", "Ray Serve HTTP proxy → replicas", deploy_ray_serve),
        Option("Kubernetes Service, no retries (emulated)", "Kubernetes", "emulated", "replica processes behind a kube-proxy-like Service; control plane emulated", deploy_kubernetes, files=KUBE_FILES),
        Option("Kubernetes + retrying client (emulated; retries are the client's choice)", "Kubernetes", "emulated", "the same, with the client retrying on another replica", deploy_kubernetes_retrying, files=KUBE_FILES, uses=(deploy_kubernetes,)),
        Option("TorchServe", "TorchServe", "real", "TorchServe (Java frontend, Python workers)", deploy_torchserve, "java"),
        Option(TF_STAND_IN, "TF Serving", "stand-in", "labkit's Python re-implementation of the TF Serving REST API", deploy_tfserving, "tensorflow"),
        Option("NVIDIA Triton (real tritonserver)", "Triton", "real", "tritonserver from the nvidia-pytriton wheel, wide model only", deploy_triton, "triton"),
        Option("LitServe", "LitServe", "real", "LitServe's front + one inference worker, wide model only", deploy_litserve, "litserve"),
    ]
    return rows


ONLY_FAMILIES_ENV = "LABKIT_CAPSTONE_FAMILIES"


def left_out(option: Option) -> str | None:
    """Why ``option`` is not run: its family is not in ``LABKIT_CAPSTONE_FAMILIES`` (comma-separated,
    e.g. ``Celery,TorchServe``; unset or empty: every option runs). A test that proves one path
    (tests/test_degraded.py) runs only the rows it checks; a learner never sets it."""
    from labkit import config

    wanted = config.capstone_families()
    if not wanted or option.family in wanted:
        return None
    return f"left out by {ONLY_FAMILIES_ENV} (this run measures only {', '.join(sorted(wanted))})"


def deploy_loc(option: Option) -> int:
    """Lines a user writes to deploy ``option``: its deploy function(s) without docstrings, plus its files under deploy/."""
    from labkit.measure.report import count_loc

    n = sum(count_loc(_without_docstring(inspect.getsource(f))) for f in (option.deploy, *option.uses))
    return n + sum(count_loc((DEPLOY_DIR / rel).read_text()) for rel in option.files)


def _without_docstring(src: str) -> str:
    parts = src.split('"""')
    return parts[0] + '"""'.join(parts[2:]) if len(parts) >= 3 else src
