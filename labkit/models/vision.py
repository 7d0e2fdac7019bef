"""The digit-scene models of the pipeline lesson: a denoiser, a centre-heatmap detector, evaluation.

Three real models make the preprocess → detect → classify pipeline of notebook 01:

- ``Denoiser``: a tiny fully-convolutional net that maps a noisy scene to a clean one;
- ``Detector``: a tiny fully-convolutional net that predicts a heatmap of digit centres; peaks
  above a threshold become 8×8 boxes (``find_boxes``);
- the course's ``digit_nets.DigitCNN`` classifies the crops (``crop_boxes``).

Both new nets train on "train"-split scenes in seconds and are cached on disk like
``digit_nets.trained``. ``evaluate`` scores predictions against a ``data.Scenes`` ground truth.
Used in 01.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from labkit.errors import BadInput
from labkit.models import store
from labkit.runtime import cache

__all__ = [
    "CODE_VERSION",
    "Denoiser",
    "Detector",
    "SceneQuality",
    "VisionConfig",
    "box_iou",
    "clean_images",
    "crop_boxes",
    "evaluate",
    "find_boxes",
    "heatmap_targets",
    "trained_denoiser",
    "trained_detector",
]

# Bump when the nets or their training change: cached weights are then rebuilt.
CODE_VERSION = "vision-2"  # vision-2: the denoiser has 8 channels (the detector is trained on its outputs)
DIGIT = 8  # digits are 8×8; a box is centred on pixel (x0 + 4, y0 + 4)
HALF = DIGIT // 2
PEAK_THRESHOLD = 0.5
DENOISER_CHANNELS = 8  # half the detector's 16: the same quality (MSE 1e-4 vs noise 5e-3) at 0.6 vs 1.0 ms per 8 scenes
PEAK_WINDOW = 7  # digits never overlap, so two centres are ≥ 8 px apart along x or y


class Denoiser(nn.Module):
    """Three 3×3 convolutions that estimate the noise of a (B, 1, H, W) scene and subtract it (output in [0, 1])."""

    def __init__(self, channels: int = DENOISER_CHANNELS) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x - self.net(x), 0.0, 1.0)


class Detector(nn.Module):
    """A fully-convolutional net (dilated 3×3 convs, receptive field 15 px) giving centre logits (B, 1, H, W)."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class VisionConfig:
    """Everything that determines a trained denoiser or detector (and so its cache key)."""

    n_scenes: int = 800
    epochs: int = 4
    batch_size: int = 32
    lr: float = 3e-3
    noise: float = 0.1
    seed: int = 0
    channels: int = 16


def clean_images(scenes: Any) -> np.ndarray:
    """Redraw ``scenes`` without noise, from their ground truth: the denoiser's training target."""
    from labkit.data import load_digits

    x, _ = load_digits().split(scenes.split)
    out = np.zeros_like(scenes.images)
    for i, (boxes, sources) in enumerate(zip(scenes.boxes, scenes.sources)):
        for (x0, y0, x1, y1), j in zip(boxes, sources):
            out[i, y0:y1, x0:x1] = np.maximum(out[i, y0:y1, x0:x1], x[j, 0])
    return out


def heatmap_targets(scenes: Any, sigma: float = 0.8) -> np.ndarray:
    """A Gaussian bump at each digit's centre pixel (x0 + 4, y0 + 4): the detector's target."""
    n, h, w = scenes.images.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w), np.float32)
    for i, boxes in enumerate(scenes.boxes):
        for x0, y0, _, _ in boxes:
            bump = np.exp(-((xx - x0 - HALF) ** 2 + (yy - y0 - HALF) ** 2) / (2 * sigma**2))
            out[i] = np.maximum(out[i], bump)
    return out


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: VisionConfig, loss_fn: nn.Module, desc: str, progress: bool) -> nn.Module:
    return store.fit(model, len(x), lambda batch: loss_fn(model(x[batch]), y[batch]), config.epochs, config.batch_size, config.lr, config.seed, desc, progress, loss_digits=4)


def _training_scenes(config: VisionConfig) -> Any:
    from labkit.data import make_scenes

    return make_scenes(config.n_scenes, noise=config.noise, split="train", seed=1000 + config.seed)


def _cached(name: str, config: VisionConfig, build: Any, make: Any) -> nn.Module:
    path = cache.cached_path("models", name, asdict(config), f"{CODE_VERSION}-torch{torch.__version__}")
    return store.load_or_train(path, build, make)


def trained_denoiser(config: VisionConfig = VisionConfig(channels=DENOISER_CHANNELS), progress: bool = True) -> Denoiser:
    """Return the denoiser for ``config``: from the disk cache, or trained now (seconds) and cached."""

    def build() -> Denoiser:
        torch.manual_seed(config.seed)
        return Denoiser(config.channels)

    def make() -> nn.Module:
        scenes = _training_scenes(config)
        x = torch.from_numpy(scenes.images[:, None])
        y = torch.from_numpy(clean_images(scenes)[:, None])
        with torch.random.fork_rng():
            return _train(build(), x, y, config, nn.MSELoss(), "train denoiser", progress)

    return _cached("denoiser", config, build, make)


def trained_detector(config: VisionConfig = VisionConfig(epochs=10), progress: bool = True) -> Detector:
    """Return the centre-heatmap detector, trained on the denoiser's outputs (cached like the rest)."""

    def build() -> Detector:
        torch.manual_seed(config.seed)
        return Detector(config.channels)

    def make() -> nn.Module:
        scenes = _training_scenes(config)
        denoiser = trained_denoiser(VisionConfig(noise=config.noise, seed=config.seed, channels=DENOISER_CHANNELS), progress)
        with torch.inference_mode():
            x = denoiser(torch.from_numpy(scenes.images[:, None])).clone()
        y = torch.from_numpy(heatmap_targets(scenes)[:, None])
        loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(20.0))
        with torch.random.fork_rng():
            return _train(build(), x, y, config, loss, "train detector", progress)

    return _cached("detector", config, build, make)


