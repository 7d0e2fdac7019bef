"""A paged KV cache: fixed-size blocks from one pool, and a block table per sequence (PagedAttention).

Instead of reserving the maximum length for every sequence, the cache hands out blocks of
``block_size`` tokens as a sequence grows; a sequence's *block table* lists its blocks in order,
so token ``i`` lives in block ``table[i // block_size]`` at offset ``i % block_size``. Only the last
block of each sequence can be partly empty, so at most ``block_size − 1`` slots per sequence hold
no token (Kwon et al., *Efficient Memory Management for LLM Serving with PagedAttention*, SOSP 2023).
Shown in 11.

    cache = paged.PagedCache(shape, n_blocks=128, block_size=4)
    cache.add(7); cache.ensure(7, 10)      # 3 blocks for 10 tokens
    cache.block_table(7)                  # e.g. [0, 1, 2]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from labkit.errors import BadInput
from labkit.llm.kv_cache import KVShape, Plan, layout

__all__ = ["BlockAllocator", "PagedCache", "blocks_needed", "paged_waste"]


def blocks_needed(n_tokens: int, block_size: int) -> int:
    """Blocks that hold ``n_tokens`` tokens: ceil(n_tokens / block_size)."""
    return math.ceil(n_tokens / block_size)


def paged_waste(lengths: Sequence[int], block_size: int) -> float:
    """Fraction of reserved slots holding no token when each sequence holds whole blocks. Shown in 11."""
    reserved = sum(blocks_needed(n, block_size) * block_size for n in lengths)
    return 1.0 - sum(lengths) / reserved if reserved else 0.0


class BlockAllocator:
    """A free list of block ids and, per sequence, its block table. Shown in 11."""

    def __init__(self, n_blocks: int) -> None:
        if n_blocks < 1:
            raise BadInput(f"need at least one block, got {n_blocks}")
        self.n_blocks = n_blocks
        self.free = list(range(n_blocks - 1, -1, -1))  # pop() hands out 0, 1, 2, ... first
        self.tables: dict[int, list[int]] = {}

    def add(self, seq_id: int) -> None:
        if seq_id in self.tables:
            raise BadInput(f"sequence {seq_id} already has a block table")
        self.tables[seq_id] = []

    def grow(self, seq_id: int, n_blocks: int) -> None:
        """Give ``seq_id`` blocks until its table has ``n_blocks``."""
        table = self.tables[seq_id]
        while len(table) < n_blocks:
            if not self.free:
                raise BadInput(f"out of KV blocks: all {self.n_blocks} are in use")
            table.append(self.free.pop())

    def release(self, seq_id: int) -> None:
        """Return every block of a finished sequence to the free list."""
        self.free.extend(reversed(self.tables.pop(seq_id)))

    @property
    def used_blocks(self) -> int:
        return self.n_blocks - len(self.free)


class PagedCache:
    """Keys and values in a pool of blocks: ``k``/``v`` of shape (layers, blocks, block_size, kv_heads, head_dim).

    The same interface as ``kv_cache.ContiguousCache``: ``add``, ``ensure`` (allocate blocks
    for the tokens about to be written), ``write``, ``read`` (gathers each sequence's blocks in
    table order), ``release``. Shown in 11.
    """

    kind = "paged"

    def __init__(self, shape: KVShape, n_blocks: int, block_size: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if block_size < 1:
            raise BadInput(f"block_size must be at least 1, got {block_size}")
        self.shape, self.block_size = shape, block_size
        self.allocator = BlockAllocator(n_blocks)
        size = (shape.n_layers, n_blocks, block_size, shape.n_kv_heads, shape.head_dim)
        self.k = torch.zeros(size, device=device, dtype=dtype)
        self.v = torch.zeros(size, device=device, dtype=dtype)

    def allocated_bytes(self) -> int:
        """Bytes torch allocated for the whole pool."""
        return self.k.element_size() * self.k.nelement() + self.v.element_size() * self.v.nelement()

    def add(self, seq_id: int) -> None:
        self.allocator.add(seq_id)

    def release(self, seq_id: int) -> None:
        self.allocator.release(seq_id)

    def block_table(self, seq_id: int) -> list[int]:
        return list(self.allocator.tables[seq_id])

    def reserved_tokens(self, seq_id: int) -> int:
        return len(self.allocator.tables[seq_id]) * self.block_size

    def ensure(self, seq_id: int, n_tokens: int) -> None:
        """Allocate blocks so that the sequence can hold ``n_tokens`` tokens."""
        self.allocator.grow(seq_id, blocks_needed(n_tokens, self.block_size))

    def plan(self, seq_ids: Sequence[int], positions: torch.Tensor) -> Plan:
        """Index tensors for one forward call: each sequence's block table, and each token's (block, offset)."""
        order, rows, cols = layout(seq_ids, self.k.device)
        length = int(positions.max()) + 1
        n_blocks = blocks_needed(length, self.block_size)
        tables = [self.allocator.tables[s][:n_blocks] for s in order]
        padded = torch.tensor([t + [0] * (n_blocks - len(t)) for t in tables], device=self.k.device)  # padding blocks are masked
        blocks = padded[rows, positions // self.block_size]
        return Plan(positions, rows, cols, length, padded, (blocks, positions % self.block_size))

    def write(self, layer: int, plan: Plan, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one key/value (heads, head_dim) per token: in block ``table[pos // block_size]`` at offset ``pos % block_size``."""
        self.k[layer][plan.token_where] = k
        self.v[layer][plan.token_where] = v

    def read(self, layer: int, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sequence's first ``plan.length`` positions, gathered block by block: (sequences, heads, length, head_dim)."""
        n = plan.seq_where.shape[0]

        def gather(pool: torch.Tensor) -> torch.Tensor:
            blocks = pool[layer][plan.seq_where]  # (sequences, n_blocks, block_size, heads, head_dim)
            return blocks.reshape(n, -1, *pool.shape[-2:])[:, : plan.length].transpose(1, 2)

        return gather(self.k), gather(self.v)
