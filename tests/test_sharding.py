"""Model sharding (notebook 03): TinyGPT, tensor and pipeline parallelism on 2 gloo ranks, crash handling."""

from __future__ import annotations

import psutil
import pytest
import torch

from labkit.errors import BadInput, WorkerFailed
from labkit.exercises import ExerciseFailed, ex03
from labkit.measure import timing
from labkit.models import tinygpt
from labkit.patterns import sharding

pytestmark = pytest.mark.unit
TOL = 1e-5


@pytest.fixture(scope="module")
def model() -> tinygpt.TinyGPT:
    with torch.inference_mode(False):
        return tinygpt.trained(progress=False)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return tinygpt.encode_batch(8, 32)


def _no_children() -> list[psutil.Process]:
    """Child processes still running, except multiprocessing's resource tracker (one per interpreter, by design)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    assert sharding.live_ranks() == []
    return out


def test_corpus_ships_with_python_and_round_trips() -> None:
    text = tinygpt.corpus()
    assert text.startswith("The Zen of Python")
    v = tinygpt.vocab()
    assert v.decode(v.encode(text)) == text
    with pytest.raises(BadInput):
        v.encode("§")


def test_trained_model_recites_the_zen(model: tinygpt.TinyGPT) -> None:
    out = tinygpt.generate_text(model, "Beautiful is", 20)
    assert out.startswith("Beautiful is better than")


def test_memory_estimate_and_gpt3_gpus() -> None:
    est = tinygpt.memory_estimate(1000, 8, 2, 2, 4, 16, "bfloat16", n_shards=2)
    assert est["weights"] == 1000
    assert est["total"] == pytest.approx(est["weights"] + est["kv_cache"] + est["activations"])
    assert [tinygpt.gpus_needed(175e9, d) for d in ("float32", "bfloat16", "int8")] == [9, 5, 3]
    with pytest.raises(BadInput):
        tinygpt.memory_estimate(1, 1, 1, 1, 1, 1, "float8")


def test_gpipe_formula() -> None:
    assert sharding.gpipe_ideal_speedup(2, 4) == pytest.approx(1.6)
    assert sharding.bubble_fraction(2, 4) == pytest.approx(0.2)
    assert sharding.gpipe_ideal_speedup(2, 1) == pytest.approx(1.0)


def test_split_stages_compose_to_the_model(model: tinygpt.TinyGPT, batch: torch.Tensor) -> None:
    stages = sharding.split_stages(model, 2)
    with torch.inference_mode():
        h = batch
        for s in stages:
            h = s(h)
        assert torch.equal(h, model(batch))
    with pytest.raises(BadInput):
        sharding.split_stages(model, model.cfg.n_layers + 1)


def test_tensor_parallel_matches_unsharded(model: tinygpt.TinyGPT, batch: torch.Tensor) -> None:
    prompt = torch.tensor(tinygpt.vocab().encode("Errors should"))
    r = sharding.tensor_parallel(model, batch, prompt, n_new=20, repeats=1, world_size=2, backend="gloo")
    assert r.max_abs_diff <= TOL
    assert r.tokens_identical
    assert tinygpt.vocab().decode(r.tokens).startswith("Errors should never")
    assert r.forward_range_s[0] == r.forward_s <= r.forward_range_s[1]  # the best repeat is the low end of the range
    assert all(n < r.n_params_full for n in r.n_params_per_rank)
    assert _no_children() == []


def test_pipeline_matches_unsplit(model: tinygpt.TinyGPT, batch: torch.Tensor) -> None:
    r = sharding.pipeline_parallel(model, batch, microbatch_counts=(1, 4), repeats=2, world_size=2, backend="gloo")
    assert r.max_abs_diff <= TOL
    assert set(r.gpipe_s) == {1, 4}
    # every repeat is kept (the slowest rank's), and the reported figure is the fastest of them
    assert r.spread().n == r.spread(4).n == 2
    assert r.naive_s == r.spread().low and r.gpipe_s[4] == r.spread(4).low
    # GPipe with M=4 ran 4 microbatches through each of the 2 stages
    assert len(r.timelines[4]) == 8
    assert r.timelines[4].workers() == ["rank 0", "rank 1"]
    assert _no_children() == []


def test_crashing_rank_fails_fast_with_its_error() -> None:
    with timing.timed() as t:
        with pytest.raises(WorkerFailed) as info:
            sharding.run_ranks(sharding.crash_worker, (1,), world_size=2, backend="gloo", timeout_s=90)
    assert info.value.worker == "rank 1"
    assert "simulated failure on rank 1" in str(info.value)
    assert t.elapsed_s < 90
    assert _no_children() == []


def test_hanging_rank_is_killed_at_the_timeout() -> None:
    # no rank crashes, but starting them takes longer than the timeout: they are killed, not waited for
    with pytest.raises(WorkerFailed, match="still running"):
        sharding.run_ranks(sharding.crash_worker, (5,), world_size=2, backend="gloo", timeout_s=0.5)
    assert _no_children() == []


def test_exercise_checks_both_ways() -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    assert ex03.check_bubble_fraction(None) is False
    assert ex03.check_bubble_fraction(3 / 11, 4, 8) is True
    with pytest.raises(ExerciseFailed, match="Hint"):
        ex03.check_bubble_fraction(3 / 8, 4, 8)
    assert ex03.check_gpt3_gpus(None) is False
    assert ex03.check_gpt3_gpus(5) is True
    with pytest.raises(ExerciseFailed):
        ex03.check_gpt3_gpus(4)
    assert ex03.check_mlp_plan(None) is False
    assert ex03.check_mlp_plan({"0": ColwiseParallel(), "2": RowwiseParallel()}) is True
    for wrong in ({"0": RowwiseParallel(), "2": ColwiseParallel()}, {"0": ColwiseParallel()}, {}, {"0": ColwiseParallel(), "2": ColwiseParallel()}):
        with pytest.raises(ExerciseFailed):
            ex03.check_mlp_plan(wrong)


def test_bubble_fraction_above_one_is_refused() -> None:
    with pytest.raises(ExerciseFailed, match="impossible"):
        ex03.check_bubble_fraction(1.5, 4, 8)
