from __future__ import annotations

import pytest

from labkit import config
from labkit.errors import BadInput


@pytest.mark.parametrize("raw,expected", [("1", True), ("true", True), ("YES", True), ("0", False), ("", False), ("off", False)])
def test_flags_parse(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("LABKIT_FAST", raw)
    monkeypatch.setenv("LABKIT_STRICT", raw)
    assert config.fast() is expected
    assert config.strict() is expected


def test_bad_flag_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_FAST", "maybe")
    with pytest.raises(BadInput, match="LABKIT_FAST='maybe' is not a boolean"):
        config.fast()


def test_settings_read_when_called(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LABKIT_FAST", "0")
    assert config.pick(fast=1, full=2) == 2
    monkeypatch.setenv("LABKIT_FAST", "1")
    assert config.pick(fast=1, full=2) == 1
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path / "c"))
    assert config.cache_dir("models") == tmp_path / "c" / "models"
    assert (tmp_path / "c" / "models").is_dir()
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.1:10001")
    s = config.settings()
    assert s.fast and s.external == {"RAY_ADDRESS": "ray://10.0.0.1:10001"}
    assert config.external_url("RAY_ADDRESS") == "ray://10.0.0.1:10001"


def test_unknown_external_var() -> None:
    with pytest.raises(BadInput, match="unknown service variable"):
        config.external_url("NOPE_URL")
