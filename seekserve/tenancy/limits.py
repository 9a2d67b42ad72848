"""Per-key rate and concurrency limits: requests and tokens per minute, concurrent requests.

Counting is a sliding-window log: a request counts against its key for exactly `window_s`
(60 s) after it was admitted, so no 60 s window ever holds more admissions (or reserved tokens)
than the limit, however the traffic is timed. (A token bucket or GCRA would let up to twice the
limit through a 60 s window: a full burst, then the refill.) Tokens are reserved at admission
(prompt + max_tokens) and settled to the real count at the end, which gives the difference back.
Concurrency slots are leases; in Redis they carry a TTL renewed while the request runs, so a
crashed replica's slots expire instead of leaking.

One interface, two backends: `MemoryBackend` (one process) and `RedisBackend` (atomic Lua scripts
on the Redis server's clock, shared by every replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from seekserve.protocol.errors import RateLimitedError, ServiceUnavailableError
from seekserve.settings import RateLimitSettings
from seekserve.tenancy.keys import KeyLimits

log = logging.getLogger(__name__)

WINDOW_S = 60.0
ErrorPolicy = Literal["fail_open", "fail_closed"]
# Why a request was refused; also the label of the rejection metric.
RejectReason = Literal["requests", "tokens", "too_large", "concurrency", "user_concurrency"]


@dataclass(frozen=True)
class Lease:
    """One admitted request's claim on its key's counters."""

    key_id: str
    user_id: str | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class WindowState:
    """One rate dimension after a decision, as the x-ratelimit-* headers report it."""

    limit: int
    remaining: int
    # Until the oldest counted request (or reservation) leaves the window: when `remaining` grows.
    reset_s: float


@dataclass(frozen=True)
class Decision:
    admitted: bool
    reason: RejectReason | None = None
    retry_after_s: float = 0.0
    requests: WindowState | None = None
    tokens: WindowState | None = None


class BackendUnavailable(Exception):
    """The shared counter store could not be reached; the limiter's policy decides."""


class LimiterEvents(Protocol):
    """Where the limiter reports what operators watch (the app's metrics)."""

    def count_rejection(self, reason: str) -> None: ...

    def count_redis_error(self, operation: str) -> None: ...


class _NoEvents:
    def count_rejection(self, reason: str) -> None:
        pass

    def count_redis_error(self, operation: str) -> None:
        pass


class LimiterBackend(Protocol):
    """Counts admissions; raises BackendUnavailable when its store is down."""

    # Leases expire this long after admission or renewal; None means they never expire.
    lease_ttl_s: float | None

    async def acquire(self, lease: Lease, limits: KeyLimits, reserve_tokens: int) -> Decision: ...

    async def settle(self, lease: Lease, actual_tokens: int) -> None: ...

    async def renew(self, lease: Lease) -> None: ...

    async def release(self, lease: Lease) -> None: ...

    async def aclose(self) -> None: ...


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's x-ratelimit-reset-* headers write it: 20ms, 1s, 1.5s, 6m0s."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    headers: dict[str, str] = {}
    for suffix, state in (("requests", decision.requests), ("tokens", decision.tokens)):
        if state is None:
            continue
        headers[f"x-ratelimit-limit-{suffix}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{suffix}"] = str(max(0, state.remaining))
        headers[f"x-ratelimit-reset-{suffix}"] = format_reset(state.reset_s)
    return headers


_REJECT_MESSAGES: dict[RejectReason, str] = {
    "requests": "Rate limit reached for requests per minute on this key.",
    "tokens": "Rate limit reached for tokens per minute on this key.",
    "too_large": "Request too large: its prompt plus max_tokens is over this key's tokens per "
                 "minute limit. Lower max_tokens or shorten the prompt.",
    "concurrency": "Too many concurrent requests on this key.",
    "user_concurrency": "Too many concurrent requests for this user_id.",
}


def rejection_error(decision: Decision) -> RateLimitedError:
    assert decision.reason is not None
    headers = ratelimit_headers(decision)
    if decision.reason != "too_large":
        headers["retry-after"] = str(max(1, math.ceil(decision.retry_after_s)))
    return RateLimitedError(_REJECT_MESSAGES[decision.reason], headers=headers)


