"""Measuring: timing (spans, timelines, latency statistics), load (bounded closed- and open-loop
load generation), probe (was the machine busy?), verdicts (conclusions printed from the run),
capstone (the comparison harness of 14 and its report).
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
