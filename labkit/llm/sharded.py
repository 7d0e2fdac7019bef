"""Tensor-parallel decode: TinyGPT on 2 ranks, each holding half of the heads and their half of the KV cache.

The split is notebook 03's (Megatron-style), written out by hand so the cache can follow it:
``q``/``k``/``v`` and the MLP's first linear keep a slice of their *output* features on each rank
(a subset of the heads, half of the hidden units), and the projections after them keep the matching
slice of their *input* features and end in one all-reduce (``RowParallelLinear``). Attention reads
the number of heads from the tensor, so ``decode.forward_cached`` runs unchanged on a shard — and
the KV cache it fills holds only this rank's heads: the cache is split across ranks by heads.
Every all-reduce is timed, so the communication cost of a decode step (tiny messages, one token)
can be compared with that of the prefill (the whole prompt at once). Shown in 11.

    result = sharded.tensor_parallel_decode(model, prompts, n_new=30)
    assert result.max_abs_diff <= 1e-5 and result.tokens_identical
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.errors import BadInput
from labkit.llm import decode
from labkit.llm.kv_cache import ContiguousCache, shape_of
from labkit.measure import timing
from labkit.models.tinygpt import GPTConfig, TinyGPT, vocab

__all__ = ["RowParallelLinear", "ShardedDecodeResult", "decode_worker", "greedy_with_logits", "shard_model", "tensor_parallel_decode"]


class RowParallelLinear(nn.Module):
    """A linear holding a slice of the input features: partial product, one all-reduce (timed), then the bias once."""

    def __init__(self, full: nn.Linear, rank: int, world_size: int, device: torch.device) -> None:
        super().__init__()
        self.weight = nn.Parameter(full.weight.detach().chunk(world_size, dim=1)[rank].clone())
        self.bias = nn.Parameter(full.bias.detach().clone()) if full.bias is not None else None
        self.device = device
        self.allreduce_s: list[float] = []  # one entry per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        y = F.linear(x, self.weight)
        timing.synchronize(self.device)
        t0 = timing.now()
        dist.all_reduce(y)
        timing.synchronize(self.device)
        self.allreduce_s.append(timing.now() - t0)
        return y + self.bias if self.bias is not None else y


def _column_slice(full: nn.Linear, rank: int, world_size: int) -> nn.Linear:
    out = full.out_features // world_size
    part = nn.Linear(full.in_features, out, bias=full.bias is not None)
    with torch.no_grad():
        part.weight.copy_(full.weight.chunk(world_size, dim=0)[rank])
        if full.bias is not None:
            part.bias.copy_(full.bias.chunk(world_size)[rank])
    return part


# region: shard-model
def shard_model(model: TinyGPT, rank: int, world_size: int, device: torch.device) -> TinyGPT:
    """This rank's shard: q/k/v and fc keep their slice of output features (heads, hidden units), proj the matching input slice. Shown in 11."""
    if model.cfg.n_heads % world_size:
        raise BadInput(f"n_heads={model.cfg.n_heads} does not divide by {world_size} ranks")
    shard = copy.deepcopy(model)
    for block in shard.blocks:
        attn, mlp = block.attn, block.mlp
        attn.q, attn.k, attn.v = (_column_slice(lin, rank, world_size) for lin in (attn.q, attn.k, attn.v))
        attn.proj = RowParallelLinear(attn.proj, rank, world_size, device)
        mlp.fc = _column_slice(mlp.fc, rank, world_size)
        mlp.proj = RowParallelLinear(mlp.proj, rank, world_size, device)
    return shard.to(device).eval()
# endregion


def _allreduce_s(model: nn.Module) -> float:
    """Total all-reduce seconds recorded so far, and reset."""
    total = 0.0
    for m in model.modules():
        if isinstance(m, RowParallelLinear):
            total += sum(m.allreduce_s)
            m.allreduce_s.clear()
    return total


