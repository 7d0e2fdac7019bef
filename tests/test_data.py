from __future__ import annotations

import numpy as np
import pytest

from labkit import data
from labkit.errors import BadInput


def test_digits_split_is_fixed_and_disjoint() -> None:
    d = data.load_digits()
    sizes = [len(d.y_train), len(d.y_val), len(d.y_test)]
    assert sum(sizes) == 1797
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == np.float32
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    assert set(np.unique(d.y_test)) == set(range(10))
    assert not d.x_train.flags.writeable  # shared, cached arrays are read-only


def test_scenes_boxes_inside_canvas_and_match_digits() -> None:
    canvas = 32
    scenes = data.make_scenes(50, canvas=canvas, max_digits=3, noise=0.0, seed=1)
    x, y = data.load_digits().split("test")
    assert scenes.images.shape == (50, canvas, canvas)
    for img, boxes, labels, sources in zip(scenes.images, scenes.boxes, scenes.labels, scenes.sources):
        assert 1 <= len(boxes) <= 3 and len(boxes) == len(labels) == len(sources)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= canvas).all()
        assert ((boxes[:, 2] - boxes[:, 0]) == 8).all() and ((boxes[:, 3] - boxes[:, 1]) == 8).all()
        for (x0, y0, x1, y1), label, src in zip(boxes, labels, sources):
            # without noise, the pixels inside a box are exactly the digit that was drawn there
            assert np.array_equal(img[y0:y1, x0:x1], x[src, 0])
            assert label == y[src]
        mask = np.zeros_like(img, dtype=bool)
        for x0, y0, x1, y1 in boxes:
            assert not mask[y0:y1, x0:x1].any(), "digits must not overlap"
            mask[y0:y1, x0:x1] = True
        assert (img[~mask] == 0).all(), "nothing is drawn outside the boxes"


def test_scenes_deterministic_and_noisy() -> None:
    a = data.make_scenes(5, seed=3, noise=0.2)
    b = data.make_scenes(5, seed=3, noise=0.2)
    assert np.array_equal(a.images, b.images)
    assert all(np.array_equal(p, q) for p, q in zip(a.boxes, b.boxes))
    assert a.images.min() >= 0.0 and a.images.max() <= 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [({"n": -1}, "n must be"), ({"n": 1, "canvas": 4}, "smaller than a digit"), ({"n": 1, "canvas": 8, "max_digits": 2}, "cannot fit"), ({"n": 1, "noise": -1}, "noise")],
)
def test_scene_bad_input(kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(BadInput, match=match):
        data.make_scenes(**kwargs)


def test_unknown_split() -> None:
    with pytest.raises(BadInput, match="unknown split"):
        data.load_digits().split("dev")  # type: ignore[arg-type]
