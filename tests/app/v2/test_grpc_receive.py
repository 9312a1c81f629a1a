"""How ModelInfer receives its message, against a real process: an upload that stalls part-way is cut
at the body timeout and its bytes are released (a unary handler would hold them for as long as the
client keeps the call open); a call without a message, or with bytes that are no ModelInferRequest,
is the client's error, not the server's.

The stalled upload is written frame by frame (`tests.support.grpc_raw`): no gRPC library can send
part of a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import grpc
import pytest

from tests.support.grpc_raw import MODEL_INFER, stalled_call
from tests.support.processes import ServiceProcess, free_port, service_process, watching

pytestmark = pytest.mark.slow

MIB = 1 << 20
BODY_TIMEOUT_S = 2.0
#: Sent of each stalled message, and how many are sent one after the other: held, they would add up
#: to 160 MiB; released, the allocator's reuse keeps the growth to 2-3.5 of them (measured).
STALLED_BYTES = 16 * MIB
STALLED_CALLS = 10


@pytest.fixture(scope="module")
def served(fake_model_path: Path) -> Iterator[tuple[ServiceProcess, int]]:
    port = free_port()
    with service_process(fake_model_path, grpc_port=str(port), body_timeout_s=str(BODY_TIMEOUT_S)) as service:
        yield service, port


def test_a_stalled_upload_is_cut_at_the_body_timeout_and_its_bytes_released(served) -> None:
    service, port = served

    def counted() -> float:
        return service.labelled_metric(
            "transxnet_requests_total", transport="grpc", route="ModelInfer", status="DEADLINE_EXCEEDED"
        )

    before = counted()
    with watching(service) as watch:
        outcomes = [
            stalled_call("127.0.0.1", port, declared=2 * STALLED_BYTES, send=STALLED_BYTES, wait_s=20)
            for _ in range(STALLED_CALLS)
        ]
    for outcome in outcomes:
        assert outcome.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0], outcome
        assert "TRANSXNET_BODY_TIMEOUT_S" in unquote(outcome.message)
        # The bytes reached the server (not held back by flow control) and the call was cut on time.
        assert outcome.sent == STALLED_BYTES
        assert BODY_TIMEOUT_S <= outcome.elapsed_s < BODY_TIMEOUT_S + 3, outcome
    # Each message's bytes were released when its call was cut: not all of them held at once.
    assert watch.rss_growth < STALLED_CALLS // 2 * STALLED_BYTES, watch.rss_growth / MIB
    service.wait_until(lambda: counted() == before + STALLED_CALLS, 10, "the cut calls counted")


@pytest.fixture(scope="module")
def channel(served) -> Iterator[grpc.Channel]:
    _, port = served
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel


def test_bytes_that_are_no_infer_request_are_invalid_argument(channel: grpc.Channel) -> None:
    call = channel.unary_unary(MODEL_INFER)  # no serializers: the bytes go as they are
    with pytest.raises(grpc.RpcError) as raised:
        call(b"\xff\xff\xff\xff not a protobuf message", timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInferRequest" in raised.value.details()


def test_a_call_without_a_message_is_invalid_argument(channel: grpc.Channel) -> None:
    call = channel.stream_unary(MODEL_INFER)  # a streaming client may half-close without sending
    with pytest.raises(grpc.RpcError) as raised:
        call(iter(()), timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no ModelInferRequest" in raised.value.details()
