"""The text completions endpoint (`/v1/completions`, `/beta/completions`): its wire contract
(with vLLM's token-level extensions), FIM, plain and token-id prompts served through the chat
pipeline, and the `text_completion` shape."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal, cast

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
    CompletionGrammar,
    LegacyLogprobs,
    TextCompletionRequest,
    decode_prompt,
    prepare_completion,
)
from seekserve.chat.service import Delta, Finished, PreparedChat
from seekserve.chat.structured import GrammarError, json_schema_grammar
from seekserve.engines.base import SamplingParams
from seekserve.errors import InvalidRequestError
from seekserve.metrics import request_context
from seekserve.registry import Deployment
from seekserve.services import Services
from seekserve.tenancy.auth import allow_model

log = logging.getLogger(__name__)

MAX_CACHE_SALT_CHARS = 256


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs`: what the whole completion must match. One of `grammar` and
    `json`; vLLM's other kinds (`regex`, `choice`, `structural_tag`, ...) are refused."""

    model_config = ConfigDict(extra="allow", strict=True)

    grammar: str | None = Field(
        None, description="An llguidance Lark grammar (a first line `%llguidance {}` is fine).")
    json_schema: dict[str, Any] | str | None = Field(
        None, alias="json", description="A JSON Schema, as an object or a JSON string of one.")

    def lark(self) -> CompletionGrammar:
        """The grammar asked for; raises InvalidRequestError (400) naming the field."""
        if self.grammar is not None:
            return CompletionGrammar(self.grammar, "structured_outputs.grammar")
        param = "structured_outputs.json"
        schema: Any = self.json_schema
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidRequestError(f"{param} is a string that is not JSON: {exc}",
                                          param=param) from None
        if not isinstance(schema, dict):
            raise InvalidRequestError(f"{param} must be a JSON Schema object", param=param)
        try:
            return CompletionGrammar(json_schema_grammar(schema), param)
        except GrammarError as exc:
            raise InvalidRequestError(f"{param} cannot be used: {exc}", param=param) from None


class CompletionRequest(BaseModel):
    """POST /beta/completions (DeepSeek's FIM completion) and /v1/completions (OpenAI's legacy
    completions): one prompt, an optional suffix to fill up to."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, description="Model id or alias.")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="The text to continue (the part before the gap with `suffix`); an array "
        "may hold one string. Or token ids (an array, or an array of one array), used as "
        "given: no BOS is added.")
    suffix: str | None = Field(
        None, description="The text after the gap: the model fills in between prompt and "
        "suffix (fill-in-the-middle). Null or empty: a plain completion of prompt.")
    echo: bool | None = Field(
        None, description="Put the prompt (never the suffix) before the generated text.")
    max_tokens: int | None = Field(
        None, ge=1,
        description=f"Most tokens to generate (at most {MAX_COMPLETION_TOKENS} for a text "
        "prompt, as DeepSeek caps FIM; for token ids, what the context leaves); default: "
        f"{MAX_COMPLETION_TOKENS}, or what the context leaves.")
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
    # vLLM's extensions (its /v1/completions takes the same names).
    return_token_ids: bool | None = Field(
        None, description="Also return token ids: the generated ones as `choices[0].token_ids` "
        "(streamed: those since the previous chunk) and the prompt's as `prompt_token_ids` "
        "(streamed: in the first chunk).")
    structured_outputs: StructuredOutputs | None = Field(
        None, description="Constrain the whole completion to a grammar or a JSON Schema.")
    include_stop_str_in_output: bool | None = Field(
        None, description="Keep the matched stop string (or stop token) at the end of the text.")
    min_tokens: int | None = Field(
        None, ge=0, description="End-of-generation is banned until this many tokens were "
        "generated.")
    ignore_eos: bool | None = Field(
        None, description="Never end on end-of-generation: generate max_tokens tokens (or "
        "up to a stop).")
    stop_token_ids: list[int] | None = Field(
        None, description="Token ids that end the completion once generated (finish_reason "
        "`stop`, `stop_reason` the id); their text is left out unless "
        "include_stop_str_in_output.")
    return_tokens_as_token_ids: bool | None = Field(
        None, description="With logprobs, each token is written `token_id:<id>` instead of "
        "its text.")
    cache_salt: str | None = Field(
        None, min_length=1, max_length=MAX_CACHE_SALT_CHARS,
        description="Prompt-cache isolation: only requests with the same salt (and the same "
        "API key and user) share cached prompt prefixes.")
    skip_special_tokens: bool | None = Field(
        None, description="Only false is supported: special tokens are written in the text.")
    add_special_tokens: bool | None = Field(
        None, description="False: no BOS token before a text prompt.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int] | list[list[int]]
                    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("must be a string, an array of one string, or a non-empty array "
                             "of token ids")
        if not isinstance(value[0], int) and len(value) != 1:
            raise ValueError(
                "must be a string, an array of one string, or token ids; a batch of "
                f"{len(value)} prompts is not supported (send one request per prompt)")
        if isinstance(value[0], list) and not value[0]:
            raise ValueError("an array of token ids cannot be empty")
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

    def one_prompt(self) -> str | list[int]:
        """The prompt: its text, or its token ids."""
        if isinstance(self.prompt, str):
            return self.prompt
        first = self.prompt[0]
        if isinstance(first, int):
            return cast("list[int]", self.prompt)
        return first

    def end_user(self) -> str | None:
        return self.user_id if self.user_id is not None else self.user

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def internal(self) -> TextCompletionRequest:
        """The request as the chat layer takes it; raises InvalidRequestError (400) for a
        schema that cannot become a grammar."""
        sampling = SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            logprobs=self.logprobs is not None,
            top_logprobs=self.logprobs or 0,
        )
        return TextCompletionRequest(
            prompt=self.one_prompt(), suffix=self.suffix or None,
            max_tokens=self.max_tokens, sampling=sampling, stops=self.stop_list(),
            user_id=self.end_user(), add_special=self.add_special_tokens is not False,
            grammar=self.structured_outputs.lark() if self.structured_outputs else None,
            min_tokens=self.min_tokens or 0, ignore_eos=bool(self.ignore_eos),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            include_stop=bool(self.include_stop_str_in_output),
            want_token_ids=bool(self.return_token_ids))

    def reports_stop_reason(self) -> bool:
        """Choices carry vLLM's `stop_reason` (asked for by its token-level fields)."""
        return bool(self.return_token_ids) or self.stop_token_ids is not None


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
    _check_token_fields(req)
    return req


