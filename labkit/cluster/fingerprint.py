"""What must be identical on every node, as one hash: labkit's code, key package versions, model weights.

``node_fingerprint()`` runs wherever it is called — on a Ray node as a task, in a torchrun rank,
in a Celery worker — and returns the parts and one combined hash; compare them across nodes
with ``differences()``. Shown in 04 and 07 (Beyond one machine).
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path
from typing import Any, Literal

__all__ = ["PACKAGES", "code_hash", "differences", "node_fingerprint"]

PACKAGES = ("torch", "numpy", "ray", "celery")


def code_hash() -> str:
    """sha256 (16 hex digits) over every ``.py`` file of the installed labkit, by relative path."""
    import labkit

    root = Path(labkit.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def node_fingerprint(arch: Literal["cnn", "mlp"] = "cnn") -> dict[str, Any]:
    """This node's host name, labkit code hash, package versions and the digit model's weights hash.

    Shown in 04 and 07.
    """
    from importlib.metadata import PackageNotFoundError, version

    from labkit.models import digit_nets

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    weights = digit_nets.weights_hash(digit_nets.trained(digit_nets.TrainConfig(arch=arch), progress=False))
    parts = {"code": code_hash(), "packages": versions, "weights": weights}
    combined = hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()[:16]
    return {"host": socket.gethostname(), **parts, "hash": combined}


def differences(prints: list[dict[str, Any]]) -> list[str]:
    """What differs between the fingerprints of several nodes (empty: they are identical)."""
    out = []
    for key in ("code", "packages", "weights"):
        values = {repr(p[key]) for p in prints}
        if len(values) > 1:
            out.append(f"{key}: {sorted(values)}")
    return out
