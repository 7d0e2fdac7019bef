"""Upstream's own cases, ported: tensorflow_model_server 2.20.0's JSON rules and REST routing.

Cases from ``tensorflow_serving/util/json_tensor_test.cc`` and
``tensorflow_serving/model_servers/http_rest_api_handler_test.cc`` at tag 2.20.0, each test
naming the TEST/TEST_F it ports. They run in this process, without TensorFlow and without a
server: ``json_tensor`` is pure Python, and the REST routing is exercised on the ASGI app with no
model loaded (every case here is decided before a model would be consulted). The cases that need
a loaded model are in tests/test_tfserving.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from labkit.apps.tfserving import json_tensor as jt
from labkit.apps.tfserving.rest import HANDLER_PATH, make_app
from labkit.apps.tfserving.status import HTTP_STATUS, InvalidArgument, NotFound, ServingError


def getmap(infomap: dict[str, str]) -> Any:
    return lambda _sig: infomap


def fill(body: str, infomap: dict[str, str]) -> tuple[str, dict[str, np.ndarray], str]:
    return jt.fill_predict_request(body.encode(), getmap(infomap))


def error(body: str, infomap: dict[str, str]) -> ServingError:
    with pytest.raises(ServingError) as info:
        fill(body, infomap)
    return info.value


# ---------------------------------------------------------------- json_tensor_test.cc


def test_single_unnamed_tensor() -> None:
    """TEST(JsontensorTest, SingleUnnamedTensor)."""
    _, t, fmt = fill('{"instances": [[1,2],[3,4],[5,6]]}', {"default": "DT_INT32"})
    assert fmt == jt.ROW and list(t) == ["default"]
    assert t["default"].dtype == np.int32 and t["default"].tolist() == [[1, 2], [3, 4], [5, 6]]


def test_deeply_nested_well_formed() -> None:
    """TEST(JsontensorTest, DeeplyNestedWellFormed): 500000 levels elsewhere in the body are parsed."""
    body = '{"instances":[1], "nested":' + "[" * 500000 + "]" * 500000 + "}"
    _, t, _ = fill(body, {"default": "DT_INT32"})
    assert t["default"].tolist() == [1]


def test_deeply_nested_malformed() -> None:
    """TEST(JsontensorTest, DeeplyNestedMalformed)."""
    body = '{"signature_name":' + "[" * 500000 + "]" * 500000 + "}"
    exc = error(body, {"default": "DT_INT32"})
    assert isinstance(exc, InvalidArgument) and "key must be a string value" in exc.message


def test_mixed_input_for_float_tensor() -> None:
    """TEST(JsontensorTest, MixedInputForFloatTensor)."""
    _, t, _ = fill('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', {"default": "DT_FLOAT"})
    assert t["default"].dtype == np.float32
    assert t["default"].tolist() == np.array([1, 2.0, 3, 4, 5.003, 0.007, 0.0], np.float32).tolist()


def test_mixed_input_for_double_tensor() -> None:
    """TEST(JsontensorTest, MixedInputForDoubleTensor)."""
    _, t, _ = fill('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', {"default": "DT_DOUBLE"})
    assert t["default"].dtype == np.float64 and t["default"].tolist() == [1.0, 2, 3, 4, 0.662, 0, 0.0]


def test_float_tensor_with_precision_loss() -> None:
    """TEST(JsontensorTest, FloatTensorWithPrecisionLoss): 1435774380 and 1435774380.0 behave alike."""
    a = fill('{"instances": [1435774380]}', {"default": "DT_FLOAT"})[1]["default"]
    b = fill('{"instances": [1435774380.0]}', {"default": "DT_FLOAT"})[1]["default"]
    assert a.tolist() == b.tolist() == [float(np.float32(1435774380))]


def test_float_tensor_that_exceeds_max_returns_inf() -> None:
    """TEST(JsontensorTest, FloatTensorThatExceedsMaxReturnsInf)."""
    for text, want in (("1.79769e+308", np.inf), ("-1.79769e+308", -np.inf)):
        assert fill(f'{{ "instances": [{text}] }}', {"default": "DT_FLOAT"})[1]["default"].tolist() == [want]


def test_float_tensor_that_exceeds_min_returns_zero() -> None:
    """TEST(JsontensorTest, FloatTensorThatExceedsMinReturnsZero)."""
    for text, sign in (("2.22507e-308", 1.0), ("-2.22507e-308", -1.0)):
        got = fill(f'{{ "instances": [{text}] }}', {"default": "DT_FLOAT"})[1]["default"]
        assert got.tolist() == [0.0] and np.copysign(1.0, got[0]) == sign


def test_single_unnamed_tensor_with_signature() -> None:
    """TEST(JsontensorTest, SingleUnnamedTensorWithSignature)."""
    sig, t, fmt = fill('{"signature_name": "predict_images", "instances": [[1,2]]}', {"default": "DT_INT32"})
    assert sig == "predict_images" and fmt == jt.ROW and t["default"].tolist() == [[1, 2]]


def test_tensor_from_non_null_terminated_buffer() -> None:
    """TEST(JsontensorTest, TensorFromNonNullTerminatedBuffer): whatever follows the document is ignored."""
    _, t, _ = fill('{"instances": [[1,2],[3,4],[5,6]]}garbage', {"default": "DT_INT32"})
    assert t["default"].tolist() == [[1, 2], [3, 4], [5, 6]]


def test_single_unnamed_tensor_base64_scalars() -> None:
    """TEST(JsontensorTest, SingleUnnamedTensorBase64Scalars)."""
    _, t, _ = fill('{"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}', {"default": "DT_STRING"})
    assert t["default"].shape == (2,) and t["default"].tolist() == [b"hello", b"world"]


def test_single_unnamed_tensor_base64_lists() -> None:
    """TEST(JsontensorTest, SingleUnnamedTensorBase64Lists)."""
    _, t, _ = fill('{"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}', {"default": "DT_STRING"})
    assert t["default"].shape == (2, 1) and t["default"].reshape(-1).tolist() == [b"hello", b"world"]


def test_single_named_tensor_base64() -> None:
    """TEST(JsontensorTest, SingleNamedTensorBase64)."""
    _, t, _ = fill('{"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]}', {"default": "DT_STRING"})
    assert t["default"].shape == (1, 2, 1) and t["default"].reshape(-1).tolist() == [b"hello", b"world"]


def test_multiple_named_tensor() -> None:
    """TEST(JsontensorTest, MultipleNamedTensor)."""
    infomap = {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING", "float_tensor": "DT_FLOAT", "dbl_tensor": "DT_DOUBLE"}
    body = """{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}"""
    _, t, fmt = fill(body, infomap)
    assert fmt == jt.ROW and len(t) == 4
    assert t["int_tensor"].shape == (2, 3, 2) and t["int_tensor"].reshape(-1).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert t["str_tensor"].shape == (2, 2) and t["str_tensor"].reshape(-1).tolist() == [b"foo", b"bar", b"baz", b"bat"]
    f = t["float_tensor"]
    assert f.dtype == np.float32 and f.shape == (2, 2) and f[0, 0] == 1.0 and np.isnan(f[0, 1]) and f[1, 0] == 2.0 and np.isposinf(f[1, 1])
    d = t["dbl_tensor"]
    assert d.dtype == np.float64 and d.shape == (2, 1) and np.isnan(d[0, 0]) and d[1, 0] == 2.0


def test_single_unnamed_tensor_columnar_format() -> None:
    """TEST(JsontensorTest, SingleUnnamedTensorColumnarFormat): named and unnamed."""
    for body in ('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}', '{"inputs": [[[1,2],[3,4],[5,6]]]}'):
        _, t, fmt = fill(body, {"int_tensor": "DT_INT32"})
        assert fmt == jt.COLUMNAR and t["int_tensor"].shape == (1, 3, 2) and t["int_tensor"].dtype == np.int32


def test_multiple_named_tensor_columnar_format() -> None:
    """TEST(JsontensorTest, MultipleNamedTensorColumnarFormat)."""
    infomap = {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING", "bin_tensor": "DT_STRING"}
    body = '{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"], "bin_tensor": { "b64" : "aGVsbG8=" }}}'
    _, t, fmt = fill(body, infomap)
    assert fmt == jt.COLUMNAR and len(t) == 3
    assert t["int_tensor"].shape == (1, 3, 2)
    assert t["str_tensor"].tolist() == [b"foo", b"bar"]
    assert t["bin_tensor"].shape == () and t["bin_tensor"].item() == b"hello"


@pytest.mark.parametrize(
    "body,message",
    [
        ("", "document is empty"),
        ('{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}', "must be a string value"),
        ('{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}', "Not formatted correctly"),
        ('{"instances": [[1,2],[3,4],[5,6,7]]}', "Expecting tensor size"),
        ('{"instances": [[1,2],[3,4],[[5,6]]]}', "Expecting shape"),
        ('{"instances": [1, [1]]}', "Expecting shape"),
        ('{"instances": [[1,2],["a", "b"]]}', "not of expected type"),
    ],
)
def test_single_unnamed_tensor_errors(body: str, message: str) -> None:
    """TEST(JsontensorTest, SingleUnnamedTensorErrors)."""
    exc = error(body, {"default": "DT_INT32"})
    assert isinstance(exc, InvalidArgument) and message in exc.message


@pytest.mark.parametrize(
    "infomap,instances,message",
    [
        (
            {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING"},
            '[{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]',
            "Expecting shape",
        ),
        (
            {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING"},
            '[{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]}, {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]',
            "Expecting tensor size",
        ),
        (
            {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING"},
            '[{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, [1, 20, 30], {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]',
            "Expecting object but got list",
        ),
        ({"str_tensor": "DT_STRING"}, '[["baz", "bar"], {"str_tensor": ["baz", "bat"]}]', "Expecting value/list but got object"),
    ],
)
def test_multiple_named_tensor_errors(infomap: dict[str, str], instances: str, message: str) -> None:
    """TEST(JsontensorTest, MultipleNamedTensorErrors)."""
    exc = error(f'{{"instances": {instances}}}', infomap)
    assert isinstance(exc, InvalidArgument) and message in exc.message


def test_columnar_wrong_element_type_is_refused_with_upstreams_text() -> None:
    """FillTensorMapFromInputsMap -> FillTensorProto -> AddValueToTensor: the type check applies to "inputs" too."""
    cases = {
        '{"inputs": [["1.5", 2.0]]}': 'JSON Value: "1.5" Type: String is not of expected type: float',
        '{"inputs": [[true, 2.0]]}': "JSON Value: true Type: True is not of expected type: float",
        '{"inputs": [[null, 2.0]]}': "JSON Value: null Type: Null is not of expected type: float",
        '{"inputs": {"x": [[{"a": 1}]]}}': 'JSON Value: {\n    "a": 1\n} Type: Object is not of expected type: float',
        '{"inputs": [[1.0, 2.0], [3.0]]}': "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
        '{"inputs": [[1.0, [2.0]]]}': "Encountered list at unexpected level: 2 expected < 2",
        '{"inputs": {"y": [1.0]}}': "Missing named input: x in 'inputs' object.",
    }
    for body, message in cases.items():
        assert error(body, {"x": "DT_FLOAT"}).message == message
    assert error('{"inputs": [1.5]}', {"x": "DT_INT32"}).message == "JSON Value: 1.5 Type: Number is not of expected type: int32"
    assert error('{"inputs": [2147483648]}', {"x": "DT_INT32"}).message == "JSON Value: 2147483648 Type: Number is not of expected type: int32"
    assert fill('{"inputs": [2147483648]}', {"x": "DT_INT64"})[1]["x"].tolist() == [2147483648]


def _out(tensors: dict[str, np.ndarray], fmt: str) -> Any:
    return json.loads(jt.make_json_from_tensors(tensors, fmt))


def test_from_json_single_tensor() -> None:
    """TEST(JsontensorTest, FromJsonSingleTensor)."""
    t = {"int_tensor": np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2], np.int32).reshape(2, 3, 2)}
    want = [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]
    assert _out(t, jt.ROW) == {"predictions": want}
    assert _out(t, jt.COLUMNAR) == {"outputs": want}


def test_from_json_single_scalar_tensor() -> None:
    """TEST(JsontensorTest, FromJsonSingleScalarTensor)."""
    t = {"int_tensor": np.array([1, 2, 3, 4, 5], np.int32)}
    assert _out(t, jt.ROW) == {"predictions": [1, 2, 3, 4, 5]} and _out(t, jt.COLUMNAR) == {"outputs": [1, 2, 3, 4, 5]}


def test_from_json_single_bytes_tensor() -> None:
    """TEST(JsontensorTest, FromJsonSingleBytesTensor): a DT_STRING output named *_bytes is base64."""
    arr = np.array([b"hello", b"world", b"tf", b"serving"], dtype=object).reshape(2, 2)
    want = [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]
    assert _out({"str_tensor_bytes": arr}, jt.ROW) == {"predictions": want}


def test_from_json_single_float_tensor_six_digit_precision() -> None:
    """TEST(JsontensorTest, FromJsonSingleFloatTensorSixDigitPrecision): numbers compared as text."""
    t = {"float_tensor": np.array([9000000, 999999, 0.5, 0.0003, 0.00003, 555557.5], np.float32).reshape(2, 3)}
    text = jt.make_json_from_tensors(t, jt.ROW)
    assert json.loads(text, parse_float=str, parse_int=str) == {"predictions": [["9e+06", "999999.0", "0.5"], ["0.0003", "3e-05", "555557.5"]]}


def test_from_json_single_float_tensor_non_finite() -> None:
    """TEST(JsontensorTest, FromJsonSingleFloatTensorNonFinite)."""
    t = {"float_tensor": np.array([np.nan, np.inf, 3, -np.inf], np.float32).reshape(2, 2)}
    text = jt.make_json_from_tensors(t, jt.ROW)
    assert json.loads(text, parse_float=str, parse_int=str, parse_constant=str) == {"predictions": [["NaN", "Infinity"], ["3.0", "-Infinity"]]}


def test_from_json_single_tensor_errors() -> None:
    """TEST(JsontensorTest, FromJsonSingleTensorErrors)."""
    with pytest.raises(InvalidArgument, match="empty tensor map"):
        jt.make_json_from_tensors({}, jt.ROW)
    with pytest.raises(InvalidArgument, match="tensor type: complex64"):
        jt.make_json_from_tensors({"tensor": np.array([1.0, 2.0], np.complex64)}, jt.ROW)
    with pytest.raises(InvalidArgument, match="no shape information"):
        jt.make_json_from_tensors({"tensor": np.array(1, np.int32)}, jt.ROW)


def test_from_json_multiple_named_tensors() -> None:
    """TEST(JsontensorTest, FromJsonMultipleNamedTensors): row answers are objects, columnar one object of lists."""
    t = {"int_tensor": np.array([[1, 2], [3, 4]], np.int32), "str_tensor": np.array([b"foo", b"bar"], dtype=object), "float_tensor": np.array([1.5, 2.5], np.float32)}
    assert _out(t, jt.ROW) == {"predictions": [{"int_tensor": [1, 2], "str_tensor": "foo", "float_tensor": 1.5}, {"int_tensor": [3, 4], "str_tensor": "bar", "float_tensor": 2.5}]}
    assert _out(t, jt.COLUMNAR) == {"outputs": {"int_tensor": [[1, 2], [3, 4]], "str_tensor": ["foo", "bar"], "float_tensor": [1.5, 2.5]}}


def test_from_json_multiple_named_tensors_errors() -> None:
    """TEST(JsontensorTest, FromJsonMultipleNamedTensorsErrors): inconsistent batch sizes in row format."""
    with pytest.raises(InvalidArgument, match="inconsistent batch size"):
        jt.make_json_from_tensors({"a": np.zeros((2, 1), np.int32), "b": np.zeros((3, 1), np.int32)}, jt.ROW)


def test_from_json_single_zero_batch_tensor() -> None:
    """TEST(JsontensorTest, FromJsonSingleZeroBatchTensor)."""
    assert _out({"t": np.zeros((0, 3), np.int32)}, jt.ROW) == {"predictions": []}


def test_make_json_from_tensors_status() -> None:
    """TEST(MakeJsonFromTensors, StatusOK) / StatusError: an error body is {"error": message}."""
    assert json.loads(jt.make_json_from_status(InvalidArgument('Some error "with quotes"'))) == {"error": 'Some error "with quotes"'}


def test_classify_regress_request_errors() -> None:
    """FillClassifyRegressRequestFromJson (json_tensor_test.cc ClassifyRegress* cases): upstream's messages."""
    ok = jt.fill_classify_regress_request(b'{"signature_name": "s", "context": {"c": 1}, "examples": [{"x": [1.0, 2.0], "s": "a", "b": {"b64": "aGk="}}]}')
    assert ok[0] == "s" and ok[1] == {"c": {"kind": "int64", "values": [1]}} and ok[2][0]["b"] == {"kind": "bytes", "values": [b"hi"]}
    cases = {
        b'{"instances": []}': "When method is classify, key 'examples' is expected and was not found",
        b'{"examples": {}}': "Expecting 'examples' value to be an list/array",
        b'{"examples": []}': "'examples' value is an empty array",
        b'{"examples": [1]}': "Example must be JSON object but got JSON Number",
        b'{"examples": [{"x": null}]}': "Feature: x has element with unexpected JSON type: Null",
        b'{"examples": [{"x": [1, 2.5]}]}': "Unexpected element type in feature: x expecting type: int64",
        b'{"examples": [{"x": [[1]]}]}': "Feature: x has element with unexpected JSON type: Array",
        b'{"examples": [{"x": 18446744073709551615}]}': "Feature: x has uint64_t element. Only int64_t is supported.",
    }
    for body, message in cases.items():
        with pytest.raises(InvalidArgument) as info:
            jt.fill_classify_regress_request(body)
        assert message in info.value.message, body


