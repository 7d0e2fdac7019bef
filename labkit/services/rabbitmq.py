"""RabbitMQ (Debian ``rabbitmq-server``) as a plain subprocess, no systemd, nothing shared.

    with rabbitmq.start() as mq:      # or RABBITMQ_URL=amqp://... to use an external one
        print(mq.url)                 # amqp://guest:guest@127.0.0.1:PORT//

Its own ``epmd`` on a free port (``ERL_EPMD_PORT``), its own HOME (Erlang cookie), node name,
mnesia, log, config and plugin files in a fresh folder. Ready means an AMQP connection succeeded
(kombu), not just an open port: about 5 s. ``stop()`` stops the server, then its epmd.
Used in 06 (Celery broker, side by side with Redis).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from labkit import config, needs
from labkit.errors import ServiceUnavailable
from labkit.measure.timing import now
from labkit.runtime import process

__all__ = ["RabbitMQHandle", "amqp_ready", "available", "server_script", "start"]

INSTALL_HINT = "install Debian/Ubuntu `rabbitmq-server` (apt-get install rabbitmq-server), or set CELERY_BROKER_URL=amqp://..."


class RabbitMQHandle(process.Handle):
    """A running RabbitMQ node: ``url`` (amqp://...), ``pid``, ``logs()``, ``stop()`` (server, then epmd)."""

    def __init__(self, *args, base_dir: str | None = None, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.base_dir = base_dir

    def stop(self) -> None:
        super().stop()
        if self.base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None


def server_script() -> str | None:
    """Path of the real ``rabbitmq-server`` script (Debian's package, or one on PATH such as Homebrew's), or None.

    Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the rabbitmq user: the script
    it runs is used instead, so the node runs as this user in its own folder.
    """
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    if found:
        return found[-1]
    on_path = shutil.which("rabbitmq-server")
    if on_path and not os.path.realpath(on_path).endswith("rabbitmq-script-wrapper"):
        return on_path
    return None


def _external() -> str | None:
    """RABBITMQ_URL, else CELERY_BROKER_URL when it is an amqp:// URL."""
    url = config.external_url("RABBITMQ_URL") or config.external_url("CELERY_BROKER_URL")
    return url if url and url.startswith(("amqp", "pyamqp")) else None


def available() -> bool:
    """True if a RabbitMQ can be started here (server script and epmd found) or one is configured."""
    url = _external()
    if url and url.startswith(("amqp", "pyamqp")):
        return True
    return needs.status("rabbitmq").ok


def amqp_ready(url: str, timeout_s: float = 2.0) -> bool:
    """True if an AMQP connection to ``url`` succeeds (kombu)."""
    from kombu import Connection

    with Connection(url, connect_timeout=timeout_s) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout_s)
        return bool(conn.connected)


def start(timeout_s: float = 60.0, external: bool = True) -> RabbitMQHandle:
    """Start a private RabbitMQ node on free ports; or use RABBITMQ_URL (or an amqp:// CELERY_BROKER_URL).

    ``external=False`` always starts a local node. Used in 06.
    """
    url = _external() if external else None
    if url:
        if not amqp_ready(url):
            raise ServiceUnavailable(f"RabbitMQ at {url} does not accept AMQP connections", "start that broker or unset RABBITMQ_URL / CELERY_BROKER_URL")
        return RabbitMQHandle("rabbitmq", url)
    script = server_script()
    epmd = shutil.which("epmd")
    if script is None or epmd is None:
        raise needs.unavailable("rabbitmq")

    t0 = now()
    base = tempfile.mkdtemp(prefix="rabbitmq-", dir=config.cache_dir("rabbitmq"))
    epmd_port, amqp_port, dist_port = process.free_port(), process.free_port(), process.free_port()
    for sub in ("home", "mnesia", "log"):
        os.makedirs(os.path.join(base, sub))
    conf = os.path.join(base, "rabbitmq.conf")
    with open(conf, "w") as f:
        f.write(f"listeners.tcp.default = 127.0.0.1:{amqp_port}\ndisk_free_limit.absolute = 50MB\n")
    plugins = os.path.join(base, "enabled_plugins")
    with open(plugins, "w") as f:
        f.write("[].\n")
    env_file = os.path.join(base, "rabbitmq-env.conf")
    open(env_file, "w").close()  # don't read /etc/rabbitmq/rabbitmq-env.conf
    env = {
        "HOME": os.path.join(base, "home"),
        "ERL_EPMD_PORT": str(epmd_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODENAME": f"labkit-{amqp_port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
        "RABBITMQ_LOG_BASE": os.path.join(base, "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": plugins,
        "RABBITMQ_CONFIG_FILE": conf,
        "RABBITMQ_CONF_ENV_FILE": env_file,
        "RABBITMQ_PID_FILE": os.path.join(base, "rabbitmq.pid"),
        "RABBITMQ_ALLOW_INPUT": "",
    }
    epmd_proc = process.start(f"epmd-{epmd_port}", [epmd, "-port", str(epmd_port), "-address", "127.0.0.1"], env=env, ready=lambda: _port_open(epmd_port), timeout_s=10)
    url = f"amqp://guest:guest@127.0.0.1:{amqp_port}//"
    try:
        server = process.start(
            f"rabbitmq-{amqp_port}", [script], env=env, ready=lambda: amqp_ready(url, 1.0), timeout_s=timeout_s, install_hint=INSTALL_HINT
        )
    except BaseException:
        epmd_proc.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    return RabbitMQHandle("rabbitmq", url, server, extra=[epmd_proc], started_s=now() - t0, base_dir=base)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0
