"""The Open Inference Protocol (KServe v2) endpoints: the codec against tritonclient's own request
builder and response parser, malformed requests through the app, and Triton's `InferenceServerClient`
unmodified against a real uvicorn process (the fake model; one test with the real exported T).
References are independent: a direct ONNX Runtime run, /classify, and hand-written expectations."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from app.http.errors import triton_status as protocol_status
from app.imaging import ImagePreprocessor
from app.v2.protocol import (
    ResponseOutput,
    classification_strings,
    decode_bytes,
    decode_numeric,
    encode_infer_response,
    parse_infer_request,
)
from runtime.metadata import INPUT_NAME, OUTPUT_NAMES
from runtime.session import read_metadata
from tests.app.conftest import TEST_LIMITS, Reference, make_settings, running_app, wait_ready
from tests.support.fake_model import IMAGE_SIZE, NUM_CLASSES, fake_metadata
from tests.support.images import encoded_image
from tests.support.processes import free_port, running_process, service_env, status_of, wait_for
from tests.support.runners import GatedRunner

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

MODEL = fake_metadata().variant
INFER = f"/v2/models/{MODEL}/infer"
PNG = {"content-type": "image/png"}
HEADER = "Inference-Header-Content-Length"


def tensor_input(array: np.ndarray, *, binary: bool, name: str = INPUT_NAME, datatype: str = "FP32"):
    item = httpclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def bytes_input(blobs: list[bytes], shape: list[int] | None = None):
    array = np.array(blobs, dtype=object).reshape(shape or [len(blobs), 1])
    item = httpclient.InferInput("image_bytes", list(array.shape), "BYTES")
    item.set_data_from_numpy(array, binary_data=True)
    return item


def request_body(inputs, outputs=None, **kwargs) -> tuple[bytes, dict[str, str]]:
    """A request exactly as tritonclient would send it (its public body builder)."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, **kwargs
    )
    return body, ({HEADER: str(json_size)} if json_size is not None else {})


