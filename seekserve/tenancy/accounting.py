"""Accounting of admitted requests: admission (rate limits, then the budget), what the
generation used, and one settlement at the end that leaves exactly one usage-ledger row.

`Accounting` is built once per app (in its lifespan); `Accounting.admit` hands out one
`RequestAccount` per admitted request, of any backend (the prepared request only says who and
what it is for and its worst case). The account listens to the generation (queue time, tokens,
their timing), is told how it ended, and `close` settles the limits and the budget to the real
counts, releases the concurrency slots, records the row and the token metrics. `close` runs as
a task the caller awaits shielded, so a request cancelled while it settles (its client left,
the server stops) still settles; `Accounting.aclose` waits for those tasks and closes, as
failed, any account whose response never ran.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Callable
from typing import Protocol

from seekserve.engines.base import StartEvent
from seekserve.metrics import Metrics
from seekserve.moderation import Moderator, OutputGuard
from seekserve.protocol.errors import APIError
from seekserve.protocol.neutral import Finished, FinishReason
from seekserve.registry import Deployment
from seekserve.settings import RateLimitSettings, Settings
from seekserve.tenancy.budget import Budget, Reservation
from seekserve.tenancy.identity import RequestIdentity
from seekserve.tenancy.ledger import Ledger, UsageRecord, UsageStatus
from seekserve.tenancy.limits import Admission, Limiter
from seekserve.tenancy.service import Tenancy

log = logging.getLogger(__name__)

_STATUS_OF_FINISH: dict[FinishReason, UsageStatus] = {
    "stop": "completed",
    "length": "length",
    "content_filter": "filtered",
    "insufficient_system_resource": "insufficient_resource",
    "tool_calls": "completed",
}


class Accountable(Protocol):
    """What accounting needs of any admitted request: who and what it is for, its worst case
    (chat.backend.Prepared has these)."""

    @property
    def request_id(self) -> str: ...

    @property
    def model_id(self) -> str: ...

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...


class Accounting:
    """The app's limiter, moderator, budget, ledger and metrics, as the chat path uses them."""

    def __init__(self, *, limiter: Limiter, moderator: Moderator, budget: Budget, ledger: Ledger,
                 metrics: Metrics, ratelimit: RateLimitSettings) -> None:
        self.limiter = limiter
        self.moderator = moderator
        self.budget = budget
        self.ledger = ledger
        self.metrics = metrics
        self.ratelimit = ratelimit
        self._open: set[RequestAccount] = set()
        self._settling: set[asyncio.Task[None]] = set()

    @classmethod
    def build(cls, settings: Settings, tenancy: Tenancy, metrics: Metrics) -> Accounting:
        return cls(limiter=Limiter.from_settings(settings.ratelimit, events=metrics),
                   moderator=Moderator.from_settings(settings.moderation, events=metrics),
                   budget=tenancy.budget, ledger=tenancy.ledger, metrics=metrics,
                   ratelimit=settings.ratelimit)

    async def admit(self, *, identity: RequestIdentity, chat: Accountable,
                    deployment: Deployment, route: str, arrived: float,
                    guard: OutputGuard | None = None) -> RequestAccount:
        """Hold the rate limits (prompt + max_tokens), then the budget's worst case.

        Raises RateLimitedError (429) or InsufficientBalanceError (402); a refusal by the
        budget gives the limits back and carries their x-ratelimit-* headers."""
        caller = identity.caller
        reserve = chat.prompt_tokens + chat.max_tokens
        admission = await self.limiter.admit(
            identity.limiter_key, identity.user_id,
            caller.limits.with_rate_defaults(self.ratelimit), reserve)
        try:
            reservation = await self.budget.reserve(
                caller, request_id=chat.request_id, model_id=chat.model_id,
                prompt_tokens=chat.prompt_tokens, max_tokens=chat.max_tokens)
        except BaseException as exc:
            await asyncio.shield(_give_back(admission))
            if isinstance(exc, APIError):
                exc.headers = {**admission.headers(), **exc.headers}
            raise
        account = RequestAccount(self, identity=identity, chat=chat, deployment=deployment,
                                 route=route, arrived=arrived, admission=admission,
                                 reservation=reservation, guard=guard)
        self._open.add(account)
        return account

    def track(self, account: RequestAccount, settlement: asyncio.Task[None]) -> None:
        """`account` is settling: keep its task until it is done (aclose waits for it)."""
        self._open.discard(account)
        self._settling.add(settlement)
        settlement.add_done_callback(self._settling.discard)

    async def aclose(self) -> None:
        """Finish every account (one whose response never ran is recorded as failed), wait
        for their settlement, then close the limiter and the moderator."""
        for account in list(self._open):
            log.warning("request %s was still open at shutdown; recording it as failed",
                        account.request_id)
            account.failed(RuntimeError("the server stopped"))
            account.start_settlement()
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        try:
            await self.limiter.aclose()
        finally:
            await self.moderator.aclose()


async def _give_back(admission: Admission) -> None:
    """A request refused after the limits admitted it used no tokens; its slots come back."""
    try:
        await admission.settle(0)
    finally:
        await admission.release()


