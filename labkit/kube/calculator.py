"""The HPA replica calculator of Kubernetes v1.35.0, ported with its integer and float arithmetic.

A port of kubernetes/kubernetes ``pkg/controller/podautoscaler/replica_calculator.go`` and
``metrics/utilization.go`` at tag **v1.35.0** (commit 66452049f3d692768c39c797b21b793dce80314e).
Each method names the Go function it follows; the branches, the order of the checks and the
arithmetic are the same (read from the indexed upstream sources; the tag's tree could not be fetched
here; of the overflow clamps seen in newer copies only the Object metric's int32 one is kept):

- utilization = int32(Σ usage · 100 / Σ requests) — int64 division, so a truncated percent;
  a usage average is int64(Σ / n), truncated too; ratios are float64 divisions of those integers;
  replica counts are int32(math.Ceil(ratio · pods)).
- ``groupPods``: deleted and Failed pods are ignored; Pending pods are unready; a pod without a
  metric is missing; for CPU only, a pod is unready while not Ready, or while it is inside the
  CPU initialization period (5 min) and its sample does not lie a whole metric window after
  the readiness transition, or (after that period) when it is not Ready and never was. For any
  other metric an unready Running pod counts as ready, as upstream.
- tolerances (KEP-4951, beta in 1.35): no change while (1 − scaleDown) ≤ ratio ≤ (1 + scaleUp).
- missing pods count as 0 on a scale-up and, on a scale-down, as max(100 %, target) of their
  request (resource utilization) or as the target (average values); unready pods count as 0 on
  a scale-up; a recount that flips the direction or falls in the band keeps the current count.

Values are milli-units, as the controller reads them (``Quantity.MilliValue()``): 250m CPU is 250,
2.5 requests in flight is 2500. Times are seconds on any clock (``now_s``), so tests are exact.
Other overflow clamps are not modelled (they apply near 2^31 replicas). Used in 08.

    calc = ReplicaCalculator()
    pods = [Pod(f"p{i}", request_milli=1000) for i in range(3)]
    metrics = {p.name: PodMetric(v) for p, v in zip(pods, (300, 500, 700))}
    calc.resource_replicas(3, 30, pods, metrics)   # (5, 50, 500): TestReplicaCalcScaleUp
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from labkit.errors import BadInput

__all__ = [
    "CPU_INITIALIZATION_PERIOD_S",
    "DEFAULT_TOLERANCE",
    "DELAY_OF_INITIAL_READINESS_STATUS_S",
    "MetricsUnavailable",
    "Pod",
    "PodMetric",
    "ReplicaCalculator",
    "Tolerances",
    "group_pods",
    "metric_usage_ratio",
    "resource_utilization_ratio",
]

DEFAULT_TOLERANCE = 0.1  # --horizontal-pod-autoscaler-tolerance
CPU_INITIALIZATION_PERIOD_S = 300.0  # --horizontal-pod-autoscaler-cpu-initialization-period
DELAY_OF_INITIAL_READINESS_STATUS_S = 30.0  # --horizontal-pod-autoscaler-initial-readiness-delay
MAX_INT32 = 2**31 - 1


class MetricsUnavailable(BadInput):
    """The controller cannot compute a proposal from this metric (it then leaves the scale alone)."""


@dataclass(frozen=True)
class Pod:
    """What the controller reads of one pod (``v1.Pod``): phase, the Ready condition, its request.

    ``ready`` is the Ready condition's status (None: no condition yet); ``ready_changed_s`` its
    lastTransitionTime; ``start_s`` status.startTime (None: not started); ``request_milli`` the sum
    of the containers' requests for the metric's resource (None: a container without one).
    """

    name: str
    request_milli: int | None = None
    phase: str = "Running"
    ready: bool | None = True
    ready_changed_s: float = 0.0
    start_s: float | None = 0.0
    deleting: bool = False


@dataclass(frozen=True)
class PodMetric:
    """One pod's sample (``metricsclient.PodMetric``): a milli-value, when, over what window."""

    value_milli: int
    timestamp_s: float = 0.0
    window_s: float = 60.0


@dataclass(frozen=True)
class Tolerances:
    """Per-direction tolerances (``Tolerances`` in replica_calculator.go, KEP-4951)."""

    scale_down: float = DEFAULT_TOLERANCE
    scale_up: float = DEFAULT_TOLERANCE

    def is_within(self, usage_ratio: float) -> bool:
        """``isWithin``: (1 − scaleDown) ≤ ratio ≤ (1 + scaleUp), in float64."""
        return (1.0 - self.scale_down) <= usage_ratio <= (1.0 + self.scale_up)


