"""Signature metadata as TF Serving's protos (SignatureDefMap), for REST and gRPC metadata calls."""

from __future__ import annotations

from typing import Any

from labkit.apps.tfserving.registry import Servable

__all__ = ["signature_def_map"]


def _tensor_info(name: str, spec: Any) -> Any:
    from tensorflow.core.protobuf import meta_graph_pb2

    info = meta_graph_pb2.TensorInfo(name=f"serving_default_{name}:0", dtype=spec.dtype.as_datatype_enum)
    if spec.shape.rank is None:
        info.tensor_shape.unknown_rank = True
    else:
        for dim in spec.shape.as_list():
            info.tensor_shape.dim.add(size=-1 if dim is None else dim)
    return info


def signature_def_map(servable: Servable) -> Any:
    """The servable's signatures as a ``SignatureDefMap`` proto."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    out = get_model_metadata_pb2.SignatureDefMap()
    for sig_name in servable.signatures:
        sig = out.signature_def[sig_name]
        sig.method_name = "tensorflow/serving/predict"
        for name, spec in servable.input_specs(sig_name).items():
            sig.inputs[name].CopyFrom(_tensor_info(name, spec))
        for name, spec in servable.output_specs(sig_name).items():
            sig.outputs[name].CopyFrom(_tensor_info(name, spec))
    return out
