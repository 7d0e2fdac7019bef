"""Real services started from a notebook or test: one module per component.

Every start function returns a handle with ``.url``, ``.pid``, ``.logs()`` and ``.stop()``, usable
as a context manager. Ready means a real request succeeded. Everything binds 127.0.0.1 on a port
the OS picked; children die with their parent; ``labkit services --stop-all`` cleans up anything
labkit started. If the matching env var (REDIS_URL, CELERY_BROKER_URL, RAY_ADDRESS, ...) is set,
that external deployment is used instead and ``stop()`` leaves it alone.

Import the module you need: ``from labkit.services import redis``.
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
