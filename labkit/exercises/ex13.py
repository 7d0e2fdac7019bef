"""Checks for notebook 13 (LitServe): the batching gain from a sweep, the reason in a 422 answer."""

from __future__ import annotations

import math
from typing import Any

from labkit.exercises import verdict
from labkit.measure.batching import BatchingSweep

__all__ = ["check_batching_gain", "check_validation_reason"]


def check_batching_gain(answer: Any, sweep: BatchingSweep) -> bool:
    """★ Best batched throughput over unbatched throughput at the highest concurrency of ``sweep``."""
    try:
        want = sweep.gain()
    except Exception:
        want = math.nan
    problem = None
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        problem = f"expected a number (a ratio), got {type(answer).__name__}"
    elif math.isnan(want):
        problem = "the sweep has no unbatched and batched rows at one highest concurrency: re-run it"
    elif not math.isclose(float(answer), want, rel_tol=0.01):
        problem = f"{answer:.2f} is the inverse: divide batched by unbatched" if math.isclose(float(answer), 1 / want, rel_tol=0.01) else f"{answer:.2f} is not the sweep's ratio ({want:.2f}); take the highest concurrency"
    return verdict(
        "Exercise 1 (batching gain)",
        answer,
        problem,
        "sweep.row(32).throughput_per_s / sweep.row(1).throughput_per_s (rows at the highest concurrency by default)",
        success=f"batching gives {want:.2f}× at the highest concurrency.",
    )


def check_validation_reason(answer: Any, detail: Any) -> bool:
    """★★ From a 422 answer's ``detail`` (FastAPI/pydantic), the (field, message) of its first error."""
    try:
        first = detail[0]
        want = (str(first["loc"][-1]), str(first["msg"]))
    except (TypeError, KeyError, IndexError):
        want = None
    problem = None
    if want is None:
        problem = "detail is not a FastAPI validation answer (a list of {loc, msg, type}): send the bad request again"
    elif not isinstance(answer, tuple) or len(answer) != 2:
        problem = "expected a tuple (field name, message)"
    elif answer != want:
        problem = f"{answer} differs from the first error in detail: field is the last part of 'loc', message is 'msg'"
    return verdict(
        "Exercise 2 (the reason in a 422)",
        answer,
        problem,
        'err = detail[0]; (err["loc"][-1], err["msg"])',
        success="that line is what a client should log and show.",
    )
