from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.errors import BadInput
from labkit.measure import timing


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=200), st.floats(min_value=0, max_value=100))
def test_percentiles_match_numpy(values: list[float], p: float) -> None:
    ours = timing.percentiles(values, [p])[p]
    assert ours == pytest.approx(float(np.percentile(values, p)), rel=1e-9, abs=1e-6)


def test_latency_stats_fields() -> None:
    lat = [i / 1000 for i in range(1, 101)]
    s = timing.latency_stats(lat)
    assert s.n == 100
    assert s.p50 == pytest.approx(np.percentile(lat, 50))
    assert s.p99 == pytest.approx(np.percentile(lat, 99))
    assert s.max == 0.1 and s.mean == pytest.approx(np.mean(lat))
    assert "p99=" in str(s)


def test_empty_and_bad_inputs() -> None:
    with pytest.raises(BadInput, match="empty"):
        timing.percentiles([])
    with pytest.raises(BadInput, match="outside"):
        timing.percentiles([1.0], [101])
    with pytest.raises(BadInput):
        timing.throughput(10, 0)
    assert timing.throughput(10, 2.0) == 5.0


def test_timeline_records_spans_from_threads() -> None:
    tl = timing.Timeline()

    def work(w: int) -> None:
        for i in range(50):
            with tl.span(f"w{w}", "stage-a" if i % 2 else "stage-b", item=(w, i)):
                sum(range(100))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tl) == 200
    assert tl.workers() == ["w0", "w1", "w2", "w3"]
    assert set(tl.stages()) == {"stage-a", "stage-b"}
    assert all(s.end >= s.start for s in tl)
    assert tl.makespan >= max(s.duration for s in tl)
    assert sum(len(v) for v in tl.by_stage().values()) == 200
    assert all(0 <= f <= 1.0 + 1e-9 for f in tl.busy_fraction().values())
    # round trip through dicts, as spans come back from other processes
    tl2 = timing.Timeline()
    tl2.extend(tl.to_dicts())
    assert tl2.spans == tl.spans


def test_span_recorded_when_block_raises() -> None:
    tl = timing.Timeline()
    with pytest.raises(RuntimeError):
        with tl.span("w", "boom"):
            raise RuntimeError("x")
    assert len(tl) == 1


def test_item_latency_spans_stages() -> None:
    tl = timing.Timeline([timing.Span("a", "s1", 0.0, 1.0, 7), timing.Span("b", "s2", 1.5, 3.0, 7)])
    assert tl.item_latencies() == {7: 3.0}


