from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labkit import data
from labkit.errors import BadInput
from labkit.models import digit_nets


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_cnn_beats_95_percent_on_held_out_split() -> None:
    model = digit_nets.trained(digit_nets.TrainConfig(arch="cnn"), progress=False)
    assert digit_nets.accuracy(model, "test") > 0.95


def test_training_is_deterministic(cache: Path) -> None:
    cfg = digit_nets.TrainConfig(arch="mlp", epochs=3)
    a = digit_nets.train(cfg, progress=False)
    b = digit_nets.train(cfg, progress=False)
    assert digit_nets.weights_hash(a) == digit_nets.weights_hash(b)


def test_cache_is_reused_and_invalidated_by_config(cache: Path) -> None:
    cfg = digit_nets.TrainConfig(arch="mlp", epochs=3)
    assert not digit_nets.is_cached(cfg)
    first = digit_nets.trained(cfg, progress=False)
    files = list((cache / "models").glob("*.pt"))
    assert len(files) == 1 and digit_nets.is_cached(cfg)
    mtime = files[0].stat().st_mtime_ns
    again = digit_nets.trained(cfg, progress=False)
    assert files[0].stat().st_mtime_ns == mtime, "a cached model must be loaded, not retrained"
    assert digit_nets.weights_hash(first) == digit_nets.weights_hash(again)
    other = digit_nets.TrainConfig(arch="mlp", epochs=4)
    assert not digit_nets.is_cached(other)
    digit_nets.trained(other, progress=False)
    assert len(list((cache / "models").glob("*.pt"))) == 2


def test_broken_cache_file_is_rebuilt_with_one_line(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = digit_nets.TrainConfig(arch="mlp", epochs=2)
    digit_nets.trained(cfg, progress=False)
    (path,) = (cache / "models").glob("*.pt")
    path.write_bytes(b"not a torch file")
    model = digit_nets.trained(cfg, progress=False)
    err = capsys.readouterr().err
    assert "unreadable" in err and "rebuilt" in err and err.count("\n") == 1
    assert digit_nets.accuracy(model, "val") > 0.8
    torch.load(path, weights_only=True)  # the rebuilt file is valid again


def test_bagging_and_sample_weights_change_the_model(cache: Path) -> None:
    base = digit_nets.TrainConfig(arch="mlp", epochs=2)
    bag = digit_nets.TrainConfig(arch="mlp", epochs=2, bootstrap_seed=1)
    n = len(data.load_digits().y_train)
    weighted = digit_nets.TrainConfig(arch="mlp", epochs=2, sample_weights=tuple(np.linspace(0.1, 1.0, n)))
    hashes = {digit_nets.weights_hash(digit_nets.train(c, progress=False)) for c in (base, bag, weighted)}
    assert len(hashes) == 3
    with pytest.raises(BadInput, match="sample_weights has 3 entries"):
        digit_nets.train(digit_nets.TrainConfig(arch="mlp", sample_weights=(1.0, 1.0, 1.0)), progress=False)


def test_unknown_arch() -> None:
    with pytest.raises(BadInput, match="unknown arch"):
        digit_nets.build(digit_nets.TrainConfig(arch="rnn"))  # type: ignore[arg-type]


def test_flops_and_predict_shapes() -> None:
    mlp = digit_nets.DigitMLP(hidden=(128, 64))
    assert digit_nets.flops_per_sample(mlp) == 2 * (64 * 128 + 128 * 64 + 64 * 10)
    cnn = digit_nets.DigitCNN(channels=16, hidden=64)
    expected = 2 * (9 * 1 * 16 * 64 + 9 * 16 * 32 * 64 + 512 * 64 + 64 * 10)
    assert digit_nets.flops_per_sample(cnn) == expected
    x = data.load_digits().x_test[:37]
    assert digit_nets.predict(cnn, x).shape == (37,)
    assert digit_nets.predict_logits(cnn, x, batch_size=10).shape == (37, 10)
