"""One plot family for the whole lab: gantt, speedup/scaling, latency vs batch, latency CDF, bars,
replicas over time. Each function draws on ``ax`` if given (else a new figure) and returns the Axes.

matplotlib is imported inside each function, so ``import labkit.plots`` stays cheap.
Used in every notebook.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from labkit.measure.timing import Spread, Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "annotate_device",
    "bars",
    "draw_spread",
    "gantt",
    "keep_end_labels_inside",
    "latency_cdf",
    "latency_vs_batch",
    "legend_outside",
    "over_time",
    "plain_log_ticks",
    "replicas_over_time",
    "scaling",
    "throughput_vs",
    "with_spread",
]

BAR_LABEL_WIDTH = 12  # characters per line of a bar's name before it wraps
BACKENDS = ("gloo", "nccl", "mpi", "ucc")  # process-group backends: not devices
BAR_LABEL_GID = "labkit-bar-label"  # tags the value labels of ``bars`` so ``draw_spread`` can lift them above its error bars
BAR_LABEL_GAP_PT = 2.0  # points between a bar's top (or its error bar's cap) and its value label
MIN_HEADROOM = 0.08  # at least this share of the bars' range stays free above the highest label's anchor
LAYOUT_SHRINK = 0.8  # the axes' height after the layout adds titles and tick labels, as a share of the height before it
STAGE_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def _ax(ax: Axes | None, figsize: tuple[float, float] = (7.5, 3.5)) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, new_ax = plt.subplots(figsize=figsize, layout="constrained")
    return new_ax


def gantt(timeline: Timeline, ax: Axes | None = None, title: str = "Who did what when", max_spans: int = 2000) -> Axes:
    """Draw one row per worker and one bar per span, coloured by stage; time starts at 0."""
    spans = timeline.spans[:max_spans]
    stages = timeline.stages()
    first_stage: dict[str, int] = {}  # each worker's first stage: a pipeline's rows read in stage order, parallel workers by name
    for s in spans:
        first_stage.setdefault(s.worker, stages.index(s.stage))
    workers = sorted(first_stage, key=lambda w: (first_stage[w], w))
    color = {st: STAGE_COLORS[i % len(STAGE_COLORS)] for i, st in enumerate(stages)}
    t0 = timeline.start
    ax = _ax(ax, (8, 0.5 + 0.45 * max(len(workers), 2)))
    for row, worker in enumerate(workers):
        mine = [s for s in spans if s.worker == worker]
        ax.broken_barh(
            [((s.start - t0) * 1e3, max(s.duration * 1e3, 1e-3)) for s in mine],
            (row - 0.4, 0.8),
            facecolors=[color[s.stage] for s in mine],
            edgecolor="white",
            linewidth=0.3,
        )
    ax.set_yticks(range(len(workers)), workers)
    ax.set_xlabel("time (ms)")
    ax.tick_params(axis="x", labelbottom=True)  # stacked with sharex=True, every panel keeps its numbers under its label
    ax.set_title(title)
    from matplotlib.patches import Patch

    legend_outside(ax, handles=[Patch(color=color[s], label=s) for s in stages])
    ax.invert_yaxis()
    return ax


def scaling(
    n_workers: Sequence[int],
    speedups: Sequence[float],
    ax: Axes | None = None,
    label: str = "measured",
    title: str = "Speedup vs workers",
    xlabel: str = "workers",
    ideal: bool = True,
) -> Axes:
    """Plot speedup against worker count, with the ideal line y = x."""
    ax = _ax(ax, (5, 3.5))
    ax.plot(n_workers, speedups, "o-", label=label)
    if ideal:
        ax.plot(n_workers, n_workers, "--", color="grey", label="ideal (linear)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("speedup ×")
    ax.set_xticks(list(n_workers))
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def throughput_vs(
    x: Sequence[float],
    throughputs_per_s: Sequence[float],
    ax: Axes | None = None,
    xlabel: str = "workers",
    label: str = "measured",
    bound_per_s: float | None = None,
    bound_label: str = "bound",
    ideal_from_first: bool = False,
    title: str = "Throughput",
) -> Axes:
    """Plot throughput against ``x`` with an optional horizontal bound and/or a linear ideal line."""
    ax = _ax(ax, (5, 3.5))
    ax.plot(x, throughputs_per_s, "o-", label=label)
    if ideal_from_first and len(x):
        ax.plot(x, [throughputs_per_s[0] * xi / x[0] for xi in x], "--", color="grey", label="ideal (linear)")
    if bound_per_s is not None:
        ax.axhline(bound_per_s, color="C3", ls=":", label=bound_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items / s")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def latency_vs_batch(
    batch_sizes: Sequence[int],
    latency_ms: Sequence[float],
    throughput_per_s: Sequence[float],
    ax: Axes | None = None,
    title: str = "Batch size: latency vs throughput",
) -> Axes:
    """Latency per batch (left axis) and items/s (right axis) against batch size, log-log."""
    ax = _ax(ax, (6, 3.5))
    ax.plot(batch_sizes, latency_ms, "o-", color="C0", label="latency per batch")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency per batch (ms)", color="C0")
    right = ax.twinx()
    right.plot(batch_sizes, throughput_per_s, "s--", color="C1", label="throughput")
    right.set_yscale("log")
    right.set_ylabel("items / s", color="C1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def latency_cdf(latencies_s: Mapping[str, Sequence[float]], ax: Axes | None = None, title: str = "Latency CDF", log: bool = True,
                counted: str = "requests") -> Axes:
    """One empirical CDF per named latency list (in ms), with p50 and p99 guides; ``counted`` names what each latency is of."""
    import numpy as np

    ax = _ax(ax, (6, 3.5))
    for name, values in latencies_s.items():
        xs = np.sort(np.asarray(values, dtype=float)) * 1e3
        if len(xs):
            ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=name)
    for q in (0.5, 0.99):
        ax.axhline(q, color="grey", lw=0.6, ls=":")
    if log:
        ax.set_xscale("log")
        plain_log_ticks(ax, "x")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel(f"fraction of {counted} ≤ x")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def bars(values: Mapping[str, float], ax: Axes | None = None, ylabel: str = "", title: str = "", fmt: str = "{:.1f}", errors: Mapping[str, float] | None = None) -> Axes:
    """Labelled bars with their value printed on top; the y axis ends on a tick above the highest label."""
    ax = _ax(ax, (max(4.0, 0.9 * len(values) + 2), 3.5))
    names = list(values)
    heights = [values[n] for n in names]
    yerr = [errors.get(n, 0.0) for n in names] if errors else None
    rects = ax.bar(names, heights, yerr=yerr, color=[STAGE_COLORS[i % len(STAGE_COLORS)] for i in range(len(names))])
    for label in ax.bar_label(rects, labels=[fmt.format(h) for h in heights], fontsize="small", padding=BAR_LABEL_GAP_PT):
        label.set_gid(BAR_LABEL_GID)  # ``errors`` are drawn by matplotlib, which already puts the label above them
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    # long names wrap onto short lines so neighbours never run into each other (the categories keep their names)
    ax.set_xticks(range(len(names)), [_wrap_name(n) for n in names])
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: _plain_number(y)))
    ax.tick_params(axis="x", labelrotation=20 if len(names) > 4 else 0)
    ax.grid(axis="y", alpha=0.3)
    _fit_bar_labels(ax)
    return ax


def _wrap_name(name: str, width: int = BAR_LABEL_WIDTH) -> str:
    """``name`` on lines of about ``width`` characters, broken at spaces or after underscores, never inside a word.

    Line breaks already in ``name`` are kept (05 wraps "submit +\\nas_completed" itself); only a longer line is broken.
    """
    return "\n".join(line if len(line) <= width else textwrap.fill(line.replace("_", "_ "), width, break_long_words=False).replace("_ ", "_")
                     for line in name.split("\n"))


def _fit_bar_labels(ax: Axes) -> None:
    """Leave room for the highest value label inside the axes and end the y axis on a tick at or above it.

    Sets the y margin (autoscaling stays on): the top is the highest label's anchor plus the label's
    height, estimated from the figure size before the layout shrinks the axes, rounded up to the
    next major tick, so the top tick is never below a bar and no label touches the top spine.
    """
    labels = [t for t in ax.texts if t.get_gid() == BAR_LABEL_GID]
    low, high = ax.dataLim.y0, ax.dataLim.y1
    anchor = max((t.xy[1] for t in labels), default=high)  # type: ignore[attr-defined]  # bar_label's labels are Annotations
    if not labels or ax.get_yscale() != "linear" or not high > 0 or anchor > high or high <= low:
        ax.margins(y=0.12)  # negative or log bars: matplotlib's own limits, with some headroom
        return
    axes_pt = ax.get_position().height * ax.get_figure().get_figheight() * 72 * LAYOUT_SHRINK  # type: ignore[union-attr]
    label_pt = max(float(t.get_fontsize()) for t in labels) * 1.3 + BAR_LABEL_GAP_PT + 2
    share = min(label_pt / max(axes_pt, 1.0), 0.5)  # of the axes' height, for the label above its anchor
    need = high + (high - low) * max(share / (1 - share), MIN_HEADROOM)
    ticks = [float(t) for t in ax.yaxis.get_major_locator().tick_values(min(low, 0.0), need) if t >= need]
    ax.margins(y=((min(ticks) if ticks else need) - high) / (high - low))


def draw_spread(ax: Axes, xs: Sequence[Any], medians: Sequence[float], lows: Sequence[float], highs: Sequence[float], color: str = "black") -> None:
    """Draw min–max error bars around each median on ``ax`` (a speedup, throughput or bar plot).

    ``lows`` / ``highs`` come from the Spreads of ``timing.compare`` (``.low``, ``.high``, or a
    ratio's range from ``timing.ratio``). On a ``bars`` plot, each bar's value label moves above
    its error bar's top, and the y axis makes room for it. Used in 02, 04, 05.
    """
    yerr = [[m - lo for m, lo in zip(medians, lows)], [hi - m for m, hi in zip(medians, highs)]]
    ax.errorbar(list(xs), list(medians), yerr=yerr, fmt="none", ecolor=color, capsize=4, linewidth=1, zorder=3)
    labels = [t for t in ax.texts if t.get_gid() == BAR_LABEL_GID]
    if not labels:
        return
    for x, hi in zip(xs, highs):
        at = float(ax.xaxis.convert_units(x))  # type: ignore[no-untyped-call]  # a bar's name or its position
        for label in labels:
            lx, ly = label.xy  # type: ignore[attr-defined]  # bar_label's labels are Annotations
            if abs(lx - at) < 0.4 and hi > ly:  # this bar's label, under the error bar's cap
                label.xy = (lx, hi)  # type: ignore[attr-defined]
    _fit_bar_labels(ax)


def over_time(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], ax: Axes | None = None, ylabel: str = "", title: str = "", step: bool = False) -> Axes:
    """Several (t, y) series on one time axis (seconds)."""
    ax = _ax(ax, (7, 3))
    for name, (t, y) in series.items():
        if step:
            ax.step(t, y, where="post", label=name)
        else:
            ax.plot(t, y, label=name)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return ax


def replicas_over_time(t_s: Sequence[float], replicas: Sequence[int], load: tuple[Sequence[float], Sequence[float]] | None = None, ax: Axes | None = None, title: str = "Replicas over time", load_label: str = "offered load") -> Axes:
    """Replica count as a step line; offered load on a second axis when given as (t, load), named ``load_label`` (with its unit)."""
    ax = _ax(ax, (7, 3))
    ax.step(t_s, replicas, where="post", color="C0", label="replicas")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("replicas", color="C0")
    ax.yaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]  # a MaxNLocator's parameter
    if load is not None:
        right = ax.twinx()
        right.plot(load[0], load[1], color="C1", alpha=0.7, label="offered load")
        right.set_ylabel(load_label, color="C1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return ax


def annotate_device(ax: Axes, device: Any, backend: str | None = None) -> None:
    """Write the device (and the process-group backend, if any) on its own line above the title, right-aligned.

    The note sits outside the axes, so it never covers a bar or a line, and a CPU run never passes
    for a GPU one. It is placed when the figure is drawn, above the top of the title (set before or
    after this call, one line or two), so a long centred title never runs into it. A backend name
    given as ``device`` ("gloo", "nccl") is shown as the backend, with the device it implies
    (gloo: cpu, nccl: cuda).
    """
    if backend is None and str(device) in BACKENDS:
        backend, device = str(device), "cuda" if str(device) == "nccl" else "cpu"
    note = f"device: {device}" + (f" · backend: {backend}" if backend else "")
    # x in axes fractions (its right edge), y at the top of the title's box, wherever the layout puts it
    ax.annotate(note, xy=(1.0, 1.0), xycoords=("axes fraction", ax.title), xytext=(0, 1), textcoords="offset points",
                ha="right", va="bottom", fontsize="x-small", color="grey")


def legend_outside(ax: Axes, **kwargs: Any) -> None:
    """Put the legend to the right of the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize="small", **kwargs)


