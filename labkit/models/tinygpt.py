"""TinyGPT: a small GPT-style character model, its corpus, quick cached training, greedy generation.

The corpus ships with Python: the Zen of Python, read from the standard library's ``this``
module (parsed, not imported, so nothing is printed). A few seconds of training make greedy
generation recite recognisable lines. The blocks are written so tensor parallelism can shard
them: attention has separate ``q``/``k``/``v``/``proj`` linears and the number of heads is read
from the tensor shape (``view(B, T, -1, head_dim)``), so a rank holding half the heads still works.
Used in 03.

    cfg = tinygpt.GPTConfig()
    model = tinygpt.trained(cfg)
    print(tinygpt.generate_text(model, "Beautiful is", 40))
"""

from __future__ import annotations

import ast
import codecs
import importlib.util
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labkit.errors import BadInput
from labkit.models import store
from labkit.runtime import cache

__all__ = [
    "CODE_VERSION",
    "MLP",
    "Attention",
    "Block",
    "GPTConfig",
    "TinyGPT",
    "Vocab",
    "build",
    "corpus",
    "encode_batch",
    "generate",
    "generate_text",
    "gpus_needed",
    "is_cached",
    "memory_estimate",
    "param_bytes",
    "train",
    "trained",
    "vocab",
]

# Bump when the model or training change: cached weights are then rebuilt.
CODE_VERSION = "tinygpt-2"  # generation changes need no bump: weights are unchanged
# Label smoothing keeps logits small (|logit| ≲ 6), so float32 rounding in sharded sums stays ≪ 1e-5.
LABEL_SMOOTHING = 0.1
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}


@lru_cache(maxsize=1)
def corpus() -> str:
    """Return the Zen of Python (decoded from the stdlib ``this`` module, without importing it)."""
    spec = importlib.util.find_spec("this")
    if spec is None or spec.origin is None:
        raise BadInput("the standard library module 'this' is missing from this Python")
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "s" and isinstance(node.value, ast.Constant):
            return codecs.decode(str(node.value.value), "rot13") + "\n"
    raise BadInput(f"could not find the Zen text in {spec.origin}")


@dataclass(frozen=True)
class Vocab:
    """Characters of the corpus ↔ integer token ids."""

    chars: str

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self.chars})
        if unknown:
            raise BadInput(f"characters {unknown!r} are not in the corpus vocabulary")
        return [self.chars.index(c) for c in text]

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[int(i)] for i in ids)


def vocab() -> Vocab:
    """The corpus's characters, sorted."""
    return Vocab("".join(sorted(set(corpus()))))


@dataclass(frozen=True)
class GPTConfig:
    """Size and training of a TinyGPT. ``n_heads`` and ``4 * d_model`` must divide by the shard count."""

    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    block_size: int = 64
    steps: int = 500
    batch_size: int = 16
    lr: float = 5e-3
    seed: int = 0

    def spec(self) -> dict[str, Any]:
        return asdict(self)