def images_batch(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (count, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def top_k_strings(logits: np.ndarray, k: int, labels) -> list[str]:
    """Hand-written reference for Triton's classification strings ("%f:index:label")."""
    order = sorted(range(len(logits)), key=lambda i: (-float(logits[i]), i))[:k]
    # printf-style on purpose: the C "%f" that std::to_string uses is the reference.
    return ["%f:%d:%s" % (float(logits[i]), i, labels[i]) for i in order]  # noqa: UP031


# --------------------------------------------------------------------------------------------------
# Codec


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_request_parses_to_the_tensor_it_was_built_from(binary: bool) -> None:
    batch = images_batch(2)
    body, headers = request_body(
        [tensor_input(batch, binary=binary)],
        [httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)],
        request_id="req-7",
    )
    parsed = parse_infer_request(body, headers.get(HEADER))
    assert parsed.id == "req-7"
    (item,) = parsed.inputs
    assert (item.name, item.datatype, item.shape) == (INPUT_NAME, "FP32", batch.shape)
    np.testing.assert_array_equal(decode_numeric(item), batch)
    (output,) = parsed.outputs or []
    assert (output.name, output.binary, output.classification) == ("logits", binary, 3)


def test_bytes_input_keeps_every_element_byte_for_byte() -> None:
    blobs = [b"", b"\x00\xff\x10", encoded_image(3)]
    body, headers = request_body([bytes_input(blobs, [3])])
    (item,) = parse_infer_request(body, headers[HEADER]).inputs
    assert decode_bytes(item) == blobs


def test_request_without_outputs_asks_for_binary_outputs_as_tritonclient_does() -> None:
    body, headers = request_body([tensor_input(images_batch(1), binary=True)])
    parsed = parse_infer_request(body, headers[HEADER])
    assert parsed.outputs is None
    assert parsed.binary_data_output is True


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_response_is_read_back_by_tritonclient_infer_result(binary: bool) -> None:
    values = np.arange(12, dtype=np.float32).reshape(2, 6) / 7
    strings = np.array([[b"1.000000:0:a"], [b"2.000000:1:b"]], dtype=object)
    body, header_length = encode_infer_response(
        model_name=MODEL,
        model_version="1",
        request_id="abc",
        outputs=[
            ResponseOutput("pooled", "FP32", values, binary),
            ResponseOutput("logits", "BYTES", strings, binary),
        ],
    )
    assert (header_length is not None) == binary
    result = httpclient.InferenceServerClient.parse_response_body(body, header_length=header_length)
    np.testing.assert_array_equal(result.as_numpy("pooled"), values)
    expected = strings if binary else strings.astype(str)
    np.testing.assert_array_equal(result.as_numpy("logits"), expected)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (MODEL, "1", "abc")


def test_classification_strings_follow_triton_examples_raw_values_and_labels() -> None:
    # The classification extension's own example: [1, 5, 10, 4] -> top-2 indices [2, 1].
    values = np.array([[1, 5, 10, 4], [0.5, -1, 0.5, 3.25]], dtype=np.float32)
    strings = classification_strings(values, 2, ["a", "b", "c", "d"])
    assert strings.tolist() == [[b"10.000000:2:c", b"5.000000:1:b"], [b"3.250000:3:d", b"0.500000:0:a"]]
    # No labels (outputs other than logits): "<value>:<index>"; k is capped at the output size.
    assert classification_strings(values[:1], 9, None).shape == (1, 4)
    assert classification_strings(values[:1], 1, None).tolist() == [[b"10.000000:2"]]


@pytest.mark.parametrize(
    ("service_status", "triton_status"),
    [
        (400, 400),
        (404, 404),
        (413, 400),
        (415, 400),
        (422, 400),
        (501, 501),
        (503, 503),
        (504, 503),
        (500, 500),
    ],
)
def test_service_statuses_map_to_tritons(service_status: int, triton_status: int) -> None:
    assert protocol_status(service_status) == triton_status


# --------------------------------------------------------------------------------------------------
# Through the app (in process)


@pytest.mark.anyio
async def test_server_and_model_metadata_describe_both_inputs_and_every_output(
    client: httpx.AsyncClient,
) -> None:
    server = (await client.get("/v2")).json()
    assert set(server["extensions"]) >= {"binary_tensor_data", "classification"}
    metadata = (await client.get(f"/v2/models/{MODEL}")).json()
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": [-1, 3, IMAGE_SIZE, IMAGE_SIZE]},
        {"name": "image_bytes", "datatype": "BYTES", "shape": [-1, 1]},
    ]
    shapes = {o["name"]: o["shape"] for o in metadata["outputs"]}
    assert list(shapes) == list(OUTPUT_NAMES)
    assert shapes["logits"] == [-1, NUM_CLASSES]
    assert shapes["stage4"] == [-1, 32, 7, 7]
    assert (await client.get(f"/v2/models/{MODEL}/versions/1")).json() == metadata


@pytest.mark.anyio
async def test_json_tensor_request_equals_direct_onnx_runtime(
    client: httpx.AsyncClient, fake_model_path
) -> None:
    batch = images_batch(3, seed=5)
    request = {
        "inputs": [
            {"name": "images", "datatype": "FP32", "shape": list(batch.shape), "data": batch.tolist()}
        ],
        "outputs": [{"name": "pooled"}, {"name": "stage2"}],
    }
    response = await client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    assert HEADER not in response.headers
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert list(outputs) == ["pooled", "stage2"]
    session = ort.InferenceSession(str(fake_model_path), providers=["CPUExecutionProvider"])
    pooled, stage2 = session.run(["pooled", "stage2"], {INPUT_NAME: batch})
    assert outputs["stage2"]["shape"] == list(stage2.shape)
    np.testing.assert_allclose(np.reshape(outputs["pooled"]["data"], pooled.shape), pooled, atol=1e-5)
    np.testing.assert_allclose(np.reshape(outputs["stage2"]["data"], stage2.shape), stage2, atol=1e-5)


