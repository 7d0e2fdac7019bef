"""The JSON each server of the lab speaks, one codec per server, all on one small base.

A client ``encode``s digits into a request body and reads the classes out of the answer with
``labels``; a server ``decode``s a body back into digits (float32, shaped (N, 1, 8, 8)) and fails
with one clear line (``BadInput``, a ``ValueError``) on anything else. Floats go into JSON as they
are: a float32 survives the round trip exactly, so a server sees exactly the digits that were sent.

    body = wire.CODECS["torchserve"].encode(x[0])          # {"pixels": 8×8 nested lists}
    label = wire.CODECS["torchserve"].label(resp.json())    # its "label"

===============  ==================================================  ==============================
codec            request body                                        answer read by ``labels``
===============  ==================================================  ==============================
gateway          ``{"images": [[64 floats], ...], "model": "cnn"}``  ``{"pred": [k, ...]}``
ray-serve        ``{"x": N×1×8×8 nested lists}``                     ``{"pred": [k, ...]}``
model-server     ``{"inputs": [[64 floats], ...], "tta": 1}``        ``{"predictions": [k, ...]}``
torchserve       ``{"pixels": 8×8 nested lists}`` (one digit)        ``{"label": k, ...}``
tfserving        ``{"instances": [[64 floats], ...]}``               ``{"predictions": [...]}``
===============  ==================================================  ==============================

Used by the clients and servers of 06 (gateway), 07 and 14 (Ray Serve), 08 (model server),
09 (TorchServe's handler), 10 (TF Serving's REST API), the capstone (14) and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from labkit.errors import BadInput

__all__ = [
    "CODECS",
    "Codec",
    "GatewayCodec",
    "ModelServerCodec",
    "RayServeCodec",
    "TFServingCodec",
    "TorchServeCodec",
    "digits",
]

PIXELS = 64
IMAGE_SHAPE = (8, 8)


def digits(x: Any) -> np.ndarray:
    """One digit or a batch (any of 64, 8×8, 1×8×8 per digit) as float32 shaped (N, 1, 8, 8)."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.size == 0 or arr.size % PIXELS:
        raise BadInput(f"digits have {PIXELS} pixels each; got an array of shape {list(arr.shape)}")
    return arr.reshape(-1, 1, *IMAGE_SHAPE)


def _rows(x: Any) -> list[list[float]]:
    return digits(x).reshape(-1, PIXELS).tolist()


def _field(body: Any, key: str, shape_hint: str) -> Any:
    if not isinstance(body, Mapping) or key not in body:
        raise BadInput(f'expected a JSON object {{"{key}": {shape_hint}}} with Content-Type: application/json')
    return body[key]


def _numbers(value: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise BadInput(f"{what} must be numbers: {exc}") from None


class Codec:
    """A server's format: ``encode`` (client) → body → ``decode`` (server); answer → ``labels`` (client)."""

    name = "codec"

    def encode(self, x: Any) -> dict[str, Any]:
        """The request body for one digit or a batch."""
        raise NotImplementedError

    def decode(self, body: Any) -> np.ndarray:
        """The digits of a request body, float32 (N, 1, 8, 8); ``BadInput`` saying what is wrong."""
        raise NotImplementedError

    def labels(self, answer: Any) -> list[int]:
        """The classes in a server's answer, one per digit sent."""
        raise NotImplementedError

    def label(self, answer: Any) -> int:
        """The class of a one-digit request's answer."""
        return self.labels(answer)[0]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@dataclass(frozen=True, repr=False)
class GatewayCodec(Codec):
    """The FastAPI gateway of 06: rows of 64 pixels, which model answers, how long to wait (optional)."""

    model: str = "cnn"
    timeout_s: float | None = None
    name = "gateway"

    def encode(self, x: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"images": _rows(x), "model": self.model}
        if self.timeout_s is not None:
            body["timeout_s"] = self.timeout_s
        return body

    def decode(self, body: Any) -> np.ndarray:
        return digits(_numbers(_field(body, "images", "[[64 floats], ...]"), "images"))

    def labels(self, answer: Any) -> list[int]:
        return [int(k) for k in answer["pred"]]


@dataclass(frozen=True, repr=False)
class RayServeCodec(Codec):
    """The Ray Serve deployments of 07 and 14: the batch as nested (N, 1, 8, 8) lists."""

    name = "ray-serve"

    def encode(self, x: Any) -> dict[str, Any]:
        return {"x": digits(x).tolist()}

    def decode(self, body: Any) -> np.ndarray:
        return digits(_numbers(_field(body, "x", "N×1×8×8 nested lists"), "x"))

    def labels(self, answer: Any) -> list[int]:
        return [int(k) for k in answer["pred"]]


@dataclass(frozen=True, repr=False)
class ModelServerCodec(Codec):
    """The model server behind the Kubernetes Service of 08: rows of 64 pixels, ``tta`` shifted copies."""

    tta: int = 1
    name = "model-server"

    def encode(self, x: Any) -> dict[str, Any]:
        return {"inputs": _rows(x), "tta": self.tta}

    def decode(self, body: Any) -> np.ndarray:
        return digits(_numbers(_field(body, "inputs", "[[64 floats], ...]"), "inputs"))

    def labels(self, answer: Any) -> list[int]:
        return [int(k) for k in answer["predictions"]]


@dataclass(frozen=True, repr=False)
class TorchServeCodec(Codec):
    """The lab's TorchServe handler (09): one 8×8 digit per request; the answer carries its ``label``."""

    name = "torchserve"

    def encode(self, x: Any) -> dict[str, Any]:
        one = digits(x)
        if len(one) != 1:
            raise BadInput(f"TorchServe's handler takes one digit per request, got {len(one)}")
        return {"pixels": one.reshape(IMAGE_SHAPE).tolist()}

    def decode(self, body: Any) -> np.ndarray:
        pixels = _numbers(_field(body, "pixels", "8x8 list"), "pixels")
        if tuple(pixels.shape) != IMAGE_SHAPE:
            raise BadInput(f"pixels must have shape {list(IMAGE_SHAPE)}, got {list(pixels.shape)}")
        return pixels.reshape(1, 1, *IMAGE_SHAPE)

    def labels(self, answer: Any) -> list[int]:
        return [int(answer["label"])]


@dataclass(frozen=True, repr=False)
class TFServingCodec(Codec):
    """TF Serving's REST predict API (row format, 10): ``instances`` in, ``predictions`` out.

    A prediction is ``{"classes": k, "probabilities": [...]}`` for a model with several outputs, or
    just the probabilities for one with a single output.
    """

    name = "tfserving"

    def encode(self, x: Any) -> dict[str, Any]:
        return {"instances": _rows(x)}

    def decode(self, body: Any) -> np.ndarray:
        return digits(_numbers(_field(body, "instances", "[[64 floats], ...]"), "instances"))

    def labels(self, answer: Any) -> list[int]:
        return [int(p["classes"]) if isinstance(p, Mapping) else int(np.argmax(p)) for p in answer["predictions"]]


CODECS: dict[str, Codec] = {c.name: c for c in (GatewayCodec(), RayServeCodec(), ModelServerCodec(), TorchServeCodec(), TFServingCodec())}
