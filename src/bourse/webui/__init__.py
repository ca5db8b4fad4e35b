"""The web UI's built assets, served by the API process (docs/decisions/0030-serving-the-ui.md).

HTTP infrastructure: it knows no domain. :func:`mount_ui` makes the UI the router's
answer to a GET or HEAD that no route matches, outside the paths the API keeps for
itself (``/api``, ``/metrics``, ``/livez``, ``/readyz``, ``/healthz`` and the first
segment of every route the app has): a route that exists for another method still
answers 405, and an unknown ``/api/...`` path the JSON 404 with its stable code.

- ``/assets/<file>``: the build's content-hashed files, cached for a year as immutable;
  one that is not there is a 404, never ``index.html``.
- any other path: a file at the build's top level (``favicon.svg``, ``robots.txt``), or
  else ``index.html`` for the client-side router, revalidated on every use (``no-cache``).
- before anything is built: a short page saying how to build it (503), never a 500.

Every answer carries a strict Content-Security-Policy and the other security headers,
and is gzip-compressed when the client accepts it. The build (Vite) writes to
``src/bourse/webui/dist/``, which the wheel ships (pyproject.toml ``artifacts``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import FileResponse, HTMLResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PACKAGE_DIST = Path(__file__).resolve().with_name("dist")
INDEX = "index.html"
ASSETS_PREFIX = "/assets/"
# Never the UI's, whether or not a route answers there today.
RESERVED_SEGMENTS = frozenset({"api", "metrics", "livez", "readyz", "healthz"})

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        # 'self' also matches ws:// and wss:// to this host and port (CSP 3; Chromium 70+,
        # Firefox, Safari 15.4+), so the market-data WebSocket needs no scheme source,
        # which would allow a socket to any host.
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors 'none' for browsers that predate it
}
# Smaller answers are not worth a gzip stream; level 6 is zlib's own balance of size and CPU.
GZIP_MINIMUM_BYTES = 1024
GZIP_LEVEL = 6

NOT_BUILT_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bourse: the web UI is not built</title>
</head>
<body>
<h1>The web UI is not built</h1>
<p>This Bourse server is running, but it has no built web UI to serve.</p>
<p>Build it with <code>make web</code>, or with <code>npm ci &amp;&amp; npm run build</code> in <code>web/</code>
(Node 20 or newer), then reload this page.</p>
<p>The API works without it: see <a href="/api/docs">the API documentation</a>.</p>
</body>
</html>
"""


class _Template:
    """What the access log and the request metrics name a UI answer by (they read
    ``scope["route"].path``), instead of the ``<unmatched>`` of a path no route matched."""

    def __init__(self, path: str) -> None:
        self.path = path


ASSET_TEMPLATE = _Template(f"{ASSETS_PREFIX}{{file}}")
PAGE_TEMPLATE = _Template("/{ui_path}")


class WebUI:
    """The router's default app: the UI where it applies, else the router's own not-found."""

    def __init__(self, dist: Path, reserved: frozenset[str], fallback: ASGIApp) -> None:
        self.dist = dist.resolve()
        self.reserved = reserved
        self.fallback = fallback
        self._compressed = GZipMiddleware(self._serve, minimum_size=GZIP_MINIMUM_BYTES, compresslevel=GZIP_LEVEL)

    def serves(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["method"] not in {"GET", "HEAD"}:
            return False
        path: str = scope["path"]
        return path.lstrip("/").split("/", 1)[0] not in self.reserved

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.serves(scope):
            await self._compressed(scope, receive, send)
        else:
            await self.fallback(scope, receive, send)

    def _file(self, path: str) -> Path | None:
        """The build's file at this URL path, if there is one (never outside the build)."""
        try:
            candidate = (self.dist / path.lstrip("/")).resolve()
        except (OSError, ValueError):
            return None
        if candidate == self.dist or not candidate.is_relative_to(self.dist) or not candidate.is_file():
            return None
        return candidate

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        scope["route"] = ASSET_TEMPLATE if path.startswith(ASSETS_PREFIX) else PAGE_TEMPLATE
        if path.startswith(ASSETS_PREFIX):
            asset = self._file(path)
            if asset is None:
                raise HTTPException(404)
            response = FileResponse(asset, headers={**SECURITY_HEADERS, "Cache-Control": IMMUTABLE})
        else:
            found = self._file(path) if path != "/" else None
            index = self.dist / INDEX
            if found is None and not index.is_file():
                not_built = HTMLResponse(
                    NOT_BUILT_PAGE, status_code=503, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"}
                )
                await not_built(scope, receive, send)
                return
            response = FileResponse(found or index, headers={**SECURITY_HEADERS, "Cache-Control": REVALIDATE})
        await response(scope, receive, send)


def _route_segments(app: FastAPI) -> set[str]:
    segments: set[str] = set()
    for route in app.router.routes:
        path = getattr(route, "path", None)
        if isinstance(path, str):
            segment = path.lstrip("/").split("/", 1)[0]
            if segment and "{" not in segment:
                segments.add(segment)
    return segments


def mount_ui(app: FastAPI, dist: Path | None = None) -> WebUI:
    """Serve the UI built in ``dist`` (default: this package's ``dist/``) from ``app``.

    Call it after every router is included: the first segment of each route's path is
    kept from the UI (``/docs/oauth2-redirect`` keeps ``/docs``, for instance).
    """
    ui = WebUI(dist or PACKAGE_DIST, RESERVED_SEGMENTS | _route_segments(app), app.router.default)
    app.router.default = ui
    return ui
