"""Load over the service's three ways in, on the same images and asking for the same answer (the
top 5 classes of one image per request), with the same closed loop as `benchmarks.loadgen`:

- `classify`: multipart POST /classify (the house API; JSON top-5 back);
- `v2-http`: POST /v2/models/{m}/infer with the image as binary tensor data (`image_bytes` BYTES
  [1, 1] after a JSON header) and `classification: 5` on `logits`, as tritonclient.http sends it;
- `v2-grpc`: ModelInfer over one grpc.aio channel (HTTP/2 streams, as tritonclient.grpc uses one
  channel), the image in `raw_input_contents`, `classification: 5` on `logits`.

The gRPC messages are tritonclient's generated ones (the dev extra): wire-identical to the service's
own, which a client process must not import beside them (app/v2/grpc/__init__.py).
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import httpx

from benchmarks.loadgen import LoadResult, run_load

TRANSPORTS = ("classify", "v2-http", "v2-grpc")
TOP_K = 5
HEADER_LENGTH = "Inference-Header-Content-Length"

#: One request: True when answered with the top-k, False (with a reason) when refused.
Send = Callable[[int], Awaitable[tuple[bool, str]]]


def v2_http_body(blob: bytes, top_k: int = TOP_K) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor-data infer request for one encoded image, and its headers."""
    element = struct.pack("<I", len(blob)) + blob
    header = {
        "inputs": [
            {
                "name": "image_bytes",
                "datatype": "BYTES",
                "shape": [1, 1],
                "parameters": {"binary_data_size": len(element)},
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": top_k, "binary_data": False}}],
    }
    text = json.dumps(header).encode()
    headers = {HEADER_LENGTH: str(len(text)), "content-type": "application/octet-stream"}
    return text + element, headers


def grpc_request(blob: bytes, model: str, top_k: int = TOP_K):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="image_bytes", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(struct.pack("<I", len(blob)) + blob)
    output = request.outputs.add(name="logits")
    output.parameters["classification"].int64_param = top_k
    return request


async def _closed_loop(send: Send, concurrency: int, total: int) -> tuple[LoadResult, Counter[str]]:
    result = LoadResult(concurrency=concurrency, requests=total, wall_s=0.0)
    refused: Counter[str] = Counter()
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < total:
            index = next_index
            next_index += 1
            started = time.perf_counter()
            ok, reason = await send(index)
            if ok:
                result.latencies_s.append(time.perf_counter() - started)
                result.statuses[200] = result.statuses.get(200, 0) + 1
            else:
                refused[reason] += 1
                result.transport_errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - started
    return result, refused


async def _v2_http(
    base: str, model: str, blobs: Sequence[bytes], concurrency: int, total: int, timeout_s: float
) -> tuple[LoadResult, Counter[str]]:
    bodies = [v2_http_body(blob) for blob in blobs]
    url = f"{base}/v2/models/{model}/infer"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:

        async def send(index: int) -> tuple[bool, str]:
            body, headers = bodies[index % len(bodies)]
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                return False, type(exc).__name__
            return response.status_code == 200, str(response.status_code)

        return await _closed_loop(send, concurrency, total)


async def _v2_grpc(
    address: str, model: str, blobs: Sequence[bytes], concurrency: int, total: int, timeout_s: float
) -> tuple[LoadResult, Counter[str]]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    requests = [grpc_request(blob, model) for blob in blobs]
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

        async def send(index: int) -> tuple[bool, str]:
            try:
                await infer(requests[index % len(requests)], timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                return False, exc.code().name
            return True, "OK"

        return await _closed_loop(send, concurrency, total)


def run_transport(
    transport: str,
    *,
    base: str,
    grpc_address: str,
    model: str,
    blobs: Sequence[bytes],
    concurrency: int,
    total: int,
    timeout_s: float = 120.0,
) -> tuple[LoadResult, Counter[str]]:
    """`total` one-image requests over `transport` with `concurrency` in flight; what was refused,
    by status, beside the result."""
    if transport == "classify":
        result = run_load(
            f"{base}/classify", blobs, concurrency=concurrency, total=total, timeout_s=timeout_s
        )
        refused = Counter({str(code): n for code, n in result.statuses.items() if code != 200})
        return result, refused
    if transport == "v2-http":
        return asyncio.run(_v2_http(base, model, blobs, concurrency, total, timeout_s))
    if transport == "v2-grpc":
        return asyncio.run(_v2_grpc(grpc_address, model, blobs, concurrency, total, timeout_s))
    raise ValueError(f"unknown transport {transport!r}: choose from {', '.join(TRANSPORTS)}")
