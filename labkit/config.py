"""Settings from the environment, in one place, read when asked (never frozen at import).

    LABKIT_FAST=1        small data, few repetitions, short load tests (set by the test command)
    LABKIT_STRICT=1      a missing service or binary is an error, not a skip (set by CI)
    LABKIT_CACHE_DIR     where trained models, pid files and results go (default ~/.cache/labkit)
    LABKIT_DEVICE        auto | cpu | cuda | cuda:N | mps (default auto: cuda → mps → cpu)
    CELERY_BROKER_URL, CELERY_RESULT_BACKEND, REDIS_URL, RAY_ADDRESS, TORCHSERVE_URL,
    TFSERVING_URL, KUBECONFIG   use that real deployment instead of starting a local one

Used in every notebook (the parameters cell).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from labkit.errors import BadInput

__all__ = [
    "EXTERNAL_SERVICE_VARS",
    "Settings",
    "cache_dir",
    "external_url",
    "fast",
    "pick",
    "settings",
    "strict",
]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
EXTERNAL_SERVICE_VARS = (
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "REDIS_URL",
    "RAY_ADDRESS",
    "TORCHSERVE_URL",
    "TFSERVING_URL",
    "KUBECONFIG",
)


@dataclass(frozen=True)
class Settings:
    """A snapshot of labkit's settings."""

    fast: bool
    strict: bool
    cache_dir: Path
    device: str
    external: dict[str, str]


def _flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise BadInput(f"{name}={os.environ[name]!r} is not a boolean; use 1 or 0")


def fast() -> bool:
    """Return True when LABKIT_FAST asks for small, quick runs."""
    return _flag("LABKIT_FAST")


def strict() -> bool:
    """Return True when LABKIT_STRICT turns missing services into errors."""
    return _flag("LABKIT_STRICT")


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder inside labkit's cache dir."""
    base = Path(os.environ.get("LABKIT_CACHE_DIR") or Path.home() / ".cache" / "labkit").expanduser()
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def external_url(name: str) -> str | None:
    """Return the URL of an external service from its env var, or None to start a local one."""
    if name not in EXTERNAL_SERVICE_VARS:
        raise BadInput(f"unknown service variable {name!r}; known: {', '.join(EXTERNAL_SERVICE_VARS)}")
    value = os.environ.get(name, "").strip()
    return value or None


def pick(fast: T, full: T) -> T:
    """Return ``fast`` in fast mode and ``full`` otherwise: ``n = config.pick(fast=200, full=2000)``."""
    return fast if _flag("LABKIT_FAST") else full


def settings() -> Settings:
    """Read every setting now and return them together."""
    return Settings(
        fast=fast(),
        strict=strict(),
        cache_dir=cache_dir(),
        device=os.environ.get("LABKIT_DEVICE", "auto").strip() or "auto",
        external={k: v for k in EXTERNAL_SERVICE_VARS if (v := os.environ.get(k, "").strip())},
    )