class RequestAccount:
    """One admitted request: what it holds, what it used, how it ended; settled once."""

    def __init__(self, accounting: Accounting, *, identity: RequestIdentity, chat: Accountable,
                 deployment: Deployment, route: str, arrived: float, admission: Admission,
                 reservation: Reservation | None, guard: OutputGuard | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._accounting = accounting
        self._identity = identity
        self._chat = chat
        self._guard = guard
        self._deployment = deployment
        self._route = route
        self._arrived = arrived
        self._clock = clock
        self.admission = admission
        self.reservation = reservation
        self.request_id = chat.request_id
        self.status: UsageStatus | None = None  # set by how it ended; None means cancelled
        self.finish: Finished | None = None
        self.queued_s: float | None = None
        self.scheduled_cached_tokens = 0
        self.tokens_seen = 0
        self._first_token_at: float | None = None
        self._last_token_at = 0.0
        self._gaps = array("d")
        self._settlement: asyncio.Task[None] | None = None
        self.record: UsageRecord | None = None

    def headers(self) -> dict[str, str]:
        """x-ratelimit-* as of admission, for the response."""
        return self.admission.headers()

    # GenerationObserver: the chat stream reports what the engine does as it happens.

    def on_start(self, event: StartEvent) -> None:
        self.queued_s = event.queued_s
        self.scheduled_cached_tokens = event.cached_tokens

    def on_token(self) -> None:
        now = self._clock()
        if self._first_token_at is None:
            self._first_token_at = now
        else:
            self._gaps.append(now - self._last_token_at)
        self._last_token_at = now
        self.tokens_seen += 1

    # How it ended: the first outcome told is the one recorded.

    def finished(self, finish: Finished) -> None:
        if self.status is None:
            self.finish = finish
            self.status = _STATUS_OF_FINISH[finish.finish_reason]

    def failed(self, exc: BaseException) -> None:
        """An error ended it; a cancellation (the client left) is not a failure."""
        if self.status is None and not isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.status = "failed"

    def start_settlement(self) -> asyncio.Task[None]:
        """Settle, release and record in a task of its own, once."""
        if self._settlement is None:
            self._settlement = asyncio.ensure_future(self._settle())
            self._accounting.track(self, self._settlement)
        return self._settlement

    async def close(self) -> None:
        """Settle and wait for it; the settlement goes on if the caller is cancelled meanwhile."""
        await asyncio.shield(self.start_settlement())

    async def _settle(self) -> None:
        accounting = self._accounting
        chat = self._chat
        status: UsageStatus = self.status or "cancelled"
        ran = self.finish is not None or self.tokens_seen > 0 or self.queued_s is not None
        if self.finish is not None:
            usage = self.finish.usage
            prompt, completion, cached = (usage.prompt_tokens, usage.completion_tokens,
                                          usage.cached_tokens)
        elif ran:  # cut short: what the engine did until then
            prompt, completion, cached = (chat.prompt_tokens, self.tokens_seen,
                                          self.scheduled_cached_tokens)
        else:  # never scheduled: nothing was computed, nothing is charged
            prompt = completion = cached = 0
        model = chat.model_id
        try:
            try:
                await self.admission.settle(prompt + completion)
            finally:
                await self.admission.release()
        except Exception:
            log.exception("request %s: could not settle its rate limits", self.request_id)
        try:
            cost = await accounting.budget.settle(
                self.reservation, model_id=model, prompt_tokens=prompt, cached_tokens=cached,
                completion_tokens=completion)
        except Exception:
            log.exception("request %s: could not settle its budget (its hold expires)",
                          self.request_id)
            cost = accounting.budget.prices.cost_nanos(
                model, prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion)
        metrics = accounting.metrics
        metrics.count_tokens(model, prompt, completion, cached)
        if self._first_token_at is not None:
            metrics.observe_ttft(model, self._first_token_at - self._arrived)
        for gap in self._gaps:
            metrics.observe_itl(model, gap)
        user_id = self._identity.user_id
        if status == "filtered" and self._guard is not None:
            accounting.moderator.output_flagged(self._guard, deployment=self._deployment.name,
                                                user_id=user_id)
        self.record = UsageRecord(
            request_id=self.request_id,
            key_id=self._identity.caller.key_id,
            user_id=user_id,
            model=model,
            deployment=self._deployment.name,
            route=self._route,
            prompt_tokens=prompt,
            completion_tokens=completion,
            reasoning_tokens=self.finish.usage.reasoning_tokens if self.finish else 0,
            cached_tokens=cached,
            cache_hit_tokens=cached,
            cache_miss_tokens=prompt - cached,
            status=status,
            queue_s=self.queued_s,
            ttft_s=(self._first_token_at - self._arrived
                    if self._first_token_at is not None else None),
            total_s=self._clock() - self._arrived,
            cost_nanos=cost,
        )
        try:
            await accounting.ledger.record(self.record)
        except Exception:
            log.exception("request %s: its usage row could not be journaled: %s",
                          self.request_id, self.record.model_dump_json())
