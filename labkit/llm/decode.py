"""Greedy decoding, with and without a KV cache, over TinyGPT's own modules and weights.

``generate`` is the plain loop every engine must match token for token: at each step it runs the
whole sequence through the model and appends the most likely next token, so step ``t`` costs
attention and MLP work over ``t`` tokens (quadratic in all). ``forward_cached`` runs only the new
tokens: their keys and values are written to a cache, and their queries attend to everything
cached so far (linear in all). The first call for a prompt is the **prefill** (all prompt tokens
at once); every later call is a **decode** step (one token per sequence). ``forward_cached``
takes a batch of sequences of different lengths, each attending to its own cache entries only
(a mask per sequence), so an engine can add and remove sequences at every step. Shown in 11.

    ids = decode.generate(model, prompt, n_new=20)             # the reference
    assert decode.generate_cached(model, prompt, n_new=20) == ids
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from labkit.errors import BadInput
from labkit.llm.kv_cache import Plan
from labkit.measure import timing

__all__ = ["KVStore", "forward_cached", "generate", "generate_cached", "pack", "time_per_token"]


class KVStore(Protocol):
    """What ``forward_cached`` needs of a cache (``ContiguousCache`` and ``PagedCache`` both have it)."""

    def ensure(self, seq_id: int, n_tokens: int) -> None: ...

    def plan(self, seq_ids: Sequence[int], positions: torch.Tensor) -> Plan: ...

    def write(self, layer: int, plan: Plan, k: torch.Tensor, v: torch.Tensor) -> None: ...

    def read(self, layer: int, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]: ...


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(model: nn.Module, prompt_ids: Sequence[int], n_new: int) -> list[int]:
    """Greedy decoding without a cache: the whole sequence goes through the model at every step.

    Returns the ``n_new`` generated token ids. Shown in 11.
    """
    block_size = model.cfg.block_size
    ids = list(prompt_ids)
    if len(ids) + n_new > block_size:
        raise BadInput(f"prompt ({len(ids)}) + new tokens ({n_new}) exceed block_size={block_size}")
    x = torch.tensor([ids], device=_device(model))
    for _ in range(n_new):
        logits = model(x)
        nxt = logits[0, -1].argmax().reshape(1, 1)
        x = torch.cat([x, nxt], dim=1)
    return x[0, len(ids) :].tolist()


# region: forward-cached
@torch.no_grad()
def forward_cached(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor, seq_ids: Sequence[int], cache: KVStore) -> torch.Tensor:
    """Run a packed batch of new tokens through ``model``, reading and extending ``cache``; logits (tokens, vocab).

    Token ``i`` belongs to sequence ``seq_ids[i]`` at position ``positions[i]``: a prefill puts a
    whole prompt in (positions 0, 1, …), a decode step one token, and one call may mix both for
    many sequences. The linears see every token at once, unpadded; attention runs per sequence,
    over its own cached keys up to each token's position (Orca's *selective batching*). Shown in 11.
    """
    n = tokens.shape[0]
    for s, end in _ends(seq_ids, positions.tolist()).items():
        cache.ensure(s, end)  # a paged cache allocates blocks here; a contiguous one checks its slot
    plan = cache.plan(seq_ids, positions)  # where each token's key goes, each sequence's cache: once for all layers
    n_seqs, width = plan.seq_where.shape[0], int(plan.cols.max()) + 1
    # attention runs per sequence: its new tokens (padded to ``width``) against its own cached keys;
    # cached key j is visible to a query at position p when j <= p (causal, and never another sequence's)
    q_pos = torch.zeros(n_seqs, width, dtype=positions.dtype, device=positions.device)
    q_pos[plan.rows, plan.cols] = positions
    mask = (torch.arange(plan.length, device=positions.device)[None, None, :] <= q_pos[:, :, None])[:, None]
    x = model.tok(tokens) + model.pos(positions)
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        h = block.ln1(x)
        q, k, v = (lin(h).view(n, -1, attn.head_dim) for lin in (attn.q, attn.k, attn.v))  # (tokens, heads, head_dim)
        cache.write(layer, plan, k, v)
        keys, values = cache.read(layer, plan)  # (sequences, heads, length, head_dim)
        q_seq = q.new_zeros(n_seqs, width, *q.shape[1:])
        q_seq[plan.rows, plan.cols] = q
        y = F.scaled_dot_product_attention(q_seq.transpose(1, 2), keys, values, attn_mask=mask)
        y = y.transpose(1, 2)[plan.rows, plan.cols]  # back to one row per token
        x = x + attn.proj(y.reshape(n, -1))
        x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))
# endregion


def _ends(seq_ids: Sequence[int], positions: Sequence[int]) -> dict[int, int]:
    """Tokens each sequence will hold after this call: its largest position + 1."""
    ends: dict[int, int] = {}
    for s, p in zip(seq_ids, positions):
        ends[s] = max(ends.get(s, 0), p + 1)
    return ends


def pack(chunks: Sequence[Sequence[int]], starts: Sequence[int], seq_ids: Sequence[int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list[int], list[int]]:
    """Pack each sequence's new tokens (``chunks[b]`` from position ``starts[b]``) into one call's inputs.

    Returns tokens, positions, one sequence id per token, and the index of each sequence's last token.
    """
    tokens: list[int] = []
    positions: list[int] = []
    ids: list[int] = []
    last: list[int] = []
    for chunk, st, s in zip(chunks, starts, seq_ids):
        tokens += list(chunk)
        positions += range(st, st + len(chunk))
        ids += [s] * len(chunk)
        last.append(len(tokens) - 1)
    return torch.tensor(tokens, device=device), torch.tensor(positions, device=device), ids, last


@torch.no_grad()
def generate_cached(model: nn.Module, prompt_ids: Sequence[int], n_new: int, cache: Any = None) -> list[int]:
    """Greedy decoding with a KV cache: one prefill of the prompt, then one token per step. Shown in 11."""
    from labkit.llm.kv_cache import ContiguousCache, shape_of

    block_size = model.cfg.block_size
    if len(prompt_ids) + n_new > block_size:
        raise BadInput(f"prompt ({len(prompt_ids)}) + new tokens ({n_new}) exceed block_size={block_size}")
    dev = _device(model)
    if cache is None:
        cache = ContiguousCache(shape_of(model), 1, block_size, device=dev)
    cache.add(0)
    tokens, positions, ids, last = pack([list(prompt_ids)], [0], [0], dev)
    out = [int(forward_cached(model, tokens, positions, ids, cache)[last[0]].argmax())]
    for i in range(n_new - 1):
        tokens, positions, ids, last = pack([[out[-1]]], [len(prompt_ids) + i], [0], dev)
        out.append(int(forward_cached(model, tokens, positions, ids, cache)[0].argmax()))
    cache.release(0)
    return out


def _packed(x: torch.Tensor, start: int, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    tokens, positions, ids, _ = pack(x.tolist(), [start] * x.shape[0], list(range(x.shape[0])), dev)
    return tokens, positions, ids


def time_per_token(model: nn.Module, lengths: Sequence[int], batch_size: int = 1, repeats: int = 3) -> dict[str, list[float]]:
    """Seconds to produce the next token at each context length: the whole sequence again vs one cached step.

    ``no_cache``: one forward over (batch, length) tokens. ``cache``: one decode step at position
    ``length`` with ``length`` tokens already cached. Best of ``repeats``. Shown in 11.
    """
    from labkit.llm.kv_cache import ContiguousCache, shape_of

    dev = _device(model)
    block_size = model.cfg.block_size
    if max(lengths) >= block_size:
        raise BadInput(f"lengths must stay below block_size={block_size}")
    out: dict[str, list[float]] = {"no_cache": [], "cache": []}
    seqs = list(range(batch_size))
    cache = ContiguousCache(shape_of(model), batch_size, block_size, device=dev)
    for s in seqs:
        cache.add(s)
    gen = torch.Generator().manual_seed(0)
    vocab_size = model.tok.num_embeddings
    with torch.no_grad():
        for n in lengths:
            x = torch.randint(0, vocab_size, (batch_size, n + 1), generator=gen).to(dev)
            forward_cached(model, *_packed(x[:, :n], 0, dev), cache)  # the cache now holds n tokens per sequence
            out["no_cache"].append(min(timing.measure(functools.partial(model, x), repeats=repeats, warmup=1, device=dev)))
            step = functools.partial(forward_cached, model, *_packed(x[:, n:], n, dev), cache)
            out["cache"].append(min(timing.measure(step, repeats=repeats, warmup=1, device=dev)))
    return out
