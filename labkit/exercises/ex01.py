"""Checks for notebook 01 · Pipeline inference.

    from labkit.exercises import ex01
    ex01.check_bound(bound_per_s, stage_times_s)
    ex01.check_bottleneck_replica(stage, stage_times_s, before, after)
"""

from __future__ import annotations

from typing import Any

from labkit.exercises import is_unanswered, verdict
from labkit.measure import guards

__all__ = ["check_bottleneck_replica", "check_bound"]

BOUND_TOLERANCE = 0.02


def check_bound(bound_per_s: float | None, stage_times_s: dict[str, float]) -> bool:
    """★ The answer must be 1 / (slowest stage's seconds per item), in items per second."""
    hint = "the pipeline can go no faster than its slowest stage: take the largest time per item and invert it"
    if is_unanswered(bound_per_s):
        return verdict("bound from stage timings", bound_per_s, None, hint)
    expected = 1.0 / max(stage_times_s.values())
    problem = None
    try:
        value = float(bound_per_s)
    except (TypeError, ValueError):
        value = float("nan")
        problem = f"expected a number of items per second, got {type(bound_per_s).__name__}"
    if problem is None and not abs(value - expected) <= BOUND_TOLERANCE * expected:
        if abs(value - 1.0 / expected) <= BOUND_TOLERANCE / expected:
            problem = f"{value:.4g} is a time per item (seconds); the bound is a rate (items per second)"
        elif abs(value - 1.0 / sum(stage_times_s.values())) <= BOUND_TOLERANCE * expected:
            problem = f"{value:.4g}/s is the sequential rate (1 / sum of the stages); a pipeline overlaps the stages"
        else:
            problem = f"{value:.4g}/s is not 1 / (slowest stage time) computed from these timings"
    return verdict("bound from stage timings", bound_per_s, problem, hint, success=f"bound = {expected:.0f} items/s from the stage times you passed "
                   "(§2's stage_s has one scene per item: this is §2's bound, in scenes/s).")


def check_bottleneck_replica(stage: str | None, stage_times_s: dict[str, float], before: Any, after: Any) -> bool:
    """★★ ``stage`` must be the slowest stage; ``after`` must run it with 2 replicas and give the same outputs.

    The throughput change is reported, not enforced: on a busy 2-core machine a second replica
    can only help while a core is idle, and the message says which case you measured. A gain above
    2× (or above the usable cores) means the single-replica run was slowed: refused, with the reason.
    """
    hint = "the bottleneck is the stage with the largest time per item; run pipeline.with_replicas(stages, <that stage>=2)"
    if is_unanswered(stage) or is_unanswered(after):
        return verdict("second replica for the bottleneck", None, None, hint)
    slowest = max(stage_times_s, key=lambda k: stage_times_s[k])
    problem = None
    if stage != slowest:
        problem = f"{stage!r} is not the bottleneck: the slowest stage measured alone is {slowest!r}"
    elif f"{stage}-1" not in after.timeline.workers():
        problem = f"the second run has no worker {stage}-1: give {stage!r} 2 replicas"
    elif len(after.outputs) != len(before.outputs):
        problem = "the two runs did not process the same items"
    else:
        flat_b, flat_a = before.flat(), after.flat()
        same = all(len(b[0]) == len(a[0]) and (b[0] == a[0]).all() and (b[1] == a[1]).all() for b, a in zip(flat_b, flat_a))
        if not same:
            problem = "the predictions changed, or their order: a replica must not change what the pipeline computes"
    ratio = after.throughput_per_s / before.throughput_per_s
    if problem is None:
        refused = guards.refusal(guards.speedup_within_cores(ratio, workers=2))  # one more replica: at most 2× (and never above the cores)
        if refused:
            print(f"⚠️ second replica for the bottleneck: {refused}")
            return False
        how = "throughput rose" if ratio > 1.05 else ("throughput did not rise: a replica helps only while a core is idle "
               "(compare the Gantt rows, and the probe line for other programs)")
        return verdict("second replica for the bottleneck", stage, None, hint, success=f"{how}, {ratio:.2f}× the single-replica run.")
    return verdict("second replica for the bottleneck", stage, problem, hint)
