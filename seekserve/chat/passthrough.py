"""The pass-through chat backend: a chat request passed to one replica of an upstream that
speaks chat itself (a hosted provider, vLLM / SGLang / llama.cpp's chat endpoint), its answer
relayed back as Delta / Finished, with routing, retries before the first byte, passive ejection
and a draining shutdown (the replica pool's). Templating, thinking, tools and stop strings are
the upstream's; keys, limits, budgets, moderation and the ledger stay here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from seekserve.chat.backend import Isolation, Run, gather
from seekserve.chat.prompt import check_limits
from seekserve.chat.upstream import (
    ChatCompletionsWire,
    Piece,
    UpstreamWire,
    estimate_prompt_tokens,
)
from seekserve.chat.upstream_anthropic import MessagesWire
from seekserve.chat.upstream_responses import ResponsesWire
from seekserve.engines.base import StartEvent
from seekserve.engines.remote.client import ReplicaClient, sse_data
from seekserve.engines.remote.pool import RemoteEngineState, ReplicaPool, pool_state
from seekserve.engines.remote.profiles import PROFILES, UpstreamProfile
from seekserve.engines.remote.router import Replica
from seekserve.protocol.errors import InvalidRequestError, UpstreamError, UpstreamTimeoutError
from seekserve.protocol.neutral import (
    ChatRequest,
    CompletedChat,
    Delta,
    Finished,
    FinishReason,
    NeutralRequest,
    Usage,
)
from seekserve.registry import ServedModel
from seekserve.settings import EngineSettings, LimitSettings, RemoteEngineSettings

log = logging.getLogger(__name__)

_AFTER_DONE_S = 0.05  # how long the end of a stream's body is awaited after its `[DONE]`


def wire_for(profile: UpstreamProfile) -> UpstreamWire:
    """The API family `profile`'s upstream answers in."""
    wires: dict[str, UpstreamWire] = {"chat": ChatCompletionsWire(), "anthropic": MessagesWire(),
                                      "responses": ResponsesWire()}
    return wires[profile.wire]


@dataclass(frozen=True)
class RemoteChat:
    """A validated request bound to an upstream: what admission and accounting need (the
    prompt size is an estimate until the upstream reports usage) and the upstream body."""

    request: ChatRequest
    model: ServedModel
    request_id: str
    body: dict[str, Any]  # its `model` is replaced by each replica's
    affinity: bytes
    prompt_tokens: int
    max_tokens: int
    user_id: str | None
    upstream_stream: bool
    prompt_ids: None = None  # the upstream counts the prompt

    @property
    def model_id(self) -> str:
        return self.model.id


