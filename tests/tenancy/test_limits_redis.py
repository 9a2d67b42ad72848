"""The Redis limiter on the real Redis: replicas share limits, leases expire, outages follow
the configured policy. Each test writes under its own key prefix and deletes it afterwards."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from seekserve.protocol.errors import RateLimitedError, ServiceUnavailableError
from seekserve.settings import RateLimitSettings
from seekserve.tenancy.keys import KeyLimits
from seekserve.tenancy.limits import Admission, Lease, Limiter, RedisBackend, format_reset
from tests.ports import free_port
from tests.tenancy.test_limits import RecordedEvents

REDIS_URL = "redis://127.0.0.1:6379/0"

ReplicaFactory = Callable[..., Limiter]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = f"seekserve-test:{uuid.uuid4().hex}:"
    yield prefix
    client = Redis.from_url(REDIS_URL)
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def replicas(prefix: str) -> AsyncIterator[ReplicaFactory]:
    """Builds limiters that share one Redis prefix, as separate replicas would."""
    built: list[Limiter] = []

    def replica(*, window_s: float = 60.0, lease_ttl_s: float = 30.0,
                events: RecordedEvents | None = None) -> Limiter:
        # A generous timeout: these tests check the limits, and a connect timeout on a busy
        # machine would fail open (see the tests at the end for outages).
        backend = RedisBackend.from_url(REDIS_URL, prefix=prefix, window_s=window_s,
                                        lease_ttl_s=lease_ttl_s, events=events, timeout_s=5.0)
        limiter = Limiter(backend, events=events)
        built.append(limiter)
        return limiter

    yield replica
    for limiter in built:
        await limiter.aclose()


async def admit_all(limiters: list[Limiter], count: int, limits: KeyLimits, reserve: int = 0,
                    user_id: str | None = None) -> list[Admission]:
    """Fire `count` admissions at once, spread over the limiters; the admitted ones."""
    async def one(i: int) -> Admission | None:
        try:
            return await limiters[i % len(limiters)].admit("key-1", user_id, limits, reserve)
        except RateLimitedError:
            return None

    results = await asyncio.gather(*(one(i) for i in range(count)))
    return [a for a in results if a is not None]


async def test_two_replicas_admit_exactly_the_request_limit(replicas: ReplicaFactory) -> None:
    events = RecordedEvents()
    pair = [replicas(events=events), replicas(events=events)]
    admitted = await admit_all(pair, 300, KeyLimits(rpm=50))
    assert events.redis_errors == Counter()
    assert len(admitted) == 50
    assert events.rejections["requests"] == 250
    remaining = sorted(int(a.headers()["x-ratelimit-remaining-requests"]) for a in admitted)
    assert remaining == list(range(50))


async def test_two_replicas_share_the_token_limit(replicas: ReplicaFactory) -> None:
    pair = [replicas(), replicas()]
    admitted = await admit_all(pair, 60, KeyLimits(tpm=1000), reserve=100)
    assert len(admitted) == 10
    # Settling on one replica gives the tokens back to both.
    for admission in admitted[:5]:
        await admission.settle(20)
    more = await admit_all(pair[1:], 20, KeyLimits(tpm=1000), reserve=100)
    assert len(more) == 4  # 5 * 80 tokens came back


async def test_two_replicas_share_concurrency_slots(replicas: ReplicaFactory) -> None:
    pair = [replicas(), replicas()]
    limits = KeyLimits(max_concurrency=5, max_user_concurrency=3)
    admitted = await admit_all(pair, 40, limits, user_id="alice")
    assert len(admitted) == 3
    admitted += await admit_all(pair, 40, limits, user_id="bob")
    assert len(admitted) == 5
    await admitted[0].release()
    again = await admit_all(pair, 10, limits, user_id="carol")
    assert len(again) == 1
    for admission in admitted + again:
        await admission.release()


async def redis_clock_ms() -> int:
    client = Redis.from_url(REDIS_URL)
    try:
        seconds, micros = await client.time()
    finally:
        await client.aclose()
    return seconds * 1000 + micros // 1000


async def test_the_request_window_slides_on_the_redis_clock(replicas: ReplicaFactory) -> None:
    limiter = replicas(window_s=1.0)
    limits = KeyLimits(rpm=3)
    start = await redis_clock_ms()
    assert len(await admit_all([limiter], 5, limits)) == 3
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("key-1", None, limits, 0)
    elapsed = await redis_clock_ms() - start
    assert refused.value.headers["retry-after"] == "1"
    # The window (1000 ms) less the Redis-clock time between the first admission and the
    # refusal: a full "1s" when both fell in the same millisecond, "999ms" a millisecond later.
    reset = refused.value.headers["x-ratelimit-reset-requests"]
    possible = {format_reset(ms / 1000): ms for ms in range(max(0, 1000 - elapsed), 1001)}
    assert reset in possible, (reset, elapsed)
    await asyncio.sleep(1.05)
    assert len(await admit_all([limiter], 5, limits)) == 3


async def test_a_crashed_replicas_slots_expire(replicas: ReplicaFactory) -> None:
    limits = KeyLimits(max_concurrency=1)
    crashed = replicas(lease_ttl_s=0.5)
    # Taken straight from the backend: no Admission renews it, as after a crash.
    decision = await crashed.backend.acquire(Lease("key-1", None), limits, 0)
    assert decision.admitted
    survivor = replicas(lease_ttl_s=0.5)
    with pytest.raises(RateLimitedError):
        await survivor.admit("key-1", None, limits, 0)
    await asyncio.sleep(0.6)
    admission = await survivor.admit("key-1", None, limits, 0)
    await admission.release()


async def test_a_running_request_keeps_its_slot_past_the_lease_ttl(
        replicas: ReplicaFactory) -> None:
    limits = KeyLimits(max_concurrency=1)
    first, second = replicas(lease_ttl_s=0.3), replicas(lease_ttl_s=0.3)
    async with await first.admit("key-1", None, limits, 0):
        await asyncio.sleep(1.0)  # more than three TTLs: only renewal keeps the slot
        with pytest.raises(RateLimitedError):
            await second.admit("key-1", None, limits, 0)
    admission = await second.admit("key-1", None, limits, 0)
    await admission.release()


async def test_odd_key_and_user_ids_stay_inside_their_key(replicas: ReplicaFactory,
                                                          prefix: str) -> None:
    limiter = replicas()
    limits = KeyLimits(rpm=1, max_user_concurrency=1)
    admitted = [await limiter.admit("key}{with braces", "user id/ü", limits, 0),
                await limiter.admit("another", "user id/ü", limits, 0)]
    client = Redis.from_url(REDIS_URL)
    keys = [key.decode() async for key in client.scan_iter(match=f"{prefix}*")]
    await client.aclose()
    for admission in admitted:  # or their renewals would outlive the limiter
        await admission.release()
    assert keys and all("}{with" not in k and "ü" not in k for k in keys)
    # One hash tag per limiter key: every script touches a single cluster slot.
    assert len({k.split("{")[1].split("}")[0] for k in keys}) == 2


def closed_port_limiter(policy: str, events: RecordedEvents) -> Limiter:
    settings = RateLimitSettings(backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                 on_redis_error=policy)  # type: ignore[arg-type]
    return Limiter.from_settings(settings, events=events)


async def test_redis_down_fails_open_when_configured(
        caplog: pytest.LogCaptureFixture) -> None:
    events = RecordedEvents()
    limiter = closed_port_limiter("fail_open", events)
    with caplog.at_level(logging.WARNING, logger="seekserve.tenancy.limits"):
        for _ in range(5):
            admission = await limiter.admit("k", None, KeyLimits(rpm=1), 0)
            assert admission.headers() == {}
            await admission.settle(10)
            await admission.release()
    await limiter.aclose()
    assert events.redis_errors["admit"] == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # throttled: one warning, not one per request
    assert "fail_open" in warnings[0]


async def test_redis_down_fails_closed_when_configured(
        caplog: pytest.LogCaptureFixture) -> None:
    events = RecordedEvents()
    limiter = closed_port_limiter("fail_closed", events)
    with caplog.at_level(logging.WARNING, logger="seekserve.tenancy.limits"):
        with pytest.raises(ServiceUnavailableError) as refused:
            await limiter.admit("k", None, KeyLimits(rpm=100), 0)
    await limiter.aclose()
    assert refused.value.status_code == 503
    assert refused.value.code == "rate_limiter_unavailable"
    assert refused.value.headers == {"retry-after": "1"}
    assert events.redis_errors["admit"] == 1
    assert any("fail_closed" in r.getMessage() for r in caplog.records)


async def test_offered_three_times_the_limit_no_window_admits_more_than_the_limit(
        replicas: ReplicaFactory) -> None:
    """The issue's acceptance test, scaled from 60 rpm over two minutes to 20 per 1 s window
    over 3 s: two replicas each offer 30 requests a second, 3x the shared limit."""
    limits = KeyLimits(rpm=20)
    loop = asyncio.get_running_loop()
    admitted_at: list[float] = []

    async def offer(limiter: Limiter) -> None:
        for _ in range(90):
            started = loop.time()
            try:
                await limiter.admit("key-1", None, limits, 0)
                admitted_at.append((started + loop.time()) / 2)
            except RateLimitedError:
                pass
            await asyncio.sleep(max(0.0, started + 1 / 30 - loop.time()))

    await asyncio.gather(offer(replicas(window_s=1.0)), offer(replicas(window_s=1.0)))
    admitted_at.sort()
    busiest = max(sum(1 for u in admitted_at if t <= u < t + 1.0) for t in admitted_at)
    assert busiest <= 21  # 1.05x; the midpoints blur the Redis clock by a few ms
    assert len(admitted_at) >= 55  # ~3 windows of 20: the limiter is not stricter than asked