def group_pods(pods: Sequence[Pod], metrics: Mapping[str, PodMetric], resource: str, now_s: float, cpu_initialization_period_s: float = CPU_INITIALIZATION_PERIOD_S, delay_of_initial_readiness_status_s: float = DELAY_OF_INITIAL_READINESS_STATUS_S) -> tuple[int, set[str], set[str], set[str]]:
    """``groupPods``: (ready pod count, unready, missing, ignored pod names)."""
    ready_count, unready, missing, ignored = 0, set(), set(), set()
    for pod in pods:
        if pod.deleting or pod.phase == "Failed":
            ignored.add(pod.name)
            continue
        if pod.phase == "Pending":
            unready.add(pod.name)
            continue
        metric = metrics.get(pod.name)
        if metric is None:
            missing.add(pod.name)
            continue
        if resource == "cpu":
            if pod.ready is None or pod.start_s is None:
                is_unready = True
            elif pod.start_s + cpu_initialization_period_s > now_s:  # still initialising
                is_unready = pod.ready is False or metric.timestamp_s < pod.ready_changed_s + metric.window_s
            else:  # unready and never was ready
                is_unready = pod.ready is False and pod.start_s + delay_of_initial_readiness_status_s > pod.ready_changed_s
            if is_unready:
                unready.add(pod.name)
                continue
        ready_count += 1
    return ready_count, unready, missing, ignored


def resource_utilization_ratio(metrics: Mapping[str, int], requests: Mapping[str, int], target_utilization: int) -> tuple[float, int, int]:
    """``GetResourceUtilizationRatio``: (ratio, utilization %, raw average milli-value)."""
    metrics_total = requests_total = entries = 0
    for name, value in metrics.items():
        if name not in requests:
            continue  # upstream: missing requests are checked elsewhere, so these are extraneous metrics
        metrics_total += value
        requests_total += requests[name]
        entries += 1
    if requests_total == 0:
        raise MetricsUnavailable("no metrics returned matched known pods")
    utilization = metrics_total * 100 // requests_total  # int64 division, then int32
    return utilization / target_utilization, utilization, metrics_total // entries


def metric_usage_ratio(metrics: Mapping[str, int], target_usage: int) -> tuple[float, int]:
    """``GetMetricUsageRatio``: (ratio, average milli-value truncated to an integer)."""
    usage = sum(metrics.values()) // len(metrics)
    return usage / target_usage, usage


