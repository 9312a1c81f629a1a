"""The Open Inference Protocol (KServe v2, as Triton speaks it over HTTP): parsing infer requests
and encoding responses, with no FastAPI and no model in sight, so the wire format is testable alone.

What Triton's own client (`tritonclient.http`) sends and expects, and what this module follows:

- A request body is a JSON header, optionally followed by raw input buffers (the binary tensor data
  extension). The `Inference-Header-Content-Length` request header says where the JSON ends; each
  binary input carries `parameters.binary_data_size` and the buffers follow in input order.
- Binary data is little-endian, row-major, unpadded; a BYTES element is a 4-byte little-endian
  length followed by its bytes.
- An output is returned as binary when its `parameters.binary_data` says so, otherwise as the
  request-level `parameters.binary_data_output` says (default JSON). The response's JSON then gives
  `parameters.binary_data_size` per binary output and the `Inference-Header-Content-Length` response
  header; the buffers follow the JSON in output order.
- The classification extension (`parameters.classification: k` on an output) replaces the tensor
  with BYTES `[N, k]` strings `"<value>:<index>[:<label>]"`: the k largest raw output values (not a
  softmax), formatted as C++ `std::to_string` does (`%f`), as Triton's `classification.cc` does.
- Errors are `{"error": "<message>"}`; Triton's status codes: not found 404, unavailable 503,
  unsupported 501, internal 500, any other client error 400 (`app.http.errors.triton_status`).
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import jsonio
from app.errors import InferenceError, InvalidParameterError, ProtocolError, UnsupportedFeatureError

#: The request/response header that splits the JSON header from the binary buffers.
HEADER_LENGTH = "Inference-Header-Content-Length"

#: Extensions this server implements, reported by `GET /v2`.
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")

#: v2 datatype -> little-endian numpy dtype (BYTES is handled apart: variable-length elements).
NUMPY_TYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
DATATYPES = (*NUMPY_TYPES, "BF16", BYTES)

_LENGTH = struct.Struct("<I")
_DECIMAL = re.compile(r"[0-9]{1,19}")

#: Longest tensor name or request id accepted (they are echoed into responses and logs).
MAX_NAME_CHARS = 256
#: Most dimensions a tensor's shape may have.
MAX_RANK = 8
#: Most values one JSON response may write (about 40 MB of text): every output of TransXNet-T for 6
#: images. Beyond it the binary extension is the way: 4 bytes a value, no text to build or parse.
MAX_JSON_VALUES = 2_000_000


@dataclass
class RequestInput:
    """One input as sent: its data still encoded (binary buffer or JSON `data`), so the caller can
    check name, datatype and shape against the model before paying for decoding."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    binary: bytes | None = None
    data: Any = None

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass
class InferRequest:
    id: str | None
    inputs: list[RequestInput]
    outputs: list[RequestedOutput] | None
    binary_data_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ResponseOutput:
    """One output to send: a numeric array, or for BYTES an object array of `bytes`."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool


# ---------------------------------------------------------------------------------------------------
# Requests


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(holder: dict[str, Any], what: str) -> dict[str, Any]:
    params = holder.get("parameters", {})
    if params is None:
        return {}
    return _object(params, f"'parameters' of {what}")


def _check_shared_memory(params: Mapping[str, Any], what: str) -> None:
    if any(key.startswith("shared_memory_") for key in params):
        raise UnsupportedFeatureError(
            f"{what} asks for shared memory, which this server does not support: send the data in the "
            "request body (JSON or binary)"
        )


def _bool_param(params: Mapping[str, Any], key: str, what: str) -> bool | None:
    if key not in params:
        return None
    value = params[key]
    if not isinstance(value, bool):
        raise ProtocolError(f"parameter '{key}' of {what} must be a boolean, got {value!r}")
    return value


def _text(value: Any, what: str, limit: int = MAX_NAME_CHARS) -> str:
    """A name or id we may echo: a non-empty string of at most `limit` characters that UTF-8 can
    carry (JSON's `\\ud800` escapes decode to lone surrogates, which it cannot)."""
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{what} must be a non-empty string, got {_shown(value)}")
    if len(value) > limit:
        raise ProtocolError(f"{what} is {len(value)} characters long; at most {limit} are accepted")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"{what} holds a lone surrogate, which UTF-8 cannot encode") from None
    return value


