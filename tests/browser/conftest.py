"""Real-browser fixtures: Debian's Chromium driven by Playwright, started once for these tests; the
service as a real `python -m app` process; and pages that record every request and console message,
so a test can assert that nothing left the service and nothing went wrong in the page.

Playwright's own browser download (`playwright install`) is never used: the closed network has no
access to it, and the apt package is what CI installs (scripts/_system.sh). `launch()` gives the
browser a fresh temporary profile (user-data-dir) of its own and removes it on close.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.support.fake_model import build_fake_model
from tests.support.processes import ROOT, ServiceProcess, service_process

CHROMIUM = Path("/usr/bin/chromium")
#: Headless and quiet: no GPU, no sync, no component updates, no background requests of its own,
#: so every request a test sees is the page's.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHOTOS = ROOT / "tests" / "fixtures" / "preprocess" / "photos"
#: Bytes per image for the shared service: the photos used here pass, a larger upload gets 413.
MAX_IMAGE_BYTES = 1_000_000
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for all the browser tests (each test gets its own context)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh installs it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="package")
def fake_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake model (labels class_0..class_999, random-init weights): fast."""
    return build_fake_model(tmp_path_factory.mktemp("browser-model") / "transxnet_fake.onnx")


@pytest.fixture(scope="package")
def fake_service(fake_model: Path) -> Iterator[ServiceProcess]:
    """The service on the fake model, shared by the tests that leave it as they found it."""
    with service_process(fake_model, max_image_bytes=str(MAX_IMAGE_BYTES)) as service:
        yield service


@dataclass
class RecordedPage:
    """A page and what it did: every request URL, console errors and uncaught exceptions."""

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def foreign_requests(self) -> list[str]:
        """Requests that did not go to the service. data: URLs and the page's own blob: URLs are
        not network requests; anything else must start with the service's origin."""
        local = (f"{self.origin}/", f"blob:{self.origin}/", "data:")
        return [url for url in self.requests if not url.startswith(local)]

    def paths(self) -> list[str]:
        """The service paths requested (query strings kept), in order."""
        return [url[len(self.origin) :] for url in self.requests if url.startswith(f"{self.origin}/")]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[ServiceProcess, str], RecordedPage]]:
    """`open_page(service, "/demo")`: a fresh context (no cache, no storage) and a page on `path`,
    recording from before the navigation."""
    contexts: list[BrowserContext] = []

    def open_(service: ServiceProcess, path: str) -> RecordedPage:
        context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = context.new_page()
        recorded = RecordedPage(page, service.base)
        page.on("request", lambda request: recorded.requests.append(request.url))
        page.on(
            "console",
            lambda message: recorded.console_errors.append(message.text) if message.type == "error" else None,
        )
        page.on("pageerror", lambda error: recorded.page_errors.append(str(error)))
        page.goto(service.url(path))
        return recorded

    yield open_
    for context in contexts:
        context.close()