class ReplicaCalculator:
    """``ReplicaCalculator``: one method per metric kind the HPA v2 API knows (External aside)."""

    def __init__(self, cpu_initialization_period_s: float = CPU_INITIALIZATION_PERIOD_S, delay_of_initial_readiness_status_s: float = DELAY_OF_INITIAL_READINESS_STATUS_S) -> None:
        self.cpu_initialization_period_s = cpu_initialization_period_s
        self.delay_of_initial_readiness_status_s = delay_of_initial_readiness_status_s

    def _group(self, pods: Sequence[Pod], metrics: dict[str, int], samples: Mapping[str, PodMetric], resource: str, now_s: float) -> tuple[int, set[str], set[str]]:
        if not pods:
            raise MetricsUnavailable("no pods returned by selector while calculating replica count")
        ready, unready, missing, ignored = group_pods(pods, samples, resource, now_s, self.cpu_initialization_period_s, self.delay_of_initial_readiness_status_s)
        for name in ignored | unready:
            metrics.pop(name, None)  # removeMetricsForPods
        if not metrics:
            raise MetricsUnavailable("did not receive metrics for targeted pods (pods might be unready)")
        return ready, unready, missing

    def resource_replicas(self, current_replicas: int, target_utilization: int, pods: Sequence[Pod], samples: Mapping[str, PodMetric], tolerances: Tolerances = Tolerances(), now_s: float = 0.0, resource: str = "cpu") -> tuple[int, int, int]:
        """``GetResourceReplicas`` (a Resource metric, Utilization target): (replicas, utilization %, raw average)."""
        if target_utilization <= 0:
            raise BadInput(f"target utilization must be a positive percentage, got {target_utilization}")
        metrics = {name: m.value_milli for name, m in samples.items()}
        ready, unready, missing = self._group(pods, metrics, samples, resource, now_s)
        requests = _requests(pods, resource)
        ratio, utilization, raw = resource_utilization_ratio(metrics, requests, target_utilization)
        scale_up_with_unready = bool(unready) and ratio > 1.0
        if not scale_up_with_unready and not missing:
            if tolerances.is_within(ratio):
                return current_replicas, utilization, raw
            return math.ceil(ratio * ready), utilization, raw
        if missing:
            if ratio < 1.0:  # as using 100 % of the request, or the target when it is above 100 %
                fallback = max(100, target_utilization)
                metrics.update({name: requests[name] * fallback // 100 for name in missing})
            elif ratio > 1.0:
                metrics.update({name: 0 for name in missing})
        if scale_up_with_unready:
            metrics.update({name: 0 for name in unready})
        new_ratio, _, _ = resource_utilization_ratio(metrics, requests, target_utilization)
        if tolerances.is_within(new_ratio) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
            return current_replicas, utilization, raw
        new_replicas = math.ceil(new_ratio * len(metrics))
        if (new_ratio < 1.0 and new_replicas > current_replicas) or (new_ratio > 1.0 and new_replicas < current_replicas):
            return current_replicas, utilization, raw
        return new_replicas, utilization, raw

    def raw_resource_replicas(self, current_replicas: int, target_usage_milli: int, pods: Sequence[Pod], samples: Mapping[str, PodMetric], tolerances: Tolerances = Tolerances(), now_s: float = 0.0, resource: str = "cpu") -> tuple[int, int]:
        """``GetRawResourceReplicas`` (a Resource metric, AverageValue target): (replicas, average)."""
        return self._plain(current_replicas, target_usage_milli, pods, samples, tolerances, now_s, resource)

    def pods_replicas(self, current_replicas: int, target_usage_milli: int, pods: Sequence[Pod], samples: Mapping[str, PodMetric], tolerances: Tolerances = Tolerances(), now_s: float = 0.0) -> tuple[int, int]:
        """``GetMetricReplicas`` (a Pods metric, AverageValue target): (replicas, average milli-value)."""
        return self._plain(current_replicas, target_usage_milli, pods, samples, tolerances, now_s, "")

    def _plain(self, current_replicas: int, target_usage: int, pods: Sequence[Pod], samples: Mapping[str, PodMetric], tolerances: Tolerances, now_s: float, resource: str) -> tuple[int, int]:
        """``calcPlainMetricReplicas``."""
        if target_usage <= 0:
            raise BadInput(f"target average value must be positive (milli-units), got {target_usage}")
        metrics = {name: m.value_milli for name, m in samples.items()}
        ready, unready, missing = self._group(pods, metrics, samples, resource, now_s)
        ratio, usage = metric_usage_ratio(metrics, target_usage)
        scale_up_with_unready = bool(unready) and ratio > 1.0
        if not scale_up_with_unready and not missing:
            if tolerances.is_within(ratio):
                return current_replicas, usage
            return math.ceil(ratio * ready), usage
        if missing:
            if ratio < 1.0:  # as using exactly the target
                metrics.update({name: target_usage for name in missing})
            elif ratio > 1.0:
                metrics.update({name: 0 for name in missing})
        if scale_up_with_unready:
            metrics.update({name: 0 for name in unready})
        new_ratio, _ = metric_usage_ratio(metrics, target_usage)
        if tolerances.is_within(new_ratio) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
            return current_replicas, usage
        new_replicas = math.ceil(new_ratio * len(metrics))
        if (new_ratio < 1.0 and new_replicas > current_replicas) or (new_ratio > 1.0 and new_replicas < current_replicas):
            return current_replicas, usage
        return new_replicas, usage

    def object_replicas(self, current_replicas: int, target_value_milli: int, usage_milli: int, pods: Sequence[Pod], tolerances: Tolerances = Tolerances()) -> tuple[int, int]:
        """``GetObjectMetricReplicas`` (an Object metric, Value target) with ``getUsageRatioReplicaCount``."""
        if target_value_milli <= 0:
            raise BadInput(f"target value must be positive (milli-units), got {target_value_milli}")
        ratio = usage_milli / target_value_milli
        if current_replicas == 0:  # scale to zero or n pods depending on the ratio
            return math.ceil(ratio), usage_milli
        if tolerances.is_within(ratio):
            return current_replicas, usage_milli
        if not pods:
            raise MetricsUnavailable("unable to calculate ready pods: no pods returned by selector while calculating replica count")
        ready = sum(1 for p in pods if p.phase == "Running" and p.ready is True)  # getReadyPodsCount
        wanted = ratio * ready
        return (MAX_INT32 if wanted > MAX_INT32 else math.ceil(wanted)), usage_milli

    def object_per_pod_replicas(self, status_replicas: int, target_average_milli: int, usage_milli: int, tolerances: Tolerances = Tolerances()) -> tuple[int, int]:
        """``GetObjectPerPodMetricReplicas`` (an Object metric, AverageValue target): (replicas, usage per pod)."""
        if target_average_milli <= 0:
            raise BadInput(f"target average value must be positive (milli-units), got {target_average_milli}")
        if status_replicas <= 0:
            raise MetricsUnavailable("an AverageValue object target divides by status.replicas, which is 0")
        replicas = status_replicas
        ratio = usage_milli / (target_average_milli * status_replicas)
        if not tolerances.is_within(ratio):
            replicas = math.ceil(usage_milli / target_average_milli)
        return replicas, math.ceil(usage_milli / status_replicas)


def _requests(pods: Sequence[Pod], resource: str) -> dict[str, int]:
    """``calculateRequests`` (pod totals; every pod in the list needs one, failed ones included)."""
    out = {}
    for pod in pods:
        if pod.request_milli is None:
            raise MetricsUnavailable(f"missing request for {resource} in Pod {pod.name}: the HPA needs resources.requests.{resource} on every container")
        out[pod.name] = int(pod.request_milli)
    return out
