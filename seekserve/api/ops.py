"""Routes for operators and model discovery: the served models, liveness, readiness with each
engine's state, and Prometheus metrics."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from seekserve.api.deps import services_of
from seekserve.api.openapi import ERROR_RESPONSES
from seekserve.metrics import MEDIA_TYPE
from seekserve.protocol.openai_chat import ModelList


def build_ops_router() -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES,
                tags=["models"], summary="List the served models and their aliases")
    async def list_models(request: Request) -> dict[str, Any]:
        services = services_of(request)
        await services.auth.authenticate(request)
        return {"object": "list", "data": services.model_cards()}

    @router.get("/v1/models/{model_id}", responses=ERROR_RESPONSES, tags=["models"],
                summary="Describe one model")
    async def get_model(request: Request, model_id: str) -> dict[str, Any]:
        services = services_of(request)
        await services.auth.authenticate(request)
        services.registry.resolve(model_id)
        return next(c for c in services.model_cards() if c["id"] == model_id)

    @router.get("/health", tags=["ops"], summary="The process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready", tags=["ops"], summary="Every engine is loaded and serving")
    async def ready(request: Request) -> JSONResponse:
        services = services_of(request)
        engines = {name: engine.state() for name, engine in services.engine_states().items()}
        is_ready = services.started and all(s.loaded for s in engines.values())
        body = {
            "status": "ready" if is_ready else "starting",
            "engines": {name: dataclasses.asdict(state) for name, state in engines.items()},
        }
        return JSONResponse(body, status_code=200 if is_ready else 503)

    @router.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        return Response(services_of(request).metrics.render(), media_type=MEDIA_TYPE)

    return router
