"""``labkit bench hpa``: does the emulated HPA settle where the algorithm says, and does it help?

The emulation (local replica processes, a kube-proxy-like Service, the HPA algorithm of Kubernetes
v1.35.0). One replica is calibrated first (CPU seconds per request with psutil, unloaded p99
through the Service). Then a step load of about 2.5 replicas' worth of requests (at the CPU
target) hits the Deployment twice, under two autoscaling/v2 HPAs with the same behavior (max 3
replicas, 60 s scale-down window):

- **CPU HPA** (Resource cpu, 50 % of the request) — the targets:
  the replica count it settles at is within ±1 of ``ceil(rate · cpu per request / (request · target))``;
  p99 latency once the new replicas are ready is ≤ 2 × the single replica's unloaded p99;
- **in-flight HPA** (Pods metric ``labkit_inflight_requests``, its average value per replica computed
  from the calibration so that the predicted replicas meet it at the step rate — ``Calibration.inflight_target``
  — read from the replicas' own counters as a Prometheus adapter would) — reported beside it:
  replicas reached, p99, requests failed, replica-seconds; and the time to scale up and down.

Used in 08 (the notebook runs the same comparison under a ramp).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from labkit import bench, config
from labkit.kube import emulator
from labkit.kube.hpa import HPA, SYNC_PERIOD_S

TARGET_UTILIZATION = 50
MAX_REPLICAS = 3
LOAD_FACTOR = 2.5  # the step asks for this many replicas' capacity at the CPU target
MAX_RATE_PER_S = 40.0
BEHAVIOR = {"scaleDown": {"stabilizationWindowSeconds": 60}}
CPU_METRIC = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": TARGET_UTILIZATION}}}


def _inflight_metric(target_per_replica: float) -> dict[str, Any]:
    """The in-flight HPA's metric, ``target_per_replica`` requests in flight per replica (averageValue, in milli)."""
    value = f"{max(1, round(target_per_replica * 1000))}m"
    return {"type": "Pods", "pods": {"metric": {"name": emulator.INFLIGHT_METRIC}, "target": {"type": "AverageValue", "averageValue": value}}}


__all__ = ["run"]


def _figures(prefix: str, run: emulator.Emulation) -> list[bench.Target]:
    return [
        bench.Target(f"hpa {prefix}: most replicas", float(max(run.replicas()[1], default=0)), "replicas"),
        bench.Target(f"hpa {prefix}: p99 latency", run.p99_ms(), "ms"),
        bench.Target(f"hpa {prefix}: requests failed", float(run.errors()), "requests"),
        bench.Target(f"hpa {prefix}: replica-seconds", run.replica_seconds(), "replica·s (emulated)"),
    ]


def run(fast: bool = True) -> bench.Result:
    """Calibrate one replica, apply a step load under each HPA, measure where and how fast they settle."""
    from labkit.measure.timing import percentiles
    from labkit.runtime.progress import tqdm

    time_scale = 20.0 if fast else 10.0
    step_s = 20.0 if fast else 45.0
    down_s = 8.0 if fast else 15.0
    bar = tqdm(total=3, desc="bench hpa", leave=False)
    body = emulator.payload()
    dep = emulator.start_deployment(replicas=1)
    with dep:
        bar.set_postfix_str("calibrate")
        cal = emulator.calibrate(dep, body, n_requests=20 if fast else 60)
        bar.update()
        rate = min(LOAD_FACTOR * cal.capacity_per_s(TARGET_UTILIZATION), MAX_RATE_PER_S)
        predicted = cal.predicted_replicas(rate, TARGET_UTILIZATION, 1, MAX_REPLICAS)
        inflight_target = cal.inflight_target(rate, predicted)
        profile = [(step_s, rate), (down_s, 0.5)]
        bar.set_postfix_str(f"CPU HPA, step load {rate:.1f}/s")
        run_cpu = emulator.emulate(dep, HPA(1, MAX_REPLICAS, behavior=BEHAVIOR, metrics=[CPU_METRIC]), profile, body, time_scale=time_scale)
        bar.update()
        bar.set_postfix_str("in-flight HPA, same load")
        dep.scale(1)
        dep.wait_ready()
        run_inflight = emulator.emulate(dep, HPA(1, MAX_REPLICAS, behavior=BEHAVIOR, metrics=[_inflight_metric(inflight_target)]), profile, body, time_scale=time_scale)
        bar.update()
    bar.close()
    step_end = run_cpu.phase_end_s(0)
    in_step = [s for s in run_cpu.samples if s.t_s <= step_end]
    tail = in_step[len(in_step) * 2 // 3 :] or in_step
    settled = Counter(s.replicas for s in tail).most_common(1)[0][0]
    t_up = run_cpu.time_to(settled, ready=True)
    t_settled = (t_up if t_up is not None else step_end) + 2 * SYNC_PERIOD_S  # queue drained
    after = [r.latency_s for r in run_cpu.load.ok if t_settled <= run_cpu.emulated(r.start) <= step_end]
    p99_after = percentiles(after, [99])[99] if after else float("nan")
    ratio = p99_after / cal.p99_s if after else float("inf")
    t_down = run_cpu.time_to(1, after_s=step_end, ready=False)
    figures: dict[str, Any] = {
        "emulation": emulator.EMULATION_LABEL,
        "service": dep.service,
        "rate_per_s": round(rate, 2),
        "cpu_ms_per_request": round(cal.cpu_s_per_request * 1e3, 2),
        "capacity_per_s_at_target": round(cal.capacity_per_s(TARGET_UTILIZATION), 2),
        "predicted_replicas": predicted,
        "settled_replicas": settled,
        "unloaded_p99_ms": round(cal.p99_s * 1e3, 1),
        "p99_after_scale_up_ms": round(p99_after * 1e3, 1),
        "cpu_hpa": run_cpu.summary() | {"lb": run_cpu.lb},
        "inflight_hpa": run_inflight.summary() | {"lb": run_inflight.lb, "target_per_replica": round(inflight_target, 3)},
        "time_scale": time_scale,
        "fast": fast,
        "strict": config.strict(),
        "samples_cpu": [s.__dict__ | {"values": dict(s.values)} for s in run_cpu.samples],
        "samples_inflight": [s.__dict__ | {"values": dict(s.values)} for s in run_inflight.samples],
    }
    return bench.Result(
        name="hpa",
        targets=[
            bench.Target("hpa settled replicas minus predicted (abs)", abs(settled - predicted), "replicas", "<=", 1),
            bench.Target("hpa p99 after scale-up / unloaded single-replica p99", ratio, "x", "<=", 2.0),
            bench.Target("hpa time to scale up (ready)", t_up if t_up is not None else float("nan"), "emulated s"),
            bench.Target("hpa time to scale down after the load drop", t_down if t_down is not None else float("nan"), "emulated s"),
            *_figures("CPU HPA", run_cpu),
            *_figures("in-flight HPA", run_inflight),
        ],
        figures=figures,
    )
