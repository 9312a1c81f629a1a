"""The Open Inference Protocol over gRPC against a real `python -m app` process: Triton's client
(`tritonclient.grpc`) unmodified, its raw stub for what the client never sends (typed contents,
hostile requests), and grpcio-health-checking's client for the health service.

References are independent of the gRPC path: a direct ONNX Runtime session, the service's own
/classify over HTTP, and /v2 over HTTP for metadata, configuration and statistics. One server per
module (the fake model); one test with the real exported T.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format

from runtime.metadata import INPUT_NAME, OUTPUT_NAMES
from runtime.session import read_metadata
from tests.app.conftest import TEST_LIMITS, Reference
from tests.support.fake_model import IMAGE_SIZE, fake_metadata
from tests.support.images import encoded_image, png_declaring
from tests.support.processes import ServiceProcess, free_port, service_process

grpcclient = pytest.importorskip("tritonclient.grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

pytestmark = pytest.mark.slow

MODEL = fake_metadata().variant
PNG = {"content-type": "image/png"}
#: The module's memory budget, and so its largest request (gRPC's receive limit).
INFLIGHT_BYTES = 16 * 2**20
Tensor = service_pb2.ModelInferRequest.InferInputTensor


@dataclass
class Served:
    service: ServiceProcess
    address: str  # host:port of the gRPC endpoint

    def http(self, path: str) -> str:
        return self.service.url(path)


@pytest.fixture(scope="module")
def served(fake_model_path: Path) -> Iterator[Served]:
    port = free_port()
    limits = {key: str(value) for key, value in TEST_LIMITS.items()}
    with service_process(
        fake_model_path,
        grpc_port=str(port),
        max_batch_size="8",
        max_inflight_bytes=str(INFLIGHT_BYTES),
        **limits,
    ) as service:
        yield Served(service, f"127.0.0.1:{port}")


@pytest.fixture(scope="module")
def triton(served: Served) -> Iterator:
    with grpcclient.InferenceServerClient(served.address) as client:
        yield client


@pytest.fixture(scope="module")
def stub(served: Served) -> Iterator:
    """Triton's own generated stub: requests built field by field."""
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(served.address, options=options) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def session(fake_model_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(fake_model_path), providers=["CPUExecutionProvider"])


