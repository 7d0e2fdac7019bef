"""The Kubernetes Horizontal Pod Autoscaler's replica algorithm, pure and clock-injected.

A port of the controller in kubernetes/kubernetes ``pkg/controller/podautoscaler``:

- ``resource_replicas`` is ``ReplicaCalculator.GetResourceReplicas`` (replica_calculator.go) with
  ``GetResourceUtilizationRatio`` (metrics/utilization.go): utilization = 100 · Σ usage / Σ requests
  (integer percent) over pods with metrics; inside the tolerance band nothing changes; pods
  missing metrics count as 0 % on a scale-up and 100 % of their request on a scale-down; unready
  pods count as 0 % on a scale-up and are ignored otherwise; if that flips the direction, nothing
  changes.
- ``HPA.step`` is what ``reconcileAutoscaler`` (horizontal.go) does with that proposal: stabilize
  it over a window of past recommendations, limit the rate with the ``behavior`` policies, clamp
  to [minReplicas, maxReplicas]. Without ``behavior`` (autoscaling/v1, or v2 without it) it takes
  the legacy path: a 5-minute scale-down window and scale-up capped at max(2 · current, 4).

No I/O and no clock: the caller passes ``now_s`` (seconds on any monotonic clock), so a test or an
emulator can run minutes of autoscaling in microseconds.

    desired, util = resource_replicas(2, [{"request_milli": 100, "usage_milli": 90, "ready": True}] * 2, 50)
    hpa = HPA(1, 10, behavior={"scaleDown": {"stabilizationWindowSeconds": 60}})
    replicas = hpa.step(now_s=15.0, current_replicas=2, desired_replicas=desired)

Used in 08 (and by labkit.kube.emulator).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labkit.errors import BadInput

__all__ = [
    "DEFAULT_DOWNSCALE_STABILIZATION_S",
    "DEFAULT_SCALE_DOWN",
    "DEFAULT_SCALE_UP",
    "DEFAULT_TOLERANCE",
    "HPA",
    "SYNC_PERIOD_S",
    "Decision",
    "behavior_with_defaults",
    "from_manifest",
    "resource_replicas",
]

SYNC_PERIOD_S = 15.0  # --horizontal-pod-autoscaler-sync-period
DEFAULT_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
DEFAULT_DOWNSCALE_STABILIZATION_S = 300  # --horizontal-pod-autoscaler-downscale-stabilization
LEGACY_SCALE_UP_FACTOR = 2.0  # scaleUpLimitFactor in horizontal.go
LEGACY_SCALE_UP_MINIMUM = 4.0  # scaleUpLimitMinimum in horizontal.go
# The API server's defaults for autoscaling/v2 behavior (pkg/apis/autoscaling/v2/defaults.go).
# scaleDown's window stays unset there; the controller then uses its flag (300 s).
DEFAULT_SCALE_UP: dict[str, Any] = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}],
}
DEFAULT_SCALE_DOWN: dict[str, Any] = {
    "stabilizationWindowSeconds": None,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
}
_SELECT = ("Max", "Min", "Disabled")
_TYPES = ("Pods", "Percent")


def resource_replicas(current_replicas: int, pods: Sequence[Mapping[str, Any]], target_utilization: float, tolerance: float = DEFAULT_TOLERANCE) -> tuple[int, int]:
    """Replicas the resource metric asks for, and the measured utilization in percent.

    ``pods``: one dict per pod of the target, ``{"request_milli": int, "usage_milli": int | None,
    "ready": bool}`` (usage None = no metrics yet; an optional ``"phase"`` of "Pending" or
    "Failed" is honoured as upstream). Raises BadInput when no pod has usable metrics (upstream:
    "did not receive metrics for any ready pods"; the controller then leaves the scale alone).

    >>> resource_replicas(50, [{"request_milli": 100, "usage_milli": 90, "ready": True}] * 50, 75)
    (60, 90)
    """
    if target_utilization <= 0:
        raise BadInput(f"target utilization must be a positive percentage, got {target_utilization}")
    if not pods:
        raise BadInput("no pods returned by selector while calculating replica count")
    metrics: dict[int, float] = {}
    requests: dict[int, float] = {}
    ready_count = 0
    ignored: set[int] = set()
    missing: set[int] = set()
    for i, pod in enumerate(pods):
        request = pod.get("request_milli")
        if request is None or request <= 0:
            raise BadInput(f"pod {i} has no CPU request: the HPA needs resources.requests.cpu on every container")
        requests[i] = float(request)
        phase = pod.get("phase", "Running")
        if phase == "Failed" or pod.get("deleting", False):
            continue  # groupPods skips deleted and failed pods entirely
        if phase == "Pending":
            ignored.add(i)
            continue
        usage = pod.get("usage_milli")
        if usage is None:
            missing.add(i)
            continue
        if not pod.get("ready", True):
            ignored.add(i)  # unready (or still initialising): not counted, see rebalance below
            continue
        metrics[i] = float(usage)
        ready_count += 1
    if not metrics:
        raise BadInput("did not receive metrics for any ready pods")

    usage_ratio, utilization = _utilization_ratio(metrics, requests, target_utilization)
    rebalance_ignored = bool(ignored) and usage_ratio > 1.0
    if not rebalance_ignored and not missing:
        if abs(1.0 - usage_ratio) <= tolerance:
            return current_replicas, utilization
        return math.ceil(usage_ratio * ready_count), utilization

    if missing:
        if usage_ratio < 1.0:  # scale-down: assume missing pods use 100 % of their request
            metrics.update({i: requests[i] for i in missing})
        elif usage_ratio > 1.0:  # scale-up: assume they use nothing
            metrics.update({i: 0.0 for i in missing})
    if rebalance_ignored:  # scale-up: unready pods count as 0 %
        metrics.update({i: 0.0 for i in ignored})

    new_ratio, _ = _utilization_ratio(metrics, requests, target_utilization)
    if abs(1.0 - new_ratio) <= tolerance or (usage_ratio < 1.0 < new_ratio) or (usage_ratio > 1.0 > new_ratio):
        return current_replicas, utilization  # too small a change, or the direction flipped
    new_replicas = math.ceil(new_ratio * len(metrics))
    if (new_ratio < 1.0 and new_replicas > current_replicas) or (new_ratio > 1.0 and new_replicas < current_replicas):
        return current_replicas, utilization
    return new_replicas, utilization


def _utilization_ratio(metrics: Mapping[int, float], requests: Mapping[int, float], target: float) -> tuple[float, int]:
    used = sum(metrics.values())
    requested = sum(requests[i] for i in metrics)
    utilization = int((used * 100) // requested)  # int64 division in Go: truncated percent
    return utilization / target, utilization


def behavior_with_defaults(behavior: Mapping[str, Any], downscale_stabilization_s: int = DEFAULT_DOWNSCALE_STABILIZATION_S) -> dict[str, Any]:
    """Fill unset fields of an autoscaling/v2 ``behavior`` as the API server and controller do."""
    unknown = set(behavior) - {"scaleUp", "scaleDown"}
    if unknown:
        raise BadInput(f"behavior has unknown keys {sorted(unknown)}; use scaleUp and scaleDown")
    out = {}
    for key, default in (("scaleUp", DEFAULT_SCALE_UP), ("scaleDown", DEFAULT_SCALE_DOWN)):
        rules = copy.deepcopy(default)
        given = behavior.get(key) or {}
        extra = set(given) - {"stabilizationWindowSeconds", "selectPolicy", "policies", "tolerance"}
        if extra:
            raise BadInput(f"behavior.{key} has unknown keys {sorted(extra)}")
        rules.update({k: copy.deepcopy(v) for k, v in given.items() if v is not None})
        if rules["stabilizationWindowSeconds"] is None:
            rules["stabilizationWindowSeconds"] = downscale_stabilization_s
        _check_rules(key, rules)
        out[key] = rules
    return out


def _check_rules(key: str, rules: Mapping[str, Any]) -> None:
    window = rules["stabilizationWindowSeconds"]
    if not isinstance(window, int) or not 0 <= window <= 3600:
        raise BadInput(f"behavior.{key}.stabilizationWindowSeconds must be an integer in 0..3600, got {window!r}")
    if rules["selectPolicy"] not in _SELECT:
        raise BadInput(f"behavior.{key}.selectPolicy must be one of {', '.join(_SELECT)}, got {rules['selectPolicy']!r}")
    for p in rules["policies"]:
        if p.get("type") not in _TYPES:
            raise BadInput(f"behavior.{key} policy type must be Pods or Percent, got {p.get('type')!r}")
        if not isinstance(p.get("value"), int) or p["value"] <= 0:
            raise BadInput(f"behavior.{key} policy value must be a positive integer, got {p.get('value')!r}")
        if not isinstance(p.get("periodSeconds"), int) or not 0 < p["periodSeconds"] <= 1800:
            raise BadInput(f"behavior.{key} policy periodSeconds must be in 1..1800, got {p.get('periodSeconds')!r}")


@dataclass(frozen=True)
class Decision:
    """One ``step``: what the metric proposed, what stabilization made of it, what was applied."""

    t_s: float
    current: int
    proposed: int
    stabilized: int
    replicas: int
    reason: str


class HPA:
    """The controller's per-HPA state: past recommendations and scale events, and ``step``.

    ``behavior`` is the autoscaling/v2 ``spec.behavior`` dict (YAML shape), or None for the legacy
    path that autoscaling/v1 objects take. ``decisions`` keeps every step for plots.
    """

    def __init__(self, min_replicas: int = 1, max_replicas: int = 10, behavior: Mapping[str, Any] | None = None, downscale_stabilization_s: int = DEFAULT_DOWNSCALE_STABILIZATION_S) -> None:
        if min_replicas < 0 or max_replicas < 1 or min_replicas > max_replicas:
            raise BadInput(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got {min_replicas}, {max_replicas}")
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.downscale_stabilization_s = downscale_stabilization_s
        self.behavior = None if behavior is None else behavior_with_defaults(behavior, downscale_stabilization_s)
        self._recommendations: list[tuple[float, int]] = []
        self._up_events: list[tuple[float, int]] = []
        self._down_events: list[tuple[float, int]] = []
        self.decisions: list[Decision] = []

    def step(self, now_s: float, current_replicas: int, desired_replicas: int) -> int:
        """Return the replica count the controller sets now, given the metric's proposal."""
        if self.decisions and now_s < self.decisions[-1].t_s:
            raise BadInput(f"time went backwards: {now_s} after {self.decisions[-1].t_s}")
        if not self._recommendations:  # recordInitialRecommendation
            self._recommendations.append((now_s, current_replicas))
        stabilized = desired_replicas
        if current_replicas == 0 and self.min_replicas != 0:
            new, reason = 0, "ScalingDisabled"
        elif current_replicas > self.max_replicas:
            new, reason = self.max_replicas, "AboveMaxReplicas"
        elif current_replicas < self.min_replicas:
            new, reason = self.min_replicas, "BelowMinReplicas"
        elif self.behavior is None:
            stabilized = self._stabilize_legacy(now_s, desired_replicas)
            new, reason = self._limit_legacy(current_replicas, stabilized)
        else:
            stabilized = self._stabilize(now_s, current_replicas, desired_replicas)
            new, reason = self._limit_rate(now_s, current_replicas, stabilized)
        if new != current_replicas and self.behavior is not None:
            events = self._up_events if new > current_replicas else self._down_events
            events.append((now_s, abs(new - current_replicas)))
        self.decisions.append(Decision(now_s, current_replicas, desired_replicas, stabilized, new, reason))
        return new

    # --- legacy path (no behavior) -----------------------------------------------------------
    def _stabilize_legacy(self, now_s: float, desired: int) -> int:
        cutoff = now_s - self.downscale_stabilization_s
        self._recommendations = [r for r in self._recommendations if not r[0] < cutoff]
        best = max([desired, *(rec for _, rec in self._recommendations)])
        self._recommendations.append((now_s, desired))
        return best

    def _limit_legacy(self, current: int, desired: int) -> tuple[int, str]:
        scale_up_limit = int(max(LEGACY_SCALE_UP_FACTOR * current, LEGACY_SCALE_UP_MINIMUM))
        upper, why = (scale_up_limit, "ScaleUpLimit") if self.max_replicas > scale_up_limit else (self.max_replicas, "TooManyReplicas")
        if desired < self.min_replicas:
            return self.min_replicas, "TooFewReplicas"
        if desired > upper:
            return upper, why
        return desired, "DesiredWithinRange"

    # --- behavior path --------------------------------------------------------------------------
    def _stabilize(self, now_s: float, current: int, desired: int) -> int:
        assert self.behavior is not None
        up, down = self.behavior["scaleUp"], self.behavior["scaleDown"]
        if desired >= current:
            window, better = up["stabilizationWindowSeconds"], min
        else:
            window, better = down["stabilizationWindowSeconds"], max
        obsolete = now_s - max(up["stabilizationWindowSeconds"], down["stabilizationWindowSeconds"])
        cutoff = now_s - window
        best = desired
        for t, rec in self._recommendations:
            if t > cutoff:
                best = better(rec, best)
        self._recommendations = [r for r in self._recommendations if not r[0] < obsolete]
        self._recommendations.append((now_s, desired))
        return best

    def _limit_rate(self, now_s: float, current: int, desired: int) -> tuple[int, str]:
        assert self.behavior is not None
        if desired > current:
            limit = _scale_up_limit(now_s, current, self._up_events, self.behavior["scaleUp"])
            limit = max(limit, current)
            upper, why = (limit, "ScaleUpLimit") if self.max_replicas > limit else (self.max_replicas, "TooManyReplicas")
            if desired > upper:
                return upper, why
        elif desired < current:
            limit = _scale_down_limit(now_s, current, self._down_events, self.behavior["scaleDown"])
            limit = min(limit, current)
            lower, why = (limit, "ScaleDownLimit") if self.min_replicas < limit else (self.min_replicas, "TooFewReplicas")
            if desired < lower:
                return lower, why
        return desired, "DesiredWithinRange"

    def __repr__(self) -> str:
        mode = "legacy (no behavior)" if self.behavior is None else "behavior"
        return f"<HPA min={self.min_replicas} max={self.max_replicas} {mode}>"


