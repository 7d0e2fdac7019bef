"""One way to get a trained model: load its cached state dict, or train it now and save atomically.

Every model of the course is cached on disk under a hash of its config and a code version
(``runtime.cache``); ``load_or_train`` is the one place that reads and writes those files, and
``fit`` the one minibatch training loop (Adam, a seeded shuffle per epoch, a tqdm bar).

    model = store.load_or_train(path, build=lambda: DigitCNN(), train=lambda: fit(...))

Used by models.digit_nets (00–14), models.vision (01) and models.tinygpt (03).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from labkit.runtime import cache

__all__ = ["fit", "load_or_train", "save_state"]

M = TypeVar("M", bound=nn.Module)


def save_state(model: nn.Module, path: Path) -> None:
    """Write ``model``'s state dict to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


def load_or_train(path: Path, build: Callable[[], M], train: Callable[[], M]) -> M:
    """Return ``build()`` with the weights at ``path``, or ``train()``'s model, saved there first.

    A file that cannot be read (a torn write, an old format) is reported in one line and retrained.
    """

    def load(p: Path) -> M:
        model = build()
        model.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
        return model.eval()

    def make(p: Path) -> M:
        model = train()
        save_state(model, p)
        return model

    model, _ = cache.load_or_build(path, load, make)
    return model


def fit(
    model: M,
    n_examples: int,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    desc: str = "train",
    progress: bool = True,
    loss_digits: int = 3,
) -> M:
    """Train ``model`` with Adam for ``epochs`` passes over ``n_examples``, in a seeded random order.

    ``batch_loss(indices)`` returns the loss of one minibatch (a tensor of example indices), so the
    caller decides what an example is and how it is weighted. Returns the model in eval mode.
    """
    from labkit.runtime.progress import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(n_examples, generator=gen)
        for start in range(0, n_examples, batch_size):
            loss = batch_loss(order[start : start + batch_size])
            opt.zero_grad()
            loss.backward()
            opt.step()
        bar.set_postfix(loss=f"{loss.item():.{loss_digits}f}")
    return model.eval()
