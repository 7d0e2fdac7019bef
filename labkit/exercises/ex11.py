"""Checks for notebook 11 (serving a language model): KV-cache memory, contiguous and paged waste.

    from labkit.exercises import ex11
    ex11.check_kv_bytes(answer)
    ex11.check_contiguous_waste(answer, requests)
    ex11.check_paged_waste(answer, requests, block_size=4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from labkit.exercises import is_unanswered, verdict

__all__ = ["EXERCISE_MODEL", "check_contiguous_waste", "check_kv_bytes", "check_paged_waste", "exercise_requests"]

# A Mistral-7B-size model (32 layers, 32 query heads sharing 8 KV heads of 128) in bfloat16,
# serving 8 sequences of 4096 tokens.
EXERCISE_MODEL = {"n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "dtype_bytes": 2, "batch": 8, "seq_len": 4096}
MAX_LEN = 64


def _number(answer: Any) -> float:
    try:
        return float(answer)
    except (TypeError, ValueError):
        return float("nan")


def check_kv_bytes(answer: Any) -> bool:
    """★ Bytes of KV cache for ``EXERCISE_MODEL``: layers × 2 × KV heads × head_dim × bytes × tokens."""
    m = EXERCISE_MODEL
    tokens = m["batch"] * m["seq_len"]
    right = m["n_layers"] * 2 * m["n_kv_heads"] * m["head_dim"] * m["dtype_bytes"] * tokens
    problem = None
    if not is_unanswered(answer):
        value = _number(answer)
        if not abs(value - right) <= 0.01 * right:
            problem = f"{answer!r} bytes is not the KV cache of this model"
            if abs(value - right / 2) <= 0.01 * right:
                problem += " (half of it: a cache holds a key AND a value per head)"
            elif abs(value - right * m["n_heads"] / m["n_kv_heads"]) <= 0.01 * right:
                problem += " (you counted the 32 query heads; with grouped-query attention only the 8 KV heads are cached)"
            elif abs(value - right / m["batch"]) <= 0.01 * right:
                problem += " (that is one sequence; the batch has 8)"
            elif abs(value - right / 2**30) <= 0.01 * right / 2**30:
                problem += " (give bytes, not GiB)"
    return verdict(
        "KV cache bytes",
        answer,
        problem,
        hint="layers × 2 × KV heads × head_dim × bytes per number × tokens, and tokens = batch × sequence length",
        success=f"{right:,} bytes = {right / 2**30:.1f} GiB: as much as the weights of a 2B-parameter model, for 8 sequences.",
    )


def exercise_requests() -> list[Any]:
    """Eight requests of a seeded trace (their prompt and output lengths are what matters)."""
    from labkit.llm import trace

    return trace.poisson(8, 100.0, seed=11)


def _lengths(requests: Sequence[Any]) -> list[int]:
    return [len(r.prompt) + r.max_new for r in requests]


def check_contiguous_waste(answer: Any, requests: Sequence[Any], max_len: int = MAX_LEN) -> bool:
    """★ With every request holding a ``max_len`` slot, the share of reserved slots empty when each has its full length."""
    lengths = _lengths(requests)
    right = 1 - sum(lengths) / (len(lengths) * max_len)
    problem = None
    if not is_unanswered(answer):
        value = _number(answer)
        if not abs(value - right) <= 1e-3:
            problem = f"{answer!r} is not the empty share of {len(lengths)} × {max_len} reserved slots"
            if abs(value - (1 - right)) <= 1e-3:
                problem += " (that is the share that holds tokens; the waste is the rest)"
            elif abs(value - right * 100) <= 0.1:
                problem += " (give a fraction between 0 and 1, not a percentage)"
    return verdict(
        "contiguous waste",
        answer,
        problem,
        hint=f"each request's tokens: prompt + output; reserved: {max_len} per request; waste = 1 − used / reserved",
        success=f"{right:.1%} of the reserved KV memory holds nothing: the vLLM paper measured 60–80 % on real traces.",
    )


def check_paged_waste(answer: Any, requests: Sequence[Any], block_size: int = 4) -> bool:
    """★★ The same share when each request holds whole blocks of ``block_size`` tokens instead."""
    import math

    lengths = _lengths(requests)
    reserved = sum(math.ceil(n / block_size) * block_size for n in lengths)
    right = 1 - sum(lengths) / reserved
    problem = None
    if not is_unanswered(answer):
        value = _number(answer)
        if not abs(value - right) <= 1e-3:
            problem = f"{answer!r} is not the empty share of the blocks these requests hold"
            floor = 1 - sum(lengths) / sum(n // block_size * block_size or block_size for n in lengths)
            if abs(value - floor) <= 1e-3:
                problem += " (round the block count up: a partly filled block is still a whole block)"
    return verdict(
        f"paged waste (blocks of {block_size})",
        answer,
        problem,
        hint="a request of n tokens holds ceil(n / block_size) blocks; only its last block can be partly empty",
        success=f"{right:.1%}: under block_size − 1 empty slots per request, whatever its length.",
    )
