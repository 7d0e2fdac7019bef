"""Checks for notebook 12 (NVIDIA Triton): a KServe v2 request body by hand, the mean batch from the metrics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from labkit.exercises import verdict

__all__ = ["check_mean_batch", "check_request_body"]


def check_request_body(answer: Any, images: Any) -> bool:
    """★ A KServe v2 inference request for ``images``: one FP32 input ``pixels`` of shape [N, 64]."""
    x = np.asarray(images, dtype=np.float32).reshape(-1, 64)
    problem = None
    if not isinstance(answer, Mapping) or not isinstance(answer.get("inputs"), list) or len(answer["inputs"]) != 1:
        problem = 'expected a dict {"inputs": [one input]}'
    else:
        inp = answer["inputs"][0]
        if not isinstance(inp, Mapping):
            problem = "the input must be a dict with name, shape, datatype and data"
        elif inp.get("name") != "pixels":
            problem = f"the model's input is called 'pixels', not {inp.get('name')!r}"
        elif list(inp.get("shape", [])) != [len(x), 64]:
            problem = f"shape {inp.get('shape')} should be [{len(x)}, 64]: the batch dimension first, then the 64 pixels"
        elif inp.get("datatype") != "FP32":
            problem = f"datatype {inp.get('datatype')!r} should be 'FP32' (the model's input is float32)"
        elif len(inp.get("data", [])) != x.size or not np.allclose(np.asarray(inp["data"], dtype=np.float32).ravel(), x.ravel()):
            problem = "data should hold the pixels of every image, flattened in row-major order"
    return verdict(
        "Exercise 1 (a KServe v2 request)",
        answer,
        problem,
        '{"inputs": [{"name": "pixels", "shape": [N, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}',
        success="Triton would accept it (send it to /v2/models/NAME/infer).",
    )


def _counter(text: str, name: str, model: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def check_mean_batch(answer: Any, metrics_text: str, model: str) -> bool:
    """★★ ``nv_inference_count`` / ``nv_inference_exec_count`` of ``model``, read by hand from ``metrics_text``."""
    executions = _counter(metrics_text, "nv_inference_exec_count", model)
    want = _counter(metrics_text, "nv_inference_count", model) / executions if executions else math.nan
    problem = None
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        problem = f"expected a number (items per model execution), got {type(answer).__name__}"
    elif math.isnan(want):
        problem = f"metrics_text has no executions of {model!r}: run the sweep first"
    elif not math.isclose(float(answer), want, rel_tol=1e-6):
        if math.isclose(float(answer), 1 / want, rel_tol=1e-6):
            problem = f"{answer:.3f} is the inverse: divide inferences by executions"
        else:
            problem = f"{answer:.3f} is not what the counters give ({want:.3f}); did you take the lines of model {model!r} only?"
    return verdict(
        "Exercise 2 (mean batch from the metrics)",
        answer,
        problem,
        f'keep the lines starting with nv_inference_count{{ and nv_inference_exec_count{{ that contain model="{model}"; the number is after the last space',
        success=f"Triton ran {want:.2f} items per model execution: every request this model answered so far (each load of the sweep, its warm-up, the checks), so not the mean batch of one concurrency.",
    )
