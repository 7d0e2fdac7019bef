"""TF Serving's JSON <-> tensor rules, ported from tensorflow_model_server 2.20.0.

A line-by-line port of ``tensorflow_serving/util/json_tensor.cc`` at tag 2.20.0 (pure Python and
numpy, no TensorFlow): the row (``"instances"``) and columnar (``"inputs"``) request formats with
upstream's type checks per signature dtype (a float input takes JSON numbers only, an int32 input
integers in range only, ...), its shape checks and its error messages; the ``predictions`` /
``outputs`` answers with upstream's float printing (shortest of ``%g`` and ``%.9g`` that reads back,
``NaN``/``Infinity`` for non-finite values); the ``examples`` body of ``:classify``/``:regress``;
and ``{"error": ...}`` bodies. Parsing follows RapidJSON's flags there (``NaN``/``Infinity``
accepted, anything after the first complete document ignored, nesting of any depth).

Where it cannot be exact: the offset in a "JSON Parse error" comes from Python's parser, and a
number too large for a double is refused without RapidJSON's offset.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from labkit.apps.tfserving.status import InvalidArgument, ServingError, Unimplemented

__all__ = [
    "COLUMNAR",
    "DATA_TYPE_STRING",
    "ROW",
    "debug_string",
    "fill_classify_regress_request",
    "fill_predict_request",
    "make_json_from_status",
    "make_json_from_tensors",
    "parse_json",
]

ROW = "row"
COLUMNAR = "columnar"
MAX_DEBUG_BYTES = 256  # kMaxJsonDebugStringBytes

# DataTypeString() of tensorflow/core/framework/types.cc, and the numpy dtype a tensor of it gets here.
DATA_TYPE_STRING = {
    "DT_FLOAT": "float", "DT_DOUBLE": "double", "DT_INT32": "int32", "DT_UINT8": "uint8", "DT_INT16": "int16",
    "DT_INT8": "int8", "DT_STRING": "string", "DT_COMPLEX64": "complex64", "DT_INT64": "int64", "DT_BOOL": "bool",
    "DT_QINT8": "qint8", "DT_QUINT8": "quint8", "DT_QINT32": "qint32", "DT_BFLOAT16": "bfloat16", "DT_QINT16": "qint16",
    "DT_QUINT16": "quint16", "DT_UINT16": "uint16", "DT_COMPLEX128": "complex128", "DT_HALF": "half",
    "DT_RESOURCE": "resource", "DT_VARIANT": "variant", "DT_UINT32": "uint32", "DT_UINT64": "uint64",
}  # fmt: skip
_NUMPY = {
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_INT32": np.int32, "DT_INT16": np.int16, "DT_INT8": np.int8,
    "DT_UINT8": np.uint8, "DT_INT64": np.int64, "DT_BOOL": np.bool_, "DT_UINT32": np.uint32, "DT_UINT64": np.uint64,
    "DT_STRING": np.object_,
}  # fmt: skip

_I32, _I64, _U32, _U64 = 2**31, 2**63, 2**32, 2**64


# ---------------------------------------------------------------- JSON values as RapidJSON sees them


def _is_number(v: Any) -> bool:
    return (type(v) is int) or (type(v) is float)


def _json_type(v: Any) -> str:
    """JsonTypeString()."""
    if v is None:
        return "Null"
    if v is True:
        return "True"
    if v is False:
        return "False"
    if isinstance(v, dict):
        return "Object"
    if isinstance(v, list):
        return "Array"
    if isinstance(v, str):
        return "String"
    return "Number"


def _number_text(v: int | float) -> str:
    """RapidJSON Writer's number text (Grisu shortest for doubles: ``1e300``, ``1.5e-7``, ``2.0``)."""
    if type(v) is int:
        return str(v)
    text = repr(float(v))
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant.removesuffix('.0')}e{int(exp)}"
    return text


class _Full(Exception):
    pass


