"""TorchServe: config, handler and metrics parsing (unit); a real server (service): REST and gRPC
answers equal the in-process model, versions, bad inputs, batching forms batches, nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import need

from labkit import data
from labkit.apps import wire
from labkit.apps.torchserve_handler import DigitHandler
from labkit.errors import BadInput
from labkit.exercises import ExerciseFailed, ex09
from labkit.models import digit_nets
from labkit.runtime import process
from labkit.services import torchserve

METRICS_TEXT = """# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="digits",model_version="1.0",hostname="h",} 7.0
ts_inference_requests_total{model_name="digits",model_version="2.0",hostname="h",} 3.0
ts_inference_requests_total{model_name="wide",model_version="default",hostname="h",} 5.0
ts_queue_latency_microseconds{model_name="digits",model_version="1.0",hostname="h",} 1234.5
"""


def _server_available() -> tuple[bool, str]:
    try:
        import ts  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as exc:
        return False, f"TorchServe or pyyaml not installed ({exc}): pip install torchserve torch-model-archiver pyyaml"
    try:
        torchserve.find_java()
    except Exception as exc:
        return False, str(exc)
    return True, ""


# ---------------------------------------------------------------- unit ----------------------------


@pytest.mark.unit
def test_parse_metrics_reads_labels_and_values() -> None:
    samples = torchserve.parse_metrics(METRICS_TEXT)
    assert len(samples) == 4
    assert samples[0].name == "ts_inference_requests_total"
    assert samples[0].labels == {"model_name": "digits", "model_version": "1.0", "hostname": "h"}
    assert samples[0].value == 7.0
    assert samples[3].value == 1234.5


@pytest.mark.unit
def test_config_binds_loopback_and_adds_java24_flags_only_when_needed(tmp_path: Path) -> None:
    ports = {"inference": 1, "management": 2, "metrics": 3, "grpc_inference": 4, "grpc_management": 5}
    text17 = torchserve.write_config(tmp_path, ports, tmp_path, 17, {"digits": "digits-1.0.mar"}).read_text()
    assert "inference_address=http://127.0.0.1:1" in text17 and "grpc_management_port=5" in text17
    assert "disable_token_authorization=true" in text17 and "metrics_mode=prometheus" in text17
    assert "load_models=digits=digits-1.0.mar" in text17
    assert "sun-misc-unsafe" not in text17  # Java 17 would refuse to start with it
    text25 = torchserve.write_config(tmp_path, ports, tmp_path, 25).read_text()
    assert "--sun-misc-unsafe-memory-access=allow" in text25


@pytest.mark.unit
def test_find_java_gives_a_runnable_java() -> None:
    ok, reason = _server_available()
    need(ok, reason)
    home, major = torchserve.find_java()
    assert Path(home, "bin", "java").exists() and major >= 11


class _Context:
    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {"model_dir": str(model_dir)}
        self.manifest = {"model": {"serializedFile": "weights.pt", "modelVersion": "1.0"}}
        self.statuses: dict[int, tuple[int, str]] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)


@pytest.mark.unit
def test_handler_answers_a_batch_and_rejects_bad_items_alone(tmp_path: Path) -> None:
    import torch

    model = digit_nets.trained(digit_nets.TrainConfig(**torchserve.VERSIONS["1.0"]), progress=False)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "model_config.json").write_text(json.dumps(torchserve._model_config(model)))
    handler, ctx = DigitHandler(), _Context(tmp_path)
    handler.initialize(ctx)
    x = data.load_digits().x_test[:3]
    batch = [
        {"body": wire.CODECS["torchserve"].encode(x[0])},
        {"body": {"pixels": [1, 2, 3]}},  # wrong shape
        {"data": json.dumps(wire.CODECS["torchserve"].encode(x[1])).encode()},  # gRPC style bytes
        {"body": None},  # form-encoded body reaches the handler as None
        {"body": b"not json"},
    ]
    out = handler.handle(batch, ctx)
    assert len(out) == 5
    assert [out[0]["label"], out[2]["label"]] == list(digit_nets.predict(model, x[:2]))
    assert out[0]["batch_size"] == 5 and out[0]["version"] == "1.0"
    assert set(ctx.statuses) == {1, 3, 4} and all(code == 400 for code, _ in ctx.statuses.values())
    assert "shape" in ctx.statuses[1][1]


@pytest.mark.unit
def test_archive_refuses_other_models(tmp_path: Path) -> None:
    import torch

    with pytest.raises(BadInput, match="DigitCNN or DigitMLP"):
        torchserve.archive("x", "1.0", torch.nn.Linear(2, 2), tmp_path)


@pytest.mark.unit
def test_exercise_checks_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.measure.batching import Setting, SweepRow
    from labkit.measure.load import LoadResult, Request

    def row(batch_size: int, concurrency: int, throughput_per_s: float) -> SweepRow:  # n requests in 1 s
        load = LoadResult([Request(0.0, 0.01, 200)] * int(throughput_per_s), elapsed_s=1.0)
        return SweepRow(Setting(batch_size, 10.0 if batch_size > 1 else 0.0), concurrency, "http", load)

    rows = [row(1, 32, 50.0), row(32, 32, 200.0), row(8, 32, 150.0), row(32, 1, 900.0)]
    assert ex09.check_batching_gain(None, rows) is False
    assert "not done yet" in capsys.readouterr().out
    assert ex09.check_batching_gain(4.0, rows) is True
    with pytest.raises(ExerciseFailed, match="inverse"):
        ex09.check_batching_gain(0.25, rows)
    assert ex09.check_requests_per_model(None, METRICS_TEXT) is False
    assert ex09.check_requests_per_model({"digits": 10.0, "wide": 5.0}, METRICS_TEXT) is True
    with pytest.raises(ExerciseFailed, match="every version"):
        ex09.check_requests_per_model({"digits": 7.0, "wide": 5.0}, METRICS_TEXT)


# ---------------------------------------------------------------- service -------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[torchserve.TorchServe, dict[str, Any]]]:
    ok, reason = _server_available()
    need(ok, reason)
    store = torchserve.model_store()
    v1 = digit_nets.trained(digit_nets.TrainConfig(**torchserve.VERSIONS["1.0"]), progress=False)
    v2 = digit_nets.trained(digit_nets.TrainConfig(**torchserve.VERSIONS["2.0"]), progress=False)
    mar1 = torchserve.archive("digits", "1.0", v1, store)
    mar2 = torchserve.archive("digits", "2.0", v2, store)
    x = data.load_digits().x_test[:12]
    ts = torchserve.start(store, models={"digits": mar1.name}, probe_image=x[0])
    try:
        ts.register(mar2.name)
        yield ts, {"x": x, "1.0": digit_nets.predict(v1, x), "2.0": digit_nets.predict(v2, x), "mar1": mar1.name}
    finally:
        tree = ts.process.tree() if ts.process else []
        ts.stop()
        psutil.wait_procs(tree, timeout=10)
        assert not process.alive([p.pid for p in tree]), "TorchServe processes left after stop()"


@pytest.mark.service
def test_rest_versions_and_default(server: tuple[torchserve.TorchServe, dict[str, Any]]) -> None:
    ts, ref = server
    for version in ("1.0", "2.0"):
        answers = [ts.predict("digits", xi, version=version) for xi in ref["x"]]
        assert [a["label"] for a in answers] == list(ref[version])
        assert {a["version"] for a in answers} == {version}
    ts.set_default("digits", "2.0")
    assert ts.predict("digits", ref["x"][0])["version"] == "2.0"
    ts.set_default("digits", "1.0")
    assert ts.predict("digits", ref["x"][0])["version"] == "1.0"
    versions = {m["modelVersion"]: m for m in ts.describe("digits")}
    assert set(versions) == {"1.0", "2.0"}


@pytest.mark.service
def test_grpc_answers_equal_in_process(server: tuple[torchserve.TorchServe, dict[str, Any]]) -> None:
    import grpc

    ts, ref = server
    pb2, pb2_grpc = torchserve.grpc_stubs()
    with grpc.insecure_channel(ts.grpc_address) as channel:
        stub = pb2_grpc.InferenceAPIsServiceStub(channel)
        labels = [
            json.loads(stub.Predictions(pb2.PredictionsRequest(model_name="digits", model_version="2.0", input={"data": json.dumps(wire.CODECS["torchserve"].encode(xi)).encode()})).prediction)["label"]
            for xi in ref["x"]
        ]
        with pytest.raises(grpc.RpcError) as err:
            stub.Predictions(pb2.PredictionsRequest(model_name="nope", input={"data": b"{}"}))
        assert "nope" in (err.value.details() or "")
    assert labels == list(ref["2.0"])


@pytest.mark.service
def test_bad_inputs_get_http_errors_and_server_keeps_serving(server: tuple[torchserve.TorchServe, dict[str, Any]]) -> None:
    import httpx

    ts, ref = server
    good = json.dumps(wire.CODECS["torchserve"].encode(ref["x"][0]))
    js = {"Content-Type": "application/json"}
    cases = [
        (ts.predictions_url("digits"), '{"pixels": [1, 2, 3]}', js, 400),
        (ts.predictions_url("digits"), "this is not json", js, 400),
        (ts.predictions_url("digits"), "pixels=1", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
        (ts.predictions_url("nope"), good, js, 404),
        (ts.predictions_url("digits", "9.9"), good, js, 404),
    ]
    for url, body, headers, code in cases:
        r = httpx.post(url, content=body, headers=headers, timeout=30)
        assert r.status_code == code, (url, body, r.status_code, r.text)
    with pytest.raises(BadInput, match="HTTP 404"):
        ts.predict("nope", ref["x"][0])
    assert ts.predict("digits", ref["x"][1], version="1.0")["label"] == ref["1.0"][1]


@pytest.mark.service
def test_dynamic_batching_forms_batches_and_scaling_adds_workers(server: tuple[torchserve.TorchServe, dict[str, Any]]) -> None:
    import httpx

    ts, ref = server
    ts.register(ref["mar1"], model_name="batched", batch_size=8, max_batch_delay_ms=500)
    try:
        url = ts.predictions_url("batched")

        async def burst() -> list[Any]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*[client.post(url, json=wire.CODECS["torchserve"].encode(ref["x"][i % 12])) for i in range(8)])

        answers = [r.json() for r in asyncio.run(burst())]
        assert [a["label"] for a in answers] == [ref["1.0"][i % 12] for i in range(8)]
        assert max(a["batch_size"] for a in answers) > 1  # 8 requests within 500 ms: batched together
        ts.scale("batched", 2)
        assert len(ts.describe("batched")[0]["workers"]) == 2
        total = sum(s.value for s in ts.metrics() if s.name == "ts_inference_requests_total" and s.labels.get("model_name") == "batched")
        assert total >= 8
    finally:
        ts.unregister("batched")


_CHILD = """
import json, sys, time
from labkit.services import torchserve
ts = torchserve.start(torchserve.model_store(), models={"digits": sys.argv[1]})
print(json.dumps([p.pid for p in ts.process.tree()]), flush=True)
time.sleep(600)
"""


@pytest.mark.service
def test_no_java_or_worker_survives_sigkill_of_parent(server: tuple[torchserve.TorchServe, dict[str, Any]]) -> None:
    _, ref = server
    child = subprocess.Popen([sys.executable, "-c", _CHILD, ref["mar1"]], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line, "the child never reported a running TorchServe"
        pids = json.loads(line)
        names = {psutil.Process(p).name() for p in pids if psutil.pid_exists(p)}
        assert "java" in names and len(pids) >= 3  # launcher, java, one Python worker
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 30
    alive = process.alive(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = process.alive(pids)
    assert not alive, f"still running after the parent was killed: {alive}"
