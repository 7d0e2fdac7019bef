"""The Kubernetes v1.35.0 HPA controller's normalisation, pure and clock-injected.

A port of kubernetes/kubernetes ``pkg/controller/podautoscaler/horizontal.go`` at tag **v1.35.0**
(commit 66452049f3d692768c39c797b21b793dce80314e), with the API defaults of
``pkg/apis/autoscaling/v2/defaults.go``; the replica calculator is ``labkit.kube.calculator``. The tag's tree was
too large to fetch here: the port follows the upstream sources as indexed (and their own test
tables, ported in tests/test_hpa.py, which it passes); see the module tests for each case's name.

- ``HPA.combine`` is ``computeReplicasForMetrics``: the largest proposal of the valid metrics;
  no scaling when every metric failed, or when one failed and the others would scale down.
- ``HPA.step`` is what ``reconcileAutoscaler`` does with that proposal: out-of-range replica
  counts go straight to min/max; otherwise, without ``behavior`` (autoscaling/v1, or v2 without
  it) the legacy path: the highest proposal of the last 5 min (``stabilizeRecommendation``), then
  ``convertDesiredReplicasWithRules`` (scale-up capped at max(2 · current, 4), min/max); with
  ``behavior``: ``stabilizeRecommendationWithBehaviors`` (clamp the current count between the
  lowest proposal of the scale-up window and the highest of the scale-down window), then
  ``convertDesiredReplicasWithBehaviorRate`` (policies over the replicas added *and* removed in
  each period, ``selectPolicy``, min/max); ``storeScaleEvent`` keeps the changes for the policies.
- ``HPA.tolerances`` is the per-direction tolerance (``behavior.scaleUp/scaleDown.tolerance``,
  KEP-4951, on by default since 1.35) falling back to the controller flag (0.1).

Go's ``time.Now()`` becomes ``now_s``; "after the cutoff" stays strict, as in Go.

    h = HPA(1, 10, behavior={"scaleDown": {"stabilizationWindowSeconds": 60}})
    h.step(now_s=15.0, current_replicas=2, desired_replicas=5)   # 5

Used in 08 and 14 (with labkit.kube.autoscaler).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import BadInput
from labkit.kube.calculator import DEFAULT_TOLERANCE, Pod, PodMetric, ReplicaCalculator, Tolerances

__all__ = [
    "DEFAULT_DOWNSCALE_STABILIZATION_S",
    "DEFAULT_SCALE_DOWN",
    "DEFAULT_SCALE_UP",
    "DEFAULT_TOLERANCE",
    "HPA",
    "KUBERNETES_RELEASE",
    "SYNC_PERIOD_S",
    "Decision",
    "MetricSpec",
    "behavior_with_defaults",
    "from_manifest",
    "parse_metric",
    "resource_replicas",
]

KUBERNETES_RELEASE = "v1.35.0"  # the release whose horizontal.go / replica_calculator.go this follows
SYNC_PERIOD_S = 15.0  # --horizontal-pod-autoscaler-sync-period
DEFAULT_DOWNSCALE_STABILIZATION_S = 300  # --horizontal-pod-autoscaler-downscale-stabilization
SCALE_UP_LIMIT_FACTOR = 2.0  # scaleUpLimitFactor
SCALE_UP_LIMIT_MINIMUM = 4.0  # scaleUpLimitMinimum
DEFAULT_SCALE_UP: dict[str, Any] = {  # GenerateHPAScaleUpRules
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}],
}
DEFAULT_SCALE_DOWN: dict[str, Any] = {  # GenerateHPAScaleDownRules; the window comes from the flag
    "stabilizationWindowSeconds": None,
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
}
_SELECT = ("Max", "Min", "Disabled")
_RULE_KEYS = {"stabilizationWindowSeconds", "selectPolicy", "policies", "tolerance"}


def behavior_with_defaults(behavior: Mapping[str, Any], downscale_stabilization_s: int = DEFAULT_DOWNSCALE_STABILIZATION_S) -> dict[str, Any]:
    """Fill unset fields of an autoscaling/v2 ``behavior`` as the API server and controller do."""
    unknown = set(behavior) - {"scaleUp", "scaleDown"}
    if unknown:
        raise BadInput(f"behavior has unknown keys {sorted(unknown)}; use scaleUp and scaleDown")
    out = {}
    for key, default in (("scaleUp", DEFAULT_SCALE_UP), ("scaleDown", DEFAULT_SCALE_DOWN)):
        rules = copy.deepcopy(default)
        given = behavior.get(key) or {}
        if set(given) - _RULE_KEYS:
            raise BadInput(f"behavior.{key} has unknown keys {sorted(set(given) - _RULE_KEYS)}")
        rules.update({k: copy.deepcopy(v) for k, v in given.items() if v is not None})  # copyHPAScalingRules
        if rules["stabilizationWindowSeconds"] is None:  # maybeInitScaleDownStabilizationWindow
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
    if not rules["policies"]:
        raise BadInput(f"behavior.{key}.policies must list at least one policy")
    for p in rules["policies"]:
        if p.get("type") not in ("Pods", "Percent"):
            raise BadInput(f"behavior.{key} policy type must be Pods or Percent, got {p.get('type')!r}")
        if not isinstance(p.get("value"), int) or p["value"] <= 0:
            raise BadInput(f"behavior.{key} policy value must be a positive integer, got {p.get('value')!r}")
        if not isinstance(p.get("periodSeconds"), int) or not 0 < p["periodSeconds"] <= 1800:
            raise BadInput(f"behavior.{key} policy periodSeconds must be in 1..1800, got {p.get('periodSeconds')!r}")
    tol = rules.get("tolerance")
    if tol is not None and _quantity(tol) < 0:
        raise BadInput(f"behavior.{key}.tolerance must be >= 0, got {tol!r}")


def _quantity(value: Any) -> float:
    """A Kubernetes quantity ("0.05", "50m", 2, "2500m") as a float (``AsApproximateFloat64``)."""
    text = str(value).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError as exc:
        raise BadInput(f"not a quantity: {value!r} (write e.g. 0.05, 50m or 2)") from exc


@dataclass(frozen=True)
class MetricSpec:
    """One entry of ``spec.metrics``: type (Resource, Pods, Object), metric name, target.

    ``target`` is the targetUtilization percent (``Utilization``) or the milli-value of
    ``averageValue`` / ``value``, as the controller passes it (``MilliValue()``).
    """

    type: str
    name: str
    target_type: str
    target: int

    @property
    def label(self) -> str:
        unit = " %" if self.target_type == "Utilization" else "m"
        return f"{self.type} {self.name} {self.target_type} {self.target}{unit}"


def parse_metric(entry: Mapping[str, Any]) -> MetricSpec:
    """A ``spec.metrics`` entry (YAML shape) as a MetricSpec; BadInput for what is not supported."""
    kind = entry.get("type")
    if kind == "Resource":
        body = entry.get("resource") or {}
        name, target = body.get("name"), body.get("target") or {}
    elif kind in ("Pods", "Object"):
        body = entry.get(str(kind).lower()) or {}
        name, target = (body.get("metric") or {}).get("name"), body.get("target") or {}
    else:
        raise BadInput(f"metric type {kind!r}: this emulation follows Resource, Pods and Object metrics")
    ttype = target.get("type")
    allowed = {"Resource": ("Utilization", "AverageValue"), "Pods": ("AverageValue",), "Object": ("Value", "AverageValue")}[str(kind)]
    if not name or ttype not in allowed:
        raise BadInput(f"{kind} metric needs a name and a target of type {' or '.join(allowed)}, got {name!r}/{ttype!r}")
    field_name = {"Utilization": "averageUtilization", "AverageValue": "averageValue", "Value": "value"}[ttype]
    if field_name not in target:
        raise BadInput(f"{kind} metric {name}: target.{field_name} is missing")
    value = int(target[field_name]) if ttype == "Utilization" else round(_quantity(target[field_name]) * 1000)
    if value <= 0:
        raise BadInput(f"{kind} metric {name}: target.{field_name} must be positive")
    return MetricSpec(str(kind), str(name), ttype, value)


@dataclass(frozen=True)
class Decision:
    """One ``step``: what the metrics proposed, what stabilisation made of it, what was applied."""

    t_s: float
    current: int
    proposed: int
    stabilized: int
    replicas: int
    reason: str


@dataclass
class _Event:  # timestampedScaleEvent
    change: int
    t_s: float
    outdated: bool = False


@dataclass
class HPA:
    """The controller's state for one HPA: recommendations, scale events, and ``step``.

    ``behavior`` is ``spec.behavior`` (YAML shape) or None for the legacy path; ``metrics`` the
    ``spec.metrics`` (MetricSpec or YAML dicts); ``tolerance`` and ``downscale_stabilization_s``
    are the controller flags. ``decisions`` keeps every step for plots.
    """

    min_replicas: int = 1
    max_replicas: int = 10
    behavior: Mapping[str, Any] | None = None
    metrics: Sequence[MetricSpec | Mapping[str, Any]] = ()
    tolerance: float = DEFAULT_TOLERANCE
    downscale_stabilization_s: int = DEFAULT_DOWNSCALE_STABILIZATION_S
    decisions: list[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise BadInput(f"need 0 <= min_replicas <= max_replicas and max_replicas >= 1, got {self.min_replicas}, {self.max_replicas}")
        if self.behavior is not None:
            self.behavior = behavior_with_defaults(self.behavior, self.downscale_stabilization_s)
        self.metrics = [m if isinstance(m, MetricSpec) else parse_metric(m) for m in self.metrics]
        self._recommendations: list[list[float]] = []  # [t_s, recommendation]
        self._up: list[_Event] = []
        self._down: list[_Event] = []

    def tolerances(self) -> Tolerances:
        """The tolerances this HPA's metrics use (``tolerancesForHpa``)."""
        down = up = self.tolerance
        if self.behavior is not None:
            if self.behavior["scaleDown"].get("tolerance") is not None:
                down = _quantity(self.behavior["scaleDown"]["tolerance"])
            if self.behavior["scaleUp"].get("tolerance") is not None:
                up = _quantity(self.behavior["scaleUp"]["tolerance"])
        return Tolerances(down, up)

    def propose(self, spec_replicas: int, status_replicas: int, pods: Sequence[Pod], samples: Mapping[str, Mapping[str, PodMetric]], object_values: Mapping[str, int] | None = None, now_s: float = 0.0, calculator: ReplicaCalculator | None = None) -> tuple[int | None, list[tuple[MetricSpec, int | str, int | None]]]:
        """``computeReplicasForMetrics``: (proposal or None, [(metric, replicas or error, current value)]).

        ``samples[name]`` are the per-pod samples of Resource metric ``name`` or Pods metric
        ``name``; ``object_values[name]`` the Object metric's milli-value.
        """
        calc = calculator or ReplicaCalculator()
        tol = self.tolerances()
        out: list[tuple[MetricSpec, int | str, int | None]] = []
        for m in self.metrics:
            assert isinstance(m, MetricSpec)
            try:
                if m.type == "Object":
                    if object_values is None or m.name not in object_values:
                        raise BadInput(f"unable to get metric {m.name}: no value")
                    if m.target_type == "Value":
                        replicas, value = calc.object_replicas(spec_replicas, m.target, object_values[m.name], pods, tol)
                    else:
                        replicas, value = calc.object_per_pod_replicas(status_replicas, m.target, object_values[m.name], tol)
                elif m.type == "Resource" and m.target_type == "Utilization":
                    replicas, value, _ = calc.resource_replicas(spec_replicas, m.target, pods, samples.get(m.name, {}), tol, now_s, m.name)
                elif m.type == "Resource":
                    replicas, value = calc.raw_resource_replicas(spec_replicas, m.target, pods, samples.get(m.name, {}), tol, now_s, m.name)
                else:
                    replicas, value = calc.pods_replicas(spec_replicas, m.target, pods, samples.get(m.name, {}), tol, now_s)
            except BadInput as exc:
                out.append((m, str(exc), None))
            else:
                out.append((m, replicas, value))
        return self.combine(spec_replicas, [r if isinstance(r, int) else None for _, r, _ in out]), out

    @staticmethod
    def combine(spec_replicas: int, proposals: Sequence[int | None]) -> int | None:
        """The largest valid proposal, or None (no scaling) as ``computeReplicasForMetrics`` decides."""
        valid = [p for p in proposals if p is not None]
        invalid = len(proposals) - len(valid)
        replicas = 0
        for p in valid:
            if replicas == 0 or p > replicas:
                replicas = p
        if not proposals or invalid >= len(proposals) or (invalid > 0 and replicas < spec_replicas):
            return None
        return replicas

    def step(self, now_s: float, current_replicas: int, desired_replicas: int) -> int:
        """Return the replica count the controller sets now, given the metrics' proposal."""
        if self.decisions and now_s < self.decisions[-1].t_s:
            raise BadInput(f"time went backwards: {now_s} after {self.decisions[-1].t_s}")
        if not self._recommendations:  # recordInitialRecommendation
            self._recommendations.append([now_s, current_replicas])
        stabilized = desired_replicas
        if current_replicas == 0 and self.min_replicas != 0:
            new, reason = 0, "ScalingDisabled"
        elif current_replicas > self.max_replicas:
            new, reason = self.max_replicas, "AboveMaxReplicas"
        elif current_replicas < self.min_replicas:
            new, reason = self.min_replicas, "BelowMinReplicas"
        else:
            desired = max(0, desired_replicas)  # desiredReplicas starts at 0, takes the proposal if larger
            if self.behavior is None:
                stabilized = self._stabilize(now_s, desired)
                new, reason = self._with_rules(current_replicas, stabilized)
            else:
                stabilized = self._stabilize_with_behaviors(now_s, current_replicas, desired)
                new, reason = self._with_behavior_rate(now_s, current_replicas, stabilized)
        if new != current_replicas:
            self._store_event(now_s, current_replicas, new)
        self.decisions.append(Decision(now_s, current_replicas, desired_replicas, stabilized, new, reason))
        return new

    # --- legacy path: stabilizeRecommendation + convertDesiredReplicasWithRules ----------------
    def _stabilize(self, now_s: float, desired: int) -> int:
        best, old = desired, None
        cutoff = now_s - self.downscale_stabilization_s
        for i, rec in enumerate(self._recommendations):
            if rec[0] < cutoff:
                old = i
            elif rec[1] > best:
                best = int(rec[1])
        self._record(old, now_s, desired)
        return best

    def _with_rules(self, current: int, desired: int) -> tuple[int, str]:
        scale_up_limit = int(max(SCALE_UP_LIMIT_FACTOR * current, SCALE_UP_LIMIT_MINIMUM))
        upper, why = (scale_up_limit, "ScaleUpLimit") if self.max_replicas > scale_up_limit else (self.max_replicas, "TooManyReplicas")
        if desired < self.min_replicas:
            return self.min_replicas, "TooFewReplicas"
        if desired > upper:
            return upper, why
        return desired, "DesiredWithinRange"

    # --- behavior path: stabilizeRecommendationWithBehaviors + convertDesiredReplicasWithBehaviorRate
    def _stabilize_with_behaviors(self, now_s: float, current: int, desired: int) -> int:
        assert self.behavior is not None
        up_cutoff = now_s - self.behavior["scaleUp"]["stabilizationWindowSeconds"]
        down_cutoff = now_s - self.behavior["scaleDown"]["stabilizationWindowSeconds"]
        up_rec = down_rec = desired
        old = None
        for i, (t, rec) in enumerate(self._recommendations):
            if t > up_cutoff:
                up_rec = min(int(rec), up_rec)
            if t > down_cutoff:
                down_rec = max(int(rec), down_rec)
            if t < up_cutoff and t < down_cutoff:
                old = i
        recommendation = current
        if recommendation < up_rec:
            recommendation = up_rec
        if recommendation > down_rec:
            recommendation = down_rec
        self._record(old, now_s, desired)
        return recommendation

    def _with_behavior_rate(self, now_s: float, current: int, desired: int) -> tuple[int, str]:
        assert self.behavior is not None
        if desired > current:
            limit = self._limit(now_s, current, self.behavior["scaleUp"], up=True)
            limit = max(limit, current)  # no further scale-up until the events age out
            upper, why = (limit, "ScaleUpLimit") if self.max_replicas > limit else (self.max_replicas, "TooManyReplicas")
            if desired > upper:
                return upper, why
        elif desired < current:
            limit = self._limit(now_s, current, self.behavior["scaleDown"], up=False)
            limit = min(limit, current)
            lower, why = (limit, "ScaleDownLimit") if self.min_replicas < limit else (self.min_replicas, "TooFewReplicas")
            if desired < lower:
                return lower, why
        return desired, "DesiredWithinRange"

    def _limit(self, now_s: float, current: int, rules: Mapping[str, Any], up: bool) -> int:
        """``calculateScaleUpLimitWithScalingRules`` / ``calculateScaleDownLimitWithBehaviors``."""
        if rules["selectPolicy"] == "Disabled":
            return current
        pick_min = (rules["selectPolicy"] == "Min") == up  # scale-up Min and scale-down Max pick the lower
        result = 2**31 - 1 if pick_min else -(2**31)
        for p in rules["policies"]:
            start = current - _changed_within(now_s, p["periodSeconds"], self._up) + _changed_within(now_s, p["periodSeconds"], self._down)
            if up:
                proposed = start + p["value"] if p["type"] == "Pods" else math.ceil(start * (1 + p["value"] / 100))
            else:
                proposed = start - p["value"] if p["type"] == "Pods" else int(start * (1 - p["value"] / 100))
            result = min(result, proposed) if pick_min else max(result, proposed)
        return result

    def _record(self, old: int | None, now_s: float, desired: int) -> None:
        if old is not None:  # an old sample is replaced, else the list grows
            self._recommendations[old] = [now_s, desired]
        else:
            self._recommendations.append([now_s, desired])

    def _store_event(self, now_s: float, before: int, after: int) -> None:
        """``storeScaleEvent`` (only with a behavior, as upstream)."""
        if self.behavior is None:
            return
        up = after > before
        events = self._up if up else self._down
        longest = max(p["periodSeconds"] for p in self.behavior["scaleUp" if up else "scaleDown"]["policies"])
        for e in events:  # markScaleEventsOutdated
            if e.t_s < now_s - longest:
                e.outdated = True
        new = _Event(abs(after - before), now_s)
        reuse = [i for i, e in enumerate(events) if e.outdated]
        if reuse:
            events[reuse[-1]] = new
        else:
            events.append(new)

    def __str__(self) -> str:
        mode = "legacy autoscaling/v1 rules (no behavior)" if self.behavior is None else "an autoscaling/v2 behavior"
        metrics = ", ".join(m.label for m in self.metrics if isinstance(m, MetricSpec)) or "no metrics"
        return f"HPA between {self.min_replicas} and {self.max_replicas} replicas on {metrics}, with {mode}"

    def __repr__(self) -> str:
        mode = "legacy (no behavior)" if self.behavior is None else "behavior"
        metrics = ", ".join(m.label for m in self.metrics if isinstance(m, MetricSpec)) or "no metrics"
        return f"<HPA min={self.min_replicas} max={self.max_replicas} {mode}; {metrics}>"


