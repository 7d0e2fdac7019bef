"""labkit: plumbing for the Model Parallel Inference lab.

Importing labkit is cheap and changes nothing: no torch, no service clients, no directories
created. Import the module you need by name: ``from labkit import hardware, models, timing, plots``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "bench",
    "benchmarks",
    "cache",
    "capstone",
    "celery_tasks",
    "config",
    "data",
    "doctor",
    "errors",
    "exercises",
    "hardware",
    "hpa",
    "load",
    "models",
    "patterns",
    "plots",
    "ray_models",
    "pool",
    "services",
    "tfmodels",
    "tfserving_api",
    "timing",
    "torchserve_handler",
    "tinygpt",
    "vision",
]
