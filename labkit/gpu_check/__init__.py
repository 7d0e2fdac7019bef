"""``labkit gpu-check``: the lab's GPU paths in one capped run on a GPU machine, and its report.

It runs, in fast mode with ``LABKIT_DEVICE=cuda``: ``labkit doctor``; ``labkit bench baseline
pipeline ensemble data-parallel sharding`` (peak and achieved TFLOP/s in fp32, tf32 and bf16 on the
GPU; the patterns' ratios); notebooks 00, 01, 02, 04 and 11 (when present) through nbclient; and
the 2-rank nccl cells of 03/04 when there are >= 2 GPUs (on one GPU they are skipped: nccl cannot
put two ranks on one device). Each step has a time budget (``--list``); the whole run is capped
under 6 minutes. It writes ``gpu-check-<date>-<gpu>.json`` and ``.md`` (plus the steps' log and the
executed notebooks as a zip) to ``--out``. Without CUDA it refuses in one line (exit 2).

It uses the interpreter it is started with and installs and downloads nothing. On a GPU machine
with no Jupyter, bring the wheels ``--needs`` prints (``make gpu-wheels`` fetches them into
``.gpu-wheels/``) and unpack them on the command line; with some missing, the steps that need
them are skipped with the reason. The one command, from the repository root on the GPU machine::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu-wheels/*.whl && PYTHONPATH=/tmp/site python3 -m labkit.gpu_check --out "${OUT:-gpu-report}"

Exit code 0: every step passed, missed a benchmark target or was skipped with its reason; 1: a
step failed; 2: bad arguments, or no CUDA. Used in the README's "Running on a GPU".
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run gpu-check with ``argv`` (default: the command line); return its exit code."""
    from labkit.gpu_check.check import main as _main

    return _main(argv)
