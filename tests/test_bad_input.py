"""Bad input where a request enters (property-based, hypothesis): always a 4xx with a clear message.

Malformed JSON, wrong types, NaN/inf, oversized and truncated bodies go to the model server
(in process, its real ASGI app and lifespan), the balancer (in process, forwarding to that model
server) and the TorchServe handler (called as TorchServe calls it). Every answer is a 4xx that
says what was wrong; afterwards the server still answers a valid request correctly. The
gateway's own property test runs against a live gateway in tests/test_gateway.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import data
from labkit.apps import balancer as balancer_app
from labkit.apps import model_server, wire
from labkit.models import digit_nets

pytestmark = pytest.mark.unit
X = np.asarray(data.load_digits().x_test[:2], dtype=np.float32)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.just(float("nan")), st.just(float("inf")))
json_values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=6), st.dictionaries(st.text(max_size=5), c, max_size=4)), max_leaves=40)


def _bad_bodies(valid: dict[str, Any], field: str) -> st.SearchStrategy[bytes]:
    """Bytes that are not a valid request: garbage, truncated valid JSON, wrong types, NaN/inf pixels."""
    text = json.dumps(valid)
    truncated = st.integers(1, len(text) - 1).map(lambda n: text[:n].encode())
    garbage = st.binary(max_size=200).filter(lambda b: b.strip() not in (b"",))
    wrong = json_values.map(lambda v: json.dumps({field: v}, allow_nan=True).encode())
    nonfinite = st.sampled_from([float("nan"), float("inf"), float("-inf")]).map(lambda v: json.dumps({**valid, field: [[v] + [0.0] * 63]}, allow_nan=True).encode())
    return st.one_of(truncated, garbage, wrong, nonfinite)


def _is_clear_4xx(resp: httpx.Response) -> bool:
    if not 400 <= resp.status_code < 500:
        return False
    body = resp.json()
    return bool(body.get("detail") or body.get("error"))


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from starlette.testclient import TestClient

    app = model_server.create_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        client.app_ref = app  # type: ignore[attr-defined]
        yield client


def _valid_model_server(client: Any) -> None:
    resp = client.post("/predict", json={"inputs": X.reshape(2, 64).tolist()})
    assert resp.status_code == 200
    assert resp.json()["predictions"] == digit_nets.predict(model_server.load_model(), X).tolist()


@SETTINGS
@given(body=_bad_bodies({"inputs": X.reshape(2, 64).tolist()}, "inputs"))
def test_model_server_answers_bad_bodies_with_a_clear_4xx(server: Any, body: bytes) -> None:
    resp = server.post("/predict", content=body, headers={"content-type": "application/json"})
    if resp.status_code == 200:  # hypothesis built a valid request after all (e.g. integers 0..9)
        arr = np.asarray(json.loads(body)["inputs"], dtype=np.float32)
        assert np.isfinite(arr).all() and arr.size % 64 == 0
        return
    assert _is_clear_4xx(resp), (resp.status_code, resp.text[:200], body[:100])


def test_model_server_oversized_and_still_correct(server: Any) -> None:
    resp = server.post("/predict", content=b"[" * (model_server.MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "limit" in resp.json()["detail"]
    for inputs in ([[True] * 64], [["0.5"] * 64], [[1.0] * 63]):
        assert _is_clear_4xx(server.post("/predict", json={"inputs": inputs}))
    _valid_model_server(server)


@pytest.fixture(scope="module")
def balanced(server: Any) -> Iterator[Any]:
    """The balancer in process, forwarding to the in-process model server through an ASGI transport."""
    from starlette.testclient import TestClient

    bal = balancer_app.Balancer()
    with TestClient(bal, raise_server_exceptions=False) as client:
        bal._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app_ref), base_url="http://replica")
        assert client.put("/_lb/endpoints", json={"endpoints": ["http://replica"]}).status_code == 200
        yield client


@SETTINGS
@given(body=st.one_of(st.binary(max_size=100), json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()), json_values.map(lambda v: json.dumps({"endpoints": v}).encode())))
def test_balancer_endpoints_update_refuses_bad_bodies(balanced: Any, body: bytes) -> None:
    resp = balanced.put("/_lb/endpoints", content=body)
    if resp.status_code == 200:  # a list of http URLs after all: put the real one back
        assert all(e.startswith("http") for e in resp.json()["endpoints"])
    else:
        assert _is_clear_4xx(resp), (resp.status_code, resp.text[:200])
    balanced.put("/_lb/endpoints", json={"endpoints": ["http://replica"]})


@SETTINGS
@given(body=_bad_bodies({"inputs": X.reshape(2, 64).tolist()}, "inputs"))
def test_balancer_passes_the_replicas_4xx_through(balanced: Any, body: bytes) -> None:
    resp = balanced.post("/predict", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200 or _is_clear_4xx(resp), (resp.status_code, resp.text[:200])


def test_balancer_oversized_and_still_correct(balanced: Any) -> None:
    resp = balanced.post("/predict", content=b"x" * (balancer_app.MAX_BODY_BYTES + 1))
    assert resp.status_code == 413 and "limit" in resp.json()["error"]
    _valid_model_server(balanced)


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch
    from test_torchserve import _Context

    from labkit.apps.torchserve_handler import DigitHandler
    from labkit.services import torchserve

    tmp = tmp_path_factory.mktemp("ts")
    model = digit_nets.trained(digit_nets.TrainConfig(**torchserve.VERSIONS["1.0"]), progress=False)
    torch.save(model.state_dict(), tmp / "weights.pt")
    (tmp / "model_config.json").write_text(json.dumps(torchserve._model_config(model)))
    h = DigitHandler()
    h.initialize(_Context(tmp))
    h.reference = model  # type: ignore[attr-defined]
    h.context_dir = tmp  # type: ignore[attr-defined]
    return h


@SETTINGS
@given(body=_bad_bodies(wire.CODECS["torchserve"].encode(X[0]), "pixels"))
def test_torchserve_handler_rejects_bad_items_alone(handler: Any, body: bytes) -> None:
    from test_torchserve import _Context

    ctx = _Context(Path(handler.context_dir))
    good = wire.CODECS["torchserve"].encode(X[1])
    out = handler.handle([{"body": body}, {"body": good}], ctx)  # never raises: the batch survives
    assert out[1]["label"] == int(digit_nets.predict(handler.reference, X[1:2])[0])
    if 0 in ctx.statuses:
        code, phrase = ctx.statuses[0]
        assert code == 400 and phrase and "error" in out[0]
    else:  # accepted: it must have been a real 8×8 image of finite numbers
        pixels = np.asarray(json.loads(body)["pixels"], dtype=np.float32)
        assert pixels.shape == (8, 8) and np.isfinite(pixels).all()
