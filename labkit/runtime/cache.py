"""A disk cache for things that are slow to make (trained weights, exported models).

Entries are keyed by a hash of their config and a code version, so changing either rebuilds.
A broken entry is reported in one line and rebuilt, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from labkit import config

__all__ = ["cache_key", "cached_path", "load_or_build"]

T = TypeVar("T")


def cache_key(spec: dict[str, Any], code_version: str) -> str:
    """Return a short stable hash of a JSON-able spec and a code version."""
    blob = json.dumps({"spec": spec, "code": code_version}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_path(kind: str, name: str, spec: dict[str, Any], code_version: str, suffix: str = ".pt") -> Path:
    """Return where the cache entry for ``spec`` lives (it may not exist yet)."""
    return config.cache_dir(kind) / f"{name}-{cache_key(spec, code_version)}{suffix}"


def load_or_build(path: Path, load: Callable[[Path], T], build: Callable[[Path], T]) -> tuple[T, bool]:
    """Load ``path`` if it exists and is readable, else build it; return (value, was_cached).

    ``build(path)`` must write the entry to ``path`` and return the value.
    """
    if path.exists():
        try:
            return load(path), True
        except Exception as exc:  # a torn write, an old format, a truncated file
            print(f"labkit: cache file {path.name} is unreadable ({type(exc).__name__}); rebuilt", file=sys.stderr)
            path.unlink(missing_ok=True)
    tmp_value = build(path)
    return tmp_value, False