def _check_token_fields(req: CompletionRequest) -> None:
    """What vLLM's extensions need beyond their types."""
    text = isinstance(req.one_prompt(), str)
    if text and req.max_tokens is not None and req.max_tokens > MAX_COMPLETION_TOKENS:
        raise InvalidRequestError(
            f"Invalid value for max_tokens: at most {MAX_COMPLETION_TOKENS} with a text prompt, "
            f"got {req.max_tokens}", param="max_tokens")
    if req.skip_special_tokens:
        raise InvalidRequestError(
            "skip_special_tokens: only false is supported; special tokens are written in the "
            "text as they are.", param="skip_special_tokens")
    outputs = req.structured_outputs
    if outputs is not None:
        # vLLM's other kinds, and its options; null or false is the same as absent.
        others = sorted(k for k, v in (outputs.model_extra or {}).items()
                        if v is not None and v is not False)
        if others:
            raise InvalidRequestError(
                f"structured_outputs: {', '.join(others)} is not supported; send `grammar` (an "
                "llguidance Lark grammar) or `json` (a JSON Schema).",
                param="structured_outputs")
        if (outputs.grammar is None) == (outputs.json_schema is None):
            raise InvalidRequestError(
                "structured_outputs needs exactly one of `grammar` (an llguidance Lark "
                "grammar) and `json` (a JSON Schema).", param="structured_outputs")


