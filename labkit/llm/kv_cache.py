"""The KV cache: how much memory it takes, and the contiguous cache (one slot per sequence).

Every layer keeps a key and a value vector per KV head for every token so far, so a sequence of
``n_tokens`` holds ``layers × 2 × kv_heads × head_dim × bytes × n_tokens`` bytes. The contiguous
cache below reserves that for the *maximum* length of every sequence up front (one slot each), as
serving systems did before paging; ``allocated_bytes()`` is what torch really allocated, so the
formula can be checked against it. Shown in 11.

    shape = kv_cache.shape_of(model)
    cache = kv_cache.ContiguousCache(shape, n_slots=8, max_len=64)
    assert cache.allocated_bytes() == kv_cache.kv_bytes(shape, 8 * 64)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from labkit.errors import BadInput

__all__ = ["MODEL_SHAPES", "ContiguousCache", "KVShape", "Plan", "contiguous_waste", "kv_bytes", "layout", "shape_of"]


@dataclass(frozen=True)
class KVShape:
    """What sets the size of one token's cache: layers, KV heads (fewer than query heads with GQA), head size, dtype."""

    name: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    dtype_bytes: int = 4

    @property
    def bytes_per_token(self) -> int:
        """layers × 2 (key and value) × KV heads × head_dim × bytes."""
        return self.n_layers * 2 * self.n_kv_heads * self.head_dim * self.dtype_bytes


# Published shapes: GPT-3 175B (Brown et al. 2020: 96 layers, 96 heads of 128) and Llama-2/3 70B
# (80 layers, 64 query heads sharing 8 KV heads, grouped-query attention), both in 16-bit.
MODEL_SHAPES: dict[str, KVShape] = {
    "GPT-3 175B": KVShape("GPT-3 175B", n_layers=96, n_kv_heads=96, head_dim=128, dtype_bytes=2),
    "Llama 70B (GQA)": KVShape("Llama 70B (GQA)", n_layers=80, n_kv_heads=8, head_dim=128, dtype_bytes=2),
}


@dataclass(frozen=True)
class Plan:
    """Where one forward call's tokens go, built once for all layers.

    ``positions``, ``rows``, ``cols``: per token, its position, its sequence's row among the
    call's sequences and its index within that sequence's new tokens; ``length``: the longest
    sequence after the call; ``seq_where``: per sequence, its slot (contiguous) or block table
    (paged); ``token_where``: per token, where its key and value are written.
    """

    positions: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    length: int
    seq_where: torch.Tensor
    token_where: tuple[torch.Tensor, torch.Tensor]


def layout(seq_ids: Sequence[int], device: torch.device) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Each sequence once (in order of appearance), and per token its row and its index within the row."""
    order: dict[int, int] = {}
    rows, cols, count = [], [], []
    for s in seq_ids:
        if s not in order:
            order[s] = len(order)
            count.append(0)
        r = order[s]
        rows.append(r)
        cols.append(count[r])
        count[r] += 1
    return list(order), torch.tensor(rows, device=device), torch.tensor(cols, device=device)


def kv_bytes(shape: KVShape, n_tokens: int) -> int:
    """Bytes of KV cache for ``n_tokens`` tokens (all sequences together). Shown in 11."""
    if n_tokens < 0:
        raise BadInput(f"n_tokens must be 0 or more, got {n_tokens}")
    return shape.bytes_per_token * n_tokens


def shape_of(model: torch.nn.Module, name: str = "TinyGPT") -> KVShape:
    """The KV shape of a TinyGPT (or a rank's shard of one: its local heads), in float32."""
    attn = model.blocks[0].attn
    n_local = attn.k.out_features // attn.head_dim
    return KVShape(name, n_layers=len(model.blocks), n_kv_heads=n_local, head_dim=attn.head_dim, dtype_bytes=next(model.parameters()).element_size())


def contiguous_waste(lengths: Sequence[int], max_len: int) -> float:
    """Fraction of reserved slots holding no token when each sequence reserves ``max_len``. Shown in 11."""
    if not lengths:
        return 0.0
    if any(n > max_len for n in lengths):
        raise BadInput(f"a sequence of {max(lengths)} tokens is longer than the reservation of {max_len}")
    return 1.0 - sum(lengths) / (len(lengths) * max_len)


class ContiguousCache:
    """One contiguous slot of ``max_len`` tokens per sequence, for every layer (keys and values).

    Storage: ``k``/``v`` of shape (layers, slots, max_len, kv_heads, head_dim). A sequence gets a
    free slot in ``add``; ``write`` puts new keys/values at its positions; ``read`` returns the
    first ``length`` positions of each sequence, padded to the longest (the caller masks).
    Shown in 11.
    """

    kind = "contiguous"

    def __init__(self, shape: KVShape, n_slots: int, max_len: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if n_slots < 1 or max_len < 1:
            raise BadInput(f"need at least one slot and one token, got n_slots={n_slots}, max_len={max_len}")
        self.shape, self.n_slots, self.max_len = shape, n_slots, max_len
        size = (shape.n_layers, n_slots, max_len, shape.n_kv_heads, shape.head_dim)
        self.k = torch.zeros(size, device=device, dtype=dtype)
        self.v = torch.zeros(size, device=device, dtype=dtype)
        self.slot: dict[int, int] = {}
        self.free_slots = list(range(n_slots - 1, -1, -1))

    def allocated_bytes(self) -> int:
        """Bytes torch allocated for keys and values (whatever is in use)."""
        return self.k.element_size() * self.k.nelement() + self.v.element_size() * self.v.nelement()

    def add(self, seq_id: int) -> None:
        """Reserve a slot of ``max_len`` tokens for a new sequence."""
        if seq_id in self.slot:
            raise BadInput(f"sequence {seq_id} already has a slot")
        if not self.free_slots:
            raise BadInput(f"all {self.n_slots} slots are in use")
        self.slot[seq_id] = self.free_slots.pop()

    def release(self, seq_id: int) -> None:
        """Give a finished sequence's slot back."""
        self.free_slots.append(self.slot.pop(seq_id))

    def reserved_tokens(self, seq_id: int) -> int:
        return self.max_len

    def ensure(self, seq_id: int, n_tokens: int) -> None:
        """Check that ``n_tokens`` fit the sequence's slot (nothing to allocate: it was all reserved)."""
        if n_tokens > self.max_len:
            raise BadInput(f"sequence {seq_id} needs {n_tokens} tokens; its slot holds {self.max_len}")

    def plan(self, seq_ids: Sequence[int], positions: torch.Tensor) -> Plan:
        """Index tensors for one forward call: each sequence's slot, and each token's (slot, position)."""
        order, rows, cols = layout(seq_ids, self.k.device)
        slots = torch.tensor([self.slot[s] for s in order], device=self.k.device)
        return Plan(positions, rows, cols, int(positions.max()) + 1, slots, (slots[rows], positions))

    def write(self, layer: int, plan: Plan, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one key/value (heads, head_dim) per token, in its sequence's slot at its position."""
        self.k[layer][plan.token_where] = k
        self.v[layer][plan.token_where] = v

    def read(self, layer: int, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``plan.length`` positions of each sequence's slot: (sequences, heads, length, head_dim)."""
        return self.k[layer, plan.seq_where, : plan.length].transpose(1, 2), self.v[layer, plan.seq_where, : plan.length].transpose(1, 2)
