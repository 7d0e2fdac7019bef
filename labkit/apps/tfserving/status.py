"""Error statuses as tensorflow_model_server 2.20.0 raises and maps them (REST and gRPC).

A ``ServingError`` carries one absl status code name (``INVALID_ARGUMENT``, ``NOT_FOUND``, ...)
and the message upstream writes. ``http_status`` is ``ToHTTPStatusCode`` of
``tensorflow_serving/model_servers/http_server.cc`` (2.20.0); the gRPC code has the same name
(``grpc.StatusCode[code]``), as upstream's ``ToGRPCStatus`` keeps the code.
"""

from __future__ import annotations

__all__ = ["HTTP_STATUS", "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "ServingError", "Unimplemented", "http_status"]

# http_server.cc ToHTTPStatusCode (2.20.0), absl code -> HTTP status.
HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A non-OK status: ``code`` (absl code name) and ``message`` (upstream's text)."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_string(self) -> str:
        """``absl::Status::ToString()``: ``CODE: message`` (used when upstream nests a status in a message)."""
        return f"{self.code}: {self.message}"


class InvalidArgument(ServingError):
    """The request does not fit (HTTP 400, gRPC INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class NotFound(ServingError):
    """No servable matches the request (HTTP 404, gRPC NOT_FOUND)."""

    code = "NOT_FOUND"


class FailedPrecondition(ServingError):
    """HTTP 400, gRPC FAILED_PRECONDITION (e.g. an unknown signature key in gRPC Predict)."""

    code = "FAILED_PRECONDITION"


class Unimplemented(ServingError):
    """HTTP 501, gRPC UNIMPLEMENTED."""

    code = "UNIMPLEMENTED"


class Internal(ServingError):
    """HTTP 500, gRPC INTERNAL."""

    code = "INTERNAL"


def http_status(exc: ServingError) -> int:
    """The HTTP status tensorflow_model_server answers for this error."""
    return HTTP_STATUS.get(exc.code, 500)
