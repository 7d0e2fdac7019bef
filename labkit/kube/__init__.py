"""Kubernetes: hpa (the HPA controller algorithm), emulator (replica processes, a Service and the
autoscaler loop on this machine), kubectl (manifests and a real cluster through KUBECONFIG).
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