def find_boxes(logits: torch.Tensor, threshold: float = PEAK_THRESHOLD) -> list[np.ndarray]:
    """Pick heatmap peaks (local maxima above ``threshold``) and return one (k, 4) box array per image.

    Boxes are ``[x0, y0, x1, y1]`` (exclusive ends) of 8×8 digits, sorted top-to-bottom, left-to-right.
    """
    prob = torch.sigmoid(logits[:, 0])
    # A peak is a pixel above the threshold that is the maximum of its PEAK_WINDOW² window. Only the
    # few pixels above the threshold are checked (a full 7×7 max-pool costs ~0.6 ms per 8 scenes).
    img, ys, xs = torch.nonzero(prob > threshold, as_tuple=True)  # row-major: by image, then y, then x
    r = PEAK_WINDOW // 2
    padded = torch.nn.functional.pad(prob, (r, r, r, r), value=float("-inf"))
    offsets = torch.arange(PEAK_WINDOW)
    windows = padded[img[:, None, None], ys[:, None, None] + offsets[:, None], xs[:, None, None] + offsets]  # (n, w, w)
    keep = prob[img, ys, xs] >= windows.amax(dim=(1, 2))
    img, ys, xs = img[keep], ys[keep], xs[keep]
    boxes = torch.stack([xs - HALF, ys - HALF, xs + HALF, ys + HALF], dim=1).numpy().astype(np.int64)
    ends = np.cumsum(torch.bincount(img, minlength=len(prob)).numpy())
    return [boxes[a:b].reshape(-1, 4) for a, b in zip(np.r_[0, ends[:-1]], ends)]


def crop_boxes(images: torch.Tensor, boxes: list[np.ndarray]) -> torch.Tensor:
    """Cut an 8×8 crop for every box (zero-padded at the canvas edge): a (sum k, 1, 8, 8) tensor."""
    if len(images) != len(boxes):
        raise BadInput(f"{len(images)} images but {len(boxes)} box lists")
    counts = [len(b) for b in boxes]
    if not sum(counts):
        return torch.zeros(0, 1, DIGIT, DIGIT, dtype=images.dtype)
    xy = torch.from_numpy(np.concatenate([np.asarray(b, np.int64).reshape(-1, 4) for b in boxes])[:, :2] + DIGIT)
    img = torch.repeat_interleave(torch.arange(len(boxes)), torch.tensor(counts))
    offsets = torch.arange(DIGIT)
    rows = (xy[:, 1, None] + offsets)[:, :, None]  # (n, 8, 1)
    cols = (xy[:, 0, None] + offsets)[:, None, :]  # (n, 1, 8)
    padded = torch.nn.functional.pad(images[:, 0], (DIGIT, DIGIT, DIGIT, DIGIT))
    return padded[img[:, None, None], rows, cols][:, None]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (n, 4) with every box in ``b`` (m, 4)."""
    a = np.asarray(a, float).reshape(-1, 4)
    b = np.asarray(b, float).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy

    def area(x: np.ndarray) -> np.ndarray:
        return (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])

    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


@dataclass(frozen=True)
class SceneQuality:
    """End-to-end quality against ground truth (detections matched at IoU ≥ ``iou``)."""

    precision: float
    recall: float
    crop_accuracy: float  # of the matched detections, the share classified correctly
    scene_accuracy: float  # scenes with every digit found, no extra box and every label right
    n_scenes: int
    n_digits: int
    n_detections: int
    iou: float

    def __str__(self) -> str:
        return (
            f"detection precision {self.precision:.1%}, recall {self.recall:.1%} (IoU ≥ {self.iou}), "
            f"crop accuracy {self.crop_accuracy:.1%}, scene accuracy {self.scene_accuracy:.1%} "
            f"on {self.n_scenes} scenes / {self.n_digits} digits"
        )


def evaluate(predictions: list[tuple[np.ndarray, np.ndarray]], scenes: Any, iou: float = 0.5) -> SceneQuality:
    """Score ``(boxes, labels)`` per scene against ``scenes``' ground truth (greedy IoU matching)."""
    if len(predictions) != len(scenes):
        raise BadInput(f"{len(predictions)} predictions for {len(scenes)} scenes")
    tp = n_pred = n_true = correct = scenes_ok = 0
    for (boxes, labels), true_boxes, true_labels in zip(predictions, scenes.boxes, scenes.labels):
        n_pred += len(boxes)
        n_true += len(true_boxes)
        ious = box_iou(boxes, true_boxes)
        used: set[int] = set()
        matched = right = 0
        for p in np.argsort(-ious.max(axis=1)) if ious.size else []:
            t = int(np.argmax(np.where([k in used for k in range(len(true_boxes))], -1, ious[p])))
            if ious[p, t] >= iou and t not in used:
                used.add(t)
                matched += 1
                right += int(labels[p] == true_labels[t])
        tp += matched
        correct += right
        scenes_ok += int(matched == len(true_boxes) == len(boxes) and right == matched)
    return SceneQuality(
        precision=tp / n_pred if n_pred else 0.0,
        recall=tp / n_true if n_true else 0.0,
        crop_accuracy=correct / tp if tp else 0.0,
        scene_accuracy=scenes_ok / len(scenes) if len(scenes) else 0.0,
        n_scenes=len(scenes),
        n_digits=n_true,
        n_detections=n_pred,
        iou=iou,
    )
