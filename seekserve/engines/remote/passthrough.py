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
import random
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
from seekserve.engines.remote.health import CircuitBreaker, HealthMonitor
from seekserve.engines.remote.router import Replica, affinity_key, choose, rendezvous_order
from seekserve.engines.remote.translate import (
    PROFILES,
    Piece,
    build_body,
    error_message,
    estimate_prompt_tokens,
    parse_chunk,
    parse_completion,
    upstream_user,
)
from seekserve.errors import (
    APIError,
    InvalidRequestError,
    RateLimitedError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
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


@dataclass
class _Refused(Exception):
    """An upstream attempt that got no answer to relay: the error the client would get, whether
    another attempt may help, and what it says of the replica (True fine, False failing, None
    nothing)."""

    error: APIError
    retry: bool
    healthy: bool | None


class RemoteEngine:
    """Serves chat requests from the replicas of one upstream; one per `kind: remote` engine."""

    def __init__(self, name: str, settings: RemoteEngineSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.settings = settings
        self.profile = PROFILES[settings.upstream]
        self._clock = clock
        self.replicas = [
            Replica(ReplicaClient(r, settings, self.profile, engine_name=name,
                                  transport=transport),
                    CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s,
                                   clock=clock),
                    settings.max_in_flight)
            for r in settings.replicas
        ]
        self._monitor = HealthMonitor(self.replicas, settings.health_interval_s)
        self._active: set[httpx.Response] = set()
        self._idle = asyncio.Event()  # set while nothing is in flight (drain waits for it)
        self._idle.set()
        self._started = False
        self._draining = False

    @property
    def description(self) -> str:
        return f"remote {self.settings.upstream} ({len(self.replicas)} replicas)"

    async def start(self) -> None:
        for replica in self.replicas:
            replica.client.open()
        if self.settings.health_interval_s > 0:
            await self._monitor.check_all()  # so /ready tells the truth from the start
        self._monitor.start()
        self._started = True

    async def aclose(self) -> None:
        self._started = False
        await self._monitor.stop()
        for response in list(self._active):
            await response.aclose()
        for replica in self.replicas:
            await replica.client.aclose()

    async def drain(self, grace_s: float) -> None:
        """Take no new requests; give running ones `grace_s`, then cut them (they end with an
        in-band error)."""
        self._draining = True
        if self._active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for response in list(self._active):
            await response.aclose()

    def state(self) -> RemoteEngineState:
        serving = sum(r.serving for r in self.replicas)
        return RemoteEngineState(
            loaded=self._started and serving > 0,
            running=sum(r.in_flight for r in self.replicas),
            queued=0, kv_cells_total=0, kv_cells_used=0,
            replicas=len(self.replicas), replicas_serving=serving,
            upstream_failures_total=sum(r.failures_total for r in self.replicas),
            breaker_openings_total=sum(r.breaker.openings for r in self.replicas))

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
        if self._draining:
            raise ServiceUnavailableError("The server is shutting down; please retry.",
                                          code="server_shutting_down")
        started = self._clock()
        replica, response = await self._open(chat, deadline=started
                                              + self.settings.total_timeout_s)
        self._active.add(response)
        self._idle.clear()
        verdict: bool | None = None
        try:
            if chat.observer is not None:
                chat.observer.on_start(StartEvent(cached_tokens=0,
                                                  queued_s=self._clock() - started))
            async with aclosing(self._relay(chat, replica, response, started)) as items:
                async for item in items:
                    yield item
            verdict = True
        except APIError:
            verdict = False
            raise
        except httpx.TimeoutException:
            verdict = False
            raise UpstreamTimeoutError(
                "The upstream stopped answering in the middle of its answer.") from None
        except Exception as exc:  # a lost connection, or one cut by drain
            verdict = False
            if self._draining:
                raise ServiceUnavailableError(
                    "The server is shutting down; the answer was cut short.",
                    code="server_shutting_down") from None
            log.warning("engine %s: replica %s failed mid-answer: %r", self.name, replica.name,
                        exc)
            raise UpstreamError("The connection to the upstream was lost in the middle of "
                                "its answer.") from None
        finally:
            self._active.discard(response)
            if not self._active:
                self._idle.set()
            await response.aclose()
            replica.in_flight -= 1
            self._judge(replica, verdict)

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

    # ----- replicas -----

    async def _open(self, chat: RemoteChat, *, deadline: float
                    ) -> tuple[Replica, httpx.Response]:
        """An upstream response that answered 200, from the first replica in the request's
        order that can take it; other answers are retried (with backoff) as they allow."""
        order = rendezvous_order(chat.affinity, self.replicas)
        tried: set[Replica] = set()
        last: APIError | None = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            if self._clock() >= deadline:
                break
            replica = choose(order, tried)
            if replica is None:
                break
            tried.add(replica)
            replica.in_flight += 1
            try:
                response = await self._attempt(replica, chat)
            except _Refused as refused:
                replica.in_flight -= 1
                self._judge(replica, refused.healthy)
                last = refused.error
                if not refused.retry:
                    raise refused.error from None
                log.warning("engine %s: replica %s: %s (attempt %d)", self.name, replica.name,
                            refused.error.message, attempt + 1)
                continue
            except BaseException:  # cancelled: the client left while we waited
                replica.in_flight -= 1
                replica.breaker.release()
                raise
            return replica, response
        if last is not None:
            raise last
        raise UpstreamUnavailableError(
            "No upstream replica of this model can take the request now (all unhealthy, "
            "ejected or at their in-flight limit); please retry.",
            headers={"Retry-After": "1"})

    async def _attempt(self, replica: Replica, chat: RemoteChat) -> httpx.Response:
        body = {**chat.body, "model": replica.client.model}
        try:
            response = await replica.client.send_chat(body)
        except httpx.TimeoutException:
            raise _Refused(UpstreamTimeoutError("The upstream did not answer in time."),
                           retry=True, healthy=False) from None
        except httpx.HTTPError as exc:
            raise _Refused(UpstreamError(f"The upstream could not be reached "
                                         f"({type(exc).__name__})."),
                           retry=True, healthy=False) from None
        status = response.status_code
        if status == 200:
            return response
        try:
            message = replica.client.redact(error_message(await response.aread()))
        except httpx.HTTPError:
            message = "(the error body could not be read)"
        finally:
            await response.aclose()
        raise _refusal(status, message, response.headers)

    def _judge(self, replica: Replica, healthy: bool | None) -> None:
        if healthy is True:
            replica.breaker.success()
        elif healthy is False:
            replica.failures_total += 1
            replica.breaker.failure()
        else:
            replica.breaker.release()

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter (50-100%) so retries from many requests spread."""
        ceiling: float = min(self.settings.backoff_max_s,
                             self.settings.backoff_base_s * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)


def _refusal(status: int, message: str, headers: httpx.Headers) -> _Refused:
    """What an upstream's non-200 answer means for the client and for the replica."""
    if status == 429:
        return _Refused(RateLimitedError(
            f"The upstream is over its rate limit: {message}", code="upstream_rate_limited",
            headers={"Retry-After": headers.get("retry-after", "1")}),
            retry=True, healthy=None)
    if status in (401, 403):
        # Our server's credentials for the upstream are wrong; its message may quote them.
        log.error("upstream refused this server's credentials (%d): %s", status, message)
        return _Refused(UpstreamError(
            "The upstream refused this server's credentials; the operator must fix them.",
            code="upstream_auth_error"), retry=True, healthy=False)
    if status == 404:
        return _Refused(UpstreamError(
            f"The upstream has no such model or route: {message}", code="upstream_not_found"),
            retry=False, healthy=True)
    if 400 <= status < 500:
        return _Refused(InvalidRequestError(f"The upstream refused the request: {message}",
                                            code="upstream_bad_request"),
                        retry=False, healthy=True)
    return _Refused(UpstreamError(f"The upstream failed ({status}): {message}"),
                    retry=True, healthy=False)


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
    """A RemoteEngine for each `kind: remote` engine (nothing is opened until `start`)."""
    return {name: RemoteEngine(name, spec) for name, spec in engines.items()
            if isinstance(spec, RemoteEngineSettings)}
