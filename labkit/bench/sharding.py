"""``labkit bench sharding``: TinyGPT split over 2 ranks — correctness and the GPipe gain vs its formula.

Targets (ratios measured side by side in one run):
- tensor-parallel logits vs unsharded: max abs diff ≤ 1e-5, greedy tokens identical
- pipeline (GPipe) logits vs unsplit: max abs diff ≤ 1e-5
- GPipe gain at K=2 stages, M=4 microbatches at least 85 % of the ideal K·M/(M+K−1), capped at the
  usable cores (as notebook 03's verdict): measured/ideal ≥ 0.85
Also reported: the measured gain, the ideal, tensor-parallel speedup, 2-thread intra-op speedup.
Used in 03.
"""

from __future__ import annotations

from labkit import bench

__all__ = ["run", "setup"]

N_STAGES = 2
N_MICROBATCHES = 4
PROMPT = "Beautiful is"


def setup(fast: bool) -> dict[str, object]:
    """The sizes both the benchmark and notebook 03 use."""
    return {
        "check_batch_size": 64,  # logits compared on 64×64 tokens (float32 rounding grows with the batch)
        "batch_size": 256 if fast else 512,  # timed batch: enough work per microbatch to see the overlap
        "seq_len": 64,
        "n_new": 30 if fast else 60,
        "repeats": 3 if fast else 7,
        "microbatch_counts": (1, 2, 4, 8),
    }


def run(fast: bool = False) -> bench.Result:
    """Run tensor and pipeline parallelism on 2 ranks and compare with the unsharded model."""
    import torch

    from labkit.models import tinygpt
    from labkit.patterns import sharding
    from labkit.runtime.progress import tqdm

    s = setup(fast)
    steps = tqdm(total=4, desc="bench sharding", leave=False)
    torch.set_num_threads(1)
    model = tinygpt.trained(progress=False)
    x = tinygpt.encode_batch(int(s["batch_size"]), int(s["seq_len"]))  # type: ignore[call-overload]
    x_check = tinygpt.encode_batch(int(s["check_batch_size"]), int(s["seq_len"]))  # type: ignore[call-overload]
    prompt = torch.tensor(tinygpt.vocab().encode(PROMPT))
    steps.update()
    tp = sharding.tensor_parallel(model, x_check, prompt, x_timed=x, n_new=int(s["n_new"]), repeats=int(s["repeats"]), world_size=N_STAGES)  # type: ignore[call-overload]
    steps.update()
    pp = sharding.pipeline_parallel(model, x, microbatch_counts=(1, N_MICROBATCHES), repeats=int(s["repeats"]), world_size=N_STAGES)  # type: ignore[call-overload]
    steps.update()
    two_threads_s = sharding.intra_op_seconds(model, x, n_threads=2, repeats=int(s["repeats"]))  # type: ignore[call-overload]
    steps.update()
    steps.close()
    from labkit.measure import probe

    gain, ideal = pp.speedup(N_MICROBATCHES), min(pp.ideal(N_MICROBATCHES), probe.usable_cores())  # ranks beyond the cores take turns
    targets = [
        bench.Target("tensor-parallel max abs diff", tp.max_abs_diff, "", "<=", 1e-5),
        bench.Target("tensor-parallel greedy tokens identical", float(tp.tokens_identical), "", ">=", 1.0),
        bench.Target("pipeline max abs diff", pp.max_abs_diff, "", "<=", 1e-5),
        bench.Target(f"GPipe gain K={N_STAGES} M={N_MICROBATCHES}: measured/ideal", gain / ideal, "", ">=", 0.85),
        bench.Target(f"GPipe gain K={N_STAGES} M={N_MICROBATCHES}", gain, "x"),
        bench.Target(f"GPipe ideal K={N_STAGES} M={N_MICROBATCHES} (capped at the usable cores)", ideal, "x"),
        bench.Target("naive layer split speedup", pp.unsplit_s / pp.naive_s, "x"),
        bench.Target("tensor-parallel speedup (2 ranks)", tp.speedup, "x"),
        bench.Target("tensor-parallel time in all-reduce", tp.collectives_s / tp.forward_s, "of forward"),
        bench.Target("intra-op speedup (1 process, 2 threads)", tp.unsharded_s / two_threads_s, "x"),
    ]
    figures = {
        "backend": pp.backend,
        "batch_size": pp.batch_size,
        "seq_len": pp.seq_len,
        "unsplit_s": pp.unsplit_s,
        "naive_s": pp.naive_s,
        "gpipe_rows": pp.rows(),
        "tp_forward_s": tp.forward_s,
        "tp_collectives_s": tp.collectives_s,
        "tp_bytes_per_rank": tp.bytes_per_rank,
        "bytes_full": tp.bytes_full,
        "two_threads_s": two_threads_s,
    }
    return bench.Result("sharding", targets, figures)
