"""Checks for notebook 03 (model sharding): the GPipe bubble, GPUs for GPT-3, a tensor-parallel plan.

    from labkit.exercises import ex03
    ex03.check_bubble_fraction(answer, n_stages=4, n_microbatches=8)
    ex03.check_gpt3_gpus(answer, dtype="bfloat16")
    ex03.check_mlp_plan(plan)
"""

from __future__ import annotations

from typing import Any

from labkit.exercises import is_unanswered, verdict

__all__ = ["check_bubble_fraction", "check_gpt3_gpus", "check_mlp_plan", "exercise_mlp", "simulate_plan"]

GPT3_PARAMS = 175e9
GPU_GB = 80.0
WORLD_SIZE = 2


def check_bubble_fraction(answer: Any, n_stages: int = 4, n_microbatches: int = 8) -> bool:
    """★ The idle fraction of a GPipe forward with K stages and M microbatches: (K−1)/(M+K−1)."""
    k, m = n_stages, n_microbatches
    right = (k - 1) / (m + k - 1)
    problem = None
    if not is_unanswered(answer):
        try:
            value = float(answer)
        except (TypeError, ValueError):
            value = float("nan")
        if not 0.0 <= value < 1.0:
            problem = f"{answer!r} is impossible: an idle fraction of the time lies between 0 and 1"
        elif abs(value - right) > 1e-3:
            problem = f"{answer!r} is not the bubble fraction for K={k} stages and M={m} microbatches"
            if abs(value - (k - 1) / m) < 1e-3:
                problem += " ((K−1)/M counts the bubble against the useful work only, not against the whole time)"
    return verdict(
        "bubble fraction",
        answer,
        problem,
        hint="draw the schedule: it takes M + K − 1 slots in all, and each stage is busy in M of them",
        success=f"{right:.3f}: with M={m} each stage idles {right:.0%} of the time.",
    )


def check_gpt3_gpus(answer: Any, dtype: str = "bfloat16") -> bool:
    """★ How many 80 GB GPUs the weights of a 175B-parameter model fill in ``dtype`` (ceil)."""
    from labkit.models.tinygpt import DTYPE_BYTES, gpus_needed

    right = gpus_needed(GPT3_PARAMS, dtype, GPU_GB)
    problem = None
    if not is_unanswered(answer) and answer != right:
        problem = f"{answer!r} GPUs is not enough or more than needed for 175B parameters in {dtype}"
    return verdict(
        f"GPT-3 GPUs in {dtype}",
        answer,
        problem,
        hint=f"175e9 parameters × {DTYPE_BYTES.get(dtype, '?')} bytes, divided by 80e9 bytes per GPU, rounded up",
        success=f"{right} GPUs — for the weights alone; the KV cache and activations need more.",
    )


def exercise_mlp() -> Any:
    """The MLP the plan exercise shards: Linear(32→128), GELU, Linear(128→32), seeded."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32))


def _style_name(style: Any) -> str:
    return type(style).__name__


def _gathers_output(style: Any) -> bool:
    layouts = getattr(style, "output_layouts", None)
    layout = layouts[0] if isinstance(layouts, tuple) and layouts else layouts
    return type(layout).__name__ == "Replicate"


def simulate_plan(module: Any, plan: dict[str, Any], world_size: int = WORLD_SIZE) -> tuple[Any, int, str | None]:
    """Run ``module`` (an nn.Sequential) as ``world_size`` ranks would under ``plan``, in this process.

    Returns (output, number of collectives, problem or None). Each rank holds its slice of the
    weights: ColwiseParallel keeps output features (rows of W), RowwiseParallel input features
    (columns of W), whose partial sums one all-reduce adds up.
    """
    import torch
    from torch import nn

    x = torch.randn(4, module[0].in_features, generator=torch.Generator().manual_seed(1))
    shards: list[torch.Tensor] = [x] * world_size
    layout = "replicate"
    collectives = 0
    unknown = set(plan) - {name for name, _ in module.named_children()}
    if unknown:
        return None, 0, f"the plan names {sorted(unknown)}, which are not layers of the module (use '0', '2', ...)"
    for name, layer in module.named_children():
        style = plan.get(name)
        if not isinstance(layer, nn.Linear):
            if style is not None:
                return None, collectives, f"layer {name!r} ({type(layer).__name__}) has no weights to shard"
            shards = [layer(s) for s in shards]  # elementwise: any layout passes through
            continue
        w, b = layer.weight, layer.bias
        kind = _style_name(style) if style is not None else None
        if kind is None:
            if layout != "replicate":
                return None, collectives, f"layer {name!r} is not sharded but its input is split across ranks (shape mismatch)"
            shards = [layer(s) for s in shards]
        elif kind == "ColwiseParallel":
            if layout == "shard":
                shards = [torch.cat(shards, dim=-1)] * world_size  # all-gather the input first
                collectives += 1
            rows = w.chunk(world_size, dim=0)
            bias = b.chunk(world_size) if b is not None else [None] * world_size
            shards = [nn.functional.linear(s, rows[r], bias[r]) for r, s in enumerate(shards)]
            layout = "shard"
            if _gathers_output(style):
                shards = [torch.cat(shards, dim=-1)] * world_size
                collectives += 1
                layout = "replicate"
        elif kind == "RowwiseParallel":
            if layout != "shard":
                return None, collectives, f"RowwiseParallel on {name!r} expects its input split by features, but the input is whole on every rank (shape mismatch)"
            cols = w.chunk(world_size, dim=1)
            partial = [s @ cols[r].T for r, s in enumerate(shards)]
            total = sum(partial[1:], partial[0]) + (b if b is not None else 0)  # one all-reduce
            collectives += 1
            shards = [total] * world_size
            layout = "replicate"
        else:
            return None, collectives, f"{kind} is not a tensor-parallel style this exercise knows; use ColwiseParallel or RowwiseParallel"
    if layout != "replicate":
        return None, collectives, "the output stays split across ranks: each rank has only part of the features"
    return shards[0], collectives, None


def check_mlp_plan(plan: Any) -> bool:
    """★★ A plan for ``exercise_mlp()`` that gives the unsharded output with a single all-reduce."""
    import torch

    problem = None
    if not is_unanswered(plan):
        if not isinstance(plan, dict):
            problem = f"the plan must be a dict from layer name to style, got {type(plan).__name__}"
        else:
            mlp = exercise_mlp()
            out, n_coll, why = simulate_plan(mlp, plan)
            whole = [n for n, layer in mlp.named_children() if isinstance(layer, torch.nn.Linear) and n not in plan]
            if why is None and whole:
                why = f"layer(s) {whole} are not sharded: every rank would hold all their weights"
            if why is not None:
                problem = why
            else:
                x = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
                with torch.no_grad():
                    diff = float((out - mlp(x)).abs().max())
                if diff > 1e-5:
                    problem = f"the sharded output differs from the unsharded one by {diff:.2g}"
                elif n_coll != 1:
                    problem = f"the output is right, but it takes {n_coll} collectives; the Megatron pattern needs only one"
    return verdict(
        "shard the MLP",
        plan,
        problem,
        hint="split the first linear's output features, and let the second linear consume exactly that split",
        success="column-then-row: the hidden activation never leaves its rank, one all-reduce at the end.",
    )
