"""The model's own batching gain (measure.batching.ModelGain) and the serving verdict built on it."""

from __future__ import annotations

import pytest

from labkit.errors import BadInput
from labkit.measure import batching, timing


def _gain(call_ms: dict[int, float]) -> batching.ModelGain:
    return batching.ModelGain({f"batch {b}": timing.spread([ms / 1e3] * 3) for b, ms in call_ms.items()})


def test_gain_is_per_item_and_linear_between_measured_sizes() -> None:
    g = _gain({1: 10.0, 4: 40.0, 16: 80.0, 32: 100.0})
    assert g.sizes == [1, 4, 16, 32]
    assert g.gain(1) == pytest.approx(1.0)
    assert g.gain(4) == pytest.approx(1.0)  # a call of 4 cost 4 calls of 1: nothing to gain at that batch
    assert g.gain(32) == pytest.approx(3.2)
    assert g.call_s(10) == pytest.approx(0.060)  # halfway between 4 (40 ms) and 16 (80 ms)
    assert g.gain(64) == pytest.approx(g.gain(32) * 64 / 32 * g.call_s(32) / g.call_s(64))  # clamped to the largest size measured
    assert "batch 32 is 3.20× cheaper per item" in g.line()


def test_serving_verdict_follows_the_models_gain_at_the_batch_formed(capsys: pytest.CaptureFixture[str]) -> None:
    g = _gain({1: 10.0, 4: 40.0, 16: 80.0, 32: 100.0})
    assert batching.check_serving_gain("S", 2.2, g, 32, 32)  # the model gains 3.2×: at least 2.1× expected
    assert not batching.check_serving_gain("S", 1.9, g, 32, 32)
    assert batching.check_serving_gain("S", 0.9, g, 4.0, 16)  # nothing to gain at batch 4: only "costs little"
    assert not batching.check_serving_gain("S", 0.7, g, 4.0, 16)
    out = capsys.readouterr().out
    assert "expected ≥ 2.10×" in out and "costs little" in out and "mean batch of 4.0" in out


def test_model_gain_times_each_size_and_refuses_bad_sizes() -> None:
    calls: list[int] = []
    g = batching.model_gain(lambda xb: calls.append(len(xb)), list(range(8)), sizes=(1, 8), repeats=2)
    assert g.sizes == [1, 8] and set(calls) == {1, 8}
    with pytest.raises(BadInput, match="start at 1"):
        batching.model_gain(lambda xb: None, list(range(8)), sizes=(2, 8))
    with pytest.raises(BadInput, match="fit in the 8 images"):
        batching.model_gain(lambda xb: None, list(range(8)), sizes=(1, 32))