class Attention(nn.Module):
    """Causal self-attention with separate q, k, v projections (column-shardable) and proj (row-shardable)."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise BadInput(f"d_model={d_model} must divide by n_heads={n_heads}")
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Causal self-attention over ``x`` (batch, time, dim). Shown in 03 (tensor parallelism)."""
        b, t, _ = x.shape
        # -1 heads: the full model has n_heads here, a tensor-parallel rank has n_heads / world_size
        q, k, v = (lin(x).view(b, t, -1, self.head_dim).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """Two linears around a GELU: ``fc`` (column-shardable) then ``proj`` (row-shardable)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.proj = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A GPT-style decoder: token + position embeddings, ``n_layers`` blocks, final norm, linear head."""

    def __init__(self, vocab_size: int, cfg: GPTConfig = GPTConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg.d_model, cfg.n_heads) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.cfg.block_size:
            raise BadInput(f"sequence of {t} tokens is longer than block_size={self.cfg.block_size}")
        return self.tok(idx) + self.pos(torch.arange(t, device=idx.device))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build(cfg: GPTConfig = GPTConfig()) -> TinyGPT:
    """Return an untrained TinyGPT for ``cfg`` (seeded, so identical every time)."""
    torch.manual_seed(cfg.seed)
    return TinyGPT(len(vocab()), cfg)


def train(cfg: GPTConfig = GPTConfig(), progress: bool = True) -> TinyGPT:
    """Train on random windows of the corpus (next-character prediction), deterministically."""
    from labkit.runtime.progress import tqdm

    data = torch.tensor(vocab().encode(corpus()))
    gen = torch.Generator().manual_seed(cfg.seed)
    model = build(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    model.train()
    bar = tqdm(range(cfg.steps), desc="train TinyGPT", disable=not progress, leave=False)
    for _ in bar:
        starts = torch.randint(0, len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=gen)
        x = torch.stack([data[s : s + cfg.block_size] for s in starts])
        y = torch.stack([data[s + 1 : s + cfg.block_size + 1] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def _path(cfg: GPTConfig) -> Path:
    return cache.cached_path("models", "tinygpt", cfg.spec(), f"{CODE_VERSION}-torch{torch.__version__}")


def trained(cfg: GPTConfig = GPTConfig(), progress: bool = True) -> TinyGPT:
    """Return a trained TinyGPT: from the disk cache, or trained now (seconds) and cached."""

    return store.load_or_train(_path(cfg), lambda: build(cfg), lambda: train(cfg, progress=progress))


def is_cached(cfg: GPTConfig = GPTConfig()) -> bool:
    """Return True if weights for ``cfg`` are already on disk."""
    return _path(cfg).exists()


def encode_batch(batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """A (batch_size, seq_len) batch of corpus windows (wrapping around), as token ids."""
    data = vocab().encode(corpus())
    if seq_len > len(data):
        raise BadInput(f"seq_len={seq_len} is longer than the corpus ({len(data)} characters)")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data), (batch_size,), generator=gen).tolist()
    doubled = data + data
    return torch.tensor([doubled[s : s + seq_len] for s in starts])


@torch.no_grad()  # not inference_mode: under it DTensor re-derives its sharding for every op (20× slower)
def generate(model: nn.Module, prompt_ids: torch.Tensor, n_new: int, block_size: int) -> torch.Tensor:
    """Greedy decoding: append the most likely next token ``n_new`` times; returns all ids (1-D).

    Every step feeds a window of exactly ``block_size`` tokens, right-padded: causal attention
    never looks at the padding, and a constant shape lets a sharded (DTensor) model reuse its
    cached sharding decisions instead of recomputing them for every new length.
    """
    ids = prompt_ids.reshape(-1)
    window = torch.zeros(1, block_size, dtype=ids.dtype, device=ids.device)
    for _ in range(n_new):
        context = ids[-block_size:]
        n = len(context)
        window.zero_()
        window[0, :n] = context
        logits = model(window)
        if hasattr(logits, "full_tensor"):  # a DTensor output
            logits = logits.full_tensor()
        ids = torch.cat([ids, logits[0, n - 1].argmax().reshape(1)])
    return ids


def generate_text(model: TinyGPT, prompt: str, n_new: int = 60) -> str:
    """Greedy continuation of ``prompt`` as text."""
    v = vocab()
    ids = generate(model, torch.tensor(v.encode(prompt)), n_new, model.cfg.block_size)
    return v.decode(ids)


def param_bytes(model: nn.Module, dtype_bytes: int = 4) -> int:
    """Bytes of the parameters held by this process (local shards only, for DTensor parameters)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * dtype_bytes
    return total


def memory_estimate(
    n_params: int,
    d_model: int,
    n_layers: int,
    n_heads: int,
    batch_size: int,
    seq_len: int,
    dtype: str = "float32",
    n_shards: int = 1,
) -> dict[str, float]:
    """Inference memory in bytes: weights, the KV cache and the largest live activation, per shard.

    Tensor parallelism splits every term by ``n_shards`` (heads and MLP columns are split);
    this is the ideal — replicated embeddings and norms make the real split a little worse.
    """
    if dtype not in DTYPE_BYTES:
        raise BadInput(f"dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}")
    b = DTYPE_BYTES[dtype]
    weights = n_params * b
    kv_cache = 2 * n_layers * batch_size * seq_len * d_model * b
    # the biggest transient: the MLP hidden (4·d) or the attention scores (heads·T·T)
    activations = max(4 * d_model * batch_size * seq_len, n_heads * batch_size * seq_len * seq_len) * b
    per = {"weights": weights, "kv_cache": kv_cache, "activations": activations}
    out = {k: v / n_shards for k, v in per.items()}
    out["total"] = sum(out.values())
    return out


def gpus_needed(n_params: float, dtype: str, gpu_gb: float = 80.0) -> int:
    """How many ``gpu_gb`` GPUs the weights alone fill (ceil), ignoring activations and KV cache."""
    return math.ceil(n_params * DTYPE_BYTES[dtype] / (gpu_gb * 1e9))
