"""Whether the service accepts work: written once, asked by every transport and probe."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Gauge

from app.errors import NotReadyError, StartupFailedError

logger = logging.getLogger(__name__)


class Readiness:
    """Not ready until warm-up is done; draining from SIGTERM on (never back); failed for good when
    warm-up failed. `ready_gauge` mirrors `accepting` for Prometheus; listeners hear every change
    (the gRPC health service's Watch streams)."""

    def __init__(self, ready_gauge: Gauge | None = None) -> None:
        self.ready = False
        self.draining = False
        #: `time.monotonic()` when draining began: what is left of the shutdown timeout is measured from it.
        self.draining_since: float | None = None
        self.startup_error: str | None = None
        self._gauge = ready_gauge
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` after every change; it may run in a signal handler (SIGTERM), so it must
        only hand the news on (e.g. `loop.call_soon_threadsafe`)."""
        self._listeners.append(listener)

    @property
    def accepting(self) -> bool:
        return self.ready and not self.draining

    @property
    def live(self) -> bool:
        """False only when start-up failed for good: a liveness probe should restart the process."""
        return self.startup_error is None

    def mark_ready(self) -> None:
        self.ready = True
        self._publish()

    def fail(self, reason: str) -> None:
        self.startup_error = reason
        self._publish()

    def begin_draining(self) -> None:
        """Refuse new work from now on; safe to call from a signal handler."""
        if not self.draining:
            self.draining = True
            self.draining_since = time.monotonic()
            self._publish()
            logger.info("draining: readiness is now 503 and new requests are refused")

    def check_live(self) -> None:
        if self.startup_error is not None:
            raise StartupFailedError(f"start-up failed: {self.startup_error}")

    def check_accepting(self) -> None:
        """Raise `NotReadyError` saying why, unless the service accepts work."""
        if self.accepting:
            return
        if self.draining:
            raise NotReadyError("the service is shutting down: retry on another replica")
        detail = f" ({self.startup_error})" if self.startup_error else ""
        raise NotReadyError(f"the service is warming up{detail}: retry in a moment")

    def _publish(self) -> None:
        if self._gauge is not None:
            self._gauge.set(1 if self.accepting else 0)
        for listener in self._listeners:
            listener()