def _changed_within(now_s: float, period_s: int, events: Sequence[tuple[float, int]]) -> int:
    cutoff = now_s - period_s
    return sum(change for t, change in events if t > cutoff)


def _scale_up_limit(now_s: float, current: int, events: Sequence[tuple[float, int]], rules: Mapping[str, Any]) -> int:
    if rules["selectPolicy"] == "Disabled":
        return current
    pick = min if rules["selectPolicy"] == "Min" else max
    result: int | None = None
    for p in rules["policies"]:
        start = current - _changed_within(now_s, p["periodSeconds"], events)
        proposed = start + p["value"] if p["type"] == "Pods" else math.ceil(start * (1 + p["value"] / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


def _scale_down_limit(now_s: float, current: int, events: Sequence[tuple[float, int]], rules: Mapping[str, Any]) -> int:
    if rules["selectPolicy"] == "Disabled":
        return current
    pick = max if rules["selectPolicy"] == "Min" else min
    result: int | None = None
    for p in rules["policies"]:
        start = current + _changed_within(now_s, p["periodSeconds"], events)
        proposed = start - p["value"] if p["type"] == "Pods" else int(start * (1 - p["value"] / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


def from_manifest(manifest: Mapping[str, Any], downscale_stabilization_s: int = DEFAULT_DOWNSCALE_STABILIZATION_S) -> tuple[HPA, int]:
    """Build an ``HPA`` and its CPU target (percent) from an autoscaling/v1 or v2 manifest dict."""
    api = manifest.get("apiVersion", "")
    spec = manifest.get("spec") or {}
    if manifest.get("kind") != "HorizontalPodAutoscaler":
        raise BadInput(f"not a HorizontalPodAutoscaler: kind={manifest.get('kind')!r}")
    lo, hi = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
    if api == "autoscaling/v1":
        return HPA(lo, hi, None, downscale_stabilization_s), int(spec.get("targetCPUUtilizationPercentage", 80))
    if api != "autoscaling/v2":
        raise BadInput(f"apiVersion {api!r}: use autoscaling/v1 or autoscaling/v2")
    targets = [
        m["resource"]["target"]["averageUtilization"]
        for m in spec.get("metrics", [])
        if m.get("type") == "Resource" and m["resource"].get("name") == "cpu" and m["resource"]["target"].get("type") == "Utilization"
    ]
    if len(targets) != 1:
        raise BadInput("this emulator follows exactly one metric: a Resource cpu Utilization target")
    return HPA(lo, hi, spec.get("behavior"), downscale_stabilization_s), int(targets[0])
