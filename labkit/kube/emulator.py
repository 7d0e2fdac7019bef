"""An emulated Kubernetes Deployment + Service + HPA with real local replicas, and a real-cluster path.

No control plane runs here, so labkit plays the three controllers with real processes:

- **Deployment** (``start_deployment``): N replica processes of ``labkit.apps.model_server``
  (uvicorn, 1 torch thread, a readiness delay), each "pod" with a CPU request. A controller
  thread probes ``/readyz``, replaces a crashed replica, starts replicas on scale-up and, on
  scale-down, takes a replica out of the Service first, drains its in-flight requests, then stops it.
- **Service**: ``labkit.apps.balancer``, a round-robin HTTP proxy in its own process in front
  of the ready replicas; it retries a request whose replica died and counts what still fails.
- **HPA** (``Autoscaler``): every sync period (15 s, divided by ``time_scale`` in real time) it
  measures each replica's CPU with psutil against its request, asks ``labkit.kube.hpa`` for a replica
  count and scales the Deployment. All times it records are emulated seconds.

    with kube.start_deployment(replicas=1) as dep:
        run = kube.emulate(dep, hpa.HPA(1, 3), target_utilization=50, profile=[(10, 2), (20, 20)], payload=body)
    plots.replicas_over_time(*run.replicas())

Manifests and a real cluster (KUBECONFIG) are in ``labkit.kube.kubectl``. Used in 08.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from labkit import config
from labkit.errors import BadInput, ServiceUnavailable
from labkit.kube.hpa import HPA, SYNC_PERIOD_S, resource_replicas
from labkit.measure.timing import now
from labkit.runtime import process

__all__ = [
    "CPU_REQUEST_MILLI",
    "TIME_SCALE",
    "Autoscaler",
    "Calibration",
    "Deployment",
    "Emulation",
    "Pod",
    "Sample",
    "calibrate",
    "emulate",
    "payload",
    "plot",
    "start_deployment",
]

CPU_REQUEST_MILLI = 200  # resources.requests.cpu of one replica, as in deploy/k8s/base/deployment.yaml
READY_DELAY_S = 0.5  # real seconds after the model is loaded before /readyz says ready
TIME_SCALE = 20.0  # emulated seconds per real second
DIGITS_PER_REQUEST = 8
TTA = 32  # test-time augmentation copies per digit: about 10 ms of CPU per request on a laptop core
PROBE_INTERVAL_S = 0.2
TERMINATION_GRACE_S = 5.0
START_TIMEOUT_S = 120.0
_LB_TIMEOUT_S = 2.0


@dataclass
class Pod:
    """One replica: its process, port, and lifecycle times (monotonic seconds)."""

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

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) used so far by the replica's processes; None if gone."""
        import psutil

        total = 0.0
        procs = self.proc.tree()
        if not procs:
            return None
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total


