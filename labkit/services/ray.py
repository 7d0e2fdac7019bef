"""Ray for the lab: start a local cluster (or join a real one), start Serve, stop everything.

``start()`` runs ``ray.init`` with settings that suit a small shared machine (2 CPUs, no
dashboard, worker logs kept out of the notebook, everything on 127.0.0.1). If ``RAY_ADDRESS`` is
set, it joins that cluster instead and ``stop()`` only disconnects. The handle remembers every
process the local cluster started (gcs_server, raylet, workers, Serve replicas), so ``stop()``
can prove with psutil that none is left::

    with services.ray.start(num_cpus=2) as cluster:
        url = cluster.start_serve()          # Serve's HTTP proxy on 127.0.0.1:<free port>
        ...
    assert not cluster.leftover()

Used in 07 and 14.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from labkit import config
from labkit.errors import ServiceUnavailable
from labkit.runtime import process
from labkit.runtime.process import LOG_TAIL_LINES, Handle, free_port

__all__ = [
    "RAY_PROCESS_MARKERS",
    "RayHandle",
    "ReplicaSampler",
    "leftover_processes",
    "node_name",
    "quiet_logs",
    "replica_count",
    "start",
]

DEFAULT_NUM_CPUS = 2
STOP_TIMEOUT_S = 15.0
START_ATTEMPTS = 3
START_WAIT_S = 120.0
SERVE_METRICS_PUSH_S = 0.5
# Process names / command lines that belong to a Ray node (used to prove a clean shutdown).
RAY_PROCESS_MARKERS = ("raylet", "gcs_server", "ray::", "default_worker.py", "log_monitor.py", "dashboard", "runtime_env", "monitor.py", "ray_client_server")
# Loggers that print routine INFO lines (and the token-auth notice) into a notebook.
_NOISY_LOGGERS = ("ray", "ray.serve", "ray.data", "ray._private", "ray._private.authentication.authentication_token_setup")
_INSTALL_HINT = "pip install 'ray[serve,data]' (it is in labkit's dependencies)"


def _is_ray_process(proc: Any) -> bool:
    import psutil

    try:
        text = proc.name() + " " + " ".join(proc.cmdline()[:3])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(m in text for m in RAY_PROCESS_MARKERS)


def _ray_descendants() -> list[Any]:
    """Ray processes below this interpreter (a local cluster's head node and its workers)."""
    import psutil

    return [p for p in psutil.Process().children(recursive=True) if _is_ray_process(p)]


@contextmanager
def _patient_node_wait(timeout_s: float) -> Iterator[None]:
    """Let ``ray.init`` wait up to ``timeout_s`` (not its fixed 30 s) for the raylet to register.

    Ray 2.60 polls ``ray._private.services.get_node`` for 30 s; this wraps it to keep polling.
    """
    import ray._private.services as services

    original = services.get_node
    deadline = time.monotonic() + timeout_s

    def patient(gcs_address: str, node_id: str) -> Any:
        while True:
            try:
                return original(gcs_address, node_id)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    services.get_node = patient
    try:
        yield
    finally:
        services.get_node = original


def _kill_our_ray_processes() -> None:
    """After a failed start: end the Ray processes this interpreter started (by pid)."""
    import ray

    try:
        ray.shutdown()
    except Exception:  # nothing was connected
        pass
    process.end_processes(_ray_descendants(), signal.SIGKILL, timeout_s=5.0)


def leftover_processes(pids: set[int] | None = None) -> list[str]:
    """Describe Ray processes still alive: this interpreter's Ray descendants plus ``pids``.

    An empty list is the proof that a shutdown left nothing behind.
    """
    import psutil

    alive: dict[int, str] = {}
    for p in _ray_descendants():
        alive[p.pid] = f"{p.name()} (pid {p.pid})"
    for pid in pids or set():
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                alive[pid] = f"{p.name()} (pid {pid})"
        except psutil.NoSuchProcess:
            pass
    return sorted(alive.values())


@contextmanager
def quiet_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Raise Ray's driver-side loggers to ``level`` inside the block (routine INFO lines hidden)."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, lvl in saved.items():
            logging.getLogger(name).setLevel(lvl)


class RayHandle(Handle):
    """A Ray cluster this interpreter is connected to: ``url`` is its GCS address.

    ``external`` is True when it came from ``RAY_ADDRESS``: ``stop()`` then only disconnects.
    """

    def __init__(self, url: str, external: bool, pids: set[int], started_s: float) -> None:
        super().__init__("ray", url, None, started_s=started_s)
        self._external = external
        self.pids = set(pids)
        self.serve_url: str | None = None
        self._apps_before: set[str] = set()
        self.stopped = False

    @property
    def external(self) -> bool:
        return self._external

    @property
    def pid(self) -> int | None:
        import psutil

        for pid in sorted(self.pids):
            try:
                if psutil.Process(pid).name().startswith("raylet"):
                    return pid
            except psutil.NoSuchProcess:
                continue
        return None

    def alive(self) -> bool:
        import ray

        return not self.stopped and ray.is_initialized()

    def processes(self) -> list[str]:
        """The Ray processes of the local cluster right now (name and pid)."""
        self.pids |= {p.pid for p in _ray_descendants()}
        return leftover_processes(self.pids)

    def rss_mb(self) -> float:
        """Resident memory of the local cluster's processes (and their descendants), in MB."""
        return process.tree_rss_mb(self.pids)

    def logs(self, n: int = LOG_TAIL_LINES) -> str:
        import ray

        if self.external or not ray.is_initialized():
            return f"see the logs of the cluster at {self.url}"
        session = ray._private.worker._global_node.get_session_dir_path()
        path = os.path.join(session, "logs", "raylet.out")
        try:
            with open(path, errors="replace") as f:
                return "\n".join(f.read().splitlines()[-n:])
        except OSError:
            return f"no raylet log at {path}"

    def start_serve(self, port: int | None = None) -> str:
        """Start Ray Serve's HTTP proxy on 127.0.0.1 (a free port) and return its base URL.

        On a cluster where Serve already runs (an earlier driver started it), Serve keeps its
        proxy's port and ignores ours: the URL returned is the port it really listens on.
        Serve's routine INFO lines (app ready, deleting app) are hidden from then on.
        """
        from ray import serve
        from ray.serve.context import _get_global_client

        port = port or free_port()
        # Serve logs every deploy/delete at INFO in the driver; keep warnings and errors only.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        with quiet_logs(logging.ERROR):  # an existing Serve warns that our HTTP options are ignored
            serve.start(http_options={"host": "127.0.0.1", "port": port})
        self._apps_before = set(serve.status().applications)
        port = _get_global_client().http_config.port
        self.serve_url = f"http://127.0.0.1:{port}"
        self.pids |= {p.pid for p in _ray_descendants()}
        return self.serve_url

    def stop_serve(self) -> None:
        """Stop Serve: on a local cluster all of it; on an external one, the applications deployed since ``start_serve``.

        A replica holds its CPUs until deleted, so leaving them on a shared cluster would starve the next driver.
        """
        if self.serve_url is None:
            return
        from ray import serve

        with quiet_logs(logging.ERROR):
            if not self.external:
                serve.shutdown()
            else:
                for app in sorted(set(serve.status().applications) - self._apps_before):
                    serve.delete(app)
        self.serve_url = None

    def stop(self) -> None:
        """Stop Serve and Ray, then wait until every Ray process of the local cluster is gone."""
        import psutil
        import ray

        if self.stopped:
            return
        if not self.external:
            self.pids |= {p.pid for p in _ray_descendants()}
        try:
            self.stop_serve()
        finally:
            with quiet_logs(logging.ERROR):
                ray.shutdown()
            self.stopped = True
        if self.external:
            return
        procs = []
        for pid in self.pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        process.end_processes(procs, None, timeout_s=STOP_TIMEOUT_S)  # ours (we recorded their pids): SIGKILL what outlives the wait

    def leftover(self) -> list[str]:
        """Ray processes of this cluster still alive (empty after a clean ``stop()``)."""
        return [] if self.external else leftover_processes(self.pids)

    def __enter__(self) -> RayHandle:
        return self


@contextmanager
def _loopback_only() -> Iterator[None]:
    """While a local cluster starts, make Ray's processes listen on 127.0.0.1 only.

    Ray 2.60 rewrites ``_node_ip_address="127.0.0.1"`` to the host's routable address, and its
    GCS, raylet and agents then listen on every interface (measured: 0.0.0.0, ::, 192.0.2.2).
    ``ray._private.services.get_node_ip_address`` keeps the loopback address only when
    ``ray_constants.ENABLE_RAY_CLUSTER`` is false, which Ray reads from
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` at import (false by default on macOS and Windows only).
    A one-node lab cluster needs no other machine to reach it: the flag is set for the start
    (the variable for the processes Ray starts, the constant for a ``ray`` already imported) and
    put back afterwards, so joining a real cluster later (``RAY_ADDRESS``) is unaffected.
    Measured with it: every listening socket of the cluster on 127.0.0.1.
    """
    from ray._private import ray_constants

    from labkit.runtime.environ import patch_environment

    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with patch_environment(**{ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag


def start(num_cpus: int = DEFAULT_NUM_CPUS, num_gpus: int | None = None, address: str | None = None, **init_kwargs: Any) -> RayHandle:
    """Start a local Ray cluster (or join ``address`` / ``RAY_ADDRESS``) and return its handle.

    Local settings: ``num_cpus`` CPUs, no dashboard, worker output kept in log files, nodes on
    127.0.0.1. Extra keyword arguments go to ``ray.init``.

    Shown in 07 (Start Ray).
    """
    try:
        import ray
    except ImportError as exc:
        raise ServiceUnavailable("ray is not installed", _INSTALL_HINT) from exc
    address = address or config.external_url("RAY_ADDRESS")
    t0 = time.monotonic()
    if ray.is_initialized():  # a re-run cell: start from a clean slate
        ray.shutdown()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # The raylet waits for its Python agents (their imports take seconds) and ray.init waits 30 s for
    # the raylet: on a machine shared by many busy processes that is not enough. Give both longer.
    os.environ.setdefault("RAY_agent_register_timeout_ms", str(int(START_WAIT_S * 1000)))
    os.environ.setdefault("RAY_raylet_start_wait_time_s", str(int(START_WAIT_S)))
    # Serve replicas and proxies report load for autoscaling every 10 s by default; a demo needs ~0.5 s.
    # These variables replace the deprecated autoscaling_config["metrics_interval_s"]; Ray 2.60 defines
    # them but still pushes every metrics_interval_s (10 s), so they take effect only in later versions.
    for var in ("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"):
        os.environ.setdefault(var, str(SERVE_METRICS_PUSH_S))
    # The driver prints "(raylet) Task … failed. There are N retries remaining, so the task will be
    # retried" before each retry, also for Serve's own shutdown call. A task out of retries still
    # raises, and a worker's death is still reported; only the notice of a coming retry is off.
    os.environ.setdefault("RAY_enable_output_error_log_if_still_retry", "0")
    kwargs: dict[str, Any] = {"log_to_driver": False, "ignore_reinit_error": True, "logging_level": logging.WARNING}
    if address:
        kwargs.update(init_kwargs)
        try:
            with quiet_logs():
                ray.init(address=address, **kwargs)
        except Exception as exc:  # AuthenticationError above all: the cluster wants its token
            if "token" not in str(exc).lower():
                raise
            raise ServiceUnavailable(
                f"could not join the Ray cluster at {address}: {exc}",
                "set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN=VALUE) before starting the kernel; `labkit cluster up` prints them",
            ) from exc
        return RayHandle(address, True, set(), time.monotonic() - t0)
    kwargs.update(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    kwargs.update(init_kwargs)
    ctx = None
    for attempt in range(1, START_ATTEMPTS + 1):
        with quiet_logs():
            try:
                with _patient_node_wait(START_WAIT_S), _loopback_only():
                    ctx = ray.init(address="local", **kwargs)
                break
            except Exception as exc:  # Ray waits 30 s for its raylet: an overloaded machine can miss that
                _kill_our_ray_processes()
                if attempt == START_ATTEMPTS:
                    raise ServiceUnavailable(f"ray.init failed {attempt} times: {exc}", "close other heavy programs, or set RAY_ADDRESS to a running cluster") from exc
    url = getattr(ctx, "address_info", {}).get("gcs_address") or ray.get_runtime_context().gcs_address
    return RayHandle(url, False, {p.pid for p in _ray_descendants()}, time.monotonic() - t0)


_NODE_NAME: dict[str, str] = {}


def node_name() -> str:
    """Which Ray node runs this code, as ``"ray node <name>"``: its ``host_<name>`` resource, else its node id's first 8 hex digits.

    Called inside a task or a replica to say where an answer was computed (``labkit cluster up``
    gives every node a ``host_<name>`` resource). Asked once per process. Used in 14.
    """
    import ray

    me = ray.get_runtime_context().get_node_id()
    if me not in _NODE_NAME:
        node: dict[str, Any] = next((n for n in ray.nodes() if n.get("NodeID") == me), {})
        hosts = sorted(k.removeprefix("host_") for k in node.get("Resources", {}) if k.startswith("host_"))
        _NODE_NAME[me] = f"ray node {hosts[0] if hosts else me[:8]}"
    return _NODE_NAME[me]


def replica_count(app: str, deployment: str) -> int:
    """Number of RUNNING replicas of one Serve deployment (0 if it does not exist yet)."""
    from ray import serve

    try:
        dep = serve.status().applications[app].deployments[deployment]
    except KeyError:
        return 0
    states = dep.replica_states or {}
    return int(sum(n for state, n in states.items() if str(getattr(state, "value", state)) == "RUNNING"))


class ReplicaSampler:
    """Sample a deployment's replica count every ``interval_s`` in a thread: ``t_s`` and ``replicas``.

    ``with ReplicaSampler("app", "Digits") as s: load.ramp(...)`` then plot ``s.t_s, s.replicas``;
    times are seconds on ``labkit.measure.timing.now()``'s clock.
    """

    def __init__(self, app: str, deployment: str, interval_s: float = 0.5) -> None:
        self.app = app
        self.deployment = deployment
        self.interval_s = interval_s
        self.t_s: list[float] = []
        self.replicas: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labkit-replicas", daemon=True)

    def _run(self) -> None:
        from labkit.measure.timing import now

        while not self._stop.is_set():
            try:
                n = replica_count(self.app, self.deployment)
            except Exception:  # Serve busy or shutting down: skip one sample
                n = self.replicas[-1] if self.replicas else 0
            self.t_s.append(now())
            self.replicas.append(n)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> ReplicaSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
