"""Checks for notebook 08 (Kubernetes + HPA): the replica formula by hand, a behavior, the cost of a run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labkit.errors import BadInput
from labkit.exercises import verdict

__all__ = ["EXERCISE_PODS", "EXERCISE_TARGET", "check_behavior", "check_desired", "check_replica_seconds"]

# ★: 4 pods with a 200m CPU request, target 50 %, after the load fell: two ready pods measured,
# one new pod without metrics yet, one pod measured but not ready.
EXERCISE_PODS: list[dict[str, Any]] = [
    {"request_milli": 200, "usage_milli": 20, "ready": True},
    {"request_milli": 200, "usage_milli": 40, "ready": True},
    {"request_milli": 200, "usage_milli": None, "ready": False},
    {"request_milli": 200, "usage_milli": 10, "ready": False},
]
EXERCISE_TARGET = 50


def check_desired(answer: int | None) -> bool:
    """★ ``answer``: the replicas the HPA proposes for EXERCISE_PODS at EXERCISE_TARGET (current 4)."""
    from labkit.kube.hpa import resource_replicas

    want, _ = resource_replicas(4, EXERCISE_PODS, EXERCISE_TARGET)
    problem = None
    if not isinstance(answer, int) or isinstance(answer, bool):
        problem = f"expected a whole number of replicas, got {answer!r}"
    elif answer in (1, 2):
        problem = f"{answer} uses only the measured ratio (0.3); on a scale-down the pod without metrics counts as 100 % of its request"
    elif answer != want:
        problem = f"{answer} is not what the controller proposes"
    return verdict(
        "Desired replicas by hand",
        answer,
        problem,
        "first the ratio over the ready, measured pods (Σ usage / Σ request, in whole percent, / target); it is < 1, so scale-down rules: the pod without metrics counts as 100 % of its request, the unready pod is left out — recompute (whole percent), then ceil(ratio × pods counted)",
        f"{want} replicas, as resource_replicas says.",
    )


def check_behavior(behavior: Mapping[str, Any] | None) -> bool:
    """★★ ``behavior``: scale down at most 1 replica per 60 s, only after 90 s of lower
    recommendations; scale up as fast as the default (1 → 5 in one sync)."""
    from labkit.kube.hpa import HPA

    problem = None
    if behavior is not None:
        try:
            h = HPA(1, 10, behavior=behavior)
        except BadInput as exc:
            problem = f"not a valid behavior: {exc}"
        else:
            current, t, removals = 6, 0.0, []
            h.step(0.0, current, current)
            while t < 400 and problem is None:
                t += 15.0
                new = h.step(t, current, 1)
                if new < current:
                    if current - new > 1:
                        problem = f"at t={t:.0f} s it removed {current - new} replicas at once; one at a time, please"
                    removals.append(t)
                current = new
            if problem is None:
                if not removals:
                    problem = "it never scaled down (within 400 s of low load)"
                elif removals[0] < 90:
                    problem = f"the first scale-down came at t={removals[0]:.0f} s, before 90 s of low recommendations"
                elif removals[0] > 105:
                    problem = f"the first scale-down waited until t={removals[0]:.0f} s; 90 s is enough"
                elif any(b - a < 60 for a, b in zip(removals, removals[1:])):
                    problem = f"removals at {removals}: closer than 60 s apart"
            if problem is None and HPA(1, 10, behavior=behavior).step(0.0, 1, 10) != 5:
                problem = "scale-up is no longer the default's 1 → 5 in one sync; leave scaleUp alone"
    return verdict(
        "Scale-down behavior",
        behavior,
        problem,
        "only a scaleDown key: a stabilizationWindowSeconds, and one policy of type Pods with a value and a periodSeconds",
    )


def check_replica_seconds(run: Any, answer: float | None) -> bool:
    """★★★ ``answer``: replica-seconds (Σ replicas × emulated seconds until the next sync) of ``run``."""
    want = run.replica_seconds()
    problem = None
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        problem = f"expected a number, got {answer!r}"
    elif abs(answer - want) > 0.02 * max(want, 1.0):
        problem = f"{answer:.0f} is off by more than 2 %"
    return verdict(
        "Replica-seconds",
        answer,
        problem,
        "walk run.samples in pairs (a, b): add a.replicas × (b.t_s − a.t_s)",
        f"{want:.0f} replica·s — what you would pay for.",
    )
