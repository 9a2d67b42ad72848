"""Chat semantics over any engine: prompt rendering, limits, stop strings, logprobs and usage."""

from __future__ import annotations

import codecs
import json
import logging
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from seekserve.api.schemas import ChatCompletionRequest, ChatMessage
from seekserve.chat.stops import StopMatcher
from seekserve.chat.template import ChatTemplate
from seekserve.engines.base import (
    Engine,
    EngineFailure,
    EngineOverloaded,
    EventStream,
    FinishEvent,
    GenerationRequest,
    QueueTimeout,
    SamplingParams,
    ShuttingDown,
    StartEvent,
    TokenEvent,
)
from seekserve.errors import (
    APIError,
    EngineError,
    InvalidRequestError,
    ServerOverloadedError,
    ServiceUnavailableError,
)
from seekserve.moderation import OutputGuard
from seekserve.registry import ServedModel
from seekserve.settings import LimitSettings

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "insufficient_system_resource", "content_filter"]
_ENGINE_FINISH: dict[str, FinishReason] = {
    "eos": "stop",
    "length": "length",
    "resources": "insufficient_system_resource",
}


class GenerationObserver(Protocol):
    """Told what the engine reports as it happens, so a stream cut short is still accounted."""

    def on_start(self, event: StartEvent) -> None: ...

    def on_token(self) -> None: ...


@dataclass
class PreparedChat:
    """A validated request bound to its model and engine, with its prompt tokens."""

    request: ChatCompletionRequest
    model: ServedModel
    engine: Engine
    generation: GenerationRequest
    stops: list[str]
    # Set by ChatService.submit: the engine accepted the request into its queue.
    events: EventStream | None = None
    # Output moderation: text is shown only once the guard releases it.
    guard: OutputGuard | None = None
    observer: GenerationObserver | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt)


@dataclass
class Delta:
    """Text safe to show now, with the log-probabilities of the tokens that produced it."""

    text: str
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def body(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
            "prompt_cache_hit_tokens": self.cached_tokens,
            "prompt_cache_miss_tokens": self.prompt_tokens - self.cached_tokens,
        }


@dataclass
class Finished:
    finish_reason: FinishReason
    matched_stop: str | None
    usage: Usage


@dataclass
class CompletedChat:
    """A whole non-streamed answer."""

    content: str
    finish: Finished
    logprobs: list[dict[str, Any]] | None = field(default=None)


def _history_message(msg: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role, "content": msg.text()}
    if msg.name is not None:
        out["name"] = msg.name
    if msg.tool_call_id is not None:
        out["tool_call_id"] = msg.tool_call_id
    if msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.function.name,
                    "arguments": _json_or_text(c.function.arguments),
                },
            }
            for c in msg.tool_calls
        ]
    return out


def _json_or_text(arguments: str) -> Any:
    # Templates (Qwen's among them) serialise arguments with tojson: give them the object.
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


