"""The wire codecs: every client body decodes, on the server side, to exactly the digits sent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from labkit import data
from labkit.apps import wire
from labkit.errors import BadInput


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(wire.CODECS))
def test_every_codec_round_trips_exactly_through_json(name: str) -> None:
    codec = wire.CODECS[name]
    x = data.load_digits().x_test[:1 if name == "torchserve" else 5]
    body = json.loads(json.dumps(codec.encode(x)))  # every body is plain JSON
    back = codec.decode(body)
    assert back.shape == (len(x), 1, 8, 8) and back.dtype == np.float32
    assert np.array_equal(back, x), "the server must see exactly the digits that were sent"
    odd = np.full((1, 1, 8, 8), 0.1, np.float32)  # not a multiple of 1/16: float32 must survive too
    assert np.array_equal(codec.decode(json.loads(json.dumps(codec.encode(odd)))), odd)


@pytest.mark.unit
def test_labels_read_each_servers_answer() -> None:
    c = wire.CODECS
    assert c["gateway"].labels({"model": "cnn", "pred": [3, 4]}) == [3, 4]
    assert c["ray-serve"].label({"pred": [7]}) == 7
    assert c["model-server"].labels({"predictions": [1, 2], "replica": "x"}) == [1, 2]
    assert c["torchserve"].label({"label": 5, "probs": [0.1] * 10}) == 5
    tf = c["tfserving"]
    assert tf.label({"predictions": [{"classes": 7, "probabilities": [0.0] * 10}]}) == 7
    assert tf.label({"predictions": [[0.1, 0.9] + [0.0] * 8]}) == 1
    assert wire.GatewayCodec("mlp", timeout_s=3.0).encode(np.zeros(64))["model"] == "mlp"
    assert wire.ModelServerCodec(tta=4).encode(np.zeros(64))["tta"] == 4


@pytest.mark.unit
def test_bad_bodies_fail_in_one_clear_line() -> None:
    ts = wire.CODECS["torchserve"]
    with pytest.raises(BadInput, match=r'expected a JSON object \{"pixels": 8x8 list\}'):
        ts.decode({"image": []})
    with pytest.raises(BadInput, match="pixels must have shape"):
        ts.decode({"pixels": [1, 2, 3]})
    with pytest.raises(BadInput, match="must be numbers"):
        wire.CODECS["ray-serve"].decode({"x": [["a"] * 64]})
    with pytest.raises(BadInput, match="64 pixels each"):
        wire.CODECS["model-server"].decode({"inputs": [[0.0] * 63]})
    with pytest.raises(BadInput, match="one digit per request"):
        ts.encode(np.zeros((2, 64)))
