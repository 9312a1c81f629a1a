"""GET /demo: a page served by the service that shows what the model sees in a photo.

The page is hand-written HTML, CSS and ES modules under `app/http/static/` (no build step, nothing
from a CDN), so it works on an air-gapped host. It calls the public endpoints only (`GET
/v1/models`, `POST /classify`, `POST /features?format=npz`), with URLs relative to the page, so its
code (`static/demo.js`, `static/npz.js`) doubles as a browser example of the API and it also works
behind a proxy that serves the service under a path prefix.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

DEMO_PATH = "/demo"
#: The page's own scripts and styles (a page at /demo loads `demo/static/...` relative to itself).
STATIC_PATH = "/demo/static"
STATIC_DIR = Path(__file__).parent / "static"
PAGE = STATIC_DIR / "demo.html"
STATIC_FILES = ("demo.html", "demo.css", "demo.js", "npz.js", "render.js")

#: Nothing but the service: scripts, styles and requests to its origin; the photos the user picks
#: are shown from blob: URLs and drawn on canvases.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)


class DemoFilesMissingError(RuntimeError):
    """The page's files are not installed beside this module (package data left out)."""


def install(app: FastAPI) -> None:
    """Serve the page at /demo and its files under /demo/static (neither in the OpenAPI schema)."""
    missing = [name for name in STATIC_FILES if not (STATIC_DIR / name).is_file()]
    if missing:
        raise DemoFilesMissingError(
            f"{STATIC_DIR} lacks {', '.join(missing)}: the package was installed without its static "
            "files; reinstall it from a source tree whose pyproject.toml lists *.html, *.js and *.css "
            "as package data"
        )

    @app.get(DEMO_PATH, include_in_schema=False)
    async def demo_page() -> FileResponse:
        return FileResponse(
            PAGE,
            media_type="text/html; charset=utf-8",
            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
        )

    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="demo-static")
