"""The text completions endpoint (`/v1/completions`, `/beta/completions`): its wire contract,
FIM and plain prompts served through the chat pipeline, and the `text_completion` shape."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import Response

from seekserve.api.accounting import Accounting, RequestAccount, accounted_response
from seekserve.api.auth import Caller
from seekserve.api.requests import read_body, validation_error
from seekserve.api.routes import CHAT_ERRORS, ERROR_RESPONSES
from seekserve.api.schemas import (
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS,
    USER_ID_PATTERN,
    StreamOptions,
    Usage,
)
from seekserve.api.sse import DONE, answer_response, sse_event
from seekserve.chat.completions import (
    MAX_COMPLETION_TOKENS,
    LegacyLogprobs,
    TextCompletionRequest,
    prepare_completion,
)
from seekserve.chat.service import Delta, Finished, PreparedChat
from seekserve.engines.base import SamplingParams
from seekserve.errors import InvalidRequestError
from seekserve.metrics import request_context
from seekserve.registry import Deployment
from seekserve.services import Services
from seekserve.tenancy.auth import allow_model

log = logging.getLogger(__name__)


class CompletionRequest(BaseModel):
    """POST /beta/completions (DeepSeek's FIM completion) and /v1/completions (OpenAI's legacy
    completions): one prompt, an optional suffix to fill up to."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, description="Model id or alias.")
    prompt: str | list[str] = Field(
        description="The text to continue (the part before the gap with `suffix`); an array "
        "may hold one string.")
    suffix: str | None = Field(
        None, description="The text after the gap: the model fills in between prompt and "
        "suffix (fill-in-the-middle). Null or empty: a plain completion of prompt.")
    echo: bool | None = Field(
        None, description="Put the prompt (never the suffix) before the generated text.")
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_COMPLETION_TOKENS,
        description=f"Most tokens to generate (at most {MAX_COMPLETION_TOKENS}, as DeepSeek "
        "caps FIM); default: that, or what the context leaves.")
    stop: str | list[str] | None = Field(
        None, description="Up to 16 strings; generation ends before the first one found.")
    stream: bool | None = Field(None, description="Stream text_completion chunks over SSE.")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling mass.")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="Return the log-probability of each "
        "generated token and of this many most likely alternatives.")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="Accepted, no effect.")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="Accepted, no effect.")
    n: int | None = Field(None, description="Completions per prompt: only 1 is supported.")
    best_of: int | None = Field(None, description="Only 1 is supported.")
    user_id: str | None = Field(
        None, max_length=512, pattern=USER_ID_PATTERN, description="End-user id for isolation.")
    user: str | None = Field(
        None, max_length=512, pattern=USER_ID_PATTERN,
        description="The same as user_id (the OpenAI SDK's name for it).")
    seed: int | None = Field(None, description="Same seed, same output (for the same batch).")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(
                "must be a string or an array of one string; a batch of "
                f"{len(value)} prompts is not supported (send one request per prompt)")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, "
                             f"got {len(items)}")
        if any(s == "" for s in items):
            raise ValueError("a stop sequence cannot be empty")
        return value

    @field_validator("n", "best_of")
    @classmethod
    def _only_one(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError(f"only 1 is supported, got {value}")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def end_user(self) -> str | None:
        return self.user_id if self.user_id is not None else self.user

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def internal(self) -> TextCompletionRequest:
        sampling = SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
        )
        return TextCompletionRequest(prompt=self.prompt_text(), suffix=self.suffix or None,
                                     max_tokens=self.max_tokens, sampling=sampling,
                                     stops=self.stop_list(), user_id=self.end_user())


def parse_completion_request(body: bytes) -> CompletionRequest:
    if not body.strip():
        raise InvalidRequestError("The request body is empty; send a JSON object.",
                                  code="invalid_json")
    try:
        req = CompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, body) from None
    unknown = sorted(req.model_extra or {})
    if unknown:
        log.info("ignoring unknown request fields: %s", ", ".join(unknown))
    if req.user_id is not None and req.user is not None and req.user_id != req.user:
        raise InvalidRequestError("user and user_id name the same thing and differ here; send "
                                  "one of them", param="user")
    if req.echo and req.logprobs is not None:
        # OpenAI's echo with logprobs scores the prompt's tokens too, which no engine here does.
        raise InvalidRequestError(
            "echo cannot be combined with logprobs: the prompt's tokens have no "
            "log-probabilities here; ask for one or the other", param="echo")
    return req


# ----- responses (documented in the OpenAPI description; built as dicts on the hot path) -----


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(description="The generated tokens' text.")
    token_logprobs: list[float] = Field(description="The log-probability of each token.")
    top_logprobs: list[dict[str, float]] = Field(
        description="Per token: the most likely alternatives and the token itself.")
    text_offset: list[int] = Field(description="Where each token starts in `text`.")


class CompletionChoice(BaseModel):
    index: int
    text: str = Field(description="The generated text (after the prompt with `echo`).")
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length", "content_filter",
                           "insufficient_system_resource"] | None
    matched_stop: str | None = Field(None, description="The stop string that ended it.")


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice] = Field(description="One choice; empty in a usage chunk.")
    usage: Usage | None
    system_fingerprint: str | None


COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A text completion (JSON), or its SSE stream of `text_completion` "
        "chunks when `stream` is true.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TextCompletion"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **ERROR_RESPONSES,
    **CHAT_ERRORS,
}
COMPLETION_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/CompletionRequest"}}}}}


@dataclass(frozen=True)
class _Rendering:
    """What every body of one response repeats, and the text echoed before the completion."""

    id: str
    created: int
    model: str  # as the client asked for it
    system_fingerprint: str
    include_usage: bool
    echo: str