def _shown(value: Any) -> str:
    """A value for an error message, cut short: the client sent it, it may be huge."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _named_tensor(
    raw: Any, kind: str, position: int, seen: set[str], repeated: str
) -> tuple[dict[str, Any], str]:
    """One entry of 'inputs' or 'outputs' (`kind`): the object and its name, which must be new."""
    tensor = _object(raw, f"{kind} {position}")
    if not isinstance(tensor.get("name"), str) or not tensor["name"]:
        raise ProtocolError(f"{kind} {position} has no 'name'")
    name = _text(tensor["name"], f"the name of {kind} {position}")
    if name in seen:
        raise ProtocolError(f"{kind} '{name}' is {repeated} more than once")
    seen.add(name)
    return tensor, name


def _count(value: Any, what: str) -> int:
    """A non-negative JSON integer (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{what} must be a non-negative integer, got {_shown(value)}")
    return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise ProtocolError(f"'shape' of {what} must be a list of at most {MAX_RANK} dimensions")
    return tuple(_count(d, f"a dimension of the 'shape' of {what}") for d in value)


def _refuse_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON: send finite numbers (or binary tensor data)")


def loads(text: bytes, what: str) -> Any:
    """Strict JSON: no NaN or Infinity, bounded nesting and integer size, valid UTF-8."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ProtocolError(f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and ints past 4300 digits
        raise ProtocolError(f"{what} is not valid JSON: {exc}") from None


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary section) of a request body, by its `Inference-Header-Content-Length`."""
    if header_length is None:
        return body, b""
    if not _DECIMAL.fullmatch(header_length):
        raise ProtocolError(
            f"{HEADER_LENGTH} must be an integer of decimal digits, got {_shown(header_length)}"
        )
    length = int(header_length)
    if length == 0:
        raise ProtocolError(
            f"{HEADER_LENGTH}: 0 (a raw binary request without a JSON header) is not supported: send the "
            "JSON inference header first"
        )
    if length > len(body):
        raise ProtocolError(
            f"{HEADER_LENGTH} is {length} but the request body has {len(body)} bytes: the JSON header "
            "must lie within the body"
        )
    return body[:length], body[length:]


def _request_parameters(request: dict[str, Any]) -> dict[str, Any]:
    params = _parameters(request, "the request")
    reserved = sorted(key for key in params if key.startswith("triton_"))
    if reserved:
        raise ProtocolError(f"parameter keys starting with 'triton_' are reserved, got {reserved[:8]}")
    return params


def _input(raw: Any, position: int, seen: set[str], binary: _BinarySection) -> RequestInput:
    tensor, name = _named_tensor(raw, "input", position, seen, "given")
    what = f"input '{name}'"
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(
            f"'datatype' of {what} must be one of {', '.join(DATATYPES)}, got {_shown(datatype)}"
        )
    item = RequestInput(name=name, datatype=datatype, shape=_shape(tensor.get("shape"), what))
    params = _parameters(tensor, what)
    _check_shared_memory(params, what)
    if "binary_data_size" in params:
        if "data" in tensor:
            raise ProtocolError(f"{what} has both 'data' and 'binary_data_size': send one")
        item.binary = binary.take(_count(params["binary_data_size"], f"'binary_data_size' of {what}"), what)
    elif "data" in tensor:
        item.data = tensor["data"]
    else:
        raise ProtocolError(f"{what} has neither 'data' nor 'parameters.binary_data_size'")
    return item


class _BinarySection:
    """The binary buffers after the JSON header, handed out in input order."""

    def __init__(self, data: bytes, framed: bool) -> None:
        self.data = data
        self.framed = framed
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        if not self.framed and size > 0:
            raise ProtocolError(
                f"{what} is binary ('binary_data_size') but the request has no {HEADER_LENGTH} header"
            )
        if self.offset + size > len(self.data):
            raise ProtocolError(
                f"{what} declares {size} bytes of binary data but only {len(self.data) - self.offset} remain "
                "in the request body"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def check_consumed(self) -> None:
        if self.offset != len(self.data):
            raise ProtocolError(
                f"the request body has {len(self.data) - self.offset} bytes after the inputs' binary data: "
                "'binary_data_size' values and the body disagree"
            )


def _output(raw: Any, position: int, seen: set[str]) -> RequestedOutput:
    tensor, name = _named_tensor(raw, "output", position, seen, "requested")
    what = f"output '{name}'"
    params = _parameters(tensor, what)
    _check_shared_memory(params, what)
    return RequestedOutput(
        name=name,
        binary=_bool_param(params, "binary_data", what),
        classification=_count(params.get("classification", 0), f"'classification' of {what}"),
    )


def _outputs(request: dict[str, Any]) -> list[RequestedOutput] | None:
    if "outputs" not in request:
        return None
    raw_outputs = request["outputs"]
    if not isinstance(raw_outputs, list):
        raise ProtocolError("'outputs' must be a list of requested outputs")
    seen: set[str] = set()
    return [_output(raw, position, seen) for position, raw in enumerate(raw_outputs)]


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parse and frame-check an infer request; the model-specific checks are the caller's."""
    header, binary = split_body(body, header_length)
    where = f" (the first {len(header)} bytes, per {HEADER_LENGTH})" if header_length else ""
    request = _object(loads(header, f"the inference request header{where}"), "the inference request")
    request_id = request.get("id")
    if request_id is not None:
        request_id = _text(request_id, "'id'") if request_id != "" else None
    params = _request_parameters(request)
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list):
        raise ProtocolError("'inputs' must be a list of input tensors")
    section = _BinarySection(binary, framed=header_length is not None)
    seen: set[str] = set()
    inputs = [_input(raw, position, seen, section) for position, raw in enumerate(raw_inputs)]
    section.check_consumed()
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=_outputs(request),
        binary_data_output=_bool_param(params, "binary_data_output", "the request") or False,
        parameters=params,
    )


