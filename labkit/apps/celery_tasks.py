"""The Celery app of notebook 06: the seed's ``model_1``/``model_2`` made real, one queue per model.

The seed wrote ``@app.task def model_1(data): time.sleep(...)``. Here ``model_1`` runs the digit
CNN and ``model_2`` the digit MLP, each loaded once per worker process; ``combine`` averages
their probabilities (a chord's callback); ``flaky_predict`` fails twice with a transient error
and retries with exponential backoff. Every task is a pure function of its arguments, so running
one twice (a redelivery after a worker died) gives the same answer: tasks are idempotent.

Workers run it with ``celery -A labkit.apps.celery_tasks worker`` (see ``labkit.services.celery``),
which passes the broker and result backend as CELERY_BROKER_URL / CELERY_RESULT_BACKEND. A
client switches brokers with ``use(broker_url, backend_url)``. Used in 06 and ``labkit bench celery``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, chord, group, signals

__all__ = [
    "BROKER_HEARTBEAT_S",
    "QUEUES",
    "RESULT_EXPIRES_S",
    "UNACKED_MUTEX_EXPIRE_S",
    "UNACKED_RESTORE_INTERVAL_S",
    "UNACKED_RESTORE_LIMIT",
    "VISIBILITY_TIMEOUT_S",
    "TransientError",
    "app",
    "attempt_headers",
    "combine",
    "ensemble",
    "flaky_predict",
    "load_models",
    "model_1",
    "model_2",
    "queue_of",
    "run_log",
    "settings",
    "use",
]

VISIBILITY_TIMEOUT_S = 10  # Redis: an unacknowledged task goes back to the queue after this long
# Redis restore sweep: every worker, every UNACKED_RESTORE_INTERVAL_S, takes kombu's restore lock
# (``unacked_mutex``) and puts back at most UNACKED_RESTORE_LIMIT messages older than the visibility
# timeout. The lock's expiry is the only thing that frees it when a worker is SIGKILLed while
# holding it: kombu's default (300 s) then stalls every restore for 5 minutes. Measured here
# (``labkit.bench.faults.restore_sweep_s``, 100 due messages, each restore a WATCH transaction):
# 0.17 s median, 0.33 s worst on a quiet machine; 1.5–2.3 s at load average 20 on 2 cores. We
# pick 2 s: a lock left by a dead worker then costs at most 2 s more, inside the 2 s margin of
# ``labkit bench faults``' recovery target; and a sweep that outlives the lock (the loaded case) is
# still safe, because restore_by_tag WATCHes the unacked hash, so a second sweeper cannot restore
# the same message twice. A sweep every 1 s: the redelivery time is 10 + 1 s.
UNACKED_RESTORE_INTERVAL_S = 1
UNACKED_RESTORE_LIMIT = 100
UNACKED_MUTEX_EXPIRE_S = 2
BROKER_HEARTBEAT_S = 10  # RabbitMQ: a silent (not closed) connection is declared dead after 2 of these
RUN_LOG_KEY = "labkit:runs"  # where a traced task's runs are logged (on the Redis result backend)
RESULT_EXPIRES_S = 3600  # results are deleted from the backend after an hour
QUEUES = ("celery", "cnn", "mlp")  # default queue + one queue per model
_ROUTES = {"labkit.apps.celery_tasks.model_1": {"queue": "cnn"}, "labkit.apps.celery_tasks.model_2": {"queue": "mlp"}}
_DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def settings(broker_url: str, backend_url: str | None = None) -> dict[str, Any]:
    """The whole configuration: at-least-once delivery, routing, result expiry, JSON only.

    Shown in 06 §3.
    """
    return {
        "broker_url": broker_url,
        "result_backend": backend_url or (broker_url if broker_url.startswith("redis") else "rpc://"),
        # nothing lost when a worker dies: ack after the task ran, requeue if the worker died
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Redis has no connection-level redelivery: unacked tasks come back after visibility_timeout
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_S,
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
            "unacked_restore_limit": UNACKED_RESTORE_LIMIT,
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_S,
        },
        # Redis can still lose a task a worker had just taken (BRPOP, then a second round trip
        # records it as unacked): the clients resubmit past the redelivery time (apps.celery_client)
        "broker_connection_retry_on_startup": True,
        # RabbitMQ: AMQP heartbeats every 10 s, checked every 1 s — a worker also wakes up that often,
        # so it notices SIGTERM at once instead of after its next message
        "broker_heartbeat": BROKER_HEARTBEAT_S,
        "broker_heartbeat_checkrate": 10,
        "task_routes": _ROUTES,
        "result_expires": RESULT_EXPIRES_S,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    }


app = Celery("labkit.apps.celery_tasks")
app.conf.update(settings(os.environ.get("CELERY_BROKER_URL") or _DEFAULT_BROKER, os.environ.get("CELERY_RESULT_BACKEND") or None))


def queue_of(task_name: str) -> str:
    """The queue a task is routed to (``task_routes``; else the default queue)."""
    return str(_ROUTES.get(task_name, {}).get("queue", "celery"))


def use(broker_url: str, backend_url: str | None = None) -> Celery:
    """Point this process's ``app`` (the client side) at another broker and result backend.

    The tasks stay the same; only the URLs change. Workers get theirs from
    ``labkit.services.celery.start``.
    """
    app.conf.update(settings(broker_url, backend_url))
    # drop what was built for the previous URLs: connection pool, producers, result backend
    app._pool = None
    if "amqp" in app.__dict__:
        app.__dict__["amqp"]._producer_pool = None
    app._backend_cache = None
    app._local = threading.local()
    return app


# ---- models: loaded once per worker process ------------------------------------------------------

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def load_models() -> dict[str, Any]:
    """Load (train once, then from the disk cache) the CNN and MLP into this process.

    Shown in 06 §3.
    """
    from labkit.models import digit_nets

    with _models_lock:
        if not _models:
            _models["cnn"] = digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False)
            _models["mlp"] = digit_nets.trained(digit_nets.TrainConfig(arch="mlp"), progress=False)
    return _models


@signals.worker_process_init.connect
def _load_in_pool_child(**_: Any) -> None:  # prefork: each child loads its own copy
    from labkit.runtime import hardware

    hardware.set_threads(1)
    load_models()


@signals.worker_init.connect
def _load_in_worker(sender: Any = None, **_: Any) -> None:  # solo/threads: the worker process itself
    pool = getattr(sender, "pool_cls", None)
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "prefork" not in str(name):  # never load torch in a parent that will fork
        from labkit.runtime import hardware

        hardware.set_threads(1)
        load_models()


def _infer(model: str, images: Any, repeats: int, hostname: str | None) -> dict[str, Any]:
    import numpy as np
    import torch

    from labkit.models.digit_nets import predict_logits

    x = np.asarray(images, dtype=np.float32).reshape(-1, 1, 8, 8)
    m = load_models()[model]
    for _ in range(max(1, int(repeats))):
        logits = predict_logits(m, x)
    probs = torch.softmax(logits, dim=1)
    return {
        "model": model,
        "pred": probs.argmax(dim=1).tolist(),
        "probs": probs.numpy().round(6).tolist(),
        "worker": hostname,
        "pid": os.getpid(),
    }


# ---- the run log: which attempt of which task started where (for counting, never for answers) -----


def attempt_headers(attempt: int, trace: bool = False) -> dict[str, Any]:
    """Message headers a client sends with attempt ``attempt`` of a task (``trace``: log its runs)."""
    return {"labkit_attempt": attempt, "labkit_trace": 1 if trace else 0}


def _header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


@signals.task_prerun.connect
def _log_run(task_id: str = "", task: Any = None, **_: Any) -> None:
    """A traced task logs ``<task id> <attempt> <pid>`` on the Redis result backend as it starts."""
    request = getattr(task, "request", None)
    if request is None or not _header(request, "labkit_trace"):
        return
    client = getattr(task.backend, "client", None)
    if client is not None:
        client.rpush(RUN_LOG_KEY, f"{task_id} {_header(request, 'labkit_attempt') or 1} {os.getpid()}")


def run_log(client: Any, clear: bool = False) -> list[tuple[str, int, int]]:
    """Every logged run so far, as ``(task id, attempt, worker pid)``; ``clear`` empties the log."""
    raw = client.lrange(RUN_LOG_KEY, 0, -1)
    if clear:
        client.delete(RUN_LOG_KEY)
    out = []
    for line in raw:
        key, attempt, pid = line.decode().split()
        out.append((key, int(attempt), int(pid)))
    return out


# ---- tasks ----------------------------------------------------------------------------------------


@app.task(bind=True, name="labkit.apps.celery_tasks.model_1", track_started=True)
def model_1(self: Any, images: list[Any], repeats: int = 1) -> dict[str, Any]:
    """The seed's model_1, made real: the digit CNN on a list of 8×8 images (routed to queue 'cnn').

    ``repeats`` runs the model that many times (a heavier model, for the fault-injection demo).
    ``track_started``: while it runs, its state is STARTED with the worker's pid and hostname.

    Shown in 06 §3.
    """
    return _infer("cnn", images, repeats, self.request.hostname)


@app.task(bind=True, name="labkit.apps.celery_tasks.model_2")
def model_2(self: Any, images: list[Any], repeats: int = 1) -> dict[str, Any]:
    """The seed's model_2, made real: the digit MLP (routed to queue 'mlp')."""
    return _infer("mlp", images, repeats, self.request.hostname)


