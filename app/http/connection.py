"""Connection-level limits uvicorn lacks: a deadline for a request's headers, and a cap on open
connections answered in the service's own JSON.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that sends
nothing, or half a header line, is kept open forever: 200 of them held 200 sockets for as long as the
clients liked (slowloris). Here every request, the first on a connection included, must deliver its
headers within `header_timeout_s` of its first byte (or of the connection opening), or the
connection is closed. A connection beyond `max_connections` is answered 503 at once and closed, so
descriptors stay bounded whatever clients do. Bodies have their own deadline between chunks
(`app.http.body`).
"""

from __future__ import annotations

import asyncio
import json
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.http.errors import error_body

logger = logging.getLogger(__name__)


def _overloaded_response(max_connections: int) -> bytes:
    body = json.dumps(
        error_body(
            "overloaded",
            f"the service has {max_connections} connections open, its limit "
            "(TRANSXNET_MAX_CONNECTIONS): retry shortly",
        )
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request headers and a connection cap."""

    header_timeout_s: float = 10.0
    max_connections: int = 1024

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_overloaded_response(self.max_connections))
            transport.close()
            return
        self._arm_header_deadline()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_deadline()

    def on_headers_complete(self) -> None:
        self._disarm_header_deadline()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            logger.info(
                "closing a connection that sent no complete request headers in %g s", self.header_timeout_s
            )
            self.transport.close()


def guarded_protocol(*, header_timeout_s: float, max_connections: int) -> type[GuardedProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, with these limits."""
    limits = {"header_timeout_s": header_timeout_s, "max_connections": max_connections}
    return type("GuardedProtocol", (GuardedProtocol,), limits)
