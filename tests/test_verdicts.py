"""Computed verdicts and the contention probe: a ✅ only when the printed numbers satisfy the printed condition."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkit.errors import BadInput
from labkit.measure import probe, verdicts


def _printed(line: str) -> tuple[float, str, float]:
    m = re.search(r"measured (-?[\d,.]+)\S* \(expected (≥|≤|>|<) (-?[\d,.]+)", line)
    assert m, line
    return float(m[1].replace(",", "")), m[2], float(m[3].replace(",", ""))


@given(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([">=", "<=", ">", "<"]), st.integers(0, 3))
def test_a_tick_only_when_the_printed_numbers_satisfy_the_printed_condition(value: float, bound: float, op: str, digits: int) -> None:
    v = verdicts.check("claim", value, op, bound, digits=digits, cause="test", show=False)
    shown, symbol, shown_bound = _printed(str(v))
    holds = {"≥": shown >= shown_bound, "≤": shown <= shown_bound, ">": shown > shown_bound, "<": shown < shown_bound}[symbol]
    assert bool(v) == holds
    assert str(v).startswith("✅" if holds else "⚠️")


@given(st.floats(-1e-2, 1e-2, allow_nan=False), st.floats(0, 1e-3), st.sampled_from(["<=", ">"]), st.integers(4, 8))
def test_tolerances_print_short_and_still_agree_with_the_tick(value: float, bound: float, op: str, digits: int) -> None:
    v = verdicts.check("claim", value, op, bound, digits=digits, cause="test", show=False)
    m = re.search(r"measured (\S+) \(expected (≤|>) (\S+)\)", str(v))
    assert m, str(v)
    shown, shown_bound = float(m[1]), float(m[3])
    assert bool(v) == (shown <= shown_bound if m[2] == "≤" else shown > shown_bound)
    assert str(verdicts.check("d", 0.0, "<=", 1e-5, digits=6, show=False)).endswith("measured 0 (expected ≤ 1e-5)")


def test_rounding_never_hides_a_failed_comparison() -> None:
    """05 §4: 30.5 % against ≤ 30 % printed "30 % (expected ≤ 30 %)" with a ✅; more digits show it fails."""
    assert str(verdicts.check("rounds agree", 30.5, "<=", 30, unit=" %", digits=0, cause="c", show=False)) == (
        "⚠️ rounds agree — measured 30.5 % (expected ≤ 30.0 %): c")
    # a value that would print as its bound gets the digits that tell them apart (12's p99: "1.0× (expected > 1.0×)")
    assert str(verdicts.check("x", 29.6, "<=", 30, unit=" %", digits=0, show=False)) == "✅ x — measured 29.6 % (expected ≤ 30.0 %)"
    assert str(verdicts.check("p99", 0.998, ">", 1.0, unit="×", digits=1, cause="c", show=False)) == "⚠️ p99 — measured 0.998× (expected > 1.000×): c"
    assert str(verdicts.check("x", 30, "<=", 30, unit=" %", digits=0, show=False)) == "✅ x — measured 30 % (expected ≤ 30 %)"
    assert str(verdicts.check("x", 0.54, ">", 0.5, digits=1, show=False)).endswith("measured 0.54 (expected > 0.50)")
    assert not verdicts.check("x", 1.996, ">=", 2.0, cause="c", show=False)
    line = str(verdicts.within("x", 1.5004, 0.67, 1.5, unit="×", cause="c", show=False))
    assert "measured 1.5004× (expected between 0.6700× and 1.5000×)" in line and line.startswith("⚠️")
    assert verdicts.check("x", 30.00001, "<=", 30, digits=0, show=False)  # past EXTRA_DIGITS: compared (and printed) as 30.000
    assert str(verdicts.within("status", 400, 400, 400, digits=0, show=False)).endswith("measured 400 (expected = 400)")
    wrong = verdicts.within("status", 422, 400, 400, digits=0, cause="c", show=False)
    assert not wrong and "(expected = 400): c" in str(wrong)


def test_failed_verdict_names_the_probe_cause_or_says_the_machine_was_idle(capsys: pytest.CaptureFixture[str]) -> None:
    busy = probe.ProbeReport(start_s=1e-3, end_s=2e-3, load_start=3.5, load_end=3.9, usable_cores=2, cpu_count=2)
    assert busy.busy() and "load average 3.9 on 2 usable cores" in (busy.cause() or "") and "2.00× slower" in (busy.cause() or "")
    probe._LAST[:] = [busy]
    line = str(verdicts.check("fast enough", 1.0, ">=", 2.0, unit="×"))
    assert line.startswith("⚠️") and "load average 3.9" in line and capsys.readouterr().out.strip() == line
    probe._LAST[:] = [probe.ProbeReport(1e-3, 1e-3, 0.2, 0.3, 2, 2)]
    assert verdicts.IDLE_CAUSE in str(verdicts.check("fast enough", 1.0, ">=", 2.0, show=False))
    assert "given cause" in str(verdicts.check("x", 1.0, ">=", 2.0, cause="given cause", show=False))


def test_nan_never_holds_and_bad_arguments_are_refused() -> None:
    assert not verdicts.check("x", float("nan"), ">=", 0.0, cause="c", show=False)
    assert not verdicts.within("x", float("nan"), 0.0, 1.0, cause="c", show=False)
    assert verdicts.within("x", 0.5, 0.0, 1.0, show=False)
    with pytest.raises(BadInput):
        verdicts.check("x", 1.0, "==", 1.0)
    with pytest.raises(BadInput):
        verdicts.within("x", 1.0, 2.0, 1.0)


def test_probe_measures_this_machine() -> None:
    p = probe.start()
    report = p.finish()
    assert report.start_s > 0 and report.end_s and report.end_s > 0
    assert 1 <= report.usable_cores <= report.cpu_count
    assert probe.last() is report and report.line().startswith(("✅", "⚠️"))
    assert set(report.as_dict()) >= {"slowdown", "busy", "cause", "usable_cores"}


def test_sanity_guards_print_a_warning_and_exercises_refuse(capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.measure import guards, timing

    probe._LAST[:] = [probe.ProbeReport(1e-3, 1e-3, 0.2, 0.3, 2, 2)]
    assert guards.fraction_of_peak(40.0, 50.0) and capsys.readouterr().out == ""  # sane: silent
    bad = guards.fraction_of_peak(64.0, 49.4)
    out = capsys.readouterr().out
    assert not bad and out.startswith("⚠️ sanity:") and "1.30×" in out and "peak" in bad.reason
    assert not guards.peak_with_threads({1: 181.8, 2: 49.4}) and guards.peak_with_threads({1: 100.0, 2: 95.0})
    assert not guards.repeats_agree(timing.spread([1.0, 1.5])) and guards.repeats_agree(timing.spread([1.0, 1.2]))
    assert not guards.speedup_within_cores(15.81, cores=2) and guards.speedup_within_cores(1.9, cores=2)
    assert not guards.speedup_within_cores(2.5, workers=2, cores=8)
    assert not guards.speedup_at_least_one(0.72, workers=2) and guards.speedup_at_least_one(1.4, workers=2)
    capsys.readouterr()
    msg = guards.refusal(bad, guards.Guard(True, ""))
    assert msg is not None and msg.startswith("not accepted") and "peak" in msg
    assert guards.refusal(guards.Guard(True, "")) is None


def test_rounds_agree_prints_one_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.measure import guards, timing

    held = guards.rounds_agree({"a": timing.spread([1.0, 1.1, 1.05], label="a")})
    out = capsys.readouterr().out
    assert held and out.startswith("✅") and "rounds" in out
    held = guards.rounds_agree({"a": timing.spread([1.0, 2.0, 1.05], label="a"), "b": timing.spread([1.0, 1.0, 1.0], label="b")})
    out = capsys.readouterr().out
    assert not held and out.startswith("⚠️") and "worst: a" in out and "95 %" in out  # (2 - 1) / 1.05 of the median
    assert guards.rounds_agree({"a": timing.spread([1.0, 1.3])}, quiet=True) and capsys.readouterr().out == ""
    assert not guards.rounds_agree({"1 replica": timing.spread([1.0, 2.0, 1.05], label="1")})  # the caller's name, not the label
    assert "worst: 1 replica" in capsys.readouterr().out
    with pytest.raises(BadInput):
        guards.rounds_agree({})


def test_probe_counts_other_programs_cpu_and_refreshes_while_running() -> None:
    r = probe.ProbeReport(1e-3, 1e-3, 0.1, 0.1, 2, 2, others_cores=1.2)
    assert r.busy() and "1.2 of the 2 usable cores" in (r.cause() or "") and "other programs 1.2 cores" in r.line()
    assert not probe.ProbeReport(1e-3, 1e-3, 0.1, 0.1, 2, 2, others_cores=0.1).busy()
    p = probe.start()
    assert probe.last() is p.report or probe.last() == p.report
    report = p.finish()
    assert report.end_s is not None and probe.last() is report and "others_cores" in report.as_dict()


def test_a_high_load_average_is_not_blamed_on_others_when_they_measured_idle() -> None:
    """Notebook 04 on a busy machine: load 3.6 at the start, others 0.0 cores, calibration faster at the end."""
    stale = probe.ProbeReport(1.5e-3, 1e-3, 3.6, 1.2, 2, 2, others_cores=0.0)
    cause = stale.cause() or ""
    assert "other programs kept" not in cause and "at the start" in cause and "only 0.0 cores" in cause
    assert "1.50× slower than the end" in cause and "no measured program explains it" in cause
    busy = probe.ProbeReport(1e-3, 1e-3, 3.6, 3.6, 2, 2, others_cores=1.1).cause() or ""
    assert busy.startswith("other programs kept 1.1 of the 2 usable cores busy") and "load average 3.6" in busy


def test_the_load_reason_names_only_what_was_measured() -> None:
    """03 c23: 2 ranks on 2 cores, others 0.4 on average, start calibration slower: not 'own processes outnumbered'."""
    tp = probe.ProbeReport(1.39e-3, 1e-3, 1.5, 3.1, 2, 2, others_cores=0.4, own_cores=1.1, own_procs=2, others_start=1.3, others_end=0.1)
    cause = tp.cause() or ""
    assert "1.3 cores during the start calibration" in cause and "another program ran next to this notebook" in cause
    assert "outnumber" not in cause and "own processes" not in cause
    quiet = probe.ProbeReport(1.39e-3, 1e-3, 1.5, 3.1, 2, 2, others_cores=0.4, own_cores=1.1, own_procs=2, others_start=0.2, others_end=0.1)
    assert "no measured program explains it" in (quiet.cause() or "") and "outnumber" not in (quiet.cause() or "")
    crowded = probe.ProbeReport(1e-3, None, 1.0, 3.4, 2, 2, others_cores=0.2, own_cores=1.8, own_procs=4, others_start=0.1)
    cause = crowded.cause() or ""
    assert "load average 3.4 now" in cause and "4 processes it started were live at once (more than the 2 usable cores)" in cause
    assert "(more than the 2 usable cores), and they used 1.8 of the 2 cores on average so far" in cause


def test_the_start_line_reports_others_and_the_condition_it_checked() -> None:
    start = probe.ProbeReport(1e-3, None, 3.7, None, 2, 2, others_cores=1.3, own_cores=0.2, own_procs=0)
    assert (start.cause() or "").startswith("other programs kept 1.3 of the 2 usable cores busy during the start calibration")
    lagging = probe.ProbeReport(1e-3, None, 3.7, None, 2, 2, others_cores=0.1, own_cores=0.2, own_procs=0)  # s11run 01: the last notebook had just ended
    assert not lagging.busy() and lagging.line().startswith("✅") and "load average ≤" not in lagging.line()
    assert "the load average 3.7 is set aside: a lagging 1-minute mean" in lagging.line()
    ended = probe.ProbeReport(1e-3, 1e-3, 3.1, 2.9, 2, 2, others_cores=0.2, own_cores=0.9, own_procs=1, others_start=0.1, others_end=0.0)
    assert not ended.busy()  # a whole run where only the load average was high, none of it measured
    glanced = probe.ProbeReport(float("nan"), None, 3.7, None, 2, 2)  # no /proc/stat: the load average is all there is
    assert glanced.busy() and "whose was not measured" in (glanced.cause() or "")
    idle = probe.ProbeReport(1e-3, None, 2.2, None, 2, 2, others_cores=0.1).line()
    assert idle.startswith("✅") and idle.endswith("(expected load average ≤ 2.5, other programs ≤ 0.5 cores)")
    assert "calibration end/start ≤ 1.50×" in probe.ProbeReport(1e-3, 1e-3, 0.2, 0.2, 2, 2, others_cores=0.0).line()
    assert "calibration end/start ≤ 1.25×" in probe.ProbeReport(1e-3, 1e-3, 0.2, 0.2, 2, 2).line()  # nothing else measured: the stricter limit
    steady = probe.ProbeReport(1e-3, 1.24e-3, 0.2, 0.2, 2, 2, others_cores=0.0)  # an idle VM after a burst of own work
    assert not steady.busy() and probe.ProbeReport(1e-3, 1.6e-3, 0.2, 0.2, 2, 2, others_cores=0.0).busy()
    assert probe.ProbeReport(1e-3, 1e-3, 0.2, 0.2, 2, 2, others_cores=0.54).line().startswith("✅")  # compared as printed: 0.5
    p = probe.start()
    assert p.report.others_cores is not None or not os.path.exists("/proc/stat")  # the start window is long enough to measure
    p.finish()


def test_without_a_probe_a_failed_verdict_still_reads_the_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook that started no probe must not call a loaded machine idle."""
    monkeypatch.setattr(probe, "_LAST", [])
    monkeypatch.setattr(probe, "_ACTIVE", [])
    monkeypatch.setattr(probe, "usable_cores", lambda: 2)
    monkeypatch.setattr(probe, "load_average", lambda: 19.0)
    line = str(verdicts.check("fast enough", 1.0, ">=", 2.0, show=False))
    assert "load average 19.0 on 2 usable cores" in line and verdicts.IDLE_CAUSE not in line
    monkeypatch.setattr(probe, "load_average", lambda: 0.3)
    assert verdicts.IDLE_CAUSE in str(verdicts.check("fast enough", 1.0, ">=", 2.0, show=False))


def test_a_count_of_one_reads_in_the_singular() -> None:
    line = str(verdicts.check("it scaled", 1, ">=", 2, unit=" replicas", digits=0, cause="c", show=False))
    assert "measured 1 replica (expected ≥ 2 replicas)" in line
    assert "measured 0 requests (expected ≤ 1 request)" in str(verdicts.check("x", 0, "<=", 1, unit=" requests", digits=0, show=False))
    assert "measured 1 of 4" in str(verdicts.check("x", 1, ">=", 4, unit=" of 4", digits=0, cause="c", show=False))
    assert "measured 1 ms" in str(verdicts.check("x", 1, "<=", 2, unit=" ms", digits=0, show=False))
    assert "measured 1.00 requests" in str(verdicts.check("x", 1, "<=", 2, unit=" requests", show=False))
    assert "between 1 batch and 3 batches" in str(verdicts.within("x", 2, 1, 3, unit=" batches", digits=0, show=False))
