"""The remote engine: a chat request passed through to one upstream replica, its answer relayed
back as Delta / Finished, with routing, retries before the first byte, passive ejection and a
draining shutdown.

It is not an `Engine` (that protocol generates tokens; an upstream that only speaks chat runs
templating, thinking, tools and stops itself), so the app keeps remote engines beside the token
engines and the route picks one or the other by the model's engine."""

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

from seekserve.api.schemas import ChatCompletionRequest
from seekserve.chat.service import (
    CompletedChat,
    Delta,
    Finished,
    FinishReason,
    GenerationObserver,
    Usage,
    gather,
)
from seekserve.engines.base import EngineState, StartEvent
from seekserve.engines.remote.client import ReplicaClient, sse_data
from seekserve.engines.remote.pool import ReplicaPool
from seekserve.engines.remote.router import Replica, affinity_key
from seekserve.engines.remote.translate import (
    PROFILES,
    Piece,
    build_body,
    estimate_prompt_tokens,
    parse_chunk,
    parse_completion,
    upstream_user,
)
from seekserve.errors import (
    UpstreamError,
    UpstreamTimeoutError,
)
from seekserve.moderation import OutputGuard
from seekserve.registry import ServedModel
from seekserve.settings import EngineSettings, RemoteEngineSettings

log = logging.getLogger(__name__)

_AFTER_DONE_S = 0.05  # how long the end of a stream's body is awaited after its `[DONE]`


@dataclass(frozen=True)
class RemoteEngineState(EngineState):
    """EngineState (loaded: at least one replica serving; running: requests in flight) plus
    the replicas' health, exported as gauges like every engine state field."""

    replicas: int = 0
    replicas_serving: int = 0
    upstream_failures_total: int = 0
    breaker_openings_total: int = 0


def pool_state(pool: ReplicaPool, **fields: int) -> RemoteEngineState:
    """A remote engine's state from its replicas (and what else its protocol counts)."""
    serving = pool.serving
    return RemoteEngineState(
        loaded=pool.started and serving > 0, running=pool.in_flight, queued=0,
        kv_cells_total=0, kv_cells_used=0, replicas=len(pool.replicas), replicas_serving=serving,
        upstream_failures_total=sum(r.failures_total for r in pool.replicas),
        breaker_openings_total=sum(r.breaker.openings for r in pool.replicas), **fields)


@dataclass
class RemoteChat:
    """A validated request bound to a remote engine: what admission and accounting need (the
    prompt size is an estimate until the upstream reports usage) and the upstream body."""

    request: ChatCompletionRequest
    model: ServedModel
    engine: RemoteEngine
    request_id: str
    body: dict[str, Any]  # its `model` is replaced by each replica's
    affinity: bytes
    prompt_tokens: int
    max_tokens: int
    user_id: str | None
    upstream_stream: bool
    guard: OutputGuard | None = None
    observer: GenerationObserver | None = None

    @property
    def model_id(self) -> str:
        return self.model.id


class RemoteEngine:
    """Serves chat requests from the replicas of one upstream; one per `kind: remote` engine
    with `protocol: chat`."""

    def __init__(self, name: str, settings: RemoteEngineSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.settings = settings
        self.profile = PROFILES[settings.upstream]
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

    def prepare(self, req: ChatCompletionRequest, model: ServedModel, *, request_id: str,
                key_digest: bytes) -> RemoteChat:
        """Translate `req` for the upstream (a 400 here for what it cannot do)."""
        upstream_stream = self.profile.streams and (bool(req.stream) or self.profile.stream_usage)
        body = build_body(req, self.profile, model=self.replicas[0].client.model,
                          stream=upstream_stream, user=upstream_user(key_digest, req.user_id),
                          default_thinking=self.settings.default_thinking)
        return RemoteChat(
            request=req, model=model, engine=self, request_id=request_id, body=body,
            affinity=affinity_key(key_digest, req.user_id),
            prompt_tokens=estimate_prompt_tokens(req),
            max_tokens=req.max_tokens or self.settings.default_max_tokens,
            user_id=req.user_id, upstream_stream=upstream_stream)

    # ----- one request -----

    async def stream(self, chat: RemoteChat) -> AsyncGenerator[Delta | Finished, None]:
        """Deltas as the upstream sends them, then one Finished. Closing this generator (the
        client left) closes the upstream response, which cancels the upstream request."""
        started = self._clock()

        async def send(client: ReplicaClient) -> httpx.Response:
            return await client.send_chat({**chat.body, "model": client.model})

        replica, response = await self.pool.open(
            chat.affinity, send, deadline=started + self.settings.total_timeout_s)
        async with self.pool.answering(replica, response):
            if chat.observer is not None:
                chat.observer.on_start(StartEvent(cached_tokens=0,
                                                  queued_s=self._clock() - started))
            async with aclosing(self._relay(chat, replica, response, started)) as items:
                async for item in items:
                    yield item

    async def complete(self, chat: RemoteChat) -> CompletedChat:
        """The whole answer, gathered from the same Deltas a stream gets."""
        result = await gather(self.stream(chat), logprobs=bool(chat.request.logprobs),
                              thinking=None)
        if result is None:
            raise UpstreamError("The upstream answer ended without finishing.")
        return result

    async def _relay(self, chat: RemoteChat, replica: Replica, response: httpx.Response,
                     started: float) -> AsyncGenerator[Delta | Finished, None]:
        deadline = started + self.settings.total_timeout_s
        guard, observer = chat.guard, chat.observer
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
        # Decided by what came back, not what was asked: an upstream may ignore `stream`.
        if "text/event-stream" in response.headers.get("content-type", ""):
            async with aclosing(sse_data(response)) as events:
                async for data in events:
                    if data == "[DONE]":
                        await _read_to_end(events)
                        return
                    yield parse_chunk(_json(data))
            return
        body = await response.aread()
        yield parse_completion(_json(body), envelope=self.settings.upstream == "output_text")

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


def build_remote_engines(engines: Mapping[str, EngineSettings]) -> dict[str, RemoteEngine]:
    """A RemoteEngine for each `kind: remote` engine of protocol `chat` (nothing is opened
    until `start`)."""
    return {name: RemoteEngine(name, spec) for name, spec in engines.items()
            if isinstance(spec, RemoteEngineSettings) and spec.protocol == "chat"}