@app.task(name="labkit.apps.celery_tasks.combine")
def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """A chord's callback: average the members' probabilities, then take the argmax."""
    import numpy as np

    probs = np.mean([np.asarray(r["probs"]) for r in results], axis=0)
    return {"pred": probs.argmax(axis=1).tolist(), "members": [r["model"] for r in results], "workers": [r["worker"] for r in results]}


class TransientError(RuntimeError):
    """A failure worth retrying (a busy GPU, a dropped connection): the next attempt may succeed."""


@app.task(bind=True, name="labkit.apps.celery_tasks.flaky_predict", max_retries=5)
def flaky_predict(self: Any, images: list[Any], fail_first: int = 2, backoff_s: float = 0.05) -> dict[str, Any]:
    """Fail with a TransientError on the first ``fail_first`` attempts, then predict with the MLP.

    Each retry waits ``backoff_s * 2**attempt`` (exponential backoff). Deterministic, so idempotent.
    """
    if self.request.retries < fail_first:
        exc = TransientError(f"attempt {self.request.retries + 1}: model busy")
        raise self.retry(exc=exc, countdown=backoff_s * 2**self.request.retries)
    out = _infer("mlp", images, 1, self.request.hostname)
    out["attempts"] = self.request.retries + 1
    return out


def ensemble(images: list[Any]) -> Any:
    """A chord: ``group(model_1, model_2)`` run in parallel on the two queues, then ``combine``.

    Shown in 06 §3.
    """
    return chord(group(model_1.s(images), model_2.s(images)), combine.s())
