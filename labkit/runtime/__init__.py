"""The machine and the processes labkit runs on it.

hardware (device, threads, peak GFLOP/s), process (managed subprocesses that die with their
parent, the pid registry), cache (files that survive between runs).
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
