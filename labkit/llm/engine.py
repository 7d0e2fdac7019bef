"""A small LLM serving engine: a request queue and two schedulers, static and continuous batching.

Every **iteration** runs one ``decode.forward_cached`` call over the running batch: a sequence
that has just been admitted contributes its whole prompt (its prefill), every other one its last
token (a decode step). The two policies differ only in *when* waiting requests join:

- ``static``: a batch is formed from the queue when the engine is idle and runs until its
  longest request ends; requests that arrive meanwhile wait. A request that finishes early keeps
  its row and its KV memory until the batch ends, as in a padded batch tensor: the engine runs a
  padding token for it (its last position again, whose output is discarded).
- ``continuous`` (iteration-level scheduling, Orca, OSDI 2022): at *every* iteration finished
  requests leave and waiting ones take their slots, up to ``max_batch``.

Time: the engine's clock advances by the measured duration of each iteration (so the figures are
real compute on this machine) and jumps over idle gaps instead of sleeping. On a CPU with one torch
thread the duration is the thread's CPU time (``time.thread_time``): on a shared machine it counts
the work, not the moments another program held the core (``clock="wall"`` counts those too; a GPU
always uses wall time, synchronised). ``cost_s`` replaces the measurement with a cost model
(deterministic, for tests). Every result records each token's time,
so time to first token (TTFT) and inter-token latency (ITL) follow. Shown in 11.

    run = engine.Engine(model, policy="continuous", max_batch=8, cache="paged").run(requests)
    print(run.tokens_per_s, run.ttft.p50, run.waste)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from labkit.errors import BadInput
from labkit.llm import decode
from labkit.llm.kv_cache import ContiguousCache, contiguous_waste, shape_of
from labkit.llm.paged import PagedCache, blocks_needed, paged_waste
from labkit.llm.trace import Request
from labkit.measure import timing

__all__ = ["POLICIES", "Engine", "EngineRun", "RequestResult"]

POLICIES = ("static", "continuous")
CACHES = ("contiguous", "paged")
CLOCKS = ("auto", "cpu", "wall")


@dataclass
class RequestResult:
    """What one request got: its tokens and the (engine-clock) time each one was produced."""

    id: int
    arrival_s: float
    tokens: list[int] = field(default_factory=list)
    token_times_s: list[float] = field(default_factory=list)

    @property
    def ttft_s(self) -> float:
        """Time to first token: from arrival to the end of the iteration that ran its prefill."""
        return self.token_times_s[0] - self.arrival_s

    @property
    def itl_s(self) -> list[float]:
        """Inter-token latencies: the gaps between consecutive tokens."""
        t = self.token_times_s
        return [b - a for a, b in zip(t, t[1:])]


@dataclass
class _Running:
    req: Request
    result: RequestResult
    pos: int = 0  # tokens of this sequence in the cache
    done: bool = False  # static batching: finished, but its row stays until the batch ends


@dataclass
class EngineRun:
    """One trace through one engine configuration: per-request results, iterations and KV-memory snapshots."""

    policy: str
    cache: str
    clock: str
    max_batch: int
    block_size: int
    max_len: int
    results: list[RequestResult]
    iterations: int
    busy_s: float
    lengths: list[list[int]] = field(repr=False)  # after each iteration: tokens held by each running sequence
    reserved: list[int] = field(repr=False)  # after each iteration: token slots the cache reserved for them
    joined: list[int] = field(repr=False, default_factory=list)  # per iteration: sequences that ran their prefill in it
    allocated_bytes: int = 0

    def tokens(self) -> dict[int, list[int]]:
        return {r.id: r.tokens for r in self.results}

    @property
    def n_tokens(self) -> int:
        return sum(len(r.tokens) for r in self.results)

    @property
    def makespan_s(self) -> float:
        """From the first arrival to the last token."""
        return max(r.token_times_s[-1] for r in self.results) - min(r.arrival_s for r in self.results)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.makespan_s

    @property
    def ttft(self) -> timing.LatencyStats:
        return timing.latency_stats([r.ttft_s for r in self.results])

    @property
    def itl(self) -> timing.LatencyStats:
        gaps = [g for r in self.results for g in r.itl_s]
        return timing.latency_stats(gaps or [0.0])

    @property
    def tokens_per_iteration(self) -> float:
        """Tokens produced per iteration, on average (padding rows of a static batch produce none)."""
        return self.n_tokens / self.iterations

    @property
    def mean_batch(self) -> float:
        """Rows per iteration, on average, padding rows included."""
        return sum(len(x) for x in self.lengths) / max(len(self.lengths), 1)

    @property
    def waste(self) -> float:
        """Fraction of the KV slots this run's cache reserved that held no token (over all iterations)."""
        used = sum(sum(x) for x in self.lengths)
        total = sum(self.reserved)
        return 1.0 - used / total if total else 0.0

    def waste_if(self, cache: str, block_size: int | None = None) -> float:
        """The same fraction had the same sequences been held contiguously (max_len each) or in blocks."""
        flat = [n for x in self.lengths for n in x]
        if cache == "contiguous":
            return contiguous_waste(flat, self.max_len)
        return paged_waste(flat, block_size or self.block_size)

    def concurrency_gain(self, block_size: int | None = None) -> float:
        """How many times more sequences fit the same KV memory in blocks than in max_len slots (mean over iterations)."""
        bs = block_size or self.block_size
        flat = [n for x in self.lengths for n in x]
        mean_paged = sum(blocks_needed(n, bs) * bs for n in flat) / len(flat)
        return self.max_len / mean_paged

    def line(self) -> str:
        """The headline figures in one sentence with units."""
        return (f"{self.tokens_per_s:,.1f} tokens/s, time to first token p50 {self.ttft.p50 * 1e3:.1f} ms / p99 {self.ttft.p99 * 1e3:.1f} ms, "
                f"between tokens p50 {self.itl.p50 * 1e3:.1f} ms / p99 {self.itl.p99 * 1e3:.1f} ms, mean batch {self.mean_batch:.1f}, "
                f"{self.iterations} iterations, KV memory wasted {self.waste:.0%}")

    def summary(self) -> dict[str, float]:
        """The headline figures, rounded, for printing and JSON."""
        return {
            "tokens_per_s": round(self.tokens_per_s, 1),
            "ttft_p50_ms": round(self.ttft.p50 * 1e3, 2),
            "ttft_p99_ms": round(self.ttft.p99 * 1e3, 2),
            "itl_p50_ms": round(self.itl.p50 * 1e3, 2),
            "itl_p99_ms": round(self.itl.p99 * 1e3, 2),
            "mean_batch": round(self.mean_batch, 2),
            "tokens_per_iteration": round(self.tokens_per_iteration, 2),
            "iterations": self.iterations,
            "waste": round(self.waste, 4),
        }


