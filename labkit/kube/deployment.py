"""An emulated Kubernetes Deployment and its Service: real replica processes behind a real balancer.

- **Deployment** (``start_deployment``): N replica processes of ``labkit.apps.model_server``
  (uvicorn, 1 torch thread, a readiness delay), each "pod" with a CPU request. A controller
  thread (the ReplicaSet + endpoints controllers) probes ``/readyz``, replaces a crashed replica,
  starts replicas on scale-up and, on scale-down, takes a replica out of the Service first,
  drains its in-flight requests, then stops it.
- **Service**: ``labkit.apps.balancer`` in its own process. ``service="kube-proxy"`` (default)
  behaves like kube-proxy: a request sent to a replica that just died fails. ``"retrying"``
  retries it on another replica — what a client or an ingress may choose to add, not the Service.

``Deployment.replicas()`` is the public view the autoscaler and the analysis read (a snapshot;
no lock is shared). Used in 08 and 14; the HPA loop is ``labkit.kube.autoscaler``.

    with start_deployment(replicas=2, service="kube-proxy") as dep:
        httpx.post(dep.url + "/predict", json=payload())
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit import config
from labkit.errors import BadInput
from labkit.measure.timing import now
from labkit.runtime import process

__all__ = ["CPU_REQUEST_MILLI", "SERVICE_MODES", "Deployment", "Replica", "start_deployment"]

CPU_REQUEST_MILLI = 200  # resources.requests.cpu of one replica, as in deploy/k8s/base/deployment.yaml
READY_DELAY_S = 0.5  # real seconds after the model is loaded before /readyz says ready
PROBE_INTERVAL_S = 0.2
TERMINATION_GRACE_S = 5.0
START_TIMEOUT_S = 120.0
SERVICE_MODES = ("kube-proxy", "retrying")
_LB_TIMEOUT_S = 2.0


@dataclass
class Replica:
    """One pod: its process, port, and lifecycle times (monotonic seconds)."""

    name: str
    port: int
    proc: process.ManagedProcess
    started: float
    ready_since: float | None = None
    terminating: bool = False
    draining: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready(self) -> bool:
        return self.ready_since is not None and not self.terminating

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) the replica's processes used so far; None if gone."""
        import psutil

        procs = self.proc.tree()
        if not procs:
            return None
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total


