"""Checks for notebook 07 · Ray."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from labkit.exercises import is_unanswered, verdict

__all__ = ["check_streamed_predictions", "check_zero_copy"]


def check_zero_copy(array: Any, original: np.ndarray) -> bool:
    """★ ``array`` must be ``original``'s data read back from Ray's object store without a copy.

    Ray hands numpy arrays back as read-only views on shared memory: that flag is the proof.
    """
    hint = "convert the tensor with .numpy(), ray.put the array, and ray.get the reference (no torch.tensor around it)"
    problem = None
    if not is_unanswered(array):
        if not isinstance(array, np.ndarray):
            problem = f"expected a numpy array back from ray.get, got {type(array).__name__} (a torch tensor is pickled: a copy)"
        elif array.shape != original.shape or not np.array_equal(array, original):
            problem = f"the array differs from the original (shape {array.shape} vs {original.shape})"
        elif array.flags.writeable:
            problem = "the array is writable, so it is a copy: zero-copy arrays from the object store are read-only"
    return verdict("Exercise 1 (zero-copy numpy)", array, problem, hint, "Every task that gets this ref maps the same memory.")


def check_streamed_predictions(order: Any, preds: Any, expected: np.ndarray, n_shards: int) -> bool:
    """★★ ``order`` lists each shard index once, in completion order; ``preds`` the predictions in input order."""
    hint = "loop while refs remain: done, refs = ray.wait(refs, num_returns=1); map each done ref back to its shard index"
    problem = None
    if not is_unanswered(order) and not is_unanswered(preds):
        got_order = [int(i) for i in order] if isinstance(order, (Sequence, np.ndarray)) else None
        got = np.asarray(preds)
        if got_order is None or sorted(got_order) != list(range(n_shards)):
            problem = f"order must hold each shard index 0..{n_shards - 1} exactly once, got {order!r}"
        elif got.shape != expected.shape:
            problem = f"expected {expected.shape[0]} predictions, got shape {got.shape}"
        elif (wrong := int((got != expected).sum())) > 0:
            problem = f"{wrong} predictions differ from the sequential ones: put each shard's result back at its own offset"
    answer = None if is_unanswered(order) or is_unanswered(preds) else (order, preds)
    return verdict("Exercise 2 (streaming with ray.wait)", answer, problem, hint, "Results arrived as they finished, none lost.")
