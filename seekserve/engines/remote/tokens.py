"""The token protocol: a remote engine that runs seekserve's own chat layer and has an upstream
(vLLM, SGLang, another seekserve) generate from token ids under llguidance grammars.

It is an `Engine`, so the chat service treats it as it treats the embedded one: the prompt is
rendered and counted here, stop strings, tool-call and reasoning parsing, logprobs and usage
are ours. What the embedded engine does per step with a `TokenConstraint` is done here per
*segment*: the constraint says what may come next as a whole (`Segment`: a thinking block of
at most its remaining budget, ended by the close tag; an answer under one grammar), the
upstream generates that segment, every token it returns is fed back to the constraint, and
forced tokens (the close of a thinking block at its budget) are added here, between
segments. Each segment's request carries the prompt and everything generated so far, so it
may go to any replica; the user's affinity keeps it on the one holding that prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from seekserve.engines.base import (
    EngineOverloaded,
    EventStream,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    Segment,
    ShuttingDown,
    StartEvent,
    TokenEvent,
    Tokenizer,
    TopToken,
)
from seekserve.engines.llamacpp.model import LlamaModel
from seekserve.engines.remote.client import ReplicaClient, sse_data
from seekserve.engines.remote.pool import (
    OVERLOAD_RETRY_AFTER_S,
    RemoteEngineState,
    ReplicaPool,
    pool_state,
)
from seekserve.protocol.errors import UpstreamError, UpstreamTimeoutError
from seekserve.settings import RemoteEngineSettings, UpstreamKind

log = logging.getLogger(__name__)

# llguidance reads a grammar that starts with this line as Lark whatever the server guesses;
# SGLang's llguidance backend asks for it, vLLM's accepts it.
LARK_PREFIX = "%llguidance {}\n"

SegmentEnd = Literal["eos", "length", "stop"]
ABORT_TIMEOUT_S = 2.0


@dataclass
class Step:
    """What one upstream message adds: new tokens, and at the end why it stopped and usage."""

    tokens: list[TokenEvent] = field(default_factory=list)
    finish: SegmentEnd | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None  # the whole answer's, with its usage
    error: str | None = None


@dataclass(frozen=True)
class SegmentCall:
    """One segment as the upstream is asked for it; `rid` names it there (fixed length, so
    no id is a prefix of another: SGLang aborts by prefix)."""

    prompt: list[int]
    max_tokens: int
    segment: Segment
    request: GenerationRequest
    rid: str = field(default_factory=lambda: "seekserve-" + secrets.token_hex(16))


class Dialect(Protocol):
    """How one upstream kind is asked for tokens and how its answer reads."""

    path: str

    def body(self, call: SegmentCall, model: str) -> dict[str, Any]: ...

    def reader(self) -> Callable[[dict[str, Any]], Step]:
        """A parser for one answer's messages, in order (it may keep state between them)."""
        ...

    def abort(self, call: SegmentCall) -> tuple[str, dict[str, Any]] | None:
        """What to POST to stop `call` when we close its answer early, if closing the
        connection does not stop it at once."""
        ...


def _salt(request: GenerationRequest) -> dict[str, str]:
    return {"cache_salt": request.cache_salt.hex()} if request.cache_salt else {}


