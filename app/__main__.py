"""`python -m app` / `transxnet-serve`: run the service under uvicorn (one worker: the batcher and
the model live in this process).

SIGTERM drains instead of dropping: readiness turns 503 at once and new requests are refused, the
listener stays open for `shutdown_grace_s` (so load balancers notice), then uvicorn stops accepting
connections, waits up to `shutdown_timeout_s` for in-flight requests and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.http.connection import guarded_protocol
from app.logging_setup import configure_logging
from app.main import create_app
from app.readiness import Readiness
from app.settings import Settings, SettingsError, check_model_file, load_settings

logger = logging.getLogger("app")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the app's draining flag flipped first when a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, readiness: Readiness, grace_s: float = 0.0) -> None:
        super().__init__(config)
        self.readiness = readiness
        self.grace_s = grace_s
        self._exit_at: float | None = None
        self._exit_signal: tuple[int, FrameType | None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        already_draining = self.readiness.draining
        self.readiness.begin_draining()
        if self.grace_s <= 0 or already_draining:
            # No grace, or a second signal during it: shut down now (a second SIGINT forces it).
            super().handle_exit(sig, frame)
            return
        logger.info("signal %d: keeping the listener open %.1f s before shutting down", sig, self.grace_s)
        self._exit_at = time.monotonic() + self.grace_s
        self._exit_signal = (sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at and self._exit_signal:
            self._exit_at = None
            super().handle_exit(*self._exit_signal)
        return await super().on_tick(counter)


def _ignore_replayed_sigterm(sig: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the signal it caught once it has shut down; with the default SIGTERM action
    that would kill the process (exit -15) after a clean drain. The drain is done: exit normally."""
    logger.debug("SIGTERM after shutdown: exiting normally")


def build_server(app: FastAPI, settings: Settings) -> DrainingServer:
    """The server `main()` runs; tests run the same one in a subprocess with an instrumented app."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,  # our logging (text or JSON) handles uvicorn's loggers too
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(max(1, round(settings.shutdown_timeout_s))),
        lifespan="on",
        http=guarded_protocol(
            header_timeout_s=settings.header_timeout_s, max_connections=settings.max_connections
        ),
    )
    return DrainingServer(config, app.state.service.readiness, grace_s=settings.shutdown_grace_s)


def serve(app: FastAPI, settings: Settings) -> int:
    """Run until shut down; the exit code is 0 after a clean drain, 1 if start-up failed."""
    server = build_server(app, settings)
    signal.signal(signal.SIGTERM, _ignore_replayed_sigterm)
    server.run()
    return 0 if server.started else 1


def main() -> None:
    try:
        settings = load_settings()
        check_model_file(settings)
    except SettingsError as exc:
        sys.exit(f"transxnet-serve: {exc}")
    configure_logging(settings.log_level, settings.log_format)
    sys.exit(serve(create_app(settings), settings))


if __name__ == "__main__":
    main()
