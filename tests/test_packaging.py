"""The package's shape: dependency lists in sync, explicit public surface, cheap modules."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
import tomllib
import yaml

import labkit

ROOT = Path(__file__).parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = set(project["dependencies"]) | {r for extra in project["optional-dependencies"].values() for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip_section) == ours, f"only in pyproject: {sorted(ours - set(pip_section))}; only in environment.yml: {sorted(set(pip_section) - ours)}"


def test_torch_range_admits_the_local_cpu_wheel() -> None:
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if _name(r) == "torch")
    assert "2.13.0" in SpecifierSet(torch_req[len("torch") :]), torch_req
    assert all(re.search(r">=", r) for r in project["dependencies"]), "dependencies are ranges with floors"


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(labkit.__path__, "labkit.") if not m.name.endswith("__main__")]


@pytest.mark.parametrize("name", _modules())
def test_all_lists_the_public_surface(name: str) -> None:
    if name.startswith("labkit.cli"):
        pytest.skip("the CLI module is an entry point; its commands are its surface")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # an optional dependency of that module
        pytest.skip(f"{name} needs an optional dependency: {exc}")
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.skip(f"{name} is a namespace without public functions") if not [
            n for n, o in vars(module).items() if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o)) and o.__module__ == name
        ] else pytest.fail(f"{name} defines public functions but no __all__")
    for n in exported:
        assert hasattr(module, n), f"{name}.__all__ names {n!r}, which does not exist"
    defined = {n for n, o in vars(module).items() if not n.startswith("_") and (inspect.isfunction(o) or inspect.isclass(o)) and getattr(o, "__module__", None) == name}
    assert defined <= set(exported), f"{name}: public but not in __all__: {sorted(defined - set(exported))}"
