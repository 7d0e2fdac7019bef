"""LitServe: the LitAPI's steps in this process, request validation, metrics counters (unit); one real
server for the module (service): health, answers equal the in-process model, batches formed (fewer
model calls than requests, in /metrics and in the answers), bad input → 422 with the reason, nothing left."""

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
from labkit.services import litserve

WIDTH = 1024  # small: these tests check behaviour, the benchmark measures the 8192-wide model
BATCHED = Setting(16, 20.0)


@pytest.mark.unit
def test_litapi_steps_in_process() -> None:
    need(needs.status("litserve").ok, "LitServe is not installed: pip install litserve")
    from pydantic import ValidationError

    from labkit.apps.litserve_app import DigitRequest, WideDigitAPI

    x = data.load_digits().x_test[:3]
    api = WideDigitAPI(WIDTH, max_batch_size=4, batch_timeout=0.01)
    api.setup("cpu")
    api.log = lambda key, value: None  # type: ignore[method-assign]  # no logger queue outside a server
    inputs = [api.decode_request(DigitRequest(pixels=xi.reshape(64).tolist())) for xi in x]
    answers = [api.encode_response(o) for o in api.unbatch(api.predict(api.batch(inputs)))]
    assert [a["label"] for a in answers] == list(wide.wide_trained(WIDTH).predict(x))
    assert {a["batch_size"] for a in answers} == {3}
    with pytest.raises(ValidationError, match="at least 64"):
        DigitRequest(pixels=[1.0, 2.0])


@pytest.mark.unit
def test_counters_read_the_metrics() -> None:
    text = "# TYPE litserve_requests_total counter\nlitserve_requests_total 40.0\nlitserve_batches_total 8.0\n"
    c = litserve.counters(litserve.parse_metrics(text))
    assert (c.requests, c.batches, c.mean_batch) == (40.0, 8.0, 5.0)
    assert litserve.request_body(np.zeros((1, 8, 8)))["pixels"] == [0.0] * 64


# ---------------------------------------------------------------- service -------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[litserve.LitServe, dict[str, Any]]]:
    need(needs.status("litserve").ok, "LitServe is not installed: pip install litserve")
    x = data.load_digits().x_test[:64]
    srv = litserve.start(BATCHED, width=WIDTH)
    try:
        yield srv, {"x": x, "labels": wide.wide_trained(WIDTH).predict(x)}
    finally:
        tree = srv.process.tree() if srv.process else []
        srv.stop()
        psutil.wait_procs(tree, timeout=5)
        assert not process.alive([p.pid for p in tree]), "LitServe processes left after stop()"


@pytest.mark.service
def test_health_and_answers_equal_the_in_process_model(server: tuple[litserve.LitServe, dict[str, Any]]) -> None:
    srv, ref = server
    assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200
    assert [srv.predict(xi)["label"] for xi in ref["x"][:10]] == list(ref["labels"][:10])


@pytest.mark.service
def test_batches_form_under_concurrency(server: tuple[litserve.LitServe, dict[str, Any]]) -> None:
    srv, ref = server
    bodies = [litserve.request_body(xi) for xi in ref["x"]]
    before = srv.counters()
    sizes: list[int] = []

    def check(resp: Any) -> str | None:
        answer = resp.json()
        sizes.append(int(answer["batch_size"]))
        return None if "label" in answer else f"no label in {answer}"

    res = load.closed_loop(srv.predict_url, lambda i: bodies[i % len(bodies)], concurrency=16, n_requests=96, check=check)
    assert res.errors == 0, res.first_error()
    after = srv.counters()
    requests, batches = after.requests - before.requests, after.batches - before.batches
    assert requests == 96
    assert batches < requests and max(sizes) > 1, f"no batch formed: {batches} model calls for {requests} requests"


@pytest.mark.service
def test_bad_input_is_a_4xx_with_a_reason(server: tuple[litserve.LitServe, dict[str, Any]]) -> None:
    srv, ref = server
    r = httpx.post(srv.predict_url, json={"pixels": [1, 2, 3]}, timeout=30)
    assert r.status_code == 422 and "at least 64" in r.text
    r = httpx.post(srv.predict_url, content="not json", headers={"Content-Type": "application/json"}, timeout=30)
    assert 400 <= r.status_code < 500
    r = httpx.post(srv.predict_url, json={"image": [0.0] * 64}, timeout=30)
    assert r.status_code == 422 and "pixels" in r.text
    assert srv.predict(ref["x"][0])["label"] == int(ref["labels"][0])  # still serving


@pytest.mark.unit
def test_exercise_checks_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.exercises import ExerciseFailed, ex13
    from labkit.measure.batching import BatchingSweep, SweepRow
    from labkit.measure.load import LoadResult, Request

    def row(setting: Setting, throughput_per_s: float) -> SweepRow:
        return SweepRow(setting, 16, "http", LoadResult([Request(0.0, 0.01, 200)] * int(throughput_per_s), elapsed_s=1.0))

    sweep = BatchingSweep([row(Setting(1), 10.0), row(BATCHED, 40.0)])
    assert ex13.check_batching_gain(None, sweep) is False
    assert "not done yet" in capsys.readouterr().out
    assert ex13.check_batching_gain(4.0, sweep) is True
    with pytest.raises(ExerciseFailed, match="inverse"):
        ex13.check_batching_gain(0.25, sweep)
    detail = [{"type": "too_short", "loc": ["body", "pixels"], "msg": "List should have at least 64 items after validation, not 3"}]
    assert ex13.check_validation_reason(("pixels", detail[0]["msg"]), detail) is True
    with pytest.raises(ExerciseFailed, match="loc"):
        ex13.check_validation_reason(("body", detail[0]["msg"]), detail)
