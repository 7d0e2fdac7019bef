"""The extra wheels ``labkit gpu-check`` uses on a GPU machine that has no Jupyter, and how to bring them.

A GPU machine of this lab (see README, "Running on a GPU") has Python 3.12, CUDA PyTorch and the
packages in ``PREINSTALLED``, no network, and no Jupyter. ``WHEELS`` is what running notebooks
through nbclient (and the lab's ipywidgets and pydantic) adds on top: the whole dependency
closure for CPython 3.12 on manylinux x86_64, pinned, minus what ``PREINSTALLED`` holds.

    python -m labkit.gpu_check --needs        one ``name==version`` per line (``needs()``)
    make gpu-wheels                           downloads them into .gpu-wheels/ (git-ignored)
    make gpu-wheels-lock                      re-resolves the closure with pip (``resolve()``)

Nothing here installs anything; ``resolve()`` asks pip's resolver (a dry run) and is only called
by ``make gpu-wheels-lock``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "MODULE_WHEEL",
    "PLATFORMS",
    "PREINSTALLED",
    "ROOTS",
    "TARGET_ENV",
    "WHEELS",
    "closure_gaps",
    "importable",
    "missing",
    "modules_required_by",
    "needs",
    "normalize",
    "requirements",
    "resolve",
    "unmet",
    "wheel_for",
]

# What the GPU machine already has (device README, KINDS.md "Python packages already there",
# read on a machine running the 'cuda' image, 2026-11-17). Names are normalized (PEP 503).
PREINSTALLED = frozenset(
    ["absl-py", "accelerate", "aiofiles", "aiohappyeyeballs", "aiohttp", "aiosignal", "annotated-doc", "anyio", "attrs", "botorch", "build", "certifi", "charset-normalizer", "chex", "click", "cloudpickle", "cmake", "colorama", "contourpy", "coverage", "cuda-bindings", "cuda-core", "cuda-pathfinder", "cuda-toolkit", "cupy-cuda13x", "cycler", "cython", "diffrax", "e3nn", "einops", "equinox", "etils", "execnet", "filelock", "flatbuffers", "flax", "fonttools", "formulaic", "frozenlist", "fsspec", "gpytorch", "grpcio", "h11", "h5py", "hf-xet", "httpcore", "httpx", "huggingface-hub", "humanize", "hypothesis", "idna", "imageio", "iniconfig", "interface-meta", "jax", "jax-cuda13-pjrt", "jax-cuda13-plugin", "jaxlib", "jaxtyping", "jinja2", "joblib", "kiwisolver", "lazy-loader", "lightning", "lightning-utilities", "linear-operator", "lineax", "llvmlite", "lxml", "markdown", "markdown-it-py", "markupsafe", "matplotlib", "mdurl", "meson", "ml-dtypes", "mpi4py", "mpmath", "msgpack", "multidict", "multipledispatch", "mypy-extensions", "nanobind", "narwhals", "networkx", "ninja", "numba", "numba-cuda", "numpy", "numpyro", "nvidia-cublas", "nvidia-cuda-cupti", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cufft", "nvidia-cufile", "nvidia-curand", "nvidia-cusolver", "nvidia-cusparse", "nvidia-cusparselt-cu13", "nvidia-ml-py", "nvidia-nccl-cu13", "nvidia-nvjitlink", "nvidia-nvshmem-cu13", "nvidia-nvtx", "onnx", "onnx-ir", "onnxruntime", "onnxscript", "opencv-python-headless", "optax", "opt-einsum", "opt-einsum-fx", "optimistix", "orbax-checkpoint", "packaging", "pandas", "pathspec", "patsy", "peft", "pillow", "pip", "pluggy", "portalocker", "prometheus-client", "propcache", "protobuf", "psutil", "pyarrow", "pybind11", "py-cpuinfo", "pygments", "pyparsing", "pyproject-hooks", "pyre-extensions", "pytest", "pytest-benchmark", "pytest-cov", "pytest-mock", "pytest-timeout", "pytest-xdist", "python-dateutil", "pytorch-lightning", "pyyaml", "regex", "requests", "rich", "sacrebleu", "safetensors", "scikit-build-core", "scikit-image", "scikit-learn", "scipy", "seaborn", "sentencepiece", "sentence-transformers", "setuptools", "shellingham", "simplejson", "six", "sortedcontainers", "statsmodels", "sympy", "tabulate", "tensorboard", "tensorboard-data-server", "tensorstore", "threadpoolctl", "tifffile", "tiktoken", "timm", "tokenizers", "toolz", "torch", "torchaudio", "torchdiffeq", "torch-geometric", "torchmetrics", "torchvision", "tqdm", "transformers", "treescope", "triton", "typer", "typing-extensions", "typing-inspect", "urllib3", "uvloop", "wadler-lindig", "werkzeug", "wheel", "wrapt", "xarray", "xxhash", "yarl", "zipp"]
)

# What gpu-check asks for; WHEELS is their closure (``resolve(ROOTS)``, then minus PREINSTALLED).
ROOTS = ("nbclient", "nbformat", "ipykernel", "ipywidgets", "pydantic")

# The closure, pinned to the versions the lab's own venv runs (so the CPU suite tests the same
# releases). Resolved for CPython 3.12, manylinux x86_64, by ``make gpu-wheels-lock``.
WHEELS: dict[str, str] = {
    "annotated-types": "0.8.0",
    "asttokens": "3.0.2",
    "comm": "0.2.3",
    "debugpy": "1.8.22",
    "executing": "2.3.0",
    "fastjsonschema": "2.22.3",
    "ipykernel": "7.4.0",
    "ipython": "9.18.1",
    "ipython-pygments-lexers": "1.1.1",
    "ipywidgets": "8.1.9",
    "jedi": "0.20.1",
    "jsonschema": "4.26.0",
    "jsonschema-specifications": "2025.9.1",
    "jupyter-client": "8.10.0",
    "jupyter-core": "5.9.1",
    "jupyterlab-widgets": "3.0.17",
    "matplotlib-inline": "0.2.2",
    "nbclient": "0.11.0",
    "nbformat": "5.11.1",
    "nest-asyncio2": "1.7.4",
    "parso": "0.8.7",
    "pexpect": "4.9.0",
    "platformdirs": "4.14.9",
    "prompt-toolkit": "3.0.53",
    "ptyprocess": "0.7.0",
    "pure-eval": "0.2.4",
    "pydantic": "2.14.4",
    "pydantic-core": "2.50.5",
    "pyzmq": "27.3.0",
    "referencing": "0.37.0",
    "rpds-py": "2026.9.1",
    "stack-data": "0.6.3",
    "tornado": "6.6.1",
    "traitlets": "5.16.1",
    "typing-inspection": "0.4.5",
    "wcwidth": "0.9.4",
    "widgetsnbextension": "4.0.16",
}

# Import name → the wheel that provides it, where the two differ or a step imports it by name.
MODULE_WHEEL = {
    "nbclient": "nbclient",
    "nbformat": "nbformat",
    "ipykernel": "ipykernel",
    "ipywidgets": "ipywidgets",
    "IPython": "ipython",
    "jupyter_client": "jupyter-client",
    "matplotlib_inline": "matplotlib-inline",
    "zmq": "pyzmq",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic-core",
}

# The machine: CPython 3.12 on Linux x86_64 (markers are evaluated against this).
TARGET_ENV = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.3",
    "python_version": "3.12",
    "sys_platform": "linux",
}
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it: ``Jupyter_Client`` → ``jupyter-client``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def needs() -> list[str]:
    """The pinned wheels, one ``name==version`` each, sorted: what ``--needs`` prints."""
    return [f"{name}=={version}" for name, version in sorted(WHEELS.items())]


def wheel_for(module: str) -> str | None:
    """The pinned wheel (``name==version``) that provides ``module``, or None if gpu-check brings none."""
    name = MODULE_WHEEL.get(module.split(".")[0], normalize(module.split(".")[0]))
    return f"{name}=={WHEELS[name]}" if name in WHEELS else None


def importable(module: str) -> bool:
    """True if ``module`` can be imported by this interpreter (found on its path; nothing is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(modules: Iterable[str], have: Callable[[str], bool] = importable) -> list[str]:
    """Which of ``modules`` this interpreter cannot import, each with the wheel that brings it."""
    out = []
    for m in modules:
        if not have(m):
            wheel = wheel_for(m)
            out.append(f"{m} (wheel {wheel})" if wheel else m)
    return out


def requirements(dist: str, env: dict[str, str] | None = None) -> list[str]:
    """The requirements of the installed distribution ``dist`` that apply in ``env`` (default: here), no extras."""
    from importlib import metadata

    from packaging.requirements import Requirement

    out = []
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({**(env or {}), "extra": ""}):
            out.append(str(req))
    return out


def modules_required_by(dist: str) -> list[str]:
    """Modules of the pinned wheels that the installed distribution ``dist`` requires here (e.g. a
    typer release that imports pydantic); empty when ``dist`` is not installed."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        reqs = requirements(dist)
    except metadata.PackageNotFoundError:
        return []
    by_wheel = {w: m for m, w in MODULE_WHEEL.items()}
    names = [normalize(Requirement(line).name) for line in reqs]
    return [by_wheel.get(n, n.replace("-", "_")) for n in names if n in WHEELS]


def closure_gaps(env: dict[str, str] = TARGET_ENV) -> list[str]:
    """Requirements of the pinned wheels that neither ``WHEELS`` nor ``PREINSTALLED`` provides.

    Reads each wheel's metadata from this interpreter's installed copy of the same version (the
    lab's venv has them all); a wheel installed here at another version is listed as a gap too.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    gaps = []
    for name, version in sorted(WHEELS.items()):
        try:
            here = metadata.version(name)
        except metadata.PackageNotFoundError:
            gaps.append(f"{name}=={version}: not installed here, its requirements are unchecked")
            continue
        if here != version:
            gaps.append(f"{name}=={version}: {here} is installed here, its requirements are unchecked")
            continue
        for line in requirements(name, env):
            dep = normalize(Requirement(line).name)
            if dep not in WHEELS and dep not in PREINSTALLED:
                gaps.append(f"{name}=={version} needs {line}: neither pinned nor preinstalled")
    return gaps


def unmet() -> list[str]:
    """Requirements of the installed pinned wheels that this interpreter does not satisfy (run on the GPU machine).

    A wheel may have arrived but need a newer version of a preinstalled package than the machine
    has: that is listed here (and in the report) instead of surfacing as an ImportError later.
    """
    from importlib import metadata

    from packaging.requirements import Requirement

    out = []
    for name in sorted(WHEELS):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        for line in requirements(name):
            req = Requirement(line)
            try:
                have = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                out.append(f"{name} needs {line}: not installed")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                out.append(f"{name} needs {line}: {have} is installed")
    return out


def resolve(roots: Iterable[str] = ROOTS, pins: dict[str, str] | None = None) -> dict[str, str]:
    """Ask pip's resolver (a dry run: nothing is installed) for the cp312 manylinux closure of ``roots``.

    Returns ``{name: version}`` minus ``PREINSTALLED``. ``pins`` (default: ``WHEELS``) fixes the
    versions pip may pick. Needs a package index (used by ``make gpu-wheels-lock`` only).
    """
    pins = WHEELS if pins is None else pins
    reqs = [f"{r}=={pins[normalize(r)]}" if normalize(r) in pins else r for r in roots]
    reqs += [f"{n}=={v}" for n, v in pins.items() if n not in {normalize(r) for r in roots}]
    with tempfile.TemporaryDirectory(prefix="labkit-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--target", str(Path(tmp) / "t")]
        cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
        subprocess.run([*cmd, *reqs], check=True, timeout=600)
        installs = json.loads(report.read_text())["install"]
    from packaging.requirements import Requirement

    found = {normalize(i["metadata"]["name"]): i["metadata"] for i in installs}
    # walk from the roots, not through what the machine has: a preinstalled package keeps the
    # dependencies of its own (unknown) version, not those of the newest release pip looked at
    keep: dict[str, str] = {}
    todo = [normalize(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in keep or name in PREINSTALLED or name not in found:
            continue
        keep[name] = found[name]["version"]
        for line in found[name].get("requires_dist") or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**TARGET_ENV, "extra": ""}):
                todo.append(normalize(req.name))
    return dict(sorted(keep.items()))


if __name__ == "__main__":  # make gpu-wheels-lock: print the closure as the WHEELS literal
    for name, version in resolve().items():
        print(f'    "{name}": "{version}",')
