"""Settings from the environment, in one place, read when asked (never frozen at import).

    LABKIT_FAST=1        small data, few repetitions, short load tests (set by the test command)
    LABKIT_CAPSTONE_FAMILIES  comma-separated capstone families (Celery,TorchServe…) to run; the other
                         rows say they were left out (default: every row; tests/test_degraded.py sets it)
    LABKIT_STRICT=1      a missing service or binary is an error, not a skip (set by CI)
    LABKIT_CACHE_DIR     where trained models, pid files and results go (default ~/.cache/labkit)
    LABKIT_DEVICE        auto | cpu | cuda | cuda:N | mps (default auto: cuda → mps → cpu)

Read inside the servers labkit starts (their launchers set them for the child):

    LABKIT_TS_THREADS       torch threads in each TorchServe worker (default 1)
    LABKIT_TORCH_THREADS    torch threads in a model-server replica (default 1)
    LABKIT_MODEL_ARCH       cnn | mlp: the digit model a model-server replica serves (default cnn)
    LABKIT_MODEL_PATH       a state_dict .pt a replica loads (default: the cached trained model)
    LABKIT_READY_DELAY_S    extra seconds before a replica's /readyz says ready (default 0)
    LABKIT_LB_RETRIES       how often the balancer retries a failed request on another endpoint
    LABKIT_LB_MODE          how the balancer picks an endpoint (the balancer checks the value)
    LABKIT_CELERY_WORKERS   external: Celery workers already run on the broker (a cluster's hosts);
                            notebooks use them instead of starting their own (default: start them)

    CELERY_BROKER_URL, CELERY_RESULT_BACKEND, REDIS_URL, RABBITMQ_URL, RAY_ADDRESS, TORCHSERVE_URL,
    TFSERVING_URL, KUBECONFIG   use that real deployment instead of starting a local one
    (Celery itself lets CELERY_BROKER_URL / CELERY_RESULT_BACKEND override every app's own
    setting; REDIS_URL and RABBITMQ_URL name one broker each and leave the apps alone)

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
    "VARIABLES",
    "Settings",
    "balancer_mode",
    "balancer_retries",
    "cache_dir",
    "capstone_families",
    "celery_workers_external",
    "device_name",
    "external_url",
    "fast",
    "model_arch",
    "model_path",
    "model_server_threads",
    "pick",
    "ready_delay_s",
    "settings",
    "strict",
    "torchserve_threads",
]

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}
EXTERNAL_SERVICE_VARS = (
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "REDIS_URL",
    "RABBITMQ_URL",
    "RAY_ADDRESS",
    "TORCHSERVE_URL",
    "TFSERVING_URL",
    "KUBECONFIG",
)


# Every LABKIT_* variable labkit reads (a test fails on a read of one outside this module).
VARIABLES = (
    "LABKIT_FAST",
    "LABKIT_STRICT",
    "LABKIT_CACHE_DIR",
    "LABKIT_DEVICE",
    "LABKIT_TS_THREADS",
    "LABKIT_TORCH_THREADS",
    "LABKIT_MODEL_ARCH",
    "LABKIT_MODEL_PATH",
    "LABKIT_READY_DELAY_S",
    "LABKIT_LB_RETRIES",
    "LABKIT_LB_MODE",
    "LABKIT_CELERY_WORKERS",
    "LABKIT_CAPSTONE_FAMILIES",
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


def _number(name: str, default: float, kind: type[int] | type[float], minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadInput(f"{name}={raw!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if value < minimum:
        raise BadInput(f"{name}={raw!r} must be at least {minimum:g}")
    return value


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


def device_name() -> str:
    """LABKIT_DEVICE as written (lower case), or ``"auto"``; ``hardware.device()`` resolves it."""
    return os.environ.get("LABKIT_DEVICE", "").strip().lower() or "auto"


def torchserve_threads() -> int:
    """LABKIT_TS_THREADS: torch threads in each TorchServe worker (default 1)."""
    return int(_number("LABKIT_TS_THREADS", 1, int, 1))


def model_server_threads() -> int:
    """LABKIT_TORCH_THREADS: torch threads in one model-server replica (default 1)."""
    return int(_number("LABKIT_TORCH_THREADS", 1, int, 1))


def model_arch() -> str:
    """LABKIT_MODEL_ARCH: which digit model a model-server replica serves, ``cnn`` (default) or ``mlp``."""
    arch = os.environ.get("LABKIT_MODEL_ARCH", "").strip().lower() or "cnn"
    if arch not in ("cnn", "mlp"):
        raise BadInput(f"LABKIT_MODEL_ARCH={arch!r}: use cnn or mlp")
    return arch


def model_path() -> str | None:
    """LABKIT_MODEL_PATH: weights (a state_dict .pt) a replica loads; None: the cached trained model."""
    return os.environ.get("LABKIT_MODEL_PATH", "").strip() or None


def ready_delay_s() -> float:
    """LABKIT_READY_DELAY_S: extra seconds before a replica's /readyz says ready (default 0)."""
    return float(_number("LABKIT_READY_DELAY_S", 0.0, float, 0.0))


def balancer_retries(default: int) -> int:
    """LABKIT_LB_RETRIES: how often the balancer retries a failed request (``default`` when unset)."""
    return int(_number("LABKIT_LB_RETRIES", default, int, 0))


def balancer_mode(default: str) -> str:
    """LABKIT_LB_MODE as written (``default`` when unset); ``apps.balancer`` says which modes exist."""
    return os.environ.get("LABKIT_LB_MODE", "").strip() or default


def capstone_families() -> set[str]:
    """LABKIT_CAPSTONE_FAMILIES: the capstone families to run (empty set: all of them)."""
    return {f.strip() for f in os.environ.get("LABKIT_CAPSTONE_FAMILIES", "").split(",") if f.strip()}


def celery_workers_external() -> bool:
    """LABKIT_CELERY_WORKERS=external: use the Celery workers already consuming the broker, start none."""
    raw = os.environ.get("LABKIT_CELERY_WORKERS", "").strip().lower()
    if raw not in ("", "external", "local"):
        raise BadInput(f"LABKIT_CELERY_WORKERS={raw!r}: use external (workers run elsewhere) or local (default)")
    return raw == "external"


def settings() -> Settings:
    """Read every setting now and return them together."""
    return Settings(
        fast=fast(),
        strict=strict(),
        cache_dir=cache_dir(),
        device=device_name(),
        external={k: v for k in EXTERNAL_SERVICE_VARS if (v := os.environ.get(k, "").strip())},
    )