def _changed_within(now_s: float, period_s: int, events: Sequence[_Event]) -> int:
    """``getReplicasChangePerPeriod``: events strictly after now − period."""
    cutoff = now_s - period_s
    return sum(e.change for e in events if e.t_s > cutoff)


def from_manifest(manifest: Mapping[str, Any], downscale_stabilization_s: int = DEFAULT_DOWNSCALE_STABILIZATION_S) -> HPA:
    """An ``HPA`` from an autoscaling/v1 or v2 HorizontalPodAutoscaler manifest dict."""
    api = manifest.get("apiVersion", "")
    spec = manifest.get("spec") or {}
    if manifest.get("kind") != "HorizontalPodAutoscaler":
        raise BadInput(f"not a HorizontalPodAutoscaler: kind={manifest.get('kind')!r}")
    lo, hi = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
    if api == "autoscaling/v1":  # v1 knows one metric: CPU utilization, default 80 %
        cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": int(spec.get("targetCPUUtilizationPercentage", 80))}}}
        return HPA(lo, hi, None, [cpu], downscale_stabilization_s=downscale_stabilization_s)
    if api != "autoscaling/v2":
        raise BadInput(f"apiVersion {api!r}: use autoscaling/v1 or autoscaling/v2")
    metrics = spec.get("metrics") or [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]
    return HPA(lo, hi, spec.get("behavior"), metrics, downscale_stabilization_s=downscale_stabilization_s)


def resource_replicas(current_replicas: int, pods: Sequence[Mapping[str, Any]], target_utilization: int, tolerance: float = DEFAULT_TOLERANCE) -> tuple[int, int]:
    """CPU proposal and utilization for simple pod dicts (``request_milli``, ``usage_milli`` or None,
    ``ready``): a not-ready pod is one that has not become ready since it started, as a new pod.

    >>> resource_replicas(50, [{"request_milli": 100, "usage_milli": 90, "ready": True}] * 50, 75)
    (60, 90)
    """
    now = 1000.0
    objs, samples = [], {}
    for i, p in enumerate(pods):
        ready = bool(p.get("ready", True))
        name = f"pod-{i}"
        start = 0.0 if ready else now - 10  # an unready pod started 10 s ago and was never ready
        objs.append(Pod(name, p.get("request_milli"), p.get("phase", "Running"), ready, start, start, bool(p.get("deleting", False))))
        if p.get("usage_milli") is not None:
            samples[name] = PodMetric(int(p["usage_milli"]), now, 60.0)
    replicas, utilization, _ = ReplicaCalculator().resource_replicas(current_replicas, int(target_utilization), objs, samples, Tolerances(tolerance, tolerance), now)
    return replicas, utilization
