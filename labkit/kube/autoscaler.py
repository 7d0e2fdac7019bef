"""The HPA control loop of the emulation: read the replicas' metrics, ask the ported controller, scale.

Every sync period (15 s, divided by ``time_scale`` in real time) the ``Autoscaler``:

1. lists the Deployment's pods as the controller would see them (phase, Ready condition and its
   transition time, start time — in emulated seconds) — ``pods_now``;
2. reads each pod's metrics the way the cluster's metric pipelines would:
   - ``cpu`` (Resource metrics, what metrics-server serves): CPU seconds of the replica's process
     tree from psutil, as a rate over the last scrape interval, in millicores;
   - Pods metrics (what a Prometheus adapter or KEDA serves from the replicas' own counters): each
     replica's ``/metrics`` is scraped; ``labkit_inflight_requests`` is the time-average of the
     in-flight gauge over the interval (Δ labkit_inflight_seconds_total / Δt), in milli-units;
   a pod seen for the first time has no sample yet (missing, as upstream);
3. gives them to ``labkit.kube.hpa.HPA.propose`` (the v1.35.0 replica calculator, largest proposal
   over the metrics) and ``HPA.step`` (stabilisation, behaviour policies, min/max), and scales.

All times recorded are emulated seconds: the HPA's windows and policy periods are in emulated
seconds too, so the emulation runs minutes of autoscaling in seconds. This is the emulation, not a
cluster: no scheduler, no image pulls, no kubelet. Used in 08 and 14.

    auto = Autoscaler(dep, hpa.HPA(1, 3), target_utilization=50).start()
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadInput
from labkit.kube.calculator import CPU_INITIALIZATION_PERIOD_S, DELAY_OF_INITIAL_READINESS_STATUS_S, Pod, PodMetric, ReplicaCalculator
from labkit.kube.deployment import Deployment, Replica
from labkit.kube.hpa import HPA, SYNC_PERIOD_S, MetricSpec
from labkit.measure.timing import now

__all__ = ["INFLIGHT_METRIC", "TIME_SCALE", "Autoscaler", "Sample", "scrape_counters"]

TIME_SCALE = 20.0  # emulated seconds per real second
INFLIGHT_METRIC = "labkit_inflight_requests"  # the Pods metric the model server's counters give
_INFLIGHT_COUNTER = "labkit_inflight_seconds_total"


@dataclass(frozen=True)
class Sample:
    """What the HPA saw and did at one sync (times in emulated seconds)."""

    t_s: float
    replicas: int  # spec.replicas after this sync
    ready: int
    utilization: int | None  # CPU percent of the request, None when no CPU proposal this sync
    proposed: int | None  # what the metrics asked for, before stabilisation and rate limits
    usage_milli: tuple[int | None, ...] = ()  # CPU of each pod
    values: Mapping[str, int | None] = field(default_factory=dict)  # current value per metric label


def scrape_counters(url: str, timeout_s: float = 0.5) -> dict[str, float] | None:
    """A replica's ``/metrics`` (Prometheus text format) as {name: value}; None if it did not answer."""
    import httpx

    try:
        r = httpx.get(url + "/metrics", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    out = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


class Autoscaler:
    """The HPA controller loop for one Deployment: list pods, read metrics, propose, step, scale.

    ``hpa.metrics`` says what it scales on; ``target_utilization`` (percent of the CPU request)
    adds a CPU Resource metric when the HPA has none (the autoscaling/v1 shortcut).
    """

    def __init__(self, deployment: Deployment, hpa: HPA, target_utilization: int | None = None, time_scale: float = TIME_SCALE, sync_period_s: float = SYNC_PERIOD_S) -> None:
        if time_scale <= 0:
            raise BadInput("time_scale must be positive")
        if target_utilization is not None and not hpa.metrics:
            hpa.metrics = [MetricSpec("Resource", "cpu", "Utilization", int(target_utilization))]
        if not hpa.metrics:
            raise BadInput("the HPA has no metrics: give target_utilization or HPA(metrics=[...])")
        for m in hpa.metrics:
            assert isinstance(m, MetricSpec)
            if m.type == "Object" or (m.type == "Resource" and m.name != "cpu") or (m.type == "Pods" and m.name != INFLIGHT_METRIC):
                raise BadInput(f"the emulated replicas expose cpu (Resource) and {INFLIGHT_METRIC} (Pods); not {m.label}")
        self.deployment = deployment
        self.hpa = hpa
        self.time_scale = time_scale
        self.sync_period_s = sync_period_s
        self.calculator = ReplicaCalculator(CPU_INITIALIZATION_PERIOD_S, DELAY_OF_INITIAL_READINESS_STATUS_S)
        self.samples: list[Sample] = []
        self.t0 = now()
        self._cpu: dict[str, tuple[float, float]] = {}
        self._inflight: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hpa", daemon=True)

    @property
    def target_utilization(self) -> int | None:
        cpu = [m.target for m in self.hpa.metrics if isinstance(m, MetricSpec) and m.type == "Resource" and m.target_type == "Utilization"]
        return cpu[0] if cpu else None

    def emulated(self, t: float | None = None) -> float:
        """Emulated seconds since the autoscaler started, at monotonic time ``t`` (default now)."""
        return ((now() if t is None else t) - self.t0) * self.time_scale

    def pods_now(self, replicas: list[Replica]) -> list[Pod]:
        """The pods as the controller lists them (emulated times; a starting pod is Running, not Ready)."""
        out = []
        for r in replicas:
            ready = r.ready_since is not None
            changed = self.emulated(r.ready_since if ready else r.started)
            out.append(Pod(r.name, self.deployment.cpu_request_milli, "Running", ready, changed, self.emulated(r.started), r.terminating))
        return out

    def scrape(self, replicas: list[Replica]) -> dict[str, dict[str, PodMetric]]:
        """One scrape of every live pod: {"cpu": {pod: sample}, INFLIGHT_METRIC: {pod: sample}}."""
        t = now()
        cpu: dict[str, PodMetric] = {}
        inflight: dict[str, PodMetric] = {}
        want_inflight = any(isinstance(m, MetricSpec) and m.type == "Pods" for m in self.hpa.metrics)
        for r in (r for r in replicas if not r.terminating):
            used = r.cpu_s()
            prev = self._cpu.get(r.name)
            if used is not None:
                if prev is not None and t > prev[0]:
                    cpu[r.name] = PodMetric(round(1000 * (used - prev[1]) / (t - prev[0])), self.emulated(t), (t - prev[0]) * self.time_scale)
                self._cpu[r.name] = (t, used)
            if want_inflight:
                counters = scrape_counters(r.url)
                prev = self._inflight.get(r.name)
                if counters is not None and _INFLIGHT_COUNTER in counters:
                    if prev is not None and t > prev[0]:
                        avg = (counters[_INFLIGHT_COUNTER] - prev[1]) / (t - prev[0])
                        inflight[r.name] = PodMetric(round(1000 * max(avg, 0.0)), self.emulated(t), (t - prev[0]) * self.time_scale)
                    self._inflight[r.name] = (t, counters[_INFLIGHT_COUNTER])
        live = {r.name for r in replicas}
        self._cpu = {k: v for k, v in self._cpu.items() if k in live}
        self._inflight = {k: v for k, v in self._inflight.items() if k in live}
        return {"cpu": cpu, INFLIGHT_METRIC: inflight}

    def sync(self) -> Sample:
        """One sync period of the controller."""
        dep = self.deployment
        spec = dep.spec_replicas
        replicas = dep.replicas()
        samples = self.scrape(replicas)
        t_s = self.emulated()
        pods = self.pods_now(replicas)
        status = sum(1 for p in pods if not p.deleting)  # status.replicas: pods of the ReplicaSet
        proposed, detail = self.hpa.propose(spec, status, pods, samples, now_s=t_s, calculator=self.calculator)
        new = spec
        if proposed is not None:  # else: every metric failed (or some failed on a scale-down): no change
            new = self.hpa.step(t_s, spec, proposed)
            if new != spec:
                dep.scale(new)
        utilization = next((v for m, r, v in detail if m.type == "Resource" and m.target_type == "Utilization" and isinstance(r, int)), None)
        usage = tuple(samples["cpu"][p.name].value_milli if p.name in samples["cpu"] else None for p in pods if not p.deleting)
        sample = Sample(t_s, new, dep.ready_replicas(), utilization, proposed, usage, {m.label: v for m, _, v in detail})
        self.samples.append(sample)
        return sample

    def _loop(self) -> None:
        period = self.sync_period_s / self.time_scale
        next_t = now() + period  # the first sync one period after the first scrape
        while not self._stop.wait(max(0.0, next_t - now())):
            try:
                self.sync()
            except Exception as exc:  # a failed sync is logged and the loop goes on, as the controller does
                self.deployment.events.append((now(), f"hpa sync error: {type(exc).__name__}: {exc}", "hpa"))
            next_t += period

    def start(self) -> Autoscaler:
        self.t0 = now()
        self.scrape(self.deployment.replicas())  # first scrape: a rate needs two
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> Autoscaler:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
