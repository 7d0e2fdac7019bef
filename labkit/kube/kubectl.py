"""Kubernetes manifests offline, and a real cluster when there is one (kubectl).

- ``deploy_dir()``: the course's ``deploy/`` folder, found from wherever the notebook runs.
- ``load_manifests`` / ``validate``: read YAML and check every object against the OpenAPI schemas
  of a pinned Kubernetes version with kubernetes-validate (``strict`` rejects unknown fields).
- ``kustomize``: render an overlay with ``kubectl kustomize`` (works offline).
- ``cluster()``: None when ``KUBECONFIG`` points at a reachable cluster and ``kubectl`` is on PATH,
  else the reason (one line); then ``run("apply", "-k", ...)`` and ``watch_hpa`` drive the real
  thing. ``where_it_runs()`` says in one line which of the two a notebook uses.

    print("\n".join(kubectl.validate(kubectl.load_manifests(kubectl.deploy_dir() / "k8s" / "base"))))

Used in 08.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labkit import config
from labkit.errors import BadInput, ServiceUnavailable
from labkit.measure.timing import now

__all__ = ["KUBERNETES_VERSION", "cluster", "deploy_dir", "kustomize", "load_manifests", "run", "validate", "watch_hpa", "where_it_runs"]

KUBERNETES_VERSION = "1.35.0"  # manifests are validated against this API version (the release the HPA port follows)
INSTALL_HINT = "install kubectl: https://kubernetes.io/docs/tasks/tools/"


def deploy_dir(start: str | Path | None = None) -> Path:
    """The course's ``deploy/`` folder (Dockerfile, ``k8s/``): the nearest one at ``start`` (default:
    the working directory, i.e. the notebook's folder) or above it, else the one beside the labkit
    package (the repository labkit is installed from). Not a fixed ``../deploy``: a notebook may run
    from ``notebooks/``, ``student-edition/`` or deeper (``make test`` runs ``.cache/paired-edition``).
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    repo = Path(__file__).resolve().parents[2]  # labkit/kube/kubectl.py -> the repository
    for folder in (here, *here.parents, repo):
        if (folder / "deploy" / "k8s").is_dir():
            return folder / "deploy"
    raise BadInput(f"no deploy/k8s folder at or above {here}, nor in {repo}: run from inside the labkit repository")


def load_manifests(path: str | Path) -> list[dict[str, Any]]:
    """Every Kubernetes object in a YAML file (or the *.yaml files of a folder), in order.

    Kustomizations and documents with neither ``kind`` nor ``apiVersion`` (a component's own
    configuration file, such as a prometheus-adapter rule) are not API objects and are left out.
    """
    import yaml

    p = Path(path)
    files = sorted(p.glob("*.yaml")) if p.is_dir() else [p]
    docs = [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]
    return [d for d in docs if d.get("kind") != "Kustomization" and ("kind" in d or "apiVersion" in d)]


def validate(docs: Sequence[Mapping[str, Any]], version: str = KUBERNETES_VERSION, strict: bool = True) -> list[str]:
    """Validate manifests against the Kubernetes ``version`` OpenAPI schemas (kubernetes-validate).

    Returns one line per document (``kind/name: valid``); raises BadInput on the first invalid one.
    """
    try:
        import kubernetes_validate
    except ImportError as exc:
        raise ServiceUnavailable("kubernetes-validate is not installed", "pip install kubernetes-validate") from exc
    lines = []
    for doc in docs:
        label = f"{doc.get('apiVersion')} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        try:
            kubernetes_validate.validate(dict(doc), version, strict=strict)
        except kubernetes_validate.ValidationError as exc:
            raise BadInput(f"{label} is invalid for Kubernetes {version}: {exc.message} at {'.'.join(map(str, exc.path))}") from exc
        lines.append(f"{label}: valid for Kubernetes {version}{' (strict)' if strict else ''}")
    return lines


def kustomize(path: str | Path) -> list[dict[str, Any]]:
    """Render a kustomization with ``kubectl kustomize`` (offline) and return its documents."""
    import yaml

    return [d for d in yaml.safe_load_all(run("kustomize", str(path))) if d]


def cluster() -> str | None:
    """None if KUBECONFIG points at a reachable cluster and kubectl is on PATH, else why not."""
    if shutil.which("kubectl") is None:
        return f"kubectl is not on PATH ({INSTALL_HINT})"
    if not config.external_url("KUBECONFIG"):
        return "KUBECONFIG is not set: no real cluster (kind or minikube give you one; see the README)"
    try:
        run("version", "-o", "json", "--request-timeout=5s", timeout_s=15)
    except ServiceUnavailable as exc:
        last = [line.strip() for line in exc.what.splitlines() if line.strip()][-1:] or ["no answer"]
        return f"the cluster in KUBECONFIG is not reachable ({' '.join(last[0].split())[:200]})"
    return None


def where_it_runs() -> str:
    """One line: the real cluster of KUBECONFIG, or why not and that the emulation runs instead."""
    reason = cluster()
    if reason is None:
        return f"real cluster: {config.external_url('KUBECONFIG')} (kubectl reaches it); section 7 uses it, the rest is the emulation"
    return f"no real cluster: {reason} — running the emulation"


def run(*args: str, timeout_s: float = 120) -> str:
    """Run kubectl with ``args`` and return its stdout; raise ServiceUnavailable with its stderr."""
    exe = shutil.which("kubectl")
    if exe is None:
        raise ServiceUnavailable("kubectl is not on PATH", INSTALL_HINT)
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailable(f"kubectl {' '.join(args)} timed out after {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        raise ServiceUnavailable(f"kubectl {' '.join(args)} failed: {done.stderr.strip()[:300]}")
    return done.stdout


def watch_hpa(name: str, namespace: str = "default", duration_s: float = 60.0, interval_s: float = 5.0) -> list[dict[str, Any]]:
    """Poll a real HPA's status (what ``kubectl get hpa -w`` shows) for ``duration_s``."""
    rows = []
    t0 = now()
    while now() - t0 < duration_s:
        obj = json.loads(run("get", "hpa", name, "-n", namespace, "-o", "json"))
        status = obj.get("status", {})
        cpu = [m["resource"]["current"].get("averageUtilization") for m in status.get("currentMetrics") or [] if m.get("type") == "Resource"]
        rows.append({"t_s": round(now() - t0, 1), "current": status.get("currentReplicas"), "desired": status.get("desiredReplicas"), "cpu_percent": cpu[0] if cpu else None})
        time.sleep(interval_s)
    return rows
