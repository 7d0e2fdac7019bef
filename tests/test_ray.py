"""Ray (notebook 07): a real local cluster; faults lose nothing; Serve answers correctly; stop leaves no process.

The service tests share one local cluster (starting Ray costs seconds); the last one stops it and
checks with psutil that no raylet, gcs_server or worker survived.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labkit.apps import wire
from labkit.data import load_digits
from labkit.exercises import ExerciseFailed, ex07
from labkit.models import digit_nets, wide

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'ray[serve,data]')")
# Ray Serve 2.60's config models call pydantic's Field with extra keywords (deprecated in pydantic 2).
SERVE_PYDANTIC = "ignore:Using extra keyword arguments on `Field` is deprecated:DeprecationWarning"


# --- unit: no cluster -------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    x = load_digits().x_test[:5]
    back = wire.CODECS["ray-serve"].decode(wire.CODECS["ray-serve"].encode(x))
    assert back.shape == (5, 1, 8, 8) and back.dtype == np.float32
    assert np.array_equal(back, x), "the model must see exactly the digits that were sent"


def test_wide_model_classifies_digits() -> None:
    net = wide.wide_trained(width=512)
    d = load_digits()
    assert float((net.predict(d.x_test) == d.y_test).mean()) > 0.85
    assert (net.predict(d.x_test[:7]) == wide.wide_trained(width=512).predict(d.x_test[:7])).all(), "deterministic from the seed"


def test_zero_copy_check() -> None:
    original = np.arange(10.0)
    readonly = original.copy()
    readonly.flags.writeable = False
    assert ex07.check_zero_copy(None, original) is False
    assert ex07.check_zero_copy(readonly, original) is True
    with pytest.raises(ExerciseFailed, match="writable"):
        ex07.check_zero_copy(original.copy(), original)
    torch = pytest.importorskip("torch")
    with pytest.raises(ExerciseFailed, match="tensor"):
        ex07.check_zero_copy(torch.from_numpy(original), original)


def test_streamed_predictions_check() -> None:
    expected = np.array([1, 2, 3, 4])
    assert ex07.check_streamed_predictions(None, None, expected, 2) is False
    assert ex07.check_streamed_predictions([1, 0], expected.copy(), expected, 2) is True
    with pytest.raises(ExerciseFailed, match="exactly once"):
        ex07.check_streamed_predictions([0, 0], expected, expected, 2)
    with pytest.raises(ExerciseFailed, match="differ"):
        ex07.check_streamed_predictions([0, 1], expected[::-1], expected, 2)


# --- service: one local cluster -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Any:
    from labkit.services import ray as ray_service

    os.environ.pop("RAY_ADDRESS", None)
    handle = ray_service.start(num_cpus=2)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def cnn() -> Any:
    return digit_nets.trained(digit_nets.TrainConfig(arch="cnn", seed=0), progress=False)


@pytest.mark.service
def test_task_retried_after_its_worker_is_killed(cluster: Any, cnn: Any, tmp_path: Path) -> None:
    @ray.remote(num_cpus=1, max_retries=3)
    def classify(model: Any, batch: np.ndarray, item: int, attempts: str) -> np.ndarray:
        Path(attempts, f"{item}-{os.getpid()}").touch()
        deadline = time.monotonic() + 1.0
        preds = digit_nets.predict(model, batch)
        while time.monotonic() < deadline:
            preds = digit_nets.predict(model, batch)
        return preds

    x = load_digits().x_test[:200]
    shards = np.array_split(x, 3)
    model_ref = ray.put(cnn)
    refs = [classify.remote(model_ref, s, i, str(tmp_path)) for i, s in enumerate(shards)]
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("0-*")):
        assert time.monotonic() < deadline, "task 0 never started"
        time.sleep(0.02)
    os.kill(int(next(tmp_path.glob("0-*")).name.split("-")[1]), signal.SIGKILL)
    got = np.concatenate(ray.get(refs, timeout=120))
    assert (got == digit_nets.predict(cnn, x)).all(), "every shard's result came back, correct"
    assert len(list(tmp_path.glob("0-*"))) >= 2, "shard 0 was retried"


@pytest.mark.service
def test_actor_restarts_and_retries_its_calls(cluster: Any, cnn: Any) -> None:
    @ray.remote(num_cpus=1, max_restarts=2, max_task_retries=-1)
    class Classifier:
        def __init__(self) -> None:
            self.model = digit_nets.trained(digit_nets.TrainConfig(arch="cnn", seed=0), progress=False)

        def predict(self, batch: np.ndarray) -> np.ndarray:
            return digit_nets.predict(self.model, np.resize(batch, (len(batch) * 64, 1, 8, 8)))[: len(batch)]

        def pid(self) -> int:
            return os.getpid()

    x = load_digits().x_test[:400]
    batches = np.array_split(x, 40)
    actor = Classifier.remote()  # type: ignore[attr-defined]
    first = ray.get(actor.pid.remote())
    calls = [actor.predict.remote(b) for b in batches]
    ray.wait(calls, num_returns=5)
    os.kill(first, signal.SIGKILL)
    results = ray.get(calls, timeout=120)
    assert ray.get(actor.pid.remote()) != first, "the actor was restarted in a new process"
    lost = sum(not np.array_equal(r, digit_nets.predict(cnn, b)) for r, b in zip(results, batches))
    assert len(results) == len(batches) and lost == 0
    ray.kill(actor)


@pytest.mark.service
@pytest.mark.filterwarnings(SERVE_PYDANTIC)
def test_serve_answers_like_the_local_model(cluster: Any, cnn: Any) -> None:
    import httpx
    from ray import serve

    from labkit.measure import load

    @serve.deployment(ray_actor_options={"num_cpus": 0.5})
    class Digits:
        def __init__(self) -> None:
            self.model = digit_nets.trained(digit_nets.TrainConfig(arch="cnn", seed=0), progress=False)

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def predict(self, xs: list[np.ndarray]) -> list[list[int]]:
            sizes = np.cumsum([0, *(len(b) for b in xs)])
            preds = digit_nets.predict(self.model, np.concatenate(xs)).tolist()
            return [preds[a:b] for a, b in zip(sizes[:-1], sizes[1:])]

        async def __call__(self, request: Any) -> dict[str, Any]:
            return {"pred": await self.predict(wire.CODECS["ray-serve"].decode(await request.json()))}

    url = cluster.start_serve()
    assert url.startswith("http://127.0.0.1:")
    serve.run(Digits.bind(), name="digits", route_prefix="/digits")  # type: ignore[attr-defined]
    x = load_digits().x_test[:32]
    answer = httpx.post(f"{url}/digits", json=wire.CODECS["ray-serve"].encode(x), timeout=60).json()
    assert answer["pred"] == digit_nets.predict(cnn, x).tolist()
    result = load.closed_loop(
        f"{url}/digits",
        lambda i: wire.CODECS["ray-serve"].encode(x[i % 32 : i % 32 + 1]),
        concurrency=8,
        n_requests=48,
        check=lambda r: None if len(r.json()["pred"]) == 1 else "one digit in, one class out",
    )
    assert result.errors == 0, result.first_error()
    serve.delete("digits")


def test_the_local_cluster_listens_on_loopback_only(cluster: Any) -> None:
    """Ray's GCS, raylet, agents, workers and Serve proxy: every listening socket on 127.0.0.1 (DESIGN: servers bind loopback)."""
    import ipaddress

    import psutil

    cluster.processes()  # records the pids of every Ray process started so far
    sockets = []
    for pid in cluster.pids:
        try:
            sockets += [c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            continue
    assert sockets, "no Ray process listens at all: the check saw nothing"
    wide = sorted({a.ip for a in sockets if not ipaddress.ip_address(a.ip.removeprefix("::ffff:")).is_loopback})
    assert not wide, f"Ray listens beyond loopback on {wide}"
    assert ray.util.get_node_ip_address() == "127.0.0.1"


@pytest.mark.service
def test_zz_stop_leaves_no_ray_process(cluster: Any) -> None:
    from labkit.services import ray as ray_service

    assert cluster.processes(), "a local cluster has processes to account for"
    pids = set(cluster.pids)
    cluster.stop()
    assert cluster.leftover() == []
    assert ray_service.leftover_processes(pids) == []
    assert not ray.is_initialized()


def test_the_wide_models_two_forms_agree() -> None:
    """WideDigitNet (Ray, Triton, LitServe) and its MLP (TorchServe) are one network: same answers, same dtype."""
    import torch

    net, mlp = wide.wide_trained(width=512), wide.wide_mlp(width=512)
    x = load_digits().x_test[:32]
    with torch.inference_mode():
        mlp_labels = mlp(torch.tensor(np.asarray(x))).argmax(dim=1).numpy()
    assert (mlp_labels == net.predict(x)).all()
    assert net.w2.dtype == next(mlp.parameters()).dtype == getattr(torch, wide.DTYPE_NAME)
