"""What the /demo, /docs and /redoc routes serve, without a browser (fast): every asset comes from
the service, URLs follow the root path, the pages stay out of the OpenAPI schema, and the install
functions refuse an app that would still answer with FastAPI's CDN pages."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi import FastAPI

from app.http import demo, docs_ui


def _app() -> FastAPI:
    app = FastAPI(title="pages under test", docs_url=None, redoc_url=None)
    docs_ui.install(app)
    demo.install(app)
    return app


def get(*paths: str, root_path: str = "") -> list[httpx.Response]:
    """GET `paths` from a fresh app in-process. The requests run on an event loop in a thread of its
    own: the Playwright tests of this package keep their sync API's loop on the main thread."""

    async def fetch() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=_app(), root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            return [await client.get(path) for path in paths]

    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, fetch()).result()


def test_docs_ui_refuses_an_app_with_fastapis_cdn_pages() -> None:
    with pytest.raises(ValueError, match="docs_url=None and redoc_url=None"):
        docs_ui.install(FastAPI())


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_the_service(path: str) -> None:
    (response,) = get(path)
    assert response.status_code == 200
    assert "'self'" in response.headers["content-security-policy"]
    # Every URL in the page is the service's own: no scheme, no host.
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", response.text)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "cdn." not in response.text and "fonts.googleapis" not in response.text
    for url, asset in zip(urls, get(*urls), strict=True):
        assert asset.status_code == 200, url


def test_docs_pages_follow_the_root_path() -> None:
    """Behind a proxy that serves the app under /api, the pages must point under /api too."""
    docs, redoc = get("/docs", "/redoc", root_path="/api")
    assert "'/api/openapi.json'" in docs.text
    assert "/api/docs/static/swagger-ui-bundle.js" in docs.text
    assert "/api/docs/static/redoc.standalone.js" in redoc.text


def test_redoc_bundle_is_served_without_its_cdn_logo() -> None:
    shipped = (docs_ui.assets_dir() / docs_ui.REDOC_BUNDLE).read_bytes()
    (served,) = get(f"{docs_ui.ASSETS_PATH}/{docs_ui.REDOC_BUNDLE}")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/javascript")
    assert docs_ui.REDOCLY_LOGO_URL in shipped and docs_ui.REDOCLY_LOGO_URL not in served.content
    # Only that URL changed.
    assert served.content == shipped.replace(docs_ui.REDOCLY_LOGO_URL, b"data:,")


def test_demo_page_and_its_files_are_served() -> None:
    files = {"demo.js": "text/javascript", "npz.js": "text/javascript", "demo.css": "text/css"}
    page, *assets = get("/demo", *(f"{demo.STATIC_PATH}/{name}" for name in files))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for (name, media), response in zip(files.items(), assets, strict=True):
        assert response.status_code == 200 and response.headers["content-type"].startswith(media), name


def test_demo_files_reference_nothing_outside_the_service() -> None:
    """Relative URLs only (so a path prefix works) and no absolute URL anywhere in the page's code."""
    html = (demo.STATIC_DIR / "demo.html").read_text()
    urls = re.findall(r"""(?:src|href)="([^"]+)\"""", html)
    assert urls and all(url == "data:," or not re.match(r"^(/|[a-z]+:)", url) for url in urls), urls
    for name in demo.STATIC_FILES:
        text = (demo.STATIC_DIR / name).read_text()
        assert not re.search(r"https?://", text), f"{name} names an absolute URL"


def test_pages_are_not_operations_of_the_api() -> None:
    (schema,) = get("/openapi.json")
    paths = schema.json().get("paths", {})
    assert not [path for path in paths if path.startswith(("/demo", "/docs", "/redoc"))]
