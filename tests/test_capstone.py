"""The capstone harness (notebook 14): adapters, load records, recovery, Pareto front, LOC, table, files."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import psutil
import pytest

from labkit import data
from labkit.errors import BadInput, ServiceUnavailable
from labkit.exercises import ExerciseFailed, ex14
from labkit.measure import capstone, recovery, report
from labkit.measure.load import Request
from labkit.models import digit_nets


@pytest.fixture(scope="module")
def digits_and_model():  # type: ignore[no-untyped-def]
    d = data.load_digits()
    cnn = digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False)
    return d.x_test[:64], d.y_test[:64], cnn, digit_nets.predict(cnn, d.x_test[:64])


def _in_process(cnn):  # type: ignore[no-untyped-def]
    return lambda: capstone.Deployed(call=lambda x: int(digit_nets.predict(cnn, x[None])[0]), stop=lambda: None, in_process=True, kill_note="n/a")


def test_in_process_option_is_measured_like_any_other(digits_and_model) -> None:  # type: ignore[no-untyped-def]
    x, y, cnn, expected = digits_and_model
    r = capstone.run_option("In-process", "In-process", _in_process(cnn), x, expected, (1, 4), [20, 40], 5.0, recovery_s=1.0, n_check=8, labels=y)
    assert r.available, r.reason
    assert set(r.loads) == {1, 4} and r.loads[1]["n"] == 20 and r.loads[4]["n"] == 40
    assert r.correct == "8/8 equal to in-process" and r.startup_s is not None
    assert r.rss_mb and r.rss_mb > 10 and r.cpu_s_per_1k is not None and r.cpu_s_per_1k >= 0
    assert r.recovery["note"] == "n/a" and r.recovery["recovery_s"] is None
    assert len(r.latencies_s[4]) == 40


def test_a_wrong_answer_is_a_failure_and_a_missing_service_an_unavailable_row(digits_and_model) -> None:  # type: ignore[no-untyped-def]
    x, y, cnn, expected = digits_and_model
    stopped = []
    wrong = lambda: capstone.Deployed(call=lambda x: 11, stop=lambda: stopped.append(1))

    def missing() -> capstone.Deployed:
        raise ServiceUnavailable("no broker here", "apt-get install it")

    with pytest.raises(AssertionError, match="equal the in-process"):
        capstone.run_option("wrong", "Celery", wrong, x, expected, (1,), 5, 1.0, None)
    assert stopped == [1]  # stopped even when it failed
    r2 = capstone.run_option("missing", "Celery", missing, x, expected, (1,), 5, 1.0, None)
    assert not r2.available and r2.reason == "no broker here — apt-get install it"
    df = report.table([r2], (1,))
    assert df.loc["missing", "status"] == "not available here: no broker here — apt-get install it"
    assert df.loc["missing", "Best for"] == "distributed task queues"


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

    r = capstone.run_option("Celery + RabbitMQ", "Celery", half_started, x, expected, (1,), 5, 1.0, None)
    assert not r.available and r.reason.startswith("RabbitMQ is missing")
    assert started and not started[0].alive() and not process.started_here()


@pytest.mark.service
def test_pool_option_kill_breaks_the_pool_and_leaves_nothing(digits_and_model) -> None:  # type: ignore[no-untyped-def]
    from labkit.patterns import pool as lp

    x, y, cnn, expected = digits_and_model
    pids: list[int] = []

    def deploy() -> capstone.Deployed:
        pool = lp.start_pool(n_workers=2, model_names=("cnn",))
        pids.extend(pool.pids)

        def predict(xi: np.ndarray) -> int:
            return int(pool.executor.submit(lp.classify, "cnn", xi[None]).result()[0][0])

        return capstone.Deployed(call=predict, stop=pool.stop, pids=lambda: pool.pids, kill=lambda: os.kill(pool.pids[0], signal.SIGKILL) or "w0")

    r = capstone.run_option("pool", "ProcessPoolExecutor", deploy, x, expected, (1, 4), 20, 5.0, recovery_s=1.0, n_check=4)
    assert r.available, r.reason
    assert r.rss_mb and r.rss_mb > 50  # two workers with torch
    assert r.recovery["recovered"] is False and r.recovery["lost"] > 0  # BrokenProcessPool: it does not heal
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


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


def test_count_loc_and_deploy_loc() -> None:
    cell = "# deploy: Thing\n\ndef deploy():\n    # a comment\n    x = 1\n\n    return x\n%time 1\n"
    assert report.count_loc(cell) == 3
    cells = ["x = 1", cell, "# deploy: Other\na = 1", "# deploy: Thing\none_line()"]
    assert report.deploy_loc(cells) == {"Thing": 1, "Other": 1}  # the re-run cell wins


def test_deployed_checks_its_arguments_and_codecs() -> None:
    with pytest.raises(BadInput):
        capstone.Deployed(stop=lambda: None)
    with pytest.raises(BadInput):
        capstone.Deployed(stop=lambda: None, url="http://127.0.0.1:1/x", codec="nope")
    assert capstone.CODECS["gateway"].encode(data.load_digits().x_test[0])["timeout_s"] == capstone.GATEWAY_TIMEOUT_S


def test_table_plots_files_and_advice(digits_and_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    x, y, cnn, expected = digits_and_model
    r = capstone.run_option("In-process", "In-process", _in_process(cnn), x, expected, (1, 2), 10, 2.0, None, n_check=4)
    r.loc = 4
    other = capstone.OptionResult("Broken", "TF Serving", available=False, reason="nope")
    df = report.table([r, other], (1, 2))
    assert list(df.columns[:3]) == ["Best for", "Advantages", "Drawbacks"] and df.loc["In-process", "deploy LOC"] == 4
    fig = report.plot_all([r, other])
    paths = report.save([r, other], df, fig, folder=tmp_path)
    assert {p.suffix for p in paths.values()} == {".json", ".csv", ".png"}
    saved = json.loads(paths["json"].read_text())
    assert saved["options"][0]["loads"]["1"]["n"] == 10 and saved["options"][1]["reason"] == "nope"
    text = " ".join(report.advice([r, other]))
    assert "In-process" in text and f"{r.best()['throughput_per_s']:.0f}" in text


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


def test_notebook_sources_count_the_capstone_deploy_cells() -> None:
    loc = report.deploy_loc(report.notebook_sources("14_comparison_capstone.ipynb"))
    assert len(loc) == 9 and all(n > 0 for n in loc.values()), loc
    assert report.notebook_sources("no_such_notebook.ipynb") == []
