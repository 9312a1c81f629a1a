"""The HTTP transport as one FastAPI application over a built `Service`: the REST routes, /v2, probes,
metrics, the demo page and offline API docs, with the error mapping and the request observer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from app.http import demo, docs_ui, errors
from app.http.middleware import RequestObserver
from app.http.routes import health, inference, metrics
from app.service import Service
from app.v2 import routes as v2_routes
from app.v2.json_worker import JsonParser

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_http_app(service: Service, lifespan: Lifespan | None = None) -> FastAPI:
    """The FastAPI app for `service`; `lifespan` starts and stops it (and any other transport)."""
    json_parser = JsonParser()

    @asynccontextmanager
    async def http_lifespan(app: FastAPI) -> AsyncIterator[None]:
        """`lifespan`, then this app's own worker (large v2 JSON bodies) stopped with it."""
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            json_parser.close()

    app = FastAPI(
        title="TransXNet inference",
        version="0.1.0",
        description="Image classification and backbone features from an exported TransXNet (ONNX "
        'Runtime, dynamic batching). Errors are `{"error": {"code", "message"}}`.',
        lifespan=http_lifespan,
        docs_url=None,  # the offline pages below replace FastAPI's CDN ones
        redoc_url=None,
    )
    app.state.service = service
    app.state.json_parser = json_parser
    errors.install(app)
    app.add_middleware(RequestObserver, metrics=service.metrics)
    app.include_router(inference.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(v2_routes.router)
    demo.install(app)
    docs_ui.install(app)
    return app