def _flatten(data: Any) -> list[Any]:
    """JSON tensor data, flat or nested row-major, as one flat list."""
    if not isinstance(data, list):
        return [data]
    if all(not isinstance(value, list) for value in data):
        return data
    flat: list[Any] = []
    for value in data:
        flat.extend(_flatten(value))
    return flat


def decode_numeric(item: RequestInput) -> np.ndarray:
    """The input as an array of its shape; sizes must match the shape exactly."""
    if item.datatype not in NUMPY_TYPES:
        raise ProtocolError(f"input '{item.name}' has datatype {item.datatype}, which is not decoded here")
    dtype = NUMPY_TYPES[item.datatype]
    count = item.element_count
    if item.binary is not None:
        expected = count * dtype.itemsize
        if len(item.binary) != expected:
            raise ProtocolError(
                f"input '{item.name}' has {len(item.binary)} bytes of binary data; shape {list(item.shape)} "
                f"of {item.datatype} needs {expected}"
            )
        return np.frombuffer(item.binary, dtype=dtype).reshape(item.shape)
    if isinstance(item.data, np.ndarray):  # decoded already, where a large body was parsed
        return item.data
    values = _flatten(item.data)
    if len(values) != count:
        raise ProtocolError(
            f"input '{item.name}' has {len(values)} values in 'data'; shape {list(item.shape)} needs {count}"
        )
    if any(isinstance(value, (str, list, dict)) or value is None for value in values):
        raise ProtocolError(f"input '{item.name}' ({item.datatype}) must hold numbers in 'data'")
    try:
        return np.asarray(values, dtype=dtype).reshape(item.shape)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"input '{item.name}' has values that are not {item.datatype}: {exc}") from None