def with_spread(
    series: Mapping[str, Mapping[float, Spread]],
    ax: Axes | None = None,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    log_x: bool = False,
    bound: float | None = None,
    bound_label: str = "bound",
    integer_x: bool = True,
    log_y: bool = False,
) -> Axes:
    """Median of each point with its spread drawn: IQR as error bars, min–max as a light band.

    ``series`` maps a label to ``{x: Spread}`` (e.g. ``{"threads=2": {1: s1, 8: s8}}`` from
    ``timing.compare`` / ``Spread.per``). The legend sits outside the data.
    """
    ax = _ax(ax, (7.0, 3.5))
    for i, (label, points) in enumerate(series.items()):
        xs = sorted(points)
        med = [points[x].median for x in xs]
        lo = [points[x].median - points[x].q1 for x in xs]
        hi = [points[x].q3 - points[x].median for x in xs]
        color = STAGE_COLORS[i % len(STAGE_COLORS)]
        ax.fill_between(xs, [points[x].low for x in xs], [points[x].high for x in xs], color=color, alpha=0.15, linewidth=0)
        ax.errorbar(xs, med, yerr=[lo, hi], fmt="o-", color=color, capsize=3, label=label)
    if bound is not None:
        ax.axhline(bound, color="C3", ls=":", label=bound_label)
    if log_x:
        ax.set_xscale("log", base=2)
    if log_y:
        ax.set_yscale("log")
        plain_log_ticks(ax)
    if integer_x:
        xs_all = sorted({x for points in series.values() for x in points})
        ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    legend_outside(ax, title="median, IQR bars,\nmin–max band", title_fontsize="x-small")
    return ax


