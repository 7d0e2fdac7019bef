"""The capstone harness (notebook 14): adapters, the front, load records, recovery, tables, advice, files."""

from __future__ import annotations

import json
import os
import signal

import pytest

from labkit import data
from labkit.errors import BadInput, ServiceUnavailable
from labkit.exercises import ExerciseFailed, ex14
from labkit.measure import capstone, options, recovery, report
from labkit.measure.capstone import OptionResult
from labkit.measure.load import Request
from labkit.models import digit_nets

C = capstone.FIXED_CONCURRENCY


@pytest.fixture(scope="module")
def digits_and_model():  # type: ignore[no-untyped-def]
    d = data.load_digits()
    cnn = digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False)
    return d.x_test[:64], d.y_test[:64], cnn, {"cnn": digit_nets.predict(cnn, d.x_test[:64])}


def _in_process(cnn):  # type: ignore[no-untyped-def]
    return lambda: capstone.Deployed(call=lambda x: int(digit_nets.predict(cnn, x[None])[0]), stop=lambda: None, in_process=True, kill_note="n/a")


def test_the_floor_is_measured_like_any_other_with_repeats_and_spread(digits_and_model) -> None:  # type: ignore[no-untyped-def]
    x, y, cnn, expected = digits_and_model
    r = capstone.run_option("floor", "In-process", _in_process(cnn), x, expected, (1, 4), 0.3, 3, recovery_s=0.5, n_check=8, labels=y, kind="reference")
    assert r.available, r.reason
    assert set(r.points) == {"cnn"} and set(r.points["cnn"]) == {1, 4} and r.notes["wide"].startswith("not measured")
    p = r.at("cnn", 4)
    assert p["repeats"] == 3 and p["seconds"] >= 0.8 and p["errors"] == 0
    assert p["throughput_spread"]["min"] <= p["throughput_per_s"] <= p["throughput_spread"]["max"]
    assert p["client_cpu_s_per_1k"] is None and p["server_cpu_s_per_1k"] >= 0  # in-process: one process, no separate client
    assert r.correct["cnn"] == "8/8 equal to in-process" and r.startup_s is not None and r.rss_mb and r.rss_mb > 10
    assert r.recovery["note"] == "n/a" and len(r.latencies_s["cnn"]) == sum(1 for _ in r.latencies_s["cnn"]) > 0


def test_a_wrong_answer_is_a_failure_and_a_missing_service_an_unavailable_row(digits_and_model) -> None:  # type: ignore[no-untyped-def]
    x, y, cnn, expected = digits_and_model
    stopped = []
    wrong = lambda: capstone.Deployed(call=lambda x: 11, stop=lambda: stopped.append(1))

    def missing() -> capstone.Deployed:
        raise ServiceUnavailable("no broker here", "apt-get install it")

    with pytest.raises(AssertionError, match="equal the in-process"):
        capstone.run_option("wrong", "Celery", wrong, x, expected, (1,), 0.2, 1, None)
    assert stopped == [1]  # stopped even when it failed
    r2 = capstone.run_option("missing", "Celery", missing, x, expected, (1,), 0.2, 1, None)
    assert not r2.available and r2.reason == "no broker here — apt-get install it"
    df = report.table([r2], "cnn", C)
    assert df.loc["missing", "status"] == "not available here: no broker here — apt-get install it"
    assert df.loc["missing", "Best for"].startswith("distributed task queues [not tested here")


@pytest.mark.service
def test_an_option_that_cannot_start_stops_what_it_started(digits_and_model) -> None:  # type: ignore[no-untyped-def]
    """The Celery + RabbitMQ shape without RabbitMQ: its Redis started, then the broker was missing."""
    from labkit.runtime import process
    from labkit.services import redis

    x, y, cnn, expected = digits_and_model
    started = []

    def half_started() -> capstone.Deployed:
        started.append(redis.start(external=False))
        raise ServiceUnavailable("RabbitMQ is missing (epmd not found on PATH)", "get it: apt-get install -y rabbitmq-server")

    r = capstone.run_option("Celery + RabbitMQ", "Celery", half_started, x, expected, (1,), 0.2, 1, None)
    assert not r.available and r.reason.startswith("RabbitMQ is missing")
    assert started and not started[0].alive() and not process.started_here()


