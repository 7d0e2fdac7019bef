"""A reproducible arrival trace: Poisson arrivals, mixed prompt lengths, long-tailed output lengths.

Requests arrive as a Poisson process (exponential gaps, mean ``1 / rate_per_s``). Prompts are
windows of TinyGPT's corpus. Output lengths are long-tailed, as in chat serving: most answers are
short, a few are long — exactly what makes static batching wait for its longest request.
The same seed gives the same trace. Shown in 11.

    reqs = trace.poisson(n_requests=100, rate_per_s=200.0, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labkit.errors import BadInput

__all__ = ["LONG_FRACTION", "LONG_OUTPUT", "PROMPT_LEN", "SHORT_OUTPUT", "Request", "lengths", "poisson"]

PROMPT_LEN = (4, 24)  # tokens, inclusive
SHORT_OUTPUT = (2, 6)
LONG_OUTPUT = (32, 40)
LONG_FRACTION = 0.1  # share of requests with a long answer
MAX_LEN = 64  # TinyGPT's block size: prompt + output never exceed it


@dataclass(frozen=True)
class Request:
    """One request: when it arrives (s from the start of the trace), its prompt token ids, how many tokens to generate."""

    id: int
    arrival_s: float
    prompt: tuple[int, ...]
    max_new: int

    @property
    def total_len(self) -> int:
        return len(self.prompt) + self.max_new


def _uniform(lo_hi: tuple[int, int], gen: torch.Generator) -> int:
    lo, hi = lo_hi
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def poisson(
    n_requests: int,
    rate_per_s: float,
    seed: int = 0,
    prompt_len: tuple[int, int] = PROMPT_LEN,
    short_output: tuple[int, int] = SHORT_OUTPUT,
    long_output: tuple[int, int] = LONG_OUTPUT,
    long_fraction: float = LONG_FRACTION,
    max_len: int = MAX_LEN,
) -> list[Request]:
    """``n_requests`` requests with Poisson arrivals at ``rate_per_s`` (``inf``: all at time 0). Shown in 11."""
    from labkit.models import tinygpt

    if n_requests < 1 or rate_per_s <= 0:
        raise BadInput(f"need n_requests ≥ 1 and rate_per_s > 0, got {n_requests} and {rate_per_s}")
    if prompt_len[1] + max(short_output[1], long_output[1]) > max_len:
        raise BadInput(f"the longest prompt + output exceeds max_len={max_len}")
    gen = torch.Generator().manual_seed(seed)
    data = tinygpt.vocab().encode(tinygpt.corpus())
    out, t = [], 0.0
    for i in range(n_requests):
        if rate_per_s != float("inf"):
            t += float(torch.empty(1).exponential_(rate_per_s, generator=gen))
        n_prompt = _uniform(prompt_len, gen)
        start = int(torch.randint(0, len(data) - n_prompt, (1,), generator=gen))
        long = float(torch.rand(1, generator=gen)) < long_fraction
        n_out = _uniform(long_output if long else short_output, gen)
        out.append(Request(i, t, tuple(data[start : start + n_prompt]), n_out))
    return out


def lengths(requests: list[Request]) -> list[int]:
    """Final length (prompt + output) of every request."""
    return [r.total_len for r in requests]
