"""``labkit bench hpa``: does the emulated HPA settle where the algorithm says, and does it help?

One replica is calibrated first (CPU seconds per request with psutil, unloaded p99 through the
balancer). Then a step load of about 2.5 replicas' worth of requests hits the Deployment under an
autoscaling/v2 HPA (target 50 % CPU, max 3 replicas, 60 s scale-down window):

- the replica count it settles at is within ±1 of ``ceil(rate · cpu per request / (request · target))``;
- p99 latency once the new replicas are ready is ≤ 2 × the single replica's unloaded p99;
- time to scale up (ready) and down, in emulated seconds, are reported.

Used in 08 (the notebook runs the same emulation).
"""

from __future__ import annotations

from collections import Counter

from labkit import bench, config
from labkit.kube import emulator
from labkit.kube.hpa import HPA, SYNC_PERIOD_S

TARGET_UTILIZATION = 50
MAX_REPLICAS = 3
LOAD_FACTOR = 2.5  # the step asks for this many replicas' capacity at the target
MAX_RATE_PER_S = 40.0
BEHAVIOR = {"scaleDown": {"stabilizationWindowSeconds": 60}}


__all__ = ["run"]


def run(fast: bool = True) -> bench.Result:
    """Calibrate one replica, apply a step load, measure where and how fast the HPA settles."""
    from tqdm.auto import tqdm

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
        bar.set_postfix_str(f"step load {rate:.1f}/s")
        hpa = HPA(1, MAX_REPLICAS, behavior=BEHAVIOR)
        run_ = emulator.emulate(dep, hpa, TARGET_UTILIZATION, [(step_s, rate), (down_s, 0.5)], body, time_scale=time_scale)
        bar.update()
    step_end = run_._t(run_.load.started) + step_s * time_scale
    in_step = [s for s in run_.samples if s.t_s <= step_end]
    tail = in_step[len(in_step) * 2 // 3 :] or in_step
    settled = Counter(s.replicas for s in tail).most_common(1)[0][0]
    t_up = run_.time_to(settled, ready=True)
    t_settled = (t_up if t_up is not None else step_end) + 2 * SYNC_PERIOD_S  # queue drained
    after = [r.latency_s for r in run_.load.ok if t_settled <= run_._t(r.start) <= step_end]
    from labkit.measure.timing import percentiles

    p99_after = percentiles(after, [99])[99] if after else float("nan")
    ratio = p99_after / cal.p99_s if after else float("inf")
    t_down = run_.time_to(1, after_s=step_end, ready=False)
    bar.update()
    bar.close()
    return bench.Result(
        name="hpa",
        targets=[
            bench.Target("hpa settled replicas minus predicted (abs)", abs(settled - predicted), "replicas", "<=", 1),
            bench.Target("hpa p99 after scale-up / unloaded single-replica p99", ratio, "x", "<=", 2.0),
            bench.Target("hpa time to scale up (ready)", t_up if t_up is not None else float("nan"), "emulated s"),
            bench.Target("hpa time to scale down after the load drop", t_down if t_down is not None else float("nan"), "emulated s"),
        ],
        figures={
            "rate_per_s": round(rate, 2),
            "cpu_ms_per_request": round(cal.cpu_s_per_request * 1e3, 2),
            "capacity_per_s_at_target": round(cal.capacity_per_s(TARGET_UTILIZATION), 2),
            "predicted_replicas": predicted,
            "settled_replicas": settled,
            "unloaded_p99_ms": round(cal.p99_s * 1e3, 1),
            "p99_after_scale_up_ms": round(p99_after * 1e3, 1),
            "errors": run_.errors(),
            "lb": run_.lb,
            "time_scale": time_scale,
            "fast": fast,
            "strict": config.strict(),
            "samples": [s.__dict__ for s in run_.samples],
        },
    )