class Deployment(process.Handle):
    """Replica processes behind a balancer, kept at ``spec_replicas`` by a controller thread."""

    def __init__(self, name: str, balancer: process.ManagedProcess, lb_url: str, cpu_request_milli: int, ready_delay_s: float, model_path: Path) -> None:
        super().__init__(name, lb_url, balancer)
        self.cpu_request_milli = cpu_request_milli
        self.ready_delay_s = ready_delay_s
        self.model_path = model_path
        self.spec_replicas = 0
        self.pods: list[Pod] = []
        self.events: list[tuple[float, str, str]] = []  # (time, what, pod name)
        self.crashes = 0
        self._serial = 0
        self._lock = threading.RLock()
        self._endpoints: list[str] = []
        self._drains: list[threading.Thread] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-controller", daemon=True)

    # --- what notebooks call -------------------------------------------------------------------
    def scale(self, replicas: int) -> None:
        """Set ``spec.replicas`` (what ``kubectl scale`` or the HPA does); the controller follows."""
        if replicas < 0:
            raise BadInput(f"replicas must be >= 0, got {replicas}")
        with self._lock:
            self.spec_replicas = replicas

    def ready_replicas(self) -> int:
        with self._lock:
            return sum(1 for p in self.pods if p.ready_since is not None and not p.terminating)

    def wait_ready(self, n: int | None = None, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until ``n`` (default spec) replicas are ready and no replica is terminating."""
        def done() -> bool:
            with self._lock:
                want = self.spec_replicas if n is None else n
                return self.ready_replicas() >= want and not any(p.terminating for p in self.pods) and len(self.pods) == self.spec_replicas
        process.wait_until(done, timeout_s, f"{self.name}: {n or self.spec_replicas} ready replica(s)", interval_s=0.1)

    def kill(self, index: int = 0) -> str:
        """SIGKILL one ready replica (fault injection); the controller replaces it. Returns its name."""
        import signal

        with self._lock:
            live = [p for p in self.pods if not p.terminating]
            pod = live[index % len(live)]
        pod.proc.signal(signal.SIGKILL)
        return pod.name

    def lb_stats(self) -> dict[str, Any]:
        """The balancer's counters: requests, ok, retries, errors, in-flight per replica."""
        import httpx

        return dict(httpx.get(self.url + "/_lb/stats", timeout=_LB_TIMEOUT_S).json())

    def processes(self) -> list[process.ManagedProcess]:
        with self._lock:
            return [p.proc for p in self.pods] + ([self.process] if self.process else [])

    def stop(self) -> None:
        """Stop the controller, every replica and the balancer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for t in list(self._drains):
            t.join(timeout=TERMINATION_GRACE_S + 5)
        with self._lock:
            pods, self.pods = list(self.pods), []
        stoppers = [threading.Thread(target=p.proc.stop, kwargs={"timeout_s": TERMINATION_GRACE_S}) for p in pods]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        super().stop()

    # --- the controller ----------------------------------------------------------------------------
    def _start_pod(self) -> Pod:
        self._serial += 1
        name = f"{self.name}-{self._serial}"
        port = process.free_port()
        cmd = [sys.executable, "-m", "uvicorn", "labkit.apps.model_server:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", str(int(TERMINATION_GRACE_S))]
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LABKIT_TORCH_THREADS": "1", "LABKIT_READY_DELAY_S": str(self.ready_delay_s), "LABKIT_MODEL_PATH": str(self.model_path)}
        pod = Pod(name, port, process.start(name, cmd, env=env), now())
        self.events.append((now(), "started", name))
        return pod

    def _probe(self, pod: Pod) -> bool:
        import httpx

        try:
            return httpx.get(pod.url + "/readyz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def reconcile(self) -> None:
        """One pass of the ReplicaSet + endpoints controllers (the thread calls it every 0.2 s)."""
        with self._lock:
            for pod in [p for p in self.pods if not p.terminating and not p.proc.alive()]:
                self.pods.remove(pod)  # crashed: a ReplicaSet replaces it below
                self.crashes += 1
                self.events.append((now(), f"crashed (exit {pod.proc.returncode})", pod.name))
                pod.proc.stop(timeout_s=1.0)
            starting = [p for p in self.pods if p.ready_since is None and not p.terminating]
        for pod in starting:  # readiness probes, outside the lock (HTTP)
            if self._probe(pod):
                pod.ready_since = now()
                self.events.append((pod.ready_since, "ready", pod.name))
        with self._lock:
            active = [p for p in self.pods if not p.terminating]
            for _ in range(self.spec_replicas - len(active)):
                self.pods.append(self._start_pod())
            if len(active) > self.spec_replicas:
                # ReplicaSet deletion order: not-ready pods first, then the newest
                victims = sorted(active, key=lambda p: (p.ready_since is not None, -p.started))[: len(active) - self.spec_replicas]
                for pod in victims:
                    pod.terminating = True
                    self.events.append((now(), "terminating", pod.name))
            endpoints = [p.url for p in self.pods if p.ready_since is not None and not p.terminating]
            draining = [p for p in self.pods if p.terminating and not p.draining]
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

    def _drain(self, pod: Pod) -> None:
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
            if pod in self.pods:
                self.pods.remove(pod)
            self.events.append((now(), "stopped", pod.name))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception as exc:  # keep the controller alive; the event log says what happened
                self.events.append((now(), f"controller error: {type(exc).__name__}: {exc}", self.name))
            self._stop.wait(PROBE_INTERVAL_S)

    def __repr__(self) -> str:
        return f"<Deployment {self.name} spec={self.spec_replicas} ready={self.ready_replicas()} via {self.url}>"


def start_deployment(name: str = "model-deployment", replicas: int = 1, cpu_request_milli: int = CPU_REQUEST_MILLI, ready_delay_s: float = READY_DELAY_S, lb_retries: int = 2, wait: bool = True) -> Deployment:
    """Start the balancer and ``replicas`` model-server replicas; wait until they are ready.

    The trained DigitCNN is written once to a file every replica loads (as a mounted model would be).
    """
    import httpx

    from labkit.apps import model_server

    if cpu_request_milli <= 0:
        raise BadInput("cpu_request_milli must be positive: the HPA divides usage by it")
    model_path = config.cache_dir("kube") / "digit-cnn.pt"
    if not model_path.exists():
        model_server.export_model(model_path)
    port = process.free_port()
    lb = process.start(
        f"{name}-balancer",
        [sys.executable, "-m", "uvicorn", "labkit.apps.balancer:app", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        env={"LABKIT_LB_RETRIES": str(lb_retries)},
        ready=lambda: httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200,
        timeout_s=60,
    )
    dep = Deployment(name, lb, f"http://127.0.0.1:{port}", cpu_request_milli, ready_delay_s, model_path)
    dep.scale(replicas)
    dep._thread.start()
    if wait:
        try:
            dep.wait_ready()
        except BaseException:
            dep.stop()
            raise
    return dep


@dataclass(frozen=True)
class Sample:
    """What the HPA saw and did at one sync (times in emulated seconds)."""

    t_s: float
    replicas: int  # spec.replicas after this sync
    ready: int
    utilization: int | None  # percent of the CPU request, None when no metrics yet
    proposed: int | None  # what the metric asked for, before stabilization and rate limits
    usage_milli: tuple[int | None, ...] = ()


class Autoscaler:
    """The HPA controller loop for one Deployment: measure CPU, compute, step, scale.

    ``time_scale`` emulated seconds pass per real second: the 15 s sync period becomes
    ``15 / time_scale`` real seconds, and the HPA's windows and policy periods shrink alike.
    """

    def __init__(self, deployment: Deployment, hpa: HPA, target_utilization: int, time_scale: float = TIME_SCALE, sync_period_s: float = SYNC_PERIOD_S) -> None:
        if time_scale <= 0:
            raise BadInput("time_scale must be positive")
        self.deployment = deployment
        self.hpa = hpa
        self.target_utilization = target_utilization
        self.time_scale = time_scale
        self.sync_period_s = sync_period_s
        self.samples: list[Sample] = []
        self.t0 = now()
        self._cpu: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hpa", daemon=True)

    def emulated(self, t: float | None = None) -> float:
        """Emulated seconds since the autoscaler started, at monotonic time ``t`` (default now)."""
        return ((now() if t is None else t) - self.t0) * self.time_scale

    def pod_metrics(self) -> list[dict[str, Any]]:
        """What metrics-server would report: CPU usage over the last window, per pod."""
        out = []
        t = now()
        with self.deployment._lock:
            pods = [p for p in self.deployment.pods if not p.terminating]
        seen = set()
        for pod in pods:
            seen.add(pod.name)
            cpu = pod.cpu_s()
            prev = self._cpu.get(pod.name)
            usage = None
            if cpu is not None and prev is not None and t > prev[0]:
                usage = round(1000 * (cpu - prev[1]) / (t - prev[0]))
            if cpu is not None:
                self._cpu[pod.name] = (t, cpu)
            # ready for the HPA once a whole metric window lies after the readiness transition
            ready = pod.ready_since is not None and prev is not None and pod.ready_since <= prev[0]
            out.append({"name": pod.name, "request_milli": self.deployment.cpu_request_milli, "usage_milli": usage, "ready": ready})
        self._cpu = {k: v for k, v in self._cpu.items() if k in seen}
        return out

    def sync(self) -> Sample:
        """One sync period of the controller."""
        dep = self.deployment
        current = dep.spec_replicas
        pods = self.pod_metrics()
        t_s = self.emulated()
        try:
            proposed, utilization = resource_replicas(current, pods, self.target_utilization)
        except BadInput:  # no metrics yet: upstream leaves the scale alone
            proposed, utilization, new = None, None, current
        else:
            new = self.hpa.step(t_s, current, cast(int, proposed))  # set in the try above
            if new != current:
                dep.scale(new)
        sample = Sample(t_s, new, dep.ready_replicas(), utilization, proposed, tuple(p["usage_milli"] for p in pods))
        self.samples.append(sample)
        return sample

    def _loop(self) -> None:
        period = self.sync_period_s / self.time_scale
        next_t = now()
        while not self._stop.is_set():
            self.sync()
            next_t += period
            self._stop.wait(max(0.0, next_t - now()))

    def start(self) -> Autoscaler:
        self.t0 = now()
        self.pod_metrics()  # first scrape: usage needs two
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> Autoscaler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Emulation:
    """One autoscaling run: the load, the HPA's samples and decisions, the Deployment's events."""

    load: Any  # labkit.measure.load.LoadResult
    samples: list[Sample]
    hpa: HPA
    profile: list[tuple[float, float]]
    time_scale: float
    target_utilization: int
    t0: float
    events: list[tuple[float, str, str]] = field(default_factory=list)
    lb: dict[str, Any] = field(default_factory=dict)

    def _t(self, t: float) -> float:
        return (t - self.t0) * self.time_scale

    def offered(self) -> tuple[list[float], list[float]]:
        """Offered load (requests per real second) as a step series over emulated seconds."""
        ts, ys, start = [], [], self._t(self.load.started)
        for duration, rate in self.profile:
            ts += [start, start + duration * self.time_scale]
            ys += [rate, rate]
            start += duration * self.time_scale
        return ts, ys

    def replicas(self) -> tuple[list[float], list[int]]:
        return [s.t_s for s in self.samples], [s.replicas for s in self.samples]

    def ready(self) -> tuple[list[float], list[int]]:
        return [s.t_s for s in self.samples], [s.ready for s in self.samples]

    def utilization(self) -> tuple[list[float], list[float]]:
        pts = [(s.t_s, s.utilization) for s in self.samples if s.utilization is not None]
        return [t for t, _ in pts], [float(u) for _, u in pts]

    def latency_p99(self, bin_s: float | None = None) -> tuple[list[float], list[float]]:
        """p99 latency (ms) of the requests started in each bin (default: one sync period)."""
        from labkit.measure.timing import percentiles

        width = (bin_s or SYNC_PERIOD_S) / self.time_scale
        bins: dict[int, list[float]] = {}
        for r in self.load.ok:
            bins.setdefault(int((r.start - self.load.started) // width), []).append(r.latency_s)
        keys = sorted(bins)
        offset = self._t(self.load.started)
        return [offset + (k + 0.5) * width * self.time_scale for k in keys], [percentiles(bins[k], [99])[99] * 1e3 for k in keys]

    def errors(self) -> int:
        return int(self.load.errors)

    def held_interval(self) -> tuple[float, float] | None:
        """(start, end) in emulated seconds of the last held-back scale-down: from the first sync
        whose proposal (clamped to minReplicas) was below the replica count to the sync that
        removed a replica."""
        first, held, descending = None, None, False
        for d in self.hpa.decisions:
            wants_fewer = max(d.proposed, self.hpa.min_replicas) < d.current
            if d.replicas < d.current:
                if not descending:  # the first step down ends the hold; later steps are the descent
                    held = (first if first is not None else d.t_s, d.t_s)
                    descending = True
                first = None
            elif wants_fewer:
                if first is None and not descending:
                    first = d.t_s
            else:
                first, descending = None, False
        return held

    def held_s(self) -> float | None:
        """How long (emulated s) the last scale-down waited after the load fell; None if none."""
        held = self.held_interval()
        return None if held is None else held[1] - held[0]

    def time_to(self, replicas: int, after_s: float = 0.0, ready: bool = True) -> float | None:
        """Emulated seconds from ``after_s`` until ``replicas`` were (ready and) set, or None."""
        for s in self.samples:
            if s.t_s >= after_s and (s.ready if ready else s.replicas) == replicas:
                return s.t_s - after_s
        return None

    def pod_start_s(self) -> list[float]:
        """Emulated seconds each replica started in this run took from start to ready."""
        started = {name: t for t, what, name in self.events if what == "started"}
        return [(t - started[name]) * self.time_scale for t, what, name in self.events if what == "ready" and name in started]

    def replica_seconds(self) -> float:
        """Area under the replicas step curve (spec.replicas), in replica · emulated seconds: the cost."""
        pts = self.samples
        return float(sum(a.replicas * (b.t_s - a.t_s) for a, b in zip(pts, pts[1:])))

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {"requests": self.load.n, "errors": self.errors(), "max_replicas": max((s.replicas for s in self.samples), default=0)}
        d["replica_seconds"] = round(self.replica_seconds())
        d["lb_retries"] = self.lb.get("retries", 0)
        d["held_s"] = None if (held := self.held_s()) is None else round(held)
        starts = self.pod_start_s()
        d["pod_start_s"] = round(sum(starts) / len(starts)) if starts else None
        if self.load.ok:
            d["p99_ms"] = round(self.load.stats().p99 * 1e3, 1)
        return d


def plot(runs: Mapping[str, Emulation] | Emulation, title: str = "HPA emulation") -> Any:
    """Four panels on one emulated time axis: offered load, CPU vs target, replicas, p99 latency.

    The shaded span is where a scale-down was held back by the stabilization window; errors and
    retries are counted in the latency legend (none is dropped silently).
    """
    import matplotlib.pyplot as plt

    runs = {"run": runs} if isinstance(runs, Emulation) else dict(runs)
    fig, axes = plt.subplots(4, 1, figsize=(10, 8.5), sharex=True, layout="constrained")
    for i, (name, run) in enumerate(runs.items()):
        c = f"C{i}"
        axes[0].step(*run.offered(), where="post", color=c, label=name)
        axes[1].plot(*run.utilization(), marker=".", color=c, label=name)
        axes[2].step(*run.replicas(), where="post", color=c, label=f"{name}: spec.replicas")
        axes[2].step(*run.ready(), where="post", color=c, ls=":", label=f"{name}: ready")
        held = run.held_interval()
        if held is not None:
            axes[2].axvspan(*held, color=c, alpha=0.12, label=f"{name}: scale-down held {held[1] - held[0]:.0f} s")
        label = f"{name} ({run.errors()} errors, {run.lb.get('retries', 0)} retried)"
        axes[3].plot(*run.latency_p99(), marker=".", color=c, label=label)
    target = next(iter(runs.values())).target_utilization
    axes[1].axhline(target, color="grey", ls="--", label=f"target {target} %")
    axes[0].set_ylabel("offered load\n(req / real s)")
    axes[1].set_ylabel("CPU utilization\n(% of request)")
    axes[2].set_ylabel("replicas")
    axes[2].yaxis.get_major_locator().set_params(integer=True)
    axes[3].set_ylabel("p99 latency (ms)")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("emulated time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[0].set_title(title)
    return fig


def emulate(deployment: Deployment, hpa: HPA, target_utilization: int, profile: Sequence[tuple[float, float]], payload: Any, time_scale: float = TIME_SCALE, sync_period_s: float = SYNC_PERIOD_S) -> Emulation:
    """Drive ``deployment`` with the open-loop ``profile`` (real seconds, req/s) under ``hpa``."""
    from labkit.measure import load

    before = deployment.lb_stats()
    n_events = len(deployment.events)
    auto = Autoscaler(deployment, hpa, target_utilization, time_scale, sync_period_s)
    with auto:
        result = load.ramp(deployment.url + "/predict", payload, list(profile))
    after = deployment.lb_stats()
    lb = {k: after[k] - before[k] for k in ("requests", "ok", "retries", "errors")}
    return Emulation(result, list(auto.samples), hpa, list(profile), time_scale, target_utilization, auto.t0, deployment.events[n_events:], lb)


def payload(n_digits: int = DIGITS_PER_REQUEST, tta: int = TTA, offset: int = 0) -> dict[str, Any]:
    """A /predict body: ``n_digits`` test digits, each classified ``tta`` times (shifted) and averaged."""
    from labkit.apps.wire import ModelServerCodec
    from labkit.data import load_digits

    return ModelServerCodec(tta).encode(load_digits().x_test[offset : offset + n_digits])


@dataclass(frozen=True)
class Calibration:
    """One replica measured alone: CPU per request (psutil) and unloaded latency."""

    cpu_s_per_request: float
    p50_s: float
    p99_s: float
    cpu_request_milli: int

    def capacity_per_s(self, target_utilization: float) -> float:
        """Requests per second one replica takes before its CPU passes ``target_utilization`` % of its request."""
        return self.cpu_request_milli / 1000 * target_utilization / 100 / self.cpu_s_per_request

    def predicted_replicas(self, rate_per_s: float, target_utilization: float, min_replicas: int = 1, max_replicas: int = 10) -> int:
        """Replicas the HPA settles at for ``rate_per_s``: ceil(total usage / (request · target)), clamped."""
        import math

        need = math.ceil(round(rate_per_s / self.capacity_per_s(target_utilization), 6))
        return max(min_replicas, min(max_replicas, need))


def calibrate(deployment: Deployment, payload: Any, n_requests: int = 30) -> Calibration:
    """Measure one ready replica: CPU seconds per request and unloaded latency (closed loop, 1 client)."""
    from labkit.measure import load

    if deployment.spec_replicas != 1:
        raise BadInput("calibrate with exactly one replica: call deployment.scale(1) first")
    deployment.wait_ready()
    with deployment._lock:
        pod = next(p for p in deployment.pods if p.ready_since is not None and not p.terminating)
    load.closed_loop(deployment.url + "/predict", payload, concurrency=1, n_requests=3)  # warm-up
    cpu0 = pod.cpu_s() or 0.0
    result = load.closed_loop(deployment.url + "/predict", payload, concurrency=1, n_requests=n_requests)
    cpu1 = pod.cpu_s() or 0.0
    if result.errors:
        raise ServiceUnavailable(f"calibration: {result.errors} of {result.n} requests failed: {result.first_error()}")
    stats = result.stats()
    per_request = max((cpu1 - cpu0) / n_requests, 1e-4)
    return Calibration(per_request, stats.p50, stats.p99, deployment.cpu_request_milli)
