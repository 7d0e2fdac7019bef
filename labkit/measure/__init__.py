"""Measuring: timing (spans, timelines, latency statistics), load (the one bounded load generator:
closed and open loop over HTTP, any async client, or threads), batching (the batching sweep, one
result type for every server), probe (was the machine busy?), guards (numbers that cannot be
right), verdicts (conclusions printed from the run), capstone (the comparison harness of 14),
recovery (what a kill under load did), report (the capstone's table, plots, files and advice).
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
