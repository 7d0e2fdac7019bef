"""NVIDIA Triton (nvidia-pytriton, in .venv-triton): request bodies, metrics counters (unit); one real
server for the module (service): health, answers equal the in-process model, the dynamic batcher
formed batches (executions < requests), bad input → 4xx with Triton's message, nothing left behind."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from conftest import need

from labkit import data, needs
from labkit.measure import load
from labkit.measure.batching import Setting
from labkit.models import wide
from labkit.runtime import process
from labkit.services import triton

WIDTH = 1024  # small: these tests check behaviour, the benchmark measures the 8192-wide model
BATCHED = Setting(32, 5.0)
UNBATCHED = Setting(1)
METRICS = """# HELP nv_inference_request_success Number of successful inference requests
nv_inference_request_success{model="wide_b32_d5000",version="1"} 40
nv_inference_count{model="wide_b32_d5000",version="1"} 40
nv_inference_exec_count{model="wide_b32_d5000",version="1"} 9
nv_inference_exec_count{model="wide_b1_d0",version="1"} 3
"""


@pytest.mark.unit
def test_request_body_and_names() -> None:
    body = triton.request_body(np.zeros((2, 1, 8, 8)))
    (inp,) = body["inputs"]
    assert inp["name"] == "pixels" and inp["shape"] == [2, 64] and inp["datatype"] == "FP32" and len(inp["data"]) == 128
    assert triton.model_name(BATCHED) == "wide_b32_d5000" and triton.model_name(UNBATCHED) == "wide_b1_d0"


@pytest.mark.unit
def test_counters_read_the_nv_metrics() -> None:
    c = triton.counters(triton.parse_metrics(METRICS), "wide_b32_d5000")
    assert (c.success, c.inferences, c.executions) == (40, 40, 9)
    assert c.mean_batch == pytest.approx(40 / 9)


@pytest.mark.unit
def test_missing_env_is_reported_by_needs() -> None:
    st = needs.status("triton")
    assert st.ok == (triton.python() is not None)
    if not st.ok:
        assert "make triton" in needs.how_to_get("triton")


# ---------------------------------------------------------------- service -------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[triton.Triton, dict[str, Any]]]:
    need(triton.python() is not None, f"NVIDIA Triton is not set up: {triton.INSTALL_HINT}")
    x = data.load_digits().x_test[:64]
    tr = triton.start([UNBATCHED, BATCHED], width=WIDTH)
    try:
        yield tr, {"x": x, "labels": wide.wide_trained(WIDTH).predict(x)}
    finally:
        tree = tr.process.tree() if tr.process else []
        tr.stop()
        psutil.wait_procs(tree, timeout=5)
        assert not process.alive([p.pid for p in tree]), "Triton processes left after stop()"


@pytest.mark.service
def test_health_and_model_metadata(server: tuple[triton.Triton, dict[str, Any]]) -> None:
    tr, _ = server
    assert httpx.get(f"{tr.url}/v2/health/live", timeout=10).status_code == 200
    assert httpx.get(f"{tr.url}/v2/health/ready", timeout=10).status_code == 200
    meta = httpx.get(f"{tr.url}/v2/models/{triton.model_name(BATCHED)}", timeout=10).json()
    assert meta["inputs"][0]["name"] == "pixels" and meta["inputs"][0]["shape"] == [-1, 64]
    config = httpx.get(f"{tr.url}/v2/models/{triton.model_name(BATCHED)}/config", timeout=10).json()
    assert config["max_batch_size"] == 32 and "dynamic_batching" in config


@pytest.mark.service
def test_answers_equal_the_in_process_model(server: tuple[triton.Triton, dict[str, Any]]) -> None:
    tr, ref = server
    assert tr.predict(triton.model_name(BATCHED), ref["x"][:20]) == list(ref["labels"][:20])  # one request, a batch of 20
    singles = [tr.predict(triton.model_name(UNBATCHED), xi[None])[0] for xi in ref["x"][:5]]
    assert singles == list(ref["labels"][:5])


@pytest.mark.service
def test_dynamic_batcher_forms_batches(server: tuple[triton.Triton, dict[str, Any]]) -> None:
    tr, ref = server
    bodies = [triton.request_body(xi[None]) for xi in ref["x"]]
    for setting in (UNBATCHED, BATCHED):
        name = triton.model_name(setting)
        before = tr.counters(name)
        res = load.closed_loop(tr.infer_url(name), lambda i: bodies[i % len(bodies)], concurrency=16, n_requests=96)
        assert res.errors == 0, res.first_error()
        after = tr.counters(name)
        requests, executions = after.inferences - before.inferences, after.executions - before.executions
        assert requests == 96
        if setting.batching:
            assert executions < requests, f"no batch formed: {executions} executions for {requests} requests"
        else:
            assert executions == requests


@pytest.mark.service
def test_bad_input_is_a_4xx_with_a_reason(server: tuple[triton.Triton, dict[str, Any]]) -> None:
    tr, ref = server
    url = tr.infer_url(triton.model_name(BATCHED))
    wrong_shape = {"inputs": [{"name": "pixels", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    r = httpx.post(url, json=wrong_shape, timeout=30)
    assert r.status_code == 400 and "unexpected shape" in r.json()["error"]
    wrong_name = {"inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    r = httpx.post(url, json=wrong_name, timeout=30)
    assert 400 <= r.status_code < 500 and "image" in r.json()["error"]
    r = httpx.post(tr.infer_url("nope"), json=triton.request_body(ref["x"][:1]), timeout=30)
    assert r.status_code == 404 and "unknown model" in r.json()["error"].lower()
    assert tr.predict(triton.model_name(BATCHED), ref["x"][:1]) == [int(ref["labels"][0])]  # still serving


@pytest.mark.unit
def test_exercise_checks_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.exercises import ExerciseFailed, ex12

    x = np.arange(3 * 64, dtype=np.float32).reshape(3, 1, 8, 8) / 100
    assert ex12.check_request_body(None, x) is False
    assert "not done yet" in capsys.readouterr().out
    assert ex12.check_request_body(triton.request_body(x), x) is True
    with pytest.raises(ExerciseFailed, match="batch dimension"):
        ex12.check_request_body({"inputs": [{"name": "pixels", "shape": [192], "datatype": "FP32", "data": x.ravel().tolist()}]}, x)
    assert ex12.check_mean_batch(40 / 9, METRICS, "wide_b32_d5000") is True
    with pytest.raises(ExerciseFailed, match="inverse"):
        ex12.check_mean_batch(9 / 40, METRICS, "wide_b32_d5000")
