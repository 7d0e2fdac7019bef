from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labkit import data, models
from labkit.errors import BadInput


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LABKIT_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_cnn_beats_95_percent_on_held_out_split() -> None:
    model = models.trained(models.TrainConfig(arch="cnn"), progress=False)
    assert models.accuracy(model, "test") > 0.95


def test_training_is_deterministic(cache: Path) -> None:
    cfg = models.TrainConfig(arch="mlp", epochs=3)
    a = models.train(cfg, progress=False)
    b = models.train(cfg, progress=False)
    assert models.weights_hash(a) == models.weights_hash(b)


def test_cache_is_reused_and_invalidated_by_config(cache: Path) -> None:
    cfg = models.TrainConfig(arch="mlp", epochs=3)
    assert not models.is_cached(cfg)
    first = models.trained(cfg, progress=False)
    files = list((cache / "models").glob("*.pt"))
    assert len(files) == 1 and models.is_cached(cfg)
    mtime = files[0].stat().st_mtime_ns
    again = models.trained(cfg, progress=False)
    assert files[0].stat().st_mtime_ns == mtime, "a cached model must be loaded, not retrained"
    assert models.weights_hash(first) == models.weights_hash(again)
    other = models.TrainConfig(arch="mlp", epochs=4)
    assert not models.is_cached(other)
    models.trained(other, progress=False)
    assert len(list((cache / "models").glob("*.pt"))) == 2


def test_broken_cache_file_is_rebuilt_with_one_line(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = models.TrainConfig(arch="mlp", epochs=2)
    models.trained(cfg, progress=False)
    (path,) = (cache / "models").glob("*.pt")
    path.write_bytes(b"not a torch file")
    model = models.trained(cfg, progress=False)
    err = capsys.readouterr().err
    assert "unreadable" in err and "rebuilt" in err and err.count("\n") == 1
    assert models.accuracy(model, "val") > 0.8
    torch.load(path, weights_only=True)  # the rebuilt file is valid again


def test_bagging_and_sample_weights_change_the_model(cache: Path) -> None:
    base = models.TrainConfig(arch="mlp", epochs=2)
    bag = models.TrainConfig(arch="mlp", epochs=2, bootstrap_seed=1)
    n = len(data.load_digits().y_train)
    weighted = models.TrainConfig(arch="mlp", epochs=2, sample_weights=tuple(np.linspace(0.1, 1.0, n)))
    hashes = {models.weights_hash(models.train(c, progress=False)) for c in (base, bag, weighted)}
    assert len(hashes) == 3
    with pytest.raises(BadInput, match="sample_weights has 3 entries"):
        models.train(models.TrainConfig(arch="mlp", sample_weights=(1.0, 1.0, 1.0)), progress=False)


def test_unknown_arch() -> None:
    with pytest.raises(BadInput, match="unknown arch"):
        models.build(models.TrainConfig(arch="rnn"))  # type: ignore[arg-type]


def test_flops_and_predict_shapes() -> None:
    mlp = models.DigitMLP(hidden=(128, 64))
    assert models.flops_per_sample(mlp) == 2 * (64 * 128 + 128 * 64 + 64 * 10)
    cnn = models.DigitCNN(channels=16, hidden=64)
    expected = 2 * (9 * 1 * 16 * 64 + 9 * 16 * 32 * 64 + 512 * 64 + 64 * 10)
    assert models.flops_per_sample(cnn) == expected
    x = data.load_digits().x_test[:37]
    assert models.predict(cnn, x).shape == (37,)
    assert models.predict_logits(cnn, x, batch_size=10).shape == (37, 10)
