from __future__ import annotations

import re
from pathlib import Path

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


def test_server_settings_parse_and_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LABKIT_TS_THREADS", "LABKIT_TORCH_THREADS", "LABKIT_MODEL_ARCH", "LABKIT_MODEL_PATH", "LABKIT_READY_DELAY_S", "LABKIT_LB_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    assert (config.torchserve_threads(), config.model_server_threads(), config.model_arch(), config.model_path(), config.ready_delay_s(), config.balancer_retries(3)) == (1, 1, "cnn", None, 0.0, 3)
    monkeypatch.setenv("LABKIT_TS_THREADS", "2")
    monkeypatch.setenv("LABKIT_READY_DELAY_S", "1.5")
    monkeypatch.setenv("LABKIT_MODEL_ARCH", "MLP")
    assert (config.torchserve_threads(), config.ready_delay_s(), config.model_arch()) == (2, 1.5, "mlp")
    monkeypatch.setenv("LABKIT_TS_THREADS", "two")
    with pytest.raises(BadInput, match="LABKIT_TS_THREADS='two' is not a whole number"):
        config.torchserve_threads()
    monkeypatch.setenv("LABKIT_LB_RETRIES", "-1")
    with pytest.raises(BadInput, match="must be at least 0"):
        config.balancer_retries(3)
    monkeypatch.setenv("LABKIT_MODEL_ARCH", "rnn")
    with pytest.raises(BadInput, match="use cnn or mlp"):
        config.model_arch()


_LABKIT_READ = re.compile(r"""(environ\.get\(\s*|environ\[\s*|getenv\(\s*)["']LABKIT_\w+["'](?!\s*\]\s*=[^=])""")


def test_only_config_reads_labkit_variables() -> None:
    root = Path(config.__file__).parent
    reads = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "config.py" and path.parent == root:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if _LABKIT_READ.search(line):
                reads.append(f"{path.relative_to(root.parent)}:{n}: {line.strip()}")
    assert not reads, "LABKIT_* variables are read through labkit.config only:\n" + "\n".join(reads)


def test_every_labkit_variable_is_documented() -> None:
    root = Path(config.__file__).parent
    used = {m for path in root.rglob("*.py") for m in re.findall(r"\bLABKIT_[A-Z_]+\b", path.read_text())} - {"LABKIT_"}
    assert used <= set(config.VARIABLES), f"LABKIT_* names not in config.VARIABLES: {sorted(used - set(config.VARIABLES))}"
    assert all(name in (config.__doc__ or "") for name in config.VARIABLES)
