"""The replicas of one remote engine, whatever protocol it speaks: their pooled clients, health
checks and circuit breakers, the choice of a replica for a request (rendezvous order, retries
with backoff before the first byte), the responses in flight, and draining."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from seekserve.engines.base import EngineState
from seekserve.engines.remote.client import ReplicaClient
from seekserve.engines.remote.health import CircuitBreaker, HealthMonitor
from seekserve.engines.remote.profiles import PROFILES, error_message
from seekserve.engines.remote.router import Replica, choose, rendezvous_order
from seekserve.protocol.errors import (
    APIError,
    InvalidRequestError,
    RateLimitedError,
    ServerOverloadedError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from seekserve.settings import RemoteEngineSettings

log = logging.getLogger(__name__)

Send = Callable[[ReplicaClient], Awaitable[httpx.Response]]
OVERLOAD_RETRY_AFTER_S = 1


@dataclass
class _Refused(Exception):
    """An upstream attempt that got no answer to relay: the error the client would get, whether
    another attempt may help, and what it says of the replica (True fine, False failing, None
    nothing)."""

    error: APIError
    retry: bool
    healthy: bool | None


class ReplicaPool:
    """One remote engine's replicas in this process. `open` finds a replica that answers 200;
    `release` ends that response and records what it said of the replica."""

    def __init__(self, name: str, settings: RemoteEngineSettings, *,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.name = name
        self.settings = settings
        self._clock = clock
        profile = PROFILES[settings.upstream]
        self.replicas = [
            Replica(ReplicaClient(r, settings, profile, engine_name=name, transport=transport),
                    CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s,
                                   clock=clock),
                    settings.max_in_flight)
            for r in settings.replicas
        ]
        self._monitor = HealthMonitor(self.replicas, settings.health_interval_s)
        self._active: set[httpx.Response] = set()
        self._idle = asyncio.Event()  # set while nothing is in flight (drain waits for it)
        self._idle.set()
        self.started = False
        self.draining = False

    @property
    def serving(self) -> int:
        return sum(r.serving for r in self.replicas)

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    @property
    def saturated(self) -> bool:
        """Every serving replica is at its in-flight limit (and one is serving at least)."""
        serving = [r for r in self.replicas if r.serving]
        return bool(serving) and all(r.saturated for r in serving)

    @property
    def overload(self) -> str:
        return (f"every replica of this model's engine is at its limit of "
                f"{self.settings.max_in_flight} requests in flight (max_in_flight)")

    async def start(self) -> None:
        for replica in self.replicas:
            replica.client.open()
        if self.settings.health_interval_s > 0:
            await self._monitor.check_all()  # so /ready tells the truth from the start
        self._monitor.start()
        self.started = True

    async def aclose(self) -> None:
        self.started = False
        await self._monitor.stop()
        for response in list(self._active):
            await response.aclose()
        for replica in self.replicas:
            await replica.client.aclose()

    async def drain(self, grace_s: float) -> None:
        """Take no new requests; give running ones `grace_s`, then cut them."""
        self.draining = True
        if self._active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for response in list(self._active):
            await response.aclose()

    def check_open(self) -> None:
        if self.draining:
            raise ServiceUnavailableError("The server is shutting down; please retry.",
                                          code="server_shutting_down")

    async def open(self, affinity: bytes, send: Send, *, deadline: float
                   ) -> tuple[Replica, httpx.Response]:
        """An upstream response that answered 200, from the first replica in `affinity`'s
        order that can take it; other answers are retried (with backoff) as they allow. The
        response is held (drain cuts it) until `release`."""
        self.check_open()
        order = rendezvous_order(affinity, self.replicas)
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
                response = await self._attempt(replica, send)
            except _Refused as refused:
                replica.in_flight -= 1
                self.judge(replica, refused.healthy)
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
            self._active.add(response)
            self._idle.clear()
            return replica, response
        if last is not None:
            raise last
        if not tried and any(r.serving and r.saturated for r in order):
            # Serving replicas, every one at its in-flight limit: this gateway is the one
            # overloaded, and says so at once rather than queueing without bound.
            raise ServerOverloadedError(
                f"The server is overloaded: {self.overload}; please retry after "
                f"{OVERLOAD_RETRY_AFTER_S} s.",
                headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)})
        raise UpstreamUnavailableError(
            "No upstream replica of this model can take the request now (all unhealthy, "
            "ejected or at their in-flight limit); please retry.",
            headers={"Retry-After": "1"})

    async def release(self, replica: Replica, response: httpx.Response,
                      healthy: bool | None) -> None:
        """Close `response` (an unfinished one cancels the upstream request) and judge the
        replica by how it went: True served, False failed, None says nothing of it."""
        self._active.discard(response)
        if not self._active:
            self._idle.set()
        try:
            await response.aclose()
        finally:
            replica.in_flight -= 1
            self.judge(replica, healthy)

    @asynccontextmanager
    async def answering(self, replica: Replica, response: httpx.Response, *,
                        on_cut: Callable[[], Awaitable[None]] | None = None
                        ) -> AsyncIterator[None]:
        """While `response` is read: its failures become the client's errors, a reader that
        stops early (GeneratorExit: the client left, or we ended it) runs `on_cut`, and at the
        end the response is released with the verdict it earned."""
        verdict: bool | None = None
        try:
            yield
            verdict = True
        except APIError:
            verdict = False
            raise
        except httpx.TimeoutException:
            verdict = False
            raise UpstreamTimeoutError(
                "The upstream stopped answering in the middle of its answer.") from None
        except GeneratorExit:
            if on_cut is not None:
                await on_cut()
            raise
        except Exception as exc:  # a lost connection, or one cut by drain
            verdict = False
            raise self._lost(replica, exc) from None
        finally:
            await self.release(replica, response, verdict)

    def _lost(self, replica: Replica, exc: BaseException) -> APIError:
        """What the client is told when a replica's answer broke off."""
        if self.draining:
            return ServiceUnavailableError(
                "The server is shutting down; the answer was cut short.",
                code="server_shutting_down")
        log.warning("engine %s: replica %s failed mid-answer: %r", self.name, replica.name, exc)
        return UpstreamError(
            "The connection to the upstream was lost in the middle of its answer.")

    async def _attempt(self, replica: Replica, send: Send) -> httpx.Response:
        try:
            response = await send(replica.client)
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

    def judge(self, replica: Replica, healthy: bool | None) -> None:
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


