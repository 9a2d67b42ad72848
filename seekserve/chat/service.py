"""Chat semantics over any engine: prompt rendering, limits, stop strings, logprobs and usage."""

from __future__ import annotations

import codecs
import logging
import secrets
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from seekserve.api.schemas import ChatCompletionRequest
from seekserve.chat.output import OutputParser, Parsed
from seekserve.chat.plan import THINK_OPEN, OutputPlan, build_constraint, plan_output
from seekserve.chat.reasoning import OPEN_TAG
from seekserve.chat.stops import StopMatcher
from seekserve.chat.structured import GrammarCompiler, SequenceConstraint
from seekserve.chat.template import ChatTemplate
from seekserve.chat.thinking import history, plan_thinking, thinks_natively
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

FinishReason = Literal["stop", "length", "insufficient_system_resource", "content_filter",
                       "tool_calls"]
_ENGINE_FINISH: dict[str, FinishReason] = {
    "eos": "stop",
    "length": "length",
    "resources": "insufficient_system_resource",
}


class GenerationObserver(Protocol):
    """Told what the engine reports as it happens, so a stream cut short is still accounted."""

    def on_start(self, event: StartEvent) -> None: ...

    def on_token(self) -> None: ...


class Accountable(Protocol):
    """What accounting needs of any admitted request (chat, text completion, pass-through):
    who and what it is for, its worst case, and where to report what the engine does."""

    guard: OutputGuard | None
    observer: GenerationObserver | None

    @property
    def request_id(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...


@dataclass
class PreparedChat:
    """A validated request bound to its model and engine, with its prompt tokens."""

    # None for a request that is not a chat (a text completion: FIM, /v1/completions).
    request: ChatCompletionRequest | None
    model: ServedModel
    engine: Engine
    generation: GenerationRequest
    stops: list[str]
    user_id: str | None = None
    # How the output text is parsed (reasoning, tool calls); None: all of it is content.
    parser: OutputParser | None = None
    thinking: bool = False  # the answer carries reasoning_content (maybe empty)
    # Set by ChatService.submit: the engine accepted the request into its queue.
    events: EventStream | None = None
    # Output moderation: text is shown only once the guard releases it.
    guard: OutputGuard | None = None
    observer: GenerationObserver | None = None
    # Token-level output (vLLM's return_token_ids): every generated token id reaches exactly
    # one Delta, in order, each with its own logprob entry.
    want_token_ids: bool = False
    # A matched stop string stays at the end of the text (include_stop_str_in_output).
    include_stop: bool = False
    # Token ids that end the sequence once generated (stop_token_ids; the constraint ends
    # it): their text is dropped unless include_stop, and Finished names the one that came.
    stop_tokens: frozenset[int] = frozenset()

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt)

    @property
    def request_id(self) -> str:
        return self.generation.request_id

    @property
    def model_id(self) -> str:
        return self.model.id

    @property
    def max_tokens(self) -> int:
        return self.generation.max_tokens