def test_timed_and_measure() -> None:
    with timing.timed() as t:
        sum(range(10000))
    assert t.elapsed_s > 0
    calls = []
    durations = timing.measure(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(durations) == 3 and len(calls) == 5


def _recording_sync(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
    monkeypatch.setattr(timing, "synchronize", lambda device=None: events.append(f"sync {device}") if device is not None else None)


def test_measure_waits_for_the_device_before_each_clock_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # GPU work is asynchronous: each timed call must start on an idle device and stop once it is done
    events: list[str] = []
    _recording_sync(monkeypatch, events)
    timing.measure(lambda: events.append("call"), repeats=2, warmup=1, device="cuda:0")
    assert events == ["call", "sync cuda:0", "call", "sync cuda:0", "sync cuda:0", "call", "sync cuda:0"]
    events.clear()
    timing.measure(lambda: events.append("call"), repeats=2, warmup=0)
    assert events == ["call", "call"], "on the CPU (no device) nothing waits"


def test_timed_and_span_wait_for_the_device_before_their_clock_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    _recording_sync(monkeypatch, events)
    with timing.timed(device="cuda") as t:
        events.append("work")
    assert events == ["sync cuda", "work", "sync cuda"] and t.elapsed_s >= 0
    events.clear()
    tl = timing.Timeline()
    with pytest.raises(RuntimeError), tl.span("rank 0", "infer", device="cuda"):
        events.append("work")
        raise RuntimeError("boom")
    assert events == ["work", "sync cuda"] and len(tl) == 1


def test_synchronize_knows_cpu_cuda_and_mps() -> None:
    import torch

    timing.synchronize(None)
    timing.synchronize("cpu")
    timing.synchronize(torch.device("cpu"))
    with pytest.raises(BadInput, match="cannot wait for device 'tpu'"):
        timing.synchronize("tpu")


def test_spread_median_iqr_and_rates() -> None:
    s = timing.spread([4.0, 1.0, 2.0, 3.0, 10.0], label="x")
    assert (s.median, s.low, s.high, s.n) == (3.0, 1.0, 10.0, 5)
    assert s.iqr == pytest.approx(float(np.percentile(s.values, 75) - np.percentile(s.values, 25)))
    assert s.relative_spread == pytest.approx(9.0)
    assert s.per(6.0).median == pytest.approx(2.0) and s.scaled(1e3).low == 1e3
    assert "3.00 ms (IQR" in s.fmt(" ms") and "5 repeats" in str(s)
    with pytest.raises(BadInput):
        timing.spread([])


def test_point_times_at_least_the_minimum_and_keeps_the_thread_count() -> None:
    import torch

    before = torch.get_num_threads()
    calls: list[int] = []
    t0 = timing.now()
    s = timing.point(lambda: calls.append(1), min_s=0.05, warmup=2)
    assert timing.now() - t0 >= 0.05 and len(calls) > 2 and s.n >= 1 and s.median > 0
    assert torch.get_num_threads() == before


def test_compare_interleaves_variants_after_warming_each() -> None:
    order: list[str] = []
    timing.compare({"A": lambda: order.append("A"), "B": lambda: order.append("B")}, repeats=3, min_s=0.0, warmup=1)
    assert order == ["A", "B"] + ["A", "B", "B", "A", "A", "B"]  # warm-up of both, then A B, B A, A B (never A A B B)
    order.clear()
    got = timing.interleave({"A": lambda: order.append("A") or 1.0, "B": lambda: order.append("B") or 2.0}, repeats=4, warmup=1)
    assert order == ["A", "B"] + ["A", "B", "B", "A"] * 2
    assert got["A"].values == (1.0,) * 4 and got["B"].median == 2.0
    with pytest.raises(BadInput):
        timing.compare({})


# --- compare with fixed_calls: the rule of the patterns notebooks 02-05 (formerly labkit.patterns.repeats)


def test_every_variant_is_warmed_up_then_interleaved_in_alternating_order() -> None:
    calls: list[str] = []
    samples = timing.compare({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, min_s=0.0, fixed_calls=True)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up a, b; then a b, b a, a b
    assert set(samples) == {"a", "b"} and all(len(s.values) == 3 for s in samples.values())


def test_a_fast_point_is_repeated_until_its_rounds_last_min_s(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]  # a fake clock: every call of the work takes exactly 2 ms, however busy the machine is
    monkeypatch.setattr(timing, "now", lambda: clock[0])
    n = [0]

    def work() -> None:
        n[0] += 1
        clock[0] += 0.002

    sample = timing.compare({"fast": work}, repeats=2, min_s=0.02, fixed_calls=True)["fast"]
    assert sample.calls == (5, 5)  # 2 rounds × 5 calls × 2 ms = the 20 ms asked for the point
    assert n[0] == 1 + 2 * 5
    assert sample.median == pytest.approx(0.002)  # seconds per call, not per round


def test_fixed_calls_reads_the_clock_and_waits_for_the_device_only_around_each_round(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    _recording_sync(monkeypatch, events)
    s = timing.compare({"a": lambda: events.append("call")}, repeats=2, min_s=0.0, warmup=1, device="cuda:0", fixed_calls=True)["a"]
    assert events == ["sync cuda:0", "call", "sync cuda:0"] + ["sync cuda:0", "call", "sync cuda:0"] * 2 and s.calls == (1, 1)


def test_keys_are_kept_and_labels_name_them() -> None:
    by = timing.compare({1: lambda: None, (2, "threads"): lambda: None}, repeats=1, min_s=0.0, fixed_calls=True)
    assert list(by) == [1, (2, "threads")] and by[(2, "threads")].label == "(2, 'threads')"


def test_spread_median_spread_steady_and_ratio() -> None:
    a = timing.spread([1.0, 2.0, 4.0], label="a")
    b = timing.spread([2.0, 2.0, 2.0], label="b")
    assert (a.median, a.low, a.high) == (2.0, 1.0, 4.0)
    assert a.median_relative_spread == pytest.approx(1.5) and not a.steady() and b.steady()
    assert timing.spread([1.0, 1.3]).steady() and not timing.spread([1.0, 1.4]).steady()  # 30 % of the median 1.15 / 1.2
    assert timing.ratio(b, a) == (1.0, 0.5, 2.0)


def test_bad_arguments() -> None:
    with pytest.raises(BadInput):
        timing.compare({"a": lambda: None}, repeats=0, fixed_calls=True)
    with pytest.raises(BadInput):
        timing.compare({}, fixed_calls=True)
    with pytest.raises(BadInput):
        timing.compare({"a": lambda: None}, warmup=-1)


def test_with_spread_draws_error_bars_and_a_legend_outside() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from labkit import plots

    ax = plots.with_spread({"a": {1: timing.spread([1.0, 2.0, 3.0]), 2: timing.spread([2.0, 3.0])}}, xlabel="batch", bound=3.0)
    legend = ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > ax.get_window_extent().x0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]


def test_draw_spread_draws_min_max_bars_around_each_median() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit import plots

    fig, ax = plt.subplots()
    plots.draw_spread(ax, [1, 2], [2.0, 3.0], [1.0, 2.5], [4.0, 3.5])
    (bars,) = ax.collections
    segments = [seg.tolist() for seg in bars.get_segments()]
    assert segments == [[[1.0, 1.0], [1.0, 4.0]], [[2.0, 2.5], [2.0, 3.5]]]
    plt.close(fig)


def test_bar_labels_sit_above_the_error_bars_inside_the_axes_and_the_device_note_above_the_title() -> None:
    """02 §3, 05 §4/§8: a value label struck through by its min–max bar; 01/02: the device note ran into the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit import plots

    fig, ax = plt.subplots(figsize=(4, 3.5), layout="constrained")
    plots.bars({"images": 32.6, "range": 14.6}, ax=ax, title="A title long enough to reach the right edge of the axes", fmt="{:.0f}")
    plots.draw_spread(ax, ["images", "range"], [32.6, 14.6], [29.0, 14.0], [34.0, 16.0])
    plots.annotate_device(ax, "cpu")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    labels = [t for t in ax.texts if t.get_gid() == plots.BAR_LABEL_GID]
    assert [t.get_text() for t in labels] == ["33", "15"]
    for label, high in zip(labels, (34.0, 16.0)):
        assert label.xy[1] >= high  # type: ignore[attr-defined]  # anchored at the error bar's top, drawn above it
        box = label.get_window_extent(renderer)
        assert box.y0 >= ax.transData.transform((0, high))[1]
        assert box.y1 <= ax.get_window_extent(renderer).y1  # inside the axes: headroom
    top, ticks = ax.get_ylim()[1], ax.get_yticks()
    assert any(abs(t - top) < 1e-9 for t in ticks) and top > 34.0  # the axis ends on a tick above the data
    (note,) = [t for t in ax.texts if t.get_text() == "device: cpu"]
    assert note.get_window_extent(renderer).y0 >= ax.title.get_window_extent(renderer).y1  # its own line: never into the title
    plt.close(fig)


def test_bar_names_wrap_at_spaces_or_underscores_and_keep_the_callers_line_breaks() -> None:
    """05 §4: 'submit +\\nas_completed' came out as 'submit + as_ / completed'; 09: 'sweep_b32_d1 / 0' broke inside a word."""
    from labkit import plots

    assert plots._wrap_name("submit +\nas_completed") == "submit +\nas_completed"
    assert plots._wrap_name("send the images") == "send the\nimages"
    assert plots._wrap_name("sweep_b32_d1 / 0") == "sweep_b32_\nd1 / 0"


def test_plain_log_ticks_print_plain_numbers_between_the_decades() -> None:
    """12 §5: a p99 axis read 2×10^2 … 10^3 and a throughput axis only 10^1 and 10^2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from labkit import plots

    fig, ax = plt.subplots()
    ax.plot([1, 16], [10.2, 68.0])
    ax.axhline(190.0)
    ax.set_yscale("log")
    plots.plain_log_ticks(ax)
    fig.canvas.draw()
    shown = {t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()}
    assert {"10", "20", "30", "60", "100"} <= shown and not any("10^" in t or "times" in t for t in shown)
    plt.close(fig)
