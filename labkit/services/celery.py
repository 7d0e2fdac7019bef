"""Celery workers as subprocesses: ``celery -A labkit.apps.celery_tasks worker ...``, ready by ping.

    workers = celery.start_workers(2, broker_url=r.url, backend_url=r.url)
    ...
    workers[0].kill()                 # fault injection: SIGKILL the whole worker, mid-task
    for w in workers: w.stop()        # SIGTERM to the main pid: a warm shutdown

Never ``worker_main`` inside a notebook kernel: a subprocess can be killed, restarted and
measured like a real deployment. Each worker is started with ``--without-mingle
--without-gossip``, consumes the queues it is given plus one named after itself (so work can be
aimed at one worker), and is ready when ``app.control.ping`` gets its answer. Children die with
their parent. If CELERY_BROKER_URL / CELERY_RESULT_BACKEND are set and no URL is given, those
are used. With LABKIT_CELERY_WORKERS=external, ``start_workers`` starts nothing and returns the
workers already answering on the broker (a cluster's hosts: ``labkit cluster up``); their
handles are external (``stop()`` leaves them running, ``kill()`` refuses). Used in 06 and
``labkit bench celery``.
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from labkit import config
from labkit.errors import BadInput, ServiceUnavailable
from labkit.measure.timing import now
from labkit.runtime import process

__all__ = ["WorkerHandle", "external_workers", "ping", "resolve_urls", "start", "start_workers", "stop_workers"]

DEFAULT_APP = "labkit.apps.celery_tasks"
DEFAULT_QUEUES = ("celery", "cnn", "mlp")
POOLS = ("threads", "solo", "prefork")
# "threads" -c 1 by default: one process per worker (a SIGKILL takes the whole worker), and no
# stall on RabbitMQ — with the solo pool a delivered message could wait ~10 s in the buffer.


class WorkerHandle(process.Handle):
    """A running Celery worker: ``nodename``, ``queues``, ``pid``, ``logs()``, ``stop()``, ``kill()``."""

    def __init__(self, *args: Any, nodename: str = "", queues: Sequence[str] = (), broker_url: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodename = nodename
        self.queues = list(queues)
        self.broker_url = broker_url

    @property
    def own_queue(self) -> str:
        """The queue only this worker consumes (its short name)."""
        return self.nodename.split("@", 1)[0]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children): nothing gets to clean up."""
        if self.process is None:
            raise BadInput("this worker is external: labkit did not start it, so it won't kill it")
        self.process.stop(timeout_s=5.0, sig=signal.SIGKILL)

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.nodename} queues={','.join(self.queues)} pid={self.pid}>"


def resolve_urls(broker_url: str | None = None, backend_url: str | None = None) -> tuple[str, str]:
    """The broker and result backend to use: the arguments, else CELERY_BROKER_URL / CELERY_RESULT_BACKEND."""
    broker = broker_url or config.external_url("CELERY_BROKER_URL")
    if not broker:
        raise BadInput("give broker_url (e.g. labkit.services.redis.start().url) or set CELERY_BROKER_URL")
    backend = backend_url or config.external_url("CELERY_RESULT_BACKEND") or (broker if broker.startswith("redis") else None)
    if not backend:
        raise BadInput("give backend_url (a Redis URL: chords need it) or set CELERY_RESULT_BACKEND")
    return broker, backend


def ping(broker_url: str, nodenames: Sequence[str] | None = None, timeout_s: float = 1.0) -> list[str]:
    """Names of the workers that answered ``app.control.ping`` within ``timeout_s``."""
    from celery import Celery

    ctl = Celery("labkit-ping", set_as_current=False)
    ctl.conf.update(broker_url=broker_url, broker_connection_retry_on_startup=True, broker_transport_options={"visibility_timeout": 10})
    try:
        replies = ctl.control.ping(destination=list(nodenames) if nodenames else None, timeout=timeout_s)
    finally:
        ctl.close()
    return sorted(name for reply in replies for name in reply)