@dataclass
class ToolCallDelta:
    """A piece of one tool call: its first piece carries id and name, later ones arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """Output safe to show now: answer text, reasoning text, tool-call pieces, and the
    log-probabilities of the tokens that produced them; with `PreparedChat.want_token_ids`,
    the ids of the tokens generated since the last delta (their text may be held back)."""

    text: str = ""
    logprobs: list[dict[str, Any]] | None = None
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    token_ids: list[int] | None = None


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
    # The stop token id (of PreparedChat.stop_tokens) that ended the sequence.
    stop_token: int | None = None


@dataclass
class CompletedChat:
    """A whole non-streamed answer."""

    content: str
    finish: Finished
    logprobs: list[dict[str, Any]] | None = field(default=None)
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    token_ids: list[int] | None = None  # with PreparedChat.want_token_ids


class ChatService:
    """Runs a chat request on its model's engine and reports text, finish and usage."""

    def __init__(self, engines: Mapping[str, Engine], limits: LimitSettings) -> None:
        self._engines = engines
        self._limits = limits
        self._templates: dict[str, ChatTemplate] = {}
        self._compilers: dict[str, GrammarCompiler | None] = {}

    def compiler_for(self, model: ServedModel, engine: Engine) -> GrammarCompiler | None:
        """The grammar compiler of the model's engine (one per engine, built on first use);
        None when its tokenizer cannot constrain."""
        if model.engine_name not in self._compilers:
            vocabulary = engine.tokenizer.grammar_vocabulary()
            self._compilers[model.engine_name] = (
                GrammarCompiler(vocabulary, capacity=self._limits.grammar_cache_entries)
                if vocabulary is not None else None)
        return self._compilers[model.engine_name]

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
        template = self._template(model, engine)
        plan = plan_output(req, plan_thinking(req, model))
        prompt = self._encode_prompt(req, engine, template, plan)
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
        constraint = build_constraint(plan, req, engine.tokenizer, self.compiler_for(model, engine),
                                      max_tokens=max_tokens)
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        if plan.thinking.enabled and model.thinking is not None:
            # DeepSeek: in thinking mode temperature and top_p are accepted, with no effect.
            temperature, top_p = model.thinking.temperature, model.thinking.top_p
        sampling = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            seed=req.seed,
            logprobs=bool(req.logprobs),
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else 0,
        )
        generation = GenerationRequest(request_id=request_id, prompt=prompt,
                                       max_tokens=max_tokens, sampling=sampling,
                                       cache_salt=cache_salt, constraint=constraint)
        return PreparedChat(req, model, engine, generation, req.stop_list(), user_id=req.user_id,
                            parser=plan.parser(), thinking=plan.thinking.enabled)

    def _encode_prompt(self, req: ChatCompletionRequest, engine: Engine,
                       template: ChatTemplate, plan: OutputPlan) -> list[int]:
        messages = list(req.messages)
        continuation: str | None = None
        if messages[-1].role == "assistant" and messages[-1].prefix:
            continuation = messages.pop().text()
        native = thinks_natively(template.source)
        turns = history(messages, thinking=plan.thinking.enabled, native=native)
        if req.system_instruction:
            turns.insert(0, {"role": "system", "content": req.system_instruction})
        tok = engine.tokenizer
        switches = {"enable_thinking": plan.thinking.enabled, "thinking": plan.thinking.enabled}
        text = template.render(turns, add_generation_prompt=True, bos_token=tok.bos_text,
                               eos_token=tok.eos_text, tools=plan.tools, **switches)
        if plan.thinking.enabled and not text.rstrip("\n").endswith(OPEN_TAG):
            # The server opens the block (budget forcing); a native template may have already.
            text += THINK_OPEN
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
        """Deltas of visible output (reasoning, answer text with stop strings held back and
        cut, tool-call pieces), then one Finished.

        With an output guard, a flagged output (answer or reasoning) stops generation (the
        engine stream is closed) and finishes with `content_filter`; the text before the
        match is the last shown."""
        self.submit(chat)
        assert chat.events is not None
        tokenizer = chat.engine.tokenizer
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parser = chat.parser
        matcher = StopMatcher(chat.stops, include_stop=chat.include_stop)
        guard = chat.guard
        reasoning_guard = OutputGuard(guard.rules) if guard is not None and chat.thinking else None
        observer = chat.observer
        want_logprobs = chat.generation.sampling.logprobs
        want_ids = chat.want_token_ids
        last_token: int | None = None
        # (start, end offset of the token's answer text, its logprob entry), released with
        # that text. Tokens of reasoning or markup produce no answer text and no entry.
        pending: deque[tuple[int, int, dict[str, Any]]] = deque()
        carried: list[dict[str, Any]] = []
        produced = emitted = 0
        generated = 0
        cached = 0
        calls = 0
        finish: FinishEvent | None = None

        def flagged() -> bool:
            return (guard is not None and guard.flagged) or (
                reasoning_guard is not None and reasoning_guard.flagged)

        def visible(parsed: Parsed, final: bool) -> Delta:
            text = matcher.feed(parsed.content)
            if final and matcher.matched is None:
                text += matcher.flush()
            reasoning = parsed.reasoning
            if reasoning_guard is not None:
                reasoning = reasoning_guard.feed(reasoning) + (
                    reasoning_guard.finish() if final else "")
            if guard is not None:
                text = guard.feed(text) + (guard.finish() if final else "")
            pieces = [ToolCallDelta(c.index, c.id, c.name, c.arguments) for c in parsed.calls]
            return Delta(text, None, reasoning, pieces or None)

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
                    last_token = event.token_id
                    if observer is not None:
                        observer.on_token()
                    piece = tokenizer.piece(event.token_id)
                    if event.token_id in chat.stop_tokens and not chat.include_stop:
                        piece = b""  # a stop token's text is not output, as vLLM's
                    text = decoder.decode(piece)
                    parsed = parser.feed(text) if parser is not None else Parsed(content=text)
                    entry = self._logprob_entry(tokenizer, event) if want_logprobs else None
                    if entry is not None and not want_ids:
                        # A token of part of a character waits for the token that ends it.
                        carried.append(entry)
                        if parsed.content:
                            end = produced + len(parsed.content)
                            pending.extend((produced, end, waiting) for waiting in carried)
                        if text:
                            carried.clear()
                    produced += len(parsed.content)
                    delta = visible(parsed, final=False)
                    calls += sum(1 for c in parsed.calls if c.id is not None)
                    emitted += len(delta.text)
                    ended = matcher.matched is not None or flagged()
                    if want_ids:
                        # Token by token, each with its own entry (vLLM's token-level output).
                        delta.token_ids = [event.token_id]
                        delta.logprobs = [entry] if entry is not None else None
                    elif want_logprobs:
                        delta.logprobs = self._release(pending, emitted, partial=ended)
                    if (delta.text or delta.reasoning or delta.tool_calls or delta.logprobs
                            or delta.token_ids):
                        yield delta
                    if ended:
                        break
        except EngineFailure as exc:
            raise _api_error(chat, exc) from None
        parsed = Parsed()
        if matcher.matched is None and not flagged():
            text = decoder.decode(b"", final=True)
            parsed = parser.feed(text) if parser is not None else Parsed(content=text)
            if parser is not None:
                rest = parser.finish()
                parsed.reasoning += rest.reasoning
                parsed.content += rest.content
                parsed.calls.extend(rest.calls)
        delta = visible(parsed, final=True)  # what the guards still hold is released
        calls += sum(1 for c in delta.tool_calls or [] if c.id is not None)
        emitted += len(delta.text)
        if want_logprobs and not want_ids:
            delta.logprobs = self._release(pending, emitted, partial=True)
        if delta.text or delta.reasoning or delta.tool_calls or delta.logprobs:
            yield delta
        usage = Usage(prompt_tokens=chat.prompt_tokens, completion_tokens=generated,
                      cached_tokens=cached, reasoning_tokens=self._reasoning_tokens(chat))
        if finish is not None:
            usage.completion_tokens = finish.completion_tokens
            usage.cached_tokens = finish.cached_tokens
        if flagged():
            yield Finished("content_filter", None, usage)
            return
        if matcher.matched is not None:
            yield Finished("stop", matcher.matched, usage)
            return
        if finish is None:
            raise EngineError("The engine ended the sequence without a finish event.")
        reason = _ENGINE_FINISH[finish.reason]
        stop_token = last_token if reason == "stop" and last_token in chat.stop_tokens else None
        yield Finished("tool_calls" if calls and reason == "stop" else reason, None, usage,
                       stop_token=stop_token)

    @staticmethod
    def _reasoning_tokens(chat: PreparedChat) -> int:
        constraint = chat.generation.constraint
        return constraint.reasoning_tokens if isinstance(constraint, SequenceConstraint) else 0

    async def complete(self, chat: PreparedChat) -> CompletedChat:
        result = await gather(self.stream(chat), logprobs=chat.generation.sampling.logprobs,
                              thinking=chat.thinking, token_ids=chat.want_token_ids)
        if result is None:
            raise EngineError("The engine ended the sequence without a finish event.")
        return result

    @staticmethod
    def _release(pending: deque[tuple[int, int, dict[str, Any]]], emitted: int, *,
                 partial: bool) -> list[dict[str, Any]]:
        """Entries whose text is now visible; with `partial`, also those cut short by the end."""
        out: list[dict[str, Any]] = []
        while pending and pending[0][1] <= emitted:
            out.append(pending.popleft()[2])
        if partial:
            while pending:
                start, _, entry = pending.popleft()
                if start < emitted:
                    out.append(entry)
        return out

    @staticmethod
    def _logprob_entry(tokenizer: Any, event: TokenEvent) -> dict[str, Any]:
        """The chat shape of one token's log-probabilities, plus the token `id` (in the entry
        and each top entry), which the chat routes leave out (`public_logprobs`)."""

        def describe(token_id: int, logprob: float) -> dict[str, Any]:
            piece = tokenizer.piece(token_id)
            return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob,
                    "bytes": list(piece), "id": token_id}

        entry = describe(event.token_id, event.logprob if event.logprob is not None else 0.0)
        entry["top_logprobs"] = [describe(t.token_id, t.logprob) for t in event.top]
        return entry