def _salted(salt: bytes, client_salt: str | None) -> bytes:
    """The server-derived cache salt split further by the client's own `cache_salt`: two client
    salts never share a cached prefix, and no client salt reaches another caller's cache."""
    if client_salt is None:
        return salt
    return hashlib.sha256(salt + b"\x00" + client_salt.encode()).digest()


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
    stop_reason: str | int | None = Field(
        None, description="vLLM's: the stop string or stop token id that ended it (with "
        "`return_token_ids` or `stop_token_ids`).")
    token_ids: list[int] | None = Field(
        None, description="The generated token ids (with `return_token_ids`).")
    prompt_token_ids: list[int] | None = Field(
        None, description="The prompt's token ids as the engine got them (with "
        "`return_token_ids`; streamed: in the first chunk).")


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
    token_ids: bool = False  # return_token_ids
    token_names: bool = False  # return_tokens_as_token_ids
    stop_reason: bool = False


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
    given = req.one_prompt()
    prompt = given if isinstance(given, str) else decode_prompt(engine.tokenizer, given)
    texts = [prompt] + ([req.suffix] if req.suffix else [])
    await accounting.moderator.check_prompt(texts, deployment=deployment.name, user_id=user_id)
    request_id = "cmpl-" + secrets.token_urlsafe(18)
    compiler = (services.chat.compiler_for(model, engine)
                if req.structured_outputs is not None else None)
    chat = prepare_completion(req.internal(), model, engine, services.settings.limits,
                              request_id=request_id, compiler=compiler,
                              cache_salt=_salted(services.cache_salt(caller, user_id),
                                                 req.cache_salt))
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
            echo=prompt if req.echo else "",
            token_ids=bool(req.return_token_ids),
            token_names=bool(req.return_tokens_as_token_ids),
            stop_reason=req.reports_stop_reason(),
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


def _choice(ctx: _Rendering, text: str, logprobs: dict[str, Any] | None,
            finish: Finished | None, token_ids: list[int] | None = None,
            prompt_token_ids: list[int] | None = None) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": finish.finish_reason if finish is not None else None,
        "matched_stop": finish.matched_stop if finish is not None else None,
    }
    if ctx.stop_reason:
        choice["stop_reason"] = _stop_reason(finish)
    if ctx.token_ids:
        choice["token_ids"] = token_ids or []
        if prompt_token_ids is not None:
            choice["prompt_token_ids"] = prompt_token_ids
    return choice


def _stop_reason(finish: Finished | None) -> str | int | None:
    if finish is None:
        return None
    return finish.matched_stop if finish.matched_stop is not None else finish.stop_token


async def _answer(services: Services, ctx: _Rendering, chat: PreparedChat,
                  account: RequestAccount) -> dict[str, Any]:
    try:
        result = await services.chat.complete(chat)
    except Exception as exc:
        account.failed(exc)
        raise
    account.finished(result.finish)
    logprobs = (LegacyLogprobs(len(ctx.echo), token_ids=ctx.token_names).convert(result.logprobs)
                if result.logprobs is not None else None)
    choice = _choice(ctx, ctx.echo + result.content, logprobs, result.finish, result.token_ids,
                     chat.generation.prompt)
    return _body(ctx, [choice], usage=result.finish.usage.body())


async def _sse_events(services: Services, ctx: _Rendering, chat: PreparedChat,
                      account: RequestAccount) -> AsyncGenerator[bytes, None]:
    # Without include_usage no chunk carries `usage`; with it every chunk does, null until the
    # last (as OpenAI streams it).
    no_usage: dict[str, None] = {"usage": None} if ctx.include_usage else {}

    # The prompt's token ids go in the first chunk (with return_token_ids).
    prompt_ids: list[int] | None = chat.generation.prompt

    def chunk(text: str, logprobs: dict[str, Any] | None, finish: Finished | None,
              token_ids: list[int] | None = None) -> bytes:
        nonlocal prompt_ids
        choice = _choice(ctx, text, logprobs, finish, token_ids, prompt_ids)
        prompt_ids = None
        return sse_event(_body(ctx, [choice], **no_usage))

    offsets = LegacyLogprobs(len(ctx.echo), token_ids=ctx.token_names)
    if ctx.echo:
        yield chunk(ctx.echo, None, None)
    try:
        async with aclosing(services.chat.stream(chat)) as items:
            async for item in items:
                if isinstance(item, Delta):
                    if not item.text and not item.logprobs and not item.token_ids:
                        continue
                    logprobs = (offsets.convert(item.logprobs)
                                if item.logprobs is not None else None)
                    yield chunk(item.text, logprobs, None, item.token_ids)
                else:
                    account.finished(item)
                    yield chunk("", None, item)
                    if ctx.include_usage:
                        yield sse_event(_body(ctx, [], usage=item.usage.body()))
    except Exception as exc:  # the stream turns it into an in-band error event
        account.failed(exc)
        raise
    yield DONE
