"""TF Serving's gRPC API on the official protos: Predict, GetModelMetadata, GetModelStatus."""

from __future__ import annotations

from concurrent import futures
from typing import Any

from labkit.apps.tfserving.registry import InvalidArgument, ModelRegistry, NotFound

__all__ = ["serve_grpc"]

MAX_MESSAGE_BYTES = 64 * 2**20


def _resolve(registries: dict[str, ModelRegistry], spec: Any) -> Any:
    registry = registries.get(spec.name)
    version = spec.version.value if spec.HasField("version") else None
    label = spec.version_label or None
    if registry is None:
        raise NotFound(f"Servable not found for request: Latest({spec.name})")
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
            except NotFound as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            except InvalidArgument as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        return wrapper

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        @guarded
        def Predict(self, request: Any, context: Any) -> Any:
            servable = _resolve(registries, request.model_spec)
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = servable.predict(request.model_spec.signature_name or None, inputs)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
            wanted = set(request.output_filter) or set(out)
            for k, v in out.items():
                if k in wanted:
                    response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response

        @guarded
        def GetModelMetadata(self, request: Any, context: Any) -> Any:
            servable = _resolve(registries, request.model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise InvalidArgument("Metadata field signature_def is the only one supported")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(signature_def_map(servable))
            return response

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        @guarded
        def GetModelStatus(self, request: Any, context: Any) -> Any:
            spec = request.model_spec
            registry = registries.get(spec.name)
            if registry is None:
                raise NotFound(f"Could not find any versions of model {spec.name}")
            version = _resolve(registries, spec).version if (spec.HasField("version") or spec.version_label) else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for st in registry.status(version):
                response.model_version_status.add(version=int(st["version"]), state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
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
