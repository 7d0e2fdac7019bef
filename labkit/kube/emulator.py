"""The emulated cluster in one import: Deployment + Service, the HPA loop, runs and their figures.

No control plane runs here, so labkit plays the controllers with real processes; this module only
gathers the public names of the modules that do it (one concern each):

- ``labkit.kube.deployment``: ``start_deployment``, ``Deployment`` (replicas + Service)
- ``labkit.kube.autoscaler``: ``Autoscaler`` (the HPA control loop reading the replicas' metrics)
- ``labkit.kube.emulation``: ``payload``, ``calibrate``, ``emulate``, ``Emulation`` (runs, analysis)
- ``labkit.kube.plot``: ``plot`` (the four-panel figure), ``plot_costs``

Used in 08 and 14.
"""

from __future__ import annotations

from labkit.kube.autoscaler import INFLIGHT_METRIC, TIME_SCALE, Autoscaler, Sample
from labkit.kube.deployment import CPU_REQUEST_MILLI, SERVICE_MODES, Deployment, Replica, start_deployment
from labkit.kube.emulation import Calibration, Emulation, calibrate, emulate, payload
from labkit.kube.plot import EMULATION_LABEL
from labkit.kube.plot import costs as plot_costs
from labkit.kube.plot import runs as plot

__all__ = [
    "CPU_REQUEST_MILLI",
    "EMULATION_LABEL",
    "INFLIGHT_METRIC",
    "SERVICE_MODES",
    "TIME_SCALE",
    "Autoscaler",
    "Calibration",
    "Deployment",
    "Emulation",
    "Replica",
    "Sample",
    "calibrate",
    "emulate",
    "payload",
    "plot",
    "plot_costs",
    "start_deployment",
]