@dataclass(frozen=True)
class ReplicaState:
    """One replica as /ready shows it (by its place in the config: its URL stays private)."""

    index: int
    healthy: bool  # the last health check passed
    breaker: str  # closed, open or half_open
    in_flight: int
    failures_total: int


@dataclass(frozen=True)
class RemoteEngineState(EngineState):
    """EngineState (loaded: at least one replica serving; running: requests in flight) plus
    the replicas' health, exported as gauges like every engine state field."""

    replicas: int = 0
    replicas_serving: int = 0
    upstream_failures_total: int = 0
    breaker_openings_total: int = 0
    replica_states: tuple[ReplicaState, ...] = ()


def pool_state(pool: ReplicaPool, **fields: int) -> RemoteEngineState:
    """A remote engine's state from its replicas (and what else its protocol counts)."""
    serving = pool.serving
    return RemoteEngineState(
        loaded=pool.started and serving > 0, running=pool.in_flight, queued=0,
        kv_cells_total=0, kv_cells_used=0, replicas=len(pool.replicas), replicas_serving=serving,
        upstream_failures_total=sum(r.failures_total for r in pool.replicas),
        breaker_openings_total=sum(r.breaker.openings for r in pool.replicas),
        replica_states=tuple(
            ReplicaState(index=i, healthy=r.healthy, breaker=r.breaker.state,
                         in_flight=r.in_flight, failures_total=r.failures_total)
            for i, r in enumerate(pool.replicas)),
        **fields)
