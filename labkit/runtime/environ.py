"""One way to set environment variables for a block and put them back: ``patch_environment``.

Child processes copy the environment when they start, so the lab sets a few variables (thread
counts, a rendezvous address) just around the code that starts them, and restores them after —
also when the block raises. Modelled on accelerate's ``utils.environment.patch_environment``.

    with environ.patch_environment(OMP_NUM_THREADS=1, MASTER_PORT=29500):
        start_children()

Used by ``runtime.hardware.threads_limited`` (00–05), the ensemble's worker pool (02), a local Ray start (07, 14) and
``patterns.sharding.run_ranks`` (03).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["patch_environment"]


@contextmanager
def patch_environment(**values: object) -> Iterator[None]:
    """Set each ``NAME=value`` (as ``str(value)``) in ``os.environ`` for the block, then restore.

    A variable that was unset before is removed again afterwards; one that was set gets its old
    value back.

    >>> with patch_environment(DOCTEST_PATCHED_VAR=1):
    ...     os.environ["DOCTEST_PATCHED_VAR"]
    '1'
    >>> "DOCTEST_PATCHED_VAR" in os.environ
    False
    """
    before = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