def images_batch(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, (count, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def bytes_input(blobs: list[bytes]):
    item = grpcclient.InferInput("image_bytes", [len(blobs), 1], "BYTES")
    item.set_data_from_numpy(np.array(blobs, dtype=object).reshape(-1, 1))
    return item


def tensor_input(batch: np.ndarray):
    item = grpcclient.InferInput(INPUT_NAME, list(batch.shape), "FP32")
    item.set_data_from_numpy(batch)
    return item


def length_prefixed(blobs: list[bytes]) -> bytes:
    """BYTES elements as the protocol's raw contents carry them (written here, not imported)."""
    return b"".join(struct.pack("<I", len(blob)) + blob for blob in blobs)


def classify(served: Served, blob: bytes, top_k: int) -> list[dict]:
    answer = httpx.post(
        served.http("/classify"), content=blob, headers=PNG, params={"top_k": top_k}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["results"][0]["predictions"]


def assert_classification_matches_classify(strings: np.ndarray, predictions: list[dict], logits: np.ndarray):
    """Triton's "<value>:<index>:<label>" against /classify's order and labels and the raw logits."""
    texts = [s.decode() if isinstance(s, bytes) else s for s in strings]
    assert [t.split(":", 2)[1:] for t in texts] == [[str(p["index"]), p["label"]] for p in predictions]
    np.testing.assert_allclose(
        [float(t.split(":")[0]) for t in texts], logits[[p["index"] for p in predictions]], atol=1e-5
    )


# --------------------------------------------------------------------------------------------------
# Health, metadata, configuration, statistics


def test_tritonclient_sees_a_live_ready_server_and_model(triton) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(MODEL)
    assert triton.is_model_ready(MODEL, model_version="1")
    assert triton.is_model_ready("transxnet_fake")  # the ONNX file's stem is an alias
    assert not triton.is_model_ready("resnet50")
    assert not triton.is_model_ready(MODEL, model_version="3")


def test_server_metadata_equals_http(triton, served: Served) -> None:
    metadata = triton.get_server_metadata(as_json=True)
    http = httpx.get(served.http("/v2"), timeout=10).json()
    assert metadata == {"name": http["name"], "version": http["version"], "extensions": http["extensions"]}


@pytest.mark.parametrize("version", ["", "1"])
def test_model_metadata_equals_http(triton, served: Served, version: str) -> None:
    response = triton.get_model_metadata(MODEL, model_version=version)
    http = httpx.get(served.http(f"/v2/models/{MODEL}"), timeout=10).json()
    assert response == json_format.ParseDict(http, service_pb2.ModelMetadataResponse())
    assert [tensor.name for tensor in response.inputs] == ["images", "image_bytes"]


@pytest.mark.parametrize("version", ["", "1"])
def test_model_config_equals_http_read_as_tritons_model_config(triton, served: Served, version: str) -> None:
    response = triton.get_model_config(MODEL, model_version=version)
    http = httpx.get(served.http(f"/v2/models/{MODEL}/config"), timeout=10).json()
    # Triton's full ModelConfig reads the HTTP JSON: the two endpoints describe the same model.
    assert response.config == json_format.ParseDict(http, model_config_pb2.ModelConfig())
    config = response.config
    assert config.max_batch_size == 8
    assert [i.name for i in config.input] == ["images", "image_bytes"]
    assert all(i.optional for i in config.input)
    assert list(config.input[0].dims) == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert config.input[1].data_type == model_config_pb2.TYPE_STRING
    assert config.dynamic_batching.preferred_batch_size == [8]


def test_unknown_model_or_version_is_not_found_in_every_method(triton) -> None:
    for call in (
        lambda: triton.get_model_metadata("resnet50"),
        lambda: triton.get_model_config("resnet50"),
        lambda: triton.get_model_config(MODEL, model_version="2"),
        lambda: triton.get_inference_statistics("resnet50"),
        lambda: triton.infer("resnet50", [bytes_input([encoded_image(1)])]),
    ):
        with pytest.raises(InferenceServerException) as raised:
            call()
        assert raised.value.status() == "StatusCode.NOT_FOUND", raised.value.message()


def test_statistics_count_what_ran_and_equal_http(triton, served: Served) -> None:
    def stats():
        return triton.get_inference_statistics(MODEL).model_stats[0]

    before = stats()
    blobs = [encoded_image(300 + i) for i in range(3)]
    triton.infer(MODEL, [bytes_input(blobs)], outputs=[grpcclient.InferRequestedOutput("pooled")])
    triton.infer(
        MODEL, [tensor_input(images_batch(2, seed=3))], outputs=[grpcclient.InferRequestedOutput("pooled")]
    )
    with pytest.raises(InferenceServerException):
        triton.infer(MODEL, [bytes_input([b"not an image"])])
    after = stats()
    assert after.inference_count - before.inference_count == 3 + 2  # images, as Triton counts
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    assert after.inference_stats.fail.count - before.inference_stats.fail.count == 1
    assert after.execution_count > before.execution_count
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    # Nothing ran in between: both transports read the same counters.
    http = httpx.get(served.http(f"/v2/models/{MODEL}/stats"), timeout=10).json()
    grpc_all = triton.get_inference_statistics()  # no name: every model
    assert grpc_all == json_format.ParseDict(http, service_pb2.ModelStatisticsResponse())


# --------------------------------------------------------------------------------------------------
# Inference


def test_tensor_infer_equals_direct_onnx_runtime_and_echoes_the_request_id(triton, session) -> None:
    batch = images_batch(2, seed=11)
    outputs = [grpcclient.InferRequestedOutput(name) for name in ("logits", "stage4")]
    result = triton.infer(MODEL, [tensor_input(batch)], outputs=outputs, request_id="req-7")
    logits, stage4 = session.run(["logits", "stage4"], {INPUT_NAME: batch})
    np.testing.assert_allclose(result.as_numpy("logits"), logits, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("stage4"), stage4, atol=1e-5)
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-7", MODEL, "1")
    assert len(response.raw_output_contents) == 2  # outputs travel raw, as Triton sends them


def test_tensor_infer_in_typed_fp32_contents(stub, session) -> None:
    batch = images_batch(1, seed=12)
    tensor = Tensor(name=INPUT_NAME, datatype="FP32", shape=list(batch.shape))
    tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    request = service_pb2.ModelInferRequest(model_name=MODEL, inputs=[tensor])
    request.outputs.add(name="logits")
    response = stub.ModelInfer(request, timeout=60)
    (expected,) = session.run(["logits"], {INPUT_NAME: batch})
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(response.outputs[0].shape)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_default_outputs_are_all_six(triton, reference: Reference) -> None:
    blob = encoded_image(77)
    result = triton.infer(MODEL, [bytes_input([blob])])
    assert [o.name for o in result.get_response().outputs] == list(OUTPUT_NAMES)
    expected = reference.outputs(blob, list(OUTPUT_NAMES))
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(result.as_numpy(name)[0], expected[name], atol=1e-5)


def test_image_bytes_with_classification_equal_classify(triton, served: Served, reference: Reference) -> None:
    blobs = [encoded_image(90 + i) for i in range(2)]
    outputs = [
        grpcclient.InferRequestedOutput("logits", class_count=3),
        grpcclient.InferRequestedOutput("pooled"),
    ]
    result = triton.infer(MODEL, [bytes_input(blobs)], outputs=outputs)
    strings = result.as_numpy("logits")
    assert strings.shape == (2, 3)
    for row, pooled, blob in zip(strings, result.as_numpy("pooled"), blobs, strict=True):
        expected = reference.outputs(blob, ["logits", "pooled"])
        assert_classification_matches_classify(row, classify(served, blob, 3), expected["logits"])
        np.testing.assert_allclose(pooled, expected["pooled"], atol=1e-5)


def test_image_bytes_in_typed_bytes_contents_equal_classify(
    stub, served: Served, reference: Reference
) -> None:
    blobs = [encoded_image(95), encoded_image(96, fmt="JPEG")]
    tensor = Tensor(name="image_bytes", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend(blobs)
    request = service_pb2.ModelInferRequest(model_name=MODEL, inputs=[tensor])
    output = request.outputs.add(name="logits")
    output.parameters["classification"].int64_param = 4
    response = stub.ModelInfer(request, timeout=60)
    assert (response.outputs[0].datatype, list(response.outputs[0].shape)) == ("BYTES", [2, 4])
    raw, strings, offset = response.raw_output_contents[0], [], 0
    while offset < len(raw):  # length-prefixed, as Triton sends BYTES outputs
        (length,) = struct.unpack_from("<I", raw, offset)
        strings.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    for row, blob in zip(np.array(strings).reshape(2, 4), blobs, strict=True):
        assert_classification_matches_classify(
            row, classify(served, blob, 4), reference.outputs(blob, ["logits"])["logits"]
        )


def test_concurrent_distinct_images_each_get_their_own_answer(served: Served, reference: Reference) -> None:
    blobs = [encoded_image(1000 + i) for i in range(64)]
    with grpcclient.InferenceServerClient(served.address) as client:

        def infer(blob: bytes) -> np.ndarray:
            result = client.infer(
                MODEL, [bytes_input([blob])], outputs=[grpcclient.InferRequestedOutput("logits")]
            )
            return result.as_numpy("logits")[0]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(infer, blobs))
    for blob, logits in zip(blobs, answers, strict=True):
        np.testing.assert_allclose(logits, reference.outputs(blob, ["logits"])["logits"], atol=1e-5)
    assert len({int(np.argmax(logits)) for logits in answers}) > 8  # the images are told apart


# --------------------------------------------------------------------------------------------------
# Hostile requests


def _tensor(name: str, datatype: str, shape: list[int]) -> Tensor:
    return Tensor(name=name, datatype=datatype, shape=shape)


def _request(*inputs: Tensor, raw: list[bytes] | None = None, **fields) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=fields.pop("model_name", MODEL), inputs=list(inputs), **fields
    )
    request.raw_input_contents.extend(raw or [])
    return request


def _png_request(**fields) -> service_pb2.ModelInferRequest:
    return _request(_tensor("image_bytes", "BYTES", [1]), raw=[length_prefixed([encoded_image(5)])], **fields)


def _with_output(request, name: str = "logits", **params) -> service_pb2.ModelInferRequest:
    output = request.outputs.add(name=name)
    for key, value in params.items():
        setattr(output.parameters[key], *value)
    return request


def _with_parameter(request, key: str, field: str | None, value=None) -> service_pb2.ModelInferRequest:
    param = request.parameters[key]
    if field is not None:
        setattr(param, field, value)
    return request


def _typed_in_wrong_field() -> service_pb2.ModelInferRequest:
    tensor = _tensor(INPUT_NAME, "FP32", [1, 3, IMAGE_SIZE, IMAGE_SIZE])
    tensor.contents.int_contents.extend([0] * 3 * IMAGE_SIZE**2)
    return _request(tensor)


def _typed_and_raw() -> service_pb2.ModelInferRequest:
    tensor = _tensor("image_bytes", "BYTES", [1])
    tensor.contents.bytes_contents.append(encoded_image(5))
    return _request(tensor, raw=[length_prefixed([encoded_image(5)])])


ONE_IMAGE = np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.float32).tobytes()
HOSTILE = {
    "unknown model": (lambda: _png_request(model_name="resnet50"), grpc.StatusCode.NOT_FOUND),
    "unknown version": (lambda: _png_request(model_version="2"), grpc.StatusCode.NOT_FOUND),
    "version not a number": (lambda: _png_request(model_version="latest"), grpc.StatusCode.INVALID_ARGUMENT),
    "no input": (_request, grpc.StatusCode.INVALID_ARGUMENT),
    "unknown input": (
        lambda: _request(_tensor("pixels", "FP32", [1]), raw=[b"\0" * 4]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "both inputs": (
        lambda: _request(
            _tensor(INPUT_NAME, "FP32", [1, 3, IMAGE_SIZE, IMAGE_SIZE]),
            _tensor("image_bytes", "BYTES", [1]),
            raw=[ONE_IMAGE, length_prefixed([encoded_image(5)])],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "same input twice": (
        lambda: _request(
            _tensor("image_bytes", "BYTES", [1]),
            _tensor("image_bytes", "BYTES", [1]),
            raw=[length_prefixed([encoded_image(5)])] * 2,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "unknown datatype": (
        lambda: _request(_tensor(INPUT_NAME, "FLOAT", [1, 3, IMAGE_SIZE, IMAGE_SIZE]), raw=[ONE_IMAGE]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "wrong datatype": (
        lambda: _request(
            _tensor(INPUT_NAME, "FP16", [1, 3, IMAGE_SIZE, IMAGE_SIZE]),
            raw=[ONE_IMAGE[: len(ONE_IMAGE) // 2]],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "wrong shape": (
        lambda: _request(_tensor(INPUT_NAME, "FP32", [1, 3, 8, 8]), raw=[b"\0" * 4 * 3 * 64]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "NaN pixels": (
        lambda: _request(
            _tensor(INPUT_NAME, "FP32", [1, 3, IMAGE_SIZE, IMAGE_SIZE]),
            raw=[np.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), np.nan, np.float32).tobytes()],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "negative dimension": (
        lambda: _request(_tensor(INPUT_NAME, "FP32", [-1, 3, IMAGE_SIZE, IMAGE_SIZE]), raw=[ONE_IMAGE]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "raw size disagrees with shape": (
        lambda: _request(_tensor(INPUT_NAME, "FP32", [2, 3, IMAGE_SIZE, IMAGE_SIZE]), raw=[ONE_IMAGE]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "raw contents for fewer inputs": (
        lambda: _request(_tensor("image_bytes", "BYTES", [1]), raw=[b"", b""]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "typed contents in the wrong field": (_typed_in_wrong_field, grpc.StatusCode.INVALID_ARGUMENT),
    "typed and raw contents": (_typed_and_raw, grpc.StatusCode.INVALID_ARGUMENT),
    "no data at all": (
        lambda: _request(_tensor("image_bytes", "BYTES", [1])),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "not an image": (
        lambda: _request(
            _tensor("image_bytes", "BYTES", [1]), raw=[length_prefixed([b"GIF89a but not really"])]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "BYTES length past the end": (
        lambda: _request(_tensor("image_bytes", "BYTES", [1]), raw=[struct.pack("<I", 2**31) + b"\x89PNG"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "BYTES count disagrees with shape": (
        lambda: _request(_tensor("image_bytes", "BYTES", [3]), raw=[length_prefixed([encoded_image(5)] * 2)]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "unknown output": (
        lambda: _with_output(_png_request(), "probabilities"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "negative classification": (
        lambda: _with_output(_png_request(), classification=("int64_param", -2)),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "classification as a string": (
        lambda: _with_output(_png_request(), classification=("string_param", "5")),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "parameter without a value": (
        lambda: _with_parameter(_png_request(), "priority", None),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "shared memory": (
        lambda: _with_output(_png_request(), shared_memory_region=("string_param", "region0")),
        grpc.StatusCode.UNIMPLEMENTED,
    ),
    "too many images": (
        lambda: _request(
            _tensor("image_bytes", "BYTES", [17, 1]), raw=[length_prefixed([encoded_image(5)] * 17)]
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "batch dimension in the billions": (
        lambda: _request(_tensor(INPUT_NAME, "FP32", [2**40, 3, IMAGE_SIZE, IMAGE_SIZE]), raw=[ONE_IMAGE]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "image over the byte limit": (
        lambda: _request(
            _tensor("image_bytes", "BYTES", [1]),
            raw=[length_prefixed([encoded_image(5) + b"\0" * TEST_LIMITS["max_image_bytes"]])],
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "image over the pixel limit": (
        lambda: _request(
            _tensor("image_bytes", "BYTES", [1]), raw=[length_prefixed([png_declaring(50_000, 50_000)])]
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "message over the request limit": (
        lambda: _request(_tensor("image_bytes", "BYTES", [1]), raw=[b"\0" * (INFLIGHT_BYTES + 1)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_request_gets_its_status_and_the_server_keeps_serving(stub, triton, case: str) -> None:
    build, expected = HOSTILE[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(build(), timeout=60)
    assert raised.value.code() == expected, raised.value.details()
    assert raised.value.details()  # a message that says what is wrong
    result = triton.infer(
        MODEL, [bytes_input([encoded_image(6)])], outputs=[grpcclient.InferRequestedOutput("pooled")]
    )
    assert result.as_numpy("pooled").shape == (1, 32)


def test_requests_are_counted_per_transport_method_and_status(served: Served, stub, triton) -> None:
    def count(route: str, status: str) -> float:
        return served.service.labelled_metric(
            "transxnet_requests_total", transport="grpc", route=route, status=status
        )

    ok, invalid = count("ModelInfer", "OK"), count("ModelInfer", "INVALID_ARGUMENT")
    triton.infer(
        MODEL, [bytes_input([encoded_image(7)])], outputs=[grpcclient.InferRequestedOutput("pooled")]
    )
    with pytest.raises(grpc.RpcError):
        stub.ModelInfer(_request(), timeout=60)
    triton.is_server_live()
    assert count("ModelInfer", "OK") == ok + 1
    assert count("ModelInfer", "INVALID_ARGUMENT") == invalid + 1
    assert count("ServerLive", "OK") >= 1
    http = served.service.labelled_metric("transxnet_requests_total", transport="http")
    assert http >= 1  # /classify and /v2 over HTTP are counted apart


def test_request_id_comes_back_in_the_trailers(stub) -> None:
    _, call = stub.ModelInfer.with_call(_png_request(), metadata=(("x-request-id", "trace-42"),), timeout=60)
    assert ("x-request-id", "trace-42") in tuple(call.trailing_metadata())
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(_request(), metadata=(("x-request-id", "trace-43"),), timeout=60)
    assert ("x-request-id", "trace-43") in tuple(raised.value.trailing_metadata())


# --------------------------------------------------------------------------------------------------
# Health service


def test_health_service_serves_while_ready(served: Served) -> None:
    with grpc.insecure_channel(served.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        stream = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()
        unknown = health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        unknown.cancel()


# --------------------------------------------------------------------------------------------------
# The real model


def test_real_transxnet_t_over_grpc_equals_direct_onnx_runtime_and_classify(exported_t_path: Path) -> None:
    session = ort.InferenceSession(str(exported_t_path), providers=["CPUExecutionProvider"])
    metadata = read_metadata(session)
    blobs = [encoded_image(500 + i, size=(320, 240)) for i in range(2)]
    port = free_port()
    with service_process(exported_t_path, grpc_port=str(port), max_batch_size="2") as service:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as triton:
            assert triton.is_model_ready(metadata.variant)
            outputs = [
                grpcclient.InferRequestedOutput("logits", class_count=5),
                grpcclient.InferRequestedOutput("pooled"),
            ]
            by_bytes = triton.infer(metadata.variant, [bytes_input(blobs)], outputs=outputs)
            pixels = np.random.default_rng(0).normal(0, 1, (1, 3, metadata.image_size, metadata.image_size))
            by_tensor = triton.infer(
                metadata.variant,
                [tensor_input(pixels.astype(np.float32))],
                outputs=[grpcclient.InferRequestedOutput("logits")],
            )
        answers = [
            httpx.post(
                service.url("/classify"), content=blob, headers=PNG, params={"top_k": 5}, timeout=120
            ).json()
            for blob in blobs
        ]
    (tensor_logits,) = session.run(["logits"], {INPUT_NAME: pixels.astype(np.float32)})
    np.testing.assert_allclose(by_tensor.as_numpy("logits"), tensor_logits, atol=1e-4)
    assert by_bytes.as_numpy("pooled").shape == (2, metadata.embed_dim)
    for row, answer in zip(by_bytes.as_numpy("logits"), answers, strict=True):
        predictions = answer["results"][0]["predictions"]
        texts = [s.decode() for s in row]
        assert [t.split(":", 2)[1:] for t in texts] == [[str(p["index"]), p["label"]] for p in predictions]
