"""Every model of the course and how it is trained and cached on disk.

store (load a cached state dict or train and save atomically; the one fit loop), digit_nets (the
digit CNN and MLP), vision (the pipeline stages of 01), tinygpt (03), wide (the
float32 timing model the serving benchmarks batch), savedmodels (Keras models exported as TF
SavedModels for 10). Import the module you need: ``from labkit.models import digit_nets``.
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
