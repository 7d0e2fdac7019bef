"""Serving a language model: KV cache, continuous batching, paged memory, sharded decode (notebook 11).

One concern per module:

- ``decode``: the plain greedy ``generate()`` loop (the reference every engine must match) and the
  KV-cache-aware forward (prefill and decode steps) over TinyGPT's own weights;
- ``kv_cache``: the KV-cache memory formula and the contiguous cache (one slot per sequence,
  reserved to the maximum length);
- ``paged``: a block allocator and a block table per sequence (the PagedAttention idea);
- ``trace``: a seeded Poisson arrival trace with mixed prompt and output lengths;
- ``engine``: a request queue and two schedulers, static and continuous (iteration-level) batching;
- ``sweep``: an offered-load sweep measuring tokens/s, time to first token and inter-token latency;
- ``sharded``: tensor-parallel decode on 2 ranks with the KV cache split by heads.

Nothing is imported here: ``from labkit.llm import engine`` loads only what it needs.
"""

from __future__ import annotations

__all__: list[str] = []