def debug_string(val: Any, limit: int = MAX_DEBUG_BYTES) -> str:
    """JsonValueToDebugString(): RapidJSON's PrettyWriter (arrays on one line), cut after ``limit`` bytes."""
    out: list[str] = []
    size = [0]

    def emit(text: str) -> None:
        if size[0] >= limit:  # JsonWriterWithLimit: every writer call fails once the buffer is full
            raise _Full
        out.append(text)
        size[0] += len(text.encode())

    def value(v: Any, level: int, prefix: str) -> None:
        if isinstance(v, dict):
            emit(prefix + "{")
            for i, (k, item) in enumerate(v.items()):
                emit((",\n" if i else "\n") + "    " * (level + 1) + json.dumps(k, ensure_ascii=False))
                value(item, level + 1, ": ")
            emit(("\n" + "    " * level + "}") if v else "}")
        elif isinstance(v, list):
            emit(prefix + "[")
            for i, item in enumerate(v):
                value(item, level + 1, ", " if i else "")
            emit("]")
        elif isinstance(v, str):
            emit(prefix + json.dumps(v, ensure_ascii=False))
        elif v is None or isinstance(v, bool):
            emit(prefix + {None: "null", True: "true", False: "false"}[v])
        else:
            if type(v) is float and not math.isfinite(v):
                raise _Full  # Writer::Double refuses NaN/Inf: the debug string stops there
            emit(prefix + _number_text(v))

    try:
        value(val, 0, "")
    except _Full:
        pass
    return "".join(out)


# ---------------------------------------------------------------- parsing


class _TooBig(Exception):
    pass


def _parse_int(text: str) -> int | float:
    v = int(text)
    return v if -_I64 <= v < _U64 else float(text)  # RapidJSON keeps wider integers as doubles


def _parse_float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise _TooBig(text)
    return v


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)  # exact, slower
_PLAIN = json.JSONDecoder()
# Only a long exponent or a long digit run can overflow a double or an int64: else the fast decoder.
_WIDE_NUMBER = re.compile(r"[eE]\+?0*[1-9][0-9]{2,}|[0-9]{19,}")
_WS = re.compile(r"[ \t\n\r]*")
_PY_TO_RAPIDJSON = [
    ("Expecting value", "Invalid value."),
    ("Expecting property name", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid control character", "Invalid encoding in string."),
]


def _innermost_open(text: str, pos: int) -> str:
    """'[' or '{': the container open at ``pos`` (only called on errors)."""
    stack: list[str] = []
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text[:pos]):
        tok = m.group()
        if tok in "[{":
            stack.append(tok)
        elif tok in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else "["


def _parse_error(exc: json.JSONDecodeError, text: str) -> InvalidArgument:
    message = "Invalid value."
    if exc.msg.startswith("Expecting ',' delimiter"):
        message = "Missing a comma or '}' after an object member." if _innermost_open(text, exc.pos) == "{" else "Missing a comma or ']' after an array element."
    else:
        for py, rj in _PY_TO_RAPIDJSON:
            if exc.msg.startswith(py):
                message = rj
                break
    return InvalidArgument(f"JSON Parse error: {message} at offset: {exc.pos}")