@pytest.mark.anyio
async def test_encoded_images_classify_like_classify_endpoint(
    client: httpx.AsyncClient, reference: Reference
) -> None:
    blobs = [encoded_image(40 + i) for i in range(3)]
    body, headers = request_body(
        [bytes_input(blobs)], [httpclient.InferRequestedOutput("logits", binary_data=True, class_count=5)]
    )
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=int(response.headers[HEADER])
    )
    strings = result.as_numpy("logits")
    assert strings.shape == (3, 5)
    labels = fake_metadata().labels
    for row, blob in zip(strings, blobs, strict=True):
        logits = reference.outputs(blob, ["logits"])["logits"]
        expected = top_k_strings(logits, 5, labels)
        assert [s.decode().split(":")[1:] for s in row] == [e.split(":")[1:] for e in expected]
        np.testing.assert_allclose(
            [float(s.split(b":")[0]) for s in row], logits[np.argsort(-logits)[:5]], atol=1e-5
        )
        classify = (await client.post("/classify", content=blob, headers=PNG)).json()
        assert [int(s.split(b":")[1]) for s in row] == [
            p["index"] for p in classify["results"][0]["predictions"]
        ]


@pytest.mark.anyio
async def test_versioned_infer_and_onnx_file_stem_alias_are_served(
    client: httpx.AsyncClient, fake_model_path
) -> None:
    body, headers = request_body(
        [bytes_input([encoded_image(1)], [1])], [httpclient.InferRequestedOutput("pooled")]
    )
    for path in (f"/v2/models/{MODEL}/versions/1/infer", f"/v2/models/{fake_model_path.stem}/infer"):
        response = await client.post(path, content=body, headers=headers)
        assert response.status_code == 200, (path, response.text)
        assert json.loads(response.content[: int(response.headers[HEADER])])["model_name"] == MODEL


def _json_images(shape: list[int], datatype: str = "FP32", count: int | None = None) -> dict:
    return {
        "name": "images",
        "datatype": datatype,
        "shape": shape,
        "data": [0.0] * (count or int(np.prod(shape))),
    }


SIZE = IMAGE_SIZE
MALFORMED = {
    "wrong datatype": ({"inputs": [_json_images([1, 3, SIZE, SIZE], "FP64")]}, "data-type is 'FP64'"),
    "wrong channels": ({"inputs": [_json_images([1, 4, SIZE, SIZE])]}, "unexpected shape"),
    "wrong height": ({"inputs": [_json_images([1, 3, SIZE - 1, SIZE])]}, "unexpected shape"),
    "data length vs shape": ({"inputs": [_json_images([1, 3, SIZE, SIZE], count=10)]}, "needs"),
    "unknown input": (
        {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
        "unexpected inference input 'pixels'",
    ),
    "no input": ({"inputs": []}, "exactly one input"),
    "both inputs": (
        {
            "inputs": [
                _json_images([1, 3, SIZE, SIZE]),
                {"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["x"]},
            ]
        },
        "exactly one input",
    ),
    "unknown output": (
        {"inputs": [_json_images([1, 3, SIZE, SIZE])], "outputs": [{"name": "probs"}]},
        "unexpected inference output 'probs'",
    ),
    "unknown datatype": ({"inputs": [_json_images([1, 3, SIZE, SIZE], "FLOAT")]}, "'datatype'"),
    "unnamed input": (
        {"inputs": [{**_json_images([1, 3, SIZE, SIZE]), "name": ""}]},
        "input 0 has no 'name'",
    ),
    "repeated input": (
        {"inputs": [_json_images([1, 3, SIZE, SIZE])] * 2},
        "input 'images' is given more than once",
    ),
    "unnamed output": (
        {"inputs": [_json_images([1, 3, SIZE, SIZE])], "outputs": [{"name": "logits"}, {}]},
        "output 1 has no 'name'",
    ),
    "repeated output": (
        {"inputs": [_json_images([1, 3, SIZE, SIZE])], "outputs": [{"name": "logits"}, {"name": "logits"}]},
        "output 'logits' is requested more than once",
    ),
    "not an image": (
        {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["hello"]}]},
        "not a recognisable image",
    ),
    "too many images": (
        {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [17], "data": ["x"] * 17}]},
        "at most 16 images",
    ),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_request_gets_400_with_protocol_error_json(
    client: httpx.AsyncClient, case: str
) -> None:
    request, fragment = MALFORMED[case]
    response = await client.post(INFER, json=request)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"]
    assert fragment in response.json()["error"]


