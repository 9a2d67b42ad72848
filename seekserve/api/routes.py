"""HTTP routes: thin handlers that authenticate, parse, pick a deployment and render."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from seekserve.api import dialects
from seekserve.api.auth import Caller
from seekserve.api.requests import parse_chat_request, read_body
from seekserve.api.schemas import ErrorBody, ModelList
from seekserve.api.sse import (
    DONE,
    PatientJSONResponse,
    SSEResponse,
    sse_event,
)
from seekserve.chat.service import Delta, PreparedChat, new_completion_id
from seekserve.registry import Deployment
from seekserve.services import Services
from seekserve.tenancy.auth import allow_model

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request (names the field as `param`)."},
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    404: {"model": ErrorBody, "description": "Unknown model or endpoint path."},
    413: {"model": ErrorBody, "description": "Request body over the limit."},
    500: {"model": ErrorBody, "description": "Server error."},
}
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat completion (JSON), its SSE stream when `stream` is true, or the "
        "`{\"output\": {\"text\"}}` envelope on deployments of that dialect.",
        "content": {
            "application/json": {"schema": {"anyOf": [
                {"$ref": "#/components/schemas/ChatCompletion"},
                {"$ref": "#/components/schemas/OutputEnvelope"},
            ]}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **ERROR_RESPONSES,
}
CHAT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}}


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", responses=CHAT_RESPONSES, openapi_extra=CHAT_BODY,
                 summary="Create a chat completion", tags=["chat"],
                 response_model=None)
    async def chat_completions(request: Request) -> Response:
        services = Services.of(request)
        caller = await services.auth.authenticate(request)
        deployment = services.router.for_plain_route(request.headers.get("host"))
        return await _serve_chat(request, services, deployment, caller)

    @router.post("/v1/ai/{endpointPath}/chat/completions", responses=CHAT_RESPONSES,
                 openapi_extra=CHAT_BODY, tags=["chat"], response_model=None,
                 summary="Create a chat completion on a named endpoint (MaaS shape)")
    async def endpoint_chat_completions(request: Request, endpointPath: str) -> Response:
        services = Services.of(request)
        caller = await services.auth.authenticate(request)
        deployment = services.router.for_endpoint_path(endpointPath)
        return await _serve_chat(request, services, deployment, caller)

    @router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES,
                tags=["models"], summary="List the served models and their aliases")
    async def list_models(request: Request) -> dict[str, Any]:
        services = Services.of(request)
        await services.auth.authenticate(request)
        return {"object": "list", "data": services.model_cards()}

    @router.get("/v1/models/{model_id}", responses=ERROR_RESPONSES, tags=["models"],
                summary="Describe one model")
    async def get_model(request: Request, model_id: str) -> dict[str, Any]:
        services = Services.of(request)
        await services.auth.authenticate(request)
        services.registry.resolve(model_id)
        return next(c for c in services.model_cards() if c["id"] == model_id)

    @router.get("/health", tags=["ops"], summary="The process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/ready", tags=["ops"], summary="Every engine is loaded and serving")
    async def ready(request: Request) -> JSONResponse:
        services = Services.of(request)
        engines = {name: engine.state() for name, engine in services.engines.items()}
        is_ready = services.started and all(s.loaded for s in engines.values())
        body = {
            "status": "ready" if is_ready else "starting",
            "engines": {name: vars(state) for name, state in engines.items()},
        }
        return JSONResponse(body, status_code=200 if is_ready else 503)

    return router


async def _serve_chat(request: Request, services: Services, deployment: Deployment,
                      caller: Caller) -> Response:
    body = await read_body(request, services.settings.limits.max_body_bytes)
    req = parse_chat_request(body)
    model = services.registry.resolve(req.model, deployment)
    allow_model(caller, model, req.model)
    request_id = new_completion_id()
    chat = services.chat.prepare(req, model, request_id=request_id,
                                 cache_salt=services.cache_salt(caller, req.user_id))
    ctx = dialects.ResponseContext(
        dialect=deployment.dialect,
        id=request_id,
        created=int(time.time()),
        model=req.model,
        system_fingerprint=services.settings.server.system_fingerprint,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
    )
    services.chat.submit(chat)  # a full queue is a 503 here, before any response starts
    interval = services.settings.server.keepalive_interval_s
    if req.stream:
        return SSEResponse(_sse_events(services, ctx, chat), keepalive_s=interval)

    async def answer() -> dict[str, Any]:
        return dialects.completion_body(ctx, await services.chat.complete(chat))

    return PatientJSONResponse(answer(), interval)


async def _sse_events(services: Services, ctx: dialects.ResponseContext, chat: PreparedChat
                      ) -> AsyncGenerator[bytes, None]:
    first = dialects.first_chunk(ctx)
    if first is not None:
        yield sse_event(first)
    async with aclosing(services.chat.stream(chat)) as items:
        async for item in items:
            if isinstance(item, Delta):
                yield sse_event(dialects.delta_chunk(ctx, item))
            else:
                for chunk in dialects.finish_chunks(ctx, item):
                    yield sse_event(chunk)
    yield DONE

