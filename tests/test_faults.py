"""``labkit bench faults``' arithmetic, without processes: recovery per kill and the targets it reports."""

from __future__ import annotations

import pytest

from labkit.bench import faults
from labkit.measure.load import Request

pytestmark = pytest.mark.unit


def test_recovery_per_kill_counts_only_requests_the_kill_disrupted() -> None:
    normal = [Request(float(i) * 0.01, 0.01, None) for i in range(200)]  # median 10 ms
    hit = Request(5.0, 11.2, None)  # in flight at the kill at 5.1 s, and slow: disrupted until 16.2 s
    late = Request(5.2, 0.01, None)  # after the kill: not disrupted
    failed = Request(5.05, 0.5, None, "HTTP 504")
    rec = faults.recovery_per_kill([*normal, hit, late, failed], [5.1, 30.0])
    assert rec[0] == pytest.approx(16.2 - 5.1) and rec[1] == 0.0


def test_option_targets_and_summary() -> None:
    f = faults.OptionFaults("celery-redis", sent=10, redelivery_s=11.0, recovery_s=[1.0])
    assert f.recovery_target_s == 11.0 + faults.RECOVERY_MARGIN_S and f.measured
    assert "recovery_s" not in f.summary() and f.summary()["recovery_target_s"] == 13.0
    assert not faults.OptionFaults("ray-tasks", note="not measured").measured
    fast, full = faults.Plan.pick(True), faults.Plan.pick(False)
    assert fast.kills >= 30 and full.kills >= fast.kills and fast.max_s < full.max_s