class Admission:
    """An admitted request's hold on its limits: settle its tokens, then release it.

    `async with admission:` releases on exit. Both calls are idempotent and never raise: a
    store outage while settling or releasing is logged, and the lease's TTL cleans up.
    """

    def __init__(self, backend: LimiterBackend | None, lease: Lease, limits: KeyLimits,
                 decision: Decision, reserved_tokens: int) -> None:
        self._backend = backend
        self.lease = lease
        self.limits = limits
        self.decision = decision
        self.reserved_tokens = reserved_tokens
        self._settled = False
        self._released = False
        self._renewer: asyncio.Task[None] | None = None
        needs_slot = limits.max_concurrency is not None or (
            limits.max_user_concurrency is not None and lease.user_id is not None)
        if backend is not None and backend.lease_ttl_s is not None and needs_slot:
            self._renewer = asyncio.create_task(self._renew_forever(backend, backend.lease_ttl_s))

    @classmethod
    def unlimited(cls, key_id: str, user_id: str | None) -> Admission:
        """An admission that counts nothing (no limits, or the store is down and fail_open)."""
        return cls(None, Lease(key_id, user_id), KeyLimits(), Decision(admitted=True), 0)

    def headers(self) -> dict[str, str]:
        """x-ratelimit-{limit,remaining,reset}-{requests,tokens} as of admission."""
        return ratelimit_headers(self.decision)

    async def settle(self, actual_tokens: int) -> None:
        """Replace the reservation with what the request really used (prompt + completion)."""
        if self._settled or self._backend is None or self.limits.tpm is None:
            self._settled = True
            return
        self._settled = True
        await self._backend.settle(self.lease, actual_tokens)

    async def release(self) -> None:
        """Give the concurrency slots back. An unsettled reservation stays counted in full."""
        if self._released:
            return
        self._released = True
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._backend is not None:
            await self._backend.release(self.lease)

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.release()

    async def _renew_forever(self, backend: LimiterBackend, ttl_s: float) -> None:
        while True:
            await asyncio.sleep(ttl_s / 3)
            await backend.renew(self.lease)


class _ThrottledWarning:
    """Logs a warning at most once per `interval_s`, saying how many were suppressed."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last = -math.inf
        self._suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._suppressed += 1
            return
        suffix = f" ({self._suppressed} more since the last warning)" if self._suppressed else ""
        self._last, self._suppressed = now, 0
        log.warning(message + suffix, *args)


class Limiter:
    """Admits requests against their key's limits, over one backend, with an outage policy."""

    def __init__(self, backend: LimiterBackend, *, on_backend_error: ErrorPolicy = "fail_open",
                 events: LimiterEvents | None = None) -> None:
        self.backend = backend
        self.on_backend_error = on_backend_error
        self.events: LimiterEvents = events or _NoEvents()
        self._warning = _ThrottledWarning()

    @classmethod
    def from_settings(cls, settings: RateLimitSettings, events: LimiterEvents | None = None
                      ) -> Limiter:
        backend: LimiterBackend
        if settings.backend == "redis":
            backend = RedisBackend.from_url(
                settings.redis_url, prefix=settings.redis_prefix,
                timeout_s=settings.redis_timeout_s, lease_ttl_s=settings.lease_ttl_s,
                events=events)
        else:
            backend = MemoryBackend()
        return cls(backend, on_backend_error=settings.on_redis_error, events=events)

    async def admit(self, key_id: str, user_id: str | None, limits: KeyLimits,
                    reserve_tokens: int) -> Admission:
        """Admit one request or raise RateLimitedError (429 with Retry-After and headers)."""
        if limits.unlimited:
            return Admission.unlimited(key_id, user_id)
        lease = Lease(key_id, user_id)
        try:
            decision = await self.backend.acquire(lease, limits, reserve_tokens)
        except BackendUnavailable as exc:
            self.events.count_redis_error("admit")
            if self.on_backend_error == "fail_closed":
                self._warning.warn("rate limiter store unavailable (%s): refusing requests "
                                   "(on_redis_error=fail_closed)", exc)
                raise ServiceUnavailableError(
                    "The rate limiter is unavailable; try again shortly.",
                    code="rate_limiter_unavailable", headers={"retry-after": "1"}) from None
            self._warning.warn("rate limiter store unavailable (%s): admitting without limits "
                               "(on_redis_error=fail_open)", exc)
            return Admission.unlimited(key_id, user_id)
        if not decision.admitted:
            assert decision.reason is not None
            self.events.count_rejection(decision.reason)
            raise rejection_error(decision)
        return Admission(self.backend, lease, limits, decision, reserve_tokens)

    async def aclose(self) -> None:
        await self.backend.aclose()