@pytest.mark.service
def test_the_recovering_pool_resubmits_after_a_worker_is_killed() -> None:
    """What the front's ProcessPool row runs: ResilientPool.call from threads survives a SIGKILLed worker."""
    from concurrent.futures import ThreadPoolExecutor

    from labkit.apps import front
    from labkit.patterns.pool import ResilientPool

    x = data.load_digits().x_test[:1]
    with ResilientPool(n_workers=1, model_names=("cnn",)) as pool:
        first = pool.call(front.classify, "cnn", x)
        os.kill(pool.pids[0], signal.SIGKILL)
        with ThreadPoolExecutor(3) as ex:
            again = list(ex.map(lambda _: pool.call(front.classify, "cnn", x), range(3)))
        assert again == [first] * 3 and pool.restarts == 1


@pytest.mark.service
def test_the_front_answers_every_client_and_rejects_bad_input() -> None:
    import httpx

    from labkit.runtime import process
    from labkit.services import front

    fr = front.start("null")
    try:
        assert httpx.post(fr.predict_url("cnn"), json={"nope": 1}, timeout=30).status_code == 400
        assert httpx.post(fr.url + "/predict/other", json={"inputs": [[0.0] * 64]}, timeout=30).status_code == 404
        costs = capstone.compare_clients(fr.predict_url("wide"), {"inputs": [[0.0] * 64], "tta": 1}, 4, 0.3, rounds=1)
        assert set(costs) == {"httpx", "aiohttp"} and all(v["cpu_s_per_1k"] > 0 and v["throughput_per_s"] > 0 for v in costs.values())
    finally:
        fr.stop()
    assert not process.started_here()


def _req(start: float, latency: float, ok: bool = True) -> Request:
    return Request(start, latency, 200 if ok else None, None if ok else "boom")


def test_recovery_from_request_records() -> None:
    normal = [_req(i * 0.01, 0.005) for i in range(100)]  # before the kill at t=1.0
    redelivered = [_req(0.999, 2.0)]  # in flight at the kill, answered 2 s later
    after = [_req(1.0 + i * 0.01, 0.005) for i in range(100)]
    rec = recovery.recovery_from(normal + redelivered + after, 1.0)
    assert rec == {"recovery_s": pytest.approx(1.999, abs=1e-3), "lost": 0, "recovered": True}
    failing = [_req(1.0 + i * 0.01, 0.001, ok=False) for i in range(50)]
    assert recovery.recovery_from(normal + failing, 1.0)["recovered"] is False
    timed_out = recovery.recovery_from(normal + [_req(0.999, 15.0, ok=False)] + after, 1.0)  # lost, others served
    assert timed_out == {"recovery_s": pytest.approx(14.999, abs=1e-3), "lost": 1, "recovered": True}
    lost_one = recovery.recovery_from(normal + [_req(0.999, 0.01, ok=False)] + after, 1.0)
    assert lost_one["lost"] == 1 and lost_one["recovered"] is True and lost_one["recovery_s"] < 0.05


def test_pareto_front() -> None:
    points = {"a": (100.0, 10.0), "b": (200.0, 20.0), "c": (150.0, 30.0), "d": (50.0, 5.0), "e": (200.0, 25.0)}
    assert report.pareto_front(points) == ["d", "a", "b"]  # c and e are dominated by b
    assert report.pareto_front({"only": (1.0, 1.0)}) == ["only"]
    assert report.pareto_front({"x": (1.0, 1.0), "y": (1.0, 1.0)}) == ["x", "y"]  # ties dominate nothing


def test_count_loc_and_the_options_deploy_code() -> None:
    cell = "# deploy: Thing\n\ndef deploy():\n    # a comment\n    x = 1\n\n    return x\n%time 1\n"
    assert report.count_loc(cell) == 3
    assert report.deploy_loc(["x = 1", cell, "# deploy: Other\na = 1", "# deploy: Thing\none_line()"]) == {"Thing": 1, "Other": 1}
    rows = {o.name: o for o in options.options()}
    loc = {name: options.deploy_loc(o) for name, o in rows.items()}
    assert all(n > 0 for n in loc.values()), loc
    kube = rows["Kubernetes Service, no retries (emulated)"]
    manifests = sum(report.count_loc((options.DEPLOY_DIR / f).read_text()) for f in options.KUBE_FILES)
    assert "Dockerfile" in kube.files and loc[kube.name] > manifests > 50  # the YAML and the Dockerfile count


def test_every_row_says_what_it_is() -> None:
    rows = options.options()
    names = [o.name for o in rows]
    assert len(set(names)) == len(names)
    for o in rows:
        if o.kind == "emulated":
            assert "emulated" in o.name, o.name
        if o.kind == "stand-in":
            assert "stand-in" in o.name, o.name
    assert options.TF_STAND_IN == "TF Serving stand-in (labkit, follows 2.20.0)" and options.TF_STAND_IN in names
    assert {"In-process, no HTTP (floor)", "HTTP front, no model (null-server ceiling)"} <= {o.name for o in rows if o.kind == "reference"}
    kube = [o for o in rows if o.family == "Kubernetes"]
    assert len(kube) == 2 and any("retr" in o.name and "client's choice" in o.name for o in kube)
    assert any("ProcessPool" in o.name and "recovering" in o.name for o in rows)