def _launch(name: str, broker: str, backend: str, queues: Sequence[str], pool: str, concurrency: int, app: str) -> WorkerHandle:
    if pool not in POOLS:
        raise BadInput(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if not name.isidentifier():
        raise BadInput(f"worker name must be a simple identifier, got {name!r}")
    all_queues = [*queues, name]
    cmd = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
        "--pool", pool, "-c", str(concurrency), "-n", f"{name}@%h", "-Q", ",".join(all_queues), "--loglevel", "INFO",
    ]  # fmt: skip
    env = {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = process.start(f"celery-{name}", cmd, env=env, install_hint="pip install celery (labkit's dependencies)")
    nodename = f"{name}@{socket.gethostname()}"
    return WorkerHandle("celery-worker", broker, proc, nodename=nodename, queues=all_queues, broker_url=broker)


def start_workers(
    n: int = 1,
    broker_url: str | None = None,
    backend_url: str | None = None,
    queues: Sequence[str] = DEFAULT_QUEUES,
    pool: str = "threads",
    concurrency: int = 1,
    app: str = DEFAULT_APP,
    prefix: str = "w",
    timeout_s: float = 90.0,
    external: bool | None = None,
) -> list[WorkerHandle]:
    """Start ``n`` workers at once (names ``w1``, ``w2``, ...) and wait until every one answers a ping.

    With ``external`` None, ``LABKIT_CELERY_WORKERS=external`` means: use the workers already
    consuming the broker (a cluster's); ``external=False`` always starts local ones (an experiment
    that kills its own workers on its own broker).
    """
    if not 1 <= n <= 16:
        raise BadInput(f"n must be in 1..16, got {n}")
    broker, backend = resolve_urls(broker_url, backend_url)
    if config.celery_workers_external() if external is None else external:
        return external_workers(n, broker, prefix, timeout_s)
    if app == DEFAULT_APP:
        _prepare_models()
    t0 = now()
    handles = []
    try:
        for i in range(n):
            handles.append(_launch(f"{prefix}{i + 1}", broker, backend, queues, pool, concurrency, app))
        want = {h.nodename for h in handles}

        def all_ready() -> bool:
            for h in handles:
                if not h.alive():
                    raise ServiceUnavailable(f"celery worker {h.nodename} exited with code {h.process.returncode}", logs=h.logs())  # type: ignore[union-attr]
            return want <= set(ping(broker, sorted(want), timeout_s=0.5))

        _wait(all_ready, timeout_s, f"celery workers {', '.join(sorted(want))}")
    except BaseException:
        for h in handles:
            h.stop()
        raise
    for h in handles:
        h.started_s = now() - t0
    return handles


def external_workers(n: int, broker_url: str, prefix: str = "w", timeout_s: float = 90.0) -> list[WorkerHandle]:
    """Handles for ``n`` workers named ``<prefix>K@host`` already answering pings on ``broker_url``."""

    seen: set[str] = set()  # replies add up over several pings: a busy worker may miss one window

    def found() -> list[str]:
        seen.update(name for name in ping(broker_url, timeout_s=2.0) if name.split("@", 1)[0].removeprefix(prefix).isdigit())
        return sorted(seen) if len(seen) >= n else []

    names = process.wait_until(found, timeout_s, f"{n} external celery workers named {prefix}N@… on {broker_url}", interval_s=0.5)
    handles = []
    for name in names[:n]:
        short = name.split("@", 1)[0]
        handles.append(WorkerHandle("celery-worker", broker_url, None, nodename=name, queues=[*DEFAULT_QUEUES, short], broker_url=broker_url))
    return handles


def start(name: str = "w1", broker_url: str | None = None, backend_url: str | None = None, queues: Sequence[str] = DEFAULT_QUEUES, pool: str = "threads", concurrency: int = 1, app: str = DEFAULT_APP, timeout_s: float = 90.0) -> WorkerHandle:
    """Start one worker called ``name`` and wait until it answers a ping."""
    broker, backend = resolve_urls(broker_url, backend_url)
    if app == DEFAULT_APP:
        _prepare_models()
    t0 = now()
    h = _launch(name, broker, backend, queues, pool, concurrency, app)
    try:
        _wait(lambda: h.nodename in ping(broker, [h.nodename], timeout_s=0.5), timeout_s, f"celery worker {h.nodename}", h.process)
    except BaseException:
        h.stop()
        raise
    h.started_s = now() - t0
    return h


def stop_workers(workers: Sequence[WorkerHandle], timeout_s: float = 10.0) -> None:
    """Warm-shut-down several workers at once: SIGTERM to every main pid, wait, then clean up each."""
    import psutil

    procs = []
    for w in workers:
        if w.process is not None and w.process.alive():
            w.process.signal(signal.SIGTERM)
            try:
                procs.append(psutil.Process(w.process.pid))
            except psutil.NoSuchProcess:
                pass
    psutil.wait_procs(procs, timeout=timeout_s)
    for w in workers:
        w.stop()  # SIGKILLs what did not exit in time, removes pid files


def _prepare_models() -> None:
    """Train/cache the models once here, not in every worker at once."""
    from labkit.models import digit_nets

    digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False)
    digit_nets.trained(digit_nets.TrainConfig(arch="mlp"), progress=False)


def _wait(check: Any, timeout_s: float, what: str, proc: Any = None) -> None:
    process.wait_until(check, timeout_s, what, interval_s=0.2, proc=proc)
