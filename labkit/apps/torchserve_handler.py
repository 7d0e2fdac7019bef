"""A TorchServe custom handler for the lab's digit CNN: preprocess → inference → postprocess.

TorchServe copies this file into the model archive (``torch-model-archiver --handler``) and runs
it inside each Python worker. The frontend (Java) collects up to ``batch_size`` requests or waits
``max_batch_delay`` ms, whichever comes first, and calls ``handle(data, context)`` once with the
whole batch: ``data`` holds one entry per HTTP/gRPC request.

A request body is JSON ``{"pixels": <8×8 nested list of floats in [0, 1]>}``. Every answer says
which ``version`` served it and the ``batch_size`` of the batch it was part of, so a client can
see the batches the server formed. A bad request gets HTTP 400 with a reason; the other requests
of its batch are still answered.

Used in 09 (shown there) and 14.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

__all__ = ["DigitHandler"]

IMAGE_SHAPE = (8, 8)


class DigitHandler:
    """Serve a digit model (CNN or MLP): a batch of JSON requests in, one JSON answer per request out."""

    def __init__(self) -> None:
        self.model: torch.nn.Module | None = None
        self.dtype = torch.float32  # the model's parameter dtype: inputs are cast to it
        self.version = "?"
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """Load the weights from the archive (once per worker process)."""
        from labkit.models.digit_nets import (  # the server's Python env has labkit installed
            DigitCNN,
            DigitMLP,
        )

        from labkit import config

        torch.set_num_threads(config.torchserve_threads())
        model_dir = context.system_properties["model_dir"]
        manifest = context.manifest["model"]
        with open(os.path.join(model_dir, "model_config.json")) as f:
            cfg = json.load(f)
        if cfg["arch"] == "cnn":
            model: torch.nn.Module = DigitCNN(channels=cfg["channels"], hidden=cfg["hidden"])
        else:
            model = DigitMLP(hidden=tuple(cfg["hidden"]))
        weights = os.path.join(model_dir, manifest["serializedFile"])
        self.dtype = getattr(torch, cfg.get("dtype", "float32"))  # e.g. bfloat16 weights stay bfloat16
        model = model.to(self.dtype)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model = model.eval()
        self.version = manifest.get("modelVersion", "?")
        self.initialized = True

    def preprocess(self, data: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[int, str]]:
        """Decode each request into an 8×8 image; bad ones are set aside with the reason."""
        from labkit.apps.wire import TorchServeCodec

        codec = TorchServeCodec()
        images, errors = [], {}
        for i, row in enumerate(data):
            body = row.get("body", row.get("data"))  # REST puts the JSON in "body", gRPC in "data"
            try:
                if isinstance(body, (bytes, bytearray, str)):
                    body = json.loads(body)
                pixels = (body or {}).get("pixels") if isinstance(body, dict) else None
                if _has_non_number(pixels):
                    raise TypeError("pixels must be numbers, not strings or booleans")
                image = torch.from_numpy(codec.decode(body))
                if not torch.isfinite(image).all():
                    raise ValueError("pixels must be finite numbers: NaN or infinity found")
                images.append(image)
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                errors[i] = str(exc)[:200]
        x = torch.cat(images) if images else torch.zeros(0, 1, *IMAGE_SHAPE)
        return x, errors

    def inference(self, x: torch.Tensor) -> torch.Tensor:
        """One forward pass for the whole batch."""
        assert self.model is not None
        with torch.inference_mode():
            return self.model(x.to(self.dtype)).float()

    def postprocess(self, logits: torch.Tensor, n_requests: int, errors: dict[int, str]) -> list[Any]:
        """One answer per request, in request order: label, probabilities, version, batch size."""
        probs = torch.softmax(logits, dim=1)
        out: list[Any] = []
        good = iter(range(len(logits)))
        for i in range(n_requests):
            if i in errors:
                out.append({"error": errors[i]})
                continue
            j = next(good)
            out.append(
                {
                    "label": int(probs[j].argmax()),
                    "probs": [round(float(p), 6) for p in probs[j]],
                    "version": self.version,
                    "batch_size": n_requests,
                }
            )
        return out

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """TorchServe's entry point: called once per batch."""
        x, errors = self.preprocess(data)
        logits = self.inference(x)
        out = self.postprocess(logits, len(data), errors)
        for i, reason in errors.items():
            context.set_response_status(code=400, phrase=reason, idx=i)
        return out


def _has_non_number(xs: Any, limit: int = 4096) -> bool:
    """True if a nested list holds a string or a boolean (NumPy would turn "1" and True into 1.0)."""
    stack, n = [xs], 0
    while stack and n < limit:
        x = stack.pop()
        n += 1
        if isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, (str, bool)):
            return True
    return False
