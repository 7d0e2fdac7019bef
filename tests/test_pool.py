"""ProcessPoolExecutor helpers (notebook 05): models once per worker, order, nothing lost, clear errors."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from labkit import data
from labkit.errors import BadInput, WorkerFailed
from labkit.exercises import ExerciseFailed, ex05
from labkit.models import digit_nets
from labkit.patterns import data_parallel as dp
from labkit.patterns import pool as lp

N_ITEMS = 2_000


def _children() -> set[int]:
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _expected(arch: str) -> np.ndarray:
    model = digit_nets.trained(digit_nets.TrainConfig(arch=arch), progress=False)
    return digit_nets.predict(model, dp.make_dataset(N_ITEMS))


def test_models_loaded_once_per_worker_results_in_order() -> None:
    before = _children()
    with lp.start_pool(n_workers=2, n_items=N_ITEMS) as pool:
        assert len(pool.workers) == 2 and all(w["threads"] == 1 for w in pool.workers)
        assert all(w["models"] == ["cnn", "mlp"] for w in pool.workers)
        starts = list(range(0, N_ITEMS, 250))
        for arch in ("cnn", "mlp"):
            out = list(pool.executor.map(lp.classify_range, [arch] * len(starts), starts, [s + 250 for s in starts], chunksize=2))
            assert [o[0] for o in out] == starts
            assert (np.concatenate([o[1] for o in out]) == _expected(arch)).all()
        x = data.load_digits().x_test
        preds, span = pool.executor.submit(lp.classify, "mlp", x).result()
        assert (preds == digit_nets.predict(digit_nets.trained(digit_nets.TrainConfig(arch="mlp"), progress=False), x)).all()
        assert span["stage"] == "mlp" and span["end"] >= span["start"]
        # the same pids answered every call: the models were loaded once, by the initializer
        pids = {pool.executor.submit(lp.worker_info).result()["pid"] for _ in range(6)}
        assert pids <= set(pool.pids)
    assert _children() <= before


def test_killed_worker_loses_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = _children()
    token = str(tmp_path / "die-once")
    starts = list(range(0, N_ITEMS, 200))
    with lp.ResilientPool(n_workers=2, n_items=N_ITEMS, model_names=("cnn",)) as rp:
        out = rp.map(lp.classify_range, ["cnn"] * len(starts), starts, [s + 200 for s in starts], [token] * len(starts))
        assert rp.restarts == 1 and rp.resubmitted >= 1
        assert rp.completed == len(starts)
    assert [o[0] for o in out] == starts
    assert (np.concatenate([o[1] for o in out]) == _expected("cnn")).all()
    assert _children() <= before


def test_task_error_is_clear_and_does_not_hang() -> None:
    before = _children()
    with lp.ResilientPool(n_workers=1, model_names=("mlp",), timeout_s=120) as rp:
        with pytest.raises(WorkerFailed, match=r"task \d \(fail\).*boom"):
            rp.map(lp.fail, ["boom", "boom"])
    assert _children() <= before


def test_worker_dying_every_time_gives_up_with_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = _children()
    rp = lp.ResilientPool(n_workers=1, model_names=("mlp",), n_items=100, max_restarts=1)
    with pytest.raises(WorkerFailed, match="workers died 2 times; 1 of 1 tasks unfinished"):
        rp.map(lp.die, ["kill"])
    rp.close()
    assert _children() <= before


def test_bad_arguments() -> None:
    with pytest.raises(BadInput):
        lp.start_pool(n_workers=0)
    with pytest.raises(BadInput, match="unknown model"):
        lp.start_pool(model_names=("resnet",))
    with pytest.raises(BadInput):
        lp.fork_demo("spoon")


def test_fork_demo_never_hangs_the_caller() -> None:
    result = lp.fork_demo("lock", timeout_s=3)
    assert result["hung"] is True and result["elapsed_s"] < 30


def test_exercises_both_ways() -> None:
    assert ex05.check_threads_per_worker(None) is False
    assert ex05.check_threads_per_worker(lambda c, n: max(1, c // n)) is True
    with pytest.raises(ExerciseFailed, match="oversubscribes"):
        ex05.check_threads_per_worker(lambda c, n: c)
    assert ex05.check_in_order(None) is False

    def in_order(ex, fn, items):  # type: ignore[no-untyped-def]
        from concurrent.futures import as_completed

        futs = {ex.submit(fn, x): i for i, x in enumerate(items)}
        out = [None] * len(items)
        for f in as_completed(futs):
            out[futs[f]] = f.result()
        return out

    assert ex05.check_in_order(in_order) is True

    def completion_order(ex, fn, items):  # type: ignore[no-untyped-def]
        from concurrent.futures import as_completed

        return [f.result() for f in as_completed([ex.submit(fn, x) for x in items])]

    with pytest.raises(ExerciseFailed, match="input order"):
        ex05.check_in_order(completion_order)
    x = np.zeros((1000, 1, 8, 8), np.float32)
    assert ex05.check_pickled_mb(x, None) is False
    assert ex05.check_pickled_mb(x, x.nbytes / 2**20) is True
    with pytest.raises(ExerciseFailed):
        ex05.check_pickled_mb(x, 10.0)
