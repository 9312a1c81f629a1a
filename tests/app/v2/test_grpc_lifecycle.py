"""The gRPC transport's lifecycle against the instrumented server (`tests.support.serve --slow-s`,
one image per batch, one instance): a client's deadline or cancellation drops its queued images as an
HTTP disconnect does, and SIGTERM drains gRPC as it drains HTTP.

What is "in flight" is read from the service's own gauges (one image running, one queued), never
from sleeps; that a dropped image was never computed is read from the images-processed counter after
a later request, which the batcher would have run after it, has been answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.support.fake_model import IMAGE_SIZE, fake_metadata
from tests.support.processes import ServiceProcess, free_port, service_process

service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
health_pb2_grpc = pytest.importorskip("grpc_health.v1.health_pb2_grpc")

pytestmark = pytest.mark.slow

MODEL = fake_metadata().variant
ONE_BY_ONE = {"max_batch_size": "1", "max_batch_delay_ms": "0", "model_instances": "1"}


def tensor_request(seed: int) -> service_pb2.ModelInferRequest:
    """One preprocessed image (no decoding: it reaches the queue at once)."""
    pixels = np.random.default_rng(seed).normal(0, 1, (1, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="images", datatype="FP32", shape=list(pixels.shape)
    )
    request = service_pb2.ModelInferRequest(model_name=MODEL, inputs=[tensor])
    request.raw_input_contents.append(pixels.tobytes())
    request.outputs.add(name="pooled")
    return request


class Grpc:
    """A channel to the server's gRPC port and the two stubs on it."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.inference = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def health_status(self) -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


@pytest.fixture
def slow_server(fake_model_path: Path) -> Iterator[tuple[ServiceProcess, Grpc]]:
    port = free_port()
    with service_process(
        fake_model_path, helper_args=["--slow-s", "1.5"], grpc_port=str(port), **ONE_BY_ONE
    ) as service:
        client = Grpc(f"127.0.0.1:{port}")
        yield service, client
        client.channel.close()


def _one_running(service: ServiceProcess) -> None:
    """The first call's image is in the (slowed) model: nothing queued, and that call in progress
    beside the scrape that asks."""
    service.wait_until(
        lambda: (
            service.metric("transxnet_queue_depth") == 0
            and service.metric("transxnet_requests_in_progress") >= 2
        ),
        30,
        "one image running",
    )


def _one_running_one_queued(service: ServiceProcess) -> None:
    service.wait_until(
        lambda: service.metric("transxnet_queue_depth") == 1, 30, "one image running and one queued"
    )


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_client_that_gives_up_has_its_queued_image_dropped(slow_server, how: str) -> None:
    service, client = slow_server
    processed = service.metric("transxnet_images_processed_total")
    running = client.inference.ModelInfer.future(tensor_request(1), timeout=60)
    # The quitter must queue behind a running image: were it handled first, its image would run.
    _one_running(service)
    if how == "deadline":
        # Queued behind the running image, which takes 1.5 s: its 0.5 s deadline passes in the queue.
        quitter = client.inference.ModelInfer.future(tensor_request(2), timeout=0.5)
        expected = grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        quitter = client.inference.ModelInfer.future(tensor_request(2), timeout=60)
        _one_running_one_queued(service)
        quitter.cancel()
        expected = grpc.StatusCode.CANCELLED
    with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)) as raised:
        quitter.result()
    assert quitter.code() == expected, raised.value
    assert running.result().model_name == MODEL
    # The batcher runs queued images in order: had the quitter's image stayed queued, it would have
    # run before this one.
    client.inference.ModelInfer(tensor_request(3), timeout=60)
    assert service.metric("transxnet_images_processed_total") == processed + 2
    service.wait_until(
        lambda: (
            service.labelled_metric(
                "transxnet_requests_total", transport="grpc", route="ModelInfer", status=expected.name
            )
            == 1
        ),
        10,
        f"the {expected.name} call counted",
    )


def test_sigterm_drains_grpc_in_flight_calls_answered_new_ones_unavailable(fake_model_path: Path) -> None:
    port = free_port()
    with service_process(
        fake_model_path,
        helper_args=["--slow-s", "1.5"],
        grpc_port=str(port),
        shutdown_grace_s="1",
        **ONE_BY_ONE,
    ) as service:
        client = Grpc(f"127.0.0.1:{port}")
        watch = client.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = [client.inference.ModelInfer.future(tensor_request(i), timeout=60) for i in range(2)]
        _one_running_one_queued(service)

        service.process.terminate()  # SIGTERM
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(StopIteration):
            next(watch)  # the stream ends, so it does not hold the shutdown
        assert client.health_status() == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            client.inference.ModelInfer(tensor_request(9), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in refused.value.details()

        answers = [future.result() for future in in_flight]
        assert [answer.model_name for answer in answers] == [MODEL, MODEL]
        assert service.process.wait(timeout=60) == 0, service.log()[-3000:]
        client.channel.close()
