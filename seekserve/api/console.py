"""The web console: its page and static assets (package data under seekserve/console/), the
security headers they carry, the browser's redirect from `/`, and the catalogue it reads.

The assets are read once when the app is built and served from memory under
`/console/assets/<build>/`, where <build> is a digest of their contents: they are cached for a
year (immutable) and a new release gets new URLs. The page itself is never cached.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from seekserve.api.admin import require_admin
from seekserve.api.deps import services_of
from seekserve.protocol.errors import APIError, NotFoundError
from seekserve.settings import Settings

PAGES = ("playground", "keys", "usage", "engines")
# The page's own scripts and styles only: no inline script or style, no eval, no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    "": "text/plain; charset=utf-8",  # LICENSE files
}
ANTHROPIC_ROUTE = "/anthropic/v1/messages"
_BUILD_PLACEHOLDER = "{{assets}}"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


class ConsoleAssets:
    """Every file of the console, read into memory; `build` names this set of contents."""

    def __init__(self, root: Traversable) -> None:
        found: dict[str, bytes] = {}
        _collect(root, "", found)
        digest = hashlib.sha256()
        for path in sorted(found):
            digest.update(path.encode() + b"\0" + found[path] + b"\0")
        self.build = digest.hexdigest()[:12]
        self.prefix = f"/console/assets/{self.build}"
        index = found.pop("index.html").decode()
        self.index = index.replace(_BUILD_PLACEHOLDER, self.prefix).encode()
        self.files = {path: Asset(body, _content_type(path)) for path, body in found.items()}

    @classmethod
    def packaged(cls) -> ConsoleAssets:
        return cls(files("seekserve").joinpath("console"))


def _collect(folder: Traversable, prefix: str, into: dict[str, bytes]) -> None:
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        path = prefix + entry.name
        if entry.is_dir():
            _collect(entry, path + "/", into)
        else:
            into[path] = entry.read_bytes()


def _content_type(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    suffix = "." + name.rsplit(".", 1)[1] if "." in name else ""
    return CONTENT_TYPES.get(suffix, "application/octet-stream")


def prefers_html(accept: str) -> bool:
    """Whether an Accept header asks for HTML before anything else (a browser navigating),
    as opposed to `*/*` or JSON (curl, SDKs)."""
    best_html = 0.0
    best_other = 0.0
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media.lower() in ("text/html", "application/xhtml+xml"):
            best_html = max(best_html, q)
        elif media:
            best_other = max(best_other, q)
    return best_html > 0 and best_html >= best_other


def _response(body: bytes, content_type: str, cache: str, **headers: str) -> Response:
    return Response(body, media_type=None, headers={
        "Content-Type": content_type, "Cache-Control": cache, **SECURITY_HEADERS, **headers})


def catalog(request: Request) -> dict[str, Any]:
    """The models and deployments the playground offers, and whether the Anthropic route is
    served by this app."""
    services = services_of(request)
    deployments = []
    for dep in services.settings.deployments:
        path = (f"/v1/ai/{dep.endpoint_path}/chat/completions" if dep.endpoint_path
                else "/v1/chat/completions")
        deployments.append({"name": dep.name, "dialect": dep.dialect, "path": path,
                            "endpoint_path": dep.endpoint_path, "hosts": dep.hosts,
                            "models": dep.models})
    models = [{"id": m.id, "aliases": list(m.aliases), "thinking": m.thinking is not None,
               "engine": m.engine_name} for m in services.registry.all()]
    routes = {getattr(route, "path", None) for route in request.app.routes}
    return {"models": models, "deployments": deployments,
            "anthropic": ANTHROPIC_ROUTE in routes,
            "admin": services.settings.admin_key is not None}


async def _authenticate_any(request: Request) -> None:
    """The admin key or any API key the chat routes accept."""
    try:
        require_admin(request)
    except APIError:
        await services_of(request).auth.authenticate(request)


def build_console_router(settings: Settings) -> APIRouter:
    """The console's routes; none when `console.enabled` is false (they answer 404)."""
    router = APIRouter(include_in_schema=False)
    if not settings.console.enabled:
        return router
    assets = ConsoleAssets.packaged()

    @router.get("/")
    async def root(request: Request) -> Response:
        if not prefers_html(request.headers.get("accept", "")):
            raise NotFoundError("No such route.")  # what API clients always got here
        return RedirectResponse("/console", status_code=307, headers=SECURITY_HEADERS)

    async def page() -> Response:
        return _response(assets.index, CONTENT_TYPES[".html"], "no-cache")

    router.add_api_route("/console", page, methods=["GET"])
    for name in PAGES:
        router.add_api_route(f"/console/{name}", page, methods=["GET"])

    @router.get("/console/assets/{build}/{path:path}")
    async def asset(request: Request, build: str, path: str) -> Response:
        found = assets.files.get(path)
        if found is None or build != assets.build:
            raise NotFoundError("No such file.")
        etag = f'"{assets.build}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"'
        cache = "public, max-age=31536000, immutable"
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag, "Cache-Control": cache})
        return _response(found.body, found.content_type, cache, ETag=etag)

    @router.get("/console/api/catalog")
    async def console_catalog(request: Request) -> JSONResponse:
        await _authenticate_any(request)
        return JSONResponse(catalog(request),
                            headers={"Cache-Control": "no-store", **SECURITY_HEADERS})

    return router
