"""Large v2 JSON requests are parsed in a worker process, not on the event loop's interpreter.

`json.loads` holds the GIL for the whole document: a 44 MB FP32 tensor sent as JSON stalled /healthz
for 2 s, and a worker thread does not help (the event loop cannot run Python while the parser holds
the lock). A body of `LARGE_BODY_BYTES` or more is parsed in one spawned process instead, which also
turns its numeric `data` into arrays (with the same checks as `decode_numeric`), so what comes back is
a few large buffers that unpickle in milliseconds. Smaller bodies, and every binary request (whose
JSON header is small), parse inline: a process hop costs more than they do.

The worker is started on first use and lives until `close()`; requests queue for it one at a time,
which bounds the memory parsing takes to one document's (the budget was charged for it).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from app.errors import OverloadedError
from app.v2.protocol import NUMPY_TYPES, InferRequest, decode_numeric, parse_infer_request

logger = logging.getLogger(__name__)

#: Bodies at least this large parse in the worker: about 20 ms of JSON on these machines.
LARGE_BODY_BYTES = 1 << 20


def parse_and_decode(body: bytes, header_length: str | None) -> InferRequest:
    """In the worker: parse, and turn every numeric JSON `data` into its array."""
    request = parse_infer_request(body, header_length)
    for item in request.inputs:
        if item.data is not None and item.datatype in NUMPY_TYPES:
            item.data = decode_numeric(item)
    return request


class JsonParser:
    """Parses v2 requests inline when small, in the worker process when large."""

    def __init__(self, large_body_bytes: int = LARGE_BODY_BYTES) -> None:
        self.large_body_bytes = large_body_bytes
        self._pool: ProcessPoolExecutor | None = None

    async def parse(self, body: bytes, header_length: str | None) -> InferRequest:
        if len(body) < self.large_body_bytes:
            return parse_infer_request(body, header_length)
        if self._pool is None:
            # spawn: a fork of a process with ORT's and gRPC's threads is not safe.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return await asyncio.wrap_future(self._pool.submit(parse_and_decode, body, header_length))
        except BrokenProcessPool:
            # The worker died (the kernel's OOM killer, say): a new one serves the next request.
            logger.warning(
                "the JSON worker process died while parsing a %d-byte request; restarting it", len(body)
            )
            self.close()
            raise OverloadedError(
                "the request could not be parsed (its worker ran out of resources): retry shortly",
                retry_after_s=1,
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
