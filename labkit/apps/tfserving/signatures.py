"""The SavedModel's own SignatureDefs, as tensorflow_model_server 2.20.0 reads and checks them.

``signature_def_map`` is the ``meta_graph_def.signature_def()`` of the ``serve`` MetaGraph in
``saved_model.pb`` (what ``get_model_metadata_impl.cc`` answers, ``__saved_model_init_op``
included). ``check_classify`` / ``check_regress`` port ``GetClassificationSignatureDef`` /
``GetRegressionSignatureDef`` of ``servables/tensorflow/classifier.cc`` / ``regressor.cc`` with
the server's default ``--enable_signature_method_name_check=false``, so ``:classify`` and
``:regress`` on a model without such signatures fail with upstream's message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labkit.apps.tfserving.status import InvalidArgument

__all__ = ["check_classify", "check_regress", "input_dtypes", "load_meta_graph", "signature_def_map"]

DEFAULT_SIGNATURE = "serving_default"


def load_meta_graph(path: Path) -> Any:
    """The MetaGraphDef tagged ``serve`` of the SavedModel at ``path``."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    for mg in sm.meta_graphs:
        if "serve" in mg.meta_info_def.tags:
            return mg
    return sm.meta_graphs[0]


def signature_def_map(servable: Any) -> Any:
    """The servable's signatures as a ``SignatureDefMap`` proto (all of them, as upstream)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    out = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in servable.meta_graph.signature_def.items():
        out.signature_def[name].CopyFrom(sig)
    return out


def input_dtypes(signature: Any) -> dict[str, str]:
    """{input alias: "DT_FLOAT", ...} of one SignatureDef (the REST handler's ``GetInfoMap``)."""
    from tensorflow.core.framework import types_pb2

    return {alias: types_pb2.DataType.Name(info.dtype) for alias, info in signature.inputs.items()}


def _find(servable: Any, signature_name: str) -> Any:
    name = signature_name or DEFAULT_SIGNATURE
    sigs = servable.meta_graph.signature_def
    if name not in sigs:
        raise InvalidArgument(f"No signature was found with the name: {name}")
    return sigs[name]


def _debug_string(sig: Any) -> str:
    return str(sig)  # Python's text format is C++ DebugString()


def check_classify(servable: Any, signature_name: str) -> Any:
    """GetClassificationSignatureDef() + PreProcessClassification(): the signature, or upstream's error."""
    sig = _find(servable, signature_name)
    if len(sig.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(sig.outputs) not in (1, 2):
        raise InvalidArgument(f"Expected one or two output Tensors, found {len(sig.outputs)}")
    if "inputs" not in sig.inputs:
        raise InvalidArgument(f"No classification inputs found in SignatureDef: {_debug_string(sig)}")
    if "classes" not in sig.outputs and "scores" not in sig.outputs:
        raise InvalidArgument(f'Expected classification signature outputs to contain at least one of "classes" or "scores". Signature was: {_debug_string(sig)}')
    return sig


def check_regress(servable: Any, signature_name: str) -> Any:
    """GetRegressionSignatureDef() + PreProcessRegression(): the signature, or upstream's error."""
    sig = _find(servable, signature_name)
    if len(sig.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(sig.outputs) != 1:
        raise InvalidArgument("Expected one output Tensor.")
    if "inputs" not in sig.inputs:
        raise InvalidArgument(f"No regression inputs found in SignatureDef: {_debug_string(sig)}")
    if "outputs" not in sig.outputs:
        raise InvalidArgument(f"No regression outputs found in SignatureDef: {_debug_string(sig)}")
    return sig