class ChatService:
    """Runs a chat request on its model's engine and reports text, finish and usage."""

    def __init__(self, engines: Mapping[str, Engine], limits: LimitSettings) -> None:
        self._engines = engines
        self._limits = limits
        self._templates: dict[str, ChatTemplate] = {}

    def engine_for(self, model: ServedModel) -> Engine:
        return self._engines[model.engine_name]

    def _template(self, model: ServedModel, engine: Engine) -> ChatTemplate:
        template = self._templates.get(model.engine_name)
        if template is None:
            template = self._templates[model.engine_name] = ChatTemplate(engine.chat_template)
        return template

    def check_limits(self, req: ChatCompletionRequest) -> None:
        lim = self._limits
        if len(req.model) > lim.max_model_chars:
            raise InvalidRequestError(
                f"model is longer than {lim.max_model_chars} characters", param="model")
        if len(req.messages) > lim.max_messages:
            raise InvalidRequestError(
                f"messages has {len(req.messages)} items; the limit is {lim.max_messages}",
                param="messages", code="too_many_messages")
        for i, msg in enumerate(req.messages):
            if isinstance(msg.content, list) and len(msg.content) > lim.max_content_parts:
                raise InvalidRequestError(
                    f"messages[{i}].content has {len(msg.content)} parts; the limit is "
                    f"{lim.max_content_parts}", param=f"messages[{i}].content")
            size = len(msg.text()) + len(msg.reasoning_content or "")
            if size > lim.max_message_chars:
                raise InvalidRequestError(
                    f"messages[{i}] has {size} characters; the limit is "
                    f"{lim.max_message_chars}", param=f"messages[{i}].content",
                    code="message_too_long")
        if req.system_instruction and len(req.system_instruction) > lim.max_message_chars:
            raise InvalidRequestError(
                f"system_instruction is longer than {lim.max_message_chars} characters",
                param="system_instruction")
        for stop in req.stop_list():
            if len(stop) > lim.max_stop_chars:
                raise InvalidRequestError(
                    f"a stop sequence is longer than {lim.max_stop_chars} characters",
                    param="stop")
        if req.tools is not None and len(req.tools) > lim.max_tools:
            raise InvalidRequestError(
                f"tools has {len(req.tools)} items; the limit is {lim.max_tools}", param="tools")

    def prepare(self, req: ChatCompletionRequest, model: ServedModel, *, request_id: str,
                cache_salt: bytes = b"") -> PreparedChat:
        self.check_limits(req)
        engine = self.engine_for(model)
        prompt = self._encode_prompt(req, engine, self._template(model, engine))
        limit = engine.max_sequence_tokens
        if len(prompt) >= limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens, but the messages "
                f"have {len(prompt)} tokens.", param="messages", code="context_length_exceeded")
        max_tokens = req.max_tokens if req.max_tokens is not None else limit - len(prompt)
        if len(prompt) + max_tokens > limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, {max_tokens} "
                f"in max_tokens). Reduce the length of the messages or max_tokens.",
                param="max_tokens", code="context_length_exceeded")
        sampling = SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            seed=req.seed,
            logprobs=bool(req.logprobs),
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else 0,
        )
        generation = GenerationRequest(request_id=request_id, prompt=prompt,
                                       max_tokens=max_tokens, sampling=sampling,
                                       cache_salt=cache_salt)
        return PreparedChat(req, model, engine, generation, req.stop_list())

    def _encode_prompt(self, req: ChatCompletionRequest, engine: Engine,
                       template: ChatTemplate) -> list[int]:
        messages = list(req.messages)
        continuation: str | None = None
        if messages[-1].role == "assistant" and messages[-1].prefix:
            continuation = messages.pop().text()
        history = [_history_message(m) for m in messages]
        if req.system_instruction:
            history.insert(0, {"role": "system", "content": req.system_instruction})
        tok = engine.tokenizer
        text = template.render(history, add_generation_prompt=True, bos_token=tok.bos_text,
                               eos_token=tok.eos_text)
        if continuation:
            text += continuation
        add_bos = tok.add_bos and not (tok.bos_text and text.startswith(tok.bos_text))
        return tok.encode(text, add_special=add_bos, parse_special=True)

    def submit(self, chat: PreparedChat) -> None:
        """Queue the request on its engine now, so a full queue is a 503 before any response
        starts; the stream and the completion then read its events."""
        if chat.events is not None:
            return
        try:
            chat.events = chat.engine.generate(chat.generation)
        except EngineFailure as exc:
            raise _api_error(chat, exc) from None

    async def stream(self, chat: PreparedChat) -> AsyncGenerator[Delta | Finished, None]:
        """Deltas of visible text (stop strings held back and cut), then one Finished.

        With an output guard, a flagged output stops generation (the engine stream is closed)
        and finishes with `content_filter`; the text before the match is the last shown."""
        self.submit(chat)
        assert chat.events is not None
        tokenizer = chat.engine.tokenizer
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopMatcher(chat.stops)
        guard = chat.guard
        observer = chat.observer
        want_logprobs = chat.generation.sampling.logprobs
        # (end offset of the token's text, its logprob entry), released with that text.
        pending: deque[tuple[int, dict[str, Any]]] = deque()
        produced = emitted = 0
        generated = 0
        cached = 0
        finish: FinishEvent | None = None
        try:
            async with aclosing(chat.events) as events:
                async for event in events:
                    if isinstance(event, StartEvent):
                        cached = event.cached_tokens
                        if observer is not None:
                            observer.on_start(event)
                        continue
                    if isinstance(event, FinishEvent):
                        finish = event
                        break
                    generated += 1
                    if observer is not None:
                        observer.on_token()
                    text = decoder.decode(tokenizer.piece(event.token_id))
                    produced += len(text)
                    if want_logprobs:
                        pending.append((produced, self._logprob_entry(tokenizer, event)))
                    visible = matcher.feed(text)
                    if guard is not None:
                        visible = guard.feed(visible)
                    emitted += len(visible)
                    ended = matcher.matched is not None or (guard is not None and guard.flagged)
                    lps = self._release(pending, emitted, partial=ended)
                    if visible or lps:
                        yield Delta(visible, lps if want_logprobs else None)
                    if ended:
                        break
        except EngineFailure as exc:
            raise _api_error(chat, exc) from None
        tail = ""
        if matcher.matched is None and not (guard is not None and guard.flagged):
            tail = matcher.flush() + decoder.decode(b"", final=True)
        if guard is not None:
            tail = guard.feed(tail) + guard.finish()
        emitted += len(tail)
        lps = self._release(pending, emitted, partial=True)
        if tail or lps:
            yield Delta(tail, lps if want_logprobs else None)
        usage = Usage(prompt_tokens=chat.prompt_tokens, completion_tokens=generated,
                      cached_tokens=cached)
        if finish is not None:
            usage.completion_tokens = finish.completion_tokens
            usage.cached_tokens = finish.cached_tokens
        if guard is not None and guard.flagged:
            yield Finished("content_filter", None, usage)
            return
        if matcher.matched is not None:
            yield Finished("stop", matcher.matched, usage)
            return
        if finish is None:
            raise EngineError("The engine ended the sequence without a finish event.")
        yield Finished(_ENGINE_FINISH[finish.reason], None, usage)

    async def complete(self, chat: PreparedChat) -> CompletedChat:
        parts: list[str] = []
        logprobs: list[dict[str, Any]] | None = [] if chat.generation.sampling.logprobs else None
        async with aclosing(self.stream(chat)) as items:
            async for item in items:
                if isinstance(item, Delta):
                    parts.append(item.text)
                    if logprobs is not None and item.logprobs:
                        logprobs.extend(item.logprobs)
                else:
                    return CompletedChat("".join(parts), item, logprobs)
        raise EngineError("The engine ended the sequence without a finish event.")

    @staticmethod
    def _release(pending: deque[tuple[int, dict[str, Any]]], emitted: int, *, partial: bool
                 ) -> list[dict[str, Any]]:
        """Entries whose text is now visible; with `partial`, also those cut short by the end."""
        out: list[dict[str, Any]] = []
        while pending and pending[0][0] <= emitted:
            out.append(pending.popleft()[1])
        if partial:
            start = emitted
            while pending:
                end, entry = pending.popleft()
                if end - len(entry["token"]) < start:
                    out.append(entry)
        return out

    @staticmethod
    def _logprob_entry(tokenizer: Any, event: TokenEvent) -> dict[str, Any]:
        def describe(token_id: int, logprob: float) -> dict[str, Any]:
            piece = tokenizer.piece(token_id)
            return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob,
                    "bytes": list(piece)}

        entry = describe(event.token_id, event.logprob if event.logprob is not None else 0.0)
        entry["top_logprobs"] = [describe(t.token_id, t.logprob) for t in event.top]
        return entry


def _api_error(chat: PreparedChat, exc: EngineFailure) -> APIError:
    """What the client is told about an engine failure (internals stay in the log)."""
    if isinstance(exc, EngineOverloaded):
        return ServerOverloadedError(
            f"The server is overloaded ({exc}); please retry after {exc.retry_after_s} s.",
            headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, QueueTimeout):
        return ServerOverloadedError(f"The server is overloaded: {exc}.", code="queue_timeout")
    if isinstance(exc, ShuttingDown):
        return ServiceUnavailableError("The server is shutting down; please retry.",
                                       code="server_shutting_down")
    log.error("request %s: engine failure: %s", chat.generation.request_id, exc)
    return EngineError("The engine failed while generating; please retry.")


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)
