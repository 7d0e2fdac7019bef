"""Data that ships or is generated: scikit-learn's digits and synthetic "digit scenes".

Nothing is downloaded: the digits (1,797 8×8 images) ship inside scikit-learn, and scenes are
drawn from them. Used in 00–14.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import numpy as np

from labkit.errors import BadInput

__all__ = ["DigitSplits", "Scenes", "load_digits", "make_scenes"]

SPLIT_SEED = 0
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2
DIGIT_SIZE = 8
Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class DigitSplits:
    """Digits as float32 images in [0, 1] shaped (N, 1, 8, 8) with int64 labels, split three ways."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def split(self, name: Split) -> tuple[np.ndarray, np.ndarray]:
        """Return (x, y) of one split by name."""
        if name not in ("train", "val", "test"):
            raise BadInput(f"unknown split {name!r}; use train, val or test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


@lru_cache(maxsize=1)
def load_digits() -> DigitSplits:
    """Load scikit-learn's digits, scaled to [0, 1], in a fixed stratified 60/20/20 split.

    >>> d = load_digits(); d.x_train.shape[1:], d.x_train.dtype.name
    ((1, 8, 8), 'float32')
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    raw = sk_load_digits()
    x = (raw.images / 16.0).astype(np.float32)[:, None, :, :]
    y = raw.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
    val_share = VAL_FRACTION / (1 - TEST_FRACTION)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=val_share, stratify=y_rest, random_state=SPLIT_SEED)
    arrays = [x_train, y_train, x_val, y_val, x_test, y_test]
    for a in arrays:
        a.setflags(write=False)
    return DigitSplits(*arrays)


@dataclass
class Scenes:
    """Noisy canvases with digits drawn on them, and the ground truth of what was drawn.

    ``boxes[i]`` is an int array (k, 4) of ``[x0, y0, x1, y1]`` (x1, y1 exclusive) for scene i,
    ``labels[i]`` the k digit classes and ``sources[i]`` the index of each digit in its split.
    """

    images: np.ndarray  # (n, H, W) float32 in [0, 1]
    boxes: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    sources: list[np.ndarray] = field(default_factory=list)
    split: str = "test"

    def __len__(self) -> int:
        return len(self.images)


def _place(rng: np.random.Generator, canvas: int, size: int, taken: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
    for _ in range(100):
        x0, y0 = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
        box = (x0, y0, x0 + size, y0 + size)
        if all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken):
            return box
    return None


def make_scenes(
    n: int,
    canvas: int = 32,
    max_digits: int = 3,
    min_digits: int = 1,
    noise: float = 0.1,
    split: Split = "test",
    seed: int = 0,
) -> Scenes:
    """Draw ``n`` scenes: ``min_digits``…``max_digits`` non-overlapping 8×8 digits on a noisy canvas.

    Digits come from one split of ``load_digits()`` so a detector trained on "train" scenes is
    evaluated on digits it never saw. Deterministic for a given seed.
    """
    if n < 0:
        raise BadInput(f"n must be >= 0, got {n}")
    if canvas < DIGIT_SIZE:
        raise BadInput(f"canvas {canvas} is smaller than a digit ({DIGIT_SIZE} px)")
    if not 1 <= min_digits <= max_digits:
        raise BadInput(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    if (canvas // DIGIT_SIZE) ** 2 < max_digits:
        raise BadInput(f"{max_digits} digits cannot fit without overlap on a {canvas}×{canvas} canvas")
    if noise < 0:
        raise BadInput(f"noise must be >= 0, got {noise}")
    x, y = load_digits().split(split)
    rng = np.random.default_rng(seed)
    images = np.empty((n, canvas, canvas), dtype=np.float32)
    scenes = Scenes(images=images, split=split)
    for i in range(n):
        img = rng.normal(0.0, noise, size=(canvas, canvas)).astype(np.float32) if noise else np.zeros((canvas, canvas), np.float32)
        k = int(rng.integers(min_digits, max_digits + 1))
        taken: list[tuple[int, int, int, int]] = []
        srcs: list[int] = []
        for _ in range(k):
            box = _place(rng, canvas, DIGIT_SIZE, taken)
            if box is None:
                break
            j = int(rng.integers(0, len(x)))
            x0, y0, x1, y1 = box
            img[y0:y1, x0:x1] = np.maximum(img[y0:y1, x0:x1], x[j, 0])
            taken.append(box)
            srcs.append(j)
        images[i] = np.clip(img, 0.0, 1.0)
        scenes.boxes.append(np.array(taken, dtype=np.int64).reshape(-1, 4))
        scenes.sources.append(np.array(srcs, dtype=np.int64))
        scenes.labels.append(y[np.array(srcs, dtype=np.int64)] if srcs else np.zeros(0, np.int64))
    return scenes
