"""The limiter's rules, checked on the in-process backend with a clock the test moves."""

from __future__ import annotations

from collections import Counter

import pytest

from seekserve.protocol.errors import RateLimitedError
from seekserve.settings import RateLimitSettings
from seekserve.tenancy.keys import KeyLimits
from seekserve.tenancy.limits import (
    Limiter,
    MemoryBackend,
    format_reset,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordedEvents:
    def __init__(self) -> None:
        self.rejections: Counter[str] = Counter()
        self.redis_errors: Counter[str] = Counter()

    def count_rejection(self, reason: str) -> None:
        self.rejections[reason] += 1

    def count_redis_error(self, operation: str) -> None:
        self.redis_errors[operation] += 1


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> RecordedEvents:
    return RecordedEvents()


@pytest.fixture
def limiter(clock: FakeClock, events: RecordedEvents) -> Limiter:
    return Limiter(MemoryBackend(clock=clock), events=events)


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0ms"), (0.02, "20ms"), (0.0201, "21ms"), (0.9994, "1s"), (1.0, "1s"), (1.5, "1.5s"),
    (59.0, "59s"), (60.0, "1m0s"), (360.0, "6m0s"), (61.25, "1m1.25s"), (3725.0, "1h2m5s"),
])
def test_reset_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


async def test_requests_per_minute_admits_the_limit_then_refuses_with_retry_after(
        limiter: Limiter, clock: FakeClock, events: RecordedEvents) -> None:
    limits = KeyLimits(rpm=3)
    remaining = []
    for _ in range(3):
        admission = await limiter.admit("k1", None, limits, reserve_tokens=10)
        remaining.append(admission.headers()["x-ratelimit-remaining-requests"])
        await admission.release()
        clock.now += 10
    assert remaining == ["2", "1", "0"]
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k1", None, limits, reserve_tokens=10)
    err = refused.value
    assert (err.status_code, err.error_type, err.code) == (429, "rate_limit_error",
                                                           "rate_limit_exceeded")
    # The first request (t=1000) leaves the window at t=1060; it is now t=1030.
    assert err.headers["retry-after"] == "30"
    assert err.headers["x-ratelimit-limit-requests"] == "3"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == "30s"
    assert "x-ratelimit-limit-tokens" not in err.headers
    assert events.rejections == Counter({"requests": 1})


