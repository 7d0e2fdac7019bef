"""The lab's digit models and their quick, deterministic, cached training.

``DigitCNN`` and ``DigitMLP`` classify scikit-learn's 8×8 digits. ``trained(TrainConfig(...))``
trains one in about a second (tqdm bar) and caches the weights on disk under a hash of the
config and ``CODE_VERSION``; a second call loads them. Used in 00–14.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from labkit.errors import BadInput
from labkit.models import store
from labkit.runtime import cache

__all__ = [
    "CODE_VERSION",
    "DigitCNN",
    "DigitMLP",
    "TrainConfig",
    "accuracy",
    "build",
    "flops_per_sample",
    "is_cached",
    "predict",
    "predict_logits",
    "train",
    "trained",
    "weights_hash",
]

# Bump when model definitions or training change: cached weights are then rebuilt.
CODE_VERSION = "models-1"
Arch = Literal["cnn", "mlp"]


class DigitCNN(nn.Module):
    """A small CNN for 8×8 digits: two 3×3 convs, a 2×2 max-pool, two linear layers.

    Shown in 00 §3.
    """

    def __init__(self, channels: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * channels * 16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitMLP(nn.Module):
    """A multilayer perceptron for 8×8 digits."""

    def __init__(self, hidden: tuple[int, ...] = (128, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = 64
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained digit model (and so its cache key).

    ``bootstrap_seed`` trains on a bootstrap resample of the training split (bagging);
    ``sample_weights`` (a tuple, one per training example) is used by boosting.
    """

    arch: Arch = "cnn"
    epochs: int = 12
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    width: int = 16
    hidden: tuple[int, ...] = (128, 64)
    bootstrap_seed: int | None = None
    sample_weights: tuple[float, ...] | None = field(default=None, repr=False)

    def spec(self) -> dict[str, Any]:
        d = asdict(self)
        if self.sample_weights is not None:
            d["sample_weights"] = hashlib.sha256(np.asarray(self.sample_weights, np.float64).tobytes()).hexdigest()
        return d


def build(config: TrainConfig) -> nn.Module:
    """Return an untrained model for ``config`` (seeded, so identical every time)."""
    torch.manual_seed(config.seed)
    if config.arch == "cnn":
        return DigitCNN(channels=config.width)
    if config.arch == "mlp":
        return DigitMLP(hidden=config.hidden)
    raise BadInput(f"unknown arch {config.arch!r}; use 'cnn' or 'mlp'")


def train(config: TrainConfig = TrainConfig(), progress: bool = True) -> nn.Module:
    """Train a digit model on the train split, deterministically, with a tqdm progress bar."""
    from labkit.data import load_digits

    digits = load_digits()
    x = torch.from_numpy(np.array(digits.x_train))
    y = torch.from_numpy(np.array(digits.y_train))
    if config.bootstrap_seed is not None:
        rng = np.random.default_rng(config.bootstrap_seed)
        idx = torch.from_numpy(rng.integers(0, len(x), size=len(x)))
        x, y = x[idx], y[idx]
    weights = None
    if config.sample_weights is not None:
        if len(config.sample_weights) != len(x):
            raise BadInput(f"sample_weights has {len(config.sample_weights)} entries, the training split {len(x)}")
        weights = torch.tensor(config.sample_weights, dtype=torch.float32)
        weights = weights / weights.sum() * len(weights)
    model = build(config)
    loss_fn = nn.CrossEntropyLoss(reduction="none")

    def batch_loss(batch: torch.Tensor) -> torch.Tensor:
        losses = loss_fn(model(x[batch]), y[batch])
        return (losses * weights[batch]).mean() if weights is not None else losses.mean()

    return store.fit(model, len(x), batch_loss, config.epochs, config.batch_size, config.lr, config.seed, f"train {config.arch}", progress)


def _path(config: TrainConfig) -> Path:
    return cache.cached_path("models", f"digit-{config.arch}", config.spec(), f"{CODE_VERSION}-torch{torch.__version__}")


def trained(config: TrainConfig = TrainConfig(), progress: bool = True) -> nn.Module:
    """Return a trained model for ``config``: from the disk cache, or trained now and cached.

    >>> model = trained(TrainConfig(arch="mlp"), progress=False)
    >>> accuracy(model, "test") > 0.9
    True
    """
    return store.load_or_train(_path(config), lambda: build(config), lambda: train(config, progress=progress))


def is_cached(config: TrainConfig) -> bool:
    """Return True if weights for ``config`` are already on disk."""
    return _path(config).exists()


def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Run ``model`` on ``x`` in batches without autograd; return logits on the CPU."""
    xs = x if isinstance(x, torch.Tensor) else torch.tensor(np.asarray(x))
    dev = next(model.parameters()).device
    outs = []
    with torch.inference_mode():
        for start in range(0, len(xs), batch_size):
            outs.append(model(xs[start : start + batch_size].to(dev)).cpu())
    return torch.cat(outs) if outs else torch.zeros(0, 10)


def predict(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Return predicted classes for ``x`` as a numpy int array."""
    return predict_logits(model, x, batch_size).argmax(dim=1).numpy()


def accuracy(model: nn.Module, split: str = "test") -> float:
    """Accuracy of ``model`` on a split of the digits."""
    from labkit.data import load_digits

    x, y = load_digits().split(split)  # type: ignore[arg-type]
    return float((predict(model, x) == y).mean())


def flops_per_sample(model: nn.Module, input_shape: tuple[int, ...] = (1, 8, 8)) -> int:
    """Count the floating-point operations (2 × multiply-adds) of conv and linear layers for one input."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * mod.out_features
        elif isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
            total += 2 * k * out[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.inference_mode():
            param = next(model.parameters())
            model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))  # the model's device and dtype
    finally:
        for h in handles:
            h.remove()
    return total


def weights_hash(model: nn.Module) -> str:
    """A short hash of the model's weights: equal hashes mean identical replicas."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