def test_families_filter_leaves_out_only_the_other_families(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = options.options()
    monkeypatch.delenv(options.ONLY_FAMILIES_ENV, raising=False)
    assert not any(options.left_out(o) for o in rows)  # unset: every row runs
    monkeypatch.setenv(options.ONLY_FAMILIES_ENV, " Celery, TorchServe ,")
    kept = {o.name for o in rows if options.left_out(o) is None}
    assert kept == {o.name for o in rows if o.family in ("Celery", "TorchServe")} and len(kept) == 3
    ray = next(o for o in rows if o.name == "Ray Serve")
    assert options.left_out(ray) == "left out by LABKIT_CAPSTONE_FAMILIES (this run measures only Celery, TorchServe)"


def test_deployed_checks_its_arguments_and_codecs() -> None:
    with pytest.raises(BadInput):
        capstone.Deployed(stop=lambda: None)
    with pytest.raises(BadInput):
        capstone.Deployed(stop=lambda: None, url="http://127.0.0.1:1/x", codec="nope")
    d = capstone.Deployed(stop=lambda: None, url="http://127.0.0.1:1/a", wide_url="http://127.0.0.1:1/b", codec="model-server")
    assert d.workloads() == ["cnn", "wide"] and d.target("wide")[:2] == ("http://127.0.0.1:1/b", "model-server")
    assert capstone.CODECS["gateway"].encode(data.load_digits().x_test[0])["timeout_s"] == capstone.GATEWAY_TIMEOUT_S
    with pytest.raises(BadInput):
        OptionResult("x", "Celery", kind="imaginary")


def _point(tp: float, p99: float, client: float | None = 0.3, server: float = 1.0) -> dict:  # type: ignore[type-arg]
    return {"n": 2000, "repeats": 2, "seconds": 4.0, "errors": 0, "throughput_per_s": tp, "throughput_spread": {"median": tp, "min": tp * 0.9, "max": tp * 1.1},
            "p50_ms": p99 / 3, "p99_ms": p99, "p99_spread": {"median": p99, "min": p99 * 0.9, "max": p99 * 1.2}, "client_cpu_s_per_1k": client, "server_cpu_s_per_1k": server}


def _fake_results() -> list[OptionResult]:
    def opt(name: str, family: str, kind: str, cnn: tuple[float, float], wide: tuple[float, float] | None, **kw) -> OptionResult:  # type: ignore[no-untyped-def]
        r = OptionResult(name, family, kind=kind, what="w", startup_s=1.0, rss_mb=100.0, loc=kw.pop("loc", 10), **kw)
        r.points = {"cnn": {C: _point(*cnn)}, **({"wide": {C: _point(*wide)}} if wide else {})}
        r.latencies_s = {w: [0.001, 0.002, 0.01] for w in r.points}
        if not wide:
            r.notes["wide"] = "not measured: this option serves the digit CNN only here"
        r.http = family != "In-process" or "front" in name
        return r

    return [
        opt("In-process, no HTTP (floor)", "In-process", "reference", (5000, 5), (50, 400)),
        opt("HTTP front, no model (null-server ceiling)", "Null server", "reference", (1000, 30), (1000, 30)),
        opt("HTTP front + in-process model", "In-process", "real", (300, 100), (10, 2000), loc=2),
        opt("Ray Serve", "Ray", "real", (200, 150), (60, 400), recovery={"recovery_s": 1.5, "lost": 0, "recovered": True}),
        opt("Kubernetes Service, no retries (emulated)", "Kubernetes", "emulated", (900, 20), None, loc=160, recovery={"recovery_s": 0.1, "lost": 3, "recovered": True}),
        opt(options.TF_STAND_IN, "TF Serving", "stand-in", (950, 10), (500, 20), loc=1),
        OptionResult("TorchServe", "TorchServe", available=False, reason="Java is missing (java not found)"),
    ]


def test_tables_label_every_row_and_name_the_fixed_concurrency(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    results = _fake_results()
    cnn, wide = report.table(results, "cnn", C), report.table(results, "wide", C)
    for df in (cnn, wide):
        latency = [c for c in df.columns if "ms" in c or "req/s" in c or "CPU" in c or "ceiling" in c]
        assert latency and all(c.endswith(f"@ {C} clients") for c in latency), latency
        assert {f"p99 ms @ {C} clients", f"p50 ms @ {C} clients", f"req/s @ {C} clients", f"client CPU s / 1k req @ {C} clients", f"server CPU s / 1k req @ {C} clients"} <= set(df.columns)
        assert df.loc["Kubernetes Service, no retries (emulated)", "kind"].startswith("EMULATED")
        assert df.loc[options.TF_STAND_IN, "kind"].startswith("STAND-IN")
        assert df.loc["HTTP front, no model (null-server ceiling)", "kind"].startswith("reference")
        assert df.loc["TorchServe", "status"].startswith("not available here: Java is missing")
        assert "not tested here" in df.loc[options.TF_STAND_IN, "Advantages"] and f"recovery after kill @ {C} clients" in df.columns
    assert wide.loc["Kubernetes Service, no retries (emulated)", "status"] == "not measured: this option serves the digit CNN only here"
    assert cnn.loc["Ray Serve", f"share of null-server ceiling @ {C} clients"] == pytest.approx(0.2)
    assert report.ceiling_shares(results, "cnn", C)["HTTP front + in-process model"] == pytest.approx(0.3)
    fig = report.plot_all(results, C)
    fig.canvas.draw()
    bars = [ax for ax in fig.get_axes() if ax.get_title() == "throughput"]
    assert len(bars) == 2 and all(ax.texts for ax in bars)
    for ax in bars:  # every value label, "(reference)" ones included, ends inside its panel
        assert max(t.get_window_extent().x1 for t in ax.texts) <= ax.get_window_extent().x1, ax.texts
    paths = report.save(results, {"cnn": cnn, "wide": wide}, fig, folder=tmp_path)
    assert {p.suffix for p in paths.values()} == {".json", ".csv", ".png"} and "csv-wide" in paths
    saved = json.loads(paths["json"].read_text())
    assert saved["options"][3]["points"]["cnn"][str(C)]["n"] == 2000 and saved["options"][6]["reason"].startswith("Java")


def test_advice_answers_each_question_from_real_rows_only() -> None:
    text = report.advice(_fake_results(), C)
    joined = " ".join(text)
    winners = [part.split("**")[0] for s in text for part in s.split(": **")[1:]]
    assert winners and not any("emulated" in w or "stand-in" in w or "ceiling" in w or "floor" in w for w in winners), winners
    assert "lowest p99" in joined and "requests per server CPU-second" in joined and "Fastest recovery" in joined and "Least code to deploy" in joined
    assert "digit CNN" in joined and "wide model" in joined  # both workloads
    assert "Kubernetes needs 160 lines" in joined and "Left out of every question above" in joined and options.TF_STAND_IN in joined


def test_advice_says_when_the_winners_repeats_overlap() -> None:
    results = _fake_results()
    alone = report.advice(results, C)[0]
    assert "overlap no other real option's" in alone and "does not separate" not in alone
    ray = next(r for r in results if r.name == "Ray Serve")
    ray.points["cnn"][C] = _point(290, 105)  # within the front's 270–330 req/s and 90–120 ms
    close = report.advice(results, C)[0]
    assert close.count("this run does not separate them") == 2 and "overlap those of Ray Serve (261–319)" in close, close
    assert "Least code to deploy" in " ".join(report.advice(results, C))
    front = next(r for r in results if r.name == "HTTP front + in-process model")
    front.recovery = {"recovery_s": 0.2, "lost": 2, "recovered": True}  # faster than Ray Serve's 1.5 s, but it lost requests
    healed = next(s for s in report.advice(results, C) if s.startswith("Fastest recovery"))
    assert "**HTTP front + in-process model**, 0.2 s, 2 request(s) lost; fastest with no request lost: **Ray Serve**, 1.5 s" in healed, healed


def test_exercise_checks() -> None:
    points = {"a": (100.0, 10.0), "b": (200.0, 20.0), "c": (150.0, 30.0)}
    assert ex14.check_pareto_front(None, points) is False
    assert ex14.check_pareto_front(["a", "b"], points) is True
    with pytest.raises(ExerciseFailed, match="dominated"):
        ex14.check_pareto_front(["a", "b", "c"], points)
    loads = {"A": {1: {"throughput_per_s": 100.0, "p99_ms": 10.0}, 8: {"throughput_per_s": 300.0, "p99_ms": 80.0}},
             "B": {1: {"throughput_per_s": 150.0, "p99_ms": 40.0}}}
    assert ex14.check_budget_choice(None, loads, 50.0) is False
    assert ex14.check_budget_choice("B", loads, 50.0) is True
    assert ex14.check_budget_choice("A", loads, 100.0) is True
    assert ex14.check_budget_choice("none", loads, 5.0) is True
    with pytest.raises(ExerciseFailed):
        ex14.check_budget_choice("A", loads, 50.0)


def test_the_notebook_runs_every_option_of_the_list() -> None:
    import nbformat

    nb = nbformat.read(options.DEPLOY_DIR.parent / "notebooks" / "14_comparison_capstone.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    for o in options.options():
        if o.name != options.TF_STAND_IN:
            assert f'measure("{o.name}"' in code, o.name
    assert "measure(options.TF_STAND_IN" in code


# ---------------------------------------------------------------- on an external cluster (tests/test_cluster.py runs the real one)


@pytest.fixture
def fake_server():  # type: ignore[no-untyped-def]
    """A tiny HTTP server on 127.0.0.1: POST answers class 3 from workers w1@a / w2@b in turn; anything else 404."""
    import itertools
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    turn = itertools.cycle(["w1@a", "w2@b"])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

        def _send(self, status: int, body: dict) -> None:  # type: ignore[type-arg]
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path == "/predict":
                self._send(200, {"predictions": [3], "worker": next(turn)})
            else:
                self._send(404, {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found in model store: {self.path}"})

        def do_GET(self) -> None:
            self._send(404, {"error": "Could not find any versions of model digits"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_external_row_says_so_counts_its_workers_and_kills_none(fake_server, digits_and_model) -> None:  # type: ignore[no-untyped-def]
    x, y, cnn, expected = digits_and_model
    killed = []
    deploy = lambda: options.on_cluster(capstone.Deployed(url=fake_server + "/predict", codec="model-server", check=False, stop=lambda: None, kill=lambda: killed.append(1) or "w1"),
                                        "a test cluster", "w1@a, w2@b")
    r = capstone.run_option("Celery + Redis", "Celery", deploy, x, expected, (C,), 0.3, 2, recovery_s=0.5, n_check=4, warmup=0)
    assert r.name == "Celery + Redis" + capstone.EXTERNAL and r.external == "a test cluster" and not killed
    assert r.recovery["note"] == "not measured: external workers (w1@a, w2@b) belong to the cluster; killing one is not this notebook's business"
    assert recovery.format_recovery(r.recovery).startswith("not measured: external workers")
    p = r.at("cnn", C)
    assert p["server_cpu_s_per_1k"] is None and r.rss_mb is None and p["client_cpu_s_per_1k"] is not None
    assert set(r.served_by) == {"w1@a", "w2@b"} and sum(r.served_by.values()) == p["n"]  # every measured answer, by the worker it names
    df = report.table([*_fake_results(), r], "cnn", C)
    assert df.loc[r.name, "runs on"] == "external: a test cluster" and df.loc["Ray Serve", "runs on"] == "started by this notebook"
    assert pd_isna(df.loc[r.name, f"server CPU s / 1k req @ {C} clients"])
    text = " ".join(report.advice([*_fake_results(), r], C))
    assert "Measured on an external deployment" in text and r.name in text
    only_external = report.advice([r], C)[0]
    assert "requests per server CPU-second: not measured (external rows only)" in only_external
    assert "external" not in report.table(_fake_results(), "cnn", C).columns.str.cat()  # no such column when nothing is external


def pd_isna(v) -> bool:  # type: ignore[no-untyped-def]
    import pandas as pd

    return bool(pd.isna(v))


def test_external_servers_that_lack_the_capstones_models_say_why(fake_server, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from labkit.services import tfserving, torchserve

    monkeypatch.setenv("TFSERVING_URL", fake_server)
    with pytest.raises(ServiceUnavailable, match="serves no model 'digits'"):
        tfserving.start()
    ts = torchserve.TorchServe(fake_server, fake_server, fake_server, "127.0.0.1:1", "127.0.0.1:2")  # external: labkit did not start it
    with pytest.raises(ServiceUnavailable, match="cannot load capstone_digits-1.0.mar") as err:
        ts.register("capstone_digits-1.0.mar")
    assert "model store must be labkit's" in (err.value.how_to_get or "")


def test_on_cluster_keeps_the_kill_of_workers_started_here() -> None:
    d = options.on_cluster(capstone.Deployed(url="http://127.0.0.1:1/p", codec="gateway", stop=lambda: None, kill=lambda: "w1"), "Redis at 127.0.0.1:1", None)
    assert d.external == "Redis at 127.0.0.1:1" and d.kill is not None
    assert options._host("amqp://guest:guest@127.0.0.1:5672//") == "127.0.0.1:5672"
