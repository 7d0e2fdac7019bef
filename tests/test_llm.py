"""Serving TinyGPT (notebook 11): greedy tokens equal the plain loop in every engine configuration,
KV memory equals its formula, paged blocks waste little, schedulers behave as designed."""

from __future__ import annotations

import pytest
import torch

from labkit.errors import BadInput
from labkit.llm import decode, engine, kv_cache, paged, trace
from labkit.models import tinygpt

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model() -> tinygpt.TinyGPT:
    torch.set_num_threads(1)
    with torch.inference_mode(False):
        return tinygpt.trained(progress=False)


@pytest.fixture(scope="module")
def requests() -> list[trace.Request]:
    return trace.poisson(30, 400.0, seed=3)


@pytest.fixture(scope="module")
def reference(model: tinygpt.TinyGPT, requests: list[trace.Request]) -> dict[int, list[int]]:
    return {r.id: decode.generate(model, r.prompt, r.max_new) for r in requests}


def _unit_cost(n_seqs: int, n_tokens: int) -> float:
    return 1e-3  # every iteration costs 1 ms: the schedule no longer depends on this machine's speed


def test_cached_generation_equals_the_plain_loop(model: tinygpt.TinyGPT) -> None:
    v = tinygpt.vocab()
    for prompt in ["Beautiful is", "Now is better than", "S"]:
        ids = v.encode(prompt)
        plain = decode.generate(model, ids, 64 - len(ids))
        assert decode.generate_cached(model, ids, 64 - len(ids)) == plain
        assert decode.generate_cached(model, ids, 64 - len(ids), cache=paged.PagedCache(kv_cache.shape_of(model), 40, 2)) == plain
    assert v.decode(decode.generate(model, v.encode("Beautiful is"), 14)) == " better than ug"[:14]
    with pytest.raises(BadInput, match="block_size"):
        decode.generate(model, [1] * 60, 10)


def test_cached_logits_match_the_full_forward(model: tinygpt.TinyGPT) -> None:
    """A packed call (two prefills and a decode step at once) gives the full model's logits at every position."""
    x = tinygpt.encode_batch(3, 20, seed=1)
    cache = kv_cache.ContiguousCache(kv_cache.shape_of(model), 3, 64)
    for s in range(3):
        cache.add(s)
    decode.forward_cached(model, *decode.pack([x[2, :19].tolist()], [0], [2])[:3], cache)
    tokens, positions, ids, _ = decode.pack([x[0].tolist(), x[1, :7].tolist(), [int(x[2, 19])]], [0, 0, 19], [0, 1, 2])
    out = decode.forward_cached(model, tokens, positions, ids, cache)
    with torch.no_grad():
        full = model(x)
    assert float((out[:20] - full[0]).abs().max()) <= 1e-5
    assert float((out[20:27] - full[1, :7]).abs().max()) <= 1e-5
    assert float((out[27] - full[2, 19]).abs().max()) <= 1e-5


@pytest.mark.parametrize("policy", engine.POLICIES)
@pytest.mark.parametrize("cache", ["contiguous", "paged"])
def test_every_engine_gives_the_plain_loops_tokens(model: tinygpt.TinyGPT, requests: list[trace.Request], reference: dict[int, list[int]], policy: str, cache: str) -> None:
    for max_batch, block_size in [(1, 2), (3, 1), (8, 4)]:
        run = engine.Engine(model, policy, max_batch, cache, block_size).run(requests)
        assert run.tokens() == reference, f"{policy}/{cache} max_batch={max_batch} block_size={block_size}"
        assert all(len(r.tokens) == len(r.token_times_s) for r in run.results)
        assert max(len(x) for x in run.lengths) <= max_batch


def test_requests_join_and_leave_a_running_batch(model: tinygpt.TinyGPT, requests: list[trace.Request]) -> None:
    cont = engine.Engine(model, "continuous", 4, "paged", 2, cost_s=_unit_cost).run(requests)
    mixed = [i for i, (n, x) in enumerate(zip(cont.joined, cont.lengths)) if 0 < n < len(x)]
    assert mixed, "continuous: some iterations run a prefill next to sequences that are decoding"
    left = [i for i in range(1, len(cont.lengths)) if len(cont.lengths[i]) < len(cont.lengths[i - 1]) + cont.joined[i]]
    assert left, "continuous: sequences leave while others go on"
    static = engine.Engine(model, "static", 4, cost_s=_unit_cost).run(requests)
    assert all(n in (0, len(x)) for n, x in zip(static.joined, static.lengths)), "static: a batch starts all together, nobody joins it later"
    assert static.iterations > cont.iterations


def test_continuous_beats_static_on_a_burst_by_schedule_alone(model: tinygpt.TinyGPT) -> None:
    burst = trace.poisson(120, float("inf"), seed=0)
    static = engine.Engine(model, "static", 8, cost_s=_unit_cost).run(burst)
    cont = engine.Engine(model, "continuous", 8, cost_s=_unit_cost).run(burst)
    assert cont.tokens_per_s / static.tokens_per_s >= 2.0
    assert cont.ttft.p50 <= static.ttft.p50
    assert cont.tokens_per_iteration > 2 * static.tokens_per_iteration
    assert static.mean_batch == 8  # finished requests keep their row until the batch ends