def _plain_number(x: float) -> str:
    """A tick's value as a plain number: 20,000, 5, 2.5 and 0.2, not 2×10^4 or 35000 (linear bar axes and log axes)."""
    return f"{x:,.0f}" if float(x).is_integer() or abs(x) >= 1000 else f"{x:g}"


def _log_tick_label(axis: Any, x: float) -> str:
    """Label every decade; between them 2, 3, 4, 6 over up to 1.5 decades, 2 and 5 up to 3, every tick under half a decade."""
    import math

    lo, hi = sorted(abs(v) for v in axis.get_view_interval())
    if not x > 0 or not lo > 0:
        return _plain_number(x) if x > 0 else ""
    lead = round(x / 10 ** math.floor(math.log10(x) + 1e-9), 6)  # 1 … 9.99
    decades = math.log10(hi / lo)
    between = (2, 3, 4, 6) if decades <= 1.5 else (2, 5) if decades <= 3 else ()
    return _plain_number(x) if lead == 1 or decades < 0.5 or lead in between else ""


def plain_log_ticks(ax: Axes, axis: str = "y") -> None:
    """Label a base-10 log axis with plain numbers (200, 300, 1,000), enough of them to read the values off.

    Call it after ``set_yscale("log")`` (a new scale resets the tick labels). Used by ``with_spread``
    (00) and in 12.
    """
    import matplotlib as mpl
    from matplotlib.ticker import FuncFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    label = FuncFormatter(lambda x, _pos: _log_tick_label(target, x))
    target.set_major_formatter(label)
    target.set_minor_formatter(label)
    # a minor tick is shorter, so its label sat nearer the axis than a decade's ("50" a step above "100"): one baseline
    rc = mpl.rcParams
    offset = rc[f"{axis}tick.major.size"] + rc[f"{axis}tick.major.pad"]
    target.set_tick_params(which="minor", pad=offset - rc[f"{axis}tick.minor.size"])


def keep_end_labels_inside(ax: Axes, labels: Sequence[Any], gap_px: float = 4.0) -> None:
    """Widen a horizontal bar chart's value axis until each label written after its bar ends inside the axes.

    Call it after a draw (``fig.canvas.draw()``), when the layout and each label's width are final.
    Used by the capstone's throughput panels (a 2,156 "(reference)" label ran past the edge).
    """
    box = ax.get_window_extent()
    lo, hi = ax.get_xlim()
    right = hi
    for text in labels:
        room = box.width - text.get_window_extent().width - gap_px  # pixels left for the data up to the label's anchor
        if room > 0:
            right = max(right, lo + (text.get_position()[0] - lo) * box.width / room)
    ax.set_xlim(lo, right)