class Deployment(process.Handle):
    """Replica processes behind a balancer, kept at ``spec_replicas`` by a controller thread."""

    def __init__(self, name: str, balancer: process.ManagedProcess, lb_url: str, cpu_request_milli: int, ready_delay_s: float, model_path: Path, service: str) -> None:
        super().__init__(name, lb_url, balancer)
        self.cpu_request_milli = cpu_request_milli
        self.ready_delay_s = ready_delay_s
        self.model_path = model_path
        self.service = service
        self.spec_replicas = 0
        self.events: list[tuple[float, str, str]] = []  # (time, what, pod name)
        self.crashes = 0
        self._pods: list[Replica] = []
        self._serial = 0
        self._lock = threading.RLock()
        self._endpoints: list[str] = []
        self._drains: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-controller", daemon=True)

    # --- what notebooks and the autoscaler call ------------------------------------------------
    def scale(self, replicas: int) -> None:
        """Set ``spec.replicas`` (what ``kubectl scale`` or the HPA does); the controller follows."""
        if replicas < 0:
            raise BadInput(f"replicas must be >= 0, got {replicas}")
        with self._lock:
            self.spec_replicas = replicas

    def replicas(self) -> list[Replica]:
        """A snapshot of the pods (terminating ones included, flagged), oldest first."""
        with self._lock:
            return list(self._pods)

    def ready_replicas(self) -> int:
        return sum(1 for p in self.replicas() if p.ready)

    def wait_ready(self, n: int | None = None, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until ``n`` (default spec) replicas are ready and no replica is terminating."""

        def done() -> bool:
            with self._lock:
                want = self.spec_replicas if n is None else n
                return self.ready_replicas() >= want and not any(p.terminating for p in self._pods) and len(self._pods) == self.spec_replicas

        process.wait_until(done, timeout_s, f"{self.name}: {n or self.spec_replicas} ready replica(s)", interval_s=0.1)

    def kill(self, index: int = 0) -> str:
        """SIGKILL one live replica (fault injection); the controller replaces it. Returns its name."""
        live = [p for p in self.replicas() if not p.terminating]
        if not live:
            raise BadInput("no live replica to kill")
        pod = live[index % len(live)]
        pod.proc.signal(signal.SIGKILL)
        return pod.name

    def lb_stats(self) -> dict[str, Any]:
        """The balancer's counters: mode, requests, ok, retries, errors, in-flight per replica."""
        import httpx

        return dict(httpx.get(self.url + "/_lb/stats", timeout=_LB_TIMEOUT_S).json())

    def processes(self) -> list[process.ManagedProcess]:
        return [p.proc for p in self.replicas()] + ([self.process] if self.process else [])

    def stop(self) -> None:
        """Stop the controller, every replica and the balancer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for t in list(self._drains):
            t.join(timeout=TERMINATION_GRACE_S + 5)
        with self._lock:
            pods, self._pods = list(self._pods), []
        stoppers = [threading.Thread(target=p.proc.stop, kwargs={"timeout_s": TERMINATION_GRACE_S}) for p in pods]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        super().stop()

    # --- the controller ----------------------------------------------------------------------------
    def _start_pod(self) -> Replica:
        self._serial += 1
        name = f"{self.name}-{self._serial}"
        port = process.free_port()
        cmd = [sys.executable, "-m", "uvicorn", "labkit.apps.model_server:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", str(int(TERMINATION_GRACE_S))]
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LABKIT_TORCH_THREADS": "1", "LABKIT_READY_DELAY_S": str(self.ready_delay_s), "LABKIT_MODEL_PATH": str(self.model_path)}
        pod = Replica(name, port, process.start(name, cmd, env=env), now())
        self.events.append((now(), "started", name))
        return pod

    def _probe(self, pod: Replica) -> bool:
        import httpx

        try:
            return httpx.get(pod.url + "/readyz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def reconcile(self) -> None:
        """One pass of the ReplicaSet + endpoints controllers (the thread calls it every 0.2 s)."""
        with self._lock:
            for pod in [p for p in self._pods if not p.terminating and not p.proc.alive()]:
                self._pods.remove(pod)  # crashed: a ReplicaSet replaces it below
                self.crashes += 1
                self.events.append((now(), f"crashed (exit {pod.proc.returncode})", pod.name))
                pod.proc.stop(timeout_s=1.0)
            starting = [p for p in self._pods if p.ready_since is None and not p.terminating]
        for pod in starting:  # readiness probes, outside the lock (HTTP)
            if self._probe(pod):
                pod.ready_since = now()
                self.events.append((pod.ready_since, "ready", pod.name))
        with self._lock:
            active = [p for p in self._pods if not p.terminating]
            for _ in range(self.spec_replicas - len(active)):
                self._pods.append(self._start_pod())
            if len(active) > self.spec_replicas:
                # ReplicaSet deletion order: not-ready pods first, then the newest
                victims = sorted(active, key=lambda p: (p.ready_since is not None, -p.started))[: len(active) - self.spec_replicas]
                for pod in victims:
                    pod.terminating = True
                    self.events.append((now(), "terminating", pod.name))
            endpoints = [p.url for p in self._pods if p.ready]
            draining = [p for p in self._pods if p.terminating and not p.draining]
            for pod in draining:
                pod.draining = True
        if endpoints != self._endpoints:
            self._push_endpoints(endpoints)
        for pod in draining:  # out of the Service first, then drain, then stop
            t = threading.Thread(target=self._drain, args=(pod,), name=f"drain-{pod.name}", daemon=True)
            self._drains.append(t)
            t.start()

    def _push_endpoints(self, endpoints: list[str]) -> None:
        import httpx

        try:
            httpx.put(self.url + "/_lb/endpoints", json={"endpoints": endpoints}, timeout=_LB_TIMEOUT_S).raise_for_status()
            self._endpoints = endpoints
        except httpx.HTTPError:
            pass  # retried on the next pass

    def _drain(self, pod: Replica) -> None:
        deadline = now() + TERMINATION_GRACE_S
        while now() < deadline and not self._stop.is_set():
            try:
                if self.lb_stats()["inflight"].get(pod.url, 0) == 0:
                    break
            except Exception:
                break
            time.sleep(0.05)
        pod.proc.stop(timeout_s=TERMINATION_GRACE_S)
        with self._lock:
            if pod in self._pods:
                self._pods.remove(pod)
            self.events.append((now(), "stopped", pod.name))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception as exc:  # keep the controller alive; the event log says what happened
                self.events.append((now(), f"controller error: {type(exc).__name__}: {exc}", self.name))
            self._stop.wait(PROBE_INTERVAL_S)

    def _start_controller(self) -> None:
        self._thread.start()

    def __str__(self) -> str:
        return (f"Deployment {self.name}: {self.spec_replicas} replica(s) wanted, {self.ready_replicas()} ready, "
                f"behind a {self.service} Service at {self.url}")

    def __repr__(self) -> str:
        return f"<Deployment {self.name} spec={self.spec_replicas} ready={self.ready_replicas()} service={self.service} via {self.url}>"


def start_deployment(name: str = "model-deployment", replicas: int = 1, cpu_request_milli: int = CPU_REQUEST_MILLI, ready_delay_s: float = READY_DELAY_S, service: str = "kube-proxy", lb_retries: int = 2, wait: bool = True) -> Deployment:
    """Start the Service (balancer) and ``replicas`` model-server replicas; wait until they are ready.

    ``service``: "kube-proxy" (a request to a dying replica fails, as in Kubernetes) or "retrying"
    (the client's or ingress's choice: such a request is retried on another replica, up to
    ``lb_retries`` times). The trained DigitCNN is written once to a file every replica loads
    (as a mounted model would be).
    """
    import httpx

    from labkit.apps import model_server

    if cpu_request_milli <= 0:
        raise BadInput("cpu_request_milli must be positive: the HPA divides usage by it")
    if service not in SERVICE_MODES:
        raise BadInput(f"service must be one of {SERVICE_MODES}, got {service!r}")
    model_path = config.cache_dir("kube") / "digit-cnn.pt"
    if not model_path.exists():
        model_server.export_model(model_path)
    port = process.free_port()
    lb = process.start(
        f"{name}-balancer",
        [sys.executable, "-m", "uvicorn", "labkit.apps.balancer:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env={"LABKIT_LB_MODE": service, "LABKIT_LB_RETRIES": str(lb_retries)},
        ready=lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
        timeout_s=60,
    )
    dep = Deployment(name, lb, f"http://127.0.0.1:{port}", cpu_request_milli, ready_delay_s, model_path, service)
    dep.scale(replicas)
    dep._start_controller()
    if wait:
        try:
            dep.wait_ready()
        except BaseException:
            dep.stop()
            raise
    return dep
