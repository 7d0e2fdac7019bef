"""Code that runs inside a server process, started by ``labkit.services`` (or by a real deployment).

celery_tasks (the Celery app and tasks), gateway (FastAPI in front of Celery), model_server (one
replica of the Kubernetes lesson), balancer (its Service), torchserve_handler (the TorchServe
handler), tfserving/ (the TF-Serving-API stand-in server); wire (the JSON each of them speaks: one
codec base, one codec per server, used by clients and servers alike).
"""

from __future__ import annotations

__all__: list[str] = []  # import the submodules by name
