"""ModelInfer's wire format: a `ModelInferRequest` to the transport-free `InferRequest` of
`app.v2.protocol`, and the outputs back to a `ModelInferResponse`, as Triton's gRPC server does.

- An input's data is in `raw_input_contents` (one entry per input, in input order: little-endian,
  row-major; BYTES elements 4-byte length-prefixed) or in its typed `contents` (`fp32_contents`,
  `bytes_contents`, ...), never both; all inputs are raw or none is.
- Outputs always go back in `raw_output_contents`, encoded the same way (BYTES ones length-prefixed),
  which is what Triton sends and `tritonclient.grpc` reads.
- Parameters: `classification` (int64) on a requested output as over HTTP; shared memory is refused;
  `binary_data` and `binary_data_output` mean nothing here (always raw) and are ignored.

Names, datatypes and sizes are checked here only as far as the wire needs; the model's own checks
(which input, which datatype and shape) are `app.v2.model`'s, shared with HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from app.errors import ProtocolError, UnsupportedFeatureError
from app.v2.grpc.proto import grpc_service_pb2 as pb
from app.v2.model import MODEL_VERSION
from app.v2.protocol import (
    BYTES,
    DATATYPES,
    NUMPY_TYPES,
    InferRequest,
    RequestedOutput,
    RequestInput,
    ResponseOutput,
    serialize_bytes,
)

#: The `InferTensorContents` field that holds each datatype's elements (FP16 and BF16 have none:
#: they travel only in raw_input_contents).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}


#: Bytes per element of each numeric typed-contents field, as the message holds them in memory.
ITEM_BYTES = {
    "bool_contents": 1,
    "int_contents": 4,
    "int64_contents": 8,
    "uint_contents": 4,
    "uint64_contents": 8,
    "fp32_contents": 4,
    "fp64_contents": 8,
}


def message_bytes(message: pb.ModelInferRequest) -> int:
    """The tensor data a request holds in memory (raw contents, typed elements), counted without a
    walk over its numbers: what the job charges to the memory budget, and what decides whether the
    translation runs off the event loop."""
    total = sum(len(raw) for raw in message.raw_input_contents)
    for tensor in message.inputs:
        contents = tensor.contents
        total += sum(size * len(getattr(contents, field)) for field, size in ITEM_BYTES.items())
        total += sum(len(element) for element in contents.bytes_contents)
    return total


def parameters(params: Mapping[str, pb.InferParameter], what: str) -> dict[str, Any]:
    """A parameter map as plain values; a parameter without a value is refused."""
    values: dict[str, Any] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is None:
            raise ProtocolError(f"parameter '{key}' of {what} has no value")
        values[key] = getattr(param, choice)
    return values


def _check_shared_memory(params: Mapping[str, Any], what: str) -> None:
    if any(key.startswith("shared_memory_") for key in params):
        raise UnsupportedFeatureError(
            f"{what} asks for shared memory, which this server does not support: send the data in "
            "raw_input_contents"
        )


def _check_name(name: str, kind: str, seen: set[str]) -> None:
    if not name:
        raise ProtocolError(f"an {kind} of the request has no name")
    if name in seen:
        raise ProtocolError(f"{kind} '{name}' is given twice")
    seen.add(name)


def _typed_contents(tensor: pb.ModelInferRequest.InferInputTensor, what: str) -> bytes:
    """The typed contents as the raw bytes they stand for (numbers little-endian, BYTES elements
    length-prefixed), so one decoder checks both forms."""
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise ProtocolError(
            f"{what} ({tensor.datatype}) has no typed contents: send it in raw_input_contents"
        )
    used = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    if any(name != field for name in used):
        raise ProtocolError(
            f"{what} is {tensor.datatype}, whose elements go in contents.{field}; got {', '.join(used)}"
        )
    values = getattr(tensor.contents, field)
    if tensor.datatype == BYTES:
        return serialize_bytes(np.array(list(values), dtype=object))
    try:
        return np.fromiter(values, dtype=NUMPY_TYPES[tensor.datatype], count=len(values)).tobytes()
    except (OverflowError, ValueError) as exc:
        raise ProtocolError(f"{what} has values that are not {tensor.datatype}: {exc}") from None


def _input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, seen: set[str]) -> RequestInput:
    _check_name(tensor.name, "input", seen)
    what = f"input '{tensor.name}'"
    if tensor.datatype not in DATATYPES:
        raise ProtocolError(
            f"{what} has datatype '{tensor.datatype}'; the protocol's datatypes are {', '.join(DATATYPES)}"
        )
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise ProtocolError(f"{what} has shape {list(shape)}: dimensions must not be negative")
    _check_shared_memory(parameters(tensor.parameters, what), what)
    if raw is None:
        data = _typed_contents(tensor, what)
    elif tensor.HasField("contents"):
        raise ProtocolError(f"{what} has typed contents and the request raw_input_contents: send one")
    else:
        data = raw
    return RequestInput(name=tensor.name, datatype=tensor.datatype, shape=shape, binary=data)


def _outputs(
    requested: Iterable[pb.ModelInferRequest.InferRequestedOutputTensor],
) -> list[RequestedOutput] | None:
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for output in requested:
        _check_name(output.name, "output", seen)
        what = f"output '{output.name}'"
        params = parameters(output.parameters, what)
        _check_shared_memory(params, what)
        classification = params.get("classification", 0)
        if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
            raise ProtocolError(
                f"'classification' of {what} must be a non-negative int64, got {classification!r}"
            )
        outputs.append(RequestedOutput(output.name, binary=True, classification=classification))
    return outputs or None  # none named: every output, as Triton sends


def infer_request(message: pb.ModelInferRequest) -> InferRequest:
    """The request as the protocol layer sees it; `ProtocolError` (INVALID_ARGUMENT) for what the
    wire format does not allow, `UnsupportedFeatureError` (UNIMPLEMENTED) for shared memory."""
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise ProtocolError(
            f"the request has {len(raw)} raw_input_contents for {len(message.inputs)} inputs: give one "
            "per input, in input order, or send every input in its typed contents"
        )
    seen: set[str] = set()
    inputs = [_input(tensor, raw[i] if raw else None, seen) for i, tensor in enumerate(message.inputs)]
    params = parameters(message.parameters, "the request")
    _check_shared_memory(params, "the request")
    return InferRequest(
        id=message.id or None,
        inputs=inputs,
        outputs=_outputs(message.outputs),
        binary_data_output=True,
        parameters=params,
    )


def _raw(output: ResponseOutput) -> bytes:
    if output.datatype == BYTES:
        return serialize_bytes(output.array)
    return np.ascontiguousarray(output.array, dtype=NUMPY_TYPES[output.datatype]).tobytes()


def infer_response(
    model: str, request_id: str | None, outputs: Iterable[ResponseOutput]
) -> pb.ModelInferResponse:
    """The outputs in `raw_output_contents`, described in `outputs`, in the order requested."""
    response = pb.ModelInferResponse(model_name=model, model_version=MODEL_VERSION, id=request_id or "")
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.array.shape)
        response.raw_output_contents.append(_raw(output))
    return response