class Engine:
    """Serve a list of requests with greedy decoding under ``policy``, on a ``cache`` of KV memory.

    ``max_batch`` caps the running batch; the cache holds exactly ``max_batch × max_len`` tokens
    (contiguous: that many slots; paged: that many tokens in blocks of ``block_size``).
    Shown in 11.
    """

    def __init__(
        self,
        model: nn.Module,
        policy: str = "continuous",
        max_batch: int = 8,
        cache: str = "contiguous",
        block_size: int = 4,
        cost_s: Callable[[int, int], float] | None = None,
        clock: str = "auto",
    ) -> None:
        if policy not in POLICIES:
            raise BadInput(f"policy must be one of {POLICIES}, got {policy!r}")
        if cache not in CACHES:
            raise BadInput(f"cache must be one of {CACHES}, got {cache!r}")
        if max_batch < 1:
            raise BadInput(f"max_batch must be at least 1, got {max_batch}")
        self.model, self.policy, self.max_batch, self.cache_kind, self.block_size, self.cost_s = model, policy, max_batch, cache, block_size, cost_s
        self.max_len = int(model.cfg.block_size)
        self.device = next(model.parameters()).device
        if clock not in CLOCKS:
            raise BadInput(f"clock must be one of {CLOCKS}, got {clock!r}")
        if clock == "auto":
            clock = "cpu" if self.device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
        self.clock = clock

    def _now(self) -> float:
        if self.clock == "cpu":
            return time.thread_time()
        timing.synchronize(self.device)
        return timing.now()

    def new_cache(self) -> Any:
        """An empty KV cache of this engine's kind and size."""
        shape = shape_of(self.model)
        if self.cache_kind == "contiguous":
            return ContiguousCache(shape, self.max_batch, self.max_len, device=self.device)
        n_blocks = self.max_batch * blocks_needed(self.max_len, self.block_size)
        return PagedCache(shape, n_blocks, self.block_size, device=self.device)

    # region: iteration
    def _iteration(self, running: list[_Running], cache: Any) -> list[int]:
        """One forward over the batch: prompts of new sequences (prefill), last tokens of the others (decode)."""
        chunks = [list(s.req.prompt) if s.pos == 0 else [s.result.tokens[-1]] for s in running]
        starts = [s.pos - 1 if s.done else s.pos for s in running]  # a finished row repeats its last position (padding)
        tokens, positions, ids, last = decode.pack(chunks, starts, [s.req.id for s in running], self.device)
        logits = decode.forward_cached(self.model, tokens, positions, ids, cache)
        for s, c in zip(running, chunks):
            s.pos += 0 if s.done else len(c)
        return logits[last].argmax(-1).tolist()
    # endregion

    # region: schedule
    def run(self, requests: Sequence[Request]) -> EngineRun:
        """Serve ``requests`` (arrival times from 0) to the end; return every token and its time."""
        for r in requests:
            if r.total_len > self.max_len:
                raise BadInput(f"request {r.id}: prompt + output = {r.total_len} tokens > max_len={self.max_len}")
        pending = deque(sorted(requests, key=lambda r: r.arrival_s))
        waiting: deque[Request] = deque()
        running: list[_Running] = []
        done: list[RequestResult] = []
        cache = self.new_cache()
        clock, busy, iterations = 0.0, 0.0, 0
        lengths: list[list[int]] = []
        reserved: list[int] = []
        joined: list[int] = []
        while pending or waiting or running:
            while pending and pending[0].arrival_s <= clock:
                waiting.append(pending.popleft())
            if not running and not waiting:
                clock = pending[0].arrival_s  # idle: jump to the next arrival
                continue
            # static: a new batch only when the last one has ended; continuous: at every iteration
            if self.policy == "continuous" or not running:
                while waiting and len(running) < self.max_batch:
                    req = waiting.popleft()
                    cache.add(req.id)
                    running.append(_Running(req, RequestResult(req.id, req.arrival_s)))
            joined.append(sum(1 for s in running if s.pos == 0))
            t0 = self._now()
            new_tokens = self._iteration(running, cache)
            elapsed = self._now() - t0
            if self.cost_s is not None:
                elapsed = self.cost_s(len(running), sum(1 if s.result.tokens else len(s.req.prompt) for s in running))
            clock += elapsed
            busy += elapsed
            iterations += 1
            lengths.append([s.pos for s in running])
            reserved.append(sum(cache.reserved_tokens(s.req.id) for s in running))
            still = []
            for s, tok in zip(running, new_tokens):
                if s.done:
                    still.append(s)  # padding row: its output is discarded
                    continue
                s.result.tokens.append(tok)
                s.result.token_times_s.append(clock)
                if len(s.result.tokens) < s.req.max_new:
                    still.append(s)
                    continue
                done.append(s.result)
                if self.policy == "continuous":
                    cache.release(s.req.id)  # finished: its KV memory is free for the next request now
                else:
                    s.done = True
                    still.append(s)
            if still and all(s.done for s in still):  # static: the batch's longest request has ended
                for s in still:
                    cache.release(s.req.id)
                still = []
            running = still
        # endregion
        return EngineRun(
            policy=self.policy,
            cache=self.cache_kind,
            clock="cost model" if self.cost_s is not None else self.clock,
            max_batch=self.max_batch,
            block_size=self.block_size,
            max_len=self.max_len,
            results=sorted(done, key=lambda r: r.id),
            iterations=iterations,
            busy_s=busy,
            lengths=lengths,
            reserved=reserved,
            joined=joined,
            allocated_bytes=cache.allocated_bytes(),
        )
