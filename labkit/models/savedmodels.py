"""The digit classifier in Keras, exported as TensorFlow SavedModel versions (notebook 10).

``export_versions(base)`` writes ``<base>/digits/1`` and ``<base>/digits/2``: the directory layout
TensorFlow Serving watches (a folder per model, a numbered folder per version). Training is quick
and deterministic; the SavedModels are cached under a hash of the config. Used in 10, 14.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from labkit import config
from labkit.models import wide
from labkit.runtime import cache

__all__ = ["CODE_VERSION", "KerasConfig", "export_savedmodel", "export_versions", "export_wide", "silence_tensorflow", "startup_noise_removed", "write_savedmodel"]

CODE_VERSION = "tfmodels-1"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"


# What TensorFlow's C++ side prints at import that says nothing is wrong. TF 2.20+ logs these through
# absl before it reads TF_CPP_MIN_LOG_LEVEL, so the variable cannot hide them: absl's banner, INFO
# lines ("I0000 …", "2025-… I …": the oneDNN note, the CPU-feature note) and the note's second line.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ \S+:\d+\] .*"
    r"|\d{4}-\d\d-\d\d [\d:.]+: I \S+:\d+\] .*"
    r"|To enable the following instructions: .*in other operations, rebuild TensorFlow with the appropriate compiler flags\.)$"
)


def startup_noise_removed(text: str) -> str:
    """``text`` (what TensorFlow wrote to stderr while importing) without its INFO start-up lines.

    Warnings, errors and anything else are kept, in order.

    >>> startup_noise_removed("I0000 00:00:1.5   42 port.cc:153] oneDNN custom operations are on.\\nE0000 00:00:1.6   42 x.cc:1] real\\n")
    'E0000 00:00:1.6   42 x.cc:1] real\\n'
    """
    return "".join(line for line in text.splitlines(keepends=True) if not _STARTUP_NOISE.match(line.rstrip("\n")))


def silence_tensorflow() -> Any:
    """Import TensorFlow quietly and return it; call it before anything imports tensorflow (or keras).

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` (C++ INFO and WARNING lines off, errors kept) unless it is set,
    and drops the INFO lines TensorFlow's C++ side prints while it is imported (the oneDNN note),
    which that variable does not reach. Anything else written to stderr meanwhile (warnings,
    errors) is written again afterwards. Then keeps TensorFlow's Python logger at WARNING, which it
    sets to INFO in a notebook ("Assets written to …"). Used in 10 and by the trainers here.
    """
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _startup_noise_filtered():
        import tensorflow as tf
    tf.get_logger().setLevel(logging.WARNING)
    return tf


@contextmanager
def _startup_noise_filtered() -> Iterator[None]:
    """Send file descriptor 2 to a file inside the block, then write it back without the start-up notes.

    The C++ side writes to the descriptor, not to ``sys.stderr``; a notebook kernel forwards that
    descriptor into the cell's output, so this is where the lines can be caught.
    """
    with tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            sys.stderr.write(startup_noise_removed(captured.read().decode(errors="replace")))
            sys.stderr.flush()


@dataclass(frozen=True)
class KerasConfig:
    """What determines one exported version: width of the conv layers, epochs, seed."""

    width: int = 16
    epochs: int = 8
    seed: int = 0


def _train(cfg: KerasConfig):  # type: ignore[no-untyped-def]
    silence_tensorflow()
    import keras
    import numpy as np

    from labkit.data import load_digits

    keras.utils.set_random_seed(cfg.seed)
    d = load_digits()
    x = np.asarray(d.x_train).reshape(-1, 64)
    inputs = keras.Input((64,), name=INPUT_NAME)
    h = keras.layers.Reshape((8, 8, 1))(inputs)
    h = keras.layers.Conv2D(cfg.width, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(2 * cfg.width, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    outputs = keras.layers.Dense(10, activation="softmax", name=OUTPUT_NAME)(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, np.asarray(d.y_train), epochs=cfg.epochs, batch_size=64, verbose=0, shuffle=True)
    return model


def write_savedmodel(model, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Export with a serving_default signature: input ``pixels`` (n, 64), outputs
    ``probabilities`` (n, 10) and ``classes`` (n,). Shown in 10."""
    import keras
    import tensorflow as tf

    def serve(pixels):  # type: ignore[no-untyped-def]
        probabilities = model(pixels, training=False)
        return {OUTPUT_NAME: probabilities, "classes": tf.argmax(probabilities, axis=1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve, input_signature=[tf.TensorSpec((None, 64), tf.float32, name=INPUT_NAME)])
    archive.write_out(str(path), verbose=False)


def export_savedmodel(cfg: KerasConfig, target: Path) -> Path:
    """Train (or take from the cache) one model and copy its SavedModel to ``target``."""
    cached = cache.cached_path("tfmodels", "digits", asdict(cfg), CODE_VERSION, suffix="")

    def load(p: Path) -> Path:
        if not (p / "saved_model.pb").exists():
            raise FileNotFoundError(p / "saved_model.pb")
        return p

    def build(p: Path) -> Path:
        shutil.rmtree(p, ignore_errors=True)
        tmp = p.with_name(p.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_savedmodel(_train(cfg), tmp)
        tmp.rename(p)
        return p

    src, _ = cache.load_or_build(cached, load, build)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(src, target)
    return target


VERSIONS = {1: KerasConfig(width=8, epochs=6), 2: KerasConfig(width=16, epochs=10)}


def export_versions(base: str | Path | None = None, model_name: str = "digits", versions: dict[int, KerasConfig] | None = None) -> Path:
    """Write SavedModel versions under ``<base>/<model_name>/<version>``; return the model's folder.

    Version 1 is a narrower, shorter-trained model; version 2 a wider one.
    """
    root = Path(base) if base is not None else config.cache_dir("tfserving")
    model_dir = root / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    for version, cfg in (versions or VERSIONS).items():
        target = model_dir / str(version)
        if not (target / "saved_model.pb").exists():
            export_savedmodel(cfg, target)
    return model_dir


WIDE_WIDTH = wide.WIDTH  # one definition of the timing model's size: labkit.models.wide
WIDE_DTYPE = wide.DTYPE_NAME  # the wide layers' weights and arithmetic (models.wide says why float32)
WIDE_SQUARE_LAYERS = 2  # width × width layers (256 MB each at 8192 in float32)


def export_wide(base: str | Path | None = None, model_name: str = "wide", width: int = WIDE_WIDTH, seed: int = 0) -> Path:
    """Write a seeded, untrained wide MLP (64 → width → width → width → 10) as version 1 of ``model_name``.

    A timing model for batching: its two width × width layers are stored and run in ``WIDE_DTYPE``
    (512 MB at 8192 in float32). At batch size 1 a call mostly streams those weights for one row of arithmetic;
    a batch of 32 streams them once, so merging requests into one call saves most of the work. It is
    never trained and its answers mean nothing; the digit CNN is the model whose answers are checked.
    """
    root = Path(base) if base is not None else config.cache_dir("tfserving")
    target = root / model_name / "1"
    cached = cache.cached_path("tfmodels", "wide", {"width": width, "seed": seed, "dtype": WIDE_DTYPE, "square_layers": WIDE_SQUARE_LAYERS}, CODE_VERSION, suffix="")
    if not (cached / "saved_model.pb").exists():
        silence_tensorflow()
        import keras

        keras.utils.set_random_seed(seed)
        inputs = keras.Input((64,), name=INPUT_NAME)
        h = keras.layers.Dense(width, activation="relu", dtype=WIDE_DTYPE)(inputs)
        for _ in range(WIDE_SQUARE_LAYERS):
            h = keras.layers.Dense(width, activation="relu", dtype=WIDE_DTYPE)(h)
        outputs = keras.layers.Dense(10, activation="softmax", name=OUTPUT_NAME)(h)
        tmp = cached.with_name(cached.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_savedmodel(keras.Model(inputs, outputs), tmp)
        shutil.rmtree(cached, ignore_errors=True)
        tmp.rename(cached)
    stamp = target / "labkit-source.txt"  # which cached export this copy is: a stale copy is replaced
    if not (stamp.exists() and stamp.read_text() == cached.name):
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(cached, target)
        stamp.write_text(cached.name)
    return target.parent
