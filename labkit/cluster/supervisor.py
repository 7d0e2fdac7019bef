"""The process that owns a local multi-node cluster: ``python -m labkit.cluster.supervisor SPEC.json``.

It plays the role of each machine's init system: it starts every node and server as its own
child process (in its own working directory and environment, as separate machines would have),
writes the state file (URLs, pids, the environment a notebook needs), and on SIGTERM stops them
all and waits until their process trees are gone. It is a child subreaper, so a daemon one of
them forks (Ray's agents, TorchServe's Java) stays below it and is stopped with it.
Used by ``labkit cluster up`` (labkit.cluster.harness).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from labkit import config
from labkit.cluster import ray_nodes
from labkit.errors import ServiceUnavailable
from labkit.runtime import process

__all__ = ["Supervisor", "main"]

_PR_SET_CHILD_SUBREAPER = 36
START_TIMEOUT_S = 240.0
NODE_ATTEMPTS = 4  # a raylet aborts if its agents take > 15 s to start (Ray 2.60, not tunable): try again


def _subreaper() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1)
        except (OSError, AttributeError):
            pass


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


class Supervisor:
    """Start what ``spec`` asks for under ``root``; ``state`` is what goes into the state file."""

    def __init__(self, spec: dict[str, Any], state_path: Path) -> None:
        self.spec = spec
        self.state_path = state_path
        self.root = Path(spec["root"])
        self.handles: list[Any] = []  # process.Handle or ManagedProcess, stopped in reverse order
        self.state: dict[str, Any] = {"status": "starting", "supervisor_pid": os.getpid(), "root": str(self.root), "spec": spec, "env": {}, "components": [], "started_at": time.time()}
        self.stop_event = threading.Event()

    # ------------------------------------------------------------------ bookkeeping
    def _add(self, kind: str, name: str, handle: Any, url: str = "", **extra: Any) -> None:
        self.handles.append(handle)
        pid = handle.pid
        self.state["components"].append({"kind": kind, "name": name, "pid": pid, "url": url, **extra})
        self.save()

    def save(self) -> None:
        _write_json(self.state_path, self.state)

    def _dir(self, *parts: str) -> Path:
        d = self.root.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    # ------------------------------------------------------------------ components
    def start_ray(self, n_nodes: int, cpus: int) -> None:
        token = ray_nodes.write_token(self.root / "ray" / "auth_token")
        port = process.free_port()
        address = f"127.0.0.1:{port}"
        names = ["head", *[f"node{i}" for i in range(1, n_nodes)]]
        for i, name in enumerate(names):
            node_dir = self._dir("hosts", f"ray-{name}")
            resources = {f"host_{name}": 1.0}
            for attempt in range(1, NODE_ATTEMPTS + 1):
                temp = ray_nodes.short_temp(node_dir, attempt)
                if i == 0:
                    cmd = ray_nodes.head_command(temp, port, cpus, resources)
                else:
                    cmd = ray_nodes.worker_command(address, temp, cpus, resources)
                proc = process.start(f"ray-{name}", cmd, env=ray_nodes.node_env(token, temp), cwd=node_dir)
                if ray_nodes.wait_started(proc, temp, START_TIMEOUT_S):
                    break
                proc.stop()
                if attempt == NODE_ATTEMPTS:
                    raise ServiceUnavailable(f"ray node {name} did not start in {attempt} attempts", logs=proc.logs())
            self._add("ray-node", name, proc, address if i == 0 else "", resources=resources, attempts=attempt)
        self.state["ray"] = {"address": address, "token_path": str(token), "nodes": names}
        self.state["env"].update({"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})
        from labkit.cluster import health

        alive = health.ray_nodes(self.state, START_TIMEOUT_S, at_least=n_nodes)  # one child asks each second, not one child per second
        if len(alive) < n_nodes:
            raise ServiceUnavailable(f"{len(alive)} of {n_nodes} Ray nodes alive after {START_TIMEOUT_S:.0f} s")

    def start_celery(self, n_workers: int, rabbit: bool) -> None:
        from labkit.services import rabbitmq, redis

        r = redis.start(external=False)
        self._add("broker", "redis", r, r.url)
        # not CELERY_BROKER_URL / CELERY_RESULT_BACKEND: Celery lets those override every app's own URLs
        self.state["env"].update({"REDIS_URL": r.url, "LABKIT_CELERY_WORKERS": "external"})
        brokers = [("w", r.url)]
        if rabbit:
            mq = rabbitmq.start(external=False)
            self._add("broker", "rabbitmq", mq, mq.url)
            self.state["env"]["RABBITMQ_URL"] = mq.url
            brokers.append(("mq", mq.url))
        from labkit.models import digit_nets

        for arch in ("cnn", "mlp"):  # train/cache once here, not in every worker at once
            digit_nets.trained(digit_nets.TrainConfig(arch=arch), progress=False)
        host = 0
        procs = []
        for prefix, broker in brokers:
            for i in range(1, n_workers + 1):
                host += 1
                procs.append(self._celery_worker(f"{prefix}{i}", f"host{host}", broker, r.url))
        from labkit.services import celery as celery_svc

        for (name, nodename, broker), proc in procs:

            def answers(b: str = broker, n: str = nodename) -> bool:
                return n in celery_svc.ping(b, [n], timeout_s=0.5)

            process.wait_until(answers, START_TIMEOUT_S, f"celery worker {nodename}", interval_s=0.5, proc=proc)
            self._add("celery-worker", nodename, proc, broker, queues=["celery", "cnn", "mlp", name])

    def _celery_worker(self, name: str, host: str, broker: str, backend: str) -> tuple[tuple[str, str, str], process.ManagedProcess]:
        """``celery -A labkit.apps.celery_tasks worker -n NAME@HOST``, run from its own host folder."""
        home = self._dir("hosts", host)
        exe = Path(sys.executable).parent / "celery"
        celery = [str(exe)] if exe.exists() else [sys.executable, "-m", "celery"]
        nodename = f"{name}@{host}"
        cmd = [
            *celery, "-A", "labkit.apps.celery_tasks", "worker", "--without-mingle", "--without-gossip", "--without-heartbeat",
            "--pool", "threads", "-c", "1", "-n", nodename, "-Q", f"celery,cnn,mlp,{name}", "--loglevel", "INFO",
        ]  # fmt: skip
        env = {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend, "HOME": str(home), "TMPDIR": str(self._dir("hosts", host, "tmp")), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        return (name, nodename, broker), process.start(f"celery-{name}", cmd, env=env, cwd=home)

    def start_torchserve(self) -> None:
        from labkit.models import digit_nets
        from labkit.services import torchserve

        store = torchserve.model_store()
        mar = torchserve.archive("digits", "1.0", digit_nets.trained(digit_nets.TrainConfig(**torchserve.VERSIONS["1.0"]), progress=False), store)
        ts = torchserve.start(store, models={"digits": mar.name})
        self._add("server", "torchserve", ts, ts.url, management=ts.management_url, store=str(store))
        self.state["env"].update({"TORCHSERVE_URL": ts.url, "TORCHSERVE_MANAGEMENT_URL": ts.management_url, "TORCHSERVE_METRICS_URL": ts.metrics_url, "TORCHSERVE_GRPC_ADDRESS": ts.grpc_address})

    def start_tfserving(self) -> None:
        from labkit.models import savedmodels
        from labkit.services import tfserving

        model_dir = savedmodels.export_versions(self._dir("tfserving"))
        cfg = self.root / "tfserving" / "models.config"
        cfg.write_text(
            f'model_config_list {{\n  config {{\n    name: "digits"\n    base_path: "{model_dir}"\n    model_platform: "tensorflow"\n'
            '    model_version_policy { specific { versions: 1 versions: 2 } }\n'
            '    version_labels { key: "stable" value: 1 }\n    version_labels { key: "canary" value: 2 }\n  }\n}\n'
        )
        tfs = tfserving.start(model_config_file=cfg)
        self._add("server", "tfserving", tfs, tfs.url, kind_detail=tfs.kind)
        self.state["env"].update({"TFSERVING_URL": tfs.url, "TFSERVING_GRPC": tfs.grpc_target or ""})

    # ------------------------------------------------------------------ life cycle
    def run(self) -> int:
        for var in (*config.EXTERNAL_SERVICE_VARS, "TORCHSERVE_MANAGEMENT_URL", "TORCHSERVE_METRICS_URL", "TFSERVING_GRPC"):
            os.environ.pop(var, None)  # this process starts its own servers, never uses someone else's
        signal.signal(signal.SIGTERM, lambda *_: self.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop_event.set())
        os.environ["LABKIT_CACHE_DIR"] = str(config.cache_dir())  # every "host" reads the same weights
        spec = self.spec
        try:
            if spec.get("ray_nodes", 0):
                self.start_ray(int(spec["ray_nodes"]), int(spec.get("ray_cpus", 1)))
            if spec.get("celery_workers", 0):
                self.start_celery(int(spec["celery_workers"]), bool(spec.get("rabbitmq", True)))
            if spec.get("torchserve"):
                self.start_torchserve()
            if spec.get("tfserving"):
                self.start_tfserving()
        except BaseException as exc:
            self.state.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
            self.save()
            self.shutdown()
            return 1
        self.state["status"] = "ready"
        self.state["ready_s"] = time.time() - self.state["started_at"]
        self.save()
        while not self.stop_event.wait(1.0):
            pass
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop every component (last started first), then anything still below this process."""
        import psutil

        for h in reversed(self.handles):
            try:
                h.stop()
            except Exception:  # keep going: everything must go
                traceback.print_exc()
        rest = psutil.Process().children(recursive=True)
        process.end_processes(rest, signal.SIGTERM, timeout_s=10.0)
        for link in self.root.glob("hosts/ray-*/ray*"):  # Ray's short temp dirs (see ray_nodes)
            shutil.rmtree(link.resolve(), ignore_errors=True)
            link.unlink(missing_ok=True)
        self.state["status"] = "stopped"
        self.save()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m labkit.cluster.supervisor SPEC.json STATE.json``."""
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    _subreaper()
    return Supervisor(spec, Path(args[1])).run()


if __name__ == "__main__":
    sys.exit(main())
