"""Data parallelism (notebook 04): shards, replica consistency, order, failures, no leftovers."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from labkit.errors import BadInput, WorkerFailed
from labkit.exercises import ExerciseFailed, ex04
from labkit.patterns import data_parallel as dp

N_ITEMS = 3_000


def _children() -> list[psutil.Process]:
    """Child processes of this test process, except multiprocessing's resource tracker."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return dp.reference_logits(N_ITEMS)


@pytest.fixture(scope="module")
def pool():  # type: ignore[no-untyped-def]
    with dp.ReplicaPool(n_replicas=2, n_items=N_ITEMS) as p:
        _MODULE_POOL_PIDS.update(p.pids)
        yield p
    assert not [c for c in _children() if c.pid in p.pids], "replica processes left running"


def test_shards_cover_everything_once_in_order() -> None:
    for n, r in [(10, 3), (7, 7), (3, 5), (1000, 2)]:
        shards = dp.shard_ranges(n, r)
        assert [i for a, b in shards for i in range(a, b)] == list(range(n))
        assert max(b - a for a, b in shards) - min(b - a for a, b in shards) <= 1
    uneven = dp.shard_ranges(100, 2, weights=[3, 1])
    assert uneven == [(0, 75), (75, 100)]
    assert [i for a, b in dp.chunk_ranges(11, 4) for i in range(a, b)] == list(range(11))
    with pytest.raises(BadInput):
        dp.shard_ranges(10, 0)
    with pytest.raises(BadInput):
        dp.chunk_ranges(10, 0)


def test_dataset_is_deterministic() -> None:
    a, b = dp.make_dataset(500, seed=1), dp.make_dataset(500, seed=1)
    assert a.shape == (500, 1, 8, 8) and a.dtype == np.float32
    assert (a == b).all() and not (a == dp.make_dataset(500, seed=2)).all()


def test_amdahl() -> None:
    assert dp.amdahl_speedup(0.0, 4) == pytest.approx(4.0)
    assert dp.amdahl_speedup(1.0, 4) == pytest.approx(1.0)
    assert dp.amdahl_speedup(0.1, 2) == pytest.approx(1 / 0.55)


def test_replica_weights_identical(pool: dp.ReplicaPool) -> None:
    assert len(pool.hashes) == 2 and len(set(pool.hashes)) == 1


@pytest.mark.parametrize("mode", ["one", "static", "uneven", "queue"])
def test_results_equal_single_replica_in_order(pool: dp.ReplicaPool, reference: np.ndarray, mode: str) -> None:
    run = {
        "one": lambda: pool.run_static(n_replicas=1),
        "static": lambda: pool.run_static(),
        "uneven": lambda: pool.run_static(weights=[3, 1]),
        "queue": lambda: pool.run_queue(chunk_size=128),
    }[mode]()
    assert run.logits.shape == reference.shape
    assert np.abs(run.logits - reference).max() <= 1e-5
    assert (run.predictions == reference.argmax(1)).all()
    covered = sorted(s.item for s in run.timeline if s.stage == "infer")
    assert [i for a, b in covered for i in range(a, b)] == list(range(N_ITEMS))
    if mode == "queue":
        assert sum(run.chunks_per_replica.values()) == len(dp.chunk_ranges(N_ITEMS, 128))


def test_crashing_replica_raises_clear_error_and_dead_replica_is_reported() -> None:
    with dp.ReplicaPool(n_replicas=2, n_items=500) as p:
        with pytest.raises(WorkerFailed, match="replica-1.*fault injected"):
            p.inject_fault(1, "raise", timeout_s=60)
        with pytest.raises(WorkerFailed, match="replica-0.*exit code 3"):
            p.inject_fault(0, "exit", timeout_s=60)
        with pytest.raises(WorkerFailed):
            p.run_static()
    assert not [c for c in _children() if c.pid in p.pids]


def test_distributed_equals_single_replica(reference: np.ndarray) -> None:
    before = {c.pid for c in _children()}
    run = dp.run_distributed(n_ranks=2, n_items=N_ITEMS, backend="gloo", timeout_s=240)
    assert len(set(run.hashes)) == 1 and len(run.hashes) == 2
    assert np.abs(run.logits - reference).max() <= 1e-5
    assert {s.stage for s in run.timeline} >= {"scatter", "infer", "gather"}
    assert not [c for c in _children() if c.pid not in before]


def test_distributed_rank_failure_raises_not_hangs() -> None:
    before = {c.pid for c in _children()}
    with pytest.raises(WorkerFailed, match="rank-1.*fault injected"):
        dp.run_distributed(n_ranks=2, n_items=500, timeout_s=240, fail_rank=1)
    assert not [c for c in _children() if c.pid not in before]


def test_nothing_left_running() -> None:
    alive = [c for c in _children() if c.pid not in _MODULE_POOL_PIDS]
    assert not alive, f"processes left running: {alive}"


_MODULE_POOL_PIDS: set[int] = set()


def test_exercises_both_ways() -> None:
    assert ex04.check_amdahl(0.1, 4, None) is False
    assert ex04.check_amdahl(0.1, 4, 1 / (0.1 + 0.9 / 4)) is True
    with pytest.raises(ExerciseFailed, match="Hint"):
        ex04.check_amdahl(0.1, 4, 4.0)
    assert ex04.check_shards(None) is False
    assert ex04.check_shards(dp.shard_ranges) is True
    with pytest.raises(ExerciseFailed, match="cover"):
        ex04.check_shards(lambda n, r: [(0, n // r)] * r)
    assert ex04.check_static_efficiency([3, 1], 2 / 3) is True
    with pytest.raises(ExerciseFailed):
        ex04.check_static_efficiency([3, 1], 1.0)


def test_exercises_refuse_impossible_numbers() -> None:
    with pytest.raises(ExerciseFailed, match="impossible"):
        ex04.check_amdahl(-0.2, 8, 10.0)  # a negative serial fraction was mis-measured
    with pytest.raises(ExerciseFailed, match="impossible"):
        ex04.check_amdahl(0.1, 8, 9.0)  # above N
    with pytest.raises(ExerciseFailed, match="impossible"):
        ex04.check_static_efficiency([3, 1], 1.5)
