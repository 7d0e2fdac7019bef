"""labkit.kube (deployment, autoscaler, emulation): real replicas behind a real balancer, scaling,
crash replacement in both Service modes, the HPA loop reading CPU and in-flight counters, clean-up."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from labkit import data
from labkit.errors import BadInput
from labkit.kube import emulator, hpa
from labkit.measure import load
from labkit.models import digit_nets
from labkit.runtime import process

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def digits():
    d = data.load_digits()
    return d.x_test[:8], digit_nets.predict(digit_nets.trained(digit_nets.TrainConfig(), progress=False), d.x_test[:8]).tolist()


@pytest.fixture(scope="module")
def deployment():
    dep = emulator.start_deployment(replicas=1, ready_delay_s=0.2)
    yield dep
    dep.stop()


def _mine() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


def test_predicts_through_the_balancer(deployment, digits):
    import httpx

    x, expected = digits
    r = httpx.post(deployment.url + "/predict", json={"inputs": x.reshape(8, 64).tolist()}, timeout=30)
    assert r.status_code == 200 and r.json()["predictions"] == expected
    assert r.headers["x-labkit-retries"] == "0"


def test_scale_up_round_robins_over_ready_replicas(deployment, digits):
    x, _ = digits
    deployment.scale(2)
    deployment.wait_ready(2)
    before = deployment.lb_stats()["served"]
    res = load.closed_loop(deployment.url + "/predict", {"inputs": x.tolist()}, concurrency=2, n_requests=20)
    assert res.errors == 0
    after = deployment.lb_stats()["served"]
    used = [url for url, n in after.items() if n > before.get(url, 0)]
    assert len(used) == 2, f"requests went to {used} only"


def _kill_under_load(deployment, x):
    """Kill one of 2 replicas while a request is in flight on it; return (client result, balancer deltas)."""
    deployment.scale(2)
    deployment.wait_ready(2)
    victim = next(p for p in deployment.replicas() if not p.terminating)
    stats0 = deployment.lb_stats()
    payload = {"inputs": x.tolist(), "tta": 16}
    box: dict[str, load.LoadResult] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", load.closed_loop(deployment.url + "/predict", payload, concurrency=6, duration_s=3.0)))
    t.start()
    deadline = time.monotonic() + 10
    while deployment.lb_stats()["inflight"].get(victim.url, 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    deployment.kill(deployment.replicas().index(victim))
    t.join()
    stats = deployment.lb_stats()
    return victim, box["r"], {k: stats[k] - stats0[k] for k in ("requests", "ok", "retries", "errors")}


def test_kube_proxy_service_fails_requests_to_a_killed_replica(deployment, digits):
    """Like kube-proxy: the request in flight on the killed replica fails; nothing is retried."""
    x, _ = digits
    assert deployment.lb_stats()["mode"] == "kube-proxy"
    victim, res, delta = _kill_under_load(deployment, x)
    assert res.n == delta["requests"] == delta["ok"] + delta["errors"]
    assert delta["retries"] == 0 and delta["errors"] >= 1 and res.errors == delta["errors"]
    deployment.wait_ready(2, timeout_s=120)
    assert victim not in deployment.replicas()


def test_retrying_service_loses_no_request_to_a_killed_replica(digits):
    """The client's/ingress's choice: the same kill, every request answered (some retried)."""
    x, _ = digits
    with emulator.start_deployment(name="retrying", replicas=2, ready_delay_s=0.2, service="retrying") as dep:
        assert dep.lb_stats()["mode"] == "retrying"
        _, res, delta = _kill_under_load(dep, x)
    assert res.errors == delta["errors"] == 0 and res.n == delta["ok"]
    assert delta["retries"] >= 1


def test_bad_service_mode_is_refused():
    with pytest.raises(BadInput, match="service"):
        emulator.start_deployment(service="istio")


def test_crashed_replica_is_replaced_and_in_flight_requests_counted(deployment, digits):
    x, expected = digits
    deployment.scale(2)
    deployment.wait_ready(2)
    victim = next(p for p in deployment.replicas() if not p.terminating)
    stats0 = deployment.lb_stats()
    crashes0 = deployment.crashes
    payload = {"inputs": x.tolist(), "tta": 16}
    box: dict[str, load.LoadResult] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", load.closed_loop(deployment.url + "/predict", payload, concurrency=6, duration_s=4.0)))
    t.start()
    deadline = time.monotonic() + 10
    while deployment.lb_stats()["inflight"].get(victim.url, 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    deployment.kill(deployment.replicas().index(victim))
    t.join()
    res = box["r"]
    stats = deployment.lb_stats()
    delta = {k: stats[k] - stats0[k] for k in ("requests", "ok", "retries", "errors")}
    # every request the client sent is accounted for: answered ok, or counted as an error
    assert res.n == delta["requests"] == delta["ok"] + delta["errors"]
    assert len(res.ok) == delta["ok"] and res.errors == delta["errors"]
    assert delta["retries"] + delta["errors"] >= 1, "the request in flight on the killed replica vanished"
    assert deployment.crashes == crashes0 + 1
    deployment.wait_ready(2, timeout_s=120)  # the ReplicaSet replaced it
    assert victim not in deployment.replicas()
    assert any(what.startswith("crashed") and name == victim.name for _, what, name in deployment.events)


def test_scale_down_drains_and_stops(deployment):
    deployment.scale(2)
    deployment.wait_ready(2)
    gone = deployment.replicas()[-1]
    deployment.scale(1)
    deployment.wait_ready(1)
    assert not gone.proc.alive()
    assert any(what == "stopped" and name == gone.name for _, what, name in deployment.events)


def test_autoscaler_sync_at_idle(deployment):
    deployment.wait_ready(1)
    auto = emulator.Autoscaler(deployment, hpa.HPA(1, 2, behavior={}), target_utilization=50, time_scale=50)
    auto.scrape(deployment.replicas())
    time.sleep(0.5)
    sample = auto.sync()
    assert sample.replicas == 1 and sample.utilization is not None and sample.utilization < 50


def test_autoscaler_reads_inflight_counters_and_scales_on_them(deployment, digits):
    """A Pods-metric HPA: 6 clients on one replica keep ~6 requests in flight -> it asks for more."""
    x, _ = digits
    deployment.scale(1)
    deployment.wait_ready(1)
    metric = {"type": "Pods", "pods": {"metric": {"name": emulator.INFLIGHT_METRIC}, "target": {"type": "AverageValue", "averageValue": "1"}}}
    auto = emulator.Autoscaler(deployment, hpa.HPA(1, 2, behavior={}, metrics=[metric]), time_scale=50)
    auto.scrape(deployment.replicas())
    load.closed_loop(deployment.url + "/predict", {"inputs": x.tolist(), "tta": 16}, concurrency=6, duration_s=1.5)
    sample = auto.sync()
    value = next(iter(sample.values.values()))
    assert value is not None and value > 2000, sample  # milli-requests in flight, averaged over the interval
    assert sample.proposed is not None and sample.proposed > 1 and sample.replicas == 2
    deployment.scale(1)
    deployment.wait_ready(1)


def test_stop_leaves_no_process(deployment):
    """Last in this module: stopping the Deployment stops every replica and the balancer."""
    pids = {p.pid for p in deployment.processes()}
    assert len(pids) >= 2 and pids <= _mine()
    deployment.stop()
    alive = {p.pid for p in psutil.process_iter(["status"]) if p.info["status"] != psutil.STATUS_ZOMBIE}
    assert not pids & alive
    assert not [r for r in process.running() if r["pid"] in pids]
    deployment.stop()  # a second stop is harmless


def _emulation_of(decisions_replicas, proposals, time_scale=10.0):
    h = hpa.HPA(1, 3)
    current = decisions_replicas
    samples = []
    for i, p in enumerate(proposals):
        current = h.step(15.0 * i, current, p)
        samples.append(emulator.Sample(15.0 * i, current, current, 50, p))
    return emulator.Emulation(None, samples, h, [(1.0, 1.0)], time_scale, 50, 0.0)


def test_emulation_held_interval_and_cost_without_processes():
    run = _emulation_of(1, [1, 3, 3, 2] + [1] * 25)
    # legacy window 300 s: the 3 proposed at t=30 holds until t=345, then 2 (t=45) until t=360
    assert run.held_interval() == (45.0, 345.0)
    assert run.held_s() == 300.0
    expected = sum(a.replicas * (b.t_s - a.t_s) for a, b in zip(run.samples, run.samples[1:]))
    assert run.replica_seconds() == expected
    assert run.time_to(3, ready=False) == 15.0


def test_reached_counts_a_jump_past_the_count():
    """A jump 1 → 3 reaches 2 at the same sync; the later scale-down to 2 is not 'reaching' 2 (time_to asks for exactly 2)."""
    run = _emulation_of(1, [1, 3, 3, 2] + [1] * 25)
    assert run.time_to(2, ready=False) == 345.0  # exactly 2: the way down
    assert run.reached_s(2, ready=False) == run.reached_s(3, ready=False) == 15.0
    assert run.reached_s(4, ready=False) is None