def test_parse_errors_read_like_rapidjson() -> None:
    """ParseJson(): RapidJSON's messages (GetParseError_En) for the common mistakes."""
    cases = {
        b"instances = [1, 2]": "JSON Parse error: Invalid value.",
        b'{"instances": [1, 2}': "JSON Parse error: Missing a comma or ']' after an array element.",
        b'{"instances": [1] "x": 1}': "JSON Parse error: Missing a comma or '}' after an object member.",
        b'{"instances" [1]}': "JSON Parse error: Missing a colon after a name of object member.",
        b'{"instances": "abc': "JSON Parse error: Missing a closing quotation mark in string.",
        b'{"instances": [1e999]}': "JSON Parse error: Number too big to be stored in double.",
        b"   ": "JSON Parse error: The document is empty.",
        b"\xff": "JSON Parse error: Invalid encoding in string.",
    }
    for body, message in cases.items():
        with pytest.raises(InvalidArgument) as info:
            jt.parse_json(body)
        assert info.value.message.startswith(message), (body, info.value.message)
    with pytest.raises(InvalidArgument, match=r"^JSON Value: \[1, 2\] Is not object$"):
        jt.parse_json(b"[1, 2]")


# ---------------------------------------------------------------- http_rest_api_handler_test.cc (routing)


