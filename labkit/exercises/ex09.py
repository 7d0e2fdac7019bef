"""Checks for notebook 09 (TorchServe): read the batching sweep, parse the Prometheus metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from labkit.exercises import verdict
from labkit.measure.batching import SweepRow

__all__ = ["check_batching_gain", "check_requests_per_model"]


def _gain(rows: Sequence[SweepRow]) -> float:
    top = max(r.concurrency for r in rows)
    off = [r.throughput_per_s for r in rows if r.max_batch_size == 1 and r.concurrency == top]
    on = [r.throughput_per_s for r in rows if r.max_batch_size > 1 and r.concurrency == top]
    if not off or not on or off[0] <= 0:
        return math.nan
    return max(on) / off[0]


def check_batching_gain(answer: Any, rows: Sequence[SweepRow]) -> bool:
    """★ The best batched throughput over unbatched throughput, at the highest concurrency of ``rows``.

    ``rows``: a batching sweep's rows (``measure.batching.SweepRow``: ``max_batch_size``,
    ``concurrency``, ``throughput_per_s``).
    """
    want = _gain(rows)
    problem = None
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        problem = f"expected a number (a ratio), got {type(answer).__name__}"
    elif math.isnan(want):
        problem = "the sweep has no max_batch_size == 1 row and batched row at the same highest concurrency: re-run it"
    elif not math.isclose(float(answer), want, rel_tol=0.01):
        if math.isclose(float(answer), 1 / want, rel_tol=0.01):
            problem = f"{answer:.2f} is the inverse: divide batched by unbatched throughput"
        else:
            problem = f"{answer:.2f} is not the ratio in rows ({want:.2f}); did you take the highest concurrency and the best batched setting?"
    return verdict(
        "Exercise 1 (batching gain)",
        answer,
        problem,
        "filter rows by r.concurrency == max concurrency; best batched r.throughput_per_s / the r.max_batch_size == 1 one",
        success=f"batching gives {want:.2f}× at the highest concurrency.",
    )


def check_requests_per_model(answer: Any, metrics_text: str) -> bool:
    """★★ Total ``ts_inference_requests_total`` per ``model_name``, parsed by hand from ``metrics_text``."""
    from labkit.services.torchserve import parse_metrics

    want: dict[str, float] = {}
    for s in parse_metrics(metrics_text):
        if s.name == "ts_inference_requests_total":
            name = s.labels.get("model_name", "")
            want[name] = want.get(name, 0.0) + s.value
    problem = None
    if not isinstance(answer, Mapping):
        problem = f"expected a dict model name → total, got {type(answer).__name__}"
    elif set(answer) != set(want):
        problem = f"models {sorted(answer)} differ from those in metrics_text: {sorted(want)}"
    else:
        wrong = {k: (answer[k], v) for k, v in want.items() if not math.isclose(float(answer[k]), v, rel_tol=1e-9)}
        if wrong:
            problem = f"totals differ (yours, expected): {wrong} — did you add up every version of each model?"
    return verdict(
        "Exercise 2 (requests per model)",
        answer,
        problem,
        'keep lines starting with "ts_inference_requests_total{", take the model_name="…" label and the number after the last space',
        success="; ".join(f"{name}: {total:.0f} requests" for name, total in sorted(want.items())) + ".",
    )
