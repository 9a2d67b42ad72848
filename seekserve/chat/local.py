"""The local chat backend: chat and text-completion semantics run here, over one token engine
(the embedded llama.cpp engine, or a remote engine on the token protocol). It renders prompts
with the model's template, plans thinking, tools and JSON as an engine constraint, and turns
the engine's tokens back into visible output (see chat/answer.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing

from seekserve.chat.answer import LogprobWindow, OutputText, Release, finished, logprob_entry
from seekserve.chat.backend import Isolation, Run, gather
from seekserve.chat.completions import decode_prompt, prepare_completion
from seekserve.chat.output import Parsed
from seekserve.chat.plan import build_constraint, plan_output
from seekserve.chat.prepared import PreparedChat
from seekserve.chat.prompt import check_limits, encode_prompt
from seekserve.chat.structured import GrammarCompiler, SequenceConstraint
from seekserve.chat.template import ChatTemplate
from seekserve.chat.thinking import plan_thinking
from seekserve.engines.base import (
    Engine,
    EngineFailure,
    EngineOverloaded,
    FinishEvent,
    GenerationRequest,
    QueueTimeout,
    SamplingParams,
    ShuttingDown,
    StartEvent,
)
from seekserve.protocol.errors import (
    APIError,
    EngineError,
    InvalidRequestError,
    ServerOverloadedError,
    ServiceUnavailableError,
)
from seekserve.protocol.neutral import (
    ChatRequest,
    CompletedChat,
    Delta,
    Finished,
    NeutralRequest,
    TextCompletionRequest,
    Usage,
)
from seekserve.registry import ServedModel
from seekserve.settings import LimitSettings

log = logging.getLogger(__name__)


class LocalChat:
    """The chat backend of one token engine (implements chat.backend.ChatBackend)."""

    def __init__(self, engine: Engine, limits: LimitSettings) -> None:
        self.engine = engine
        self._limits = limits
        self._template: ChatTemplate | None = None
        self._compiler: GrammarCompiler | None = None
        self._compiler_built = False

    def compiler(self) -> GrammarCompiler | None:
        """The engine's grammar compiler (built on first use); None when its tokenizer cannot
        constrain."""
        if not self._compiler_built:
            vocabulary = self.engine.tokenizer.grammar_vocabulary()
            self._compiler = (GrammarCompiler(vocabulary,
                                              capacity=self._limits.grammar_cache_entries)
                              if vocabulary is not None else None)
            self._compiler_built = True
        return self._compiler

    def template(self) -> ChatTemplate:
        if self._template is None:
            self._template = ChatTemplate(self.engine.chat_template)
        return self._template

    def prompt_texts(self, request: NeutralRequest) -> list[str]:
        if isinstance(request, ChatRequest):
            return request.prompt_texts()
        prompt = request.prompt
        text = prompt if isinstance(prompt, str) else decode_prompt(self.engine.tokenizer, prompt)
        return request.prompt_texts(text)

    def prepare(self, request: NeutralRequest, model: ServedModel, *, request_id: str,
                isolation: Isolation) -> PreparedChat:
        if isinstance(request, TextCompletionRequest):
            return prepare_completion(request, model, self.engine, self._limits,
                                      request_id=request_id, cache_salt=isolation.cache_salt,
                                      compiler=self.compiler() if request.grammar else None)
        return self._prepare_chat(request, model, request_id, isolation.cache_salt)

    def _prepare_chat(self, req: ChatRequest, model: ServedModel, request_id: str,
                      cache_salt: bytes) -> PreparedChat:
        check_limits(req, self._limits)
        engine = self.engine
        plan = plan_output(req, plan_thinking(req, model))
        prompt = encode_prompt(req, engine.tokenizer, self.template(), plan)
        limit = engine.max_sequence_tokens
        if len(prompt) >= limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens, but the messages "
                f"have {len(prompt)} tokens.", param=req.fields.messages,
                code="context_length_exceeded")
        max_tokens = req.max_tokens if req.max_tokens is not None else limit - len(prompt)
        if len(prompt) + max_tokens > limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{len(prompt) + max_tokens} tokens ({len(prompt)} in the messages, {max_tokens} "
                f"in max_tokens). Reduce the length of the messages or max_tokens.",
                param=req.fields.max_tokens, code="context_length_exceeded")
        constraint = build_constraint(plan, req, engine.tokenizer, self.compiler(),
                                      max_tokens=max_tokens)
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = 1.0 if req.top_p is None else req.top_p
        if plan.thinking.enabled and model.thinking is not None:
            # DeepSeek: in thinking mode temperature and top_p are accepted, with no effect.
            temperature, top_p = model.thinking.temperature, model.thinking.top_p
        sampling = SamplingParams(temperature=temperature, top_p=top_p, seed=req.seed,
                                  logprobs=req.logprobs, top_logprobs=req.top_logprobs)
        generation = GenerationRequest(request_id=request_id, prompt=prompt,
                                       max_tokens=max_tokens, sampling=sampling,
                                       cache_salt=cache_salt, constraint=constraint)
        return PreparedChat(model, engine, generation, req.stop, user_id=req.user_id,
                            parsed=True, parses_tools=plan.parses_tools,
                            thinking=plan.thinking.enabled)

    def submit(self, run: Run[PreparedChat]) -> None:
        if run.events is not None:
            return
        try:
            run.events = self.engine.generate(run.prepared.generation)
        except EngineFailure as exc:
            raise _api_error(run.prepared, exc) from None

    async def stream(self, run: Run[PreparedChat]) -> AsyncGenerator[Delta | Finished, None]:
        """Deltas of visible output (reasoning, answer text with stop strings held back and
        cut, tool-call pieces), then one Finished.

        With an output guard, a flagged output (answer or reasoning) stops generation (the
        engine stream is closed) and finishes with `content_filter`; the text before the
        match is the last shown."""
        self.submit(run)
        assert run.events is not None
        chat = run.prepared
        tokenizer = self.engine.tokenizer
        output = OutputText(tokenizer, chat.parser(), stop_tokens=chat.stop_tokens,
                            include_stop=chat.include_stop)
        release = Release(list(chat.stops), include_stop=chat.include_stop, guard=run.guard,
                          thinking=chat.thinking)
        observer = run.observer
        want_logprobs = chat.generation.sampling.logprobs
        want_ids = chat.want_token_ids
        window = LogprobWindow() if want_logprobs and not want_ids else None
        generated = cached = calls = emitted = 0
        last_token: int | None = None
        finish: FinishEvent | None = None
        try:
            async with aclosing(run.events) as events:
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
                    text, parsed = output.feed(event.token_id)
                    entry = logprob_entry(tokenizer, event) if want_logprobs else None
                    if window is not None and entry is not None:
                        window.add(entry, text, parsed.content)
                    delta = release.show(parsed, final=False)
                    calls += sum(1 for c in parsed.calls if c.id is not None)
                    emitted += len(delta.text)
                    if want_ids:
                        # Token by token, each with its own entry (vLLM's token-level output).
                        delta.token_ids = [event.token_id]
                        delta.logprobs = [entry] if entry is not None else None
                    elif window is not None:
                        delta.logprobs = window.release(emitted, partial=release.ended)
                    if delta.shows_anything():
                        yield delta
                    if release.ended:
                        break
        except EngineFailure as exc:
            raise _api_error(chat, exc) from None
        # What the guards, the stop matcher and the parser still hold is released.
        final = release.show(output.finish() if not release.ended else Parsed(), final=True)
        calls += sum(1 for c in final.tool_calls or [] if c.id is not None)
        emitted += len(final.text)
        if window is not None:
            final.logprobs = window.release(emitted, partial=True)
        if final.shows_anything():
            yield final
        usage = Usage(prompt_tokens=chat.prompt_tokens, completion_tokens=generated,
                      cached_tokens=cached, reasoning_tokens=_reasoning_tokens(chat))
        yield finished(release, finish, usage, calls=calls, last_token=last_token,
                       stop_tokens=chat.stop_tokens)

    async def complete(self, run: Run[PreparedChat]) -> CompletedChat:
        chat = run.prepared
        result = await gather(self.stream(run), logprobs=chat.generation.sampling.logprobs,
                              thinking=chat.thinking, token_ids=chat.want_token_ids)
        if result is None:
            raise EngineError("The engine ended the sequence without a finish event.")
        return result


def _reasoning_tokens(chat: PreparedChat) -> int:
    constraint = chat.generation.constraint
    return constraint.reasoning_tokens if isinstance(constraint, SequenceConstraint) else 0


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
