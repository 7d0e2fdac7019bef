"""One rank of a data-parallel run across nodes, launched by torchrun: ``python -m labkit.patterns.multinode``.

Every node runs one launcher (``torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d
--rdzv-endpoint=HEAD:PORT -m labkit.patterns.multinode --out DIR``); torchrun sets RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT, so ``init_process_group("gloo")`` needs no arguments.
The rank then does what 04's torch.distributed cell does — broadcast rank 0's weights, scatter
equal shards, infer, gather to rank 0 — plus an all-reduce as 03's tensor-parallel layers do, and
writes ``rank-<r>.json`` (its host, weights hash, fingerprint, timings). Used in 04 and tests/test_cluster.py.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run this rank; rank 0 also checks the gathered predictions against one local model."""
    import torch
    import torch.distributed as dist

    from labkit.cluster.fingerprint import node_fingerprint
    from labkit.models import digit_nets
    from labkit.patterns.data_parallel import make_dataset

    parser = argparse.ArgumentParser(prog="python -m labkit.patterns.multinode")
    parser.add_argument("--out", required=True, help="folder for rank-<r>.json")
    parser.add_argument("--n-items", type=int, default=2000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dist.init_process_group("gloo")  # env:// — torchrun set everything
    rank, world = dist.get_rank(), dist.get_world_size()
    rendezvous_s = time.perf_counter() - t0
    model = digit_nets.trained(digit_nets.TrainConfig(), progress=False).eval()
    t = time.perf_counter()
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)
    broadcast_s = time.perf_counter() - t
    per_rank = -(-args.n_items // world)
    shard = torch.empty(per_rank, 1, 8, 8)
    chunks = None
    if rank == 0:
        from labkit.data import load_digits

        x = torch.from_numpy(make_dataset(args.n_items, 0, load_digits().x_test))
        x = torch.cat([x, x.new_zeros(per_rank * world - args.n_items, 1, 8, 8)])
        chunks = [c.contiguous() for c in x.chunk(world)]
    t = time.perf_counter()
    dist.scatter(shard, chunks, src=0)
    scatter_s = time.perf_counter() - t
    with torch.inference_mode():
        out = model(shard)
    gathered = [torch.empty_like(out) for _ in range(world)] if rank == 0 else None
    dist.gather(out.contiguous(), gathered, dst=0)
    total = torch.tensor([float(rank)])
    dist.all_reduce(total)  # the collective 03's row-parallel layers end with
    result = {"rank": rank, "world": world, "host": socket.gethostname(), "pid": os.getpid(), "node_dir": os.getcwd(),
              "weights": digit_nets.weights_hash(model), "fingerprint": node_fingerprint()["hash"], "rank_sum": float(total.item()),
              "rendezvous_s": rendezvous_s, "broadcast_s": broadcast_s, "scatter_s": scatter_s, "shard_bytes": shard.numel() * 4}  # fmt: skip
    if rank == 0:
        assert chunks is not None and gathered is not None
        logits = torch.cat(gathered)[: args.n_items]
        local = digit_nets.predict_logits(model, torch.cat(chunks)[: args.n_items])
        result["max_abs_diff"] = float((logits - local).abs().max())
    dist.destroy_process_group()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"rank-{rank}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
