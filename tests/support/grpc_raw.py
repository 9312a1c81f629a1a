"""A gRPC call below any gRPC library: HTTP/2 frames written with `h2`, for what no real client sends,
such as an upload that stops part-way through its message and keeps the call open.

gRPC clients hand their library whole messages, so a stalled upload can only be built by hand: the
request headers, then a length-prefixed message of which only some bytes are sent, then silence. The
server's answer (its trailers' `grpc-status` and `grpc-message`, or a reset stream) is read back.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Outcome:
    """How the server ended the call, if it did: gRPC's status and message, or a reset."""

    status: int | None
    message: str
    reset: bool
    elapsed_s: float
    sent: int


def _headers(host: str, path: str) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", host),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]


def stalled_call(
    host: str, port: int, *, declared: int, send: int, wait_s: float, path: str = MODEL_INFER
) -> Outcome:
    """Open a call on `path`, announce a message of `declared` bytes, send the first `send` of them
    (as fast as the server's flow control allows) and then nothing, for up to `wait_s`: what did the
    server answer, and when (seconds from the call's start)?"""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    payload = b"\x00" + declared.to_bytes(4, "big") + bytes(send)
    with socket.create_connection((host, port), timeout=wait_s) as sock:
        sock.settimeout(0.05)
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(stream, _headers(f"{host}:{port}", path))
        started, sent = time.monotonic(), 0
        outcome = Outcome(None, "", False, 0.0, 0)
        while time.monotonic() - started < wait_s and outcome.status is None and not outcome.reset:
            window = min(connection.local_flow_control_window(stream), connection.max_outbound_frame_size)
            if sent < len(payload) and window > 0:
                connection.send_data(stream, payload[sent : sent + window])
                sent += min(window, len(payload) - sent)
            sock.sendall(connection.data_to_send())
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not data:
                outcome.reset = True  # the server closed the connection
            for event in connection.receive_data(data):
                _record(event, outcome)
            sock.sendall(connection.data_to_send())
        outcome.elapsed_s = time.monotonic() - started
        outcome.sent = max(0, sent - 5)
        return outcome


def _record(event: h2.events.Event, outcome: Outcome) -> None:
    if isinstance(event, h2.events.StreamReset):
        outcome.reset = True
    headers = getattr(event, "headers", None)
    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived) and headers:
        fields = {bytes(key).decode(): bytes(value).decode() for key, value in headers}
        if "grpc-status" in fields:
            outcome.status = int(fields["grpc-status"])
            outcome.message = fields.get("grpc-message", "")
