"""labkit.patterns.repeats: warm-up, interleaved rounds, a minimum duration per point, median and spread."""

from __future__ import annotations

import pytest

from labkit.errors import BadInput
from labkit.patterns import repeats


def test_every_variant_is_warmed_up_then_interleaved_in_alternating_order() -> None:
    calls: list[str] = []
    samples = repeats.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, min_s=0.0)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up a, b; then a b, b a, a b
    assert set(samples) == {"a", "b"} and all(len(s.seconds) == 3 for s in samples.values())


def test_a_fast_point_is_repeated_until_its_rounds_last_min_s(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]  # a fake clock: every call of the work takes exactly 2 ms, however busy the machine is
    monkeypatch.setattr(repeats, "now", lambda: clock[0])
    n = [0]

    def work() -> None:
        n[0] += 1
        clock[0] += 0.002

    sample = repeats.interleave({"fast": work}, rounds=2, min_s=0.02)["fast"]
    assert sample.calls_per_round == 5  # 2 rounds × 5 calls × 2 ms = the 20 ms asked for the point
    assert n[0] == 1 + 2 * 5
    assert sample.median_s == pytest.approx(0.002)  # seconds per call, not per round


def test_sample_median_spread_and_ratio() -> None:
    a = repeats.Sample("a", (1.0, 2.0, 4.0), 1)
    b = repeats.Sample("b", (2.0, 2.0, 2.0), 1)
    assert (a.median_s, a.low_s, a.high_s) == (2.0, 1.0, 4.0)
    assert a.spread == pytest.approx(1.5) and not a.steady() and b.steady()
    assert repeats.ratio(b, a) == (1.0, 0.5, 2.0)


def test_check_steady_prints_one_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    held = repeats.check_steady({"a": repeats.Sample("a", (1.0, 1.1, 1.05), 1)})
    out = capsys.readouterr().out
    assert held and out.startswith("✅") and "rounds" in out
    held = repeats.check_steady({"a": repeats.Sample("a", (1.0, 2.0, 1.05), 1)})
    assert not held and capsys.readouterr().out.startswith("⚠️")


def test_bad_arguments() -> None:
    with pytest.raises(BadInput):
        repeats.interleave({"a": lambda: None}, rounds=0)
    with pytest.raises(BadInput):
        repeats.interleave({})