def call(method: str, path: str, body: bytes = b"") -> tuple[int, str]:
    """One request through the ASGI app with no model loaded."""
    app = make_app({})
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": method, "path": path, "raw_path": path.encode(), "headers": []}, receive, send)

    asyncio.run(run())
    return sent[0]["status"], sent[1]["body"].decode()


def test_k_path_regex() -> None:
    """TEST_F(HttpRestApiHandlerTest, kPathRegex)."""
    assert HANDLER_PATH.fullmatch("/v1/models")
    assert not HANDLER_PATH.fullmatch("/statuspage") and not HANDLER_PATH.fullmatch("/index")
    assert call("GET", "/statuspage")[0] == 404  # not dispatched: libevent's 404


@pytest.mark.parametrize(
    "method,path,message",
    [
        ("GET", "/v1/foo", "Malformed request"),
        ("POST", "/v1/foo", "Malformed request"),
        ("GET", "/v1/models", "Missing model name"),
        ("GET", "/v1/models/debug/model_name", "Malformed request"),
        ("POST", "/v1/models", "Malformed request"),
        ("GET", "/v1/models/foo:predict", "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
        ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
        ("POST", "/v1/models/foo/metadata", "Malformed request"),
        ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
        # the cases: a POST without a verb, an unknown verb, an unknown sub-resource, other methods
        ("POST", "/v1/models/foo", "Malformed request: POST /v1/models/foo"),
        ("POST", "/v1/models/foo:explain", "Malformed request: POST /v1/models/foo:explain"),
        ("POST", "/v1/models/foo:PREDICT", "Malformed request"),
        ("GET", "/v1/models/foo/signatures", "Malformed request: GET /v1/models/foo/signatures"),
        ("PUT", "/v1/models/foo", "Malformed request: PUT /v1/models/foo"),
        ("DELETE", "/v1/models/foo:predict", "Malformed request: DELETE /v1/models/foo:predict"),
    ],
)
def test_unsupported_api_calls(method: str, path: str, message: str) -> None:
    """TEST_F(HttpRestApiHandlerTest, UnsupportedApiCalls): all INVALID_ARGUMENT, which is HTTP 400."""
    status, body = call(method, path)
    assert status == HTTP_STATUS["INVALID_ARGUMENT"] == 400
    assert message in json.loads(body)["error"]


@pytest.mark.parametrize(
    "path,status,message",
    [
        ("/v1/models/foo:predict", 404, "Servable not found for request: Latest(foo)"),
        ("/v1/models/foo/versions/50:predict", 404, "Servable not found for request: Specific(foo, 50)"),
        ("/v1/models/saved_model_half_plus_two_2_versions99:predict", 404, "Latest(saved_model_half_plus_two_2_versions99)"),
        ("/v1/models/foo/labels/Version_Nonexistent:predict", 400, "Unrecognized servable version label: Version_Nonexistent"),
    ],
)
def test_predict_model_name_version_errors(path: str, status: int, message: str) -> None:
    """TEST_F(HttpRestApiHandlerTest, PredictModelNameVersionErrors) (+ the label case of PredictRequestErrors)."""
    got, body = call("POST", path, b'{ "instances": [1] }')
    assert got == status and message in json.loads(body)["error"]


@pytest.mark.parametrize(
    "body,message",
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"instances = [1, 2]", "JSON Parse error: Invalid value"),
        (b'{ "signature_name": 100 }', "'signature_name' key must be a string value."),
    ],
)
def test_predict_request_errors_before_the_model(body: bytes, message: str) -> None:
    """TEST_F(HttpRestApiHandlerTest, PredictRequestErrors): the body is checked before the model is looked up."""
    status, text = call("POST", "/v1/models/saved_model_half_plus_two_2_versions:predict", body)
    assert status == 400 and message in json.loads(text)["error"]


