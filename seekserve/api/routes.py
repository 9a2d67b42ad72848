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
from seekserve.api.accounting import Accounting, RequestAccount, accounted_response
from seekserve.api.auth import Caller
from seekserve.api.requests import parse_chat_request, read_body
from seekserve.api.schemas import ChatCompletionRequest, ErrorBody, ModelList
from seekserve.api.sse import DONE, answer_response, sse_event
from seekserve.chat.service import Delta, Finished, PreparedChat, new_completion_id
from seekserve.engines.remote.passthrough import RemoteChat
from seekserve.metrics import request_context
from seekserve.registry import Deployment, ServedModel
from seekserve.services import Services
from seekserve.tenancy.auth import allow_model

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request (names the field as `param`)."},
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    404: {"model": ErrorBody, "description": "Unknown model or endpoint path."},
    413: {"model": ErrorBody, "description": "Request body over the limit."},
    500: {"model": ErrorBody, "description": "Server error."},
}
# What chat requests answer besides the common errors (moderation's is a 400 content_filter).
CHAT_ERRORS: dict[int | str, dict[str, Any]] = {
    402: {"model": ErrorBody, "description": "The key's budget cannot cover the worst case "
          "(`insufficient_balance`)."},
    403: {"model": ErrorBody, "description": "The key may not use this model."},
    429: {"model": ErrorBody, "description": "Over a rate or concurrency limit; with "
          "`Retry-After` and `x-ratelimit-*` headers."},
    503: {"model": ErrorBody, "description": "Overloaded or shutting down; with `Retry-After`."},
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
    **CHAT_ERRORS,
}
CHAT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}}


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", responses=CHAT_RESPONSES, openapi_extra=CHAT_BODY,
                 summary="Create a chat completion", tags=["chat"],
                 response_model=None)
    @router.post("/beta/chat/completions", responses=CHAT_RESPONSES, openapi_extra=CHAT_BODY,
                 summary="Create a chat completion (DeepSeek's beta base URL)", tags=["chat"],
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
        engines = {name: engine.state() for name, engine in services.engine_states().items()}
        is_ready = services.started and all(s.loaded for s in engines.values())
        body = {
            "status": "ready" if is_ready else "starting",
            "engines": {name: vars(state) for name, state in engines.items()},
        }
        return JSONResponse(body, status_code=200 if is_ready else 503)

    return router


async def _serve_chat(request: Request, services: Services, deployment: Deployment,
                      caller: Caller) -> Response:
    arrived = time.perf_counter()
    body = await read_body(request, services.settings.limits.max_body_bytes)
    req = parse_chat_request(body)
    req = await services.files.inline(req, caller)  # file parts become text parts
    context = request_context(request)
    if context is not None:
        context.key_id, context.user_id = caller.key_id, req.user_id
    model = services.registry.resolve(req.model, deployment)
    allow_model(caller, model, req.model)
    if context is not None:
        context.model = model.id
    accounting = Accounting.of(request)
    await accounting.moderator.check_prompt(_prompt_texts(req), deployment=deployment.name,
                                            user_id=req.user_id)
    request_id = new_completion_id()
    chat = _prepare_chat(services, req, model, caller, request_id)
    chat.guard = accounting.moderator.output_guard(deployment.name)
    # From here on the request holds its limits and budget: every way out closes its account.
    account = await accounting.admit(caller=caller, chat=chat, deployment=deployment,
                                     route=request.url.path, arrived=arrived)

    def build() -> Response:
        ctx = dialects.ResponseContext(
            dialect=deployment.dialect,
            id=request_id,
            created=int(time.time()),
            model=req.model,
            system_fingerprint=services.settings.server.system_fingerprint,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
        )
        if isinstance(chat, PreparedChat):
            services.chat.submit(chat)  # a full queue is a 503 here, before any response starts
        return answer_response(bool(req.stream), lambda: _sse_events(services, ctx, chat, account),
                               lambda: _answer(services, ctx, chat, account),
                               keepalive_s=services.settings.server.keepalive_interval_s,
                               headers=account.headers())

    return await accounted_response(account, build)


def _prepare_chat(services: Services, req: ChatCompletionRequest, model: ServedModel,
                  caller: Caller, request_id: str) -> PreparedChat | RemoteChat:
    """`req` bound to its model's engine: a prompt for a token engine, or an upstream request
    for a remote engine (which runs the chat semantics itself)."""
    remote = services.remote_for(model)
    if remote is None:
        return services.chat.prepare(req, model, request_id=request_id,
                                     cache_salt=services.cache_salt(caller, req.user_id))
    services.chat.check_limits(req)
    return remote.prepare(req, model, request_id=request_id, key_digest=caller.key_digest)


def _stream(services: Services, chat: PreparedChat | RemoteChat
            ) -> AsyncGenerator[Delta | Finished, None]:
    if isinstance(chat, RemoteChat):
        return chat.engine.stream(chat)
    return services.chat.stream(chat)


def _prompt_texts(req: ChatCompletionRequest) -> list[str]:
    """Everything of the prompt that moderation reads."""
    texts = [req.system_instruction] if req.system_instruction else []
    for message in req.messages:
        texts.append(message.text())
        if message.reasoning_content:
            texts.append(message.reasoning_content)
    return texts


async def _answer(services: Services, ctx: dialects.ResponseContext,
                  chat: PreparedChat | RemoteChat, account: RequestAccount) -> dict[str, Any]:
    try:
        result = await (chat.engine.complete(chat) if isinstance(chat, RemoteChat)
                        else services.chat.complete(chat))
    except Exception as exc:
        account.failed(exc)
        raise
    account.finished(result.finish)
    return dialects.completion_body(ctx, result)


async def _sse_events(services: Services, ctx: dialects.ResponseContext,
                      chat: PreparedChat | RemoteChat, account: RequestAccount
                      ) -> AsyncGenerator[bytes, None]:
    first = dialects.first_chunk(ctx)
    if first is not None:
        yield sse_event(first)
    try:
        async with aclosing(_stream(services, chat)) as items:
            async for item in items:
                if isinstance(item, Delta):
                    chunk = dialects.delta_chunk(ctx, item)
                    if chunk is not None:
                        yield sse_event(chunk)
                else:
                    account.finished(item)
                    for chunk in dialects.finish_chunks(ctx, item):
                        yield sse_event(chunk)
    except Exception as exc:  # the stream turns it into an in-band error event
        account.failed(exc)
        raise
    yield DONE
