"""Checks for notebook 10 · TensorFlow Serving."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from labkit.exercises import is_unanswered, verdict

if TYPE_CHECKING:
    from labkit.measure.batching import BatchingSweep

__all__ = ["check_batching_gain", "check_columnar_body", "check_labelled_request"]


def check_columnar_body(body: Any, images: np.ndarray) -> bool:
    """Exercise 1: a columnar ("inputs") predict body for ``images`` (n, 64)."""
    hint = 'columnar format is {"inputs": {"pixels": <list of rows>}} or just {"inputs": <list of rows>}'
    problem = None
    if isinstance(body, dict):
        if "instances" in body:
            problem = '"instances" is the row format; this exercise asks for the columnar one'
        elif "inputs" not in body:
            problem = 'the body needs an "inputs" key'
        else:
            value = body["inputs"]
            value = value.get("pixels") if isinstance(value, dict) else value
            arr = np.asarray(value, dtype=float) if value is not None else np.zeros(0)
            if arr.shape != images.shape:
                problem = f"the pixels have shape {list(arr.shape)}, expected {list(images.shape)}"
            elif not np.allclose(arr, images):
                problem = "the shape is right but the values are not those images"
    elif not is_unanswered(body):
        problem = f"expected a dict (the JSON body), got {type(body).__name__}"
    return verdict("Exercise 1", body, problem, hint, success="That body works unchanged against the real TF Serving.")


def check_batching_gain(answer: float | None, sweep: BatchingSweep) -> bool:
    """Exercise 2: throughput with batching ÷ without, over REST at the highest concurrency measured."""
    top = max(r.concurrency for r in sweep.rows)
    off, on = sweep.select(top, "http", batching=False)[0], sweep.select(top, "http", batching=True)[0]
    expected = on.throughput_per_s / off.throughput_per_s
    problem = None
    if isinstance(answer, (int, float)):
        if abs(answer - 1 / expected) < 0.02 * abs(1 / expected) and abs(expected - 1) > 0.05:
            problem = "that is the inverse: divide the batching throughput by the no-batching one"
        elif abs(answer - expected) > 0.02 * abs(expected):
            problem = f"{answer:.3g} is not the measured gain (about {expected:.3g})"
    elif not is_unanswered(answer):
        problem = f"expected a number, got {type(answer).__name__}"
    return verdict("Exercise 2", answer, problem, "at the highest concurrency: sweep.row(32).throughput_per_s (max_batch_size 32, REST) over sweep.row(1).throughput_per_s", success=f"Batching changed throughput by {expected:.2f}× at concurrency {on.concurrency}.")


def check_labelled_request(request: Any) -> bool:
    """Exercise 3: a gRPC PredictRequest for model "digits", label "stable", 2 images of 64 pixels."""
    hint = 'set request.model_spec.name, request.model_spec.version_label and request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(...))'
    if is_unanswered(request):
        return verdict("Exercise 3", None, None, hint)
    problem = None
    spec = getattr(request, "model_spec", None)
    if spec is None:
        problem = f"expected a predict_pb2.PredictRequest, got {type(request).__name__}"
    elif spec.name != "digits":
        problem = f"model_spec.name is {spec.name!r}, expected 'digits'"
    elif spec.version_label != "stable":
        problem = "route by label: set model_spec.version_label = 'stable' (not a version number)"
    elif spec.HasField("version"):
        problem = "a request names a version number or a label, not both"
    elif "pixels" not in request.inputs:
        problem = "the input tensor must be called 'pixels' (see the metadata)"
    else:
        dims = [d.size for d in request.inputs["pixels"].tensor_shape.dim]
        if dims != [2, 64]:
            problem = f"the pixels tensor has shape {dims}, expected [2, 64]"
    return verdict("Exercise 3", request, problem, hint, success="The server resolves 'stable' to whichever version the config labels so.")