@pytest.mark.anyio
async def test_binary_size_that_disagrees_with_shape_is_400(client: httpx.AsyncClient) -> None:
    body, headers = request_body([tensor_input(images_batch(2), binary=True)])
    header = json.loads(body[: int(headers[HEADER])])
    header["inputs"][0]["shape"] = [1, 3, SIZE, SIZE]  # 2 images of data for a batch of 1
    header_bytes = json.dumps(header).encode()
    body = header_bytes + body[int(headers[HEADER]) :]
    response = await client.post(INFER, content=body, headers={HEADER: str(len(header_bytes))})
    assert response.status_code == 400
    assert "bytes of binary data" in response.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "header_length", "fragment"),
    [
        (b'{"inputs": []}', "999", "must lie within the body"),
        (b"not json at all", "8", "not valid JSON"),
        (b'{"inputs": []}', "twelve", "must be an integer"),
        (b'{"inputs": []}\x00\x00\x00\x00', None, "not valid JSON"),
        (b'{"inputs": []}trailing', "14", "bytes after the inputs' binary data"),
    ],
    ids=["beyond body", "non-JSON header", "non-numeric", "binary without header", "extra bytes"],
)
async def test_bad_binary_framing_is_400(
    client: httpx.AsyncClient, body: bytes, header_length: str | None, fragment: str
) -> None:
    headers = {HEADER: header_length} if header_length is not None else {}
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


@pytest.mark.anyio
async def test_unknown_model_or_version_is_404_and_bad_version_400(client: httpx.AsyncClient) -> None:
    body = {"inputs": [_json_images([1, 3, SIZE, SIZE])]}
    for path in ("/v2/models/resnet50/infer", f"/v2/models/{MODEL}/versions/2/infer", "/v2/models/resnet50"):
        response = await client.post(path, json=body) if path.endswith("infer") else await client.get(path)
        assert response.status_code == 404, path
        assert "unknown" in response.json()["error"]
    assert (await client.get("/v2/models/resnet50/ready")).status_code == 404
    response = await client.get(f"/v2/models/{MODEL}/versions/latest")
    assert response.status_code == 400 and "version" in response.json()["error"]


@pytest.mark.anyio
async def test_shared_memory_is_501_unsupported(client: httpx.AsyncClient) -> None:
    shape = [1, 3, SIZE, SIZE]
    request = {
        "inputs": [
            {
                "name": "images",
                "datatype": "FP32",
                "shape": shape,
                "parameters": {
                    "shared_memory_region": "r",
                    "shared_memory_byte_size": 4 * int(np.prod(shape)),
                },
            }
        ]
    }
    response = await client.post(INFER, json=request)
    assert response.status_code == 501
    assert "shared memory" in response.json()["error"]


