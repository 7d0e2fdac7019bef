"""The Triton Inference Server process: PyTriton binds the wide model, the real ``tritonserver`` serves it.

Run by ``labkit.services.triton`` with the Python of ``.venv-triton`` (``make triton``: PyTriton
pins numpy < 2, so it lives in its own environment, as a deployment runs a server in its own
image), never imported by the lab's own Python::

    .venv-triton/bin/python -m labkit.apps.triton_app --http-port P --grpc-port G --metrics-port M

PyTriton's ``Triton`` starts the ``tritonserver`` binary its wheel bundles (HTTP/gRPC/metrics on
127.0.0.1) and connects it to ``infer`` below through its Python backend. One model is bound per
``--model NAME:MAX_BATCH:DELAY_US``: ``MAX_BATCH`` 1 is "no batching"; above 1 Triton's **dynamic
batcher** waits up to ``DELAY_US`` µs to put queued requests into one call. Every binding shares
the same ``WideDigitNet`` (weights once in memory). Each answer carries ``batch_size``: the size
of the batch its request was part of.

On SIGTERM (``stop()``, or the parent dying: ``die_with_parent``) it stops Triton, then kills
anything left in its process group, so no ``tritonserver`` outlives it.

Shown in 12.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["main", "make_infer", "parse_model"]


def parse_model(spec: str) -> tuple[str, int, int]:
    """``"wide_b32:32:2000"`` → (name, max batch size, max queue delay in µs)."""
    name, max_batch, delay_us = spec.split(":")
    return name, int(max_batch), int(delay_us)


def make_infer(net: Any) -> Any:
    """The batched infer function Triton calls: pixels (N, 64) float32 → label (N, 1), batch_size (N, 1).

    ``@batch`` hands it whole batches as numpy arrays (Triton's dynamic batcher formed them).
    Shown in 12.
    """
    import numpy as np
    from pytriton.decorators import batch

    lock = threading.Lock()  # one model call at a time: the CPU's cores serve one batch at a time

    @batch  # type: ignore[untyped-decorator,unused-ignore]
    def infer(pixels: Any) -> dict[str, Any]:
        x = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), 1, 8, 8)
        with lock:
            labels = net.predict(x).astype(np.int64).reshape(-1, 1)
        return {"label": labels, "batch_size": np.full((len(x), 1), len(x), dtype=np.int64)}

    return infer


def _use_this_libpython() -> None:
    """Make the Python backend stub load this interpreter's libpython, not another 3.x.y on the system.

    The stub links ``libpython3.X.so.1.0`` and runs this interpreter's standard library; a system
    libpython of another patch release (Debian's 3.11.2 next to a pyenv 3.11.7) fails inside
    ``multiprocessing`` (``'_thread.RLock' object has no attribute '_recursion_count'``).
    """
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir and os.path.isdir(libdir):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p)


def _end_group() -> None:
    """Kill every other process in this process group (the tritonserver binary, backend stubs)."""
    me, pgid = os.getpid(), os.getpgid(0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            if os.getpgid(int(entry)) == pgid:
                os.kill(int(entry), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


def main(argv: list[str] | None = None) -> None:
    """Bind the model once per ``--model`` setting (``Triton.bind``), start tritonserver, serve until SIGTERM. Shown in 12."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the model calls")
    parser.add_argument("--model", action="append", required=True, help="NAME:MAX_BATCH:DELAY_US (repeatable)")
    args = parser.parse_args(argv)

    from labkit.runtime.process import die_with_parent

    die_with_parent()
    import numpy as np
    import torch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from labkit.models import wide

    _use_this_libpython()
    torch.set_num_threads(args.threads)
    net = wide.wide_trained(args.width)  # the readout was fitted and cached by the lab's Python
    infer = make_infer(net)
    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port,
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_address="127.0.0.1", metrics_port=args.metrics_port,
        allow_gpu_metrics=False, allow_sagemaker=False, allow_vertex_ai=False, exit_timeout_secs=2, log_verbose=0,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    triton = Triton(config=config, workspace=args.workspace)
    try:
        for spec in args.model:
            name, max_batch, delay_us = parse_model(spec)
            triton.bind(
                model_name=name,
                infer_func=infer,
                inputs=[Tensor(name="pixels", dtype=np.float32, shape=(64,))],
                outputs=[Tensor(name="label", dtype=np.int64, shape=(1,)), Tensor(name="batch_size", dtype=np.int64, shape=(1,))],
                config=ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=delay_us)),
                strict=True,
            )
        triton.run()  # starts tritonserver in the background; returns once the models are loaded
        print(f"triton ready: http 127.0.0.1:{args.http_port}, models {[parse_model(s)[0] for s in args.model]}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        try:
            triton.stop()
        finally:
            _end_group()
    sys.exit(0)


if __name__ == "__main__":
    main()
