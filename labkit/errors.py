"""labkit's one error tree. Every error says what is wrong and what to do, in one line.

    LabkitError                 base: catch this to catch anything labkit raises on purpose
    ├── BadInput                a value given to labkit (argument, env var, payload) is invalid
    ├── NeedsGPU                the work asks for more GPUs than this machine has
    ├── ServiceUnavailable      a server, broker or binary is missing or did not become ready
    └── WorkerFailed            a worker (thread, process, rank, stage) failed; names which one
"""

from __future__ import annotations

__all__ = ["BadInput", "LabkitError", "NeedsGPU", "ServiceUnavailable", "WorkerFailed"]


class LabkitError(Exception):
    """Base class of every error labkit raises on purpose."""


class BadInput(LabkitError, ValueError):
    """A value given to labkit is invalid; the message says which and what is allowed."""


class NeedsGPU(LabkitError):
    """More GPUs were requested than this machine has."""


class ServiceUnavailable(LabkitError):
    """A service or binary is missing or not ready; the message says how to get it."""

    def __init__(self, what: str, how_to_get: str = "", logs: str = "") -> None:
        self.what = what
        self.how_to_get = how_to_get
        self.logs = logs
        message = what if not how_to_get else f"{what} — {how_to_get}"
        if logs:
            message += "\n--- last log lines ---\n" + logs
        super().__init__(message)


class WorkerFailed(LabkitError):
    """A worker failed; ``worker`` names it and the original exception is chained."""

    def __init__(self, worker: str, error: BaseException | str) -> None:
        self.worker = worker
        self.error = error
        super().__init__(f"{worker} failed: {error!r}" if isinstance(error, BaseException) else f"{worker} failed: {error}")
