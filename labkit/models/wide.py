"""The wide timing model that the serving lessons batch: one definition for every server.

The digit CNN is so small that one request costs ~0.1 ms of model time: Serve's own per-request
work dominates and batching requests barely helps. Batching pays when one call's cost is mostly
*fixed* — reading big weights from memory (an LLM decode step), a GPU kernel launch. ``WideDigitNet``
makes that visible on a CPU: two fixed random ReLU layers (``width`` wide; the second is
width × width, 256 MB at width 8192) and a readout trained in closed form (ridge regression, a
"random-feature network"). A batch of 1 is a matrix-vector product that streams every weight for
one row of arithmetic; a batch of 32 streams them once for 32 rows, so a call of 32 costs a few
calls of 1 (12 §4 measures it on the learner's CPU: batch 32 was 4.9× cheaper per item than batch 1
on the lab's 2-core machine, one thread, width 8192). The layers are **float32**: bfloat16 halves the
bytes, but a CPU without bf16 matrix units (AVX512-BF16, AMX) converts every element, so there a
call of 32 cost 29× a call of 1 and batching gained 1.09× (measured on the same machine). It
classifies the digits at ~97 %.

    model = wide.wide_trained(width=4096)
    preds = model.predict(x)                       # x: (N, 1, 8, 8) float32

The same network serves everywhere: Ray Serve runs ``WideDigitNet`` (07, ``labkit bench ray``);
TorchServe archives it as a ``digit_nets.DigitMLP`` (``wide_mlp()``: 09, ``labkit bench
torchserve``); the Keras twin behind TF Serving (``savedmodels.export_wide``, 10) takes ``WIDTH``
and ``DTYPE_NAME`` from here. Request bodies: ``labkit.apps.wire`` (the ``ray-serve`` codec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from labkit.runtime import cache

__all__ = ["DTYPE_NAME", "WIDTH", "WideDigitNet", "wide_mlp", "wide_trained"]

CODE_VERSION = "wide-4-fp32"  # float32 layers (bfloat16 batched 1.09× on a CPU without bf16 units)
N_FIT = 600  # training examples used to fit the readout (closed form, seconds)
RIDGE = 1e-2
DTYPE_NAME = "float32"  # storage and compute type of the two wide layers (and the readout)
WIDTH = 8192  # the benchmarks' width: a width × width layer is 256 MB in float32


@dataclass
class WideDigitNet:
    """Random wide features + a trained linear readout; ``predict`` takes (N, 1, 8, 8) float32."""

    width: int
    seed: int
    readout: np.ndarray  # (width, 10)

    def __post_init__(self) -> None:
        import torch

        dtype = getattr(torch, DTYPE_NAME)
        g = torch.Generator().manual_seed(self.seed)
        # stored (out, in) as nn.Linear keeps them: F.linear on this layout runs the CPU's fast kernels, while
        # ``x @ w`` on the (in, out) layout took 1500 vs 25 ms per row here (one thread, width 8192)
        self.w1 = (torch.randn(64, self.width, generator=g) / 8.0).to(dtype).t().contiguous()
        self.w2 = (torch.randn(self.width, self.width, generator=g) / self.width**0.5).to(dtype).t().contiguous()
        self.wo = torch.as_tensor(self.readout, dtype=torch.float32)

    def features(self, x: Any) -> Any:
        import torch

        dtype = self.w2.dtype
        xs = torch.from_numpy(np.array(x, dtype=np.float32)).reshape(len(x), -1).to(dtype)
        linear = torch.nn.functional.linear
        return torch.relu(linear(torch.relu(linear(xs, self.w1)), self.w2)).float()

    def predict(self, x: Any) -> np.ndarray:
        """Predicted classes for a batch of digits."""
        import torch

        with torch.inference_mode():
            return (self.features(x) @ self.wo).argmax(dim=1).numpy()

    @property
    def weights_mb(self) -> float:
        return sum(w.numel() * w.element_size() for w in (self.w1, self.w2, self.wo)) / 2**20


def wide_trained(width: int = WIDTH, seed: int = 0) -> WideDigitNet:
    """Return a ``WideDigitNet``; its readout is fitted once and cached on disk (weights regrow from ``seed``)."""
    import torch

    from labkit.data import load_digits

    path = cache.cached_path("models", "wide-digit", {"width": width, "seed": seed, "n_fit": N_FIT, "ridge": RIDGE}, CODE_VERSION, ".npy")

    def load(p: Any) -> WideDigitNet:
        return WideDigitNet(width, seed, np.load(p))

    def build(p: Any) -> WideDigitNet:
        net = WideDigitNet(width, seed, np.zeros((width, 10), np.float32))
        d = load_digits()
        with torch.inference_mode():  # the fit's features in float32 from the same weights (whatever ``DTYPE_NAME`` stores them
            # in), so the closed-form solve sees exact features
            xs = torch.from_numpy(np.array(d.x_train[:N_FIT], dtype=np.float32)).reshape(N_FIT, -1)
            linear = torch.nn.functional.linear
            h = torch.relu(linear(torch.relu(linear(xs.to(net.w1.dtype).float(), net.w1.float())), net.w2.float()))
            y = torch.nn.functional.one_hot(torch.as_tensor(np.array(d.y_train[:N_FIT])), 10).float()
            k = h @ h.T
            alpha = torch.linalg.solve(k + RIDGE * k.diagonal().mean() * torch.eye(len(k)), y)
            readout = (h.T @ alpha).numpy().astype(np.float32)
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, readout)
        tmp.replace(p)
        return WideDigitNet(width, seed, readout)

    net, _ = cache.load_or_build(path, load, build)
    return net


def wide_mlp(width: int = WIDTH, seed: int = 0) -> Any:
    """``WideDigitNet`` as a ``digit_nets.DigitMLP`` (64 → width → width → 10), all in ``DTYPE_NAME``.

    The archive TorchServe's handler can rebuild: the same seeded wide layers (zero biases) and the
    same fitted readout, stored and run in ``DTYPE_NAME`` like the wide layers. Used as the timing model of
    09 and ``labkit bench torchserve``; its answers are not checked there.
    """
    import torch

    from labkit.models import digit_nets

    net = wide_trained(width, seed)
    mlp = digit_nets.DigitMLP(hidden=(width, width))
    linears = [m for m in mlp.net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for layer, weight in zip(linears, (net.w1.float(), net.w2.float(), net.wo.T)):  # every weight (out, in)
            layer.weight.copy_(weight)
            layer.bias.zero_()
    return mlp.to(getattr(torch, DTYPE_NAME)).eval()