def test_classify_and_regress_check_the_body_before_the_model() -> None:
    """ProcessClassifyRequest/ProcessRegressRequest: FillClassificationRequestFromJson runs before the look-up."""
    assert call("POST", "/v1/models/foo:classify", b"")[0] == 400
    status, text = call("POST", "/v1/models/foo:regress", b'{"examples": [{"x": 1.0}]}')
    assert status == 404 and "Servable not found for request: Latest(foo)" in text


def test_status_errors() -> None:
    """get_model_status_impl.cc: NOT_FOUND texts; the label is not consulted."""
    assert call("GET", "/v1/models/foo") == (404, '{\n    "error": "Could not find any versions of model foo"\n}')
    assert json.loads(call("GET", "/v1/models/foo/versions/3")[1]) == {"error": "Could not find version 3 of model foo"}
    assert json.loads(call("GET", "/v1/models/foo/labels/x")[1]) == {"error": "Could not find any versions of model foo"}


def test_status_code_mapping() -> None:
    """http_server.cc ToHTTPStatusCode (2.20.0)."""
    assert HTTP_STATUS["NOT_FOUND"] == 404 and HTTP_STATUS["FAILED_PRECONDITION"] == 400 and HTTP_STATUS["UNIMPLEMENTED"] == 501
    assert HTTP_STATUS["RESOURCE_EXHAUSTED"] == 429 and HTTP_STATUS["UNAVAILABLE"] == 503 and HTTP_STATUS["DEADLINE_EXCEEDED"] == 504
    assert NotFound("x").to_string() == "NOT_FOUND: x"