@torch.no_grad()
def greedy_with_logits(model: nn.Module, prompt_ids: Sequence[int], n_new: int, cache: Any = None, times: dict[str, list[float]] | None = None) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding with a KV cache, keeping the logits of each step: (tokens, logits of shape (n_new, vocab)).

    With ``times`` (a dict), appends each step's seconds and all-reduce seconds under
    ``prefill_s``/``prefill_allreduce_s`` (step 0) and ``decode_s``/``decode_allreduce_s``.
    """
    dev = next(model.parameters()).device
    cache = cache if cache is not None else ContiguousCache(shape_of(model), 1, model.cfg.block_size, device=dev)
    cache.add(0)
    tokens: list[int] = []
    rows = []
    for i in range(n_new):
        chunk = list(prompt_ids) if i == 0 else [tokens[-1]]
        start = 0 if i == 0 else len(prompt_ids) + i - 1
        inputs = decode.pack([chunk], [start], [0], dev)
        timing.synchronize(dev)
        t0 = timing.now()
        logits = decode.forward_cached(model, *inputs[:3], cache)[inputs[3][0]]
        tokens.append(int(logits.argmax()))
        if times is not None:
            kind = "prefill" if i == 0 else "decode"
            times.setdefault(f"{kind}_s", []).append(timing.now() - t0)
            times.setdefault(f"{kind}_allreduce_s", []).append(_allreduce_s(model))
        rows.append(logits.cpu())
    cache.release(0)
    return tokens, torch.stack(rows)


def decode_worker(rank: int, world_size: int, device: torch.device, cfg: GPTConfig, state: dict[str, torch.Tensor], prompts: list[list[int]], n_new: int) -> dict[str, Any]:
    """One rank: build its shard, generate greedily for every prompt with its half of the KV cache, time steps and all-reduces. Shown in 11."""
    model = TinyGPT(len(vocab()), cfg)
    model.load_state_dict(state)
    shard = shard_model(model.eval(), rank, world_size, device)
    greedy_with_logits(shard, prompts[0], 2)  # warm-up: the first collective sets up the connection
    _allreduce_s(shard)
    times: dict[str, list[float]] = {}
    tokens, logits = [], []
    cache_bytes = 0
    for p in prompts:
        cache = ContiguousCache(shape_of(shard), 1, cfg.block_size, device=device)
        cache_bytes = cache.allocated_bytes()
        t, lg = greedy_with_logits(shard, p, n_new, cache=cache, times=times)
        tokens.append(t)
        logits.append(lg)
    return {"rank": rank, "tokens": tokens, "logits": logits, "times": times, "cache_bytes": cache_bytes, "kv_heads": shape_of(shard).n_kv_heads, "device": str(device)}


@dataclass
class ShardedDecodeResult:
    """Sharded vs unsharded decode: exactness, and where the time of a step goes (best-of medians, seconds)."""

    world_size: int
    backend: str
    max_abs_diff: float
    tokens_identical: bool
    kv_heads_per_rank: list[int]
    cache_bytes_per_rank: list[int]
    cache_bytes_full: int
    prompt_len: float
    prefill_s: float
    prefill_allreduce_s: float
    decode_s: float
    decode_allreduce_s: float
    tokens: list[list[int]] = field(repr=False, default_factory=list)

    @property
    def decode_allreduce_share(self) -> float:
        """Share of a decode step spent in all-reduces."""
        return self.decode_allreduce_s / self.decode_s

    @property
    def prefill_allreduce_share(self) -> float:
        return self.prefill_allreduce_s / self.prefill_s

    @property
    def prefill_allreduce_per_token_s(self) -> float:
        """All-reduce time of the prefill per prompt token (the prefill moves every prompt token's activations at once)."""
        return self.prefill_allreduce_s / self.prompt_len


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def tensor_parallel_decode(model: TinyGPT, prompts: Sequence[Sequence[int]], n_new: int = 30, world_size: int = 2, backend: str | None = None) -> ShardedDecodeResult:
    """Generate for every prompt on ``world_size`` tensor-parallel ranks; compare logits and tokens with one process. Shown in 11."""
    from labkit.patterns import sharding

    backend = backend or sharding.backend_for(world_size)
    ref_tokens, ref_logits = [], []
    cpu_model = copy.deepcopy(model).cpu().eval()
    for p in prompts:
        t, lg = greedy_with_logits(cpu_model, p, n_new)
        ref_tokens.append(t)
        ref_logits.append(lg)
    plain = [decode.generate(cpu_model, p, n_new) for p in prompts]
    state = {k: v.detach().cpu() for k, v in cpu_model.state_dict().items()}
    results = sharding.run_ranks(decode_worker, (cpu_model.cfg, state, [list(p) for p in prompts], n_new), world_size=world_size, backend=backend)
    diff = max(float((lg - ref).abs().max()) for r in results for lg, ref in zip(r["logits"], ref_logits))
    same = all(r["tokens"] == plain == ref_tokens for r in results)
    full_bytes = ContiguousCache(shape_of(cpu_model), 1, cpu_model.cfg.block_size).allocated_bytes()

    def slowest(key: str) -> float:
        return max(_median(r["times"][key]) for r in results)

    return ShardedDecodeResult(
        world_size=world_size,
        backend=backend,
        max_abs_diff=diff,
        tokens_identical=same,
        kv_heads_per_rank=[r["kv_heads"] for r in results],
        cache_bytes_per_rank=[r["cache_bytes"] for r in results],
        cache_bytes_full=full_bytes,
        prompt_len=sum(len(p) for p in prompts) / len(prompts),
        prefill_s=slowest("prefill_s"),
        prefill_allreduce_s=slowest("prefill_allreduce_s"),
        decode_s=slowest("decode_s"),
        decode_allreduce_s=slowest("decode_allreduce_s"),
        tokens=plain,
    )
