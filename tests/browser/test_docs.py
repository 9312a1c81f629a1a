"""/docs (Swagger UI) and /redoc (ReDoc) in a real browser: they render the service's operations
from files the service serves itself, with no request to anywhere else (FastAPI's own pages load
their JavaScript from a CDN and are blank offline)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import RecordedPage
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.slow

RENDER_TIMEOUT_MS = 30_000


def test_swagger_ui_lists_the_operations_offline(
    fake_service: ServiceProcess, open_page: Callable[[ServiceProcess, str], RecordedPage]
) -> None:
    recorded = open_page(fake_service, "/docs")
    operations = recorded.page.locator(".opblock")
    for path in ("/classify", "/features", "/v1/models"):
        expect(operations.get_by_text(path, exact=True)).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    expect(recorded.page.get_by_text("Classify one or more images")).to_be_visible()

    assert recorded.foreign_requests() == []
    assert {"/openapi.json", "/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"} <= set(
        recorded.paths()
    )
    assert recorded.console_errors == []
    assert recorded.page_errors == []


def test_redoc_renders_the_reference_offline(
    fake_service: ServiceProcess, open_page: Callable[[ServiceProcess, str], RecordedPage]
) -> None:
    recorded = open_page(fake_service, "/redoc")
    page = recorded.page
    for summary in ("Classify one or more images", "Backbone features for one or more images"):
        expect(page.locator("h2", has_text=summary)).to_be_visible(timeout=RENDER_TIMEOUT_MS)

    # ReDoc's sidebar logo would come from its CDN; the service's copy of the bundle has none.
    assert recorded.foreign_requests() == []
    assert {"/openapi.json", "/docs/static/redoc.standalone.js"} <= set(recorded.paths())
    assert recorded.console_errors == []
    assert recorded.page_errors == []
