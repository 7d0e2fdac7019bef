"""labkit's TF-Serving-API server against TF Serving's documented REST and gRPC behaviour."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labkit import data
from labkit.errors import ServiceUnavailable
from labkit.models import savedmodels
from labkit.runtime import process
from labkit.services import tfserving

pytestmark = pytest.mark.service
X = np.asarray(data.load_digits().x_test).reshape(-1, 64)
Y = data.load_digits().y_test


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return savedmodels.export_versions(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def tfs(model_dir: Path) -> Iterator[tfserving.TFServingHandle]:
    with tfserving.start(model_base_path=model_dir, poll_s=0.3, enable_batching=True, max_batch_size=16, batch_timeout_micros=20000) as handle:
        yield handle


@pytest.fixture(scope="module")
def tfs_config(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tfserving.TFServingHandle]:
    cfg = tmp_path_factory.mktemp("cfg") / "models.config"
    cfg.write_text(
        f"""model_config_list {{
  config {{
    name: "digits"
    base_path: "{model_dir}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
"""
    )
    with tfserving.start(model_config_file=cfg) as handle:
        yield handle


def test_status_and_metadata(tfs: tfserving.TFServingHandle) -> None:
    r = httpx.get(f"{tfs.url}/v1/models/digits")
    assert r.status_code == 200
    assert r.json() == {"model_version_status": [{"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    meta = httpx.get(f"{tfs.url}/v1/models/digits/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert meta["model_spec"]["version"] == "2"
    assert sig["inputs"]["pixels"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["pixels"]["tensor_shape"]["dim"]] == ["-1", "64"]
    assert set(sig["outputs"]) == {"probabilities", "classes"}


def test_row_and_columnar_predict_agree_and_are_accurate(tfs: tfserving.TFServingHandle) -> None:
    rows = httpx.post(tfs.predict_url(), json={"instances": X[:200].tolist()}).json()["predictions"]
    cols = httpx.post(tfs.predict_url(), json={"inputs": X[:200].tolist()}).json()["outputs"]
    classes = np.array([p["classes"] for p in rows])
    assert np.array_equal(classes, np.array(cols["classes"]))
    np.testing.assert_allclose(np.array([p["probabilities"] for p in rows]), np.array(cols["probabilities"]), rtol=1e-5, atol=1e-6)
    assert (classes == Y[:200]).mean() > 0.9
    named = httpx.post(tfs.predict_url(), json={"signature_name": "serving_default", "instances": [{"pixels": X[0].tolist()}]})
    assert named.status_code == 200 and named.json()["predictions"][0]["classes"] == classes[0]


@pytest.mark.parametrize(
    "path,body,status,message",
    [
        ("/v1/models/nope:predict", {"instances": [[0.0] * 64]}, 404, "Servable not found for request: Latest(nope)"),
        ("/v1/models/digits/versions/7:predict", {"instances": [[0.0] * 64]}, 404, "Servable not found for request: Specific(digits, 7)"),
        ("/v1/models/digits/labels/stable:predict", {"instances": [[0.0] * 64]}, 400, "Unrecognized servable version label: stable"),
        ("/v1/models/digits:predict", {"rows": []}, 400, "Missing 'inputs' or 'instances' key"),
        ("/v1/models/digits:predict", {"instances": [[0.0] * 64], "inputs": [[0.0] * 64]}, 400, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist"),
        ("/v1/models/digits:predict", {"instances": [[0.0] * 10]}, 400, "incompatible with the signature's shape [?,64]"),
        ("/v1/models/digits:predict", {"instances": [["a"] * 64]}, 400, 'JSON Value: "a" Type: String is not of expected type: float'),
        ("/v1/models/digits:predict", {"inputs": [["a"] * 64]}, 400, 'JSON Value: "a" Type: String is not of expected type: float'),
        ("/v1/models/digits:predict", {"inputs": [[True] * 64]}, 400, "JSON Value: true Type: True is not of expected type: float"),
        ("/v1/models/digits:predict", {"instances": [[0.0] * 64, [0.0] * 3]}, 400, "Expecting tensor size: 64 but got: 3"),
        ("/v1/models/digits:predict", {"inputs": [[0.0] * 64, [0.0] * 3]}, 400, "Encountered list at unexpected size: 3 at level: 1 expected size: 64"),
        ("/v1/models/digits:predict", {"instances": []}, 400, "No values in 'instances' array"),
        ("/v1/models/digits:predict", {"signature_name": "nope", "instances": [[0.0] * 64]}, 400, 'Serving signature name: "nope" not found in signature def'),
        ("/v1/models/digits:predict", [1, 2, 3], 400, "JSON Value: [1, 2, 3] Is not object"),
        ("/v1/models/digits:classify", {"examples": [{"x": 1.0}]}, 400, "No classification inputs found in SignatureDef: "),
        ("/v1/models/digits:regress", {"examples": [{"x": 1.0}]}, 400, "Expected one output Tensor."),
    ],
)
def test_rest_errors(tfs: tfserving.TFServingHandle, path: str, body: object, status: int, message: str) -> None:
    r = httpx.post(f"{tfs.url}{path}", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_not_json_and_wrong_method(tfs: tfserving.TFServingHandle) -> None:
    r = httpx.post(tfs.predict_url(), content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("JSON Parse error")
    assert httpx.get(tfs.predict_url()).status_code == 400  # GET with a verb: Malformed request
    assert httpx.get(f"{tfs.url}/v1/models/digits/versions/9").status_code == 404
    # after all those errors the server still serves
    assert httpx.post(tfs.predict_url(), json={"instances": [X[0].tolist()]}).status_code == 200


GRPC_CLIENT = """
import json, sys
import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

target, x = sys.argv[1], np.asarray(json.loads(sys.stdin.read()), np.float32)
out = {}
with grpc.insecure_channel(target) as ch:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "digits"
    req.inputs["pixels"].CopyFrom(tf.make_tensor_proto(x))
    resp = stub.Predict(req, timeout=30)
    out["version"] = resp.model_spec.version.value
    out["classes"] = tf.make_ndarray(resp.outputs["classes"]).tolist()
    out["probabilities"] = tf.make_ndarray(resp.outputs["probabilities"]).tolist()
    status = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "digits"}), timeout=10)
    out["status"] = [(s.version, get_model_status_pb2.ModelVersionStatus.State.Name(s.state)) for s in status.model_version_status]
    meta = stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "digits"}, metadata_field=["signature_def"]), timeout=10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    meta.metadata["signature_def"].Unpack(sigs)
    out["inputs"] = sorted(sigs.signature_def["serving_default"].inputs)
    errors = []
    req.model_spec.name = "nope"
    try:
        stub.Predict(req, timeout=10)
    except grpc.RpcError as exc:
        errors.append(exc.code().name)
    req.model_spec.name = "digits"
    req.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 3), np.float32)))
    try:
        stub.Predict(req, timeout=10)
    except grpc.RpcError as exc:
        errors.append(exc.code().name)
    req.model_spec.signature_name = "nope"
    try:
        stub.Predict(req, timeout=10)
    except grpc.RpcError as exc:
        errors.append(exc.code().name + ": " + exc.details())
    req.model_spec.signature_name = ""
    req.model_spec.version_label = "nope"
    try:
        stub.Predict(req, timeout=10)
    except grpc.RpcError as exc:
        errors.append(exc.code().name + ": " + exc.details())
    out["errors"] = errors
