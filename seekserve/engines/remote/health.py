"""Whether a replica may be sent work: a circuit breaker fed by request outcomes (passive
ejection), and a background task that probes every replica (active health checks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """`failures` consecutive failures open the circuit for `cooldown_s`; after it one trial
    request is let through (half-open): its success closes the circuit, its failure opens it
    again for another cooldown. A request that ends without a verdict (the client left, the
    upstream refused the request itself) gives its trial back."""

    def __init__(self, failures: int, cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_out = False
        self.openings = 0

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() - self._opened_at >= self._cooldown_s:
            return "half_open"
        return self._state

    def available(self) -> bool:
        """Whether `acquire` would let a request through now."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._trial_out)

    def acquire(self) -> bool:
        """Let one request through, claiming the half-open trial if that is where we are."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_out:
            self._state = "half_open"
            self._trial_out = True
            return True
        return False

    def success(self) -> None:
        if self._state != "closed":
            log.info("circuit closed again after a successful trial")
        self._state = "closed"
        self._consecutive = 0
        self._trial_out = False

    def failure(self) -> None:
        self._trial_out = False
        state = self.state
        if state == "half_open":  # the trial failed
            self._open()
        elif state == "closed":
            self._consecutive += 1
            if self._consecutive >= self._threshold:
                self._open()
        # while open: a straggler that was sent before the circuit opened changes nothing

    def release(self) -> None:
        self._trial_out = False

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._consecutive = 0
        self.openings += 1


class Probed(Protocol):
    """A replica as the health monitor sees it."""

    name: str
    healthy: bool

    async def probe(self) -> bool: ...


class HealthMonitor:
    """Probes every replica every `interval_s` in one background task; a replica's `healthy`
    is the result of its last probe. Started and stopped with the app (its lifespan)."""

    def __init__(self, replicas: Sequence[Probed], interval_s: float,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._replicas = replicas
        self._interval_s = interval_s
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    async def check_all(self) -> None:
        results = await asyncio.gather(*(r.probe() for r in self._replicas))
        for replica, healthy in zip(self._replicas, results, strict=True):
            if healthy != replica.healthy:
                log.warning("upstream replica %s is %s", replica.name,
                            "healthy again" if healthy else "unhealthy")
            replica.healthy = healthy

    def start(self) -> None:
        if self._interval_s > 0 and self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await self._sleep(self._interval_s)
            try:
                await self.check_all()
            except Exception:  # a bug here must not end health checking for good
                log.exception("health check round failed")