class VllmDialect:
    """vLLM's /v1/completions with its extensions (seekserve's /v1/completions takes the same):
    a token-id prompt, `return_token_ids`, `structured_outputs.grammar`, `cache_salt`."""

    path = "/v1/completions"

    def body(self, call: SegmentCall, model: str) -> dict[str, Any]:
        sampling = call.request.sampling
        seg = call.segment
        body: dict[str, Any] = {
            "model": model, "prompt": call.prompt, "max_tokens": call.max_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p,
            "stream": True, "stream_options": {"include_usage": True},
            "return_token_ids": True, "skip_special_tokens": False,
            **_salt(call.request),
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.logprobs:
            body["logprobs"] = max(1, sampling.top_logprobs)
            body["return_tokens_as_token_ids"] = True
        if seg.lark is not None:
            body["structured_outputs"] = {"grammar": LARK_PREFIX + seg.lark}
        if seg.stop:
            body["stop"] = list(seg.stop)
            body["include_stop_str_in_output"] = True
        if seg.min_tokens:
            body["min_tokens"] = seg.min_tokens
        return body

    def abort(self, call: SegmentCall) -> tuple[str, dict[str, Any]] | None:
        return None  # vLLM aborts a request whose client disconnected

    def reader(self) -> Callable[[dict[str, Any]], Step]:
        def read(data: dict[str, Any]) -> Step:
            step = Step()
            if "error" in data and not data.get("choices"):
                step.error = _error_text(data["error"])
                return step
            for choice in data.get("choices") or []:
                step.tokens.extend(_vllm_tokens(choice))
                reason = choice.get("finish_reason")
                if reason is not None:
                    step.finish = _vllm_finish(reason, choice.get("stop_reason"))
            usage = data.get("usage")
            if usage:
                step.prompt_tokens = usage.get("prompt_tokens")
                step.completion_tokens = usage.get("completion_tokens")
                details = usage.get("prompt_tokens_details") or {}
                step.cached_tokens = details.get("cached_tokens") or 0
            return step

        return read


def _vllm_tokens(choice: dict[str, Any]) -> list[TokenEvent]:
    ids = choice.get("token_ids")
    if ids is None:
        if choice.get("text"):
            raise UpstreamError("The upstream sent text without token ids; it must support "
                                "`return_token_ids` (vLLM >= 0.10.2) for protocol `tokens`.")
        return []
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    events = []
    for i, token_id in enumerate(ids):
        top = tops[i] if i < len(tops) and tops[i] else {}
        events.append(TokenEvent(
            int(token_id), values[i] if i < len(values) else None,
            tuple(sorted((TopToken(_token_id(k), v) for k, v in top.items()),
                         key=lambda t: -t.logprob))))
    return events


def _token_id(text: str) -> int:
    """`token_id:123` (return_tokens_as_token_ids) -> 123."""
    prefix, _, number = text.partition(":")
    if prefix != "token_id" or not number.lstrip("-").isdigit():
        raise UpstreamError(f"The upstream named a token `{text[:40]}` instead of its id "
                            "(return_tokens_as_token_ids).")
    return int(number)


def _vllm_finish(reason: str, stop_reason: Any) -> SegmentEnd:
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop" if isinstance(stop_reason, str) else "eos"
    raise UpstreamError(f"The upstream ended the sequence with finish_reason `{reason}`.")


class SglangDialect:
    """SGLang's native /generate: `input_ids`, `sampling_params` (with `ebnf` read by its
    llguidance grammar backend), streamed `output_ids` and `meta_info`."""

    path = "/generate"

    def body(self, call: SegmentCall, model: str) -> dict[str, Any]:
        sampling = call.request.sampling
        seg = call.segment
        params: dict[str, Any] = {
            "max_new_tokens": call.max_tokens, "temperature": sampling.temperature,
            "top_p": sampling.top_p, "skip_special_tokens": False,
        }
        if sampling.seed is not None:
            params["sampling_seed"] = sampling.seed
        if seg.lark is not None:
            params["ebnf"] = LARK_PREFIX + seg.lark
        if seg.stop:
            params["stop"] = list(seg.stop)
            params["no_stop_trim"] = True
        if seg.min_tokens:
            params["min_new_tokens"] = seg.min_tokens
        body: dict[str, Any] = {"input_ids": call.prompt, "sampling_params": params,
                                "stream": True, "rid": call.rid}
        if sampling.logprobs:
            body.update(return_logprob=True, top_logprobs_num=sampling.top_logprobs,
                        logprob_start_len=-1)
        return body

    def abort(self, call: SegmentCall) -> tuple[str, dict[str, Any]] | None:
        # SGLang notices a closed connection only when it next writes (up to seconds later).
        return "/abort_request", {"rid": call.rid}

    def reader(self) -> Callable[[dict[str, Any]], Step]:
        seen = 0  # output ids already read: SGLang streams them cumulatively by default

        def read(data: dict[str, Any]) -> Step:
            nonlocal seen
            step = Step()
            if "error" in data:
                step.error = _error_text(data["error"])
                return step
            meta = data.get("meta_info") or {}
            ids = data.get("output_ids") or []
            cumulative = len(ids) == meta.get("completion_tokens", -1) and len(ids) >= seen
            start = seen if cumulative else 0
            logprobs = meta.get("output_token_logprobs") or []
            tops = meta.get("output_top_logprobs") or []
            offset = 0 if len(logprobs) == len(ids) else len(ids) - len(logprobs)
            for i in range(start, len(ids)):
                j = i - offset
                value = logprobs[j][0] if 0 <= j < len(logprobs) else None
                top = tops[j] if 0 <= j < len(tops) and tops[j] else []
                step.tokens.append(TokenEvent(
                    int(ids[i]), value,
                    tuple(TopToken(int(t[1]), float(t[0])) for t in top)))
            seen = len(ids) if cumulative else seen + len(ids)
            reason = meta.get("finish_reason")
            if reason:
                kind = reason.get("type") if isinstance(reason, dict) else reason
                if kind == "length":
                    step.finish = "length"
                elif kind == "stop":
                    matched = reason.get("matched") if isinstance(reason, dict) else None
                    step.finish = "stop" if isinstance(matched, str) else "eos"
                else:
                    detail = reason.get("message", "") if isinstance(reason, dict) else ""
                    raise UpstreamError(f"The upstream ended the sequence ({kind}): {detail}")
                step.prompt_tokens = meta.get("prompt_tokens")
                step.completion_tokens = meta.get("completion_tokens")
                step.cached_tokens = meta.get("cached_tokens") or 0
            return step

        return read


DIALECTS: dict[UpstreamKind, Dialect] = {
    "vllm": VllmDialect(),
    "seekserve": VllmDialect(),
    "sglang": SglangDialect(),
}


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


class _Events:
    """One sequence's events (the EventStream protocol over an async generator)."""

    def __init__(self, events: AsyncGenerator[GenerationEvent, None]) -> None:
        self._events = events

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> GenerationEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()


class RemoteTokenEngine:
    """An `Engine` whose tokens come from the replicas of an upstream (protocol `tokens`)."""

    def __init__(self, name: str, settings: RemoteEngineSettings, tokenizer_path: Path, *,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        self.pool = ReplicaPool(name, settings, clock=clock, transport=transport)
        self._dialect = DIALECTS[settings.upstream]
        self._vocabulary = LlamaModel(tokenizer_path, vocab_only=True)
        self._prompt_tokens_total = 0
        self._cache_hit_tokens_total = 0
        self._segments_total = 0

    # ----- Engine -----

    @property
    def tokenizer(self) -> Tokenizer:
        return self._vocabulary.tokenizer

    @property
    def chat_template(self) -> str | None:
        return self.settings.chat_template or self._vocabulary.chat_template

    @property
    def max_sequence_tokens(self) -> int:
        return self.settings.max_sequence_tokens

    @property
    def description(self) -> str:
        return (f"remote {self.settings.upstream}, token protocol "
                f"({len(self.pool.replicas)} replicas)")

    async def start(self) -> None:
        await self.pool.start()

    async def aclose(self) -> None:
        # The vocabulary stays loaded (a few MB): a tokenizer freed under a late reader would
        # crash the process.
        await self.pool.aclose()

    async def drain(self, grace_s: float) -> None:
        await self.pool.drain(grace_s)

    def state(self) -> RemoteEngineState:
        return pool_state(self.pool, prompt_tokens_total=self._prompt_tokens_total,
                          cache_hit_tokens_total=self._cache_hit_tokens_total)

    def generate(self, request: GenerationRequest) -> EventStream:
        if self.pool.draining:
            raise ShuttingDown("the engine is shutting down")
        if self.pool.saturated:
            # Refused before the answer starts: a fast 503 rather than a queue without bound.
            # (A request between two of its segments holds no place, so one may still find
            # every replica full later: it then ends with the same error, in-band.)
            raise EngineOverloaded(self.pool.overload, retry_after_s=OVERLOAD_RETRY_AFTER_S)
        return _Events(self._run(request))

    # ----- one sequence -----

    async def _run(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        constraint = request.constraint
        tokenizer = self.tokenizer
        started = self._clock()
        deadline = started + self.settings.total_timeout_s
        # The salt is derived from (key, user_id); gateways that share server.cache_secret
        # send one user to the same replica (and the same upstream cache partition).
        affinity = request.cache_salt or request.request_id.encode()
        generated: list[int] = []
        # Tokens generated but not output: end tokens (counted, as the embedded engine and
        # vLLM count them, in completion_tokens).
        unseen = 0
        cached: int | None = None
        finish: FinishReason | None = None
        yield StartEvent(cached_tokens=0, queued_s=0.0)
        while finish is None:
            if constraint is not None:
                while (forced := constraint.forced_token()) is not None \
                        and len(generated) < request.max_tokens:
                    generated.append(forced)
                    constraint.accept(forced)
                    yield TokenEvent(forced)
                if constraint.finished:
                    finish = "eos"
                    break
            left = request.max_tokens - len(generated)
            if left <= 0:
                finish = "length"
                break
            segment = constraint.segment() if constraint is not None else Segment("free")
            cap = segment.max_tokens if segment.max_tokens is not None else left
            call = SegmentCall([*request.prompt, *generated], max(1, min(left, cap)), segment,
                               request)
            end: SegmentEnd | None = None
            cut = False
            before = len(generated)
            received = 0
            async with aclosing(self._segment(call, affinity, deadline)) as steps:
                async for step in steps:
                    if cached is None and step.cached_tokens is not None:
                        cached = step.cached_tokens
                    for event in step.tokens:
                        received += 1
                        if tokenizer.is_end_of_generation(event.token_id):
                            end = "eos"  # vLLM lists the end token; it is never output
                            unseen += 1
                            continue
                        generated.append(event.token_id)
                        yield event
                        if constraint is not None:
                            constraint.accept(event.token_id)
                            if constraint.finished or constraint.forced_token() is not None \
                                    or constraint.segment().phase != segment.phase:
                                cut = True  # the constraint takes over: end this request
                                break
                        if len(generated) >= request.max_tokens:
                            cut = True
                            break
                    end = step.finish or end
                    if step.completion_tokens is not None and not cut:
                        # An upstream that does not list its end token still counts it.
                        unseen += max(0, step.completion_tokens - received)
                    if cut:
                        if end is not None:  # it ended here anyway: read on for its usage
                            cached = await _cached_after(steps, cached)
                        break
            if cut:
                continue
            if len(generated) == before and end != "eos":
                raise UpstreamError("The upstream ended a request without generating a token.")
            if len(generated) >= request.max_tokens:
                finish = "length"
            elif end == "length" and segment.max_tokens is None:
                finish = "length"
            elif end in ("eos", "stop") and (constraint is None
                                              or constraint.segment().phase == segment.phase):
                if constraint is None or constraint.end_of_generation():
                    finish = "eos"
            elif end is None:
                raise UpstreamError("The upstream ended its answer without a finish reason.")
        prompt_tokens = len(request.prompt)
        cached = min(cached or 0, prompt_tokens)
        self._prompt_tokens_total += prompt_tokens
        self._cache_hit_tokens_total += cached
        yield FinishEvent(finish, prompt_tokens, len(generated) + unseen, cached_tokens=cached,
                          queued_s=0.0)

    async def _segment(self, call: SegmentCall, affinity: bytes, deadline: float
                       ) -> AsyncGenerator[Step, None]:
        """The steps of one upstream request for `call`, from the replica the pool picks."""
        self._segments_total += 1
        dialect = self._dialect

        async def send(client: ReplicaClient) -> httpx.Response:
            return await client.send(dialect.path, dialect.body(call, client.model))

        replica, response = await self.pool.open(affinity, send, deadline=deadline)
        # Ended early (the constraint took over, or the client left): tell SGLang too.
        async with self.pool.answering(
                replica, response, on_cut=lambda: self._abort(replica.client, dialect, call)):
            async with aclosing(self._steps(response, dialect, deadline)) as steps:
                async for step in steps:
                    if step.error is not None:
                        raise UpstreamError("The upstream failed during its answer: "
                                            + replica.client.redact(step.error))
                    yield step

    @staticmethod
    async def _abort(client: ReplicaClient, dialect: Dialect, call: SegmentCall) -> None:
        abort = dialect.abort(call)
        if abort is None:
            return
        path, body = abort
        with contextlib.suppress(httpx.HTTPError, TimeoutError):
            async with asyncio.timeout(ABORT_TIMEOUT_S):
                response = await client.send(path, body)
                await response.aclose()

    async def _steps(self, response: httpx.Response, dialect: Dialect, deadline: float
                     ) -> AsyncGenerator[Step, None]:
        read = dialect.reader()
        if "text/event-stream" not in response.headers.get("content-type", ""):
            yield read(_json(await response.aread()))
            return
        async with aclosing(sse_data(response)) as events:
            async for data in events:
                if data == "[DONE]":
                    return
                yield read(_json(data))
                if self._clock() > deadline:
                    raise UpstreamTimeoutError(
                        f"The upstream answer took longer than {self.settings.total_timeout_s} "
                        "s.")


async def _cached_after(steps: AsyncIterator[Step], cached: int | None) -> int | None:
    """The cached-token count of the messages after an answer's last token (its usage)."""
    async for step in steps:
        if cached is None and step.cached_tokens is not None:
            cached = step.cached_tokens
    return cached


def _json(data: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise UpstreamError("The upstream sent an answer that is not JSON.") from None
    if not isinstance(value, dict):
        raise UpstreamError("The upstream sent an answer that is not a JSON object.")
    return value