async def gather(items: AsyncGenerator[Delta | Finished, None], *, logprobs: bool,
                 thinking: bool | None, token_ids: bool = False) -> CompletedChat | None:
    """A whole answer from the items of a stream (closed when done); None if the stream ended
    without a Finished. `thinking`: reasoning_content is a string (True), null (False), or a
    string where any reasoning came (None: the engine decides, as an upstream does).
    `token_ids`: the deltas' token ids, joined."""
    text: list[str] = []
    reasoning: list[str] = []
    entries: list[dict[str, Any]] | None = [] if logprobs else None
    ids: list[int] | None = [] if token_ids else None
    calls: dict[int, dict[str, Any]] = {}
    async with aclosing(items):
        async for item in items:
            if isinstance(item, Finished):
                joined = "".join(reasoning)
                return CompletedChat(
                    "".join(text), item, entries,
                    reasoning_content=joined if thinking or (thinking is None and joined)
                    else None,
                    tool_calls=[calls[i] for i in sorted(calls)] or None, token_ids=ids)
            text.append(item.text)
            reasoning.append(item.reasoning)
            if entries is not None and item.logprobs:
                entries.extend(item.logprobs)
            if ids is not None and item.token_ids:
                ids.extend(item.token_ids)
            for piece in item.tool_calls or []:
                call = calls.setdefault(piece.index, {
                    "id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                if piece.id:
                    call["id"] = piece.id
                if piece.name:
                    call["function"]["name"] = piece.name
                call["function"]["arguments"] += piece.arguments
    return None


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
