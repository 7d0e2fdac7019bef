"""Ensembles: combining rules on hand-made logits (ties included), quality, and the process runner."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from labkit import bench, data
from labkit.errors import BadInput, WorkerFailed
from labkit.exercises import ExerciseFailed, ex02
from labkit.patterns import ensemble


def logits(*members: list[list[float]]) -> np.ndarray:
    """Stack hand-written member logits into (n_members, n, n_classes)."""
    return np.array(members, dtype=np.float64)


# ------------------------------------------------------------------ combining rules


def test_majority_vote_counts_top_classes() -> None:
    lg = logits([[3, 0, 0]], [[0, 2, 0]], [[0, 1, 0]])
    assert ensemble.majority_vote(lg).tolist() == [1]


def test_vote_tie_goes_to_higher_mean_probability() -> None:
    confident_0 = logits([[4, 0, 0]], [[0, 1, 0]])  # one vote each; member 0 is surer
    confident_1 = logits([[1, 0, 0]], [[0, 4, 0]])
    assert ensemble.majority_vote(confident_0).tolist() == [0]
    assert ensemble.majority_vote(confident_1).tolist() == [1]


def test_vote_exact_tie_goes_to_lowest_class() -> None:
    symmetric = logits([[0, 0, 1]], [[0, 1, 0]])  # votes 2 and 1, equal mean probabilities
    assert ensemble.majority_vote(symmetric).tolist() == [1]
    three_way = logits([[0, 0, 1]], [[1, 0, 0]], [[0, 1, 0]])
    assert ensemble.majority_vote(three_way).tolist() == [0]


def test_vote_tie_only_among_tied_classes() -> None:
    # classes 1 and 2 tie on votes; class 0 has the highest mean probability but no tie-level votes
    lg = logits([[5, 4.9, 0]], [[5, 0, 4.9]], [[0, 1, 0]], [[0, 0, 1]])
    # votes: class 0 twice (members 0, 1), class 1 once, class 2 once → 0 wins outright
    assert ensemble.majority_vote(lg).tolist() == [0]
    lg2 = logits([[0, 3, 0]], [[0, 0, 1]], [[9, 0, 0.5]], [[0, 0, 2]], [[0, 2, 0]])
    # votes: 1 → 2, 2 → 2, 0 → 1; tie between 1 and 2 (class 0 excluded though confident)
    mean = ensemble.softmax(lg2).mean(axis=0)[0]
    assert ensemble.majority_vote(lg2).tolist() == [1 if mean[1] > mean[2] else 2]
    assert ensemble.majority_vote(lg2).tolist() != [0]


def test_weighted_vote_weights_change_the_winner() -> None:
    lg = logits([[2, 0, 0]], [[0, 2, 0]], [[0, 2, 0]])
    assert ensemble.weighted_vote(lg, [0.5, 0.3, 0.3]).tolist() == [1]
    assert ensemble.weighted_vote(lg, [0.7, 0.3, 0.3]).tolist() == [0]
    # 0.6 == 0.3 + 0.3: a weighted tie, broken by mean probability (class 1: two members)
    assert ensemble.weighted_vote(lg, [0.6, 0.3, 0.3]).tolist() == [1]
    assert ensemble.weighted_vote(lg, [1, 1, 1]).tolist() == ensemble.majority_vote(lg).tolist()


def test_soft_average_can_disagree_with_the_vote() -> None:
    lg = logits([[6, 0, 0]], [[0, 0.2, 0]], [[0, 0.2, 0]])
    assert ensemble.majority_vote(lg).tolist() == [1]
    assert ensemble.soft_average(lg).tolist() == [0]


def test_rules_on_a_batch_and_by_name() -> None:
    rng = np.random.default_rng(0)
    lg = rng.normal(size=(5, 50, 10))
    assert ensemble.combine(lg, "soft").shape == (50,)
    assert (ensemble.combine(lg, "vote") == ensemble.majority_vote(lg)).all()
    assert (ensemble.combine(lg, "weighted", np.ones(5)) == ensemble.majority_vote(lg)).all()
    single = lg[:1]
    for rule in ensemble.RULES:
        assert (ensemble.combine(single, rule, [1.0]) == single[0].argmax(1)).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda: ensemble.combine(np.zeros((2, 3, 4)), "median"),
        lambda: ensemble.combine(np.zeros((2, 3, 4)), "weighted"),
        lambda: ensemble.weighted_vote(np.zeros((2, 3, 4)), [1.0]),
        lambda: ensemble.soft_average(np.zeros((3, 4))),
        lambda: ensemble.corrupt(np.zeros((1, 1, 8, 8)), 0.1, kind="blur"),
        lambda: ensemble.bagged_configs(0),
        lambda: ensemble.compare_runners([], None, np.zeros((1, 1, 8, 8)), stat="mean"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_is_named(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadInput):
        call()


def test_vote_weights_and_corrupt() -> None:
    w = ensemble.vote_weights([0.1, 0.5, 0.9])
    assert w[0] == pytest.approx(0.0, abs=1e-9)  # chance level for 10 classes: no say
    assert w[1] < w[2]
    x = np.full((4, 1, 8, 8), 0.5, np.float32)
    assert (ensemble.corrupt(x, 0.0) == x).all()
    noisy = ensemble.corrupt(x, 0.3, seed=1)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not (noisy == x).all()
    assert (ensemble.corrupt(x, 1.0, kind="dropout") == 0).all()


# ------------------------------------------------------------------ real members


@pytest.fixture(scope="module")
def bagged() -> tuple[list, list]:  # type: ignore[type-arg]
    configs = ensemble.bagged_configs(5)
    return configs, ensemble.load_members(configs, progress=False)


def test_ensemble_beats_the_average_member_on_test(bagged) -> None:  # type: ignore[no-untyped-def]
    _, members = bagged
    d = data.load_digits()
    curve = ensemble.accuracy_vs_members(
        ensemble.run_sequential(members, d.x_val), d.y_val, ensemble.run_sequential(members, d.x_test), d.y_test
    )
    assert curve["n_members"] == [1, 2, 3, 4, 5]
    for rule in ensemble.RULES:
        assert curve[rule][-1] > curve["average member"][-1], rule
    assert curve["soft"][-1] >= curve["best member (val)"][-1] - 0.01


def test_boosting_beats_its_first_weak_member() -> None:
    boosted = ensemble.samme(4, progress=False)
    assert len(boosted.configs) == len(boosted.alphas) >= 3
    d = data.load_digits()
    lg = ensemble.run_sequential(ensemble.load_members(boosted.configs, progress=False), d.x_test)
    first = (lg[0].argmax(1) == d.y_test).mean()
    assert (ensemble.weighted_vote(lg, boosted.alphas) == d.y_test).mean() > first


def test_threads_and_processes_match_sequential_and_leave_nothing(bagged) -> None:  # type: ignore[no-untyped-def]
    configs, members = bagged
    x = data.load_digits().x_test[:300]
    seq = ensemble.run_sequential(members, x)
    assert np.array_equal(ensemble.run_threads(members, x, n_workers=2).argmax(2), seq.argmax(2))
    with ensemble.MemberPool(configs, n_workers=2) as pool:
        pids = pool.pids()
        assert [s.members for s in pool.stats] == [[0, 2, 4], [1, 3]]
        par = pool.predict_logits(x)
        assert np.array_equal(par.argmax(2), seq.argmax(2))
        np.testing.assert_allclose(par, seq, atol=1e-5)
        some = pool.predict_logits(x, members=[3, 0])
        np.testing.assert_allclose(some, seq[[3, 0]], atol=1e-5)
        assert all(s.rss_mb > 50 for s in pool.stats)
        with pytest.raises(WorkerFailed, match="proc-0"):
            pool.predict_logits(np.zeros((4, 3), np.float32))  # wrong shape: the worker's error surfaces, named
        np.testing.assert_allclose(pool.predict_logits(x[:10]), seq[:, :10], atol=1e-5)  # still usable
        times = ensemble.compare_runners(members, pool, x, repeats=1)
        assert set(times) == {"sequential", "threads", "processes"}
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    with pytest.raises(BadInput):
        pool.predict_logits(x)


def test_benchmark_is_registered() -> None:
    from labkit.bench import ensemble as ensemble_bench

    assert bench.available()["ensemble"]
    assert ensemble_bench.SPEEDUP_TARGET == 1.85 and ensemble_bench.N_MEMBERS == 2


# ------------------------------------------------------------------ exercises


def test_exercise_checks_both_ways(capsys) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    lg = rng.normal(size=(3, 20, 10)) * 3
    assert ex02.check_soft_average(None, lg) is False
    assert "not done yet" in capsys.readouterr().out
    assert ex02.check_soft_average(ensemble.soft_average(lg), lg) is True
    with pytest.raises(ExerciseFailed, match="differ"):
        ex02.check_soft_average(lg[0].argmax(1), lg)

    assert ex02.check_ideal_speedup(None) is False
    assert ex02.check_ideal_speedup([1, 2, 1.5, 2, 5 / 3, 2]) is True
    with pytest.raises(ExerciseFailed, match="3 member"):
        ex02.check_ideal_speedup([1, 2, 3])

    errors = [0.3, 0.6]
    good = [0.5 * (np.log(0.7 / 0.3) + np.log(9)), 0.5 * (np.log(0.4 / 0.6) + np.log(9))]
    assert ex02.check_samme_alphas(None, errors, 0.5) is False
    assert ex02.check_samme_alphas(good, errors, 0.5) is True
    with pytest.raises(ExerciseFailed, match="K - 1"):
        ex02.check_samme_alphas([0.5 * np.log(0.7 / 0.3), 0.5 * np.log(0.4 / 0.6)], errors, 0.5)


def test_ideal_speedup_above_the_cores_is_refused() -> None:
    assert ex02.check_ideal_speedup([1, 2, 1.5, 2], n_workers=2, cores=2) is True
    with pytest.raises(ExerciseFailed, match="impossible on 1 usable core"):
        ex02.check_ideal_speedup([1, 2, 1.5, 2], n_workers=2, cores=1)
