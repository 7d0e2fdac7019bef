"""labkit.kube.hpa against the documented Kubernetes HPA cases, upstream's rules, and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import BadInput
from labkit.kube import hpa
from labkit.kube.hpa import HPA, resource_replicas

pytestmark = pytest.mark.unit


def pods(usages, request=100, ready=True):
    return [{"request_milli": request, "usage_milli": u, "ready": ready} for u in usages]


# --- resource_replicas: the documented cases ------------------------------------------------------
def test_double_when_usage_is_twice_the_target():
    # docs: currentMetricValue 200m, desired 100m -> replicas double
    assert resource_replicas(3, pods([200] * 3), 100) == (6, 200)


def test_halve_when_usage_is_half_the_target():
    assert resource_replicas(4, pods([50] * 4), 100) == (2, 50)


@pytest.mark.parametrize("usage", [90, 95, 100, 105, 109])
def test_inside_tolerance_nothing_changes(usage):
    assert resource_replicas(5, pods([usage] * 5), 100)[0] == 5


def test_band_edges_follow_float64_as_upstream():
    # |1 - 1.1| is 0.10000000000000009 in float64 (Go and Python alike): 110 % is outside the band
    assert resource_replicas(5, pods([110] * 5), 100)[0] == 6
    assert resource_replicas(5, pods([90] * 5), 100)[0] == 5


def test_just_outside_tolerance_scales():
    assert resource_replicas(5, pods([112] * 5), 100)[0] == math.ceil(1.12 * 5)
    assert resource_replicas(10, pods([88] * 10), 100)[0] == 9


def test_fifty_pods_at_ninety_percent_with_target_75():
    assert resource_replicas(50, pods([90] * 50), 75) == (60, 90)


def test_utilization_is_an_integer_percent_truncated_as_upstream():
    # 3 pods, usage 101+100+100 of 300 requested -> 100.33 % -> 100
    assert resource_replicas(3, pods([101, 100, 100]), 50) == (6, 100)


def test_custom_tolerance():
    assert resource_replicas(4, pods([120] * 4), 100, tolerance=0.25)[0] == 4
    assert resource_replicas(4, pods([120] * 4), 100, tolerance=0.1)[0] == 5


# --- missing metrics and unready pods (replica_calculator_test.go style) ---------------------------
def test_missing_pods_count_as_zero_on_scale_up():
    ps = pods([200, 200]) + pods([None])
    # ratio 2.0 over the ready pods; with the missing pod at 0 %: 400/300 -> 133 % -> ceil(1.33 * 3) = 4
    assert resource_replicas(3, ps, 100) == (4, 200)


def test_missing_pods_count_as_full_request_on_scale_down():
    ps = pods([10, 10]) + pods([None])
    # ratio 0.1; with the missing pod at 100 %: 120/300 = 40 % -> ceil(0.4 * 3) = 2
    assert resource_replicas(3, ps, 100) == (2, 10)


def test_missing_pods_can_cancel_a_scale_down():
    ps = pods([80, 80]) + pods([None] * 2)
    # 80 % -> scale down; with two missing pods at 100 %: 90 % -> inside tolerance -> keep 4
    assert resource_replicas(4, ps, 100) == (4, 80)


def test_direction_flip_keeps_current():
    ps = pods([85]) + pods([None] * 3)
    # ratio 0.85 (down); missing at 100 % -> (85+300)/400 = 96 % -> within tolerance: keep
    assert resource_replicas(4, ps, 100)[0] == 4
    ps = pods([140]) + pods([None] * 3)
    # ratio 1.4 (up); missing at 0 % -> 35 % -> would flip to a scale-down: keep
    assert resource_replicas(4, ps, 100)[0] == 4


def test_unready_pods_count_as_zero_on_scale_up():
    ps = pods([300, 300]) + pods([500], ready=False)
    # ready ratio 3.0; unready counted at 0: 600/300 = 200 % -> ceil(2 * 3) = 6
    assert resource_replicas(3, ps, 100) == (6, 300)


def test_unready_pods_are_ignored_on_scale_down():
    ps = pods([20, 20]) + pods([500], ready=False)
    # ratio 0.2 over ready pods only: ceil(0.2 * 2) = 1
    assert resource_replicas(3, ps, 100) == (1, 20)


def test_pending_and_failed_pods():
    ps = pods([200, 200]) + [{"request_milli": 100, "usage_milli": None, "ready": False, "phase": "Pending"}, {"request_milli": 100, "usage_milli": 900, "ready": True, "phase": "Failed"}]
    # failed pod skipped; pending ignored -> counted as 0 on scale-up: 400/300 -> 133 % -> 4
    assert resource_replicas(4, ps, 100) == (4, 200)


def test_no_metrics_raises_like_upstream():
    with pytest.raises(BadInput, match="did not receive metrics"):
        resource_replicas(2, pods([None, None]), 50)
    with pytest.raises(BadInput, match="no pods"):
        resource_replicas(2, [], 50)
    with pytest.raises(BadInput, match="CPU request"):
        resource_replicas(1, [{"request_milli": 0, "usage_milli": 10, "ready": True}], 50)


# --- HPA.step: behavior --------------------------------------------------------------------------------
def test_default_scale_up_from_one_replica_is_at_most_five():
    h = HPA(1, 100, behavior={})
    assert h.step(0, 1, 50) == 5  # max(1 + 4 pods, 2 x 1)


def test_default_scale_up_percent_wins_when_larger():
    h = HPA(1, 100, behavior={})
    assert h.step(0, 10, 50) == 20  # max(10 + 4, 10 x 2)


def test_scale_up_rate_counts_changes_within_the_period():
    h = HPA(1, 100, behavior={"scaleUp": {"policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]}})
    assert h.step(0, 1, 10) == 3
    assert h.step(15, 3, 10) == 3  # 2 pods already added in the last 60 s
    assert h.step(61, 3, 10) == 5


def test_scale_down_percent_policy_80_72_64():
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60}]}}
    h = HPA(1, 100, behavior=behavior)
    assert h.step(0, 80, 10) == 72
    assert h.step(15, 72, 10) == 72  # 8 removed in this period already
    assert h.step(60, 72, 10) == 64  # the event at t=0 is not after the cutoff: 10 % of 72 rounded up
    assert h.step(120, 64, 10) == 57


def test_select_policy_min_and_disabled():
    both = [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]
    assert HPA(1, 100, behavior={"scaleUp": {"selectPolicy": "Min", "policies": both}}).step(0, 10, 50) == 14
    assert HPA(1, 100, behavior={"scaleUp": {"selectPolicy": "Disabled"}}).step(0, 10, 50) == 10
    h = HPA(1, 100, behavior={"scaleDown": {"selectPolicy": "Disabled", "stabilizationWindowSeconds": 0}})
    assert h.step(0, 10, 1) == 10


def test_scale_down_stabilization_window_holds_then_releases():
    h = HPA(1, 10, behavior={"scaleDown": {"stabilizationWindowSeconds": 60}})
    assert h.step(0, 4, 4) == 4
    for t in (15, 30, 45):
        assert h.step(t, 4, 1) == 4  # the 4 recommended at t=0 is still inside the window
    assert h.step(60, 4, 1) == 1  # t=0 is not after the cutoff (now - 60): released


def test_initial_recommendation_is_the_current_count():
    h = HPA(1, 10, behavior={"scaleDown": {"stabilizationWindowSeconds": 30}})
    assert h.step(0, 5, 1) == 5
    assert h.step(31, 5, 1) == 1


def test_scale_up_stabilization_takes_the_minimum():
    h = HPA(1, 10, behavior={"scaleUp": {"stabilizationWindowSeconds": 30}})
    assert h.step(0, 2, 2) == 2
    assert h.step(15, 2, 6) == 2  # the 2 at t=0 is inside the up-window
    assert h.step(31, 2, 6) == 6


def test_min_max_clamp_and_out_of_range_current():
    h = HPA(2, 5, behavior={})
    assert h.step(0, 3, 50) == 5
    assert HPA(2, 5, behavior={"scaleDown": {"stabilizationWindowSeconds": 0}}).step(0, 3, 0) == 2
    assert HPA(2, 5).step(0, 9, 9) == 5  # above max: straight to max
    assert HPA(2, 5).step(0, 1, 1) == 2  # below min: straight to min
    assert HPA(1, 5).step(0, 0, 3) == 0  # replicas 0 with minReplicas > 0: autoscaling disabled


# --- HPA.step: the legacy path (no behavior, e.g. autoscaling/v1) ----------------------------------------
def test_legacy_scale_up_cap():
    assert HPA(1, 100).step(0, 1, 50) == 4  # max(2 x 1, 4)
    assert HPA(1, 100).step(0, 10, 50) == 20  # 2 x 10
    assert HPA(1, 3).step(0, 1, 50) == 3


def test_legacy_scale_down_waits_five_minutes():
    h = HPA(1, 10)
    assert h.step(0, 6, 6) == 6
    t = 15.0
    while t < 300:
        assert h.step(t, 6, 1) == 6
        t += 15
    assert h.step(300, 6, 1) == 6  # the t=0 sample is exactly at the cutoff: still counted
    assert h.step(315, 6, 1) == 1  # no rate limit on the legacy path


def test_legacy_downscale_window_flag():
    h = HPA(1, 10, downscale_stabilization_s=30)
    assert h.step(0, 6, 6) == 6
    assert h.step(31, 6, 1) == 1


# --- manifests and validation ------------------------------------------------------------------------
def test_from_manifest_v1_and_v2():
    v1 = {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "spec": {"minReplicas": 1, "maxReplicas": 10, "targetCPUUtilizationPercentage": 50}}
    h, target = hpa.from_manifest(v1)
    assert (h.min_replicas, h.max_replicas, h.behavior, target) == (1, 10, None, 50)
    v2 = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "spec": {"maxReplicas": 3, "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}], "behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}}},
    }
    h, target = hpa.from_manifest(v2)
    assert target == 60 and h.behavior is not None
    assert h.behavior["scaleDown"]["stabilizationWindowSeconds"] == 30
    assert h.behavior["scaleUp"] == hpa.DEFAULT_SCALE_UP


def test_behavior_defaults_fill_the_scale_down_window_from_the_flag():
    b = hpa.behavior_with_defaults({"scaleUp": {"selectPolicy": "Min"}})
    assert b["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert b["scaleUp"]["selectPolicy"] == "Min" and b["scaleUp"]["policies"] == hpa.DEFAULT_SCALE_UP["policies"]


@pytest.mark.parametrize(
    "behavior",
    [
        {"scaleUp": {"selectPolicy": "Fastest"}},
        {"scaleDown": {"policies": [{"type": "Replicas", "value": 1, "periodSeconds": 15}]}},
        {"scaleDown": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}},
        {"scaleDown": {"stabilizationWindowSeconds": 7200}},
        {"scaleSideways": {}},
    ],
)
def test_bad_behavior_is_rejected(behavior):
    with pytest.raises(BadInput):
        HPA(1, 3, behavior=behavior)


def test_time_must_not_go_backwards():
    h = HPA(1, 3)
    h.step(10, 1, 1)
    with pytest.raises(BadInput):
        h.step(5, 1, 1)


# --- properties ----------------------------------------------------------------------------------------
policy = st.fixed_dictionaries({"type": st.sampled_from(["Pods", "Percent"]), "value": st.integers(1, 200), "periodSeconds": st.sampled_from([15, 30, 60, 120])})
rules = st.fixed_dictionaries(
    {},
    optional={
        "stabilizationWindowSeconds": st.sampled_from([0, 15, 60, 300]),
        "selectPolicy": st.sampled_from(["Max", "Min", "Disabled"]),
        "policies": st.lists(policy, min_size=1, max_size=3),
    },
)
behaviors = st.one_of(st.none(), st.fixed_dictionaries({}, optional={"scaleUp": rules, "scaleDown": rules}))


@settings(max_examples=200, deadline=None)
@given(lo=st.integers(1, 5), span=st.integers(0, 10), behavior=behaviors, start=st.integers(1, 20), proposals=st.lists(st.integers(0, 40), min_size=1, max_size=30))
def test_result_always_within_min_and_max(lo, span, behavior, start, proposals):
    hi = lo + span
    h = HPA(lo, hi, behavior=behavior)
    current = min(max(start, lo), hi)
    for i, desired in enumerate(proposals):
        current = h.step(15.0 * i, current, desired)
        assert lo <= current <= hi


@settings(max_examples=200, deadline=None)
@given(window=st.sampled_from([30, 60, 120, 300]), start=st.integers(2, 10), proposals=st.lists(st.integers(0, 10), min_size=1, max_size=40))
def test_no_scale_down_below_any_recommendation_inside_the_window(window, start, proposals):
    h = HPA(1, 10, behavior={"scaleDown": {"stabilizationWindowSeconds": window}})
    history = [(0.0, start)]  # the initial recommendation
    current = start
    for i, desired in enumerate(proposals, start=1):
        t = 15.0 * i
        new = h.step(t, current, desired)
        if new < current:
            recent = [r for (tr, r) in history if tr > t - window] + [desired]
            assert new >= min(max(recent), current)
        history.append((t, desired))
        current = new


@settings(max_examples=100, deadline=None)
@given(start=st.integers(1, 10), proposals=st.lists(st.integers(0, 20), min_size=1, max_size=25))
def test_legacy_never_grows_faster_than_twice_or_four(start, proposals):
    h = HPA(1, 50)
    current = start
    for i, desired in enumerate(proposals):
        new = h.step(15.0 * i, current, desired)
        if new > current:
            assert new <= max(2 * current, 4)
        current = new


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), usage=st.integers(0, 1000), target=st.integers(10, 100))
def test_uniform_pods_match_the_formula(n, usage, target):
    desired, util = resource_replicas(n, pods([usage] * n), target)
    assert util == usage  # request 100m: milli == percent
    ratio = usage / target
    assert desired == (n if abs(1 - ratio) <= 0.1 else math.ceil(ratio * n))


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
