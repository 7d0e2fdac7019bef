"""TF Serving's gRPC API on the official protos, as tensorflow_model_server 2.20.0 answers it.

PredictionService (Predict, GetModelMetadata, Classify, Regress) and ModelService
(GetModelStatus), with upstream's status codes and messages (``predict_util.cc``,
``get_model_metadata_impl.cc``, ``get_model_status_impl.cc``, ``server_core.cc`` at 2.20.0):
an unknown signature in Predict is FAILED_PRECONDITION ("Serving signature key \"S\" not
found."), an unknown version label INVALID_ARGUMENT, an unknown model or version NOT_FOUND.
Classify/Regress check the signature as upstream does; the stand-in does not run them
(UNIMPLEMENTED when the signature would pass).
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

from labkit.apps.tfserving.registry import ModelRegistry, Servable
from labkit.apps.tfserving.status import InvalidArgument, NotFound, ServingError, Unimplemented

__all__ = ["serve_grpc"]

MAX_MESSAGE_BYTES = 64 * 2**20


def _resolve(registries: dict[str, ModelRegistry], request: Any) -> Servable:
    """Missing ModelSpec, then ServerCore::ServableRequestFromModelSpec and the manager's look-up."""
    if not request.HasField("model_spec"):
        raise InvalidArgument("Missing ModelSpec")
    spec = request.model_spec
    if not spec.name:
        raise InvalidArgument("ModelSpec has no name specified.")
    which = spec.WhichOneof("version_choice")
    version = spec.version.value if which == "version" else None
    label = spec.version_label if which == "version_label" else None
    registry = registries.get(spec.name)
    if registry is None:
        if label is not None:
            raise InvalidArgument(f"Unrecognized servable version label: {label}")
        raise NotFound(f"Servable not found for request: {'Latest(' + spec.name + ')' if version is None else f'Specific({spec.name}, {version})'}")
    return registry.resolve(version, label)


def serve_grpc(registries: dict[str, ModelRegistry], host: str, port: int, workers: int = 64) -> Any:
    """Start a gRPC server with PredictionService and ModelService; return it (call .stop())."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    from labkit.apps.tfserving.signatures import signature_def_map

    def guarded(method: Any) -> Any:
        def wrapper(self: Any, request: Any, context: Any) -> Any:
            try:
                return method(self, request, context)
            except ServingError as exc:
                context.abort(grpc.StatusCode[exc.code], exc.message)

        return wrapper

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        @guarded
        def Predict(self, request: Any, context: Any) -> Any:
            servable = _resolve(registries, request)
            key, _ = servable.signature(request.model_spec.signature_name or None)  # RunPredict: FAILED_PRECONDITION
            inputs = {}
            for alias, proto in request.inputs.items():
                try:
                    inputs[alias] = tf.make_ndarray(proto)
                except Exception as exc:
                    raise InvalidArgument(f"tensor parsing error: {alias}") from exc
            outputs = list(servable.output_specs(key))
            seen: set[str] = set()
            for alias in request.output_filter:
                if alias not in outputs:
                    raise InvalidArgument(f"output tensor alias not found in signature: {alias} Outputs expected to be in the set {{{','.join(sorted(outputs))}}}.")
                if alias in seen:
                    raise InvalidArgument(f"duplicate output tensor alias: {alias}")
                seen.add(alias)
            out = servable.predict(key, inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = key
            wanted = list(request.output_filter) or list(out)
            for k in wanted:
                response.outputs[k].CopyFrom(tf.make_tensor_proto(out[k]))
            return response

        @guarded
        def GetModelMetadata(self, request: Any, context: Any) -> Any:
            if not request.HasField("model_spec"):
                raise InvalidArgument("Missing ModelSpec")
            if not request.metadata_field:
                raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise InvalidArgument(f"Metadata field {field} is not supported")
            servable = _resolve(registries, request)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(signature_def_map(servable))
            return response

        def _check_only(self, request: Any, verb: str) -> Any:
            from labkit.apps.tfserving.signatures import check_classify, check_regress

            servable = _resolve(registries, request)
            (check_classify if verb == "classify" else check_regress)(servable, request.model_spec.signature_name)
            raise Unimplemented(f"labkit's TF-Serving stand-in does not run {verb} signatures (tensorflow_model_server 2.20.0 would run this one)")

        @guarded
        def Classify(self, request: Any, context: Any) -> Any:
            return self._check_only(request, "classify")

        @guarded
        def Regress(self, request: Any, context: Any) -> Any:
            return self._check_only(request, "regress")

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        @guarded
        def GetModelStatus(self, request: Any, context: Any) -> Any:
            """GetModelStatusImpl: a version if one is given, else all; the label is not consulted."""
            if not request.HasField("model_spec"):
                raise InvalidArgument("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
            registry = registries.get(spec.name)
            if registry is None:
                raise NotFound(f"Could not find any versions of model {spec.name}" if version is None else f"Could not find version {version} of model {spec.name}")
            response = get_model_status_pb2.GetModelStatusResponse()
            for st in registry.status(version):
                response.model_version_status.add(version=int(st["version"]), state=get_model_status_pb2.ModelVersionStatus.State.Value(st["state"]))
            return response

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server