@pytest.mark.anyio
async def test_v2_errors_use_protocol_shape_while_other_routes_keep_the_house_shape(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/v2/nothing-here")).json() == {"error": "Not Found"}
    assert (await client.post("/v2/health/live")).status_code == 405
    house = await client.post("/classify", content=b"", headers=PNG)
    assert set(house.json()["error"]) == {"code", "message"}


@pytest.mark.anyio
async def test_gzip_request_body_is_accepted(client: httpx.AsyncClient) -> None:
    import gzip

    batch = images_batch(1)
    body, headers = request_body(
        [tensor_input(batch, binary=True)], [httpclient.InferRequestedOutput("pooled")]
    )
    response = await client.post(
        INFER, content=gzip.compress(body), headers={**headers, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 200, response.text


@pytest.mark.anyio
async def test_readiness_endpoints_follow_warm_up(fake_model_path) -> None:
    gate = threading.Event()
    settings = make_settings(fake_model_path)
    async with running_app(
        settings, lambda inner: GatedRunner(inner, gate, warmup_calls=0), ready=False
    ) as client:
        assert (await client.get("/v2/health/live")).status_code == 200
        assert (await client.get("/v2/health/ready")).status_code == 503
        not_ready = await client.get(f"/v2/models/{MODEL}/ready")
        assert not_ready.status_code == 503 and "warming up" in not_ready.json()["error"]
        refused = await client.post(INFER, json={"inputs": [_json_images([1, 3, SIZE, SIZE])]})
        assert refused.status_code == 503
        gate.set()
        await wait_ready(client)
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert (await client.get(f"/v2/models/{MODEL}/versions/1/ready")).status_code == 200
        client.app.state.service.readiness.begin_draining()  # type: ignore[attr-defined]
        assert (await client.get("/v2/health/ready")).status_code == 503


# --------------------------------------------------------------------------------------------------
# tritonclient, unmodified, against a real uvicorn process


@pytest.fixture(scope="module")
def triton_url(fake_model_path) -> Iterator[str]:
    port = free_port()
    env = service_env(
        fake_model_path,
        TRANSXNET_PORT=str(port),
        TRANSXNET_MAX_BATCH_SIZE="8",
        **{f"TRANSXNET_{k.upper()}": str(v) for k, v in TEST_LIMITS.items()},
    )
    with running_process([sys.executable, "-m", "app"], env) as process:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: status_of(f"{base}/readyz") == 200 or process.poll() is not None, timeout_s=60)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def triton(triton_url: str) -> Iterator:
    with httpclient.InferenceServerClient(triton_url, network_timeout=120) as client:
        yield client


@pytest.mark.slow
def test_tritonclient_health_and_metadata(triton) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(MODEL)
    assert triton.is_model_ready(MODEL, model_version="1")
    assert not triton.is_model_ready("resnet50")
    assert not triton.is_model_ready(MODEL, model_version="3")
    assert "classification" in triton.get_server_metadata()["extensions"]
    metadata = triton.get_model_metadata(MODEL)
    assert [i["name"] for i in metadata["inputs"]] == ["images", "image_bytes"]
    with pytest.raises(InferenceServerException) as raised:
        triton.get_model_metadata("resnet50")
    assert raised.value.status() == "404"


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_tensor_infer_equals_direct_onnx_runtime(triton, fake_model_path, binary: bool) -> None:
    batch = images_batch(2, seed=11)
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("logits", "stage4")]
    result = triton.infer(MODEL, [tensor_input(batch, binary=binary)], outputs=outputs, request_id="r1")
    session = ort.InferenceSession(str(fake_model_path), providers=["CPUExecutionProvider"])
    logits, stage4 = session.run(["logits", "stage4"], {INPUT_NAME: batch})
    np.testing.assert_allclose(result.as_numpy("logits"), logits, atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("stage4"), stage4, atol=1e-5)
    assert result.get_response()["id"] == "r1"


@pytest.mark.slow
def test_tritonclient_default_outputs_are_all_six_in_binary(triton, reference: Reference) -> None:
    blob = encoded_image(77)
    result = triton.infer(MODEL, [bytes_input([blob])])
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == list(OUTPUT_NAMES)
    expected = reference.outputs(blob, list(OUTPUT_NAMES))
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(result.as_numpy(name)[0], expected[name], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_classification_equals_classify(
    triton, triton_url, reference: Reference, binary: bool
) -> None:
    blobs = [encoded_image(90 + i) for i in range(2)]
    output = httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)
    result = triton.infer(MODEL, [bytes_input(blobs)], outputs=[output])
    strings = result.as_numpy("logits")
    assert strings.shape == (2, 3)
    for row, blob in zip(strings, blobs, strict=True):
        texts = [s.decode() if isinstance(s, bytes) else s for s in row]
        classify = httpx.post(
            f"http://{triton_url}/classify", content=blob, headers=PNG, params={"top_k": 3}, timeout=60
        ).json()
        predictions = classify["results"][0]["predictions"]
        assert [t.split(":", 2)[1:] for t in texts] == [[str(p["index"]), p["label"]] for p in predictions]
        logits = reference.outputs(blob, ["logits"])["logits"]
        np.testing.assert_allclose(
            [float(t.split(":")[0]) for t in texts], logits[[p["index"] for p in predictions]], atol=1e-5
        )


@pytest.mark.slow
def test_tritonclient_sees_protocol_errors_with_tritons_statuses(triton) -> None:
    cases = [
        (dict(model_name="resnet50", inputs=[bytes_input([encoded_image(1)])]), "404"),
        (dict(model_name=MODEL, inputs=[bytes_input([b"not an image"])]), "400"),
        (
            dict(model_name=MODEL, inputs=[tensor_input(np.zeros((1, 3, 8, 8), np.float32), binary=True)]),
            "400",
        ),
        (dict(model_name=MODEL, inputs=[bytes_input([encoded_image(1)])], model_version="9"), "404"),
    ]
    for kwargs, status in cases:
        with pytest.raises(InferenceServerException) as raised:
            triton.infer(**kwargs)
        assert raised.value.status() == status, raised.value.message()


@pytest.mark.slow
def test_real_transxnet_t_through_tritonclient_equals_direct_onnx_runtime_and_classify(
    exported_t_path,
) -> None:
    session = ort.InferenceSession(str(exported_t_path), providers=["CPUExecutionProvider"])
    metadata = read_metadata(session)
    preprocess = ImagePreprocessor(metadata, max_image_bytes=20 * 2**20, max_image_pixels=40_000_000)
    blobs = [encoded_image(500 + i, size=(320, 240)) for i in range(2)]
    batch = np.stack([preprocess(blob) for blob in blobs])
    logits, pooled = session.run(["logits", "pooled"], {INPUT_NAME: batch})

    port = free_port()
    env = service_env(exported_t_path, TRANSXNET_PORT=str(port), TRANSXNET_MAX_BATCH_SIZE="2")
    with running_process([sys.executable, "-m", "app"], env) as process:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: status_of(f"{base}/readyz") == 200 or process.poll() is not None, timeout_s=300)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        with httpclient.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=300) as triton:
            assert triton.is_model_ready(metadata.variant)
            by_bytes = triton.infer(
                metadata.variant,
                [bytes_input(blobs)],
                outputs=[
                    httpclient.InferRequestedOutput("logits", class_count=5),
                    httpclient.InferRequestedOutput("pooled"),
                ],
            )
            by_tensor = triton.infer(
                metadata.variant,
                [tensor_input(batch, binary=True)],
                outputs=[httpclient.InferRequestedOutput("logits")],
            )
        classify = [
            httpx.post(f"{base}/classify", content=blob, headers=PNG, timeout=120).json() for blob in blobs
        ]

    np.testing.assert_allclose(by_tensor.as_numpy("logits"), logits, atol=1e-4)
    np.testing.assert_allclose(by_bytes.as_numpy("pooled"), pooled, atol=1e-4)
    strings = by_bytes.as_numpy("logits")
    for row, image_logits, answer in zip(strings, logits, classify, strict=True):
        texts = [s.decode() for s in row]
        expected = top_k_strings(image_logits, 5, metadata.labels)
        assert [t.split(":", 1)[1] for t in texts] == [e.split(":", 1)[1] for e in expected]
        assert [int(t.split(":")[1]) for t in texts] == [
            p["index"] for p in answer["results"][0]["predictions"]
        ]