def deserialize_bytes(buffer: bytes, count: int, name: str) -> list[bytes]:
    """Length-prefixed BYTES elements; exactly `count` of them must fill the buffer."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise ProtocolError(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise ProtocolError(
                f"input '{name}': BYTES element {len(elements)} declares {length} bytes but only "
                f"{len(buffer) - offset} remain"
            )
        elements.append(buffer[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise ProtocolError(f"input '{name}' has {len(elements)} BYTES elements; its shape needs {count}")
    return elements


def decode_bytes(item: RequestInput) -> list[bytes]:
    """A BYTES input's elements in row-major order (JSON strings are UTF-8 encoded, as Triton does)."""
    if item.datatype != BYTES:
        raise ProtocolError(f"input '{item.name}' has datatype {item.datatype}, not BYTES")
    if item.binary is not None:
        return deserialize_bytes(item.binary, item.element_count, item.name)
    values = _flatten(item.data)
    if not all(isinstance(value, str) for value in values):
        raise ProtocolError(
            f"input '{item.name}' (BYTES) must hold strings in 'data'; send binary content such as "
            "encoded images as binary data (binary_data_size)"
        )
    if len(values) != item.element_count:
        raise ProtocolError(
            f"input '{item.name}' has {len(values)} values in 'data'; shape {list(item.shape)} needs "
            f"{item.element_count}"
        )
    try:
        return [value.encode("utf-8") for value in values]
    except UnicodeEncodeError:
        raise ProtocolError(
            f"input '{item.name}' holds a string with a lone surrogate, which UTF-8 cannot encode"
        ) from None


# ---------------------------------------------------------------------------------------------------
# Responses


def serialize_bytes(elements: np.ndarray) -> bytes:
    """BYTES elements (row-major) as length-prefixed binary data."""
    parts: list[bytes] = []
    for element in elements.ravel():
        value = element if isinstance(element, bytes) else str(element).encode("utf-8")
        parts.append(_LENGTH.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def classification_strings(values: np.ndarray, count: int, labels: Sequence[str] | None) -> np.ndarray:
    """Triton's classification extension for a batched output: for each row (flattened), the `count`
    largest values, largest first, as `"<value>:<index>[:<label>]"` with the value printed as `%f`.
    Ties go to the lower index (Triton's sort leaves them unspecified). Shape `[N, min(count, size)]`."""
    rows = values.reshape(values.shape[0], -1)
    count = min(count, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :count]
    strings = np.empty((rows.shape[0], count), dtype=object)
    for r, indices in enumerate(order):
        for c, index in enumerate(indices.tolist()):
            text = f"{float(rows[r, index]):f}:{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            strings[r, c] = text.encode("utf-8")
    return strings


def check_json_size(outputs: Sequence[ResponseOutput]) -> int:
    """The number of values the response would write as JSON; `InvalidParameterError` past
    `MAX_JSON_VALUES`, pointing at the binary extension (exact float32, a fraction of the size)."""
    values = sum(output.array.size for output in outputs if not output.binary)
    if values > MAX_JSON_VALUES:
        raise InvalidParameterError(
            f"the requested outputs hold {values} values, more than the {MAX_JSON_VALUES} a JSON response "
            "may carry: ask for them as binary data (parameters.binary_data_output, or binary_data per "
            "output), for fewer outputs, or for fewer images per request"
        )
    return values


def encode_infer_response(
    request_id: str | None, outputs: Sequence[ResponseOutput], *, model_name: str, model_version: str
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): the response JSON, then the binary outputs' buffers."""
    described: list[dict[str, Any]] = []
    buffers: list[bytes] = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if output.binary:
            if output.datatype == BYTES:
                raw = serialize_bytes(output.array)
            else:
                raw = np.ascontiguousarray(output.array, dtype=NUMPY_TYPES[output.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            buffers.append(raw)
        elif output.datatype == BYTES:
            entry["data"] = [
                value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
                for value in output.array.ravel()
            ]
        else:
            entry["data"] = output.array.ravel().tolist()
        described.append(entry)
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id:
        document["id"] = request_id
    document["outputs"] = described
    try:
        header = jsonio.dumps(document)
    except ValueError:
        raise InferenceError(
            "the model's outputs hold NaN or infinity, which JSON cannot carry: ask for binary outputs "
            "(parameters.binary_data) to receive them as they are"
        ) from None
    if not buffers:
        return header, None
    return header + b"".join(buffers), len(header)