async def test_the_request_window_slides_one_request_at_a_time(
        limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(rpm=2)
    await limiter.admit("k", None, limits, 0)
    clock.now += 30
    await limiter.admit("k", None, limits, 0)
    clock.now += 29.9
    with pytest.raises(RateLimitedError):
        await limiter.admit("k", None, limits, 0)
    clock.now += 0.1  # the first admission is now exactly 60 s old
    admission = await limiter.admit("k", None, limits, 0)
    assert admission.headers()["x-ratelimit-remaining-requests"] == "0"
    assert admission.headers()["x-ratelimit-reset-requests"] == "30s"
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k", None, limits, 0)
    assert refused.value.headers["retry-after"] == "30"


async def test_keys_are_counted_apart(limiter: Limiter) -> None:
    limits = KeyLimits(rpm=1)
    await limiter.admit("a", None, limits, 0)
    await limiter.admit("b", None, limits, 0)
    with pytest.raises(RateLimitedError):
        await limiter.admit("a", None, limits, 0)


async def test_tokens_are_reserved_then_settled_to_the_real_count(
        limiter: Limiter, clock: FakeClock) -> None:
    limits = KeyLimits(tpm=1000)
    first = await limiter.admit("k", None, limits, reserve_tokens=600)
    assert first.headers()["x-ratelimit-remaining-tokens"] == "400"
    assert first.headers()["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers()["x-ratelimit-reset-tokens"] == "1m0s"
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k", None, limits, reserve_tokens=500)
    assert refused.value.headers["x-ratelimit-remaining-tokens"] == "400"
    assert refused.value.headers["retry-after"] == "60"
    await first.settle(150)  # the request used 150: 450 come back
    clock.now += 5
    second = await limiter.admit("k", None, limits, reserve_tokens=500)
    assert second.headers()["x-ratelimit-remaining-tokens"] == "350"
    assert second.headers()["x-ratelimit-reset-tokens"] == "55s"
    await second.settle(900)  # settling may also grow a reservation
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k", None, limits, reserve_tokens=1)
    # Freeing one token needs the first request (150 tokens, 55 s left) to leave the window.
    assert refused.value.headers["retry-after"] == "55"
    clock.now += 55
    third = await limiter.admit("k", None, limits, reserve_tokens=100)
    assert third.headers()["x-ratelimit-remaining-tokens"] == "0"


async def test_settling_twice_changes_nothing(limiter: Limiter) -> None:
    limits = KeyLimits(tpm=100)
    admission = await limiter.admit("k", None, limits, reserve_tokens=100)
    await admission.settle(10)
    await admission.settle(100)
    after = await limiter.admit("k", None, limits, reserve_tokens=90)
    assert after.headers()["x-ratelimit-remaining-tokens"] == "0"


async def test_a_request_larger_than_the_token_limit_is_refused_without_retry_after(
        limiter: Limiter, events: RecordedEvents) -> None:
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k", None, KeyLimits(tpm=100), reserve_tokens=101)
    assert "retry-after" not in refused.value.headers
    assert "Request too large" in refused.value.message
    assert events.rejections == Counter({"too_large": 1})


async def test_concurrent_requests_hold_slots_until_released(
        limiter: Limiter, events: RecordedEvents) -> None:
    limits = KeyLimits(max_concurrency=2)
    first = await limiter.admit("k", None, limits, 0)
    async with await limiter.admit("k", None, limits, 0):
        with pytest.raises(RateLimitedError) as refused:
            await limiter.admit("k", None, limits, 0)
        assert refused.value.headers["retry-after"] == "1"
    third = await limiter.admit("k", None, limits, 0)
    await first.release()
    await first.release()  # idempotent: must not free a second slot
    await limiter.admit("k", None, limits, 0)
    with pytest.raises(RateLimitedError):
        await limiter.admit("k", None, limits, 0)
    await third.release()
    assert events.rejections == Counter({"concurrency": 2})


async def test_user_concurrency_is_per_user_under_a_key(
        limiter: Limiter, events: RecordedEvents) -> None:
    limits = KeyLimits(max_user_concurrency=1)
    alice = await limiter.admit("k", "alice", limits, 0)
    await limiter.admit("k", "bob", limits, 0)
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit("k", "alice", limits, 0)
    assert "user_id" in refused.value.message
    await limiter.admit("other-key", "alice", limits, 0)
    await limiter.admit("k", None, limits, 0)  # no user_id: only the key's limits apply
    await alice.release()
    await limiter.admit("k", "alice", limits, 0)
    assert events.rejections == Counter({"user_concurrency": 1})


async def test_a_refused_request_takes_nothing(limiter: Limiter) -> None:
    limits = KeyLimits(rpm=5, tpm=100, max_concurrency=1)
    held = await limiter.admit("k", None, limits, reserve_tokens=40)
    for _ in range(3):
        with pytest.raises(RateLimitedError):
            await limiter.admit("k", None, limits, reserve_tokens=40)
    await held.release()
    admission = await limiter.admit("k", None, limits, reserve_tokens=40)
    assert admission.headers()["x-ratelimit-remaining-requests"] == "3"
    assert admission.headers()["x-ratelimit-remaining-tokens"] == "20"


async def test_a_key_without_limits_gets_no_headers_and_counts_nothing(
        limiter: Limiter) -> None:
    for _ in range(100):
        admission = await limiter.admit("k", "u", KeyLimits(), reserve_tokens=10**6)
        assert admission.headers() == {}


def test_keys_without_limits_take_the_settings_defaults() -> None:
    settings = RateLimitSettings(default_rpm=60, default_tpm=10_000,
                                 default_user_max_concurrency=2)
    assert KeyLimits().with_rate_defaults(settings) == KeyLimits(
        rpm=60, tpm=10_000, max_concurrency=None, max_user_concurrency=2)
    assert KeyLimits().with_rate_defaults(RateLimitSettings()).unlimited


def test_a_limit_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="rpm must be at least 1"):
        KeyLimits(rpm=0)
