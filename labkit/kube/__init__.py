"""Kubernetes, emulated where no cluster exists (every figure says so), and the real thing via kubectl.

    calculator   the HPA replica calculator of Kubernetes v1.35.0 (replica_calculator.go, utilization.go)
    hpa          the HPA controller's normalisation of v1.35.0 (horizontal.go): stabilisation,
                 behaviour policies, min/max, the legacy path; metric specs, manifests
    deployment   an emulated Deployment + Service: replica processes behind a balancer
                 (kube-proxy-like, or retrying as a client/ingress would)
    autoscaler   the HPA control loop: reads CPU (psutil) and the replicas' in-flight counters
    emulation    payload, calibration, runs under a load profile, and their analysis
    plot         the figures of runs, labelled as the emulation
    emulator     the public names of the four above in one import
    kubectl      manifests offline (kubernetes-validate, kustomize) and a real cluster (KUBECONFIG)
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