_TOKEN = re.compile(
    r'[ \t\n\r]*(?:(?P<p>[\[\]{}:,])|(?P<s>"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")'
    r"|(?P<n>-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<c>true|false|null|NaN|-?Infinity))"
)
_OPEN_RUN = re.compile(r"[ \t\n\r]*\[(?:[ \t\n\r]*\[)+")
_CLOSE_RUN = re.compile(r"[ \t\n\r]*\](?:[ \t\n\r]*\])+")
_CONST: dict[str, Any] = {"true": True, "false": False, "null": None, "NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}



def _member_name(token: Any, text: str, pos: int) -> tuple[str, int]:
    """An object member's name and the position after its colon, or upstream's parse error (rapidjson's words)."""
    if not (token and token.group("s")):
        raise InvalidArgument(f"JSON Parse error: Missing a name for object member. at offset: {pos}")
    name, pos = json.loads(token.group("s")), token.end()
    colon = _TOKEN.match(text, pos)
    if not (colon and colon.group("p") == ":"):
        raise InvalidArgument(f"JSON Parse error: Missing a colon after a name of object member. at offset: {pos}")
    return name, colon.end()

def _parse_iterative(text: str, start: int) -> Any:
    """A stack-based parser for documents nested deeper than Python's recursion allows."""
    stack: list[Any] = []  # open containers; for objects, the pending key follows the dict
    container: Any
    pos, root, have_root = start, None, False

    def bad() -> InvalidArgument:
        return InvalidArgument(f"JSON Parse error: Invalid value. at offset: {pos}")

    def add(v: Any) -> None:
        nonlocal root, have_root
        if not stack:
            root, have_root = v, True
        elif isinstance(stack[-1], list):
            stack[-1].append(v)
        else:  # a key string on top, its dict below
            key = stack.pop()
            stack[-1][key] = v

    expect_value = True
    while not have_root or stack:
        run = (_OPEN_RUN if expect_value else _CLOSE_RUN).match(text, pos)
        if run is not None:  # many brackets in a row: one regex match, not one per bracket
            k = run.group().count("[" if expect_value else "]")
            if expect_value:
                container = []
                add(container)
                chain = [container]
                for _ in range(k - 1):
                    inner: list[Any] = []
                    chain[-1].append(inner)
                    chain.append(inner)
                stack.extend(chain)
            else:
                k = min(k, len(stack))  # once the document is complete, what follows is ignored
                if not all(type(c) is list for c in stack[len(stack) - k :]):
                    raise bad()
                del stack[len(stack) - k :]
            pos = run.end()
            continue
        m = _TOKEN.match(text, pos)
        if m is None:
            raise bad()
        pos = m.end()
        p = m.group("p")
        if p in ("[", "{"):
            if not expect_value:
                raise bad()
            container = [] if p == "[" else {}
            add(container)
            stack.append(container)
            expect_value = p == "["
            if p == "{":  # next: a key or '}'
                m2 = _TOKEN.match(text, pos)
                if m2 and m2.group("p") == "}":
                    pos = m2.end()
                    stack.pop()
                    expect_value = False
                    continue
                name, pos = _member_name(m2, text, pos)
                stack.append(name)
                expect_value = True
            continue
        if p in ("]", "}"):
            if not stack or isinstance(stack[-1], str) or (p == "]") != isinstance(stack[-1], list):
                raise bad()
            stack.pop()
            expect_value = False
            continue
        if p == ",":
            if expect_value or not stack:
                raise bad()
            if isinstance(stack[-1], dict):
                name, pos = _member_name(_TOKEN.match(text, pos), text, pos)
                stack.append(name)
            expect_value = True
            continue
        if not expect_value or p == ":":
            raise bad()
        if m.group("s"):
            add(json.loads(m.group("s")))
        elif m.group("n"):
            n = m.group("n")
            add(_parse_int(n) if re.fullmatch(r"-?\d+", n) else _parse_float(n))
        else:
            add(_CONST[m.group("c")])
        expect_value = False
    return root


def parse_json(body: bytes | str) -> dict[str, Any]:
    """ParseJson(): the request body as a JSON object, or upstream's InvalidArgument."""
    if len(body) == 0:
        raise InvalidArgument("JSON Parse error: The document is empty")
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") from exc
    else:
        text = body
    start = _WS.match(text).end()  # type: ignore[union-attr]
    if start == len(text):
        raise InvalidArgument(f"JSON Parse error: The document is empty. at offset: {start}")
    try:
        try:
            decoder = _DECODER if _WIDE_NUMBER.search(text) else _PLAIN
            doc, _ = decoder.raw_decode(text, start)  # kParseStopWhenDoneFlag: trailing text is ignored
        except RecursionError:
            doc = _parse_iterative(text, start)
    except json.JSONDecodeError as exc:
        raise _parse_error(exc, text) from exc
    except _TooBig as exc:
        raise InvalidArgument(f"JSON Parse error: Number too big to be stored in double. at offset: {text.find(str(exc))}") from exc
    if not isinstance(doc, dict):
        raise InvalidArgument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc


def _format_error(doc: Any, *parts: str) -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {debug_string(doc)} " + "".join(parts))


def _signature_name(doc: dict[str, Any]) -> str:
    """FillSignature()."""
    if "signature_name" in doc:
        if not isinstance(doc["signature_name"], str):
            raise InvalidArgument(f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value.")
        return str(doc["signature_name"])
    return ""


# ---------------------------------------------------------------- JSON -> tensors (predict)


def _type_error(val: Any, dtype: str) -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {debug_string(val)} Type: {_json_type(val)} is not of expected type: {DATA_TYPE_STRING.get(dtype, dtype)}")


def _is_b64(val: Any) -> bool:
    return isinstance(val, dict) and len(val) == 1 and isinstance(val.get("b64"), str)


def _decode_b64(val: Any) -> bytes:
    if not _is_b64(val):
        raise InvalidArgument(f"JSON Value: {debug_string(val)} not formatted correctly for base64 data")
    text = val["b64"]
    try:  # absl::Base64Unescape takes padded and unpadded input, standard alphabet
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument("Unable to base64 decode") from exc


def _value(val: Any, dtype: str) -> Any:
    """AddValueToTensor(): one JSON leaf as a value of ``dtype``, or upstream's type error."""
    t = type(val)
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        if t is int or t is float:
            return val
    elif dtype in ("DT_INT32", "DT_INT16", "DT_INT8", "DT_UINT8"):
        if t is int and -_I32 <= val < _I32:
            return val
    elif dtype == "DT_STRING":
        if t is str:
            return val.encode()
    elif dtype == "DT_INT64":
        if t is int and -_I64 <= val < _I64:
            return val
    elif dtype == "DT_BOOL":
        if t is bool:
            return val
    elif dtype == "DT_UINT32":
        if t is int and 0 <= val < _U32:
            return val
    elif dtype == "DT_UINT64":
        if t is int and 0 <= val < _U64:
            return val
    else:
        raise Unimplemented(f"Conversion of JSON Value: {debug_string(val)} to type: {DATA_TYPE_STRING.get(dtype, dtype)}")
    raise _type_error(val, dtype)


def _dense_shape(val: Any) -> list[int]:
    """GetDenseTensorShape(): the sizes along the first element at every level."""
    shape = []
    while isinstance(val, list):
        shape.append(len(val))
        if not val:
            break
        val = val[0]
    return shape


def _fill(val: Any, level: int, dtype: str, shape: list[int], out: list[Any]) -> None:
    """FillTensorProto()."""
    rank = len(shape)
    if not isinstance(val, list):
        if level != rank:
            raise InvalidArgument(f"JSON Value: {debug_string(val)} found at incorrect level: {level + 1} in the JSON DOM. Expected at level: {rank}")
        if isinstance(val, dict):
            if dtype != "DT_STRING":
                raise _type_error(val, dtype)
            out.append(_decode_b64(val))
        else:
            out.append(_value(val, dtype))
        return
    if level >= rank:
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(val) != shape[level]:
        raise InvalidArgument(f"Encountered list at unexpected size: {len(val)} at level: {level} expected size: {shape[level]}")
    for v in val:
        _fill(v, level + 1, dtype, shape, out)


def _fast(val: Any, dtype: str, no_bools: bool) -> tuple[list[int], np.ndarray] | None:
    """A regular nested list of numbers in one numpy call; None: take the exact path."""
    if not no_bools or dtype not in ("DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_INT64") or not isinstance(val, list):
        return None
    try:
        arr = np.array(val)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.dtype.kind == "f" and dtype in ("DT_FLOAT", "DT_DOUBLE"):
        with np.errstate(over="ignore"):  # a double beyond float range becomes ±inf, as static_cast<float>
            return list(arr.shape), arr.astype(_NUMPY[dtype])
    if arr.dtype.kind == "i" and arr.size:
        lo, hi = (-_I32, _I32) if dtype == "DT_INT32" else (-_I64, _I64)
        if lo <= int(arr.min()) and int(arr.max()) < hi:
            return list(arr.shape), arr.astype(np.float64).astype(_NUMPY[dtype]) if dtype in ("DT_FLOAT", "DT_DOUBLE") else arr.astype(_NUMPY[dtype])
    return None


def _array(values: list[Any], dtype: str, shape: list[int], name: str) -> np.ndarray:
    if len(shape) > 64:  # numpy's limit (TensorShape's is 254): Tensor::FromProto's error in GetInputValues
        raise InvalidArgument(f"tensor parsing error: {name}")
    np_type = _NUMPY.get(dtype)
    if np_type is None:
        raise Unimplemented(f"Conversion of JSON values to type: {DATA_TYPE_STRING.get(dtype, dtype)}")
    if np_type is np.float32:  # GetFloat(): double -> float
        with np.errstate(over="ignore"):
            return np.array(values, dtype=np.float64).astype(np.float32).reshape(shape)
    if np_type is np.object_:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(shape)
    return np.array(values).astype(np_type).reshape(shape) if values else np.zeros(shape, dtype=np_type)


def _status_text(exc: ServingError) -> str:
    return exc.to_string()


def _from_instances(instances: list[Any], infomap: dict[str, str], no_bools: bool) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList()."""
    first = instances[0]
    if not isinstance(first, dict) and len(infomap) > 1:
        raise InvalidArgument("instances is a plain list, but expecting list of objects as multiple input tensors required as per tensorinfo_map")

    def is_object(v: Any) -> bool:
        return isinstance(v, dict) and not _is_b64(v)

    objects = is_object(first)
    names = sorted(infomap)
    if not objects and len(infomap) == 1:
        fast = _fast(instances, infomap[names[0]], no_bools)
        if fast is not None:
            return {names[0]: fast[1]}
    values: dict[str, list[Any]] = {}
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}

    def add_item(item: Any, name: str) -> None:  # AddInstanceItem()
        if name not in infomap:
            raise InvalidArgument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        out = values.setdefault(name, [])
        before = len(out)
        _fill(item, 0, infomap[name], shape, out)
        size = len(out) - before
        if name not in sizes:
            sizes[name], shapes[name] = size, shape
        elif sizes[name] != size:
            raise InvalidArgument(f"Expecting tensor size: {sizes[name]} but got: {size}")
        elif shapes[name] != shape:
            raise InvalidArgument(f"Expecting shape [{','.join(map(str, shapes[name]))}] but got: [{','.join(map(str, shape))}]")

    for count, elem in enumerate(instances):
        if objects:
            if not is_object(elem):
                raise InvalidArgument(f"Expecting object but got list at item {count} of input list")
            for name, item in elem.items():
                try:
                    add_item(item, name)
                except ServingError as exc:
                    raise InvalidArgument(f"Failed to process element: {count} key: {name} of 'instances' list. Error: {_status_text(exc)}") from exc
            if set(elem) != set(names):
                raise InvalidArgument(f"Failed to process element: {count} of 'instances' list. JSON object: {debug_string(elem)} keys must be equal to: {','.join(names)}")
        else:
            if is_object(elem):
                raise InvalidArgument(f"Expecting value/list but got object at item {count} of input list")
            try:
                add_item(elem, names[0])
            except ServingError as exc:
                raise InvalidArgument(f"Failed to process element: {count} of 'instances' list. Error: {_status_text(exc)}") from exc
    return {name: _array(vals, infomap[name], [len(instances), *shapes[name]], name) for name, vals in values.items()}


def _from_inputs(val: Any, infomap: dict[str, str], no_bools: bool) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap()."""
    names = sorted(infomap)

    def one(item: Any, name: str) -> np.ndarray:
        fast = _fast(item, infomap[name], no_bools)
        if fast is not None:
            return fast[1]
        shape = _dense_shape(item)
        out: list[Any] = []
        _fill(item, 0, infomap[name], shape, out)
        return _array(out, infomap[name], shape, name)

    if not isinstance(val, dict) or _is_b64(val):
        if len(infomap) > 1:
            raise InvalidArgument("inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map")
        return {names[0]: one(val, names[0])}
    tensors = {}
    for name in names:
        if name not in val:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = one(val[name], name)
    return tensors


def fill_predict_request(body: bytes | str, get_infomap: Callable[[str], dict[str, str]]) -> tuple[str, dict[str, np.ndarray], str]:
    """FillPredictRequestFromJson(): (signature name, input tensors, ROW or COLUMNAR).

    ``get_infomap(signature_name)`` returns the signature's inputs as {alias: "DT_FLOAT", ...}
    (or raises: unknown model, version, label or signature), as upstream's ``GetInfoMap``.
    """
    doc = parse_json(body)
    signame = _signature_name(doc)
    infomap = get_infomap(signame)
    if not infomap:
        raise InvalidArgument(f"Failed to get input map for signature: {signame or 'DEFAULT'}")
    no_bools = not isinstance(body, bytes) or (b"true" not in body and b"false" not in body)
    try:
        if "instances" in doc:
            if "inputs" in doc:
                raise _format_error(doc, "Not formatted correctly expecting only", " one of 'inputs' or 'instances' keys to exist ")
            if not isinstance(doc["instances"], list):
                raise _format_error(doc, "Expecting 'instances' to be an list/array")
            if not doc["instances"]:
                raise _format_error(doc, "No values in 'instances' array")
            return signame, _from_instances(doc["instances"], infomap, no_bools), ROW
        if "inputs" in doc:
            return signame, _from_inputs(doc["inputs"], infomap, no_bools), COLUMNAR
    except RecursionError as exc:  # upstream recurses in C++ here; the stand-in refuses such depth
        raise InvalidArgument("JSON Value: nested too deeply for the stand-in's tensor conversion") from exc
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------- JSON -> examples (classify, regress)


def _feature_kind_error(name: str, kind: str | None) -> InvalidArgument:
    return InvalidArgument(f"Unexpected element type in feature: {name} expecting type: {kind or 'UNKNOWN'}")


def _add_to_feature(val: Any, name: str, feature: dict[str, Any]) -> None:
    """AddValueToFeature(): feature = {"kind": None|"bytes"|"float"|"int64", "values": [...]}."""

    def want(kind: str) -> None:
        if feature["kind"] not in (None, kind):
            raise _feature_kind_error(name, feature["kind"])
        feature["kind"] = kind

    if val is None or isinstance(val, list) or (isinstance(val, dict) and not _is_b64(val)):
        raise InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {_json_type(val)}")
    if isinstance(val, bool):
        want("int64")
        feature["values"].append(int(val))
    elif isinstance(val, dict):
        want("bytes")
        feature["values"].append(_decode_b64(val))
    elif isinstance(val, str):
        want("bytes")
        feature["values"].append(val.encode())
    elif type(val) is float:
        want("float")
        feature["values"].append(val)
    else:
        want("int64")
        if val >= _I64:
            raise InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature["values"].append(val)


def _example(val: Any) -> dict[str, dict[str, Any]]:
    """MakeExampleFromJsonObject()."""
    if not isinstance(val, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {_json_type(val)}")
    example = {}
    for name, content in val.items():
        feature: dict[str, Any] = {"kind": None, "values": []}
        for v in content if isinstance(content, list) else [content]:
            _add_to_feature(v, name, feature)
        example[name] = feature
    return example


def fill_classify_regress_request(body: bytes | str) -> tuple[str, dict[str, Any] | None, list[dict[str, Any]]]:
    """FillClassifyRegressRequestFromJson(): (signature name, context example or None, examples)."""
    doc = parse_json(body)
    signame = _signature_name(doc)
    context = _example(doc["context"]) if "context" in doc else None
    if "examples" not in doc:
        raise _format_error(doc, "When method is classify, key '", "examples", "' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting '", "examples", "' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'", "examples", "' value is an empty array")
    return signame, context, [_example(e) for e in examples]


# ---------------------------------------------------------------- tensors -> JSON


def _decimals(flat: np.ndarray, digits: int) -> list[str]:
    """WriteDecimal(): ``%g``, or ``%.{digits}g`` where ``%g`` does not read back; NaN/Infinity."""
    values = flat.tolist()
    six = [f"{v:g}" for v in values]
    back = np.array(six, dtype=np.float64).astype(flat.dtype) if six else flat
    same = (back == flat).tolist()
    out = []
    for v, s, ok in zip(values, six, same, strict=True):
        if not math.isfinite(v):
            out.append("NaN" if v != v else ("-Infinity" if v < 0 else "Infinity"))
            continue
        if not ok:
            s = f"{v:.{digits}g}"
        if "." not in s and "e" not in s:
            s += ".0"
        out.append(s)
    return out


def _scalars(name: str, arr: np.ndarray) -> list[str]:
    """AddSingleValueAndAdvance() for every value of ``arr`` (flattened)."""
    flat = arr.reshape(-1)
    kind = arr.dtype
    if kind == np.float32:
        return _decimals(flat, 9)
    if kind == np.float64:
        return _decimals(flat, 17)
    if kind == np.bool_:
        return ["true" if v else "false" for v in flat.tolist()]
    if kind.kind in "iu" and kind.itemsize <= 8 and kind != np.uint16:
        return [str(v) for v in flat.tolist()]
    if kind.kind in "OSU":
        raw = [v if isinstance(v, bytes) else str(v).encode() for v in flat.tolist()]
        if name.endswith("_bytes"):
            return ['{"b64": "' + base64.b64encode(v).decode() + '"}' for v in raw]
        return [json.dumps(v.decode("utf-8", errors="replace"), ensure_ascii=False) for v in raw]
    names = {"float16": "half", "uint16": "uint16", "complex64": "complex64", "complex128": "complex128"}
    raise InvalidArgument(f"Failed to write JSON value for tensor type: {names.get(kind.name, kind.name)}")


def _nest(items: list[str], shape: tuple[int, ...], level: int, single_line: bool) -> str:
    """AddTensorValues(): nested arrays, on one line or RapidJSON's pretty layout."""
    if not shape:
        return items[0]
    step = len(items) // shape[0] if shape[0] else 0
    parts = [_nest(items[i * step : (i + 1) * step], shape[1:], level + 1, single_line) for i in range(shape[0])]
    if not parts:
        return "[]"
    if single_line:
        return "[" + ", ".join(parts) + "]"
    pad = "    " * (level + 1)
    return "[\n" + ",\n".join(pad + p for p in parts) + "\n" + "    " * level + "]"


def make_json_from_tensors(tensors: dict[str, np.ndarray], fmt: str) -> str:
    """MakeJsonFromTensors(): ``{"predictions": ...}`` (ROW) or ``{"outputs": ...}`` (COLUMNAR)."""
    if not tensors:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    if fmt == ROW:
        batch = -1
        for name, t in tensors.items():
            if t.ndim == 0:
                raise InvalidArgument(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and batch != t.shape[0]:
                raise InvalidArgument(f"Tensor name: {name} has inconsistent batch size: {t.shape[0]} expecting: {batch}")
            batch = t.shape[0]
        flat = {name: _scalars(name, t) for name, t in tensors.items()}
        per = {name: (len(flat[name]) // batch if batch else 0) for name in tensors}
        rows = []
        for i in range(batch):
            values = {name: _nest(flat[name][i * per[name] : (i + 1) * per[name]], tensors[name].shape[1:], 2, True) for name in tensors}
            if len(tensors) > 1:
                rows.append("{\n" + ",\n".join(f"            {json.dumps(k)}: {v}" for k, v in values.items()) + "\n        }")
            else:
                rows.append(next(iter(values.values())))
        body = ("[\n" + ",\n".join("        " + r for r in rows) + "\n    ]") if rows else "[]"
        return '{\n    "predictions": ' + body + "\n}"
    if fmt == COLUMNAR:
        texts = {name: _nest(_scalars(name, t), t.shape, 1 if len(tensors) == 1 else 2, False) for name, t in tensors.items()}
        if len(tensors) == 1:
            return '{\n    "outputs": ' + next(iter(texts.values())) + "\n}"
        inner = ",\n".join(f"        {json.dumps(k)}: {v}" for k, v in texts.items())
        return '{\n    "outputs": {\n' + inner + "\n    }\n}"
    raise InvalidArgument("Invalid request format")


def make_json_from_status(exc: ServingError) -> str:
    """MakeJsonFromStatus(): ``{"error": message}`` as RapidJSON's PrettyWriter writes it."""
    return '{\n    "error": ' + json.dumps(exc.message, ensure_ascii=False) + "\n}"
