"""Command line that mirrors tensorflow_model_server 2.20.0's flags (the ones this lab needs).

    python -m labkit tfserving --port=8500 --rest_api_port=8501 \\
        --model_name=digits --model_base_path=/models/digits [--enable_batching] \\
        [--batching_parameters_file=F] [--model_config_file=F] [--file_system_poll_wait_seconds=1]

With no model path it serves the lab's digits SavedModels (exported on first use).
Extensions (not in the real binary): --host (default 127.0.0.1), --max_batch_size,
--batch_timeout_micros.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main", "parse_args", "registries_from_args"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="labkit tfserving", description="labkit's stand-in for tensorflow_model_server 2.20.0 (its REST and gRPC API, statuses and error texts).")
    p.add_argument("--port", type=int, default=8500, help="gRPC port (0: no gRPC)")
    p.add_argument("--rest_api_port", type=int, default=0, help="REST port (0: no REST)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (labkit extension; the lab binds loopback only)")
    p.add_argument("--model_name", default="digits")
    p.add_argument("--model_base_path", default=None)
    p.add_argument("--model_config_file", default=None, help="ModelServerConfig in protobuf text format")
    p.add_argument("--enable_batching", action="store_true")
    p.add_argument("--batching_parameters_file", default=None)
    p.add_argument("--max_batch_size", type=int, default=32)
    p.add_argument("--batch_timeout_micros", type=int, default=2000)
    p.add_argument("--num_batch_threads", type=int, default=1, help="batches that may run at once (also settable in the batching parameters file)")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    return p.parse_args(argv)


def _batching(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from labkit.apps.tfserving.registry import BatchingParameters

    if not args.enable_batching:
        return None
    values = {"max_batch_size": args.max_batch_size, "batch_timeout_micros": args.batch_timeout_micros, "num_batch_threads": args.num_batch_threads}
    if args.batching_parameters_file:
        text = Path(args.batching_parameters_file).read_text()
        for key, value in re.findall(r"(\w+)\s*\{\s*value\s*:\s*(\d+)\s*\}", text):
            if key in values:
                values[key] = int(value)
    return BatchingParameters(**values)


def registries_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Build one ModelRegistry per configured model (flags, or a model config file)."""
    from labkit.apps.tfserving.registry import ModelRegistry, VersionPolicy

    batching = _batching(args)
    if args.model_config_file:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        cfg = text_format.Parse(Path(args.model_config_file).read_text(), model_server_config_pb2.ModelServerConfig())
        out = {}
        for m in cfg.model_config_list.config:
            which = m.model_version_policy.WhichOneof("policy_choice")
            if which == "all":
                policy = VersionPolicy("all")
            elif which == "specific":
                policy = VersionPolicy("specific", versions=tuple(m.model_version_policy.specific.versions))
            else:
                policy = VersionPolicy("latest", n=m.model_version_policy.latest.num_versions or 1)
            out[m.name] = ModelRegistry(m.name, m.base_path, policy, dict(m.version_labels), batching)
        return out
    base = args.model_base_path
    if base is None:
        from labkit.models import savedmodels

        base = str(savedmodels.export_versions(model_name=args.model_name))
    return {args.model_name: ModelRegistry(args.model_name, base, batching=batching)}


def main(argv: list[str] | None = None) -> None:
    """Load the models, start gRPC and REST, serve until SIGTERM/SIGINT."""
    from labkit.models import savedmodels

    args = parse_args(sys.argv[1:] if argv is None else argv)
    savedmodels.silence_tensorflow()  # imports TensorFlow: after --help has had its answer
    registries = registries_from_args(args)
    for reg in registries.values():
        reg.refresh()
        if not reg.loaded():
            print(f"tfserving: no SavedModel version under {reg.base_path} (expected {reg.base_path}/<version>/saved_model.pb); waiting for one", flush=True)
        threading.Thread(target=reg.poll_forever, args=(args.file_system_poll_wait_seconds,), daemon=True).start()
    grpc_server = None
    if args.port:
        from labkit.apps.tfserving.grpc_api import serve_grpc

        grpc_server = serve_grpc(registries, args.host, args.port)
        print(f"Running gRPC ModelServer at {args.host}:{args.port} ...", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.rest_api_port:
        import uvicorn

        from labkit.apps.tfserving.rest import make_app

        print(f"Exporting HTTP/REST API at:{args.host}:{args.rest_api_port} ...", flush=True)
        server = uvicorn.Server(uvicorn.Config(make_app(registries), host=args.host, port=args.rest_api_port, log_level="warning", access_log=False))
        server.run()  # handles SIGTERM/SIGINT itself
    else:
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    for reg in registries.values():
        reg.stop()
    if grpc_server is not None:
        grpc_server.stop(grace=1)
