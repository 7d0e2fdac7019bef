"""Emulated autoscaling runs: the request payload, one-replica calibration, a run under a load
profile, and the analysis of what it cost (replicas over time, p99, failures, replica-seconds).

Everything here measures the emulation — real replica processes, a real balancer, the HPA
algorithm of Kubernetes v1.35.0 — on this machine, not a cluster. Used in 08 and 14.

    body = payload()
    with start_deployment() as dep:
        cal = calibrate(dep, body)
        run = emulate(dep, hpa.HPA(1, 3), [(10, 2), (20, 20)], body, target_utilization=50)
    print(run.summary())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadInput, ServiceUnavailable
from labkit.kube.autoscaler import TIME_SCALE, Autoscaler, Sample
from labkit.kube.deployment import Deployment
from labkit.kube.hpa import HPA, SYNC_PERIOD_S

__all__ = ["DIGITS_PER_REQUEST", "TTA", "Calibration", "Emulation", "calibrate", "emulate", "payload"]

DIGITS_PER_REQUEST = 8
TTA = 32  # test-time augmentation copies per digit: about 10 ms of CPU per request on a laptop core


@dataclass
class Emulation:
    """One autoscaling run: the load, the HPA's samples and decisions, the Deployment's events."""

    load: Any  # labkit.measure.load.LoadResult
    samples: list[Sample]
    hpa: HPA
    profile: list[tuple[float, float]]
    time_scale: float
    target_utilization: int | None
    t0: float
    events: list[tuple[float, str, str]] = field(default_factory=list)
    lb: dict[str, Any] = field(default_factory=dict)

    def emulated(self, t: float) -> float:
        """Emulated seconds since the run's autoscaler started, at monotonic time ``t``."""
        return (t - self.t0) * self.time_scale

    def started_s(self) -> float:
        """When the load started, in emulated seconds."""
        return self.emulated(self.load.started)

    def phase_end_s(self, index: int) -> float:
        """Emulated time at which phase ``index`` of the profile ends."""
        return self.started_s() + sum(d for d, _ in self.profile[: index + 1]) * self.time_scale

    def offered(self) -> tuple[list[float], list[float]]:
        """Offered load (requests per real second) as a step series over emulated seconds."""
        ts, ys, start = [], [], self.started_s()
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

    def metric(self, label: str) -> tuple[list[float], list[float]]:
        """The current value of one of the HPA's metrics (its ``MetricSpec.label``) at each sync."""
        pts = [(s.t_s, s.values.get(label)) for s in self.samples if s.values.get(label) is not None]
        return [t for t, _ in pts], [float(v) for _, v in pts]  # type: ignore[arg-type]

    def latency_p99(self, bin_s: float | None = None) -> tuple[list[float], list[float]]:
        """p99 latency (ms) of the requests started in each bin (default: one sync period)."""
        from labkit.measure.timing import percentiles

        width = (bin_s or SYNC_PERIOD_S) / self.time_scale
        bins: dict[int, list[float]] = {}
        for r in self.load.ok:
            bins.setdefault(int((r.start - self.load.started) // width), []).append(r.latency_s)
        keys = sorted(bins)
        offset = self.started_s()
        return [offset + (k + 0.5) * width * self.time_scale for k in keys], [percentiles(bins[k], [99])[99] * 1e3 for k in keys]

    def errors(self) -> int:
        """Requests that failed (the client saw an error), every cause counted."""
        return int(self.load.errors)

    def p99_ms(self) -> float:
        """p99 latency of every successful request of the run, in ms (nan if none succeeded)."""
        return self.load.stats().p99 * 1e3 if self.load.ok else float("nan")

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

    def reached_s(self, replicas: int, ready: bool = True) -> float | None:
        """Emulated seconds until at least ``replicas`` were (ready and) set for the first time, or None (a jump 1 → 3 reaches 2 too)."""
        return next((s.t_s for s in self.samples if (s.ready if ready else s.replicas) >= replicas), None)

    def pod_start_s(self) -> list[float]:
        """Emulated seconds each replica started in this run took from start to ready."""
        started = {name: t for t, what, name in self.events if what == "started"}
        return [(t - started[name]) * self.time_scale for t, what, name in self.events if what == "ready" and name in started]

    def replica_seconds(self) -> float:
        """Area under the replicas step curve (spec.replicas), in replica · emulated seconds: the cost."""
        pts = self.samples
        return float(sum(a.replicas * (b.t_s - a.t_s) for a, b in zip(pts, pts[1:])))

    def line(self) -> str:
        """The run's figures in one sentence with units (the same figures as ``summary``)."""
        d = self.summary()
        text = f"{d['requests']} requests, {d['errors']} failed, up to {d['max_replicas']} replica{'' if d['max_replicas'] == 1 else 's'}, {d['replica_seconds']} replica·s"
        if "p99_ms" in d:
            text += f", p99 {d['p99_ms']} ms"
        if d["pod_start_s"] is not None:
            text += f", a new pod ready after {d['pod_start_s']} s"
        if d["held_s"] is not None:
            text += f", scale-down held {d['held_s']} s"
        if d["lb_retries"]:
            text += f", {d['lb_retries']} balancer retries"
        return text

    def summary(self) -> dict[str, Any]:
        """The figures of the run, one flat dict (for tables and bench lines)."""
        d: dict[str, Any] = {"requests": self.load.n, "errors": self.errors(), "max_replicas": max((s.replicas for s in self.samples), default=0)}
        d["replica_seconds"] = round(self.replica_seconds())
        d["lb_retries"] = self.lb.get("retries", 0)
        d["held_s"] = None if (held := self.held_s()) is None else round(held)
        starts = self.pod_start_s()
        d["pod_start_s"] = round(sum(starts) / len(starts)) if starts else None
        if self.load.ok:
            d["p99_ms"] = round(self.p99_ms(), 1)
        return d


def emulate(deployment: Deployment, hpa: HPA, profile: Sequence[tuple[float, float]], payload: Any, target_utilization: int | None = None, time_scale: float = TIME_SCALE, sync_period_s: float = SYNC_PERIOD_S) -> Emulation:
    """Drive ``deployment`` with the open-loop ``profile`` (real seconds, req/s) under ``hpa``.

    The HPA scales on ``hpa.metrics`` (or on CPU at ``target_utilization`` % when it has none).
    """
    from labkit.measure import load

    if isinstance(profile, (int, float)) or not profile:
        raise BadInput("profile must be a list of (duration_s, rate_per_s) phases")
    before = deployment.lb_stats()
    n_events = len(deployment.events)
    auto = Autoscaler(deployment, hpa, target_utilization, time_scale, sync_period_s)
    with auto:
        result = load.ramp(deployment.url + "/predict", payload, list(profile))
    after = deployment.lb_stats()
    lb = {k: after[k] - before[k] for k in ("requests", "ok", "retries", "errors")} | {"mode": after.get("mode")}
    return Emulation(result, list(auto.samples), hpa, list(profile), time_scale, auto.target_utilization, auto.t0, deployment.events[n_events:], lb)


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
        need = math.ceil(round(rate_per_s / self.capacity_per_s(target_utilization), 6))
        return max(min_replicas, min(max_replicas, need))

    def inflight_target(self, rate_per_s: float, replicas: int) -> float:
        """An in-flight target per replica that ``replicas`` replicas meet at ``rate_per_s`` at the unloaded
        latency: rate per replica × unloaded p50 (Little's law). One replica alone at that rate holds
        ``replicas``× it, so an HPA on this target asks for about ``replicas`` (used in 08 and ``labkit bench hpa``)."""
        return rate_per_s / replicas * self.p50_s

    def inflight_per_replica(self, rate_per_s: float, replicas: int) -> float:
        """Requests in flight per replica for ``rate_per_s`` over ``replicas`` (M/D/1 queue, Little's law):
        ρ + ρ² / (2 (1 − ρ)) with ρ = rate · CPU per request / replicas (inf at ρ ≥ 1)."""
        rho = rate_per_s * self.cpu_s_per_request / replicas
        return float("inf") if rho >= 1 else rho + rho * rho / (2 * (1 - rho))


def calibrate(deployment: Deployment, payload: Any, n_requests: int = 30) -> Calibration:
    """Measure one ready replica: CPU seconds per request and unloaded latency (closed loop, 1 client)."""
    from labkit.measure import load

    if deployment.spec_replicas != 1:
        raise BadInput("calibrate with exactly one replica: call deployment.scale(1) first")
    deployment.wait_ready()
    pod = next(p for p in deployment.replicas() if p.ready)
    load.closed_loop(deployment.url + "/predict", payload, concurrency=1, n_requests=3)  # warm-up
    cpu0 = pod.cpu_s() or 0.0
    result = load.closed_loop(deployment.url + "/predict", payload, concurrency=1, n_requests=n_requests)
    cpu1 = pod.cpu_s() or 0.0
    if result.errors:
        raise ServiceUnavailable(f"calibration: {result.errors} of {result.n} requests failed: {result.first_error()}")
    stats = result.stats()
    per_request = max((cpu1 - cpu0) / n_requests, 1e-4)
    return Calibration(per_request, stats.p50, stats.p99, deployment.cpu_request_milli)