print(json.dumps(out))
"""


def test_grpc_with_the_official_stubs(tfs: tfserving.TFServingHandle) -> None:
    """The stock TF Serving client (run in its own process: the test process stays TensorFlow-free)."""
    import json
    import subprocess
    import sys

    rest = httpx.post(tfs.predict_url(), json={"inputs": X[:5].tolist()}).json()["outputs"]
    run = subprocess.run(
        [sys.executable, "-c", GRPC_CLIENT, str(tfs.grpc_target)],
        input=json.dumps(X[:5].tolist()),
        capture_output=True,
        text=True,
        timeout=180,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["version"] == 2
    assert got["classes"] == rest["classes"]
    np.testing.assert_allclose(np.array(got["probabilities"]), np.array(rest["probabilities"]), rtol=1e-5, atol=1e-6)
    assert got["status"] == [[2, "AVAILABLE"]]
    assert got["inputs"] == ["pixels"]
    # upstream predict_util.cc: unknown signature is FAILED_PRECONDITION; server_core.cc: unknown label INVALID_ARGUMENT
    assert got["errors"] == ["NOT_FOUND", "INVALID_ARGUMENT", 'FAILED_PRECONDITION: Serving signature key "nope" not found.', "INVALID_ARGUMENT: Unrecognized servable version label: nope"]


def test_server_side_batching_merges_concurrent_requests(tfs: tfserving.TFServingHandle) -> None:
    def one(i: int) -> int:
        return int(httpx.post(tfs.predict_url(), json={"instances": [X[i].tolist()]}, timeout=30).json()["predictions"][0]["classes"])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(64)))
    assert np.mean(np.array(got) == Y[:64]) > 0.85
    metrics = httpx.get(f"{tfs.url}/monitoring/prometheus/metrics").text
    sizes = [int(s) for s in __import__("re").findall(r'processed_batch_size\{model="digits",size="(\d+)"\}', metrics)]
    assert max(sizes) > 1, f"no batch larger than one request was formed: {metrics}"
    assert max(sizes) <= 16


def test_new_version_is_served_without_restart(tfs: tfserving.TFServingHandle, model_dir: Path) -> None:
    try:
        shutil.copytree(model_dir / "1", model_dir / "5")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = httpx.get(f"{tfs.url}/v1/models/digits").json()["model_version_status"]
            if [s["version"] for s in status if s["state"] == "AVAILABLE"] == ["5"]:
                break
            time.sleep(0.2)
        assert [s["version"] for s in status if s["state"] == "AVAILABLE"] == ["5"], status
        assert {"version": "2", "state": "END", "status": {"error_code": "OK", "error_message": ""}} in status, "an unloaded version stays listed as END"
        assert httpx.post(tfs.predict_url(), json={"instances": [X[0].tolist()]}).status_code == 200
    finally:
        shutil.rmtree(model_dir / "5", ignore_errors=True)


def test_version_policy_and_labels_from_a_model_config_file(tfs_config: tfserving.TFServingHandle) -> None:
    status = httpx.get(f"{tfs_config.url}/v1/models/digits").json()["model_version_status"]
    assert [s["version"] for s in status] == ["2", "1"]
    one = httpx.post(tfs_config.predict_url(version=1), json={"inputs": X[:100].tolist()}).json()["outputs"]["probabilities"]
    stable = httpx.post(tfs_config.predict_url(label="stable"), json={"inputs": X[:100].tolist()}).json()["outputs"]["probabilities"]
    canary = httpx.post(tfs_config.predict_url(label="canary"), json={"inputs": X[:100].tolist()}).json()["outputs"]["probabilities"]
    assert np.allclose(one, stable) and not np.allclose(one, canary), "labels must route to their versions"
    # get_model_status_impl.cc consults no label: a label's status is the whole model's, even an unknown label
    for label in ("canary", "nope"):
        assert [s["version"] for s in httpx.get(f"{tfs_config.url}/v1/models/digits/labels/{label}").json()["model_version_status"]] == ["2", "1"]


def test_sigkill_is_detected_by_the_handle(model_dir: Path) -> None:
    handle = tfserving.start(model_base_path=model_dir)
    pid = handle.pid
    try:
        handle.process.signal(signal.SIGKILL)  # type: ignore[union-attr]
        process.wait_until(lambda: not handle.alive(), 10, "server death noticed")
        with pytest.raises(ServiceUnavailable, match="exited with code -9"):
            handle.check_alive()
    finally:
        handle.stop()
    assert pid not in [r["pid"] for r in process.started_here()]


@pytest.mark.parametrize("threads", [1, 2])
def test_batcher_never_exceeds_max_batch_size_and_answers_every_request(threads: int) -> None:
    """In-process batcher (no TensorFlow): rows per call ≤ max_batch_size, each caller gets its own rows back."""
    import threading
    import time as _time

    import numpy as np

    from labkit.apps.tfserving.registry import BatchingParameters, BatchStats, _Batcher

    calls: list[int] = []
    lock = threading.Lock()

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with lock:
            calls.append(len(inputs["x"]))
        _time.sleep(0.005)  # a model call long enough for requests to queue behind it
        return {"y": inputs["x"] * 2}

    batcher = _Batcher(model, BatchingParameters(max_batch_size=8, batch_timeout_micros=5000, num_batch_threads=threads), BatchStats())
    try:
        sizes = [1, 3, 5, 2, 7, 1, 4, 6] * 4
        futures = [batcher.submit({"x": np.full((n, 1), i, np.float32)}) for i, n in enumerate(sizes)]
        for i, (n, fut) in enumerate(zip(sizes, futures)):
            out = fut.result(timeout=10)["y"]
            assert out.shape == (n, 1) and (out == 2 * i).all(), f"request {i} got someone else's rows"
    finally:
        batcher.close()
    assert max(calls) <= 8 and sum(calls) == sum(sizes)
    assert len(calls) < len(sizes), "some requests were merged"


# ---------------------------------------------------------------- http_rest_api_handler_test.cc (2.20.0), on a loaded model


def test_upstream_predict(tfs_config: tfserving.TFServingHandle) -> None:
    """TEST_F(HttpRestApiHandlerTest, Predict): latest, a version, a label, an explicit signature_name, columnar."""
    base = f"{tfs_config.url}/v1/models/digits"
    x = X[:2].tolist()
    latest = httpx.post(f"{base}:predict", json={"instances": x})
    assert latest.status_code == 200 and latest.headers["content-type"] == "application/json"
    v2 = httpx.post(f"{base}/versions/2:predict", json={"instances": x}).json()
    by_label = httpx.post(f"{base}/labels/canary:predict", json={"instances": x}).json()
    named = httpx.post(f"{base}/versions/2:predict", json={"signature_name": "serving_default", "instances": x}).json()
    assert latest.json() == v2 == by_label == named
    columnar = httpx.post(f"{base}/versions/2:predict", json={"signature_name": "serving_default", "inputs": x}).json()
    assert columnar["outputs"]["classes"] == [p["classes"] for p in v2["predictions"]]


def test_upstream_predict_request_errors(tfs_config: tfserving.TFServingHandle) -> None:
    """TEST_F(HttpRestApiHandlerTest, PredictRequestErrors): wrong element type; an unknown label is checked first."""
    base = f"{tfs_config.url}/v1/models/digits"
    r = httpx.post(f"{base}:predict", json={"instances": ["x", "y"]})
    assert r.status_code == 400 and "not of expected type: float" in r.json()["error"]
    r = httpx.post(f"{base}/labels/Version_Nonexistent:predict", json={"instances": ["x", "y"]})
    assert r.status_code == 400 and "Unrecognized servable version label" in r.json()["error"]


def test_upstream_get_status(tfs_config: tfserving.TFServingHandle) -> None:
    """TEST_F(HttpRestApiHandlerTest, GetStatus): all versions, one version, by label (= all versions)."""
    ok = {"error_code": "OK", "error_message": ""}
    base = f"{tfs_config.url}/v1/models/digits"
    both = {"model_version_status": [{"version": "2", "state": "AVAILABLE", "status": ok}, {"version": "1", "state": "AVAILABLE", "status": ok}]}
    assert httpx.get(base).json() == both
    assert httpx.get(f"{base}/versions/1").json() == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]}
    assert httpx.get(f"{base}/labels/stable").json() == both


def test_upstream_get_model_metadata(tfs_config: tfserving.TFServingHandle) -> None:
    """TEST_F(HttpRestApiHandlerTest, GetModelMetadata): the SavedModel's own SignatureDefMap, init op included."""
    meta = httpx.get(f"{tfs_config.url}/v1/models/digits/metadata").json()
    assert meta["model_spec"] == {"name": "digits", "signature_name": "", "version": "2"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs) == {"serving_default", "__saved_model_init_op"}
    assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert sigs["serving_default"]["inputs"]["pixels"]["name"] == "serving_default_pixels:0"
    assert httpx.get(f"{tfs_config.url}/v1/models/digits/labels/stable/metadata").json()["model_spec"]["version"] == "1"
    assert httpx.get(f"{tfs_config.url}/v1/models/digits/labels/nope/metadata").status_code == 400