@dataclass
class _KeyCounters:
    requests: deque[float] = field(default_factory=deque)
    # lease id -> (admitted at, tokens), in insertion order, which is time order. An OrderedDict
    # finds its oldest item at once; a dict scans past every slot deleted at its front since it
    # last grew, so with a full window a request cost more the more requests it held (16 us at
    # 200 req/s, 25 at 1,000, 287 at 5,000; 12-13 us at all three as an OrderedDict).
    tokens: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)
    token_sum: int = 0
    leases: set[str] = field(default_factory=set)
    user_leases: dict[str, set[str]] = field(default_factory=dict)

    def trim(self, horizon: float) -> None:
        while self.requests and self.requests[0] <= horizon:
            self.requests.popleft()
        while self.tokens:
            lease_id, (at, amount) = next(iter(self.tokens.items()))
            if at > horizon:
                break
            del self.tokens[lease_id]
            self.token_sum -= amount

    @property
    def empty(self) -> bool:
        return not (self.requests or self.tokens or self.leases or self.user_leases)


class MemoryBackend:
    """Counters in this process. Every step runs without an await, so asyncio makes it atomic."""

    lease_ttl_s: float | None = None

    def __init__(self, *, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._keys: dict[str, _KeyCounters] = {}

    async def acquire(self, lease: Lease, limits: KeyLimits, reserve_tokens: int) -> Decision:
        now = self._clock()
        counters = self._keys.setdefault(lease.key_id, _KeyCounters())
        counters.trim(now - self.window_s)
        user_leases = counters.user_leases.get(lease.user_id or "", set())
        reason: RejectReason | None = None
        retry = 0.0
        if limits.max_concurrency is not None and len(counters.leases) >= limits.max_concurrency:
            reason, retry = "concurrency", 1.0
        elif (limits.max_user_concurrency is not None and lease.user_id is not None
              and len(user_leases) >= limits.max_user_concurrency):
            reason, retry = "user_concurrency", 1.0
        elif limits.rpm is not None and len(counters.requests) >= limits.rpm:
            reason = "requests"
            retry = counters.requests[len(counters.requests) - limits.rpm] + self.window_s - now
        elif limits.tpm is not None and reserve_tokens > limits.tpm:
            reason = "too_large"
        elif limits.tpm is not None and counters.token_sum + reserve_tokens > limits.tpm:
            reason = "tokens"
            need, freed = counters.token_sum + reserve_tokens - limits.tpm, 0
            for at, amount in counters.tokens.values():
                freed += amount
                if freed >= need:
                    retry = at + self.window_s - now
                    break
        if reason is None:
            if limits.rpm is not None:
                counters.requests.append(now)
            if limits.tpm is not None and reserve_tokens > 0:
                counters.tokens[lease.id] = (now, reserve_tokens)
                counters.token_sum += reserve_tokens
            if limits.max_concurrency is not None:
                counters.leases.add(lease.id)
            if limits.max_user_concurrency is not None and lease.user_id is not None:
                counters.user_leases.setdefault(lease.user_id, set()).add(lease.id)
        return Decision(
            admitted=reason is None, reason=reason, retry_after_s=max(0.0, retry),
            requests=self._window(limits.rpm, len(counters.requests),
                                  counters.requests[0] if counters.requests else None, now),
            tokens=self._window(limits.tpm, counters.token_sum,
                                next(iter(counters.tokens.values()))[0]
                                if counters.tokens else None, now))

    def _window(self, limit: int | None, used: int, oldest: float | None, now: float
                ) -> WindowState | None:
        if limit is None:
            return None
        reset = 0.0 if oldest is None else oldest + self.window_s - now
        return WindowState(limit=limit, remaining=limit - used, reset_s=max(0.0, reset))

    async def settle(self, lease: Lease, actual_tokens: int) -> None:
        counters = self._keys.get(lease.key_id)
        if counters is None or lease.id not in counters.tokens:
            return  # already out of the window: it was counted at admission time
        at, reserved = counters.tokens[lease.id]
        counters.tokens[lease.id] = (at, actual_tokens)
        counters.token_sum += actual_tokens - reserved

    async def renew(self, lease: Lease) -> None:
        pass

    async def release(self, lease: Lease) -> None:
        counters = self._keys.get(lease.key_id)
        if counters is None:
            return
        counters.leases.discard(lease.id)
        if lease.user_id is not None and lease.user_id in counters.user_leases:
            users = counters.user_leases[lease.user_id]
            users.discard(lease.id)
            if not users:
                del counters.user_leases[lease.user_id]
        counters.trim(self._clock() - self.window_s)
        if counters.empty:
            del self._keys[lease.key_id]

    async def aclose(self) -> None:
        self._keys.clear()


# Keys of one limiter key share a {hash tag}, so every script touches a single cluster slot.
# KEYS: 1 request log (zset lease->ms), 2 token log (zset lease->ms), 3 token amounts
# (hash lease->tokens), 4 token sum, 5 key leases (zset lease->expiry ms), 6 user leases.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease, window = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, reserve = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cc, ucc, ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local has_user = ARGV[9] == '1'
local horizon = now - window

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon)
if #expired > 0 then
  local freed = 0
  for i = 1, #expired, 500 do
    local chunk = {}
    for j = i, math.min(i + 499, #expired) do chunk[#chunk + 1] = expired[j] end
    local amounts = redis.call('HMGET', KEYS[3], unpack(chunk))
    for j = 1, #amounts do freed = freed + (tonumber(amounts[j]) or 0) end
    redis.call('HDEL', KEYS[3], unpack(chunk))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', horizon)
  redis.call('DECRBY', KEYS[4], freed)
end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)

