"""The machine and the processes labkit runs on it.

hardware (device, threads, peak GFLOP/s), process (managed subprocesses, ``die_with_parent``,
the pid registry, process-tree RSS/CPU, ``assert_nothing_left``), environ (``patch_environment``:
set variables for a block, then restore), cache (files that survive between runs), progress (tqdm bars that
end as one line of text in a notebook).
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