class PassthroughChat:
    """Serves chat requests from the replicas of one upstream; one per `kind: remote` engine
    with `protocol: chat` (implements chat.backend.ChatBackend)."""

    def __init__(self, name: str, settings: RemoteEngineSettings, *,
                 limits: LimitSettings | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.settings = settings
        self.limits = limits or LimitSettings()
        self.profile = PROFILES[settings.upstream]
        self.wire = wire_for(self.profile)
        self._clock = clock
        self.pool = ReplicaPool(name, settings, clock=clock, transport=transport)

    @property
    def replicas(self) -> list[Replica]:
        return self.pool.replicas

    @property
    def description(self) -> str:
        return f"remote {self.settings.upstream} ({len(self.replicas)} replicas)"

    async def start(self) -> None:
        await self.pool.start()

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def drain(self, grace_s: float) -> None:
        """Take no new requests; give running ones `grace_s`, then cut them (they end with an
        in-band error)."""
        await self.pool.drain(grace_s)

    def state(self) -> RemoteEngineState:
        return pool_state(self.pool)

    def prompt_texts(self, request: NeutralRequest) -> list[str]:
        return self._chat_request(request).prompt_texts()

    def _chat_request(self, request: NeutralRequest) -> ChatRequest:
        if not isinstance(request, ChatRequest):
            # An upstream that speaks chat has no token prompt to frame.
            raise InvalidRequestError(
                f"The model `{request.model}` is served by a remote chat engine, which does "
                "not do text or FIM completions here; use a model on a local engine.",
                param="model", code="unsupported_model")
        return request

    def prepare(self, request: NeutralRequest, model: ServedModel, *, request_id: str,
                isolation: Isolation) -> RemoteChat:
        """Translate the request for the upstream (a 400 here for what it cannot do)."""
        req = self._chat_request(request)
        check_limits(req, self.limits)
        upstream_stream = self.profile.streams and (req.stream or self.profile.stream_usage)
        body = self.wire.body(req, self.profile, model=self.replicas[0].client.model,
                              stream=upstream_stream, user=isolation.upstream_user,
                              default_thinking=self.settings.default_thinking)
        return RemoteChat(
            request=req, model=model, request_id=request_id, body=body,
            affinity=isolation.affinity, prompt_tokens=estimate_prompt_tokens(req),
            max_tokens=req.max_tokens or self.settings.default_max_tokens,
            user_id=req.user_id, upstream_stream=upstream_stream)

    def submit(self, run: Run[RemoteChat]) -> None:
        """Nothing to queue: a replica is chosen when the answer is read (`stream`)."""

    # ----- one request -----

    async def stream(self, run: Run[RemoteChat]) -> AsyncGenerator[Delta | Finished, None]:
        """Deltas as the upstream sends them, then one Finished. Closing this generator (the
        client left) closes the upstream response, which cancels the upstream request."""
        chat = run.prepared
        started = self._clock()

        async def send(client: ReplicaClient) -> httpx.Response:
            return await client.send_chat({**chat.body, "model": client.model})

        replica, response = await self.pool.open(
            chat.affinity, send, deadline=started + self.settings.total_timeout_s)
        async with self.pool.answering(replica, response):
            if run.observer is not None:
                run.observer.on_start(StartEvent(cached_tokens=0,
                                                 queued_s=self._clock() - started))
            async with aclosing(self._relay(run, replica, response, started)) as items:
                async for item in items:
                    yield item

    async def complete(self, run: Run[RemoteChat]) -> CompletedChat:
        """The whole answer, gathered from the same Deltas a stream gets."""
        result = await gather(self.stream(run), logprobs=run.prepared.request.logprobs,
                              thinking=None)
        if result is None:
            raise UpstreamError("The upstream answer ended without finishing.")
        return result

    async def _relay(self, run: Run[RemoteChat], replica: Replica, response: httpx.Response,
                     started: float) -> AsyncGenerator[Delta | Finished, None]:
        chat = run.prepared
        deadline = started + self.settings.total_timeout_s
        guard, observer = run.guard, run.observer
        finish: FinishReason | None = None
        matched: str | None = None
        usage: Usage | None = None
        pieces = 0
        async for piece in self._pieces(response):
            if piece.error is not None:
                raise UpstreamError("The upstream failed during its answer: "
                                    + replica.client.redact(piece.error))
            usage = piece.usage or usage
            if piece.finish_reason is not None:
                finish, matched = piece.finish_reason, piece.matched_stop
            delta = piece.delta
            if delta is not None:
                pieces += 1
                if observer is not None:
                    observer.on_token()
                if guard is not None and delta.text:
                    delta.text = guard.feed(delta.text)
                if delta.text or delta.reasoning or delta.tool_calls or delta.logprobs:
                    yield delta
                if guard is not None and guard.flagged:
                    yield Finished("content_filter", None, usage or self._estimate(chat, pieces))
                    return
            if self._clock() > deadline:
                raise UpstreamTimeoutError(
                    f"The upstream answer took longer than {self.settings.total_timeout_s} s.")
        if finish is None:
            raise UpstreamError("The upstream ended its answer without a finish_reason.")
        if guard is not None:
            tail = guard.finish()
            if tail:
                yield Delta(text=tail)
            if guard.flagged:
                finish, matched = "content_filter", None
        yield Finished(finish, matched, usage or self._estimate(chat, pieces))

    async def _pieces(self, response: httpx.Response) -> AsyncIterator[Piece]:
        reader = self.wire.reader(self.profile)
        # Decided by what came back, not what was asked: an upstream may ignore `stream`.
        if "text/event-stream" in response.headers.get("content-type", ""):
            async with aclosing(sse_data(response)) as events:
                async for data in events:
                    if data == "[DONE]":
                        await _read_to_end(events)
                        return
                    yield reader.chunk(_json(data))
            return
        body = await response.aread()
        yield reader.whole(_json(body))

    @staticmethod
    def _estimate(chat: RemoteChat, pieces: int) -> Usage:
        """When the upstream reports no usage (llama-cpp-python's streams, the output.text
        envelope, an answer cut short): the admission estimate of the prompt and one token per
        piece received (servers that stream send about one token per chunk)."""
        return Usage(prompt_tokens=chat.prompt_tokens, completion_tokens=pieces)


async def _read_to_end(events: AsyncGenerator[str, None]) -> None:
    """Read what follows `[DONE]` (normally just the end of the chunked body, already received)
    so that httpcore sees the response complete and returns its connection to the pool; a
    response closed before its end closes the connection, and the next request pays for a new
    one (measured by bench/gateway_overhead.py: a TCP connect per request). An upstream that
    keeps the body open after `[DONE]` gets `_AFTER_DONE_S`, then is closed as before."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(_AFTER_DONE_S):
            async for _ in events:
                pass


def _json(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise UpstreamError("The upstream sent an answer that is not JSON.") from None


def build_passthroughs(engines: Mapping[str, EngineSettings], limits: LimitSettings
                       ) -> dict[str, PassthroughChat]:
    """A PassthroughChat for each `kind: remote` engine of protocol `chat` (nothing is opened
    until `start`)."""
    return {name: PassthroughChat(name, spec, limits=limits) for name, spec in engines.items()
            if isinstance(spec, RemoteEngineSettings) and spec.protocol == "chat"}