local requests = redis.call('ZCARD', KEYS[1])
local token_sum = tonumber(redis.call('GET', KEYS[4]) or '0')
local reason, retry = '', 0
if cc >= 0 and redis.call('ZCARD', KEYS[5]) >= cc then
  reason, retry = 'concurrency', 1000
elseif has_user and ucc >= 0 and redis.call('ZCARD', KEYS[6]) >= ucc then
  reason, retry = 'user_concurrency', 1000
elseif rpm >= 0 and requests >= rpm then
  reason = 'requests'
  local entry = redis.call('ZRANGE', KEYS[1], requests - rpm, requests - rpm, 'WITHSCORES')
  retry = window
  if #entry > 0 then retry = tonumber(entry[2]) + window - now end
elseif tpm >= 0 and reserve > tpm then
  reason = 'too_large'
elseif tpm >= 0 and token_sum + reserve > tpm then
  reason = 'tokens'
  local need, freed = token_sum + reserve - tpm, 0
  local entries = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  retry = window
  for i = 1, #entries, 2 do
    freed = freed + (tonumber(redis.call('HGET', KEYS[3], entries[i])) or 0)
    if freed >= need then
      retry = tonumber(entries[i + 1]) + window - now
      break
    end
  end
end

if reason == '' then
  if rpm >= 0 then
    redis.call('ZADD', KEYS[1], now, lease)
    redis.call('PEXPIRE', KEYS[1], window)
    requests = requests + 1
  end
  if tpm >= 0 and reserve > 0 then
    redis.call('ZADD', KEYS[2], now, lease)
    redis.call('HSET', KEYS[3], lease, reserve)
    token_sum = redis.call('INCRBY', KEYS[4], reserve)
    for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], window) end
  end
  if cc >= 0 then
    redis.call('ZADD', KEYS[5], now + ttl, lease)
    redis.call('PEXPIRE', KEYS[5], ttl)
  end
  if has_user and ucc >= 0 then
    redis.call('ZADD', KEYS[6], now + ttl, lease)
    redis.call('PEXPIRE', KEYS[6], ttl)
  end
end

local function reset_of(key)
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #oldest == 0 then return 0 end
  return tonumber(oldest[2]) + window - now
end
return {reason == '' and 1 or 0, reason, retry, requests, token_sum,
        reset_of(KEYS[1]), reset_of(KEYS[2])}
"""

# KEYS: 1 token amounts, 2 token sum. ARGV: lease, actual tokens.
_SETTLE_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], tonumber(ARGV[2]) - tonumber(old))
return 1
"""