def test_kv_memory_formula_equals_what_torch_allocates(model: tinygpt.TinyGPT) -> None:
    shape = kv_cache.shape_of(model)
    assert (shape.n_layers, shape.n_kv_heads, shape.head_dim, shape.dtype_bytes) == (2, 4, 16, 4)
    cache = kv_cache.ContiguousCache(shape, 8, 64)
    assert cache.allocated_bytes() == kv_cache.kv_bytes(shape, 8 * 64) == 2 * 2 * 4 * 16 * 4 * 512
    pool = paged.PagedCache(shape, 100, 4)
    assert pool.allocated_bytes() == kv_cache.kv_bytes(shape, 400)
    gpt3 = kv_cache.MODEL_SHAPES["GPT-3 175B"]
    assert kv_cache.kv_bytes(gpt3, 2048) == 96 * 2 * 96 * 128 * 2 * 2048  # ≈ 9.7 GB for one 2048-token sequence
    llama = kv_cache.MODEL_SHAPES["Llama 70B (GQA)"]
    assert kv_cache.kv_bytes(llama, 1) == 80 * 2 * 8 * 128 * 2  # 320 KiB per token: GQA's 8 KV heads
    with pytest.raises(BadInput):
        kv_cache.kv_bytes(gpt3, -1)


def test_block_allocator_and_tables() -> None:
    alloc = paged.BlockAllocator(4)
    alloc.add(1)
    alloc.add(2)
    alloc.grow(1, 2)
    alloc.grow(2, 1)
    assert alloc.tables == {1: [0, 1], 2: [2]} and alloc.used_blocks == 3
    alloc.release(1)
    alloc.grow(2, 3)
    assert alloc.tables[2] == [2, 0, 1]  # freed blocks are reused: a table need not be contiguous
    with pytest.raises(BadInput, match="out of KV blocks"):
        alloc.grow(2, 5)
    assert paged.blocks_needed(9, 4) == 3
    assert paged.paged_waste([9], 4) == pytest.approx(3 / 12)
    assert kv_cache.contiguous_waste([16, 48], 64) == pytest.approx(0.5)


def test_paged_waste_is_small_and_contiguous_waste_large(model: tinygpt.TinyGPT) -> None:
    reqs = trace.poisson(80, 500.0, seed=0)
    run = engine.Engine(model, "continuous", 8, "paged", 2, cost_s=_unit_cost).run(reqs)
    assert run.waste == pytest.approx(run.waste_if("paged"))  # the allocator held exactly ceil(len / block) blocks
    assert run.waste <= 0.05
    assert run.waste_if("contiguous") >= 0.4
    assert run.concurrency_gain() >= 2.0
    contiguous = engine.Engine(model, "continuous", 8, "contiguous", cost_s=_unit_cost).run(reqs)
    assert contiguous.waste == pytest.approx(contiguous.waste_if("contiguous"))


def test_trace_is_reproducible_and_bounded() -> None:
    a, b = trace.poisson(50, 100.0, seed=7), trace.poisson(50, 100.0, seed=7)
    assert a == b and a != trace.poisson(50, 100.0, seed=8)
    assert all(r.total_len <= 64 for r in a)
    gaps = [y.arrival_s - x.arrival_s for x, y in zip(a, a[1:])]
    assert min(gaps) >= 0 and 0.003 < sum(gaps) / len(gaps) < 0.03  # mean gap 1/rate = 10 ms
    assert {r.arrival_s for r in trace.poisson(5, float("inf"))} == {0.0}
    with pytest.raises(BadInput):
        trace.poisson(0, 1.0)


def test_engine_refuses_bad_settings(model: tinygpt.TinyGPT) -> None:
    with pytest.raises(BadInput, match="policy"):
        engine.Engine(model, "greedy")
    with pytest.raises(BadInput, match="cache"):
        engine.Engine(model, cache="ring")
    too_long = [trace.Request(0, 0.0, (1,) * 40, 30)]
    with pytest.raises(BadInput, match="max_len"):
        engine.Engine(model).run(too_long)


def test_offered_load_sweep_has_both_policies_at_every_load(model: tinygpt.TinyGPT) -> None:
    from labkit.llm import sweep

    sw = sweep.offered_load(model, loads=(0.5, 2.0), n_requests=30, capacity=300.0)
    assert sw.loads == [0.5, 2.0] and len(sw.points) == 4
    assert sw.at("static", 2.0).tokens_per_s > 0
    assert len(sw.series("continuous", "ttft_p50_ms")) == 2
    with pytest.raises(BadInput):
        sw.at("static", 1.0)


def test_sharded_decode_on_two_ranks_matches_one_process(model: tinygpt.TinyGPT) -> None:
    from labkit.llm import sharded
    from labkit.patterns import sharding

    prompts = [tinygpt.vocab().encode("Errors should"), tinygpt.vocab().encode("If the")]
    result = sharded.tensor_parallel_decode(model, prompts, n_new=12)
    assert result.max_abs_diff <= 1e-5
    assert result.tokens_identical
    assert result.tokens == [decode.generate(model, p, 12) for p in prompts]
    assert result.kv_heads_per_rank == [2, 2] and sum(result.cache_bytes_per_rank) == result.cache_bytes_full
    assert result.decode_allreduce_s > 0 and result.prefill_allreduce_s > 0
    assert sharding.live_ranks() == []
