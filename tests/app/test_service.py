"""Service behaviour with injected runners: back-pressure, timeouts, failures, readiness, draining,
metrics, metadata and the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import re
import threading

import anyio
import pytest

from app.logging_setup import RequestIdFilter
from app.service import build_service
from tests.app.conftest import assert_matches_reference, make_settings, running_app, wait_ready, wait_until
from tests.support.fake_model import STAGE_CHANNELS, fake_metadata
from tests.support.images import encoded_image
from tests.support.runners import FailingRunner, GatedRunner, NanRunner

pytestmark = pytest.mark.anyio

PNG = {"content-type": "image/png"}


def classify(client, seed: int):
    return asyncio.create_task(client.post("/classify", content=encoded_image(seed), headers=PNG))


async def test_full_queue_gets_503_with_retry_after(fake_model_path) -> None:
    gate = threading.Event()
    settings = make_settings(
        fake_model_path, max_batch_size=1, max_batch_delay_ms=0, max_queue_size=2, max_images_per_request=2
    )
    async with running_app(settings, lambda inner: GatedRunner(inner, gate)) as client:
        batcher = client.app.state.service.batcher
        running = classify(client, 1)
        await wait_until(lambda: batcher.pending == 1 and batcher.queue_depth == 0)
        queued = [classify(client, 2), classify(client, 3)]
        await wait_until(lambda: batcher.queue_depth == 2)
        refused = await client.post("/classify", content=encoded_image(4), headers=PNG)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        gate.set()
        assert [r.status_code for r in await asyncio.gather(running, *queued)] == [200, 200, 200]


async def test_request_waiting_past_timeout_gets_504(fake_model_path) -> None:
    gate = threading.Event()
    settings = make_settings(fake_model_path, max_batch_size=1, max_batch_delay_ms=0, request_timeout_s=0.3)
    async with running_app(settings, lambda inner: GatedRunner(inner, gate)) as client:
        batcher = client.app.state.service.batcher
        running = classify(client, 1)
        await wait_until(lambda: batcher.pending == 1 and batcher.queue_depth == 0)
        waited = await client.post("/classify", content=encoded_image(2), headers=PNG)
        assert waited.status_code == 504
        assert waited.json()["error"]["code"] == "timeout"
        gate.set()
        await running
        assert (await client.post("/classify", content=encoded_image(3), headers=PNG)).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert "transxnet_request_timeouts_total 2.0" in metrics


async def test_incoming_batch_wait_runs_a_lone_request_at_once_and_keeps_a_request_in_one_batch(
    fake_model_path,
) -> None:
    # A ten-second delay: only the "incoming" policy (the default) lets these finish promptly.
    settings = make_settings(fake_model_path, max_batch_delay_ms=10_000)
    async with running_app(settings) as client:
        batcher = client.app.state.service.batcher
        before = batcher.batches_run
        single = await asyncio.wait_for(client.post("/classify", content=encoded_image(1), headers=PNG), 10)
        assert single.status_code == 200
        files = [("files", (f"{i}.png", encoded_image(i), "image/png")) for i in range(3)]
        multi = await asyncio.wait_for(client.post("/classify", files=files), 10)
        assert multi.status_code == 200
        assert len(multi.json()["results"]) == 3
        assert (batcher.batches_run - before, batcher.images_run) == (2, 4)
        assert (await client.get("/v1/models")).json()["limits"]["batch_wait"] == "incoming"


async def test_always_batch_wait_holds_a_lone_request_until_the_batch_fills(fake_model_path) -> None:
    settings = make_settings(fake_model_path, max_batch_delay_ms=10_000, batch_wait="always")
    async with running_app(settings) as client:
        batcher = client.app.state.service.batcher
        first = classify(client, 1)
        await wait_until(lambda: batcher.queue_depth == 1)
        await asyncio.sleep(0.3)
        assert not first.done() and batcher.batches_run == 0
        rest = [classify(client, seed) for seed in range(2, 2 + settings.max_batch_size - 1)]
        responses = await asyncio.wait_for(asyncio.gather(first, *rest), 10)
        assert [r.status_code for r in responses] == [200] * settings.max_batch_size
        assert batcher.batches_run == 1


async def test_inference_error_fails_its_batch_and_the_next_request_succeeds(fake_model_path, caplog) -> None:
    caplog.set_level(logging.ERROR)
    async with running_app(make_settings(fake_model_path), FailingRunner) as client:
        failed = await client.post("/classify", content=encoded_image(1), headers=PNG)
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "inference_failed"
        assert "Traceback" not in failed.text
        assert (await client.post("/classify", content=encoded_image(1), headers=PNG)).status_code == 200
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1
    # Logged once per batch, from the inference thread: it names the requests the batch held.
    assert failed.headers["x-request-id"] in tracebacks[0].getMessage()


async def test_unexpected_error_is_500_internal_error_logged_once_and_never_sent(
    fake_model_path, caplog
) -> None:
    caplog.set_level(logging.ERROR)
    async with running_app(make_settings(fake_model_path), NanRunner) as client:
        response = await client.post("/classify", content=encoded_image(1), headers=PNG)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"
        assert "Traceback" not in response.text and "NaN" not in response.text
        assert (await client.get("/healthz")).status_code == 200
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1
    # The client can quote the ID it was given, and it finds the one traceback in the log.
    request_id = response.headers["x-request-id"]
    assert request_id in response.json()["error"]["message"]
    assert tracebacks[0].request_id == request_id


async def test_every_response_carries_a_request_id_and_a_sane_client_id_is_kept(client) -> None:
    first, second = await client.get("/healthz"), await client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]

    traced = await client.post(
        "/classify",
        content=encoded_image(1),
        headers={**PNG, "X-Request-ID": "Root=1-5759e988;Parent=53995c3f"},
    )
    assert traced.status_code == 200
    assert traced.headers["x-request-id"] == "Root=1-5759e988;Parent=53995c3f"
    refused = await client.post("/classify", content=b"not an image", headers={**PNG, "X-Request-ID": "e-1"})
    assert refused.status_code == 400 and refused.headers["x-request-id"] == "e-1"
    assert refused.headers.get_list("x-request-id") == ["e-1"]

    # Spaces or an overlong value are not echoed into headers and logs: a fresh ID replaces them.
    for hostile in ("two words", "x" * 129):
        replaced = await client.get("/healthz", headers={"X-Request-ID": hostile})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"]), hostile


async def test_requests_and_probes_never_wait_for_anyios_worker_threads(client) -> None:
    # FastAPI runs plain-`def` dependencies and handlers in anyio's worker threads; with every one of
    # them taken, a request that needed one would hang until the bound below fails the test.
    limiter = anyio.to_thread.current_default_thread_limiter()
    holders = [object() for _ in range(int(limiter.total_tokens))]
    for holder in holders:
        await limiter.acquire_on_behalf_of(holder)
    try:
        with anyio.fail_after(10):
            ready = await client.get("/readyz")
            classified = await client.post("/classify", content=encoded_image(3), headers=PNG)
            v2_ready = await client.get("/v2/health/ready")
            scraped = await client.get("/metrics")
    finally:
        for holder in holders:
            limiter.release_on_behalf_of(holder)
    assert [r.status_code for r in (ready, classified, v2_ready, scraped)] == [200, 200, 200, 200]


async def test_readiness_is_503_until_warm_up_completes_then_200(fake_model_path) -> None:
    gate = threading.Event()
    settings = make_settings(fake_model_path)
    async with running_app(
        settings, lambda inner: GatedRunner(inner, gate, warmup_calls=0), ready=False
    ) as client:
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["code"] == "not_ready"
        assert (await client.get("/healthz")).status_code == 200
        refused = await client.post("/classify", content=encoded_image(1), headers=PNG)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "not_ready"
        gate.set()
        await wait_ready(client)
        ready = (await client.get("/readyz")).json()
        assert ready["providers"] == ["CPUExecutionProvider"]
        assert ready["model"] == "transxnet_fake"
        assert ready["image_size"] == 224
        assert ready["weights"] == "random-init seed 0"


async def test_draining_turns_readiness_503_and_refuses_new_work(fake_model_path) -> None:
    async with running_app(make_settings(fake_model_path)) as client:
        client.app.state.service.readiness.begin_draining()
        assert (await client.get("/readyz")).status_code == 503
        refused = await client.post("/classify", content=encoded_image(1), headers=PNG)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "not_ready"
        assert (await client.get("/healthz")).status_code == 200


def threads_of(info: dict) -> tuple[int, int, int]:
    return info["model_instances"], info["intra_op_threads"], info["lone_batch_intra_op_threads"]


async def test_models_endpoint_describes_the_served_model(client) -> None:
    info = (await client.get("/v1/models")).json()
    meta = fake_metadata()
    assert info["model"] == meta.variant
    assert (info["image_size"], info["crop_pct"], info["num_classes"]) == (224, 0.9, 1000)
    assert info["resize_size"] == 248
    assert info["mean"] == list(meta.mean) and info["std"] == list(meta.std)
    assert info["embed_dim"] == STAGE_CHANNELS[-1]
    assert info["outputs"]["stage1"] == ["N", STAGE_CHANNELS[0], 56, 56]
    assert info["limits"]["max_batch_size"] == 8
    assert info["providers"] == ["CPUExecutionProvider"]
    assert (info["pixel_exact"], info["jpeg_reducing_gap"]) == (True, 0.0)
    assert threads_of(info) == (1, 1, 0)


async def test_two_model_instances_run_two_batches_at_once_with_correct_answers(
    fake_model_path, reference, monkeypatch
) -> None:
    # One usable core: no all-cores session for lone batches, so every batch takes the instances.
    monkeypatch.setattr("app.settings.usable_cores", lambda: 1)
    gate = threading.Event()
    settings = make_settings(fake_model_path, model_instances=2, max_batch_size=1, intra_op_threads=0)
    async with running_app(settings, runner=lambda inner: GatedRunner(inner, gate)) as client:
        info = (await client.get("/v1/models")).json()
        assert threads_of(info) == (2, 1, 0)
        batcher = client.app.state.service.batcher
        assert batcher.wide_runner is None
        pending = [classify(client, seed) for seed in range(4)]
        await wait_until(lambda: batcher.runner.in_flight.now == 2)
        gate.set()
        responses = await asyncio.gather(*pending)
    assert batcher.runner.in_flight.peak == 2
    for seed, response in enumerate(responses):
        assert response.status_code == 200
        assert_matches_reference(response.json()["results"][0], reference.probabilities(encoded_image(seed)))


async def test_with_instances_on_cpu_a_lone_batch_runs_on_an_all_cores_session(
    fake_model_path, reference, monkeypatch
) -> None:
    monkeypatch.setattr("app.settings.usable_cores", lambda: 2)
    settings = make_settings(fake_model_path, model_instances=2, intra_op_threads=0)
    opened = threading.Event()
    opened.set()  # GatedRunner here only counts calls per session
    async with running_app(settings, runner=lambda inner: GatedRunner(inner, opened)) as client:
        info = (await client.get("/v1/models")).json()
        assert threads_of(info) == (2, 1, 2)
        batcher = client.app.state.service.batcher
        wide = batcher.wide_runner
        assert wide is not None and wide.inner.loaded.session is not batcher.runner.inner.loaded.session
        assert wide.calls == 1  # warmed up too
        response = await client.post("/classify", content=encoded_image(5), headers=PNG)
        assert response.status_code == 200
        assert_matches_reference(response.json()["results"][0], reference.probabilities(encoded_image(5)))
        assert (batcher.wide_batches_run, wide.calls, batcher.runner.calls) == (1, 2, 1)


async def test_instances_with_more_threads_than_cores_start_with_a_warning(
    fake_model_path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr("app.settings.usable_cores", lambda: 2)
    caplog.set_level(logging.WARNING, logger="app.main")
    settings = make_settings(fake_model_path, model_instances=2, intra_op_threads=2)
    async with running_app(settings) as client:
        assert (await client.post("/classify", content=encoded_image(1), headers=PNG)).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "intra-op threads exceed" in r.getMessage()]
    assert warnings == [
        "2 model instances x 2 intra-op threads exceed the 2 usable cores: concurrent runs will preempt "
        "each other; set TRANSXNET_INTRA_OP_THREADS=0 to divide the cores"
    ]


async def test_models_endpoint_says_when_preprocessing_is_not_pixel_exact(fake_model_path) -> None:
    async with running_app(make_settings(fake_model_path, jpeg_reducing_gap=2.0)) as client:
        info = (await client.get("/v1/models")).json()
        assert (info["pixel_exact"], info["jpeg_reducing_gap"]) == (False, 2.0)
        assert client.app.state.service.preprocessor.jpeg_reducing_gap == 2.0


@pytest.mark.parametrize(
    ("overrides", "split_resize", "shared"),
    [({}, True, True), ({}, False, False), ({"preprocess_workers": 1}, True, False)],
)
def test_large_resizes_borrow_a_second_decode_thread_unless_off_or_alone(
    fake_model_path, overrides: dict, split_resize: bool, shared: bool
) -> None:
    service = build_service(make_settings(fake_model_path, **overrides), split_resize=split_resize)
    try:
        assert (service.preprocessor.offload == service.pool.submit_if_idle) is shared
        assert (service.preprocessor.offload is None) is not shared
    finally:
        service.pool.shutdown()


async def test_metrics_count_requests_by_route_and_status(client) -> None:
    await client.post("/classify", content=encoded_image(1), headers=PNG)
    await client.post("/classify", content=b"junk", headers=PNG)
    text = (await client.get("/metrics")).text
    assert 'transxnet_requests_total{route="/classify",status="200",transport="http"}' in text
    assert 'transxnet_requests_total{route="/classify",status="400",transport="http"}' in text
    for name in (
        "transxnet_request_duration_seconds_bucket",
        "transxnet_queue_wait_seconds_count",
        "transxnet_inference_seconds_count",
        'transxnet_batch_size_bucket{le="16.0"}',
        "transxnet_queue_depth 0.0",
        "transxnet_images_processed_total",
    ):
        assert name in text


async def test_requests_in_progress_count_what_is_being_handled(fake_model_path) -> None:
    gate = threading.Event()
    settings = make_settings(fake_model_path)
    async with running_app(settings, runner=lambda inner: GatedRunner(inner, gate)) as client:

        async def in_progress() -> str:
            lines = (await client.get("/metrics")).text.splitlines()
            return next(line for line in lines if line.startswith("transxnet_requests_in_progress "))

        assert await in_progress() == "transxnet_requests_in_progress 1.0"  # the scrape itself
        pending = [classify(client, seed) for seed in range(2)]
        await wait_until(lambda: client.app.state.service.batcher.pending == 2)
        assert await in_progress() == "transxnet_requests_in_progress 3.0"
        gate.set()
        assert [r.status_code for r in await asyncio.gather(*pending)] == [200, 200]
        refused = await client.post("/classify", content=b"junk", headers=PNG)
        assert refused.status_code == 400
        assert await in_progress() == "transxnet_requests_in_progress 1.0"


async def test_preprocessing_time_is_observed_once_per_decoded_image(client) -> None:
    def sample(text: str, name: str) -> float:
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))

    before = (await client.get("/metrics")).text
    files = [("files", (f"{i}.png", encoded_image(i), "image/png")) for i in range(3)]
    assert (await client.post("/classify", files=files)).status_code == 200
    assert (await client.post("/classify", content=b"junk", headers=PNG)).status_code == 400
    after = (await client.get("/metrics")).text
    count = "transxnet_preprocess_seconds_count"
    assert sample(after, count) - sample(before, count) == 3
    took = sample(after, "transxnet_preprocess_seconds_sum") - sample(
        before, "transxnet_preprocess_seconds_sum"
    )
    assert 0 < took < 3.0


async def test_openapi_documents_bodies_errors_and_examples(client) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path in ("/classify", "/features"):
        operation = spec["paths"][path]["post"]
        content = operation["requestBody"]["content"]
        assert {"multipart/form-data", "image/jpeg", "image/png"} <= set(content)
        for status in ("400", "413", "415", "422", "503", "504"):
            response = operation["responses"][status]
            schema = response["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith("/ErrorResponse")
    assert "application/x-npz" in spec["paths"]["/features"]["post"]["responses"]["200"]["content"]
    assert spec["components"]["schemas"]["ClassifyResponse"]["examples"]
    assert {"/healthz", "/readyz", "/v1/models", "/metrics"} <= set(spec["paths"])


async def test_what_decoding_logs_carries_the_request_id(client, monkeypatch, caplog) -> None:
    """Decoding runs in the preprocessing pool's threads; its log lines still name the request."""

    def broken_exif(*args: object, **kwargs: object) -> None:
        raise SyntaxError("not a TIFF file")

    monkeypatch.setattr("app.imaging.decode.ImageOps.exif_transpose", broken_exif)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.WARNING, logger="app.imaging"):
        response = await client.post(
            "/classify", content=encoded_image(1), headers={**PNG, "X-Request-ID": "exif-7"}
        )
    assert response.status_code == 200
    warnings = [r for r in caplog.records if "EXIF" in r.getMessage()]
    assert [r.request_id for r in warnings] == ["exif-7"]