# KEYS: lease sets. ARGV: lease, ttl ms. Only a lease still held is extended (XX).
_RENEW_LUA = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local held = 0
for i = 1, #KEYS do
  held = held + redis.call('ZADD', KEYS[i], 'XX', 'CH', expiry, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return held
"""

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


def _key_part(value: str) -> str:
    """An id as it goes into a Redis key name: as is when plain, else its digest."""
    if _SAFE_ID.match(value):
        return value
    return "h" + hashlib.sha256(value.encode()).hexdigest()[:32]


class RedisBackend:
    """Counters in Redis shared by every replica; each step is one atomic Lua script."""

    def __init__(self, client: Redis, *, prefix: str = "seekserve:rl:", window_s: float = WINDOW_S,
                 lease_ttl_s: float = 30.0, retry_interval_s: float = 1.0,
                 events: LimiterEvents | None = None) -> None:
        self._redis = client
        self.prefix = prefix
        self.window_ms = round(window_s * 1000)
        self.lease_ttl_s: float | None = lease_ttl_s
        self._ttl_ms = round(lease_ttl_s * 1000)
        self.events: LimiterEvents = events or _NoEvents()
        # After a failure, skip Redis this long so an outage costs no timeout per request.
        self.retry_interval_s = retry_interval_s
        self._down_until = -math.inf
        self._warning = _ThrottledWarning()
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._settle = client.register_script(_SETTLE_LUA)
        self._renew = client.register_script(_RENEW_LUA)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 0.5, max_connections: int = 64,
                 **kwargs: Any) -> RedisBackend:
        # A burst waits for a pooled connection (a queue, not an outage) instead of failing
        # with "too many connections"; no retries, so an outage costs one timeout at most.
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=5.0, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
        return cls(Redis(connection_pool=pool), **kwargs)

    def _keys(self, lease: Lease) -> list[str]:
        base = f"{self.prefix}{{{_key_part(lease.key_id)}}}"
        user = _key_part(lease.user_id) if lease.user_id is not None else "-"
        return [f"{base}:rq", f"{base}:tk", f"{base}:tka", f"{base}:tks", f"{base}:cc",
                f"{base}:ucc:{user}"]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if time.monotonic() < self._down_until:
            raise BackendUnavailable("Redis failed moments ago")
        try:
            return await script(keys=keys, args=args)
        except (TimeoutError, RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry_interval_s
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def acquire(self, lease: Lease, limits: KeyLimits, reserve_tokens: int) -> Decision:
        def arg(limit: int | None) -> int:
            return -1 if limit is None else limit

        reply = await self._call(self._acquire, self._keys(lease), [
            lease.id, self.window_ms, arg(limits.rpm), arg(limits.tpm), max(0, reserve_tokens),
            arg(limits.max_concurrency), arg(limits.max_user_concurrency), self._ttl_ms,
            "1" if lease.user_id is not None else "0"])
        admitted, reason, retry_ms, requests, token_sum, rq_reset_ms, tk_reset_ms = reply
        reason_text = reason.decode() if isinstance(reason, bytes) else str(reason)
        return Decision(
            admitted=bool(admitted),
            reason=reason_text or None,  # type: ignore[arg-type]
            retry_after_s=max(0, int(retry_ms)) / 1000,
            requests=None if limits.rpm is None else WindowState(
                limits.rpm, limits.rpm - int(requests), max(0, int(rq_reset_ms)) / 1000),
            tokens=None if limits.tpm is None else WindowState(
                limits.tpm, limits.tpm - int(token_sum), max(0, int(tk_reset_ms)) / 1000))

    async def _quietly(self, operation: str, script: Any, keys: list[str], args: list[Any]
                       ) -> None:
        """Settle, renew, release: an outage is logged and counted; TTLs clean up after it."""
        try:
            await self._call(script, keys, args)
        except BackendUnavailable as exc:
            self.events.count_redis_error(operation)
            self._warning.warn("rate limiter could not %s a lease in Redis (%s)", operation, exc)

    async def settle(self, lease: Lease, actual_tokens: int) -> None:
        keys = self._keys(lease)
        await self._quietly("settle", self._settle, [keys[2], keys[3]],
                            [lease.id, max(0, actual_tokens)])

    async def renew(self, lease: Lease) -> None:
        keys = self._keys(lease)
        await self._quietly("renew", self._renew, keys[4:], [lease.id, self._ttl_ms])

    async def release(self, lease: Lease) -> None:
        keys = self._keys(lease)
        if time.monotonic() < self._down_until:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(keys[4], lease.id)
                pipe.zrem(keys[5], lease.id)
                await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            self._down_until = time.monotonic() + self.retry_interval_s
            self.events.count_redis_error("release")
            self._warning.warn("rate limiter could not release a lease in Redis (%s)", exc)

    async def aclose(self) -> None:
        await self._redis.aclose(close_connection_pool=True)