def test_upstream_classify_and_regress_on_a_model_without_those_signatures(tfs_config: tfserving.TFServingHandle) -> None:
    """TEST_F(HttpRestApiHandlerTest, Classify/Regress), on the digits model (predict signature only): upstream's 400s."""
    base = f"{tfs_config.url}/v1/models/digits"
    body = {"examples": [{"x": 20.0}]}
    c = httpx.post(f"{base}:classify", json=body)
    assert c.status_code == 400 and c.json()["error"].startswith('No classification inputs found in SignatureDef: inputs {\n  key: "pixels"')
    r = httpx.post(f"{base}/labels/stable:regress", json=body)
    assert r.status_code == 400 and r.json()["error"] == "Expected one output Tensor."
    s = httpx.post(f"{base}:classify", json={"signature_name": "nope", **body})
    assert s.status_code == 400 and s.json()["error"] == "No signature was found with the name: nope"


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=20)


@st.composite
def _bad_bodies(draw: st.DrawFn) -> bytes:
    valid = json.dumps({"instances": [X[0].tolist()]}).encode()
    kind = draw(st.sampled_from(["truncated", "bytes", "json", "wrong_type", "nan_row", "oversized_row", "deep"]))
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 2))]
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    if kind == "wrong_type":
        key = draw(st.sampled_from(["instances", "inputs"]))
        row = [0.0] * 63 + [draw(_JSON_LEAF.filter(lambda v: not (isinstance(v, (int, float)) and not isinstance(v, bool))))]
        return json.dumps({key: [row]}).encode()
    if kind == "nan_row":  # NaN is valid JSON for TF Serving; the wrong width is not
        return json.dumps({"instances": [[float("nan")] * draw(st.integers(1, 63))]}).encode()
    if kind == "oversized_row":
        return json.dumps({"inputs": [[1.0] * draw(st.integers(65, 5000))]}).encode()
    depth = draw(st.integers(1, 3000))
    return b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=_bad_bodies())
def test_malformed_bodies_get_a_4xx_and_the_server_stays_up(tfs: tfserving.TFServingHandle, body: bytes) -> None:
    """Truncated, non-UTF-8, random JSON, wrong element types, NaN rows of the wrong width, oversized, deep: 4xx with a message."""
    r = httpx.post(tfs.predict_url(), content=body, headers={"content-type": "application/json"}, timeout=60)
    assert 400 <= r.status_code < 500, (body[:200], r.status_code, r.text[:300])
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    tfs.check_alive()


def test_after_the_fuzzing_a_valid_request_is_answered_correctly(tfs: tfserving.TFServingHandle) -> None:
    """Runs after the hypothesis test: the same server still predicts, with the same answer as before."""
    before = httpx.post(tfs.predict_url(), json={"instances": X[:20].tolist()}).json()["predictions"]
    assert (np.array([p["classes"] for p in before]) == Y[:20]).mean() > 0.8
    assert httpx.post(tfs.predict_url(), json={"instances": X[:20].tolist()}).json()["predictions"] == before
