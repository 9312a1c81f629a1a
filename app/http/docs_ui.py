"""GET /docs (Swagger UI) and GET /redoc (ReDoc), served with their assets from the service.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a host without internet /docs is a
blank page. The assets here come from the `fastapi-offline` wheel (Swagger UI 5's bundle and CSS,
ReDoc 2's standalone bundle, a favicon: 2.8 MB, no dependency beyond FastAPI). Only its files are
used, not its `FastAPIOffline` factory, so the application is still built by our `create_app`.
FastAPI's HTML templates are reused with every URL pointing at the service, relative to the
application's `root_path` so the pages also work behind a path-prefixing proxy.

ReDoc 2 draws a "by Redocly" logo from its CDN in the sidebar, unconditionally (no option turns it
off); the bundle is served with that URL replaced by an empty image, which the component hides.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
#: Where the Swagger UI and ReDoc files are served.
ASSETS_PATH = "/docs/static"
REDOC_BUNDLE = "redoc.standalone.js"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", REDOC_BUNDLE, "favicon.png")
#: Fetched by ReDoc's sidebar; `data:,` is an image that fails to load without a request, and on
#: that error ReDoc drops the logo.
REDOCLY_LOGO_URL = b"https://cdn.redoc.ly/redoc/logo-mini.svg"

#: The page may load scripts, styles, images, fonts and data from the service only. Swagger UI's
#: and ReDoc's pages start with an inline script and style themselves inline; ReDoc runs its search
#: in a worker made from a blob and shows inline SVG/data images.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)


class DocsAssetsMissingError(RuntimeError):
    """The Swagger UI / ReDoc files are not where the `fastapi-offline` package should have them."""


def assets_dir() -> Path:
    """The directory of the `fastapi-offline` wheel's static files, checked to hold every file the
    pages load (a broken install should fail at start-up, not as a blank /docs)."""
    try:
        directory = Path(str(files("fastapi_offline") / "static"))
    except ModuleNotFoundError as exc:
        raise DocsAssetsMissingError(
            "the offline API docs need the `fastapi-offline` package: pip install fastapi-offline"
        ) from exc
    missing = [name for name in ASSET_FILES if not (directory / name).is_file()]
    if missing:
        raise DocsAssetsMissingError(
            f"{directory} lacks {', '.join(missing)}: reinstall fastapi-offline "
            "(pip install --force-reinstall fastapi-offline)"
        )
    return directory


@cache
def redoc_bundle() -> bytes:
    """ReDoc's standalone bundle with its one remote image replaced (read once, 1 MB)."""
    return (assets_dir() / REDOC_BUNDLE).read_bytes().replace(REDOCLY_LOGO_URL, b"data:,")


def install(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets. `app` must be built with `docs_url=None,
    redoc_url=None`, or FastAPI's CDN pages would answer those paths first."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError(
            "build the FastAPI app with docs_url=None and redoc_url=None: the offline /docs and /redoc "
            "replace FastAPI's CDN pages"
        )
    if app.openapi_url is None:
        raise ValueError("the API docs need the OpenAPI schema: leave FastAPI's openapi_url set")
    openapi_url = app.openapi_url

    # Before the mount, so this route answers for the bundle instead of the file as shipped.
    @app.get(f"{ASSETS_PATH}/{REDOC_BUNDLE}", include_in_schema=False)
    async def redoc_script() -> Response:
        return Response(
            redoc_bundle(),
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            # No validator badge: it would send the schema to validator.swagger.io.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/{REDOC_BUNDLE}",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page