def build_completions_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions", responses=COMPLETION_RESPONSES,
                 openapi_extra=COMPLETION_BODY, tags=["completions"], response_model=None,
                 summary="Create a text completion (fill-in-the-middle with `suffix`)")
    async def completions(request: Request) -> Response:
        return await _serve(request)

    @router.post("/beta/completions", responses=COMPLETION_RESPONSES,
                 openapi_extra=COMPLETION_BODY, tags=["completions"], response_model=None,
                 summary="Create a FIM completion (DeepSeek's beta base URL)")
    async def beta_completions(request: Request) -> Response:
        return await _serve(request)

    return router


async def _serve(request: Request) -> Response:
    services = Services.of(request)
    caller = await services.auth.authenticate(request)
    deployment = services.router.for_plain_route(request.headers.get("host"))
    return await _serve_completion(request, services, deployment, caller)


async def _serve_completion(request: Request, services: Services, deployment: Deployment,
                            caller: Caller) -> Response:
    arrived = time.perf_counter()
    body = await read_body(request, services.settings.limits.max_body_bytes)
    req = parse_completion_request(body)
    user_id = req.end_user()
    context = request_context(request)
    if context is not None:
        context.key_id, context.user_id = caller.key_id, user_id
    model = services.registry.resolve(req.model, deployment)
    allow_model(caller, model, req.model)
    if context is not None:
        context.model = model.id
    engine = services.engines.get(model.engine_name)
    if engine is None:
        # A remote engine passes chat requests through; it has no token prompt to frame.
        raise InvalidRequestError(
            f"The model `{req.model}` is served by a remote chat engine, which does not do "
            "text or FIM completions here; use a model on a local engine.", param="model",
            code="unsupported_model")
    accounting = Accounting.of(request)
    texts = [req.prompt_text()] + ([req.suffix] if req.suffix else [])
    await accounting.moderator.check_prompt(texts, deployment=deployment.name, user_id=user_id)
    request_id = "cmpl-" + secrets.token_urlsafe(18)
    chat = prepare_completion(req.internal(), model, engine, services.settings.limits,
                              request_id=request_id,
                              cache_salt=services.cache_salt(caller, user_id))
    chat.guard = accounting.moderator.output_guard(deployment.name)
    # From here on the request holds its limits and budget: every way out closes its account.
    account = await accounting.admit(caller=caller, chat=chat, deployment=deployment,
                                     route=request.url.path, arrived=arrived)

    def build() -> Response:
        ctx = _Rendering(
            id=request_id,
            created=int(time.time()),
            model=req.model,
            system_fingerprint=services.settings.server.system_fingerprint,
            include_usage=bool(req.stream_options and req.stream_options.include_usage),
            echo=req.prompt_text() if req.echo else "",
        )
        services.chat.submit(chat)  # a full queue is a 503 here, before any response starts
        return answer_response(bool(req.stream), lambda: _sse_events(services, ctx, chat, account),
                               lambda: _answer(services, ctx, chat, account),
                               keepalive_s=services.settings.server.keepalive_interval_s,
                               headers=account.headers())

    return await accounted_response(account, build)


def _body(ctx: _Rendering, choices: list[dict[str, Any]], **usage: dict[str, Any] | None
          ) -> dict[str, Any]:
    """A whole answer or one chunk; `usage` is given as a keyword where the body has it."""
    return {
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": choices,
        **usage,
        "system_fingerprint": ctx.system_fingerprint,
    }


def _choice(text: str, logprobs: dict[str, Any] | None, finish: Finished | None
            ) -> dict[str, Any]:
    return {
        "index": 0,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": finish.finish_reason if finish is not None else None,
        "matched_stop": finish.matched_stop if finish is not None else None,
    }


async def _answer(services: Services, ctx: _Rendering, chat: PreparedChat,
                  account: RequestAccount) -> dict[str, Any]:
    try:
        result = await services.chat.complete(chat)
    except Exception as exc:
        account.failed(exc)
        raise
    account.finished(result.finish)
    logprobs = (LegacyLogprobs(len(ctx.echo)).convert(result.logprobs)
                if result.logprobs is not None else None)
    choice = _choice(ctx.echo + result.content, logprobs, result.finish)
    return _body(ctx, [choice], usage=result.finish.usage.body())


async def _sse_events(services: Services, ctx: _Rendering, chat: PreparedChat,
                      account: RequestAccount) -> AsyncGenerator[bytes, None]:
    # Without include_usage no chunk carries `usage`; with it every chunk does, null until the
    # last (as OpenAI streams it).
    no_usage: dict[str, None] = {"usage": None} if ctx.include_usage else {}

    def chunk(choice: dict[str, Any]) -> bytes:
        return sse_event(_body(ctx, [choice], **no_usage))

    offsets = LegacyLogprobs(len(ctx.echo))
    if ctx.echo:
        yield chunk(_choice(ctx.echo, None, None))
    try:
        async with aclosing(services.chat.stream(chat)) as items:
            async for item in items:
                if isinstance(item, Delta):
                    if not item.text and not item.logprobs:
                        continue
                    logprobs = (offsets.convert(item.logprobs)
                                if item.logprobs is not None else None)
                    yield chunk(_choice(item.text, logprobs, None))
                else:
                    account.finished(item)
                    yield chunk(_choice("", None, item))
                    if ctx.include_usage:
                        yield sse_event(_body(ctx, [], usage=item.usage.body()))
    except Exception as exc:  # the stream turns it into an in-band error event
        account.failed(exc)
        raise
    yield DONE
