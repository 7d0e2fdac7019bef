"""labkit.kube.calculator + labkit.kube.hpa against Kubernetes v1.35.0's own test tables.

Each ported case names the upstream test (pkg/controller/podautoscaler/replica_calculator_test.go,
horizontal_test.go). Upstream fixtures: pods test-pod-i, two containers each with the same request
and level (so pod totals are 2 ×), metric samples at time zero with a 1-minute window, readiness
conditions with lastTransitionTime zero, CPU initialization period 2 min, initial readiness delay
10 s, "hot" pods started 1 min ago and "cool" ones 3 min ago. The hypothesis tests compare the
port with reference formulas written straight from the Go code (``_ref_*`` below).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import BadInput
from labkit.kube import hpa
from labkit.kube.calculator import MetricsUnavailable, Pod, PodMetric, ReplicaCalculator, Tolerances
from labkit.kube.hpa import HPA, resource_replicas

pytestmark = pytest.mark.unit

NOW = 10_000.0
HOT, COOL = NOW - 60, NOW - 180
CALC = ReplicaCalculator(cpu_initialization_period_s=120, delay_of_initial_readiness_status_s=10)  # defaultTesting*
CONTAINERS = 2  # numContainersPerPod


def fixture(current, requests=None, levels=(), readiness=None, start=None, phase=None, deleting=None, names=None):
    """The upstream harness (prepareTestClientSet / prepareTestMetricsClient) as Pods and samples."""
    n = max(current, len(phase or ()))
    pods = []
    for i in range(n):
        req = None if requests is None or i >= len(requests) else round(requests[i] * 1000) * CONTAINERS
        pods.append(Pod(f"test-pod-{i}", req, (phase or ["Running"] * n)[i], (readiness or [True] * n)[i], 0.0, (start or [0.0] * n)[i], (deleting or [False] * n)[i]))
    samples = {(names[i] if names and i < len(names) else f"test-pod-{i}"): PodMetric(v * CONTAINERS, 0.0, 60.0) for i, v in enumerate(levels)}
    return pods, samples


T, F = True, False
RESOURCE_CASES = [  # (upstream test, case of TestReplicaCalcResourceScale in later trees) -> args, (replicas, utilization, raw)
    ("TestReplicaCalcScaleUp", dict(current=3, requests=[1.0] * 3, levels=[300, 500, 700]), 30, (5, 50, 2 * 500)),
    ("TestReplicaCalcScaleUpUnreadyLessScale", dict(current=3, requests=[1.0] * 3, levels=[300, 500, 700], readiness=[F, T, T]), 30, (4, 60, 2 * 600)),
    ("TestReplicaCalcScaleUpHotCpuLessScale", dict(current=3, requests=[1.0] * 3, levels=[300, 500, 700], start=[HOT, COOL, COOL]), 30, (4, 60, 2 * 600)),
    ("TestReplicaCalcScaleUpUnreadyNoScale", dict(current=3, requests=[1.0] * 3, levels=[400, 500, 700], readiness=[T, F, F]), 30, (3, 40, 2 * 400)),
    ("TestReplicaCalcScaleUpHotCpuNoScale", dict(current=3, requests=[1.0] * 3, levels=[400, 500, 700], readiness=[T, F, F], start=[COOL, HOT, HOT]), 30, (3, 40, 2 * 400)),
    ("TestReplicaCalcScaleUpIgnoresFailedPods", dict(current=2, requests=[1.0] * 4, levels=[500, 700], readiness=[T, T, F, F], phase=["Running", "Running", "Failed", "Failed"]), 30, (4, 60, 2 * 600)),
    ("TestReplicaCalcScaleUpIgnoresDeletionPods", dict(current=2, requests=[1.0] * 4, levels=[500, 700], readiness=[T, T, F, F], phase=["Running"] * 4, deleting=[F, F, T, T]), 30, (4, 60, 2 * 600)),
    ("TestReplicaCalcScaleDown", dict(current=5, requests=[1.0] * 5, levels=[100, 300, 500, 250, 250]), 50, (3, 28, 2 * 280)),
    ("TestReplicaCalcScaleDownExcludeUnreadyPods", dict(current=5, requests=[1.0] * 5, levels=[100, 300, 500, 250, 250], readiness=[T, T, T, F, F]), 50, (2, 30, 2 * 300)),
    ("TestReplicaCalcScaleDownExcludeUnscheduledPods", dict(current=5, requests=[1.0] * 5, levels=[100], readiness=[T, F, F, F, F], phase=["Running"] + ["Pending"] * 4), 50, (1, 10, 2 * 100)),
    ("TestReplicaCalcScaleDownIgnoreHotCpuPods", dict(current=5, requests=[1.0] * 5, levels=[100, 300, 500, 250, 250], start=[COOL, COOL, COOL, HOT, HOT]), 50, (2, 30, 2 * 300)),
    ("TestReplicaCalcScaleDownIgnoresFailedPods", dict(current=5, requests=[1.0] * 7, levels=[100, 300, 500, 250, 250], readiness=[T] * 5 + [F, F], phase=["Running"] * 5 + ["Failed"] * 2), 50, (3, 28, 2 * 280)),
    ("TestReplicaCalcScaleDownIgnoresDeletionPods", dict(current=5, requests=[1.0] * 7, levels=[100, 300, 500, 250, 250], readiness=[T] * 5 + [F, F], phase=["Running"] * 7, deleting=[F] * 5 + [T, T]), 50, (3, 28, 2 * 280)),
    ("TestReplicaCalcTolerance", dict(current=3, requests=[0.9, 1.0, 1.1], levels=[1010, 1030, 1020]), 100, (3, 102, 2 * 1020)),
    ("TestReplicaCalcSuperfluousMetrics", dict(current=4, requests=[1.0] * 4, levels=[4000, 9500, 3000, 7000, 3200, 2000]), 100, (24, 587, 2 * 5875)),
    ("TestReplicaCalcMissingMetrics", dict(current=4, requests=[1.0] * 4, levels=[400, 95]), 100, (3, 24, 495)),
    ("TestReplicaCalcMissingMetricsNoChangeEq", dict(current=2, requests=[1.0] * 2, levels=[1000]), 100, (2, 100, 2 * 1000)),
    ("TestReplicaCalcMissingMetricsNoChangeGt", dict(current=2, requests=[1.0] * 2, levels=[1900]), 100, (2, 190, 2 * 1900)),
    ("TestReplicaCalcMissingMetricsNoChangeLt", dict(current=2, requests=[1.0] * 2, levels=[600]), 100, (2, 60, 2 * 600)),
    ("TestReplicaCalcMissingMetricsUnreadyChange", dict(current=3, requests=[1.0] * 3, levels=[100, 450], readiness=[F, T, T]), 50, (3, 45, 2 * 450)),
    ("TestReplicaCalcMissingMetricsHotCpuNoChange", dict(current=3, requests=[1.0] * 3, levels=[100, 450], start=[HOT, COOL, COOL]), 50, (3, 45, 2 * 450)),
    ("TestReplicaCalcMissingMetricsUnreadyScaleUp", dict(current=3, requests=[1.0] * 3, levels=[100, 2000], readiness=[F, T, T]), 50, (4, 200, 2 * 2000)),
    ("TestReplicaCalcMissingMetricsHotCpuScaleUp", dict(current=3, requests=[1.0] * 3, levels=[100, 2000], start=[HOT, COOL, COOL]), 50, (4, 200, 2 * 2000)),
    ("TestReplicaCalcMissingMetricsUnreadyScaleDown", dict(current=4, requests=[1.0] * 4, levels=[100, 100, 100], readiness=[F, T, T, T]), 50, (3, 10, 2 * 100)),
    ("TestReplicaCalcDuringRollingUpdateWithMaxSurge", dict(current=2, requests=[1.0] * 3, levels=[100, 100], phase=["Running"] * 3), 50, (2, 10, 2 * 100)),
]


@pytest.mark.parametrize(("upstream", "case", "target", "expected"), RESOURCE_CASES, ids=[c[0] for c in RESOURCE_CASES])
def test_resource_utilization_cases(upstream, case, target, expected):
    case = dict(case)
    current = case["current"]
    pods, samples = fixture(**case)
    assert CALC.resource_replicas(current, target, pods, samples, Tolerances(), NOW) == expected


@pytest.mark.parametrize(
    ("upstream", "tolerances", "levels", "expected"),
    [  # TestReplicaCalcConfigurableTolerance (Tolerances{scaleDown, scaleUp})
        ("Outside of a 0% tolerance", (0.0, 0.0), [909, 1010, 1111], (4, 101, 2 * 1010)),
        ("Within a 200% scale-up tolerance", (0.1, 2.0), [1890, 1910, 1900], (3, 190, 2 * 1900)),
        ("Outside 8% scale-up tolerance (and superfuous scale-down tolerance)", (2.0, 0.08), [1100, 1080, 1090], (4, 109, 2 * 1090)),
        ("Within a 36% scale-down tolerance", (0.36, 0.1), [660, 640, 650], (3, 65, 2 * 650)),
        ("Outside a 34% scale-down tolerance", (0.34, 0.1), [660, 640, 650], (2, 65, 2 * 650)),
    ],
)
def test_configurable_tolerance(upstream, tolerances, levels, expected):
    pods, samples = fixture(3, [0.9, 1.0, 1.1], levels)
    assert CALC.resource_replicas(3, 100, pods, samples, Tolerances(*tolerances), NOW) == expected


def test_resource_errors_as_upstream():
    # TestReplicaCalcDisjointResourcesMetrics
    pods, samples = fixture(1, [1.0], [100], names=["an-older-pod-name"])
    with pytest.raises(MetricsUnavailable, match="no metrics returned matched known pods"):
        CALC.resource_replicas(1, 100, pods, samples, Tolerances(), NOW)
    # TestReplicaCalcEmptyCPURequest
    pods, samples = fixture(1, None, [200])
    with pytest.raises(MetricsUnavailable, match="missing request for cpu"):
        CALC.resource_replicas(1, 100, pods, samples, Tolerances(), NOW)
    with pytest.raises(MetricsUnavailable, match="no pods returned"):
        CALC.resource_replicas(1, 100, [], {}, Tolerances(), NOW)
    pods, _ = fixture(2, [1.0] * 2)
    with pytest.raises(MetricsUnavailable, match="did not receive metrics"):
        CALC.resource_replicas(2, 100, pods, {}, Tolerances(), NOW)


def test_missing_pods_count_as_the_target_above_100_percent_on_a_scale_down():
    # replica_calculator.go: fallbackUtilization := max(100, targetUtilization) (missing pods at 300 %, not 100 %)
    pods, samples = fixture(3, [1.0] * 3, [100, 100])
    # measured 10 % of 300 %; the missing pod at 300 %: (200+200+6000)/6000 = 106 % -> 0.353 -> ceil(1.06) = 2
    assert CALC.resource_replicas(3, 300, pods, samples, Tolerances(), NOW) == (2, 10, 200)


PODS_CASES = [  # GetMetricReplicas (type Pods, AverageValue): levels are pod milli-values
    ("TestReplicaCalcScaleUpCM", dict(current=3, levels=[20000, 10000, 30000]), 15000, Tolerances(), (4, 20000)),
    ("TestReplicaCalcScaleUpCMUnreadyHotCpuNoLessScale", dict(current=3, levels=[50000, 10000, 30000], readiness=[T, T, F], start=[COOL, COOL, HOT]), 15000, Tolerances(), (6, 30000)),
    ("TestReplicaCalcScaleUpCMUnreadyHotCpuScaleWouldScaleDown", dict(current=3, levels=[50000, 15000, 30000], readiness=[F, T, F], start=[HOT, COOL, HOT]), 15000, Tolerances(), (7, 31666)),
    ("TestReplicaCalcScaleDownCM", dict(current=5, levels=[12000] * 5), 20000, Tolerances(), (3, 12000)),
    ("TestReplicaCalcToleranceCM", dict(current=3, levels=[20000, 21000, 21000]), 20000, Tolerances(), (3, 20666)),
    ("TestReplicaCalcConfigurableToleranceCM", dict(current=3, levels=[20000, 21000, 21000]), 20000, Tolerances(0.1, 0.01), (4, 20666)),
    ("TestReplicaCalcDuringRollingUpdateWithMaxSurgeCM", dict(current=2, levels=[10000, 10000], phase=["Running"] * 3), 17000, Tolerances(), (2, 10000)),
]


@pytest.mark.parametrize(("upstream", "case", "target", "tol", "expected"), PODS_CASES, ids=[c[0] for c in PODS_CASES])
def test_pods_metric_cases(upstream, case, target, tol, expected):
    pods, samples = fixture(**case)
    samples = {k: PodMetric(v.value_milli // CONTAINERS, 0.0, 60.0) for k, v in samples.items()}  # custom metrics: one value per pod
    assert CALC.pods_replicas(case["current"], target, pods, samples, tol, NOW) == expected


@pytest.mark.parametrize(
    ("upstream", "current", "readiness", "usage", "target", "tol", "expected"),
    [  # GetObjectMetricReplicas (type Object, Value)
        ("TestReplicaCalcScaleUpCMObject", 3, None, 20000, 15000, Tolerances(), (4, 20000)),
        ("TestReplicaCalcScaleUpCMObjectIgnoresUnreadyPods", 3, [F, T, F], 50000, 10000, Tolerances(), (5, 50000)),
        ("TestReplicaCalcScaleDownCMObject", 5, None, 12000, 20000, Tolerances(), (3, 12000)),
        ("TestReplicaCalcToleranceCMObject", 3, None, 20666, 20000, Tolerances(), (3, 20666)),
        ("TestReplicaCalcConfigurableToleranceCMObject", 3, None, 20666, 20000, Tolerances(0.1, 0.01), (4, 20666)),
        ("TestReplicaCalcScaleUpOverflow", 3, None, 2**63 - 1, 1, Tolerances(), (2**31 - 1, 2**63 - 1)),
    ],
)
def test_object_value_cases(upstream, current, readiness, usage, target, tol, expected):
    pods, _ = fixture(current, readiness=readiness)
    assert CALC.object_replicas(current, target, usage, pods, tol) == expected


@pytest.mark.parametrize(
    ("upstream", "status", "usage", "target", "tol", "expected"),
    [  # GetObjectPerPodMetricReplicas (type Object, AverageValue)
        ("TestReplicaCalcScaleUpCMPerPodObject", 3, 20000, 5000, Tolerances(), (4, 6667)),
        ("TestReplicaCalcScaleDownPerPodCMObject", 5, 6000, 2000, Tolerances(), (3, 1200)),
        ("TestReplicaCalcTolerancePerPodCMObject", 4, 20166, 5000, Tolerances(), (4, 5042)),
        ("TestReplicaCalcConfigurableTolerancePerPodCMObject", 4, 20208, 5000, Tolerances(0.1, 0.01), (5, 5052)),
    ],
)
def test_object_average_value_cases(upstream, status, usage, target, tol, expected):
    assert CALC.object_per_pod_replicas(status, target, usage, tol) == expected


def test_object_value_scales_from_zero_replicas():
    # getUsageRatioReplicaCount: currentReplicas == 0 -> ceil(ratio), no tolerance, no ready pods needed
    assert CALC.object_replicas(0, 10000, 25000, []) == (3, 25000)


# --- horizontal.go: the normalisation ---------------------------------------------------------------
def rules(pods=0, pods_period=0, percent=0, percent_period=0, window=0):
    """generateScalingRules."""
    policies = ([{"type": "Pods", "value": pods, "periodSeconds": pods_period}] if pods else []) + ([{"type": "Percent", "value": percent, "periodSeconds": percent_period}] if percent else [])
    out = {"stabilizationWindowSeconds": window, "selectPolicy": "Max"}
    return {**out, "policies": policies} if policies else out


def events_uniform(raw, period):
    """generateEventsUniformDistribution: event i at now − (period − seg·(i+1) + seg/2), whole seconds."""
    seg = period / len(raw)
    return [hpa._Event(e, NOW - int(period - seg * (i + 1) + seg / 2)) for i, e in enumerate(raw)]


SCALING_WITH_RULES = [  # TestScalingWithRules: (name, min, max, up rules, down rules, up events, down events, current, desired, expected, condition)
    ("prenormalized desired replicas within range", 3, 8, None, None, None, None, 5, 7, 7, "DesiredWithinRange"),
    ("prenormalized desired replicas < minReplicas", 2, 8, None, None, None, None, 3, 1, 2, "TooFewReplicas"),
    ("prenormalized desired replicas within range when minReplicas is 0", 0, 10, None, None, None, None, 1, 0, 0, "DesiredWithinRange"),
    ("maxReplicas is the limit because maxReplicas < scaleUpLimit", 1, 10, None, None, None, None, 20, 1000, 10, "TooManyReplicas"),
    ("desired replica count is more than the maximum replica count", 100, 150, None, None, None, None, 100, 1000, 150, "TooManyReplicas"),
    ("scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies", 1, 2000, rules(0, 0, 1, 60), None, None, None, 3, 1000, 4, "ScaleUpLimit"),
    ("scaleUp with default behavior", 1, 1000, None, None, None, None, 10, 50, 20, "ScaleUpLimit"),
    ("scaleUp with pods policy larger than percent policy", 1, 1000, rules(100, 60, 100, 60), None, None, None, 10, 500, 110, "ScaleUpLimit"),
    ("scaleUp with percent policy larger than pods policy", 1, 1000, rules(2, 60, 100, 60), None, None, None, 10, 500, 20, "ScaleUpLimit"),
    ("scaleUp with spec MaxReplicas limitation with large pod policy", 1, 1000, rules(100, 60), None, None, None, 10, 50, 50, "DesiredWithinRange"),
    ("scaleUp with spec MaxReplicas limitation with large percent policy", 1, 1000, rules(10000, 60), None, None, None, 10, 50, 50, "DesiredWithinRange"),
    ("scaleUp with pod policy limitation", 1, 1000, rules(30, 60), None, None, None, 10, 50, 40, "ScaleUpLimit"),
    ("scaleUp with percent policy limitation", 1, 1000, rules(0, 0, 200, 60), None, None, None, 10, 50, 30, "ScaleUpLimit"),
    ("scaleDown with percent policy larger than pod policy", 1, 1000, None, rules(20, 60, 1, 60, 300), None, None, 100, 2, 80, "ScaleDownLimit"),
    ("scaleDown with pod policy larger than percent policy", 1, 1000, None, rules(2, 60, 1, 60, 300), None, None, 100, 2, 98, "ScaleDownLimit"),
    ("scaleDown with spec MinReplicas=nil limitation with large pod policy", 1, 1000, None, rules(100, 60, 0, 0, 300), None, None, 10, 0, 1, "TooFewReplicas"),
    ("scaleDown with spec MinReplicas limitation with large percent policy", 5, 1000, None, rules(0, 0, 100, 60, 300), None, None, 10, 2, 5, "TooFewReplicas"),
    ("scaleDown with pod policy limitation", 1, 1000, None, rules(5, 60, 0, 0, 300), None, None, 10, 2, 5, "ScaleDownLimit"),
    ("scaleDown with percent policy limitation", 1, 1000, None, rules(0, 0, 50, 60, 300), None, None, 10, 5, 5, "DesiredWithinRange"),
    ("scaleUp with spec MaxReplicas limitation with large pod policy and events", 1, 200, rules(300, 60), None, ([1, 5, 9], 120), None, 100, 500, 200, "TooManyReplicas"),
    ("scaleUp with spec MaxReplicas limitation with large percent policy and events", 1, 200, rules(0, 0, 10000, 60), None, ([1, 5, 9], 120), None, 100, 500, 200, "TooManyReplicas"),
    ("scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events", 1, 1000, rules(5, 120), None, ([1, 5, 9], 120), None, 100, 500, 100, "ScaleUpLimit"),
    ("scaleUp with pod policy and previous scale up events", 1, 1000, rules(150, 120), None, ([1, 5, 9], 120), None, 100, 500, 235, "ScaleUpLimit"),
    ("scaleUp with percent policy and previous scale up events", 1, 1000, rules(0, 0, 200, 120), None, ([1, 5, 9], 120), None, 100, 500, 255, "ScaleUpLimit"),
    ("scaleDown with default policy and previous events", 1, 1000, None, None, None, ([1, 5, 9], 120), 10, 5, 5, "DesiredWithinRange"),
    ("scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events", 1, 1000, None, rules(115, 120, 0, 0, 300), None, ([1, 5, 9], 120), 100, 0, 1, "TooFewReplicas"),
    ("scaleDown with spec MinReplicas limitation with large pod policy and previous events", 5, 1000, None, rules(130, 120, 0, 0, 300), None, ([1, 5, 9], 120), 100, 0, 5, "TooFewReplicas"),
    ("scaleDown with spec MinReplicas limitation with large percent policy and previous events", 5, 1000, None, rules(0, 0, 100, 120, 300), None, ([1, 5, 9], 120), 100, 2, 5, "TooFewReplicas"),
    ("scaleDown with pod policy limitation and previous events", 1, 1000, None, rules(5, 120, 0, 0, 300), None, ([1, 5, 9], 120), 100, 2, 100, "ScaleDownLimit"),
    ("scaleDown with percent policy limitation and previous events", 1, 1000, None, rules(0, 0, 50, 120, 300), None, ([2, 4, 6], 120), 100, 0, 56, "ScaleDownLimit"),
    ("scaleDown with previous events preventing further scale down", 1, 1000, None, rules(0, 0, 10, 120, 300), None, ([10, 10, 10], 120), 100, 0, 100, "ScaleDownLimit"),
    ("scaleDown with with previous events still allowing more scale down", 1, 1000, None, rules(0, 0, 1000, 120, 300), None, ([10, 10, 10], 120), 10, 5, 5, "DesiredWithinRange"),
    ("check 'outdated' flag for events for one behavior for up", 1, 1000, rules(1000, 60), None, ([8, 12, 9, 11], 120), None, 100, 200, 200, "DesiredWithinRange"),
    ("check that events were not marked 'outdated' for two different policies in the behavior for up", 1, 1000, rules(1000, 120, 100, 60), None, ([8, 12, 9, 11], 120), None, 100, 200, 200, "DesiredWithinRange"),
    ("check that events were marked 'outdated' for two different policies in the behavior for up", 1, 1000, rules(1000, 30, 100, 60), None, ([8, 12, 9, 11], 120), None, 100, 200, 200, "DesiredWithinRange"),
    ("check 'outdated' flag for events for one behavior for down", 1, 1000, None, rules(1000, 60, 0, 0, 300), None, ([8, 12, 9, 11], 120), 100, 5, 5, "DesiredWithinRange"),
    ("check that events were not marked 'outdated' for two different policies in the behavior for down", 1, 1000, None, rules(1000, 120, 100, 60, 300), None, ([8, 12, 9, 11], 120), 100, 5, 5, "DesiredWithinRange"),
    ("check that events were marked 'outdated' for two different policies in the behavior for down", 1, 1000, None, rules(1000, 30, 100, 60, 300), None, ([8, 12, 9, 11], 120), 100, 5, 5, "DesiredWithinRange"),
]


@pytest.mark.parametrize("case", SCALING_WITH_RULES, ids=[c[0] for c in SCALING_WITH_RULES])
def test_scaling_with_rules(case):
    """TestScalingWithRules: convertDesiredReplicasWithBehaviorRate with GenerateHPAScale{Up,Down}Rules."""
    _, lo, hi, up, down, up_events, down_events, current, desired, expected, condition = case
    behavior = {k: v for k, v in (("scaleUp", up), ("scaleDown", down)) if v is not None}
    h = HPA(lo, hi, behavior=behavior)
    h._up = events_uniform(*up_events) if up_events else []
    h._down = events_uniform(*down_events) if down_events else []
    assert h._with_behavior_rate(NOW, current, desired) == (expected, condition)


@pytest.mark.parametrize(
    ("current", "desired", "lo", "hi", "expected", "condition"),
    [  # TestConvertDesiredReplicasWithRules
        (5, 7, 3, 8, 7, "DesiredWithinRange"),
        (3, 1, 2, 8, 2, "TooFewReplicas"),
        (1, 0, 0, 10, 0, "DesiredWithinRange"),
        (20, 1000, 1, 10, 10, "TooManyReplicas"),
        (3, 1000, 1, 2000, 6, "ScaleUpLimit"),  # calculateScaleUpLimit(3) = max(2·3, 4)
    ],
)
def test_convert_desired_replicas_with_rules(current, desired, lo, hi, expected, condition):
    assert HPA(lo, hi)._with_rules(current, desired) == (expected, condition)


def test_calculate_scale_limits_with_min_select_policy():
    # TestCalculateScaleUpLimitWithScalingRules / TestCalculateScaleDownLimitWithBehaviors
    both = [{"type": "Pods", "value": 2, "periodSeconds": 60}, {"type": "Percent", "value": 50, "periodSeconds": 60}]
    h = HPA(1, 100, behavior={"scaleUp": {"selectPolicy": "Min", "policies": both}, "scaleDown": {"selectPolicy": "Min", "policies": both}})
    assert h._limit(NOW, 1, h.behavior["scaleUp"], up=True) == 2
    assert h._limit(NOW, 5, h.behavior["scaleDown"], up=False) == 3


@pytest.mark.parametrize(
    ("name", "recommendations", "desired", "expected", "log_length"),
    [  # TestNormalizeDesiredReplicas (legacy stabilizeRecommendation, 5-minute window)
        ("empty log", [], 5, 5, 1),
        ("stabilize", [(4, -120), (5, -60)], 3, 5, 3),
        ("no stabilize", [(1, -120), (2, -60)], 3, 3, 3),
        ("no stabilize - old recommendations", [(10, -600), (9, -540)], 3, 3, 2),
        ("stabilize - old recommendations", [(10, -600), (4, -60), (5, -120), (9, -540)], 3, 5, 4),
    ],
)
def test_normalize_desired_replicas_legacy(name, recommendations, desired, expected, log_length):
    h = HPA(1, 100)
    h._recommendations = [[NOW + age, rec] for rec, age in recommendations]
    assert h._stabilize(NOW, desired) == expected
    assert len(h._recommendations) == log_length


# --- the stabilisation with behaviors, from the Go code ------------------------------------------------
def test_stabilization_clamps_current_between_up_and_down_windows():
    h = HPA(1, 100, behavior={"scaleUp": {"stabilizationWindowSeconds": 300}, "scaleDown": {"stabilizationWindowSeconds": 300}})
    h._recommendations = [[NOW - 600, 6], [NOW - 60, 4], [NOW - 120, 5]]
    assert h._stabilize_with_behaviors(NOW, 100, 3) == 5  # down: the highest of the window
    assert len(h._recommendations) == 3  # the obsolete one was reused
    h._recommendations = [[NOW - 600, 10], [NOW - 60, 2], [NOW - 120, 3]]
    assert h._stabilize_with_behaviors(NOW, 1, 100) == 2  # up: the lowest of the window


def test_a_recommendation_exactly_at_the_cutoff_is_neither_counted_nor_reused():
    h = HPA(1, 10, behavior={"scaleDown": {"stabilizationWindowSeconds": 60}})
    assert h.step(0, 4, 4) == 4
    for t in (15, 30, 45):
        assert h.step(t, 4, 1) == 4
    assert h.step(60, 4, 1) == 1  # t=0 is not after now − 60


def test_default_behaviors_and_the_legacy_caps():
    assert HPA(1, 100, behavior={}).step(0, 1, 50) == 5  # max(1 + 4 pods, 2 × 1)
    assert HPA(1, 100, behavior={}).step(0, 10, 50) == 20
    assert HPA(1, 100).step(0, 1, 50) == 4  # legacy: max(2 × 1, 4)
    assert HPA(1, 3).step(0, 1, 50) == 3
    assert HPA(2, 5).step(0, 9, 9) == 5 and HPA(2, 5).step(0, 1, 1) == 2
    assert HPA(1, 5).step(0, 0, 3) == 0  # scaling disabled at 0 replicas


def test_scale_down_percent_policy_80_72_64():
    h = HPA(1, 100, behavior={"scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]}})
    assert [h.step(t, r, 10) for t, r in ((0, 80), (15, 72), (60, 72))] == [72, 72, 64]


def test_scale_up_limit_counts_replicas_removed_in_the_period_too():
    h = HPA(1, 100, behavior={"scaleDown": {"stabilizationWindowSeconds": 0}, "scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}})
    assert h.step(0, 10, 6) == 6  # 4 removed at t=0
    assert h.step(15, 6, 20) == 12  # period start 6 + 4 = 10, + 2 pods


def test_legacy_window_counts_a_sample_exactly_at_the_cutoff():
    h = HPA(1, 10)
    assert h.step(0, 6, 6) == 6
    assert [h.step(t, 6, 1) for t in range(15, 301, 15)][-1] == 6
    assert h.step(315, 6, 1) == 1


def test_combine_follows_compute_replicas_for_metrics():
    assert HPA.combine(3, [2, 5, None]) == 5  # the largest valid proposal
    assert HPA.combine(3, [None, None]) is None  # all invalid: no scaling
    assert HPA.combine(3, [2, None]) is None  # one invalid and the rest would scale down: no scaling
    assert HPA.combine(3, [3, None]) == 3


def test_tolerances_from_behavior_and_manifests():
    h = HPA(1, 10, behavior={"scaleUp": {"tolerance": "0.05"}, "scaleDown": {"tolerance": "200m"}})
    assert h.tolerances() == Tolerances(0.2, 0.05)
    assert HPA(1, 10).tolerances() == Tolerances(0.1, 0.1)
    v1 = {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "spec": {"maxReplicas": 10, "targetCPUUtilizationPercentage": 50}}
    h1 = hpa.from_manifest(v1)
    assert h1.behavior is None and h1.metrics[0] == hpa.MetricSpec("Resource", "cpu", "Utilization", 50)
    pods = {"type": "Pods", "pods": {"metric": {"name": "inflight"}, "target": {"type": "AverageValue", "averageValue": "2500m"}}}
    obj = {"type": "Object", "object": {"metric": {"name": "queue"}, "describedObject": {"kind": "Service", "name": "s", "apiVersion": "v1"}, "target": {"type": "Value", "value": 30}}}
    h2 = HPA(1, 10, metrics=[pods, obj])
    assert [m.target for m in h2.metrics] == [2500, 30000]
    with pytest.raises(BadInput):
        hpa.parse_metric({"type": "External", "external": {}})
    with pytest.raises(BadInput):
        hpa.parse_metric({"type": "Pods", "pods": {"metric": {"name": "x"}, "target": {"type": "Utilization", "averageUtilization": 5}}})


def test_propose_takes_the_largest_metric_and_survives_one_failing():
    pods = [Pod(f"p{i}", 200, ready=True, start_s=0.0) for i in range(2)]
    cpu = {p.name: PodMetric(150, NOW, 60) for p in pods}  # 75 % of 200m
    inflight = {p.name: PodMetric(4000, NOW, 60) for p in pods}  # 4 in flight each
    h = HPA(1, 10, metrics=[{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}, {"type": "Pods", "pods": {"metric": {"name": "inflight"}, "target": {"type": "AverageValue", "averageValue": 2}}}])
    proposal, detail = h.propose(2, 2, pods, {"cpu": cpu, "inflight": inflight}, now_s=NOW)
    assert [d[1] for d in detail] == [3, 4] and proposal == 4
    proposal, detail = h.propose(2, 2, pods, {"cpu": cpu}, now_s=NOW)  # the in-flight metric is missing
    assert proposal == 3 and isinstance(detail[1][1], str)


@pytest.mark.parametrize("behavior", [{"scaleUp": {"selectPolicy": "Fastest"}}, {"scaleDown": {"policies": [{"type": "Replicas", "value": 1, "periodSeconds": 15}]}}, {"scaleDown": {"policies": []}}, {"scaleDown": {"stabilizationWindowSeconds": 7200}}, {"scaleSideways": {}}, {"scaleUp": {"tolerance": "-1"}}])
def test_bad_behavior_is_rejected(behavior):
    with pytest.raises(BadInput):
        HPA(1, 3, behavior=behavior)


def test_simple_resource_replicas_and_the_old_boundary():
    assert resource_replicas(50, [{"request_milli": 100, "usage_milli": 90, "ready": True}] * 50, 75) == (60, 90)
    # isWithin is inclusive and compares with 1 + 0.1 in float64: 110 % of target stays (|1 − 1.1| > 0.1 did not)
    assert resource_replicas(5, [{"request_milli": 100, "usage_milli": 110}] * 5, 100)[0] == 5
    assert resource_replicas(5, [{"request_milli": 100, "usage_milli": 111}] * 5, 100)[0] == 6


# --- random sequences against reference formulas written from the Go code ------------------------------
def _ref_group(pods, samples, cpu, now, init=120, delay=10):
    ready = 0
    unready, missing, ignored = set(), set(), set()
    for p in pods:
        if p.deleting or p.phase == "Failed":
            ignored.add(p.name)
        elif p.phase == "Pending":
            unready.add(p.name)
        elif p.name not in samples:
            missing.add(p.name)
        elif cpu and (p.ready is None or p.start_s is None or ((p.ready is False or samples[p.name].timestamp_s < p.ready_changed_s + samples[p.name].window_s) if p.start_s + init > now else (p.ready is False and p.start_s + delay > p.ready_changed_s))):
            unready.add(p.name)
        else:
            ready += 1
    return ready, unready, missing, ignored


def _ref_resource(current, target, pods, samples, tol, now):
    ready, unready, missing, ignored = _ref_group(pods, samples, True, now)
    m = {k: v.value_milli for k, v in samples.items() if k not in unready | ignored}
    if not m:
        return "error"
    req = {p.name: p.request_milli for p in pods}

    def ratio(mm):
        used = sum(v for k, v in mm.items() if k in req)
        asked = sum(req[k] for k in mm if k in req)
        if asked == 0:
            return None
        return int(used * 100 / asked) / target  # Go: int32((Σ·100)/Σ), both non-negative

    r = ratio(m)
    if r is None:
        return "error"
    up_unready = bool(unready) and r > 1
    if not up_unready and not missing:
        return current if 1 - tol.scale_down <= r <= 1 + tol.scale_up else math.ceil(r * ready)
    if missing and r < 1:
        m.update({k: req[k] * max(100, target) // 100 for k in missing})
    elif missing and r > 1:
        m.update({k: 0 for k in missing})
    if up_unready:
        m.update({k: 0 for k in unready})
    nr = ratio(m)
    if 1 - tol.scale_down <= nr <= 1 + tol.scale_up or (r < 1 and nr > 1) or (r > 1 and nr < 1):
        return current
    n = math.ceil(nr * len(m))
    return current if (nr < 1 and n > current) or (nr > 1 and n < current) else n


def _ref_pods(current, target, pods, samples, tol, now):
    ready, unready, missing, ignored = _ref_group(pods, samples, False, now)
    m = {k: v.value_milli for k, v in samples.items() if k not in unready | ignored}
    if not m:
        return "error"
    r = (sum(m.values()) // len(m)) / target
    up_unready = bool(unready) and r > 1
    if not up_unready and not missing:
        return current if 1 - tol.scale_down <= r <= 1 + tol.scale_up else math.ceil(r * ready)
    if missing:
        m.update({k: (target if r < 1 else 0) for k in missing} if r != 1 else {})
    if up_unready:
        m.update({k: 0 for k in unready})
    nr = (sum(m.values()) // len(m)) / target
    if 1 - tol.scale_down <= nr <= 1 + tol.scale_up or (r < 1 and nr > 1) or (r > 1 and nr < 1):
        return current
    n = math.ceil(nr * len(m))
    return current if (nr < 1 and n > current) or (nr > 1 and n < current) else n


@st.composite
def pod_sets(draw):
    n = draw(st.integers(1, 12))
    pods, samples = [], {}
    for i in range(n):
        start = draw(st.sampled_from([None, NOW - 30, NOW - 60, NOW - 500]))
        changed = draw(st.sampled_from([0.0, NOW - 20, NOW - 400])) if start is not None else 0.0
        pod = Pod(f"p{i}", draw(st.integers(50, 2000)), draw(st.sampled_from(["Running"] * 6 + ["Pending", "Failed"])), draw(st.sampled_from([True, True, False, None])), changed, start, draw(st.booleans()) and draw(st.booleans()))
        pods.append(pod)
        if draw(st.integers(0, 4)):
            samples[pod.name] = PodMetric(draw(st.integers(0, 4000)), NOW - draw(st.sampled_from([0, 30, 90])), 60.0)
    return pods, samples


tolerances = st.builds(Tolerances, st.sampled_from([0.0, 0.05, 0.1, 0.34]), st.sampled_from([0.0, 0.01, 0.1, 2.0]))


@settings(max_examples=1200, deadline=None)
@given(case=pod_sets(), current=st.integers(1, 15), target=st.integers(1, 400), tol=tolerances)
def test_resource_calculator_matches_the_reference(case, current, target, tol):
    pods, samples = case
    want = _ref_resource(current, target, pods, samples, tol, NOW)
    try:
        got = CALC.resource_replicas(current, target, pods, samples, tol, NOW)[0]
    except MetricsUnavailable:
        got = "error"
    assert got == want


@settings(max_examples=1000, deadline=None)
@given(case=pod_sets(), current=st.integers(1, 15), target=st.integers(1, 5000), tol=tolerances)
def test_pods_calculator_matches_the_reference(case, current, target, tol):
    pods, samples = case
    want = _ref_pods(current, target, pods, samples, tol, NOW)
    try:
        got = CALC.pods_replicas(current, target, pods, samples, tol, NOW)[0]
    except MetricsUnavailable:
        got = "error"
    assert got == want


policy = st.fixed_dictionaries({"type": st.sampled_from(["Pods", "Percent"]), "value": st.integers(1, 200), "periodSeconds": st.sampled_from([15, 30, 60, 120])})
rule_sets = st.fixed_dictionaries({}, optional={"stabilizationWindowSeconds": st.sampled_from([0, 15, 60, 300]), "selectPolicy": st.sampled_from(["Max", "Min", "Disabled"]), "policies": st.lists(policy, min_size=1, max_size=3)})
behaviors = st.one_of(st.none(), st.fixed_dictionaries({}, optional={"scaleUp": rule_sets, "scaleDown": rule_sets}))


def _ref_normalize(behavior, lo, hi, start, proposals, legacy_window=300):
    """horizontal.go, reduced to lists: one step every 15 s; returns the replica counts."""
    recs, up_ev, down_ev, out, current = [(0.0, start)], [], [], [], start
    for i, desired in enumerate(proposals):
        now = 15.0 * i
        if current == 0 and lo != 0:
            new = 0
        elif current > hi:
            new = hi
        elif current < lo:
            new = lo
        elif behavior is None:
            stab = max([desired] + [r for t, r in recs if t >= now - legacy_window])
            old = [j for j, (t, _) in enumerate(recs) if t < now - legacy_window]
            if old:
                recs[old[-1]] = (now, desired)
            else:
                recs.append((now, desired))
            cap = int(max(2.0 * current, 4.0))
            new = lo if stab < lo else min(stab, cap if hi > cap else hi)
        else:
            up, down = behavior["scaleUp"], behavior["scaleDown"]
            ucut, dcut = now - up["stabilizationWindowSeconds"], now - down["stabilizationWindowSeconds"]
            up_rec = min([desired] + [r for t, r in recs if t > ucut])
            down_rec = max([desired] + [r for t, r in recs if t > dcut])
            stab = min(max(current, up_rec), down_rec)
            old = [j for j, (t, _) in enumerate(recs) if t < ucut and t < dcut]
            if old:
                recs[old[-1]] = (now, desired)
            else:
                recs.append((now, desired))

            def start_of(period):
                return current - sum(c for t, c in up_ev if t > now - period) + sum(c for t, c in down_ev if t > now - period)

            new = stab
            if stab > current and up["selectPolicy"] != "Disabled":
                props = [start_of(p["periodSeconds"]) + p["value"] if p["type"] == "Pods" else math.ceil(start_of(p["periodSeconds"]) * (1 + p["value"] / 100)) for p in up["policies"]]
                limit = max(current, min(props) if up["selectPolicy"] == "Min" else max(props))
                new = min(stab, limit if hi > limit else hi)
            elif stab > current:
                new = min(stab, current if hi > current else hi)
            elif stab < current and down["selectPolicy"] != "Disabled":
                props = [start_of(p["periodSeconds"]) - p["value"] if p["type"] == "Pods" else int(start_of(p["periodSeconds"]) * (1 - p["value"] / 100)) for p in down["policies"]]
                limit = min(current, max(props) if down["selectPolicy"] == "Min" else min(props))
                new = max(stab, limit if lo < limit else lo)
            elif stab < current:
                new = max(stab, current if lo < current else lo)
        if new != current and behavior is not None:
            (up_ev if new > current else down_ev).append((now, abs(new - current)))
        out.append(new)
        current = new
    return out


@settings(max_examples=800, deadline=None)
@given(lo=st.integers(0, 5), span=st.integers(0, 12), behavior=behaviors, start=st.integers(0, 25), proposals=st.lists(st.integers(0, 40), min_size=1, max_size=30))
def test_normalisation_matches_the_reference(lo, span, behavior, start, proposals):
    hi = max(1, lo + span)
    h = HPA(lo, hi, behavior=behavior)
    got, current = [], start
    for i, desired in enumerate(proposals):
        current = h.step(15.0 * i, current, desired)
        got.append(current)
    assert got == _ref_normalize(h.behavior, lo, hi, start, proposals)


# --- notebook 08's exercise checks, both ways --------------------------------------------------------
def test_exercise_checks_accept_solutions_and_explain_mistakes():
    from labkit.exercises import ExerciseFailed, ex08

    assert ex08.check_desired(None) is False
    assert ex08.check_desired(3) is True
    with pytest.raises(ExerciseFailed, match="100 %"):
        ex08.check_desired(2)
    gentle = {"scaleDown": {"stabilizationWindowSeconds": 90, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}
    assert ex08.check_behavior(None) is False
    assert ex08.check_behavior(gentle) is True
    with pytest.raises(ExerciseFailed, match="at once"):
        ex08.check_behavior({"scaleDown": {"stabilizationWindowSeconds": 90}})
    with pytest.raises(ExerciseFailed, match="valid"):
        ex08.check_behavior({"scaleDown": {"selectPolicy": "Sometimes"}})
