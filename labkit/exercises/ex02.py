"""Checks for notebook 02 · Parallel ensembles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from labkit.exercises import is_unanswered, verdict

__all__ = ["check_ideal_speedup", "check_samme_alphas", "check_soft_average"]


def check_soft_average(preds: Any, logits: np.ndarray) -> bool:
    """★ ``preds`` must be the soft-averaging ensemble's classes for stacked ``logits`` (members, n, classes)."""
    hint = "softmax each member's logits over the class axis, average over the member axis (axis 0), then argmax over classes"
    problem = None
    if not is_unanswered(preds):
        arr = np.asarray(logits, dtype=np.float64)
        z = np.exp(arr - arr.max(axis=-1, keepdims=True))
        expected = (z / z.sum(axis=-1, keepdims=True)).mean(axis=0).argmax(axis=1)
        got = np.asarray(preds)
        if got.shape != expected.shape:
            problem = f"expected one class per input, shape {expected.shape}, got shape {got.shape}"
        elif (wrong := int((got != expected).sum())) > 0:
            averaged_logits = arr.mean(axis=0).argmax(axis=1)
            same_as_logit_mean = bool((got == averaged_logits).all())
            problem = f"{wrong} of {len(expected)} predictions differ from the soft average" + (
                " (you averaged logits, not probabilities)" if same_as_logit_mean else ""
            )
    return verdict("Exercise 1 (soft averaging)", preds, problem, hint, "This is ensemble.soft_average.")


def _ideal(n_members: int, n_workers: int) -> float:
    return n_members / math.ceil(n_members / n_workers)


def check_ideal_speedup(speedups: Any, n_workers: int = 2, cores: int | None = None) -> bool:
    """★★ ``speedups[k]`` is the ideal speedup of k+1 equal members pinned round-robin on ``n_workers``.

    With ``cores`` (the usable cores), an ideal above it is refused: no pool runs faster than its cores.
    """
    hint = "the slowest worker runs ceil(n_members / n_workers) members; the speedup is n_members divided by that"
    problem = None
    if not is_unanswered(speedups):
        got = [float(v) for v in speedups]
        expected = [_ideal(n, n_workers) for n in range(1, len(got) + 1)]
        if len(got) < 3:
            problem = f"give at least 3 values (1, 2, 3 … members), got {len(got)}"
        elif cores is not None and max(got) > cores + 1e-9:
            problem = f"an ideal of {max(got):.3g}× is impossible on {cores} usable core(s): a speedup above the core count means the count of workers or the formula is wrong"
        elif not np.allclose(got, expected, rtol=1e-3):
            bad = next(i for i, (g, e) in enumerate(zip(got, expected)) if not math.isclose(g, e, rel_tol=1e-3))
            problem = f"with {bad + 1} member(s) on {n_workers} workers the ideal speedup is not {got[bad]:.3g}"
    return verdict("Exercise 2 (ideal speedup)", speedups, problem, hint, "Odd member counts leave a worker idle at the end.")


def check_samme_alphas(alphas: Any, errors: Sequence[float], learning_rate: float, n_classes: int = 10) -> bool:
    """★★ ``alphas`` must be SAMME's vote weights for the weighted training ``errors``."""
    hint = "alpha = learning_rate * (log((1 - err) / err) + log(n_classes - 1)), one per member"
    problem = None
    if not is_unanswered(alphas):
        got = np.asarray(alphas, dtype=np.float64)
        err = np.asarray(errors, dtype=np.float64)
        expected = learning_rate * (np.log((1 - err) / err) + math.log(n_classes - 1))
        if got.shape != expected.shape:
            problem = f"expected {len(expected)} weights (one per member), got shape {got.shape}"
        elif not np.allclose(got, expected, rtol=1e-6):
            no_k = learning_rate * np.log((1 - err) / err)
            problem = "the weights are not SAMME's" + (" (the log(K - 1) term is missing: that is binary AdaBoost)" if np.allclose(got, no_k) else "")
    return verdict("Exercise 3 (SAMME weights)", alphas, problem, hint, "Members better than chance (1/K) get a positive vote.")
